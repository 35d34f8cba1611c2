"""Per-example TD errors, a read-only registry of them, and the Q-loss factory.

A TD error takes ONE transition for ONE head (the rlax convention) and returns a scalar;
``make_q_loss`` vmaps it over heads and batch once. All TD errors share one signature::

    td_error(q: QValues, a_tm1, r_t, discount_t, *, pal_alpha) -> scalar

``q.select_t`` holds the Q-values used to choose the bootstrap action at t: the online
network's for Double Q-learning, the target network's otherwise, so every rule here is
usable with or without Double Q.

Users add their own rule without editing the package: ``--loss my_module:my_td_error``
loads any function with this signature (docs/extending.md, "Your own TD error").
"""
from __future__ import annotations

import inspect
import types
from typing import Callable, Mapping, Protocol

import chex
import jax
import jax.numpy as jnp
from flax import struct

from jaxatari.agents.data_parallel import batch_sum
from jaxatari.types import Sequence, Transition, switched_off


@struct.dataclass
class QValues:
    """Q-values for one transition and one head; each field is [A]."""

    online_tm1: jax.Array   # online network at s_{t-1}: the value being learned
    target_tm1: jax.Array   # target network at s_{t-1}: advantage-learning gaps
    target_t: jax.Array     # target network at s_t: bootstrap values
    select_t: jax.Array     # the network that picks argmax at s_t (online if Double Q)


class TDError(Protocol):
    def __call__(self, q: QValues, a_tm1: jax.Array, r_t: jax.Array, discount_t: jax.Array,
                 *, pal_alpha: float) -> jax.Array: ...


def action_value(q_values: jax.Array, action: jax.Array) -> jax.Array:
    """Q(s, a) from Q-values [..., A] and actions [...]."""
    return jnp.take_along_axis(q_values, action[..., None], -1)[..., 0]


def bootstrap_value(target_t: jax.Array, select_t: jax.Array) -> jax.Array:
    """The bootstrap Q_target(s', argmax_a select_t(s', a)) over the last axis [..., A].

    ``select_t`` is the target network's Q-values for DQN (Mnih et al. 2015), so this is
    max_a Q_target(s', a); for Double Q-learning (van Hasselt et al. 2016) it is the online
    network's: the action is chosen online and evaluated by the target network.
    """
    return action_value(target_t, jnp.argmax(select_t, axis=-1))


def q_learning_td_error(q, a_tm1, r_t, discount_t, *, pal_alpha=0.0):
    """Q-learning / DQN (Mnih et al. 2015): r + gamma Q_target(s', argmax) - Q(s, a).

    With Double Q (van Hasselt et al. 2016) ``select_t`` is the online network, so the
    action is chosen online and evaluated by the target network.
    """
    del pal_alpha
    target = r_t + discount_t * bootstrap_value(q.target_t, q.select_t)
    return jax.lax.stop_gradient(target) - q.online_tm1[a_tm1]


def double_q_learning_td_error(q, a_tm1, r_t, discount_t, *, pal_alpha=0.0):
    """Double DQN (van Hasselt et al. 2016) whatever the --double-q flag says."""
    q = q.replace(select_t=jax.lax.stop_gradient(q.select_t))
    return q_learning_td_error(q, a_tm1, r_t, discount_t, pal_alpha=pal_alpha)


def advantage_learning_td_error(q, a_tm1, r_t, discount_t, *, pal_alpha=0.9):
    """Advantage learning (Baird 1999; Bellemare et al. 2016, eq. 6), in the original's form.

    delta_AL = delta - alpha (V(s) - Q(s, a)), V = max_a Q_target(s, a): the action gap at
    s is widened by pushing non-greedy actions down.
    """
    delta = q_learning_td_error(q, a_tm1, r_t, discount_t)
    gap_tm1 = jnp.max(q.target_tm1) - q.target_tm1[a_tm1]
    return delta - jax.lax.stop_gradient(pal_alpha * gap_tm1)


def persistent_advantage_learning_td_error(q, a_tm1, r_t, discount_t, *, pal_alpha=0.9):
    """Persistent advantage learning (Bellemare et al. 2016, eq. 8), in the original's form.

    delta_PAL = max(delta_AL, delta - alpha (V(s') - Q(s', a))), gaps from the target
    network (Kaixhin/Atari Agent.lua). A terminal s' (discount 0) has no value: the
    original zeroes Q(s', .) before taking the second gap, so there it is 0 and
    delta_PAL = max(delta_AL, delta). This is not rlax's ``persistent_q_learning``, which
    mixes max and same-action bootstraps without the AL max.
    """
    delta = q_learning_td_error(q, a_tm1, r_t, discount_t)
    gap_tm1 = jnp.max(q.target_tm1) - q.target_tm1[a_tm1]
    gap_t = jnp.where(discount_t > 0, jnp.max(q.target_t) - q.target_t[a_tm1], 0.0)
    return delta - jax.lax.stop_gradient(pal_alpha * jnp.minimum(gap_tm1, gap_t))


TD_ERRORS: Mapping[str, TDError] = types.MappingProxyType({
    "dqn": q_learning_td_error,
    "double": double_q_learning_td_error,
    "al": advantage_learning_td_error,
    "pal": persistent_advantage_learning_td_error,
})


def resolve_td_error(name: str) -> TDError:
    """A registry key, or an import path ``module:function`` to a user's TD error."""
    if name in TD_ERRORS:
        return TD_ERRORS[name]
    if ":" in name:
        from jaxatari.networks import load_object  # local: networks is pure too
        function = load_object(name, what="TD error")
        if not _has_td_error_signature(function):
            raise ValueError(f"TD error {name!r} is not a function of (q, a_tm1, r_t, "
                             "discount_t, *, pal_alpha) (see jaxatari.losses.TDError)")
        return function
    raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(TD_ERRORS)} "
                     "or give an import path 'module:function'")


def _has_td_error_signature(function) -> bool:
    """A Python function that can be called as a TD error; checked before it is traced, so
    a builtin (os.system, print) or a class named by mistake is refused, never called."""
    if not inspect.isfunction(function):
        return False
    try:
        inspect.signature(function).bind(None, None, None, None, pal_alpha=0.0)
    except TypeError:
        return False
    return True


def huber(x: jax.Array, delta: float) -> jax.Array:
    """Squared inside [-delta, delta], linear outside: the gradient is clip(x, +-delta)
    (the original's tdClip); delta <= 0 means a plain squared error."""
    if switched_off(delta):
        return 0.5 * jnp.square(x)
    abs_x = jnp.abs(x)
    quadratic = jnp.minimum(abs_x, delta)
    return 0.5 * jnp.square(quadratic) + delta * (abs_x - quadratic)


# How an update reduces its batch (docs/reduction.md):
#   "sum": the gradient is the sum over samples of -clip(delta) w dQ/dtheta, as the original's
#       Agent.lua ``learn`` (it writes -clamp(delta) x w into each sample's output and
#       back-propagates the batch) and DeepMind's Nature DQN code; each bootstrap head sums
#       its own masked samples (Osband et al. 2016, g_k = m_k delta dQ_k/dtheta).
#   "mean": each head takes the mean over its own masked samples (DQN Zoo, Young and Tian's
#       MinAtar DQN): 1/B of "sum" for one head.
# Either way the shared body receives the heads' gradients scaled by 1/K (the network's
# GradientRescale), so each head learns at a single-head DQN's rate.
LOSS_REDUCTIONS = ("sum", "mean")


def _check_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}: choose one of "
                         f"{', '.join(LOSS_REDUCTIONS)}")


def reduce_loss(per_item: jax.Array, mask: jax.Array, reduction: str,
                batch_axis: str | None = None) -> jax.Array:
    """The objective to differentiate from masked, weighted per-item losses [..., K].

    Every axis but the last (heads) holds samples (and steps, for sequences). "sum" adds
    them all; "mean" divides each head's sum by its own count of unmasked items, so a head
    never learns at 1/(K p) of its rate from sharing the batch with the others.
    ``batch_axis`` (the data-parallel learner, ``agents.data_parallel``): the items are this
    device's share of the batch, and the result its share of the whole batch's objective
    (a mean divides by the whole batch's count).
    """
    _check_reduction(reduction)
    if reduction == "sum":
        return per_item.sum()
    sample_axes = tuple(range(per_item.ndim - 1))
    counts = batch_sum(mask.sum(sample_axes), batch_axis)                          # [K]
    per_head = per_item.sum(sample_axes) / jnp.maximum(counts, 1.0)                 # [K]
    return per_head.sum()


def _selects_online(double_q: bool, td_error: TDError) -> bool:
    """Whether the online network picks the bootstrap action: --double-q, or the "double"
    rule, which needs the online network's choice whatever --double-q says."""
    return double_q or td_error is double_q_learning_td_error


def _per_head(td_error: TDError, pal_alpha: float) -> Callable:
    """The TD error of one transition vmapped over the K heads (one action, reward and
    discount for all of them)."""
    return jax.vmap(lambda q, a, r, d: td_error(q, a, r, d, pal_alpha=pal_alpha),
                    in_axes=(0, None, None, None))


def make_q_loss(apply_fn: Callable, td_error: TDError, *, double_q: bool, td_clip: float,
                pal_alpha: float, reduction: str, batch_axis: str | None = None) -> Callable:
    """Builds loss(params, target_params, batch, weights) -> (objective, aux).

    The objective is the Huber TD loss of each (sample, head) pair, weighted by its
    importance weight (Schaul et al. 2016), reduced by ``reduce_loss`` ("sum": the
    original's and Nature DQN's update; "mean": DQN Zoo's); a head's mask of 0 gives that
    head no gradient from the transition (Bootstrapped DQN, Osband et al. 2016).
    ``aux["loss"]`` reports the mean over valid pairs whatever the reduction. Forward
    passes a TD error does not read are removed by XLA. ``batch_axis``: the batch is one
    device's share (``reduce_loss``), and the reported means are the whole batch's.
    """
    _check_reduction(reduction)
    double_q = _selects_online(double_q, td_error)
    total = lambda x: batch_sum(x, batch_axis)                   # noqa: E731
    per_batch = jax.vmap(_per_head(td_error, pal_alpha))            # over B

    def loss_fn(params, target_params, batch: Transition, weights: jax.Array):
        online_tm1 = apply_fn(params, batch.obs_tm1)                 # [B, K, A]
        target_tm1 = apply_fn(target_params, batch.obs_tm1)
        target_t = apply_fn(target_params, batch.obs_t)
        select_t = apply_fn(params, batch.obs_t) if double_q else target_t
        q = QValues(online_tm1=online_tm1, target_tm1=target_tm1, target_t=target_t,
                    select_t=jax.lax.stop_gradient(select_t))
        td = per_batch(q, batch.a_tm1, batch.r_t, batch.discount_t)  # [B, K]
        chex.assert_equal_shape([td, batch.mask])
        per_item = huber(td, td_clip) * batch.mask * weights[:, None]
        objective = reduce_loss(per_item, batch.mask, reduction, batch_axis)
        count = jnp.maximum(total(batch.mask.sum()), 1.0)
        loss = total(per_item.sum()) / count
        abs_td = jnp.abs(td) * batch.mask
        heads_per_sample = jnp.maximum(batch.mask.sum(-1), 1.0)
        aux = {
            "loss": loss,
            "td_error": total(abs_td.sum()) / count,
            "q_mean": total((online_tm1.max(-1) * batch.mask).sum()) / count,
            # Priority of each sample: mean |delta| over the heads trained on it, unclipped.
            "priority": abs_td.sum(-1) / heads_per_sample,           # [B]
            "valid": batch.mask.sum(-1) > 0,                         # [B]
            # The validation's V: max_a Q_target(s', a) over heads, 0 at a terminal s'.
            "value": target_t.max(-1).mean(-1) * (batch.discount_t > 0),   # [B]
        }
        return objective, aux

    return loss_fn


SEQUENCE_LOSS_STEPS = ("last", "all")
# R2D2 (Kapturowski et al. 2019, section 2.3): a window's priority mixes the max and the mean
# of its steps' |TD errors| with eta = 0.9.
SEQUENCE_PRIORITY_ETA = 0.9


def make_sequence_q_loss(unroll: Callable, init_carry: Callable, td_error: TDError, *,
                         double_q: bool, td_clip: float, pal_alpha: float, burn_in: int,
                         loss_steps: str, reduction: str,
                         batch_axis: str | None = None) -> Callable:
    """Builds loss(params, target_params, sequence, weights) -> (objective, aux) for DRQN.

    Recurrent Q-learning (Hausknecht and Stone 2015): both networks are unrolled over the
    window from a zero state (``init_carry(B)``), resetting it where an episode starts; the
    TD error of step t compares the online Q at t with the target network's bootstrap at
    t + 1, per step, head and sample, with any rule of the registry. ``burn_in`` leading
    steps only warm the state, without gradient (R2D2, Kapturowski et al. 2019).
    ``loss_steps`` picks which of the T learnable steps enter the loss: "last" (the
    original's: the Q-values of the final step of a histLen sequence) or "all" (every step
    after burn-in, Hausknecht and Stone's bootstrapped sequential updates). Masks zero
    reset steps and invalid windows. ``reduction`` and ``batch_axis`` as ``make_q_loss``,
    over the learned steps of every window.

    ``unroll(params, obs [T, B, ...], first [T, B], carry) -> (q [T, B, K, A], carry)``.
    """
    if loss_steps not in SEQUENCE_LOSS_STEPS:
        raise ValueError(f"unknown sequence loss steps {loss_steps!r}: choose one of "
                         f"{', '.join(SEQUENCE_LOSS_STEPS)}")
    _check_reduction(reduction)
    double_q = _selects_online(double_q, td_error)
    total = lambda x: batch_sum(x, batch_axis)                   # noqa: E731
    per_step = jax.vmap(jax.vmap(_per_head(td_error, pal_alpha)))   # over T and B

    def q_window(params, obs, first):                                # -> [T+1, B, K, A]
        carry = init_carry(obs.shape[1])
        if burn_in > 0:
            _, carry = unroll(params, obs[:burn_in], first[:burn_in], carry)
            carry = jax.lax.stop_gradient(carry)
        q, _ = unroll(params, obs[burn_in:], first[burn_in:], carry)
        return q

    def loss_fn(params, target_params, batch: Sequence, weights: jax.Array):
        online = q_window(params, batch.obs, batch.first)
        target = jax.lax.stop_gradient(q_window(target_params, batch.obs, batch.first))
        select_t = online[1:] if double_q else target[1:]
        q = QValues(online_tm1=online[:-1], target_tm1=target[:-1], target_t=target[1:],
                    select_t=jax.lax.stop_gradient(select_t))
        td = per_step(q, batch.a_tm1, batch.r_t, batch.discount_t)   # [T, B, K]
        chex.assert_equal_shape([td, batch.mask])
        steps = td.shape[0]
        chosen = jnp.ones((steps,)) if loss_steps == "all" else jnp.arange(steps) == steps - 1
        mask = batch.mask * chosen[:, None, None]                     # [T, B, K]
        count = jnp.maximum(total(mask.sum()), 1.0)
        per_item = huber(td, td_clip) * mask * weights[None, :, None]
        objective = reduce_loss(per_item, mask, reduction, batch_axis)
        loss = total(per_item.sum()) / count
        abs_td = jnp.abs(td) * mask
        heads = mask.sum(-1)                                          # [T, B]
        step_td = abs_td.sum(-1) / jnp.maximum(heads, 1.0)            # [T, B]
        learned = heads > 0
        num_learned = jnp.maximum(learned.sum(0), 1)                  # [B]
        eta = SEQUENCE_PRIORITY_ETA
        value_t = q.target_t.max(-1).mean(-1) * (batch.discount_t > 0)   # [T, B]
        aux = {
            "loss": loss,
            "td_error": total(abs_td.sum()) / count,
            "q_mean": total((q.online_tm1.max(-1) * mask).sum()) / count,
            "priority": eta * step_td.max(0) + (1 - eta) * step_td.sum(0) / num_learned,
            "valid": learned.any(0),
            "value": (value_t * learned).sum(0) / num_learned,
        }
        return objective, aux

    return loss_fn
