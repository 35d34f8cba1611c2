"""One peer DQN run (Stable-Baselines3 or sbx) on envpool Space Invaders; prints its speed.

Runs in the separate benchmark environment (.bench-venv, made by scripts/benchmark.py),
never imports jaxatari. The settings arrive as one JSON argument so that both peers and
our loop are configured from the same numbers in scripts/benchmark.py:

    .bench-venv/bin/python scripts/bench_peers.py '{"framework": "sb3", ...}'

The last line printed is JSON: {"framework", "steps_per_second", "timed_steps", "seconds"}.
Only agent steps after ``learning_starts + warmup_steps`` are timed (the first updates
include compilation for sbx and allocation for both).
"""
from __future__ import annotations

import json
import sys
import time

import envpool
import gymnasium
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv


class EnvpoolVecEnv(VecEnv):
    """SB3's VecEnv over one envpool Atari pool (frames stacked by envpool, channels first).

    envpool resets an env on the step after its episode ends; SB3 expects the reset
    observation at once, so a finished env is reset here and its last frame goes to
    ``terminal_observation``, as SB3's own vector envs do.
    """

    def __init__(self, game: str, num_envs: int, seed: int, env_kwargs: dict):
        self.pool = envpool.make_gymnasium(f"{game}-v5", num_envs=num_envs, seed=seed,
                                           **env_kwargs)
        space = self.pool.observation_space
        observation_space = gymnasium.spaces.Box(0, 255, space.shape, np.uint8)
        action_space = gymnasium.spaces.Discrete(int(self.pool.action_space.n))
        super().__init__(num_envs, observation_space, action_space)
        self._actions = None

    def reset(self):
        obs, _ = self.pool.reset()
        return obs

    def step_async(self, actions):
        self._actions = np.asarray(actions, np.int32)

    def step_wait(self):
        obs, reward, terminated, truncated, _ = self.pool.step(self._actions)
        dones = terminated | truncated
        infos = [{} for _ in range(self.num_envs)]
        if dones.any():
            ids = np.flatnonzero(dones)
            for i in ids:
                infos[i]["terminal_observation"] = obs[i].copy()
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            fresh, _ = self.pool.reset(np.asarray(ids, np.int32))
            obs = obs.copy()
            obs[ids] = fresh
        return obs, reward.astype(np.float32), dones, infos

    def close(self):
        self.pool.close()

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name, None)] * self.num_envs

    def set_attr(self, attr_name, value, indices=None):
        pass

    def env_method(self, method_name, *args, indices=None, **kwargs):
        return [None] * self.num_envs

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * self.num_envs

    def seed(self, seed=None):
        return [None] * self.num_envs


class StepTimer(BaseCallback):
    """Wall time of the agent steps after ``start`` (SB3 calls _on_step once per env step)."""

    def __init__(self, start: int):
        super().__init__()
        self.start = start
        self.started_at = None
        self.started_step = None

    def _on_step(self) -> bool:
        if self.started_at is None and self.num_timesteps >= self.start:
            self.started_at = time.perf_counter()
            self.started_step = self.num_timesteps
        return True


def main() -> None:
    s = json.loads(sys.argv[1])
    if s["framework"] == "sb3":
        import torch
        from stable_baselines3 import DQN
        torch.set_num_threads(s.get("threads", torch.get_num_threads()))
        extra = {"device": "cpu", "max_grad_norm": s["grad_clip"]}
    elif s["framework"] == "sbx":
        from sbx import DQN
        extra = {}
    else:
        raise SystemExit(f"unknown framework {s['framework']!r}")
    env = EnvpoolVecEnv(s["game"], 1, s["seed"], s["env_kwargs"])
    total = s["learning_starts"] + s["warmup_steps"] + s["timed_steps"]
    model = DQN("CnnPolicy", env, learning_rate=s["learning_rate"], buffer_size=s["buffer_size"],
                learning_starts=s["learning_starts"], batch_size=s["batch_size"],
                gamma=s["gamma"], target_update_interval=s["target_update_interval"],
                train_freq=s["train_freq"], gradient_steps=1,
                exploration_fraction=s["exploration_steps"] / total,
                exploration_final_eps=s["epsilon_end"], optimize_memory_usage=False,
                seed=s["seed"], verbose=0, **extra)
    timer = StepTimer(s["learning_starts"] + s["warmup_steps"])
    model.learn(total_timesteps=total, callback=timer)
    seconds = time.perf_counter() - timer.started_at
    steps = model.num_timesteps - timer.started_step
    env.close()
    print(json.dumps({"framework": s["framework"], "steps_per_second": steps / seconds,
                      "timed_steps": steps, "seconds": seconds}))


if __name__ == "__main__":
    main()
