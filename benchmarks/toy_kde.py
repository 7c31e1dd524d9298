"""A classical reference for the toys' fixed training split: the best Gaussian kernel density
estimate on each toy's 5,000 training points.

The bandwidth is chosen on the validation split (the KDE's best case on it); the table gives
the validation gap to the exact oracle, in nats, next to which the flows' gaps on the same
5,000 points can be read (docs/flowmatching.md, "Fourth round").

    python benchmarks/toy_kde.py --out benchmarks/results/toy_kde.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.special import logsumexp

from flowforge.workbench.data import load_dataset

TOYS = ("8gaussians", "checkerboard", "moons", "rings", "2spirals", "pinwheel")
BANDWIDTHS = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2)


def kde_log_prob(train: np.ndarray, x: np.ndarray, h: float) -> np.ndarray:
    """Log-density of an isotropic Gaussian KDE with bandwidth ``h`` at the rows of ``x``."""
    d2 = ((x[:, None, :] - train[None, :, :]) ** 2).sum(-1)
    d = train.shape[1]
    return (
        logsumexp(-d2 / (2 * h * h), axis=1)
        - np.log(len(train))
        - d / 2 * np.log(2 * np.pi * h * h)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toys", nargs="+", default=list(TOYS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for name in args.toys:
        ds = load_dataset(name)
        train = ds.train.double().numpy()
        val = ds.val.double().numpy()
        oracle = np.asarray(ds.density(val))
        gaps = {h: float((oracle - kde_log_prob(train, val, h)).mean()) for h in BANDWIDTHS}
        h = min(gaps, key=gaps.get)
        rows.append({"toy": name, "n_train": len(train), "bandwidth": h, "val_gap": gaps[h]})
        print(f"{name:13s} bandwidth {h:.2f}  validation gap {gaps[h]:.3f} nats")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
