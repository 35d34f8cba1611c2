"""Recurrent DQN: the LSTM core's resets, sequence replay windows, the sequence loss's masks
and step selection, acting that carries the LSTM state, any batch size, vmap over seeds, the
configuration's rules, and DRQN's margin over one-frame DQN on flickering Catch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxatari.agents.dqn import QAgentSettings, make_q_agent
from jaxatari.config import ConfigError, build_config
from jaxatari.networks import RecurrentQNetwork, make_body, zero_lstm_carry
from jaxatari.replay import make_replay
from jaxatari.replay.storage import Row, gather_windows
from jaxatari.types import Sequence

FRAME = (3, 3, 1)
HIDDEN = 8
# The learning test's budget (steps per seed) and the margin it holds DRQN to.
LEARNING_STEPS = 30_000
LEARNING_MARGIN = 0.1


def small_network(num_heads: int = 1, dueling: bool = False) -> tuple[RecurrentQNetwork, dict]:
    network = RecurrentQNetwork(body=make_body("mlp", mlp_features=(16,)), num_actions=3,
                                hidden_size=HIDDEN, num_heads=num_heads, dueling=dueling)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, *FRAME)),
                          jnp.ones((1, 1), bool), zero_lstm_carry(1, HIDDEN))
    return network, params


def frames(key, steps: int, batch: int) -> jax.Array:
    return jax.random.uniform(key, (steps, batch, *FRAME))


@pytest.mark.parametrize("num_heads,dueling", [(1, False), (1, True), (3, True)])
def test_a_sequence_across_an_episode_start_equals_two_separate_sequences(num_heads, dueling):
    network, params = small_network(num_heads, dueling)
    obs = frames(jax.random.PRNGKey(1), 9, 2)
    reset = jnp.zeros((9, 2), bool).at[5].set(True)
    joined, _ = network.apply(params, obs, reset, zero_lstm_carry(2, HIDDEN))
    first, _ = network.apply(params, obs[:5], reset[:5], zero_lstm_carry(2, HIDDEN))
    second, _ = network.apply(params, obs[5:], reset[5:], zero_lstm_carry(2, HIDDEN))
    assert joined.shape == (9, 2, num_heads, 3)
    np.testing.assert_allclose(joined, jnp.concatenate([first, second]), rtol=1e-5, atol=1e-6)
    # Without the reset the second part depends on the first: the test can tell.
    carried, _ = network.apply(params, obs, jnp.zeros((9, 2), bool), zero_lstm_carry(2, HIDDEN))
    assert not np.allclose(carried[5:], second, atol=1e-4)


def test_forget_gate_bias_starts_at_one():
    _, params = small_network()
    bias = np.asarray(params["params"]["lstm"]["input"]["bias"])
    np.testing.assert_array_equal(bias[HIDDEN:2 * HIDDEN], 1.0)
    np.testing.assert_array_equal(np.delete(bias, np.s_[HIDDEN:2 * HIDDEN]), 0.0)


# ----------------------------------------------------------------------------- replay

def fill(replay, num_steps: int, num_envs: int, episode_length: int = 5):
    """Writes ``num_steps`` rows; frame value = global step + 1 so order can be read back;
    an episode of ``episode_length`` steps then a reset step (invalid), per env."""
    state = replay.init(Row(frame=jnp.zeros((num_envs, *FRAME), jnp.uint8),
                            action=jnp.zeros((num_envs,), jnp.int32),
                            reward=jnp.zeros((num_envs,), jnp.float32),
                            terminal=jnp.zeros((num_envs,), bool),
                            first=jnp.zeros((num_envs,), bool),
                            valid=jnp.zeros((num_envs,), bool),
                            mask=jnp.zeros((num_envs, 1), bool)))
    add = jax.jit(replay.add)
    for t in range(num_steps):
        phase = t % (episode_length + 1)
        row = Row(frame=jnp.full((num_envs, *FRAME), (t + 1) % 256, jnp.uint8),
                  action=jnp.full((num_envs,), t % 3, jnp.int32),
                  reward=jnp.full((num_envs,), float(phase == episode_length - 1)),
                  terminal=jnp.full((num_envs,), phase == episode_length - 1),
                  first=jnp.full((num_envs,), phase == 0),
                  valid=jnp.full((num_envs,), phase != episode_length),
                  mask=jnp.ones((num_envs, 1), bool))
        state = add(state, row)
    return state


@pytest.mark.parametrize("kind", ["uniform", "proportional"])
@pytest.mark.parametrize("num_steps", [12, 61])   # part filled, wrapped twice
def test_windows_never_overlap_the_write_head(kind, num_steps):
    length, burn_in = 4, 2
    replay = make_replay(kind, capacity=2 * 24, num_envs=2, hist_len=length, n_step=1,
                         gamma=0.9, recurrent=True, burn_in=burn_in)
    state = fill(replay, num_steps, num_envs=2)
    batch, indices, _ = jax.jit(replay.sample, static_argnums=2)(state, jax.random.PRNGKey(3), 256)
    assert batch.obs.shape == (burn_in + length + 1, 256, *FRAME)
    written = np.asarray(batch.obs[:, :, 0, 0, 0]).astype(int)      # global step + 1, [W, B]
    newest = num_steps % 256
    oldest_kept = max(num_steps - 24, 0) + 1
    usable = np.asarray(batch.mask).sum((0, 2)) > 0
    if kind == "uniform":   # by construction, every drawn window lies in written rows
        assert usable.all()
    for column in np.flatnonzero(usable):
        steps = written[:, column]
        np.testing.assert_array_equal(np.diff(steps), 1)   # consecutive, in time order
        assert steps[-1] <= newest and steps[0] >= oldest_kept
    _, valid = gather_windows(state.storage, indices, burn_in=burn_in, length=length, gamma=0.9)
    assert not (usable & ~np.asarray(valid)).any()   # a window with a loss term is valid


def test_window_masks_reset_steps_and_marks_episode_starts():
    replay = make_replay("uniform", capacity=40, num_envs=1, hist_len=6, n_step=1, gamma=0.9,
                         recurrent=True)
    state = fill(replay, 30, num_envs=1, episode_length=5)
    # The window whose last transition is row 13: rows 8..14 (steps 9..15).
    batch, valid = gather_windows(state.storage, jnp.array([13]), burn_in=0, length=6,
                                  gamma=0.9)
    assert bool(valid[0])
    steps = np.arange(8, 14)              # the learnable rows
    phase = steps % 6
    np.testing.assert_array_equal(batch.mask[:, 0, 0], phase != 5)            # reset steps out
    np.testing.assert_array_equal(batch.first[:, 0], np.arange(8, 15) % 6 == 0)
    np.testing.assert_allclose(batch.discount_t[:, 0], np.where(phase == 4, 0.0, 0.9))
    # A window reaching past the oldest row is invalid and fully masked.
    batch, valid = gather_windows(state.storage, jnp.array([2]), burn_in=0, length=6, gamma=0.9)
    assert not bool(valid[0]) and float(batch.mask.sum()) == 0.0


# ----------------------------------------------------------------------------- agent

def settings(**overrides) -> QAgentSettings:
    values = dict(num_actions=3, obs_shape=FRAME, obs_dtype="uint8", hist_len=4, body="mlp",
                  mlp_features=(16,), hidden_size=HIDDEN, loss="dqn", double_q=True,
                  replay="uniform", capacity=60, num_envs=2, batch_size=8, optimiser="adam",
                  learning_rate=1e-3, recurrent=True, loss_steps="all")
    return QAgentSettings(**{**values, **overrides})


def filled_agent(s: QAgentSettings, key=0):
    agent = make_q_agent(s)
    train, replay_state, _ = agent.init(jax.random.PRNGKey(key))
    replay_state = fill(agent.replay, 40, s.num_envs)
    return agent, train, replay_state


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_any_batch_size_updates(batch_size):
    agent, train, replay_state = filled_agent(settings(batch_size=batch_size))
    new_train, _, metrics = jax.jit(agent.update)(train, replay_state, 0.0)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), train.params, new_train.params)
    assert any(jax.tree.leaves(changed))


def test_vmap_over_seeds_equals_a_loop():
    s = settings(replay="proportional", dueling=True)
    agent = make_q_agent(s)
    seeds = [filled_agent(s, key)[1:] for key in (0, 1)]
    update = jax.jit(agent.update)
    looped = [update(train, replay_state, 0.4) for train, replay_state in seeds]
    trains = jax.tree.map(lambda *x: jnp.stack(x), *[t for t, _ in seeds])
    axes = agent.replay.seed_axes(seeds[0][1])
    # Counters shared by the seeds (axis None) stay unstacked.
    replays = jax.tree.map(lambda axis, *x: x[0] if axis is None else jnp.stack(x), axes,
                           *[r for _, r in seeds], is_leaf=lambda x: x is None)
    vmapped = jax.jit(jax.vmap(agent.update, in_axes=(0, axes, None), out_axes=(0, axes, 0)))(
        trains, replays, 0.4)
    for index, (train, _, metrics) in enumerate(looped):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[index], b, rtol=2e-5, atol=1e-6),
                     vmapped[0].params, train.params)
        np.testing.assert_allclose(vmapped[2]["loss"][index], metrics["loss"], rtol=2e-5)


def window_batch(key, length=4, burn_in=0, batch=5) -> Sequence:
    keys = jax.random.split(key, 3)
    width = burn_in + length + 1
    return Sequence(obs=(jax.random.uniform(keys[0], (width, batch, *FRAME)) * 255).astype(jnp.uint8),
                    first=jnp.zeros((width, batch), bool).at[0].set(True),
                    a_tm1=jax.random.randint(keys[1], (length, batch), 0, 3),
                    r_t=jax.random.uniform(keys[2], (length, batch)),
                    discount_t=jnp.full((length, batch), 0.9),
                    mask=jnp.ones((length, batch, 1)))


def test_last_step_loss_ignores_earlier_steps_and_all_steps_uses_them():
    batch = window_batch(jax.random.PRNGKey(4))
    changed = batch.replace(r_t=batch.r_t.at[0].add(5.0))             # step 0 only
    weights = jnp.ones((5,))
    for loss_steps, moves in (("last", False), ("all", True)):
        agent = make_q_agent(settings(loss_steps=loss_steps))
        train, _, _ = agent.init(jax.random.PRNGKey(0))
        loss_fn = jax.jit(agent.loss)
        loss, _ = loss_fn(train.params, train.target_params, batch, weights)
        loss_changed, _ = loss_fn(train.params, train.target_params, changed, weights)
        assert (abs(float(loss) - float(loss_changed)) > 1e-3) == moves, loss_steps
    # "last" equals "all" on a batch whose earlier steps are masked out.
    only_last = batch.replace(mask=batch.mask.at[:-1].set(0.0))
    losses = []
    for loss_steps in ("last", "all"):
        agent = make_q_agent(settings(loss_steps=loss_steps))
        train, _, _ = agent.init(jax.random.PRNGKey(0))
        losses.append(float(jax.jit(agent.loss)(train.params, train.target_params, only_last,
                                                weights)[0]))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def test_masked_steps_give_no_loss_and_no_gradient():
    agent = make_q_agent(settings())
    train, _, _ = agent.init(jax.random.PRNGKey(0))
    batch = window_batch(jax.random.PRNGKey(5))
    masked = batch.replace(mask=jnp.zeros_like(batch.mask))
    grads, aux = jax.jit(jax.grad(agent.loss, has_aux=True))(train.params, train.target_params,
                                                             masked, jnp.ones((5,)))
    assert float(aux["loss"]) == 0.0 and not bool(aux["valid"].any())
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    # Masking one sample removes exactly its contribution.
    one_out = batch.replace(mask=batch.mask.at[:, 2].set(0.0))
    keep = jnp.array([0, 1, 3, 4])
    subset = jax.tree.map(lambda x: x[:, keep], batch)
    loss_fn = jax.jit(agent.loss)
    loss_one_out = loss_fn(train.params, train.target_params, one_out, jnp.ones((5,)))[0]
    loss_subset = loss_fn(train.params, train.target_params, subset, jnp.ones((4,)))[0]
    np.testing.assert_allclose(loss_one_out, loss_subset, rtol=1e-5)


def test_burn_in_warms_the_state_without_entering_the_loss():
    agent = make_q_agent(settings(burn_in=3, loss_steps="all"))
    train, _, _ = agent.init(jax.random.PRNGKey(0))
    batch = window_batch(jax.random.PRNGKey(6), burn_in=3)
    loss_fn = jax.jit(lambda b: agent.loss(train.params, train.target_params, b, jnp.ones((5,)))[0])
    loss = float(loss_fn(batch))
    # Other burn-in frames change the state the learned steps start from...
    other = batch.replace(obs=batch.obs.at[1].set(255 - batch.obs[1]))
    assert abs(float(loss_fn(other)) - loss) > 1e-6
    # ...but a reset just after the burn-in makes them irrelevant.
    reset = batch.replace(first=batch.first.at[3].set(True))
    reset_other = other.replace(first=other.first.at[3].set(True))
    np.testing.assert_allclose(loss_fn(reset), loss_fn(reset_other), rtol=1e-6)


def test_acting_carries_the_lstm_state_step_by_step():
    agent = make_q_agent(settings(num_envs=2))
    train, _, actor = agent.init(jax.random.PRNGKey(0))
    obs = (frames(jax.random.PRNGKey(7), 6, 2) * 255).astype(jnp.uint8)
    first = jnp.zeros((6, 2), bool).at[0].set(True).at[4, 1].set(True)
    unrolled, _ = agent.network.apply(train.params, obs, first, zero_lstm_carry(2, HIDDEN))
    observe, act = jax.jit(agent.observe), jax.jit(agent.act)
    for t in range(6):
        actor = observe(actor, obs[t], first[t])
        actions, actor = act(train.params, actor, 0.0)
        np.testing.assert_array_equal(actions, jnp.argmax(unrolled[t, :, 0], -1))


def test_configuration_rules():
    config = build_config("recurrent", {"env": "catch"})
    assert config.recurrent and config.hist_len == 10 and config.hidden_size == 512
    for overrides, words in (({"n_step": 3}, "--n-step 1"),
                             ({"async_method": "onestep"}, "replay agent"),
                             ({"burn_in": -1}, "--burn-in"),
                             ({"loss_steps": "first"}, "--loss-steps")):
        with pytest.raises(ConfigError, match=words):
            build_config("demo-recurrent", overrides)


def test_the_recurrent_preset_builds_on_atari_frames():
    """The original's recurrent preset (LSTM 512, sequences of 10, adadelta) traced on 84x84
    grey frames (shapes only, nothing allocated or run)."""
    from jaxatari.envs.base import EnvSpec
    from jaxatari.loop import agent_settings
    config = build_config("recurrent", {})
    spec = EnvSpec(name="atari", obs_shape=(84, 84, 1), obs_dtype="uint8", num_actions=6,
                   action_meanings=("NOOP",) * 6, protocol={})
    agent = make_q_agent(agent_settings(config, spec))
    train, replay_state, actor = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    assert actor.core[0].shape == (1, 512) and agent.stack_shape == (84, 84, 1)
    assert replay_state.storage.rows.frame.shape == (400_000, 1, 84, 84, 1)
    batch = jax.eval_shape(lambda r: agent.replay.sample(r, jax.random.PRNGKey(1), 32)[0],
                           replay_state)
    assert batch.obs.shape == (11, 32, 84, 84, 1) and batch.mask.shape == (10, 32, 1)
    _, _, metrics = jax.eval_shape(agent.update, train, replay_state, 0.0)
    assert metrics["loss"].shape == ()


def test_saliency_and_export_refuse_a_recurrent_agent():
    from jaxatari.export import check_exportable
    from jaxatari.saliency import make_saliency
    s = settings()
    with pytest.raises(ValueError, match="recurrent"):
        make_saliency(s, "normal")
    with pytest.raises(ConfigError, match="recurrent"):
        check_exportable(s)


# ----------------------------------------------------------------------------- runs

def test_recurrent_run_resumes_exactly_evaluates_and_refuses_saliency_and_export(tmp_path,
                                                                                  capsys):
    from jaxatari import checkpoint as ckpt
    from jaxatari.cli import main
    from jaxatari.loop import Trainer, train
    from jaxatari.loops.checkpoint_items import to_tree
    from tests.tiny import tiny

    def config(steps):
        return tiny(steps=steps, recurrent=True, hist_len=4, burn_in=1, flickering=0.5)

    whole, _ = train(config(256), tmp_path / "whole", quiet=True)
    part, _ = train(config(128), tmp_path / "part", quiet=True)
    train(config(256), None, quiet=True, resume_from=part)
    templates = to_tree(Trainer(config(256), whole).templates())
    a, _ = ckpt.load(whole / "checkpoints" / "last", templates)
    b, _ = ckpt.load(part / "checkpoints" / "last", templates)
    for name in ("train", "actor", "replay"):
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])):
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert a["actor"].core[0].shape == (2, 4, 16)          # [S, E, hidden] LSTM state saved
    assert main(["eval", str(whole), "--episodes", "3"]) == 0
    assert "mean score" in capsys.readouterr().out
    for args in (["eval", str(whole), "--episodes", "1", "--saliency", "normal"],
                 ["export", str(whole), "--out", str(tmp_path / "export")]):
        assert main(args) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "recurrent" in err[0], err


def test_recurrent_agent_on_the_host_env_path(tmp_path):
    from jaxatari.loop import train
    config = build_config("demo", {
        "env": "tests.test_loop_host:CountdownEnv", "model_body": "mlp", "recurrent": True,
        "hist_len": 3, "hidden_size": 16, "steps": 240, "seeds": 2, "envs": 2,
        "learn_start": 64, "mem_size": 200, "val_freq": 120, "val_steps": 60, "val_envs": 2,
        "chunk_steps": 60})
    _, summary = train(config, tmp_path / "fake", quiet=True)
    assert summary["final_scores"] == [5.0, 5.0]   # whole 5-step episodes, acting carried state


@pytest.mark.slow
def test_drqn_beats_one_frame_dqn_on_flickering_catch(tmp_path):
    """The demo-recurrent preset on a short budget (Adam 3e-3 without annealing so that it is
    short), 2 seeds vmapped per agent: a DRQN fed one frame per step against the same
    network with a fully connected layer fed one frame. Blank screens leave a memoryless
    agent guessing; at this budget one-frame DQN is still near chance (about 0.07) while DRQN
    catches about a quarter of the balls (scripts/exp_flicker.py is the full experiment)."""
    from jaxatari.loop import train
    short = {"seeds": 2, "steps": LEARNING_STEPS, "val_freq": LEARNING_STEPS,
             "chunk_steps": LEARNING_STEPS, "val_steps": 3200, "eta": 0.003,
             "eta_anneal": False}
    scores = {}
    for name, overrides in (("drqn", {}),
                            ("dqn1", {"recurrent": False, "hist_len": 1, "batch_size": 32})):
        _, summary = train(build_config("demo-recurrent", {**short, **overrides}),
                           tmp_path / name, quiet=True)
        scores[name] = np.asarray(summary["final_scores"])
    assert scores["drqn"].mean() >= scores["dqn1"].mean() + LEARNING_MARGIN, scores
    assert scores["drqn"].min() > scores["dqn1"].max(), scores