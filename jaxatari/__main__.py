import sys

from jaxatari.cli import main

sys.exit(main())
