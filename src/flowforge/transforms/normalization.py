r"""Normalisation bijections: ActNorm (Glow) and batch normalisation (RealNVP).

Both normalise dimension 1 (features, or channels of an image) with statistics shared over
every other event position.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._util import event_shape as _event
from .._util import per_channel as _per_channel
from ..core import DataInit, Transform

__all__ = ["ActNorm", "BatchNorm"]


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (biased) variance per channel over the batch and every other position."""
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return mean, var


class ActNorm(DataInit, Transform):
    r"""``z = (x + loc) * exp(log_scale)`` per channel, initialised from the first batch.

    The first forward pass in training mode sets ``loc`` and ``log_scale`` so that this batch
    comes out with zero mean and unit variance per channel (Glow's data-dependent init; the
    scale is ``1 / sqrt(var + eps)``, so a channel whose spread is near ``sqrt(eps)``, 1e-3 by
    default, comes out with less: variance 0.5 at a spread of 1e-3). The
    ``initialized`` flag is a saved buffer: a reloaded model never re-initialises. A
    reparameterised sampling pass in training mode with gradients (``rsample_and_log_prob``, in
    variational inference, where there are no data) marks it initialised as it stands, so
    that a later training-mode ``log_prob`` cannot overwrite what it has learned.
    """

    def __init__(self, shape, eps: float = 1e-6):
        super().__init__(_event(shape))
        c = self.event_shape[0]
        self.positions = math.prod(self.event_shape[1:])
        self.loc = nn.Parameter(torch.zeros(c))
        self.log_scale = nn.Parameter(torch.zeros(c))
        self.register_buffer("initialized", torch.tensor(False))
        if not 0 < eps < math.inf:
            raise ValueError(f"expected eps > 0 (finite), got {eps!r}")
        self.eps = eps

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from a batch ``x`` (called automatically on the first batch)."""
        if x.shape[0] * self.positions < 2:  # no variance to read: NaN, or a scale of 1/sqrt(eps)
            raise ValueError(
                f"ActNorm initialises itself from its first batch in training mode and needs at "
                f"least 2 values per channel, got a batch of {x.shape[0]}; give it a first batch "
                "of several examples (or call flow.eval() to score without initialising)"
            )
        mean, var = _channel_stats(x)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-0.5 * torch.log(var + self.eps))
        self._mark_initialized(x.shape[0])

    def _forward(self, x, context):
        if self.training and self._waiting():
            self.initialize(x)
        z = (x + _per_channel(self.loc, x)) * _per_channel(self.log_scale.exp(), x)
        return z, (self.positions * self.log_scale.sum()).expand(x.shape[0])

    def _inverse(self, z, context):
        if self.training and self._waiting() and torch.is_grad_enabled():
            # a reparameterised sampling pass in training mode (variational inference): no data
            # to initialise from, and the parameters it trains must not be overwritten later by
            # the first batch a training-mode log_prob scores
            self._mark_initialized()
        x = z * _per_channel((-self.log_scale).exp(), z) - _per_channel(self.loc, z)
        return x, (-self.positions * self.log_scale.sum()).expand(z.shape[0])


class BatchNorm(Transform):
    r"""Batch normalisation as a bijection (RealNVP, Dinh et al. 2017).

    ``z = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta``. In training mode ``mean`` and
    ``var`` are the batch's statistics (treated as constants in ``ladj``, as in the paper) and
    update running averages; in eval mode, and always in ``inverse``, the running averages are
    used, so evaluation and sampling are deterministic bijections.

    Args:
        shape: event shape; statistics are per entry of dimension 1.
        momentum: weight of the newest batch in the running averages.
        eps: added to the variance.
    """

    uses_batch_statistics = True  # in training: not recomputable from its output

    def __init__(self, shape, momentum: float = 0.05, eps: float = 1e-5):
        super().__init__(_event(shape))
        c = self.event_shape[0]
        self.positions = math.prod(self.event_shape[1:])
        self.log_gamma = nn.Parameter(torch.zeros(c))
        self.beta = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        if not 0 < momentum <= 1:
            raise ValueError(f"expected 0 < momentum <= 1, got {momentum!r}")
        if not 0 < eps < math.inf:
            raise ValueError(f"expected eps > 0 (finite), got {eps!r}")
        self.momentum, self.eps = momentum, eps

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not (self.running_var >= 0).all():  # (a crafted file; NaN is refused by the reader)
            raise ValueError(f"tensor '{prefix}running_var' holds negative variances")

    def _forward(self, x, context):
        if self.training:
            if x.shape[0] * self.positions < 2:
                raise ValueError(
                    f"BatchNorm in training mode estimates a variance per channel and needs at "
                    f"least 2 values of it, got a batch of {x.shape[0]}; evaluate single "
                    "examples in eval mode (flow.eval()), which uses the running statistics"
                )
            mean, var = _channel_stats(x)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        log_s = self.log_gamma - 0.5 * torch.log(var + self.eps)
        z = (x - _per_channel(mean, x)) * _per_channel(log_s.exp(), x) + _per_channel(self.beta, x)
        return z, (self.positions * log_s.sum()).expand(x.shape[0])

    def _inverse(self, z, context):
        log_s = self.log_gamma - 0.5 * torch.log(self.running_var + self.eps)
        x = (z - _per_channel(self.beta, z)) * _per_channel((-log_s).exp(), z)
        x = x + _per_channel(self.running_mean, z)
        return x, (-self.positions * log_s.sum()).expand(z.shape[0])
