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

``--catch`` instead times the replay work of the prioritised Catch learning tests
(tests/test_variants_learn.py with scripts/catch_variants.py's settings) on its own: 4 seeds
vmapped, 64,000 transitions per seed in rows of 32 envs, 24x24x1 frames, one frame per step;
per iteration one ``add`` of a row, then (inside a ``cond``, as the training loop) 4 jitted
``sample`` (batch 32) + ``update_priorities`` with random |TD errors|, scanned over
``--catch-iterations`` iterations per jitted call with the state donated. It reports the CPU
time (user + sys of this process) and wall time per iteration, the median over repetitions;
no network work is included, so the kinds' difference is what the learning test pays extra.

    python -m scripts.bench_replay --catch [--kinds proportional,rank] [--repeats 5]
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


CATCH_SEEDS = 4
CATCH_CAPACITY = 64_000       # the demo preset's mem_size
CATCH_ENVS = 32               # the demo preset's envs per seed
CATCH_FRAME = (24, 24, 1)     # Catch's frames; hist_len 1
CATCH_UPDATES = 4             # 32 envs with an update every 8 env steps
CATCH_ALPHA = {"uniform": 0.6, "proportional": 0.6, "rank": 0.7}   # scripts/catch_variants.py
CATCH_EPISODE = 23            # rows between episode starts (Catch's episode length)


def catch_buffer(replay, seed: int):
    """[S] seed-batched full buffers of random frames with random priorities, in steady state."""
    example = Row(frame=jnp.zeros((CATCH_ENVS, *CATCH_FRAME), jnp.uint8),
                  action=jnp.zeros(CATCH_ENVS, jnp.int32), reward=jnp.zeros(CATCH_ENVS),
                  terminal=jnp.zeros(CATCH_ENVS, bool), first=jnp.zeros(CATCH_ENVS, bool),
                  valid=jnp.ones(CATCH_ENVS, bool), mask=jnp.ones((CATCH_ENVS, 1), bool))
    axes = replay.seed_axes(replay.init(example))
    capacity = replay.num_rows * replay.num_envs

    def one_seed(key):
        frame_key, reward_key, error_key = jax.random.split(key, 3)
        state = replay.init(example)
        num_rows = replay.num_rows
        rows = state.storage.rows.replace(
            frame=jax.random.randint(frame_key, state.storage.rows.frame.shape, 0, 2
                                     ).astype(jnp.uint8),
            reward=jax.random.choice(reward_key, jnp.array([-1.0, 0.0, 0.0, 1.0]),
                                     (num_rows, CATCH_ENVS)),
            first=jnp.broadcast_to(jnp.arange(num_rows)[:, None] % CATCH_EPISODE == 0,
                                   (num_rows, CATCH_ENVS)),
            valid=jnp.ones((num_rows, CATCH_ENVS), bool))
        state = state.replace(storage=state.storage.replace(rows=rows, pos=jnp.int32(0),
                                                            size=jnp.int32(num_rows)))
        return replay.update_priorities(state, jnp.arange(capacity, dtype=jnp.int32),
                                        jax.random.exponential(error_key, (capacity,)))

    keys = jax.random.split(jax.random.key(seed), CATCH_SEEDS)
    return jax.jit(jax.vmap(one_seed, out_axes=axes))(keys), axes


def bench_catch(kind: str, iterations: int, repeats: int) -> dict:
    replay = make_replay(kind, capacity=CATCH_CAPACITY, num_envs=CATCH_ENVS, hist_len=1,
                         n_step=1, gamma=0.99, alpha=CATCH_ALPHA[kind])
    state, axes = catch_buffer(replay, seed=0)

    def seed_iteration(state, key, learns):
        frame_key, valid_key, update_key = jax.random.split(key, 3)
        row = Row(frame=jax.random.randint(frame_key, (CATCH_ENVS, *CATCH_FRAME), 0, 2
                                           ).astype(jnp.uint8),
                  action=jnp.zeros(CATCH_ENVS, jnp.int32), reward=jnp.zeros(CATCH_ENVS),
                  terminal=jnp.zeros(CATCH_ENVS, bool), first=jnp.zeros(CATCH_ENVS, bool),
                  valid=jax.random.uniform(valid_key, (CATCH_ENVS,)) > 0.04,
                  mask=jnp.ones((CATCH_ENVS, 1), bool))
        state = replay.add(state, row)

        def run_updates(state):
            def body(step, carry):
                state, total = carry
                sample_key, error_key = jax.random.split(jax.random.fold_in(update_key, step))
                batch, indices, probabilities = replay.sample(state, sample_key, BATCH_SIZE)
                td_errors = (jax.random.exponential(error_key, (BATCH_SIZE,))
                             * (1.0 + batch.r_t))
                state = replay.update_priorities(state, indices, td_errors)
                return state, total + jnp.sum(probabilities) + jnp.sum(batch.obs_tm1[:, 0, 0])
            return jax.lax.fori_loop(0, CATCH_UPDATES, body, (state, jnp.float32(0)))

        return jax.lax.cond(learns, run_updates, lambda state: (state, jnp.float32(0)), state)

    def chunk(state, key):
        step_all = jax.vmap(seed_iteration, in_axes=(axes, 0, None), out_axes=(axes, 0))

        def iteration(state, index):
            keys = jax.random.split(jax.random.fold_in(key, index), CATCH_SEEDS)
            return step_all(state, keys, index >= 0)

        return jax.lax.scan(iteration, state, jnp.arange(iterations))

    run = jax.jit(chunk, donate_argnums=0)
    key = jax.random.key(1)
    state, _ = jax.block_until_ready(run(state, key))            # compile and warm up
    cpu_ms, wall_ms = [], []
    for repetition in range(repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        state, _ = jax.block_until_ready(run(state, jax.random.fold_in(key, repetition + 1)))
        cpu_ms.append(1e3 * (time.process_time() - cpu_start) / iterations)
        wall_ms.append(1e3 * (time.perf_counter() - wall_start) / iterations)
    result = {"kind": kind, "capacity": CATCH_CAPACITY, "num_envs": CATCH_ENVS,
              "seeds": CATCH_SEEDS, "updates_per_iteration": CATCH_UPDATES,
              "batch_size": BATCH_SIZE, "iterations_per_call": iterations,
              "cpu_ms_per_iteration": round(float(np.median(cpu_ms)), 4),
              "cpu_ms_min_max": [round(min(cpu_ms), 4), round(max(cpu_ms), 4)],
              "wall_ms_per_iteration": round(float(np.median(wall_ms)), 4),
              "wall_ms_min_max": [round(min(wall_ms), 4), round(max(wall_ms), 4)],
              "repeats": repeats}
    if kind == "rank":
        result["rank_log_size"] = rank_log_size(CATCH_CAPACITY)
    return result


def main_catch(args, kinds):
    print(f"replay work of the Catch learning test per iteration ({CATCH_SEEDS} seeds vmapped, "
          f"capacity {CATCH_CAPACITY:,} in rows of {CATCH_ENVS}, 1 add + {CATCH_UPDATES} "
          f"sample(B={BATCH_SIZE})+update), jax {jax.__version__}, {os.cpu_count()} CPUs")
    runs = []
    for kind in kinds:
        run = bench_catch(kind, args.catch_iterations, args.repeats)
        runs.append(run)
        print(f"{kind:<13} CPU ms/iteration {run['cpu_ms_per_iteration']:7.3f} "
              f"({run['cpu_ms_min_max'][0]:.3f}-{run['cpu_ms_min_max'][1]:.3f})   "
              f"wall ms/iteration {run['wall_ms_per_iteration']:7.3f} "
              f"({run['wall_ms_min_max'][0]:.3f}-{run['wall_ms_min_max'][1]:.3f})", flush=True)
    return {"what": "the replay work of the prioritised Catch learning test per iteration: "
                    f"{CATCH_SEEDS} seeds vmapped, 1 add of {CATCH_ENVS} transitions and "
                    f"{CATCH_UPDATES} sample(B={BATCH_SIZE})+update_priorities, scanned and "
                    "jitted with the state donated; CPU = user + sys of the process",
            "runs": runs}


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
    parser.add_argument("--catch", action="store_true",
                        help="time the replay work of the Catch learning tests instead "
                             "(prints only, unless --output is given)")
    parser.add_argument("--catch-iterations", type=int, default=200,
                        help="iterations per jitted call with --catch")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    unknown = [kind for kind in kinds if kind not in ALPHA]
    if unknown:
        parser.error(f"unknown kind {unknown[0]!r}; choose from {', '.join(ALPHA)}")
    if args.catch:
        report = main_catch(args, kinds)
        if args.output != OUTPUT:
            report.update(command=" ".join(["python -m scripts.bench_replay", *sys.argv[1:]]),
                          commit=commit_label())
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.output}")
        return

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
