"""The Atari knobs as options (--full-actions ... --sticky-prob) override the protocol on both
backends, are recorded in the env's protocol, and what a backend cannot do is refused."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from jaxatari import cli
from jaxatari.config import Config, ConfigError, atari_overrides, build_config
from jaxatari.envs import EnvError, make_env

HAS_ENVPOOL = importlib.util.find_spec("envpool") is not None
HAS_ALE = importlib.util.find_spec("ale_py") is not None
needs_envpool = pytest.mark.skipif(not HAS_ENVPOOL, reason="envpool is not installed")
needs_ale = pytest.mark.skipif(not HAS_ALE, reason="ale-py is not installed")

KNOBS = dict(full_actions="true", act_rep=3, random_starts=5, pool_frms_size=2,
             life_loss_terminal="false", sticky_prob=0.1)
EXPECTED = dict(full_actions=True, act_rep=3, random_starts=5, pool_frms_size=2,
                life_loss_terminal=False, sticky_prob=0.1)


def _atari(**options) -> Config:
    return build_config("nature", {"env": "atari", "game": "Pong", **options})


def test_unset_knobs_keep_the_protocol_and_set_ones_override_it():
    assert atari_overrides(_atari()) == {}
    assert atari_overrides(_atari(**KNOBS, pool_frms_type="mean")) == {
        **EXPECTED, "pool_frms_type": "mean"}
    assert atari_overrides(_atari(random_starts=0, sticky_prob=0.0)) == {
        "random_starts": 0, "sticky_prob": 0.0}


def test_knobs_are_refused_off_atari_and_out_of_range():
    with pytest.raises(ConfigError, match="--act-rep, --sticky-prob only apply to --env atari"):
        build_config("demo", {"act_rep": 2, "sticky_prob": 0.5})
    with pytest.raises(ConfigError, match="--sticky-prob must be -1"):
        _atari(sticky_prob=1.5)
    with pytest.raises(ConfigError, match="--random-starts must be -1"):
        _atari(random_starts=-2)
    with pytest.raises(ConfigError, match="--pool-frms-type must be one of auto, max, mean"):
        _atari(pool_frms_type="min")


@needs_envpool
def test_envpool_gets_every_knob():
    factory = make_env(_atari(**KNOBS))
    env = factory(1, 0)
    config = env._pool.config
    assert (config["frame_skip"], config["noop_max"]) == (3, 5)
    assert config["full_action_space"] and config["repeat_action_probability"] == pytest.approx(0.1)
    for key, value in EXPECTED.items():
        assert factory.spec.protocol[key] == value, key
    assert factory.spec.num_actions == 18
    assert env.reset().shape == (1, 84, 84, 1)
    env.close()


@needs_ale
def test_ale_gets_every_knob_with_mean_pooling():
    factory = make_env(_atari(backend="ale", **{**KNOBS, "pool_frms_size": 3},
                              pool_frms_type="mean"))
    env = factory(1, 0)
    game = env._games[0]
    assert game.ale.getFloat("repeat_action_probability") == pytest.approx(0.1)
    assert len(game.actions) == 18 == factory.spec.num_actions
    assert (game._s["act_rep"], game._s["random_starts"], game._s["pool_frms_size"],
            game._s["pool_frms_type"]) == (3, 5, 3, "mean")
    assert factory.spec.protocol["life_loss_terminal"] is False
    env.reset()
    assert env.step(np.zeros(1, int)).obs.shape == (1, 84, 84, 1)


@needs_envpool
def test_envpool_refuses_mean_pooling_in_one_line(capsys):
    with pytest.raises(EnvError, match="envpool pools frames by max only; use backend='ale'"):
        make_env(_atari(pool_frms_type="mean"))
    status = cli.main(["random", "nature", "Pong", "--pool-frms-type", "mean", "--episodes", "1"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and "max only" in err


@pytest.mark.parametrize("backend", [pytest.param("envpool", marks=needs_envpool),
                                     pytest.param("ale", marks=needs_ale)])
def test_atari_resize_and_colour_space(backend):
    factory = make_env(_atari(backend=backend, height=42, width=32, color_space="hsv"))
    assert factory.spec.obs_shape == (42, 32, 3)
    assert factory.spec.protocol["grayscale"] is False
    assert factory.spec.protocol["preprocessing"]["color_space"] == "hsv"
    env = factory(2, 0)
    obs = env.reset()
    assert obs.shape == (2, 42, 32, 3) and obs.dtype == np.uint8
    assert env.render(0).shape == (210, 160, 3)
    env.close()
