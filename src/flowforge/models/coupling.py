r"""Coupling flows on vectors: NICE and RealNVP (``RealNVP(shape=...)`` is the multi-scale image
architecture of :mod:`flowforge.models.image`).

Both take ``features=`` and the shared data options of :mod:`flowforge.models.assembly`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401  (doctests use it)

from ..core import Flow, Transform
from ..transforms import Additive, Affine, BatchNorm, Coupling, Scaling
from .assembly import (
    DataOptions,
    MaskTurns,
    assemble,
    count,
    event_shape,
    mlp_conditioner,
    widths,
)
from .assembly import mask as coupling_mask
from .image import realnvp_image
from .registry import register

__all__ = ["NICE", "RealNVP"]


def _two_or_more(name: str, d: int) -> None:
    """A coupling splits the features in two: refuse 1-d data with the models that take it."""
    if d < 2:
        raise ValueError(
            f"a coupling {name} needs features >= 2; for 1-d data use NSF(..., "
            "autoregressive=True) (from the command line: --model nsf --model-kwargs "
            "'{\"autoregressive\": true}'): a MAF of one feature is a Gaussian, its one entry "
            "having nothing to condition on"
        )


@register(inputs=("features",), depth="layers")
def NICE(
    features: int | None = None,
    layers: int = 4,
    hidden: Sequence[int] | int = (256, 256),
    mask: str = "alternating",
    permutation: str | None = None,
    activation: str = "relu",
    alternate: bool | None = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""NICE (Dinh et al., 2015): additive couplings and a final diagonal scaling layer.

    Volume-preserving except for the scaling layer, whose ``log_scale`` carries the whole
    log-determinant.

    Args:
        features: data dimension (at least 2).
        layers: number of additive coupling layers (masks alternate between them).
        hidden: widths of each coupling's MLP.
        mask: ``"alternating"`` (even/odd entries) or ``"half"`` (first/second half).
        permutation: a mixing layer between couplings: None, ``"reverse"``, ``"random"``,
            ``"lu"`` or ``"plain"``.
        activation: the MLPs' activation.
        alternate: whether the masks take turns between couplings (see
            :class:`~flowforge.models.assembly.MaskTurns`): None (default) so that consecutive
            couplings transform different entries of the data, also after a ``"reverse"`` or
            ``"random"`` permutation; True: in each coupling's own coordinates, which a
            ``"reverse"`` permutation undoes for an even ``features`` (every coupling then
            transforms the same half; flowforge before 2026-12-07, and the models saved
            then); False: never.
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.NICE(features=8)
        >>> flow.sample(2).shape
        torch.Size([2, 8])
    """
    (d,) = event_shape(features, None)
    _two_or_more("NICE", d)
    cf = data.context_features
    cond = mlp_conditioner(widths(hidden), cf, activation)
    chain: list[Transform] = []
    options = [coupling_mask(mask, d, f) for f in (False, True)]
    turns = MaskTurns(options, alternate, permutation, d)
    for _ in range(count("layers", layers)):
        mixing, m = turns()
        chain += [*mixing, Coupling(m, cond, Additive(), cf)]
    chain.append(Scaling(d))
    return assemble(chain, (d,), data)


@register(inputs=("features", "shape"), depth="layers")
def RealNVP(
    features: int | None = None,
    shape: Sequence[int] | None = None,
    layers: int | None = None,
    hidden: Sequence[int] | int | None = None,
    mask: str = "alternating",
    permutation: str | None = None,
    batch_norm: bool = False,
    rezero: bool = False,
    scale_bound: float = 3.0,
    activation: str = "relu",
    residual: bool | None = None,
    scales: int | None = None,
    blocks: int | None = None,
    couplings: int | None = None,
    final_couplings: int | None = None,
    coupling: str | None = None,
    actnorm: bool | None = None,
    shift_first: bool | None = None,
    alternate: bool | None = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""RealNVP (Dinh et al., 2017): affine couplings with a bounded log-scale.

    With ``features=`` it is a vector flow of ``layers`` affine couplings with alternating
    masks (the founding tutorial's model is ``mask="half", permutation="reverse",
    scale_bound=1.0, activation="leaky_relu", residual=False``, with ``hidden=(256, 256)``;
    docs/porting.md). With ``shape=(C, H, W)`` it is the paper's multi-scale
    image architecture (see :func:`flowforge.models.image.realnvp_image`, which reads
    ``scales``, ``blocks``, ``couplings``, ``final_couplings``, ``coupling`` and ``actnorm``).

    Args:
        features: data dimension (at least 2).
        shape: image shape ``(C, H, W)`` instead of ``features``.
        layers: number of affine couplings (vectors only; default 16 residual couplings, 8
            without ``residual``).
        hidden: widths of each coupling's MLP (default (128, 128) with ``residual``, else
            (256, 256): the same parameters and arithmetic; for images, the channels of the
            conv conditioner, default 64).
        mask: ``"alternating"`` (even/odd entries) or ``"half"`` (vectors).
        permutation: mixing between couplings: None, ``"reverse"``, ``"random"``, ``"lu"`` or
            ``"plain"`` (vectors).
        batch_norm: a batch-norm bijector after each coupling (as in the paper).
        rezero: gate each coupling's output with a zero-initialised scalar (ReZero) instead of
            zero-initialising the conditioner's last layer.
        scale_bound: the largest absolute log-scale of a coupling (soft clamp).
        activation: the networks' activation.
        residual: residual MLP conditioners (``len(hidden) - 1`` blocks of the equal width
            ``hidden[0]``; vectors only). None: True when ``hidden`` is not given (the default
            architecture, 16 residual couplings of width 128, measured in docs/defaults.md),
            plain MLPs of the widths given otherwise.
        scales, blocks, couplings, final_couplings, coupling, actnorm: the image architecture's
            (None: its defaults; an error with ``features=``).
        shift_first: the couplings' affine order: ``z = (x + t) * exp(s)`` (True) or the
            paper's ``z = x * exp(s) + t`` (False). None: True for images, where the paper's
            order blows up in training on flat backgrounds (docs/images.md, "Training
            stability"), False for vectors. Configurations saved before it existed rebuild
            with False.
        alternate: whether the masks take turns between couplings (vectors; as
            :func:`NICE`'s): None (default) so that consecutive couplings transform different
            entries, also after a ``"reverse"`` or ``"random"`` permutation; True: in each
            coupling's own coordinates, as before 2026-12-07 (a ``"reverse"`` permutation then
            undid it for an even ``features``: every coupling transformed the same half);
            False: never.
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.RealNVP(features=64, layers=8, hidden=(256, 256))
        >>> flow.sample(16).shape
        torch.Size([16, 64])
    """
    image = {
        "scales": scales,
        "blocks": blocks,
        "couplings": couplings,
        "final_couplings": final_couplings,
        "coupling": coupling,
        "actnorm": actnorm,
    }
    if shape is not None and features is None:
        if residual:
            raise ValueError("residual= is for the vector RealNVP (images use conv conditioners)")
        if layers is not None:
            raise ValueError(
                "layers= counts the couplings of the vector RealNVP; for images use scales=, "
                "couplings= (per group, default 3) and final_couplings= (default 4), or flatten "
                "the images for the vector RealNVP (features=; the command line: --layout "
                "vector)"
            )
        vector = {"mask": (mask, "alternating"), "permutation": (permutation, None)}
        given = sorted(k for k, (v, default) in vector.items() if v != default)
        given += ["alternate"] if alternate is False else []  # (True: as saved before it)
        if given:  # the image RealNVP's masks are checkerboard and channel-wise, its own
            raise ValueError(f"arguments of the vector RealNVP given for images: {given}")
        return realnvp_image(
            shape=shape,
            hidden=hidden,
            rezero=rezero,
            scale_bound=scale_bound,
            batch_norm=batch_norm,
            activation=activation,
            shift_first=True if shift_first is None else shift_first,
            data=data,
            **{k: v for k, v in image.items() if v is not None},
        )
    given = sorted(k for k, v in image.items() if v is not None)
    if given:
        raise ValueError(f"arguments of the image RealNVP given for vectors: {given}")
    (d,) = event_shape(features, shape)
    _two_or_more("RealNVP", d)
    residual = hidden is None if residual is None else residual
    layers = (16 if residual else 8) if layers is None else layers
    hidden = ((128, 128) if residual else (256, 256)) if hidden is None else hidden
    cf = data.context_features
    cond = mlp_conditioner(widths(hidden), cf, activation, not rezero, residual)
    chain: list[Transform] = []
    options = [coupling_mask(mask, d, f) for f in (False, True)]
    turns = MaskTurns(options, alternate, permutation, d)
    for _ in range(count("layers", layers)):
        mixing, m = turns()
        law = Affine(scale_bound, shift_first=bool(shift_first))
        chain += [*mixing, Coupling(m, cond, law, cf, rezero=rezero)]
        if batch_norm:
            chain.append(BatchNorm(d))
    return assemble(chain, (d,), data)
