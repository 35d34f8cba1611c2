"""``plot``: overlay the evaluation curves of several runs; redraw a run's own plots.

  jaxatari plot RUN_DIR [RUN_DIR ...] [--out FILE] [--metric score|normalised_score|v|td_error]
                [--aggregate iqm|mean] [--per-seed]

The overlay draws, per run, the interquartile mean over seeds at each evaluation with its
95% stratified-bootstrap band (Agarwal et al. 2021, jaxatari.statistics); ``--aggregate
mean`` draws the mean with a min-max band instead.
"""
from __future__ import annotations

from pathlib import Path

METRICS = ("score", "normalised_score", "v", "td_error")
AGGREGATES = ("iqm", "mean")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="overlay several runs' evaluation curves in one PNG",
        description="Overlay the evaluation curves of one or more runs (by default the "
                    "interquartile mean over seeds at each evaluation with its 95% "
                    "stratified-bootstrap band, Agarwal et al. 2021), and redraw each run's "
                    "own PNGs (scores, normalised scores, V, TD error, loss) from its CSV "
                    "logs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--out", default="runs.png", metavar="FILE",
                        help="the overlay PNG to write (default: runs.png)")
    parser.add_argument("--metric", choices=METRICS, default="score",
                        help="which evaluation statistic (default: score)")
    parser.add_argument("--aggregate", choices=AGGREGATES, default="iqm",
                        help="over seeds: iqm (interquartile mean with its 95%% "
                             "stratified-bootstrap band) or mean (with a min-max band) "
                             "(default: iqm)")
    parser.add_argument("--per-seed", action="store_true",
                        help="draw each seed's curve too")
    parser.set_defaults(run=run_plot)


def run_plot(args) -> int:
    from jaxatari.config import ConfigError
    from jaxatari.plots import eval_series, plot_run, plot_runs

    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise ConfigError(f"no run directory at {run_dir}")
        if not (run_dir / "eval.csv").is_file():
            raise ConfigError(f"{run_dir} has no eval.csv: not a run directory, or no "
                              "evaluation yet")
    plotted = [d for d in run_dirs if len(eval_series(d, args.metric)[0])]
    if not plotted:
        raise ConfigError(f"no run has a {args.metric!r} value to plot")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    for run_dir in run_dirs:
        for path in plot_run(run_dir, title=run_dir.name):
            print(f"wrote {path}")
    plot_runs(plotted, out, column=args.metric, aggregate=args.aggregate,
              per_seed=args.per_seed)
    print(f"wrote {out}")
    return 0
