"""Command line: ``python -m jaxatari <command> ...`` (also the ``jaxatari`` script).

  train <preset> [game] [--option value ...]   train a preset; later options win
  presets                                       list the presets and what they are
  (more commands in jaxatari/commands/)

A user mistake (unknown preset, option, game, bad value) prints one line and exits with
status 2, without a traceback and without creating a run directory.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from jaxatari.commands import COMMAND_MODULES
from jaxatari.config import (FIELDS, SWEEP_MODES, SWEEPABLE_A3C, SWEEPABLE_ASYNC_Q,
                             SWEEPABLE_Q, Config, ConfigError, build_config, coerce,
                             flag_name, list_presets, load_preset, parse_sweep, sebulba,
                             preset_description)

GROUP_TITLES = {
    "experiment": "experiment", "env": "environment", "model": "model",
    "replay": "experience replay", "rl": "reinforcement learning", "training": "training",
    "eval": "evaluation", "async": "actor-learners",
    "preprocessing": "visual preprocessing", "atari": "Atari knobs (override --protocol)",
    "logging": "logging",
}


class UsageError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str):
        raise UsageError(message)


# random plays episodes without training: only the options of the env it plays.
PLAY_GROUPS = ("env", "preprocessing", "atari")
PLAY_OPTIONS = ("seed",)


def _option_help(name: str, value: Any, source: str = "default") -> str:
    """An option's help with its choices and its value (``source``: default, or the preset
    or run directory the value comes from)."""
    field = FIELDS[name]
    choices = field.metadata.get("choices")
    help_text = field.metadata["help"] + (f" {{{', '.join(choices)}}}" if choices else "")
    return help_text + (f" ({source}: {value!r})" if value != "" else "")


def _add_option_arguments(parser: argparse.ArgumentParser,
                          groups_shown: tuple[str, ...] | None = None,
                          also: tuple[str, ...] = ()) -> None:
    """The options as flags; ``groups_shown`` (and the options in ``also``) to limit them."""
    defaults = Config()
    groups = {}
    for name, field in FIELDS.items():
        if name == "preset":
            continue
        group_name = field.metadata["group"]
        if groups_shown is not None and group_name not in groups_shown and name not in also:
            continue
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(GROUP_TITLES.get(group_name, group_name))
        default = getattr(defaults, name)
        help_text = _option_help(name, default)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text,
                                  "metavar": "VALUE"}
        if isinstance(default, bool):
            kwargs.update(nargs="?", const="true", metavar="true|false")
        groups[group_name].add_argument(flag_name(name), **kwargs)


def _add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """A multi-process run (``jaxatari.hosts``, docs/devices.md): every process runs the
    same command plus these."""
    from jaxatari.hosts import DEFAULT_TIMEOUT
    group = parser.add_argument_group(
        "multi-process (several hosts; every process runs the same command plus these, "
        "process 0 alone writes the run directory)")
    group.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                       help="address of process 0, which serves the group's coordinator "
                            "there (JAX-native envs only)")
    group.add_argument("--num-processes", metavar="N", default=None,
                       help="processes in the run, with --coordinator")
    group.add_argument("--process-id", metavar="I", default=None,
                       help="this process's index in [0, N), with --coordinator")
    group.add_argument("--distributed", metavar="auto", default=None,
                       help="auto: let jax.distributed.initialize find the group itself "
                            "(SLURM, Open MPI, TPU pods) instead of the three options above")
    group.add_argument("--coordinator-timeout", metavar="SECONDS", default=None,
                       help="how long to wait for the coordinator and for every process to "
                            f"join (default: {DEFAULT_TIMEOUT})")


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog="jaxatari", description=(
        "Train, evaluate and inspect deep RL agents of the Kaixhin/Atari family in JAX."))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    train = commands.add_parser(
        "train", help="train a preset (see 'presets'); options override the preset",
        description="Train a preset. Options override the preset's values; later ones win.",
        epilog="Ctrl+C stops at the next safe point and asks 'Save agent (y/n)?' (without a "
               "terminal it saves); SIGTERM saves without asking (exit status 143). A second "
               "signal leaves at once. Continue a saved run with --resume.")
    train.add_argument("preset", help="preset name (see 'jaxatari presets')")
    train.add_argument("game", nargs="?", default=None,
                       help="Atari game (e.g. SpaceInvaders) or a MinAtar game "
                            "(e.g. SpaceInvaders-MinAtar) for presets that take one")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                       help="continue a saved run (RUN_DIR, or --run-dir) from its checkpoints/last")
    train.add_argument("--no-resume", action="store_true",
                       help="start again in a run directory holding a saved agent (old "
                            "checkpoints moved to checkpoints-replaced-<time>)")
    _add_process_arguments(train)
    sweep = train.add_argument_group("hyperparameter sweep (docs/sweeps.md)")
    sweep.add_argument("--sweep", action="append", default=None, metavar="NAME=V1,V2,...",
                       help="train every value of option NAME x --seeds seeds in one program; "
                            "repeat for the Cartesian product of several options. JAX-native "
                            "envs only. Sweepable: replay agent "
                            f"{', '.join(flag_name(n)[2:] for n in SWEEPABLE_Q)}; --async "
                            "sarsa, onestep, nstep "
                            f"{', '.join(flag_name(n)[2:] for n in SWEEPABLE_ASYNC_Q)}; --async "
                            f"a3c {', '.join(flag_name(n)[2:] for n in SWEEPABLE_A3C)}")
    sweep.add_argument("--sweep-mode", choices=SWEEP_MODES, default=None,
                       help="map: the configurations one after another in the same "
                            "program, each bit for bit as its own run with the same seeds; "
                            "vmap: side by side, batched (numbers may differ from separate "
                            "runs in the last bits) (default: map)")
    _add_option_arguments(train)
    commands.add_parser("presets", help="list the presets")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"jaxatari.commands.{module_name}").register(commands)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: getattr(args, name) for name in FIELDS
              if name != "preset" and getattr(args, name, None) is not None}
    if "run_dir" in values and not str(values["run_dir"]).strip():
        raise UsageError("--run-dir must not be empty (leave it out for "
                         "runs/<preset>-<env>-<time>)")
    if args.game:
        if args.game.lower().endswith("minatar"):
            values["env"] = args.game
        else:
            values.setdefault("env", "atari")
            values["game"] = args.game
    return values


def check_game_fits_preset(preset: str, args: argparse.Namespace) -> None:
    """A game given to a preset plays only where the preset plays that kind of game (Atari,
    or MinAtar): ``demo Pong`` would otherwise quietly turn Catch into Atari Pong with the
    demo's body. An explicit --env states the switch and is taken as given."""
    game = getattr(args, "game", None)
    if not game or getattr(args, "env", None) is not None:
        return
    preset_env = str(load_preset(preset).get("env", Config().env))
    minatar = game.lower().endswith("minatar")
    if minatar == preset_env.lower().endswith("minatar") and (minatar or preset_env == "atari"):
        return
    kind = "a MinAtar" if minatar else "an Atari"
    switch = f"--env {game}" if minatar else f"--env atari --game {game}"
    raise UsageError(f"preset {preset} plays {preset_env}, not {kind} game, so it takes no "
                     f"game {game!r}; to play it with {preset}'s other options anyway, say so "
                     f"with {switch}")


def _print_presets() -> None:
    for name in list_presets():
        print(f"{name:22s} {preset_description(name)}")


def print_scores(summary: dict[str, Any]) -> None:
    """The final and best greedy scores per seed, with the finished episodes behind the
    final one; n/a where no episode finished (partial games are not scores)."""
    def text(score):
        return "n/a" if score is None else f"{score:.3f}"
    episodes = summary.get("final_episodes") or [None] * len(summary["final_scores"])
    print(f"\n{'seed':>4}  {'final greedy score':>18}  {'episodes':>8}  {'best greedy score':>17}")
    for seed, (final, count, best) in enumerate(zip(summary["final_scores"], episodes,
                                                    summary["best_scores"])):
        print(f"{seed:>4}  {text(final):>18}  {'' if count is None else count:>8}  "
              f"{text(best):>17}")
    if None in summary["final_scores"]:
        print("n/a: no greedy episode finished within --val-steps (raise it for a score)")
    print_statistics(summary)


def print_statistics(summary: dict[str, Any]) -> None:
    """IQM, mean and median of the final and best greedy scores over the seeds that have
    one, with 95% stratified-bootstrap intervals (Agarwal et al. 2021), and the IQM of the
    human-normalised scores for Atari: a few seeds' mean alone says too little."""
    from jaxatari.statistics import summary_statistics
    block = summary.get("statistics") or summary_statistics(summary)

    def cell(entry: dict[str, Any] | None, name: str) -> str:
        if not entry or entry.get(name) is None:
            return "n/a"
        value, (low, high) = entry[name]["value"], entry[name]["ci95"]
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    rows = [("IQM", "", "iqm"), ("mean", "", "mean"), ("median", "", "median")]
    if "final_normalised" in block:
        rows.append(("normalised IQM", "_normalised", "iqm"))
    print("\n95% intervals from a stratified bootstrap over seeds (Agarwal et al. 2021)")
    print(f"{'':>14}  {'final greedy score':>26}  {'best greedy score':>26}")
    for label, kind, name in rows:
        print(f"{label:<14}  {cell(block.get('final' + kind), name):>26}  "
              f"{cell(block.get('best' + kind), name):>26}")
    print(f"{'seeds scored':<14}  {block['final']['seeds']:>26}  {block['best']['seeds']:>26}")


def _train(args: argparse.Namespace) -> int:
    from jaxatari.loop import train   # heavy imports only when training
    if args.resume is not None and args.no_resume:
        raise UsageError("--resume and --no-resume exclude each other")
    check_game_fits_preset(args.preset, args)
    config = build_config(args.preset, _overrides(args))
    if args.sweep is not None or args.sweep_mode is not None:
        return _train_sweep(args, config)
    from jaxatari import hosts
    group = hosts.process_group(args.coordinator, args.num_processes, args.process_id,
                                args.distributed, args.coordinator_timeout)
    hosts.join(group)   # once, before anything touches a JAX device
    run_dir, summary = train(
        config, quiet=args.quiet,
        resume_from=Path(args.resume) if isinstance(args.resume, str) else None,
        resume=True if args.resume is not None else (False if args.no_resume else None))
    if not hosts.writes_files():
        return 0   # process 0 reports for the whole group
    print_scores(summary)
    print(f"{summary['steps']:,} steps x {summary['seeds']} seeds in {summary['wall_seconds']:.1f} s "
          f"({summary['steps_per_second']:,.0f} steps/s over all seeds)")
    print(f"plot: {run_dir / 'curves.png'}   logs: {run_dir / 'progress.csv'}, "
          f"{run_dir / 'eval.csv'}, {run_dir / 'tb'}")
    print(f"run directory: {run_dir}")
    return 0


def _train_sweep(args: argparse.Namespace, config: Config) -> int:
    """``train --sweep``: every configuration x seed in one program, then the ranking."""
    from jaxatari.loop import train_sweep
    if args.sweep is None:
        raise UsageError("--sweep-mode needs --sweep NAME=V1,V2,...")
    if args.resume is not None or args.no_resume:
        raise UsageError("--sweep starts a new run directory: it keeps no checkpoints and "
                         "takes no --resume or --no-resume")
    if any(getattr(args, name) is not None for name in
           ("coordinator", "num_processes", "process_id", "distributed")):
        raise UsageError("--sweep runs in one process: leave out --coordinator, "
                         "--num-processes, --process-id and --distributed (--devices splits "
                         "its seeds over this process's devices)")
    if sebulba(config):
        raise UsageError("--sweep plays JAX-native envs on --devices; --actor-devices and "
                         "--learner-devices (Sebulba) are for host envs: leave them out")
    sweep = parse_sweep(args.sweep, config, args.sweep_mode or "map")
    run_dir, summary = train_sweep(config, sweep, quiet=args.quiet)
    print_sweep_ranking(summary)
    print(f"{summary['configurations']} configurations x {summary['seeds']} seeds x "
          f"{summary['steps']:,} steps in {summary['wall_seconds']:.1f} s "
          f"({summary['steps_per_second']:,.0f} steps/s over all of them)")
    print(f"run directory: {run_dir} (one run directory per configuration inside; compare "
          f"them with jaxatari compare or plot)")
    return 0


def print_sweep_ranking(summary: dict[str, Any]) -> None:
    """The configurations ranked by the IQM of their final greedy scores over seeds, with
    the 95% stratified-bootstrap interval (Agarwal et al. 2021) and the mean."""
    def number(x):
        return "n/a" if x is None else f"{x:.3f}"
    print("\nconfigurations ranked by the IQM of final greedy scores over seeds "
          "(95% stratified-bootstrap interval)")
    print(f"{'rank':>4}  {'IQM [95% interval]':>26}  {'mean':>7}  {'seeds':>5}  configuration")
    for row in summary["ranking"]:
        low_high = row["final_iqm_ci95"]
        interval = (f"{number(row['final_iqm'])} [{number(low_high[0])}, {number(low_high[1])}]"
                    if low_high else "n/a")
        values = ",".join(f"{k.replace('_', '-')}={v}" for k, v in row["values"].items())
        print(f"{row['rank']:>4}  {interval:>26}  {number(row['final_mean']):>7}  "
              f"{row['seeds_scored']:>5}  {values}  ({row['run_dir']})")


def _help_values(argv: list[str]) -> tuple[str, Config, str] | None:
    """For ``train PRESET --help``, ``resume RUN_DIR --help`` and ``random TARGET --help``:
    (command, the values the run would start from, where they come from), so the help
    shows those instead of the base defaults. The run's config.json is only parsed: nothing
    it names is imported."""
    if len(argv) < 3 or not {"-h", "--help"} & set(argv) or argv[0] not in (
            "train", "resume", "random"):
        return None
    command, target = argv[0], argv[1]
    try:
        if command in ("train", "random") and target in list_presets():
            return command, build_config(target, {}), f"preset {target}"
        path = Path(target) / "config.json"
        if command in ("resume", "random") and path.is_file():
            import json
            record = json.loads(path.read_text())
            values = {k: coerce(k, v) for k, v in record.items() if k in FIELDS}
            return command, Config(**values), f"{path}"
    except (ConfigError, OSError, ValueError, TypeError):
        return None   # the base defaults, then
    return None


def _show_values_in_help(parser: argparse.ArgumentParser, command: str, config: Config,
                         source: str) -> None:
    subparser = parser._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        if action.dest in FIELDS and action.option_strings:   # not the game positional
            action.help = _option_help(action.dest, getattr(config, action.dest), source)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    shown = _help_values(argv)
    if shown is not None:
        _show_values_in_help(parser, *shown)
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "presets":
            _print_presets()
            return 0
        if args.command == "train":
            return _train(args)
        return args.run(args)
    except (UsageError, ConfigError, FileExistsError) as error:
        print(f"jaxatari: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:   # EnvError and other one-line input errors
        if type(error).__name__ in ("EnvError", "ValueError") and "\n" not in str(error):
            print(f"jaxatari: error: {error}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt as interrupt:
        print("jaxatari: interrupted", file=sys.stderr)
        return 128 + getattr(interrupt, "signum", signal.SIGINT)   # 130, or 143 for SIGTERM
    return 2
