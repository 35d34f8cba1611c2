"""Screens to MP4 (imageio with the ffmpeg bundled by imageio-ffmpeg) and PNG frames.

Frames are upscaled by an integer factor with nearest-neighbour pixels (the original's
display zoom; Catch's 24 x 24 screen becomes 192 x 192) and padded with black to a
multiple of 16 pixels, so the H.264 encoder never resamples them.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

MACRO_BLOCK = 16


def zoom_for(shape: tuple[int, ...], min_size: int = 160) -> int:
    """The integer upscale that brings the larger side to at least ``min_size`` pixels."""
    return max(1, math.ceil(min_size / max(shape[0], shape[1])))


def prepare(frame: np.ndarray, zoom: int) -> np.ndarray:
    """[H, W] or [H, W, C] -> [H', W', 3] uint8, zoomed and padded to the macro block."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame * 255.0 if frame.max() <= 1.0 else frame), 0, 255
                        ).astype(np.uint8)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    frame = np.repeat(np.repeat(frame, zoom, axis=0), zoom, axis=1)
    h, w = frame.shape[:2]
    pad_h, pad_w = (-h) % MACRO_BLOCK, (-w) % MACRO_BLOCK
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)))
    return frame


class VideoWriter:
    """``with VideoWriter(path, fps) as video: video.add(frame)``; the file appears at close."""

    def __init__(self, path: Path, fps: float = 15.0, min_size: int = 160):
        self.path = Path(path)
        self.fps = fps
        self.min_size = min_size
        self.zoom = None
        self.frames = 0
        self._writer = None

    def __enter__(self):
        return self

    def add(self, frame: np.ndarray) -> None:
        import imageio.v2 as imageio
        if self.zoom is None:
            self.zoom = zoom_for(np.asarray(frame).shape, self.min_size)
        frame = prepare(frame, self.zoom)
        with warnings.catch_warnings():
            # imageio starts ffmpeg with fork+exec; Python warns about forking a
            # multithreaded (JAX) process, which is harmless when exec follows at once.
            warnings.filterwarnings("ignore", message=".*os.fork.*")
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = imageio.get_writer(str(self.path), format="FFMPEG", mode="I",
                                                  fps=self.fps, codec="libx264", quality=8,
                                                  macro_block_size=MACRO_BLOCK,
                                                  ffmpeg_log_level="error")
            self._writer.append_data(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __exit__(self, *exc_info):
        self.close()
        return False


def save_png(path: Path, frame: np.ndarray, min_size: int = 160) -> Path:
    import imageio.v2 as imageio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(str(path), prepare(frame, zoom_for(np.asarray(frame).shape, min_size)))
    return path


def read_video(path: Path) -> np.ndarray:
    """All frames of a video as [T, H, W, 3] uint8 (for tests and checks)."""
    import imageio.v2 as imageio
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*os.fork.*")
        reader = imageio.get_reader(str(path), format="FFMPEG")
        try:
            return np.stack([np.asarray(frame) for frame in reader])
        finally:
            reader.close()
