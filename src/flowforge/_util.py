"""Small helpers shared across the library (no flowforge imports: this is the bottom layer)."""

from __future__ import annotations

import contextlib
import difflib
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "LOG_2PI",
    "INFERENCE_MODE",
    "COMPILE_OPTIONS",
    "event_shape",
    "checked_int",
    "per_channel",
    "unknown",
    "suggest",
    "householder",
    "jacobian_rows",
    "largest",
    "all_finite",
    "derivatives_traced",
    "first_order_only",
    "restore_modes",
    "training_modes",
    "functorch_active",
    "fork_rng",
    "rng_states",
    "set_rng_states",
    "warn",
]

LOG_2PI = math.log(2 * math.pi)

# torch.compile's generated CPU kernels run on one thread: with two OpenMP threads, kernels
# that inductor (torch 2.13) generates for small training graphs abort the process on this
# project's CPUs (tests/test_compile.py reproduces it without this option); the matrix
# products it calls out to keep every thread. fallback_random: random numbers drawn inside a
# compiled graph (the dequantization noise) come from torch's own generator, as eagerly, so a
# compiled run draws what the eager run with the same seed draws (inductor's own would differ).
# The trainer, the compiled spline and the benchmarks use these options.
COMPILE_OPTIONS = {"cpp.threads": 1, "fallback_random": True}

# layers whose log-determinant (or trace) comes from autograd, which inference mode switches off
INFERENCE_MODE = (
    "{} computes its log-determinant with autograd, which torch.inference_mode() switches "
    "off: use torch.no_grad() instead"
)


# the library's own folder and torch's: a warning from a layer is attributed to the first
# caller outside both (the user's line), however deep the call came from (hooks, no_grad
# wrappers, Compose, the workbench's objectives)
_LIBRARY = os.path.dirname(os.path.abspath(__file__)) + os.sep
_WORKBENCH = os.path.join(_LIBRARY, "workbench") + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_WRAPPERS = ("<frozen", os.path.abspath(contextlib.__file__))  # (context managers' frames)


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn(message, category)`` pointing at the first frame outside flowforge's
    library and torch (the user's code, or the workbench's), as ``stacklevel`` would if the
    depth of the call were known."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        inside = (name.startswith(_LIBRARY) and not name.startswith(_WORKBENCH)) or (
            name.startswith(_TORCH)
        )
        if not inside and not name.startswith(_WRAPPERS):
            break
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level + 1)


def event_shape(
    shape: int | Sequence[int], name: str = "shape", image: bool = False
) -> tuple[int, ...]:
    """``(D,)`` from an int, else the shape as a tuple of ints; a ValueError naming ``name``
    unless it has at least one dimension (three with ``image``: ``(C, H, W)``) and every size
    is an integer >= 1."""
    sizes = (shape,) if _integer(shape) else shape
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        sizes = ()
    sizes = tuple(sizes)
    if not sizes or (image and len(sizes) != 3) or not all(_integer(s) and s >= 1 for s in sizes):
        want = "an image shape (C, H, W)" if image else "an integer >= 1 or a tuple"
        raise ValueError(f"expected {name} to be {want} of positive sizes, got {sizes or shape!r}")
    return tuple(int(s) for s in sizes)


def per_channel(v: Tensor, x: Tensor) -> Tensor:
    """Broadcast a ``(C,)`` vector against ``x`` of shape ``(B, C, ...)``."""
    return v.reshape(-1, *[1] * (x.dim() - 2))


def _integer(value) -> bool:
    """Whether ``value`` is an integer (a Python or numpy one), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def checked_int(name: str, value, least: int = 1, most: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[least, most]``; a ValueError
    naming ``name`` otherwise (the one check of a size, a count or a depth)."""
    if not _integer(value) or value < least or (most is not None and value > most):
        span = f"an integer >= {least}" if most is None else f"an integer in [{least}, {most}]"
        raise ValueError(f"expected {name} to be {span}, got {value!r}")
    return int(value)


def checked_nonnegative(name: str, value, what: str = "") -> float:
    """``value`` as a float if it is a finite real number >= 0 (not a bool); a ValueError
    naming ``name`` (and saying ``what`` it is) otherwise."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and value >= 0):
        raise ValueError(f"expected {name} to be a finite number >= 0{what}, got {value!r}")
    return float(value)


def suggest(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``"; did you mean a, b?"`` for the close matches of ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else ""


def unknown(what: str, name, choices: Iterable[str]) -> ValueError:
    """The one error for an unknown name: ``unknown <what> 'x'; did you mean ...? (available:
    ...)``."""
    choices = sorted(str(c) for c in choices)
    return ValueError(
        f"unknown {what} {name!r}{suggest(str(name), choices)} (available: {', '.join(choices)})"
    )


def householder(vs: Tensor) -> Tensor:
    r"""The product ``H_1 H_2 ... H_k`` of Householder reflections ``H = I - 2 v v^T / |v|^2``.

    ``vs`` is ``(k, D)`` for one product or ``(n, k, D)`` for a batch; returns ``(D, D)`` or
    ``(n, D, D)``.
    """
    batched = vs.dim() == 3
    if not batched:
        vs = vs.unsqueeze(0)
    d = vs.shape[-1]
    q = torch.eye(d, dtype=vs.dtype, device=vs.device).expand(vs.shape[0], d, d)
    for k in range(vs.shape[1]):
        v = vs[:, k]
        v = v / v.square().sum(-1, keepdim=True).sqrt()
        q = q - 2 * (q @ v.unsqueeze(-1)) * v.unsqueeze(-2)  # Q H_k
    return q if batched else q[0]


def jacobian_rows(f: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    """The Jacobian ``df/dz`` of a batch of maps ``(n, D) -> (n, D)``, one backward pass per
    output row: ``out[:, i, j] = d f_i / d z_j``."""
    rows = [
        torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
        for i in range(f.shape[1])
    ]
    return torch.stack(rows, 1)


class _FirstOrderOnly(torch.autograd.Function):
    """The identity, whose backward refuses with ``message`` to be differentiated again."""

    @staticmethod
    def forward(ctx, t: Tensor, message: str, copy: bool) -> Tensor:
        ctx.message = message
        return t.clone() if copy else t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():  # (create_graph=True: a second derivative is coming)
            raise RuntimeError(ctx.message)
        return grad, None, None


def first_order_only(t: Tensor, message: str, copy: bool = False) -> Tensor:
    """``t`` as it is, but a backward pass through it that keeps a graph (``create_graph=True``:
    a Hessian, a gradient penalty) raises ``RuntimeError(message)``: for computations whose
    backward has no derivative of its own (a fused kernel, an adjoint solve), where torch's
    error would name an internal operator, or none at all. ``copy``: a copy, not a view, for
    an output the caller may modify in place (a view of a custom function's input cannot be);
    without it, no copy on a hot path (an attention block's output, used once)."""
    return _FirstOrderOnly.apply(t, message, copy) if t.requires_grad else t


def training_modes(module: torch.nn.Module) -> dict:
    """Every submodule's train/eval mode, for :func:`restore_modes`: a BatchNorm frozen
    (``.eval()``) inside a flow in training mode stays frozen after a call that puts the flow
    in eval mode for a while, which ``module.train(was)`` would undo."""
    return {m: m.training for m in module.modules()}


def restore_modes(modes: dict) -> None:
    """Put back the modes :func:`training_modes` recorded, through each module's ``train``
    (which a module may override: a LoRA-style layer merges its weights in eval mode).
    Parents come before their children in the record, so each ends in its own mode."""
    for m, mode in modes.items():
        if m.training != mode:
            m.train(mode)


def newton_steps_for_derivatives(*inputs) -> int:
    """How many value-preserving Newton steps (``x - (step - step.detach())``, from a root
    found without a graph) an inverse solved numerically takes for its derivatives: two where
    autograd records and something it depends on needs a gradient (``inputs``: the tensors
    and modules it depends on; the first step gives the implicit function's first
    derivatives, the second, from the first's result, its second derivatives as well), none
    otherwise (a frozen flow's samples)."""
    if not torch.is_grad_enabled():
        return 0
    for t in inputs:
        if isinstance(t, torch.nn.Module):
            if any(p.requires_grad for p in t.parameters()):
                return 2
        elif isinstance(t, Tensor) and t.requires_grad:
            return 2
    return 0


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite, in about a tenth of ``isfinite(t).all()``'s time.

    A NaN or an infinity makes the sum NaN or infinite, so a finite sum clears the whole
    tensor in one vectorised pass; only a sum that is not finite (which finite entries can
    also give, by overflow) is followed by the entry-wise test. Reads the result back to the
    host (a synchronisation on an accelerator).
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    t = t.detach()
    total = t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum()  # half: no overflow
    if math.isfinite(total.item()):
        return True
    return bool(torch.isfinite(t.float() if t.element_size() < 2 else t).all())  # float8 too


def largest(t: Tensor) -> float:
    """The largest entry of ``t``, NaN if any entry is NaN (for error messages)."""
    if t.numel() == 0:
        return 0.0
    if torch.isnan(t).any():
        return float("nan")
    return t.max().item()


def checked_choice(what: str, name, choices: dict[str, Callable] | Sequence[str]):
    """``choices[name]`` (or ``name`` if ``choices`` is a sequence); the one unknown-name error
    otherwise."""
    if name in choices:
        return choices[name] if isinstance(choices, dict) else name
    raise unknown(what, name, choices)


def functorch_active() -> bool:
    """Whether a torch.func transform is running (True when torch cannot say)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())


def derivatives_traced() -> bool:
    """Whether forward-mode AD or a torch.func transform may be differentiating the current
    computation (tensors that carry tangents, or are wrapped, need not require grad)."""
    from torch.autograd import forward_ad

    return getattr(forward_ad, "_current_level", -1) >= 0 or functorch_active()


@contextlib.contextmanager
def fork_rng():
    """``torch.random.fork_rng`` of the CPU's generator and every CUDA device's in use.
    ``torch.manual_seed`` inside seeds every device: a fork of the CPU's alone would leave a
    GPU's stream reset to that seed on exit, so that the caller's next draws there would repeat
    after every seeded pass (a training run's noise after each validation). Before CUDA is
    initialised, torch queues such a seed for the devices to take when it starts: that queue
    is restored too, so that a process that does seeded work here on the CPU and only then
    starts a GPU finds the GPU seeded by its own ``torch.manual_seed``, not by the inner one."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    queued = None if cuda or tracker is None else dict(vars(tracker))
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
            yield
    finally:
        if queued is not None and not torch.cuda.is_initialized():
            vars(tracker).update(queued)


def rng_states(device: torch.device):
    """The random state that draws on ``device`` depend on: the CPU generator's, and the
    device's own where it is a CUDA device (a host-side read: no synchronisation)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_states(state, device: torch.device) -> None:
    """Restore what :func:`rng_states` returned for ``device``."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
