"""The exported policy runs where the README says it does (issue #28): in a fresh venv holding
only the packages of the README's install line, from a folder outside the repository, on the
real observations saved beside the export, giving the project's own greedy actions.

Two exports (a short Catch run and a short host-env run: Atari Space Invaders through
envpool, the 2013 convolutional body), built once for the module; two clean venvs, each
built once: the pinned JAX (constraints.txt) and the newest JAX on the package index, which
needs Python >= 3.12 and is skipped, saying so, where no such interpreter runs. The newest
one is the forward-compatibility check: an export written with the pinned JAX, loaded by a
newer one (docs/export.md says which versions jax.export promises).

Cost: two pip installs (the pip cache makes later ones fast) and two tiny training runs.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from packaging.version import Version

from jaxatari.export import INSTALL, SAMPLE_FILE, export_policy, load_agent

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "constraints.txt"
PINNED_JAX = next(line.split("==")[1].strip() for line in CONSTRAINTS.read_text().splitlines()
                  if line.startswith("jax=="))
PROJECT_MODULES = ("jaxatari", "flax", "optax", "orbax", "gymnax", "envpool", "ale_py",
                   "gymnasium", "tests")
CHECK_CLEAN = f"""
import importlib.util, sys
leaked = [m for m in {PROJECT_MODULES!r} if importlib.util.find_spec(m) is not None]
assert not leaked, f"the clean venv can import {{leaked}}"
import jax
print(jax.__version__)
"""
# run_policy.py as a user without flatbuffers (the report) would run it
WITHOUT_FLATBUFFERS = """
import runpy, sys
sys.modules["flatbuffers"] = None
sys.argv = ["run_policy.py"]
runpy.run_path("run_policy.py", run_name="__main__")
"""


def clean_environ() -> dict[str, str]:
    """The caller's environment without anything that points Python at the project."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_CONSTRAINT",
            "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def runs(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import sys, venv, ensurepip"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def newest_python() -> str | None:
    """A Python >= 3.12 that actually runs: on PATH (a pyenv shim for a version that is not
    selected is on PATH but does not run), else one of pyenv's installed versions."""
    names = [f"python3.{minor}" for minor in range(20, 11, -1)]
    candidates = [shutil.which(name) for name in names]
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    for name in names:
        candidates += sorted(glob.glob(f"{root}/versions/{name[6:]}*/bin/{name}"), reverse=True)
    return next((c for c in candidates if c and runs(c)), None)


def index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def build_venv(where: Path, python: str, pinned: bool) -> Path:
    """A venv with only INSTALL's packages: the pinned versions of constraints.txt, or the
    newest on the package index."""
    subprocess.run([python, "-m", "venv", str(where)], check=True, capture_output=True,
                   timeout=300)
    venv_python = where / "bin" / "python"
    pip = [str(venv_python), "-m", "pip", "install", "-q", *INSTALL.split()[2:]]
    pip += ["-c", str(CONSTRAINTS)] if pinned else ["--upgrade"]
    result = subprocess.run(pip, capture_output=True, text=True, env=clean_environ(),
                            cwd=where, timeout=900)
    if result.returncode != 0:
        if not index_reachable():
            pytest.skip(f"the package index is unreachable, so no clean venv: {INSTALL}")
        pytest.fail(f"{' '.join(pip)} failed:\n{result.stderr[-3000:]}")
    return venv_python


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    """name -> (python of a clean venv, its jax version), each venv built on first use."""
    built: dict[str, tuple[Path, str]] = {}
    skipped: dict[str, str] = {}

    def get(name: str) -> tuple[Path, str]:
        if name in skipped:
            pytest.skip(skipped[name])
        if name not in built:
            try:
                built[name] = make(name)
            except pytest.skip.Exception as skip:
                skipped[name] = str(skip.msg)
                raise
        return built[name]

    def make(name: str) -> tuple[Path, str]:
        if name == "pinned":
            python = sys.executable
        else:
            python = newest_python()
            if python is None:
                pytest.skip("the newest JAX needs Python >= 3.12, and no python3.12 or "
                            "newer that runs is on PATH or under pyenv: forward "
                            "compatibility not checked here")
        venv_python = build_venv(tmp_path_factory.mktemp(f"venv-{name}"), python,
                                 pinned=name == "pinned")
        check = subprocess.run([str(venv_python), "-c", CHECK_CLEAN], capture_output=True,
                               text=True, env=clean_environ(),
                               cwd=tmp_path_factory.getbasetemp(), timeout=300)
        assert check.returncode == 0, check.stderr
        return venv_python, check.stdout.strip().splitlines()[-1]

    return get


def train_catch(run_dir: Path) -> Path:
    from jaxatari.loop import train
    from tests.tiny import tiny
    return train(tiny(steps=128, seeds=1), run_dir, quiet=True)[0]


def train_atari(run_dir: Path) -> Path:
    pytest.importorskip("envpool")
    from jaxatari.config import build_config
    from jaxatari.loop import train
    config = build_config("doubleq", {
        "game": "SpaceInvaders", "steps": 128, "seeds": 1, "envs": 4, "mem_size": 1000,
        "learn_start": 64, "model_body": "atari2013", "hidden_size": 32, "val_freq": 128,
        "val_steps": 32, "val_envs": 1, "chunk_steps": 64, "epsilon_steps": 128})
    return train(config, run_dir, quiet=True)[0]


RUNS = {"catch": train_catch, "atari": train_atari}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (export folder copied outside the repository, the project's own greedy
    actions on its saved observations), each built on first use."""
    built: dict[str, tuple[Path, np.ndarray]] = {}

    def get(name: str) -> tuple[Path, np.ndarray]:
        if name not in built:
            base = tmp_path_factory.mktemp(f"export-{name}")
            run_dir = RUNS[name](base / "run")
            checkpoint = run_dir / "checkpoints" / "last"
            written = export_policy(checkpoint, base / "export")
            folder = shutil.copytree(written, tmp_path_factory.mktemp("downstream") / name)
            assert REPO not in folder.resolve().parents
            # the project's own greedy actions: argmax of the agent's Q values (one head)
            agent, train_state, _ = load_agent(checkpoint)
            meta = json.loads((folder / "metadata.json").read_text())
            params = jax.tree.map(lambda x: x[meta["seed_index"]], train_state.params)
            obs = np.load(folder / SAMPLE_FILE)
            q = jax.jit(agent.scores)(params, jnp.asarray(obs))
            assert q.shape[1] == 1
            built[name] = (folder, np.asarray(jnp.argmax(q[:, 0], -1)))
        return built[name]

    return get


@pytest.mark.parametrize("jax_version", ["pinned", "newest"])
@pytest.mark.parametrize("run", ["catch", "atari"])
def test_run_policy_in_a_clean_venv_gives_the_agents_actions(run, jax_version, exports,
                                                              venvs):
    folder, expected = exports(run)
    venv_python, version = venvs(jax_version)
    if jax_version == "pinned":
        assert version == PINNED_JAX
    else:   # forward compatibility: written with the pinned JAX, loaded by a newer one
        assert Version(version) >= Version(PINNED_JAX), version
    meta = json.loads((folder / "metadata.json").read_text())
    obs = np.load(folder / SAMPLE_FILE)
    # a real observation: every frame of every stack is one the env gave, none blank
    frames = np.split(obs, meta["hist_len"], axis=-1)
    assert obs.shape == (2, *meta["policy"]["input_shape"])
    assert obs.dtype == meta["policy"]["input_dtype"]
    assert all(frame[i].any() for frame in frames for i in range(len(obs)))
    assert meta["sample"]["actions"] == expected.tolist()
    assert meta["jax_export"]["jax"] == jax.__version__
    assert meta["jax_export"]["calling_convention_version"] >= 9

    result = subprocess.run([str(venv_python), "run_policy.py"], cwd=folder,
                            env=clean_environ(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    actions = np.array(result.stdout.strip().splitlines()[-1].strip("[]").split(), int)
    np.testing.assert_array_equal(actions, expected,
                                  err_msg=f"jax {version} in a clean venv, {run} export "
                                          f"written with jax {jax.__version__}")


def test_run_policy_stops_with_one_line_naming_what_is_missing_or_wrong(exports, venvs,
                                                                        tmp_path):
    folder, _ = exports("catch")
    venv_python, _ = venvs("pinned")
    env = clean_environ()
    result = subprocess.run([str(venv_python), "-c", WITHOUT_FLATBUFFERS], cwd=folder,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"run_policy.py needs flatbuffers: {INSTALL}"]
    # observations of the wrong shape: one line saying what it takes, from any folder
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 24, 24, 1), np.uint8))
    result = subprocess.run([str(venv_python), str(folder / "run_policy.py"), str(folder),
                             str(wrong)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "observations must be uint8 [B, 24, 24, 2], got uint8 [3, 24, 24, 1]"]


def test_readme_and_runner_name_the_install_line():
    readme = (REPO / "README.md").read_text()
    assert f"`{INSTALL}`" in readme
    from jaxatari.export import RUNNER
    assert INSTALL in RUNNER
