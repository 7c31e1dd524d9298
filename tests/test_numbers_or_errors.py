"""The library's numbers are right or they are errors: the cases where it used to give a wrong
number silently (a loaded model scoring with batch statistics, an inverse off its bracket, a
float64 input rounded away, an overflow to -inf, non-finite samples)."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff


def test_a_loaded_flow_scores_as_the_saved_one(tmp_path):
    torch.manual_seed(0)
    flow = ff.models.MAF(features=2, layers=2, hidden=(8,), batch_norm=True)
    opt = torch.optim.Adam(flow.parameters(), 1e-2)
    for _ in range(20):  # moves the running statistics away from their start
        opt.zero_grad()
        (-flow.log_prob(torch.randn(64, 2) * 3 + 5).mean()).backward()
        opt.step()
    flow.eval()
    x = torch.randn(4, 2) * 3 + 5
    want = flow.log_prob(x)
    ff.save(flow, tmp_path / "m.ff")
    loaded = ff.load(tmp_path / "m.ff")
    assert not loaded.training  # eval mode: running statistics, not the batch's
    torch.testing.assert_close(loaded.log_prob(x[:2]), want[:2])
    torch.testing.assert_close(loaded.log_prob(x), want)  # the first call changed nothing


def test_the_mixture_inverse_stays_in_its_bracket_where_the_cdf_is_flat():
    lm = ff.transforms.LogisticMixture(components=4)
    params = torch.tensor([[11.5497, 17.2120, -15.8202, 15.2810, 16.0555, -0.2190, 2.1553,
                            16.3696, -7.5420, -7.3353, 18.5766, -1.1254, 16.5905, -2.1086]],
                          dtype=torch.float64)  # fmt: skip
    x = torch.tensor([0.3084348142147064], dtype=torch.float64)
    y, _ = lm(x, params)
    back, _ = lm.inverse(y, params)
    torch.testing.assert_close(lm(back, params)[0], y)  # was -682 for y = 36.2
    # the implicit gradient of the root is still carried
    p = params.clone().requires_grad_()
    yy = y.clone().requires_grad_()
    r, _ = lm.inverse(yy, p)
    (g,) = torch.autograd.grad(r.sum(), yy)
    _, ladj = lm(r.detach(), params)
    torch.testing.assert_close(g, torch.exp(-ladj))  # dx/dy = 1 / (dy/dx)


def test_float64_inputs_that_float32_cannot_hold_are_refused_or_warned_about():
    import warnings

    flow = ff.models.MAF(features=2, layers=1, hidden=(4,))
    with pytest.raises(ValueError, match=r"beyond the range of the flow's torch.float32"):
        flow.log_prob(torch.tensor([[1e39, 0.0]], dtype=torch.float64))  # not "NaN or inf"
    offset = 1e8 + torch.randn(64, 2, dtype=torch.float64)  # all 64 rows become one in float32
    with pytest.warns(RuntimeWarning, match=r"loses its precision .*\(flow.double\(\)\)") as rec:
        flow.log_prob(offset)
    assert [w.filename for w in rec] == [__file__]  # attributed to the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow.log_prob(offset)  # once per flow
    # a first call of one row looks at nothing (no spread): the check waits for a batch, and
    # the context has a check of its own (a timestamp context float32 rounds away)
    fresh = ff.models.MAF(features=2, layers=1, hidden=(4,), context_features=1)
    fresh.log_prob(offset[:1], torch.zeros(1, 1, dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="x loses its precision"):
        fresh.log_prob(offset, torch.zeros(64, 1))
    stamps = 1.7e9 + torch.rand(64, 1, dtype=torch.float64) * 100
    with pytest.warns(RuntimeWarning, match="context loses its precision"):
        fresh.log_prob(torch.zeros(64, 2, dtype=torch.float64), stamps)
        fresh = ff.models.MAF(features=2, layers=1, hidden=(4,))
        fresh.log_prob(torch.randn(64, 2, dtype=torch.float64))  # ordinary float64 data
        near = torch.tensor([[0.5, 0.3], [-0.3, 0.1 + 0.2]], dtype=torch.float64)
        scorer = ff.models.MAF(features=2, layers=1, hidden=(4,)).eval()
        scorer.log_prob(near)  # float64 noise only: a constant entry, nothing to warn about
        scorer.log_prob(torch.randint(0, 256, (4, 2)))  # integers: exact in float32
    assert flow.double().log_prob(offset).isfinite().all()  # the remedy


def test_minus_infinity_is_a_zero_density_not_an_error():
    class Box(ff.core.Distribution):  # a base with bounded support: -inf outside it
        def __init__(self):
            super().__init__((2,))

        def log_prob(self, z, context=None):
            inside = (z.abs() <= 1).all(1)
            return torch.where(inside, -torch.full_like(z[:, 0], 4.0).log(), -torch.inf)

    flow = ff.Flow(ff.core.Identity(2), Box()).eval()
    lp = flow.log_prob(torch.tensor([[0.0, 0.5], [3.0, 0.0]]))
    assert lp[0] == -torch.log(torch.tensor(4.0)) and lp[1] == -torch.inf


def test_samples_are_finite_or_an_error():
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(4,))
    with pytest.raises(ValueError, match="finite in the flow's torch.float32"):
        flow.sample(2, temperature=1e39)
    flow.base.sample = lambda n, context=None, temperature=1.0: torch.full((n, 2), float("inf"))
    with pytest.raises(ValueError, match=r"samples are NaN or infinite in rows \[0, 1\]"):
        flow.sample(2)


def test_autograd_layers_say_what_to_do_under_inference_mode():
    pytest.importorskip("torchdiffeq")
    flow = ff.models.CNF(features=2, hidden=(8,))
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"use torch.no_grad\(\)"):
        flow.log_prob(torch.randn(3, 2))
    with torch.no_grad():
        assert flow.log_prob(torch.randn(3, 2)).shape == (3,)


@pytest.mark.parametrize("name", ["maf", "iaf", "realnvp"])
def test_no_reparameterised_samples_is_an_empty_answer(name):
    flow = ff.models.build(name, features=3)
    x, log_q = flow.rsample_and_log_prob(0)
    assert x.shape == (0, 3) and log_q.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_flow_is_refused_with_the_remedy(dtype):
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(4,)).to(dtype)
    for call in (lambda: flow.log_prob(torch.randn(3, 2)), lambda: flow.sample(2),
                 lambda: flow.rsample_and_log_prob(2)):  # fmt: skip
        with pytest.raises(ValueError, match=r"float32 or float64.*flow.float\(\)"):
            call()
    assert flow.float().log_prob(torch.randn(3, 2)).shape == (3,)


def test_more_levels_than_the_dtype_resolves_are_refused():
    idf = ff.models.IDF(features=2, levels=2**25, partitions=2, layers=1, hidden=(4,))
    with pytest.raises(ValueError, match=r"33,554,432 levels are more than torch.float32"):
        idf.log_prob(torch.tensor([[2.0**24, 5.0]]))  # 2^24 + 1 would round to 2^24
    lp = idf.double().log_prob(torch.tensor([[2.0**24, 5.0], [2.0**24 + 1, 5.0]]))
    assert lp.shape == (2,)  # float64 holds both integers
    flow = ff.models.RealNVP(features=2, layers=1, hidden=(4,), levels=2**25)
    with pytest.raises(ValueError, match="levels are more than torch.float32"):
        flow.log_prob(torch.tensor([[3.0, 5.0]]))


def test_a_tiny_first_batch_for_the_standardisation_is_warned_about():
    import warnings

    flow = ff.models.NSF(features=2, layers=1, hidden=(4,))
    with pytest.warns(RuntimeWarning, match="first batch of only 4 examples") as rec:
        flow.log_prob(torch.randn(4, 2))  # train mode: this batch sets loc and scale for good
    assert [w.filename for w in rec] == [__file__]
    fresh = ff.models.NSF(features=2, layers=1, hidden=(4,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.log_prob(torch.randn(64, 2))


def test_vmap_over_log_prob_gives_per_example_values_and_gradients():
    from torch.func import functional_call, grad, vmap

    flow = ff.models.NSF(features=3, layers=2, hidden=(8,))
    x = torch.randn(5, 3)
    flow.log_prob(torch.randn(256, 3))  # the data-dependent initialisation, eagerly
    flow.eval()
    one = lambda r: flow.log_prob(r.unsqueeze(0)).squeeze(0)  # noqa: E731
    torch.testing.assert_close(vmap(one)(x), flow.log_prob(x))  # the input checks stand aside
    params = {k: v.detach() for k, v in flow.named_parameters()}
    per = vmap(grad(lambda p, r: functional_call(flow, p, (r.unsqueeze(0),)).sum()),
               in_dims=(None, 0))(params, x)  # fmt: skip
    name = next(iter(params))
    want = torch.autograd.grad(flow.log_prob(x[2:3]).sum(), dict(flow.named_parameters())[name])
    torch.testing.assert_close(per[name][2], want[0])


def test_a_context_broadcasts_against_the_batch_as_in_torch_distributions():
    flow = ff.models.MAF(features=2, layers=1, hidden=(4,), context_features=3)
    flow.eval()
    ctx = torch.randn(4, 3)
    x = flow.sample(5, ctx)  # (5, 4, 2): five samples per context row
    lp = flow.log_prob(x, ctx)  # the (4, 3) context broadcasts over the 5 draws
    assert lp.shape == (5, 4)
    torch.testing.assert_close(lp[2], flow.log_prob(x[2], ctx))
    one = flow.log_prob(x[:, 0], ctx[0])  # a single (c,) context for a batch
    torch.testing.assert_close(one, lp[:, 0])
    with pytest.raises(ValueError, match=r"expected context of shape \(5, 4, 3\)"):
        flow.log_prob(x, torch.randn(3, 3))  # not broadcastable


def test_save_unwraps_wrappers_and_refuses_what_load_could_not_rebuild(tmp_path):
    from torch.optim.swa_utils import AveragedModel

    flow = ff.models.MAF(features=3, layers=2, hidden=(8,))
    shuffled = ff.models.MAF(features=3, layers=2, hidden=(8,), order="random")
    state = torch.get_rng_state()
    ff.save(shuffled, tmp_path / "n.ff")  # its check rebuilds the flow: on a forked random state
    assert torch.equal(torch.get_rng_state(), state)  # a training run saving keeps its draws
    for name, wrapped in (("compiled", torch.compile(flow)), ("ema", AveragedModel(flow))):
        ff.save(wrapped, tmp_path / f"{name}.ff")  # the flow inside, under its own names
        assert ff.load(tmp_path / f"{name}.ff").config["model"] == "MAF"
    flow.base = ff.distributions.DiagGaussian(3)  # a part replaced after building
    with pytest.raises(ValueError, match=r"no longer matches the configuration .*base.loc"):
        ff.save(flow, tmp_path / "changed.ff")
    assert not (tmp_path / "changed.ff").exists()
    with pytest.raises(ValueError, match="needs a flow built by a flowforge.models builder"):
        ff.save(torch.nn.Linear(2, 2), tmp_path / "linear.ff")
    with pytest.raises(TypeError, match="takes a flowforge Flow, got dict"):
        ff.save({"weights": 1}, tmp_path / "dict.ff")


def test_the_command_prints_library_warnings_as_one_line(tmp_path, capsys):
    from cli_support import cli

    rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", "moons", "--out", tmp_path / "r",
                     "--epochs", 1, "--limit", 64, "--batch-size", 4, "--no-progress", "--quiet",
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}')  # fmt: skip
    assert rc == 0, err
    lines = [line for line in err.splitlines() if "takes its statistics" in line]
    assert lines and all(line.startswith("flowforge: warning: ") for line in lines)
    assert "--set train.init_batch=256" in lines[0]  # the command's words, not Python's
    assert "RuntimeWarning" not in err and ".py:" not in err


def test_metrics_never_return_nan_even_in_training_mode():
    """nll() and bits_per_dim() are metrics: a built flow is in training mode (where log_prob
    leaves NaN to the loss), and they gave NaN for inputs that overflow, and for no input."""
    flow = ff.models.Radial(features=3, layers=2, standardize=False)
    assert flow.training
    with pytest.raises(ValueError, match="the mean NLL is nan"):
        flow.nll(torch.full((1, 3), 1e25))
    with pytest.raises(ValueError, match="at least one example"):
        flow.nll(torch.zeros(0, 3))
    assert torch.isfinite(flow.nll(torch.randn(4, 3)))
    digits = ff.models.RealNVP(features=2, layers=1, hidden=[4], levels=17)
    with pytest.raises(ValueError, match="at least one example"):
        digits.bits_per_dim(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="n >= 1"):
        ff.reverse_kl(ff.models.Planar(features=2, layers=1), ff.targets.get("u1"), 0)
    with pytest.raises(ValueError, match="every importance weight is zero"):
        ff.objectives.effective_sample_size(torch.full((3,), -math.inf))
    with pytest.raises(ValueError, match="at least one importance weight"):
        ff.objectives.effective_sample_size(torch.zeros(0))


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: ff.models.build("nice", features=3, layers=0), "layers to be an integer in"),
        (lambda: ff.models.build("maf", features=3, layers=-3), "layers to be an integer in"),
        (lambda: ff.models.build("nsf", features=3, layers=0), "layers to be an integer in"),
        (lambda: ff.models.RealNVP(features=2, layers=1, levels=256, alpha=0.0), "alpha > 0"),
        (lambda: ff.models.NSF(features=2, layers=1, base={"name": "mixture", "spread": math.inf}),
         "finite spread|is not finite"),
        (lambda: ff.transforms.RationalQuadratic(bins=4, min_width=-0.5), "min_width, min_height"),
        (lambda: ff.models.NICE(features=3, context_features=2,
                                base={"name": "mixture", "hidden": [-1]}), "hidden widths >= 1"),
        (lambda: ff.transforms.RationalQuadratic(bins=2.5), "bins to be an integer"),
        (lambda: ff.transforms.ActNorm(3, eps=0.0), "eps > 0"),
        (lambda: ff.transforms.BatchNorm(3, momentum=5.0), "momentum <= 1"),
        (lambda: ff.transforms.Standardize(3, scale=math.inf), "scale finite and > 0"),
        (lambda: ff.transforms.Standardize(3, loc=math.nan), "finite loc"),
        (lambda: ff.transforms.Standardize(3, torch.zeros(4)), "event's shape"),
        (lambda: ff.transforms.Permutation(3, [0.9, 1.5, 2.2]), "permutation of integers"),
        (lambda: ff.transforms.Logit(3, levels=0), "levels > 0"),
        (lambda: ff.distributions.MADEMoG(3, components=2.5), "components to be an integer"),
        (lambda: ff.Compose(ff.transforms.Reverse(3), torch.nn.Linear(3, 3)),
         "expected flowforge Transforms, got Linear at position 1"),
    ],
)  # fmt: skip
def test_arguments_that_would_give_nan_or_a_folded_map_are_refused(make, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        make()


def test_a_list_context_is_a_type_error_everywhere():
    flow = ff.models.RealNVP(features=2, layers=1, hidden=[4], context_features=2).eval()
    for call in (
        lambda: flow.log_prob(torch.zeros(1, 2), [0.0, 1.0]),
        lambda: flow.sample(2, [0.0, 1.0]),
        lambda: flow.rsample_and_log_prob(2, [0.0, 1.0]),
    ):
        with pytest.raises(TypeError, match="context to be a torch.Tensor, got list"):
            call()


def test_integers_float32_cannot_hold_are_warned_of_as_floats_are():
    flow = ff.models.RealNVP(features=2, layers=1, hidden=[4], standardize=False).eval()
    x = torch.tensor([[100_000_001, 0], [100_000_002, 0], [100_000_003, 0], [100_000_004, 0]])
    with pytest.warns(RuntimeWarning, match="loses its precision in the flow's torch.float32"):
        flow.log_prob(x)
    pixels = torch.randint(0, 256, (8, 2))  # (int64, well inside 2^24: no word)
    fresh = ff.models.RealNVP(features=2, layers=1, hidden=[4], standardize=False).eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.log_prob(pixels)


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda D: D.StandardNormal(3).log_prob(torch.zeros(2, 4)), "shape \\(batch, 3\\)"),
        (lambda D: D.StandardNormal(3).log_prob(torch.zeros(2, 5, 3)), "shape \\(batch, 3\\)"),
        (lambda D: D.GaussianMixture(3).log_prob(torch.zeros(2)), "shape \\(batch, 3\\)"),
        (lambda D: D.DiagGaussian(3, context_features=2).log_prob(torch.zeros(2, 3)),
         "this base is conditional"),
        (lambda D: D.StandardNormal(3).sample(2, temperature=math.nan), "temperature >= 0"),
        (lambda D: D.StandardNormal(3).sample(-1), "n >= 0"),
        (lambda D: D.StandardNormal(3).sample(2.5), "n >= 0"),
    ],
)  # fmt: skip
def test_a_base_used_directly_checks_what_it_is_given(call, needle):
    with pytest.raises(ValueError, match=needle):
        call(ff.distributions)


def test_vector_arguments_for_images_and_a_folder_to_save_to(tmp_path):
    for kw in ({"mask": "half"}, {"permutation": "lu"}):
        with pytest.raises(ValueError, match="vector RealNVP given for images"):
            ff.models.RealNVP(shape=[1, 4, 4], **kw)
    with pytest.raises(IsADirectoryError, match="give a file name such as"):
        ff.save(ff.models.NICE(features=2, layers=1, hidden=[4]), tmp_path)


def test_nll_in_batches_with_a_context():
    flow = ff.models.RealNVP(features=2, layers=1, hidden=[4], context_features=3).eval()
    x, c = torch.randn(5, 2), torch.randn(5, 3)
    with pytest.raises(ValueError, match="context has 3 rows and x 5"):
        ff.nll(flow, x, c[:3], batch_size=2)
    one = torch.randn(3)  # one context for every row, in batches smaller than its width
    want = flow.log_prob(x, one.expand(5, 3)).mean()
    assert ff.nll(flow, x, one, batch_size=2) == pytest.approx(-want.item(), abs=1e-5)


def test_a_nan_density_from_the_models_own_weights_blames_the_model():
    flow = ff.models.RealNVP(features=2, layers=1, hidden=[4]).eval()
    with torch.no_grad():
        next(flow.parameters()).fill_(math.nan)
    with pytest.raises(ff.core.NaNLogProb, match="its own tensor .* holds NaN or inf"):
        flow.log_prob(torch.randn(3, 2))


def test_an_inverse_that_cannot_converge_is_a_value_error_too():
    """Planar's density inverts the layer by a safeguarded Newton; at 3e38 in float32 the
    equation overflows. The error is a ValueError (one line on the command line), naming it."""
    torch.manual_seed(0)  # (an initialisation whose solve overflows: most do)
    flow = ff.models.Planar(features=2, layers=2).eval()
    with pytest.raises(ValueError, match="did not converge .* overflows the layer's torch.float32"):
        flow.log_prob(torch.full((1, 2), 3e38))


def test_the_log_density_of_a_flows_own_samples_is_finite_or_an_error():
    # a diagonal base whose scale underflows float32 gave finite samples and a log_q of -inf/NaN
    f = ff.models.MAF(features=3, layers=2, context_features=2, base="diag").eval()
    with torch.no_grad():
        f.base.net.net[0].weight[3:] = -1.0  # log_scale = -(c1 + c2)
    with pytest.raises(ValueError, match="log-density of the model's own samples"):
        f.rsample_and_log_prob(3, torch.full((2, 2), 60.0))
    _, lq = f.double().rsample_and_log_prob(3, torch.full((2, 2), 50.0, dtype=torch.float64))
    assert torch.isfinite(lq).all()


def test_a_mixture_base_whose_weights_overflow_says_so():
    torch.manual_seed(0)
    f = ff.models.MAF(features=3, layers=2, context_features=2, base="made-mog").eval()
    with torch.no_grad():
        for p in f.base.parameters():
            p.add_(0.3 * torch.randn_like(p))
    with pytest.raises(ValueError, match="mixture base's component weights overflow"):
        f.sample(3, torch.full((1, 2), 10.0))


def test_discrete_data_is_checked_before_a_narrowing_cast():
    f = ff.models.RealNVP(features=4, layers=2, hidden=(16,), levels=17).eval()
    x = torch.full((1, 4), 16.0000001, dtype=torch.float64)  # rounds to 16 in float32
    with pytest.raises(ValueError, match=r"got values in \[16.0000001, 16.0000001\]"):
        f.log_prob(x)
    assert torch.isfinite(f.log_prob(torch.full((1, 4), 16.0, dtype=torch.float64))).all()


def test_bounds_wider_than_float32_are_refused():
    with pytest.raises(ValueError, match="more than float32 holds"):
        ff.models.bounded(ff.models.MAF(features=2, standardize=False), [-3e38, 0.0], [3e38, 1.0])
    ff.models.bounded(ff.models.MAF(features=2, standardize=False), [-1e30, 0.0], [None, 1.0])


def test_the_grid_check_before_the_cast_takes_any_batch_shape():
    flow = ff.models.integer_columns(ff.models.build("realnvp", features=3), [0]).eval()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    x[..., 0] = x[..., 0].round()
    assert flow.log_prob(x).shape == (4, 5)


def test_reverse_kl_names_the_flow_when_its_samples_overflow():
    from flowforge.core import NonFiniteSamples
    from flowforge.objectives import reverse_kl

    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,), standardize=False)
    with torch.no_grad():
        for p in flow.parameters():
            p.fill_(1e30)
    with pytest.raises(NonFiniteSamples, match="its inverse overflowed, not the target"):
        reverse_kl(flow, lambda z: -0.5 * (z**2).sum(-1), 16)


def test_a_model_with_a_broken_weight_is_named_by_every_check():
    # sampling and log_likelihoods blamed float32 ("sample in float64") or the inputs ("far
    # outside the training data's range"), where log_prob named the tensor
    torch.manual_seed(0)
    flow = ff.models.NSF(features=2, layers=2, hidden=(16, 16)).eval()
    with torch.no_grad():
        flow.transform.layers[1].net.net[0].weight[0, 0] = float("nan")
    x = torch.randn(4, 2)
    calls = (
        lambda: flow.log_prob(x),
        lambda: flow.sample(4),
        lambda: flow.sample_and_log_prob(4),
        lambda: ff.objectives.log_likelihoods(flow, x),
    )
    for call in calls:
        with pytest.raises(ValueError, match=r"its own tensor '.*\.weight' holds NaN or inf"):
            call()


def test_scoring_whole_data_that_float32_rounds_away_is_refused():
    """A notebook audit: float64 data with a timestamp-like column (1.7e9 +- 10) scored by a
    float32 flow gave an NLL of -1.80 where the true one is 5.10, with one warning on the
    first batch the flow ever saw and none from ff.nll (once per flow). ff.nll and
    log_likelihoods see the whole data: they refuse it; a numpy array is named as one."""
    import numpy as np

    torch.manual_seed(0)
    flow = ff.models.MAF(features=2, layers=1, hidden=(4,), standardize=False).eval()
    x = torch.randn(500, 2, dtype=torch.float64)
    x[:, 0] = 1.7e9 + 10 * x[:, 0]
    with pytest.warns(RuntimeWarning, match="loses its precision"):
        flow.log_prob(x[:100])  # (the per-flow warning, consumed)
    for call in (ff.nll, ff.objectives.log_likelihoods):
        with pytest.raises(ValueError, match=r"x loses its precision .* varies by 10.* in the "
                           r"data .*flow.double\(\)"):  # fmt: skip
            call(flow, x)
    ints = torch.arange(100_000_001, 100_000_101).reshape(50, 2)  # (int64: rounded too)
    with pytest.raises(ValueError, match="loses its precision"):
        ff.nll(flow, ints)
    assert math.isfinite(ff.nll(flow.double(), x))  # the remedy
    with pytest.raises(TypeError, match=r"got ndarray \(a numpy array: torch.as_tensor"):
        ff.nll(flow, np.zeros((5, 2)))


def test_the_whole_data_precision_check_skips_exact_integers_and_subsamples_rows():
    """A review: the whole-data check of ff.nll copied 60,000 x 784 pixels to float64 twice
    (1.4 GB, 10x the time) though integers below 2^24 are exact in float32; it now returns at
    once for them and judges big data on an even subsample of rows."""
    from flowforge.core import PRECISION_ROWS, precision_lost

    pixels = torch.randint(0, 256, (20_000, 64))
    assert precision_lost(pixels, torch.float32) is None
    assert precision_lost(pixels + 100_000_000, torch.float32) is not None  # (past 2^24)
    n = 4 * PRECISION_ROWS  # sorted rows: a subsample of the first rows alone would not do
    stamps = 1.7e9 + torch.linspace(0, 20, n, dtype=torch.float64)[:, None]
    assert "varies by" in precision_lost(stamps, torch.float32)
    fine = torch.linspace(0, 1000, n, dtype=torch.float64)[:, None]
    assert precision_lost(fine, torch.float32) is None
