r"""Variational dequantization (Flow++, Ho et al. 2019, section 3.1).

Uniform dequantization fills each bin of discrete data with ``u ~ U[0, 1)^D``; the density
model must then spread its mass flat over every bin, and the bound
``E_u[log p(x + u)] <= log P(x)`` is loose wherever it cannot. Variational dequantization
instead draws ``u`` from a learned conditional density ``q(u | x)`` on ``[0, 1)^D`` and trains
it jointly with the flow on

    ``log P(x) >= E_{u ~ q(.|x)} [ log p(x + u) - log q(u | x) ]``

(Jensen's inequality, since ``P(x) = int_{[0,1)^D} p(x + u) du``). :class:`Flow` already
subtracts ``log q``, so every reported NLL stays a valid bound in the data's own units.

Here ``q(u | x)`` is itself a small conditional flow: ``eps ~ N(0, I)``, then a conditional
elementwise affine map and ``steps`` affine couplings whose networks read the (rescaled)
discrete ``x`` as extra inputs, then a sigmoid onto ``(0, 1)``. Its log-density counts every
log-determinant, the sigmoid's included:

    ``log q(u | x) = log N(eps) - log|det dv/deps| - sum log sigmoid'(v)``,  ``u = sigmoid(v)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets import MLP, ConvResNet
from .coupling import alternating_mask, checkerboard_mask
from .elementwise import Affine
from .preprocessing import UniformDequantization

__all__ = ["VariationalDequantization"]

_LOG_2PI = math.log(2 * math.pi)


class VariationalDequantization(nn.Module):
    r"""Learned dequantization noise ``u ~ q(u | x)`` on ``[0, 1)^D`` for integer data.

    Called like :class:`~flowforge.transforms.UniformDequantization`:
    ``dequantizer(x, context) -> (x + u, log q(u | x))`` (the context is not read: ``x`` itself
    is the conditioning input), and ``quantize(y)`` maps samples back to the grid.

    Args:
        shape: event shape of the data, ``(D,)`` (or an int) or ``(C, H, W)``.
        levels: number of discrete levels; data must be integers in ``[0, levels - 1]``.
        steps: affine couplings after the first (fully conditional) affine layer; masks
            alternate (even/odd entries for vectors, checkerboard for images).
        hidden: width of each network (MLP units for vectors, channels for images).
        blocks: residual blocks of each image network.
        scale_bound: soft bound on each log-scale (``b * tanh(s / b)``).

    Example:
        >>> deq = VariationalDequantization((1, 4, 4), levels=17, steps=2, hidden=8)
        >>> x = torch.randint(0, 17, (3, 1, 4, 4)).float()
        >>> y, log_q = deq(x)
        >>> bool(((y - x >= 0) & (y - x < 1)).all()), log_q.shape
        (True, torch.Size([3]))
    """

    context_features = 0

    def __init__(
        self,
        shape: Sequence[int] | int,
        levels: int,
        steps: int = 4,
        hidden: int = 32,
        blocks: int = 1,
        scale_bound: float = 3.0,
    ):
        super().__init__()
        if levels < 2:
            raise ValueError(f"expected levels >= 2, got {levels}")
        self.event_shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if len(self.event_shape) not in (1, 3):
            raise ValueError(f"expected a shape (D,) or (C, H, W), got {self.event_shape}")
        self.levels = int(levels)
        self.scale_bound = float(scale_bound)
        # each layer is an affine coupling whose networks also read x; the law is the shared one
        self.law = Affine(self.scale_bound)
        image = len(self.event_shape) == 3
        n = self.event_shape[0]  # features (vectors) or channels (images)
        size = math.prod(self.event_shape)
        masks = [torch.zeros(self.event_shape, dtype=torch.bool)]  # 1st layer: all entries move
        if size > 1:
            for j in range(int(steps)):
                if image:
                    masks.append(checkerboard_mask(self.event_shape, flip=j % 2 == 1))
                else:
                    masks.append(alternating_mask(n, flip=j % 2 == 1))
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m, persistent=False)
        if image:
            self.nets = nn.ModuleList(ConvResNet(2 * n, 2 * n, hidden, blocks) for _ in masks)
        else:
            self.nets = nn.ModuleList(MLP(2 * n, 2 * n, (hidden, hidden)) for _ in masks)

    # -- the u-flow ------------------------------------------------------------------------------
    def _features(self, x: Tensor) -> Tensor:
        """The discrete data rescaled to [-1, 1], the networks' conditioning input."""
        return x * (2.0 / (self.levels - 1)) - 1.0

    def flow(self, eps: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""``eps -> u`` for data ``x``: returns ``(u, log|det du/deps|)``.

        ``u`` is in ``(0, 1)``; a value that the sigmoid rounds to 1 is clamped to the largest
        float below 1 (the log-determinant is the exact one of the sigmoid).
        """
        h_x = self._features(x)
        v, ladj = eps, eps.new_zeros(eps.shape[0])
        for i, net in enumerate(self.nets):
            m = getattr(self, f"mask{i}")
            keep = m.to(eps.dtype)
            shift, raw = net(torch.cat([v * keep, h_x], 1)).chunk(2, dim=1)
            moved, log_s = self.law(v, torch.stack([shift, raw], -1))
            v = torch.where(m, v, moved)
            ladj = ladj + (log_s * (1 - keep)).flatten(1).sum(1)
        u = torch.sigmoid(v).clamp(max=1.0 - torch.finfo(v.dtype).eps)
        ladj = ladj + (-F.softplus(-v) - F.softplus(v)).flatten(1).sum(1)
        return u, ladj

    def rsample(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Draw ``u ~ q(u | x)`` (reparametrised); returns ``(u, log q(u | x))``."""
        eps = torch.randn_like(x)
        u, ladj = self.flow(eps, x)
        log_n = -0.5 * (eps.square() + _LOG_2PI).flatten(1).sum(1)
        return u, log_n - ladj

    # -- the dequantizer interface -----------------------------------------------------------
    def check(self, x: Tensor) -> None:
        UniformDequantization.check(self, x)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check(x)
        u, log_q = self.rsample(x)
        # x + u may round up to x + 1 in low precision (u within an ulp of 1 at large x):
        # keep the result in x's own bin, so that quantize() gives x back
        y = torch.minimum(x + u, torch.nextafter(x + 1, x))
        return y, log_q

    def quantize(self, y: Tensor) -> Tensor:
        return y.floor().clamp_(0, self.levels - 1)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, levels={self.levels}, layers={len(self.nets)}"
