"""Custom environments' optional hooks (training(), evaluate(), get_display()) reach training,
validation, the eval and random commands, their videos and saliency maps; defaults where an
env has none."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from jaxatari.cli import main
from jaxatari.envs.base import display_hook, mode_hook
from jaxatari.loop import train
from jaxatari.video import read_video
from tests.custom_env import DISPLAY_COLOUR
from tests.test_display import virtual_screen  # noqa: F401  (the Xvfb fixture)
from tests.tiny import tiny

ROOM = "tests.custom_env:ColourRoom"


def test_defaults_are_supplied_where_an_env_has_no_hooks():
    class Bare:
        pass

    assert mode_hook(Bare(), "train")() is None and mode_hook(Bare(), "eval")() is None
    assert display_hook(Bare()) is None

    class Original:   # the original's spelling
        def getDisplay(self):
            return np.zeros((2, 2, 3), np.uint8)

    assert display_hook(Original()).__name__ == "getDisplay"


def test_random_agent_plays_in_evaluation_mode_and_records_the_display(tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["random", "demo", "--env", ROOM, "--episodes", "2", "--record",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["scores"] == [30.0, 30.0]   # evaluate(): 3 steps paying 10
    frames = read_video(out / "episode_001.mp4")
    # get_display()'s 16 x 16 screen (not the 8 x 8 observation), zoomed x10: 3 steps + final
    assert frames.shape == (4, 160, 160, 3)
    centre = frames[:, 80, 80].astype(int)
    assert np.abs(centre - DISPLAY_COLOUR).max() < 12


@pytest.fixture(scope="module")
def room_run(tmp_path_factory):
    # No learning update (steps == learn_start): the hooks need an agent, not a good one,
    # and one compilation fewer keeps this cheap.
    # Preprocessed observations (grey 6 x 6) also check that eval rebuilds the same env.
    config = tiny(env=ROOM, seeds=1, steps=40, learn_start=40, batch_size=8, mem_size=64,
                  val_freq=40, val_steps=12, val_envs=2, verbose=True, height=6, width=6,
                  color_space="y")
    run_dir, summary = train(config, tmp_path_factory.mktemp("room") / "run", quiet=True)
    return run_dir, summary


def test_training_uses_training_and_validation_uses_evaluate(room_run):
    run_dir, summary = room_run
    with (run_dir / "episodes.csv").open(newline="") as f:
        scores = {float(row["score"]) for row in csv.DictReader(f)}
    assert scores == {5.0}                      # training(): 5 steps paying 1
    assert summary["final_scores"] == [30.0]    # validation in evaluate() mode
    spec = json.loads((run_dir / "config.json").read_text())["env_spec"]
    assert spec["obs_shape"] == [6, 6, 1]
    assert spec["protocol"]["preprocessing"] == {"height": 6, "width": 6, "color_space": "y"}


def test_eval_saliency_video_uses_the_display(room_run, tmp_path, capsys):
    run_dir, _ = room_run
    out = tmp_path / "eval"
    assert main(["eval", str(run_dir), "--episodes", "1", "--record", "--saliency", "normal",
                 "--epsilon", "0", "--out", str(out), "--allow-import", ROOM]) == 0
    assert json.loads((out / "results.json").read_text())["scores"] == [30.0]
    frames = read_video(out / "episode_001.mp4").astype(int)
    assert frames.shape == (4, 160, 160, 3)
    # the display's green stays in the green channel; the red channel carries the map
    assert np.abs(frames[..., 1] - DISPLAY_COLOUR[1]).mean() < 12
    assert frames[:3, ..., 0].max() > 200     # greedy steps: a map scaled to 255 in red


def test_eval_live_display_with_saliency(room_run, virtual_screen, capsys):
    run_dir, _ = room_run
    assert main(["eval", str(run_dir), "--episodes", "1", "--display", "--saliency", "guided",
                 "--epsilon", "0", "--fps", "1000", "--allow-import", ROOM]) == 0
    out = capsys.readouterr().out
    assert "display: 4 frames shown at zoom 20" in out   # 16 x 16 display -> 320 pixels
    assert not list(run_dir.glob("eval-*"))   # a display writes no files


COUNTDOWN = "tests.custom_env:make_countdown"


def test_pure_jax_custom_env_by_import_path_has_an_evaluation_variant(tmp_path, capsys):
    from jaxatari.config import Config
    from jaxatari.envs import JaxEnv, make_env
    env = make_env(Config(env=COUNTDOWN, height=2, width=2))
    assert isinstance(env, JaxEnv) and env.spec.obs_shape == (2, 2, 1)
    assert env.for_mode("eval").spec.obs_shape == (2, 2, 1)   # preprocessed too
    assert env.for_mode("train") is env
    out = tmp_path / "random"
    assert main(["random", "demo", "--env", COUNTDOWN, "--episodes", "2", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["scores"] == [30.0, 30.0]


def test_pure_jax_custom_env_trains_in_its_mode_and_validates_in_the_other(tmp_path):
    config = tiny(env=COUNTDOWN, seeds=1, steps=64, learn_start=64, batch_size=8, mem_size=64,
                  val_freq=64, val_steps=12, val_envs=2, verbose=True, chunk_steps=32)
    run_dir, summary = train(config, tmp_path / "run", quiet=True)
    with (run_dir / "episodes.csv").open(newline="") as f:
        assert {float(row["score"]) for row in csv.DictReader(f)} == {5.0}
    assert summary["final_scores"] == [30.0]


def test_an_evaluation_env_must_share_the_spec():
    import dataclasses

    from jaxatari.envs import EnvError
    from tests.custom_env import make_countdown
    env = make_countdown()
    other = dataclasses.replace(env.evaluation,
                                spec=dataclasses.replace(env.spec, num_actions=3))
    with pytest.raises(EnvError, match="must agree"):
        dataclasses.replace(env, evaluation=other)
