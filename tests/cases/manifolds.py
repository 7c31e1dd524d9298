"""Generic-test cases for the flows on known manifolds: circle maps, couplings on tori and on
the sphere's cylindrical coordinates, the sphere's chart, and the TorusFlow/SphereFlow models.
Inputs and noise are drawn on the manifold (angles in [-pi, pi), heights in [-1, 1], unit
vectors): the layers refuse anything else."""

from __future__ import annotations

import math

import torch

import flowforge as ff
from flowforge import transforms as T

from .base import Case

CASES: list[Case] = []


def angles(n, shape):
    # inside [-pi, pi), away from the seam where a wrapped round trip may jump by 2 pi
    return (torch.rand(n, *shape) * 2 - 1) * (math.pi - 0.05)


def cylinder(n, shape):
    u = torch.rand(n, 2) * 2 - 1
    return u * torch.tensor([math.pi - 0.05, 0.95])


def sphere(n, shape):
    x = torch.randn(n, 3, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    # keep away from the poles, where the longitude is undefined
    while (x[:, 2].abs() > 0.95).any():
        bad = x[:, 2].abs() > 0.95
        y = torch.randn(int(bad.sum()), 3, dtype=torch.float64)
        x[bad] = y / y.norm(dim=1, keepdim=True)
    return x


for kind in ("spline", "moebius"):
    for d in (3,):  # (one angle: the TorusFlow-1 cases)
        CASES.append(
            Case(
                f"circular-elementwise-{kind}-{d}",
                lambda d=d, kind=kind: T.CircularElementwise(d, kind, bins=4),
                sample=angles,
                noise=angles,
            )
        )
    for d, mask in ((2, [True, False]), (3, [False, True, False])):
        CASES.append(
            Case(
                f"circular-coupling-{kind}-{d}",
                lambda d=d, mask=mask, kind=kind: T.CircularCoupling(
                    [True] * d, mask, kind, bins=4, hidden=(8,), activation="tanh"
                ),
                sample=angles,
                noise=angles,
            )
        )
    for mask in ([True, False], [False, True]):
        CASES.append(
            Case(
                f"cylinder-coupling-{kind}-{'moves-t' if mask[0] else 'moves-phi'}",
                lambda mask=mask, kind=kind: T.CircularCoupling(
                    [True, False], mask, kind, bins=4, hidden=(8,), activation="tanh"
                ),
                sample=cylinder,
                noise=cylinder,
            )
        )
    for d in (1, 2):  # (three angles: the circular-coupling-3 cases)
        CASES.append(
            Case(
                f"TorusFlow-{kind}-{d}",
                lambda d=d, kind=kind: ff.models.TorusFlow(
                    features=d, layers=2, bins=4, hidden=(8,), kind=kind, activation="tanh"
                ),
                sample=angles,
                noise=angles,
            )
        )
    CASES.append(
        Case(
            f"SphereFlow-{kind}",
            lambda kind=kind: ff.models.SphereFlow(
                layers=3, bins=4, hidden=(8,), kind=kind, activation="tanh"
            ),
            sample=sphere,
            noise=cylinder,
        )
    )

CASES.append(Case("sphere-to-cylinder", T.SphereToCylinder, sample=sphere, noise=cylinder))
