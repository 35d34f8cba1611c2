"""Every bad value stops with one line, exit status 2, no traceback and no run directory,
before anything is compiled (issue 24, 2). One row per case: a new case is one line.

These run ``cli.main`` in this process and stop before any compile, so each takes well
under a second; ``RUN`` in a row is replaced by a fresh run directory that must not appear.
"""
from __future__ import annotations

import fcntl
import os
import time

import pytest

from jaxatari import cli
from tests.refusal import assert_refused_in_one_line

RUN = "<run>"

BAD_INPUT = [
    # options and their values
    (["train", "no-such-preset", "--run-dir", RUN], "unknown preset"),
    (["train", "demo", "--no-such-option", "3", "--run-dir", RUN], "unrecognized arguments"),
    (["train", "demo", "--steps", "-5", "--run-dir", RUN], "--steps must be positive"),
    (["train", "demo", "--steps", "ten", "--run-dir", RUN], "--steps expects int"),
    (["train", "demo", "--mem-size", "16", "--batch-size", "32", "--run-dir", RUN], "must be larger than --batch-size"),
    (["train", "demo", "--learn-start", "8", "--run-dir", RUN], "so the first batch can be drawn"),
    (["train", "demo", "--env", "nowhere", "--run-dir", RUN], "unknown environment"),
    (["train", "demo", "--env", "atari", "--game", "NotAGame", "--run-dir", RUN], "unknown Atari game"),
    (["train", "demo", "--env", "NoSuch-MinAtar", "--run-dir", RUN], "MinAtar"),
    (["train", "demo", "--optimiser", "adamw", "--run-dir", RUN], "--optimiser must be one of"),
    (["train", "demo", "--flickering", "1.5", "--run-dir", RUN], "--flickering must be in [0, 1]"),
    (["train", "demo", "--loss", "nope", "--run-dir", RUN], "unknown loss"),
    (["train", "demo", "--model-body", "nope", "--run-dir", RUN], "unknown model body"),
    # bounds of the 32-bit counters
    (["train", "demo", "--steps", "1e99", "--run-dir", RUN], "--steps must be at most 2,147,483,647"),
    (["train", "demo", "--steps", "3000000000", "--run-dir", RUN], "--steps must be at most"),
    (["train", "demo", "--learn-start", "1e10", "--run-dir", RUN], "--learn-start must be at most"),
    # memory: the run's state is estimated from shapes before anything is allocated
    (["train", "demo", "--seeds", "100000", "--run-dir", RUN], "more than this machine's"),
    # run directories that cannot be one
    (["train", "demo", "--run-dir", "/proc/x"], "--run-dir /proc/x cannot be written"),
    (["train", "demo", "--run-dir", "/sys/x"], "--run-dir /sys/x cannot be written"),
    (["train", "demo", "--run-dir", ""], "--run-dir must not be empty"),
    (["train", "demo", "--run-dir", "  "], "--run-dir must not be empty"),
    (["resume", "RUN_FILE"], "no run directory at"),
    # loaders check what they load before calling or tracing it
    (["train", "demo", "--loss", "os:system", "--run-dir", RUN], "is not a function of (q, a_tm1"),
    (["train", "demo", "--loss", "math:sqrt", "--run-dir", RUN], "is not a function of (q, a_tm1"),
    (["train", "demo", "--model-body", "builtins:print", "--run-dir", RUN], "not a flax Module class"),
    (["train", "demo", "--model-body", "collections:OrderedDict", "--run-dir", RUN], "not a flax Module class"),
    (["train", "demo", "--env", "faulthandler:dump_traceback", "--run-dir", RUN], "not a gymnasium.Env subclass"),
    (["train", "demo", "--env", "os:getcwd", "--run-dir", RUN], "not a gymnasium.Env subclass"),
    # a body that does not fit the observations
    (["train", "nature", "--env", "CartPole-v1", "--run-dir", RUN], "convolves images [H, W, C], but the observations have shape (4,)"),
    (["train", "demo", "--model-body", "nature", "--run-dir", RUN], "--model-body nature needs larger images than 24x24"),
    # a game given to a preset that plays no such game
    (["train", "demo", "Pong", "--run-dir", RUN], "preset demo plays catch, not an Atari game"),
    (["train", "nature", "Breakout-MinAtar", "--run-dir", RUN], "preset nature plays atari, not a MinAtar game"),
    (["random", "demo", "Pong"], "say so with --env atari --game Pong"),
]


@pytest.mark.parametrize("argv, expected", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_no_run_dir(tmp_path, capsys, argv, expected):
    run_dir = tmp_path / "run"
    (tmp_path / "file").write_text("not a directory")
    argv = [str(run_dir) if a == RUN else str(tmp_path / "file") if a == "RUN_FILE" else a
            for a in argv]
    started = time.perf_counter()
    assert_refused_in_one_line(capsys, argv, expected, run_dir)
    assert time.perf_counter() - started < 10   # stopped before any compile


def test_an_existing_file_as_run_dir_is_said_in_words(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert cli.main(["train", "demo", "--run-dir", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is an existing file, not a directory" in err and "Errno" not in err


def test_a_run_directory_in_use_is_refused(tmp_path, capsys):
    """A second run on a directory another run holds (its flock) stops with one line and
    leaves the directory as it was."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = os.open(run_dir, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)   # as the first run holds it
    try:
        assert cli.main(["train", "demo", "--run-dir", str(run_dir)]) == 2
    finally:
        os.close(holder)
    err = capsys.readouterr().err
    assert "is in use by another jaxatari run" in err and len(err.strip().splitlines()) == 1
    assert list(run_dir.iterdir()) == []


def _help_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(argv)
    return " ".join(capsys.readouterr().out.split())


def test_train_help_of_a_preset_shows_the_preset_values(capsys):
    text = _help_of(["train", "demo", "--help"], capsys)
    assert "(preset demo: 448000)" in text and "(preset demo: 0)" in text   # steps, bootstraps
    assert "(default: 50000000)" not in text


def test_resume_help_shows_the_saved_run_values(tmp_path, capsys):
    import json
    (tmp_path / "config.json").write_text(json.dumps({"steps": 1234, "env": "evil:Thing"}))
    text = _help_of(["resume", str(tmp_path), "--help"], capsys)
    assert "config.json: 1234)" in text.replace("- ", "-")


def test_random_help_lists_only_the_env_options(capsys):
    text = _help_of(["random", "demo", "--help"], capsys)
    assert "--env" in text and "--seed " in text and "--sticky-prob" in text
    for training_only in ("--mem-size", "--eta", "--steps", "--bootstraps", "--val-freq"):
        assert training_only not in text, training_only
