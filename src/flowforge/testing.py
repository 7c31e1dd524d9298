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

import torch
from torch import Tensor, nn

__all__ = ["check_transform", "check_round_trip", "check_log_det", "check_gradients"]

ROUND_TRIP_RTOL = 1e-10
LADJ_ATOL = 1e-7


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


def check_round_trip(t, x: Tensor, context: Tensor | None = None, rtol: float | None = None):
    """``inverse(forward(x)) == x`` and ``forward ladj == -inverse ladj``."""
    tol = rtol if rtol is not None else (t.numeric_inverse or ROUND_TRIP_RTOL)
    z, ladj = t(x, context)
    _shape_ok(t, x, z, ladj)
    x2, ladj_inv = t.inverse(z, context)
    _shape_ok(t, z, x2, ladj_inv, inverse=True)
    err = _rel_err(x2, x)
    assert err <= tol, f"round trip relative error {err:.3g} > {tol:.1g}"
    err = _rel_err(-ladj_inv, ladj)
    assert err <= max(tol, LADJ_ATOL), f"forward ladj != -inverse ladj (rel. error {err:.3g})"
    # and starting from the noise side
    x3, ladj_inv3 = t.inverse(z, context)
    z3, ladj3 = t(x3, context)
    err = _rel_err(z3, z)
    assert err <= tol, f"forward(inverse(z)) relative error {err:.3g} > {tol:.1g}"


def _jacobian_ladj(fn, x: Tensor, context: Tensor | None) -> Tensor:
    """``log|det J|`` of ``fn`` at each example of ``x``, by autograd, one example at a time."""
    out = []
    for i in range(x.shape[0]):
        ci = None if context is None else context[i : i + 1]
        xi = x[i : i + 1]

        def f(v, xi=xi, ci=ci):
            return fn(v.reshape(xi.shape), ci)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        assert jac.shape[0] == jac.shape[1], f"Jacobian is not square: {tuple(jac.shape)}"
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def check_log_det(t, x: Tensor, context: Tensor | None = None, atol: float | None = None):
    """``ladj`` equals the autograd Jacobian's ``slogdet``, in both directions."""
    tol = atol if atol is not None else max(LADJ_ATOL, 10 * (t.numeric_inverse or 0))
    z, ladj = t(x, context)
    want = _jacobian_ladj(t, x, context)
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


def check_transform(t, x: Tensor, context: Tensor | None = None) -> None:
    """Round trip, ladj against autograd in both directions, and shapes."""
    check_round_trip(t, x, context)
    check_log_det(t, x, context)
