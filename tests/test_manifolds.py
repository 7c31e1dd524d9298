"""Flows on known manifolds: densities integrate to 1 over the manifold, sampling matches the
density, the maps are smooth across the seam, bad input gets one clear error. (Round trips,
log-dets against autograd, gradients and save/load: the generic test, tests/cases/manifolds.py.)
"""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge import transforms as T

PI = math.pi


def perturbed(flow, scale=0.25, seed=0):
    torch.manual_seed(seed)
    flow = flow.double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow.eval()


def torus(d, kind="spline"):
    return perturbed(ff.models.TorusFlow(features=d, layers=3, bins=5, hidden=(16,), kind=kind))


def sphere_flow(kind="spline"):
    return perturbed(ff.models.SphereFlow(layers=4, bins=5, hidden=(16,), kind=kind))


def midpoints(n, lo, hi):
    return lo + (torch.arange(n, dtype=torch.float64) + 0.5) * (hi - lo) / n


@pytest.mark.parametrize("kind", ["spline", "moebius"])
def test_circle_and_torus_densities_integrate_to_one(kind):
    with torch.no_grad():
        g = midpoints(4000, -PI, PI)
        mass = torus(1, kind).log_prob(g[:, None]).exp().sum() * (2 * PI / 4000)
        assert abs(mass.item() - 1) < 0.01, f"circle: {mass.item():.5f}"
        g = midpoints(160, -PI, PI)
        dens = torus(2, kind).log_prob(torch.cartesian_prod(g, g)).exp()
        mass = dens.sum() * (2 * PI / 160) ** 2
        assert abs(mass.item() - 1) < 0.01, f"torus: {mass.item():.5f}"
        assert dens.max() > 2 * dens.min()  # not the uniform density


@pytest.mark.parametrize("kind", ["spline", "moebius"])
def test_sphere_density_integrates_to_one_over_the_area(kind):
    # a grid in polar angle and longitude, area element sin(theta): independent of the chart
    n = 300
    theta, phi = midpoints(n, 0, PI), midpoints(2 * n, -PI, PI)
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    x = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1).reshape(-1, 3)
    with torch.no_grad():
        dens = sphere_flow(kind).log_prob(x).exp().reshape(n, 2 * n)
    mass = (dens * th.sin()).sum() * (PI / n) * (2 * PI / (2 * n))
    assert abs(mass.item() - 1) < 0.01, f"sphere: {mass.item():.5f}"
    # and the density is not the uniform one (so the check is not trivially 1)
    assert dens.max() > 2 * dens.min()


def test_samples_follow_the_density():
    """The fraction of samples in a region equals the density's integral over it (to 4
    standard errors), on the torus and on the sphere."""
    torch.manual_seed(1)
    flow = torus(2)
    n = 20000
    x = flow.sample(n)
    assert ((x >= -PI) & (x < PI)).all()
    inside = ((x[:, 0] > 0) & (x[:, 1] > 0)).double().mean().item()
    g = midpoints(200, 0, PI)
    with torch.no_grad():
        want = flow.log_prob(torch.cartesian_prod(g, g)).exp().sum().item() * (PI / 200) ** 2
    assert abs(inside - want) < 4 * math.sqrt(want * (1 - want) / n), (inside, want)

    flow = sphere_flow()
    x = flow.sample(n)
    assert torch.allclose(x.norm(dim=1), torch.ones(n, dtype=x.dtype))
    north = (x[:, 2] > 0.5).double().mean().item()
    # the cap z > 0.5 in polar angle and longitude
    theta, phi = midpoints(200, 0, PI / 3), midpoints(400, -PI, PI)
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    pts = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1).reshape(-1, 3)
    with torch.no_grad():
        dens = flow.log_prob(pts).exp().reshape(200, 400)
    want = ((dens * th.sin()).sum() * (PI / 3 / 200) * (2 * PI / 400)).item()
    assert abs(north - want) < 4 * math.sqrt(want * (1 - want) / n), (north, want)


@pytest.mark.parametrize("kind", ["spline", "moebius"])
def test_density_is_continuous_across_the_seam(kind):
    """-pi and pi are one point: a circle diffeomorphism's density agrees on both sides."""
    eps = 1e-7
    with torch.no_grad():
        for flow in (torus(1, kind), torus(2, kind)):
            d = flow.event_shape[0]
            torch.manual_seed(2)
            x = (torch.rand(6, d, dtype=torch.float64) * 2 - 1) * 3
            for j in range(d):
                lo, hi = x.clone(), x.clone()
                lo[:, j], hi[:, j] = -PI + eps, PI - eps
                assert torch.allclose(flow.log_prob(lo), flow.log_prob(hi), atol=1e-5)


def test_circle_maps_start_as_the_identity():
    x = (torch.rand(7, 2, dtype=torch.float64) * 2 - 1) * 3
    for kind in ("spline", "moebius"):
        z, ladj = ff.models.TorusFlow(features=2, kind=kind).double().transform(x)
        assert torch.allclose(z, x) and torch.allclose(ladj, torch.zeros(7, dtype=x.dtype))


def test_fitting_a_von_mises_beats_the_uniform():
    torch.manual_seed(0)
    data = torch.distributions.VonMises(torch.tensor(1.0), torch.tensor(4.0)).sample((256, 1))
    data = torch.remainder(data + PI, 2 * PI) - PI
    flow = ff.models.TorusFlow(features=1, layers=1, bins=6)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = flow.nll(data)
        loss.backward()
        opt.step()
    # the von Mises' entropy at kappa=4 is 0.81 nats; the uniform's, log(2 pi) = 1.84
    assert flow.nll(data).item() < 1.0


# -- bad input ------------------------------------------------------------------------------------


def test_angles_outside_the_period_are_refused():
    flow = ff.models.TorusFlow(features=2, layers=2, hidden=(8,))
    with pytest.raises(ValueError, match=r"angles in \[-pi, pi\], got values in"):
        flow.log_prob(torch.tensor([[0.1, 4.0]]))
    with pytest.raises(ValueError, match=r"angles in \[-pi, pi\]"):
        ff.models.TorusFlow(features=1).log_prob(torch.tensor([[-3.2]]))
    with pytest.raises(ValueError, match=r"angles in \[-pi, pi\]"):
        T.UniformTorus(2).log_prob(torch.tensor([[0.0, 7.0]]))
    # pi itself is an angle (atan2 returns it)
    assert torch.isfinite(flow.log_prob(torch.tensor([[PI, -PI]]))).all()


def test_vectors_off_the_sphere_are_refused():
    flow = ff.models.SphereFlow(layers=2, hidden=(8,))
    with pytest.raises(ValueError, match=r"unit vectors on the sphere \(norm 1"):
        flow.log_prob(torch.tensor([[1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="expected x of shape"):
        flow.log_prob(torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"height in \[-1, 1\]"):
        T.SphereToCylinder().inverse(torch.tensor([[0.0, 1.5]]))
    with pytest.raises(ValueError, match="interval coordinates in"):
        T.CircularCoupling([True, False], [True, False])(torch.tensor([[0.0, -2.0]]))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="expected features=3, got 2"):
        ff.models.SphereFlow(features=2)
    with pytest.raises(ValueError, match="unknown circle map 'mobius'"):
        ff.models.TorusFlow(features=2, kind="mobius")
    with pytest.raises(ValueError, match="bins to be an integer >= 2"):
        T.CircularElementwise(2, bins=1)
    with pytest.raises(ValueError, match="keep at least one coordinate"):
        T.CircularCoupling([True, True], [True, True])
    with pytest.raises(ValueError, match="periodic has 2 entries but mask has 3"):
        T.CircularCoupling([True, True], [True, False, False])
    with pytest.raises(ValueError, match="layers to be an integer in"):
        ff.models.TorusFlow(features=2, layers=0)
    with pytest.raises(ValueError, match="has no temperature"):
        ff.models.TorusFlow(features=2, layers=1, hidden=(8,)).sample(3, temperature=0.5)


def test_an_angle_just_past_pi_is_shown_past_pi():
    flow = ff.models.build("torusflow", features=2, layers=1, hidden=(8,))
    with pytest.raises(ValueError, match=r"got values in \[0, 3.14159[3-9]"):
        flow.log_prob(torch.tensor([[math.pi + 1e-6, 0.0]]))


def test_the_generic_check_takes_noise_from_the_manifold():
    """check_transform's default noise is N(0, 1), off the sphere and the torus: the layer's
    own refusal ended the check. With noise= from the base it checks them like any layer."""
    from flowforge.testing import check_transform

    torch.manual_seed(0)
    sphere = ff.models.SphereFlow(layers=2, hidden=(8,)).double()
    torus = ff.models.build("torusflow", features=2, layers=2, hidden=(8,)).double()
    for flow in (sphere, torus):
        check_transform(flow.transform, flow.sample(4), noise=flow.base.sample(4).double())


def test_a_pole_is_scored_the_same_whichever_signed_zero_it_holds():
    # atan2(0, -0.0) is pi: (-0.0, 0, 1) was scored 4 to 12 nats away from (0, 0, 1)
    torch.manual_seed(0)
    flow = ff.models.SphereFlow()
    for p in flow.parameters():
        p.data.normal_(0, 0.3)
    flow.eval()
    for t in (1.0, -1.0):
        poles = torch.tensor([[0.0, 0.0, t], [-0.0, 0.0, t], [0.0, -0.0, t], [-0.0, -0.0, t]])
        lp = flow.log_prob(poles)
        assert torch.isfinite(lp).all() and torch.equal(lp, lp[:1].expand(4)), lp
