"""The stateful outer loop: builds the agent, runs training chunks, evaluates, logs.

Everything numerical happens in the jitted pure functions of ``jaxatari.agents``; this
module only moves data between them and the outside world (envs on the host, files,
the progress bar). ``jax.jit(jax.vmap(...))`` is applied here, once, seed axis leading.
"""
from __future__ import annotations

import dataclasses
import math
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.agents.dqn import QAgent, QAgentSettings, make_q_agent
from jaxatari.agents.native import (Cadence, init_native_seeds, make_native_chunk,
                                    make_native_evaluate)
from jaxatari.config import Config, config_json, resolved_loss
from jaxatari.envs import EnvSpec, JaxEnv, make_env
from jaxatari.metrics import Evaluation, RunLogger, mean_score

PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "rlax", "gymnasium", "ale-py", "envpool",
            "gymnax", "numpy")


def agent_settings(config: Config, spec: EnvSpec) -> QAgentSettings:
    """Translates the flat options into the Q agent's static choices."""
    uint8 = spec.obs_dtype == "uint8" or config.discretise_mem
    return QAgentSettings(
        num_actions=spec.num_actions, obs_shape=tuple(spec.obs_shape),
        obs_dtype="uint8" if uint8 else "float32", hist_len=config.hist_len,
        body=config.model_body, mlp_features=(config.mlp_hidden,),
        hidden_size=config.hidden_size, dueling=config.duel,
        num_heads=max(config.bootstraps, 1), bootstrap_prob=config.bootstrap_prob,
        loss=resolved_loss(config), double_q=config.double_q, pal_alpha=config.pal_alpha,
        td_clip=config.td_clip, reward_clip=config.reward_clip, gamma=config.gamma,
        n_step=config.n_step,
        replay="uniform" if config.mem_priority == "none" else config.mem_priority,
        capacity=config.mem_size, num_envs=config.envs, alpha=config.alpha,
        batch_size=config.batch_size, optimiser=config.optimiser, learning_rate=config.eta,
        momentum=config.momentum, grad_clip=config.grad_clip)


def cadence_of(config: Config) -> Cadence:
    envs, freq = config.envs, config.mem_sample_freq
    return Cadence(num_envs=envs, learn_start=config.learn_start,
                   update_every=max(freq // envs, 1),
                   updates_per_learn=max(envs // freq, 1) * config.mem_n_samples,
                   target_period=config.tau, epsilon_start=config.epsilon_start,
                   epsilon_end=config.epsilon_end, epsilon_steps=config.epsilon_steps,
                   beta_zero=config.beta_zero if config.mem_priority != "none" else 0.0,
                   total_steps=config.steps)


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
            "platform": platform.platform(), "devices": [str(d) for d in jax.devices()]}


def default_run_dir(config: Config) -> Path:
    env = config.game if config.env == "atari" else config.env.replace(":", "_").replace("/", "_")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.preset or 'run'}-{env}-{stamp}"


class Trainer:
    """Runs one configuration end to end; the public entry is ``train(config)``."""

    def __init__(self, config: Config, run_dir: Path, quiet: bool = False):
        self.config = config
        self.run_dir = run_dir
        self.quiet = quiet
        self.env = make_env(config)
        self.spec: EnvSpec = self.env.spec
        self.cadence = cadence_of(config)
        if config.async_method == "none":
            self.agent: QAgent = make_q_agent(agent_settings(config, self.spec))
        else:   # refuse bad actor-learner settings before the run directory exists
            from jaxatari.actor_loop import check_actor_learner
            check_actor_learner(config, self.spec)
        self.keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)

    # ---------------------------------------------------------------- evaluation
    def _eval_steps_per_env(self) -> int:
        return max(math.ceil(self.config.val_steps / self.config.val_envs), 1)

    # ---------------------------------------------------------------- JAX-native path
    def _run_native(self, logger: RunLogger) -> tuple[list[Evaluation], Any]:
        c = self.config
        env: JaxEnv = self.env
        iterations_per_chunk = max(min(c.chunk_steps, c.steps) // c.envs, 1)
        total_iterations = c.steps // c.envs
        chunk = jax.jit(make_native_chunk(self.agent, env, self.cadence, iterations_per_chunk),
                        donate_argnums=0)
        evaluate = jax.jit(jax.vmap(make_native_evaluate(
            self.agent, env, num_envs=c.val_envs, num_steps=self._eval_steps_per_env(),
            epsilon=c.val_epsilon)))
        carry = init_native_seeds(self.agent, env, self.keys)
        eval_key = jax.random.PRNGKey(c.seed + 10_007)
        evaluations: list[Evaluation] = []
        next_eval = c.val_freq
        iteration = 0
        while iteration < total_iterations:
            run = min(iterations_per_chunk, total_iterations - iteration)
            if run != iterations_per_chunk:   # the last, shorter chunk compiles once more
                chunk = jax.jit(make_native_chunk(self.agent, env, self.cadence, run),
                                donate_argnums=0)
            started = time.perf_counter()
            carry, out = chunk(carry, jnp.int32(iteration))
            out = jax.device_get(out)
            iteration += run
            step = iteration * c.envs
            logger.log_chunk(step, out, self.cadence.epsilon(step), time.perf_counter() - started,
                             run * c.envs)
            if step >= next_eval or iteration >= total_iterations:
                eval_key, key = jax.random.split(eval_key)
                total, episodes, partial = jax.device_get(
                    evaluate(carry.train.params, jax.random.split(key, c.seeds)))
                evaluation = Evaluation(step, mean_score(total, episodes, partial),
                                        np.asarray(episodes))
                evaluations.append(evaluation)
                logger.log_eval(step, evaluation.scores, evaluation.episodes)
                next_eval = (step // c.val_freq + 1) * c.val_freq
        return evaluations, carry

    # ---------------------------------------------------------------- host-env path
    def _run_host(self, logger: RunLogger) -> tuple[list[Evaluation], Any]:
        from jaxatari.host import HostRunner
        runner = HostRunner(self.config, self.env, self.agent, self.cadence, self.keys)
        return runner.run(logger)

    def run(self) -> dict[str, Any]:
        c = self.config
        started = time.time()
        with RunLogger(self.run_dir, c, quiet=self.quiet) as logger:
            if c.async_method != "none":
                from jaxatari.actor_loop import run_actor_learner
                evaluations = run_actor_learner(c, self.env, self.keys, logger)
            elif isinstance(self.env, JaxEnv):
                evaluations, _ = self._run_native(logger)
            else:
                evaluations, _ = self._run_host(logger)
            wall = time.time() - started
            scores = np.stack([e.scores for e in evaluations])  # [V, S]
            summary = {
                "preset": c.preset, "env": self.spec.name, "protocol": self.spec.protocol,
                "seeds": c.seeds, "steps": c.steps,
                "final_scores": [float(x) for x in scores[-1]],
                "best_scores": [float(x) for x in scores.max(axis=0)],
                "eval_steps": [e.step for e in evaluations],
                "wall_seconds": round(wall, 2),
                "steps_per_second": round(c.steps * c.seeds / max(wall, 1e-9), 1),
                "steps_per_second_per_seed": round(c.steps / max(wall, 1e-9), 1),
            }
            logger.finish(summary)
        return summary


def train(config: Config, run_dir: Path | None = None, quiet: bool = False) -> tuple[Path, dict]:
    """Builds everything that can fail on bad input BEFORE creating the run directory, so
    a failed start never leaves a directory that looks like a run."""
    run_dir = Path(run_dir or config.run_dir or default_run_dir(config))
    trainer = Trainer(config, run_dir, quiet=quiet)
    if run_dir.exists() and (run_dir / "summary.json").exists():
        raise FileExistsError(f"run directory {run_dir} already holds a finished run; "
                              "choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    agent = getattr(trainer, "agent", None)
    record = {"env_spec": dataclasses.asdict(trainer.spec),
              "agent": dataclasses.asdict(agent.settings) if agent else None,
              "environment": environment_record()}
    (run_dir / "config.json").write_text(config_json(config, record))
    try:
        summary = trainer.run()
    except BaseException:
        (run_dir / "INCOMPLETE").write_text("this run did not finish; see its log\n")
        raise
    return run_dir, summary
