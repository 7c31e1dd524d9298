r"""The FFJORD builder (continuous normalizing flows).

torchdiffeq is imported only when a CNF is built (``pip install 'flowforge[ode]'``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Flow, Transform
from ..transforms import CNF, ActNorm
from .assembly import DataOptions, assemble, event_shape, widths
from .registry import register

__all__ = ["FFJORD"]


@register(inputs=("features",), depth="blocks")
def FFJORD(
    features: int | None = None,
    blocks: int = 1,
    hidden: Sequence[int] | int = (64, 64),
    time: float = 1.0,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    adjoint: bool = False,
    trace: str = "auto",
    noise: str = "rademacher",
    regularization: dict | None = None,
    max_steps: int = 1000,
    activation: str = "tanh",
    actnorm: bool = True,
    *,
    data: DataOptions,
) -> Flow:
    r"""FFJORD (Grathwohl et al., 2019): one or more continuous normalizing flow blocks.

    Each block is a :class:`~flowforge.transforms.CNF` integrated with torchdiffeq (install
    ``flowforge[ode]``); with ``actnorm`` an :class:`~flowforge.transforms.ActNorm` precedes
    each block. Training adds each block's ``regularization()`` (RNODE) to the loss and
    logs ``metrics()``
    (function evaluations); the workbench trainer does both.

    Args:
        features: data dimension.
        blocks: number of CNF blocks.
        hidden: widths of each block's dynamics network (concat-squash layers).
        time, method, rtol, atol, step_size, adjoint, noise, regularization, max_steps,
            activation: as in :class:`~flowforge.transforms.CNF`.
        trace: ``"auto"`` (exact for ``features <= 8``, else Hutchinson), ``"exact"`` or
            ``"hutchinson"``.
        actnorm: an ActNorm (data-initialised) before each block.
        (and the data options of :mod:`flowforge.models.assembly`)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.FFJORD(features=2, hidden=(16, 16))
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """
    (d,) = event_shape(features, None)
    hidden = widths(hidden)
    if blocks < 1:
        raise ValueError(f"expected blocks >= 1, got {blocks}")
    chain: list[Transform] = []
    for _ in range(blocks):
        if actnorm:
            chain.append(ActNorm(d))
        chain.append(
            CNF(
                d,
                hidden=hidden,
                context_features=data.context_features,
                time=time,
                method=method,
                rtol=rtol,
                atol=atol,
                step_size=step_size,
                adjoint=adjoint,
                trace=trace,
                noise=noise,
                regularization=regularization,
                max_steps=max_steps,
                activation=activation,
            )
        )
    return assemble(chain, (d,), data)
