"""A small custom environment loaded by import path (``--env tests.custom_env:ColourRoom``).

It uses every optional hook of the custom-env interface (jaxatari.envs.base.CustomEnvHooks):
``training()`` / ``evaluate()`` change its behaviour (evaluation pays 10 per step instead of
1 and ends after 3 steps instead of 5), and ``get_display()`` gives a 16 x 16 RGB screen that
differs from its 8 x 8 RGB observation, so tests can tell which one reached a video.
"""
from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces

DISPLAY_COLOUR = (0, 200, 0)


class ColourRoom(gymnasium.Env):
    """RGB observations: a red square on blue whose column is the step count."""

    def __init__(self):
        self.observation_space = spaces.Box(0, 255, (8, 8, 3), np.uint8)
        self.action_space = spaces.Discrete(2)
        self.evaluating = False
        self.t = 0

    def training(self) -> None:
        self.evaluating = False

    def evaluate(self) -> None:
        self.evaluating = True

    def _obs(self) -> np.ndarray:
        obs = np.zeros((8, 8, 3), np.uint8)
        obs[..., 2] = 255
        obs[2:4, self.t % 8] = (255, 0, 0)
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        reward = 10.0 if self.evaluating else 1.0
        terminated = self.t >= (3 if self.evaluating else 5)
        return self._obs(), reward + int(action) * 0.0, terminated, False, {}

    def get_display(self) -> np.ndarray:
        screen = np.zeros((16, 16, 3), np.uint8)
        screen[...] = DISPLAY_COLOUR
        screen[0, self.t % 16] = (255, 255, 255)
        return screen


class GreyRoom(ColourRoom):
    """The same room with one grey channel: a colour space must be refused."""

    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Box(0, 255, (8, 8, 1), np.uint8)

    def _obs(self) -> np.ndarray:
        return super()._obs()[..., :1]


def make_countdown(length: int = 5, pay: float = 1.0):
    """A pure JAX custom env (``--env tests.custom_env:make_countdown``): a 4 x 4 grey screen
    whose lit pixel walks along the top row; reward ``pay`` per step for ``length`` steps.
    Its evaluation variant pays 10 for 3 steps, as ColourRoom's evaluate()."""
    import jax.numpy as jnp

    from jaxatari.envs.base import EnvSpec, JaxEnv

    def draw(t):
        return (jnp.zeros((4, 4, 1), jnp.uint8).at[0, t % 4, 0].set(255))

    def reset(key):
        del key
        return jnp.int32(0), draw(0)

    def step(key, t, action):
        del key, action
        t = t + 1
        return t, draw(t), jnp.float32(pay), t >= length, jnp.bool_(False)

    def render(t):
        return jnp.repeat(draw(t), 3, axis=-1)

    spec = EnvSpec(name="countdown", obs_shape=(4, 4, 1), obs_dtype="uint8", num_actions=2,
                   protocol={"env": "countdown", "length": length, "pay": pay})
    evaluation = None
    if (length, pay) == (5, 1.0):
        evaluation = make_countdown(3, 10.0)
    return JaxEnv(spec=spec, reset=reset, step=step, render=render, evaluation=evaluation)
