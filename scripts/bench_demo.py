"""The demo's wall time, against the demo it replaced, side by side: the README's own command
(``scripts/run.sh demo``) run whole, once per setting per round, the settings alternating, so
both see the same machine in the same hour.

"before" is the same command with the former preset's values given as options (8 envs per
seed, an update on every env step, 160k steps: the preset up to commit 71ceca3), so the two
differ in the preset only. Each run's final greedy score per seed comes from its summary.json.

    python -m scripts.bench_demo [--rounds 3]

Writes ``results/benchmarks/demo-speed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.provenance import ROOT, commit_label, cpu_model, write_result

# The demo preset's values before the replay-ratio change (configs/demo.toml at 71ceca3).
BEFORE = {"envs": 8, "steps": 160_000, "mem_sample_freq": 1, "epsilon_steps": 10_000,
          "mem_size": 20_000, "tau": 8, "chunk_steps": 20_000, "val_freq": 40_000,
          "val_envs": 64, "val_steps": 3_200}
SETTINGS = {"before": BEFORE, "after": {}}


def command(run_dir: Path, options: dict) -> list[str]:
    flags = [part for name, value in options.items()
             for part in (f"--{name.replace('_', '-')}", str(value))]
    return ["bash", str(ROOT / "scripts" / "run.sh"), "demo", "--run-dir", str(run_dir), *flags]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(run_dir: Path, options: dict) -> dict:
    """One whole demo: its wall time, and its CPU time (user + system of the command and
    everything it started), which other jobs on a shared machine disturb far less."""
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    subprocess.run(command(run_dir, options), cwd=ROOT, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"wall_seconds": round(wall, 1),
            "cpu_seconds": round(_children_cpu_seconds() - cpu_start, 1),
            "final_scores": summary["final_scores"],
            "final_episodes": summary.get("final_episodes")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting, alternating")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "demo-speed")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for name, options in SETTINGS.items():
                result = run_once(Path(scratch) / f"{name}{round_index}", options)
                runs[name].append(result)
                print(f"round {round_index + 1} {name}: {result['wall_seconds']:.1f} s "
                      f"({result['cpu_seconds']:.1f} s CPU), final "
                      f"{[round(s, 3) for s in result['final_scores']]}", file=sys.stderr)
    median = {name: statistics.median(r["wall_seconds"] for r in results)
              for name, results in runs.items()}
    median_cpu = {name: statistics.median(r["cpu_seconds"] for r in results)
                  for name, results in runs.items()}
    ratios = [a["wall_seconds"] / b["wall_seconds"] for a, b in zip(runs["after"], runs["before"])]
    record = {"command": "python -m scripts.bench_demo " + " ".join(argv or sys.argv[1:]),
              "commit": commit_label(), "cpu": cpu_model(), "before_options": BEFORE,
              "runs": runs, "median_wall_seconds": median, "median_cpu_seconds": median_cpu,
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "ratio_per_round": [round(r, 3) for r in ratios]}
    table = ["# The demo's wall time: the current preset against the one it replaced",
             "", "`scripts/run.sh demo` run whole (start-up, compile, training, evaluations, plots), "
             "the two settings alternating in each round on one machine. \"before\" passes the "
             "former preset's values as options.", "",
             "| round | before s | after s | after / before | CPU s before / after | "
             "before: final per seed | after: final per seed |",
             "|---:|---:|---:|---:|---:|---|---|"]
    for index, (before, after) in enumerate(zip(runs["before"], runs["after"])):
        table.append(f"| {index + 1} | {before['wall_seconds']:.1f} | {after['wall_seconds']:.1f} "
                     f"| {ratios[index]:.2f} | {before['cpu_seconds']:.0f} / "
                     f"{after['cpu_seconds']:.0f} | {_scores(before)} | {_scores(after)} |")
    table += ["", f"Median wall time: before {median['before']:.1f} s, after "
              f"{median['after']:.1f} s, ratio {median['after'] / median['before']:.2f}. Median "
              f"CPU time: before {median_cpu['before']:.0f} s, after {median_cpu['after']:.0f} s, "
              f"ratio {median_cpu['after'] / median_cpu['before']:.2f}. CPU: {record['cpu']}; "
              f"load average at the end {record['load_average_after'][0]:.1f}."]
    write_result(args.out, record, table)
    return 0


def _scores(run: dict) -> str:
    return ", ".join("n/a" if s is None else f"{s:.3f}" for s in run["final_scores"])


if __name__ == "__main__":
    sys.exit(main())
