"""Pure functional replay buffers behind one record of functions.

``make_replay`` returns a frozen ``Replay`` whose functions are pure and unjitted:

    init(example_row) -> ReplayState
    add(state, row) -> state                                   row fields [E, ...]
    sample(state, key, batch_size) -> (Transition, indices [B], probabilities [B])
    update_priorities(state, indices [B], priorities [B]) -> state
    gather(storage, indices [B]) -> (Transition, valid [B])    no sampling (held-out sets)

With ``recurrent=True`` the samples are time-major ``Sequence`` windows instead of
transitions (``storage.gather_windows``), read from the same single-frame storage.

Every buffer returns the same sample triple, so importance weights are computed in one
place (the agent) for uniform and prioritised replay alike. A sample whose transition is
not valid (a reset step, a row too close to the write head) comes back with an all-zero
mask, so it contributes nothing to the loss; prioritised buffers give such rows
priority 0 so they are almost never drawn.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxatari.replay.storage import (FrameStorage, Row, gather_batch, gather_windows,
                                     init_storage, storage_seed_axes, window_width, write_row)

REPLAY_KINDS = ("uniform", "rank", "proportional")


@struct.dataclass
class ReplayState:
    storage: FrameStorage
    priorities: Any        # the prioritised index's state; () for uniform replay


Batch = Any   # types.Transition, or types.Sequence for a recurrent learner


@dataclasses.dataclass(frozen=True)
class Replay:
    """Pure functions of one seed's replay memory; see ``make_replay``."""

    init: Callable[[Row], ReplayState]                  # (example row) -> empty memory
    add: Callable[[ReplayState, Row], ReplayState]      # one row of every env stream
    # (state, key, batch size) -> (batch, flat indices [B], sampling probabilities [B])
    sample: Callable[[ReplayState, jax.Array, int], tuple[Batch, jax.Array, jax.Array]]
    # (state, flat indices [B], priorities [B]) -> state
    update_priorities: Callable[[ReplayState, jax.Array, jax.Array], ReplayState]
    seed_axes: Callable[[ReplayState], Any]   # vmap axes (counters unbatched)
    num_rows: int
    num_envs: int
    # (storage, flat indices [B]) -> (batch, valid [B])
    gather: Callable[[FrameStorage, jax.Array], tuple[Batch, jax.Array]] | None = None


def make_replay(kind: str, *, capacity: int, num_envs: int, hist_len: int, n_step: int,
                gamma: float, alpha: float = 0.6, recurrent: bool = False,
                burn_in: int = 0) -> Replay:
    """Builds a replay of ``capacity`` transitions per seed split over ``num_envs`` streams.

    ``recurrent``: samples are windows (``storage.gather_windows``) of ``burn_in`` +
    ``hist_len`` steps plus the bootstrap step, for a recurrent learner; ``hist_len`` is then
    the sequence length, not a frame stack. The flat index of a window is that of its last
    learnable transition, so prioritised kinds rank windows by the priority written there.
    """
    if kind not in REPLAY_KINDS:
        raise ValueError(f"unknown replay {kind!r}: choose one of {', '.join(REPLAY_KINDS)}")
    num_rows = capacity // num_envs
    if recurrent:
        gather = functools.partial(gather_windows, burn_in=burn_in, length=hist_len, gamma=gamma)
        # Windows are drawn among those that lie wholly in written rows, so none overlaps
        # the write head or reaches past the oldest row.
        first_end, unusable = window_width(burn_in, hist_len) - 2, window_width(burn_in, hist_len) - 1
    else:
        gather = functools.partial(gather_batch, hist_len=hist_len, n_step=n_step, gamma=gamma)
        first_end, unusable = 0, 0

    if kind == "uniform":
        def init(example: Row) -> ReplayState:
            return ReplayState(storage=init_storage(example, num_rows), priorities=())

        def add(state: ReplayState, row: Row) -> ReplayState:
            return state.replace(storage=write_row(state.storage, row))

        def sample(state: ReplayState, key, batch_size: int):
            storage = state.storage
            count = jnp.maximum((storage.size - unusable) * num_envs, 1)
            draws = jax.random.randint(key, (batch_size,), 0, count)
            rows = draws // num_envs
            if recurrent:   # count windows from the oldest row (a transition's row is any row)
                oldest = jnp.where(storage.size == num_rows, storage.pos, 0)
                rows = (oldest + first_end + rows) % num_rows
            indices = rows * num_envs + draws % num_envs
            transitions, _ = gather(storage, indices)
            probabilities = jnp.full((batch_size,), 1.0) / count
            return transitions, indices, probabilities

        def update_priorities(state, indices, priorities):
            del indices, priorities
            return state

        def seed_axes(state: ReplayState) -> ReplayState:
            return ReplayState(storage=storage_seed_axes(state.storage), priorities=())

        return Replay(init=init, add=add, sample=sample, update_priorities=update_priorities,
                      seed_axes=seed_axes, num_rows=num_rows, num_envs=num_envs, gather=gather)

    from jaxatari.replay.prioritised import make_prioritised_replay
    replay = make_prioritised_replay(kind, num_rows=num_rows, num_envs=num_envs, gather=gather,
                                     alpha=alpha)
    return dataclasses.replace(replay, gather=gather)
