"""The flat options (``jaxatari.config.Config``) translated, in one place, into what the
training loops build: the Q agent's and the actor-learners' static settings, the learning
cadence (Mnih et al. 2015's learn start, update period and target period; Schaul et al.
2016's annealed importance-sampling exponent), the length of a jitted chunk and what the
checkpoints keep.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxatari.agents.actor_learner import (Q_METHODS, ActorLearner, ActorLearnerSettings,
                                           actor_epsilon, make_actor_learner)
from jaxatari.agents.dqn import QAgentSettings
from jaxatari.agents.native import Cadence
from jaxatari.config import Config, async_batch_size, resolved_loss
from jaxatari.envs import EnvSpec


def conv_impl(config: Config, native: bool) -> str:
    """--conv auto: XLA's convolution where it is fast on CPU (called at top level from the
    host loop, one seed: about 2x PatchConv for the Nature update), patches elsewhere
    (inside lax.scan, or vmapped over seeds where XLA groups the convolution)."""
    if config.conv != "auto":
        return config.conv
    return "patch" if native or config.seeds > 1 else "xla"


def agent_settings(config: Config, spec: EnvSpec, native: bool = True) -> QAgentSettings:
    """Translates the flat options into the Q agent's static choices."""
    uint8 = spec.obs_dtype == "uint8" or config.discretise_mem
    return QAgentSettings(
        num_actions=spec.num_actions, obs_shape=tuple(spec.obs_shape),
        obs_dtype="uint8" if uint8 else "float32", hist_len=config.hist_len,
        body=config.model_body, mlp_features=(config.mlp_hidden,),
        hidden_size=config.hidden_size, dueling=config.duel,
        num_heads=max(config.bootstraps, 1), bootstrap_prob=config.bootstrap_prob,
        loss=resolved_loss(config), double_q=config.double_q, pal_alpha=config.pal_alpha,
        td_clip=config.td_clip, reward_clip=config.reward_clip, gamma=config.gamma,
        n_step=config.n_step,
        replay="uniform" if config.mem_priority == "none" else config.mem_priority,
        capacity=config.mem_size, num_envs=config.envs, alpha=config.alpha,
        batch_size=config.batch_size, optimiser=config.optimiser, learning_rate=config.eta,
        momentum=config.momentum, grad_clip=config.grad_clip,
        loss_reduction=config.loss_reduction,
        lr_decay_updates=total_updates(config) if config.eta_anneal else 0,
        recurrent=config.recurrent, burn_in=config.burn_in, loss_steps=config.loss_steps,
        conv=conv_impl(config, native))


def device_share(settings: QAgentSettings, shards: int) -> QAgentSettings:
    """One device's share of a data-parallel seed's Q agent (``--devices`` above
    ``--seeds``: ``shards`` devices per seed): its envs, its replay rows (the memory's
    capacity split alike) and its part of the batch."""
    return dataclasses.replace(settings, num_envs=settings.num_envs // shards,
                               capacity=settings.capacity // shards,
                               batch_size=settings.batch_size // shards)


def chunk_iterations(config: Config, steps_per_iteration: int) -> int:
    """Iterations per jitted chunk of the JAX-native loops: --chunk-steps, shortened to
    --val-freq when that is smaller. Validation runs between chunks, so a chunk longer than
    --val-freq would validate only once per chunk; one length keeps one compile."""
    c = config
    chunk = max(min(c.chunk_steps, c.steps) // steps_per_iteration, 1)
    return min(chunk, max(c.val_freq // steps_per_iteration, 1))


def total_updates(config: Config) -> int:
    """Learner updates in a whole run: one every --mem-sample-freq steps after --learn-start,
    --mem-n-samples each."""
    learning_steps = max(config.steps - config.learn_start, 0)
    return max(learning_steps // config.mem_sample_freq * config.mem_n_samples, 1)


@dataclasses.dataclass(frozen=True)
class RunCadence(Cadence):
    """``Cadence`` with two run-level refinements.

    learn_from: no learning before this iteration (a resumed run whose replay memory was
        not checkpointed refills it for --learn-start steps first).
    uniform_replay: beta is 0 for uniform replay. Its importance weights are 1 whatever
        beta is, but XLA computes ``w / max(w)`` through a reciprocal, so with beta > 0 they
        come out as 1 or 0.99999994 depending on beta, which anneals over --steps: a run's
        numbers would then depend on --steps, and a run resumed with a larger --steps
        would not reproduce an uninterrupted one. With beta = 0 they are exactly 1.
    """

    learn_from: int = 0
    uniform_replay: bool = False

    def learns(self, iteration):
        return super().learns(iteration) & (iteration >= self.learn_from)

    def beta(self, step):
        return 0.0 if self.uniform_replay else super().beta(step)


def cadence_of(config: Config) -> RunCadence:
    envs, freq = config.envs, config.mem_sample_freq
    return RunCadence(num_envs=envs, learn_start=config.learn_start,
                      update_every=max(freq // envs, 1),
                      updates_per_learn=max(envs // freq, 1) * config.mem_n_samples,
                      target_period=config.tau, epsilon_start=config.epsilon_start,
                      epsilon_end=config.epsilon_end, epsilon_steps=config.epsilon_steps,
                      beta_zero=config.beta_zero if config.mem_priority != "none" else 0.0,
                      total_steps=config.steps, uniform_replay=config.mem_priority == "none")


def actors_per_update(config: Config) -> int:
    return async_batch_size(config.envs) if config.async_mode == "async" else config.envs


def learner_settings(config: Config, spec: EnvSpec, num_actors: int,
                     actors_per_learn: int) -> ActorLearnerSettings:
    """The flat options as the actor-learner's static choices."""
    uint8 = spec.obs_dtype == "uint8"
    return ActorLearnerSettings(
        method=config.async_method, num_actions=spec.num_actions,
        obs_shape=tuple(spec.obs_shape), obs_dtype="uint8" if uint8 else "float32",
        num_actors=num_actors, rollout_length=config.batch_size, hist_len=config.hist_len,
        body=config.model_body, mlp_features=(config.mlp_hidden,),
        hidden_size=config.hidden_size, dueling=config.duel and config.async_method in Q_METHODS,
        double_q=config.double_q and config.async_method in Q_METHODS, gamma=config.gamma,
        reward_clip=config.reward_clip, td_clip=config.td_clip,
        entropy_beta=config.entropy_beta, epsilon_start=config.epsilon_start,
        epsilon_steps=config.epsilon_steps, optimiser=config.optimiser,
        learning_rate=config.eta, momentum=config.momentum, rms_epsilon=config.rms_epsilon,
        grad_clip=config.grad_clip,
        total_updates=max(config.steps // (config.batch_size * actors_per_learn), 1))


def build_learner(config: Config, spec: EnvSpec) -> ActorLearner:
    """The run's actor-learner (N = --envs actors per seed)."""
    return make_actor_learner(learner_settings(config, spec, config.envs,
                                               actors_per_update(config)))


def crosses(before: int, after: int, period: int) -> bool:
    return after // period != before // period


def mean_actor_epsilon(learner: ActorLearner, steps, final_epsilon) -> float:
    if learner.settings.method not in Q_METHODS:
        return 0.0
    s = learner.settings
    return float(np.mean(actor_epsilon(np.asarray(steps), np.asarray(final_epsilon),
                                       start=s.epsilon_start, decay_steps=s.epsilon_steps)))


# --checkpoint-replay: "auto" leaves the choice to the run (JAX-native envs up to 1 GiB).
CHECKPOINT_REPLAY = {"auto": None, "true": True, "false": False}


@dataclasses.dataclass(frozen=True)
class CheckpointChoices:
    """What a run's checkpoints keep.

    keep_every: every evaluation's checkpoint as ``checkpoints/step_<step>`` (the
        original's -checkpoint).
    checkpoint_replay: the replay memory in ``checkpoints/last``; None: yes for JAX-native
        envs up to 1 GiB, no for host envs.
    val_size: held-out transitions for the V and TD-error statistics (the original's
        -valSize).
    """

    keep_every: bool
    checkpoint_replay: bool | None
    val_size: int


def checkpoint_choices(config: Config, *, keep_every: bool | None = None,
                       checkpoint_replay: bool | None = None,
                       val_size: int | None = None) -> CheckpointChoices:
    """--checkpoint-every, --checkpoint-replay and --val-size, each replaced by a value a
    library caller gives."""
    return CheckpointChoices(
        keep_every=config.checkpoint_every if keep_every is None else keep_every,
        checkpoint_replay=(CHECKPOINT_REPLAY[config.checkpoint_replay]
                           if checkpoint_replay is None else checkpoint_replay),
        val_size=config.val_size if val_size is None else val_size)
