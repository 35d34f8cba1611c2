"""The host-env path through the real loop: envpool Space Invaders and a fake gymnasium env."""
from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import jax
import numpy as np
import pytest

from jaxatari.config import build_config
from jaxatari.loop import train


class CountdownEnv(gym.Env):
    """Episodes of exactly 5 steps; the observation is the step count, reward 1 per step."""

    observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full(3, 0.0, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(3, self.t / 5, np.float32), 1.0, self.t == 5, False, {}


def test_fake_gym_env_scores_whole_episodes(tmp_path):
    config = build_config("demo", {
        "env": "tests.test_loop_host:CountdownEnv", "model_body": "mlp", "hist_len": 1,
        "steps": 240, "seeds": 2, "envs": 2, "learn_start": 64, "mem_size": 200,
        "val_freq": 120, "val_steps": 60, "val_envs": 2, "chunk_steps": 60})
    run_dir, summary = train(config, tmp_path / "fake", quiet=True)
    # Every finished episode scores exactly 5 (five steps of reward 1), greedy or not.
    assert summary["final_scores"] == [5.0, 5.0]
    progress = (run_dir / "progress.csv").read_text().splitlines()[1:]
    scores = [float(line.split(",")[3]) for line in progress if line.split(",")[2] != "0"]
    assert scores and all(score == 5.0 for score in scores)


@pytest.mark.slow
def test_envpool_space_invaders_through_the_real_loop(tmp_path):
    config = build_config("nature", {
        "game": "SpaceInvaders", "steps": 600, "seeds": 2, "envs": 2, "learn_start": 200,
        "mem_size": 2000, "hidden_size": 32, "val_freq": 600, "val_steps": 1200,
        "val_envs": 2, "chunk_steps": 200, "epsilon_steps": 200})
    run_dir, summary = train(config, tmp_path / "si", quiet=True)
    assert summary["env"] == "SpaceInvaders" and summary["protocol"]["protocol"] == "kaixhin"
    assert len(summary["final_scores"]) == 2
    record = json.loads((run_dir / "config.json").read_text())
    assert record["env_spec"]["protocol"]["backend"] == "envpool"
    progress = [line.split(",") for line in (run_dir / "progress.csv").read_text().splitlines()[1:]]
    losses = [float(row[4]) for row in progress if row[4] != "nan"]
    assert losses and all(np.isfinite(losses))
    # Raw game scores: Space Invaders pays 5 to 30 a hit, so the total over finished games
    # (mean x episodes) is a multiple of 5, never a clipped count of hits.
    evals = [line.split(",") for line in (run_dir / "eval.csv").read_text().splitlines()[1:]]
    assert all(float(row[2]) * int(row[3]) % 5 == 0 for row in evals if row[2])
    # and a seed that finished no game has no score (blank), never its partial one
    assert all(int(row[3]) == 0 for row in evals if not row[2])


@pytest.mark.parametrize("learn_start", [30, 100], ids=["learning", "ends-before-learning"])
def test_host_loop_stores_every_transition_in_order(tmp_path, learn_start):
    """Steps with uniform actions reach the memory in batches (``host._ExploreSteps``),
    later steps one at a time after the network acted: either way each env's memory holds
    its steps in order, with the reset step after a terminal masked out. A run that ends
    before learning starts stores its last step with the uniform ones."""
    from jaxatari.loop import Trainer
    config = build_config("demo", {
        "env": "tests.test_loop_host:CountdownEnv", "model_body": "mlp", "hist_len": 1,
        "steps": 50, "seeds": 2, "envs": 2, "learn_start": learn_start, "mem_size": 200,
        "batch_size": 8,
        "val_freq": 1000, "val_steps": 4, "val_envs": 2, "chunk_steps": 10})
    run_dir, _ = train(config, tmp_path / "order", quiet=True, checkpoint_replay=True)
    reader = dataclasses.replace(config, steps=100)   # a run that could continue it
    restored = Trainer(reader, tmp_path / "reader", quiet=True).restore(
        run_dir / "checkpoints" / "last")
    rows = assert_countdown_memory(restored.items.replay.storage)
    phase = np.arange(25) % 6
    np.testing.assert_array_equal(rows.reward[:, :25], np.broadcast_to(
        (phase != 5).astype(np.float32)[None, :, None], (2, 25, 2)))


def assert_countdown_memory(storage, seeds: int = 2, envs: int = 2, steps: int = 25):
    """Each env's memory after ``steps`` steps of CountdownEnv holds them in order: its
    frames count 0, 0.2, ..., 1 (a reset frame, 4 steps, the terminal frame), then a reset
    step, masked out. Returns the rows [S, N, E, ...]."""
    rows = jax.device_get(storage.rows)
    assert int(storage.size) == steps
    phase = np.arange(steps) % 6
    shape = (seeds, steps, envs)
    expected = np.broadcast_to((np.round(phase * 0.2 * 255)).astype(np.uint8)[None, :, None],
                               shape)
    np.testing.assert_array_equal(rows.frame[:, :steps, :, 0], expected)
    for field, wanted in (("terminal", phase == 4), ("first", phase == 0), ("valid", phase != 5)):
        np.testing.assert_array_equal(getattr(rows, field)[:, :steps],
                                      np.broadcast_to(wanted[None, :, None], shape))
    return rows


def test_resumed_host_run_never_bootstraps_into_the_new_game(tmp_path):
    """A host env cannot be restored, so a resumed run starts new games; the newest row saved
    with the memory has no stored next observation and must not bootstrap into the new
    game's first frame: it becomes a reset step. Checked from CountdownEnv's own dynamics
    (its frame rises by 0.2, i.e. 51 of 255, each step): every row learned from without a
    terminal is followed by its own next frame."""
    from jaxatari.loop import Trainer
    options = {"env": "tests.test_loop_host:CountdownEnv", "model_body": "mlp", "hist_len": 1,
               "seeds": 2, "envs": 2, "learn_start": 30, "mem_size": 200, "batch_size": 8,
               "val_freq": 1000, "val_steps": 4, "val_envs": 2, "chunk_steps": 10}
    saved_rows = 31                  # the save falls mid-episode: row 30 is a first frame
    run_dir, _ = train(build_config("demo", {**options, "steps": 2 * saved_rows}),
                       tmp_path / "resume", quiet=True, checkpoint_replay=True)
    config = build_config("demo", {**options, "steps": 100})
    train(config, None, quiet=True, resume_from=run_dir, checkpoint_replay=True)
    reader = dataclasses.replace(config, steps=200)   # a run that could continue it
    restored = Trainer(reader, tmp_path / "reader", quiet=True).restore(
        run_dir / "checkpoints" / "last")
    storage = restored.items.replay.storage
    rows = jax.device_get(storage.rows)
    size = int(storage.size)
    assert size == 50
    frame = rows.frame[:, :size, :, 0].astype(np.int64)                  # [S, R, E]
    learned = rows.valid[:, :size - 1] & ~rows.terminal[:, :size - 1]
    np.testing.assert_array_equal(np.where(learned, frame[:, 1:] - frame[:, :-1], 51), 51)
    # The rows not learned from: every episode's reset step (phase 5), and the newest row
    # saved before the resume, and nothing else.
    phase = np.arange(size)
    phase = np.where(phase < saved_rows, phase % 6, (phase - saved_rows) % 6)
    wanted = (phase != 5) & (np.arange(size) != saved_rows - 1)
    np.testing.assert_array_equal(rows.valid[:, :size],
                                  np.broadcast_to(wanted[None, :, None], (2, size, 2)))
    np.testing.assert_array_equal(rows.first[:, saved_rows], True)
