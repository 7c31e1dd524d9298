r"""Continuous normalizing flows (FFJORD, Grathwohl et al. 2019; RNODE, Finlay et al. 2020).

A :class:`CNF` maps data to noise by integrating an ODE ``dz/dt = f(t, z, context)`` from
``t = 0`` (data) to ``t = T`` (noise). Along the way it integrates the instantaneous change of
variables ``d log|det dz(t)/dz(0)| / dt = tr(df/dz)``, so

    ``z, ladj = cnf(x)``  with ``ladj = log|det dz(T)/dx| = int_0^T tr(df/dz(t)) dt``

and the inverse integrates the same ODE back from ``T`` to ``0``. The ODE is solved with
`torchdiffeq <https://github.com/rtqichen/torchdiffeq>`_ (``pip install 'flowforge[ode]'``),
imported only when a CNF is built.

The trace is computed exactly (``D`` vector-Jacobian products per evaluation: use it for small
``D``) or with Hutchinson's estimator ``eps^T (df/dz) eps`` (one product per evaluation, with
``eps`` drawn once per solve), which is unbiased for ``ladj`` and hence for ``log p(x)``.

Training attributes, refreshed on every call:
    ``nfe_forward``: dynamics evaluations in the most recent solve (either direction);
    ``nfe_backward``: dynamics evaluations that the backward passes since then went through
    (the adjoint solve's evaluations with ``adjoint=True``);
    ``regularization()``: with ``regularization=`` and in training mode, the weighted RNODE
    penalty of the most recent solve (a scalar tensor, batch mean) to *add to the loss*; else
    ``None`` (:func:`flowforge.core.regularization` sums it over a model). ``metrics()`` returns
    these as floats (the workbench logs them).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from .._util import (
    INFERENCE_MODE,
    checked_int,
    checked_nonnegative,
    first_order_only,
    functorch_active,
    jacobian_rows,
)
from ..core import Transform, _autocasting, samples_only
from ..nets import _hooked, activation_class

__all__ = [
    "CNF",
    "ODENet",
    "ConcatSquash",
    "ODEStepBudgetError",
    "ode_methods",
    "exact_scoring",
    "MAX_STEPS",
    "MIN_TOL",
]

# Bounds on a CNF's solver settings, so that no setting (a checkpoint's stored config
# included) makes a solve allocate or run without bound: at most MAX_STEPS steps per solve
# (600,000 dopri5 evaluations), and tolerances of at least MIN_TOL (float64 resolves about
# 1e-16 relative; a solve below what its dtype resolves stops with a ValueError).
MAX_STEPS = 100_000
MIN_TOL = 1e-12

# Dynamics evaluations per step of each solver (an upper bound; used for the step budget).
_STAGES = {
    "dopri8": 14,
    "dopri5": 6,
    "bosh3": 4,
    "fehlberg2": 3,
    "adaptive_heun": 2,
    "euler": 1,
    "midpoint": 2,
    "heun2": 2,
    "heun3": 3,
    "rk4": 4,
    "explicit_adams": 1,
    "implicit_adams": 4,
    "fixed_adams": 4,
}
# The fixed-grid solvers and their order of accuracy (the round-trip tolerance follows it).
_FIXED = {
    "euler": 1,
    "midpoint": 2,
    "heun2": 2,
    "heun3": 3,
    "rk4": 4,
    "explicit_adams": 1,
    "implicit_adams": 4,
    "fixed_adams": 4,
}


def _torchdiffeq():
    try:
        import torchdiffeq
    except ImportError as e:
        raise ImportError(
            "flowforge's continuous flows (CNF, FFJORD) need torchdiffeq: "
            "pip install 'flowforge[ode]' (or pip install torchdiffeq)"
        ) from e
    return torchdiffeq


def ode_methods() -> list[str]:
    """The solver names a :class:`CNF` accepts (torchdiffeq's, less its scipy wrapper)."""
    _torchdiffeq()
    try:
        from torchdiffeq._impl.odeint import SOLVERS

        names = set(SOLVERS) - {"scipy_solver"}
    except ImportError:  # private module moved: fall back to the solvers we know
        names = set(_STAGES)
    return sorted(names)


class ODEStepBudgetError(RuntimeError, ValueError):
    """An ODE solve needed more steps than the CNF's ``max_steps`` allows, or a fixed grid has
    more steps than it. A RuntimeError, and a ValueError: the settings or the input cause it."""


def grid_steps(time: float, step_size: float) -> int:
    """The number of steps of a fixed grid of ``step_size`` over ``[0, time]``, as torchdiffeq
    lays it out (the last step shortened to end at ``time``)."""
    for name, v in (("time", time), ("step_size", step_size)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < math.inf:
            raise ValueError(f"expected a finite {name} > 0, got {v!r}")
    return max(1, math.ceil(time / step_size - 1e-9))


def _fixed_grid(steps: int, step_size: float):
    """torchdiffeq's grid of ``step_size`` (the last step shortened to end on time), with the
    number of steps counted in float64: torchdiffeq counts them in the state's dtype, where
    ``61 * (1 / 61)`` can round above 1 and add a step of nearly zero length (61 rk4 steps then
    took 248 evaluations, not 244)."""

    def grid(func, y0, t: Tensor) -> Tensor:
        # t runs backwards in an inverse solve (torchdiffeq hands this the times as given)
        h = step_size if float(t[-1]) >= float(t[0]) else -step_size
        out = torch.arange(steps + 1, dtype=t.dtype, device=t.device) * h + t[0]
        out[-1] = t[-1]
        return out

    return grid


def _check_tolerance(name: str, v) -> float:
    """``v`` as a float, or a ValueError unless it is a finite number >= MIN_TOL."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float))
    if not (ok and math.isfinite(v) and v > 0):
        raise ValueError(f"expected {name} > 0 (a finite number), got {v!r}")
    if v < MIN_TOL:
        raise ValueError(
            f"{name}={v:g} is below {MIN_TOL:g}, the smallest tolerance a CNF's solver accepts "
            "(float64 resolves about 1e-16 relative, float32 about 1e-7)"
        )
    return float(v)


def _check_max_steps(v) -> int:
    """``v`` as an int, or a ValueError unless it is a whole number in ``[1, MAX_STEPS]``."""
    whole = isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer())
    if isinstance(v, bool) or not whole or not 1 <= v <= MAX_STEPS:
        raise ValueError(f"expected max_steps between 1 and {MAX_STEPS:,} (an integer), got {v!r}")
    return int(v)


# -- dynamics networks ---------------------------------------------------------------------------

SMOOTH_ACTIVATIONS = ("tanh", "softplus", "elu", "silu")


class ConcatSquash(nn.Module):
    """``y = (W x + b) * sigmoid(G c + g) + H c`` with ``c = [t, context]`` (FFJORD's layer)."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(cond_features, out_features)
        self.shift = nn.Linear(cond_features, out_features, bias=False)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.linear(x) * torch.sigmoid(self.gate(c)) + self.shift(c)


class _RegressionPass(torch.autograd.Function):
    """:class:`ODENet`'s forward pass for flow matching's regression (one time per row, no
    gradient wanted for the inputs), as one autograd node with a hand-written backward pass.

    The modules' function, computed with fewer passes: each layer's ``linear * gate + shift``
    in one ``addcmul``, and tanh as ``2 sigmoid(2x) - 1`` (torch's CPU tanh is scalar, six times
    its vectorised sigmoid; the two agree to a unit in the last place of 1), differentiated as
    tanh from its output. One backward node instead of about thirty: a flow-matching step of
    FFJORD's network (tanh) costs about 14% less, with silu 0-5%
    (``benchmarks/regression_pass.py``). First derivatives only (the regression needs no more;
    a second derivative through the node raises): ``ODENet`` takes the module path whenever an
    input requires a gradient, and for ODE solves.
    """

    @staticmethod
    def forward(ctx, act: str, c: Tensor, z: Tensor, *params: Tensor) -> Tensor:
        n = len(params) // 5  # per layer: weight, bias, gate weight, gate bias, shift weight
        h, saved = z, []
        for i in range(n):
            w, b, gw, gb, hw = params[5 * i : 5 * i + 5]
            a = F.linear(h, w, b)
            g = torch.sigmoid(F.linear(c, gw, gb))
            out = torch.addcmul(F.linear(c, hw), a, g)
            saved += [h, a, g]
            if i == n - 1:
                h = out
            elif act == "tanh":
                h = torch.sigmoid(out.mul_(2)).mul_(2).sub_(1)
                saved.append(h)
            else:  # silu: its backward reads the input
                saved.append(out)
                h = F.silu(out)
        ctx.act, ctx.n = act, n
        ctx.save_for_backward(c, *saved, *params)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        n, saved = ctx.n, ctx.saved_tensors
        c, params = saved[0], saved[1 + 4 * n - 1 :]
        acts = list(saved[1 : 1 + 4 * n - 1])
        grads: list[Tensor | None] = [None] * (5 * n)
        d = grad
        for i in reversed(range(n)):
            if i < n - 1:
                y = acts.pop()
                if ctx.act == "tanh":
                    d = torch.ops.aten.tanh_backward(d, y)
                else:
                    d = torch.ops.aten.silu_backward(d, y)
            g, a, h = acts.pop(), acts.pop(), acts.pop()
            w = params[5 * i]
            da = d * g
            dg = torch.ops.aten.sigmoid_backward(d * a, g)
            # as autograd computes linear's weight gradient: (input^T grad)^T
            grads[5 * i : 5 * i + 5] = [
                h.t().mm(da).t(), da.sum(0), c.t().mm(dg).t(), dg.sum(0), c.t().mm(d).t()
            ]  # fmt: skip
            if i:
                d = da.mm(w)
        return (None, None, None, *grads)


_FUSED = {nn.Tanh: "tanh", nn.SiLU: "silu"}  # the activations _RegressionPass computes


class ODENet(nn.Module):
    """The default dynamics ``f(t, z, context)``: an MLP of :class:`ConcatSquash` layers.

    Time and the context enter every layer through the gate and the shift. Activations must
    be smooth (the trace and its gradient differentiate ``f`` twice): tanh, softplus, elu,
    silu. Called with one time per row and no input that requires a gradient (flow matching's
    regression), a tanh or silu network runs as one autograd node with a hand-written backward
    pass (:class:`_RegressionPass`).
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        activation: str = "tanh",
    ):
        super().__init__()
        features = checked_int("features", features)
        context_features = checked_int("context_features", context_features, 0)
        act = activation_class(activation, SMOOTH_ACTIVATIONS)
        widths = [features, *(checked_int("every hidden width", h) for h in hidden), features]
        cond = 1 + context_features
        self.layers = nn.ModuleList(
            ConcatSquash(a, b, cond) for a, b in zip(widths[:-1], widths[1:])
        )
        self.act = act()
        self.context_features = context_features

    def forward(self, t: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        # t: a 0-d tensor (an ODE solve) or one time per row (flow matching's regression). A
        # 0-d time without a context conditions every row alike: the gates and shifts of one
        # row, broadcast (a context of one row, a time embedding of a 0-d time, likewise).
        rows = z.shape[0] if t.dim() else 1
        c = t.to(z).reshape(-1, 1)
        if self.context_features:
            context = context.to(z)
            rows = max(rows, context.shape[0])
            c = torch.cat([c.expand(rows, 1), context.expand(rows, -1)], dim=1)
        else:
            c = c.expand(rows, 1)
        fused = _FUSED.get(type(self.act))
        if (
            fused
            and t.dim()
            and torch.is_grad_enabled()
            and not (z.requires_grad or c.requires_grad)
            and not torch.compiler.is_compiling()
            and not _autocasting(z)  # its backward assumes one dtype
            and not functorch_active()  # torch.func.grad, vmap...: autograd's own
            and all(type(layer) is ConcatSquash for layer in self.layers)
            and not _hooked(self.act, *self.layers.modules())
        ):
            params = [
                p
                for layer in self.layers
                for p in (layer.linear.weight, layer.linear.bias, layer.gate.weight,
                          layer.gate.bias, layer.shift.weight)
            ]  # fmt: skip
            return _RegressionPass.apply(fused, c, z, *params)
        h = z
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, c)
            if i < last:
                h = self.act(h)
        return h


# -- the ODE right-hand side -----------------------------------------------------------------------


class _CountBackward(torch.autograd.Function):
    """Identity whose backward counts one dynamics evaluation that a backward pass crossed."""

    @staticmethod
    def forward(ctx, x, counter):
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.counter.nfe_backward += 1
        return grad, None


class _Dynamics(nn.Module):
    """The augmented right-hand side of one solve: ``(z, ladj[, kinetic, jacobian])``.

    One instance per solve, so that the noise and the context an adjoint backward pass needs
    are those of its own forward solve.
    """

    def __init__(
        self,
        cnf: CNF,
        context: Tensor | None,
        noise: Tensor | None,
        regularize: bool,
        velocity_only: bool = False,
    ):
        super().__init__()
        self.net = cnf.net
        object.__setattr__(self, "cnf", cnf)  # a back-reference, not a submodule
        self.context, self.noise, self.regularize = context, noise, regularize
        self.solving = True  # False once the forward solve returned: later calls are adjoint's
        self.velocity_only = velocity_only  # samples only (Flow.sample): no trace
        self.nfe = 0
        self.budget = cnf.max_steps * _STAGES.get(cnf.method, 14) + 14

    def _count(self, t: Tensor) -> None:
        cnf = self.cnf
        if self.solving:
            self.nfe += 1
            cnf.nfe_forward = self.nfe
            n, where = self.nfe, "solve"
        else:
            cnf.nfe_backward += 1
            n, where = cnf.nfe_backward, "adjoint (backward) solve"
        if n > self.budget:
            at = float(t.detach())
            if cnf.method in _FIXED:  # rtol/atol do not apply to a grid
                raise ODEStepBudgetError(
                    f"CNF {where} stopped after {n} function evaluations at t={at:.4g}: it "
                    f"exceeded its step budget (max_steps={cnf.max_steps} steps of "
                    f"{cnf.method} on a grid of {grid_steps(cnf.time, cnf._step_size())} "
                    "steps): use a grid of fewer steps (a larger step_size) or raise max_steps"
                )
            head = (
                f"CNF {where} stopped after {n} function evaluations at t={at:.4g}: it "
                f"exceeded its step budget (max_steps={cnf.max_steps} steps of {cnf.method}, "
                f"rtol={cnf.rtol:g}, atol={cnf.atol:g})"
            )
            eps = torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0
            if min(cnf.rtol, cnf.atol) < 10 * eps:  # the error estimate is rounding noise
                dtype = str(t.dtype).removeprefix("torch.")
                raise ODEStepBudgetError(
                    f"{head}. These tolerances are near or below what {dtype} resolves (eps "
                    f"{eps:.2g}), where the solver's error estimate is mostly rounding, or the "
                    f"dynamics are too stiff for them: use tolerances >= {10 * eps:.0e} (or the "
                    "model in float64), or regularise the dynamics"
                )
            raise ODEStepBudgetError(
                f"{head}. The dynamics are too stiff for these tolerances: loosen rtol/atol, "
                "raise max_steps, or regularise the dynamics "
                "(regularization={'kinetic': ..., 'jacobian': ...})"
            )

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self._count(t)
        cnf = self.cnf
        z = state[0]
        if self.velocity_only:  # samples only: no trace (and no autograd: inference mode works)
            return self.net(t, z, self.context), torch.zeros_like(state[1])
        differentiable = torch.is_grad_enabled()  # the caller will differentiate this step
        with torch.enable_grad():
            # without a graph to keep (the adjoint's forward solve, scoring), the state is a
            # leaf of this step's own: it may still be a view of an input that needs a grad
            if not differentiable or not z.requires_grad:
                z = z.detach().requires_grad_(True)
            f = self.net(t, z, self.context)
            if cnf.trace == "exact":
                jac = jacobian_rows(f, z, differentiable)  # (B, D, D): row i = d f_i / dz
                trace = jac.diagonal(dim1=1, dim2=2).sum(1)
                frob = jac.square().sum((1, 2)) if self.regularize else None
            else:
                (vjp,) = torch.autograd.grad(
                    f, z, self.noise, create_graph=differentiable, retain_graph=True
                )
                trace = (vjp * self.noise).sum(1)
                frob = vjp.square().sum(1) if self.regularize else None
        if not differentiable:
            f, trace = f.detach(), trace.detach()
            frob = None if frob is None else frob.detach()
        elif not cnf.adjoint and f.requires_grad:
            f = _CountBackward.apply(f, cnf)
        out = (f, trace)
        if self.regularize:
            out += (f.square().sum(1), frob)
        return out


# -- the transform ---------------------------------------------------------------------------------


MIN_TIME, MAX_TIME = 1e-6, 1e6  # a CNF's integration time, the range it accepts


_ADJOINT_FIRST_ORDER = (
    "a CNF with adjoint=True has first derivatives only (torchdiffeq's adjoint solve cannot be "
    "differentiated twice); for second derivatives (a Hessian, a gradient penalty) use "
    "adjoint=False"
)


class CNF(Transform):
    r"""A continuous normalizing flow block (FFJORD), forward = data to noise.

    Args:
        features: data dimension ``D``.
        net: the dynamics, a module called as ``net(t, z, context)`` returning ``dz/dt`` of
            shape ``(batch, D)`` (``t`` is a 0-d tensor). Default: :class:`ODENet` with
            ``hidden`` widths.
        hidden: widths of the default dynamics network.
        context_features: size of a context vector the dynamics read.
        time: the integration time ``T``.
        method: a torchdiffeq solver (see :func:`ode_methods`); unknown names are refused.
        rtol, atol: the adaptive solvers' tolerances, at least ``MIN_TOL = 1e-12``.
        step_size: the fixed-grid solvers' step (default ``time / 10``); its grid may have at
            most ``max_steps`` steps.
        adjoint: backpropagate with the adjoint method (memory constant in the number of
            steps; the backward pass solves an ODE at the same tolerances).
        trace: ``"exact"`` (``D`` vector-Jacobian products per evaluation), ``"hutchinson"``
            (one, with noise fixed for a solve) or ``"auto"`` (exact for ``D <= 8``).
        noise: Hutchinson's noise, ``"gaussian"`` or ``"rademacher"``.
        regularization: ``None`` or RNODE weights ``{"kinetic": l1, "jacobian": l2}``;
            in training mode ``regularization()`` then returns
            ``l1 * mean int ||f||^2 dt + l2 * mean int ||df/dz||_F^2 dt`` (the Frobenius norm
            estimated with the same Hutchinson noise, exact with ``trace="exact"``).
        max_steps: the most solver steps a solve may take, at most ``MAX_STEPS = 100,000``;
            beyond it the solve stops with :class:`ODEStepBudgetError` (counted in
            evaluations: ``max_steps`` times the solver's stages per step, plus 14 for the
            first step's size search and rejected steps). A fixed grid of
            more steps is refused before it is built.
        activation: the default network's activation (tanh, softplus, elu, silu).

    ``numeric_inverse`` is ``max(1e-6, 100 * max(rtol, atol))`` for adaptive solvers and
    ``10 h^p`` (between ``1e-9`` and ``1e-3``) for a fixed grid of relative step ``h`` and a
    solver of order ``p``.

    Example:
        >>> import flowforge as ff
        >>> cnf = ff.transforms.CNF(2, hidden=(16,))
        >>> z, ladj = cnf(torch.randn(5, 2))
        >>> z.shape, ladj.shape, cnf.nfe_forward > 0
        (torch.Size([5, 2]), torch.Size([5]), True)
    """

    def __init__(
        self,
        features: int,
        net: nn.Module | None = None,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        time: float = 1.0,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        adjoint: bool = False,
        trace: str = "exact",
        noise: str = "gaussian",
        regularization: dict | None = None,
        max_steps: int = 1000,
        activation: str = "tanh",
    ):
        super().__init__((checked_int("features", features),), context_features)
        methods = ode_methods()
        if method not in methods:
            raise ValueError(
                f"unknown ODE solver method {method!r}; available: {', '.join(methods)}"
            )
        if trace == "auto":
            trace = "exact" if features <= 8 else "hutchinson"
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"unknown trace {trace!r}; expected 'exact', 'hutchinson' or 'auto'")
        if noise not in ("gaussian", "rademacher"):
            raise ValueError(f"unknown noise {noise!r}; expected 'gaussian' or 'rademacher'")
        regularization = dict(regularization or {})
        unknown = set(regularization) - {"kinetic", "jacobian"}
        if unknown:
            raise ValueError(
                f"unknown regularization {sorted(unknown)}; expected keys 'kinetic', 'jacobian'"
            )
        for k, v in regularization.items():  # (a negative weight rewards what RNODE penalises)
            checked_nonnegative(f"regularization[{k!r}]", v, " (an RNODE weight)")
        if not MIN_TIME <= float(time) <= MAX_TIME:  # NaN and inf too
            # the velocity is scaled by 1 / time: beyond this range it overflows or vanishes
            raise ValueError(
                f"expected an integration time in [{MIN_TIME:g}, {MAX_TIME:g}], got {time}"
            )
        max_steps = _check_max_steps(max_steps)
        if not (float(rtol) > 0 and float(atol) > 0):
            raise ValueError(f"expected tolerances rtol > 0 and atol > 0, got {rtol}, {atol}")
        rtol, atol = _check_tolerance("rtol", float(rtol)), _check_tolerance("atol", float(atol))
        if step_size is not None:
            steps = grid_steps(float(time), step_size)
            if method in _FIXED and steps > max_steps:  # refused before any grid is built
                raise ValueError(
                    f"step_size={float(step_size):g} makes a grid of {steps:,} steps over time "
                    f"{float(time):g}, more than max_steps={max_steps:,}: use step_size >= "
                    f"{float(time) / max_steps:.3g}, or raise max_steps (at most {MAX_STEPS:,})"
                )
        self.net = (
            net if net is not None else ODENet(features, hidden, context_features, activation)
        )
        self.time = float(time)
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.step_size = step_size
        self.adjoint, self.trace, self.noise = bool(adjoint), trace, noise
        self.penalty_weights = {k: float(v) for k, v in regularization.items() if v}
        self.max_steps = int(max_steps)
        if method in _FIXED:
            # the forward and backward solves on a grid of step h differ by O(h^order)
            h = (step_size or self.time / 10) / self.time
            self.numeric_inverse = min(1e-3, max(1e-9, 10 * h ** _FIXED[method]))
        else:
            self.numeric_inverse = max(1e-6, 100 * max(self.rtol, self.atol))
        self.nfe_forward = 0
        self.nfe_backward = 0
        self._penalty: Tensor | None = None

    # -- solving -------------------------------------------------------------------------
    def _solve(self, x: Tensor, context: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
        # Flow.sample throws the log-determinant away: the velocity alone, half the cost or less
        velocity_only = samples_only()
        if torch.is_inference_mode_enabled() and not velocity_only:
            raise RuntimeError(INFERENCE_MODE.format(type(self).__name__))
        tde = _torchdiffeq()
        regularize = bool(self.penalty_weights) and self.training and not velocity_only
        noise = None
        if self.trace == "hutchinson":
            if self.noise == "gaussian":
                noise = torch.randn_like(x)
            else:
                noise = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
        func = _Dynamics(self, context, noise, regularize, velocity_only)
        self.nfe_forward, self.nfe_backward = 0, 0
        zeros = x.new_zeros(x.shape[0])
        if not x.shape[0]:  # nothing to solve (the solver would fail on an empty state)
            self._penalty = None
            return x.clone(), zeros
        state = (x, zeros) + ((zeros, zeros) if regularize else ())
        ts = torch.tensor([0.0, self.time], dtype=x.dtype, device=x.device)
        if reverse:
            ts = ts.flip(0)
        options = {}
        if self.method in _FIXED:
            h = self._step_size()
            steps = grid_steps(self.time, h)
            options["grid_constructor"] = _fixed_grid(steps, h)
            if steps > self.max_steps:  # before torchdiffeq builds the grid
                raise ODEStepBudgetError(
                    f"a fixed grid of {steps:,} steps of {self.method} exceeds the CNF's step "
                    f"budget (max_steps={self.max_steps:,}): use at most {self.max_steps:,} "
                    f"step{'' if self.max_steps == 1 else 's'} (a larger step_size) or raise "
                    "max_steps"
                )
        kwargs = dict(rtol=self.rtol, atol=self.atol, method=self.method, options=options)
        try:
            if self.adjoint:
                params = tuple(p for p in func.parameters() if p.requires_grad)
                if context is not None and context.requires_grad:
                    params += (context,)
                out = tde.odeint_adjoint(func, state, ts, adjoint_params=params, **kwargs)
            else:
                out = tde.odeint(func, state, ts, **kwargs)
        except AssertionError as e:  # torchdiffeq's checks of an adaptive solve
            if str(e).startswith(("underflow in dt", "non-finite values in state")):
                raise ValueError(self._stuck(x, str(e).startswith("underflow"), context)) from None
            raise
        func.solving = False
        out = tuple(o[-1] for o in out)
        if self.adjoint:  # (torchdiffeq's adjoint cannot be differentiated twice)
            out = tuple(first_order_only(o, _ADJOINT_FIRST_ORDER, copy=True) for o in out)
        if regularize:
            sign = -1.0 if reverse else 1.0  # integrals run from T to 0 in the inverse
            loss = 0.0
            if "kinetic" in self.penalty_weights:
                loss = loss + self.penalty_weights["kinetic"] * sign * out[2].mean()
            if "jacobian" in self.penalty_weights:
                loss = loss + self.penalty_weights["jacobian"] * sign * out[3].mean()
            self._penalty = loss
        else:
            self._penalty = None
        if velocity_only:  # (no log-determinant was integrated: NaN, never a plausible 0)
            return out[0], torch.full_like(out[1], math.nan)
        return out[0], out[1]

    def _step_size(self) -> float:
        """The fixed-grid solvers' step."""
        return float(self.step_size or self.time / 10)

    def _stuck(self, x: Tensor, underflow: bool, context: Tensor | None = None) -> str:
        """The message for a solve that torchdiffeq stopped: its step size underflowed, or its
        state became NaN or inf."""
        what = "its step size underflowed to 0" if underflow else "its state became NaN or inf"
        dtype, eps = str(x.dtype).removeprefix("torch."), torch.finfo(x.dtype).eps
        if not bool(torch.isfinite(x).all()):
            why = (
                "the starting state has NaN or inf values (inputs far outside the data, or "
                "layers before the CNF whose parameters overflow, as in a damaged model file?)"
            )
        elif self.method not in _FIXED and min(self.rtol, self.atol) < 10 * eps:
            why = (
                f"rtol={self.rtol:g}, atol={self.atol:g} are below what {dtype} resolves "
                f"(eps {eps:.2g}): use tolerances >= {10 * eps:.0e}"
            )
        else:
            big = float(x.detach().abs().max())
            ctx = (
                f", context's {float(context.detach().abs().max()):.3g}"
                if context is not None and context.numel()
                else ""
            )
            far = "inputs or context" if ctx else "inputs"
            why = (
                "the dynamics became NaN or inf, or too fast to follow, from these inputs "
                f"(largest |value| {big:.3g}{ctx}): {far} far outside the data?"
            )
        return f"the CNF's ODE solver ({self.method}) could not take a step ({what}): {why}"

    def _forward(self, x, context):
        return self._solve(x, context, reverse=False)

    def _inverse(self, z, context):
        return self._solve(z, context, reverse=True)

    def regularization(self) -> Tensor | None:
        """The weighted RNODE penalty of the most recent solve in training mode, else None."""
        return self._penalty

    def metrics(self) -> dict[str, float]:
        """Solver counts (and the penalty) of the most recent call, for logging."""
        out = {"nfe_forward": float(self.nfe_forward), "nfe_backward": float(self.nfe_backward)}
        if self._penalty is not None:
            out["regularization"] = float(self._penalty.detach())
        return out

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", time={self.time}, method={self.method!r}"
        if self.method in _FIXED:
            s += f", step_size={self.step_size or self.time / 10}"
        else:
            s += f", rtol={self.rtol:g}, atol={self.atol:g}"
        s += f", trace={self.trace!r}"
        if self.adjoint:
            s += ", adjoint=True"
        if self.penalty_weights:
            s += f", regularization={self.penalty_weights}"
        return s


@contextmanager
def exact_scoring(module: nn.Module, tol: float = 1e-5) -> Iterator[None]:
    """Score every :class:`CNF` inside ``module`` with the exact trace and an adaptive solver
    at tolerances of at most ``tol``, restoring the CNFs' own settings on exit.

    A CNF trained with Hutchinson's estimator at loose tolerances (FFJORD's recipe) defines the
    same continuous model; its log-density is the exact-trace, tight-tolerance solve, which this
    computes (the workbench's ``eval`` and reports use it). A CNF built with a fixed-grid solver
    (``method="euler"``, ``"rk4"``... with ``step_size``) is scored by dopri5 too: a few grid
    steps of the trace do not give a normalised density. Every CNF is solved at
    ``rtol = min(rtol, tol)`` (``atol`` alike); one switched to dopri5 from another solver gets
    a step budget (``max_steps``) of at least the default 1000.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.FFJORD(features=2, hidden=(8,), trace="hutchinson", rtol=1e-3)
        >>> with exact_scoring(flow):
        ...     lp = flow.log_prob(torch.randn(3, 2))
    """
    tol = _check_tolerance("tol", float(tol))
    keys = ("trace", "method", "step_size", "rtol", "atol", "max_steps")
    cnfs = [m for m in module.modules() if isinstance(m, CNF)]
    saved = [{k: getattr(c, k) for k in keys} for c in cnfs]
    try:
        for c in cnfs:
            c.trace = "exact"
            if c.method in _FIXED:  # a grid's few steps do not give a normalised density
                c.method = "dopri5"
                c.max_steps = max(c.max_steps, 1000)
            c.rtol, c.atol = min(c.rtol, tol), min(c.atol, tol)
        yield
    finally:
        for c, old in zip(cnfs, saved):
            for k, v in old.items():
                setattr(c, k, v)
