"""Every member of the DQN family and every actor-learner on Catch: greedy catch rate per seed,
committed as a table.

Each variant is the ``demo`` preset (dueling Double DQN on Catch) with one part switched, the
option names the original's. All see one frame and keep the demo's cadence (32 envs per seed,
an update every 8 env steps) for 512k steps (the demo itself stops at 448k, to finish
sooner) with the original's summed gradient
(``--loss-reduction sum``; the demo itself keeps the mean), as the learning tests in
tests/test_variants_learn.py (which import the settings from here); 4 seeds vmapped in one
program per variant; a greedy evaluation (epsilon 0, 1,024 episodes per seed) every 128k steps.
On the original's Catch no agent deciding from the last 1-4 frames catches more than 0.83 of
balls (results/catch-ceiling.md), so read the rates against that ceiling.

The actor-learners (one-step Sarsa, one-step Q, n-step Q, A3C; ``ACTOR_LEARNERS``) run by their
Catch presets (``demo-async``, ``demo-async-a3c``) with only the method switched: the presets'
own steps, seeds and evaluation (``--steps`` and the DQN settings above do not apply to them),
as tests/test_actor_learner.py.

    PYTHONPATH=$PWD python scripts/catch_variants.py [--variants dqn,double,nstep] [--steps N]

Writes ``results/catch-variants.json`` and ``.md`` (best and final rate per seed, wall time,
command, commit).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from jaxatari import loop
from jaxatari.config import build_config, flag_name
from scripts.provenance import commit_label, write_result

CATCH_CEILING_FEW_FRAMES = 0.83
STEPS = 512_000
# The demo's own cadence and evaluation (32 envs per seed, an update of 32 samples every 8 env
# steps; 1,024 greedy episodes per seed every 128k steps, standard error about 0.013), one
# frame, and the original's update (the gradient summed over the batch, docs/reduction.md):
# the settings every variant shares.
SHARED = dict(hist_len=1, loss_reduction="sum", seeds=4, val_epsilon=0.0)
VARIANTS = {
    "dqn": dict(duel=False, double_q=False),
    "double": dict(duel=False, double_q=True),
    "duel": dict(duel=True, double_q=True),
    "persistent": dict(duel=False, double_q=False, pal_alpha=0.9),
    "prioritised-rank": dict(duel=False, mem_priority="rank", alpha=0.7, beta_zero=0.5),
    "prioritised-proportional": dict(duel=False, mem_priority="proportional", alpha=0.6,
                                     beta_zero=0.4),
    "bootstrap": dict(duel=False, bootstraps=4),
}

# The actor-learners: name -> (preset, overrides), the preset's settings with the method switched.
ACTOR_LEARNERS = {
    "sarsa": ("demo-async", {"async_method": "sarsa"}),
    "onestep": ("demo-async", {"async_method": "onestep"}),
    "nstep": ("demo-async", {"async_method": "nstep"}),
    "a3c": ("demo-async-a3c", {}),
}


def actor_learner_config(name: str, **overrides):
    preset, options = ACTOR_LEARNERS[name]
    return build_config(preset, {**options, **overrides})


def variant_config(name: str, steps: int = STEPS, **overrides):
    return build_config("demo", {"steps": steps, **SHARED, **VARIANTS[name], **overrides})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = [*VARIANTS, *ACTOR_LEARNERS]
    parser.add_argument("--variants", default=",".join(choices),
                        help=f"comma-separated, of {', '.join(choices)}")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="agent steps per seed (DQN family; the actor-learners take their "
                             "presets' steps)")
    parser.add_argument("--out", default="results/catch-variants")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in choices]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(choices)}")
    results, actor_results = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in (n for n in names if n in VARIANTS):
            config = variant_config(name, args.steps)
            _, summary = loop.train(config, run_dir=Path(scratch) / name, quiet=True,
                                    interactive=False)
            results[name] = {"options": VARIANTS[name],
                             **_scores(summary)}
            print(f"{name}: best {results[name]['best']} final {results[name]['final']} "
                  f"({results[name]['wall_seconds']} s)", flush=True)
        for name in (n for n in names if n in ACTOR_LEARNERS):
            preset, options = ACTOR_LEARNERS[name]
            config = actor_learner_config(name)
            _, summary = loop.train(config, run_dir=Path(scratch) / name, quiet=True,
                                    interactive=False)
            actor_results[name] = {
                "preset": preset, "options": options, "steps": config.steps,
                **_scores(summary)}
            r = actor_results[name]
            print(f"{name}: best {r['best']} final {r['final']} ({r['wall_seconds']} s)",
                  flush=True)
    command = " ".join(["PYTHONPATH=$PWD python scripts/catch_variants.py",
                        *(argv if argv is not None else sys.argv[1:])])
    record = {"experiment": "DQN family on Catch, greedy catch rate per seed",
              "preset": "demo", "shared": SHARED, "steps": args.steps,
              "ceiling_last_frames": CATCH_CEILING_FEW_FRAMES, "command": command,
              "commit": commit_label(), "variants": results,
              "actor_learners": actor_results}
    out = Path(args.out)
    lines = ["# The DQN family on Catch", "",
             f"The `demo` preset with one part switched; one frame, the demo's 32 envs per "
             "seed with an update every 8 env steps, the original's summed gradient "
             f"(`--loss-reduction sum`), {SHARED['seeds']} seeds vmapped, {args.steps:,} steps "
             "per seed; greedy catch rate (epsilon 0, 1,024 episodes per seed) at evaluations "
             "every 128k steps. Best = "
             "the best evaluation, final = the last. Ceiling for an agent seeing the last 1-4 "
             f"frames: {CATCH_CEILING_FEW_FRAMES} (results/catch-ceiling.md).", "",
             "| variant | options | best per seed | final per seed | mean best | wall s |",
             "|---|---|---|---|---:|---:|"]
    for name, r in results.items():
        options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r["options"].items())
        lines.append(f"| {name} | `{options}` | {_rates(r['best'])} | {_rates(r['final'])} | "
                     f"{np.mean(r['best']):.3f} | {r['wall_seconds']} |")
    if actor_results:
        lines += ["", "## The actor-learners on Catch", "",
                  "Each by its Catch preset with only the method switched (`--async`), "
                  "the preset's own seeds, steps and evaluation (epsilon 0 for the Q methods; "
                  "A3C samples from its policy, as the original's validation). Best = the best "
                  "evaluation, final = the last.", "",
                  "| method | preset and options | steps | best per seed | final per seed "
                  "| min final | wall s |",
                  "|---|---|---:|---|---|---:|---:|"]
        for name, r in actor_results.items():
            options = " ".join(f"{flag_name(k)} {v}" for k, v in r["options"].items())
            lines.append(f"| {name} | `{' '.join([r['preset'], options]).strip()}` | "
                         f"{r['steps']:,} | {_rates(r['best'])} | {_rates(r['final'])} | "
                         f"{min(r['final']):.3f} | {r['wall_seconds']} |")
    write_result(out, record, lines)
    return 0


def _scores(summary: dict) -> dict:
    """Best and final greedy rate per seed and the wall time of one run's summary."""
    return {"best": [round(float(x), 4) for x in summary["best_scores"]],
            "final": [round(float(x), 4) for x in summary["final_scores"]],
            "wall_seconds": round(summary["wall_seconds"], 1)}


def _rates(values) -> str:
    return ", ".join(f"{x:.3f}" for x in values)


if __name__ == "__main__":
    sys.exit(main())
