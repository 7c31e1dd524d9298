"""The ODE code on settings and input it cannot honour: a fixed-grid CNF scored by dopri5
under ``exact_scoring``, step budgets checked before a grid is built, bounds on a CNF's
(possibly untrusted) solver settings, torchdiffeq's assertions as one clear ValueError, and
``flowforge.matching`` on empty batches and a batch of one."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import flowforge as ff
from flowforge import matching as M
from flowforge.transforms import CNF, ODEStepBudgetError, exact_scoring
from flowforge.transforms.continuous import MAX_STEPS, _Dynamics

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=F64)


class Linear(nn.Module):
    """``f(t, z) = A z``: the flow map is ``expm(tA)``, the log-determinant ``t tr A``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(A.clone())

    def forward(self, t, z, context=None):
        return z @ self.a.T


def linear_flow(**kw) -> ff.Flow:
    return ff.Flow(CNF(2, net=Linear(), **kw), ff.distributions.StandardNormal((2,))).to(F64)


def true_log_prob(x):
    z = x @ torch.linalg.matrix_exp(A).T
    return ff.distributions.StandardNormal((2,)).log_prob(z) + A.trace()


# -- exact_scoring: every CNF by dopri5 ------------------------------------------------------------


def test_exact_scoring_scores_a_fixed_grid_cnf_with_dopri5_and_restores_it():
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    flow = linear_flow(method="euler", step_size=0.5, max_steps=4, trace="hutchinson")
    cnf = flow.transform
    with torch.no_grad():
        torch.manual_seed(1)
        grid = flow.log_prob(x)  # two Euler steps: not the model's density
        assert (grid - true_log_prob(x)).abs().max() > 0.1
        with exact_scoring(flow, tol=1e-7):
            assert (cnf.method, cnf.trace, cnf.rtol, cnf.atol) == ("dopri5", "exact", 1e-7, 1e-7)
            scored = flow.log_prob(x)
        want = linear_flow(rtol=1e-7, atol=1e-7).log_prob(x)  # the same weights, dopri5
    torch.testing.assert_close(scored, want, rtol=0, atol=1e-9)
    torch.testing.assert_close(scored, true_log_prob(x), rtol=0, atol=1e-5)
    assert (cnf.method, cnf.step_size, cnf.max_steps, cnf.trace) == ("euler", 0.5, 4, "hutchinson")
    assert (cnf.rtol, cnf.atol) == (1e-5, 1e-5)
    with torch.no_grad():
        torch.manual_seed(1)
        torch.testing.assert_close(flow.log_prob(x), grid)  # the grid and its noise again


# -- step budgets and bounds on the solver's settings ----------------------------------------------


def test_a_fixed_grid_over_the_step_budget_is_refused_before_it_is_built():
    flow = linear_flow()
    for kw in (dict(steps=10**12), dict(method="euler", steps=1001), dict(steps=50, max_steps=49)):
        with pytest.raises(ValueError, match=r"exceeds the step budget max_steps=\d") as e:
            M.sample(flow, 2, **kw)  # steps=10**12 tried to allocate 4 TB for its grid
        assert f"steps={kw['steps']:,}" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=f"max_steps between 1 and {MAX_STEPS:,}"):
        M.sample(flow, 2, steps=10, max_steps=MAX_STEPS + 1)
    assert M.sample(flow, 2, steps=1000).shape == (2, 2)  # the budget itself is allowed
    cnf = flow.transform
    assert (cnf.method, cnf.step_size, cnf.max_steps) == ("dopri5", None, 1000)
    cnf.method, cnf.step_size = "rk4", 1e-9  # set by hand: refused by the solve itself
    with pytest.raises(
        ODEStepBudgetError, match=r"a fixed grid of 1,000,000,000 steps of rk4 "
    ) as e:
        flow.log_prob(torch.zeros(1, 2, dtype=F64))
    assert isinstance(e.value, ValueError) and "rtol" not in str(e.value)


def test_a_budget_error_on_a_grid_does_not_blame_the_tolerances():
    # a grid within the budget never overruns it (explicit solvers): overrun one by hand
    cnf = CNF(2, net=Linear(), method="rk4", step_size=0.25).to(F64)
    dynamics = _Dynamics(cnf, None, None, False)
    dynamics.budget = 0
    with pytest.raises(ODEStepBudgetError, match="step budget") as e:
        dynamics(torch.tensor(0.5, dtype=F64), (torch.zeros(1, 2, dtype=F64),))
    msg = str(e.value)
    assert "rk4 on a grid of 4 steps" in msg and "step_size" in msg
    assert "rtol" not in msg and "tolerances" not in msg and "stiff" not in msg


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(max_steps=10**15), "max_steps between 1 and 100,000"),
        (dict(max_steps=0), "max_steps between 1 and 100,000"),
        (dict(max_steps=2.5), "max_steps between 1 and 100,000"),
        (dict(rtol=1e-14, atol=1e-14), "rtol=1e-14 is below 1e-12"),
        (dict(atol=1e-30), "atol=1e-30 is below 1e-12"),
        (dict(method="rk4", step_size=1e-9), "grid of 1,000,000,000 steps"),
        (dict(method="euler", step_size=0.001, max_steps=999), "more than max_steps=999"),
        (dict(method="rk4", step_size=float("inf")), "finite step_size > 0"),
    ],
)
def test_a_cnf_refuses_solver_settings_without_bound(kw, msg):
    with pytest.raises(ValueError, match=msg) as e:
        CNF(2, hidden=(4,), **kw)
    assert "\n" not in str(e.value)


def test_the_bounds_themselves_are_accepted():
    cnf = CNF(2, hidden=(4,), rtol=1e-12, atol=1e-12, max_steps=MAX_STEPS)
    assert (cnf.rtol, cnf.max_steps) == (1e-12, MAX_STEPS)
    assert CNF(2, hidden=(4,), method="euler", step_size=0.001, max_steps=1000).max_steps == 1000
    assert CNF(2, hidden=(4,), max_steps=2000.0).max_steps == 2000


def _edit_checkpoint(src, dst, **kwargs):
    """A copy of a saved flow with its stored builder arguments changed (an untrusted file)."""
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["flowforge"])
    meta["config"]["kwargs"].update(kwargs)
    header["__metadata__"]["flowforge"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(method="rk4", step_size=1e-9), "grid of 1,000,000,000 steps"),
        (dict(max_steps=10**15, rtol=1e-14, atol=1e-14), "max_steps between 1 and 100,000"),
        (dict(rtol=1e-14, atol=1e-14), "rtol=1e-14 is below 1e-12"),
    ],
)
def test_a_checkpoint_with_unbounded_solver_settings_is_refused_on_load(tmp_path, kwargs, msg):
    path = tmp_path / "model.ff"
    ff.save(ff.models.build("cnf", features=2, hidden=(4,)), path)
    assert ff.load(path).transform.layers[-1].max_steps == 1000  # the edit below is the cause
    _edit_checkpoint(path, tmp_path / "bad.ff", **kwargs)
    with pytest.raises(ValueError, match=msg):
        ff.load(tmp_path / "bad.ff")


# -- torchdiffeq's assertions, as one clear line -------------------------------------------------


class NaNAfter(nn.Module):
    """Linear dynamics that turn NaN after ``t = 0.5``."""

    def forward(self, t, z, context=None):
        return z * (float("nan") if t > 0.5 else -1.0)


def test_a_solve_that_cannot_take_a_step_is_one_clear_value_error():
    flow = ff.Flow(CNF(2, net=Linear().float()), ff.distributions.StandardNormal((2,)))
    x = torch.randn(4, 2)
    cnf = flow.transform
    cnf.rtol = cnf.atol = 1e-30  # as the workbench's eval sets them: below float32's resolution
    with pytest.raises(ValueError, match="1e-30 are below what float32 resolves") as e:
        flow.log_prob(x)
    assert "could not take a step (its step size underflowed to 0)" in str(e.value)
    cnf.rtol = cnf.atol = 1e-5
    with pytest.raises(ValueError, match="finite in the flow's torch.float32, got 1e"):
        M.sample(flow, 3, temperature=1e300)  # the base's noise would overflow float32
    flow.transform.net = NaNAfter()
    with pytest.raises(ValueError, match="dynamics became NaN or inf") as e:
        flow.log_prob(x)
    assert "\n" not in str(e.value) and not isinstance(e.value, ODEStepBudgetError)


# -- flowforge.matching: empty batches and a batch of one ----------------------------------------


def test_sampling_zero_examples_gives_an_empty_batch():
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(4,))
    assert M.sample(flow, 0).shape == (0, 2)
    assert M.sample(flow, 0, steps=4).shape == (0, 2)
    assert flow.sample(0).shape == (0, 2)


def test_an_empty_batch_is_refused_and_leaves_the_flow_untouched():
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(4,))
    assert ff.core.needs_data_init(flow)  # its ActNorm waits for the first batch
    with pytest.raises(ValueError, match=r"at least one example, got x of shape \(0, 2\)"):
        M.FlowMatching()(flow, torch.zeros(0, 2))
    assert ff.core.needs_data_init(flow)  # not initialised from nothing (to NaN)
    with pytest.raises(ValueError, match=r"at least one example, got x of shape \(0, 2\)"):
        M.log_likelihood(flow, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="at least one example"):
        M.log_likelihood(flow, torch.zeros(0, 2), batch_size=1, trace="hutchinson")
    M.FlowMatching()(flow, torch.randn(8, 2))  # ActNorm initialises from a real batch
    loss = M.FlowMatching(ot=True)(flow, torch.randn(1, 2))  # one example: the trivial pairing
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in flow.parameters())


# -- audit K: what a user of the continuous flows met -------------------------------------------


def _perturbed_cnf(seed=0):
    torch.manual_seed(seed)
    flow = ff.models.build("cnf", features=2, hidden=(16,))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p))
    return flow


def test_a_budget_error_below_the_dtypes_resolution_names_the_precision_not_stiffness():
    flow = _perturbed_cnf()
    x = torch.randn(20, 2)
    assert M.log_likelihood(flow, x, rtol=1e-5, atol=1e-5).nfe < 200  # not a stiff field
    with pytest.raises(ODEStepBudgetError) as e:
        M.log_likelihood(flow, x, rtol=1e-12, atol=1e-12)
    msg = str(e.value)
    assert "near or below what float32 resolves" in msg and "tolerances >= 1e-06" in msg
    assert "raise max_steps" not in msg and "\n" not in msg


@pytest.mark.parametrize("time", [float("inf"), float("nan"), 0.0, -1.0, 1e-300, 1e300])
def test_a_cnf_refuses_an_integration_time_outside_its_range(time):
    with pytest.raises(ValueError, match=r"integration time in \[1e-06, 1e\+06\]"):
        CNF(2, hidden=(4,), time=time)
    # (a NaN or infinity: the builders' own check, naming the argument)
    with pytest.raises(ValueError, match="integration time|argument time=.* is not finite"):
        ff.models.build("cnf", features=2, hidden=(4,), time=time)


def test_a_solve_that_fails_from_its_context_names_the_context():
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(8,), context_features=1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p))
    flow.eval()
    with pytest.raises(ValueError) as e:
        flow.log_prob(torch.randn(3, 2), torch.full((3, 1), 1e30))
    msg = str(e.value)
    assert "context's 1e+30" in msg and "inputs or context far outside the data" in msg


def test_a_fixed_grid_likelihood_states_the_grid_it_took():
    flow = _perturbed_cnf()
    x = torch.randn(5, 2)
    res = M.log_likelihood(flow, x, method="rk4")  # the CNF's own grid: time / 10
    assert res.steps == 10 and res.nfe == 40 and "rk4, 10 steps" in res.describe()
    assert "rtol" not in res.describe()
    assert "rk4, 1 step: a fixed grid" in M.log_likelihood(flow, x, steps=1).describe()
    one = M.log_likelihood(flow, x[:1]).describe()
    assert "nan" not in one and "(one example)" in one
    assert M.log_likelihood(flow, x).steps is None  # adaptive: rtol and atol apply


def test_the_importance_weighted_bound_refuses_hutchinsons_estimate():
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(8,), levels=4, preprocess="scale")
    x = torch.randint(0, 4, (20, 2))
    with pytest.raises(ValueError, match="trace='exact'") as e:
        M.log_likelihood(flow, x, samples=4, trace="hutchinson")
    assert "too high" in str(e.value)
    M.log_likelihood(flow, x, samples=1, trace="hutchinson")  # one draw: an unbiased estimate
    M.log_likelihood(flow, x, samples=2, rtol=1e-3, atol=1e-3)  # exact: a bound


def test_matching_helpers_check_their_arguments_and_take_numpy_scalars():
    import numpy as np

    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="number of times n >= 0"):
            M.sample_times(bad)
    assert M.sample_times(np.int64(3)).shape == (3,)
    with pytest.raises(ValueError, match="same shape"):
        M.ot_pairing(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="same shape"):
        M.ot_pairing(torch.randn(4, 2), torch.randn(3, 2))
    fm = M.FlowMatching(times="power", time_power=np.float32(2.0))
    assert fm.times[3] == 2.0
    flow = _perturbed_cnf()
    res = M.log_likelihood(flow, torch.randn(3, 2), samples=np.int64(1), batch_size=np.int64(2))
    assert res.samples == 1 and torch.isfinite(res.log_prob).all()
