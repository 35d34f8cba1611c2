"""The environment for a test's child Python: the repository first on PYTHONPATH, whatever
the parent had after it (the GPU session installs its wheels under a PYTHONPATH entry)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def repo_env(**extra: str) -> dict[str, str]:
    inherited = os.environ.get("PYTHONPATH")
    path = os.pathsep.join([str(ROOT), *([inherited] if inherited else [])])
    return {**os.environ, "PYTHONPATH": path, **extra}
