"""The DQN family as one agent: a choice of parts, not a file per variant.

DQN (Mnih et al. 2015), Double DQN (van Hasselt et al. 2016), dueling heads (Wang et al.
2016), prioritised replay (Schaul et al. 2016), (persistent) advantage learning
(Bellemare et al. 2016) and Bootstrapped DQN (Osband et al. 2016) differ only in the
registry key of the TD error, ``double_q``, ``dueling``, the replay kind and the number
of heads. Recurrent DQN (Hausknecht and Stone 2015) is one more flag: ``recurrent`` swaps
the fully connected layer for an LSTM, replay for windows of ``hist_len`` steps and the
loss for its sequence form; acting, the learning cadence and everything around stay.
``make_q_agent`` turns those choices into pure, unjitted functions; the caller applies
``jax.jit(jax.vmap(...))`` once, seed axis leading.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxatari import exploration
from jaxatari.agents.data_parallel import batch_max, batch_sum, own_key
from jaxatari.agents.frames import push_frame
from jaxatari.agents.optimiser import apply_gradients, make_optimiser
from jaxatari.losses import make_q_loss, make_sequence_q_loss, resolve_td_error
from jaxatari.networks import QNetwork, RecurrentQNetwork, make_body, zero_lstm_carry
from jaxatari.replay import Replay, ReplayState, make_replay
from jaxatari.replay.storage import Row
from jaxatari.types import ActorState, TrainState, switched_off

Params = Any                   # a network's parameter pytree
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class QAgentSettings:
    """Static choices of the Q agent; the builder reads them, pure functions close over them."""

    num_actions: int
    obs_shape: tuple[int, ...]     # one frame, channels last
    obs_dtype: str                 # "uint8" or "float32": what replay stores
    hist_len: int = 4
    body: str = "catch"
    conv: str = "patch"            # networks.PatchConv impl: speed only, same parameters
    mlp_features: tuple[int, ...] = (64,)
    hidden_size: int = 512
    dueling: bool = False
    num_heads: int = 1             # bootstraps; 1 = no bootstrapping
    bootstrap_prob: float = 0.5    # P(a head trains on a transition), Osband et al.
    loss: str = "dqn"
    double_q: bool = False
    pal_alpha: float = 0.0
    td_clip: float = 1.0
    reward_clip: float = 1.0
    gamma: float = 0.99
    n_step: int = 1
    replay: str = "uniform"
    capacity: int = 100_000
    num_envs: int = 1
    alpha: float = 0.6
    batch_size: int = 32
    optimiser: str = "adam"
    learning_rate: float = 1e-4
    momentum: float = 0.95
    grad_clip: float = 0.0
    loss_reduction: str = "sum"    # "sum" over the batch (the original's update) or "mean" (DQN Zoo's)
    lr_decay_updates: int = 0      # > 0: learning rate annealed linearly to 0 over this many updates
    recurrent: bool = False        # DRQN: LSTM core; hist_len is then the sequence length
    burn_in: int = 0               # recurrent: steps that only warm the state (R2D2)
    loss_steps: str = "last"       # recurrent: "last" step of each window or "all" steps


@dataclasses.dataclass(frozen=True)
class QAgent:
    """Pure functions of one seed; see ``make_q_agent``."""

    settings: QAgentSettings
    network: QNetwork | RecurrentQNetwork
    replay: Replay
    stack_shape: tuple[int, ...]   # one frame stack (one frame if recurrent), channels last
    frame_dtype: jnp.dtype         # what replay and the network receive
    init: Callable[[jax.Array], tuple[TrainState, ReplayState, ActorState]]   # (key)
    # (num_envs, key) -> ActorState with empty stacks (and zero LSTM state)
    init_actor: Callable[[int, jax.Array], ActorState]
    # (params, stack [B, ...]) -> [B, K, A]; recurrent: one step from zero state
    q_values: Callable[[Params, jax.Array], jax.Array]
    # (params, target_params, batch, weights [B]) -> (objective, aux)
    loss: Callable[[Params, Params, Any, jax.Array], tuple[jax.Array, Metrics]]
    # (train, batch, weights [B]) -> (train, aux): one optimiser step
    learn: Callable[[TrainState, Any, jax.Array], tuple[TrainState, Metrics]]
    # (train, batch, probabilities [B], count, beta) -> (train, aux): importance weights
    # from a sample's probabilities, then ``learn``
    learn_sample: Callable[..., tuple[TrainState, Metrics]]
    # (params, actor, epsilon, vote, explore_only) -> (actions [E], actor)
    act: Callable[..., tuple[jax.Array, ActorState]]
    # (actor, frame [E, ...], is_first [E]) -> actor
    observe: Callable[[ActorState, jax.Array, jax.Array], ActorState]
    # (frame, action, reward, terminal, is_first, valid, key) -> Row
    make_row: Callable[..., Row]
    # (train, replay_state, beta) -> (train, replay_state, metrics)
    update: Callable[[TrainState, ReplayState, Any], tuple[TrainState, ReplayState, Metrics]]
    sync_target: Callable[[TrainState], TrainState]


def _as_sampled(batch, weights):
    return batch, weights


def make_q_agent(s: QAgentSettings, activation=jax.nn.relu,
                 place_batch: Callable = _as_sampled, *,
                 batch_axis: str | None = None) -> QAgent:
    """The agent of ``s``. ``place_batch(batch, weights) -> (batch, weights)``: where a
    sampled minibatch goes before learning; Sebulba's learner (``loops.sebulba``) splits it
    over its devices (GSPMD), the identity keeps it where it was sampled. ``batch_axis``: the
    data-parallel learner's (``agents.data_parallel``, run inside ``shard_map``): ``s`` then
    describes ONE device's share (its envs, replay rows and batch), each device samples its
    share of the batch from its own rows, and the gradient, the importance weights'
    normaliser and the reported means are the whole batch's; None is the one-device agent."""
    body = make_body(s.body, activation=activation, mlp_features=s.mlp_features, conv=s.conv)
    td_error = resolve_td_error(s.loss)
    if s.recurrent:
        network = RecurrentQNetwork(body=body, num_actions=s.num_actions,
                                    hidden_size=s.hidden_size, num_heads=s.num_heads,
                                    dueling=s.dueling, activation=activation)

        def init_core(batch: int):
            return zero_lstm_carry(batch, s.hidden_size)

        loss_fn = make_sequence_q_loss(network.apply, init_core, td_error, double_q=s.double_q,
                                       td_clip=s.td_clip, pal_alpha=s.pal_alpha,
                                       burn_in=s.burn_in, loss_steps=s.loss_steps,
                                       reduction=s.loss_reduction, batch_axis=batch_axis)
    else:
        network = QNetwork(body=body, num_actions=s.num_actions, hidden_size=s.hidden_size,
                           num_heads=s.num_heads, dueling=s.dueling, activation=activation)

        def init_core(batch: int):
            del batch
            return ()

        loss_fn = make_q_loss(network.apply, td_error, double_q=s.double_q, td_clip=s.td_clip,
                              pal_alpha=s.pal_alpha, reduction=s.loss_reduction,
                              batch_axis=batch_axis)
    learning_rate = (optax.linear_schedule(s.learning_rate, 0.0, s.lr_decay_updates)
                     if s.lr_decay_updates > 0 else s.learning_rate)
    optimiser = make_optimiser(s.optimiser, learning_rate=learning_rate,
                               momentum=s.momentum, grad_clip=s.grad_clip)
    replay = make_replay(s.replay, capacity=s.capacity, num_envs=s.num_envs,
                         hist_len=s.hist_len, n_step=s.n_step, gamma=s.gamma, alpha=s.alpha,
                         recurrent=s.recurrent, burn_in=s.burn_in)
    frame_dtype = jnp.uint8 if s.obs_dtype == "uint8" else jnp.float32
    channels = s.obs_shape[-1]
    # The recurrent agent sees one frame per step (the original's DRQN: state buffer of 1).
    stack_shape = (*s.obs_shape[:-1], channels * (1 if s.recurrent else s.hist_len))

    def apply_step(params, stack, core):
        """Q-values [E, K, A] of one step and the next recurrent state."""
        if not s.recurrent:
            return network.apply(params, stack), core
        no_reset = jnp.zeros((1, stack.shape[0]), bool)   # observe() already reset it
        q, core = network.apply(params, stack[None], no_reset, core)
        return q[0], core

    def example_row() -> Row:
        e = s.num_envs
        return Row(frame=jnp.zeros((e, *s.obs_shape), frame_dtype),
                   action=jnp.zeros((e,), jnp.int32), reward=jnp.zeros((e,), jnp.float32),
                   terminal=jnp.zeros((e,), bool), first=jnp.zeros((e,), bool),
                   valid=jnp.zeros((e,), bool), mask=jnp.zeros((e, s.num_heads), bool))

    def init(key):
        net_key, learn_key, act_key = jax.random.split(key, 3)
        if s.recurrent:
            params = network.init(net_key, jnp.zeros((1, 1, *stack_shape), frame_dtype),
                                  jnp.ones((1, 1), bool), init_core(1))
        else:
            params = network.init(net_key, jnp.zeros((1, *stack_shape), frame_dtype))
        train = TrainState(params=params,
                           target_params=jax.tree.map(jnp.copy, params),  # own buffers: donation
                           opt_state=optimiser.init(params), key=learn_key)
        return train, replay.init(example_row()), init_actor(s.num_envs, act_key)

    def init_actor(num_envs: int, key) -> ActorState:
        return ActorState.empty(num_envs, stack_shape, frame_dtype, key, init_core(num_envs))

    def q_values(params, stack):
        return apply_step(params, stack, init_core(stack.shape[0]))[0]

    def observe(actor: ActorState, frame, is_first):
        """Pushes the newest frame; a new episode starts from an empty stack (and a zero
        recurrent state) and draws its acting bootstrap head (one head per episode per
        env, Osband et al.)."""
        key, head_key = jax.random.split(actor.key)
        stack = push_frame(actor.stack, frame, is_first)
        new_head = jax.random.randint(head_key, actor.head.shape, 0, s.num_heads)
        core = jax.tree.map(lambda c: jnp.where(is_first[:, None], 0.0, c), actor.core)
        return actor.replace(stack=stack, head=jnp.where(is_first, new_head, actor.head),
                             key=key, core=core)

    def act(params, actor: ActorState, epsilon, vote: bool = False, explore_only: bool = False):
        """explore_only (static): the caller knows epsilon is 1, so every action is the
        random draw and the network is not run; the actions are the same as with it."""
        key, act_key, vote_key = jax.random.split(actor.key, 3)
        if explore_only and not s.recurrent:   # an LSTM still reads every frame
            q, core = jnp.zeros((actor.stack.shape[0], s.num_heads, s.num_actions)), actor.core
        else:
            q, core = apply_step(params, actor.stack, actor.core)         # [E, K, A]
        q_act = exploration.majority_vote(vote_key, q) if vote else exploration.select_head(
            q, actor.head)
        return (exploration.epsilon_greedy(act_key, q_act, epsilon),
                actor.replace(key=key, core=core))

    def make_row(frame, action, reward, terminal, is_first, valid, key) -> Row:
        mask = jax.random.bernoulli(key, s.bootstrap_prob, (s.num_envs, s.num_heads))
        if s.num_heads == 1:
            mask = jnp.ones_like(mask)
        clipped = (reward if switched_off(s.reward_clip)
                   else jnp.clip(reward, -s.reward_clip, s.reward_clip))
        return Row(frame=frame.astype(frame_dtype), action=action.astype(jnp.int32),
                   reward=clipped.astype(jnp.float32), terminal=terminal, first=is_first,
                   valid=valid, mask=mask)

    def learn(train: TrainState, batch, weights):
        """One optimiser step on a batch: the gradient of the reduced loss (the original's
        Agent.lua ``learn`` with --loss-reduction sum), clipped, then the optimiser's step.
        Data-parallel: each device's share of the whole batch's gradient, added over the
        devices by one ``psum`` before the step."""
        grads, aux = jax.grad(loss_fn, has_aux=True)(train.params, train.target_params,
                                                     batch, weights)
        return apply_gradients(optimiser, train, batch_sum(grads, batch_axis)), aux

    def learn_sample(train: TrainState, batch, probabilities, count, beta):
        """Importance weights (Schaul et al. 2016) (count P(i))^-beta, normalised by the
        (whole) batch's maximum, then ``learn``."""
        weights = (count * probabilities) ** (-beta)
        weights = weights / batch_max(jnp.max(weights), batch_axis)
        return learn(train, *place_batch(batch, weights))

    def update(train: TrainState, replay_state: ReplayState, beta):
        key, sample_key = jax.random.split(train.key)
        batch, indices, probabilities = replay.sample(
            replay_state, own_key(sample_key, batch_axis), s.batch_size)
        # Data-parallel: count and P(i) are this device's memory's. A device draws 1/D of
        # the batch with P(i) from its N/D transitions, i.e. with P(i)/D from all N, so
        # count x P(i) is the same counted over one device's memory or all of them.
        count = replay_state.storage.size * s.num_envs
        train, aux = learn_sample(train, batch, probabilities, count, beta)
        # A sample that could not be learned from keeps its priority: point its update at
        # a valid sample of the batch (a duplicate write of the same value).
        valid = aux["valid"]
        fallback = jnp.argmax(valid)
        indices = jnp.where(valid, indices, indices[fallback])
        priorities = jnp.where(valid, aux["priority"], aux["priority"][fallback])
        replay_state = replay.update_priorities(replay_state, indices, priorities)
        metrics = {name: aux[name] for name in ("loss", "td_error", "q_mean")}
        return train.replace(key=key), replay_state, metrics

    def sync_target(train: TrainState) -> TrainState:
        return train.replace(target_params=jax.tree.map(jnp.copy, train.params))

    return QAgent(settings=s, network=network, replay=replay, stack_shape=stack_shape,
                  frame_dtype=frame_dtype, init=init, init_actor=init_actor,
                  q_values=q_values, loss=loss_fn, learn=learn, learn_sample=learn_sample,
                  act=act, observe=observe, make_row=make_row, update=update,
                  sync_target=sync_target)
