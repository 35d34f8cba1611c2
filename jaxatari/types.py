"""Frozen pytree records shared by the pure layer.

States hold arrays only (functions stay in the factories' closures), so a state is
exactly what gets vmapped over seeds, donated to jit and checkpointed. Build them by
keyword and update them with ``.replace``; never unpack positionally.

Axis letters in shape comments: S seeds, E envs per seed, K bootstrap heads, B batch,
T time (time-major), A actions, H W C image (channels last), N replay rows.
"""
from __future__ import annotations

import jax
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
