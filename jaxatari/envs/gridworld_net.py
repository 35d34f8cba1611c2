"""The GridWorld example body (Kaixhin/Atari ``examples/GridWorldNet.lua``).

This file is the worked example of the custom-body API: pass its import path,
``jaxatari.envs.gridworld_net:GridWorldBody``, where a network body is asked for, and the
agent puts its own value head on top of the features this module returns.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax


class GridWorldBody(nn.Module):
    """Flattens each input in the batch and applies one hidden layer: Linear(32), ReLU."""

    hidden_size: int = 32
    # A field rather than a hard-coded relu so the saliency machinery can swap it
    # (e.g. for a guided-backpropagation ReLU).
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))  # [B, ...] -> [B, F], the original's nn.View
        return self.activation(nn.Dense(self.hidden_size)(x))
