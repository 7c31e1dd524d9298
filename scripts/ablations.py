"""Ablations of the founding tutorial's improvements on digits, one switch at a time.

    python scripts/ablations.py            # full run (resumable), then the table in the docs
    python scripts/ablations.py --quick    # smoke check: 1 seed, 2 epochs, a 200-example subset
    python scripts/ablations.py --report   # rewrite the table and plot from the JSON only

Two starting points, Glow and RealNVP's multi-scale image architecture, each small (about
20k parameters) because the CPU is scarce. Every variant changes exactly one switch; the
flow's conditioner width is then re-chosen so that the variant's *total* parameter count
(dequantizer and base included) is as close as possible to its baseline's. Every run trains
for the same number of epochs with the same optimiser and schedule, on one CPU thread, and is
scored on the 447 test digits (the bound averaged over ``--test-draws`` dequantization draws),
in nats per image and bits per dimension.

Results go to ``benchmarks/results/ablations.json`` (one record per run, written as they
finish, so an interrupted sweep resumes where it stopped) and, as a table, between the markers
in ``docs/improvements.md``; the plot goes to ``docs/img/ablation_bpd.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge.workbench.data import load_dataset
from flowforge.workbench.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ablations.json"
QUICK_RESULTS = ROOT / "runs" / "ablations_quick.json"  # runs/ is not tracked
DOC = ROOT / "docs" / "improvements.md"
PLOT = ROOT / "docs" / "img" / "ablation_bpd.png"
BEGIN, END = "<!-- ablations:begin -->", "<!-- ablations:end -->"

SHAPE = (1, 8, 8)
SMALL_MOG = {"name": "made-mog", "hidden": [16, 16], "components": 3}
SMALL_DEQ = {"name": "variational", "steps": 2, "hidden": 16, "blocks": 0}

# family -> (builder, baseline kwargs, width key, candidate widths)
FAMILIES = {
    "glow": (
        "glow",
        {"scales": 2, "steps": 4, "hidden": 32, "blocks": 0, "levels": 17},
        "hidden",
        range(8, 97, 2),
    ),
    "realnvp": (
        "realnvp",
        {"scales": 2, "hidden": 16, "blocks": 1, "couplings": 2, "final_couplings": 2},
        "hidden",
        range(4, 65, 1),
    ),
}

# (family, switch, variant label, kwargs that change); the first of a family is its baseline
VARIANTS = [
    ("glow", "baseline", "Glow: LU 1x1 conv, channel masks, 2 scales, N(0,I), uniform deq.", {}),
    (
        "glow",
        "1x1 conv",
        "fixed reverse permutation instead of LU 1x1 conv",
        {"permutation": "reverse"},
    ),
    ("glow", "masks", "checkerboard instead of channel masks", {"mask": "checkerboard"}),
    ("glow", "multi-scale", "no factor-out: 1 scale of 8 steps", {"scales": 1, "steps": 8}),
    ("glow", "base", "learnable base: MADE mixture of Gaussians", {"base": SMALL_MOG}),
    ("glow", "base", "learnable base: diagonal Gaussian", {"base": "diag"}),
    ("glow", "dequantization", "variational instead of uniform", {"dequantization": SMALL_DEQ}),
    ("glow", "zero-init", "ReZero gates instead of zero-initialised last layers", {"rezero": True}),
    (
        "realnvp",
        "baseline",
        "RealNVP: zero-init, checkerboard+channel, 2 scales, N(0,I), uniform",
        {},
    ),
    (
        "realnvp",
        "zero-init",
        "ReZero gates instead of zero-initialised last layers",
        {"rezero": True},
    ),
    ("realnvp", "zero-init", "neither (random last layers, no gate)", {"zero_init": False}),
    (
        "realnvp",
        "multi-scale",
        "no factor-out: 1 scale of 6 checkerboard couplings",
        {"scales": 1, "final_couplings": 6},
    ),
    ("realnvp", "base", "learnable base: MADE mixture of Gaussians", {"base": SMALL_MOG}),
    ("realnvp", "dequantization", "variational instead of uniform", {"dequantization": SMALL_DEQ}),
]


def build(family: str, change: dict, width: int | None = None):
    name, base_kwargs, key, _ = FAMILIES[family]
    kwargs = {**base_kwargs, **change}
    if family == "realnvp":
        kwargs["levels"] = 17
    zero_init = kwargs.pop("zero_init", True)
    if width is not None:
        kwargs[key] = width
    flow = ff.models.build(name, shape=SHAPE, **kwargs)
    if not zero_init:  # un-zero every conditioner's last layer (a fixed, seeded re-init)
        for m in flow.transform.modules():
            if isinstance(m, ff.nets.ConvResNet):
                conv = m.out[1]
                torch.nn.init.normal_(conv.weight, std=0.05)
    return flow, kwargs


def n_params(flow) -> int:
    return sum(p.numel() for p in flow.parameters())


def matched_width(family: str, change: dict) -> tuple[int, int, int]:
    """The width whose total parameter count is closest to the baseline's."""
    _, base_kwargs, key, widths = FAMILIES[family]
    target = n_params(build(family, {})[0])
    if not change or set(change) == {"rezero"} or set(change) == {"zero_init"}:
        return base_kwargs[key], target, n_params(build(family, change)[0])
    best = min(widths, key=lambda w: abs(n_params(build(family, change, w)[0]) - target))
    return best, target, n_params(build(family, change, best)[0])


def run_one(family, change, seed, data, epochs, draws) -> dict:
    width, target, params = matched_width(family, change)
    torch.manual_seed(seed)
    flow, kwargs = build(family, change, width)
    train = {
        "epochs": epochs,
        "batch_size": 64,
        "lr": 2e-3,
        "warmup_steps": 50,
        "patience": 0,
        "log_every": 0,
        "tensorboard": False,
    }
    t0 = time.time()
    trainer = Trainer(flow, data.train, data.val, train, seed=seed, progress=False, echo=False)
    fit = trainer.fit()
    wall = time.time() - t0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        nll = statistics.fmean(ff.nll(flow, data.test) for _ in range(draws))
    dims = math.prod(SHAPE)
    return {
        "family": family,
        "kwargs": json.loads(json.dumps(kwargs)),
        "seed": seed,
        "width": width,
        "params": params,
        "baseline_params": target,
        "epochs": epochs,
        "steps": fit["steps"],
        "wall_s": round(wall, 2),
        "val_nll_best": fit["best_val_nll"],
        "test_nll": nll,
        "test_bpd": nll / (dims * math.log(2)),
    }


def key_of(family, change, seed) -> str:
    return json.dumps([family, change, seed], sort_keys=True)


def load(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"settings": {}, "runs": {}}


def save(path: Path, res: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(path)


# -- the table ---------------------------------------------------------------------------------


def _ms(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summarise(res: dict) -> list[dict]:
    rows = []
    for family, switch, label, change in VARIANTS:
        runs = [r for k, r in res["runs"].items() if json.loads(k)[:2] == [family, change]]
        if not runs:
            continue
        runs.sort(key=lambda r: r["seed"])
        base = [
            r for k, r in res["runs"].items() if json.loads(k)[:2] == [family, {}]
        ]  # paired by seed
        by_seed = {r["seed"]: r["test_bpd"] for r in base}
        deltas = [r["test_bpd"] - by_seed[r["seed"]] for r in runs if r["seed"] in by_seed]
        rows.append(
            {
                "family": family,
                "switch": switch,
                "label": label,
                "change": change,
                "seeds": len(runs),
                "params": runs[0]["params"],
                "width": runs[0]["width"],
                "nll": [r["test_nll"] for r in runs],
                "bpd": [r["test_bpd"] for r in runs],
                "wall": [r["wall_s"] for r in runs],
                "delta": deltas if change else [],
            }
        )
    return rows


# two-sided 95% critical values of Student's t, by degrees of freedom
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def verdict(delta: list[float]) -> str:
    """A paired t-test of the per-seed differences (95%), else the sign count."""
    n = len(delta)
    if n < 2:
        return "n/a (1 seed)"
    m, s = statistics.fmean(delta), statistics.stdev(delta)
    t = abs(m) / (s / math.sqrt(n)) if s > 0 else math.inf
    if t > _T95.get(n - 1, 1.96):
        return "helps" if m < 0 else "hurts"
    better = sum(d < 0 for d in delta)
    if better in (0, n):
        return f"likely {'helps' if m < 0 else 'hurts'} ({n}/{n} seeds, not significant)"
    return f"no clear effect ({better}/{n} seeds better)"


def table(res: dict) -> str:
    st = res["settings"]
    lines = [
        f"Budget: {st.get('epochs')} epochs x {st.get('steps_per_epoch', 16)} steps of batch 64 "
        f"(lr 2e-3, warm-up then cosine), one CPU thread per run, seeds {st.get('seeds')}; "
        f"test NLL averaged over {st.get('draws')} dequantization draws; "
        f"mean ± std over seeds. Δ bits/dim is paired by seed against the family's baseline "
        "(negative = better); verdict: paired t-test over seeds at 95%, else the sign count.",
        "",
        "| model | switch | variant | params | test NLL (nats) | bits/dim | Δ bits/dim | "
        "wall (s) | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in summarise(res):
        delta = _ms(r["delta"]) if r["delta"] else "—"
        v = verdict(r["delta"]) if r["change"] else "baseline"
        lines.append(
            f"| {r['family']} | {r['switch']} | {r['label']} | {r['params']:,} | "
            f"{_ms(r['nll'], 2)} | {_ms(r['bpd'])} | {delta} | "
            f"{statistics.fmean(r['wall']):.0f} | {v} |"
        )
    return "\n".join(lines)


def write_docs(res: dict) -> None:
    text = DOC.read_text() if DOC.is_file() else f"# Improvements\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{table(res)}\n{END}{tail}")
    plot(res)


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summarise(res) if r["change"] and len(r["delta"]) >= 1]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    names = [f"{r['family']}: {r['label']}" for r in rows]
    means = [statistics.fmean(r["delta"]) for r in rows]
    errs = [statistics.stdev(r["delta"]) if len(r["delta"]) > 1 else 0 for r in rows]
    colors = ["tab:green" if m < 0 else "tab:red" for m in means]
    ax.barh(range(len(rows)), means, xerr=errs, color=colors, alpha=0.8)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("Δ test bits/dim vs baseline (mean ± std over seeds; < 0 is better)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke check (1 seed, 2 epochs)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--draws", type=int, default=4, help="dequantization draws for the test NLL")
    p.add_argument("--only", help="run only variants whose family or switch contains this")
    p.add_argument("--report", action="store_true", help="only rewrite the table and plot")
    p.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = QUICK_RESULTS if args.quick else RESULTS
    res = load(path)
    if args.report:
        write_docs(res)
        print(table(res))
        return 0
    seeds = 1 if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    draws = 1 if args.quick else args.draws
    data = load_dataset("digits", limit=200 if args.quick else None)
    if args.quick:
        data.val, data.test = data.val[:100], data.test[:100]
    settings = {"epochs": epochs, "seeds": seeds, "draws": draws, "quick": args.quick}
    settings["steps_per_epoch"] = math.ceil(data.train.shape[0] / 64)
    if res["settings"] and res["settings"] != settings:
        res = {"settings": settings, "runs": {}}  # different budget: start again
    res["settings"] = settings
    todo = [
        (f, c, s)
        for s in range(seeds)
        for f, sw, _, c in VARIANTS
        if not args.only or args.only in f or args.only in sw
    ]
    t_all = time.time()
    for i, (family, change, seed) in enumerate(todo):
        k = key_of(family, change, seed)
        if k in res["runs"]:
            continue
        rec = run_one(family, change, seed, data, epochs, draws)
        res["runs"][k] = rec
        save(path, res)
        print(
            f"[{i + 1}/{len(todo)}] {family} {change or 'baseline'} seed {seed}: "
            f"{rec['params']:,} params, test {rec['test_nll']:.2f} nats "
            f"({rec['test_bpd']:.4f} bits/dim), {rec['wall_s']:.0f}s",
            flush=True,
        )
    print(f"done in {time.time() - t_all:.0f}s")
    print(table(res))
    if not args.quick and not args.no_docs:
        write_docs(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
