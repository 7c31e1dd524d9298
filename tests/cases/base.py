"""The :class:`Case` of the generic test and small builders shared by the case modules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import flowforge as ff
from flowforge.nets import MLP


@dataclass
class Case:
    """One layer or model the generic test runs on.

    The event shape and the context shape are read from the built module, so they cannot drift
    from it. Tags: ``"loose"`` allows a float64 numerical-inverse tolerance above
    :data:`NUMERIC_CAP` (say why next to the case).
    """

    name: str
    build: Callable[[], torch.nn.Module]  # a Transform, or a Flow for a model
    sample: Callable[[int, tuple], torch.Tensor] | None = None  # input sampler (default randn)
    tags: set = field(default_factory=set)
    # noise sampler for the round trip from fresh noise (default randn); a base with bounded
    # support (angles on a torus) needs noise inside it
    noise: Callable[[int, tuple], torch.Tensor] | None = None
    # a registered model that is not a Flow (an M-flow) whose invertible parts this case checks
    covers: str | None = None

    @functools.cached_property
    def _built(self) -> torch.nn.Module:
        return self.build()

    @property
    def is_flow(self) -> bool:
        return isinstance(self._built, ff.Flow)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._built.event_shape)

    @property
    def context_shape(self) -> tuple[int, ...]:
        m = self._built
        t = m.transform if isinstance(m, ff.Flow) else m
        if isinstance(m, ff.Flow) and m.context_features:
            return (m.context_features,)
        return tuple(t.context_shape)

    @property
    def context(self) -> bool:
        return bool(self.context_shape)

    def draw(self, n: int, dtype=torch.float64) -> torch.Tensor:
        if self.sample is not None:
            return self.sample(n, self.shape).to(dtype)
        return torch.randn(n, *self.shape, dtype=dtype)

    def draw_noise(self, n: int, shape: tuple, dtype=torch.float64) -> torch.Tensor:
        if self.noise is not None:
            return self.noise(n, shape).to(dtype)
        return torch.randn(n, *shape, dtype=dtype)

    def draw_context(self, n: int, dtype=torch.float64) -> torch.Tensor | None:
        return torch.randn(n, *self.context_shape, dtype=dtype) if self.context else None


def mlp(context=0, hidden=(16,)):
    return lambda i, o: MLP(i, o, hidden, context, activation="tanh")


def in_levels(levels):
    return lambda n, shape: torch.rand(n, *shape) * (levels - 0.02) + 0.01


def in_unit_interval(n, shape):
    return torch.rand(n, *shape) * 0.98 + 0.01


def perturbed(m: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """``m`` with every parameter moved by ``scale`` standard normal noise (seeded), so that
    checks do not run at an identity initialisation."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m
