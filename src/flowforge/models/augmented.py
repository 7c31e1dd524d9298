r"""Augmented normalizing flows (Huang, Dinh & Courville 2020; Chen et al. 2020, "VFlow").

Data ``x`` (``D`` features) is augmented with ``A`` auxiliary variables ``e`` drawn from a
learned conditional Gaussian ``q(e | x) = N(mu(x), diag(sigma(x)^2))``; an ordinary
:class:`~flowforge.Flow` models the joint density ``p(x, e)`` over ``D + A`` features. The
marginal ``p(x) = int p(x, e) de`` has no closed form, so :meth:`AugmentedFlow.log_prob` is a
lower bound on ``log p(x)``:

- ``K = 1`` (``samples=1``, what training maximises), the ELBO
  ``log p(x, e) - log q(e | x)`` at one draw ``e ~ q(e | x)``, whose expectation is
  ``log p(x) - KL(q(e | x) || p(e | x))``;
- ``K > 1``, the importance-weighted bound (Burda et al. 2016)
  ``log (1/K) sum_k p(x, e_k) / q(e_k | x)``, whose expectation increases with ``K`` towards
  ``log p(x)``.

Each is a random number whose expectation is the bound, reparameterised (``e = mu + sigma *
eps``) so that gradients reach both the encoder and the joint flow; a figure is only
meaningful with its ``K`` stated. Sampling draws ``(x, e)`` from the joint flow and drops
``e``.

:class:`AugmentedFlow` is its own ``nn.Module``, not a :class:`~flowforge.Flow` (as the M-flow
is not): its ``log_prob`` is a stochastic bound, not a density, and its event shape ``(D,)``
is not its transform's ``(D + A,)``, so the Flow methods that rely on an exact density
(``rsample_and_log_prob``, ``as_torch``, reverse KL, the preprocessing wrappers of
:mod:`flowforge.models.assembly`) would be silently wrong for it. The builder
:func:`augmented` is registered, so ``ff.save`` and ``ff.load`` round-trip it.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor, nn

from .._util import all_finite
from ..core import Flow
from ..nets import MLP
from .assembly import count, widths
from .autoregressive import MAF, NSF
from .coupling import RealNVP
from .registry import register

__all__ = ["AugmentedFlow", "GaussianAugmentation", "augmented", "JOINT_FLOWS"]

LOG_2PI = math.log(2 * math.pi)


class GaussianAugmentation(nn.Module):
    r"""``q(e | x) = N(mu(x), diag(exp(2 s(x))))``: an MLP of ``x`` (and the context) gives the
    mean and the log-scale of ``A`` auxiliary variables. The last layer starts at zero, so
    ``q`` starts as ``N(0, I)``; the log-scale is soft-clamped to ``[-bound, bound]``.

    Args:
        features: ``D``, the data's size.
        extra: ``A``, the auxiliary variables' size (0: no augmentation, ``log q = 0``).
        hidden: the MLP's widths.
        context_features: size of a context read with ``x``.
        activation: the MLP's activation.
        bound: the largest absolute log-scale.
    """

    def __init__(
        self,
        features: int,
        extra: int,
        hidden=(64, 64),
        context_features: int = 0,
        activation: str = "relu",
        bound: float = 5.0,
    ):
        super().__init__()
        self.features, self.extra, self.bound = features, extra, float(bound)
        self.context_features = context_features
        self.net = (
            MLP(features, 2 * extra, tuple(hidden), context_features, activation) if extra else None
        )

    def params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(mu, log_scale)``, each ``(batch, A)``."""
        if self.net is None:
            empty = x.new_zeros(x.shape[0], 0)
            return empty, empty
        out = self.net(x, context)
        mu, s = out.chunk(2, dim=-1)
        return mu, self.bound * torch.tanh(s / self.bound)

    def rsample(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(e, log q(e | x))``: one reparameterised draw per row of ``x``, ``(batch, A)`` and
        ``(batch,)``."""
        mu, log_scale = self.params(x, context)
        eps = torch.randn_like(mu)
        e = mu + log_scale.exp() * eps
        log_q = -0.5 * (eps.square() + LOG_2PI).sum(-1) - log_scale.sum(-1)
        return e, log_q

    def log_prob(self, e: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log q(e | x)``, ``(batch,)``."""
        mu, log_scale = self.params(x, context)
        eps = (e - mu) * torch.exp(-log_scale)
        return -0.5 * (eps.square() + LOG_2PI).sum(-1) - log_scale.sum(-1)


def _samples(k) -> int:
    """``k`` as the number of importance samples, an integer >= 1, or a one-line error."""
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)
    except TypeError:
        raise ValueError(
            f"expected samples (K, the draws of e per example) to be an integer >= 1, got {k!r}"
        ) from None
    if k < 1:
        raise ValueError(
            f"expected samples (K, the draws of e per example) to be an integer >= 1, got {k}"
        )
    return k


class AugmentedFlow(nn.Module):
    r"""A flow over data augmented with auxiliary variables (see the module docstring).

    Args:
        joint: a :class:`~flowforge.Flow` over vectors ``(D + A,)``: ``x`` first, then ``e``;
            its context, if any, is the model's.
        augmentation: ``q(e | x)``, a :class:`GaussianAugmentation` (or any module with its
            ``rsample(x, context) -> (e, log_q)`` and ``extra``).
        features: ``D``.

    Example:
        >>> m = augmented(features=2, extra=2, layers=2, hidden=(16,), encoder_hidden=(16,))
        >>> x = torch.randn(5, 2)
        >>> m.log_prob(x).shape, m.log_prob(x, samples=8).shape, m.sample(3).shape
        (torch.Size([5]), torch.Size([5]), torch.Size([3, 2]))
    """

    #: why ``ff.nll``, ``ff.bits_per_dim`` and ``ff.objectives.log_likelihoods`` refuse it
    not_a_density = (
        "its log_prob is a random lower bound, not the log-density: score it with "
        "model.nll(x, samples=K) (the importance-weighted bound, K stated) or model.log_prob"
        "(x, samples=K)"
    )

    def __init__(self, joint: Flow, augmentation: nn.Module, features: int):
        super().__init__()
        if not isinstance(joint, Flow):
            raise TypeError(f"expected joint to be a flowforge Flow, got {type(joint).__name__}")
        extra = int(augmentation.extra)
        if tuple(joint.event_shape) != (features + extra,):
            raise ValueError(
                f"the joint flow must model vectors of features + extra = {features + extra} "
                f"entries, got {tuple(joint.event_shape)}"
            )
        cq = getattr(augmentation, "context_features", 0)
        if extra and cq != joint.context_features:
            raise ValueError(
                f"the joint flow reads a context of {joint.context_features} features and the "
                f"augmentation one of {cq}"
            )
        self.joint, self.augmentation = joint, augmentation
        self.features, self.extra = features, extra
        self.config: dict | None = None  # set by the registered builder; used by ff.save

    # what ff.save's check and the library's helpers read from a model
    @property
    def event_shape(self) -> tuple[int]:
        """The data's shape, ``(D,)``."""
        return (self.features,)

    @property
    def context_features(self) -> int:
        return self.joint.context_features

    @property
    def dtype(self) -> torch.dtype:
        return self.joint.dtype

    @property
    def validate_args(self) -> bool | None:
        """The joint flow's (``Flow.validate_args``): where inputs are scanned for NaN/inf."""
        return self.joint.validate_args

    @validate_args.setter
    def validate_args(self, value: bool | None) -> None:
        self.joint.validate_args = value

    def _prepare(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None, tuple]:
        """``x`` (``(*batch, D)``) checked, in the model's dtype, flattened to ``(B, D)``; the
        context checked as the joint flow checks it."""
        x = self.joint._as_input(x, "x")
        d = self.features
        if x.dim() < 1 or x.shape[-1] != d:
            shape = "(" + ", ".join(map(str, x.shape)) + ("," if x.dim() == 1 else "") + ")"
            raise ValueError(f"expected x of shape (*batch, {d}), got {shape}")
        batch = tuple(x.shape[:-1])
        if self.joint._validating(x) and not all_finite(x):
            bad = (~torch.isfinite(x)).reshape(-1, d).any(-1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"x contains NaN or inf (first bad rows: {bad})")
        context = self.joint._check_context(context, batch)
        return x.reshape(-1, d), context, batch

    def log_prob(self, x: Tensor, context: Tensor | None = None, samples: int = 1) -> Tensor:
        """A lower bound on ``log p(x)`` for ``x`` of shape ``(*batch, D)``, ``(*batch,)``:
        the one-draw ELBO (``samples=1``) or the importance-weighted bound with ``K = samples``
        draws of ``e ~ q(e | x)`` per example. Random (seed torch for a repeatable figure);
        differentiable in every parameter."""
        k = _samples(samples)
        x, context, batch = self._prepare(x, context)
        n = x.shape[0]
        if not n:
            out = x.new_zeros(batch)
            if torch.is_grad_enabled():  # (zero gradients, as a Flow's empty batch gives)
                out = out + sum(p.reshape(-1)[:0].sum() for p in self.parameters())
            return out
        xs = x.repeat(k, 1)  # (K * B, D): draw k of every row is at k * B + row
        cs = None if context is None else context.repeat(k, 1)
        e, log_q = self.augmentation.rsample(xs, cs)
        lp = self.joint.log_prob(torch.cat([xs, e], -1), cs) - log_q
        lp = lp.reshape(k, n)
        bound = lp[0] if k == 1 else torch.logsumexp(lp, 0) - math.log(k)
        return bound.reshape(batch)

    def forward(self, x: Tensor, context: Tensor | None = None, samples: int = 1) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x, context, samples)

    def elbo(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The one-draw ELBO per example, ``log_prob(x, context, samples=1)``."""
        return self.log_prob(x, context, 1)

    def nll(self, x: Tensor, context: Tensor | None = None, samples: int = 1) -> Tensor:
        """Minus the mean bound (``K = samples``) in nats per example: an upper bound on the
        NLL, in expectation. A non-finite mean is a ``ValueError`` where the model validates."""
        if isinstance(x, Tensor) and x.dim() > 1 and not x.shape[0]:
            raise ValueError("expected at least one example, got an empty batch")
        out = -self.log_prob(x, context, samples).mean()
        if self.joint._validating(out) and not all_finite(out):
            raise ValueError(
                f"the mean NLL bound is {out.item()}: the bound of some examples is NaN or "
                "infinite (the model diverged, or inputs far outside its training data)"
            )
        return out

    @torch.no_grad()
    def sample(self, n, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """``n`` samples of ``x``, ``(n, D)`` (shaped as :meth:`Flow.sample` shapes them, with a
        context too): ``(x, e)`` drawn from the joint flow, ``e`` dropped."""
        xe = self.joint.sample(n, context, temperature)
        return xe[..., : self.features]

    def extra_repr(self) -> str:
        return f"features={self.features}, extra={self.extra}"


JOINT_FLOWS = ("realnvp", "nsf", "maf")


@register(inputs=("features",), depth="layers", width="hidden")
def augmented(
    features: int,
    extra: int = 2,
    flow: str = "realnvp",
    layers: int = 6,
    hidden: int | tuple[int, ...] = (64, 64),
    encoder_hidden: int | tuple[int, ...] = (64, 64),
    context_features: int = 0,
    activation: str = "relu",
) -> AugmentedFlow:
    r"""Augmented flow (Huang et al. 2020): a joint flow over x and A auxiliary dims; the bound.

    ``q(e | x)`` is a conditional diagonal Gaussian (an MLP of ``x`` and the context gives its
    mean and log-scale); the joint flow over ``D + A`` features is a RealNVP (affine
    couplings, alternating masks), an NSF (spline couplings) or a MAF.

    Args:
        features: ``D``, the data's size.
        extra: ``A``, the number of auxiliary variables (0: the joint flow alone, whose bound is
            then its exact log-density).
        flow: the joint flow, ``"realnvp"``, ``"nsf"`` or ``"maf"``.
        layers: its layers.
        hidden: its conditioners' widths.
        encoder_hidden: the widths of ``q(e | x)``'s MLP.
        context_features: size of a conditioning vector, read by the joint flow and by ``q``.
        activation: the networks' activation.
    """
    count("features", features)
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise ValueError(
            f"expected extra (A, the auxiliary dims) to be an integer >= 0, got {extra!r}"
        )
    if flow not in JOINT_FLOWS:
        raise ValueError(f"expected flow to be one of {', '.join(JOINT_FLOWS)}, got {flow!r}")
    count("layers", layers)
    h, hq = widths(hidden), widths(encoder_hidden)
    d = features + extra
    common = dict(
        features=d,
        layers=layers,
        hidden=h,
        activation=activation,
        context_features=context_features,
        standardize=False,  # (q(e | x) reads x as given: one scale for both)
    )
    if flow == "realnvp":
        if d < 2:
            raise ValueError(
                "a RealNVP joint flow needs features + extra >= 2; give extra >= 1 or flow='maf'"
            )
        joint = RealNVP(**common)
    elif flow == "nsf":
        joint = NSF(**common, autoregressive=d < 2)
    else:
        joint = MAF(**common)
    q = GaussianAugmentation(features, extra, hq, context_features, activation)
    return AugmentedFlow(joint, q, features)
