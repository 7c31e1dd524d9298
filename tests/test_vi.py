"""Variational inference: targets, diagnostics with known answers, and ``flowforge fit-target``."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge import targets
from flowforge.objectives import (
    effective_sample_size,
    importance_log_z,
    log_importance_weights,
    vi_diagnostics,
)

F64 = torch.float64


@pytest.mark.parametrize("name", targets.available())
def test_targets_are_finite_log_densities(name):
    t = targets.get(name)
    x = 3 * torch.randn(64, t.dim, dtype=F64)
    lp = t(x)
    assert lp.shape == (64,) and torch.isfinite(lp).all()
    assert t(x.float()).dtype == torch.float32


@pytest.mark.parametrize("name", ["banana", "mog2", "mog8"])
def test_normalised_targets_integrate_to_one(name):
    t = targets.get(name)
    assert t.log_z == 0.0
    assert abs(targets.grid_log_z(t, (-10, 10, -8, 14), 600)) < 1e-3


def test_rezende_energies_are_normalisable_and_match_the_paper_inside_the_box():
    for name in ("u1", "u2", "u3", "u4"):
        t = targets.get(name)
        a = targets.grid_log_z(t, (-6, 6, -6, 6), 600)
        b = targets.grid_log_z(t, (-9, 9, -9, 9), 900)
        assert abs(a - b) < 1e-3, name
    # inside [-4, 4]² the wall is inactive: U2(z) = 0.5 ((z2 - sin(pi z1 / 2)) / 0.4)²
    z = torch.tensor([[1.0, 0.5], [-3.9, 0.0]], dtype=F64)
    want = -0.5 * ((z[:, 1] - torch.sin(math.pi * z[:, 0] / 2)) / 0.4) ** 2
    assert torch.allclose(targets.get("u2")(z), want)


def test_unknown_target_and_wrong_dimension():
    with pytest.raises(ValueError, match="unknown target 'u9'.*did you mean"):
        targets.get("u9")
    with pytest.raises(ValueError, match="2-dimensional"):
        targets.get("u1")(torch.zeros(3, 4))


def test_diagnostics_when_the_flow_is_the_target():
    """q = p exactly: every weight equals Z, so ELBO = log Z = the IS estimate, ESS = 1."""
    torch.manual_seed(0)
    flow = ff.models.Planar(features=2, layers=3).double().eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    log_z = 2.5

    def target(x):
        return flow.log_prob(x) + log_z

    d = vi_diagnostics(flow, target, n=4000)
    assert d["elbo"] == pytest.approx(log_z, abs=1e-7)
    assert d["reverse_kl"] == pytest.approx(-log_z, abs=1e-7)
    assert d["log_z"] == pytest.approx(log_z, abs=1e-7)
    assert d["ess"] == pytest.approx(1.0, abs=1e-9)


def test_diagnostics_against_closed_forms():
    """q = N(0, 1), p~ = e^c N(0, s²): ELBO = c - KL(q || p), E[w] = e^c and the normalised ESS
    tends to 1 / E_q[(p/q)²] = s sqrt(2 - s²)."""
    torch.manual_seed(0)
    flow = ff.Flow(ff.transforms.Scaling(1), ff.distributions.StandardNormal(1)).double()
    c, s = 1.3, 1.2

    def target(x):
        return c - 0.5 * (x[:, 0] / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)

    d = vi_diagnostics(flow, target, n=200000)
    kl = math.log(s) + 1 / (2 * s**2) - 0.5
    assert d["elbo"] == pytest.approx(c - kl, abs=4 * d["elbo_se"])
    assert d["log_z"] == pytest.approx(c, abs=0.01)
    assert d["ess"] == pytest.approx(s * math.sqrt(2 - s**2), abs=0.01)
    # the helpers on hand-made weights
    log_w = torch.log(torch.tensor([1.0, 1.0, 2.0, 0.0]))
    assert effective_sample_size(log_w) == pytest.approx(16 / (4 * 6))
    assert importance_log_z(log_w) == pytest.approx(0.0, abs=1e-6)


def test_reverse_kl_reduces_with_training_and_context_amortisation():
    from flowforge.workbench.vi import fit_target

    torch.manual_seed(0)
    flow = ff.models.Planar(features=2, layers=4)
    t = targets.get("mog2")
    before = vi_diagnostics(flow, t, n=2000)["reverse_kl"]
    fit_target(flow, t, steps=150, batch_size=128, lr=1e-2)
    after = vi_diagnostics(flow, t, n=2000)["reverse_kl"]
    assert after < before - 0.5
    # amortised: one conditional flow, a Gaussian target whose mean is the context
    flow = ff.models.Sylvester(features=2, layers=2, context_features=2, hidden=8)
    ctx = torch.randn(3, 2)

    def target(x, context):
        return -0.5 * (x - context).square().sum(-1)

    loss = ff.reverse_kl(flow, target, 5, ctx)
    loss.backward()
    assert torch.isfinite(loss)
    lw = log_importance_weights(flow, target, 7, ctx)
    assert lw.shape == (7, 3)


def test_fit_target_cli_writes_a_report(capsys, tmp_path):
    out = tmp_path / "u1"
    rc, stdout, err = cli(
        capsys, "fit-target", "--target", "u1", "--model", "planar", "--layers", 4,
        "--out", out, "--steps", 30, "--n-eval", 500, "--quiet",
    )  # fmt: skip
    assert rc == 0, err
    assert "reverse KL (up to log Z)" in stdout and "ESS" in stdout and "KL" in stdout
    for f in ("report.png", "report.md", "metrics.json", "model.ff"):
        assert (out / f).exists(), f
    assert "ELBO" in (out / "report.md").read_text()
    flow = ff.load(out / "model.ff")
    assert flow.config["model"] == "Planar"
    # an existing, non-empty folder is refused without --overwrite
    rc, _, err = cli(capsys, "fit-target", "--target", "u1", "--out", out, "--steps", 1)
    assert rc == 1 and "--overwrite" in err
    # the ELBO with its standard error, and the KL row intact in the markdown table
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert f"ELBO {m['elbo']:.4f} +- {m['elbo_se']:.4f}" in stdout
    assert "| KL(q ‖ p) | " in (out / "report.md").read_text()
    assert "Monte-Carlo standard error over 500 samples" in (out / "report.md").read_text()


def test_fit_target_never_writes_into_a_run_or_a_users_folder(capsys, tmp_path):
    from cli_support import tiny_moons_run

    run = tiny_moons_run(capsys, tmp_path / "run")
    kept = (run / "model.ff").read_bytes()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "report.md").write_text("my notes")
    fit = ["fit-target", "--target", "u1", "--layers", 2, "--steps", 3, "--n-eval", 10,
           "--quiet", "--overwrite"]  # fmt: skip
    rc, _, err = cli(capsys, *fit, "--out", run)
    assert rc == 1 and "holds a training run" in err
    assert (run / "model.ff").read_bytes() == kept
    rc, _, err = cli(capsys, *fit, "--out", user)
    assert rc == 1 and "holds no fit-target report" in err
    assert (user / "report.md").read_text() == "my notes"
    (tmp_path / "file").write_text("x")
    rc, _, err = cli(capsys, *fit, "--out", tmp_path / "file")
    assert rc == 1 and "is not a folder" in err
    # its own report is replaced with --overwrite
    assert cli(capsys, *fit, "--out", tmp_path / "vi")[0] == 0
    assert cli(capsys, *fit, "--out", tmp_path / "vi")[0] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "u9"], "unknown target 'u9'"),
        (["--target", "u1", "--model", "planr"], "unknown model 'planr'"),
        (["--target", "u1", "--steps", "0"], "--steps must be between 1 and"),
        (["--target", "u1", "--model-kwargs", "{bad"], "--model-kwargs"),
        (["--target", "u1", "--n-eval", "100000000"], "--n-eval must be between 2 and 10,000,000"),
        (["--target", "u1", "--batch-size", "10000000000"], "--batch-size must be between"),
        (["--target", "u1", "--model-kwargs", '{"features": 5}'], "drop 'features'"),
        (["--target", "u1", "--model-kwargs", '{"context_features": 3}'], "unconditional"),
    ],
)
def test_fit_target_cli_bad_input(capsys, tmp_path, args, message):
    rc, stdout, err = cli(capsys, "fit-target", *args, "--out", tmp_path / "r")
    assert rc == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_diagnostics_with_contexts_average_their_errors():
    """With B contexts the ELBO is the mean of B per-context means: its error is theirs
    combined, not the spread between contexts (which is no noise), and n counts samples per
    context."""
    torch.manual_seed(0)
    flow = ff.models.build("planar", features=1, layers=1, context_features=1)
    c = torch.tensor([[0.0], [10.0]])

    def target(x, ctx):
        return -0.5 * (x[..., 0] - ctx[..., 0]) ** 2 - 0.5 * math.log(2 * math.pi)

    d = vi_diagnostics(flow, target, n=4000, context=c)
    assert d["n"] == 4000
    repeats = torch.tensor([vi_diagnostics(flow, target, n=4000, context=c)["elbo"]
                            for _ in range(20)])  # fmt: skip
    assert 0.5 < d["elbo_se"] / repeats.std().item() < 2.0
    assert vi_diagnostics(flow, target, n=1, context=c)["elbo_se"] is None


def test_fit_target_refuses_what_would_invert_or_empty_the_objective():
    from flowforge.workbench.vi import fit_target

    flow = ff.models.Planar(features=2, layers=2)
    with pytest.raises(ValueError, match="anneal to be an integer >= 0"):
        fit_target(flow, targets.get("u1"), steps=2, anneal=-5)
    with pytest.raises(ValueError, match="batch_size to be an integer >= 1"):
        fit_target(flow, targets.get("u1"), steps=2, batch_size=0)


def test_the_funnel_is_finite_in_its_neck():
    """x e^{-v/2} squared, not x² e^{-v}: at v = -100 float32's e^{100} overflows."""
    funnel = targets.get("funnel")
    z = torch.tensor([[-100.0, 0.0], [-100.0, 1e-20], [-100.0, 1.0], [2.0, -1.5]])
    got = funnel(z)
    want = funnel(z.double())
    assert torch.isfinite(want[:2]).all() and torch.allclose(got[:2].double(), want[:2])
    assert got[2] == -math.inf or got[2] < -1e30  # a real underflow of the density
    v, x = -100.0, z[1, 1].item()  # (1e-20 as float32 holds it)
    exact = -0.5 * (v / 3) ** 2 - math.log(3) - 0.5 * math.log(2 * math.pi)
    exact += -0.5 * x * x * math.exp(-v) - 0.5 * v - 0.5 * math.log(2 * math.pi)
    assert want[1].item() == pytest.approx(exact, rel=1e-12)


# -- bad input --------------------------------------------------------------------------------


def test_target_returning_nan_is_named_in_the_error():
    flow = ff.models.Planar(features=2, layers=1)
    nan_target = targets.Target("nanny", lambda x: x.sum(-1) * float("nan"), 2, (-1, 1, -1, 1))
    with pytest.raises(ValueError, match=r"target 'nanny' returned NaN or \+inf for 8 of 8 points"):
        ff.objectives.reverse_kl(flow, nan_target, 8)
    with pytest.raises(ValueError, match="target 'nanny' returned NaN"):
        vi_diagnostics(flow, nan_target, n=16)
    from flowforge.workbench.vi import fit_target

    with pytest.raises(ValueError, match="target 'nanny' returned NaN"):
        fit_target(flow, nan_target, steps=1, batch_size=4)

    def half_nan(x):  # a plain callable is checked too, and named by its __name__
        return torch.where(x[..., 0] > 0, float("nan"), 0.0)

    with pytest.raises(ValueError, match="target 'half_nan' returned NaN or \\+inf for"):
        ff.objectives.reverse_kl(flow, half_nan, 64)


def test_target_returning_the_wrong_shape_is_named_in_the_error():
    flow = ff.models.Planar(features=2, layers=1)

    def keepdim(x):
        return -0.5 * x.square().sum(-1, keepdim=True)

    with pytest.raises(
        ValueError,
        match=r"target 'keepdim' returned log-densities of shape \(8, 1\) for x of shape "
        r"\(8, 2\); expected shape \(8,\)",
    ):
        ff.objectives.reverse_kl(flow, keepdim, 8)
    scalar = targets.Target("scalar", lambda x: x.sum(), 2, (-1, 1, -1, 1))
    with pytest.raises(ValueError, match=r"target 'scalar' returned log-densities of shape \(\)"):
        ff.objectives.reverse_kl(flow, scalar, 8)
    # -inf (zero density) is a valid log-density
    wall = targets.Target("wall", lambda x: torch.full(x.shape[:-1], -math.inf), 2, (0, 1, 0, 1))
    assert wall(torch.zeros(3, 2)).shape == (3,)


def test_fit_target_interrupted_writes_nothing(capsys, tmp_path, monkeypatch):
    import os
    import signal

    from flowforge.workbench import trainer as trainer_module

    real = trainer_module.Trainer._forward_backward

    def loss(self, xb, cb, rng):
        if self.global_step == 20:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, xb, cb, rng)

    monkeypatch.setattr(trainer_module.Trainer, "_forward_backward", loss)
    out = tmp_path / "vi"
    rc, _, err = cli(capsys, "fit-target", "--target", "u1", "--model", "planar", "--layers", 2,
                     "--steps", 500, "--out", out, "--quiet")  # fmt: skip
    assert rc == 130 and "interrupted after 21 of 500 steps; nothing written" in err
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.setattr(trainer_module.Trainer, "_forward_backward", real)
    rc, _, err = cli(capsys, "fit-target", "--target", "u1", "--model", "planar", "--layers", 2,
                     "--steps", 10, "--n-eval", 1, "--out", out, "--quiet")  # fmt: skip
    assert rc == 1 and "--n-eval must be between 2 and 10,000,000, got 1" in err


def test_a_fit_that_diverges_blames_the_flow_and_skipped_steps_are_said(capsys, tmp_path):
    # the flow's NaN samples were reported as the target's NaN ("target 'u1' returned NaN")
    rc, _, err = cli(capsys, "fit-target", "--target", "u1", "--lr", "1e30", "--steps", 30,
                     "--layers", 2, "--out", tmp_path / "a", "--quiet")  # fmt: skip
    assert rc == 1 and "target 'u1' returned" not in err
    assert "validation reverse-kl loss is nan" in err and "a lower --lr may help" in err
    b = tmp_path / "b"
    # (a few skipped: said; more than half: no fit, test_vi_reliability.py)
    rc, out, err = cli(capsys, "fit-target", "--target", "funnel", "--lr", "9", "--steps", 60,
                       "--layers", 4, "--n-eval", 200, "--out", b, "--quiet")  # fmt: skip
    skipped = json.loads((tmp_path / "b" / "metrics.json").read_text())["fit"]["skipped"]
    assert rc == 0 and skipped > 0, err
    assert f"warning: {skipped} of 60 steps were skipped" in err
    assert f"{skipped} steps skipped" in (tmp_path / "b" / "report.md").read_text()
    rc, _, err = cli(capsys, "fit-target", "--target", "u1", "--model", "cnf", "--layers", 2,
                     "--out", tmp_path / "c")  # fmt: skip
    one_line_error(rc, err, "model 'cnf': it has no depth argument for --layers")


# -- a review of VI (2026-12-06) -------------------------------------------------------------------


def test_a_target_without_a_gradient_is_refused():
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))
    target = ff.targets.get("banana")
    with pytest.raises(ValueError, match="without a gradient with respect to x"):
        ff.objectives.reverse_kl(flow, lambda x: target(x).detach(), 16)


def test_importance_weights_use_exact_log_densities():
    # a CNF's Hutchinson trace and a residual flow's roulette estimate are unbiased for a
    # loss, but inside log w they bias log Z and the ESS whatever n: q = p, log Z = 2.5
    torch.manual_seed(0)
    for flow in (
        ff.models.build("cnf", features=10, hidden=(16,), trace="hutchinson"),
        ff.models.ResidualFlow(features=3, blocks=2, hidden=(16,), estimator="roulette"),
    ):
        flow.log_prob(torch.randn(64, flow.event_shape[0]))
        flow.eval()
        exact = copy.deepcopy(flow)
        with ff.objectives._exact_densities(exact):
            pass  # (restores what it changed)
        target = _ExactPlus(copy.deepcopy(flow), 2.5)
        d = ff.objectives.vi_diagnostics(flow, target, n=200)
        assert abs(d["log_z"] - 2.5) < 1e-3 and d["ess"] > 0.999, d
        assert [getattr(m, "trace", None) for m in flow.modules()] == [
            getattr(m, "trace", None) for m in exact.modules()
        ]


class _ExactPlus:
    """A flow's exact log-density plus a constant (its log Z)."""

    def __init__(self, flow, c):
        self.flow, self.c, self.name = flow, c, "exact"

    def __call__(self, x):
        with ff.objectives._exact_densities(self.flow):
            return self.flow.log_prob(x) + self.c


def test_bad_weights_contexts_and_mixtures_are_one_line_errors():
    for bad in ([0.0, float("nan")], [0.0, float("inf")], []):
        for fn in (ff.objectives.importance_log_z, ff.objectives.effective_sample_size):
            with pytest.raises(ValueError):
                fn(torch.tensor(bad))
    flow = ff.models.Planar(features=2, layers=2, context_features=3)
    with pytest.raises(ValueError, match="at least one context row"):
        ff.objectives.reverse_kl(flow, lambda x, c: -x.square().sum(-1), 4, torch.randn(0, 3))
    with pytest.raises(ValueError, match="takes no context"):
        ff.objectives.vi_diagnostics(flow, ff.targets.get("u1"), 4, torch.randn(2, 3))
    for kw in (dict(scale=0.0), dict(scale=1.0, weights=[1, -1]), dict(scale=1.0, weights=[1])):
        with pytest.raises(ValueError):
            ff.targets.gaussian_mixture([[0.0, 0.0], [1.0, 1.0]], **kw)
    with pytest.raises(ValueError, match="NaN"):
        ff.targets.grid_log_z(lambda x: x[:, 0] * float("nan"), (-1, 1, -1, 1), 10)


def _two_modes(x):
    """0.9 N((-3, -3), I) + 0.1 N((3, 3), I), normalised."""
    lp = torch.distributions.Normal(0.0, 1.0).log_prob
    a = lp(x + 3).sum(-1) + math.log(0.9)
    b = lp(x - 3).sum(-1) + math.log(0.1)
    return torch.logaddexp(a, b)


def _mixture_flow(base: str):
    from flowforge.distributions import GaussianMixture, MADEMoG

    torch.manual_seed(0)
    if base == "mixture":
        b = GaussianMixture(2, components=2)
        with torch.no_grad():
            b.loc.copy_(torch.tensor([[3.0, 3.0], [-3.0, -3.0]]))  # the light mode first
        logit = b.logits
    else:
        b = MADEMoG(2, components=2, hidden=(16,), spread=3.0)
        with torch.no_grad():
            for p in b.parameters():
                p.add_(0.3 * torch.randn_like(p))
        logit = b.made.out.bias  # its first entry: the first dimension's first weight's logit
    return ff.Flow(ff.transforms.Identity(2), b), logit


def test_reverse_kl_trains_a_mixture_bases_weights():
    # the component choice is discrete: without the score-function term the weights got a
    # gradient of expectation zero and moved only by Adam's noise (0.52 after 150 steps)
    flow, logits = _mixture_flow("mixture")
    opt = torch.optim.Adam(flow.parameters(), lr=3e-2)
    for _ in range(150):
        opt.zero_grad()
        ff.reverse_kl(flow, _two_modes, 128).backward()
        opt.step()
    w = torch.softmax(logits.detach(), 0)
    assert abs(w[1].item() - 0.9) < 0.03, w


@pytest.mark.parametrize("base", ["mixture", "made-mog"])
def test_the_choice_term_is_zero_in_value_and_unbiased(base):
    flow, logit = _mixture_flow(base)
    torch.manual_seed(3)
    with_term = ff.reverse_kl(flow, _two_modes, 64)
    torch.manual_seed(3)
    x, log_q = flow.rsample_and_log_prob(64)
    assert torch.allclose(with_term, (log_q - _two_modes(x)).mean())
    grads = []  # the mean estimate of d KL / d logit against a finite difference
    for _ in range(60):
        flow.zero_grad()
        ff.reverse_kl(flow, _two_modes, 512).backward()
        grads.append(logit.grad[0].item())
    g = torch.tensor(grads).mean().item()
    with torch.no_grad():
        kls = []
        for d in (0.02, -0.02):
            logit[0] += d
            torch.manual_seed(1)
            kls.append(ff.reverse_kl(flow, _two_modes, 200_000).item())
            logit[0] -= d
    fd = (kls[0] - kls[1]) / 0.04
    assert abs(fd) > 0.3 and abs(g - fd) < 0.1 * abs(fd) + 0.05, (g, fd)


def test_variational_inference_fixes_actnorm_as_it_trained():
    # ActNorm stayed uninitialised after VI, and the next training-mode log_prob overwrote
    # what it had learned (KL 0.012 -> 0.205)
    torch.manual_seed(0)
    flow = ff.Flow(
        ff.Compose([ff.transforms.ActNorm(2), ff.transforms.ActNorm(2)]),
        ff.distributions.StandardNormal(2),
    )
    target = torch.distributions.Normal(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]))
    opt = torch.optim.Adam(flow.parameters(), lr=5e-2)
    for _ in range(200):
        opt.zero_grad()
        ff.reverse_kl(flow, lambda x: target.log_prob(x).sum(-1), 64).backward()
        opt.step()
    before = [p.detach().clone() for p in flow.parameters()]
    assert all(bool(m.initialized) for m in flow.transform.layers)
    flow.train()
    with torch.no_grad():
        flow.log_prob(torch.randn(100, 2) * 10)
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters()))


def test_exact_residual_log_weights_are_batched(monkeypatch):
    # in eval mode "auto" is exact up to 128 dimensions already: nothing was switched, and the
    # 1,024-row cap on the (batch, D, D) Jacobian was lost (8,192 rows: 2.3 GB at D = 128)
    from flowforge import objectives

    sizes = []
    real = objectives._log_weights
    monkeypatch.setattr(
        objectives, "_log_weights", lambda f, t, m, c: sizes.append(m) or real(f, t, m, c)
    )
    flow = ff.models.ResidualFlow(features=20, blocks=1, hidden=(8,)).eval()
    target = lambda x: -0.5 * (x**2).sum(-1)  # noqa: E731
    objectives.log_importance_weights(flow, target, 2500, batch_size=4096)
    assert sizes == [1024, 1024, 452]


def test_reverse_kl_trains_the_weights_of_a_compiled_flow_too():
    flow, logits = _mixture_flow("mixture")
    grads = []
    for f in (flow, torch.compile(flow, backend="eager")):
        flow.zero_grad()
        torch.manual_seed(5)
        ff.reverse_kl(f, _two_modes, 256).backward()
        grads.append(logits.grad.clone())
    assert torch.allclose(grads[0], grads[1]) and grads[0].abs().max() > 0.05
    flow.zero_grad()
    ff.reverse_kl(flow, _two_modes, 1).backward()  # one sample: the term, without a baseline
    assert logits.grad.abs().max() > 0


def test_fit_target_leaves_the_callers_random_stream_and_its_seed_fixes_the_run():
    # H2: it reseeded the global torch stream, so "random restarts" came out identical
    from flowforge.workbench.vi import fit_target

    t = targets.get("u1")

    def run(seed):
        torch.manual_seed(123)
        flow = ff.models.Planar(features=2, layers=2)
        fit_target(flow, t, steps=3, batch_size=16, seed=seed)
        return torch.rand(3), torch.cat([p.detach().flatten() for p in flow.parameters()])

    torch.manual_seed(123)
    ff.models.Planar(features=2, layers=2)
    untouched = torch.rand(3)
    after0, w0 = run(0)
    after1, w1 = run(1)
    assert torch.equal(after0, untouched) and torch.equal(after1, untouched)
    assert not torch.equal(w0, w1)  # different seeds, different runs
    assert torch.equal(run(0)[1], w0)  # the same seed repeats the run


# -- an audit of VI from a scientist's view (2027-01) ----------------------------------------------


def _truncated(x):
    """N(0, I) unnormalised, restricted to x0 > -1: log Z = log(2 pi) + log Phi(1)."""
    lp = -0.5 * x.square().sum(-1)
    return torch.where(x[..., 0] > -1, lp, torch.full_like(lp, -math.inf))


def test_a_target_with_a_zero_density_region():
    # vi_diagnostics refused ("importance weights are not finite"); fit_target skipped every
    # step in silence, then blamed the learning rate, with torch's lr_scheduler warning
    import warnings

    from flowforge.workbench.vi import fit_target

    phi = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    flow = ff.models.build("realnvp", features=2, layers=2, hidden=(8,), standardize=False)
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match=r"the ELBO is -inf: .* at \d+ of 20000 of the flow"):
        d = vi_diagnostics(flow, _truncated, n=20000)  # (the flow is N(0, I) at first)
    assert d["log_z"] == pytest.approx(math.log(2 * math.pi) + math.log(phi), abs=0.02)
    assert d["ess"] == pytest.approx(phi, abs=0.01)
    assert d["elbo"] == -math.inf and d["reverse_kl"] == math.inf and d["elbo_se"] is None
    assert 0.14 < d["zero_density"] / 20000 < 0.18 and "puts mass where" in d["warnings"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no torch lr_scheduler warning either)
        said = r"-inf \(zero density\) at \d+ of 64 of the flow's samples .* positive everywhere"
        with pytest.raises(ff.objectives.ZeroDensity, match=said):
            fit_target(flow, _truncated, steps=5, batch_size=64)
    with pytest.raises(ValueError, match="at all 8 of the flow's samples"):
        vi_diagnostics(flow, lambda x: torch.full(x.shape[:-1], -math.inf), n=8)


def test_fit_target_names_a_bad_target_and_a_conditional_flow_in_one_line():
    # a list gave "TypeError: can't multiply sequence by non-int of type 'float'" (annealing);
    # a conditional flow gave only "expects a context ... got None"
    from flowforge.workbench.vi import fit_target

    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))

    def as_list(x):
        return (-0.5 * x.square().sum(-1)).tolist()

    for anneal in (0, 2):
        with pytest.raises(ValueError, match=r"target 'as_list' returned list, expected a tensor"):
            fit_target(flow, as_list, steps=2, batch_size=8, anneal=anneal)
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,), context_features=3)
    with pytest.raises(ValueError, match=r"fit_target fits unconditional flows; .* ff.reverse_kl"):
        fit_target(flow, targets.get("banana"), steps=2)


def test_fit_target_hints_name_its_own_options(capsys, tmp_path, monkeypatch):
    # they named "train.grad_clip" and "metrics.jsonl", which fit-target has not, and missed
    # the default annealing, the real cause of a funnel fit's divergence
    # (MAF's own default width: the width fit-target sizes an unset one to fits the funnel)
    big = '{"hidden": [128, 128, 128], "residual": true}'
    rc, _, err = cli(capsys, "fit-target", "--target", "funnel", "--model", "maf", "--steps", 10,
                     "--model-kwargs", big, "--out", tmp_path / "a", "--quiet")  # fmt: skip
    one_line_error(rc, err, "during the annealing")
    assert "a shorter --anneal (0: off) or a lower --lr may help" in err, err
    assert "grad_clip" not in err and "at step 2" in err
    assert "(zero density, or an underflow)" in err
    from flowforge.workbench import trainer as trainer_module
    from flowforge.workbench.vi import fit_target

    monkeypatch.setattr(trainer_module._Watch, "check", lambda self, loss, norm: "a loss spike")
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))
    with pytest.warns(trainer_module.TrainingWarning) as warned:
        fit_target(flow, targets.get("banana"), steps=6, batch_size=16)
    err = " ".join(str(w.message) for w in warned)
    said = "5 loss spikes so far: further ones are not shown (a lower lr or grad_clip may help)"
    assert said in err
    assert "metrics.jsonl" not in err


def test_log_z_has_a_standard_error_and_a_low_ess_is_said():
    # log Z came without an uncertainty (the ELBO had one); a low ESS was said by the CLI only
    flow = ff.models.build("realnvp", features=2, layers=2, hidden=(8,), standardize=False)

    def narrow(x):  # N(0, 0.7² I) times e^{1.5}: log Z = 1.5, weights of finite variance
        return 1.5 - 0.5 * (x / 0.7).square().sum(-1) - 2 * math.log(0.7) - math.log(2 * math.pi)

    torch.manual_seed(0)
    runs = [vi_diagnostics(flow, narrow, n=400) for _ in range(300)]
    spread = torch.tensor([d["log_z"] for d in runs]).std().item()
    se = sum(d["log_z_se"] for d in runs) / len(runs)
    assert se == pytest.approx(spread, rel=0.15)  # the delta method is the sampling spread
    mean = sum(d["log_z"] for d in runs) / len(runs)
    assert abs(mean - 1.5) < 3 * spread / len(runs) ** 0.5 + 0.01
    assert not runs[0]["warnings"] and vi_diagnostics(flow, narrow, n=1)["log_z_se"] is None

    def far(x):  # all its mass 6 standard deviations away: a tiny ESS
        return -0.5 * ((x - 6) / 0.3).square().sum(-1)

    d = vi_diagnostics(flow, far, n=500)
    assert d["ess"] < 0.1 and "log Z (and its standard error) is unreliable" in d["warnings"][0]
    from flowforge.workbench.vi import summary_line

    line = summary_line({**runs[0], "kl": None})
    assert f"log Z (IS) {runs[0]['log_z']:.4f} +- {runs[0]['log_z_se']:.4f}" in line
    assert line.endswith(
        f"ESS {runs[0]['ess']:.3f}, Pareto k {runs[0]['pareto_k']:.2f} (400 samples)"
    )


def test_a_target_of_your_own_from_the_command_line(capsys, tmp_path):
    # it worked only by writing into ff.targets.TARGETS, undocumented
    src = (
        "import math, torch, flowforge as ff\n"
        "def fn(x):  # N((1, -1), 0.5² I) times e^3: log Z = 3\n"
        "    z = (x - torch.tensor([1.0, -1.0])) / 0.5\n"
        "    return 3.0 - 0.5 * z.square().sum(-1) - 2 * math.log(0.5) - math.log(2 * math.pi)\n"
        "ff.targets.register('Mine', fn, dim=2, log_z=3.0, description='a shifted Gaussian')\n"
    )
    (tmp_path / "mytarget.py").write_text(src)
    try:
        rc, out, err = cli(capsys, "fit-target", "--import", tmp_path / "mytarget.py", "--target",
                           "mine", "--model", "realnvp", "--steps", 60, "--n-eval", 2000,
                           "--out", tmp_path / "run", "--quiet")  # fmt: skip
        assert rc == 0, err
        assert "log Z (grid/exact) 3.0000" in out and targets.get("MINE").log_z == 3.0
        fn = targets.get("mine").fn
        with pytest.raises(ValueError, match="a target 'mine' is registered already"):
            targets.register("mine", fn, dim=2, log_z=3.0)
    finally:
        targets.TARGETS.pop("mine", None)
    with pytest.raises(ValueError, match="a target 'u1' is registered already"):
        targets.register("U1", fn, dim=2)
    with pytest.raises(TypeError, match="expected log_prob to be a function"):
        targets.register("x", 3.0, dim=2)
    with pytest.raises(ValueError, match="expected a target name without spaces"):
        targets.register("my target", fn, dim=2)
    with pytest.raises(ValueError, match="needs box="):
        targets.register("x", fn, dim=2)
    with pytest.raises(ValueError, match="expected dim to be an integer >= 1"):
        targets.register("x", fn, dim=0)
    assert "x" not in targets.TARGETS


def _vi_doc() -> str:
    from pathlib import Path

    return " ".join((Path(__file__).resolve().parents[1] / "docs" / "vi.md").read_text().split())


def test_the_vi_tables_caption_states_its_largest_standard_error():
    # the caption said "the ELBO's standard error is <= 0.01" over cells of up to 0.019
    import re
    from pathlib import Path

    bound = re.search(r"the ELBO's standard error is at most ([0-9.]+)", _vi_doc())
    results = Path(__file__).resolve().parents[1] / "docs" / "img" / "vi_results.json"
    worst = max(c["elbo_se"] for c in json.loads(results.read_text()).values())
    assert bound is not None and worst <= float(bound.group(1)) < worst + 0.001


def test_the_docs_say_the_ess_cannot_see_a_mode_the_flow_never_visits():
    # they said "the ESS is the diagnostic that exposes the missed mass"; a flow on one of two
    # equal modes has an ESS of about 1 and a log Z short by log 2, and nothing flags it
    doc = _vi_doc()
    assert "exposes the missed mass" not in doc and "It cannot expose a mode the flow never" in doc
    mixture = ff.targets.gaussian_mixture([[-5.0, 0.0], [5.0, 0.0]], 0.5)

    class OneMode(torch.nn.Module):  # q = the mode at (5, 0), exactly
        def rsample_and_log_prob(self, n, context=None):
            q = torch.distributions.Normal(torch.tensor([5.0, 0.0], dtype=F64), 0.5)
            x = q.sample((n,))
            return x, q.log_prob(x).sum(-1)

    torch.manual_seed(0)
    d = vi_diagnostics(OneMode(), mixture, n=4000)
    assert d["ess"] > 0.99 and not d["warnings"]
    assert d["log_z"] == pytest.approx(-math.log(2), abs=0.01)


def test_a_context_whose_target_is_zero_wherever_the_flow_samples_is_named():
    """With contexts, one context at zero density on all its samples gave the ESS's generic
    "every importance weight is zero"; the message now names the context."""
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,), context_features=1)

    def target(x, c):
        lp = -0.5 * x.square().sum(-1) - math.log(2 * math.pi)
        return torch.where(c[..., 0] > 0.5, torch.full_like(lp, -math.inf), lp)

    with pytest.raises(ValueError, match=r"at all 50 of the flow's samples for context 1"):
        ff.objectives.vi_diagnostics(flow, target, n=50, context=torch.tensor([[0.0], [1.0]]))
