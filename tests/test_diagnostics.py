"""Calibration diagnostics (``flowforge.diagnostics``) on a conjugate Gaussian model whose
posterior is known in closed form: the exact posterior passes, an overconfident, an
underconfident and a biased one are flagged, and bad input is one clear ``ValueError``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge import diagnostics as dg

pytestmark = pytest.mark.usefixtures("one_thread")

NOISE = 1.0  # x = theta + NOISE * eps, theta ~ N(0, I): posterior N(x / 2, 1/2 I)
SHRINK = 1 / (1 + NOISE**2)
POST_SD = math.sqrt(NOISE**2 / (1 + NOISE**2))


class GaussianPosterior(ff.Transform):
    """A conditional affine layer whose flow is the conjugate posterior
    ``N(SHRINK * x + shift, (width * POST_SD)^2 I)`` (``width=1, shift=0``: exact)."""

    def __init__(self, event_shape, width=1.0, shift=0.0):
        d = math.prod(event_shape)
        super().__init__(event_shape, context_features=d)
        self.sd, self.shift = width * POST_SD, shift

    def _mean(self, ctx, like):
        return SHRINK * ctx.reshape(like.shape) + self.shift

    def _forward(self, theta, ctx):
        z = (theta - self._mean(ctx, theta)) / self.sd
        return z, theta.new_full((theta.shape[0],), -z[0].numel() * math.log(self.sd))

    def _inverse(self, z, ctx):
        theta = z * self.sd + self._mean(ctx, z)
        return theta, z.new_full((z.shape[0],), z[0].numel() * math.log(self.sd))


def posterior(event_shape=(2,), **kwargs):
    return ff.Flow(
        GaussianPosterior(event_shape, **kwargs), ff.distributions.StandardNormal(event_shape)
    )


def joint(n, event_shape=(2,), seed=1):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, *event_shape, generator=g)
    x = (theta + NOISE * torch.randn(n, *event_shape, generator=g)).reshape(n, -1)
    return theta, x


N, L = 600, 100
EXACT = posterior()
NARROW = posterior(width=0.5)  # overconfident
WIDE = posterior(width=2.0)  # underconfident
BIASED = posterior(shift=1.0)  # mean shifted by 1.4 posterior sds


def test_the_test_model_is_the_conjugate_posterior():
    theta, x = joint(5)
    ref = torch.distributions.Normal(SHRINK * x, POST_SD)
    assert torch.allclose(EXACT.log_prob(theta, x), ref.log_prob(theta).sum(-1), atol=1e-5)
    s = EXACT.sample(20000, x[:1])[:, 0]
    assert torch.allclose(s.mean(0), SHRINK * x[0], atol=0.03)
    assert torch.allclose(s.std(0), torch.full((2,), POST_SD), atol=0.02)


# -- SBC ---------------------------------------------------------------------------------------


def test_sbc_passes_the_exact_posterior():
    theta, x = joint(N)
    res = dg.sbc(EXACT, theta, x, L)
    assert res.ranks.shape == (N, 2) and res.log_prob_ranks.shape == (N,)
    assert int(res.ranks.min()) >= 0 and int(res.ranks.max()) <= L
    assert res.consistent(), res.describe()
    assert res.min_pvalue > 0.01
    assert torch.allclose(res.mean_rank, torch.full((2,), 0.5, dtype=torch.float64), atol=0.04)
    assert "consistent" in str(res) and "NOT" not in str(res)


def test_sbc_flags_an_overconfident_posterior():
    theta, x = joint(N)
    res = dg.sbc(NARROW, theta, x, L)
    assert not res.consistent()
    assert res.chi2_pvalues.max() < 1e-6 and res.log_prob_ks_pvalue < 1e-6
    # a U-shaped histogram: the truth falls beyond the draws on both sides
    share_ends = ((res.ranks <= 5) | (res.ranks >= L - 5)).double().mean()
    assert share_ends > 0.3  # 0.12 when calibrated
    # and where the narrow flow puts little mass: low log-density ranks
    assert res.log_prob_ranks.double().mean() / L < 0.3
    assert "NOT calibrated" in res.describe()


def test_sbc_flags_a_biased_posterior_and_says_which_way():
    theta, x = joint(N)
    res = dg.sbc(BIASED, theta, x, L)
    assert not res.consistent()
    assert res.ks_pvalues.max() < 1e-6
    assert (res.mean_rank < 0.3).all()  # the draws sit above the truth


def test_sbc_sees_an_underconfident_posterior_in_the_log_density_rank():
    theta, x = joint(N)
    res = dg.sbc(WIDE, theta, x, L)
    assert res.log_prob_ks_pvalue < 1e-6
    assert res.log_prob_ranks.double().mean() / L > 0.7  # the truth sits in the dense core


# -- HPD coverage ------------------------------------------------------------------------------


def test_hpd_coverage_of_the_exact_posterior_is_the_diagonal():
    theta, x = joint(N)
    cov = dg.hpd_coverage(EXACT, theta, x, L)
    assert cov.verdict() == "calibrated", cov.describe()
    assert cov.max_deviation < 0.06 and cov.area < 0.025 and cov.ks_pvalue > 0.01
    assert float(cov.coverage[0]) == 0.0 and float(cov.coverage[-1]) == 1.0


def test_hpd_coverage_reads_over_and_underconfidence():
    theta, x = joint(N)
    narrow = dg.hpd_coverage(NARROW, theta, x, L)
    wide = dg.hpd_coverage(WIDE, theta, x, L)
    biased = dg.hpd_coverage(BIASED, theta, x, L)
    assert narrow.verdict() == "overconfident" and narrow.signed_area < -0.15
    assert (narrow.coverage[1:-1] < narrow.levels[1:-1]).all()  # below the diagonal
    assert wide.verdict() == "underconfident" and wide.signed_area > 0.15
    assert (wide.coverage[1:-1] > wide.levels[1:-1]).all()
    assert biased.verdict() == "overconfident" and biased.signed_area < -0.1
    assert "overconfident" in str(narrow)


def test_hpd_coverage_matches_the_closed_form_of_a_scaled_posterior():
    # in 2-D, the truth is inside the c-HPD region of a posterior with its sd scaled by w when
    # |z / w|^2 < -2 log(1 - c) for z ~ N(0, I): coverage 1 - (1 - c)^(w^2)
    theta, x = joint(2000)
    for flow, w in ((NARROW, 0.5), (WIDE, 2.0), (EXACT, 1.0)):
        cov = dg.hpd_coverage(flow, theta, x, 200)
        want = 1 - (1 - cov.levels) ** (w**2)
        assert (cov.coverage - want).abs().max() < 0.035, (w, cov.coverage, want)


def test_the_coverage_of_an_sbc_result_is_hpd_coverage_without_drawing_again():
    theta, x = joint(N)
    for flow in (EXACT, NARROW):
        direct = dg.hpd_coverage(flow, theta, x, L, seed=4)
        via = dg.sbc(flow, theta, x, L, seed=4).coverage(seed=4)
        assert via.verdict() == direct.verdict()
        # the same draws give the same ranks; only the tie-breaking jitter differs
        assert (via.coverage - direct.coverage).abs().max() < 0.03


def test_randomised_ranks_are_exact_even_with_one_draw():
    # with L = 1 the raw rank is 0 or 1; the jitter makes the HPD level exactly uniform
    theta, x = joint(N)
    cov = dg.hpd_coverage(EXACT, theta, x, 1)
    assert cov.verdict() == "calibrated" and cov.ks_pvalue > 0.01
    assert dg.hpd_coverage(NARROW, theta, x, 1).verdict() == "overconfident"


def test_p_values_are_uniform_for_the_exact_posterior_even_with_few_draws():
    # 100 seeded runs with L = 5: the jittered ranks keep every p-value uniform (without the
    # jitter, the KS p-values of six-valued ranks would all be near 0)
    p_ks, p_lp, p_tarp, alarms = [], [], [], 0
    for seed in range(100):
        theta, x = joint(100, seed=seed + 10)
        s = dg.sbc(EXACT, theta, x, 5, seed=seed)
        p_ks.append(float(s.ks_pvalues[0]))
        p_lp.append(s.log_prob_ks_pvalue)
        p_tarp.append(dg.tarp(EXACT, theta, x, 5, seed=seed).ks_pvalue)
        alarms += dg.hpd_coverage(EXACT, theta, x, 5, seed=seed).verdict() != "calibrated"
    for p in (p_ks, p_lp, p_tarp):
        p = torch.tensor(p)
        assert 0.4 < float(p.mean()) < 0.6 and 0.03 < float((p < 0.2).double().mean()) < 0.37
    assert alarms <= 4


# -- TARP --------------------------------------------------------------------------------------


def test_tarp_passes_the_exact_posterior_and_flags_the_wrong_ones():
    theta, x = joint(N)
    exact = dg.tarp(EXACT, theta, x, L)
    assert exact.ecp.shape == exact.levels.shape == (21,)
    assert exact.max_deviation < 0.07 and exact.area < 0.03 and exact.ks_pvalue > 0.01
    for wrong in (NARROW, BIASED, WIDE):
        res = dg.tarp(wrong, theta, x, L)
        assert res.ks_pvalue < 1e-4, res.describe()
        assert res.max_deviation > 0.1 and res.area > 2 * exact.area


def test_tarp_from_samples_takes_draws_of_any_estimator():
    theta, x = joint(200)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        narrow, exact = NARROW.sample(L, x), EXACT.sample(L, x)
        # an "ensemble": half the draws from each of two members
        ensemble = torch.cat([EXACT.sample(L // 2, x), posterior(shift=0.0).sample(L // 2, x)])
    assert dg.tarp_from_samples(narrow, theta, seed=3).ks_pvalue < 1e-3
    res = dg.tarp_from_samples(exact, theta, levels=11)
    assert res.n == 200 and res.levels.shape == (11,) and res.ks_pvalue > 0.01
    assert dg.tarp_from_samples(ensemble.numpy(), theta.numpy()).ks_pvalue > 0.01
    a, b = dg.tarp_from_samples(narrow, theta), dg.tarp_from_samples(narrow, theta)
    assert torch.equal(a.f, b.f)  # seeded references and jitter


def test_tarp_with_given_references():
    theta, x = joint(N)
    refs = torch.zeros_like(theta) + 3.0  # a far corner: still a valid reference distribution
    assert dg.tarp(EXACT, theta, x, L, references=refs).ks_pvalue > 0.01
    assert dg.tarp(BIASED, theta, x, L, references=refs).ks_pvalue < 1e-6


# -- C2ST --------------------------------------------------------------------------------------


def test_c2st_tells_biased_draws_from_exact_ones_and_not_exact_from_exact():
    pytest.importorskip("sklearn")
    _, x = joint(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a = EXACT.sample(800, x)[:, 0]
        b = EXACT.sample(800, x)[:, 0]
        c = BIASED.sample(800, x)[:, 0]
    same = dg.c2st(a, b, folds=4)
    diff = dg.c2st(a, c, folds=4)
    assert same.accuracy < 0.56 and same.p_value > 0.01, same.describe()
    assert diff.accuracy > 0.75 and diff.p_value < 1e-10, diff.describe()
    assert len(diff.fold_accuracies) == 4 and diff.chance == 0.5 and diff.n == 1600
    assert dg.c2st(a, c, folds=4).accuracy == diff.accuracy  # seeded


# -- shapes, seeding, batching -----------------------------------------------------------------


@pytest.mark.parametrize("event", [(1,), (2, 3)])
def test_any_event_shape(event):
    theta, x = joint(300, event)
    flow = posterior(event)
    res = dg.sbc(flow, theta, x, 50)
    assert res.ranks.shape == (300, math.prod(event)) and res.consistent()
    assert dg.hpd_coverage(flow, theta, x, 50).verdict() == "calibrated"
    assert dg.tarp(flow, theta, x, 50).ks_pvalue > 0.01
    narrow = posterior(event, width=0.5)
    assert not dg.sbc(narrow, theta, x, 50).consistent()


def test_seeded_repeatable_and_the_caller_stream_kept():
    theta, x = joint(100)
    flow = ff.models.build("maf", features=2, context_features=2)
    flow.train()
    state = torch.get_rng_state()
    a = dg.sbc(flow, theta, x, 30, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert flow.training  # mode restored
    b = dg.sbc(flow, theta, x, 30, seed=5)
    c = dg.sbc(flow, theta, x, 30, seed=6)
    assert torch.equal(a.ranks, b.ranks) and a.pvalues == b.pvalues
    assert not torch.equal(a.ranks, c.ranks)
    t1, t2 = dg.tarp(flow, theta, x, 30, seed=2), dg.tarp(flow, theta, x, 30, seed=2)
    assert torch.equal(t1.f, t2.f)
    h1, h2 = dg.hpd_coverage(flow, theta, x, 30), dg.hpd_coverage(flow, theta, x, 30)
    assert torch.equal(h1.coverage, h2.coverage)


def test_no_gradients_and_draws_in_bounded_chunks(monkeypatch):
    theta, x = joint(50)
    flow = ff.models.build("maf", features=2, context_features=2)
    sizes, grads = [], []
    sample = flow.sample

    def spy(n, context=None, **kw):
        sizes.append(n * (1 if context is None else context.shape[0]))
        grads.append(torch.is_grad_enabled())
        return sample(n, context, **kw)

    monkeypatch.setattr(flow, "sample", spy)
    res = dg.sbc(flow, theta, x, 40, batch_size=64)
    assert max(sizes) <= 64 and sum(sizes) == 50 * 40 and not any(grads)
    assert int(res.ranks.max()) <= 40
    sizes.clear()
    dg.sbc(flow, theta, x, 100, batch_size=30)  # L > batch_size: draws split per context
    assert max(sizes) <= 30 and sum(sizes) == 50 * 100
    sizes.clear()
    dg.tarp(flow, theta, x, 40, batch_size=64)
    assert max(sizes) <= 64 and sum(sizes) == 50 * 40 + 50  # (+ one pilot draw per pair)


def test_small_batches_give_the_same_verdicts():
    # (with 7 draws per call, L = 60 is drawn in 9 calls per context, the counts added up)
    theta, x = joint(300)
    assert dg.sbc(EXACT, theta, x, 60, batch_size=7).min_pvalue > 1e-4
    assert dg.sbc(NARROW, theta, x, 60, batch_size=7).min_pvalue < 1e-6


# -- the uniformity tests against scipy --------------------------------------------------------


def test_p_values_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    for n, skew in ((50, 1.0), (400, 1.0), (400, 1.2), (1000, 1.1), (100, 1.8)):
        u = torch.rand(n, generator=g, dtype=torch.float64) ** skew
        want = stats.kstest(u.numpy(), "uniform").pvalue
        assert dg.ks_uniform_pvalue(u) == want
        ranks = (u * 50).floor().long().clamp(max=49)  # ranks on {0..49}: L = 49
        for bins in (5, 7, 50):
            edges = np.floor(np.arange(50) * bins / 50).astype(int)
            obs = np.bincount(edges[ranks.numpy()], minlength=bins)
            exp = n * np.bincount(edges, minlength=bins) / 50
            want = stats.chisquare(obs, exp).pvalue
            assert abs(dg.chi2_uniform_pvalue(ranks, 49, bins) - want) < 1e-9


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_one_clear_value_error():
    theta, x = joint(20)
    uncond = ff.models.build("maf", features=2)
    discrete = ff.models.build("maf", features=2, context_features=2, levels=4)
    cases = [
        (lambda: dg.sbc(uncond, theta, x), "conditional flow"),
        (lambda: dg.tarp(discrete, theta, x), "has a dequantizer"),
        (lambda: dg.sbc("flow", theta, x), "flowforge Flow"),
        (lambda: dg.sbc(EXACT, theta[:10], x), "10 rows of theta and 20 of x"),
        (lambda: dg.sbc(EXACT, theta, x, 0), "num_samples to be an integer >= 1"),
        (lambda: dg.sbc(EXACT, theta, x, 2.5), "num_samples"),
        (lambda: dg.sbc(EXACT, theta, x, True), "num_samples"),
        (lambda: dg.sbc(EXACT, theta.index_fill(0, torch.tensor([3]), math.nan), x), "rows: [3]"),
        (lambda: dg.sbc(EXACT, theta, x.index_fill(0, torch.tensor([4]), math.inf)), "x contains"),
        (lambda: dg.sbc(EXACT, theta[:, :1], x), "theta of shape (N, 2)"),
        (lambda: dg.sbc(EXACT, theta, x[:, :1]), "x of shape (N, 2)"),
        (lambda: dg.sbc(EXACT, theta[:1], x[:1]), "at least 2 pairs"),
        (lambda: dg.sbc(EXACT, theta, x, 10, bins=12), "bins to be an integer in [2, 11]"),
        (lambda: dg.sbc(EXACT, theta, x, 10, bins=1), "bins"),
        (lambda: dg.sbc(EXACT, theta, x, batch_size=0), "batch_size"),
        (lambda: dg.sbc(EXACT, theta, x, seed=-1), "seed"),
        (lambda: dg.sbc(EXACT, theta.to(torch.complex64), x), "real numbers"),
        (lambda: dg.sbc(EXACT, "theta", x), "a tensor or an array, got str"),
        (lambda: dg.hpd_coverage(EXACT, theta, x, levels=[0.5, 0.2]), "increasing levels"),
        (lambda: dg.hpd_coverage(EXACT, theta, x, levels=[0.5, 1.5]), "in [0, 1]"),
        (lambda: dg.hpd_coverage(EXACT, theta, x, levels=1), "levels"),
        (lambda: dg.hpd_coverage(uncond, theta, x), "conditional flow"),
        (lambda: dg.tarp(EXACT, theta, x, references=theta[:5]), "references of the shape"),
        (lambda: dg.tarp(EXACT, theta, x, references=theta * math.nan), "references contains"),
        (lambda: dg.tarp(EXACT, theta, x[:3]), "pair up"),
        (lambda: dg.tarp_from_samples(theta, theta), "samples (L, N, *event)"),
        (lambda: dg.tarp_from_samples(torch.zeros(5, 19, 2), theta), "do not match theta"),
        (lambda: dg.tarp_from_samples(torch.zeros(0, 20, 2), theta), "L >= 2"),
        (lambda: dg.tarp_from_samples(torch.zeros(1, 20, 2), theta), "L >= 2"),
        (lambda: dg.tarp_from_samples(torch.full((5, 20, 2), math.nan), theta), "samples"),
        (lambda: dg.c2st(theta, x[:, :1]), "rows of one size"),
        (lambda: dg.c2st(theta, theta[:3]), "at least 5 rows in each set"),
        (lambda: dg.c2st(theta * math.nan, theta), "a contains NaN"),
        (lambda: dg.c2st(theta, theta, folds=1), "folds"),
        (lambda: dg.c2st(theta, theta, seed=None), "seed"),
        (lambda: dg.c2st(torch.zeros(0, 2), theta), "expected a to hold rows"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert message in str(info.value), (message, str(info.value))
        assert "\n" not in str(info.value)


def _hide(monkeypatch, package: str) -> None:
    import sys

    for name in [m for m in sys.modules if m.split(".")[0] == package] + [package]:
        monkeypatch.setitem(sys.modules, name, None)  # (None: an import of it fails)


def test_c2st_without_scikit_learn_names_the_extra(monkeypatch):
    _hide(monkeypatch, "sklearn")
    with pytest.raises(ImportError, match=r"pip install flowforge\[diagnostics\]"):
        dg.c2st(torch.randn(20, 2), torch.randn(20, 2))


def test_the_ks_test_without_scipy_names_the_extra(monkeypatch):
    _hide(monkeypatch, "scipy")
    theta, x = joint(20)
    with pytest.raises(ImportError, match=r"pip install flowforge\[diagnostics\]"):
        dg.sbc(EXACT, theta, x, 10)


def test_numpy_inputs_work():
    theta, x = joint(200)
    res = dg.sbc(EXACT, theta.numpy(), x.numpy().astype(np.float64), 20)
    assert res.consistent()


# -- the workbench: flowforge eval RUN --calibration ---------------------------------------------


@pytest.fixture(scope="module")
def conjugate_run(tmp_path_factory):
    """A MAF trained on a table of (theta, x) pairs of the conjugate model, theta the targets."""
    from flowforge.workbench.cli import main

    folder = tmp_path_factory.mktemp("calibration")
    theta, x = joint(3000, seed=5)
    table = folder / "pairs.csv"
    np.savetxt(table, torch.cat([theta, x], 1).numpy(), delimiter=",",
               header="t1,t2,x1,x2", comments="")  # fmt: skip
    out = folder / "run"
    code = main(["train", "--model", "maf", "--data", str(table), "--target-columns", "t1,t2",
                 "--model-kwargs", '{"hidden": [32], "layers": 3}', "--epochs", "15",
                 "--out", str(out), "--no-progress", "--quiet"])  # fmt: skip
    assert code == 0
    return out, table


def _cli(args, capsys):
    from flowforge.workbench.cli import main

    code = main([str(a) for a in args])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_eval_calibration_of_a_trained_posterior(conjugate_run, capsys):
    run, _ = conjugate_run
    code, out, err = _cli(["eval", run, "--split", "val", "--calibration"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    # (the NLL, then the linear-Gaussian regression it is compared with: the exact posterior
    # of this conjugate model, so within the noise of it)
    assert lines[1].startswith("a linear-Gaussian regression") and "within the noise" in lines[1]
    lines = lines[1:]
    assert lines[1] == "calibration on val (all 300 rows, 100 draws each, seed 0):"
    assert lines[2].startswith("  SBC: 300 pairs, L=100, 2 dims") and "consistent" in lines[2]
    assert lines[3].startswith("  HPD coverage:") and lines[3].endswith(": calibrated")
    assert lines[4].startswith("  TARP: 300 pairs")
    code, out, err = _cli(["eval", run, "--split", "val", "--calibration",
                           "--calibration-pairs", "10"], capsys)  # fmt: skip
    assert code == 0, err
    assert "calibration on val (10 of its 300 rows" in out
    assert "note: 10 pairs are too few for these tests to tell much" in out
    more = ["--calibration-samples", "40", "--calibration-pairs", "120"]
    code, out, err = _cli(["eval", run, "--split", "val", "--calibration", "--json", *more], capsys)
    assert code == 0, err
    c = json.loads(out)["calibration"]
    assert (c["pairs"], c["rows"], c["samples"]) == (120, 300, 40)
    assert c["sbc"]["consistent"] and c["coverage"]["verdict"] == "calibrated"
    assert len(c["coverage"]["coverage"]) == 21 and len(c["sbc"]["ks_pvalues"]) == 2


def test_eval_calibration_is_the_library_on_the_same_rows(conjugate_run, capsys):
    from flowforge.workbench.data import load_dataset
    from flowforge.workbench.evaluate import calibrate_run

    run, table = conjugate_run
    got = calibrate_run(str(run), "test", seed=3, samples=30, pairs=100)
    ds = load_dataset(str(table), target_columns="t1,t2")
    keep = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:100].sort().values
    flow = ff.load(run)
    ref = dg.sbc(flow, ds.test[keep], ds.context["test"][keep], 30, seed=3)
    assert got["sbc"]["ks_pvalues"] == ref.ks_pvalues.tolist()
    assert got["sbc"]["log_prob_chi2_pvalue"] == ref.log_prob_chi2_pvalue


def test_eval_calibration_on_a_file_of_fresh_simulations(conjugate_run, tmp_path, capsys):
    """--calibration --data: the natural SBI check, on simulations the run never saw; the
    columns are found by their header names (here in another order)."""
    run, _ = conjugate_run
    theta, x = joint(200, seed=11)
    fresh = tmp_path / "fresh.csv"
    np.savetxt(fresh, torch.cat([theta, x], 1).numpy(), delimiter=",",
               header="t1,t2,x1,x2", comments="")  # fmt: skip
    code, out, err = _cli(["eval", run, "--data", fresh, "--calibration", "--calibration-samples",
                           "50", "--json"], capsys)  # fmt: skip
    assert code == 0, err
    c = json.loads(out)["calibration"]
    assert (c["split"], c["pairs"], c["samples"]) == (str(fresh), 200, 50)
    assert c["sbc"]["consistent"] and c["coverage"]["verdict"] == "calibrated"
    # the same numbers as the library on those rows
    ref = dg.sbc(ff.load(run), theta, x, 50, seed=0)
    assert c["sbc"]["ks_pvalues"] == pytest.approx(ref.ks_pvalues.tolist(), abs=1e-6)
    # a miscalibrated "simulator" (the noise doubled) is flagged from the file alone
    wrong = tmp_path / "wrong.csv"
    x2 = theta + 3 * (x - theta)
    np.savetxt(wrong, torch.cat([theta, x2], 1).numpy(), delimiter=",",
               header="t1,t2,x1,x2", comments="")  # fmt: skip
    code, out, err = _cli(["eval", run, "--data", wrong, "--calibration"], capsys)
    assert code == 0, err
    assert f"calibration on {wrong} (all 200 rows" in out and ": calibrated" not in out
    one = tmp_path / "one.csv"
    np.savetxt(one, torch.cat([theta, x], 1).numpy()[:1], delimiter=",",
               header="t1,t2,x1,x2", comments="")  # fmt: skip
    code, out, err = _cli(["eval", run, "--data", one, "--calibration"], capsys)
    assert code == 1 and f"at least 2 rows in {one}, got 1" in err and err.count("\n") == 1


def test_eval_calibration_refusals_are_one_line(conjugate_run, tmp_path, capsys):
    run, table = conjugate_run
    code, _, _ = _cli(["train", "--model", "maf", "--data", table, "--model-kwargs",
                       '{"hidden": [8]}', "--epochs", "1", "--out", tmp_path / "u",
                       "--no-progress", "--quiet"], capsys)  # fmt: skip
    assert code == 0
    cases = [
        (["eval", tmp_path / "u", "--calibration"], "this run is unconditional"),
        (["eval", run, "--calibration-samples", "10"], "go with --calibration"),
        (["eval", run, "--calibration", "--calibration-samples", "0"], "integer >= 1, got 0"),
        (["eval", run, "--calibration", "--calibration-pairs", "1"], "integer >= 2, got 1"),
        (["eval", run, "--calibration", "--calibration-samples", "20000"], "more than the"),
        (["eval", run, "--calibration", "--split", "nope"], "unknown split"),
    ]
    for args, message in cases:
        code, out, err = _cli(args, capsys)
        assert code == 1 and message in err and err.count("\n") == 1, (args, err)
        assert out == ""


def test_c2st_separates_small_sets_too():
    # scikit-learn's early stopping took one step per epoch on under 200 rows and stopped at
    # chance: 0.5 for sets 10 standard deviations apart
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    for n in (30, 100):
        a, b = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g) + 3
        res = dg.c2st(a, b)
        assert res.accuracy > 0.9 and res.p_value < 1e-6, (n, res)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        dg.c2st(a, b, seed=2**33)


def test_tarp_from_samples_is_unbiased_with_few_pairs():
    # the first draw set the references and the scale and was counted too: the mean of f was
    # 0.586 for an exact posterior at N = 2, L = 3 (0.5 calibrated)
    g = torch.Generator().manual_seed(0)
    fs = []
    for r in range(600):
        theta = torch.randn(2, 2, generator=g)
        x = theta + torch.randn(2, 2, generator=g)
        draws = x / 2 + math.sqrt(0.5) * torch.randn(3, 2, 2, generator=g)  # (L = 3)
        fs.append(dg.tarp_from_samples(draws, theta, seed=r).f)
    mean = float(torch.cat(fs).mean())
    assert abs(mean - 0.5) < 0.025, mean  # (standard error about 0.008)


def test_the_uniformity_tests_refuse_what_they_cannot_test():
    # (they gave NaN, an IndexError or a truncated float)
    r = torch.tensor([0, 1, 2, 3])
    for call, message in (
        (lambda: dg.chi2_uniform_pvalue(r, num_samples=3, bins=10), r"bins .* \[2, 4\]"),
        (lambda: dg.chi2_uniform_pvalue(r, num_samples=3, bins=1), r"bins .* \[2, 4\]"),
        (lambda: dg.chi2_uniform_pvalue(torch.tensor([0, 1, 5]), 3, 2), r"each in \[0, 3\]"),
        (lambda: dg.chi2_uniform_pvalue(torch.tensor([], dtype=torch.long), 3, 2), "at least"),
        (lambda: dg.chi2_uniform_pvalue(torch.tensor([0.5, 1.7]), 3, 2), "integer ranks"),
        (lambda: dg.ks_uniform_pvalue(torch.tensor([math.nan, 0.5])), r"each in \[0, 1\]"),
        (lambda: dg.ks_uniform_pvalue(torch.tensor([])), "at least one"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    assert 0 <= dg.chi2_uniform_pvalue(r, 3, 2) <= 1
