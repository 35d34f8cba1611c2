"""A live window showing the games as the agent plays them (the original's Qt display, ``qlua``
with ``-zoom``), drawn with tkinter, the GUI toolkit in Python's standard library.

``LiveDisplay`` is an ``on_frame`` callback of ``evaluation.play_episodes``: it keeps the
latest full-colour screen of every episode, tiles them in a grid (one tile per episode,
played side by side), zooms with nearest-neighbour pixels and redraws once per agent step,
at most ``fps`` times a second. Where there is no screen (Linux without ``DISPLAY`` or
``WAYLAND_DISPLAY``, or a display that refuses the connection) it raises ``DisplayError``
with one line that suggests ``--record``.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from jaxatari.config import ConfigError

HEADLESS = ("no screen to show a live display on ({why}); use --record to write each "
            "episode to an MP4 instead")


class DisplayError(ConfigError):
    """No window can be opened here; the message is one line."""


def screen_available() -> tuple[bool, str]:
    """(whether a window can be opened, why not), without opening one."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return False, "DISPLAY is not set"
    try:
        import tkinter  # noqa: F401
    except ImportError:
        return False, "Python's tkinter is not installed (e.g. apt-get install python3-tk)"
    return True, ""


def tile(frames: list[np.ndarray | None], zoom: int) -> np.ndarray:
    """The episodes' screens [H, W, 3] in a grid of ceil(sqrt(N)) columns, 1-pixel grey gaps,
    each zoomed ``zoom`` times; an episode without a screen yet is black."""
    shape = next(f.shape for f in frames if f is not None)
    n = len(frames)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = shape[0] * zoom, shape[1] * zoom
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, 3), 64, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        cell = np.zeros((h, w, 3), np.uint8) if frame is None else np.repeat(
            np.repeat(np.asarray(frame, np.uint8)[..., :3], zoom, axis=0), zoom, axis=1)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = cell
    return grid


def _ppm(image: np.ndarray) -> bytes:
    h, w = image.shape[:2]
    return b"P6 %d %d 255\n" % (w, h) + np.ascontiguousarray(image, np.uint8).tobytes()


class LiveDisplay:
    """``on_frame(index, step, rgb, saliency_map)`` drawing every episode's screen in one window.

    ``saliency``: overlay each map in the red channel (``saliency.overlay``). ``zoom`` None
    picks the smallest integer zoom that brings a screen to 320 pixels on its larger side.
    """

    def __init__(self, num_episodes: int, title: str = "jaxatari", zoom: int | None = None,
                 fps: float | None = None, saliency: bool = False):
        ok, why = screen_available()
        if not ok:
            raise DisplayError(HEADLESS.format(why=why))
        import tkinter
        try:
            self.root = tkinter.Tk()
        except tkinter.TclError as error:
            raise DisplayError(HEADLESS.format(why=str(error).strip().splitlines()[0])) from None
        self.root.title(title)
        self.label = tkinter.Label(self.root, borderwidth=0)
        self.label.pack()
        self.photo = None
        self.zoom = zoom
        self.period = 1.0 / fps if fps else 0.0
        self.saliency = saliency
        self.screens: list[np.ndarray | None] = [None] * num_episodes
        self.step = None
        self.frames = 0          # windows drawn, for the summary line and tests
        self.open = True
        self._last = 0.0
        self.root.protocol("WM_DELETE_WINDOW", self._closed)

    def _closed(self) -> None:
        self.open = False
        self.root.destroy()

    def __call__(self, index: int, step: int, rgb, saliency_map) -> None:
        if rgb is None:
            raise DisplayError("this environment has no screen to display (give it a "
                               "get_display() method or rgb_array rendering)")
        if self.step is not None and step != self.step:
            self.draw()   # every episode's screen of the previous step has arrived
        self.step = step
        if self.saliency:
            from jaxatari.saliency import overlay
            rgb = overlay(rgb, saliency_map)
        self.screens[index] = np.asarray(rgb, np.uint8)

    def draw(self) -> None:
        if not self.open or all(s is None for s in self.screens):
            return
        if self.zoom is None:
            shape = next(s.shape for s in self.screens if s is not None)
            self.zoom = max(1, math.ceil(320 / max(shape[:2])))
        import tkinter
        wait = self._last + self.period - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        image = tile(self.screens, self.zoom)
        try:
            if self.photo is None:
                self.photo = tkinter.PhotoImage(master=self.root, data=_ppm(image), format="PPM")
                self.label.configure(image=self.photo)
            else:
                self.photo.configure(data=_ppm(image), format="PPM")
            self.root.update()
        except tkinter.TclError:   # the window was closed between two frames
            self.open = False
            return
        self._last = time.perf_counter()
        self.frames += 1

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        """The colour drawn at window pixel (x, y), read back from Tk (for tests)."""
        return tuple(int(v) for v in self.photo.get(x, y))

    def close(self) -> None:
        self.draw()   # the final screens
        if self.open:
            self.open = False
            self.root.destroy()
