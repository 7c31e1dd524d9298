r"""One coupling layer for every coupling flow, and the masks it splits with.

``Coupling(mask, conditioner, transformer)`` leaves the entries where ``mask`` is True
unchanged and transforms the others elementwise, with parameters computed from the unchanged
part (and the context):

    ``z[~m] = transformer(x[~m]; conditioner(x[m], context))``,  ``z[m] = x[m]``

NICE is ``Coupling`` with :class:`~flowforge.transforms.Additive`, RealNVP with
:class:`~flowforge.transforms.Affine`; the rational-quadratic spline plugs in the same way.

Two ways to split, chosen from the mask:

- a mask that is constant over every event dimension but the first (vectors; channel masks on
  images) splits by indexing dimension 1: the conditioner sees only the kept entries and
  outputs parameters only for the transformed ones;
- any other mask (checkerboard) is applied by multiplication: the conditioner sees ``x * mask``
  at full size and the layer keeps the masked entries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._util import checked_int
from .._util import event_shape as _event
from ..core import Transform, Transformer, checked_transformer
from ..nets import GROUPED_FROM

__all__ = [
    "Coupling",
    "half_mask",
    "alternating_mask",
    "checkerboard_mask",
    "channel_mask",
]


def half_mask(features: int, flip: bool = False) -> Tensor:
    """``[True] * ceil(n/2) + [False] * floor(n/2)``, or its complement with ``flip``."""
    features = checked_int("features", features)
    m = torch.arange(features) < (features + 1) // 2
    return ~m if flip else m


def alternating_mask(features: int, flip: bool = False) -> Tensor:
    """True at even indices (odd indices with ``flip``)."""
    m = torch.arange(checked_int("features", features)) % 2 == 0
    return ~m if flip else m


def checkerboard_mask(shape: tuple[int, int, int], flip: bool = False) -> Tensor:
    """RealNVP's spatial checkerboard over ``(C, H, W)``: True where ``(h + w)`` is even."""
    c, h, w = _event(shape, image=True)
    m = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
    m = m.expand(c, h, w).clone()
    return ~m if flip else m


def channel_mask(shape: tuple[int, ...], flip: bool = False) -> Tensor:
    """True on the first half of the channels (dimension 0 of ``shape``)."""
    shape = _event(shape)
    m = half_mask(shape[0], flip)
    return m.reshape(-1, *[1] * (len(shape) - 1)).expand(shape).clone()


def _as_range(idx: Tensor) -> tuple[int, int] | None:
    """``(start, length)`` if ``idx`` is a run of consecutive integers."""
    n = idx.numel()
    if n and torch.equal(idx, torch.arange(int(idx[0]), int(idx[0]) + n)):
        return int(idx[0]), n
    return None


def _conditioner(factory, n_in: int, n_out: int) -> nn.Module:
    """``factory(n_in, n_out)``, checked: a module given in place of the factory, or a factory
    that returns no module, is a ``TypeError`` saying so (they failed deep in the first call)."""
    if isinstance(factory, nn.Module):
        raise TypeError(
            f"expected the conditioner as a factory (in_size, out_size) -> nn.Module, called "
            f"once per layer with its sizes, got the module {type(factory).__name__} itself: "
            "pass e.g. lambda i, o: MyNet(i, o)"
        )
    if not callable(factory):
        raise TypeError(
            "expected the conditioner as a factory (in_size, out_size) -> nn.Module, got "
            f"{type(factory).__name__}"
        )
    net = factory(n_in, n_out)
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"the conditioner factory returned {type(net).__name__} for sizes ({n_in}, "
            f"{n_out}); expected an nn.Module"
        )
    return net


def _takes_context(net: nn.Module) -> bool:
    """Whether ``net``'s forward takes a second positional argument (the context)."""
    import inspect

    try:
        params = list(inspect.signature(net.forward).parameters.values())
    except (TypeError, ValueError):  # (no signature to read: assume the documented contract)
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(q.kind is inspect.Parameter.VAR_POSITIONAL for q in params):
        return True
    return sum(q.kind in positional for q in params) >= 2


class Coupling(Transform):
    r"""A coupling layer: half the entries parametrise an elementwise map of the other half.

    Args:
        mask: bool tensor of the event shape; True marks the entries that pass through and
            condition the rest.
        conditioner: ``conditioner(in_size, out_size) -> nn.Module``, called once here. In the
            indexed split ``in_size``/``out_size`` count features (vectors) or channels
            (images); in the masked split both count channels. The module is called as
            ``net(x_kept, context)``, or ``net(x_kept)`` if its forward takes one argument
            (an ``nn.Sequential``; unconditional layers only).
        transformer: an elementwise transformer such as ``Affine()`` or ``Additive()``.
        context_features: size of the context the conditioner reads.
        rezero: multiply the parameters by a learnable gate that starts at 0 (ReZero), so the
            layer starts as the identity even when the conditioner's last layer is not zero.
        context_shape: the shape of one context if it is not a vector (an image for an image
            conditioner); ``context_features`` is then its first entry.

    A conditional coupling may keep nothing (an all-False mask): every entry is then
    transformed with parameters computed from the context alone.

    Example:
        >>> from flowforge.transforms import Coupling, Affine, half_mask
        >>> from flowforge.nets import MLP
        >>> layer = Coupling(half_mask(6), lambda i, o: MLP(i, o, (32,)), Affine())
        >>> z, ladj = layer(torch.randn(10, 6))
    """

    def __init__(
        self,
        mask: Tensor,
        conditioner: Callable[[int, int], nn.Module],
        transformer: Transformer,
        context_features: int = 0,
        rezero: bool = False,
        context_shape: tuple[int, ...] | None = None,
    ):
        mask = torch.as_tensor(mask, dtype=torch.bool)
        super().__init__(tuple(mask.shape), context_features, context_shape=context_shape)
        kept, moved = int(mask.sum()), int((~mask).sum())
        if moved == 0 or (kept == 0 and not self.context_features):
            raise ValueError(
                f"a coupling mask must keep at least one entry and transform at least one; "
                f"got {kept} kept and {moved} transformed for event shape {tuple(mask.shape)} "
                f"(a coupling layer needs at least 2 features)"
            )
        checked_transformer(transformer)
        self.transformer = transformer
        p = transformer.params_per_dim
        flat = mask.reshape(mask.shape[0], -1)
        self.indexed = bool((flat == flat[:, :1]).all())
        if self.indexed:
            rows = flat[:, 0]
            idx_a, idx_b = rows.nonzero().squeeze(1), (~rows).nonzero().squeeze(1)
            self.register_buffer("idx_a", idx_a, persistent=False)
            self.register_buffer("idx_b", idx_b, persistent=False)
            self.register_buffer(
                "merge", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False
            )
            self._range_a, self._range_b = _as_range(idx_a), _as_range(idx_b)
            self.net = _conditioner(conditioner, len(idx_a), len(idx_b) * p)
        else:
            self.register_buffer("mask", mask, persistent=False)
            self.net = _conditioner(conditioner, mask.shape[0], mask.shape[0] * p)
        # a module of x alone (an nn.Sequential) is called without the context
        self._reads_context = _takes_context(self.net)
        if self.context_features and not self._reads_context:
            raise TypeError(
                f"the conditioner {type(self.net).__name__} takes x alone, and this coupling is "
                f"conditional (context_features={self.context_features}): its forward must "
                "take (x, context)"
            )
        self.gate = nn.Parameter(torch.zeros(())) if rezero else None

    def __setstate__(self, state):  # (pickles from before the flag: nets took the context)
        state.setdefault("_reads_context", True)
        super().__setstate__(state)

    # -- split / merge -----------------------------------------------------------------------
    def _take(self, x: Tensor, idx: Tensor, rng) -> Tensor:
        return x.narrow(1, *rng) if rng is not None else x.index_select(1, idx)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ra, rb = self._range_a, self._range_b
        if ra is not None and rb is not None:  # two blocks: one split (its backward is one cat)
            if ra[0] == 0:
                return x.split([ra[1], rb[1]], 1)
            x_b, x_a = x.split([rb[1], ra[1]], 1)
            return x_a, x_b
        return self._take(x, self.idx_a, ra), self._take(x, self.idx_b, rb)

    def _merge(self, a: Tensor, b: Tensor) -> Tensor:
        if self._range_a is not None and self._range_b is not None:
            return torch.cat([a, b] if self._range_a[0] == 0 else [b, a], 1)
        return torch.cat([a, b], 1).index_select(1, self.merge)

    # A conditioner with ``forward_grouped(x, context, P)`` (MLP, ResidualMLP) returns vector
    # parameters with each parameter contiguous (nets.grouped_linear): the same numbers, cheaper
    # for the transformer to read when it has P >= nets.GROUPED_FROM of them. False: the plain
    # ``net(x)`` path (the bits-back coder's copy uses it, so files it wrote decode whatever the
    # matmul's rounding on the permuted rows).
    grouped_params = True

    def _params(self, x_a: Tensor, context: Tensor | None, n_out: int) -> Tensor:
        p = self.transformer.params_per_dim
        grouped = getattr(self.net, "forward_grouped", None)
        if callable(grouped) and self.grouped_params and p >= GROUPED_FROM and x_a.dim() == 2:
            params = grouped(x_a, context, p)
            return params if self.gate is None else params * self.gate
        h = self.net(x_a, context) if self._reads_context else self.net(x_a)
        if h.dim() < 2 or h.shape[0] != x_a.shape[0] or h.shape[1] != n_out * p:  # (shapes only)
            raise ValueError(
                f"{type(self.net).__name__}, the coupling's conditioner, returned shape "
                f"{tuple(h.shape)} for input {tuple(x_a.shape)}; expected "
                f"({x_a.shape[0]}, {n_out * p}{', ...' if x_a.dim() > 2 else ''}): "
                f"{n_out} transformed entries times the {p} parameters of "
                f"{type(self.transformer).__name__}"
            )
        if self.gate is not None:
            h = h * self.gate
        # (B, n*P, *rest) -> (B, n, *rest, P)
        return h.reshape(h.shape[0], n_out, p, *h.shape[2:]).movedim(2, -1)

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        law = self.transformer.inverse if inverse else self.transformer.forward
        if self.indexed:
            x_a, x_b = self._split(x)
            y_b, ladj = law(x_b, self._params(x_a, context, x_b.shape[1]))
            return self._merge(x_a, y_b), ladj.flatten(1).sum(1)
        m = self.mask.to(x.dtype)
        y, ladj = law(x, self._params(x * m, context, x.shape[1]))
        y = torch.where(self.mask, x, y)
        return y, (ladj * (1 - m)).flatten(1).sum(1)

    def _forward(self, x, context):
        return self._couple(x, context, inverse=False)

    def _inverse(self, z, context):
        return self._couple(z, context, inverse=True)

    def _recompute(self, z, context, replay):
        # the kept entries pass through unchanged, so the conditioner's one evaluation on them
        # gives the parameters of both the inverse (without a graph) and the recomputed forward
        replay()
        if self.indexed:
            a, z_b = self._split(z)
            a = a.detach().requires_grad_()
            params = self._params(a, context, z_b.shape[1])
            with torch.no_grad():
                x_b, _ = self.transformer.inverse(z_b, params)
            x = self._merge(a.detach(), x_b).requires_grad_()
            x_a, x_b = self._split(x)
            y_b, ladj = self.transformer.forward(x_b, params)
            out = self._merge(x_a, y_b)
            fold = lambda g: self._merge(g, torch.zeros_like(x_b))  # noqa: E731
            return x, out, ladj.flatten(1).sum(1), [(a, fold)]
        m = self.mask.to(z.dtype)
        a = (z * m).detach().requires_grad_()  # = x * m: the kept entries are equal
        params = self._params(a, context, z.shape[1])
        with torch.no_grad():
            x = torch.where(self.mask, z, self.transformer.inverse(z, params)[0])
        x = x.requires_grad_()
        y, ladj = self.transformer.forward(x, params)
        out = torch.where(self.mask, x, y)
        return x, out, (ladj * (1 - m)).flatten(1).sum(1), [(a, lambda g: g * m)]

    def extra_repr(self) -> str:
        split = "indexed" if self.indexed else "masked"
        return super().extra_repr() + f", split={split}, rezero={self.gate is not None}"
