"""flowforge: normalizing flows for PyTorch, with exact likelihoods and a training workbench.

>>> import flowforge as ff
>>> flow = ff.models.RealNVP(features=2, layers=4, hidden=(32, 32))
>>> x = torch.randn(10, 2)
>>> flow.log_prob(x).shape
torch.Size([10])
"""

import torch  # noqa: F401  (doctests use it)

from . import codec, distributions, models, nets, objectives, targets, transforms
from .core import Compose, Flow, Inverse, Transform
from .io import load, save
from .objectives import bits_per_dim, nll, reverse_kl

__version__ = "0.1.0"

__all__ = [
    "Compose",
    "Flow",
    "Inverse",
    "Transform",
    "bits_per_dim",
    "codec",
    "distributions",
    "load",
    "models",
    "nets",
    "nll",
    "objectives",
    "reverse_kl",
    "save",
    "targets",
    "transforms",
]
