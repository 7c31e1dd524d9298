r"""Image-specific bijections: space-to-depth squeezing and multi-scale factor-out.

Everything else an image flow needs is a vector layer that already acts on dimension 1 of any
event shape: :class:`~flowforge.transforms.Coupling` with
:func:`~flowforge.transforms.checkerboard_mask` or :func:`~flowforge.transforms.channel_mask`
(and a :class:`~flowforge.nets.ConvResNet` conditioner), :class:`~flowforge.transforms.LULinear`
(Glow's invertible 1x1 convolution), :class:`~flowforge.transforms.ActNorm` and
:class:`~flowforge.transforms.BatchNorm`.

Multi-scale architecture
------------------------
:class:`FactorOut` splits the channels of its input into a *kept* half and a *factored-out*
half, runs an inner transform (the rest of the flow: the next scales) on the kept half only, and
returns the flat concatenation ``[factored-out half, inner output]`` of shape ``(C*H*W,)``.
No latent is ever dropped, so ``inverse(forward(x)) == x`` and the flow's base is one standard
normal over the flat vector: sampling draws every scale's latent from it, and a temperature
scales all of them. Glow's learned split prior, ``p(z_out | z_kept) = N(mu, sigma)``, is written
as an affine bijection of the factored-out half conditioned on the kept half,
``(x_out - mu) / sigma`` with ``ladj = -sum(log sigma)``, so the base stays ``N(0, I)``; it is a
:class:`~flowforge.transforms.Coupling` with a channel mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core import Transform
from ..nets import ConvResNet
from ..reversible import Join, Split
from .coupling import Coupling, channel_mask
from .elementwise import Affine

__all__ = ["Squeeze", "FactorOut"]


def _image_shape(shape: Sequence[int], who: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{who} expects an image shape (C, H, W) with positive sizes, got {shape}")
    return shape


class Squeeze(Transform):
    r"""Space to depth: ``(C, H, W) -> (4C, H/2, W/2)``, each 2x2 block becomes 4 channels.

    Output channel ``4c + 2i + j`` holds input channel ``c`` at offset ``(i, j)`` of each 2x2
    block. A permutation of the entries, so ``ladj = 0``.

    Raises:
        ValueError: at build time unless ``shape`` is ``(C, H, W)`` with even ``H`` and ``W``.

    Example:
        >>> sq = Squeeze((1, 8, 8))
        >>> sq.output_shape
        (4, 4, 4)
    """

    def __init__(self, shape: Sequence[int]):
        c, h, w = _image_shape(shape, "Squeeze")
        if h % 2 or w % 2:
            raise ValueError(
                f"Squeeze needs an even height and width (it folds 2x2 blocks into channels), "
                f"got shape {(c, h, w)}"
            )
        super().__init__((c, h, w), output_shape=(4 * c, h // 2, w // 2))

    def _forward(self, x, context):
        b, (c, h, w) = x.shape[0], self.event_shape
        z = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(b, *self.output_shape), x.new_zeros(b)

    def _inverse(self, z, context):
        b, (c, h, w) = z.shape[0], self.event_shape
        x = z.reshape(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, h, w), z.new_zeros(b)


class FactorOut(Transform):
    r"""Multi-scale factor-out: half the channels leave the flow here, the rest go on.

    The input ``(C, H, W)`` is split by channel into ``kept`` (the first ``ceil(C/2)``
    channels) and ``out`` (the others). ``inner`` transforms ``kept``; ``out`` is optionally
    transformed by the learned split prior (an affine map conditioned on ``kept``). The output
    is the flat vector ``[out.flatten(), inner(kept).flatten()]`` of shape ``(C*H*W,)``, so
    every latent is kept and the layer is an exact bijection.

    Args:
        shape: input shape ``(C, H, W)``, ``C >= 2``.
        inner: the transform applied to the kept half, with event shape
            ``(ceil(C/2), H, W)`` and any output shape (it is flattened).
        prior: Glow's learned split prior. ``False``: none (RealNVP; ``out`` is modelled by the
            base directly); ``True``: a :class:`~flowforge.nets.ConvResNet` of the kept half
            (``hidden`` channels, ``blocks`` residual blocks) gives ``mu`` and
            ``log sigma``; or a conditioner factory ``(in, out) -> module(x, context)``.
        context_features: context size the prior's network reads (the inner transform declares
            its own; the two must agree when both are conditional).
        hidden, blocks: the default prior network's width and depth.
        scale_bound: the soft bound on the prior's log-scale (see
            :class:`~flowforge.transforms.Affine`).

    Raises:
        ValueError: at build time if ``C < 2`` or ``inner`` does not take the kept shape.

    Example:
        >>> from flowforge.transforms import ActNorm
        >>> layer = FactorOut((4, 4, 4), ActNorm((2, 4, 4)), prior=True)
        >>> layer.output_shape
        (64,)
    """

    def __init__(
        self,
        shape: Sequence[int],
        inner: Transform,
        prior: bool | Callable[[int, int], nn.Module] = False,
        context_features: int = 0,
        hidden: int = 32,
        blocks: int = 0,
        scale_bound: float | None = 3.0,
    ):
        c, h, w = _image_shape(shape, "FactorOut")
        if c < 2:
            raise ValueError(
                f"FactorOut splits channels in two and needs at least 2 channels, got shape "
                f"{(c, h, w)} (squeeze first)"
            )
        mask = channel_mask((c, h, w))
        k = int(mask[:, 0, 0].sum())
        if tuple(inner.event_shape) != (k, h, w):
            raise ValueError(
                f"FactorOut's inner transform must take the kept half of shape {(k, h, w)}, "
                f"but it expects {tuple(inner.event_shape)}"
            )
        if prior is True:

            def prior(i, o):
                return ConvResNet(i, o, hidden, blocks, context_features)

        net = None
        if prior is not False and prior is not None:
            net = Coupling(mask, prior, Affine(scale_bound), context_features)
        cf = {inner.context_features, context_features if net is not None else 0} - {0}
        if len(cf) > 1:
            raise ValueError(f"the inner transform and the prior read different contexts: {cf}")
        super().__init__((c, h, w), cf.pop() if cf else 0, (c * h * w,))
        self.kept = k
        self.inner = inner
        self.prior = net
        self._n_out = (c - k) * h * w

    def _forward(self, x, context):
        ladj = x.new_zeros(x.shape[0])
        if self.prior is not None:
            x, ladj = self.prior(x, context)
        kept, out = x[:, : self.kept], x[:, self.kept :]
        z, l_inner = self.inner(kept, context)
        return torch.cat(
            [out.reshape(x.shape[0], -1), z.reshape(x.shape[0], -1)], 1
        ), ladj + l_inner

    def reversible_ops(self) -> list:
        prior = [] if self.prior is None else self.prior.reversible_ops()
        return [*prior, Split(self), *self.inner.reversible_ops(), Join(self)]

    def _inverse(self, z, context):
        b = z.shape[0]
        c, h, w = self.event_shape
        out = z[:, : self._n_out].reshape(b, c - self.kept, h, w)
        z_inner = z[:, self._n_out :].reshape(b, *self.inner.output_shape)
        kept, ladj = self.inner.inverse(z_inner, context)
        x = torch.cat([kept, out], 1)
        if self.prior is not None:
            x, l_prior = self.prior.inverse(x, context)
            ladj = ladj + l_prior
        return x, ladj

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kept={self.kept}, prior={self.prior is not None}"
