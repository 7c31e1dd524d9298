"""Generic-test cases for the M-flow (``ff.models.build("mflow")``): an M-flow is not a Flow
on R^D (an injective map has no density there), so its two invertible parts are the cases: the
outer flow on R^D (LU-linear layers and affine couplings) and the inner flow on R^d. Its own
properties (log det(J^T J), projection, the density on the learned manifold) are in
``tests/test_mflow.py``."""

from __future__ import annotations

import flowforge as ff

from .base import Case, perturbed

CASES: list[Case] = []


def _part(part: str, variant: str = "m"):
    def build():
        m = ff.models.build("mflow", features=6, manifold_dim=2, outer_layers=2, inner_layers=2,
                            hidden=[8], activation="tanh", variant=variant)  # fmt: skip
        return perturbed(getattr(m, part), 0.2)

    return build


CASES.append(Case("mflow-outer", _part("outer"), covers="mflow"))
CASES.append(Case("mflow-inner", _part("inner"), covers="mflow"))
CASES.append(Case("mflow-me-outer", _part("outer", "me"), covers="mflow"))
