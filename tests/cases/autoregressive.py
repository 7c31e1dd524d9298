"""Generic-test cases for autoregressive layers, splines and the MAF/IAF/NSF models."""

from __future__ import annotations

import torch

import flowforge as ff
from flowforge import transforms as T

from .base import Case, in_levels, mlp


def ar(d, transformer, context=0, **kw):
    return lambda: T.Autoregressive(d, transformer(), (12, 12), context, **kw)


CASES: list[Case] = []

for d in (1, 2, 5):
    CASES += [
        Case(f"maf-layer-{d}", ar(d, T.Affine)),
        Case(f"ar-additive-{d}", ar(d, T.Additive, order="reversed")),
        Case(f"ar-spline-{d}", ar(d, lambda: T.RationalQuadratic(4, 2.0))),
        Case(f"iaf-layer-{d}", lambda d=d: ff.Inverse(ar(d, T.Affine, order="random")())),
    ]
CASES += [
    Case("maf-layer-context-4", ar(4, T.Affine, 3, order="random")),
    Case("maf-layer-residual-4", ar(4, T.Affine, residual=True)),
    Case(
        "ar-spline-residual-context-3",
        ar(3, lambda: T.RationalQuadratic(3, 1.5), 2, residual=True),
    ),
    Case(
        "ar-spline-1-context",
        ar(1, lambda: T.RationalQuadratic(3, 1.5), 2),
    ),
    Case(
        "spline-coupling-4",
        lambda: T.Coupling(T.half_mask(4), mlp(), T.RationalQuadratic(5, 2.0)),
    ),
    Case(
        "spline-coupling-context-3",
        lambda: T.Coupling(T.alternating_mask(3), mlp(2), T.RationalQuadratic(3, 1.0), 2),
    ),
]

# structured (graph) autoregression: 0 and 3 are roots, 1 <- 0, 2 <- {0, 1}, 4 <- {2, 3}
# (depth 3: four generations); an edgeless graph on 3 dimensions; the one-dimensional graph
DAG5 = [
    [0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 1, 1, 0],
]
CASES += [
    Case("maf-layer-adjacency-5", ar(5, T.Affine, adjacency=DAG5)),
    Case(
        "ar-spline-adjacency-residual-context-5",
        ar(5, lambda: T.RationalQuadratic(3, 1.5), 2, residual=True, adjacency=DAG5),
    ),
    Case("maf-layer-adjacency-edgeless-3", ar(3, T.Affine, 2, adjacency=torch.zeros(3, 3))),
    Case("iaf-layer-adjacency-1", lambda: ff.Inverse(ar(1, T.Affine, adjacency=[[0]])())),
]

small = dict(layers=2, hidden=(8, 8))
CASES += [
    Case("MAF", lambda: ff.models.MAF(features=4, **small)),
    Case("MAF-1", lambda: ff.models.MAF(features=1, **small)),
    Case(
        "MAF-context-random-lu-bn-residual",
        lambda: ff.models.MAF(
            features=3,
            context_features=2,
            permutation="random",
            lu=True,
            batch_norm=True,
            residual=True,
            base="diag",
            **small,
        ),
    ),
    Case(
        "MAF-levels",
        lambda: ff.models.MAF(features=3, levels=17, **small),
        sample=in_levels(17),
    ),
    Case("IAF", lambda: ff.models.IAF(features=4, **small)),
    Case("IAF-1", lambda: ff.models.IAF(features=1, **small)),
    Case(
        "IAF-context-mixture",
        lambda: ff.models.IAF(features=3, context_features=2, base="mixture", **small),
    ),
    Case("NSF", lambda: ff.models.NSF(features=4, bins=4, **small)),
    Case("NSF-2", lambda: ff.models.NSF(features=2, bins=4, **small)),
    Case(
        "NSF-odd-noperm-residual-context",
        lambda: ff.models.NSF(
            features=5, bins=3, permutation=None, residual=True, context_features=2, **small
        ),
    ),
    Case(
        "NSF-AR",
        lambda: ff.models.NSF(features=3, bins=4, autoregressive=True, lu=True, **small),
    ),
    Case("MAF-adjacency", lambda: ff.models.MAF(features=5, adjacency=DAG5, **small)),
    Case(
        "MAF-adjacency-context-bn-residual",
        lambda: ff.models.MAF(
            features=5,
            context_features=2,
            adjacency=DAG5,
            batch_norm=True,
            residual=True,
            **small,
        ),
    ),  # fmt: skip
    Case("IAF-adjacency", lambda: ff.models.IAF(features=5, adjacency=DAG5, **small)),
    Case(
        "IAF-adjacency-context",
        lambda: ff.models.IAF(features=5, context_features=2, adjacency=DAG5, **small),
    ),
    Case(
        "NSF-AR-adjacency-context",
        lambda: ff.models.NSF(
            features=5, bins=4, autoregressive=True, adjacency=DAG5, context_features=2, **small
        ),
    ),
    Case(
        "NSF-integer-columns",
        lambda: ff.models.integer_columns(ff.models.NSF(features=3, bins=4, **small), [1]),
        sample=lambda n, shape: torch.stack(
            [torch.randn(n), torch.randint(-3, 4, (n,)).float(), torch.randn(n)], 1
        ),
    ),
    Case(
        "NSF-AR-1-levels",
        lambda: ff.models.NSF(features=1, bins=4, autoregressive=True, levels=5, **small),
        sample=in_levels(5),
    ),
]
