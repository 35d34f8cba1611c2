"""The run directory: checked before a run builds anything, created once, locked while in use.

A path that cannot become a run directory (an empty one, an existing file, a place that
cannot be written: ``/proc/x``, ``/sys/x``, a read-only disk) stops the run with one line
before anything is compiled or created. While a run trains, it holds an advisory lock
(``flock``) on its directory, so a second run started on the same directory is refused
instead of writing into the first one's files; the lock goes with the process, so a run
killed without cleaning up never leaves a stale one. No file is written for the lock.
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path

from jaxatari.config import ConfigError


def check_run_dir(run_dir: Path) -> None:
    """ConfigError (one line) unless ``run_dir`` is, or can be created as, a writable
    directory. Creates nothing that stays: a probe directory is made and removed."""
    if not str(run_dir).strip():
        raise ConfigError("--run-dir must not be empty (leave it out for runs/<preset>-<env>-<time>)")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is an existing file, not a directory; choose "
                          "another path")
    existing = run_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--run-dir {run_dir} cannot be created: {existing} is a file, not "
                          "a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".jaxatari-probe-", dir=existing))
    except OSError as error:
        raise ConfigError(f"--run-dir {run_dir} cannot be written ({describe(error)} in "
                          f"{existing})") from None


def create_run_dir(run_dir: Path) -> None:
    """mkdir -p, with a failure in words."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create run directory {run_dir} ({describe(error)})") from None


def describe(error: OSError) -> str:
    """An OSError in words, without the ``[Errno N]`` prefix."""
    return error.strerror or errno.errorcode.get(error.errno or 0, type(error).__name__)


class RunDirLock:
    """An exclusive advisory lock on a run directory, held by this process until released."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock, or raises ConfigError (one line) if another process holds it."""
        if self._fd is not None:
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"run directory {self.run_dir} is in use by another jaxatari "
                                  "run; wait for it to finish or choose another --run-dir"
                                  ) from None
            raise ConfigError(f"cannot lock run directory {self.run_dir} "
                              f"({describe(error)})") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
