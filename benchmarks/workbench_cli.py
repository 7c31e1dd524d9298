"""Running the ``flowforge`` command in-process for the table benchmarks
(``bounded_columns.py``, ``integer_columns.py``, ``wide_tables.py``)."""

from __future__ import annotations

import contextlib
import io

from flowforge.workbench.cli import main as flowforge


def quiet(args: list[str]) -> str:
    """``flowforge ARGS`` with its output captured; returns what it printed on stdout, and
    stops the benchmark when the command fails."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = flowforge([str(a) for a in args])
    if rc:
        raise SystemExit(f"flowforge {args[0]} failed ({rc})")
    return out.getvalue()
