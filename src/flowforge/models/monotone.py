r"""Monotone-transformer flows: NAF, UNAF, SOSPF and BPF (registered in
:mod:`flowforge.models`), the counterparts of zuko's same-named flows.

Each is a stack of ``layers`` MADE layers (``autoregressive=True``, the default) or half-mask
couplings (``autoregressive=False``) around one elementwise transformer:

=====  ==============================================  =====================================
model  transformer                                      inverse
=====  ==============================================  =====================================
NAF    :class:`~flowforge.transforms.LogisticMixture`  bisection + Newton (numerical)
UNAF   :class:`~flowforge.transforms.UnconstrainedMonotonic`  exact (piecewise quadratic)
SOSPF  :class:`~flowforge.transforms.SumOfSquares`     bisection + Newton (numerical)
BPF    :class:`~flowforge.transforms.Bernstein`        bisection + Newton (numerical)
=====  ==============================================  =====================================

All take ``features=``, ``layers``, ``hidden``, ``autoregressive``, the mixing between layers
of :func:`~flowforge.models.NSF` (``permutation``, ``lu``), ``residual``, ``activation``,
``adjacency`` (autoregressive only) and the data options of :mod:`flowforge.models.assembly`.
UNAF, SOSPF and BPF act on ``[-bound, bound]`` with linear tails: standardize the data
(``preprocess``) so that it falls mostly inside. docs/monotone.md compares them with zuko's.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Flow
from ..transforms import Bernstein, LogisticMixture, SumOfSquares, UnconstrainedMonotonic
from .assembly import DataOptions
from .autoregressive import AdjacencyArg, elementwise_flow
from .registry import register

__all__ = ["NAF", "UNAF", "SOSPF", "BPF"]


@register(inputs=("features",), depth="layers")
def NAF(
    features: int | None = None,
    layers: int = 5,
    hidden: Sequence[int] | int = (128, 128),
    mixtures: int = 8,
    spread: float = 1.0,
    autoregressive: bool = True,
    permutation: str | None = "auto",
    lu: bool = False,
    residual: bool = False,
    activation: str = "relu",
    adjacency: AdjacencyArg = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""Neural autoregressive flow (Huang et al., 2018) with the deep sigmoidal transformer:
    a mixture of ``mixtures`` logistic CDFs, a logit and an affine map per entry
    (:class:`~flowforge.transforms.LogisticMixture`, Flow++'s form of NAF's DSF).

    Args:
        features: data dimension.
        layers: number of layers.
        hidden: the conditioner's widths (MADE or MLP).
        mixtures: logistic components per entry (``components`` is the base's).
        spread: the components' fixed mean offsets span ``[-spread, spread]``, so that they
            can come apart (0: equal components that stay equal, an affine flow; models saved
            before this argument have 0, and load as they were).
        autoregressive: MADE layers (fast density, ``features`` sequential sampling steps);
            False: half-mask couplings (fast both ways, needs ``features >= 2``).
        permutation, lu, residual, activation, adjacency: as in :func:`~flowforge.models.NSF`.
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.NAF(features=2, layers=2, hidden=(16, 16))
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """
    return elementwise_flow("NAF", lambda: LogisticMixture(mixtures, spread=spread), locals())


@register(inputs=("features",), depth="layers")
def UNAF(
    features: int | None = None,
    layers: int = 5,
    hidden: Sequence[int] | int = (128, 128),
    embedding: int = 8,
    integrand: Sequence[int] | int = (32, 32),
    nodes: int = 33,
    bound: float = 5.0,
    autoregressive: bool = True,
    permutation: str | None = "auto",
    lu: bool = False,
    residual: bool = False,
    activation: str = "relu",
    adjacency: AdjacencyArg = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""Unconstrained monotonic neural network flow (Wehenkel & Louppe, 2019): each entry is
    mapped by the integral of a positive network
    (:class:`~flowforge.transforms.UnconstrainedMonotonic`), one integrand network per layer,
    shared by the entries.

    Args:
        embedding: size of the conditioner's embedding per entry.
        integrand: hidden widths of each layer's integrand network.
        nodes: quadrature nodes on ``[-bound, bound]`` (integrand evaluations per entry).
        bound: the transformers act on ``[-bound, bound]``, linearly beyond.
        (the others as in :func:`NAF`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.UNAF(features=2, layers=2, hidden=(16, 16), nodes=9)
        >>> flow.sample(3).shape
        torch.Size([3, 2])
    """

    def transformer():
        return UnconstrainedMonotonic(embedding, integrand, nodes, bound)

    return elementwise_flow("UNAF", transformer, locals())


@register(inputs=("features",), depth="layers")
def SOSPF(
    features: int | None = None,
    layers: int = 5,
    hidden: Sequence[int] | int = (128, 128),
    polynomials: int = 3,
    degree: int = 4,
    bound: float = 5.0,
    spread: float = 0.0,
    autoregressive: bool = True,
    permutation: str | None = "auto",
    lu: bool = False,
    residual: bool = False,
    activation: str = "relu",
    adjacency: AdjacencyArg = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""Sum-of-squares polynomial flow (Jaini et al., 2019): each entry's derivative is a sum
    of ``polynomials`` squared polynomials of ``degree``
    (:class:`~flowforge.transforms.SumOfSquares`), on ``[-bound, bound]`` with linear tails.

    Args:
        polynomials: squared polynomials per entry.
        degree: degree of each (the map's is ``2 degree + 1``).
        bound: the transformers act on ``[-bound, bound]``, linearly beyond.
        spread: the range of the polynomials' fixed log-scales, so that they come apart (0,
            the default: equal polynomials that stay equal, one square; see
            :class:`~flowforge.transforms.SumOfSquares`).
        (the others as in :func:`NAF`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.SOSPF(features=2, layers=2, hidden=(16, 16))
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """
    return elementwise_flow(
        "SOSPF", lambda: SumOfSquares(polynomials, degree, bound, spread=spread), locals()
    )


@register(inputs=("features",), depth="layers")
def BPF(
    features: int | None = None,
    layers: int = 5,
    hidden: Sequence[int] | int = (128, 128),
    degree: int = 16,
    bound: float = 5.0,
    autoregressive: bool = True,
    permutation: str | None = "auto",
    lu: bool = False,
    residual: bool = False,
    activation: str = "relu",
    adjacency: AdjacencyArg = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""Bernstein polynomial flow (Sick et al., 2021; Ramasinghe et al., 2021): each entry is
    mapped by a Bernstein polynomial of ``degree`` with increasing coefficients
    (:class:`~flowforge.transforms.Bernstein`), on ``[-bound, bound]`` with linear tails.

    Args:
        degree: the polynomials' degree.
        bound: the transformers act on ``[-bound, bound]``, linearly beyond.
        (the others as in :func:`NAF`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.BPF(features=2, layers=2, hidden=(16, 16), degree=8)
        >>> flow.sample(3).shape
        torch.Size([3, 2])
    """
    return elementwise_flow("BPF", lambda: Bernstein(degree, bound), locals())
