"""What the actor-learners' loops share (Mnih et al. 2016's asynchronous methods, run
as batched actors; see ``loops.actors``): the fixed held-out rollouts of the original's
valMemory, the per-chunk statistics gathered on the host, and the host evaluation
policy.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.agents.actor_learner import ActorLearner, Rollout
from jaxatari.agents.actor_native import make_rollout_value_stats
from jaxatari.agents.frames import push_frame, to_agent_frame
from jaxatari.config import Config
from jaxatari.devices import SeedPlacement
from jaxatari.loops.session import evaluate_on_host
from jaxatari.metrics import ChunkStats
from jaxatari.types import TrainState
from jaxatari.xla_options import edge_jit


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

        self._stats = edge_jit(make_rollout_value_stats(learner))

    def offer(self, seed: int, rollout: Rollout) -> None:
        """One seed's rollout [T(+1), N, ...] the learner consumed (kept while the seed has
        fewer than ``count``)."""
        if self.rollouts is None and len(self._recent[seed]) < self.count:
            self._recent[seed].append(rollout)

    @property
    def wants_more(self) -> bool:
        """Whether ``offer_seeds`` would keep anything (so a loop fetches its rollout)."""
        return self.rollouts is None and any(len(recent) < self.count
                                             for recent in self._recent)

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


class ChunkLog:
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

    def out(self) -> ChunkStats:
        """Seeds may have made different numbers of updates (async mode): each seed's rows
        are padded with its own mean, so the per-seed means the logger prints are exact."""
        rows = max((len(m) for m in self.metrics), default=0)

        def table(name: str) -> np.ndarray:
            values = np.full((rows, self.seeds), np.nan)
            for seed, metrics in enumerate(self.metrics):
                seed_values = [float(m[name]) for m in metrics]
                if seed_values:
                    values[:, seed] = np.mean(seed_values)
                    values[:len(seed_values), seed] = seed_values
            return values

        return ChunkStats(scores=np.stack(self.scores), finished=np.stack(self.finished),
                          loss=table("loss"), td_error=table("td_error"),
                          q_mean=table("q_mean"), learned=np.ones(rows, bool))


class ActorHostEvaluator:
    """``loops.session.evaluate_on_host`` with ``learner.evaluate_policy``: epsilon-greedy
    at --val-epsilon (Q methods) or a sample of the policy (A3C), every seed its own key.
    Compiled once, called at every evaluation as ``(params [S], step, key)``.
    ``placement``: the devices the seeds are split over (``--devices``); the frame stacks
    and keys [S] are split as the parameters are."""

    def __init__(self, config: Config, env_factory, learner: ActorLearner,
                 placement: SeedPlacement = SeedPlacement()):
        self.config = config
        self.env_factory = env_factory
        self.learner = learner
        self.placement = placement

        def observe(stacks, frames, is_first):
            return push_frame(stacks, to_agent_frame(frames, learner.frame_dtype), is_first)

        split = placement.keep_split()
        self.observe = edge_jit(jax.vmap(observe), **split)
        self.policy = edge_jit(jax.vmap(learner.evaluate_policy, in_axes=(0, 0, 0, None)),
                               **split)

    def __call__(self, params, step: int, key) -> tuple[np.ndarray, np.ndarray]:
        c, learner, place = self.config, self.learner, self.placement.place

        def start(frames):
            empty = jnp.zeros((*frames.shape[:2], *learner.stack_shape), learner.frame_dtype)
            return self.observe(*place((empty, frames, np.ones(frames.shape[:2], bool)))), key

        def act(state):
            stacks, key = state
            key, step_key = jax.random.split(key)
            actions = self.policy(params, stacks, place(jax.random.split(step_key, c.seeds)),
                                  c.val_epsilon)
            return actions, (stacks, key)

        def observe_next(state, frames, is_first, done):
            del done
            stacks, key = state
            return self.observe(stacks, *place((frames, is_first))), key

        return evaluate_on_host(c, self.env_factory, step, start=start, act=act,
                                observe=observe_next)
