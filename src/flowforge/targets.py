r"""Unnormalised target densities for variational inference, and grid normalisation.

Each target is a :class:`Target`: a callable ``target(x) -> log p~(x)`` of shape ``(batch,)``
with a ``name``, a dimension, a plotting box and, where it is known, the exact ``log Z``.
``TARGETS`` maps names to targets; :func:`get` looks one up (with a clear error), and
:func:`register` adds one of your own (``flowforge fit-target --import mytarget.py --target
mine`` then fits it).

The energies of Rezende & Mohamed (2015, Table 1), ``p~(z) = exp(-U(z))``:

- ``u1``: a ring broken into two arcs;
- ``u2``: a sine wave;
- ``u3``: a sine wave that splits into two;
- ``u4``: a sine wave and a step.

``U2``-``U4`` are constant along ``z1``, so ``exp(-U)`` has infinite mass on the plane; the
paper plots them on ``[-4, 4]²``. Here they get a soft wall ``0.5 ((|z1| - 4)_+ / 0.2)²``,
which leaves them unchanged inside that square and makes them normalisable, so that ``log Z``
and the true ``KL(q || p)`` exist (:func:`grid_log_z` computes ``log Z`` numerically).

Also: ``banana`` (a normalised curved Gaussian), ``funnel`` (Neal's funnel, normalised;
``funnel10`` in 10 dimensions), ``mog2`` and ``mog8`` (normalised Gaussian mixtures: two modes,
and eight on a ring).

Example:
    >>> import flowforge as ff
    >>> t = ff.targets.get("u1")
    >>> t(torch.zeros(3, 2)).shape
    torch.Size([3])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._util import LOG_2PI, unknown
from .objectives import check_log_prob

__all__ = [
    "Target",
    "TARGETS",
    "get",
    "register",
    "available",
    "grid_log_z",
    "grid",
    "gaussian_mixture",
]


@dataclass(frozen=True)
class Target:
    """An unnormalised log-density with a name.

    Attributes:
        name: the registry key.
        fn: ``x (batch, dim) -> log p~(x) (batch,)``.
        dim: dimension.
        box: ``(x_min, x_max, y_min, y_max)`` for plots and grid integration (2-D targets).
        log_z: the exact ``log Z`` if known (0 for normalised densities), else ``None``.
        description: one line.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    dim: int
    box: tuple[float, float, float, float]
    log_z: float | None = None
    description: str = ""

    def __call__(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is not None:
            raise ValueError(
                f"target {self.name!r} takes no context; a conditional flow fitted to it needs a "
                "target of (x, context)"
            )
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"target {self.name!r} is {self.dim}-dimensional, got x of shape {tuple(x.shape)}"
            )
        return check_log_prob(self.fn(x), x, self.name)


# -- Rezende & Mohamed (2015) ------------------------------------------------------------------


def _w1(z):
    return torch.sin(2 * math.pi * z[..., 0] / 4)


def _w2(z):
    return 3 * torch.exp(-0.5 * ((z[..., 0] - 1) / 0.6) ** 2)


def _w3(z):
    return 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)


def _wall(z):
    return 0.5 * (torch.relu(z[..., 0].abs() - 4) / 0.2) ** 2


def _lse(a, b):
    return torch.logaddexp(a, b)


def _u1(z):
    r = z.norm(dim=-1)
    u = 0.5 * ((r - 2) / 0.4) ** 2
    u = u - _lse(-0.5 * ((z[..., 0] - 2) / 0.6) ** 2, -0.5 * ((z[..., 0] + 2) / 0.6) ** 2)
    return -u


def _u2(z):
    return -(0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2) - _wall(z)


def _u3(z):
    a = -0.5 * ((z[..., 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[..., 1] - _w1(z) + _w2(z)) / 0.35) ** 2
    return _lse(a, b) - _wall(z)


def _u4(z):
    a = -0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[..., 1] - _w1(z) + _w3(z)) / 0.35) ** 2
    return _lse(a, b) - _wall(z)


# -- normalised targets ------------------------------------------------------------------------


def _normal(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - 0.5 * LOG_2PI


def _banana(z):
    x1, x2 = z[..., 0], z[..., 1]
    return _normal(x1, 0.0, 2.0) + _normal(x2, 0.25 * x1**2 - 1, 0.5)


def _funnel(z):
    v, x = z[..., 0], z[..., 1:]
    # x_i | v ~ N(0, exp(v)): log-density -x²/(2 e^v) - v/2 - log(2 pi)/2
    # (x e^{-v/2})² rather than x² e^{-v}: in the neck (v < -88 in float32) e^{-v} overflows
    # and x² underflows, where their product is an ordinary number
    scaled = x * torch.exp(-0.5 * v).unsqueeze(-1)
    lx = -0.5 * scaled.square() - 0.5 * v.unsqueeze(-1) - 0.5 * LOG_2PI
    return _normal(v, 0.0, 3.0) + lx.sum(-1)


def gaussian_mixture(locs, scale: float, weights=None) -> Callable[[Tensor], Tensor]:
    """The log-density of an isotropic Gaussian mixture (normalised)."""
    locs = torch.as_tensor(locs, dtype=torch.float64)
    if locs.dim() != 2 or not locs.numel() or not bool(torch.isfinite(locs).all()):
        raise ValueError(
            f"expected finite component means of shape (K, D), got {tuple(locs.shape)}"
        )
    k, d = locs.shape
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(f"expected a finite scale > 0, got {scale!r}")
    w = (
        torch.full((k,), 1.0 / k)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )
    if w.shape != (k,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or w.sum() <= 0:
        raise ValueError(
            f"expected {k} finite weights >= 0 with a positive sum (one per mean), got "
            f"{w.tolist() if w.numel() <= 8 else tuple(w.shape)}"
        )
    log_w = torch.log(w / w.sum()).to(torch.float64)

    moved: dict = {}  # (device, dtype) -> (locs, log_w): copied there once, not every call

    def fn(x):
        key = (x.device, x.dtype)
        if key not in moved:
            moved[key] = (locs.to(x), log_w.to(x))
        loc, lw = moved[key]
        lp = _normal(x.unsqueeze(-2), loc, scale).sum(-1) + lw
        return torch.logsumexp(lp, -1)

    return fn


_ring = [[3 * math.cos(2 * math.pi * i / 8), 3 * math.sin(2 * math.pi * i / 8)] for i in range(8)]

TARGETS: dict[str, Target] = {}


def _add(t: Target) -> None:
    TARGETS[t.name] = t


_add(Target("u1", _u1, 2, (-4, 4, -4, 4), None, "Rezende & Mohamed U1: a ring in two arcs"))
_add(Target("u2", _u2, 2, (-4, 4, -4, 4), None, "Rezende & Mohamed U2: a sine wave"))
_add(Target("u3", _u3, 2, (-4, 4, -4, 4), None, "Rezende & Mohamed U3: a splitting sine"))
_add(Target("u4", _u4, 2, (-4, 4, -4, 4), None, "Rezende & Mohamed U4: a sine and a step"))
_add(Target("banana", _banana, 2, (-6, 6, -3, 8), 0.0, "a curved Gaussian (normalised)"))
_add(Target("funnel", _funnel, 2, (-8, 8, -10, 10), 0.0, "Neal's funnel, v ~ N(0, 9)"))
_add(Target("funnel10", _funnel, 10, (-8, 8, -10, 10), 0.0, "Neal's funnel in 10-D"))
_add(
    Target(
        "mog2",
        gaussian_mixture([[-2.0, 0.0], [2.0, 0.0]], 0.6),
        2,
        (-4, 4, -4, 4),
        0.0,
        "two Gaussians",
    )
)
_add(Target("mog8", gaussian_mixture(_ring, 0.3), 2, (-4.5, 4.5, -4.5, 4.5), 0.0, "eight modes"))


def register(
    name: str,
    log_prob: Callable[[Tensor], Tensor],
    dim: int,
    log_z: float | None = None,
    box: tuple[float, float, float, float] | None = None,
    description: str = "",
) -> Target:
    """Add a target of your own to ``TARGETS`` under ``name`` (case-insensitive), and return it.

    ``log_prob(x)`` maps ``x`` of shape ``(batch, dim)`` to ``log p~(x)`` of shape ``(batch,)``,
    in torch operations on ``x`` (the reverse KL trains through its gradient); ``log_z`` is
    its exact ``log Z`` if known. ``box`` ``(x0, x1, y0, y1)`` is where the plots look (default
    ``(-4, 4, -4, 4)``); a 2-D target without ``log_z`` needs it, since fit-target integrates
    ``log Z`` on a grid over it (2 wider each side). In a module given to ``flowforge fit-target
    --import mytarget.py --target NAME``.

    Example:
        >>> import flowforge as ff
        >>> t = ff.targets.register("shifted", lambda x: -0.5 * (x - 1).square().sum(-1), dim=3)
        >>> t(torch.ones(4, 3)).tolist()
        [-0.0, -0.0, -0.0, -0.0]
        >>> del ff.targets.TARGETS["shifted"]
    """
    if not isinstance(name, str) or not name or name != name.strip() or " " in name:
        raise ValueError(f"expected a target name without spaces (like 'mine'), got {name!r}")
    if name.lower() in TARGETS:
        raise ValueError(
            f"a target {name.lower()!r} is registered already (names are case-insensitive; "
            f"taken: {', '.join(available())}): choose another name"
        )
    if not callable(log_prob):
        raise TypeError(
            f"expected log_prob to be a function of x (batch, dim) -> (batch,), got "
            f"{type(log_prob).__name__}"
        )
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"expected dim to be an integer >= 1, got {dim!r}")
    if log_z is not None and (
        isinstance(log_z, bool) or not isinstance(log_z, (int, float)) or not math.isfinite(log_z)
    ):
        raise ValueError(f"expected log_z to be a finite number or None (unknown), got {log_z!r}")
    if box is None and dim == 2 and log_z is None:
        raise ValueError(
            "a 2-D target without log_z needs box=(x0, x1, y0, y1) around its mass: fit-target "
            "integrates log Z on a grid over it"
        )
    box = (-4.0, 4.0, -4.0, 4.0) if box is None else box
    try:
        x0, x1, y0, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"expected box=(x0, x1, y0, y1), four numbers, got {box!r}") from None
    if not (x0 < x1 and y0 < y1) or not all(map(math.isfinite, (x0, x1, y0, y1))):
        raise ValueError(f"expected a finite box (x0, x1, y0, y1) with x0 < x1, y0 < y1, got {box}")
    t = Target(name.lower(), log_prob, dim, (x0, x1, y0, y1), log_z, description)
    TARGETS[t.name] = t
    return t


def available() -> list[str]:
    """The names of the built-in targets (what ``flowforge fit-target --target`` takes)."""
    return sorted(TARGETS)


def get(name: str) -> Target:
    """The target called ``name`` (case-insensitive)."""
    key = str(name).lower()
    if key not in TARGETS:
        raise unknown("target", name, TARGETS)
    return TARGETS[key]


# -- grids -------------------------------------------------------------------------------------


def grid(box, n: int = 400, dtype=torch.float64) -> tuple[Tensor, float]:
    """Cell centres of an ``n x n`` grid over ``box`` as ``(n*n, 2)`` (rows vary in y), and the
    cell area."""
    x0, x1, y0, y1 = box
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"expected a grid of n >= 1 cells a side (an integer), got {n!r}")
    if not (x0 < x1 and y0 < y1) or not all(map(math.isfinite, (x0, x1, y0, y1))):
        raise ValueError(f"expected a finite box (x0, x1, y0, y1) with x0 < x1, y0 < y1, got {box}")
    hx, hy = (x1 - x0) / n, (y1 - y0) / n
    xs = torch.linspace(x0 + hx / 2, x1 - hx / 2, n, dtype=dtype)
    ys = torch.linspace(y0 + hy / 2, y1 - hy / 2, n, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), hx * hy


def grid_log_z(log_prob: Callable[[Tensor], Tensor], box, n: int = 1000) -> float:
    """``log ∫ exp(log_prob)`` over ``box`` by the midpoint rule on an ``n x n`` grid (2-D).

    For the targets here the box should hold all but a negligible part of the mass: for
    ``u1``-``u4`` the box ``(-6, 6, -6, 6)`` does (the wall bounds ``z1``).
    """
    pts, area = grid(box, n)
    name = getattr(log_prob, "name", None) or getattr(log_prob, "__name__", repr(log_prob))
    with torch.no_grad():
        lp = torch.cat([check_log_prob(log_prob(c), c, str(name)) for c in pts.split(1 << 16)])
    return (torch.logsumexp(lp, 0) + math.log(area)).item()
