"""Continuous normalizing flows: invertibility, Hutchinson's estimator, adjoint gradients,
RNODE penalties, NFE counts, the step budget and refused input. (The contract itself is
checked by the generic test, through ``cases_continuous``.)"""

from __future__ import annotations

import math
import sys
import time

import pytest
import torch
from torch import nn

import flowforge as ff
from flowforge.transforms import CNF, ODEStepBudgetError, exact_scoring

torch.set_default_dtype(torch.float32)
F64 = torch.float64


def perturbed(cnf: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Move every parameter off its initial value (deterministically), in float64."""
    g = torch.Generator().manual_seed(seed)
    cnf = cnf.to(F64)
    with torch.no_grad():
        for p in cnf.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64))
    return cnf.eval()


class Linear(nn.Module):
    """``f(t, z) = A z``: the flow map is ``expm(tA)`` and every integral is known."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t, z, context=None):
        return z @ self.a.T


def test_forward_then_inverse_returns_the_input():
    torch.manual_seed(0)
    for trace in ("exact", "hutchinson"):
        cnf = perturbed(CNF(4, hidden=(8, 8), rtol=1e-8, atol=1e-8, trace=trace))
        x = torch.randn(32, 4, dtype=F64)
        with torch.no_grad():
            z, ladj = cnf(x)
            x2, ladj_inv = cnf.inverse(z)
        assert (x2 - x).abs().max() < 1e-5
        assert not torch.allclose(z, x, atol=1e-2)  # the map does something
        if trace == "exact":
            assert (ladj + ladj_inv).abs().max() < 1e-5


def test_linear_dynamics_give_the_exact_flow_map_and_log_det():
    torch.manual_seed(1)
    a = 0.5 * torch.randn(3, 3, dtype=F64)
    cnf = CNF(3, net=Linear(a), time=0.7, rtol=1e-10, atol=1e-10).to(F64)
    x = torch.randn(5, 3, dtype=F64)
    z, ladj = cnf(x)
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(0.7 * a).T, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ladj, torch.full((5,), 0.7 * torch.trace(a).item(), dtype=F64))


def test_rnode_penalties_match_their_integrals():
    torch.manual_seed(2)
    a = 0.5 * torch.randn(2, 2, dtype=F64)
    reg = {"kinetic": 0.3, "jacobian": 0.2}
    cnf = CNF(2, net=Linear(a), rtol=1e-10, atol=1e-10, regularization=reg).to(F64)
    x = torch.randn(4, 2, dtype=F64)
    cnf.eval()
    cnf(x)
    assert cnf.regularization() is None  # only in training mode
    cnf.train()
    cnf(x)
    # kinetic: mean over the batch of int_0^1 ||A expm(tA) x||^2 dt, by Simpson's rule
    ts = torch.linspace(0, 1, 2001, dtype=F64)
    f2 = torch.stack([(x @ (a @ torch.linalg.matrix_exp(t * a)).T).square().sum(1) for t in ts])
    w = torch.ones(len(ts), dtype=F64)
    w[1:-1:2], w[2:-1:2] = 4, 2
    kinetic = (w[:, None] * f2).sum(0).mean() / (3 * (len(ts) - 1))
    want = 0.3 * kinetic + 0.2 * a.square().sum()  # ||A||_F^2 over unit time
    torch.testing.assert_close(cnf.regularization(), want, rtol=1e-7, atol=1e-9)
    cnf.regularization().backward()
    assert cnf.net.a.grad.abs().sum() > 0
    assert cnf.metrics()["regularization"] == pytest.approx(want.item())


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_log_density_is_unbiased(noise):
    """Averaged over many noise draws the Hutchinson log-density approaches the exact one:
    |mean - exact| stays within 4 standard errors (seeded; the estimates are independent
    because every row of the replicated batch draws its own noise)."""
    torch.manual_seed(3)
    d, points, draws = 4, 3, 400
    kw = dict(hidden=(8, 8), rtol=1e-6, atol=1e-6)
    exact = perturbed(CNF(d, trace="exact", **kw), scale=0.5, seed=3)
    hutch = CNF(d, trace="hutchinson", noise=noise, **kw).to(F64).eval()
    hutch.load_state_dict(exact.state_dict())
    base = ff.distributions.StandardNormal((d,))
    x = torch.randn(points, d, dtype=F64)
    with torch.no_grad():
        z, ladj = exact(x)
        want = base.log_prob(z) + ladj
        zr, ladj_r = hutch(x.repeat(draws, 1))
        est = (base.log_prob(zr) + ladj_r).reshape(draws, points)
    mean, se = est.mean(0), est.std(0) / math.sqrt(draws)
    assert (se > 1e-4).all(), "the estimator shows no spread: is it really stochastic?"
    assert ((mean - want).abs() < 4 * se).all(), (mean - want, se)
    assert (est.std(0) < 0.5 * want.abs().max() + 1).all()  # sanity on the variance


def test_adjoint_gradients_match_backpropagation():
    grads = {}
    for adjoint in (False, True):
        torch.manual_seed(4)
        cnf = perturbed(
            CNF(3, hidden=(8,), context_features=2, rtol=1e-9, atol=1e-9, adjoint=adjoint)
        )
        x = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
        c = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
        c.requires_grad_(True)
        z, ladj = cnf(x, c)
        (z.square().sum() - ladj.sum()).backward()
        grads[adjoint] = [p.grad.clone() for p in cnf.parameters()] + [c.grad.clone()]
        if adjoint:
            assert cnf.nfe_backward > 0  # the adjoint solve's evaluations
        else:
            assert 0 < cnf.nfe_backward <= cnf.nfe_forward  # accepted steps' evaluations
    for g0, g1 in zip(grads[False], grads[True]):
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_the_adjoint_takes_an_input_that_needs_a_gradient(trace):
    # (the builder's ActNorm before the CNF: the adjoint's forward solve saw a state still
    # needing a grad and failed in torch's words; a score, grad wrt x, did the same)
    from flowforge.models import FFJORD

    grads = {}
    for adjoint in (False, True):
        torch.manual_seed(4)
        flow = FFJORD(features=2, hidden=(8,), adjoint=adjoint, trace=trace, rtol=1e-9,
                      atol=1e-9, noise="rademacher").double()  # fmt: skip
        x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
        x.requires_grad_(True)
        torch.manual_seed(5)  # (the same noise for the trace estimate)
        lp = flow.log_prob(x).sum()
        lp.backward()
        grads[adjoint] = [x.grad.clone()] + [p.grad.clone() for p in flow.parameters()]
    for g0, g1 in zip(grads[False], grads[True]):
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)


def test_nfe_counts_are_exposed_and_reset_per_solve():
    cnf = CNF(2, hidden=(8,))
    x = torch.randn(16, 2)
    with torch.no_grad():
        cnf(x)
    n_loose = cnf.nfe_forward
    assert n_loose > 0 and cnf.nfe_backward == 0
    cnf.rtol = cnf.atol = 1e-9
    perturbed(cnf)(x.double())
    assert cnf.nfe_forward > n_loose  # tighter tolerances take more steps, counted afresh
    assert set(cnf.metrics()) == {"nfe_forward", "nfe_backward"}


class Stiff(nn.Module):
    def forward(self, t, z, context=None):
        return -1e5 * z


def test_a_solve_over_its_step_budget_stops_with_a_clear_message():
    # float64: in float32 a tolerance of 1e-7 is also at its resolution, which the message
    # then names (tests/test_ode_bad_input.py)
    cnf = CNF(2, net=Stiff(), max_steps=30, rtol=1e-7, atol=1e-7).double()
    t0 = time.perf_counter()
    msg = (
        r"CNF solve stopped after 1\d\d function evaluations at t=.*: it exceeded its step "
        r"budget \(max_steps=30 steps of dopri5, rtol=1e-07, atol=1e-07\)\. The dynamics are "
        r"too stiff for these tolerances: loosen rtol/atol, raise max_steps, or regularise"
    )
    with pytest.raises(ODEStepBudgetError, match=msg):
        cnf(torch.randn(4, 2, dtype=torch.float64))
    assert time.perf_counter() - t0 < 10
    assert isinstance(ODEStepBudgetError("x"), RuntimeError)


def test_unknown_solver_method_is_refused_with_the_available_ones():
    msg = r"unknown ODE solver method 'dopri6'; available: adaptive_heun, bosh3, .*dopri5, .*rk4"
    with pytest.raises(ValueError, match=msg):
        CNF(2, method="dopri6")
    with pytest.raises(ValueError, match="unknown trace 'approx'"):
        CNF(2, trace="approx")
    with pytest.raises(ValueError, match="unknown regularization"):
        CNF(2, regularization={"kinetics": 1.0})
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        CNF(2, activation="relu")


def test_missing_torchdiffeq_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    with pytest.raises(ImportError, match=r"need torchdiffeq: pip install 'flowforge\[ode\]'"):
        CNF(2)


def test_ffjord_builds_from_features_alone_and_in_a_compose():
    flow = ff.models.FFJORD(features=2)
    assert flow.config["model"] == "FFJORD" and flow.config["kwargs"]["features"] == 2
    # the whole configuration is recorded, defaults included
    assert flow.config["kwargs"]["method"] == "dopri5" and flow.config["kwargs"]["blocks"] == 1
    assert ff.models.build("ffjord", features=2).config == flow.config
    assert flow.log_prob(torch.randn(5, 2)).shape == (5,)
    cnfs = [m for m in flow.modules() if isinstance(m, CNF)]
    assert len(cnfs) == 1 and cnfs[0].trace == "exact"  # "auto" with 2 features
    big = ff.models.FFJORD(features=16, blocks=2, hidden=(8,), levels=17)
    cnfs = [m for m in big.modules() if isinstance(m, CNF)]
    assert len(cnfs) == 2 and cnfs[0].trace == "hutchinson"
    t = ff.Compose(ff.transforms.ActNorm(3), CNF(3, hidden=(8,)), ff.transforms.LULinear(3))
    assert t.numeric_inverse == CNF(3).numeric_inverse
    x = torch.randn(4, 3)
    z, ladj = t(x)
    x2, _ = t.inverse(z)
    assert (x2 - x).abs().max() < 1e-3


def test_the_trainer_adds_the_penalty_and_logs_nfe():
    from flowforge.workbench.trainer import Trainer

    torch.manual_seed(5)
    flow = ff.models.FFJORD(
        features=2,
        hidden=(8,),
        rtol=1e-3,
        atol=1e-3,
        trace="hutchinson",
        regularization={"kinetic": 0.1, "jacobian": 0.1},
    )
    x = torch.randn(64, 2)
    flow.train()
    flow.log_prob(x)
    reg, metrics = ff.core.regularization(flow), ff.core.layer_metrics(flow)
    assert reg is not None and reg.requires_grad and metrics["nfe_forward"] > 0
    tr = Trainer(
        flow,
        x,
        x[:16],
        {"epochs": 1, "batch_size": 16, "log_every": 1, "tensorboard": False},
        progress=False,
        echo=False,
    )
    tr.fit()
    steps = [r for r in tr.history if r["type"] == "step"]
    assert len(steps) == 4
    for r in steps:
        assert r["nfe_forward"] > 0 and r["nfe_backward"] > 0 and r["regularization"] > 0


def test_exact_scoring_uses_the_exact_trace_and_restores_the_settings():
    torch.manual_seed(0)
    flow = ff.models.FFJORD(features=3, hidden=(8,), trace="hutchinson", rtol=1e-3, atol=1e-3)
    flow.eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    flow = flow.double()
    exact = ff.models.FFJORD(features=3, hidden=(8,), trace="exact", rtol=1e-7, atol=1e-7)
    exact.load_state_dict(flow.state_dict())
    exact = exact.double().eval()
    with torch.no_grad(), exact_scoring(flow, tol=1e-7):
        a, b = flow.log_prob(x), flow.log_prob(x)
        cnf = next(m for m in flow.modules() if isinstance(m, CNF))
        assert (cnf.trace, cnf.rtol, cnf.atol) == ("exact", 1e-7, 1e-7)
        want = exact.log_prob(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, want, rtol=0, atol=1e-6)
    assert (cnf.trace, cnf.rtol, cnf.atol) == ("hutchinson", 1e-3, 1e-3)
    with pytest.raises(ValueError, match="tol > 0"), exact_scoring(flow, tol=0):
        pass


@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize("embedded", [False, True])
def test_a_0d_time_conditions_every_row_as_a_time_per_row_does(context, embedded):
    # an ODE solve passes one time for the batch: the network computes one row of gates and
    # shifts and broadcasts it; the numbers (and gradients) are those of one time per row
    from flowforge.models.flowmatching import TimeEmbeddingNet
    from flowforge.transforms.continuous import ODENet

    torch.manual_seed(0)
    if embedded:
        net = TimeEmbeddingNet(3, (16, 16), context, space_features=4)
    else:
        net = ODENet(3, (16, 16), context)
    net = net.double()
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, context, dtype=torch.float64) if context else None
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    inner = net.inner if embedded else net
    seen = []
    inner.layers[0].gate.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[0]))
    one = net(t, z, c)
    assert seen == [5 if context else 1]  # without a context: one row of gates
    rows = t.expand(5)
    per_row = net(rows, z, c)
    assert one.shape == (5, 3)
    torch.testing.assert_close(one, per_row, rtol=1e-14, atol=1e-14)
    g_one = torch.autograd.grad(one.square().sum(), [z, t, *net.parameters()])
    g_row = torch.autograd.grad(per_row.square().sum(), [z, t, *net.parameters()])
    for a, b in zip(g_one, g_row):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "silu"])
@pytest.mark.parametrize("context", [0, 2])
def test_the_regression_pass_computes_the_modules_function_and_gradients(activation, context):
    # flow matching's regression (one time per row, no input needing a gradient) runs as one
    # autograd node with a hand-written backward: the modules' numbers and weight gradients
    from flowforge.transforms.continuous import ODENet

    torch.manual_seed(0)
    net = ODENet(3, (16, 16), context, activation=activation).double()
    t = torch.rand(7, dtype=torch.float64)
    z = torch.randn(7, 3, dtype=torch.float64)
    c = torch.randn(7, context, dtype=torch.float64) if context else None
    fused = net(t, z, c)
    assert type(fused.grad_fn).__name__ == "_RegressionPassBackward"
    calls = []
    hook = net.act.register_forward_hook(lambda *a: calls.append(1))  # a hook: the modules
    plain = net(t, z, c)
    hook.remove()
    assert calls and type(plain.grad_fn).__name__ != "_RegressionPassBackward"
    torch.testing.assert_close(fused, plain, rtol=1e-14, atol=1e-15)
    weights = torch.randn_like(fused)
    g_fused = torch.autograd.grad((fused * weights).sum(), list(net.parameters()))
    g_plain = torch.autograd.grad((plain * weights).sum(), list(net.parameters()))
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # an input that needs a gradient, a 0-d time, no graph: the modules, as before
    zg = z.clone().requires_grad_()
    assert type(net(t, zg, c).grad_fn).__name__ != "_RegressionPassBackward"
    assert type(net(t[0], z, c).grad_fn).__name__ != "_RegressionPassBackward"
    with torch.no_grad():
        torch.testing.assert_close(net(t, z, c), plain, rtol=1e-14, atol=1e-15)
    # first derivatives only: a second derivative through the node is refused, not wrong
    (g,) = torch.autograd.grad(net(t, z, c).sum(), [net.layers[0].linear.weight],
                               create_graph=True)  # fmt: skip
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), [net.layers[1].linear.weight])


def test_the_regression_pass_is_left_to_the_modules_it_does_not_know():
    from flowforge.transforms.continuous import ODENet

    torch.manual_seed(0)
    t, z = torch.rand(4), torch.randn(4, 2)
    for net in (ODENet(2, (8,), activation="softplus"), ODENet(2, (8,), activation="elu")):
        assert type(net(t, z).grad_fn).__name__ != "_RegressionPassBackward"
    net = ODENet(2, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: autograd's own
        out = net(t, z)
    assert type(out.grad_fn).__name__ != "_RegressionPassBackward"
    out.float().sum().backward()
    net.layers[0].register_forward_hook(lambda *a: None)  # hooks must see their modules run
    assert type(net(t, z).grad_fn).__name__ != "_RegressionPassBackward"
    # torch.func transforms (per-example gradients, meta-learning): autograd's modules
    net = ODENet(2, (8,))
    params = dict(net.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(net, p, (t, z)).sum())(params)
    expected = torch.autograd.grad(net(t, z).sum(), list(params.values()))
    for a, b in zip(grads.values(), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_flow_matching_trains_the_same_with_the_regression_pass():
    # a few Adam steps of the flow-matching loss, the regression pass against the modules
    from flowforge.matching import FlowMatching

    x = torch.randn(256, 2) * torch.tensor([1.0, 0.5])
    losses = {}
    for fused in (True, False):
        torch.manual_seed(0)
        flow = ff.models.build("cnf", features=2, hidden=(16, 16))
        if not fused:
            flow.transform.layers[-1].net.act.register_forward_hook(lambda *a: None)
        fm = FlowMatching()
        with torch.no_grad():
            fm(flow, x)
        opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
        torch.manual_seed(1)
        out = []
        for i in range(20):
            loss = fm(flow, x[i * 12 : i * 12 + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[fused] = out
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-6)
