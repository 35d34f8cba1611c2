"""``export``: a saved agent as a folder that runs with jax, numpy and flatbuffers only.

  jaxatari export RUN_DIR_OR_CHECKPOINT [--out DIR] [--checkpoint best|last] [--seed-index I]

See ``jaxatari.export`` for the folder's contents.
"""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a saved agent's greedy policy (jax.export) and parameters",
        description="Write a self-contained folder: params.msgpack, config.json, metadata.json, "
                    "policy.jax_export (the greedy policy, loadable with jax alone), "
                    "observation.npy (a sample input) and run_policy.py, which needs only "
                    "`pip install jax numpy flatbuffers`.")
    parser.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a run directory or a checkpoint directory")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="the folder to create; it must not exist (default: "
                             "RUN_DIR/export-<checkpoint>-step<step>)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default=None,
                        help="which checkpoint of a run directory (default: best, else last: "
                             "a run whose validations finished no episode has no best)")
    parser.add_argument("--seed-index", type=int, default=None, metavar="I",
                        help="which of the run's seeds (default: best last validation score)")
    from jaxatari.saved_imports import add_allow_import_argument
    add_allow_import_argument(parser)
    parser.set_defaults(run=run_export)


def run_export(args) -> int:
    from jaxatari import checkpoint as ckpt
    from jaxatari.commands._common import new_folder
    from jaxatari.export import INSTALL, export_policy

    try:
        path = ckpt.find(Path(args.target), args.checkpoint or "best")
    except ckpt.CheckpointError:
        if args.checkpoint is not None:
            raise
        path = ckpt.find(Path(args.target), "last")
    meta = ckpt.read_metadata(path)
    if args.out is not None:
        out = Path(args.out)
    else:
        base = ckpt.run_dir_of(path) or Path(".")
        out = new_folder(base, f"export-{meta.get('name', path.name)}-step{meta.get('step')}")
    written = export_policy(path, out, seed_index=args.seed_index,
                            allowed_imports=args.allow_import)
    print(f"exported {path} (step {meta.get('step'):,}) to {written}")
    print(f"run it anywhere with only `{INSTALL}`: python {written / 'run_policy.py'} "
          f"{written}")
    return 0
