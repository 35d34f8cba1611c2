"""--sweep (issue 27, items 1-2): a sweep of C configurations x S seeds in one program gives
each configuration what a run of its own gives with the same seeds.

The expected values are the separate runs' (``loop.train``, one per learning rate, the same
--seed and --seeds), never the sweep's own code. ``--sweep-mode map`` must equal them bit for
bit, learning included; ``vmap`` batches the configurations' kernels, which XLA's CPU code
rounds differently, so its learning is compared loosely and its acting, envs and evaluation
(no learning) exactly.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from jaxatari import cli
from jaxatari.config import parse_sweep
from jaxatari.loop import train, train_sweep
from tests.refusal import assert_refused_in_one_line
from tests.tiny import tiny

RATES = (1e-3, 3e-3, 1e-2)
# 2 seeds x 4 envs, 256 steps: learning from step 64, evaluations at 128 and 256 steps
BASE = tiny(steps=256, chunk_steps=128)


def rows(path: Path, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    with path.open() as f:
        return [tuple(row[c] for c in columns) for row in csv.DictReader(f)]


EVAL = ("step", "seed", "score", "episodes")
PROGRESS = ("step", "seed", "episodes", "score", "loss", "td_error", "q_mean", "epsilon")


@pytest.fixture(scope="module")
def separate_runs(tmp_path_factory) -> dict[float, Path]:
    """One ordinary run per learning rate: the expected values."""
    runs = {}
    for eta in RATES:
        run_dir = tmp_path_factory.mktemp(f"single-{eta}")
        train(dataclasses.replace(BASE, eta=eta), run_dir, quiet=True)
        runs[eta] = run_dir
    return runs


def sweep_dirs(run_dir: Path) -> dict[float, Path]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {row["values"]["eta"]: run_dir / row["run_dir"] for row in summary["ranking"]}


def test_map_mode_equals_separate_runs_bit_for_bit(tmp_path, separate_runs):
    sweep = parse_sweep(["eta=" + ",".join(map(str, RATES))], BASE, mode="map")
    _, summary = train_sweep(BASE, sweep, tmp_path / "sweep", quiet=True)
    assert summary["configurations"] == 3 and summary["seeds"] == 2
    for eta, config_dir in sweep_dirs(tmp_path / "sweep").items():
        single = separate_runs[eta]
        assert rows(config_dir / "eval.csv", EVAL) == rows(single / "eval.csv", EVAL)
        assert rows(config_dir / "progress.csv", PROGRESS) == rows(single / "progress.csv",
                                                                    PROGRESS)
        ours = json.loads((config_dir / "summary.json").read_text())
        theirs = json.loads((single / "summary.json").read_text())
        assert ours["final_scores"] == theirs["final_scores"]
        assert ours["statistics"]["final"] == theirs["statistics"]["final"]
    # the configurations learned differently (the swept value reached the update)
    losses = {eta: rows(d / "progress.csv", ("loss",)) for eta, d in sweep_dirs(
        tmp_path / "sweep").items()}
    assert len({tuple(v) for v in losses.values()}) == 3


def test_vmap_mode_is_close_to_separate_runs(tmp_path, separate_runs):
    sweep = parse_sweep(["eta=" + ",".join(map(str, RATES))], BASE, mode="vmap")
    train_sweep(BASE, sweep, tmp_path / "sweep", quiet=True)
    for eta, config_dir in sweep_dirs(tmp_path / "sweep").items():
        ours = rows(config_dir / "progress.csv", ("loss", "q_mean"))[:2]   # the first chunk
        theirs = rows(separate_runs[eta] / "progress.csv", ("loss", "q_mean"))[:2]
        np.testing.assert_allclose(np.asarray(ours, float), np.asarray(theirs, float),
                                   rtol=2e-2)


def test_vmap_mode_without_learning_is_exact(tmp_path):
    """--learn-start beyond --steps: acting, envs, replay and evaluation only, which no
    configuration's learning rate touches: every configuration equals the one separate run."""
    acting = dataclasses.replace(BASE, learn_start=300, mem_size=512)
    single = tmp_path / "single"
    train(acting, single, quiet=True)
    sweep = parse_sweep(["eta=1e-3,1e-2", "gamma=0.9,0.99"], acting, mode="vmap")
    _, summary = train_sweep(acting, sweep, tmp_path / "sweep", quiet=True)
    assert [row["values"] for row in sorted(summary["ranking"], key=lambda r: r["index"])] == [
        {"eta": 1e-3, "gamma": 0.9}, {"eta": 1e-3, "gamma": 0.99},
        {"eta": 1e-2, "gamma": 0.9}, {"eta": 1e-2, "gamma": 0.99}]
    for row in summary["ranking"]:
        config_dir = tmp_path / "sweep" / row["run_dir"]
        assert rows(config_dir / "eval.csv", EVAL) == rows(single / "eval.csv", EVAL)
        assert (rows(config_dir / "progress.csv", ("step", "seed", "episodes", "score"))
                == rows(single / "progress.csv", ("step", "seed", "episodes", "score")))


def test_ranking_by_iqm_and_readable_by_compare(tmp_path):
    sweep = parse_sweep(["tau=8,16"], BASE)
    run_dir, summary = train_sweep(BASE, sweep, tmp_path / "sweep", quiet=True)
    iqms = [row["final_iqm"] for row in summary["ranking"]]
    assert [row["rank"] for row in summary["ranking"]] == [1, 2]
    assert None not in iqms and iqms == sorted(iqms, reverse=True)
    for row in summary["ranking"]:   # the interval of each configuration's own summary
        own = json.loads((run_dir / row["run_dir"] / "summary.json").read_text())
        assert row["final_iqm_ci95"] == own["statistics"]["final"]["iqm"]["ci95"]
    dirs = [str(run_dir / row["run_dir"]) for row in summary["ranking"]]
    assert cli.main(["compare", *dirs, "--out", str(tmp_path / "compare.png")]) == 0
    assert (tmp_path / "compare.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--sweep", "hidden-size=16,32"], "not sweepable for the replay agent"),
    (["--sweep", "etaa=1,2"], "unknown option --etaa (did you mean --eta?)"),
    (["--sweep", "eta=1e-3,abc"], "--eta expects float, got 'abc'"),
    (["--sweep", "eta="], "empty value"),
    (["--sweep", "eta"], "expects NAME=V1,V2"),
    (["--sweep", "td-clip=0,1"], "0 turns it off"),
    (["--sweep", "eta=1e-3", "--sweep", "eta=1e-2"], "given twice"),
    (["--sweep", "epsilon-end=0.1,2"], "--epsilon-end must be in [0, 1]"),
    (["--sweep", "alpha=0.5,0.6"], "needs --mem-priority proportional"),
    (["--sweep", "tau=4,8", "--async", "a3c", "--duel", "false", "--double-q", "false",
      "--loss-reduction", "sum", "--batch-size", "8"], "not sweepable for --async a3c"),
    (["--sweep-mode", "map"], "--sweep-mode needs --sweep"),
    (["--sweep", "eta=1e-3,1e-2", "--distributed", "auto"], "--sweep runs in one process"),
    (["--sweep", "eta=1e-3,1e-2", "--env", "CartPole-v1", "--model-body", "mlp"],
     "needs a JAX-native env"),
])
def test_bad_sweeps_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    assert_refused_in_one_line(
        capsys, ["train", "demo", "--steps", "256", "--run-dir", str(run_dir), *args], message,
        run_dir)


def test_actor_learner_sweep_equals_separate_runs(tmp_path):
    """n-step Q actor-learners, 2 learning rates x 2 seeds, --sweep-mode map: each
    configuration's logs are its separate run's."""
    base = tiny(async_method="nstep", envs=4, batch_size=5, duel=False, double_q=False,
                loss_reduction="sum", steps=400, chunk_steps=200, val_freq=200, val_steps=64,
                tau=4)
    singles = {}
    for eta in (1e-3, 3e-3):
        singles[eta] = tmp_path / f"single-{eta}"
        train(dataclasses.replace(base, eta=eta), singles[eta], quiet=True)
    sweep = parse_sweep(["eta=1e-3,3e-3"], base, mode="map")
    train_sweep(base, sweep, tmp_path / "sweep", quiet=True)
    for eta, config_dir in sweep_dirs(tmp_path / "sweep").items():
        assert rows(config_dir / "eval.csv", EVAL) == rows(singles[eta] / "eval.csv", EVAL)
        assert (rows(config_dir / "progress.csv", PROGRESS)
                == rows(singles[eta] / "progress.csv", PROGRESS))


@pytest.mark.slow
def test_sweep_on_two_devices_acts_and_evaluates_as_on_one(tmp_path):
    """--devices 2 splits the seed axis (every configuration on each device): acting, envs,
    replay and evaluation (--learn-start beyond --steps) equal the one-device sweep's."""
    import subprocess
    import sys
    from tests.subprocess_env import repo_env

    args = ["train", "demo", "--seeds", "2", "--steps", "1600", "--chunk-steps", "800",
            "--val-freq", "800", "--val-steps", "800", "--val-envs", "16", "--learn-start",
            "2048", "--mem-size", "2048", "--quiet", "--sweep", "eta=1e-3,1e-2"]
    summaries = {}
    for devices in ("1", "2"):
        run_dir = tmp_path / devices
        result = subprocess.run(
            [sys.executable, "-m", "jaxatari", *args, "--devices", devices, "--run-dir",
             str(run_dir)], env=repo_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
            capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        summaries[devices] = json.loads((run_dir / "summary.json").read_text())
    assert summaries["2"]["devices"] == 2 and summaries["1"]["devices"] == 1
    for row in summaries["1"]["ranking"]:
        one, two = tmp_path / "1" / row["run_dir"], tmp_path / "2" / row["run_dir"]
        assert rows(two / "eval.csv", EVAL) == rows(one / "eval.csv", EVAL)
        assert rows(two / "progress.csv", PROGRESS) == rows(one / "progress.csv", PROGRESS)


@pytest.mark.parametrize("overrides, sweeps", [
    (dict(), ["eta=1e-3,3e-3", "gamma=0.9,0.99", "epsilon-end=0.05,0.1",
              "epsilon-steps=128,256", "tau=8,16", "td-clip=0.5,1", "reward-clip=0.5,1",
              "grad-clip=1,10"]),
    (dict(pal_alpha=0.9), ["pal-alpha=0.5,0.9"]),
    (dict(mem_priority="proportional"), ["alpha=0.5,0.7", "beta-zero=0.4,0.5"]),
    (dict(mem_priority="rank"), ["beta-zero=0.4,0.5"]),
    (dict(async_method="a3c", duel=False, double_q=False, batch_size=5),
     ["eta=1e-3,3e-3", "gamma=0.9,0.99", "reward-clip=0.5,1", "grad-clip=1,10",
      "entropy-beta=0.01,0.02"]),
    (dict(async_method="onestep", duel=False, double_q=False, batch_size=5),
     ["epsilon-steps=128,256", "tau=8,16", "td-clip=0.5,1"]),
])
@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_every_sweepable_option_traces(overrides, sweeps, mode):
    """Each sweepable option of each agent kind enters the program as a traced value: the
    sweep's initial state, chunk and evaluation trace (no Python branch or shape on it)."""
    import jax
    import jax.numpy as jnp
    from jaxatari.loops.sweep import build_sweep

    base = tiny(**overrides)
    program = build_sweep(base, parse_sweep(sweeps, base, mode=mode))
    assert set(program.values) and all(v.shape == (program.size,)
                                       for v in program.values.values())
    keys = jax.random.split(jax.random.PRNGKey(0), base.seeds)
    carry = jax.eval_shape(program.init, program.values, keys)
    _, out = jax.eval_shape(program.chunk, carry, program.values, jnp.int32(0), jnp.int32(1))
    assert out["loss"].shape[1] == program.size   # [T, C, ...]
    jax.eval_shape(program.evaluate, carry.train.params, program.values, keys)
