"""Model constructors for flowforge and the peer libraries, on matched architectures.

Every constructor returns a :class:`Model` adapter with the same four operations, so that the
runner times and trains all libraries through identical code. A peer that cannot be imported
or cannot build a model raises :class:`Unavailable` with the reason, and the runner records it.

Matching: the same number of layers, the same hidden widths (two hidden layers of ``H``), the
same bins and spline bound, a reversal between autoregressive layers, and the same coupling
masks (first/second half, swapping between layers). Where a peer's public building blocks
cannot express exactly that, the difference is listed in ``Model.note`` and the parameter
counts (printed for every model) show its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

BOUND = 5.0  # spline bound for every library (zuko's fixed default)


class Unavailable(Exception):
    pass


@dataclass
class Model:
    module: nn.Module
    log_prob: callable  # x -> (B,)
    sample: callable  # n -> (n, D)
    note: str = ""

    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def _mlp(i: int, o: int, hidden: int, zero: bool = True) -> nn.Sequential:
    net = nn.Sequential(
        nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, o)
    )
    if zero:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


def _image_shape(kind: str, d: int) -> tuple[int, int, int]:
    """Glow runs on the 64-d digits as (1, 8, 8) images; other data has no image shape."""
    side = math.isqrt(d)
    if side * side != d or side % 2:
        raise Unavailable(f"{kind} is an image model; {d}-d data is not a square image")
    return (1, side, side)


class _GlowNet(nn.Module):
    """Glow's coupling network, as normflows builds it: 3x3, ReLU, 1x1, ReLU, 3x3 (zeroed);
    called as ``net(x, context)`` by flowforge's and nflows' couplings."""

    def __init__(self, i: int, o: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(i, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, o, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x, context=None):
        return self.net(x)


def _image_model(module, log_prob, sample, shape, note="") -> Model:
    """Adapt an image flow to the 64-d rows the runner feeds and returns."""
    return Model(
        module,
        lambda x: log_prob(x.reshape(-1, *shape)),
        lambda n: sample(n).reshape(n, -1),
        note,
    )


# -- flowforge -------------------------------------------------------------------------------------


def flowforge(kind: str, d: int, layers: int, hidden: int, bins: int) -> Model:
    import flowforge as ff

    h = (hidden, hidden)
    if kind == "maf":
        flow = ff.models.MAF(features=d, layers=layers, hidden=h)
    elif kind == "nsf-ar":
        flow = ff.models.NSF(
            features=d, layers=layers, hidden=h, bins=bins, bound=BOUND, autoregressive=True
        )
    elif kind == "nsf-c":
        flow = ff.models.NSF(features=d, layers=layers, hidden=h, bins=bins, bound=BOUND)
    elif kind == "realnvp":
        flow = ff.models.RealNVP(features=d, layers=layers, hidden=h, mask="half")
    elif kind == "glow":
        # one squeeze, then `layers` steps of ActNorm, LU 1x1 convolution and a channel-mask
        # affine coupling with normflows' GlowBlock conditioner (the builder ff.models.Glow is
        # multi-scale with residual conditioners; this is its single-scale core, from parts)
        from flowforge import transforms as T

        shape = _image_shape(kind, d)
        sq = T.Squeeze(shape)
        chain = [sq]
        for _ in range(layers):
            s = sq.output_shape
            chain += [
                T.ActNorm(s),
                T.LULinear(s),
                T.Coupling(T.channel_mask(s), lambda i, o: _GlowNet(i, o, hidden), T.Affine()),
            ]
        flow = ff.Flow(ff.Compose(chain), ff.distributions.StandardNormal(sq.output_shape))
        return _image_model(flow, flow.log_prob, flow.sample, shape)
    else:
        raise Unavailable(f"no {kind}")
    return Model(flow, flow.log_prob, lambda n: flow.sample(n))


# -- nflows --------------------------------------------------------------------------------------


def nflows(kind: str, d: int, layers: int, hidden: int, bins: int) -> Model:
    try:
        from nflows import distributions, flows, transforms
        from nflows.transforms import autoregressive as ar
        from nflows.transforms import coupling as cp
    except Exception as e:  # pragma: no cover - depends on the environment
        raise Unavailable(f"import failed: {type(e).__name__}: {e}") from None

    class Net(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.net = _mlp(i, o, hidden)

        def forward(self, x, context=None):
            return self.net(x)

    if kind == "glow":
        shape = _image_shape(kind, d)
        c = 4 * shape[0]
        chain = [transforms.SqueezeTransform()]
        mask = torch.ones(c)
        mask[: (c + 1) // 2] = -1  # -1: conditions (identity), +1: transformed
        for _ in range(layers):
            chain += [
                transforms.ActNorm(c),
                transforms.OneByOneConvolution(c),
                cp.AffineCouplingTransform(-mask, lambda i, o: _GlowNet(i, o, hidden)),
            ]
        inner = (c, shape[1] // 2, shape[2] // 2)
        flow = flows.Flow(transforms.CompositeTransform(chain), distributions.StandardNormal(inner))
        return _image_model(flow, flow.log_prob, flow.sample, shape)
    chain = []
    for i in range(layers):
        if i and kind != "realnvp":  # RealNVP alternates its masks instead
            chain.append(transforms.ReversePermutation(d))
        if kind == "maf":
            chain.append(
                ar.MaskedAffineAutoregressiveTransform(
                    d, hidden, num_blocks=1, use_residual_blocks=False
                )
            )
        elif kind == "nsf-ar":
            chain.append(
                ar.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    d,
                    hidden,
                    num_bins=bins,
                    tails="linear",
                    tail_bound=BOUND,
                    num_blocks=1,
                    use_residual_blocks=False,
                )
            )
        elif kind in ("nsf-c", "realnvp"):
            mask = torch.ones(d)
            mask[: (d + 1) // 2] = -1  # -1: transformed, +1: identity (nflows' convention)
            if kind == "nsf-c":
                chain.append(
                    cp.PiecewiseRationalQuadraticCouplingTransform(
                        mask, Net, num_bins=bins, tails="linear", tail_bound=BOUND
                    )
                )
            else:
                chain.append(cp.AffineCouplingTransform(-mask if i % 2 else mask, Net))
        else:
            raise Unavailable(f"no {kind}")
    flow = flows.Flow(transforms.CompositeTransform(chain), distributions.StandardNormal([d]))
    return Model(flow, flow.log_prob, lambda n: flow.sample(n))


# -- zuko ----------------------------------------------------------------------------------------


def zuko(kind: str, d: int, layers: int, hidden: int, bins: int) -> Model:
    try:
        import zuko as z
    except Exception as e:  # pragma: no cover
        raise Unavailable(f"import failed: {type(e).__name__}: {e}") from None
    h = (hidden, hidden)
    note = ""
    if kind == "maf":
        flow = z.flows.MAF(d, transforms=layers, hidden_features=h)
    elif kind == "nsf-ar":
        flow = z.flows.NSF(d, bins=bins, transforms=layers, hidden_features=h)
    elif kind == "nsf-c":
        flow = z.flows.NSF(d, bins=bins, transforms=layers, hidden_features=h, passes=2)
        note = "coupling as a 2-pass masked MLP (zuko's way)"
    elif kind == "realnvp":
        # zuko.flows.RealNVP alternates even/odd entries; every other library here splits
        # first/second half (nflows, normflows and FrEIA cannot alternate), and on digits that
        # choice alone moves the NLL by about 3 nats. So: RealNVP's own coupling layer with the
        # half masks of the others (True: the entries that condition).
        half = torch.arange(d) < (d + 1) // 2
        chain = [
            z.flows.GeneralCouplingTransform(d, mask=~half if i % 2 else half, hidden_features=h)
            for i in range(layers)
        ]
        base = z.lazy.UnconditionalDistribution(
            z.distributions.DiagNormal, torch.zeros(d), torch.ones(d), buffer=True
        )
        flow = z.flows.Flow(chain, base)
        note = "RealNVP's couplings with half masks (zuko's RealNVP alternates even/odd)"
    else:
        raise Unavailable(f"no {kind}")
    return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)), note)


# -- normflows -----------------------------------------------------------------------------------


def normflows(kind: str, d: int, layers: int, hidden: int, bins: int) -> Model:
    try:
        import normflows as nf
    except Exception as e:  # pragma: no cover
        raise Unavailable(f"import failed: {type(e).__name__}: {e}") from None
    if kind == "glow":
        shape = _image_shape(kind, d)
        c = 4 * shape[0]
        inner = (c, shape[1] // 2, shape[2] // 2)
        blocks = [nf.flows.GlowBlock(c, hidden, split_mode="channel") for _ in range(layers)]
        model = nf.NormalizingFlow(
            nf.distributions.DiagGaussian(inner, trainable=False), [*blocks, nf.flows.Squeeze()]
        )
        note = "its LU 1x1 conv stores the masked-out triangles: 64 more counted, same map"
        return _image_model(model, model.log_prob, lambda n: model.sample(n)[0], shape, note)
    chain = []
    note = ""
    for i in range(layers):
        if kind == "maf":
            chain.append(
                nf.flows.MaskedAffineAutoregressive(
                    d, hidden, num_blocks=1, use_residual_blocks=False
                )
            )
            note = (
                "an IAF in effect: the MADE reads the noise side (1-pass sample, D-pass log_prob)"
            )
        elif kind == "nsf-ar":
            chain.append(
                nf.flows.AutoregressiveRationalQuadraticSpline(
                    d, 1, hidden, num_bins=bins, tail_bound=BOUND
                )
            )
            note = "residual MADE (1 block: 3 hidden linear layers), not configurable"
        elif kind == "nsf-c":
            chain.append(
                nf.flows.CoupledRationalQuadraticSpline(
                    d, 1, hidden, num_bins=bins, tail_bound=BOUND, reverse_mask=bool(i % 2)
                )
            )
            note = "residual MLP conditioner (1 block: 3 hidden linear layers), not configurable"
        elif kind == "realnvp":
            half = d // 2
            net = nf.nets.MLP([half, hidden, hidden, 2 * (d - half)], init_zeros=True)
            chain.append(nf.flows.AffineCouplingBlock(net, scale_map="exp"))
            chain.append(nf.flows.Permute(d, mode="swap"))
            continue
        else:
            raise Unavailable(f"no {kind}")
        if kind in ("maf", "nsf-ar") and i < layers - 1:
            chain.append(nf.flows.Permute(d, mode="swap"))
    if d % 2 and kind == "realnvp":
        raise Unavailable("odd dimension")
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), chain)
    return Model(model, model.log_prob, lambda n: model.sample(n)[0], note)


# -- FrEIA ---------------------------------------------------------------------------------------


def freia(kind: str, d: int, layers: int, hidden: int, bins: int) -> Model:
    if kind != "realnvp":
        raise Unavailable("no MAF/NSF layer in FrEIA")
    try:
        import FrEIA.framework as Ff
        import FrEIA.modules as Fm
    except Exception as e:  # pragma: no cover
        raise Unavailable(f"import failed: {type(e).__name__}: {e}") from None
    if layers % 2:
        raise Unavailable("FrEIA's GLOW block is two couplings; needs an even layer count")
    inn = Ff.SequenceINN(d)
    for _ in range(layers // 2):
        inn.append(
            Fm.GLOWCouplingBlock,
            subnet_constructor=lambda i, o: _mlp(i, o, hidden),
            clamp=3.0,
        )
    c = 0.5 * d * math.log(2 * math.pi)

    def log_prob(x):
        z, jac = inn(x)
        return -0.5 * z.square().sum(1) - c + jac

    def sample(n):
        return inn(torch.randn(n, d, device=next(inn.parameters()).device), rev=True)[0]

    return Model(inn, log_prob, sample, "GLOWCouplingBlock = two affine couplings")


LIBRARIES = {
    "flowforge": flowforge,
    "nflows": nflows,
    "zuko": zuko,
    "normflows": normflows,
    "FrEIA": freia,
}
