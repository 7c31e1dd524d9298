r"""Datasets on known manifolds with known densities: von Mises mixtures on the circle and the
torus, a von Mises-Fisher mixture on the 2-sphere.

Angles are in ``[-pi, pi)``; points on the sphere are unit vectors in ``R^3``. Each dataset
has a closed-form log-density with respect to the manifold's volume (angle measure, area), so
``-mean(log_prob(test))`` estimates its entropy and a model's test NLL minus it estimates
``KL(data || model)`` on the same points. Components of every mixture straddle the seam at
``+-pi`` (or sit near a pole), where a Euclidean flow on the raw angles cannot follow.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MANIFOLD_DATASETS", "log_prob", "sample"]

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

# the datasets' names (their descriptions are in flowforge.workbench.catalog, torch-free)
MANIFOLD_DATASETS = ("circle-vonmises", "torus-vonmises", "sphere-vmf")

# float32 bounds strictly inside [-pi, pi) (float32(pi) is above pi)
_LO = float(np.nextafter(np.float32(-np.pi), np.float32(0)))
_HI = float(np.nextafter(np.float32(np.pi), np.float32(0)))


def sample(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` float32 examples of dataset ``name``: ``(n, D)`` angles or ``(n, 3)`` unit vectors."""
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
