r"""Dequantization: uniform, and variational (Flow++, Ho et al. 2019, section 3.1).

Discrete data ``x`` in ``{0, ..., K-1}`` is modelled on its own scale. Uniform dequantization
adds ``u ~ U[0, 1)^D``; since each bin has width 1, ``E_u[log p(x + u)] <= log P(x)``, and
``NLL / (D ln 2)`` is the bits/dim over ``K`` levels that papers report.

The density model must then spread its mass flat over every bin, and the bound is loose
wherever it cannot. Variational dequantization instead draws ``u`` from a learned conditional
density ``q(u | x)`` on ``[0, 1)^D`` and trains it jointly with the flow on

    ``log P(x) >= E_{u ~ q(.|x)} [ log p(x + u) - log q(u | x) ]``

(Jensen's inequality, since ``P(x) = int_{[0,1)^D} p(x + u) du``). :class:`~flowforge.Flow`
subtracts ``log q``, so every reported NLL stays a valid bound in the data's own units.

Here ``q(u | x)`` is itself a conditional flow built from the library's layers
(:attr:`VariationalDequantization.flow`, a :class:`~flowforge.Transform` from ``u`` to noise whose
context is the rescaled discrete ``x``): a sigmoid onto ``(0, 1)`` and affine
:class:`~flowforge.transforms.Coupling` layers, the first of which keeps nothing and reads
only ``x``. Sampling pushes ``eps ~ N(0, I)`` through its inverse:

    ``log q(u | x) = log N(eps) - log|det du/deps|``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._util import LOG_2PI, checked_int
from .._util import event_shape as _event
from ..core import Compose, Dequantizer, Inverse, integer_limit
from ..nets import MLP, ConvResNet
from .coupling import Coupling, alternating_mask, checkerboard_mask
from .elementwise import Affine
from .preprocessing import Logit

__all__ = ["UniformDequantization", "VariationalDequantization", "ColumnDequantization"]


class UniformDequantization(Dequantizer):
    r"""``x -> x + u`` with ``u ~ U[0, 1)``, for integer data in ``[0, levels - 1]``.

    Called as ``dequantizer(x, context) -> (x + u, log q(u | x))``; here ``log q = 0``.
    ``quantize`` maps a continuous sample back to the grid (floor, then clamp).
    """

    def _dequantize(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x + torch.rand_like(x), x.new_zeros(x.shape[0])


class VariationalDequantization(Dequantizer):
    r"""Learned dequantization noise ``u ~ q(u | x)`` on ``[0, 1)^D`` for integer data.

    Called like :class:`UniformDequantization`: ``dequantizer(x, context) -> (x + u,
    log q(u | x))`` (the context is not read: ``x`` itself is the conditioning input), and
    ``quantize(y)`` maps samples back to the grid.

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

    def __init__(
        self,
        shape: Sequence[int] | int,
        levels: int,
        steps: int = 4,
        hidden: int = 32,
        blocks: int = 1,
        scale_bound: float = 3.0,
    ):
        super().__init__(levels)
        self.event_shape = _event(shape)
        if len(self.event_shape) not in (1, 3):
            raise ValueError(f"expected a shape (D,) or (C, H, W), got {self.event_shape}")
        image = len(self.event_shape) == 3
        n = self.event_shape[0]  # features (vectors) or channels (images), also of the context
        masks = [torch.zeros(self.event_shape, dtype=torch.bool)]  # 1st layer: all entries move
        steps = checked_int("steps", steps, 0)
        if math.prod(self.event_shape) > 1:
            for j in range(steps):
                if image:
                    masks.append(checkerboard_mask(self.event_shape, flip=j % 2 == 1))
                else:
                    masks.append(alternating_mask(n, flip=j % 2 == 1))

        def net(i: int, o: int):
            if image:
                return ConvResNet(i, o, hidden, blocks, context_features=n)
            return MLP(i, o, (hidden, hidden), context_features=n)

        couplings = [
            Coupling(m, net, Affine(scale_bound), context_shape=self.event_shape) for m in masks
        ]
        # eps -> v (the couplings) -> u = sigmoid(v); as a Transform, u -> eps (data to noise)
        sigmoid = Inverse(Logit(self.event_shape, levels=1.0, alpha=0.0))
        self.flow = Inverse(Compose(*couplings, sigmoid))

    def _features(self, x: Tensor) -> Tensor:
        """The discrete data rescaled to [-1, 1]: the q-flow's context."""
        return x * (2.0 / (self.levels - 1)) - 1.0

    def rsample(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Draw ``u ~ q(u | x)`` (reparametrised); returns ``(u, log q(u | x))``."""
        eps = torch.randn_like(x)
        u, ladj = self.flow.inverse(eps, self._features(x))
        log_n = -0.5 * (eps.square() + LOG_2PI).flatten(1).sum(1)
        return u, log_n - ladj

    def _dequantize(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u, log_q = self.rsample(x)
        # x + u may round up to x + 1 (u within an ulp of 1): keep the result in x's own bin,
        # so that quantize() gives x back
        y = torch.minimum(x + u, torch.nextafter(x + 1, x))
        return y, log_q

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, levels={self.levels}"

    @staticmethod
    def upgrade_format1(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
        """Map the weights of a dequantizer saved by flowforge/1 (one hand-written network per
        layer reading ``[v * keep, x]`` and writing all shifts, then all log-scales) onto this
        layout (the library's couplings). The map is exact: the dropped inputs were multiplied
        by zero and the dropped outputs were discarded."""
        out = {k: v for k, v in state.items() if not k.startswith(prefix + "nets.")}
        layers = {
            int(k[len(prefix) :].split(".")[1]) for k in state if k.startswith(prefix + "nets.")
        }
        for i in sorted(layers):
            old, new = f"{prefix}nets.{i}.", f"{prefix}flow.transform.layers.{i}.net."
            w = {k[len(old) :]: v for k, v in state.items() if k.startswith(old)}
            image = "inp.weight" in w  # a ConvResNet; else an MLP
            first = "inp.weight" if image else "net.0.weight"
            last = "out.1" if image else f"net.{max(int(k.split('.')[1]) for k in w)}"
            n = w[f"{last}.weight"].shape[0] // 2  # features or channels
            if image and i > 0:  # masked split: the same inputs, outputs for every entry
                moved = torch.arange(n)
            else:  # indexed split: inputs [x_kept, x], outputs for the moved entries only
                keep = torch.zeros(n, dtype=torch.bool)
                if i > 0:
                    keep = alternating_mask(n, flip=(i - 1) % 2 == 1)
                cols = torch.cat([keep.nonzero().squeeze(1), torch.arange(n, 2 * n)])
                w[first] = w[first][:, cols]
                moved = (~keep).nonzero().squeeze(1)
            rows = torch.stack([moved, moved + n], 1).reshape(-1)  # (shift, log-scale) pairs
            w[f"{last}.weight"] = w[f"{last}.weight"][rows]
            w[f"{last}.bias"] = w[f"{last}.bias"][rows]
            out.update({new + k: v for k, v in w.items()})
        return out


class ColumnDequantization(Dequantizer):
    r"""Uniform dequantization of some entries of a vector, for tables that mix integer
    columns (counts, ages, categories coded 0..K-1) with continuous ones.

    ``x -> x + u`` on the ``columns`` given, with ``u ~ U[0, 1)`` there and 0 elsewhere. The
    flow's ``log_prob`` is then a lower bound (exact in the limit of a flat density over each
    bin) on the log of the probability of the integer columns times the density of the
    continuous ones given them, ``E_u[log p(x + u)] <= log P(x_int, x_cont)`` (Jensen), the
    likelihood of mixed data; on integer columns alone a continuous density has no meaning, as
    it can grow without bound at the integers. ``quantize`` floors those columns of a sample
    (clamped to ``[lower, upper]`` where given) and leaves the others.

    Args:
        features: the vector's length.
        columns: the indices of the integer-valued entries (0-based, distinct).
        lower, upper: None, or one inclusive bound (a number or None) per entry of
            ``columns``, in its order: the integers each column holds (a flag: 0 and 1; a
            count: 0 and up). Data outside them is refused where values are checked; samples
            are clamped to them, and the share clamped is :meth:`off_grid`'s.

    Example:
        >>> deq = ColumnDequantization(3, columns=[1])
        >>> y, log_q = deq(torch.tensor([[0.5, 4.0, -1.2]]))
        >>> bool(4 <= y[0, 1] < 5), y[0, 0].item(), y[0, 2].item()
        (True, 0.5, -1.2000000476837158)
    """

    def __init__(self, features: int, columns: Sequence[int], lower=None, upper=None):
        super().__init__(None)
        checked_int("features", features)
        cols = list(columns) if isinstance(columns, (list, tuple)) else None
        if not cols or any(isinstance(c, bool) or not isinstance(c, int) for c in cols):
            raise ValueError(
                f"expected columns to be a non-empty list of integers, got {str(columns)[:80]}"
            )
        if len(set(cols)) != len(cols) or not all(0 <= c < features for c in cols):
            raise ValueError(
                f"expected distinct columns in [0, {features - 1}], got {str(cols)[:80]}"
            )
        lows, highs = _inclusive(lower, len(cols), "lower"), _inclusive(upper, len(cols), "upper")
        for c, a, b in zip(cols, lows, highs):
            if a is not None and b is not None and a > b:
                raise ValueError(f"expected column {c}'s lower bound <= its upper, got {a}, {b}")
        order = sorted(range(len(cols)), key=cols.__getitem__)
        self.features = features
        self.columns = [cols[i] for i in order]
        self.lower, self.upper = [lows[i] for i in order], [highs[i] for i in order]
        mask = torch.zeros(features, dtype=torch.bool)
        mask[self.columns] = True
        low = torch.full((features,), -math.inf)
        high = torch.full((features,), math.inf)
        for c, a, b in zip(self.columns, self.lower, self.upper):
            low[c] = -math.inf if a is None else a
            high[c] = math.inf if b is None else b
        # (fixed by the arguments: not saved; moved by .to())
        self.register_buffer("_mask", mask, persistent=False)
        self.register_buffer("_low", low.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("_high", high.to(torch.get_default_dtype()), persistent=False)

    def check(self, x: Tensor) -> None:
        """``ValueError`` unless ``x`` is ``(N, features)`` with integers within their bounds in
        its integer columns, which its dtype resolves with the noise added."""
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"expected data of shape (N, {self.features}), got {tuple(x.shape)}")
        if not x.numel():
            return
        v = x[:, self._mask]
        bad = (v != v.floor()) | (v < self._low[self._mask]) | (v > self._high[self._mask])
        if bad.any():
            j = int(bad.any(0).nonzero()[0, 0])
            value = v[:, j][bad[:, j]][0].item()
            a, b = self.lower[j], self.upper[j]
            span = f" in [{'-inf' if a is None else f'{a:g}'}, {'inf' if b is None else f'{b:g}'}]"
            raise ValueError(
                f"expected integers{span if (a, b) != (None, None) else ''} in column "
                f"{self.columns[j]} (an integer column), got {value:.10g}"
            )
        top = v.abs().max().item()
        if top >= integer_limit(x.dtype):
            raise ValueError(
                f"integer columns of magnitude {top:g} are more than {x.dtype} resolves with "
                "dequantization noise added; move the flow to float64 (flow.double())"
            )

    def _dequantize(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u = torch.rand_like(x) * self._mask
        return x + u, x.new_zeros(x.shape[0])

    def off_grid(self, y: Tensor) -> Tensor:
        """Where a sample's integer columns floor to a value outside their bounds."""
        f = y.floor()
        return self._mask & ((f < self._low) | (f > self._high))

    def clamped_share(self, y: Tensor) -> Tensor:
        """The share of the integer columns' sampled values that :meth:`quantize` clamps."""
        return self.clamped_shares(y)[0]

    def clamped_shares(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`clamped_share`, and the same share for each column of the vector (0 for the
        continuous ones), in one pass."""
        by = self.off_grid(y).float().mean(0)  # (masked by product: no read back to the host)
        return (by * self._mask).sum() / self._mask.sum(), by

    def quantize(self, y: Tensor) -> Tensor:
        """A sample's integer columns floored (and clamped to their bounds); the others as
        they are."""
        f = torch.minimum(torch.maximum(y.floor(), self._low), self._high)
        return torch.where(self._mask, f, y)

    def extra_repr(self) -> str:
        bounds = (
            f", lower={self.lower}, upper={self.upper}"
            if any(b is not None for b in self.lower + self.upper)
            else ""
        )
        return f"features={self.features}, columns={self.columns}{bounds}"


def _inclusive(value, n: int, what: str) -> list:
    """``value`` (None, or one integer or None per column) as ``n`` integers or Nones."""
    if value is None:
        return [None] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(
            f"expected one {what} bound (an integer or None) per column, got {str(value)[:80]}"
        )
    out = []
    for v in value:
        ok = v is None or (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and abs(v) <= 2**53  # (exact in a float; a JSON integer can be of any size)
            and v == math.floor(v)
        )
        if not ok:
            raise ValueError(
                f"expected each {what} bound to be an integer of at most 2^53 or None, got "
                f"{repr(v)[:40]}"
            )
        out.append(None if v is None else int(v))
    return out
