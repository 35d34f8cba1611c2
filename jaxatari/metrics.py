"""Run logging: progress bar, CSV, TensorBoard, summary (the plots are ``jaxatari.plots``).
numpy only on the way in.

Files in RUN_DIR:
  progress.csv   per chunk and seed: training episodes and their mean raw game score,
                 loss, |TD error|, mean max-Q, epsilon, steps/s
  eval.csv       per evaluation and seed: mean raw game score over finished episodes, their
                 number, the human-normalised score (Atari only, jaxatari.human_scores), and
                 the average V and |TD error| on the held-out transitions
  episodes.csv   (--verbose) every finished training episode's raw game score
  weights.csv    (--report-weights) at each validation, per seed and parameter tensor: mean
                 and max |w|, and mean and max |w - w at the previous report| (the original's
                 -reportWeights logged |dw| of the last update instead)
  tb/            TensorBoard event files (tensorboardX)
  curves.png     evaluation score and training score against steps: mean over seeds
                 with a min-max band, and each seed
  scores.png, normalised_scores.png (Atari), v.png, td_error.png, loss.png
                 the same layout for each validation statistic and the training loss
  conv_filters.png  the first convolutional layer's filters as an image grid
  summary.json   written last: its presence marks a finished run; scores per seed and
                 their statistics over seeds (jaxatari.statistics, Agarwal et al. 2021)

A resumed run (``RunLogger(resume_step=N)``) keeps the rows up to step N, drops those
written after its checkpoint, and appends; TensorBoard purges the events after step N.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxatari.plots import csv_number, plot_curves, plot_filters, plot_run


@dataclasses.dataclass
class Evaluation:
    step: int
    scores: np.ndarray      # [S] mean raw game score over finished episodes
    episodes: np.ndarray    # [S] finished episodes
    normalised: np.ndarray | None = None   # [S] human-normalised score (Atari games only)
    v: np.ndarray | None = None            # [S] average V on the held-out transitions
    td_error: np.ndarray | None = None     # [S] average |TD error| on them

    def to_json(self) -> dict[str, Any]:
        def listed(x):
            return None if x is None else finite_or_none(x)
        return {"step": int(self.step), "scores": listed(self.scores),
                "episodes": [int(e) for e in np.asarray(self.episodes)],
                "normalised": listed(self.normalised), "v": listed(self.v),
                "td_error": listed(self.td_error)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "Evaluation":
        def array(x):
            return None if x is None else np.asarray(x, np.float64)
        return cls(step=int(record["step"]), scores=array(record["scores"]),
                   episodes=np.asarray(record["episodes"], np.int64),
                   normalised=array(record.get("normalised")), v=array(record.get("v")),
                   td_error=array(record.get("td_error")))


@dataclasses.dataclass(frozen=True)
class ChunkStats:
    """One chunk's training statistics, as every loop hands them to ``RunLogger.log_chunk``.

    scores [T, S, E]: the raw game score where ``finished`` [T, S, E] (an episode ended);
    loss, td_error, q_mean [U, S]: the learner's, on the update rows where ``learned`` [U].
    """

    scores: np.ndarray
    finished: np.ndarray
    loss: np.ndarray
    td_error: np.ndarray
    q_mean: np.ndarray
    learned: np.ndarray

    @classmethod
    def of(cls, out) -> "ChunkStats":
        """From a jitted chunk's outputs (a mapping of the same names)."""
        return cls(**{f.name: np.asarray(out[f.name]) for f in dataclasses.fields(cls)})


def mean_score(total, episodes, partial=None) -> np.ndarray:
    """Mean raw score over finished episodes; NaN (shown as n/a) where none finished.

    ``partial``, the running episodes' scores so far, is deliberately not used: the original
    reported it, but a game cut short is no score (a random Pong agent's -6 after a few
    points reads as half of human once normalised)."""
    del partial
    total, episodes = (np.asarray(x, np.float64) for x in (total, episodes))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(episodes > 0, total / np.maximum(episodes, 1), np.nan)


def score_text(score: float, episodes: int) -> str:
    """A score with the number of finished episodes it is the mean of: "0.55 (16)", or
    "n/a (0)" when no episode finished."""
    return f"{score:.3g} ({int(episodes)})" if np.isfinite(score) else f"n/a ({int(episodes)})"


def finite_or_none(values) -> list[float | None]:
    """Scores for JSON: NaN (no finished episode) becomes null."""
    return [float(x) if np.isfinite(x) else None for x in np.asarray(values, np.float64)]


NO_EPISODE_NOTE = ("n/a: no greedy episode finished within --val-steps, so there is no score "
                   "(partial games are not scored); raise --val-steps")


PROGRESS_HEADER = ["step", "seed", "episodes", "score", "loss", "td_error", "q_mean", "epsilon",
                   "steps_per_second"]
EVAL_HEADER = ["step", "seed", "score", "episodes", "normalised_score", "v", "td_error"]
LOG_FILE = "log.txt"
EPISODE_HEADER = ["step", "seed", "score"]
WEIGHTS_HEADER = ["step", "seed", "layer", "mean_abs_w", "max_abs_w", "mean_abs_dw",
                  "max_abs_dw"]


def layer_arrays(params) -> dict[str, np.ndarray]:
    """Flat {"body/Conv_0/kernel": array} of a (seed-stacked) parameter tree, in tree order."""
    import jax
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    names = {}
    for path, leaf in flat:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        if keys and keys[0] == "params":
            keys = keys[1:]
        names["/".join(keys)] = np.asarray(leaf)
    return names


def weight_stats(layers: dict[str, np.ndarray], previous: dict[str, np.ndarray] | None,
                 seeds: int) -> list[tuple[int, str, float, float, float, float]]:
    """(seed, layer, mean |w|, max |w|, mean |dw|, max |dw|) for seed-stacked ``layers``
    (``layer_arrays``); dw is the change since ``previous`` (NaN without one)."""
    rows = []
    for layer, w in layers.items():
        w = w.reshape(seeds, -1).astype(np.float64)
        dw = None
        if previous is not None and layer in previous:
            dw = np.abs(w - previous[layer].reshape(seeds, -1).astype(np.float64))
        for seed in range(seeds):
            d_mean = float(dw[seed].mean()) if dw is not None else math.nan
            d_max = float(dw[seed].max()) if dw is not None else math.nan
            rows.append((seed, layer, float(np.abs(w[seed]).mean()),
                         float(np.abs(w[seed]).max()), d_mean, d_max))
    return rows


def _kept_rows(path: Path, header: list[str], resume_step: int | None) -> list[list[str]]:
    """The rows of an existing CSV up to ``resume_step`` (none for a fresh run)."""
    if resume_step is None or not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != header[:2]:
        return []
    kept = []
    for row in rows[1:]:
        try:
            if int(float(row[0])) <= resume_step:
                kept.append(row)
        except (ValueError, IndexError):
            continue
    return kept


class RunLogger:
    def __init__(self, run_dir: Path, config, quiet: bool = False,
                 resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.config = config
        self.seeds = config.seeds
        self.quiet = quiet
        self.resume_step = resume_step
        self.started = time.perf_counter()
        self.steps_done = resume_step or 0
        self.train_rows: list[tuple[int, int, float]] = []   # (step, seed, mean score)
        self.eval_rows: list[tuple[int, int, float]] = []
        self.prog_freq = getattr(config, "prog_freq", 0)
        self.next_line = ((self.steps_done // self.prog_freq + 1) * self.prog_freq
                          if self.prog_freq else 0)
        self.report_weights = getattr(config, "report_weights", False)
        self.previous_weights: dict[str, np.ndarray] | None = None

    def _open(self, name: str, header: list[str]):
        """Opens a CSV for appending, after the header and the rows kept from before a resume.

        The kept rows go to a side file that replaces the old one in one rename, so a run
        killed right after resuming still has its history (a truncating open would lose it
        until the first flush)."""
        path = self.run_dir / name
        kept = _kept_rows(path, header, self.resume_step)
        fresh = path.with_name(path.name + ".tmp")
        with fresh.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(kept)
        os.replace(fresh, path)
        f = path.open("a", newline="")
        return f, csv.writer(f), kept

    def __enter__(self):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # log.txt: every line the run shows or would show (progress, evaluations, notes,
        # the reason it stopped), whatever --quiet or the terminal says; appended on resume.
        self.log_file = (self.run_dir / LOG_FILE).open("a")
        self.progress_file, self.progress, kept = self._open("progress.csv", PROGRESS_HEADER)
        self.train_rows = [(int(r[0]), int(r[1]), csv_number(r[3])) for r in kept if r[2] != "0"]
        self.eval_file, self.evals, kept = self._open("eval.csv", EVAL_HEADER)
        self.eval_rows = [(int(r[0]), int(r[1]), csv_number(r[2])) for r in kept]
        self.episode_file = None
        if self.config.verbose:
            self.episode_file, self.episodes, _ = self._open("episodes.csv", EPISODE_HEADER)
        self.weights_file = None
        if self.report_weights:
            self.weights_file, self.weights, _ = self._open("weights.csv", WEIGHTS_HEADER)
        try:
            from tensorboardX import SummaryWriter
            purge = None if self.resume_step is None else self.resume_step + 1
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        except ImportError:  # logging must never stop training
            self.tb = None
        self.bar = None
        self.plain = not self.quiet and not sys.stderr.isatty()  # CI logs: a line per chunk
        if not self.quiet and not self.plain:
            from tqdm import tqdm
            self.bar = tqdm(total=self.config.steps, unit="step", dynamic_ncols=True,
                            desc=f"{self.config.preset or 'train'} x{self.seeds} seeds",
                            smoothing=0.1, initial=self.steps_done)
        return self

    def log(self, text: str) -> None:
        """A line in log.txt only, stamped with the time."""
        if getattr(self, "log_file", None) is not None and not self.log_file.closed:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            for line in text.splitlines() or [""]:
                self.log_file.write(f"{stamp}  {line}\n")
            self.log_file.flush()

    def note(self, text: str) -> None:
        """A one-off message (checkpoint saved, replay size, resume) unless --quiet; always
        in log.txt."""
        self.log(text)
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def log_chunk(self, step: int, out: ChunkStats, epsilon: float, seconds: float,
                  steps: int) -> None:
        """One chunk's statistics."""
        finished = np.asarray(out.finished, bool)
        scores = np.asarray(out.scores, np.float64)
        learned = np.asarray(out.learned, bool)
        speed = steps / max(seconds, 1e-9)
        for seed in range(self.seeds):
            done = finished[:, seed]
            count = int(done.sum())
            mean = float(scores[:, seed][done].mean()) if count else float("nan")
            stats = {name: float(np.asarray(values)[learned, seed].mean()) if learned.any()
                     else float("nan")
                     for name, values in (("loss", out.loss), ("td_error", out.td_error),
                                          ("q_mean", out.q_mean))}
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
        # --prog-freq N: a line at the first chunk at or after every N steps, beside the bar
        # too; without it, a line per chunk where there is no bar.
        due = step >= self.next_line if self.prog_freq else self.plain
        if self.prog_freq and due:
            self.next_line = (step // self.prog_freq + 1) * self.prog_freq
        elapsed = time.perf_counter() - self.started
        # a resumed run's eta counts only the steps it has run itself
        remaining = (elapsed / max(step - (self.resume_step or 0), 1)
                     * (self.config.steps - step))
        line = (f"step {step:>10,}/{self.config.steps:,}  training score {score}  "
                f"epsilon {float(epsilon):.3f}  {speed * self.seeds:,.0f} steps/s  "
                f"elapsed {elapsed:.0f}s  eta {remaining:.0f}s")
        self.log(line)
        if self.bar is not None:
            self.bar.update(step - self.steps_done)
            self.bar.set_postfix(score=score, eps=f"{float(epsilon):.3f}",
                                 sps=f"{speed * self.seeds:,.0f}")
            if due:
                self.bar.write(line, file=sys.stderr)
        elif due and not self.quiet:
            print(line, file=sys.stderr, flush=True)
        self.steps_done = step

    def log_weights(self, step: int, params) -> None:
        """--report-weights: mean and max |w| and |change since the last report| per
        parameter tensor and seed, to weights.csv, TensorBoard and (seed 0) the log."""
        if not self.report_weights or params is None:
            return
        layers = layer_arrays(params)
        rows = weight_stats(layers, self.previous_weights, self.seeds)
        self.previous_weights = layers
        for seed, layer, w_mean, w_max, dw_mean, dw_max in rows:
            self.weights.writerow([step, seed, layer, w_mean, w_max, dw_mean, dw_max])
            if self.tb is not None:
                for name, x in (("mean_abs_w", w_mean), ("max_abs_w", w_max),
                                ("mean_abs_dw", dw_mean), ("max_abs_dw", dw_max)):
                    if np.isfinite(x):
                        self.tb.add_scalar(f"seed{seed}/weights/{layer}/{name}", x, step)
            if seed == 0:
                self.note(f"  weights {layer}: |w| mean {w_mean:.3g} max {w_max:.3g}"
                          f"  |dw| mean {dw_mean:.3g} max {dw_max:.3g}")
        self.weights_file.flush()

    def log_eval(self, step: int, scores: np.ndarray, episodes: np.ndarray,
                 normalised: np.ndarray | None = None, v: np.ndarray | None = None,
                 td_error: np.ndarray | None = None, params=None) -> None:
        """Logs one evaluation; with ``params`` (seed-stacked) and --report-weights, the
        weight statistics too."""
        def value(x, seed):   # blank where missing or where no episode finished
            if x is None or not np.isfinite(np.asarray(x, np.float64)[seed]):
                return ""
            return float(np.asarray(x)[seed])

        for seed in range(self.seeds):
            self.evals.writerow([step, seed, value(scores, seed), int(episodes[seed]),
                                 value(normalised, seed), value(v, seed), value(td_error, seed)])
            self.eval_rows.append((step, seed, float(scores[seed])))
            if self.tb is not None and np.isfinite(scores[seed]):
                self.tb.add_scalar(f"seed{seed}/eval_score", float(scores[seed]), step)
                for name, x in (("eval_normalised_score", normalised), ("eval_v", v),
                                ("eval_td_error", td_error)):
                    if x is not None and np.isfinite(np.asarray(x)[seed]):
                        self.tb.add_scalar(f"seed{seed}/{name}", float(np.asarray(x)[seed]), step)
        finished = np.isfinite(np.asarray(scores, np.float64))
        if self.tb is not None and finished.all():
            self.tb.add_scalar("eval_score_mean", float(np.mean(scores)), step)
            if normalised is not None:
                self.tb.add_scalar("eval_normalised_score_mean", float(np.mean(normalised)), step)
        self.eval_file.flush()
        line = (f"step {step:>10,}  greedy score per seed (finished episodes): "
                + " ".join(score_text(s, e) for s, e in zip(scores, episodes)))
        if normalised is not None and finished.any():
            line += "  normalised: " + " ".join(
                f"{s:.3g}" if np.isfinite(s) else "n/a" for s in np.asarray(normalised))
        if v is not None and np.isfinite(np.asarray(v)).any():
            line += (f"  V {np.nanmean(np.asarray(v)):.3g}"
                     f"  |TD| {np.nanmean(np.asarray(td_error)):.3g}")
        if not finished.all():
            line += f"\n{' ' * 17}{NO_EPISODE_NOTE}"
        self.log(line)
        if self.bar is not None:
            self.bar.write(line)
        elif self.plain:
            print(line, file=sys.stderr, flush=True)
        self.log_weights(step, params)

    def finish(self, summary: dict[str, Any], params=None, in_channels: int = 0,
               rows_label: str = "input channel\n(oldest first)") -> None:
        """Writes the plots (and the first conv layer's filters from ``params``, one seed's
        network with ``in_channels`` input channels), then summary.json last."""
        self.flush()
        title = f"{summary['preset']} on {summary['env']}"
        plot_curves(self.run_dir / "curves.png", self.eval_rows, self.train_rows, self.seeds,
                    title=title)
        plot_run(self.run_dir, title=title)
        if params is not None:
            plot_filters(self.run_dir / "conv_filters.png", params, in_channels, title=title,
                         rows_label=rows_label)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    def flush(self) -> None:
        for f in (self.progress_file, self.eval_file, self.episode_file, self.weights_file):
            if f is not None and not f.closed:
                f.flush()

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None:
            self.log(f"stopped: {exc_type.__name__}: {exc}" if str(exc) else
                     f"stopped: {exc_type.__name__}")
        if self.bar is not None:
            self.bar.close()
        for f in (self.progress_file, self.eval_file, self.episode_file, self.weights_file,
                  self.log_file):
            if f is not None:
                f.close()
        if self.tb is not None:
            self.tb.close()
        return False


class SilentLogger:
    """``RunLogger``'s interface, writing and printing nothing: the logger of every process
    but process 0 in a multi-process run (``jaxatari.hosts``), where process 0 alone
    writes the run directory and shows progress."""

    def __init__(self, config):
        self.config = config
        self.seeds = config.seeds

    def __enter__(self) -> "SilentLogger":
        return self

    def __exit__(self, exc_type, exc, traceback):
        return False

    def log(self, text: str) -> None:
        del text

    def note(self, text: str) -> None:
        del text

    def log_chunk(self, step, out, epsilon, seconds, steps) -> None:
        del step, out, epsilon, seconds, steps

    def log_weights(self, step, params) -> None:
        del step, params

    def log_eval(self, step, scores, episodes, normalised=None, v=None, td_error=None,
                 params=None) -> None:
        del step, scores, episodes, normalised, v, td_error, params

    def finish(self, summary, params=None, in_channels: int = 0, rows_label: str = "") -> None:
        del summary, params, in_channels, rows_label

    def flush(self) -> None:
        pass
