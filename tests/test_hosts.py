"""Multi-process runs (issue 26, item 2): two processes on 127.0.0.1, two CPU devices each,
train one run; process 0 alone writes it; bad group options stop with one line.

Each process is a subprocess (a process's devices and its place in a group are fixed when
JAX starts); the collectives between them are gloo's, over loopback. The two-process run
is compared with one process over four devices, one seed per device in both, so the
seeds' updates are split alike (docs/devices.md: XLA's CPU code rounds an update
differently with the number of seeds that share a device).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.refusal import assert_refused_in_one_line
from tests.subprocess_env import repo_env

TWO_CPU_DEVICES = "--xla_force_host_platform_device_count=2"
FOUR_CPU_DEVICES = "--xla_force_host_platform_device_count=4"
CACHE = str(Path(__import__("tempfile").gettempdir()) / "jaxatari-test-xla-cache")

# The demo, shortened: 4 seeds, learning from step 256, chunks and evaluations every 1024
# steps; the replay memory is checkpointed and the learning rate not annealed over --steps,
# so a run resumed with a larger --steps continues as the longer run would have.
SHORT_DEMO = ["train", "demo", "--seeds", "4", "--chunk-steps", "1024", "--val-freq", "1024",
              "--val-steps", "512", "--val-envs", "16", "--mem-size", "2048",
              "--learn-start", "256", "--eta-anneal", "false", "--checkpoint-replay", "true",
              "--quiet"]
COMPARED = ("final_scores", "best_scores", "final_episodes", "eval_steps", "eval_episodes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(xla_flags: str) -> dict[str, str]:
    return repo_env(XLA_FLAGS=xla_flags, JAX_COMPILATION_CACHE_DIR=CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.3")


def start(args: list[str], cwd: Path, xla_flags: str, log: Path) -> subprocess.Popen:
    """``python -m jaxatari ARGS`` in ``cwd``, stdout and stderr to ``log``.{out,err}."""
    return subprocess.Popen([sys.executable, "-m", "jaxatari", *args], cwd=cwd,
                            env=env(xla_flags), stdout=log.with_suffix(".out").open("w"),
                            stderr=log.with_suffix(".err").open("w"), text=True)


def finish(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    """The processes' exit statuses; all killed if one is still running after ``timeout``
    (a group waits for a partner that failed for minutes)."""
    try:
        return [p.wait(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def group(args: list[str], cwds: list[Path], logs: Path, port: int) -> list[subprocess.Popen]:
    """The same command in two processes (``cwds[i]`` is process i's working directory)."""
    return [start([*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                   "--process-id", str(index)], cwd, TWO_CPU_DEVICES, logs / f"process{index}")
            for index, cwd in enumerate(cwds)]


def stderr_of(logs: Path, name: str) -> str:
    return (logs / f"{name}.err").read_text()


def eval_rows(run_dir: Path) -> np.ndarray:
    """eval.csv's step, seed, score, episodes, V and |TD error| columns."""
    lines = (run_dir / "eval.csv").read_text().splitlines()[1:]
    return np.asarray([[float(x or "nan") for i, x in enumerate(line.split(","))
                        if i != 4] for line in lines])


@pytest.mark.slow
def test_two_processes_write_one_run_that_equals_one_process_and_resume_as_a_group(tmp_path):
    logs = tmp_path / "logs"
    cwds = [tmp_path / "process0", tmp_path / "process1"]
    for folder in (logs, *cwds):
        folder.mkdir()
    # the one-process reference, 2048 steps at once, beside the group's first 1024 steps
    reference = start([*SHORT_DEMO, "--steps", "2048", "--devices", "4", "--run-dir",
                       str(tmp_path / "reference")], tmp_path, FOUR_CPU_DEVICES,
                      logs / "reference")
    first = group([*SHORT_DEMO, "--steps", "1024", "--devices", "2", "--run-dir", "run"],
                  cwds, logs, free_port())
    statuses = finish([*first, reference], timeout=420)
    assert statuses == [0, 0, 0], [stderr_of(logs, n)[-2000:] for n in
                                   ("process0", "process1", "reference")]
    run_dir = cwds[0] / "run"
    assert (run_dir / "summary.json").is_file()
    assert list(cwds[1].iterdir()) == []   # process 1 wrote nothing, not even a folder
    assert "greedy score" not in (logs / "process1.out").read_text()   # process 0 reports

    # the group resumes to 2048 steps: every process reads the checkpoint, process 0 writes
    resumed = group([*SHORT_DEMO, "--steps", "2048", "--devices", "2", "--resume",
                     str(run_dir.absolute())], cwds, logs, free_port())
    assert finish(resumed, timeout=300) == [0, 0], stderr_of(logs, "process1")[-2000:]
    assert list(cwds[1].iterdir()) == []
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((tmp_path / "reference" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 1024
    assert summary["eval_steps"] == [1024, 2048]
    for key in COMPARED:
        assert summary[key] == expected[key], key
    assert all(score is not None for score in summary["final_scores"])
    # V and |TD error| on the held-out set: the same up to float rounding
    ours, theirs = eval_rows(run_dir), eval_rows(tmp_path / "reference")
    assert ours.shape == theirs.shape == (8, 6)
    np.testing.assert_array_equal(ours[:, :4], theirs[:, :4])
    np.testing.assert_allclose(ours[:, 4:], theirs[:, 4:], rtol=1e-4)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["environment"]["processes"] == 2
    assert len(config["environment"]["devices"]) == 4


BAD_GROUPS = [
    (["--seeds", "2", "--devices", "2"], "--seeds 2 does not divide over 4 devices "
     "(--devices 2 in each of 2 processes)"),
    (["--env", "CartPole-v1", "--seeds", "2"], "JAX-native envs only"),
]


@pytest.mark.parametrize("extra, expected", BAD_GROUPS,
                         ids=[" ".join(extra) for extra, _ in BAD_GROUPS])
def test_a_group_that_cannot_run_stops_every_process_with_one_line(tmp_path, extra, expected):
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = group(["train", "demo", *extra, "--run-dir", str(tmp_path / "run")],
                      [tmp_path, tmp_path], logs, free_port())
    assert finish(processes, timeout=180) == [2, 2]
    for name in ("process0", "process1"):
        lines = [line for line in stderr_of(logs, name).splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_a_coordinator_that_does_not_answer_is_one_line_exit_2(tmp_path):
    port = free_port()   # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "jaxatari", "train", "demo", "--run-dir", str(tmp_path / "run"),
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1",
         "--coordinator-timeout", "2"], env=env(""), capture_output=True, text=True,
        timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert f"--coordinator 127.0.0.1:{port} did not answer within 2 s" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_start_that_fails_in_one_process_stops_the_others_with_one_line(tmp_path):
    """Process 0 finds a finished run in its directory, which process 1 does not see
    (relative --run-dir, other working directories): both stop, nothing is written."""
    logs, cwds = tmp_path / "logs", [tmp_path / "process0", tmp_path / "process1"]
    for folder in (logs, *cwds):
        folder.mkdir()
    (cwds[0] / "run").mkdir()
    (cwds[0] / "run" / "summary.json").write_text("{}")
    processes = group(["train", "demo", "--run-dir", "run"], cwds, logs, free_port())
    assert finish(processes, timeout=180) == [2, 2]
    lines = {name: [line for line in stderr_of(logs, name).splitlines() if line.strip()]
             for name in ("process0", "process1")}
    assert len(lines["process0"]) == 1 and "already holds a finished run" in lines["process0"][0]
    assert lines["process1"] == ["jaxatari: error: another process of this run stopped before "
                                 "training began (its error is on its own stderr)"]
    assert sorted(p.name for p in (cwds[0] / "run").iterdir()) == ["summary.json"]
    assert list(cwds[1].iterdir()) == []


def test_distributed_auto_without_a_cluster_is_one_line_exit_2(tmp_path):
    clean = {k: v for k, v in env("").items()
             if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "TPU_"))}
    result = subprocess.run(
        [sys.executable, "-m", "jaxatari", "train", "demo", "--run-dir", str(tmp_path / "run"),
         "--distributed", "auto", "--coordinator-timeout", "3"], env=clean,
        capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "--distributed auto found no cluster to join" in lines[0]
    assert not (tmp_path / "run").exists()


GROUP = ["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0"]
BAD_OPTIONS = [
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be in [0, 2) for --num-processes 2, got 2"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "-1"],
     "--process-id must be in [0, 2)"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "0", "--process-id", "0"],
     "--num-processes must be at least 1, got 0"),
    (["--coordinator", "127.0.0.1:1234"], "missing --num-processes, --process-id"),
    (["--num-processes", "2", "--process-id", "0"], "missing --coordinator"),
    (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"],
     "--coordinator must be HOST:PORT"),
    (["--coordinator", "host:99999", "--num-processes", "2", "--process-id", "0"],
     "--coordinator must be HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "two", "--process-id", "0"],
     "--num-processes must be a whole number"),
    (["--distributed", "auto", *GROUP], "--distributed auto detects the cluster itself"),
    (["--distributed", "slurm"], "--distributed takes only auto"),
    (["--coordinator-timeout", "5"], "--coordinator-timeout is for a multi-process run"),
    ([*GROUP, "--coordinator-timeout", "0"], "--coordinator-timeout must be at least 1"),
]


@pytest.mark.parametrize("extra, expected", BAD_OPTIONS,
                         ids=[" ".join(extra) for extra, _ in BAD_OPTIONS])
def test_bad_group_options_are_one_line_exit_2_no_run_dir(tmp_path, capsys, extra, expected):
    run_dir = tmp_path / "run"
    assert_refused_in_one_line(capsys, ["train", "demo", *extra, "--run-dir", str(run_dir)],
                               expected, run_dir)
