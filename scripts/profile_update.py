"""Where a DQN update's time goes: ms per update and the costliest XLA ops, with and without
the kernel-layout weight gradient of ``networks.dense_matmul``.

For each seed count it times the preset's update the way training runs it, times each stage
of it on its own (sample, online forward, loss, gradient, whole update), and profiles it with
``jax.profiler``; each op is named by the network part it came from (XLA's metadata). The
profiler's per-op events do not time XLA's multi-threaded convolutions reliably (a
convolution's event can be short while an op beside it, or waiting for it, looks costly), so
the stage timings are the direct measure and the op list a pointer.

- JAX-native presets (MinAtar, Catch): ``calls`` updates in one ``lax.scan``, vmapped over
  the seeds, as the whole-loop-in-XLA path runs them (conv "patch").
- Atari presets (``nature``): one seed, one jitted and donated update per call from Python,
  as the host loop runs it (conv "xla"), on a synthetic 84x84 Space Invaders spec.

``--gradient`` chooses the weight gradient of every dense matmul (and of PatchConv's): "kernel"
(ours, ``x^T @ dy``) or "autodiff" (JAX's own transpose rule), or both side by side.
``--xla`` chooses how the update is compiled: "package" (``xla_options.edge_jit``, as training
compiles it) or "defaults" (XLA's default options), or both side by side.

    python -m scripts.profile_update                               # minatar-dqn, 1 and 8 seeds
    python -m scripts.profile_update --preset nature --seeds 1
    python -m scripts.profile_update --gradient kernel --xla package defaults
    python -m scripts.profile_update --no-write --top 25

Writes results/benchmarks/profile-<preset>.{json,md} unless ``--no-write``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import gzip
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxatari import networks
from jaxatari.agents.dqn import make_q_agent
from jaxatari.config import ConfigError, build_config
from jaxatari.envs import make_env
from jaxatari.envs.base import EnvSpec, JaxEnv
from jaxatari.loop import agent_settings
from jaxatari.xla_options import compiler_options, edge_jit, xla_defaults
from scripts.provenance import commit_label, cpu_model, write_result

ROOT = Path(__file__).resolve().parent.parent
ATARI_SPEC = EnvSpec(name="SpaceInvaders", obs_shape=(84, 84, 1), obs_dtype="uint8",
                     num_actions=6, action_meanings=(), protocol={}, human_name="space_invaders")
REPLAY_ROWS = 256      # enough history that every sampled transition is valid


@contextlib.contextmanager
def weight_gradient(kind: str):
    """"autodiff" swaps networks.dense_matmul for a plain matmul while the update is traced."""
    kept = networks.dense_matmul
    if kind == "autodiff":
        networks.dense_matmul = lambda x, kernel: x @ kernel
    try:
        yield
    finally:
        networks.dense_matmul = kept


def filled_agent(config, spec: EnvSpec, native: bool):
    """(agent, train [S], replay [S]): the config's agent for its ``seeds`` seeds, each replay
    holding ``REPLAY_ROWS`` random rows (scripts/benchmark.py's learner section uses it too)."""
    agent = make_q_agent(agent_settings(config, spec, native=native))
    keys = jax.random.split(jax.random.PRNGKey(0), config.seeds)
    train, replay, _ = jax.vmap(agent.init)(keys)
    shape, dtype = (1, *spec.obs_shape), jnp.dtype(agent.settings.obs_dtype)

    def add(replay, t, key):
        if dtype == jnp.uint8:
            frame = jax.random.randint(key, shape, 0, 255).astype(jnp.uint8)
        else:
            frame = (jax.random.uniform(key, shape) > 0.8).astype(dtype)
        row = agent.make_row(frame, jnp.zeros(1, jnp.int32), jnp.ones(1), jnp.zeros(1, bool),
                             (t == 0)[None], jnp.ones(1, bool), key)
        return agent.replay.add(replay, row)

    add = edge_jit(jax.vmap(add, in_axes=(0, None, 0)), donate_argnums=0)
    for t in range(REPLAY_ROWS):
        replay = add(replay, jnp.int32(t), jax.random.split(jax.random.PRNGKey(t), config.seeds))
    return agent, train, replay


def preset_agent(preset: str, seeds: int, overrides: dict):
    """(agent, train [S], replay [S], native) for a JAX-native or an Atari preset."""
    try:
        config = build_config(preset, {"mem_size": 10_240, "learn_start": 1_000, **overrides,
                                       "seeds": seeds})
    except ConfigError as error:      # an unknown preset or a bad --set: one line
        raise SystemExit(f"error: {error}") from None
    native = config.env != "atari"
    if native:
        env = make_env(config)
        if not isinstance(env, JaxEnv):
            raise SystemExit(f"{preset}: only JAX-native and Atari presets can be profiled")
        spec = env.spec
    elif seeds != 1:
        raise SystemExit("Atari presets run one seed per host loop: use --seeds 1")
    else:
        spec = ATARI_SPEC
    return (*filled_agent(config, spec, native), native)


def make_runner(agent, native: bool, calls: int):
    """(run, hlo): run(train, replay) -> (train, replay, loss) makes ``calls`` updates;
    hlo(train, replay) is the optimised HLO text of what run executes."""
    if native:
        def many(train, replay):
            def body(carry, _):
                train, replay, metrics = agent.update(*carry, 0.0)
                return (train, replay), metrics["loss"]
            (train, replay), loss = jax.lax.scan(body, (train, replay), None, length=calls)
            return train, replay, loss
        run = edge_jit(jax.vmap(many), donate_argnums=(0, 1))
        return run, lambda train, replay: run.lower(train, replay).compile().as_text()

    step = edge_jit(agent.update, donate_argnums=(0, 1))
    first = edge_jit(lambda tree: jax.tree.map(lambda x: x[0], tree))
    stack = edge_jit(lambda tree: jax.tree.map(lambda x: x[None], tree))

    def host_loop(train, replay):
        train, replay = first((train, replay))
        for _ in range(calls):
            train, replay, metrics = step(train, replay, 0.0)
        return *stack((train, replay)), metrics["loss"]

    def hlo(train, replay):
        return step.lower(*first((train, replay)), 0.0).compile().as_text()
    return host_loop, hlo


def _layer(op_name: str) -> str:
    path = [p for p in op_name.split("/")
            if p and not p.startswith(("jit(", "vmap(", "while", "closed"))]
    return "/".join(path[-3:])


def op_sources(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the layer it came from (the tail of XLA's op_name metadata;
    for a fusion without its own, the first one inside the computation it calls)."""
    inside = {}
    for block in re.split(r"\n(?=%|ENTRY)", hlo_text):
        header = re.match(r"%([\w.-]+) \(([^)]*)\)", block)
        if not header:
            continue
        found = re.search(r'op_name="([^"]+)"', block)
        root = re.search(r"ROOT %[\w.-]+ = \S+ (\w+)\(", block)
        operands = ", ".join(re.findall(r"\w+\[[\d,]*\]", header.group(2)))
        # no metadata inside (XLA drops it from some fused dots): the root op and its inputs
        inside[header.group(1)] = (_layer(found.group(1)) if found else
                                   f"{root.group(1)}({operands})" if root else "")
    sources = {}
    for line in hlo_text.splitlines():
        match = re.match(r'\s*(?:ROOT )?%([\w.-]+) = ', line)
        if not match:
            continue
        own = re.search(r'op_name="([^"]+)"', line)
        called = re.search(r"calls=%([\w.-]+)", line)
        sources[match.group(1)] = (_layer(own.group(1)) if own
                                   else inside.get(called.group(1), "") if called else "")
    return sources


def op_shapes(hlo_text: str) -> dict[str, str]:
    return {m.group(1): m.group(2)
            for m in re.finditer(r'%([\w.-]+) = (\w+\[[\d,]*\])', hlo_text)}


def profile(run, train, replay, calls: int, top: int, hlo_text: str) -> list[dict]:
    """The ``top`` costliest XLA ops of one call of ``run``, in ms per update."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            train, replay, loss = run(train, replay)
            jax.block_until_ready(loss)
        path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
        events = json.load(gzip.open(path))["traceEvents"]
    sources, shapes = op_sources(hlo_text), op_shapes(hlo_text)
    total = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and name in shapes:     # XLA ops only, not Python frames
            total[name] += event["dur"]
    return [{"op": name, "ms_per_update": round(us / 1e3 / calls, 4), "shape": shapes[name],
             "source": sources.get(name, "")} for name, us in total.most_common(top)]


def measure(preset: str, seeds: int, gradient: str, calls: int, repeats: int, top: int,
            overrides: dict, xla: str = "package") -> dict:
    compiled_with = xla_defaults() if xla == "defaults" else contextlib.nullcontext()
    with weight_gradient(gradient), compiled_with:
        agent, train, replay, native = preset_agent(preset, seeds, overrides)
        run, hlo_of = make_runner(agent, native, calls)
        train, replay, loss = run(train, replay)                  # compile
        jax.block_until_ready(loss)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            train, replay, loss = run(train, replay)
            jax.block_until_ready(loss)
            times.append((time.perf_counter() - started) / calls * 1e3)
        parts = []
        if gradient == "kernel" and xla == "package":
            parts, train, replay = stage_timings(agent, train, replay, calls, repeats)
        ops = profile(run, train, replay, calls, top, hlo_of(train, replay))
    return {"preset": preset, "seeds": seeds, "gradient": gradient, "xla": xla, "calls": calls,
            "ms_per_update": {"median": statistics.median(times), "min": min(times),
                              "max": max(times)},
            "ms_per_seed_update": statistics.median(times) / seeds, "top_ops": ops,
            "stages": parts}


STAGES = ("sample a batch", "online forward", "loss: online + target forward", "gradient",
          "whole update")


def stage_timings(agent, train, replay, calls: int, repeats: int):
    """(rows, train, replay): ms per call of each cumulative stage of an update, each jitted
    on its own (vmapped over the seeds) and called from Python, with XLA's FLOP count of the
    compiled stage.

    The profiler's per-op events do not time XLA's multi-threaded convolutions reliably:
    these direct timings say what each stage costs. No rows for recurrent agents, whose
    batches are sequences. The whole update donates ``train`` and ``replay``: use the ones
    returned."""
    if agent.settings.recurrent:
        return [], train, replay
    size = agent.settings.batch_size
    key = jax.random.PRNGKey(1)

    def sample(replay):
        return agent.replay.sample(replay, key, size)[0]

    batch = edge_jit(jax.vmap(sample))(replay)
    seeds = jax.tree.leaves(train.key)[0].shape[0]
    weights = jnp.ones((seeds, size))
    stages = {
        "sample a batch": (sample, (replay,), ()),
        "online forward": (lambda p, b: agent.network.apply(p, b.obs_tm1),
                           (train.params, batch), ()),
        "loss: online + target forward": (lambda p, tp, b, w: agent.loss(p, tp, b, w)[0],
                                          (train.params, train.target_params, batch, weights), ()),
        "gradient": (lambda p, tp, b, w: jax.grad(agent.loss, has_aux=True)(p, tp, b, w)[0],
                     (train.params, train.target_params, batch, weights), ()),
        # donated like training's: without it each call copies the replay memory
        "whole update": (lambda t, r: agent.update(t, r, 0.0)[:2], (train, replay), (0, 1)),
    }
    rows = []
    for name in STAGES:
        fn, args, donated = stages[name]
        compiled = edge_jit(jax.vmap(fn), donate_argnums=donated).lower(*args).compile()
        times, args = time_calls(compiled, args, calls, repeats,
                                 (lambda out: out) if donated else None)
        ms, gflop = statistics.median(times), xla_gflop(compiled)
        rows.append({"stage": name, "ms": {"median": ms, "min": min(times), "max": max(times)},
                     "gflop": gflop, "gflop_per_s": gflop / ms * 1e3})
    return rows, *args


def xla_gflop(compiled) -> float:
    """XLA's FLOP count of a compiled function, in GFLOP (NaN where XLA gives none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / 1e9


def time_calls(compiled, args: tuple, calls: int, repeats: int, feed=None):
    """(ms per call for each of ``repeats`` runs of ``calls`` calls, the last args), after
    one untimed call. ``feed(out) -> args`` gives a donating function its next arguments
    from its outputs (its inputs are gone); without it the same args are used throughout."""
    out = compiled(*args)
    if feed is not None:
        args = feed(out)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            out = compiled(*args)
            if feed is not None:
                args = feed(out)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - started) / calls * 1e3)
    return times, args


def markdown(record: dict) -> list[str]:
    changed = " ".join(f"{k}={v}" for k, v in record["overrides"].items())
    lines = [f"# Where the {record['preset']} update's time goes"
             + (f" ({changed})" if changed else ""), "",
             f"{record['machine']}; {record['repeats']} repeats of {record['calls']} updates "
             "(median, [min-max]). `kernel`: our dense weight gradient `x^T @ dy`; "
             "`autodiff`: JAX's transpose rule. XLA `package`: compiled as training compiles "
             f"it ({record['package_options'] or 'XLA defaults'}); `defaults`: XLA's default "
             "options.", "",
             "| seeds | weight gradient | XLA | ms per update | ms per seed-update |",
             "|---:|---|---|---:|---:|"]
    for row in record["rows"]:
        t = row["ms_per_update"]
        lines.append(f"| {row['seeds']} | {row['gradient']} | {row['xla']} | {t['median']:.3f} "
                     f"[{t['min']:.3f}-{t['max']:.3f}] | {row['ms_per_seed_update']:.3f} |")
    for label, ratio in record["speedups"].items():
        lines.append(f"\n{label} = {ratio:.2f}x")
    for row in record["rows"]:
        if not row["stages"]:
            continue
        lines += ["", f"## {row['seeds']} seed(s), {row['gradient']} weight gradient, XLA "
                  f"{row['xla']}: each stage timed on its own", "",
                  "Each stage includes the ones above it; jitted alone and called from Python "
                  "(a few tens of us of dispatch each). These are the direct timings. The "
                  "op lists below come from profiler events, which do not time XLA's "
                  "multi-threaded convolutions reliably: a convolution's event can be short "
                  "while an op that runs beside it or waits for it looks costly.", "",
                  "| stage | ms per call | GFLOP (XLA) | GFLOP/s |", "|---|---:|---:|---:|"]
        lines += [f"| {st['stage']} | {st['ms']['median']:.3f} [{st['ms']['min']:.3f}-"
                  f"{st['ms']['max']:.3f}] | {st['gflop']:.3f} | {st['gflop_per_s']:.0f} |"
                  for st in row["stages"]]
    for row in record["rows"]:
        lines += ["", f"## {row['seeds']} seed(s), {row['gradient']} weight gradient, XLA "
                  f"{row['xla']}: costliest ops (profiler events)", "",
                  "| op | ms per update | shape | from |", "|---|---:|---|---|"]
        lines += [f"| {op['op']} | {op['ms_per_update']:.3f} | `{op['shape']}` | "
                  f"{op['source']} |" for op in row["top_ops"]]
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="minatar-dqn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--gradient", nargs="+", choices=("kernel", "autodiff"),
                        default=["kernel", "autodiff"])
    parser.add_argument("--xla", nargs="+", choices=("package", "defaults"), default=["package"],
                        help="compile with the package's XLA options, XLA's defaults, or both")
    parser.add_argument("--set", nargs="+", default=[], metavar="OPTION=VALUE",
                        help="preset overrides, e.g. --set optimiser=adam grad_clip=10")
    parser.add_argument("--calls", type=int, default=100, help="updates per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="ops listed per row")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "results" / "benchmarks")
    args = parser.parse_args(argv)
    commit = commit_label()       # before anything is written: the outputs are not "changes"
    overrides = {}
    for item in args.set:
        name, equals, value = item.partition("=")
        if not equals:
            parser.error(f"--set {item}: expected OPTION=VALUE")
        overrides[name.replace("-", "_")] = value
    rows = []
    for seeds in args.seeds:
        for gradient in args.gradient:
            for xla in args.xla:
                row = measure(args.preset, seeds, gradient, args.calls, args.repeats, args.top,
                              overrides, xla)
                print(f"{args.preset}: {seeds} seed(s), {gradient} weight gradient, XLA {xla}: "
                      f"{row['ms_per_update']['median']:.3f} ms per update", file=sys.stderr)
                rows.append(row)
    by = {(r["seeds"], r["gradient"], r["xla"]): r["ms_per_update"]["median"] for r in rows}
    speedups = {}
    for s in args.seeds:
        if (s, "autodiff", "package") in by and (s, "kernel", "package") in by:
            speedups[f"{s} seed(s): autodiff / kernel"] = (by[s, "autodiff", "package"]
                                                           / by[s, "kernel", "package"])
        if (s, "kernel", "defaults") in by and (s, "kernel", "package") in by:
            speedups[f"{s} seed(s): XLA defaults / package"] = (by[s, "kernel", "defaults"]
                                                               / by[s, "kernel", "package"])
    record = {"command": shlex.join(["python", "-m", "scripts.profile_update",
                                     *(sys.argv[1:] if argv is None else argv)]),
              "commit": commit, "machine": cpu_model(), "preset": args.preset,
              "overrides": overrides, "package_options": compiler_options(),
              "calls": args.calls, "repeats": args.repeats, "rows": rows,
              "speedups": speedups}
    if args.no_write:
        print("\n".join(markdown(record)))
    else:
        write_result(args.output_dir / f"profile-{args.preset}", record, markdown(record))
    return record


if __name__ == "__main__":
    main()
