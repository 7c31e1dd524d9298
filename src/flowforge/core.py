r"""The core contract: :class:`Transform`, :class:`Compose`, :class:`Inverse` and :class:`Flow`.

Direction
---------
``forward`` is the *normalizing* direction, data to noise. A transform ``t`` maps

    ``z, ladj = t(x, context)``   with ``ladj = log|det dz/dx|``, shape ``(batch,)``
    ``x, ladj = t.inverse(z, context)`` with ``ladj = log|det dx/dz|``

so ``t.inverse(t(x)[0])[1] == -t(x)[1]``. A flow scores data with the change of variables

    ``log p(x) = log p_z(t(x)) + log|det dt/dx|``

and samples by pushing base noise through ``t.inverse``.

Shapes
------
``x`` is ``(batch, *event_shape)``; the event shape is fixed when the layer is built
(``(D,)`` for vectors, ``(C, H, W)`` for images). ``context`` is ``(batch, context_features)``
or ``None``. A layer may change the event shape (``Squeeze``, multi-scale factor-out); it then
reports ``output_shape``. Layers with ``context_features == 0`` ignore a context they are given;
the :class:`Flow` is where a stray or a missing context is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Transform", "Compose", "Inverse", "Flow", "check_shape"]


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_shape(x: Tensor, event_shape: Sequence[int], what: str = "input") -> None:
    """Raise a ``ValueError`` unless ``x`` has shape ``(batch, *event_shape)``."""
    event_shape = tuple(event_shape)
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {what} to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != event_shape:
        raise ValueError(
            f"expected {what} of shape (batch, {', '.join(map(str, event_shape))}), "
            f"got {_fmt(x.shape)}"
        )


class Transform(nn.Module):
    r"""An invertible map with a tractable log-determinant.

    Subclasses implement ``_forward(x, context)`` (data to noise) and
    ``_inverse(z, context)`` (noise to data), each returning ``(output, ladj)`` with ``ladj`` of
    shape ``(batch,)``. The public :meth:`forward` and :meth:`inverse` check the input's shape
    once and call them.

    Args:
        event_shape: shape of one input example, e.g. ``(D,)`` or ``(C, H, W)``.
        context_features: size of the context vector the layer reads, 0 if it reads none.
        output_shape: shape of one output example, if it differs from ``event_shape``.

    Class attributes:
        numeric_inverse: ``None`` for an exact inverse, else the tolerance a numerical inverse
            reaches (the generic test checks it at that tolerance).
    """

    numeric_inverse: float | None = None

    def __init__(
        self,
        event_shape: Sequence[int],
        context_features: int = 0,
        output_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.output_shape = self.event_shape if output_shape is None else tuple(output_shape)
        self.context_features = int(context_features)

    # -- public boundary ---------------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to noise: returns ``(z, log|det dz/dx|)``."""
        check_shape(x, self.event_shape, f"{type(self).__name__} input")
        self._check_context(context, x.shape[0])
        return self._forward(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise to data: returns ``(x, log|det dx/dz|)``."""
        check_shape(z, self.output_shape, f"{type(self).__name__}.inverse input")
        self._check_context(context, z.shape[0])
        return self._inverse(z, context)

    def _check_context(self, context: Tensor | None, batch: int) -> None:
        if self.context_features == 0:
            return
        if context is None:
            raise ValueError(
                f"{type(self).__name__} is conditional and expects a context of shape "
                f"(batch, {self.context_features}), got None"
            )
        if context.dim() != 2 or context.shape[1] != self.context_features:
            raise ValueError(
                f"expected context of shape (batch, {self.context_features}), "
                f"got {_fmt(context.shape)}"
            )
        if context.shape[0] != batch:
            raise ValueError(
                f"context batch size {context.shape[0]} does not match input batch size {batch}"
            )

    # -- to implement ------------------------------------------------------------------------
    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = f"event_shape={self.event_shape}"
        if self.output_shape != self.event_shape:
            s += f", output_shape={self.output_shape}"
        if self.context_features:
            s += f", context_features={self.context_features}"
        return s


class Compose(Transform):
    """Layers applied in reading order: ``Compose(a, b)(x) == b(a(x))``; ladjs add up.

    Neighbouring shapes are checked when the chain is built.

    Example:
        >>> import flowforge as ff
        >>> t = ff.Compose(ff.transforms.Reverse(3), ff.transforms.Scaling(3))
        >>> z, ladj = t(torch.randn(5, 3))
        >>> z.shape, ladj.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    def __init__(self, *layers: Transform):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Compose needs at least one layer")
        for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
            if a.output_shape != b.event_shape:
                raise ValueError(
                    f"layer {i} ({type(a).__name__}) outputs shape {a.output_shape} but layer "
                    f"{i + 1} ({type(b).__name__}) expects {b.event_shape}"
                )
        context = max(layer.context_features for layer in layers)
        for i, layer in enumerate(layers):
            if layer.context_features not in (0, context):
                raise ValueError(
                    f"layer {i} ({type(layer).__name__}) reads {layer.context_features} context "
                    f"features, but another layer reads {context}"
                )
        super().__init__(layers[0].event_shape, context, layers[-1].output_shape)
        self.layers = nn.ModuleList(layers)
        # numerical inverses (CNF) compound: the chain is as accurate as their summed tolerances
        tols = [layer.numeric_inverse for layer in layers if layer.numeric_inverse]
        self.numeric_inverse = sum(tols) if tols else None

    def _forward(self, x, context):
        ladj = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, l = layer(x, context)
            ladj = ladj + l
        return x, ladj

    def _inverse(self, z, context):
        ladj = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, l = layer.inverse(z, context)
            ladj = ladj + l
        return z, ladj

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def extra_repr(self) -> str:
        return ""


class Inverse(Transform):
    """Swaps the directions of a transform (an IAF is an inverted MAF)."""

    def __init__(self, transform: Transform):
        super().__init__(transform.output_shape, transform.context_features, transform.event_shape)
        self.transform = transform
        self.numeric_inverse = transform.numeric_inverse

    def _forward(self, x, context):
        return self.transform.inverse(x, context)

    def _inverse(self, z, context):
        return self.transform(z, context)

    def extra_repr(self) -> str:
        return ""


class Flow(nn.Module):
    r"""A base distribution pushed through an invertible transform.

    ``log_prob(x) = base.log_prob(transform(x)) + log|det d transform / dx|``. With a
    ``dequantizer`` the flow models discrete data: ``log_prob`` adds dequantization noise and
    returns the variational bound ``log p(x + u) - log q(u | x)`` on the discrete log-likelihood,
    in the data's own units, and ``sample`` returns values on the data's grid.

    Args:
        transform: data-to-noise :class:`Transform`.
        base: a base distribution over ``transform.output_shape`` (see
            :mod:`flowforge.distributions`).
        dequantizer: optional, e.g. :class:`~flowforge.transforms.UniformDequantization`.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.RealNVP(features=4, layers=2, hidden=(16,))
        >>> flow.log_prob(torch.randn(8, 4)).shape
        torch.Size([8])
        >>> flow.sample(3).shape
        torch.Size([3, 4])
    """

    def __init__(self, transform: Transform, base: nn.Module, dequantizer: nn.Module | None = None):
        super().__init__()
        if tuple(base.event_shape) != transform.output_shape:
            raise ValueError(
                f"the base is over shape {tuple(base.event_shape)} but the transform outputs "
                f"{transform.output_shape}"
            )
        cf = {transform.context_features, getattr(base, "context_features", 0)} - {0}
        if dequantizer is not None:
            cf |= {getattr(dequantizer, "context_features", 0)} - {0}
        if len(cf) > 1:
            raise ValueError(f"transform and base read different context sizes: {sorted(cf)}")
        self.transform = transform
        self.base = base
        self.dequantizer = dequantizer
        self.context_features = cf.pop() if cf else 0
        self.event_shape = transform.event_shape
        self.config: dict | None = None  # set by the builders in flowforge.models; used by ff.save

    # -- checks ------------------------------------------------------------------------------
    def _prepare(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None, tuple]:
        """Validate ``x`` and ``context``; flatten any batch shape to one dimension."""
        if not isinstance(x, Tensor):
            raise TypeError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
        k = len(self.event_shape)
        if x.dim() < k + 1 or tuple(x.shape[x.dim() - k :]) != self.event_shape:
            raise ValueError(
                f"expected x of shape (*batch, {', '.join(map(str, self.event_shape))}), "
                f"got {_fmt(x.shape)}"
            )
        batch = tuple(x.shape[: x.dim() - k])
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).reshape(*batch, -1).any(-1).nonzero()[:5].tolist()
            raise ValueError(f"x contains NaN or inf (first bad batch indices: {bad})")
        x = x.reshape(-1, *self.event_shape)
        context = self._check_context(context, batch)
        return x, context, batch

    def _check_context(self, context: Tensor | None, batch: tuple) -> Tensor | None:
        c = self.context_features
        if c == 0:
            if context is not None:
                raise ValueError(
                    "this flow is unconditional (context_features=0) but a context was given"
                )
            return None
        if context is None:
            raise ValueError(
                f"this flow is conditional and expects a context of shape (*batch, {c}), got None"
            )
        if context.shape[-1:] != (c,) or (batch and tuple(context.shape[:-1]) != batch):
            want = ", ".join(map(str, (*batch, c))) if batch else f"batch, {c}"
            raise ValueError(f"expected context of shape ({want}), got {_fmt(context.shape)}")
        if not torch.isfinite(context).all():
            raise ValueError("context contains NaN or inf")
        return context.reshape(-1, c)

    # -- density -----------------------------------------------------------------------------
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``x`` of shape ``(*batch, *event_shape)``; returns ``(*batch,)``.

        With a dequantizer, a one-sample bound on the discrete log-likelihood.
        """
        x, context, batch = self._prepare(x, context)
        log_q = 0.0
        if self.dequantizer is not None:
            x, log_q = self.dequantizer(x, context)
        z, ladj = self.transform(x, context)
        return (self.base.log_prob(z, context) + ladj - log_q).reshape(batch)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob`, so DDP and hooks see a module call."""
        return self.log_prob(x, context)

    # -- sampling ----------------------------------------------------------------------------
    def _sample_context(self, n: int, context: Tensor | None) -> tuple[Tensor | None, tuple]:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"expected a number of samples n >= 0, got {n!r}")
        if context is None:
            self._check_context(None, ())
            return None, (n,)
        if context.dim() == 1:
            context = context.unsqueeze(0)
            squeeze = True
        else:
            squeeze = False
        context = self._check_context(context, tuple(context.shape[:-1]))
        b = context.shape[0]
        ctx = context.unsqueeze(0).expand(n, b, -1).reshape(n * b, -1)
        return ctx, ((n,) if squeeze else (n, b))

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """Draw ``n`` samples.

        Returns ``(n, *event_shape)``. With a context of shape ``(B, c)``, returns
        ``(n, B, *event_shape)``: ``n`` samples for each context row, drawn in one vectorised
        call. A context of shape ``(c,)`` gives ``(n, *event_shape)``. ``temperature`` scales
        the base noise (Glow's "temperature").
        """
        ctx, shape = self._sample_context(n, context)
        z = self.base.sample(math.prod(shape), ctx, temperature=temperature)
        x, _ = self.transform.inverse(z, ctx)
        if self.dequantizer is not None:
            x = self.dequantizer.quantize(x)
        return x.reshape(*shape, *self.event_shape)

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Differentiable samples and their log-density, for reverse-KL / variational inference.

        Returns ``(x, log_q)`` with shapes ``(n, *event_shape)`` and ``(n,)`` (``(n, B, ...)``
        and ``(n, B)`` with a ``(B, c)`` context). Ignores any dequantizer: the samples are
        continuous.
        """
        ctx, shape = self._sample_context(n, context)
        z, log_pz = self.base.rsample_and_log_prob(math.prod(shape), ctx)
        x, ladj = self.transform.inverse(z, ctx)
        return x.reshape(*shape, *self.event_shape), (log_pz - ladj).reshape(shape)

    # -- metrics -----------------------------------------------------------------------------
    @property
    def dims(self) -> int:
        return math.prod(self.event_shape)

    def nll(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood in nats per example."""
        return -self.log_prob(x, context).mean()

    def bits_per_dim(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean NLL in bits per dimension (needs a dequantizer, i.e. discrete data)."""
        if self.dequantizer is None:
            raise ValueError(
                "bits/dim is defined for discrete data: build the flow with levels=..., "
                "or use ff.bits_per_dim(flow, x, levels=...)"
            )
        return self.nll(x, context) / (self.dims * math.log(2))
