"""Actor-learner runs as trustworthy as replay runs: last/best/every checkpoints, exact
resume, Ctrl+C saving, host-env resume, eval and export of their run directories, and the
async rules of the original as one-line option errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxatari import checkpoint as ckpt
from jaxatari.cli import main
from jaxatari.config import Config, ConfigError, build_config, validate
from jaxatari.loop import RunLogger, Trainer, TrainingInterrupted, train
from jaxatari.loops.checkpoint_items import to_tree

# A tiny actor-learner run: 2 seeds x 4 actors, rollouts of 5 steps (20 steps an
# iteration), 5-iteration chunks, an evaluation every 200 steps, 600 steps in all.
# No replay options: the replay agents' memory rules do not apply to actor-learners.
TINY_ACTOR = dict(env="catch", seeds=2, envs=4, model_body="mlp", mlp_hidden=16,
                  hidden_size=16, hist_len=2, duel=False, bootstraps=0, pal_alpha=0.0,
                  double_q=False, batch_size=5, async_method="a3c", optimiser="adam", eta=1e-3,
                  tau=40, epsilon_steps=200, val_freq=200, val_steps=128, val_envs=4,
                  val_epsilon=0.0, chunk_steps=100, steps=600, mem_size=10, learn_start=0)


def tiny_actor(**overrides) -> Config:
    config = Config(**{**TINY_ACTOR, **overrides})
    validate(config)
    return config


def checkpoint_items(config: Config, path: Path) -> dict:
    """The checkpoint's items as stored (the on-disk tree)."""
    return ckpt.load(path, to_tree(Trainer(config, path.parent.parent).templates()))[0]


def assert_same_items(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        if a[name] is None:
            assert b[name] is None, name
            continue
        la, lb = jax.tree.leaves(a[name]), jax.tree.leaves(b[name])
        assert len(la) == len(lb) and la, name
        for x, y in zip(la, lb):
            assert np.array_equal(np.asarray(x), np.asarray(y)), name


@pytest.fixture(scope="module")
def a3c_run(tmp_path_factory):
    """600 steps of A3C at once, every evaluation's checkpoint kept."""
    config = tiny_actor()
    run_dir, summary = train(config, tmp_path_factory.mktemp("a3c") / "run", quiet=True,
                             checkpoint_every=True)
    return config, run_dir, summary


def test_actor_learner_runs_keep_last_best_and_every_checkpoint(a3c_run):
    config, run_dir, summary = a3c_run
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best", "last", "step_000000200", "step_000000400", "step_000000600"]
    last = ckpt.read_metadata(run_dir / "checkpoints" / "last")
    assert last["kind"] == "actor-learner" and last["path_kind"] == "native"
    assert last["agent"]["method"] == "a3c" and last["step"] == 600
    assert last["iteration"] == 600 // 20 and not last["replay_included"]
    assert [e["step"] for e in last["evaluations"]] == summary["eval_steps"] == [200, 400, 600]
    items = checkpoint_items(config, run_dir / "checkpoints" / "last")
    # learner (with optimiser state and key), actors (stacks, epsilon counters, final
    # epsilons, key) and the envs' own state
    assert set(items) == {"train", "actors", "env"}
    assert np.asarray(items["actors"].steps).tolist() == [[150] * 4] * 2
    assert set(items["env"]) == {"env_state", "score"}


@pytest.mark.parametrize("method, overrides", [
    ("a3c", {}),
    ("nstep", {"env": "gridworld", "hist_len": 1, "steps": 400}),
], ids=["a3c-catch", "nstep-gridworld"])
def test_resume_from_a_middle_checkpoint_is_bit_exact(a3c_run, tmp_path, method, overrides):
    """N steps, then a resume for M more, equals N + M steps at once, bit for bit."""
    config = tiny_actor(async_method=method, **overrides)
    if method == "a3c" and not overrides:
        straight = a3c_run[1]
    else:
        straight, _ = train(config, tmp_path / "straight", quiet=True, checkpoint_every=True)
    resumed, summary = train(config, tmp_path / "resumed", quiet=True,
                             resume_from=straight / "checkpoints" / "step_000000200")
    assert summary["resumed_from_step"] == 200
    assert_same_items(checkpoint_items(config, straight / "checkpoints" / "last"),
                      checkpoint_items(config, resumed / "checkpoints" / "last"))
    a = ckpt.read_metadata(straight / "checkpoints" / "last")["evaluations"]
    b = ckpt.read_metadata(resumed / "checkpoints" / "last")["evaluations"]
    assert a == b


def test_ctrl_c_without_a_terminal_saves_and_resume_continues_exactly(a3c_run, tmp_path,
                                                                     monkeypatch):
    """SIGINT during the 3rd chunk: saved at that chunk's end (step 300, between two
    evaluations); ``--resume`` then finishes the run as the uninterrupted one did."""
    config, straight, _ = a3c_run
    run_dir = tmp_path / "interrupted"
    log_chunk = RunLogger.log_chunk
    chunks = []

    def interrupting_log_chunk(self, step, *args, **kwargs):
        log_chunk(self, step, *args, **kwargs)
        chunks.append(step)
        if len(chunks) == 3:
            os.kill(os.getpid(), signal.SIGINT)   # Ctrl+C, delivered to the main thread

    monkeypatch.setattr(RunLogger, "log_chunk", interrupting_log_chunk)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(TrainingInterrupted) as stopped:
            train(config, run_dir, quiet=True, interactive=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert stopped.value.saved is not None
    meta = ckpt.read_metadata(run_dir / "checkpoints" / "last")
    assert meta["reason"] == "interrupt" and meta["step"] == 300
    with pytest.raises(ConfigError, match="holds a saved agent"):
        train(config, run_dir, quiet=True, interactive=False)
    _, summary = train(config, run_dir, quiet=True, interactive=False, resume=True)
    assert summary["resumed_from_step"] == 300 and summary["eval_steps"] == [200, 400, 600]
    assert_same_items(checkpoint_items(config, straight / "checkpoints" / "last"),
                      checkpoint_items(config, run_dir / "checkpoints" / "last"))


def test_resume_refuses_another_method_or_network(a3c_run, tmp_path):
    _, run_dir, _ = a3c_run
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with pytest.raises(ckpt.CheckpointError, match="hidden_size 16 there, 32 here"):
        train(tiny_actor(steps=800, hidden_size=32), tmp_path / "x", quiet=True,
              resume_from=run_dir)
    with pytest.raises(ckpt.CheckpointError, match="method 'a3c' there, 'nstep' here"):
        train(tiny_actor(steps=800, async_method="nstep"), tmp_path / "y", quiet=True,
              resume_from=run_dir)
    with pytest.raises(ckpt.CheckpointError, match="'actor-learner' agent"):
        from tests.tiny import tiny
        train(tiny(steps=800), tmp_path / "z", quiet=True, resume_from=run_dir)
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}


def test_host_env_actor_learner_resumes_with_new_games(tmp_path):
    """A gymnasium env cannot be restored: the resumed run keeps learner, epsilon counters
    and keys, and starts new games."""
    config = tiny_actor(env="tests.test_loop_host:CountdownEnv", hist_len=1, async_method="nstep",
                        steps=200, val_freq=100, val_steps=20, val_envs=2, chunk_steps=40)
    run_dir, _ = train(config, tmp_path / "host", quiet=True)
    meta = ckpt.read_metadata(run_dir / "checkpoints" / "last")
    assert meta["path_kind"] == "host" and meta["iteration"] == 200 // 20
    saved = checkpoint_items(config, run_dir / "checkpoints" / "last")
    longer = tiny_actor(**{**config.to_dict(), "steps": 400})
    _, summary = train(longer, None, quiet=True, resume_from=run_dir)
    assert summary["resumed_from_step"] == 200 and summary["eval_steps"] == [100, 200, 300, 400]
    assert summary["final_scores"] == [5.0, 5.0]     # every episode of this env scores 5
    resumed = checkpoint_items(longer, run_dir / "checkpoints" / "last")
    # 200 more steps of 4 actors: each actor's epsilon counter continued from 50 to 100.
    assert np.asarray(saved["actors"].steps).tolist() == [[50] * 4] * 2
    assert np.asarray(resumed["actors"].steps).tolist() == [[100] * 4] * 2


def test_eval_and_export_of_an_a3c_run(a3c_run, tmp_path, capsys):
    _, run_dir, _ = a3c_run
    assert main(["eval", str(run_dir), "--episodes", "2", "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "actions sampled from the policy" in out and "mean score" in out
    assert main(["eval", str(run_dir), "--episodes", "2", "--greedy", "--checkpoint", "last",
                 "--out", str(tmp_path / "greedy")]) == 0
    record = json.loads((tmp_path / "greedy" / "results.json").read_text())
    assert record["policy"] == "A3C, most probable action" and record["step"] == 600
    assert all(s in (-1.0, 0.0, 1.0) for s in record["scores"])   # Catch: one ball a game

    out_dir = tmp_path / "export"
    assert main(["export", str(run_dir), "--checkpoint", "last", "--out", str(out_dir)]) == 0
    meta = json.loads((out_dir / "metadata.json").read_text())
    assert meta["network"]["agent"] == "actor-learner" and meta["network"]["async"] == "a3c"
    assert meta["policy"]["rule"].startswith("argmax of the policy logits")
    # The exported policy runs without jaxatari or flax and matches the network's argmax.
    script = ("import json, sys, numpy as np\n"
              "sys.modules['flax'] = None; sys.modules['jaxatari'] = None\n"
              "from jax import export\n"
              f"folder = {str(out_dir)!r}\n"
              "meta = json.load(open(folder + '/metadata.json'))\n"
              "policy = export.deserialize(open(folder + '/policy.jax_export', 'rb').read())\n"
              "obs = np.random.default_rng(0).integers(0, 256, [5, *meta['policy']"
              "['input_shape']]).astype(meta['policy']['input_dtype'])\n"
              "np.save(folder + '/obs.npy', obs)\n"
              "print(json.dumps(np.asarray(policy.call(obs)).tolist()))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    actions = json.loads(result.stdout.strip().splitlines()[-1])
    from jaxatari.export import load_agent
    agent, train_state, meta = load_agent(run_dir / "checkpoints" / "last")
    index = int(np.argmax(meta["validation_scores"]))
    params = jax.tree.map(lambda x: x[index], train_state.params)
    logits = np.asarray(agent.scores(params, np.load(out_dir / "obs.npy")))[:, 0]
    assert actions == np.argmax(logits, -1).tolist()


# --------------------------------------------------------------------- option validation

def test_replay_rules_do_not_apply_to_actor_learners():
    # A memory smaller than a batch and no learn-start would be refused for a replay agent.
    tiny_actor(mem_size=10, learn_start=0, batch_size=20, mem_sample_freq=3, envs=4)
    with pytest.raises(ConfigError, match="--mem-size"):
        tiny_actor(async_method="none", mem_size=10)


@pytest.mark.parametrize("overrides, message", [
    ({"async_method": "a3c", "duel": True}, "A3C has no dueling heads: set --duel false"),
    ({"async_method": "a3c", "double_q": True}, "A3C has no Double Q-learning"),
    ({"async_method": "nstep", "bootstraps": 4}, "no bootstrap heads: set --bootstraps 0"),
    ({"async_method": "onestep", "pal_alpha": 0.9}, "persistent advantage learning"),
    ({"async_method": "sarsa", "loss": "double"}, "--loss chooses the replay agents'"),
    ({"async_method": "nstep", "n_step": 3}, "--n-step is the replay agents' option"),
    ({"steps": 12}, "must cover at least one rollout"),
    ({"async_mode": "async"}, "needs envpool's async API"),
])
def test_the_originals_async_rules_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        tiny_actor(**overrides)
    assert "\n" not in str(error.value)
    # The same through the command line: exit status 2, one line.
    flags = [f"--{k.replace('_', '-') if k != 'async_method' else 'async'}={v}"
             for k, v in overrides.items()]
    assert main(["train", "demo-async", *flags, "--run-dir", "/nonexistent/never"]) == 2


def test_double_q_and_dueling_stay_allowed_for_q_actor_learners():
    config = build_config("demo-async", {"double_q": True, "duel": True})
    assert config.async_method == "nstep"


def test_actor_learner_validations_report_v_and_td_error(a3c_run):
    """Each validation of an actor-learner logs, per seed, the mean V and |TD error| on its
    held-out rollouts (the original's valMemory statistics)."""
    _, run_dir, _ = a3c_run
    rows = [line.split(",") for line in (run_dir / "eval.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    v, td = header.index("v"), header.index("td_error")
    assert len(rows) == 3 * 2
    assert all(np.isfinite(float(row[v])) and float(row[td]) >= 0 for row in rows)


def test_heldout_rollouts_are_fixed_once_taken_and_scored_by_the_loss(tmp_path):
    from jaxatari.agents.actor_native import init_native_actor_carry, make_native_heldout
    from jaxatari.loops.actor_common import HeldOutRollouts
    from jaxatari.loops.settings import build_learner
    config = tiny_actor(async_method="nstep", val_size=40)   # 2 rollouts of 5 steps x 4 actors
    env = Trainer(config, tmp_path / "run").env
    learner = build_learner(config, env.spec)
    carry = init_native_actor_carry(learner, env, jax.random.PRNGKey(0))
    played = jax.jit(make_native_heldout(learner, env, 3))(
        carry.train.params, carry.actors, carry.env_state, carry.score)
    assert played.action.shape == (3, 5, 4) and played.obs.shape[:3] == (3, 6, 4)
    rollouts = [jax.tree.map(lambda x, i=i: x[i], played) for i in range(3)]
    held = HeldOutRollouts(learner, config)
    assert held.count == 2
    assert held.stats(lambda seed: carry.train) == (None, None)   # nothing offered yet
    held.offer(0, rollouts[0])
    assert held.stats(lambda seed: carry.train) == (None, None)   # seed 1 has none
    for rollout in rollouts[1:]:   # the first two of each seed are kept
        held.offer(0, rollout)
    for rollout in rollouts:
        held.offer(1, rollout)
    v, td = held.stats(lambda seed: carry.train)
    metrics = [learner.loss(carry.train.params, carry.train.target_params, r,
                            jax.random.PRNGKey(0))[1] for r in rollouts[:2]]
    np.testing.assert_allclose(v, [np.mean([m["q_mean"] for m in metrics])] * 2, rtol=1e-5)
    np.testing.assert_allclose(td, [np.mean([m["td_error"] for m in metrics])] * 2, rtol=1e-5)
    held.offer(0, rollouts[0])     # fixed: later rollouts change nothing
    np.testing.assert_array_equal(held.stats(lambda seed: carry.train)[1], td)
