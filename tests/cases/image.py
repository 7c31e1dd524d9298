"""Generic-test cases for the image layers and models (imported by ``registry.py``)."""

from __future__ import annotations

import torch

import flowforge as ff
from flowforge import transforms as T
from flowforge.nets import ConvResNet

from .base import Case, in_levels


def conv(context=0, hidden=4, blocks=1):
    return lambda i, o: ConvResNet(i, o, hidden, blocks, context, activation="tanh")


def _factor_inner(shape, context=0):
    """A small conditional inner transform for FactorOut: ActNorm + channel coupling."""
    layers = [T.ActNorm(shape)]
    if shape[0] >= 2:
        layers.append(T.Coupling(T.channel_mask(shape), conv(context), T.Affine(), context))
    return ff.Compose(*layers)


CASES: list[Case] = []

# -- squeeze ---------------------------------------------------------------------------------------
for shape in ((1, 4, 4), (3, 2, 4)):
    CASES.append(Case(f"squeeze-{'x'.join(map(str, shape))}", lambda s=shape: T.Squeeze(s)))

# -- couplings with the conv conditioner (the one Coupling class, existing masks) ---------
# affine on every shape; flipped masks and additive couplings on (2, 4, 4) only (speed)
_LAWS = {"affine": T.Affine, "additive": T.Additive}
for shape in ((1, 4, 4), (2, 4, 4), (3, 4, 4)):
    tag = "x".join(map(str, shape))
    full = shape == (2, 4, 4)
    for flip in (False, True) if full else (False,):
        for law in ("affine", "additive") if full else ("affine",):
            for kind, mask in (("checkerboard", T.checkerboard_mask), ("channel", T.channel_mask)):
                if kind == "channel" and shape[0] < 2:
                    continue  # a channel mask needs 2 channels (see test_image.py)
                CASES.append(
                    Case(
                        f"conv-{law}-{kind}{'-flip' if flip else ''}-{tag}",
                        lambda s=shape, fl=flip, m=mask, law=law: T.Coupling(
                            m(s, fl), conv(), _LAWS[law]()
                        ),
                    )
                )
CASES += [
    Case(
        "conv-affine-checkerboard-context-2x4x4",
        lambda: T.Coupling(T.checkerboard_mask((2, 4, 4)), conv(3), T.Affine(), 3),
    ),
    Case(
        "conv-affine-channel-context-4x2x2",
        lambda: T.Coupling(T.channel_mask((4, 2, 2)), conv(3, blocks=0), T.Affine(), 3),
    ),
    Case(
        "conv-affine-shift-first-checkerboard-2x4x4",
        lambda: T.Coupling(T.checkerboard_mask((2, 4, 4)), conv(), T.Affine(shift_first=True)),
    ),
]

# -- factor-out ---------------------------------------------------------------------------------
CASES += [
    Case(
        "factorout-4x2x2",
        lambda: T.FactorOut((4, 2, 2), _factor_inner((2, 2, 2))),
    ),
    Case(
        "factorout-prior-4x2x2",
        lambda: T.FactorOut((4, 2, 2), _factor_inner((2, 2, 2)), prior=True, hidden=8),
    ),
    Case(
        "factorout-prior-odd-3x2x4",
        lambda: T.FactorOut((3, 2, 4), T.ActNorm((2, 2, 4)), prior=conv()),
    ),
    Case(
        "factorout-prior-context-4x2x2",
        lambda: T.FactorOut(
            (4, 2, 2), _factor_inner((2, 2, 2), 2), prior=True, context_features=2, hidden=8
        ),
    ),
    Case(
        "factorout-nested-squeeze-1x4x4",
        lambda: ff.Compose(
            T.Squeeze((1, 4, 4)),
            T.FactorOut(
                (4, 2, 2),
                ff.Compose(T.Squeeze((2, 2, 2)), _factor_inner((8, 1, 1))),
                prior=True,
                hidden=8,
            ),
        ),
    ),
]

# -- models ----------------------------------------------------------------------------------------
CASES += [
    Case(
        "Glow-1x4x4",
        lambda: ff.models.Glow(shape=(1, 4, 4), scales=2, steps=2, hidden=8),
    ),
    Case(
        "Glow-levels-additive-plain-2x4x4",
        lambda: ff.models.Glow(
            shape=(2, 4, 4),
            scales=2,
            steps=1,
            hidden=8,
            blocks=0,
            coupling="additive",
            permutation="plain",
            levels=17,
        ),
        sample=in_levels(17),
    ),
    Case(
        "Glow-context-diag-3x4x4",
        lambda: ff.models.Glow(
            shape=(3, 4, 4), scales=2, steps=1, hidden=8, context_features=2, base="diag"
        ),
    ),
    Case(
        "Glow-noprior-1scale-2x2x2",
        lambda: ff.models.Glow(shape=(2, 2, 2), scales=1, steps=2, hidden=8, split_prior=False),
    ),
    Case(
        "RealNVP-image-1x4x4",
        lambda: ff.models.RealNVP(shape=(1, 4, 4), scales=2, hidden=8, blocks=1, activation="tanh"),
    ),
    Case(
        "RealNVP-image-levels-bn-2x4x4",
        lambda: ff.models.RealNVP(
            shape=(2, 4, 4),
            scales=2,
            hidden=8,
            blocks=0,
            batch_norm=True,
            levels=17,
            activation="tanh",
        ),
        sample=in_levels(17),
    ),
    Case(
        "RealNVP-image-context-actnorm-3x4x4",
        lambda: ff.models.RealNVP(
            shape=(3, 4, 4),
            scales=2,
            hidden=8,
            blocks=0,
            actnorm=True,
            context_features=2,
            couplings=1,
            final_couplings=2,
            activation="tanh",
        ),
    ),
]

assert len({c.name for c in CASES}) == len(CASES)
_ = torch  # the registry's samplers return torch tensors
