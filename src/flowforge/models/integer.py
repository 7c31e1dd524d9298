r"""Integer discrete flows: ``IDF`` (Hoogeboom et al., 2019, with IDF++'s ReZero gates), a flow
that maps integer data to an integer latent and scores it with an exact discrete likelihood.

The layers are :class:`~flowforge.transforms.IntegerCoupling` (rounded additive couplings) and
permutations; the prior is a :class:`~flowforge.transforms.DiscretizedLogisticMixture`. There
is no dequantization: :class:`IntegerFlow`'s ``log_prob`` of data in ``{0, ..., levels - 1}`` is
the log of a probability mass, so its NLL is a code length that :mod:`flowforge.codec` turns
into a file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import Compose, Distribution, Flow, Transform, exact_levels
from ..nets import MLP, ConvResNet
from ..transforms import FactorOut, Squeeze, half_mask
from ..transforms.integer import DiscretizedLogisticMixture, IntegerCoupling
from .assembly import MaskTurns, channels, count, event_shape, widths
from .image import default_scales
from .registry import register

__all__ = ["IDF", "IntegerFlow"]


class IntegerFlow(Flow):
    r"""A :class:`~flowforge.Flow` of integer bijections over a discrete prior.

    ``log_prob(x)`` is the exact log-probability of integer data ``x`` in
    ``{0, ..., levels - 1}`` (anything else is a ``ValueError`` where the flow validates its
    inputs: ``validate_args``, by default on CPU tensors); ``sample`` returns integers,
    clamped to that range (the model can put mass outside it; ``clamped`` says how much of the
    last sample was).

    Args:
        transform: a transform built from integer-preserving layers.
        base: a discrete prior over the integers (e.g.
            :class:`~flowforge.transforms.DiscretizedLogisticMixture`).
        levels: the number of discrete data values.
    """

    def __init__(self, transform: Transform, base: Distribution, levels: int):
        super().__init__(transform, base)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"expected levels to be an integer >= 2, got {levels!r}")
        self.levels = levels

    def check(self, x: Tensor) -> None:
        """``ValueError`` unless ``x`` holds integers in ``[0, levels - 1]`` that the flow's
        dtype holds exactly."""
        exact_levels(self.levels, self.dtype)
        if x.numel() == 0:
            return
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > self.levels - 1:
            raise ValueError(
                f"expected integer data in [0, {self.levels - 1}] ({self.levels} levels), got "
                f"values in [{lo:g}, {hi:g}]"
            )
        if not torch.equal(x, torch.round(x)):
            raise ValueError(
                f"expected integer-valued data in [0, {self.levels - 1}], got non-integer values"
            )

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The exact log-probability (nats) of integer data ``x``; shape ``(*batch,)``.

        The flow's distribution is over all integer vectors (its prior's), of which
        ``{0, ..., levels - 1}^D`` holds most but not all: the probabilities of the values in
        range sum to less than 1 (0.36-0.94 in an audit, for binary 4x4 images the least), so
        an NLL here counts the mass outside the range as lost. That is what a code length
        pays; a model normalised on the range could score the same data lower."""
        raw = x
        x, context, batch = self._prepare(x, context)
        # the values as given: float64 2.000000001 would pass as 2 after the move to float32;
        # checked where the flow validates its inputs (validate_args; by default on CPU only,
        # since the check reads the values back to the host)
        if self._validating(x):
            self.check(raw if isinstance(raw, Tensor) and raw.is_floating_point() else x)
        with self._checks():  # (refuses float16 and bfloat16, as every flow does)
            if not x.shape[0]:
                return self._empty_log_prob(batch, x, context)
            z, _ = self.transform(x, context)  # integer layers: ladj == 0
            if self._validating(z):
                check_exact_latents(z, self.dtype)
            return self.base.log_prob(z, context).reshape(batch)

    @torch.no_grad()
    def sample(self, n, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """Samples of the integer flow, clamped to ``[0, levels - 1]``: the model can put mass
        outside the data's range (its NLL counts only the mass inside), and the fraction of
        values that fell outside is left in ``clamped`` (``flowforge sample`` prints it)."""
        exact_levels(self.levels, self.dtype)  # as log_prob: samples the dtype cannot hold
        x = super().sample(n, context, temperature)
        outside = (x < 0) | (x > self.levels - 1)
        self.clamped = outside.float().mean() if x.numel() else 0.0
        return x.clamp_(0, self.levels - 1).add_(0.0)  # (+ 0: no -0.0 from rounding)

    @torch.no_grad()
    def sample_and_log_prob(self, n, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Samples as :meth:`sample` draws them (clamped to ``[0, levels - 1]``) and their
        exact log-probabilities, :meth:`log_prob` of the values returned (a clamped value's
        own, not the point the model drew beyond the range)."""
        x = self.sample(n, context)
        if context is not None:  # (one context row per sample, as sample paired them)
            lead = x.shape[: x.dim() - len(self.event_shape)]
            context = context.expand(*lead, context.shape[-1])
        return x, self.log_prob(x, context)

    def rsample(self, n, context: Tensor | None = None) -> Tensor:
        """Refused: an integer flow's samples are rounded, so no gradient reaches them."""
        raise ValueError(
            "an integer flow's samples are integers (rounded at every coupling): no gradient "
            "reaches them, so they cannot be reparameterised; draw them with sample() (or "
            "sample_and_log_prob())"
        )

    def rsample_and_log_prob(self, n, context: Tensor | None = None):
        """Refused, as :meth:`rsample`."""
        return self.rsample(n, context)

    def bits_per_dim(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The exact NLL in bits per dimension."""
        return self.nll(x, context) / (self.dims * math.log(2))


def check_exact_latents(z: Tensor, dtype: torch.dtype) -> None:
    """A ``ValueError`` when an integer flow's latents leave the integers ``dtype`` holds
    exactly (2^24 in float32, 2^53 in float64): there its rounded couplings merge distinct
    inputs, so the map is no longer a bijection and its probabilities are not a mass
    function's."""
    top = z.detach().abs().max().item() if z.numel() else 0.0
    bits = round(-math.log2(torch.finfo(dtype).eps)) + 1
    if top > 2**bits:
        raise ValueError(
            f"the integer flow's latents reach {top:.3g}, beyond the integers {dtype} holds "
            f"exactly (2^{bits}): its couplings no longer invert there; use fewer levels, or "
            "float64 (flow.double()) below 2^53"
        )


def _quarter_masks(features: int, partitions: int) -> list[Tensor]:
    """``partitions`` masks, each True everywhere but one contiguous part of the features."""
    bounds = [round(i * features / partitions) for i in range(partitions + 1)]
    masks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m = torch.ones(features, dtype=torch.bool)
        m[lo:hi] = False
        masks.append(m)
    return masks


@register(inputs=("features", "shape"), depth="layers", width="hidden")
def IDF(
    features: int | None = None,
    shape: Sequence[int] | None = None,
    levels: int | None = None,
    layers: int = 8,
    hidden: Sequence[int] | int | None = None,
    partitions: int | None = None,
    permutation: str | None = "random",
    rezero: bool = True,
    components: int = 5,
    prior_blocks: int = 1,
    prior_hidden: Sequence[int] | int = (256, 256),
    scales: int | None = None,
    blocks: int = 1,
    activation: str = "leaky_relu",
    context_features: int = 0,
    alternate: bool | None = None,
) -> IntegerFlow:
    r"""An integer discrete flow (IDF) for data in ``{0, ..., levels - 1}``: exact likelihood.

    Vectors (``features=``): ``layers`` rounded additive couplings; coupling ``i`` shifts part
    ``i mod partitions`` of the features by ``round(levels * MLP(other parts))`` (IDF's
    "quarter" coupling with ``partitions=4``, a half coupling with 2), with a mixing
    permutation between couplings. Images (``shape=(C, H, W)``): per scale a squeeze, then
    ``layers`` channel couplings with a :class:`~flowforge.nets.ConvResNet` conditioner and
    channel permutations, then a factor-out of half the channels (the last scale keeps all).

    The prior is a mixture of ``components`` discretized logistics per latent entry. With
    ``prior_blocks > 1`` (vectors) the latent is cut into that many blocks, each conditioned
    on the later ones; on images every factored-out half is conditioned on the deeper
    latents (IDF's conditional split prior).

    Args:
        features: data dimension (at least 2), or
        shape: image shape ``(C, H, W)``.
        levels: number of discrete values (required: 17 for digits, 256 for 8-bit images).
        layers: couplings (vectors), or couplings per scale (images).
        hidden: the couplings' MLP widths (vectors, default (256, 256)); the conv
            conditioner's channels (images, an int, default 64).
        partitions: vectors: how many parts the features are cut into (2: half couplings;
            None: ``min(4, features)``, IDF's quarter coupling where there are 4 features or
            more).
        permutation: between couplings: ``"random"`` (saved), ``"reverse"`` or None.
        rezero: gate every translation with a scalar that starts at 0 (IDF++).
        components: logistic components per latent entry.
        prior_blocks: vectors: blocks of the conditional prior (1: a factorised prior).
        prior_hidden: the conditional prior's MLP widths.
        scales: images: number of scales (default: as many as the size allows, up to 3).
        blocks: images: residual blocks of each conv conditioner (0: conv, act, conv).
        activation: the networks' activation.
        context_features: size of a conditioning vector (0: unconditional).
        alternate: whether the parts (vectors) or channel halves (images) the couplings shift
            take turns (see :class:`~flowforge.models.assembly.MaskTurns`): None (default) in
            the data's own order, so that every feature is shifted by some coupling whatever
            the permutations; True: in each coupling's own coordinates, as before 2026-12-07,
            when a ``"reverse"`` permutation undid the turns and a random one could leave a
            feature that no coupling shifted (the models saved then rebuild so); False: never.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.IDF(features=8, levels=17, layers=2, hidden=(16,))
        >>> x = torch.randint(0, 17, (5, 8)).float()
        >>> flow.log_prob(x).shape
        torch.Size([5])
    """
    if levels is None:
        raise ValueError(
            "IDF models integer data and needs levels= (the number of discrete values, e.g. "
            "17 for digits, 256 for 8-bit images)"
        )
    if isinstance(levels, bool) or levels < 2:
        raise ValueError(f"expected levels to be an integer >= 2, got {levels!r}")
    if permutation not in ("random", "reverse", None):
        raise ValueError(
            f"unknown permutation {permutation!r}; expected 'random', 'reverse' or None"
        )
    for name, v, least in (
        ("layers", layers, 1),
        ("components", components, 1),
        ("blocks", blocks, 0),
    ):
        if v < least:
            raise ValueError(f"expected {name} >= {least}, got {v!r}")
    center, spread = (levels - 1) / 2, float(levels)
    shape_ = event_shape(features, shape)
    if isinstance(context_features, bool) or not isinstance(context_features, int):
        raise ValueError(
            f"expected context_features to be an integer >= 0, got {context_features!r}"
        )
    if context_features < 0:
        raise ValueError(f"expected context_features to be an integer >= 0, got {context_features}")
    cf = context_features
    chain: list[Transform] = []
    if len(shape_) == 1:
        (d,) = shape_
        if d < 2:
            raise ValueError(
                f"an IDF on vectors needs at least 2 features (columns), got {d}: its couplings "
                "shift one part of the features by a function of the others"
            )
        partitions = min(4, d) if partitions is None else partitions
        if not 2 <= partitions <= d:
            raise ValueError(f"expected 2 <= partitions <= features ({d}), got {partitions}")
        if not 1 <= prior_blocks <= d:
            raise ValueError(f"expected 1 <= prior_blocks <= features ({d}), got {prior_blocks}")
        h = widths((256, 256) if hidden is None else hidden)
        turns = MaskTurns(_quarter_masks(d, partitions), alternate, permutation, d)
        for _ in range(count("layers", layers)):
            mixing, m = turns()
            chain += mixing
            chain.append(
                IntegerCoupling(
                    m,
                    lambda a, b: MLP(a, b, h, cf, activation, zero_init=not rezero),
                    center,
                    spread,
                    cf,
                    rezero,
                )
            )
        bounds = [round(i * d / prior_blocks) for i in range(prior_blocks + 1)]
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        transform = Compose(*chain)
    else:
        if prior_blocks != 1:
            raise ValueError("prior_blocks is for vectors; images condition each factored half")
        width = 64 if hidden is None else channels(hidden)
        n_scales = default_scales(shape_) if scales is None else scales
        if n_scales < 1:
            raise ValueError(f"expected scales >= 1, got {n_scales}")
        transform, sizes = _image_chain(
            shape_,
            n_scales,
            layers,
            width,
            blocks,
            permutation,
            rezero,
            activation,
            cf,
            center,
            spread,
            alternate,
        )
    prior = DiscretizedLogisticMixture(
        transform.output_shape, components, sizes, cf, widths(prior_hidden), center, spread
    )
    return IntegerFlow(transform, prior, levels)


def _image_chain(
    shape, scales, steps, width, blocks, permutation, rezero, act, cf, center, spread, alternate
):
    """The multi-scale chain and the prior's block sizes (factored halves first, deepest last)."""
    c, h, w = shape
    if h % 2 or w % 2:
        raise ValueError(
            f"IDF squeezes its images at least once and needs an even height and width, got "
            f"shape {tuple(shape)}: pad or crop the images to an even size"
        )
    if h % 2**scales or w % 2**scales:
        raise ValueError(
            f"{scales} scales squeeze {scales} times and need H and W divisible by "
            f"{2**scales}, got shape {tuple(shape)}"
        )

    def scale(i: int, shp) -> tuple[Transform, list[int]]:
        sq = Squeeze(shp)
        s = sq.output_shape
        layers: list[Transform] = [sq]
        options = [half_mask(s[0], f) for f in (False, True)]
        turns = MaskTurns(options, alternate, permutation, s)
        for _ in range(steps):
            mixing, m = turns()
            layers += mixing
            layers.append(
                IntegerCoupling(
                    m.reshape(-1, 1, 1).expand(s).clone(),
                    lambda a, b: ConvResNet(a, b, width, blocks, cf, act, zero_init=not rezero),
                    center,
                    spread,
                    cf,
                    rezero,
                )
            )
        if i == scales - 1:
            return Compose(*layers), [math.prod(s)]
        kept = (s[0] + 1) // 2
        inner, sizes = scale(i + 1, (kept, s[1], s[2]))
        out = FactorOut(s, inner)
        return Compose(*layers, out), [(s[0] - kept) * s[1] * s[2], *sizes]

    return scale(0, tuple(shape))
