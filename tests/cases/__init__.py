"""Every case of the generic bijection test, family by family (each module is imported here
explicitly, so deleting one fails instead of dropping its cases)."""

from __future__ import annotations

from . import autoregressive, continuous, image, integer, options, residual, vector
from .base import Case

CASES: list[Case] = [
    *vector.CASES,
    *image.CASES,
    *autoregressive.CASES,
    *continuous.CASES,
    *residual.CASES,
    *options.CASES,
    *integer.CASES,
]

__all__ = ["CASES", "Case"]
