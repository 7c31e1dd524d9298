"""Every case of the generic bijection test, family by family (each module is imported here
explicitly, so deleting one fails instead of dropping its cases)."""

from __future__ import annotations

from . import (
    augmented,
    autoregressive,
    bnaf,
    continuous,
    defaults,
    emerging,
    flowmatching,
    image,
    integer,
    manifolds,
    mflow,
    monotone,
    options,
    residual,
    transformer,
    vector,
)
from .base import Case

CASES: list[Case] = [
    *vector.CASES,
    *image.CASES,
    *emerging.CASES,
    *autoregressive.CASES,
    *bnaf.CASES,
    *monotone.CASES,
    *continuous.CASES,
    *flowmatching.CASES,
    *residual.CASES,
    *options.CASES,
    *integer.CASES,
    *manifolds.CASES,
    *mflow.CASES,
    *augmented.CASES,
    *transformer.CASES,
    *defaults.CASES,
]

__all__ = ["CASES", "Case"]
