"""--devices with host envs (issue 26, 1a): the seed axis of a host run's learner, actors
and replay memory split over a device mesh, the pool's observations put onto it each step.

The reference is the one-device run with the same seeds, trained in the same child process
(four forced CPU devices, so JAX starts once; ``python -m tests.test_host_devices``): the Q
agent's host loop on 4 devices and the actor-learners' synchronous one on 2, both with 4
seeds on ``CountdownEnv`` (a fake gymnasium env, no Atari). Exact: every evaluation's and
every training chunk's scores and episode counts (CountdownEnv's episodes last 5 steps and
pay 1 a step whatever the actions) and what the envs wrote into the replay memory (frames,
rewards, terminals, resets). Close (rtol 1e-5): the learned parameters and optimiser
state, the losses and the held-out V and TD error, because XLA's SPMD-partitioned update
rounds some operations differently from the one-device program (docs/devices.md, Host
envs). The parameters the evaluations read must live on the mesh's devices. What stays
refused is one line each.
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.refusal import assert_refused_in_one_line
from tests.subprocess_env import repo_env
from tests.test_devices import FOUR_CPU_DEVICES, saved_items

COUNTDOWN = {"env": "tests.test_loop_host:CountdownEnv", "model_body": "mlp", "hist_len": 1}
# 4 seeds of 2 envs; learning from step 64, an update every 4 iterations; one evaluation,
# at 240; epsilon down to 0.05 by step 100, so the network chooses the actions
Q_RUN = {**COUNTDOWN, "steps": 240, "seeds": 4, "envs": 2, "learn_start": 64,
         "mem_size": 200, "batch_size": 16, "epsilon_steps": 100, "val_freq": 240,
         "val_steps": 40, "val_envs": 2, "chunk_steps": 120}
# rollouts of 5 steps of 2 actors per seed: 24 updates, one evaluation, at 240
ACTOR_RUN = {**COUNTDOWN, "steps": 240, "seeds": 4, "envs": 2, "batch_size": 5,
             "val_freq": 240, "val_steps": 40, "val_envs": 2, "chunk_steps": 120,
             "val_size": 20}
CASES = {"demo": (Q_RUN, "4"), "demo-async": (ACTOR_RUN, "2")}   # preset: run, devices


# about 15 s each (compilation, mostly); the actor-learners' is marked slow
@pytest.mark.parametrize("preset", [
    "demo", pytest.param("demo-async", marks=pytest.mark.slow)], ids=["q", "nstep"])
def test_host_envs_split_over_devices_train_as_one_device(preset):
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_host_devices", preset],
        # XLA's unoptimised CPU backend compiles faster (55 s -> 35 s for both); both runs alike
        env=repo_env(XLA_FLAGS=f"{FOUR_CPU_DEVICES} --xla_backend_optimization_level=0"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"matched: {preset} on {CASES[preset][1]} devices" in result.stdout, result.stdout


BAD_HOST_DEVICES = [
    (["demo", "--env", "CartPole-v1", "--seeds", "1", "--devices", "2"],
     "more devices than seeds (each seed data-parallel over several) is for JAX-native envs "
     "only"),
    (["demo-async", "--env", "atari", "--game", "Pong", "--envs", "4", "--async-mode", "async",
      "--seeds", "2", "--devices", "2"],
     "--devices 2 with --async-mode async: the asynchronous host loop runs on one device"),
]


@pytest.mark.parametrize("args, expected", BAD_HOST_DEVICES,
                         ids=["data-parallel", "async"])
def test_what_host_envs_cannot_split_is_one_line_exit_2_no_run_dir(tmp_path, capsys, args,
                                                                    expected):
    run_dir = tmp_path / "run"
    assert_refused_in_one_line(capsys, ["train", *args, "--run-dir", str(run_dir)], expected,
                               run_dir)


# ---------------------------------------------------------------------- the child

RTOL, ATOL = 1e-5, 1e-6
EXACT_COLUMNS = ("step", "seed", "score", "episodes", "epsilon")
CLOSE_COLUMNS = ("loss", "td_error", "q_mean", "v")
ENV_WRITTEN = ("frame", "reward", "terminal", "first", "valid")   # a replay row's env part


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _assert_tables(got: list[dict], want: list[dict], where: str) -> None:
    import numpy as np
    assert len(got) == len(want) > 0, where
    for row, expected in zip(got, want):
        for column in EXACT_COLUMNS:
            assert row.get(column) == expected.get(column), (where, column, row, expected)
        for column in CLOSE_COLUMNS:
            if expected.get(column, "") not in ("", "nan"):
                np.testing.assert_allclose(float(row[column]), float(expected[column]),
                                           rtol=RTOL, atol=ATOL, err_msg=f"{where} {column}")


def _train(preset: str, options: dict, devices: str, run_dir: Path) -> dict:
    from jaxatari.config import build_config
    from jaxatari.loop import train
    _, summary = train(build_config(preset, {**options, "devices": devices}), run_dir,
                       quiet=True, checkpoint_replay=preset == "demo")
    return summary


def _compare(preset: str, run_dir: Path, one_dir: Path, summary: dict, one: dict) -> None:
    import numpy as np

    from tests.test_data_parallel import saved_leaves
    for key in ("seeds", "final_scores", "best_scores", "final_episodes", "eval_steps",
                "eval_episodes"):
        assert summary[key] == one[key], (preset, key)
    assert all(score == 5.0 for score in summary["final_scores"]), summary["final_scores"]
    _assert_tables(_rows(run_dir / "eval.csv"), _rows(one_dir / "eval.csv"), "eval.csv")
    progress = _rows(one_dir / "progress.csv")
    assert any(row["loss"] not in ("", "nan") for row in progress), "the runs never learned"
    _assert_tables(_rows(run_dir / "progress.csv"), progress, "progress.csv")
    assert saved_items(run_dir).keys() == saved_items(one_dir).keys()
    for item in ("train", "replay" if preset == "demo" else "actors"):
        got, want = saved_leaves(run_dir, item), saved_leaves(one_dir, item)
        assert got.keys() == want.keys() and want, item
        for path, expected in want.items():
            if item == "replay" and path.split(".")[-1] in ENV_WRITTEN:
                np.testing.assert_array_equal(got[path], expected, err_msg=path)
            else:
                np.testing.assert_allclose(got[path], expected, rtol=RTOL, atol=ATOL,
                                           err_msg=f"{item} {path}")
    if preset == "demo":
        env_part = [path for path in want if path.split(".")[-1] in ENV_WRITTEN]
        assert len(env_part) == len(ENV_WRITTEN), env_part


def main() -> None:
    import tempfile

    import jax

    from jaxatari.loops.session import SessionBase

    assert len(jax.devices()) == 4, jax.devices()
    # how many devices hold the parameters each evaluation reads
    devices_seen: set[int] = set()
    record = SessionBase.record_evaluation

    def recording(self, step, scores, episodes, items, iteration, *args, **kwargs):
        for leaf in jax.tree.leaves(items().train.params):
            devices_seen.add(len(leaf.sharding.device_set))
        return record(self, step, scores, episodes, items, iteration, *args, **kwargs)
    SessionBase.record_evaluation = recording

    with tempfile.TemporaryDirectory() as tmp:
        for preset in sys.argv[1:]:
            options, devices = CASES[preset]
            runs = {}
            for count in ("1", devices):
                devices_seen.clear()
                run_dir = Path(tmp) / f"{preset}-{count}"
                runs[count] = (run_dir, _train(preset, options, count, run_dir))
                assert devices_seen == {int(count)}, (count, devices_seen)
            (one_dir, one), (run_dir, summary) = runs["1"], runs[devices]
            _compare(preset, run_dir, one_dir, summary, one)
            print(f"matched: {preset} on {devices} devices", flush=True)


if __name__ == "__main__":
    main()
