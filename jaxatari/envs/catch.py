"""Catch, exactly as the original's demo environment (Kaixhin/rlenvs ``Catch.lua``).

A ball falls one row a step from a random column of the top row, drifting sideways at a
constant speed drawn from U(-1/3, 1/3) and bouncing off the side walls; a paddle two
pixels wide on the bottom row starts at the centre and moves one pixel left or right.
The episode ends when the ball reaches the bottom row (23 steps for size 24) with reward
1 if the paddle is under the ball and 0 otherwise.

Positions below are the original's 1-based ones, so the rules read as in the Lua source;
``_draw`` converts them to 0-based pixels (the real ball column is truncated, as Torch's
indexing does).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxatari.envs.base import EnvSpec, JaxEnv

ACTIONS = ("NOOP", "LEFT", "RIGHT")


@struct.dataclass
class CatchState:
    ball_x: jax.Array       # float32 [], 1-based column, real-valued
    ball_y: jax.Array       # int32 [], 1-based row
    ball_dx: jax.Array      # float32 [], columns per step
    paddle_x: jax.Array     # int32 [], 1-based leftmost paddle column
    flickered: jax.Array    # bool [], the last observation was blanked


def make_catch(size: int = 24, flickering: float = 0.0, obscured: bool = False,
               level: int = 2) -> JaxEnv:
    """Builds the Catch env. ``flickering`` is the probability that a step's screen is blank."""
    if size < 4:
        raise ValueError(f"catch size must be at least 4, got {size}")
    if not 0.0 <= flickering <= 1.0:
        raise ValueError(f"flickering must be a probability in [0, 1], got {flickering}")
    paddle_width = math.ceil(size / 12)
    barrier = math.ceil(size / 4)

    def draw(state: CatchState) -> jax.Array:
        rows = jnp.arange(size)[:, None]
        cols = jnp.arange(size)[None, :]
        ball_col = jnp.floor(state.ball_x).astype(jnp.int32) - 1
        ball = (rows == state.ball_y - 1) & (cols == ball_col)
        paddle = (rows == size - 1) & (cols >= state.paddle_x - 1) & (
            cols < state.paddle_x - 1 + paddle_width)
        screen = ball | paddle
        if obscured:
            # The original blanks the `barrier` rows just above the bottom row.
            hidden = (rows >= size - barrier - 1) & (rows < size - 1)
            screen = screen & ~hidden
        # uint8 frames use the [0, 255] scale (the original's discretisation of [0, 1]).
        return (screen.astype(jnp.uint8) * 255)[..., None]  # [H, W, 1]

    def reset(key):
        state = CatchState(
            ball_x=jax.random.randint(key, (), 1, size + 1).astype(jnp.float32),
            ball_y=jnp.int32(1),
            ball_dx=jax.random.uniform(jax.random.fold_in(key, 1), (), minval=-1 / 3,
                                       maxval=1 / 3) * (1 - level),
            paddle_x=jnp.int32(math.ceil(size / 2)),
            flickered=jnp.bool_(False),
        )
        return state, draw(state)

    def step(key, state: CatchState, action):
        paddle_x = jnp.where(action == 1, jnp.maximum(state.paddle_x - 1, 1), state.paddle_x)
        paddle_x = jnp.where(action == 2, jnp.minimum(state.paddle_x + 1, size - paddle_width + 1),
                             paddle_x)
        ball_y = state.ball_y + 1
        ball_x = state.ball_x + state.ball_dx
        hit_right = ball_x >= size
        hit_left = (ball_x < 2) & (state.ball_dx < 0) & ~hit_right
        ball_x = jnp.where(hit_right, float(size), jnp.where(hit_left, 5 / 3, ball_x))
        ball_dx = jnp.where(hit_right | hit_left, -state.ball_dx, state.ball_dx)
        terminated = ball_y == size
        caught = (ball_x >= paddle_x) & (ball_x <= paddle_x + paddle_width - 1)
        reward = (terminated & caught).astype(jnp.float32)
        flickered = jax.random.uniform(key) < flickering
        new_state = CatchState(ball_x=ball_x, ball_y=ball_y, ball_dx=ball_dx,
                               paddle_x=paddle_x, flickered=flickered)
        obs = jnp.where(flickered, jnp.zeros((size, size, 1), jnp.uint8), draw(new_state))
        return new_state, obs, reward, terminated, jnp.bool_(False)

    def render(state: CatchState):
        screen = jnp.where(state.flickered, jnp.zeros((size, size, 1), jnp.uint8), draw(state))
        return jnp.repeat(screen, 3, axis=-1)  # [H, W, 3] grey as RGB, as the original

    spec = EnvSpec(name="catch", obs_shape=(size, size, 1), obs_dtype="uint8", num_actions=3,
                   action_meanings=ACTIONS,
                   protocol={"env": "catch", "size": size, "flickering": flickering,
                             "obscured": obscured, "level": level})
    return JaxEnv(spec=spec, reset=reset, step=step, render=render)
