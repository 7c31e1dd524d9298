r"""Density plots of manifold runs in the manifold's own coordinates, beside the true density.

A torus run: angle-angle heat maps (true, model) and model samples; a circle run: the two
densities over the angle; a sphere run: Mollweide maps (longitude, latitude; densities with
respect to area) of the true and the model density.

    python scripts/manifold_plots.py runs/torus-vonmises docs/img/manifolds-torus.png
"""

from __future__ import annotations

import argparse
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from flowforge.workbench import manifold_data  # noqa: E402
from flowforge.workbench.runs import load_run, run_config  # noqa: E402


@torch.no_grad()
def _model(flow, x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x.astype(np.float32))
    return torch.cat([flow.log_prob(b) for b in t.split(8192)]).exp().numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    name = run_config(args.run)["data"]["name"]
    flow = load_run(args.run).eval()
    g = 200
    if name == "torus-vonmises":
        a = -math.pi + (np.arange(g) + 0.5) * 2 * math.pi / g
        pts = np.stack(np.meshgrid(a, a, indexing="xy"), -1).reshape(-1, 2)
        true = np.exp(manifold_data.log_prob(name, pts)).reshape(g, g)
        model = _model(flow, pts).reshape(g, g)
        s = flow.sample(3000).numpy()
        fig, ax = plt.subplots(1, 3, figsize=(13, 4.2))
        ext = (-math.pi, math.pi, -math.pi, math.pi)
        for axis, img, title in ((ax[0], true, "true density"), (ax[1], model, "model density")):
            axis.imshow(img, origin="lower", extent=ext, cmap="viridis")
            axis.set_title(title)
        ax[2].scatter(s[:, 0], s[:, 1], s=1, alpha=0.4)
        ax[2].set_title("3000 model samples")
        ax[2].set_xlim(-math.pi, math.pi)
        ax[2].set_ylim(-math.pi, math.pi)
        ax[2].set_aspect("equal")
        for axis in ax:
            axis.set_xlabel("angle 1")
            axis.set_ylabel("angle 2")
    elif name == "circle-vonmises":
        a = -math.pi + (np.arange(2000) + 0.5) * 2 * math.pi / 2000
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(a, np.exp(manifold_data.log_prob(name, a[:, None])), label="true")
        ax.plot(a, _model(flow, a[:, None]), "--", label="model")
        ax.set_xlabel("angle")
        ax.set_ylabel("density")
        ax.legend()
    elif name == "sphere-vmf":
        lon = -math.pi + (np.arange(2 * g) + 0.5) * math.pi / g
        lat = -math.pi / 2 + (np.arange(g) + 0.5) * math.pi / g
        lo, la = np.meshgrid(lon, lat, indexing="xy")
        pts = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)
        pts = pts.reshape(-1, 3)
        true = np.exp(manifold_data.log_prob(name, pts)).reshape(g, 2 * g)
        model = _model(flow, pts).reshape(g, 2 * g)
        fig = plt.figure(figsize=(12, 3.8))
        for i, (img, title) in enumerate(((true, "true density"), (model, "model density"))):
            axis = fig.add_subplot(1, 2, i + 1, projection="mollweide")
            axis.pcolormesh(lo, la, img, cmap="viridis", shading="auto")
            axis.set_title(title)
            axis.set_xticklabels([])
    else:
        raise SystemExit(f"{args.run}: trained on {name!r}, not a known-manifold dataset")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
