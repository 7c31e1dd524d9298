"""Generic-test cases for issue 8's improvements: learnable and class-conditional bases,
variational dequantization, Glow's mask/ReZero switches (imported by ``registry.py``)."""

from __future__ import annotations

import flowforge as ff
from registry import Case, in_levels

TINY_DEQ = {"name": "variational", "steps": 1, "hidden": 4, "blocks": 0}
TINY_MOG = {"name": "made-mog", "hidden": [8], "components": 2}

CASES: list[Case] = [
    Case(
        "RealNVP-made-mog",
        lambda: ff.models.RealNVP(features=4, layers=2, hidden=(8,), base=TINY_MOG),
        (4,),
        is_flow=True,
    ),
    Case(
        "RealNVP-context-made-mog",
        lambda: ff.models.RealNVP(
            features=3, layers=2, hidden=(8,), context_features=2, base=TINY_MOG
        ),
        (3,),
        context=2,
        is_flow=True,
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
        (1, 4, 4),
        sample=in_levels(17),
        is_flow=True,
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
        (1, 4, 4),
        context=3,
        sample=in_levels(17),
        is_flow=True,
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
        (1, 4, 4),
        sample=in_levels(17),
        is_flow=True,
    ),
]
