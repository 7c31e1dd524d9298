r"""The logistic-mixture CDF transformer of Flow++ (Ho et al., 2019), as an elementwise
transformer.

Per entry, with ``K`` components of weights ``pi`` (a softmax), means ``mu`` and log-scales
``s``, then a log-scale ``a`` and a shift ``b``:

    ``u = sum_k pi_k sigmoid((x - mu_k) exp(-s_k))``,   ``y = logit(u) exp(a) + b``

a strictly increasing map of the real line onto itself. ``log u`` and ``log(1 - u)`` are
computed as log-sum-exps of log-sigmoids, so the map stays finite far in the tails.
Log-scales are soft-bounded, ``s = bound * tanh(r / bound)``, and so is ``a``.

The means are ``mu_k = m_k + c_k``: fixed offsets ``c_k`` evenly over ``[-spread, spread]``
(default 1) added to the conditioner's ``m_k``. Without them (``spread=0``, where all-zero
parameters give ``u = sigmoid(x)`` and ``y = x``, the identity), a conditioner whose output
layer starts at zero (flowforge's do) gives the ``K`` components equal parameters, the
components then get equal gradients, and they stay equal for good: the layer is affine
however long it trains (an audit, 2026-12-07; ``spread=0`` was the only form before).

The inverse has no closed form: it brackets the root between the components' own inverses
(``x`` lies between ``min_k`` and ``max_k`` of ``mu_k + exp(s_k) w`` for ``w = (y - b)
exp(-a)``), bisects it 20 times, takes four Newton steps kept inside the bracket, and ends
with one more Newton step taken with autograd on, so that gradients flow through the inverse
(the implicit-function gradient).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from .._util import checked_int, checked_nonnegative, newton_steps_for_derivatives
from ..core import Transformer

__all__ = ["LogisticMixture"]


class LogisticMixture(Transformer):
    r"""Flow++'s logistic-mixture CDF followed by a logit and an affine map (see the module
    docstring). Plugs into :class:`~flowforge.transforms.Coupling` and
    :class:`~flowforge.transforms.Autoregressive` like ``Affine``.

    Args:
        components: ``K`` (``params_per_dim = 3K + 2``).
        scale_bound: soft bound of the components' log-scales.
        affine_bound: soft bound of the final log-scale ``a``.
        spread: the components' fixed mean offsets span ``[-spread, spread]`` (0: none, the
            identity at zero parameters, and the form of layers built before 2026-12-07; then a
            zero-initialised conditioner never tells the components apart, see the module
            docstring).

    Example:
        >>> lm = LogisticMixture(components=3, spread=0.0)
        >>> x = torch.tensor([-5.0, 0.3, 3.0])
        >>> y, ladj = lm(x, torch.zeros(3, lm.params_per_dim))  # spread 0, zero params: identity
        >>> torch.allclose(y, x, atol=1e-5), torch.allclose(ladj, torch.zeros(3), atol=1e-5)
        (True, True)
    """

    def __init__(
        self,
        components: int = 4,
        scale_bound: float = 6.0,
        affine_bound: float = 3.0,
        spread: float = 1.0,
    ):
        super().__init__()
        checked_int("components", components)
        if not 0 < scale_bound < math.inf or not 0 < affine_bound < math.inf:
            raise ValueError(
                f"expected finite positive bounds, got scale_bound={scale_bound}, "
                f"affine_bound={affine_bound}"
            )
        self.components = int(components)
        self.scale_bound, self.affine_bound = float(scale_bound), float(affine_bound)
        self.spread = checked_nonnegative("spread", spread)
        self.params_per_dim = 3 * self.components + 2
        # the means' fixed offsets, made once (not at every call); not saved: set by spread
        offsets = torch.linspace(-self.spread, self.spread, self.components)
        self.register_buffer("offsets", offsets.to(torch.get_default_dtype()), persistent=False)

    @property
    def identity_at_zero(self) -> bool:
        """Whether all-zero parameters give the identity (the transformer protocol's rule,
        :func:`flowforge.testing.check_transformer`): only without offsets, whose absence
        leaves the components unable to come apart (see the module docstring)."""
        return self.spread == 0 or self.components == 1

    def _split(self, params: Tensor):
        k = self.components
        logits, mu, r = params[..., :k], params[..., k : 2 * k], params[..., 2 * k : 3 * k]
        if self.spread and k > 1:  # (fixed offsets: components that can come apart)
            mu = mu + self.offsets.to(params.dtype)
        s = self.scale_bound * torch.tanh(r / self.scale_bound)
        a = self.affine_bound * torch.tanh(params[..., 3 * k] / self.affine_bound)
        return torch.log_softmax(logits, -1), mu, s, a, params[..., 3 * k + 1]

    @staticmethod
    def _logit_cdf(x: Tensor, log_pi: Tensor, mu: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """``(logit u(x), log u'(x) - log u - log(1 - u))``: the logit of the mixture CDF and
        the log-derivative of that logit."""
        t = (x[..., None] - mu) * torch.exp(-s)  # (..., K)
        a = log_pi + F.logsigmoid(t)  # log u = logsumexp(a), log (1 - u) = logsumexp(b)
        b = log_pi + F.logsigmoid(-t)
        # log u' - log u - log(1 - u) = log sum_k exp(a_k + b_k - log_pi_k - s_k - log u -
        # log(1 - u)): taken as the two log-softmaxes, each a difference between components,
        # so that s_k is not lost against a |t| beyond 1/eps far in the tails
        ladj = torch.logsumexp(torch.log_softmax(a, -1) + torch.log_softmax(b, -1) - log_pi - s, -1)
        return torch.logsumexp(a, -1) - torch.logsumexp(b, -1), ladj

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        log_pi, mu, s, a, b = self._split(params)
        w, ladj = self._logit_cdf(x, log_pi, mu, s)
        return w * torch.exp(a) + b, ladj + a

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        log_pi, mu, s, a, b = self._split(params)
        w = (z - b) * torch.exp(-a)
        with torch.no_grad():
            ends = mu + torch.exp(s) * w[..., None]  # each component's own inverse
            lo, hi = ends.amin(-1), ends.amax(-1)
            for _ in range(20):  # bisection, to a bracket 1e6 times narrower
                mid = (lo + hi) / 2
                below = self._logit_cdf(mid, log_pi, mu, s)[0] < w
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            x = (lo + hi) / 2
            for _ in range(4):  # Newton steps kept inside the bracket (quadratic convergence)
                f, log_d = self._logit_cdf(x, log_pi, mu, s)
                new = x - (f - w) * torch.exp(-log_d)  # inf or NaN where the CDF is flat:
                x = torch.where(torch.isfinite(new), new.clamp(lo, hi), x)  # kept bisected
        # Newton steps with autograd on, for their gradients only (implicit differentiation):
        # at the root one step gives the root's first derivatives with respect to z and the
        # parameters, and a second from the first's result its second derivatives too (a
        # Hessian through a sample: one step gave d2x/dz2 = 0). Their values are left out:
        # where the CDF is flat (log_d of -38) a rounding-level residual would move x far
        # outside the bracket it was found in. Where 1 / u' overflows the dtype, no gradient
        # flows (and no inf - inf makes the value NaN)
        for _ in range(newton_steps_for_derivatives(z, params)):
            f, log_d = self._logit_cdf(x, log_pi, mu, s)
            ok = log_d.detach() > -math.log(torch.finfo(log_d.dtype).max) / 2
            step = torch.where(ok, f - w, 0) * torch.exp(-torch.where(ok, log_d, 0))
            x = x - (step - step.detach())
        return x, -(self._logit_cdf(x, log_pi, mu, s)[1] + a)

    def extra_repr(self) -> str:
        return f"components={self.components}"
