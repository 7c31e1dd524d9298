"""The workbench's user-facing errors: the command line prints their message as one line."""

from __future__ import annotations

__all__ = [
    "WorkbenchError",
    "DataError",
    "ContextError",
    "RunError",
    "NonFiniteError",
    "out_of_memory",
]


class WorkbenchError(Exception):
    """A user-facing error: the command line prints its message as one line, no traceback."""


class DataError(WorkbenchError):
    """The data cannot be used (missing, malformed, NaN, wrong shape...)."""


class ContextError(WorkbenchError, ValueError):
    """A context (a label, context columns) that the conditional model cannot take."""


class RunError(WorkbenchError):
    """A run folder cannot be used as asked (exists, differs, missing, corrupt)."""


class NonFiniteError(WorkbenchError):
    """Training produced a NaN or inf."""


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says that memory ran out (the host's or a GPU's, however torch or a
    library under it words it)."""
    import torch

    if isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text or "ALLOC_FAILED" in text
    )
