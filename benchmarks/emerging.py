"""The inverse of an emerging convolution (:class:`~flowforge.transforms.EmergingConv2d`): the
three solvers' time and error, next to the forward pass and the LU 1x1 convolution's inverse.

For each image shape (the digits Glow's two scales, then larger ones) it builds a 3x3 layer,
moves its weights by ``--perturb`` standard normal noise (a fresh layer is the identity), and
times ``layer.inverse(z)`` on a batch with each solver (median of ``--repeats`` calls after a
warm-up, one thread), the parallel solver's Jacobi sweeps, and the largest round-trip error.
It then times one training step (forward and backward, batch 32) of the digits Glow
(configs/digits-glow.yaml's architecture) with ``permutation="lu"`` and ``"emerging"``.
With ``--run NAME=RUN_FOLDER`` (a trained Glow) it also times the whole flow's inverse on
``--batch`` base draws with every emerging layer set to each solver, and the largest difference
from the dense solver's samples.

    OMP_NUM_THREADS=1 python benchmarks/emerging.py --out benchmarks/results/emerging.json \
        --run glow=runs/digits-glow --run emerging=runs/digits-glow-emerging
"""

from __future__ import annotations

import argparse
import json

import torch
from sampling import timed  # benchmarks/sampling.py (this folder is on the path)

import flowforge as ff
from flowforge.transforms import EmergingConv2d, LULinear

SHAPES = [(4, 4, 4), (8, 2, 2), (3, 16, 16), (3, 32, 32)]


def measure(shape, batch: int, perturb: float, repeats: int, tol: float) -> dict:
    torch.manual_seed(0)
    layer = EmergingConv2d(shape)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(perturb * torch.randn_like(p))
    lu = LULinear(shape)
    x = torch.randn(batch, *shape)
    row: dict = {"shape": list(shape), "batch": batch}
    with torch.no_grad():
        z, _ = layer(x)
        row["forward_s"] = timed(lambda: layer(x), repeats)
        row["lu1x1_inverse_s"] = timed(lambda: lu.inverse(x), repeats)
        for solver in ("dense", "sequential", "parallel"):
            layer.set_solver(solver, tol=tol)
            back, _ = layer.inverse(z)
            row[f"{solver}_s"] = timed(lambda: layer.inverse(z), repeats)
            row[f"{solver}_max_err"] = (back - x).abs().max().item()
            if solver == "parallel":
                row["parallel_sweeps"] = layer.last_sweeps
    return row


def measure_step(permutation: str, repeats: int) -> dict:
    """One training step of configs/digits-glow.yaml's Glow, batch 32."""
    torch.manual_seed(0)
    flow = ff.models.Glow(
        shape=(1, 8, 8), scales=2, steps=4, hidden=64, blocks=1, levels=17,
        permutation=permutation,
    )  # fmt: skip
    x = torch.randint(0, 17, (32, 1, 8, 8)).float()
    flow.train()
    flow.log_prob(x)  # ActNorm's initialisation

    def step():
        flow.zero_grad()
        (-flow.log_prob(x).mean()).backward()

    n = sum(p.numel() for p in flow.parameters())
    return {"glow_permutation": permutation, "parameters": n, "step_s": timed(step, repeats)}


def measure_run(name: str, folder: str, batch: int, repeats: int, tol: float) -> dict:
    """The trained flow's inverse (noise to data) with each solver."""
    flow = ff.load(f"{folder}/model.ff")
    flow.eval()
    layers = [m for m in flow.modules() if isinstance(m, EmergingConv2d)]
    torch.manual_seed(0)
    z = torch.randn(batch, *flow.transform.output_shape)
    row: dict = {"run": name, "folder": folder, "batch": batch, "emerging_layers": len(layers)}
    row["parameters"] = sum(p.numel() for p in flow.parameters())
    ref = None
    for solver in ("dense", "sequential", "parallel") if layers else ("none",):
        for m in layers:
            m.set_solver(solver, tol=tol)
        with torch.no_grad():
            x, _ = flow.transform.inverse(z)
            row[f"{solver}_s"] = timed(lambda: flow.transform.inverse(z), repeats)
        ref = x if ref is None else ref
        row[f"{solver}_max_diff"] = (x - ref).abs().max().item()
        if solver == "parallel":
            row["parallel_sweeps"] = sum(m.last_sweeps for m in layers)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--perturb", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--run", action="append", default=[], help="NAME=RUN_FOLDER, repeatable")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for shape in SHAPES:
        row = measure(shape, args.batch, args.perturb, args.repeats, args.tol)
        print(json.dumps(row), flush=True)
        rows.append(row)
    for permutation in ("lu", "emerging"):
        row = measure_step(permutation, 4 * args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    for item in args.run:
        name, _, folder = item.partition("=")
        row = measure_run(name, folder, args.batch, args.repeats, args.tol)
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {k: getattr(args, k) for k in ("batch", "perturb", "repeats", "tol")}
    meta["torch"] = torch.__version__
    with open(args.out, "w") as f:
        json.dump({"settings": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
