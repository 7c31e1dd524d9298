r"""Residual flows: planar, radial and Sylvester layers, and invertible residual blocks.

All of these are written in the literature in the *generative* direction, noise to data,

    planar     ``x = z + û tanh(w·z + b)``                      (Rezende & Mohamed, 2015)
    radial     ``x = z + β (z - z0) / (α + |z - z0|)``            (Rezende & Mohamed, 2015)
    Sylvester  ``x = z + Q R tanh(R̃ Qᵀ z + b)``                  (van den Berg et al., 2018)
    residual   ``x = z + g(z)`` with ``Lip(g) < 1``              (Behrmann et al., 2019;
                                                                  Chen et al., 2019)

and that is the direction in which they are closed form. In flowforge's contract ``forward`` is
data to noise, so **the closed form is** :meth:`~flowforge.Transform.inverse` (noise to data,
with the log-determinant of the generative map). This is what variational inference needs:
:meth:`flowforge.Flow.rsample_and_log_prob` pushes noise through ``inverse`` and gets samples
and their exact log-density in one pass. ``forward`` (data to noise, needed by ``log_prob`` of
arbitrary points) is numerical:

- planar and each Sylvester coordinate: a scalar monotone equation ``a + p tanh(q a + s) = c``
  with ``p q > -1``, solved by Newton's method safeguarded by bisection on the bracket
  ``[c - |p|, c + |p|]`` (``|tanh| <= 1``). Sylvester is triangular after the projection onto
  ``Q``, so its ``M`` coordinates are solved by back-substitution, one scalar solve each;
- radial: the inverse is the positive root of a quadratic, solved in closed form (in a
  cancellation-free way), so it is exact;
- residual blocks: the fixed-point iteration ``z <- x - g(z)``, a contraction.

Numerical inverses stop at a relative step of ``64 eps`` (planar, Sylvester) or ``1e-12``
(residual blocks, in float64) and declare ``numeric_inverse`` accordingly. Gradients through a
numerical inverse are the implicit-function gradients: one Newton step with a graph from the
detached root (planar, Sylvester), or an adjoint fixed-point solve in a backward hook (residual
blocks). A flow that should be closed form in the data-to-noise direction (density estimation)
wraps a layer in :class:`flowforge.Inverse`; :func:`flowforge.models.ResidualFlow` does that with
``closed_form="density"``.

Amortised VI: with ``context_features > 0`` a small MLP maps the context to an offset of every
parameter (zero-initialised, so a conditional layer starts as the unconditional one); the
invertibility constraints are applied after the offset, per example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import checked_int, householder, largest
from ..core import Transform
from ..nets import MLP

__all__ = ["Planar", "Radial", "Sylvester", "planar_u_hat", "solve_monotone", "orthogonalize"]


# -- shared pieces ---------------------------------------------------------------------------


def _tol(dtype: torch.dtype) -> float:
    return 64 * torch.finfo(dtype).eps


class NotConverged(RuntimeError, ValueError):
    """An iterative inverse that did not converge: a RuntimeError, and a ValueError (the
    input or the settings cause it; the command line prints it as one line)."""


def solve_monotone(
    fn,
    lo: Tensor,
    hi: Tensor,
    tol: float | None = None,
    max_iter: int = 200,
    what: str = "the Newton/bisection inverse",
):
    r"""Root of an increasing function on a bracket, elementwise: Newton safeguarded by bisection.

    ``fn(a)`` returns ``(f(a), f'(a))`` with ``f(lo) <= 0 <= f(hi)`` and ``f' > 0``. A Newton
    step that leaves the current bracket (or is not finite) is replaced by a bisection step,
    and so is one not half the size of the step before last (``rtsafe``'s rule: Newton
    bouncing between the flat ends of a steep ``tanh`` shrank the bracket only like ``1/k``),
    so the iteration always converges, as fast as Newton where Newton converges; it stops
    when every step is below ``tol (1 + |a|)``.
    Runs without gradient; returns the detached root. If some element has not converged
    within ``max_iter`` steps (or the equation is not finite), raises a ``RuntimeError`` with
    the largest residual ``|f(a)|`` and step reached: it never returns an unconverged root.
    """
    tol = _tol(lo.dtype) if tol is None else tol
    with torch.no_grad():
        lo, hi = lo.clone(), hi.clone()
        a = 0.5 * (lo + hi)
        done, step = False, torch.full_like(a, float("inf"))
        last = before = hi - lo  # the last two steps' sizes (the bracket's, to begin)
        for _ in range(max_iter):
            f, df = fn(a)
            hi = torch.where(f > 0, a, hi)
            lo = torch.where(f < 0, a, lo)
            new = a - f / df
            slow = (new - a).abs() > 0.5 * before  # not half the step before last (rtsafe)
            bad = ~((new > lo) & (new < hi)) | ~torch.isfinite(new) | slow
            new = torch.where(bad, 0.5 * (lo + hi), new)
            new = torch.where(f == 0, a, new)
            step = (new - a).abs()
            before, last = last, step
            done = bool((step <= tol * (1 + a.abs())).all())
            a = new
            if done:
                break
        if not done:
            res = fn(a)[0].abs()
            raise NotConverged(
                f"{what} did not converge within max_iter={max_iter} "
                f"iterations: largest residual |f(a)| = {largest(res):.3g}, largest last step "
                f"{largest(step):.3g} (tolerance {tol:.3g}); the input or the layer's parameters "
                f"are not finite, the input overflows the layer's {lo.dtype} (score it in "
                "float64), or max_iter is too small"
            )
    return a


class _Amortised(Transform):
    """A layer whose parameters are a flat vector ``theta``, plus an optional context offset."""

    def _setup_context(self, n_params: int, hidden: Sequence[int]) -> None:
        if self.context_features:
            self.net = MLP(
                self.context_features, n_params, tuple(hidden), activation="tanh", zero_init=True
            )

    def _theta(self, context: Tensor | None) -> Tensor:
        """Flat raw parameters, ``(1, P)`` unconditionally or ``(batch, P)`` with a context."""
        theta = self.theta.unsqueeze(0)
        if self.context_features:
            theta = theta + self.net(context)
        return theta


# -- planar ----------------------------------------------------------------------------------


def planar_u_hat(u: Tensor, w: Tensor) -> Tensor:
    r"""Rezende & Mohamed's reparametrisation: ``û = u + (m(w·u) - w·u) w / |w|²``,
    ``m(t) = -1 + softplus(t)`` (floored at ``-1 + 1e-6`` against rounding), so that
    ``w·û = m(w·u) > -1`` and the planar map is invertible. Batched over leading dimensions."""
    wu = (w * u).sum(-1, keepdim=True)
    m = (-1 + F.softplus(wu)).clamp_min(-1 + 1e-6)  # strictly above -1 despite rounding
    return u + (m - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-30)


class Planar(_Amortised):
    r"""A planar flow layer, closed form in the noise-to-data direction.

    ``inverse``: ``x = z + û tanh(w·z + b)``, ``log|det dx/dz| = log(1 + w·û tanh'(w·z + b))``.
    ``forward`` solves ``a + (w·û) tanh(a) = w·x + b`` for ``a = w·z + b`` (a scalar
    monotone equation, Newton + bisection), then ``z = x - û tanh(a)``.

    Args:
        features: dimension ``D``.
        context_features: size of a context that offsets ``(u, w, b)`` through an MLP.
        hidden: the context MLP's hidden widths.

    Example:
        >>> import flowforge as ff
        >>> layer = ff.transforms.Planar(2)
        >>> x, ladj = layer.inverse(torch.randn(4, 2))
        >>> z, ladj2 = layer(x)
        >>> torch.allclose(ladj, -ladj2, atol=1e-5)
        True
    """

    numeric_inverse = 1e-9
    full_precision = True  # (its solves do not converge in bfloat16)

    def __init__(self, features: int, context_features: int = 0, hidden: Sequence[int] = (32,)):
        d = checked_int("features", features)
        super().__init__((d,), context_features)
        self.features = d
        theta = torch.cat([0.1 * torch.randn(d), torch.randn(d) / math.sqrt(d), torch.zeros(1)])
        self.theta = nn.Parameter(theta)  # (u, w, b)
        self._setup_context(2 * d + 1, hidden)

    def params(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(û, w, b)`` with shapes ``(n, D), (n, D), (n,)``; ``n`` is 1 without a context."""
        t = self._theta(context)
        d = self.features
        u, w, b = t[:, :d], t[:, d : 2 * d], t[:, 2 * d]
        return planar_u_hat(u, w), w, b

    def _inverse(self, z, context):
        u, w, b = self.params(context)
        a = (w * z).sum(-1) + b
        h = torch.tanh(a)
        x = z + u * h.unsqueeze(-1)
        wu = (w * u).sum(-1)
        return x, torch.log1p(wu * (1 - h * h)).expand(z.shape[0])

    def _forward(self, x, context):
        u, w, b = self.params(context)
        wu = (w * u).sum(-1)
        c = (w * x).sum(-1) + b

        def fn(a):
            h = torch.tanh(a)
            return a + wu * h - c, 1 + wu * (1 - h * h)

        span = wu.abs().detach().expand_as(c)
        a = solve_monotone(fn, c.detach() - span, c.detach() + span, what="Planar.forward")
        # two Newton steps with a graph from the (detached) root: the value stays the root, and
        # its derivatives are the implicit function's to the third order (one step with the
        # slope detached gives first derivatives only: a gradient penalty came out wrong);
        # without a graph one step, as before (the root is the value either way)
        for _ in range(2 if torch.is_grad_enabled() else 1):
            f, df = fn(a)
            a = a - f / df
        h = torch.tanh(a)
        z = x - u * h.unsqueeze(-1)
        return z, -torch.log1p(wu * (1 - h * h)).expand(x.shape[0])


# -- radial ----------------------------------------------------------------------------------


class Radial(_Amortised):
    r"""A radial flow layer: ``x = z + β (z - z0) / (α + r)``, ``r = |z - z0|``.

    ``α = softplus(α')`` and ``β = -α + softplus(β')`` keep ``β > -α``, which makes the map
    invertible. ``inverse`` (noise to data) is the paper's closed form with
    ``log|det| = (D - 1) log(1 + β h) + log(1 + β α / (α + r)²)``, ``h = 1 / (α + r)``.
    ``forward`` is closed form too: ``|x - z0| = r (1 + β / (α + r))`` is a quadratic in ``r``
    with exactly one non-negative root, so this layer has an exact inverse.

    Args:
        features: dimension ``D``.
        context_features: size of a context that offsets ``(z0, α', β')`` through an MLP.
        hidden: the context MLP's hidden widths.
    """

    def __init__(self, features: int, context_features: int = 0, hidden: Sequence[int] = (32,)):
        d = checked_int("features", features)
        super().__init__((d,), context_features)
        self.features = d
        theta = torch.cat([0.5 * torch.randn(d), torch.zeros(1), 0.5 * torch.randn(1)])
        self.theta = nn.Parameter(theta)  # (z0, alpha', beta')
        self._setup_context(d + 2, hidden)

    def params(self, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(z0, α, β)`` with shapes ``(n, D), (n,), (n,)``."""
        t = self._theta(context)
        d = self.features
        alpha = F.softplus(t[:, d])
        beta = -alpha + F.softplus(t[:, d + 1])
        return t[:, :d], alpha, beta

    def _ladj(self, r, alpha, beta):
        h = 1 / (alpha + r)
        return (self.features - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h * h)

    def _inverse(self, z, context):
        z0, alpha, beta = self.params(context)
        dz = z - z0
        r = dz.square().sum(-1).clamp_min(torch.finfo(dz.dtype).tiny).sqrt()
        x = z + (beta / (alpha + r)).unsqueeze(-1) * dz
        return x, self._ladj(r, alpha, beta).expand(z.shape[0])

    def _forward(self, x, context):
        z0, alpha, beta = self.params(context)
        dx = x - z0
        rho = dx.square().sum(-1).clamp_min(torch.finfo(dx.dtype).tiny).sqrt()
        # r^2 + p r - q = 0 with p = alpha + beta - rho, q = alpha rho >= 0
        p = alpha + beta - rho
        q = alpha * rho
        disc = (p * p + 4 * q).sqrt()
        r = torch.where(p > 0, 2 * q / (p + disc), 0.5 * (disc - p))
        dz = dx * ((alpha + r) / (alpha + r + beta)).unsqueeze(-1)
        return x - dx + dz, -self._ladj(r, alpha, beta).expand(x.shape[0])


# -- Sylvester -------------------------------------------------------------------------------


def orthogonalize(q: Tensor, tol: float | None = None, max_iter: int = 100) -> Tensor:
    r"""Van den Berg et al.'s iterative orthogonalisation of the columns of ``q`` (``..., D, M``):
    ``Q <- Q (I + (I - QᵀQ) / 2)`` from ``Q / |Q|_F``, until ``max |QᵀQ - I| <= tol``.
    Differentiable (the gradient flows through the iterations). Raises a ``RuntimeError``
    with the reached ``max |QᵀQ - I|`` if that is not below ``tol`` within ``max_iter`` steps
    (a non-orthogonal ``Q`` would make the Sylvester log-determinant silently wrong)."""
    tol = 1e3 * torch.finfo(q.dtype).eps if tol is None else tol
    q = q / q.square().sum((-2, -1), keepdim=True).sqrt()
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    for _ in range(max_iter + 1):
        e = eye - q.transpose(-2, -1) @ q
        err = largest(e.detach().abs())
        if err <= tol:
            return q
        q = q @ (eye + 0.5 * e)
    raise RuntimeError(
        f"orthogonalize did not converge within max_iter={max_iter} iterations: "
        f"max |QᵀQ - I| = {err:.3g} (tolerance {tol:.3g}); the columns are (nearly) linearly "
        "dependent or not finite"
    )


class Sylvester(_Amortised):
    r"""A Sylvester flow layer: ``x = z + Q R tanh(R̃ Qᵀ z + b)`` (noise to data, closed form).

    ``R`` and ``R̃`` are ``M x M`` upper triangular with diagonals ``tanh(·)``, so that
    ``r_ii r̃_ii > -1`` and the map is invertible; ``log|det| = sum_i log(1 + r_ii r̃_ii
    tanh'(·)_i)``. ``Q`` (``D x M``, orthonormal columns) is:

    - ``"orthogonal"``: a free ``D x M`` matrix made orthogonal by iterative orthogonalisation;
    - ``"householder"``: a product of ``reflections`` Householder reflections (``M = D``);
    - ``"triangular"``: the identity or the reversal permutation (``flip``) (``M = D``).

    ``forward`` (data to noise): with ``y = Qᵀ x``, the coordinates ``v = Qᵀ z`` solve the
    triangular system ``v + R tanh(R̃ v + b) = y``, back-substituted one scalar monotone
    equation at a time (Newton + bisection); then ``z = x - Q R tanh(R̃ v + b)``.

    Args:
        features: dimension ``D``.
        kind: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        rank: ``M`` for the orthogonal kind (default ``D``).
        reflections: number of Householder reflections (default ``D``).
        flip: for the triangular kind, use the reversal permutation.
        context_features, hidden: an MLP of the context offsets every parameter.
    """

    numeric_inverse = 1e-9
    full_precision = True  # (its solves do not converge in bfloat16)
    KINDS = ("orthogonal", "householder", "triangular")

    def __init__(
        self,
        features: int,
        kind: str = "orthogonal",
        rank: int | None = None,
        reflections: int | None = None,
        flip: bool = False,
        context_features: int = 0,
        hidden: Sequence[int] = (32,),
    ):
        d = checked_int("features", features)
        super().__init__((d,), context_features)
        if kind not in self.KINDS:
            raise ValueError(f"unknown Sylvester kind {kind!r}; expected one of {self.KINDS}")
        m = d if rank is None or kind != "orthogonal" else checked_int("rank", rank, 1, d)
        self.features, self.rank, self.kind, self.flip = d, m, kind, bool(flip)
        self.reflections = d if reflections is None else checked_int("reflections", reflections)
        iu = torch.triu_indices(m, m, 1)
        self.register_buffer("_iu", iu, persistent=False)
        n_off = iu.shape[1]
        parts = {
            "r_diag": 0.5 * torch.randn(m),
            "r_off": 0.1 * torch.randn(n_off),
            "rt_diag": 0.5 * torch.randn(m),
            "rt_off": 0.1 * torch.randn(n_off),
            "b": torch.zeros(m),
        }
        if kind == "orthogonal":
            parts["q"] = torch.randn(d * m)
        elif kind == "householder":
            parts["q"] = torch.randn(self.reflections * d)
        self._sizes = [(k, v.numel()) for k, v in parts.items()]
        self.theta = nn.Parameter(torch.cat(list(parts.values())))
        self._setup_context(self.theta.numel(), hidden)

    def _split(self, t: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for k, n in self._sizes:
            out[k] = t[:, i : i + n]
            i += n
        return out

    def _triangular(self, diag: Tensor, off: Tensor) -> Tensor:
        n, m = diag.shape
        r = diag.new_zeros(n, m, m)
        r[:, self._iu[0], self._iu[1]] = off
        # |r_ii| < 1 strictly (tanh saturates to 1.0 in floating point), so r_ii r̃_ii > -1
        return r + torch.diag_embed((1 - 1e-6) * torch.tanh(diag))

    def _q(self, p: dict[str, Tensor]) -> Tensor:
        d, m = self.features, self.rank
        if self.kind == "orthogonal":
            return orthogonalize(p["q"].reshape(-1, d, m))
        if self.kind == "householder":
            return householder(p["q"].reshape(-1, self.reflections, d))
        eye = torch.eye(d, dtype=p["b"].dtype, device=p["b"].device)
        return (eye.flip(1) if self.flip else eye).unsqueeze(0)

    def params(self, context: Tensor | None = None):
        """``(Q, R, R̃, b)``: ``(n, D, M), (n, M, M), (n, M, M), (n, M)``."""
        p = self._split(self._theta(context))
        r = self._triangular(p["r_diag"], p["r_off"])
        rt = self._triangular(p["rt_diag"], p["rt_off"])
        return self._q(p), r, rt, p["b"]

    @staticmethod
    def _mv(a: Tensor, v: Tensor) -> Tensor:
        return (a @ v.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def _ladj(r, rt, pre):
        h = torch.tanh(pre)
        rr = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(rt, dim1=-2, dim2=-1)
        return torch.log1p(rr * (1 - h * h)).sum(-1)

    def _inverse(self, z, context):
        q, r, rt, b = self.params(context)
        pre = self._mv(rt, self._mv(q.transpose(-2, -1), z)) + b
        x = z + self._mv(q, self._mv(r, torch.tanh(pre)))
        return x, self._ladj(r, rt, pre)

    def _forward(self, x, context):
        q, r, rt, b = self.params(context)
        y = self._mv(q.transpose(-2, -1), x)  # (n, M)
        m = self.rank
        with torch.no_grad():
            rd, rtd = r.detach(), rt.detach()
            yd, bd = y.detach(), b.detach().expand_as(y)
            v = torch.zeros_like(yd)
            hv = torch.zeros_like(yd)  # tanh of the solved pre-activations
            for i in reversed(range(m)):
                s = (rtd[:, i, i + 1 :] * v[:, i + 1 :]).sum(-1) + bd[:, i]
                c = yd[:, i] - (rd[:, i, i + 1 :] * hv[:, i + 1 :]).sum(-1)
                ri, rti = rd[:, i, i], rtd[:, i, i]

                def fn(a, ri=ri, rti=rti, s=s, c=c):
                    h = torch.tanh(rti * a + s)
                    return a + ri * h - c, 1 + ri * rti * (1 - h * h)

                span = ri.abs().expand_as(c)
                v[:, i] = solve_monotone(
                    fn, c - span, c + span, what=f"Sylvester.forward (coordinate {i})"
                )
                hv[:, i] = torch.tanh(rti * v[:, i] + s)
            # the Jacobian of v -> v + R tanh(R̃ v + b) is upper triangular
            jac = (
                torch.eye(m, dtype=x.dtype, device=x.device)
                + rd * (1 - hv * hv).unsqueeze(-2) @ rtd
            )
        # two Newton steps with a graph from the (detached) solution, as in Planar: derivatives
        # of the implicit function to the third order (the first step's Jacobian may be the
        # detached one: its error multiplies a residual that is zero at the solution)
        for step in range(2 if torch.is_grad_enabled() else 1):  # (no graph: one, as before)
            pre = self._mv(rt, v) + b
            hv = torch.tanh(pre)
            res = v + self._mv(r, hv) - y
            if step:
                jac = (
                    torch.eye(m, dtype=x.dtype, device=x.device)
                    + (r * (1 - hv * hv).unsqueeze(-2)) @ rt
                )
            v = v - torch.linalg.solve_triangular(
                jac.expand(x.shape[0], m, m), res.unsqueeze(-1), upper=True
            ).squeeze(-1)
        pre = self._mv(rt, v) + b
        z = x - self._mv(q, self._mv(r, torch.tanh(pre)))
        return z, -self._ladj(r, rt, pre)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kind={self.kind!r}, rank={self.rank}"
