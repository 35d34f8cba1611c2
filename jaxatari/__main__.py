import os
import sys

# ``python -m`` puts the current directory first on sys.path (the ``jaxatari`` script does
# not). Removed before anything else is imported, so that a module lying in the current
# directory (a run directory someone sent) can neither shadow a package nor be imported
# unasked; your own env, loss or body modules come from PYTHONPATH (PYTHONPATH=. ...).
if sys.path and not sys.flags.safe_path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from jaxatari.cli import main  # noqa: E402

sys.exit(main())
