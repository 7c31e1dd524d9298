"""Where a flow-matching toy model loses likelihood against the exact oracle.

Loads the weights that ``benchmarks/flow_matching.py --save DIR`` wrote, scores the validation
points (exact divergence, dopri5 at rtol = atol = 1e-5) and splits the mean gap
``oracle - model`` by the oracle's own log-density (deciles: the dense core against the
tails), for rings by the distance to the nearest ring, for checkerboard by the distance to
the squares' edges. Validation data only (``--split train``: the first 1000 training points,
for the generalisation gap): this is for choosing a recipe.

    python benchmarks/flow_matching_where.py --weights DIR --toys rings 2spirals \\
        [--hidden 64 64 64 --activation silu --space-features 32 --space-scale 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_matching import build_cnf  # noqa: E402

from flowforge.matching import log_likelihood  # noqa: E402
from flowforge.workbench import toy_density  # noqa: E402
from flowforge.workbench.data import load_dataset  # noqa: E402


def where(
    toy: str, weights: Path, hidden, activation, embed=None, space=0, scale=1.0, split="val"
) -> dict:
    x = load_dataset(toy, seed=0).split(split)[:1000]
    flow = build_cnf(0, tuple(hidden), activation, embed, 1e-3, space, scale)
    flow.load_state_dict(torch.load(weights / f"{toy}.pt"))
    flow.eval()
    r = log_likelihood(flow, x, method="dopri5", rtol=1e-5, atol=1e-5, trace="exact")
    model = r.log_prob.double().numpy()
    ora = toy_density.log_prob(toy, x.numpy())
    gap = ora - model
    order = np.argsort(ora)
    bins = np.array_split(order, 10)  # deciles of the oracle's density, sparse to dense
    out = {
        "toy": toy,
        "gap": float(gap.mean()),
        "by_density_decile": [float(gap[b].mean()) for b in bins],
        "oracle_by_decile": [float(ora[b].mean()) for b in bins],
    }
    if toy == "checkerboard":  # by the distance to the nearest grid line (the squares' edges)
        f = x.numpy() - np.floor(x.numpy())
        d = np.minimum(f, 1 - f).min(1)
        cuts = ((0, 0.02), (0.02, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.5))
        out["by_edge_distance"] = {
            f"{a}-{b}": (float(gap[(d >= a) & (d < b)].mean()), int(((d >= a) & (d < b)).sum()))
            for a, b in cuts
        }
    if toy == "rings":
        rho = np.linalg.norm(x.numpy(), axis=1)
        radii = np.arange(1, 5) * 0.75
        d = np.abs(rho[:, None] - radii[None]).min(1) / 0.06  # in ring widths
        which = np.abs(rho[:, None] - radii[None]).argmin(1)
        out["by_ring"] = [float(gap[which == k].mean()) for k in range(4)]
        out["by_distance_sd"] = {
            f"{a}-{b}": float(gap[(d >= a) & (d < b)].mean()) for a, b in ((0, 1), (1, 2), (2, 9))
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument(
        "--split", default="val", choices=["train", "val"],
        help="train: the first 1000 training points (the generalisation gap)",
    )  # fmt: skip
    p.add_argument("--toys", nargs="+", required=True)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64, 64])
    p.add_argument("--activation", default="tanh")
    p.add_argument("--time-embed", type=int, help="as in flow_matching.py")
    p.add_argument("--space-features", type=int, default=0, help="as in flow_matching.py")
    p.add_argument(
        "--space-scale", type=float, nargs="+", default=[1.0], help="as flow_matching.py"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for toy in args.toys:
        o = where(
            toy,
            Path(args.weights),
            args.hidden,
            args.activation,
            args.time_embed,
            args.space_features,
            args.space_scale,
            args.split,
        )
        print(f"{toy} ({args.split}): mean gap {o['gap']:.3f}")
        print("  gap by oracle-density decile (sparse -> dense):",
              " ".join(f"{g:.2f}" for g in o["by_density_decile"]))  # fmt: skip
        for k in ("by_ring", "by_distance_sd", "by_edge_distance"):
            if k in o:
                print(f"  {k}: {o[k]}")


if __name__ == "__main__":
    main()
