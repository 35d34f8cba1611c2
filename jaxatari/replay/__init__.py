"""Pure functional replay buffers behind one record of functions.

``make_replay`` returns a frozen ``Replay`` whose functions are pure and unjitted:

    init(example_row) -> ReplayState
    add(state, row) -> state                                   row fields [E, ...]
    sample(state, key, batch_size) -> (Transition, indices [B], probabilities [B])
    update_priorities(state, indices [B], priorities [B]) -> state

Every buffer returns the same sample triple, so importance weights are computed in one
place (the agent) for uniform and prioritised replay alike. A sample whose transition is
not valid (a reset step, a row too close to the write head) comes back with an all-zero
mask, so it contributes nothing to the loss; prioritised buffers give such rows
priority 0 so they are almost never drawn.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxatari.replay.storage import (FrameStorage, Row, gather_batch, init_storage,
                                     storage_seed_axes, write_row)

REPLAY_KINDS = ("uniform", "rank", "proportional")


@struct.dataclass
class ReplayState:
    storage: FrameStorage
    priorities: Any        # the prioritised index's state; () for uniform replay


@dataclasses.dataclass(frozen=True)
class Replay:
    init: Callable
    add: Callable
    sample: Callable
    update_priorities: Callable
    seed_axes: Callable    # ReplayState -> vmap axes (counters unbatched)
    num_rows: int
    num_envs: int


def make_replay(kind: str, *, capacity: int, num_envs: int, hist_len: int, n_step: int,
                gamma: float, alpha: float = 0.6) -> Replay:
    """Builds a replay of ``capacity`` transitions per seed split over ``num_envs`` streams."""
    if kind not in REPLAY_KINDS:
        raise ValueError(f"unknown replay {kind!r}: choose one of {', '.join(REPLAY_KINDS)}")
    num_rows = capacity // num_envs
    gather = dict(hist_len=hist_len, n_step=n_step, gamma=gamma)

    if kind == "uniform":
        def init(example: Row) -> ReplayState:
            return ReplayState(storage=init_storage(example, num_rows), priorities=())

        def add(state: ReplayState, row: Row) -> ReplayState:
            return state.replace(storage=write_row(state.storage, row))

        def sample(state: ReplayState, key, batch_size: int):
            count = state.storage.size * num_envs
            indices = jax.random.randint(key, (batch_size,), 0, jnp.maximum(count, 1))
            transitions, _ = gather_batch(state.storage, indices, **gather)
            probabilities = jnp.full((batch_size,), 1.0) / jnp.maximum(count, 1)
            return transitions, indices, probabilities

        def update_priorities(state, indices, priorities):
            del indices, priorities
            return state

        def seed_axes(state: ReplayState) -> ReplayState:
            return ReplayState(storage=storage_seed_axes(state.storage), priorities=())

        return Replay(init=init, add=add, sample=sample, update_priorities=update_priorities,
                      seed_axes=seed_axes, num_rows=num_rows, num_envs=num_envs)

    from jaxatari.replay.prioritised import make_prioritised_replay
    return make_prioritised_replay(kind, num_rows=num_rows, num_envs=num_envs, gather=gather,
                                   alpha=alpha)
