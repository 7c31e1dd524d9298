"""Interoperability with torch.distributions: a torch distribution as a flow's base
(``TorchBase``) and a flow as a torch distribution (``FlowDistribution``, ``flow.as_torch()``)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.distributions import (
    Categorical,
    ExpTransform,
    Independent,
    Laplace,
    MixtureSameFamily,
    Normal,
    TransformedDistribution,
    kl_divergence,
)

import flowforge as ff
from cases.base import perturbed
from flowforge.distributions import DiagGaussian, GaussianMixture, StandardNormal, TorchBase
from flowforge.testing import check_distribution
from flowforge.torch_distributions import FlowDistribution

D64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def diag_normal(loc, log_scale):
    return Independent(Normal(loc, log_scale.exp()), 1)


def torch_diag(d: int, dtype=torch.float32) -> TorchBase:
    """The torch twin of ``DiagGaussian(d)``: trainable loc and log-scale."""
    return TorchBase(
        diag_normal,
        loc=nn.Parameter(torch.zeros(d, dtype=dtype)),
        log_scale=nn.Parameter(torch.zeros(d, dtype=dtype)),
    )


def torch_mixture(d: int, components: int = 3, trainable: bool = True) -> TorchBase:
    """A Gaussian mixture: continuous, but torch gives it no rsample."""

    def make(logits, loc, log_scale):
        comp = Independent(Normal(loc, log_scale.exp()), 1)
        return MixtureSameFamily(Categorical(logits=logits), comp)

    torch.manual_seed(0)
    wrap = nn.Parameter if trainable else (lambda t: t)
    return TorchBase(
        make,
        logits=wrap(torch.zeros(components)),
        loc=wrap(torch.randn(components, d)),
        log_scale=wrap(torch.zeros(components, d)),
    )


def layers(d: int) -> ff.Transform:
    return perturbed(ff.Compose(ff.transforms.Scaling(d), ff.transforms.LULinear(d)), 0.4)


def twins(d: int = 3):
    """The same transform over DiagGaussian and over its torch twin, the bases' parameters
    set equal (and away from zero), in float64."""
    t = layers(d).to(D64)
    ours = perturbed(DiagGaussian(d), 0.5).to(D64)
    theirs = torch_diag(d, D64)
    with torch.no_grad():
        theirs.loc.copy_(ours.loc)
        theirs.log_scale.copy_(ours.log_scale)
    return ff.Flow(t, ours), ff.Flow(t, theirs)


# -- the base: densities ---------------------------------------------------------------------


def test_standard_normal_as_a_torch_base_scores_as_flowforges_own():
    t = layers(3).to(D64)
    fixed = TorchBase(
        lambda loc, scale: Independent(Normal(loc, scale), 1),
        loc=torch.zeros(3, dtype=D64),
        scale=torch.ones(3, dtype=D64),
    )
    x = 2 * torch.randn(50, 3, dtype=D64)
    want = ff.Flow(t, StandardNormal(3).to(D64)).log_prob(x)
    assert torch.allclose(ff.Flow(t, fixed).log_prob(x), want, rtol=0, atol=1e-12)
    assert not list(fixed.parameters()) and set(fixed.state_dict()) == {"loc", "scale"}


def test_diagonal_normal_scores_and_trains_as_diag_gaussian():
    ours, theirs = twins()
    x = 2 * torch.randn(40, 3, dtype=D64)
    lp_ours, lp_theirs = ours.log_prob(x), theirs.log_prob(x)
    assert torch.allclose(lp_theirs, lp_ours, rtol=0, atol=1e-12)
    lp_ours.sum().backward()
    lp_theirs.sum().backward()
    for name in ("loc", "log_scale"):
        want = getattr(ours.base, name).grad
        got = getattr(theirs.base, name).grad
        assert want.abs().min() > 0 and torch.allclose(got, want, rtol=1e-10, atol=0), name


@pytest.mark.parametrize("d", [1, 2])
def test_check_distribution_passes_on_torch_bases(d):
    torch.manual_seed(1)
    check_distribution(perturbed(torch_diag(d), 0.3).to(D64))
    laplace = TorchBase(
        lambda loc, scale: Independent(Laplace(loc, scale), 1),
        loc=nn.Parameter(0.3 * torch.ones(d, dtype=D64)),
        scale=torch.full((d,), 0.7, dtype=D64),
    )
    check_distribution(laplace)
    check_distribution(torch_mixture(d).to(D64))


# -- the base: gradients through samples (variational inference) -----------------------------


def test_rsample_carries_the_reparameterised_gradient():
    base = perturbed(torch_diag(3, D64), 0.5)
    z, log_p = base.rsample_and_log_prob(200)
    assert torch.allclose(log_p, base.log_prob(z), rtol=0, atol=1e-12)
    z.sum().backward()  # z = loc + exp(log_scale) * eps: d/dloc = n, d/dlog_scale = sum(z - loc)
    assert torch.allclose(base.loc.grad, torch.full((3,), 200.0, dtype=D64))
    assert torch.allclose(base.log_scale.grad, (z - base.loc).detach().sum(0))


def test_reverse_kl_trains_a_torch_base_toward_the_target():
    torch.manual_seed(0)
    base = torch_diag(2)
    flow = ff.Flow(ff.core.Identity(2), base)
    target = Independent(Normal(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])), 1)
    opt = torch.optim.Adam(flow.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        ff.reverse_kl(flow, target.log_prob, 64).backward()
        opt.step()
    assert torch.allclose(base.loc.detach(), target.mean, atol=0.15)
    assert torch.allclose(base.log_scale.exp().detach(), target.stddev, rtol=0.15)


def test_reverse_kl_gives_a_base_without_rsample_its_score_function_gradient():
    """N(mu, 1) as a one-component mixture (no rsample) against the target N(m, 1): the
    gradient of KL = (mu - m)^2 / 2 is mu - m. Without the score-function term it would be
    about 0 (the samples carry no gradient of mu)."""
    base = TorchBase(
        lambda logits, loc: MixtureSameFamily(
            Categorical(logits=logits), Independent(Normal(loc, torch.ones_like(loc)), 1)
        ),
        logits=torch.zeros(1, dtype=D64),
        loc=nn.Parameter(torch.full((1, 1), 0.5, dtype=D64)),
    )
    assert not base.has_rsample and torch_diag(2).has_rsample
    flow = ff.Flow(ff.core.Identity(1), base)
    target = Independent(Normal(torch.full((1,), -0.5, dtype=D64), torch.ones(1, dtype=D64)), 1)
    torch.manual_seed(0)
    ff.reverse_kl(flow, target.log_prob, 20000).backward()
    assert abs(base.loc.grad.item() - 1.0) < 0.1
    x, log_q = flow.rsample_and_log_prob(5)  # the flow's rsample: no gradient of the base's
    assert not x.requires_grad and torch.allclose(log_q, flow.log_prob(x))


def test_a_frozen_base_without_rsample_still_trains_the_layers():
    flow = ff.Flow(layers(2), torch_mixture(2, trainable=False))
    x, log_q = flow.rsample_and_log_prob(16)
    (x.square().sum() + log_q.sum()).backward()
    grads = [p.grad for p in flow.transform.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


# -- the base: save, load, dtype ---------------------------------------------------------------


def test_save_and_load_keep_the_trained_tensors(tmp_path, monkeypatch):
    from flowforge.models import registry

    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # (the registry as it was)

    @ff.models.register
    def torch_base_test_flow(features: int = 2) -> ff.Flow:
        t = ff.transforms
        return ff.Flow(t.Scaling(features), torch_diag(features))

    flow = ff.models.build("torch_base_test_flow", features=3)
    perturbed(flow, 0.5)
    x = torch.randn(6, 3)
    ff.save(flow, tmp_path / "m.ff")
    again = ff.load(tmp_path / "m.ff")
    assert isinstance(again.base, TorchBase)
    assert torch.equal(again.base.loc, flow.base.loc)
    assert torch.equal(again.base.log_scale, flow.base.log_scale)
    assert again.base.loc.abs().min() > 0 and isinstance(again.base.loc, nn.Parameter)
    assert torch.equal(again.log_prob(x), flow.log_prob(x))


def test_double_moves_the_tensors_and_the_samples():
    flow = ff.Flow(layers(2), perturbed(torch_diag(2), 0.5))
    x = torch.randn(5, 2)
    lp32 = flow.log_prob(x)
    flow.double()
    assert flow.base.loc.dtype == D64 and isinstance(flow.base.loc, nn.Parameter)
    assert flow.dtype == D64 and flow.sample(3).dtype == D64
    assert flow.rsample_and_log_prob(3)[1].dtype == D64
    lp64 = flow.log_prob(x.double())
    assert lp64.dtype == D64 and torch.allclose(lp64, lp32.double(), atol=1e-5)


def test_the_base_takes_the_dtype_of_its_tensors():
    base = torch_diag(2, D64)
    assert base._anchor.dtype == D64 and base.sample(2).dtype == D64
    assert ff.Flow(ff.transforms.Scaling(2).double(), base).dtype == D64


def test_a_tensor_made_inside_the_factory_is_refused_after_a_move():
    base = TorchBase(lambda: Independent(Normal(torch.zeros(2), torch.ones(2)), 1))
    assert base.sample(2).shape == (2, 2)  # where the tensors agree: fine
    base.double()
    with pytest.raises(ValueError, match="made inside the factory") as e:
        base.sample(2)
    assert "\n" not in str(e.value)


def conditional_layers(context: int = 3) -> ff.Transform:
    t = ff.transforms
    mask = t.half_mask(2)

    def net(i, o):
        return ff.nets.MLP(i, o, (8,))

    chain = ff.Compose(
        t.Coupling(mask, net, t.Affine(), context_features=context),
        t.Coupling(~mask, net, t.Affine(), context_features=context),
    )
    return perturbed(chain, 0.3)


def test_a_conditional_flow_with_a_torch_base_ignores_the_context_in_the_base():
    flow = ff.Flow(conditional_layers(), torch_diag(2))
    c, x = torch.randn(5, 3), torch.randn(5, 2)
    z, ladj = flow.transform(x, c)
    assert torch.allclose(flow.log_prob(x, c), flow.base.log_prob(z) + ladj)
    assert flow.sample(4, c).shape == (4, 5, 2)


# -- the base: bad inputs, one line each ------------------------------------------------------


def _normal(loc, scale):
    return Independent(Normal(loc, scale), 1)


ONE, ZERO = torch.ones(2), torch.zeros(2)
BAD_BASES = [
    (lambda: TorchBase(_normal(ZERO, ONE)), TypeError, "not a built Independent"),
    (lambda: TorchBase("normal"), TypeError, "factory to be a function"),
    (lambda: TorchBase(lambda loc: loc, loc=ZERO), TypeError, "return a torch.distributions"),
    (lambda: TorchBase(_normal, loc=ZERO, scale=1.0), TypeError, r"tensors, got scale=float"),
    (
        lambda: TorchBase(_normal, loc=nn.Parameter(ZERO) * 1, scale=ONE),
        ValueError,
        "requires grad but is not an nn.Parameter",
    ),
    (lambda: TorchBase(_normal, loc=ZERO, scale=ONE.double()), ValueError, "one floating dtype"),
    (lambda: TorchBase(Normal, loc=ZERO, scale=ONE), ValueError, r"batch shape \(2,\)"),
    (
        lambda: TorchBase(Normal, loc=torch.zeros(()), scale=torch.ones(())),
        ValueError,
        r"over a scalar",
    ),
    (
        lambda: TorchBase(lambda p: Independent(Categorical(p), 1), p=torch.ones(2, 3)),
        ValueError,
        "is discrete",
    ),
    (
        lambda: TorchBase(_normal, loc=ZERO, scale=ONE, context_features=ONE),
        ValueError,
        "TorchBase is unconditional",
    ),
    (
        lambda: TorchBase(
            lambda training, scale: _normal(training, scale), training=ZERO, scale=ONE
        ),
        ValueError,
        "cannot hold a tensor named 'training'",
    ),
    (lambda: ff.Flow(ff.transforms.Scaling(2), _normal(ZERO, ONE)), TypeError, "TorchBase"),
    (lambda: ff.Flow(ff.transforms.Scaling(3), torch_diag(2)), ValueError, r"over shape \(2,\)"),
    (lambda: torch_diag(2).sample(3, temperature=0.5), ValueError, "temperature 0.5"),
    (lambda: torch_diag(2).log_prob(torch.zeros(4, 3)), ValueError, r"\(batch, 2\), got"),
]


@pytest.mark.parametrize("make, error, match", BAD_BASES, ids=[m for _, _, m in BAD_BASES])
def test_bad_base_inputs_say_what_is_wrong_in_one_line(make, error, match):
    with pytest.raises(error, match=match) as e:
        make()
    assert "\n" not in str(e.value)


def test_a_factory_whose_shape_changes_is_refused():
    size = [2]
    base = TorchBase(lambda loc: _normal(loc[: size[0]], torch.ones(size[0])), loc=torch.zeros(3))
    size[0] = 1
    with pytest.raises(ValueError, match=r"now returns a distribution over \(1,\)"):
        base.log_prob(torch.zeros(4, 2))


# -- the view: a flow as a torch distribution ------------------------------------------------


def conditional_flow() -> ff.Flow:
    torch.manual_seed(0)
    return ff.Flow(conditional_layers(), StandardNormal(2))


def test_the_view_scores_and_samples_as_the_flow():
    flow = perturbed(ff.Flow(layers(3), torch_diag(3)), 0.3)
    q = flow.as_torch()
    assert isinstance(q, torch.distributions.Distribution) and isinstance(q, FlowDistribution)
    assert q.event_shape == (3,) and q.batch_shape == () and q.has_rsample
    assert repr(q) == "FlowDistribution(Flow, event_shape=(3,))"
    x = torch.randn(7, 4, 3)
    assert torch.equal(q.log_prob(x), flow.log_prob(x))
    torch.manual_seed(5)
    s = q.sample((4, 2))
    torch.manual_seed(5)
    assert torch.equal(s, flow.sample((4, 2))) and not s.requires_grad
    assert q.sample().shape == (3,)
    r = q.rsample((6,))
    r.sum().backward()
    assert r.shape == (6, 3) and flow.base.loc.grad.abs().sum() > 0


def test_the_view_of_a_conditional_flow_has_the_contexts_batch_shape():
    flow = conditional_flow()
    c = torch.randn(5, 3)
    q = flow.as_torch(c)
    assert q.batch_shape == (5,) and q.event_shape == (2,)
    x = torch.randn(4, 5, 2)
    assert torch.allclose(q.log_prob(x), flow.log_prob(x, c))
    assert q.log_prob(x[0, 0]).shape == (5,)  # one value broadcast against the batch
    assert torch.allclose(q.log_prob(x[0, 0]), flow.log_prob(x[0, 0].expand(5, 2), c))
    assert q.sample((4,)).shape == (4, 5, 2)
    one = flow.as_torch(c[0])
    assert one.batch_shape == () and one.sample((3,)).shape == (3, 2)
    joint = Independent(q, 1)  # torch code built on the view
    assert joint.event_shape == (5, 2)
    assert torch.allclose(joint.log_prob(x), flow.log_prob(x, c).sum(-1))


def test_transformed_distribution_of_the_view():
    flow = ff.Flow(layers(2), StandardNormal(2))
    y = TransformedDistribution(flow.as_torch(), [ExpTransform()])
    v = y.sample((5,))
    assert (v > 0).all()
    want = flow.log_prob(v.log()) - v.log().sum(-1)
    assert torch.allclose(y.log_prob(v), want, atol=1e-5)


def test_a_kl_estimate_by_samples_of_the_view_matches_the_closed_form():
    base = DiagGaussian(2).to(D64)
    with torch.no_grad():
        base.loc.copy_(torch.tensor([0.5, -1.0]))
        base.log_scale.copy_(torch.tensor([0.3, -0.2]))
    q = ff.Flow(ff.core.Identity(2), base).as_torch()
    p = Independent(Normal(torch.zeros(2, dtype=D64), torch.ones(2, dtype=D64)), 1)
    same = Independent(Normal(base.loc.detach(), base.log_scale.detach().exp()), 1)
    torch.manual_seed(0)
    x = q.rsample((40000,))
    estimate = (q.log_prob(x) - p.log_prob(x)).mean()
    assert abs(estimate.item() - kl_divergence(same, p).item()) < 0.02
    estimate.backward()
    assert base.loc.grad.abs().min() > 0  # the estimate trains the flow through the view


def test_what_has_no_closed_form_says_how_to_estimate_it():
    q = ff.Flow(layers(2), StandardNormal(2)).as_torch()
    p = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    for get in (
        lambda: q.mean,
        lambda: q.mode,
        lambda: q.variance,
        lambda: q.stddev,
        lambda: q.entropy(),
        lambda: kl_divergence(q, p),
        lambda: kl_divergence(p, q),
        lambda: kl_divergence(q, q),
    ):
        with pytest.raises(NotImplementedError, match="no closed(-| )form") as e:
            get()
        said = str(e.value)
        assert "\n" not in said and ("from samples" in said or "by samples" in said), said


def test_the_views_support():
    flow = ff.Flow(layers(2), StandardNormal(2))
    q = flow.as_torch()
    assert q.support.check(torch.randn(3, 2)).all() and q.support.event_dim == 1
    unit = torch.distributions.constraints.independent(
        torch.distributions.constraints.unit_interval, 1
    )
    bounded = flow.as_torch(support=unit)
    assert bounded.support is unit and not bounded.support.check(torch.full((1, 2), 2.0)).any()


def test_the_view_of_a_mixture_base_has_no_rsample():
    q = ff.Flow(layers(2), GaussianMixture(2, components=3)).as_torch()
    assert not q.has_rsample
    with pytest.raises(NotImplementedError, match="not reparameterisable"):
        q.rsample((2,))
    assert q.sample((2,)).shape == (2, 2)
    assert not ff.Flow(layers(2), torch_mixture(2)).as_torch().has_rsample


BAD_VIEWS = [
    (lambda: FlowDistribution(torch_diag(2)), TypeError, "expected a flowforge Flow"),
    (
        lambda: ff.Flow(
            ff.transforms.Scaling(2), StandardNormal(2), ff.transforms.UniformDequantization(256)
        ).as_torch(),
        ValueError,
        "dequantizer",
    ),
    (lambda: conditional_flow().as_torch(), ValueError, r"conditional: expected a context"),
    (lambda: conditional_flow().as_torch(torch.zeros(5, 2)), ValueError, r"\(\*batch, 3\), got"),
    (
        lambda: ff.Flow(layers(2), StandardNormal(2)).as_torch(torch.zeros(3)),
        ValueError,
        "unconditional",
    ),
    (
        lambda: ff.Flow(layers(2), StandardNormal(2)).as_torch(support="real"),
        TypeError,
        "Constraint",
    ),
    (
        lambda: conditional_flow().as_torch(torch.zeros(5, 3)).log_prob(torch.zeros(4, 2)),
        ValueError,
        r"for the view's batch shape \(5,\)",
    ),
]


@pytest.mark.parametrize("make, error, match", BAD_VIEWS, ids=[m for _, _, m in BAD_VIEWS])
def test_bad_view_inputs_say_what_is_wrong_in_one_line(make, error, match):
    with pytest.raises(error, match=match) as e:
        make()
    assert "\n" not in str(e.value)


def test_a_manifold_flow_reports_its_manifold_as_the_support():
    """as_torch() of a TorusFlow or a SphereFlow said its support was all of R^D: pyro's
    biject_to and other code reading the support would map onto the wrong space."""
    from flowforge.torch_distributions import angles, unit_vectors

    torus = ff.models.TorusFlow(features=2, layers=2, hidden=(8,)).as_torch()
    sphere = ff.models.SphereFlow(layers=2, hidden=(8,)).double().as_torch()
    assert torus.support is angles and sphere.support is unit_vectors
    for d in (torus, sphere):
        x = d.sample((64,))
        assert d.support.check(x).all()
        assert not d.support.check(x * 1.5 + 10).any()
    real = ff.models.NSF(features=2).as_torch().support
    assert (
        isinstance(real, torch.distributions.constraints.independent)
        and real.base_constraint is torch.distributions.constraints.real
    )
    mine = torch.distributions.constraints.positive
    assert ff.models.SphereFlow(layers=2, hidden=(8,)).as_torch(support=mine).support is mine


def test_an_overflowed_latent_is_said_in_flowforges_words_not_torchs():
    # an audit: a NaN latent (an overflow in the layers before) reached torch's support
    # validation, whose error replaced flowforge's, and `flowforge report` of such a run failed
    laplace = TorchBase(lambda loc, scale: Independent(Laplace(loc, scale), 1),
                        loc=torch.zeros(2), scale=torch.ones(2))  # fmt: skip
    z = torch.tensor([[0.5, 0.5], [float("nan"), 1.0], [float("inf"), 0.0]])
    lp = laplace.log_prob(z)  # (the inf row: NaN, or -inf where torch's validation is off)
    assert lp[1].isnan() and not torch.isfinite(lp[2])
    assert lp[0].item() == pytest.approx(Laplace(0.0, 1.0).log_prob(torch.tensor(0.5)).item() * 2)
    assert not torch.isfinite(laplace.log_prob(z[1:])).any()
    # a finite value outside a support has density zero: -inf, also where torch's own
    # validation is off (torch.compile switches it off for the whole process, and the
    # Exponential then gave -(-1) = 1 nat there)
    from torch.distributions import Distribution, Exponential

    rate = TorchBase(lambda rate: Independent(Exponential(rate), 1), rate=torch.ones(2))
    held = Distribution._validate_args
    try:
        for on in (True, False):
            Distribution.set_default_validate_args(on)
            lp = rate.log_prob(torch.tensor([[-1.0, 1.0], [0.5, 1.0]]))
            assert lp[0] == -math.inf and lp[1].item() == pytest.approx(-1.5)
    finally:
        Distribution.set_default_validate_args(held)


class _Unsummed(ff.distributions.StandardNormal):
    """log_prob forgets to sum over the event's dimensions."""

    def log_prob(self, z, context=None):
        return -0.5 * (z.square() + math.log(2 * math.pi))


class _Templess(ff.distributions.StandardNormal):
    """_sample ignores its temperature."""

    def _sample(self, n, context, temperature):
        return super()._sample(n, context, 1.0)


def test_a_base_of_ones_own_that_breaks_the_contract_is_named():
    # an audit: a log_prob that does not sum passed check_distribution in 1-D, and the flow
    # then failed with "shape '[5]' is invalid for input of size 25"; a base ignoring its
    # temperature sampled at T = 1 when asked for 0.1, and passed the check
    with pytest.raises(AssertionError, match=r"log_prob of 4 draws has shape \(4, 1\)"):
        check_distribution(_Unsummed(1))
    flow = ff.Flow(ff.Compose(layers(2)), _Unsummed(2))
    with pytest.raises(ValueError, match=r"_Unsummed.log_prob returned shape \(5, 2\)"):
        flow.log_prob(torch.randn(5, 2))
    with pytest.raises(AssertionError, match="ignores its temperature"):
        check_distribution(_Templess(2))
    # a Student-t of 2 dimensions (heavy tails, a wide grid): no false alarm from cells that
    # straddle |z| = 1
    from torch.distributions import StudentT

    t4 = TorchBase(lambda df: Independent(StudentT(df.expand(2)), 1), df=torch.tensor(4.0))
    check_distribution(t4, half_width=60)


def test_a_mixture_base_scores_each_component_within_its_own_support():
    # a review: torch's support check of a mixture asks a point to lie in every component's
    # support, so uniforms on [0, 1] and [10, 12] scored every point -inf
    from torch.distributions import Distribution, Uniform

    base = TorchBase(lambda w, lo, hi: MixtureSameFamily(Categorical(logits=w),
                                                         Independent(Uniform(lo, hi), 1)),
                     w=torch.zeros(2), lo=torch.tensor([[0.0], [10.0]]),
                     hi=torch.tensor([[1.0], [12.0]]))  # fmt: skip
    held = Distribution._validate_args
    try:
        for on in (True, False):
            Distribution.set_default_validate_args(on)
            lp = base.log_prob(torch.tensor([[0.5], [11.0], [5.0], [float("nan")]]))
            assert lp[0].item() == pytest.approx(math.log(0.5))
            assert lp[1].item() == pytest.approx(math.log(0.25))
            assert lp[2] == -math.inf and lp[3].isnan()
    finally:
        Distribution.set_default_validate_args(held)
    assert base.log_prob(torch.zeros(0, 1)).shape == (0,)


def test_an_independent_mixture_base_gives_minus_inf_outside_its_support():
    # (an audit: Independent(MixtureSameFamily(...Exponential)) raised torch's five-line
    # support error for a point outside, where the docstring promises -inf)
    from torch.distributions import Distribution, Exponential

    def factory(w, rate):
        return Independent(MixtureSameFamily(Categorical(logits=w), Exponential(rate)), 1)

    base = TorchBase(factory, w=torch.zeros(2, 3), rate=torch.ones(2, 3))
    held = Distribution._validate_args
    try:
        for on in (True, False):
            Distribution.set_default_validate_args(on)
            lp = base.log_prob(torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, float("nan")]]))
            assert lp[0].item() == pytest.approx(-2.0) and lp[1] == -math.inf and lp[2].isnan()
    finally:
        Distribution.set_default_validate_args(held)


def test_a_support_torch_cannot_check_is_not_checked_twice():
    # (an audit: a support torch cannot check switched torch's own validation on, which asks
    # the same check and raised "Cannot determine validity of dependent constraint")
    from torch.distributions import Normal, constraints

    class Loose(Normal):
        support = constraints.dependent

    base = TorchBase(lambda loc: Independent(Loose(loc, torch.ones_like(loc)), 1),
                     loc=torch.zeros(2))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lp = base.log_prob(torch.zeros(3, 2))
    assert torch.allclose(lp, torch.full((3,), -math.log(2 * math.pi)))
