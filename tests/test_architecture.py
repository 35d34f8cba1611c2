"""The import direction between the pure layer and the edge, read from the source's AST;
the line follows the directories.

The pure layer (types, networks, losses, exploration and the directories replay/ and
agents/) never imports the edge (every other module: loops/, envs/, commands/, loop, the
I/O modules) nor the libraries only the edge may use (envpool, ale_py, gymnasium, gymnax,
tensorboardX, matplotlib, tqdm, orbax). Every import counts, also those inside functions,
relative ones and ``importlib.import_module("...")`` with a literal name. No module under
jaxatari/ imports from tests. ``jaxatari.config`` (frozen dataclasses, no JAX) is neither
pure nor edge; a pure module may import it, and nothing else outside the pure layer.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "jaxatari"

PURE = ("jaxatari.types", "jaxatari.networks", "jaxatari.losses", "jaxatari.exploration",
        "jaxatari.replay", "jaxatari.agents")
NEITHER = ("jaxatari.config",)
# Directories wholly in the edge.
EDGE_DIRECTORIES = ("jaxatari.loops", "jaxatari.envs", "jaxatari.commands")
# What a pure module may import from the package: the pure layer, the package root (for
# ``from jaxatari import exploration``) and config (frozen dataclasses, no JAX, no I/O).
PURE_MAY_IMPORT = (*PURE, "jaxatari.config")
EDGE_LIBRARIES = ("envpool", "ale_py", "gymnasium", "gym", "gymnax", "tensorboardX",
                  "matplotlib", "tqdm", "orbax", "imageio")


def module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every module a source imports, absolute; ``from a import b`` yields a and a.b (b may
    be a submodule, as in ``from jaxatari import loop``)."""
    names = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            called = (function.attr if isinstance(function, ast.Attribute)
                      else getattr(function, "id", ""))
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def modules() -> dict[str, set[str]]:
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = module_name(path)
        found[name] = imported_names(path.read_text(), name, path.name == "__init__.py")
    return found


ALL = modules()
PURE_MODULES = sorted(name for name in ALL if within(name, PURE))
# The edge: every module of the package outside the pure layer and config.
EDGE = tuple(sorted(name for name in ALL if name != "jaxatari"
                    and not within(name, PURE) and not within(name, NEITHER)))


def violations(imports: set[str]) -> list[str]:
    return sorted(name for name in imports
                  if within(name, EDGE) or within(name, EDGE_LIBRARIES))


def test_the_layers_name_only_modules_that_exist():
    for name in (*PURE, *NEITHER, *EDGE_DIRECTORIES):
        assert name in ALL, f"{name} is named in a layer but no such module exists"
    for directory in ("jaxatari.agents", "jaxatari.replay"):
        assert all(within(m, PURE) for m in ALL if within(m, (directory,)))
    for directory in EDGE_DIRECTORIES:
        members = [m for m in ALL if within(m, (directory,))]
        assert len(members) > 1 and all(m in EDGE for m in members), directory
    assert {"jaxatari.loop", "jaxatari.loops.q_host", "jaxatari.loops.actors",
            "jaxatari.metrics", "jaxatari.cli"} <= set(EDGE)


def test_the_walk_finds_the_package():
    assert len(ALL) >= 15
    for name in ("jaxatari.types", "jaxatari.networks", "jaxatari.losses",
                 "jaxatari.exploration", "jaxatari.replay", "jaxatari.replay.storage",
                 "jaxatari.agents.dqn", "jaxatari.agents.native", "jaxatari.agents.actor_native",
                 "jaxatari.agents.optimiser", "jaxatari.agents.frames"):
        assert name in PURE_MODULES, name
    # the walk sees real edges, so an empty result below means something
    assert "jaxatari.envs.base" in ALL["jaxatari.envs.catch"]
    assert "jaxatari.agents.dqn" in ALL["jaxatari.loop"]
    assert "gymnasium" in ALL["jaxatari.envs.gym_env"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_never_import_the_edge(module):
    assert violations(ALL[module]) == [], (
        f"{module} is in the pure layer but imports the edge")


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_only_the_pure_layer(module):
    """An allow-list, so a new edge module (not yet named in EDGE) is caught too."""
    internal = {n for n in ALL[module] if within(n, ("jaxatari",)) and n != "jaxatari"}
    outside = sorted(n for n in internal if not within(n, PURE_MAY_IMPORT))
    assert outside == [], f"{module} imports {outside} from outside the pure layer"


@pytest.mark.parametrize("module", sorted(ALL))
def test_no_module_imports_tests(module):
    assert not any(within(name, ("tests",)) for name in ALL[module]), module


def test_edge_libraries_only_in_the_edge():
    """The heavy optional libraries stay in envs/ and the I/O modules."""
    for module, imports in ALL.items():
        if within(module, EDGE):
            continue
        libraries = sorted(n for n in imports if within(n, EDGE_LIBRARIES))
        assert libraries == [], (module, libraries)


def test_the_checker_catches_violations():
    """A test that cannot fail is a defect: feed it sources that break the rules."""
    bad = [
        ("import jaxatari.loop", "jaxatari.agents.dqn", False, "jaxatari.loop"),
        ("from jaxatari import metrics", "jaxatari.losses", False, "jaxatari.metrics"),
        ("from ..envs.catch import make_catch", "jaxatari.agents.native", False,
         "jaxatari.envs.catch"),
        ("from .. import cli", "jaxatari.replay.storage", False, "jaxatari.cli"),
        ("from . import host", "jaxatari.agents", True, "jaxatari.agents.host"),
        ("def f():\n    import envpool\n", "jaxatari.networks", False, "envpool"),
        ("from tensorboardX import SummaryWriter", "jaxatari.types", False, "tensorboardX"),
        ("import importlib\nimportlib.import_module('ale_py')", "jaxatari.exploration", False,
         "ale_py"),
        ("import orbax.checkpoint as ocp", "jaxatari.agents.dqn", False, "orbax.checkpoint"),
    ]
    for source, module, is_package, expected in bad:
        names = imported_names(source, module, is_package)
        assert expected in names, (source, names)
        if expected != "jaxatari.agents.host":
            assert violations(names), source
    assert "jaxatari.agents.host" not in violations({"jaxatari.agents.host"})
    assert violations({"jaxatari.hostile"}) == []   # prefixes match whole components only
    assert violations({"jaxatari.config", "jax.numpy", "flax.linen", "optax"}) == []
    assert not within("jaxatari.human_scores", PURE_MAY_IMPORT)
    assert within("jaxatari.replay.storage", PURE_MAY_IMPORT)
