"""Logging knobs of the original: --verbose (every training episode's score), --report-weights
(per-layer |w| and |dw| at each validation), --prog-freq (how often a progress line comes)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from jaxatari.loop import train
from jaxatari.metrics import ChunkStats, RunLogger, weight_stats, layer_arrays
from tests.tiny import tiny


def _chunk(seeds: int) -> ChunkStats:
    zeros = np.zeros((1, seeds, 1))
    return ChunkStats(finished=zeros.astype(bool), scores=zeros, learned=np.zeros(1, bool),
                      loss=np.zeros((1, seeds)), td_error=np.zeros((1, seeds)),
                      q_mean=np.zeros((1, seeds)))


def _progress_lines(tmp_path, capsys, prog_freq: int) -> list[str]:
    config = tiny(steps=1000, prog_freq=prog_freq)
    with RunLogger(tmp_path / f"run{prog_freq}", config) as logger:
        logger.bar, logger.plain = None, True   # as in CI logs, whatever the terminal
        for step in range(100, 1001, 100):
            logger.log_chunk(step, _chunk(config.seeds), 0.5, 1.0, 100)
    return [line.split("/")[0].split()[-1] for line in capsys.readouterr().err.splitlines()
            if line.startswith("step")]


def test_prog_freq_sets_how_often_a_progress_line_comes(tmp_path, capsys):
    assert _progress_lines(tmp_path, capsys, 0) == [f"{s:,}" for s in range(100, 1001, 100)]
    assert _progress_lines(tmp_path, capsys, 300) == ["300", "600", "900"]
    assert _progress_lines(tmp_path, capsys, 250) == ["300", "500", "800", "1,000"]


def test_weight_stats_against_numpy():
    rng = np.random.default_rng(0)
    before = {"params": {"Dense_0": {"kernel": rng.normal(size=(2, 3, 4)),
                                     "bias": rng.normal(size=(2, 4))}}}
    after = {"params": {"Dense_0": {"kernel": before["params"]["Dense_0"]["kernel"] + 0.5,
                                    "bias": before["params"]["Dense_0"]["bias"] * 2}}}
    first = weight_stats(layer_arrays(before), None, seeds=2)
    rows = weight_stats(layer_arrays(after), layer_arrays(before), seeds=2)
    assert [r[1] for r in rows] == ["Dense_0/bias"] * 2 + ["Dense_0/kernel"] * 2
    assert all(np.isnan(r[4]) and np.isnan(r[5]) for r in first)
    kernel, bias = after["params"]["Dense_0"]["kernel"], before["params"]["Dense_0"]["bias"]
    for seed in range(2):
        _, _, w_mean, w_max, dw_mean, dw_max = rows[2 + seed]
        assert w_mean == pytest.approx(np.abs(kernel[seed]).mean())
        assert w_max == pytest.approx(np.abs(kernel[seed]).max())
        assert dw_mean == pytest.approx(0.5) and dw_max == pytest.approx(0.5)
        assert rows[seed][4] == pytest.approx(np.abs(bias[seed]).mean())   # 2b - b
        assert rows[seed][5] == pytest.approx(np.abs(bias[seed]).max())


def _rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_verbose_and_report_weights_in_a_tiny_run(tmp_path):
    run_dir, _ = train(tiny(steps=256, verbose=True, report_weights=True), tmp_path / "run",
                       quiet=True, resume=False, interactive=False)
    episodes = _rows(run_dir / "episodes.csv")
    progress = _rows(run_dir / "progress.csv")
    # every finished training episode, one row each: as many as progress.csv counts
    assert len(episodes) == sum(int(r["episodes"]) for r in progress) > 0
    assert {float(r["score"]) for r in episodes} <= {0.0, 1.0}   # Catch scores
    weights = _rows(run_dir / "weights.csv")
    steps = sorted({int(r["step"]) for r in weights})
    assert steps == [128, 256]   # one report per validation
    layers = {r["layer"] for r in weights}
    assert any(layer.endswith("kernel") for layer in layers) and len(layers) >= 4
    first = [r for r in weights if r["step"] == "128"]
    last = [r for r in weights if r["step"] == "256"]
    assert all(r["mean_abs_dw"] == "nan" for r in first)
    assert len(last) == 2 * len(layers)   # every layer of both seeds
    assert all(float(r["max_abs_dw"]) >= float(r["mean_abs_dw"]) >= 0 for r in last)
    assert any(float(r["mean_abs_dw"]) > 0 for r in last)   # learning moved the weights
    assert all(float(r["max_abs_w"]) >= float(r["mean_abs_w"]) > 0
               for r in last if r["layer"].endswith("kernel"))


def test_a_resumed_run_keeps_its_history_on_disk_before_its_first_new_row(tmp_path):
    """A run killed just after resuming (before any flush) must not lose its earlier rows."""
    config = tiny(steps=1000)
    run_dir = tmp_path / "run"
    with RunLogger(run_dir, config, quiet=True) as logger:
        for step in (100, 200, 300):
            logger.log_chunk(step, _chunk(config.seeds), 0.5, 1.0, 100)
    resumed = RunLogger(run_dir, config, quiet=True, resume_step=200).__enter__()
    try:
        with (run_dir / "progress.csv").open(newline="") as f:   # read while still open
            steps = [int(row[0]) for row in list(csv.reader(f))[1:]]
        assert steps == [100] * config.seeds + [200] * config.seeds
        assert (run_dir / "eval.csv").read_text().startswith("step,")
    finally:
        resumed.__exit__(None, None, None)


def test_a_resumed_run_estimates_its_remaining_time_from_its_own_steps(tmp_path, capsys):
    config = tiny(steps=1000)
    with RunLogger(tmp_path / "run", config, resume_step=500) as logger:
        logger.bar, logger.plain = None, True
        logger.started -= 10.0                 # 10 s for the 100 steps since the resume
        logger.log_chunk(600, _chunk(config.seeds), 0.5, 10.0, 100)
    eta = int(capsys.readouterr().err.split("eta ")[1].split("s")[0])
    assert 39 <= eta <= 41                     # 400 steps left at 10 steps/s, not 400 * 10/600
