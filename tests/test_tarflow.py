"""The causal-transformer conditioner, the parallel (Jacobi) inverse of autoregressive layers,
the logistic-mixture transformer and the TarFlow builder: what the generic test does not see
(causality, the key-value cache, the fall-back, bad input, the command line)."""

from __future__ import annotations

import warnings

import pytest
import torch

import flowforge as ff
from flowforge import transforms as T
from flowforge.attention import CausalTransformer, token_layout
from flowforge.workbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed(m, scale=0.3, seed=0):
    torch.manual_seed(seed)
    m = m.double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m.eval()


def tar_layer(shape, patch=1, context=0, order="natural", transformer=None, **kw):
    t = T.Affine() if transformer is None else transformer
    net = CausalTransformer(shape, t.params_per_dim, 16, 2, 2, patch, context, order=order)
    return perturbed(T.Autoregressive(shape, t, context_features=context, net=net, **kw))


# -- the conditioner ------------------------------------------------------------------------------


def test_token_layout_patches_raster_order_channels_inside():
    idx = token_layout((2, 2, 4), 2)  # two 2x2 patches of 2 channels
    assert idx.shape == (2, 8)
    assert idx[0].tolist() == [0, 1, 4, 5, 8, 9, 12, 13]  # channel 0 rows 0-1, then channel 1
    assert sorted(idx.flatten().tolist()) == list(range(16))
    assert token_layout((6,), 3).tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(
    "shape, patch, order",
    [
        ((6,), 1, "natural"),
        ((6,), 2, "reversed"),
        ((2, 4, 4), 2, "natural"),
        ((1, 3, 3), 1, "reversed"),
    ],
)
def test_each_token_depends_only_on_earlier_tokens(shape, patch, order):
    torch.manual_seed(0)
    net = perturbed(CausalTransformer(shape, 2, 16, 2, 2, patch, order=order))
    x = torch.randn(1, *shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: net(v).sum(-1), x)  # out entries x in
    jac = jac.reshape(x.numel(), x.numel())
    tok = torch.empty(x.numel(), dtype=torch.long)
    tok[net.token_index.flatten()] = torch.arange(net.tokens).repeat_interleave(net.token_size)
    later = tok[None, :] >= tok[:, None]  # input token at or after the output's token
    assert jac[later].abs().max() == 0
    assert jac[~later].abs().min() > 0 or net.tokens == 1  # and it does see the earlier ones


def test_the_cached_sequential_pass_matches_the_parallel_pass():
    torch.manual_seed(0)
    net = perturbed(CausalTransformer((2, 4, 4), 3, 16, 2, 4, 2, context_features=3))
    x, c = torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    full = net(x, c).reshape(5, -1, 3)
    flat = x.reshape(5, -1)
    seen = []

    def step(index, params):
        assert torch.allclose(params, full[:, index], atol=1e-12)
        seen.append(index)
        return flat[:, index]

    net.solve(step, 5, c)
    assert torch.cat(seen).tolist() == net.token_index.flatten().tolist()


def test_a_transformer_layer_starts_as_the_identity():
    flow = ff.models.TarFlow(
        shape=(1, 4, 4), blocks=2, width=16, heads=2, patch=2, standardize=False
    )
    x = torch.randn(3, 1, 4, 4)
    z, ladj = flow.transform(x)
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(3))


# -- the parallel inverse -------------------------------------------------------------------------


def models():
    yield "maf", ff.models.MAF(features=6, layers=2, hidden=(16, 16))
    yield "nsf-ar", ff.models.NSF(features=6, layers=2, hidden=(16, 16), autoregressive=True)
    yield "tarflow", ff.models.TarFlow(features=6, blocks=2, width=16, heads=2)


@pytest.mark.parametrize("name", ["maf", "nsf-ar", "tarflow"])
def test_parallel_sampling_agrees_with_sequential_to_its_tolerance(name):
    flow = perturbed(dict(models())[name], 0.1)
    torch.manual_seed(1)
    z = torch.randn(64, 6, dtype=torch.float64)
    x_seq, l_seq = flow.transform.inverse(z)
    assert ff.transforms.set_inverse(flow, "parallel", tol=1e-9) == 2
    assert flow.transform.numeric_inverse == pytest.approx(2e-9)  # the chain declares it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fall-back
        x_par, l_par = flow.transform.inverse(z)
    assert (x_par - x_seq).abs().max() < 1e-7
    assert (l_par - l_seq).abs().max() < 1e-7
    layers = [m for m in flow.modules() if isinstance(m, T.Autoregressive)]
    assert all(1 <= m.last_sweeps <= m.steps + 1 for m in layers)
    ff.transforms.set_inverse(flow, "sequential")
    assert flow.transform.numeric_inverse is None and layers[0].last_sweeps == 0


def test_a_parallel_inverse_that_does_not_converge_falls_back_with_a_warning():
    layer = tar_layer((8,), inverse_mode="parallel", tol=1e-12, max_iter=2)
    z = torch.randn(4, 8, dtype=torch.float64)
    with pytest.warns(T.ParallelInverseWarning, match="did not converge in 2 sweeps"):
        x, ladj = layer.inverse(z)
    x_seq, l_seq = layer.set_inverse("sequential").inverse(z)
    assert torch.equal(x, x_seq) and torch.equal(ladj, l_seq)


def test_a_non_finite_parallel_inverse_falls_back():
    layer = tar_layer((4,), inverse_mode="parallel", tol=1e-9)
    z = torch.randn(2, 4, dtype=torch.float64)
    orig = layer.net.forward
    calls = []

    def flaky(x, context=None):  # a NaN in the first sweep never counts as converged
        calls.append(1)
        out = orig(x, context)
        return out * float("nan") if len(calls) == 1 else out

    layer.net.forward = flaky
    with pytest.warns(T.ParallelInverseWarning):
        layer.max_iter = 1
        x, _ = layer.inverse(z)
    assert torch.isfinite(x).all()


def test_auto_takes_a_few_sweeps_or_the_sequential_inverse_silently():
    layer = tar_layer((8,), inverse_mode="auto", tol=1e-12)  # 8 steps: at most 2 sweeps
    z = torch.randn(4, 8, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, ladj = layer.inverse(z)
    assert layer.last_sweeps == 0  # two sweeps do not reach 1e-12 here: sequential
    x_seq, l_seq = layer.set_inverse("sequential").inverse(z)
    assert torch.equal(x, x_seq) and torch.equal(ladj, l_seq)
    fresh = T.Autoregressive(8, T.Affine(), (8,), inverse_mode="auto")  # the identity
    fresh(z.float())
    assert torch.equal(fresh.inverse(z.float())[0], z.float()) and fresh.last_sweeps == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inverse_mode": "jacobi"}, "unknown inverse_mode"),
        ({"inverse_mode": "parallel", "tol": 0.0}, "tol > 0"),
        ({"inverse_mode": "parallel", "max_iter": 0}, "max_iter"),
    ],
)
def test_bad_inverse_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.Autoregressive(3, T.Affine(), (8,), **kwargs)
    with pytest.raises(ValueError, match=match):
        ff.transforms.set_inverse(ff.models.MAF(features=2, layers=1), **{
            "mode": kwargs.get("inverse_mode"), "tol": kwargs.get("tol", 1e-6),
            "max_iter": kwargs.get("max_iter")})  # fmt: skip


# -- bad input ------------------------------------------------------------------------------------


def test_a_token_layout_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="patches of 3x3 do not divide the image of height 8"):
        ff.models.TarFlow(shape=(1, 8, 8), patch=3)
    with pytest.raises(ValueError, match="patch=4 features do not divide the 6 features"):
        CausalTransformer(6, 2, patch=4)
    with pytest.raises(ValueError, match="not a multiple of heads"):
        CausalTransformer(6, 2, width=10, heads=4)


def test_a_context_of_the_wrong_size_is_refused():
    layer = tar_layer((4,), context=3)
    with pytest.raises(ValueError, match=r"expected context of shape \(batch, 3\), got \(2, 5\)"):
        layer(torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64))
    flow = ff.models.TarFlow(features=4, blocks=1, width=8, heads=2, context_features=3)
    with pytest.raises(ValueError, match="expected context of shape"):
        flow.log_prob(torch.randn(2, 4), torch.randn(2, 2))
    with pytest.raises(ValueError, match="conditional and expects a context"):
        flow.sample(2)


def test_a_net_that_does_not_fit_the_layer_is_refused():
    net = CausalTransformer((1, 4, 4), 2, 8, 1, 2)
    with pytest.raises(ValueError, match="MADE conditioner takes vectors"):
        T.Autoregressive((1, 4, 4), T.Affine())
    with pytest.raises(ValueError, match="outputs 2 parameters per entry"):
        T.Autoregressive((1, 4, 4), T.RationalQuadratic(4), net=net)
    with pytest.raises(ValueError, match="event shape"):
        T.Autoregressive((1, 2, 8), T.Affine(), net=net)
    with pytest.raises(ValueError, match="context of 0 features"):
        T.Autoregressive((1, 4, 4), T.Affine(), context_features=2, net=net)
    with pytest.raises(TypeError, match="conditioner protocol"):
        T.Autoregressive(3, T.Affine(), net=torch.nn.Linear(3, 6))


def test_bad_builder_and_mixture_arguments():
    with pytest.raises(ValueError, match="unknown transformer"):
        ff.models.TarFlow(features=4, transformer="cubic")
    with pytest.raises(ValueError, match="blocks"):
        ff.models.TarFlow(features=4, blocks=0)
    with pytest.raises(ValueError, match="components"):
        T.LogisticMixture(0)


def test_the_logistic_mixture_inverts_far_in_the_tails():
    lm = T.LogisticMixture(3).double()
    torch.manual_seed(0)
    params = torch.randn(7, lm.params_per_dim, dtype=torch.float64)
    x = torch.tensor([-40.0, -8.0, -1.0, 0.0, 0.5, 9.0, 35.0], dtype=torch.float64)
    y, ladj = lm(x, params)
    x2, ladj2 = lm.inverse(y, params)
    assert torch.isfinite(y).all() and torch.allclose(x2, x, rtol=1e-9, atol=1e-9)
    assert torch.allclose(ladj2, -ladj, atol=1e-9)


# -- the workbench --------------------------------------------------------------------------------


def test_flowforge_train_tarflow_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    kw = '{"blocks": 2, "width": 16, "heads": 2, "patch": 2, "transformer": "mixture"}'
    args = ["train", "--model", "tarflow", "--data", "digits", "--out", out, "--epochs", 1,
            "--limit", 64, "--model-kwargs", kw, "--no-progress", "--quiet"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    for inverse in ("sequential", "auto"):
        png = tmp_path / f"{inverse}.png"
        assert main(["sample", str(out), "-n", "4", "--out", str(png), "--inverse", inverse]) == 0
    assert (out / "model.ff").exists()
    capsys.readouterr()
    for bad in ("0", "nan", "inf", "1e300", "-1"):
        assert main(["sample", str(out), "--out", str(tmp_path / "t.png"), "--tol", bad]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--tol must be a number in (0, 1)" in err[0]
    args = ["sample", str(out), "--out", str(tmp_path / "t.png"), "--inverse", "sequential"]
    assert main([*args, "--tol", "1e-3"]) != 0  # the exact inverse has no tolerance to set
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the sequential inverse is exact" in err[0]


@pytest.mark.parametrize("parallel_seconds", [1, 5, 2.8])  # (2.8 against 3: a near tie)
def test_auto_times_both_inverses_once_per_batch_size_and_keeps_the_faster(
    monkeypatch, parallel_seconds
):
    import flowforge.transforms.autoregressive as AR

    fresh = T.Autoregressive(8, T.Affine(), (8,), inverse_mode="auto")  # converges in 1 sweep
    calls = {"parallel": 0, "sequential": 0}
    seconds = {"parallel": parallel_seconds, "sequential": 3}
    parallel_faster = parallel_seconds == 1  # clearly faster: near a tie, the exact inverse
    clock = [0.0]

    def fake_clock(_):
        return clock[0]

    for name in calls:
        real = getattr(fresh, f"_{name}_inverse")

        def timed(z, c, real=real, name=name):
            calls[name] += 1
            clock[0] += seconds[name]
            return real(z, c)

        monkeypatch.setattr(fresh, f"_{name}_inverse", timed)
    monkeypatch.setattr(AR, "_clock", fake_clock)
    z = torch.randn(5, 8)
    x, _ = fresh.inverse(z)  # the first call of this batch size runs both
    assert calls == {"parallel": 1, "sequential": 1}
    assert fresh.last_sweeps == (1 if parallel_faster else 0)
    x2, _ = fresh.inverse(torch.randn(7, 8))  # same power-of-two bucket: only the pick runs
    assert calls == (
        {"parallel": 2, "sequential": 1} if parallel_faster else {"parallel": 1, "sequential": 2}
    )
    fresh.inverse(torch.randn(64, 8))  # another bucket: timed again
    assert sum(calls.values()) == 5
    assert torch.allclose(x, z, atol=1e-6)  # the identity layer, either way
    fresh.set_inverse("auto")  # a new choice forgets the picks
    assert fresh._auto_picks == {}


def test_sizes_of_the_transformer_are_checked():
    for ratio in (0, -1):
        with pytest.raises(ValueError, match="expected mlp_ratio to be an integer >= 1"):
            ff.models.build("tarflow", features=4, blocks=1, width=8, heads=2, mlp_ratio=ratio)
    with pytest.raises(ValueError, match="argument bound=inf is not finite"):
        ff.models.build("tarflow", features=4, blocks=1, width=8, heads=2, transformer="spline",
                        bound=float("inf"))  # fmt: skip
    with pytest.raises(ValueError, match="expected a finite bound > 0, got -1"):
        ff.models.build("tarflow", features=4, blocks=1, width=8, heads=2, transformer="spline",
                        bound=-1.0)  # fmt: skip
