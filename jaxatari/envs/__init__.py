"""Environment construction from a run configuration: the only door to envpool, ale-py and gymnasium.

``make_env(config)`` returns a ``JaxEnv`` (Catch, GridWorld, MinAtar: the whole loop runs
in XLA) or a callable building a ``HostEnv`` for N envs (Atari, any gymnasium env).
Heavy backends are imported lazily so the package imports fast.
"""
from __future__ import annotations

from typing import Callable, Union

from jaxatari.envs.base import EnvError, EnvSpec, HostEnv, JaxEnv

__all__ = ["EnvError", "EnvSpec", "HostEnv", "JaxEnv", "make_env", "HostEnvFactory"]

HostEnvFactory = Callable[..., HostEnv]   # (num_envs, seed, mode) -> HostEnv


def _is_minatar(name: str) -> bool:
    return name.lower().endswith("-minatar") or name.lower().endswith("minatar")


def make_env(config) -> Union[JaxEnv, "HostEnvFactoryWithSpec"]:
    """Builds the environment the config names, or raises EnvError with a one-line message."""
    name = config.env
    if name == "catch":
        from jaxatari.envs.catch import make_catch
        try:
            return make_catch(size=config.size, flickering=config.flickering,
                              obscured=config.obscured)
        except ValueError as error:
            raise EnvError(str(error)) from None
    if name == "gridworld":
        from jaxatari.envs.gridworld import make_gridworld
        return make_gridworld()
    if _is_minatar(name):
        from jaxatari.envs.minatar import make_minatar
        return make_minatar(name)
    if name == "atari":
        from jaxatari.envs.atari import make_atari

        def build_atari(num_envs: int, seed: int, mode: str = "train", render: bool = False):
            del render   # envpool is always built able to render (helper measured no slowdown)
            env = make_atari(config.game, num_envs=num_envs, seed=seed, protocol=config.protocol,
                             backend=config.backend)
            env.set_mode(mode)
            return env
        return HostEnvFactoryWithSpec(build_atari, build_atari(1, config.seed).spec)
    if ":" in name or "-v" in name or "/" in name:
        from jaxatari.envs.gym_env import make_gym

        def build_gym(num_envs: int, seed: int, mode: str = "train", render: bool = False):
            env = make_gym(name, num_envs=num_envs, seed=seed)
            env.set_mode(mode)
            return env
        return HostEnvFactoryWithSpec(build_gym, build_gym(1, config.seed).spec)
    raise EnvError(f"unknown environment {name!r}: use catch, gridworld, <Game>-MinAtar "
                   "(e.g. SpaceInvaders-MinAtar), atari with --game, a gymnasium id such as "
                   "CartPole-v1, or an import path package.module:Class")


class HostEnvFactoryWithSpec:
    """A host-env builder plus the spec read from one throwaway env (as the original did)."""

    def __init__(self, build: Callable[..., HostEnv], spec: EnvSpec):
        self.build = build
        self.spec = spec

    def __call__(self, num_envs: int, seed: int, mode: str = "train", render: bool = False
                 ) -> HostEnv:
        return self.build(num_envs, seed, mode, render)
