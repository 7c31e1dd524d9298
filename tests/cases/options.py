"""Generic-test cases for the data options and switches: learnable and class-conditional
bases, variational dequantization (its q-flow is a Transform of its own), Glow's mask/ReZero
switches."""

from __future__ import annotations

import flowforge as ff
from flowforge import transforms as T

from .base import Case, in_levels, in_unit_interval

TINY_DEQ = {"name": "variational", "steps": 1, "hidden": 4, "blocks": 0}
TINY_MOG = {"name": "made-mog", "hidden": [8], "components": 2}

CASES: list[Case] = [
    Case(
        "RealNVP-made-mog",
        lambda: ff.models.RealNVP(features=4, layers=2, hidden=(8,), base=TINY_MOG),
    ),
    Case(
        "RealNVP-context-made-mog",
        lambda: ff.models.RealNVP(
            features=3, layers=2, hidden=(8,), context_features=2, base=TINY_MOG
        ),
    ),
    Case(  # raw contexts, standardised in float64 by the flow (statistics in its config)
        "MAF-context-standardized",
        lambda: ff.models.context_standardized(
            ff.models.MAF(features=3, layers=2, hidden=(8,), context_features=2),
            loc=[1e3, -5.0],
            scale=[0.5, 2.0],
        ),
    ),
    Case(
        "Glow-variational-deq-made-mog",
        lambda: ff.models.Glow(
            shape=(1, 4, 4),
            steps=2,
            hidden=8,
            blocks=0,
            levels=17,
            dequantization=TINY_DEQ,
            base=TINY_MOG,
        ),
        sample=in_levels(17),
    ),
    Case(
        "Glow-checkerboard-rezero-class-gaussian",
        lambda: ff.models.Glow(
            shape=(1, 4, 4),
            steps=2,
            hidden=8,
            blocks=0,
            context_features=3,
            mask="checkerboard",
            rezero=True,
            base="class-gaussian",
            levels=17,
        ),
        sample=in_levels(17),
    ),
    Case(
        "RealNVP-image-variational-deq",
        lambda: ff.models.RealNVP(
            shape=(1, 4, 4),
            scales=1,
            hidden=4,
            blocks=0,
            final_couplings=2,
            levels=17,
            dequantization="variational",
        ),
        sample=in_levels(17),
    ),
]
# the variational dequantizer's q-flow (u in (0, 1) -> noise, conditioned on the data x)
CASES += [
    Case(
        "variational-deq-q-flow-3",
        lambda: T.VariationalDequantization(3, levels=5, steps=2, hidden=8).flow,
        sample=in_unit_interval,
    ),
    Case(
        "variational-deq-q-flow-2x2x2",
        lambda: T.VariationalDequantization((2, 2, 2), levels=5, steps=2, hidden=4).flow,
        sample=in_unit_interval,
    ),
]
