"""A hyperparameter sweep of the Q agent on a JAX-native env, all configurations in one
compiled program (``--sweep``, docs/sweeps.md).

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
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari import human_scores
from jaxatari.agents.dqn import make_q_agent
from jaxatari.agents.native import (NativeCarry, init_native_seeds, make_native_chunk,
                                    make_native_evaluate)
from jaxatari.agents.sweep import SweptValues, over_configurations, swept_values, with_values
from jaxatari.config import Config, ConfigError, Sweep, config_json, label
from jaxatari.envs import JaxEnv, make_env
from jaxatari.loops.session import SessionBase, eval_steps_per_env, run_native_chunks, run_summary
from jaxatari.loops.settings import agent_settings, cadence_of, chunk_iterations
from jaxatari.metrics import ChunkStats, Evaluation, RunLogger, mean_score
from jaxatari.networks import body_misfit
from jaxatari.xla_options import edge_jit


@dataclasses.dataclass(frozen=True)
class SweepProgram:
    """A sweep built and ready to run: its configurations, their traced values [C] and the
    jitted functions over configurations x seeds."""

    base: Config
    sweep: Sweep
    configs: list[Config]
    assignments: list[dict[str, Any]]
    env: JaxEnv
    values: SweptValues
    init: Callable        # (values, keys [S]) -> carry [C, S]
    chunk: Callable       # (carry, values, first_iteration, active) -> (carry, out [T, C, ...])
    evaluate: Callable    # (params [C, S], values, keys [S]) -> (total, episodes, partial) [C, S]
    iterations_per_chunk: int

    @property
    def size(self) -> int:
        return len(self.configs)

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
    settings = [agent_settings(c, spec, native=True) for c in configs]
    cadences = [cadence_of(c) for c in configs]
    values = {**swept_values(settings), **swept_values(cadences)}

    def agent_of(v: SweptValues):
        """One configuration's agent and cadence, its swept fields traced."""
        return make_q_agent(with_values(settings[0], v)), with_values(cadences[0], v)

    over = lambda fn: over_configurations(fn, sweep.mode)   # noqa: E731
    length = chunk_iterations(base, base.envs)

    def init(values: SweptValues, keys) -> NativeCarry:
        return over(lambda v: init_native_seeds(agent_of(v)[0], env, keys))(values)

    def chunk(carry: NativeCarry, values: SweptValues, first_iteration, active):
        def one(carry_c, v):
            agent, cadence = agent_of(v)
            return make_native_chunk(agent, env, cadence, length)(carry_c, first_iteration,
                                                                  active)
        carry, out = over(one)(carry, values)
        return carry, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)   # [T, C, ...]

    eval_env = env.for_mode("eval")

    def evaluate(params, values: SweptValues, keys):
        def one(params_c, v):
            play = make_native_evaluate(agent_of(v)[0], eval_env, num_envs=base.val_envs,
                                        num_steps=eval_steps_per_env(base),
                                        epsilon=base.val_epsilon)
            return jax.vmap(play)(params_c, keys)
        return over(one)(params, values)

    return SweepProgram(base=base, sweep=sweep, configs=configs,
                        assignments=sweep.assignments(), env=env, values=values,
                        init=edge_jit(init), chunk=edge_jit(chunk, donate_argnums=0),
                        evaluate=edge_jit(evaluate), iterations_per_chunk=length)


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
            print(f"step {step:,}: mean greedy score over seeds  {means}", flush=True)
        return evaluation


def run_sweep(program: SweepProgram, run_dir: Path, *, quiet: bool) -> dict[str, Any]:
    """Trains every configuration x seed in one program; writes each configuration's run
    directory and returns the sweep's summary (configurations ranked)."""
    base = program.base
    started = time.time()
    keys = jax.random.split(jax.random.PRNGKey(base.seed), base.seeds)
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
        cadences = [cadence_of(c) for c in program.configs]

        def evaluate(carry: NativeCarry, key):
            total, episodes, partial = jax.device_get(program.evaluate(
                carry.train.params, program.values, jax.random.split(key, base.seeds)))
            return mean_score(total, episodes, partial), episodes, None, None

        def log_chunk(step: int, carry, out, run: int, seconds: float):
            for index, logger in enumerate(loggers):
                stats = ChunkStats.of({name: value[:, index] for name, value in out.items()})
                logger.log_chunk(step, stats, cadences[index].epsilon(step), seconds,
                                 run * base.envs)

        run_native_chunks(session, carry=carry, iteration=0,
                          total_iterations=base.steps // base.envs,
                          iterations_per_chunk=program.iterations_per_chunk,
                          steps_per_iteration=base.envs,
                          chunk=lambda carry, first, active: program.chunk(
                              carry, program.values, first, active),
                          evaluate=evaluate, items=lambda carry: carry, log_chunk=log_chunk)
        wall = time.time() - started
        summaries = []
        for index, (config, logger) in enumerate(zip(program.configs, loggers)):
            summary = run_summary(config, program.env.spec, session.per_config[index],
                                  wall_seconds=wall, trained_steps=config.steps)
            summary["sweep"] = {"index": index, "values": program.assignments[index]}
            logger.finish(summary)
            summaries.append(summary)
    return sweep_summary(program, summaries, wall)


def sweep_summary(program: SweepProgram, summaries: list[dict[str, Any]],
                  wall: float) -> dict[str, Any]:
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
            "seeds": base.seeds, "steps": base.steps, "wall_seconds": round(wall, 2),
            "steps_per_second": round(base.steps * base.seeds * program.size / max(wall, 1e-9), 1),
            "ranking": rows}
