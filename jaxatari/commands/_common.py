"""Helpers shared by the subcommands: configs of runs and checkpoints, output folders."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Collection

from jaxatari.config import FIELDS, Config, ConfigError, build_config, coerce, validate
from jaxatari.saved_imports import check_saved_imports


def config_from_record(record: dict[str, Any], where: str, *,
                       overrides: dict[str, Any] | None = None,
                       allowed_imports: Collection[str] = ()) -> Config:
    """A Config from a config.json / checkpoint record (extra keys ignored, missing ones
    default) with ``overrides`` from the command line applied, validated; ConfigError (one
    line) if it does not make one. An import path the record names is refused unless
    ``allowed_imports`` holds it or an override replaces it (see jaxatari.saved_imports)."""
    overrides = overrides or {}
    if not isinstance(record, dict):
        raise ConfigError(f"{where} does not hold a jaxatari configuration")
    saved = {name: value for name, value in record.items()
             if name in FIELDS and name not in overrides}
    check_saved_imports(saved, where, allowed_imports)
    values = {name: coerce(name, value) for name, value in saved.items()}
    values.update({name: coerce(name, value) for name, value in overrides.items()})
    try:
        config = Config(**values)
    except TypeError as error:
        raise ConfigError(f"{where} does not hold a jaxatari configuration ({error})") from None
    validate(config)
    return config


def run_config(run_dir: Path, overrides: dict[str, Any] | None = None,
               allowed_imports: Collection[str] = ()) -> Config:
    """A run directory's config.json with ``overrides`` (see config_from_record)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is corrupt (not JSON)") from None
    return config_from_record(record, str(path), overrides=overrides,
                              allowed_imports=allowed_imports)


def target_config(target: str, overrides: dict[str, Any],
                  allowed_imports: Collection[str] = ()) -> Config:
    """The config of a run directory (its config.json, then ``overrides``) or of a preset."""
    path = Path(target)
    if path.is_dir():
        return run_config(path, overrides, allowed_imports)
    if "/" in target or path.suffix:
        raise ConfigError(f"no run directory at {target}")
    try:
        return build_config(target, overrides)
    except ConfigError as error:
        if "unknown preset" in str(error):
            raise ConfigError(f"{target!r} is neither a run directory nor a preset; "
                              f"{error}") from None
        raise


def check_env_matches(env_spec, saved: dict[str, Any], where: str) -> None:
    """The env rebuilt from a checkpoint's options must be the one it was trained on."""
    for name in ("name", "num_actions"):
        if saved.get(name) != getattr(env_spec, name):
            raise ConfigError(f"{where}: the env built from its options has {name} "
                              f"{getattr(env_spec, name)!r}, but it was trained with "
                              f"{saved.get(name)!r}")
    if list(saved.get("obs_shape", [])) != list(env_spec.obs_shape):
        raise ConfigError(f"{where}: the env built from its options has observations "
                          f"{tuple(env_spec.obs_shape)}, but it was trained on "
                          f"{tuple(saved.get('obs_shape', []))}")


def new_folder(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2`` ... : a folder name not yet taken."""
    path = Path(base) / name
    index = 2
    while path.exists():
        path = Path(base) / f"{name}-{index}"
        index += 1
    return path


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
