"""The actor-learners' asynchronous host loop (``--async-mode async``, Mnih et al. 2016).

envpool's async API plays ``--envs`` envs and hands back whichever B are ready first (B
the largest proper divisor of ``--envs``), so a slow env never stalls acting or learning,
as a slow Hogwild! thread (Recht et al. 2011) never stalls the others. Each env's
transitions are filed under its env id; whenever B envs have completed a rollout of T
steps, one update is made from them: one consistent step, though a rollout may span an
update (the mild off-policyness A3C accepted). JAX-native envs have no async API and are
refused.

Life loss: the pool is built from the protocol recorded in the env spec
(``envs.atari.envpool_kwargs``; raw rewards from ``info["reward"]``, game overs from
``info["terminated"]``) and lost lives are read from ``info["lives"]`` as ``envs/atari.py``
does; after a lost life the next frame starts a new stack at once (the life-loss step has
discount 0, so no bootstrap reads the old one). Validation plays whole games.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.agents.actor_learner import Q_METHODS, Rollout, actor_epsilon, make_actor_learner
from jaxatari.agents.frames import push_frame
from jaxatari.config import Config, async_batch_size
from jaxatari.envs import EnvSpec
from jaxatari.loops.actor_common import ActorHostEvaluator, ChunkLog, HeldOutRollouts
from jaxatari.loops.checkpoint_items import ActorLearnerItems, AsyncCounters
from jaxatari.loops.settings import crosses, learner_settings, mean_actor_epsilon
from jaxatari.xla_options import edge_jit


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


def run_host_async(config: Config, env_factory, keys, session, restored=None,
                    make_pool: Callable | None = None,
                    on_rollout: Callable | None = None):
    """One async envpool per seed, served round robin; see the module docstring. Returns
    the final train state [S].

    ``make_pool(seed, first_step)`` builds a seed's pool (default: envpool seeded from
    both); ``on_rollout(seed, rollout)`` sees every rollout the learner consumes (tests
    count transitions with it).

    Checkpoints hold each seed's learner, its actors' epsilon counters and final epsilons,
    its policy key and its step counters (``async_counters``). A resumed run starts new games
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
    evaluator = ActorHostEvaluator(c, env_factory, learner)
    heldout = HeldOutRollouts(learner, c)
    make_pool = make_pool or (lambda seed, first: make_async_envpool(
        spec, envs, batch, c.seed + 1_000 * seed + first))
    life_loss = bool(spec.protocol.get("life_loss_terminal", False))

    def epsilon_fn(steps, final):
        return np.asarray(actor_epsilon(steps, final, start=s.epsilon_start,
                                        decay_steps=s.epsilon_steps), np.float32)

    trains, runners = [], []
    saved = None if restored is None else jax.device_get(restored.items.actors)
    first = 0 if restored is None else restored.step
    for seed in range(seeds):
        train, actors = init(keys[seed])
        final_epsilon = np.asarray(actors.final_epsilon)
        if saved is not None:
            train = jax.tree.map(lambda x: x[seed], restored.items.train)
            final_epsilon = np.asarray(saved.final_epsilon[seed])
        trains.append(train)
        runner = AsyncActors(make_pool(seed, first), num_envs=envs, batch_size=batch,
                             rollout_length=length, stack_shape=learner.stack_shape,
                             frame_dtype=learner.frame_dtype, final_epsilon=final_epsilon,
                             epsilon_fn=epsilon_fn, life_loss_terminal=life_loss)
        if saved is not None:
            runner.steps[:] = saved.steps[seed]
            runner.received = int(saved.received[seed])
        runners.append(runner)
    policy_keys = [jax.random.fold_in(keys[seed], 17) for seed in range(seeds)]
    learned = [0] * seeds          # transitions the learner has consumed, per seed
    if saved is not None:
        policy_keys = [jnp.asarray(saved.policy_key[seed]) for seed in range(seeds)]
        learned = [int(n) for n in saved.learned]

    def items():
        return ActorLearnerItems(train=jax.tree.map(lambda *x: jnp.stack(x), *trains),
                                 actors=async_counters(runners, policy_keys, learned))

    def policy_for(seed):
        def policy(stacks, eps):
            policy_keys[seed], key = jax.random.split(policy_keys[seed])
            return policy_fn(trains[seed].params, stacks, eps, key)
        return policy

    def learn(seed, rollout: Rollout, chunk: ChunkLog):
        if on_rollout is not None:
            on_rollout(seed, rollout)
        heldout.offer(seed, rollout)
        train, metrics = update(trains[seed], rollout)
        before = learned[seed]
        learned[seed] += int(rollout.valid.sum())
        if s.method in Q_METHODS and crosses(before, learned[seed], c.tau):
            train = sync(train)
        trains[seed] = train
        chunk.metrics[seed].append(jax.device_get(metrics))

    def learn_ready(seed: int, runner: AsyncActors, pad: bool = False):
        """Learns from every batch of completed rollouts (``pad``: the last, padded one)."""
        while (rollout := runner.pop_batch(pad=pad)) is not None:
            learn(seed, rollout, chunk)

    logger = session.logger
    chunk = ChunkLog(seeds)
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
                [mean_actor_epsilon(learner, r.steps, r.final_epsilon) for r in runners])),
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
                learn_ready(seed, runner)
            record_scores(finished)
            chunk.steps += min(r.received for r in runners) - before
            log_and_evaluate(final=False)
        # The end: receive what is in flight, file the partial rollouts and learn from
        # every transition, so none is lost.
        finished = []
        for seed, runner in enumerate(runners):
            finished.append(runner.drain())
            runner.flush()
            learn_ready(seed, runner, pad=True)
        record_scores(finished)
        chunk.steps += min(r.received for r in runners) - logged
        log_and_evaluate(final=True)
    finally:
        for runner in runners:
            close = getattr(runner.pool, "close", None)
            if close is not None:
                close()
    return jax.tree.map(lambda *x: jnp.stack(x), *trains)


def async_counters(runners: list[AsyncActors], policy_keys, learned) -> AsyncCounters:
    """An async run's acting state per seed [S, ...]: epsilon counters and final epsilons
    of the N actors, the policy key, and the transitions received and learned."""
    return AsyncCounters(steps=np.stack([r.steps for r in runners]).astype(np.int32),
                         final_epsilon=np.stack([r.final_epsilon for r in runners]
                                                ).astype(np.float32),
                         policy_key=np.stack([np.asarray(k) for k in policy_keys]
                                             ).astype(np.uint32),
                         received=np.asarray([r.received for r in runners], np.int32),
                         learned=np.asarray(learned, np.int32))


def async_templates(seeds: int, num_envs: int) -> AsyncCounters:
    """``async_counters`` as ShapeDtypeStructs (what a checkpoint restores into)."""
    shape = jax.ShapeDtypeStruct
    return AsyncCounters(steps=shape((seeds, num_envs), np.int32),
                         final_epsilon=shape((seeds, num_envs), np.float32),
                         policy_key=shape((seeds, 2), np.uint32),
                         received=shape((seeds,), np.int32), learned=shape((seeds,), np.int32))
