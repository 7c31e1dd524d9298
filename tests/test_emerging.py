"""Emerging convolutions beyond the generic test (tests/cases/emerging.py): the inverse is exact
with every solver, the two masked convolutions are triangular in raster order while their
composition is not, the parallel solver's cap falls back with a warning, memory saving, Glow's
option from the command line, and bad input."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge.transforms import EmergingConv2d, ParallelInverseWarning, set_emerging_solver
from flowforge.transforms.emerging import DENSE_LIMIT


def perturbed(shape, kernel_size=3, scale=0.3, **kw):
    torch.manual_seed(0)
    t = EmergingConv2d(shape, kernel_size, **kw).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(scale * torch.randn_like(p))
    return t


def jacobian(fn, shape):
    """The Jacobian of ``fn`` at a random image, rows and columns in (row, column, channel)
    order."""
    c, h, w = shape
    d = c * h * w
    x = torch.randn(d, dtype=torch.float64)

    def flat(v):  # (H, W, C) order in and out
        img = v.view(1, h, w, c).permute(0, 3, 1, 2)
        return fn(img).permute(0, 2, 3, 1).reshape(-1)

    return torch.autograd.functional.jacobian(flat, x)


@pytest.mark.parametrize("shape, k", [((2, 4, 4), 3), ((3, 3, 5), 5), ((2, 1, 3), 3)])
def test_every_solver_inverts_exactly_and_they_agree(shape, k):
    t = perturbed(shape, k)
    torch.manual_seed(1)
    x = torch.randn(4, *shape, dtype=torch.float64)
    z, ladj = t(x)
    got = {}
    for solver in ("dense", "sequential", "parallel"):
        t.set_solver(solver, tol=1e-12)
        got[solver], inv_ladj = t.inverse(z)
        assert torch.equal(inv_ladj, -ladj)
        err = (got[solver] - x).abs().max().item()
        assert err < 1e-11, f"{solver}: round trip error {err:.3g}"
    # the parallel solver stops early, well before its H*W cap, with the exact answer
    h, w = shape[1:]
    assert 0 < t.last_sweeps <= 2 * h * w
    assert torch.allclose(got["dense"], got["sequential"], rtol=0, atol=1e-12)


def test_auto_picks_the_dense_solver_for_small_images_and_sequential_for_large(monkeypatch):
    t = perturbed((2, 4, 4))
    calls = []
    monkeypatch.setattr(t, "_dense", lambda y, w, upper: calls.append("dense") or y)
    monkeypatch.setattr(t, "_sequential", lambda y, w, upper: calls.append("seq") or y)
    t.inverse(torch.randn(1, 2, 4, 4, dtype=torch.float64))
    assert calls == ["dense", "dense"]
    side = int((DENSE_LIMIT // 2) ** 0.5) + 1  # 2 * side**2 > DENSE_LIMIT
    big = perturbed((2, side, side))
    calls.clear()
    monkeypatch.setattr(big, "_dense", lambda y, w, upper: calls.append("dense") or y)
    monkeypatch.setattr(big, "_sequential", lambda y, w, upper: calls.append("seq") or y)
    big.inverse(torch.randn(1, 2, side, side, dtype=torch.float64))
    assert calls == ["seq", "seq"]


def test_masked_convolutions_are_triangular_and_their_product_is_a_full_3x3_conv():
    shape = (2, 3, 3)
    t = perturbed(shape)
    k1, k2 = t.kernels()
    j1 = jacobian(lambda v: t._conv(v, k1), shape)
    j2 = jacobian(lambda v: t._conv(v, k2), shape)
    assert torch.equal(j1, j1.tril()) and torch.equal(j2, j2.triu())
    assert torch.allclose(j1.diagonal(), t.log_s.exp().repeat(9))
    assert torch.equal(j2.diagonal(), torch.ones(18, dtype=torch.float64))
    j = jacobian(lambda v: t(v)[0], shape)
    assert torch.allclose(j, j2 @ j1)
    # the composition is a full 3x3 convolution: the centre pixel's output (rows 8, 9) reads
    # all nine input pixels, before and after it in raster order
    for pixel in range(9):
        assert j[8:10, 2 * pixel : 2 * pixel + 2].abs().sum() > 0, pixel
    assert torch.allclose(torch.linalg.slogdet(j)[1], t(torch.zeros(1, *shape).double())[1])


def test_starts_as_the_identity():
    t = EmergingConv2d((3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    z, ladj = t(x)
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(2))
    # only the free (unmasked) kernel entries are parameters: 4 taps on each side of the
    # centre in a 3x3 kernel, C(C-1)/2 at the centre, plus log_s and bias
    c = 3
    assert sum(p.numel() for p in t.parameters()) == 2 * (4 * c * c + c * (c - 1) // 2) + 2 * c


def test_a_parallel_inverse_that_hits_its_cap_warns_and_falls_back():
    t = perturbed((2, 4, 4), solver="parallel", max_iter=1)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    z, _ = t(x)
    with pytest.warns(ParallelInverseWarning, match="did not reach tol"):
        back, _ = t.inverse(z)
    assert (back - x).abs().max() < 1e-11 and t.last_sweeps == 0


def test_memory_saving_with_exact_solvers_and_refused_with_the_parallel_one():
    torch.manual_seed(0)
    flow = ff.models.Glow(shape=(1, 4, 4), scales=1, steps=2, hidden=8, permutation="emerging")
    x = torch.randn(8, 1, 4, 4)
    flow.log_prob(x)  # ActNorm's data initialisation
    flow.zero_grad()
    flow.log_prob(x).mean().backward()
    want = [p.grad.clone() for p in flow.parameters()]
    flow.zero_grad()
    ff.memory_saving(flow)
    flow.log_prob(x).mean().backward()
    for g, p in zip(want, flow.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-4, rtol=1e-3)
    ff.memory_saving(flow, False)
    assert flow.transform.numeric_inverse is None
    assert set_emerging_solver(flow, "parallel", tol=1e-7) == 2
    assert flow.transform.numeric_inverse == pytest.approx(2e-7)  # the chain declares it
    with pytest.raises(ValueError, match="inverts numerically"):
        ff.memory_saving(flow)


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ValueError, match="odd kernel_size >= 1.*got 4"):
        EmergingConv2d((2, 4, 4), kernel_size=4)
    with pytest.raises(ValueError, match="odd kernel_size >= 1.*got 0"):
        EmergingConv2d((2, 4, 4), kernel_size=0)
    with pytest.raises(ValueError, match="odd int kernel_size"):
        EmergingConv2d((2, 4, 4), kernel_size=3.0)
    with pytest.raises(ValueError, match=r"image shape \(C, H, W\) of positive sizes, got \(8,\)"):
        EmergingConv2d(8)
    with pytest.raises(ValueError, match="unknown solver 'lu'"):
        EmergingConv2d((2, 4, 4), solver="lu")
    with pytest.raises(ValueError, match="tol > 0"):
        EmergingConv2d((2, 4, 4), tol=0)
    with pytest.raises(ValueError, match="max_iter to be an integer >= 1"):
        EmergingConv2d((2, 4, 4), max_iter=0)
    t = EmergingConv2d((2, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(batch, 2, 4, 4\), got \(3, 3, 4, 4\)"):
        t(torch.randn(3, 3, 4, 4))  # wrong channels
    with pytest.raises(ValueError, match=r"shape \(batch, 2, 4, 4\), got \(3, 2, 4\)"):
        t.inverse(torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="odd kernel size K"):
        ff.models.Glow(shape=(1, 4, 4), permutation="emerging-4")
    with pytest.raises(ValueError, match="needs images"):
        ff.models.RealNVP(features=4, permutation="emerging")
    with pytest.raises(ValueError, match="unknown permutation 'emerge'; did you mean emerging"):
        ff.models.Glow(shape=(1, 4, 4), permutation="emerge")


def test_glow_with_emerging_convolutions_trains_from_the_command_line(tmp_path, capsys):
    kw = '{"steps": 1, "hidden": 8, "blocks": 0}'
    rc, out, err = cli(capsys, "train", "--model", "glow", "--data", "digits", "--out",
                       tmp_path / "r", "--model-kwargs", kw, "--set", "model.permutation=emerging",
                       "--limit", 64, "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    flow = ff.load(tmp_path / "r" / "model.ff")
    assert any(isinstance(m, EmergingConv2d) for m in flow.modules())
    rc, _, err = cli(capsys, "train", "--model", "glow", "--data", "digits", "--out",
                     tmp_path / "r2", "--model-kwargs", '{"permutation": "emerging-2"}',
                     "--no-progress")  # fmt: skip
    one_line_error(rc, err, "emerging-2", "odd kernel size")


def test_solver_iterations_and_shapes_are_checked():
    glow = ff.models.Glow(shape=(1, 4, 4), scales=1, steps=1, hidden=8, permutation="emerging")
    for bad in (2.5, float("nan"), float("inf"), "x", 0, True):
        with pytest.raises(ValueError, match="expected max_iter to be an integer >= 1 or None"):
            set_emerging_solver(glow, "parallel", tol=1e-6, max_iter=bad)
    for shape in ((0, 4, 4), (1, 0, 4), (-1, 4, 4)):
        with pytest.raises(ValueError, match="image shape \\(C, H, W\\) of positive sizes"):
            EmergingConv2d(shape)
