"""Plots of a run: learning curves (mean over seeds with a min-max band, and each seed),
one picture per validation statistic, several runs side by side (also as interquartile
means with 95% stratified-bootstrap bands, Agarwal et al. 2021), and the first
convolutional layer's filters (as Mnih et al. 2015 looked at what the network learned).
Drawn with matplotlib (Agg) from the CSVs that ``jaxatari.metrics.RunLogger`` writes.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np


def csv_number(text: str) -> float:
    """A CSV cell as a number; NaN where it is none."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


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
            # markers where points are few: a single evaluation is a point, not an empty line
            marker = "o" if len(steps) <= 25 else None
            for seed in range(seeds):
                ax.plot(steps, values[:, seed], lw=0.7, alpha=0.5, marker=marker, ms=3,
                        label="each seed" if seed == 0 and seeds > 1 else None)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # a step no seed scored
                ax.fill_between(steps, np.nanmin(values, 1), np.nanmax(values, 1), alpha=0.2,
                                color="k", lw=0, label="min to max" if seeds > 1 else None)
                ax.plot(steps, np.nanmean(values, 1), color="k", lw=2, marker=marker, ms=4,
                        label=f"mean of {seeds}")
            ax.legend(loc="best")
        ax.set_xlabel("agent steps per seed")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------ plots from files


def read_csv(path: Path) -> list[dict[str, str]]:
    if not Path(path).is_file():
        return []
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _column_series(path: Path, column: str, finite_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """steps [N] and values [N, S] of one column of a per-seed CSV (NaN where missing)."""
    rows = [r for r in read_csv(path) if r.get(column, "") not in ("", None)
            and (not finite_only or np.isfinite(csv_number(r[column])))]
    if not rows:
        return np.zeros(0), np.zeros((0, 0))
    seeds = max(int(r["seed"]) for r in rows) + 1
    return _series([(int(r["step"]), int(r["seed"]), csv_number(r[column])) for r in rows],
                   seeds)


def eval_series(run_dir: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """steps [N] and values [N, S] of one eval.csv column (NaN where missing)."""
    return _column_series(Path(run_dir) / "eval.csv", column, finite_only=False)


def progress_series(run_dir: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """steps [N] and values [N, S] of one progress.csv column (rows with a number only)."""
    return _column_series(Path(run_dir) / "progress.csv", column, finite_only=True)


def _band_plot(ax, steps, values, label=None, color="k", seeds_too=True):
    """Mean over seeds with a min-max band, and each seed as a thin line (points marked
    when there are few)."""
    marker = "o" if len(steps) <= 25 else None
    seeds = values.shape[1]
    if seeds_too and seeds > 1:
        for seed in range(seeds):
            ax.plot(steps, values[:, seed], lw=0.7, alpha=0.5, marker=marker, markersize=2,
                    color=None if color == "k" else color,
                    label="each seed" if seed == 0 and color == "k" else None)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN steps (no seed finished)
        ax.fill_between(steps, np.nanmin(values, 1), np.nanmax(values, 1), alpha=0.2,
                        color=color, lw=0)
        ax.plot(steps, np.nanmean(values, 1), color=color, lw=2, marker=marker, markersize=4,
                label=label or (f"mean of {seeds} seeds" if seeds > 1 else "1 seed"))


def _iqm_band_plot(ax, steps, values, label: str, color: str, per_seed: bool = False):
    """The interquartile mean over seeds at each step with its 95% stratified-bootstrap
    band (Agarwal et al. 2021; jaxatari.statistics.iqm_curve), and with ``per_seed`` each
    seed as a thin line."""
    from jaxatari.statistics import iqm_curve
    marker = "o" if len(steps) <= 25 else None
    if per_seed:
        for seed in range(values.shape[1]):
            ax.plot(steps, values[:, seed], lw=0.7, alpha=0.5, marker=marker, markersize=2,
                    color=color)
    iqm, low, high = iqm_curve(values)
    ax.fill_between(steps, low, high, alpha=0.2, color=color, lw=0)
    ax.plot(steps, iqm, color=color, lw=2, marker=marker, markersize=4, label=label)


def plot_metric(path: Path, steps: np.ndarray, values: np.ndarray, ylabel: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    _band_plot(ax, steps, values)
    ax.legend(loc="best")
    ax.set_xlabel("agent steps per seed")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# (file name, source, column, axis label)
RUN_PLOTS = (
    ("scores.png", "eval", "score", "average validation score (raw game score)"),
    ("normalised_scores.png", "eval", "normalised_score", "human-normalised validation score"),
    ("v.png", "eval", "v", "average V on held-out transitions"),
    ("td_error.png", "eval", "td_error", "average |TD error| on held-out transitions"),
    ("loss.png", "progress", "loss", "training loss"),
)


def plot_run(run_dir: Path, title: str = "") -> list[Path]:
    """The per-run PNGs of ``RUN_PLOTS`` for every statistic the run logged."""
    run_dir = Path(run_dir)
    written = []
    for name, source, column, label in RUN_PLOTS:
        series = eval_series if source == "eval" else progress_series
        steps, values = series(run_dir, column)
        if len(steps) == 0 or not np.isfinite(values).any():
            continue
        plot_metric(run_dir / name, steps, values, label, title)
        written.append(run_dir / name)
    return written


def first_conv_kernel(params, in_channels: int) -> np.ndarray | None:
    """The first PatchConv kernel of one network's params as [k, k, C_in, C_out], or None.

    PatchConv keeps the kernel as a Dense kernel [k*k*C_in, C_out] whose rows run over the
    (i, j) patch offsets, then the input channels (networks.PatchConv), so with C_in known
    (the stacked observation's channels) k = sqrt(rows / C_in)."""
    params = params.get("params", params) if isinstance(params, dict) else params
    body = params.get("body") if isinstance(params, dict) else None
    if not isinstance(body, dict):
        return None
    convs = sorted((k for k in body if k.startswith("PatchConv_")),
                   key=lambda k: int(k.rsplit("_", 1)[1]))
    if not convs:
        return None
    kernel = np.asarray(body[convs[0]]["dense"]["kernel"], np.float32)
    rows, out = kernel.shape
    k = int(round(math.sqrt(rows / max(in_channels, 1))))
    if k * k * in_channels != rows:
        return None
    return kernel.reshape(k, k, in_channels, out)


def filter_grid(kernel: np.ndarray) -> np.ndarray:
    """[k, k, C_in, C_out] -> one grey image: a row of tiles per input channel (stacked
    frame), a column per filter, each tile scaled to [0, 1] by the layer's extreme values,
    one pixel of padding."""
    k, _, c_in, c_out = kernel.shape
    low, high = float(kernel.min()), float(kernel.max())
    scaled = (kernel - low) / max(high - low, 1e-12)
    grid = np.ones((c_in * (k + 1) + 1, c_out * (k + 1) + 1), np.float32)
    for c in range(c_in):
        for o in range(c_out):
            grid[1 + c * (k + 1):1 + c * (k + 1) + k, 1 + o * (k + 1):1 + o * (k + 1) + k] = \
                scaled[:, :, c, o]
    return grid


def filter_rows_label(frame_channels: int, hist_len: int) -> str:
    """What the rows of conv_filters.png are: stacked frames, a frame's channels (MinAtar's
    object layers), or both."""
    if hist_len <= 1:
        return "input channel" if frame_channels == 1 else \
            f"input channel\n({frame_channels} of one observation)"
    if frame_channels == 1:
        return "stacked frame\n(oldest first)"
    return f"{hist_len} frames x {frame_channels}\nchannels (oldest first)"


def plot_filters(path: Path, params, in_channels: int, title: str = "",
                 rows_label: str = "input channel\n(oldest first)") -> bool:
    """Saves the first conv layer's filters as an image grid (columns: filters, rows: input
    channels, named by ``rows_label``); False for a network without convolutions."""
    kernel = first_conv_kernel(params, in_channels)
    if kernel is None:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = filter_grid(kernel)
    k, _, c_in, c_out = kernel.shape
    scale = min(12.0 / grid.shape[1], 0.25)
    fig, ax = plt.subplots(figsize=(max(grid.shape[1] * scale, 4), max(grid.shape[0] * scale, 1.5) + 0.8),
                           constrained_layout=True)
    ax.imshow(grid, cmap="gray", interpolation="nearest")
    ax.set_title(f"first conv layer: {c_out} filters of {k}x{k} over {c_in} input channels; "
                 f"{title}", fontsize=8)
    ax.set_xlabel("filter")
    ax.set_ylabel(rows_label, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_runs(run_dirs: list[Path], path: Path, column: str = "score", training: bool = False,
              reference: tuple[float, str] | None = None, aggregate: str = "mean",
              per_seed: bool = False) -> Path:
    """Overlays several runs' curves: their evaluations' ``column``, or with ``training``
    their progress.csv's (training scores); ``reference`` (value, label) draws a published
    figure as a dashed line. ``aggregate`` "mean": mean over seeds with a min-max band;
    "iqm": interquartile mean with its 95% stratified-bootstrap band (Agarwal et al. 2021),
    and with ``per_seed`` each seed's line too."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = progress_series if training else eval_series
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run_dir in enumerate(run_dirs):
        steps, values = series(run_dir, column)
        if len(steps) == 0:
            continue
        label = f"{Path(run_dir).name} ({values.shape[1]} seed{'s' if values.shape[1] > 1 else ''})"
        colour = colours[i % len(colours)]
        if aggregate == "iqm":
            _iqm_band_plot(ax, steps, values, label=f"{label}, IQM and 95% CI", color=colour,
                           per_seed=per_seed)
        else:
            _band_plot(ax, steps, values, label=label, color=colour, seeds_too=per_seed)
    if reference is not None:
        ax.axhline(reference[0], color="k", ls="--", lw=1, label=reference[1])
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("agent steps per seed")
    if training:
        ax.set_ylabel({"score": "training score (raw game score, exploring)"}.get(column, column))
    else:
        ax.set_ylabel({"score": "average validation score (raw game score)",
                       "normalised_score": "human-normalised validation score",
                       "v": "average V", "td_error": "average |TD error|"}.get(column, column))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
