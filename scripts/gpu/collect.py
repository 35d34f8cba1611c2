"""Turns the GPU sessions' outputs into results/benchmarks/gpu-<device>.{json,md}.

A lease can take several calls (a step failed and was rerun alone), so this merges the
``session.json`` of each call, later calls first: each step keeps its last successful result,
with the commit its call ran. ``--cpu`` adds a CPU reference run of the same steps
(``python -m scripts.gpu.session --only device minatar``, run here) for the GPU/CPU ratios;
``--update-readme`` puts the table between the ``gpu:start`` and ``gpu:end`` marks of
docs/performance.md (the flag keeps its name from when the table was in README.md).

    python -m scripts.gpu.collect results/benchmarks/gpu-nvidia-h200-calls/{1,2,4} --cpu /tmp/cpu-ref --update-readme
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from scripts.gpu.session import STEPS

ROOT = Path(__file__).resolve().parents[2]
README_START, README_END = "<!-- gpu:start -->", "<!-- gpu:end -->"
TABLE_DOC = ROOT / "docs" / "performance.md"     # the file whose gpu block --update-readme rewrites
# The targets on one GPU: Atari DQN at the Nature replay ratio, aggregate steps/s;
# MinAtar Space Invaders with 8 vmapped seeds against the same step on this 2-core CPU.
ATARI_TARGET = 5000
MINATAR_RATIO_TARGET = 20.0


def merged(dirs: list[Path]) -> dict:
    """{step: {"result", "seconds", "source", "call"}} from the calls' session.json files."""
    steps: dict = {}
    for index, directory in enumerate(dirs, 1):
        session = json.loads((directory / "session.json").read_text())
        source = session["steps"].get("device", {}).get("result", {}).get("source", {})
        for name, step in session["steps"].items():
            if step["status"] == "ok":
                steps[name] = {"result": step["result"], "seconds": step["seconds"],
                               "source": source, "call": index, "sizes": session["sizes"]}
    return steps


def best(configurations: list[dict], **match) -> float | None:
    for c in configurations:
        if all(c.get(k) == v for k, v in match.items()):
            return c["aggregate_steps_per_second"]["median"]
    return None


def table(record: dict) -> list[str]:
    steps, cpu = record["steps"], record.get("cpu")
    device = steps["device"]["result"]
    lines = [f"One {device['device_kind']} ({device.get('nvidia_smi', '')}), JAX "
             f"{device['versions'].get('jax')} with {', '.join(k for k in device['versions'] if 'cuda' in k)}, "
             f"Python {device['python']}, {device['cpus']} CPU cores. Each row names the commit "
             f"its call ran.", "",
             "| step | measurement | result | target | met | commit |",
             "|---|---|---:|---:|:---:|---|"]

    def commit(step):
        return str(steps[step]["source"].get("commit", "?"))[:7]

    if "tests" in steps:
        t = steps["tests"]["result"]
        lines.append(f"| tests | fast tests on the GPU backend"
                     f"{' (cut off at ' + str(t['cap_s']) + ' s)' if t['cut_off'] else ''}, "
                     f"pytest's summary | {t['summary']} | | | {commit('tests')} |")
    if "learner" in steps:
        for u in steps["learner"]["result"]["updates"]:
            lines.append(f"| learner | Nature update B={u['batch']}, ms (GFLOP/s) | "
                         f"{u['ms']['median']:.2f} ({u['gflop_per_second']:.0f}) | | | "
                         f"{commit('learner')} |")
    def row(step: str, what: str, rate: float, value: float | None, bound: float, label: str):
        """A speed row; ``value`` (None: no target for this row) is checked against ``bound``."""
        target = met = ""
        if value is not None:
            target, met = f">= {label}", "yes" if value >= bound else "no"
        lines.append(f"| {step} | {what} | {rate:,.0f} | {target} | {met} | {commit(step)} |")

    for c in steps.get("atari", {}).get("result", {}).get("configurations", []):
        rate = c["aggregate_steps_per_second"]["median"]
        # the target: 8 seeds of 10M frames in under 70 minutes
        row("atari", f"DQN, {c['envs']} envpool envs x {c['seeds']} seeds, Nature replay ratio, "
            "aggregate steps/s", rate, rate if c["seeds"] >= 8 else None, ATARI_TARGET,
            f"{ATARI_TARGET:,}")
    for c in steps.get("minatar", {}).get("result", {}).get("configurations", []):
        rate = c["aggregate_steps_per_second"]["median"]
        reference = best(cpu["configurations"], seeds=c["seeds"]) if cpu else None
        ratio = f" ({rate / reference:.1f}x the CPU's {reference:,.0f})" if reference else ""
        row("minatar", f"SpaceInvaders-MinAtar, {c['seeds']} vmapped seeds, whole loop in XLA, "
            f"aggregate steps/s{ratio}", rate,
            rate / reference if c["seeds"] == 8 and reference else None, MINATAR_RATIO_TARGET,
            f"{MINATAR_RATIO_TARGET:.0f}x")
    for key, c in steps.get("scaling", {}).get("result", {}).get("seed_parallel", {}).items():
        devices = int(key.split("_")[1])
        row("scaling", f"Catch seed-parallel (--devices {devices}), {devices} x "
            f"{steps['scaling']['result']['seeds_per_device']} seeds, env steps/s "
            f"({c['efficiency']:.2f}x {devices} x one device)", c["median"], None, 0, "")
    if cpu:
        lines += ["", f"CPU reference: {cpu['machine']}, the same minatar step at commit "
                      f"{str(cpu['source'].get('commit', '?'))[:7]}, load {cpu.get('load', '?')}."]
    return lines


def update_readme(lines: list[str]) -> None:
    readme = TABLE_DOC
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n" + "\n".join(lines) + f"\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="each call's $OUT, oldest first")
    parser.add_argument("--cpu", type=Path, help="a CPU reference run's output folder")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "results" / "benchmarks")
    parser.add_argument("--update-readme", action="store_true",
                        help="replace the gpu block of docs/performance.md with the new table")
    args = parser.parse_args(argv)
    steps = merged(args.dirs)
    if "device" not in steps:
        raise SystemExit("no call recorded its device step")
    record = {"benchmark": "the prepared GPU session (scripts/gpu/session.sh)",
              "command": "scripts/gpu/prepare.sh; scripts/gpu/session.sh (on the GPU machine); "
                         "python -m scripts.gpu.collect ...",
              "steps": {k: steps[k] for k in STEPS if k in steps}}
    if args.cpu:
        cpu_session = json.loads((args.cpu / "session.json").read_text())
        device = cpu_session["steps"]["device"]["result"]
        record["cpu"] = {"configurations":
                         cpu_session["steps"]["minatar"]["result"]["configurations"],
                         "machine": f"{device['cpus']} cores, {device['platform']}",
                         "source": device["source"], "load": cpu_session.get("load"),
                         "versions": device["versions"]}
    name = re.sub(r"[^a-z0-9]+", "-", steps["device"]["result"]["device_kind"].lower()).strip("-")
    lines = table(record)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"gpu-{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    notes = args.output_dir / f"gpu-{name}-notes.md"
    body = [f"# GPU session: {steps['device']['result']['device_kind']}", "", *lines, "",
            f"Reproduce: `{record['command']}`", ""]
    if notes.is_file():
        body += [notes.read_text().rstrip("\n"), ""]
    (args.output_dir / f"gpu-{name}.md").write_text("\n".join(body))
    print("\n".join(body))
    if args.update_readme:
        update_readme(lines)
    return record


if __name__ == "__main__":
    main()
