"""Import paths read from saved files are code: refused unless named on this command line.

``--env``, ``--loss`` and ``--model-body`` accept an import path ``package.module:Name``;
loading one imports that module, which runs its code. A run directory's ``config.json``
and a checkpoint's ``metadata.json`` record these options, and users hand run directories
and checkpoints to one another, so a command that reads them (``resume``, ``eval``,
``random``, ``export``) would otherwise run whatever code the sender named (the class of
problem that made PyTorch's ``torch.load`` load weights only by default). The built-in
names (catch, nature, pal, ..., and paths into jaxatari itself) load as always; an import
path from a saved file is refused with one line unless this command line names it, with
``--allow-import PATH`` or by giving the option again. No JAX here: the check runs before
anything is imported.
"""
from __future__ import annotations

import argparse
from typing import Any, Collection, Mapping

from jaxatari.config import ConfigError, flag_name

# The options whose value may be an import path, and the agent settings that repeat them.
IMPORT_OPTIONS = ("env", "loss", "model_body")
SETTING_OPTIONS = {"body": "model_body", "loss": "loss"}


def is_import_path(value: Any) -> bool:
    """An import path outside this package (``jaxatari.*:Name``, as demo-grid's body, is
    built in: it runs only the package's own code)."""
    if not (isinstance(value, str) and ":" in value):
        return False
    module = value.partition(":")[0]
    return not (module == "jaxatari" or module.startswith("jaxatari."))


def add_allow_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-import", action="append", default=[], metavar="MODULE:NAME",
        dest="allow_import",
        help="let a saved run or checkpoint load this import path (its --env, --loss or "
             "--model-body), which runs that module's code; repeat for several. Without it "
             "an import path read from a saved file is refused: give it only for files "
             "you trust")


def check_saved_imports(values: Mapping[str, Any], where: str,
                        allowed: Collection[str] = ()) -> None:
    """Raises ConfigError (one line) for the first import path in ``values`` (option name
    -> value, as read from the file ``where``) that ``allowed`` does not name."""
    if not isinstance(values, Mapping):
        return
    for name, value in values.items():
        if name in IMPORT_OPTIONS and is_import_path(value) and value not in allowed:
            raise ConfigError(
                f"{where} names {flag_name(name)} {value}, an import path: loading it would "
                f"run code from a saved file, so it is refused; if you trust where the files "
                f"came from, allow it with --allow-import {value}")


def check_checkpoint_imports(metadata: Mapping[str, Any], where: str,
                             allowed: Collection[str] = ()) -> None:
    """The import-path check for a checkpoint's metadata: its saved options and the agent
    settings built from them."""
    check_saved_imports(metadata.get("config") or {}, where, allowed)
    settings = metadata.get("agent") or {}
    if not isinstance(settings, Mapping):
        return
    check_saved_imports({option: settings.get(key) for key, option in SETTING_OPTIONS.items()},
                        where, allowed)
