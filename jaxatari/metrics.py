"""Run logging: progress bar, CSV, TensorBoard, summary, plots. numpy only on the way in.

Files in RUN_DIR:
  progress.csv   per chunk and seed: training episodes and their mean raw game score,
                 loss, |TD error|, mean max-Q, epsilon, steps/s
  eval.csv       per evaluation and seed: mean raw game score over finished episodes
  episodes.csv   (--verbose) every finished training episode's raw game score
  tb/            TensorBoard event files (tensorboardX)
  curves.png     evaluation score and training score against steps: mean over seeds
                 with a min-max band, and each seed
  summary.json   written last: its presence marks a finished run
"""
from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass
class Evaluation:
    step: int
    scores: np.ndarray      # [S] mean raw game score over finished episodes
    episodes: np.ndarray    # [S] finished episodes


def mean_score(total, episodes, partial) -> np.ndarray:
    """Mean raw score over finished episodes, or the running episodes' mean score where
    none finished (as the original's validation)."""
    total, episodes, partial = (np.asarray(x, np.float64) for x in (total, episodes, partial))
    return np.where(episodes > 0, total / np.maximum(episodes, 1), partial)


class RunLogger:
    def __init__(self, run_dir: Path, config, quiet: bool = False):
        self.run_dir = Path(run_dir)
        self.config = config
        self.seeds = config.seeds
        self.quiet = quiet
        self.started = time.perf_counter()
        self.steps_done = 0
        self.train_rows: list[tuple[int, int, float]] = []   # (step, seed, mean score)
        self.eval_rows: list[tuple[int, int, float]] = []

    def __enter__(self):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress_file = (self.run_dir / "progress.csv").open("w", newline="")
        self.progress = csv.writer(self.progress_file)
        self.progress.writerow(["step", "seed", "episodes", "score", "loss", "td_error", "q_mean",
                                "epsilon", "steps_per_second"])
        self.eval_file = (self.run_dir / "eval.csv").open("w", newline="")
        self.evals = csv.writer(self.eval_file)
        self.evals.writerow(["step", "seed", "score", "episodes"])
        self.episode_file = None
        if self.config.verbose:
            self.episode_file = (self.run_dir / "episodes.csv").open("w", newline="")
            self.episodes = csv.writer(self.episode_file)
            self.episodes.writerow(["step", "seed", "score"])
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(self.run_dir / "tb"))
        except ImportError:  # logging must never stop training
            self.tb = None
        self.bar = None
        self.plain = not self.quiet and not sys.stderr.isatty()  # CI logs: a line per chunk
        if not self.quiet and not self.plain:
            from tqdm import tqdm
            self.bar = tqdm(total=self.config.steps, unit="step", dynamic_ncols=True,
                            desc=f"{self.config.preset or 'train'} x{self.seeds} seeds",
                            smoothing=0.1)
        return self

    def log_chunk(self, step: int, out: dict[str, np.ndarray], epsilon: float, seconds: float,
                  steps: int) -> None:
        """``out`` holds a chunk's outputs: scores/finished [T, S, E], loss etc. [T, S], learned [T]."""
        finished = np.asarray(out["finished"], bool)
        scores = np.asarray(out["scores"], np.float64)
        learned = np.asarray(out["learned"], bool)
        speed = steps / max(seconds, 1e-9)
        for seed in range(self.seeds):
            done = finished[:, seed]
            count = int(done.sum())
            mean = float(scores[:, seed][done].mean()) if count else float("nan")
            stats = {name: float(np.asarray(out[name])[learned, seed].mean()) if learned.any()
                     else float("nan") for name in ("loss", "td_error", "q_mean")}
            self.progress.writerow([step, seed, count, mean, stats["loss"], stats["td_error"],
                                    stats["q_mean"], float(epsilon), round(speed, 1)])
            if count:
                self.train_rows.append((step, seed, mean))
            if self.tb is not None:
                if count:
                    self.tb.add_scalar(f"seed{seed}/train_score", mean, step)
                for name, value in stats.items():
                    if not np.isnan(value):
                        self.tb.add_scalar(f"seed{seed}/{name}", value, step)
            if self.episode_file is not None:
                for t, e in zip(*np.nonzero(done)):
                    self.episodes.writerow([step, seed, float(scores[t, seed, e])])
        if self.tb is not None:
            self.tb.add_scalar("epsilon", float(epsilon), step)
            self.tb.add_scalar("steps_per_second", speed, step)
        self.progress_file.flush()
        recent = [row[2] for row in self.train_rows[-self.seeds:]]
        score = f"{np.mean(recent):.3g}" if recent else "-"
        if self.bar is not None:
            self.bar.update(step - self.steps_done)
            self.bar.set_postfix(score=score, eps=f"{float(epsilon):.3f}",
                                 sps=f"{speed * self.seeds:,.0f}")
        elif self.plain:
            elapsed = time.perf_counter() - self.started
            remaining = elapsed / max(step, 1) * (self.config.steps - step)
            print(f"step {step:>10,}/{self.config.steps:,}  training score {score}  "
                  f"epsilon {float(epsilon):.3f}  {speed * self.seeds:,.0f} steps/s  "
                  f"elapsed {elapsed:.0f}s  eta {remaining:.0f}s", file=sys.stderr, flush=True)
        self.steps_done = step

    def log_eval(self, step: int, scores: np.ndarray, episodes: np.ndarray) -> None:
        for seed in range(self.seeds):
            self.evals.writerow([step, seed, float(scores[seed]), int(episodes[seed])])
            self.eval_rows.append((step, seed, float(scores[seed])))
            if self.tb is not None:
                self.tb.add_scalar(f"seed{seed}/eval_score", float(scores[seed]), step)
        self.eval_file.flush()
        line = f"step {step:>10,}  greedy score per seed: " + " ".join(f"{s:.3g}" for s in scores)
        if self.bar is not None:
            self.bar.write(line)
        elif self.plain:
            print(line, file=sys.stderr, flush=True)

    def finish(self, summary: dict[str, Any]) -> None:
        plot_curves(self.run_dir / "curves.png", self.eval_rows, self.train_rows, self.seeds,
                    title=f"{summary['preset']} on {summary['env']}")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.close()
        for f in (self.progress_file, self.eval_file, self.episode_file):
            if f is not None:
                f.close()
        if self.tb is not None:
            self.tb.close()
        return False


def _series(rows: list[tuple[int, int, float]], seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """rows (step, seed, value) -> steps [N], values [N, S] (NaN where a seed has none)."""
    steps = np.array(sorted({row[0] for row in rows}))
    values = np.full((len(steps), seeds), np.nan)
    where = {step: i for i, step in enumerate(steps)}
    for step, seed, value in rows:
        values[where[step], seed] = value
    return steps, values


def plot_curves(path: Path, eval_rows, train_rows, seeds: int, title: str) -> None:
    """Evaluation and training scores against steps: mean over seeds with a min-max band, and
    each seed as a thin line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, rows, label in ((axes[0], eval_rows, "greedy evaluation score"),
                            (axes[1], train_rows, "training episode score")):
        if rows:
            steps, values = _series(rows, seeds)
            for seed in range(seeds):
                ax.plot(steps, values[:, seed], lw=0.7, alpha=0.5)
            with np.errstate(all="ignore"):
                ax.fill_between(steps, np.nanmin(values, 1), np.nanmax(values, 1), alpha=0.2,
                                color="k", lw=0)
                ax.plot(steps, np.nanmean(values, 1), color="k", lw=2, label=f"mean of {seeds}")
            ax.legend(loc="best")
        ax.set_xlabel("agent steps per seed")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
