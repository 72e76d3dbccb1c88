"""``python -m mullama``: the command line (see mullama.cli)."""

import sys

from .cli import main

sys.exit(main())
