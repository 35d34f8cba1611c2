"""What a checkpoint holds for each agent kind, as frozen records, and the one conversion
between a record and the string-keyed tree ``jaxatari.checkpoint`` writes.

The loops build these records and ``loop.Trainer`` saves and restores them, so a field
is named once rather than spelled as a string at every use. ``to_tree`` and ``from_tree``
are the only places that turn them into the on-disk tree (and ``load_train_state`` the
only reader of one item alone): a field's name is its item's name, a nested record is
stored as a dict of its fields, and a field left None is not saved (and comes back None
from a checkpoint that lacks it). Those names and that nesting are the checkpoint format:
renaming a field would make earlier checkpoints unloadable. Every array leads with the
seed axis [S, ...].
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from flax import struct

from jaxatari import checkpoint
from jaxatari.agents.actor_learner import Actors
from jaxatari.agents.actor_native import NativeActorCarry
from jaxatari.agents.native import NativeCarry
from jaxatari.replay import ReplayState
from jaxatari.types import ActorState, TrainState


class CheckpointRecord:
    """A frozen dataclass (and pytree) whose fields are checkpoint items (see the module
    docstring)."""


def to_tree(record: CheckpointRecord) -> dict[str, Any]:
    """The tree ``checkpoint.save`` writes (and ``checkpoint.load`` takes as templates)."""
    tree = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if value is not None:
            tree[field.name] = to_tree(value) if isinstance(value, CheckpointRecord) else value
    return tree


def from_tree(template: CheckpointRecord, tree: dict[str, Any]) -> CheckpointRecord:
    """The record of ``template``'s kind holding ``tree`` (``checkpoint.load``'s items,
    restored into ``to_tree(template)``); a nested record comes back as the template's."""
    values = {}
    for field in dataclasses.fields(template):
        value = tree.get(field.name)
        shape = getattr(template, field.name)
        if value is not None and isinstance(shape, CheckpointRecord):
            value = from_tree(shape, value)
        values[field.name] = value
    return type(template)(**values)


def load_train_state(path: Path, train: TrainState) -> tuple[TrainState | None, dict[str, Any]]:
    """(the learner state [S] or None, metadata) of either kind's checkpoint, restoring only
    that item into ``train``'s shapes: what a reader of the network alone needs (eval,
    export)."""
    tree, metadata = checkpoint.load(path, {"train": train})
    return tree["train"], metadata


# ------------------------------------------------------------------------- Q agent

@struct.dataclass
class QNativeEnvs(CheckpointRecord):
    """The JAX-native envs of a Q agent's run: plain state, so a resume continues them."""

    env_state: Any          # [S, E] env states
    frame: jax.Array        # [S, E, ...] the current observations
    is_first: jax.Array     # [S, E] the current observation starts an episode
    score: jax.Array        # [S, E] the running episodes' raw scores


@struct.dataclass
class QItems(CheckpointRecord):
    """A Q agent's checkpoint (``agents.dqn``)."""

    train: TrainState
    actor: ActorState
    replay: ReplayState | None = None     # None where the run does not save its memory
    env: QNativeEnvs | None = None        # JAX-native envs only: host envs cannot be saved
    heldout: dict[str, Any] | None = None  # ``evaluation.make_heldout_sampler``'s draw

    @classmethod
    def of_native(cls, carry: NativeCarry) -> "QItems":
        return cls(train=carry.train, actor=carry.actor, replay=carry.replay,
                   env=QNativeEnvs(env_state=carry.env_state, frame=carry.frame,
                                   is_first=carry.is_first, score=carry.score))

    def native_carry(self, replay: ReplayState) -> NativeCarry:
        """The native loop's carry, with ``replay`` (this one's, or an empty memory)."""
        env = self.env
        return NativeCarry(train=self.train, replay=replay, actor=self.actor,
                           env_state=env.env_state, frame=env.frame, is_first=env.is_first,
                           score=env.score)


# ------------------------------------------------------------------ actor-learners

@struct.dataclass
class ActorNativeEnvs(CheckpointRecord):
    """The JAX-native envs of an actor-learner's run."""

    env_state: Any          # [S, N] env states
    score: jax.Array        # [S, N] the running episodes' raw scores


@struct.dataclass
class AsyncCounters(CheckpointRecord):
    """An async host run's acting state (``loops.actors_async``): its envs and frame stacks
    cannot be saved, so only what sets epsilon, the policy's draws and the step counts."""

    steps: Any              # [S, N] int32, steps each actor has taken (its epsilon)
    final_epsilon: Any      # [S, N] float32, each actor's final epsilon
    policy_key: Any         # [S, 2] uint32, the acting policy's key
    received: Any           # [S] int32, transitions received from the envs
    learned: Any            # [S] int32, transitions the learner has consumed


@struct.dataclass
class ActorLearnerItems(CheckpointRecord):
    """An actor-learner's checkpoint (``agents.actor_learner``)."""

    train: TrainState
    actors: Actors | AsyncCounters
    env: ActorNativeEnvs | None = None    # JAX-native envs only

    @classmethod
    def of_native(cls, carry: NativeActorCarry) -> "ActorLearnerItems":
        return cls(train=carry.train, actors=carry.actors,
                   env=ActorNativeEnvs(env_state=carry.env_state, score=carry.score))

    def native_carry(self) -> NativeActorCarry:
        return NativeActorCarry(train=self.train, actors=self.actors,
                                env_state=self.env.env_state, score=self.env.score)
