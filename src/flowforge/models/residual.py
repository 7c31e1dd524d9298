r"""Residual flows for variational inference: planar, radial, Sylvester and invertible ResNets.

Closed form in the sampling direction (noise to data), so ``rsample_and_log_prob`` is exact and
one pass; ``log_prob`` of arbitrary points solves the data-to-noise direction numerically (see
:mod:`flowforge.transforms.residual`). They take the shared data options of
:mod:`flowforge.models.assembly` like every builder; ``hidden`` sizes the context network of
the amortised layers (Planar, Radial, Sylvester) or each block's ``g`` (ResidualFlow).
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import transforms as T
from ..core import Flow, Inverse, Transform
from .assembly import DataOptions, assemble, count, event_shape, widths
from .registry import register

__all__ = ["Planar", "Radial", "Sylvester", "ResidualFlow"]


@register(inputs=("features",), depth="layers")
def Planar(
    features: int | None = None,
    layers: int = 8,
    hidden: Sequence[int] | int = (32,),
    *,
    data: DataOptions,
) -> Flow:
    r"""Planar flow (Rezende & Mohamed, 2015): ``layers`` planar maps.

    Closed form (and exact) in the sampling direction, so ``rsample_and_log_prob`` is one pass;
    ``log_prob`` of arbitrary points solves one scalar equation per layer (see
    :class:`flowforge.transforms.Planar`).

    Args:
        features: dimension.
        layers: number of planar maps ``K``.
        context_features: amortised VI: an MLP (``hidden``) maps the context to each layer's
            parameter offsets.
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.Planar(features=2, layers=4)
        >>> x, log_q = flow.rsample_and_log_prob(5)
        >>> x.shape, log_q.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """
    (d,) = event_shape(features, None)
    hidden, cf = widths(hidden, 1), data.context_features
    chain = [T.Planar(d, cf, hidden) for _ in range(count("layers", layers))]
    return assemble(chain, (d,), data)


@register(inputs=("features",), depth="layers")
def Radial(
    features: int | None = None,
    layers: int = 8,
    hidden: Sequence[int] | int = (32,),
    *,
    data: DataOptions,
) -> Flow:
    r"""Radial flow (Rezende & Mohamed, 2015): ``layers`` radial contractions/expansions.

    Both directions are closed form (see :class:`flowforge.transforms.Radial`).

    Example:
        >>> import flowforge as ff
        >>> ff.models.Radial(features=2).sample(3).shape
        torch.Size([3, 2])
    """
    (d,) = event_shape(features, None)
    hidden, cf = widths(hidden, 1), data.context_features
    chain = [T.Radial(d, cf, hidden) for _ in range(count("layers", layers))]
    return assemble(chain, (d,), data)


@register(inputs=("features",), depth="layers")
def Sylvester(
    features: int | None = None,
    layers: int = 8,
    kind: str = "orthogonal",
    rank: int | None = None,
    reflections: int | None = None,
    hidden: Sequence[int] | int = (32,),
    *,
    data: DataOptions,
) -> Flow:
    r"""Sylvester normalizing flow (van den Berg et al., 2018).

    Args:
        features: dimension ``D``.
        layers: number of Sylvester maps.
        kind: ``"orthogonal"`` (iterative orthogonalisation; ``rank`` M <= D),
            ``"householder"`` (``reflections`` per layer) or ``"triangular"`` (identity and
            reversal permutations, alternating).
        context_features, hidden: amortised parameters from a context MLP.
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.Sylvester(features=3, layers=2, kind="householder")
        >>> flow.rsample_and_log_prob(4)[1].shape
        torch.Size([4])
    """
    (d,) = event_shape(features, None)
    hidden, cf = widths(hidden, 1), data.context_features
    chain = [
        T.Sylvester(d, kind, rank, reflections, flip=i % 2 == 1, context_features=cf, hidden=hidden)
        for i in range(count("layers", layers))
    ]
    return assemble(chain, (d,), data)


@register(inputs=("features",), depth="blocks")
def ResidualFlow(
    features: int | None = None,
    blocks: int = 4,
    hidden: Sequence[int] | int = (64, 64),
    coeff: float = 0.9,
    activation: str = "lipswish",
    estimator: str = "auto",
    n_exact: int = 2,
    roulette_p: float = 0.5,
    closed_form: str = "sample",
    *,
    data: DataOptions,
) -> Flow:
    r"""Invertible ResNet / Residual Flow (Behrmann et al., 2019; Chen et al., 2019).

    ``blocks`` residual blocks ``x + g(x)``, each ``g`` spectrally normalised to Lipschitz
    ``< 1`` (``coeff`` per linear map). See :class:`flowforge.transforms.ResidualBlock`.

    Args:
        features: dimension.
        blocks: number of residual blocks.
        hidden: widths of each block's ``g``.
        coeff: spectral-norm bound of each linear map, in ``(0, 1)``.
        activation: ``"lipswish"``, ``"elu"`` or ``"tanh"``.
        estimator: log-det estimator: ``"auto"`` (exact for ``D <= 16``, and up to 128 in
            eval mode), ``"exact"`` or
            ``"roulette"`` (unbiased Russian roulette with ``n_exact`` and ``roulette_p``).
        closed_form: ``"sample"`` puts the closed form in the noise-to-data direction
            (variational inference: sampling and the density of samples in one pass; the
            data-to-noise direction is a fixed-point iteration); ``"density"`` wraps each block
            in :class:`flowforge.Inverse` so that ``log_prob`` is the closed form one
            (density estimation) and sampling iterates.
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.ResidualFlow(features=2, blocks=2, hidden=(16,))
        >>> flow.log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """
    (d,) = event_shape(features, None)
    if closed_form not in ("sample", "density"):
        raise ValueError(f"unknown closed_form {closed_form!r}; expected 'sample' or 'density'")
    hidden, cf = widths(hidden), data.context_features
    chain: list[Transform] = []
    for _ in range(count("blocks", blocks)):
        block = T.ResidualBlock(
            d, hidden, coeff, activation, estimator, n_exact, roulette_p, context_features=cf
        )
        chain.append(block if closed_form == "sample" else Inverse(block))
    return assemble(chain, (d,), data)
