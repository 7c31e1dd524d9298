"""flowforge: normalizing flows for PyTorch, with exact likelihoods and a training workbench.

>>> import flowforge as ff
>>> flow = ff.models.RealNVP(features=2, layers=4, hidden=(32, 32))
>>> x = torch.randn(10, 2)
>>> flow.log_prob(x).shape
torch.Size([10])

The names below are imported on first use (PEP 562), so ``import flowforge`` and the
``flowforge`` command's ``--help`` do not pay for importing torch.
"""

# ruff: noqa: F401 (the TYPE_CHECKING imports re-export the names imported on first use)

import importlib as _importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_SUBMODULES = (
    "codec",
    "bitsback",
    "core",
    "diagnostics",
    "testing",
    "attention",
    "distributions",
    "io",
    "matching",
    "models",
    "nets",
    "objectives",
    "reversible",
    "targets",
    "torch_distributions",
    "transforms",
)
_NAMES = {
    "Compose": "core",
    "Flow": "core",
    "Inverse": "core",
    "Transform": "core",
    "memory_saving": "core",
    "load": "io",
    "save": "io",
    "bits_per_dim": "objectives",
    "nll": "objectives",
    "reverse_kl": "objectives",
}

# (a list as written, which type checkers read; the tests hold it to the two tables above)
__all__ = [
    "Compose",
    "Flow",
    "Inverse",
    "Transform",
    "attention",
    "bits_per_dim",
    "bitsback",
    "codec",
    "core",
    "diagnostics",
    "distributions",
    "load",
    "matching",
    "memory_saving",
    "models",
    "nets",
    "nll",
    "objectives",
    "reverse_kl",
    "reversible",
    "save",
    "targets",
    "testing",
    "torch_distributions",
    "transforms",
]

if TYPE_CHECKING:  # what type checkers and IDEs see of the names imported on first use
    from . import (
        attention,
        bitsback,
        codec,
        core,
        diagnostics,
        distributions,
        io,
        matching,
        models,
        nets,
        objectives,
        reversible,
        targets,
        testing,
        torch_distributions,
        transforms,
    )
    from .core import Compose, Flow, Inverse, Transform, memory_saving
    from .io import load, save
    from .objectives import bits_per_dim, nll, reverse_kl


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        value = getattr(_importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowforge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
