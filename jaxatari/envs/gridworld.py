"""GridWorld, exactly as the original's low-dimensional example (Kaixhin/rlenvs
``GridWorld.lua`` as drawn by Kaixhin/Atari ``examples/GridWorldVis.lua``).

The agent is a point (x, y) in [0, 1]^2 starting at (0.2, 0.4). Each step moves it 0.05
up (+y), right (+x), down (-y) or left (-x), clamped to the unit square, for a reward of
-0.5; the episode ends when it reaches the goal (1, 1). The shortest path is 16 moves
right and 12 up, 28 steps, so the best return is -14.

The position is kept as integer coordinates on the 21 x 21 lattice of multiples of 0.05
(0..20), because repeatedly adding 0.05 in floating point drifts off the lattice and can
miss the exact goal test; the observation is those coordinates / 20 as float32.

Our addition: the original has no time limit, so a random policy could wander for a
very long time; after ``max_steps`` steps an episode is cut with ``truncated=True``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxatari.envs.base import EnvSpec, JaxEnv

ACTIONS = ("UP", "RIGHT", "DOWN", "LEFT")
LATTICE_MAX = 20                     # coordinates 0..20 are positions 0, 0.05, ..., 1
START_CELL = (4, 8)                  # (0.2, 0.4)
STEP_REWARD = -0.5                   # the original's world cost, the same in every cell
# (dx, dy) in lattice steps for UP, RIGHT, DOWN, LEFT.
MOVES = ((0, 1), (1, 0), (0, -1), (-1, 0))


@struct.dataclass
class GridWorldState:
    cell: jax.Array         # int32 [2], (x, y) lattice coordinates in 0..20
    time: jax.Array         # int32 [], steps taken this episode


def make_gridworld(max_steps: int = 1000) -> JaxEnv:
    """Builds the GridWorld env; episodes are truncated after ``max_steps`` steps."""
    if max_steps < 1:
        raise ValueError(f"gridworld max_steps must be at least 1, got {max_steps}")
    moves = jnp.array(MOVES, dtype=jnp.int32)

    def observe(state: GridWorldState) -> jax.Array:
        return state.cell.astype(jnp.float32) / LATTICE_MAX  # [2] = (x, y)

    def reset(key):
        del key  # the start is fixed
        state = GridWorldState(cell=jnp.array(START_CELL, dtype=jnp.int32),
                               time=jnp.int32(0))
        return state, observe(state)

    def step(key, state: GridWorldState, action):
        del key  # moves are deterministic
        cell = jnp.clip(state.cell + moves[action], 0, LATTICE_MAX)
        time = state.time + 1
        terminated = jnp.all(cell == LATTICE_MAX)
        truncated = (time >= max_steps) & ~terminated
        new_state = GridWorldState(cell=cell, time=time)
        return new_state, observe(new_state), jnp.float32(STEP_REWARD), terminated, truncated

    def render(state: GridWorldState):
        # GridWorldVis lights row 20*y, column 20*x (1-based there, 0-based here).
        size = LATTICE_MAX + 1
        rows = jnp.arange(size)[:, None]
        cols = jnp.arange(size)[None, :]
        agent = (rows == state.cell[1]) & (cols == state.cell[0])
        return jnp.repeat((agent.astype(jnp.uint8) * 255)[..., None], 3, axis=-1)

    spec = EnvSpec(name="gridworld", obs_shape=(2,), obs_dtype="float32", num_actions=4,
                   action_meanings=ACTIONS,
                   protocol={"env": "gridworld", "max_steps": max_steps})
    return JaxEnv(spec=spec, reset=reset, step=step, render=render)
