"""Conditioners that return their parameters grouped (``nets.grouped_linear``): the same
numbers as the plain output, each parameter contiguous, and the same gradients."""

import pytest
import torch

import flowforge as ff
from flowforge.nets import MADE, MLP, ResidualMLP, grouped_linear
from flowforge.transforms import Coupling, RationalQuadratic, half_mask


def _perturb(net):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def test_grouped_linear_is_the_linear_map_in_parameter_major_memory():
    torch.manual_seed(0)
    h, w, b = torch.randn(5, 7), torch.randn(4 * 3, 7), torch.randn(4 * 3)
    out = grouped_linear(h, w, b, 3)
    assert out.shape == (5, 4, 3)
    torch.testing.assert_close(out, torch.nn.functional.linear(h, w, b).view(5, 4, 3))
    assert out.select(-1, 1).stride(-1) == 1  # parameter k of every dimension, contiguous
    assert out.movedim(-1, 1).is_contiguous()  # the spline's bins-second layout: a view


@pytest.mark.parametrize(
    "net",
    [
        lambda: MLP(3, 4 * 5, (8, 8), context_features=2),
        lambda: ResidualMLP(3, 4 * 5, hidden=8, blocks=1, context_features=2),
    ],
)
def test_mlp_grouped_matches_forward(net):
    net = _perturb(net().double())
    x, c = torch.randn(6, 3, dtype=torch.double), torch.randn(6, 2, dtype=torch.double)
    torch.testing.assert_close(net.forward_grouped(x, c, 5), net(x, c).view(6, 4, 5))


def test_made_output_is_grouped_and_keeps_its_gradients():
    made = _perturb(MADE(4, params_per_dim=3, hidden=(16,)).double())
    x = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    out = made(x)
    assert out.shape == (5, 4, 3) and out.movedim(-1, 1).is_contiguous()
    # the plain map: masked output layer, rows in dimension-major order
    ws = made._weights()
    h = torch.relu(torch.nn.functional.linear(x, ws[0], made.linears[0].bias))
    plain = torch.nn.functional.linear(h, ws[-1], made.out.bias).view(5, 4, 3)
    torch.testing.assert_close(out, plain)
    g = torch.randn(5, 4, 3, dtype=torch.double)
    a = torch.autograd.grad(out, [x, made.out.weight], g)
    b = torch.autograd.grad(plain, [x, made.out.weight], g)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_spline_coupling_grouped_and_plain_paths_agree():
    torch.manual_seed(0)
    layer = Coupling(half_mask(6), lambda i, o: MLP(i, o, (16,)), RationalQuadratic(bins=5))
    _perturb(layer).double()
    x = 2 * torch.randn(32, 6, dtype=torch.double)
    z, ladj = layer(x)
    layer.grouped_params = False
    z0, ladj0 = layer(x)
    torch.testing.assert_close(z, z0)
    torch.testing.assert_close(ladj, ladj0)
    x_back, _ = layer.inverse(z)
    torch.testing.assert_close(x_back, x)


def test_the_bits_back_coder_uses_the_plain_path():
    from flowforge import bitsback

    flow = ff.models.NSF(features=4, layers=2, hidden=(8,), levels=5)
    f64 = bitsback._copy64(flow)
    layers = [m for m in f64.modules() if isinstance(m, Coupling)]
    assert layers and not any(m.grouped_params for m in layers)
    assert all(m.grouped_params for m in flow.modules() if isinstance(m, Coupling))


def test_made_grouped_false_gives_the_same_numbers_dimension_major():
    made = _perturb(MADE(4, params_per_dim=3, hidden=(16,)))
    x = torch.randn(5, 4)
    a = made(x)
    made.grouped = False
    b = made(x)
    assert b.is_contiguous() and not a.is_contiguous()
    torch.testing.assert_close(a, b)
    # the mixture base reduces over the last axis: it asks for the dimension-major layout
    from flowforge.distributions import MADEMoG

    assert MADEMoG((4,), components=2).made.grouped is False


def test_a_subclass_forward_or_a_hook_is_respected():
    class Doubled(MLP):
        def forward(self, x, context=None):
            return 2 * super().forward(x, context)

    net = _perturb(Doubled(3, 4 * 5, (8,)))
    x = torch.randn(6, 3)
    torch.testing.assert_close(net.forward_grouped(x, None, 5), net(x).view(6, 4, 5))
    plain = _perturb(MLP(3, 4 * 5, (8,)))
    seen = []
    plain.net[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    torch.testing.assert_close(plain.forward_grouped(x, None, 5), plain(x).view(6, 4, 5))
    assert len(seen) == 2  # the hook ran in the grouped call too


def test_two_parameters_per_dimension_keep_the_plain_layout():
    # the affine layer's stride-2 reads cost less than permuting the output rows: P < 3 is not
    # grouped (nets.GROUPED_FROM), P >= 3 is
    from flowforge.nets import GROUPED_FROM
    from flowforge.transforms import Affine

    assert GROUPED_FROM == 3
    x = torch.randn(5, 4)
    assert MADE(4, params_per_dim=2, hidden=(16,))(x).is_contiguous()
    assert not MADE(4, params_per_dim=3, hidden=(16,))(x).is_contiguous()

    calls = []

    class Watched(MLP):
        def forward_grouped(self, x, context, groups):
            calls.append(groups)
            return super().forward_grouped(x, context, groups)

    for transformer, want in ((Affine(), []), (RationalQuadratic(bins=4), [11])):
        calls.clear()
        layer = Coupling(half_mask(4), lambda i, o: Watched(i, o, (8,)), transformer)
        layer(torch.randn(3, 4))
        assert calls == want


def test_a_compiled_made_with_two_parameters_gives_the_eager_numbers():
    # under torch.compile MADE groups from P = 2 (nets.GROUPED_FROM_COMPILED): same numbers
    torch.manual_seed(0)
    made = _perturb(MADE(5, params_per_dim=2, hidden=(16,))).double()
    x = torch.randn(7, 5, dtype=torch.double)
    torch._dynamo.reset()
    compiled = torch.compile(made, fullgraph=True)
    torch.testing.assert_close(compiled(x), made(x), rtol=1e-12, atol=1e-12)
