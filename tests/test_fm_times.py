"""The time distribution of flow matching's regression (``flowforge.matching.sample_times``,
``FlowMatching(times=...)``): each law's quantiles, the default unchanged, the loss moving with
the law, and every refused value."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge import matching as M

pytestmark = pytest.mark.usefixtures("one_thread")
N = 200_000


def test_uniform_is_the_default_and_draws_as_before():
    torch.manual_seed(3)
    a = M.sample_times(1000)
    torch.manual_seed(3)
    assert torch.equal(a, torch.rand(1000))


@pytest.mark.parametrize(
    "kw, cdf",
    [
        (dict(times="uniform"), lambda q: q),
        # P(u ** p <= q) = q ** (1 / p)
        (dict(times="power", power=3.0), lambda q: q ** (1 / 3)),
        (dict(times="power", power=0.5), lambda q: q**2),
        # P(sigmoid(loc + scale n) <= q) = Phi((logit(q) - loc) / scale)
        (
            dict(times="logit-normal", loc=-1.0, scale=0.7),
            lambda q: 0.5 * (1 + math.erf((math.log(q / (1 - q)) + 1.0) / 0.7 / math.sqrt(2))),
        ),
    ],
)
def test_empirical_cdf_matches_the_law(kw, cdf):
    torch.manual_seed(0)
    s = M.sample_times(N, dtype=torch.float64, **kw)
    assert s.shape == (N,) and s.dtype == torch.float64
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    for q in (0.01, 0.1, 0.3, 0.5, 0.9):
        assert abs(float((s <= q).double().mean()) - cdf(q)) < 5e-3, (kw, q)


def test_the_loss_uses_the_law():
    """The same network and data, times near the data end against near the noise end: the
    regression targets differ, so the losses do too; the repr names a non-default law."""
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(8,))
    x = torch.randn(4096, 2) * 0.1 + 2.0
    near_data = M.FlowMatching(times="power", time_power=20.0)
    near_noise = M.FlowMatching(times="logit-normal", time_loc=4.0, time_scale=0.1)
    with torch.no_grad():
        a, b = near_data(flow, x).item(), near_noise(flow, x).item()
    assert abs(a - b) > 0.05 * min(a, b)
    assert "time_power=20" in repr(near_data) and "logit-normal" in repr(near_noise)
    assert repr(M.FlowMatching()) == "FlowMatching(path='linear', ot=False, sigma=0)"


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(times="beta"), "unknown time distribution"),
        (dict(time_scale=0.0), "time scale > 0"),
        (dict(time_scale=-1.0), "time scale > 0"),
        (dict(time_power=0.0), "time power > 0"),
        (dict(time_power=float("nan")), "time power > 0"),
        (dict(time_loc=float("inf")), "finite time loc"),
        (dict(time_loc=True), "finite time loc"),
    ],
)
def test_bad_time_options_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        M.FlowMatching(**kw)
    sample_kw = {k.removeprefix("time_"): v for k, v in kw.items()}
    with pytest.raises(ValueError, match=msg):
        M.sample_times(4, **sample_kw)
