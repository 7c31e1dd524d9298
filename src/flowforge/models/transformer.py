r"""Transformer autoregressive flows: TarFlow (registered in :mod:`flowforge.models`).

TarFlow (Zhai et al., ICML 2025) is a masked autoregressive flow whose conditioner is a causal
transformer over tokens (features, pixels or patches): a stack of
:class:`~flowforge.transforms.Autoregressive` layers on
:class:`~flowforge.attention.CausalTransformer` nets, with the token order flipped between
blocks. STARFlow's deep-shallow design (Gu et al., NeurIPS 2025), a deep first block and
shallow ones after it, is ``deep=``.

Density evaluation is one transformer pass per block; sampling is ``tokens`` sequential steps
per block (keys and values cached), or a few parallel Jacobi sweeps after
``flowforge.transforms.set_inverse(flow, "parallel")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch  # noqa: F401  (doctests use it)

from .._util import unknown
from ..attention import CausalTransformer
from ..core import Flow, Transform, Transformer
from ..transforms import Affine, Autoregressive, LogisticMixture, RationalQuadratic
from .assembly import DataOptions, assemble, count, event_shape
from .registry import register

__all__ = ["TarFlow", "TRANSFORMERS"]

TRANSFORMERS = ("affine", "spline", "mixture")


# the arguments each elementwise transformer reads (the others must keep their defaults)
_READS = {
    "affine": ("scale_bound",),
    "spline": ("bins", "bound"),
    "mixture": ("mixtures", "scale_bound", "spread"),
}


def _transformer(
    kind: str, scale_bound: float, bins: int, bound: float, mixtures: int, spread: float
):
    given = {"scale_bound": scale_bound, "bins": bins, "bound": bound, "mixtures": mixtures}
    if spread != 0.0:  # (0: what a model saved before spread existed records, any kind)
        given["spread"] = spread
    default = inspect.signature(TarFlow).parameters  # (the builder's own defaults)
    unused = [
        k for k, v in given.items() if k not in _READS.get(kind, given) and v != default[k].default
    ]
    if unused:  # (a value the chosen transformer never reads: another model than the user meant)
        users = sorted({t for t, reads in _READS.items() for k in unused if k in reads})
        raise ValueError(
            f"{', '.join(unused)} {'applies' if len(unused) == 1 else 'apply'} to "
            f"transformer={' or '.join(map(repr, users))}, not to the {kind!r} transformer this "
            f"TarFlow has: leave {'it' if len(unused) == 1 else 'them'} out, or choose such a "
            "transformer instead"
        )
    if kind == "affine":
        return Affine(scale_bound)
    if kind == "spline":
        return RationalQuadratic(bins, bound)
    if kind == "mixture":
        return LogisticMixture(mixtures, affine_bound=scale_bound, spread=spread)
    raise unknown("transformer", kind, TRANSFORMERS)


@register(inputs=("features", "shape"), depth="blocks", width="width")
def TarFlow(
    features: int | None = None,
    shape: Sequence[int] | None = None,
    blocks: int = 4,
    depth: int = 2,
    deep: int | None = None,
    width: int = 128,
    heads: int = 4,
    patch: int = 1,
    transformer: str = "affine",
    bins: int = 8,
    bound: float = 4.0,
    mixtures: int = 4,
    spread: float = 1.0,
    scale_bound: float = 3.0,
    dropout: float = 0.0,
    mlp_ratio: int = 4,
    *,
    data: DataOptions,
) -> Flow:
    r"""Transformer autoregressive flow (TarFlow): autoregressive blocks conditioned by causal
    transformers, the token order flipped between blocks.

    Args:
        features: data dimension (vectors; tokens of ``patch`` features).
        shape: image shape ``(C, H, W)`` (tokens of ``patch x patch`` pixels, all channels).
        blocks: the number of autoregressive blocks (each a causal transformer).
        depth: transformer layers per block.
        deep: layers of the first block (STARFlow's deep-shallow design; None: ``depth``).
        width: the transformers' width.
        heads: attention heads (dividing ``width``).
        patch: token size; must divide the features, or the height and width.
        transformer: the elementwise transformer of every block: ``"affine"`` (TarFlow),
            ``"spline"`` (rational-quadratic, ``bins`` on ``[-bound, bound]``) or
            ``"mixture"`` (Flow++'s logistic-mixture CDF, ``mixtures`` components). An
            argument the chosen transformer does not read (``bins`` for an affine TarFlow) is
            refused unless it has its default value.
        spread: the mixture components' fixed mean offsets span ``[-spread, spread]``, so
            that they can come apart (0: equal components that stay equal, an affine map;
            models saved before this argument have 0).
        scale_bound: soft bound of the affine log-scales (affine and mixture).
        dropout: dropout inside the transformers.
        mlp_ratio: the MLP width of each transformer layer, in multiples of ``width``.
        (and the data options of :mod:`flowforge.models.assembly`: a ``context_features``
        vector is embedded and added to every token of every block)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.TarFlow(shape=(1, 8, 8), blocks=2, width=32, patch=2, levels=17)
        >>> flow.sample(2).shape
        torch.Size([2, 1, 8, 8])
        >>> ff.models.TarFlow(features=6, blocks=2, width=16, transformer="spline").dims
        6
    """
    shape = event_shape(features, shape)
    for name, v in (("blocks", blocks), ("depth", depth), ("mixtures", mixtures)):
        count(name, v)
    if deep is not None and (isinstance(deep, bool) or not isinstance(deep, int) or deep < 1):
        raise ValueError(f"expected deep to be None or an integer >= 1, got {deep!r}")
    cf = data.context_features

    def block(i: int) -> Transform:
        t: Transformer = _transformer(transformer, scale_bound, bins, bound, mixtures, spread)
        net = CausalTransformer(
            shape,
            t.params_per_dim,
            width=width,
            depth=deep if i == 0 and deep is not None else depth,
            heads=heads,
            patch=patch,
            context_features=cf,
            dropout=dropout,
            order="natural" if i % 2 == 0 else "reversed",
            mlp_ratio=mlp_ratio,
        )
        return Autoregressive(shape, t, context_features=cf, net=net)

    return assemble([block(i) for i in range(blocks)], shape, data)
