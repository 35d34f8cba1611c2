"""The pure-JAX environments (Catch, GridWorld, MinAtar) and their gymnasium wrappers.

Catch and GridWorld are checked against the rules of the originals (Kaixhin/rlenvs
``Catch.lua`` and ``GridWorld.lua``, Kaixhin/Atari ``examples/GridWorldVis.lua``).
Rollouts are jitted and vmapped over keys so the statistical checks stay fast on a CPU.
"""
from __future__ import annotations

import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from jaxatari.envs.base import EnvError
from jaxatari.envs.catch import make_catch
from jaxatari.envs.gridworld import make_gridworld
from jaxatari.envs.gridworld_net import GridWorldBody
from jaxatari.envs.gym_wrappers import FunctionalEnv, register_envs
from jaxatari.envs.minatar import make_minatar, minatar_game_name

CATCH_SIZE = 24
CATCH_EPISODE_STEPS = CATCH_SIZE - 1      # the ball falls one row a step from the top row
NOOP, LEFT, RIGHT = 0, 1, 2
UP, GRID_RIGHT, DOWN, GRID_LEFT = 0, 1, 2, 3


def rollout(env, policy, keys, num_steps):
    """Resets one episode per key and steps it ``num_steps`` times, never resetting.

    ``policy(state) -> action``. Returns the first observations [K, ...] and the per-step
    (state, obs, reward, terminated, truncated), each with leading axes [K, num_steps].
    """
    def episode(key):
        reset_key, steps_key = jax.random.split(key)
        state, first_obs = env.reset(reset_key)

        def step(state, step_key):
            state, obs, reward, terminated, truncated = env.step(step_key, state, policy(state))
            return state, (state, obs, reward, terminated, truncated)

        _, trajectory = jax.lax.scan(step, state, jax.random.split(steps_key, num_steps))
        return first_obs, trajectory

    return jax.jit(jax.vmap(episode))(keys)


def keys(count, seed=0):
    return jax.random.split(jax.random.key(seed), count)


def constant(action):
    return lambda state: jnp.int32(action)


def track_ball(state):
    """Moves the paddle (columns paddle_x..paddle_x+1) under where the ball falls next.

    Aiming at the ball's current column instead loses about one ball in seven: the ball
    drifts out of the paddle's span during the step in which the paddle stood still.
    """
    next_x = state.ball_x + state.ball_dx
    return jnp.where(next_x < state.paddle_x, LEFT,
                     jnp.where(next_x > state.paddle_x + 1, RIGHT, NOOP))


def flee_ball(state):
    return jnp.where(state.ball_x >= state.paddle_x + 0.5, LEFT, RIGHT)


def lit_columns(row):
    return np.flatnonzero(np.asarray(row))


# ------------------------------------------------------------------------------ Catch


def test_catch_spec_and_observation_format():
    env = make_catch()
    assert env.spec.obs_shape == (CATCH_SIZE, CATCH_SIZE, 1)
    assert env.spec.obs_dtype == "uint8"
    assert env.spec.num_actions == 3
    first_obs, (_, obs, *_) = rollout(env, track_ball, keys(16), CATCH_EPISODE_STEPS)
    for frames in (first_obs, obs):
        assert frames.dtype == jnp.uint8
        assert frames.shape[-3:] == (CATCH_SIZE, CATCH_SIZE, 1)
        assert set(np.unique(np.asarray(frames))) <= {0, 255}


def test_catch_episode_is_23_steps_with_reward_only_at_the_end():
    _, (_, _, reward, terminated, truncated) = rollout(
        make_catch(), flee_ball, keys(128), CATCH_EPISODE_STEPS)
    reward, terminated = np.asarray(reward), np.asarray(terminated)
    assert not terminated[:, :-1].any()
    assert terminated[:, -1].all()
    assert not np.asarray(truncated).any()
    assert (reward[:, :-1] == 0).all()
    assert set(np.unique(reward[:, -1])) <= {0.0, 1.0}


def test_catch_paddle_starts_two_wide_at_the_centre_of_the_bottom_row():
    first_obs, _ = rollout(make_catch(), constant(NOOP), keys(64), 1)
    bottom_rows = np.asarray(first_obs[:, -1, :, 0])
    for row in bottom_rows:
        np.testing.assert_array_equal(lit_columns(row), [11, 12])  # 1-based 12..13


@pytest.mark.parametrize("action, expected_columns", [(LEFT, [0, 1]), (RIGHT, [22, 23])])
def test_catch_paddle_cannot_leave_the_screen(action, expected_columns):
    pushes = 30  # past the episode's end: step is a pure function and keeps moving the paddle
    _, (state, obs, *_) = rollout(make_catch(), constant(action), keys(4), pushes)
    paddle_x = np.asarray(state.paddle_x)
    assert ((paddle_x >= 1) & (paddle_x <= CATCH_SIZE - 1)).all()
    for final_obs in np.asarray(obs[:, -1]):  # the ball has fallen below the screen by now
        np.testing.assert_array_equal(lit_columns(final_obs[-1, :, 0]), expected_columns)


def test_catch_ball_starts_on_the_top_row_in_every_column():
    first_obs, _ = rollout(make_catch(), constant(NOOP), keys(2000), 1)
    top_rows = np.asarray(first_obs[:, 0, :, 0])
    assert ((top_rows > 0).sum(axis=1) == 1).all()
    assert set(np.argmax(top_rows, axis=1)) == set(range(CATCH_SIZE))
    # Nothing else but the paddle is drawn at the start.
    assert (np.asarray(first_obs[:, 1:-1]) == 0).all()


def test_catch_ball_falls_drifts_and_bounces():
    _, (state, obs, *_) = rollout(make_catch(), constant(NOOP), keys(512), CATCH_EPISODE_STEPS)
    ball_x, ball_y, ball_dx = (np.asarray(a) for a in (state.ball_x, state.ball_y, state.ball_dx))
    np.testing.assert_array_equal(ball_y, np.broadcast_to(np.arange(2, CATCH_SIZE + 1),
                                                          ball_y.shape))
    assert ((ball_x >= 1) & (ball_x <= CATCH_SIZE)).all()
    assert (np.abs(ball_dx) <= 1 / 3).all()
    # The bounce rule keeps the ball at or right of 5/3 once it has moved left; only a
    # ball that starts in column 1 and drifts right is ever left of it.
    assert (ball_dx[ball_x < 5 / 3 - 1e-6] > 0).all()
    bounced = np.diff(np.sign(ball_dx), axis=1) != 0
    bounce_x = ball_x[:, 1:][bounced]
    assert bounced.any(axis=1).mean() > 0.05
    assert np.all(np.isclose(bounce_x, 5 / 3) | np.isclose(bounce_x, CATCH_SIZE))
    assert np.isclose(bounce_x, 5 / 3).any() and np.isclose(bounce_x, CATCH_SIZE).any()
    # The ball is drawn at its row and truncated column (1-based position -> 0-based pixel).
    frames = np.asarray(obs[:, :-1, :-1, :, 0])  # above the bottom row, before the last step
    rows, cols = ball_y[:, :-1] - 1, np.floor(ball_x[:, :-1]).astype(int) - 1
    episode, step = np.indices(rows.shape)
    assert (frames[episode, step, rows, cols] == 255).all()
    assert ((frames > 0).sum(axis=(2, 3)) == 1).all()


def test_catch_tracking_policy_catches_and_fleeing_policy_misses():
    def catch_rate(policy):
        _, (_, _, reward, *_) = rollout(make_catch(), policy, keys(256), CATCH_EPISODE_STEPS)
        return float(np.asarray(reward).sum(axis=1).mean())

    assert catch_rate(track_ball) > 0.95
    assert catch_rate(flee_ball) < 0.05


@pytest.mark.parametrize("flickering", [0.0, 0.5, 1.0])
def test_catch_flickering_blanks_that_share_of_screens(flickering):
    env = make_catch(flickering=flickering)
    first_obs, (state, obs, *_) = rollout(env, track_ball, keys(64), CATCH_EPISODE_STEPS)
    blank = ~np.asarray(obs).any(axis=(2, 3, 4))  # [K, T]
    assert np.asarray(first_obs).any(axis=(1, 2, 3)).all()  # reset screens never flicker
    assert blank.mean() == pytest.approx(flickering, abs=0.05)
    # The rendered display is blanked with the observation, as the original's getDisplay.
    screens = jax.vmap(jax.vmap(env.render))(state)
    np.testing.assert_array_equal(~np.asarray(screens).any(axis=(2, 3, 4)), blank)


def test_catch_obscured_blanks_the_rows_above_the_bottom_row():
    barrier = 6  # ceil(24 / 4)
    env = make_catch(obscured=True)
    assert env.spec.protocol["obscured"] is True
    _, (state, obs, *_) = rollout(env, constant(NOOP), keys(64), CATCH_EPISODE_STEPS)
    frames = np.asarray(obs[..., 0])
    hidden_rows = slice(CATCH_SIZE - barrier - 1, CATCH_SIZE - 1)  # 0-based rows 17..22
    assert not frames[:, :, hidden_rows].any()
    # The ball is seen above the barrier and the paddle stays on the bottom row.
    ball_row = np.asarray(state.ball_y) - 1
    ball_visible = frames[:, :, :CATCH_SIZE - barrier - 1].any(axis=(2, 3))
    np.testing.assert_array_equal(ball_visible, ball_row < CATCH_SIZE - barrier - 1)
    assert frames[:, :, -1].any(axis=2).all()


# -------------------------------------------------------------------------- GridWorld


def grid_rollout(actions, max_steps=1000):
    env = make_gridworld(max_steps=max_steps)
    actions = jnp.array(actions, dtype=jnp.int32)

    def run(key):
        state, first_obs = env.reset(key)

        def step(state, action):
            state, obs, reward, terminated, truncated = env.step(key, state, action)
            return state, (obs, reward, terminated, truncated)

        return first_obs, jax.lax.scan(step, state, actions)

    first_obs, (final_state, trajectory) = jax.jit(run)(jax.random.key(0))
    return env, first_obs, final_state, [np.asarray(a) for a in trajectory]


def test_gridworld_spec_start_and_render():
    env = make_gridworld()
    assert env.spec.name == "gridworld"
    assert env.spec.obs_shape == (2,) and env.spec.obs_dtype == "float32"
    assert env.spec.num_actions == 4
    assert env.spec.action_meanings == ("UP", "RIGHT", "DOWN", "LEFT")
    state, obs = env.reset(jax.random.key(0))
    assert obs.dtype == jnp.float32
    np.testing.assert_allclose(obs, [0.2, 0.4])
    screen = np.asarray(jax.jit(env.render)(state))
    assert screen.shape == (21, 21, 3) and screen.dtype == np.uint8
    assert list(zip(*np.nonzero(screen[..., 0]))) == [(8, 4)]  # row 20*y, column 20*x
    assert (screen[8, 4] == 255).all()


@pytest.mark.parametrize("action, expected", [
    (UP, (0.2, 0.45)), (GRID_RIGHT, (0.25, 0.4)), (DOWN, (0.2, 0.35)), (GRID_LEFT, (0.15, 0.4))])
def test_gridworld_moves_one_lattice_step(action, expected):
    _, _, _, (obs, reward, terminated, truncated) = grid_rollout([action])
    np.testing.assert_allclose(obs[0], expected, atol=1e-6)
    assert reward[0] == -0.5 and not terminated[0] and not truncated[0]


@pytest.mark.parametrize("action, expected", [
    (UP, (0.2, 1.0)), (GRID_RIGHT, (1.0, 0.4)), (DOWN, (0.2, 0.0)), (GRID_LEFT, (0.0, 0.4))])
def test_gridworld_clamps_at_the_walls(action, expected):
    _, _, _, (obs, reward, terminated, _) = grid_rollout([action] * 30)
    np.testing.assert_array_equal(obs[-1], np.array(expected, np.float32))
    assert (reward == -0.5).all() and not terminated.any()


def test_gridworld_optimal_path_returns_minus_14():
    path = [GRID_RIGHT] * 16 + [UP] * 12
    env, _, final_state, (obs, reward, terminated, truncated) = grid_rollout(path)
    np.testing.assert_array_equal(obs[-1], [1.0, 1.0])
    assert reward.sum() == -14.0
    assert terminated[-1] and not terminated[:-1].any() and not truncated.any()
    assert list(zip(*np.nonzero(np.asarray(env.render(final_state))[..., 0]))) == [(20, 20)]


def test_gridworld_truncates_at_max_steps():
    _, _, _, (_, _, terminated, truncated) = grid_rollout([GRID_LEFT] * 10, max_steps=10)
    assert truncated[-1] and not truncated[:-1].any() and not terminated.any()
    # Reaching the goal on the last allowed step is a real end, not a cut.
    path = [GRID_RIGHT] * 16 + [UP] * 12
    _, _, _, (_, _, terminated, truncated) = grid_rollout(path, max_steps=len(path))
    assert terminated[-1] and not truncated.any()


def test_gridworld_body_flattens_and_uses_its_activation():
    body = GridWorldBody()
    inputs = jnp.ones((5, 1, 2))  # a batch of one-frame histories
    params = body.init(jax.random.key(0), inputs)
    features = body.apply(params, inputs)
    assert features.shape == (5, 32) and (features >= 0).all()
    identity = GridWorldBody(activation=lambda x: x).apply(params, inputs)
    np.testing.assert_allclose(features, jax.nn.relu(identity))


# ---------------------------------------------------------------------------- MinAtar


def test_minatar_space_invaders_reset_and_step_format():
    env = make_minatar("SpaceInvaders-MinAtar")
    assert env.spec.name == "SpaceInvaders-MinAtar"
    assert env.spec.obs_shape == (10, 10, 6) and env.spec.obs_dtype == "uint8"
    assert env.spec.num_actions == len(env.spec.action_meanings) == 4
    assert env.spec.protocol["game"] == "SpaceInvaders-MinAtar"
    state, obs = jax.jit(env.reset)(jax.random.key(0))
    assert obs.shape == (10, 10, 6) and obs.dtype == jnp.uint8
    step = jax.jit(env.step)
    state, obs, reward, terminated, truncated = step(jax.random.key(1), state, 3)
    assert obs.shape == (10, 10, 6) and obs.dtype == jnp.uint8
    assert set(np.unique(np.asarray(obs))) == {0, 255}
    assert reward.dtype == jnp.float32
    assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_
    screen = np.asarray(jax.jit(env.render)(state))
    assert screen.shape == (80, 80, 3) and screen.dtype == np.uint8 and screen.any()
    # gymnax's time limit is reported as a truncation, not a terminal.
    _, _, _, terminated, truncated = step(
        jax.random.key(2), state.replace(time=999, terminal=False), 0)
    assert truncated and not terminated


def test_minatar_random_rollout_runs_under_jit():
    env = make_minatar("spaceinvaders")

    def run(key):
        state, obs = env.reset(key)

        def step(carry, step_key):
            state, done = carry
            action_key, env_key = jax.random.split(step_key)
            action = jax.random.randint(action_key, (), 0, env.spec.num_actions)

            # The next-step reset convention of base.py.
            def reset_step(state):
                state, obs = env.reset(env_key)
                return state, obs, jnp.float32(0), jnp.bool_(False), jnp.bool_(False)

            state, obs, reward, terminated, truncated = jax.lax.cond(
                done, reset_step, lambda state: env.step(env_key, state, action), state)
            return (state, terminated | truncated), (obs, reward, terminated)

        _, trajectory = jax.lax.scan(step, (state, jnp.bool_(False)),
                                     jax.random.split(key, 500))
        return trajectory

    obs, reward, terminated = (np.asarray(a) for a in jax.jit(run)(jax.random.key(0)))
    assert obs.shape == (500, 10, 10, 6) and set(np.unique(obs)) <= {0, 255}
    assert (reward >= 0).all() and reward.sum() > 0
    assert terminated.any()


@pytest.mark.parametrize("name, game", [
    ("spaceinvaders-minatar", "SpaceInvaders-MinAtar"), ("SpaceInvaders", "SpaceInvaders-MinAtar"),
    ("BREAKOUT", "Breakout-MinAtar"), ("Asterix-MinAtar", "Asterix-MinAtar"),
    ("freeway", "Freeway-MinAtar")])
def test_minatar_names_are_case_and_suffix_insensitive(name, game):
    assert minatar_game_name(name) == game


def test_minatar_unknown_game_is_a_one_line_error():
    with pytest.raises(EnvError) as error:
        make_minatar("pong")
    message = str(error.value)
    assert "\n" not in message and "'pong'" in message
    assert "SpaceInvaders-MinAtar" in message and "Breakout-MinAtar" in message


# ------------------------------------------------------------------ gymnasium wrappers


@pytest.mark.parametrize("env_id", ["jaxatari/Catch-v0", "jaxatari/GridWorld-v0"])
def test_gym_env_passes_the_gymnasium_checker(env_id):
    env = gymnasium.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        # The checker asks for the raw env: gymnasium.make adds its own checking wrappers.
        check_env(env.unwrapped)
    env.reset(seed=0)
    screen = env.render()
    assert screen.dtype == np.uint8 and screen.ndim == 3 and screen.shape[-1] == 3


def test_gym_catch_episode_ends_after_23_steps():
    env = gymnasium.make("jaxatari/Catch-v0")
    obs, info = env.reset(seed=3)
    assert obs.shape == (24, 24, 1) and obs.dtype == np.uint8
    for step in range(1, 100):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert step == CATCH_EPISODE_STEPS and terminated and not truncated
    assert reward in (0.0, 1.0)


def test_gym_catch_kwargs_reach_make_catch():
    env = gymnasium.make("jaxatari/Catch-v0", size=12, flickering=1.0, obscured=True)
    assert env.observation_space.shape == (12, 12, 1)
    assert env.unwrapped.jax_env.spec.protocol == {
        "env": "catch", "size": 12, "flickering": 1.0, "obscured": True, "level": 2}
    env.reset(seed=0)
    assert not env.step(0)[0].any()  # every screen flickers


def test_gym_gridworld_observation_space_and_seeding():
    env = FunctionalEnv(make_gridworld(), seed=7)
    assert env.observation_space.dtype == np.float32
    assert (env.observation_space.low == 0).all() and (env.observation_space.high == 1).all()
    obs, _ = env.reset()
    np.testing.assert_allclose(obs, [0.2, 0.4])
    assert env.render() is None  # no render_mode asked for


def test_register_envs_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered again
        register_envs()
        register_envs()
    assert "jaxatari/Catch-v0" in gymnasium.registry
    assert "jaxatari/GridWorld-v0" in gymnasium.registry
