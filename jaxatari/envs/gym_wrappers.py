"""Any ``JaxEnv`` as a single ``gymnasium.Env``, and gymnasium ids for the JAX-native games.

Importing this module registers "jaxatari/Catch-v0" (kwargs ``size``, ``flickering``,
``obscured``) and "jaxatari/GridWorld-v0" (kwarg ``max_steps``), so
``gymnasium.make("jaxatari/Catch-v0")`` works after ``import jaxatari.envs.gym_wrappers``.
"""
from __future__ import annotations

from typing import Any

import gymnasium
import jax
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

from jaxatari.envs.base import JaxEnv
from jaxatari.envs.catch import make_catch
from jaxatari.envs.gridworld import make_gridworld

# Observation bounds per dtype, as the conventions in base.py define them.
OBS_BOUNDS = {"uint8": (0, 255), "float32": (0.0, 1.0)}


class FunctionalEnv(gymnasium.Env):
    """Steps one copy of a pure functional ``JaxEnv``, holding its state and PRNG key.

    ``seed`` seeds the first ``reset`` when it is called without one. As with any
    gymnasium env, call ``reset`` after an episode ends: the JaxEnv never resets itself.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, jax_env: JaxEnv, seed: int | None = None,
                 render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        spec = jax_env.spec
        low, high = OBS_BOUNDS[spec.obs_dtype]
        self.observation_space = spaces.Box(low=low, high=high, shape=spec.obs_shape,
                                            dtype=np.dtype(spec.obs_dtype))
        self.action_space = spaces.Discrete(spec.num_actions)
        self.render_mode = render_mode
        self.jax_env = jax_env
        if seed is not None:
            self.np_random, _ = seeding.np_random(seed)
        self._key = None
        self._state = None

        def reset_with_key(key):
            key, reset_key = jax.random.split(key)
            state, obs = jax_env.reset(reset_key)
            return key, state, obs

        def step_with_key(key, state, action):
            key, step_key = jax.random.split(key)
            state, obs, reward, terminated, truncated = jax_env.step(step_key, state, action)
            return key, state, obs, reward, terminated, truncated

        self._reset = jax.jit(reset_with_key)
        self._step = jax.jit(step_with_key)
        self._render = jax.jit(jax_env.render)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        # The JAX key comes from gymnasium's seeded generator, so reset(seed=s) repeats
        # exactly and later unseeded resets continue the same key stream.
        if seed is not None or self._key is None:
            self._key = jax.random.key(int(self.np_random.integers(2 ** 31)))
        self._key, self._state, obs = self._reset(self._key)
        return np.asarray(obs), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._key, self._state, obs, reward, terminated, truncated = self._step(
            self._key, self._state, np.int32(action))
        return np.asarray(obs), float(reward), bool(terminated), bool(truncated), {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return np.asarray(self._render(self._state))


def make_catch_gym(size: int = 24, flickering: float = 0.0, obscured: bool = False,
                   render_mode: str | None = None) -> FunctionalEnv:
    """Entry point of "jaxatari/Catch-v0"."""
    return FunctionalEnv(make_catch(size=size, flickering=flickering, obscured=obscured),
                         render_mode=render_mode)


def make_gridworld_gym(max_steps: int = 1000,
                       render_mode: str | None = None) -> FunctionalEnv:
    """Entry point of "jaxatari/GridWorld-v0"."""
    return FunctionalEnv(make_gridworld(max_steps=max_steps), render_mode=render_mode)


GYM_IDS = {
    "jaxatari/Catch-v0": f"{__name__}:make_catch_gym",
    "jaxatari/GridWorld-v0": f"{__name__}:make_gridworld_gym",
}


def register_envs() -> None:
    """Registers the gymnasium ids; calling it again is a no-op."""
    for env_id, entry_point in GYM_IDS.items():
        # Re-registering would make gymnasium warn about overriding the id.
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)


register_envs()
