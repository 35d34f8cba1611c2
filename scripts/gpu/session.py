"""The prepared GPU session: every GPU measurement in one call, each step saved as it ends.

Run by ``scripts/gpu/session.sh`` (which installs the carried wheels first). Steps, in order:

- device:  the accelerator JAX sees, the versions, the commit the tree came from.
- tests:   the fast tests (``-m "not slow"``) on JAX's default backend, under a time cap.
- learner: the Nature update's ms and GFLOP/s at batch 32 and 256.
- atari:   Atari DQN, E envpool envs x S vmapped seeds at the Nature replay ratio.
- minatar: minatar-dqn (Space Invaders, the whole loop in XLA) with 1 and 8 vmapped seeds.
- scaling: the benchmark's scaling section on the devices there are (one GPU: the one-device
           seed-parallel Catch speed that N devices are measured against).

Each step writes ``<out>/<step>.json`` when it ends, and ``<out>/session.json`` and
``session.md`` are rewritten after every step, so a run cut off by its time limit still returns
what it finished. ``--dry-run`` runs every step with tiny sizes on whatever backend is there
(the suite runs it on the CPU so that this script cannot rot between GPU sessions).

    python -m scripts.gpu.session --out /tmp/gpu --budget-s 540
    python -m scripts.gpu.session --dry-run --out /tmp/gpu-dry
    python -m scripts.gpu.session --only minatar --name cpu-2core   # the CPU reference
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("device", "tests", "learner", "atari", "minatar", "scaling")
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "chex",
            "orbax-checkpoint", "rlax", "gymnax", "envpool", "numpy")
# Seconds each step may take at most on a GPU (tests are cut off; the others end their timed
# parts by their own budgets); steps that would start with less than ``MIN_LEFT_S`` left skip.
TESTS_CAP_S = 170
MIN_LEFT_S = 25


def source_commit() -> dict:
    """The commit the tree came from: on the GPU machine (session.sh sets
    JAXATARI_CARRIED_SOURCE) ``.whl/source.json`` from scripts/gpu/prepare.sh, since the copy
    there may hold a .git of another commit; elsewhere git's HEAD."""
    carried = ROOT / ".whl" / "source.json"
    if os.environ.get("JAXATARI_CARRIED_SOURCE") and carried.is_file():
        return json.loads(carried.read_text())
    from scripts.provenance import git_commit
    commit, dirty = git_commit()
    return {"commit": commit, "dirty": dirty}


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def step_device(args) -> dict:
    import jax
    devices = jax.devices()
    record = {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
              "devices": [str(d) for d in devices], "python": platform.python_version(),
              "platform": platform.platform(), "cpus": os.cpu_count(), "versions": versions(),
              "source": source_commit()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        record["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return record


def step_tests(args) -> dict:
    """The fast tests under a time cap; SIGINT at the cap makes pytest write what it ran."""
    junit = args.out / "tests-junit.xml"
    if args.dry_run:
        selection = ["tests/test_losses.py", "-k", "double or huber"]
        cap = 120
    else:
        selection = ["-m", "not slow"]
        cap = min(TESTS_CAP_S, args.left() - 3 * MIN_LEFT_S)
    workers = []
    if not args.dry_run and (os.cpu_count() or 1) >= 8 and _has("xdist"):
        workers = ["-n", "8"]       # the GPU machine's 16 cores; memory is not preallocated
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers,
               f"--junitxml={junit}", *selection]
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=cap)
        cut_off = False
    except subprocess.TimeoutExpired:
        process.send_signal(2)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        cut_off = True
    (args.out / "tests.log").write_text(output)
    record = {"command": " ".join(command[1:]), "cap_s": cap, "cut_off": cut_off,
              "seconds": round(time.monotonic() - started, 1), "exit_code": process.returncode,
              "summary": _last_summary(output)}
    record.update(_junit_counts(junit))
    junit.unlink(missing_ok=True)     # at most 8 files come back from the GPU machine
    return record


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _last_summary(output: str) -> str:
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    return lines[-1].strip("= ") if lines else ""


def _junit_counts(path: Path) -> dict:
    """Counts and the failing tests' names with their first message line."""
    if not path.is_file():
        return {}
    root = ElementTree.parse(path).getroot()
    cases = root.iter("testcase")
    failed = []
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for case in cases:
        name = f"{case.get('classname')}.{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            counts["failed"] += 1
            message = (problem.get("message") or "").strip().splitlines()
            failed.append({"test": name, "message": message[0][:300] if message else ""})
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failed}


def step_learner(args) -> dict:
    from scripts.benchmark import gpu_learner
    return gpu_learner(args.sizes["learner"], args.repeats)


def step_atari(args) -> dict:
    from scripts.benchmark import gpu_atari
    return gpu_atari(args.sizes["atari"], args.repeats, deadline=args.deadline - MIN_LEFT_S)


def step_minatar(args) -> dict:
    from scripts.benchmark import gpu_minatar
    return gpu_minatar(args.sizes["minatar"], args.repeats)


def step_scaling(args) -> dict:
    from scripts.benchmark import section_scaling
    return section_scaling(args)


def markdown(session: dict) -> str:
    """The session as a short table for results/ and docs/performance.md."""
    steps = session["steps"]
    device = steps.get("device", {}).get("result", {})
    source = device.get("source", {})
    lines = [f"GPU session on {device.get('device_kind', '?')} ({device.get('backend', '?')}), "
             f"JAX {device.get('versions', {}).get('jax', '?')}, Python "
             f"{device.get('python', '?')}, commit {str(source.get('commit', '?'))[:10]}"
             f"{' (uncommitted changes)' if source.get('dirty') else ''}"
             f"{' -- DRY RUN, sizes tiny, numbers meaningless' if session['dry_run'] else ''}.",
             "", f"Reproduce: `{session['command']}`", "",
             "| step | measurement | result |", "|---|---|---:|"]
    for name in STEPS:
        step = steps.get(name)
        if step is None:
            lines.append(f"| {name} | not reached (time limit) | |")
            continue
        if step["status"] != "ok":
            lines.append(f"| {name} | {step['status']}: {step.get('error', '')[:120]} | |")
            continue
        r = step["result"]
        if name == "tests":
            lines.append(f"| tests | fast tests ({r.get('summary') or 'no summary'}"
                         f"{', cut off at the cap' if r['cut_off'] else ''}) | "
                         f"{r.get('passed', 0)} passed, {r.get('failed', 0)} failed |")
        elif name == "learner":
            for u in r["updates"]:
                lines.append(f"| learner | Nature update B={u['batch']}, ms (GFLOP/s) | "
                             f"{u['ms']['median']:.2f} ({u['gflop_per_second']:.0f}) |")
        elif name == "atari":
            for c in r["configurations"]:
                lines.append(f"| atari | DQN, {c['envs']} envs x {c['seeds']} seeds, Nature "
                             f"replay ratio, aggregate steps/s | "
                             f"{c['aggregate_steps_per_second']['median']:.0f} |")
            for c in r["skipped"]:
                why = f"failed: {c['error'][:100]}" if "error" in c else "skipped (time)"
                lines.append(f"| atari | {c['envs']} envs x {c['seeds']} seeds | {why} |")
        elif name == "minatar":
            for c in r["configurations"]:
                lines.append(f"| minatar | SpaceInvaders-MinAtar, {c['seeds']} vmapped seeds, "
                             f"aggregate steps/s | {c['aggregate_steps_per_second']['median']:.0f} |")
        elif name == "scaling":
            for key, row in r["seed_parallel"].items():
                lines.append(f"| scaling | Catch seed-parallel, {key.split('_')[1]} device(s) x "
                             f"{r['seeds_per_device']} seeds, env steps/s | "
                             f"{row['median']:.0f} |")
        elif name == "device":
            lines.append(f"| device | {r.get('nvidia_smi') or r['devices'][0]} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from scripts.benchmark import gpu_sizes
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-session")),
                        help="where each step's JSON goes (default $OUT)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="wall seconds for the whole session; later steps skip when it runs out")
    parser.add_argument("--dry-run", action="store_true",
                        help="every step with tiny sizes (on a CPU too): checks the script, not speed")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    args.deadline = time.monotonic() + args.budget_s
    args.left = lambda: args.deadline - time.monotonic()
    args.sizes = gpu_sizes(args.dry_run)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "scripts/gpu/session.sh" + (" --cpu-dry-run" if args.dry_run else "")
    session = {"command": command, "argv": sys.argv[1:] if argv is None else argv,
               "dry_run": args.dry_run, "budget_s": args.budget_s, "sizes": args.sizes,
               "steps": {}, "load": [round(os.getloadavg()[0], 2)]}
    for name in STEPS:
        if name not in args.only:
            continue
        if args.left() < MIN_LEFT_S and name != "device":
            session["steps"][name] = {"status": "skipped", "error": "session budget spent"}
            continue
        print(f"[{name}] {args.left():.0f} s left", flush=True)
        started = time.monotonic()
        try:
            step = {"status": "ok", "result": globals()[f"step_{name}"](args)}
        except Exception as error:   # a failed step is recorded; the next ones still run
            step = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()}
            print(step["traceback"], flush=True)
        step["seconds"] = round(time.monotonic() - started, 1)
        session["steps"][name] = step
        (args.out / f"{name}.json").write_text(json.dumps(step, indent=2, default=str) + "\n")
        (args.out / "session.json").write_text(json.dumps(session, indent=2, default=str) + "\n")
        (args.out / "session.md").write_text(markdown(session))
        print(f"[{name}] {step['status']} in {step['seconds']} s", flush=True)
    session["load"].append(round(os.getloadavg()[0], 2))     # before and after, 1-minute
    (args.out / "session.json").write_text(json.dumps(session, indent=2, default=str) + "\n")
    print(markdown(session))
    return session


if __name__ == "__main__":
    main()
