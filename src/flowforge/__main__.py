"""``python -m flowforge``: the workbench command line (see ``flowforge --help``)."""

import os
import sys

# `python -m` puts the current folder first on sys.path: a folder's own tqdm.py or
# safetensors.py (a downloaded run folder's) would run at the command's first lazy import.
# (torch and numpy are imported before this line runs: for them, `python -P -m flowforge` or
# the `flowforge` command.) --import MODULE still looks in the current folder first.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from flowforge.workbench.cli import command  # noqa: E402

if __name__ == "__main__":
    sys.exit(command())
