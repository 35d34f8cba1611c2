"""Checkpoints: any named pytrees of arrays plus JSON metadata, written atomically with orbax.

A checkpoint is a directory::

    NAME/
      state/            orbax (CompositeCheckpointHandler): one StandardSave item per name,
                        each a flat dict ``leaf_00000 ...`` of numpy arrays
      metadata.json     the caller's metadata, plus for every item the tree paths, shapes,
                        dtypes and a SHA-256 of its bytes (``items``)
      COMMITTED         written last: a directory without it is never loaded

Writing is atomic. Everything is written into ``.NAME.tmp-*`` next to ``NAME`` (orbax itself
writes its part into a temporary directory and renames it), ``COMMITTED`` is written and
synced last, then the old ``NAME`` is renamed to ``NAME.old``, the new one to ``NAME``, and
``NAME.old`` is removed. A crash at any point leaves either the previous or the new
checkpoint loadable: ``resolve`` falls back to ``NAME.old`` while ``NAME`` is missing or not
committed, and temporary directories are never read.

Loading checks more than orbax does: the item's structure, shapes and dtypes must match the
caller's template (a checkpoint of another network or game is refused with a one-line
message naming the first difference) and the bytes must match the recorded SHA-256 (a
corrupt or truncated file is refused). ``COMMITTED`` holds the SHA-256 of
``metadata.json``, which holds those of the arrays: a missing or empty record is refused.
The digests detect corruption (a bad disk, a truncated copy); they are not signatures, so
they do not detect someone who edits a file and its digest together. Loading never runs
code named in a checkpoint (see ``jaxatari.saved_imports``). Every refusal is a ``CheckpointError``, a
``ConfigError``: one line, exit status 2 on the command line.

The functions know nothing about agents: what each agent kind saves, and the item names
this format gives it, is ``loops.checkpoint_items`` (``train``, ``actor``, ``env``,
``replay`` and ``heldout`` for the Q agent; ``train``, ``actors`` and ``env`` for the
actor-learners). ``RunCheckpoints`` adds the run-directory layout: ``checkpoints/last``, ``checkpoints/best``
and, with ``keep_every``, ``checkpoints/step_000012345`` (the original's ``-checkpoint``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import jax
import numpy as np

from jaxatari.config import ConfigError

FORMAT_VERSION = 1
COMMIT_FILE = "COMMITTED"
METADATA_FILE = "metadata.json"
STATE_DIR = "state"
CHECKPOINTS_DIR = "checkpoints"
NAMES = ("last", "best")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message is one line."""


# ------------------------------------------------------------------------------ pytrees


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host_leaf(x) -> np.ndarray:
    if _is_key(x):
        x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))


def tree_signature(tree) -> list[list]:
    """[path, shape, dtype] of every leaf, in flattening order (None subtrees have no leaves)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    signature = []
    for path, leaf in leaves:
        shape = tuple(leaf.shape)
        dtype = leaf.dtype
        if _is_key(leaf):   # typed keys are stored as their raw uint32 data
            data = jax.eval_shape(jax.random.key_data, leaf)
            shape, dtype = tuple(data.shape), data.dtype
        signature.append([jax.tree_util.keystr(path), list(shape), np.dtype(dtype).name])
    return signature


def nbytes(tree) -> int:
    """Bytes of a pytree's arrays (works on ShapeDtypeStructs too)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) * np.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree_util.tree_leaves(tree) if not _is_key(leaf)))


def _digest(arrays: Iterable[np.ndarray]) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    return sha.hexdigest()


def _leaf_name(i: int) -> str:
    return f"leaf_{i:05d}"


# ----------------------------------------------------------------------------- save/load


_CHECKPOINTER = None


def _orbax():
    import orbax.checkpoint as ocp
    logging.getLogger("absl").setLevel(logging.ERROR)   # orbax logs every save at INFO
    return ocp


def _checkpointer():
    """One synchronous orbax Checkpointer for the process (each one starts background
    machinery; closing and recreating them leaves callbacks for closed event loops).

    It works for this process alone, also in a multi-process run (``jaxatari.hosts``):
    there process 0 alone saves and every process restores by itself, so orbax must not
    wait at barriers for the others, which it does by default when JAX has several
    processes."""
    global _CHECKPOINTER
    if _CHECKPOINTER is None:
        ocp = _orbax()
        me = jax.process_index()
        alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                                   barrier_sync_key_prefix=f"process{me}")
        _CHECKPOINTER = ocp.Checkpointer(
            ocp.CompositeCheckpointHandler(
                composite_options=ocp.CompositeOptions(multiprocessing_options=alone)),
            multiprocessing_options=alone)
    return _CHECKPOINTER


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_committed(path: Path) -> bool:
    path = Path(path)
    return (path / COMMIT_FILE).is_file() and (path / METADATA_FILE).is_file()


def save(path: Path, items: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Writes ``items`` (name -> pytree of arrays, or None to leave it out) and ``metadata``
    (JSON-able) to the checkpoint directory ``path``, atomically replacing it."""
    ocp = _orbax()
    path = Path(path).absolute()    # orbax refuses relative paths (a relative --run-dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        flat_items, records = {}, {}
        for name, tree in items.items():
            if tree is None:
                continue
            leaves = [_host_leaf(x) for x in jax.tree_util.tree_leaves(tree)]
            flat_items[name] = {_leaf_name(i): leaf for i, leaf in enumerate(leaves)}
            records[name] = {"signature": tree_signature(tree), "sha256": _digest(leaves),
                             "bytes": int(sum(leaf.nbytes for leaf in leaves))}
        # An item without leaves would be an empty orbax item: record it, store nothing.
        stored = {name: ocp.args.StandardSave(flat) for name, flat in flat_items.items() if flat}
        tmp.mkdir()
        if stored:
            _checkpointer().save(tmp / STATE_DIR, args=ocp.args.Composite(**stored))
        record = {**metadata, "format_version": FORMAT_VERSION, "items": records,
                  "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        text = json.dumps(record, indent=1, sort_keys=True, default=_json_default)
        (tmp / METADATA_FILE).write_text(text)
        with (tmp / COMMIT_FILE).open("w") as f:
            f.write(hashlib.sha256(text.encode()).hexdigest() + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _swap_in(tmp: Path, path: Path) -> None:
    """Renames the committed ``tmp`` to ``path``; the previous ``path`` survives as
    ``path.old`` until the new one is in place."""
    old = path.parent / f"{path.name}.old"
    if old.exists():
        if is_committed(path):
            shutil.rmtree(old)
        else:   # a crash between the two renames: the .old one is the checkpoint
            if path.exists():
                shutil.rmtree(path)
            os.rename(old, path)
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def resolve(path: Path) -> Path | None:
    """The committed checkpoint directory for ``path`` (``path`` or ``path.old``), or None."""
    path = Path(path)
    for candidate in (path, path.parent / f"{path.name}.old"):
        if is_committed(candidate):
            return candidate
    return None


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a committed checkpoint, or a CheckpointError."""
    path = Path(path)
    found = resolve(path)
    if found is None:
        if path.is_dir():
            raise CheckpointError(f"{path} is not a complete checkpoint (no {COMMIT_FILE} "
                                  "marker: it was being written when its run stopped)")
        raise CheckpointError(f"no checkpoint at {path}")
    text = (found / METADATA_FILE).read_text()
    commit = (found / COMMIT_FILE).read_text().strip()
    # Every committed checkpoint carries the digest: an empty record is refused, never a
    # reason to skip the check.
    if not commit:
        raise CheckpointError(f"checkpoint {found} is corrupt: its {COMMIT_FILE} record is "
                              f"empty (it should hold the SHA-256 of {METADATA_FILE})")
    if commit != hashlib.sha256(text.encode()).hexdigest():
        raise CheckpointError(f"checkpoint {found} is corrupt: {METADATA_FILE} does not match "
                              "its commit record")
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {found} is corrupt: unreadable {METADATA_FILE}") from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {found} has format {metadata.get('format_version')}; "
                              f"this jaxatari reads format {FORMAT_VERSION}")
    metadata["path"] = str(found.absolute())   # orbax reads absolute paths only
    return metadata


def _first_difference(saved: list, wanted: list) -> str:
    for (s_path, s_shape, s_dtype), (w_path, w_shape, w_dtype) in zip(saved, wanted):
        if s_path != w_path:
            return f"it holds {s_path or 'a leaf'} where this run has {w_path or 'a leaf'}"
        if s_shape != w_shape or s_dtype != w_dtype:
            return (f"{s_path} is {s_dtype}{s_shape} in the checkpoint but "
                    f"{w_dtype}{w_shape} here")
    if len(saved) != len(wanted):
        return f"it holds {len(saved)} arrays where this run has {len(wanted)}"
    return "the structures differ"


def load(path: Path, templates: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores the items named in ``templates`` (name -> a pytree of arrays or
    ShapeDtypeStructs with the structure to restore into).

    Returns (items, metadata); an item the checkpoint does not hold comes back as None.
    Raises CheckpointError (one line) for a missing, uncommitted, corrupt, truncated or
    mismatched checkpoint.
    """
    metadata = read_metadata(path)
    found = Path(metadata["path"])
    records = metadata.get("items", {})
    restored: dict[str, Any] = {}
    wanted_flat = {}
    for name, template in templates.items():
        if name not in records:
            restored[name] = None
            continue
        wanted = tree_signature(template)
        saved = records[name]["signature"]
        if saved != wanted:
            raise CheckpointError(f"checkpoint {found} does not fit this agent ({name}: "
                                  f"{_first_difference(saved, wanted)}): it was saved by "
                                  "another network, game or number of seeds")
        wanted_flat[name] = {_leaf_name(i): jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
                             for i, (_, shape, dtype) in enumerate(saved)}
    to_read = {name: flat for name, flat in wanted_flat.items() if flat}
    arrays: dict[str, dict] = {name: {} for name in wanted_flat}
    if to_read:
        ocp = _orbax()
        try:
            out = _checkpointer().restore(found / STATE_DIR, args=ocp.args.Composite(
                **{name: ocp.args.StandardRestore(flat) for name, flat in to_read.items()}))
            arrays.update({name: dict(out[name]) for name in to_read})
        except Exception as error:   # tensorstore / orbax errors of a damaged directory
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise CheckpointError(f"checkpoint {found} cannot be read: it is corrupt or "
                                  f"truncated ({type(error).__name__}: {first})") from None
    for name, flat in wanted_flat.items():
        leaves = [np.asarray(arrays[name][_leaf_name(i)]) for i in range(len(flat))]
        if _digest(leaves) != records[name]["sha256"]:
            raise CheckpointError(f"checkpoint {found} is corrupt: the {name} arrays do not "
                                  "match their recorded checksum")
        template = templates[name]
        treedef = jax.tree_util.tree_structure(template)
        template_leaves = jax.tree_util.tree_leaves(template)
        values = [jax.random.wrap_key_data(leaf) if _is_key(t) else jax.numpy.asarray(leaf)
                  for leaf, t in zip(leaves, template_leaves)]
        restored[name] = jax.tree_util.tree_unflatten(treedef, values)
    return restored, metadata


# ------------------------------------------------------------------------- run layout


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def find(target: Path, which: str = "last") -> Path:
    """The committed checkpoint a user named: a run directory (its ``checkpoints/<which>``),
    a run's ``checkpoints`` directory, or a checkpoint directory itself."""
    target = Path(target)
    if which not in NAMES:
        raise CheckpointError(f"--checkpoint must be one of {', '.join(NAMES)}, got {which!r}")
    if not target.exists() and resolve(target) is None:
        raise CheckpointError(f"no run directory or checkpoint at {target}")
    candidates = [target / CHECKPOINTS_DIR / which, target / which, target]
    for candidate in candidates:
        found = resolve(candidate)
        if found is not None:
            return found
    if (target / COMMIT_FILE).exists() or (target / METADATA_FILE).exists() or \
            (target / STATE_DIR).exists():
        read_metadata(target)   # raises the precise reason
    partial = [c for c in candidates if c.is_dir() and (c / STATE_DIR).exists()]
    if partial:
        read_metadata(partial[0])
    raise CheckpointError(f"{target} holds no saved agent ({CHECKPOINTS_DIR}/{which} is missing)")


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``RUN/checkpoints/NAME``), if it has one."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == CHECKPOINTS_DIR and (checkpoint.parent.parent / "config.json").exists():
        return checkpoint.parent.parent
    return None


class RunCheckpoints:
    """``RUN/checkpoints/{last,best,step_NNNNNNNNN}`` of one run.

    ``keep_every`` (the original's ``-checkpoint``): every evaluation's checkpoint is also
    kept as ``step_<step>`` instead of only overwriting ``last``.
    """

    def __init__(self, run_dir: Path, keep_every: bool = False):
        self.directory = checkpoint_dir(run_dir)
        self.keep_every = keep_every

    def path(self, name: str) -> Path:
        return self.directory / name

    def step_path(self, step: int) -> Path:
        return self.directory / f"step_{step:09d}"

    def saved(self, name: str = "last") -> Path | None:
        return resolve(self.path(name))
