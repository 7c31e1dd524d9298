"""MADE masks, the incremental inverse, orders, and the MAF/IAF/NSF builders."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge.nets import MADE
from flowforge.transforms import Affine, Autoregressive, RationalQuadratic

VARIANTS = [
    dict(hidden=(7,)),
    dict(hidden=(16, 9, 12)),
    dict(hidden=(10, 10, 10), residual=True),
]


def perturbed(module, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("order", ["natural", "reversed", "random", [2, 0, 4, 1, 3]])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_made_is_autoregressive_in_its_order(kw, order, d):
    if isinstance(order, list) and d != 5:
        pytest.skip("explicit order is for d=5")
    torch.manual_seed(1)
    made = MADE(d, 3, context_features=2, order=order, activation="tanh", **kw)
    made = perturbed(made.double())
    x, c = torch.randn(1, d, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v, c), x)  # (1, d, 3, 1, d)
    dep = jac[0, :, :, 0, :].abs().sum(1) > 0  # dep[i, j]: output i reads input j
    rank = made.degrees
    allowed = rank[None, :] < rank[:, None]
    assert not (dep & ~allowed).any(), "an output reads an input at or after it in the order"
    if d > 1:  # the last dimension in the order reads every earlier one (the net is not empty)
        last = int(torch.argmax(rank))
        assert dep[last][allowed[last]].all()
    # the context reaches every output, the first in the order included
    jc = torch.autograd.functional.jacobian(lambda v: made(x, v), c)[0, :, :, 0, :]
    assert (jc.abs().sum((1, 2)) > 0).all()


def test_made_layout_and_zero_init():
    made = MADE(4, 5, hidden=(8, 8))
    out = made(torch.randn(3, 4))
    assert out.shape == (3, 4, 5) and torch.equal(out, torch.zeros_like(out))
    with pytest.raises(ValueError, match="equal hidden widths"):
        MADE(4, 2, hidden=(8, 9), residual=True)
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, 1, order=[0, 0, 1])
    with pytest.raises(ValueError, match="unknown order"):
        MADE(3, 1, order="sideways")


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize(
    "transformer", [lambda: Affine(), lambda: RationalQuadratic(4, 2.0)], ids=["affine", "rq"]
)
def test_incremental_inverse_equals_naive_fixed_point(kw, transformer):
    """MADE.solve gives the same x as D full passes of the naive fixed-point inverse."""
    torch.manual_seed(0)
    d = 6
    layer = perturbed(
        Autoregressive(d, transformer(), context_features=3, order="random", **kw).double()
    )
    z, c = torch.randn(20, d, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    x, _ = layer.inverse(z, c)
    naive = torch.zeros_like(z)
    for _ in range(d):
        naive, _ = layer.transformer.inverse(z, layer.net(naive, c))
    assert torch.allclose(x, naive, atol=1e-12, rtol=0)


def test_zero_init_layers_are_identities():
    x = torch.randn(7, 5)
    for layer in (
        Autoregressive(5, Affine()),
        Autoregressive(5, RationalQuadratic()),
        ff.Inverse(Autoregressive(5, Affine(), residual=True, hidden=(16, 16))),
    ):
        z, ladj = layer(x)
        assert torch.allclose(z, x, atol=1e-6) and ladj.abs().max() < 1e-5


def test_iaf_samples_in_one_pass_and_maf_scores_in_one_pass():
    calls = {"n": 0}

    def count(module, args):
        calls["n"] += 1

    iaf = ff.models.IAF(features=8, layers=3, hidden=(16, 16))
    maf = ff.models.MAF(features=8, layers=3, hidden=(16, 16))
    for flow in (iaf, maf):
        for m in flow.modules():
            if isinstance(m, MADE):
                m.register_forward_pre_hook(count)
    iaf.rsample_and_log_prob(4)
    assert calls["n"] == 3  # one MADE pass per layer
    calls["n"] = 0
    maf.log_prob(torch.randn(4, 8))
    assert calls["n"] == 3


def test_random_order_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    flow = perturbed(ff.models.MAF(features=5, layers=2, hidden=(8,), order="random"))
    path = tmp_path / "maf.ff"
    ff.save(flow, path)
    torch.manual_seed(123)  # the rebuilt model draws different orders before loading
    flow2 = ff.load(path)
    flow.eval()  # as ff.load returns it: the data-initialised layers keep their saved state
    x = torch.randn(6, 5)
    assert torch.equal(flow.log_prob(x), flow2.log_prob(x))
    z = torch.randn(6, 5)
    assert torch.equal(flow.transform.inverse(z)[0], flow2.transform.inverse(z)[0])


@pytest.mark.parametrize("name", ["maf", "iaf", "nsf"])
def test_builders_work_with_features_only(name):
    flow = ff.models.build(name, features=3)
    assert flow.config["model"].lower() == name
    assert flow.log_prob(torch.randn(2, 3)).shape == (2,)
    assert flow.sample(2).shape == (2, 3)


def test_nsf_coupling_needs_two_features():
    with pytest.raises(ValueError, match="autoregressive=True"):
        ff.models.NSF(features=1)
    assert ff.models.NSF(features=1, autoregressive=True).sample(2).shape == (2, 1)


@pytest.mark.parametrize("d", [2, 5, 6])
@pytest.mark.parametrize("permutation", ["reverse", "random", None])
def test_nsf_coupling_transforms_every_dimension(d, permutation):
    """Across two layers, each output depends on each input (no dimension is left alone)."""
    torch.manual_seed(0)
    flow = perturbed(
        ff.models.NSF(features=d, layers=2, hidden=(8,), permutation=permutation).double()
    )
    x = 0.5 * torch.randn(1, d, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: flow.transform(v)[0], x)[0, :, 0, :]
    assert (jac.abs().sum(0) > 0).all()
    touched = (jac - torch.eye(d, dtype=torch.float64)).abs().sum(0) > 1e-9
    assert touched.all(), f"some dimension passes through every layer unchanged: {touched}"


def test_maf_fits_a_correlated_gaussian():
    """A short fit: MAF learns a 2-D correlated Gaussian close to its entropy."""
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    data = torch.randn(2048, 2) @ torch.linalg.cholesky(cov).T
    flow = ff.models.MAF(features=2, layers=2, hidden=(32, 32))
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for _ in range(150):
        idx = torch.randint(0, len(data), (256,))
        loss = -flow.log_prob(data[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    nll = -flow.log_prob(data).mean().item()
    entropy = 0.5 * torch.logdet(2 * torch.pi * torch.e * cov).item()
    assert nll < entropy + 0.1, (nll, entropy)


def test_invalid_orders_are_refused():
    with pytest.raises(ValueError, match="unknown order 'sideways'"):
        ff.models.MAF(features=3, order="sideways")
    with pytest.raises(ValueError, match=r"permutation of range\(3\) .*got \[0, 0, 2\]"):
        ff.models.MAF(features=3, order=[0, 0, 2])


def test_spline_models_refuse_bad_bins_and_bounds():
    with pytest.raises(ValueError, match="expected bins >= 2"):
        ff.models.NSF(features=3, bins=1)
    with pytest.raises(ValueError, match="expected a finite bound > 0"):
        ff.models.NSF(features=3, bound=0.0)


def test_couplings_need_two_features():
    for model in (ff.models.RealNVP, ff.models.NICE):  # (pointed to the models that take 1-d)
        with pytest.raises(
            ValueError,
            match=r"needs features >= 2; for 1-d data use NSF\(\.\.\., autoregressive=True\)",
        ):
            model(features=1)
    with pytest.raises(ValueError, match="a coupling layer needs at least 2 features"):
        ff.transforms.Coupling(
            ff.transforms.half_mask(1), lambda a, b: None, ff.transforms.Affine()
        )
    with pytest.raises(ValueError, match="autoregressive=True"):
        ff.models.NSF(features=1)


def test_residual_coupling_conditioners():
    # residual=True gives the coupling models residual MLPs; refused where it cannot apply
    flow = ff.models.RealNVP(features=4, layers=2, hidden=(8, 8, 8), residual=True)
    nets = [m.net for m in flow.modules() if isinstance(m, ff.transforms.Coupling)]
    assert nets and all(type(n).__name__ == "ResidualMLP" and len(n.blocks) == 2 for n in nets)
    with pytest.raises(ValueError, match="equal hidden widths"):
        ff.models.RealNVP(features=4, hidden=(8, 9), residual=True)
    with pytest.raises(ValueError, match="equal hidden widths"):
        ff.models.NSF(features=4, hidden=(8, 9), residual=True, autoregressive=False)
    with pytest.raises(ValueError, match="vector RealNVP"):
        ff.models.RealNVP(shape=(1, 4, 4), residual=True)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"residual": True},
        {"context_features": 3},
        {"adjacency": torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]])},
    ],
)
def test_the_incremental_inverse_writes_buffers_without_gradients_and_agrees_with_them(kw):
    # an audit: each of the D steps concatenated all the units so far (D^2 copies per row;
    # half of a D = 64 MAF's sampling time): without gradients it now writes into buffers
    torch.manual_seed(0)
    d = 4 if "adjacency" in kw else 6
    made = MADE(d, 2, hidden=(24, 24), **kw)
    context = torch.randn(5, 3) if "context_features" in kw else None

    def run():
        out = torch.zeros(5, d)

        def step(i, params):  # any function of the parameters: here one of the two
            value = torch.tanh(params[..., 0]) * 2
            out[:, i] = value.detach()
            return value

        made.solve(step, 5, context)
        return out

    with torch.no_grad():
        filled = run()
    grown = run()  # (with gradients: the columns concatenated, as before)
    assert torch.equal(filled, grown)


def test_sampling_an_autoregressive_flow_copies_nothing_per_dimension():
    from torch.profiler import profile

    counts = []
    for d in (8, 32):
        flow = ff.models.build("maf", features=d, layers=2).eval()
        with torch.no_grad(), profile() as prof:
            flow.sample(16)
        counts.append(sum(e.count for e in prof.key_averages() if e.key == "aten::cat"))
    assert counts[0] == counts[1] <= 4, counts


def test_a_narrow_ordered_made_warns_once_of_the_dependencies_it_loses(tmp_path, monkeypatch):
    # (a trainability audit) hidden widths below D - 1 cut dependencies without a word (a MAF
    # with hidden=(8, 8) on 20 features: 11.0 nats against the truth's 5.35); the structured
    # MADE refused the same; said once a process and size, not when a saved model loads
    import warnings

    from flowforge import nets

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # (Python's own: once for each place and message)
        flow = ff.models.MAF(features=20, hidden=(8, 8), layers=3)
        ff.save(flow, tmp_path / "m.ff")
        ff.load(tmp_path / "m.ff")
        nets.MADE(20, 2, hidden=(8, 8), context_features=3)  # (with a context: D degrees)
        nets.MADE(20, 2, hidden=(19, 19))  # (wide enough)
        nets.MADE(1, 2, hidden=(1,))
    said = [str(w.message) for w in caught if issubclass(w.category, nets.MADEWidthWarning)]
    assert len(said) == 2, said
    assert said[0].startswith("a MADE of 20 features with a hidden layer of 8 units: its order")
    assert "19 hidden degrees (D - 1), so each output reads only the first 8 inputs" in said[0]
    assert "20 hidden degrees (D with a context), so each output reads only the first 7" in said[1]
    with warnings.catch_warnings(record=True) as caught:  # (the load's silence kept no mark)
        warnings.simplefilter("default")
        ff.models.MAF(features=20, hidden=(8, 8), layers=3)
    assert [w for w in caught if issubclass(w.category, nets.MADEWidthWarning)]
