r"""Monotonic rational-quadratic splines (Durkan et al., 2019), as an elementwise transformer.

:class:`RationalQuadratic` maps ``[-B, B]`` onto itself with ``K`` bins, each a monotonic
rational-quadratic function, and is the identity outside (linear tails with slope 1, so the
map and its derivative are continuous at ``+-B``). Per dimension it reads ``3K - 1`` parameters
from a conditioner: ``K`` bin-width logits, ``K`` bin-height logits and ``K - 1`` interior
knot-derivative logits (the two boundary derivatives are 1, to match the tails).

Parametrisation (all-zero parameters give the identity):

- widths ``w = m_w + (1 - K m_w) softmax(u_w)`` (times ``2B``): uniform bins at zero;
- heights likewise;
- derivatives ``d = m_d + softplus(u_d + c)`` with ``c = log(exp(1 - m_d) - 1)``, so ``d = 1`` at
  ``u_d = 0``; the logits are capped at ``1e4`` so that no finite input can overflow.

With equal bins and unit derivatives each bin is the line ``y = x``, the identity.

The inverse is analytic: the root of a quadratic, taken in the cancellation-free form
``xi = 2c / (-b - sqrt(b^2 - 4ac))``. Where a bin is very thin and its slopes near
``min_derivative`` (large conditioner outputs), the forward map is flatter than float32
resolves: a whole interval of ``x`` maps to one ``y``, so ``inverse(forward(x))`` can miss ``x``
by up to the bin's width, while the forward value and log-derivative stay right and
``forward(inverse(y)) == y`` to rounding (so samples are consistent); float64 has no such case
at ordinary parameters.

Eagerly, the spline is a few dozen tensor operations over ``(B, 3K - 1, ...)`` parameters,
each a pass through memory; it costs as much as the conditioner's matrix products in a neural
spline flow. ``RationalQuadratic.compiled = True`` (on the class, or on one layer) evaluates it
through ``torch.compile`` instead, fused into a few loops: seconds to tens of seconds of
compiling the first time (torch keeps the kernels in its on-disk cache), then the benchmark's
NSFs train 1.25-1.3x and score 1.9-2.0x faster (docs/benchmarks.md). If compiling fails (no
C++ compiler, say) it warns once and stays eager.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from .._util import COMPILE_OPTIONS, derivatives_traced, functorch_active, warn
from ..core import Transformer

__all__ = ["RationalQuadratic", "rational_quadratic"]


def _sizes(logits: Tensor, bound: float, minimum: float) -> Tensor:
    """Sizes ``(B, K, ...)`` of ``K`` bins tiling ``[-bound, bound]``, from logits along dim 1."""
    k = logits.shape[1]
    return (2 * bound) * (minimum + (1 - minimum * k) * torch.softmax(logits, dim=1))


def rational_quadratic(
    x: Tensor,
    params: Tensor,
    *,
    inverse: bool = False,
    bound: float = 3.0,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_derivative: float = 1e-3,
    coder_arithmetic: bool = False,
) -> tuple[Tensor, Tensor]:
    """The spline (or its inverse) applied elementwise; returns ``(y, elementwise ladj)``.

    ``x``: any shape; ``params``: ``(*x.shape, 3K - 1)``. Inputs outside ``[-bound, bound]``
    pass through unchanged with ``ladj = 0``. See the module docstring.

    ``coder_arithmetic``: the operations in the order the bits-back coder's files were written
    with, which must not change from one version to the next (a file decodes only if every
    value rounds as it did): the softplus of every knot's slope before the bin's two are
    picked, and the log-derivative in three logarithms. The same values to rounding, up to
    1.1x slower than the default, which computes the softplus of the two slopes only.
    """
    k = (params.shape[-1] + 1) // 3
    if x.dim() < 2:  # one example axis: a length-1 entry axis for the layout below
        y, ladj = rational_quadratic(
            x.reshape(-1, 1), params.reshape(-1, 1, params.shape[-1]), inverse=inverse,
            bound=bound, min_width=min_width, min_height=min_height, min_derivative=min_derivative,
            coder_arithmetic=coder_arithmetic,
        )  # fmt: skip
        return y.reshape(x.shape), ladj.reshape(x.shape)
    # Bins-second layout, (B, 3K - 1, *x.shape[1:]): the softmax and the sums over the K bins
    # run along dimension 1 and vectorise over the entries after it (reducing over a short
    # innermost dimension is an order of magnitude slower on CPU); parameters from a grouped
    # conditioner (nets.grouped_linear) are already laid out so, and this is a view. The bin's
    # knots, sizes and slopes are picked with one-hot sums rather than gathers: their backward
    # is a product, where a gather's backward fills and scatters into a zero tensor.
    uw, uh, ud = params.movedim(-1, 1).split([k, k, k - 1], 1)
    widths = _sizes(uw, bound, min_width)
    heights = _sizes(uh, bound, min_height)

    inside = x.detach().abs() <= bound  # a mask, no graph (NaN: outside)
    xc = x.clamp(-bound, bound)  # tails are computed on a safe stand-in, then discarded
    xk = xc.unsqueeze(1)
    with torch.no_grad():
        # bin index: how many interior knots lie at or below the input, in [0, K - 1]
        # (clamped so that the last edge, x == bound, lands in the last bin, never past it)
        knots = torch.cumsum(heights if inverse else widths, 1)[:, :-1] - bound
        idx = (xk >= knots).sum(1, keepdim=True).clamp(0, k - 1)
        bins = torch.arange(k, device=x.device).view(1, k, *[1] * (x.dim() - 1))
        below = (bins < idx).to(params.dtype)  # the bins left of the input's bin
    x0 = (below * widths).sum(1) - bound
    y0 = (below * heights).sum(1) - bound
    shift = math.log(math.expm1(1 - min_derivative))

    def slope(u: Tensor) -> Tensor:
        return min_derivative + F.softplus(u.clamp(max=1e4) + shift)

    # Only the bin's two slopes enter the map, so eagerly the softplus runs on those two, not
    # on all K - 1 interior knots (the spline scores 9-12% faster; training is level). The
    # coder's arithmetic takes it on all, then picks (the order its files were written with),
    # and so does a compiled graph: inductor fuses it into the one-hot sums, and
    # differentiates that 10-15% faster.
    every_slope = coder_arithmetic or torch.compiler.is_compiling()
    if every_slope:
        ud = slope(ud)
    # the bin's size and its knots' slopes: a one-hot sum adds exact zeros to the picked
    # value, so it equals a gather bit for bit; the one-hot form is cheaper to differentiate,
    # the gather cheaper without a graph
    grad = torch.is_grad_enabled() and (params.requires_grad or x.requires_grad)
    if grad:
        with torch.no_grad():
            this = (bins == idx).to(params.dtype)  # the input's bin
        w, h = (this * widths).sum(1), (this * heights).sum(1)
        if not every_slope:  # finite before the one-hot product (0 * inf is NaN); the slopes
            ud = ud.clamp(-1e4, 1e4)  # are those of +-inf: softplus(-1e4 + c) is 0 too
        d0, d1 = (this[:, 1:] * ud).sum(1), (this[:, :-1] * ud).sum(1)
    else:
        w, h = widths.gather(1, idx).squeeze(1), heights.gather(1, idx).squeeze(1)
        d0 = ud.gather(1, (idx - 1).clamp(min=0)).squeeze(1)
        d1 = ud.gather(1, idx.clamp(max=k - 2)).squeeze(1)
    if not every_slope:
        d0, d1 = slope(d0), slope(d1)
    # the two outer knots have slope 1, the tails' (where the one-hot sum is 0, so that adding
    # the one-hot's end is exact: the form a compiled graph differentiates fastest)
    if grad and every_slope:
        d0, d1 = d0 + this[:, 0], d1 + this[:, -1]
    else:
        idx = idx.squeeze(1)
        d0, d1 = torch.where(idx == 0, 1.0, d0), torch.where(idx == k - 1, 1.0, d1)
    s = h / w
    # (forward-mode AD's dual tensors need not require grad: they take the clamp of a graph)
    straight = grad or (not torch.compiler.is_compiling() and derivatives_traced())

    def clamp(v: Tensor, lo: float, hi: float) -> Tensor:
        # an input on a bin's edge may round one ulp past it: clamped in value, but with a
        # graph the gradient of the unclamped formula (the value's own, at the edge: autograd
        # had given 0 at x == bound, a singular Jacobian); v + (c - v) is c exactly there
        c = v.clamp(lo, hi)
        return v + (c - v).detach() if straight else c

    if not inverse:
        xi = clamp((xc - x0) / w, 0, 1)
        t = xi * (1 - xi)
        den = s + (d1 + d0 - 2 * s) * t
        y = y0 + h * (s * xi * xi + d0 * t) / den
    else:
        dy = xc - y0
        c2 = d1 + d0 - 2 * s
        a = h * (s - d0) + dy * c2
        b = h * d0 - dy * c2
        c = -s * dy
        disc = (b * b - 4 * a * c).clamp(min=0)
        xi = clamp((2 * c) / (-b - torch.sqrt(disc)), 0, 1)
        t = xi * (1 - xi)
        den = s + c2 * t
        y = x0 + xi * w
    # log of s^2 num / den^2, without forming squares that could overflow: eagerly in two
    # logarithms (den >= s / 2 as t <= 1/4, so s / den lies in (0, 2]), else in three
    num = d1 * xi * xi + 2 * s * t + d0 * (1 - xi) * (1 - xi)
    if every_slope:
        ladj = 2 * torch.log(s) + torch.log(num) - 2 * torch.log(den)
    else:
        ladj = 2 * torch.log(s / den) + torch.log(num)
    if inverse:
        ladj = -ladj
    y = clamp(y, -bound, bound)  # x_k + w may round one ulp past the last knot
    return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)


_compiled = None  # rational_quadratic through torch.compile, made on first use
_compile_failed: str | None = None  # why compiling failed (then the spline stays eager)


# One compiled function serves every layer: dynamic shapes (no recompiling per batch size),
# and room for the variants a model asks for (forward/inverse, with/without grad, inputs that
# do or do not require grad, dtypes, bounds) beyond dynamo's default of 8 per function, past
# which it would run the rest eagerly without a word
RECOMPILE_LIMIT = 64


def _compiled_spline():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(rational_quadratic, options=COMPILE_OPTIONS, dynamic=True)
    return _compiled


def _spline_compiled(x: Tensor, params: Tensor, **options) -> tuple[Tensor, Tensor]:
    """:func:`rational_quadratic` through ``torch.compile``; eager from the first failure to
    compile on (one warning). An error the eager spline raises too is the caller's, not the
    compiler's: it is raised and compiling stays on."""
    global _compile_failed
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return _compiled_spline()(x, params, **options)
    except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say why
        out = rational_quadratic(x, params, **options)  # re-raises an input error
        _compile_failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        warn(
            f"RationalQuadratic.compiled: compiling the spline failed ({_compile_failed}); "
            "evaluating it eagerly from now on",
            RuntimeWarning,
        )
        return out


class RationalQuadratic(Transformer):
    r"""Rational-quadratic spline transformer with identity tails (neural spline flows).

    Plugs into :class:`~flowforge.transforms.Coupling` (NSF coupling) and
    :class:`~flowforge.transforms.Autoregressive` (NSF autoregressive) like ``Affine``.

    Args:
        bins: number of bins ``K`` (``params_per_dim = 3K - 1``).
        bound: the spline acts on ``[-bound, bound]``; the identity outside.
        min_width, min_height: smallest bin width/height, as a fraction of ``2 * bound``.
        min_derivative: smallest knot derivative.

    Set ``compiled = True`` on the class or on a layer to evaluate the spline through
    ``torch.compile`` (see the module's docstring); the result agrees with the eager spline to
    float rounding, not bit for bit. One backward pass per graph: torch.compile's backward
    cannot be differentiated again, so gradient penalties, ``create_graph=True`` and
    Jacobian-vector products (M-flows) need the eager spline; and it frees what it saved as it
    runs (donated buffers), so a second pass through the same graph (``retain_graph=True``)
    needs ``torch._functorch.config.donated_buffer = False`` around both passes, or the eager
    spline.

    Example:
        >>> rq = RationalQuadratic(bins=4, bound=3.0)
        >>> x = torch.tensor([-5.0, 0.3, 3.0])
        >>> y, ladj = rq(x, torch.zeros(3, rq.params_per_dim))  # zero params: identity
        >>> torch.allclose(y, x), torch.allclose(ladj, torch.zeros(3), atol=1e-6)
        (True, True)
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 3.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ):
        super().__init__()
        if bins < 2:
            raise ValueError(f"expected bins >= 2 for a rational-quadratic spline, got {bins}")
        if not 0 < bound < math.inf:
            raise ValueError(f"expected a finite bound > 0, got {bound}")
        if isinstance(bins, bool) or not isinstance(bins, int):
            raise ValueError(f"expected bins to be an integer, got {bins!r}")
        if not (0 <= min_width and 0 <= min_height):  # a negative one folds the spline
            raise ValueError(f"expected min_width, min_height >= 0, got {min_width}, {min_height}")
        if min_width * bins >= 1 or min_height * bins >= 1:
            m = max(min_width, min_height)
            most = math.floor(1 / m) + 1
            while most > 0 and most * m >= 1:  # the largest count whose minima fit below 1
                most -= 1
            fix = f"at most {most} bins" if most >= 2 else "min_width and min_height below 1/2"
            raise ValueError(
                f"min_width * bins and min_height * bins must be below 1: with min_width "
                f"{min_width:g} and min_height {min_height:g}, {bins} bins do not fit ({fix})"
            )
        if not 0 < min_derivative < 1:
            raise ValueError(f"expected 0 < min_derivative < 1, got {min_derivative}")
        self.bins, self.bound = int(bins), float(bound)
        self.min_width, self.min_height = float(min_width), float(min_height)
        self.min_derivative = float(min_derivative)
        self.params_per_dim = 3 * self.bins - 1

    compiled = False  # evaluate through torch.compile (opt-in; the class or one layer)
    coder_arithmetic = False  # rational_quadratic's; the bits-back coder sets it on its copy

    def _spline(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        options = dict(
            inverse=inverse,
            bound=self.bound,
            min_width=self.min_width,
            min_height=self.min_height,
            min_derivative=self.min_derivative,
            coder_arithmetic=self.coder_arithmetic,
        )
        if (
            self.compiled
            and _compile_failed is None
            and not torch.compiler.is_compiling()  # inside a compiled model: already fused
            and not functorch_active()
        ):
            return _spline_compiled(x, params, **options)
        return rational_quadratic(x, params, **options)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x, params, inverse=False)

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(z, params, inverse=True)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, bound={self.bound}"
