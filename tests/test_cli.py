"""The command line: help, presets, and one-line errors for bad input (exit 2, no run dir)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxatari import cli
from jaxatari.config import FIELDS, ConfigError, build_config, flag_name, list_presets
from tests.subprocess_env import repo_env

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = repo_env()
    return subprocess.run([sys.executable, "-m", "jaxatari", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


def test_help_lists_every_option_with_its_default():
    parser = cli.make_parser()
    train_help = parser._subparsers._group_actions[0].choices["train"].format_help()
    for name in FIELDS:
        if name != "preset":
            assert flag_name(name) in train_help, name
    assert "(default: 50000)" in train_help.replace(",", "")   # --learn-start's default
    assert "--mem-size" in train_help and "--pal-alpha" in train_help
    words = " ".join(train_help.split())   # wrapped to the terminal's width
    assert "Save agent (y/n)?" in words and "SIGTERM saves without asking" in words


def test_compare_is_a_command_with_its_own_help():
    parser = cli.make_parser()
    assert "compare" in parser.format_help()
    compare_help = parser._subparsers._group_actions[0].choices["compare"].format_help()
    for flag in ("--score", "--normalised", "--out", "RUN_DIR"):
        assert flag in compare_help, flag
    assert "Agarwal et al. 2021" in " ".join(compare_help.split())


def test_presets_command_lists_demo():
    result = run_cli("presets")
    assert result.returncode == 0
    assert "demo" in result.stdout and "nature" in result.stdout


def test_bad_input_exits_the_process_with_2_one_line_and_no_run_dir(tmp_path):
    """The real process's exit status and stderr; every bad value's message is held
    in-process by tests/test_cli_bad_input.py's table."""
    run_dir = tmp_path / "run"
    expected = "--steps must be positive"
    result = run_cli("train", "demo", "--steps", "-5", "--run-dir", str(run_dir))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[0], lines[0]
    assert not run_dir.exists()


def test_later_overrides_win_and_values_are_typed():
    config = build_config("demo", {"seeds": "8", "steps": "2.56e5", "duel": "false"})
    assert config.seeds == 8 and config.steps == 256_000 and config.duel is False
    assert config.preset == "demo"


def test_every_preset_loads_and_validates():
    for name in list_presets():
        build_config(name, {})


def test_unknown_option_in_a_preset_is_refused(tmp_path, monkeypatch):
    import jaxatari.config as config_module
    (tmp_path / "broken.toml").write_text('description = "x"\nno_such_key = 1\n')
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match="unknown option --no-such-key"):
        build_config("broken", {})


def test_a_short_catch_run_writes_every_artefact(tmp_path):
    run_dir = tmp_path / "catch"
    result = run_cli("train", "demo", "--steps", "1600", "--seeds", "2", "--learn-start", "400",
                     "--val-freq", "800", "--val-steps", "128", "--val-envs", "8",
                     "--chunk-steps", "800", "--verbose", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"run directory: {run_dir}"
    for name in ("config.json", "progress.csv", "eval.csv", "episodes.csv", "curves.png",
                 "summary.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("preset", "env", "protocol", "seeds", "steps", "final_scores", "best_scores",
                "wall_seconds", "steps_per_second"):
        assert key in summary
    assert len(summary["final_scores"]) == 2 and summary["steps"] == 1600
    # mean, median and IQM over seeds with 95% intervals (Agarwal et al. 2021), also printed
    statistics = summary["statistics"]
    for kind in ("final", "best"):
        for name in ("mean", "median", "iqm"):
            entry = statistics[kind][name]
            assert entry is None or entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    assert "final_normalised" not in statistics          # Catch has no human score
    assert "95% intervals from a stratified bootstrap over seeds" in result.stdout
    assert any(line.startswith("IQM ") for line in result.stdout.splitlines())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["environment"]["versions"]["jax"]
    assert config["env_spec"]["protocol"]["env"] == "catch"
    # A finished run directory is never overwritten.
    again = run_cli("train", "demo", "--steps", "1600", "--run-dir", str(run_dir))
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
