"""MLP and MADE apply ReLU and LeakyReLU in place to each layer's fresh output: the same
numbers and, bit for bit, the same gradients as the out-of-place activations."""

import pytest
import torch
from torch import nn

import flowforge as ff
from flowforge.nets import MADE, MLP, ResidualMLP, apply_to_fresh, fresh_activation


def _reference_mlp(net: MLP) -> nn.Sequential:
    """The same layers with out-of-place activations (new modules, shared Linear weights)."""
    return nn.Sequential(
        *[type(m)() if isinstance(m, (nn.ReLU, nn.LeakyReLU)) else m for m in net.net]
    )


def _outputs_and_grads(fn, params, x):
    x = x.clone().requires_grad_()
    out = fn(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *params])
    return out.detach(), grads


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_mlp_in_place_activations_give_the_same_bits(activation):
    torch.manual_seed(0)
    net = MLP(5, 7, (32, 16), activation=activation, zero_init=False)
    assert all(m.inplace for m in net.net if isinstance(m, (nn.ReLU, nn.LeakyReLU)))
    ref = _reference_mlp(net)
    x = torch.randn(64, 5)
    x[0] = 0.0  # a pre-activation of exactly zero in the first layer's bias-free part
    params = list(net.parameters())
    out, grads = _outputs_and_grads(net, params, x)
    out_ref, grads_ref = _outputs_and_grads(ref, params, x)
    assert torch.equal(out, out_ref)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.equal(g, g_ref)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    # and a second backward through a graph kept with create_graph (residual flows, VI)
    x1 = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(net(x1).sum(), x1, create_graph=True)
    x2 = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(ref(x2).sum(), x2, create_graph=True)
    assert torch.equal(g, g_ref)


def test_activations_that_cannot_run_in_place_are_left_alone():
    for name in ["elu", "tanh", "gelu", "silu", "softplus"]:
        net = MLP(3, 2, (8,), activation=name)
        assert not getattr(net.net[1], "inplace", False), name
    assert not fresh_activation(nn.ELU).inplace  # its in-place backward rounds differently
    t = torch.randn(4)
    assert apply_to_fresh(nn.Tanh(), t) is not t
    # a residual network's activations read its residual stream: never in place
    res = ResidualMLP(3, 2, hidden=8, blocks=2)
    assert not any(getattr(m, "inplace", False) for m in res.modules())


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_made_in_place_activations_give_the_same_bits(activation):
    torch.manual_seed(0)
    made = MADE(6, 3, hidden=(24, 24), context_features=2, activation=activation, zero_init=False)
    x, c = torch.randn(32, 6), torch.randn(32, 2)
    params = list(made.parameters())
    out, grads = _outputs_and_grads(lambda t: made(t, c), params, x)
    hook = made.act.register_forward_hook(lambda *a: None)  # a hook: the module's own call
    try:
        out_ref, grads_ref = _outputs_and_grads(lambda t: made(t, c), params, x)
    finally:
        hook.remove()
    assert torch.equal(out, out_ref)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.equal(g, g_ref)


def test_a_hook_on_the_activation_still_sees_every_call():
    made = MADE(4, 2, hidden=(8, 8))
    seen = []
    made.act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    made(torch.randn(3, 4))
    assert seen == [(3, 8), (3, 8)]


def test_a_maf_trains_to_the_same_weights_as_with_out_of_place_activations():
    """Whole models: two Adam steps of a MAF and a RealNVP give bit-identical weights."""

    def trained(builder, plain: bool):
        torch.manual_seed(0)
        flow = builder()
        if plain:
            for m in flow.modules():
                if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
                    m.inplace = False
                if isinstance(m, MADE):
                    m.act.register_forward_hook(lambda *a: None)
        opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
        x = torch.randn(128, 4, generator=torch.Generator().manual_seed(1))
        for _ in range(2):
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
