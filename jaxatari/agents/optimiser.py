"""The agents' optimisers and their gradient step, shared by the Q agent and the
actor-learners.

The original's optimisers through optax: centred RMSProp (Graves 2013) as Kaixhin/Atari's
rmspropm, the uncentred shared RMSProp of the asynchronous agents (Mnih et al. 2016), Adam
(Kingma and Ba 2015), AdaDelta (Zeiler 2012) and SGD.
"""
from __future__ import annotations

import optax

from jaxatari.types import TrainState, switched_off


def make_optimiser(name: str, *, learning_rate, momentum: float, grad_clip: float,
                   rms_epsilon: float = 0.01) -> optax.GradientTransformation:
    """The original's optimisers through optax.

    rmspropm: centred RMSProp (Graves 2013) with decay ``momentum`` and epsilon 0.01 inside
    the square root, as Kaixhin/Atari modules/rmspropm.lua; adam; adadelta; rmsprop
    (uncentred, epsilon ``rms_epsilon``, the async agents' sharedRmsProp); sgd.
    ``grad_clip`` > 0 clips the global L2 norm of the gradient first.
    """
    optimisers = {
        "rmspropm": lambda: optax.rmsprop(learning_rate, decay=momentum, eps=0.01, centered=True),
        "rmsprop": lambda: optax.rmsprop(learning_rate, decay=momentum, eps=rms_epsilon),
        "adam": lambda: optax.adam(learning_rate),
        "adadelta": lambda: optax.adadelta(learning_rate),
        "sgd": lambda: optax.sgd(learning_rate, momentum=momentum or None),
    }
    if name not in optimisers:
        raise ValueError(f"unknown optimiser {name!r}: choose one of {', '.join(optimisers)}")
    chain = [] if switched_off(grad_clip) else [optax.clip_by_global_norm(grad_clip)]
    return optax.chain(*chain, optimisers[name]())


def apply_gradients(optimiser: optax.GradientTransformation, train: TrainState,
                    grads) -> TrainState:
    """One optimiser step: the optimiser's update of ``grads`` applied to the parameters."""
    updates, opt_state = optimiser.update(grads, train.opt_state, train.params)
    return train.replace(params=optax.apply_updates(train.params, updates), opt_state=opt_state)
