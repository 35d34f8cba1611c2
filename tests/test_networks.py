"""Network bodies: PatchConv is a real convolution, every named body has the paper's shape, and
our Dense is nn.Dense with a faster weight gradient."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import linen as nn

from jaxatari.networks import CONV_BODIES, Dense, PatchConv, dense_matmul, make_body


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


@pytest.mark.parametrize("x_shape", [(5, 7), (2, 3, 4, 7)])
def test_dense_matmul_gradients_equal_numpy_matmul_gradients(x_shape):
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), x_shape), np.float64)
    kernel = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (7, 3)), np.float64)
    dy = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (*x_shape[:-1], 3)), np.float64)
    _, vjp = jax.vjp(dense_matmul, jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
    dx, dkernel = vjp(jnp.asarray(dy, jnp.float32))
    np.testing.assert_allclose(dx, dy @ kernel.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dkernel, x.reshape(-1, 7).T @ dy.reshape(-1, 3),
                               rtol=1e-5, atol=1e-5)


def test_dense_matmul_vmapped_over_seeds_equals_a_loop():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 6))          # [S, B, I]
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 2))     # [S, I, O]

    def grads(x, kernel):
        return jax.grad(lambda x, k: jnp.sum(jnp.sin(dense_matmul(x, k))), (0, 1))(x, kernel)
    batched = jax.jit(jax.vmap(grads))(x, kernel)
    for seed in range(3):
        one = grads(x[seed], kernel[seed])
        for got, want in zip(batched, one):
            np.testing.assert_allclose(got[seed], want, rtol=1e-5, atol=1e-5)


def test_dense_is_nn_dense_parameters_and_outputs():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 9))
    ours, flax_dense = Dense(5), nn.Dense(5)
    params = ours.init(jax.random.PRNGKey(3), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, flax_dense.init(jax.random.PRNGKey(3), x))
    np.testing.assert_array_equal(params["params"]["kernel"],
                                  flax_dense.init(jax.random.PRNGKey(3), x)["params"]["kernel"])
    np.testing.assert_allclose(ours.apply(params, x), flax_dense.apply(params, x), rtol=1e-6)


def test_the_model_body_help_names_every_built_in_body():
    from jaxatari.config import FIELDS
    from jaxatari.networks import BODY_NAMES
    help_text = FIELDS["model_body"].metadata["help"]
    for name in BODY_NAMES:
        assert f" {name} " in help_text.replace("|", " ") + " ", name
