r"""Training objectives and evaluation metrics.

All of them count every preprocessing step (dequantization, logit, standardisation): the flow
keeps those as layers, so the numbers are in the data's own units and compare with papers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ._util import all_finite, checked_int, restore_modes, training_modes, warn
from .core import Flow, NaNLogProb, NonFiniteSamples, _narrows, precision_lost
from .transforms.dequantization import UniformDequantization
from .transforms.iresnet import EXACT_LOGDET_MAX

__all__ = [
    "forward_kl",
    "reverse_kl",
    "nll",
    "log_likelihoods",
    "finite_log_prob",
    "bits_per_dim",
    "nll_to_bits_per_dim",
    "check_log_prob",
    "target_name",
    "ZeroDensity",
    "log_importance_weights",
    "effective_sample_size",
    "pareto_k",
    "importance_log_z",
    "vi_diagnostics",
]


def target_name(target) -> str:
    """A readable name for a target callable: its ``name``, its ``__name__``, or its repr."""
    name = getattr(target, "name", None) or getattr(target, "__name__", None)
    return str(name) if name else repr(target)


def _check_target(target_log_prob) -> None:
    """A TypeError unless the target is callable (a function ``x -> log p~(x)``)."""
    if not callable(target_log_prob):
        raise TypeError(
            "expected target_log_prob to be a callable, x -> unnormalised log-density (e.g. "
            f"flowforge.targets.get('banana')), got {type(target_log_prob).__name__}"
        )


def check_log_prob(log_p, x: Tensor, name: str, zero: Tensor | None = None) -> Tensor:
    """Check a target's output for ``x`` of shape ``(*batch, dim)``: a tensor of shape
    ``(*batch,)`` with no NaN and no ``+inf`` (``-inf``, zero density, is allowed). Raises a
    ``ValueError`` naming the target; returns ``log_p`` unchanged. ``zero``: a tensor of one
    element set to whether ``log_p`` is ``-inf`` anywhere, read with the NaN check (one read
    from the device for both)."""
    want = tuple(x.shape[:-1])
    if not isinstance(log_p, Tensor):
        raise ValueError(
            f"target {name!r} returned {type(log_p).__name__}, expected a tensor of shape {want}"
        )
    if tuple(log_p.shape) != want:
        raise ValueError(
            f"target {name!r} returned log-densities of shape {tuple(log_p.shape)} for x of "
            f"shape {tuple(x.shape)}; expected shape {want} (one value per point)"
        )
    bad = torch.isnan(log_p) | (log_p == float("inf"))
    if zero is None:
        any_bad = bool(bad.any())
    else:  # (one read from the device for both)
        any_bad, any_zero = torch.stack([bad.any(), (log_p == -math.inf).any()]).tolist()
        zero.fill_(any_zero)
    if any_bad:
        first = bad.reshape(-1).nonzero()[0].item()
        point = x.reshape(-1, x.shape[-1])[first].tolist()
        raise ValueError(
            f"target {name!r} returned NaN or +inf for {int(bad.sum())} of {bad.numel()} "
            f"points (first at x = {[round(v, 4) for v in point]}; a log of a negative "
            "parameter? a target on a bounded or positive space takes a flow mapped into it: "
            "ff.models.bounded(flow, lower, upper))"
        )
    return log_p


class ZeroDensity(ValueError):
    """A target whose log-density is ``-inf`` (zero density) at some of the flow's samples,
    where the reverse KL is infinite: ``count`` of ``n`` samples."""

    def __init__(self, name: str, count: int, n: int, x: Tensor, zero: Tensor):
        self.name, self.count, self.n, self.dim = name, count, n, x.shape[-1]
        first = x.reshape(-1, x.shape[-1])[zero.reshape(-1).nonzero()[0].item()].tolist()
        self.first = [round(v, 4) for v in first]
        super().__init__(
            f"target {name!r}: its log-density is -inf (zero density) at {count} of {n} of the "
            f"flow's samples (first at x = {self.first}): {self.remedy}"
        )

    @property
    def remedy(self) -> str:
        return (
            f"a flow on R^{self.dim} trained by reverse KL needs a target positive everywhere "
            "(the KL is infinite otherwise); map the flow into the target's support with "
            "ff.models.bounded(flow, lower, upper), or reparameterise the target (e.g. the log "
            "or logit of bounded coordinates, adding the log-Jacobian to the log-density), or, "
            "where the density is positive but underflowed, compute its log stably"
        )


def forward_kl(flow: Flow, x: Tensor, context: Tensor | None = None) -> Tensor:
    """Maximum likelihood: ``-mean log p(x)``, equal to KL(data || flow) up to a constant."""
    return -flow.log_prob(x, context).mean()


def reverse_kl(
    flow: Flow,
    target_log_prob: Callable[..., Tensor],
    n: int,
    context: Tensor | None = None,
) -> Tensor:
    r"""Monte-Carlo ``KL(q || p)`` up to the target's unknown ``log Z``: ``E_q[log q - log p~]``.

    ``target_log_prob(x)`` is the unnormalised log-density of the target (it gets ``x`` and,
    when a context is given, ``(x, context)``). The result is ``-ELBO``, differentiable through
    :meth:`Flow.rsample_and_log_prob`; for a mixture base, whose component choice is discrete,
    a score-function term with a leave-one-out baseline (zero in value) gives the mixture
    weights their gradient, which the reparameterised samples cannot. Samples that overflow
    the flow's dtype raise :class:`~flowforge.core.NonFiniteSamples` (the workbench's trainer
    skips such a step); a target of ``-inf`` (zero density) at any sample raises
    :class:`ZeroDensity` (a ``ValueError``): the KL is infinite there, and a flow on ``R^D``
    cannot be trained by it.
    """
    _check_target(target_log_prob)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"expected a number of samples n >= 1, got {n!r}")
    if context is not None and context.dim() > 1 and not context.shape[0]:
        raise ValueError("expected at least one context row, got none")
    inner = getattr(flow, "_orig_mod", flow)  # (torch.compile's wrapper: its own Flow)
    if isinstance(inner, Flow):  # choice: the log-probability of a mixture base's draws
        x, log_q, choice = inner._rsample(n, context, log_q_checked=True)
    else:  # (any object with the method)
        (x, log_q), choice = flow.rsample_and_log_prob(n, context), None
    if not all_finite(x):  # the flow's own samples overflowed (training mode lets them through)
        count = int((~torch.isfinite(x)).sum())
        broken = inner.broken_tensor() if isinstance(inner, Flow) else None
        raise NonFiniteSamples(
            f"the flow's samples are NaN or infinite ({count} values): {broken}"
            if broken is not None
            else f"the flow's samples are NaN or infinite ({count} values; its inverse "
            "overflowed, not the target: a lower learning rate, or sample in float64)"
        )
    if context is None:
        log_p = target_log_prob(x)
    else:
        log_p = target_log_prob(x, context.expand(n, *context.shape))
    # a NaN or a wrong shape here would broadcast or poison the loss silently
    said = torch.zeros((), dtype=torch.bool)  # (-inf anywhere: read with the NaN check)
    log_p = check_log_prob(log_p, x, target_name(target_log_prob), zero=said)
    # (an infinite loss, and NaN gradients: no step can be taken; read on every device, as
    # the NaN check is: on a GPU the loss would be inf and the steps skipped silently)
    if bool(said):
        zero = log_p == -math.inf
        raise ZeroDensity(target_name(target_log_prob), int(zero.sum()), zero.numel(), x, zero)
    if torch.is_grad_enabled() and x.requires_grad and not log_p.requires_grad:
        raise ValueError(
            f"target {target_name(target_log_prob)!r} returned log-densities without a gradient "
            "with respect to x (detached, computed in numpy or under torch.no_grad): the "
            "reverse KL trains the flow through that gradient; compute the target with torch "
            "operations on x"
        )
    f = log_q - log_p
    loss = f.mean()
    if choice is not None and choice.requires_grad:
        # the score-function term of a discrete choice (a mixture base's component), which the
        # reparameterised samples cannot carry: (f - b) d log P(choice), with the other
        # samples' mean as b (a leave-one-out baseline keeps it unbiased; none for n = 1); its
        # value is zero
        fd = f.detach()
        baseline = (fd.sum(0, keepdim=True) - fd) / (n - 1) if n > 1 else 0.0
        loss = loss + ((fd - baseline) * (choice - choice.detach())).mean()
    return loss


def nll_to_bits_per_dim(nll_nats: Tensor | float, dims: int) -> Tensor | float:
    """Convert a per-example NLL in nats to bits per dimension (``dims``: the dimensions of
    one example, an integer >= 1)."""
    return nll_nats / (checked_int("dims", dims) * math.log(2))


@torch.no_grad()
def log_likelihoods(
    flow: Flow, x: Tensor, context: Tensor | None = None, batch_size: int = 1024, dequantizer=None
) -> Tensor:
    """Each example's log-density (float64, shape ``(N,)``), in eval mode without grad and
    in batches of ``batch_size``; a ``ValueError`` names the examples whose log-density is not
    finite, so a NaN or ``-inf`` never comes back.

    Example:
        >>> import flowforge as ff
        >>> ff.objectives.log_likelihoods(ff.models.MAF(features=3), torch.randn(5, 3)).shape
        torch.Size([5])
    """
    _scored(flow)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size to be a positive integer, got {batch_size!r}")
    if not isinstance(x, Tensor):
        raise TypeError(
            f"expected x to be a torch.Tensor, got {type(x).__name__} (a numpy array: "
            "torch.as_tensor(x))"
        )
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError("expected at least one example, got an empty tensor")
    if (
        isinstance(flow, Flow)
        and flow._validating(x)
        and _narrows(x.dtype, flow.dtype)
        and x.shape[0] > 1
        and (not x.is_floating_point() or all_finite(x))
    ):  # the whole data at hand: lost precision is refused, not warned of once per flow
        said = precision_lost(x, flow.dtype)
        if said is not None:
            raise ValueError(f"x {said}")
    rows = isinstance(context, Tensor) and context.dim() > 1  # (a (c,) context: every row's)
    if rows and context.shape[0] != x.shape[0]:
        raise ValueError(
            f"context has {context.shape[0]} rows and x {x.shape[0]}; expected one each"
        )
    was_training = training_modes(flow)
    flow.eval()
    try:
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            cb = context[i : i + batch_size] if rows else context
            if dequantizer is not None:
                if not xb.is_floating_point():  # integer pixel values: the noise is a float
                    xb = xb.to(flow.dtype)
                xb, _ = dequantizer(xb)
            out.append(finite_log_prob(flow, xb, cb, i))
        return torch.cat(out)
    finally:
        restore_modes(was_training)


def _scored(model) -> None:
    """A ``TypeError`` for a model whose ``log_prob`` is not a log-density in ``R^D`` (an
    augmented flow's bound, an M-flow's density on its manifold): it says what to call."""
    why = getattr(type(model), "not_a_density", None)
    if why:
        raise TypeError(f"{type(model).__name__} is not a flow with a density on R^D: {why}")


def finite_log_prob(flow: Flow, x: Tensor, context: Tensor | None, first: int = 0) -> Tensor:
    """``flow.log_prob(x, context)`` in float64, or a ``ValueError`` that names the examples
    whose log-density is NaN or infinite, counting ``x``'s first row as index ``first``."""
    where = "they lie where it cannot score them (e.g. far outside the training data's range)"
    try:
        lp = flow.log_prob(x, context).double()
    except NaNLogProb as e:  # (the batch as computed: its NaN rows are scored again below)
        if e.lp is None:
            idx = [r + first for r in e.rows]
            raise ValueError(
                f"the model gives a NaN log-density to example(s) at indices {idx}: {where}"
            ) from None
        lp = e.lp.detach().double()
    bad = ~torch.isfinite(lp)
    if bad.any():
        again = _in_float64(flow, x, context, bad.nonzero().flatten().tolist(), lp)
        if again is not None:
            return again
        idx = (bad.nonzero().flatten()[:5] + first).tolist()  # (rows counted from `first`)
        broken = flow.broken_tensor() if isinstance(flow, Flow) else None
        if bool(lp[bad].isnan().any()):
            raise ValueError(
                f"the model gives a NaN log-density to example(s) at indices {idx}: "
                f"{broken or where}"
            )
        raise ValueError(
            f"the model gives a non-finite log-density ({lp[bad][0].item()}) to "
            f"{int(bad.sum())} example(s), first at indices {idx}: {broken or where}"
        )
    return lp


def _in_float64(flow, x: Tensor, context, rows: list[int], lp: Tensor):
    """``lp``, the batch's log-densities, with the ``rows`` a float32 flow could not score
    (an overflow far from the data: NaN, or an infinity) scored again by a float64 copy of
    the flow, as ``flow.double()`` would; None when that is no help (the flow is float64
    already, is not a :class:`Flow` of plain float32, or those rows stay non-finite)."""
    import copy

    if (
        not isinstance(flow, Flow)
        or flow.dtype != torch.float32
        or not rows
        or torch.is_grad_enabled()  # (a copy's numbers carry no gradient to the flow's)
        or flow.training
    ):
        return None
    idx = torch.as_tensor(rows, device=x.device)
    xr = x[idx].double() if x.is_floating_point() else x[idx]
    cr = context[idx].double() if isinstance(context, Tensor) and context.dim() > 1 else context
    if isinstance(cr, Tensor) and cr.dim() <= 1:
        cr = cr.double()
    try:  # (a best effort: a layer that computes in float32 whatever its input is fails here)
        wide = copy.deepcopy(flow).double().eval()
        for m in wide.modules():  # (a caller's hooks, e.g. evaluation counting, not twice)
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        again = wide.log_prob(xr, cr).double()
    except Exception:
        return None
    if not bool(torch.isfinite(again).all()):
        return None
    out = lp.clone()
    out[idx] = again.to(out.device)
    return out


def _mean_log_prob(flow, x, context, batch_size, dequantizer=None) -> float:
    return log_likelihoods(flow, x, context, batch_size, dequantizer).mean().item()


def nll(flow: Flow, x: Tensor, context: Tensor | None = None, batch_size: int = 1024) -> float:
    """Mean negative log-likelihood in nats per example, evaluated in eval mode without grad.

    Finite, or a ``ValueError`` naming the examples the model cannot score."""
    return -_mean_log_prob(flow, x, context, batch_size)


def bits_per_dim(
    flow: Flow,
    x: Tensor,
    context: Tensor | None = None,
    levels: int | None = None,
    batch_size: int = 1024,
) -> float:
    """Mean NLL of discrete data in bits per dimension.

    ``x`` holds integers in ``[0, levels - 1]``. An integer flow (IDF) scores them exactly. If
    the flow has a dequantizer, it is used (and ``levels``, if given, must match it); otherwise
    ``x`` is dequantized here with
    ``U[0, 1)`` noise on its own scale. The result is per example, then averaged:
    ``-E[log p(x + u)] / (D ln 2)``, a bound on the discrete bits/dim.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.RealNVP(features=4, layers=2, levels=17)
        >>> x = torch.randint(0, 17, (32, 4)).float()
        >>> bpd = ff.bits_per_dim(flow, x, levels=17)
    """
    _scored(flow)
    deq = None
    exact = getattr(flow, "levels", None)  # an integer flow (IDF): an exact discrete model
    if flow.dequantizer is None and isinstance(exact, int):
        if levels is not None and levels != exact:
            raise ValueError(f"the flow models {exact} levels, but levels={levels} was given")
    elif flow.dequantizer is not None:
        have = flow.dequantizer.levels
        if have is None:  # some integer columns among continuous ones: no bits per dimension
            raise ValueError(
                "bits/dim is defined for discrete data; this flow dequantizes some integer "
                "columns of otherwise continuous vectors (use flow.nll in nats)"
            )
        if levels is not None and levels != have:
            raise ValueError(f"the flow dequantizes {have} levels, but levels={levels} was given")
    elif levels is None:
        raise ValueError(
            "bits/dim needs discrete data: pass levels=K, or build the flow with levels=K"
        )
    else:
        deq = UniformDequantization(levels)
    return -_mean_log_prob(flow, x, context, batch_size, deq) / (flow.dims * math.log(2))


# -- variational-inference diagnostics --------------------------------------------------------


@torch.no_grad()
def log_importance_weights(
    flow: Flow,
    target_log_prob: Callable[..., Tensor],
    n: int,
    context: Tensor | None = None,
    batch_size: int = 8192,
) -> Tensor:
    r"""``log w = log p~(x) - log q(x)`` for ``n`` samples ``x ~ q`` (the flow), no gradient.

    ``log q`` is the flow's exact log-density: a CNF's Hutchinson trace and a residual flow's
    Russian-roulette log-determinant (random, unbiased estimates, which training can use) are
    replaced by the exact ones for the call (an estimate inside ``log w`` biases ``log Z``
    and the ESS, however many samples). Returns ``(n,)`` (``(n, B)`` with a ``(B, c)``
    context), in float64.
    """
    _check_target(target_log_prob)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"expected a number of samples n >= 1, got {n!r}")
    if context is not None and context.dim() > 1 and not context.shape[0]:
        raise ValueError("expected at least one context row, got none")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size to be an integer >= 1, got {batch_size!r}")
    out = []
    with _exact_densities(flow) as exact:
        if exact:  # (an exact log-determinant holds a (batch, D, D) Jacobian per block)
            batch_size = min(batch_size, 1024)
        for i in range(0, n, batch_size):
            out.append(_log_weights(flow, target_log_prob, min(batch_size, n - i), context))
    return torch.cat(out)


def _log_weights(flow, target_log_prob, m: int, context) -> Tensor:
    """One batch of :func:`log_importance_weights`: ``m`` samples' ``log p~ - log q``."""
    x, log_q = flow.rsample_and_log_prob(m, context)
    log_p = (
        target_log_prob(x)
        if context is None
        else target_log_prob(x, context.expand(m, *context.shape))
    )
    log_p = check_log_prob(log_p, x, target_name(target_log_prob))
    return (log_p - log_q).double()


@contextlib.contextmanager
def _exact_densities(flow) -> Iterator[bool]:
    """For the block: every CNF's trace exact and every residual block's log-determinant
    exact (their random estimates are unbiased for a loss, not inside a log-weight); yields
    whether a residual block computes its log-determinant exactly (its Jacobian's memory
    bounds the caller's batch). A residual block wider than ``EXACT_LOGDET_MAX``
    keeps its estimate (its exact log-determinant costs D passes and a (batch, D, D)
    Jacobian), said in a warning: its log-weights carry the estimate's bias."""
    from .transforms.continuous import CNF
    from .transforms.iresnet import ResidualBlock

    saved, wide = [], 0
    for m in flow.modules():
        if isinstance(m, CNF) and m.trace != "exact":
            saved.append((m, "trace", m.trace))
            m.trace = "exact"
        elif isinstance(m, ResidualBlock) and m._method() != "exact":
            if m.features > EXACT_LOGDET_MAX:
                wide += 1
                continue
            saved.append((m, "estimator", m.estimator))
            m.estimator = "exact"
    if wide:
        warn(
            f"{wide} residual block(s) wider than {EXACT_LOGDET_MAX} keep their Russian-roulette "
            "log-determinant: importance weights, log Z and the ESS carry its bias",
            RuntimeWarning,
        )
    try:  # (an exact block, switched or exact already: "auto" is in eval mode up to 128)
        yield any(isinstance(m, ResidualBlock) and m._method() == "exact" for m in flow.modules())
    finally:
        for m, k, v in saved:
            setattr(m, k, v)


def effective_sample_size(log_w: Tensor) -> float:
    r"""Normalised effective sample size ``(sum w)² / (n sum w²)`` of importance weights given as
    ``log w`` over the first dimension, in ``(0, 1]``: 1 when ``q`` matches the target."""
    log_w = _checked_log_w(log_w)
    if bool((log_w == -math.inf).all(0).any()):
        raise ValueError("every importance weight is zero (log w = -inf): the ESS is undefined")
    n = log_w.shape[0]
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / n
    return ess.mean().item()


PARETO_K_VARIANCE = 0.5  # above it the weights' variance is infinite: no standard error
PARETO_K_RELIABLE = 0.7  # above it an importance-sampled estimate is unreliable


def pareto_k(log_w: Tensor) -> float | None:
    r"""The shape ``k`` of a generalised Pareto distribution fitted to the largest importance
    weights (the tail diagnostic of Pareto-smoothed importance sampling, Vehtari, Simpson,
    Gelman, Yao & Gabry 2024): the weights have ``1 / k`` finite moments, so for ``k > 0.5``
    their variance is infinite (the standard error of ``log Z`` and the ESS are meaningless:
    they come from the same heavy tail), and for ``k > 0.7`` an importance-sampled estimate is
    unreliable at any practical ``n``. It flags a flow narrower than its target (what reverse
    KL tends to fit), which the ESS can miss.

    ``log_w``: ``(n, ...)``; with more dimensions, each column's ``k`` and the largest is
    returned. The tail is the ``M = min(n / 5, 3 sqrt(n))`` largest weights; the fit is Zhang &
    Stephens' (2009) quick posterior-mean estimate, shrunk towards 0.5 as a weak prior (as in
    the paper). None where a column has fewer than 25 non-zero weights (too few for a tail).
    """
    import numpy as np

    log_w = _checked_log_w(log_w).detach().cpu()  # (a flow's on a GPU, with gradients)
    ks = []
    for col in log_w.T.numpy():
        k = _tail_shape(np.sort(col[np.isfinite(col)]))
        if k is None:
            return None
        ks.append(k)
    return max(ks)


def _tail_shape(lw) -> float | None:
    """The generalised Pareto shape of the tail of sorted log weights ``lw`` (see
    :func:`pareto_k`)."""
    import numpy as np

    n = len(lw)
    m_tail = int(min(0.2 * n, 3 * math.sqrt(n)))
    if m_tail < 5:
        return None
    w = np.exp(lw - lw[-1])  # (the shape does not depend on the weights' scale)
    x = w[-m_tail:] - w[-m_tail - 1]  # exceedances over the threshold, ascending
    x = x[x > 0]
    if len(x) < 5:  # the largest weights are all equal: no tail at all
        return 0.0
    # Zhang & Stephens: the profile likelihood of theta = -k / sigma over a grid of candidate
    # thetas, the posterior mean of theta under it, and the shape that theta gives
    t, grid = len(x), 30 + int(math.sqrt(len(x)))
    quartile = x[max(0, int(t / 4 + 0.5) - 1)]
    j = np.arange(1, grid + 1)
    theta = 1 / x[-1] + (1 - np.sqrt(grid / (j - 0.5))) / (3 * quartile)
    with np.errstate(divide="ignore", invalid="ignore"):
        shape = -np.log1p(-theta[:, None] * x[None, :]).mean(1)  # (their k: minus the shape)
        profile = t * (np.log(theta / shape) + shape - 1)
    keep = np.isfinite(profile)
    if not keep.any():
        return None
    theta, profile = theta[keep], profile[keep]
    weights = np.exp(profile - profile.max())  # (the posterior over the grid, normalised)
    weights /= weights.sum()
    theta_hat = float((theta * weights).sum())
    k = float(np.log1p(-theta_hat * x).mean())
    return (t * k + 10 * 0.5) / (t + 10)  # the weak prior towards 0.5, worth 10 weights


def importance_log_z(log_w: Tensor) -> float:
    r"""The importance-sampling estimate ``log (1/n sum w)`` of the target's ``log Z``. Its
    exponential is unbiased for ``Z``; the log is biased low by about ``var(w) / (2 n Z²)``."""
    log_w = _checked_log_w(log_w)
    return (torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).mean().item()


def _checked_log_w(log_w: Tensor) -> Tensor:
    """``log_w`` as float64 ``(n, -1)``, or a ValueError: none given, NaN or ``+inf`` among them
    (``-inf``, a weight of zero, is a weight)."""
    log_w = torch.as_tensor(log_w)
    if not log_w.numel() or log_w.dim() == 0:
        raise ValueError("expected at least one importance weight (shape (n, ...)), got none")
    log_w = log_w.double().reshape(log_w.shape[0], -1)
    if bool(torch.isnan(log_w).any()) or bool((log_w == math.inf).any()):
        raise ValueError("the log importance weights hold NaN or +inf; expected finite or -inf")
    return log_w


LOW_ESS = 0.1  # below it, the importance-sampled log Z is said to be unreliable


def vi_diagnostics(
    flow: Flow,
    target_log_prob: Callable[..., Tensor],
    n: int = 10000,
    context: Tensor | None = None,
    batch_size: int = 8192,
) -> dict:
    r"""ELBO, reverse KL up to ``log Z``, the importance-sampled ``log Z`` and the normalised ESS.

    With ``log w = log p~ - log q`` on ``n`` samples of the flow:

    - ``elbo = mean log w`` (a lower bound on ``log Z``), ``reverse_kl = -elbo``
      (``KL(q || p) - log Z``), with its Monte-Carlo standard error ``elbo_se`` (None for
      ``n = 1``); with a ``(B, c)`` context, the mean over the contexts' ELBOs and the error
      of that mean, and ``n`` is the number of samples per context;
    - ``log_z = log mean w`` (:func:`importance_log_z`), with ``log_z_se``, the delta-method
      standard error of the log of the mean weight, ``sd(w) / (sqrt(n) mean w) =
      sqrt((1/ESS - 1) / (n - 1))`` (None for ``n = 1``; with contexts, the error of the mean
      over them). It is itself estimated from the weights: where the ESS is low it is
      unreliable too, and it cannot see mass the flow never samples;
    - ``ess = (sum w)² / (n sum w²)`` (:func:`effective_sample_size`); below ``LOW_ESS``
      (0.1) a line in ``warnings`` says the importance-sampled ``log Z`` is unreliable;
    - ``pareto_k``, the tail shape of the largest weights (:func:`pareto_k`; None for fewer
      than 25 samples): above 0.5 the weights' variance is infinite, so ``log_z_se`` and the
      ESS understate the error (the ESS comes from the same heavy tail and can look fine), and
      above 0.7 ``log_z`` itself is unreliable; ``warnings`` says which. A flow narrower than
      its target, what reverse KL tends to fit, gives such a tail.

    The true ``KL(q || p) = log Z - elbo``; it needs ``log Z`` from elsewhere (a grid for 2-D
    targets, :func:`flowforge.targets.grid_log_z`).

    A target of ``-inf`` (zero density) at some samples gives them a weight of zero: ``log_z``
    and ``ess`` stay right, but the flow puts mass where the target has none, so the ELBO is
    ``-inf`` (and ``reverse_kl`` ``+inf``, ``elbo_se`` None): ``zero_density`` counts those
    samples (over all contexts), and ``warnings`` (a list of strings, empty when all is well)
    says so, as does a ``RuntimeWarning``.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.Planar(features=2, layers=2)
        >>> d = ff.objectives.vi_diagnostics(flow, ff.targets.get("banana"), n=500)
        >>> print(*sorted(d))
        elbo elbo_se ess log_z log_z_se n pareto_k reverse_kl warnings zero_density
    """
    was_training = training_modes(flow)
    flow.eval()
    try:
        log_w = log_importance_weights(flow, target_log_prob, n, context, batch_size)
    finally:
        restore_modes(was_training)
    # the target's NaN and +inf were refused above: these are the flow's log-densities
    bad = torch.isnan(log_w) | (log_w == math.inf)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {log_w.numel()} importance weights are NaN or +inf (the "
            "flow's log-density at its own samples is NaN or -inf: it has diverged)"
        )
    zero = int((log_w == -math.inf).sum())
    per = log_w.reshape(log_w.shape[0], -1)
    empty = (per == -math.inf).all(0)  # (per context: every sample at zero density)
    if empty.any():
        which = "" if per.shape[1] == 1 else f" for context {int(empty.nonzero()[0, 0])}"
        raise ValueError(
            f"the target's log-density is -inf (zero density) at all {per.shape[0]} of the "
            f"flow's samples{which}: every importance weight is zero, so log Z, the ESS and the "
            "ELBO are undefined (the flow puts no mass where the target has any)"
        )
    warnings = []
    if zero:
        warnings.append(
            f"the ELBO is -inf: the target's log-density is -inf (zero density) at {zero} of "
            f"{log_w.numel()} of the flow's samples, so the flow puts mass where the target has "
            "none (KL(q || p) is infinite; log Z and the ESS count those samples as weight 0)"
        )
        warn(warnings[-1])
        elbo, se = -math.inf, None
    else:
        elbo = log_w.mean().item()
        # the mean over contexts of each context's mean: its error adds the contexts' sampling
        # variances (the spread between contexts' ELBOs is not noise); one draw: no error
        se = None
        if per.shape[0] > 1:
            se = (per.var(0).sum() / per.shape[0]).sqrt().item() / per.shape[1]
    ess = effective_sample_size(log_w)
    if ess < LOW_ESS:
        warnings.append(
            f"the ESS is {ess:.3f} (below {LOW_ESS}): a few samples carry the importance "
            "weights, so the importance-sampled log Z (and its standard error) is unreliable"
        )
    k = pareto_k(log_w)
    if k is not None and k > PARETO_K_RELIABLE:
        warnings.append(
            f"the importance weights have a heavy tail (Pareto k {k:.2f}, above "
            f"{PARETO_K_RELIABLE}): the flow is narrower than the target somewhere, so the "
            "importance-sampled log Z, its standard error and the ESS are unreliable"
        )
    elif k is not None and k > PARETO_K_VARIANCE:
        warnings.append(
            f"the importance weights' tail has infinite variance (Pareto k {k:.2f}, above "
            f"{PARETO_K_VARIANCE}): the flow is narrower than the target somewhere, so the "
            "standard error of the importance-sampled log Z (and the ESS) understates its "
            "error, and the estimate converges slowly"
        )
    log_z_se = None
    if per.shape[0] > 1:  # the delta method on log mean w, per context: sqrt((1/ESS - 1)/(n - 1))
        m = per.shape[0]
        ess_b = torch.exp(2 * torch.logsumexp(per, 0) - torch.logsumexp(2 * per, 0)) / m
        var_b = ((1 / ess_b - 1).clamp(min=0) / (m - 1)).sum()
        log_z_se = var_b.sqrt().item() / per.shape[1]
    return {
        "elbo": elbo,
        "elbo_se": se,
        "reverse_kl": -elbo,
        "log_z": importance_log_z(log_w),
        "log_z_se": log_z_se,
        "ess": ess,
        "pareto_k": k,
        "n": int(per.shape[0]),
        "zero_density": zero,
        "warnings": warnings,
    }
