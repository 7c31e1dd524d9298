r"""Elementwise transformers: the invertible scalar maps that coupling and autoregressive layers
apply to each transformed dimension.

Each subclasses :class:`~flowforge.core.Transformer`: no weights of its own, ``params`` of shape
``(*x.shape, P)`` from a conditioner (``P = transformer.params_per_dim``), ``(y, ladj)`` with an
elementwise ``ladj``, and the identity at all-zero parameters, so that a conditioner with a
zero-initialised last layer starts its layer as the identity. The rational-quadratic spline
lives in :mod:`flowforge.transforms.splines`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transformer

__all__ = ["Additive", "Affine"]


class Additive(Transformer):
    r"""NICE's additive law: ``z = x + t``; volume-preserving (``ladj = 0``)."""

    params_per_dim = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return z - params[..., 0], torch.zeros_like(z)


class Affine(Transformer):
    r"""The affine law with a bounded log-scale: ``z = x * exp(s) + t`` (RealNVP), or
    ``z = (x + t) * exp(s)`` with ``shift_first=True`` (Glow's order).

    The raw log-scale ``r`` is soft-clamped, ``s = bound * tanh(r / bound)``, so
    ``|s| < bound``: a scale can never overflow to inf/NaN however large the conditioner's
    output grows, and near zero it is the identity map of ``r``.

    The two orders describe the same maps (``t`` differs by a factor ``exp(s)``) but train
    differently. With ``x * exp(s) + t`` a change of the log-scale moves ``z`` by
    ``x * exp(s) * ds``: in proportion to the *input*, so entries far from zero (the background
    of logit-preprocessed images sits at ``logit(0.05) = -2.94``) all move together, by many
    times their own spread. With ``(x + t) * exp(s)`` it moves ``z`` by ``z * ds``: in proportion
    to the *output*, which the flow is pulling towards the base's scale (docs/images.md,
    "Training stability").

    Args:
        bound: the largest absolute log-scale per dimension (``None`` for unbounded).
        shift_first: shift, then scale (``z = (x + t) * exp(s)``).
    """

    params_per_dim = 2

    # Without a graph (scoring, sampling) the soft clamp runs through a sigmoid,
    # ``bound - 2 bound sigmoid(-2 r / bound)``, the same function: torch's CPU tanh is several
    # times slower than its sigmoid, and the clamp was a tenth of a MAF's log_prob. The two
    # forms differ by a few units in the last place, so training, which records a graph, keeps
    # the tanh form (its steps, and so the trained weights, are those of earlier versions).
    # False: the tanh form everywhere (the bits-back coder's copy, so that files it wrote decode
    # bit for bit across versions).
    sigmoid_clamp = True

    def __init__(self, bound: float | None = 3.0, shift_first: bool = False):
        super().__init__()
        if bound is not None and (
            isinstance(bound, bool)
            or not isinstance(bound, (int, float))
            or not 0 < bound < math.inf
        ):
            raise ValueError(
                f"expected the log-scale bound to be a finite number > 0 (or None: unbounded), "
                f"got {bound!r}"
            )
        self.bound = bound
        self.shift_first = bool(shift_first)

    def _scale(self, r: Tensor) -> Tensor:
        b = self.bound
        if b is None:
            return r
        if self.sigmoid_clamp and not (r.requires_grad and torch.is_grad_enabled()):
            return torch.rsub(torch.sigmoid(r * (-2.0 / b)), b, alpha=2.0 * b)
        return b * torch.tanh(r / b)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, r = params.unbind(-1)
        s = self._scale(r)
        if self.shift_first:
            return (x + t) * torch.exp(s), s
        return x * torch.exp(s) + t, s

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, r = params.unbind(-1)
        s = self._scale(r)
        if self.shift_first:
            return z * torch.exp(-s) - t, -s
        return (z - t) * torch.exp(-s), -s

    def extra_repr(self) -> str:
        return f"bound={self.bound}" + (", shift_first=True" if self.shift_first else "")
