r"""Block neural autoregressive flows: ``BNAF`` (registered in :mod:`flowforge.models`).

A BNAF stacks :class:`~flowforge.transforms.BlockNeuralAutoregressive` transforms (each a
block-triangular ``tanh`` network with a gated identity term, an exact log-determinant and a
numerical inverse) with a permutation between them (the paper's reversals). Density evaluation
is one network pass per layer; sampling solves ``features`` scalar equations in sequence per
layer (docs/bnaf.md has the cost and the measured times).
"""

from __future__ import annotations

from ..core import Flow, Transform
from ..transforms import BlockNeuralAutoregressive
from .assembly import DataOptions, assemble, count, event_shape, mixer
from .registry import register

__all__ = ["BNAF"]


@register(inputs=("features",), depth="layers", width=None, lr=1e-2)
def BNAF(
    features: int | None = None,
    layers: int = 3,
    hidden: int = 16,
    depth: int = 1,
    permutation: str | None = "reverse",
    *,
    data: DataOptions,
) -> Flow:
    r"""Block neural autoregressive flow (De Cao, Titov & Aziz, 2019).

    Args:
        features: data dimension (1 is allowed).
        layers: stacked BNAF transforms (the defaults, 3 transforms of one hidden layer of
            16 units per dimension, were the best of the sizes tried on 8gaussians' validation
            NLL at a 15-20 s training budget, docs/bnaf.md).
        hidden: hidden units per dimension in each transform (its hidden layers have
            ``features * hidden`` units; per dimension, so the workbench's width rule, made
            for whole layers, does not size it).
        depth: hidden layers in each transform.
        permutation: between transforms: ``"reverse"`` (the paper's), ``"random"``, ``"lu"``
            or None.
        (and the data options of :mod:`flowforge.models.assembly`; a context enters each
        transform's first layer linearly)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.BNAF(features=2, layers=2, hidden=8)
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
        >>> flow.sample(3).shape
        torch.Size([3, 2])
    """
    (d,) = event_shape(features, None)
    hidden, depth = count("hidden", hidden), count("depth", depth)
    chain: list[Transform] = []
    for i in range(count("layers", layers)):
        chain += mixer(permutation, d) if i else []
        chain.append(BlockNeuralAutoregressive(d, hidden, depth, data.context_features))
    return assemble(chain, (d,), data)
