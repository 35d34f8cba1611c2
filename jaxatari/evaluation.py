"""Validation statistics and evaluation episodes.

Validation (Kaixhin/Atari ``Validation.lua``), per seed:

* the mean raw game score over the episodes completed in ``--val-steps`` steps at epsilon
  ``--val-epsilon`` (bootstrap heads vote), or the running episodes' score if none completed
  (``agents.native.make_native_evaluate`` and ``loops.session.evaluate_on_host`` play them);
* the human-normalised score for Atari games (``jaxatari.human_scores``, table source named);
* the average value V and |TD error| on a fixed set of held-out transitions. The original
  kept the first ``valSize + 1`` training transitions in a separate memory; here a fixed
  batch of ``val_size`` transitions (500 as the original's ``-valSize``) is drawn uniformly
  from each seed's replay memory once, at the first evaluation after learning starts, and
  kept (and checkpointed) for the rest of the run. V is max_a Q_target(s', a) averaged over
  heads (0 at a terminal s'), as the original; the TD error is the mean |delta| over
  transitions and heads, unclipped (the original clipped delta to tdClip first).

Evaluation episodes (the ``eval`` and ``random`` commands): ``play_episodes`` plays N whole
episodes in N envs side by side with the run's env protocol in evaluation mode, and can
render each env's full-colour screen for video, with a saliency map in the red channel.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.agents.dqn import QAgent
from jaxatari.agents.native import to_agent_frame
from jaxatari.types import ActorState, Transition
from jaxatari.xla_options import edge_jit

DEFAULT_VAL_SIZE = 500   # the original's -valSize
# The evaluations' random streams, offset from --seed so they never repeat training's:
# the chain of evaluation keys (split once per evaluation, checkpointed) ...
EVAL_KEY_OFFSET = 10_007
# ... host evaluation envs, seeded --seed + EVAL_ENV_SEED_OFFSET + step ...
EVAL_ENV_SEED_OFFSET = 7919
# ... and the draw of the Q agent's held-out transitions from its replay memory.
HELDOUT_KEY_OFFSET = 31_337


# ------------------------------------------------------------------ held-out transitions


def make_heldout_sampler(agent: QAgent, size: int) -> Callable:
    """sample(replay_state, key) -> {"batch": [V] samples, "valid": [V]} for one seed:
    ``size`` transitions (windows for a recurrent agent) drawn uniformly, whatever the
    replay's priorities, from the memory."""
    s = agent.settings

    def sample(replay_state, key):
        storage = replay_state.storage
        count = storage.size * s.num_envs
        indices = jax.random.randint(key, (size,), 0, jnp.maximum(count, 1))
        batch, valid = agent.replay.gather(storage, indices)
        return {"batch": batch, "valid": valid}

    return sample


def make_value_stats(agent: QAgent) -> Callable:
    """stats(train, heldout) -> (average V, average |TD error|) for one seed (NaN when the
    held-out set has no valid transition). A recurrent agent's window counts the steps its
    loss learns from (``--loss-steps``), bootstrap masks kept."""

    def stats(train, heldout):
        batch = heldout["batch"]
        valid = heldout["valid"]                                          # [V]
        if isinstance(batch, Transition):   # every head, on every valid transition
            batch = batch.replace(mask=jnp.broadcast_to(
                valid[:, None].astype(jnp.float32), batch.mask.shape))
        _, aux = agent.loss(train.params, train.target_params, batch,
                            jnp.ones(valid.shape, jnp.float32))
        counted = aux["valid"].astype(jnp.float32)
        count = counted.sum()
        nan = jnp.float32(jnp.nan)
        return (jnp.where(count > 0, (aux["value"] * counted).sum() / jnp.maximum(count, 1.0), nan),
                jnp.where(count > 0, aux["td_error"], nan))

    return stats


# ------------------------------------------------------------------ evaluation episodes


@dataclasses.dataclass
class EpisodeResult:
    scores: np.ndarray          # [N] raw game score of each episode
    lengths: np.ndarray         # [N] agent steps
    cut: np.ndarray             # [N] bool: stopped at max_steps before the game ended


def greedy_policy(agent, params, epsilon: float, sample: bool = True) -> Callable:
    """act(actor) -> (actions [N], actor) of a ``export.LoadedAgent`` (the actor carries the
    key): Q agents epsilon-greedy at ``epsilon``, bootstrap heads voting, as in validation;
    A3C samples its policy (as its validation) or, with ``sample=False``, takes its most
    probable action."""

    def act(actor: ActorState):
        return agent.act(params, actor, epsilon, sample)

    return edge_jit(act)


def play_episodes(*, env, num_episodes: int, seed: int, act: Callable | None,
                  agent, max_steps: int = 108_000,
                  on_frame: Callable | None = None,
                  saliency: Callable | None = None) -> EpisodeResult:
    """Plays ``num_episodes`` whole episodes, one in each of as many envs, in evaluation mode.

    ``env`` is a JaxEnv or a host-env factory (``make_env``'s result). ``agent`` (an
    ``export.LoadedAgent``) and ``act`` (``greedy_policy``) give the agent; with ``agent=None`` actions are uniformly
    random (the random agent). ``on_frame(index, step, rgb, saliency_map)`` gets each
    running env's full-colour screen before every step, with the saliency map of the
    action taken on it where ``saliency`` is given
    (``saliency(stack [N, ...], actions [N], actor) -> [N, H, W]``), then the final
    screen of each episode (map None).
    """
    from jaxatari.envs.base import JaxEnv
    n = num_episodes
    rng = np.random.default_rng(seed)
    env_key, actor_key = jax.random.split(jax.random.PRNGKey(seed))
    spec = env.spec
    runner = _JaxEpisodes(env.for_mode("eval"), n, env_key) if isinstance(env, JaxEnv) else (
        _HostEpisodes(env, n, seed))
    frame = runner.reset()
    actor = observe = None
    if agent is not None:
        frame_dtype = agent.frame_dtype
        actor = agent.init_actor(n, actor_key)
        observe = edge_jit(agent.observe)
        actor = observe(actor, to_agent_frame(jnp.asarray(frame), frame_dtype),
                        jnp.ones((n,), bool))
    running = np.ones(n, bool)
    scores = np.zeros(n)
    lengths = np.zeros(n, np.int64)
    step = 0
    try:
        while running.any() and step < max_steps:
            maps = None
            if agent is not None:
                stack = actor.stack
                actions, actor = act(actor)
                if saliency is not None:
                    maps = np.asarray(saliency(stack, actions, actor))
                actions = np.asarray(actions)
            else:
                actions = rng.integers(0, spec.num_actions, n)
            if on_frame is not None:   # the screen the action is taken on, with its map
                for i in np.flatnonzero(running):
                    on_frame(int(i), step, runner.render(i), None if maps is None else maps[i])
            frame, reward, done, over = runner.step(actions)
            scores += np.where(running, reward, 0.0)
            lengths += running
            step += 1
            if agent is not None:
                actor = observe(actor.replace(after_done=jnp.asarray(done)),
                                to_agent_frame(jnp.asarray(frame), frame_dtype),
                                jnp.zeros((n,), bool))
            ended = running & over
            if on_frame is not None:   # the final screen of each episode that just ended
                for i in np.flatnonzero(ended):
                    on_frame(int(i), step, runner.render(i), None)
            running &= ~over
    finally:
        runner.close()
    return EpisodeResult(scores=scores, lengths=lengths, cut=running.copy())


class _JaxEpisodes:
    """N JaxEnv instances stepped by one jitted function (no reset: each plays one game)."""

    def __init__(self, env, n: int, key):
        self.env = env
        self.n = n
        self.key = key
        self._reset = edge_jit(lambda k: jax.vmap(env.reset)(jax.random.split(k, n)))
        self._step = edge_jit(lambda k, s, a: jax.vmap(env.step)(jax.random.split(k, n), s, a))
        self._render = edge_jit(lambda s, i: env.render(jax.tree.map(lambda x: x[i], s)))

    def reset(self):
        self.key, key = jax.random.split(self.key)
        self.state, frame = self._reset(key)
        return np.asarray(frame)

    def step(self, actions):
        self.key, key = jax.random.split(self.key)
        self.state, frame, reward, terminated, truncated = self._step(
            key, self.state, jnp.asarray(actions, jnp.int32))
        done = np.asarray(terminated | truncated)
        return np.asarray(frame), np.asarray(reward, np.float64), done, done

    def render(self, i):
        return np.asarray(self._render(self.state, i))

    def close(self):
        pass


class _HostEpisodes:
    """A host env pool of N envs in evaluation mode; game_over ends an env's episode."""

    def __init__(self, factory, n: int, seed: int):
        self.env = factory(n, seed, mode="eval")
        self.env.set_mode("eval")

    def reset(self):
        return self.env.reset()

    def step(self, actions):
        result = self.env.step(np.asarray(actions))
        done = result.terminated | result.truncated
        return result.obs, result.reward.astype(np.float64), done, result.game_over

    def render(self, i):
        frame = self.env.render(int(i))
        return None if frame is None else np.asarray(frame)

    def close(self):
        self.env.close()


def score_lines(result: EpisodeResult) -> list[str]:
    """One line per episode and a final mean +- standard deviation line."""
    lines = []
    for i, (score, length, cut) in enumerate(zip(result.scores, result.lengths, result.cut)):
        note = "  (cut at the step limit)" if cut else ""
        lines.append(f"episode {i + 1:>3}: score {score:g} in {int(length)} steps{note}")
    n = len(result.scores)
    std = float(np.std(result.scores)) if n else math.nan
    cut = int(np.sum(result.cut))
    cut_note = (f", {cut} of them cut at the step limit (their scores are partial)"
                if cut else "")
    lines.append(f"mean score {float(np.mean(result.scores)):.4g} +- {std:.4g} (standard "
                 f"deviation) over {n} episode{'s' if n != 1 else ''}{cut_note}")
    return lines


def statistics(result: EpisodeResult) -> dict[str, Any]:
    return {"scores": [float(s) for s in result.scores],
            "lengths": [int(n) for n in result.lengths],
            "cut": [bool(c) for c in result.cut],
            "mean": float(np.mean(result.scores)), "std": float(np.std(result.scores))}
