"""The actor-learners' outer loops (``--async sarsa|onestep|nstep|a3c``): the edge around
``jaxatari.agents.actor_learner``.

How this relates to the original's Hogwild A3C
-----------------------------------------------
Kaixhin/Atari (like Mnih et al. 2016) ran ``-threads`` CPU threads, each with its own
emulator and a thread-local copy of the network, all writing gradients into one shared
parameter tensor without locks (Hogwild!, Recht et al. 2011): a thread plays t_max steps,
computes its gradient against parameters that other threads may be overwriting, and
applies it to the shared parameters and shared RMSProp statistics.

JAX has no shared mutable parameters: a jitted function maps parameters to new
parameters. And on a CPU or GPU, one network evaluation on a batch of N states costs far
less than N evaluations of one state. So here the N actors are batched:

* ``--async-mode sync`` (A2C-style, the default for the demos): N = ``--envs`` envs per
  seed step together; every T = ``--batch-size`` steps the [T, N] rollout makes ONE
  update, averaged over the actors. For JAX-native envs (Catch, GridWorld, MinAtar) the
  whole loop - acting, env steps, rollouts, updates, target syncs - is one jitted
  ``lax.scan`` with the seeds vmapped (as ``agents/native.py``); for host envs one pool of
  S * N envs is reshaped to [S, N]. This is A2C (Wu et al. 2017, "the synchronous version
  of A3C"): the same losses, without the stale gradients of lock-free threads.
* ``--async-mode async`` (host envs with envpool): envpool's async API plays
  ``--envs`` envs and hands back whichever ``B`` are ready first (B is the largest
  proper divisor of ``--envs``, half of them for even counts), so a slow env never
  stalls acting or learning, as in Hogwild where a slow thread never stalls the others.
  Each env's transitions are gathered under its env id; whenever B envs have completed a
  rollout of T steps, one update is made from them. Unlike Hogwild the update is one
  consistent step: gradients never mix parameters of different ages within an update;
  like Hogwild a rollout may span a parameter update (its first steps acted with older
  parameters), which is the same mild off-policyness A3C accepted.

Why batch at all: JAX arrays are immutable, so lock-free writes into one parameter buffer
are impossible; and batching N actors into one network call (and one update) is what
makes a CPU's vector units or a GPU efficient, where N threads each evaluating one state
leave them idle. ``--async-mode async`` with a JAX-native env is refused: those envs have
no async API, and inside one jitted scan nothing can be slow anyway.

Life loss: the async mode builds envpool itself (``make_async_envpool``), with every
option from the protocol recorded in the env spec (``envs.atari.envpool_kwargs``; raw game
rewards from ``info["reward"]``, game overs from ``info["terminated"]``) and detects lost
lives from ``info["lives"]``, as ``envs/atari.py`` does, instead of envpool's
``episodic_life``; validation always plays whole games (life loss not terminal).

Runs, checkpoints, Ctrl+C and resume: the loops talk to a session (``loop.Trainer`` for a
run, ``PlainSession`` for library use) that validates, saves ``last``/``best``/``step_N``
after each evaluation, answers Ctrl+C at the loops' safe points (between chunks, updates or
receives) with the same ``InterruptGuard`` as the replay agents, and hands back a
restored checkpoint (``native_items``, ``async_items``, ``checkpoint_templates``).

Kept from the original: a shared global step (target network synced every ``--tau``
global steps, the learning rate annealed to 0 over ``--steps``), per-actor epsilons, a
validation that acts epsilon-greedily (Q methods) or samples from the policy (A3C) and
reports raw game scores. Deviations: validation pauses training (the original validated
in a parallel thread while learners kept training); after a lost life in async mode the
env is not held for a reset step (the next frame starts a new stack at once: the
life-loss step has discount 0, so no bootstrap needs the old stack).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxatari.agents.actor_learner import (Q_METHODS, ActorLearner, ActorLearnerSettings,
                                           Actors, Rollout, actor_epsilon, make_actor_learner)
from jaxatari.agents.frames import push_frame
from jaxatari.agents.native import (_reset_or_step, make_scored_play, scan_iterations,
                                    to_agent_frame)
from jaxatari.config import Config, async_batch_size
from jaxatari.envs import EnvSpec, JaxEnv
from jaxatari.evaluation import EVAL_ENV_SEED_OFFSET, EVAL_KEY_OFFSET
from jaxatari.metrics import Evaluation, mean_score
from jaxatari.types import TrainState
from jaxatari.xla_options import edge_jit


# ------------------------------------------------------------------------ configuration

def actors_per_update(config: Config) -> int:
    return async_batch_size(config.envs) if config.async_mode == "async" else config.envs


def learner_settings(config: Config, spec: EnvSpec, num_actors: int,
                     actors_per_learn: int) -> ActorLearnerSettings:
    """The flat options as the actor-learner's static choices."""
    uint8 = spec.obs_dtype == "uint8"
    return ActorLearnerSettings(
        method=config.async_method, num_actions=spec.num_actions,
        obs_shape=tuple(spec.obs_shape), obs_dtype="uint8" if uint8 else "float32",
        num_actors=num_actors, rollout_length=config.batch_size, hist_len=config.hist_len,
        body=config.model_body, mlp_features=(config.mlp_hidden,),
        hidden_size=config.hidden_size, dueling=config.duel and config.async_method in Q_METHODS,
        double_q=config.double_q and config.async_method in Q_METHODS, gamma=config.gamma,
        reward_clip=config.reward_clip, td_clip=config.td_clip,
        entropy_beta=config.entropy_beta, epsilon_start=config.epsilon_start,
        epsilon_steps=config.epsilon_steps, optimiser=config.optimiser,
        learning_rate=config.eta, momentum=config.momentum, rms_epsilon=config.rms_epsilon,
        grad_clip=config.grad_clip,
        total_updates=max(config.steps // (config.batch_size * actors_per_learn), 1))


def build_learner(config: Config, spec: EnvSpec) -> ActorLearner:
    """The run's actor-learner (N = --envs actors per seed)."""
    return make_actor_learner(learner_settings(config, spec, config.envs,
                                               actors_per_update(config)))


def _crosses(before: int, after: int, period: int) -> bool:
    return after // period != before // period


def _mean_epsilon(learner: ActorLearner, steps, final_epsilon) -> float:
    if learner.settings.method not in Q_METHODS:
        return 0.0
    s = learner.settings
    return float(np.mean(actor_epsilon(np.asarray(steps), np.asarray(final_epsilon),
                                       start=s.epsilon_start, decay_steps=s.epsilon_steps)))


# --------------------------------------------------------------------- JAX-native envs

@struct.dataclass
class NativeActorCarry:
    """Everything one seed carries between iterations of the native loop."""

    train: TrainState
    actors: Actors
    env_state: Any        # [N] env states
    score: jax.Array      # [N] raw game score of the running episodes


def init_native_actor_carry(learner: ActorLearner, env: JaxEnv, key) -> NativeActorCarry:
    learner_key, env_key = jax.random.split(key)
    train, actors = learner.init(learner_key)
    n = learner.settings.num_actors
    env_state, frame = jax.vmap(env.reset)(jax.random.split(env_key, n))
    actors = learner.observe(actors, to_agent_frame(frame, learner.frame_dtype),
                             jnp.ones((n,), bool))
    return NativeActorCarry(train=train, actors=actors, env_state=env_state,
                            score=jnp.zeros((n,), jnp.float32))


def make_native_rollout(learner: ActorLearner, env: JaxEnv) -> Callable:
    """rollout(params, actors, env_state, score) -> (actors, env_state, score, Rollout, out):
    T steps of the N envs of one seed (next-step resets, as ``agents/native.py``)."""
    s = learner.settings

    def step(params, state, _):
        actors, env_state, score = state
        stack, valid = actors.stack, ~actors.after_done
        actions, eps, actors = learner.act(params, actors)
        key, env_key = jax.random.split(actors.key)
        env_state, frame, reward, terminated, truncated = _reset_or_step(
            env, env_key, env_state, actions, actors.after_done)
        done = terminated | truncated
        is_first = actors.after_done
        actors = learner.observe(actors.replace(after_done=done, key=key),
                                 to_agent_frame(frame, learner.frame_dtype), is_first)
        score = score + reward
        record = dict(obs=stack, action=actions, reward=reward, terminal=terminated, cut=done,
                      valid=valid, epsilon=eps, scores=score, finished=done)
        return (actors, env_state, jnp.where(done, 0.0, score)), record

    def rollout(params, actors, env_state, score):
        (actors, env_state, score), rec = jax.lax.scan(
            lambda state, x: step(params, state, x), (actors, env_state, score), None,
            length=s.rollout_length)
        batch = Rollout(obs=jnp.concatenate([rec["obs"], actors.stack[None]]),
                        action=rec["action"], reward=rec["reward"], terminal=rec["terminal"],
                        cut=rec["cut"], valid=rec["valid"], epsilon=rec["epsilon"])
        return actors, env_state, score, batch, {"scores": rec["scores"],
                                                 "finished": rec["finished"]}

    return rollout


class HeldOutRollouts:
    """The actor-learners' held-out transitions (the original's valMemory, which holds
    early, near-random experience): about ``--val-size`` transitions per seed, whole
    rollouts of the untrained policy, fixed for the run. Each validation reports on them
    the mean V (max Q, or the critic's value) and mean |TD error|, each method's own
    target, as its loss computes them (Sarsa's next action drawn with a fixed key).

    The JAX-native loop plays them from the run's initial state and parameters
    (``make_native_heldout``), so a resumed run has the same set; the host loops ``offer``
    the rollouts their learner consumed and the first ones are kept (a resumed host run
    takes its first ones after the resume).
    """

    def __init__(self, learner: ActorLearner, config: Config):
        per_rollout = learner.settings.rollout_length * learner.settings.num_actors
        self.count = max(1, math.ceil(config.val_size / per_rollout))   # rollouts per seed
        self.seeds = config.seeds
        self._recent: list[list[Rollout]] = [[] for _ in range(config.seeds)]
        self.rollouts: list[Rollout] | None = None    # per seed, stacked [R, ...]

        def stats(params, target_params, rollouts):
            def one(rollout):
                return learner.loss(params, target_params, rollout, jax.random.PRNGKey(0))[1]
            metrics = jax.vmap(one)(rollouts)
            return metrics["q_mean"].mean(), metrics["td_error"].mean()
        self._stats = edge_jit(stats)

    def offer(self, seed: int, rollout: Rollout) -> None:
        """One seed's rollout [T(+1), N, ...] the learner consumed (kept while the seed has
        fewer than ``count``)."""
        if self.rollouts is None and len(self._recent[seed]) < self.count:
            self._recent[seed].append(rollout)

    def offer_seeds(self, rollout: Rollout) -> None:
        """A rollout of every seed [S, T(+1), N, ...]."""
        if self.rollouts is None:
            for seed in range(self.seeds):
                self.offer(seed, jax.tree.map(lambda x: x[seed], rollout))

    def fix(self, per_seed: Rollout | None = None) -> bool:
        """Fixes the held-out set: ``per_seed`` [S, R, ...] or the rollouts offered so far.
        False while some seed has none yet."""
        if self.rollouts is None:
            if per_seed is not None:
                self.rollouts = [jax.tree.map(lambda x: x[seed], per_seed)
                                 for seed in range(self.seeds)]
            elif all(self._recent):
                self.rollouts = [jax.tree.map(lambda *xs: jnp.stack(xs), *recent)
                                 for recent in self._recent]
                self._recent = [[] for _ in range(self.seeds)]
        return self.rollouts is not None

    def stats(self, train_of: Callable[[int], TrainState]) -> tuple[np.ndarray | None, ...]:
        """(V [S], |TD error| [S]) on the held-out set, or (None, None) before it exists."""
        if not self.fix():
            return None, None
        values = [jax.device_get(self._stats(train_of(seed).params,
                                             train_of(seed).target_params, rollouts))
                  for seed, rollouts in enumerate(self.rollouts)]
        v, td = np.asarray(values, np.float64).T
        return v, td


def make_native_heldout(learner: ActorLearner, env: JaxEnv, count: int) -> Callable:
    """(params, actors, env_state, score) -> Rollout [R, ...]: ``count`` rollouts of one
    seed played on from the given state (nothing of a run's own state changes)."""
    rollout = make_native_rollout(learner, env)

    def play(params, actors, env_state, score):
        def one(state, _):
            actors, env_state, score, batch, _ = rollout(params, *state)
            return (actors, env_state, score), batch
        _, batches = jax.lax.scan(one, (actors, env_state, score), None, length=count)
        return batches
    return play


def make_native_actor_chunk(learner: ActorLearner, env: JaxEnv, num_iterations: int,
                            target_period: int) -> Callable:
    """chunk(carry [S], first_iteration, active=None) -> (carry, outputs), pure and
    unjitted (``active``: as for ``agents.native.make_native_chunk``).

    An iteration plays one rollout of T steps in the N envs of every seed and makes one
    update per seed; the target sync decision is computed outside the seed vmap from the
    shared iteration counter. Outputs: ``scores``/``finished`` [I, S, T, N] and the
    learner's metrics [I, S].
    """
    s = learner.settings
    steps_per_iteration = s.rollout_length * s.num_actors
    rollout = make_native_rollout(learner, env)

    def seed_iteration(carry: NativeActorCarry, syncs):
        actors, env_state, score, batch, out = rollout(carry.train.params, carry.actors,
                                                       carry.env_state, carry.score)
        train, metrics = learner.update(carry.train, batch)
        train = jax.lax.cond(syncs, learner.sync_target, lambda t: t, train)
        carry = carry.replace(train=train, actors=actors, env_state=env_state, score=score)
        return carry, {**out, **metrics}

    def chunk(carry: NativeActorCarry, first_iteration, active=None):
        step_all = jax.vmap(seed_iteration, in_axes=(0, None))

        def iteration(carry, index):
            before = (first_iteration + index) * steps_per_iteration
            after = before + steps_per_iteration
            return step_all(carry, after // target_period != before // target_period)

        return scan_iterations(iteration, carry, num_iterations, active)

    return chunk


def make_native_actor_evaluate(learner: ActorLearner, env: JaxEnv, *, num_envs: int,
                               num_steps: int, epsilon: float, greedy: bool = False) -> Callable:
    """The actor-learners' validation (``agents.native.make_scored_play``) with
    ``learner.evaluate_policy``: epsilon-greedy (Q methods) or a sample of the policy (A3C;
    its most probable action with ``greedy``)."""

    def init_actor(key):
        del key   # the scan draws every action's key
        return Actors(stack=jnp.zeros((num_envs, *learner.stack_shape), learner.frame_dtype),
                      after_done=jnp.zeros((num_envs,), bool),
                      steps=jnp.zeros((num_envs,), jnp.int32),
                      final_epsilon=jnp.zeros((num_envs,), jnp.float32),
                      key=jax.random.PRNGKey(0))

    def act(params, actors, key):
        return learner.evaluate_policy(params, actors.stack, key, epsilon, greedy), actors

    def observe(actors, frame, is_first, done):
        del done
        return learner.observe(actors, frame, is_first)

    return make_scored_play(env, num_envs=num_envs, num_steps=num_steps,
                            frame_dtype=learner.frame_dtype, init_actor=init_actor, act=act,
                            observe=observe)


def _eval_steps_per_env(config: Config) -> int:
    return max(math.ceil(config.val_steps / config.val_envs), 1)


class PlainSession:
    """The run around a loop without a run directory (library use, learning tests): logs to
    ``logger``, draws evaluation keys from the same chain as a run, keeps the evaluations in
    memory; no checkpoints, and Ctrl+C is Python's KeyboardInterrupt. ``loop.Trainer`` is the
    full session: the same methods, plus checkpoints, resume and the Ctrl+C question."""

    interrupt_requested = False

    def __init__(self, config: Config, logger):
        self.config = config
        self.logger = logger
        self.evaluations: list[Evaluation] = []
        self.next_eval = config.val_freq
        self.eval_key = jax.random.PRNGKey(config.seed + EVAL_KEY_OFFSET)

    def next_eval_key(self):
        self.eval_key, key = jax.random.split(self.eval_key)
        return key

    def record_evaluation(self, step: int, scores, episodes, items: Callable[[], dict],
                          iteration: int, v=None, td_error=None) -> Evaluation:
        del iteration   # nothing is saved
        evaluation = Evaluation(step, np.asarray(scores, np.float64), np.asarray(episodes),
                                v=v, td_error=td_error)
        self.evaluations.append(evaluation)
        self.logger.log_eval(step, evaluation.scores, evaluation.episodes, v=v,
                             td_error=td_error, params=items()["train"].params)
        self.next_eval = (step // self.config.val_freq + 1) * self.config.val_freq
        return evaluation

    def handle_interrupt(self, items, step: int, iteration: int) -> None:
        raise KeyboardInterrupt


def native_items(carry: NativeActorCarry) -> dict[str, Any]:
    """A native run's checkpoint items: learner, actors (stacks, epsilon counters and final
    epsilons, keys) and the envs themselves (JAX-native envs are plain state)."""
    return {"train": carry.train, "actors": carry.actors,
            "env": {"env_state": carry.env_state, "score": carry.score}}


def train_native(config: Config, env: JaxEnv, keys, session, restored=None
                 ) -> tuple[NativeActorCarry, ActorLearner]:
    """The JAX-native loop; returns the final carry [S] and the learner.

    ``session``: ``PlainSession`` or ``loop.Trainer`` (evaluations, checkpoints, Ctrl+C);
    ``restored``: a ``loop.Restored`` to continue from. Saves happen only at chunk
    boundaries and a resumed run continues with the same chunks from the saved iteration,
    so with the same options it reproduces the uninterrupted run bit for bit on CPU.
    """
    c = config
    learner = build_learner(c, env.spec)
    steps_per_iteration = c.batch_size * c.envs
    total_iterations = c.steps // steps_per_iteration
    from jaxatari.loop import chunk_iterations   # loop imports this module lazily
    per_chunk = chunk_iterations(c, steps_per_iteration)
    # one compiled chunk; a shorter last chunk runs it with its tail masked
    chunk = edge_jit(make_native_actor_chunk(learner, env, per_chunk, c.tau), donate_argnums=0)

    evaluate = edge_jit(jax.vmap(make_native_actor_evaluate(
        learner, env.for_mode("eval"), num_envs=c.val_envs, num_steps=_eval_steps_per_env(c),
        epsilon=c.val_epsilon)))
    init_carry = edge_jit(jax.vmap(lambda k: init_native_actor_carry(learner, env, k)))
    if restored is None:
        carry = init_carry(keys)
        iteration = 0
    else:
        items = restored.items
        carry = NativeActorCarry(train=items["train"], actors=items["actors"], **items["env"])
        iteration = restored.iteration
    logger = session.logger
    evaluated_at = session.evaluations[-1].step if session.evaluations else -1
    heldout = HeldOutRollouts(learner, c)
    play_heldout = edge_jit(jax.vmap(make_native_heldout(learner, env, heldout.count)))
    while True:
        step = iteration * steps_per_iteration
        if session.interrupt_requested:
            session.handle_interrupt(lambda: native_items(carry), step, iteration)
        done = iteration >= total_iterations
        if (step >= session.next_eval or done) and step != evaluated_at and iteration > 0:
            total, episodes, partial = jax.device_get(
                evaluate(carry.train.params, jax.random.split(session.next_eval_key(), c.seeds)))
            if heldout.rollouts is None:
                start = init_carry(keys)
                heldout.fix(play_heldout(start.train.params, start.actors, start.env_state,
                                         start.score))
            v, td = heldout.stats(lambda seed: jax.tree.map(lambda x: x[seed], carry.train))
            session.record_evaluation(step, mean_score(total, episodes, partial), episodes,
                                      lambda: native_items(carry), iteration, v, td)
            evaluated_at = step
        if done:
            return carry, learner
        run = min(per_chunk, total_iterations - iteration)
        started = time.perf_counter()
        carry, out = chunk(carry, jnp.int32(iteration), jnp.int32(run))
        out = jax.tree.map(lambda x: x[:run], jax.device_get(out))
        iteration += run
        log = {name: np.asarray(out[name]).transpose(0, 2, 1, 3).reshape(
                   -1, c.seeds, c.envs) for name in ("scores", "finished")}
        log.update({name: np.asarray(out[name]) for name in ("loss", "td_error", "q_mean")})
        log["learned"] = np.ones(run, bool)
        logger.log_chunk(iteration * steps_per_iteration, log,
                         _mean_epsilon(learner, carry.actors.steps, carry.actors.final_epsilon),
                         time.perf_counter() - started, run * steps_per_iteration)


# -------------------------------------------------------------------------- host envs

def _to_seeds(x: np.ndarray, seeds: int) -> np.ndarray:
    return np.asarray(x).reshape(seeds, -1, *np.shape(x)[1:])


class HostEvaluator:
    """Validation on host envs: --val-steps steps per seed over --val-envs envs in eval mode
    (life loss not terminal), all seeds in one pool, raw game scores."""

    def __init__(self, config: Config, env_factory, learner: ActorLearner):
        self.config = config
        self.env_factory = env_factory
        self.learner = learner

        def observe(stack, frame, is_first):
            dummy = Actors(stack=stack, after_done=is_first, steps=jnp.zeros(is_first.shape,
                                                                               jnp.int32),
                           final_epsilon=jnp.zeros(is_first.shape), key=jax.random.PRNGKey(0))
            return learner.observe(dummy, to_agent_frame(frame, learner.frame_dtype),
                                   is_first).stack

        self.observe = edge_jit(jax.vmap(observe))
        self.policy = edge_jit(jax.vmap(learner.evaluate_policy, in_axes=(0, 0, 0, None)))

    def __call__(self, params, step: int, key) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        seeds, envs = c.seeds, c.val_envs
        env = self.env_factory(seeds * envs, c.seed + EVAL_ENV_SEED_OFFSET + step, mode="eval")
        try:
            stack = jnp.zeros((seeds, envs, *self.learner.stack_shape), self.learner.frame_dtype)
            stack = self.observe(stack, _to_seeds(env.reset(), seeds), np.ones((seeds, envs), bool))
            score = np.zeros((seeds, envs))
            total = np.zeros(seeds)
            episodes = np.zeros(seeds, np.int64)
            after_done = np.zeros((seeds, envs), bool)
            for _ in range(_eval_steps_per_env(c)):
                key, step_key = jax.random.split(key)
                actions = self.policy(params, stack, jax.random.split(step_key, seeds),
                                      c.val_epsilon)
                result = env.step(np.asarray(actions).reshape(-1))
                over = _to_seeds(result.game_over, seeds)
                score += _to_seeds(result.reward, seeds)
                total += np.where(over, score, 0.0).sum(1)
                episodes += over.sum(1)
                score = np.where(over, 0.0, score)
                is_first = after_done
                after_done = _to_seeds(result.terminated | result.truncated, seeds)
                stack = self.observe(stack, _to_seeds(result.obs, seeds), is_first)
            return mean_score(total, episodes, score.mean(1)), episodes
        finally:
            env.close()


class _ChunkLog:
    """Collects what ``RunLogger.log_chunk`` needs between host syncs."""

    def __init__(self, seeds: int):
        self.seeds = seeds
        self.reset()

    def reset(self):
        self.scores: list[np.ndarray] = []      # [S, E] per step
        self.finished: list[np.ndarray] = []
        self.metrics: list[list[dict]] = [[] for _ in range(self.seeds)]
        self.started = time.perf_counter()
        self.steps = 0

    def out(self) -> dict[str, np.ndarray]:
        """Seeds may have made different numbers of updates (async mode): each seed's rows
        are padded with its own mean, so the per-seed means the logger prints are exact."""
        rows = max((len(m) for m in self.metrics), default=0)
        out = {"scores": np.stack(self.scores), "finished": np.stack(self.finished),
               "learned": np.ones(rows, bool)}
        for name in ("loss", "td_error", "q_mean"):
            table = np.full((rows, self.seeds), np.nan)
            for seed, metrics in enumerate(self.metrics):
                values = [float(m[name]) for m in metrics]
                if values:
                    table[:, seed] = np.mean(values)
                    table[:len(values), seed] = values
            out[name] = table
        return out


def _run_host_sync(config: Config, env_factory, keys, session, restored=None):
    """S * N host envs in one pool stepped together; one vmapped update per rollout.
    Returns the final train state [S].

    A resumed run restores learner, actor keys, epsilon counters and the update count; the
    envs cannot be restored, so it starts new games (seeded ``--seed + step``) with empty
    frame stacks, and the running episodes' scores are lost."""
    c = config
    seeds, envs, length = c.seeds, c.envs, c.batch_size
    learner = build_learner(c, env_factory.spec)
    init = edge_jit(jax.vmap(learner.init))
    observe = edge_jit(jax.vmap(lambda a, f, first: learner.observe(
        a, to_agent_frame(f, learner.frame_dtype), first)))
    act = edge_jit(jax.vmap(learner.act))
    update = edge_jit(jax.vmap(learner.update), donate_argnums=0)
    sync = edge_jit(jax.vmap(learner.sync_target))
    evaluator = HostEvaluator(c, env_factory, learner)
    heldout = HeldOutRollouts(learner, c)
    steps_per_update = length * envs
    total_updates = c.steps // steps_per_update
    logger = session.logger

    train, actors = init(keys)
    start = 0
    if restored is not None:
        train, actors = restored.items["train"], restored.items["actors"]
        start = restored.iteration
    env = env_factory(seeds * envs, c.seed + start * steps_per_update, mode="train")
    actors = observe(actors.replace(after_done=jnp.zeros((seeds, envs), bool)),
                     _to_seeds(env.reset(), seeds), np.ones((seeds, envs), bool))
    after_done = np.zeros((seeds, envs), bool)
    score = np.zeros((seeds, envs))
    chunk = _ChunkLog(seeds)

    def items():
        return {"train": train, "actors": actors}

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
                result = env.step(np.asarray(actions).reshape(-1))
                reward = _to_seeds(result.reward, seeds)
                terminal = _to_seeds(result.terminated, seeds)
                done = terminal | _to_seeds(result.truncated, seeds)
                over = _to_seeds(result.game_over, seeds)
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
                actors = observe(actors.replace(after_done=jnp.asarray(done)),
                                 _to_seeds(result.obs, seeds), is_first)
            record["obs"].append(actors.stack)
            rollout = Rollout(**{name: jnp.stack([jnp.asarray(v) for v in values], axis=1)
                                 for name, values in record.items()})   # [S, T(+1), N, ...]
            heldout.offer_seeds(rollout)
            train, metrics = update(train, rollout)
            before, after = index * steps_per_update, (index + 1) * steps_per_update
            if learner.settings.method in Q_METHODS and _crosses(before, after, c.tau):
                train = sync(train)
            metrics = jax.device_get(metrics)
            for seed in range(seeds):
                chunk.metrics[seed].append({k: v[seed] for k, v in metrics.items()})
            chunk.steps += steps_per_update
            last = index + 1 == total_updates
            if chunk.steps >= c.chunk_steps or last:
                logger.log_chunk(after, chunk.out(),
                                 _mean_epsilon(learner, actors.steps, actors.final_epsilon),
                                 time.perf_counter() - chunk.started, chunk.steps)
                chunk.reset()
            if after >= session.next_eval or last:
                scores, episodes = evaluator(train.params, after, session.next_eval_key())
                v, td = heldout.stats(lambda seed: jax.tree.map(lambda x: x[seed], train))
                session.record_evaluation(after, scores, episodes, items, index + 1, v, td)
    finally:
        env.close()
    return train


# ------------------------------------------------------------------ asynchronous mode

class AsyncActors:
    """One seed's envs behind an envpool-style async API, with per-env rollouts.

    ``pool`` needs ``async_reset()``, ``recv() -> (obs [B, C, H, W], reward, terminated,
    truncated, info)`` with ``info["env_id"]``, ``info["reward"]`` (raw), ``info["terminated"]``
    (real game over) and ``info["lives"]``, and ``send(actions [B], env_id [B])``; a step
    sent to an env right after its episode ended is a reset step (envpool's auto-reset).

    Every result is filed under its env id: it completes the transition whose action was
    sent to that env, and every T transitions of an env make one rollout in ``ready``.
    ``policy(stacks [B, ...], epsilon [B]) -> actions [B]`` is called on the stacks of the
    envs just received, and its actions are sent to exactly those env ids.
    """

    def __init__(self, pool, *, num_envs: int, batch_size: int, rollout_length: int,
                 stack_shape: tuple[int, ...], frame_dtype, final_epsilon: np.ndarray,
                 epsilon_fn: Callable, life_loss_terminal: bool):
        self.pool = pool
        self.num_envs, self.batch_size, self.length_max = num_envs, batch_size, rollout_length
        self.final_epsilon = np.asarray(final_epsilon, np.float32)
        self.epsilon_fn = epsilon_fn
        self.life_loss_terminal = life_loss_terminal
        n, t = num_envs, rollout_length
        self.stack = np.zeros((n, *stack_shape), frame_dtype)
        self.after_done = np.zeros(n, bool)
        self.pending = np.zeros(n, bool)
        self.steps = np.zeros(n, np.int64)         # actor steps (epsilon schedule)
        self.lives = np.zeros(n, np.int64)
        self.score = np.zeros(n, np.float64)
        self.length = np.zeros(n, np.int64)
        self.buffer = {
            "obs": np.zeros((n, t + 1, *stack_shape), frame_dtype),
            "action": np.zeros((n, t), np.int32), "reward": np.zeros((n, t), np.float32),
            "terminal": np.zeros((n, t), bool), "cut": np.zeros((n, t), bool),
            "valid": np.zeros((n, t), bool), "epsilon": np.zeros((n, t), np.float32)}
        self.ready: list[dict[str, np.ndarray]] = []
        self.received = 0          # transitions completed (global steps of this seed)
        self.sent = 0

    def start(self) -> None:
        self.pool.async_reset()

    def _push(self, i: int, frame: np.ndarray, is_first: bool) -> None:
        self.stack[i] = push_frame(self.stack[i][None], frame[None], np.asarray([is_first]),
                                   xp=np)[0]

    def _complete(self, i: int) -> None:
        """Files env i's full rollout, whose last stack is the env's current one."""
        self.buffer["obs"][i, self.length_max] = self.stack[i]
        self.ready.append({name: value[i].copy() for name, value in self.buffer.items()})
        self.length[i] = 0

    def receive(self) -> tuple[np.ndarray, list[float]]:
        """One ``recv``: completes the received envs' transitions. Returns the env ids and
        the raw scores of the games that ended."""
        obs, _, terminated, truncated, info = self.pool.recv()
        ids = np.asarray(info["env_id"], np.int64)
        frames = np.asarray(obs)
        if frames.ndim == 4:                      # [B, C, H, W] -> [B, H, W, C]
            frames = frames.transpose(0, 2, 3, 1)
        raw_reward = np.asarray(info["reward"], np.float32)
        game_over = np.asarray(info["terminated"]).astype(bool)
        truncated = np.asarray(truncated).astype(bool)
        lives = np.asarray(info["lives"], np.int64)
        finished: list[float] = []
        for k, i in enumerate(ids):
            if not self.pending[i]:               # the first observation after async_reset
                self.lives[i] = lives[k]
                self.after_done[i] = False
                self._push(i, frames[k], True)
                continue
            self.pending[i] = False
            t = self.length[i]
            ended = bool(game_over[k] or truncated[k])
            lost_life = (self.life_loss_terminal and not ended
                         and lives[k] < self.lives[i])
            terminal = bool(game_over[k]) or lost_life
            self.buffer["reward"][i, t] = raw_reward[k]
            self.buffer["terminal"][i, t] = terminal
            self.buffer["cut"][i, t] = terminal or bool(truncated[k])
            self.length[i] = t + 1
            self.received += 1
            self.score[i] += raw_reward[k]
            if ended:
                finished.append(float(self.score[i]))
                self.score[i] = 0.0
            # A reset step's frame (the step after a game over) starts a new stack; after a
            # lost life the frame starts one at once (no bootstrap reads the old stack: the
            # life-loss step has discount 0).
            self._push(i, frames[k], bool(self.after_done[i]) or lost_life)
            self.after_done[i] = ended
            self.lives[i] = lives[k]
            if self.length[i] == self.length_max:
                self._complete(i)
        return ids, finished

    def act(self, ids: np.ndarray, policy: Callable) -> np.ndarray:
        """Acts for the envs ``ids`` on their own stacks and sends each its action."""
        eps = self.epsilon_fn(self.steps[ids], self.final_epsilon[ids])
        actions = np.asarray(policy(self.stack[ids], eps), np.int32)
        t = self.length[ids]
        self.buffer["obs"][ids, t] = self.stack[ids]
        self.buffer["action"][ids, t] = actions
        self.buffer["valid"][ids, t] = ~self.after_done[ids]
        self.buffer["epsilon"][ids, t] = eps
        self.pending[ids] = True
        self.steps[ids] += 1
        self.sent += len(ids)
        self.pool.send(actions, ids.astype(np.int32))
        return actions

    def step(self, policy: Callable) -> list[float]:
        ids, finished = self.receive()
        self.act(ids, policy)
        return finished

    def drain(self) -> list[float]:
        """Receives every env still in flight, sending nothing back."""
        finished: list[float] = []
        while self.pending.sum() >= self.batch_size:
            finished += self.receive()[1]
        return finished

    def flush(self) -> None:
        """Files every partial rollout, padded with invalid steps: its last real step
        bootstraps from the env's current stack (or not at all if it terminated)."""
        for i in np.flatnonzero(self.length > 0):
            t = self.length[i]
            b = self.buffer
            b["cut"][i, t - 1] = True
            b["obs"][i, t:] = self.stack[i]
            b["action"][i, t:] = 0
            b["reward"][i, t:] = 0.0
            b["terminal"][i, t:] = False
            b["cut"][i, t:] = True
            b["valid"][i, t:] = False
            self.length[i] = self.length_max
            self._complete(i)

    def pop_batch(self, pad: bool = False) -> Rollout | None:
        """B ready rollouts as one [T, B] rollout (oldest first); with ``pad``, fewer are
        padded with all-invalid rollouts. None when too few are ready."""
        if not self.ready or (len(self.ready) < self.batch_size and not pad):
            return None
        taken, self.ready = self.ready[:self.batch_size], self.ready[self.batch_size:]
        while len(taken) < self.batch_size:
            blank = {name: np.zeros_like(value) for name, value in taken[0].items()}
            taken.append(blank)               # valid all False: no effect on the loss
        return Rollout(**{name: np.stack([r[name] for r in taken], axis=1)
                          for name in taken[0]})


def make_async_envpool(spec: EnvSpec, num_envs: int, batch_size: int, seed: int):
    """An envpool Atari pool with the async API, built from the protocol recorded in the
    spec (every option spelled out by ``envs.atari.envpool_kwargs``; raw rewards)."""
    import envpool
    from jaxatari.envs.atari import PROTOCOLS, envpool_kwargs

    protocol = spec.protocol
    settings = {name: protocol[name] for name in PROTOCOLS[protocol["protocol"]]}
    return envpool.make_gymnasium(f"{protocol['game']}-v5", num_envs=num_envs,
                                  batch_size=batch_size, seed=seed, **envpool_kwargs(settings))


def _run_host_async(config: Config, env_factory, keys, session, restored=None,
                    make_pool: Callable | None = None,
                    on_rollout: Callable | None = None):
    """One async envpool per seed, served round robin; see the module docstring. Returns
    the final train state [S].

    ``make_pool(seed, first_step)`` builds a seed's pool (default: envpool seeded from
    both); ``on_rollout(seed, rollout)`` sees every rollout the learner consumes (tests
    count transitions with it).

    Checkpoints hold each seed's learner, its actors' epsilon counters and final epsilons,
    its policy key and its step counters (``async_items``). A resumed run starts new games
    (envpool cannot be restored) with empty stacks; the transitions of rollouts not yet
    complete when the run stopped are not learned (at most T - 1 per env).
    """
    c = config
    seeds, envs, length = c.seeds, c.envs, c.batch_size
    batch = async_batch_size(envs)
    spec = env_factory.spec
    learner = make_actor_learner(learner_settings(c, spec, envs, batch))
    s = learner.settings
    init = edge_jit(learner.init)
    update = edge_jit(learner.update, donate_argnums=0)
    sync = edge_jit(learner.sync_target)
    policy_fn = edge_jit(learner.policy)
    evaluator = HostEvaluator(c, env_factory, learner)
    heldout = HeldOutRollouts(learner, c)
    make_pool = make_pool or (lambda seed, first: make_async_envpool(
        spec, envs, batch, c.seed + 1_000 * seed + first))
    life_loss = bool(spec.protocol.get("life_loss_terminal", False))

    def epsilon_fn(steps, final):
        return np.asarray(actor_epsilon(steps, final, start=s.epsilon_start,
                                        decay_steps=s.epsilon_steps), np.float32)

    trains, runners = [], []
    saved = None if restored is None else jax.device_get(restored.items["actors"])
    first = 0 if restored is None else restored.step
    for seed in range(seeds):
        train, actors = init(keys[seed])
        final_epsilon = np.asarray(actors.final_epsilon)
        if saved is not None:
            train = jax.tree.map(lambda x: x[seed], restored.items["train"])
            final_epsilon = np.asarray(saved["final_epsilon"][seed])
        trains.append(train)
        runner = AsyncActors(make_pool(seed, first), num_envs=envs, batch_size=batch,
                             rollout_length=length, stack_shape=learner.stack_shape,
                             frame_dtype=learner.frame_dtype, final_epsilon=final_epsilon,
                             epsilon_fn=epsilon_fn, life_loss_terminal=life_loss)
        if saved is not None:
            runner.steps[:] = saved["steps"][seed]
            runner.received = int(saved["received"][seed])
        runners.append(runner)
    policy_keys = [jax.random.fold_in(keys[seed], 17) for seed in range(seeds)]
    learned = [0] * seeds          # transitions the learner has consumed, per seed
    if saved is not None:
        policy_keys = [jnp.asarray(saved["policy_key"][seed]) for seed in range(seeds)]
        learned = [int(n) for n in saved["learned"]]

    def items():
        return {"train": jax.tree.map(lambda *x: jnp.stack(x), *trains),
                "actors": async_items(runners, policy_keys, learned)}

    def policy_for(seed):
        def policy(stacks, eps):
            policy_keys[seed], key = jax.random.split(policy_keys[seed])
            return policy_fn(trains[seed].params, stacks, eps, key)
        return policy

    def learn(seed, rollout: Rollout, chunk: _ChunkLog):
        if on_rollout is not None:
            on_rollout(seed, rollout)
        heldout.offer(seed, rollout)
        train, metrics = update(trains[seed], rollout)
        before = learned[seed]
        learned[seed] += int(rollout.valid.sum())
        if s.method in Q_METHODS and _crosses(before, learned[seed], c.tau):
            train = sync(train)
        trains[seed] = train
        chunk.metrics[seed].append(jax.device_get(metrics))

    logger = session.logger
    chunk = _ChunkLog(seeds)
    logged = first

    def record_scores(per_seed: list[list[float]]):
        """Finished games' scores as rows [S, B] (a row holds at most one recv's games)."""
        rows = max(1, max(math.ceil(len(f) / batch) for f in per_seed))
        for row in range(rows):
            scores, finished = np.zeros((seeds, batch)), np.zeros((seeds, batch), bool)
            for seed, values in enumerate(per_seed):
                part = values[row * batch:(row + 1) * batch]
                scores[seed, :len(part)] = part
                finished[seed, :len(part)] = True
            chunk.scores.append(scores)
            chunk.finished.append(finished)

    def log_and_evaluate(final: bool):
        nonlocal logged
        step = min(r.received for r in runners)
        if chunk.steps >= c.chunk_steps or (final and chunk.scores):
            if not chunk.scores:
                record_scores([[] for _ in range(seeds)])
            logger.log_chunk(step, chunk.out(), float(np.mean(
                [_mean_epsilon(learner, r.steps, r.final_epsilon) for r in runners])),
                time.perf_counter() - chunk.started, chunk.steps)
            chunk.reset()
        if step >= session.next_eval or final:
            params = jax.tree.map(lambda *x: jnp.stack(x), *[t.params for t in trains])
            scores, episodes = evaluator(params, step, session.next_eval_key())
            v, td = heldout.stats(lambda seed: trains[seed])
            session.record_evaluation(step, scores, episodes, items, step, v, td)
        logged = step

    try:
        for runner in runners:
            runner.start()
        while min(r.received for r in runners) < c.steps:
            if session.interrupt_requested:
                step = min(r.received for r in runners)
                session.handle_interrupt(items, step, step)
            before = min(r.received for r in runners)
            finished = []
            for seed, runner in enumerate(runners):
                finished.append(runner.step(policy_for(seed)) if runner.received < c.steps
                                else [])
                while (rollout := runner.pop_batch()) is not None:
                    learn(seed, rollout, chunk)
            record_scores(finished)
            chunk.steps += min(r.received for r in runners) - before
            log_and_evaluate(final=False)
        # The end: receive what is in flight, file the partial rollouts and learn from
        # every transition, so none is lost.
        finished = []
        for seed, runner in enumerate(runners):
            finished.append(runner.drain())
            runner.flush()
            while (rollout := runner.pop_batch(pad=True)) is not None:
                learn(seed, rollout, chunk)
        record_scores(finished)
        chunk.steps += min(r.received for r in runners) - logged
        log_and_evaluate(final=True)
    finally:
        for runner in runners:
            close = getattr(runner.pool, "close", None)
            if close is not None:
                close()
    return jax.tree.map(lambda *x: jnp.stack(x), *trains)


def async_items(runners: list[AsyncActors], policy_keys, learned) -> dict[str, Any]:
    """An async run's acting state per seed [S, ...]: epsilon counters and final epsilons
    of the N actors, the policy key, and the transitions received and learned."""
    return {"steps": np.stack([r.steps for r in runners]).astype(np.int32),
            "final_epsilon": np.stack([r.final_epsilon for r in runners]).astype(np.float32),
            "policy_key": np.stack([np.asarray(k) for k in policy_keys]).astype(np.uint32),
            "received": np.asarray([r.received for r in runners], np.int32),
            "learned": np.asarray(learned, np.int32)}


# ---------------------------------------------------------------------------- entry

def checkpoint_templates(config: Config, env, keys) -> dict[str, Any]:
    """A run's checkpoint items as ShapeDtypeStructs (what ``loop.Trainer`` restores into)."""
    learner = build_learner(config, env.spec)
    if isinstance(env, JaxEnv):
        return native_items(jax.eval_shape(
            jax.vmap(lambda k: init_native_actor_carry(learner, env, k)), keys))
    train, actors = jax.eval_shape(jax.vmap(learner.init), keys)
    if config.async_mode == "async":
        seeds, n = config.seeds, config.envs
        shape = jax.ShapeDtypeStruct
        actors = {"steps": shape((seeds, n), np.int32),
                  "final_epsilon": shape((seeds, n), np.float32),
                  "policy_key": shape((seeds, 2), np.uint32),
                  "received": shape((seeds,), np.int32), "learned": shape((seeds,), np.int32)}
    return {"train": train, "actors": actors}


def run_actor_learner(config: Config, env, keys, session, restored=None):
    """Trains ``config.seeds`` seeds of the actor-learner ``--async`` names with ``session``
    (``PlainSession`` or ``loop.Trainer``), from scratch or from ``restored``; returns the
    final train state [S]."""
    if isinstance(env, JaxEnv):
        return train_native(config, env, keys, session, restored)[0].train
    if config.async_mode == "async":
        return _run_host_async(config, env, keys, session, restored)
    return _run_host_sync(config, env, keys, session, restored)
