"""Subcommands beyond ``train`` and ``presets``, one module each.

Each module listed in ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds its
parser and sets ``run`` (a function of the parsed ``argparse.Namespace`` returning an exit
status) with ``parser.set_defaults(run=...)``. Modules import JAX and friends inside
``run`` only, so ``--help`` stays fast. User mistakes raise ``jaxatari.config.ConfigError``
or ``ValueError`` with a one-line message; the CLI turns them into exit status 2.

  evaluate   eval (a saved agent: scores, video, saliency) and random (the baseline)
  resume     resume (continue a run from its last checkpoint)
  export     export (params.msgpack, metadata, a jax.export policy)
  plot       plot (several runs' evaluation curves overlaid)
  compare    compare (finished runs: probability of improvement, IQM, performance profile)
"""
COMMAND_MODULES: tuple[str, ...] = ("evaluate", "resume", "export", "plot", "compare")
