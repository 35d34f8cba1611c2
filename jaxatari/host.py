"""Training with host environments (envpool, ale-py, gymnasium): one pool for all seeds.

One pool holds ``S * E`` envs; its observations ``[S*E, ...]`` are reshaped to
``[S, E, ...]`` at this boundary and the jitted, seed-vmapped agent functions do the rest.
Per step there is one device-to-host transfer (the actions). Epsilon, the learning
cadence and target syncs are host-side numbers shared by all seeds.
"""
from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.agents.dqn import QAgent
from jaxatari.agents.native import Cadence, to_agent_frame
from jaxatari.config import Config
from jaxatari.metrics import mean_score


def _to_seeds(x: np.ndarray, seeds: int) -> np.ndarray:
    return x.reshape(seeds, -1, *x.shape[1:])


class HostRunner:
    def __init__(self, config: Config, env_factory, agent: QAgent, cadence: Cadence, keys):
        self.config = config
        self.env_factory = env_factory
        self.agent = agent
        self.cadence = cadence
        self.keys = keys
        seeds = config.seeds
        state_example = jax.eval_shape(agent.init, keys[0])
        replay_axes = agent.replay.seed_axes(state_example[1])
        self.replay_axes = replay_axes
        self.init = jax.jit(jax.vmap(agent.init, out_axes=(0, replay_axes, 0)))

        def observe(actor, frame, is_first):
            return agent.observe(actor, to_agent_frame(frame, agent.frame_dtype), is_first)

        def record(replay_state, actor, frame, action, reward, terminated, is_first, valid):
            key, mask_key = jax.random.split(actor.key)
            row = agent.make_row(to_agent_frame(frame, agent.frame_dtype), action, reward,
                                 terminated, is_first, valid, mask_key)
            return agent.replay.add(replay_state, row), actor.replace(key=key)

        def record_observe(replay_state, actor, frame, action, reward, terminated, is_first,
                           valid, after_done, next_frame, next_is_first):
            # One dispatch per env step for both (each jitted call costs ~0.1-0.3 ms of
            # host time on CPU, as much as the work itself).
            replay_state, actor = record(replay_state, actor, frame, action, reward,
                                         terminated, is_first, valid)
            return replay_state, observe(actor.replace(after_done=after_done), next_frame,
                                         next_is_first)

        def learn(train, replay_state, beta):
            # XLA-CPU runs lax.conv several times slower inside a while loop (5x measured
            # for the Nature update), so short runs of updates are unrolled.
            if cadence.updates_per_learn <= 8:
                for _ in range(cadence.updates_per_learn):
                    train, replay_state, metrics = agent.update(train, replay_state, beta)
                return train, replay_state, metrics

            def body(_, state):
                train, replay_state, _ = state
                return agent.update(train, replay_state, beta)
            zero = {"loss": jnp.float32(0), "td_error": jnp.float32(0), "q_mean": jnp.float32(0)}
            return jax.lax.fori_loop(0, cadence.updates_per_learn, body, (train, replay_state, zero))

        self.observe = jax.jit(jax.vmap(observe))
        self.act = jax.jit(jax.vmap(agent.act, in_axes=(0, 0, None, None, None)),
                           static_argnums=(3, 4))
        self.record_observe = jax.jit(
            jax.vmap(record_observe, in_axes=(replay_axes, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                     out_axes=(replay_axes, 0)), donate_argnums=0)
        self.learn = jax.jit(jax.vmap(learn, in_axes=(0, replay_axes, None),
                                      out_axes=(0, replay_axes, 0)), donate_argnums=(0, 1))
        self.sync = jax.jit(jax.vmap(agent.sync_target))
        del seeds

    def evaluate(self, params, step: int, key) -> tuple[np.ndarray, np.ndarray]:
        """Plays --val-steps steps per seed (over --val-envs envs) in evaluation mode."""
        c = self.config
        env = self.env_factory(c.seeds * c.val_envs, c.seed + 7919 + step, mode="eval")
        try:
            actor = jax.vmap(lambda k: self.agent.init_actor(c.val_envs, k))(
                jax.random.split(key, c.seeds))
            frame = _to_seeds(env.reset(), c.seeds)
            actor = self.observe(actor, frame, np.ones((c.seeds, c.val_envs), bool))
            score = np.zeros((c.seeds, c.val_envs))
            total = np.zeros(c.seeds)
            episodes = np.zeros(c.seeds, np.int64)
            after_done = np.zeros((c.seeds, c.val_envs), bool)
            vote = self.agent.settings.num_heads > 1
            for _ in range(max(math.ceil(c.val_steps / c.val_envs), 1)):
                actions, actor = self.act(params, actor, c.val_epsilon, vote, False)
                result = env.step(np.asarray(actions).reshape(-1))
                reward = _to_seeds(result.reward, c.seeds)
                over = _to_seeds(result.game_over, c.seeds)
                done = _to_seeds(result.terminated | result.truncated, c.seeds)
                score += reward
                total += np.where(over, score, 0.0).sum(1)
                episodes += over.sum(1)
                score = np.where(over, 0.0, score)
                is_first = after_done
                after_done = done
                actor = self.observe(actor.replace(after_done=jnp.asarray(done)),
                                     _to_seeds(result.obs, c.seeds), is_first)
            return mean_score(total, episodes, score.mean(1)), episodes
        finally:
            env.close()

    def run(self, logger, trainer, restored=None) -> Any:
        """Trains from step 0 or from ``restored`` (a ``loop.Restored``); ``trainer`` (the
        ``loop.Trainer``) completes evaluations, saves checkpoints and answers Ctrl+C.
        Returns the final train state [S].

        A host env cannot be put back where it was: a resumed run starts new games (envs
        seeded ``--seed + step``), keeps learner, actor keys, counters and (if saved) the
        replay memory, and otherwise waits ``--learn-start`` steps while the memory refills
        (``trainer.cadence`` says when learning may start).
        """
        c = self.config
        seeds, envs = c.seeds, c.envs
        cadence = trainer.cadence
        train, replay_state, actor = self.init(self.keys)
        start = 0
        if restored is not None:
            items = restored.items
            train = items["train"]
            if items["replay"] is not None:
                replay_state = items["replay"]
            actor = items["actor"].replace(after_done=jnp.zeros((seeds, envs), bool))
            start = restored.iteration
        env = self.env_factory(seeds * envs, c.seed + start * envs, mode="train")
        frame = _to_seeds(env.reset(), seeds)
        is_first = np.ones((seeds, envs), bool)
        actor = self.observe(actor, frame, is_first)
        after_done = np.zeros((seeds, envs), bool)
        score = np.zeros((seeds, envs))
        chunk: dict[str, list] = {"scores": [], "finished": [], "loss": [], "td_error": [],
                                  "q_mean": [], "learned": []}
        chunk_started, chunk_steps = time.perf_counter(), 0
        total_iterations = c.steps // envs
        evaluated_at = trainer.evaluations[-1].step if trainer.evaluations else -1

        def items():
            return {"train": train, "actor": actor, "replay": replay_state}

        try:
            for iteration in range(start, total_iterations):
                step = iteration * envs
                if trainer.guard.requested:
                    trainer.handle_interrupt(items, step, iteration)
                if step >= trainer.next_eval and step != evaluated_at:
                    # due but not done (a resumed run stopped just before it)
                    self._evaluate(trainer, train, replay_state, items, step, iteration)
                    evaluated_at = step
                epsilon = float(cadence.epsilon(step))
                # Before learning starts epsilon is 1: the same actions without the network.
                actions, actor = self.act(train.params, actor, epsilon, False, epsilon >= 1.0)
                actions_host = np.asarray(actions)
                result = env.step(actions_host.reshape(-1))
                reward = _to_seeds(result.reward, seeds)
                terminated = _to_seeds(result.terminated, seeds)
                done = terminated | _to_seeds(result.truncated, seeds)
                over = _to_seeds(result.game_over, seeds)
                next_frame = _to_seeds(result.obs, seeds)
                replay_state, actor = self.record_observe(
                    replay_state, actor, frame, actions, reward, terminated, is_first,
                    ~after_done, done, next_frame, after_done)
                score = score + reward
                chunk["scores"].append(score.copy())
                chunk["finished"].append(over)
                score = np.where(over, 0.0, score)
                frame = next_frame
                is_first = after_done
                after_done = done
                learned = bool(cadence.learns(iteration))
                if learned:
                    beta = float(cadence.beta(step))
                    train, replay_state, metrics = self.learn(train, replay_state, beta)
                    for name in ("loss", "td_error", "q_mean"):
                        chunk[name].append(metrics[name])
                else:
                    for name in ("loss", "td_error", "q_mean"):
                        chunk[name].append(np.zeros(seeds, np.float32))
                chunk["learned"].append(learned)
                if bool(cadence.syncs(iteration)):
                    train = self.sync(train)
                chunk_steps += envs
                step_after = step + envs
                if chunk_steps >= c.chunk_steps or iteration + 1 == total_iterations:
                    out = {name: np.stack([np.asarray(v) for v in values])
                           for name, values in chunk.items()}
                    logger.log_chunk(step_after, out, epsilon, time.perf_counter() - chunk_started,
                                     chunk_steps)
                    chunk = {name: [] for name in chunk}
                    chunk_started, chunk_steps = time.perf_counter(), 0
                if step_after >= trainer.next_eval or iteration + 1 == total_iterations:
                    self._evaluate(trainer, train, replay_state, items, step_after, iteration + 1)
                    evaluated_at = step_after
        finally:
            env.close()
        return train

    def _evaluate(self, trainer, train, replay_state, items, step: int, iteration: int) -> None:
        key = trainer.next_eval_key()
        scores, episodes = self.evaluate(train.params, step, key)
        evaluation = trainer.validate(step, scores, episodes, train, replay_state)
        trainer.save_after_eval(evaluation, items(), iteration)
