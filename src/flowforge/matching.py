r"""Flow matching for continuous normalizing flows: training without an ODE solve, then exact
likelihoods and sampling through the ODE.

A :class:`~flowforge.transforms.CNF` maps data to noise by integrating ``dz/dt = f(t, z, c)``
from ``t = 0`` (data) to ``t = T`` (noise). Conditional flow matching (Lipman et al. 2023;
rectified flow, Liu et al. 2023; OT-CFM, Tong et al. 2024) regresses ``f`` onto the velocity of
a path between a data point ``y`` and a base draw ``e``, at a random time ``s ~ U[0, 1]``:

* ``"linear"`` (the optimal-transport / rectified-flow path):
  ``x_s = (1 - s) y + s e``, velocity ``e - y``;
* ``"vp"`` (variance preserving, the trigonometric path):
  ``x_s = cos(pi s / 2) y + sin(pi s / 2) e``, velocity
  ``pi / 2 (cos(pi s / 2) e - sin(pi s / 2) y)``.

The loss is ``mean ||f(s T, x_s, c) - velocity / T||^2`` (per dimension): one network pass per
example, no solver, no trace. ``sigma > 0`` adds ``N(0, sigma^2)`` noise to ``x_s`` (I-CFM);
``ot=True`` pairs the batch's data and noise by an exact minimum-cost assignment of squared
distances (mini-batch OT-CFM) before the paths are drawn. ``times`` chooses the distribution
of ``s`` (:func:`sample_times`): uniform (the default), logit-normal (Esser et al. 2024), or
``s = u ** power`` (``power > 1`` puts more of the regression near the data end, ``s = 0``).

The flow must end in its one CNF: transforms before it (preprocessing, a data-initialised
ActNorm) are applied without gradients, the base must be fixed (its samples are the path's
noise) and a dequantizer must have no parameters (uniform dequantization).

After training, the flow is an ordinary :class:`~flowforge.Flow`: :func:`log_likelihood` scores
data through the ODE with the exact divergence (``D`` vector-Jacobian products per evaluation)
or Hutchinson's estimate (one noise draw held fixed along each trajectory, unbiased for
``log p``), and reports the solver, tolerances and function evaluations; for discrete data it
returns the importance-weighted dequantization bound with ``K`` samples. :func:`sample` draws
with an adaptive or a fixed-step solver (``steps=``). :func:`solver` sets a flow's solver
temporarily, every value checked.

Example:
    >>> import flowforge as ff
    >>> from flowforge.matching import FlowMatching, log_likelihood
    >>> flow = ff.models.build("cnf", features=2, hidden=(16, 16))
    >>> loss = FlowMatching()(flow, torch.randn(64, 2))
    >>> loss.backward()
    >>> result = log_likelihood(flow, torch.randn(8, 2))
    >>> result.log_prob.shape, result.nfe > 0
    (torch.Size([8]), True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from ._util import fork_rng, restore_modes, training_modes, warn
from .core import Compose, DataInit, Flow, Transform
from .objectives import finite_log_prob
from .transforms.continuous import (
    _FIXED,
    CNF,
    MAX_STEPS,
    _check_max_steps,
    _check_tolerance,
    grid_steps,
    ode_methods,
)

__all__ = [
    "PATHS",
    "TIMES",
    "sample_times",
    "FlowMatching",
    "flow_matching_loss",
    "split_flow",
    "assignment",
    "ot_pairing",
    "solver",
    "nfe",
    "Likelihood",
    "log_likelihood",
    "sample",
]

PATHS = ("linear", "vp")
TIMES = ("uniform", "logit-normal", "power")


# -- the flow's parts ----------------------------------------------------------------------------


def _flatten(t: Transform) -> list[Transform]:
    if isinstance(t, Compose):
        return [leaf for layer in t.layers for leaf in _flatten(layer)]
    return [t]


def _trainable(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters())


def split_flow(flow) -> tuple[list[Transform], CNF]:
    """``(before, cnf)``: the transforms before a flow's one CNF, and the CNF.

    Raises ValueError, naming what is wrong, unless ``flow`` is a :class:`~flowforge.Flow`
    whose transform ends in exactly one :class:`~flowforge.transforms.CNF`, the transforms
    before it are fixed (no trainable parameters) or data-initialised (ActNorm), its base has
    no trainable parameters and its dequantizer (if any) has none either.
    """
    if not isinstance(flow, Flow):
        raise ValueError(
            "flow matching trains a flowforge Flow that ends in a CNF (e.g. "
            f"ff.models.build('cnf', features=...)), got {type(flow).__name__}"
        )
    layers = _flatten(flow.transform)
    where = [i for i, layer in enumerate(layers) if isinstance(layer, CNF)]
    if len(where) == 1 and where[0] == len(layers) - 1:
        names = ""  # the usual case: the names are only for the errors below
    else:
        names = ", ".join(type(layer).__name__ for layer in layers)
    if not where:
        raise ValueError(
            "flow matching needs a continuous flow (a CNF, e.g. the 'cnf' or 'ffjord' model); "
            f"this flow has no CNF (its layers: {names}); train it by maximum likelihood"
        )
    if len(where) > 1:
        raise ValueError(
            f"flow matching trains one CNF; this flow has {len(where)} (layers: {names}): "
            "build it with blocks=1"
        )
    if where[0] != len(layers) - 1:
        raise ValueError(
            "flow matching needs the CNF to be the flow's last transform (its output is the "
            f"base's noise); after it come: {', '.join(names.split(', ')[where[0] + 1 :])}"
        )
    before = layers[:-1]
    for layer in before:
        if not isinstance(layer, DataInit) and _trainable(layer):
            raise ValueError(
                f"flow matching trains only the CNF, but {type(layer).__name__} before it has "
                "trainable parameters (only fixed or data-initialised layers may precede it)"
            )
    if _trainable(flow.base):
        raise ValueError(
            f"flow matching needs a fixed base (its samples are the paths' noise), but "
            f"{type(flow.base).__name__} has trainable parameters: use the normal base "
            "(base='normal'; on the command line, --base normal)"
        )
    if flow.dequantizer is not None and _trainable(flow.dequantizer):
        raise ValueError(
            "flow matching cannot train a variational dequantizer: use dequantization='uniform'"
        )
    return before, layers[-1]


# -- the exact assignment for mini-batch OT ------------------------------------------------------


def assignment(cost) -> np.ndarray:
    """The minimum-cost perfect matching of a square cost matrix: ``perm`` with
    ``sum(cost[i, perm[i]])`` minimal. Exact (scipy's ``linear_sum_assignment``, which
    torchdiffeq, the ODE extra, already requires)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ModuleNotFoundError:
        raise ImportError(
            "the exact assignment (mini-batch optimal transport) needs scipy: pip install "
            "'flowforge[ode]'"
        ) from None

    a = np.asarray(cost, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"expected a square cost matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("the cost matrix has NaN or inf entries")
    rows, cols = linear_sum_assignment(a)
    perm = np.empty(a.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def ot_pairing(y: Tensor, e: Tensor) -> Tensor:
    """``e`` reordered so that ``sum ||y_i - e_i||^2`` is minimal over the batch (exact)."""
    if y.dim() < 2 or e.shape != y.shape:
        raise ValueError(
            "ot_pairing pairs two batches of the same shape (n, ...), got "
            f"{tuple(y.shape)} and {tuple(e.shape)}"
        )
    if y.shape[0] < 2:  # the only pairing
        return e
    cost = torch.cdist(y.detach().flatten(1).double(), e.detach().flatten(1).double()) ** 2
    perm = assignment(cost.cpu().numpy())
    return e[torch.as_tensor(perm, device=e.device)]


# -- the loss ------------------------------------------------------------------------------------


def _path(path: str, y: Tensor, e: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    s = s.reshape(-1, *([1] * (y.dim() - 1)))
    if path == "linear":
        return (1 - s) * y + s * e, e - y
    a, b = torch.cos(0.5 * math.pi * s), torch.sin(0.5 * math.pi * s)
    return a * y + b * e, 0.5 * math.pi * (a * e - b * y)


def _time_options(times: str, loc, scale, power) -> tuple[str, float, float, float]:
    if times not in TIMES:
        raise ValueError(f"unknown time distribution {times!r}; expected one of {TIMES}")
    for name, v, lo in (("loc", loc, None), ("scale", scale, 0.0), ("power", power, 0.0)):
        ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
        if not ok or (lo is not None and v <= lo):
            raise ValueError(
                f"expected a finite time {name}{'' if lo is None else ' > 0'}, got {v!r}"
            )
    return times, float(loc), float(scale), float(power)


def sample_times(
    n: int,
    times: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
    power: float = 1.0,
    dtype: torch.dtype | None = None,
    device=None,
) -> Tensor:
    """``n`` path times in ``[0, 1]`` (0: data, 1: noise) for the flow-matching regression.

    ``"uniform"``: ``U[0, 1]``; ``"logit-normal"``: ``sigmoid(N(loc, scale^2))``;
    ``"power"``: ``u ** power`` with ``u ~ U[0, 1]`` (density ``s^(1/power - 1) / power``:
    ``power > 1`` draws more times near the data). ``scale`` and ``power`` must be ``> 0``.
    """
    times, loc, scale, power = _time_options(times, loc, scale, power)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"expected a number of times n >= 0, got {n!r}")
    n = int(n)
    u = torch.rand(n, dtype=dtype, device=device)
    if times == "logit-normal":
        return torch.sigmoid(loc + scale * torch.randn(n, dtype=dtype, device=device))
    if times == "power":
        return u.pow(power)
    return u


def _check_options(path: str, ot: bool, sigma: float) -> float:
    """The loss's path, OT pairing and noise checked (for :class:`FlowMatching` when built,
    and :func:`flow_matching_loss` when called); ``sigma`` as a float."""
    if path not in PATHS:
        raise ValueError(f"unknown flow-matching path {path!r}; expected one of {PATHS}")
    if not isinstance(ot, bool):
        raise ValueError(f"expected ot to be True or False, got {ot!r}")
    if isinstance(sigma, bool) or not (
        isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0
    ):
        raise ValueError(f"expected a finite sigma >= 0, got {sigma!r}")
    return float(sigma)


class FlowMatching:
    r"""The conditional flow-matching loss, ``FlowMatching(...)(flow, x, context) -> scalar``.

    Args:
        path: ``"linear"`` (optimal-transport / rectified-flow path) or ``"vp"`` (variance
            preserving, trigonometric).
        ot: pair each batch's data and noise by an exact minimum-cost assignment (mini-batch
            OT-CFM; unconditional flows only, ``O(batch^3)`` on the CPU).
        sigma: standard deviation of Gaussian noise added along the path (I-CFM), ``>= 0``.
        times, time_loc, time_scale, time_power: the distribution of the path's times
            (:func:`sample_times`): ``"uniform"`` (default), ``"logit-normal"`` (``time_loc``,
            ``time_scale``) or ``"power"`` (``s = u ** time_power``).

    Callable as ``(model, x, context)``, so it is also a workbench objective
    (``Trainer(..., objective=FlowMatching())``; ``flowforge train --objective
    flow-matching``). One time is drawn per example; the CNF's network is called with
    one time per row, so a custom ``net`` must accept ``t`` of shape ``(batch,)``.
    """

    def __init__(
        self,
        path: str = "linear",
        ot: bool = False,
        sigma: float = 0.0,
        times: str = "uniform",
        time_loc: float = 0.0,
        time_scale: float = 1.0,
        time_power: float = 1.0,
    ):
        self.path, self.ot, self.sigma = path, ot, _check_options(path, ot, sigma)
        self.times = _time_options(times, time_loc, time_scale, time_power)

    def __repr__(self) -> str:
        t, loc, scale, power = self.times
        extra = {"uniform": "", "logit-normal": f", time_loc={loc:g}, time_scale={scale:g}"}
        extra["power"] = f", time_power={power:g}"
        return (
            f"FlowMatching(path={self.path!r}, ot={self.ot}, sigma={self.sigma:g}"
            + ("" if t == "uniform" else f", times={t!r}{extra[t]}")
            + ")"
        )

    def __call__(self, flow, x: Tensor, context: Tensor | None = None, net=None) -> Tensor:
        t, loc, scale, power = self.times
        return flow_matching_loss(
            flow, x, context, self.path, self.ot, self.sigma, t, loc, scale, power, net
        )


def flow_matching_loss(
    flow,
    x: Tensor,
    context: Tensor | None = None,
    path: str = "linear",
    ot: bool = False,
    sigma: float = 0.0,
    times: str = "uniform",
    time_loc: float = 0.0,
    time_scale: float = 1.0,
    time_power: float = 1.0,
    net=None,
) -> Tensor:
    """The flow-matching regression loss of ``flow`` on the batch ``x`` (see the module).

    ``net``: a module to call in place of the CNF's network, computing the same function with
    the same weights (e.g. ``torch.compile(cnf.net)``; the workbench's ``train.compile``)."""
    sigma = _check_options(path, ot, sigma)
    _time_options(times, time_loc, time_scale, time_power)
    before, cnf = split_flow(flow)
    given = x
    x, context, _ = flow._prepare(x, context)
    if not x.shape[0]:  # before a data-initialised layer (ActNorm) sees it
        raise ValueError(
            f"flow matching needs a batch of at least one example, got x of shape {tuple(x.shape)}"
        )
    flow._check_as_given(given, x)
    if ot and context is not None:
        raise ValueError(
            "mini-batch OT pairing mixes examples of different contexts; use ot=False for a "
            "conditional flow"
        )
    with torch.no_grad():  # fixed preprocessing: dequantize, standardise, ActNorm (initialised)
        y = x
        if flow.dequantizer is not None:  # (its value check follows validate_args, as in
            y, _ = flow.dequantizer(y, context, validate=flow._validating(y))  # log_prob)
        for layer in before:
            y, _ = layer(y, context)
        e = flow.base.sample(y.shape[0], context).to(y)
        if ot:
            e = ot_pairing(y, e)
        s = sample_times(y.shape[0], times, time_loc, time_scale, time_power, y.dtype, y.device)
        xs, target = _path(path, y, e, s)
        if sigma > (most := math.sqrt(torch.finfo(y.dtype).max) / 64):
            raise ValueError(
                f"sigma={sigma:g} is too large for the flow's {y.dtype}: the squares of its noise "
                f"overflow in the loss; use sigma <= {most:.3g}"
            )
        if sigma:
            xs = xs + sigma * torch.randn_like(xs)
    velocity = (cnf.net if net is None else net)(s * cnf.time, xs, context)
    if velocity.shape != xs.shape:
        raise ValueError(
            f"the CNF's network returned shape {tuple(velocity.shape)} for a batch of "
            f"{tuple(xs.shape)} with one time per row (flow matching needs t of shape (batch,))"
        )
    return (velocity - target / cnf.time).square().mean()


# -- solving: settings, likelihood, sampling -----------------------------------------------------


def _cnfs(flow: nn.Module) -> list[CNF]:
    return [m for m in flow.modules() if isinstance(m, CNF)]


def nfe(flow: nn.Module) -> int:
    """Dynamics evaluations of the most recent solve, summed over a flow's CNF blocks."""
    return sum(c.nfe_forward for c in _cnfs(flow))


@contextlib.contextmanager
def solver(
    flow: nn.Module,
    method: str | None = None,
    *,
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    trace: str | None = None,
    max_steps: int | None = None,
) -> Iterator[nn.Module]:
    """Set the ODE solver of every CNF in ``flow`` for the ``with`` block, then restore it.

    ``method``: a torchdiffeq solver (:func:`~flowforge.transforms.continuous.ode_methods`);
    ``steps``: the number of steps of a fixed-grid solver (``euler``, ``midpoint``, ``rk4``...)
    over ``[0, T]``, from 1 to the step budget; ``rtol``, ``atol``: an adaptive solver's
    tolerances, ``>= 1e-12``; ``trace``: ``"exact"`` or ``"hutchinson"``; ``max_steps``: the
    step budget (at most 100,000) beyond which a solve raises
    :class:`~flowforge.transforms.continuous.ODEStepBudgetError`. None keeps the CNF's own
    value. Every value is checked (ValueError) before anything changes.
    """
    cnfs = _cnfs(flow)
    if not cnfs:
        raise ValueError(f"{type(flow).__name__} has no CNF: there is no ODE solver to set")
    if method is not None:
        methods = ode_methods()
        if method not in methods:
            raise ValueError(f"unknown ODE solver {method!r}; available: {', '.join(methods)}")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"expected a number of steps >= 1, got {steps!r}")
        for c in cnfs:
            if (method or c.method) not in _FIXED:
                raise ValueError(
                    f"steps= sets a fixed-grid solver's steps, but {method or c.method!r} is "
                    f"adaptive (set rtol/atol); fixed-grid solvers: {', '.join(sorted(_FIXED))}"
                )
    rtol = None if rtol is None else _check_tolerance("rtol", rtol)
    atol = None if atol is None else _check_tolerance("atol", atol)
    if trace is not None and trace not in ("exact", "hutchinson"):
        raise ValueError(f"unknown trace {trace!r}; expected 'exact' or 'hutchinson'")
    if max_steps is not None:
        max_steps = _check_max_steps(max_steps)
    if steps is not None:
        budget = max_steps or min(c.max_steps for c in cnfs)
        if steps > budget:  # refused before torchdiffeq builds (and allocates) the grid
            more = "" if budget == MAX_STEPS else f" (or raise max_steps, up to {MAX_STEPS:,})"
            raise ValueError(
                f"steps={steps:,} exceeds the step budget max_steps={budget:,}: use at most "
                f"{budget:,} step{'' if budget == 1 else 's'}{more}"
            )
    keys = ("method", "step_size", "rtol", "atol", "trace", "max_steps")
    saved = [{k: getattr(c, k) for k in keys} for c in cnfs]
    try:
        for c in cnfs:
            if method is not None:
                c.method = method
            if steps is not None:
                c.step_size = c.time / int(steps)
            if rtol is not None:
                c.rtol = rtol
            if atol is not None:
                c.atol = atol
            if trace is not None:
                c.trace = trace
            if max_steps is not None:
                c.max_steps = max_steps
        yield flow
    finally:
        for c, old in zip(cnfs, saved):
            for k, v in old.items():
                setattr(c, k, v)


def _default_method(method: str | None, steps) -> str:
    if method is None:
        return "dopri5" if steps is None else "rk4"
    return method


@dataclasses.dataclass
class Likelihood:
    """What :func:`log_likelihood` measured.

    ``log_prob``: per example (a bound on the discrete log-likelihood with a dequantizer);
    ``nfe``: dynamics evaluations per solve (mean over a flow's CNF blocks, the batches and
    the draws); ``samples``: the
    dequantization samples ``K`` of the importance-weighted bound (1 for continuous data);
    ``steps``: the grid a fixed-step solver took (None for an adaptive one, whose ``rtol`` and
    ``atol`` apply instead).
    """

    log_prob: Tensor
    method: str
    rtol: float
    atol: float
    steps: int | None
    trace: str
    samples: int
    nfe: float
    seconds: float

    @property
    def mean(self) -> float:
        return float(self.log_prob.double().mean())

    @property
    def stderr(self) -> float:
        n = self.log_prob.numel()
        return float(self.log_prob.double().std() / math.sqrt(n)) if n > 1 else float("nan")

    def describe(self) -> str:
        how = (
            f"{self.steps} step{'s' if self.steps != 1 else ''}: a fixed grid, not a "
            "normalised density"
            if self.steps
            else f"rtol={self.rtol:g}, atol={self.atol:g}"
        )
        se = f" +- {self.stderr:.4f}" if self.log_prob.numel() > 1 else " (one example)"
        return (
            f"log-likelihood {self.mean:.4f}{se} ({self.method}, {how}, "
            f"{self.trace} trace, NFE {self.nfe:.0f} per solve, K={self.samples}, "
            f"{self.seconds:.1f} s)"
        )


def log_likelihood(
    flow: Flow,
    x: Tensor,
    context: Tensor | None = None,
    *,
    method: str | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    trace: str = "exact",
    samples: int = 1,
    batch_size: int = 1024,
    max_steps: int | None = None,
    seed: int | None = 0,
) -> Likelihood:
    r"""``log p(x)`` of a CNF flow through the ODE, data to noise, with the divergence.

    ``trace="exact"`` computes the divergence with ``D`` vector-Jacobian products per
    evaluation (use it for scoring); ``"hutchinson"`` uses one noise draw per solve, held fixed
    along the trajectory (unbiased for ``log p``; fast for large ``D``). With a dequantizer
    (discrete data), ``samples = K`` gives the importance-weighted bound
    ``log 1/K sum_k p(x + u_k) / q(u_k | x)`` (with the exact trace only: the log-mean-exp of
    Hutchinson's noisy estimates is biased upwards); for continuous data ``K`` must be 1. ``seed``
    fixes the dequantization and Hutchinson noise (None: the global stream; the noise is drawn
    a batch at a time, so with ``samples > 1`` or Hutchinson's trace the number also depends on
    ``batch_size``, where ``flowforge eval`` draws it per example). ``method`` None
    means ``"dopri5"``, or ``"rk4"`` when ``steps`` is given. The flow is scored in eval mode;
    its solver settings are restored afterwards. An example whose log-density is not finite
    (far outside the data, where float arithmetic overflows) raises a ValueError that names it.
    """
    method = _default_method(method, steps)
    if not isinstance(flow, Flow) or not _cnfs(flow):
        raise ValueError("log_likelihood integrates a CNF: expected a flowforge Flow with a CNF")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise ValueError(f"expected samples (K) to be an integer >= 1, got {samples!r}")
    samples = int(samples)
    if samples > 1 and flow.dequantizer is None:
        raise ValueError(
            "samples > 1 is the importance-weighted dequantization bound, but this flow has no "
            "dequantizer (continuous data): use samples=1"
        )
    if samples > 1 and trace == "hutchinson":
        raise ValueError(
            "samples > 1 is the importance-weighted bound, which needs each draw's log-density "
            "exactly: with Hutchinson's estimate the log of the mean weight comes out too high "
            "(an optimistic number, not a bound); use trace='exact'"
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(f"expected batch_size >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    given = x
    x, context, batch = flow._prepare(x, context)
    if not x.shape[0]:
        raise ValueError(
            f"log_likelihood needs at least one example, got x of shape {tuple(x.shape)}"
        )
    flow._check_as_given(given, x)
    was = training_modes(flow)
    counts: list[int] = []
    t0 = time.perf_counter()
    rng = fork_rng() if seed is not None else contextlib.nullcontext()
    with (
        solver(flow, method, steps=steps, rtol=rtol, atol=atol, trace=trace, max_steps=max_steps),
        rng,
        torch.no_grad(),
    ):
        if seed is not None:
            torch.manual_seed(seed)
        c = _cnfs(flow)[0]  # the grid a fixed-step solve took (the CNF's own without steps=)
        grid = grid_steps(c.time, c._step_size()) if c.method in _FIXED else None
        if grid is not None:  # (the number is a fixed grid's, which can read better than p's)
            warn(
                f"a fixed grid of {grid} {c.method} step(s) gives a log-likelihood that is not "
                "a normalised density (the trace's integral is that coarse: it read 0.36 nats "
                "better than dopri5's in one audit); for a likelihood to report, use an "
                "adaptive solver (steps=None, the default)",
                UserWarning,
            )
        flow.eval()
        try:
            out = []
            for i in range(0, x.shape[0], batch_size):
                xb = x[i : i + batch_size]
                cb = None if context is None else context[i : i + batch_size]
                draws = []
                for _ in range(samples):
                    draws.append(finite_log_prob(flow, xb, cb, i))
                    counts.append(nfe(flow) / len(_cnfs(flow)))  # (per block's solve)
                lp = torch.stack(draws)
                out.append(torch.logsumexp(lp, 0) - math.log(samples) if samples > 1 else lp[0])
        finally:
            restore_modes(was)
    return Likelihood(
        log_prob=torch.cat(out).reshape(batch),
        method=method,
        rtol=float(rtol),
        atol=float(atol),
        steps=grid,
        trace=trace,
        samples=samples,
        nfe=float(np.mean(counts)),
        seconds=time.perf_counter() - t0,
    )


def sample(
    flow: Flow,
    n,
    context: Tensor | None = None,
    *,
    method: str | None = None,
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """``flow.sample(n, context)`` with the given solver: adaptive (``method``, ``rtol``,
    ``atol``) or fixed-grid (``method="euler"``/``"midpoint"``/``"rk4"``... with ``steps``).
    ``method`` None means ``"dopri5"``, or ``"rk4"`` when ``steps`` is given. :func:`nfe` then
    gives the solve's function evaluations."""
    method = _default_method(method, steps)
    if not isinstance(flow, Flow) or not _cnfs(flow):
        raise ValueError("sample integrates a CNF: expected a flowforge Flow with a CNF")
    with solver(flow, method, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps):
        return flow.sample(n, context, temperature=temperature)
