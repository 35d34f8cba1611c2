"""The benchmark harness: our loops against peers and against this machine's limits, side by side.

Sections (``--sections``, all by default):

- peers:    Atari DQN loop (Space Invaders, envpool, 1 env, Nature body, batch 32, one update
            every 4 steps): steps/s of ours, Stable-Baselines3 DQN (PyTorch) and sbx DQN (JAX)
            configured from the same numbers, timed after learning starts. The peers run in a
            separate environment, ``.bench-venv`` (``--peer-venv``), that this script creates
            from the package registry the first time (CPU build of PyTorch); if that fails the
            peers are skipped with a one-line message. Runs alternate ours/SB3/sbx per repeat
            so that background load hits all three alike.
- learner:  one DQN update at batch 32 (Nature body, both conv implementations) against the
            FLOP bound: XLA's FLOP count of the compiled update over the machine's matmul rate
            (a jitted 2048x2048 float32 matmul).
- overhead: our host loop with learning off (acting, replay inserts, frame stacking) against
            envpool stepping alone with random actions, same env settings.
- seeds:    wall time of ``python -m jaxatari train`` for 1, 2, 4 and 8 vmapped seeds on Catch
            and Space Invaders MinAtar (whole loop in XLA), and of 8 separate one-seed processes
            started together; compilation and start-up included, as a user sees it.
- sweep:    a learning-rate sweep (``--sweep eta=...``, 8 values x 2 seeds, ``--sweep-mode map``)
            of the minatar-dqn preset on Space Invaders MinAtar as one ``python -m jaxatari
            train`` against the same 16 configuration-seed runs as separate one-seed processes,
            at most one per core at a time (what a user of this machine would do); wall time,
            start-up and compilation included.
- actor:    the async-a3c preset on Space Invaders with 8 envs (scripts/bench_a3c.py's run).
- scaling:  seed-parallel training over N devices (``--devices N``, the Anakin layout of Hessel
            et al. 2021: env, acting and learning on the devices) on Catch, N x S seeds against N
            times one device's S seeds: env steps/s of all seeds, from progress.csv's chunks after
            the first (compilation left out). On a CPU the devices are forced
            (``--xla_force_host_platform_device_count``) and share the machine's cores, so the
            section shows that the split runs, not what N real devices gain.
- gpu:      only where JAX sees a GPU: Atari DQN with E envs x S vmapped seeds at the Nature
            replay ratio (8 sampled transitions per env step per seed); written to gpu-<name>.json.

Every figure is the median of ``--repeats`` runs with min and max; the JSON records the commit,
the machine, the load average and the versions. ``--quick`` is a smoke run (tiny budgets, one
repeat) whose numbers mean nothing.

    python -m scripts.benchmark                      # everything, writes results/benchmarks/
    python -m scripts.benchmark --sections learner overhead --repeats 5
    python -m scripts.benchmark --quick --no-peers --output-dir /tmp/bench

Writes ``<output-dir>/cpu-<name>.json`` and ``cpu-<name>.md`` (``--name``, default the
logical CPU count, e.g. ``2core``); ``--update-readme`` puts the table between the
``benchmark:start`` and ``benchmark:end`` marks of docs/performance.md (the flag keeps its name
from when the table was in README.md).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.config import build_config
from jaxatari.envs.atari import PROTOCOLS, envpool_kwargs
from jaxatari.xla_options import edge_jit
from scripts.provenance import cpu_model, git_commit

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("peers", "learner", "overhead", "seeds", "sweep", "actor", "scaling", "gpu")
TARGETS = {"peers_ratio": 1.2, "flop_bound_ratio": 1.3, "envpool_fraction": 0.85,
           "seed_speedup": 3.0, "sweep_speedup": 3.0}
README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
ROOT_README = ROOT / "docs" / "performance.md"    # the file whose block --update-readme rewrites
PEER_PACKAGES = ("torch==2.13.0", "stable-baselines3==2.9.2", "sbx-rl==0.28.0",
                 "envpool==1.2.5", "jax==0.10.2", "jaxlib==0.10.2")

# The shared DQN settings of section "peers": the nature preset's loop with the Nature body
# (SB3's and sbx's NatureCNN: no padding) and Adam, which all three have.
DQN = dict(game="SpaceInvaders", buffer_size=100_000, batch_size=32, train_freq=4, gamma=0.99,
           target_update_interval=10_000, learning_rate=1e-4, epsilon_end=0.1,
           exploration_steps=100_000, grad_clip=10.0)






def summary(values: list[float]) -> dict:
    return {"runs": values, "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def log(message: str) -> None:
    print(message, flush=True)


class TimeBudgetSpent(Exception):
    """Raised by ChunkTimer to end a run once its timed chunks have used their budget."""


class ChunkTimer:
    """A RunLogger stand-in that keeps each chunk's end step, steps and seconds.

    With ``budget_s``, the run is stopped (TimeBudgetSpent) once the chunks that start at or
    after ``timed_from`` add up to that many seconds, so a run on unknown hardware takes a
    known time."""

    def __init__(self, timed_from: int = 0, budget_s: float | None = None):
        self.chunks: list[tuple[int, int, float]] = []
        self.timed_from, self.budget_s = timed_from, budget_s

    def log_chunk(self, step, out, epsilon, seconds, steps):
        self.chunks.append((step, steps, seconds))
        if self.budget_s is not None:
            spent = sum(t for end, n, t in self.chunks if end - n >= self.timed_from)
            if spent >= self.budget_s:
                raise TimeBudgetSpent

    def log_eval(self, *args, **kwargs):
        pass

    def note(self, *args, **kwargs):
        pass

    def speed_after(self, step: int) -> float:
        timed = [(n, t) for end, n, t in self.chunks if end - n >= step]
        if not timed:
            raise SystemExit(f"no chunk starts after step {step}: raise the step budget")
        return sum(n for n, _ in timed) / sum(t for _, t in timed)


# ------------------------------------------------------------------ our Atari DQN loop
def our_dqn_config(learn_start: int, total: int, chunk: int, seed: int, overrides=None):
    return build_config("nature", {
        "game": DQN["game"], "model_body": "nature", "envs": 1, "seeds": 1, "seed": seed,
        "mem_size": DQN["buffer_size"], "batch_size": DQN["batch_size"],
        "mem_sample_freq": DQN["train_freq"], "mem_n_samples": 1, "gamma": DQN["gamma"],
        "tau": DQN["target_update_interval"], "optimiser": "adam", "eta": DQN["learning_rate"],
        "epsilon_end": DQN["epsilon_end"], "epsilon_steps": DQN["exploration_steps"],
        "grad_clip": DQN["grad_clip"], "learn_start": learn_start, "steps": total,
        "chunk_steps": chunk, "val_freq": min(100 * total, 2**31 - 1),    # never validates
        "val_envs": 1, "val_steps": 1,
        **(overrides or {})})


def our_dqn_speed(learn_start: int, warmup: int, timed: int, chunk: int, seed: int,
                  overrides=None, budget_s: float | None = None) -> float:
    """Per-seed steps/s of our host loop after ``learn_start + warmup`` steps; with
    ``budget_s`` the timed part ends after that many seconds even if ``timed`` is not reached."""
    envs = (overrides or {}).get("envs", 1)
    total = -(-(learn_start + warmup + timed) // envs) * envs     # a multiple of --envs
    config = our_dqn_config(learn_start, total, chunk, seed, overrides)
    return timed_trainer_speed(config, learn_start + warmup, budget_s)


def timed_trainer_speed(config, timed_from: int, budget_s: float | None = None) -> float:
    """Per-seed steps/s of a Trainer's chunks that start at or after step ``timed_from``
    (compilation and replay filling come before it), on the host or the JAX-native path."""
    from jaxatari.loop import Trainer
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir), quiet=True)
        timer = ChunkTimer(timed_from, budget_s)
        trainer.logger = timer
        try:
            trainer._run_native(None) if trainer.native else trainer._run_host(None)
        except TimeBudgetSpent:
            pass
    return timer.speed_after(timed_from)


def minatar_speed(seeds: int, timed_from: int, chunk: int, budget_s: float, seed: int = 1) -> float:
    """Per-seed steps/s of the minatar-dqn preset (Space Invaders, the whole loop in XLA) with
    ``seeds`` vmapped seeds, after ``timed_from`` steps, for about ``budget_s`` seconds."""
    config = build_config("minatar-dqn", {
        "seeds": seeds, "seed": seed, "steps": 100_000_000, "chunk_steps": chunk,
        "learn_start": min(5000, timed_from), "val_freq": 10 ** 9, "val_envs": 1, "val_steps": 1,
        "checkpoint_replay": "false"})
    return timed_trainer_speed(config, timed_from, budget_s)


def peer_settings(framework: str, learn_start: int, warmup: int, timed: int, seed: int,
                  torch_threads: int | None = None) -> dict:
    env = envpool_kwargs(PROTOCOLS["kaixhin"])
    # The peers stack frames in envpool; our loop stacks them itself (stack_num 1).
    env.update(stack_num=4, reward_clip=True)
    settings = {"framework": framework, "seed": seed, "env_kwargs": env,
                "learning_starts": learn_start, "warmup_steps": warmup, "timed_steps": timed, **DQN}
    if torch_threads:
        settings["threads"] = torch_threads
    return settings


def ensure_peer_venv(venv: Path) -> Path | None:
    """The peers' Python, installing them on first use; None (with a message) if impossible."""
    python = venv / "bin" / "python"
    check = "import stable_baselines3, sbx, envpool, torch"
    if python.exists() and subprocess.run([python, "-c", check], capture_output=True).returncode == 0:
        return python
    log(f"creating {venv} with {', '.join(PEER_PACKAGES)} (once) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        # torch alone first: with it installed, the others' torch requirement is met and pip
        # does not fetch the registry's CUDA build and its several GB of packages.
        subprocess.run([*pip, PEER_PACKAGES[0]], check=True)
        subprocess.run([*pip, *PEER_PACKAGES[1:]], check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        log(f"peers skipped: could not install them into {venv} ({error})")
        return None
    if subprocess.run([python, "-c", check], capture_output=True).returncode != 0:
        log(f"peers skipped: {venv} cannot import them")
        return None
    return python


def peer_speed(python: Path, settings: dict) -> float:
    done = subprocess.run([str(python), str(ROOT / "scripts" / "bench_peers.py"),
                           json.dumps(settings)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                           else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])["steps_per_second"]


def section_peers(args) -> dict:
    p = args.sizes["peers"]
    python = None if args.no_peers else ensure_peer_venv(args.peer_venv)
    if args.no_peers:
        log("peers skipped (--no-peers)")
    runs: dict[str, list[float]] = {"ours": [], "sb3": [], "sbx": []}
    failures: dict[str, str] = {}
    for repeat in range(args.repeats):
        seed = repeat + 1
        runs["ours"].append(our_dqn_speed(p["learn_start"], p["warmup"], p["timed"],
                                          p["chunk"], seed))
        log(f"  peers repeat {repeat + 1}: ours {runs['ours'][-1]:.1f} steps/s")
        for framework in ("sb3", "sbx"):
            if python is None or framework in failures:
                continue
            try:
                speed = peer_speed(python, peer_settings(framework, p["learn_start"],
                                                         p["warmup"], p["timed"], seed,
                                                         args.torch_threads))
            except RuntimeError as error:
                failures[framework] = str(error)
                log(f"  {framework} failed: {error}")
                continue
            runs[framework].append(speed)
            log(f"  peers repeat {repeat + 1}: {framework} {speed:.1f} steps/s")
    result = {"settings": {**DQN, **p, "env": "envpool SpaceInvaders-v5, kaixhin protocol, 1 env",
                           "our_overrides": "nature preset with --model-body nature --optimiser "
                                            "adam --eta 1e-4 --grad-clip 10",
                           "sb3_torch_threads": args.torch_threads or "torch default"},
              "failures": failures}
    for name, values in runs.items():
        if values:
            result[name] = summary(values)
    peers = [result[name]["median"] for name in ("sb3", "sbx") if name in result]
    if peers:
        result["ratio_to_fastest_peer"] = result["ours"]["median"] / max(peers)
        result["target_met"] = result["ratio_to_fastest_peer"] >= TARGETS["peers_ratio"]
    return result


# ------------------------------------------------------------------ learner vs FLOP bound
def matmul_gflops(size: int, repeats: int) -> dict:
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, a).block_until_ready()
        rates.append(2 * size ** 3 / (time.perf_counter() - started) / 1e9)
    return summary(rates)


def update_timing(conv: str, calls: int, repeats: int, batch: int = 32) -> dict:
    """Median ms of our jitted, donated DQN update (Nature body) at ``batch`` and its FLOPs."""
    from scripts.profile_update import ATARI_SPEC, filled_agent, time_calls, xla_gflop
    config = our_dqn_config(max(64, batch), 1000, 1000, 1, {"conv": conv, "mem_size": 10_000,
                                                            "batch_size": batch})
    agent, train, replay_state = filled_agent(config, ATARI_SPEC, native=False)
    train, replay_state = jax.tree.map(lambda x: x[0], (train, replay_state))   # one seed
    compiled = edge_jit(agent.update, donate_argnums=(0, 1)).lower(
        train, replay_state, 0.0).compile()
    times, _ = time_calls(compiled, (train, replay_state, 0.0), calls, repeats,
                          lambda out: (out[0], out[1], 0.0))
    return {"ms": summary(times), "xla_gflop": xla_gflop(compiled)}


def section_learner(args) -> dict:
    s = args.sizes["learner"]
    rate = matmul_gflops(s["matmul"], max(args.repeats, 3))
    result = {"matmul_size": s["matmul"], "matmul_gflops": rate,
              "analytic_gflop": 4 * 32 * 18.69e-3,   # 4 forward-pass equivalents (fwd+bwd, target)
              "calls_per_repeat": s["calls"]}
    for conv in ("xla", "patch"):
        timing = update_timing(conv, s["calls"], args.repeats)
        bound_ms = timing["xla_gflop"] / rate["median"] * 1e3
        timing["flop_bound_ms"] = bound_ms
        timing["ratio_to_bound"] = timing["ms"]["median"] / bound_ms
        result[conv] = timing
        log(f"  learner {conv}: {timing['ms']['median']:.1f} ms per update, bound "
            f"{bound_ms:.1f} ms ({timing['xla_gflop']:.2f} GFLOP at "
            f"{rate['median']:.0f} GFLOP/s)")
    result["target_met"] = result["xla"]["ratio_to_bound"] <= TARGETS["flop_bound_ratio"]
    return result


# ------------------------------------------------------------------ loop overhead
def envpool_alone(steps: int, seed: int) -> float:
    import envpool
    pool = envpool.make_gymnasium(f"{DQN['game']}-v5", num_envs=1, seed=seed,
                                  **envpool_kwargs(PROTOCOLS["kaixhin"]))
    pool.reset()
    actions = np.random.default_rng(seed).integers(0, pool.action_space.n, (steps, 1),
                                                   dtype=np.int32)
    for t in range(min(100, steps)):    # warm the emulator and allocator
        pool.step(actions[t])
    started = time.perf_counter()
    for t in range(steps):
        pool.step(actions[t])
    seconds = time.perf_counter() - started
    pool.close()
    return steps / seconds


def section_overhead(args) -> dict:
    s = args.sizes["overhead"]
    ours, raw = [], []
    for repeat in range(args.repeats):
        raw.append(envpool_alone(s["steps"], repeat + 1))
        # learning never starts: acting (one forward pass per step), replay inserts,
        # frame stacking and the host loop's bookkeeping
        ours.append(_no_learning_speed(s, repeat + 1))
        log(f"  overhead repeat {repeat + 1}: ours {ours[-1]:.0f}, envpool {raw[-1]:.0f} steps/s")
    result = {"steps": s["steps"], "ours_learning_off": summary(ours), "envpool_alone": summary(raw),
              "fraction": statistics.median(ours) / statistics.median(raw)}
    result["target_met"] = result["fraction"] >= TARGETS["envpool_fraction"]
    return result


def _no_learning_speed(s: dict, seed: int) -> float:
    """Our loop's steps/s with --learn-start beyond the run, after one untimed chunk."""
    from jaxatari.loop import Trainer
    total = s["steps"] + s["chunk"]
    config = our_dqn_config(10 * total, total, s["chunk"], seed)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir), quiet=True)
        timer = ChunkTimer()
        trainer.logger = timer
        trainer._run_host(None)
    return timer.speed_after(s["chunk"])


# ------------------------------------------------------------------ vmapped seeds
def cli_train(preset: str, seeds: int, overrides: dict, run_dir: Path,
              environment: dict | None = None) -> subprocess.Popen:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()]
    inherited = os.environ.get("PYTHONPATH")
    env = {**os.environ, **(environment or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *([inherited] if inherited else [])])}
    return subprocess.Popen([sys.executable, "-m", "jaxatari", "train", preset, "--quiet",
                             f"--seeds={seeds}", f"--run-dir={run_dir}", *flags],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def timed_runs(preset: str, seeds: int, runs: list[dict], concurrent: int) -> float:
    """Wall seconds for ``runs`` (each one process's overrides), at most ``concurrent``
    processes at a time, the next started when the oldest running one ends."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        waiting, running = list(enumerate(runs)), []
        while waiting or running:
            while waiting and len(running) < concurrent:
                i, overrides = waiting.pop(0)
                running.append(cli_train(preset, seeds, overrides, Path(tmp) / f"run{i}"))
            ended = running.pop(0)   # the oldest; reading its stderr pipe keeps it from blocking
            _, err = ended.communicate()
            if ended.returncode != 0:
                raise RuntimeError(f"{preset} run failed: {err.strip().splitlines()[-1:]}")
        return time.perf_counter() - started


def timed_processes(preset: str, seeds_per_process: int, processes: int, overrides: dict) -> float:
    """``processes`` runs started together, seeds 1, 2, ..."""
    return timed_runs(preset, seeds_per_process,
                      [{**overrides, "seed": 1 + i} for i in range(processes)], processes)


def section_seeds(args) -> dict:
    s = args.sizes["seeds"]
    workloads = {
        "catch": ("demo", {"steps": s["catch_steps"], "chunk_steps": s["catch_steps"] // 2,
                           "val_freq": s["catch_steps"], "val_steps": 64, "val_envs": 8,
                           "checkpoint_replay": "false"}),
        "SpaceInvaders-MinAtar": ("minatar-dqn", {
            "steps": s["minatar_steps"], "chunk_steps": s["minatar_steps"] // 2,
            "learn_start": s["minatar_steps"] // 4, "val_freq": s["minatar_steps"],
            "val_steps": 64, "val_envs": 8, "checkpoint_replay": "false"}),
    }
    result = {}
    for name, (preset, overrides) in workloads.items():
        rows = {}
        for seeds in s["seed_counts"]:
            walls = [timed_processes(preset, seeds, 1, overrides) for _ in range(args.repeats)]
            rows[f"vmapped_{seeds}"] = summary(walls)
            log(f"  {name}: {seeds} vmapped seeds {statistics.median(walls):.1f} s")
        most = max(s["seed_counts"])
        walls = [timed_processes(preset, 1, most, overrides) for _ in range(args.repeats)]
        rows[f"processes_{most}"] = summary(walls)
        log(f"  {name}: {most} processes {statistics.median(walls):.1f} s")
        rows["speedup"] = (rows[f"processes_{most}"]["median"]
                           / rows[f"vmapped_{most}"]["median"])
        rows["preset"], rows["overrides"] = preset, overrides
        result[name] = rows
    result["target_met"] = result["SpaceInvaders-MinAtar"]["speedup"] >= TARGETS["seed_speedup"]
    return result


# ------------------------------------------------------------------ sweeps
SWEEP_ETAS = (1e-4, 1.6e-4, 2.5e-4, 4e-4, 6.3e-4, 1e-3, 1.6e-3, 2.5e-3)


def minatar_overrides(steps: int) -> dict:
    return {"steps": steps, "chunk_steps": steps // 2, "learn_start": steps // 4,
            "val_freq": steps, "val_steps": 64, "val_envs": 8, "checkpoint_replay": "false"}


def section_sweep(args) -> dict:
    s = args.sizes["sweep"]
    etas = SWEEP_ETAS[:s["configurations"]]
    base = minatar_overrides(s["steps"])
    sweep = {**base, "sweep": "eta=" + ",".join(f"{eta:g}" for eta in etas),
             "sweep_mode": "map"}
    separate = [{**base, "eta": f"{eta:g}", "seed": 1 + seed}
                for eta in etas for seed in range(s["seeds"])]
    concurrent = max(1, min(len(separate), os.cpu_count() or 1))
    one, many = [], []
    for _ in range(args.repeats):   # alternating, so both see the same load
        one.append(timed_processes("minatar-dqn", s["seeds"], 1, sweep))
        log(f"  sweep {len(etas)} x {s['seeds']} seeds, one process: {one[-1]:.1f} s")
        many.append(timed_runs("minatar-dqn", 1, separate, concurrent))
        log(f"  the same {len(separate)} runs as processes, {concurrent} at a time: "
            f"{many[-1]:.1f} s")
    result = {"one_program": summary(one), "separate_processes": summary(many),
              "configurations": len(etas), "seeds": s["seeds"], "etas": list(etas),
              "concurrent_processes": concurrent, "preset": "minatar-dqn", "overrides": base,
              "speedup": statistics.median(many) / statistics.median(one)}
    result["target_met"] = result["speedup"] >= TARGETS["sweep_speedup"]
    return result


# ------------------------------------------------------------------ actor-learner
def section_actor(args) -> dict:
    from scripts.bench_a3c import one_run
    s = args.sizes["actor"]
    result = {}
    for mode in ("sync", "async"):
        speeds = [one_run(8, mode, s["steps"], s["chunk"], s["warmup"], seed)
                  for seed in range(1, args.repeats + 1)]
        result[mode] = summary(speeds)
        log(f"  async-a3c 8 envs {mode}: {statistics.median(speeds):.0f} steps/s")
    result["envs"] = 8
    return result


# ------------------------------------------------------------------ devices
FORCED_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def seed_parallel_speed(devices: int, seeds: int, s: dict, forced: int) -> float:
    """Env steps/s of all seeds of one ``train demo --devices N`` run: the median over the chunks
    after the first of progress.csv's per-seed steps/s, times the seeds."""
    steps = s["chunks"] * s["chunk"]
    flags = {"steps": steps, "chunk_steps": s["chunk"], "val_freq": steps, "val_steps": 256,
             "val_envs": 32, "checkpoint_replay": "false", "devices": devices}
    xla_flags = os.environ.get("XLA_FLAGS", "")
    env_flags = xla_flags if FORCED_DEVICES_FLAG in xla_flags or forced <= 1 else \
        f"{xla_flags} {FORCED_DEVICES_FLAG}={forced}".strip()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        process = cli_train("demo", seeds, flags, run_dir, {"XLA_FLAGS": env_flags})
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"--devices {devices} run failed: {err.strip().splitlines()[-1:]}")
        with open(run_dir / "progress.csv") as handle:
            rows = list(csv.DictReader(handle))
    first = min(int(row["step"]) for row in rows)
    per_chunk: dict[int, list[float]] = {}
    for row in rows:
        if int(row["step"]) > first:
            per_chunk.setdefault(int(row["step"]), []).append(float(row["steps_per_second"]))
    return statistics.median(sum(speeds) for speeds in per_chunk.values())


def section_scaling(args) -> dict:
    s = args.sizes["scaling"]
    on_cpu = jax.default_backend() == "cpu"
    counts = [n for n in s["device_counts"] if on_cpu or n <= jax.device_count()]
    forced = max(counts) if on_cpu else 0
    rows = {}
    for devices in counts:
        speeds = [seed_parallel_speed(devices, devices * s["seeds_per_device"], s, forced)
                  for _ in range(args.repeats)]
        rows[f"devices_{devices}"] = summary(speeds)
        log(f"  seed-parallel Catch, {devices} device(s) x {s['seeds_per_device']} seeds: "
            f"{statistics.median(speeds):,.0f} env steps/s")
    one = rows["devices_1"]["median"]
    for devices in counts:
        rows[f"devices_{devices}"]["efficiency"] = (rows[f"devices_{devices}"]["median"]
                                                    / (devices * one))
    return {"seed_parallel": rows, "seeds_per_device": s["seeds_per_device"],
            "forced_cpu_devices": forced or None,
            "not_measured": ["data-parallel seeds (one seed over N devices)",
                             "Sebulba (host envs feeding actor and learner devices)"]}


# ------------------------------------------------------------------ GPU
def gpu_learner(s: dict, repeats: int) -> dict:
    """The Nature update's ms and GFLOP/s at each batch size (XLA's convolutions)."""
    rows = []
    for batch in s["batches"]:
        timing = update_timing("xla", s["calls"], repeats, batch)
        timing["batch"] = batch
        timing["gflop_per_second"] = timing["xla_gflop"] / (timing["ms"]["median"] / 1e3)
        rows.append(timing)
        log(f"  update B={batch}: {timing['ms']['median']:.2f} ms, "
            f"{timing['gflop_per_second']:.0f} GFLOP/s")
    return {"updates": rows}


def gpu_atari(s: dict, repeats: int, deadline: float | None = None) -> dict:
    """Atari DQN with E envpool envs x S vmapped seeds at the Nature replay ratio: 8 sampled
    transitions per env step per seed (batch 32 every 4 env steps, so E envs stepping together
    make E / 4 updates per iteration). Configurations that would start after ``deadline``
    (time.monotonic) are skipped and listed."""
    rows, skipped = [], []
    for envs, seeds in s["grid"]:
        if deadline is not None and time.monotonic() + s["budget_s"] * 2 > deadline:
            skipped.append({"envs": envs, "seeds": seeds})
            continue
        speeds = []
        overrides = {"envs": envs, "seeds": seeds, "mem_sample_freq": 4, "conv": "auto",
                     "mem_size": s["mem_size"] // envs * envs}     # a multiple of --envs
        try:
            for repeat in range(repeats):
                speed = our_dqn_speed(s["learn_start"], s["warmup"], 10 ** 8, s["chunk"] * envs,
                                      repeat + 1, overrides, budget_s=s["budget_s"])
                speeds.append(speed * seeds)
        except Exception as error:     # one configuration's failure keeps the others' rows
            skipped.append({"envs": envs, "seeds": seeds, "error": f"{type(error).__name__}: {error}"})
            log(f"  atari E={envs} S={seeds} failed: {error}")
            continue
        rows.append({"envs": envs, "seeds": seeds, "aggregate_steps_per_second": summary(speeds)})
        log(f"  atari E={envs} S={seeds}: {statistics.median(speeds):.0f} aggregate steps/s")
    return {"configurations": rows, "skipped": skipped, "settings": s}


def gpu_minatar(s: dict, repeats: int) -> dict:
    """minatar-dqn (Space Invaders, whole loop in XLA) with 1 and more vmapped seeds."""
    rows = []
    for seeds in s["seed_counts"]:
        speeds = [minatar_speed(seeds, s["timed_from"], s["chunk"], s["budget_s"], repeat + 1)
                  * seeds for repeat in range(repeats)]
        rows.append({"seeds": seeds, "aggregate_steps_per_second": summary(speeds)})
        log(f"  minatar S={seeds}: {statistics.median(speeds):.0f} aggregate steps/s")
    return {"configurations": rows, "settings": s}


def section_gpu(args) -> dict | None:
    """The GPU measurements (scripts/gpu/session.sh runs the same parts one by one)."""
    if not any(d.platform == "gpu" for d in jax.devices()):
        log("gpu section skipped: JAX sees no GPU")
        return None
    s = args.sizes["gpu"]
    return {"device": str(jax.devices()[0].device_kind),
            "learner": gpu_learner(s["learner"], args.repeats),
            "atari": gpu_atari(s["atari"], args.repeats),
            "minatar": gpu_minatar(s["minatar"], args.repeats)}


def gpu_sizes(quick: bool) -> dict:
    """The GPU section's sizes; ``quick`` runs every part in seconds (on a CPU too)."""
    if quick:
        return {"learner": dict(batches=(32, 128), calls=2),
                "atari": dict(grid=((4, 2),), learn_start=64, warmup=32, chunk=8,
                              mem_size=2000, budget_s=1.0),
                "minatar": dict(seed_counts=(2,), timed_from=600, chunk=200, budget_s=1.0),
                "scaling": dict(device_counts=(1,), seeds_per_device=1, chunks=2, chunk=512)}
    return {"learner": dict(batches=(32, 256), calls=50),
            "atari": dict(grid=((8, 1), (32, 8), (64, 16)), learn_start=2000, warmup=512,
                          chunk=32, mem_size=100_000, budget_s=12.0),
            "minatar": dict(seed_counts=(1, 8), timed_from=10_000, chunk=5000, budget_s=20.0),
            "scaling": dict(device_counts=(1, 2, 4, 8), seeds_per_device=8, chunks=4,
                            chunk=64_000)}


# ------------------------------------------------------------------ report
def sizes(quick: bool) -> dict:
    if quick:
        return {"peers": dict(learn_start=64, warmup=32, timed=32, chunk=16),
                "learner": dict(matmul=512, calls=2),
                "overhead": dict(steps=64, chunk=32),
                "seeds": dict(catch_steps=512, minatar_steps=512, seed_counts=(1, 2)),
                "sweep": dict(steps=512, configurations=2, seeds=2),
                "actor": dict(steps=160, chunk=40, warmup=2),
                "scaling": dict(device_counts=(1, 2), seeds_per_device=1, chunks=3, chunk=1024),
                "gpu": gpu_sizes(True)}
    return {"peers": dict(learn_start=500, warmup=100, timed=400, chunk=100),
            "learner": dict(matmul=2048, calls=10),
            "overhead": dict(steps=2000, chunk=250),
            "seeds": dict(catch_steps=10_000, minatar_steps=10_000, seed_counts=(1, 2, 4, 8)),
            "sweep": dict(steps=10_000, configurations=8, seeds=2),
            "actor": dict(steps=2400, chunk=400, warmup=2),
            "scaling": dict(device_counts=(1, 2, 4), seeds_per_device=2, chunks=4,
                            chunk=32_000),
            "gpu": gpu_sizes(False)}


def markdown(record: dict) -> str:
    r = record["results"]
    lines = [f"Benchmarks on {record['machine']['cpu']} x{record['machine']['logical_cpus']} "
             f"(load {record['machine']['load_average_before'][0]:.1f} before, "
             f"{record['machine']['load_average_after'][0]:.1f} after), commit "
             f"{record['git_commit'][:10]}{' (dirty)' if record['git_dirty'] else ''}, "
             f"{record['repeats']} repeats, median [min-max].", "",
             f"Reproduce: `{record['command']}`", "",
             "| measurement | ours | reference | ratio | target | met |",
             "|---|---:|---:|---:|---:|:---:|"]

    def cell(s, fmt="{:.1f}"):
        return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"

    if "peers" in r:
        p = r["peers"]
        for name, label in (("sb3", "Stable-Baselines3 DQN"), ("sbx", "sbx DQN")):
            if name in p:
                lines.append(f"| Atari DQN loop, steps/s vs {label} | {cell(p['ours'])} | "
                             f"{cell(p[name])} | {p['ours']['median'] / p[name]['median']:.2f}x "
                             f"| | |")
        if "ratio_to_fastest_peer" in p:
            lines.append(f"| ... against the faster peer | | | {p['ratio_to_fastest_peer']:.2f}x "
                         f"| >= {TARGETS['peers_ratio']}x | {'yes' if p['target_met'] else 'no'} |")
        elif "ours" in p:
            lines.append(f"| Atari DQN loop, steps/s (peers skipped) | {cell(p['ours'])} | | | | |")
    if "learner" in r:
        lr = r["learner"]
        for conv in ("xla", "patch"):
            lines.append(f"| DQN update B=32 ({conv} conv), ms vs FLOP bound "
                         f"({lr[conv]['xla_gflop']:.2f} GFLOP / {lr['matmul_gflops']['median']:.0f} "
                         f"GFLOP/s) | {cell(lr[conv]['ms'])} | {lr[conv]['flop_bound_ms']:.1f} | "
                         f"{lr[conv]['ratio_to_bound']:.2f}x | "
                         + (f"<= {TARGETS['flop_bound_ratio']}x | "
                            f"{'yes' if lr['target_met'] else 'no'} |" if conv == "xla" else "| |"))
    if "overhead" in r:
        o = r["overhead"]
        lines.append(f"| loop with learning off vs envpool alone, steps/s | "
                     f"{cell(o['ours_learning_off'], '{:.0f}')} | {cell(o['envpool_alone'], '{:.0f}')} "
                     f"| {o['fraction']:.0%} | >= {TARGETS['envpool_fraction']:.0%} | "
                     f"{'yes' if o['target_met'] else 'no'} |")
    if "seeds" in r:
        for name in ("catch", "SpaceInvaders-MinAtar"):
            rows = r["seeds"][name]
            most = max(int(k.split("_")[1]) for k in rows if k.startswith("vmapped_"))
            vm = ", ".join(f"{k.split('_')[1]}: {rows[k]['median']:.1f}" for k in rows
                           if k.startswith("vmapped_"))
            target = (f">= {TARGETS['seed_speedup']}x | "
                      f"{'yes' if r['seeds']['target_met'] else 'no'} |"
                      if name == "SpaceInvaders-MinAtar" else "| |")
            lines.append(f"| {name}, wall s for vmapped seeds ({vm}) vs {most} processes | "
                         f"{cell(rows[f'vmapped_{most}'])} | {cell(rows[f'processes_{most}'])} | "
                         f"{rows['speedup']:.2f}x | {target}")
    if "sweep" in r:
        w = r["sweep"]
        runs = w["configurations"] * w["seeds"]
        lines.append(f"| {w['preset']} SpaceInvaders-MinAtar, wall s: a sweep of "
                     f"{w['configurations']} learning rates x {w['seeds']} seeds in one process vs "
                     f"the {runs} runs as processes ({w['concurrent_processes']} at a time) | "
                     f"{cell(w['one_program'])} | {cell(w['separate_processes'])} | "
                     f"{w['speedup']:.2f}x | >= {TARGETS['sweep_speedup']}x | "
                     f"{'yes' if w['target_met'] else 'no'} |")
    if "actor" in r:
        for mode in ("sync", "async"):
            lines.append(f"| async-a3c, 8 envs ({mode}), steps/s | "
                         f"{cell(r['actor'][mode], '{:.0f}')} | | | | |")
    if "scaling" in r:
        rows = r["scaling"]["seed_parallel"]
        forced = r["scaling"].get("forced_cpu_devices")
        where = f" ({forced} forced CPU devices sharing the cores)" if forced else ""
        for key, row in rows.items():
            devices = int(key.split("_")[1])
            lines.append(f"| Catch seed-parallel, {devices} device(s) x "
                         f"{r['scaling']['seeds_per_device']} seeds{where}, env steps/s vs "
                         f"{devices} x one device | {cell(row, '{:,.0f}')} | "
                         f"{devices * rows['devices_1']['median']:,.0f} | "
                         f"{row['efficiency']:.2f}x | | |")
    lines.append("")
    gpu = r.get("gpu")
    lines.append("GPU section: " + ("not run (JAX saw no GPU, or the section was not selected)." if gpu is None else
                                    f"ran on {gpu['device']}."))
    return "\n".join(lines) + "\n"


def update_readme(table: str) -> None:
    readme = ROOT_README
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}{README_END}{tail}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, 1 repeat")
    parser.add_argument("--no-peers", action="store_true", help="do not run SB3 and sbx")
    parser.add_argument("--peer-venv", type=Path, default=ROOT / ".bench-venv")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="SB3's torch.set_num_threads (default: torch's own choice, which "
                             "spins badly on a loaded machine; 1 is far faster there)")
    parser.add_argument("--name", default=f"{os.cpu_count()}core")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "results" / "benchmarks")
    parser.add_argument("--update-readme", action="store_true",
                        help="replace the benchmark block of docs/performance.md with the "
                             "new table")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    args.sizes = sizes(args.quick)
    commit, dirty = git_commit()
    load_before = os.getloadavg()
    started = time.time()
    results = {}
    for section in SECTIONS:
        if section not in args.sections:
            continue
        log(f"[{section}]")
        results[section] = globals()[f"section_{section}"](args)
        # Each finished section is kept at once: a crash or Ctrl+C later loses only its own.
        partial = args.output_dir / f"cpu-{args.name}.partial.json"
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"sections_done": list(results), "results": results,
                                       "git_commit": commit, "git_dirty": dirty},
                                      indent=2) + "\n")
    # The options as given: what was run is what a reader reruns.
    command = shlex.join(["python", "-m", "scripts.benchmark",
                          *(sys.argv[1:] if argv is None else argv)])
    record = {
        "benchmark": "jaxatari against peers and this machine's limits (scripts/benchmark.py)",
        "command": command, "repeats": args.repeats, "quick": args.quick,
        "sizes": args.sizes, "targets": TARGETS,
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
    args.output_dir.mkdir(parents=True, exist_ok=True)
    gpu = results.pop("gpu", None)
    if gpu is not None:
        gpu_record = {**record, "results": {"gpu": gpu}}
        (args.output_dir / f"gpu-{args.name}.json").write_text(json.dumps(gpu_record, indent=2) + "\n")
    record["results"]["gpu"] = gpu
    (args.output_dir / f"cpu-{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.output_dir / f"cpu-{args.name}.partial.json").unlink(missing_ok=True)
    table = markdown(record)
    (args.output_dir / f"cpu-{args.name}.md").write_text(table)
    print("\n" + table)
    if args.update_readme:
        update_readme(table)
    return record


if __name__ == "__main__":
    main()
