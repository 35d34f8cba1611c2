"""The actor-learners of Mnih et al. 2016 as pure rollout-and-update functions.

One-step Sarsa, one-step Q, n-step Q and advantage actor-critic (A2C / A3C) learn from a
time-major rollout ``[T, N]`` of N actors (envs) and T steps (the original's t_max,
``--batch-size``). They differ in two choices only, so they share one loss:

* what a step's value estimate ``v_{t+1}`` is: the target network's max (one-step and
  n-step Q; Double Q optional), the target network's Q at an epsilon-greedy action drawn
  FROM THE TARGET NETWORK (Sarsa, as Kaixhin/Atari ``async/SarsaAgent.lua``), or the
  critic's V (actor-critic);
* how far a return runs before it bootstraps: to the end of the rollout (n-step Q,
  actor-critic: every step sees up to t_max rewards, the original's backward loop
  ``R = r_i + gamma R``) or immediately (one-step methods: each step's target is
  ``r + gamma v_{t+1}``, i.e. the n-step rule with n = 1, which is the original's
  gradient accumulation of t_max one-step updates).

Both are ``rlax.lambda_returns`` with a per-step lambda: 1 for n-step methods, 0 for
one-step methods, and 0 wherever an episode ended inside the rollout, so a return never
runs across an episode boundary (a terminal also sets the discount to 0; a time-limit
cut bootstraps from the final observation, Pardo et al. 2018).

Rollout layout (the next-step reset convention of ``envs/base.py``): ``obs[t]`` is the
frame stack the actor acted on at step t and ``obs[T]`` the stack after the last step;
a step right after an episode end is a reset step (its action was ignored) and has
``valid`` False, so it adds nothing to the loss.

Losses are summed over the T steps of a rollout (the original accumulated gradients over
a thread's t_max steps) and averaged over the N actors, so one update has the size of
one original thread's update whatever the number of actors (the A2C convention).

Kaixhin/Atari's other rules kept here: the per-actor final epsilon drawn from
{0.1, 0.01, 0.5} with probabilities {0.4, 0.3, 0.3} and annealed linearly over the
actor's own steps (``async/QAgent.lua``); the learning rate annealed linearly to 0
(``async/AsyncAgent.lua``); RMSProp with shared statistics, decay ``momentum`` and
epsilon ``rms_epsilon`` inside the square root (``modules/sharedRmsProp.lua``); TD errors
clipped to +-``td_clip`` (a Huber loss); rewards clipped to +-``reward_clip``; the
actor-critic value loss with factor 0.5 (the original's gradient -0.5 (R - V)) and an
entropy bonus ``entropy_beta``. Log-probabilities come from ``jax.nn.log_softmax``, which
is finite for any finite logits, where the original added 1e-20 to softmax probabilities
(Kaixhin/Atari issues #21, #50, #67: NaNs from log 0). Ours: the policy-logit layer
starts 100 times smaller (``policy_init_scale``), so every state starts from a
near-uniform policy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
import rlax
from flax import struct

from jaxatari import exploration
from jaxatari.agents.data_parallel import (batch_devices, batch_sum, own_slice,
                                           whole_batch)
from jaxatari.agents.frames import push_frame
from jaxatari.agents.optimiser import apply_gradients, make_optimiser
from jaxatari.losses import action_value, bootstrap_value, huber
from jaxatari.networks import ActorCriticNetwork, QNetwork, make_body
from jaxatari.types import TrainState, switched_off

Params = Any                   # a network's parameter pytree
Metrics = dict[str, jax.Array]

METHODS = ("sarsa", "onestep", "nstep", "a3c")
Q_METHODS = ("sarsa", "onestep", "nstep")

# Mnih et al. 2016 (supplementary, section 8): each actor's final epsilon is sampled
# from {0.1, 0.01, 0.5} with probabilities {0.4, 0.3, 0.3} (Kaixhin/Atari async/QAgent.lua).
FINAL_EPSILONS = (0.1, 0.01, 0.5)
FINAL_EPSILON_PROBS = (0.4, 0.3, 0.3)


@dataclasses.dataclass(frozen=True)
class ActorLearnerSettings:
    """Static choices of an actor-learner; ``make_actor_learner`` closes over them."""

    method: str                    # sarsa | onestep | nstep | a3c
    num_actions: int
    obs_shape: tuple[int, ...]     # one frame, channels last (or a vector)
    obs_dtype: str = "uint8"       # "uint8" or "float32": what the stacks hold
    num_actors: int = 1            # N: actors (envs) whose acting state one seed keeps
    rollout_length: int = 5        # T: the original's t_max (--batch-size)
    hist_len: int = 4
    body: str = "atari2013"
    mlp_features: tuple[int, ...] = (64,)
    hidden_size: int = 256
    dueling: bool = False          # Q methods only
    double_q: bool = False         # Q methods only
    gamma: float = 0.99
    reward_clip: float = 1.0
    td_clip: float = 1.0           # Q methods: Huber threshold (0 = squared error)
    entropy_beta: float = 0.01     # actor-critic only
    value_factor: float = 0.5      # actor-critic only
    epsilon_start: float = 1.0
    epsilon_steps: int = 4_000_000  # per actor (the original counted each thread's steps)
    optimiser: str = "rmsprop"
    learning_rate: float = 7e-4
    momentum: float = 0.99         # RMSProp decay
    rms_epsilon: float = 0.1
    grad_clip: float = 0.0
    total_updates: int = 0         # the learning rate reaches 0 after this many (0 = constant)
    policy_init_scale: float = 0.01  # actor-critic: initial policy-logit weights scaled by this

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown actor-learner {self.method!r}; choose one of "
                             f"{', '.join(METHODS)}")

    @property
    def multi_step(self) -> bool:
        return self.method in ("nstep", "a3c")


@struct.dataclass
class Actors:
    """Acting state of the N actors of one seed."""

    stack: jax.Array          # [N, ...stack] the current frame stacks
    after_done: jax.Array     # [N] bool, the next step is a reset step
    steps: jax.Array          # [N] int32, steps each actor has taken (its epsilon schedule)
    final_epsilon: jax.Array  # [N] float32, drawn once per actor
    key: jax.Array


@struct.dataclass
class Rollout:
    """T steps of N actors, time-major. Built by the loops, consumed by ``update``."""

    obs: jax.Array        # [T+1, N, ...stack] stacks acted on, then the stack after step T-1
    action: jax.Array     # [T, N] int32
    reward: jax.Array     # [T, N] float32, raw (clipped inside the loss)
    terminal: jax.Array   # [T, N] bool, the episode terminated: discount 0
    cut: jax.Array        # [T, N] bool, an episode ended here (terminal or time limit)
    valid: jax.Array      # [T, N] bool, False for reset steps and padding
    epsilon: jax.Array    # [T, N] float32, the actor's epsilon (Sarsa's next action)


def draw_final_epsilons(key: jax.Array, num: int) -> jax.Array:
    """[num] final epsilons, each from {0.1, 0.01, 0.5} w.p. {0.4, 0.3, 0.3}."""
    choice = jax.random.choice(key, len(FINAL_EPSILONS), (num,),
                               p=jnp.asarray(FINAL_EPSILON_PROBS))
    return jnp.asarray(FINAL_EPSILONS, jnp.float32)[choice]


def actor_epsilon(steps, final_epsilon, *, start: float, decay_steps: int):
    """Each actor's epsilon: linear from ``start`` to its final value over ``decay_steps``
    of its own steps, then constant (the original's ``max(start + step * grad, end)``)."""
    # a traced decay_steps (a sweep's) takes jnp.maximum; Python's max keeps a run's numbers
    at_least_one = jnp.maximum if isinstance(decay_steps, jax.Array) else max
    progress = jnp.clip(jnp.asarray(steps, jnp.float32) / at_least_one(decay_steps, 1), 0.0, 1.0)
    return start + (final_epsilon - start) * progress


def rollout_returns(r_t, discount_t, v_t, cut_t, *, multi_step: bool):
    """Returns G_t of one actor's rollout [T], computed backward (``rlax.lambda_returns``).

    ``v_t`` [T] is the value estimate of the state after step t. Where ``cut_t`` (an
    episode ended at t) or for one-step methods, G_t = r_t + discount_t v_t; otherwise
    G_t = r_t + discount_t G_{t+1}, and the last step bootstraps from v_{T-1}:
    G_t = lambda-return with lambda_t = multi_step * (1 - cut_t).
    """
    lambda_t = (1.0 - cut_t.astype(jnp.float32)) if multi_step else jnp.zeros_like(r_t)
    return rlax.lambda_returns(r_t, discount_t, v_t, lambda_t)


def scale_policy_head(params, num_actions: int, scale: float):
    """Multiplies the initial weights of ``ActorCriticNetwork``'s policy-logit layer by
    ``scale``, so every state starts from a near-uniform policy (Andrychowicz et al. 2021,
    "What matters in on-policy RL", recommend 0.01). The original used Torch's default
    initialisation; with it, an initial policy's small per-state preferences steer a random
    walk away from GridWorld's goal for good on some seeds (see the demo-grid preset).

    The network's top-level Dense layers are, in order, hidden, policy logits and value
    (networks.ActorCriticNetwork); the logits layer is recognised by its shape.
    """
    if scale == 1.0:
        return params
    layer = params["params"].get("Dense_1")
    if layer is None or layer["kernel"].shape[-1] != num_actions:
        raise ValueError("cannot find the actor-critic network's policy layer (Dense_1 with "
                         f"{num_actions} outputs) to scale its initial weights")
    inner = dict(params["params"])
    inner["Dense_1"] = {**layer, "kernel": layer["kernel"] * scale}
    return {**params, "params": inner}


@dataclasses.dataclass(frozen=True)
class ActorLearner:
    """Pure functions of one seed; see ``make_actor_learner``."""

    settings: ActorLearnerSettings
    network: object
    stack_shape: tuple[int, ...]
    frame_dtype: jnp.dtype
    init: Callable[[jax.Array], tuple[TrainState, Actors]]   # (key)
    # (actors, frame [N, ...], is_first [N]) -> actors
    observe: Callable[[Actors, jax.Array, jax.Array], Actors]
    epsilon: Callable[[Actors], jax.Array]   # [N] current epsilons
    # (params, stacks [B, ...], epsilon [B], key) -> actions [B]
    policy: Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]
    # (params, actors) -> (actions [N], epsilon [N], actors)
    act: Callable[[Params, Actors], tuple[jax.Array, jax.Array, Actors]]
    # (params, stacks [B, ...], key, epsilon, greedy) -> actions [B]
    evaluate_policy: Callable[..., jax.Array]
    # (params, target_params, rollout, key) -> (loss, metrics)
    loss: Callable[[Params, Params, Rollout, jax.Array], tuple[jax.Array, Metrics]]
    update: Callable[[TrainState, Rollout], tuple[TrainState, Metrics]]
    sync_target: Callable[[TrainState], TrainState]
    learning_rate: Callable[[jax.Array], jax.Array]   # (update count) -> learning rate


def make_actor_learner(s: ActorLearnerSettings, activation=jax.nn.relu, *,
                       batch_axis: str | None = None) -> ActorLearner:
    """The learner of ``s``. ``batch_axis``: the data-parallel learner's
    (``agents.data_parallel``, run inside ``shard_map``): ``s.num_actors`` is then ONE
    device's share of the actors, a rollout holds that device's actors, and the gradient
    and the reported means are those of every device's actors together (one ``psum``);
    None is the one-device learner."""
    body = make_body(s.body, activation=activation, mlp_features=s.mlp_features)
    is_q = s.method in Q_METHODS
    if is_q:
        network = QNetwork(body=body, num_actions=s.num_actions, hidden_size=s.hidden_size,
                           num_heads=1, dueling=s.dueling, activation=activation)
    else:
        network = ActorCriticNetwork(body=body, num_actions=s.num_actions,
                                     hidden_size=s.hidden_size, activation=activation)
    if s.total_updates > 0:   # Kaixhin/Atari async/AsyncAgent.lua applyGradients
        learning_rate = optax.linear_schedule(s.learning_rate, 0.0, s.total_updates)
    else:
        learning_rate = optax.constant_schedule(s.learning_rate)
    optimiser = make_optimiser(s.optimiser, learning_rate=learning_rate, momentum=s.momentum,
                               grad_clip=s.grad_clip, rms_epsilon=s.rms_epsilon)
    frame_dtype = jnp.uint8 if s.obs_dtype == "uint8" else jnp.float32
    channels = s.obs_shape[-1]
    stack_shape = (*s.obs_shape[:-1], channels * s.hist_len)

    def q_values(params, stacks):          # [B, ...] -> [B, A]
        return network.apply(params, stacks)[:, 0]

    def init(key):
        net_key, learn_key, eps_key, act_key = jax.random.split(key, 4)
        params = network.init(net_key, jnp.zeros((1, *stack_shape), frame_dtype))
        if not is_q:
            params = scale_policy_head(params, s.num_actions, s.policy_init_scale)
        # Own buffers for the target (aliasing breaks donation); A3C has no target network.
        target = jax.tree.map(jnp.copy, params) if is_q else {}
        train = TrainState(params=params, target_params=target,
                           opt_state=optimiser.init(params), key=learn_key)
        n = s.num_actors
        actors = Actors(stack=jnp.zeros((n, *stack_shape), frame_dtype),
                        after_done=jnp.zeros((n,), bool), steps=jnp.zeros((n,), jnp.int32),
                        final_epsilon=draw_final_epsilons(eps_key, n), key=act_key)
        return train, actors

    def observe(actors: Actors, frame, is_first):
        """Pushes the newest frame; a new episode starts from an empty stack."""
        return actors.replace(stack=push_frame(actors.stack, frame, is_first))

    def epsilon(actors: Actors):
        return actor_epsilon(actors.steps, actors.final_epsilon, start=s.epsilon_start,
                             decay_steps=s.epsilon_steps)

    def policy(params, stacks, eps, key):
        """The behaviour policy: epsilon-greedy (Q methods) or a sample of pi (A3C)."""
        if is_q:
            return exploration.epsilon_greedy(key, q_values(params, stacks), eps)
        logits, _ = network.apply(params, stacks)
        return jax.random.categorical(key, logits).astype(jnp.int32)

    def act(params, actors: Actors):
        key, act_key = jax.random.split(actors.key)
        eps = epsilon(actors)
        actions = policy(params, actors.stack, eps, act_key)
        return actions, eps, actors.replace(steps=actors.steps + 1, key=key)

    def evaluate_policy(params, stacks, key, eps, greedy: bool = False):
        """Evaluation: epsilon-greedy at ``eps`` (Q methods; the original's 0.001) or a
        sample of the policy (A3C, as the original's validation agent); ``greedy`` makes
        A3C take the most probable action instead (random ties)."""
        if greedy and not is_q:
            logits, _ = network.apply(params, stacks)
            return exploration.greedy_with_random_ties(key, logits).astype(jnp.int32)
        return policy(params, stacks, jnp.full(stacks.shape[:1], eps, jnp.float32), key)

    def loss(params, target_params, rollout: Rollout, key):
        num_steps, num_actors = rollout.action.shape
        all_actors = num_actors * batch_devices(batch_axis)   # data-parallel: every device's
        obs = rollout.obs.reshape(-1, *stack_shape)              # [(T+1) N, ...]
        reward = rollout.reward.astype(jnp.float32)
        if not switched_off(s.reward_clip):
            reward = jnp.clip(reward, -s.reward_clip, s.reward_clip)
        discount = s.gamma * (1.0 - rollout.terminal.astype(jnp.float32))
        valid = rollout.valid.astype(jnp.float32)
        returns = jax.vmap(lambda r, d, v, c: rollout_returns(r, d, v, c,
                                                               multi_step=s.multi_step),
                           in_axes=1, out_axes=1)
        if not is_q:
            logits, values = network.apply(params, obs)
            logits = logits.reshape(num_steps + 1, num_actors, -1)[:-1]   # [T, N, A]
            values = values.reshape(num_steps + 1, num_actors)            # [T+1, N]
            g = jax.lax.stop_gradient(returns(reward, discount, values[1:], rollout.cut))
            advantage = g - values[:-1]
            log_pi = jax.nn.log_softmax(logits)                           # finite always
            log_pi_a = jnp.take_along_axis(log_pi, rollout.action[..., None], -1)[..., 0]
            entropy = -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1)
            policy_loss = -log_pi_a * jax.lax.stop_gradient(advantage)
            value_loss = 0.5 * jnp.square(advantage)
            per_step = policy_loss + s.value_factor * value_loss - s.entropy_beta * entropy
            metrics = {"td_error": jnp.abs(advantage), "q_mean": values[:-1],
                       "entropy": entropy}
        else:
            needs_online_next = s.double_q
            online = q_values(params, obs if needs_online_next else obs[:-num_actors])
            online = online.reshape(-1, num_actors, s.num_actions)
            q_tm1 = online[:num_steps]                                    # [T, N, A]
            q_next = q_values(target_params, obs[num_actors:]).reshape(
                num_steps, num_actors, s.num_actions)                      # target at s_{t+1}
            if s.method == "sarsa":
                # Kaixhin/Atari SarsaAgent: a' = eGreedy(s', targetNet), Q(s', a') from it.
                # Data-parallel: drawn for every device's actors with the one key, each
                # device keeping its own, so the draws are the one-device learner's.
                q_all = whole_batch(q_next, batch_axis, 1)                 # [T, all N, A]
                a_next = exploration.epsilon_greedy(
                    key, q_all.reshape(-1, s.num_actions),
                    whole_batch(rollout.epsilon, batch_axis, 1).reshape(-1)
                ).reshape(q_all.shape[:2])
                a_next = own_slice(a_next, num_actors, batch_axis, 1)
                v_next = action_value(q_next, a_next)
            else:   # Double Q (van Hasselt et al. 2016): the online network picks a'
                select = jax.lax.stop_gradient(online[1:]) if s.double_q else q_next
                v_next = bootstrap_value(q_next, select)
            g = jax.lax.stop_gradient(returns(reward, discount, v_next, rollout.cut))
            q_a = action_value(q_tm1, rollout.action)
            td = g - q_a
            per_step = huber(td, s.td_clip)
            metrics = {"td_error": jnp.abs(td), "q_mean": q_tm1.max(-1)}
        # this device's share of the objective of every device's actors (all of them on one)
        total = jnp.sum(per_step * valid) / all_actors
        count = jnp.maximum(batch_sum(valid.sum(), batch_axis), 1.0)
        metrics = {name: batch_sum(jnp.sum(value * valid), batch_axis) / count
                   for name, value in metrics.items()}
        return total, {"loss": batch_sum(total, batch_axis), **metrics}

    def update(train: TrainState, rollout: Rollout):
        key, loss_key = jax.random.split(train.key)
        grads, metrics = jax.grad(loss, has_aux=True)(train.params, train.target_params,
                                                       rollout, loss_key)
        grads = batch_sum(grads, batch_axis)   # data-parallel: every device's share added
        return apply_gradients(optimiser, train, grads).replace(key=key), metrics

    def sync_target(train: TrainState) -> TrainState:
        if not is_q:
            return train
        return train.replace(target_params=jax.tree.map(jnp.copy, train.params))

    return ActorLearner(settings=s, network=network, stack_shape=stack_shape,
                        frame_dtype=frame_dtype, init=init, observe=observe, epsilon=epsilon,
                        policy=policy, act=act, evaluate_policy=evaluate_policy, loss=loss,
                        update=update, sync_target=sync_target, learning_rate=learning_rate)

