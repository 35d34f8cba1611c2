"""What is printed never overstates (issue 24, 3): no score without a finished episode, the
number of finished episodes beside every score, --val-freq honoured, and a first try told
what it will allocate and run."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from jaxatari import cli
from jaxatari.config import build_config
from jaxatari.loop import Trainer, chunk_iterations, seeds_mean, train
from jaxatari.metrics import RunLogger, mean_score, score_text
from tests.tiny import tiny


def test_mean_score_is_nan_without_a_finished_episode():
    """The running episodes' partial scores are never taken for a score."""
    scores = mean_score(total=[3.0, 0.0], episodes=[2, 0], partial=[5.0, -6.0])
    assert scores[0] == 1.5 and np.isnan(scores[1])
    assert score_text(1.5, 2) == "1.5 (2)" and score_text(np.nan, 0) == "n/a (0)"
    assert seeds_mean([1.0, np.nan]) is None and seeds_mean([1.0, 2.0]) == 1.5


def test_an_evaluation_without_finished_episodes_logs_n_a_and_no_normalised_score(tmp_path,
                                                                                   capsys):
    config = tiny(seeds=2)
    with RunLogger(tmp_path, config, quiet=False) as logger:
        logger.plain = True
        logger.log_eval(100, np.array([np.nan, 0.5]), np.array([0, 4]),
                        normalised=np.array([np.nan, 0.01]))
    err = capsys.readouterr().err
    assert "greedy score per seed (finished episodes): n/a (0) 0.5 (4)" in err
    assert "normalised: n/a 0.01" in err and "no greedy episode finished" in err
    rows = list(csv.DictReader((tmp_path / "eval.csv").open()))
    assert [(r["score"], r["episodes"], r["normalised_score"]) for r in rows] == \
        [("", "0", ""), ("0.5", "4", "0.01")]
    assert "n/a (0)" in (tmp_path / "log.txt").read_text()


def test_a_run_whose_validation_finishes_no_episode_reports_n_a(tmp_path, capsys):
    """Catch needs 23 steps a game: 4 validation steps over 4 envs finish none."""
    run_dir, summary = train(tiny(steps=128, val_steps=4), tmp_path / "run", quiet=True)
    assert summary["final_scores"] == [None, None] and summary["best_scores"] == [None, None]
    assert summary["final_episodes"] == [0, 0]
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["final_scores"] == [None, None]
    rows = list(csv.DictReader((run_dir / "eval.csv").open()))
    assert rows and all(r["score"] == "" and r["episodes"] == "0" for r in rows)
    assert not (run_dir / "checkpoints" / "best").exists()   # n/a is never a best score
    cli.print_scores(summary)
    out = capsys.readouterr().out
    assert "n/a" in out and "0.000" not in out


@pytest.mark.parametrize("chunk_steps, val_freq, expected", [
    (20_000, 2_000, 2_000),     # the case: a validation every 2,000 steps
    (20_000, 40_000, 20_000),   # the presets: unchanged
    (20_000, 20_000, 20_000),
])
def test_chunks_are_cut_to_the_validation_frequency(chunk_steps, val_freq, expected):
    # 8 envs, so that 2,000 steps are whole iterations (the demo's own 32 envs are not)
    config = build_config("demo", {"chunk_steps": chunk_steps, "val_freq": val_freq, "envs": 8})
    assert chunk_iterations(config, config.envs) * config.envs == expected


def test_a_first_try_far_below_the_preset_says_what_it_allocates_and_runs(tmp_path):
    config = build_config("demo", {"steps": 800, "val_freq": 800, "run_dir": str(tmp_path)})
    notes = Trainer(config, tmp_path / "run").startup_notes()
    text = "\n".join(notes)
    assert "replay memory" in text and "of which --steps 800 fills 1.2%" in text
    assert "never learns" in text                    # demo's --learn-start is above 800
    assert "validation: 1 evaluation of --val-steps 24,576" in text


def test_nature_pong_with_600_steps_says_it_keeps_the_presets_memory_and_validation(tmp_path):
    pytest.importorskip("envpool")
    config = build_config("nature", {"env": "atari", "game": "Pong", "steps": 600})
    text = "\n".join(Trainer(config, tmp_path / "run").startup_notes())
    assert "GiB" in text and "--mem-size 1,000,000 per seed, of which --steps 600 fills" in text
    assert "validation: 1 evaluation of --val-steps 125,000" in text


def test_eval_says_how_many_episodes_were_cut_at_the_step_limit():
    from jaxatari.evaluation import EpisodeResult, score_lines
    result = EpisodeResult(scores=np.array([1.0, 2.0]), lengths=np.array([5, 9]),
                           cut=np.array([False, True]))
    lines = score_lines(result)
    assert "(cut at the step limit)" in lines[1]
    assert lines[-1].endswith("over 2 episodes, 1 of them cut at the step limit (their scores "
                              "are partial)")
