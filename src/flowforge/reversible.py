r"""Memory-saving backpropagation through chains of invertible layers.

An invertible layer's input can be recomputed from its output, so a chain need not keep every
layer's activations for the backward pass (the reversible-network trick of Gomez et al., 2017).
With memory saving on, :class:`~flowforge.Compose` runs its layers without recording a graph and
keeps only the chain's output; the backward pass walks the layers in reverse, recovers each
layer's input with its exact inverse, re-runs that one layer with gradients and backpropagates
through it. Training memory then holds one layer's activations instead of all of them, for
about one extra forward and one inverse pass per step; a coupling layer's inverse and
recomputation share one evaluation of its conditioner (its kept half is the same in both,
:meth:`~flowforge.core.Transform._recompute`), so a coupling flow pays about one extra
conditioner pass. Nested chains are flattened first
(:meth:`~flowforge.core.Transform.reversible_ops`: a chain splices in its layers, a multi-scale
``FactorOut`` its split prior, a :class:`Split`, its inner steps and a :class:`Join`), so a
layer deep inside a multi-scale Glow is inverted and recomputed once, not once per level.

>>> import flowforge as ff
>>> flow = ff.models.RealNVP(features=4, layers=8, hidden=[16])
>>> _ = ff.memory_saving(flow)                 # every Compose inside the flow
>>> flow.log_prob(torch.randn(32, 4)).mean().backward()

Gradients equal the ordinary ones up to the round-off of the inverse (float32 precision, tested
in ``tests/test_reversible.py``). Dropout and other random layers replay the same random numbers
(the RNG state is recorded per layer and restored for the inverse and the recomputation, so a
coupling whose network uses dropout still inverts exactly). Layers whose inverse is numerical
(CNFs, residual blocks), that use batch statistics in training
(:class:`~flowforge.transforms.BatchNorm`), or that invert one position at a time through a
network with dropout (an autoregressive layer, TarFlow's transformer blocks: the inverse's
steps cannot draw the masks of the single forward pass) cannot be recomputed exactly, and a
chain holding one is refused.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._util import rng_states, set_rng_states

__all__ = ["ReversibleChain", "Split", "Join", "refusal"]


class Split:
    """A step of a flattened chain: a multi-scale layer (``FactorOut``) sets its factored-out
    channels aside; the steps after it act on the kept ones until the matching :class:`Join`."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k = self.layer.kept
        return x[:, :k], x[:, k:]  # (kept, set aside)

    def undo(self, kept: Tensor, out: Tensor) -> Tensor:
        return torch.cat([kept, out], 1)


class Join:
    """The end of a :class:`Split`: the flat ``[set aside, inner output]`` a ``FactorOut``
    returns."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, out: Tensor, z: Tensor) -> Tensor:
        b = z.shape[0]
        return torch.cat([out.reshape(b, -1), z.reshape(b, -1)], 1)

    def undo(self, z: Tensor) -> tuple[Tensor, Tensor]:
        f, b = self.layer, z.shape[0]
        c, h, w = f.event_shape
        out = z[:, : f._n_out].reshape(b, c - f.kept, h, w)
        return out, z[:, f._n_out :].reshape(b, *f.inner.output_shape)


class InexactInverseError(RuntimeError, ValueError):
    """A layer's output, recomputed from the input its inverse recovered, is not the output the
    forward pass gave: memory saving's gradients would be those of another point. A
    RuntimeError, and a ValueError: the model's state (saturated or ill-conditioned layers) in
    this dtype causes it."""


def _round_trip_tolerance(dtype: torch.dtype) -> float:
    """The relative difference between a layer's output and its recomputation taken as exact:
    8 sqrt(eps) (float32 about 3e-3, float64 1e-7)."""
    return 8 * torch.finfo(dtype).eps ** 0.5


class ReversibleChain(torch.autograd.Function):
    """``(z, ladj)`` of the steps ``ops`` applied to ``x``, keeping only ``z`` for the backward
    pass.

    Called as ``ReversibleChain.apply(ops, context, x, *params)``: ``ops`` is a chain's
    :meth:`~flowforge.core.Transform.reversible_ops` (layers, and the :class:`Split` and
    :class:`Join` of multi-scale layers); ``params`` are their trainable parameters, listed so
    that autograd returns their gradients.
    """

    @staticmethod
    def forward(ctx, ops, context, x, *params):
        states, aside = [], []
        with torch.no_grad():
            ladj = x.new_zeros(x.shape[0])
            for op in ops:
                states.append(None)
                if isinstance(op, Split):
                    x, out = op(x)
                    aside.append(out)
                elif isinstance(op, Join):
                    x = op(aside.pop(), x)
                else:
                    states[-1] = rng_states(x.device)
                    x, step = op(x, context)
                    ladj = ladj + step
        ctx.ops, ctx.states, ctx.params = ops, states, params
        ctx.context = context
        ctx.save_for_backward(x)
        return x, ladj

    @staticmethod
    def backward(ctx, grad_z, grad_ladj):
        if torch.is_grad_enabled():  # create_graph=True: a gradient penalty, a Hessian
            raise RuntimeError(
                "memory_saving computes first derivatives only (its backward pass recomputes "
                "each layer without a graph of its own); for a gradient penalty or other "
                "higher derivatives (create_graph=True) use the flow without memory_saving"
            )
        (z,) = ctx.saved_tensors
        context = ctx.context
        grads: dict[int, Tensor] = {}
        grad_context = None
        want_context = context is not None and context.requires_grad
        if grad_ladj is None:
            grad_ladj = z.new_zeros(z.shape[0])
        if grad_z is None:
            grad_z = torch.zeros_like(z)
        device = z.device
        outside = rng_states(device)
        aside: list[tuple[Tensor, Tensor]] = []  # (set-aside values, their gradient)
        errors: list[tuple[Tensor, nn.Module]] = []  # each layer's round-trip difference
        try:
            for op, state in zip(reversed(ctx.ops), reversed(ctx.states)):
                if isinstance(op, Join):
                    out, z = op.undo(z)
                    g_out, grad_z = op.undo(grad_z)
                    aside.append((out, g_out))
                    continue
                if isinstance(op, Split):
                    out, g_out = aside.pop()
                    z, grad_z = op.undo(z, out), op.undo(grad_z, g_out)
                    continue
                layer = op
                with torch.enable_grad():
                    c = context.detach().requires_grad_() if want_context else context
                    x, z2, ladj, shared = layer._recompute(
                        z, c, lambda s=state: set_rng_states(s, device)
                    )
                    with torch.no_grad():  # (checked once, after the loop: one host sync)
                        diff = (
                            ((z2.detach() - z).abs() / (1 + z.abs())).amax()
                            if z.numel()
                            else z.new_zeros(())
                        )
                        errors.append((torch.nan_to_num(diff, nan=float("inf")), layer))
                    own = [p for p in layer.parameters() if p.requires_grad]
                    leaves = [leaf for leaf, _ in shared]
                    inputs = [x, *leaves, *([c] if want_context else []), *own]
                    outputs = [t for t in (z2, ladj) if t.requires_grad]
                    grad_out = [g for t, g in ((z2, grad_z), (ladj, grad_ladj)) if t.requires_grad]
                    got = (
                        torch.autograd.grad(outputs, inputs, grad_out, allow_unused=True)
                        if outputs
                        else [None] * len(inputs)
                    )
                grad_z = got[0] if got[0] is not None else torch.zeros_like(x)
                for (_, fold), g in zip(shared, got[1 : 1 + len(shared)]):
                    if g is not None:
                        grad_z = grad_z + fold(g)
                rest = list(got[1 + len(shared) :])
                if want_context:
                    g = rest.pop(0)
                    if g is not None:
                        grad_context = g if grad_context is None else grad_context + g
                for p, g in zip(own, rest):
                    if g is not None:
                        grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
                z = x.detach()
        finally:
            set_rng_states(outside, device)
        if errors:
            worst = torch.stack([e for e, _ in errors])
            i = int(worst.argmax())
            tol = _round_trip_tolerance(z.dtype)
            if float(worst[i]) > tol:
                layer = errors[i][1]
                raise InexactInverseError(
                    f"memory_saving: {type(layer).__name__} does not invert exactly here in "
                    f"{str(z.dtype).removeprefix('torch.')}: its output recomputed from the "
                    f"input its inverse recovered differs by {float(worst[i]):.3g} (relative; "
                    f"at most {tol:.2g} taken as exact), so the gradients would be another "
                    "point's; train without memory_saving, in float64, or from a model whose "
                    "layers are not saturated"
                )
        return (None, grad_context, grad_z, *(grads.get(id(p)) for p in ctx.params))


def refusal(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be recomputed exactly from its output, or None."""
    for m in layer.modules():
        if getattr(m, "invertible", True) is False:
            return f"{type(m).__name__} has no inverse (it implements _forward only)"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            return (
                f"its {type(m).__name__} would update its running statistics a second time "
                "when the input is recomputed (build it with track_running_stats=False, or take "
                "it out)"
            )
        if getattr(m, "inverts_by_position", False) and _drops_out(m):
            return (
                f"{type(m).__name__} inverts one position at a time, and its network's dropout "
                "cannot be replayed there as in its single forward pass (set its dropout to 0)"
            )
        if getattr(m, "numeric_inverse", None):
            return f"{type(m).__name__} inverts numerically (to {m.numeric_inverse:g})"
        if getattr(m, "inverse_mode", "sequential") != "sequential":
            return f"{type(m).__name__} inverts by fixed-point iteration ({m.inverse_mode!r})"
        if getattr(m, "uses_batch_statistics", False):
            return f"{type(m).__name__} uses batch statistics in training"
    return None


def _drops_out(module: nn.Module) -> bool:
    """Whether ``module`` holds dropout that is on (an ``nn.Dropout`` or a ``dropout`` rate
    above 0, as the attention blocks keep theirs)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout) and m.p > 0:
            return True
        rate = getattr(m, "dropout", None)
        if isinstance(rate, float) and rate > 0:
            return True
    return False
