"""Prioritised experience replay (Schaul et al. 2016, "Prioritized Experience Replay"), both kinds.

``make_prioritised_replay`` returns the same ``Replay`` record as uniform replay; every function
is pure, jittable and vmappable over a leading seed axis (see ``Replay.seed_axes``).

* **Proportional** (Schaul et al. 2016, section 3.3, "proportional prioritization"):
  P(i) = p_i^alpha / sum_k p_k^alpha with p_i = |delta_i| + epsilon. The p^alpha values live in the
  leaves of a sum tree (Schaul et al. 2016, appendix B.2), so sampling and updating cost
  O(log C) per transition.
* **Rank-based** (Schaul et al. 2016, section 3.3, "rank-based prioritization"; the prioritised
  replay of the original Kaixhin/Atari): P(i) = rank(i)^-alpha / sum_{k=1..n} k^-alpha with rank 1
  the highest priority among the n transitions of nonzero priority. The ranks are exact at every
  sample, those of a stable sort of -p from scratch (ties by flat index), with no sort at sample
  time: a sorted snapshot and a sorted log of the changes since are kept by merging (see
  ``RankState``); the log is merged into the snapshot whenever it is full.

Both kinds draw one transition from each of B strata of equal probability mass (stratified
sampling, Schaul et al. 2016, appendix B.2), give new transitions the largest priority seen so
far (Schaul et al. 2016, algorithm 1, line 6) and give priority 0 to rows that are not transitions
(reset steps), so those are never drawn. Flat indices are ``row * E + env`` as in the storage.

Deliberate differences from the original's rank-based replay (KA:Experience.lua), which kept a
binary heap, used the heap's array order as an approximate ranking, re-sorted it every ``memSize``
steps, drew ranks uniformly inside each stratum and weighted them by the power law:
here ranks are exact (ties by flat index), ranks are drawn from the power law itself
inside each stratum (so the returned probability is the one they were drawn with), and priorities
are the unclipped |TD error|.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxatari.replay import Replay, ReplayState
from jaxatari.replay.storage import (Row, gather_batch, init_storage, storage_seed_axes,
                                     write_row)

PRIORITISED_KINDS = ("proportional", "rank")

# Schaul et al. 2016, section 3.3: p_i = |delta_i| + epsilon keeps a transition whose TD error is
# zero drawable; priority 0 is kept for rows that are not transitions.
PRIORITY_EPSILON = 1e-6
# Schaul et al. 2016, algorithm 1: the first transition enters with p_1 = 1.
INITIAL_MAX_PRIORITY = 1.0


# ----------------------------------------------------------------------------------------------
# Sum tree (Schaul et al. 2016, appendix B.2) as one flat array: node 1 is the root, node n has
# children 2n and 2n + 1, and the L leaves (L = C rounded up to a power of two) are nodes L..2L-1.
# Node 0 is unused. Each internal node holds the float32 sum of its two children, recomputed as
# ``left + right`` (never by adding deltas), so the tree is exactly what a bottom-up rebuild gives.
# ----------------------------------------------------------------------------------------------

def sum_tree_num_leaves(capacity: int) -> int:
    """The number of leaves L: ``capacity`` rounded up to a power of two."""
    return 1 << max(capacity - 1, 0).bit_length()


def _sum_tree_depth(tree: jax.Array) -> int:
    return (tree.shape[-1] // 2).bit_length() - 1


def sum_tree_from_leaves(leaves: jax.Array) -> jax.Array:
    """Builds the tree [2L] from the leaf values [L] (L a power of two), level by level."""
    levels = [leaves]
    while levels[-1].shape[0] > 1:
        below = levels[-1]
        levels.append(below[0::2] + below[1::2])
    return jnp.concatenate([jnp.zeros((1,), leaves.dtype)] + levels[::-1])


def last_write_wins(indices: jax.Array, values: jax.Array) -> jax.Array:
    """The value each of ``indices`` [K] ends up with when ``values`` [K] are written in order.

    A scatter with duplicated indices has no defined order, so every duplicate is given the value
    of the last occurrence, which makes the scatter deterministic (O(K log K) by a stable sort).
    """
    num_writes = indices.shape[0]
    order = jnp.argsort(indices, stable=True)                 # duplicates adjacent, in write order
    sorted_indices = indices[order]
    ends_group = jnp.concatenate([sorted_indices[1:] != sorted_indices[:-1], jnp.array([True])])
    positions = jnp.arange(num_writes, dtype=jnp.int32)
    # the position of the last write of each group, for every member of the group
    group_last = jax.lax.cummin(jnp.where(ends_group, positions, num_writes), reverse=True)
    winner = jnp.zeros(num_writes, jnp.int32).at[order].set(order[group_last].astype(jnp.int32))
    return values[winner]


def sum_tree_set(tree: jax.Array, leaf_indices: jax.Array, values: jax.Array) -> jax.Array:
    """Sets leaves [K] (last write wins) and recomputes their ancestors: O(K log C).

    Parents are recomputed level by level from both children after the whole level below was
    written, so the result is exact when several changed leaves share a parent.
    """
    num_leaves = tree.shape[-1] // 2
    nodes = leaf_indices + num_leaves                                            # [K]
    tree = tree.at[nodes].set(last_write_wins(leaf_indices, values))

    def recompute_parents(_, carry):
        tree, nodes = carry
        nodes = nodes // 2
        return tree.at[nodes].set(tree[2 * nodes] + tree[2 * nodes + 1]), nodes

    tree, _ = jax.lax.fori_loop(0, _sum_tree_depth(tree), recompute_parents, (tree, nodes))
    return tree


def sum_tree_find(tree: jax.Array, targets: jax.Array) -> jax.Array:
    """The leaf [B] whose prefix-sum interval [mass before it, + its value) holds each target [B].

    Descends from the root, one tree level per fori_loop step, vectorised over the targets
    (Schaul et al. 2016, appendix B.2). Float rounding can leave a target at or beyond a node's
    mass, so the descent only enters a child of positive mass: it never ends on a zero leaf while
    the total is positive (a target past the total ends on the last positive leaf).
    """
    def descend(_, carry):
        nodes, remaining = carry
        left, right = tree[2 * nodes], tree[2 * nodes + 1]
        go_right = ((remaining >= left) & (right > 0)) | (left <= 0)
        return 2 * nodes + go_right, jnp.where(go_right, remaining - left, remaining)

    start = (jnp.ones_like(targets, dtype=jnp.int32), targets)
    nodes, _ = jax.lax.fori_loop(0, _sum_tree_depth(tree), descend, start)
    return nodes - tree.shape[-1] // 2


def sum_tree_prefix(tree: jax.Array, counts: jax.Array) -> jax.Array:
    """The sum of the first ``counts`` [M] leaves (0..L), by climbing from leaf ``counts``.

    Whenever the climbing node is a right child, its left sibling's subtree lies wholly before it.
    """
    num_leaves = tree.shape[-1] // 2

    def climb(_, carry):
        nodes, total = carry
        total = total + jnp.where(nodes % 2 == 1, tree[nodes - 1], 0.0)
        return nodes // 2, total

    start = (jnp.minimum(counts, num_leaves - 1) + num_leaves, jnp.zeros(counts.shape, tree.dtype))
    _, total = jax.lax.fori_loop(0, _sum_tree_depth(tree), climb, start)
    return jnp.where(counts >= num_leaves, tree[1], total)


# ----------------------------------------------------------------------------------------------
# Priority bookkeeping shared by both kinds.
# ----------------------------------------------------------------------------------------------

def _new_row_priorities(row: Row, max_priority: jax.Array) -> jax.Array:
    """[E] new transitions enter at the largest priority so far (Schaul et al. 2016, alg. 1 line 6);
    reset steps are not transitions and get 0, so they are never drawn."""
    return jnp.where(row.valid, max_priority, 0.0).astype(jnp.float32)


def _updated_priorities(state: ReplayState, num_envs: int, flat_indices: jax.Array,
                        td_errors: jax.Array) -> jax.Array:
    """[B] p = |delta| + epsilon (Schaul et al. 2016, section 3.3), 0 for rows that are reset steps,
    with the last of duplicated indices applied to all of them."""
    stored_valid = state.storage.rows.valid[flat_indices // num_envs, flat_indices % num_envs]
    priorities = jnp.where(stored_valid, jnp.abs(td_errors) + PRIORITY_EPSILON, 0.0)
    return last_write_wins(flat_indices, priorities.astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# Proportional prioritisation (Schaul et al. 2016, section 3.3 and appendix B.2).
# ----------------------------------------------------------------------------------------------

@struct.dataclass
class ProportionalState:
    sum_tree: jax.Array       # [2L] float32, leaves hold p^alpha of flat index i at node L + i
    max_priority: jax.Array   # [] float32, the largest p so far (before the exponent)


def _make_proportional(num_rows: int, num_envs: int, gather: Callable, alpha: float) -> Replay:
    capacity = num_rows * num_envs
    num_leaves = sum_tree_num_leaves(capacity)

    def leaf_mass(priorities: jax.Array) -> jax.Array:
        """p^alpha, and 0 for p = 0 even when alpha = 0 (uniform over drawable transitions)."""
        return jnp.where(priorities > 0, priorities ** alpha, 0.0)

    def init(example: Row) -> ReplayState:
        return ReplayState(
            storage=init_storage(example, num_rows),
            priorities=ProportionalState(sum_tree=jnp.zeros(2 * num_leaves, jnp.float32),
                                         max_priority=jnp.float32(INITIAL_MAX_PRIORITY)))

    def add(state: ReplayState, row: Row) -> ReplayState:
        proportional = state.priorities
        new_indices = state.storage.pos * num_envs + jnp.arange(num_envs, dtype=jnp.int32)  # [E]
        priorities = _new_row_priorities(row, proportional.max_priority)
        tree = sum_tree_set(proportional.sum_tree, new_indices, leaf_mass(priorities))
        return ReplayState(storage=write_row(state.storage, row),
                           priorities=proportional.replace(sum_tree=tree))

    def sample(state: ReplayState, key: jax.Array, batch_size: int):
        # Stratified sampling (Schaul et al. 2016, appendix B.2): the total mass is split into
        # B equal segments and one uniform point is drawn in each.
        tree = state.priorities.sum_tree
        total = tree[1]
        offsets = jax.random.uniform(key, (batch_size,), jnp.float32)
        targets = (jnp.arange(batch_size, dtype=jnp.float32) + offsets) * (total / batch_size)
        flat_indices = jnp.minimum(sum_tree_find(tree, targets), capacity - 1).astype(jnp.int32)
        smallest_total = jnp.finfo(jnp.float32).tiny              # an empty tree gives P = 0
        probabilities = tree[num_leaves + flat_indices] / jnp.maximum(total, smallest_total)
        transitions, _ = gather(state.storage, flat_indices)
        return transitions, flat_indices, probabilities

    def update_priorities(state: ReplayState, flat_indices: jax.Array, td_errors: jax.Array):
        proportional = state.priorities
        priorities = _updated_priorities(state, num_envs, flat_indices, td_errors)
        return state.replace(priorities=ProportionalState(
            sum_tree=sum_tree_set(proportional.sum_tree, flat_indices, leaf_mass(priorities)),
            max_priority=jnp.maximum(proportional.max_priority, jnp.max(priorities))))

    def seed_axes(state: ReplayState) -> ReplayState:
        return ReplayState(storage=storage_seed_axes(state.storage),
                           priorities=ProportionalState(sum_tree=0, max_priority=0))

    return Replay(init=init, add=add, sample=sample, update_priorities=update_priorities,
                  seed_axes=seed_axes, num_rows=num_rows, num_envs=num_envs)


# ----------------------------------------------------------------------------------------------
# Rank-based prioritisation (Schaul et al. 2016, section 3.3; KA:Experience.lua).
#
# Ranks follow one total order, the key (priority descending, flat index ascending): exactly
# the order of a stable sort of -priorities from scratch. Sorting C priorities costs
# O(C log C) (about 0.3 s for C = 1e6 on a 2-core CPU), so nothing is sorted at sample time.
# The state keeps
#   * a snapshot: all C flat indices in key order by their priorities at the time it was made;
#   * the holes: the snapshot positions of the entries changed since (increasing);
#   * the log: the changed entries, one per index, in key order by their current priorities,
#     each with the number of unchanged snapshot entries before its key (``unchanged before``).
# Every entry is either unchanged (in the snapshot, not a hole) or in the log, once.
# A logged entry of priority > 0 at log slot s has rank s + 1 + its unchanged-before count
# (the entries of priority 0 end the log and the snapshot), so sampling needs no work over
# the log: rank r is a logged entry's if r is among those M increasing numbers (a search),
# else the (r - logged ranks below r)-th unchanged snapshot entry, whose position is that
# ordinal plus the holes at or before it (a search of holes[t] - t): O(B log M).
# A batch of K changes is merged into the log and the holes by searches and gathers, with no
# sort and no work over C: each change's old key is found in the log (the entry it replaces)
# or in the snapshot (a new hole), its new key's place in the log and in the snapshot by
# binary searches, and the kept entries' unchanged-before counts drop by the new holes below
# them: O(K log C + M log K). When the log cannot take the next batch, log and batch are
# merged into a new snapshot by counting (each output position takes the logged entry placed
# there or the next unchanged snapshot entry): O(C), no sort. Only a single batch larger than
# the log (e.g. setting every priority at once) is sorted from scratch.
# ----------------------------------------------------------------------------------------------

@struct.dataclass
class RankState:
    priorities: jax.Array        # [C] float32, current p of every flat index (0: not drawable)
    max_priority: jax.Array      # [] float32, the largest p so far
    sorted_index: jax.Array      # [C] int32, the snapshot: flat indices in key order
    sorted_priority: jax.Array   # [C] float32, their priorities at the snapshot (non-increasing)
    snapshot_ranked: jax.Array   # [] int32, snapshot entries of priority > 0 (the first ones)
    holes: jax.Array             # [M] int32, snapshot positions of the entries changed since the
                                 # snapshot, increasing; slot t >= num_logged holds C + t
    log_index: jax.Array         # [M] int32, the changed indices in key order by their current
                                 # priorities; slots from num_logged on hold C
    log_priority: jax.Array      # [M] float32, their current priorities; -1 in unused slots
    log_snapshot_count: jax.Array    # [M] int32, snapshot entries (changed or not) before each
                                     # logged key; C in unused slots
    log_unchanged_before: jax.Array  # [M] int32, unchanged snapshot entries before each logged
                                     # key; C in unused slots
    num_logged: jax.Array        # [] int32, indices changed since the snapshot (= holes)
    num_changes: jax.Array       # [] int32, changes since the snapshot, repeats included; depends
                                 # only on call shapes, so it is identical across seeds and stays
                                 # unbatched under vmap


def rank_log_size(capacity: int) -> int:
    """Default M, the changes logged between two snapshots.

    A batch of changes costs O(M log K) in the log and a snapshot (O(C), a merge) is made every
    M changes; M ~ 4 sqrt(C) keeps both small on CPU: 4096 for C = 1e6, 1024 for 64k.
    """
    return min(capacity, sum_tree_num_leaves(int(4 * math.sqrt(capacity))))


def _key_before(priority_a, index_a, priority_b, index_b) -> jax.Array:
    """Whether key a comes before key b: higher priority first, ties by lower flat index."""
    return (priority_a > priority_b) | ((priority_a == priority_b) & (index_a < index_b))


def count_keys_before(sorted_priority: jax.Array, sorted_index: jax.Array,
                      priority: jax.Array, index: jax.Array) -> jax.Array:
    """[Q] how many of the N entries (``sorted_priority``, ``sorted_index``) [N], in key order,
    come before each query key (``priority``, ``index``) [Q]: a binary search on the pair, like
    ``searchsorted(side="left")`` on one array, in ``N.bit_length()`` vectorised steps
    (unrolled: on CPU a loop's steps cost more than the few queries' work in them)."""
    size = sorted_priority.shape[0]

    def halve(_, bounds):
        low, high = bounds                                    # the count lies in [low, high]
        middle = (low + high) // 2
        probe = jnp.minimum(middle, size - 1)
        open_ = low < high
        before = _key_before(sorted_priority[probe], sorted_index[probe], priority, index)
        return (jnp.where(open_ & before, middle + 1, low),
                jnp.where(open_ & ~before, middle, high))

    start = (jnp.zeros(priority.shape, jnp.int32), jnp.full(priority.shape, size, jnp.int32))
    count, _ = jax.lax.fori_loop(0, size.bit_length(), halve, start, unroll=True)
    return count


def _count_below(sorted_values: jax.Array, queries: jax.Array, side: str = "left") -> jax.Array:
    """[Q] how many of ``sorted_values`` [N] (non-decreasing) are below (``side="left"``) or
    at most (``"right"``) each query [Q]: a binary search in ``N.bit_length()`` vectorised
    steps (``jnp.searchsorted`` under vmap over seeds was many times dearer on CPU)."""
    size = sorted_values.shape[0]
    queries = jnp.asarray(queries)

    def halve(_, bounds):
        low, high = bounds                                    # the count lies in [low, high]
        middle = (low + high) // 2
        probe = sorted_values[jnp.minimum(middle, size - 1)]
        below = probe < queries if side == "left" else probe <= queries
        open_ = low < high
        return (jnp.where(open_ & below, middle + 1, low),
                jnp.where(open_ & ~below, middle, high))

    start = (jnp.zeros(queries.shape, jnp.int32), jnp.full(queries.shape, size, jnp.int32))
    count, _ = jax.lax.fori_loop(0, size.bit_length(), halve, start, unroll=True)
    return count


def _count_below_few(sorted_values: jax.Array, queries: jax.Array,
                     side: str = "left") -> jax.Array:
    """``_count_below`` for few ``sorted_values`` [K] (a batch): all Q x K comparisons at once,
    one fused kernel (cheaper on CPU than a search for Q ~ M, K ~ 32)."""
    below = (sorted_values[None, :] < queries[:, None] if side == "left"
             else sorted_values[None, :] <= queries[:, None])
    return jnp.sum(below, axis=1, dtype=jnp.int32)


def _counts_up_to(values: jax.Array, size: int) -> jax.Array:
    """[size] how many of ``values`` [N] are at most each of 0..size-1 (values >= size are
    left out): a histogram and its running sum, O(size + N) (cheaper on CPU than ``size``
    searches)."""
    histogram = jnp.zeros(size, jnp.int32).at[values].add(1, mode="drop")
    return jnp.cumsum(histogram, dtype=jnp.int32)


def _batch_order(before: jax.Array, valid: jax.Array) -> jax.Array:
    """[K] each entry's place when the ``valid`` [K] entries come first, ordered by
    ``before`` [K, K] (``before[k, j]``: entry j precedes entry k; a strict total order on the
    valid ones), and the others after them in batch order: a permutation of 0..K-1 by counting
    (K is a minibatch, K^2 is small)."""
    num_entries = valid.shape[0]
    position = jnp.arange(num_entries)
    invalid_before = ~valid[None, :] & (position[None, :] < position[:, None])
    return jnp.where(valid, jnp.sum(before & valid[None, :], axis=1, dtype=jnp.int32),
                     jnp.sum(valid, dtype=jnp.int32)
                     + jnp.sum(invalid_before, axis=1, dtype=jnp.int32))


def _placed(order: jax.Array, values: jax.Array) -> jax.Array:
    """``values`` [K] moved to their places ``order`` [K] (a permutation)."""
    return jnp.zeros_like(values).at[order].set(values)


def _sorted_distinct(values: jax.Array, valid: jax.Array, padding: int) -> jax.Array:
    """[K] the distinct ``values`` [K] where ``valid``, increasing, then ``padding + slot``."""
    order = _batch_order(values[None, :] < values[:, None], valid)
    slots = jnp.arange(values.shape[0], dtype=jnp.int32)
    return jnp.where(slots < jnp.sum(valid), _placed(order, values), padding + slots)


def _merge_plan(size: int, inserted_at: jax.Array, removed: jax.Array):
    """How ``size`` slots of a list in order are filled when entries are taken out of the old
    list at slots ``removed`` [R] (increasing, then values past every slot + R) and new ones
    put in at slots ``inserted_at`` [K] of the result (increasing, then values >= size).

    Returns (is_new [size], new_slot [size], old_slot [size]): slot d takes the new entry
    ``new_slot[d]`` (in inserted order) where ``is_new``, else old slot ``old_slot[d]`` (the
    (d - new entries before d)-th kept one; past the old list where nothing is left).
    """
    slots = jnp.arange(size, dtype=jnp.int32)
    new_before = _count_below_few(inserted_at, slots)
    new_slot = jnp.minimum(new_before, inserted_at.shape[0] - 1)
    is_new = inserted_at[new_slot] == slots
    kept = slots - new_before                       # the kept ordinal, for the other slots
    # the kept ordinal j lies at old slot j + (removed slots before it); removed[t] - t is the
    # number of kept entries before removed slot t
    removed_gaps = removed - jnp.arange(removed.shape[0], dtype=jnp.int32)
    return is_new, new_slot, kept + _count_below_few(removed_gaps, kept, side="right")


def _fill_from_plan(plan, old: jax.Array, new_in_order: jax.Array, fill) -> jax.Array:
    """The merged list: ``new_in_order`` [K] at new slots, ``old`` [N] at kept ones, else fill."""
    is_new, new_slot, old_slot = plan
    old_size = old.shape[0]
    from_old = jnp.where(old_slot < old_size, old[jnp.minimum(old_slot, old_size - 1)], fill)
    return jnp.where(is_new, new_in_order[new_slot], from_old).astype(old.dtype)


def _empty_log(capacity: int, log_size: int) -> dict:
    """The log's and holes' RankState fields with nothing changed since the snapshot."""
    return dict(holes=capacity + jnp.arange(log_size, dtype=jnp.int32),
                log_index=jnp.full(log_size, capacity, jnp.int32),
                log_priority=jnp.full(log_size, -1.0, jnp.float32),
                log_snapshot_count=jnp.full(log_size, capacity, jnp.int32),
                log_unchanged_before=jnp.full(log_size, capacity, jnp.int32),
                num_logged=jnp.int32(0))


def _sorted_snapshot(priorities: jax.Array, log_size: int) -> dict:
    """A snapshot of ``priorities`` [C] by a full sort, with an empty log: for init, and for a
    batch larger than the log. A stable sort of -p is the key order (ties by flat index)."""
    sorted_index = jnp.argsort(-priorities, stable=True).astype(jnp.int32)
    return dict(sorted_index=sorted_index, sorted_priority=priorities[sorted_index],
                snapshot_ranked=jnp.sum(priorities > 0, dtype=jnp.int32),
                num_changes=jnp.int32(0), **_empty_log(priorities.shape[0], log_size))


def _merge_changes(ranking: RankState, flat_indices: jax.Array, old_priorities: jax.Array,
                   new_priorities: jax.Array, size: int) -> dict:
    """The log and holes (``size`` slots each) after K changes [K] of ``flat_indices`` from
    ``old_priorities`` to ``new_priorities`` (repeated indices already carry their last value).

    Each changed index's old key is found in the log (the entry it replaces) or else in the
    snapshot (a new hole); its new key takes its place in the log. No sort and no work over
    C: O(K log C + K^2 + size log K)."""
    num_new = flat_indices.shape[0]
    log_size = ranking.log_index.shape[0]
    capacity = ranking.priorities.shape[0]
    batch_position = jnp.arange(num_new)
    repeated_later = ((flat_indices[None, :] == flat_indices[:, None])
                      & (batch_position[None, :] > batch_position[:, None]))
    changed = ~jnp.any(repeated_later, axis=1)       # one change per index: its last one

    # Old keys in the log (a changed index's one entry there) and new keys' places in it.
    log_count = count_keys_before(ranking.log_priority, ranking.log_index,
                                  jnp.concatenate([old_priorities, new_priorities]),
                                  jnp.concatenate([flat_indices, flat_indices]))
    old_log_slot, new_log_count = log_count[:num_new], log_count[num_new:]
    in_log = changed & (ranking.log_index[jnp.minimum(old_log_slot, log_size - 1)]
                        == flat_indices)
    # Old keys of the others in the snapshot (their holes) and new keys' places in it.
    snapshot_count = count_keys_before(ranking.sorted_priority, ranking.sorted_index,
                                       jnp.concatenate([old_priorities, new_priorities]),
                                       jnp.concatenate([flat_indices, flat_indices]))
    hole_position, new_snapshot_count = snapshot_count[:num_new], snapshot_count[num_new:]
    is_new_hole = changed & ~in_log

    # The holes, with the new ones merged in (they are distinct from the old ones).
    new_holes = _sorted_distinct(hole_position, is_new_hole, 2 * capacity + 2 * size)
    num_new_holes = jnp.sum(is_new_hole, dtype=jnp.int32)
    new_hole_slots = jnp.arange(num_new, dtype=jnp.int32)
    hole_destination = jnp.where(new_hole_slots < num_new_holes,
                                 new_hole_slots + _count_below(ranking.holes, new_holes),
                                 size + new_hole_slots)
    no_removal = jnp.full(num_new, 2 * size, jnp.int32) + new_hole_slots
    merged_holes = _fill_from_plan(_merge_plan(size, hole_destination, no_removal),
                                   ranking.holes, new_holes, capacity)
    num_logged = ranking.num_logged - jnp.sum(in_log, dtype=jnp.int32) + jnp.sum(
        changed, dtype=jnp.int32)
    slots = jnp.arange(size, dtype=jnp.int32)
    holes = jnp.where(slots < num_logged, merged_holes, capacity + slots)

    # The log: replaced entries out, new keys in, in key order.
    removed = _sorted_distinct(old_log_slot, in_log, 2 * size + num_new)
    new_order = _batch_order(_key_before(new_priorities[None, :], flat_indices[None, :],
                                         new_priorities[:, None], flat_indices[:, None]),
                             changed)
    kept_before = new_log_count - _count_below_few(removed, new_log_count)
    destination = _placed(new_order, jnp.where(changed, new_order + kept_before,
                                               size + batch_position))
    plan = _merge_plan(size, destination, removed)
    # unchanged-before counts: the kept entries lose the new holes below their keys
    unchanged_before = jnp.where(
        ranking.log_index < capacity,
        ranking.log_unchanged_before - _count_below_few(new_holes, ranking.log_snapshot_count),
        capacity)
    new_unchanged_before = new_snapshot_count - _count_below(holes, new_snapshot_count)
    merge = lambda old, new, fill: _fill_from_plan(plan, old, _placed(new_order, new), fill)
    return dict(holes=holes, num_logged=num_logged,
                log_index=merge(ranking.log_index, flat_indices, capacity),
                log_priority=merge(ranking.log_priority, new_priorities, -1.0),
                log_snapshot_count=merge(ranking.log_snapshot_count, new_snapshot_count,
                                         capacity),
                log_unchanged_before=merge(unchanged_before, new_unchanged_before, capacity))


def _merge_into_snapshot(ranking: RankState, log: dict) -> dict:
    """The snapshot fields after merging the logged entries (``log``, any number of slots, in
    key order) with the unchanged ones, by counting: O(C), no sort. Logged slot s lands at
    s + its unchanged-before count; every other position takes the next unchanged entry."""
    capacity = ranking.sorted_index.shape[0]
    log_slots = jnp.arange(log["log_index"].shape[0], dtype=jnp.int32)
    destination = jnp.where(log_slots < log["num_logged"],
                            log_slots + log["log_unchanged_before"], capacity + log_slots)
    positions = jnp.arange(capacity, dtype=jnp.int32)
    logged_before = jnp.concatenate([jnp.zeros(1, jnp.int32),
                                     _counts_up_to(destination, capacity - 1)])    # [C]
    logged_slot = jnp.minimum(logged_before, log_slots.shape[0] - 1)
    is_logged = destination[logged_slot] == positions
    unchanged = positions - logged_before         # the unchanged ordinal of the other positions
    holes_up_to = _counts_up_to(log["holes"] - log_slots, capacity)    # by unchanged ordinal
    snapshot_position = jnp.minimum(unchanged + holes_up_to[unchanged], capacity - 1)
    sorted_index = jnp.where(is_logged, log["log_index"][logged_slot],
                             ranking.sorted_index[snapshot_position])
    sorted_priority = jnp.where(is_logged, log["log_priority"][logged_slot],
                                ranking.sorted_priority[snapshot_position])
    return dict(sorted_index=sorted_index, sorted_priority=sorted_priority,
                snapshot_ranked=jnp.sum(sorted_priority > 0, dtype=jnp.int32))


def ranked_count(ranking: RankState) -> jax.Array:
    """[] n, the entries of priority > 0, which hold ranks 1..n."""
    logged = jnp.sum(ranking.log_priority > 0, dtype=jnp.int32)
    unchanged = ranking.snapshot_ranked - _count_below(ranking.holes, ranking.snapshot_ranked)
    return logged + unchanged


def indices_at_ranks(ranking: RankState, ranks: jax.Array) -> jax.Array:
    """[B] the flat index holding each rank [B] (1..n) in key order, without a sort.

    A logged entry of priority > 0 at slot s holds rank s + 1 + its unchanged-before count,
    increasing along the log; a rank no logged entry holds belongs to the
    (rank - 1 - logged ranks below it)-th unchanged snapshot entry (counting from 0), at that
    ordinal plus the holes up to it.
    """
    capacity = ranking.sorted_index.shape[0]
    log_size = ranking.log_index.shape[0]
    slots = jnp.arange(log_size, dtype=jnp.int32)
    logged_rank = jnp.where(ranking.log_priority > 0, slots + 1 + ranking.log_unchanged_before,
                            capacity + 1)                              # [M] increasing
    logged_below = _count_below(logged_rank, ranks)
    slot = jnp.minimum(logged_below, log_size - 1)
    is_logged = logged_rank[slot] == ranks
    unchanged = ranks - 1 - logged_below
    position = unchanged + _count_below(ranking.holes - slots, unchanged, side="right")
    return jnp.where(is_logged, ranking.log_index[slot],
                     ranking.sorted_index[jnp.clip(position, 0, capacity - 1)]).astype(jnp.int32)


def _power_law_cumulative_mass(capacity: int, alpha: float) -> jax.Array:
    """[C] float32, sum_{k<=r} k^-alpha for r = 1..C, accumulated in float64.

    This is the original's precomputed power-law CDF (KA:Experience.lua), kept unnormalised so
    that one table serves every fill level n: the CDF for n ranks is ``table[:n] / table[n-1]``.
    Stored in float32, the table resolves the far tail coarsely: at C = 1e6 and alpha = 0.7 a
    single rank near the end is drawn with a mass up to about 20% off r^-alpha (median 4%),
    while every window of 1000 consecutive ranks is within 0.03%. The returned probabilities
    are the exact power law, so this only perturbs which far-tail neighbour is drawn.
    """
    masses = np.arange(1, capacity + 1, dtype=np.float64) ** -alpha
    return jnp.asarray(np.cumsum(masses).astype(np.float32))


def _make_rank(num_rows: int, num_envs: int, gather: Callable, alpha: float,
               log_size: int) -> Replay:
    capacity = num_rows * num_envs
    cumulative_mass = _power_law_cumulative_mass(capacity, alpha)                 # [C]

    def init(example: Row) -> ReplayState:
        priorities = jnp.zeros(capacity, jnp.float32)
        return ReplayState(
            storage=init_storage(example, num_rows),
            priorities=RankState(priorities=priorities,
                                 max_priority=jnp.float32(INITIAL_MAX_PRIORITY),
                                 **_sorted_snapshot(priorities, log_size)))

    def record_changes(ranking: RankState, flat_indices: jax.Array, priorities: jax.Array,
                       max_priority: jax.Array) -> RankState:
        """Sets p [K] (duplicates already carry their last value) and merges the change into
        the log, or the log and the change into a new snapshot when the log cannot hold it."""
        old_priorities = ranking.priorities[flat_indices]
        ranking = ranking.replace(priorities=ranking.priorities.at[flat_indices].set(priorities),
                                  max_priority=max_priority)
        num_new = flat_indices.shape[0]

        if num_new > log_size:   # static: such a batch never fits the log
            return ranking.replace(**_sorted_snapshot(ranking.priorities, log_size))

        # The log with the batch merged in, in log_size + K slots; it fits the log's M slots
        # unless the log is full, and then it is merged into a new snapshot instead.
        merged = _merge_changes(ranking, flat_indices, old_priorities, priorities,
                                log_size + num_new)
        full = ranking.num_changes + num_new > log_size      # unbatched, like num_changes

        # A loop of 0 or 1 rounds rather than a cond: XLA updates a loop's carry in place,
        # where a cond copied the [C] arrays it passed through on every call. The barrier
        # ties the merged log to the carry: without it XLA hoists the O(C) counting, which
        # depends on the log alone, out of the loop and runs it at every call.
        def new_snapshot(_, snapshot):
            snapshot, log = jax.lax.optimization_barrier((snapshot, merged))
            return _merge_into_snapshot(ranking.replace(**snapshot), log)

        snapshot = jax.lax.fori_loop(
            0, full.astype(jnp.int32), new_snapshot,
            dict(sorted_index=ranking.sorted_index, sorted_priority=ranking.sorted_priority,
                 snapshot_ranked=ranking.snapshot_ranked))
        empty = _empty_log(capacity, log_size)
        log = {name: jnp.where(full, empty[name],
                               merged[name] if name == "num_logged" else merged[name][:log_size])
               for name in empty}
        return ranking.replace(**snapshot, **log,
                               num_changes=jnp.where(full, 0, ranking.num_changes + num_new))

    def add(state: ReplayState, row: Row) -> ReplayState:
        ranking = state.priorities
        new_indices = state.storage.pos * num_envs + jnp.arange(num_envs, dtype=jnp.int32)  # [E]
        priorities = _new_row_priorities(row, ranking.max_priority)
        return ReplayState(storage=write_row(state.storage, row),
                           priorities=record_changes(ranking, new_indices, priorities,
                                                     ranking.max_priority))

    def sample(state: ReplayState, key: jax.Array, batch_size: int):
        ranking = state.priorities
        num_ranked = ranked_count(ranking)                                          # n

        # Stratified sampling (Schaul et al. 2016, appendix B.2): B strata of equal mass of
        # the power law over n ranks, a rank drawn by inverting its CDF inside each stratum.
        last_rank = jnp.maximum(num_ranked, 1)
        total_mass = cumulative_mass[last_rank - 1]
        offsets = jax.random.uniform(key, (batch_size,), jnp.float32)
        targets = (jnp.arange(batch_size, dtype=jnp.float32) + offsets) * (total_mass / batch_size)
        ranks = jnp.clip(jnp.searchsorted(cumulative_mass, targets, side="right") + 1,
                         1, last_rank).astype(jnp.int32)                             # [B]
        flat_indices = indices_at_ranks(ranking, ranks)

        probabilities = ranks.astype(jnp.float32) ** -alpha / total_mass
        transitions, _ = gather(state.storage, flat_indices)
        return transitions, flat_indices, probabilities

    def update_priorities(state: ReplayState, flat_indices: jax.Array, td_errors: jax.Array):
        ranking = state.priorities
        priorities = _updated_priorities(state, num_envs, flat_indices, td_errors)
        max_priority = jnp.maximum(ranking.max_priority, jnp.max(priorities))
        return state.replace(priorities=record_changes(ranking, flat_indices, priorities,
                                                       max_priority))

    def seed_axes(state: ReplayState) -> ReplayState:
        per_seed = jax.tree.map(lambda _: 0, state.priorities)
        return ReplayState(storage=storage_seed_axes(state.storage),
                           priorities=per_seed.replace(num_changes=None))

    return Replay(init=init, add=add, sample=sample, update_priorities=update_priorities,
                  seed_axes=seed_axes, num_rows=num_rows, num_envs=num_envs)


def make_prioritised_replay(kind: str, *, num_rows: int, num_envs: int,
                            gather: dict | Callable, alpha: float,
                            rank_log_changes: int | None = None) -> Replay:
    """Builds a prioritised replay of ``num_rows * num_envs`` transitions per seed.

    ``gather`` holds the hist_len / n_step / gamma arguments of ``storage.gather_batch``, or is
    a function ``(storage, flat_indices [B]) -> (batch, valid [B])`` (``storage.gather_windows``
    for a recurrent learner: a flat index then names the window ending at that transition);
    ``alpha`` is the prioritisation exponent; ``rank_log_changes`` (rank only) is the number of
    changed priorities logged between two snapshots, ``rank_log_size(capacity)`` by default.
    """
    if kind not in PRIORITISED_KINDS:
        raise ValueError(f"unknown prioritised replay {kind!r}: choose one of "
                         f"{', '.join(PRIORITISED_KINDS)}")
    if not callable(gather):
        gather = functools.partial(gather_batch, **gather)
    if kind == "proportional":
        return _make_proportional(num_rows, num_envs, gather, alpha)
    capacity = num_rows * num_envs
    log_size = rank_log_size(capacity) if rank_log_changes is None else rank_log_changes
    return _make_rank(num_rows, num_envs, gather, alpha, log_size)
