"""The exact log-densities of the workbench's 2-D toy generators (``data.TOYS``).

A model's test NLL minus the true NLL on the same points estimates ``KL(p || q)``; ``flowforge
eval`` prints both for these datasets. Mixtures of Gaussians along a curve (moons, 2spirals,
swissroll) are integrated over the curve's parameter by Simpson's rule on a grid far finer
than the noise; rings and circles (a circle convolved with a Gaussian) have a closed form in
Bessel functions; pinwheel is a change of variables summed over every root. Each density
integrates to 1 within 1e-3 over a box holding the data (tested).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["NAMES", "log_prob"]


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return (top + np.log(np.exp(a - top).sum(axis, keepdims=True))).squeeze(axis)


def _simpson(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w / w.sum()


def _along_curve(x: np.ndarray, centres: np.ndarray, log_w: np.ndarray, sd: float):
    """``log sum_j w_j N(x; centres_j, sd^2 I)``, in chunks of ``x``."""
    out = []
    for i in range(0, len(x), 256):
        d2 = ((x[i : i + 256, None, :] - centres[None]) ** 2).sum(-1)
        out.append(_logsumexp(log_w[None] - d2 / (2 * sd**2), 1))
    return np.concatenate(out) - math.log(2 * math.pi * sd**2) if out else np.zeros(0)


def _rings(x: np.ndarray, radii: np.ndarray, sd: float) -> np.ndarray:
    """Equal mixture of circles of ``radii`` convolved with ``N(0, sd^2 I)``: in polar
    coordinates the angle integrates to a Bessel function, ``I0(rho r / sd^2)``."""
    rho = np.linalg.norm(x, axis=1)[:, None]
    z = torch.from_numpy(rho * radii[None] / sd**2)
    log_i0e = torch.special.i0e(z).log().numpy()  # log I0(z) - z
    lp = -((rho - radii[None]) ** 2) / (2 * sd**2) + log_i0e - math.log(2 * math.pi * sd**2)
    return _logsumexp(lp, 1) - math.log(len(radii))


def _moons(x):
    t = np.linspace(0, math.pi, 601)
    w = np.log(_simpson(len(t)) / 2)
    m0 = np.stack([np.cos(t) - 0.5, np.sin(t) - 0.25], 1) * 2
    m1 = np.stack([1 - np.cos(t) - 0.5, 0.5 - np.sin(t) - 0.25], 1) * 2
    return _along_curve(x, np.concatenate([m0, m1]), np.concatenate([w, w]), 0.1)


def _8gaussians(x):
    a = np.arange(8) * math.pi / 4
    c = 2.0 * np.stack([np.cos(a), np.sin(a)], 1)
    return _along_curve(x, c, np.full(8, -math.log(8)), 0.15)


def _checkerboard(x):
    row, col = np.floor(x[:, 1] + 2), np.floor(x[:, 0] + 2)
    inside = (np.abs(x) < 2).all(1) & ((row + col) % 2 == 0)
    return np.where(inside, -math.log(8), -np.inf)


def _2spirals(x):
    # t = 3 pi sqrt(U) has density 2 t / (3 pi)^2 on [0, 3 pi]
    t = np.linspace(0, 3 * math.pi, 2001)
    w = _simpson(len(t)) * 3 * math.pi * 2 * t / (3 * math.pi) ** 2
    c = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 3
    log_w = np.log(np.maximum(w, 1e-300) / 2)
    return _along_curve(x, np.concatenate([c, -c]), np.concatenate([log_w, log_w]), 0.1)


def _swissroll(x):
    t = np.linspace(1.5 * math.pi, 4.5 * math.pi, 2001)  # t uniform on [1.5 pi, 4.5 pi]
    c = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 4
    return _along_curve(x, c, np.log(_simpson(len(t))), 0.1)


def _pinwheel(x, arms: int = 5):
    return np.concatenate([_pinwheel_part(x[i : i + 256], arms) for i in range(0, len(x), 256)])


def _pinwheel_part(x, arms: int):
    """``x = 1.5 (r u(th) + s u_perp(th))``, ``th = 2 pi k / arms + e^r / 4``,
    ``r ~ N(1, 0.3^2)``, ``s ~ N(0, 0.05^2)``: the sum over arms and over every root ``r`` of
    ``r = y . u(th(r))`` of ``p(r) p(s) / |det|``, ``det = 1.5^2 (1 - s th'(r))``."""
    y = x / 1.5
    grid = np.linspace(1 - 8 * 0.3, 1 + 8 * 0.3, 2001)
    total = np.full(len(x), -np.inf)
    for k in range(arms):
        th = 2 * math.pi * k / arms + 0.25 * np.exp(grid)
        h = grid[None] - y @ np.stack([np.cos(th), np.sin(th)], 0)  # a root where h changes sign
        i, j = np.nonzero(np.sign(h[:, :-1]) != np.sign(h[:, 1:]))
        r = grid[j] - h[i, j] * (grid[j + 1] - grid[j]) / (h[i, j + 1] - h[i, j])
        yi = y[i]
        for _ in range(6):  # Newton from the linear interpolation
            t = 2 * math.pi * k / arms + 0.25 * np.exp(r)
            u = np.stack([np.cos(t), np.sin(t)], 1)
            perp = np.stack([-np.sin(t), np.cos(t)], 1)
            r = r - (r - (yi * u).sum(1)) / (1 - 0.25 * np.exp(r) * (yi * perp).sum(1))
        t = 2 * math.pi * k / arms + 0.25 * np.exp(r)
        s = (yi * np.stack([-np.sin(t), np.cos(t)], 1)).sum(1)
        lp = (
            -0.5 * ((r - 1) / 0.3) ** 2
            - math.log(0.3 * math.sqrt(2 * math.pi))
            - 0.5 * (s / 0.05) ** 2
            - math.log(0.05 * math.sqrt(2 * math.pi))
            - np.log(1.5**2 * np.abs(1 - s * 0.25 * np.exp(r)))
            - math.log(arms)
        )
        np.logaddexp.at(total, i, lp)
    return total


_DENSITIES = {
    "moons": _moons,
    "circles": lambda x: _rings(x, np.array([1.0, 2.0]), 0.08),
    "8gaussians": _8gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _2spirals,
    "rings": lambda x: _rings(x, np.arange(1, 5) * 0.75, 0.06),
    "swissroll": _swissroll,
}
NAMES = tuple(_DENSITIES)


def log_prob(name: str, x, scale: float = 1.0) -> np.ndarray:
    """The exact log-density of toy ``name`` (scaled by ``scale``) at ``x``, shape ``(n, 2)``,
    in float64; ``-inf`` outside its support."""
    if name not in _DENSITIES:
        raise ValueError(f"no known density for {name!r}; expected one of {', '.join(NAMES)}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"expected points of shape (n, 2), got {x.shape}")
    return _DENSITIES[name](x / scale) - 2 * math.log(scale)
