"""Image flows: build-time shape errors, exact multi-scale round trips, temperature sampling,
context, configuration, and bits/dim per image."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge import transforms as T
from flowforge.models import default_scales
from flowforge.nets import ConvResNet

# -- build-time errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 7, 8), (1, 8, 7), (2, 3, 3)])
def test_squeeze_refuses_odd_sizes(shape):
    with pytest.raises(ValueError, match=r"Squeeze needs an even height and width .* got shape"):
        T.Squeeze(shape)


def test_squeeze_refuses_non_images():
    with pytest.raises(ValueError, match=r"Squeeze expects an image shape \(C, H, W\)"):
        T.Squeeze((16,))


def test_factor_out_needs_two_channels_and_the_kept_shape():
    with pytest.raises(ValueError, match="needs at least 2 channels, got shape \\(1, 8, 8\\)"):
        T.FactorOut((1, 8, 8), T.ActNorm((1, 8, 8)))
    with pytest.raises(ValueError, match=r"kept half of shape \(2, 4, 4\), but it expects"):
        T.FactorOut((4, 4, 4), T.ActNorm((3, 4, 4)))


def test_channel_mask_on_one_channel_is_refused():
    with pytest.raises(ValueError, match="must keep at least one entry and transform"):
        T.Coupling(T.channel_mask((1, 8, 8)), lambda i, o: ConvResNet(i, o, 8), T.Affine())


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ff.models.Glow(shape=(1, 8, 8), scales=4), "divisible by 16, got shape"),
        (lambda: ff.models.Glow(shape=(1, 7, 8)), "even height and width, got shape \\(1, 7, 8\\)"),
        (lambda: ff.models.Glow(shape=(1, 8, 8), scales=0), "expected scales >= 1"),
        (lambda: ff.models.Glow(shape=(1, 8, 8), coupling="spline"), "unknown coupling"),
        (lambda: ff.models.Glow(shape=(1, 8, 8), permutation="qr"), "unknown permutation"),
        (lambda: ff.models.Glow(shape=(8, 8)), "expected shape=\\(C, H, W\\)"),
        (lambda: ff.models.RealNVP(shape=(1, 6, 6), scales=3), "divisible by 4, got shape"),
        (lambda: ff.models.RealNVP(shape=(1, 5, 4), scales=2), "divisible by 2, got shape"),
        (lambda: ff.models.RealNVP(shape=(1, 8, 8), layers=4), "layers= counts the couplings"),
        (lambda: ff.models.RealNVP(shape=(1, 2, 2), scales=2), "must keep at least one entry"),
    ],
)
def test_models_refuse_impossible_shapes_at_build_time(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_default_scales():
    assert default_scales((1, 8, 8), "glow") == 2
    assert default_scales((1, 8, 8), "realnvp") == 2
    assert default_scales((3, 32, 32), "glow") == 3
    assert default_scales((3, 32, 32), "realnvp") == 3
    assert default_scales((1, 28, 28), "glow") == 2
    assert default_scales((1, 4, 4), "glow") == 1


# -- squeeze and factor-out ------------------------------------------------------------------------


def test_squeeze_layout_and_exact_inverse():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    sq = T.Squeeze((2, 4, 6))
    z, ladj = sq(x)
    assert z.shape == (1, 8, 2, 3) and ladj.item() == 0
    # channel 4c + 2i + j holds channel c at offset (i, j) of each 2x2 block
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[0, 4 * c + 2 * i + j], x[0, c, i::2, j::2])
    assert torch.equal(sq.inverse(z)[0], x)


def test_factor_out_keeps_every_latent():
    inner = ff.Compose(T.Squeeze((2, 4, 4)), T.ActNorm((8, 2, 2)))
    layer = T.FactorOut((4, 4, 4), inner, prior=True, hidden=8).eval()  # no ActNorm init
    assert layer.output_shape == (64,)
    x = torch.randn(3, 4, 4, 4)
    z, _ = layer(x)
    # at initialisation the prior is the identity: the factored-out half comes first, unchanged
    assert torch.equal(z[:, :32], x[:, 2:].reshape(3, -1))
    assert torch.equal(layer.inverse(z)[0], x)


def test_split_prior_is_a_gaussian_on_the_factored_half():
    """z_out = (x_out - mu) exp(-log_sigma), ladj = -sum log_sigma, mu/log_sigma from kept."""
    torch.manual_seed(0)
    layer = T.FactorOut((4, 2, 2), T.ActNorm((2, 2, 2)), prior=True, hidden=8).double()
    with torch.no_grad():
        for p in layer.prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 4, 2, 2, dtype=torch.float64)
    z, ladj = layer(x)
    params = layer.prior.net(x[:, :2])  # (B, 2 channels * (shift, log-scale), H, W)
    params = params.reshape(5, 2, 2, 2, 2).movedim(2, -1)
    shift, log_scale = params[..., 0], layer.prior.transformer._scale(params[..., 1])
    mu, log_sigma = -shift * torch.exp(-log_scale), -log_scale
    want = (x[:, 2:] - mu) * torch.exp(-log_sigma)
    assert torch.allclose(z[:, :8], want.reshape(5, -1))
    inner_ladj = layer.inner(x[:, :2])[1]
    assert torch.allclose(ladj - inner_ladj, -log_sigma.reshape(5, -1).sum(1))


# -- full models -----------------------------------------------------------------------------------


def _warm(flow, x):
    flow.train()
    with torch.no_grad():
        flow.log_prob(x)  # ActNorm data init, BatchNorm statistics
    flow.eval()
    return flow


def _digits_like(n):
    return torch.randint(0, 17, (n, 1, 8, 8)).float()


@pytest.mark.parametrize(
    "build",
    [
        lambda: ff.models.Glow(shape=(1, 8, 8), steps=2, hidden=16, levels=17),
        lambda: ff.models.RealNVP(shape=(1, 8, 8), hidden=16, blocks=1, levels=17),
        lambda: ff.models.RealNVP(shape=(1, 8, 8), hidden=16, batch_norm=True, levels=17),
    ],
    ids=["glow", "realnvp", "realnvp-bn"],
)
def test_multiscale_models_invert_exactly(build):
    torch.manual_seed(0)
    flow = _warm(build().double(), _digits_like(64).double())
    assert flow.transform.output_shape == (64,)
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64) * 16.9 + 0.05
    z, ladj = flow.transform(x)
    x2, ladj2 = flow.transform.inverse(z)
    assert (x2 - x).abs().max() < 1e-9
    assert (ladj + ladj2).abs().max() < 1e-8
    # and every base sample maps back to the same latent
    z = torch.randn(8, 64, dtype=torch.float64)
    assert (flow.transform(flow.transform.inverse(z)[0])[0] - z).abs().max() < 1e-9


@pytest.mark.parametrize("model", ["Glow", "RealNVP"])
def test_builders_work_with_only_a_shape(model):
    flow = getattr(ff.models, model)(shape=(1, 8, 8))
    assert flow.config["model"] == model and flow.config["kwargs"]["shape"] == [1, 8, 8]
    assert flow.log_prob(torch.randn(2, 1, 8, 8)).shape == (2,)
    assert flow.sample(2).shape == (2, 1, 8, 8)


def test_registered_and_config_is_json():
    import json

    flow = ff.models.build("glow", shape=(1, 4, 4), scales=1, steps=1, hidden=4)
    assert isinstance(flow, ff.Flow) and "glow" in ff.models.available()
    flow = ff.models.RealNVP(shape=(1, 4, 4), scales=2, hidden=4, couplings=1, final_couplings=1)
    # image options are recorded at the top level, so build(**kwargs) rebuilds the same model
    kwargs = json.loads(json.dumps(flow.config))["kwargs"]
    assert kwargs["scales"] == 2 and "image_options" not in kwargs
    again = ff.models.build("RealNVP", **kwargs)
    assert again.state_dict().keys() == flow.state_dict().keys()


@pytest.mark.parametrize("model", ["Glow", "RealNVP"])
def test_temperature_sampling(model):
    torch.manual_seed(0)
    flow = getattr(ff.models, model)(shape=(1, 8, 8), hidden=16, blocks=0, levels=17)
    _warm(flow, _digits_like(128))
    with torch.no_grad():  # a non-trivial flow: move the couplings off the identity
        for p in flow.parameters():
            p.add_(0.02 * torch.randn_like(p))
    for n in (1, 5):
        assert flow.sample(n, temperature=0.7).shape == (n, 1, 8, 8)
    torch.manual_seed(1)
    cold = flow.sample(512, temperature=0.7)
    torch.manual_seed(1)
    warm = flow.sample(512, temperature=1.0)
    assert cold.std(0).mean() < warm.std(0).mean()
    # every scale's latent is scaled: the same noise at T=0.7 is 0.7 times the noise at T=1
    flow.dequantizer, deq = None, flow.dequantizer
    torch.manual_seed(2)
    x07 = flow.sample(16, temperature=0.7)
    torch.manual_seed(2)
    x10 = flow.sample(16, temperature=1.0)
    flow.dequantizer = deq
    z07, z10 = flow.transform(x07)[0], flow.transform(x10)[0]
    assert torch.allclose(z07, 0.7 * z10, atol=1e-3)


@pytest.mark.parametrize("model", ["Glow", "RealNVP"])
def test_context_reaches_the_image_model(model):
    torch.manual_seed(0)
    flow = getattr(ff.models, model)(
        shape=(1, 8, 8), hidden=8, blocks=0, context_features=3, base="diag", levels=17
    )
    for p in flow.parameters():  # leave the zero-initialised identity
        p.data.add_(0.05 * torch.randn_like(p))
    flow.eval()
    x = _digits_like(4)
    c1, c2 = torch.randn(4, 3), torch.randn(4, 3)
    torch.manual_seed(3)
    lp1 = flow.log_prob(x, c1)
    torch.manual_seed(3)
    lp2 = flow.log_prob(x, c2)
    assert not torch.allclose(lp1, lp2)
    assert flow.sample(2, c1, temperature=0.7).shape == (2, 4, 1, 8, 8)
    with pytest.raises(ValueError, match="expects a context"):
        flow.log_prob(x)


def test_conv_conditioner_starts_at_zero_and_reads_context():
    net = ConvResNet(2, 6, hidden=8, blocks=2, context_features=3)
    assert net(torch.randn(4, 2, 5, 5), torch.randn(4, 3)).abs().max() == 0
    net.out[1].weight.data.normal_()
    x = torch.randn(4, 2, 5, 5)
    assert not torch.allclose(net(x, torch.randn(4, 3)), net(x, torch.randn(4, 3)))
    layer = T.Coupling(T.checkerboard_mask((1, 4, 4)), lambda i, o: ConvResNet(i, o), T.Affine())
    x = torch.randn(3, 1, 4, 4)
    z, ladj = layer(x)
    assert torch.equal(z, x) and torch.equal(ladj, torch.zeros(3))


# -- bits per dimension ----------------------------------------------------------------------------


def _gaussian_flow(shape, loc, scale):
    """A flow with a known density: x = loc + scale * N(0, I), dequantizing 17 levels."""
    t = ff.Compose(T.Standardize(shape, loc, scale))
    return ff.Flow(t, ff.distributions.StandardNormal(shape), T.UniformDequantization(17))


def _hand_bpd(x, u, loc, scale):
    y = (x + u - loc) / scale
    d = x[0].numel()
    log_p = -0.5 * (y**2).reshape(len(x), -1).sum(1) - 0.5 * d * math.log(2 * math.pi)
    log_p = log_p - d * math.log(scale)
    return (-log_p / (d * math.log(2))).mean().item()


@pytest.mark.parametrize("n", [1, 7, 200])
def test_bits_per_dim_is_per_image_and_matches_a_hand_computation(n):
    shape, loc, scale = (1, 4, 4), 8.0, 5.0
    flow = _gaussian_flow(shape, loc, scale).double()
    x = torch.randint(0, 17, (n, *shape)).double()
    torch.manual_seed(5)
    u = torch.rand_like(x)  # the dequantization noise ff.bits_per_dim will draw
    torch.manual_seed(5)
    bpd = ff.bits_per_dim(flow, x, levels=17)
    assert bpd == pytest.approx(_hand_bpd(x, u, loc, scale), rel=1e-12)
    # per image, not per batch: the same images repeated give the same figure (in expectation)
    exact = []
    for xi in x:  # E_u[(x + u - loc)^2] = (x + 1/2 - loc)^2 + 1/12
        m2 = ((xi + 0.5 - loc) ** 2 + 1 / 12).sum() / scale**2
        d = xi.numel()
        nll = 0.5 * m2 + 0.5 * d * math.log(2 * math.pi) + d * math.log(scale)
        exact.append(nll / (d * math.log(2)))
    torch.manual_seed(6)
    big = ff.bits_per_dim(flow, x.repeat(2000 // n + 1, 1, 1, 1), levels=17)
    assert big == pytest.approx(torch.stack(exact).mean().item(), rel=2e-3)
    assert 2 < bpd < 6  # a few bits per 17-level pixel, whatever the batch size


def test_bits_per_dim_of_an_image_flow_agrees_with_its_nll():
    torch.manual_seed(0)
    flow = ff.models.Glow(shape=(1, 8, 8), steps=1, hidden=8, levels=17)
    x = _digits_like(10)
    torch.manual_seed(1)
    bpd = ff.bits_per_dim(flow, x, levels=17)
    torch.manual_seed(1)
    nll = ff.nll(flow, x)
    assert bpd == pytest.approx(nll / (64 * math.log(2)), rel=1e-6)
    with pytest.raises(ValueError, match="dequantizes 17 levels"):
        ff.bits_per_dim(flow, x, levels=256)
