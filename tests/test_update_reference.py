"""One full update of each replay preset, from fixed parameters on a fixed batch, against a
numpy reference of its source's update rule, optimiser step included.

The reference is written out from the sources, not from the package:

* Kaixhin/Atari Agent.lua ``learn`` (the Atari presets): Q(s', .) of the target network is
  zeroed at a terminal s'; Y = r + gamma Q'(s', a*), a* the argmax of the online network
  (Double Q) or of the target network; delta = Y - Q(s, a); PAL (Bellemare et al. 2016)
  takes max(delta - alpha (V(s) - Q(s, a)), delta - alpha (V(s') - Q'(s', a))) with the
  target network's values; delta is clamped to +-tdClip and -clamp(delta) x w is written
  into each sample's chosen output, then back-propagated through the network: the gradient
  is the SUM over the batch. GradientRescale 1/sqrt(2) before the dueling streams and 1/K
  before the bootstrap heads. gradParamClip clips the global L2 norm.
* Bootstrapped DQN (Osband et al. 2016): head k's gradient is m_k delta dQ_k/dtheta, i.e.
  each head sums its own masked samples, and the body gets the heads' sum scaled by 1/K.
* modules/rmspropm.lua: g = m g + (1 - m) d, s = m s + (1 - m) d^2,
  x = x - lr d / sqrt(s - g^2 + 0.01), from g = s = 0.
* Young and Tian 2019 (minatar-dqn): the mean smooth-L1 loss over the batch, the same
  centred RMSProp with epsilon 0.01 (inside the square root, as the preset documents).
"""
from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxatari.agents.dqn import make_q_agent
from jaxatari.config import build_config
from jaxatari.loop import agent_settings
from jaxatari.types import Transition

OBS_DIM = 5
NUM_ACTIONS = 4
BATCH = 32
# Small networks, float observations; everything else is the preset's.
SMALL = dict(model_body="mlp", mlp_hidden=8, hidden_size=6, hist_len=1, discretise_mem=False,
             mem_size=1000, learn_start=100, batch_size=BATCH)
RMSPROPM_EPSILON = 0.01

# preset -> (the source whose update it reproduces, that source's batch reduction)
SOURCES = {
    "nature": ("Kaixhin/Atari", "sum"),
    "doubleq": ("Kaixhin/Atari", "sum"),
    "duel": ("Kaixhin/Atari", "sum"),
    "prioritised": ("Kaixhin/Atari", "sum"),
    "priorduel": ("Kaixhin/Atari", "sum"),
    "persistent": ("Kaixhin/Atari", "sum"),
    "bootstrap": ("Kaixhin/Atari", "sum"),
    "minatar-dqn": ("Young and Tian 2019", "mean"),
}


# ----------------------------------------------------------------------------- numpy network

def relu(x):
    return np.maximum(x, 0.0)


def np_params(params):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), params)["params"]


def forward(p, x, num_heads, dueling):
    """Q [B, K, A] and what the backward pass needs, for the mlp body and K heads."""
    body = p["body"]["Dense_0"]
    h0 = relu(x @ body["kernel"] + body["bias"])
    heads = p["heads"]
    q, cache = [], []
    for k in range(num_heads):
        if not dueling:
            h1 = relu(h0 @ heads["Dense_0"]["kernel"][k] + heads["Dense_0"]["bias"][k])
            q.append(h1 @ heads["Dense_1"]["kernel"][k] + heads["Dense_1"]["bias"][k])
            cache.append(h1)
        else:   # Dense_1 -> Dense_0: value stream; Dense_3 -> Dense_2: advantage stream
            hv = relu(h0 @ heads["Dense_1"]["kernel"][k] + heads["Dense_1"]["bias"][k])
            ha = relu(h0 @ heads["Dense_3"]["kernel"][k] + heads["Dense_3"]["bias"][k])
            value = hv @ heads["Dense_0"]["kernel"][k] + heads["Dense_0"]["bias"][k]
            advantage = ha @ heads["Dense_2"]["kernel"][k] + heads["Dense_2"]["bias"][k]
            q.append(value + advantage - advantage.mean(-1, keepdims=True))
            cache.append((hv, ha))
    return np.stack(q, axis=1), (x, h0, cache)


def backward(p, cache, dq, num_heads, dueling):
    """Parameter gradients for the output gradient dq [B, K, A] (the original's backward)."""
    x, h0, head_cache = cache
    heads = p["heads"]
    grads = {"body": {}, "heads": {name: {"kernel": np.zeros_like(v["kernel"]),
                                          "bias": np.zeros_like(v["bias"])}
                                   for name, v in heads.items()}}
    dh0 = np.zeros_like(h0)

    def dense(name, k, inputs, dout):
        grads["heads"][name]["kernel"][k] = inputs.T @ dout
        grads["heads"][name]["bias"][k] = dout.sum(0)
        return dout @ heads[name]["kernel"][k].T

    for k in range(num_heads):
        if not dueling:
            h1 = head_cache[k]
            dh1 = dense("Dense_1", k, h1, dq[:, k]) * (h1 > 0)
            dh0 += dense("Dense_0", k, h0, dh1)
        else:
            hv, ha = head_cache[k]
            dvalue = dq[:, k].sum(-1, keepdims=True)                   # Q = V + A - mean A
            dadvantage = dq[:, k] - dq[:, k].mean(-1, keepdims=True)
            dhv = dense("Dense_0", k, hv, dvalue) * (hv > 0)
            dha = dense("Dense_2", k, ha, dadvantage) * (ha > 0)
            # GradientRescale(1/sqrt(2)) before the two streams
            dh0 += (dense("Dense_1", k, h0, dhv) + dense("Dense_3", k, h0, dha)) / math.sqrt(2)
    if num_heads > 1:
        dh0 /= num_heads                                                 # GradientRescale(1/K)
    dz0 = dh0 * (h0 > 0)
    grads["body"]["Dense_0"] = {"kernel": x.T @ dz0, "bias": dz0.sum(0)}
    return grads


def reference_update(c, params, target_params, batch, weights, terminal, reduction):
    """The source's update of ``params`` (numpy, float64) for config ``c``."""
    num_heads, dueling = max(c.bootstraps, 1), c.duel
    p, pt = np_params(params), np_params(target_params)
    obs_tm1, obs_t = np.asarray(batch.obs_tm1, np.float64), np.asarray(batch.obs_t, np.float64)
    actions, rewards = np.asarray(batch.a_tm1), np.asarray(batch.r_t, np.float64)
    masks = np.asarray(batch.mask, np.float64)
    q_tm1, cache = forward(p, obs_tm1, num_heads, dueling)
    q_t_online, _ = forward(p, obs_t, num_heads, dueling)
    q_prime, _ = forward(pt, obs_t, num_heads, dueling)
    q_prime = q_prime * (1.0 - terminal)[:, None, None]        # QPrimes[n]:mul(1 - terminal)
    dq = np.zeros_like(q_tm1)
    for k in range(num_heads):
        count_k = max(masks[:, k].sum(), 1.0)
        for n in range(BATCH):
            a = actions[n]
            select = q_t_online[n, k] if c.double_q else q_prime[n, k]
            y = rewards[n] + c.gamma * q_prime[n, k, np.argmax(select)]
            delta = y - q_tm1[n, k, a]
            if c.pal_alpha > 0:
                q_s, _ = forward(pt, obs_tm1[n:n + 1], num_heads, dueling)
                delta_al = delta - c.pal_alpha * (q_s[0, k].max() - q_s[0, k, a])
                delta = max(delta_al,
                            delta - c.pal_alpha * (q_prime[n, k].max() - q_prime[n, k, a]))
            clipped = np.clip(delta, -c.td_clip, c.td_clip)
            scale = 1.0 if reduction == "sum" else 1.0 / count_k
            dq[n, k, a] = -clipped * weights[n] * masks[n, k] * scale
    grads = backward(p, cache, dq, num_heads, dueling)
    leaves = jax.tree.leaves(grads)
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in leaves))
    if c.grad_clip > 0 and norm > c.grad_clip:                   # gradParamClip
        grads = jax.tree.map(lambda g: g * c.grad_clip / norm, grads)
    assert c.optimiser == "rmspropm"
    m = c.momentum

    def rmspropm(x, d):
        g = (1 - m) * d
        g_sq = (1 - m) * d * d
        return x - c.eta * d / np.sqrt(g_sq - g * g + RMSPROPM_EPSILON)

    return jax.tree.map(rmspropm, p, grads), norm


# ----------------------------------------------------------------------------- the tests

def fixed_batch(num_heads, rng):
    terminal = (rng.random(BATCH) < 0.25).astype(np.float64)
    if num_heads > 1:
        masks = (rng.random((BATCH, num_heads)) < 0.5).astype(np.float32)
        masks[3] = 0.0                                   # a sample no head learns from
        masks[:, 0] = np.where(np.arange(BATCH) < 5, 1.0, 0.0)   # a head with few samples
    else:
        masks = np.ones((BATCH, 1), np.float32)
    return Transition(
        obs_tm1=jnp.asarray(rng.normal(size=(BATCH, OBS_DIM)), jnp.float32),
        a_tm1=jnp.asarray(rng.integers(NUM_ACTIONS, size=BATCH), jnp.int32),
        r_t=jnp.asarray(rng.choice([-1.0, 0.0, 1.0], size=BATCH), jnp.float32),
        discount_t=jnp.asarray(0.99 * (1.0 - terminal), jnp.float32),
        obs_t=jnp.asarray(rng.normal(size=(BATCH, OBS_DIM)), jnp.float32),
        mask=jnp.asarray(masks)), terminal


@pytest.mark.parametrize("preset", list(SOURCES))
def test_preset_names_its_source_reduction(preset):
    assert build_config(preset, {}).loss_reduction == SOURCES[preset][1]


# Each preset as its source updates; and Bootstrapped DQN with the mean, whose heads each
# take the mean over their own masked samples (a single-head DQN's mean rate).
UPDATE_CASES = [(preset, *SOURCES[preset], {}) for preset in SOURCES] + [
    ("bootstrap", "each head's own mean", "mean", {"loss_reduction": "mean"})]


@pytest.mark.parametrize("preset, source, reduction, overrides", UPDATE_CASES,
                         ids=[f"{case[0]}-{case[2]}" for case in UPDATE_CASES])
def test_one_update_matches_the_source(preset, source, reduction, overrides):
    c = build_config(preset, {**SMALL, **overrides})
    spec = types.SimpleNamespace(num_actions=NUM_ACTIONS, obs_shape=(OBS_DIM,),
                                 obs_dtype="float32")
    agent = make_q_agent(agent_settings(c, spec))
    train, _, _ = agent.init(jax.random.PRNGKey(0))
    other, _, _ = agent.init(jax.random.PRNGKey(1))
    # Scale the output layers up so that TD errors fall on both sides of the clip.
    train = train.replace(target_params=jax.tree.map(lambda x: 3.0 * x, other.params),
                          params=jax.tree.map(lambda x: 3.0 * x, train.params))
    rng = np.random.default_rng(sum(map(ord, preset)))
    num_heads = max(c.bootstraps, 1)
    batch, terminal = fixed_batch(num_heads, rng)
    weights = (rng.uniform(0.2, 1.0, BATCH) if c.mem_priority != "none"
               else np.ones(BATCH))
    weights = weights / weights.max()

    new_train, _ = jax.jit(agent.learn)(train, batch, jnp.asarray(weights, jnp.float32))
    want, grad_norm = reference_update(c, train.params, train.target_params, batch, weights,
                                       terminal, reduction)
    got = np_params(new_train.params)
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-7,
                                   err_msg=f"{preset} ({source}): {jax.tree_util.keystr(path)}")
    if c.grad_clip > 0:   # the clip is exercised, on the summed gradient
        assert grad_norm > c.grad_clip, grad_norm
