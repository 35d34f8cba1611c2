"""Frame storage shared by every replay buffer: single frames, stacks rebuilt on sampling.

Each of the E envs of a seed writes one row per step into a ring of R rows, so the
storage is ``[R, E, ...]`` and the previous frame of env e at row n is row n-1, env e.
A row holds the observation an action was taken on, that action, the (clipped) reward
that followed, whether the episode terminated there, whether the observation is the
first of an episode, whether the row's transition may be learned from (False for the
reset step that follows every episode end: its action was ignored by the env) and the
Bootstrapped-DQN masks of its transition.

Frames are stored once (1M Atari transitions: about 7 GB as uint8 instead of 56 GB for
stacked pairs), and the ``hist_len`` stack of a row is rebuilt from the rows before it,
zeroing frames from before the episode's first frame, as the original's Experience.lua.

The write position and fill level are shared by all seeds (every seed writes a row each
step), so they stay unbatched under ``vmap``: see ``SEED_AXES``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxatari.types import Sequence, Transition


@struct.dataclass
class Row:
    """One step of the E envs of a seed; every field has leading axis [E]."""

    frame: jax.Array      # [E, *obs_shape] the observation the action was taken on
    action: jax.Array     # [E] int32
    reward: jax.Array     # [E] float32, clipped
    terminal: jax.Array   # [E] bool, the episode terminated after this action
    first: jax.Array      # [E] bool, `frame` is the first observation of an episode
    valid: jax.Array      # [E] bool, False for reset steps
    mask: jax.Array       # [E, K] bool, bootstrap masks


@struct.dataclass
class FrameStorage:
    rows: Row             # every field [R, E, ...]
    pos: jax.Array        # int32 [], next row to write (shared by seeds)
    size: jax.Array       # int32 [], rows written so far, at most R (shared by seeds)


def storage_seed_axes(storage: FrameStorage) -> FrameStorage:
    """vmap axes for a seed-batched storage: rows on axis 0, counters unbatched."""
    return FrameStorage(rows=jax.tree.map(lambda _: 0, storage.rows), pos=None, size=None)


def init_storage(example: Row, num_rows: int) -> FrameStorage:
    rows = jax.tree.map(lambda x: jnp.zeros((num_rows, *x.shape), x.dtype), example)
    return FrameStorage(rows=rows, pos=jnp.int32(0), size=jnp.int32(0))


def write_row(storage: FrameStorage, row: Row) -> FrameStorage:
    num_rows = storage.rows.action.shape[0]
    rows = jax.tree.map(lambda s, x: jax.lax.dynamic_update_index_in_dim(s, x, storage.pos, 0),
                        storage.rows, row)
    return FrameStorage(rows=rows, pos=(storage.pos + 1) % num_rows,
                        size=jnp.minimum(storage.size + 1, num_rows))


def _stack(storage: FrameStorage, row: jax.Array, env: jax.Array, hist_len: int) -> jax.Array:
    """The frame stack ending at (row, env), oldest frame first on the channel axis."""
    num_rows = storage.rows.action.shape[0]
    frames = []
    blocked = jnp.bool_(False)   # an episode start lies between this frame and the newest
    for back in range(hist_len):
        index = (row - back) % num_rows
        frame = storage.rows.frame[index, env]
        frames.append(jnp.where(blocked, jnp.zeros_like(frame), frame))
        blocked = blocked | storage.rows.first[index, env]
    return jnp.concatenate(frames[::-1], axis=-1)


def gather_transition(storage: FrameStorage, flat_index: jax.Array, *, hist_len: int,
                      n_step: int, gamma: float) -> tuple[Transition, jax.Array]:
    """Rebuilds the n-step transition starting at ``flat_index = row * E + env``.

    The return accumulates clipped rewards until the episode terminates (discount 0) or
    is cut by a time limit (the next row holds the final observation and is a reset
    step: bootstrap from it), else bootstraps after ``n_step`` rows with gamma^n.

    Returns the transition (unbatched) and whether it may be learned from: the row was
    written, is not a reset step, its next ``n_step`` rows are written, and its frame
    history was not overwritten by the ring's newest rows.
    """
    num_rows, num_envs = storage.rows.action.shape[:2]
    row, env = flat_index // num_envs, flat_index % num_envs
    full = storage.size == num_rows
    oldest = jnp.where(full, storage.pos, 0)
    age = (row - oldest) % num_rows                # 0 for the oldest row still stored

    reward = jnp.float32(0.0)
    discount = jnp.float32(1.0)
    next_row = (row + 1) % num_rows
    running = jnp.bool_(True)
    for step in range(n_step):
        index = (row + step) % num_rows
        reward = reward + jnp.where(running, discount * storage.rows.reward[index, env], 0.0)
        terminal = storage.rows.terminal[index, env]
        cut = ~storage.rows.valid[(index + 1) % num_rows, env]  # next row is a reset step
        discount = jnp.where(running, discount * gamma * (1.0 - terminal), discount)
        next_row = jnp.where(running, (index + 1) % num_rows, next_row)
        running = running & ~terminal & ~cut

    valid = (storage.rows.valid[row, env]
             & (age + n_step <= storage.size - 1)
             & ((age >= hist_len - 1) | ~full))
    transition = Transition(
        obs_tm1=_stack(storage, row, env, hist_len),
        a_tm1=storage.rows.action[row, env],
        r_t=reward,
        discount_t=discount,
        obs_t=_stack(storage, next_row, env, hist_len),
        mask=storage.rows.mask[row, env].astype(jnp.float32),
    )
    return transition, valid


def gather_batch(storage: FrameStorage, flat_indices: jax.Array, *, hist_len: int,
                 n_step: int, gamma: float) -> tuple[Transition, jax.Array]:
    """``gather_transition`` over a batch of flat indices [B]; validity folded into masks."""
    transitions, valid = jax.vmap(
        lambda i: gather_transition(storage, i, hist_len=hist_len, n_step=n_step, gamma=gamma)
    )(flat_indices)
    return transitions.replace(mask=transitions.mask * valid[:, None]), valid


def window_width(burn_in: int, length: int) -> int:
    """Rows in a window: burn-in steps, ``length`` learnable steps and the bootstrap step."""
    return burn_in + length + 1


def gather_window(storage: FrameStorage, flat_index: jax.Array, *, burn_in: int, length: int,
                  gamma: float) -> tuple[Sequence, jax.Array]:
    """The window of one env whose last learnable transition is row ``flat_index // E``.

    It spans rows r - (burn_in + length - 1) .. r + 1, time-major, single frames (the
    recurrent state replaces the frame stack). Rows are read in place from the ring: no
    window is ever stored. Returns the window (unbatched: obs [W, ...], mask [T, K]) and
    whether every row of it is written and still stored, i.e. it neither overlaps the write
    head nor reaches past the oldest row. A step's mask is 0 on reset steps (their action
    was ignored) so episode boundaries inside the window are never learned across; the
    ``first`` flags reset the recurrent state there.
    """
    num_rows, num_envs = storage.rows.action.shape[:2]
    row, env = flat_index // num_envs, flat_index % num_envs
    width = window_width(burn_in, length)
    full = storage.size == num_rows
    oldest = jnp.where(full, storage.pos, 0)
    age = (row - oldest) % num_rows
    valid = (age >= width - 2) & (age + 1 <= storage.size - 1)
    rows = (row - (width - 2) + jnp.arange(width)) % num_rows           # [W]
    learned = rows[burn_in:burn_in + length]                             # [T]
    step_valid = storage.rows.valid[learned, env] & valid
    window = Sequence(
        obs=storage.rows.frame[rows, env],
        first=storage.rows.first[rows, env],
        a_tm1=storage.rows.action[learned, env],
        r_t=storage.rows.reward[learned, env],
        discount_t=gamma * (1.0 - storage.rows.terminal[learned, env].astype(jnp.float32)),
        mask=storage.rows.mask[learned, env].astype(jnp.float32) * step_valid[:, None],
    )
    return window, valid


def gather_windows(storage: FrameStorage, flat_indices: jax.Array, *, burn_in: int,
                   length: int, gamma: float) -> tuple[Sequence, jax.Array]:
    """``gather_window`` over a batch of flat indices [B]: a time-major ``Sequence``
    (obs [W, B, ...], mask [T, B, K]) and each window's validity [B]."""
    return jax.vmap(
        lambda i: gather_window(storage, i, burn_in=burn_in, length=length, gamma=gamma),
        out_axes=(1, 0))(flat_indices)
