r"""Autoregressive and spline flows: MAF, IAF and NSF (registered in :mod:`flowforge.models`).

All three take ``features=`` and the shared data options of :mod:`flowforge.models.assembly`
(``context_features``, ``levels``, ``preprocess``, ``alpha``, ``base``, ``components``,
``dequantization``).
Between layers a ``permutation`` mixes the dimensions (``"reverse"``, ``"random"``, ``"lu"`` or
None; ``"auto"``, the default: ``"reverse"``, or None with an ``adjacency``) and ``lu=True``
adds a learnable LU-linear layer after it.

``adjacency=`` (MAF, IAF, NSF with ``autoregressive=True``) makes every layer structured: a
``(D, D)`` matrix of 0/1 or booleans, ``adjacency[i, j]`` set where dimension ``i`` may depend
on dimension ``j``, a directed acyclic graph. Every layer uses the same graph, so the model's
transform stays lower-triangular in the graph's sense: ``z_i`` depends only on the ancestors
of ``i``. A permutation or an LU layer between layers would mix the dimensions and lose that,
so with an adjacency there is none (an explicit one is refused).

Which direction is fast:

======  ======================  ======================
model   log_prob (data->noise)  sample (noise->data)
======  ======================  ======================
MAF     one pass                D sequential steps
IAF     D sequential steps      one pass
NSF     one pass                one pass (coupling) / D steps (``autoregressive=True``)
======  ======================  ======================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core import Flow, Inverse, Transform, Transformer
from ..nets import check_adjacency
from ..transforms import (
    Affine,
    Autoregressive,
    BatchNorm,
    Coupling,
    LULinear,
    RationalQuadratic,
    half_mask,
)
from .assembly import DataOptions, assemble, count, event_shape, mixer, mlp_conditioner, widths
from .registry import register

__all__ = ["MAF", "IAF", "NSF", "elementwise_chain", "elementwise_flow"]

# what adjacency= takes: a list of rows of 0/1 or booleans (a config file's form) or a tensor;
# the values are checked by flowforge.nets.check_adjacency, each problem in one line
AdjacencyArg = Sequence[Sequence[float | bool]] | torch.Tensor | None


# bases whose density factorises over the dimensions (one Gaussian per dimension, given the
# context): the only ones that keep a structured flow's graph
_FACTORISED_BASES = ("normal", "diag", "class-gaussian")


def _structure(
    adjacency, d: int, permutation: str | None, lu: bool, order="natural", base="normal"
) -> tuple[torch.Tensor | None, str | None]:
    """The checked adjacency (None: none) and the permutation between layers it allows."""
    if adjacency is None:
        return None, "reverse" if permutation == "auto" else permutation
    adj = check_adjacency(adjacency, d)
    why = (
        "every layer uses the same graph, and mixing the dimensions between layers would "
        "break its structure"
    )
    name = base.get("name") if isinstance(base, dict) else base
    if name not in _FACTORISED_BASES:
        raise ValueError(
            f"base={name!r} with an adjacency: that base couples the dimensions (a mixture over "
            f"all of them), which would undo the graph's structure; use one of "
            f"{list(_FACTORISED_BASES)}"
        )
    if permutation not in ("auto", None, "none"):
        mixer(permutation, d)  # (an unknown name is said as such first)
        raise ValueError(
            f"permutation={permutation!r} with an adjacency: {why}; leave permutation unset "
            "(no mixing with an adjacency)"
        )
    if lu:
        raise ValueError(f"lu=True with an adjacency: {why}; remove lu")
    if order not in ("natural", None):
        raise ValueError(
            f"order={order!r} with an adjacency: the adjacency decides what each dimension "
            "depends on; remove order"
        )
    return adj, None


def _between(i: int, permutation: str | None, lu: bool, d: int) -> list[Transform]:
    if not i:
        return []
    return mixer(permutation, d) + ([LULinear(d)] if lu else [])


def _autoregressive_stack(
    d: int,
    layers: int,
    make,
    permutation: str | None,
    lu: bool,
    batch_norm: bool,
) -> list[Transform]:
    chain: list[Transform] = []
    for i in range(count("layers", layers)):
        chain += _between(i, permutation, lu, d)
        chain.append(make())
        if batch_norm:
            chain.append(BatchNorm(d))
    return chain


def elementwise_chain(
    d: int,
    layers: int,
    transformer: Callable[[], Transformer],
    hidden: Sequence[int] | int,
    autoregressive: bool,
    permutation: str | None,
    lu: bool,
    residual: bool,
    activation: str,
    adjacency: AdjacencyArg,
    data: DataOptions,
    name: str,
) -> list[Transform]:
    """The layers of a flow of ``layers`` elementwise-transformer layers (a new
    ``transformer()`` each) on ``d`` features: MADE layers (``autoregressive``, with an
    optional ``adjacency``) or half-mask couplings whose roles the ``permutation`` between
    layers swaps (the halves alternate without one). NSF and the monotone flows
    (:mod:`flowforge.models.monotone`) are this with their transformer; ``name`` is the
    builder's, for the messages."""
    cf = data.context_features
    hidden = widths(hidden)
    if adjacency is not None and not autoregressive:
        raise ValueError(
            f"adjacency= needs {name}(autoregressive=True): a coupling splits the dimensions in "
            "halves and cannot follow a graph"
        )
    adj, permutation = _structure(adjacency, d, permutation, lu, base=data.base)
    if autoregressive:
        return _autoregressive_stack(
            d,
            layers,
            lambda: Autoregressive(
                d, transformer(), hidden, cf, None, residual, activation, adjacency=adj
            ),
            permutation,
            lu,
            False,
        )
    if d < 2:
        raise ValueError(
            f"a coupling {name} needs features >= 2; for 1-d use {name}(..., "
            "autoregressive=True) (from the command line: --model-kwargs "
            "'{\"autoregressive\": true}')"
        )
    cond = mlp_conditioner(hidden, cf, activation, residual=residual)
    chain: list[Transform] = []
    for i in range(count("layers", layers)):
        chain += _between(i, permutation, lu, d)
        flip = permutation is None and i % 2 == 1
        # True = kept: the last floor(D/2) entries condition the first ceil(D/2)
        chain.append(Coupling(half_mask(d, flip=not flip), cond, transformer(), cf))
    return chain


# the arguments every elementwise-transformer flow (NSF, the monotone flows) takes alike
ELEMENTWISE_ARGS = (
    "layers", "hidden", "autoregressive", "permutation", "lu", "residual", "activation",
    "adjacency",
)  # fmt: skip


def elementwise_flow(name: str, transformer: Callable[[], Transformer], args: dict) -> Flow:
    """The flow of a builder that is :func:`elementwise_chain` with its own ``transformer``:
    ``args`` are the builder's arguments (its ``locals()``: ``features``, ``data`` and
    :data:`ELEMENTWISE_ARGS`; the transformer's own are the factory's)."""
    (d,) = event_shape(args["features"], None)
    data = args["data"]
    shared = {k: args[k] for k in ELEMENTWISE_ARGS}
    chain = elementwise_chain(d, transformer=transformer, data=data, name=name, **shared)
    return assemble(chain, (d,), data)


def maf_layers(features: int) -> int:
    """MAF's default depth for data of ``features`` dimensions."""
    return max(5, 32 // max(features, 1))


@register(inputs=("features",), depth="layers")
def MAF(
    features: int | None = None,
    layers: int | None = None,
    hidden: Sequence[int] | int | None = None,
    order: str | Sequence[int] = "natural",
    permutation: str | None = "auto",
    lu: bool = False,
    residual: bool | None = None,
    batch_norm: bool = False,
    scale_bound: float | None = 3.0,
    activation: str = "relu",
    adjacency: AdjacencyArg = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""Masked autoregressive flow (Papamakarios et al., 2017): affine MADE layers.

    Density evaluation is one pass per layer; sampling is ``features`` sequential steps.

    Args:
        features: data dimension (1 is allowed).
        layers: number of autoregressive layers (None: ``max(5, 32 // features)``: 16 for
            2-D data, 5 from 6 dimensions on; in few dimensions an affine layer gives each
            entry one affine map, so low-dimensional data needs more of them, docs/defaults.md).
        hidden: MADE hidden widths (None: three layers of 128 in a residual MADE, ``(128, 128)``
            without ``residual``).
        order: the first layer's order (``"natural"``, ``"reversed"``, ``"random"``); the
            ``permutation`` between layers varies it for the others.
        permutation: between layers: ``"reverse"``, ``"random"``, ``"lu"`` or None
            (``"auto"``: ``"reverse"``, or None with an ``adjacency``).
        lu: add an LU-linear layer after each permutation.
        residual: residual MADEs (None: True when ``hidden`` is not given; plain MADEs of the
            widths given otherwise).
        batch_norm: a batch-norm bijector after each layer (as in the paper).
        scale_bound: soft bound of the log-scale (None: unbounded).
        adjacency: a ``(D, D)`` matrix of 0/1 or booleans, ``adjacency[i, j]`` set where
            dimension ``i`` may depend on dimension ``j`` (a directed acyclic graph): every
            layer's MADE reads only the parents of each dimension, and sampling takes the
            graph's depth plus one sequential steps per layer. No permutation, ``lu`` or ``order``
            with it (they would break the structure).
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.MAF(features=3)
        >>> flow.log_prob(torch.randn(4, 3)).shape
        torch.Size([4])
    """
    (d,) = event_shape(features, None)
    cf = data.context_features
    adj, permutation = _structure(adjacency, d, permutation, lu, order, data.base)
    order = None if adj is not None else order
    residual = hidden is None if residual is None else residual
    hidden = ((128, 128, 128) if residual else (128, 128)) if hidden is None else hidden
    layers = maf_layers(d) if layers is None else layers
    chain = _autoregressive_stack(
        d,
        layers,
        lambda: Autoregressive(
            d, Affine(scale_bound), widths(hidden), cf, order, residual, activation, adjacency=adj
        ),
        permutation,
        lu,
        batch_norm,
    )
    return assemble(chain, (d,), data)


@register(inputs=("features",), depth="layers")
def IAF(
    features: int | None = None,
    layers: int = 5,
    hidden: Sequence[int] | int = (128, 128),
    order: str | Sequence[int] = "natural",
    permutation: str | None = "auto",
    lu: bool = False,
    residual: bool = False,
    scale_bound: float | None = 3.0,
    activation: str = "relu",
    adjacency: AdjacencyArg = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""Inverse autoregressive flow (Kingma et al., 2016): inverted affine MADE layers.

    Sampling and ``rsample_and_log_prob`` are one pass per layer (the choice for variational
    inference); ``log_prob`` of given data is ``features`` sequential steps per layer.
    Arguments as in :func:`MAF` (``adjacency`` included: with it ``log_prob`` takes the
    graph's depth plus one sequential steps per layer), with defaults of its own: 5 layers of
    a plain (not residual) MADE of two hidden layers of 128, whatever the dimension; there is
    no ``batch_norm``.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.IAF(features=3)
        >>> x, log_q = flow.rsample_and_log_prob(5)
    """
    (d,) = event_shape(features, None)
    cf = data.context_features
    adj, permutation = _structure(adjacency, d, permutation, lu, order, data.base)
    order = None if adj is not None else order
    chain = _autoregressive_stack(
        d,
        layers,
        lambda: Inverse(
            Autoregressive(
                d,
                Affine(scale_bound),
                widths(hidden),
                cf,
                order,
                residual,
                activation,
                adjacency=adj,
            )  # fmt: skip
        ),
        permutation,
        lu,
        False,
    )
    return assemble(chain, (d,), data)


@register(inputs=("features",), depth="layers")
def NSF(
    features: int | None = None,
    layers: int = 5,
    hidden: Sequence[int] | int = (128, 128),
    bins: int = 8,
    bound: float = 3.0,
    autoregressive: bool = False,
    permutation: str | None = "auto",
    lu: bool = False,
    residual: bool = False,
    activation: str = "relu",
    adjacency: AdjacencyArg = None,
    *,
    data: DataOptions,
) -> Flow:
    r"""Neural spline flow (Durkan et al., 2019): rational-quadratic splines with linear tails.

    ``autoregressive=False`` (NSF-C): spline couplings, fast in both directions; each coupling
    transforms the first ``ceil(D/2)`` entries from the others, and the ``permutation``
    between layers (default ``"auto"``: ``"reverse"``) swaps the roles (needs
    ``features >= 2``; with ``permutation=None`` the two halves alternate instead).
    ``autoregressive=True`` (NSF-AR): spline MADE layers, fast density and ``features``
    sequential sampling steps.

    Args:
        features: data dimension (at least 2 for couplings).
        layers: number of spline layers.
        hidden: widths of the conditioner (MLP or MADE); with ``residual=True`` a residual
            network of that constant width.
        bins: spline bins per dimension.
        bound: the splines act on ``[-bound, bound]`` and are the identity outside.
        permutation, lu: mixing between layers, as in :func:`MAF`.
        adjacency: with ``autoregressive=True``, a directed acyclic graph as in :func:`MAF`
            (structured spline MADEs, no mixing between layers); couplings take none.
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.NSF(features=4, layers=2, hidden=(16, 16))
        >>> flow.sample(3).shape
        torch.Size([3, 4])
    """
    return elementwise_flow("NSF", lambda: RationalQuadratic(bins, bound), locals())
