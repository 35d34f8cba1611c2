"""One virtual X screen (Xvfb) for the whole test session, shared by every test module.

Tk keeps its X connection after its window is destroyed, and exits the process when that
server goes away, so the server lives until the interpreter exits, never per module.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import time
from pathlib import Path


@functools.cache
def start() -> tuple[str | None, str]:
    """(DISPLAY of a running Xvfb, "") or (None, why there is none)."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None, "Xvfb is not installed (.ci/run installs it with apt-get where it can)"
    try:
        import tkinter  # noqa: F401
    except ImportError:
        return None, "Python's tkinter is not installed"
    # Each pytest-xdist worker (PYTEST_XDIST_WORKER gw0, gw1, ...) looks for a free display
    # in its own range, so workers starting side by side never race for one.
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or 0)
    first = 99 + 20 * worker
    number = next(n for n in range(first, first + 20)
                  if not Path(f"/tmp/.X11-unix/X{n}").exists()
                  and not Path(f"/tmp/.X{n}-lock").exists())
    server = subprocess.Popen([xvfb, f":{number}", "-screen", "0", "800x600x24", "-nolisten",
                               "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = Path(f"/tmp/.X11-unix/X{number}")
    deadline = time.monotonic() + 10
    while not socket.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not socket.exists():
        server.kill()
        return None, "Xvfb did not start"
    atexit.register(server.terminate)
    return f":{number}", ""
