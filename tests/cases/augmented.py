"""Generic-test cases for augmented flows (``ff.models.build("augmented")``): an augmented flow
is not a Flow on R^D (its log_prob is a bound over auxiliary draws), so the case is its joint
flow over D + A features, a Flow of existing layers, built the way the builder builds it (each
kind, and a conditional one). Its own properties (the bound, K, training, save/load of the whole
model) are in ``tests/test_augmented.py``."""

from __future__ import annotations

import flowforge as ff

from .base import Case, perturbed

CASES: list[Case] = []


def _joint(flow: str, features: int = 3, extra: int = 2, context_features: int = 0):
    def build():
        m = ff.models.build("augmented", features=features, extra=extra, flow=flow, layers=2,
                            hidden=[8], encoder_hidden=[8], activation="tanh",
                            context_features=context_features)  # fmt: skip
        return perturbed(m.joint, 0.2)

    return build


CASES.append(Case("augmented-realnvp-joint", _joint("realnvp"), covers="augmented"))
CASES.append(Case("augmented-nsf-joint", _joint("nsf", 2, 1), covers="augmented"))
CASES.append(Case("augmented-maf-joint-context", _joint("maf", 1, 2, 3), covers="augmented"))
