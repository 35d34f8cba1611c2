"""jaxatari.statistics against rliable's own functions on fixed numbers (Agarwal et al.
2021), the statistics block a run's summary.json gets, and the compare and plot commands on
small hand-written run directories (tests/test_cli.py checks the block of a real run).

rliable is a test dependency only (the ``test`` extra). Its bootstrap lives in
``rliable.library``, which imports ``arch.bootstrap``; arch below 8 (which rliable 1.2
requires) fails at ``import arch`` under pandas 3, in its GARCH models' decorators, which
the bootstrap never uses. ``rliable_library`` then loads ``arch`` as a bare package, so
that ``arch.bootstrap`` imports without ``arch/__init__``.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from jaxatari import plots
from jaxatari import statistics as st
from jaxatari.cli import main


# fixed numbers: 5 seeds with an outlier, and 4 seeds x 3 tasks
SCORES = np.array([3.0, 1.0, 4.0, 1.5, 9.0])
TABLE = np.array([[0.1, 2.0, -1.0], [0.4, 1.0, 0.0], [0.3, 5.0, 0.5], [0.2, 2.5, 3.0]])
OTHER = np.array([[0.2, 1.0, 0.0], [0.5, 1.5, 1.0], [0.0, 2.0, 0.5]])
REPS = 500


@pytest.fixture(scope="module")
def rliable_metrics():
    """rliable's estimators (without rliable installed, the tests that compare skip)."""
    return pytest.importorskip("rliable.metrics")


@pytest.fixture(scope="module")
def rly(rliable_metrics):
    """rliable's bootstrap (``rliable.library``), importable under pandas 3 too."""
    try:
        return importlib.import_module("rliable.library")
    except TypeError:
        for name in [n for n in sys.modules if n == "arch" or n.startswith("arch.")]:
            del sys.modules[name]
        location = importlib.util.find_spec("arch").submodule_search_locations
        bare = types.ModuleType("arch")
        bare.__path__ = list(location)
        sys.modules["arch"] = bare
        sys.modules.pop("rliable.library", None)
        return importlib.import_module("rliable.library")


def reference_aggregates(metrics):
    """rliable's mean and IQM, and the pooled median (rliable's median of a 1 x n table:
    each score its own task)."""
    return lambda scores: np.array([metrics.aggregate_mean(scores),
                                    metrics.aggregate_median(scores.reshape(1, -1)),
                                    metrics.aggregate_iqm(scores)])


@pytest.mark.parametrize("scores", [SCORES, TABLE], ids=["one task", "three tasks"])
def test_aggregates_and_intervals_match_rliable(rly, rliable_metrics, scores):
    table = scores.reshape(len(scores), -1)
    np.random.seed(7)   # rliable's StratifiedBootstrap draws from NumPy's global stream
    points, intervals = rly.get_interval_estimates({"x": table}, reference_aggregates(rliable_metrics),
                                                   reps=REPS)
    ours = st.aggregate(scores, reps=REPS, seed=7)
    for i, name in enumerate(("mean", "median", "iqm")):
        assert ours[name].value == pytest.approx(points["x"][i], abs=1e-12), name
        assert [ours[name].low, ours[name].high] == pytest.approx(
            list(intervals["x"][:, i]), abs=1e-12), name


def test_interquartile_mean_is_scipys_trimmed_mean(rliable_metrics):
    for n in range(1, 10):
        scores = np.random.RandomState(n).randn(n)
        assert st.interquartile_mean(scores) == pytest.approx(
            rliable_metrics.aggregate_iqm(scores[:, None]), abs=1e-12)
    assert st.interquartile_mean(SCORES) == pytest.approx(np.mean([1.5, 3.0, 4.0]))


def test_probability_of_improvement_matches_rliable(rly, rliable_metrics):
    assert st.probability_of_improvement(TABLE, OTHER).value == pytest.approx(
        rliable_metrics.probability_of_improvement(TABLE, OTHER), abs=1e-12)
    np.random.seed(3)
    points, intervals = rly.get_interval_estimates(
        {"x_y": [TABLE, OTHER]},
        lambda x, y: np.array([rliable_metrics.probability_of_improvement(x, y)]), reps=REPS)
    ours = st.probability_of_improvement(TABLE, OTHER, reps=REPS, seed=3)
    assert ours.value == pytest.approx(points["x_y"][0], abs=1e-12)
    assert [ours.low, ours.high] == pytest.approx(list(intervals["x_y"][:, 0]), abs=1e-12)
    # the same scores: an even chance; X always ahead: 1 with a point interval
    assert st.probability_of_improvement(SCORES, SCORES).value == 0.5
    assert st.probability_of_improvement(SCORES + 100, SCORES) == (1.0, 1.0, 1.0)


def test_performance_profile_matches_rliable(rly):
    taus = np.linspace(-1.5, 5.5, 15)
    np.random.seed(11)
    profiles, intervals = rly.create_performance_profile({"x": TABLE}, taus, reps=REPS)
    fraction, low, high = st.performance_profile(TABLE, taus, reps=REPS, seed=11)
    assert fraction == pytest.approx(profiles["x"], abs=1e-12)
    assert low == pytest.approx(intervals["x"][0], abs=1e-12)
    assert high == pytest.approx(intervals["x"][1], abs=1e-12)


def test_one_seed_intervals_are_the_point_and_results_are_reproducible():
    assert st.aggregate([2.5])["iqm"] == (2.5, 2.5, 2.5)
    assert st.aggregate(SCORES) == st.aggregate(SCORES)          # a fixed bootstrap seed
    assert st.aggregate(SCORES, seed=1) != st.aggregate(SCORES, seed=2)
    with pytest.raises(ValueError, match="finite"):
        st.aggregate([1.0, np.nan])
    with pytest.raises(ValueError, match="at least one"):
        st.aggregate([])


def test_iqm_curve_skips_seeds_without_a_score():
    values = np.array([[1.0, 2.0, 3.0, 4.0], [np.nan, 5.0, np.nan, np.nan],
                       [np.nan] * 4])
    iqm, low, high = st.iqm_curve(values)
    assert iqm[0] == pytest.approx(2.5) and low[0] <= iqm[0] <= high[0]
    assert (iqm[1], low[1], high[1]) == (5.0, 5.0, 5.0)
    assert np.isnan([iqm[2], low[2], high[2]]).all()


def test_summary_statistics_block():
    summary = {"final_scores": [1.0, None, 3.0, 2.0], "best_scores": [1.0, 2.0, 3.0, 4.0],
               "final_normalised_scores": [0.1, None, 0.3, 0.2],
               "best_normalised_scores": [None, None, None, None]}
    block = st.summary_statistics(summary)
    assert block["final"]["seeds"] == 3 and block["best"]["seeds"] == 4
    assert block["final"]["iqm"]["value"] == pytest.approx(2.0)
    assert block["best"]["mean"]["value"] == pytest.approx(2.5)
    low, high = block["best"]["median"]["ci95"]
    assert 1.0 <= low <= 2.5 <= high <= 4.0
    assert block["final_normalised"]["median"]["value"] == pytest.approx(0.2)
    assert block["best_normalised"] == {"seeds": 0, "mean": None, "median": None, "iqm": None}
    assert "Agarwal" in block["method"] and block["reps"] == st.REPS
    assert "final_normalised" not in st.summary_statistics({"final_scores": [1.0],
                                                            "best_scores": [1.0]})


# ------------------------------------------------------------- compare and plot commands


def fake_run(path, final, best=None, env="catch", eval_rows=()):
    """A finished run directory as compare and plot read it: summary.json, eval.csv."""
    path.mkdir(parents=True)
    summary = {"env": env, "final_scores": final, "best_scores": best or final}
    (path / "summary.json").write_text(json.dumps(summary))
    lines = ["step,seed,score,episodes,normalised_score,v,td_error"]
    lines += [f"{step},{seed},{score},3,,," for step, seed, score in eval_rows]
    (path / "eval.csv").write_text("\n".join(lines) + "\n")
    return path


def test_compare_prints_improvement_with_intervals_and_writes_profiles(tmp_path, capsys,
                                                                      monkeypatch):
    a = fake_run(tmp_path / "a", [1.0, 0.5, None, 0.75], best=[0.1, 0.2, None, 0.3])
    b = fake_run(tmp_path / "b", [0.2, 0.5, 0.25], best=[1.0, 1.0, 1.0], env="other")
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    x, y = np.array([1.0, 0.5, 0.75]), np.array([0.2, 0.5, 0.25])
    assert f"P(a > b) = {st.probability_of_improvement(x, y).text()}" in out
    assert f"P(b > a) = {st.probability_of_improvement(y, x).text()}" in out
    row_a = [line for line in out.splitlines() if line.startswith("a ")][0]
    assert row_a.split()[1] == "3" and st.aggregate(x)["iqm"].text() in row_a
    assert "different environments" in out
    assert "performance profiles: compare.png" in out
    assert (tmp_path / "compare.png").stat().st_size > 1000
    out_path = tmp_path / "plots" / "best.png"
    assert main(["compare", str(a), str(b), str(a), "--score", "best",
                 "--out", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert f"P({b} > {a}) = 1.000 [1.000, 1.000]" in out   # a repeated name: paths label
    assert out_path.is_file()


@pytest.mark.parametrize("args, expected", [
    (["compare", "{a}"], "at least two run directories"),
    (["compare", "{a}", "{missing}"], "no run directory at"),
    (["compare", "{a}", "{empty}"], "has no summary.json"),
    (["compare", "{a}", "{unscored}"], "no seed has a final greedy score"),
    (["compare", "{a}", "{a}", "--normalised"], "no human-normalised scores"),
    (["compare", "{a}", "{a}", "--out", "profile.svg"], "--out must name a .png"),
    (["compare", "{a}", "{a}", "--score", "worst"], "invalid choice"),
])
def test_compare_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch,
                                                              args, expected):
    paths = {"a": fake_run(tmp_path / "a", [1.0, 2.0]), "missing": tmp_path / "missing",
             "unscored": fake_run(tmp_path / "unscored", [None, None]),
             "empty": tmp_path / "empty"}
    paths["empty"].mkdir()
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_plot_draws_iqm_bands_by_default_and_per_seed_lines_on_request(tmp_path, capsys,
                                                                       monkeypatch):
    rows = [(step, seed, step / 100 + seed) for step in (100, 200, 300) for seed in range(4)]
    run = fake_run(tmp_path / "run", [3.0, 4.0, 5.0, 6.0], eval_rows=rows)
    drawn = {}

    def spy(ax, steps, values, label, color, per_seed=False):
        drawn.update(label=label, per_seed=per_seed, values=values)
        ax.plot(steps, values[:, 0], label=label)
    monkeypatch.setattr(plots, "_iqm_band_plot", spy)
    assert main(["plot", str(run), "--out", str(tmp_path / "iqm.png")]) == 0
    assert "IQM and 95% CI" in drawn["label"] and not drawn["per_seed"]
    assert drawn["values"].shape == (3, 4)
    monkeypatch.undo()
    for extra in ([], ["--per-seed"], ["--aggregate", "mean", "--per-seed"]):
        out = tmp_path / f"runs{len(extra)}.png"
        assert main(["plot", str(run), "--out", str(out), *extra]) == 0
        assert out.stat().st_size > 1000 and str(out) in capsys.readouterr().out
