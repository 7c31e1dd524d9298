r"""Preprocessing that counts: fixed rescalings whose log-determinant is part of every reported
likelihood.

:class:`Logit` (RealNVP) and :class:`Standardize` are ordinary transforms placed first in the
chain, so their ``ladj`` lands in ``log_prob`` and the units stay those of the raw data (the
dequantizers are in :mod:`flowforge.transforms.dequantization`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._util import event_shape as _event
from ..core import Transform

__all__ = ["Logit", "Standardize"]


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
