r"""Multi-scale image flows: Glow and RealNVP's image architecture.

Both builders take ``shape=(C, H, W)`` and assemble existing layers (see
:mod:`flowforge.transforms.image`); their latent is one flat vector of ``C*H*W`` entries holding
every scale's factored-out half, under one base distribution.

Naming: ``scales`` vs ``levels``
--------------------------------
Throughout :mod:`flowforge.models`, ``levels`` is the number of *discrete data levels* (17 for
the 0..16 digits, 256 for 8-bit images), which turns on dequantization and makes likelihoods
come out on the raw data scale. The number of *multi-scale levels* (Glow's ``L``, RealNVP's
number of scales) is therefore called ``scales``::

    ff.models.Glow(shape=(1, 8, 8), scales=2, steps=8, hidden=128, levels=17)
    ff.models.RealNVP(shape=(3, 32, 32), scales=3, levels=256)
"""

from __future__ import annotations

from collections.abc import Sequence

from .._util import checked_int
from ..core import Compose, Flow, Transform
from ..transforms import (
    ActNorm,
    BatchNorm,
    Coupling,
    FactorOut,
    Squeeze,
    channel_mask,
    checkerboard_mask,
)
from .assembly import (
    MAX_COUNT,
    DataOptions,
    assemble,
    channels,
    conv_conditioner,
    coupling_transformer,
    event_shape,
    mixer,
)
from .registry import register

__all__ = ["Glow", "realnvp_image", "default_scales"]


def default_scales(shape: Sequence[int], model: str = "glow", max_scales: int = 3) -> int:
    """The number of scales a builder uses when ``scales=None``.

    The most scales (up to ``max_scales``) for which every squeeze is possible and the last
    scale still has a spatial size of at least 2 (Glow, which squeezes at the start of each
    scale) or 4 (RealNVP, which squeezes between scales and ends with checkerboard couplings).
    ``(1, 8, 8)`` gets 2 for both, ``(3, 32, 32)`` gets 3.
    """
    _, h, w = shape
    best = 1
    for s in range(1, max_scales + 1):
        k = 2**s if model == "glow" else 2 ** (s - 1)
        need = 2 if model == "glow" else 4
        if h % k == 0 and w % k == 0 and min(h, w) // k >= need:
            best = s
    return best


ANY_SIZE = "pad or crop the images to an even size, or use RealNVP or TarFlow, which take any"


def _check_scales(
    shape: tuple[int, int, int], scales: int, squeezes: int, model: str, given: bool = True
) -> None:
    """``ValueError`` unless ``squeezes`` halvings fit ``shape``. ``given``: the caller chose
    ``scales``; else it is the builder's default, which fails only on an odd size."""
    if scales < 1:
        raise ValueError(f"expected scales >= 1, got {scales}")
    k = 2**squeezes
    c, h, w = shape
    if (h % k or w % k) and not given:
        raise ValueError(
            f"{model} squeezes its images at least once and needs an even height and width, "
            f"got shape {shape}: {ANY_SIZE} size"
        )
    if h % k or w % k:
        raise ValueError(
            f"{model} with scales={scales} squeezes {squeezes} times and needs a height and width "
            f"divisible by {k}, got shape {shape}"
        )


@register(inputs=("shape",), depth="steps")
def Glow(
    shape: Sequence[int] | None = None,
    scales: int | None = None,
    steps: int = 8,
    hidden: Sequence[int] | int = 128,
    blocks: int = 1,
    coupling: str = "affine",
    permutation: str | None = "lu",
    split_prior: bool = True,
    prior_hidden: int | None = None,
    scale_bound: float = 3.0,
    activation: str = "relu",
    mask: str = "channel",
    rezero: bool = False,
    *,
    data: DataOptions,
) -> Flow:
    r"""Glow (Kingma & Dhariwal, 2018): multi-scale ActNorm, 1x1 convolution, affine coupling.

    Each of the ``scales`` levels squeezes ``(C, H, W) -> (4C, H/2, W/2)``, then runs ``steps``
    flow steps of :class:`~flowforge.transforms.ActNorm`, an invertible 1x1 convolution
    (:class:`~flowforge.transforms.LULinear`) and a coupling with a channel mask and a
    :class:`~flowforge.nets.ConvResNet` conditioner; every level but the last then factors out
    half its channels (:class:`~flowforge.transforms.FactorOut`), with Glow's learned split
    prior. The latent is one flat vector of ``C*H*W`` entries; ``flow.sample(n,
    temperature=0.7)`` draws every level at that temperature.

    Args:
        shape: image shape ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**scales``.
        scales: number of multi-scale levels (Glow's ``L``; *not* ``levels``, which counts
            discrete data values). ``None``: :func:`default_scales` (2 for ``(1, 8, 8)``).
        steps: flow steps per scale (Glow's ``K``).
        hidden: channels of each coupling's ConvResNet.
        blocks: residual blocks per ConvResNet (0: Glow's conv-ReLU-zero-conv shape).
        coupling: ``"affine"`` (RealNVP's order ``z = x * exp(s) + t``, with a soft-clamped
            ``s``; Glow's code computes ``(x + t) * sigmoid(h + 2)``) or ``"additive"``.
        permutation: ``"lu"`` (LU 1x1 conv), ``"plain"`` (full 1x1 conv), ``"emerging"``
            (LU 1x1 conv then a 3x3 :class:`~flowforge.transforms.EmergingConv2d`;
            ``"emerging-5"`` for 5x5), ``"reverse"``, ``"random"`` or None (with the channel
            mask, which does not alternate between steps, None leaves the first half of the
            channels to pass through every coupling of a scale).
        split_prior: learn ``p(z_out | z_kept)`` at each factor-out (Glow); False leaves the
            factored-out half to the base.
        prior_hidden: channels of the split prior's network (default: ``hidden // 2``).
        scale_bound: soft bound on each coupling's log-scale.
        activation: the ConvResNets' activation.
        mask: ``"channel"`` (Glow) or ``"checkerboard"`` (RealNVP's spatial mask, alternating
            between steps) for the couplings.
        rezero: gate each coupling with a zero-initialised scalar instead of zero-initialising
            the conditioner's last layer.
        (and the data options of :mod:`flowforge.models.assembly`: ``context_features`` is read
        by every coupling and split prior as extra channels, and by a learnable base; ``levels``
        counts discrete data values, e.g. 17 for the 0..16 digits, 256 for 8-bit images)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.Glow(shape=(1, 8, 8), scales=2, steps=2, hidden=16, levels=17)
        >>> flow.sample(4, temperature=0.7).shape
        torch.Size([4, 1, 8, 8])
    """
    shape = event_shape(None, shape)
    steps = checked_int("steps", steps, 1, MAX_COUNT)  # (-3 built a model of no flow steps)
    given = scales is not None
    scales = default_scales(shape, "glow") if scales is None else scales
    _check_scales(shape, scales, scales, "Glow", given)
    if mask not in ("channel", "checkerboard"):
        raise ValueError(f"unknown mask {mask!r}; expected 'channel' or 'checkerboard'")
    cf = data.context_features
    width = channels(hidden)
    cond = conv_conditioner(width, blocks, cf, activation, zero_init=not rezero)
    prior_width = max(width // 2, 1) if prior_hidden is None else prior_hidden
    prior = conv_conditioner(prior_width, 0, cf, activation) if split_prior else False

    def level(in_shape: tuple[int, ...], i: int) -> Transform:
        sq = Squeeze(in_shape)
        s = sq.output_shape
        chain: list[Transform] = [sq]
        for j in range(steps):
            chain.append(ActNorm(s))
            chain += mixer(permutation, s)
            m = channel_mask(s) if mask == "channel" else checkerboard_mask(s, flip=j % 2 == 1)
            t = coupling_transformer(coupling, scale_bound)
            chain.append(Coupling(m, cond, t, cf, rezero=rezero))
        if i < scales - 1:
            kept = ((s[0] + 1) // 2, *s[1:])
            chain.append(FactorOut(s, level(kept, i + 1), prior, cf))
        return Compose(*chain)

    return assemble([level(shape, 0)], shape, data)


def realnvp_image(
    shape: Sequence[int],
    scales: int | None = None,
    hidden: int | Sequence[int] | None = None,
    blocks: int = 2,
    couplings: int = 3,
    final_couplings: int = 4,
    coupling: str = "affine",
    batch_norm: bool = False,
    actnorm: bool = False,
    rezero: bool = False,
    scale_bound: float = 3.0,
    activation: str = "relu",
    shift_first: bool = True,
    *,
    data: DataOptions,
) -> Flow:
    r"""RealNVP's multi-scale image architecture (Dinh et al., 2017, section 3.6).

    Called by ``ff.models.RealNVP(shape=...)``, which records the configuration. Each scale but
    the last applies ``couplings`` (3) checkerboard couplings with alternating masks, a squeeze,
    ``couplings`` channel couplings with alternating masks, and factors out half the channels;
    the last scale applies ``final_couplings`` (4) checkerboard couplings. Every coupling uses a
    :class:`~flowforge.nets.ConvResNet` conditioner; ``batch_norm=True`` puts the paper's
    batch-norm bijector (:class:`~flowforge.transforms.BatchNorm`) after each coupling,
    ``actnorm=True`` an ActNorm instead.

    Args:
        shape: image shape ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**(scales - 1)``.
        scales: number of scales (*not* ``levels``, which counts discrete data values);
            ``None``: :func:`default_scales` (2 for ``(1, 8, 8)``, 3 for ``(3, 32, 32)``).
        hidden: channels of each ConvResNet (an int; a sequence counts by its first entry;
            default 64).
        blocks: residual blocks per ConvResNet.
        couplings: couplings per checkerboard group and per channel group.
        final_couplings: checkerboard couplings of the last scale.
        coupling: ``"affine"`` or ``"additive"``.
        rezero: gate the couplings with a zero-initialised scalar instead of zero-initialising
            the conditioner's last layer.
        shift_first: affine couplings shift, then scale (``z = (x + t) * exp(s)``); False is
            the paper's ``z = x * exp(s) + t``, which blows up in training on images with a flat
            background (docs/images.md, "Training stability").
        data: the shared data options (:class:`~flowforge.models.assembly.DataOptions`).
    """
    shape = event_shape(None, shape)
    couplings = checked_int("couplings", couplings, 0, MAX_COUNT)
    final_couplings = checked_int("final_couplings", final_couplings, 1, MAX_COUNT)
    scales = default_scales(shape, "realnvp") if scales is None else scales
    _check_scales(shape, scales, scales - 1, "RealNVP")
    width = 64 if hidden is None else channels(hidden)
    cf = data.context_features
    cond = conv_conditioner(width, blocks, cf, activation, zero_init=not rezero)

    def couple(mask) -> list[Transform]:
        s = tuple(mask.shape)
        t = coupling_transformer(coupling, scale_bound, shift_first)
        out: list[Transform] = [Coupling(mask, cond, t, cf, rezero=rezero)]
        if batch_norm:
            out.append(BatchNorm(s))
        if actnorm:
            out.append(ActNorm(s))
        return out

    def scale(s: tuple[int, ...], i: int) -> Transform:
        chain: list[Transform] = []
        if i == scales - 1:
            for j in range(final_couplings):
                chain += couple(checkerboard_mask(s, flip=j % 2 == 1))
            return Compose(*chain)
        for j in range(couplings):
            chain += couple(checkerboard_mask(s, flip=j % 2 == 1))
        sq = Squeeze(s)
        chain.append(sq)
        s = sq.output_shape
        for j in range(couplings):
            chain += couple(channel_mask(s, flip=j % 2 == 1))
        kept = ((s[0] + 1) // 2, *s[1:])
        chain.append(FactorOut(s, scale(kept, i + 1)))
        return Compose(*chain)

    return assemble([scale(shape, 0)], shape, data)
