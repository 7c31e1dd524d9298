"""Variational dequantization beyond the generic test (which checks its q-flow and its
density): extreme parameters, bad data, the bound against the exact discrete likelihood,
save/load and the options."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from cases.base import perturbed
from flowforge.transforms import VariationalDequantization

D64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def test_u_in_unit_interval_even_for_extreme_parameters():
    deq = perturbed(VariationalDequantization((1, 4, 4), levels=17, steps=2, hidden=8), 3.0)
    x = torch.randint(0, 17, (512, 1, 4, 4)).float()
    y, log_q = deq(x)
    u = y - x
    assert (u >= 0).all() and (u < 1).all()
    assert torch.isfinite(log_q).all()
    assert torch.equal(deq.quantize(y), x)


def test_variational_dequantizer_rejects_bad_data():
    deq = VariationalDequantization(3, levels=4)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        deq(torch.tensor([[0.0, 1.0, 4.0]]))
    with pytest.raises(ValueError, match="integer"):
        deq(torch.tensor([[0.0, 1.5, 2.0]]))


def _exact_log_p(flow, xs: torch.Tensor, grid: int = 80) -> torch.Tensor:
    """log P(x) = log of the integral of p(x + u) over the unit square (midpoint rule)."""
    t = (torch.arange(grid, dtype=D64) + 0.5) / grid
    u = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    out = []
    with torch.no_grad():
        for x in xs:
            y = x + u
            z, ladj = flow.transform(y)
            lp = flow.base.log_prob(z) + ladj
            out.append(torch.logsumexp(lp, 0) - math.log(len(u)))
    return torch.stack(out)


def _bound(flow, xs, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        b = flow.log_prob(xs.repeat_interleave(n, 0)).reshape(len(xs), n)
    return b.mean(1), b.std(1) / math.sqrt(n)


def test_bound_never_exceeds_the_exact_discrete_log_likelihood():
    torch.manual_seed(0)
    flow = ff.models.RealNVP(
        features=2,
        layers=2,
        hidden=(16,),
        levels=4,
        preprocess="scale",
        dequantization={"name": "variational", "steps": 2, "hidden": 8},
    ).to(D64)
    perturbed(flow.transform, 0.5)
    xs = torch.tensor([[0, 0], [1, 2], [3, 3], [2, 0]], dtype=D64)
    exact = _exact_log_p(flow, xs)
    bound, se = _bound(flow, xs)
    assert (bound <= exact + 4 * se).all(), (bound, exact)
    # train q only: the gap KL(q || p(u | x)) shrinks, and the bound still stays below
    opt = torch.optim.Adam(flow.dequantizer.parameters(), lr=1e-2)
    for _ in range(80):
        loss = -flow.log_prob(xs.repeat_interleave(32, 0)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained, se2 = _bound(flow, xs)
    assert (trained <= exact + 4 * se2).all(), (trained, exact)
    assert (exact - trained).mean() < 0.5 * (exact - bound).mean()
    # the uniform bound of the same density is a bound too, and a looser one than trained q
    uniform = ff.Flow(flow.transform, flow.base, ff.transforms.UniformDequantization(4))
    ub, se3 = _bound(uniform, xs)
    assert (ub <= exact + 4 * se3).all()
    assert trained.mean() > ub.mean()


def test_variational_dequantization_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    flow = ff.models.Glow(
        shape=(1, 4, 4), steps=1, hidden=8, levels=17, dequantization="variational"
    )
    perturbed(flow.dequantizer)
    assert any(k.startswith("dequantizer.") for k in flow.state_dict())
    assert flow.config["kwargs"]["dequantization"] == "variational"
    ff.save(flow, tmp_path / "m.ff")
    flow2 = ff.load(tmp_path / "m.ff")
    assert isinstance(flow2.dequantizer, VariationalDequantization)
    x = torch.randint(0, 17, (5, 1, 4, 4)).float()
    assert not flow2.training  # ff.load returns the flow in eval mode: compare like with like
    flow.eval()
    torch.manual_seed(3)
    a = flow.log_prob(x)
    torch.manual_seed(3)
    b = flow2.log_prob(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "build",
    [
        lambda **k: ff.models.RealNVP(features=4, **k),
        lambda **k: ff.models.RealNVP(shape=(1, 4, 4), **k),
        lambda **k: ff.models.Glow(shape=(1, 4, 4), **k),
    ],
)
def test_variational_dequantization_needs_levels(build):
    with pytest.raises(ValueError, match="discrete data: give levels="):
        build(dequantization="variational")
    with pytest.raises(ValueError, match="unknown dequantization"):
        build(dequantization="gaussian", levels=17)


def test_samples_off_the_grid_are_counted_then_clamped(tmp_path, capsys):
    """A dequantizing flow's draws whose floor falls outside [0, levels - 1] are clamped to
    the grid; the fraction is kept in ``clamped`` and ``flowforge sample`` warns of it, as it
    does for integer flows (it was silent)."""
    import numpy as np

    from cli_support import cli

    torch.manual_seed(0)
    flow = ff.models.build("realnvp", features=3, layers=2, hidden=[8], levels=5)
    x = flow.sample(4000, temperature=3.0)
    assert x.min() >= 0 and x.max() <= 4 and torch.equal(x, x.floor())
    assert 0.05 < float(flow.clamped) < 1
    flow.sample(0)
    path = tmp_path / "counts.csv"
    np.savetxt(path, np.random.default_rng(0).integers(0, 5, (200, 3)), fmt="%d", delimiter=",")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", path, "--set",
                     "data.levels=5", "--model-kwargs", '{"layers": 1, "hidden": [4]}',
                     "--epochs", 1, "--quiet", "--no-progress",
                     "--out", tmp_path / "r")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", tmp_path / "r", "-n", 500, "--temperature", 4,
                     "--out", tmp_path / "s.npy")  # fmt: skip
    assert rc == 0 and "of the sampled values fell outside the data's 5 levels" in err
