"""How the package's edge compiles its functions: ``edge_jit`` is ``jax.jit`` plus XLA options.

On CPU, XLA (jaxlib 0.10.2) hands single dots and convolutions to its experimental YNNPACK
library fusions. For our updates these run slower than XLA's own kernels: with them off, the
Nature update at batch 32 takes 17.9 ms instead of 20.9 ms, and the one-seed MinAtar update
0.44 instead of 0.51 ms (``python -m scripts.profile_update --xla package defaults``, which
times both in one process; results/benchmarks/profile-{nature,minatar-dqn}.md). The option goes to each compiled
function, not to ``XLA_FLAGS``, so JAX code of the user's in the same process keeps XLA's
defaults.

The option is experimental, so it is applied only where the backend is a CPU and accepts it
(probed once with a tiny compile); ``JAXATARI_XLA_DEFAULTS=0`` turns it off, and a user's own
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` is never overridden.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_CPU_OPTIONS = {YNN_OPTION: ""}      # the empty list: no YNNPACK library fusions
_xla_defaults_only = False


@functools.cache
def compiler_options() -> dict[str, str]:
    """The XLA options ``edge_jit`` compiles with on this backend ({} for XLA's defaults)."""
    if os.environ.get("JAXATARI_XLA_DEFAULTS", "1") == "0":
        return {}
    if YNN_OPTION in os.environ.get("XLA_FLAGS", "") or jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(jnp.zeros(())).compile()
    except Exception:   # a jaxlib without the option: XLA's defaults
        return {}
    return dict(_CPU_OPTIONS)


@contextlib.contextmanager
def xla_defaults():
    """Inside, ``edge_jit`` compiles with XLA's defaults (to time both side by side)."""
    global _xla_defaults_only
    kept, _xla_defaults_only = _xla_defaults_only, True
    try:
        yield
    finally:
        _xla_defaults_only = kept


def edge_jit(fn: Callable, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``compiler_options()``."""
    options = {} if _xla_defaults_only else compiler_options()
    return jax.jit(fn, compiler_options=options or None, **jit_kwargs)
