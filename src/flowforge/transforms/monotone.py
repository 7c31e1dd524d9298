r"""Monotone elementwise transformers: unconstrained monotonic networks (UMNN, zuko's UNAF),
sum-of-squares polynomials (SOS flows) and Bernstein polynomials (BPF).

All three are strictly increasing maps of the real line, built the same way: a map ``F`` on a
bounded interval ``[-B, B]`` (``bound``) with a positive derivative ``F'`` that is known in
closed form, and **linear tails** outside it with the slope at the bound,

    ``z = F(x)`` for ``|x| <= B``,   ``z = F(+-B) + F'(+-B) (x -+ B)`` beyond,

so the map is continuous with a continuous derivative at the bounds, the tails are exactly
linear however far out (no polynomial or quadrature blows up there) and ``ladj = log F'``.
All-zero parameters give ``F(x) = x``, the identity (the contract of
:class:`~flowforge.core.Transformer`).

- :class:`UnconstrainedMonotonic`: ``F(x) = b + integral_0^x f(t; h) dt`` with ``f`` a
  positive network of ``(t, h)`` (the transformer's own module, shared by every entry),
  integrated by the trapezoid rule on ``nodes`` fixed nodes of ``[-B, B]``: the map computed
  is exactly the integral of the piecewise-linear interpolant of ``f``, so it is exactly
  increasing, ``ladj`` is exactly its derivative and the inverse is exact (see the class for
  why not the paper's quadrature on ``[0, x]``). Costs ``nodes`` network evaluations per
  entry, in either direction.
- :class:`SumOfSquares`: ``F'(x) = floor + (1 - floor) / K sum_k (1 + sum_j a_kj u^j)^2``
  with ``u = x / B``, integrated in closed form (a polynomial of degree ``2 L + 1``): exact.
  Bounded to ``[-B, B]`` with linear tails, where zuko instead puts a soft clip between its
  layers and warns that invertibility holds on ``[-10, 10]`` only.
- :class:`Bernstein`: ``F(x) = sum_i theta_i b_{i,M}(u)`` with ``u = (x + B) / (2B)``, the
  coefficients increasing by cumulative softplus steps, ``F'`` a Bernstein polynomial of the
  steps (positive): exact.

The polynomials' inverses have no closed form inside the interval (the tails invert
exactly). Since ``F`` is
increasing with ``F(-B) < z < F(B)``, the root lies in ``[-B, B]``: ``bisections`` halvings
(24: a bracket ``2^24`` times narrower), then ``newton`` Newton steps (6) that shrink the
bracket and are clamped into it, then one Newton step
with autograd on, for the gradient only (the implicit-function gradient, as in
:class:`~flowforge.transforms.LogisticMixture`). In float64 the round trip is exact to
``1e-12`` relative. Each inverse costs ``bisections + newton + 3`` evaluations of ``F``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._util import checked_int, checked_nonnegative, newton_steps_for_derivatives
from ..core import Transformer

__all__ = ["UnconstrainedMonotonic", "SumOfSquares", "Bernstein"]

_SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(_SOFTPLUS_ONE) == 1


def _positive_float(name: str, value, below: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < below:
        bound = "" if below == math.inf else f" and < {below:g}"
        raise ValueError(f"expected {name} to be a finite number > 0{bound}, got {value!r}")
    return float(value)


def _unit_slope(r: Tensor, floor: float) -> Tensor:
    """A positive slope, ``floor + (1 - floor) softplus(r + log(e - 1))``: 1 at ``r = 0``."""
    return floor + (1 - floor) * F.softplus(r + _SOFTPLUS_ONE)


class _BoundedMonotone(Transformer):
    """An increasing map on ``[-bound, bound]`` with linear tails, and its bracketed inverse.

    Subclasses implement ``_prepare(params) -> state`` and ``_inside(x, state) -> (F, F')`` for
    ``|x| <= bound`` (``F'`` positive)."""

    # a fixed number of steps, not residual.solve_monotone's loop until converged: that loop
    # reads a value back to decide when to stop, and a layer's inverse must not on an
    # accelerator (tests/test_host_reads.py); 24 halvings of [-B, B] then 6 Newton steps
    # reach the dtype's resolution
    bisections = 24
    newton = 6

    def __init__(self, bound: float):
        super().__init__()
        self.bound = _positive_float("bound", bound)

    def _prepare(self, params: Tensor):
        raise NotImplementedError

    def _inside(self, x: Tensor, state) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _map(self, x: Tensor, state) -> tuple[Tensor, Tensor]:
        """``(F(x), F'(x))`` on the whole line: linear beyond the bounds."""
        inner = x.clamp(-self.bound, self.bound)
        y, d = self._inside(inner, state)
        return y + d * (x - inner), d

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        y, d = self._map(x, self._prepare(params))
        return y, torch.log(d)

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        state = self._prepare(params)
        with torch.no_grad():
            b = torch.full_like(z, self.bound)
            y_lo, d_lo = self._inside(-b, state)
            y_hi, d_hi = self._inside(b, state)
            lo, hi = -b, b.clone()
            for _ in range(self.bisections):
                mid = (lo + hi) / 2
                below = self._inside(mid, state)[0] < z
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            x = (lo + hi) / 2
            for _ in range(self.newton):  # safeguarded: the bracket shrinks at every step
                y, d = self._inside(x, state)
                below = y < z
                lo, hi = torch.where(below, x, lo), torch.where(below, hi, x)
                new = x - (y - z) / d  # kept in the bracket (a root at its very edge
                x = torch.where(
                    torch.isfinite(new), torch.minimum(torch.maximum(new, lo), hi), (lo + hi) / 2
                )  # is overshot by rounding: clamped, not bisected)
            # the tails invert exactly
            x = torch.where(z <= y_lo, -b + (z - y_lo) / d_lo, x)
            x = torch.where(z >= y_hi, b + (z - y_hi) / d_hi, x)
            x = torch.where(torch.isnan(z), z, x)  # (a NaN entry stays NaN, not a bracket end)
        # Newton steps with autograd on, for their gradients only: at the root they give the
        # root's first and second derivatives with respect to z and the parameters (implicit
        # differentiation; one step gave first derivatives only)
        for _ in range(newton_steps_for_derivatives(z, params)):
            y, d = self._map(x, state)
            step = (y - z) / d
            x = x - (step - step.detach())
        return x, -torch.log(self._map(x, state)[1])

    def extra_repr(self) -> str:
        return f"bound={self.bound:g}"


class UnconstrainedMonotonic(_BoundedMonotone):
    r"""An unconstrained monotonic neural network (UMNN, Wehenkel & Louppe, 2019; zuko's
    UNAF): the integral of a positive network,

        ``z = b + integral_0^x f(t; h) dt``,
        ``f(t; h) = floor + (1 - floor) softplus(log(e - 1) + h . g(t, h))``

    on ``[-bound, bound]``, with linear tails beyond. ``g`` is a small MLP of ``(t, h)`` to
    ``R^E`` (tanh activations); it is this transformer's own module, shared by every entry.
    The conditioner gives the embedding ``h`` (``E = embedding``) and the offset ``b``
    (``params_per_dim = E + 1``). At ``h = 0``, ``f = 1``: all-zero parameters are the
    identity, whatever ``g``'s weights.

    **Quadrature.** ``f`` is evaluated at ``nodes`` fixed, evenly spaced points of
    ``[-bound, bound]`` (independent of ``x``) and integrated by the trapezoid rule, the
    last, partial interval exactly under the linear interpolant. So the map computed *is*
    the integral of ``f~``, the piecewise-linear interpolant of ``f`` (positive: exactly
    increasing), and ``ladj = log f~(x)`` is exactly its derivative, and the inverse is
    exact (a quadratic per interval, no iterations: one network evaluation of the nodes).
    The paper's Clenshaw-Curtis quadrature on ``[0, x]`` (zuko: Gauss-Legendre) reports
    ``log f(x)``, which is *not* the derivative of the map it computes: the measured gap was
    5% with 16 nodes and 3e-5 with 32 on a perturbed network in float64 (more where ``f`` is
    sharp), and a fixed-node quadrature of ``x -> x f(c x)`` is not even monotone for every
    ``f``. Here the price is that ``f~`` is ``f`` up to the interpolation error
    (``O(h^2)``, ``h = 2 bound / (nodes - 1)``): a modelling difference, not an
    inconsistency.

    Args:
        embedding: size ``E`` of the conditioner's embedding per entry.
        hidden: hidden widths of ``g``.
        nodes: quadrature nodes on ``[-bound, bound]`` (network evaluations per entry, in
            either direction), at least 2.
        bound: half-width of the interval; linear tails of slope ``f(+-bound)`` beyond.
        floor: smallest derivative, in ``(0, 1)``.

    Example:
        >>> t = UnconstrainedMonotonic(embedding=4)
        >>> x = torch.tensor([-7.0, 0.3, 2.0])
        >>> y, ladj = t(x, torch.zeros(3, t.params_per_dim))  # zero params: identity
        >>> torch.allclose(y, x, atol=1e-5), torch.allclose(ladj, torch.zeros(3), atol=1e-6)
        (True, True)
    """

    def __init__(
        self,
        embedding: int = 8,
        hidden: tuple[int, ...] | list[int] = (32, 32),
        nodes: int = 33,
        bound: float = 5.0,
        floor: float = 1e-3,
    ):
        super().__init__(bound)
        self.embedding = checked_int("embedding", embedding)
        self.nodes = checked_int("nodes", nodes, least=2)
        self.floor = _positive_float("floor", floor, below=1.0)
        hidden = [hidden] if isinstance(hidden, int) else list(hidden)
        widths = [checked_int("every hidden width", h) for h in hidden]
        layers: list[nn.Module] = []
        for a, b in zip([1 + self.embedding, *widths], [*widths, self.embedding], strict=True):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.integrand = nn.Sequential(*layers)
        self.params_per_dim = self.embedding + 1
        grid = torch.linspace(-self.bound, self.bound, self.nodes, dtype=torch.float64)
        self.register_buffer("grid", grid.to(torch.get_default_dtype()), persistent=False)

    def _prepare(self, params: Tensor):
        """``f`` at the nodes ``(..., nodes)``, the cumulative integral from ``-bound`` there,
        and the offset, with ``C(0)`` taken out so that ``F(0) = b``."""
        h = params[..., : self.embedding]
        t = self.grid.to(params.dtype).expand(*h.shape[:-1], self.nodes)
        hh = h[..., None, :].expand(*t.shape, self.embedding)
        g = self.integrand(torch.cat([t[..., None], hh], -1))  # (..., nodes, E)
        f = _unit_slope((g * hh).sum(-1), self.floor)
        step = 2 * self.bound / (self.nodes - 1)
        cum = torch.cat([torch.zeros_like(f[..., :1]), (f[..., 1:] + f[..., :-1]) * step / 2], -1)
        cum = cum.cumsum(-1)
        state = f, cum, params[..., self.embedding]
        zero = self._integral(torch.zeros_like(state[2]), state)[0]
        return f, cum - zero[..., None], state[2]

    def _bin(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The interval of ``x`` (clamped to the grid) and the position ``s`` in it."""
        step = 2 * self.bound / (self.nodes - 1)
        pos = (x + self.bound) / step
        # (a NaN entry reads bin 0, and stays NaN through s: a NaN cast to an index was
        # INT64_MIN, an index error for the whole batch)
        j = pos.detach().nan_to_num(0.0).floor().clamp(0, self.nodes - 2).long()
        return j, pos - j

    def _integral(self, x: Tensor, state) -> tuple[Tensor, Tensor]:
        f, cum, _ = state
        step = 2 * self.bound / (self.nodes - 1)
        j, s = self._bin(x)
        f0 = f.gather(-1, j[..., None])[..., 0]
        df = f.gather(-1, j[..., None] + 1)[..., 0] - f0
        c0 = cum.gather(-1, j[..., None])[..., 0]
        return c0 + step * s * (f0 + s * df / 2), f0 + s * df

    def _inside(self, x: Tensor, state) -> tuple[Tensor, Tensor]:
        y, d = self._integral(x, state)
        return y + state[2], d

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        f, cum, offset = self._prepare(params)
        step = 2 * self.bound / (self.nodes - 1)
        knots = cum + offset[..., None]  # F at the nodes: increasing
        lo, hi = knots[..., 0], knots[..., -1]
        # clamped with where, not min/max: at a tie those split the gradient between z and
        # the bound, and z = F(-bound) had half its dx/dz
        zc = torch.where(z < lo, lo, torch.where(z > hi, hi, z))
        j = (knots[..., 1:-1] <= zc.detach()[..., None]).sum(-1, keepdim=True)
        f0 = f.gather(-1, j)[..., 0]
        df = f.gather(-1, j + 1)[..., 0] - f0
        r = zc - knots.gather(-1, j)[..., 0]  # solve step (f0 s + df s^2 / 2) = r for s
        disc = (f0 * step).square() + 2 * step * df * r  # (step f~(x))^2 at the root
        s = 2 * r / (f0 * step + torch.sqrt(disc.clamp_min(0)))
        x = (j[..., 0] - (self.nodes - 1) / 2) * step + s * step  # (the grid point + s h)
        d = f0 + s * df
        x = torch.where(z < lo, -self.bound + (z - lo) / f[..., 0], x)
        x = torch.where(z > hi, self.bound + (z - hi) / f[..., -1], x)
        d = torch.where(z < lo, f[..., 0], torch.where(z > hi, f[..., -1], d))
        return x, -torch.log(d)

    def extra_repr(self) -> str:
        return f"embedding={self.embedding}, nodes={self.nodes}, bound={self.bound:g}"


class SumOfSquares(_BoundedMonotone):
    r"""A sum-of-squares polynomial (SOS flows, Jaini et al., 2019; zuko's SOSPF), bounded:

        ``F'(x) = floor + (1 - floor) / K sum_k (1 + sum_{j=0}^L a_kj u^j)^2``,  ``u = x / B``
        ``z = b + B integral_0^u F'``   (a polynomial of degree ``2 L + 1``, in closed form)

    on ``[-B, B]`` with linear tails of slope ``F'(+-B)`` beyond (the polynomial's growth is
    what makes unbounded SOS flows overflow). ``params_per_dim = K (L + 1) + 1``: the
    coefficients ``a`` and the offset ``b``; all zero is the identity.

    A zero-initialised conditioner starts the ``K`` polynomials equal; they then get equal
    gradients and stay equal, one square whatever ``polynomials`` says (an audit,
    2026-12-07). With ``spread > 0`` polynomial ``k``'s coefficients are the conditioner's
    times a fixed ``exp(c_k)``, ``c_k`` evenly over ``[-spread, spread]``: zero parameters stay
    the identity, and the polynomials come apart. Not the default: on moons it gained nothing
    (1.7234 against 1.7236 nats at ``spread=1``), and in a small experiment it gave heavier
    tails (a few test points scored far worse).

    Args:
        polynomials: ``K``.
        degree: ``L``, the degree of each squared polynomial.
        bound: ``B``.
        floor: smallest derivative, in ``(0, 1)``.
        spread: the range of the polynomials' fixed log-scales (0, the default: none).

    Example:
        >>> t = SumOfSquares(polynomials=2, degree=3)
        >>> x = torch.linspace(-6, 6, 5)
        >>> p = torch.randn(5, t.params_per_dim)
        >>> y, ladj = t(x, p)
        >>> torch.allclose(t.inverse(y, p)[0], x, atol=1e-4)
        True
    """

    def __init__(
        self,
        polynomials: int = 3,
        degree: int = 4,
        bound: float = 5.0,
        floor: float = 1e-3,
        spread: float = 0.0,
    ):
        super().__init__(bound)
        self.polynomials = checked_int("polynomials", polynomials)
        self.degree = checked_int("degree", degree, least=0)
        self.floor = _positive_float("floor", floor, below=1.0)
        self.spread = checked_nonnegative("spread", spread)
        self.params_per_dim = self.polynomials * (self.degree + 1) + 1
        n = self.degree + 1
        # the square of a polynomial: coefficient m sums the products p_j p_l with j + l = m
        sums = torch.zeros(n * n, 2 * n - 1)
        sums[torch.arange(n * n), (torch.arange(n)[:, None] + torch.arange(n)).reshape(-1)] = 1
        self.register_buffer("square", sums.to(torch.get_default_dtype()), persistent=False)
        # each polynomial's fixed scale exp(c_k), made once; not saved: set by spread
        scales = torch.linspace(-self.spread, self.spread, self.polynomials).exp()[:, None]
        self.register_buffer("scales", scales.to(torch.get_default_dtype()), persistent=False)

    def _prepare(self, params: Tensor):
        k, n = self.polynomials, self.degree + 1
        p = params[..., : k * n].unflatten(-1, (k, n))
        if self.spread and k > 1:  # (fixed scales: polynomials that can come apart)
            p = p * self.scales.to(p.dtype)
        p = torch.cat([p[..., :1] + 1, p[..., 1:]], -1)  # 1 + a_k0 + a_k1 u + ...
        sq = (p[..., :, None] * p[..., None, :]).flatten(-2) @ self.square.to(p.dtype)
        c = sq.mean(-2) * (1 - self.floor)  # (..., 2L + 1): coefficients of F' - floor
        c = torch.cat([c[..., :1] + self.floor, c[..., 1:]], -1)
        m = torch.arange(1, c.shape[-1] + 1, dtype=c.dtype, device=c.device)
        return p, c / m, params[..., k * n]  # integral: c_m u^(m + 1) / (m + 1)

    def _inside(self, x: Tensor, state) -> tuple[Tensor, Tensor]:
        p, ci, offset = state
        u = x / self.bound
        acc = torch.zeros_like(u)
        for j in range(ci.shape[-1] - 1, -1, -1):  # Horner
            acc = acc * u + ci[..., j]
        q = torch.zeros_like(p[..., 0])
        for j in range(p.shape[-1] - 1, -1, -1):
            q = q * u[..., None] + p[..., j]
        d = self.floor + (1 - self.floor) * q.square().mean(-1)  # positive by construction
        return offset + self.bound * u * acc, d

    def extra_repr(self) -> str:
        return f"polynomials={self.polynomials}, degree={self.degree}, bound={self.bound:g}"


class Bernstein(_BoundedMonotone):
    r"""A Bernstein polynomial (Sick et al., 2021; Ramasinghe et al., 2021; zuko's BPF):

        ``F(x) = sum_{i=0}^M theta_i b_{i,M}(u)``,  ``u = (x + B) / (2B)``,
        ``theta_0 = b - B``,  ``theta_{i+1} - theta_i = (2B / M) delta_i``,
        ``delta_i = floor + (1 - floor) softplus(r_i + log(e - 1))``

    so the coefficients increase and ``F'(x) = sum_i delta_i b_{i,M-1}(u)`` is positive. Linear
    tails beyond ``[-B, B]`` with slopes ``delta_0`` and ``delta_{M-1}`` (the derivative at
    the bounds: continuous). ``params_per_dim = M + 1`` (the ``r_i`` and the offset ``b``); all
    zero gives ``theta_i = -B + 2B i / M``, the identity.

    Args:
        degree: ``M``.
        bound: ``B``.
        floor: smallest derivative, in ``(0, 1)``.

    Example:
        >>> t = Bernstein(degree=8)
        >>> x = torch.linspace(-7, 7, 5)
        >>> p = torch.randn(5, t.params_per_dim)
        >>> y, ladj = t(x, p)
        >>> torch.allclose(t.inverse(y, p)[0], x, atol=1e-4)
        True
    """

    def __init__(self, degree: int = 16, bound: float = 5.0, floor: float = 1e-3):
        super().__init__(bound)
        self.degree = checked_int("degree", degree)
        self.floor = _positive_float("floor", floor, below=1.0)
        self.params_per_dim = self.degree + 1
        binom = [math.comb(self.degree, i) for i in range(self.degree + 1)]
        dbinom = [math.comb(self.degree - 1, i) for i in range(self.degree)]
        dtype = torch.get_default_dtype()
        self.register_buffer("binom", torch.tensor(binom, dtype=dtype), persistent=False)
        self.register_buffer("dbinom", torch.tensor(dbinom, dtype=dtype), persistent=False)

    def _prepare(self, params: Tensor):
        m = self.degree
        delta = _unit_slope(params[..., :m], self.floor)
        steps = delta * (2 * self.bound / m)
        theta = torch.cat([params[..., m:] - self.bound, steps], -1).cumsum(-1)
        return theta, delta

    def _inside(self, x: Tensor, state) -> tuple[Tensor, Tensor]:
        theta, delta = state
        m = self.degree
        u = (x + self.bound) / (2 * self.bound)
        up, vp = [torch.ones_like(u)], [torch.ones_like(u)]
        for _ in range(m):  # powers by products (no pow: its gradient is NaN at 0 ** 0)
            up.append(up[-1] * u)
            vp.append(vp[-1] * (1 - u))
        up, vp = torch.stack(up, -1), torch.stack(vp, -1)  # (..., M + 1)
        basis = self.binom.to(u.dtype) * up * vp.flip(-1)  # u^i (1 - u)^(M - i)
        dbasis = self.dbinom.to(u.dtype) * up[..., :m] * vp[..., :m].flip(-1)
        return (basis * theta).sum(-1), (dbasis * delta).sum(-1)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, bound={self.bound:g}"
