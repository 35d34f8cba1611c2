"""Ctrl+C: "Save agent (y/n)?" on a terminal, saving without one, leaving at once on a
second interrupt, and the resume question when a run directory holds a saved agent; SIGTERM
saving without a question."""
from __future__ import annotations

import os
import pty
import select
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest


from jaxatari import checkpoint as ckpt
from jaxatari.config import ConfigError
from jaxatari.loop import TrainingInterrupted, Trainer, train
from jaxatari.loops.checkpoint_items import to_tree
from tests.tiny import TINY, tiny
from tests.subprocess_env import repo_env

ROOT = Path(__file__).resolve().parent.parent


LONG = 1_000_000   # never reached: every run here is interrupted
# The same run through the command line: the demo preset, every value above overriding it.
TRAIN_ARGS = ["train", "demo", "--steps", str(LONG)] + [
    f"--{name.replace('_', '-')}={value}" for name, value in TINY.items()]


def progress_steps(run_dir: Path) -> list[int]:
    path = run_dir / "progress.csv"
    if not path.is_file():
        return []
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:] if line]


class Terminal:
    """A child process on a pseudo-terminal (its stdin, stdout and stderr)."""

    def __init__(self, args: list[str]):
        env = repo_env(JAX_COMPILATION_CACHE_DIR=str(Path(tempfile.gettempdir())
                                                     / "jaxatari-test-xla-cache"),
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.3", COLUMNS="120")
        with warnings.catch_warnings():   # the child execs at once: forking JAX is safe
            warnings.simplefilter("ignore", RuntimeWarning)
            self.pid, self.fd = pty.fork()
        if self.pid == 0:   # the child: a foreground job, SIGINT not ignored
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.chdir(ROOT)
            os.execvpe(sys.executable, [sys.executable, "-m", "jaxatari", *args], env)
        self.output = ""

    def read(self, timeout: float = 0.2) -> str:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                self.output += os.read(self.fd, 65536).decode(errors="replace")
            except OSError:   # the child has gone
                pass
        return self.output

    def wait_for(self, condition, timeout: float = 240.0, what: str = "") -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.read()
            if condition():
                return
        self.kill()
        raise AssertionError(f"timed out waiting for {what}; output:\n{self.output[-3000:]}")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def interrupt(self) -> None:
        os.kill(self.pid, signal.SIGINT)

    def wait(self, timeout: float = 120.0) -> int:
        """The exit status (128 + signal for a child killed by a signal)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                for _ in range(20):
                    if not self.read(0.05):
                        break
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) \
                    else 128 + os.WTERMSIG(status)
        self.kill()
        raise AssertionError(f"the child did not exit; output:\n{self.output[-3000:]}")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass


def test_ctrl_c_on_a_terminal_asks_saves_and_resume_is_offered(tmp_path):
    run_dir = tmp_path / "run"
    no_evaluations = ["--val-freq", str(LONG)]   # so only an interrupt saves here
    term = Terminal([*TRAIN_ARGS, *no_evaluations, "--run-dir", str(run_dir)])
    term.wait_for(lambda: len(progress_steps(run_dir)) >= 2, what="training progress")
    term.interrupt()
    term.wait_for(lambda: "Save agent (y/n)?" in term.output, what="the save question")
    term.send("y\n")
    assert term.wait() == 130, term.output[-2000:]
    assert "Saved agent at step" in term.output
    meta = ckpt.read_metadata(run_dir / "checkpoints" / "last")
    assert meta["reason"] == "interrupt" and meta["step"] > 0
    assert (run_dir / "INCOMPLETE").is_file() and not (run_dir / "summary.json").exists()
    saved_step = meta["step"]

    # The same command again: asked whether to resume; yes continues from the saved step.
    term = Terminal([*TRAIN_ARGS, *no_evaluations, "--run-dir", str(run_dir)])
    term.wait_for(lambda: "resume (y/n)?" in term.output, what="the resume question")
    assert f"step {saved_step:,}" in term.output
    term.send("y\n")
    term.wait_for(lambda: max(progress_steps(run_dir), default=0) > saved_step + 64,
                  what="resumed progress")
    # A second Ctrl+C leaves at once, without asking and without saving.
    term.interrupt()
    term.wait_for(lambda: "SIGINT received" in term.output, what="the first interrupt")
    term.interrupt()
    assert term.wait(timeout=30) == 128 + signal.SIGINT
    assert ckpt.read_metadata(run_dir / "checkpoints" / "last")["step"] == saved_step


def test_sigterm_saves_without_asking_even_on_a_terminal_and_exits_143(tmp_path):
    """What a cluster's scheduler sends before it stops a job: nobody is there to answer."""
    run_dir = tmp_path / "run"
    term = Terminal([*TRAIN_ARGS, "--val-freq", str(LONG), "--run-dir", str(run_dir)])
    term.wait_for(lambda: len(progress_steps(run_dir)) >= 2, what="training progress")
    os.kill(term.pid, signal.SIGTERM)
    assert term.wait() == 128 + signal.SIGTERM, term.output[-2000:]
    assert "SIGTERM received" in term.output and "Save agent (y/n)?" not in term.output
    meta = ckpt.read_metadata(run_dir / "checkpoints" / "last")
    assert meta["reason"] == "interrupt" and meta["step"] > 0


def test_sigterm_is_taken_where_sigint_is_ignored_and_both_handlers_are_restored():
    """A background job of a shell script ignores SIGINT, which training leaves alone; a
    SIGTERM there is still taken, and the save it leads to asks no question."""
    from jaxatari.loop import InterruptGuard
    previous = (signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        guard = InterruptGuard(interactive=True)
        with guard:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.time() + 10
            while not guard.requested and time.time() < deadline:
                time.sleep(0.01)
            assert guard.requested and guard.signum == signal.SIGTERM
            assert guard.confirm_save()   # no question, though interactive
            # a second SIGTERM would end the process at once
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_without_a_terminal_ctrl_c_saves_and_the_run_resumes_exactly(tmp_path):
    """SIGINT (no terminal) saves at the next chunk boundary; resuming from that save gives
    the parameters of an uninterrupted run, bit for bit."""
    run_dir = tmp_path / "interrupted"
    config = tiny(steps=LONG)

    def interrupt_when_running():
        deadline = time.time() + 300
        while len(progress_steps(run_dir)) < 6 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    # Python's own handler, as in a foreground process (a background job ignores SIGINT,
    # and then so does training).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=interrupt_when_running, daemon=True)
    thread.start()
    try:
        with pytest.raises(TrainingInterrupted) as stopped:
            train(config, run_dir, quiet=True, interactive=False)
        thread.join()
        handler_after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stopped.value.saved is not None
    step = ckpt.read_metadata(run_dir / "checkpoints" / "last")["step"]
    assert step % 64 == 0 and step >= 192   # at a chunk boundary, after the 3rd chunk
    assert handler_after is signal.default_int_handler   # restored after training

    # Without a terminal, a saved agent is never resumed or replaced unless asked.
    with pytest.raises(ConfigError, match="holds a saved agent .* --resume .* --no-resume"):
        train(config, run_dir, quiet=True, interactive=False)

    total = step + 128
    config = tiny(steps=total)
    train(config, run_dir, quiet=True, interactive=False, resume=True)
    straight, _ = train(config, tmp_path / "straight", quiet=True)
    templates = to_tree(Trainer(config, run_dir).templates())
    resumed_items, _ = ckpt.load(run_dir / "checkpoints" / "last", templates)
    straight_items, _ = ckpt.load(straight / "checkpoints" / "last", templates)
    for name in ("train", "actor", "env", "replay"):
        a, b = jax.tree.leaves(resumed_items[name]), jax.tree.leaves(straight_items[name])
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), name


def test_ctrl_c_on_a_terminal_saves_an_actor_learner(tmp_path):
    """The actor-learners share the guard: the same question, and a checkpoint they resume from."""
    run_dir = tmp_path / "async"
    args = ["train", "demo-async", "--steps", str(LONG), "--seeds", "1", "--envs", "4",
            "--hidden-size", "16", "--chunk-steps", "200", "--val-freq", str(LONG),
            "--run-dir", str(run_dir)]
    term = Terminal(args)
    term.wait_for(lambda: len(progress_steps(run_dir)) >= 2, what="training progress")
    term.interrupt()
    term.wait_for(lambda: "Save agent (y/n)?" in term.output, what="the save question")
    term.send("y\n")
    assert term.wait() == 130, term.output[-2000:]
    meta = ckpt.read_metadata(run_dir / "checkpoints" / "last")
    assert meta["reason"] == "interrupt" and meta["step"] > 0
    assert meta.get("kind") == "actor-learner", meta
