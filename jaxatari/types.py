"""Frozen pytree records shared by the pure layer.

States hold arrays only (functions stay in the factories' closures), so a state is
exactly what gets vmapped over seeds, donated to jit and checkpointed. Build them by
keyword and update them with ``.replace``; never unpack positionally.

Axis letters in shape comments: S seeds, E envs per seed, K bootstrap heads, B batch,
T time (time-major), A actions, H W C image (channels last), N replay rows.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

Array = jax.Array


@struct.dataclass
class Transition:
    """A batch of transitions as the learner sees them (frame stacks rebuilt)."""

    obs_tm1: Array      # [B, H, W, C*hist] (or [B, D*hist])
    a_tm1: Array        # [B] int32
    r_t: Array          # [B] float32, clipped reward (n-step discounted sum when n > 1)
    discount_t: Array   # [B] float32, gamma^n, or 0 where the episode terminated
    obs_t: Array        # [B, H, W, C*hist]
    mask: Array         # [B, K] float32: bootstrap mask times sample validity


@struct.dataclass
class Sequence:
    """A batch of replayed windows for a recurrent learner, time-major.

    A window is W = burn_in + T + 1 consecutive steps of one env: ``burn_in`` steps that only
    warm the recurrent state, T steps whose transitions may be learned from, and the final
    observation they bootstrap from.
    """

    obs: Array          # [W, B, H, W, C] one frame per step
    first: Array        # [W, B] bool, the frame starts an episode: the recurrent state resets
    a_tm1: Array        # [T, B] int32
    r_t: Array          # [T, B] float32, clipped reward
    discount_t: Array   # [T, B] float32, gamma, or 0 where the episode terminated
    mask: Array         # [T, B, K] float32: bootstrap mask x validity x step selection


@struct.dataclass
class TrainState:
    """Learner state of one seed."""

    params: dict
    target_params: dict
    opt_state: optax.OptState
    key: Array          # PRNG key for the learner (sampling from replay)


@struct.dataclass
class ActorState:
    """Acting state of the E envs of one seed (host or JAX-native)."""

    stack: Array            # [E, H, W, C*hist] the current frame stack
    head: Array             # [E] int32, the bootstrap head acting in each env's episode
    after_done: Array       # [E] bool, the next step is a reset step
    key: Array              # PRNG key for exploration
    core: Any = ()          # recurrent agents: LSTM (cell, hidden), each [E, hidden]

    @classmethod
    def empty(cls, num_envs: int, stack_shape: tuple[int, ...], frame_dtype, key,
              core: Any = ()) -> "ActorState":
        """Empty frame stacks, head 0, no pending reset."""
        return cls(stack=jnp.zeros((num_envs, *stack_shape), frame_dtype),
                   head=jnp.zeros((num_envs,), jnp.int32),
                   after_done=jnp.zeros((num_envs,), bool), key=key, core=core)


def switched_off(value) -> bool:
    """Whether a clip or coefficient setting (0 or less) turns its mechanism off, which
    decides the program's shape. A traced value, a hyperparameter sweep's
    (``jaxatari.sweep``), counts as on: sweeps refuse 0 for these options, since off and
    on are two programs."""
    return not isinstance(value, jax.core.Tracer) and value <= 0
