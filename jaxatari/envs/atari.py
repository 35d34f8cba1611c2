"""Atari games on the host: envpool (fast, C++ threads) or ale-py (pure PyPI), one protocol.

Library defaults disagree on every setting that changes scores (sticky actions, action
set, no-op starts, FIRE reset, frame pooling, life loss, reward clipping), so nothing
here is left to a default: a game is built from a named protocol, a dict of explicit
settings, optionally overridden knob by knob, and the resolved dict is recorded in
``EnvSpec.protocol``.

Both backends follow the conventions of ``base.py``. Life loss is detected here from
the lives counter (never with envpool's ``episodic_life``, which is fixed at
construction) so that ``set_mode("eval")`` can switch it off. A life-loss terminal,
like the original's, does not reset the game; to keep the one "reset step after every
done" convention, the step after it does not advance that env: it returns the same
observation again with reward 0. The original instead played 1..``random_starts``
no-ops before continuing after a lost life (Kaixhin/rlenvs ``Atari.lua``); envpool has no
way to do that without resetting the game, so neither backend does.
"""
from __future__ import annotations

import collections
import difflib
import os
import re
from typing import Any

import numpy as np

from jaxatari.envs.base import EnvError, EnvSpec, HostEnv, StepResult

# Episodes end after 108k frames = 27000 agent steps at action repeat 4 (the ALE v5 and
# envpool cap; Hessel et al. 2018, Table 3). The original had no cap.
MAX_EPISODE_STEPS = 27000

PROTOCOLS: dict[str, dict[str, Any]] = {
    # Kaixhin/Atari's defaults (its README and Setup.lua options), which follow
    # Mnih et al. 2015: up to 30 no-op starts, action repeat 4 with a max over the last
    # 2 frames, grey 84x84, life loss terminal in training only, minimal action set.
    "kaixhin": {
        "full_actions": False,
        "act_rep": 4,
        "random_starts": 30,
        "pool_frms_type": "max",
        "pool_frms_size": 2,
        "life_loss_terminal": True,
        "sticky_prob": 0.0,
        "height": 84,
        "width": 84,
        "grayscale": True,
        "fire_reset": False,       # the original never pressed FIRE to start a game
        "reward_clip": False,      # the agent clips; scores stay raw
        "max_episode_steps": MAX_EPISODE_STEPS,
    },
    # Machado et al. 2018 (JAIR, arXiv:1709.06009), section 7 recommendations: sticky
    # actions with probability 0.25 as the only source of stochasticity, the full
    # 18-action set, no life-loss signal. No no-op starts: envpool's minimum is one
    # no-op frame (random_starts=1), used by both backends so they agree.
    "machado": {
        "full_actions": True,
        "act_rep": 4,
        "random_starts": 1,
        "pool_frms_type": "max",
        "pool_frms_size": 2,
        "life_loss_terminal": False,
        "sticky_prob": 0.25,
        "height": 84,
        "width": 84,
        "grayscale": True,
        "fire_reset": False,
        "reward_clip": False,
        "max_episode_steps": MAX_EPISODE_STEPS,
    },
}

# The knobs a user may override (the original's command-line options, plus the cap),
# each with a check and what it accepts.
_INT = (int, np.integer)
OVERRIDES: dict[str, tuple[Any, str]] = {
    "full_actions": (lambda v: isinstance(v, bool), "a bool"),
    "act_rep": (lambda v: isinstance(v, _INT) and not isinstance(v, bool) and v >= 1,
                "an int >= 1"),
    "random_starts": (lambda v: isinstance(v, _INT) and not isinstance(v, bool) and v >= 0,
                      "an int >= 0"),
    "pool_frms_type": (lambda v: v in ("max", "mean"), "'max' or 'mean'"),
    "pool_frms_size": (lambda v: isinstance(v, _INT) and not isinstance(v, bool) and v >= 1,
                       "an int >= 1"),
    "life_loss_terminal": (lambda v: isinstance(v, bool), "a bool"),
    "sticky_prob": (lambda v: isinstance(v, (float, int)) and not isinstance(v, bool)
                    and 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    "height": (lambda v: isinstance(v, _INT) and not isinstance(v, bool) and v >= 1,
               "an int >= 1"),
    "width": (lambda v: isinstance(v, _INT) and not isinstance(v, bool) and v >= 1,
              "an int >= 1"),
    "max_episode_steps": (lambda v: isinstance(v, _INT) and not isinstance(v, bool)
                          and v >= 1, "an int >= 1"),
    # RGB frames [H, W, 3] instead of ALE's grey palette, for a --color-space conversion
    "grayscale": (lambda v: isinstance(v, bool), "a bool"),
}

BACKENDS = ("envpool", "ale")
_MODES = ("train", "eval")


def list_games() -> list[str]:
    """All Atari game names (CamelCase) of envpool, or of ale-py where envpool is missing."""
    try:
        roms = _rom_ids("envpool")
    except EnvError:
        roms = _rom_ids("ale")
    return sorted(_camel(rom) for rom in roms)


def make_atari(game: str, num_envs: int, seed: int, protocol: str = "kaixhin",
               backend: str = "envpool", overrides: dict | None = None) -> HostEnv:
    """Builds ``num_envs`` copies of an Atari game as one ``HostEnv``; env i is seeded seed+i.

    ``game`` is any spelling of an ALE game ("SpaceInvaders", "space_invaders",
    "ALE/SpaceInvaders-v5"); ``protocol`` names a dict of ``PROTOCOLS``; ``overrides``
    replaces individual knobs of it (keys of ``OVERRIDES``). Observations are single
    frames, channels last, uint8 ``[N, height, width, 1]`` (grey) or ``[N, height, width, 3]``
    with ``grayscale=False``: the agent stacks them.
    """
    if backend not in BACKENDS:
        raise EnvError(f"unknown Atari backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if protocol not in PROTOCOLS:
        raise EnvError(f"unknown Atari protocol {protocol!r}; choose one of "
                       f"{', '.join(PROTOCOLS)}")
    if num_envs < 1:
        raise EnvError(f"num_envs must be at least 1, got {num_envs}")
    settings = _resolve_settings(protocol, overrides or {})
    rom = _resolve_game(game, backend)
    recorded = {"protocol": protocol, "backend": backend, "game": _camel(rom), **settings}
    if backend == "envpool":
        _check_envpool_can_express(settings)
        return _EnvpoolAtari(rom, num_envs, seed, settings, recorded)
    return _AleAtari(rom, num_envs, seed, settings, recorded)


def envpool_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """Every envpool Atari option a protocol fixes, spelled out (none left to defaults)."""
    return {
        "stack_num": 1,
        "frame_skip": settings["act_rep"],
        "noop_max": settings["random_starts"],
        "episodic_life": False,            # life loss is detected here, see the module doc
        "zero_discount_on_life_loss": False,
        "reward_clip": settings["reward_clip"],
        "use_fire_reset": settings["fire_reset"],
        "img_height": settings["height"],
        "img_width": settings["width"],
        "gray_scale": settings["grayscale"],
        "use_inter_area_resize": True,
        "full_action_space": settings["full_actions"],
        "repeat_action_probability": float(settings["sticky_prob"]),
        "max_episode_steps": settings["max_episode_steps"],
    }


def _resolve_settings(protocol: str, overrides: dict) -> dict[str, Any]:
    settings = dict(PROTOCOLS[protocol])
    for key, value in overrides.items():
        if key not in OVERRIDES:
            raise EnvError(f"unknown Atari override {key!r}; accepted: {', '.join(OVERRIDES)}")
        check, accepted = OVERRIDES[key]
        if not check(value):
            raise EnvError(f"Atari override {key}={value!r} is invalid; it must be {accepted}")
        settings[key] = value
    if settings["pool_frms_size"] > settings["act_rep"]:
        raise EnvError(f"pool_frms_size={settings['pool_frms_size']} exceeds "
                       f"act_rep={settings['act_rep']}: only the frames of one step can be "
                       "pooled")
    return settings


def _check_envpool_can_express(settings: dict[str, Any]) -> None:
    """envpool hard-codes a max over the last min(2, act_rep) frames and at least 1 no-op."""
    if settings["pool_frms_type"] != "max":
        raise EnvError("envpool pools frames by max only; use backend='ale' for "
                       "pool_frms_type='mean'")
    if settings["pool_frms_size"] != min(2, settings["act_rep"]):
        raise EnvError("envpool pools the last min(2, act_rep) frames; use backend='ale' for "
                       f"pool_frms_size={settings['pool_frms_size']} with "
                       f"act_rep={settings['act_rep']}")
    if settings["random_starts"] < 1:
        raise EnvError("envpool always plays at least 1 no-op at a reset; use backend='ale' "
                       "for random_starts=0")


# ------------------------------------------------------------------------------ names


def _camel(rom: str) -> str:
    """envpool's and ALE v5's id spelling of a ROM: space_invaders -> SpaceInvaders."""
    return "".join(part.capitalize() for part in rom.split("_"))


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _rom_ids(backend: str) -> list[str]:
    """The snake_case ROM names a backend ships."""
    try:
        if backend == "envpool":
            from envpool.atari.registration import atari_game_list
            return list(atari_game_list)
        from ale_py import roms
        return roms.get_all_rom_ids()
    except ImportError:
        package = "envpool" if backend == "envpool" else "ale-py"
        other = "ale" if backend == "envpool" else "envpool"
        raise EnvError(f"the {backend!r} Atari backend needs the {package} package "
                       f"(pip install {package}); or use backend={other!r}") from None


def _resolve_game(game: str, backend: str) -> str:
    """Any spelling of a game -> its ROM id, or a one-line EnvError with close matches."""
    roms = {_key(rom): rom for rom in _rom_ids(backend)}
    bare = re.sub(r"^ALE/|-v\d+$", "", game.strip(), flags=re.IGNORECASE)
    if _key(bare) in roms:
        return roms[_key(bare)]
    close = difflib.get_close_matches(_key(bare), list(roms), n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(_camel(roms[k]) for k in close)}? " if close else ""
    raise EnvError(f"unknown Atari game {game!r} for backend {backend!r}; {hint}"
                   "list all with jaxatari.envs.atari.list_games()")


def _action_meanings(rom_path: str, full_actions: bool) -> tuple[str, ...]:
    """ALE's action names for a ROM (envpool does not expose them); () without ale-py."""
    try:
        ale = _new_ale()
    except ImportError:
        return ()
    ale.loadROM(rom_path)
    actions = ale.getLegalActionSet() if full_actions else ale.getMinimalActionSet()
    return tuple(action.name for action in actions)


def _new_ale():
    import ale_py
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner per env
    return ale_py.ALEInterface()


# --------------------------------------------------------------------------- stepping


class _AtariBatch:
    """The bookkeeping both backends share: life-loss terminals and their reset step.

    A backend implements ``_reset_all() -> (obs, lives)``, ``_send(ids, actions)`` and
    ``_receive() -> (obs, reward, game_over, truncated, lives)`` for the envs ``ids`` last
    sent, each doing its own next-step reset after a game over or a time limit.
    ``step_async`` / ``step_wait`` split a step in two so that a caller can work while the
    envs run (envpool steps them on its own threads; ALE steps them in ``step_wait``).
    """

    def __init__(self, spec: EnvSpec, num_envs: int, life_loss_terminal: bool):
        self.spec = spec
        self.num_envs = num_envs
        self._life_loss_terminal = life_loss_terminal
        self._train = True
        self._obs = np.zeros((num_envs, *spec.obs_shape), np.uint8)
        self._lives = np.zeros(num_envs, np.int64)
        # Envs whose last step was a life-loss terminal: their next step is a reset step,
        # whatever the mode is by then (the agent has already seen the terminal).
        self._held = np.zeros(num_envs, bool)

    def reset(self) -> np.ndarray:
        self._obs, lives = self._reset_all()
        self._lives = np.asarray(lives, np.int64)
        self._held[:] = False
        return self._obs

    def step(self, actions: np.ndarray) -> StepResult:
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray) -> None:
        self._sent = np.flatnonzero(~self._held)
        if self._sent.size:
            self._send(self._sent, np.asarray(actions)[self._sent])

    def step_wait(self) -> StepResult:
        ids = self._sent
        if ids.size == self.num_envs:
            # Every env stepped: the received arrays are fresh and complete. This is the
            # host loop's critical path (result to next action), so no copies or scatters.
            obs, reward, game_over, truncated, lives = self._receive()
            lost_life = lives < self._lives
            self._lives = np.asarray(lives, np.int64)
            reward = np.asarray(reward, np.float32)
            game_over, truncated = np.asarray(game_over, bool), np.asarray(truncated, bool)
            return self._finish(obs, reward, game_over, truncated, lost_life)
        obs = self._obs.copy()      # held envs show their last observation again
        reward = np.zeros(self.num_envs, np.float32)
        game_over = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        lost_life = np.zeros(self.num_envs, bool)
        if ids.size:
            o, r, g, t, lives = self._receive()
            obs[ids], reward[ids], game_over[ids], truncated[ids] = o, r, g, t
            lost_life[ids] = lives < self._lives[ids]
            self._lives[ids] = lives
        return self._finish(obs, reward, game_over, truncated, lost_life)

    def _finish(self, obs, reward, game_over, truncated, lost_life) -> StepResult:
        ended = game_over | truncated
        life_cut = lost_life & ~ended & (self._train and self._life_loss_terminal)
        self._held = life_cut
        self._obs = obs
        return StepResult(obs=obs, reward=reward, terminated=game_over | life_cut,
                          truncated=truncated, game_over=ended)

    def set_mode(self, mode: str) -> None:
        """"eval" stops reporting life losses as terminals (the original's env:evaluate())."""
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self._train = mode == "train"


class _EnvpoolAtari(_AtariBatch):
    """All envs in one envpool; envpool does the next-step reset after a game over.

    envpool steps every env it is given an action for, so a held env is skipped by
    stepping only the others through ``env_id`` (supported in sync mode).
    """

    def __init__(self, rom: str, num_envs: int, seed: int, settings: dict, recorded: dict):
        import envpool
        from envpool.atari.registration import atari_rom_path

        # render_mode="rgb_array" renders only when asked: stepping speed was unchanged
        # within noise (a few percent) on this machine, so rendering is always available.
        self._pool = envpool.make_gymnasium(
            f"{_camel(rom)}-v5", num_envs=num_envs, seed=seed, render_mode="rgb_array",
            **envpool_kwargs(settings))
        spec = EnvSpec(
            name=_camel(rom),
            obs_shape=(settings["height"], settings["width"], 1 if settings["grayscale"] else 3),
            obs_dtype="uint8",
            num_actions=int(self._pool.action_space.n),
            action_meanings=_action_meanings(
                os.path.join(atari_rom_path, f"{rom}.bin"), settings["full_actions"]),
            protocol=recorded,
            human_name=rom,
        )
        super().__init__(spec, num_envs, settings["life_loss_terminal"])

    def _reset_all(self):
        obs, info = self._pool.reset()
        return np.ascontiguousarray(obs.transpose(0, 2, 3, 1)), info["lives"]

    def _send(self, ids, actions):
        env_id = None if ids.size == self.num_envs else ids.astype(np.int32)
        self._pool.send(actions.astype(np.int32), env_id)

    def _receive(self):
        obs, _, _, truncated, info = self._pool.recv()
        order = np.argsort(info["env_id"])  # results need not come back in id order
        return (np.ascontiguousarray(obs[order].transpose(0, 2, 3, 1)), info["reward"][order],
                info["terminated"][order].astype(bool), truncated[order],
                info["lives"][order])

    def render(self, index: int = 0) -> np.ndarray:
        return self._pool.render(env_ids=index)[0]

    def close(self) -> None:
        self._pool.close()


class _AleGame:
    """One ALE emulator with the original's frame processing (Kaixhin/rlenvs ``Atari.lua``).

    Mirrors envpool's Atari env (atari_env.h) where envpool can express the knob:
    1..random_starts no-op frames at a reset (a game over during them resets again),
    the first observation unpooled, the action repeated with the reward summed and an
    early stop at a game over, then a max or mean over the last pooled frames, grey and
    area-resized. ALE's grey palette is the one envpool uses, so with the same seed and no
    sticky actions the frames equal envpool's bit for bit, except on a game-over step
    where envpool may repeat its previous frame and this pools the frames played.
    """

    def __init__(self, rom_path: str, seed: int, settings: dict):
        self.ale = _new_ale()
        self.ale.setInt("random_seed", seed)
        self.ale.setFloat("repeat_action_probability", float(settings["sticky_prob"]))
        self.ale.setInt("frame_skip", 1)
        self.ale.setInt("max_num_frames_per_episode", 0)   # the cap is counted in steps here
        self.ale.loadROM(rom_path)
        self.actions = (self.ale.getLegalActionSet() if settings["full_actions"]
                        else self.ale.getMinimalActionSet())
        self._noop = self.ale.getLegalActionSet()[0]
        self._rng = np.random.default_rng(seed)
        self._s = settings
        self._frames = collections.deque(maxlen=settings["pool_frms_size"])
        self._resize = _AreaResize(self.ale.getScreenDims(),
                                   (settings["height"], settings["width"]))
        self._needs_reset = True
        self._elapsed = 0

    def _screen(self) -> np.ndarray:
        return self.ale.getScreenGrayscale() if self._s["grayscale"] else self.ale.getScreenRGB()

    def reset(self) -> tuple[np.ndarray, int]:
        self.ale.reset_game()
        starts = self._s["random_starts"]
        for _ in range(self._rng.integers(1, starts + 1) if starts else 0):
            self.ale.act(self._noop)
            if self.ale.game_over(with_truncation=False):
                self.ale.reset_game()
        self._needs_reset = False
        self._elapsed = 0
        return self._resize(self._screen()), self.ale.lives()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, int]:
        if self._needs_reset:
            obs, lives = self.reset()
            return obs, 0.0, False, False, lives
        reward = 0.0
        self._frames.clear()
        for _ in range(self._s["act_rep"]):
            reward += self.ale.act(self.actions[action])
            self._frames.append(self._screen())
            if self.ale.game_over(with_truncation=False):
                break
        frames = np.stack(self._frames)
        if self._s["pool_frms_type"] == "max":
            pooled = frames.max(axis=0)
        else:
            pooled = np.rint(frames.mean(axis=0)).astype(np.uint8)
        self._elapsed += 1
        game_over = self.ale.game_over(with_truncation=False)
        truncated = self._elapsed >= self._s["max_episode_steps"]
        self._needs_reset = game_over or truncated
        return self._resize(pooled), reward, game_over, truncated, self.ale.lives()


class _AreaResize:
    """OpenCV's INTER_AREA resize of a grey [H, W] or colour [H, W, C] frame, envpool's.

    Output pixel i averages the input interval [i * s, (i + 1) * s), s = size_in / size_out,
    each input pixel weighted by how much of it the interval covers. Columns first, then
    rows, in float32, summing the taps in pixel order as OpenCV does: this reproduces
    envpool's frames bit for bit (PIL's BOX filter differs by up to 14 grey levels).
    """

    def __init__(self, shape_in: tuple[int, int], shape_out: tuple[int, int]):
        self._row_idx, self._row_w = self._taps(shape_in[0], shape_out[0])
        self._col_idx, self._col_w = self._taps(shape_in[1], shape_out[1])

    @staticmethod
    def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
        """[size_out, K] input indices and float32 weights, K = most pixels one output covers."""
        scale = size_in / size_out
        starts = np.arange(size_out)[:, None] * scale
        pixels = np.arange(size_in)[None, :]
        overlap = np.clip(np.minimum(starts + scale, pixels + 1) - np.maximum(starts, pixels),
                          0.0, None) / scale
        taps = int((overlap > 0).sum(axis=1).max())
        idx = np.argsort(overlap <= 0, axis=1, kind="stable")[:, :taps]  # covered, in order
        return idx, np.take_along_axis(overlap, idx, axis=1).astype(np.float32)

    def __call__(self, screen: np.ndarray) -> np.ndarray:
        frame = screen.astype(np.float32)
        if frame.ndim == 2:
            frame = frame[..., None]
        cols = np.zeros((frame.shape[0], self._col_idx.shape[0], frame.shape[2]), np.float32)
        for k in range(self._col_idx.shape[1]):
            cols += frame[:, self._col_idx[:, k]] * self._col_w[:, k, None]
        out = np.zeros((self._row_idx.shape[0], *cols.shape[1:]), np.float32)
        for k in range(self._row_idx.shape[1]):
            out += cols[self._row_idx[:, k]] * self._row_w[:, k, None, None]
        return np.rint(out).astype(np.uint8)


class _AleAtari(_AtariBatch):
    """N ALE emulators stepped in a Python loop; the backend for machines without envpool."""

    def __init__(self, rom: str, num_envs: int, seed: int, settings: dict, recorded: dict):
        from ale_py import roms

        rom_path = str(roms.get_rom_path(rom))
        self._games = [_AleGame(rom_path, seed + i, settings) for i in range(num_envs)]
        spec = EnvSpec(
            name=_camel(rom),
            obs_shape=(settings["height"], settings["width"], 1 if settings["grayscale"] else 3),
            obs_dtype="uint8",
            num_actions=len(self._games[0].actions),
            action_meanings=tuple(a.name for a in self._games[0].actions),
            protocol=recorded,
            human_name=rom,
        )
        super().__init__(spec, num_envs, settings["life_loss_terminal"])

    def _reset_all(self):
        obs, lives = zip(*(game.reset() for game in self._games))
        return np.stack(obs), np.array(lives)

    def _send(self, ids, actions):
        self._pending = ids, actions

    def _receive(self):
        obs, reward, game_over, truncated, lives = zip(
            *(self._games[i].step(int(a)) for i, a in zip(*self._pending)))
        return np.stack(obs), reward, game_over, truncated, np.array(lives)

    def render(self, index: int = 0) -> np.ndarray:
        return self._games[index].ale.getScreenRGB()

    def close(self) -> None:
        self._games.clear()
