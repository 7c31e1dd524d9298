"""BNAF against flowforge's MAF and NSF at a matched parameter count and an equal CPU budget.

Data: three workbench toys (``flowforge.workbench.data``: 5,000 training points, 1,000
validation, 1,000 test, the fixed seed-0 draws) and the digits (flowforge's loader: 1,000 /
350 / 447 images of 8x8 with 17 levels, flattened to 64 features, ``levels=17``: uniform
dequantization and the logit inside every model, NLL in nats per image on the raw scale, a
one-sample dequantization bound).

Models: ``BNAF`` (its defaults on the toys; ``hidden=4, depth=1, layers=2`` on digits), and
``MAF`` (plain MADEs, ``residual=False``) and ``NSF`` (spline couplings, 8 bins) with 5 layers of
two hidden layers whose width is chosen so that their parameter count is the nearest to
BNAF's. BNAF stores full square weight matrices but uses only the diagonal and lower blocks:
its count here is of the entries it uses (the stored count is in the JSON).

Training: Adam (lr 1e-3 on digits, 5e-3 on the toys for every model), batch 256, one thread,
``--budget`` CPU seconds of training steps per model (process time; evaluations excluded). The
validation NLL is computed every ``--every`` steps and the best state is kept (the only choice
made on validation); the test NLL is computed once, with that state.

Speed: training steps per CPU second; ``log_prob`` throughput (examples per CPU second, eval
mode, no gradient, batch 1,000, median of 5); seconds to draw 1,000 samples (median of 3).

    OMP_NUM_THREADS=1 python benchmarks/bnaf.py --out benchmarks/results/bnaf.json

writes the JSON and ``bnaf.md`` beside it (the table of docs/bnaf.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge.transforms import BlockNeuralAutoregressive
from flowforge.workbench.data import load_dataset

TOYS = ("8gaussians", "checkerboard", "moons")


def used_parameters(flow: ff.Flow) -> int:
    """Trainable entries a model uses (BNAF's zero upper blocks left out)."""
    n = sum(p.numel() for p in flow.parameters() if p.requires_grad)
    for m in flow.modules():
        if isinstance(m, BlockNeuralAutoregressive):
            for k in range(len(m.weights)):
                used = getattr(m, f"diag{k}") | getattr(m, f"lower{k}")
                n -= int((~used).sum())
    return n


def data(name: str):
    ds = load_dataset(name)
    if name == "digits":
        return [s.reshape(len(s), -1) for s in (ds.train, ds.val, ds.test)], {"levels": 17}
    return [ds.train, ds.val, ds.test], {}


def bnaf(d: int, options: dict) -> ff.Flow:
    if d == 64:
        return ff.models.BNAF(features=d, layers=2, hidden=4, depth=1, **options)
    return ff.models.BNAF(features=d, **options)


def matched(kind: str, d: int, target: int, options: dict) -> ff.Flow:
    """MAF or NSF of 5 layers of two hidden layers, the width nearest to ``target``
    parameters."""

    def make(h):
        if kind == "maf":
            return ff.models.MAF(features=d, layers=5, hidden=(h, h), residual=False, **options)
        return ff.models.NSF(features=d, layers=5, hidden=(h, h), bins=8, **options)

    lo, hi = 2, 1024  # the count grows with the width: bisect to the last width below target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if used_parameters(make(mid)) <= target else (lo, mid)
    return min((make(lo), make(hi)), key=lambda f: abs(used_parameters(f) - target))


def nll(flow: ff.Flow, x: torch.Tensor) -> float:
    flow.eval()
    torch.manual_seed(0)  # (the dequantization draw)
    with torch.no_grad():
        return float(torch.cat([-flow.log_prob(x[i : i + 1000]) for i in range(0, len(x), 1000)])
                     .double().mean())  # fmt: skip


def train(flow: ff.Flow, splits, budget: float, every: int, lr: float) -> dict:
    tr, va, te = splits
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    best, state, spent, steps = math.inf, None, 0.0, 0
    flow.train()
    while spent < budget:
        idx = torch.randint(0, len(tr), (256,), generator=g)
        t0 = time.process_time()
        loss = -flow.log_prob(tr[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        spent += time.process_time() - t0
        steps += 1
        if steps % every == 0 or spent >= budget:
            v = nll(flow, va)
            if v < best:
                best, state = v, copy.deepcopy(flow.state_dict())
            flow.train()
    flow.load_state_dict(state)
    return {
        "steps": steps,
        "steps_per_s": steps / spent,
        "val_nll": best,
        "test_nll": nll(flow, te),
    }


def timed(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return statistics.median(out)


def speed(flow: ff.Flow, x: torch.Tensor) -> dict:
    flow.eval()
    xb = x[:1000] if len(x) >= 1000 else x.repeat(math.ceil(1000 / len(x)), 1)[:1000]
    with torch.no_grad():
        lp = timed(lambda: flow.log_prob(xb), 5)
        sample = timed(lambda: flow.sample(1000), 3)
    return {"log_prob_per_s": len(xb) / lp, "sample_1000_s": sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join((*TOYS, "digits")))
    ap.add_argument("--budget", type=float, default=25.0, help="CPU seconds of training each")
    ap.add_argument("--every", type=int, default=100, help="steps between validations")
    ap.add_argument("--out", default="benchmarks/results/bnaf.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets.split(","):
        splits, options = data(name)
        d = splits[0].shape[1]
        lr = 1e-3 if name == "digits" else 5e-3
        torch.manual_seed(0)
        target = used_parameters(bnaf(d, options))
        for kind in ("bnaf", "maf", "nsf"):
            torch.manual_seed(0)
            flow = bnaf(d, options) if kind == "bnaf" else matched(kind, d, target, options)
            row = {"data": name, "model": kind, "params": used_parameters(flow)}
            row["stored_params"] = sum(p.numel() for p in flow.parameters())
            row["config"] = flow.config["kwargs"]
            row.update(train(flow, splits, args.budget, args.every, lr))
            row.update(speed(flow, splits[2]))
            print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
            rows.append(row)
    out = Path(args.out)
    meta = {
        "budget_cpu_s": args.budget,
        "every": args.every,
        "threads": 1,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(rows, args.budget))
    print(table(rows, args.budget))


def table(rows: list, budget: float) -> str:
    lines = [
        f"One thread, {budget:g} CPU seconds of training per model, batch 256; test NLL in "
        "nats (digits: per image, raw scale, a one-sample dequantization bound)\n",
        "| data | model | params | test NLL | val NLL | steps | steps/s | log_prob ex/s "
        "| sample 1,000 (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['model'].upper()} | {r['params']:,} | {r['test_nll']:.3f} | "
            f"{r['val_nll']:.3f} | {r['steps']:,} | {r['steps_per_s']:.0f} | "
            f"{r['log_prob_per_s']:,.0f} | {r['sample_1000_s']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
