"""The data-parallel learner's collectives: one seed's envs, replay rows and batch split over
the devices of a ``batch`` mesh axis, parameters replicated (Anakin: Hessel et al. 2021,
"Podracer architectures for scalable reinforcement learning").

Every device computes the gradient of ITS SHARE of the whole batch's objective, scaled as
the one-device reduction scales it (a mean divides by the whole batch's count, not the
device's), and one ``psum`` adds the shares: the exact gradient of the whole batch for
sum and mean reductions, bootstrap masks split unevenly over the devices included (a
``pmean`` of per-device means is not exact there). Every device then applies the same
optimiser step to the same replicated parameters and optimiser state.

The agents' factories take ``batch_axis``: None (the one-device program, unchanged: every
function here is then the identity) or the mesh axis name, for functions run inside
``shard_map`` over that axis (``shard_over_batch``). This is the one place the learner's
collectives live.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

BATCH_AXIS = "batch"


def batch_sum(tree: Any, batch_axis: str | None) -> Any:
    """The sum over the batch devices (``psum``); ``tree`` itself on one device."""
    return tree if batch_axis is None else jax.lax.psum(tree, batch_axis)


def batch_max(value: jax.Array, batch_axis: str | None) -> jax.Array:
    """The maximum over the batch devices (``pmax``): prioritised replay's importance
    weights are normalised by the whole batch's largest (Schaul et al. 2016)."""
    return value if batch_axis is None else jax.lax.pmax(value, batch_axis)


def batch_devices(batch_axis: str | None) -> int:
    """How many devices share the batch (1 without an axis)."""
    return 1 if batch_axis is None else jax.lax.axis_size(batch_axis)


def batch_index(batch_axis: str | None) -> jax.Array:
    """This device's place on the batch axis (0 without an axis)."""
    return jnp.int32(0) if batch_axis is None else jax.lax.axis_index(batch_axis)


def whole_batch(x: jax.Array, batch_axis: str | None, axis: int) -> jax.Array:
    """Every device's ``x`` concatenated along ``axis`` in device order: the one-device
    array this device's ``x`` is a slice of (``all_gather``)."""
    return x if batch_axis is None else jax.lax.all_gather(x, batch_axis, axis=axis, tiled=True)


def own_slice(whole: jax.Array, local_size: int, batch_axis: str | None, axis: int) -> jax.Array:
    """This device's ``local_size`` entries of ``whole`` along ``axis`` (the inverse of
    ``whole_batch``)."""
    if batch_axis is None:
        return whole
    start = batch_index(batch_axis) * local_size
    return jax.lax.dynamic_slice_in_dim(whole, start, local_size, axis=axis)


def own_key(key: jax.Array, batch_axis: str | None) -> jax.Array:
    """A key of this device's own (replay sampling: each device draws its share of the
    batch from its own rows); ``key`` itself on one device."""
    return key if batch_axis is None else jax.random.fold_in(key, batch_index(batch_axis))


def shard_over_batch(fn: Callable, mesh, in_specs, out_specs) -> Callable:
    """``fn`` run on every device of ``mesh`` with its share of the inputs
    (``jax.shard_map``); its collectives name the mesh's axes. Replication is not checked
    (``check_vma=False``): the learner adds its gradients itself, with ``batch_sum``, so
    nothing is summed twice."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)
