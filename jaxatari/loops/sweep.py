"""A hyperparameter sweep of the Q agent or an actor-learner on a JAX-native env, all
configurations in one compiled program (``--sweep``, docs/sweeps.md).

Each configuration's static settings and cadence are built as a single run's
(``loops.settings``); the fields that differ travel as arrays [C] (``agents.sweep``), and
the chunk, the initial state and the evaluation are a single run's functions mapped over the
configuration axis. Configuration c with seed s starts from the keys of a single run with
seed s. Each configuration writes a run directory of its own (``c<index>_<values>/``: its
config.json, CSV logs, plots and summary.json, readable by ``jaxatari plot`` and
``compare``); the sweep's summary ranks them. Sweeps keep no checkpoints and compute no
held-out V or TD error.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari import human_scores
from jaxatari.agents.actor_learner import make_actor_learner
from jaxatari.agents.actor_native import (init_native_actor_carry, make_native_actor_chunk,
                                          make_native_actor_evaluate)
from jaxatari.agents.dqn import make_q_agent
from jaxatari.agents.native import (init_native_seeds, make_native_chunk,
                                    make_native_evaluate, native_seed_axes)
from jaxatari.agents.sweep import SweptValues, over_configurations, swept_values, with_values
from jaxatari.config import Config, ConfigError, Sweep, config_json, label
from jaxatari.devices import SeedPlacement
from jaxatari.envs import JaxEnv, make_env
from jaxatari.loops.session import SessionBase, eval_steps_per_env, run_native_chunks, run_summary
from jaxatari.loops.settings import (actors_per_update, agent_settings, cadence_of,
                                     chunk_iterations, learner_settings, mean_actor_epsilon)
from jaxatari.metrics import ChunkStats, Evaluation, RunLogger, mean_score
from jaxatari.networks import body_misfit
from jaxatari.xla_options import edge_jit


@dataclasses.dataclass(frozen=True)
class TargetPeriod:
    """The actor-learners' --tau as a record, so that a sweep traces it as it traces the
    settings' fields (the Q agent's is a field of its cadence)."""

    target_period: int


@dataclasses.dataclass(frozen=True)
class SweepParts:
    """What differs between the agent kinds in a sweep: the traced values [C] and, for one
    configuration's values ``v``, a single run's pure functions; on the host, how a
    configuration's chunk outputs are logged."""

    values: SweptValues
    init_seeds: Callable      # (v, keys [S]) -> carry [S]
    make_chunk: Callable      # v -> chunk(carry [S], first_iteration, active) -> (carry, out)
    make_play: Callable       # v -> evaluate(params, key) of one seed
    steps_per_iteration: int
    iterations_per_chunk: int
    evaluates_at_start: bool
    chunk_stats: Callable     # (out of one configuration, iterations run) -> ChunkStats
    epsilon: Callable         # (index, step, carry [C, S]) -> the epsilon to log
    seed_axes: Callable       # carry -> its seed axes (0, or None for what seeds share)


def q_agent_parts(base: Config, configs: list[Config], env: JaxEnv) -> SweepParts:
    """The Q agent's (``agents.native``): its settings and cadence traced."""
    settings = [agent_settings(c, env.spec, native=True) for c in configs]
    cadences = [cadence_of(c) for c in configs]
    eval_env = env.for_mode("eval")
    length = chunk_iterations(base, base.envs)

    def agent_of(v: SweptValues):
        return make_q_agent(with_values(settings[0], v)), with_values(cadences[0], v)

    def make_chunk(v):
        agent, cadence = agent_of(v)
        return make_native_chunk(agent, env, cadence, length)

    def make_play(v):
        return make_native_evaluate(agent_of(v)[0], eval_env, num_envs=base.val_envs,
                                    num_steps=eval_steps_per_env(base),
                                    epsilon=base.val_epsilon)

    return SweepParts(
        values={**swept_values(settings), **swept_values(cadences)},
        init_seeds=lambda v, keys: init_native_seeds(agent_of(v)[0], env, keys),
        make_chunk=make_chunk, make_play=make_play, steps_per_iteration=base.envs,
        iterations_per_chunk=length, evaluates_at_start=True,
        chunk_stats=lambda out, run: ChunkStats.of(out),
        epsilon=lambda index, step, carry: cadences[index].epsilon(step),
        seed_axes=lambda carry: native_seed_axes(make_q_agent(settings[0]), carry))


def actor_learner_parts(base: Config, configs: list[Config], env: JaxEnv) -> SweepParts:
    """The actor-learners' (``agents.actor_native``): their settings and --tau traced."""
    actors = actors_per_update(base)
    settings = [learner_settings(c, env.spec, c.envs, actors) for c in configs]
    periods = [TargetPeriod(c.tau) for c in configs]
    learners = [make_actor_learner(s) for s in settings]   # concrete: the logged epsilon
    eval_env = env.for_mode("eval")
    steps_per_iteration = base.batch_size * base.envs
    length = chunk_iterations(base, steps_per_iteration)

    def learner_of(v: SweptValues):
        return make_actor_learner(with_values(settings[0], v))

    def make_chunk(v):
        return make_native_actor_chunk(learner_of(v), env, length,
                                       with_values(periods[0], v).target_period)

    def make_play(v):
        return make_native_actor_evaluate(learner_of(v), eval_env, num_envs=base.val_envs,
                                          num_steps=eval_steps_per_env(base),
                                          epsilon=base.val_epsilon)

    def init_seeds(v, keys):
        learner = learner_of(v)
        return jax.vmap(lambda k: init_native_actor_carry(learner, env, k))(keys)

    def chunk_stats(out, run: int) -> ChunkStats:
        def per_step(name):   # [I, S, T, N] -> [I * T, S, N]
            return np.asarray(out[name]).transpose(0, 2, 1, 3).reshape(-1, base.seeds,
                                                                        base.envs)
        return ChunkStats(scores=per_step("scores"), finished=per_step("finished"),
                          loss=np.asarray(out["loss"]), td_error=np.asarray(out["td_error"]),
                          q_mean=np.asarray(out["q_mean"]), learned=np.ones(run, bool))

    def epsilon(index: int, step: int, carry) -> float:
        del step
        return mean_actor_epsilon(learners[index], carry.actors.steps[index],
                                  carry.actors.final_epsilon[index])

    return SweepParts(
        values={**swept_values(settings), **swept_values(periods)}, init_seeds=init_seeds,
        make_chunk=make_chunk, make_play=make_play, steps_per_iteration=steps_per_iteration,
        iterations_per_chunk=length, evaluates_at_start=False, chunk_stats=chunk_stats,
        epsilon=epsilon, seed_axes=lambda carry: 0)   # every leaf is per seed


@dataclasses.dataclass(frozen=True)
class SweepProgram:
    """A sweep built and ready to run: its configurations, their traced values [C] and the
    jitted functions over configurations x seeds."""

    base: Config
    sweep: Sweep
    configs: list[Config]
    assignments: list[dict[str, Any]]
    env: JaxEnv
    parts: SweepParts
    init: Callable        # (values, keys [S]) -> carry [C, S]
    chunk: Callable       # (carry, values, first_iteration, active) -> (carry, out [T, C, ...])
    evaluate: Callable    # (params [C, S], values, keys [S]) -> (total, episodes, partial) [C, S]

    @property
    def size(self) -> int:
        return len(self.configs)

    @property
    def values(self) -> SweptValues:
        return self.parts.values

    def subdir(self, index: int) -> str:
        """``c03_eta=0.001,gamma=0.9``: configuration ``index``'s run directory."""
        width = len(str(self.size - 1))
        return f"c{index:0{width}d}_{label(self.assignments[index])}"

    def state_bytes(self) -> int:
        keys = jax.random.split(jax.random.PRNGKey(self.base.seed), self.base.seeds)
        shapes = jax.eval_shape(self.init, self.values, keys)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def build_sweep(base: Config, sweep: Sweep) -> SweepProgram:
    """Everything that can fail on bad input, before any file is written: the
    configurations (validated), the env (JAX-native only) and the traced values."""
    configs = sweep.configs(base)
    env = make_env(base)
    if not isinstance(env, JaxEnv):
        raise ConfigError(f"--sweep needs a JAX-native env (catch, gridworld, <Game>-MinAtar "
                          f"or a custom JaxEnv); --env {base.env} steps on the host")
    spec = env.spec
    misfit = body_misfit(base.model_body, spec.obs_shape)
    if misfit:
        raise ConfigError(f"{misfit} ({spec.name})")
    make_parts = q_agent_parts if base.async_method == "none" else actor_learner_parts
    parts = make_parts(base, configs, env)

    def over(fn):
        return over_configurations(fn, sweep.mode)

    def init(values: SweptValues, keys):
        return over(lambda v: parts.init_seeds(v, keys))(values)

    def chunk(carry, values: SweptValues, first_iteration, active):
        def one(carry_c, v):
            return parts.make_chunk(v)(carry_c, first_iteration, active)
        carry, out = over(one)(carry, values)
        return carry, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)   # [T, C, ...]

    def evaluate(params, values: SweptValues, keys):
        def one(params_c, v):
            return jax.vmap(parts.make_play(v))(params_c, keys)
        return over(one)(params, values)

    return SweepProgram(base=base, sweep=sweep, configs=configs,
                        assignments=sweep.assignments(), env=env, parts=parts,
                        init=edge_jit(init), chunk=edge_jit(chunk, donate_argnums=0),
                        evaluate=edge_jit(evaluate))


class SweepSession(SessionBase):
    """The run around a sweep's chunks: one evaluation key chain (a single run's, so every
    configuration is evaluated as its own run would be) and one logger per configuration."""

    def __init__(self, program: SweepProgram, loggers: list[RunLogger], quiet: bool):
        super().__init__(program.base)
        self.program = program
        self.loggers = loggers
        self.quiet = quiet
        self.per_config: list[list[Evaluation]] = [[] for _ in loggers]

    def record_evaluation(self, step: int, scores, episodes, items, iteration: int,
                          v=None, td_error=None) -> Evaluation:
        """Logs each configuration's evaluation in its own directory (scores [C, S])."""
        del v, td_error   # sweeps compute no held-out statistics
        human_name = self.program.env.spec.human_name
        for index, logger in enumerate(self.loggers):
            normalised = human_scores.normalise(human_name, scores[index])
            evaluation = Evaluation(step, np.asarray(scores[index], np.float64),
                                    np.asarray(episodes[index]), normalised=normalised)
            self.per_config[index].append(evaluation)
            params = (jax.tree.map(lambda x: x[index], items().train.params)
                      if logger.report_weights else None)
            logger.log_eval(step, evaluation.scores, evaluation.episodes,
                            normalised=normalised, params=params)
        evaluation = Evaluation(step, np.asarray(scores), np.asarray(episodes))
        self.evaluations.append(evaluation)
        self.next_eval = (step // self.config.val_freq + 1) * self.config.val_freq
        if not self.quiet:
            means = "  ".join(f"c{i} {np.nanmean(row):.3f}" if np.isfinite(row).any()
                              else f"c{i} n/a" for i, row in enumerate(np.asarray(scores)))
            print(f"step {step:,}: mean greedy score over seeds  {means}", file=sys.stderr,
                  flush=True)
        return evaluation


def run_sweep(program: SweepProgram, run_dir: Path, *, quiet: bool,
              placement: SeedPlacement = SeedPlacement()) -> dict[str, Any]:
    """Trains every configuration x seed in one program; writes each configuration's run
    directory and returns the sweep's summary (configurations ranked). ``placement``
    (--devices) splits the seed axis over devices, every configuration on each."""
    base = program.base
    started = time.time()
    keys = placement.place(jax.random.split(jax.random.PRNGKey(base.seed), base.seeds))
    with contextlib.ExitStack() as stack:
        loggers = []
        for index, config in enumerate(program.configs):
            sub = run_dir / program.subdir(index)
            sub.mkdir(parents=True, exist_ok=True)
            (sub / "config.json").write_text(config_json(config, {"sweep": {
                "index": index, "values": program.assignments[index],
                "mode": program.sweep.mode, "sweep_dir": ".."}}))
            loggers.append(stack.enter_context(RunLogger(sub, config, quiet=True)))
        session = SweepSession(program, loggers, quiet)
        carry = program.init(program.values, keys)
        carry = placement.place(carry, program.parts.seed_axes(carry), after_configurations=True)

        def evaluate(carry, key):
            total, episodes, partial = jax.device_get(program.evaluate(
                carry.train.params, program.values,
                placement.place(jax.random.split(key, base.seeds))))
            return mean_score(total, episodes, partial), episodes, None, None

        parts = program.parts

        def log_chunk(step: int, carry, out, run: int, seconds: float):
            for index, logger in enumerate(loggers):
                stats = parts.chunk_stats({name: value[:, index] for name, value in out.items()},
                                          run)
                logger.log_chunk(step, stats, parts.epsilon(index, step, carry), seconds,
                                 run * parts.steps_per_iteration)

        run_native_chunks(session, carry=carry, iteration=0,
                          total_iterations=base.steps // parts.steps_per_iteration,
                          iterations_per_chunk=parts.iterations_per_chunk,
                          steps_per_iteration=parts.steps_per_iteration,
                          chunk=lambda carry, first, active: program.chunk(
                              carry, program.values, first, active),
                          evaluate=evaluate, items=lambda carry: carry, log_chunk=log_chunk,
                          evaluates_at_start=parts.evaluates_at_start)
        wall = time.time() - started
        summaries = []
        for index, (config, logger) in enumerate(zip(program.configs, loggers)):
            summary = run_summary(config, program.env.spec, session.per_config[index],
                                  wall_seconds=wall, trained_steps=config.steps)
            summary["sweep"] = {"index": index, "values": program.assignments[index]}
            logger.finish(summary)
            summaries.append(summary)
    return sweep_summary(program, summaries, wall, placement.device_count)


def sweep_summary(program: SweepProgram, summaries: list[dict[str, Any]], wall: float,
                  devices: int = 1) -> dict[str, Any]:
    """The configurations ranked by the IQM of their final greedy scores over seeds (with
    its 95% stratified-bootstrap interval); a configuration with no scored seed ranks last."""
    rows = []
    for index, summary in enumerate(summaries):
        final = summary["statistics"]["final"]
        iqm = final.get("iqm") or {}
        rows.append({"index": index, "run_dir": program.subdir(index),
                     "values": program.assignments[index],
                     "final_iqm": iqm.get("value"), "final_iqm_ci95": iqm.get("ci95"),
                     "final_mean": (final.get("mean") or {}).get("value"),
                     "seeds_scored": final["seeds"], "final_scores": summary["final_scores"]})
    rows.sort(key=lambda r: (r["final_iqm"] is None, -(r["final_iqm"] or 0.0), r["index"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    base = program.base
    return {"sweep": program.sweep.to_json(), "preset": base.preset,
            "env": program.env.spec.name, "configurations": program.size,
            "seeds": base.seeds, "devices": devices, "steps": base.steps,
            "wall_seconds": round(wall, 2),
            "steps_per_second": round(base.steps * base.seeds * program.size / max(wall, 1e-9), 1),
            "ranking": rows}
