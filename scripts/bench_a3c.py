"""Training speed of the async-a3c preset on Space Invaders with envpool, on this machine.

For 8 and 16 envs (actors) and both execution modes (``--async-mode sync``: all envs step
together, one update per rollout; ``async``: envpool's async API, acting on whichever half
of the envs is ready) it runs the preset's training loop for ``--steps`` agent steps, one
seed, and times the chunks of ``--chunk-steps`` steps after the first ``--warmup`` chunks
(those include compilation). A run's speed is its timed steps over their seconds; each
configuration runs ``--repeats`` times and the report gives the median with the min and
max. Validation is cut to one env and one step (it is not part of the measurement).

Everything else is the preset's: the 2013 body (16 and 32 filters, 256 hidden), t_max 5,
RMSProp, the kaixhin protocol (action repeat 4, so one agent step is 4 frames).

    python -m scripts.bench_a3c [--quick] [--repeats 3] [--steps 4800]   # from the repo root

Prints a markdown table and writes results/benchmarks/a3c-cpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from jaxatari.loops.actors import PlainSession, run_actor_learner
from jaxatari.config import build_config
from jaxatari.envs import make_env
from scripts.benchmark import ChunkTimer
from scripts.provenance import cpu_model, git_commit

OUTPUT = Path("results/benchmarks/a3c-cpu.json")
TARGET = 400.0     # steps/s with 8 or more envs (the actor-learner issue's target)


def one_run(envs: int, mode: str, steps: int, chunk_steps: int, warmup: int, seed: int) -> float:
    config = build_config("async-a3c", {
        "game": "SpaceInvaders", "envs": envs, "async_mode": mode, "steps": steps,
        "chunk_steps": chunk_steps, "seeds": 1, "seed": seed, "val_freq": 10 * steps,
        "val_envs": 1, "val_steps": 1})
    env = make_env(config)
    timer = ChunkTimer()
    run_actor_learner(config, env, jax.random.split(jax.random.PRNGKey(seed), 1),
                      PlainSession(config, timer))
    timed = timer.chunks[warmup:]     # (end step, steps, seconds) per chunk
    if not timed:
        raise SystemExit(f"--steps {steps} leaves no chunk to time after {warmup} warm-up chunks")
    return sum(n for _, n, _ in timed) / sum(t for _, _, t in timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4800, help="agent steps per run")
    parser.add_argument("--chunk-steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=2, help="chunks not timed (compilation)")
    parser.add_argument("--envs", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--modes", nargs="+", default=["sync", "async"])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2400 steps")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps = 1, 2400

    commit, dirty = git_commit()
    load_before = os.getloadavg()
    started = time.time()
    results = []
    for envs in args.envs:
        for mode in args.modes:
            speeds = [one_run(envs, mode, args.steps, args.chunk_steps, args.warmup, seed)
                      for seed in range(1, args.repeats + 1)]
            results.append({"envs": envs, "mode": mode, "steps_per_second": speeds,
                            "median": statistics.median(speeds), "min": min(speeds),
                            "max": max(speeds)})
            print(f"envs {envs:>3} {mode:>5}: " + ", ".join(f"{s:.0f}" for s in speeds)
                  + " steps/s", flush=True)
    record = {
        "benchmark": "async-a3c preset training speed, SpaceInvaders, envpool, one seed",
        "command": "python -m scripts.bench_a3c " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("repeats", args.repeats),
                                                      ("steps", args.steps),
                                                      ("chunk_steps", args.chunk_steps),
                                                      ("warmup", args.warmup))),
        "unit": "agent steps per second (1 agent step = 4 emulator frames)",
        "target_steps_per_second": TARGET,
        "git_commit": commit, "git_dirty": dirty,
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "devices": [str(d) for d in jax.devices()],
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": {name: metadata.version(name) for name in ("jax", "jaxlib", "envpool",
                                                               "flax", "optax")},
        "wall_seconds": round(time.time() - started, 1),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")

    print(f"\nasync-a3c on SpaceInvaders, envpool, {cpu_model()} x{os.cpu_count()}, "
          f"commit {commit[:10]}{' (dirty)' if dirty else ''}, load {load_before[0]:.1f}\n")
    print("| envs | mode | steps/s (median) | min | max | target 400 |")
    print("|---:|:---|---:|---:|---:|:---:|")
    for r in results:
        ok = "yes" if r["median"] >= TARGET else "no"
        print(f"| {r['envs']} | {r['mode']} | {r['median']:.0f} | {r['min']:.0f} | "
              f"{r['max']:.0f} | {ok} |")
    print(f"\nwritten {args.output}")


if __name__ == "__main__":
    np.set_printoptions(precision=1)
    main()
