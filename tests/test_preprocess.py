"""--height, --width, --color-space: each colour space against formulas written out here
(and Python's colorsys), resize shapes, JAX-native envs stay jittable, host envs and the
original's validation (an RGB source for a colour space; images for a resize)."""
from __future__ import annotations

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxatari.config import ConfigError, Config, validate
from jaxatari.envs import make_env
from jaxatari.envs.base import EnvSpec
from jaxatari.envs.preprocess import Preprocessing, make_preprocess, rgb_to

# A few pixels: primaries, secondaries, greys, black, white and two mixtures.
PIXELS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [0.5, 0.5, 0.5],
                   [0, 0, 0], [1, 1, 1], [0.2, 0.4, 0.6], [0.9, 0.3, 0.1]], np.float32)


def _ours(space: str) -> np.ndarray:
    return np.asarray(jax.jit(lambda x: rgb_to(space, x))(jnp.asarray(PIXELS)))


def test_y_and_yuv_are_bt601():
    r, g, b = PIXELS.T
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = -0.14713 * r - 0.28886 * g + 0.436 * b
    v = 0.615 * r - 0.51499 * g - 0.10001 * b
    np.testing.assert_allclose(_ours("y")[:, 0], y, atol=1e-6)
    np.testing.assert_allclose(_ours("yuv"), np.stack([y, u / 0.872 + 0.5, v / 1.23 + 0.5], -1),
                               atol=1e-6)
    assert _ours("y").shape == (len(PIXELS), 1)


def test_hsv_and_hsl_match_colorsys():
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in PIXELS.astype(np.float64)])
    hls = np.array([colorsys.rgb_to_hls(*p) for p in PIXELS.astype(np.float64)])
    np.testing.assert_allclose(_ours("hsv"), hsv, atol=1e-6)
    np.testing.assert_allclose(_ours("hsl"), hls[:, [0, 2, 1]], atol=1e-6)   # H, S, L


def test_lab_matches_published_cie_values():
    # CIE L*a*b* (D65) of sRGB red, green, blue, white, black, as tabulated for sRGB.
    expected = {0: (53.24, 80.09, 67.20), 1: (87.73, -86.18, 83.18), 2: (32.30, 79.19, -107.86),
                7: (100.0, 0.0, 0.0), 6: (0.0, 0.0, 0.0), 5: (53.39, 0.0, 0.0)}
    ours = _ours("lab")
    for index, (lightness, a, b) in expected.items():
        decoded = ours[index] * [100.0, 255.0, 255.0] - [0.0, 128.0, 128.0]
        np.testing.assert_allclose(decoded, (lightness, a, b), atol=0.05)


def test_nrgb_is_chromaticity():
    total = PIXELS.sum(-1, keepdims=True)
    expected = np.where(total > 0, PIXELS / np.maximum(total, 1e-12), 0.0)
    np.testing.assert_allclose(_ours("nrgb"), expected, atol=1e-6)


def _spec(shape, dtype="uint8") -> EnvSpec:
    return EnvSpec(name="fake", obs_shape=shape, obs_dtype=dtype, num_actions=2)


@pytest.mark.parametrize("height, width, space, shape", [
    (0, 0, "y", (30, 40, 1)), (20, 0, "none", (20, 40, 3)), (0, 10, "lab", (30, 10, 3)),
    (84, 84, "y", (84, 84, 1)), (15, 20, "hsv", (15, 20, 3))])
def test_resize_and_channels(height, width, space, shape):
    pre = Preprocessing(height, width, space)
    preprocess, spec = make_preprocess(pre, _spec((30, 40, 3)))
    frame = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    out = jax.jit(preprocess)(frame)
    assert out.shape == spec.obs_shape == shape and out.dtype == jnp.uint8
    assert spec.protocol["preprocessing"] == pre.record()
    if (height, width) == (0, 0):   # no resize: exactly the conversion of each pixel, 8-bit
        expected = np.rint(np.asarray(rgb_to(space, frame / 255.0)) * 255)
        np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=1)


def test_float_sources_stay_float_in_unit_range():
    preprocess, spec = make_preprocess(Preprocessing(4, 4, "yuv"), _spec((8, 8, 3), "float32"))
    out = preprocess(jnp.full((8, 8, 3), 0.5))
    assert out.dtype == jnp.float32 and out.shape == (4, 4, 3) and spec.obs_dtype == "float32"
    # grey: Y .5, U and V centred (BT.601's rounded U coefficients sum to 1e-5, not 0)
    np.testing.assert_allclose(np.asarray(out), 0.5, atol=1e-4)


def test_resize_of_a_constant_image_keeps_its_value_and_blends_when_shrinking():
    preprocess, _ = make_preprocess(Preprocessing(2, 2), _spec((4, 4, 1)))
    assert np.all(np.asarray(preprocess(np.full((4, 4, 1), 77, np.uint8))) == 77)
    stripes = np.zeros((4, 4, 1), np.uint8)
    stripes[:, ::2] = 200
    out = np.asarray(preprocess(stripes), float)
    # antialiased: every output pixel blends both stripes (no aliasing to 0 or 200), mean kept
    assert np.all((out > 50) & (out < 150)) and abs(out.mean() - 100) <= 1


def test_non_rgb_sources_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="needs an RGB source; fake gives frames with 1 channel"):
        make_preprocess(Preprocessing(color_space="hsv"), _spec((8, 8, 1)))
    with pytest.raises(ConfigError, match="--height needs image observations"):
        make_preprocess(Preprocessing(height=4), _spec((6,), "float32"))
    with pytest.raises(ConfigError, match="needs an RGB source; catch"):
        validate(Config(color_space="y"))
    with pytest.raises(ConfigError, match="needs an RGB source; GreyRoom|needs an RGB source"):
        make_env(Config(env="tests.custom_env:GreyRoom", color_space="lab"))


def test_jax_native_env_is_resized_inside_jit():
    env = make_env(Config(env="catch", height=12, width=12))
    assert env.spec.obs_shape == (12, 12, 1)
    assert env.spec.protocol["preprocessing"] == {"height": 12, "width": 12, "color_space": "none"}

    @jax.jit
    def reset_and_step(key):
        state, obs = env.reset(key)
        _, obs_t, *_ = env.step(key, state, jnp.int32(0))
        return obs, obs_t, env.render(state)

    obs, obs_t, screen = reset_and_step(jax.random.PRNGKey(0))
    assert obs.shape == obs_t.shape == (12, 12, 1) and obs.dtype == jnp.uint8
    assert screen.shape == (24, 24, 3)   # the display keeps the env's own screen


def test_host_env_colour_space_by_import_path():
    factory = make_env(Config(env="tests.custom_env:ColourRoom", color_space="y", height=4,
                              width=4))
    assert factory.spec.obs_shape == (4, 4, 1)
    env = factory(2, 0)
    obs = env.reset()
    assert obs.shape == (2, 4, 4, 1) and obs.dtype == np.uint8
    # mostly blue (Y = 0.114 * 255 = 29), one column of the red square mixed in by the resize
    assert np.median(obs) == 29
    assert env.step(np.zeros(2, int)).obs.shape == (2, 4, 4, 1)
    assert env.render(0).shape == (16, 16, 3)   # hooks pass through the wrapper
    env.close()
