"""The stateful outer loop: builds the agent, runs training chunks, evaluates, logs, saves.

Everything numerical happens in the jitted pure functions of ``jaxatari.agents``; this
module only moves data between them and the outside world (envs on the host, files,
the progress bar, checkpoints, Ctrl+C). ``jax.jit(jax.vmap(...))`` is applied here, once,
seed axis leading.

Checkpoints (``jaxatari.checkpoint``): after every evaluation ``checkpoints/last`` holds
everything needed to continue (parameters, target parameters, optimiser state, PRNG keys of
learner, actors and envs, the env states, the iteration counter, which fixes epsilon's and
beta's positions, the evaluation history, the held-out transitions and, where it is small,
the replay memory); ``checkpoints/best`` is written whenever the mean validation score over
seeds beats the best so far (without the replay memory); ``keep_every`` also keeps each
evaluation's checkpoint as ``checkpoints/step_<step>`` (the original's ``-checkpoint``).

Resume (``train(..., resume_from=RUN_DIR)``) restores the last checkpoint and continues at
its iteration. The exactness rule for JAX-native envs: every save happens at a chunk
boundary, and a resumed run continues with chunks of ``--chunk-steps`` from the saved
iteration, so with the same ``--chunk-steps`` its chunks are the uninterrupted run's chunks
and the result is bit-identical on CPU. This holds for saves made by evaluations and by
Ctrl+C during a run, and for a run trained for ``--steps N`` and resumed with a larger
``--steps`` when N is a multiple of ``--chunk-steps`` (a shorter last chunk shifts the
boundaries). Prioritised replay anneals beta over ``--steps``, so changing ``--steps`` on
resume changes beta from there on. Host envs (envpool, gymnasium) cannot be restored: the
envs restart from new games (seeded ``--seed + step``), the running episodes' scores are
lost, and unless the replay memory was checkpointed, learning pauses for ``--learn-start``
steps while it refills.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxatari import checkpoint as ckpt
from jaxatari import human_scores
from jaxatari.agents.data_parallel import BATCH_AXIS
from jaxatari.agents.dqn import QAgent, QAgentSettings, make_q_agent
from jaxatari.agents.native import (NativeCarry, init_native_seeds, make_native_chunk,
                                    make_native_evaluate, native_seed_axes)
from jaxatari.config import Config, ConfigError, config_json, flag_name
from jaxatari import hosts
from jaxatari.devices import (SebulbaPlacement, SeedPlacement, request_cpu_devices,
                              sebulba_placement, seed_placement, to_host)
from jaxatari.envs import EnvSpec, JaxEnv, make_env
from jaxatari.evaluation import HELDOUT_KEY_OFFSET, make_heldout_sampler, make_value_stats
from jaxatari.loops.checkpoint_items import (ActorLearnerItems, CheckpointRecord, QItems,
                                              from_tree, to_tree)
from jaxatari.loops.session import (SessionBase, eval_steps_per_env, run_native_chunks,
                                    run_summary)
# agent_settings and chunk_iterations: also this module's names for scripts and tests
from jaxatari.loops.settings import (agent_settings, build_learner, cadence_of,
                                     checkpoint_choices, chunk_iterations, device_share)
from jaxatari.metrics import (ChunkStats, Evaluation, RunLogger, SilentLogger, finite_or_none,
                              mean_score)
from jaxatari.networks import body_misfit
from jaxatari.rundir import RunDirLock, check_run_dir, create_run_dir
from jaxatari.xla_options import edge_jit

PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "rlax", "gymnasium", "ale-py", "envpool",
            "gymnax", "numpy", "orbax-checkpoint")
CHECKPOINT_KIND = "q-agent"
ACTOR_LEARNER_KIND = "actor-learner"
# JAX-native runs checkpoint their replay memory by default up to this size (all seeds).
REPLAY_AUTO_LIMIT = 1 << 30
# A run whose state is at least this large says so at start-up.
LARGE_STATE = 1 << 30
# Options that must match a checkpoint to resume from it (they shape the state).
STRUCTURAL_SETTINGS = ("num_actions", "obs_shape", "obs_dtype", "hist_len", "body",
                       "mlp_features", "hidden_size", "dueling", "num_heads", "replay",
                       "capacity", "num_envs", "optimiser", "grad_clip", "recurrent")
ACTOR_LEARNER_STRUCTURE = ("method", "num_actions", "obs_shape", "obs_dtype", "num_actors",
                           "hist_len", "body", "mlp_features", "hidden_size", "dueling",
                           "optimiser", "grad_clip")


def environment_record() -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision, dirty = "", ""
    return {"versions": versions, "git_revision": revision or None,
            "git_dirty": bool(dirty), "python": sys.version.split()[0],
            "platform": platform.platform(), "devices": [str(d) for d in jax.devices()],
            "processes": jax.process_count()}


def default_run_dir(config: Config) -> Path:
    env = config.game if config.env == "atari" else config.env.replace(":", "_").replace("/", "_")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.preset or 'run'}-{env}-{stamp}"


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# ---------------------------------------------------------------------------- Ctrl+C


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl+C or SIGTERM at a safe point (after saving the agent if
    asked). ``signum`` is the signal that stopped it, for the exit status (128 + signum)."""

    def __init__(self, message: str, saved: Path | None, signum: int = signal.SIGINT):
        super().__init__(message)
        self.saved = saved
        self.signum = int(signum)


class InterruptGuard:
    """SIGINT and SIGTERM during training; SIGINT as the original's ``catchSigInt``.

    The first SIGINT only sets ``requested``; the loop looks at it at its next safe point
    (between chunks, or between steps for host envs) and asks ``confirm_save``: "Save agent
    (y/n)?" on an interactive terminal, yes without one. SIGTERM, what a cluster's scheduler
    or ``kill`` sends before it stops a job, does the same but saves without asking, since
    nobody is there to answer. The first signal also restores its default action, so a
    second one ends the process at once (even inside a jitted chunk), without saving.
    Installed only in the main thread, and not for a signal that is ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, interactive: bool):
        self.interactive = interactive
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        # Not in a worker thread (signals go to the main one), and not where a signal is
        # ignored (SIGINT in a background job of a shell script): there it is not for us.
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.requested:   # the other signal after one was already taken: leave now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested, self.signum = True, signum
        signal.signal(signum, signal.SIG_DFL)
        name = signal.Signals(signum).name
        how = "Ctrl+C" if signum == signal.SIGINT else "send it"
        try:
            print(f"\n{name} received: stopping at the next safe point "
                  f"({how} again to leave at once, without saving)", file=sys.stderr,
                  flush=True)
        except (OSError, ValueError, RuntimeError):
            pass

    def __exit__(self, *exc_info):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False

    def confirm_save(self) -> bool:
        if not self.interactive or self.signum == signal.SIGTERM:
            return True
        return ask("Save agent (y/n)? ")


def ask(question: str) -> bool:
    """A y/n question on the terminal; anything but y (or end of input) is no."""
    print(question, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


# ---------------------------------------------------------------------------- resume


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a checkpoint gives back to a run."""

    path: Path
    metadata: dict[str, Any]
    items: QItems | ActorLearnerItems

    @property
    def step(self) -> int:
        return int(self.metadata["step"])

    @property
    def iteration(self) -> int:
        return int(self.metadata["iteration"])

    @property
    def evaluations(self) -> list[Evaluation]:
        return [Evaluation.from_json(e) for e in self.metadata.get("evaluations", [])]


class Trainer(SessionBase):
    """Runs one configuration end to end; the public entry is ``train(config)``. The
    ``loops.session.Session`` of a run: evaluations completed with human-normalised
    scores and held-out statistics, checkpoints, resume and the Ctrl+C question.

    ``Trainer(config, ...)`` builds the subclass of the config's agent kind: ``QTrainer``
    (the DQN family) or ``ActorLearnerTrainer`` (``--async``). Each owns its agent, its
    checkpoint templates and structural settings and its choice of loop.
    """

    kind: str                       # the checkpoint's agent kind
    structure: tuple[str, ...]      # settings that must match a checkpoint to resume it

    def __new__(cls, config: Config, *args, **kwargs):
        if cls is Trainer:
            cls = QTrainer if config.async_method == "none" else ActorLearnerTrainer
        return super().__new__(cls)

    def __init__(self, config: Config, run_dir: Path, quiet: bool = False, *,
                 keep_every: bool | None = None, checkpoint_replay: bool | None = None,
                 val_size: int | None = None, interactive: bool = False):
        """``keep_every``, ``checkpoint_replay`` and ``val_size`` default to the config's
        (``loops.settings.checkpoint_choices``)."""
        super().__init__(config)
        self.run_dir = run_dir
        self.quiet = quiet
        self.env = make_env(config)
        self.spec: EnvSpec = self.env.spec
        misfit = body_misfit(config.model_body, self.spec.obs_shape)
        if misfit:
            raise ConfigError(f"{misfit} ({self.spec.name})")
        self.cadence = cadence_of(config)
        self.native = isinstance(self.env, JaxEnv)
        self.placement: SeedPlacement = seed_placement(config, native=self.native)
        # --actor-devices, --learner-devices: host envs acting on some devices while
        # others learn (None: the one-device loop)
        self.sebulba: SebulbaPlacement | None = sebulba_placement(config, native=self.native)
        self.build_agent()
        self.keys = self.placement.place(
            jax.random.split(jax.random.PRNGKey(config.seed), config.seeds))
        self.heldout_key = jax.random.PRNGKey(config.seed + HELDOUT_KEY_OFFSET)
        choices = checkpoint_choices(config, keep_every=keep_every,
                                     checkpoint_replay=checkpoint_replay, val_size=val_size)
        self.checkpoints = ckpt.RunCheckpoints(run_dir, keep_every=choices.keep_every)
        self.checkpoint_replay = choices.checkpoint_replay
        self.val_size = choices.val_size
        # a multi-process run: process 0 alone writes, the others take part in every gather
        self.writes = hosts.writes_files()
        self.guard = InterruptGuard(interactive and hosts.process_count() == 1)
        self.best_score = -math.inf
        self.heldout = None
        self.start_step = 0

    # ------------------------------------------------------------------ state layout
    @property
    def settings(self):
        """The agent's static settings."""
        return self.pure_agent.settings

    def build_agent(self) -> None:
        """Builds this kind's pure agent from the config and the env's spec."""
        raise NotImplementedError

    @property
    def pure_agent(self):
        """This kind's pure agent record (its settings, frame-stack shape and functions)."""
        raise NotImplementedError

    @property
    def path_kind(self) -> str:
        return "native" if self.native else "host"

    # What a kind may refine; the defaults are an actor-learner's.
    replay_bytes = 0                # all seeds' replay memory

    def _include_replay(self) -> bool:
        return False

    def saved_setting_defaults(self) -> dict[str, Any]:
        """Settings a checkpoint older than them was saved with (their defaults)."""
        return {}

    def steps_per_iteration(self) -> int:
        raise NotImplementedError

    def templates(self) -> CheckpointRecord:
        """The checkpoint items of this run as ShapeDtypeStructs (for restoring)."""
        raise NotImplementedError

    def stored(self, items: CheckpointRecord, with_replay: bool) -> CheckpointRecord:
        """The items a checkpoint keeps of the loop's ``items``."""
        del with_replay
        return items

    def train_loop(self, restored: Restored | None) -> Any:
        """Runs this kind's loop; returns the final train state [S]."""
        raise NotImplementedError

    def _state_notes(self) -> tuple[bool, str]:
        """(whether the state note is due whatever its size, what it adds about replay)."""
        return False, ""

    def _learning_notes(self) -> list[str]:
        return []

    @functools.cached_property
    def state_bytes(self) -> int:
        """Bytes of everything the run keeps on the device between steps, all seeds:
        learner, actors, envs, held-out set and replay memory (from shapes: nothing is
        allocated to count them)."""
        return ckpt.nbytes(to_tree(self.templates()))

    def base_metadata(self) -> dict[str, Any]:
        c = self.config
        return {"kind": self.kind, "path_kind": self.path_kind,
                "config": c.to_dict(), "agent": _jsonable(dataclasses.asdict(self.settings)),
                "env_spec": _jsonable(dataclasses.asdict(self.spec)), "seeds": c.seeds,
                "iterations_per_chunk": self._iterations_per_chunk(),
                "val_size": self.val_size}

    def _iterations_per_chunk(self) -> int:
        return chunk_iterations(self.config, self.steps_per_iteration())

    # ------------------------------------------------------------------ resume
    def restore(self, path: Path) -> Restored:
        """Loads and checks a checkpoint for this run (CheckpointError on any mismatch)."""
        meta = ckpt.read_metadata(path)
        self.check_compatible(meta)
        self.val_size = int(meta.get("val_size", self.val_size))   # the held-out set it kept
        templates = self.templates()
        tree, meta = ckpt.load(path, to_tree(templates))
        if tree.get("train") is None:
            raise ckpt.CheckpointError(f"checkpoint {path} holds no learner state")
        return Restored(path=Path(meta["path"]), metadata=meta, items=from_tree(templates, tree))

    def check_compatible(self, meta: dict[str, Any]) -> None:
        path = meta.get("path")
        if meta.get("kind") != self.kind:
            raise ckpt.CheckpointError(f"checkpoint {path} holds a {meta.get('kind')!r} agent; "
                                       f"this run trains a {self.kind!r}")
        ours = _jsonable(dataclasses.asdict(self.settings))
        saved = meta.get("agent", {})
        spec = meta.get("env_spec", {})
        if spec.get("name") != self.spec.name:
            raise ckpt.CheckpointError(f"checkpoint {path} was saved for env "
                                       f"{spec.get('name')!r}; this run plays {self.spec.name!r}")
        if meta.get("seeds") != self.config.seeds:
            raise ckpt.CheckpointError(f"checkpoint {path} holds {meta.get('seeds')} seeds; this "
                                       f"run has --seeds {self.config.seeds}")
        # A checkpoint older than a setting was saved with that setting's default.
        defaults = self.saved_setting_defaults()
        for name in self.structure:
            if saved.get(name, defaults.get(name)) != ours.get(name):
                raise ckpt.CheckpointError(
                    f"checkpoint {path} was saved by another network or memory ({name} "
                    f"{saved.get(name)!r} there, {ours.get(name)!r} here)")
        if meta.get("path_kind") != self.path_kind:
            raise ckpt.CheckpointError(f"checkpoint {path} was saved by a "
                                       f"{meta.get('path_kind')} run; this run is not")
        if self.config.steps <= int(meta.get("step", 0)):
            raise ConfigError(f"--steps {self.config.steps} is not beyond the checkpoint's step "
                              f"{meta.get('step')}: nothing left to train")

    def changed_options(self, meta: dict[str, Any]) -> list[str]:
        saved = meta.get("config", {})
        ours = self.config.to_dict()
        ignore = {"run_dir"}
        return [f"{name} {saved.get(name)!r} -> {value!r}" for name, value in ours.items()
                if name not in ignore and name in saved and saved[name] != value]

    def _apply_restored(self, restored: Restored | None) -> None:
        if restored is None:
            return
        self.start_step = restored.step
        self.evaluations = restored.evaluations
        self.best_score = float(restored.metadata.get("best_score") or -math.inf)
        self.next_eval = int(restored.metadata.get("next_eval", self.config.val_freq))
        if restored.metadata.get("eval_key") is not None:
            self.eval_key = jnp.asarray(restored.metadata["eval_key"], jnp.uint32)

    # ------------------------------------------------------------------ validation & saving
    def normalise(self, scores):
        return human_scores.normalise(self.spec.human_name, scores)

    def metadata(self, step: int, iteration: int, reason: str) -> dict[str, Any]:
        latest = self.evaluations[-1] if self.evaluations else None
        return {**self.base_metadata(), "step": step, "iteration": iteration,
                "next_eval": self.next_eval, "reason": reason,
                "eval_key": np.asarray(jax.device_get(self.eval_key)).tolist(),
                "evaluations": [e.to_json() for e in self.evaluations],
                "best_score": None if math.isinf(self.best_score) else self.best_score,
                "validation_score": None if latest is None else seeds_mean(latest.scores),
                "validation_scores": None if latest is None else finite_or_none(latest.scores),
                "validation_episodes": None if latest is None else
                [int(e) for e in np.asarray(latest.episodes)],
                "normalised_score_source": human_scores.SOURCE
                if human_scores.random_and_human(self.spec.human_name) else None}

    def save(self, path: Path, items: CheckpointRecord, step: int, iteration: int,
             reason: str, with_replay: bool) -> Path:
        """Writes the checkpoint ``path`` (``self.checkpoints``' last, best or step_<step>)."""
        tree = to_host(to_tree(self.stored(items, with_replay)))   # every process gathers
        meta = {**self.metadata(step, iteration, reason), "name": path.name,
                "replay_included": "replay" in tree, "replay_bytes": self.replay_bytes}
        return ckpt.save(path, tree, meta) if self.writes else path

    @property
    def interrupt_requested(self) -> bool:
        """Ctrl+C or SIGTERM here, or in any process of a multi-process run (one decision
        for all, asked at the same safe point)."""
        return hosts.any_process(self.guard.requested)

    def save_after_eval(self, evaluation: Evaluation, items: CheckpointRecord,
                        iteration: int) -> None:
        """``last`` after every evaluation, ``best`` when the mean score over seeds beats the
        best so far (as the original: strictly greater), ``step_<step>`` with keep_every."""
        step = evaluation.step
        mean = seeds_mean(evaluation.scores)
        improved = mean is not None and mean > self.best_score   # n/a never improves
        if improved:
            self.best_score = mean
        checkpoints = self.checkpoints
        self.save(checkpoints.path("last"), items, step, iteration, "evaluation",
                  self._include_replay())
        self._plot_filters(items.train.params)
        if improved:
            self.save(checkpoints.path("best"), items, step, iteration,
                      "best validation score", False)
        if checkpoints.keep_every:
            self.save(checkpoints.step_path(step), items, step, iteration, "evaluation", False)

    def _plot_filters(self, params) -> None:
        """conv_filters.png of seed 0 at every validation (networks without convolutions
        return before drawing anything)."""
        from jaxatari.plots import plot_filters
        params = to_host(params)   # every process gathers; process 0 draws
        if not self.writes:
            return
        plot_filters(self.run_dir / "conv_filters.png",
                     jax.tree.map(lambda x: np.asarray(x[0]), params),
                     self.settings_stack_channels(),
                     title=f"{self.config.preset or 'run'} on {self.spec.name}, step "
                           f"{self.evaluations[-1].step:,}" if self.evaluations else "",
                     rows_label=self.filter_rows_label())

    def settings_stack_channels(self) -> int:
        return self.pure_agent.stack_shape[-1]

    def filter_rows_label(self) -> str:
        from jaxatari.plots import filter_rows_label
        frame_channels = self.spec.obs_shape[-1] if len(self.spec.obs_shape) == 3 else 1
        stacked = self.settings_stack_channels() // max(frame_channels, 1)
        return filter_rows_label(frame_channels, stacked)

    def handle_interrupt(self, items_fn: Callable[[], CheckpointRecord], step: int,
                         iteration: int) -> None:
        """At a safe point after Ctrl+C: ask (or not), save ``last``, stop the run."""
        saved = None
        if self.logger is not None:
            self.logger.flush()
        if self.guard.confirm_save():
            saved = self.save(self.checkpoints.path("last"), items_fn(), step, iteration,
                              "interrupt", self._include_replay())
            if self.writes:
                print(f"Saved agent at step {step:,} to {saved}; continue it with --resume "
                      f"{self.run_dir}", file=sys.stderr, flush=True)
        raise TrainingInterrupted(f"interrupted at step {step}", saved,
                                  self.guard.signum or signal.SIGINT)

    def startup_notes(self) -> list[str]:
        """What the run will allocate and do, where the options make that a surprise: a
        first try such as ``nature Pong --steps 600`` keeps the preset's 1M-transition
        replay memory and 125,000-step validation, and a --val-freq that is no multiple of
        --chunk-steps validates only between chunks."""
        c = self.config
        notes = []
        state = self.state_bytes
        due, replay = self._state_notes()
        if state >= LARGE_STATE or due:
            notes.append(f"allocates about {gib(state)} for the state of {c.seeds} "
                         f"seed{'s' if c.seeds > 1 else ''}{replay}")
        notes.extend(self._learning_notes())
        validations = c.steps // c.val_freq + (1 if c.steps % c.val_freq else 0)
        if validations * c.val_steps > c.steps:
            notes.append(f"validation: {validations:,} evaluation"
                         f"{'s' if validations > 1 else ''} of --val-steps {c.val_steps:,} "
                         f"({validations * c.val_steps:,} steps per seed) beside {c.steps:,} "
                         "training steps")
        chunk = self._iterations_per_chunk() * self.steps_per_iteration()
        if (self.native and c.val_freq % chunk and c.steps > c.val_freq):
            notes.append(f"validation happens between chunks of {chunk:,} steps: at the first "
                         f"chunk end at or after each multiple of --val-freq {c.val_freq:,} "
                         f"(make it a multiple of --chunk-steps to have it exact)")
        return notes

    def run(self, restored: Restored | None = None) -> dict[str, Any]:
        c = self.config
        started = time.time()
        self._apply_restored(restored)
        resume_step = restored.step if restored is not None else None
        logger = (RunLogger(self.run_dir, c, quiet=self.quiet, resume_step=resume_step)
                  if self.writes else SilentLogger(c))
        with logger, self.guard:
            self.logger = logger
            for line in self.startup_notes():
                logger.note(line)
            if restored is not None:
                logger.note(f"resuming from {restored.path} at step {restored.step:,}")
                changed = self.changed_options(restored.metadata)
                if changed:
                    logger.note("options changed since the checkpoint: " + ", ".join(changed))
                # only options the user changed: a larger --steps alone also changes the
                # iterations of a run shorter than one chunk, which is no news to them
                saved = restored.metadata.get("config", {})
                moved = [flag_name(name) for name in ("chunk_steps", "val_freq")
                         if name in saved and saved[name] != getattr(c, name)]
                saved_chunk = restored.metadata.get("iterations_per_chunk")
                if moved and saved_chunk not in (None, self._iterations_per_chunk()):
                    logger.note(f"{' and '.join(moved)} changed since the checkpoint: chunk "
                                "boundaries move, so results may differ from an "
                                "uninterrupted run in the last bits")
            train_state = self.train_loop(restored)
            wall = time.time() - started
            summary = run_summary(c, self.spec, self.evaluations, wall_seconds=wall,
                                  trained_steps=c.steps - self.start_step)
            if restored is not None:
                summary["resumed_from_step"] = restored.step
            params = jax.tree.map(lambda x: np.asarray(x[0]), to_host(train_state.params))
            logger.finish(summary, params=params, in_channels=self.settings_stack_channels(),
                          rows_label=self.filter_rows_label())
        return summary


class QTrainer(Trainer):
    """A run of the Q agent (the DQN family, ``agents.dqn``): replay memory, held-out
    transitions drawn from it, the native chunk loop or ``loops.q_host``."""

    kind = CHECKPOINT_KIND
    structure = STRUCTURAL_SETTINGS

    def build_agent(self) -> None:
        """The agent; with data-parallel seeds (more devices than seeds) its settings are
        one device's share (``loops.settings.device_share``), and ``learner_agent`` is
        the same agent adding its gradients over the devices of a seed, for the chunk.
        Under Sebulba the learner's minibatches are split over its devices."""
        settings = agent_settings(self.config, self.spec, self.native)
        if self.shards > 1:
            settings = device_share(settings, self.shards)
        if self.sebulba is None:
            self.agent: QAgent = make_q_agent(settings)
        else:
            self.agent = make_q_agent(settings, place_batch=self.sebulba.batch_layout(
                batch_axis=1 if settings.recurrent else 0))
        self.learner_agent: QAgent = (make_q_agent(settings, batch_axis=BATCH_AXIS)
                                      if self.shards > 1 else self.agent)

    @property
    def pure_agent(self) -> QAgent:
        return self.agent

    @property
    def shards(self) -> int:
        """Devices per seed: above 1, each seed is data-parallel over that many."""
        return self.placement.shards

    def state_keys(self) -> tuple[jax.Array, jax.Array | None]:
        """(keys, shards) of the state's leading axis (``SeedPlacement.share_keys``)."""
        return self.placement.share_keys(self.keys)

    def per_seed(self, values) -> np.ndarray:
        """[S] from a data-parallel state's [S x D] statistics: each seed's mean over its
        devices (its own where there is one device per seed)."""
        values = np.asarray(values)
        return values.reshape(self.config.seeds, self.shards, *values.shape[1:]).mean(1)

    def steps_per_iteration(self) -> int:
        return self.config.envs

    def saved_setting_defaults(self) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(QAgentSettings)}

    def _init_example(self):
        """(train, replay, actor) of all seeds as ShapeDtypeStructs, replay counters shared."""
        return jax.eval_shape(jax.vmap(self.agent.init, out_axes=(0, self._replay_axes(), 0)),
                              self.state_keys()[0])

    @functools.cached_property
    def replay_bytes(self) -> int:
        """Size of all seeds' replay memory."""
        return ckpt.nbytes(self._init_example()[1])

    def _include_replay(self) -> bool:
        if self.checkpoint_replay is not None:
            return self.checkpoint_replay
        return self.native and self.replay_bytes <= REPLAY_AUTO_LIMIT

    def templates(self) -> QItems:
        """The checkpoint items of this run as ShapeDtypeStructs (for restoring)."""
        train, replay, actor = self._init_example()
        keys, shards = self.state_keys()
        heldout = jax.eval_shape(self._sample_heldout_fn(self._replay_axes()), replay, keys)
        if self.native:
            carry = jax.eval_shape(lambda k, d: init_native_seeds(self.agent, self.env, k, d),
                                   keys, shards)
            return dataclasses.replace(QItems.of_native(carry), heldout=heldout)
        return QItems(train=train, actor=actor, replay=replay, heldout=heldout)

    def stored(self, items: QItems, with_replay: bool) -> QItems:
        """The loop's items with the held-out set, and the memory only ``with_replay``."""
        return dataclasses.replace(items, replay=items.replay if with_replay else None,
                                   heldout=self.heldout)

    def _replay_axes(self):
        example = jax.eval_shape(self.agent.init, self.keys[0])[1]
        return self.agent.replay.seed_axes(example)

    def _sample_heldout_fn(self, replay_axes) -> Callable:
        return jax.vmap(make_heldout_sampler(self.agent, self.val_size), in_axes=(replay_axes, 0))

    def _apply_restored(self, restored: Restored | None) -> None:
        super()._apply_restored(restored)
        if restored is None:
            return
        self.heldout = self.placement.place(restored.items.heldout, shards=self.shards > 1)
        if restored.items.replay is None:
            envs = self.config.envs
            self.cadence = dataclasses.replace(
                self.cadence, learn_from=restored.iteration + math.ceil(self.config.learn_start / envs))

    def _compile_validation(self, replay_axes) -> None:
        self._sample_heldout = edge_jit(self._sample_heldout_fn(replay_axes))
        self._value_stats = edge_jit(jax.vmap(make_value_stats(self.agent)))

    def value_stats(self, items: QItems, step: int, v, td_error):
        """The held-out V and TD error: the Q agent's from transitions drawn once from its
        replay memory (at the first evaluation after learning starts)."""
        c = self.config
        if self.heldout is None and step >= c.learn_start:
            keys = self.placement.place(
                jax.random.split(self.heldout_key, c.seeds * self.shards), shards=self.shards > 1)
            self.heldout = self._sample_heldout(items.replay, keys)
        if self.heldout is not None:
            # data-parallel seeds: each device's held-out set from its own memory, averaged
            v, td_error = (self.per_seed(np.asarray(x, np.float64)) for x in
                           to_host(self._value_stats(items.train, self.heldout)))
        return v, td_error

    def _state_notes(self) -> tuple[bool, str]:
        c = self.config
        replay = (f"; replay memory {gib(self.replay_bytes)} for --mem-size "
                  f"{c.mem_size:,} per seed")
        if c.mem_size > c.steps:
            replay += f", of which --steps {c.steps:,} fills {c.steps / c.mem_size:.1%}"
        return c.mem_size > c.steps, replay

    def _learning_notes(self) -> list[str]:
        c = self.config
        if c.learn_start >= c.steps:
            return [f"--learn-start {c.learn_start:,} is not below --steps {c.steps:,}: "
                    "this run acts and fills its memory but never learns"]
        return []

    def train_loop(self, restored: Restored | None) -> Any:
        self._note_replay()
        return self._run_native(restored) if self.native else self._run_host(restored)

    def _note_replay(self) -> None:
        size = self.replay_bytes / 2 ** 20
        if self._include_replay():
            self.logger.note(f"checkpoints/last includes the replay memory ({size:,.1f} MiB)")
        else:
            self.logger.note(f"checkpoints do not include the replay memory ({size:,.1f} MiB); "
                             "a resumed run refills it for --learn-start steps before learning")

    # ---------------------------------------------------------------- JAX-native path
    def _run_native(self, restored: Restored | None) -> Any:
        c = self.config
        env: JaxEnv = self.env
        agent = self.agent
        length = self._iterations_per_chunk()
        total_iterations = c.steps // c.envs
        shards = self.shards
        evaluate = edge_jit(jax.vmap(make_native_evaluate(
            agent, env.for_mode("eval"), num_envs=c.val_envs, num_steps=eval_steps_per_env(c), epsilon=c.val_epsilon)))
        init = edge_jit(lambda keys, shards: init_native_seeds(agent, env, keys, shards))
        if restored is None:
            carry = init(*self.state_keys())
            iteration = 0
        else:
            items = restored.items
            carry = items.native_carry(items.replay if items.replay is not None
                                       else init(*self.state_keys()).replay)
            iteration = restored.iteration
        axes = native_seed_axes(agent, carry)
        # --devices: seeds (or, data-parallel, every seed's share on every device) split
        carry = self.placement.place(carry, axes, shards=shards > 1)
        self._compile_validation(axes.replay)
        # One compiled chunk of ``length`` iterations; a shorter last chunk runs it with the
        # tail masked (``active``) rather than compiling a second one.
        chunk = make_native_chunk(self.learner_agent, env, self.cadence, length)
        if shards > 1:   # each device runs its share; the learner adds gradients over batch
            specs = self.placement.specs(axes)
            split = PartitionSpec(None, self.placement.split_axes)
            outputs = {"scores": split, "finished": split, "loss": split, "td_error": split,
                       "q_mean": split, "learned": PartitionSpec()}
            chunk = self.placement.data_parallel(
                chunk, in_specs=(specs, PartitionSpec(), PartitionSpec()),
                out_specs=(specs, outputs))
        chunk = edge_jit(chunk, donate_argnums=0)

        def evaluate_carry(carry: NativeCarry, key):
            keys = self.placement.place(jax.random.split(key, c.seeds))
            # data-parallel: a seed's parameters are alike on its devices; the first's
            params = carry.train.params
            if shards > 1:
                params = jax.tree.map(lambda x: x[::shards], params)
            total, episodes, partial = to_host(evaluate(params, keys))
            return mean_score(total, episodes, partial), episodes, None, None

        def log_chunk(step: int, carry: NativeCarry, out, run: int, seconds: float):
            if shards > 1:   # [T, S x D, E / D] -> [T, S, E]; the learner's alike over D
                out = {name: (value.reshape(value.shape[0], c.seeds, -1)
                              if name in ("scores", "finished") else
                              value[:, ::shards] if value.ndim == 2 else value)
                       for name, value in out.items()}
            self.logger.log_chunk(step, ChunkStats.of(out), self.cadence.epsilon(step), seconds,
                                  run * c.envs)

        return run_native_chunks(self, carry=carry, iteration=iteration,
                                 total_iterations=total_iterations, iterations_per_chunk=length,
                                 steps_per_iteration=c.envs, chunk=chunk,
                                 evaluate=evaluate_carry, items=QItems.of_native,
                                 log_chunk=log_chunk).train

    # ---------------------------------------------------------------- host-env path
    def _run_host(self, restored: Restored | None) -> Any:
        from jaxatari.loops.q_host import HostRunner
        if self.sebulba is not None:
            from jaxatari.loops.sebulba import SebulbaRunner
            runner = SebulbaRunner(self.config, self.env, self.agent, self.cadence, self.keys,
                                   self.sebulba)
        else:
            runner = HostRunner(self.config, self.env, self.agent, self.cadence, self.keys,
                                self.placement)
        self._compile_validation(runner.replay_axes)
        return runner.run(self, restored)



class ActorLearnerTrainer(Trainer):
    """A run of an actor-learner (``--async``, ``agents.actor_learner``): its held-out
    rollouts are its loops' own, and ``loops.actors`` chooses the loop."""

    kind = ACTOR_LEARNER_KIND
    structure = ACTOR_LEARNER_STRUCTURE

    def build_agent(self) -> None:
        self.learner = build_learner(self.config, self.spec)

    @property
    def pure_agent(self):
        return self.learner

    @property
    def path_kind(self) -> str:
        if not self.native and self.config.async_mode == "async":
            return "host-async"
        return super().path_kind

    def steps_per_iteration(self) -> int:
        return self.config.envs * self.config.batch_size

    def templates(self) -> ActorLearnerItems:
        from jaxatari.loops.actors import checkpoint_templates
        return checkpoint_templates(self.config, self.env, self.keys, self.placement)

    def train_loop(self, restored: Restored | None) -> Any:
        from jaxatari.loops.actors import run_actor_learner
        if restored is not None and not self.native:
            self.logger.note("host envs cannot be restored: the resumed run starts new "
                             "games with empty frame stacks")
        return run_actor_learner(self.config, self.env, self.keys, self, restored,
                                 placement=self.placement)


def seeds_mean(scores) -> float | None:
    """The mean score over seeds, or None unless every seed finished an episode (a mean of
    some seeds would compare unlike with unlike)."""
    scores = np.asarray(scores, np.float64)
    return float(np.mean(scores)) if np.isfinite(scores).all() else None


def machine_memory() -> tuple[int, str]:
    """(bytes, what): the memory the run's arrays live in: the accelerator's, or on a CPU the
    machine's (or its cgroup's limit, when lower)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:   # a backend without memory statistics
            limit = None
        if limit:
            return int(limit), f"{device.device_kind} memory"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        total = min(total, int(Path("/sys/fs/cgroup/memory.max").read_text()))
    except (OSError, ValueError):   # no cgroup v2 limit ("max")
        pass
    return total, "memory"


def gib(size: float) -> str:
    return f"{size / 2 ** 30:,.1f} GiB" if size >= 2 ** 30 else f"{size / 2 ** 20:,.1f} MiB"


def check_memory(trainer: "Trainer") -> int:
    """The run's state in bytes; ConfigError (one line) when it cannot fit this machine."""
    c = trainer.config
    needed = trainer.state_bytes
    limit, what = machine_memory()
    # --devices: each accelerator holds its share of the seeds; CPU devices share one memory
    devices = 1 if jax.devices()[0].platform == "cpu" else trainer.placement.device_count
    if needed // devices > limit:
        replay = (f", of which the replay memory is {gib(trainer.replay_bytes)} "
                  f"(--mem-size {c.mem_size:,} per seed x --seeds {c.seeds:,})"
                  if trainer.replay_bytes else "")
        share = f" ({gib(needed // devices)} per device)" if devices > 1 else ""
        raise ConfigError(f"this run needs about {gib(needed)} for its state{replay}{share}, more "
                          f"than this machine's {gib(limit)} of {what}: lower --seeds or "
                          "--mem-size")
    return needed


def saved_agent(run_dir: Path) -> dict[str, Any] | None:
    """The metadata of a run directory's resumable checkpoint (``checkpoints/last``), if any."""
    found = ckpt.resolve(ckpt.checkpoint_dir(run_dir) / "last")
    if found is None:
        return None
    try:
        return ckpt.read_metadata(found)
    except ckpt.CheckpointError:   # damaged: still a saved agent, never silently replaced
        return {"path": str(found), "step": None}


def _at_step(saved: dict[str, Any]) -> str:
    return f"step {saved['step']:,}" if saved.get("step") is not None else "unreadable"


def train(config: Config, run_dir: Path | None = None, quiet: bool = False,
          resume_from: Path | None = None, *, resume: bool | None = None,
          checkpoint_every: bool | None = None, checkpoint_replay: bool | None = None,
          val_size: int | None = None, interactive: bool | None = None
          ) -> tuple[Path, dict]:
    """Trains ``config`` in ``run_dir`` and returns (run_dir, summary).

    Builds everything that can fail on bad input BEFORE creating or touching the run
    directory, so a failed start never leaves a directory that looks like a run and never
    changes an existing one.

    resume_from: a run directory (its ``checkpoints/last``) or a checkpoint directory to
        continue from; the run continues in that run directory unless ``run_dir`` is given.
        A finished run may be continued with a larger ``--steps``.
    resume: for a run directory that already holds a saved agent of an unfinished run:
        True resumes it, False starts again (the old checkpoints are moved aside to
        ``checkpoints-replaced-<time>``), None asks on an interactive terminal and refuses
        (one-line error) without one.
    checkpoint_every, checkpoint_replay, val_size: the config's --checkpoint-every,
        --checkpoint-replay and --val-size unless given (``loops.settings.checkpoint_choices``).
    interactive: whether to ask questions on the terminal (default: stdin is a terminal).

    In a multi-process run (``jaxatari.hosts.join`` before this) every process calls
    ``train`` alike: all of them read and build, and start only if all of them could;
    process 0 alone writes the run directory, and nobody is asked anything.
    """
    interactive = sys.stdin.isatty() if interactive is None else interactive
    request_cpu_devices(config)   # before anything below touches a JAX device
    if hosts.process_count() > 1:
        interactive = False   # one terminal cannot answer for every process
    held: list[RunDirLock] = []
    try:
        start = _together(lambda: _prepare(
            config, run_dir, resume_from, held, quiet=quiet, resume=resume,
            checkpoint_every=checkpoint_every, checkpoint_replay=checkpoint_replay,
            val_size=val_size, interactive=interactive))
        return _run(config, start)
    finally:
        for lock in held:
            lock.release()


def _together(prepare: Callable[[], Any]) -> Any:
    """``prepare()``, where every process of a multi-process run starts or none does: a
    process whose start failed raises its own error, the others a one-line ConfigError,
    so no process waits for a partner that has left. One process: ``prepare()``."""
    try:
        result, error = prepare(), None
    except Exception as failure:
        result, error = None, failure
    if hosts.any_process(error is not None):
        if error is not None:
            raise error
        raise ConfigError("another process of this run stopped before training began "
                          "(its error is on its own stderr)")
    return result


@dataclasses.dataclass(frozen=True)
class _Start:
    """What ``_prepare`` found and built, before anything is written."""

    run_dir: Path
    trainer: Trainer
    restored: Restored | None
    start_again: bool            # move the old checkpoints aside (--no-resume)
    lock: RunDirLock | None      # process 0's; None in the others, which write nothing


def _prepare(config: Config, run_dir: Path | None, resume_from: Path | None,
             held: list[RunDirLock], *, quiet: bool, resume: bool | None,
             checkpoint_every: bool | None, checkpoint_replay: bool | None,
             val_size: int | None, interactive: bool) -> _Start:
    """Everything of ``train`` that reads and builds, nothing that writes. Every process
    of a multi-process run reads the run directory and the checkpoint (so they must be on
    a filesystem all of them see); process 0 alone checks that it can write there and
    locks it (``held``)."""
    source = None
    if resume_from is not None:
        source = ckpt.find(Path(resume_from), "last")
        if run_dir is None and not config.run_dir:
            run_dir = ckpt.run_dir_of(source)
    run_dir = Path(run_dir or config.run_dir or default_run_dir(config))
    lock = None
    if hosts.writes_files():
        check_run_dir(run_dir)
        lock = RunDirLock(run_dir)
        held.append(lock)
        if run_dir.is_dir():
            lock.acquire()   # a run using it now: refused before anything is read or built
    trainer = Trainer(config, run_dir, quiet=quiet, keep_every=checkpoint_every,
                      checkpoint_replay=checkpoint_replay, val_size=val_size,
                      interactive=interactive)
    check_memory(trainer)
    finished = run_dir.exists() and (run_dir / "summary.json").exists()
    if source is None:
        saved = None if finished else saved_agent(run_dir)
        if finished:
            raise FileExistsError(f"run directory {run_dir} already holds a finished run; "
                                  "choose another --run-dir (or continue it with --resume)")
        if saved is not None:
            if resume is None:
                if not interactive:
                    raise ConfigError(
                        f"run directory {run_dir} holds a saved agent of an unfinished run "
                        f"({_at_step(saved)}): continue it with --resume (jaxatari resume "
                        f"{run_dir}) or start again with --no-resume")
                resume = ask(f"Saved agent found in {run_dir} ({_at_step(saved)}) - "
                             "resume (y/n)? ")
            if resume:
                source = Path(saved["path"])
        elif resume:
            raise ConfigError(f"--resume: {run_dir} holds no saved agent to continue")
    restored = trainer.restore(source) if source is not None else None
    return _Start(run_dir=run_dir, trainer=trainer, restored=restored,
                  start_again=source is None and resume is False, lock=lock)


def _run(config: Config, start: _Start) -> tuple[Path, dict]:
    """Writes the run's start (process 0 alone) and trains."""
    run_dir, trainer, restored = start.run_dir, start.trainer, start.restored
    if start.lock is None:   # not process 0: it computes and gathers, process 0 writes
        return run_dir, trainer.run(restored)
    if start.start_again and ckpt.checkpoint_dir(run_dir).exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        ckpt.checkpoint_dir(run_dir).rename(run_dir / f"checkpoints-replaced-{stamp}")
    create_run_dir(run_dir)
    start.lock.acquire()
    for marker in ("summary.json", "INCOMPLETE"):
        if restored is not None and (run_dir / marker).exists():
            (run_dir / marker).unlink()
    record = {"env_spec": dataclasses.asdict(trainer.spec),
              "agent": dataclasses.asdict(trainer.settings),
              "environment": environment_record()}
    if restored is not None:
        record["resumed_from"] = {"checkpoint": str(restored.path), "step": restored.step,
                                  "changed_options": trainer.changed_options(restored.metadata)}
        in_place = restored.path.parent.parent.resolve() == run_dir.resolve()
        if (run_dir / "config.json").exists() and in_place:
            shutil.copyfile(run_dir / "config.json",
                            run_dir / f"config-before-step-{restored.step}.json")
    (run_dir / "config.json").write_text(config_json(config, record))
    try:
        summary = trainer.run(restored)
    except BaseException:
        (run_dir / "INCOMPLETE").write_text("this run did not finish; see log.txt for how "
                                            "far it got and why it stopped\n")
        raise
    return run_dir, summary


def train_sweep(config: Config, sweep, run_dir: Path | None = None, quiet: bool = False
                ) -> tuple[Path, dict]:
    """Trains every configuration of ``sweep`` (``config.Sweep``) x ``--seeds`` seeds in one
    program (``loops.sweep``) and returns (run_dir, the sweep's summary). Bad input is
    refused before the run directory is created; a sweep starts in a new or empty one and
    keeps no checkpoints."""
    from jaxatari.loops.sweep import build_sweep, run_sweep
    request_cpu_devices(config)
    run_dir = Path(run_dir or config.run_dir or default_run_dir(config))
    check_run_dir(run_dir)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} is not empty: a sweep starts in a new one "
                          "(sweeps keep no checkpoints and cannot be resumed)")
    program = build_sweep(config, sweep)
    placement = seed_placement(config, native=True)   # --devices: seeds split, as a run's
    if placement.shards > 1:
        raise ConfigError(f"--devices {config.devices} with --seeds {config.seeds}: a sweep "
                          "splits its seeds over devices; data-parallel seeds (more devices "
                          "than seeds) are for single runs so far")
    needed = program.state_bytes()
    limit, what = machine_memory()
    if jax.devices()[0].platform != "cpu":   # each accelerator holds its share of the seeds
        needed //= placement.device_count
    if needed > limit:
        raise ConfigError(f"this sweep needs about {gib(needed)} for the state of "
                          f"{program.size} configurations x {config.seeds} seeds, more than "
                          f"this machine's {gib(limit)} of {what}: lower --seeds or --mem-size")
    # ------------------------------------------------ nothing above touched the disk
    create_run_dir(run_dir)
    with RunDirLock(run_dir):
        record = {"sweep": sweep.to_json(), "configurations": program.size,
                  "environment": environment_record()}
        (run_dir / "config.json").write_text(config_json(config, record))
        try:
            summary = run_sweep(program, run_dir, quiet=quiet, placement=placement)
        except BaseException:
            (run_dir / "INCOMPLETE").write_text("this sweep did not finish\n")
            raise
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir, summary
