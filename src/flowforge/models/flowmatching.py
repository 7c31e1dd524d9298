r"""The CNF builder for flow matching (``flowforge.matching``).

torchdiffeq is imported only when a CNF is built (``pip install 'flowforge[ode]'``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Flow, Transform
from ..transforms import CNF as CNFLayer
from ..transforms import ActNorm
from .assembly import DataOptions, assemble, event_shape, widths
from .registry import register

__all__ = ["CNF"]


@register(inputs=("features",))
def CNF(
    features: int | None = None,
    hidden: Sequence[int] | int = (64, 64, 64),
    time: float = 1.0,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    step_size: float | None = None,
    trace: str = "auto",
    noise: str = "rademacher",
    max_steps: int = 1000,
    activation: str = "tanh",
    actnorm: bool = True,
    *,
    data: DataOptions,
) -> Flow:
    r"""A continuous normalizing flow to train by flow matching: one CNF block, fixed base.

    ``[ActNorm] -> CNF -> N(0, I)``, the form :mod:`flowforge.matching` trains: the ActNorm
    (data-initialised, then held fixed by the flow-matching loss) standardises the data, and
    the CNF's network regresses the velocity of the path from data to noise
    (``flowforge train --model cnf --objective flow-matching``). The solver settings are those
    used to score and sample (the training needs no solve); maximum likelihood also works.

    Args:
        features: data dimension.
        hidden: widths of the dynamics network (concat-squash layers, time in every layer).
        time, method, rtol, atol, step_size, noise, max_steps, activation: as in
            :class:`~flowforge.transforms.CNF` (rtol = atol = 1e-5 score to about 1e-4 nats).
        trace: ``"auto"`` (exact for ``features <= 8``, else Hutchinson), ``"exact"`` or
            ``"hutchinson"``.
        actnorm: a data-initialised ActNorm before the CNF.
        (and the data options of :mod:`flowforge.models.assembly`; flow matching needs
        ``base="normal"`` and uniform dequantization)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.build("cnf", features=2, hidden=(16, 16))
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """
    (d,) = event_shape(features, None)
    chain: list[Transform] = [ActNorm(d)] if actnorm else []
    chain.append(
        CNFLayer(
            d,
            hidden=widths(hidden),
            context_features=data.context_features,
            time=time,
            method=method,
            rtol=rtol,
            atol=atol,
            step_size=step_size,
            trace=trace,
            noise=noise,
            max_steps=max_steps,
            activation=activation,
        )
    )
    return assemble(chain, (d,), data)
