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

import importlib

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


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowforge.workbench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
