"""Flow matching (``flowforge.matching``): the paths, the exact assignment, the likelihood and
sampling against a velocity field known in closed form, training end to end (with a context),
the workbench objective and the CLI, and every refused input. (The contract of the CNF it
trains is checked by the generic test, through ``cases/flowmatching.py``.)"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import flowforge as ff
from flowforge import matching as M
from flowforge.transforms import CNF, ODEStepBudgetError
from flowforge.workbench import FlowMatchingObjective, Trainer, WorkbenchError
from flowforge.workbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=F64)
SD = torch.tensor([0.5, 2.0], dtype=F64)


class GaussianVelocity(nn.Module):
    """The marginal velocity of flow matching's linear path from ``N(MEAN, SD^2)`` data to
    ``N(0, I)`` noise, in closed form: ``x_s ~ N(mu_s, sd_s^2)`` with ``mu_s = (1 - s) MEAN``,
    ``sd_s^2 = (1 - s)^2 SD^2 + s^2``, so ``v = mu_s' + sd_s' / sd_s (x - mu_s)``. The CNF
    with this field maps the data's Gaussian exactly to the standard normal."""

    def forward(self, t, z, context=None):
        s = t.to(z).reshape(-1, 1)
        mu, dmu = (1 - s) * MEAN, -MEAN
        var = (1 - s) ** 2 * SD**2 + s**2
        dsd = (-(1 - s) * SD**2 + s) / var.sqrt()
        return dmu + dsd / var.sqrt() * (z - mu)


def gaussian_flow(**kw) -> ff.Flow:
    cnf = CNF(2, net=GaussianVelocity(), rtol=1e-9, atol=1e-9, **kw)
    return ff.Flow(cnf, ff.distributions.StandardNormal((2,))).to(F64)


def true_log_prob(x):
    return torch.distributions.Normal(MEAN, SD).log_prob(x).sum(-1)


# -- paths, loss, assignment ---------------------------------------------------------------------


@pytest.mark.parametrize("path", M.PATHS)
def test_path_targets_are_the_paths_time_derivatives(path):
    torch.manual_seed(0)
    y, e = torch.randn(16, 3, dtype=F64), torch.randn(16, 3, dtype=F64)
    s = torch.rand(16, dtype=F64) * 0.98 + 0.01
    h = 1e-6
    xp, target = M._path(path, y, e, s + h)
    xm, _ = M._path(path, y, e, s - h)
    x0, target = M._path(path, y, e, s)
    assert torch.allclose((xp - xm) / (2 * h), target, atol=1e-7)
    a, b = M._path(path, y, e, torch.zeros(16, dtype=F64))[0], M._path(path, y, e, s * 0 + 1)[0]
    assert torch.allclose(a, y) and torch.allclose(b, e, atol=1e-12)  # data at 0, noise at 1


def test_the_true_velocity_minimises_the_loss_and_gradients_reach_only_the_cnf_network():
    torch.manual_seed(0)
    flow = gaussian_flow()
    x = MEAN + SD * torch.randn(20000, 2, dtype=F64)
    torch.manual_seed(1)  # (not 0: the noise would repeat the draws that made x)
    best = M.FlowMatching()(flow, x).item()
    for scale in (0.8, 1.2):
        net = flow.transform.net
        flow.transform.net = _Scaled(net, scale)
        torch.manual_seed(1)
        assert M.FlowMatching()(flow, x).item() > best + 1e-3
        flow.transform.net = net
    model = ff.models.build("cnf", features=2, hidden=(8,))
    model.train()
    loss = M.FlowMatching(path="vp", sigma=0.01)(model, torch.randn(32, 2))
    loss.backward()
    *fixed, cnf = model.transform.layers  # DataStandardize, ActNorm: fixed preprocessing
    assert all(p.grad is None for layer in fixed for p in layer.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cnf.parameters())


class _Scaled(nn.Module):
    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, t, z, context=None):
        return self.scale * self.net(t, z, context)


def test_the_assignment_is_exact_against_every_permutation():
    rng = np.random.default_rng(0)
    for n in range(1, 7):
        for _ in range(10):
            c = rng.random((n, n))
            p = M.assignment(c)
            best = min(c[np.arange(n), list(q)].sum() for q in itertools.permutations(range(n)))
            assert sorted(p) == list(range(n))
            assert abs(c[np.arange(n), p].sum() - best) < 1e-12
    y, e = torch.randn(64, 2), torch.randn(64, 2)
    paired = M.ot_pairing(y, e)
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, e.tolist()))
    assert (y - paired).square().sum() < (y - e).square().sum()
    with pytest.raises(ValueError, match="square"):
        M.assignment(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        M.assignment(np.array([[0.0, np.nan], [1.0, 0.0]]))


# -- likelihood and sampling against the closed-form field ---------------------------------------


def test_exact_likelihood_through_the_ode_is_the_data_density():
    flow = gaussian_flow()
    x = MEAN + SD * torch.randn(64, 2, dtype=F64)
    r = M.log_likelihood(flow, x, rtol=1e-9, atol=1e-9)
    assert (r.log_prob - true_log_prob(x)).abs().max() < 1e-6
    assert r.nfe > 0 and r.method == "dopri5" and r.samples == 1 and r.trace == "exact"
    assert "K=1" in r.describe() and "NFE" in r.describe()
    # a diagonal Jacobian: Hutchinson with Rademacher noise is exact, Gaussian noise is not
    flow.transform.noise = "rademacher"
    r = M.log_likelihood(flow, x, rtol=1e-9, atol=1e-9, trace="hutchinson")
    assert (r.log_prob - true_log_prob(x)).abs().max() < 1e-6
    flow.transform.noise = "gaussian"
    r = M.log_likelihood(flow, x, rtol=1e-9, atol=1e-9, trace="hutchinson")
    assert (r.log_prob - true_log_prob(x)).abs().max() > 1e-3  # an estimate per draw...
    draws = [M.log_likelihood(flow, x, trace="hutchinson", seed=k).mean for k in range(40)]
    assert abs(np.mean(draws) - true_log_prob(x).mean().item()) < 0.05  # ...unbiased
    assert flow.transform.trace == "exact" and flow.transform.rtol == 1e-9  # restored


def test_fixed_step_and_adaptive_sampling():
    flow = gaussian_flow()
    torch.manual_seed(0)
    x = M.sample(flow, 4000, method="rk4", steps=8)
    assert M.nfe(flow) == 32
    assert (x.mean(0) - MEAN).abs().max() < 0.1 and (x.std(0) / SD - 1).abs().max() < 0.05
    M.sample(flow, 10, method="euler", steps=1)
    assert M.nfe(flow) == 1
    M.sample(flow, 10, steps=3)  # steps without a method: rk4
    assert M.nfe(flow) == 12
    z = torch.randn(200, 2, dtype=F64)
    ex = MEAN + SD * z  # the exact map pushes noise to MEAN + SD * noise
    err = []
    for steps in (2, 8):
        with M.solver(flow, "euler", steps=steps), torch.no_grad():
            err.append((flow.transform.inverse(z)[0] - ex).abs().max().item())
    assert err[1] < err[0] / 2  # more steps, closer to the exact map
    with M.solver(flow, "dopri5"), torch.no_grad():
        assert (flow.transform.inverse(z)[0] - ex).abs().max() < 1e-6


def test_the_dequantization_bound_states_k_and_tightens_with_it():
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(8,), levels=4, preprocess="scale")
    x = torch.randint(0, 4, (200, 2))
    one = M.log_likelihood(flow, x, rtol=1e-4, atol=1e-4, seed=3)
    torch.manual_seed(3)
    with torch.no_grad(), M.solver(flow, rtol=1e-4, atol=1e-4):
        flow.eval()
        direct = flow.log_prob(x).double()
    assert torch.allclose(one.log_prob, direct, atol=1e-6)
    eight = M.log_likelihood(flow, x, rtol=1e-4, atol=1e-4, samples=8, seed=3)
    assert eight.samples == 8 and "K=8" in eight.describe()
    assert eight.mean > one.mean
    with pytest.raises(ValueError, match="no dequantizer"):
        M.log_likelihood(gaussian_flow(), torch.zeros(2, 2), samples=2)


# -- training end to end -------------------------------------------------------------------------


def _fit(flow, x, c=None, steps=300, lr=1e-2):
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    loss_fn = M.FlowMatching()
    flow.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(x), (128,), generator=g)
        loss = loss_fn(flow, x[i], None if c is None else c[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow


def test_flow_matching_learns_a_gaussian_to_within_a_tenth_of_a_nat():
    torch.manual_seed(0)
    x = (MEAN + SD * torch.randn(4000, 2, dtype=F64)).float()
    flow = _fit(ff.models.build("cnf", features=2, hidden=(32, 32), activation="silu"), x)
    r = M.log_likelihood(flow, x[:500], rtol=1e-5, atol=1e-5)
    assert abs(r.mean - true_log_prob(x[:500].double()).mean().item()) < 0.1


def test_a_conditional_flow_learns_its_context():
    torch.manual_seed(0)
    c = torch.randint(0, 2, (4000, 1)).float() * 2 - 1
    x = 2 * c * torch.ones(1, 2) + 0.3 * torch.randn(4000, 2)
    flow = ff.models.build("cnf", features=2, hidden=(32, 32), context_features=1)
    _fit(flow, x, c)
    right = M.log_likelihood(flow, x[:200], c[:200], rtol=1e-4, atol=1e-4).mean
    wrong = M.log_likelihood(flow, x[:200], -c[:200], rtol=1e-4, atol=1e-4).mean
    assert right > wrong + 5
    s = M.sample(flow, 100, torch.tensor([[1.0], [-1.0]]), method="rk4", steps=8)
    assert s.shape == (100, 2, 2)
    assert s[:, 0].mean(0).sub(2).abs().max() < 0.5 and s[:, 1].mean(0).add(2).abs().max() < 0.5


def test_the_trainer_objective_by_name_object_and_callable():
    torch.manual_seed(0)
    x = torch.randn(256, 2) * 0.5 + 1
    cfg = {"epochs": 2, "batch_size": 64, "warmup_steps": 0}
    for objective in ("flow-matching-vp", FlowMatchingObjective(ot=True), M.FlowMatching()):
        flow = ff.models.build("cnf", features=2, hidden=(8,))
        t = Trainer(flow, x, x[:64], cfg, objective=objective, progress=False, echo=False)
        out = t.fit()
        assert out["status"] == "finished" and math.isfinite(out["best_val"])
        assert bool(flow.transform.layers[0].initialized)  # the ActNorm saw the data
        # its loss is no likelihood: no NLL, no bits/dim in the summary
        assert out["objective"].startswith("flow-matching") and out["best_val_nll"] is None
        assert out["best_val_bpd"] is None
    # the library's loss object is the flow-matching objective: its checks, fm_time_power
    flow = ff.models.build("cnf", features=2, hidden=(8,))
    t = Trainer(flow, x, x[:64], {**cfg, "fm_time_power": 2.0}, objective=M.FlowMatching(ot=True),
                progress=False, echo=False)  # fmt: skip
    assert t.objective.fm.ot and t.objective.fm.times == ("power", 0.0, 1.0, 2.0)
    with pytest.raises(WorkbenchError, match="both set the path's times"):
        Trainer(flow, x, x, {**cfg, "fm_time_power": 2.0}, progress=False,
                objective=M.FlowMatching(times="logit-normal"))  # fmt: skip
    with pytest.raises(WorkbenchError, match="no CNF"):
        Trainer(ff.models.RealNVP(features=2, layers=2, hidden=(8,)), x, x,
                cfg, objective=M.FlowMatching(), progress=False)  # fmt: skip
    with pytest.raises(WorkbenchError, match="no CNF"):
        Trainer(ff.models.RealNVP(features=2, layers=2, hidden=(8,)), x, x,
                cfg, objective="flow-matching", progress=False)  # fmt: skip


def test_the_cli_trains_a_cnf_by_flow_matching_and_refuses_other_models(tmp_path, capsys):
    common = ["train", "--data", "moons", "--limit", "256", "--epochs", "1", "--no-progress"]
    rc = main([*common, "--model", "cnf", "--model-kwargs", '{"hidden": [8]}',
               "--objective", "flow-matching", "--out", str(tmp_path / "a")])  # fmt: skip
    assert rc == 0
    assert "best val flow-matching loss" in capsys.readouterr().out  # not called an NLL
    assert main(["eval", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()  # how it was scored, and at what cost
    assert lines[-1].startswith("ODE: dopri5, rtol 1e-05, atol 1e-05, exact trace; ")
    assert "function evaluations per solve (max " in lines[-1]
    took = float(lines[-1].split(" solve, ")[1].split(" s)")[0])  # the scoring's wall time
    assert 0 <= took < 600
    rc = main([*common, "--model", "maf", "--objective", "flow-matching",
               "--out", str(tmp_path / "b")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no CNF" in err[0]
    rc = main([*common, "--model", "cnf", "--objective", "flow-match", "--out", str(tmp_path)])
    assert rc != 0 and "flow-matching" in capsys.readouterr().err


def test_eval_reports_the_scoring_solver_of_a_ffjord_trained_loosely(tmp_path, capsys):
    import json

    run = tmp_path / "ffjord"
    kw = '{"hidden": [8], "trace": "hutchinson", "rtol": 0.001, "atol": 0.001}'
    rc = main(["train", "--data", "moons", "--limit", "128", "--epochs", "1", "--no-progress",
               "--model", "ffjord", "--model-kwargs", kw, "--out", str(run)])  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--batch-size", "400", "--json"]) == 0
    ode = json.loads(capsys.readouterr().out)["ode"]
    # scored with the exact trace at 1e-5 whatever the training settings; the 1000 test
    # points in batches of 400: three solves
    assert ode["trace"] == "exact" and ode["rtol"] == ode["atol"] == 1e-5
    assert ode["method"] == "dopri5" and ode["steps"] is None and ode["blocks"] == 1
    assert ode["solves"] == 3 and 0 < ode["nfe_mean"] <= ode["nfe_max"]
    # faster scoring on request: Hutchinson's estimate, a looser tolerance; said in the result
    args = ["eval", str(run), "--json", "--trace", "hutchinson", "--ode-tol", "1e-3"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ode"]["trace"] == "hutchinson" and res["ode"]["rtol"] == 1e-3
    assert math.isfinite(res["nll"]) and res["ode"]["nfe_mean"] <= ode["nfe_mean"]
    assert main(["eval", str(run), "--trace", "hutchinson"]) == 0
    assert "Hutchinson's trace gives an unbiased estimate" in capsys.readouterr().out
    for bad in ("0", "nan", "-1", "1", "1e300", "1e-30"):
        assert main(["eval", str(run), "--ode-tol", bad]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "ODE tolerance must be a number in [1e-12, 1)" in err[0]


def test_eval_refuses_ode_settings_for_a_flow_without_an_ode(tmp_path, capsys):
    from cli_support import one_line_error, tiny_moons_run

    run = tiny_moons_run(capsys, tmp_path / "rnvp")
    for extra in (["--trace", "hutchinson"], ["--ode-tol", "1e-3"]):
        rc = main(["eval", str(run), *extra])
        one_line_error(rc, capsys.readouterr().err, "has no ODE")
    assert main(["eval", str(run)]) == 0
    assert "ODE:" not in capsys.readouterr().out


def test_the_cli_samples_a_cnf_with_the_solver_and_steps_asked_for(tmp_path, capsys):
    run = tmp_path / "cnf"
    rc = main(["train", "--data", "moons", "--limit", "256", "--epochs", "1", "--no-progress",
               "--model", "cnf", "--model-kwargs", '{"hidden": [8]}', "--objective",
               "flow-matching", "--out", str(run)])  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    got = {}
    for name, extra in (("rk4", ["--ode-method", "rk4", "--ode-steps", "3"]),
                        ("steps", ["--ode-steps", "3"]), ("euler", ["--ode-method", "euler",
                        "--ode-steps", "5"]), ("tol", ["--ode-tol", "1e-3"]),
                        ("grid", ["--ode-method", "rk4"]), ("default", [])):  # fmt: skip
        out = tmp_path / f"{name}.npy"
        assert main(["sample", str(run), "-n", "16", "--out", str(out), *extra]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        got[name] = np.load(out)
        assert got[name].shape == (16, 2) and np.isfinite(got[name]).all()
        if name in ("rk4", "steps"):  # rk4 is the default fixed-grid solver: 4 stages a step
            assert lines[-1] == "ODE: rk4, 3 steps, 12 function evaluations in the last solve"
        elif name == "euler":
            assert lines[-1] == "ODE: euler, 5 steps, 5 function evaluations in the last solve"
        elif name == "tol":
            assert lines[-1].startswith("ODE: dopri5, rtol 0.001, atol 0.001, ")
        elif name == "grid":  # a fixed-grid solver without --ode-steps: its default grid of 10
            assert lines[-1] == "ODE: rk4, 10 steps, 40 function evaluations in the last solve"
        else:
            assert not lines[-1].startswith("ODE:")  # the model's own solver, nothing to say
    np.testing.assert_array_equal(got["rk4"], got["steps"])  # same seed, same solver
    assert not np.array_equal(got["rk4"], got["euler"])  # the solver was used
    refused = (
        (["--ode-steps", "0"], "--ode-steps must be an integer in [1, 1,000]"),
        (["--ode-steps", "5000"], "--ode-steps must be an integer in [1, 1,000] (the model's"),
        (["--ode-method", "nope"], "unknown ODE solver 'nope'"),
        (["--ode-tol", "0"], "--ode-tol must be a number in [1e-12, 1)"),
        (["--ode-tol", "1e300"], "--ode-tol must be a number in [1e-12, 1)"),
        (["--ode-tol", "1e-30"], "--ode-tol must be a number in [1e-12, 1)"),
        (["--ode-method", "dopri5", "--ode-steps", "4"], "--ode-method dopri5 is adaptive"),
        (["--ode-method", "euler", "--ode-tol", "1e-3"], "euler steps on a fixed grid"),
        (["--inverse", "parallel"], "this run's model has none"),
    )
    for extra, needle in refused:
        rc = main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "x.npy"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
        assert not (tmp_path / "x.npy").exists()
    # a solve over its step budget: one line, with what the command offers against it
    rc = main(
        ["sample", str(run), "-n", "4", "--out", str(tmp_path / "b.npy"), "--ode-tol", "1e-12"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "exceeded its step budget" in err[0]
    assert err[0].endswith("from this command: a looser --ode-tol, or a fixed grid (--ode-steps N)")
    maf = tmp_path / "maf"
    rc = main(["train", "--data", "moons", "--limit", "256", "--epochs", "1", "--no-progress",
               "--model", "maf", "--out", str(maf)])  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    rc = main(["sample", str(maf), "-n", "4", "--out", str(tmp_path / "m.npy"), "--ode-steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "this run's model has none" in err[0]


def test_the_cli_states_the_grid_blocks_and_budget_remedy_of_what_it_solved(tmp_path, capsys):
    """The sample line counts the grid as solved (a step that does not divide T: one more,
    shortened), the evaluations of each block of a multi-block FFJORD, and eval's step-budget
    error ends with the remedy eval offers."""

    def train(name, model, kwargs, *extra):
        rc = main(["train", "--data", "moons", "--limit", "256", "--epochs", "1", "--no-progress",
                   "--quiet", "--model", model, "--model-kwargs", kwargs, *extra, "--out",
                   str(tmp_path / name)])  # fmt: skip
        assert rc == 0
        capsys.readouterr()
        return str(tmp_path / name)

    def sample(run, *extra):
        assert main(["sample", run, "-n", "1", "--out", str(tmp_path / "x.npy"),
                     "--overwrite", *extra]) == 0  # fmt: skip
        return capsys.readouterr().out.strip().splitlines()

    grid = train("grid", "cnf", '{"hidden": [8], "step_size": 0.3}', "--objective", "flow-matching")
    assert sample(grid, "--ode-method", "rk4") == [
        f"wrote 1 sample to {tmp_path / 'x.npy'}",
        "ODE: rk4, 4 steps, 16 function evaluations in the last solve",
    ]
    assert sample(grid, "--ode-method", "euler")[-1] == (
        "ODE: euler, 4 steps, 4 function evaluations in the last solve"
    )
    two = train("two", "ffjord", '{"hidden": [8], "blocks": 2}')
    assert sample(two, "--ode-steps", "3")[-1] == (
        "ODE: rk4, 3 steps, 12 function evaluations in the last solve of each of its 2 blocks"
    )
    fourier = train("fourier", "cnf", '{"hidden": [8], "space_features": 4, "space_scale": 4.0}',
                    "--objective", "flow-matching")  # fmt: skip
    np.save(tmp_path / "few.npy", np.array([[0.5, 0.25]], dtype=np.float32))
    rc = main(["eval", fourier, "--data", str(tmp_path / "few.npy"), "--ode-tol", "1e-12"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "exceeded its step budget" in err[0]
    assert err[0].endswith("; from this command: a looser --ode-tol")


def test_far_inputs_sigma_and_empty_conditional_draws_are_errors_or_right():
    """A log-density that overflows to -inf is an error naming the example, never a mean of
    -inf; a sigma whose noise overflows the loss is refused; zero draws for a context are an
    empty tensor."""
    flow = ff.models.build("cnf", features=2, hidden=(8,))
    M.FlowMatching()(flow, torch.randn(64, 2))  # the ActNorm's initialisation
    far = torch.tensor([[0.5, 0.5], [3e19, 0.0]])
    import flowforge.objectives as objectives

    with pytest.MonkeyPatch.context() as mp:  # (where a float64 copy overflows too)
        mp.setattr(objectives, "_in_float64", lambda *a, **k: None)
        with pytest.raises(
            ValueError,
            match=r"non-finite log-density \(-inf\) to 1 example\(s\), first at indices \[1\]",
        ):
            M.log_likelihood(flow, far)
    lp = M.log_likelihood(flow, far).log_prob  # (else scored again in float64: finite)
    assert torch.isfinite(lp).all() and lp[1] < -1e30
    with pytest.raises(
        ValueError, match="sigma=1e[+]300 is too large for the flow's torch.float32"
    ):
        M.FlowMatching(sigma=1e300)(flow, torch.randn(8, 2))
    assert torch.isfinite(M.FlowMatching(sigma=1e3)(flow, torch.randn(8, 2)))
    fc = ff.models.build("cnf", features=2, hidden=(8,), context_features=3).eval()
    assert M.sample(fc, 0, torch.randn(2, 3)).shape == (0, 2, 2)
    assert M.sample(fc, 0, torch.randn(3)).shape == (0, 2)
    maf = ff.models.build("maf", features=2, context_features=3)
    assert maf.sample((0,), torch.randn(2, 3)).shape == (0, 2, 2)


# -- refused input -------------------------------------------------------------------------------


def test_bad_solver_settings_are_refused_with_one_clear_error():
    flow = gaussian_flow()
    x = torch.zeros(2, 2, dtype=F64)
    cases = [
        (dict(method="dopri7"), "unknown ODE solver 'dopri7'"),
        (dict(method="rk4", steps=0), "steps >= 1"),
        (dict(method="euler", steps=-3), "steps >= 1"),
        (dict(method="euler", steps=2.5), "steps >= 1"),
        (dict(method="dopri5", steps=10), "adaptive"),
        (dict(rtol=0.0), "rtol > 0"),
        (dict(atol=-1e-5), "atol > 0"),
        (dict(rtol=float("nan")), "rtol > 0"),
        (dict(trace="approx"), "unknown trace"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            M.log_likelihood(flow, x, **kw)
        if "trace" not in kw:
            with pytest.raises(ValueError, match=msg):
                M.sample(flow, 2, **kw)
    assert flow.transform.method == "dopri5" and flow.transform.rtol == 1e-9  # untouched
    with pytest.raises(ValueError, match="rtol > 0"):
        CNF(2, rtol=0)
    with pytest.raises(ValueError, match="step_size > 0"):
        CNF(2, method="rk4", step_size=-0.1)
    with pytest.raises(ValueError, match="no CNF"):
        with M.solver(ff.models.RealNVP(features=2, layers=1, hidden=(4,)), "rk4"):
            pass


def test_a_solve_past_its_step_budget_stops_with_a_clear_error():
    flow = gaussian_flow()
    with pytest.raises(ODEStepBudgetError, match="step budget"):
        M.log_likelihood(flow, torch.randn(4, 2, dtype=F64), rtol=1e-12, atol=1e-12, max_steps=1)
    with pytest.raises(ODEStepBudgetError, match="step budget"):
        M.sample(flow, 4, rtol=1e-12, atol=1e-12, max_steps=1)
    assert flow.transform.max_steps == 1000  # restored after the error


def test_flow_matching_refuses_models_it_cannot_train():
    x = torch.randn(8, 2)
    fm = M.FlowMatching()
    bad = [
        (ff.models.RealNVP(features=2, layers=2, hidden=(8,)), "no CNF"),
        (ff.models.FFJORD(features=2, blocks=2, hidden=(8,)), "one CNF; this flow has 2"),
        (ff.models.build("cnf", features=2, hidden=(8,), base="diag"), "fixed base"),
        (
            ff.Flow(
                ff.Compose(CNF(2, hidden=(4,)), ff.transforms.Reverse(2)),
                ff.distributions.StandardNormal((2,)),
            ),
            "last transform",
        ),
        (
            ff.Flow(
                ff.Compose(ff.transforms.LULinear(2), CNF(2, hidden=(4,))),
                ff.distributions.StandardNormal((2,)),
            ),
            "LULinear before it has trainable parameters",
        ),
        (nn.Linear(2, 2), "got Linear"),
    ]
    for model, msg in bad:
        with pytest.raises(ValueError, match=msg):
            fm(model, x)
    flow = ff.models.build("cnf", features=2, hidden=(4,), levels=4, dequantization="variational")
    with pytest.raises(ValueError, match="variational dequantizer"):
        fm(flow, torch.randint(0, 4, (8, 2)))
    cond = ff.models.build("cnf", features=2, hidden=(4,), context_features=1)
    with pytest.raises(ValueError, match="OT pairing"):
        M.FlowMatching(ot=True)(cond, x, torch.zeros(8, 1))
    for kw, msg in [
        (dict(path="cosine"), "unknown flow-matching path"),
        (dict(sigma=-0.1), "sigma >= 0"),
        (dict(sigma=float("inf")), "sigma >= 0"),
        (dict(ot="yes"), "ot to be True or False"),
    ]:
        with pytest.raises(ValueError, match=msg):
            M.FlowMatching(**kw)


def test_eval_refuses_the_importance_weighted_bound_over_hutchinson_estimates(tmp_path, capsys):
    # log-mean-exp of K noisy, unbiased estimates of log p comes out too high: an optimistic
    # NLL that is not a bound (0.2 nats on digits). The mean of K draws stays allowed.
    from cli_support import one_line_error

    run = tmp_path / "fm-digits"
    rc = main(["train", "--model", "cnf", "--data", "digits", "--objective", "flow-matching",
               "--limit", "64", "--epochs", "1", "--model-kwargs", '{"hidden": [8]}',
               "--out", str(run), "--no-progress", "--quiet"])  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    rc = main(["eval", str(run), "--samples", "2", "--iw", "--trace", "hutchinson"])
    one_line_error(rc, capsys.readouterr().err, "--iw needs each draw's log-density exactly",
                   "use --trace exact")  # fmt: skip


def test_log_likelihood_checks_discrete_values_as_given_and_counts_nfe_per_solve():
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(8,), levels=17)
    M.FlowMatching()(flow, torch.randint(0, 17, (64, 2)).float())  # (the ActNorm's start)
    bad = torch.tensor([[16.0000001, 3.0]], dtype=torch.float64)  # float32 rounds it to 16
    with pytest.raises(ValueError, match=r"expected discrete data in \[0, 16\]"):
        M.FlowMatching()(flow, bad.repeat(4, 1))
    flow.eval()
    with pytest.raises(ValueError, match=r"expected discrete data in \[0, 16\]"):
        M.log_likelihood(flow, bad)
    # two CNF blocks, 4 rk4 steps each: 16 evaluations per solve, not their sum
    two = ff.models.FFJORD(features=2, blocks=2, hidden=(8,))
    two.log_prob(torch.randn(64, 2))
    r = M.log_likelihood(two.eval(), torch.randn(5, 2), method="rk4", steps=4)
    assert r.nfe == 16 and "NFE 16 per solve" in r.describe()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_fixed_grid_of_n_steps_takes_n_steps(dtype):
    # torchdiffeq counts the grid's steps in the state's dtype, where 61 * (1 / 61) can round
    # past the end and add a step of nearly zero length (61 rk4 steps took 248 evaluations)
    flow = gaussian_flow().to(dtype)
    for method, per, n in (("rk4", 4, 61), ("euler", 1, 61), ("euler", 1, 49), ("euler", 1, 109)):
        M.sample(flow, 3, method=method, steps=n)
        assert M.nfe(flow) == per * n, (method, n)
        r = M.log_likelihood(flow, torch.randn(3, 2, dtype=dtype), method=method, steps=n)
        assert r.nfe == per * n and r.steps == n


def test_a_fixed_grids_likelihood_is_said_to_be_no_density():
    # 10 euler steps read 0.36 nats better than dopri5 on a table model, without a word
    flow = ff.models.build("cnf", features=2, hidden=(8,))
    x = torch.randn(16, 2)
    with pytest.warns(UserWarning, match="fixed grid of 4 rk4 step"):
        r = M.log_likelihood(flow, x, method="rk4", steps=4)
    assert "a fixed grid, not a normalised density" in r.describe()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the adaptive default: no such word)
        M.log_likelihood(flow, x)


def test_flow_matching_says_maximum_likelihoods_options_wait_and_keeps_its_times(tmp_path, capsys):
    from cli_support import cli

    kw = '{"hidden": [8], "regularization": {"kinetic": 0.01}, "adjoint": true}'
    rc, _, err = cli(capsys, "train", "--model", "ffjord", "--objective", "flow-matching",
                     "--data", "moons", "--limit", 64, "--epochs", 1, "--model-kwargs", kw,
                     "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    assert rc == 0, err  # (a run from it by nll uses them: said, not refused)
    assert "regularization (RNODE) and adjoint does nothing in this run" in err
    run = tmp_path / "fm"
    rc, out, err = cli(capsys, "train", "--model", "cnf", "--objective", "flow-matching",
                       "--data", "moons", "--limit", 64, "--set", "data.n_val=32", "--epochs",
                       2, "--set", "train.fm_time_power=2", "--model-kwargs",
                       '{"hidden": [8]}', "--out", run, "--no-progress")  # fmt: skip
    assert rc == 0, err
    from flowforge.workbench.cli import _time_power_option

    # (the end-of-run hint names it with the objective: a new run's times are its own)
    assert _time_power_option(run) == " --set train.fm_time_power=2"
