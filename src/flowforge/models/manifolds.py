r"""Flows on known manifolds: ``TorusFlow`` (the circle is ``features=1``) and ``SphereFlow``.

Both have exact densities with respect to the manifold's volume (angle measure on the torus,
area on the sphere) and a uniform base; see :mod:`flowforge.transforms.manifolds`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401  (doctests use it)

from ..core import Compose, Flow, Transform
from ..torch_distributions import angles, unit_vectors
from ..transforms.manifolds import (
    CircularCoupling,
    CircularElementwise,
    SphereToCylinder,
    UniformCylinder,
    UniformTorus,
)
from .assembly import count, event_shape, widths
from .registry import register

__all__ = ["SphereFlow", "TorusFlow"]


def _layers(layers: int) -> int:
    return count("layers", layers)


@register(inputs=("features",), depth="layers", width="hidden", lr=1e-2)
def TorusFlow(
    features: int | None = None,
    layers: int = 4,
    bins: int = 8,
    hidden: Sequence[int] | int = (64, 64),
    kind: str = "spline",
    activation: str = "relu",
) -> Flow:
    r"""A flow on the circle or the torus ``T^D`` (Rezende et al., 2020), uniform base.

    Data are ``D`` angles in ``[-pi, pi]``. On the circle (``features=1``) it is ``layers``
    circle maps with free parameters; on the torus, ``layers`` couplings with alternating
    masks, each transforming half the angles with maps parametrised by the other half (seen as
    ``(cos, sin)``), then one elementwise layer. ``log_prob`` is the density with respect to
    angle measure; it integrates to 1 over ``[-pi, pi)^D``.

    Args:
        features: the number of angles ``D``.
        layers: number of couplings (circle: number of circle maps).
        bins: bins of each circular spline.
        hidden: widths of the couplings' MLPs.
        kind: the circle map, ``"spline"`` (circular rational-quadratic spline) or
            ``"moebius"`` (Moebius map and rotation). Moebius maps of the circle compose into
            one Moebius map: on the circle (``features=1``) a Moebius flow is a wrapped Cauchy
            density however many ``layers`` (unimodal; an audit: 0.36 nats from a 3-mode truth
            at 1 and at 4 layers, the spline 0.002-0.004); on the torus its couplings, whose
            parameters come from the other angles, do not compose so.
        activation: the MLPs' activation.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.TorusFlow(features=2, layers=2, hidden=(16,))
        >>> flow.sample(3).shape
        torch.Size([3, 2])
    """
    (d,) = event_shape(features, None)
    layers = _layers(layers)
    chain: list[Transform] = []
    if d == 1:
        chain = [CircularElementwise(1, kind, bins) for _ in range(layers)]
    else:
        for i in range(layers):
            mask = [(j + i) % 2 == 0 for j in range(d)]
            chain.append(CircularCoupling([True] * d, mask, kind, bins, widths(hidden), activation))
        chain.append(CircularElementwise(d, kind, bins))
    flow = Flow(Compose(chain), UniformTorus(d))
    flow.support = angles  # (as_torch reports it)
    return flow


@register(inputs=("features",), depth="layers", width="hidden", lr=1e-2)
def SphereFlow(
    features: int | None = 3,
    layers: int = 4,
    bins: int = 8,
    hidden: Sequence[int] | int = (64, 64),
    kind: str = "spline",
    activation: str = "relu",
) -> Flow:
    r"""A flow on the 2-sphere through cylindrical coordinates, uniform base.

    Data are unit vectors in ``R^3``. :class:`~flowforge.transforms.manifolds.SphereToCylinder`
    maps them to ``(phi, t)`` (area-preserving), then couplings alternate between a circle map
    of the longitude ``phi`` given the height ``t`` and a spline of ``t`` in ``[-1, 1]`` given
    ``(cos phi, sin phi)``. The base is uniform on the sphere, so ``log_prob`` is the density with
    respect to area and integrates to 1 over the sphere.

    Args:
        features: must be 3 (the sphere's embedding space).
        layers: number of couplings (an even number alternates evenly).
        bins: bins of each spline.
        hidden: widths of the couplings' MLPs.
        kind: the longitude's circle map, ``"spline"`` or ``"moebius"``.
        activation: the MLPs' activation.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.SphereFlow(layers=2, hidden=(16,))
        >>> x = flow.sample(3)
        >>> torch.allclose(x.norm(dim=1), torch.ones(3), atol=1e-5)
        True
    """
    (d,) = event_shape(features, None)
    if d != 3:
        raise ValueError(
            f"SphereFlow models unit vectors in R^3: expected features=3, got {d}"
            + (
                " (latitude and longitude? in radians, the unit vector is (cos lat cos lon, "
                "cos lat sin lon, sin lat))"
                if d == 2
                else ""
            )
        )
    layers = _layers(layers)
    chain: list[Transform] = [SphereToCylinder()]
    for i in range(layers):
        mask = [i % 2 == 1, i % 2 == 0]  # even layers move phi, odd layers move t
        chain.append(CircularCoupling([True, False], mask, kind, bins, widths(hidden), activation))
    flow = Flow(Compose(chain), UniformCylinder())
    flow.support = unit_vectors  # (as_torch reports it)
    return flow
