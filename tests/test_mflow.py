"""M-flows: the exact log det(J^T J) against autograd, projection, a manifold density that
integrates to 1 over the learned surface (areas from finite differences), the two training
phases, bad input."""

from __future__ import annotations

import pytest
import torch

from flowforge.models.mflow import MFlow, mflow
from flowforge.workbench.data import load_dataset
from flowforge.workbench.mflow import evaluate_mflow, train_mflow


def small(features=3, d=2, seed=0):
    torch.manual_seed(seed)
    m = mflow(features, d, outer_layers=2, inner_layers=2, hidden=(8,), activation="tanh")
    m = m.double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


def test_log_det_gram_matches_autograd():
    m = small(5, 2)
    u = torch.randn(4, 2, dtype=torch.float64)
    got = m.log_det_gram(u)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: m.decode(v[None])[0], u[i])
        want = torch.linalg.slogdet(jac.T @ jac)[1]
        assert torch.allclose(got[i], want, atol=1e-10)


def test_projection_is_idempotent_and_decoding_is_invertible():
    m = small(5, 2)
    x = torch.randn(6, 5, dtype=torch.float64)
    p = m.project(x)
    assert torch.allclose(m.project(p), p, atol=1e-10)
    assert torch.allclose(m.reconstruction_error(p), torch.zeros(6, dtype=p.dtype), atol=1e-18)
    u = torch.randn(6, 2, dtype=torch.float64)
    assert torch.allclose(m.encode(m.decode(u)), u, atol=1e-10)
    s = m.sample(7)
    assert s.shape == (7, 5) and torch.allclose(m.project(s), s, atol=1e-10)


def test_manifold_density_integrates_to_one_over_the_learned_surface():
    """Sum of p(g(u)) times the area of the grid cell's image, the area measured from finite
    differences of g (not from the log-det under test)."""
    m = small(3, 2)
    n, lo, hi = 120, -6.0, 6.0
    h = (hi - lo) / n
    g = lo + h * torch.arange(n + 1, dtype=torch.float64)
    with torch.no_grad():
        pts = m.decode(torch.cartesian_prod(g, g)).reshape(n + 1, n + 1, 3)
        centres = m.decode(torch.cartesian_prod(g[:-1] + h / 2, g[:-1] + h / 2))
    # each cell's image as two triangles
    a, b, c, d = pts[:-1, :-1], pts[1:, :-1], pts[1:, 1:], pts[:-1, 1:]
    area = (
        torch.linalg.cross(b - a, c - a).norm(dim=-1)
        + torch.linalg.cross(c - a, d - a).norm(dim=-1)
    ) / 2
    dens = m.log_prob(centres).detach().exp().reshape(n, n)
    mass = (dens * area).sum().item()
    assert abs(mass - 1) < 0.01, mass


def test_training_phases_reduce_their_losses():
    torch.manual_seed(0)
    ds = load_dataset("surface-64", n_train=256, n_val=128, n_test=128)
    m = mflow(64, 2, outer_layers=2, inner_layers=2, hidden=(32,))
    before = m.manifold_loss(ds.val).item()
    cfg = {"epochs": 2, "batch_size": 64, "warmup_steps": 0, "lr": 1e-3}
    out = train_mflow(m, ds.train, ds.val, cfg, cfg)
    assert out["manifold"]["best_val"] < before
    res = evaluate_mflow(m, ds.test)
    assert res["noise"] == pytest.approx(64 * 0.01**2)
    assert res["reconstruction"] == pytest.approx(m.manifold_loss(ds.test).item(), rel=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="manifold dimension must be below the data dimension"):
        mflow(4, 4)
    with pytest.raises(ValueError, match="manifold_dim to be an integer >= 1"):
        mflow(4, 0)
    m = small(5, 2)
    with pytest.raises(ValueError, match=r"expected data to project of shape \(batch, 5\)"):
        m.project(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"manifold coordinates of shape \(batch, 2\)"):
        m.decode(torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="manifold_dim=3 and features=3"):
        MFlow(small(3, 2).outer, small(6, 3).inner)
