r"""The CNF builder for flow matching (``flowforge.matching``).

torchdiffeq is imported only when a CNF is built (``pip install 'flowforge[ode]'``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core import Flow, Transform
from ..transforms import CNF as CNFLayer
from ..transforms import ActNorm
from ..transforms.continuous import SMOOTH_ACTIVATIONS, ConcatSquash, ODENet
from .assembly import DataOptions, assemble, event_shape, widths
from .registry import register

__all__ = ["CNF", "TimeEmbeddingNet"]


# -- a dynamics network with embedded time -----------------------------------------------------


def _space_scales(space_scale, space_features: int) -> tuple[float, ...]:
    """``space_scale`` (a number or a non-empty sequence of them) as a tuple, checked."""
    many = isinstance(space_scale, Sequence) and not isinstance(space_scale, str)
    scales = tuple(space_scale) if many else (space_scale,)
    for v in scales:
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"expected a finite space_scale > 0, got {space_scale!r}")
    if not scales:
        raise ValueError("expected at least one space_scale, got an empty sequence")
    if space_features % len(scales):
        raise ValueError(
            f"space_features ({space_features}) must be a multiple of the number of space "
            f"scales ({len(scales)})"
        )
    return tuple(float(v) for v in scales)


class TimeEmbeddingNet(nn.Module):
    r"""FFJORD's concat-squash network (:class:`~flowforge.transforms.continuous.ODENet`) with
    the time embedded: every layer's gate and shift see ``t``, ``sin(pi 2^j t)``,
    ``cos(pi 2^j t)`` for ``j < frequencies`` and ``log(t + eps)`` (and the context), so the
    field can change quickly in time (near the data end, ``t = 0``, for thin structures).
    With ``space_features = K > 0`` the state enters as ``[z, sin(z B), cos(z B)]`` too, ``B``
    a fixed ``(d, K)`` Gaussian matrix of standard deviation ``space_scale`` (drawn from seed
    0, so every build has the same one; a list of scales splits its columns into equal groups,
    one per scale): random Fourier features (Tancik et al. 2020), which
    let the field change quickly in space; the first layer has ``d + 2K`` inputs, the last ``d``
    outputs.
    A CNF's ``net`` (``CNF(d, net=TimeEmbeddingNet(d, ...))``); it accepts one time per row
    (flow matching) or a 0-d time (an ODE solve).

    Args:
        features: data dimension.
        hidden: widths of the concat-squash layers.
        context_features: the context's width (0: unconditional).
        activation: tanh, softplus, elu or silu.
        frequencies: how many sine/cosine pairs, ``>= 0``.
        eps: the offset of the log-time feature, ``> 0`` (0: no log feature).
        space_features: how many random Fourier features of the state, ``>= 0``.
        space_scale: their frequencies' standard deviation, ``> 0``; or a sequence of ``m``
            such scales (a mixture: ``space_features`` must be a multiple of ``m``, and each
            scale has ``space_features / m`` of the features).
    """

    def __init__(
        self,
        features: int,
        hidden=(64, 64, 64),
        context_features: int = 0,
        activation: str = "tanh",
        frequencies: int = 6,
        eps: float = 1e-3,
        space_features: int = 0,
        space_scale: float | Sequence[float] = 1.0,
    ):
        super().__init__()
        for name, v in (("frequencies", frequencies), ("space_features", space_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"expected an integer {name} >= 0, got {v!r}")
        scales = _space_scales(space_scale, space_features)
        if (
            isinstance(eps, bool)
            or not isinstance(eps, (int, float))
            or not (math.isfinite(eps) and eps >= 0)
        ):
            raise ValueError(f"expected a finite eps >= 0, got {eps!r}")
        if activation not in SMOOTH_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {SMOOTH_ACTIVATIONS}"
            )
        self.frequencies, self.eps = frequencies, float(eps)
        self.context_features = context_features
        width = 2 * frequencies + (1 if eps else 0)
        self.features, self.space_features = features, space_features
        wide = features + 2 * space_features
        self.inner = ODENet(wide, tuple(hidden), context_features + width, activation)
        if space_features:  # the velocity only: the last layer has d outputs, not d + 2K
            last = self.inner.layers[-1].linear.in_features
            self.inner.layers[-1] = ConcatSquash(last, features, 1 + context_features + width)
        self.register_buffer("scales", math.pi * 2.0 ** torch.arange(frequencies), False)
        g = torch.Generator().manual_seed(0)
        B = torch.randn(features, space_features, generator=g)
        if space_features:  # group j of the columns has standard deviation scales[j]
            B = B * torch.tensor(scales, dtype=B.dtype).repeat_interleave(
                space_features // len(scales)
            )
        self.register_buffer("B", B, False)

    def embed(self, t: Tensor, n: int, like: Tensor) -> Tensor:
        t = t.to(like).reshape(-1, 1).expand(n, 1)
        parts = []
        if self.frequencies:
            arg = t * self.scales.to(like)
            parts += [torch.sin(arg), torch.cos(arg)]
        if self.eps:  # (an adaptive solver's stages may step a little past t = 0)
            parts.append(torch.log(t.clamp_min(0) + self.eps))
        return torch.cat(parts, 1) if parts else t[:, :0]

    def forward(self, t: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        # a 0-d time (an ODE solve) is embedded once; the network broadcasts its one row
        rows = z.shape[0] if t.dim() or self.context_features else 1
        c = self.embed(t, rows, z)
        if self.context_features:
            c = torch.cat([c, context.to(z)], 1)
        if not self.space_features:
            return self.inner(t, z, c)
        zb = z @ self.B.to(z)
        return self.inner(t, torch.cat([z, torch.sin(zb), torch.cos(zb)], 1), c)


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
    time_frequencies: int | None = None,
    time_eps: float = 1e-3,
    space_features: int = 0,
    space_scale: float | Sequence[float] = 1.0,
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
            :class:`~flowforge.transforms.CNF` (rtol = atol = 1e-5: against a solve at 1e-10,
            a trained 2-D model's points were off by 1e-5 nats on average and by up to 2e-3;
            the adaptive step is shared by the batch, so a point's score moves by as much with
            the batch it is scored in: tighten both tolerances for per-point accuracy).
        trace: ``"auto"`` (exact for ``features <= 8``, else Hutchinson), ``"exact"`` or
            ``"hutchinson"``.
        actnorm: a data-initialised ActNorm before the CNF. With the data standardised
            (``standardize``, the default) it starts as the identity, and flow matching does
            not train the layers before the CNF, so it stays so (an audit); it matters for a
            flow built with ``standardize=False``, or trained by maximum likelihood.
        time_frequencies: ``None`` (FFJORD's network, time entering each gate raw) or an
            ``int >= 0``: a :class:`TimeEmbeddingNet` of the same widths with that many
            sine/cosine pairs of time and ``log(t + time_eps)`` (``time_eps > 0``; 0: none).
        space_features, space_scale: random Fourier features of the state
            (:class:`TimeEmbeddingNet`; 0: none); ``space_scale`` may be a list of scales
            (a mixture, the features split equally among them). ``time_eps`` without
            ``time_frequencies``, or ``space_scale`` without ``space_features``, is refused
            unless it has its default value (no network would read it).
        (and the data options of :mod:`flowforge.models.assembly`; flow matching needs
        ``base="normal"`` and uniform dequantization)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.build("cnf", features=2, hidden=(16, 16))
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """
    (d,) = event_shape(features, None)
    default = inspect.signature(CNF).parameters  # (the builder's own defaults)
    for name, value, needs, has in (
        ("time_eps", time_eps, "time_frequencies", time_frequencies is not None),
        ("space_scale", space_scale, "space_features", bool(space_features)),
    ):  # (a value no network reads: another model than the user meant)
        if value != default[name].default and not has:
            raise ValueError(
                f"{name} applies only with {needs}, which this CNF does not have: leave {name} "
                f"out, or set {needs}"
            )
    if isinstance(time_eps, bool) or not (
        isinstance(time_eps, (int, float)) and math.isfinite(time_eps) and time_eps >= 0
    ):
        raise ValueError(f"expected a finite time_eps >= 0, got {time_eps!r}")
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
            net=None
            if time_frequencies is None and not space_features
            else TimeEmbeddingNet(
                d,
                widths(hidden),
                data.context_features,
                activation,
                time_frequencies or 0,
                time_eps if time_frequencies is not None else 0.0,
                space_features,
                space_scale,
            ),
        )
    )
    return assemble(chain, (d,), data)
