r"""Datasets on known manifolds with known densities: von Mises mixtures on the circle and the
torus, a von Mises-Fisher mixture on the 2-sphere, and a noisy 2-D surface in ``R^64`` for
M-flows (:func:`surface_log_prob`: the true density on the surface).

Angles are in ``[-pi, pi)``; points on the sphere are unit vectors in ``R^3``. Each dataset
has a closed-form log-density with respect to the manifold's volume (angle measure, area), so
``-mean(log_prob(test))`` estimates its entropy and a model's test NLL minus it estimates
``KL(data || model)`` on the same points. Components of every mixture straddle the seam at
``+-pi`` (or sit near a pole), where a Euclidean flow on the raw angles cannot follow.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "DATASET_NAMES",
    "MANIFOLD_DATASETS",
    "log_prob",
    "sample",
    "surface_embed",
    "surface_log_prob",
]

# von Mises mixtures: weights, means (n_components, D) and concentrations (n_components, D);
# each component is a product of independent von Mises over the D angles
_VM = {
    "circle-vonmises": (
        [0.3, 0.45, 0.25],
        [[-2.0], [0.5], [3.0]],
        [[4.0], [12.0], [2.0]],
    ),
    "torus-vonmises": (
        [0.3, 0.3, 0.2, 0.2],
        [[-1.5, 2.5], [1.0, -1.0], [3.0, 0.0], [-2.5, -2.9]],
        [[4.0, 6.0], [8.0, 2.0], [5.0, 5.0], [3.0, 10.0]],
    ),
}


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


# von Mises-Fisher mixture on S^2: weights, mean directions, concentrations
_VMF = {
    "sphere-vmf": (
        [0.3, 0.3, 0.2, 0.2],
        [_unit([1, 0, 0.2]), _unit([-0.5, 0.8, -0.3]), _unit([0.05, 0.05, 1]), _unit([0, -1, -1])],
        [10.0, 20.0, 5.0, 30.0],
    ),
}

# a 2-D surface in R^64: x = Q [u, a sin(W u + b)] + noise, u from a 2-component Gaussian
# mixture, Q a fixed random rotation; the embedding's parameters are fixed (seed 16)
SURFACE_DIM, SURFACE_NOISE = 64, 0.01
_SURFACE_MIX = ([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], 0.5)


def _surface_params():
    rng = np.random.default_rng(16)
    q, _ = np.linalg.qr(rng.standard_normal((SURFACE_DIM, SURFACE_DIM)))
    w = 0.7 * rng.standard_normal((SURFACE_DIM - 2, 2))
    b = rng.uniform(0, 2 * np.pi, SURFACE_DIM - 2)
    return q, w, b, 0.4


def surface_embed(u: np.ndarray) -> np.ndarray:
    """The surface's embedding of chart coordinates ``u`` ``(n, 2)`` into ``R^64``."""
    q, w, b, a = _surface_params()
    return np.concatenate([u, a * np.sin(u @ w.T + b)], 1) @ q.T


def surface_log_prob(x: np.ndarray) -> np.ndarray:
    """The true log-density (w.r.t. the surface's area) at the surface point whose chart
    coordinates are those of ``x``, ``u = (Q^T x)[:2]`` (``x`` itself if it is on the surface;
    within ``O(noise)`` of its projection otherwise)."""
    q, w, b, a = _surface_params()
    u = (np.asarray(x, dtype=np.float64) @ q)[:, :2]
    wt, means, std = _SURFACE_MIX
    d2 = ((u[:, None, :] - np.asarray(means)) ** 2).sum(-1)
    log_pu = _logsumexp(np.log(wt) - d2 / (2 * std**2) - np.log(2 * np.pi * std**2), 1)
    # J = Q [I; a diag(cos(W u + b)) W], so J^T J = I + W^T diag(a^2 cos^2) W
    c = (a * np.cos(u @ w.T + b)) ** 2  # (n, 62)
    gram = np.eye(2) + np.einsum("ki,nk,kj->nij", w, c, w)
    return log_pu - 0.5 * np.linalg.slogdet(gram)[1]


# the datasets' names (their descriptions are in flowforge.workbench.catalog, torch-free): the
# known manifolds, then all the workbench registers
MANIFOLD_DATASETS = ("circle-vonmises", "torus-vonmises", "sphere-vmf")
DATASET_NAMES = (*MANIFOLD_DATASETS, "surface-64")

# float32 bounds strictly inside [-pi, pi) (float32(pi) is above pi)
_LO = float(np.nextafter(np.float32(-np.pi), np.float32(0)))
_HI = float(np.nextafter(np.float32(np.pi), np.float32(0)))


def sample(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` float32 examples of dataset ``name``: ``(n, D)`` angles or ``(n, 3)`` unit vectors."""
    if name == "surface-64":
        wt, means, std = _SURFACE_MIX
        k = rng.choice(len(wt), size=n, p=wt)
        u = np.asarray(means)[k] + std * rng.standard_normal((n, 2))
        x = surface_embed(u) + SURFACE_NOISE * rng.standard_normal((n, SURFACE_DIM))
        return x.astype(np.float32)
    if name in _VM:
        w, mu, kappa = (np.asarray(a, dtype=np.float64) for a in _VM[name])
        k = rng.choice(len(w), size=n, p=w)
        x = rng.vonmises(mu[k], kappa[k])
        x = np.remainder(x + np.pi, 2 * np.pi) - np.pi
        return np.clip(x.astype(np.float32), _LO, _HI)
    w, mu, kappa = (np.asarray(a, dtype=np.float64) for a in _VMF[name])
    k = rng.choice(len(w), size=n, p=w)
    m, kap = mu[k], kappa[k]
    # Wood's method in 3-D: the cosine to the mean has density ~ exp(kappa w) on [-1, 1]
    u = rng.random(n)
    cos = 1 + np.log(u + (1 - u) * np.exp(-2 * kap)) / kap
    v = rng.standard_normal((n, 3))
    v -= (v * m).sum(1, keepdims=True) * m  # a direction orthogonal to the mean
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x = cos[:, None] * m + np.sqrt(np.clip(1 - cos * cos, 0, None))[:, None] * v
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis, keepdims=True))).squeeze(axis)


def log_prob(name: str, x: np.ndarray) -> np.ndarray:
    """The true log-density of dataset ``name`` at ``x`` (w.r.t. angle measure or area)."""
    x = np.asarray(x, dtype=np.float64)
    if name == "surface-64":
        return surface_log_prob(x)
    if name in _VM:
        w, mu, kappa = (np.asarray(a, dtype=np.float64) for a in _VM[name])
        # (n, K, D): kappa cos(x - mu) - log(2 pi I0(kappa))
        lp = kappa * np.cos(x[:, None, :] - mu) - np.log(2 * math.pi * np.i0(kappa))
        return _logsumexp(np.log(w) + lp.sum(-1), 1)
    w, mu, kappa = (np.asarray(a, dtype=np.float64) for a in _VMF[name])
    # kappa / (4 pi sinh kappa) exp(kappa mu.x), written without overflow
    log_c = np.log(kappa) - math.log(2 * math.pi) - np.log1p(-np.exp(-2 * kappa)) - kappa
    lp = log_c + kappa * (x @ mu.T)
    return _logsumexp(np.log(w) + lp, 1)
