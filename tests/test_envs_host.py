"""Host environment adapters: Atari protocols on envpool and ale-py, and any gymnasium env.

The reset-step convention (base.py) is checked against envpool itself, and the ale-py
backend is checked to reproduce envpool frame for frame, so both backends give the agent
the same data.
"""
from __future__ import annotations

import importlib.util

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from jaxatari.envs import atari
from jaxatari.envs.atari import PROTOCOLS, envpool_kwargs, list_games, make_atari
from jaxatari.envs.base import EnvError
from jaxatari.envs.gym_env import make_gym

HAS_ENVPOOL = importlib.util.find_spec("envpool") is not None
HAS_ALE = importlib.util.find_spec("ale_py") is not None
needs_envpool = pytest.mark.skipif(not HAS_ENVPOOL, reason="envpool is not installed")
needs_ale = pytest.mark.skipif(not HAS_ALE, reason="ale-py is not installed")
needs_both = pytest.mark.skipif(not (HAS_ENVPOOL and HAS_ALE), reason="needs envpool and ale-py")
BACKENDS = (pytest.param("envpool", marks=needs_envpool), pytest.param("ale", marks=needs_ale))
# One no-op frame at every reset makes the start of a game deterministic, so a reset
# observation can be compared with the first one and the two backends with each other.
ONE_START = {"random_starts": 1}


def _one_line_error(build, *match: str) -> None:
    with pytest.raises(EnvError) as info:
        build()
    message = str(info.value)
    assert "\n" not in message and message
    for text in match:
        assert text in message, message


# ------------------------------------------------------------------------------ Atari


def test_protocol_settings():
    kaixhin, machado = PROTOCOLS["kaixhin"], PROTOCOLS["machado"]
    # Mnih et al. 2015 / Kaixhin/Atari defaults.
    assert kaixhin["random_starts"] == 30 and kaixhin["act_rep"] == 4
    assert (kaixhin["pool_frms_type"], kaixhin["pool_frms_size"]) == ("max", 2)
    assert kaixhin["life_loss_terminal"] and not kaixhin["full_actions"]
    assert kaixhin["sticky_prob"] == 0.0
    # Machado et al. 2018.
    assert machado["sticky_prob"] == 0.25 and machado["full_actions"]
    assert not machado["life_loss_terminal"] and machado["random_starts"] == 1
    for settings in (kaixhin, machado):
        assert (settings["height"], settings["width"], settings["grayscale"]) == (84, 84, True)
        assert not settings["fire_reset"] and not settings["reward_clip"]
        assert settings["max_episode_steps"] == 27000


@needs_envpool
@pytest.mark.parametrize("protocol, num_actions", [("kaixhin", 6), ("machado", 18)])
def test_envpool_is_built_with_the_protocol(protocol, num_actions):
    env = make_atari("SpaceInvaders", 2, 0, protocol=protocol)
    config = env._pool.config
    for key, value in envpool_kwargs(PROTOCOLS[protocol]).items():
        assert config[key] == value, key
    assert config["stack_num"] == 1 and not config["episodic_life"]
    assert not config["use_fire_reset"] and not config["reward_clip"]
    spec = env.spec
    assert spec.num_actions == num_actions == len(spec.action_meanings)
    assert spec.action_meanings[:2] == ("NOOP", "FIRE")
    assert spec.protocol == {"protocol": protocol, "backend": "envpool",
                             "game": "SpaceInvaders", **PROTOCOLS[protocol]}
    assert (spec.name, spec.human_name) == ("SpaceInvaders", "space_invaders")
    assert (spec.obs_shape, spec.obs_dtype) == ((84, 84, 1), "uint8")
    env.close()


@needs_ale
@pytest.mark.parametrize("protocol, num_actions", [("kaixhin", 6), ("machado", 18)])
def test_ale_is_built_with_the_protocol(protocol, num_actions):
    env = make_atari("SpaceInvaders", 1, 0, protocol=protocol, backend="ale")
    ale = env._games[0].ale
    assert ale.getFloat("repeat_action_probability") == PROTOCOLS[protocol]["sticky_prob"]
    assert ale.getInt("frame_skip") == 1
    assert env.spec.num_actions == num_actions == len(env.spec.action_meanings)
    assert env.spec.protocol["backend"] == "ale"


@needs_ale
def test_overrides_are_applied_and_recorded():
    env = make_atari("Pong", 1, 0, backend="ale",
                     overrides={"pool_frms_type": "mean", "act_rep": 3, "height": 42,
                                "width": 40, "random_starts": 0, "full_actions": True})
    assert env.spec.protocol["pool_frms_type"] == "mean"
    assert env.spec.protocol["act_rep"] == 3
    assert env.spec.obs_shape == (42, 40, 1) and env.spec.num_actions == 18
    obs = env.reset()
    assert obs.shape == (1, 42, 40, 1) and obs.dtype == np.uint8
    assert env.step(np.zeros(1, int)).obs.shape == (1, 42, 40, 1)


@needs_ale
def test_mean_pooling_lies_below_max_pooling():
    mean, peak = (make_atari("SpaceInvaders", 1, 0, backend="ale",
                             overrides={"pool_frms_type": kind}) for kind in ("mean", "max"))
    mean.reset()
    peak.reset()
    below = []
    for action in np.random.default_rng(0).integers(0, 6, 60):
        a, b = mean.step(np.array([action])).obs, peak.step(np.array([action])).obs
        assert (a <= b).all()
        below.append((a < b).any())
    assert any(below)   # flickering sprites make the two differ


@needs_both
@pytest.mark.parametrize("spelling", ["SpaceInvaders", "space_invaders", "spaceinvaders",
                                      "ALE/SpaceInvaders-v5"])
def test_game_spellings(spelling):
    assert atari._resolve_game(spelling, "envpool") == "space_invaders"
    assert atari._resolve_game(spelling, "ale") == "space_invaders"


@pytest.mark.skipif(not (HAS_ENVPOOL or HAS_ALE), reason="needs envpool or ale-py")
def test_list_games():
    games = list_games()
    assert {"SpaceInvaders", "Pong", "Breakout"} <= set(games) and len(games) > 50


@needs_envpool
def test_envpool_reset_step_and_raw_rewards_against_envpool_itself():
    """In eval mode the adapter is envpool, transposed; after a game over envpool itself
    ignores the action, gives reward 0 and the first frame of a new game."""
    import envpool

    kwargs = envpool_kwargs({**PROTOCOLS["kaixhin"], **ONE_START})
    raw = envpool.make_gymnasium("SpaceInvaders-v5", num_envs=2, seed=7, **kwargs)
    env = make_atari("SpaceInvaders", 2, 7, overrides=ONE_START)
    env.set_mode("eval")
    raw_obs, info = raw.reset()
    first = env.reset()
    assert first.shape == (2, 84, 84, 1) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, raw_obs.transpose(0, 2, 3, 1))
    lives, rewards, lost_life = info["lives"], [], False
    rng = np.random.default_rng(0)
    for _ in range(3000):
        actions = rng.integers(0, 6, 2)
        raw_obs, _, raw_term, raw_trunc, info = raw.step(actions.astype(np.int32))
        step = env.step(actions)
        np.testing.assert_array_equal(step.obs, raw_obs.transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(step.reward, info["reward"])
        np.testing.assert_array_equal(step.terminated, info["terminated"].astype(bool))
        np.testing.assert_array_equal(step.game_over, raw_term | raw_trunc)
        rewards.append(step.reward)
        lost_life |= bool((info["lives"] < lives).any() and not step.terminated.any())
        lives = info["lives"]
        if step.game_over.any():
            break
    assert step.game_over.any(), "no game over in 3000 random steps"
    assert lost_life, "a life loss must not be a terminal in eval mode"
    assert np.max(rewards) > 1, "rewards must be raw (Space Invaders scores 5..30)"

    done = step.game_over
    # Different actions for the adapter and raw envpool: a reset step ignores them.
    raw_obs, raw_reward, _, _, info = raw.step(np.zeros(2, np.int32))
    step = env.step(np.full(2, 5))
    assert (info["elapsed_step"][done] == 0).all() and (raw_reward[done] == 0).all()
    assert (step.reward[done] == 0).all()
    assert not (step.terminated[done] | step.truncated[done]).any()
    np.testing.assert_array_equal(step.obs[done], raw_obs.transpose(0, 2, 3, 1)[done])
    np.testing.assert_array_equal(step.obs[done], first[done])   # a fresh game's first frame


@pytest.mark.parametrize("backend", BACKENDS)
def test_life_loss_is_a_terminal_in_train_mode_only(backend):
    """Train mode = eval mode plus one held reset step after each life-loss terminal.

    Both envs see the same per-env action stream; the train env's stream pauses on its
    held steps, so once those are removed its observations equal the eval env's.
    """
    train = make_atari("SpaceInvaders", 2, 1, backend=backend, overrides=ONE_START)
    evaluate = make_atari("SpaceInvaders", 2, 1, backend=backend, overrides=ONE_START)
    evaluate.set_mode("eval")
    train_frames, eval_frames = [[train.reset()[i]] for i in range(2)], [
        [evaluate.reset()[i]] for i in range(2)]
    stream = np.random.default_rng(0).integers(0, 6, (500, 2))
    position = np.zeros(2, int)
    held = np.zeros(2, bool)
    holds = 0
    for t in range(400):
        step = train.step(stream[position, [0, 1]])
        eval_step = evaluate.step(stream[t])
        assert not (eval_step.terminated & ~eval_step.game_over).any()
        for i in range(2):
            if held[i]:     # the reset step of a life-loss episode: the env did not move
                np.testing.assert_array_equal(step.obs[i], train_frames[i][-1])
                assert step.reward[i] == 0 and not step.terminated[i] and not step.truncated[i]
            else:
                train_frames[i].append(step.obs[i])
            eval_frames[i].append(eval_step.obs[i])
        position += ~held
        held = step.terminated & ~step.game_over
        holds += held.sum()
    assert holds > 0, "no life lost in 400 steps"
    for i in range(2):
        n = len(train_frames[i])
        np.testing.assert_array_equal(np.stack(train_frames[i]), np.stack(eval_frames[i][:n]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_limit_truncates_then_resets(backend):
    env = make_atari("Pong", 2, 0, backend=backend,
                     overrides={**ONE_START, "max_episode_steps": 20})
    first = env.reset()
    for t in range(1, 21):
        step = env.step(np.full(2, 2))
        assert step.truncated.all() == (t == 20) and step.game_over.all() == (t == 20)
        assert not step.terminated.any()
    step = env.step(np.full(2, 2))
    assert not (step.truncated | step.terminated | step.game_over).any()
    assert (step.reward == 0).all()
    np.testing.assert_array_equal(step.obs, first)


@needs_both
@pytest.mark.parametrize("overrides, steps, min_game_overs", [
    (ONE_START, 700, 1),
    ({**ONE_START, "act_rep": 1, "pool_frms_size": 1}, 200, 0),  # envpool pools 1 frame
])
def test_ale_backend_reproduces_envpool(overrides, steps, min_game_overs):
    """Same seeds, no sticky actions, one start no-op: the frames agree bit for bit.

    Only game-over frames may differ: envpool stops pooling at a game over and can
    return its previous frame, ale-py pools the frames it played.
    """
    fast = make_atari("SpaceInvaders", 2, 0, overrides=overrides)
    slow = make_atari("SpaceInvaders", 2, 0, backend="ale", overrides=overrides)
    np.testing.assert_array_equal(fast.reset(), slow.reset())
    game_overs = 0
    for actions in np.random.default_rng(3).integers(0, 6, (steps, 2)):
        a, b = fast.step(actions), slow.step(actions)
        for field in ("reward", "terminated", "truncated", "game_over"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(a.obs[~a.game_over], b.obs[~b.game_over])
        game_overs += a.game_over.sum()
    assert game_overs >= min_game_overs
    np.testing.assert_array_equal(fast.render(1), slow.render(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_render_is_the_colour_screen(backend):
    env = make_atari("Pong", 2, 0, backend=backend)
    env.reset()
    env.step(np.zeros(2, int))
    frame = env.render(1)
    assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8 and frame.any()


@needs_envpool
def test_atari_bad_inputs_are_one_line_errors():
    _one_line_error(lambda: make_atari("SpaceInvader", 1, 0), "SpaceInvaders", "list_games")
    _one_line_error(lambda: make_atari("Pong", 1, 0, protocol="nature"), "kaixhin", "machado")
    _one_line_error(lambda: make_atari("Pong", 1, 0, backend="gym"), "envpool", "ale")
    _one_line_error(lambda: make_atari("Pong", 1, 0, overrides={"frame_skip": 4}), "act_rep")
    _one_line_error(lambda: make_atari("Pong", 1, 0, overrides={"act_rep": 0}), "int >= 1")
    _one_line_error(lambda: make_atari("Pong", 1, 0, overrides={"sticky_prob": 2.0}))
    _one_line_error(lambda: make_atari("Pong", 1, 0, overrides={"pool_frms_type": "mean"}),
                    "backend='ale'")
    _one_line_error(lambda: make_atari("Pong", 1, 0, overrides={"random_starts": 0}),
                    "backend='ale'")
    _one_line_error(lambda: make_atari("Pong", 1, 0, overrides={"pool_frms_size": 3}),
                    "backend='ale'")
    _one_line_error(lambda: make_atari("Pong", 1, 0, overrides={"pool_frms_size": 5}),
                    "exceeds act_rep")


# -------------------------------------------------------------------------- gymnasium


class FakeEnv(gymnasium.Env):
    """Episodes of 3 steps; obs = [episode, step, last action]; reward = action + 1."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = spaces.Box(-1.0, np.inf, (3,), np.float64)
        self.action_space = spaces.Discrete(3)
        self.render_mode = render_mode
        self.mode = "train"
        self.episode = -1
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return np.array([self.episode, 0.0, -1.0]), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.episode, self.t, action], np.float64)
        return obs, float(action + 1), self.t == 3, False, {}

    def render(self):
        return np.zeros((6, 5, 3), np.uint8)

    def training(self):
        self.mode = "train"

    def evaluate(self):
        self.mode = "eval"


class FakeImageEnv(FakeEnv):
    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Box(0, 255, (6, 5), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full((6, 5), self.episode, np.uint8), {}

    def step(self, action):
        _, reward, term, trunc, info = super().step(action)
        return np.full((6, 5), self.t, np.uint8), reward, term, trunc, info


class DictObsEnv(FakeEnv):
    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Dict({"a": spaces.Box(0, 1, (2,))})


class ContinuousEnv(FakeEnv):
    def __init__(self):
        super().__init__()
        self.action_space = spaces.Box(-1, 1, (1,))


class NotAnEnv:
    pass


def test_gym_next_step_reset_by_import_path():
    env = make_gym("tests.test_envs_host:FakeEnv", 2, 0)
    assert (env.spec.obs_shape, env.spec.obs_dtype, env.spec.num_actions) == ((3,), "float32", 3)
    obs = env.reset()
    np.testing.assert_array_equal(obs, [[0, 0, -1], [0, 0, -1]])
    assert obs.dtype == np.float32
    for t in (1, 2, 3):
        step = env.step(np.array([2, 1]))
        np.testing.assert_array_equal(step.obs, [[0, t, 2], [0, t, 1]])
        np.testing.assert_array_equal(step.reward, [3, 2])
        assert step.terminated.all() == (t == 3) and step.game_over.all() == (t == 3)
        assert not step.truncated.any()
    step = env.step(np.array([2, 1]))      # the reset step: actions ignored, reward 0
    np.testing.assert_array_equal(step.obs, [[1, 0, -1], [1, 0, -1]])
    np.testing.assert_array_equal(step.reward, [0, 0])
    assert not (step.terminated | step.truncated | step.game_over).any()
    np.testing.assert_array_equal(env.step(np.array([0, 0])).obs, [[1, 1, 0], [1, 1, 0]])
    assert env.render(0) is None          # built with no arguments: no render mode

    env.set_mode("eval")
    assert [e.unwrapped.mode for e in env._envs] == ["eval", "eval"]
    env.set_mode("train")
    assert [e.unwrapped.mode for e in env._envs] == ["train", "train"]


@pytest.fixture
def registered_fake():
    env_id = "JaxatariTest/Fake-v0"
    gymnasium.register(env_id, entry_point="tests.test_envs_host:FakeEnv", max_episode_steps=2)
    yield env_id
    del gymnasium.registry[env_id]


def test_gym_by_registered_id_truncates_and_renders(registered_fake):
    for name in (registered_fake, "tests.test_envs_host:FakeEnv"):  # the path finds the id
        env = make_gym(name, 1, 0)
        env.reset()
        assert not env.step(np.array([0])).truncated.any()
        step = env.step(np.array([0]))
        assert step.truncated.all() and step.game_over.all() and not step.terminated.any()
        step = env.step(np.array([1]))
        np.testing.assert_array_equal(step.obs, [[1, 0, -1]])
        assert step.reward[0] == 0
        assert env.render(0).shape == (6, 5, 3)


def test_gym_image_observations_keep_uint8_and_gain_a_channel():
    env = make_gym("tests.test_envs_host:FakeImageEnv", 2, 0)
    assert (env.spec.obs_shape, env.spec.obs_dtype) == ((6, 5, 1), "uint8")
    obs = env.reset()
    assert obs.shape == (2, 6, 5, 1) and obs.dtype == np.uint8
    assert env.step(np.zeros(2, int)).obs.dtype == np.uint8


def test_gym_cartpole():
    env = make_gym("CartPole-v1", 3, 0)
    assert (env.spec.obs_shape, env.spec.num_actions) == ((4,), 2)
    env.reset()
    for _ in range(500):
        step = env.step(np.zeros(3, int))    # always pushing left ends an episode fast
        if step.terminated.any():
            break
    ended = step.terminated
    assert ended.any() and (step.reward[ended] == 1).all()
    step = env.step(np.zeros(3, int))
    assert (step.reward[ended] == 0).all() and not step.terminated[ended].any()
    assert (np.abs(step.obs[ended]) <= 0.05).all()   # CartPole starts within +-0.05


def test_gym_bad_inputs_are_one_line_errors():
    _one_line_error(lambda: make_gym("CartPol-v1", 1, 0), "CartPole-v1")
    _one_line_error(lambda: make_gym("tests.test_envs_host:DictObsEnv", 1, 0), "Dict", "Box")
    _one_line_error(lambda: make_gym("tests.test_envs_host:ContinuousEnv", 1, 0),
                    "Box", "Discrete")
    _one_line_error(lambda: make_gym("tests.no_such_module:FakeEnv", 1, 0), "cannot import")
    _one_line_error(lambda: make_gym("tests.test_envs_host:NoSuchEnv", 1, 0), "NoSuchEnv")
    _one_line_error(lambda: make_gym("tests.test_envs_host:NotAnEnv", 1, 0), "gymnasium.Env")
