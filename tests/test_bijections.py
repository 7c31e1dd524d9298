"""The generic test: every layer and model in ``cases.CASES`` honours the contract, and every
public elementwise transformer, base distribution and dequantizer passes its own checks."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from cases import CASES, Case
from flowforge.testing import (
    NUMERIC_CAP,
    check_dequantizer,
    check_distribution,
    check_gradients,
    check_log_det,
    check_round_trip,
    check_round_trip_from_noise,
    check_transformer,
)

IDS = [c.name for c in CASES]


def transform_of(m):
    return m.transform if isinstance(m, ff.Flow) else m


def prepared(case: Case, seed: int = 0):
    """Build in float32, move to float64, warm up (ActNorm init, BatchNorm statistics) on a
    batch in training mode, perturb every parameter away from its identity initialisation so
    that the checks are not trivial, then switch to eval mode."""
    torch.manual_seed(seed)
    m = case.build()
    m = m.to(torch.float64)
    m.train()
    t = transform_of(m)
    ctx = case.draw_context(16)
    with torch.no_grad():
        t(case.draw(16), ctx)
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    m.eval()
    return m


def context(case: Case, n: int):
    return case.draw_context(n)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_moves_to_float64(case):
    m = case.build().to(torch.float64)
    for name, p in [*m.named_parameters(), *m.named_buffers()]:
        if p.is_floating_point():
            assert p.dtype == torch.float64, f"{name} stayed {p.dtype}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_builds_and_trains_under_a_float64_default_dtype(case):
    """What VI and science users do first: ``torch.set_default_dtype(torch.float64)``, then
    build. Everything is created in float64 and a training step runs."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        m = case.build()
        for name, p in [*m.named_parameters(), *m.named_buffers()]:
            if p.is_floating_point():
                assert p.dtype == torch.float64, f"{name} was built in {p.dtype}"
        m.train()
        z, ladj = transform_of(m)(case.draw(8), case.draw_context(8))
        loss = z.square().sum() - ladj.sum()
        assert torch.isfinite(loss)
        if loss.requires_grad:  # layers without parameters have nothing to train
            loss.backward()
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("batch", [1, 3])
def test_round_trip(case, batch):
    t = transform_of(prepared(case))
    tol = t.numeric_inverse
    assert tol is None or tol <= NUMERIC_CAP or "loose" in case.tags, (
        f"a numerical inverse declared to {tol:g} is not a check in float64 (cap {NUMERIC_CAP:g})"
    )
    check_round_trip(t, case.draw(batch), context(case, batch))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip_from_fresh_noise(case):
    t = transform_of(prepared(case))
    if isinstance(t, ff.Compose) and isinstance(t[0], ff.transforms.Logit) and len(t) > 1:
        # a model's logit preprocessing saturates (sigmoid(y) == 1.0 in float64 beyond
        # |y| ~ 37, which the perturbed models reach from noise): check the layers after it
        # here, and the logit on its own in its own cases
        t = ff.Compose(*t.layers[1:])
    torch.manual_seed(3)
    z = case.draw_noise(3, t.output_shape)
    check_round_trip_from_noise(t, z, context(case, 3))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_log_det_matches_autograd(case):
    t = transform_of(prepared(case))
    check_log_det(t, case.draw(3), context(case, 3))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_parameter_gets_a_gradient(case):
    m = prepared(case)
    check_gradients(transform_of(m), case.draw(4), context(case, 4))
    if isinstance(m, ff.Flow):
        # the base's parameters train through log_prob of the latent
        z, _ = m.transform(case.draw(4), context(case, 4))
        m.base.log_prob(z, context(case, 4)).sum().backward()
        for name, p in m.base.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"base.{name} got no gradient"


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.context], ids=[c.name for c in CASES if c.context]
)
def test_context_changes_the_output(case):
    t = transform_of(prepared(case))
    x = case.draw(4)
    z1, l1 = t(x, context(case, 4))
    z2, l2 = t(x, context(case, 4))
    assert not torch.allclose(z1, z2), "the output does not depend on the context"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_load_gives_identical_outputs(case):
    from safetensors.torch import load, save

    m = prepared(case, seed=0)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    blob = save(state)
    m2 = prepared(case, seed=1)  # different random init and permutations
    m2.load_state_dict(load(blob))
    m2.eval()
    x, c = case.draw(5), context(case, 5)
    t, t2 = transform_of(m), transform_of(m2)
    z, ladj = t(x, c)
    z2, ladj2 = t2(x, c)
    assert torch.equal(z, z2) and torch.equal(ladj, ladj2)


FLOWS = [c for c in CASES if c.is_flow]


@pytest.mark.parametrize("case", FLOWS, ids=[c.name for c in FLOWS])
def test_flow_save_load_and_sample(case, tmp_path):
    flow = prepared(case)
    path = tmp_path / "m.ff"
    ff.save(flow, path)
    flow2 = ff.load(path)
    flow2.eval()
    assert flow2.config == flow.config
    x, c = case.draw(4), context(case, 4)
    z, _ = flow.transform(x, c)
    z2, _ = flow2.transform(x, c)
    assert torch.equal(z, z2)
    # a training step after reload must not re-initialise anything (ActNorm)
    flow2.train()
    before = {k: v.clone() for k, v in flow2.state_dict().items() if "running" not in k}
    with torch.no_grad():
        flow2.transform(case.draw(8), context(case, 8))
    for k, v in flow2.state_dict().items():
        if k in before:
            assert torch.equal(v, before[k]), f"{k} changed during a forward pass after reload"
    # sampling shapes
    flow.eval()
    n = 3
    s = flow.sample(n, context(case, 2))
    want = (n, 2, *case.shape) if case.context else (n, *case.shape)
    assert tuple(s.shape) == want
    # (an integer flow's samples carry no gradient: it refuses rsample, and draws with this)
    integer = isinstance(flow, ff.models.IntegerFlow)
    draw = flow.sample_and_log_prob if integer else flow.rsample_and_log_prob
    xs, log_q = draw(n, context(case, 2))
    assert tuple(xs.shape) == want and tuple(log_q.shape) == want[: len(want) - len(case.shape)]
    assert torch.isfinite(log_q).all()


def test_registry_covers_every_public_transform():
    """A layer exported from flowforge.transforms must have a case in the registry."""
    covered = set()
    for case in CASES:
        m = case.build()
        covered |= {type(mod).__name__ for mod in m.modules()}
    public = {
        name
        for name in ff.transforms.__all__
        if isinstance(getattr(ff.transforms, name), type)
        and issubclass(getattr(ff.transforms, name), ff.Transform)
    }
    missing = public - covered
    assert not missing, f"transforms without a generic-test case: {sorted(missing)}"


def test_generic_checks_catch_a_wrong_log_det():
    class Off(ff.transforms.Scaling):
        def _forward(self, x, context):
            z, ladj = super()._forward(x, context)
            return z, ladj + 1e-5  # deliberately wrong, symmetric in both directions

        def _inverse(self, z, context):
            x, ladj = super()._inverse(z, context)
            return x, ladj - 1e-5

    t = Off(3).double()
    x = torch.randn(3, 3, dtype=torch.float64)
    check_round_trip(t, x)  # the round trip cannot see it...
    with pytest.raises(AssertionError, match="ladj differs from autograd"):
        check_log_det(t, x)  # ...the autograd check does


def test_generic_checks_catch_a_wrong_inverse():
    class Leaky(ff.transforms.Scaling):
        def _inverse(self, z, context):
            x, ladj = super()._inverse(z, context)
            return x * (1 + 1e-8), ladj

    t = Leaky(3).double()
    with pytest.raises(AssertionError, match="round trip"):
        check_round_trip(t, torch.randn(3, 3, dtype=torch.float64))


def test_generic_checks_catch_a_dead_parameter():
    class Dead(ff.transforms.Scaling):
        def __init__(self, d):
            super().__init__(d)
            self.unused = torch.nn.Parameter(torch.zeros(d))

    with pytest.raises(AssertionError, match="unused got no gradient"):
        check_gradients(Dead(2).double(), torch.randn(3, 2, dtype=torch.float64))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_tensor_a_layer_holds_is_registered(case):
    from flowforge.testing import check_registered

    check_registered(prepared(case))


class _Cubic(ff.Transform):
    """z = x - a x^3: monotone only for |x| < 1 / sqrt(3 a)."""

    def __init__(self, a=0.02, context_features=0):
        super().__init__((2,), context_features=context_features)
        self.a = torch.nn.Parameter(torch.tensor(a))

    def _forward(self, x, context):
        return x - self.a * x**3, torch.log((1 - 3 * self.a * x**2).abs()).sum(-1)

    def _inverse(self, z, context):  # a few Newton steps from z: a root, not the root
        x = z
        for _ in range(60):
            x = x - (x - self.a * x**3 - z) / (1 - 3 * self.a * x**2)
        return x, -torch.log((1 - 3 * self.a * x**2).abs()).sum(-1)


def test_check_transform_catches_what_a_researchers_layer_gets_wrong():
    """The mistakes of the extension audit that passed flowforge.testing before."""
    from flowforge.testing import check_transform

    torch.manual_seed(0)
    x = torch.randn(6, 2, dtype=torch.float64)
    check_transform(_Cubic().double(), x)  # near the origin, it is a bijection
    wide = x * torch.tensor([1.0, 8.0], dtype=torch.float64)
    with pytest.raises(AssertionError, match="sign of det J changes"):
        check_log_det(_Cubic().double(), wide)  # log|det| agrees with autograd; the sign not

    class Plain(_Cubic):
        def __init__(self):
            super().__init__()
            self.s = torch.tensor([0.3, 0.3])  # meant as a parameter

    with pytest.raises(AssertionError, match="attribute 's' is a plain tensor"):
        check_transform(Plain().double(), x)

    class Ignores(_Cubic):
        def __init__(self):
            super().__init__(context_features=3)

    with pytest.raises(AssertionError, match="does not depend on the context"):
        check_transform(Ignores().double(), x, torch.randn(6, 3, dtype=torch.float64))

    class InPlace(_Cubic):
        def _forward(self, x, context):
            z, ladj = super()._forward(x.clone(), context)
            x.mul_(1.0)  # harmless here...
            x.add_(1.0)  # ...not here
            return z, ladj

    with pytest.raises(AssertionError, match="changed its input in place"):
        check_transform(InPlace().double(), x.clone())

    class Leaks(_Cubic):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.ones(2, dtype=torch.float64))

        def _forward(self, x, context):
            z, ladj = super()._forward(x, context)
            return z * self.w.double(), ladj

    with pytest.raises(AssertionError, match="torch.float32 in, torch.float64 out"):
        check_transform(Leaks(), x.float())


def test_registry_covers_every_model():
    """A builder registered in ff.models must have a flow case in the registry."""
    covered = {case.build().config["model"].lower() for case in CASES if case.is_flow}
    covered |= {case.covers for case in CASES if case.covers}  # models that are not Flows
    ours = {
        n for n in ff.models.available() if ff.models.builder(n).__module__.startswith("flowforge")
    }
    missing = ours - covered  # (test suites may register builders of their own)
    assert not missing, f"models without a generic-test case: {sorted(missing)}"


# -- the side protocols: transformers, bases, dequantizers ---------------------------------------

T, D = ff.transforms, ff.distributions


def _torch_diag_normal(loc, log_scale):
    return torch.distributions.Independent(torch.distributions.Normal(loc, log_scale.exp()), 1)


def _torch_mixture(logits, loc, log_scale):  # (no rsample: drawn with sample())
    td = torch.distributions
    comp = td.Independent(td.Normal(loc, log_scale.exp()), 1)
    return td.MixtureSameFamily(td.Categorical(logits=logits), comp)


TRANSFORMERS = {
    "additive": lambda: T.Additive(),
    "affine": lambda: T.Affine(),
    "affine-unbounded": lambda: T.Affine(bound=None),
    "rational-quadratic": lambda: T.RationalQuadratic(bins=5, bound=2.0),
    "integer-additive": lambda: T.IntegerAdditive(4.0),
    "logistic-mixture": lambda: T.LogisticMixture(components=3),
    "logistic-mixture-1": lambda: T.LogisticMixture(components=1),
    "logistic-mixture-spread0": lambda: T.LogisticMixture(components=3, spread=0.0),
    "umnn": lambda: T.UnconstrainedMonotonic(embedding=3, hidden=(8,), nodes=9, bound=2.0),
    "sum-of-squares": lambda: T.SumOfSquares(polynomials=2, degree=3, bound=2.0),
    "bernstein": lambda: T.Bernstein(degree=6, bound=2.0),
}
BASES = {
    "normal-2": lambda: D.StandardNormal(2),
    "normal-image": lambda: D.StandardNormal((1, 2, 2)),
    "diag-1": lambda: D.DiagGaussian(1),
    "diag-context-2": lambda: D.DiagGaussian(2, context_features=3, hidden=(8,)),
    "mixture-2": lambda: D.GaussianMixture(2, components=3),
    "mixture-context-1": lambda: D.GaussianMixture(1, 2, context_features=3, hidden=(8,)),
    "made-mog-2": lambda: D.MADEMoG(2, components=3, hidden=(8,)),
    "made-mog-context-2": lambda: D.MADEMoG(2, 2, context_features=3, hidden=(8,)),
    "torch-normal-2": lambda: D.TorchBase(
        _torch_diag_normal,
        loc=torch.nn.Parameter(torch.zeros(2)),
        log_scale=torch.nn.Parameter(torch.zeros(2)),
    ),
    "torch-mixture-1": lambda: D.TorchBase(
        _torch_mixture,
        logits=torch.nn.Parameter(torch.zeros(3)),
        loc=torch.nn.Parameter(torch.linspace(-1, 1, 3)[:, None]),
        log_scale=torch.nn.Parameter(torch.zeros(3, 1)),
    ),
}
DEQUANTIZERS = {
    "uniform": lambda: T.UniformDequantization(5),
    "variational-1": lambda: T.VariationalDequantization(1, levels=5, hidden=8),
    "variational-3": lambda: T.VariationalDequantization(3, levels=5, steps=2, hidden=8),
    "variational-image": lambda: T.VariationalDequantization((2, 2, 2), 5, steps=2, hidden=4),
    "columns": lambda: T.ColumnDequantization(3, [0, 2]),
}


def _perturbed(build, scale=0.3):
    torch.manual_seed(0)
    m = build().to(torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_transformer(name):
    t = TRANSFORMERS[name]().to(torch.float64)
    torch.manual_seed(0)
    x = 1.5 * torch.randn(6, 3, dtype=torch.float64)
    check_transformer(t, x, 0.7 * torch.randn(6, 3, t.params_per_dim, dtype=torch.float64))


@pytest.mark.parametrize("name", [n for n in TRANSFORMERS if n != "integer-additive"])
def test_transformer_gives_nan_for_a_nan_entry_and_leaves_the_others(name):
    """A NaN entry (a diverged step's) comes back NaN in both directions, the other entries as
    without it: the UMNN cast NaN to a bin index and failed the whole batch with an index
    error, where the trainer's non-finite handling should have seen a NaN."""
    t = TRANSFORMERS[name]().to(torch.float64)
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64)
    p = 0.5 * torch.randn(4, 3, t.params_per_dim, dtype=torch.float64)
    bad = x.clone()
    bad[1, 2] = math.nan
    for fn in (t.forward, t.inverse):
        ref, out = fn(x, p)[0], fn(bad, p)[0]
        assert out[1, 2].isnan()
        keep = ~torch.isnan(bad)
        assert torch.equal(out[keep], ref[keep]), name


def test_umnn_inverse_gradient_at_the_interval_edge():
    """z exactly at F(-bound), a knot: dx/dz is 1 / F' there too (the clamp split it in two)."""
    t = T.UnconstrainedMonotonic(embedding=3, hidden=(8,), nodes=9, bound=2.0).double()
    torch.manual_seed(0)
    p = 0.5 * torch.randn(1, t.params_per_dim, dtype=torch.float64)
    edge, ladj = t.forward(torch.tensor([-2.0], dtype=torch.float64), p)
    z = edge.detach().requires_grad_(True)
    x, _ = t.inverse(z, p)
    (dxdz,) = torch.autograd.grad(x.sum(), z)
    assert torch.allclose(dxdz, (-ladj).exp(), rtol=1e-10)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_logistic_mixture_log_det_far_in_the_tails(dtype, tol):
    """Out to |x| = 1e30 the log-derivative is autograd's: the components' scales are not
    lost against a |t| beyond 1/eps (it was off by 0.83 nats per entry past 1e16 in float64
    and past 1e6 in float32)."""
    t = T.LogisticMixture(components=3)
    torch.manual_seed(0)
    params = torch.randn(1, 3 * 3 + 2, dtype=dtype)
    for v in (-1e30, -1e18, -1e16, -1e6, -3.0, 0.0, 2.0, 1e6, 1e16, 1e30):
        x = torch.tensor([v], dtype=dtype, requires_grad=True)
        y, ladj = t.forward(x, params)
        (dy,) = torch.autograd.grad(y.sum(), x)
        assert abs(ladj.item() - dy.abs().log().item()) < tol, v


def test_logistic_mixture_inverts_where_it_is_flat_in_float32():
    """Conditioner outputs of about 1e4 make the CDF flat (log u' of -1664): the Newton step's
    1 / u' overflows float32. The inverse is a finite point the forward map sends to y (it was
    NaN), with finite gradients."""
    t = T.LogisticMixture(components=3)
    raw = [-7812.21, -6177.56, 8392.58, 8467.53, 7920.66, -527.31, 9787.68, -608.02, -3557.16,
           -1903.61, -4317.27]  # fmt: skip
    params = torch.tensor([raw], requires_grad=True)
    y, _ = t.forward(torch.tensor([17.6071]), params)
    y = y.detach().requires_grad_(True)
    x, ladj = t.inverse(y, params)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    assert torch.equal(t.forward(x.detach(), params)[0], y.detach())
    (x.sum() + ladj.sum()).backward()
    assert torch.isfinite(y.grad).all() and torch.isfinite(params.grad).all()


@pytest.mark.parametrize("name", list(BASES))
def test_distribution(name):
    base = _perturbed(BASES[name], 0.1)
    c = (
        torch.randn(3, base.context_features, dtype=torch.float64)
        if base.context_features
        else None
    )
    check_distribution(base, c)


@pytest.mark.parametrize("name", list(DEQUANTIZERS))
def test_dequantizer(name):
    deq = _perturbed(DEQUANTIZERS[name])
    torch.manual_seed(1)
    x = torch.randint(0, 5, (4, *getattr(deq, "event_shape", (3,)))).to(torch.float64)
    check_dequantizer(deq, x)


@pytest.mark.parametrize(
    "module, cls, registry",
    [
        (ff.transforms, ff.core.Transformer, TRANSFORMERS),
        (ff.distributions, ff.core.Distribution, BASES),
        (ff.transforms, ff.core.Dequantizer, DEQUANTIZERS),
    ],
    ids=["transformers", "bases", "dequantizers"],
)
def test_every_public_side_protocol_class_has_a_case(module, cls, registry):
    covered = {type(build()).__name__ for build in registry.values()}
    public = {
        n
        for n in module.__all__
        if isinstance(getattr(module, n), type)
        and issubclass(getattr(module, n), cls)
        and getattr(module, n) is not cls
    }
    assert not public - covered, f"no case for {sorted(public - covered)}"


def test_side_protocol_checks_catch_mistakes():
    class Off(T.Affine):
        def forward(self, x, params):
            y, ladj = super().forward(x, params)
            return y, ladj + 1e-4

    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(AssertionError):
        check_transformer(Off(), x, torch.randn(4, 2, 2, dtype=torch.float64))

    class Unnormalised(D.StandardNormal):
        def log_prob(self, z, context=None):
            return super().log_prob(z, context) + 0.01

    with pytest.raises(AssertionError, match="integrates to"):
        check_distribution(Unnormalised(1).double())

    class WideDrawnNarrow(D.StandardNormal):  # the density of N(0, 1.5^2), draws of N(0, 1)
        def log_prob(self, z, context=None):
            wide = torch.distributions.Normal(z.new_zeros(()), z.new_full((), 1.5))
            return wide.log_prob(z).sum(-1)

    with pytest.raises(AssertionError, match=r"samples disagree with log_prob: P\(\|z\| < 1\)"):
        check_distribution(WideDrawnNarrow(2).double())

    class Leaky(T.UniformDequantization):
        def _dequantize(self, x, context):
            return x + 1.0, x.new_zeros(x.shape[0])

    with pytest.raises(AssertionError, match=r"leaves \[0, 1\)"):
        check_dequantizer(Leaky(5), torch.zeros(2, 3))


def test_a_layers_log_det_of_the_wrong_shape_is_named_at_once():
    """A per-dimension ladj broadcast silently in a Compose (batch = D) or failed in a reshape
    deep in the Flow without naming the layer."""

    class PerDimension(_Cubic):
        def _forward(self, x, context):
            return x, torch.zeros_like(x)

    flow = ff.Flow(ff.Compose(PerDimension(), T.Reverse(2)), D.StandardNormal(2))
    with pytest.raises(ValueError, match=r"PerDimension._forward returned a log-determinant of "
                       r"shape \(2, 2\); expected a tensor of shape \(2,\)"):  # fmt: skip
        flow.log_prob(torch.randn(2, 2))

    class PythonZero(_Cubic):  # volume-preserving, with a Python number for its log-det
        def _forward(self, x, context):
            return x, 0.0

    with pytest.raises(ValueError, match=r"PythonZero._forward returned a log-determinant of "
                       r"0.0; expected a tensor"):  # fmt: skip
        PythonZero()(torch.randn(3, 2))


def test_check_transform_without_false_alarms_and_with_any_dropout():
    from flowforge.testing import check_registered, check_transform

    class Caches(_Cubic):  # keeps a result of its last call (as a regularised CNF its penalty)
        def _forward(self, x, context):
            z, ladj = super()._forward(x, context)
            self._last = ladj.sum()
            return z, ladj

    layer = Caches().double()
    layer(torch.randn(3, 2, dtype=torch.float64))
    check_registered(layer)

    class Drops(_Cubic):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout1d(0.5)

    with pytest.raises(AssertionError, match="training mode with dropout: call t.eval"):
        check_transform(Drops().double(), torch.randn(3, 2, dtype=torch.float64))
    check_transform(Drops().double().eval(), torch.randn(3, 2, dtype=torch.float64))


def test_a_conditioner_of_the_wrong_size_is_named_with_what_was_expected():
    class OneTooMany(torch.nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.lin = torch.nn.Linear(i, o + 1)

        def forward(self, x, context=None):
            return self.lin(x)

    layer = T.Coupling(T.half_mask(4), OneTooMany, T.Affine())
    with pytest.raises(ValueError, match=r"OneTooMany, the coupling's conditioner, returned shape "
                       r"\(3, 5\) for input \(3, 2\); expected \(3, 4\): 2 transformed entries "
                       r"times the 2 parameters of Affine"):  # fmt: skip
        layer(torch.randn(3, 4))
