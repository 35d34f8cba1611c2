"""Prioritised replay (Schaul et al. 2016): the sum tree against a numpy reference, sampling
frequencies and returned probabilities against the intended distributions, the max-priority
rule for new rows, the exclusion of reset rows, exact ranks after updates, vmap over seeds.

Every buffer here holds 64 transitions (32 rows of 2 envs) of 4x4 frames; sampling runs are
jitted and vmapped over keys so 200k draws take well under a second.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxatari.replay import make_replay
from jaxatari.replay.prioritised import (PRIORITY_EPSILON, count_tree_clear, indices_at_ranks,
                                         make_prioritised_replay, ranked_count, running_max,
                                         running_sum, sum_tree_find, sum_tree_from_leaves,
                                         sum_tree_prefix, sum_tree_set)
from jaxatari.replay.storage import Row

NUM_ENVS = 2
NUM_ROWS = 32
CAPACITY = NUM_ROWS * NUM_ENVS
ALPHA = 0.7
GATHER = dict(hist_len=1, n_step=1, gamma=0.99)
BATCH = 64
NUM_DRAWS = 200_000
KINDS = ("proportional", "rank")


def make_row(value: int, valid=True) -> Row:
    valid = np.broadcast_to(np.asarray(valid, bool), (NUM_ENVS,))
    return Row(frame=jnp.full((NUM_ENVS, 4, 4, 1), value, jnp.uint8),
               action=jnp.full((NUM_ENVS,), value % 3, jnp.int32),
               reward=jnp.full((NUM_ENVS,), 0.5, jnp.float32),
               terminal=jnp.zeros((NUM_ENVS,), bool),
               first=jnp.zeros((NUM_ENVS,), bool),
               valid=jnp.asarray(valid),
               mask=jnp.ones((NUM_ENVS, 1), bool))


def make(kind: str, alpha: float = ALPHA, **kwargs):
    return make_prioritised_replay(kind, num_rows=NUM_ROWS, num_envs=NUM_ENVS, gather=GATHER,
                                   alpha=alpha, **kwargs)


def filled(replay, valid_rows=None):
    """A buffer with every row written once; ``valid_rows[r]`` [E] says which entries are valid."""
    add = jax.jit(replay.add)
    state = replay.init(make_row(0))
    for row in range(NUM_ROWS):
        state = add(state, make_row(row, True if valid_rows is None else valid_rows[row]))
    return state


@functools.cache
def batched_sampler(replay):
    """sample(state, keys [K]) -> (flat indices, probabilities), each [K, BATCH], jitted once."""
    return jax.jit(jax.vmap(lambda state, key: replay.sample(state, key, BATCH)[1:],
                            in_axes=(None, 0)))


def draw(replay, state, num_draws=NUM_DRAWS, seed=0):
    """(flat indices, probabilities), each [num_draws], from batches of BATCH."""
    keys = jax.random.split(jax.random.key(seed), num_draws // BATCH)
    indices, probabilities = batched_sampler(replay)(state, keys)
    return np.asarray(indices).ravel(), np.asarray(probabilities).ravel()


def intended_probabilities(kind: str, priorities: np.ndarray) -> np.ndarray:
    """P(i) of Schaul et al. 2016, section 3.3, for raw priorities [C] (0: never drawn)."""
    priorities = np.asarray(priorities, np.float64)
    if kind == "proportional":
        mass = priorities ** ALPHA
    else:
        order = np.argsort(-priorities, kind="stable")
        ranks = np.empty(len(priorities))
        ranks[order] = np.arange(1, len(priorities) + 1)
        mass = np.where(priorities > 0, ranks ** -ALPHA, 0.0)
    return mass / mass.sum()


def assert_frequencies(indices: np.ndarray, expected: np.ndarray):
    counts = np.bincount(indices, minlength=len(expected))
    drawable = expected > 0
    assert counts[~drawable].sum() == 0
    observed, predicted = counts[drawable], expected[drawable] * len(indices)
    assert stats.chisquare(observed, predicted).pvalue > 1e-3


# ------------------------------------------------------------------------------------------
# Sum tree against a numpy reference.
# ------------------------------------------------------------------------------------------

class NumpySumTree:
    """The reference: leaves in a numpy float32 array, written one by one in order."""

    def __init__(self, num_leaves: int):
        self.leaves = np.zeros(num_leaves, np.float32)

    def set(self, indices, values):
        for index, value in zip(indices, values):
            self.leaves[index] = value

    def tree(self) -> np.ndarray:
        levels = [self.leaves]
        while len(levels[-1]) > 1:
            levels.append(levels[-1][0::2] + levels[-1][1::2])
        return np.concatenate([np.zeros(1, np.float32)] + levels[::-1])

    def find(self, targets) -> np.ndarray:
        return np.searchsorted(np.cumsum(self.leaves, dtype=np.float64), targets, side="right")


def test_sum_tree_matches_numpy_reference_after_batched_updates_with_duplicates():
    num_leaves = 128
    rng = np.random.default_rng(0)
    reference = NumpySumTree(num_leaves)
    tree = sum_tree_from_leaves(jnp.zeros(num_leaves, jnp.float32))
    set_leaves = jax.jit(sum_tree_set)
    for update in range(6):
        indices = rng.integers(0, 100, size=32)               # leaves 100..127 stay empty
        indices[5:9] = indices[0]                             # duplicates, some sharing parents
        indices[10], indices[11] = 2 * (indices[12] // 2), 2 * (indices[12] // 2) + 1
        values = rng.uniform(0.0, 3.0, size=32).astype(np.float32)
        values[rng.random(32) < 0.2] = 0.0                    # some leaves drop to zero
        tree = set_leaves(tree, jnp.asarray(indices), jnp.asarray(values))
        reference.set(indices, values)
        np.testing.assert_array_equal(np.asarray(tree), reference.tree())

    total = float(tree[1])
    np.testing.assert_allclose(total, reference.leaves.astype(np.float64).sum(), rtol=1e-6)

    # prefix-sum search, away from interval boundaries where float32 and float64 may disagree
    boundaries = np.cumsum(reference.leaves, dtype=np.float64)
    targets = rng.uniform(0.0, total, size=4000)
    distance = np.min(np.abs(targets[:, None] - boundaries[None, :]), axis=1)
    targets = targets[distance > 1e-4 * total]
    found = np.asarray(jax.jit(sum_tree_find)(tree, jnp.asarray(targets, jnp.float32)))
    np.testing.assert_array_equal(found, reference.find(targets))

    # targets at and past the total (float error) still end on a positive leaf
    edges = jnp.asarray([0.0, total, total * 1.001, 1e9], jnp.float32)
    edge_leaves = np.asarray(sum_tree_find(tree, edges))
    assert np.all(reference.leaves[edge_leaves] > 0)

    counts = np.arange(num_leaves + 1)
    prefixes = np.asarray(sum_tree_prefix(tree, jnp.asarray(counts)))
    expected = np.concatenate([[0.0], boundaries])
    np.testing.assert_allclose(prefixes, expected, rtol=1e-5, atol=1e-5)


def test_count_tree_clear_and_running_scans_match_numpy_reference():
    """The rank replay's 0/1 tree: clearing leaves (repeats, already-zero leaves, siblings)
    by one scatter-add gives the tree rebuilt from the leaves, and the prefix and find walks
    on it and the parallel running sum and max agree with numpy."""
    num_leaves = 128
    rng = np.random.default_rng(3)
    reference = NumpySumTree(num_leaves)
    reference.set(range(100), (rng.random(100) < 0.8).astype(np.float32))   # 100..127 stay 0
    tree = sum_tree_from_leaves(jnp.asarray(reference.leaves))
    clear = jax.jit(count_tree_clear)
    for _ in range(4):
        indices = rng.integers(0, 100, size=32)
        indices[5:9] = indices[0]                             # repeats
        indices[10], indices[11] = 2 * (indices[12] // 2), 2 * (indices[12] // 2) + 1
        tree = clear(tree, jnp.asarray(indices))
        reference.set(indices, np.zeros(32, np.float32))
        np.testing.assert_array_equal(np.asarray(tree), reference.tree())
    counts = np.arange(num_leaves + 1)
    np.testing.assert_array_equal(
        np.asarray(sum_tree_prefix(tree, jnp.asarray(counts))),
        np.concatenate([[0.0], np.cumsum(reference.leaves)]))
    targets = np.arange(int(reference.leaves.sum())) + 0.5
    np.testing.assert_array_equal(
        np.asarray(sum_tree_find(tree, jnp.asarray(targets, jnp.float32))),
        reference.find(targets))
    values = rng.integers(-5, 50, size=(3, 1000))
    np.testing.assert_array_equal(np.asarray(running_sum(jnp.asarray(values))),
                                  np.cumsum(values, axis=-1))
    np.testing.assert_array_equal(np.asarray(running_max(jnp.asarray(values))),
                                  np.maximum.accumulate(values, axis=-1))


# ------------------------------------------------------------------------------------------
# Sampling distributions and returned probabilities.
# ------------------------------------------------------------------------------------------

DISTINCT_TD_ERRORS = np.random.default_rng(1).permutation(np.linspace(0.05, 3.0, CAPACITY))


@pytest.mark.parametrize("kind", KINDS)
def test_frequencies_and_probabilities_match_intended_distribution(kind):
    replay = make(kind)
    state = filled(replay)
    state = jax.jit(replay.update_priorities)(state, jnp.arange(CAPACITY),
                                              jnp.asarray(DISTINCT_TD_ERRORS, jnp.float32))
    expected = intended_probabilities(kind, DISTINCT_TD_ERRORS + PRIORITY_EPSILON)

    indices, probabilities = draw(replay, state)
    assert_frequencies(indices, expected)
    np.testing.assert_allclose(probabilities, expected[indices], rtol=1e-5)


def test_rank_probabilities_are_exact_with_pending_changes_and_after_resorting():
    """Small batches are logged against the sorted snapshot; a full log forces a re-sort."""
    replay = make("rank", rank_log_changes=16)
    update = jax.jit(replay.update_priorities)
    state = update(filled(replay), jnp.arange(CAPACITY), jnp.asarray(DISTINCT_TD_ERRORS))
    td_errors = DISTINCT_TD_ERRORS.copy()
    rng = np.random.default_rng(2)
    for step in range(5):                                   # 8 changes a step: logs, then sorts
        indices = rng.choice(CAPACITY, size=8, replace=False)
        new_errors = rng.uniform(0.0, 4.0, size=8)
        state = update(state, jnp.asarray(indices), jnp.asarray(new_errors, jnp.float32))
        td_errors[indices] = new_errors
        assert int(state.priorities.num_changes) == [8, 16, 0, 8, 16][step]
        expected = intended_probabilities("rank", td_errors + PRIORITY_EPSILON)
        drawn, probabilities = draw(replay, state, num_draws=64 * 400, seed=step)
        np.testing.assert_allclose(probabilities, expected[drawn], rtol=1e-5)
    drawn, _ = draw(replay, state)
    assert_frequencies(drawn, expected)


def test_rank_ties_between_snapshot_and_log_share_their_ranks_one_to_one():
    """Equal priorities in the sorted snapshot and in the log still get distinct ranks: each
    tie group of g entries below h higher ones holds exactly ranks h+1..h+g, one per entry."""
    replay = make("rank", rank_log_changes=16)
    update = jax.jit(replay.update_priorities)
    levels = np.array([0.5, 1.0, 2.0, 3.0])
    td_errors = levels[np.arange(CAPACITY) % 4]
    state = update(filled(replay), jnp.arange(CAPACITY), jnp.asarray(td_errors))  # sorted
    moved = np.array([1, 6, 8, 19, 30, 47, 52, 63])
    td_errors[moved] = levels[[3, 2, 0, 0, 1, 3, 3, 2]]
    state = update(state, jnp.asarray(moved), jnp.asarray(td_errors[moved]))     # logged
    assert int(state.priorities.num_changes) == len(moved)

    indices, probabilities = draw(replay, state)
    power_law = np.arange(1, CAPACITY + 1) ** -ALPHA
    rank_of_probability = {round(float(p), 6): r + 1
                           for r, p in enumerate(power_law / power_law.sum())}
    ranks = {}
    for index, probability in zip(indices, probabilities):
        ranks.setdefault(int(index), set()).add(rank_of_probability[round(float(probability), 6)])
    assert sorted(ranks) == list(range(CAPACITY))                 # every entry drawn
    assert all(len(entry_ranks) == 1 for entry_ranks in ranks.values())
    higher = 0
    for level in levels[::-1]:
        group = np.flatnonzero(td_errors == level)
        group_ranks = sorted(ranks[int(index)].pop() for index in group)
        assert group_ranks == list(range(higher + 1, higher + len(group) + 1))
        higher += len(group)


@pytest.mark.parametrize("log_changes", [16, 5])
def test_rank_order_equals_a_sort_from_scratch_after_random_adds_and_updates(log_changes):
    """The incremental state (snapshot, change log kept in order) against numpy: after every
    add or update, ranks 1..n name the entries of a stable sort of -p from scratch, and every
    new snapshot is that sort. Priorities come from a few levels (ties between the snapshot,
    the log and a batch), batches repeat indices, and rows wrap around a full buffer."""
    replay = make("rank", rank_log_changes=log_changes)
    add, update = jax.jit(replay.add), jax.jit(replay.update_priorities)
    order_at = jax.jit(lambda ranking: indices_at_ranks(ranking, jnp.arange(1, CAPACITY + 1)))
    rng = np.random.default_rng(5)
    state = replay.init(make_row(0))
    priorities = np.zeros(CAPACITY, np.float32)               # the reference, kept by hand
    valid = np.zeros(CAPACITY, bool)
    max_priority = np.float32(1.0)
    row, snapshots = 0, 0
    levels = np.array([0.0, 0.5, 1.0, 2.0, 3.0], np.float32)
    for step in range(160):
        if step < 20 or rng.random() < 0.35:                  # a row: 80 rows wrap twice
            row_valid = rng.random(NUM_ENVS) < 0.8
            state = add(state, make_row(row, row_valid))
            flat = (row % NUM_ROWS) * NUM_ENVS + np.arange(NUM_ENVS)
            priorities[flat] = np.where(row_valid, max_priority, 0.0)
            valid[flat] = row_valid
            row += 1
        else:
            size = int(rng.choice([3, 8, 24]))                # 24: more than the log holds
            indices = rng.integers(0, CAPACITY, size)
            indices[1] = indices[0]                           # a repeated index: last one wins
            td_errors = (levels[rng.integers(0, len(levels), size)] if rng.random() < 0.7
                         else rng.uniform(0.0, 4.0, size).astype(np.float32))
            state = update(state, jnp.asarray(indices), jnp.asarray(td_errors))
            new = np.where(valid[indices], np.abs(td_errors) + np.float32(PRIORITY_EPSILON),
                           np.float32(0.0)).astype(np.float32)
            for index, priority in zip(indices, new):
                priorities[index] = priority
            max_priority = max(max_priority, priorities[indices].max())   # values that stand
        ranking = state.priorities
        np.testing.assert_array_equal(np.asarray(ranking.priorities), priorities)
        expected = np.argsort(-priorities, kind="stable")
        num_ranked = int(np.sum(priorities > 0))
        assert int(ranked_count(ranking)) == num_ranked
        np.testing.assert_array_equal(np.asarray(order_at(ranking))[:num_ranked],
                                      expected[:num_ranked])
        if int(ranking.num_changes) == 0:
            snapshots += 1
            np.testing.assert_array_equal(np.asarray(ranking.sorted_index), expected)
            np.testing.assert_array_equal(np.asarray(ranking.sorted_priority),
                                          priorities[expected])
    assert snapshots >= 10


@pytest.mark.parametrize("kind", KINDS)
def test_updated_top_priority_is_drawn_most_and_ranked_first(kind):
    replay = make(kind)
    state = filled(replay)                                  # every entry at the initial max
    favourite = 37
    state = jax.jit(replay.update_priorities)(
        state, jnp.asarray([3, favourite, 11]), jnp.asarray([0.2, 9.0, 0.1]))
    indices, probabilities = draw(replay, state)
    counts = np.bincount(indices, minlength=CAPACITY)
    assert np.argmax(counts) == favourite
    if kind == "rank":
        top = 1.0 / np.sum(np.arange(1, CAPACITY + 1) ** -ALPHA)
        np.testing.assert_allclose(probabilities[indices == favourite], top, rtol=1e-5)
        # the two lowered entries now hold the last two ranks
        for index, rank in ((3, CAPACITY - 1), (11, CAPACITY)):
            np.testing.assert_allclose(probabilities[indices == index], rank ** -ALPHA * top,
                                       rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Priorities of new rows, reset rows, duplicates.
# ------------------------------------------------------------------------------------------

def raw_priorities(kind: str, state) -> np.ndarray:
    if kind == "rank":
        return np.asarray(state.priorities.priorities)
    leaves = np.asarray(state.priorities.sum_tree)[len(state.priorities.sum_tree) // 2:]
    return leaves[:CAPACITY] ** (1.0 / ALPHA)


@pytest.mark.parametrize("kind", KINDS)
def test_new_rows_enter_at_max_priority_and_reset_rows_at_zero(kind):
    replay = make(kind)
    state = replay.init(make_row(0))
    add = jax.jit(replay.add)
    for row in range(4):
        state = add(state, make_row(row))
    np.testing.assert_allclose(raw_priorities(kind, state)[:8], 1.0, rtol=1e-5)   # p_1 = 1

    state = jax.jit(replay.update_priorities)(state, jnp.arange(8),
                                              jnp.linspace(0.5, 4.0, 8, dtype=jnp.float32))
    state = add(state, make_row(4, valid=[True, False]))
    priorities = raw_priorities(kind, state)
    np.testing.assert_allclose(priorities[8], 4.0 + PRIORITY_EPSILON, rtol=1e-5)
    assert priorities[9] == 0.0
    np.testing.assert_allclose(float(state.priorities.max_priority), 4.0 + PRIORITY_EPSILON)


@pytest.mark.parametrize("alpha", [ALPHA, 0.0])     # alpha = 0: uniform over drawable ones
@pytest.mark.parametrize("kind", KINDS)
def test_reset_rows_are_never_drawn_even_after_an_update(kind, alpha):
    rng = np.random.default_rng(3)
    valid_rows = rng.random((NUM_ROWS, NUM_ENVS)) > 0.25
    replay = make(kind, alpha)
    state = filled(replay, valid_rows)
    reset_entries = np.flatnonzero(~valid_rows.ravel())
    # the agent may pass a TD error for any index; a reset row keeps priority 0
    state = jax.jit(replay.update_priorities)(state, jnp.asarray(reset_entries),
                                              jnp.ones(len(reset_entries)) * 7.0)
    indices, _ = draw(replay, state, num_draws=64 * 500)
    assert not np.isin(indices, reset_entries).any()
    assert np.isin(np.flatnonzero(valid_rows.ravel()), indices).all()


@pytest.mark.parametrize("kind", KINDS)
def test_duplicated_indices_in_an_update_take_the_last_value(kind):
    replay = make(kind)
    state = filled(replay)
    indices = jnp.asarray([5, 9, 5, 5, 9, 20])
    td_errors = jnp.asarray([1.0, 2.0, 3.0, 0.25, 6.0, 0.5])
    for _ in range(2):    # twice: the same answer every time
        updated = jax.jit(replay.update_priorities)(state, indices, td_errors)
        priorities = raw_priorities(kind, updated)
        np.testing.assert_allclose(priorities[[5, 9, 20]],
                                   np.array([0.25, 6.0, 0.5]) + PRIORITY_EPSILON, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Transforms: vmap over seeds equals a loop over seeds; jit traces once.
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_vmap_over_seeds_equals_loop_over_seeds(kind):
    num_seeds, batch = 3, 8
    replay = make(kind, rank_log_changes=16) if kind == "rank" else make(kind)
    axes = replay.seed_axes(replay.init(make_row(0)))
    rows = [jax.tree.map(lambda *x: jnp.stack(x),
                         *[make_row(10 * seed + step, valid=[True, (step + seed) % 3 != 0])
                           for seed in range(num_seeds)]) for step in range(NUM_ROWS + 5)]

    def run(init_row, seed_rows_and_keys, sample, add, update):
        state = init_row
        outputs = []
        for row, key in seed_rows_and_keys:
            state = add(state, row)
            transitions, indices, probabilities = sample(state, key)
            state = update(state, indices, probabilities * 10.0 + indices)
            outputs.append((transitions, indices, probabilities))
        return state, outputs

    keys = jax.random.split(jax.random.key(4), (len(rows), num_seeds))
    sample = lambda state, key: replay.sample(state, key, batch)
    batched_state, batched_outputs = run(
        jax.vmap(replay.init, out_axes=axes)(rows[0]),
        zip(rows, keys),
        jax.jit(jax.vmap(sample, in_axes=(axes, 0))),
        jax.jit(jax.vmap(replay.add, in_axes=(axes, 0), out_axes=axes)),
        jax.jit(jax.vmap(replay.update_priorities, in_axes=(axes, 0, 0), out_axes=axes)))
    single_seed = jax.jit(sample), jax.jit(replay.add), jax.jit(replay.update_priorities)
    for seed in range(num_seeds):
        pick = lambda tree: jax.tree.map(lambda x: x[seed], tree)
        state, outputs = run(replay.init(pick(rows[0])),
                             ((pick(row), key[seed]) for row, key in zip(rows, keys)),
                             *single_seed)
        # indices identical; float results equal up to vectorised-math rounding
        chex.assert_trees_all_close(outputs, [pick(output) for output in batched_outputs],
                                    rtol=1e-6)
        chex.assert_trees_all_equal([output[1] for output in outputs],
                                    [pick(output[1]) for output in batched_outputs])
        per_seed = jax.tree.map(lambda axis, x: x if axis is None else x[seed], axes,
                                batched_state, is_leaf=lambda x: x is None)
        chex.assert_trees_all_close(state, per_seed, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_functions_trace_once_under_jit_and_make_replay_builds_them(kind):
    replay = make_replay(kind, capacity=CAPACITY, num_envs=NUM_ENVS, alpha=ALPHA, **GATHER)
    assert (replay.num_rows, replay.num_envs) == (NUM_ROWS, NUM_ENVS)
    add = jax.jit(chex.assert_max_traces(replay.add, n=1))
    sample = jax.jit(chex.assert_max_traces(replay.sample, n=1), static_argnums=2)
    update = jax.jit(chex.assert_max_traces(replay.update_priorities, n=1))
    state = replay.init(make_row(0))
    for step in range(2 * NUM_ROWS):                        # wraps around the ring
        state = add(state, make_row(step))
        transitions, indices, probabilities = sample(state, jax.random.key(step), 16)
        state = update(state, indices, jnp.abs(transitions.r_t) + step)
    assert indices.dtype == jnp.int32 and probabilities.dtype == jnp.float32
    assert transitions.obs_tm1.shape == (16, 4, 4, GATHER["hist_len"])
    eager = replay.sample(state, jax.random.key(0), 16)
    chex.assert_trees_all_close(eager, sample(state, jax.random.key(0), 16), rtol=1e-6)
