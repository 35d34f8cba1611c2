"""Exploration: epsilon schedules, epsilon-greedy acting, bootstrap heads and voting."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def linear_epsilon(step, *, start: float, end: float, decay_steps: int, learn_start: int):
    """The original's schedule: ``start`` until ``learn_start``, then linear to ``end`` over
    ``decay_steps`` steps (Mnih et al. 2015). Works on Python numbers and JAX arrays."""
    # a traced decay_steps (a sweep's) takes jnp.maximum; Python's max keeps a single
    # run's numbers as they were
    at_least_one = jnp.maximum if isinstance(decay_steps, jax.Array) else max
    progress = (step - learn_start) / at_least_one(decay_steps, 1)
    progress = jnp.clip(progress, 0.0, 1.0) if isinstance(progress, jax.Array) else min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress


def greedy_with_random_ties(key: jax.Array, q: jax.Array) -> jax.Array:
    """argmax over the last axis, ties broken uniformly at random (as the original)."""
    is_max = q >= q.max(axis=-1, keepdims=True)
    noise = jax.random.uniform(key, q.shape)
    return jnp.argmax(jnp.where(is_max, noise, -1.0), axis=-1)


def epsilon_greedy(key: jax.Array, q: jax.Array, epsilon) -> jax.Array:
    """q: [B, A] -> actions [B] int32."""
    tie_key, explore_key, random_key = jax.random.split(key, 3)
    greedy = greedy_with_random_ties(tie_key, q)
    random_action = jax.random.randint(random_key, greedy.shape, 0, q.shape[-1])
    explore = jax.random.uniform(explore_key, greedy.shape) < epsilon
    return jnp.where(explore, random_action, greedy).astype(jnp.int32)


def select_head(q: jax.Array, head: jax.Array) -> jax.Array:
    """q: [B, K, A], head: [B] -> the acting head's Q-values [B, A]."""
    return jnp.take_along_axis(q, head[:, None, None], axis=1)[:, 0]


def majority_vote(key: jax.Array, q: jax.Array) -> jax.Array:
    """Bootstrapped DQN evaluation (Osband et al. 2016): each head votes for its greedy
    action; the most voted action wins, ties broken at random. q: [B, K, A] -> [B, A]
    vote counts, usable as Q-values by ``epsilon_greedy``."""
    votes = jax.nn.one_hot(jnp.argmax(q, axis=-1), q.shape[-1])     # [B, K, A]
    counts = votes.sum(axis=1)
    return counts + 1e-3 * jax.random.uniform(key, counts.shape)
