"""Second derivatives and forward-mode derivatives, where a flow's arithmetic could give a
silently wrong one: inverses solved numerically (a Hessian through a sample), attention's
fused kernels, a spline's clamp at its bound, a radial layer's centre (an audit of derivatives
with respect to the inputs)."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff

F64 = torch.float64


def _perturbed(flow, scale=0.3):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow.eval()


@pytest.mark.parametrize("name", ["naf", "sospf", "bpf", "bnaf"])
def test_a_sample_from_a_numerical_inverse_has_its_second_derivatives(name):
    # (one Newton step from the detached root gave d2x/dz2 = 0: Hessians through samples,
    # Newton-CG on a reverse KL, an inverted layer's log p, all silently wrong)
    torch.manual_seed(0)
    flow = _perturbed(ff.models.build(name, features=2, layers=1, standardize=False).double())

    def first(z, create_graph):
        z = z.clone().requires_grad_(True)
        x = flow.transform.inverse(z)[0]
        return torch.autograd.grad(x.square().sum(), z, create_graph=create_graph)[0], z

    z0 = torch.tensor([[0.7, -0.2], [-1.3, 0.4]], dtype=F64)
    g, z = first(z0, True)
    v = torch.tensor([[0.3, -1.0], [1.0, 0.5]], dtype=F64)
    (hv,) = torch.autograd.grad((g * v).sum(), z)
    h = 1e-5
    fd = (first(z0 + h * v, False)[0] - first(z0 - h * v, False)[0]) / (2 * h)
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-7)


def test_a_transformer_flow_has_second_and_forward_mode_derivatives(monkeypatch):
    # (the fused CPU attention kernel has neither: torch.func.hessian and jvp failed in
    # torch's words, and a double backward too)
    from flowforge.attention import CausalTransformer

    torch.manual_seed(0)
    flow = ff.models.build("tarflow", features=4, blocks=2, width=16, depth=1, heads=2)
    flow = _perturbed(flow.double(), 0.2)
    x = torch.randn(3, 4, dtype=F64)
    hessian = torch.func.hessian(lambda v: flow.log_prob(v[None]).sum())(x[0])
    _, tangent = torch.func.jvp(flow.log_prob, (x,), (torch.ones_like(x),))
    xg = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="higher_order = True"):  # (a graph to go on from)
        torch.autograd.grad(flow.log_prob(xg).sum(), xg, create_graph=True)
    monkeypatch.setattr(CausalTransformer, "higher_order", True)
    (g,) = torch.autograd.grad(flow.log_prob(xg).sum(), xg, create_graph=True)
    rows = [torch.autograd.grad(g[0, i], xg, retain_graph=True)[0][0] for i in range(4)]
    torch.testing.assert_close(torch.stack(rows), hessian)
    torch.testing.assert_close(tangent, g.sum(1).detach())
    assert hessian.abs().max() > 0.1  # (a layer away from the identity)


def test_a_cnf_adjoint_refuses_second_derivatives_in_one_line():
    from flowforge.transforms import CNF

    cnf = CNF(2, hidden=(8,), adjoint=True)
    x = torch.randn(4, 2, requires_grad=True)
    z, ladj = cnf(x)
    with pytest.raises(RuntimeError, match="adjoint=True has first derivatives only"):
        torch.autograd.grad((z.square().sum() - ladj.sum()), x, create_graph=True)
    z, ladj = cnf(x)
    (g,) = torch.autograd.grad((z.square().sum() - ladj.sum()), x)  # (first order: fine)
    assert torch.isfinite(g).all()


def test_a_splines_forward_mode_derivative_at_its_bound():
    # (a float32 input on the bound rounds one ulp past it: forward mode took the hard clamp,
    # and a derivative of 0 where reverse mode gives the spline's own)
    from flowforge.transforms import RationalQuadratic

    torch.manual_seed(0)
    rq = RationalQuadratic(bins=4, bound=3.0)
    params = 0.8 * torch.randn(1, rq.params_per_dim)
    for v in (3.0, -3.0, 0.3):
        x = torch.tensor([v])
        xr = x.clone().requires_grad_(True)
        for i in (0, 1):  # the map and its log-derivative
            (reverse,) = torch.autograd.grad(rq(xr, params)[i].sum(), xr)
            _, forward = torch.func.jvp(lambda t, i=i: rq(t, params)[i], (x,), (torch.ones(1),))
            torch.testing.assert_close(forward, reverse)
            assert reverse.abs().item() > 1e-3


def test_a_radial_layers_score_at_its_centre_is_a_number_in_float32():
    # (1e-300 underflowed in float32: the norm's sqrt(0) gave a NaN gradient)
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        flow = ff.models.Radial(features=2, layers=1, standardize=False).to(dtype).eval()
        layer = next(m for m in flow.modules() if type(m).__name__ == "Radial")
        x = layer.params(None)[0].detach().reshape(1, 2).clone().requires_grad_(True)
        (score,) = torch.autograd.grad(flow.log_prob(x).sum(), x)
        assert torch.isfinite(score).all(), (dtype, score)


def test_a_cnf_adjoints_outputs_may_be_changed_in_place():
    from flowforge.transforms import CNF

    z, ladj = CNF(2, hidden=(8,), adjoint=True)(torch.randn(4, 2, requires_grad=True))
    z.add_(1)  # (a view of a custom function's input could not be)
    (z.sum() - ladj.sum()).backward()
