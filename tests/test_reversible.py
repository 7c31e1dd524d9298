"""Memory-saving backpropagation (flowforge.memory_saving): the same gradients as ordinary
backpropagation, to float32 precision, for deep coupling flows, Glow (nested chains, ActNorm,
LU 1x1 convolutions, the split prior) and conditional flows; refused where a layer cannot be
recomputed exactly."""

from __future__ import annotations

import copy

import pytest
import torch

import flowforge as ff

pytestmark = pytest.mark.usefixtures("one_thread")


def grads(flow, x, context=None):
    flow.zero_grad(set_to_none=True)
    loss = -flow.log_prob(x, context).mean()
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in flow.named_parameters() if p.grad is not None
    }


def perturb(flow, scale=0.05):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize(
    "build, x",
    [
        (lambda: ff.models.RealNVP(features=6, layers=16, hidden=[16]), lambda: torch.randn(64, 6)),
        (
            lambda: ff.models.Glow(shape=(1, 8, 8), scales=2, steps=3, hidden=8, levels=17),
            lambda: torch.randint(0, 17, (16, 1, 8, 8)).float(),
        ),
        (  # checkerboard (masked) and channel couplings, ActNorm, squeezes, factor-out
            lambda: ff.models.RealNVP(shape=(1, 8, 8), scales=2, hidden=8, levels=17),
            lambda: torch.randint(0, 17, (16, 1, 8, 8)).float(),
        ),
        (lambda: ff.models.MAF(features=5, layers=4, hidden=[16]), lambda: torch.randn(32, 5)),
        (lambda: ff.models.NSF(features=4, layers=3, hidden=[16]), lambda: torch.randn(32, 4)),
    ],
    ids=["realnvp-16", "glow", "realnvp-image", "maf", "nsf"],
)
def test_gradients_match_ordinary_backprop(build, x):
    torch.manual_seed(0)
    flow, data = build(), x()
    flow.train()
    with torch.no_grad():
        flow.log_prob(data)  # ActNorm's data-dependent initialisation
    perturb(flow)
    torch.manual_seed(3)  # the same dequantization noise for both
    loss, want = grads(flow, data)
    ff.memory_saving(flow)
    torch.manual_seed(3)
    loss2, got = grads(flow, data)
    assert torch.allclose(loss, loss2, rtol=1e-5, atol=1e-5)
    assert want.keys() == got.keys() and len(want) > 4
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=2e-3, atol=2e-4, msg=k)
    ff.memory_saving(flow, False)
    torch.manual_seed(3)
    _, again = grads(flow, data)
    assert all(torch.equal(again[k], want[k]) for k in want)


def test_conditional_flows_get_context_gradients():
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=3, layers=4, hidden=[8], context_features=2)
    perturb(flow)
    x = torch.randn(16, 3)
    c1 = torch.randn(16, 2, requires_grad=True)
    (-flow.log_prob(x, c1).sum()).backward()
    ff.memory_saving(flow)
    c2 = c1.detach().clone().requires_grad_()
    (-flow.log_prob(x, c2).sum()).backward()
    torch.testing.assert_close(c2.grad, c1.grad, rtol=2e-3, atol=2e-4)


def test_dropout_replays_the_same_noise():
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=4, layers=3, hidden=[16])
    for m in flow.modules():  # a dropout inside every conditioner
        if isinstance(m, torch.nn.Sequential):
            m.insert(1, torch.nn.Dropout(0.3))
    perturb(flow)
    x = torch.randn(32, 4)
    torch.manual_seed(5)
    _, want = grads(flow, x)
    ff.memory_saving(flow)
    torch.manual_seed(5)
    _, got = grads(flow, x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=2e-3, atol=2e-4, msg=k)


def test_layers_that_cannot_be_recomputed_are_refused():
    flow = ff.models.RealNVP(features=4, layers=2, hidden=[8], batch_norm=True)
    with pytest.raises(ValueError, match="BatchNorm"):
        ff.memory_saving(flow)
    assert not any(getattr(m, "memory_saving", False) for m in flow.modules())
    flow = ff.models.ResidualFlow(features=2, blocks=1)
    with pytest.raises(ValueError, match="numerically"):
        ff.memory_saving(flow)


def test_evaluation_and_sampling_are_unchanged():
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=4, layers=4, hidden=[8])
    perturb(flow)
    x = torch.randn(8, 4)
    with torch.no_grad():
        want = flow.log_prob(x)
    ff.memory_saving(flow)
    with torch.no_grad():
        assert torch.equal(flow.log_prob(x), want)
    assert flow.sample(3).shape == (3, 4)


def test_an_iterative_inverse_is_refused():
    flow = ff.models.MAF(features=4, layers=2, hidden=[8])
    ff.transforms.set_inverse(flow, "parallel", tol=1e-4)
    with pytest.raises(ValueError, match="numerically|fixed-point"):
        ff.memory_saving(flow)
    ff.transforms.set_inverse(flow, "sequential")
    ff.memory_saving(flow)


def test_each_layer_is_recomputed_once_however_deep_the_chains_nest():
    # a 3-scale Glow nests its chains three deep (FactorOut inside FactorOut); with the chains
    # flattened every leaf layer is recomputed once per step, at every depth: it runs forward
    # twice (the pass without a graph and the recomputation) and inverts once, except the
    # couplings, whose recomputation evaluates the conditioner once for both (no separate call)
    torch.manual_seed(0)
    flow = ff.models.Glow(shape=(1, 8, 8), scales=3, steps=2, hidden=8, levels=17)
    x = torch.randint(0, 17, (8, 1, 8, 8)).float()
    flow.train()
    with torch.no_grad():
        flow.log_prob(x)
    ff.memory_saving(flow)
    leaves = [
        m
        for m in flow.transform.modules()
        if isinstance(m, ff.Transform) and m.reversible_ops() == [m]
    ]
    calls = {id(m): [0, 0, 0] for m in leaves}  # forward, inverse, recompute
    for m in leaves:
        m.register_forward_hook(
            lambda mod, *_: calls[id(mod)].__setitem__(0, calls[id(mod)][0] + 1)
        )
        for k, name in ((1, "inverse"), (2, "_recompute")):
            original = getattr(m, name)

            def counted(*a, _m=m, _f=original, _k=k, **kw):
                calls[id(_m)][_k] += 1
                return _f(*a, **kw)

            setattr(m, name, counted)
    flow.log_prob(x).mean().backward()
    top = {id(m) for m in flow.transform.layers}
    inner = [c for i, c in calls.items() if i not in top]
    assert inner, "the Glow has no nested layers"
    couplings = [id(m) for m in leaves if isinstance(m, ff.transforms.Coupling)]
    assert couplings, "the Glow has no couplings"
    for i, c in calls.items():
        assert c == ([1, 0, 1] if i in couplings else [2, 1, 1]), sorted(map(tuple, calls.values()))


def test_a_chart_that_normalises_its_input_gets_the_inputs_own_gradient():
    # SphereToCylinder accepts vectors within 1e-4 of unit norm and normalises them; its inverse
    # gives back the unit vector, so it runs outside the recomputed chain, keeping its input
    torch.manual_seed(0)
    flow = ff.models.SphereFlow(layers=2, hidden=(8,)).double()
    perturb(flow, 0.3)
    saving = ff.memory_saving(copy.deepcopy(flow))
    x0 = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1) * (1 + 5e-5)
    got = []
    for f in (flow, saving):
        x = x0.clone().requires_grad_()
        _, g = grads(f, x)
        got.append((x.grad, g))
    torch.testing.assert_close(got[1][0], got[0][0], rtol=1e-10, atol=1e-12)
    for n, g in got[0][1].items():
        torch.testing.assert_close(got[1][1][n], g, rtol=1e-10, atol=1e-12)


def test_a_projecting_layer_after_the_first_is_refused_and_a_split_may_come_first():
    from flowforge.core import Compose
    from flowforge.transforms import ActNorm, FactorOut, Reverse, SphereToCylinder

    chain = Compose([Reverse(3), SphereToCylinder(), ActNorm((2,))])
    with pytest.raises(ValueError, match="SphereToCylinder projects its input"):
        ff.memory_saving(chain)
    torch.manual_seed(0)
    c = Compose([FactorOut((4, 2, 2), ActNorm((2, 2, 2)))])  # its ops start with a Split
    x = torch.randn(3, 4, 2, 2)
    z0, l0 = c(x)
    ff.memory_saving(c)
    z, ladj = c(x.requires_grad_())
    torch.testing.assert_close(z, z0)
    torch.testing.assert_close(ladj, l0)


def test_higher_derivatives_are_refused_not_silently_dropped():
    # a gradient penalty through memory saving: its backward recomputes without a graph, so
    # the penalty's own gradient was silently zero
    torch.manual_seed(0)
    flow = ff.memory_saving(ff.models.RealNVP(features=3, layers=2, hidden=(8,)))
    x = torch.randn(16, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(flow.log_prob(x).sum(), x, create_graph=True)


def test_a_layer_that_does_not_invert_exactly_is_an_error_not_wrong_gradients():
    # a variational dequantizer's log-scales at their bound: u rounds to 1 in float32, the
    # recomputation takes logit(1), and the gradients were NaN (or, milder, another point's)
    from flowforge.reversible import InexactInverseError

    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=3, layers=2, hidden=(8,), levels=17,
                             dequantization="variational")  # fmt: skip
    x = torch.randint(0, 17, (64, 3)).float()
    flow.log_prob(x)
    with torch.no_grad():
        flow.dequantizer.flow.transform.layers[-2].net.net[-1].bias[1::2] = 10.0
    saver = ff.memory_saving(copy.deepcopy(flow))
    with pytest.raises(InexactInverseError, match="does not invert exactly here in float32"):
        (-saver.log_prob(x).mean()).backward()


def test_an_autoregressive_layer_with_dropout_is_refused_before_training():
    # TarFlow's blocks with dropout trained a step or two, then stopped "in float32 ...
    # saturated": the inverse steps one position at a time and cannot replay the masks
    import flowforge as ff

    flow = ff.models.build("tarflow", shape=(1, 4, 4), levels=17, blocks=1, width=16, depth=1,
                           dropout=0.1)  # fmt: skip
    with pytest.raises(ValueError, match="inverts one position at a time, and its network's"):
        ff.memory_saving(flow)
    ff.memory_saving(ff.models.build("tarflow", shape=(1, 4, 4), levels=17, blocks=1,
                                     width=16, depth=1))  # fmt: skip


class _ForwardOnly(ff.Transform):
    """A layer of one's own with no _inverse."""

    def __init__(self, d):
        super().__init__((d,))
        self.s = torch.nn.Parameter(torch.full((d,), 0.1))

    def _forward(self, x, context):
        return x * self.s.exp(), self.s.sum().expand(x.shape[0])


def _coupling(d, hidden_layer=None):
    def net(i, o):
        mlp = ff.nets.MLP(i, o, (16,))
        return torch.nn.Sequential(hidden_layer(i), mlp) if hidden_layer else mlp

    return ff.transforms.Coupling(ff.transforms.half_mask(d), net, ff.transforms.Affine())


def test_a_layer_without_an_inverse_is_refused_up_front_and_named_elsewhere():
    # an audit: memory_saving accepted it and the first backward failed with an empty
    # NotImplementedError, as did sampling and check_transform
    flow = ff.Flow(ff.Compose(_coupling(4), _ForwardOnly(4)), ff.distributions.StandardNormal(4))
    with pytest.raises(ValueError, match=r"layer 1 \(_ForwardOnly\) .*has no inverse"):
        ff.memory_saving(flow)
    assert flow.transform.memory_saving is False  # nothing switched
    with pytest.raises(NotImplementedError, match="_ForwardOnly has no inverse .*_inverse"):
        flow.sample(3)


def test_a_torch_batchnorm_in_a_conditioner_is_refused():
    # its running statistics were updated twice per step (48 batches counted for 24 steps),
    # and the trained model differed from ordinary backpropagation's
    flow = ff.Flow(ff.Compose(_coupling(4, torch.nn.BatchNorm1d), _coupling(4)),
                   ff.distributions.StandardNormal(4))  # fmt: skip
    with pytest.raises(ValueError, match="BatchNorm1d would update its running statistics"):
        ff.memory_saving(flow)
    untracked = lambda i: torch.nn.BatchNorm1d(i, track_running_stats=False)  # noqa: E731
    ff.memory_saving(ff.Flow(ff.Compose(_coupling(4, untracked), _coupling(4)),
                             ff.distributions.StandardNormal(4)))  # fmt: skip
