"""The best greedy catch rate any agent can reach on the original's Catch, by frames seen.

The original's ball drifts sideways by a sub-pixel amount each step (speed U(-1/3, 1/3)) and
the screen shows only the truncated column, while the catch test compares the real position
with the paddle's (``ball_x`` in ``[paddle_x, paddle_x + 1]``, so the paddle "catches" with its
left pixel only). Where the ball lands is therefore uncertain from a short window of frames,
and the uncertainty shrinks as the window grows.

This script plays many episodes of ``jaxatari.envs.catch`` (the env the agents train on),
records the ball's drawn column at every step, and for a window of the last ``k`` frames seen
before the final action estimates P(landing column | window) by counting on one half of the
episodes and scoring the best guess on the other half (so the estimate is not inflated by
windows seen only once). The paddle can always be under the guessed column in time (it moves
one pixel a step, the ball at most a third), so the result is the ceiling for an agent that
decides from the last ``k`` frames. An agent could in principle carry extra memory in where
it keeps its paddle; none of ours is trained to, so this is the bound that applies to them.

    python -m scripts.catch_ceiling [--episodes 2000000]

Prints a table and writes results/catch-ceiling.json and results/catch-ceiling.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.envs.catch import make_catch
from scripts.provenance import commit_label, write_result

WINDOWS = (1, 2, 4, 8, 10, 12, 16, 23)
OUTPUT = Path("results/catch-ceiling")




def ball_columns(episodes: int, seed: int, size: int = 24) -> np.ndarray:
    """Drawn ball column at every step of ``episodes`` games: int16 [N, size]."""
    env = make_catch(size=size)

    @jax.jit
    def play(keys):
        def one(key):
            state, _ = env.reset(key)

            def step(state, step_key):
                state, _, _, _, _ = env.step(step_key, state, jnp.int32(0))
                return state, jnp.floor(state.ball_x).astype(jnp.int16)

            _, columns = jax.lax.scan(step, state, jax.random.split(key, size - 1))
            first = jnp.floor(state.ball_x).astype(jnp.int16)[None]
            return jnp.concatenate([first, columns])

        return jax.vmap(one)(keys)

    chunks = []
    key = jax.random.PRNGKey(seed)
    for start in range(0, episodes, 500_000):
        key, chunk_key = jax.random.split(key)
        count = min(500_000, episodes - start)
        chunks.append(np.asarray(play(jax.random.split(chunk_key, count))))
    return np.concatenate(chunks)


def best_guess_rate(windows: np.ndarray, final: np.ndarray, fit: np.ndarray) -> float:
    """Catch rate, on the episodes not in ``fit``, of guessing the most common landing column
    seen in ``fit`` episodes with the same window (the current column for unseen windows)."""
    _, window_id = np.unique(windows, axis=0, return_inverse=True)
    window_id = window_id.reshape(-1)
    columns = int(final.max()) + 1
    pair, pair_count = np.unique(window_id[fit] * columns + final[fit], return_counts=True)
    pair_window, pair_final = pair // columns, pair % columns
    guess = np.full(window_id.max() + 1, -1, np.int64)
    # Ascending counts: for each window the last write, the most common landing, wins.
    order = np.argsort(pair_count, kind="stable")
    guess[pair_window[order]] = pair_final[order]
    test = ~fit
    guesses = guess[window_id[test]]
    unseen = guesses < 0
    guesses[unseen] = windows[test][unseen, -1]
    return float(np.mean(guesses == final[test]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    columns = ball_columns(args.episodes, args.seed)
    final = columns[:, -1].astype(np.int64)
    fit = np.arange(len(columns)) < len(columns) // 2
    rows = []
    for k in WINDOWS:
        # The last action is chosen on seeing step 22's frame: the window ends there.
        window = columns[:, -1 - k:-1]
        rate = best_guess_rate(window, final, fit)
        rows.append({"frames": k, "best_catch_rate": round(rate, 4)})
        print(f"last {k:2d} frames: best catch rate {rate:.3f}", flush=True)

    result = {"episodes": args.episodes, "seed": args.seed, "commit": commit_label(),
              "command": f"python -m scripts.catch_ceiling --episodes {args.episodes}",
              "env": "jaxatari.envs.catch.make_catch(size=24), the original's rules",
              "ceilings": rows}
    table = ["# Catch: the best catch rate from the last k frames", "",
             episodes_line(args.episodes), "",
             "| frames seen | best greedy catch rate |", "|---:|---:|"]
    table += [f"| {row['frames']} | {row['best_catch_rate']:.3f} |" for row in rows]
    write_result(OUTPUT, result, table)


def episodes_line(episodes: int) -> str:
    return (f"Estimated from {episodes:,} episodes of our Catch (fit on one half, scored on the "
            "other). See scripts/catch_ceiling.py for the reasoning.")


if __name__ == "__main__":
    main()
