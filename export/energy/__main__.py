"""``python -m export.energy``: the command line of :mod:`export.cli.energy`."""

import sys

from export.cli.energy import main

if __name__ == "__main__":
    sys.exit(main())
