"""``python -m export``: the command line of :mod:`export.cli.export`."""

import sys

from export.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
