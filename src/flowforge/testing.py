r"""Checks that a transform honours the contract; the generic test suite runs them on every
layer, and you can run them on your own layers.

Run them in float64. Each check raises ``AssertionError`` with a message that says what was
off and by how much.

Example:
    >>> import torch, flowforge as ff
    >>> from flowforge.testing import check_transform
    >>> layer = ff.transforms.LULinear(3).double()
    >>> check_transform(layer, torch.randn(4, 3, dtype=torch.float64))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._util import fork_rng

__all__ = [
    "check_transform",
    "check_registered",
    "check_save_load",
    "check_context",
    "perturbed",
    "check_round_trip",
    "check_round_trip_from_noise",
    "check_log_det",
    "check_gradients",
    "check_transformer",
    "check_distribution",
    "check_dequantizer",
]

ROUND_TRIP_RTOL = 1e-10
LADJ_ATOL = 1e-7
NUMERIC_CAP = 1e-5  # the loosest numerical-inverse tolerance the float64 checks accept


def _rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / (1 + b.abs().max())).item()


def _shape_ok(t, x: Tensor, z: Tensor, ladj: Tensor, inverse: bool = False) -> None:
    want = t.event_shape if inverse else t.output_shape
    where = "inverse" if inverse else "forward"
    assert tuple(z.shape) == (x.shape[0], *want), (
        f"{where} output shape {tuple(z.shape)}, expected {(x.shape[0], *want)}"
    )
    assert tuple(ladj.shape) == (x.shape[0],), (
        f"{where} ladj shape {tuple(ladj.shape)}, expected ({x.shape[0]},)"
    )
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all(), f"{where} output not finite"


def _name(t) -> str:
    return type(t).__name__


def _dtypes_ok(t, x: Tensor, z: Tensor, ladj: Tensor, where: str) -> None:
    assert z.dtype == x.dtype and ladj.dtype == x.dtype, (
        f"{_name(t)} {where}: {x.dtype} in, {z.dtype} out (ladj {ladj.dtype}); a layer "
        "computes in its input's dtype (a tensor attribute left in another dtype? register "
        "it as a buffer, so that .to() moves it)"
    )


def _untouched(t, x: Tensor, before: Tensor, where: str) -> None:
    assert torch.equal(x, before), (
        f"{_name(t)} {where} changed its input in place (an in-place op such as x.mul_() on "
        "the tensor it was given): the caller's data is altered; compute out of place"
    )


def _f64_hint(x: Tensor) -> str:
    """Where a check ran in a narrower dtype than its float64 tolerances: say so (rounding
    alone misses them, which is not the layer's fault)."""
    if x.dtype == torch.float64:
        return ""
    return (
        f" ({str(x.dtype).removeprefix('torch.')} inputs, and the tolerances are float64's: "
        "check on t.double() with float64 inputs)"
    )


def check_round_trip(t, x: Tensor, context: Tensor | None = None, rtol: float | None = None):
    """``inverse(forward(x)) == x`` and ``forward ladj == -inverse ladj``; outputs in the
    input's dtype, and the inputs left as they were."""
    tol = rtol if rtol is not None else (t.numeric_inverse or ROUND_TRIP_RTOL)
    before = x.clone()
    z, ladj = t(x, context)
    _untouched(t, x, before, "forward")
    _shape_ok(t, x, z, ladj)
    _dtypes_ok(t, x, z, ladj, "forward")
    z_before = z.clone()
    x2, ladj_inv = t.inverse(z, context)
    _untouched(t, z, z_before, "inverse")
    _shape_ok(t, z, x2, ladj_inv, inverse=True)
    _dtypes_ok(t, z, x2, ladj_inv, "inverse")
    err = _rel_err(x2, x)
    assert err <= tol, f"round trip relative error {err:.3g} > {tol:.1g}{_f64_hint(x)}"
    err = _rel_err(-ladj_inv, ladj)
    assert err <= max(tol, LADJ_ATOL), f"forward ladj != -inverse ladj (rel. error {err:.3g})"


def check_round_trip_from_noise(
    t, z: Tensor, context: Tensor | None = None, rtol: float | None = None
):
    """``forward(inverse(z)) == z`` for fresh noise ``z`` (a point ``forward`` never made)."""
    tol = rtol if rtol is not None else (t.numeric_inverse or ROUND_TRIP_RTOL)
    x, ladj_inv = t.inverse(z, context)
    _shape_ok(t, z, x, ladj_inv, inverse=True)
    z2, ladj = t(x, context)
    err = _rel_err(z2, z)
    assert err <= tol, f"forward(inverse(z)) relative error {err:.3g} > {tol:.1g}{_f64_hint(z)}"
    err = _rel_err(-ladj_inv, ladj)
    assert err <= max(tol, LADJ_ATOL), f"forward ladj != -inverse ladj from noise ({err:.3g})"


def _jacobian_ladj(fn, x: Tensor, context: Tensor | None, signs: list | None = None) -> Tensor:
    """``log|det J|`` of ``fn`` at each example of ``x``, by autograd, one example at a time
    (for a non-square ``J``, the change of volume on the manifold, see below); the sign of
    each square ``det J`` is appended to ``signs`` when given."""
    out = []
    for i in range(x.shape[0]):
        ci = None if context is None else context[i : i + 1]
        xi = x[i : i + 1]

        def f(v, xi=xi, ci=ci):
            return fn(v.reshape(xi.shape), ci)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        if jac.shape[0] == jac.shape[1]:
            sign, logabs = torch.linalg.slogdet(jac)
            out.append(logabs)
            if signs is not None:
                signs.append(float(sign))
        else:
            # a chart between a d-manifold embedded in R^D and R^d (the sphere's): the change
            # of volume is (1/2) log det of the d x d Gram matrix (J J^T for the d x D Jacobian
            # of a map that ignores the normal directions, J^T J for the D x d one)
            gram = jac @ jac.T if jac.shape[0] < jac.shape[1] else jac.T @ jac
            out.append(0.5 * torch.linalg.slogdet(gram)[1])
    return torch.stack(out)


def _one_sign(t, signs: list[float], context: Tensor | None) -> None:
    """A bijection of R^D keeps the sign of its Jacobian's determinant (per context): a sign
    that changes between the points, or a zero determinant, means a fold, where ``log|det|``
    can match autograd while the map is not invertible (``z = x - 0.02 x^3`` past 4.08)."""
    if not signs:
        return
    keys = [None] * len(signs) if context is None else [tuple(c.reshape(-1).tolist())
                                                        for c in context]  # fmt: skip
    seen: dict = {}
    for key, sign in zip(keys, signs):
        assert sign != 0, f"{_name(t)}: the Jacobian is singular at one of the points"
        assert seen.setdefault(key, sign) == sign, (
            f"{_name(t)}: the sign of det J changes between the points (a fold: the map is not "
            "invertible there, though log|det J| may agree with autograd)"
        )


def check_log_det(t, x: Tensor, context: Tensor | None = None, atol: float | None = None):
    """``ladj`` equals the autograd Jacobian's ``slogdet``, in both directions, and the sign
    of ``det J`` is the same at every point (for one context)."""
    tol = atol if atol is not None else max(LADJ_ATOL, 10 * (t.numeric_inverse or 0))
    z, ladj = t(x, context)
    signs: list[float] = []
    want = _jacobian_ladj(t, x, context, signs)
    _one_sign(t, signs, context)
    err = (ladj - want).abs().max().item()
    assert err <= tol * (1 + want.abs().max().item()), (
        f"forward ladj differs from autograd slogdet by {err:.3g} "
        f"(ladj={ladj.tolist()}, slogdet={want.tolist()})"
    )
    z = z.detach()
    _, ladj_inv = t.inverse(z, context)
    want_inv = _jacobian_ladj(t.inverse, z, context)
    err = (ladj_inv - want_inv).abs().max().item()
    assert err <= tol * (1 + want_inv.abs().max().item()), (
        f"inverse ladj differs from autograd slogdet by {err:.3g}"
    )


def check_gradients(t: nn.Module, x: Tensor, context: Tensor | None = None) -> None:
    """Every parameter gets a finite, non-zero gradient through forward and inverse."""
    if not any(True for _ in t.parameters()):
        return
    t.zero_grad(set_to_none=True)
    z, ladj = t(x, context)
    x2, ladj2 = t.inverse(z.detach(), context)
    # unequal weights, so that the two directions cannot cancel each other's gradients
    loss = z.square().sum() + ladj.sum() + 0.5 * x2.square().sum() + 0.3 * ladj2.sum()
    loss = loss / x.shape[0]
    loss.backward()
    for name, p in t.named_parameters():
        if p.numel() == 0:  # e.g. the free off-diagonal entries of a 1x1 LU matrix
            continue
        assert p.grad is not None, f"parameter {name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"parameter {name} got a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"parameter {name} got an all-zero gradient"
    t.zero_grad(set_to_none=True)


def check_registered(t: nn.Module) -> None:
    """Every tensor a layer holds is a parameter or a buffer: a plain tensor attribute, or a
    numpy array, is not trained, saved or moved by ``.to()``."""
    import numpy as np

    for name, m in t.named_modules():
        for k, v in vars(m).items():  # (a result the layer keeps from its last call is no state)
            where = f"{name}.{k}" if name else k
            if isinstance(v, Tensor) and v.grad_fn is None:
                raise AssertionError(
                    f"{_name(t)}: attribute {where!r} is a plain tensor, which is not trained, "
                    "saved or moved by .to(); make it an nn.Parameter (learned) or "
                    "register_buffer it (a constant)"
                )
            if isinstance(v, np.ndarray):
                raise AssertionError(
                    f"{_name(t)}: attribute {where!r} is a numpy array, which is not saved "
                    "(ff.load rebuilds the layer without it) or moved by .to(); hold it in a "
                    "tensor: register_buffer(name, torch.as_tensor(array))"
                )
            inside = (  # (a user's attribute: a module's own _parameters, _buffers are dicts)
                ()
                if k.startswith("_")
                else v.values()
                if isinstance(v, dict)
                else v
                if isinstance(v, (list, tuple))
                else ()
            )
            if any(isinstance(e, Tensor) and e.grad_fn is None for e in inside):
                raise AssertionError(
                    f"{_name(t)}: attribute {where!r} is a plain {type(v).__name__} of "
                    "tensors, which the module does not see: they are not trained, saved or "
                    "moved by .to(); hold parameters in an nn.ParameterList or "
                    "nn.ParameterDict, constants in buffers (register_buffer)"
                )


def check_save_load(flow: nn.Module) -> None:
    """A flow made by a registered builder (``@ff.models.register``) comes back from
    ``ff.save`` and ``ff.load`` as the same model: rebuilt from its configuration and loaded
    with its state dict, it draws the same samples with the same seed and gives the same
    ``log_prob`` (the check ``ff.save`` runs, here every time, without writing a file). A layer
    that keeps state outside its parameters and persistent buffers (a numpy array, a list, a
    buffer registered with ``persistent=False`` that is not rebuilt as it was) fails it.

    To check a layer of your own, register a small builder that uses it, give its parameters
    values away from their initialisation (:func:`perturbed`), and pass the flow it builds."""
    from . import io

    if getattr(flow, "config", None) is None:
        raise AssertionError(
            f"{_name(flow)}: the flow has no configuration (flow.config); build it with a "
            "builder decorated with @ff.models.register"
        )
    why = io.unsaveable_config(flow.config)
    assert why is None, f"{_name(flow)}: {why}"
    state = flow.state_dict()
    try:
        rebuilt = io.rebuilt_from(flow.config, state)
    except ValueError as e:
        raise AssertionError(f"{_name(flow)}: its configuration does not rebuild it: {e}") from None
    why = io.rebuilt_differs(flow, rebuilt, state)
    assert why is None, f"{_name(flow)}: {why}"


def perturbed(t: nn.Module, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """A copy of ``t`` with every parameter moved by ``scale`` standard normal noise, away
    from an identity initialisation (a zero last layer), where gradients and the context's
    effect vanish by construction."""
    import copy

    t = copy.deepcopy(t)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return t


def check_context(t: nn.Module, x: Tensor, context: Tensor) -> None:
    """The output depends on the context (checked on :func:`perturbed` weights)."""
    p = perturbed(t, scale=0.5)  # (a gate of rounded shifts needs more than a nudge)
    z1, l1 = p(x, context)
    z2, l2 = p(x, context + 1)
    assert not (torch.allclose(z1, z2) and torch.allclose(l1, l2)), (
        f"{_name(t)}: the output does not depend on the context (with perturbed weights)"
    )


def check_transform(
    t, x: Tensor, context: Tensor | None = None, noise: Tensor | None = None
) -> None:
    """What the generic test checks of every library layer, for your own: registered tensors
    only, round trips from both sides (leaving the inputs untouched, in the input's dtype),
    shapes, ``ladj`` against autograd in both directions with one sign of ``det J``, a finite
    non-zero gradient for every parameter, and with a context, that the output depends on it
    (the last two on :func:`perturbed` weights). Call it in eval mode (dropout) and float64.

    ``noise``: the points to invert from (default: standard normal draws of the output's
    shape); give draws of the layer's own output space for a layer whose outputs are
    confined, such as a manifold flow's (``flow.base.sample(n)``). Probe ``x`` as wide as
    the data will be: the checks hold at the points given."""
    check_registered(t)
    dropout = (nn.modules.dropout._DropoutNd,)
    if t.training and any(isinstance(m, dropout) and m.p > 0 for m in t.modules()):
        raise AssertionError(f"{_name(t)} is in training mode with dropout: call t.eval() first")
    if t.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in t.modules()):
        # (its batch statistics make each example's output depend on the others, and the
        # Jacobian is taken one example at a time)
        raise AssertionError(f"{_name(t)} is in training mode with BatchNorm: call t.eval() first")
    check_round_trip(t, x, context)
    if noise is None:
        noise = torch.randn(x.shape[0], *t.output_shape, dtype=x.dtype, device=x.device)
    check_round_trip_from_noise(t, noise, context)
    check_log_det(t, x, context)
    check_gradients(perturbed(t), x, context)
    if context is not None:
        check_context(t, x, context)


# -- the side protocols --------------------------------------------------------------------------


def check_transformer(t, x: Tensor, params: Tensor) -> None:
    """An elementwise transformer: the identity at zero parameters (unless it says it is
    not, ``identity_at_zero = False``: a mixture whose components must start apart), the
    round trip, the elementwise ``ladj`` against autograd's derivative, and a gradient for
    the parameters."""
    y0, l0 = t(x, torch.zeros_like(params))
    if getattr(t, "identity_at_zero", True):
        assert _rel_err(y0, x) <= ROUND_TRIP_RTOL and l0.abs().max() <= LADJ_ATOL, (
            "zero parameters are not the identity"
        )
    xr = x.clone().requires_grad_(True)
    y, ladj = t(xr, params)
    assert y.shape == x.shape and ladj.shape == x.shape, "output or ladj has the wrong shape"
    (dy,) = torch.autograd.grad(y.sum(), xr)  # elementwise map: the derivative is the diagonal
    err = (ladj.detach() - dy.abs().log()).abs().max().item()
    assert err <= LADJ_ATOL * (1 + ladj.abs().max().item()), f"ladj differs by {err:.3g}"
    x2, ladj2 = t.inverse(y.detach(), params)
    assert _rel_err(x2, x) <= ROUND_TRIP_RTOL, f"round trip error {_rel_err(x2, x):.3g}"
    err = _rel_err(-ladj2, ladj.detach())
    assert err <= max(ROUND_TRIP_RTOL, LADJ_ATOL), (
        f"the inverse's ladj is not minus the forward's (relative error {err:.3g})"
    )
    p = params.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(t(x, p)[0].square().sum() + t(x, p)[1].sum(), p)
    assert torch.isfinite(g).all() and g.abs().sum() > 0, "the parameters get no gradient"


def _grid(dims: int, half_width: float, n: int, dtype) -> tuple[Tensor, float]:
    edges = torch.linspace(-half_width, half_width, n + 1, dtype=dtype)
    mids = (edges[1:] + edges[:-1]) / 2
    pts = torch.cartesian_prod(*[mids] * dims).reshape(-1, dims)
    return pts, (2 * half_width / n) ** dims


def check_distribution(base, context: Tensor | None = None, half_width: float = 12.0) -> None:
    """A base distribution: samples of the right shape and dtype, ``rsample_and_log_prob``
    agreeing with ``log_prob``, every parameter trained by ``log_prob``, and (for 1 or 2
    dimensions) a density that integrates to 1 over ``[-half_width, half_width]^D`` and
    samples that fall where it puts its mass (the chance of ``|z_j| < 1`` and of ``z_j < 0``
    in each dimension, from 4,000 seeded draws against the density's grid)."""
    n = 4 if context is None else context.shape[0]
    dtype = base._anchor.dtype
    s = base.sample(n, context)
    assert tuple(s.shape) == (n, *base.event_shape), f"bad sample shape {tuple(s.shape)}"
    assert s.dtype == dtype, f"samples are {s.dtype}, the base's buffers {dtype}"
    lp_s = base.log_prob(s, context)
    assert tuple(lp_s.shape) == (n,), (
        f"log_prob of {n} draws has shape {tuple(lp_s.shape)}, expected ({n},): one number "
        "per draw (sum the log-densities over the event's dimensions)"
    )
    z, lp = base.rsample_and_log_prob(n, context)
    assert torch.allclose(lp, base.log_prob(z, context)), "rsample log-prob != log_prob"
    _check_temperature(base, context, n)
    # reparameterised: VI trains through the draws; a base that declares has_rsample = False
    # (a mixture's discrete choice, rounded draws, a TorchBase of a distribution without
    # rsample) is trained by reverse_kl's score-function term instead
    pathwise = getattr(base, "has_rsample", True)
    if pathwise and any(p.numel() for p in base.parameters()):
        base.zero_grad(set_to_none=True)
        if z.requires_grad:
            z.square().sum().backward()
        reached = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in base.parameters()]
        base.zero_grad(set_to_none=True)
        assert any(reached), (
            "rsample_and_log_prob's draws carry no gradient to the base's parameters (does "
            "_sample use .sample() where .rsample() is meant? reverse-KL/VI cannot train it)"
        )
    base.zero_grad(set_to_none=True)
    if any(True for _ in base.parameters()):
        base.log_prob(s, context).sum().backward()
    for name, p in base.named_parameters():
        if p.numel():  # (a 1-D MADE's input layer has no weights to reach)
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    base.zero_grad(set_to_none=True)
    if base.features <= 2:
        pts, cell = _grid(base.features, half_width, 400 if base.features == 1 else 300, dtype)
        pts = pts.reshape(-1, *base.event_shape)
        for i in range(1 if context is None else min(2, n)):
            c = None if context is None else context[i : i + 1].expand(len(pts), -1)
            with torch.no_grad():
                dens = base.log_prob(pts, c).exp() * cell
            mass = dens.sum().item()
            assert abs(mass - 1) < 1e-3, f"the density integrates to {mass:.5f}, not 1"
            _check_draws(base, context, i, pts.reshape(len(pts), -1), dens / mass)


def _check_temperature(base, context, n: int) -> None:
    """``sample(..., temperature=T)`` follows ``T``: with the same seed, a draw at ``T = 0.5``
    differs from one at ``T = 1`` (``flowforge sample --temperature`` and the image reports
    rely on it), unless the base refuses a temperature other than 1 (``ValueError``)."""
    draws = []
    for t in (1.0, 0.5):
        with fork_rng(), torch.no_grad():
            torch.manual_seed(0)
            try:
                draws.append(base.sample(n, context, temperature=t))
            except ValueError:  # (a base that refuses temperatures, as TorchBase does)
                return
    assert not torch.equal(draws[0], draws[1]), (
        "sample(temperature=0.5) draws what temperature=1 draws with the same seed: _sample "
        "ignores its temperature (scale the draws' spread by it, as a Gaussian's standard "
        "deviation, or raise ValueError for a temperature other than 1)"
    )


def _check_draws(base, context, i: int, pts: Tensor, prob: Tensor, m: int = 4000) -> None:
    """Samples fall where the density (``prob`` on the grid ``pts``, cells of width ``w``)
    puts its mass; each cell counts for the share of it inside an event."""
    with fork_rng(), torch.no_grad():
        torch.manual_seed(0)  # (the caller's random state, on the base's device too, is kept)
        cm = None if context is None else context[i : i + 1].expand(m, -1)
        draws = base.sample(m, cm).reshape(m, -1)
    mids = pts[:, 0].unique()
    w = (mids[1] - mids[0]).item() if len(mids) > 1 else 1.0

    def share(c, lo, hi):  # the part of the cell [c - w/2, c + w/2] inside [lo, hi]
        return ((torch.clamp(c + w / 2, max=hi) - torch.clamp(c - w / 2, min=lo)) / w).clamp(0, 1)

    events = (
        ("|z| < 1", lambda v: v.abs() < 1, lambda c: share(c, -1.0, 1.0)),
        ("z < 0", lambda v: v < 0, lambda c: share(c, -math.inf, 0.0)),
    )
    for j in range(pts.shape[1]):
        for what, event, part in events:
            want = (prob * part(pts[:, j])).sum().item()
            got = event(draws[:, j]).double().mean().item()
            tol = 5 * math.sqrt(max(want * (1 - want), 1e-4) / m) + 0.01
            assert abs(got - want) <= tol, (
                f"samples disagree with log_prob: P({what}) in dimension {j} is {got:.3f} in "
                f"the samples, {want:.3f} by the density"
            )


def check_dequantizer(deq, x: Tensor) -> None:
    """A dequantizer: ``y = x + u`` with ``u`` in ``[0, 1)``, ``quantize(y) == x``, a finite
    ``log q``; for a learned one (with a ``flow``), ``log q`` equals the density its flow gives
    the drawn ``u``, and with one dimension that density integrates to 1 over ``[0, 1)``."""
    y, log_q = deq(x)
    u = y - x
    assert ((u >= 0) & (u < 1)).all(), "u leaves [0, 1)"
    assert torch.equal(deq.quantize(y), x), "quantize(x + u) != x"
    assert log_q.shape == (x.shape[0],) and torch.isfinite(log_q).all(), "log q is not finite"
    flow = getattr(deq, "flow", None)
    if flow is None:
        return
    h = deq._features(x)
    u, log_q = deq.rsample(x)  # (x + u - x would lose the bits that matter near 0 and 1)
    with torch.no_grad():
        eps, ladj = flow(u, h)
        want = -0.5 * (eps.square() + math.log(2 * math.pi)).flatten(1).sum(1) + ladj
    assert torch.allclose(log_q, want, atol=1e-6), "log q differs from the flow's density"
    if x[0].numel() == 1:
        n = 20000
        grid = (torch.arange(n, dtype=x.dtype) + 0.5) / n
        grid = grid.reshape(n, *x.shape[1:])
        with torch.no_grad():
            e, l = flow(grid, h[:1].expand(n, *h.shape[1:]))
            dens = (-0.5 * (e.square() + math.log(2 * math.pi)).flatten(1).sum(1) + l).exp()
        mass = (dens.sum() / n).item()
        assert abs(mass - 1) < 1e-3, f"q(u | x) integrates to {mass:.5f}, not 1"
