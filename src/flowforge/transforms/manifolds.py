r"""Flows on known manifolds: circles, tori and the 2-sphere (Rezende et al., 2020).

Coordinates
-----------
An angle lives in ``[-pi, pi]`` (``pi`` and ``-pi`` are the same point; outputs are wrapped
into ``[-pi, pi)``). A point of the torus ``T^D`` is a vector of ``D`` angles. The flat torus's
volume is Lebesgue measure on ``[-pi, pi)^D``, so a density over the angles *is* the density
with respect to the manifold's volume.

A point of the 2-sphere is a unit vector ``x`` in ``R^3``. :class:`SphereToCylinder` maps it to
cylindrical coordinates ``(phi, t) = (atan2(x_1, x_0), x_2)`` in ``[-pi, pi) x [-1, 1]``.
Archimedes' map is area-preserving (``dA = dphi dt``), so a density over ``(phi, t)`` is the
density with respect to the sphere's area, and the chart's log-determinant is 0.

Layers
------
Every circle map here is a diffeomorphism of the circle:

- the *circular spline*: a rotation by ``a``, a rational-quadratic spline of ``[-pi, pi]`` onto
  itself with slope 1 at both ends (so its ends join smoothly), a rotation by ``b``;
  ``3K + 1`` parameters per angle (``a``, ``b`` and the spline's ``3K - 1``);
- the *Moebius map* ``z -> (z - w) / (1 - conj(w) z)`` on the unit circle, ``|w| < 1``, then a
  rotation: 3 parameters per angle (``w = 0.99 p / sqrt(1 + |p|^2)`` and the rotation).

All-zero parameters give the identity. :class:`CircularElementwise` applies one map per angle
with free parameters (the only kind of flow on a single circle); :class:`CircularCoupling` is a
coupling layer on a product of circles and intervals ``[-1, 1]``: the kept coordinates, angles
embedded as ``(cos, sin)``, parametrise the maps of the others (circle maps for angles, a
rational-quadratic spline of ``[-1, 1]`` for interval coordinates). The bases are
:class:`UniformTorus` and :class:`UniformCylinder` (the uniform distribution on the sphere, in
cylindrical coordinates).

Bad input gets a ``ValueError``: angles outside ``[-pi, pi]``, interval coordinates outside
``[-1, 1]``, vectors whose norm is not 1 (to ``1e-4``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._util import checked_int
from ..core import Distribution, Transform, checking
from ..nets import MLP
from .splines import rational_quadratic

__all__ = [
    "CircularCoupling",
    "CircularElementwise",
    "SphereToCylinder",
    "UniformCylinder",
    "UniformTorus",
    "circle_map",
    "wrap",
]

PI = math.pi
NORM_TOL = 1e-4  # how far from 1 the norm of a point on the sphere may be
MAPS = ("spline", "moebius")


def wrap(x: Tensor) -> Tensor:
    """Angles wrapped into ``[-pi, pi)``."""
    return torch.remainder(x + PI, 2 * PI) - PI


def check_angles(x: Tensor, what: str) -> None:
    """``ValueError`` unless every entry of ``x`` is an angle in ``[-pi, pi]`` (where values
    are checked: :func:`flowforge.core.checking`)."""
    if x.numel() and checking(x) and (x.min() < -PI or x.max() > PI):
        lo, hi = x.min().item(), x.max().item()
        fix = (
            # float32's pi, or pi rounded up in a printout, met by a float64 flow
            "pi rounded up (float32's pi is 3.1415927): clamp them, x.clamp(-pi, pi); -pi and "
            "pi are the same angle"
            if max(hi, -lo) - PI < 1e-5
            else "wrap them first, e.g. torch.remainder(x + pi, 2 * pi) - pi"
        )
        raise ValueError(
            f"expected {what} to be angles in [-pi, pi], got values in [{lo:.10g}, {hi:.10g}] "
            f"({fix})"
        )


def _torus_input(layer: Transform, inverse: bool) -> str:
    """What a circle layer's angle check calls its input: what the user gave, a torus flow's
    data (or noise, inverting), with the layer that checked it."""
    name = type(layer).__name__
    if inverse:
        return f"a torus flow's noise ({name}.inverse's input)"
    return f"a torus flow's input ({name}'s)"


def check_interval(t: Tensor, what: str) -> None:
    """``ValueError`` unless every entry of ``t`` lies in ``[-1, 1]`` (where values are
    checked: :func:`flowforge.core.checking`)."""
    if t.numel() and checking(t) and (t.min() < -1 or t.max() > 1):
        raise ValueError(
            f"expected {what} in [-1, 1], got values in "
            f"[{t.min().item():.10g}, {t.max().item():.10g}]"
        )


def params_per_angle(kind: str, bins: int) -> int:
    if kind == "spline":
        return 3 * bins + 1
    if kind == "moebius":
        return 3
    raise ValueError(f"unknown circle map {kind!r} (available: {', '.join(MAPS)})")


def _spline(x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    a, b, p = params[..., 0], params[..., 1], params[..., 2:]
    if not inverse:
        y, ladj = rational_quadratic(wrap(x + a), p, bound=PI)
        return wrap(y + b), ladj
    u, ladj = rational_quadratic(wrap(x - b), p, inverse=True, bound=PI)
    return wrap(u - a), ladj


def _moebius(x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    p = params[..., :2]
    w = 0.99 * p / torch.sqrt(1 + p.square().sum(-1, keepdim=True))
    wr, wi = w.unbind(-1)
    c = params[..., 2]
    if inverse:  # the inverse of z -> (z - w) / (1 - conj(w) z) is the same map with -w
        x, wr, wi = wrap(x - c), -wr, -wi
    cos, sin = torch.cos(x), torch.sin(x)
    nr, ni = cos - wr, sin - wi  # z - w
    qr, qi = 1 - (wr * cos + wi * sin), wi * cos - wr * sin  # 1 - conj(w) z
    y = torch.atan2(ni * qr - nr * qi, nr * qr + ni * qi)  # arg((z - w) / (1 - conj(w) z))
    # |f'(z)| = (1 - |w|^2) / |z - w|^2 on the unit circle
    ladj = torch.log1p(-(wr * wr + wi * wi)) - torch.log(nr * nr + ni * ni)
    if inverse:
        return y, ladj
    return wrap(y + c), ladj


def circle_map(
    kind: str, x: Tensor, params: Tensor, *, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """A circle diffeomorphism applied to each angle of ``x``; returns ``(y, elementwise ladj)``.

    Args:
        kind: ``"spline"`` or ``"moebius"`` (see the module docstring).
        x: angles in ``[-pi, pi]``, any shape.
        params: ``(*x.shape, P)`` with ``P = 3K + 1`` for a ``K``-bin spline, 3 for Moebius.
        inverse: apply the inverse map (its ladj is ``log|dx/dy|``).
    """
    return (_spline if kind == "spline" else _moebius)(x, params, inverse)


def _bins_of(kind: str, params: int) -> int:
    return (params - 1) // 3 if kind == "spline" else 0


class CircularElementwise(Transform):
    r"""One circle map per angle, with free parameters: a flow on the circle (``features=1``)
    or an elementwise layer on the torus.

    Args:
        features: number of angles ``D`` (the event shape is ``(D,)``).
        kind: ``"spline"`` (circular rational-quadratic spline) or ``"moebius"``.
        bins: the spline's number of bins ``K`` (ignored by Moebius).

    Example:
        >>> layer = CircularElementwise(2, bins=4)
        >>> z, ladj = layer(torch.rand(5, 2) * 6 - 3)
        >>> bool((z >= -math.pi).all() and (z < math.pi).all())
        True
    """

    def __init__(self, features: int, kind: str = "spline", bins: int = 8):
        features = checked_int("features", features)
        super().__init__((features,))
        _check_bins(kind, bins)
        self.kind = kind
        self.params = nn.Parameter(torch.zeros(features, params_per_angle(kind, bins)))

    def _map(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        check_angles(x, _torus_input(self, inverse))
        p = self.params.expand(x.shape[0], *self.params.shape)
        y, ladj = circle_map(self.kind, x, p, inverse=inverse)
        return y, ladj.sum(1)

    def _forward(self, x, context):
        return self._map(x, inverse=False)

    def _inverse(self, z, context):
        return self._map(z, inverse=True)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kind={self.kind}"


def _check_bins(kind: str, bins: int) -> None:
    params_per_angle(kind, bins)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"expected bins to be an integer >= 2, got {bins!r}")


class _Embed(nn.Module):
    """The conditioner: kept angles as ``(cos, sin)``, kept interval coordinates as they are,
    into an MLP with a zero-initialised last layer."""

    def __init__(self, periodic: Tensor, out: int, hidden: Sequence[int], activation: str):
        super().__init__()
        self.register_buffer("periodic", periodic, persistent=False)
        # positions rather than boolean masks: indexing by a mask reads it back to the host
        self.register_buffer("angles", periodic.nonzero().squeeze(1), persistent=False)
        self.register_buffer("others", (~periodic).nonzero().squeeze(1), persistent=False)
        n_in = int(periodic.sum()) * 2 + int((~periodic).sum())
        self.mlp = MLP(n_in, out, tuple(hidden), 0, activation, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        a = x.index_select(1, self.angles)
        return self.mlp(torch.cat([torch.cos(a), torch.sin(a), x.index_select(1, self.others)], 1))


class CircularCoupling(Transform):
    r"""A coupling layer on a product of circles and intervals ``[-1, 1]``.

    The kept coordinates (``mask`` True) pass through and parametrise, through an MLP that sees
    angles as ``(cos, sin)``, a map of each other coordinate: a circle map for an angle, a
    rational-quadratic spline of ``[-1, 1]`` onto itself for an interval coordinate. The layer
    starts as the identity (zero-initialised last layer).

    Args:
        periodic: bool per coordinate, True for an angle in ``[-pi, pi]``, False for a
            coordinate in ``[-1, 1]``.
        mask: bool per coordinate, True for the kept (conditioning) ones; at least one kept and
            one transformed.
        kind: the circle map, ``"spline"`` or ``"moebius"``.
        bins: the splines' number of bins.
        hidden: the MLP's hidden widths.
        activation: the MLP's activation.

    Example:
        >>> layer = CircularCoupling([True, True], [True, False], bins=4, hidden=(8,))
        >>> z, ladj = layer(torch.rand(5, 2) * 6 - 3)
        >>> z.shape, ladj.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(
        self,
        periodic: Sequence[bool],
        mask: Sequence[bool],
        kind: str = "spline",
        bins: int = 8,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
    ):
        periodic = torch.as_tensor(periodic, dtype=torch.bool).reshape(-1)
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if periodic.shape != mask.shape:
            raise ValueError(f"periodic has {periodic.numel()} entries but mask has {mask.numel()}")
        if not mask.any() or mask.all():
            raise ValueError(
                f"a coupling mask must keep at least one coordinate and transform at least one, "
                f"got {mask.tolist()}"
            )
        super().__init__((periodic.numel(),))
        _check_bins(kind, bins)
        self.kind, self.bins = kind, int(bins)
        self.register_buffer("periodic", periodic, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        moved = ~mask
        self.register_buffer("moved_angles", (moved & periodic).nonzero().squeeze(1), False)
        self.register_buffer("moved_interval", (moved & ~periodic).nonzero().squeeze(1), False)
        self.register_buffer("kept", mask.nonzero().squeeze(1), False)
        self.register_buffer("angles", periodic.nonzero().squeeze(1), False)
        self.register_buffer("intervals", (~periodic).nonzero().squeeze(1), False)
        self.n_circle = params_per_angle(kind, bins)
        self.n_interval = 3 * self.bins - 1
        out = len(self.moved_angles) * self.n_circle + len(self.moved_interval) * self.n_interval
        self.net = _Embed(periodic[mask], out, hidden, activation)

    def _check(self, x: Tensor, inverse: bool) -> None:
        if checking(x):  # (the selections themselves read nothing back)
            check_angles(x.index_select(1, self.angles), _torus_input(self, inverse))
            what = f"{type(self).__name__}{'.inverse' if inverse else ''} input"
            check_interval(x.index_select(1, self.intervals), f"{what}'s interval coordinates")

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        self._check(x, inverse)
        h = self.net(x.index_select(1, self.kept))
        n_a = len(self.moved_angles) * self.n_circle
        pa = h[:, :n_a].reshape(x.shape[0], -1, self.n_circle)
        pi = h[:, n_a:].reshape(x.shape[0], -1, self.n_interval)
        # (a map of no coordinates is left out, not run on empty tensors: torch.compile's
        # backward of those crashed the process, a segmentation fault, in torch 2.13)
        y, ladj = x, None
        if len(self.moved_angles):
            ya, la = circle_map(self.kind, x[:, self.moved_angles], pa, inverse=inverse)
            y, ladj = y.index_copy(1, self.moved_angles, ya), la.sum(1)
        if len(self.moved_interval):
            yi, li = rational_quadratic(x[:, self.moved_interval], pi, inverse=inverse, bound=1.0)
            y = y.index_copy(1, self.moved_interval, yi)
            ladj = li.sum(1) if ladj is None else ladj + li.sum(1)
        return y, ladj

    def _forward(self, x, context):
        return self._couple(x, inverse=False)

    def _inverse(self, z, context):
        return self._couple(z, inverse=True)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", periodic={self.periodic.tolist()}, mask={self.mask.tolist()}, kind={self.kind}"
        )


class SphereToCylinder(Transform):
    r"""The sphere's area-preserving chart: unit vectors ``x`` in ``R^3`` to
    ``(phi, t) = (atan2(x_1, x_0), x_2)`` in ``[-pi, pi) x [-1, 1]``; ladj 0 (Archimedes:
    ``dA = dphi dt``).

    Event shape ``(3,)``, output shape ``(2,)``. Its Jacobian is not square: the log-determinant
    is the change of area, ``(1/2) log det(J J^T)`` of the forward Jacobian (which ignores the
    normal direction: ``x`` is normalised first) and ``(1/2) log det(J^T J)`` of the inverse's,
    both 0.

    Example:
        >>> chart = SphereToCylinder()
        >>> x = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
        >>> u, ladj = chart(x)
        >>> torch.allclose(chart.inverse(u)[0], x, atol=1e-6)
        True
    """

    projects = True  # normalises its input: the inverse gives back x / |x|, not x

    def __init__(self):
        super().__init__((3,), output_shape=(2,))

    def _forward(self, x, context):
        r = x.norm(dim=1)
        off = (r - 1).abs().max().item() if r.numel() and checking(x) else 0.0
        if not off <= NORM_TOL:
            raise ValueError(
                f"expected unit vectors on the sphere (norm 1 to {NORM_TOL:g}), got norms in "
                f"[{r.min().item():.6g}, {r.max().item():.6g}]"
            )
        x = x / r.unsqueeze(1)
        # (+ 0.0: a signed zero is +0, so a pole is scored at atan2(0, 0) = 0 whichever zero
        # the point holds: atan2(0, -0.0) is pi, and -0.0 comes from r cos(a) at r = 0)
        phi = torch.atan2(x[:, 1] + 0.0, x[:, 0] + 0.0)
        return torch.stack([phi, x[:, 2]], 1), x.new_zeros(x.shape[0])

    def _inverse(self, z, context):
        check_angles(z[:, 0], "SphereToCylinder.inverse longitude")
        check_interval(z[:, 1], "SphereToCylinder.inverse height")
        phi, t = z.unbind(1)
        rho = torch.sqrt((1 - t * t).clamp(min=0))
        return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), t], 1), z.new_zeros(
            z.shape[0]
        )

    def extra_repr(self) -> str:
        return ""


class UniformTorus(Distribution):
    r"""The uniform distribution on the torus ``T^D``: angles uniform in ``[-pi, pi)^D``,
    density ``(2 pi)^-D``. The circle is ``D = 1``.

    ``log_prob`` refuses angles outside ``[-pi, pi]``; sampling has no temperature (only
    ``temperature=1`` is accepted).
    """

    def __init__(self, features: int):
        features = checked_int("features", features)
        super().__init__((features,))
        self.log_volume = features * math.log(2 * PI)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        check_angles(z, "points on the torus")
        return _constant(z, -self.log_volume)

    def _sample(self, n, context, temperature):
        _no_temperature(temperature)
        a = self._anchor
        return (torch.rand(n, self.features, dtype=a.dtype, device=a.device) * 2 - 1) * PI


class UniformCylinder(Distribution):
    r"""The uniform distribution on the 2-sphere in cylindrical coordinates ``(phi, t)``:
    uniform on ``[-pi, pi) x [-1, 1]``, density ``1 / (4 pi)`` (the sphere's area is ``4 pi``).
    """

    def __init__(self):
        super().__init__((2,))

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        check_angles(z[:, 0], "the longitude")
        check_interval(z[:, 1], "the height")
        return _constant(z, -math.log(4 * PI))

    def _sample(self, n, context, temperature):
        _no_temperature(temperature)
        a = self._anchor
        u = torch.rand(n, 2, dtype=a.dtype, device=a.device) * 2 - 1
        return torch.cat([u[:, :1] * PI, u[:, 1:]], 1)  # (no constant copied to the device)


def _constant(z: Tensor, value: float) -> Tensor:
    """``value`` per example, kept in ``z``'s autograd graph (its gradient is zero)."""
    return (z * 0).sum(1) + value


def _no_temperature(temperature: float) -> None:
    if temperature != 1:
        raise ValueError(
            f"a uniform base on a compact manifold has no temperature; got {temperature!r}, "
            "expected 1"
        )
