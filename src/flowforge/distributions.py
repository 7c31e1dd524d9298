r"""Base distributions.

Every base subclasses :class:`Distribution` (defined in :mod:`flowforge.core`), so it has
``event_shape`` and ``context_features`` and three methods:

- ``log_prob(z, context=None) -> (batch,)``
- ``sample(n, context=None, temperature=1.0) -> (n, *event_shape)`` (no gradient needed)
- ``rsample_and_log_prob(n, context=None) -> (z, log_prob)`` (differentiable)

A base of your own subclasses :class:`Distribution` and implements ``log_prob`` and
``_sample(n, context, temperature)``. A ``torch.distributions`` distribution becomes a base
with :class:`TorchBase` (defined in :mod:`flowforge.torch_distributions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._util import LOG_2PI, checked_int
from .core import Distribution
from .nets import MADE, MLP
from .torch_distributions import TorchBase

__all__ = [
    "Distribution",
    "StandardNormal",
    "DiagGaussian",
    "GaussianMixture",
    "MADEMoG",
    "TorchBase",
]


def _draw_component(weights: Tensor) -> Tensor:
    """One mixture component per row, ``(n, 1)``; a clear error where the weights overflowed
    (torch's own message names only the probability tensor)."""
    try:
        return torch.multinomial(weights, 1)
    except RuntimeError as e:
        if "probabilit" not in str(e) and "multinomial" not in str(e):
            raise
        raise ValueError(
            "the model's samples are NaN or infinite: its mixture base's component weights "
            f"overflow {weights.dtype} (a flow trained too little or too far); sample in float64 "
            "(flow.double())"
        ) from None


class _Mixture(Distribution):
    """A base that draws a discrete component before its continuous sample: subclasses
    implement ``_draw(n, context, temperature) -> (z, log-probability of the components
    drawn)``, which :meth:`rsample_with_choice` hands to :func:`flowforge.reverse_kl`."""

    has_rsample = False  # (no gradient reaches the weights through the choice)

    def _draw(self, n: int, context: Tensor | None, temperature: float):
        raise NotImplementedError

    def _sample(self, n, context, temperature):
        return self._draw(n, context, temperature)[0]

    def rsample_with_choice(self, n: int, context: Tensor | None = None):
        z, choice = self._draw(self._n(n, context), context, 1.0)
        return z, self.log_prob(z, context), choice


class StandardNormal(Distribution):
    """``N(0, I)`` over ``event_shape``; no parameters."""

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(z, context)
        z = z.flatten(1)
        return -0.5 * (z.square().sum(-1) + self.features * LOG_2PI)

    def _sample(self, n, context, temperature):
        a = self._anchor
        return temperature * torch.randn(n, *self.event_shape, device=a.device, dtype=a.dtype)


class DiagGaussian(Distribution):
    """A Gaussian with learnable mean and diagonal scale.

    With ``context_features > 0`` the mean and log-scale come from an MLP of the context; with
    ``hidden=()`` that MLP is linear, so a one-hot class context gives one Gaussian per class.

    Args:
        event_shape: shape of one sample (an int for vectors).
        context_features: size of the context, 0 for unconditional.
        hidden: hidden widths of the context network.
    """

    def __init__(self, event_shape, context_features: int = 0, hidden: Sequence[int] = ()):
        super().__init__(event_shape, context_features)
        if context_features:
            self.net = MLP(context_features, 2 * self.features, hidden)
        else:
            self.loc = nn.Parameter(torch.zeros(self.features))
            self.log_scale = nn.Parameter(torch.zeros(self.features))

    def _params(self, n: int, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.context_features:
            loc, log_scale = self.net(context).chunk(2, dim=-1)
            return loc, log_scale
        return self.loc.expand(n, -1), self.log_scale.expand(n, -1)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(z, context)
        z = z.flatten(1)
        loc, log_scale = self._params(z.shape[0], context)
        u = (z - loc) * torch.exp(-log_scale)
        return -0.5 * (u.square() + LOG_2PI).sum(-1) - log_scale.sum(-1)

    def _sample(self, n, context, temperature):
        loc, log_scale = self._params(n, context)
        eps = torch.randn_like(loc)
        return (loc + temperature * eps * log_scale.exp()).reshape(n, *self.event_shape)


class GaussianMixture(_Mixture):
    """A learnable mixture of ``components`` diagonal Gaussians.

    With a context, the mixture weights, means and log-scales come from an MLP of the context.
    ``rsample_and_log_prob`` is reparametrised within each component; the component choice
    itself is discrete, so no gradient reaches the weights through the samples:
    :func:`flowforge.reverse_kl` adds the score-function term for the choice
    (:meth:`rsample_with_choice`), so that variational inference trains them.

    Args:
        event_shape: shape of one sample (an int for vectors).
        components: number of mixture components.
        context_features: size of the context, 0 for unconditional.
        hidden: hidden widths of the context network.
        spread: standard deviation of the random initial means (breaks the symmetry; with a
            context, the initial means the context network's output bias gives).
    """

    def __init__(
        self,
        event_shape,
        components: int = 8,
        context_features: int = 0,
        hidden: Sequence[int] = (64,),
        spread: float = 1.0,
    ):
        super().__init__(event_shape, context_features)
        components = checked_int("components", components)
        if not 0 <= spread < math.inf:
            raise ValueError(f"expected a finite spread >= 0, got {spread!r}")
        self.components = components
        k, d = components, self.features
        if context_features:
            self.net = MLP(context_features, k * (1 + 2 * d), hidden)
            with torch.no_grad():  # (its output layer starts at zero: equal components, which
                # get equal gradients and stay equal, one Gaussian; an audit, 2026-12-07)
                self.net.net[-1].bias[k : k + k * d] = spread * torch.randn(k * d)
        else:
            self.logits = nn.Parameter(torch.zeros(k))
            self.loc = nn.Parameter(spread * torch.randn(k, d))
            self.log_scale = nn.Parameter(torch.zeros(k, d))

    def _params(self, n: int, context: Tensor | None):
        k, d = self.components, self.features
        if self.context_features:
            p = self.net(context)
            logits, loc, log_scale = p.split([k, k * d, k * d], dim=-1)
            return logits, loc.reshape(n, k, d), log_scale.reshape(n, k, d)
        return (
            self.logits.expand(n, k),
            self.loc.expand(n, k, d),
            self.log_scale.expand(n, k, d),
        )

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(z, context)
        z = z.reshape(z.shape[0], 1, -1)
        logits, loc, log_scale = self._params(z.shape[0], context)
        u = (z - loc) * torch.exp(-log_scale)
        comp = -0.5 * (u.square() + LOG_2PI).sum(-1) - log_scale.sum(-1)  # (n, k)
        return torch.logsumexp(F.log_softmax(logits, -1) + comp, dim=-1)

    def _draw(self, n, context, temperature):
        """Samples, and the log-probability of the components drawn, ``(n,)``."""
        logits, loc, log_scale = self._params(n, context)
        log_w = F.log_softmax(logits, -1)
        k = _draw_component(log_w.detach().exp())  # (n, 1)
        idx = k.unsqueeze(-1).expand(n, 1, self.features)
        loc = loc.gather(1, idx).squeeze(1)
        scale = log_scale.gather(1, idx).squeeze(1).exp()
        eps = torch.randn_like(loc)
        z = (loc + temperature * scale * eps).reshape(n, *self.event_shape)
        return z, log_w.gather(1, k).squeeze(1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", components={self.components}"


class MADEMoG(_Mixture):
    r"""An autoregressive base: a mixture of Gaussians per dimension, parametrised by MADE.

    ``p(z) = prod_i sum_k pi_ik N(z_i; mu_ik, sigma_ik)`` where ``(pi, mu, sigma)`` of dimension
    ``i`` come from a :class:`~flowforge.nets.MADE` of ``z_<i`` (and the context), as in MAF's
    "MADE MoG" density estimator (Papamakarios et al., 2017). Each conditional is a normalised
    1-D mixture, so the product is normalised. ``log_prob`` is one network pass; sampling is
    sequential over the ``D = prod(event_shape)`` dimensions (:meth:`MADE.solve`, about one
    pass of arithmetic in ``D`` small steps). A temperature scales every component's sigma.

    Args:
        event_shape: shape of one sample (flattened to ``D`` entries in row-major order).
        components: mixture components per dimension.
        context_features: size of the context, 0 for unconditional.
        hidden: MADE hidden widths.
        spread: the components' initial means are spread evenly over ``[-spread, spread]``.

    Example:
        >>> base = MADEMoG(3, components=4, hidden=(16,))
        >>> base.log_prob(base.sample(5)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        event_shape,
        components: int = 8,
        context_features: int = 0,
        hidden: Sequence[int] | int = (64, 64),
        spread: float = 1.0,
    ):
        super().__init__(event_shape, context_features)
        components = checked_int("components", components)
        if not 0 <= spread < math.inf:
            raise ValueError(f"expected a finite spread >= 0, got {spread!r}")
        self.components = k = int(components)
        self.made = MADE(
            self.features, 3 * k, hidden, context_features, zero_init=True, grouped=False
        )  # dimension-major: the mixture's sums run over the last axis
        # Start as an equal-weight mixture of unit Gaussians with spread means: distinct
        # components from the first step (zero-initialised means would never separate).
        with torch.no_grad():
            bias = self.made.out.bias.view(self.features, 3 * k)
            bias[:, k : 2 * k] = torch.linspace(-spread, spread, k) if k > 1 else 0.0

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.components
        logits, loc, log_scale = params.split([k, k, k], dim=-1)
        return F.log_softmax(logits, -1), loc, log_scale

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        self._check(z, context)
        z = z.reshape(z.shape[0], -1)
        log_w, loc, log_scale = self._split(self.made(z, context))  # (n, D, K) each
        u = (z.unsqueeze(-1) - loc) * torch.exp(-log_scale)
        comp = -0.5 * (u.square() + LOG_2PI) - log_scale
        return torch.logsumexp(log_w + comp, dim=-1).sum(-1)

    def _draw(self, n, context, temperature):
        """Samples, and the log-probability of the components drawn (summed over the
        dimensions, each given the dimensions before it), ``(n,)``."""
        a = self._anchor
        z = torch.zeros(n, self.features, device=a.device, dtype=a.dtype)
        cols: dict[int, Tensor] = {}
        chosen: list[Tensor] = []

        def step(i: int, params: Tensor) -> Tensor:
            log_w, loc, log_scale = self._split(params)
            idx = _draw_component(log_w.detach().exp())
            chosen.append(log_w.gather(1, idx).squeeze(1))
            mu, ls = loc.gather(1, idx).squeeze(1), log_scale.gather(1, idx).squeeze(1)
            cols[i] = mu + temperature * ls.exp() * torch.randn_like(mu)
            return cols[i]

        self.made.solve(step, n, context, like=z)
        if cols:
            z = torch.stack([cols[i] for i in range(self.features)], 1)
        choice = torch.stack(chosen, 0).sum(0) if chosen else a.new_zeros(n)
        return z.reshape(n, *self.event_shape), choice

    def extra_repr(self) -> str:
        return super().extra_repr() + f", components={self.components}"
