"""Sebulba for the Q agent (Hessel et al. 2021, "Podracer architectures for scalable
reinforcement learning", section 3.2; Huang et al. 2023's Cleanba is Sebulba with envpool):
host envs stepped by actor threads acting on the actor devices while the learner updates
on the learner devices, with a bounded queue between them.

* One actor thread per actor device (``--actor-devices A``), each with its own pool of
  ``S * E / A`` envs (every seed's ``E`` envs split evenly over the actor devices). It keeps
  its envs' frame stacks on its device, chooses epsilon-greedy actions there with the newest
  copy of the parameters published to that device, steps its pool and puts each step's
  transitions ``[S, E / A]`` into its own bounded ``queue.Queue`` (``queue_steps`` steps).
* The learner is the main thread, which also evaluates, logs, saves and answers Ctrl+C.
  For iteration ``i`` it takes step ``i`` from every actor's queue, joins them along the
  env axis into the row ``[S, E]`` the one-device loop (``loops.q_host``) would store,
  writes it into the replay memory and learns and syncs the target network at the
  iterations ``Cadence`` names, as that loop does. After every learning step it copies the
  parameters to every actor device (published; an actor picks them up at its next step).
* The learner's update is data-parallel over ``--learner-devices L`` (``devices.
  SebulbaPlacement``): the parameters, optimiser state and replay memory are replicated on
  the learner devices (each samples its share of a minibatch from its own copy, with no
  communication; the memory costs L copies, which an accelerator's memory affords for the
  ~7 GB of a 1M-frame Atari memory and which keeps sampling and the priority updates as
  they are), and each minibatch is split over them along its batch axis, so XLA sums the
  gradient with an all-reduce (tests/test_sebulba.py: the update equals the one-device
  one up to float order).

What Sebulba changes: the memory receives the same transitions in the same rows, and the
learner makes the same updates (``--mem-sample-freq``, ``--mem-n-samples``) and target
syncs (``--tau``) at the same points of that stream; but acting no longer waits for
learning. The actions of iteration ``i`` come from the parameters the learner had after
iteration ``i - 1`` in the one-device loop, and here from parameters up to about
``queue_steps + 1`` iterations older (an actor runs ahead of the learner by at most its
queue; before learning starts the actors act uniformly and only the queue holds them).

A stop request (Ctrl+C, SIGTERM) is answered by the learner between iterations: it stops
the actors (they finish the step they are in and leave; the steps still queued, which no
iteration counted yet, are dropped as the envs of a resumed host run restart anyway),
joins them, and saves what it has learned from every step up to that iteration. Resume
is the one-device loop's: new games, the learner and (if saved) the memory restored.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Any

import jax
import numpy as np

from jaxatari.agents.dqn import QAgent
from jaxatari.agents.native import Cadence, to_agent_frame
from jaxatari.config import Config
from jaxatari.devices import SebulbaPlacement, to_host
from jaxatari.envs.base import SplitStep
from jaxatari.loops.checkpoint_items import QItems
from jaxatari.loops.q_host import HostRunner, QChunkRecorder, _pack, _unpack
from jaxatari.loops.session import SeedsStep, Session, to_seeds
from jaxatari.xla_options import edge_jit

# How long a waiting thread sleeps before it looks again for a stop or a failed partner.
_POLL_SECONDS = 0.1


def queue_steps(cadence: Cadence) -> int:
    """Steps each actor may run ahead of the learner: two learning intervals (at least 2),
    so that an actor steps while the learner learns, and the parameters it acts with are
    at most about two updates old."""
    return max(2, 2 * cadence.update_every)


@dataclasses.dataclass(frozen=True)
class _Step:
    """One actor's step of its envs, every field [S, E / A] (``frame`` the observation the
    actions were chosen for; ``numbers`` packed as ``q_host._pack``)."""

    frame: np.ndarray
    actions: np.ndarray
    numbers: np.ndarray
    reward: np.ndarray
    game_over: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: BaseException


class _Published:
    """The learner's newest parameters, one copy on every actor device. Replaced whole,
    never changed in place (one reference assignment, atomic in Python)."""

    def __init__(self, devices):
        self._devices = devices
        self.copies: tuple = ()

    def publish(self, params) -> None:
        # copies, never aliases: the learner's next update donates its own buffers
        self.copies = tuple(jax.device_put(params, device, may_alias=False)
                            for device in self._devices)


class _Actor(threading.Thread):
    """An actor thread: acts on ``device`` for its pool ``env`` and puts every step into
    ``steps`` until ``total`` iterations are done or ``stop`` is set."""

    def __init__(self, index: int, runner: "SebulbaRunner", device, env, actor_state,
                 start: int, total: int, stop: threading.Event, published: _Published,
                 steps: queue.Queue):
        super().__init__(name=f"sebulba-actor-{index}", daemon=True)
        self.index, self.runner, self.device, self.env = index, runner, device, env
        self.state = actor_state            # read by the learner for checkpoints
        self.start_iteration, self.total = start, total
        self.stop, self.published, self.steps = stop, published, steps
        self.waited = 0.0                   # seconds spent on a full queue

    def run(self) -> None:
        try:
            with jax.default_device(self.device):
                self._act()
        except BaseException as error:   # handed to the learner, which raises it
            self._put(_Failed(error))

    def _put(self, item) -> bool:
        started = time.perf_counter()
        while not self.stop.is_set():
            try:
                self.steps.put(item, timeout=_POLL_SECONDS)
                self.waited += time.perf_counter() - started
                return True
            except queue.Full:
                continue
        return False

    def _act(self) -> None:
        r = self.runner
        c, cadence = r.config, r.cadence
        seeds, envs = c.seeds, c.envs // len(r.placement.actor_devices)
        stepping = SplitStep(self.env)
        frame = to_seeds(self.env.reset(), seeds)
        is_first = np.ones((seeds, envs), bool)
        after_done = np.zeros((seeds, envs), bool)

        def explore_only(epsilon: float) -> bool:
            return r.host_explore and epsilon >= 1.0

        actor = r.take_in(self.state, frame, _pack((seeds, envs), next_is_first=is_first))
        epsilon = float(cadence.epsilon(self.start_iteration * c.envs))
        actions, actor = r.act(self.published.copies[self.index], actor, epsilon, False,
                               explore_only(epsilon))
        actions = np.asarray(actions)
        for iteration in range(self.start_iteration, self.total):
            if self.stop.is_set():
                return
            stepping.send(actions.reshape(-1))
            result = SeedsStep.of(stepping.wait(), seeds)
            numbers = _pack((seeds, envs), reward=result.reward, terminated=result.terminated,
                            is_first=is_first, valid=~after_done, next_is_first=after_done,
                            after_done=result.done)
            step = _Step(frame=frame, actions=actions, numbers=numbers, reward=result.reward,
                         game_over=result.game_over)
            is_first, after_done, frame = after_done, result.done, result.obs
            if iteration + 1 < self.total:
                # the next actions go to the envs before this step waits for the queue
                epsilon = float(cadence.epsilon((iteration + 1) * c.envs))
                actions, actor = r.observe_act(self.published.copies[self.index], actor,
                                               frame, numbers, epsilon, explore_only(epsilon))
                actions = np.asarray(actions)
            self.state = actor
            if not self._put(step):
                return


class SebulbaRunner(HostRunner):
    """The Q agent's host loop as Sebulba (this module's docstring): ``placement`` names the
    actor devices and the learner mesh. ``HostRunner``'s jitted functions serve both: each
    runs where its inputs are (an actor's on its device, the learner's on the mesh)."""

    def __init__(self, config: Config, env_factory, agent: QAgent, cadence: Cadence, keys,
                 placement: SebulbaPlacement):
        super().__init__(config, env_factory, agent, cadence, keys)
        self.placement = placement

        def write(replay_state, key, frame, action, step):
            """Stores one row [E] of one seed; its bootstrap masks drawn from ``key``."""
            key, mask_key = jax.random.split(key)
            f = _unpack(step)
            row = agent.make_row(to_agent_frame(frame, agent.frame_dtype), action,
                                 f["reward"], f["terminated"], f["is_first"], f["valid"],
                                 mask_key)
            return agent.replay.add(replay_state, row), key

        self.write = edge_jit(jax.vmap(write, in_axes=(self.replay_axes, 0, 0, 0, 0),
                                       out_axes=(self.replay_axes, 0)), donate_argnums=0)

    def run(self, session: Session, restored=None) -> Any:
        """Trains from step 0 or from ``restored`` as ``HostRunner.run`` (same checkpoint
        items, same resume), with the actors on their threads. Returns the train state [S]."""
        c, cadence, place = self.config, self.cadence, self.placement
        seeds, envs = c.seeds, c.envs
        actor_count = len(place.actor_devices)
        actor_envs = envs // actor_count
        logger = session.logger
        train, replay_state, actor = self.init(self.keys)
        start = 0
        if restored is not None:
            items = restored.items
            train = items.train
            if items.replay is not None:
                replay_state = self.end_saved_episodes(items.replay)
            actor = items.actor
            start = restored.iteration
        train, replay_state = place.on_learner(train), place.on_learner(replay_state)
        # the rows' bootstrap masks draw from the checkpointed actor key; each actor's
        # exploration from its own key folded from it
        row_key = place.on_learner(actor.key)
        actor_keys = [jax.vmap(jax.random.fold_in, in_axes=(0, None))(actor.key, a + 1)
                      for a in range(actor_count)]
        total_iterations = c.steps // envs
        published = _Published(place.actor_devices)
        published.publish(train.params)
        stop = threading.Event()
        size = queue_steps(cadence)
        queues = [queue.Queue(maxsize=size) for _ in range(actor_count)]
        pools = []
        actors: list[_Actor] = []
        logger.note(f"Sebulba: {actor_count} actor thread{'s' if actor_count > 1 else ''} "
                    f"on {', '.join(str(d) for d in place.actor_devices)} ({seeds * actor_envs} "
                    f"envs each, up to {size} steps ahead of the learner), the learner on "
                    f"{', '.join(str(d) for d in place.learner_devices)} (--batch-size "
                    f"{c.batch_size} split {len(place.learner_devices)} ways)")
        learner_waited = 0.0
        updates = 0

        def take(a: int) -> _Step:
            nonlocal learner_waited
            started = time.perf_counter()
            while True:
                try:
                    item = queues[a].get(timeout=_POLL_SECONDS)
                    break
                except queue.Empty:
                    if not actors[a].is_alive():
                        raise RuntimeError(f"Sebulba actor {a} stopped before its steps "
                                           "were done") from None
            learner_waited += time.perf_counter() - started
            if isinstance(item, _Failed):
                raise item.error
            return item

        def stop_actors() -> None:
            stop.set()
            for thread in actors:
                if thread.ident is not None:   # started
                    thread.join()

        def items():
            return QItems(train=train, actor=self._joined_actor(actors, row_key),
                          replay=replay_state)

        record = QChunkRecorder(logger, seeds, envs, c.chunk_steps)
        evaluated_at = session.evaluations[-1].step if session.evaluations else -1
        try:
            for a, device in enumerate(place.actor_devices):
                pools.append(self.env_factory(seeds * actor_envs,
                                              c.seed + start * envs + a * seeds * actor_envs,
                                              mode="train"))
                state = jax.device_put(jax.vmap(lambda k: self.agent.init_actor(actor_envs, k))(
                    actor_keys[a]), device)
                actors.append(_Actor(a, self, device, pools[a], state, start, total_iterations,
                                     stop, published, queues[a]))
            if start < total_iterations and start * envs >= session.next_eval \
                    and start * envs != evaluated_at:
                self._evaluate(session, items, start * envs, start)   # due but not done
                evaluated_at = start * envs
            for thread in actors:
                thread.start()
            for iteration in range(start, total_iterations):
                step, step_after = iteration * envs, (iteration + 1) * envs
                last = iteration + 1 == total_iterations
                parts = [take(a) for a in range(actor_count)]

                def joined(field: str) -> np.ndarray:   # [S, E]: the actors' envs in order
                    return np.concatenate([getattr(p, field) for p in parts], axis=1)
                reward, over = joined("reward"), joined("game_over")
                replay_state, row_key = self.write(replay_state, row_key, joined("frame"),
                                                   joined("actions"), joined("numbers"))
                learned = bool(cadence.learns(iteration))
                if learned:
                    train, replay_state, metrics = self.learn(train, replay_state,
                                                              float(cadence.beta(step)))
                    updates += cadence.updates_per_learn
                if bool(cadence.syncs(iteration)):
                    train = self.sync(train)
                if learned:
                    published.publish(train.params)
                record.step(reward, over, metrics if learned else None)
                record.flush_if_due(step_after, float(cadence.epsilon(step)), last)
                if last:
                    stop_actors()   # done: every actor has put its last step
                if step_after >= session.next_eval or last:
                    self._evaluate(session, items, step_after, iteration + 1)
                    evaluated_at = step_after
                if session.interrupt_requested and not last:
                    stop_actors()
                    session.handle_interrupt(items, step_after, iteration + 1)
        finally:
            stop_actors()
            for pool in pools:
                pool.close()
        logger.note(f"Sebulba: the learner made {updates:,} updates; it waited "
                    f"{learner_waited:,.1f} s for the actors' steps, and they "
                    f"{sum(a.waited for a in actors):,.1f} s (together) for room in their "
                    "queues")
        return train

    def _joined_actor(self, actors: list[_Actor], row_key):
        """The actors' states as the one-device loop's actor item [S, E]: the envs' frame
        stacks, heads and recurrent states joined along the env axis in actor order, and
        the key the rows' masks draw from (the one a resumed run starts from)."""
        states = [to_host(thread.state) for thread in actors]
        key = to_host(row_key)
        joined = jax.tree.map(lambda *parts: np.concatenate(parts, axis=1),
                              *[s.replace(key=np.zeros((key.shape[0], 0), key.dtype))
                                for s in states])
        return joined.replace(key=key)

    def _evaluate(self, session: Session, items, step: int, iteration: int) -> None:
        """``HostRunner._evaluate`` on the first learner device (the actors keep theirs)."""
        device = self.placement.learner_devices[0]
        key = session.next_eval_key()
        with jax.default_device(device):
            params = jax.device_put(items().train.params, device)
            scores, episodes = self.evaluate(params, step, key)
        session.record_evaluation(step, scores, episodes, items, iteration)
