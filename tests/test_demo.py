"""The demo: `scripts/run.sh demo` trains four seeds on Catch and every one of them learns.

This runs the real command line on the demo preset, unchanged, exactly as a newcomer would
(minus the bootstrap, which the test runner has already done). A random policy catches about
8% of balls, and no agent deciding from the last 1-4 frames can catch more than 0.83 (the ball
drifts by sub-pixel amounts: results/catch-ceiling.md). The test holds every seed's final
greedy evaluation (1,024 episodes, standard error about 0.013) to 0.75, 90% of that ceiling.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.subprocess_env import repo_env

ROOT = Path(__file__).resolve().parent.parent
CATCH_RATE = 0.75


@pytest.mark.slow
def test_demo_learns_catch_on_every_seed(tmp_path):
    run_dir = tmp_path / "demo"
    env = repo_env()
    result = subprocess.run([sys.executable, "-m", "jaxatari", "train", "demo", "--run-dir",
                             str(run_dir)], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] >= 4
    assert all(score >= CATCH_RATE for score in summary["final_scores"]), summary
    assert all(count >= 1024 for count in summary["final_episodes"]), summary
    # The table the user reads names every seed and ends with the run directory.
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == f"run directory: {run_dir}"
    assert (run_dir / "curves.png").stat().st_size > 0
