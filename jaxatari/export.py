"""Export a saved agent as a folder that runs without jaxatari or flax (jax, numpy and
flatbuffers only).

``export_policy(checkpoint, out)`` writes, atomically (a temporary folder renamed at the end):

  params.msgpack      the network parameters of one seed (flax.serialization.to_bytes)
  config.json         the run's options, the env spec and the agent's settings
  metadata.json       env id, protocol, observation shape and dtype (one frame and the
                      stacked input), hist_len, action meanings, package versions, step,
                      validation score(s), the seed exported, how to call the policy
  policy.jax_export   jax.export of the greedy policy: observations [B, *stack_shape]
                      (dtype as metadata.json says) -> actions [B] int32, any batch size B,
                      parameters baked in, lowered for CPU and CUDA
  observation.npy     a sample input [2, *stack_shape]: real observations of the run's env
                      (evaluation mode, reset and played hist_len greedy steps), whose
                      greedy actions metadata.json's "sample" records
  run_policy.py       the short script that loads and runs it: needs only
                      ``pip install jax numpy flatbuffers`` (INSTALL); any jaxlib built up to
                      6 months after the exporting one loads the policy (jax.export's
                      backward-compatibility promise; see docs/export.md)

The greedy policy is argmax_a Q(s, a) (ties: the lowest action index); with bootstrap heads
each head votes for its argmax and the most voted action wins (ties: the lowest index),
deterministic counterparts of the agent's randomly tie-broken choices. For A3C it is the
policy's most probable action, argmax of the logits (its training and validation sampled
from the policy; metadata.json says so). Stacks are
channels last with the oldest frame first, as the agent builds them: frame t of an
[H, W, C] observation occupies channels [t*C, (t+1)*C).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable, Collection

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari import checkpoint as ckpt
from jaxatari.agents.actor_learner import Q_METHODS, ActorLearnerSettings, make_actor_learner
from jaxatari.agents.dqn import QAgentSettings, make_q_agent
from jaxatari.config import ConfigError
from jaxatari.loops.checkpoint_items import load_train_state
from jaxatari.saved_imports import check_checkpoint_imports
from jaxatari.types import ActorState

POLICY_FILE = "policy.jax_export"
SAMPLE_FILE = "observation.npy"
SAMPLE_SIZE = 2    # observations in the sample saved beside the export
KINDS = {"q-agent": QAgentSettings, "actor-learner": ActorLearnerSettings}
# All that running an export needs: jax.export reads the file with flatbuffers, which jax
# does not install.
INSTALL = "pip install jax numpy flatbuffers"
RUNNER = '''"""The exported greedy policy, with jax, numpy and flatbuffers only (no jaxatari):

  pip install jax numpy flatbuffers
  python run_policy.py [FOLDER] [OBSERVATIONS.npy]   # default: FOLDER/observation.npy

OBSERVATIONS: [B, *input_shape] of input_dtype (metadata.json's "policy"); one action each.
"""
import json, sys
try:
    import flatbuffers, numpy as np  # noqa: F401  (flatbuffers: jax.export reads the file)
    from jax import export
except ImportError as error:
    sys.exit(f"run_policy.py needs {error.name or error}: pip install jax numpy flatbuffers")

folder = sys.argv[1] if len(sys.argv) > 1 else "."
obs = np.load(sys.argv[2] if len(sys.argv) > 2 else f"{folder}/observation.npy")
spec = json.load(open(f"{folder}/metadata.json"))["policy"]
if list(obs.shape[1:]) != spec["input_shape"] or obs.dtype != spec["input_dtype"]:
    sys.exit(f"observations must be {spec['input_dtype']} [B, {str(spec['input_shape'])[1:-1]}]"
             f", got {obs.dtype} {list(obs.shape)}")
policy = export.deserialize(open(f"{folder}/policy.jax_export", "rb").read())
print(np.asarray(policy.call(obs)))   # one action per observation
'''
VERSION_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint",
                    "envpool", "ale-py", "gymnax", "gymnasium")


@dataclasses.dataclass(frozen=True)
class LoadedAgent:
    """A saved agent of either kind, as evaluation, saliency and export use it.

    ``scores(params, obs [B, ...]) -> [B, K, A]`` are the values the agent acts on: Q values
    (K bootstrap heads) or, for A3C, the policy logits (K = 1). ``observe`` pushes frames
    into an ``ActorState``'s stacks; ``act(params, actor, epsilon, sample)`` plays: Q agents
    epsilon-greedy (bootstrap heads voting), A3C a sample of its policy with ``sample``, else
    its most probable action.
    """

    kind: str                 # "q-agent" or "actor-learner"
    settings: Any             # QAgentSettings or ActorLearnerSettings
    stack_shape: tuple[int, ...]
    frame_dtype: Any
    num_heads: int
    samples_policy: bool      # A3C: actions are drawn from a policy, not epsilon-greedy
    scores: Callable
    observe: Callable
    act: Callable
    init: Callable            # key -> (train, ...): the train state's layout
    init_actor: Callable      # (num_envs, key) -> ActorState with empty stacks


def _settings_from_metadata(cls, meta: dict[str, Any]):
    """A settings dataclass back from a checkpoint's JSON (lists -> tuples)."""
    fields = cls.__dataclass_fields__
    values = {name: tuple(value) if isinstance(value, list) else value
              for name, value in meta.get("agent", {}).items() if name in fields}
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ckpt.CheckpointError(f"checkpoint {meta.get('path')} has unusable agent settings "
                                   f"({error})") from None


def settings_from_metadata(meta: dict[str, Any]) -> QAgentSettings:
    """QAgentSettings back from a Q-agent checkpoint's JSON."""
    return _settings_from_metadata(QAgentSettings, meta)


def make_loaded_agent(kind: str, settings, activation=jax.nn.relu) -> LoadedAgent:
    """The ``LoadedAgent`` of ``settings`` (its ReLUs replaced by ``activation``)."""
    if kind == "q-agent":
        agent = make_q_agent(settings, activation=activation)

        def act(params, actor, epsilon, sample=True):
            del sample
            return agent.act(params, actor, epsilon, settings.num_heads > 1)

        return LoadedAgent(kind=kind, settings=settings, stack_shape=agent.stack_shape,
                           frame_dtype=agent.frame_dtype, num_heads=settings.num_heads,
                           samples_policy=False, scores=agent.network.apply,
                           observe=agent.observe, act=act, init=agent.init,
                           init_actor=agent.init_actor)
    learner = make_actor_learner(settings, activation=activation)
    is_q = settings.method in Q_METHODS

    def scores(params, obs):
        out = learner.network.apply(params, obs)
        return out if is_q else out[0][:, None, :]               # [B, K, A]

    def act(params, actor, epsilon, sample=True):
        key, policy_key = jax.random.split(actor.key)
        actions = learner.evaluate_policy(params, actor.stack, policy_key, epsilon,
                                          not sample)
        return actions, actor.replace(key=key)

    return LoadedAgent(kind=kind, settings=settings, stack_shape=learner.stack_shape,
                       frame_dtype=learner.frame_dtype, num_heads=1, samples_policy=not is_q,
                       scores=scores, observe=learner.observe, act=act, init=learner.init,
                       init_actor=lambda num_envs, key: ActorState.empty(
                           num_envs, learner.stack_shape, learner.frame_dtype, key))


def load_agent(checkpoint: Path, activation=None, allowed_imports: Collection[str] = ()
               ) -> tuple[LoadedAgent, Any, dict[str, Any]]:
    """(agent, train state of all seeds [S, ...], metadata) of a Q-agent or actor-learner
    checkpoint. An import path among its saved options (a custom body or loss) is refused
    before anything is imported unless ``allowed_imports`` names it
    (see jaxatari.saved_imports)."""
    meta = ckpt.read_metadata(checkpoint)
    check_checkpoint_imports(meta, f"checkpoint {meta.get('path')}", allowed_imports)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ckpt.CheckpointError(f"checkpoint {meta.get('path')} holds a {kind!r} agent; "
                                   f"this jaxatari loads {' and '.join(KINDS)} agents")
    settings = _settings_from_metadata(KINDS[kind], meta)
    try:
        agent = make_loaded_agent(kind, settings, activation or jax.nn.relu)
    except ValueError as error:
        raise ckpt.CheckpointError(f"checkpoint {meta.get('path')}: {error}") from None
    keys = jax.random.split(jax.random.PRNGKey(0), int(meta["seeds"]))
    train_template = jax.eval_shape(jax.vmap(agent.init), keys)[0]
    train, meta = load_train_state(Path(meta["path"]), train_template)
    if train is None:
        raise ckpt.CheckpointError(f"checkpoint {meta['path']} holds no network parameters")
    return agent, train, meta


def pick_seed(meta: dict[str, Any], seed_index: int | None) -> int:
    """The seed to use: ``seed_index``, or the one with the best last validation score."""
    seeds = int(meta["seeds"])
    if seed_index is not None:
        if not 0 <= seed_index < seeds:
            raise ConfigError(f"--seed-index must be in [0, {seeds - 1}] for this checkpoint "
                              f"of {seeds} seed{'s' if seeds > 1 else ''}, got {seed_index}")
        return seed_index
    scores = meta.get("validation_scores")
    if not scores or all(score is None for score in scores):
        return 0
    return int(np.nanargmax([np.nan if score is None else score for score in scores]))


def seed_params(train, index: int):
    return jax.tree.map(lambda x: x[index], train.params)


def make_greedy_policy(agent: LoadedAgent, params):
    """obs [B, *stack] -> actions [B] int32, deterministic (see the module docstring)."""
    num_actions = agent.settings.num_actions

    def policy(obs):
        q = agent.scores(params, obs)                             # [B, K, A]
        if q.shape[1] == 1:
            return jnp.argmax(q[:, 0], axis=-1).astype(jnp.int32)
        votes = jax.nn.one_hot(jnp.argmax(q, -1), num_actions).sum(1)
        return jnp.argmax(votes, axis=-1).astype(jnp.int32)

    return policy


def _versions() -> dict[str, str | None]:
    import jaxatari
    versions = {"jaxatari": jaxatari.__version__}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def sample_observations(config_record: dict[str, Any], agent: LoadedAgent, policy,
                        num: int = SAMPLE_SIZE, seed: int = 0,
                        allowed_imports: Collection[str] = ()) -> np.ndarray:
    """[num, *stack_shape] real observations, stacked as the agent stacks them: ``num``
    evaluation-mode envs of the run's own options are reset and played ``hist_len`` steps
    with ``policy``, so every frame of each stack is one the env gave (no zero padding)."""
    from jaxatari.agents.native import to_agent_frame
    from jaxatari.commands._common import config_from_record
    from jaxatari.envs import JaxEnv, make_env
    from jaxatari.evaluation import _HostEpisodes, _JaxEpisodes

    env = make_env(config_from_record(config_record, "the checkpoint's config",
                                      allowed_imports=allowed_imports))
    runner = (_JaxEpisodes(env.for_mode("eval"), num, jax.random.PRNGKey(seed))
              if isinstance(env, JaxEnv) else _HostEpisodes(env, num, seed))
    observe = jax.jit(agent.observe)
    try:
        actor = agent.init_actor(num, jax.random.PRNGKey(seed))
        frame = runner.reset()
        actor = observe(actor, to_agent_frame(jnp.asarray(frame), agent.frame_dtype),
                        jnp.ones((num,), bool))
        for _ in range(agent.settings.hist_len):
            frame, _, done, _ = runner.step(np.asarray(policy(actor.stack)))
            actor = observe(actor.replace(after_done=jnp.asarray(done)),
                            to_agent_frame(jnp.asarray(frame), agent.frame_dtype),
                            jnp.zeros((num,), bool))
    finally:
        runner.close()
    return np.asarray(actor.stack)


def _export_versions(exported) -> dict[str, Any]:
    """What the policy file was written with, for whoever loads it later (see the docs)."""
    try:
        from jax._src.export import serialization
        schema = getattr(serialization, "_SERIALIZATION_VERSION", None)
    except ImportError:
        schema = None
    return {"jax": jax.__version__,
            "jaxlib": _versions().get("jaxlib"),
            "calling_convention_version": exported.calling_convention_version,
            "serialization_version": schema,
            "loads_with": "jax.export promises that a jaxlib built up to 6 months after "
                          "this one (backward compatibility) or up to 3 weeks before it "
                          "(forward compatibility) loads and runs it; newer ones usually do "
                          "too, with no promise; " + INSTALL}


def check_exportable(settings: QAgentSettings) -> None:
    """The exported policy maps one observation to one action; a recurrent agent would also
    need its LSTM state in and out, which the export format does not carry yet."""
    if getattr(settings, "recurrent", False):
        raise ConfigError("export does not support recurrent agents (--recurrent true) yet: "
                          "the exported policy has no LSTM state; use `jaxatari eval` instead")


def export_policy(checkpoint: Path, out: Path, seed_index: int | None = None,
                  allowed_imports: Collection[str] = ()) -> Path:
    """Writes the export folder ``out`` (which must not exist) from a checkpoint directory;
    ``allowed_imports`` as for ``load_agent``."""
    from flax import serialization
    try:
        import flatbuffers  # noqa: F401  (jax.export's serialisation needs it)
    except ImportError:
        raise ConfigError("exporting needs the flatbuffers package (pip install flatbuffers)"
                          ) from None
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists; choose a new folder (nothing was "
                          "overwritten)")
    agent, train, meta = load_agent(checkpoint, allowed_imports=allowed_imports)
    check_exportable(agent.settings)
    index = pick_seed(meta, seed_index)
    # jax arrays, not numpy: the policy closes over them, and custom_vjp (networks.Dense)
    # refuses numpy constants
    params = jax.tree.map(jnp.asarray, seed_params(train, index))
    policy = make_greedy_policy(agent, params)
    stack_shape = tuple(agent.stack_shape)
    dtype = np.dtype(agent.frame_dtype).name
    batch = jax.export.symbolic_shape("b")[0]
    spec = jax.ShapeDtypeStruct((batch, *stack_shape), np.dtype(dtype))
    try:
        exported = jax.export.export(jax.jit(policy), platforms=("cpu", "cuda"))(spec)
    except Exception:   # a jaxlib that cannot lower for CUDA: CPU only
        exported = jax.export.export(jax.jit(policy), platforms=("cpu",))(spec)
    env_spec = meta.get("env_spec", {})
    config = meta.get("config", {})
    scores = meta.get("validation_scores")
    greedy = jax.jit(policy)
    try:
        sample = sample_observations(config, agent, greedy, allowed_imports=allowed_imports)
        sample_record = {"file": SAMPLE_FILE, "shape": list(sample.shape),
                         "dtype": sample.dtype.name,
                         "actions": [int(a) for a in np.asarray(greedy(sample))],
                         "how": f"{len(sample)} evaluation-mode envs of the run's options, "
                                f"reset (seed 0) and played hist_len steps greedily"}
    except Exception as error:   # an env this machine cannot build: no sample, say why
        sample, sample_record = None, {"file": None, "why_not": f"{type(error).__name__}: "
                                                                f"{error}"}
        print(f"export: no sample observation ({sample_record['why_not']}); run_policy.py "
              "then needs an observations file", file=sys.stderr)
    record = {
        "format": "jaxatari-export-1",
        "env_id": env_spec.get("name"),
        "env": config.get("env"), "game": config.get("game") or None,
        "protocol": env_spec.get("protocol"),
        "observation": {"frame_shape": list(agent.settings.obs_shape),
                        "env_dtype": env_spec.get("obs_dtype"),
                        "input_dtype": dtype,
                        "scale": "uint8 0..255 (the env's [0, 1] reals x 255, rounded)"
                        if dtype == "uint8" and env_spec.get("obs_dtype") != "uint8" else
                        ("uint8 0..255" if dtype == "uint8" else "float32 as the env gives it"),
                        "layout": "channels last; hist_len frames stacked on the channel axis, "
                                  "oldest first; frames before an episode's first are zeros"},
        "hist_len": agent.settings.hist_len,
        "num_actions": agent.settings.num_actions,
        "action_meanings": list(env_spec.get("action_meanings") or []),
        "policy": {"file": POLICY_FILE, "input_shape": list(stack_shape), "input_dtype": dtype,
                   "output": "actions [B] int32", "batch": "any size (symbolic)",
                   "rule": ("argmax of the policy logits (the most probable action; "
                            "training and validation sampled from the policy)"
                            if agent.samples_policy else
                            "greedy argmax (bootstrap heads: majority vote)") + ", ties to the "
                           "lowest action", "platforms": list(exported.platforms),
                   "install": INSTALL, "run": "python run_policy.py [FOLDER] [OBS.npy]"},
        "sample": sample_record,
        "jax_export": _export_versions(exported),
        "network": {"body": agent.settings.body, "hidden_size": agent.settings.hidden_size,
                    "dueling": agent.settings.dueling, "heads": agent.num_heads,
                    "agent": agent.kind, "async": getattr(agent.settings, "method", None)},
        "step": meta.get("step"),
        "seed_index": index, "seeds": meta.get("seeds"),
        "validation_score": None if not scores else scores[index],
        "validation_scores": scores,
        "best_validation_score": meta.get("best_score"),
        "checkpoint": meta.get("path"), "checkpoint_name": meta.get("name"),
        "versions": _versions(),
        "python": sys.version.split()[0],
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / "params.msgpack").write_bytes(serialization.to_bytes(params))
        (tmp / "config.json").write_text(json.dumps(
            {**config, "env_spec": env_spec, "agent": meta.get("agent")}, indent=2,
            sort_keys=True, default=str))
        (tmp / "metadata.json").write_text(json.dumps(record, indent=2, default=str))
        (tmp / POLICY_FILE).write_bytes(exported.serialize())
        (tmp / "run_policy.py").write_text(RUNNER)
        if sample is not None:
            np.save(tmp / SAMPLE_FILE, sample)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
