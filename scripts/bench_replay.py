"""Cost of replay sampling and priority updates on this machine, for every replay kind.

For uniform, proportional and rank-based replay at capacity 1e6 (1e5 with --quick) it times
one jitted ``sample`` (batch 32) followed by ``update_priorities`` with fresh |TD errors|, and one
jitted ``add`` of a row, each call blocked on with ``block_until_ready`` and its state donated
as a training loop would. Storage frames are 1x1x1 uint8 so that the measurement is the index
structure (sum tree, rank snapshot) rather than frame copies; one more run times uniform
sampling from real 84x84x1 uint8 frames at capacity 1e6 (about 7 GB) unless --quick or the
machine has too little free memory.

Each repetition runs ``--calls`` calls; its cost is their mean, which includes the rank
buffer's occasional new snapshot (every ``rank_log_size(capacity)`` changed priorities). The
report gives the median over repetitions with the min and max, plus the median and max of
single calls (the max is the call that made a snapshot).

    python -m scripts.bench_replay [--quick] [--repeats 7] [--calls 256] [--kinds rank,...]
        [--output PATH]                                                    # from the repo root

Prints a table and writes results/benchmarks/replay-cpu.json (or --output), with the command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.replay import make_replay
from jaxatari.replay.prioritised import rank_log_size
from jaxatari.replay.storage import Row
from scripts.provenance import commit_label

BATCH_SIZE = 32
HIST_LEN = 4
ALPHA = {"uniform": 0.6, "proportional": 0.6, "rank": 0.7}   # Schaul et al. 2016's tuned values
ATARI_FRAME = (84, 84, 1)
SMALL_FRAME = (1, 1, 1)
EPISODE_LENGTH = 1000        # a `first` flag every so many rows, so stacks stop at episode starts
OUTPUT = Path("results/benchmarks/replay-cpu.json")




def available_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def example_row(frame_shape: tuple[int, ...]) -> Row:
    """One env's row, the layout the agent writes (E = 1)."""
    return Row(frame=jnp.zeros((1, *frame_shape), jnp.uint8), action=jnp.zeros(1, jnp.int32),
               reward=jnp.zeros(1, jnp.float32), terminal=jnp.zeros(1, bool),
               first=jnp.zeros(1, bool), valid=jnp.ones(1, bool), mask=jnp.ones((1, 1), bool))


def full_buffer(replay, frame_shape, seed: int):
    """A buffer whose storage is full and whose priorities are random |TD errors|."""
    state = replay.init(example_row(frame_shape))
    rows = state.storage.rows
    rng = np.random.default_rng(seed)
    num_rows = replay.num_rows
    rows = rows.replace(
        action=jnp.asarray(rng.integers(0, 6, (num_rows, 1)), jnp.int32),
        reward=jnp.asarray(rng.choice([-1.0, 0.0, 1.0], (num_rows, 1)), jnp.float32),
        first=jnp.asarray(np.arange(num_rows)[:, None] % EPISODE_LENGTH == 0),
        valid=jnp.ones((num_rows, 1), bool))
    if np.prod(frame_shape) == 1:   # real-size frames stay zero: their content costs nothing
        rows = rows.replace(frame=jnp.asarray(rng.integers(0, 256, rows.frame.shape), jnp.uint8))
    state = state.replace(storage=state.storage.replace(rows=rows, pos=jnp.int32(0),
                                                        size=jnp.int32(num_rows)))
    capacity = num_rows * replay.num_envs
    td_errors = jnp.asarray(rng.exponential(1.0, capacity), jnp.float32)
    return jax.jit(replay.update_priorities, donate_argnums=0)(
        state, jnp.arange(capacity, dtype=jnp.int32), td_errors)


def time_calls(call, state, repeats: int, calls: int) -> tuple[dict, object]:
    """Per-call seconds of ``state = call(state, key)``; returns the summary and the last state."""
    key = jax.random.key(0)
    state = jax.block_until_ready(call(state, key))          # compile and warm up
    repetition_means, single_calls = [], []
    for repetition in range(repeats):
        durations = []
        for step in range(calls):
            step_key = jax.random.fold_in(key, repetition * calls + step)
            start = time.perf_counter()
            state = jax.block_until_ready(call(state, step_key))
            durations.append(time.perf_counter() - start)
        repetition_means.append(float(np.mean(durations)))
        single_calls.extend(durations)
    milliseconds = lambda seconds: round(1e3 * seconds, 4)
    return {
        "median_ms": milliseconds(np.median(repetition_means)),
        "min_ms": milliseconds(np.min(repetition_means)),
        "max_ms": milliseconds(np.max(repetition_means)),
        "single_call_median_ms": milliseconds(np.median(single_calls)),
        "single_call_max_ms": milliseconds(np.max(single_calls)),
        "repeats": repeats, "calls_per_repeat": calls,
    }, state


def bench_kind(kind: str, capacity: int, frame_shape, repeats: int, calls: int) -> dict:
    replay = make_replay(kind, capacity=capacity, num_envs=1, hist_len=HIST_LEN, n_step=1,
                         gamma=0.99, alpha=ALPHA[kind])
    state = full_buffer(replay, frame_shape, seed=0)

    def sample_and_update(state_and_batch, key):
        state, _ = state_and_batch
        sample_key, error_key = jax.random.split(key)
        transitions, indices, _ = replay.sample(state, sample_key, BATCH_SIZE)
        td_errors = jax.random.exponential(error_key, (BATCH_SIZE,))
        # the batch is returned so that the gather is not optimised away
        return replay.update_priorities(state, indices, td_errors), transitions

    def add(state, key):
        row = example_row(frame_shape).replace(
            frame=jax.random.randint(key, (1, *frame_shape), 0, 256).astype(jnp.uint8))
        return replay.add(state, row)

    batch_shape = replay.sample(state, jax.random.key(0), BATCH_SIZE)[0]
    sampled, state = time_calls(jax.jit(sample_and_update, donate_argnums=0),
                                (state, batch_shape), repeats, calls)
    result = {"kind": kind, "capacity": capacity, "frame_shape": list(frame_shape),
              "batch_size": BATCH_SIZE, "sample_and_update": sampled}
    if kind == "rank":
        result["rank_log_size"] = rank_log_size(capacity)
    result["add"], _ = time_calls(jax.jit(add, donate_argnums=0), state[0], repeats, calls)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="capacity 1e5 and no run with real 84x84 frames")
    parser.add_argument("--repeats", type=int, default=7, help="repetitions of each timing")
    parser.add_argument("--calls", type=int, default=256, help="calls per repetition")
    parser.add_argument("--kinds", default="uniform,proportional,rank",
                        help="comma-separated replay kinds to time; the run with 84x84 frames "
                             "(uniform) only when uniform is among them")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    unknown = [kind for kind in kinds if kind not in ALPHA]
    if unknown:
        parser.error(f"unknown kind {unknown[0]!r}; choose from {', '.join(ALPHA)}")

    capacity = 100_000 if args.quick else 1_000_000
    print(f"replay sample(B={BATCH_SIZE})+update_priorities and add, capacity {capacity:,}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    print(f"storage frames {'x'.join(map(str, SMALL_FRAME))} uint8: these runs time the index "
          "structure, not frame copies")
    runs = [bench_kind(kind, capacity, SMALL_FRAME, args.repeats, args.calls)
            for kind in kinds]

    atari_bytes = 1_000_000 * int(np.prod(ATARI_FRAME))
    if args.quick:
        skipped = "skipped: --quick"
    elif "uniform" not in kinds:
        skipped = "skipped: uniform not in --kinds"
    elif available_memory_bytes() < 1.5 * atari_bytes:
        skipped = (f"skipped: {available_memory_bytes() / 1e9:.1f} GB free, "
                   f"{1.5 * atari_bytes / 1e9:.1f} GB wanted")
    else:
        skipped = None
        runs.append(bench_kind("uniform", 1_000_000, ATARI_FRAME, args.repeats, args.calls))
    print(f"{'kind':<13}{'capacity':>10}{'frame':>9}  {'sample+update ms (min-max)':<28}"
          f"{'1 call med/max':<18}{'add ms (min-max)':<22}")
    for run in runs:
        sampled, added = run["sample_and_update"], run["add"]
        frame = "x".join(map(str, run["frame_shape"]))
        print(f"{run['kind']:<13}{run['capacity']:>10,}{frame:>9}  "
              f"{sampled['median_ms']:>7.3f} ({sampled['min_ms']:.3f}-{sampled['max_ms']:.3f})"
              f"{'':<7}{sampled['single_call_median_ms']:>6.3f}/"
              f"{sampled['single_call_max_ms']:<9.1f}"
              f"{added['median_ms']:>7.3f} ({added['min_ms']:.3f}-{added['max_ms']:.3f})")
    if skipped:
        print(f"uniform with {'x'.join(map(str, ATARI_FRAME))} frames at 1,000,000: {skipped}")

    report = {
        "what": "replay sample(B=32)+update_priorities and add, jitted, state donated, "
                "block_until_ready per call; small frames time the index structure only",
        "command": " ".join(["python -m scripts.bench_replay", *sys.argv[1:]]),
        "commit": commit_label(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "jax": jax.__version__,
                    "backend": jax.devices()[0].platform},
        "runs": runs,
        "atari_frames_run": skipped or "done",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
