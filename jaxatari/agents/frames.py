"""Frame stacks: the agents' view of the last ``hist_len`` observations (Mnih et al. 2015,
the agent history length), kept the same way in jitted code and on the host."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def to_agent_frame(frame: jax.Array, dtype) -> jax.Array:
    """Float observations in [0, 1] become bytes when the agent stores uint8 (the original's
    discretiseMem, rounded rather than truncated)."""
    if dtype == jnp.uint8 and frame.dtype != jnp.uint8:
        return jnp.round(jnp.clip(frame, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    return frame.astype(dtype)


def push_frame(stacks, frames, is_first, xp=jnp):
    """Stacks [N, ..., C * hist] with the newest frames [N, ..., C] pushed in last; a stack
    whose frame starts an episode (``is_first`` [N]) is emptied first. ``xp`` is the array
    module: ``jax.numpy`` in jitted code, ``numpy`` for host-side stacks."""
    channels = frames.shape[-1]
    keep = ~is_first.reshape(-1, *([1] * (stacks.ndim - 1)))
    stacks = xp.where(keep, stacks, xp.zeros_like(stacks))
    return xp.concatenate([stacks[..., channels:], frames.astype(stacks.dtype)], axis=-1)
