"""``python -m export.mcu``: the command line of :mod:`export.cli.mcu`."""

import sys

from export.cli.mcu import main

if __name__ == "__main__":
    sys.exit(main())
