"""The examples import their own modules (``from model import ...``): put each example's folder
on the path."""

import sys
from pathlib import Path

for folder in Path(__file__).parent.iterdir():
    if folder.is_dir() and not folder.name.startswith((".", "_")):
        sys.path.insert(0, str(folder))
