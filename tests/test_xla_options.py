"""jaxatari.xla_options: the edge compiles with the package's XLA options, only where they apply."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxatari import xla_options
from jaxatari.xla_options import YNN_OPTION, compiler_options, edge_jit, xla_defaults


@pytest.fixture
def fresh_options():
    """compiler_options() is cached per process; these tests change what it sees."""
    xla_options.compiler_options.cache_clear()
    yield
    xla_options.compiler_options.cache_clear()


def _dense_grad(x, w):
    return jax.grad(lambda w: jnp.tanh(x @ w).sum())(w)


def test_cpu_edge_compiles_without_library_fusions_and_computes_the_same(fresh_options):
    if jax.default_backend() != "cpu":
        pytest.skip("the YNN library-fusion option is XLA-CPU's")
    try:     # jaxlib 0.10.0 has no such option, and the package then keeps XLA's defaults
        jax.jit(lambda v: v + 1, compiler_options={YNN_OPTION: ""}).lower(jnp.zeros(())).compile()
    except Exception:
        assert compiler_options() == {}
        pytest.skip(f"this jaxlib ({jax.__version__}) has no {YNN_OPTION}")
    assert compiler_options() == {YNN_OPTION: ""}
    x = jax.random.normal(jax.random.key(0), (32, 256))
    w = jax.random.normal(jax.random.key(1), (256, 64)) / 16
    edge = edge_jit(_dense_grad).lower(x, w).compile()
    with xla_defaults():
        default = edge_jit(_dense_grad).lower(x, w).compile()
    assert "%ynn_fusion" not in edge.as_text()   # op names, not the stack frames
    assert "%ynn_fusion" in default.as_text()   # if XLA drops YNN by default, this says so
    np.testing.assert_allclose(edge(x, w), default(x, w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("environ", [{"JAXATARI_XLA_DEFAULTS": "0"},
                                     {"XLA_FLAGS": f"--{YNN_OPTION}=+individual_dot"}])
def test_a_users_setting_leaves_xla_alone(environ, fresh_options, monkeypatch):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert compiler_options() == {}
    x = jnp.ones((4, 8))
    assert edge_jit(_dense_grad)(x, jnp.ones((8, 2))).shape == (8, 2)
