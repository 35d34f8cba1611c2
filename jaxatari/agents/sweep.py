"""Hyperparameter sweeps in one program: a configuration axis before the seed axis.

The configurations of a sweep differ only in values that enter the arithmetic (a learning
rate, a discount, a target period), never in a shape or a branch. So one program serves
them all: the edge builds each configuration's static settings as usual, ``swept_values``
stacks the fields that differ into arrays [C], and inside the jitted program
``with_values`` puts one configuration's values (traced scalars) back into the settings
from which the agent's pure functions are built. ``over_configurations`` maps a function
over the configuration axis, either side by side (``vmap``) or one after another
(``lax.map``, each configuration computing as a run of its own would).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

SweptValues = dict[str, jax.Array]   # field name -> [C] (or a scalar inside the program)


def swept_values(records: Sequence[Any]) -> SweptValues:
    """The fields whose values differ between frozen dataclass records (one per
    configuration), stacked: floats as float32, integers as int32. ValueError where a
    differing field is not a number, since a sweep cannot trace it."""
    values: SweptValues = {}
    for field in dataclasses.fields(records[0]):
        column = [getattr(record, field.name) for record in records]
        if all(value == column[0] for value in column):
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column):
            raise ValueError(f"{field.name} differs between the configurations of a sweep "
                             f"but is not a number ({column[:3]}...): it cannot be traced")
        dtype = jnp.int32 if all(isinstance(v, int) for v in column) else jnp.float32
        values[field.name] = jnp.asarray(column, dtype)
    return values


def with_values(record: Any, values: SweptValues) -> Any:
    """``record`` with the fields named in ``values`` replaced (by traced scalars inside
    the program); names that are not its fields are left to other records."""
    names = {field.name for field in dataclasses.fields(record)}
    return dataclasses.replace(record, **{k: v for k, v in values.items() if k in names})


def over_configurations(per_configuration: Callable, mode: str) -> Callable:
    """``per_configuration(*args)`` mapped over the leading configuration axis of every
    argument (pytrees), its outputs stacked on a leading configuration axis.

    mode ``vmap``: all configurations side by side (batched kernels, fastest); XLA may
    round a batched kernel differently from one of a single run, so the numbers can differ
    from separate runs in the last bits, and after that wherever a trajectory branches.
    ``map``: ``lax.map``, one configuration after another inside the same program, each
    computing with the shapes of a single run.
    """
    if mode == "vmap":
        return jax.vmap(per_configuration)
    if mode == "map":
        return lambda *args: jax.lax.map(lambda xs: per_configuration(*xs), args)
    raise ValueError(f"unknown sweep mode {mode!r}: vmap or map")
