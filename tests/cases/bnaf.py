"""Generic-test cases for block neural autoregressive flows: the transform (numerical
inverse, checked at its declared ``numeric_inverse``) and the BNAF builder."""

from __future__ import annotations

import flowforge as ff
from flowforge import transforms as T

from .base import Case

CASES: list[Case] = [
    Case("bnaf-layer-1", lambda: T.BlockNeuralAutoregressive(1, hidden=3)),
    Case("bnaf-layer-3", lambda: T.BlockNeuralAutoregressive(3, hidden=4, depth=2)),
    Case(
        "bnaf-layer-context-3",
        lambda: T.BlockNeuralAutoregressive(3, hidden=3, context_features=2),
    ),
    Case("BNAF", lambda: ff.models.BNAF(features=3, layers=2, hidden=4)),
    Case(
        "BNAF-context-diag",
        lambda: ff.models.BNAF(features=2, layers=2, hidden=3, context_features=2, base="diag"),
    ),
]
