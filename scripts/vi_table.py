"""Reproduce the planar-flow figure of Rezende & Mohamed (2015) and a VI comparison table.

Planar flows with K = 2, 8, 32 on the energies U1-U4, and radial, Sylvester (three kinds), IAF,
RealNVP and a residual flow at similar parameter counts, all trained by reverse KL with the
same small budget. Writes docs/img/vi_planar.png, docs/img/vi_others.png and
docs/img/vi_results.json (results are cached there: rerun to fill in missing runs, or pass
--fresh), and prints the markdown table for docs/vi.md.

    .venv/bin/python scripts/vi_table.py            # about 20-30 min on one CPU thread
    .venv/bin/python scripts/vi_table.py --steps 300 --targets u1 --out /tmp/vi   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge.workbench.report import plot_pair
from flowforge.workbench.vi import build_vi_model, evaluate_target, fit_target

# name -> (model, layers, builder kwargs)
CONFIGS = {
    "planar K=2": ("planar", 2, {}),
    "planar K=8": ("planar", 8, {}),
    "planar K=32": ("planar", 32, {}),
    "radial K=32": ("radial", 32, {}),
    "sylvester-orth L=13": ("sylvester", 13, {"kind": "orthogonal"}),
    "sylvester-house L=13": ("sylvester", 13, {"kind": "householder"}),
    "sylvester-tri L=16": ("sylvester", 16, {"kind": "triangular"}),
    "IAF L=3": ("iaf", 3, {"hidden": [8]}),
    "RealNVP L=5": ("realnvp", 5, {"hidden": [8]}),
    "ResidualFlow B=2": ("residualflow", 2, {"hidden": [16]}),
}
PLANAR = ["planar K=2", "planar K=8", "planar K=32"]
OTHERS = ["sylvester-orth L=13", "IAF L=3", "RealNVP L=5", "ResidualFlow B=2"]


def run_one(target_name: str, config: str, args) -> tuple[dict, torch.nn.Module]:
    model, layers, kwargs = CONFIGS[config]
    target = ff.targets.get(target_name)
    torch.manual_seed(args.seed)
    flow = build_vi_model(model, 2, layers, **kwargs)
    fit = fit_target(
        flow,
        target,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        anneal=args.anneal,
        seed=args.seed,
    )
    m = evaluate_target(flow, target, n=args.n_eval)
    return {**m, "seconds": fit["seconds"], "skipped": fit["skipped"]}, flow


def figure(path: Path, flows: dict, targets: list[str], configs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(configs)
    fig, axes = plt.subplots(len(targets), cols, figsize=(2.1 * cols, 2.1 * len(targets)))
    axes = axes.reshape(len(targets), cols)
    for i, t in enumerate(targets):
        target = ff.targets.get(t)
        for j, c in enumerate(configs):
            flow = flows.get((t, c))
            if flow is None:
                axes[i, j + 1].axis("off")
                continue
            plot_pair(axes[i, 0], axes[i, j + 1], flow, target, n=150, title=c)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(results: dict, targets: list[str], configs: list[str]) -> str:
    lines = [
        "| model | params | " + " | ".join(f"{t}: KL̃ / KL / ESS" for t in targets) + " | s/run |",
        "|---|---:|" + "---:|" * len(targets) + "---:|",
    ]
    for c in configs:
        cells, params, secs = [], "", []
        for t in targets:
            r = results.get(f"{t}|{c}")
            if r is None:
                cells.append("–")
                continue
            params = r["params"]
            secs.append(r["seconds"])
            cells.append(f"{r['reverse_kl']:.3f} / {r['kl']:.3f} / {r['ess']:.2f}")
        s = f"{sum(secs) / len(secs):.0f}" if secs else "–"
        lines.append(f"| {c} | {params} | " + " | ".join(cells) + f" | {s} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="u1,u2,u3,u4")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--anneal", type=int, default=1000)
    p.add_argument("--n-eval", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/img")
    p.add_argument("--fresh", action="store_true", help="ignore cached results")
    p.add_argument("--cached-only", action="store_true", help="train nothing; plot the cache")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "vi_results.json"
    results = {} if args.fresh or not cache.exists() else json.loads(cache.read_text())
    targets = args.targets.split(",")
    configs = args.configs.split(",")
    flows = {}
    ckpt = out / "vi_models"
    for t in targets:
        for c in configs:
            key = f"{t}|{c}"
            fname = ckpt / (key.replace("|", "_").replace(" ", "_").replace("=", "") + ".ff")
            if key in results and fname.exists():
                flows[(t, c)] = ff.load(fname).eval()
                continue
            if args.cached_only:
                continue
            t0 = time.time()
            r, flow = run_one(t, c, args)
            r.update(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
            results[key] = r
            flows[(t, c)] = flow
            ckpt.mkdir(exist_ok=True)
            ff.save(flow, fname)
            cache.write_text(json.dumps(results, indent=1))
            print(
                f"{t:3s} {c:22s} KL~ {r['reverse_kl']:7.3f}  KL {r['kl']:6.3f}  "
                f"ESS {r['ess']:.3f}  params {r['params']}  {time.time() - t0:.0f}s",
                flush=True,
            )
    figure(out / "vi_planar.png", flows, targets, [c for c in PLANAR if c in configs])
    figure(out / "vi_others.png", flows, targets, [c for c in OTHERS if c in configs])
    print()
    print(table(results, targets, [c for c in CONFIGS if c in configs]))


if __name__ == "__main__":
    main()
