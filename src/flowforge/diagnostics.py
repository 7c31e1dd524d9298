r"""Calibration diagnostics for conditional flows used as posterior estimators.

A conditional flow ``q(theta | x)`` trained on pairs ``(theta_i, x_i)`` drawn from the joint
(``theta_i`` from the prior, then ``x_i`` from the simulator) is *calibrated* when, averaged
over the joint, its credible regions hold the true parameter as often as they claim. The
functions here check that from held-out pairs, by sampling the flow ``num_samples`` (``L``)
times per ``x_i``:

- :func:`sbc`: simulation-based calibration (Talts et al. 2018). The rank of each coordinate of
  ``theta_i`` among the ``L`` draws is uniform on ``{0, ..., L}`` for a calibrated posterior;
  chi-square and Kolmogorov-Smirnov p-values test that per dimension. It also ranks the
  *log-density*: ``log q(theta_i | x_i)`` among ``log q`` of the draws, an exact-likelihood
  statistic that tests the highest-density regions of the whole vector at once.
- :func:`hpd_coverage`: expected coverage of the highest-density regions, a curve of the
  fraction of ``theta_i`` inside the flow's ``c`` HPD region against ``c``. Below the diagonal:
  overconfident (regions too small); above: underconfident.
- :func:`tarp`: "tests of accuracy with random points" (Lemos et al. 2023), the expected
  coverage of balls around random reference points; needs samples only
  (:func:`tarp_from_samples` takes them from any estimator).
- :func:`c2st`: classifier two-sample test (Lopez-Paz and Oquab 2017), the cross-validated
  accuracy of a classifier told to separate two sets of samples (0.5: indistinguishable).
  Needs scikit-learn (``pip install flowforge[diagnostics]``).

Every diagnostic samples in chunks of at most ``batch_size`` flow evaluations (memory is
bounded whatever ``N`` and ``L``), runs without gradients with the flow in eval mode (its mode
is restored), and is repeatable: ``seed`` seeds a forked random stream (the caller's stream is
left as it was), and the same ``seed`` and ``batch_size`` give the same numbers (another
``batch_size`` draws the same number of samples in other chunks, so other samples);
``seed=None`` draws from the global stream.

Ranks. Every rank statistic here counts the draws *strictly* below the true value and adds a
uniform jitter before it is tested: ``u = (r + U) / (L + 1)`` with ``U ~ Uniform(0, 1)`` is
exactly ``Uniform(0, 1)`` for a calibrated posterior with continuous draws, whatever ``L``, so
the p-values and curves carry no ``O(1/L)`` bias. Draws tied with the true value (which
continuous draws almost never are) count as not below it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ._util import fork_rng, restore_modes, training_modes
from .core import Flow

__all__ = [
    "SBCResult",
    "CoverageResult",
    "TARPResult",
    "C2STResult",
    "sbc",
    "hpd_coverage",
    "tarp",
    "tarp_from_samples",
    "c2st",
    "chi2_uniform_pvalue",
    "ks_uniform_pvalue",
]


# -- uniformity tests -----------------------------------------------------------------------------


def chi2_uniform_pvalue(ranks: Tensor, num_samples: int, bins: int) -> float:
    """Pearson's chi-square p-value that integer ``ranks`` are uniform on ``{0, ..., L}``.

    The ``L + 1`` rank values are grouped into ``bins`` consecutive bins; each bin's expected
    count is its exact share of the rank values (so ``L + 1`` need not be a multiple of
    ``bins``). The tail probability of the chi-square distribution with ``bins - 1`` degrees of
    freedom is torch's regularised incomplete gamma function (no scipy needed). The usual
    caveat: the chi-square law is an approximation that wants about 5 or more expected counts
    per bin.

    Example:
        >>> r = torch.arange(100) % 10  # perfectly flat ranks on {0, ..., 9}
        >>> ff.diagnostics.chi2_uniform_pvalue(r, num_samples=9, bins=5)
        1.0
    """
    ranks = torch.as_tensor(ranks)
    if ranks.is_floating_point() and not bool((ranks == ranks.round()).all()):
        raise ValueError("expected integer ranks (counts of draws below the truth)")
    ranks = ranks.reshape(-1).long().cpu()
    L = _positive_int(num_samples, "num_samples")
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or not 2 <= bins <= L + 1:
        raise ValueError(f"expected bins to be an integer in [2, {L + 1}] (L + 1), got {bins!r}")
    if not ranks.numel() or int(ranks.min()) < 0 or int(ranks.max()) > L:
        raise ValueError(f"expected at least one rank, each in [0, {L}] (L = num_samples)")
    n, values = ranks.numel(), L + 1
    edges = torch.div(torch.arange(values) * bins, values, rounding_mode="floor")  # value -> bin
    observed = torch.bincount(edges[ranks], minlength=bins).double()
    expected = n * torch.bincount(edges, minlength=bins).double() / values
    stat = ((observed - expected).square() / expected).sum()
    p = torch.special.gammaincc(torch.tensor((bins - 1) / 2, dtype=torch.float64), stat / 2)
    return float(p)


def ks_uniform_pvalue(u: Tensor) -> float:
    """Kolmogorov-Smirnov p-value that ``u`` are draws of ``Uniform(0, 1)``: scipy's
    ``kstest`` (the exact distribution of the statistic for small samples).

    Raises:
        ImportError: scipy is missing (``pip install flowforge[diagnostics]``).

    Example:
        >>> u = (torch.arange(200) + 0.5) / 200  # an evenly spread sample
        >>> ff.diagnostics.ks_uniform_pvalue(u) > 0.99
        True
    """
    u = torch.as_tensor(u)
    if not u.numel() or not bool(((u >= 0) & (u <= 1)).all()):
        raise ValueError("expected at least one value, each in [0, 1] (no NaN)")
    _need_scipy()
    from scipy.stats import kstest

    return float(kstest(u.reshape(-1).double().cpu().numpy(), "uniform").pvalue)


def _need_scipy() -> None:
    """The ImportError of a missing scipy, raised before any sampling, not after it."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise ImportError(
            "flowforge.diagnostics tests uniformity with scipy's Kolmogorov-Smirnov test: pip "
            "install flowforge[diagnostics]"
        )


def _areas(levels: Tensor, curve: Tensor) -> tuple[float, float, float]:
    """(area between the curve and the diagonal, signed area curve minus diagonal, largest
    absolute deviation) by the trapezoid rule over ``levels``."""
    dev = (curve - levels).double()
    lv = levels.double()
    signed = float(torch.trapezoid(dev, lv))
    # |dev| crossing zero inside an interval: trapezoid of |dev| on a fine grid is plenty here
    fine = torch.linspace(float(lv[0]), float(lv[-1]), 2001, dtype=torch.float64)
    absdev = _interp(fine, lv, dev).abs()
    return float(torch.trapezoid(absdev, fine)), signed, float(dev.abs().max())


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    return torch.from_numpy(np.interp(x.numpy(), xp.numpy(), fp.numpy()))


def _ecdf(u: Tensor, levels: Tensor) -> Tensor:
    """The fraction of ``u`` strictly below each level."""
    return (u.reshape(1, -1).double() < levels.reshape(-1, 1).double()).double().mean(1)


def _levels(levels, what: str = "levels") -> Tensor:
    if levels is None:
        return torch.linspace(0, 1, 21, dtype=torch.float64)
    if isinstance(levels, numbers.Integral) and not isinstance(levels, bool):
        if levels < 2:
            raise ValueError(f"expected {what} to be an integer >= 2 or a sequence, got {levels}")
        return torch.linspace(0, 1, int(levels), dtype=torch.float64)
    try:
        t = torch.as_tensor(levels, dtype=torch.float64).reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"expected {what} to be a sequence of numbers, got {levels!r}") from None
    if t.numel() < 2 or not bool(torch.isfinite(t).all()) or t.min() < 0 or t.max() > 1:
        raise ValueError(f"expected at least two {what} in [0, 1], got {t.tolist()}")
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"expected increasing {what}, got {t.tolist()}")
    return t


# -- results -------------------------------------------------------------------------------------


@dataclass
class SBCResult:
    """What :func:`sbc` measured.

    Attributes:
        ranks: ``(N, D)`` integer ranks in ``{0, ..., L}`` of each coordinate of ``theta_i``
            (flattened event) among its ``L`` posterior draws (draws strictly below it).
        log_prob_ranks: ``(N,)`` ranks of ``log q(theta_i | x_i)`` among the draws' ``log q``:
            small when ``theta_i`` lies where the flow puts little mass (outside its HPD
            regions), large when it sits in the densest part.
        num_samples: ``L``.
        bins: the chi-square test's bins.
        chi2_pvalues: ``(D,)`` chi-square p-values of uniform ranks, per dimension.
        ks_pvalues: ``(D,)`` Kolmogorov-Smirnov p-values of the jittered ranks
            ``(r + U) / (L + 1)``, per dimension.
        log_prob_chi2_pvalue, log_prob_ks_pvalue: the same for the log-density ranks.
        mean_rank: ``(D,)`` mean normalised rank ``r / L`` per dimension: 0.5 when calibrated;
            above 0.5 the flow's draws sit mostly below the truth (its mean is too low).
    """

    ranks: Tensor
    log_prob_ranks: Tensor
    num_samples: int
    bins: int
    chi2_pvalues: Tensor
    ks_pvalues: Tensor
    log_prob_chi2_pvalue: float
    log_prob_ks_pvalue: float
    mean_rank: Tensor
    seconds: float = field(default=0.0, compare=False)

    @property
    def pvalues(self) -> list[float]:
        """Every p-value of the result (per-dimension chi-square and KS, then the log-density's
        two)."""
        return [
            *self.chi2_pvalues.tolist(),
            *self.ks_pvalues.tolist(),
            self.log_prob_chi2_pvalue,
            self.log_prob_ks_pvalue,
        ]

    @property
    def min_pvalue(self) -> float:
        return min(self.pvalues)

    def consistent(self, level: float = 0.01) -> bool:
        """Whether no test rejects uniformity at ``level`` after a Bonferroni correction for the
        number of p-values (a calibrated flow fails this with probability at most ``level``)."""
        return self.min_pvalue * len(self.pvalues) > level

    def coverage(self, levels=None, seed: int | None = 0) -> CoverageResult:
        """The HPD coverage curve from this result's log-density ranks: what
        :func:`hpd_coverage` gives, without drawing again (``seed`` seeds the tie-breaking)."""
        return _coverage(self.log_prob_ranks, self.num_samples, _levels(levels), _generator(seed))

    def describe(self) -> str:
        n, d = self.ranks.shape
        mr = self.mean_rank
        return (
            f"SBC: {n} pairs, L={self.num_samples}, {d} dim{'s' if d != 1 else ''}: rank "
            f"p-values min chi2({self.bins} bins) {float(self.chi2_pvalues.min()):.3g}, "
            f"min KS {float(self.ks_pvalues.min()):.3g}; log-density rank p chi2 "
            f"{self.log_prob_chi2_pvalue:.3g}, KS {self.log_prob_ks_pvalue:.3g}; mean "
            f"normalised rank {float(mr.min()):.3f}..{float(mr.max()):.3f} (0.5 calibrated); "
            f"{'consistent' if self.consistent() else 'NOT calibrated'} at 1% (Bonferroni)"
        )

    __str__ = describe


@dataclass
class CoverageResult:
    """What :func:`hpd_coverage` measured.

    Attributes:
        levels: ``(K,)`` credibility levels ``c = 1 - alpha``.
        coverage: ``(K,)`` fraction of ``theta_i`` inside the flow's ``c`` highest-density
            region (estimated from ``L`` draws' log-densities).
        stderr: ``(K,)`` binomial standard error of each coverage, ``sqrt(c (1 - c) / N)``
            under calibration.
        area: area between the coverage curve and the diagonal (0 calibrated; at most 0.5).
        signed_area: ``integral of coverage - c``: negative overconfident (regions too
            small), positive underconfident.
        max_deviation: largest ``|coverage - c|``.
        ks_pvalue: KS p-value of the HPD levels at which each ``theta_i`` enters (uniform when
            calibrated).
        num_samples: ``L``; n: ``N``.
    """

    levels: Tensor
    coverage: Tensor
    stderr: Tensor
    area: float
    signed_area: float
    max_deviation: float
    ks_pvalue: float
    num_samples: int
    n: int
    seconds: float = field(default=0.0, compare=False)

    def verdict(self, level: float = 0.01) -> str:
        """``"calibrated"``, ``"overconfident"`` or ``"underconfident"``.

        Calibrated unless the KS test of the whole curve (``ks_pvalue``) rejects at ``level``
        (a calibrated flow is called miscalibrated with probability about ``level``); then the
        sign of ``signed_area`` says which way (a biased posterior reads as overconfident: its
        regions miss the truth)."""
        if self.ks_pvalue >= level:
            return "calibrated"
        return "overconfident" if self.signed_area < 0 else "underconfident"

    def describe(self) -> str:
        return (
            f"HPD coverage: {self.n} pairs, L={self.num_samples}: area to diagonal "
            f"{self.area:.4f} (signed {self.signed_area:+.4f}), max deviation "
            f"{self.max_deviation:.3f}, KS p {self.ks_pvalue:.3g}: {self.verdict()}"
        )

    __str__ = describe


@dataclass
class TARPResult:
    """What :func:`tarp` measured.

    Attributes:
        levels: ``(K,)`` credibility levels ``c``.
        ecp: ``(K,)`` expected coverage probability: fraction of ``theta_i`` inside the ball
            around its reference point that holds a share ``c`` of the draws.
        f: ``(N,)`` jittered share of draws closer to the reference than ``theta_i`` (uniform
            when calibrated; ``ecp`` is its empirical CDF).
        area: area between the ECP curve and the diagonal (0 calibrated).
        signed_area: ``integral of ecp - c`` (its sign is not a direction on its own: a too
            narrow or a shifted posterior bends the curve both ways; see :func:`hpd_coverage`).
        max_deviation: largest ``|ecp - c|`` (the KS distance of ``f`` on the grid).
        ks_pvalue: KS p-value that ``f`` is uniform.
        num_samples: ``L``; n: ``N``.
    """

    levels: Tensor
    ecp: Tensor
    f: Tensor
    area: float
    signed_area: float
    max_deviation: float
    ks_pvalue: float
    num_samples: int
    n: int
    seconds: float = field(default=0.0, compare=False)

    def describe(self) -> str:
        return (
            f"TARP: {self.n} pairs, L={self.num_samples}: area to diagonal {self.area:.4f} "
            f"(signed {self.signed_area:+.4f}), max deviation {self.max_deviation:.3f}, "
            f"KS p {self.ks_pvalue:.3g}"
        )

    __str__ = describe


@dataclass
class C2STResult:
    """What :func:`c2st` measured.

    Attributes:
        accuracy: cross-validated accuracy over all held-out predictions.
        fold_accuracies: ``(folds,)`` accuracy of each fold.
        chance: the accuracy of always guessing the larger set (0.5 for equal sizes).
        p_value: one-sided p-value of ``accuracy`` under "indistinguishable", from the normal
            approximation of a binomial with ``n`` trials at ``chance`` (approximate: the folds'
            classifiers are trained on overlapping data).
        n: rows in both sets together; folds: the number of folds.
    """

    accuracy: float
    fold_accuracies: list[float]
    chance: float
    p_value: float
    n: int
    folds: int
    seconds: float = field(default=0.0, compare=False)

    def describe(self) -> str:
        return (
            f"C2ST: accuracy {self.accuracy:.3f} (chance {self.chance:.3f}; folds "
            f"{min(self.fold_accuracies):.3f}..{max(self.fold_accuracies):.3f}), {self.n} rows, "
            f"{self.folds}-fold, p {self.p_value:.3g}"
        )

    __str__ = describe


# -- input checks ----------------------------------------------------------------------------------


def _positive_int(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"expected {what} to be an integer >= {minimum}, got {value!r}")
    return int(value)


def _tensor(t, what: str) -> Tensor:
    if isinstance(t, Tensor):
        out = t.detach()
    else:
        try:
            out = torch.as_tensor(np.asarray(t))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"expected {what} to be a tensor or an array, got {type(t).__name__}"
            ) from None
    if out.is_complex() or not (out.is_floating_point() or out.dtype in _INTS):
        raise ValueError(f"expected {what} to hold real numbers, got {out.dtype}")
    return out


_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _finite(t: Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        rows = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1).nonzero().flatten()[:5]
        raise ValueError(f"{what} contains NaN or inf (first bad rows: {rows.tolist()})")


def _pairs(flow, theta, x) -> tuple[Tensor, Tensor]:
    """``theta`` ``(N, *event)`` and ``x`` ``(N, c)`` checked against ``flow`` and moved to its
    device and dtype."""
    if not isinstance(flow, Flow):
        raise ValueError(f"expected a flowforge Flow, got {type(flow).__name__}")
    c = flow.context_features
    if not c:
        raise ValueError(
            "calibration checks a posterior q(theta | x): expected a conditional flow "
            "(context_features > 0), got an unconditional one"
        )
    if flow.dequantizer is not None:
        raise ValueError(
            "calibration ranks continuous draws by their exact density, but this flow has a "
            "dequantizer: its samples are discrete (ranks tie) and its log_prob is a bound"
        )
    theta, x = _tensor(theta, "theta"), _tensor(x, "x")
    event = tuple(flow.event_shape)
    if theta.dim() != len(event) + 1 or tuple(theta.shape[1:]) != event:
        want = ", ".join(map(str, event))
        raise ValueError(f"expected theta of shape (N, {want}), got {tuple(theta.shape)}")
    if x.dim() == 1 and c == 1:
        x = x.unsqueeze(1)
    if x.dim() != 2 or x.shape[1] != c:
        raise ValueError(f"expected x of shape (N, {c}) (the flow's context), got {tuple(x.shape)}")
    if theta.shape[0] != x.shape[0]:
        raise ValueError(
            f"theta and x must pair up row by row: got {theta.shape[0]} rows of theta and "
            f"{x.shape[0]} of x"
        )
    if theta.shape[0] < 2:
        raise ValueError(f"expected at least 2 pairs (theta, x), got {theta.shape[0]}")
    _finite(theta, "theta")
    _finite(x, "x")
    anchor = flow.base._anchor
    theta, x = theta.to(anchor.device, anchor.dtype), x.to(anchor.device, anchor.dtype)
    for t, what in ((theta, "theta"), (x, "x")):  # (finite in float64, beyond the flow's dtype)
        _finite(t, f"{what} in the flow's dtype {anchor.dtype}")
    return theta, x


def _seed(seed) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"expected seed to be an integer >= 0 or None, got {seed!r}")
    return int(seed)


# -- the sampling pass -----------------------------------------------------------------------------


class _Pass:
    """One pass of posterior draws over the pairs, in chunks: counts per pair of draws below the
    truth (per dimension), of draws with lower log-density, and of draws closer to a
    reference point."""

    def __init__(self, flow: Flow, theta: Tensor, x: Tensor, num_samples: int, batch_size: int):
        self.flow, self.theta, self.x = flow, theta, x
        self.L, self.batch = num_samples, batch_size

    def run(self, *, coords=False, log_prob=False, refs=None, scale=None):
        flow, theta, x, L = self.flow, self.theta, self.x, self.L
        n = theta.shape[0]
        flat = theta.reshape(n, -1)
        d = flat.shape[1]
        dev = theta.device
        below = torch.zeros(n, d, dtype=torch.long, device=dev) if coords else None
        lower = torch.zeros(n, dtype=torch.long, device=dev) if log_prob else None
        closer = torch.zeros(n, dtype=torch.long, device=dev) if refs is not None else None
        # draws per call: k contexts x m draws each, k * m <= batch (at least one of each)
        m = min(L, self.batch)
        k = max(1, self.batch // m)
        for i in range(0, n, k):
            th, ctx = flat[i : i + k], x[i : i + k]
            b = th.shape[0]
            lq_true = flow.log_prob(theta[i : i + k], ctx) if log_prob else None
            if refs is not None:
                r = refs[i : i + k]
                d_true = ((th - r) / scale).square().sum(-1)
            for j in range(0, L, m):
                mj = min(m, L - j)
                s = flow.sample(mj, ctx)  # (mj, b, *event)
                sf = s.reshape(mj, b, d)
                if coords:
                    below[i : i + b] += (sf < th).sum(0)
                if log_prob:
                    lower[i : i + b] += (flow.log_prob(s, ctx) < lq_true).sum(0)
                if refs is not None:
                    closer[i : i + b] += (((sf - r) / scale).square().sum(-1) < d_true).sum(0)
        return below, lower, closer


def _run(flow: Flow, seed: int | None, body):
    """Call ``body()`` without gradients, the flow in eval mode, under a forked random stream
    seeded with ``seed`` (None: the global stream)."""
    was = training_modes(flow)
    rng = fork_rng() if seed is not None else contextlib.nullcontext()
    t0 = time.perf_counter()
    with rng, torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        flow.eval()
        try:
            out = body()
        finally:
            restore_modes(was)
    return out, time.perf_counter() - t0


def _jitter(counts: Tensor, L: int, generator: torch.Generator | None) -> Tensor:
    """``(r + U) / (L + 1)``: exactly Uniform(0, 1) when ``r`` is uniform on ``{0..L}``."""
    u = torch.rand(counts.shape, generator=generator, dtype=torch.float64)
    return (counts.cpu().double() + u) / (L + 1)


def _generator(seed: int | None) -> torch.Generator | None:
    # an offset keeps the jitter's stream apart from the flow's draws under the same seed
    return None if seed is None else torch.Generator().manual_seed(seed + 0x5EED)


# -- the diagnostics ----------------------------------------------------------------------------


def sbc(
    flow: Flow,
    theta,
    x,
    num_samples: int = 100,
    *,
    bins: int | None = None,
    batch_size: int = 8192,
    seed: int | None = 0,
) -> SBCResult:
    """Simulation-based calibration (Talts et al. 2018) of a conditional flow ``q(theta | x)``.

    For each pair ``(theta_i, x_i)`` drawn from the joint, draws ``L = num_samples`` samples
    of ``q(. | x_i)`` and counts, per coordinate, the draws below ``theta_i``: for a
    calibrated posterior that rank is uniform on ``{0, ..., L}``. Uniformity is tested per
    dimension with Pearson's chi-square on ``bins`` binned ranks and with Kolmogorov-Smirnov
    on the jittered ranks (see the module's notes). A U-shaped rank histogram means the flow is
    overconfident (too narrow), a hump underconfident, a slope biased (``mean_rank`` away from
    0.5).

    It also ranks the log-density, using the flow's exact likelihood: the count of draws with
    ``log q(draw | x_i) < log q(theta_i | x_i)``. ``1 - rank / L`` is the smallest
    highest-density-region level that holds ``theta_i``, so this rank is uniform for a
    calibrated posterior and tests the HPD regions of the whole vector in one statistic (low
    ranks: ``theta_i`` falls where the flow puts little mass, i.e. overconfident or biased).

    Args:
        flow: a conditional :class:`~flowforge.Flow` (``context_features > 0``).
        theta: ``(N, *event_shape)`` true parameters, N >= 2.
        x: ``(N, context_features)`` the observations simulated from them.
        num_samples: posterior draws per pair, ``L >= 1``.
        bins: chi-square bins, 2 to ``L + 1`` (default ``min(L + 1, 20, N // 5)``, at least
            2, for about 5 expected counts per bin).
        batch_size: flow evaluations per call (memory bound).
        seed: seeds the draws and the jitter (repeatable; the caller's random stream is kept);
            None uses the global stream.

    Raises:
        ValueError: an unconditional flow, mismatched rows, shapes that do not fit the flow,
            NaN or inf in ``theta`` or ``x``, ``num_samples < 1``, bad ``bins`` or
            ``batch_size``.

    Example:
        >>> flow = ff.models.build("maf", features=2, context_features=2)
        >>> theta, x = torch.randn(50, 2), torch.randn(50, 2)
        >>> result = ff.diagnostics.sbc(flow, theta, x, num_samples=20)
        >>> result.ranks.shape, int(result.ranks.max()) <= 20
        (torch.Size([50, 2]), True)
    """
    _need_scipy()  # (before the sampling, not after it)
    theta, x = _pairs(flow, theta, x)
    L = _positive_int(num_samples, "num_samples")
    batch_size = _positive_int(batch_size, "batch_size")
    seed = _seed(seed)
    n = theta.shape[0]
    if bins is None:
        bins = max(2, min(L + 1, 20, n // 5))
    elif isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or not 2 <= bins <= L + 1:
        raise ValueError(f"expected bins to be an integer in [2, {L + 1}] (L + 1), got {bins!r}")
    bins = int(bins)
    pass_ = _Pass(flow, theta, x, L, batch_size)
    (below, lower, _), seconds = _run(flow, seed, lambda: pass_.run(coords=True, log_prob=True))
    below, lower = below.cpu(), lower.cpu()
    g = _generator(seed)
    d = below.shape[1]
    chi2 = torch.tensor([chi2_uniform_pvalue(below[:, j], L, bins) for j in range(d)])
    u = _jitter(below, L, g)
    ks = torch.tensor([ks_uniform_pvalue(u[:, j]) for j in range(d)])
    lp_u = _jitter(lower, L, g)
    return SBCResult(
        ranks=below,
        log_prob_ranks=lower,
        num_samples=L,
        bins=bins,
        chi2_pvalues=chi2.double(),
        ks_pvalues=ks.double(),
        log_prob_chi2_pvalue=chi2_uniform_pvalue(lower, L, bins),
        log_prob_ks_pvalue=ks_uniform_pvalue(lp_u),
        mean_rank=below.double().mean(0) / L,
        seconds=seconds,
    )


def hpd_coverage(
    flow: Flow,
    theta,
    x,
    num_samples: int = 100,
    *,
    levels=None,
    batch_size: int = 8192,
    seed: int | None = 0,
) -> CoverageResult:
    """Expected coverage of the flow's highest-density regions, from its exact log-density.

    For a credibility level ``c``, ``theta_i`` lies inside the flow's ``c`` highest-density
    region when fewer than a share ``c`` of the draws from ``q(. | x_i)`` have a higher
    log-density than ``log q(theta_i | x_i)`` (the region's boundary is estimated from ``L``
    draws' log-densities; ties are broken at random, see the module's notes). The coverage at
    ``c`` is the fraction of pairs inside; a calibrated posterior gives ``coverage = c`` up to
    binomial noise (``stderr``). Below the diagonal: overconfident, the regions are too small
    (a too narrow or a shifted posterior); above: underconfident (too wide).

    Args:
        flow: a conditional :class:`~flowforge.Flow`.
        theta: ``(N, *event_shape)`` true parameters, N >= 2.
        x: ``(N, context_features)``.
        num_samples: draws per pair, ``L >= 1``.
        levels: the credibility levels: an increasing sequence in ``[0, 1]``, or a count of
            evenly spaced ones (default 21: 0, 0.05, ..., 1).
        batch_size: flow evaluations per call.
        seed: seeds the draws and the tie-breaking (None: the global stream).

    Raises:
        ValueError: as :func:`sbc`, and for bad ``levels``.

    Example:
        >>> flow = ff.models.build("maf", features=1, context_features=1)
        >>> cov = ff.diagnostics.hpd_coverage(flow, torch.randn(40, 1), torch.randn(40, 1), 10)
        >>> cov.levels.shape, cov.coverage.shape
        (torch.Size([21]), torch.Size([21]))
    """
    _need_scipy()  # (before the sampling, not after it)
    theta, x = _pairs(flow, theta, x)
    L = _positive_int(num_samples, "num_samples")
    batch_size = _positive_int(batch_size, "batch_size")
    seed = _seed(seed)
    lv = _levels(levels)
    pass_ = _Pass(flow, theta, x, L, batch_size)
    (_, lower, _), seconds = _run(flow, seed, lambda: pass_.run(log_prob=True))
    res = _coverage(lower, L, lv, _generator(seed))
    res.seconds = seconds
    return res


def _coverage(lower: Tensor, L: int, lv: Tensor, g: torch.Generator | None) -> CoverageResult:
    """HPD coverage from log-density ranks (draws with a lower density than the truth)."""
    # share of draws with a higher density than theta_i, jittered: the HPD level at which it
    # enters the region, Uniform(0, 1) when calibrated
    h = 1.0 - _jitter(lower, L, g)
    n = h.numel()
    coverage = _ecdf(h, lv)
    area, signed, dmax = _areas(lv, coverage)
    return CoverageResult(
        levels=lv,
        coverage=coverage,
        stderr=(lv * (1 - lv) / n).sqrt(),
        area=area,
        signed_area=signed,
        max_deviation=dmax,
        ks_pvalue=ks_uniform_pvalue(h),
        num_samples=L,
        n=n,
    )


def _tarp_refs(
    pilot: Tensor, n: int, references, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """The reference points (``(N, D)``) and the per-dimension scale of the distances: from
    ``pilot`` draws of the posteriors (which do not depend on the true ``theta_i``)."""
    scale = pilot.std(0).clamp_min(torch.finfo(pilot.dtype).tiny)
    if references is not None:
        return references, scale
    lo, hi = pilot.min(0).values, pilot.max(0).values
    u = torch.rand(n, pilot.shape[1], generator=generator, dtype=torch.float64)
    return (lo.cpu().double() + u * (hi - lo).cpu().double()).to(pilot), scale


def tarp(
    flow: Flow,
    theta,
    x,
    num_samples: int = 100,
    *,
    references=None,
    levels=None,
    batch_size: int = 8192,
    seed: int | None = 0,
) -> TARPResult:
    """TARP (Lemos et al. 2023): the expected coverage of balls around random reference points.

    For each pair, a reference point ``ref_i`` is drawn; ``f_i`` is the share of the ``L``
    draws from ``q(. | x_i)`` closer to ``ref_i`` than ``theta_i`` (jittered for ties; distances
    in coordinates divided by the per-dimension standard deviation of the draws). The ball
    around ``ref_i`` that holds a share ``c`` of the draws contains ``theta_i`` when
    ``f_i < c``, so the expected coverage probability ``ecp(c)`` is the empirical CDF of ``f``;
    the diagonal for a calibrated posterior, for any distribution of references that does not
    depend on ``theta_i`` beyond ``x_i``. It uses samples only (no density) and tests the
    whole vector at once; its summary says how far from calibrated, not which way (see
    :func:`hpd_coverage` and :func:`sbc` for that).

    Args:
        flow: a conditional :class:`~flowforge.Flow`.
        theta: ``(N, *event_shape)``, N >= 2.
        x: ``(N, context_features)``.
        num_samples: draws per pair, ``L >= 1``.
        references: ``(N, *event_shape)`` reference points; default: uniform over the box
            spanned by one pilot draw from each posterior (independent of the ``theta_i``).
        levels: credibility levels (as :func:`hpd_coverage`).
        batch_size: flow evaluations per call.
        seed: seeds the draws, the references and the jitter (None: the global stream).

    Raises:
        ValueError: as :func:`sbc`, and for references of the wrong shape or not finite.

    Example:
        >>> flow = ff.models.build("maf", features=2, context_features=2)
        >>> res = ff.diagnostics.tarp(flow, torch.randn(40, 2), torch.randn(40, 2), 10)
        >>> 0 <= res.area <= 0.5
        True
    """
    _need_scipy()  # (before the sampling, not after it)
    theta, x = _pairs(flow, theta, x)
    L = _positive_int(num_samples, "num_samples")
    batch_size = _positive_int(batch_size, "batch_size")
    seed = _seed(seed)
    lv = _levels(levels)
    n = theta.shape[0]
    if references is not None:
        references = _tensor(references, "references")
        if tuple(references.shape) != tuple(theta.shape):
            raise ValueError(
                f"expected references of the shape of theta {tuple(theta.shape)}, got "
                f"{tuple(references.shape)}"
            )
        _finite(references, "references")
        references = references.to(theta).reshape(n, -1)
    g = _generator(seed)
    pass_ = _Pass(flow, theta, x, L, batch_size)

    def body():
        pilot = torch.cat(
            [flow.sample(1, x[i : i + batch_size])[0] for i in range(0, n, batch_size)]
        ).reshape(n, -1)
        refs, scale = _tarp_refs(pilot, n, references, g)
        return pass_.run(refs=refs, scale=scale)[2]

    closer, seconds = _run(flow, seed, body)
    res = _tarp_result(_jitter(closer, L, g), lv, L)
    res.seconds = seconds
    return res


def _tarp_result(f: Tensor, lv: Tensor, L: int) -> TARPResult:
    ecp = _ecdf(f, lv)
    area, signed, dmax = _areas(lv, ecp)
    return TARPResult(
        levels=lv,
        ecp=ecp,
        f=f,
        area=area,
        signed_area=signed,
        max_deviation=dmax,
        ks_pvalue=ks_uniform_pvalue(f),
        num_samples=L,
        n=f.numel(),
    )


def tarp_from_samples(
    samples, theta, *, references=None, levels=None, seed: int | None = 0
) -> TARPResult:
    """:func:`tarp` from posterior draws of any estimator (an ensemble, another library's).

    Args:
        samples: ``(L, N, *event)`` draws: ``L`` from the posterior of each of the ``N`` pairs
            (the layout of ``flow.sample(L, x)``).
        theta: ``(N, *event)`` the true parameters.
        references: ``(N, *event)``; default uniform over the box of the first draw of each
            posterior. The first draw of each pair sets that box and the distances' scale and
            is not counted, so that nothing the references depend on is ranked against them
            (counting it biased the curve upwards with few pairs and draws: 0.586 instead of
            0.5 for an exact posterior at N = 2, L = 3): ``L >= 2`` draws, ``L - 1`` of them
            ranked.
        levels: credibility levels (as :func:`hpd_coverage`).
        seed: seeds the references and the jitter.

    Example:
        >>> theta = torch.randn(100, 2)
        >>> draws = theta + torch.randn(50, 100, 2)  # L = 50 draws around each truth
        >>> ff.diagnostics.tarp_from_samples(draws, theta).n
        100
    """
    samples, theta = _tensor(samples, "samples"), _tensor(theta, "theta")
    if theta.dim() < 2 or samples.dim() != theta.dim() + 1:
        raise ValueError(
            f"expected theta of shape (N, *event) and samples (L, N, *event), got theta "
            f"{tuple(theta.shape)} and samples {tuple(samples.shape)}"
        )
    if tuple(samples.shape[1:]) != tuple(theta.shape):
        raise ValueError(
            f"samples {tuple(samples.shape)} do not match theta {tuple(theta.shape)}: expected "
            f"(L, {', '.join(map(str, theta.shape))})"
        )
    L, n = samples.shape[0], theta.shape[0]
    if L < 2:
        raise ValueError(
            f"expected at least 2 draws per pair (L >= 2: the first sets the references' box and "
            f"the scale, the others are ranked), got {L}"
        )
    if n < 2:
        raise ValueError(f"expected at least 2 pairs, got {n}")
    _finite(theta, "theta")
    _finite(samples.reshape(L * n, -1), "samples")
    seed, lv = _seed(seed), _levels(levels)
    g = _generator(seed)
    theta = theta.double().reshape(n, -1)
    s = samples.double().reshape(L, n, -1)
    if references is not None:
        references = _tensor(references, "references").double()
        if tuple(references.shape[:1]) != (n,) or references[0].numel() != theta.shape[1]:
            raise ValueError(
                f"expected references of the shape of theta, got {tuple(references.shape)}"
            )
        _finite(references, "references")
        references = references.reshape(n, -1)
    refs, scale = _tarp_refs(s[0], n, references, g)
    d_true = ((theta - refs) / scale).square().sum(-1)
    closer = (((s[1:] - refs) / scale).square().sum(-1) < d_true).sum(0)
    return _tarp_result(_jitter(closer, L - 1, g), lv, L - 1)


C2ST_EARLY_STOP_ROWS = 1000  # training rows per fold from which c2st's MLP stops early


def c2st(a, b, *, folds: int = 5, seed: int = 0, hidden=(64, 64), max_iter: int = 1000):
    """Classifier two-sample test (Lopez-Paz and Oquab 2017): can a classifier tell ``a`` from
    ``b``?

    Trains scikit-learn's ``MLPClassifier`` (inputs standardised on each training fold) to
    label rows as from ``a`` or ``b``, with stratified ``folds``-fold cross-validation, and
    returns the accuracy of the held-out predictions: about 0.5 (``chance``) when the two sets
    come from one distribution, towards 1 as they separate. Typical use: draws of the flow's
    posterior against reference posterior draws for the same ``x``.

    Args:
        a, b: ``(n_a, *event)`` and ``(n_b, *event)`` samples (tensors or arrays); each row is
            flattened.
        folds: cross-validation folds, >= 2 (each set needs at least ``folds`` rows).
        seed: seeds the folds' shuffling and the classifier.
        hidden: the MLP's hidden widths.
        max_iter: the MLP's iteration limit. With at least :data:`C2ST_EARLY_STOP_ROWS`
            training rows per fold it stops early on a held-out tenth; with fewer it trains to
            convergence (on small sets scikit-learn's early stopping, one batch per epoch, stops
            before the classifier has learnt anything and reports chance for any two sets).

    Raises:
        ValueError: rows of different sizes, NaN or inf, too few rows for the folds.
        ImportError: scikit-learn is missing (``pip install flowforge[diagnostics]``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 3
        >>> ff.diagnostics.c2st(a, b, folds=3).accuracy > 0.9
        True
    """
    a, b = _tensor(a, "a"), _tensor(b, "b")
    for t, what in ((a, "a"), (b, "b")):
        if t.dim() < 1 or t.shape[0] == 0:
            raise ValueError(f"expected {what} to hold rows (n, *event), got {tuple(t.shape)}")
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have rows of one size: got {a.shape[1]} and {b.shape[1]} values per row"
        )
    folds = _positive_int(folds, "folds", 2)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(f"expected seed to be an integer in [0, 2**32), got {seed!r}")
    max_iter = _positive_int(max_iter, "max_iter")
    if min(a.shape[0], b.shape[0]) < folds:
        raise ValueError(
            f"{folds}-fold cross-validation needs at least {folds} rows in each set, got "
            f"{a.shape[0]} and {b.shape[0]}"
        )
    _finite(a, "a")
    _finite(b, "b")
    try:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError("c2st needs scikit-learn: pip install flowforge[diagnostics]") from None
    import warnings

    t0 = time.perf_counter()
    data = torch.cat([a.double().cpu(), b.double().cpu()]).numpy()
    labels = np.concatenate([np.zeros(a.shape[0], int), np.ones(b.shape[0], int)])
    clf = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=tuple(int(h) for h in hidden),
            max_iter=max_iter,
            # (each fold trains on (folds - 1) / folds of the rows)
            early_stopping=(a.shape[0] + b.shape[0]) * (folds - 1) // folds >= C2ST_EARLY_STOP_ROWS,
            random_state=int(seed),
        ),
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (convergence warnings: the accuracy says enough)
        pred = cross_val_predict(clf, data, labels, cv=cv)
    right = pred == labels
    per_fold = [float(right[test].mean()) for _, test in cv.split(data, labels)]
    n = labels.size
    acc = float(right.mean())
    chance = max(a.shape[0], b.shape[0]) / n
    z = (acc - chance) / math.sqrt(chance * (1 - chance) / n)
    return C2STResult(
        accuracy=acc,
        fold_accuracies=per_fold,
        chance=chance,
        p_value=0.5 * math.erfc(z / math.sqrt(2)),
        n=n,
        folds=folds,
        seconds=time.perf_counter() - t0,
    )
