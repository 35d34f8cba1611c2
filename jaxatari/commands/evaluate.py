"""``eval``: play episodes with a saved agent; ``random``: the random agent, same protocol.

  jaxatari eval RUN_DIR_OR_CHECKPOINT [--episodes N] [--record] [--saliency MODE] [--out DIR]
                [--display [--zoom N]] [--checkpoint best|last] [--seed-index I]
                [--epsilon E] [--seed S]
  jaxatari random PRESET_OR_RUN_DIR [game] [--episodes N] [--record] [--display] [--out DIR]
                [options]

Both play N whole episodes side by side with the run's env protocol in evaluation mode
(Atari: no life-loss terminals), print each episode's raw game score and the mean with its
standard deviation, and write ``results.json`` to the output folder when they write
anything. ``--record`` writes one MP4 of the full-colour screen per episode; ``--saliency``
puts the saliency map of each greedy action into the red channel of that video, or,
without ``--record`` or ``--display``, saves the overlaid screens as PNG frames.
``--display`` shows the games in a window as they are played (``jaxatari.display``), with
the saliency overlay when asked.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

EPISODES = 10


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="play episodes with a saved agent (scores, video, saliency maps)",
        description="Play N episodes with a saved agent in evaluation mode, with the run's env "
                    "protocol, and print each game score and their mean and standard deviation.")
    parser.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a run directory or a checkpoint directory (RUN/checkpoints/best)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None,
                        help="which checkpoint of a run directory (default: best, else last)")
    _add_play_arguments(parser)
    parser.add_argument("--saliency", choices=("normal", "guided", "deconvnet"), default=None,
                        help="saliency maps of the greedy actions: vanilla gradient (Simonyan "
                             "et al. 2013), guided backprop (Springenberg et al. 2014) or "
                             "deconvnet (Zeiler and Fergus 2014); in the video's red channel "
                             "with --record, else PNG frames")
    parser.add_argument("--seed-index", type=int, default=None, metavar="I",
                        help="which of the run's seeds plays (default: best last validation score)")
    parser.add_argument("--epsilon", type=float, default=None,
                        help="exploration rate of Q agents (default: the run's --val-epsilon)")
    parser.add_argument("--greedy", action="store_true",
                        help="A3C: play the policy's most probable action (argmax of the "
                             "logits) instead of sampling from the policy, which is the "
                             "default, as the run's validation did")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the evaluation envs and actions (default: the run's "
                             "--seed + 99991)")
    from jaxatari.saved_imports import add_allow_import_argument
    add_allow_import_argument(parser)
    parser.set_defaults(run=run_eval)

    random_parser = subparsers.add_parser(
        "random", help="play the random agent with a preset's or a run's env protocol",
        description="Play N episodes of uniformly random actions (the baseline) with the env "
                    "protocol of a preset or a run directory, in evaluation mode.")
    random_parser.add_argument("target", metavar="PRESET_OR_RUN_DIR",
                               help="a preset name (see 'jaxatari presets') or a run directory")
    random_parser.add_argument("game", nargs="?", default=None,
                               help="Atari or MinAtar game for presets that take one")
    _add_play_arguments(random_parser)
    add_allow_import_argument(random_parser)
    from jaxatari.cli import PLAY_GROUPS, PLAY_OPTIONS, _add_option_arguments
    # the env's options only; --seed among them: the envs' seed (+ 99991)
    _add_option_arguments(random_parser, PLAY_GROUPS, PLAY_OPTIONS)
    random_parser.set_defaults(run=run_random)


def _add_play_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=EPISODES, metavar="N",
                        help=f"episodes to play, side by side (default: {EPISODES})")
    parser.add_argument("--record", action="store_true",
                        help="write an MP4 of each episode's full-colour screen")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: a new folder in the run directory, or "
                             "in the current directory)")
    parser.add_argument("--max-steps", type=int, default=108_000, metavar="N",
                        help="stop an episode after this many agent steps (default: 108000)")
    parser.add_argument("--fps", type=float, default=None,
                        help="video and display frame rate (default: 15 for Atari, i.e. real "
                             "time at action repeat 4; 10 otherwise)")
    parser.add_argument("--display", action="store_true",
                        help="show the games in a window as they are played (needs a screen; "
                             "on a headless machine use --record)")
    parser.add_argument("--zoom", type=int, default=None, metavar="N",
                        help="display zoom, in whole pixels (default: screens shown at least "
                             "320 pixels wide or high)")


def _check_play_arguments(args) -> None:
    from jaxatari.config import ConfigError
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be positive, got {args.episodes}")
    if args.max_steps < 1:
        raise ConfigError(f"--max-steps must be positive, got {args.max_steps}")
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f"--fps must be positive, got {args.fps}")
    if args.zoom is not None and args.zoom < 1:
        raise ConfigError(f"--zoom must be at least 1, got {args.zoom}")
    if args.zoom is not None and not args.display:
        raise ConfigError("--zoom sets the live display's zoom; add --display")
    if args.display:   # before loading anything: a headless machine is told at once
        from jaxatari.display import HEADLESS, DisplayError, screen_available
        ok, why = screen_available()
        if not ok:
            raise DisplayError(HEADLESS.format(why=why))


class _Recorder:
    """on_frame for play_episodes: videos (one per episode) or PNG frames."""

    def __init__(self, out: Path, record: bool, saliency: bool, fps: float):
        self.out = out
        self.record = record
        self.saliency = saliency
        self.fps = fps
        self.videos: dict[int, object] = {}
        self.files: list[Path] = []

    def __call__(self, index: int, step: int, rgb, saliency_map) -> None:
        from jaxatari.saliency import overlay
        from jaxatari.video import VideoWriter, save_png
        if rgb is None:
            raise ValueError("this environment cannot render its screen, so it cannot be "
                             "recorded")
        screen = overlay(rgb, saliency_map) if self.saliency else rgb
        if self.record:
            if index not in self.videos:
                path = self.out / f"episode_{index + 1:03d}.mp4"
                self.videos[index] = VideoWriter(path, fps=self.fps)
                self.files.append(path)
            self.videos[index].add(screen)
        else:
            path = self.out / "saliency" / f"episode_{index + 1:03d}" / f"frame_{step:06d}.png"
            save_png(path, screen)
            if step == 0:
                self.files.append(path.parent)

    def close(self) -> None:
        for video in self.videos.values():
            video.close()


def _play(args, config, env, seed: int, agent=None, act=None, saliency=None,
          out_base: Path | None = None, header: list[str] | None = None,
          extra: dict | None = None) -> int:
    from jaxatari.commands._common import new_folder, stamp
    from jaxatari.evaluation import play_episodes, score_lines, statistics

    writes = args.record or (saliency is not None and not args.display) or args.out is not None
    out = None
    if writes:
        out = Path(args.out) if args.out else new_folder(
            out_base or Path("."), f"{'eval' if agent is not None else 'random'}-{stamp()}")
        # created by the first file written: a failure before that leaves nothing behind
    is_atari = config.env == "atari"
    fps = args.fps or (15.0 if is_atari else 10.0)
    recorder = display = None
    if args.record or (saliency is not None and not args.display):
        recorder = _Recorder(out, args.record, saliency is not None, fps)
    if args.display:
        from jaxatari.display import LiveDisplay
        display = LiveDisplay(args.episodes, title=f"jaxatari {env.spec.name}", zoom=args.zoom,
                              fps=fps, saliency=saliency is not None)
    watchers = [w for w in (recorder, display) if w is not None]

    def on_frame(index, step, rgb, saliency_map):
        for watcher in watchers:
            watcher(index, step, rgb, saliency_map)
    for line in header or []:
        print(line)
    try:
        result = play_episodes(env=env, num_episodes=args.episodes, seed=seed, act=act,
                               agent=agent, max_steps=args.max_steps,
                               on_frame=on_frame if watchers else None, saliency=saliency)
    finally:
        for watcher in watchers:
            watcher.close()
    for line in score_lines(result):
        print(line)
    if display is not None:
        print(f"display: {display.frames} frames shown at zoom {display.zoom}")
    if out is not None:
        record = {**(extra or {}), "episodes": args.episodes, "seed": seed,
                  **statistics(result)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(record, indent=2, default=str))
        for path in (recorder.files if recorder else []):
            print(f"wrote {path}")
        print(f"results: {out / 'results.json'}")
    return 0


def run_eval(args) -> int:
    import jax

    from jaxatari import checkpoint as ckpt
    from jaxatari.commands._common import check_env_matches, config_from_record
    from jaxatari.config import ConfigError
    from jaxatari.envs import make_env
    from jaxatari.evaluation import greedy_policy
    from jaxatari.export import load_agent, pick_seed
    from jaxatari.saved_imports import check_checkpoint_imports
    from jaxatari.xla_options import edge_jit

    _check_play_arguments(args)
    if args.epsilon is not None and not 0.0 <= args.epsilon <= 1.0:
        raise ConfigError(f"--epsilon must be in [0, 1], got {args.epsilon}")
    which = args.checkpoint or "best"
    try:
        path = ckpt.find(Path(args.target), which)
    except ckpt.CheckpointError:
        if args.checkpoint is not None:
            raise
        path = ckpt.find(Path(args.target), "last")
    meta = ckpt.read_metadata(path)
    where = f"checkpoint {path}"
    check_checkpoint_imports(meta, where, args.allow_import)   # before anything is imported
    config = config_from_record(meta.get("config", {}), where,
                                allowed_imports=args.allow_import)
    env = make_env(config)
    check_env_matches(env.spec, meta.get("env_spec", {}), where)
    agent, train, meta = load_agent(path, allowed_imports=args.allow_import)
    index = pick_seed(meta, args.seed_index)
    params = jax.tree.map(lambda x: x[index], train.params)
    epsilon = config.val_epsilon if args.epsilon is None else args.epsilon
    act = greedy_policy(agent, params, epsilon, sample=not args.greedy)
    saliency = None
    if args.saliency is not None:
        from jaxatari.saliency import make_saliency
        salient = edge_jit(make_saliency(agent.settings, args.saliency))
        ensemble = agent.num_heads > 1

        def saliency(stack, actions, actor):
            return salient(params, stack, actions, None if ensemble else actor.head)
    if agent.samples_policy:
        policy = ("A3C, most probable action" if args.greedy
                  else "A3C, actions sampled from the policy")
    else:
        policy = f"epsilon {epsilon:g}" + (", bootstrap heads voting"
                                           if agent.num_heads > 1 else "")
    run_dir = ckpt.run_dir_of(path)
    scores = meta.get("validation_scores")
    header = [f"checkpoint {path} (step {meta.get('step'):,}, seed {index} of "
              f"{meta.get('seeds')}"
              + (f", validation score {scores[index]:.4g})"
                 if scores and scores[index] is not None else ")"),
              f"env {env.spec.name}, protocol {json.dumps(env.spec.protocol, default=str)}, "
              f"evaluation mode, " + policy]
    extra = {"checkpoint": str(path), "step": meta.get("step"), "seed_index": index,
             "epsilon": epsilon, "policy": policy, "env": env.spec.name,
             "protocol": env.spec.protocol, "saliency": args.saliency}
    seed = args.seed if args.seed is not None else config.seed + 99_991
    return _play(args, config, env, seed, agent=agent, act=act, saliency=saliency,
                 out_base=run_dir or Path("."), header=header, extra=extra)


def run_random(args) -> int:
    from jaxatari.cli import _overrides, check_game_fits_preset
    from jaxatari.config import list_presets
    from jaxatari.commands._common import target_config
    from jaxatari.envs import make_env

    _check_play_arguments(args)
    overrides = _overrides(args)
    if not Path(args.target).is_dir() and args.target in list_presets():
        check_game_fits_preset(args.target, args)
    config = target_config(args.target, overrides, allowed_imports=args.allow_import)
    env = make_env(config)
    header = [f"random agent, env {env.spec.name}, protocol "
              f"{json.dumps(env.spec.protocol, default=str)}, evaluation mode, "
              f"{env.spec.num_actions} actions"]
    extra = {"agent": "random", "env": env.spec.name, "protocol": env.spec.protocol}
    out_base = Path(args.target) if Path(args.target).is_dir() else Path(".")
    return _play(args, config, env, config.seed + 99_991, out_base=out_base, header=header,
                 extra=extra)
