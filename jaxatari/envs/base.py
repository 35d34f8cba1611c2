"""The two environment interfaces every backend is adapted to.

JAX-native environments (Catch, GridWorld, MinAtar through gymnax) are records of pure
functions, so the whole training chunk can run inside one jitted ``lax.scan`` vmapped
over seeds. Host environments (envpool, ale-py, any gymnasium env) are stateful Python
objects stepped in lock-step for all ``S * E`` environments of a run.

Both speak the same conventions:

* observations are channels-last ``[H, W, C]`` (one frame; stacking is the agent's job),
  either uint8 in [0, 255] or float32 in [0, 1] (``obs_dtype``);
* ``reward`` is the raw game reward; clipping is the agent's business, so scores stay raw;
* ``terminated`` means the bootstrap is cut (a life loss counts in training mode when the
  protocol says so); ``truncated`` means the episode was cut by a time limit; ``game_over``
  means the real end of a game, used to count game scores;
* after any step with ``terminated or truncated`` the next step is a reset step: its
  action is ignored, its reward is 0 and it returns the first observation of the next
  episode (envpool's "next-step" auto-reset, which the JAX-native loop follows too so
  both paths share one replay layout).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static facts about an environment, read once before anything is built."""

    name: str                       # what the user asked for, e.g. "catch", "SpaceInvaders"
    obs_shape: tuple[int, ...]      # (H, W, C) of one frame, channels last
    obs_dtype: str                  # "uint8" or "float32"
    num_actions: int
    action_meanings: tuple[str, ...] = ()
    protocol: dict[str, Any] = dataclasses.field(default_factory=dict)  # recorded in config.json
    human_name: str = ""            # game key for the human-normalised score table ("" = none)


@dataclasses.dataclass(frozen=True)
class JaxEnv:
    """A pure functional environment.

    reset(key) -> (env_state, obs)
    step(key, env_state, action) -> (env_state, obs, reward, terminated, truncated)
    render(env_state) -> [H', W', 3] uint8 RGB screen (for video, saliency overlays and the
        live display: the original's getDisplay)
    evaluation: optionally another JaxEnv with the same spec, played in evaluation mode
        (the original's training() / evaluate() switch, as pure functions); by default the
        same env plays both modes. A custom one is loaded with ``--env package.module:name``
        where ``name`` is a JaxEnv or a function of no arguments returning one.

    ``step`` never resets by itself: the training loop calls ``reset`` on the step after
    a done (see the module docstring). All outputs are JAX arrays; ``reward`` float32,
    ``terminated`` and ``truncated`` bool.
    """

    spec: EnvSpec
    reset: Callable
    step: Callable
    render: Callable
    # Optional evaluation behaviour (the original's env:evaluate()): the env played by
    # validation and the eval / random commands; None plays this one in both modes.
    evaluation: "JaxEnv | None" = None

    def __post_init__(self):
        if self.evaluation is not None:
            for name in ("obs_shape", "obs_dtype", "num_actions"):
                ours, theirs = getattr(self.spec, name), getattr(self.evaluation.spec, name)
                if tuple(np.atleast_1d(ours)) != tuple(np.atleast_1d(theirs)):
                    raise EnvError(f"the evaluation env of {self.spec.name!r} has {name} "
                                   f"{theirs!r}, the training env {ours!r}: they must agree")

    def for_mode(self, mode: str) -> "JaxEnv":
        """The env to play in ``mode`` ("train" | "eval")."""
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be train or eval, got {mode!r}")
        return self.evaluation if mode == "eval" and self.evaluation is not None else self


class HostEnv(Protocol):
    """A batch of ``num_envs`` stateful environments stepped together on the host.

    reset() -> obs [N, H, W, C]
    step(actions [N] int) -> StepResult
    step_async(actions) then step_wait() -> StepResult: the same step in two halves, for
        envs that run on their own threads (optional: see ``SplitStep``)
    set_mode("train" | "eval"): evaluation mode turns off training-only signals such as
        life-loss terminals (the original's env:training() / env:evaluate()).
    render(index) -> [H', W', 3] uint8 full-colour screen of env ``index`` (may be None)
    close()
    """

    spec: EnvSpec
    num_envs: int

    def reset(self) -> np.ndarray: ...
    def step(self, actions: np.ndarray) -> "StepResult": ...
    def set_mode(self, mode: str) -> None: ...
    def render(self, index: int = 0) -> np.ndarray | None: ...
    def close(self) -> None: ...


class SplitStep:
    """``send(actions)`` then ``wait() -> StepResult``: the env's own ``step_async`` /
    ``step_wait`` where it has them, else the whole step inside ``wait``."""

    def __init__(self, env: HostEnv):
        self._env = env
        self._native = hasattr(env, "step_async") and hasattr(env, "step_wait")
        self._actions = None

    def send(self, actions: np.ndarray) -> None:
        if self._native:
            self._env.step_async(actions)
        else:
            self._actions = actions

    def wait(self) -> "StepResult":
        if self._native:
            return self._env.step_wait()
        actions, self._actions = self._actions, None
        return self._env.step(actions)


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What a host env returns for one lock-step of all N envs. Every field is [N]."""

    obs: np.ndarray         # [N, H, W, C]
    reward: np.ndarray      # float32, raw (unclipped) game reward
    terminated: np.ndarray  # bool, cut the bootstrap (life loss in train mode if the protocol says so)
    truncated: np.ndarray   # bool, time limit
    game_over: np.ndarray   # bool, the real end of a game: close the game-score tally here


class CustomEnvHooks(Protocol):
    """Optional methods a custom environment (``--env package.module:Class``) may define,
    the original's custom-env API (Kaixhin/Atari ``Setup.lua`` ``augmentEnv``):

    training(): switch to training behaviour; called on the training envs when they are
        built. Default: nothing.
    evaluate(): switch to evaluation behaviour; called on the envs built for validation and
        for the ``eval`` and ``random`` commands (their videos, saliency maps and live
        display). Default: nothing.
    get_display() -> [H, W, 3] uint8 RGB screen shown in videos, saliency overlays and the
        live display (the original's getDisplay; ``getDisplay`` is accepted too). Default:
        gymnasium's ``render()`` when the env renders ``rgb_array``, else no screen.
    """

    def training(self) -> None: ...
    def evaluate(self) -> None: ...
    def get_display(self) -> np.ndarray: ...


def _nothing() -> None:
    return None


def mode_hook(env: Any, mode: str) -> Callable[[], None]:
    """The env's ``training`` or ``evaluate`` method for ``mode`` ("train" | "eval"), or a
    no-op where it has none (the default the original's augmentEnv supplied)."""
    hook = getattr(env, "training" if mode == "train" else "evaluate", None)
    return hook if callable(hook) else _nothing


def display_hook(env: Any) -> Callable[[], np.ndarray] | None:
    """The env's ``get_display`` (or ``getDisplay``) method, or None."""
    for name in ("get_display", "getDisplay"):
        hook = getattr(env, name, None)
        if callable(hook):
            return hook
    return None


class EnvError(ValueError):
    """A user asked for an environment that cannot be built; the message is one line."""
