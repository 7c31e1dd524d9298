"""The flowforge workbench: datasets, one trainer, reports and the ``flowforge`` command.

The library never imports this package; it imports the library. Python users can drive it
without the command line::

    from flowforge.workbench import load_dataset, train, load_run
    run = train({"model": "realnvp", "data": "moons", "train": {"epochs": 5}}, out="runs/m")
    flow = load_run("runs/m")       # scores raw data, standardisation included

Modules, by concern: ``errors``, ``config`` (defaults, files, checks), ``data`` (datasets),
``build`` (the model a config asks for), ``runs`` (the run folder), ``checkpoint``,
``distributed``, ``trainer`` (the one training loop), ``runner`` (a whole run: ``train``),
``warm_start`` (a run started from another's model: ``init_from``), ``evaluate``, ``vi``
(fit-target), ``report`` (figures and report.html), ``allocator`` (the process's malloc
settings), ``cli`` (the command). See ``docs/workbench.md``.
"""

# ruff: noqa: F401 (the TYPE_CHECKING imports re-export the names imported on first use)

import importlib as _importlib
from typing import TYPE_CHECKING

# Imported on first use (PEP 562): the command line's --help must not wait for torch.
_NAMES = {
    "build_flow": "build",
    "DEFAULT_TRAIN": "config",
    "read_config": "config",
    "resolve_config": "config",
    "DATASETS": "data",
    "Dataset": "data",
    "load_dataset": "data",
    "ContextError": "errors",
    "DataError": "errors",
    "NonFiniteError": "errors",
    "RunError": "errors",
    "WorkbenchError": "errors",
    "load_run": "runs",
    "read_metrics": "runs",
    "evaluate_run": "evaluate",
    "write_report": "report",
    "train": "runner",
    "NLL": "trainer",
    "Loss": "trainer",
    "FlowMatchingObjective": "trainer",
    "Objective": "trainer",
    "ReverseKL": "trainer",
    "Trainer": "trainer",
    "TrainingWarning": "trainer",
    "reuse_freed_memory": "allocator",
}

__all__ = [
    "DATASETS",
    "DEFAULT_TRAIN",
    "ContextError",
    "DataError",
    "Dataset",
    "FlowMatchingObjective",
    "Loss",
    "NLL",
    "NonFiniteError",
    "Objective",
    "ReverseKL",
    "RunError",
    "Trainer",
    "TrainingWarning",
    "WorkbenchError",
    "build_flow",
    "evaluate_run",
    "load_dataset",
    "load_run",
    "read_config",
    "read_metrics",
    "resolve_config",
    "reuse_freed_memory",
    "train",
    "write_report",
]

if TYPE_CHECKING:  # what type checkers and IDEs see of the names imported on first use
    from .allocator import reuse_freed_memory
    from .build import build_flow
    from .config import DEFAULT_TRAIN, read_config, resolve_config
    from .data import DATASETS, Dataset, load_dataset
    from .errors import ContextError, DataError, NonFiniteError, RunError, WorkbenchError
    from .evaluate import evaluate_run
    from .report import write_report
    from .runner import train
    from .runs import load_run, read_metrics
    from .trainer import (
        NLL,
        FlowMatchingObjective,
        Loss,
        Objective,
        ReverseKL,
        Trainer,
        TrainingWarning,
    )


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(_importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowforge.workbench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
