"""The workbench's user-facing errors: the command line prints their message as one line."""

from __future__ import annotations

import re

__all__ = [
    "WorkbenchError",
    "DataError",
    "ContextError",
    "RunError",
    "NonFiniteError",
    "out_of_memory",
    "visible",
    "shell_word",
    "one_line",
]

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # breaks too
_CONTROL_IN_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str, lines: bool = False) -> str:
    """``text`` with its control characters written as escapes (``\\x1b``), line breaks too
    unless ``lines``: what came from a file (a run's recorded warnings, a column's name)
    cannot move the cursor, fake a line, retitle the window or set the clipboard of the
    terminal that prints it."""
    pattern = _CONTROL_IN_LINES if lines else _CONTROL
    if not pattern.search(text):
        return text
    return pattern.sub(lambda m: repr(m.group())[1:-1], text)


_LINE_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*")


def one_line(text) -> str:
    """``text`` (a message, often an exception's) on one line: each line break, with the
    indentation around it, becomes one space. Other spaces stay as they are, so that a path
    with a leading, trailing or doubled space is printed as it was given."""
    return _LINE_BREAK.sub(" ", str(text)).strip("\n\r")


def shell_word(value) -> str:
    """``value`` (a path, a name) as one word of a command the user can paste into a POSIX
    shell: quoted where the shell would split or expand it, and a name that starts with ``-``
    written ``./-name``, so that the command does not read it as an option."""
    import shlex

    text = str(value)
    return shlex.quote("./" + text if text.startswith("-") else text)


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


SHOWN = 60  # the most characters of a value that an error message repeats


def shown(value, limit: int = SHOWN) -> str:
    """``value`` as an error message repeats it: an array or tensor by its type and shape, any
    other value by its ``repr`` cut to ``limit`` characters (a message is one short line)."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (str, bytes)) and hasattr(value, "dtype"):
        kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
        return f"a {kind} of shape {tuple(shape)}"
    text = " ".join(repr(value).split())  # (one line: a table's repr spans many)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def in_memory_data(value) -> str:
    """The refusal of data given as a value (an array, a tensor, a list) where a dataset's
    name or a file's path is taken, with the two routes that work."""
    return (
        f"data must be a dataset name or a file path, got {shown(value)}: save an array with "
        "np.save('x.npy', x) and pass 'x.npy', or train tensors with "
        "Trainer(flow, x_train, x_val, ...)"
    )
