"""The eval, random and plot commands, the run's plots, and one-line errors for bad input."""
from __future__ import annotations

import gc
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest


from jaxatari import checkpoint as ckpt
from jaxatari.cli import main
from jaxatari.human_scores import SOURCE, normalise, random_and_human
from jaxatari.loop import train
from jaxatari.plots import filter_grid, first_conv_kernel
from jaxatari.video import read_video
from tests.tiny import tiny


MEAN_LINE = re.compile(r"^mean score (\S+) \+- (\S+) \(standard deviation\) over (\d+) episodes?(, \d+ of them cut at the step limit \(their scores are partial\))?$")


# Reading a damaged checkpoint makes orbax abandon tensorstore reads whose callbacks later
# find orbax's event loop closed; Python reports that at a later garbage collection as an
# unraisable exception (in whichever test runs then). It is orbax's and harmless.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir, _ = train(tiny(steps=256),
                       tmp_path_factory.mktemp("eval") / "run", quiet=True)
    return run_dir


def scores_of(output: str) -> list[float]:
    return [float(m) for m in re.findall(r"^episode +\d+: score (\S+) in", output, re.M)]


def test_eval_records_videos_with_saliency_in_the_red_channel(run_dir, tmp_path, capsys):
    out = tmp_path / "videos"
    assert main(["eval", str(run_dir), "--episodes", "3", "--record", "--saliency", "guided",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    scores = scores_of(text)
    assert len(scores) == 3 and all(s in (0.0, 1.0) for s in scores)   # Catch: 0 or 1
    mean = MEAN_LINE.match([line for line in text.splitlines() if line.startswith("mean")][0])
    assert float(mean.group(1)) == pytest.approx(np.mean(scores), abs=1e-3)
    assert float(mean.group(2)) == pytest.approx(np.std(scores), abs=1e-3)
    assert "checkpoints/best" in text   # best by default
    results = json.loads((out / "results.json").read_text())
    assert results["scores"] == scores and results["saliency"] == "guided"
    for i in range(1, 4):
        frames = read_video(out / f"episode_{i:03d}.mp4")
        # 23 steps of Catch: the 23 screens acted on, then the final one; upscaled x7.
        assert frames.shape == (24, 176, 176, 3)
        acted, final = frames[:-1], frames[-1]
        assert acted[..., 0].mean() > acted[..., 1].mean() + 10    # the map reddens them
        assert abs(float(final[..., 0].mean()) - float(final[..., 1].mean())) < 3   # no map


def test_eval_saliency_without_record_writes_png_frames(run_dir, tmp_path, capsys):
    out = tmp_path / "frames"
    assert main(["eval", str(run_dir), "--episodes", "1", "--saliency", "deconvnet",
                 "--checkpoint", "last", "--out", str(out)]) == 0
    frames = sorted((out / "saliency" / "episode_001").glob("frame_*.png"))
    assert len(frames) == 24
    assert "checkpoints/last" in capsys.readouterr().out


def test_random_agent_for_a_preset_and_a_run(run_dir, capsys):
    assert main(["random", "demo", "--episodes", "6"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("random agent, env catch") and len(scores_of(text)) == 6
    assert MEAN_LINE.match(text.strip().splitlines()[-1])
    assert main(["random", str(run_dir), "--episodes", "2", "--size", "12"]) == 0
    text = capsys.readouterr().out
    assert '"size": 12' in text and [int(n) for n in re.findall(r"in (\d+) steps", text)] == [11, 11]


def test_run_plots_and_plot_command(run_dir, tmp_path, capsys):
    for name in ("curves.png", "scores.png", "v.png", "td_error.png", "loss.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "normalised_scores.png").exists()   # Catch has no human score
    assert not (run_dir / "conv_filters.png").exists()        # an MLP has no filters
    out = tmp_path / "both.png"
    assert main(["plot", str(run_dir), str(run_dir), "--out", str(out), "--metric", "v"]) == 0
    assert out.is_file() and out.stat().st_size > 1000
    assert str(out) in capsys.readouterr().out


def test_conv_filters_grid_and_human_normalised_scores():
    kernel = np.arange(5 * 5 * 2 * 3, dtype=np.float32).reshape(5 * 5 * 2, 3)
    params = {"params": {"body": {"PatchConv_0": {"dense": {"kernel": kernel}},
                                  "PatchConv_1": {"dense": {"kernel": np.zeros((3, 3))}}}}}
    filters = first_conv_kernel(params, in_channels=2)
    assert filters.shape == (5, 5, 2, 3)
    # PatchConv rows run over patch offsets (i, j), then input channels.
    assert filters[1, 2, 1, 0] == kernel[(1 * 5 + 2) * 2 + 1, 0]
    grid = filter_grid(filters)
    assert grid.shape == (2 * 6 + 1, 3 * 6 + 1) and grid.min() == 0.0 and grid.max() == 1.0
    assert first_conv_kernel({"params": {"body": {"Dense_0": {}}}}, 2) is None
    # Kaixhin/Atari's table (the Nature paper's): Space Invaders random 148, human 1652.3.
    assert random_and_human("SpaceInvaders") == random_and_human("space_invaders") == (148.0, 1652.3)
    assert normalise("Pong", [9.3])[0] == pytest.approx(1.0)
    assert normalise("catch", [1.0]) is None and "Nature" in SOURCE and "human_at30" in SOURCE


@pytest.mark.parametrize("args, expected", [
    (["eval", "{missing}"], "no run directory or checkpoint"),
    (["eval", "{empty}"], "holds no saved agent"),
    (["eval", "{corrupt}"], "corrupt"),
    (["eval", "{run}", "--episodes", "0"], "--episodes must be positive"),
    (["eval", "{run}", "--epsilon", "2"], "--epsilon must be in [0, 1]"),
    (["eval", "{run}", "--seed-index", "7"], "--seed-index must be in [0, 1]"),
    (["export", "{missing}"], "no run directory or checkpoint"),
    (["plot", "{missing}"], "no run directory"),
    (["plot", "{empty}"], "has no eval.csv"),
    (["random", "no-such-preset"], "neither a run directory nor a preset"),
    (["resume", "{missing}"], "no run directory at"),
    (["resume", "{empty}"], "holds no saved agent"),
    (["resume", "{run}", "--steps", "128"], "nothing left to train"),
    (["resume", "{run}", "--steps", "512", "--hidden-size", "32"], "hidden_size 16 there, 32 here"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, args, expected):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run_dir / "checkpoints", corrupt / "checkpoints")
    shutil.copy(run_dir / "config.json", corrupt / "config.json")
    for name in ("best", "last"):
        for f in (corrupt / "checkpoints" / name / ckpt.STATE_DIR / "train").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "corrupt": corrupt,
             "run": run_dir}
    before = sorted(p.name for p in run_dir.iterdir())
    assert main([a.format(**paths) for a in args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err
    assert sorted(p.name for p in run_dir.iterdir()) == before   # nothing written
    gc.collect()   # orbax's leftover callbacks fire here, under this module's filter


def test_resume_command_continues_a_run_in_place(run_dir, tmp_path, capsys):
    copy = tmp_path / "moved"
    shutil.copytree(run_dir, copy)
    assert main(["resume", str(copy), "--steps", "384", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "resumed at step 256" in out and f"run directory: {copy}" in out
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["steps"] == 384 and summary["eval_steps"] == [128, 256, 384]
    assert ckpt.read_metadata(copy / "checkpoints" / "last")["step"] == 384
    assert ckpt.read_metadata(run_dir / "checkpoints" / "last")["step"] == 256   # untouched
