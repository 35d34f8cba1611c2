"""The actor-learners' training loop in XLA for JAX-native envs (Catch, GridWorld, MinAtar).

The synchronous actor-learners (A2C, Wu et al. 2017: the losses of Mnih et al. 2016's
asynchronous agents without Hogwild's stale gradients) as pure, unjitted functions: one
rollout of T steps in the N envs of every seed and one update per seed make an
iteration, a ``lax.scan`` of iterations makes a chunk (``make_native_actor_chunk``), the
seeds vmapped, as ``agents/native.py`` does for the Q agent. Also here: the fixed held-out
rollouts and their value statistics, and the greedy-or-sampled validation play.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxatari.agents.actor_learner import ActorLearner, Actors, Rollout, draw_final_epsilons
from jaxatari.agents.native import (_reset_or_step, make_scored_play, scan_iterations,
                                    to_agent_frame)
from jaxatari.types import TrainState


@struct.dataclass
class NativeActorCarry:
    """Everything one seed carries between iterations of the native loop."""

    train: TrainState
    actors: Actors
    env_state: Any        # [N] env states
    score: jax.Array      # [N] raw game score of the running episodes


def init_native_actor_carry(learner: ActorLearner, env, key, shard=None) -> NativeActorCarry:
    """Initial carry of one seed. ``shard``: one device's share of a data-parallel seed
    (``agents.data_parallel``): the networks and learner key are the seed's, alike on every
    device, while the envs, the acting key and the actors' final epsilons are the
    device's own (drawn from keys folded with ``shard``)."""
    learner_key, env_key = jax.random.split(key)
    train, actors = learner.init(learner_key)
    n = learner.settings.num_actors
    if shard is not None:
        env_key = jax.random.fold_in(env_key, shard)
        act_key, epsilon_key = jax.random.split(jax.random.fold_in(actors.key, shard))
        actors = actors.replace(key=act_key, final_epsilon=draw_final_epsilons(epsilon_key, n))
    env_state, frame = jax.vmap(env.reset)(jax.random.split(env_key, n))
    actors = learner.observe(actors, to_agent_frame(frame, learner.frame_dtype),
                             jnp.ones((n,), bool))
    return NativeActorCarry(train=train, actors=actors, env_state=env_state,
                            score=jnp.zeros((n,), jnp.float32))


def make_native_rollout(learner: ActorLearner, env) -> Callable:
    """rollout(params, actors, env_state, score) -> (actors, env_state, score, Rollout, out):
    T steps of the N envs of one seed (next-step resets, as ``agents/native.py``)."""
    s = learner.settings

    def step(params, state, _):
        actors, env_state, score = state
        stack, valid = actors.stack, ~actors.after_done
        actions, eps, actors = learner.act(params, actors)
        key, env_key = jax.random.split(actors.key)
        env_state, frame, reward, terminated, truncated = _reset_or_step(
            env, env_key, env_state, actions, actors.after_done)
        done = terminated | truncated
        is_first = actors.after_done
        actors = learner.observe(actors.replace(after_done=done, key=key),
                                 to_agent_frame(frame, learner.frame_dtype), is_first)
        score = score + reward
        record = dict(obs=stack, action=actions, reward=reward, terminal=terminated, cut=done,
                      valid=valid, epsilon=eps, scores=score, finished=done)
        return (actors, env_state, jnp.where(done, 0.0, score)), record

    def rollout(params, actors, env_state, score):
        (actors, env_state, score), rec = jax.lax.scan(
            lambda state, x: step(params, state, x), (actors, env_state, score), None,
            length=s.rollout_length)
        batch = Rollout(obs=jnp.concatenate([rec["obs"], actors.stack[None]]),
                        action=rec["action"], reward=rec["reward"], terminal=rec["terminal"],
                        cut=rec["cut"], valid=rec["valid"], epsilon=rec["epsilon"])
        return actors, env_state, score, batch, {"scores": rec["scores"],
                                                 "finished": rec["finished"]}

    return rollout


def make_native_heldout(learner: ActorLearner, env, count: int) -> Callable:
    """(params, actors, env_state, score) -> Rollout [R, ...]: ``count`` rollouts of one
    seed played on from the given state (nothing of a run's own state changes)."""
    rollout = make_native_rollout(learner, env)

    def play(params, actors, env_state, score):
        def one(state, _):
            actors, env_state, score, batch, _ = rollout(params, *state)
            return (actors, env_state, score), batch
        _, batches = jax.lax.scan(one, (actors, env_state, score), None, length=count)
        return batches
    return play


def make_rollout_value_stats(learner: ActorLearner) -> Callable:
    """stats(params, target_params, rollouts [R, ...]) -> (mean V, mean |TD error|) of one
    seed on held-out rollouts: each method's own target, as its loss computes them (the
    original's valMemory statistics; Sarsa's next action drawn with a fixed key)."""

    def stats(params, target_params, rollouts):
        def one(rollout):
            return learner.loss(params, target_params, rollout, jax.random.PRNGKey(0))[1]
        metrics = jax.vmap(one)(rollouts)
        return metrics["q_mean"].mean(), metrics["td_error"].mean()
    return stats


def make_native_actor_chunk(learner: ActorLearner, env, num_iterations: int,
                            target_period: int, actors_per_seed: int | None = None) -> Callable:
    """chunk(carry [S], first_iteration, active=None) -> (carry, outputs), pure and
    unjitted (``active``: as for ``agents.native.make_native_chunk``). ``actors_per_seed``:
    a data-parallel seed's actors on all its devices (the learner's own by default), which
    count its steps for the target syncs.

    An iteration plays one rollout of T steps in the N envs of every seed and makes one
    update per seed; the target sync decision is computed outside the seed vmap from the
    shared iteration counter. Outputs: ``scores``/``finished`` [I, S, T, N] and the
    learner's metrics [I, S].
    """
    s = learner.settings
    steps_per_iteration = s.rollout_length * (actors_per_seed or s.num_actors)
    rollout = make_native_rollout(learner, env)

    def seed_iteration(carry: NativeActorCarry, syncs):
        actors, env_state, score, batch, out = rollout(carry.train.params, carry.actors,
                                                       carry.env_state, carry.score)
        train, metrics = learner.update(carry.train, batch)
        train = jax.lax.cond(syncs, learner.sync_target, lambda t: t, train)
        carry = carry.replace(train=train, actors=actors, env_state=env_state, score=score)
        return carry, {**out, **metrics}

    def chunk(carry: NativeActorCarry, first_iteration, active=None):
        step_all = jax.vmap(seed_iteration, in_axes=(0, None))

        def iteration(carry, index):
            before = (first_iteration + index) * steps_per_iteration
            after = before + steps_per_iteration
            return step_all(carry, after // target_period != before // target_period)

        return scan_iterations(iteration, carry, num_iterations, active)

    return chunk


def make_native_actor_evaluate(learner: ActorLearner, env, *, num_envs: int,
                               num_steps: int, epsilon: float, greedy: bool = False) -> Callable:
    """The actor-learners' validation (``agents.native.make_scored_play``) with
    ``learner.evaluate_policy``: epsilon-greedy (Q methods) or a sample of the policy (A3C;
    its most probable action with ``greedy``)."""

    def init_actor(key):
        del key   # the scan draws every action's key
        return Actors(stack=jnp.zeros((num_envs, *learner.stack_shape), learner.frame_dtype),
                      after_done=jnp.zeros((num_envs,), bool),
                      steps=jnp.zeros((num_envs,), jnp.int32),
                      final_epsilon=jnp.zeros((num_envs,), jnp.float32),
                      key=jax.random.PRNGKey(0))

    def act(params, actors, key):
        return learner.evaluate_policy(params, actors.stack, key, epsilon, greedy), actors

    def observe(actors, frame, is_first, done):
        del done
        return learner.observe(actors, frame, is_first)

    return make_scored_play(env, num_envs=num_envs, num_steps=num_steps,
                            frame_dtype=learner.frame_dtype, init_actor=init_actor, act=act,
                            observe=observe)
