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
    """Builds the environment the config names with its visual preprocessing (--height,
    --width, --color-space), or raises EnvError / ConfigError with a one-line message."""
    from jaxatari.envs.preprocess import (PreprocessedHostEnv, Preprocessing,
                                          preprocess_jax_env)
    pre = Preprocessing(getattr(config, "height", 0), getattr(config, "width", 0),
                        getattr(config, "color_space", "none"))
    if config.env == "atari":
        return _make_atari(config, pre)
    env = _make_raw_env(config)
    if not pre.active:
        return env
    if isinstance(env, JaxEnv):
        return preprocess_jax_env(env, pre)
    raw = env

    def build_preprocessed(num_envs: int, seed: int, mode: str = "train", render: bool = False):
        return PreprocessedHostEnv(raw(num_envs, seed, mode, render), pre, raw.spec)
    # the throwaway env's spec, preprocessed: checks the source before anything is built
    return HostEnvFactoryWithSpec(build_preprocessed,
                                  PreprocessedHostEnv(_SpecOnly(raw.spec), pre).spec)


class _SpecOnly:
    """Just enough of a HostEnv to derive a preprocessed spec without building envs."""

    def __init__(self, spec: EnvSpec):
        self.spec = spec
        self.num_envs = 0


def _make_atari(config, pre) -> "HostEnvFactoryWithSpec":
    """Atari with the protocol's knobs overridden by --full-actions ... --sticky-prob; the
    resize is the backend's own (area, as the protocols'), a colour space asks it for RGB."""
    from jaxatari.config import atari_overrides
    from jaxatari.envs.atari import make_atari
    from jaxatari.envs.preprocess import PreprocessedHostEnv, Preprocessing
    overrides = atari_overrides(config)
    overrides.update({name: getattr(pre, name) for name in ("height", "width")
                      if getattr(pre, name)})
    colour = Preprocessing(color_space=pre.color_space)
    if colour.active:
        overrides["grayscale"] = False

    def build_atari(num_envs: int, seed: int, mode: str = "train", render: bool = False):
        del render   # envpool is always built able to render (helper measured no slowdown)
        env = make_atari(config.game, num_envs=num_envs, seed=seed, protocol=config.protocol,
                         backend=config.backend, overrides=overrides)
        env.set_mode(mode)
        return PreprocessedHostEnv(env, colour) if colour.active else env
    return HostEnvFactoryWithSpec(build_atari, build_atari(1, config.seed).spec)


def _make_raw_env(config) -> Union[JaxEnv, "HostEnvFactoryWithSpec"]:
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
    if ":" in name:
        custom = _custom_jax_env(name)
        if custom is not None:
            return custom
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


def _custom_jax_env(path: str) -> JaxEnv | None:
    """``package.module:name`` naming a JaxEnv, or a Python function of no arguments
    returning one; None for anything else (the gymnasium loader then takes the path and
    reports problems). Only a Python function taking no arguments is called: a builtin or
    any other callable (``faulthandler:dump_traceback``) is never run as a factory."""
    import importlib
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception:   # reported in one line by the gymnasium loader
        return None
    found = getattr(module, attribute, None)
    if isinstance(found, JaxEnv):
        return found
    if _is_env_factory(found):
        try:
            built = found()
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0]
            raise EnvError(f"env factory {path!r} failed ({type(error).__name__}: "
                           f"{first})") from None
        if isinstance(built, JaxEnv):
            return built
        raise EnvError(f"env factory {path!r} returned a {type(built).__name__}, not a "
                       "JaxEnv")
    return None


def _is_env_factory(found) -> bool:
    """A Python function (not a class, builtin or other callable) callable with no arguments."""
    import inspect
    if not inspect.isfunction(found):
        return False
    try:
        inspect.signature(found).bind()
    except TypeError:
        return False
    return True


class HostEnvFactoryWithSpec:
    """A host-env builder plus the spec read from one throwaway env (as the original did)."""

    def __init__(self, build: Callable[..., HostEnv], spec: EnvSpec):
        self.build = build
        self.spec = spec

    def __call__(self, num_envs: int, seed: int, mode: str = "train", render: bool = False
                 ) -> HostEnv:
        return self.build(num_envs, seed, mode, render)
