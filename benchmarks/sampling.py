"""Sampling throughput of autoregressive flows: the exact sequential inverse against the parallel
(Jacobi) inverse, for MAF, NSF-AR and TarFlow at the digits' size (64 dimensions).

For each model and batch size it times ``flow.sample(n)`` both ways (median of ``--repeats``
calls after a warm-up, one thread), counts the Jacobi sweeps each layer used, and reports the
largest difference between the two samples (before quantization: ``flow.transform.inverse`` of
the same noise). Models are either trained runs (``--run NAME=RUN_FOLDER``) or fresh builds
whose weights are moved by ``--perturb`` standard normal noise (a fresh model is the identity,
which Jacobi inverts in one sweep).

    python benchmarks/sampling.py --out benchmarks/results/sampling.json \
        --run tarflow=runs/digits-tarflow
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

import flowforge as ff
from flowforge.transforms import Autoregressive, set_inverse


def fresh_models() -> dict[str, ff.Flow]:
    return {
        "MAF": ff.models.MAF(features=64, layers=5, hidden=(128, 128), levels=17),
        "NSF-AR": ff.models.NSF(
            features=64, layers=5, hidden=(128, 128), autoregressive=True, levels=17
        ),
        "TarFlow": ff.models.TarFlow(
            shape=(1, 8, 8), blocks=4, depth=2, width=64, mlp_ratio=2, levels=17
        ),
    }


def perturb(flow: ff.Flow, scale: float, seed: int = 0) -> ff.Flow:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(flow: ff.Flow, n: int, tol: float, repeats: int) -> dict:
    flow.eval()
    torch.manual_seed(0)
    z = flow.base.sample(n)
    set_inverse(flow, "sequential")
    with torch.no_grad():
        x_seq, _ = flow.transform.inverse(z)
        t_seq = timed(lambda: flow.transform.inverse(z), repeats)
        set_inverse(flow, "parallel", tol=tol)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x_par, _ = flow.transform.inverse(z)
        sweeps = [m.last_sweeps for m in flow.modules() if isinstance(m, Autoregressive)]
        t_par = timed(lambda: flow.transform.inverse(z), repeats)
        # "auto": its first call times both inverses per layer and keeps the faster (timed
        # apart); the calls after it are what a user's later samples cost
        set_inverse(flow, "auto", tol=tol)
        t0 = time.perf_counter()
        x_auto, _ = flow.transform.inverse(z)
        t_first = time.perf_counter() - t0
        picks = [
            "parallel" if m.last_sweeps else "sequential"
            for m in flow.modules()
            if isinstance(m, Autoregressive)
        ]
        t_auto = timed(lambda: flow.transform.inverse(z), repeats)
    set_inverse(flow, "sequential")
    return {
        "batch": n,
        "tol": tol,
        "sequential_samples_per_s": n / t_seq,
        "parallel_samples_per_s": n / t_par,
        "speedup": t_seq / t_par,
        "auto_samples_per_s": n / t_auto,
        "auto_first_call_s": t_first,
        "auto_picks": picks,
        "auto_max_abs_difference": (x_auto - x_seq).abs().max().item(),
        "sweeps_per_layer": sweeps,
        "steps_per_layer": [m.steps for m in flow.modules() if isinstance(m, Autoregressive)],
        "max_abs_difference": (x_par - x_seq).abs().max().item(),
        "fell_back": bool(caught),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--run", action="append", default=[], help="NAME=RUN_FOLDER (a trained run)")
    ap.add_argument("--perturb", type=float, default=0.02)
    ap.add_argument("--no-fresh", action="store_true", help="only the --run models")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    flows = (
        {}
        if args.no_fresh
        else {
            f"{k} (fresh, perturbed {args.perturb:g})": perturb(v, args.perturb)
            for k, v in fresh_models().items()
        }
    )
    for spec in args.run:
        name, folder = spec.split("=", 1)
        flows[f"{name} (trained: {folder})"] = ff.load(f"{folder}/model.ff")
    results = []
    for name, flow in flows.items():
        for n in (int(b) for b in args.batches.split(",")):
            r = {"model": name, **measure(flow, n, args.tol, args.repeats)}
            results.append(r)
            print(
                f"{name:45s} batch {n:4d}: sequential {r['sequential_samples_per_s']:9.1f}/s  "
                f"parallel {r['parallel_samples_per_s']:9.1f}/s  x{r['speedup']:.2f}  "
                f"auto {r['auto_samples_per_s']:9.1f}/s  "
                f"sweeps {r['sweeps_per_layer']}  max diff {r['max_abs_difference']:.2g}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": 1, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
