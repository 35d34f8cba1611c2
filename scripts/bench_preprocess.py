"""What --color-space and --height/--width cost a host env per step, on this machine.

For Atari (envpool, Pong, the kaixhin protocol) with ``--envs`` envs it times ``env.step`` of
the env ``make_env`` builds, for: the protocol's grey 84x84 (no preprocessing, the baseline),
``--color-space y`` (envpool gives RGB 84x84, converted by the jitted, vmapped preprocessing)
and ``--color-space lab``; and for a gymnasium env with RGB 8x8 frames
(``tests.custom_env:ColourRoom``) resized to 84x84 with ``--color-space hsv``, against none.
Each case steps ``--steps`` times after ``--warmup`` steps (compilation); the report gives the
median over ``--repeats`` runs of milliseconds per step of all envs.

    python -m scripts.bench_preprocess [--envs 8] [--steps 300] [--repeats 3]   # repo root

Prints a markdown table and writes results/benchmarks/preprocess-cpu.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from jaxatari.config import build_config
from jaxatari.envs import make_env

CASES = [
    ("Pong, envpool grey 84x84 (protocol)", {"env": "atari", "game": "Pong"}),
    ("Pong, envpool RGB 84x84 -> y", {"env": "atari", "game": "Pong", "color_space": "y"}),
    ("Pong, envpool RGB 84x84 -> lab", {"env": "atari", "game": "Pong", "color_space": "lab"}),
    ("ColourRoom RGB 8x8 (none)", {"env": "tests.custom_env:ColourRoom"}),
    ("ColourRoom RGB 8x8 -> hsv 84x84", {"env": "tests.custom_env:ColourRoom",
                                         "color_space": "hsv", "height": 84, "width": 84}),
]


def time_case(options: dict, envs: int, steps: int, warmup: int) -> float:
    config = build_config("nature", {"envs": envs, **options})
    env = make_env(config)(envs, 0)
    env.reset()
    actions = np.zeros(envs, np.int64)
    for _ in range(warmup):
        env.step(actions)
    started = time.perf_counter()
    for _ in range(steps):
        env.step(actions)
    seconds = time.perf_counter() - started
    env.close()
    return seconds / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    print(f"| case ({args.envs} envs) | ms per step (median) | min | max |\n|---|---|---|---|")
    for name, options in CASES:
        times = [time_case(options, args.envs, args.steps, args.warmup)
                 for _ in range(args.repeats)]
        rows.append({"case": name, "options": options, "ms_per_step": times,
                     "median": statistics.median(times)})
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | "
              f"{max(times):.2f} |", flush=True)
    out = Path(__file__).resolve().parent.parent / "results" / "benchmarks" / "preprocess-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m scripts.bench_preprocess "
                                          f"--envs {args.envs} --steps {args.steps} "
                                          f"--repeats {args.repeats}",
                               "machine": platform.platform(), "processor": platform.processor(),
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
