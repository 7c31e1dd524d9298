"""Rational-quadratic spline: identity at zero, edges, tails, extreme parameters, inverse."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowforge.transforms import Coupling, RationalQuadratic, half_mask, rational_quadratic

B = 3.0


def rq_params(n, k, scale, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 3 * k - 1, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_params_is_identity_everywhere(dtype):
    rq = RationalQuadratic(bins=7, bound=B)
    x = torch.cat([torch.linspace(-6, 6, 1001, dtype=dtype), torch.tensor([-B, B], dtype=dtype)])
    y, ladj = rq(x, torch.zeros(len(x), rq.params_per_dim, dtype=dtype))
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert (y - x).abs().max() < tol and ladj.abs().max() < tol
    x2, ladj2 = rq.inverse(x, torch.zeros(len(x), rq.params_per_dim, dtype=dtype))
    assert (x2 - x).abs().max() < tol and ladj2.abs().max() < tol


def test_every_input_in_the_tails_passes_through():
    x = torch.tensor([-1e30, -100.0, -3.0000001, 3.0000001, 7.0, 1e30], dtype=torch.float64)
    p = rq_params(len(x), 5, 3.0)
    for inverse in (False, True):
        y, ladj = rational_quadratic(x, p, inverse=inverse, bound=B)
        assert torch.equal(y, x) and torch.equal(ladj, torch.zeros_like(x))


def test_knots_map_to_knots_and_bins_are_clamped():
    """Each knot x_k maps exactly to y_k, including the last edge (x == bound), where an
    unclamped searchsorted would index one bin too far."""
    k = 6
    p = rq_params(1, k, 2.0).expand(k + 1, -1)
    frac = 1e-3 + (1 - 1e-3 * k) * torch.softmax(p[0, :k], -1)
    xk = torch.cat([torch.zeros(1, dtype=torch.float64), frac.cumsum(0)]) * 2 * B - B
    xk[0], xk[-1] = -B, B
    fh = 1e-3 + (1 - 1e-3 * k) * torch.softmax(p[0, k : 2 * k], -1)
    yk = torch.cat([torch.zeros(1, dtype=torch.float64), fh.cumsum(0)]) * 2 * B - B
    yk[0], yk[-1] = -B, B
    y, ladj = rational_quadratic(xk, p, bound=B)
    assert torch.allclose(y, yk, atol=1e-12)
    x, _ = rational_quadratic(yk, p, inverse=True, bound=B)
    assert torch.allclose(x, xk, atol=1e-12)
    # slope 1 at both ends matches the identity tails: ladj -> 0 at +-B
    assert ladj[0].abs() < 1e-12 and ladj[-1].abs() < 1e-12


def test_continuous_across_the_bound():
    p = rq_params(4, 4, 2.0)
    eps = 1e-9
    x = torch.tensor([-B - eps, -B + eps, B - eps, B + eps], dtype=torch.float64)
    y, _ = rational_quadratic(x, p[:1].expand(4, -1), bound=B)
    assert (y - x).abs().max() < 1e-7


@settings(max_examples=60, deadline=None)
@given(
    x=st.floats(-50, 50) | st.sampled_from([-B, B, 0.0, -B + 1e-12, B - 1e-12]),
    scale=st.sampled_from([0.0, 1.0, 10.0, 1e3, 1e6, 1e12, 1e30]),
    bins=st.integers(2, 10),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_property_finite_monotone_and_invertible(x, scale, bins, seed, dtype):
    """Any input, any finite parameters (huge or tiny logits): finite outputs, finite
    gradients, and inverse(forward(x)) == x up to the conditioning of the map."""
    xs = torch.tensor([x, x + 1e-3], dtype=dtype)
    p = rq_params(2, bins, scale, seed, dtype)
    p[1] = p[0]
    p.requires_grad_(True)
    xs.requires_grad_(True)
    y, ladj = rational_quadratic(xs, p, bound=B)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    # monotone, to float rounding: the knots are sums of up to ``bins`` heights reaching
    # 2 * B, so y carries an absolute error of a few ulps of B where the slope is tiny
    # (x = 0.0449, scale 1e6, 10 bins, float32: a slope of 2e-4 over 1e-3, under one ulp)
    assert y[1] >= y[0] - (bins + 2) * torch.finfo(dtype).eps * 2 * B
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(xs.grad).all()
    x2, ladj2 = rational_quadratic(y.detach(), p.detach(), inverse=True, bound=B)
    assert torch.isfinite(x2).all() and torch.isfinite(ladj2).all()
    # the inverse is as accurate as the forward's conditioning allows
    tol = (1e-4 if dtype == torch.float32 else 1e-9) * (1 + torch.exp(-ladj.detach()).max())
    assert (x2 - xs.detach()).abs().max() <= tol * 10


@settings(max_examples=40, deadline=None)
@given(
    y=st.floats(-B, B) | st.sampled_from([-B, B]),
    scale=st.sampled_from([0.0, 1.0, 1e4, 1e30]),
    bins=st.integers(2, 10),
    seed=st.integers(0, 2**16),
)
def test_property_inverse_never_nan(y, scale, bins, seed):
    ys = torch.tensor([y], dtype=torch.float32)
    p = rq_params(1, bins, scale, seed, torch.float32)
    x, ladj = rational_quadratic(ys, p, inverse=True, bound=B)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    assert -B <= x.item() <= B


def test_ladj_matches_finite_difference():
    x = torch.linspace(-3.5, 3.5, 301, dtype=torch.float64)
    p = rq_params(1, 8, 1.5).expand(len(x), -1)
    h = 1e-6
    y, ladj = rational_quadratic(x, p)
    yp, _ = rational_quadratic(x + h, p)
    ym, _ = rational_quadratic(x - h, p)
    fd = torch.log((yp - ym) / (2 * h))
    inner = (x.abs() < 3 - 1e-3) | (x.abs() > 3 + 1e-3)
    assert (fd - ladj)[inner].abs().max() < 1e-6


def test_spline_coupling_round_trip_float32_extreme():
    """NSF coupling with a conditioner that outputs huge values stays finite in float32."""
    torch.manual_seed(0)

    class Huge(torch.nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.lin = torch.nn.Linear(i, o)

        def forward(self, x, context=None):
            return 1e6 * self.lin(x)

    layer = Coupling(half_mask(6), Huge, RationalQuadratic(8, 3.0))
    x = 4 * torch.randn(256, 6)
    z, ladj = layer(x)
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all()
    x2, _ = layer.inverse(z)
    assert torch.isfinite(x2).all()


def test_bad_arguments():
    for bins in (0, 1):
        with pytest.raises(ValueError, match=f"expected bins >= 2 .*, got {bins}"):
            RationalQuadratic(bins=bins)
    for bound in (0, -1.0):
        with pytest.raises(ValueError, match=f"expected a finite bound > 0, got {bound}"):
            RationalQuadratic(bound=bound)
    with pytest.raises(ValueError, match=r"10 bins do not fit \(at most 4 bins\)"):
        RationalQuadratic(bins=10, min_width=0.2)
    m = 1 / 135  # the largest count that fits, also where 1 / m rounds: 134 * m < 1 <= 135 * m
    with pytest.raises(ValueError, match=r"at most (\d+) bins") as e:
        RationalQuadratic(bins=136, min_width=m, min_height=m)
    most = int(e.value.args[0].split("at most ")[1].split()[0])
    assert most * m < 1 <= (most + 1) * m
    RationalQuadratic(bins=most, min_width=m, min_height=m)
    with pytest.raises(ValueError, match="min_width and min_height below 1/2"):
        RationalQuadratic(bins=2, min_width=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("bins", [2, 3, 8])
def test_the_graph_free_path_gives_the_same_bits(dtype, inverse, bins):
    # without a graph the bin's size and slopes are gathered, with one they are one-hot sums;
    # both must give the same numbers bit for bit (the bits-back coder runs without a graph,
    # and files it wrote must decode after any such change), knots and tails included
    torch.manual_seed(bins)
    x = torch.randn(64, 6, dtype=dtype) * 2.5
    x[0, :3] = torch.tensor([-3.0, 3.0, 0.0], dtype=dtype)
    p = torch.randn(64, 6, 3 * bins - 1, dtype=dtype) * 2
    with torch.no_grad():
        y0, l0 = rational_quadratic(x, p, inverse=inverse, bound=3.0)
    y1, l1 = rational_quadratic(x, p.clone().requires_grad_(), inverse=inverse, bound=3.0)
    assert torch.equal(y0, y1.detach()) and torch.equal(l0, l1.detach())


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("bins", [2, 3, 8])
def test_the_coders_order_of_operations_gives_the_same_spline(inverse, bins):
    # eagerly the softplus runs on the bin's two slopes and the log-derivative takes two
    # logarithms; the coder's arithmetic (and a compiled graph) takes the softplus of every
    # slope and three logarithms: the same function, to rounding, in either path, at the
    # edges and a knot, the outer bins, the tails and infinite slope logits
    torch.manual_seed(bins)
    x = torch.randn(64, 6, dtype=torch.float64) * 2.5
    p = torch.randn(64, 6, 3 * bins - 1, dtype=torch.float64) * 3
    p[1, :, 2 * bins] = torch.tensor([float("inf"), -float("inf"), 1e30, -1e30, 0.0, 5.0])
    # the edges, and an interior knot of row 0's first entry, exactly
    with torch.no_grad():
        _, knot = rational_quadratic(x[:1, :1], p[:1, :1], inverse=inverse, bound=3.0)
        widths = torch.softmax(p[0, 0, bins * inverse : bins * (inverse + 1)], 0)
        knot = -3.0 + 6.0 * (1e-3 + (1 - 1e-3 * bins) * widths[0])
    x[0, :4] = torch.stack([torch.tensor(-3.0), torch.tensor(3.0), knot, torch.tensor(0.0)])
    for grad in (False, True):
        q = p.clone().requires_grad_(grad)
        y0, l0 = rational_quadratic(x, q, inverse=inverse, bound=3.0)
        y1, l1 = rational_quadratic(x, q, inverse=inverse, bound=3.0, coder_arithmetic=True)
        assert torch.isfinite(y0).all() and torch.isfinite(l0).all()  # inf logits included
        assert torch.allclose(y0, y1, rtol=1e-14, atol=1e-14)
        assert torch.allclose(l0, l1, rtol=1e-12, atol=1e-12)
        if grad:
            g0 = torch.autograd.grad(y0.sum() + l0.sum(), q)[0]
            g1 = torch.autograd.grad(y1.sum() + l1.sum(), q)[0]
            assert torch.allclose(g0, g1, rtol=1e-10, atol=1e-12)
    rq = RationalQuadratic(bins=bins)
    assert rq.coder_arithmetic is False  # the default is the eager fast path


@pytest.mark.parametrize("inverse", [False, True])
def test_the_gradient_on_the_bound_is_the_slope(inverse):
    # at x == +bound the bin's position rounded one ulp past 1 and its clamp gave the
    # autograd derivative 0 (a singular Jacobian where the log-det, 0, was right)
    torch.manual_seed(0)
    bound = 3.0
    for _ in range(20):
        params = torch.randn(1, 1, 3 * 8 - 1, dtype=torch.float64) * 2
        x = torch.tensor([[bound], [-bound]], dtype=torch.float64, requires_grad=True)
        y, ladj = rational_quadratic(x, params.expand(2, 1, -1), inverse=inverse, bound=bound)
        (g,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(g.log().flatten(), ladj.flatten(), atol=1e-9, rtol=0)
        # the values are those of the graph-free spline, bit for bit
        with torch.no_grad():
            y0, _ = rational_quadratic(x, params.expand(2, 1, -1), inverse=inverse, bound=bound)
        assert torch.equal(y.detach(), y0)
