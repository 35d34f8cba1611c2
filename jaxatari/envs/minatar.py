"""MinAtar games through gymnax's pure-JAX ports (gymnax ``environments/minatar``, which
mirror kenjyoung/MinAtar ``minatar/environments/*.py``).

We call gymnax's ``reset_env`` / ``step_env``, the variants without its auto-reset,
because our training loop resets on the step after a done itself (see ``base.py``).
Observations are MinAtar's 10 x 10 x C boolean planes as uint8 {0, 255}, channels last.

Episode ends: gymnax's ``step_env`` done flag is the game's own terminal; its time limit
(``max_steps_in_episode``, 1000 steps by default) is applied separately, as
``state.time >= max_steps_in_episode``, and we report it as ``truncated``. MinAtar itself
has no time limit except in Freeway, whose game ends after 2500 steps by its own rules,
so there gymnax's limit (2500) is reported as ``terminated``.

Unlike MinAtar, gymnax has no sticky actions (MinAtar's default repeats the previous
action with probability 0.1), so neither do we.
"""
from __future__ import annotations

import importlib.metadata

import jax.numpy as jnp

from jaxatari.envs.base import EnvError, EnvSpec, JaxEnv

GAMES = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar",
         "SpaceInvaders-MinAtar")
# Games whose gymnax time limit is the game's own end in MinAtar rather than a cut.
TIME_LIMIT_ENDS_GAME = frozenset({"Freeway-MinAtar"})
# MinAtar's full action set; gymnax's ``action_set`` indexes into it.
FULL_ACTION_MEANINGS = ("NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE")
RENDER_SCALE = 8
# One colour per channel (at most 10, Seaquest's count); index 0 is the empty background.
PALETTE = ((0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
           (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
           (188, 189, 34), (23, 190, 207))


def minatar_game_name(name: str) -> str:
    """Canonical gymnax id for ``name``, given with or without "-MinAtar", any case."""
    key = name.lower().removesuffix("-minatar")
    for game in GAMES:
        if game.lower().removesuffix("-minatar") == key:
            return game
    raise EnvError(f"unknown MinAtar game {name!r}; valid names: {', '.join(GAMES)}")


def make_minatar(name: str) -> JaxEnv:
    """Builds the MinAtar game ``name`` (e.g. "SpaceInvaders-MinAtar" or "spaceinvaders")."""
    game = minatar_game_name(name)
    try:
        import gymnax
    except ImportError:
        raise EnvError(f"{game} needs gymnax: pip install 'jaxatari[minatar]' (gymnax 1.0.1 "
                       "supports JAX below 0.12)") from None
    env, params = gymnax.make(game)
    num_channels = env.obs_shape[-1]
    palette = jnp.array(PALETTE[:num_channels + 1], dtype=jnp.uint8)
    time_limit_ends_game = game in TIME_LIMIT_ENDS_GAME

    def to_uint8(obs):
        return (obs > 0).astype(jnp.uint8) * 255

    def reset(key):
        obs, state = env.reset_env(key, params)
        return state, to_uint8(obs)

    def step(key, state, action):
        obs, state, reward, done, _ = env.step_env(key, state, action, params)
        time_limit = env.is_truncated(state, params)
        if time_limit_ends_game:
            terminated, truncated = done | time_limit, jnp.bool_(False)
        else:
            terminated, truncated = jnp.asarray(done, jnp.bool_), time_limit & ~done
        return state, to_uint8(obs), reward.astype(jnp.float32), terminated, truncated

    def render(state):
        planes = env.get_obs(state, params=params) > 0  # [10, 10, C]
        # As MinAtar's own display, a cell takes the colour of its highest lit channel.
        channel = jnp.max(jnp.where(planes, jnp.arange(1, num_channels + 1), 0), axis=-1)
        image = palette[channel]  # [10, 10, 3]
        return jnp.repeat(jnp.repeat(image, RENDER_SCALE, axis=0), RENDER_SCALE, axis=1)

    spec = EnvSpec(name=game, obs_shape=tuple(env.obs_shape), obs_dtype="uint8",
                   num_actions=env.num_actions,
                   action_meanings=tuple(FULL_ACTION_MEANINGS[int(a)] for a in env.action_set),
                   protocol={"env": "minatar", "game": game,
                             "gymnax_version": importlib.metadata.version("gymnax"),
                             "max_steps_in_episode": params.max_steps_in_episode,
                             "time_limit": "terminated" if time_limit_ends_game
                             else "truncated"})
    return JaxEnv(spec=spec, reset=reset, step=step, render=render)
