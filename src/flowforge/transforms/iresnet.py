r"""Invertible residual networks: i-ResNet blocks (Behrmann et al., 2019) with the Residual
Flows log-determinant estimator (Chen et al., 2019).

A block is written in the generative direction, ``x = z + g(z)`` with ``Lip(g) < 1``, closed form
from noise to data; ``forward`` (data to noise) is the fixed-point iteration ``z <- x - g(z)``.
See :mod:`flowforge.transforms.residual` for the planar, radial and Sylvester layers, which share
that orientation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._util import INFERENCE_MODE, checked_int, jacobian_rows, largest
from ..core import Transform, samples_only
from ..nets import activation_class

__all__ = ["SpectralLinear", "ResidualBlock", "logdet_exact", "logdet_roulette"]


class SpectralLinear(nn.Linear):
    r"""A linear layer whose spectral norm is kept ``<= coeff``: ``W / max(1, σ / coeff)``.

    ``σ`` is estimated by power iteration with the vectors kept in buffers ``running_u`` and
    ``running_v`` (so they save and load with the weights). :meth:`update_` takes
    ``power_iterations`` steps and stores the vectors (once per training step: a
    :class:`ResidualBlock` calls it once per call in training mode). In eval mode
    :meth:`normalized_weight` takes ``eval_power_iterations`` further steps from the stored
    vectors *without* storing them, so eval is deterministic however often it is called.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        coeff: float = 0.9,
        power_iterations: int = 5,
        eval_power_iterations: int = 10,
    ):
        super().__init__(in_features, out_features)
        self.coeff = float(coeff)
        self.power_iterations = int(power_iterations)
        self.eval_power_iterations = int(eval_power_iterations)
        self.register_buffer("running_u", F.normalize(torch.randn(out_features), dim=0))
        self.register_buffer("running_v", F.normalize(torch.randn(in_features), dim=0))

    @torch.no_grad()
    def _power(self, n: int) -> tuple[Tensor, Tensor]:
        w = self.weight.detach()
        u, v = self.running_u, self.running_v
        for _ in range(n):
            v = F.normalize(w.t() @ u, dim=0, eps=1e-30)
            u = F.normalize(w @ v, dim=0, eps=1e-30)
        return u, v

    @torch.no_grad()
    def update_(self, iterations: int | None = None) -> None:
        """Advance the stored power-iteration vectors."""
        u, v = self._power(self.power_iterations if iterations is None else iterations)
        self.running_u.copy_(u)
        self.running_v.copy_(v)

    def sigma(self) -> Tensor:
        """The spectral-norm estimate ``uᵀ W v`` (with a graph to the weight). The vectors are
        copies: the graph keeps them, and the next call's :meth:`update_` changes the buffers
        in place (two calls before one backward pass)."""
        u, v = self._power(0 if self.training else self.eval_power_iterations)
        return torch.dot(u.clone(), self.weight @ v.clone()).abs()

    def normalized_weight(self) -> Tensor:
        return self.weight / torch.clamp(self.sigma() / self.coeff, min=1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.update_()
        return F.linear(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", coeff={self.coeff}"


LIPSCHITZ_ACTIVATIONS = ("lipswish", "elu", "tanh")  # 1-Lipschitz
# the widest block whose log-determinant is computed exactly when scoring (eval mode, importance
# weights): D backward passes and a (batch, D, D) Jacobian per block
EXACT_LOGDET_MAX = 128


def logdet_exact(gz: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    """``log det(I + dg/dz)`` from the full Jacobian (``D`` backward passes): small ``D``."""
    d = z.shape[1]
    jac = jacobian_rows(gz, z, create_graph)  # (n, D, D): jac[:, i, j] = d g_i / d z_j
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    return torch.linalg.slogdet(eye + jac)[1]


def logdet_roulette(
    gz: Tensor,
    z: Tensor,
    create_graph: bool,
    n_exact: int = 2,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Unbiased estimate of ``log det(I + J)``, ``J = dg/dz``, ``Lip(g) < 1`` (Chen et al., 2019).

    The power series ``sum_k (-1)^(k+1) tr(J^k) / k`` with a Hutchinson trace estimator
    (``v ~ N(0, I)``) and a Russian-roulette truncation: the first ``n_exact`` terms are always
    taken; each example draws ``N = n_exact + G``, ``G ~ Geometric(p)`` on ``{0, 1, ...}``, and
    term ``k`` is weighted by ``1 / P(N >= k)``, which makes the estimate unbiased.

    The gradient is the Neumann-series estimate ``uᵀ (dJ) v`` with
    ``u = sum_k (-1)^(k-1) J^(k-1)ᵀ v / P(N >= k)`` (the same draws): the power terms are
    computed without a graph, and one vector-Jacobian product carries the gradient, so memory
    does not grow with the number of terms.
    """
    n, d = z.shape
    v = torch.randn(n, d, dtype=z.dtype, device=z.device, generator=generator)
    uni = torch.rand(n, dtype=z.dtype, device=z.device, generator=generator).clamp_min(
        torch.finfo(z.dtype).tiny
    )
    extra = torch.floor(torch.log(uni) / math.log1p(-p))  # P(G >= j) = (1 - p)^j
    terms = n_exact + extra
    k_max = int(terms.max().item())
    w = v  # vᵀ J^(k-1)
    u = torch.zeros_like(v)
    value = z.new_zeros(n)
    for k in range(1, k_max + 1):
        weight = (k <= terms).to(z.dtype) * (1 - p) ** (-max(k - n_exact, 0))
        sign = 1.0 if k % 2 else -1.0
        u = u + sign * weight.unsqueeze(-1) * w
        w = torch.autograd.grad(gz, z, w, retain_graph=True)[0]
        value = value + sign / k * weight * (w * v).sum(-1)
    if not create_graph:
        return value.detach()
    surrogate = (torch.autograd.grad(gz, z, u, create_graph=True)[0] * v).sum(-1)
    return value.detach() + surrogate - surrogate.detach()


class ResidualBlock(Transform):
    r"""An invertible residual block ``x = z + g(z)`` (noise to data, closed form).

    ``g`` is an MLP of :class:`SpectralLinear` layers (spectral norm ``<= coeff`` each) and
    1-Lipschitz activations, so ``Lip(g) <= coeff^(layers) < 1`` (i-ResNet, Behrmann et al.,
    2019). With a context, the context is concatenated to the first layer's input (the bound
    holds for the ``z`` part too).

    ``inverse`` (noise to data): ``x = z + g(z)``, ``log|det dx/dz| = log det(I + J_g(z))``.
    ``forward`` (data to noise): the fixed-point iteration ``z <- x - g(z)``, a contraction,
    to a relative step of ``1e-12`` (float64; ``1e-6`` in float32); gradients through it are
    implicit (an adjoint fixed-point solve), so no iteration is kept in the graph.

    The log-determinant:

    - ``"exact"``: the full Jacobian (``D`` backward passes; for small ``D``; the tests use it);
    - ``"roulette"``: :func:`logdet_roulette`, unbiased, with the Neumann-series gradient
      (Residual Flows, Chen et al., 2019); ``log_prob`` then is a stochastic estimate;
    - ``"auto"``: exact for ``D <= 16``, roulette above; in eval mode (scoring: ``ff.nll``,
      ``flowforge eval``, a trainer's validation) exact up to ``D = 128``
      (:data:`EXACT_LOGDET_MAX`), so that a score is a number, not a random estimate.

    Args:
        features: dimension ``D``.
        hidden: widths of ``g``'s hidden layers.
        coeff: the Lipschitz coefficient of each linear map, in ``(0, 1)``.
        activation: ``"lipswish"``, ``"elu"`` or ``"tanh"``.
        estimator: ``"auto"``, ``"exact"`` or ``"roulette"``.
        n_exact, roulette_p: the roulette estimator's always-taken terms and geometric ``p``.
        context_features: size of a context fed to ``g``.
    """

    numeric_inverse = 1e-8
    full_precision = True  # (its solves do not converge in bfloat16)

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (32, 32),
        coeff: float = 0.9,
        activation: str = "lipswish",
        estimator: str = "auto",
        n_exact: int = 2,
        roulette_p: float = 0.5,
        context_features: int = 0,
        power_iterations: int = 5,
        eval_power_iterations: int = 10,
        max_iter: int = 2000,
    ):
        d = checked_int("features", features)
        super().__init__((d,), context_features)
        hidden = [checked_int("every hidden width", h) for h in hidden]
        if not 0 < coeff < 1:
            raise ValueError(f"expected 0 < coeff < 1 (a contraction), got {coeff}")
        if estimator not in ("auto", "exact", "roulette"):
            raise ValueError(f"unknown estimator {estimator!r}; expected auto, exact or roulette")
        if isinstance(roulette_p, bool) or not (
            isinstance(roulette_p, (int, float)) and 0 < roulette_p < 1
        ):  # (the roulette's geometric draw: p outside (0, 1) biases the estimate or fails)
            raise ValueError(f"expected 0 < roulette_p < 1, got {roulette_p!r}")
        if isinstance(n_exact, bool) or not isinstance(n_exact, int) or n_exact < 0:
            raise ValueError(f"expected n_exact to be an integer >= 0, got {n_exact!r}")
        act = activation_class(activation, LIPSCHITZ_ACTIVATIONS)
        self.features = d
        widths = [d + self.context_features, *hidden, d]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(act())
            layers.append(SpectralLinear(a, b, coeff, power_iterations, eval_power_iterations))
        self.g = nn.Sequential(*layers)
        self.coeff = coeff
        self.estimator = estimator
        self.n_exact, self.roulette_p = int(n_exact), float(roulette_p)
        self.max_iter = int(max_iter)

    def _net(self):
        """``g`` as a function of ``(z, context)``, its weights normalised once for this call
        (in training mode the power iterations advance first)."""
        if self.training:
            for m in self.g:
                if isinstance(m, SpectralLinear):
                    m.update_()
        ops = [
            (m.normalized_weight(), m.bias) if isinstance(m, SpectralLinear) else m for m in self.g
        ]

        def g(z: Tensor, context: Tensor | None) -> Tensor:
            h = torch.cat([z, context], -1) if self.context_features else z
            for op in ops:
                h = F.linear(h, *op) if isinstance(op, tuple) else op(h)
            return h

        return g

    def residual(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``g(z)``."""
        return self._net()(z, context)

    def lipschitz_bound(self) -> float:
        """The product of the layers' exact spectral norms (SVD), a bound on ``Lip(g)`` in ``z``
        (the activations are 1-Lipschitz)."""
        bound = 1.0
        for m in self.g:
            if isinstance(m, SpectralLinear):
                w = m.normalized_weight().detach()
                if self.context_features and m is self.g[0]:
                    w = w[:, : self.features]
                bound *= torch.linalg.matrix_norm(w, ord=2).item()
        return bound

    def _method(self) -> str:
        if self.estimator == "auto":  # (scoring, in eval mode: exact up to EXACT_LOGDET_MAX)
            limit = 16 if self.training else EXACT_LOGDET_MAX
            return "exact" if self.features <= limit else "roulette"
        return self.estimator

    def _gz_logdet(self, g, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``g(z)`` and ``log det(I + J_g(z))``, differentiable when grad is enabled (NaN for
        the log-determinant where :meth:`Flow.sample` throws it away)."""
        if samples_only():
            gz = g(z, context)
            return gz, torch.full_like(gz[:, 0], math.nan)
        if torch.is_inference_mode_enabled():
            raise RuntimeError(INFERENCE_MODE.format(type(self).__name__))
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            zz = z if z.requires_grad else z.detach().requires_grad_()
            gz = g(zz, context)
            if self._method() == "exact":
                ld = logdet_exact(gz, zz, create_graph=outer)
            else:
                ld = logdet_roulette(gz, zz, outer, self.n_exact, self.roulette_p)
        if not outer:
            gz, ld = gz.detach(), ld.detach()
        return gz, ld

    def _inverse(self, z, context):
        gz, ld = self._gz_logdet(self._net(), z, context)
        return z + gz, ld

    def _tol(self, dtype) -> float:
        return 1e-12 if dtype == torch.float64 else 1e-6

    def _forward(self, x, context):
        g = self._net()
        tol = self._tol(x.dtype)
        with torch.no_grad():
            z_star = x - g(x, context)
            converged = False
            for _ in range(self.max_iter):
                new = x - g(z_star, context)
                step = (new - z_star).abs().max()
                z_star = new
                if step <= tol * (1 + z_star.abs().max()):
                    converged = True
                    break
            if not converged:
                res = largest((z_star + g(z_star, context) - x).abs())
                raise RuntimeError(
                    f"ResidualBlock fixed-point inverse did not converge within "
                    f"max_iter={self.max_iter} iterations: residual max |z + g(z) - x| = "
                    f"{res:.3g}, last step {largest(step):.3g} (relative tolerance {tol:.3g})"
                )
        if not torch.is_grad_enabled():
            _, ld = self._gz_logdet(g, z_star, context)
            return z_star, -ld
        # z = x - g(z*) carries the graph to x, the context and g's parameters; a hook turns its
        # incoming gradient gamma into the implicit one, lambda = gamma - J_gᵀ lambda.
        z = x - g(z_star, context)
        if z.requires_grad:
            z0 = z_star.clone().requires_grad_()
            g0 = g(z0, context)

            def hook(grad):
                if torch.is_grad_enabled():  # create_graph=True: this solve has no graph
                    raise RuntimeError(
                        "a ResidualBlock's inverse (its log_prob) has first derivatives only: "
                        "the implicit gradient is a fixed-point solve without a graph; a "
                        "gradient penalty or Hessian (create_graph=True) is not supported"
                    )
                lam = grad
                for _ in range(self.max_iter):
                    new = grad - torch.autograd.grad(g0, z0, lam, retain_graph=True)[0]
                    step = (new - lam).abs().max()
                    lam = new
                    if step <= 0.1 * tol * (1 + lam.abs().max()):
                        return lam
                raise RuntimeError(
                    f"ResidualBlock adjoint fixed-point solve (the implicit gradient) did not "
                    f"converge within max_iter={self.max_iter} iterations: last step "
                    f"{largest(step):.3g} (relative tolerance {0.1 * tol:.3g})"
                )

            z.register_hook(hook)
            # the log-det differentiates with respect to its input: give it a tensor past the
            # hook, so that the hook sees only the total gradient flowing into z
            z = z.view_as(z)
        _, ld = self._gz_logdet(g, z, context)
        return z, -ld

    def extra_repr(self) -> str:
        return super().extra_repr() + f", coeff={self.coeff}, estimator={self.estimator!r}"
