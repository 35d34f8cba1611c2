"""SpaceInvaders-MinAtar learning curves and table from one or more run directories.

The runs themselves are long (5M steps per seed for 4 vmapped seeds takes several hours on the
2-core CPU), so they go in the background, resumed session after session:

    python -m jaxatari train minatar-dqn --seeds 4 --run-dir runs/minatar-dqn
    python -m jaxatari train minatar-dqn --seeds 4 --resume runs/minatar-dqn   # after a stop

and this script reports wherever they have got to, partial runs marked as such:

    PYTHONPATH=$PWD python scripts/minatar_results.py runs/minatar-dqn [more runs] \
        [--out results/minatar-spaceinvaders]

Two scores per run, per seed. Training score: the mean raw return of the episodes that ended in
the last ``--window`` steps of training (epsilon-greedy at 0.1), the figure Young and Tian
(2019) report, whose DQN reaches about 43 at 5M frames (MinAtar has no frame skip, so frames
are agent steps). Validation score: the preset's greedy evaluation (epsilon 0.001, 16 envs,
20k steps per seed) at the latest validation. Writes ``<out>.json``, ``<out>.md``,
``<out>-training.png`` and ``<out>-validation.png``; what is written by hand about the runs goes
in ``<out>-notes.md``, which each rerun copies to the end of ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from jaxatari.plots import eval_series, plot_runs, progress_series
from scripts.provenance import commit_label, write_result

PUBLISHED_DQN = 43.0   # Young and Tian 2019, DQN on SpaceInvaders-MinAtar at 5M frames
TARGET_STEPS = 5_000_000


def run_summary(run_dir: Path, window: int) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    train_steps, train_scores = progress_series(run_dir, "score")      # [N], [N, S]
    eval_steps, eval_scores = eval_series(run_dir, "score")
    if len(train_steps) == 0:
        raise SystemExit(f"{run_dir}: no training progress logged yet (progress.csv is empty)")
    last = int(train_steps[-1])
    recent = train_steps > last - window
    training = np.nanmean(train_scores[recent], axis=0)
    summary = {"run_dir": str(run_dir), "preset": config.get("preset"),
               "options": {k: config.get(k) for k in ("double_q", "duel", "mem_priority",
                                                        "pal_alpha", "bootstraps", "n_step")},
               "steps": last, "complete": last >= TARGET_STEPS, "seeds": train_scores.shape[1],
               "training_score_per_seed": [round(float(x), 2) for x in training],
               "training_score_mean": round(float(np.nanmean(training)), 2),
               "training_window_steps": window}
    if len(eval_steps):
        summary.update(
            validation_step=int(eval_steps[-1]),
            validation_score_per_seed=[round(float(x), 2) for x in eval_scores[-1]],
            validation_score_mean=round(float(np.nanmean(eval_scores[-1])), 2),
            best_validation_score_mean=round(float(np.nanmax(np.nanmean(eval_scores, 1))), 2))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=100_000,
                        help="training steps the training score averages over (default 100k)")
    parser.add_argument("--out", default="results/minatar-spaceinvaders")
    args = parser.parse_args()
    commit = commit_label()   # before the plots are written: they are not "changes"
    missing = [str(d) for d in args.run_dirs if not (d / "config.json").is_file()]
    if missing:
        raise SystemExit(f"not a run directory (no config.json): {', '.join(missing)}")
    runs = [run_summary(d, args.window) for d in args.run_dirs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_runs(args.run_dirs, out.with_name(out.name + "-training.png"), training=True,
              reference=(PUBLISHED_DQN, f"Young & Tian DQN at 5M (~{PUBLISHED_DQN:g})"))
    plot_runs(args.run_dirs, out.with_name(out.name + "-validation.png"))
    lines = ["# SpaceInvaders-MinAtar", "",
             f"Published DQN reference: about {PUBLISHED_DQN:g} (training return) at 5M frames "
             "(Young and Tian 2019). A run short of 5M steps is marked partial: its scores are "
             "where it stands, not where it ends.", "",
             "| run | steps per seed | training score per seed (last "
             f"{args.window // 1000}k steps) | mean | greedy validation per seed | mean |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        status = "" if run["complete"] else " (partial)"
        validation = ", ".join(f"{x:.1f}" for x in run.get("validation_score_per_seed", []))
        lines.append(f"| {Path(run['run_dir']).name} | {run['steps']:,}{status} | "
                     + ", ".join(f"{x:.1f}" for x in run["training_score_per_seed"])
                     + f" | {run['training_score_mean']:.1f} | {validation or '-'} | "
                     + (f"{run['validation_score_mean']:.1f} |" if validation else "- |"))
    lines += ["", f"Curves: `{out.name}-training.png` (training score), "
              f"`{out.name}-validation.png` (greedy validation score)."]
    command = "PYTHONPATH=$PWD python " + " ".join(["scripts/minatar_results.py", *sys.argv[1:]])
    record = {"experiment": "SpaceInvaders-MinAtar, whole loop in XLA, seeds vmapped",
              "published_dqn_at_5M": PUBLISHED_DQN, "command": command,
              "commit": commit, "runs": runs}
    write_result(out, record, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
