"""Uniform replay and its frame storage: wrap-around, uint8 round trip, frame stacks rebuilt
across episode starts, the next-step reset convention (invalid reset rows, terminal vs
time-limit ends), n-step returns against a numpy reference, validity near the write head
and after overwriting, and vmap over seeds.

The numpy reference works on the global time line of each env (an episode id per step),
not on ring rows, so it is independent of the storage's index arithmetic.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxatari.agents.native import to_agent_frame
from jaxatari.replay import make_replay
from jaxatari.replay.storage import (Row, gather_batch, gather_transition, init_storage,
                                     storage_seed_axes, write_row)

FRAME_SHAPE = (2, 2, 1)
GAMMA = 0.9


# ----------------------------------------------------------------------------- streams

@dataclasses.dataclass
class Stream:
    """The rows of E envs over T steps, as the env loop writes them, plus episode ids."""

    frame: np.ndarray      # [T, E, 2, 2, 1] uint8
    action: np.ndarray     # [T, E] int32
    reward: np.ndarray     # [T, E] float32
    terminal: np.ndarray   # [T, E] bool
    first: np.ndarray      # [T, E] bool
    valid: np.ndarray      # [T, E] bool
    mask: np.ndarray       # [T, E, K] bool
    episode: np.ndarray    # [T, E] int: which episode the frame belongs to

    def row(self, t: int) -> Row:
        return Row(frame=jnp.asarray(self.frame[t]), action=jnp.asarray(self.action[t]),
                   reward=jnp.asarray(self.reward[t]), terminal=jnp.asarray(self.terminal[t]),
                   first=jnp.asarray(self.first[t]), valid=jnp.asarray(self.valid[t]),
                   mask=jnp.asarray(self.mask[t]))

    @property
    def length(self) -> int:
        return self.frame.shape[0]


def random_stream(num_steps: int, num_envs: int, seed: int, end_prob: float = 0.25,
                  num_heads: int = 1) -> Stream:
    """Episodes that end by termination or by a time limit, followed by the reset step
    (invalid, holding the final frame), then a first frame, as envs/base.py describes."""
    rng = np.random.default_rng(seed)
    shape = (num_steps, num_envs)
    frame = rng.integers(1, 256, size=(*shape, *FRAME_SHAPE)).astype(np.uint8)
    action = rng.integers(0, 4, size=shape).astype(np.int32)
    reward = rng.normal(size=shape).astype(np.float32)
    terminal = np.zeros(shape, bool)
    first = np.zeros(shape, bool)
    valid = np.ones(shape, bool)
    episode = np.zeros(shape, int)
    mask = rng.random((*shape, num_heads)) < 0.5 if num_heads > 1 else np.ones(
        (*shape, 1), bool)
    for e in range(num_envs):
        phase, current = "first", 0
        for t in range(num_steps):
            if phase == "first":
                first[t, e], phase = True, "play"
            elif phase == "reset":       # the step after a done: action ignored, reward 0
                valid[t, e], reward[t, e] = False, 0.0
                episode[t, e] = current
                current += 1
                phase = "first"
                continue
            episode[t, e] = current
            if rng.random() < end_prob:
                terminal[t, e] = rng.random() < 0.5   # else a time-limit cut
                phase = "reset"
    return Stream(frame, action, reward, terminal, first, valid, mask, episode)


def ref_stack(s: Stream, t: int, e: int, hist_len: int) -> np.ndarray:
    """Frames t-hist_len+1 .. t of the same episode, oldest first, zeros before its start."""
    frames = []
    for back in range(hist_len - 1, -1, -1):
        tt = t - back
        if tt >= 0 and s.episode[tt, e] == s.episode[t, e]:
            frames.append(s.frame[tt, e])
        else:
            frames.append(np.zeros(FRAME_SHAPE, np.uint8))
    return np.concatenate(frames, axis=-1)


def ref_transition(s: Stream, t: int, e: int, n_step: int, gamma: float):
    """n-step return: stop at a terminal (discount 0) or before a reset row (time-limit cut:
    bootstrap from the final frame with gamma^j), else gamma^n from row t+n."""
    ret, discount = 0.0, 1.0
    for j in range(n_step):
        ret += discount * s.reward[t + j, e]
        if s.terminal[t + j, e]:
            return ret, 0.0, t + j + 1
        discount *= gamma
        if not s.valid[t + j + 1, e]:
            return ret, discount, t + j + 1
    return ret, discount, t + n_step


def ref_valid(s: Stream, t: int, e: int, written: int, num_rows: int, hist_len: int,
              n_step: int) -> bool:
    """Learnable: not a reset row, its next n rows written, and (once the ring is full) its
    frame history still stored."""
    if not s.valid[t, e] or t + n_step > written - 1:
        return False
    if written >= num_rows and t - (hist_len - 1) < written - num_rows:
        return False
    return True


def write(storage, stream: Stream, start: int, stop: int):
    add = jax.jit(write_row)
    for t in range(start, stop):
        storage = add(storage, stream.row(t))
    return storage


def empty_storage(num_envs: int, num_rows: int, frame_dtype=jnp.uint8, num_heads: int = 1):
    example = Row(frame=jnp.zeros((num_envs, *FRAME_SHAPE), frame_dtype),
                  action=jnp.zeros((num_envs,), jnp.int32),
                  reward=jnp.zeros((num_envs,), jnp.float32),
                  terminal=jnp.zeros((num_envs,), bool), first=jnp.zeros((num_envs,), bool),
                  valid=jnp.zeros((num_envs,), bool),
                  mask=jnp.zeros((num_envs, num_heads), bool))
    return init_storage(example, num_rows)


def gather_all(storage, hist_len, n_step, gamma=GAMMA):
    num_rows, num_envs = storage.rows.action.shape[:2]
    indices = jnp.arange(num_rows * num_envs)
    gather = jax.jit(lambda st, i: gather_batch(st, i, hist_len=hist_len, n_step=n_step,
                                                gamma=gamma))
    batch, valid = gather(storage, indices)
    return jax.tree.map(np.asarray, batch), np.asarray(valid)


def check_against_reference(storage, stream: Stream, written: int, hist_len: int, n_step: int):
    """Every (row, env) of the storage against the reference on the global time line."""
    num_rows, num_envs = storage.rows.action.shape[:2]
    batch, valid = gather_all(storage, hist_len, n_step)
    checked = 0
    for row in range(num_rows):
        times = [t for t in range(written) if t % num_rows == row]
        for e in range(num_envs):
            i = row * num_envs + e
            if not times:
                assert not valid[i] and batch.mask[i].sum() == 0, (row, e)
                continue
            t = times[-1]
            want_valid = ref_valid(stream, t, e, written, num_rows, hist_len, n_step)
            assert valid[i] == want_valid, (row, e, t)
            if not want_valid:
                np.testing.assert_array_equal(batch.mask[i], 0.0)
                continue
            ret, discount, t_next = ref_transition(stream, t, e, n_step, GAMMA)
            np.testing.assert_array_equal(batch.obs_tm1[i], ref_stack(stream, t, e, hist_len))
            np.testing.assert_array_equal(batch.obs_t[i], ref_stack(stream, t_next, e, hist_len))
            assert batch.a_tm1[i] == stream.action[t, e]
            np.testing.assert_allclose(batch.r_t[i], ret, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(batch.discount_t[i], discount, rtol=1e-6)
            np.testing.assert_array_equal(batch.mask[i], stream.mask[t, e].astype(np.float32))
            checked += 1
    return checked


# ----------------------------------------------------------------------------- wrap-around

def test_wrap_around_overwrites_the_oldest_rows():
    num_rows, num_envs = 8, 2
    stream = random_stream(13, num_envs, seed=0)
    storage = empty_storage(num_envs, num_rows)
    storage = write(storage, stream, 0, 5)
    assert int(storage.pos) == 5 and int(storage.size) == 5
    storage = write(storage, stream, 5, 8)
    assert int(storage.pos) == 0 and int(storage.size) == 8
    storage = write(storage, stream, 8, 13)
    assert int(storage.pos) == 13 % num_rows and int(storage.size) == num_rows
    frames = np.asarray(storage.rows.frame)
    for row in range(num_rows):
        newest = row + num_rows if row < 13 - num_rows else row   # rows 0..4 overwritten
        np.testing.assert_array_equal(frames[row], stream.frame[newest])
        np.testing.assert_array_equal(np.asarray(storage.rows.action[row]),
                                      stream.action[newest])


def test_uniform_replay_add_and_sample_wrap_around():
    num_envs, capacity = 2, 16
    replay = make_replay("uniform", capacity=capacity, num_envs=num_envs, hist_len=2, n_step=1,
                         gamma=GAMMA)
    assert replay.num_rows == capacity // num_envs
    stream = random_stream(20, num_envs, seed=1)
    state = replay.init(stream.row(0))
    add = jax.jit(replay.add)
    for t in range(20):
        state = add(state, stream.row(t))
    assert int(state.storage.pos) == 20 % 8 and int(state.storage.size) == 8
    sample = jax.jit(replay.sample, static_argnums=2)
    batch, indices, probabilities = sample(state, jax.random.PRNGKey(0), 64)
    assert indices.shape == (64,) and np.all((indices >= 0) & (indices < capacity))
    np.testing.assert_allclose(probabilities, 1.0 / capacity)
    # every sampled transition is exactly the gathered one (mask folded with validity)
    want, _ = gather_batch(state.storage, indices, hist_len=2, n_step=1, gamma=GAMMA)
    for got_leaf, want_leaf in zip(jax.tree.leaves(batch), jax.tree.leaves(want)):
        np.testing.assert_array_equal(got_leaf, want_leaf)
    # before the ring is full only written rows are drawn
    partial = replay.init(stream.row(0))
    for t in range(3):
        partial = add(partial, stream.row(t))
    _, indices, probabilities = sample(partial, jax.random.PRNGKey(1), 256)
    assert np.all(np.asarray(indices) < 3 * num_envs)
    assert set(np.asarray(indices).tolist()) == set(range(3 * num_envs))
    np.testing.assert_allclose(probabilities, 1.0 / (3 * num_envs))


def test_unknown_replay_kind_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown replay") as info:
        make_replay("fifo", capacity=8, num_envs=1, hist_len=1, n_step=1, gamma=GAMMA)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- uint8 round trip

@pytest.mark.parametrize("hist_len", [1, 4])
def test_uint8_frames_round_trip(hist_len):
    num_rows, num_envs = 16, 3
    stream = random_stream(12, num_envs, seed=2, end_prob=0.0)   # one episode per env
    stream.frame[:, 0] = 255                                     # the extremes survive too
    stream.frame[:, 1, 0, 0, 0] = 0
    storage = write(empty_storage(num_envs, num_rows), stream, 0, 12)
    assert storage.rows.frame.dtype == jnp.uint8
    batch, valid = gather_all(storage, hist_len, n_step=1)
    assert batch.obs_tm1.dtype == np.uint8
    for t in range(11):
        for e in range(num_envs):
            i = t * num_envs + e
            assert valid[i]
            np.testing.assert_array_equal(batch.obs_tm1[i][..., -1:], stream.frame[t, e])
            np.testing.assert_array_equal(batch.obs_tm1[i], ref_stack(stream, t, e, hist_len))


def test_float_frames_become_nearest_bytes():
    rng = np.random.default_rng(3)
    x = rng.random((6, 3, *FRAME_SHAPE)).astype(np.float32)
    x[0, 0] = 0.0
    x[0, 1] = 1.0
    x[1, 0] = [[[-0.2], [1.7]], [[0.2 / 255], [254.7 / 255]]]   # clipped, then rounded
    got = np.asarray(to_agent_frame(jnp.asarray(x), jnp.uint8))
    assert got.dtype == np.uint8
    want = np.round(np.clip(x.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[1, 0].ravel(), [0, 255, 0, 255])
    # truncation would differ from rounding on most of these values
    assert np.any(want != np.floor(np.clip(x, 0, 1) * 255).astype(np.uint8))
    # and the bytes survive the replay unchanged
    stream = random_stream(6, 3, seed=4, end_prob=0.0)
    stream.frame = got
    storage = write(empty_storage(3, 8), stream, 0, 6)
    batch, _ = gather_all(storage, hist_len=1, n_step=1)
    np.testing.assert_array_equal(batch.obs_tm1[:15], got[:5].reshape(15, *FRAME_SHAPE))
    # floats pass through when the agent keeps floats
    np.testing.assert_array_equal(to_agent_frame(jnp.asarray(x), jnp.float32), x)


# ----------------------------------------------------------------------------- stacks

def hand_stream(rows: list[dict], num_envs: int = 1) -> Stream:
    """A stream from a list of per-step dicts (env 0 follows the dicts, others copy it)."""
    num_steps = len(rows)
    frame = np.zeros((num_steps, num_envs, *FRAME_SHAPE), np.uint8)
    for t in range(num_steps):
        frame[t] = 10 + t
    get = lambda key, default, dtype: np.array(
        [[r.get(key, default)] * num_envs for r in rows], dtype)
    episode = np.cumsum([r.get("first", False) for r in rows])[:, None].repeat(num_envs, 1)
    return Stream(frame=frame, action=get("action", 1, np.int32),
                  reward=get("reward", 0.0, np.float32), terminal=get("terminal", False, bool),
                  first=get("first", False, bool), valid=get("valid", True, bool),
                  mask=np.ones((num_steps, num_envs, 1), bool), episode=episode)


def test_stacks_zero_frames_before_the_episode_start():
    # episode A: rows 0-2 (terminal at 2), reset row 3, episode B from row 4
    stream = hand_stream([dict(first=True), {}, dict(terminal=True, reward=1.0),
                          dict(valid=False), dict(first=True), {}, {}, {}, {}, {}])
    storage = write(empty_storage(1, 16), stream, 0, 10)
    batch, _ = gather_all(storage, hist_len=4, n_step=1)
    z = 0
    expected = {
        0: [z, z, z, 10],
        1: [z, z, 10, 11],
        2: [z, 10, 11, 12],
        3: [10, 11, 12, 13],        # the reset row holds episode A's final frame
        4: [z, z, z, 14],           # a first frame: nothing of episode A leaks in
        5: [z, z, 14, 15],
        7: [14, 15, 16, 17],
        8: [15, 16, 17, 18],        # older frames drop off the front
    }
    for row, channels in expected.items():
        got = batch.obs_tm1[row]
        assert got.shape == (*FRAME_SHAPE[:-1], 4)
        np.testing.assert_array_equal(got[0, 0], channels, err_msg=f"row {row}")
        np.testing.assert_array_equal(got, ref_stack(stream, row, 0, 4))


# ----------------------------------------------------------------------------- reset steps

def test_reset_step_masking_and_episode_ends():
    stream = hand_stream([
        dict(first=True, reward=0.5),           # 0
        dict(terminal=True, reward=1.0),        # 1 terminal
        dict(valid=False),                      # 2 reset row: final frame of episode A
        dict(first=True, reward=0.25),          # 3 episode B
        dict(reward=-1.0),                      # 4 last step before a time-limit cut
        dict(valid=False),                      # 5 reset row: final frame of episode B
        dict(first=True),                       # 6
        {}, {},                                 # 7, 8
    ])
    storage = write(empty_storage(1, 16), stream, 0, 9)
    batch, valid = gather_all(storage, hist_len=2, n_step=1)
    # the reset row's transition is masked out
    assert not valid[2] and not valid[5]
    np.testing.assert_array_equal(batch.mask[[2, 5]], 0.0)
    # a terminal transition has discount 0 and its reward
    assert valid[1] and batch.discount_t[1] == 0.0 and batch.r_t[1] == 1.0
    # a transition before a time-limit cut bootstraps with gamma from the final frame
    assert valid[4]
    np.testing.assert_allclose(batch.discount_t[4], GAMMA)
    np.testing.assert_allclose(batch.r_t[4], -1.0)
    np.testing.assert_array_equal(batch.obs_t[4][0, 0], [14, 15])     # row 5's frame, stacked
    np.testing.assert_array_equal(batch.obs_t[1][0, 0], [11, 12])
    # ordinary transitions: gamma, next frame
    np.testing.assert_allclose(batch.discount_t[[0, 3, 6, 7]], GAMMA)
    np.testing.assert_array_equal(batch.obs_t[3][0, 0], [13, 14])
    np.testing.assert_array_equal(batch.obs_t[6][0, 0], [16, 17])
    # the newest row has no next row yet
    assert not valid[8]
    assert check_against_reference(storage, stream, 9, hist_len=2, n_step=1) == 6


# ----------------------------------------------------------------------------- n-step

def test_n_step_returns_hand_built():
    n = 3
    stream = hand_stream([
        dict(first=True, reward=1.0),           # 0
        dict(reward=2.0),                       # 1
        dict(reward=4.0, terminal=True),        # 2
        dict(valid=False),                      # 3
        dict(first=True, reward=1.0),           # 4
        dict(reward=3.0),                       # 5 time-limit cut after this step
        dict(valid=False),                      # 6
        dict(first=True, reward=1.0),           # 7
        dict(reward=1.0), dict(reward=1.0), dict(reward=5.0), {}, {},    # 8..12
    ])
    storage = write(empty_storage(1, 16), stream, 0, 13)
    batch, valid = gather_all(storage, hist_len=1, n_step=n)
    g = GAMMA
    # terminal inside the n steps: discount 0
    np.testing.assert_allclose(batch.r_t[0], 1 + g * 2 + g * g * 4, rtol=1e-6)
    assert batch.discount_t[0] == 0.0
    np.testing.assert_allclose(batch.r_t[1], 2 + g * 4, rtol=1e-6)
    assert batch.discount_t[1] == 0.0
    # truncation inside the n steps: gamma^j, bootstrapping from the final frame (row 6)
    np.testing.assert_allclose(batch.r_t[4], 1 + g * 3, rtol=1e-6)
    np.testing.assert_allclose(batch.discount_t[4], g ** 2, rtol=1e-6)
    assert batch.obs_t[4][0, 0, 0] == 16
    np.testing.assert_allclose(batch.r_t[5], 3, rtol=1e-6)
    np.testing.assert_allclose(batch.discount_t[5], g, rtol=1e-6)
    # a full n steps: gamma^n from row t+n
    np.testing.assert_allclose(batch.r_t[7], 1 + g + g * g, rtol=1e-6)
    np.testing.assert_allclose(batch.discount_t[7], g ** 3, rtol=1e-6)
    assert batch.obs_t[7][0, 0, 0] == 20
    np.testing.assert_allclose(batch.r_t[8], 1 + g + g * g * 5, rtol=1e-6)
    # rows whose n following rows are not all written yet are invalid
    assert valid[9] and not valid[10] and not valid[11] and not valid[12]
    assert check_against_reference(storage, stream, 13, hist_len=1, n_step=n) == 8


@pytest.mark.parametrize("hist_len,n_step,num_rows,written",
                         [(4, 3, 64, 50), (4, 3, 24, 61), (2, 1, 16, 40), (1, 5, 20, 33),
                          (3, 3, 30, 30)])
def test_random_streams_against_reference(hist_len, n_step, num_rows, written):
    num_envs = 3
    stream = random_stream(written, num_envs, seed=written + n_step, end_prob=0.3)
    assert stream.terminal.any() and (~stream.valid & ~np.roll(stream.terminal, 1, 0)).any()
    storage = write(empty_storage(num_envs, num_rows), stream, 0, written)
    checked = check_against_reference(storage, stream, written, hist_len, n_step)
    assert checked > num_rows  # most rows are learnable


def test_bootstrap_masks_are_kept():
    stream = random_stream(10, 2, seed=5, num_heads=4)
    storage = write(empty_storage(2, 16, num_heads=4), stream, 0, 10)
    assert check_against_reference(storage, stream, 10, hist_len=2, n_step=2) > 0


# ----------------------------------------------------------------------------- validity

def test_rows_near_the_write_head_and_overwritten_history_are_invalid():
    num_rows, hist_len, n_step = 10, 4, 2
    stream = random_stream(25, 1, seed=6, end_prob=0.0)           # one long episode
    storage = write(empty_storage(1, num_rows), stream, 0, 7)
    _, valid = gather_all(storage, hist_len, n_step)
    # rows 0..4 have their 2 next rows; rows 5, 6 do not; rows 7.. are unwritten
    np.testing.assert_array_equal(valid, [True] * 5 + [False] * 5)

    storage = write(storage, stream, 7, 25)                       # 25 rows in a ring of 10
    assert int(storage.pos) == 5 and int(storage.size) == 10
    batch, valid = gather_all(storage, hist_len, n_step)
    # stored times are 15..24 at rows 5..9, 0..4. Learnable: history 3 back stored (t >= 18)
    # and 2 rows ahead written (t <= 22): times 18..22, rows 8, 9, 0, 1, 2.
    want = np.zeros(num_rows, bool)
    want[[8, 9, 0, 1, 2]] = True
    np.testing.assert_array_equal(valid, want)
    # row 5 (time 15) would read times 14, 13, 12 from rows 4, 3, 2: the newest rows
    stale = np.asarray(gather_transition(storage, jnp.int32(5), hist_len=hist_len,
                                         n_step=n_step, gamma=GAMMA)[0].obs_tm1)
    assert not np.array_equal(stale, ref_stack(stream, 15, 0, hist_len))
    check_against_reference(storage, stream, 25, hist_len, n_step)


# ----------------------------------------------------------------------------- seeds

def test_vmap_over_seeds_equals_a_loop():
    num_seeds, num_envs, capacity, steps = 3, 2, 16, 13
    replay = make_replay("uniform", capacity=capacity, num_envs=num_envs, hist_len=2,
                         n_step=2, gamma=GAMMA)
    streams = [random_stream(steps, num_envs, seed=10 + s) for s in range(num_seeds)]
    example = streams[0].row(0)
    single = replay.init(example)
    axes = replay.seed_axes(single)
    assert axes.storage.pos is None and axes.storage.size is None
    batched = jax.vmap(lambda _: replay.init(example), out_axes=axes)(jnp.arange(num_seeds))
    assert batched.storage.pos.shape == () and batched.storage.rows.frame.shape[0] == num_seeds
    add = jax.jit(jax.vmap(replay.add, in_axes=(axes, 0), out_axes=axes))
    for t in range(steps):
        rows = jax.tree.map(lambda *x: jnp.stack(x), *[s.row(t) for s in streams])
        batched = add(batched, rows)
    keys = jax.random.split(jax.random.PRNGKey(7), num_seeds)
    sample = jax.jit(jax.vmap(lambda st, k: replay.sample(st, k, 24), in_axes=(axes, 0)))
    got = sample(batched, keys)

    add_one = jax.jit(replay.add)
    sample_one = jax.jit(lambda st, k: replay.sample(st, k, 24))
    for s in range(num_seeds):
        state = replay.init(example)
        for t in range(steps):
            state = add_one(state, streams[s].row(t))
        np.testing.assert_array_equal(state.storage.pos, batched.storage.pos)
        np.testing.assert_array_equal(state.storage.size, batched.storage.size)
        for leaf, batched_leaf in zip(jax.tree.leaves(state.storage.rows),
                                      jax.tree.leaves(batched.storage.rows)):
            np.testing.assert_array_equal(leaf, batched_leaf[s])
        want = sample_one(state, keys[s])
        for want_leaf, got_leaf in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_array_equal(want_leaf, got_leaf[s])
    # the seeds' data differ, so the check above is not vacuous
    assert not np.array_equal(got[0].obs_tm1[0], got[0].obs_tm1[1])
    # storage_seed_axes leaves every row field on axis 0
    assert all(a == 0 for a in jax.tree.leaves(storage_seed_axes(single.storage).rows))
