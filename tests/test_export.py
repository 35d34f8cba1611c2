"""Export: a folder whose policy runs with jax and numpy alone, and matches the agent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from jaxatari import checkpoint as ckpt
from jaxatari.cli import main
from jaxatari.config import ConfigError
from jaxatari.export import export_policy, load_agent
from jaxatari.loop import train
from tests.tiny import tiny


CLEAN_RUN = """
import runpy, sys
sys.argv = ["run_policy.py", sys.argv[1]]
runpy.run_path("run_policy.py", run_name="__main__")
leaked = [name for name in ("jaxatari", "flax", "optax", "orbax") if name in sys.modules]
assert not leaked, leaked
print("clean")
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir, _ = train(tiny(steps=128),
                       tmp_path_factory.mktemp("export") / "run", quiet=True)
    return run_dir


def test_exported_policy_runs_without_jaxatari_or_flax(run_dir, tmp_path, capsys):
    out = tmp_path / "policy"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "metadata.json", "observation.npy", "params.msgpack",
                     "policy.jax_export", "run_policy.py"]
    code = [line for line in (out / "run_policy.py").read_text().split('"""')[2].splitlines()
            if line.strip()]
    assert len(code) <= 16   # the import guard, then about ten lines
    # Only jax and numpy: no PYTHONPATH to the repository, run from the export folder.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", CLEAN_RUN, str(out)], cwd=out, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "clean"
    actions = np.array(lines[-2].strip("[]").split(), int)
    # the sample saved beside the export, and its greedy actions as the export recorded them
    meta = json.loads((out / "metadata.json").read_text())
    assert actions.tolist() == meta["sample"]["actions"] and len(actions) == 2
    assert ((0 <= actions) & (actions < 3)).all()


def test_export_matches_the_agent_and_records_its_metadata(run_dir, tmp_path):
    from flax import serialization
    out = export_policy(run_dir / "checkpoints" / "last", tmp_path / "e", seed_index=1)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["env_id"] == "catch" and meta["hist_len"] == 2 and meta["num_actions"] == 3
    assert meta["action_meanings"] == ["NOOP", "LEFT", "RIGHT"]
    assert meta["observation"]["frame_shape"] == [24, 24, 1]
    assert meta["policy"]["input_shape"] == [24, 24, 2] and meta["policy"]["input_dtype"] == "uint8"
    assert meta["step"] == 128 and meta["seed_index"] == 1 and len(meta["validation_scores"]) == 2
    assert meta["versions"]["jax"] == jax.__version__ and meta["protocol"]["env"] == "catch"
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 16 and config["env_spec"]["name"] == "catch"

    agent, train_state, _ = load_agent(run_dir / "checkpoints" / "last")
    params = jax.tree.map(lambda x: x[1], train_state.params)
    restored = serialization.from_bytes(params, (out / "params.msgpack").read_bytes())
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(restored)))
    policy = jax.export.deserialize((out / "policy.jax_export").read_bytes())
    obs = jax.random.randint(jax.random.PRNGKey(0), (5, 24, 24, 2), 0, 256).astype(jnp.uint8)
    expected = jnp.argmax(jax.jit(agent.scores)(params, obs)[:, 0], -1)
    np.testing.assert_array_equal(policy.call(obs), expected)   # any batch size: 5 here


def test_export_refuses_to_overwrite_and_bad_checkpoints(run_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match="--seed-index must be in"):
        export_policy(run_dir / "checkpoints" / "last", tmp_path / "x", seed_index=5)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at"):
        export_policy(tmp_path / "nowhere", tmp_path / "y")
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "no run directory or checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
