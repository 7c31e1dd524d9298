"""The registry of every layer and every model that the generic bijection test runs on.

A new layer joins by adding a :class:`Case` here (or in a ``cases_*.py`` module listed in
``MODULES``). Cases are built in float32 and the test moves them to float64 (which also checks
that ``.to(torch.float64)`` moves every buffer).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import flowforge as ff
from flowforge import transforms as T
from flowforge.nets import MLP


@dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]  # a Transform, or a Flow for a model
    shape: tuple[int, ...]  # event shape of the input
    context: int = 0  # context features
    sample: Callable[[int, tuple], torch.Tensor] | None = None  # input sampler (default randn)
    is_flow: bool = False
    tags: set = field(default_factory=set)

    def draw(self, n: int, dtype=torch.float64) -> torch.Tensor:
        if self.sample is not None:
            return self.sample(n, self.shape).to(dtype)
        return torch.randn(n, *self.shape, dtype=dtype)


def mlp(context=0, hidden=(16,)):
    return lambda i, o: MLP(i, o, hidden, context, activation="tanh")


def in_levels(levels):
    return lambda n, shape: torch.rand(n, *shape) * (levels - 0.02) + 0.01


CASES: list[Case] = []


def add(*cases: Case) -> None:
    CASES.extend(cases)


for d in (1, 2, 5):
    add(
        Case(f"reverse-{d}", lambda d=d: T.Reverse(d), (d,)),
        Case(f"permutation-{d}", lambda d=d: T.Permutation(d), (d,)),
        Case(f"scaling-{d}", lambda d=d: T.Scaling(d), (d,)),
        Case(f"lu-{d}", lambda d=d: T.LULinear(d), (d,)),
        Case(f"qr-{d}", lambda d=d: T.QRLinear(d), (d,)),
        Case(f"plain-linear-{d}", lambda d=d: T.PlainLinear(d), (d,)),
        Case(f"batchnorm-{d}", lambda d=d: T.BatchNorm(d), (d,)),
        Case(f"actnorm-{d}", lambda d=d: T.ActNorm(d), (d,)),
        Case(f"logit-{d}", lambda d=d: T.Logit(d, 17, 0.05), (d,), sample=in_levels(17)),
        Case(
            f"standardize-{d}",
            lambda d=d: T.Standardize(d, torch.linspace(-1, 1, d), torch.linspace(0.5, 2, d)),
            (d,),
        ),
    )

for d in (2, 5):
    for kind, mask in (("half", T.half_mask), ("alternating", T.alternating_mask)):
        for flip in (False, True):
            add(
                Case(
                    f"affine-coupling-{kind}{'-flip' if flip else ''}-{d}",
                    lambda d=d, mask=mask, flip=flip: T.Coupling(mask(d, flip), mlp(), T.Affine()),
                    (d,),
                )
            )
    add(
        Case(
            f"additive-coupling-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(), T.Additive()),
            (d,),
        ),
        Case(
            f"affine-coupling-context-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(3), T.Affine(), context_features=3),
            (d,),
            context=3,
        ),
        Case(
            f"affine-coupling-rezero-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(), T.Affine(), rezero=True),
            (d,),
        ),
        Case(
            f"affine-coupling-unbounded-{d}",
            lambda d=d: T.Coupling(T.half_mask(d), mlp(), T.Affine(bound=None)),
            (d,),
        ),
    )

add(
    Case(
        "compose",
        lambda: ff.Compose(
            T.ActNorm(4), T.Coupling(T.half_mask(4), mlp(2), T.Affine(), 2), T.LULinear(4)
        ),
        (4,),
        context=2,
    ),
    Case(
        "inverse-of-coupling",
        lambda: ff.Inverse(T.Coupling(T.half_mask(3), mlp(), T.Affine())),
        (3,),
    ),
    Case(
        "coupling-image-channel",
        lambda: T.Coupling(T.channel_mask((2, 3, 3)), lambda i, o: MLPImage(i, o), T.Affine()),
        (2, 3, 3),
    ),
    Case("lu-image", lambda: T.LULinear((3, 2, 2)), (3, 2, 2)),
    Case("actnorm-image", lambda: T.ActNorm((3, 2, 2)), (3, 2, 2)),
    Case("batchnorm-image", lambda: T.BatchNorm((3, 2, 2)), (3, 2, 2)),
)


class MLPImage(torch.nn.Module):
    """A per-pixel MLP (1x1 convolutions), enough to exercise image-shaped couplings."""

    def __init__(self, i, o, context=0):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(i + context, 8, 1), torch.nn.Tanh(), torch.nn.Conv2d(8, o, 1)
        )
        self.context = context

    def forward(self, x, context=None):
        if self.context:
            c = context[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, c], 1)
        return self.net(x)


add(
    Case(
        "coupling-image-checkerboard",
        lambda: T.Coupling(
            T.checkerboard_mask((2, 2, 3)), lambda i, o: MLPImage(i, o, 2), T.Affine(), 2
        ),
        (2, 2, 3),
        context=2,
    ),
)

# -- models --------------------------------------------------------------------------------------
MODEL_CASES = [
    Case("NICE", lambda: ff.models.NICE(features=5, layers=3, hidden=(8,)), (5,), is_flow=True),
    Case(
        "NICE-context-mixture",
        lambda: ff.models.NICE(
            features=4, layers=2, hidden=(8,), context_features=2, base="mixture"
        ),
        (4,),
        context=2,
        is_flow=True,
    ),
    Case(
        "RealNVP", lambda: ff.models.RealNVP(features=5, layers=3, hidden=(8,)), (5,), is_flow=True
    ),
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
        (4,),
        sample=in_levels(17),
        is_flow=True,
    ),
    Case(
        "RealNVP-context-rezero",
        lambda: ff.models.RealNVP(
            features=3, layers=2, hidden=(8,), context_features=2, rezero=True, base="diag"
        ),
        (3,),
        context=2,
        is_flow=True,
    ),
]
add(*MODEL_CASES)

# Later layer families register their cases in their own modules.
MODULES = [
    "cases_image",
    "cases_autoregressive",
    "cases_continuous",
    "cases_residual",
    "cases_improvements",
]
for _m in MODULES:
    try:
        add(*importlib.import_module(_m).CASES)
    except ModuleNotFoundError as e:
        if e.name != _m:
            raise
