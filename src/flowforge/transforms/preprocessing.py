r"""Preprocessing that counts: dequantization, and fixed rescalings whose log-determinant is
part of every reported likelihood.

Discrete data ``x`` in ``{0, ..., K-1}`` is modelled on its own scale. Uniform dequantization
adds ``u ~ U[0, 1)^D``; since each bin has width 1, ``E_u[log p(x + u)]`` is a lower bound on
``log P(x)``, and ``NLL / (D ln 2)`` is the bits/dim over ``K`` levels that papers report.
:class:`Logit` (RealNVP) and :class:`Standardize` are ordinary transforms placed first in the
chain, so their ``ladj`` lands in ``log_prob`` and the units stay those of the raw data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Transform

__all__ = ["UniformDequantization", "Logit", "Standardize"]


def _event(shape) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(shape)


class UniformDequantization(nn.Module):
    r"""``x -> x + u`` with ``u ~ U[0, 1)``, for integer data in ``[0, levels - 1]``.

    Called as ``dequantizer(x, context) -> (x + u, log q(u | x))``; here ``log q = 0``.
    ``quantize`` maps a continuous sample back to the grid (floor, then clamp).
    """

    context_features = 0

    def __init__(self, levels: int):
        super().__init__()
        if levels < 2:
            raise ValueError(f"expected levels >= 2, got {levels}")
        self.levels = int(levels)

    def check(self, x: Tensor) -> None:
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > self.levels - 1:
            raise ValueError(
                f"expected discrete data in [0, {self.levels - 1}] ({self.levels} levels), "
                f"got values in [{lo:g}, {hi:g}]"
            )
        if not torch.equal(x, x.floor()):
            raise ValueError(
                f"expected integer-valued data for {self.levels}-level dequantization, "
                "got non-integer values"
            )

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(x)
        return x + torch.rand_like(x), x.new_zeros(x.shape[0])

    def quantize(self, y: Tensor) -> Tensor:
        return y.floor().clamp_(0, self.levels - 1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class Logit(Transform):
    r"""RealNVP's logit preprocessing: ``y = logit(alpha + (1 - 2 alpha) x / levels)``.

    Maps ``x`` in ``(0, levels)`` (dequantized data) to the real line. ``alpha`` keeps the logit
    away from the boundaries (0.05 in RealNVP).
    """

    def __init__(self, shape, levels: float = 1.0, alpha: float = 0.05):
        super().__init__(_event(shape))
        if not 0 <= alpha < 0.5:
            raise ValueError(f"expected 0 <= alpha < 0.5, got {alpha}")
        self.levels, self.alpha = float(levels), float(alpha)
        self._const = math.log(1 - 2 * alpha) - math.log(self.levels)

    def _forward(self, x, context):
        p = self.alpha + (1 - 2 * self.alpha) * x / self.levels
        y = torch.log(p) - torch.log1p(-p)
        ladj = self._const - torch.log(p) - torch.log1p(-p)
        return y, ladj.flatten(1).sum(1)

    def _inverse(self, y, context):
        p = torch.sigmoid(y)
        x = (p - self.alpha) / (1 - 2 * self.alpha) * self.levels
        # log p + log(1 - p) = -softplus(-y) - softplus(y)
        ladj = -F.softplus(-y) - F.softplus(y) - self._const
        return x, ladj.flatten(1).sum(1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", levels={self.levels:g}, alpha={self.alpha}"


class Standardize(Transform):
    r"""A fixed affine map ``z = (x - loc) / scale`` (e.g. training-set statistics).

    ``loc`` and ``scale`` are saved buffers, broadcast against the event shape.
    """

    def __init__(self, shape, loc: Tensor | float = 0.0, scale: Tensor | float = 1.0):
        super().__init__(_event(shape))
        loc = torch.as_tensor(loc, dtype=torch.get_default_dtype()).expand(self.event_shape)
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype()).expand(self.event_shape)
        if not (scale > 0).all():
            raise ValueError("expected every scale > 0")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale", scale.clone())

    def _forward(self, x, context):
        return (x - self.loc) / self.scale, (-self.scale.log().sum()).expand(x.shape[0])

    def _inverse(self, z, context):
        return z * self.scale + self.loc, self.scale.log().sum().expand(z.shape[0])
