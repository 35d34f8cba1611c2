"""Saliency: each mode's ReLU backward rule against hand-computed values, and the maps."""
from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_compilation_cache_dir",
                  str(Path(tempfile.gettempdir()) / "jaxatari-test-xla-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)

from jaxatari.agents.dqn import QAgentSettings, make_q_agent  # noqa: E402
from jaxatari.saliency import (activation_for, deconvnet_relu, guided_relu,  # noqa: E402
                               make_saliency, overlay, resize_bilinear)

# A one-hidden-layer network f(x) = v . relu(W x) whose four hidden units cover every case
# of (forward activation, gradient arriving from above):
#   unit 0: h =  1 > 0, g = -1 < 0      unit 1: h = -3 < 0, g =  2 > 0
#   unit 2: h =  3 > 0, g =  1 > 0      unit 3: h = -3 < 0, g = -2 < 0
W = np.array([[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0], [-2.0, 1.0]], np.float32)
V = np.array([-1.0, 2.0, 1.0, -2.0], np.float32)
X = np.array([2.0, 1.0], np.float32)
# Gradient reaching h, by hand:
#   normal (Simonyan et al.):  g [h > 0]           = [-1, 0, 1, 0]
#   guided (Springenberg):     g [h > 0] [g > 0]   = [ 0, 0, 1, 0]
#   deconvnet (Zeiler-Fergus): max(g, 0)           = [ 0, 2, 1, 0]
# and dx = W^T dh:
EXPECTED = {"normal": [0.0, 2.0], "guided": [1.0, 1.0], "deconvnet": [-1.0, -1.0]}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_backward_rule_of_each_mode_by_hand(mode):
    relu = activation_for(mode)
    np.testing.assert_array_equal(W @ X, [1.0, -3.0, 3.0, -3.0])

    def f(x):
        return jnp.dot(V, relu(jnp.asarray(W) @ x))

    np.testing.assert_allclose(jax.grad(f)(jnp.asarray(X)), EXPECTED[mode])
    # The forward pass is ReLU's in every mode.
    np.testing.assert_allclose(f(jnp.asarray(X)), -1.0 * 1 + 1.0 * 3)


def test_rules_elementwise_and_under_jit():
    h = jnp.array([1.0, -1.0, 2.0, -2.0])
    g = jnp.array([3.0, 4.0, -5.0, -6.0])
    for relu, expected in ((jax.nn.relu, [3, 0, -5, 0]), (guided_relu, [3, 0, 0, 0]),
                           (deconvnet_relu, [3, 4, 0, 0])):
        _, vjp = jax.vjp(jax.jit(relu), h)
        np.testing.assert_array_equal(vjp(g)[0], expected)
    with pytest.raises(ValueError, match="unknown saliency mode"):
        activation_for("smooth")


def tiny_settings(**overrides) -> QAgentSettings:
    values = dict(num_actions=3, obs_shape=(12, 12, 1), obs_dtype="uint8", hist_len=2,
                  body="catch", hidden_size=8, dueling=False, num_heads=1)
    return QAgentSettings(**{**values, **overrides})


def test_maps_of_each_mode_on_a_small_conv_network():
    settings = tiny_settings()
    agent = make_q_agent(settings)
    params = jax.jit(agent.init)(jax.random.PRNGKey(0))[0].params
    stack = jax.random.randint(jax.random.PRNGKey(1), (2, 12, 12, 2), 0, 256).astype(jnp.uint8)
    heads = jnp.zeros(2, jnp.int32)
    modes = {mode: make_saliency(settings, mode) for mode in ("normal", "guided", "deconvnet")}

    @jax.jit
    def compute(params, stack):
        q = agent.q_values(params, stack)[:, 0]                            # [2, A]
        greedy = jnp.argmax(q, -1)

        def chosen(x):   # the plain network, on the [0, 1] scale it sees inside
            return (agent.network.apply(params, x)[:, 0] * jax.nn.one_hot(greedy, 3)).sum()

        grads = jax.grad(chosen)(stack.astype(jnp.float32) / 255.0)
        maps = {mode: fn(params, stack, greedy, heads) for mode, fn in modes.items()}
        other = modes["normal"](params, stack, (greedy + 1) % 3, heads)
        return grads, maps, other

    grads, maps, other = compute(params, stack)
    assert maps["normal"].shape == (2, 12, 12)
    # The vanilla map is |d Q(s, a_greedy) / d newest frame|.
    np.testing.assert_allclose(maps["normal"], jnp.abs(grads[..., -1]), rtol=1e-5, atol=1e-8)
    assert float(jnp.abs(grads[..., 0]).sum()) > 0   # the older frame has a gradient too
    # A non-greedy action gets no map, as the original zeroed it for random actions.
    assert float(jnp.abs(other).sum()) == 0.0
    for mode in ("guided", "deconvnet"):
        assert not np.allclose(maps[mode], maps["normal"]), mode
        assert (np.asarray(maps[mode]) >= 0).all() and float(maps[mode].sum()) > 0


def test_ensemble_map_targets_every_head():
    settings = tiny_settings(num_heads=3)
    agent = make_q_agent(settings)
    params = jax.jit(agent.init)(jax.random.PRNGKey(2))[0].params
    stack = jax.random.randint(jax.random.PRNGKey(3), (1, 12, 12, 2), 0, 256).astype(jnp.uint8)
    saliency = make_saliency(settings, "normal")

    @jax.jit
    def compute(params, stack):
        q = agent.q_values(params, stack)                                  # [1, K, A]
        action = jnp.argmax(jax.nn.one_hot(jnp.argmax(q, -1), 3).sum(1), -1)

        def all_heads(x):
            return (agent.network.apply(params, x) * jax.nn.one_hot(action, 3)[:, None]).sum()

        grads = jax.grad(all_heads)(stack.astype(jnp.float32) / 255.0)
        return saliency(params, stack, action, None), grads

    maps, grads = compute(params, stack)
    np.testing.assert_allclose(maps, jnp.abs(grads[..., -1]), rtol=1e-5, atol=1e-8)
    assert float(maps.sum()) > 0


def test_saliency_needs_image_observations():
    with pytest.raises(ValueError, match="image observations"):
        make_saliency(tiny_settings(obs_shape=(2,), obs_dtype="float32", body="mlp"), "guided")


def test_overlay_puts_the_rescaled_map_in_the_red_channel():
    screen = np.full((4, 6, 3), 100, np.uint8)
    saliency = np.array([[0.0, 1.0], [2.0, 4.0]])
    out = overlay(screen, saliency)
    np.testing.assert_array_equal(out[..., 1:], screen[..., 1:])
    assert out[..., 0].max() == 255 and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    np.testing.assert_allclose(resize_bilinear(np.full((3, 3), 7.0), 9, 5), 7.0)
    np.testing.assert_array_equal(overlay(screen, None), screen)
    np.testing.assert_array_equal(overlay(screen, np.zeros((2, 2)))[..., 0], 0)
