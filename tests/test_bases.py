"""Learnable bases beyond the generic test: the autoregressive MADE mixture, class-conditional
Gaussians and vectorised conditional sampling."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from cases.base import perturbed
from flowforge.distributions import MADEMoG

D64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def test_made_mog_is_normalised_in_1d():
    torch.manual_seed(0)
    base = perturbed(MADEMoG(1, components=3, hidden=(8,)).to(D64), 0.5)
    z = torch.linspace(-25, 25, 40001, dtype=D64)[:, None]
    with torch.no_grad():
        p = base.log_prob(z).exp()
    assert abs(torch.trapezoid(p, z[:, 0]).item() - 1) < 1e-6


@pytest.mark.parametrize("context", [0, 2])
def test_made_mog_is_normalised_in_2d_and_samples_match(context):
    torch.manual_seed(0)
    base = perturbed(MADEMoG(2, components=3, hidden=(16,), context_features=context), 0.1)
    base = base.to(D64)
    g = torch.linspace(-20, 20, 801, dtype=D64)
    zz = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    c = torch.tensor([[0.3, -1.0]], dtype=D64) if context else None
    with torch.no_grad():
        p = base.log_prob(zz, None if c is None else c.expand(len(zz), -1)).exp()
    p = p.reshape(len(g), len(g))
    mass = torch.trapezoid(torch.trapezoid(p, g, dim=1), g)
    assert abs(mass.item() - 1) < 1e-4
    # sequential sampling draws from the same density: compare the means
    zi = [zz[:, i].reshape(p.shape) for i in (0, 1)]
    mean = torch.stack([torch.trapezoid(torch.trapezoid(p * z, g, dim=1), g) for z in zi])
    torch.manual_seed(0)
    s = base.sample(20000, None if c is None else c.expand(20000, -1))
    assert torch.allclose(s.mean(0), mean, atol=4 * s.std(0).max().item() / math.sqrt(20000))


def test_made_mog_base_through_make_base_and_temperature():
    flow = ff.models.RealNVP(features=3, layers=2, hidden=(8,), base="made-mog", components=2)
    assert isinstance(flow.base, MADEMoG)
    assert flow.sample(4, temperature=0.5).shape == (4, 3)
    with pytest.raises(ValueError, match="unknown base"):
        ff.models.RealNVP(features=3, base="mog-made")
    # (an audit: {"made-mog": {...}} was refused as "unknown base None")
    with pytest.raises(ValueError, match="names itself with its 'name' key"):
        ff.models.RealNVP(features=3, base={"made-mog": {"components": 2}})
    flow = ff.models.RealNVP(features=3, layers=1, base={"name": "made-mog", "components": 2})
    assert isinstance(flow.base, MADEMoG)


def test_class_gaussian_base_needs_a_context():
    with pytest.raises(ValueError, match="needs a context"):
        ff.models.Glow(shape=(1, 4, 4), base="class-gaussian")
    flow = ff.models.RealNVP(features=3, layers=2, context_features=4, base="class-gaussian")
    assert isinstance(flow.base, ff.distributions.DiagGaussian)
    # one Gaussian per class: the base's parameters are linear in the one-hot context
    assert sum(isinstance(m, torch.nn.Linear) for m in flow.base.modules()) == 1


def test_class_conditional_sampling_is_vectorised_and_checked():
    torch.manual_seed(0)
    flow = ff.models.Glow(
        shape=(1, 4, 4), steps=1, hidden=8, levels=17, context_features=10, base="class-gaussian"
    )
    perturbed(flow.base, 1.0)
    labels = torch.eye(10)[[3, 7, 3]]
    s = flow.sample(6, labels)
    assert s.shape == (6, 3, 1, 4, 4)
    assert ((s >= 0) & (s <= 16) & (s == s.floor())).all()
    with pytest.raises(ValueError, match="conditional and expects a context"):
        flow.sample(2)
    with pytest.raises(ValueError, match="conditional and expects a context"):
        flow.log_prob(torch.zeros(2, 1, 4, 4))


def test_a_conditional_mixture_base_separates_its_components():
    # (an audit) the context network's output layer started at zero, so the components were
    # equal, got equal gradients and stayed equal: the mixture was one Gaussian, scoring as
    # base="diag" on data bimodal given the context (2.32 against made-mog's 1.17)
    g = torch.Generator().manual_seed(0)

    def data(n):
        c = torch.randn(n, 1, generator=g)
        side = torch.where(torch.rand(n, 1, generator=g) < 0.5, -2.0, 2.0)
        x = torch.cat([side + c, c], 1) + 0.3 * torch.randn(n, 2, generator=g)
        return x, c

    (x, c), (xt, ct) = data(2000), data(2000)
    scores = {}
    for name, base in (
        ("mixture", ff.distributions.GaussianMixture((2,), components=4, context_features=1)),
        ("diag", ff.distributions.DiagGaussian((2,), context_features=1)),
    ):
        torch.manual_seed(0)
        opt = torch.optim.Adam(base.parameters(), 1e-2)
        for _ in range(300):
            i = torch.randint(0, 2000, (256,), generator=g)
            loss = -base.log_prob(x[i], c[i]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores[name] = -base.log_prob(xt, ct).mean().item()
    assert scores["mixture"] < scores["diag"] - 0.5, scores
