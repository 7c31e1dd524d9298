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
