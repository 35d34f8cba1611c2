"""Session-wide test setup.

Identical tiny programs recur across the tests (and the CLI subprocesses compile their own):
a persistent XLA cache makes every compilation after the first a file read. It only speeds
things up; results are the same.
"""
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_compilation_cache_dir",
                  str(Path(tempfile.gettempdir()) / "jaxatari-test-xla-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
