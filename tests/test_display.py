"""The live display (eval/random --display, --zoom): under a virtual screen (Xvfb) a window
opens and every step's screens are drawn and read back; without a screen, one line that
suggests --record."""
from __future__ import annotations

import numpy as np
import pytest

from jaxatari.cli import main
from jaxatari.display import LiveDisplay, tile
from tests import xvfb


def test_tile_lays_out_episodes_in_a_zoomed_grid():
    red = np.zeros((2, 3, 3), np.uint8)
    red[..., 0] = 255
    grid = tile([red, None, red], zoom=2)
    # 3 episodes -> 2 x 2 grid of 4 x 6 tiles with 1-pixel gaps
    assert grid.shape == (2 * 5 - 1, 2 * 7 - 1, 3)
    assert (grid[:4, :6] == (255, 0, 0)).all() and (grid[:4, 7:] == 0).all()
    assert (grid[4] == 64).all() and (grid[5:, :6] == (255, 0, 0)).all()


def test_headless_display_is_one_line_suggesting_record(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert main(["random", "demo", "--episodes", "1", "--display"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "DISPLAY is not set" in err and "--record" in err
    assert main(["random", "demo", "--episodes", "1", "--zoom", "2"]) == 2
    assert "add --display" in capsys.readouterr().err


@pytest.fixture
def virtual_screen(monkeypatch):
    """The session's Xvfb screen as DISPLAY, or a skip saying why there is none."""
    display, why = xvfb.start()
    if display is None:
        pytest.skip(why)
    monkeypatch.setenv("DISPLAY", display)
    return display


def test_window_opens_and_draws_every_step(virtual_screen):
    display = LiveDisplay(2, zoom=3)
    frame = np.zeros((4, 5, 3), np.uint8)
    for step in range(3):
        frame[..., 1] = 50 * (step + 1)
        display(0, step, frame.copy(), None)
        display(1, step, frame.copy(), None)
    assert display.frames == 2   # steps 0 and 1 drawn when the next step's screens came
    assert display.pixel(0, 0) == (0, 100, 0)
    display.close()              # draws the last step
    assert display.frames == 3 and not display.open


def test_saliency_overlay_is_drawn_in_the_red_channel(virtual_screen):
    display = LiveDisplay(1, zoom=1, saliency=True)
    saliency = np.zeros((4, 4))
    saliency[0, 0] = 1.0
    display(0, 0, np.zeros((4, 4, 3), np.uint8), saliency)
    display.draw()
    assert display.pixel(0, 0)[0] == 255 and display.pixel(3, 3) == (0, 0, 0)
    display.close()


def test_random_agent_plays_in_a_window_with_the_custom_display(virtual_screen, capsys):
    assert main(["random", "demo", "--env", "tests.custom_env:ColourRoom", "--episodes", "2",
                 "--display", "--zoom", "2", "--fps", "1000"]) == 0
    out = capsys.readouterr().out
    # evaluation mode: 3 steps per episode, 3 screens acted on and the final one
    assert "display: 4 frames shown at zoom 2" in out
