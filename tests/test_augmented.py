"""Augmented flows (flowforge.models.augmented): the bound against a marginal computed by
quadrature, importance weighting with K, gradients, training on a toy, save/load, dtype moves,
conditional contexts and bad inputs. The joint flow's own bijection checks are generic
(tests/cases/augmented.py)."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge.models.augmented import AugmentedFlow, GaussianAugmentation
from flowforge.testing import check_save_load, perturbed


def _model(features=2, extra=2, scale=0.3, **kw):
    torch.manual_seed(0)
    kw = {"layers": 2, "hidden": [16], "encoder_hidden": [16], "activation": "tanh", **kw}
    m = ff.models.build("augmented", features=features, extra=extra, **kw)
    return perturbed(m, scale) if scale else m


def _marginal(m: AugmentedFlow, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x, e) de for one auxiliary dimension, by the trapezoid rule on a
    wide grid (float64)."""
    grid = torch.linspace(-25, 25, 20001, dtype=torch.float64)
    out = []
    with torch.no_grad():
        for row in x:
            xe = torch.cat([row.expand(len(grid), -1), grid[:, None]], 1)
            lp = m.joint.log_prob(xe)
            w = torch.full_like(grid, grid[1] - grid[0])
            w[0] = w[-1] = w[0] / 2
            out.append(torch.logsumexp(lp + w.log(), 0))
    return torch.stack(out)


def test_with_no_auxiliary_dims_the_bound_is_the_joint_density():
    m = _model(extra=0)
    x = torch.randn(16, 2)
    for k in (1, 5):
        assert torch.allclose(m.log_prob(x, samples=k), m.joint.log_prob(x), atol=1e-6)


@pytest.fixture(scope="module")
def analytic():
    """D = 1, A = 1, float64, perturbed (neither the joint nor q at its initialisation), with
    log p(x) by quadrature."""
    m = _model(features=1, extra=1, scale=0.4, layers=3).double().eval()
    x = torch.tensor([[-1.5], [-0.3], [0.4], [1.2], [2.0]], dtype=torch.float64)
    return m, x, _marginal(m, x)


def _draws(m, x, k, n=400, seed=0):
    """n independent draws of the K-sample bound at each x, (n, batch)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return m.log_prob(x.repeat(n, 1), samples=k).reshape(n, len(x))


def test_the_quadrature_is_converged(analytic):
    m, x, logp = analytic
    grid = torch.linspace(-40, 40, 40001, dtype=torch.float64)
    lp = torch.stack([m.joint.log_prob(torch.cat([r.expand(len(grid), -1), grid[:, None]], 1))
                      for r in x]).detach()  # fmt: skip
    finer = torch.logsumexp(lp, 1) + math.log(grid[1] - grid[0])
    assert torch.allclose(finer, logp, atol=1e-6)


def test_the_elbo_is_below_log_p_and_the_iw_bound_tightens_with_k(analytic):
    m, x, logp = analytic
    means, errs = {}, {}
    for k in (1, 4, 32, 256):
        b = _draws(m, x, k, n=400 if k < 256 else 100, seed=k)
        means[k], errs[k] = b.mean(0), b.std(0) / b.shape[0] ** 0.5
    gap1 = logp - means[1]
    # the ELBO is below log p by KL(q || p(e | x)) > 0: clearly, at every point
    assert bool((gap1 > 5 * errs[1]).all()), (gap1, errs[1])
    # each K's mean bound is above the previous one's (4 standard errors) and below log p
    for a, b in ((1, 4), (4, 32), (32, 256)):
        assert bool((means[b] - means[a] > -4 * (errs[a] + errs[b])).all())
        assert bool((means[b] <= logp + 4 * errs[b] + 1e-9).all())
    assert bool((means[32] - means[1] > 0.5 * gap1).all())  # most of the gap closed
    # a wrong log q(e | x) (off by a constant) would converge elsewhere: K = 4096 is near log p
    far = _draws(m, x, 4096, n=20, seed=5).mean(0)
    assert bool(((logp - far).abs() < 0.05).all()), logp - far


def test_a_wrong_log_q_is_caught_by_the_k_limit(analytic):
    """The check above can fail: a q whose log-density is off by 0.15 nats converges there."""
    m, x, logp = analytic
    import copy

    bad = copy.deepcopy(m)
    rsample = bad.augmentation.rsample
    bad.augmentation.rsample = lambda xs, cs: (lambda e, lq: (e, lq + 0.15))(*rsample(xs, cs))
    b = _draws(bad, x, 4096, n=20, seed=5)
    assert bool(((logp - b.mean(0)).abs() > 0.1).all())


def test_q_log_prob_matches_its_draws():
    q = perturbed(GaussianAugmentation(3, 2, (8,), activation="tanh"), 0.5).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    torch.manual_seed(0)
    e, lq = q.rsample(x, None)
    assert torch.allclose(q.log_prob(e, x), lq, atol=1e-12)
    mu, s = q.params(x, None)
    ref = torch.distributions.Normal(mu, s.exp()).log_prob(e).sum(-1)
    assert torch.allclose(lq, ref, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_gradients_reach_every_parameter(k):
    m = _model(extra=2)
    m.train()
    (-m.log_prob(torch.randn(32, 2), samples=k).mean()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().max()) > 0, name


def test_the_bound_is_repeatable_under_a_seed_and_random_without_one():
    m = _model()
    x = torch.randn(8, 2)
    torch.manual_seed(3)
    a = m.log_prob(x, samples=4)
    torch.manual_seed(3)
    assert torch.equal(a, m.log_prob(x, samples=4))
    assert not torch.equal(a, m.log_prob(x, samples=4))  # a new draw of e


def test_training_on_moons_improves_the_bound_and_reaches_a_sensible_nll():
    from flowforge.workbench.data import load_dataset

    ds = load_dataset("moons", seed=0)
    mu, sd = ds.train.mean(0), ds.train.std(0)
    train, test = (ds.train - mu) / sd, (ds.test - mu) / sd
    torch.manual_seed(0)
    m = ff.models.augmented(features=2, extra=2, layers=4, hidden=(32, 32), encoder_hidden=(32,))
    with torch.no_grad():
        torch.manual_seed(1)
        before = m.nll(test).item()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(500):
        b = train[torch.randint(0, len(train), (256,))]
        loss = -m.log_prob(b).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        after1 = m.nll(test).item()
        torch.manual_seed(1)
        after32 = m.nll(test, samples=32).item()
    # a standard normal on standardised data is log(2 pi e) = 2.84 nats; RealNVP reaches ~1.2
    assert before > 2.7
    assert after1 < 1.9, after1
    assert after32 <= after1 + 1e-3  # the IW bound is tighter (K stated: 32)
    s = m.sample(2000)
    assert s.shape == (2000, 2) and bool(torch.isfinite(s).all())
    assert (s.mean(0) - test.mean(0)).abs().max() < 0.2  # samples where the data are


def test_save_and_load_are_exact(tmp_path):
    m = _model(extra=2, context_features=3)
    check_save_load(m)
    path = tmp_path / "aug.ff"
    ff.save(m, path)
    again = ff.load(path)
    assert isinstance(again, AugmentedFlow) and again.config == m.config
    x, c = torch.randn(6, 2), torch.randn(6, 3)
    for k in (1, 5):
        torch.manual_seed(7)
        a = m.log_prob(x, c, samples=k)
        torch.manual_seed(7)
        assert torch.equal(a, again.log_prob(x, c, samples=k))
    torch.manual_seed(2)
    s = m.sample(4, c)
    torch.manual_seed(2)
    assert torch.equal(s, again.sample(4, c))


def test_a_changed_encoder_is_caught_by_save():
    """check_save_load can fail: a q with state the file does not keep differs after reload."""
    m = _model()
    m.augmentation.bound = 0.5  # (the rebuilt q has 5.0)
    with pytest.raises(AssertionError, match="log_prob differs"):
        check_save_load(m)


def test_double_moves_everything():
    m = _model(context_features=2).double()
    assert all(t.dtype == torch.float64 for t in m.state_dict().values() if t.is_floating_point())
    x, c = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    assert m.log_prob(x, c, samples=3).dtype == torch.float64
    assert m.sample(3, c).dtype == torch.float64 and m.sample(3, c).shape == (3, 5, 2)
    assert m.dtype == torch.float64


def test_the_context_reaches_the_joint_flow_and_q():
    m = _model(context_features=2)
    x = torch.randn(5, 2)
    c1, c2 = torch.randn(5, 2), torch.randn(5, 2)
    torch.manual_seed(0)
    a = m.log_prob(x, c1)
    torch.manual_seed(0)
    assert not torch.allclose(a, m.log_prob(x, c2))
    mu1, _ = m.augmentation.params(x, c1)
    mu2, _ = m.augmentation.params(x, c2)
    assert not torch.allclose(mu1, mu2)
    assert m.log_prob(x.reshape(5, 1, 2), c1.reshape(5, 1, 2)).shape == (5, 1)


def test_flow_kinds_and_empty_batches():
    for flow in ("realnvp", "nsf", "maf"):
        m = _model(features=3, extra=1, flow=flow)
        assert m.log_prob(torch.randn(4, 3), samples=2).shape == (4,)
        assert m.sample(2).shape == (2, 3)
        out = m.log_prob(torch.randn(0, 3))
        assert out.shape == (0,)
        out.sum().backward()


BAD = [
    (lambda m: m.log_prob(torch.randn(4, 3)), r"expected x of shape \(\*batch, 2\), got \(4, 3\)"),
    (lambda m: m.log_prob(torch.randn(4, 2), samples=0), "samples .* integer >= 1, got 0"),
    (lambda m: m.log_prob(torch.randn(4, 2), samples=2.5), "integer >= 1, got 2.5"),
    (lambda m: m.log_prob(torch.randn(4, 2), samples=True), "integer >= 1, got True"),
    (lambda m: m.log_prob(torch.tensor([[0.0, 1.0], [math.nan, 0.0]])), r"NaN or inf .*\[1\]"),
    (lambda m: m.log_prob(torch.tensor([[math.inf, 1.0]])), "NaN or inf"),
    (lambda m: m.log_prob(torch.randn(4, 2), torch.randn(4, 2)), "unconditional"),
    (lambda m: m.nll(torch.randn(0, 2)), "empty batch"),
    (lambda m: m.sample(-1), "n >= 0"),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_inputs_one_line_each(call, message):
    m = _model()
    with pytest.raises(ValueError, match=message) as e:
        call(m)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"extra": -1}, "extra .* integer >= 0"),
        ({"flow": "glow"}, "flow to be one of realnvp, nsf, maf"),
        ({"features": 1, "extra": 0}, "features \\+ extra >= 2"),
        ({"layers": 0}, "layers"),
    ],
)
def test_builder_refusals(kwargs, message):
    kw = {"features": 2, **kwargs}
    with pytest.raises(ValueError, match=message) as e:
        ff.models.augmented(**kw)
    assert "\n" not in str(e.value)


def test_a_conditional_model_needs_its_context():
    m = _model(context_features=2)
    with pytest.raises(ValueError, match="conditional"):
        m.log_prob(torch.randn(3, 2))


def test_the_workbench_refuses_it_in_one_line(tmp_path):
    from flowforge.workbench.build import build_flow
    from flowforge.workbench.data import load_dataset
    from flowforge.workbench.errors import WorkbenchError

    cfg = {"model": {"name": "augmented", "kwargs": {}}, "layout": "vector"}
    with pytest.raises(WorkbenchError, match=r"Python-only.*ff\.models\.augmented") as e:
        build_flow(cfg, load_dataset("moons", seed=0))
    assert "\n" not in str(e.value)


def test_fit_target_refuses_it_in_one_line():
    from flowforge.workbench.vi import build_vi_model

    with pytest.raises(ValueError, match="bound over auxiliary draws") as e:
        build_vi_model("augmented", 2)
    assert "\n" not in str(e.value)


def test_the_scoring_helpers_refuse_models_whose_log_prob_is_not_a_density():
    """ff.nll of an augmented flow gave minus a one-draw ELBO (1.63, 1.65, 1.63 on three calls
    of the same data; its own nll(samples=64): 1.60), and of an M-flow a finite "NLL" of data
    off its manifold; bits_per_dim an AttributeError. Each now says what to call instead."""
    aug = ff.models.augmented(features=2, extra=1, layers=2, hidden=(8,), encoder_hidden=(8,))
    m = ff.models.mflow(features=3, manifold_dim=1, outer_layers=2, inner_layers=2, hidden=(8,))
    x2, x3 = torch.randn(16, 2), torch.randn(16, 3)
    for fn in (ff.nll, ff.objectives.log_likelihoods):
        with pytest.raises(TypeError, match=r"AugmentedFlow .*model.nll\(x, samples=K\)"):
            fn(aug, x2)
        with pytest.raises(TypeError, match=r"MFlow .*learned manifold"):
            fn(m, x3)
    with pytest.raises(TypeError, match="AugmentedFlow is not a flow with a density"):
        ff.bits_per_dim(aug, x2.round().clamp(0, 3), levels=4)
