"""Generic-test cases for the integer discrete flows: the rounded coupling (vectors, images,
with a context, ReZero) and the IDF models. Their inputs are integers, as in use; the checks
also run them on fresh real-valued noise, where the rounded translation is still exactly
invertible."""

from __future__ import annotations

import torch

import flowforge as ff
from flowforge import transforms as T
from flowforge.nets import ConvResNet

from .base import Case, mlp


def integers(levels):
    return lambda n, shape: torch.randint(0, levels, (n, *shape)).float()


CASES: list[Case] = [
    Case(
        "integer-coupling-4",
        lambda: T.IntegerCoupling(T.half_mask(4), mlp(), 8.0, 17.0),
        sample=integers(17),
    ),
    Case(
        "integer-coupling-context-rezero-3",
        lambda: T.IntegerCoupling(T.half_mask(3), mlp(2), 2.0, 60.0, 2, rezero=True),
        sample=integers(5),
    ),
    Case(
        "integer-coupling-image",
        lambda: T.IntegerCoupling(
            T.channel_mask((2, 2, 2)),
            lambda i, o: ConvResNet(i, o, 8, 0, activation="tanh"),
            127.5,
            256.0,
        ),
        sample=integers(256),
    ),
    Case(
        "IDF",
        lambda: ff.models.IDF(
            features=5, levels=17, layers=3, hidden=(8,), prior_blocks=2, prior_hidden=(8,)
        ),
        sample=integers(17),
    ),
    Case(
        "IDF-context-half",
        lambda: ff.models.IDF(
            features=4,
            levels=5,
            layers=2,
            hidden=(8,),
            partitions=2,
            permutation="reverse",
            components=2,
            context_features=2,
        ),
        sample=integers(5),
    ),
    Case(
        "IDF-image",
        lambda: ff.models.IDF(shape=(1, 4, 4), levels=17, layers=2, hidden=8, blocks=0),
        sample=integers(17),
    ),
]
