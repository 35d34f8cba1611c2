"""Session-wide test setup.

Identical tiny programs recur across the tests (and the CLI subprocesses compile their own):
a persistent XLA cache makes every compilation after the first a file read. It only speeds
things up; results are the same.

On a GPU, float32 matmuls and convolutions default to TF32 (10-bit mantissas), so tests that
compare two ways of computing the same thing (patch convolution against lax's, our weight
gradient against numpy's) differ by about 1e-3. The tests check the maths, so they run at
full float32 precision everywhere; training keeps the backend's default.
"""
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_compilation_cache_dir",
                  str(Path(tempfile.gettempdir()) / "jaxatari-test-xla-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)

if jax.default_backend() == "gpu":
    jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    """Slow tests run first and, under pytest-xdist (scripts/test.sh), tests that share a
    module-scoped fixture run on one worker so it is built once; without gymnax
    (``jaxatari[minatar]``, which caps JAX below 0.12), MinAtar's tests skip."""
    import importlib.util
    import pytest
    # Stable: the slow learning runs start at once on every worker, the quick tests fill in.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    if importlib.util.find_spec("gymnax") is not None:
        return
    skip = pytest.mark.skip(reason="MinAtar needs gymnax: pip install 'jaxatari[minatar]'")
    for item in items:
        if "minatar" in item.nodeid.lower():
            item.add_marker(skip)


def _uses_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(definition.scope in ("module", "package", "session")
               for name in item.fixturenames
               for definition in info.name2fixturedefs.get(name, ()))
