r"""Preprocessing that counts: fixed rescalings whose log-determinant is part of every reported
likelihood.

:class:`Logit` (RealNVP), :class:`Standardize` and :class:`Bounded` (a positive or bounded
column onto the real line) are ordinary transforms placed first in the chain, so their
``ladj`` lands in ``log_prob`` and the units stay those of the raw data (the dequantizers
are in :mod:`flowforge.transforms.dequantization`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._util import checked_int, warn
from .._util import event_shape as _event
from ..core import DataInit, Transform, checking

__all__ = ["Logit", "Standardize", "DataStandardize", "Bounded", "Whiten", "ContextStandardize"]


class Logit(Transform):
    r"""RealNVP's logit preprocessing: ``y = logit(alpha + (1 - 2 alpha) x / levels)``.

    Maps ``x`` in ``(0, levels)`` (dequantized data) to the real line. ``alpha`` keeps the logit
    away from the boundaries (0.05 in RealNVP).
    """

    def __init__(self, shape, levels: float = 1.0, alpha: float = 0.05):
        super().__init__(_event(shape))
        if not 0 <= alpha < 0.5:
            raise ValueError(f"expected 0 <= alpha < 0.5, got {alpha}")
        if not 0 < levels < math.inf:
            raise ValueError(f"expected levels > 0 (finite), got {levels}")
        self.levels, self.alpha = float(levels), float(alpha)
        self._const = math.log(1 - 2 * alpha) - math.log(self.levels)

    def _forward(self, x, context):
        p = self.alpha + (1 - 2 * self.alpha) * x / self.levels
        y = torch.log(p) - torch.log1p(-p)
        ladj = self._const - torch.log(p) - torch.log1p(-p)
        return y, ladj.flatten(1).sum(1)

    def _inverse(self, y, context):
        p = torch.sigmoid(y)
        x = (p - self.alpha) / (1 - 2 * self.alpha) * self.levels
        # log p + log(1 - p) = -softplus(-y) - softplus(y)
        ladj = -F.softplus(-y) - F.softplus(y) - self._const
        return x, ladj.flatten(1).sum(1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", levels={self.levels:g}, alpha={self.alpha}"


def _check_standardization(loc: Tensor, scale: Tensor, prefix: str) -> None:
    """A ``ValueError`` unless ``loc`` is finite and ``scale`` finite and positive (a scale
    of 0 makes every sample the same value; ``prefix``: the tensor names of a loaded file)."""
    if not torch.isfinite(loc).all():
        raise ValueError(f"expected a finite {prefix}loc, got NaN or inf")
    if not (torch.isfinite(scale) & (scale > 0)).all():
        raise ValueError(f"expected every {prefix}scale finite and > 0")


class Standardize(Transform):
    r"""A fixed affine map ``z = (x - loc) / scale`` (e.g. training-set statistics).

    ``loc`` and ``scale`` are saved buffers, broadcast against the event shape.
    """

    def __init__(self, shape, loc: Tensor | float = 0.0, scale: Tensor | float = 1.0):
        super().__init__(_event(shape))
        loc = torch.as_tensor(loc, dtype=torch.get_default_dtype())
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype())
        try:
            loc, scale = loc.expand(self.event_shape), scale.expand(self.event_shape)
        except RuntimeError:
            raise ValueError(
                f"expected loc and scale of the event's shape {self.event_shape} (or scalars), "
                f"got {tuple(loc.shape)} and {tuple(scale.shape)}"
            ) from None
        _check_standardization(loc, scale, "")
        # (contiguous: an expanded scalar of one entry keeps its stride 0 through clone())
        self.register_buffer("loc", loc.clone(memory_format=torch.contiguous_format))
        self.register_buffer("scale", scale.clone(memory_format=torch.contiguous_format))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        _check_standardization(self.loc, self.scale, prefix)

    def _forward(self, x, context):
        return (x - self.loc) / self.scale, (-self.scale.log().sum()).expand(x.shape[0])

    def _inverse(self, z, context):
        return z * self.scale + self.loc, self.scale.log().sum().expand(z.shape[0])


class DataStandardize(DataInit, Transform):
    r"""``z = (x - loc) / scale`` with ``loc`` and ``scale`` taken from the first batch it sees
    in training mode (a :class:`~flowforge.core.DataInit` layer), fixed afterwards.

    The default first layer of the vector builders (``standardize=True``): a flow built with
    its defaults and trained on raw data of any moderate scale sees standardised data, as the
    workbench's models do, without the user computing statistics. Until it is initialised it is
    the identity. ``loc``, ``scale`` and ``initialized`` are saved buffers (a reloaded model
    never re-initialises). Statistics are per entry of the event; an entry that does not vary in
    the first batch keeps ``scale = 1``; a batch of one example leaves it waiting. ``eps``: the
    relative spread at or below which an entry counts as not varying, as a multiple of its mean
    in float32 (scaled by the dtype's rounding for another; default :attr:`EPS`, 4 float32
    rounding steps). Until 2026-12-06 it was a threshold on ``sd / (1 + |mean|)``, 1e-6 by
    default: an entry of spread below about 1e-6 around 0 was left unscaled.

    A reparameterised sampling pass in training mode with gradients (``rsample_and_log_prob``
    in variational inference, where there are no data) fixes it as the identity instead, so
    that scoring points later cannot change the flow. ``sample`` (no gradients) leaves it
    waiting for data; but a training-mode ``log_prob`` of those samples initialises it from
    them, and the next training batches, if they lie far from that first batch, get a
    warning (the statistics are fixed: a check of :attr:`CHECKS` batches, then none).

    Example:
        >>> layer = DataStandardize(2)
        >>> z, ladj = layer(torch.tensor([[0.0, 10.0], [4.0, 30.0]]))
        >>> z
        tensor([[-1., -1.],
                [ 1.,  1.]])
    """

    # a spread of at most 4 float32 rounding steps of the mean (relative) is no variation
    EPS = 4 * 2.0**-23

    def __init__(self, shape, eps: float = EPS):
        super().__init__(_event(shape))
        dtype = torch.get_default_dtype()
        self.register_buffer("loc", torch.zeros(self.event_shape, dtype=dtype))
        self.register_buffer("scale", torch.ones(self.event_shape, dtype=dtype))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        _check_standardization(self.loc, self.scale, prefix)

    # fewer examples than this in the batch it initialises from: a warning (2 to 4 rows can
    # leave a spline flow's data outside its splines' range for good)
    FEW = 16

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc`` and ``scale`` from a batch ``x`` (called on the first training batch).

        The statistics are fixed from then on, so the first batch had better be large and
        shuffled: a few rows, or the first rows of sorted data, can put the data far outside
        the range a spline flow transforms (the identity beyond its ``bound``), for good. To
        choose the sample, call ``flow.train(); flow.log_prob(sample)`` before training."""
        if x.shape[0] < self.FEW:
            warn(
                f"DataStandardize takes its statistics for good from a first batch of only "
                f"{x.shape[0]} examples; initialise it from a larger shuffled sample first "
                "(flow.train(); flow.log_prob(sample))",
                RuntimeWarning,
            )
        sd, mean = torch.std_mean(x.detach(), dim=0, correction=0)
        # constant: no spread above the dtype's rounding of the mean (eps is relative, for
        # float32; a float64 flow's data may vary by less than that and still be resolved), or
        # none a division resolves. Relative only: a column of 0 +- 1e-7 is data (an absolute
        # 1e-6 had left it unscaled: 15-29 nats lost), and 1e3 +- 1e-3 (16 float32 steps) is
        # well above its rounding, not decided by the noise of the threshold
        finfo = torch.finfo(x.dtype)
        rel = self.eps * finfo.eps / torch.finfo(torch.float32).eps
        # an absolute floor only where the differences from the mean would fall among the
        # subnormal numbers (a spread of 1e-33 is resolved in float32: its floor of 1e-31 had
        # left such a column unscaled, 70 nats off, without a word)
        floor = min(finfo.tiny * 2**12, finfo.tiny / finfo.eps)  # (float16: 0.0625, as before)
        varies = sd > rel * mean.abs()
        keep = varies & (sd > floor)
        if bool((varies & ~keep & (sd > 0)).any()):
            cols = torch.nonzero(varies & ~keep & (sd > 0)).flatten()[:5].tolist()
            warn(
                f"DataStandardize: the entries {cols} vary by less than {floor:.1e}, too little "
                f"for {x.dtype} to resolve, and are left unscaled; rescale them (multiply by a "
                "power of ten) or use float64 (flow.double())",
                RuntimeWarning,
            )
        sd = torch.where(keep, sd, torch.ones_like(sd))
        self.loc.copy_(mean)
        self.scale.copy_(sd)
        self._mark_initialized(x.shape[0])
        # (a first batch too small for its statistics has had its warning above)
        self.__dict__["_checks_left"] = self.CHECKS if x.shape[0] >= self.FEW else 0

    # training batches after the first checked against its statistics, and how far off (in the
    # first batch's standard deviations) a batch's median may lie before a warning
    CHECKS, FAR = 8, 8.0

    def _forward(self, x, context):
        if self.training and self._waiting() and x.shape[0] > 1:
            self.initialize(x)
            if isinstance(context, Tensor) and context.is_floating_point() and context.dim() == 2:
                _check_context_scale(context)
        elif self.training and self.__dict__.get("_checks_left") and x.shape[0] > 1:
            if checking(x):  # (a value read: where the flow checks values, CPU by default)
                self._check_like_first(x)
        ladj = -self.scale.log().sum()
        return (x - self.loc) / self.scale, ladj.expand(x.shape[0])

    @torch.no_grad()
    def _check_like_first(self, x: Tensor) -> None:
        """A warning when a training batch soon after the first lies far from the first's
        statistics: the first batch was not the training data (the flow's own samples scored
        in training mode, another or an unshuffled set), and the statistics are fixed. Called
        where the flow checks values (never inside torch.compile: see ``checking``)."""
        self.__dict__["_checks_left"] -= 1
        # the batch's median, not its mean: heavy tails (Cauchy-like columns) move a mean by
        # many standard deviations of a first batch, and never a median
        centre = x.detach().median(0).values
        off = ((centre - self.loc) / self.scale).abs().max().item()
        if not off > self.FAR:  # (NaN data: the loss's checks say it)
            return
        self.__dict__["_checks_left"] = 0  # said once
        warn(
            f"DataStandardize took its statistics for good from a first training-mode batch, "
            f"and this training batch's median lies {off:.3g} of that batch's standard "
            "deviations from its mean: the first batch was not like the training data (the "
            "flow's own samples scored in training mode? another or an unshuffled set?); "
            "re-initialise it from the training data (layer.initialize(batch), or a new flow "
            "whose first "
            "training-mode log_prob sees a shuffled training batch)",
            RuntimeWarning,
        )

    def _inverse(self, z, context):
        if self.training and self._waiting() and torch.is_grad_enabled():
            # a reparameterised sampling pass in training mode (variational inference): there
            # are no data to take statistics from, so the layer stays the identity for good
            self._mark_initialized()
        return z * self.scale + self.loc, self.scale.log().sum().expand(z.shape[0])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", initialized={bool(self.initialized)}"


# a context column whose mean or standard deviation exceeds this, on the first training batch:
# a warning (one offset by 1,000 cost a MAF 19 nats against the exact posterior)
CONTEXT_FAR = 10.0


@torch.no_grad()
def _check_context_scale(context: Tensor) -> None:
    """A warning when the contexts a flow's data standardisation first trains with are far
    from unit scale: the builders standardise the data, not the contexts, and a network fed
    raw contexts of scale 1,000 learns slowly or not at all."""
    if context.shape[0] < 2:
        return
    sd, mean = torch.std_mean(context.double(), dim=0, correction=0)
    size = torch.maximum(mean.abs(), sd)
    j = int(size.argmax())
    if not float(size[j]) > CONTEXT_FAR:  # (NaN: the loss's checks say it)
        return
    warn(
        f"the contexts are far from unit scale (context column {j}: mean {float(mean[j]):.4g}, "
        f"sd {float(sd[j]):.4g} in the first training batch); the flow standardises its data, "
        "not its contexts: give it standardised contexts, or wrap it as "
        "ff.models.context_standardized(flow, loc=MEANS, scale=SDS) with the training "
        "contexts' statistics",
        RuntimeWarning,
    )


def _bounds(value, n: int, what: str) -> list[float | None]:
    """``value`` (None, a number, or one number or None per entry) as ``n`` floats or Nones."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * n
    if isinstance(value, (str, bytes)):
        raise ValueError(f"expected {what} to be None, a number or a list, got {value!r}")
    try:
        out = list(value)
    except TypeError:
        raise ValueError(f"expected {what} to be None, a number or a list, got {value!r}") from None
    if len(out) != n:
        raise ValueError(
            f"expected {n} {what} bounds (one per entry, None for none), got {len(out)}"
        )
    top = torch.finfo(torch.float32).max
    for i, v in enumerate(out):
        if v is None:
            continue
        try:  # (a JSON integer can be too large for a float)
            f = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        except OverflowError:
            f = math.inf
        if f is None or not math.isfinite(f) or abs(f) > top:
            raise ValueError(
                f"expected entry {i}'s {what} bound to be a finite number or None, within "
                f"float32's range, got {repr(v)[:40]}"
            )
        out[i] = f
    return out


_F32_MAX = float(torch.finfo(torch.float32).max)


class Bounded(Transform):
    r"""Each entry from its interval onto the real line, so that a flow behind it keeps the
    data's support: positive amounts, shares, scores between two limits.

    Per entry, with lower bound ``a`` and upper bound ``b`` (``None``: unbounded on that side):

    - neither: ``y = x``;
    - ``a`` only: ``y = log(x - a)``;
    - ``b`` only: ``y = -log(b - x)``;
    - both: ``y = log(x - a) - log(b - x)``, the logit of ``(x - a) / (b - a)``.

    Every map is increasing, and its log-determinant is part of ``log_prob``: a flow behind it
    scores ``x`` in the data's own units, and its samples never leave ``(a, b)`` (in float32 a
    sample far in a tail can round onto a bound). A value on or beyond a bound has no density
    here and is refused where values are checked (:func:`flowforge.core.checking`; otherwise
    its log-density is ``-inf`` or NaN).

    Args:
        shape: the event shape.
        lower, upper: ``None`` (no bound), one number for every entry, or one number or
            ``None`` per entry (in the flattened event's order). Where both are given,
            ``lower < upper``.

    Example:
        >>> layer = Bounded(2, lower=[0.0, None])  # a positive first column
        >>> y, ladj = layer(torch.tensor([[1.0, -3.0]]))
        >>> y
        tensor([[ 0., -3.]])
    """

    def __init__(self, shape, lower=None, upper=None):
        super().__init__(_event(shape))
        n = math.prod(self.event_shape)
        self.lower, self.upper = _bounds(lower, n, "lower"), _bounds(upper, n, "upper")
        for i, (a, b) in enumerate(zip(self.lower, self.upper)):
            if a is not None and b is not None and not a < b:
                raise ValueError(
                    f"expected entry {i}'s lower bound below its upper bound, got {a} and {b}"
                )
            if a is not None and b is not None and not b - a <= _F32_MAX:
                raise ValueError(  # (its width overflows float32: samples pinned to a bound)
                    f"entry {i}'s bounds [{a:g}, {b:g}] are {b - a:g} apart, more than float32 "
                    f"holds ({_F32_MAX:.4g}); leave the entry unbounded or bound one side only"
                )
        groups = {"below": [], "above": [], "both": []}  # bounded below only, above only, both
        for i, (a, b) in enumerate(zip(self.lower, self.upper)):
            if a is not None or b is not None:
                groups[
                    "both" if a is not None and b is not None else "below" if b is None else "above"
                ].append(i)
        lows, highs = groups["below"] + groups["both"], groups["above"] + groups["both"]
        # (fixed by the arguments: not saved, moved by .to()); _lows and _highs: the entries
        # with a lower (upper) bound, in the order of _low_bits (_high_bits)
        for name, idx in (*groups.items(), ("lows", lows), ("highs", highs)):
            self.register_buffer(f"_{name}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self._n_below, self._n_above = len(groups["below"]), len(groups["above"])
        # the bounds as given, made tensors in the data's dtype when used (a float64 flow maps
        # with the bounds themselves, not their float32 roundings); kept on the layer's device
        # as the bits of their float64 values (an integer buffer, which .to(dtype) leaves
        # alone), so that no call copies them from the host
        for name, values in (
            ("_low_bits", [self.lower[i] for i in lows]),
            ("_high_bits", [self.upper[i] for i in highs]),
        ):
            bits = torch.tensor(values, dtype=torch.float64).view(torch.int64)
            self.register_buffer(name, bits, persistent=False)

    def _bounds_for(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The lower bounds of the below-only and two-sided entries, and the upper bounds of
        the above-only and two-sided ones, as tensors of ``x``'s dtype and device (rounded
        from the bounds as given, as ``torch.tensor(bounds, dtype=x.dtype)`` rounds them)."""
        low = self._low_bits.view(torch.float64).to(x.dtype)
        high = self._high_bits.view(torch.float64).to(x.dtype)
        return low, high

    def _split(self, low: Tensor, high: Tensor):
        """:meth:`_bounds_for`'s bounds as the below-only, two-sided lower, above-only and
        two-sided upper parts."""
        nb, na = self._n_below, self._n_above
        return low[:nb], low[nb:], high[:na], high[na:]

    def _check(self, flat: Tensor, low: Tensor, high: Tensor) -> None:
        if not flat.numel() or not checking(flat):
            return
        for idx, bound, side in ((self._lows, low, "lower"), (self._highs, high, "upper")):
            if not idx.numel():
                continue
            v = flat[:, idx]
            bad = (v <= bound) if side == "lower" else (v >= bound)
            bad = bad | v.isnan()
            if bad.any():
                j = int(bad.any(0).nonzero()[0, 0])
                entry, worst = int(idx[j]), v[:, j]
                worst = worst.min() if side == "lower" else worst.max()
                where = "above its lower" if side == "lower" else "below its upper"
                raise ValueError(
                    f"expected entry {entry} {where} bound {float(bound[j]):g} (the bounds are "
                    f"open: the density is not defined on them), got {float(worst):.10g}"
                )

    def _forward(self, x, context):
        flat = x.flatten(1)
        ladj = flat.new_zeros(flat.shape[0])
        if not (self._below.numel() or self._above.numel() or self._both.numel()):
            return x, ladj
        low, high = self._bounds_for(flat)
        self._check(flat, low, high)
        y = flat.clone()
        low_b, low_2, high_a, high_2 = self._split(low, high)
        if self._below.numel():
            v = torch.log(flat[:, self._below] - low_b)
            y[:, self._below] = v
            ladj = ladj - v.sum(1)
        if self._above.numel():
            v = -torch.log(high_a - flat[:, self._above])
            y[:, self._above] = v
            ladj = ladj + v.sum(1)
        if self._both.numel():
            s = flat[:, self._both]
            lu, lr = torch.log(s - low_2), torch.log(high_2 - s)
            y[:, self._both] = lu - lr
            ladj = ladj + (torch.log(high_2 - low_2) - lu - lr).sum(1)
        return y.reshape(x.shape), ladj

    def _inverse(self, y, context):
        flat = y.flatten(1)
        ladj = flat.new_zeros(flat.shape[0])
        if not (self._below.numel() or self._above.numel() or self._both.numel()):
            return y, ladj
        x = flat.clone()
        low, high = self._bounds_for(flat)
        low_b, low_2, high_a, high_2 = self._split(low, high)
        if self._below.numel():
            v = flat[:, self._below]
            x[:, self._below] = low_b + torch.exp(v)
            ladj = ladj + v.sum(1)
        if self._above.numel():
            v = flat[:, self._above]
            x[:, self._above] = high_a - torch.exp(-v)
            ladj = ladj - v.sum(1)
        if self._both.numel():
            v = flat[:, self._both]
            w = high_2 - low_2
            # from the nearer bound, so that values close to either keep their precision
            x[:, self._both] = torch.where(
                v > 0, high_2 - w * torch.sigmoid(-v), low_2 + w * torch.sigmoid(v)
            )
            ladj = ladj + (torch.log(w) - F.softplus(-v) - F.softplus(v)).sum(1)
        # values that rounded onto a bound (a point far in a tail, in float32) move to the
        # nearest number strictly inside it, so that a sample always scores
        inf = x.new_full((), math.inf)
        lows, highs = self._lows, self._highs
        if lows.numel():
            x[:, lows] = torch.maximum(x[:, lows], torch.nextafter(low, inf))
        if highs.numel():
            x[:, highs] = torch.minimum(x[:, highs], torch.nextafter(high, -inf))
        return x.reshape(y.shape), ladj

    def extra_repr(self) -> str:
        def fmt(bounds):
            return "[" + ", ".join("None" if b is None else f"{b:g}" for b in bounds) + "]"

        return super().extra_repr() + f", lower={fmt(self.lower)}, upper={fmt(self.upper)}"


def _check_whitening(loc: Tensor, factor: Tensor, prefix: str) -> None:
    """A ``ValueError`` unless ``loc`` is finite and ``factor`` is lower triangular with a
    finite, positive diagonal (``prefix``: the tensor names of a loaded file)."""
    if not torch.isfinite(loc).all() or not torch.isfinite(factor).all():
        raise ValueError(f"expected a finite {prefix}loc and {prefix}factor, got NaN or inf")
    if not torch.equal(factor, factor.tril()) or not (factor.diagonal() > 0).all():
        raise ValueError(
            f"expected {prefix}factor lower triangular with a positive diagonal (a Cholesky factor)"
        )
    diag = factor.diagonal().double()
    if (
        (diag < 1e-30).any()
        or (diag > 1e30).any()
        or factor.abs().max() > 1e30
        or (loc.numel() and loc.abs().max() > 1e30)
    ):
        raise ValueError(
            f"expected {prefix}factor's diagonal in [1e-30, 1e30] and every entry of "
            f"{prefix}factor and {prefix}loc at most 1e30 in magnitude (a table's scales)"
        )


class Whiten(Transform):
    r"""A fixed affine map ``z = F^{-1} (x - loc)`` with ``F`` lower triangular and a positive
    diagonal (the Cholesky factor of a covariance): standardisation that also undoes the
    columns' correlations, for vectors.

    With ``F F^T`` a covariance fitted to the data (the workbench's ``data.whiten`` takes the
    Ledoit-Wolf shrunk one, defined with fewer rows than columns), a flow behind it starts as
    that Gaussian, and has only the data's departures from it to learn. ``log|det| =
    -sum(log diag F)``; ``loc`` and ``factor`` are saved buffers (checked when loaded).

    Example:
        >>> layer = Whiten(2, torch.zeros(2), torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
        >>> z, ladj = layer(torch.tensor([[2.0, 2.0]]))
        >>> z, ladj
        (tensor([[1., 1.]]), tensor([-0.6931]))
    """

    # (a matrix product that autocast would run in bfloat16, next to a log-determinant from
    # the float32 weights: the layer would not be the bijection it counts)
    full_precision = True

    def __init__(self, shape, loc: Tensor | None = None, factor: Tensor | None = None):
        super().__init__(_event(shape))
        if len(self.event_shape) != 1:
            raise ValueError(f"Whiten takes vectors; got the event shape {self.event_shape}")
        d = self.event_shape[0]
        dtype = torch.get_default_dtype()
        loc = torch.zeros(d, dtype=dtype) if loc is None else torch.as_tensor(loc, dtype=dtype)
        factor = (
            torch.eye(d, dtype=dtype) if factor is None else torch.as_tensor(factor, dtype=dtype)
        )
        if loc.shape != (d,) or factor.shape != (d, d):
            raise ValueError(
                f"expected loc of shape ({d},) and factor of shape ({d}, {d}), got "
                f"{tuple(loc.shape)} and {tuple(factor.shape)}"
            )
        _check_whitening(loc, factor, "")
        self.register_buffer("loc", loc.clone())
        self.register_buffer("factor", factor.clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        _check_whitening(self.loc, self.factor, prefix)

    def _log_diagonal(self) -> Tensor:
        return self.factor.diagonal().log().sum()

    def _forward(self, x, context):
        z = torch.linalg.solve_triangular(self.factor, (x - self.loc).T, upper=False).T
        return z, (-self._log_diagonal()).expand(x.shape[0])

    def _inverse(self, z, context):
        return z @ self.factor.T + self.loc, self._log_diagonal().expand(z.shape[0])


class ContextStandardize(torch.nn.Module):
    """A conditional flow's fixed map of raw contexts onto the scale its layers were trained
    on: ``(c - loc) / scale``, per context feature, computed in float64 from the statistics
    as given and returned in the flow's dtype (a context of 1e8 +- 1 keeps its variation).

    Set on a flow by :func:`flowforge.models.context_standardized`; the flow applies it to
    every context it is given (``log_prob``, ``sample``, the losses), so that the flow takes
    raw contexts as it takes raw data. The statistics live in the flow's config (``ff.save``
    keeps them there), not in its state dict.
    """

    def __init__(self, features: int, loc, scale):
        super().__init__()
        features = checked_int("features", features)
        values = {}
        for name, v in (("loc", loc), ("scale", scale)):
            try:
                t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                raise ValueError(
                    f"expected the context's {name} as numbers, got {str(v)[:80]}"
                ) from None
            if t.numel() != features:
                raise ValueError(f"expected {features} context {name} value(s), got {t.numel()}")
            if not torch.isfinite(t).all() or (name == "scale" and not (t > 0).all()):
                want = "finite and positive" if name == "scale" else "finite"
                raise ValueError(f"the context's {name} must be {want}, got {t.tolist()}")
            values[name] = t
        self.features = int(features)
        self.loc, self.scale = values["loc"].tolist(), values["scale"].tolist()
        # the float64 values' bits in integer buffers, which .to(dtype) leaves exact (as
        # Bounded keeps its bounds) and .to(device) moves: no copy from the host per call
        for name, t in values.items():
            self.register_buffer(f"_{name}_bits", t.view(torch.int64), persistent=False)

    def forward(self, c: Tensor, dtype: torch.dtype) -> Tensor:
        loc = self._loc_bits.view(torch.float64)
        scale = self._scale_bits.view(torch.float64)
        return ((c.to(torch.float64) - loc) / scale).to(dtype)

    def extra_repr(self) -> str:
        return f"features={self.features}"
