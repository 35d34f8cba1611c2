"""Sebulba (issue 26, 1c): host envs stepped by actor threads on actor devices while the
learner updates data-parallel on learner devices (``loops.sebulba``, ``--actor-devices``,
``--learner-devices``).

In this process JAX has one CPU device, which the loop may give both roles, so the
threads, the queues, the joining of the actors' envs and the stop are tested here on a
fake env; what needs several devices (the sharded update, the CLI run on Space Invaders
through envpool) runs in a child process with four forced CPU devices.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxatari import cli
from jaxatari.config import build_config
from jaxatari.loops.session import PlainSession
from jaxatari.metrics import SilentLogger
from tests.test_loop_host import CountdownEnv, assert_countdown_memory
from tests.subprocess_env import repo_env

FOUR_CPU_DEVICES = "--xla_force_host_platform_device_count=4"
COUNTDOWN = {"env": "tests.test_loop_host:CountdownEnv", "model_body": "mlp", "hist_len": 1}


class _ChunkLogger(SilentLogger):
    """Writes nothing; keeps which iterations learned."""

    def __init__(self, config):
        super().__init__(config)
        self.learned: list[bool] = []
        self.chunks = 0

    def log_chunk(self, step, out, epsilon, seconds, steps) -> None:
        self.learned.extend(np.asarray(out.learned, bool).tolist())
        self.chunks += 1


class _Recorder(PlainSession):
    """A session that keeps the items the loop hands it at every evaluation and at the stop
    it asks for after ``stop_after`` logged chunks."""

    def __init__(self, config, stop_after: int | None = None):
        super().__init__(config, _ChunkLogger(config))
        self.stop_after = stop_after
        self.saved = []          # (step, items)

    @property
    def interrupt_requested(self) -> bool:
        return self.stop_after is not None and self.logger.chunks >= self.stop_after

    def save_after_eval(self, evaluation, items, iteration) -> None:
        self.saved.append((evaluation.step, items))

    def handle_interrupt(self, items, step, iteration):
        self.saved.append((step, items()))
        raise KeyboardInterrupt


def _one_device_runner(config, actors: int = 2):
    """A SebulbaRunner whose ``actors`` actor threads and learner share this process's one
    CPU device."""
    from jaxatari.agents.dqn import make_q_agent
    from jaxatari.devices import SebulbaPlacement
    from jaxatari.envs import make_env
    from jaxatari.loops.sebulba import SebulbaRunner
    from jaxatari.loops.settings import agent_settings, cadence_of
    device = jax.devices()[0]
    placement = SebulbaPlacement(actor_devices=(device,) * actors,
                                 learner_mesh=Mesh(np.asarray([device]), ("batch",)))
    env = make_env(config)
    agent = make_q_agent(agent_settings(config, env.spec, native=False),
                         place_batch=placement.batch_layout(0))
    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)
    return SebulbaRunner(config, env, agent, cadence_of(config), keys, placement)


def _sebulba_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sebulba-actor")]


def test_actors_steps_reach_the_memory_joined_and_in_order():
    """Two actor threads of one env per seed each: the learner's memory holds every env's
    steps in order, actor 0's env in column 0 and actor 1's in column 1, with the reset step
    after a terminal masked out (CountdownEnv: frame rises by 0.2 a step, 5 steps a game),
    and the learner updates at the one-device loop's iterations."""
    config = build_config("demo", {**COUNTDOWN, "steps": 50, "seeds": 2, "envs": 2,
                                   "learn_start": 30, "mem_size": 200, "batch_size": 8,
                                   "val_freq": 50, "val_steps": 4, "val_envs": 2,
                                   "chunk_steps": 10})
    session = _Recorder(config)
    _one_device_runner(config).run(session)
    assert not _sebulba_threads()
    (step, items), = session.saved
    assert step == 50
    assert_countdown_memory(items.replay.storage)
    assert items.actor.stack.shape[:2] == (2, 2)          # the actors' envs joined: [S, E]
    # demo: --mem-sample-freq 8 over 2 envs is an update every 4th iteration from the one
    # that reaches --learn-start 30 (iteration 14): iterations 16, 20 and 24 of 25
    assert [i for i, learned in enumerate(session.logger.learned) if learned] == [16, 20, 24]


def test_a_stop_request_ends_the_actors_and_saves_where_the_learner_is():
    config = build_config("demo", {**COUNTDOWN, "steps": 200, "seeds": 1, "envs": 2,
                                   "learn_start": 30, "mem_size": 400, "batch_size": 8,
                                   "val_freq": 200, "val_steps": 4, "val_envs": 2,
                                   "chunk_steps": 22})
    session = _Recorder(config, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        _one_device_runner(config).run(session)
    assert not _sebulba_threads()     # both actors joined before the save
    (step, items), = session.saved
    assert step == 66                 # three chunks of 22 steps: the learner's step
    assert int(items.replay.storage.size) == 33   # every step it counted is stored
    # resumed from what it saved (as ``loop.Restored`` gives it): the run goes on from
    # iteration 33 with new games, the saved memory's newest row ended as a reset step
    assert bool(np.asarray(items.replay.storage.rows.valid)[0, 32].all())   # mid-game
    restored = types.SimpleNamespace(items=items, iteration=33)
    session = _Recorder(config)
    _one_device_runner(config).run(session, restored)
    assert not _sebulba_threads()
    (step, resumed), = session.saved
    assert step == 200 and int(resumed.replay.storage.size) == 100
    rows = jax.device_get(resumed.replay.storage.rows)
    assert not rows.valid[0, 32].any() and rows.first[0, 33].all()
    # demo's cadence from iteration 33 on: an update every 4th iteration (8 steps / 2 envs)
    assert [33 + i for i, learned in enumerate(session.logger.learned) if learned] \
        == list(range(36, 100, 4))


class FailingEnv(CountdownEnv):
    """CountdownEnv that breaks on its 7th step."""

    def step(self, action):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 7:
            raise ValueError("the env broke")
        return super().step(action)


def test_an_actor_failure_reaches_the_learner_and_stops_the_others():
    config = build_config("demo", {**COUNTDOWN, "env": "tests.test_sebulba:FailingEnv",
                                   "steps": 100, "seeds": 1, "envs": 2, "learn_start": 30,
                                   "mem_size": 200, "batch_size": 8, "val_freq": 100,
                                   "val_steps": 4, "val_envs": 2, "chunk_steps": 10})
    with pytest.raises(ValueError, match="the env broke"):
        _one_device_runner(config).run(_Recorder(config))
    assert not _sebulba_threads()


SEBULBA_HOST = [*sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in COUNTDOWN.items()), [])]
BAD_SEBULBA = [
    (["--actor-devices", "0"], "--actor-devices must be a positive number of devices, got 0"),
    ([*SEBULBA_HOST, "--envs", "3", "--steps", "3000", "--mem-size", "999",
      "--actor-devices", "2"],
     "--envs 3 does not divide over --actor-devices 2"),
    ([*SEBULBA_HOST, "--batch-size", "9", "--learner-devices", "2"],
     "--batch-size 9 does not divide over --learner-devices 2"),
    ([*SEBULBA_HOST, "--seeds", "2", "--devices", "2", "--learner-devices", "2"],
     "use one or the other"),
    ([*SEBULBA_HOST, "--async", "onestep", "--bootstraps", "0", "--learner-devices", "2"],
     "the actor-learners (--async) run on one device"),
    (["--actor-devices", "2", "--learner-devices", "2"], "are for host envs"),   # Catch
    ([*SEBULBA_HOST, "--actor-devices", "32", "--learner-devices", "32"],
     "--actor-devices 32 and --learner-devices 32 need 64 devices: only "),
    ([*SEBULBA_HOST, "--actor-devices", "2", "--sweep", "eta=1e-3,2e-3"],
     "--actor-devices and --learner-devices (Sebulba) are for host envs"),
]


@pytest.mark.parametrize("extra, expected", BAD_SEBULBA,
                         ids=[" ".join(extra[-4:]) for extra, _ in BAD_SEBULBA])
def test_bad_sebulba_options_are_one_line_exit_2_no_run_dir(tmp_path, capsys, extra, expected):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "demo", *extra, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert not run_dir.exists()


# ------------------------------------------------------------- several devices (child)

def learner_update_equals_one_device() -> None:
    """Run in a child with four CPU devices: the Q update (two seeds, vmapped as the loop
    does) with each minibatch split over learner devices 2 and 3 gives the one-device
    update's parameters, optimiser state and metrics up to float order, and its compiled
    program sums gradients across the devices (an all-reduce: the split is real)."""
    from jaxatari.agents.dqn import QAgentSettings, make_q_agent
    from jaxatari.devices import SebulbaPlacement
    devices = jax.devices()
    assert len(devices) == 4
    placement = SebulbaPlacement(actor_devices=tuple(devices[:2]),
                                 learner_mesh=Mesh(np.asarray(devices[2:]), ("batch",)))
    settings = QAgentSettings(num_actions=4, obs_shape=(10, 10, 1), obs_dtype="uint8",
                              hist_len=2, body="mlp", mlp_features=(32,), hidden_size=16,
                              dueling=True, double_q=True, capacity=64, num_envs=2,
                              batch_size=16, optimiser="adam", learning_rate=1e-2)
    one = make_q_agent(settings)
    split = make_q_agent(settings, place_batch=placement.batch_layout(0))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    replay_axes = one.replay.seed_axes(jax.eval_shape(one.init, keys[0])[1])
    train, replay, _ = jax.vmap(one.init, out_axes=(0, replay_axes, 0))(keys)
    rng = np.random.default_rng(0)
    @jax.jit
    def add(replay, frame, action, reward, terminal, is_first, key):
        row = one.make_row(frame, action, reward, terminal, is_first, np.ones(2, bool), key)
        return jax.vmap(one.replay.add, in_axes=(replay_axes, None),
                        out_axes=replay_axes)(replay, row)   # the same row for both seeds
    for t in range(24):
        replay = add(replay, rng.integers(0, 255, (2, 10, 10, 1)).astype(np.uint8),
                     rng.integers(0, 4, 2), rng.normal(size=2).astype(np.float32),
                     rng.random(2) < 0.1, np.full(2, t == 0), jax.random.PRNGKey(t))

    def updated(agent):
        return jax.jit(jax.vmap(agent.update, in_axes=(0, replay_axes, None),
                                out_axes=(0, replay_axes, 0)))
    expected = jax.device_get(updated(one)(train, replay, 0.0))
    on_learner = placement.on_learner((train, replay))
    program = updated(split).lower(*on_learner, 0.0).compile()
    got = program(*on_learner, 0.0)
    for name, tree in (("train", 0), ("metrics", 2)):
        for a, b in zip(jax.tree.leaves(jax.device_get(got[tree])),
                        jax.tree.leaves(expected[tree])):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=name)
    assert {d for leaf in jax.tree.leaves(got[0]) for d in leaf.sharding.device_set} \
        == set(devices[2:])
    assert "all-reduce" in program.as_text()
    print("learner update equal")


def test_the_learner_update_split_over_two_devices_equals_one_device():
    result = subprocess.run(
        [sys.executable, "-c", "from tests.test_sebulba import learner_update_equals_one_device "
         "as check; check()"], env=repo_env(XLA_FLAGS=FOUR_CPU_DEVICES),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "learner update equal" in result.stdout


def test_sebulba_trains_space_invaders_through_envpool_on_2_actor_and_2_learner_devices(
        tmp_path):
    run_dir = tmp_path / "si"
    steps, envs, learn_start, freq = 400, 2, 200, 4
    result = subprocess.run(
        [sys.executable, "-m", "jaxatari", "train", "nature", "--game", "SpaceInvaders",
         "--backend", "envpool", "--actor-devices", "2", "--learner-devices", "2",
         "--steps", str(steps), "--envs", str(envs), "--learn-start", str(learn_start),
         "--mem-sample-freq", str(freq), "--mem-size", "1000", "--batch-size", "8",
         "--hidden-size", "32", "--height", "42", "--width", "42", "--epsilon-steps", "200",
         "--val-freq", "400", "--val-steps", "2400", "--val-envs", "2", "--val-epsilon",
         "0.05", "--chunk-steps", "200", "--quiet", "--run-dir", str(run_dir)],
        env=repo_env(XLA_FLAGS=FOUR_CPU_DEVICES), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"] == "SpaceInvaders" and summary["eval_steps"] == [steps]
    # raw game scores of finished games: Space Invaders pays 5 to 30 a hit, so the total
    # over the finished games (mean x episodes) is a multiple of 5
    (score,), (episodes,) = summary["final_scores"], summary["final_episodes"]
    assert score is not None and episodes > 0 and round(score * episodes) % 5 == 0
    assert (run_dir / "checkpoints" / "last").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["actor_devices"] == 2 and config["learner_devices"] == 2
    assert len(config["environment"]["devices"]) == 4
    progress = [line.split(",") for line in (run_dir / "progress.csv").read_text().splitlines()[1:]]
    losses = [float(row[4]) for row in progress if row[4] != "nan"]
    assert losses and all(np.isfinite(losses))
    # the learner's updates, counted from the original's rule: one every --mem-sample-freq
    # steps (every freq / envs iterations) from the iteration whose steps reach --learn-start
    every = freq // envs
    updates = sum(1 for i in range(steps // envs)
                  if (i + 1) * envs >= learn_start and i % every == 0)
    log = (run_dir / "log.txt").read_text()
    assert f"the learner made {updates:,} updates" in log
    assert "Sebulba: 2 actor threads" in log
