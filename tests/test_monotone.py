"""The monotone transformers' own properties: increasing, the identity at zero parameters,
exact tails, accurate inverses far out, one clear error per bad argument, and a short
training that lowers the NLL."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge import transforms as T

MAKERS = {
    "umnn": lambda: T.UnconstrainedMonotonic(embedding=4, hidden=(16,), nodes=17),
    "sos": lambda: T.SumOfSquares(polynomials=3, degree=4),
    "bernstein": lambda: T.Bernstein(degree=12),
}


def _perturbed(name, seed=0):
    torch.manual_seed(seed)
    t = MAKERS[name]().double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return t


@pytest.mark.parametrize("name", list(MAKERS))
def test_strictly_increasing_with_a_matching_log_det(name):
    t = _perturbed(name)
    x = torch.linspace(-40, 40, 40001, dtype=torch.float64)
    p = 1.5 * torch.randn(1, t.params_per_dim, dtype=torch.float64).expand(len(x), -1)
    y, ladj = t(x, p)
    assert (y.diff() > 0).all(), "not increasing"
    # the log-det is the derivative of the map computed: a finite difference agrees
    mid = (x[1:] + x[:-1]) / 2
    slope = y.diff() / x.diff()
    _, l_mid = t(mid, p[:-1])
    assert torch.allclose(slope.log(), l_mid, atol=1e-3)


@pytest.mark.parametrize("name", list(MAKERS))
def test_zero_parameters_are_the_identity_and_tails_are_linear(name):
    t = _perturbed(name)
    x = torch.tensor([-1e6, -30.0, -1.0, 0.0, 0.7, 4.9, 30.0, 1e6], dtype=torch.float64)
    y, ladj = t(x, torch.zeros(len(x), t.params_per_dim, dtype=torch.float64))
    assert torch.allclose(y, x, rtol=1e-12, atol=1e-12) and ladj.abs().max() < 1e-12
    p = torch.randn(1, t.params_per_dim, dtype=torch.float64).expand(3, -1)
    far = torch.tensor([20.0, 200.0, 2000.0], dtype=torch.float64)
    y, ladj = t(far, p)
    assert torch.allclose(ladj, ladj[:1].expand(3))  # a constant slope beyond the bound
    assert torch.allclose(y.diff() / far.diff(), ladj[1:].exp())


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("name", list(MAKERS))
def test_inverse_accurate_inside_and_far_in_the_tails(name, dtype, tol):
    t = _perturbed(name).to(dtype)
    torch.manual_seed(1)
    x = torch.cat([3 * torch.randn(200), torch.tensor([-1e8, -1e3, -5.0, 5.0, 1e3, 1e8])])
    x = x.to(dtype)
    p = torch.randn(len(x), t.params_per_dim, dtype=dtype)
    y, ladj = t(x, p)
    x2, ladj2 = t.inverse(y, p)
    assert ((x2 - x).abs() / (1 + x.abs())).max() < tol
    assert torch.allclose(ladj2, -ladj, atol=10 * tol)


def test_umnn_log_det_is_the_derivative_of_the_map_computed():
    """The UMNN map is the trapezoid rule's integral on fixed nodes, so autograd's derivative
    of it is exp(ladj) to rounding, however few nodes and however sharp the integrand (a
    Gauss-Legendre quadrature on [0, x] with 16 nodes was 5% off here)."""
    for nodes in (3, 9, 33):
        torch.manual_seed(0)
        t = T.UnconstrainedMonotonic(nodes=nodes).double()
        with torch.no_grad():
            for q in t.parameters():
                q.add_(0.5 * torch.randn_like(q))
        x = torch.linspace(-5, 5, 301, dtype=torch.float64).requires_grad_()
        p = 2 * torch.randn(301, t.params_per_dim, dtype=torch.float64)
        y, ladj = t(x, p)
        (d,) = torch.autograd.grad(y.sum(), x)
        assert (d.log() - ladj).abs().max() < 1e-12, nodes


def test_umnn_holds_its_integrand_through_layers_save_and_moves():
    layer = T.Autoregressive(2, T.UnconstrainedMonotonic(embedding=2, hidden=(4,), nodes=5))
    names = [n for n, _ in layer.named_parameters()]
    assert any(n.startswith("transformer.integrand") for n in names)
    assert any(k.startswith("transformer.integrand") for k in layer.state_dict())
    layer = layer.double()
    assert layer.transformer.grid.dtype == torch.float64
    z, _ = layer(torch.randn(3, 2, dtype=torch.float64))
    assert z.dtype == torch.float64


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: T.UnconstrainedMonotonic(embedding=0), "embedding to be an integer >= 1"),
        (lambda: T.UnconstrainedMonotonic(nodes=1), "nodes to be an integer >= 2"),
        (lambda: T.UnconstrainedMonotonic(hidden=(8, 0)), "every hidden width"),
        (lambda: T.UnconstrainedMonotonic(floor=1.0), "floor to be a finite number > 0 and < 1"),
        (lambda: T.SumOfSquares(polynomials=True), "polynomials to be an integer >= 1"),
        (lambda: T.SumOfSquares(degree=-1), "degree to be an integer >= 0"),
        (lambda: T.Bernstein(degree=0), "degree to be an integer >= 1"),
        (lambda: T.Bernstein(bound=float("inf")), "bound to be a finite number > 0"),
        (lambda: ff.models.BPF(features=1, autoregressive=False), "coupling BPF needs"),
        (
            lambda: ff.models.SOSPF(features=2, autoregressive=False, adjacency=[[0, 0], [1, 0]]),
            "adjacency= needs SOSPF",
        ),
    ],
)
def test_bad_arguments_give_one_clear_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("model", ["NAF", "UNAF", "SOSPF", "BPF"])
def test_a_short_training_lowers_the_nll(model):
    torch.manual_seed(0)
    from flowforge.workbench.data import load_dataset

    x = load_dataset("moons").train[:512]
    kw = {"nodes": 9} if model == "UNAF" else {}
    flow = ff.models.build(model, features=2, layers=2, hidden=(32, 32), **kw)
    flow.train()
    before = -flow.log_prob(x).mean().item()
    opt = torch.optim.Adam(flow.parameters(), 3e-3)
    for _ in range(60):
        loss = -flow.log_prob(x[torch.randint(0, len(x), (128,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    after = -flow.log_prob(x).mean().item()
    assert after < before - 0.3, (before, after)


def _by_hand(features=1, spread=1.0, layers=2):
    """A flow of ``LogisticMixture`` autoregressive layers built by hand, as its docstring
    shows (with the class's default ``spread`` unless given)."""
    mix = T.LogisticMixture(4) if spread == 1.0 else T.LogisticMixture(4, spread=spread)
    layers = [T.Autoregressive(features, mix, hidden=(8,)) for _ in range(layers)]
    return ff.Flow(layers, ff.distributions.StandardNormal((features,)))


@pytest.mark.parametrize(
    "name, kw",
    [("naf", {}), ("tarflow", {"transformer": "mixture"}), ("by hand", {})],
)
def test_the_mixture_components_come_apart_and_fit_two_modes(name, kw):
    # (an audit) with the conditioner's output layer at zero, the K logistic components
    # started equal, got equal gradients and stayed equal: NAF and TarFlow's mixture were
    # affine, a 1-D NAF scored the Gaussian's NLL to 1e-3. Fixed mean offsets part them
    def bimodal(n, g):
        c = torch.where(torch.rand(n, 1, generator=g) < 0.5, -2.0, 2.0)
        return c + 0.5 * torch.randn(n, 1, generator=g)

    g = torch.Generator().manual_seed(1)
    x, test = bimodal(2000, g), bimodal(2000, g)
    gaussian = -torch.distributions.Normal(x.mean(), x.std()).log_prob(test).mean().item()
    scores = {}
    for spread in (0.0, 1.0):
        torch.manual_seed(0)
        if name == "by hand":  # (an audit: the layer's own default was 0, an affine layer)
            flow = _by_hand(spread=spread)
        else:
            extra = {"blocks": 2, "width": 16} if name == "tarflow" else {"layers": 2}
            flow = ff.models.build(name, features=1, spread=spread, **kw, **extra)
        flow.train()
        flow.log_prob(x[:500])
        opt = torch.optim.Adam(flow.parameters(), 3e-3)
        for _ in range(500 if name == "by hand" else 150):  # (no standardisation by hand)
            loss = -flow.log_prob(x[torch.randint(0, 2000, (256,))]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        flow.eval()
        with torch.no_grad():
            scores[spread] = -flow.log_prob(test).mean().item()
    assert abs(scores[0.0] - gaussian) < 0.02  # (equal components: an affine flow)
    assert scores[1.0] < gaussian - 0.4, (scores, gaussian)  # (the truth is 0.73 below it)


def test_models_saved_before_spread_load_with_equal_components():
    from flowforge.models import registry

    assert registry.saved_kwargs("naf", {"features": 2})["spread"] == 0.0
    assert registry.saved_kwargs("tarflow", {"features": 2})["spread"] == 0.0
    assert ff.models.spec("naf").defaults()["spread"] == 1.0
    old = ff.models.TarFlow(features=2, blocks=1, width=8, spread=0.0)  # (an affine TarFlow
    assert old.config["kwargs"]["spread"] == 0.0  # saved before: builds as it was)
    with pytest.raises(ValueError, match="spread applies to transformer='mixture'"):
        ff.models.TarFlow(features=2, blocks=1, width=8, spread=2.0)


def test_a_tarflow_that_reads_no_spread_keeps_the_hash_it_had_before_spread():
    # (a review) every TarFlow records spread, which only the mixture reads: an affine or
    # spline TarFlow built now lost the model hash earlier versions wrote for it, and a .ffz
    # made before failed with "made with another model"
    from flowforge import codec
    from flowforge.models import registry

    for kind, same in (("affine", True), ("spline", True), ("mixture", False)):
        torch.manual_seed(0)
        flow = ff.models.TarFlow(features=3, blocks=1, width=8, levels=4, transformer=kind)
        before = {**flow.config, "kwargs": dict(flow.config["kwargs"])}
        del before["kwargs"]["spread"]  # (what the version before spread recorded)
        earlier = registry.earlier_configs(flow.config)
        assert (before in earlier) == same, kind
        assert (codec._hash(before, flow) in codec._earlier_hashes(flow)) == same, kind


def test_the_sum_of_squares_polynomials_come_apart_with_spread(monkeypatch):
    # (an audit) a zero-initialised conditioner starts the K polynomials equal, and they get
    # equal gradients and stay equal: one square whatever `polynomials` says; spread parts them
    from flowforge.models import registry

    torch.manual_seed(0)
    x = torch.randn(512, 2) * torch.tensor([1.0, 0.3])
    x[:, 1] += x[:, 0].square()  # (a curved, non-Gaussian pair)
    real, seen = T.SumOfSquares._prepare, []

    def prepare(self, params):  # (the conditioner's coefficients, before the fixed scales,
        k, n = self.polynomials, self.degree + 1  # each against the first's: scaled copies
        raw = params[..., : k * n].unflatten(-1, (k, n))  # of one are one square still)
        seen.append((raw - raw[..., :1, :]).abs().max().item())
        return real(self, params)

    spreads = {}
    for spread in (0.0, 1.0):
        torch.manual_seed(0)
        flow = ff.models.SOSPF(features=2, layers=2, hidden=(16, 16), spread=spread)
        flow.train()
        flow.log_prob(x)
        opt = torch.optim.Adam(flow.parameters(), 1e-2)
        for _ in range(30):
            loss = -flow.log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        seen.clear()
        with monkeypatch.context() as m, torch.no_grad():
            m.setattr(T.SumOfSquares, "_prepare", prepare)
            flow.log_prob(x)
        spreads[spread] = max(seen)
    assert spreads[0.0] == 0.0 and spreads[1.0] > 1e-3, spreads
    assert registry.saved_kwargs("sospf", {"features": 2})["spread"] == 0.0
    assert ff.models.spec("sospf").defaults()["spread"] == 0.0  # (not the default: unmeasured)
    sos = T.SumOfSquares(spread=1.0)  # (zero parameters: the identity, with scales too)
    y, ladj = sos(torch.tensor([-6.0, 0.3, 2.0]), torch.zeros(3, sos.params_per_dim))
    assert torch.allclose(y, torch.tensor([-6.0, 0.3, 2.0])) and ladj.abs().max() < 1e-6


def test_a_model_saved_again_keeps_the_hash_its_first_file_had(tmp_path):
    # (an upgrade audit) an old NAF loaded and saved again records spread 0.0: the .ffz files
    # written with it before must still decode, so the hash without spread is an earlier one
    from flowforge import codec

    torch.manual_seed(0)
    flow = ff.models.NAF(features=2, layers=1, hidden=(8,), mixtures=3, levels=5, spread=0.0)
    before = {**flow.config, "kwargs": dict(flow.config["kwargs"])}
    del before["kwargs"]["spread"]  # (what the version before spread recorded)
    ff.save(flow, tmp_path / "again.ff")
    again = ff.load(tmp_path / "again.ff")
    assert again.saved_config["kwargs"]["spread"] == 0.0
    assert codec._hash(before, again) in codec._earlier_hashes(again)


def test_an_old_file_of_a_model_built_with_todays_spread_names_the_argument():
    # (an upgrade audit) a NAF rebuilt by the same script now has spread 1: its old .ffz
    # files said "made with another model", with no word of the argument to give
    from flowforge import codec

    torch.manual_seed(0)
    flow = ff.models.NAF(features=2, layers=1, hidden=(8,), mixtures=3, levels=5)
    before = {**flow.config, "kwargs": dict(flow.config["kwargs"])}
    del before["kwargs"]["spread"]  # (the model as an earlier version built and hashed it)
    with pytest.raises(codec.CodecError, match=r"build it with spread=0\.0 to decode it"):
        codec.check_model(codec._hash(before, flow), flow)
