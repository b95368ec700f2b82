"""``python -m simclrv2``: the same command line as the ``simclrv2`` script."""

import sys

from simclrv2.cli import main

if __name__ == "__main__":
    sys.exit(main())
