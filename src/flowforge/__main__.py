"""``python -m flowforge``: the workbench command line (see ``flowforge --help``)."""

import sys

from flowforge.workbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
