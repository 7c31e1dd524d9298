"""flowforge: normalizing flows for PyTorch, with exact likelihoods and a training workbench.

>>> import flowforge as ff
>>> flow = ff.models.RealNVP(features=2, layers=4, hidden=(32, 32))
>>> x = torch.randn(10, 2)
>>> flow.log_prob(x).shape
torch.Size([10])

The names below are imported on first use (PEP 562), so ``import flowforge`` and the
``flowforge`` command's ``--help`` do not pay for importing torch.
"""

import importlib

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

__all__ = sorted(set(_NAMES) | set(_SUBMODULES) - {"io"})


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowforge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
