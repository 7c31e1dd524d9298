"""Focused tests of the core contract: shapes, contexts, bad input, bases, save/load, metrics."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge import distributions as D
from flowforge import transforms as T


@pytest.fixture
def flow():
    torch.manual_seed(0)
    return ff.models.RealNVP(features=4, layers=2, hidden=(8,))


@pytest.fixture
def cflow():
    torch.manual_seed(0)
    return ff.models.RealNVP(features=3, layers=2, hidden=(8,), context_features=2)


# -- bad input ------------------------------------------------------------------------------------
def test_wrong_feature_count(flow):
    with pytest.raises(ValueError, match=r"expected x of shape \(\*batch, 4\), got \(5, 3\)"):
        flow.log_prob(torch.randn(5, 3))


def test_wrong_rank(flow, cflow):
    # one example without a batch dimension (as sample(()) draws it, as torch.distributions
    # and zuko take it) is scored as one: a scalar
    x = torch.randn(4)
    assert flow.log_prob(x).shape == () and torch.allclose(flow.log_prob(x), flow.log_prob(x[None]))
    assert flow.log_prob(flow.sample(())).shape == ()
    c = torch.randn(2)
    y = torch.randn(3)
    assert torch.allclose(cflow.log_prob(y, c), cflow.log_prob(y[None], c[None])[0])
    with pytest.raises(ValueError, match=r"expected context of shape \(2,\), got \(5, 2\)"):
        cflow.log_prob(y, torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"expected x of shape \(\*batch, 4\), got \(3,\)"):
        flow.log_prob(torch.randn(3))
    with pytest.raises(ValueError, match=r"expected x of shape \(\*batch, 4\), got \(\)"):
        flow.log_prob(torch.tensor(1.0))
    with pytest.raises(
        ValueError, match=r"expected Compose input of shape \(batch, 4\), got \(2, 2, 4\)"
    ):
        flow.transform(torch.randn(2, 2, 4))


def test_split_the_mask_cannot_make():
    with pytest.raises(ValueError, match="must keep at least one entry and transform at least one"):
        T.Coupling(T.half_mask(1), lambda i, o: None, T.Affine())
    with pytest.raises(ValueError, match="got 3 kept and 0 transformed"):
        T.Coupling(torch.ones(3, dtype=torch.bool), lambda i, o: None, T.Affine())


def test_context_given_to_unconditional(flow):
    with pytest.raises(ValueError, match="unconditional .* but a context was given"):
        flow.log_prob(torch.randn(2, 4), torch.randn(2, 1))
    with pytest.raises(ValueError, match="unconditional"):
        flow.sample(2, context=torch.randn(2, 1))


def test_context_missing_or_wrong(cflow):
    with pytest.raises(
        ValueError, match=r"conditional and expects a context of shape \(\*batch, 2\), got None"
    ):
        cflow.log_prob(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"expected context of shape \(2, 2\), got \(2, 5\)"):
        cflow.log_prob(torch.randn(2, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="conditional"):
        cflow.sample(2)


def test_non_finite_inputs(flow):
    x = torch.randn(6, 4)
    x[3, 1] = float("nan")
    x[5, 0] = float("inf")
    with pytest.raises(
        ValueError, match=r"x contains NaN or inf \(first bad batch indices: \[3, 5\]\)"
    ):
        flow.log_prob(x)


def test_negative_sample_count(flow):
    with pytest.raises(ValueError, match=r"expected a number of samples n >= 0, got -1"):
        flow.sample(-1)
    with pytest.raises(ValueError, match="n >= 0"):
        flow.rsample_and_log_prob(-3)
    assert flow.sample(0).shape == (0, 4)


def test_discrete_data_out_of_range():
    flow = ff.models.RealNVP(features=2, layers=2, levels=17)
    with pytest.raises(
        ValueError,
        match=r"expected discrete data in \[0, 16\] \(17 levels\), got values in \[0, 17\]",
    ):
        flow.log_prob(torch.tensor([[0.0, 17.0]]))
    with pytest.raises(ValueError, match="integer-valued"):
        flow.log_prob(torch.tensor([[0.5, 1.0]]))


def test_compose_checks_neighbouring_shapes():
    with pytest.raises(
        ValueError,
        match=r"layer 0 \(Reverse\) outputs shape \(3,\) but layer 1 \(Scaling\) expects \(4,\)",
    ):
        ff.Compose(T.Reverse(3), T.Scaling(4))


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match="unknown model 'realnpv'; did you mean realnvp"):
        ff.models.build("realnpv", features=2)


def test_a_builder_of_your_own_cannot_take_a_taken_name():
    with pytest.raises(ValueError, match="a model named 'RealNVP' is registered already"):

        @ff.models.register
        def RealNVP(features: int = 2):  # noqa: N802
            raise AssertionError("never built")

    assert ff.models.builder("realnvp").__module__ == "flowforge.models.coupling"
    with pytest.raises(ValueError, match="imported"):
        ff.models.build("sasflow")
    with pytest.raises(ValueError, match=r"@ff.models.register"):
        ff.save(ff.Flow(T.Reverse(2), ff.distributions.StandardNormal(2)), "never.ff")


def test_unknown_options():
    with pytest.raises(ValueError, match="unknown base 'gauss'"):
        ff.models.RealNVP(features=2, base="gauss")
    with pytest.raises(ValueError, match="unknown permutation 'shuffle'"):
        ff.models.RealNVP(features=2, permutation="shuffle")
    with pytest.raises(ValueError, match="give exactly one of features="):
        ff.models.NICE()


# -- shapes and contexts --------------------------------------------------------------------------
def test_batch_shapes(flow):
    x = torch.randn(2, 3, 4)
    assert flow.log_prob(x).shape == (2, 3)
    assert torch.allclose(flow.log_prob(x)[1], flow.log_prob(x[1]))


def test_vectorised_sampling_over_contexts(cflow):
    ctx = torch.randn(5, 2)
    assert cflow.sample(7, ctx).shape == (7, 5, 3)
    assert cflow.sample(7, ctx[0]).shape == (7, 3)
    x, log_q = cflow.rsample_and_log_prob(4, ctx)
    assert x.shape == (4, 5, 3) and log_q.shape == (4, 5)
    # the returned log-density is the flow's own
    assert torch.allclose(log_q, cflow.log_prob(x, ctx.expand(4, 5, 2)), atol=1e-4)


def test_rsample_is_differentiable_and_consistent(flow):
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, log_q = flow.rsample_and_log_prob(64)
    assert torch.allclose(log_q, flow.log_prob(x), atol=1e-4)
    log_q.mean().backward()
    assert all(p.grad is not None for p in flow.transform.parameters())


def test_temperature_scales_spread():
    flow = ff.models.RealNVP(features=3, layers=2)
    torch.manual_seed(0)
    a = flow.sample(4000, temperature=1.0).std()
    b = flow.sample(4000, temperature=0.5).std()
    assert abs(b / a - 0.5) < 0.05  # the flow starts as the identity


def test_affine_scale_is_bounded():
    law = T.Affine(bound=3.0)
    x = torch.ones(4)
    params = torch.stack([torch.zeros(4), torch.tensor([1e6, -1e6, 1e30, float(50)])], -1)
    z, ladj = law(x, params)
    assert torch.isfinite(z).all() and (ladj.abs() <= 3.0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_affine_clamp_forms_agree_and_training_keeps_tanh(dtype):
    # scoring and sampling run the clamp through a sigmoid (faster on CPU); a graph-recording
    # call (training) keeps bound * tanh(r / bound) bit for bit, so trained weights reproduce
    law = T.Affine(bound=3.0)
    r = torch.linspace(-40, 40, 2001, dtype=dtype)
    exact = 3.0 * torch.tanh(r / 3.0)
    with torch.no_grad():
        fast = law._scale(r)
    eps = torch.finfo(dtype).eps
    assert (fast - exact).abs().max() <= 8 * 3.0 * eps and (fast.abs() <= 3.0).all()
    assert not torch.equal(fast, exact)  # the fast form is in use
    rg = r.clone().requires_grad_()
    assert torch.equal(law._scale(rg).detach(), exact)
    law.sigmoid_clamp = False
    with torch.no_grad():
        assert torch.equal(law._scale(r), exact)


# -- bases ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "base",
    [
        D.StandardNormal(3),
        D.DiagGaussian(3),
        D.GaussianMixture(3, 4),
        D.DiagGaussian(3, 2),
        D.GaussianMixture(3, 2, 2),
    ],
    ids=["normal", "diag", "mixture", "diag-context", "mixture-context"],
)
def test_bases_normalised_and_dtype(base):
    base = base.double()
    ctx = (
        torch.randn(1, base.context_features, dtype=torch.float64)
        if base.context_features
        else None
    )
    # a Monte-Carlo check that exp(log_prob) integrates to 1 under its own samples is weak;
    # instead compare with torch.distributions where we can, and check dtype/shape
    c = None if ctx is None else ctx.expand(500, -1)
    z = base.sample(500, c)
    assert z.dtype == torch.float64 and z.shape == (500, 3)
    lp = base.log_prob(z, c)
    assert lp.shape == (500,) and torch.isfinite(lp).all()
    z2, lp2 = base.rsample_and_log_prob(500, c)
    assert torch.allclose(lp2, base.log_prob(z2, c))


def test_standard_normal_matches_torch():
    z = torch.randn(10, 3)
    want = torch.distributions.Normal(0, 1).log_prob(z).sum(-1)
    assert torch.allclose(D.StandardNormal(3).log_prob(z), want)


def test_mixture_matches_torch():
    torch.manual_seed(0)
    m = D.GaussianMixture(2, 3)
    with torch.no_grad():
        m.log_scale.normal_(0, 0.3)
        m.logits.normal_()
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=m.logits),
        torch.distributions.Independent(torch.distributions.Normal(m.loc, m.log_scale.exp()), 1),
    )
    z = torch.randn(20, 2)
    assert torch.allclose(m.log_prob(z), mix.log_prob(z), atol=1e-5)


def test_class_conditional_gaussian():
    base = D.DiagGaussian(2, context_features=3)  # one-hot class -> one Gaussian per class
    with torch.no_grad():
        base.net.net[-1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
        base.net.net[-1].weight.copy_(torch.tensor([[5.0, 0, -5], [0, 5, 0], [0, 0, 0], [0, 0, 0]]))
    onehot = torch.eye(3)[[0, 2]].repeat_interleave(1000, 0)
    z = base.sample(2000, onehot)
    assert torch.allclose(z[:1000].mean(0), torch.tensor([5.0, 0.0]), atol=0.15)
    assert torch.allclose(z[1000:].mean(0), torch.tensor([-5.0, 0.0]), atol=0.15)


@pytest.mark.parametrize("cls", [D.StandardNormal, D.DiagGaussian, D.GaussianMixture])
def test_bases_follow_device_and_dtype(cls):
    base = cls(3).to(torch.float64)
    assert base.sample(2).dtype == torch.float64


# -- save / load ----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    flow = ff.models.RealNVP(features=4, layers=2, levels=17, base="mixture")
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ff.save(flow, tmp_path / "f.ff")
    flow2 = ff.load(tmp_path / "f.ff")
    x = torch.randint(0, 17, (8, 4)).float()
    torch.manual_seed(1)
    a = flow.log_prob(x)
    torch.manual_seed(1)
    b = flow2.log_prob(x)
    assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_load_refuses_corrupt_or_truncated(tmp_path):
    flow = ff.models.NICE(features=2)
    ff.save(flow, tmp_path / "f.ff")
    data = (tmp_path / "f.ff").read_bytes()
    (tmp_path / "t.ff").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable flowforge checkpoint"):
        ff.load(tmp_path / "t.ff")
    (tmp_path / "g.ff").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="not a readable flowforge checkpoint"):
        ff.load(tmp_path / "g.ff")
    with pytest.raises(ValueError, match="no flowforge checkpoint"):
        ff.load(tmp_path / "missing.ff")


def test_load_never_unpickles(tmp_path):
    # a pickle file named .ff is refused, not executed
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    (tmp_path / "p.ff").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="not a readable"):
        ff.load(tmp_path / "p.ff")


def test_save_refuses_hand_built_flow(tmp_path):
    flow = ff.Flow(ff.Compose(T.Scaling(2)), D.StandardNormal(2))
    with pytest.raises(ValueError, match="needs a flow built by a flowforge.models builder"):
        ff.save(flow, tmp_path / "x.ff")


# -- metrics --------------------------------------------------------------------------------------
def test_nll_and_bits_per_dim_on_a_known_density():
    # an identity flow with a standard normal base: log p(x + u) is known in closed form
    flow = ff.Flow(ff.Compose(T.Scaling(3)), D.StandardNormal(3))
    x = torch.randn(50, 3)
    want = -torch.distributions.Normal(0, 1).log_prob(x).sum(-1).mean().item()
    assert math.isclose(ff.nll(flow, x), want, rel_tol=1e-6)
    xi = torch.randint(0, 4, (200, 3)).float()
    torch.manual_seed(0)
    bpd = ff.bits_per_dim(flow, xi, levels=4)
    torch.manual_seed(0)
    u = torch.rand_like(xi)
    want = -torch.distributions.Normal(0, 1).log_prob(xi + u).sum(-1).mean().item() / (
        3 * math.log(2)
    )
    assert math.isclose(bpd, want, rel_tol=1e-5)


def test_bits_per_dim_is_per_example_not_per_batch():
    flow = ff.models.RealNVP(features=4, layers=2, levels=17)
    x = torch.randint(0, 17, (64, 4)).float()
    torch.manual_seed(0)
    a = ff.bits_per_dim(flow, x, batch_size=64)
    torch.manual_seed(0)
    b = ff.bits_per_dim(flow, x, batch_size=7)
    assert abs(a - b) < 0.05  # only the dequantization noise differs


def test_bits_per_dim_needs_discrete_data():
    flow = ff.models.RealNVP(features=2, layers=2)
    with pytest.raises(ValueError, match="needs discrete data"):
        ff.bits_per_dim(flow, torch.zeros(3, 2))
    flow17 = ff.models.RealNVP(features=2, layers=2, levels=17)
    with pytest.raises(ValueError, match="dequantizes 17 levels, but levels=256"):
        ff.bits_per_dim(flow17, torch.zeros(3, 2), levels=256)


def test_logit_ladj_counts_in_nll():
    # With levels and logit preprocessing the NLL is on the raw scale: a uniform density on
    # [0, K)^D has NLL D log K; an untrained flow must not report less than the truth by the
    # logit's Jacobian.
    flow = ff.models.RealNVP(features=2, layers=2, levels=17)
    x = torch.randint(0, 17, (500, 2)).float()
    nll = ff.nll(flow, x)
    z, ladj = flow.transform(x + 0.5)
    assert ladj.mean() < 0  # the logit expands [0, 17) onto R: its log-det is counted
    assert nll > 0


def test_reverse_kl_trains_towards_target():
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=2, layers=4, hidden=(32,))
    target = torch.distributions.MultivariateNormal(torch.tensor([2.0, -1.0]), torch.eye(2) * 0.25)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = ff.reverse_kl(flow, target.log_prob, 128)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 < first  # KL(q||p) -> 0: the target is normalised here


def test_standardized_flow_scores_raw_data_and_round_trips(tmp_path):
    torch.manual_seed(0)
    base = ff.models.RealNVP(features=2, layers=2)
    loc, scale = torch.tensor([10.0, -3.0]), torch.tensor([2.0, 0.5])
    flow = ff.models.standardized(base, loc, scale)
    x = torch.randn(5, 2) * scale + loc
    want = base.log_prob((x - loc) / scale) - scale.log().sum()
    assert torch.allclose(flow.log_prob(x), want)
    ff.save(flow, tmp_path / "s.ff")
    again = ff.load(tmp_path / "s.ff")
    assert again.config["prefix"] == ["standardize"]
    assert torch.allclose(again.log_prob(x), want)


def test_rsample_is_differentiable_and_shaped_like_sample(flow):
    x = flow.rsample(5)
    assert x.shape == flow.sample(5).shape and x.requires_grad
    x.square().sum().backward()
    assert any(p.grad is not None for p in flow.parameters())


def test_input_checks_are_switchable(flow):
    bad = torch.full((2, flow.event_shape[0]), float("nan"))
    assert flow.validate_args is None  # default: checked on CPU, skipped on accelerators
    with pytest.raises(ValueError, match="NaN or inf"):
        flow.log_prob(bad)
    flow.validate_args = False
    try:
        assert torch.isnan(flow.log_prob(bad)).all()  # the caller asked for no checks
    finally:
        flow.validate_args = None


def test_the_dequantizers_range_check_follows_validate_args():
    # the range check reads the data back to the host: Flow runs it only where it validates
    flow = ff.models.RealNVP(features=4, layers=2, hidden=(8,), levels=5)
    bad = torch.full((3, 4), 7.0)  # above the 5 levels
    with pytest.raises(ValueError, match=r"discrete data in \[0, 4\]"):
        flow.log_prob(bad)
    with pytest.raises(ValueError, match=r"discrete data in \[0, 4\]"):
        flow.dequantizer(bad)  # called alone, it always checks
    flow.validate_args = False
    try:
        assert flow.log_prob(bad).shape == (3,)  # the caller asked for no checks
    finally:
        flow.validate_args = None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_agrees_with_the_entrywise_test(dtype):
    # the fast path sums first; a finite sum clears the tensor, any other sum falls back
    from flowforge._util import all_finite

    big, nan, inf = torch.finfo(dtype).max, float("nan"), float("inf")
    rows = [
        [big] * 8,  # finite entries whose sum overflows
        [big, -big, 1.0],
        [1.0, nan],
        [1.0, inf],
        [-inf, 2.0],
        [inf, -inf],  # a NaN sum
        [big, big, nan],
    ]
    cases = [torch.zeros(0, 3, dtype=dtype), torch.randn(64, 5).to(dtype)]
    cases += [torch.tensor(r, dtype=dtype) for r in rows]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t
    assert all_finite(torch.arange(5)) and all_finite(torch.tensor([True]))
    nan8 = torch.tensor([float("nan"), 1.0]).to(torch.float8_e4m3fn)  # no isfinite kernel
    assert not all_finite(nan8) and all_finite(torch.ones(3).to(torch.float8_e4m3fn))
    x = torch.randn(3, 2, requires_grad=True)
    assert all_finite(x) and x.grad is None


def test_a_flow_refuses_nonfinite_rows_whose_finite_rows_overflow_a_sum():
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))
    x = torch.full((4, 2), 3e38)  # the sum of these finite entries is inf: checked entry-wise
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(first bad batch indices: \[2\]\)"):
        flow.log_prob(x)


def test_every_public_submodule_is_an_attribute_from_the_start():
    """``ff.core.NaNLogProb`` (as the README writes it) and ``ff.testing`` were AttributeErrors
    in a fresh process until something else imported them."""
    import subprocess
    import sys

    code = "import flowforge as ff; ff.core.NaNLogProb; ff.testing.check_transform; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr


def test_fork_rng_forks_every_cuda_device_in_use(monkeypatch):
    """``_util.fork_rng`` forks the CPU's generator and every CUDA device's once CUDA is in
    use, since ``torch.manual_seed`` inside seeds them all (tests/test_cuda.py checks the
    effect on a GPU)."""
    import contextlib

    from flowforge import _util

    seen = []
    monkeypatch.setattr(
        torch.random, "fork_rng", lambda devices: seen.append(devices) or contextlib.nullcontext()
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with _util.fork_rng():
        pass
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with _util.fork_rng():  # (not in use: nothing drawn there to keep; its queued seed is)
        pass
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with _util.fork_rng():
        pass
    assert seen == [[], [], [0, 1]]


def test_a_label_given_as_context_gets_the_one_hot_hint():
    flow = ff.models.build("maf", features=2, context_features=10)
    for labels in (torch.tensor([[3]]), torch.tensor([[3.0], [9.0]])):
        with pytest.raises(ValueError, match=r"one_hot\(labels, 10\)"):
            flow.sample(1, labels)
    with pytest.raises(ValueError, match=r"one_hot\(labels, 10\)"):  # (1-d labels)
        flow.log_prob(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    one_hot = torch.nn.functional.one_hot(torch.arange(4), 12).float()  # (already one-hot)
    with pytest.raises(ValueError) as e:
        flow.log_prob(torch.zeros(4, 2), one_hot)
    assert "one_hot" not in str(e.value)
    with pytest.raises(ValueError) as e:  # a value that is no label: the shape alone
        flow.sample(1, torch.tensor([[0.5]]))
    assert "one_hot" not in str(e.value) and "expected context of shape" in str(e.value)


def test_a_scalar_context_per_row_is_told_its_shape_by_log_prob_too():
    # (a parity audit) porting.md promises the context[:, None] hint, which only sample gave
    flow = ff.models.MAF(features=2, context_features=1, layers=1, hidden=(8,))
    with pytest.raises(ValueError, match=r"give context\[:, None\], shape \(4, 1\)"):
        flow.log_prob(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"give context\[\.\.\., None\], shape \(3, 4, 1\)"):
        flow.log_prob(torch.zeros(3, 4, 2), torch.zeros(3, 4))


def test_a_number_of_samples_that_is_no_integer_says_so():
    flow = ff.models.build("maf", features=2)
    for n in (4.0, "3"):
        with pytest.raises(ValueError, match="an integer"):
            flow.sample(n)


def test_per_example_scores_with_torch_func():
    # vmap(grad(log_prob)) passes each example without its batch dimension
    from torch.func import grad, vmap

    torch.manual_seed(0)
    flow = ff.models.NSF(features=3, layers=2, hidden=(8,)).eval()
    x = torch.randn(5, 3)
    score = vmap(grad(flow.log_prob))(x)
    xx = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(flow.log_prob(xx).sum(), xx)
    assert torch.allclose(score, want, atol=1e-5)


def test_a_flow_torch_func_cannot_transform_says_so_in_its_words():
    # (an audit) Planar under vmap and a residual flow under grad raised torch's internals
    from torch.func import grad, vmap

    torch.manual_seed(0)
    x = torch.randn(4, 3)
    planar = ff.models.Planar(features=3, layers=2).eval()
    assert grad(planar.log_prob)(x[0]).shape == (3,)  # (grad alone works)
    residual = ff.models.ResidualFlow(features=3, blocks=1, hidden=(8,)).eval()
    for call in (lambda: vmap(planar.log_prob)(x), lambda: grad(residual.log_prob)(x[0])):
        with pytest.raises(ValueError, match=r"torch.func \(vmap, grad, jacrev\) could not "):
            call()
    assert planar.log_prob(x).shape == (4,)  # (and outside a transform, as ever)


def test_conditioner_mistakes_are_said_where_the_layer_is_built():
    from torch import nn

    with pytest.raises(TypeError, match="got the module Linear itself"):
        T.Coupling(T.half_mask(4), nn.Linear(2, 4), T.Affine())
    with pytest.raises(TypeError, match="factory returned str"):
        T.Coupling(T.half_mask(4), lambda i, o: "net", T.Affine())
    # a module of x alone (nn.Sequential) serves an unconditional coupling; it had failed in
    # its first call with "forward() takes 2 positional arguments but 3 were given"
    layer = T.Coupling(T.half_mask(4), lambda i, o: nn.Sequential(nn.Linear(i, o)), T.Affine())
    x = torch.randn(3, 4)
    z, _ = layer(x)
    assert torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
    with pytest.raises(TypeError, match=r"its forward must take \(x, context\)"):
        T.Coupling(T.half_mask(4), lambda i, o: nn.Sequential(nn.Linear(i, o)), T.Affine(), 2)


def test_peer_names_and_sample_and_log_prob():
    # zuko's and nflows' names get flowforge's in the error
    for kwargs, ours in (
        ({"hidden_features": (8,)}, "hidden"),
        ({"transforms": 2}, "layers"),
        ({"num_bins": 4}, "bins"),
        ({"context": 2}, "context_features"),
    ):
        with pytest.raises(TypeError, match=f"NSF calls it {ours}"):
            ff.models.NSF(features=2, **kwargs)
    with pytest.raises(TypeError, match="Glow calls it steps"):
        ff.models.Glow(shape=(1, 4, 4), num_layers=2)
    torch.manual_seed(0)
    flow = ff.models.NSF(features=2, layers=2, hidden=(8,))
    x, lp = flow.sample_and_log_prob(16)
    assert not x.requires_grad and not lp.requires_grad and lp.shape == (16,)
    assert not bool(flow.transform.layers[0].initialized)  # still waiting for data
    flow.eval()
    assert torch.allclose(lp, flow.log_prob(x), atol=1e-4)


def test_an_unbatched_example_with_nan_is_said_plainly(flow):
    with pytest.raises(ValueError, match=r"^x contains NaN or inf$"):
        flow.log_prob(torch.tensor([1.0, float("nan"), 0.0, 2.0]))


def test_a_flow_that_standardises_its_contexts(tmp_path):
    torch.manual_seed(0)
    inner = ff.models.MAF(features=2, layers=1, hidden=(8,), context_features=2)
    loc, scale = [1e8, -3.0], [0.5, 2.0]
    c = torch.tensor([[1e8 + 0.25, 1.0], [1e8 - 1.0, -7.0]], dtype=torch.float64)
    x = torch.randn(2, 2)
    inner.eval()
    want = inner.log_prob(x, ((c - torch.tensor(loc, dtype=torch.float64)) / torch.tensor(scale,
                                dtype=torch.float64)).float())  # fmt: skip
    flow = ff.models.context_standardized(inner, loc, scale)
    # the raw float64 contexts standardised before the float32 flow narrows them: 1e8 + 0.25
    # and 1e8 - 1 stay apart (float32 alone would make both 1e8)
    torch.testing.assert_close(flow.log_prob(x, c), want)
    assert flow.sample(3, context=c).shape == (3, 2, 2)
    ff.save(flow, tmp_path / "m.ff")
    back = ff.load(tmp_path / "m.ff").eval()
    assert back.context_map.loc == loc and back.context_map.scale == scale
    torch.testing.assert_close(back.log_prob(x, c), want)
    wide = back.double()  # the statistics stay float64 whatever the flow's dtype
    assert wide.context_map._loc_bits.view(torch.float64).tolist() == loc
    torch.testing.assert_close(wide.log_prob(x.double(), c), want.double(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unconditional"):
        ff.models.context_standardized(ff.models.MAF(features=2), [0.0], [1.0])
    with pytest.raises(ValueError, match="expected 2 context loc"):
        ff.models.context_standardized(
            ff.models.MAF(features=2, context_features=2), [0.0], [1.0, 1.0]
        )
    with pytest.raises(ValueError, match="scale must be finite and positive"):
        ff.models.context_standardized(ff.models.MAF(features=2, context_features=1), [0.0], [0.0])
    with pytest.raises(ValueError, match="standardises its contexts already"):
        ff.models.context_standardized(flow, loc, scale)


def test_a_flow_pickled_before_the_context_map_existed_loads(tmp_path):
    import pickle

    flow = ff.models.MAF(features=2, layers=1, hidden=(8,), context_features=1).eval()
    del flow.__dict__["context_map"]  # as torch.save(flow) wrote it before
    back = pickle.loads(pickle.dumps(flow))
    assert back.context_map is None
    assert back.log_prob(torch.zeros(1, 2), torch.ones(1, 1)).shape == (1,)
    mapped = ff.models.context_standardized(back, [1.0], [2.0])
    again = pickle.loads(pickle.dumps(mapped))  # a map, once set, is kept
    assert again.context_map.loc == [1.0]


def test_a_context_that_overflows_once_standardised_is_said_so():
    flow = ff.models.MAF(features=2, layers=1, hidden=(4,), context_features=1)
    flow = ff.models.context_standardized(flow, [0.0], [1e-3]).eval()
    for c in (torch.tensor([[1e37]], dtype=torch.float64), torch.tensor([[1e37]])):
        with pytest.raises(
            ValueError, match=r"standardised with the flow's statistics .* overflows"
        ):
            flow.log_prob(torch.zeros(1, 2), c)  # (finite: not "NaN or inf")
    with pytest.raises(ValueError, match="context contains NaN or inf"):
        flow.log_prob(torch.zeros(1, 2), torch.tensor([[float("nan")]]))


def test_what_a_port_from_a_peer_library_meets():
    """An audit of users porting code from zuko/nflows and writing their own base: a list of
    layers (their Flow's form) was refused; a scalar context per row, shape (B,), was said as
    the reshaped (1, B) with a wanted (1, 1); a base drawing in the default dtype inside a
    float64 flow failed in the first matrix product; a base drawing with .sample() passed the
    checker although VI cannot train it; a float32 check read as a broken layer."""
    from flowforge.testing import check_distribution, check_transform

    torch.manual_seed(0)

    def net(i, o):
        return torch.nn.Sequential(torch.nn.Linear(i, 8), torch.nn.Tanh(), torch.nn.Linear(8, o))

    layers = [T.Coupling(T.half_mask(2), net, T.Affine()), T.Reverse(2),
              T.Coupling(T.half_mask(2), net, T.Affine())]  # fmt: skip
    listed = ff.Flow(layers, D.StandardNormal(2))
    composed = ff.Flow(ff.Compose(*layers), D.StandardNormal(2))
    x = torch.randn(5, 2)
    assert torch.equal(listed.log_prob(x), composed.log_prob(x))
    for bad in ([], [T.Reverse(2), "relu"]):
        with pytest.raises(TypeError, match="a non-empty list of them"):
            ff.Flow(bad, D.StandardNormal(2))

    cflow = ff.models.MAF(features=2, context_features=1, layers=1, hidden=(8,))
    with pytest.raises(ValueError, match=r"got \(8,\); one scalar context per row\? give "
                       r"context\[:, None\], shape \(8, 1\)"):  # fmt: skip
        cflow.sample(4, torch.randn(8))
    assert cflow.sample(4, torch.randn(8)[:, None]).shape == (4, 8, 2)

    class Laplace(D.Distribution):
        def __init__(self, reparameterised=True):
            super().__init__(2)
            self.loc = torch.nn.Parameter(torch.zeros(2))
            self.reparameterised = reparameterised

        def _dist(self):
            return torch.distributions.Laplace(self.loc, torch.ones_like(self.loc))

        def log_prob(self, z, context=None):
            self._check(z, context)
            return self._dist().log_prob(z).sum(-1)

        def _sample(self, n, context, temperature):
            d = self._dist()
            z = d.rsample((n,)) if self.reparameterised else d.sample((n,))
            return self.loc + temperature * (z - self.loc)

    check_distribution(Laplace())
    with pytest.raises(AssertionError, match=r"no gradient .* \.sample\(\) where \.rsample"):
        check_distribution(Laplace(reparameterised=False))

    class DefaultDtype(Laplace):  # draws in torch's default dtype, whatever the buffers'
        def _sample(self, n, context, temperature):
            return torch.zeros(n, 2)

    flow = ff.Flow(layers[0], DefaultDtype()).double()
    for call in (lambda: flow.sample(3), lambda: flow.rsample(3)):
        with pytest.raises(ValueError, match=r"_sample gave \(3, 2\) float32 on cpu, expected "
                           r"\(3, 2\) float64 on cpu"):  # fmt: skip
            call()
    with pytest.raises(AssertionError, match=r"float32 inputs, and the tolerances are float64"):
        check_transform(T.Planar(3), torch.randn(8, 3))  # (Newton's inverse: float32's rounding)
    check_transform(T.Planar(3).double(), torch.randn(8, 3, dtype=torch.float64))


def test_draws_under_autocast_and_a_rounded_prior_pass_the_base_checks():
    """A review of the draw check: under torch.autocast a base whose draws come from a network
    (a conditional diagonal Gaussian, a MADE mixture) gives them in bfloat16, which the check
    refused as the base's own fault; the IDF prior's rounded draws carry no gradient, and
    check_distribution refused it (it says has_rsample = False now)."""
    from flowforge.testing import check_distribution
    from flowforge.transforms.integer import DiscretizedLogisticMixture

    torch.manual_seed(0)
    ctx = torch.eye(3)[[0, 1, 2, 0]]
    for base in ("diag", "made-mog"):
        flow = ff.models.build("maf", features=2, layers=1, hidden=8, context_features=3,
                               base=base).eval()  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert flow.sample(1, ctx).shape == (1, 4, 2)
            assert flow.rsample_and_log_prob(1, ctx)[0].shape == (1, 4, 2)
    prior = DiscretizedLogisticMixture(4)  # (D > 2: no density grid, a discrete prior)
    assert prior.has_rsample is False
    check_distribution(prior)


def test_sample_maps_its_draws_in_chunks_as_one_pass_would():
    # an audit: a 10-D MAF's sample(300_000) held 1.45 GB in one pass (76 MB in chunks)
    from flowforge.core import SAMPLE_CHUNK

    flow = ff.models.build("realnvp", features=3, layers=2).eval()
    sizes = []
    inverse = flow.transform.inverse

    def recorded(z, context=None):
        sizes.append(len(z))
        return inverse(z, context)

    flow.transform.inverse = recorded
    torch.manual_seed(0)
    x = flow.sample(2 * SAMPLE_CHUNK + 5)
    assert sizes == [SAMPLE_CHUNK, SAMPLE_CHUNK, 5]
    torch.manual_seed(0)
    with torch.no_grad():
        whole, _ = inverse(flow.base.sample(2 * SAMPLE_CHUNK + 5))
    torch.testing.assert_close(x, whole, rtol=1e-6, atol=1e-6)
    sizes.clear()
    flow.sample(10)
    assert sizes == [10]


def test_bits_per_dim_checks_its_dimensions():
    # (an audit: dims=0 gave ZeroDivisionError or inf, a negative one negative bits/dim)
    assert ff.objectives.nll_to_bits_per_dim(64 * math.log(2), 64) == pytest.approx(1.0)
    for dims in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="expected dims to be an integer >= 1"):
            ff.objectives.nll_to_bits_per_dim(torch.tensor(10.0), dims)
