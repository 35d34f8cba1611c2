"""Scores over seeds with their uncertainty, as Agarwal et al. 2021 recommend: "Deep
Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS 2021), whose
``rliable`` library these estimators follow.

A handful of seeds gives a point estimate that moves a lot from one set of seeds to the
next, so every aggregate comes with a 95% stratified-bootstrap confidence interval (the
percentile method), and runs are compared by the probability of improvement and by
performance profiles rather than by their means alone.

Scores are arranged as rliable arranges them: ``[seeds]`` for one task, or ``[seeds,
tasks]`` (several games); a sweep's configurations are separate calls, one per
configuration. Numpy only: rliable itself pulls in ``arch``, ``statsmodels`` and
``pandas``, more than a training run should carry, so it is only the tests' reference
(tests/test_statistics.py checks these functions against it on fixed numbers).

The bootstrap draws with NumPy's legacy ``RandomState`` from a fixed seed: its stream is
frozen across NumPy versions, so a summary is reproducible, and it draws the indices
exactly as rliable's bootstrap does from NumPy's global stream after ``np.random.seed`` with
the same seed, so the intervals match rliable's to the last bit.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

CONFIDENCE = 0.95
REPS = 2000            # bootstrap resamples: enough for stable 95% limits, a few ms a call
BOOTSTRAP_SEED = 0
METHOD = ("stratified bootstrap over seeds, percentile 95% intervals (Agarwal et al. 2021, "
          "'Deep RL at the Edge of the Statistical Precipice', NeurIPS)")


class Interval(NamedTuple):
    """A point estimate and its confidence interval."""
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.low, self.high]}

    def text(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def runs_by_tasks(scores) -> np.ndarray:
    """Scores as a finite [seeds, tasks] float array: a [seeds] vector is one task."""
    table = np.asarray(scores, np.float64)
    if table.ndim == 1:
        table = table[:, None]
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(f"scores must be [seeds] or [seeds, tasks] with at least one "
                         f"score, got shape {np.shape(scores)}")
    if not np.isfinite(table).all():
        raise ValueError("scores must be finite (drop seeds without a score first)")
    return table


def finite_scores(per_seed: Sequence[float | None]) -> np.ndarray:
    """Per-seed scores without the seeds that have none (None or NaN: no episode finished,
    and a partial game is no score)."""
    values = np.array([np.nan if s is None else s for s in per_seed], np.float64)
    return values[np.isfinite(values)]


# ------------------------------------------------------------------- aggregate estimators
# Each maps pooled scores [..., n] (every seed of every task) to [...].


def pooled_mean(pooled: np.ndarray) -> np.ndarray:
    """The mean of all runs' scores (rliable's ``aggregate_mean`` where every task has as
    many seeds): dominated by outlying runs, so never alone (Agarwal et al. 2021)."""
    return pooled.mean(axis=-1)


def pooled_median(pooled: np.ndarray) -> np.ndarray:
    """The median of all runs' scores: over one task's seeds, the median seed. (rliable's
    ``aggregate_median`` is the median over tasks of per-task means, which on one task
    would be the mean again.) Robust but with high variance (Agarwal et al. 2021)."""
    return np.median(pooled, axis=-1)


def interquartile_mean(pooled: np.ndarray) -> np.ndarray:
    """IQM: the mean of the middle 50% of all runs' scores, dropping floor(n/4) at each end
    as ``scipy.stats.trim_mean(x, 0.25)`` (rliable's ``aggregate_iqm``) does; robust to
    outliers yet less variable than the median (Agarwal et al. 2021)."""
    ordered = np.sort(pooled, axis=-1)
    n = ordered.shape[-1]
    cut = int(0.25 * n)
    return ordered[..., cut:n - cut].mean(axis=-1)


AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": pooled_mean, "median": pooled_median, "iqm": interquartile_mean}


# ------------------------------------------------------------------------------ bootstrap


def stratified_resamples(table: np.ndarray, reps: int = REPS,
                         seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[reps, seeds, tasks]: each task's seeds drawn with replacement, tasks kept (a
    stratified bootstrap, Agarwal et al. 2021; rliable's ``StratifiedBootstrap``,
    whose draws these are for the same seed)."""
    seeds, tasks = table.shape
    rows = np.random.RandomState(seed).choice(seeds, (reps, seeds, tasks), replace=True)
    return table[rows, np.arange(tasks)]


def percentile_interval(point: float, replicates: np.ndarray,
                        confidence: float = CONFIDENCE) -> Interval:
    """The percentile bootstrap interval (rliable's default method)."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high))


def aggregate(scores, reps: int = REPS, seed: int = BOOTSTRAP_SEED,
              confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """Mean, median and IQM of [seeds] or [seeds, tasks] scores, each with its stratified
    bootstrap interval (Agarwal et al. 2021). One seed: every interval is the point."""
    table = runs_by_tasks(scores)
    resampled = stratified_resamples(table, reps, seed).reshape(reps, -1)
    pooled = table.reshape(-1)
    return {name: percentile_interval(estimator(pooled), estimator(resampled), confidence)
            for name, estimator in AGGREGATES.items()}


def iqm_curve(values: np.ndarray, reps: int = REPS, seed: int = BOOTSTRAP_SEED,
              confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning curves [steps, seeds] (NaN where a seed has no score) -> IQM over the
    seeds with a score at each step, and its interval: iqm, low, high [steps], NaN where
    no seed scored (Agarwal et al. 2021 plot IQM curves with their intervals)."""
    values = np.asarray(values, np.float64)
    curve = np.full((3, values.shape[0]), np.nan)
    for step, row in enumerate(values):
        scores = row[np.isfinite(row)]
        if scores.size:
            curve[:, step] = aggregate(scores, reps, seed, confidence)["iqm"]
    return curve[0], curve[1], curve[2]


# ---------------------------------------------------------------- comparing two algorithms


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[..., nx, tasks] and [..., ny, tasks] -> [...]: the chance that a run of X beats a
    run of Y on a task (ties count half), averaged over tasks."""
    beats = x[..., :, None, :] > y[..., None, :, :]
    ties = x[..., :, None, :] == y[..., None, :, :]
    return (beats + 0.5 * ties).mean(axis=(-3, -2)).mean(axis=-1)


def probability_of_improvement(x, y, reps: int = REPS, seed: int = BOOTSTRAP_SEED,
                               confidence: float = CONFIDENCE) -> Interval:
    """P(X > Y): the probability that a run of X scores above a run of Y on the same task,
    averaged over tasks; per task the Mann-Whitney U statistic over all pairs of runs
    divided by their number (Agarwal et al. 2021, "probability of improvement";
    rliable's ``probability_of_improvement``). Its interval resamples X's and Y's seeds
    independently, per task, as rliable's ``StratifiedIndependentBootstrap`` does. X and Y
    may have different numbers of seeds, not of tasks."""
    x, y = runs_by_tasks(x), runs_by_tasks(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X has {x.shape[1]} tasks, Y {y.shape[1]}")
    random = np.random.RandomState(seed)
    rows_x = np.empty((reps, *x.shape), np.int64)
    rows_y = np.empty((reps, *y.shape), np.int64)
    for rep in range(reps):   # rliable's order: X's draw, then Y's, per resample
        rows_x[rep] = random.choice(x.shape[0], x.shape, replace=True)
        rows_y[rep] = random.choice(y.shape[0], y.shape, replace=True)
    replicates = _improvement(x[rows_x, np.arange(x.shape[1])],
                              y[rows_y, np.arange(y.shape[1])])
    return percentile_interval(_improvement(x, y), replicates, confidence)


def performance_profile(scores, thresholds, reps: int = REPS, seed: int = BOOTSTRAP_SEED,
                        confidence: float = CONFIDENCE
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fraction of runs (seeds x tasks) scoring above each threshold tau, with its
    stratified bootstrap interval: fraction, low, high [thresholds]. The run-score
    distribution of Agarwal et al. 2021 ("performance profiles"), rliable's
    ``create_performance_profile`` with score distributions."""
    table = runs_by_tasks(scores)
    taus = np.asarray(thresholds, np.float64)
    resampled = stratified_resamples(table, reps, seed).reshape(reps, 1, -1)
    replicates = (resampled > taus[None, :, None]).mean(axis=-1)      # [reps, thresholds]
    fraction = (table.reshape(1, -1) > taus[:, None]).mean(axis=-1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail], axis=0)
    return fraction, low, high


# ------------------------------------------------------------------------ summary.json


def score_statistics(per_seed: Sequence[float | None], reps: int = REPS,
                     seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """One summary.json entry: how many seeds have a score, and mean, median and IQM over
    them with their 95% intervals (null where no seed has a score)."""
    scores = finite_scores(per_seed)
    if not scores.size:
        return {"seeds": 0, **{name: None for name in AGGREGATES}}
    estimates = aggregate(scores, reps, seed)
    return {"seeds": int(scores.size),
            **{name: interval.to_json() for name, interval in estimates.items()}}


# summary.json's per-seed score lists and the statistics entries made from them
SUMMARY_SCORES = (("final", "final_scores"), ("best", "best_scores"),
                  ("final_normalised", "final_normalised_scores"),
                  ("best_normalised", "best_normalised_scores"))


def summary_statistics(summary: dict[str, Any]) -> dict[str, Any]:
    """The ``statistics`` block of a run's summary.json: the final and best greedy scores
    over seeds, and for Atari the same human-normalised, each as ``score_statistics``."""
    block: dict[str, Any] = {"method": METHOD, "confidence": CONFIDENCE, "reps": REPS,
                             "bootstrap_seed": BOOTSTRAP_SEED}
    for name, key in SUMMARY_SCORES:
        if summary.get(key) is not None:
            block[name] = score_statistics(summary[key])
    return block
