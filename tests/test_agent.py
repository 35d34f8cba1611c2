"""The Q agent and the JAX-native loop: seeds independent at init, jit(vmap(update)) equal
to a per-seed loop, a donation-safe target sync, the learning / target-sync cadence of the
native chunk on Catch, the epsilon schedule and the exploration rules.

Networks are tiny (MLP body with 16 units, hidden 16) and Catch is 8x8, so every compile
takes a second or two on a 2-core CPU.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxatari import exploration
from jaxatari.agents.dqn import QAgentSettings, make_q_agent
from jaxatari.agents.native import (Cadence, init_native_seeds, make_native_chunk,
                                    make_native_evaluate, native_seed_axes)
from jaxatari.envs.catch import make_catch

CATCH_SIZE = 8            # episodes of 7 steps, then one reset step
NUM_ENVS = 2


def settings(**overrides) -> QAgentSettings:
    base = dict(num_actions=3, obs_shape=(CATCH_SIZE, CATCH_SIZE, 1), obs_dtype="uint8",
                hist_len=2, body="mlp", mlp_features=(16,), hidden_size=16, capacity=128,
                num_envs=NUM_ENVS, batch_size=8, learning_rate=1e-3, optimiser="adam")
    base.update(overrides)
    return QAgentSettings(**base)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def seed_slice(tree, s):
    return jax.tree.map(lambda x: x[s], tree)


def map_seeded(function, state, axes):
    """Applies ``function`` to the leaves that carry the seed axis (axes 0, not None)."""
    return jax.tree.map(lambda a, x: x if a is None else function(x), axes, state,
                        is_leaf=lambda a: a is None)


@pytest.fixture(scope="module")
def env():
    return make_catch(size=CATCH_SIZE)


# ----------------------------------------------------------------------------- init

def test_seeds_differ_at_init(env):
    agent = make_q_agent(settings())
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    carry = jax.jit(lambda k: init_native_seeds(agent, env, k))(keys)
    params = carry.train.params
    for leaf in jax.tree.leaves(params):
        assert leaf.shape[0] == 3
    for a, b in ((0, 1), (0, 2), (1, 2)):
        kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                   if "kernel" in jax.tree_util.keystr(path)]     # biases start at zero
        assert len(kernels) == 3
        assert all(not np.array_equal(k[a], k[b]) for k in kernels), (a, b)
        assert not np.array_equal(carry.actor.key[a], carry.actor.key[b])
        assert not np.array_equal(carry.train.key[a], carry.train.key[b])
    # target params start equal to params, in their own buffers
    assert leaves_equal(carry.train.params, carry.train.target_params)
    # replay counters are shared by the seeds, rows are per seed
    assert carry.replay.storage.pos.shape == () and carry.replay.storage.size.shape == ()
    assert carry.replay.storage.rows.frame.shape[:3] == (3, 128 // NUM_ENVS, NUM_ENVS)

    # exploration differs across seeds at epsilon 1 for the same observation
    actor = carry.actor.replace(stack=jnp.broadcast_to(carry.actor.stack[:1],
                                                       carry.actor.stack.shape))
    act = jax.jit(jax.vmap(lambda p, a: agent.act(p, a, 1.0)))
    actions = []
    for _ in range(6):
        chosen, actor = act(params, actor)
        actions.append(np.asarray(chosen))
    actions = np.stack(actions, axis=1)                             # [S, steps, E]
    assert not np.array_equal(actions[0], actions[1])
    assert not np.array_equal(actions[0], actions[2])
    assert not np.array_equal(actions[1], actions[2])
    assert set(np.unique(actions)) == {0, 1, 2}


# ----------------------------------------------------------------------------- update

def fill_replay(agent, replay_state, axes, num_seeds, num_steps, seed):
    """Writes random rows for every seed (an episode start every 7 rows, some terminals)."""
    rng = np.random.default_rng(seed)
    s = agent.settings
    add = jax.jit(jax.vmap(agent.replay.add, in_axes=(axes, 0), out_axes=axes))
    make_row = jax.jit(jax.vmap(agent.make_row))
    for t in range(num_steps):
        shape = (num_seeds, s.num_envs)
        frame = rng.integers(0, 256, size=(*shape, *s.obs_shape)).astype(np.uint8)
        action = rng.integers(0, s.num_actions, size=shape)
        reward = rng.normal(size=shape).astype(np.float32) * 2     # clipped by make_row
        terminal = np.full(shape, t % 7 == 6)
        first = np.full(shape, t % 7 == 0)
        valid = np.ones(shape, bool)
        keys = jax.random.split(jax.random.PRNGKey(1000 + t), num_seeds)
        row = make_row(frame, action, reward, terminal, first, valid, keys)
        replay_state = add(replay_state, row)
    return replay_state


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(num_heads=2, loss="pal", pal_alpha=0.9, double_q=True, dueling=True,
         optimiser="rmspropm", grad_clip=10.0, n_step=3, learning_rate=1e-2),
])
def test_vmapped_update_equals_per_seed_loop(overrides):
    num_seeds = 3
    agent = make_q_agent(settings(**overrides))
    keys = jax.random.split(jax.random.PRNGKey(1), num_seeds)
    example = agent.init(keys[0])
    replay_axes = agent.replay.seed_axes(example[1])
    train, replay_state, _ = jax.vmap(agent.init, out_axes=(0, replay_axes, 0))(keys)
    replay_state = fill_replay(agent, replay_state, replay_axes, num_seeds, 40, seed=2)
    assert int(replay_state.storage.size) == 40
    # rewards were clipped to [-1, 1] on the way in
    assert np.abs(np.asarray(replay_state.storage.rows.reward)).max() <= 1.0
    # bootstrap masks: all ones for one head, Bernoulli(bootstrap_prob) per head otherwise
    written_masks = np.asarray(replay_state.storage.rows.mask)[:, :40]
    if agent.settings.num_heads == 1:
        assert written_masks.all()
    else:
        assert 0.35 < written_masks.mean() < 0.65

    update = jax.jit(jax.vmap(agent.update, in_axes=(0, replay_axes, None),
                              out_axes=(0, replay_axes, 0)))
    batched_train, batched_replay = train, replay_state
    batched_metrics = []
    for _ in range(3):
        batched_train, batched_replay, metrics = update(batched_train, batched_replay, 0.4)
        batched_metrics.append(metrics)

    update_one = jax.jit(agent.update)
    for s in range(num_seeds):
        one_train = seed_slice(train, s)
        one_replay = map_seeded(lambda x: x[s], replay_state, replay_axes)
        for step in range(3):
            one_train, one_replay, metrics = update_one(one_train, one_replay, 0.4)
            for name, value in metrics.items():
                np.testing.assert_allclose(value, batched_metrics[step][name][s], rtol=1e-5,
                                           atol=1e-6, err_msg=f"seed {s} step {step} {name}")
        for got, want in zip(jax.tree.leaves(one_train), jax.tree.leaves(seed_slice(
                batched_train, s))):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the updates did something, differently per seed
    assert not leaves_equal(train.params, batched_train.params)
    assert batched_metrics[0]["loss"][0] != batched_metrics[0]["loss"][1]
    assert np.all(np.asarray(batched_metrics[-1]["loss"]) > 0)


def test_sync_target_copies_into_own_buffers():
    agent = make_q_agent(settings())
    train, replay_state, _ = agent.init(jax.random.PRNGKey(3))
    axes = agent.replay.seed_axes(replay_state)
    replay_state = fill_replay(agent, map_seeded(lambda x: x[None], replay_state, axes),
                               axes, 1, 20, seed=4)
    replay_state = map_seeded(lambda x: x[0], replay_state, axes)
    train, replay_state, _ = jax.jit(agent.update)(train, replay_state, 0.0)
    assert not leaves_equal(train.params, train.target_params)

    for sync in (agent.sync_target, jax.jit(agent.sync_target)):
        synced = sync(train)
        assert leaves_equal(synced.params, synced.target_params)
        assert leaves_equal(synced.params, train.params)
        for p, t in zip(jax.tree.leaves(synced.params), jax.tree.leaves(synced.target_params)):
            assert p is not t
            assert p.unsafe_buffer_pointer() != t.unsafe_buffer_pointer()
    # donation-safe: freeing the params' buffers leaves the target intact
    synced = agent.sync_target(train)
    target_before = jax.tree.map(np.asarray, synced.target_params)
    for leaf in jax.tree.leaves(synced.params):
        leaf.delete()
    assert leaves_equal(target_before, synced.target_params)
    # and a donating update accepts init's state and a freshly synced one
    donating = jax.jit(agent.update, donate_argnums=0)
    for seed in (5, 6):
        fresh, _, _ = agent.init(jax.random.PRNGKey(seed))
        state = fresh if seed == 5 else agent.sync_target(fresh)
        updated, _, _ = donating(state, replay_state, 0.0)
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.target_params))
        assert not leaves_equal(updated.params, updated.target_params)


# ----------------------------------------------------------------------------- native chunk

def expected_learns(t, num_envs, learn_start, update_every):
    return (t + 1) * num_envs >= learn_start and t % update_every == 0


def expected_syncs(t, num_envs, learn_start, target_period):
    """A sync after the iteration whose steps reach a multiple of target_period."""
    steps_after = (t + 1) * num_envs
    crossed = any(step % target_period == 0
                  for step in range(t * num_envs + 1, steps_after + 1))
    return steps_after >= learn_start and crossed


def test_cadence_rules():
    c = Cadence(num_envs=2, learn_start=42, update_every=2, updates_per_learn=2,
                target_period=14, epsilon_start=1.0, epsilon_end=0.1, epsilon_steps=100,
                beta_zero=0.4, total_steps=300)
    learns = [bool(c.learns(t)) for t in range(150)]
    syncs = [bool(c.syncs(t)) for t in range(150)]
    assert learns == [expected_learns(t, 2, 42, 2) for t in range(150)]
    assert syncs == [expected_syncs(t, 2, 42, 14) for t in range(150)]
    assert not any(learns[:20]) and learns[20] and not learns[21] and learns[22]
    # learning starts on the iteration whose steps reach learn_start
    every = dataclasses.replace(c, update_every=1)
    assert [t for t in range(25) if every.learns(t)] == list(range(20, 25))
    assert [t for t in range(60) if syncs[t]] == [20, 27, 34, 41, 48, 55]
    # one env: a sync every target_period steps exactly
    one = dataclasses.replace(c, num_envs=1, learn_start=0, target_period=5)
    assert [t for t in range(30) if one.syncs(t)] == [4, 9, 14, 19, 24, 29]
    # beta anneals from beta_zero at learn_start to 1 at the end
    np.testing.assert_allclose(c.beta(0), 0.4)
    np.testing.assert_allclose(c.beta(42), 0.4)
    np.testing.assert_allclose(c.beta(171), 0.7)
    np.testing.assert_allclose(c.beta(300), 1.0)
    np.testing.assert_allclose(c.beta(1000), 1.0)


def test_native_chunk_cadence_on_catch(env):
    num_seeds, chunk_length, num_chunks = 2, 5, 30        # 150 iterations: 300 steps per seed
    learn_start, update_every, updates_per_learn, target_period = 42, 2, 2, 14
    agent = make_q_agent(settings())
    cadence = Cadence(num_envs=NUM_ENVS, learn_start=learn_start, update_every=update_every,
                      updates_per_learn=updates_per_learn, target_period=target_period,
                      epsilon_start=1.0, epsilon_end=0.1, epsilon_steps=100, beta_zero=0.0,
                      total_steps=300)
    carry = jax.jit(lambda k: init_native_seeds(agent, env, k))(
        jax.random.split(jax.random.PRNGKey(6), num_seeds))
    chunk = jax.jit(make_native_chunk(agent, env, cadence, chunk_length))

    learned, finished, scores, losses = [], [], [], []
    last_learn, last_sync = -1, -1
    syncs_seen = 0
    for c in range(num_chunks):
        first = c * chunk_length
        params_before = carry.train.params
        carry, out = chunk(carry, jnp.int32(first))
        iterations = range(first, first + chunk_length)
        want = [expected_learns(t, NUM_ENVS, learn_start, update_every) for t in iterations]
        np.testing.assert_array_equal(out["learned"], want, err_msg=f"chunk {c}")
        for t in iterations:
            if want[t - first]:
                last_learn = t
            if expected_syncs(t, NUM_ENVS, learn_start, target_period):
                last_sync, syncs_seen = t, syncs_seen + 1
        # params move only in chunks that learned
        assert leaves_equal(params_before, carry.train.params) == (not any(want)), c
        # the target equals the online network iff no update came after the last sync
        in_sync = last_learn <= last_sync or last_learn == -1
        for s in range(num_seeds):
            assert leaves_equal(seed_slice(carry.train.params, s),
                                seed_slice(carry.train.target_params, s)) == in_sync, (c, s)
        learned.append(np.asarray(out["learned"]))
        finished.append(np.asarray(out["finished"]))
        scores.append(np.asarray(out["scores"]))
        losses.append(np.asarray(out["loss"]))
    learned, finished = np.concatenate(learned), np.concatenate(finished)
    scores, losses = np.concatenate(scores), np.concatenate(losses)
    assert not learned[:20].any() and learned.sum() == len(range(20, 150, 2))
    assert syncs_seen == len(range(20, 150, 7)) and syncs_seen > 10

    # updates_per_learn minibatch updates at each learning step: adam counts them
    counts = [leaf for leaf in jax.tree.leaves(carry.train.opt_state)
              if leaf.dtype == jnp.int32]
    assert counts and all(np.all(np.asarray(n) == learned.sum() * updates_per_learn)
                          for n in counts)
    # losses are reported on learning iterations only
    assert np.all(losses[~learned] == 0) and np.all(losses[learned] > 0)
    assert losses.shape == (150, num_seeds)

    # Catch 8x8: episodes of 7 steps, then a reset step, in every env of every seed
    want_finished = np.array([(t % 8) == 6 for t in range(150)])
    assert finished.shape == (150, num_seeds, NUM_ENVS)
    np.testing.assert_array_equal(finished, want_finished[:, None, None]
                                  .repeat(num_seeds, 1).repeat(NUM_ENVS, 2))
    assert set(np.unique(scores[finished])) <= {0.0, 1.0}
    # the replay follows the next-step reset convention: reset rows invalid, then a first row
    storage = carry.replay.storage
    num_rows = storage.rows.valid.shape[1]
    assert int(storage.size) == num_rows and int(storage.pos) == 150 % num_rows
    times = np.array([max(t for t in range(150) if t % num_rows == r) for r in range(num_rows)])
    np.testing.assert_array_equal(np.asarray(storage.rows.valid),
                                  np.broadcast_to((times % 8 != 7)[None, :, None],
                                                  storage.rows.valid.shape))
    np.testing.assert_array_equal(np.asarray(storage.rows.first),
                                  np.broadcast_to((times % 8 == 0)[None, :, None],
                                                  storage.rows.first.shape))
    np.testing.assert_array_equal(np.asarray(storage.rows.terminal),
                                  np.broadcast_to((times % 8 == 6)[None, :, None],
                                                  storage.rows.terminal.shape))
    # seeds stayed independent
    assert not leaves_equal(seed_slice(carry.train.params, 0), seed_slice(carry.train.params, 1))

    # evaluation plays fresh envs: 2 finished episodes per env in 20 steps
    evaluate = jax.jit(make_native_evaluate(agent, env, num_envs=3, num_steps=20,
                                            epsilon=0.0))
    total, episodes, partial = evaluate(seed_slice(carry.train.params, 0),
                                        jax.random.PRNGKey(7))
    assert int(episodes) == 6 and 0.0 <= float(total) <= 6.0
    assert float(partial) == 0.0     # the running episodes have not reached the bottom yet


def test_native_seed_axes_share_replay_counters(env):
    agent = make_q_agent(settings())
    carry = jax.eval_shape(lambda k: init_native_seeds(agent, env, k),
                           jax.random.split(jax.random.PRNGKey(8), 2))
    axes = native_seed_axes(agent, carry)
    assert axes.replay.storage.pos is None and axes.replay.storage.size is None
    assert axes.train.params is not None and all(
        a == 0 for a in jax.tree.leaves(axes.train.params))


# ----------------------------------------------------------------------------- exploration

def test_linear_epsilon_schedule():
    kwargs = dict(start=1.0, end=0.1, decay_steps=100, learn_start=50)
    for step, want in [(0, 1.0), (49, 1.0), (50, 1.0), (75, 0.775), (100, 0.55), (150, 0.1),
                       (151, 0.1), (10_000, 0.1)]:
        np.testing.assert_allclose(exploration.linear_epsilon(step, **kwargs), want, rtol=1e-6)
        np.testing.assert_allclose(exploration.linear_epsilon(jnp.int32(step), **kwargs), want,
                                   rtol=1e-6)
    jitted = jax.jit(lambda s: exploration.linear_epsilon(s, **kwargs))
    steps = np.arange(0, 300)
    got = np.asarray(jax.vmap(jitted)(jnp.asarray(steps)))
    want = np.where(steps < 50, 1.0, np.maximum(1.0 - 0.9 * (steps - 50) / 100, 0.1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(got) <= 1e-7)
    cadence = Cadence(num_envs=1, learn_start=50, update_every=1, updates_per_learn=1,
                      target_period=10, epsilon_start=1.0, epsilon_end=0.1, epsilon_steps=100,
                      beta_zero=0.0, total_steps=300)
    np.testing.assert_allclose(cadence.epsilon(100), 0.55, rtol=1e-6)


def test_greedy_with_random_ties_is_uniform_over_ties():
    q = jnp.array([[1.0, 3.0, 3.0, 0.0, 3.0], [5.0, 1.0, 2.0, 0.0, 4.0]])
    keys = jax.random.split(jax.random.PRNGKey(9), 6000)
    actions = np.asarray(jax.jit(jax.vmap(exploration.greedy_with_random_ties,
                                          in_axes=(0, None)))(keys, q))
    counts = np.bincount(actions[:, 0], minlength=5)
    assert counts[0] == counts[3] == 0
    np.testing.assert_allclose(counts[[1, 2, 4]] / 6000, 1 / 3, atol=0.03)
    assert np.all(actions[:, 1] == 0)


def test_epsilon_greedy_extremes():
    q = jnp.array([[0.0, 2.0, 1.0, -1.0]] * 4)
    keys = jax.random.split(jax.random.PRNGKey(10), 4000)
    run = jax.jit(jax.vmap(exploration.epsilon_greedy, in_axes=(0, None, None)))
    greedy = np.asarray(run(keys, q, 0.0))
    assert greedy.dtype == np.int32 and np.all(greedy == 1)
    uniform = np.asarray(run(keys, q, 1.0)).ravel()
    np.testing.assert_allclose(np.bincount(uniform, minlength=4) / uniform.size, 0.25,
                               atol=0.02)
    half = np.asarray(run(keys, q, 0.5)).ravel()
    # greedy w.p. 1 - eps + eps / A
    np.testing.assert_allclose(np.mean(half == 1), 0.5 + 0.5 / 4, atol=0.02)


def test_select_head_and_majority_vote():
    q = jnp.array([
        [[0.0, 1.0, 0.5], [0.0, 0.9, 2.0], [0.0, 3.0, 0.1], [9.0, 0.0, 0.0]],   # votes 1,2,1,0
        [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]],   # tie 0 and 2
    ])
    np.testing.assert_array_equal(exploration.select_head(q, jnp.array([1, 3])),
                                  np.asarray(q)[[0, 1], [1, 3]])
    keys = jax.random.split(jax.random.PRNGKey(11), 2000)
    counts = jax.jit(jax.vmap(exploration.majority_vote, in_axes=(0, None)))(keys, q)
    actions = np.asarray(jax.vmap(exploration.greedy_with_random_ties)(keys, counts))
    # the most voted action wins, whatever the Q-values' magnitudes
    assert np.all(actions[:, 0] == 1)
    np.testing.assert_allclose(np.asarray(counts[0, 0]).round(), [1, 2, 1])
    # a tie in votes is broken at random between the tied actions only
    assert set(np.unique(actions[:, 1])) == {0, 2}
    np.testing.assert_allclose(np.mean(actions[:, 1] == 0), 0.5, atol=0.05)
    # ... by majority_vote itself: a plain argmax of its output is already random
    plain = np.asarray(jnp.argmax(counts, axis=-1))
    assert np.all(plain[:, 0] == 1) and set(np.unique(plain[:, 1])) == {0, 2}


def test_optax_state_has_a_step_counter():
    """Guards the count check in the native chunk test (adam keeps an int32 count)."""
    state = optax.adam(1e-3).init({"w": jnp.zeros(2)})
    assert any(leaf.dtype == jnp.int32 for leaf in jax.tree.leaves(state))


def test_a_masked_chunk_equals_a_shorter_one(env):
    """A run's last, shorter chunk reuses the compiled full chunk with its tail masked: the
    first ``active`` iterations are those of a chunk of that length, the rest change nothing."""
    agent = make_q_agent(settings())
    cadence = Cadence(num_envs=NUM_ENVS, learn_start=8, update_every=1, updates_per_learn=1,
                      target_period=6, epsilon_start=1.0, epsilon_end=0.1, epsilon_steps=50,
                      beta_zero=0.0, total_steps=200)
    init = jax.jit(lambda k: init_native_seeds(agent, env, k))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    full = jax.jit(make_native_chunk(agent, env, cadence, 12))
    short = jax.jit(make_native_chunk(agent, env, cadence, 5))
    masked_carry, masked_out = full(init(keys), jnp.int32(4), jnp.int32(5))
    short_carry, short_out = short(init(keys), jnp.int32(4))
    assert leaves_equal(masked_carry, short_carry)
    for name, values in masked_out.items():
        np.testing.assert_array_equal(values[:5], short_out[name], err_msg=name)
        assert not np.asarray(values[5:]).any(), name
    # one compiled program for every active length
    full(init(keys), jnp.int32(0), jnp.int32(12))
    assert full._cache_size() == 1
