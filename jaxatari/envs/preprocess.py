"""Visual preprocessing at the env boundary: resize and colour space (the original's
``-height``, ``-width`` and ``-colorSpace``; Kaixhin/Atari ``Model.lua`` ``preprocess``).

``make_preprocess`` returns a pure function of one frame ``[H, W, C] -> [H', W', C']``, so
a JAX-native env keeps running inside the jitted training scan (``preprocess_jax_env``)
and a host env applies the same function, jitted and vmapped over its N frames
(``PreprocessedHostEnv``). The screens used for video, saliency and the live display stay
the env's full-colour ``render``.

Every colour space is mapped to [0, 1] per channel, then stored as the source was: uint8
sources give uint8 frames (round(255 x)), float32 sources float32 frames in [0, 1], so
replay memory, ``--discretise-mem`` and the networks' input scale are unchanged. The
mappings (RGB in [0, 1]):

* ``y``: luma Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601), one channel;
* ``yuv``: Y, and U = -0.14713 R - 0.28886 G + 0.436 B, V = 0.615 R - 0.51499 G - 0.10001 B
  (BT.601 analogue YUV) shifted to U / 0.872 + 0.5, V / 1.23 + 0.5;
* ``lab``: CIE L*a*b* of sRGB under D65 (sRGB gamma removed, XYZ by the sRGB matrix), stored
  as OpenCV's 8-bit encoding does: L / 100, (a + 128) / 255, (b + 128) / 255;
* ``hsv`` and ``hsl``: hue / 360, saturation, value or lightness (Smith 1978; Joblove and
  Greenberg 1978), hue 0 for greys;
* ``nrgb``: chromaticities R / (R + G + B) and so on, 0 for black.

Resizing is linear interpolation with antialiasing when shrinking (``jax.image.resize``),
after the colour conversion as in the original.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.config import COLOR_SPACES, ConfigError
from jaxatari.envs.base import EnvSpec, JaxEnv, SplitStep, StepResult

CHANNELS = {"none": None, "y": 1, "lab": 3, "yuv": 3, "hsl": 3, "hsv": 3, "nrgb": 3}

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]], np.float32)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)
_YUV = np.array([[0.299, 0.587, 0.114],
                 [-0.14713, -0.28886, 0.436],
                 [0.615, -0.51499, -0.10001]], np.float32)


def _hue(rgb: jax.Array, high: jax.Array, delta: jax.Array) -> jax.Array:
    """Hue in [0, 1) of the hexcone models (HSV and HSL share it); 0 for greys."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = jnp.where(delta > 0, delta, 1.0)
    sector = jnp.where(high == r, (g - b) / safe,
                       jnp.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return jnp.where(delta > 0, jnp.mod(sector / 6.0, 1.0), 0.0)


def _lab_f(t: jax.Array) -> jax.Array:
    eps = (6.0 / 29.0) ** 3
    return jnp.where(t > eps, jnp.cbrt(jnp.maximum(t, eps)), t / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)


def rgb_to(space: str, rgb: jax.Array) -> jax.Array:
    """RGB [..., 3] in [0, 1] -> the colour space's channels [..., C], each in [0, 1]."""
    if space == "none":
        return rgb
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if space == "y":
        return (rgb @ _YUV[0])[..., None]
    if space == "yuv":
        y, u, v = jnp.moveaxis(rgb @ _YUV.T, -1, 0)
        return jnp.stack([y, u / 0.872 + 0.5, v / 1.23 + 0.5], -1)
    if space == "lab":
        linear = jnp.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        fx, fy, fz = jnp.moveaxis(_lab_f(linear @ _SRGB_TO_XYZ.T / _D65_WHITE), -1, 0)
        lightness, a, bb = 116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)
        return jnp.stack([lightness / 100.0, (a + 128.0) / 255.0, (bb + 128.0) / 255.0], -1)
    high, low = rgb.max(-1), rgb.min(-1)
    delta = high - low
    if space == "hsv":
        saturation = jnp.where(high > 0, delta / jnp.where(high > 0, high, 1.0), 0.0)
        return jnp.stack([_hue(rgb, high, delta), saturation, high], -1)
    if space == "hsl":
        lightness = (high + low) / 2.0
        spread = jnp.where(lightness <= 0.5, high + low, 2.0 - high - low)
        saturation = jnp.where(delta > 0, delta / jnp.where(spread > 0, spread, 1.0), 0.0)
        return jnp.stack([_hue(rgb, high, delta), saturation, lightness], -1)
    if space == "nrgb":
        total = r + g + b
        return jnp.where(total[..., None] > 0, rgb / jnp.where(total > 0, total, 1.0)[..., None],
                         0.0)
    raise ValueError(f"unknown colour space {space!r}; choose one of {', '.join(COLOR_SPACES)}")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    height: int = 0
    width: int = 0
    color_space: str = "none"

    @property
    def active(self) -> bool:
        return bool(self.height or self.width) or self.color_space != "none"

    def record(self) -> dict:
        return {"height": self.height, "width": self.width, "color_space": self.color_space}


def check_source(pre: Preprocessing, spec: EnvSpec) -> tuple[int, ...]:
    """The frame shape after ``pre``; a one-line ConfigError where the source cannot take it
    (the original's validation: an image for a resize, an RGB image for a colour space)."""
    shape = tuple(spec.obs_shape)
    if len(shape) != 3:
        flags = [f for f, on in (("--height", pre.height), ("--width", pre.width),
                                 ("--color-space", pre.color_space != "none")) if on]
        verb = "needs" if len(flags) == 1 else "need"
        raise ConfigError(f"{', '.join(flags)} {verb} image observations; {spec.name} gives "
                          f"vectors of shape {shape}")
    height, width, channels = shape
    if pre.color_space != "none" and channels != 3:
        raise ConfigError(f"--color-space {pre.color_space} needs an RGB source; {spec.name} "
                          f"gives frames with {channels} channel{'s' if channels != 1 else ''}")
    return (pre.height or height, pre.width or width,
            CHANNELS[pre.color_space] or channels)


def make_preprocess(pre: Preprocessing, spec: EnvSpec) -> tuple[Callable, EnvSpec]:
    """(frame [H, W, C] -> frame [H', W', C'], the spec of the preprocessed env)."""
    out_shape = check_source(pre, spec)
    uint8 = spec.obs_dtype == "uint8"

    def preprocess(frame: jax.Array) -> jax.Array:
        x = frame.astype(jnp.float32) / 255.0 if uint8 else frame.astype(jnp.float32)
        x = rgb_to(pre.color_space, x)
        if x.shape[:2] != out_shape[:2]:
            x = jax.image.resize(x, out_shape, method="linear", antialias=True)
        if uint8:
            return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)
        return jnp.clip(x, 0.0, 1.0)

    new_spec = dataclasses.replace(spec, obs_shape=out_shape,
                                   protocol={**spec.protocol, "preprocessing": pre.record()})
    return preprocess, new_spec


def preprocess_jax_env(env: JaxEnv, pre: Preprocessing) -> JaxEnv:
    """The JaxEnv with its observations preprocessed (still pure, still jittable)."""
    if not pre.active:
        return env
    preprocess, spec = make_preprocess(pre, env.spec)

    def reset(key):
        state, obs = env.reset(key)
        return state, preprocess(obs)

    def step(key, state, action):
        state, obs, reward, terminated, truncated = env.step(key, state, action)
        return state, preprocess(obs), reward, terminated, truncated

    evaluation = None if env.evaluation is None else preprocess_jax_env(env.evaluation, pre)
    return dataclasses.replace(env, spec=spec, reset=reset, step=step, evaluation=evaluation)


class PreprocessedHostEnv:
    """A HostEnv whose N observations go through the preprocessing, jitted and vmapped once.

    Everything else (modes, render, the custom-env hooks) is the wrapped env's.
    """

    def __init__(self, env, pre: Preprocessing, spec_in: EnvSpec | None = None):
        self._env = env
        preprocess, self.spec = make_preprocess(pre, spec_in or env.spec)
        self._apply = jax.jit(jax.vmap(preprocess))
        self.num_envs = env.num_envs
        self._stepping = SplitStep(env)

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self._apply(obs))

    def reset(self) -> np.ndarray:
        return self._obs(self._env.reset())

    def step(self, actions: np.ndarray) -> StepResult:
        result = self._env.step(actions)
        return dataclasses.replace(result, obs=self._obs(result.obs))

    def step_async(self, actions: np.ndarray) -> None:
        self._stepping.send(actions)

    def step_wait(self) -> StepResult:
        result = self._stepping.wait()
        return dataclasses.replace(result, obs=self._obs(result.obs))

    def __getattr__(self, name):   # set_mode, render, close and any hook of the env
        return getattr(self._env, name)
