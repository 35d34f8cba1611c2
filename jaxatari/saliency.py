"""Saliency maps of a saved network (Q agent or actor-learner), three ways, without retraining.

* ``normal``: the vanilla gradient (Simonyan, Vedaldi and Zisserman 2013, "Deep Inside
  Convolutional Networks"): ReLU's usual backward pass, grad * [x > 0].
* ``guided``: guided backpropagation (Springenberg et al. 2014, "Striving for Simplicity"):
  grad * [x > 0] * [grad > 0], only positive gradients through active units.
* ``deconvnet``: the deconvnet rule (Zeiler and Fergus 2014, "Visualizing and Understanding
  Convolutional Networks"): max(grad, 0), the positive gradient whatever the forward
  activation was.

Each mode is a ReLU with a custom VJP (forward unchanged) passed as ``activation`` to
the network's factory, so it reaches every ReLU of the body and heads of any saved model, as the
original swapped its GuidedReLU / DeconvnetReLU modules in at run time (Kaixhin/Atari
``Model.lua setSaliency``).

The map, as the original's ``Agent:computeSaliency``: the gradient of the chosen action's
value (the acting head's, or every head's for the bootstrap ensemble) with respect to the
input, its absolute value on the NEWEST frame of the stack (the maximum over that frame's
channels for multi-channel frames), zero where the action was not chosen greedily.
``overlay`` puts it, rescaled bilinearly to the screen, into the red channel of the
full-colour screen, as the original's ``Display:createSaliencyMap``; unlike the original,
each map is scaled so that its maximum is 255, or it would be invisible.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxatari.networks import to_float

MODES = ("normal", "guided", "deconvnet")


def relu_with_backward(backward: Callable) -> Callable:
    """A ReLU (forward unchanged) whose backward pass is ``backward(x, g)``: the one place
    where the saliency modes differ."""

    @jax.custom_vjp
    def relu(x: jax.Array) -> jax.Array:
        return jnp.maximum(x, 0)

    relu.defvjp(lambda x: (jnp.maximum(x, 0), x), lambda x, g: (backward(x, g),))
    return relu


# Guided backpropagation: g * [x > 0] * [g > 0].
guided_relu = relu_with_backward(lambda x, g: jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)))
# The deconvnet: max(g, 0), whatever x was.
deconvnet_relu = relu_with_backward(lambda x, g: jnp.maximum(g, 0))

ACTIVATIONS: dict[str, Callable] = {"normal": jax.nn.relu, "guided": guided_relu,
                                    "deconvnet": deconvnet_relu}


def activation_for(mode: str) -> Callable:
    if mode not in ACTIVATIONS:
        raise ValueError(f"unknown saliency mode {mode!r}: choose one of {', '.join(MODES)}")
    return ACTIVATIONS[mode]


def make_saliency(settings, mode: str) -> Callable:
    """saliency(params, stack [N, ...], actions [N], heads [N] or None) -> maps [N, H, W].

    ``settings``: a Q agent's ``QAgentSettings`` or an actor-learner's
    ``ActorLearnerSettings`` (the original refused saliency for its async agents; here the
    map is of the chosen action's Q value, or of its policy logit for A3C).
    ``heads=None`` targets the chosen action on every head (the bootstrap ensemble, as the
    original in evaluation mode); otherwise the acting head only. For Q values, maps are zero
    where ``actions`` is not the greedy choice of that head (or of the heads' vote), as the
    original's; A3C's actions are its policy's own samples, so every one has its map."""
    from jaxatari.agents.actor_learner import ActorLearnerSettings
    from jaxatari.export import make_loaded_agent
    if getattr(settings, "recurrent", False):
        raise ValueError("saliency maps are not implemented for recurrent agents "
                         "(--recurrent true) yet; run eval without --saliency")
    if len(settings.obs_shape) != 3:
        raise ValueError(f"saliency maps need image observations; this env's observations "
                         f"have shape {tuple(settings.obs_shape)}")
    kind = "actor-learner" if isinstance(settings, ActorLearnerSettings) else "q-agent"
    agent = make_loaded_agent(kind, settings, activation=activation_for(mode))
    channels = settings.obs_shape[-1]
    num_actions = settings.num_actions

    def saliency(params, stack, actions, heads=None):
        x = to_float(stack)                       # the network's own input scale, [0, 1]
        chosen = jax.nn.one_hot(actions, num_actions)                      # [N, A]

        def chosen_value(x):
            q = agent.scores(params, x)                                     # [N, K, A]
            if heads is None:
                target = jnp.broadcast_to(chosen[:, None, :], q.shape)
            else:
                target = chosen[:, None, :] * jax.nn.one_hot(heads, q.shape[1])[:, :, None]
            return (q * target).sum(), q

        grads, q = jax.grad(chosen_value, has_aux=True)(x)
        newest = jnp.abs(grads[..., -channels:]).max(axis=-1)              # [N, H, W]
        if agent.samples_policy:
            return newest
        if heads is None:   # greedy for the ensemble: the most voted action
            votes = jax.nn.one_hot(jnp.argmax(q, -1), num_actions).sum(1)  # [N, A]
            greedy = jnp.take_along_axis(votes, actions[:, None], 1)[:, 0] >= votes.max(-1)
        else:
            q_head = jnp.take_along_axis(q, heads[:, None, None], 1)[:, 0]  # [N, A]
            greedy = jnp.take_along_axis(q_head, actions[:, None], 1)[:, 0] >= q_head.max(-1)
        return jnp.where(greedy[:, None, None], newest, 0.0)

    return saliency


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] -> [height, width], bilinear with aligned pixel centres (image.scale's way)."""
    h, w = image.shape
    rows = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    cols = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    image = np.asarray(image, np.float64)
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c1] * fc
    bottom = image[r1][:, c0] * (1 - fc) + image[r1][:, c1] * fc
    return top * (1 - fr) + bottom * fr


def overlay(screen: np.ndarray, saliency: np.ndarray | None) -> np.ndarray:
    """The screen [H, W, 3] uint8 with the map, rescaled to it, in the red channel
    (the map's maximum -> 255); the screen unchanged without a map."""
    screen = np.array(screen, np.uint8, copy=True)
    if saliency is None:
        return screen
    resized = resize_bilinear(np.asarray(saliency, np.float64), *screen.shape[:2])
    peak = resized.max()
    red = resized / peak * 255.0 if peak > 0 else np.zeros_like(resized)
    screen[..., 0] = np.clip(np.rint(red), 0, 255).astype(np.uint8)
    return screen
