r"""Integer discrete flows (Hoogeboom et al., 2019; IDF++, van den Berg et al., 2021): layers that
map integers to integers, and the discrete prior that scores the integer latent.

An :class:`IntegerCoupling` is an additive coupling whose translation is rounded to an integer,

    ``z_b = x_b + round(scale * t(x_a))``,  ``z_a = x_a``,

so it is a bijection of :math:`\mathbb{Z}^D` with no volume change (``ladj = 0``). Rounding has
no useful gradient, so training passes the gradient straight through it (:func:`round_ste`).
Permutations (:class:`~flowforge.transforms.Permutation`, ``Reverse``) and the multi-scale
:class:`~flowforge.transforms.Squeeze`/:class:`~flowforge.transforms.FactorOut` also map
integers to integers and mix freely with it.

:class:`DiscretizedLogisticMixture` is the prior: per dimension a mixture of ``K`` logistics
discretised to the integers,

    ``P(z) = sum_k pi_k [sigmoid((z + 1/2 - mu_k) / s_k) - sigmoid((z - 1/2 - mu_k) / s_k)]``,

which sums to exactly 1 over :math:`\mathbb{Z}` (the terms telescope). Its ``log_prob`` is an
exact log-*probability*, so a flow of integer layers over it has an exact discrete
log-likelihood, with no dequantization bound. With ``blocks``, the flat latent is cut into
consecutive blocks and each block's mixture parameters are predicted from all the blocks after
it (the last block is unconditional): this is IDF's learned conditional prior for the
factored-out parts (:class:`~flowforge.transforms.FactorOut` puts the factored-out latents
first and the deepest last).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import checked_int
from ..core import Distribution, Transformer
from ..nets import MLP
from .coupling import Coupling

__all__ = ["round_ste", "IntegerAdditive", "IntegerCoupling", "DiscretizedLogisticMixture"]


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` (half to even) in the forward pass, the identity's gradient backwards."""
    return x + (torch.round(x) - x).detach()


class IntegerAdditive(Transformer):
    r"""The rounded additive law ``z = x + round(scale * t)`` (``ladj = 0``); the identity at
    ``t = 0``. Integers stay integers in both directions.

    Args:
        scale: the translation's unit (the data range, so that a conditioner output of order
            one moves a value across the range).
    """

    params_per_dim = 1

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def _shift(self, params: Tensor) -> Tensor:
        return round_ste(self.scale * params[..., 0])

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + self._shift(params), torch.zeros_like(x)

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return z - self._shift(params), torch.zeros_like(z)

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}"


class IntegerCoupling(Coupling):
    r"""An additive coupling with rounded translations: a bijection of the integers.

    The conditioner sees the kept entries normalised, ``(x_a - center) / scale``, and its output
    is multiplied by ``scale`` before rounding, so with ``center``/``scale`` set to the middle
    and the width of the data range the network works at order one.

    Args:
        mask: bool tensor of the event shape; True marks the entries that pass through.
        conditioner: ``conditioner(in_size, out_size) -> nn.Module`` (see
            :class:`~flowforge.transforms.Coupling`).
        center, scale: the normalisation described above (``scale > 0``).
        context_features: size of the context the conditioner reads.
        rezero: gate the translation with a learnable scalar that starts at 0 (IDF++).

    Example:
        >>> from flowforge.transforms import IntegerCoupling, half_mask
        >>> from flowforge.nets import MLP
        >>> layer = IntegerCoupling(half_mask(4), lambda i, o: MLP(i, o, (16,)), 8.0, 17.0)
        >>> x = torch.randint(0, 17, (3, 4)).float()
        >>> torch.equal(layer.inverse(layer(x)[0])[0], x)
        True
    """

    def __init__(
        self,
        mask: Tensor,
        conditioner: Callable[[int, int], nn.Module],
        center: float = 0.0,
        scale: float = 1.0,
        context_features: int = 0,
        rezero: bool = False,
    ):
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"expected a finite scale > 0, got {scale!r}")
        if not (isinstance(center, (int, float)) and math.isfinite(center)):
            raise ValueError(f"expected a finite center, got {center!r}")
        super().__init__(mask, conditioner, IntegerAdditive(scale), context_features, rezero)
        self.center = float(center)

    def _params(self, x_a: Tensor, context: Tensor | None, n_out: int) -> Tensor:
        return super()._params((x_a - self.center) / self.transformer.scale, context, n_out)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", center={self.center!r}"


def _log_interval(z: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """``log(sigmoid(a) - sigmoid(b))`` with ``a = (z + 1/2 - loc) / s``, ``b = a - 1/s``,
    written as ``logsigmoid(a) + logsigmoid(-b) + log(1 - exp(-(a - b)))`` (no cancellation)."""
    inv = torch.exp(-log_scale)
    a = (z + 0.5 - loc) * inv
    b = (z - 0.5 - loc) * inv
    return F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-inv))


class DiscretizedLogisticMixture(Distribution):
    r"""A mixture of discretised logistics per dimension, over the integers.

    See the module docstring for the formula. Unconditional parameters are learned per
    dimension; with ``blocks``, block ``k``'s parameters add an MLP of the normalised later
    blocks (and the context) to them; with ``context_features``, every block reads the context.

    Args:
        event_shape: shape of one latent (an int for vectors).
        components: mixture components ``K`` per dimension.
        blocks: sizes of consecutive blocks of the flat latent (summing to its size), or None
            for one block. Block ``k`` is conditioned on blocks ``k+1, ...``.
        context_features: size of a context vector every block reads (0: none).
        hidden: widths of the conditional blocks' MLPs.
        center, spread: where the data lie (the middle and the width of their range): the
            initial means spread over ``center +- spread/2``, and the MLPs read
            ``(z - center) / spread``.

    Example:
        >>> prior = DiscretizedLogisticMixture(1, components=2)
        >>> z = torch.arange(-300.0, 301.0)[:, None]  # (601, 1): every value with mass
        >>> abs(prior.log_prob(z).exp().sum().item() - 1) < 1e-5
        True
    """

    has_rsample = False  # (its draws are rounded: no gradient rides on them)

    def __init__(
        self,
        event_shape,
        components: int = 5,
        blocks: Sequence[int] | None = None,
        context_features: int = 0,
        hidden: Sequence[int] = (256, 256),
        center: float = 0.0,
        spread: float = 8.0,
    ):
        super().__init__(event_shape, context_features)
        k = components
        checked_int("components", k)
        if not (math.isfinite(spread) and spread > 0):
            raise ValueError(f"expected a finite spread > 0, got {spread!r}")
        blocks = [self.features] if blocks is None else [int(b) for b in blocks]
        if min(blocks) < 1 or sum(blocks) != self.features:
            raise ValueError(
                f"expected block sizes >= 1 that sum to the latent's {self.features} entries, "
                f"got {list(blocks)}"
            )
        self.components = k
        self.blocks = tuple(blocks)
        self.center, self.spread = float(center), float(spread)
        d = self.features
        offsets = torch.linspace(-0.4, 0.4, k) if k > 1 else torch.zeros(1)
        self.loc = nn.Parameter(center + spread * offsets.repeat(d, 1))  # (D, K)
        self.log_scale = nn.Parameter(torch.full((d, k), math.log(spread / (4 * k))))
        self.logits = nn.Parameter(torch.zeros(d, k))
        starts = [sum(blocks[:i]) for i in range(len(blocks))]
        self._starts = tuple(starts)
        self.nets = nn.ModuleList()
        for i, size in enumerate(blocks):
            later = d - starts[i] - size
            if later or context_features:
                net = MLP(later, 3 * k * size, tuple(hidden), context_features, "relu")
            else:
                net = None
            self.nets.append(net if net is not None else nn.Identity())
        self._conditional = tuple(not isinstance(n, nn.Identity) for n in self.nets)

    # -- parameters ----------------------------------------------------------------------------
    def block_slice(self, i: int) -> slice:
        """The flat entries of block ``i``."""
        return slice(self._starts[i], self._starts[i] + self.blocks[i])

    def block_params(
        self, i: int, z: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(log_weights, loc, log_scale)`` of block ``i``, each ``(n, size, K)``; ``z`` is the
        flat latent ``(n, D)``, of which only the entries after block ``i`` are read."""
        n, s = z.shape[0], self.block_slice(i)
        size, k = self.blocks[i], self.components
        loc = self.loc[s].expand(n, -1, -1)
        log_scale = self.log_scale[s].expand(n, -1, -1)
        logits = self.logits[s].expand(n, -1, -1)
        if self._conditional[i]:
            later = (z[:, s.stop :] - self.center) / self.spread
            h = self.nets[i](later, context).reshape(n, size, 3, k)
            loc = loc + self.spread * h[:, :, 0]
            log_scale = log_scale + h[:, :, 1]
            logits = logits + h[:, :, 2]
        return torch.log_softmax(logits, -1), loc, log_scale.clamp(min=-7.0)

    @staticmethod
    def log_pmf(z: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """The elementwise log-probability of integers ``z`` of shape ``(n, size)``."""
        log_w, loc, log_scale = params
        return torch.logsumexp(log_w + _log_interval(z.unsqueeze(-1), loc, log_scale), -1)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        z = z.reshape(z.shape[0], -1)
        total = z.new_zeros(z.shape[0])
        for i in range(len(self.blocks)):
            params = self.block_params(i, z, context)
            total = total + self.log_pmf(z[:, self.block_slice(i)], params).sum(-1)
        return total

    def _sample(self, n, context, temperature):
        a = self._anchor
        z = torch.zeros(n, self.features, device=a.device, dtype=a.dtype)
        for i in reversed(range(len(self.blocks))):
            log_w, loc, log_scale = self.block_params(i, z, context)
            # (validate_args=False: torch's own argument check would read the logits back)
            pick = torch.distributions.Categorical(logits=log_w, validate_args=False).sample()
            loc = loc.gather(-1, pick[..., None])[..., 0]
            scale = log_scale.gather(-1, pick[..., None])[..., 0].exp()
            u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
            z[:, self.block_slice(i)] = torch.round(loc + temperature * scale * torch.logit(u))
        return z.reshape(n, *self.event_shape)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", components={self.components}, blocks={self.blocks}, center={self.center!r}, "
            f"spread={self.spread!r}"
        )
