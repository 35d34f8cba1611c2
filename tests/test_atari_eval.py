"""End to end on Atari: a few hundred steps of Double DQN on envpool's Space Invaders, then
``eval --record`` with and without ``--saliency``: the MP4s hold one frame per step played,
and the saliency overlay rewrites the red channel (and little else)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxatari.cli import main
from jaxatari.config import build_config
from jaxatari.loop import train

pytest.importorskip("envpool")
imageio = pytest.importorskip("imageio.v3")

STEPS_PLAYED = 24


def read_video(path) -> np.ndarray:
    return np.stack(list(imageio.imiter(path, plugin="pyav" if _has_pyav() else None)))


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.slow
def test_space_invaders_eval_records_video_with_saliency_in_red(tmp_path):
    # A tiny run: 256 steps on a 1000-transition memory, learning only at the end (one
    # update), with the small 2013 body: a checkpoint of an Atari network is what matters.
    config = build_config("doubleq", {
        "game": "SpaceInvaders", "steps": 256, "envs": 4, "mem_size": 1000, "learn_start": 256,
        "model_body": "atari2013",
        "hidden_size": 32, "val_freq": 256, "val_steps": 32, "val_envs": 1, "chunk_steps": 128,
        "epsilon_steps": 128})
    run_dir, _ = train(config, tmp_path / "run", quiet=True)
    # Atari runs summarise their human-normalised scores too (no seed scores in 32 steps)
    statistics = json.loads((run_dir / "summary.json").read_text())["statistics"]
    assert statistics["final_normalised"] == statistics["best_normalised"] == {
        "seeds": 0, "mean": None, "median": None, "iqm": None}
    common = ["eval", str(run_dir), "--episodes", "1", "--max-steps", str(STEPS_PLAYED),
              "--record", "--seed", "5"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--saliency", "guided", "--out", str(tmp_path / "salient")]) == 0
    record = json.loads((tmp_path / "salient" / "results.json").read_text())
    assert record["saliency"] == "guided" and record["lengths"] == [STEPS_PLAYED]
    plain = read_video(tmp_path / "plain" / "episode_001.mp4").astype(np.float64)
    salient = read_video(tmp_path / "salient" / "episode_001.mp4").astype(np.float64)
    # One frame per step played (the episode was cut, so no final screen), full colour.
    assert plain.shape == salient.shape
    assert plain.shape[0] == STEPS_PLAYED and plain.shape[-1] == 3 and plain.shape[1] >= 200
    # The same game (same seed, same greedy actions): only the red channel was replaced by
    # the map; H.264's shared chroma lets a little of that leak into green and blue.
    red = np.abs(salient[..., 0] - plain[..., 0]).mean()
    green = np.abs(salient[..., 1] - plain[..., 1]).mean()
    assert red > 10 and red > 4 * green, (red, green)
