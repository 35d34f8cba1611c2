"""``compare``: which of several finished runs is better, with honest uncertainty.

  jaxatari compare RUN_A RUN_B [RUN ...] [--score final|best] [--normalised] [--out FILE]

From each run's summary.json (the greedy score of each seed): the IQM, mean and median over
seeds with 95% stratified-bootstrap intervals, the probability of improvement of each run
over each other with its interval, and a performance-profile PNG (the fraction of seeds
scoring above each threshold, with bands), as Agarwal et al. 2021 recommend ("Deep RL at the
Edge of the Statistical Precipice", NeurIPS); the statistics are jaxatari.statistics.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DEFAULT_OUT = "compare.png"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare finished runs: probability of improvement, IQM, "
                        "performance profile",
        description="Compare two or more finished runs by their greedy scores per seed "
                    "(summary.json): IQM, mean and median over seeds with 95% "
                    "stratified-bootstrap intervals, the probability that a seed of one run "
                    "scores above a seed of another with its interval, and a "
                    "performance-profile PNG (Agarwal et al. 2021).")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="two or more finished run directories")
    parser.add_argument("--score", choices=("final", "best"), default="final",
                        help="the last evaluation's greedy score per seed, or the best of "
                             "its evaluations (default: final)")
    parser.add_argument("--normalised", action="store_true",
                        help="human-normalised scores (Atari runs only)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="FILE",
                        help=f"the performance-profile PNG to write (default: {DEFAULT_OUT} "
                             "in the current directory)")
    parser.set_defaults(run=run_compare)


def summary_scores(run_dir: Path, score: str, normalised: bool) -> tuple[str, np.ndarray]:
    """(the run's env, its seeds' scores with a value) from its summary.json; ConfigError
    (one line) where the run has none to compare."""
    from jaxatari.config import ConfigError
    from jaxatari.statistics import finite_scores

    if not run_dir.is_dir():
        raise ConfigError(f"no run directory at {run_dir}")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no summary.json: not a run directory, or the run "
                          "has not finished")
    try:
        summary: Any = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is corrupt (not JSON)") from None
    key = f"{score}_normalised_scores" if normalised else f"{score}_scores"
    if not isinstance(summary, dict) or not isinstance(summary.get(key), list):
        what = ("human-normalised scores (Atari runs have them)" if normalised
                else f"{score} scores")
        raise ConfigError(f"{path} has no {what}")
    try:
        scores = finite_scores(summary[key])
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {key} holds something other than numbers") from None
    if not scores.size:
        raise ConfigError(f"{run_dir}: no seed has a {score} greedy score (no greedy episode "
                          "finished), nothing to compare")
    return str(summary.get("env", "?")), scores


def run_labels(run_dirs: list[Path]) -> list[str]:
    """The runs' directory names, or the paths as given where names repeat."""
    names = [d.name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def plot_profiles(path: Path, labels: list[str], scores: list[np.ndarray],
                  xlabel: str) -> None:
    """Performance profiles: the fraction of each run's seeds scoring above tau, with its
    95% stratified-bootstrap band (Agarwal et al. 2021)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxatari.statistics import performance_profile

    everything = np.concatenate(scores)
    low, high = float(everything.min()), float(everything.max())
    margin = 0.05 * (high - low) or 1.0
    taus = np.linspace(low - margin, high + margin, 201)
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for label, run_scores in zip(labels, scores):
        fraction, lower, upper = performance_profile(run_scores, taus)
        seeds = f"{run_scores.size} seed{'s' if run_scores.size > 1 else ''}"
        line, = ax.plot(taus, fraction, lw=2, label=f"{label} ({seeds})")
        ax.fill_between(taus, lower, upper, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel(f"threshold tau ({xlabel})")
    ax.set_ylabel("fraction of seeds scoring above tau")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("performance profiles, 95% stratified-bootstrap bands", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_compare(args) -> int:
    from jaxatari.config import ConfigError
    from jaxatari.statistics import REPS, aggregate, probability_of_improvement

    run_dirs = [Path(d) for d in args.run_dirs]
    if len(run_dirs) < 2:
        raise ConfigError("compare needs at least two run directories")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {out}")
    envs, scores = zip(*(summary_scores(d, args.score, args.normalised) for d in run_dirs))
    labels = run_labels(run_dirs)
    what = f"{args.score} greedy score" + (", human-normalised" if args.normalised else "")

    print(f"{what} over seeds, with 95% intervals from a stratified bootstrap ({REPS} "
          "resamples; Agarwal et al. 2021)")
    width = max(len(label) for label in labels)
    print(f"{'run':<{width}}  {'seeds':>5}  {'IQM':>24}  {'mean':>24}  {'median':>24}")
    for label, run_scores in zip(labels, scores):
        estimates = aggregate(run_scores)
        print(f"{label:<{width}}  {run_scores.size:>5}  "
              + "  ".join(f"{estimates[name].text():>24}" for name in ("iqm", "mean", "median")))
    print("\nprobability of improvement P(X > Y): the chance that a seed of X scores above a "
          "seed of Y (ties count half), with its 95% interval")
    for i, (label_x, x) in enumerate(zip(labels, scores)):
        for j, (label_y, y) in enumerate(zip(labels, scores)):
            if i != j:
                print(f"P({label_x} > {label_y}) = {probability_of_improvement(x, y).text()}")
    if len(set(envs)) > 1:
        print(f"note: the runs play different environments ({', '.join(sorted(set(envs)))}): "
              "their raw scores are not on one scale")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_profiles(out, labels, list(scores), what)
    print(f"performance profiles: {out}")
    return 0
