"""``resume``: continue a run from its last checkpoint, with its own options.

  jaxatari resume RUN_DIR [--steps N] [--option value ...]

The options come from RUN_DIR/config.json; any given here override them (typically a
larger --steps to train further). Options that shape the agent (network, memory, env,
seeds) must stay as they were: a checkpoint that does not fit is refused with one line.
See jaxatari.loop for what is restored and when the result equals an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "resume", help="continue a run from its last checkpoint (options from its config.json)",
        description="Continue a run from RUN_DIR/checkpoints/last with the options in "
                    "RUN_DIR/config.json; options given here override them (e.g. --steps to "
                    "train further).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory to continue")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    from jaxatari.cli import _add_option_arguments, _add_process_arguments
    from jaxatari.saved_imports import add_allow_import_argument
    add_allow_import_argument(parser)
    _add_process_arguments(parser)   # a multi-process run resumes as a group
    _add_option_arguments(parser)
    parser.set_defaults(run=run_resume)


def run_resume(args) -> int:
    from jaxatari import checkpoint as ckpt
    from jaxatari import hosts
    from jaxatari.cli import _overrides, print_scores
    from jaxatari.commands._common import run_config
    from jaxatari.config import ConfigError
    from jaxatari.loop import train

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"no run directory at {run_dir}")
    ckpt.find(run_dir, "last")   # one line if there is nothing to resume
    args.game = None
    overrides = _overrides(args)
    config = run_config(run_dir, overrides, allowed_imports=args.allow_import)
    # In place, wherever the directory is now, unless --run-dir names a new one (a fork).
    target = Path(overrides["run_dir"]) if overrides.get("run_dir") else run_dir
    hosts.join(hosts.process_group(args.coordinator, args.num_processes, args.process_id,
                                   args.distributed, args.coordinator_timeout))
    out_dir, summary = train(config, target, quiet=args.quiet, resume_from=run_dir)
    if not hosts.writes_files():
        return 0   # process 0 reports for the whole group
    print_scores(summary)
    print(f"resumed at step {summary['resumed_from_step']:,}; trained to {summary['steps']:,} "
          f"steps in {summary['wall_seconds']:.1f} s")
    print(f"run directory: {out_dir}")
    return 0
