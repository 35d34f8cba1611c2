"""The session protocol and the native chunk driver every training loop shares
(``jaxatari.loops.session``), with a stand-in chunk: no env, no agent."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxatari.loops.checkpoint_items import ActorLearnerItems, to_tree
from jaxatari.loops.session import PlainSession, Session, run_native_chunks
from tests.tiny import tiny


class Recorder:
    def __init__(self):
        self.chunks, self.evals = [], []

    def log_chunk(self, step, out, epsilon, seconds, steps):
        self.chunks.append(step)

    def log_eval(self, step, scores, episodes, **_):
        self.evals.append(step)

    def note(self, text):
        pass


def drive(session, total_iterations=10, per_chunk=3, iteration=0):
    """Iterations of 4 steps; the carry counts the iterations run."""
    def chunk(carry, first, active):
        return carry + active, {"x": jnp.zeros((per_chunk,))}

    def evaluate(carry, key):
        return np.zeros(2), np.ones(2, np.int64), None, None

    def log_chunk(step, carry, out, run, seconds):
        assert len(out["x"]) == run
        session.logger.log_chunk(step, out, 0.0, seconds, run * 4)

    return run_native_chunks(session, carry=jnp.int32(iteration), iteration=iteration,
                             total_iterations=total_iterations, iterations_per_chunk=per_chunk,
                             steps_per_iteration=4, chunk=chunk, evaluate=evaluate,
                             items=lambda carry: ActorLearnerItems(train=DummyTrain(), actors=None),
                             log_chunk=log_chunk)


class DummyTrain:
    params = None


def test_plain_session_is_a_session():
    assert isinstance(PlainSession(tiny(), Recorder()), Session)


def test_the_driver_runs_every_iteration_and_evaluates_when_due():
    session = PlainSession(tiny(val_freq=16), Recorder())
    assert int(drive(session)) == 10
    assert session.logger.chunks == [12, 24, 36, 40]       # chunks of 3 iterations, then 1
    assert session.logger.evals == [24, 36, 40]            # the first chunk end at or after
    assert [e.step for e in session.evaluations] == [24, 36, 40]
    assert session.next_eval == 48


def test_the_driver_answers_an_interrupt_before_the_next_chunk():
    class Interrupted(PlainSession):
        interrupt_requested = True

        def handle_interrupt(self, items, step, iteration):
            raise RuntimeError(f"stopped at {step} {iteration} {sorted(to_tree(items()))}")

    with pytest.raises(RuntimeError, match="stopped at 8 2 \\['train'\\]"):
        drive(Interrupted(tiny(val_freq=16), Recorder()), iteration=2)
