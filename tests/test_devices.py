"""--devices (issue 26, 1a): seeds split over a device mesh; CPU devices made on request; bad
counts stop with one line before anything is written.

The runs are subprocesses: a process's CPU device count is fixed when JAX's backend starts.
What is compared bit for bit with the one-device run is everything but learning (acting,
envs, replay, keys, evaluation): XLA's CPU code for an update rounds a seed's numbers
differently depending on how many seeds share a device, on one device as on several
(docs/devices.md), so runs that learn are compared by what must not depend on rounding.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxatari import checkpoint as ckpt
from tests.refusal import assert_refused_in_one_line
from tests.subprocess_env import repo_env

FOUR_CPU_DEVICES = "--xla_force_host_platform_device_count=4"

# --learn-start beyond --steps: the Q agent acts, fills its memory and evaluates, never learns
Q_ACTING = ["demo", "--seeds", "4", "--steps", "3200", "--chunk-steps", "1600", "--val-freq",
            "1600", "--val-steps", "1600", "--val-envs", "32", "--learn-start", "4000",
            "--mem-size", "4000", "--checkpoint-replay", "true"]
ACTOR_RUN = ["demo-async", "--seeds", "4", "--steps", "8000", "--chunk-steps", "4000",
             "--val-freq", "4000", "--val-steps", "1600", "--val-envs", "32"]


def train(run_dir: Path, args: list[str], devices: str, xla_flags: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "jaxatari", "train", *args, "--devices", devices, "--quiet",
         "--run-dir", str(run_dir)],
        env=repo_env(XLA_FLAGS=xla_flags), capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def saved_items(run_dir: Path) -> dict:
    """Every item of checkpoints/last (learner, actors, envs, replay) as its record: each
    leaf's shape and dtype and the sha256 of all their bytes."""
    items = ckpt.read_metadata(ckpt.find(run_dir, "last"))["items"]
    return {name: (record["signature"], record["sha256"]) for name, record in items.items()}


def assert_on_four_devices(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    assert config["devices"] == "4" and len(config["environment"]["devices"]) == 4


@pytest.mark.slow
def test_four_devices_act_and_evaluate_as_one_bit_for_bit(tmp_path):
    one = train(tmp_path / "one", Q_ACTING, "1", FOUR_CPU_DEVICES)
    four = train(tmp_path / "four", Q_ACTING, "4", FOUR_CPU_DEVICES)
    for key in ("final_scores", "best_scores", "final_episodes", "eval_steps",
                "eval_episodes"):
        assert four[key] == one[key], key
    assert all(score is not None for score in one["final_scores"])
    expected = saved_items(tmp_path / "one")
    assert {"train", "actor", "env", "replay"} <= set(expected)
    assert saved_items(tmp_path / "four") == expected
    assert_on_four_devices(tmp_path / "four")


@pytest.mark.slow
def test_an_actor_learner_trains_on_four_devices(tmp_path):
    one = train(tmp_path / "one", ACTOR_RUN, "1", FOUR_CPU_DEVICES)
    four = train(tmp_path / "four", ACTOR_RUN, "4", FOUR_CPU_DEVICES)
    for key in ("seeds", "eval_steps", "eval_episodes"):
        assert four[key] == one[key], key
    assert all(score is not None for score in four["final_scores"])
    signatures = {name: signature for name, (signature, _) in saved_items(tmp_path / "one").items()}
    assert {name: signature for name, (signature, _) in
            saved_items(tmp_path / "four").items()} == signatures
    assert_on_four_devices(tmp_path / "four")


def cpu_devices_made(devices: str, xla_flags: str = "") -> int:
    """How many CPU devices a fresh process has after ``request_cpu_devices``."""
    code = ("import jax; from jaxatari.config import Config; "
            "from jaxatari.devices import request_cpu_devices; "
            f"request_cpu_devices(Config(seeds=64, devices={devices!r})); "
            "print(len(jax.devices('cpu')))")
    result = subprocess.run([sys.executable, "-c", code], env=repo_env(XLA_FLAGS=xla_flags),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


def test_cpu_devices_are_made_on_request_one_per_core_at_most():
    from jaxatari.devices import cpu_cores
    cores = cpu_cores()
    assert cpu_devices_made("1") == 1
    assert cpu_devices_made("2") == min(2, cores)
    assert cpu_devices_made("all") == cores
    assert cpu_devices_made("all", FOUR_CPU_DEVICES) == 4   # the user's count wins


RUN = "<run>"
BAD_DEVICES = [
    (["--devices", "0"], "--devices must be a positive number of devices or all, got '0'"),
    (["--devices", "many"], "--devices must be a positive number of devices or all"),
    (["--devices", "-2"], "--devices must be a positive number of devices or all"),
    (["--devices", "2.5"], "--devices must be a positive number of devices or all"),
    (["--seeds", "4", "--devices", "3"], "--seeds 4 does not divide over --devices 3"),
    (["--seeds", "64", "--devices", "64"], "--devices 64: only "),
]   # what host envs cannot split: tests/test_host_devices.py


@pytest.mark.parametrize("extra, expected", BAD_DEVICES,
                         ids=[" ".join(extra) for extra, _ in BAD_DEVICES])
def test_bad_devices_are_one_line_exit_2_no_run_dir(tmp_path, capsys, extra, expected):
    run_dir = tmp_path / "run"
    assert_refused_in_one_line(capsys, ["train", "demo", *extra, "--run-dir", str(run_dir)],
                               expected, run_dir)


def test_more_devices_than_exist_says_how_many_and_how_to_get_more(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "jaxatari", "train", "demo", "--seeds", "8", "--devices", "8",
         "--run-dir", str(run_dir)], env=repo_env(XLA_FLAGS=FOUR_CPU_DEVICES),
        capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "--devices 8: only 4 cpu devices exist here" in lines[0]
    assert "xla_force_host_platform_device_count" in lines[0]
    assert not run_dir.exists()
