"""The flowforge workbench: datasets, a trainer, reports and the ``flowforge`` command.

The library never imports this package; it imports the library. Python users can drive it
without the command line::

    from flowforge.workbench import load_dataset, train, load_run
    run = train({"model": "realnvp", "data": "moons", "train": {"epochs": 5}}, out="runs/m")
    flow = load_run("runs/m")       # scores raw data, standardisation included

See ``docs/workbench.md``.
"""

from .data import DATASETS, Dataset, load_dataset
from .train import (
    RunError,
    Trainer,
    WorkbenchError,
    build_flow,
    load_run,
    resolve_config,
    train,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "RunError",
    "Trainer",
    "WorkbenchError",
    "build_flow",
    "load_dataset",
    "load_run",
    "resolve_config",
    "train",
]
