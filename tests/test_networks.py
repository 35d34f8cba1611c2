"""Network bodies: PatchConv is a real convolution, and every named body has the paper's shape."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxatari.networks import CONV_BODIES, PatchConv, make_body


@pytest.mark.parametrize("features, kernel, stride, pad",
                         sorted({layer for layers in CONV_BODIES.values() for layer in layers}))
def test_patch_conv_equals_lax_convolution(features, kernel, stride, pad):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 21, 23, 3))
    conv = PatchConv(features, kernel, stride, pad)
    params = conv.init(jax.random.PRNGKey(1), x)
    dense = params["params"]["dense"]
    # PatchConv's kernel rows run over patch offsets (i, j), then input channels: HWIO.
    kernel_hwio = dense["kernel"].reshape(kernel, kernel, 3, features)
    expected = jax.lax.conv_general_dilated(
        x, kernel_hwio, (stride, stride), [(pad, pad), (pad, pad)],
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + dense["bias"]
    np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, obs_shape, features", [
    ("catch", (24, 24, 4), 5 * 5 * 32),           # 24 -> 11 -> 5 with 5x5/2, pad 1
    ("nature", (84, 84, 4), 7 * 7 * 64),          # Mnih et al. 2015: 3136 features
    ("atari", (84, 84, 4), 7 * 7 * 64),           # the original's pad 1 keeps 20x20 after conv1
    ("atari2013", (84, 84, 4), 9 * 9 * 32),       # 2592 features
    ("minatar", (10, 10, 6), 8 * 8 * 16),         # Young and Tian 2019: 1024 features
])
def test_named_bodies_have_the_papers_feature_sizes(name, obs_shape, features):
    body = make_body(name)
    obs = jnp.zeros((3, *obs_shape), jnp.uint8)
    params = body.init(jax.random.PRNGKey(0), obs)
    assert body.apply(params, obs).shape == (3, features)
