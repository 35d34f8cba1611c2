"""TD errors against numpy references written from the papers, the Huber loss, the Q-loss
factory (bootstrap masks, importance weights, priorities) and the loss registry.

References (one transition, one head; ``target`` = target network, ``online`` = online):
  DQN (Mnih et al. 2015):      delta = r + d * max_a Qtarget(s', a) - Q(s, a_tm1)
  Double (van Hasselt 2016):   delta = r + d * Qtarget(s', argmax_a Qonline(s', a)) - Q(s, a_tm1)
  AL (Bellemare et al. 2016, Kaixhin/Atari):  delta - alpha * (max_a Qtarget(s, a) - Qtarget(s, a_tm1))
  PAL: max(delta_AL, delta - alpha * (max_a Qtarget(s', a) - Qtarget(s', a_tm1))), where the
       original (Agent.lua learn) first zeroes Qtarget(s', .) when s' is terminal (discount 0)
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from absl.testing import parameterized

from jaxatari.losses import QValues, TD_ERRORS, huber, make_q_loss, resolve_td_error
from jaxatari.networks import QNetwork, make_body
from jaxatari.types import Transition

NUM_ACTIONS = 5
PAL_ALPHA = 0.7


# ----------------------------------------------------------------------------- references

def ref_delta(q_tm1_online, q_t_target, q_t_select, a_tm1, r_t, discount_t):
    """DQN / Double DQN delta: the bootstrap action is chosen by ``q_t_select``."""
    a_star = int(np.argmax(q_t_select))
    return r_t + discount_t * q_t_target[a_star] - q_tm1_online[a_tm1]


def ref_dqn(online_tm1, target_tm1, target_t, online_t, a_tm1, r_t, discount_t, alpha,
            double_q):
    del target_tm1, alpha
    select = online_t if double_q else target_t
    return ref_delta(online_tm1, target_t, select, a_tm1, r_t, discount_t)


def ref_double(online_tm1, target_tm1, target_t, online_t, a_tm1, r_t, discount_t, alpha,
               double_q):
    # Double DQN always selects with the online network.
    del target_tm1, alpha, double_q
    return ref_delta(online_tm1, target_t, online_t, a_tm1, r_t, discount_t)


def ref_al(online_tm1, target_tm1, target_t, online_t, a_tm1, r_t, discount_t, alpha,
           double_q):
    select = online_t if double_q else target_t
    delta = ref_delta(online_tm1, target_t, select, a_tm1, r_t, discount_t)
    return delta - alpha * (np.max(target_tm1) - target_tm1[a_tm1])


def ref_pal(online_tm1, target_tm1, target_t, online_t, a_tm1, r_t, discount_t, alpha,
            double_q):
    # Agent.lua: self.QPrimes[n]:mul(1 - terminals[n]) before the target and V(s'), Q(s', a).
    q_prime = target_t * (0.0 if discount_t == 0 else 1.0)
    select = online_t if double_q else target_t
    delta = ref_delta(online_tm1, q_prime, select, a_tm1, r_t, discount_t)
    delta_al = delta - alpha * (np.max(target_tm1) - target_tm1[a_tm1])
    delta_persistent = delta - alpha * (np.max(q_prime) - q_prime[a_tm1])
    return max(delta_al, delta_persistent)


REFERENCES = {"dqn": ref_dqn, "double": ref_double, "al": ref_al, "pal": ref_pal}


def random_q(seed: int):
    rng = np.random.default_rng(seed)
    online_tm1, target_tm1, target_t, online_t = (
        rng.normal(size=NUM_ACTIONS).astype(np.float32) for _ in range(4))
    a_tm1 = int(rng.integers(NUM_ACTIONS))
    r_t = np.float32(rng.normal())
    return online_tm1, target_tm1, target_t, online_t, a_tm1, r_t


def test_registry_has_the_four_rules_and_references():
    assert set(TD_ERRORS) == set(REFERENCES) == {"dqn", "double", "al", "pal"}


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        TD_ERRORS["mine"] = TD_ERRORS["dqn"]  # type: ignore[index]


# ----------------------------------------------------------------------------- TD errors

CASES = [
    dict(testcase_name=f"{name}_gamma{discount}_{'double' if double_q else 'target'}_seed{seed}",
         name=name, discount=discount, double_q=double_q, seed=seed)
    for name in ("dqn", "double", "al", "pal")
    for discount in (0.0, 0.99)
    for double_q in ((True,) if name == "double" else (False, True))
    for seed in (0, 1)
]
# "double" reads select_t like every rule; the factory fills select_t from the online
# network when double_q is on (the flag itself is tested at the factory level below).


class TDErrorTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*CASES)
    def test_td_error_matches_numpy_reference(self, name, discount, double_q, seed):
        online_tm1, target_tm1, target_t, online_t, a_tm1, r_t = random_q(seed)
        q = QValues(online_tm1=jnp.asarray(online_tm1), target_tm1=jnp.asarray(target_tm1),
                    target_t=jnp.asarray(target_t),
                    select_t=jnp.asarray(online_t if double_q else target_t))
        td_error = TD_ERRORS[name]

        @self.variant
        def run(q, a_tm1, r_t, discount_t):
            return td_error(q, a_tm1, r_t, discount_t, pal_alpha=PAL_ALPHA)

        got = run(q, jnp.int32(a_tm1), jnp.float32(r_t), jnp.float32(discount))
        want = REFERENCES[name](online_tm1, target_tm1, target_t, online_t, a_tm1, r_t,
                                discount, PAL_ALPHA, double_q)
        chex.assert_shape(got, ())
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_double_entry_equals_dqn_with_online_selection(self):
        for seed in range(5):
            online_tm1, target_tm1, target_t, online_t, a_tm1, r_t = random_q(seed)
            q = QValues(online_tm1=jnp.asarray(online_tm1), target_tm1=jnp.asarray(target_tm1),
                        target_t=jnp.asarray(target_t), select_t=jnp.asarray(online_t))

            @self.variant
            def both(q, a, r, d):
                return (TD_ERRORS["double"](q, a, r, d, pal_alpha=0.0),
                        TD_ERRORS["dqn"](q, a, r, d, pal_alpha=0.0))

            double, dqn = both(q, jnp.int32(a_tm1), jnp.float32(r_t), jnp.float32(0.9))
            np.testing.assert_allclose(double, dqn, rtol=0, atol=0)
            # and it is not the plain DQN target: online and target argmaxes differ here
            if np.argmax(online_t) != np.argmax(target_t):
                plain = TD_ERRORS["dqn"](q.replace(select_t=jnp.asarray(target_t)),
                                         jnp.int32(a_tm1), jnp.float32(r_t), jnp.float32(0.9),
                                         pal_alpha=0.0)
                assert not np.isclose(double, plain)

    @chex.variants(with_jit=True, without_jit=True)
    def test_dqn_and_double_agree_with_rlax(self):
        online_tm1, _, target_t, online_t, a_tm1, r_t = random_q(7)
        q = QValues(online_tm1=jnp.asarray(online_tm1), target_tm1=jnp.zeros(NUM_ACTIONS),
                    target_t=jnp.asarray(target_t), select_t=jnp.asarray(target_t))

        @self.variant
        def ours(q):
            return (TD_ERRORS["dqn"](q, a_tm1, r_t, 0.9, pal_alpha=0.0),
                    TD_ERRORS["double"](q.replace(select_t=jnp.asarray(online_t)), a_tm1, r_t,
                                        0.9, pal_alpha=0.0))

        dqn, double = ours(q)
        np.testing.assert_allclose(dqn, rlax.q_learning(online_tm1, a_tm1, r_t, 0.9, target_t),
                                   rtol=1e-6)
        np.testing.assert_allclose(
            double, rlax.double_q_learning(online_tm1, a_tm1, r_t, 0.9, target_t, online_t),
            rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_flows_only_into_online_tm1(self):
        online_tm1, target_tm1, target_t, online_t, a_tm1, r_t = random_q(3)
        for name, td_error in TD_ERRORS.items():
            @self.variant
            def grads(q):
                return jax.grad(lambda q: td_error(q, a_tm1, r_t, 0.9, pal_alpha=PAL_ALPHA))(q)

            q = QValues(online_tm1=jnp.asarray(online_tm1), target_tm1=jnp.asarray(target_tm1),
                        target_t=jnp.asarray(target_t), select_t=jnp.asarray(online_t))
            g = grads(q)
            expected = -np.eye(NUM_ACTIONS, dtype=np.float32)[a_tm1]
            np.testing.assert_allclose(g.online_tm1, expected, err_msg=name)
            for field in ("target_tm1", "target_t", "select_t"):
                np.testing.assert_array_equal(getattr(g, field), 0.0, err_msg=f"{name}.{field}")


def test_pal_differs_from_al_when_the_next_state_gap_is_smaller():
    """A case built by hand, so the max in PAL is exercised on both sides."""
    q = QValues(online_tm1=jnp.array([1.0, 0.0]), target_tm1=jnp.array([2.0, 0.0]),
                target_t=jnp.array([1.0, 0.5]), select_t=jnp.array([1.0, 0.5]))
    # delta = 0 + 1 * 1.0 - 0.0 = 1; gap_tm1 = 2, gap_t = 0.5
    al = TD_ERRORS["al"](q, 1, 0.0, 1.0, pal_alpha=0.5)
    pal = TD_ERRORS["pal"](q, 1, 0.0, 1.0, pal_alpha=0.5)
    np.testing.assert_allclose(al, 1.0 - 0.5 * 2.0)
    np.testing.assert_allclose(pal, 1.0 - 0.5 * 0.5)


@pytest.mark.parametrize("alpha", [0.9, 0.5])
def test_pal_at_a_terminal_is_the_max_of_al_and_plain_delta(alpha):
    """The issue's example: r = 1, discount 0, Q(s, a) = 0.5, gaps 0.8 at s and 2.0 at s'.
    Written out from Agent.lua: Q(s', .) is zeroed at a terminal s', so the second gap is 0
    and delta_PAL = max(delta - alpha 0.8, delta) = delta = +0.5 (not 0.5 - 0.72 = -0.22)."""
    q = QValues(online_tm1=jnp.array([0.5, 0.0]), target_tm1=jnp.array([0.5, 1.3]),
                target_t=jnp.array([0.0, 2.0]), select_t=jnp.array([0.0, 2.0]))
    got = TD_ERRORS["pal"](q, 0, 1.0, 0.0, pal_alpha=alpha)
    delta = 1.0 + 0.0 - 0.5
    np.testing.assert_allclose(got, max(delta - alpha * 0.8, delta - alpha * 0.0), rtol=1e-6)
    np.testing.assert_allclose(got, 0.5, rtol=1e-6)
    # Not at a terminal the same Q-values take the smaller gap, 0.8: delta_AL.
    got = TD_ERRORS["pal"](q, 0, 1.0, 0.5, pal_alpha=alpha)
    delta = 1.0 + 0.5 * 2.0 - 0.5
    np.testing.assert_allclose(got, delta - alpha * min(0.8, 2.0), rtol=1e-6)


# ----------------------------------------------------------------------------- huber

class HuberTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("delta1", 1.0), ("delta2_5", 2.5))
    def test_value_and_gradient(self, delta):
        x = jnp.array([-7.0, -2.6, -1.0, -0.3, 0.0, 0.4, 1.2, 2.4, 9.0])
        value_and_grad = self.variant(jax.vmap(jax.value_and_grad(lambda x: huber(x, delta))))
        value, grad = value_and_grad(x)
        xs = np.asarray(x)
        want = np.where(np.abs(xs) <= delta, 0.5 * xs ** 2, delta * (np.abs(xs) - 0.5 * delta))
        np.testing.assert_allclose(value, want, rtol=1e-6)
        np.testing.assert_allclose(grad, np.clip(xs, -delta, delta), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_delta_zero_is_half_square(self):
        x = jnp.array([-7.0, -0.5, 0.0, 0.3, 12.0])
        value_and_grad = self.variant(jax.vmap(jax.value_and_grad(lambda x: huber(x, 0.0))))
        value, grad = value_and_grad(x)
        np.testing.assert_allclose(value, 0.5 * np.asarray(x) ** 2, rtol=1e-6)
        np.testing.assert_allclose(grad, np.asarray(x), rtol=1e-6)


# ----------------------------------------------------------------------------- make_q_loss

OBS_DIM = 6
NUM_HEADS = 3


def tiny_network(num_heads=NUM_HEADS):
    return QNetwork(body=make_body("mlp", mlp_features=(16,)), num_actions=NUM_ACTIONS,
                    hidden_size=16, num_heads=num_heads)


def params_pair(network, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    example = jnp.zeros((1, OBS_DIM))
    return network.init(k1, example), network.init(k2, example)


def random_batch(batch_size, num_heads, seed=0, mask=None):
    rng = np.random.default_rng(seed)
    if mask is None:
        mask = np.ones((batch_size, num_heads), np.float32)
    return Transition(
        obs_tm1=jnp.asarray(rng.normal(size=(batch_size, OBS_DIM)), jnp.float32),
        a_tm1=jnp.asarray(rng.integers(NUM_ACTIONS, size=batch_size), jnp.int32),
        r_t=jnp.asarray(rng.normal(size=batch_size), jnp.float32),
        discount_t=jnp.full((batch_size,), 0.99, jnp.float32),
        obs_t=jnp.asarray(rng.normal(size=(batch_size, OBS_DIM)), jnp.float32),
        mask=jnp.asarray(mask, jnp.float32))


def head_leaves(grads, head):
    """Every parameter of one head (nn.vmap stacks heads on axis 0 of each leaf)."""
    return [leaf[head] for leaf in jax.tree.leaves(grads["params"]["heads"])]


@pytest.mark.parametrize("loss_name", ["dqn", "pal"])
def test_masked_head_gets_zero_gradient(loss_name):
    network = tiny_network()
    params, target_params = params_pair(network)
    loss_fn = make_q_loss(network.apply, TD_ERRORS[loss_name], double_q=True, td_clip=1.0,
                          pal_alpha=0.5, reduction="sum")
    batch = random_batch(1, NUM_HEADS, mask=[[1.0, 0.0, 1.0]])
    grads, _ = jax.jit(jax.grad(loss_fn, has_aux=True))(params, target_params, batch,
                                                        jnp.ones(1))
    for leaf in head_leaves(grads, 1):
        np.testing.assert_array_equal(leaf, 0.0)
    for head in (0, 2):
        assert any(np.abs(leaf).max() > 0 for leaf in head_leaves(grads, head)), head
    body = jax.tree.leaves(grads["params"]["body"])
    assert any(np.abs(leaf).max() > 0 for leaf in body)


def test_importance_weights_scale_the_loss():
    network = tiny_network()
    params, target_params = params_pair(network)
    loss_fn = jax.jit(make_q_loss(network.apply, TD_ERRORS["dqn"], double_q=False, td_clip=1.0,
                                  pal_alpha=0.0, reduction="sum"))
    batch = random_batch(4, NUM_HEADS, seed=1)
    base, _ = loss_fn(params, target_params, batch, jnp.ones(4))
    scaled, _ = loss_fn(params, target_params, batch, jnp.full(4, 0.25))
    np.testing.assert_allclose(scaled, 0.25 * base, rtol=1e-5)
    # a weight of 0 removes one sample exactly: the summed loss is the others' sum
    weights = jnp.array([1.0, 0.0, 1.0, 1.0])
    partial, _ = loss_fn(params, target_params, batch, weights)
    single, _ = loss_fn(params, target_params,
                        jax.tree.map(lambda x: x[1:2], batch), jnp.ones(1))
    np.testing.assert_allclose(partial, base - single, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_and_priority_against_numpy(reduction):
    network = tiny_network()
    params, target_params = params_pair(network)
    mask = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], np.float32)
    weights = np.array([0.5, 1.0, 0.25, 1.0], np.float32)
    batch = random_batch(4, NUM_HEADS, seed=2, mask=mask)
    td_clip = 0.5
    loss_fn = jax.jit(make_q_loss(network.apply, TD_ERRORS["dqn"], double_q=True,
                                  td_clip=td_clip, pal_alpha=0.0, reduction=reduction))
    loss, aux = loss_fn(params, target_params, batch, jnp.asarray(weights))

    online_tm1 = np.asarray(network.apply(params, batch.obs_tm1))      # [B, K, A]
    online_t = np.asarray(network.apply(params, batch.obs_t))
    target_t = np.asarray(network.apply(target_params, batch.obs_t))
    td = np.zeros((4, NUM_HEADS), np.float32)
    for b in range(4):
        for k in range(NUM_HEADS):
            td[b, k] = ref_delta(online_tm1[b, k], target_t[b, k], online_t[b, k],
                                 int(batch.a_tm1[b]), float(batch.r_t[b]), 0.99)
    abs_td = np.abs(td)
    hub = np.where(abs_td <= td_clip, 0.5 * td ** 2, td_clip * (abs_td - 0.5 * td_clip))
    weighted = hub * mask * weights[:, None]
    # the objective: a sum over samples, or each head's mean over its own masked samples
    want_objective = (weighted.sum() if reduction == "sum"
                      else sum(weighted[:, k].sum() / mask[:, k].sum() for k in range(NUM_HEADS)))
    np.testing.assert_allclose(loss, want_objective, rtol=1e-5)
    # the reported loss: the mean over unmasked (sample, head) pairs either way
    np.testing.assert_allclose(aux["loss"], weighted.sum() / mask.sum(), rtol=1e-5)
    # priority: mean |td| over the unmasked heads, unclipped; 0 for a sample with no head
    want_priority = (abs_td * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
    np.testing.assert_allclose(aux["priority"], want_priority, rtol=1e-5)
    assert aux["priority"][1] == 0.0
    np.testing.assert_allclose(aux["priority"][0], (abs_td[0, 0] + abs_td[0, 2]) / 2, rtol=1e-5)
    np.testing.assert_allclose(aux["td_error"], (abs_td * mask).sum() / mask.sum(), rtol=1e-5)


def test_double_loss_ignores_the_double_q_flag():
    """The "double" rule is Double DQN whatever the --double-q flag says: the per-example rule
    can only read select_t, so make_q_loss must fill it from the online network for it (a
    regression test: it once silently trained plain DQN)."""
    network = tiny_network(num_heads=1)
    params, target_params = params_pair(network, seed=3)
    batch = random_batch(16, 1, seed=4)
    weights = jnp.ones(16)
    double_flag_off = make_q_loss(network.apply, TD_ERRORS["double"], double_q=False,
                                  td_clip=0.0, pal_alpha=0.0, reduction="sum")
    dqn_flag_on = make_q_loss(network.apply, TD_ERRORS["dqn"], double_q=True, td_clip=0.0,
                              pal_alpha=0.0, reduction="sum")
    dqn_flag_off = make_q_loss(network.apply, TD_ERRORS["dqn"], double_q=False, td_clip=0.0,
                               pal_alpha=0.0, reduction="sum")
    got, _ = double_flag_off(params, target_params, batch, weights)
    want, _ = dqn_flag_on(params, target_params, batch, weights)
    plain, _ = dqn_flag_off(params, target_params, batch, weights)
    assert not np.isclose(want, plain), "online and target argmaxes never differ: weak test"
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- registry

def my_td_error(q, a_tm1, r_t, discount_t, *, pal_alpha=0.0):
    """A user's rule: a TD error that ignores the bootstrap (for the resolver test)."""
    del discount_t, pal_alpha
    return r_t - q.online_tm1[a_tm1]


NOT_CALLABLE = 3


def test_resolve_registry_names():
    for name, function in TD_ERRORS.items():
        assert resolve_td_error(name) is function


def test_resolve_import_path():
    function = resolve_td_error("tests.test_losses:my_td_error")
    assert function.__name__ == "my_td_error" and function.__module__ == "tests.test_losses"
    q = QValues(online_tm1=jnp.array([1.0, 2.0]), target_tm1=jnp.zeros(2),
                target_t=jnp.zeros(2), select_t=jnp.zeros(2))
    np.testing.assert_allclose(function(q, 1, 3.0, 0.9, pal_alpha=0.0), 1.0)
    # and it plugs into the loss factory
    network = tiny_network(num_heads=1)
    params, target_params = params_pair(network)
    loss_fn = make_q_loss(network.apply, function, double_q=False, td_clip=0.0, pal_alpha=0.0,
                          reduction="sum")
    loss, _ = loss_fn(params, target_params, random_batch(2, 1), jnp.ones(2))
    assert np.isfinite(loss)


@pytest.mark.parametrize("name", ["dqnn", "tests.test_losses:no_such_rule",
                                  "no_such_package_xyz.mod:rule",
                                  "tests.test_losses:NOT_CALLABLE"])
def test_resolve_bad_names_raise_one_line_value_error(name):
    with pytest.raises(ValueError) as info:
        resolve_td_error(name)
    message = str(info.value)
    assert message and "\n" not in message


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="dqn, double, al, pal"):
        resolve_td_error("dqnn")
