r"""Residual flows for variational inference: planar, radial, Sylvester and invertible ResNets.

Closed form in the sampling direction (noise to data), so ``rsample_and_log_prob`` is exact and
one pass; ``log_prob`` of arbitrary points solves the data-to-noise direction numerically (see
:mod:`flowforge.transforms.residual`). Registered with :func:`flowforge.models.register`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .core import Flow, Transform
from .core import Inverse as _Inverse
from .models import _event_shape, assemble, register
from .transforms.residual import Planar as _PlanarLayer
from .transforms.residual import Radial as _RadialLayer
from .transforms.residual import ResidualBlock as _ResidualBlock
from .transforms.residual import Sylvester as _SylvesterLayer

__all__ = ["Planar", "Radial", "Sylvester", "ResidualFlow"]


def _vi_flow(chain: list[Transform], d: int, context_features: int, base: str, components: int):
    return assemble(
        chain, (d,), context_features=context_features, base=base, components=components
    )


@register
def Planar(
    features: int | None = None,
    layers: int = 8,
    context_features: int = 0,
    hidden: Sequence[int] | int = (32,),
    base: str = "normal",
    components: int = 8,
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
        (see the module docstring for base, components)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.Planar(features=2, layers=4)
        >>> x, log_q = flow.rsample_and_log_prob(5)
        >>> x.shape, log_q.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """
    (d,) = _event_shape(features, None)
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    chain = [_PlanarLayer(d, context_features, hidden) for _ in range(layers)]
    return _vi_flow(chain, d, context_features, base, components)


@register
def Radial(
    features: int | None = None,
    layers: int = 8,
    context_features: int = 0,
    hidden: Sequence[int] | int = (32,),
    base: str = "normal",
    components: int = 8,
) -> Flow:
    r"""Radial flow (Rezende & Mohamed, 2015): ``layers`` radial contractions/expansions.

    Both directions are closed form (see :class:`flowforge.transforms.Radial`).

    Example:
        >>> import flowforge as ff
        >>> ff.models.Radial(features=2).sample(3).shape
        torch.Size([3, 2])
    """
    (d,) = _event_shape(features, None)
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    chain = [_RadialLayer(d, context_features, hidden) for _ in range(layers)]
    return _vi_flow(chain, d, context_features, base, components)


@register
def Sylvester(
    features: int | None = None,
    layers: int = 8,
    kind: str = "orthogonal",
    rank: int | None = None,
    reflections: int | None = None,
    context_features: int = 0,
    hidden: Sequence[int] | int = (32,),
    base: str = "normal",
    components: int = 8,
) -> Flow:
    r"""Sylvester normalizing flow (van den Berg et al., 2018).

    Args:
        features: dimension ``D``.
        layers: number of Sylvester maps.
        kind: ``"orthogonal"`` (iterative orthogonalisation; ``rank`` M <= D),
            ``"householder"`` (``reflections`` per layer) or ``"triangular"`` (identity and
            reversal permutations, alternating).
        context_features, hidden: amortised parameters from a context MLP.
        (see the module docstring for base, components)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.Sylvester(features=3, layers=2, kind="householder")
        >>> flow.rsample_and_log_prob(4)[1].shape
        torch.Size([4])
    """
    (d,) = _event_shape(features, None)
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    chain = [
        _SylvesterLayer(d, kind, rank, reflections, i % 2 == 1, context_features, hidden)
        for i in range(layers)
    ]
    return _vi_flow(chain, d, context_features, base, components)


@register
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
    context_features: int = 0,
    base: str = "normal",
    components: int = 8,
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
        estimator: log-det estimator: ``"auto"`` (exact for ``D <= 16``), ``"exact"`` or
            ``"roulette"`` (unbiased Russian roulette with ``n_exact`` and ``roulette_p``).
        closed_form: ``"sample"`` puts the closed form in the noise-to-data direction
            (variational inference: sampling and the density of samples in one pass; the
            data-to-noise direction is a fixed-point iteration); ``"density"`` wraps each block
            in :class:`flowforge.Inverse` so that ``log_prob`` is the closed form one
            (density estimation) and sampling iterates.
        (see the module docstring for context_features, base, components)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.ResidualFlow(features=2, blocks=2, hidden=(16,))
        >>> flow.log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """
    (d,) = _event_shape(features, None)
    if closed_form not in ("sample", "density"):
        raise ValueError(f"unknown closed_form {closed_form!r}; expected 'sample' or 'density'")
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    chain: list[Transform] = []
    for _ in range(blocks):
        block = _ResidualBlock(
            d,
            hidden,
            coeff,
            activation,
            estimator,
            n_exact,
            roulette_p,
            context_features=context_features,
        )
        chain.append(block if closed_form == "sample" else _Inverse(block))
    return _vi_flow(chain, d, context_features, base, components)
