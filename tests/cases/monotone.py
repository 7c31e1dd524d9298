"""Generic-test cases for the monotone transformers (UMNN, sum-of-squares, Bernstein) in
autoregressive and coupling layers, and the NAF/UNAF/SOSPF/BPF builders."""

from __future__ import annotations

import flowforge as ff
from flowforge import transforms as T

from .base import Case, mlp


def umnn():
    return T.UnconstrainedMonotonic(embedding=3, hidden=(8,), nodes=9, bound=3.0)


def sos():
    return T.SumOfSquares(polynomials=2, degree=2, bound=3.0)


def bernstein():
    return T.Bernstein(degree=5, bound=3.0)


def ar(d, transformer, context=0, **kw):
    return lambda: T.Autoregressive(d, transformer(), (12, 12), context, **kw)


CASES: list[Case] = []
for name, make in (("umnn", umnn), ("sos", sos), ("bernstein", bernstein)):
    CASES += [
        Case(f"ar-{name}-3", ar(3, make)),
        Case(f"ar-{name}-1-context", ar(1, make, 2)),
        Case(f"{name}-coupling-context-4", lambda make=make: T.Coupling(
            T.half_mask(4), mlp(2), make(), 2)),
    ]  # fmt: skip

small = dict(layers=2, hidden=(8, 8))
CASES += [
    Case("NAF", lambda: ff.models.NAF(features=3, mixtures=2, **small)),
    Case(
        "NAF-coupling-context",
        lambda: ff.models.NAF(features=4, autoregressive=False, context_features=2, **small),
    ),
    Case("UNAF", lambda: ff.models.UNAF(features=3, integrand=(8,), nodes=9, **small)),
    Case(
        "UNAF-coupling-context-lu",
        lambda: ff.models.UNAF(
            features=3, autoregressive=False, context_features=2, lu=True, nodes=5, **small
        ),
    ),
    Case("SOSPF", lambda: ff.models.SOSPF(features=3, degree=3, **small)),
    Case("SOSPF-1", lambda: ff.models.SOSPF(features=1, polynomials=1, **small)),
    Case("BPF", lambda: ff.models.BPF(features=3, degree=6, **small)),
    Case(
        "BPF-coupling-residual",
        lambda: ff.models.BPF(features=4, autoregressive=False, residual=True, **small),
    ),
]
