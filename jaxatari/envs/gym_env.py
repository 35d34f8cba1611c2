"""Any gymnasium environment with one array observation and one discrete action, as a HostEnv.

This is the original's custom-environment API (an env with a tensor state and a discrete
action set, optional ``training()`` / ``evaluate()``) on gymnasium: an env is named by
its registered id ("CartPole-v1") or by an import path "package.module:ClassName".
``num_envs`` copies are stepped in lock-step with the conventions of ``base.py``: after
an env's episode ends, its next step resets it, ignores its action, returns reward 0
and the first observation of the new episode.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

import gymnasium
import numpy as np
from gymnasium import spaces

from jaxatari.envs.base import (EnvError, EnvSpec, HostEnv, StepResult, display_hook,
                                mode_hook)

_ACCEPTED = "a registered gymnasium id (e.g. 'CartPole-v1') or 'package.module:ClassName'"
_MODES = ("train", "eval")


def make_gym(env: str, num_envs: int, seed: int) -> HostEnv:
    """Builds ``num_envs`` copies of a gymnasium env as one ``HostEnv``; env i is seeded seed+i.

    Observations: a 3-D Box is taken as an image [H, W, C] as is, a 2-D Box gets a channel
    axis, a 1-D Box stays a vector [D]; uint8 observations stay uint8, others become
    float32. Every unusable input raises a one-line EnvError.
    """
    if num_envs < 1:
        raise EnvError(f"num_envs must be at least 1, got {num_envs}")
    factory = _factory(env)
    envs = [_build(factory, env) for _ in range(num_envs)]
    obs_space, action_space = _check_spaces(envs[0], env)
    return _GymBatch(env, envs, seed, obs_space, action_space)


def _factory(env: str) -> Callable[[], gymnasium.Env]:
    """A no-argument constructor of one env, from an id or an import path."""
    if ":" in env:
        return _factory_from_path(env)
    if env not in gymnasium.registry:
        close = difflib.get_close_matches(env, list(gymnasium.registry), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise EnvError(f"unknown gymnasium env {env!r}; {hint}give {_ACCEPTED}")
    return _registered_factory(env)


def _factory_from_path(path: str) -> Callable[[], gymnasium.Env]:
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is the user's path, reported on one line
        raise EnvError(f"cannot import module {module_name!r} of {path!r} "
                       f"({_one_line(error)}); give {_ACCEPTED}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise EnvError(f"module {module_name!r} has no {class_name!r}; give {_ACCEPTED}")
    if not (isinstance(cls, type) and issubclass(cls, gymnasium.Env)):
        raise EnvError(f"{path!r} is not a gymnasium.Env subclass; give a gymnasium.Env "
                       "class with one Box observation and one Discrete action")
    # A class registered with gymnasium is made through its id, so it gets its wrappers
    # (time limit, render mode); an unregistered one is instantiated with no arguments.
    for env_id, env_spec in gymnasium.registry.items():
        if env_spec.entry_point in (path, cls):
            return _registered_factory(env_id)
    return cls


def _registered_factory(env_id: str) -> Callable[[], gymnasium.Env]:
    """gymnasium.make, asking for rgb_array rendering where the env offers it."""
    entry_point = gymnasium.registry[env_id].entry_point
    try:
        creator = (entry_point if callable(entry_point)
                   else gymnasium.envs.registration.load_env_creator(entry_point))
    except Exception as error:
        raise EnvError(f"cannot load gymnasium env {env_id!r} ({_one_line(error)})") from None
    render_modes = getattr(creator, "metadata", {}).get("render_modes", ())
    kwargs = {"render_mode": "rgb_array"} if "rgb_array" in render_modes else {}
    return lambda: gymnasium.make(env_id, **kwargs)


def _build(factory: Callable[[], gymnasium.Env], name: str) -> gymnasium.Env:
    try:
        return factory()
    except Exception as error:  # a constructor failing is reported, not a traceback
        raise EnvError(f"cannot build env {name!r} with no arguments "
                       f"({_one_line(error)})") from None


def _check_spaces(env: gymnasium.Env, name: str) -> tuple[spaces.Box, spaces.Discrete]:
    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(obs_space, spaces.Box):
        raise EnvError(f"env {name!r} has a {type(obs_space).__name__} observation space; "
                       "only a single Box observation (one array) is accepted")
    if obs_space.shape is None or len(obs_space.shape) not in (1, 2, 3):
        raise EnvError(f"env {name!r} has observations of shape {obs_space.shape}; accepted "
                       "are a vector (D,), a grey image (H, W) or an image (H, W, C)")
    if not isinstance(action_space, spaces.Discrete):
        raise EnvError(f"env {name!r} has a {type(action_space).__name__} action space "
                       f"{action_space}; only a single Discrete action is accepted")
    return obs_space, action_space


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class _GymBatch:
    """``num_envs`` gymnasium envs stepped one after another, with the next-step reset."""

    def __init__(self, name: str, envs: list[gymnasium.Env], seed: int,
                 obs_space: spaces.Box, action_space: spaces.Discrete):
        self._envs = envs
        self._seed = seed
        self._seeded = False
        self._action_start = int(action_space.start)
        self._dtype = np.uint8 if obs_space.dtype == np.uint8 else np.float32
        shape = tuple(obs_space.shape)
        self._obs_shape = shape + (1,) if len(shape) == 2 else shape
        meanings = getattr(envs[0].unwrapped, "get_action_meanings", None)
        self.spec = EnvSpec(
            name=name,
            obs_shape=self._obs_shape,
            obs_dtype=np.dtype(self._dtype).name,
            num_actions=int(action_space.n),
            action_meanings=tuple(meanings()) if callable(meanings) else (),
            protocol={"backend": "gymnasium", "env": name},
        )
        self.num_envs = len(envs)
        self._needs_reset = np.zeros(self.num_envs, bool)

    def _obs(self, obs: Any) -> np.ndarray:
        return np.asarray(obs, self._dtype).reshape(self._obs_shape)

    def _reset_one(self, i: int) -> np.ndarray:
        # Seed each env once, at its first reset; later resets continue its RNG.
        obs, _ = self._envs[i].reset(seed=None if self._seeded else self._seed + i)
        return self._obs(obs)

    def reset(self) -> np.ndarray:
        obs = np.stack([self._reset_one(i) for i in range(self.num_envs)])
        self._seeded = True
        self._needs_reset[:] = False
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        obs = np.empty((self.num_envs, *self._obs_shape), self._dtype)
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for i, (env, action) in enumerate(zip(self._envs, np.asarray(actions))):
            if self._needs_reset[i]:
                obs[i] = self._reset_one(i)
                continue
            o, r, term, trunc, _ = env.step(self._action_start + int(action))
            obs[i], reward[i], terminated[i], truncated[i] = self._obs(o), r, term, trunc
        self._needs_reset = terminated | truncated
        return StepResult(obs=obs, reward=reward, terminated=terminated,
                          truncated=truncated, game_over=terminated | truncated)

    def set_mode(self, mode: str) -> None:
        """Calls the env's own training() / evaluate() where it has them (the original's API)."""
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        for env in self._envs:
            mode_hook(env.unwrapped, mode)()

    def render(self, index: int = 0) -> np.ndarray | None:
        """The env's ``get_display()`` where it has one (the original's getDisplay), else
        gymnasium's rgb_array render, else None."""
        env = self._envs[index]
        display = display_hook(env.unwrapped)
        if display is not None:
            frame = display()
        elif env.render_mode == "rgb_array":
            frame = env.render()
        else:
            return None
        if isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[-1] == 3:
            return frame.astype(np.uint8, copy=False)
        return None

    def close(self) -> None:
        for env in self._envs:
            env.close()
