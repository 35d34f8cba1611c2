"""scripts/minatar_results.py: the committed MinAtar table reads a run's own logs."""
from __future__ import annotations

import json
import sys

import pytest

from scripts import minatar_results


def _fake_run(run_dir, steps, train_scores, eval_scores):
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"preset": "minatar-dqn", "duel": True}))
    rows = ["step,seed,episodes,score,loss,td_error,q_mean,epsilon,steps_per_second"]
    rows += [f"{s},{seed},3,{score},0,0,0,0.1,100" for s, per_seed in zip(steps, train_scores)
             for seed, score in enumerate(per_seed)]
    (run_dir / "progress.csv").write_text("\n".join(rows) + "\n")
    rows = ["step,seed,score,episodes,normalised_score,v,td_error"]
    rows += [f"{steps[-1]},{seed},{score},5,,1,0.1" for seed, score in enumerate(eval_scores)]
    (run_dir / "eval.csv").write_text("\n".join(rows) + "\n")


def test_the_table_averages_the_last_window_per_seed_and_marks_a_partial_run(tmp_path,
                                                                              monkeypatch):
    run_dir = tmp_path / "minatar-duel"
    # the first chunk falls outside a 100k window ending at 300k
    _fake_run(run_dir, [100_000, 250_000, 300_000], [[1, 2], [10, 20], [30, 40]], [50, 70])
    out = tmp_path / "out" / "minatar"
    monkeypatch.setattr(sys, "argv", ["minatar_results.py", str(run_dir), "--out", str(out)])
    assert minatar_results.main() == 0
    record = json.loads(out.with_suffix(".json").read_text())
    run = record["runs"][0]
    assert run["training_score_per_seed"] == [20.0, 30.0]
    assert run["validation_score_mean"] == 60.0
    assert not run["complete"] and run["options"]["duel"] is True
    table = out.with_suffix(".md").read_text()
    assert "| minatar-duel | 300,000 (partial) | 20.0, 30.0 | 25.0 | 50.0, 70.0 | 60.0 |" in table
    assert (tmp_path / "out" / "minatar-training.png").is_file()
    assert (tmp_path / "out" / "minatar-validation.png").is_file()


def test_a_directory_that_is_not_a_run_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["minatar_results.py", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a run directory"):
        minatar_results.main()


def test_hand_written_notes_survive_a_regeneration(tmp_path, monkeypatch):
    run_dir = tmp_path / "minatar-dqn"
    _fake_run(run_dir, [100_000], [[1, 2]], [3, 4])
    out = tmp_path / "minatar"
    notes = "Reading: written by hand, kept across reruns.\n"
    (tmp_path / "minatar-notes.md").write_text(notes)
    monkeypatch.setattr(sys, "argv", ["minatar_results.py", str(run_dir), "--out", str(out)])
    for _ in range(2):
        assert minatar_results.main() == 0
        table = out.with_suffix(".md").read_text()
        assert table.count(notes.strip()) == 1
        assert table.index("Commit: ") < table.index(notes.strip())
