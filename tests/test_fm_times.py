"""The time distribution of flow matching's regression (``flowforge.matching.sample_times``,
``FlowMatching(times=...)``): each law's quantiles, the default unchanged, the loss moving with
the law, and every refused value."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge import matching as M
from flowforge.models.flowmatching import TimeEmbeddingNet

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


# -- TimeEmbeddingNet (the CNF builder's time_frequencies / space_features) ----------------------


def test_time_embedding_features_and_shapes():
    net = TimeEmbeddingNet(2, (8,), context_features=1, frequencies=3, eps=0.01)
    t = torch.tensor([0.0, 0.25])
    e = net.embed(t, 2, torch.zeros(2, 2))
    want = [
        *[math.sin(math.pi * 2**j * 0.25) for j in range(3)],
        *[math.cos(math.pi * 2**j * 0.25) for j in range(3)],
        math.log(0.25 + 0.01),
    ]
    assert e.shape == (2, 7)
    assert torch.allclose(e[1], torch.tensor(want), atol=1e-6)
    assert torch.allclose(e[0, 3:], torch.tensor([1.0, 1.0, 1.0, math.log(0.01)]), atol=1e-6)
    z, c = torch.randn(5, 2), torch.randn(5, 1)
    assert net(torch.tensor(0.3), z, c).shape == (5, 2)  # one time for the batch (a solve)
    assert net(torch.rand(5), z, c).shape == (5, 2)  # one per row (flow matching)
    # the state's Fourier features: the same fixed matrix in every build, first d outputs
    a = TimeEmbeddingNet(2, (8,), frequencies=0, eps=0.0, space_features=4, space_scale=2.0)
    b = TimeEmbeddingNet(2, (8,), frequencies=0, eps=0.0, space_features=4, space_scale=2.0)
    assert torch.equal(a.B, b.B) and a.B.shape == (2, 4)
    assert abs(float(a.B.std()) - 2.0) < 2.0  # scaled (a loose check on 8 draws)
    assert a(torch.tensor(0.5), z).shape == (5, 2)


def test_builder_builds_the_embedding_and_default_is_unchanged():
    torch.manual_seed(0)
    plain = ff.models.build("cnf", features=2, hidden=(8,))
    assert not any(isinstance(m, TimeEmbeddingNet) for m in plain.modules())
    torch.manual_seed(0)
    emb = ff.models.build("cnf", features=2, hidden=(8,), time_frequencies=2, space_features=2)
    nets = [m for m in emb.modules() if isinstance(m, TimeEmbeddingNet)]
    assert len(nets) == 1 and nets[0].frequencies == 2 and nets[0].space_features == 2
    x = torch.randn(16, 2)
    assert torch.isfinite(emb.log_prob(x)).all()


def test_a_time_embedded_cnf_samples_and_inverts_with_the_adaptive_solver():
    # dopri5's stages step a little past t = 0 on the way back, where log(t + eps) was NaN:
    # every step was rejected until the step size underflowed
    from flowforge.matching import sample

    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(8,), time_frequencies=2)
    x = sample(flow, 5)
    assert x.shape == (5, 2) and torch.isfinite(x).all()
    flow.log_prob(torch.randn(64, 2))  # (the standardisation's statistics, then fixed)
    flow = flow.double().eval()
    z = torch.randn(5, 2, dtype=torch.float64)
    back = flow.transform(flow.transform.inverse(z)[0])[0]
    torch.testing.assert_close(back, z, rtol=0, atol=2e-3)  # (log(t + eps) is stiff near 0)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(frequencies=-1), "integer frequencies >= 0"),
        (dict(frequencies=1.5), "integer frequencies >= 0"),
        (dict(frequencies=True), "integer frequencies >= 0"),
        (dict(eps=-0.1), "finite eps >= 0"),
        (dict(eps=float("nan")), "finite eps >= 0"),
        (dict(space_features=-2), "integer space_features >= 0"),
        (dict(space_scale=0.0), "finite space_scale > 0"),
        (dict(activation="relu"), "unknown activation"),
    ],
)
def test_bad_embedding_options_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TimeEmbeddingNet(2, (8,), **kw)


def test_builder_refuses_bad_embedding_options():
    with pytest.raises(ValueError, match="integer frequencies >= 0"):
        ff.models.build("cnf", features=2, hidden=(8,), time_frequencies=-1)
    with pytest.raises(ValueError, match="finite space_scale > 0"):
        ff.models.build("cnf", features=2, hidden=(8,), space_features=2, space_scale=-1.0)
