"""Continuous flows in the generic test: exact trace, float64, tight dopri5 (or a fixed grid)."""

from __future__ import annotations

import flowforge as ff
from flowforge import transforms as T

from .base import Case

TIGHT = dict(rtol=1e-8, atol=1e-8, trace="exact")

CASES = [
    Case("cnf-2", lambda: T.CNF(2, hidden=(8,), **TIGHT)),
    Case(
        "cnf-3-context",
        lambda: T.CNF(3, hidden=(8,), context_features=2, activation="softplus", **TIGHT),
    ),
    Case(
        "cnf-2-rk4",
        lambda: T.CNF(2, hidden=(8,), method="rk4", step_size=0.01, trace="exact"),
    ),
    Case(
        "FFJORD",
        lambda: ff.models.FFJORD(features=3, blocks=2, hidden=(8,), **TIGHT),
    ),
    Case(
        "FFJORD-context-diag",
        lambda: ff.models.FFJORD(
            features=2, hidden=(8,), context_features=2, base="diag", actnorm=False, **TIGHT
        ),
    ),
]
