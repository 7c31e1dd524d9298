"""Generic-test cases for the residual-flow family: planar, radial, Sylvester, residual blocks.

Planar, Sylvester and residual blocks have numerical data-to-noise inverses; the generic test
checks them at their declared ``numeric_inverse`` tolerance.
"""

from __future__ import annotations

import flowforge as ff
from flowforge import transforms as T

from .base import Case

CASES: list[Case] = []

for d in (1, 3):
    CASES += [
        Case(f"planar-{d}", lambda d=d: T.Planar(d)),
        Case(f"radial-{d}", lambda d=d: T.Radial(d)),
        Case(f"residual-block-{d}", lambda d=d: T.ResidualBlock(d, hidden=(8,))),
    ]
for kind in T.Sylvester.KINDS:
    CASES.append(Case(f"sylvester-{kind}-3", lambda kind=kind: T.Sylvester(3, kind)))
CASES += [
    Case("sylvester-orthogonal-rank2-4", lambda: T.Sylvester(4, rank=2)),
    Case("sylvester-triangular-flip-3", lambda: T.Sylvester(3, "triangular", flip=True)),
    Case("sylvester-householder-1refl-3", lambda: T.Sylvester(3, "householder", None, 1)),
    Case(
        "residual-block-elu-2layers-3",
        lambda: T.ResidualBlock(3, hidden=(8, 8), activation="elu", coeff=0.7),
    ),
    # amortised: parameters offset by an MLP of the context
    Case("planar-context-3", lambda: T.Planar(3, context_features=2, hidden=(8,))),
    Case("radial-context-3", lambda: T.Radial(3, context_features=2, hidden=(8,))),
    Case(
        "sylvester-orthogonal-context-3",
        lambda: T.Sylvester(3, context_features=2, hidden=(8,)),
    ),
    Case(
        "sylvester-householder-context-3",
        lambda: T.Sylvester(3, "householder", context_features=2, hidden=(8,)),
    ),
    Case(
        "residual-block-context-3",
        lambda: T.ResidualBlock(3, hidden=(8,), context_features=2),
    ),
    # models
    Case("Planar", lambda: ff.models.Planar(features=3, layers=3)),
    Case("Radial", lambda: ff.models.Radial(features=3, layers=3)),
    Case(
        "Sylvester-householder",
        lambda: ff.models.Sylvester(features=3, layers=2, kind="householder"),
    ),
    Case(
        "Sylvester-triangular-context-diag",
        lambda: ff.models.Sylvester(
            features=3, layers=2, kind="triangular", context_features=2, hidden=8, base="diag"
        ),
    ),
    Case(
        "ResidualFlow",
        lambda: ff.models.ResidualFlow(features=3, blocks=2, hidden=(8,)),
    ),
    Case(
        "ResidualFlow-density-context",
        lambda: ff.models.ResidualFlow(
            features=2, blocks=2, hidden=(8,), closed_form="density", context_features=2
        ),
    ),
]
