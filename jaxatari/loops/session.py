"""What every training loop shares: the session it talks to, the native chunk driver and
the host evaluator.

A loop (``loops.q_host``, ``loops.actors``, ``loops.actors_async``, and the Q agent's
native loop in ``jaxatari.loop``) owns its agent's state and its envs; the run around it
(interrupts, evaluation keys and schedule, recording and saving) is a ``Session``.
``SessionBase`` implements the protocol once; ``PlainSession`` is it without a run
directory (library use, learning tests) and ``loop.Trainer`` adds checkpoints, resume,
human-normalised scores and the Ctrl+C question.

Validation follows Kaixhin/Atari's ``Validation.lua``: ``--val-steps`` steps per seed at
``--val-epsilon`` in evaluation mode (life loss not terminal), scored by the mean raw game
score of the finished episodes (or of the running ones when none finished).
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Callable, NoReturn, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.config import Config
from jaxatari.devices import to_host
from jaxatari.loops.checkpoint_items import CheckpointRecord
from jaxatari.evaluation import EVAL_ENV_SEED_OFFSET, EVAL_KEY_OFFSET
from jaxatari.metrics import Evaluation, finite_or_none, mean_score

# A loop hands its state to the session as a function of no arguments returning its
# checkpoint items (``loops.checkpoint_items``: ``QItems`` or ``ActorLearnerItems``, whose
# ``train`` is the TrainState [S]), called only when they are needed.
Items = Callable[[], CheckpointRecord]


@runtime_checkable
class Session(Protocol):
    """The run around a training loop, as the loop sees it.

    logger: ``metrics.RunLogger`` (or anything with ``log_chunk``, ``log_eval``, ``note``).
    evaluations: those recorded so far (a resumed run's included); next_eval: the step at
    or after which the next evaluation is due.
    interrupt_requested: Ctrl+C or SIGTERM arrived; the loop answers at its next safe point
    with ``handle_interrupt``, which saves (if asked) and never returns.
    next_eval_key: the key of the next evaluation (one chain per run, checkpointed).
    record_evaluation: completes an evaluation's statistics from the loop's scores (and the
    held-out V and TD error an actor-learner computed), logs it, schedules the next one and
    saves the items.
    """

    logger: Any
    evaluations: list[Evaluation]
    next_eval: int

    @property
    def interrupt_requested(self) -> bool: ...

    def next_eval_key(self) -> jax.Array: ...

    def record_evaluation(self, step: int, scores, episodes, items: Items, iteration: int,
                          v=None, td_error=None) -> Evaluation: ...

    def handle_interrupt(self, items: Items, step: int, iteration: int) -> NoReturn: ...


class SessionBase:
    """``Session`` implemented once; subclasses complete, save and answer Ctrl+C.

    Hooks: ``value_stats(items, step, v, td_error)`` (the held-out V and TD error),
    ``normalise(scores)`` (human-normalised scores), ``save_after_eval(evaluation, items,
    iteration)``.
    """

    def __init__(self, config: Config, logger=None):
        self.config = config
        self.logger = logger
        self.evaluations: list[Evaluation] = []
        self.next_eval = config.val_freq
        self.eval_key = jax.random.PRNGKey(config.seed + EVAL_KEY_OFFSET)

    @property
    def interrupt_requested(self) -> bool:
        return False

    def next_eval_key(self):
        """The key of the next evaluation: a chain split once per evaluation (checkpointed,
        so a resumed run's evaluations draw what the uninterrupted run's would)."""
        self.eval_key, key = jax.random.split(self.eval_key)
        return key

    def value_stats(self, items: CheckpointRecord, step: int, v, td_error):
        return v, td_error

    def normalise(self, scores):
        return None

    def record_evaluation(self, step: int, scores, episodes, items: Items, iteration: int,
                          v=None, td_error=None) -> Evaluation:
        saved = items()
        v, td_error = self.value_stats(saved, step, v, td_error)
        normalised = self.normalise(scores)
        evaluation = Evaluation(step, np.asarray(scores, np.float64), np.asarray(episodes),
                                normalised=normalised, v=v, td_error=td_error)
        self.evaluations.append(evaluation)
        self.logger.log_eval(step, evaluation.scores, evaluation.episodes,
                             normalised=normalised, v=v, td_error=td_error,
                             params=to_host(saved.train.params)
                             if self.config.report_weights else None)
        self.next_eval = (step // self.config.val_freq + 1) * self.config.val_freq
        self.save_after_eval(evaluation, saved, iteration)
        return evaluation

    def save_after_eval(self, evaluation: Evaluation, items: CheckpointRecord,
                        iteration: int) -> None:
        del evaluation, items, iteration

    def handle_interrupt(self, items: Items, step: int, iteration: int) -> NoReturn:
        raise KeyboardInterrupt


class PlainSession(SessionBase):
    """The run around a loop without a run directory (library use, learning tests): logs to
    ``logger``, draws evaluation keys from the same chain as a run, keeps the evaluations in
    memory; no checkpoints, and Ctrl+C is Python's KeyboardInterrupt."""

    def __init__(self, config: Config, logger):
        super().__init__(config, logger)


# ------------------------------------------------------------------ native chunk driver

def run_native_chunks(session: Session, *, carry, iteration: int, total_iterations: int,
                      iterations_per_chunk: int, steps_per_iteration: int, chunk: Callable,
                      evaluate: Callable, items: Callable, log_chunk: Callable,
                      evaluates_at_start: bool = True):
    """The JAX-native loops' host side, one while-loop for every agent: answer Ctrl+C,
    evaluate when due (and at the end), run the next jitted chunk, log it. Returns the final
    carry.

    ``chunk(carry, first_iteration, active)`` runs ``iterations_per_chunk`` iterations, the
    last ``active`` of a shorter final chunk masked (one compile); ``evaluate(carry, key) ->
    (scores [S], episodes [S], v, td_error)``; ``items(carry)`` the checkpoint items;
    ``log_chunk(step, carry, out, iterations, seconds)``. Every save falls on a chunk
    boundary, so a resumed run with the same chunks reproduces an uninterrupted one.
    ``evaluates_at_start``: whether a run that has no iteration to train evaluates at 0.
    """
    evaluated_at = session.evaluations[-1].step if session.evaluations else -1
    while True:
        step = iteration * steps_per_iteration
        if session.interrupt_requested:
            session.handle_interrupt(lambda: items(carry), step, iteration)
        done = iteration >= total_iterations
        if ((step >= session.next_eval or done) and step != evaluated_at
                and (iteration > 0 or evaluates_at_start)):
            scores, episodes, v, td_error = evaluate(carry, session.next_eval_key())
            session.record_evaluation(step, scores, episodes, lambda: items(carry), iteration,
                                      v, td_error)
            evaluated_at = step
        if done:
            return carry
        run = min(iterations_per_chunk, total_iterations - iteration)
        started = time.perf_counter()
        carry, out = chunk(carry, jnp.int32(iteration), jnp.int32(run))
        out = jax.tree.map(lambda x: x[:run], to_host(out))   # all processes gather
        iteration += run
        log_chunk(iteration * steps_per_iteration, carry, out, run,
                  time.perf_counter() - started)


# ---------------------------------------------------------------------- host evaluator

def to_seeds(x, seeds: int) -> np.ndarray:
    """A host pool's [S * E, ...] as [S, E, ...]."""
    return np.asarray(x).reshape(seeds, -1, *np.shape(x)[1:])


@dataclasses.dataclass(frozen=True)
class SeedsStep:
    """One step of a host pool of S * E envs, every field [S, E, ...] (``envs.base``'s
    next-step reset convention; ``game_over``: a whole game ended, for scores)."""

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    done: np.ndarray          # terminated or truncated
    game_over: np.ndarray

    @classmethod
    def of(cls, result, seeds: int) -> "SeedsStep":
        terminated = to_seeds(result.terminated, seeds)
        return cls(obs=to_seeds(result.obs, seeds), reward=to_seeds(result.reward, seeds),
                   terminated=terminated, done=terminated | to_seeds(result.truncated, seeds),
                   game_over=to_seeds(result.game_over, seeds))


def eval_steps_per_env(config: Config) -> int:
    return max(math.ceil(config.val_steps / config.val_envs), 1)


def evaluate_on_host(config: Config, env_factory, step: int, *, start: Callable,
                     act: Callable, observe: Callable) -> tuple[np.ndarray, np.ndarray]:
    """Validation on host envs, for every agent: --val-steps steps per seed over --val-envs
    envs in eval mode (seeded ``--seed + EVAL_ENV_SEED_OFFSET + step``), all seeds in one
    pool, raw game scores. Returns (mean score [S], finished episodes [S]).

    ``start(frames [S, E, ...]) -> state`` takes in the first frames; ``act(state) ->
    (actions [S, E], state)``; ``observe(state, frames, is_first [S, E], done [S, E]) ->
    state`` takes in the next frames (next-step resets: ``is_first`` marks a reset step's).
    """
    c = config
    seeds, envs = c.seeds, c.val_envs
    env = env_factory(seeds * envs, c.seed + EVAL_ENV_SEED_OFFSET + step, mode="eval")
    try:
        state = start(to_seeds(env.reset(), seeds))
        score = np.zeros((seeds, envs))
        total = np.zeros(seeds)
        episodes = np.zeros(seeds, np.int64)
        after_done = np.zeros((seeds, envs), bool)
        for _ in range(eval_steps_per_env(c)):
            actions, state = act(state)
            result = SeedsStep.of(env.step(np.asarray(actions).reshape(-1)), seeds)
            over = result.game_over
            score += result.reward
            total += np.where(over, score, 0.0).sum(1)
            episodes += over.sum(1)
            score = np.where(over, 0.0, score)
            is_first = after_done
            after_done = result.done
            state = observe(state, result.obs, is_first, after_done)
        return mean_score(total, episodes, score.mean(1)), episodes
    finally:
        env.close()


# ---------------------------------------------------------------------- summary

def run_summary(config: Config, spec, evaluations: list[Evaluation], *, wall_seconds: float,
                trained_steps: int) -> dict[str, Any]:
    """A finished run's summary.json: the final and best greedy scores per seed (null where
    no greedy episode finished: partial games are not scores), their episodes, speed, and
    the mean, median and IQM over seeds with 95% intervals (Agarwal et al. 2021)."""
    from jaxatari import human_scores
    from jaxatari.statistics import summary_statistics

    c = config
    scores = np.stack([e.scores for e in evaluations])  # [V, S], NaN: none finished
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a seed never finishing
        best = np.nanmax(scores, axis=0)
    wall = max(wall_seconds, 1e-9)
    summary = {
        "preset": c.preset, "env": spec.name, "protocol": spec.protocol,
        "seeds": c.seeds, "steps": c.steps,
        "final_scores": finite_or_none(scores[-1]),
        "final_episodes": [int(e) for e in np.asarray(evaluations[-1].episodes)],
        "best_scores": finite_or_none(best),
        "eval_steps": [e.step for e in evaluations],
        "eval_episodes": [[int(x) for x in np.asarray(e.episodes)] for e in evaluations],
        "wall_seconds": round(wall_seconds, 2),
        "steps_per_second": round(trained_steps * c.seeds / wall, 1),
        "steps_per_second_per_seed": round(trained_steps / wall, 1),
    }
    if evaluations and evaluations[-1].normalised is not None:
        normalised = np.stack([e.normalised for e in evaluations
                               if e.normalised is not None])   # [V, S]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            best_normalised = np.nanmax(normalised, axis=0)
        summary["final_normalised_scores"] = finite_or_none(normalised[-1])
        summary["best_normalised_scores"] = finite_or_none(best_normalised)
        summary["normalised_score_source"] = human_scores.SOURCE
    summary["statistics"] = summary_statistics(summary)
    return summary
