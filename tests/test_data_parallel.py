"""The data-parallel learner (issue 26, 1b; Anakin, Hessel et al. 2021): one update on 4
devices, the batch split in 4, equals the one-device update on the whole batch.

The reference is the one-device agent (``batch_axis=None``, the code every other test
checks against numpy and the original) on the concatenated batch; the data-parallel agent
runs inside ``shard_map`` over 4 forced CPU devices, each with a quarter of the batch (or
of the actors). Compared: every device's parameters, target parameters and optimiser state
after the update, the reported loss, |TD error| and Q means, and the per-sample priorities.
All cases run in one child process, so JAX starts once (``python -m
tests.test_data_parallel``).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxatari import checkpoint as ckpt
from jaxatari import cli
from tests.subprocess_env import repo_env

DEVICES = 4
RTOL, ATOL = 1e-5, 1e-6


def test_one_update_on_four_devices_equals_one_device_on_the_whole_batch():
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_data_parallel"],
        # XLA's unoptimised CPU backend compiles the 24 small programs about twice as fast;
        # both sides of every comparison are compiled alike
        env=repo_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES} "
                               "--xla_backend_optimization_level=0"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checked = [line for line in result.stdout.splitlines() if line.startswith("equal: ")]
    assert len(checked) == len(Q_CASES) + len(UPDATE_CASES) + len(ACTOR_CASES), result.stdout


# --------------------------------------------------------------------------------- CLI
# Learning starts at 640 steps; evaluations at 1,600 and 3,200 (32 envs, 8 per device).
SHORT = ["demo", "--steps", "3200", "--chunk-steps", "1600", "--val-freq", "1600",
         "--val-steps", "1600", "--val-envs", "32", "--learn-start", "640", "--mem-size", "4000",
         "--checkpoint-replay", "true", "--quiet"]


def run_cli(args, run_dir):
    return subprocess.run(
        [sys.executable, "-m", "jaxatari", "train", *args, "--run-dir", str(run_dir)],
        env=repo_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}"),
        capture_output=True, text=True, timeout=600)


ACTOR_SHORT = ["demo-async", "--steps", "4000", "--chunk-steps", "2000", "--val-freq", "2000",
               "--val-steps", "1600", "--val-envs", "32", "--quiet"]


# Two seeds of two devices each (the mesh's both axes) and the actor-learner cost another
# 30 s each: marked slow.
@pytest.mark.parametrize("args, seeds", [
    (SHORT, 1), pytest.param(SHORT, 2, marks=pytest.mark.slow),
    pytest.param(ACTOR_SHORT, 1, marks=pytest.mark.slow)], ids=["q-1", "q-2", "nstep-1"])
def test_seeds_train_data_parallel_on_four_devices(tmp_path, args, seeds):
    """--seeds 1 (2) --devices 4: each seed over 4 (2) devices, to a summary; the state
    holds every seed's share on every device (4 entries), a seed's learner state stayed
    alike on its devices, and the learner reported losses."""
    run_dir = tmp_path / "run"
    result = run_cli([*args, "--seeds", str(seeds), "--devices", "4"], run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == seeds
    assert summary["eval_steps"] == ([1600, 3200] if args is SHORT else [2000, 4000])
    assert len(summary["final_scores"]) == seeds
    assert all(episodes > 0 for episodes in summary["final_episodes"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["devices"] == "4" and len(config["environment"]["devices"]) == DEVICES
    acting = "actor" if args is SHORT else "actors"
    items = ckpt.read_metadata(ckpt.find(run_dir, "last"))["items"]
    for name in ("train", "env", acting):
        shapes = [shape for _, shape, _ in items[name]["signature"]]
        assert shapes and all(shape[0] == DEVICES for shape in shapes), name
    # a seed's parameters, target, optimiser state and learner key stayed alike on its
    # devices through every update; its devices' acting keys are their own
    shards = DEVICES // seeds
    for path, leaf in saved_leaves(run_dir, "train").items():
        per_seed = leaf.reshape(seeds, shards, *leaf.shape[1:])
        assert all(np.array_equal(share, per_seed[:, 0]) for share in
                   np.moveaxis(per_seed, 1, 0)), path
    key = next(leaf for path, leaf in saved_leaves(run_dir, acting).items() if "key" in path)
    assert len({bytes(share) for share in key}) == DEVICES
    with open(run_dir / "progress.csv") as rows:
        losses = [float(row["loss"]) for row in csv.DictReader(rows)
                  if row.get("loss") not in (None, "", "nan")]
    assert losses and all(np.isfinite(losses)) and max(losses) > 0, losses


def saved_leaves(run_dir, item: str) -> dict[str, np.ndarray]:
    """Every array of one item of checkpoints/last, by its path in the item's tree, read as
    saved (no template from the code under test)."""
    import jax
    metadata = ckpt.read_metadata(ckpt.find(run_dir, "last"))
    signature = metadata["items"][item]["signature"]
    ocp = ckpt._orbax()
    flat = {ckpt._leaf_name(i): jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
            for i, (_, shape, dtype) in enumerate(signature)}
    out = ckpt._checkpointer().restore(
        Path(metadata["path"]) / ckpt.STATE_DIR,
        args=ocp.args.Composite(**{item: ocp.args.StandardRestore(flat)}))
    return {str(path): np.asarray(out[item][ckpt._leaf_name(i)])
            for i, (path, _, _) in enumerate(signature)}


BAD_DATA_PARALLEL = [
    (["demo", "--seeds", "2", "--devices", "3"],
     "--devices 3 is more than --seeds 2 and not a multiple of it"),
    (["demo", "--seeds", "1", "--devices", "4", "--envs", "2"],
     "--envs 2 does not divide over 4 devices per seed"),
    (["demo", "--seeds", "1", "--devices", "4", "--batch-size", "30"],
     "--batch-size 30 does not divide over 4 devices per seed"),
    (["demo-async", "--seeds", "1", "--devices", "4", "--envs", "6"],
     "--envs 6 does not divide over 4 devices per seed"),
]


@pytest.mark.parametrize("args, expected", BAD_DATA_PARALLEL,
                         ids=[" ".join(args) for args, _ in BAD_DATA_PARALLEL])
def test_bad_data_parallel_input_is_one_line_exit_2_no_run_dir(tmp_path, capsys, args,
                                                                expected):
    run_dir = tmp_path / "run"
    assert cli.main(["train", *args, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert not run_dir.exists()


def test_a_sweep_refuses_data_parallel_seeds_in_one_line(tmp_path):
    run_dir = tmp_path / "sweep"
    result = run_cli(["demo", "--seeds", "1", "--devices", "4", "--sweep", "eta=1e-3,3e-3"],
                     run_dir)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "data-parallel seeds (more devices than seeds) are for single runs" in lines[0]
    assert not run_dir.exists()


# ---------------------------------------------------------------------- the child's cases
# (name, QAgentSettings overrides, beta): learn_sample on a batch drawn at random.
Q_CASES = (
    ("nature, sum", dict(), 0.0),
    ("double, dueling, mean", dict(double_q=True, dueling=True, loss_reduction="mean"), 0.0),
    ("pal, prioritised weights, sum", dict(loss="pal", pal_alpha=0.9), 0.5),
    ("bootstrap heads, prioritised weights, mean", dict(num_heads=4, loss_reduction="mean"),
     0.4),
    ("bootstrap heads, sum, gradient clipping, rmspropm",
     dict(num_heads=4, grad_clip=0.05, optimiser="rmspropm"), 0.0),
    ("drqn, burn-in, heads, mean", dict(recurrent=True, burn_in=1, loss_steps="all",
                                        num_heads=2, loss_reduction="mean"), 0.0),
)
# (name, replay kind): the whole update, each device sampling from its own memory.
UPDATE_CASES = (("update, proportional", "proportional"), ("update, rank", "rank"))
ACTOR_CASES = (("sarsa", dict()), ("onestep", dict(double_q=True)), ("nstep", dict()),
               ("a3c", dict(grad_clip=0.5)))

GLOBAL_BATCH = 32
OBS = (5,)


def q_settings(**overrides):
    from jaxatari.agents.dqn import QAgentSettings
    base = dict(num_actions=3, obs_shape=OBS, obs_dtype="float32", hist_len=2, body="mlp",
                mlp_features=(16,), hidden_size=16, capacity=64, num_envs=2,
                batch_size=GLOBAL_BATCH, learning_rate=1e-2, optimiser="sgd", momentum=0.9,
                bootstrap_prob=0.5, gamma=0.9)
    base.update(overrides)
    return QAgentSettings(**base)


def random_batch(key, s):
    """A whole batch: transitions [B] (time-major windows [T, B] for DRQN), with masks that
    leave some samples (and some devices' heads) out."""
    import jax
    import jax.numpy as jnp
    from jaxatari.types import Sequence, Transition
    keys = jax.random.split(key, 8)
    b, k = GLOBAL_BATCH, s.num_heads
    mask_prob = s.bootstrap_prob if k > 1 else 0.85
    if s.recurrent:
        t = s.hist_len
        w = s.burn_in + t + 1
        return Sequence(obs=jax.random.normal(keys[0], (w, b, *OBS)),
                        first=jax.random.bernoulli(keys[1], 0.2, (w, b)),
                        a_tm1=jax.random.randint(keys[2], (t, b), 0, s.num_actions),
                        r_t=jax.random.normal(keys[3], (t, b)),
                        discount_t=s.gamma * jax.random.bernoulli(keys[4], 0.8, (t, b)),
                        mask=jax.random.bernoulli(keys[5], mask_prob, (t, b, k)).astype(
                            jnp.float32))
    stack = (OBS[0] * s.hist_len,)
    return Transition(obs_tm1=jax.random.normal(keys[0], (b, *stack)),
                      a_tm1=jax.random.randint(keys[2], (b,), 0, s.num_actions),
                      r_t=jax.random.normal(keys[3], (b,)),
                      discount_t=s.gamma * jax.random.bernoulli(keys[4], 0.8, (b,)),
                      obs_t=jax.random.normal(keys[1], (b, *stack)),
                      mask=jax.random.bernoulli(keys[5], mask_prob, (b, k)).astype(jnp.float32))


def assert_close(name, what, got, want):
    import jax
    import numpy as np
    got_leaves = jax.tree_util.tree_leaves_with_path(got)
    want_leaves = jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves), f"{name}: {what}"
    for (path, g), w in zip(got_leaves, want_leaves):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{name}: {what} {jax.tree_util.keystr(path)}")


def per_device(tree):
    """Each device's copy of a replicated output, stacked: [D, ...]."""
    import jax
    return jax.tree.map(lambda x: x[None], tree)


def check_q_learn(mesh, name, overrides, beta, key):
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    from jaxatari.agents.data_parallel import BATCH_AXIS, shard_over_batch
    from jaxatari.agents.dqn import make_q_agent

    s = q_settings(**overrides)
    one = make_q_agent(s)
    local = make_q_agent(q_settings(**overrides, batch_size=GLOBAL_BATCH // DEVICES),
                         batch_axis=BATCH_AXIS)
    init_key, batch_key, prob_key, train_key = jax.random.split(key, 4)
    train, _, _ = one.init(init_key)
    # a learned-from state: target parameters apart from the online ones
    train = train.replace(params=jax.tree.map(lambda x: x * 1.1, train.params),
                          key=train_key)
    batch = random_batch(batch_key, s)
    count = jnp.float32(200.0)
    probabilities = (jax.random.uniform(prob_key, (GLOBAL_BATCH,), minval=0.1, maxval=2.0)
                     / count)
    want_train, want_aux = jax.jit(one.learn_sample)(train, batch, probabilities, count, beta)

    batch_spec = P(None, BATCH_AXIS) if s.recurrent else P(BATCH_AXIS)

    def on_device(train, batch, probabilities, count, beta):
        train, aux = local.learn_sample(train, batch, probabilities, count, beta)
        means = {name: aux[name][None] for name in ("loss", "td_error", "q_mean")}
        return per_device(train), means, aux["priority"], aux["valid"]

    sharded = jax.jit(shard_over_batch(
        on_device, mesh, in_specs=(P(), batch_spec, P(BATCH_AXIS), P(), P()),
        out_specs=(P(BATCH_AXIS), P(BATCH_AXIS), P(BATCH_AXIS), P(BATCH_AXIS))))
    got_train, got_means, got_priority, got_valid = sharded(train, batch, probabilities,
                                                            count, jnp.float32(beta))
    for device in range(DEVICES):
        assert_close(name, f"device {device}'s train state",
                     jax.tree.map(lambda x: x[device], got_train), want_train)
        for metric, value in got_means.items():
            assert_close(name, f"device {device}'s {metric}", value[device], want_aux[metric])
    assert_close(name, "priorities", got_priority, want_aux["priority"])
    assert (got_valid == want_aux["valid"]).all(), name
    moved = max(float(abs(a - b).max()) for a, b in zip(jax.tree.leaves(want_train.params),
                                                        jax.tree.leaves(train.params)))
    assert moved > 1e-4, f"{name}: the update did not move the parameters"
    print(f"equal: {name}", flush=True)


def filled_memories(agent, key, rows: int):
    """DEVICES replay memories of ``agent`` (one device's envs), each with ``rows`` rows
    written (some invalid, some terminal), stacked on a leading device axis."""
    import jax
    import jax.numpy as jnp
    s = agent.settings

    def one_memory(key):
        state = agent.replay.init(_row_example(agent))

        def write(state, key):
            keys = jax.random.split(key, 6)
            e = s.num_envs
            row = agent.make_row(jax.random.normal(keys[0], (e, *s.obs_shape)),
                                 jax.random.randint(keys[1], (e,), 0, s.num_actions),
                                 jax.random.normal(keys[2], (e,)),
                                 jax.random.bernoulli(keys[3], 0.1, (e,)),
                                 jax.random.bernoulli(keys[4], 0.1, (e,)),
                                 jax.random.bernoulli(keys[5], 0.9, (e,)), keys[5])
            return agent.replay.add(state, row), None

        state, _ = jax.lax.scan(write, state, jax.random.split(key, rows))
        return state

    return jax.vmap(one_memory)(jax.random.split(key, DEVICES))


def _row_example(agent):
    import jax.numpy as jnp
    from jaxatari.replay.storage import Row
    s = agent.settings
    e = s.num_envs
    return Row(frame=jnp.zeros((e, *s.obs_shape), jnp.float32),
               action=jnp.zeros((e,), jnp.int32), reward=jnp.zeros((e,), jnp.float32),
               terminal=jnp.zeros((e,), bool), first=jnp.zeros((e,), bool),
               valid=jnp.zeros((e,), bool), mask=jnp.zeros((e, s.num_heads), bool))


def check_q_update(mesh, name, replay, key):
    """The whole update: each device draws its quarter of the batch from its own memory
    (with its own key: the learner's key folded with the device's index), the gradient is
    the whole batch's, and each device writes its samples' priorities to its own memory.
    The reference draws the same samples on one device, learns from the concatenated
    batch and writes each memory's priorities."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    from jaxatari.agents.data_parallel import BATCH_AXIS, shard_over_batch
    from jaxatari.agents.dqn import make_q_agent

    local_batch = GLOBAL_BATCH // DEVICES
    overrides = dict(replay=replay, batch_size=local_batch, loss_reduction="mean")
    one = make_q_agent(q_settings(**overrides))          # one device's memory, no collectives
    local = make_q_agent(q_settings(**overrides), batch_axis=BATCH_AXIS)
    init_key, memory_key = jax.random.split(key)
    train, _, _ = one.init(init_key)
    memories = filled_memories(one, memory_key, rows=24)
    beta = jnp.float32(0.5)

    def reference(train, memories, beta):
        key, sample_key = jax.random.split(train.key)
        device_keys = jax.vmap(lambda d: jax.random.fold_in(sample_key, d))(
            jnp.arange(DEVICES))
        batches, indices, probabilities = jax.vmap(
            lambda memory, k: one.replay.sample(memory, k, local_batch))(memories, device_keys)
        whole = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batches)   # [D B/D] = [B]
        count = memories.storage.size[0] * one.settings.num_envs
        new_train, aux = one.learn_sample(train, whole, probabilities.reshape(-1), count, beta)

        def write(memory, indices, priorities, ok):   # each memory its own samples'
            fallback = jnp.argmax(ok)
            indices = jnp.where(ok, indices, indices[fallback])
            priorities = jnp.where(ok, priorities, priorities[fallback])
            return one.replay.update_priorities(memory, indices, priorities)

        per_device = lambda x: x.reshape(DEVICES, local_batch)   # noqa: E731
        memories = jax.vmap(write)(memories, indices, per_device(aux["priority"]),
                                   per_device(aux["valid"]))
        return new_train.replace(key=key), memories, aux

    want_train, want_memories, want_aux = jax.jit(reference)(train, memories, beta)

    def on_device(train, memory, beta):
        train, memory, metrics = local.update(train, jax.tree.map(lambda x: x[0], memory),
                                              beta)
        return per_device(train), per_device(memory), per_device(metrics)

    sharded = jax.jit(shard_over_batch(on_device, mesh, in_specs=(P(), P(BATCH_AXIS), P()),
                                       out_specs=(P(BATCH_AXIS),) * 3))
    got_train, got_memories, got_metrics = sharded(train, memories, beta)
    for device in range(DEVICES):
        assert_close(name, f"device {device}'s train state",
                     jax.tree.map(lambda x: x[device], got_train), want_train)
        for metric, value in got_metrics.items():
            assert_close(name, f"device {device}'s {metric}", value[device], want_aux[metric])
    assert_close(name, "memories", got_memories, want_memories)
    print(f"equal: {name}", flush=True)


def check_actor_learner(mesh, method, overrides, key):
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    from jaxatari.agents.actor_learner import (ActorLearnerSettings, Rollout,
                                               make_actor_learner)
    from jaxatari.agents.data_parallel import BATCH_AXIS, shard_over_batch

    actors, steps = 8, 5

    def settings(num_actors):
        return ActorLearnerSettings(method=method, num_actions=3, obs_shape=OBS,
                                    obs_dtype="float32", num_actors=num_actors,
                                    rollout_length=steps, hist_len=1, body="mlp",
                                    mlp_features=(16,), hidden_size=16, optimiser="rmsprop",
                                    learning_rate=1e-2, gamma=0.9, **overrides)

    one = make_actor_learner(settings(actors))
    local = make_actor_learner(settings(actors // DEVICES), batch_axis=BATCH_AXIS)
    keys = jax.random.split(key, 8)
    train, _ = one.init(keys[0])
    if method != "a3c":
        train = train.replace(params=jax.tree.map(lambda x: x * 1.1, train.params))
    cut = jax.random.bernoulli(keys[1], 0.3, (steps, actors))
    rollout = Rollout(obs=jax.random.normal(keys[2], (steps + 1, actors, *OBS)),
                      action=jax.random.randint(keys[3], (steps, actors), 0, 3),
                      reward=jax.random.normal(keys[4], (steps, actors)), cut=cut,
                      terminal=cut & jax.random.bernoulli(keys[5], 0.5, cut.shape),
                      valid=jax.random.bernoulli(keys[6], 0.8, cut.shape),
                      epsilon=jax.random.uniform(keys[7], (steps, actors)))
    want_train, want_metrics = jax.jit(one.update)(train, rollout)

    def on_device(train, rollout):
        train, metrics = local.update(train, rollout)
        return per_device(train), per_device(metrics)

    sharded = jax.jit(shard_over_batch(on_device, mesh, in_specs=(P(), P(None, BATCH_AXIS)),
                                       out_specs=(P(BATCH_AXIS), P(BATCH_AXIS))))
    got_train, got_metrics = sharded(train, rollout)
    name = f"actor-learner {method}"
    for device in range(DEVICES):
        assert_close(name, f"device {device}'s train state",
                     jax.tree.map(lambda x: x[device], got_train), want_train)
        assert_close(name, f"device {device}'s metrics",
                     jax.tree.map(lambda x: x[device], got_metrics), want_metrics)
    print(f"equal: {name}", flush=True)


def main() -> None:
    import jax
    import numpy as np
    from jax.sharding import Mesh
    from jaxatari.agents.data_parallel import BATCH_AXIS

    assert len(jax.devices()) == DEVICES, jax.devices()
    mesh = Mesh(np.asarray(jax.devices()), (BATCH_AXIS,))
    key = jax.random.PRNGKey(0)
    for index, (name, overrides, beta) in enumerate(Q_CASES):
        check_q_learn(mesh, name, overrides, beta, jax.random.fold_in(key, index))
    for index, (name, replay) in enumerate(UPDATE_CASES):
        check_q_update(mesh, name, replay, jax.random.fold_in(key, 100 + index))
    for index, (method, overrides) in enumerate(ACTOR_CASES):
        check_actor_learner(mesh, method, overrides, jax.random.fold_in(key, 200 + index))


if __name__ == "__main__":
    main()
