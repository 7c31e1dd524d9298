"""The flowforge workbench: datasets, one trainer, reports and the ``flowforge`` command.

The library never imports this package; it imports the library. Python users can drive it
without the command line::

    from flowforge.workbench import load_dataset, train, load_run
    run = train({"model": "realnvp", "data": "moons", "train": {"epochs": 5}}, out="runs/m")
    flow = load_run("runs/m")       # scores raw data, standardisation included

Modules, by concern: ``errors``, ``config`` (defaults, files, checks), ``data`` (datasets),
``build`` (the model a config asks for), ``runs`` (the run folder), ``checkpoint``,
``distributed``, ``trainer`` (the one training loop), ``train`` (a whole run), ``evaluate``,
``vi`` (fit-target), ``report`` (figures and report.html), ``cli`` (the command). See
``docs/workbench.md``.
"""

from .build import build_flow
from .config import DEFAULT_TRAIN, read_config, resolve_config
from .data import DATASETS, Dataset, load_dataset
from .errors import ContextError, DataError, NonFiniteError, RunError, WorkbenchError
from .runs import load_run
from .train import train
from .trainer import NLL, Loss, Objective, ReverseKL, Trainer

__all__ = [
    "DATASETS",
    "DEFAULT_TRAIN",
    "ContextError",
    "DataError",
    "Dataset",
    "Loss",
    "NLL",
    "NonFiniteError",
    "Objective",
    "ReverseKL",
    "RunError",
    "Trainer",
    "WorkbenchError",
    "build_flow",
    "load_dataset",
    "load_run",
    "read_config",
    "resolve_config",
    "train",
]
