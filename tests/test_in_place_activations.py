"""MLP and MADE apply ReLU and LeakyReLU in place to each linear layer's fresh output when no
hook watches them: the same numbers and, bit for bit, the same gradients as the modules'
own out-of-place calls; with any hook, the modules run as they are."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import flowforge as ff
from flowforge.nets import MADE, MLP, ResidualMLP, apply_to_fresh


class _Ops(TorchDispatchMode):
    """Records the names of the aten operations that run."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _ops(fn) -> list[str]:
    with _Ops() as rec:
        fn()
    return rec.names


def _with_zero_units(net: MLP) -> MLP:
    """Two hidden units of the first layer get a pre-activation of exactly zero (weights and
    bias zero): the ReLU's edge, where its gradient is 0 in both paths."""
    with torch.no_grad():
        net.net[0].weight[:2] = 0.0
        net.net[0].bias[:2] = 0.0
    return net


def _outputs_and_grads(fn, params, x):
    """Output, first-order gradients, and the gradients of a function of the input gradient
    (a true double backward)."""
    x = x.clone().requires_grad_()
    out = fn(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *params], create_graph=True)
    second = torch.autograd.grad(grads[0].square().sum(), params, allow_unused=True)
    return out.detach(), [g.detach() for g in grads], second


def _same(a, b):
    out, grads, second = a
    out_r, grads_r, second_r = b
    assert torch.equal(out, out_r)
    for g, g_r in zip(grads, grads_r):
        assert torch.equal(g, g_r)
    for g, g_r in zip(second, second_r):
        assert (g is None and g_r is None) or torch.equal(g, g_r)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_in_place_activations_give_the_same_bits(activation, dtype):
    torch.manual_seed(0)
    net = _with_zero_units(MLP(5, 7, (32, 16), activation=activation, zero_init=False)).to(dtype)
    x = torch.randn(64, 5, dtype=dtype)
    params = list(net.parameters())
    fast = _outputs_and_grads(net, params, x)
    assert any(n.startswith(("aten.relu_", "aten.leaky_relu_")) for n in _ops(lambda: net(x)))
    # the reference: the Sequential's own modules, out of place
    plain = _outputs_and_grads(net.net, params, x)
    assert not any(n.endswith("_.default") and "relu" in n for n in _ops(lambda: net.net(x)))
    _same(fast, plain)
    with torch.no_grad():
        assert torch.equal(net(x), net.net(x))
        assert torch.equal(net.forward_grouped(x, None, 7).flatten(1), net.net(x))


def test_the_modules_stay_out_of_place_in_the_printout_and_pickles():
    net = MLP(3, 2, (8, 8))
    assert not any(getattr(m, "inplace", False) for m in net.modules())
    assert "inplace" not in repr(net)


def test_activations_that_cannot_run_in_place_are_left_alone():
    for name in ["elu", "tanh", "gelu", "silu", "softplus"]:
        net = MLP(3, 2, (8,), activation=name, zero_init=False)
        x = torch.randn(4, 3)
        names = _ops(lambda net=net, x=x: net(x))
        assert not any(n.endswith("_.default") for n in names), name
    t = torch.randn(4)
    assert apply_to_fresh(nn.Tanh(), t) is not t
    assert apply_to_fresh(nn.ELU(), t) is not t  # its in-place backward rounds differently
    # a residual network's activations read its residual stream: never in place
    res = ResidualMLP(3, 2, hidden=8, blocks=2)
    x = torch.randn(4, 3)
    assert not any("relu_" in n for n in _ops(lambda: res(x)))


def test_a_module_that_is_not_a_linear_layer_keeps_its_input():
    """Only a Linear's output is overwritten: an activation after another module is called
    out of place (a user may have edited ``net.net``)."""
    net = MLP(3, 3, (3,), zero_init=False)
    net.net[0] = nn.Identity()
    x = torch.randn(4, 3)
    before = x.clone()
    net(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("where", ["linear", "activation", "sequential"])
def test_every_kind_of_hook_still_works_on_an_mlp(where):
    torch.manual_seed(0)
    net = MLP(4, 3, (16, 16), zero_init=False)
    target = {"linear": net.net[0], "activation": net.net[1], "sequential": net.net}[where]
    x = torch.randn(8, 4, requires_grad=True)
    ref = net.net(x)
    fired = []
    # a forward hook whose output feeds the loss (an activation penalty), and full backward
    # hooks (gradient monitors, per-sample gradients): with in-place activations the first
    # raised "modified by an inplace operation" in backward, the second "is a view and is
    # being modified inplace" in forward
    penalty = []
    handles = [
        target.register_forward_hook(lambda m, i, o: penalty.append(o.square().mean())),
        target.register_full_backward_hook(lambda m, gi, go: fired.append("backward")),
        target.register_full_backward_pre_hook(lambda m, go: fired.append("pre")),
    ]
    try:
        out = net(x)
        assert torch.equal(out, ref)
        (out.sum() + sum(penalty)).backward()
    finally:
        for h in handles:
            h.remove()
    assert "backward" in fired and "pre" in fired
    # hooks removed: the in-place path again
    assert any("relu_" in n for n in _ops(lambda: net(x.detach())))


def test_global_module_hooks_see_every_activation():
    net = MLP(4, 3, (16, 16))
    made = MADE(4, 2, hidden=(8, 8))
    seen = []
    h = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(type(m).__name__)
    )
    try:
        net(torch.randn(2, 4))
        made(torch.randn(2, 4))
    finally:
        h.remove()
    assert seen.count("ReLU") == 4  # two in the MLP, two calls of the MADE's act
    assert any("relu_" in n for n in _ops(lambda: net(torch.randn(2, 4))))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_made_in_place_activations_give_the_same_bits(activation):
    torch.manual_seed(0)
    made = MADE(6, 3, hidden=(24, 24), context_features=2, activation=activation, zero_init=False)
    x, c = torch.randn(32, 6), torch.randn(32, 2)
    params = list(made.parameters())
    fast = _outputs_and_grads(lambda t: made(t, c), params, x)
    assert any("relu_" in n for n in _ops(lambda: made(x, c)))
    hook = made.act.register_forward_hook(lambda *a: None)  # a hook: the module's own call
    try:
        assert not any("relu_" in n for n in _ops(lambda: made(x, c)))
        plain = _outputs_and_grads(lambda t: made(t, c), params, x)
    finally:
        hook.remove()
    _same(fast, plain)


def test_backward_hooks_on_a_mades_activation_fire():
    made = MADE(4, 2, hidden=(8, 8))
    fired = []
    made.act.register_full_backward_hook(lambda m, gi, go: fired.append(1))
    made(torch.randn(3, 4, requires_grad=True)).sum().backward()
    assert len(fired) == 2


def test_a_maf_and_a_realnvp_train_to_the_same_weights_as_out_of_place():
    """Whole models: three Adam steps give bit-identical weights with and without the in-place
    path (a no-op forward hook on every MLP's Sequential and MADE's act forces the modules'
    own calls)."""

    def trained(builder, plain: bool):
        torch.manual_seed(0)
        flow = builder()
        if plain:
            for m in flow.modules():
                if isinstance(m, MLP):
                    m.net.register_forward_hook(lambda *a: None)
                if isinstance(m, MADE):
                    m.act.register_forward_hook(lambda *a: None)
        opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
        x = torch.randn(128, 4, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            loss = -flow.log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in flow.parameters()]

    for builder in (
        lambda: ff.models.MAF(features=4, layers=2, hidden=(16, 16)),
        lambda: ff.models.RealNVP(features=4, layers=2, hidden=(16, 16)),
    ):
        for a, b in zip(trained(builder, False), trained(builder, True)):
            assert torch.equal(a, b)


def test_the_benchmark_times_both_paths_on_one_model():
    """benchmarks/in_place.py: both paths give the same log_prob (it checks before timing)
    and the out-of-place switch is undone afterwards."""
    import os
    import sys

    pytest.importorskip("sklearn")
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    sys.path.insert(0, bench)
    try:
        import in_place
    finally:
        sys.path.remove(bench)
    train = torch.randn(3000, 64)
    for op in ("log_prob", "train"):
        row = in_place.measure("realnvp", op, 32, train, rounds=2, min_time=0.001)
        assert row["in_place_s"] > 0 and row["out_of_place_s"] > 0 and row["speedup"] > 0
    flow = ff.models.MAF(features=4, layers=1, hidden=(8, 8))
    handles = in_place.out_of_place(flow)
    assert len(handles) == 1
    x = torch.randn(2, 4)
    assert not any("relu_" in n for n in _ops(lambda: flow.log_prob(x)))
    for h in handles:
        h.remove()
    assert any("relu_" in n for n in _ops(lambda: flow.log_prob(x)))
