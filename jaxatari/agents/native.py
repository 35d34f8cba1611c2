"""The whole training loop in XLA for JAX-native environments (Catch, GridWorld, MinAtar).

One jitted ``lax.scan`` runs a chunk of iterations; each iteration steps the E envs of
every seed, acts, writes replay and, on the learning cadence, updates. The iteration
counter, epsilon, the update and target-sync decisions are computed OUTSIDE the seed
``vmap`` from the unbatched counter, so ``lax.cond`` on them stays a real branch instead
of a ``select`` that would run the update every step.

The env follows the next-step reset convention (envs/base.py): the step after a done
resets that env and is written to replay as an invalid row, exactly as envpool's
auto-reset, so both execution paths share one replay layout.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxatari.agents.dqn import QAgent
from jaxatari.agents.frames import to_agent_frame
from jaxatari.exploration import linear_epsilon
from jaxatari.replay import ReplayState
from jaxatari.types import ActorState, TrainState


@struct.dataclass
class NativeCarry:
    """Everything one seed carries between iterations."""

    train: TrainState
    replay: ReplayState
    actor: ActorState
    env_state: Any          # [E] env states
    frame: jax.Array        # [E, ...] the current observation (agent dtype)
    is_first: jax.Array     # [E] bool, `frame` starts an episode
    score: jax.Array        # [E] float32, raw game score of the running episode


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Host-shared learning schedule, in agent steps per seed (E steps per iteration)."""

    num_envs: int
    learn_start: int
    update_every: int          # iterations between learning steps
    updates_per_learn: int     # minibatch updates at each learning step
    target_period: int         # steps between target syncs (tau)
    epsilon_start: float
    epsilon_end: float
    epsilon_steps: int
    beta_zero: float           # importance-sampling exponent at learn_start
    total_steps: int

    def epsilon(self, step):
        return linear_epsilon(step, start=self.epsilon_start, end=self.epsilon_end,
                              decay_steps=self.epsilon_steps, learn_start=self.learn_start)

    def beta(self, step):
        """beta annealed linearly from beta_zero to 1 between learn_start and the end."""
        span = max(self.total_steps - self.learn_start, 1)
        progress = jnp.clip((step - self.learn_start) / span, 0.0, 1.0)
        return self.beta_zero + (1.0 - self.beta_zero) * progress

    def learns(self, iteration):
        steps_after = (iteration + 1) * self.num_envs
        return (steps_after >= self.learn_start) & (iteration % self.update_every == 0)

    def syncs(self, iteration):
        steps_before, steps_after = iteration * self.num_envs, (iteration + 1) * self.num_envs
        return ((steps_after >= self.learn_start)
                & (steps_after // self.target_period != steps_before // self.target_period))


def _reset_or_step(env, key, env_state, actions, after_done):
    """Steps every env, except those whose previous step ended an episode: they reset and
    report reward 0, not done (the next-step reset convention)."""
    step_key, reset_key = jax.random.split(key)
    num_envs = actions.shape[0]
    stepped = jax.vmap(env.step)(jax.random.split(step_key, num_envs), env_state, actions)
    stepped_state, stepped_frame, reward, terminated, truncated = stepped
    reset_state, reset_frame = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))

    def choose(reset_value, step_value):
        mask = after_done.reshape(-1, *([1] * (step_value.ndim - 1)))
        return jnp.where(mask, reset_value, step_value)

    env_state = jax.tree.map(choose, reset_state, stepped_state)
    frame = choose(reset_frame, stepped_frame)
    return (env_state, frame, jnp.where(after_done, 0.0, reward),
            terminated & ~after_done, truncated & ~after_done)


def init_native_carry(agent: QAgent, env, key, shard=None) -> NativeCarry:
    """Initial carry of one seed: fresh networks, empty replay, envs just reset.

    ``shard``: one device's share of a data-parallel seed (``agents.data_parallel``): the
    networks and learner key are the seed's (``key``'s), alike on every device, while the
    envs and the acting key are the device's own (``key``'s folded with ``shard``)."""
    agent_key, env_key = jax.random.split(key)
    train, replay_state, actor = agent.init(agent_key)
    if shard is not None:
        env_key = jax.random.fold_in(env_key, shard)
        actor = actor.replace(key=jax.random.fold_in(actor.key, shard))
    num_envs = agent.settings.num_envs
    env_state, frame = jax.vmap(env.reset)(jax.random.split(env_key, num_envs))
    frame = to_agent_frame(frame, actor.stack.dtype)
    is_first = jnp.ones((num_envs,), bool)
    actor = agent.observe(actor, frame, is_first)
    return NativeCarry(train=train, replay=replay_state, actor=actor, env_state=env_state,
                       frame=frame, is_first=is_first, score=jnp.zeros((num_envs,), jnp.float32))


def native_seed_axes(agent: QAgent, carry: NativeCarry) -> NativeCarry:
    """vmap axes of a seed-batched carry: everything on axis 0 but replay's shared counters."""
    axes = jax.tree.map(lambda _: 0, carry.replace(replay=()))
    return axes.replace(replay=agent.replay.seed_axes(carry.replay))


def make_native_chunk(agent: QAgent, env, cadence: Cadence, num_iterations: int) -> Callable:
    """Builds chunk(carry [S], first_iteration, active=None) -> (carry, outputs), pure and
    unjitted.

    Outputs are stacked over the chunk's iterations: ``scores`` [T, S, E] (raw game score
    where ``finished`` [T, S, E] is True), and the learner's ``loss``, ``td_error``,
    ``q_mean`` [T, S] with ``learned`` [T] saying which iterations updated. With ``active``
    (a traced int), only the first ``active`` iterations run and the rest leave the carry as
    it is (zero outputs), so a run's last, shorter chunk reuses the compiled full one.
    """
    num_envs = cadence.num_envs   # a seed's envs (data-parallel: all devices' together)

    def seed_iteration(carry: NativeCarry, epsilon, learns, syncs, beta):
        actions, actor = agent.act(carry.train.params, carry.actor, epsilon)
        key, env_key, mask_key = jax.random.split(actor.key, 3)
        actor = actor.replace(key=key)
        env_state, frame, reward, terminated, truncated = _reset_or_step(
            env, env_key, carry.env_state, actions, actor.after_done)
        frame = to_agent_frame(frame, actor.stack.dtype)
        row = agent.make_row(carry.frame, actions, reward, terminated, carry.is_first,
                             ~actor.after_done, mask_key)
        replay_state = agent.replay.add(carry.replay, row)
        done = terminated | truncated
        score = carry.score + reward
        is_first = actor.after_done
        actor = agent.observe(actor.replace(after_done=done), frame, is_first)

        def run_updates(train, replay_state):
            metrics = {"loss": jnp.float32(0), "td_error": jnp.float32(0),
                       "q_mean": jnp.float32(0)}

            def body(_, state):
                train, replay_state, _ = state
                return agent.update(train, replay_state, beta)

            return jax.lax.fori_loop(0, cadence.updates_per_learn, body,
                                     (train, replay_state, metrics))

        def skip(train, replay_state):
            metrics = {"loss": jnp.float32(0), "td_error": jnp.float32(0),
                       "q_mean": jnp.float32(0)}
            return train, replay_state, metrics

        train, replay_state, metrics = jax.lax.cond(learns, run_updates, skip, carry.train,
                                                    replay_state)
        train = jax.lax.cond(syncs, agent.sync_target, lambda t: t, train)
        new_carry = carry.replace(train=train, replay=replay_state, actor=actor,
                                  env_state=env_state, frame=frame, is_first=is_first,
                                  score=jnp.where(done, 0.0, score))
        return new_carry, {"scores": score, "finished": done, **metrics}

    def chunk(carry: NativeCarry, first_iteration, active=None):
        axes = native_seed_axes(agent, carry)
        step_all = jax.vmap(seed_iteration, in_axes=(axes, None, None, None, None),
                            out_axes=(axes, 0))

        def iteration(carry, index):
            t = first_iteration + index
            steps = t * num_envs
            learns = cadence.learns(t)
            carry, out = step_all(carry, cadence.epsilon(steps), learns, cadence.syncs(t),
                                  cadence.beta(steps))
            return carry, {**out, "learned": learns}

        return scan_iterations(iteration, carry, num_iterations, active)

    return chunk


def scan_iterations(iteration: Callable, carry, num_iterations: int, active=None):
    """``lax.scan`` of ``iteration(carry, index) -> (carry, out)`` over ``num_iterations``
    indices; with ``active`` (traced), indices from ``active`` on leave the carry unchanged
    and give zero outputs, so one compiled chunk serves every shorter one."""
    indices = jnp.arange(num_iterations)
    if active is None:
        return jax.lax.scan(iteration, carry, indices)
    out_shapes = jax.eval_shape(iteration, carry, jnp.int32(0))[1]

    def idle(carry, index):
        return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shapes)

    def masked(carry, index):
        return jax.lax.cond(index < active, iteration, idle, carry, index)

    return jax.lax.scan(masked, carry, indices)


def make_scored_play(env, *, num_envs: int, num_steps: int, frame_dtype, init_actor: Callable,
                     act: Callable, observe: Callable) -> Callable:
    """Builds evaluate(params, key) -> (score_sum, episodes, partial) for one seed, pure: the
    episode-scoring scan of every agent's validation (the agents differ only in how they act).

    Plays ``num_steps`` steps in each of ``num_envs`` fresh envs (next-step resets) and sums
    the raw scores of the episodes that finished; ``partial`` is the mean score of the
    episodes still running at the end (the original reports it when none finished).
    ``init_actor(key)`` gives the acting state with empty frame stacks,
    ``act(params, actor, key) -> (actions [E], actor)`` chooses, and
    ``observe(actor, frame [E, ...], is_first [E], done [E]) -> actor`` pushes a frame.
    """

    def evaluate(params, key):
        env_key, actor_key, play_key = jax.random.split(key, 3)
        env_state, frame = jax.vmap(env.reset)(jax.random.split(env_key, num_envs))
        no = jnp.zeros((num_envs,), bool)
        actor = observe(init_actor(actor_key), to_agent_frame(frame, frame_dtype), ~no, no)

        def step(state, key):
            actor, env_state, after_done, score, total, episodes = state
            act_key, env_key = jax.random.split(key)
            actions, actor = act(params, actor, act_key)
            env_state, frame, reward, terminated, truncated = _reset_or_step(
                env, env_key, env_state, actions, after_done)
            done = terminated | truncated
            score = score + reward
            total = total + jnp.where(done, score, 0.0).sum()
            episodes = episodes + done.sum()
            actor = observe(actor, to_agent_frame(frame, frame_dtype), after_done, done)
            return (actor, env_state, done, jnp.where(done, 0.0, score), total, episodes), None

        initial = (actor, env_state, no, jnp.zeros((num_envs,), jnp.float32), jnp.float32(0),
                   jnp.int32(0))
        (*_, running, total, episodes), _ = jax.lax.scan(
            step, initial, jax.random.split(play_key, num_steps))
        return total, episodes, running.mean()

    return evaluate


def make_native_evaluate(agent: QAgent, env, *, num_envs: int, num_steps: int,
                         epsilon: float) -> Callable:
    """The Q agent's validation (``make_scored_play``): epsilon-greedy at ``epsilon`` (the
    original's 0.001), bootstrap heads voting."""
    vote = agent.settings.num_heads > 1

    def init_actor(key):
        return agent.init_actor(num_envs, key)

    def act(params, actor, key):
        del key   # the actor carries its own
        return agent.act(params, actor, epsilon, vote)

    def observe(actor, frame, is_first, done):
        return agent.observe(actor.replace(after_done=done), frame, is_first)

    return make_scored_play(env, num_envs=num_envs, num_steps=num_steps,
                            frame_dtype=agent.frame_dtype, init_actor=init_actor, act=act,
                            observe=observe)


def init_native_seeds(agent: QAgent, env, keys: jax.Array, shards=None) -> NativeCarry:
    """Initial carry of S seeds from keys [S]: seed axis leading, replay counters shared.
    ``shards`` [S]: each entry one device's share of its key's seed (``init_native_carry``),
    for a data-parallel run's S seeds x D devices."""
    example = jax.eval_shape(lambda k: init_native_carry(agent, env, k), keys[0])
    axes = native_seed_axes(agent, example)
    if shards is None:
        return jax.vmap(lambda k: init_native_carry(agent, env, k), out_axes=axes)(keys)
    return jax.vmap(lambda k, shard: init_native_carry(agent, env, k, shard),
                    out_axes=axes)(keys, shards)
