"""Generic-test cases for the vector layers (linear, normalisation, preprocessing, couplings)
and the vector coupling models (NICE, RealNVP). Cases are built in float32 and the test moves
them to float64 (which also checks that ``.to(torch.float64)`` moves every buffer).
"""

from __future__ import annotations

import torch

import flowforge as ff
from flowforge import transforms as T
from flowforge.nets import ConvResNet

from .base import Case, in_levels, mlp

CASES: list[Case] = []


def add(*cases: Case) -> None:
    CASES.extend(cases)


# per entry, cycling: bounded below (log), above, on both sides (logit), and not at all
_LOWER, _UPPER = (0.0, None, -1.0, None), (None, 2.0, 3.0, None)


def _bounded(d):
    return T.Bounded(d, [_LOWER[i % 4] for i in range(d)], [_UPPER[i % 4] for i in range(d)])


def _in_bounds(n, shape):
    u = torch.rand(n, *shape) * 0.98 + 0.01
    cols = [
        (u[:, i] * 6, 2 - u[:, i] * 6, -1 + 4 * u[:, i], torch.randn(n))[i % 4]
        for i in range(shape[0])
    ]
    return torch.stack(cols, 1)


for d in (1, 2, 5):
    add(
        Case(f"bounded-{d}", lambda d=d: _bounded(d), sample=_in_bounds),
        Case(f"reverse-{d}", lambda d=d: T.Reverse(d)),
        Case(f"permutation-{d}", lambda d=d: T.Permutation(d)),
        Case(f"scaling-{d}", lambda d=d: T.Scaling(d)),
        Case(f"lu-{d}", lambda d=d: T.LULinear(d)),
        Case(f"qr-{d}", lambda d=d: T.QRLinear(d)),
        Case(f"plain-linear-{d}", lambda d=d: T.PlainLinear(d)),
        Case(f"batchnorm-{d}", lambda d=d: T.BatchNorm(d)),
        Case(f"actnorm-{d}", lambda d=d: T.ActNorm(d)),
        Case(f"logit-{d}", lambda d=d: T.Logit(d, 17, 0.05), sample=in_levels(17)),
        Case(
            f"whiten-{d}",
            lambda d=d: T.Whiten(
                d,
                torch.linspace(-1, 1, d),
                torch.eye(d) * torch.linspace(0.5, 2, d) + torch.ones(d, d).tril(-1) * 0.3,
            ),
        ),
        Case(
            f"standardize-{d}",
            lambda d=d: T.Standardize(d, torch.linspace(-1, 1, d), torch.linspace(0.5, 2, d)),
        ),
    )

for d in (2, 5):
    for kind, mask in (("half", T.half_mask), ("alternating", T.alternating_mask)):
        for flip in (False, True):
            add(
                Case(
                    f"affine-coupling-{kind}{'-flip' if flip else ''}-{d}",
                    lambda d=d, mask=mask, flip=flip: T.Coupling(mask(d, flip), mlp(), T.Affine()),
                )
            )
    add(
        Case(
            f"additive-coupling-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(), T.Additive()),
        ),
        Case(
            f"affine-coupling-context-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(3), T.Affine(), context_features=3),
        ),
        Case(
            f"affine-coupling-rezero-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(), T.Affine(), rezero=True),
        ),
        Case(
            f"affine-coupling-unbounded-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(), T.Affine(bound=None)),
        ),
        Case(
            f"affine-coupling-shift-first-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(), T.Affine(shift_first=True)),
        ),
    )

add(
    Case(
        "compose",
        lambda: ff.Compose(
            T.ActNorm(4), T.Coupling(T.half_mask(4), mlp(2), T.Affine(), 2), T.LULinear(4)
        ),
    ),
    Case(
        "inverse-of-coupling",
        lambda: ff.Inverse(T.Coupling(T.half_mask(3), mlp(), T.Affine())),
    ),
    Case(
        "coupling-image-channel",
        lambda: T.Coupling(
            T.channel_mask((2, 3, 3)),
            lambda i, o: ConvResNet(i, o, 8, 0, activation="tanh"),
            T.Affine(),
        ),
    ),
    Case("lu-image", lambda: T.LULinear((3, 2, 2))),
    Case("actnorm-image", lambda: T.ActNorm((3, 2, 2))),
    Case("batchnorm-image", lambda: T.BatchNorm((3, 2, 2))),
)


add(
    Case(
        "coupling-image-checkerboard",
        lambda: T.Coupling(
            T.checkerboard_mask((2, 2, 3)),
            lambda i, o: ConvResNet(i, o, 8, 0, 2, activation="tanh"),
            T.Affine(),
            2,
        ),
    ),
)

# -- models --------------------------------------------------------------------------------------
MODEL_CASES = [
    Case("NICE", lambda: ff.models.NICE(features=5, layers=3, hidden=(8,))),
    Case(
        "NICE-context-mixture",
        lambda: ff.models.NICE(
            features=4, layers=2, hidden=(8,), context_features=2, base="mixture"
        ),
    ),
    Case("RealNVP", lambda: ff.models.RealNVP(features=5, layers=3, hidden=(8,))),
    Case(
        "RealNVP-levels-bn-lu-diag",
        lambda: ff.models.RealNVP(
            features=4,
            layers=3,
            hidden=(8,),
            levels=17,
            batch_norm=True,
            permutation="lu",
            base="diag",
        ),
        sample=in_levels(17),
    ),
    Case(
        "RealNVP-context-rezero",
        lambda: ff.models.RealNVP(
            features=3, layers=2, hidden=(8,), context_features=2, rezero=True, base="diag"
        ),
    ),
    Case(
        "RealNVP-residual-context",
        lambda: ff.models.RealNVP(
            features=3, layers=2, hidden=(8, 8, 8), context_features=2, residual=True
        ),
    ),
]
add(*MODEL_CASES)
add(Case("identity-3", lambda: T.Identity(3)))
