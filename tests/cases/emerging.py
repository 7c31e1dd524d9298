"""Generic-test cases for emerging convolutions (:class:`~flowforge.transforms.EmergingConv2d`)
alone, with each exact solver and the parallel one, and in a tiny Glow."""

from __future__ import annotations

import flowforge as ff
from flowforge import transforms as T

from .base import Case, in_levels

CASES: list[Case] = [
    Case("emerging-3x3-2x4x4", lambda: T.EmergingConv2d((2, 4, 4))),
    Case(
        "emerging-3x3-sequential-2x4x4",
        lambda: T.EmergingConv2d((2, 4, 4), solver="sequential"),
    ),
    # the parallel solver stops at tol=1e-10, far below the float64 check's cap
    Case(
        "emerging-3x3-parallel-2x4x4",
        lambda: T.EmergingConv2d((2, 4, 4), solver="parallel", tol=1e-10),
    ),
    # a kernel larger than the image, on a non-square one with odd channels
    Case("emerging-5x5-3x3x5", lambda: T.EmergingConv2d((3, 3, 5), kernel_size=5)),
    Case("emerging-1x1-3x2x2", lambda: T.EmergingConv2d((3, 2, 2), kernel_size=1)),
    Case(
        "Glow-emerging-1x4x4",
        lambda: ff.models.Glow(
            shape=(1, 4, 4), scales=2, steps=1, hidden=8, blocks=0, permutation="emerging"
        ),
    ),
    Case(
        "Glow-emerging5-levels-2x4x4",
        lambda: ff.models.Glow(
            shape=(2, 4, 4),
            scales=1,
            steps=2,
            hidden=8,
            blocks=0,
            permutation="emerging-5",
            levels=17,
        ),
        sample=in_levels(17),
    ),
]

assert len({c.name for c in CASES}) == len(CASES)
