"""Loading someone else's run directory or checkpoint never runs code unasked (issue 24, 1).

The run directories here are written by hand (no training): a config.json and a committed
checkpoint whose options name ``evil:Thing``, with an ``evil.py`` beside them that leaves a
marker file when imported. Every command must refuse before importing it.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxatari import checkpoint as ckpt
from jaxatari.cli import main
from tests.subprocess_env import repo_env

ROOT = Path(__file__).resolve().parent.parent
EVIL = "evil:Thing"


def write_checkpoint(path: Path, metadata: dict, commit: str | None = None) -> None:
    """A committed checkpoint directory without arrays (metadata and COMMITTED only)."""
    path.mkdir(parents=True)
    text = json.dumps({"format_version": ckpt.FORMAT_VERSION, "items": {}, **metadata})
    (path / ckpt.METADATA_FILE).write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest() if commit is None else commit
    (path / ckpt.COMMIT_FILE).write_text(digest)


def sent_run(tmp_path: Path, **saved) -> Path:
    """A run directory as someone might send it: saved options naming ``evil`` and the
    module itself, which writes ``imported`` beside it when it is imported."""
    run_dir = tmp_path / "sent"
    options = {"preset": "demo", "env": "catch", "model_body": "catch", "loss": "auto",
               "steps": 256, "learn_start": 32, "mem_size": 64, "batch_size": 8, **saved}
    write_checkpoint(run_dir / "checkpoints" / "last",
                     {"kind": "q-agent", "config": options, "step": 128, "seeds": 1,
                      "agent": {"body": options["model_body"], "loss": options["loss"]}})
    (run_dir / "config.json").write_text(json.dumps(options))
    (run_dir / "evil.py").write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_name('imported').write_text('ran')\n"
        "Thing = print\n")
    return run_dir


COMMANDS = {
    "resume": lambda run: ["resume", str(run)],
    "eval": lambda run: ["eval", str(run)],
    "random": lambda run: ["random", str(run)],
    "export": lambda run: ["export", str(run), "--checkpoint", "last"],
}


@pytest.mark.parametrize("option, flag", [("env", "--env"), ("model_body", "--model-body"),
                                          ("loss", "--loss")])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_saved_import_path_is_refused_before_it_is_imported(tmp_path, monkeypatch, capsys,
                                                              command, option, flag):
    run_dir = sent_run(tmp_path, **{option: EVIL})
    monkeypatch.chdir(run_dir)
    monkeypatch.syspath_prepend(str(run_dir))   # as if python -m had put it there
    assert main(COMMANDS[command](run_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"names {flag} {EVIL}, an import path" in err
    assert f"--allow-import {EVIL}" in err
    assert not (run_dir / "imported").exists()
    assert "evil" not in sys.modules


def test_allow_import_names_the_path_and_lets_it_load(tmp_path, monkeypatch, capsys):
    """With --allow-import the saved path is imported (and then checked for its kind: a
    builtin ``print`` is no gymnasium env, so nothing is called)."""
    run_dir = sent_run(tmp_path, env=EVIL)
    monkeypatch.syspath_prepend(str(run_dir))
    monkeypatch.delitem(sys.modules, "evil", raising=False)
    try:
        assert main(["random", str(run_dir), "--allow-import", EVIL]) == 2
    finally:
        sys.modules.pop("evil", None)   # the other tests check that nothing imported it
    err = capsys.readouterr().err
    assert (run_dir / "imported").exists()          # imported because it was allowed
    assert "is not a gymnasium.Env subclass" in err and "Traceback" not in err


def test_an_option_given_again_replaces_the_saved_import_path(tmp_path, capsys):
    run_dir = sent_run(tmp_path, env=EVIL)
    # --size 0 stops it at validation, after the import check has let it through
    assert main(["random", str(run_dir), "--env", "catch", "--size", "0"]) == 2
    assert "--size must be positive" in capsys.readouterr().err
    assert not (run_dir / "imported").exists()


def test_python_m_from_the_run_directory_does_not_import_its_modules(tmp_path):
    """python -m puts the current directory on sys.path; jaxatari takes it off."""
    run_dir = sent_run(tmp_path, env=EVIL)
    env = repo_env()
    result = subprocess.run([sys.executable, "-m", "jaxatari", "random", ".", "--allow-import",
                             EVIL], cwd=run_dir, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "cannot import module 'evil'" in result.stderr
    assert not (run_dir / "imported").exists()


@pytest.mark.parametrize("commit, expected", [
    ("", "record is empty"),
    ("0" * 64, "does not match its commit record"),
])
def test_a_commit_record_without_the_right_digest_is_refused(tmp_path, commit, expected):
    path = tmp_path / "last"
    write_checkpoint(path, {"kind": "q-agent", "step": 1}, commit=commit)
    with pytest.raises(ckpt.CheckpointError, match=expected):
        ckpt.read_metadata(path)


def test_paths_into_jaxatari_itself_are_built_in(tmp_path, capsys):
    """demo-grid's body is jaxatari.envs.gridworld_net:GridWorldBody: its runs load as ever."""
    run_dir = sent_run(tmp_path, env="gridworld",
                       model_body="jaxatari.envs.gridworld_net:GridWorldBody")
    assert main(["random", str(run_dir), "--size", "0"]) == 2
    assert "--size must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["env", "model_body", "loss"])
def test_train_resume_takes_its_options_from_the_command_line_only(tmp_path, monkeypatch,
                                                                   capsys, option):
    """train PRESET --resume RUN builds from the preset: a saved import path is compared as a
    string (and the checkpoint refused), never imported."""
    run_dir = sent_run(tmp_path, **{option: EVIL})
    monkeypatch.syspath_prepend(str(run_dir))
    assert main(["train", "demo", "--resume", str(run_dir)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (run_dir / "imported").exists() and "evil" not in sys.modules
