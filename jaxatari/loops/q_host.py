"""The Q agent's training loop with host environments (envpool, ale-py, gymnasium): one
pool for all seeds, acting, replay and learning as DQN (Mnih et al. 2015).

One pool holds ``S * E`` envs; its observations ``[S*E, ...]`` are reshaped to
``[S, E, ...]`` at this boundary and the jitted, seed-vmapped agent functions do the rest.
Per step there is one device-to-host transfer (the actions). Epsilon, the learning
cadence and target syncs are host-side numbers shared by all seeds.

With ``--devices N`` (``devices.SeedPlacement``) the seed axis of the train, actor and
replay states is split over the device mesh once, every jitted function keeps its outputs
split the same way (``SeedPlacement.keep_split``), and each step's host arrays
``[S, E, ...]`` go onto the mesh with the same split (``SeedPlacement.put``): each device
acts, stores and learns for its S / N seeds, and the pool stays one pool on the host.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.agents.dqn import QAgent
from jaxatari.agents.native import Cadence, to_agent_frame
from jaxatari.config import Config
from jaxatari.devices import SeedPlacement
from jaxatari.envs.base import SplitStep
from jaxatari.loops.checkpoint_items import QItems
from jaxatari.loops.session import Session, SeedsStep, evaluate_on_host, to_seeds
from jaxatari.metrics import ChunkStats
from jaxatari.xla_options import edge_jit


# The per-env numbers of one step travel to the device as one float32 array [S, E, 6]:
# on CPU each host array passed to a jitted call costs 5-20 us of dispatch, more than the
# work. A step's own numbers come first, then those the next observation is read with.
_STEP_FIELDS = ("reward", "terminated", "is_first", "valid", "next_is_first", "after_done")


def _pack(shape: tuple[int, int], **fields: np.ndarray) -> np.ndarray:
    packed = np.zeros((*shape, len(_STEP_FIELDS)), np.float32)
    for name, value in fields.items():
        packed[..., _STEP_FIELDS.index(name)] = value
    return packed


def _unpack(packed: jax.Array) -> dict[str, jax.Array]:
    fields = {name: packed[..., i] > 0 for i, name in enumerate(_STEP_FIELDS)}
    fields["reward"] = packed[..., 0]
    return fields


class _ExploreSteps:
    """Steps taken with uniform actions, not yet on the device.

    Before learning starts the host draws the actions, so nothing on the path from one env
    step to the next needs the device. Their transitions, and the frames the actor's stack
    has still to take in, go over ``size`` steps in one dispatch (one jitted call costs
    more host time than storing a step; writing them from a second thread measured no
    faster). ``flush`` before anything reads the memory or the actor.
    """

    def __init__(self, write_many: Callable, size: int, placement: SeedPlacement):
        self._write_many = write_many
        self.size = size
        self._placement = placement
        self._frames: list = []
        self._actions: list = []
        self._steps: list = []
        # Compiled at the first write, for ``size`` steps and for one (a remainder), so
        # that no compilation falls in the middle of a run.
        self._compiled: dict[int, Callable] = {}

    def add(self, frame, actions, step, next_frame) -> None:
        if not self._frames:
            self._frames.append(frame)
        self._frames.append(next_frame)
        self._actions.append(actions)
        self._steps.append(step)

    @property
    def full(self) -> bool:
        return len(self._actions) >= self.size

    def flush(self, replay_state, actor):
        """Stores the held steps; returns the memory and the actor with them."""
        if not self._actions:
            return replay_state, actor

        def stacked(values):   # [S, K, ...]: the seed axis leads
            return np.stack([np.asarray(v) for v in values], axis=1)
        frames, actions, steps = batch = (stacked(self._frames), stacked(self._actions),
                                          stacked(self._steps))
        self._frames, self._actions, self._steps = [], [], []
        place = self._placement.place   # split over the seeds' devices, as the state is
        if not self._compiled:
            for k in (self.size, 1):
                shapes = [jax.ShapeDtypeStruct((x.shape[0], k + (i == 0), *x.shape[2:]), x.dtype,
                                               sharding=self._placement.seed_sharding)
                          for i, x in enumerate(batch)]
                self._compiled[k] = self._write_many.lower(replay_state, actor, *shapes).compile()
        if actions.shape[1] == self.size:
            return self._compiled[self.size](replay_state, actor, *place(batch))
        for k in range(actions.shape[1]):
            replay_state, actor = self._compiled[1](
                replay_state, actor, *place((frames[:, k:k + 2], actions[:, k:k + 1],
                                             steps[:, k:k + 1])))
        return replay_state, actor


class _UniformActions:
    """Uniform actions [S, E], drawn from ``rng`` a block of steps at a time: a draw costs
    a few microseconds whatever its size, and each step's would sit on the host's path from
    an env's result to its next action."""

    def __init__(self, rng: np.random.Generator, num_actions: int, shape: tuple[int, int],
                 block: int = 256):
        self._rng, self._num_actions, self._shape, self._block_size = rng, num_actions, shape, block
        self._block = np.zeros((0, *shape), np.int32)
        self._next = 0

    def next(self) -> np.ndarray:
        if self._next == len(self._block):
            self._block = self._rng.integers(0, self._num_actions,
                                             (self._block_size, *self._shape), dtype=np.int32)
            self._next = 0
        self._next += 1
        return self._block[self._next - 1]


def end_saved_episodes(replay, replay_state):
    """Marks each env's newest stored row as a reset step (valid False, priority 0).

    A resumed host run starts new games, so the newest row saved, whose next observation
    was never stored, would otherwise bootstrap into the new game's first frame. As after a
    time-limit cut, its frame ends the episode: the row before it bootstraps from it and the
    row itself is not learned from. One seed; vmap over seeds with ``replay.seed_axes``.
    """
    storage = replay_state.storage
    num_rows, num_envs = storage.rows.valid.shape[:2]
    newest = (storage.pos - 1) % num_rows
    rows = storage.rows.replace(valid=storage.rows.valid.at[newest].set(False))
    replay_state = replay_state.replace(storage=storage.replace(rows=rows))
    # A stored row that is not valid gets priority 0 whatever the value written.
    indices = newest * num_envs + jnp.arange(num_envs)
    return replay.update_priorities(replay_state, indices, jnp.zeros((num_envs,), jnp.float32))


class QChunkRecorder:
    """The Q loops' per-step bookkeeping on the host: each env's running score, which
    episodes ended, the learner's metrics on the steps it learned, and one
    ``RunLogger.log_chunk`` once ``chunk_steps`` steps have passed (or at the last)."""

    _METRICS = ("loss", "td_error", "q_mean")

    def __init__(self, logger, seeds: int, envs: int, chunk_steps: int):
        self.logger, self.envs, self.chunk_steps = logger, envs, chunk_steps
        self.no_metrics = np.zeros(seeds, np.float32)
        self.score = np.zeros((seeds, envs))
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, list] = {name: [] for name in
                                      ("scores", "finished", *self._METRICS, "learned")}
        self.started, self.steps = time.perf_counter(), 0

    def step(self, reward: np.ndarray, over: np.ndarray, metrics=None) -> None:
        """One step of every env: ``reward``, ``over`` [S, E]; the learner's ``metrics``
        where it learned at this step, else None."""
        learned = metrics is not None
        self.score = self.score + reward
        self.rows["scores"].append(self.score.copy())
        self.rows["finished"].append(over)
        self.score = np.where(over, 0.0, self.score)
        for name in self._METRICS:
            self.rows[name].append(metrics[name] if learned else self.no_metrics)
        self.rows["learned"].append(learned)
        self.steps += self.envs

    def flush_if_due(self, step_after: int, epsilon: float, last: bool) -> None:
        if self.steps >= self.chunk_steps or last:
            out = ChunkStats(**{name: np.stack([np.asarray(v) for v in values])
                                for name, values in self.rows.items()})
            self.logger.log_chunk(step_after, out, epsilon,
                                  time.perf_counter() - self.started, self.steps)
            self._reset()


class HostRunner:
    """The Q agent's host loop (``run``) and its jitted, seed-vmapped functions.
    ``placement``: the devices the seeds are split over (``--devices``; the module's
    docstring); ``keys`` [S] already placed on them."""

    def __init__(self, config: Config, env_factory, agent: QAgent, cadence: Cadence, keys,
                 placement: SeedPlacement = SeedPlacement()):
        self.config = config
        self.env_factory = env_factory
        self.agent = agent
        self.cadence = cadence
        self.keys = keys
        self.seed_placement = placement
        state_example = jax.eval_shape(agent.init, keys[0])
        replay_axes = agent.replay.seed_axes(state_example[1])
        self.replay_axes = replay_axes
        split = placement.keep_split   # the outputs' shardings: the state's, split by seed
        self.init = edge_jit(jax.vmap(agent.init, out_axes=(0, replay_axes, 0)),
                             **split((0, replay_axes, 0)))

        def observe(actor, frame, is_first):
            return agent.observe(actor, to_agent_frame(frame, agent.frame_dtype), is_first)

        def record(replay_state, actor, frame, action, step):
            key, mask_key = jax.random.split(actor.key)
            f = _unpack(step)
            row = agent.make_row(to_agent_frame(frame, agent.frame_dtype), action, f["reward"],
                                 f["terminated"], f["is_first"], f["valid"], mask_key)
            return agent.replay.add(replay_state, row), actor.replace(key=key)

        def take_in(actor, next_frame, step):
            f = _unpack(step)
            return observe(actor.replace(after_done=f["after_done"]), next_frame,
                           f["next_is_first"])

        def observe_act(params, actor, next_frame, step, epsilon, explore_only):
            # One dispatch on the path from an env's result to its next action.
            actor = take_in(actor, next_frame, step)
            return agent.act(params, actor, epsilon, False, explore_only)

        def record_take_in(replay_state, actor, frame, action, next_frame, step):
            replay_state, actor = record(replay_state, actor, frame, action, step)
            return replay_state, take_in(actor, next_frame, step)

        def learn(train, replay_state, beta):
            # XLA-CPU runs lax.conv several times slower inside a while loop (5x measured
            # for the Nature update), so short runs of updates are unrolled.
            if cadence.updates_per_learn <= 8:
                for _ in range(cadence.updates_per_learn):
                    train, replay_state, metrics = agent.update(train, replay_state, beta)
                return train, replay_state, metrics

            def body(_, state):
                train, replay_state, _ = state
                return agent.update(train, replay_state, beta)
            zero = {"loss": jnp.float32(0), "td_error": jnp.float32(0), "q_mean": jnp.float32(0)}
            return jax.lax.fori_loop(0, cadence.updates_per_learn, body, (train, replay_state, zero))

        self.observe = edge_jit(jax.vmap(observe), **split())
        self.act = edge_jit(jax.vmap(agent.act, in_axes=(0, 0, None, None, None)),
                            static_argnums=(3, 4), **split())
        self.observe_act = edge_jit(jax.vmap(observe_act, in_axes=(0, 0, 0, 0, None, None)),
                                    static_argnums=5, **split())
        self.record = edge_jit(jax.vmap(record, in_axes=(replay_axes, 0, 0, 0, 0),
                                        out_axes=(replay_axes, 0)), donate_argnums=0,
                               **split((replay_axes, 0)))
        self.take_in = edge_jit(jax.vmap(take_in), **split())

        def record_take_in_many(replay_state, actor, frames, actions, steps):
            # frames [K+1, E, ...], actions [K, E], steps [K, E, 6]; unrolled (K is small
            # and XLA-CPU runs a while loop's body slower)
            for k in range(actions.shape[0]):
                replay_state, actor = record_take_in(replay_state, actor, frames[k], actions[k],
                                                     frames[k + 1], steps[k])
            return replay_state, actor
        self.record_take_in_many = edge_jit(
            jax.vmap(record_take_in_many, in_axes=(replay_axes, 0, 0, 0, 0),
                     out_axes=(replay_axes, 0)), donate_argnums=0, **split((replay_axes, 0)))
        # Uniform actions need no network; a feedforward agent then draws them on the host
        # (an LSTM must still read every frame through its core).
        self.host_explore = not agent.settings.recurrent
        self.learn = edge_jit(jax.vmap(learn, in_axes=(0, replay_axes, None),
                                       out_axes=(0, replay_axes, 0)), donate_argnums=(0, 1),
                              **split((0, replay_axes, 0)))
        self.sync = edge_jit(jax.vmap(agent.sync_target), **split())
        self.end_saved_episodes = edge_jit(jax.vmap(
            lambda state: end_saved_episodes(agent.replay, state), in_axes=(replay_axes,),
            out_axes=replay_axes), **split(replay_axes))

    def evaluate(self, params, step: int, key) -> tuple[np.ndarray, np.ndarray]:
        """``loops.session.evaluate_on_host`` with the Q agent: epsilon-greedy at
        --val-epsilon, bootstrap heads voting."""
        c = self.config
        vote = self.agent.settings.num_heads > 1
        place = self.seed_placement.place   # host arrays [S, ...] split as the seeds are

        def start(frames):
            actor = place(jax.vmap(lambda k: self.agent.init_actor(c.val_envs, k))(
                jax.random.split(key, c.seeds)))
            return self.observe(actor, *place((frames, np.ones(frames.shape[:2], bool))))

        def act(actor):
            return self.act(params, actor, c.val_epsilon, vote, False)

        def observe(actor, frames, is_first, done):
            return self.take_in(actor, *place((
                frames, _pack(done.shape, next_is_first=is_first, after_done=done))))

        return evaluate_on_host(c, self.env_factory, step, start=start, act=act,
                                observe=observe)

    def run(self, session: Session, restored=None) -> Any:
        """Trains from step 0 or from ``restored`` (a ``loop.Restored``); ``session``
        (``loop.Trainer``) completes evaluations, saves checkpoints and answers Ctrl+C.
        Returns the final train state [S].

        A host env cannot be put back where it was: a resumed run starts new games (envs
        seeded ``--seed + step``), keeps learner, actor keys, counters and (if saved) the
        replay memory, whose newest rows become reset steps (``end_saved_episodes``), and
        otherwise waits ``--learn-start`` steps while the memory refills
        (``self.cadence`` says when learning may start).
        """
        c = self.config
        seeds, envs = c.seeds, c.envs
        cadence = self.cadence
        logger = session.logger
        placement = self.seed_placement
        train, replay_state, actor = self.init(self.keys)
        start = 0
        if restored is not None:   # the restored state split over the devices as a new one
            items = restored.items
            train = placement.place(items.train)
            if items.replay is not None:
                replay_state = self.end_saved_episodes(
                    placement.place(items.replay, self.replay_axes))
            actor = placement.place(items.actor.replace(after_done=jnp.zeros((seeds, envs), bool)))
            start = restored.iteration
        env = self.env_factory(seeds * envs, c.seed + start * envs, mode="train")
        stepping = SplitStep(env)
        frame = to_seeds(env.reset(), seeds)
        is_first = np.ones((seeds, envs), bool)
        after_done = np.zeros((seeds, envs), bool)
        record = QChunkRecorder(logger, seeds, envs, c.chunk_steps)
        total_iterations = c.steps // envs
        evaluated_at = session.evaluations[-1].step if session.evaluations else -1
        num_actions = self.agent.settings.num_actions

        def items():
            return QItems(train=train, actor=actor, replay=replay_state)

        uniform = _UniformActions(np.random.default_rng([c.seed, start]), num_actions,
                                  (seeds, envs))

        explored = _ExploreSteps(self.record_take_in_many, size=8, placement=placement)

        def explores_on_host(epsilon: float) -> bool:
            """Uniform actions drawn on the host, their steps stored in batches."""
            return self.host_explore and epsilon >= 1.0

        def send_uniform(epsilon: float):
            """Before learning starts every action is uniform: drawn here and sent at once,
            so the device work of this step overlaps the envs. Returns the actions, or None
            where they need the network."""
            if not explores_on_host(epsilon):
                return None
            actions = uniform.next()
            stepping.send(actions.reshape(-1))
            return actions

        def act(params, actor, epsilon: float, frame, numbers):
            """Sends the next actions for ``frame`` (host arrays); returns the actions, the
            actor, the frame and numbers (on the device once the actor has used them), and
            whether the actor has taken the frame in yet."""
            actions = send_uniform(epsilon)
            if actions is not None:
                return actions, actor, frame, numbers, False
            nonlocal replay_state
            replay_state, actor = explored.flush(replay_state, actor)
            frame, numbers = placement.put((frame, numbers))
            # At epsilon 1 an LSTM agent runs its core but not the Q head.
            actions, actor = self.observe_act(params, actor, frame, numbers, epsilon,
                                              epsilon >= 1.0)
            stepping.send(np.asarray(actions).reshape(-1))
            return actions, actor, frame, numbers, True

        # The envs step while the host works: each iteration waits for the step in flight,
        # chooses the next actions and sends them at once, and only then stores the
        # transition, logs and evaluates. A learning iteration first stores and learns, so
        # the next actions come from the updated network, as in the original.
        try:
            if start < total_iterations and start * envs >= session.next_eval \
                    and start * envs != evaluated_at:
                # due but not done (a resumed run stopped just before it)
                self._evaluate(session, items, start * envs, start)
                evaluated_at = start * envs
            if start < total_iterations:
                first = _pack((seeds, envs), next_is_first=is_first)
                epsilon = float(cadence.epsilon(start * envs))
                actions, actor, frame, _, taken = act(train.params, actor, epsilon, frame, first)
                if not taken:
                    actor = self.take_in(actor, *placement.place((frame, first)))
            for iteration in range(start, total_iterations):
                step, step_after = iteration * envs, (iteration + 1) * envs
                last = iteration + 1 == total_iterations
                result = stepping.wait()
                learned = bool(cadence.learns(iteration))
                epsilon_next = float(cadence.epsilon(step_after))
                transition = (frame, actions)
                # Uniform next actions need nothing from this step: they go to the envs
                # before its bookkeeping, which then overlaps them.
                early = None if learned or last else send_uniform(epsilon_next)
                result = SeedsStep.of(result, seeds)
                reward, terminated, done = result.reward, result.terminated, result.done
                over = result.game_over
                numbers = _pack((seeds, envs), reward=reward, terminated=terminated,
                                is_first=is_first, valid=~after_done, next_is_first=after_done,
                                after_done=done)
                next_frame = result.obs
                is_first, after_done = after_done, done
                if learned or last:
                    replay_state, actor = explored.flush(replay_state, actor)
                if learned:
                    numbers = placement.put(numbers)
                    replay_state, actor = self.record(replay_state, actor,
                                                      *placement.place(transition), numbers)
                    beta = float(cadence.beta(step))
                    train, replay_state, metrics = self.learn(train, replay_state, beta)
                if bool(cadence.syncs(iteration)):
                    train = self.sync(train)
                epsilon_now, taken = epsilon, True
                if early is not None:
                    actions, epsilon, frame, taken = early, epsilon_next, next_frame, False
                elif not last:
                    epsilon = epsilon_next
                    actions, actor, frame, numbers, taken = act(
                        train.params, actor, epsilon, next_frame, numbers)
                elif not learned and explores_on_host(epsilon_next):
                    # A run that ends before learning starts: its last step joins the other
                    # uniform ones, so no write path is compiled just for it.
                    frame, taken = next_frame, False
                if not learned and not taken:
                    explored.add(*transition, numbers, frame)
                    if explored.full:
                        replay_state, actor = explored.flush(replay_state, actor)
                elif not learned:
                    replay_state, actor = self.record(replay_state, actor,
                                                      *placement.place(transition), numbers)
                elif not taken:
                    actor = self.take_in(actor, *placement.place((frame, numbers)))
                record.step(reward, over, metrics if learned else None)
                record.flush_if_due(step_after, epsilon_now, last)
                if step_after >= session.next_eval or last or session.interrupt_requested:
                    replay_state, actor = explored.flush(replay_state, actor)
                if step_after >= session.next_eval or last:
                    self._evaluate(session, items, step_after, iteration + 1)
                    evaluated_at = step_after
                if session.interrupt_requested and not last:
                    session.handle_interrupt(items, step_after, iteration + 1)
        finally:
            env.close()
        return train

    def _evaluate(self, session: Session, items, step: int, iteration: int) -> None:
        key = session.next_eval_key()
        scores, episodes = self.evaluate(items().train.params, step, key)
        session.record_evaluation(step, scores, episodes, items, iteration)
