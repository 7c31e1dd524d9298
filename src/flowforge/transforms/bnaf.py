r"""Block neural autoregressive flow (BNAF; De Cao, Titov & Aziz, 2019), as one transform.

The network
-----------
One BNAF transform is a small neural network on ``D`` inputs whose weight matrices are
*block-triangular*: with ``H`` hidden units per dimension, the layer from ``a`` to ``b`` units
per dimension has a ``(D b, D a)`` matrix cut into ``D x D`` blocks of ``b x a``. Blocks above
the diagonal are zero, blocks below it are free, and the diagonal blocks are positive. Between
layers runs ``tanh``, strictly increasing. Hidden unit ``(d, k)`` then reads only ``x_1..x_d``
and increases with ``x_d``, so output ``f_d`` depends on ``x_1..x_d`` only and increases with
``x_d``: the Jacobian is lower-triangular with a positive diagonal, and the map is
autoregressive without masks' degree bookkeeping. As in the paper, each matrix is weight
normalised row by row, ``W = exp(s) V / |V|_row`` with ``V``'s diagonal blocks ``exp(v)``.

The log-determinant, exactly
----------------------------
``dz_d / dx_d`` is the product of the diagonal blocks of every layer's Jacobian (paths through
other dimensions' units are cut by the zero blocks). Starting from ``log W_1``'s ``(H, 1)``
diagonal blocks, each ``tanh`` adds ``log(1 - tanh^2(u)) = 2 (log 2 - u - softplus(-2u))`` to
its unit, and each linear layer multiplies by its diagonal block, done in log space as a
log-sum-exp over the block product, ``log J'_i = logsumexp_j(log W_ij + log J_j)``: every term
is a finite log of a positive number, so ``ladj = sum_d log dz_d/dx_d`` is exact (to rounding)
however saturated the units are, and no ``D x D`` determinant is formed.

A bijection of the real line
----------------------------
``tanh`` is bounded, so the network's output ``f_d`` lies in ``c_d +- M_d`` (its last layer's
bias and the L1 norm of that row): alone it is not onto ``R``. The transform is the paper's
gated residual ``z_d = sigma(g_d) f_d(x) + sigma(-g_d) x_d``; the identity term's weight
``sigma(-g_d) > 0`` makes ``z_d`` run over all of ``R`` as ``x_d`` does, with
``dz_d/dx_d = sigma(g_d) f'_d + sigma(-g_d)`` (a log-add-exp in the log-determinant).

A context (a conditional BNAF) enters the first layer's pre-activations through a linear map
(zero at initialisation), which leaves the triangular structure as it is.

The inverse
-----------
There is no closed form; the map is triangular, so :meth:`_inverse` solves for ``x_1``, then
``x_2`` given ``x_1``, and so on. For ``x_d`` the bounds on ``f_d`` give an exact bracket,
``(z_d - sigma(g_d)(c_d +- M_d)) / sigma(-g_d)``, checked (and widened if rounding put it
on one side of the root); :func:`~flowforge.transforms.residual.solve_monotone` then runs
Newton steps kept inside the bracket (a bisection step where Newton would leave it or stalls),
until a step is below ``64 eps (1 + |x_d|)`` of the dtype, at most 200 iterations; one that
has not converged raises :class:`~flowforge.transforms.residual.NotConverged` (never an
unconverged sample). Each step evaluates only the first ``d`` dimensions' part of the network.
With gradients on, a last Newton step per dimension, taken in order with autograd, gives the
implicit-function gradient of the root with respect to ``z``, the context and the parameters.
Cost: ``D x iterations`` network passes (about 6 to 10 iterations per dimension in float64),
plus ``D`` passes with a graph for the gradient; see docs/bnaf.md for measured times.

Reference: N. De Cao, I. Titov, W. Aziz, "Block Neural Autoregressive Flow", UAI 2019,
arXiv:1904.04676.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import checked_int, newton_steps_for_derivatives
from ..core import Transform
from .residual import NotConverged, solve_monotone

__all__ = ["BlockNeuralAutoregressive"]


def _log_dtanh(u: Tensor) -> Tensor:
    """``log(1 - tanh(u)^2)``, finite for every finite ``u``."""
    return 2 * (math.log(2) - u - F.softplus(-2 * u))


class BlockNeuralAutoregressive(Transform):
    r"""One BNAF transform (see the module docstring): a block-triangular ``tanh`` network with
    an exact log-determinant and a gated identity term, data to noise.

    Args:
        features: ``D``, the data dimension.
        hidden: hidden units per dimension ``H`` (each hidden layer has ``D H`` units).
        depth: hidden layers (at least 1); the network has ``depth + 1`` weight matrices.
        context_features: size of a conditioning vector (0: none).

    The inverse is numerical (``numeric_inverse``): a bracketed Newton solve per dimension,
    ``D`` solves in sequence.

    Example:
        >>> t = BlockNeuralAutoregressive(3, hidden=4)
        >>> x = torch.randn(5, 3)
        >>> z, ladj = t(x)
        >>> x2, ladj_inv = t.inverse(z)
        >>> torch.allclose(x2, x, atol=1e-4), torch.allclose(ladj_inv, -ladj, atol=1e-4)
        (True, True)
    """

    numeric_inverse = 1e-9  # (float64: solve_monotone stops at steps below 64 eps (1 + |x|))
    full_precision = True  # (Newton in bfloat16 does not reach its tolerance)

    def __init__(self, features: int, hidden: int = 8, depth: int = 1, context_features: int = 0):
        checked_int("features", features)
        checked_int("hidden", hidden)
        checked_int("depth", depth)
        checked_int("context_features", context_features, 0)
        super().__init__((features,), context_features)
        d = self.features = features
        self.hidden, self.depth = hidden, depth
        self.sizes = [1] + [hidden] * depth + [1]  # units per dimension, layer by layer
        self.weights = nn.ParameterList()
        self.log_scales = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            diag, lower = self._masks(d, a, b)
            self.register_buffer(f"diag{n}", diag, persistent=False)
            self.register_buffer(f"lower{n}", lower, persistent=False)
            # diagonal blocks are exp(v): v near 0; free blocks of the usual 1/sqrt(fan-in)
            v = torch.where(diag, 0.1 * torch.randn(d * b, d * a), torch.randn(d * b, d * a))
            self.weights.append(nn.Parameter(v / math.sqrt(a)))
            self.log_scales.append(nn.Parameter(torch.zeros(d * b)))  # unit-norm rows
            bias = torch.empty(d * b).uniform_(-1, 1) if n == 0 else torch.zeros(d * b)
            self.biases.append(nn.Parameter(bias))
        self.gate = nn.Parameter(torch.zeros(d))  # z = sigmoid(g) f(x) + sigmoid(-g) x
        if context_features:
            self.context_map = nn.Linear(context_features, d * hidden, bias=False)
            nn.init.zeros_(self.context_map.weight)

    @staticmethod
    def _masks(d: int, a: int, b: int) -> tuple[Tensor, Tensor]:
        """The ``(D b, D a)`` masks of the diagonal blocks and of the strictly-lower blocks."""
        row = torch.arange(d).repeat_interleave(b)[:, None]  # the dimension of each output unit
        col = torch.arange(d).repeat_interleave(a)[None, :]  # ... and of each input unit
        return row == col, row > col

    def _layer(self, n: int, k: int) -> tuple[Tensor, Tensor]:
        """Layer ``n``'s weight restricted to the first ``k`` dimensions, ``(k b, k a)``, and the
        logs of its diagonal blocks, ``(k, b, a)``."""
        a, b = self.sizes[n], self.sizes[n + 1]
        v = self.weights[n][: k * b, : k * a]
        diag = getattr(self, f"diag{n}")[: k * b, : k * a]
        lower = getattr(self, f"lower{n}")[: k * b, : k * a]
        w = torch.where(diag, v.exp(), torch.where(lower, v, torch.zeros_like(v)))
        # weight normalisation per row (the full row: its columns past k*a are zero blocks)
        scale = self.log_scales[n][: k * b] - 0.5 * w.square().sum(1).log()  # (k b,)
        log_diag = torch.diagonal(v.reshape(k, b, k, a), dim1=0, dim2=2).permute(2, 0, 1)
        return w * scale.exp()[:, None], log_diag + scale.view(k, b, 1)

    def _evaluate(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``z`` and ``log dz_d/dx_d``, both ``(batch, k)``, for the first ``k = x.shape[1]``
        dimensions (they read nothing past them)."""
        batch, k = x.shape
        h, log_j = x, None  # log_j: (batch, k, units per dimension), log of the diagonal blocks
        last = len(self.sizes) - 2
        for n in range(last + 1):
            w, log_w = self._layer(n, k)
            u = h @ w.T + self.biases[n][: w.shape[0]]  # (batch, k b)
            if n == 0 and self.context_features:
                u = u + self.context_map(context)[:, : w.shape[0]]
            if log_j is None:  # the first layer's blocks are (b, 1) columns
                log_j = log_w[..., 0].expand(batch, -1, -1)
            else:  # the block product in log space: (batch, k, b, a) -> (batch, k, b)
                log_j = torch.logsumexp(log_w + log_j[:, :, None, :], dim=-1)
            if n < last:
                h = torch.tanh(u)
                log_j = log_j + _log_dtanh(u).view(batch, k, -1)
            else:
                h = u  # (batch, k): one output unit per dimension
        g = self.gate[:k]
        z = torch.sigmoid(g) * h + torch.sigmoid(-g) * x
        log_d = torch.logaddexp(F.logsigmoid(g) + log_j[..., 0], F.logsigmoid(-g))
        return z, log_d

    def _forward(self, x, context):
        z, log_d = self._evaluate(x, context)
        return z, log_d.sum(1)

    def _bracket(self, z: Tensor, i: int, fn) -> tuple[Tensor, Tensor]:
        """A bracket ``[lo, hi]`` of ``x_i`` with ``fn(lo) <= 0 <= fn(hi)``, from the bounds of
        the network's output (widened where rounding left the root outside)."""
        w, _ = self._layer(len(self.sizes) - 2, i + 1)
        reach = w[i].abs().sum()  # |f_i - c_i| < M_i: tanh units are in (-1, 1)
        c, g = self.biases[-1][i], self.gate[i]
        lo = (z - torch.sigmoid(g) * (c + reach)) / torch.sigmoid(-g)
        hi = (z - torch.sigmoid(g) * (c - reach)) / torch.sigmoid(-g)
        for _ in range(64):
            f_lo, f_hi = fn(lo)[0], fn(hi)[0]
            if not bool((torch.isfinite(f_lo) & torch.isfinite(f_hi)).all()):
                break
            low, high = f_lo > 0, f_hi < 0
            if not (low.any() or high.any()):
                return lo, hi
            width = (hi - lo).abs() + 1 + lo.abs() + hi.abs()
            lo, hi = torch.where(low, lo - width, lo), torch.where(high, hi + width, hi)
        raise NotConverged(
            f"BlockNeuralAutoregressive.inverse (dimension {i} of {self.features}) did not "
            f"converge: no bracket of finite values contains the root (largest |z| = "
            f"{z.abs().max().item():.3g}); expected finite parameters and noise within the "
            f"range of {z.dtype}"
        )

    def _inverse(self, z, context):
        batch, d = z.shape
        if not bool(torch.isfinite(z).all()):
            bad = (~torch.isfinite(z)).any(1).nonzero()[:, 0].tolist()
            raise ValueError(
                f"BlockNeuralAutoregressive.inverse got NaN or infinite noise in rows "
                f"{bad[:8]}{' ...' if len(bad) > 8 else ''}; expected finite values"
            )
        with torch.no_grad():
            x = torch.zeros_like(z)
            zd, cd = z.detach(), None if context is None else context.detach()
            for i in range(d):

                def fn(a, i=i):
                    xi = torch.cat([x[:, :i], a[:, None]], 1)
                    out, log_d = self._evaluate(xi, cd)
                    return out[:, i] - zd[:, i], log_d[:, i].exp()

                lo, hi = self._bracket(zd[:, i], i, fn)
                what = f"BlockNeuralAutoregressive.inverse (dimension {i} of {d})"
                x[:, i] = solve_monotone(fn, lo, hi, what=what)
                # (the bracket's ends are finite with f(lo) <= 0 <= f(hi), and f is continuous
                # and increasing: the solve's root is the root, unless f broke in between)
                if not bool(torch.isfinite(fn(x[:, i])[0]).all()):
                    raise NotConverged(
                        f"{what} did not converge: the layer's output is NaN or "
                        "infinite inside the bracket; expected finite parameters"
                    )
        for _ in range(newton_steps_for_derivatives(z, context, self)):
            # a Newton step per dimension, in order, with a graph: its value is 0 at the root,
            # and its gradient is the implicit function's, x_<i's included (forward
            # substitution through the triangular Jacobian); a second sweep, from the first's
            # result, gives the second derivatives too
            cols: list[Tensor] = []
            for i in range(d):
                out, log_d = self._evaluate(torch.cat([*cols, x[:, i : i + 1]], 1), context)
                step = (out[:, i] - z[:, i]) * torch.exp(-log_d[:, i].detach())
                cols.append(x[:, i : i + 1] - (step - step.detach())[:, None])
            x = torch.cat(cols, 1)
        _, log_d = self._evaluate(x, context)
        return x, -log_d.sum(1)

    def extra_repr(self) -> str:
        s = f"features={self.features}, hidden={self.hidden}, depth={self.depth}"
        return s + (f", context_features={self.context_features}" if self.context_features else "")
