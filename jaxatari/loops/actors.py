"""The actor-learners' outer loops (``--async sarsa|onestep|nstep|a3c``, Mnih et al.
2016): the edge around ``jaxatari.agents.actor_learner``.

JAX has no shared mutable parameters, so the original's Hogwild! threads (Recht et al.
2011) become N batched actors: with ``--async-mode sync`` the N = ``--envs`` envs of a
seed step together and every T = ``--batch-size`` steps the [T, N] rollout makes one
update, averaged over the actors - A2C (Wu et al. 2017), the same losses without stale
gradients. JAX-native envs run the whole loop in XLA (``agents.actor_native``, driven by
``loops.session.run_native_chunks``); host envs step one pool of S * N envs reshaped to
[S, N]. ``--async-mode async`` is ``loops.actors_async``.

Kept from the original: a shared global step (target synced every ``--tau`` steps, the
learning rate annealed to 0 over ``--steps``), per-actor epsilons, validation acting
epsilon-greedily (Q methods) or sampling the policy (A3C) on raw game scores; validation
pauses training (the original validated in a parallel thread). The loops talk to a
``loops.session.Session`` and hand it their checkpoint items
(``loops.checkpoint_items.ActorLearnerItems``; ``checkpoint_templates``).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxatari.agents.actor_learner import Q_METHODS, ActorLearner, Rollout, make_actor_learner
from jaxatari.agents.data_parallel import BATCH_AXIS
from jaxatari.agents.actor_native import (NativeActorCarry, init_native_actor_carry,
                                          make_native_actor_chunk, make_native_actor_evaluate,
                                          make_native_heldout)
from jaxatari.agents.frames import to_agent_frame
from jaxatari.config import Config
from jaxatari.devices import SeedPlacement, to_host
from jaxatari.envs import JaxEnv
from jaxatari.loops.actor_common import ActorHostEvaluator, ChunkLog, HeldOutRollouts
from jaxatari.loops.checkpoint_items import ActorLearnerItems
from jaxatari.loops.actors_async import async_templates, run_host_async
from jaxatari.loops.session import (PlainSession, SeedsStep, eval_steps_per_env,
                                    run_native_chunks, to_seeds)
from jaxatari.loops.settings import (actors_per_update, build_learner, chunk_iterations,
                                     crosses, learner_settings, mean_actor_epsilon)
from jaxatari.metrics import ChunkStats, mean_score
from jaxatari.xla_options import edge_jit

__all__ = ["PlainSession", "checkpoint_templates", "run_actor_learner", "train_native"]


# --------------------------------------------------------------------- JAX-native envs

def train_native(config: Config, env: JaxEnv, keys, session, restored=None, *,
                 placement: SeedPlacement = SeedPlacement()
                 ) -> tuple[NativeActorCarry, ActorLearner]:
    """The JAX-native loop; returns the final carry [S] and the learner.

    ``session``: ``PlainSession`` or ``loop.Trainer`` (evaluations, checkpoints, Ctrl+C);
    ``restored``: a ``loop.Restored`` to continue from. Saves happen only at chunk
    boundaries and a resumed run continues with the same chunks from the saved iteration,
    so with the same options it reproduces the uninterrupted run bit for bit on CPU.
    ``placement``: the devices the seeds are split over (``--devices``); the carry is placed
    on them once and every jitted function follows it. With data-parallel seeds (more
    devices than seeds) each device runs its share of a seed's actors (``device_learner``)
    and the carry holds every seed's share on every device [S x D].
    """
    c = config
    learner = build_learner(c, env.spec)   # a whole seed's: evaluation, held-out statistics
    shards = placement.shards
    share = device_learner(c, env.spec, shards)   # one device's share of a seed's actors
    steps_per_iteration = c.batch_size * c.envs
    total_iterations = c.steps // steps_per_iteration
    per_chunk = chunk_iterations(c, steps_per_iteration)
    # one compiled chunk; a shorter last chunk runs it with its tail masked
    chunk = make_native_actor_chunk(
        share if shards == 1 else make_actor_learner(share.settings, batch_axis=BATCH_AXIS),
        env, per_chunk, c.tau, actors_per_seed=c.envs)
    if shards > 1:   # each device runs its share; the learner adds gradients over batch
        split = PartitionSpec(placement.split_axes)
        chunk = placement.data_parallel(chunk, in_specs=(split, PartitionSpec(),
                                                         PartitionSpec()),
                                        out_specs=(split, PartitionSpec(None, *split)))
    chunk = edge_jit(chunk, donate_argnums=0)

    evaluate = edge_jit(jax.vmap(make_native_actor_evaluate(
        learner, env.for_mode("eval"), num_envs=c.val_envs, num_steps=eval_steps_per_env(c),
        epsilon=c.val_epsilon)))
    state_keys, shard_ids = placement.share_keys(keys)
    init_carry = edge_jit(lambda k, d: init_native_actor_seeds(share, env, k, d))
    if restored is None:
        carry = init_carry(state_keys, shard_ids)
        iteration = 0
    else:
        carry = restored.items.native_carry()
        iteration = restored.iteration
    # every leaf of an actor-learner's carry is per seed (per seed share, data-parallel)
    carry = placement.place(carry, shards=shards > 1)
    heldout = HeldOutRollouts(learner, c)
    play_heldout = edge_jit(jax.vmap(make_native_heldout(share, env, heldout.count)))

    def evaluate_carry(carry: NativeActorCarry, key):
        params = carry.train.params
        if shards > 1:   # a seed's parameters are alike on its devices: the first's
            params = jax.tree.map(lambda x: x[::shards], params)
        total, episodes, partial = to_host(
            evaluate(params, placement.place(jax.random.split(key, c.seeds))))
        if heldout.rollouts is None:
            start = init_carry(state_keys, shard_ids)
            played = to_host(play_heldout(start.train.params, start.actors,
                                          start.env_state, start.score))
            heldout.fix(jax.tree.map(lambda x: whole_seeds(x, c.seeds), played))
        train = to_host(carry.train)   # per-seed statistics on the host's whole copy
        v, td = heldout.stats(lambda seed: jax.tree.map(lambda x: x[seed * shards], train))
        return mean_score(total, episodes, partial), episodes, v, td

    def log_chunk(step: int, carry: NativeActorCarry, out, run: int, seconds: float):
        def per_step(name):   # [I, S (x D), T, N (/ D)] -> [I * T, S, N]
            return np.asarray(out[name]).transpose(0, 2, 1, 3).reshape(-1, c.seeds, c.envs)

        def per_seed(name):   # [I, S (x D)] -> [I, S]: alike over a seed's devices
            return np.asarray(out[name])[:, ::shards]

        stats = ChunkStats(scores=per_step("scores"), finished=per_step("finished"),
                           loss=per_seed("loss"), td_error=per_seed("td_error"),
                           q_mean=per_seed("q_mean"), learned=np.ones(run, bool))
        steps, final_epsilon = to_host((carry.actors.steps, carry.actors.final_epsilon))
        session.logger.log_chunk(step, stats, mean_actor_epsilon(learner, steps, final_epsilon),
                                 seconds, run * steps_per_iteration)

    carry = run_native_chunks(session, carry=carry, iteration=iteration,
                              total_iterations=total_iterations, iterations_per_chunk=per_chunk,
                              steps_per_iteration=steps_per_iteration, chunk=chunk,
                              evaluate=evaluate_carry, items=ActorLearnerItems.of_native,
                              log_chunk=log_chunk,
                              evaluates_at_start=False)
    return carry, learner


def device_learner(config: Config, spec, shards: int) -> ActorLearner:
    """The learner of one device's share of a seed's actors (--envs / ``shards``), the
    learning rate annealed over the seed's updates; the run's own learner on one device."""
    if shards == 1:
        return build_learner(config, spec)
    return make_actor_learner(learner_settings(config, spec, config.envs // shards,
                                               actors_per_update(config)))


def init_native_actor_seeds(learner: ActorLearner, env, keys, shards=None):
    """The carry [S] of every seed from keys [S], or with ``shards`` [S x D] every seed's
    share on every device (``init_native_actor_carry``)."""
    if shards is None:
        return jax.vmap(lambda k: init_native_actor_carry(learner, env, k))(keys)
    return jax.vmap(lambda k, d: init_native_actor_carry(learner, env, k, d))(keys, shards)


def whole_seeds(x: np.ndarray, seeds: int) -> np.ndarray:
    """Held-out rollouts of every seed share [S x D, R, T(+1), N / D, ...] as whole seeds'
    [S, R, T(+1), N, ...]: a seed's devices' actors side by side, in device order."""
    shards = x.shape[0] // seeds
    x = x.reshape(seeds, shards, *x.shape[1:])                  # [S, D, R, T, N / D, ...]
    x = np.moveaxis(x, 1, 3)                                     # [S, R, T, D, N / D, ...]
    return x.reshape(*x.shape[:3], -1, *x.shape[5:])


# -------------------------------------------------------------------------- host envs

def run_host_sync(config: Config, env_factory, keys, session, restored=None, *,
                  placement: SeedPlacement = SeedPlacement()):
    """S * N host envs in one pool stepped together; one vmapped update per rollout.
    Returns the final train state [S].

    A resumed run restores learner, actor keys, epsilon counters and the update count; the
    envs cannot be restored, so it starts new games (seeded ``--seed + step``) with empty
    frame stacks, and the running episodes' scores are lost.

    ``placement`` (``--devices``): the learner and actors [S] split over the device mesh
    once (``keys`` already are), every jitted function keeping its outputs split, and each
    step's observations [S, N, ...] and rollout put onto the mesh with the same split."""
    c = config
    seeds, envs, length = c.seeds, c.envs, c.batch_size
    learner = build_learner(c, env_factory.spec)
    split = placement.keep_split()   # every leaf of the state is per seed
    init = edge_jit(jax.vmap(learner.init), **split)
    observe = edge_jit(jax.vmap(lambda a, f, first: learner.observe(
        a, to_agent_frame(f, learner.frame_dtype), first)), **split)
    act = edge_jit(jax.vmap(learner.act), **split)
    update = edge_jit(jax.vmap(learner.update), donate_argnums=0, **split)
    sync = edge_jit(jax.vmap(learner.sync_target), **split)
    evaluator = ActorHostEvaluator(c, env_factory, learner, placement)
    heldout = HeldOutRollouts(learner, c)
    steps_per_update = length * envs
    total_updates = c.steps // steps_per_update
    logger = session.logger

    train, actors = init(keys)
    start = 0
    if restored is not None:   # split over the devices as a new state
        train, actors = placement.place((restored.items.train, restored.items.actors))
        start = restored.iteration
    env = env_factory(seeds * envs, c.seed + start * steps_per_update, mode="train")
    actors = observe(placement.place(actors.replace(after_done=jnp.zeros((seeds, envs), bool))),
                     *placement.place((to_seeds(env.reset(), seeds),
                                       np.ones((seeds, envs), bool))))
    after_done = np.zeros((seeds, envs), bool)
    score = np.zeros((seeds, envs))
    chunk = ChunkLog(seeds)

    def items():
        return ActorLearnerItems(train=train, actors=actors)

    try:
        for index in range(start, total_updates):
            if session.interrupt_requested:
                session.handle_interrupt(items, index * steps_per_update, index)
            record = {name: [] for name in ("obs", "action", "reward", "terminal", "cut",
                                            "valid", "epsilon")}
            for _ in range(length):
                record["obs"].append(actors.stack)
                record["valid"].append(~after_done)
                actions, eps, actors = act(train.params, actors)
                result = SeedsStep.of(env.step(np.asarray(actions).reshape(-1)), seeds)
                reward, terminal, done, over = (result.reward, result.terminated, result.done,
                                                result.game_over)
                record["action"].append(actions)
                record["reward"].append(reward)
                record["terminal"].append(terminal)
                record["cut"].append(done)
                record["epsilon"].append(eps)
                score = score + reward
                chunk.scores.append(score.copy())
                chunk.finished.append(over)
                score = np.where(over, 0.0, score)
                is_first = after_done
                after_done = done
                done_now, obs, first = placement.place((done, result.obs, is_first))
                actors = observe(actors.replace(after_done=jnp.asarray(done_now)), obs, first)
            record["obs"].append(actors.stack)
            rollout = placement.place(Rollout(**{
                name: jnp.stack([jnp.asarray(v) for v in values], axis=1)
                for name, values in record.items()}))   # [S, T(+1), N, ...]
            if heldout.wants_more:   # its copy on the host, whole
                heldout.offer_seeds(to_host(rollout))
            train, metrics = update(train, rollout)
            before, after = index * steps_per_update, (index + 1) * steps_per_update
            if learner.settings.method in Q_METHODS and crosses(before, after, c.tau):
                train = sync(train)
            metrics = jax.device_get(metrics)
            for seed in range(seeds):
                chunk.metrics[seed].append({k: v[seed] for k, v in metrics.items()})
            chunk.steps += steps_per_update
            last = index + 1 == total_updates
            if chunk.steps >= c.chunk_steps or last:
                logger.log_chunk(after, chunk.out(),
                                 mean_actor_epsilon(learner, actors.steps, actors.final_epsilon),
                                 time.perf_counter() - chunk.started, chunk.steps)
                chunk.reset()
            if after >= session.next_eval or last:
                scores, episodes = evaluator(train.params, after, session.next_eval_key())
                whole = to_host(train)   # per-seed statistics on the host's whole copy
                v, td = heldout.stats(lambda seed: jax.tree.map(lambda x: x[seed], whole))
                session.record_evaluation(after, scores, episodes, items, index + 1, v, td)
    finally:
        env.close()
    return train



# ---------------------------------------------------------------------------- entry

def checkpoint_templates(config: Config, env, keys,
                         placement: SeedPlacement = SeedPlacement()) -> ActorLearnerItems:
    """A run's checkpoint items as ShapeDtypeStructs (what ``loop.Trainer`` restores into)."""
    learner = build_learner(config, env.spec)
    if isinstance(env, JaxEnv):
        share = device_learner(config, env.spec, placement.shards)
        return ActorLearnerItems.of_native(jax.eval_shape(
            lambda k, d: init_native_actor_seeds(share, env, k, d),
            *placement.share_keys(keys)))
    train, actors = jax.eval_shape(jax.vmap(learner.init), keys)
    if config.async_mode == "async":
        actors = async_templates(config.seeds, config.envs)
    return ActorLearnerItems(train=train, actors=actors)


def run_actor_learner(config: Config, env, keys, session, restored=None, *,
                      placement: SeedPlacement = SeedPlacement()):
    """Trains ``config.seeds`` seeds of the actor-learner ``--async`` names with ``session``
    (``PlainSession`` or ``loop.Trainer``), from scratch or from ``restored``; returns the
    final train state [S]. ``placement`` splits the seeds over devices (``loop.Trainer``
    refuses more than one device for the asynchronous host loop)."""
    if isinstance(env, JaxEnv):
        return train_native(config, env, keys, session, restored,
                            placement=placement)[0].train
    if config.async_mode == "async":
        return run_host_async(config, env, keys, session, restored)
    return run_host_sync(config, env, keys, session, restored, placement=placement)
