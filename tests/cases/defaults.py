"""Generic-test cases for the data-initialised standardisation (``DataStandardize``, the first
layer of the vector builders' defaults) and for models built with their defaults on data far
from the unit scale."""

from __future__ import annotations

import torch

import flowforge as ff
from flowforge import transforms as T

from .base import Case

CASES: list[Case] = []


def _initialised(d: int) -> T.DataStandardize:
    layer = T.DataStandardize(d)
    g = torch.Generator().manual_seed(d)
    layer(torch.randn(64, d, generator=g) * torch.linspace(0.5, 4, d) + torch.linspace(-3, 3, d))
    assert bool(layer.initialized)
    return layer


def _raw(n, shape):
    """Data on a raw scale (about +-8), as the models' defaults must take."""
    return torch.randn(n, *shape) * 4 + 1


def _trained_once(name: str, d: int):
    """A default model whose DataStandardize has seen one raw batch."""
    flow = ff.models.build(name, features=d, layers=2, hidden=(8,))
    flow.log_prob(_raw(32, (d,)))
    return flow


for d in (1, 3):
    CASES.append(Case(f"data-standardize-{d}", lambda d=d: _initialised(d), sample=_raw))
for name in ("nsf", "maf", "realnvp"):
    CASES.append(
        Case(f"{name}-defaults-raw", lambda name=name: _trained_once(name, 3), sample=_raw)
    )
