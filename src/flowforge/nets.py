"""Conditioners: plain networks that output the parameters of an elementwise transformer.

Every conditioner takes ``(x, context=None)``; a context is concatenated to the input (vectors)
or broadcast as extra channels (images). The last layer is zero-initialised by default, so a
coupling layer built on it starts as the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ResidualMLP", "ConvResNet"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def _activation(name: str) -> type[nn.Module]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}"
        ) from None


class MLP(nn.Module):
    """A multi-layer perceptron ``in_features (+ context) -> hidden... -> out_features``.

    Args:
        in_features: input size.
        out_features: output size.
        hidden: hidden layer widths; ``()`` gives a single linear map.
        context_features: size of a context vector concatenated to the input.
        activation: one of relu, leaky_relu, elu, tanh, gelu, silu.
        zero_init: zero the last layer's weights and bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        activation: str = "relu",
        zero_init: bool = True,
    ):
        super().__init__()
        act = _activation(activation)
        widths = [in_features + context_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(widths[-1], out_features))
        if zero_init:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.context_features = context_features

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            x = torch.cat([x, context], dim=-1)
        return self.net(x)


class ResidualMLP(nn.Module):
    """An MLP with pre-activation residual blocks of constant width ``hidden``.

    Args:
        in_features: input size.
        out_features: output size.
        hidden: block width.
        blocks: number of residual blocks (two linear layers each).
        context_features: size of a context vector concatenated to the input.
        activation: as in :class:`MLP`.
        zero_init: zero the output layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 128,
        blocks: int = 2,
        context_features: int = 0,
        activation: str = "relu",
        zero_init: bool = True,
    ):
        super().__init__()
        act = _activation(activation)
        self.context_features = context_features
        self.inp = nn.Linear(in_features + context_features, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, hidden))
            for _ in range(blocks)
        )
        self.out = nn.Sequential(act(), nn.Linear(hidden, out_features))
        if zero_init:
            nn.init.zeros_(self.out[1].weight)
            nn.init.zeros_(self.out[1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            x = torch.cat([x, context], dim=-1)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class ConvResNet(nn.Module):
    """A convolutional ResNet ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    The conditioner of image couplings and of Glow's split prior: a 3x3 input convolution,
    ``blocks`` pre-activation residual blocks (3x3 then 1x1 convolution, as in Glow's coupling
    network), and a zero-initialised 3x3 output convolution, so a coupling built on it starts
    as the identity. A context vector of size ``context_features`` is broadcast over the image
    and concatenated as extra input channels.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        hidden: channels of the hidden layers.
        blocks: number of residual blocks (0: conv, activation, output conv).
        context_features: size of a context vector read as extra channels.
        activation: as in :class:`MLP`.
        zero_init: zero the output convolution.

    Example:
        >>> net = ConvResNet(2, 4, hidden=16, blocks=1)
        >>> net(torch.randn(3, 2, 8, 8)).shape
        torch.Size([3, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        blocks: int = 2,
        context_features: int = 0,
        activation: str = "relu",
        zero_init: bool = True,
    ):
        super().__init__()
        act = _activation(activation)
        self.context_features = context_features
        self.inp = nn.Conv2d(in_channels + context_features, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                act(), nn.Conv2d(hidden, hidden, 3, padding=1), act(), nn.Conv2d(hidden, hidden, 1)
            )
            for _ in range(blocks)
        )
        self.out = nn.Sequential(act(), nn.Conv2d(hidden, out_channels, 3, padding=1))
        if zero_init:
            nn.init.zeros_(self.out[1].weight)
            nn.init.zeros_(self.out[1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            c = context[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, c], dim=1)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
