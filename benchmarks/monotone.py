"""flowforge's NAF/UNAF/SOSPF/BPF against zuko's same-named flows, at one thread.

On two workbench toys (fixed 5,000-point training split) and on digits (64-D, uniformly
dequantized and standardized with the training split's statistics; NLL in those units), each
model trains with Adam (lr 1e-3, batch 256) for an equal CPU-time budget; the validation NLL,
checked every ``--seconds / 8`` seconds, picks the weights that are scored once on the test
split. Both libraries get 3 autoregressive layers with MADE widths (64, 64) (flowforge's NAF and
UNAF: widened to zuko's parameter count, ``WIDTH``) and their
families' defaults (flowforge: mixtures=8 / embedding 8, integrand (32, 32), 33 nodes /
3 polynomials of degree 4 / degree 16; zuko: signal 16 / its UNAF defaults / the same SOSPF and
BPF sizes); the parameter counts are recorded.

    pip install -c constraints.txt -e ".[bench]"    # zuko, a benchmark extra
    OMP_NUM_THREADS=1 python benchmarks/monotone.py --seconds 25 --out benchmarks/results/monotone
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import flowforge as ff
from flowforge.workbench.data import load_dataset

MODELS = ("NAF", "UNAF", "SOSPF", "BPF")


def data(name: str):
    ds = load_dataset(name)
    split = [ds.train, ds.val, ds.test]
    if name == "digits":
        torch.manual_seed(0)
        split = [(x.reshape(len(x), -1) + torch.rand(len(x), 64)) for x in split]
        loc, scale = split[0].mean(0), split[0].std(0) + 1e-3
        split = [(x - loc) / scale for x in split]
    else:
        split[0] = split[0][:5000]
    return split


# MADE widths that match zuko's parameter counts (zuko's NAF and UNAF add a network per layer)
WIDTH = {"NAF": 100, "UNAF": 104, "SOSPF": 64, "BPF": 64}


def ours(name: str, d: int):
    h = (WIDTH[name],) * 2
    flow = ff.models.build(name, features=d, layers=3, hidden=h, preprocess=None)
    return flow, flow.log_prob


def zukos(name: str, d: int):
    import zuko

    cls = getattr(zuko.flows, name)
    flow = cls(features=d, transforms=3, hidden_features=(64, 64))
    return flow, lambda x: flow().log_prob(x)


def nll(log_prob, x) -> float:
    with torch.no_grad():
        return -torch.cat([log_prob(b) for b in x.split(1000)]).mean().item()


def run(make, name, split, seconds):
    torch.manual_seed(0)
    train, val, test = split
    module, log_prob = make(name, train.shape[1])
    params = sum(p.numel() for p in module.parameters())
    opt = torch.optim.Adam(module.parameters(), 1e-3)
    best, best_state, steps, spent, next_check = float("inf"), None, 0, 0.0, seconds / 8
    while spent < seconds:
        t0 = time.process_time()
        loss = -log_prob(train[torch.randint(0, len(train), (256,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        spent += time.process_time() - t0
        steps += 1
        if spent >= next_check or spent >= seconds:
            next_check += seconds / 8
            module.eval()
            v = nll(log_prob, val)
            module.train()
            if v < best:
                best, best_state = v, copy.deepcopy(module.state_dict())
    module.load_state_dict(best_state)
    module.eval()
    t0 = time.perf_counter()
    test_nll = nll(log_prob, test)
    rate = len(test) / (time.perf_counter() - t0)
    return dict(params=params, steps=steps, steps_per_s=steps / spent, val_nll=best,
                test_nll=test_nll, log_prob_per_s=rate)  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--datasets", nargs="+", default=["moons", "8gaussians", "digits"])
    ap.add_argument("--out", default="benchmarks/results/monotone")
    ap.add_argument("--rows-from", help="write the results from a log of this script's rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    if args.rows_from:
        with open(args.rows_from) as f:
            rows = [json.loads(line) for line in f if line.startswith("{")]
        args.datasets = []
    for ds in args.datasets:
        split = data(ds)
        for name in MODELS:
            for lib, make in (("flowforge", ours), ("zuko", zukos)):
                r = dict(
                    dataset=ds, model=name, library=lib, **run(make, name, split, args.seconds)
                )
                print(json.dumps(r), flush=True)
                rows.append(r)
    meta = dict(seconds=args.seconds, threads=1, torch=torch.__version__)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    lines = [f"CPU budget {args.seconds:g} s per model, one thread, torch {torch.__version__}.", "",
             "| data | model | library | params | steps/s | val NLL | test NLL | log_prob/s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['library']} | {r['params']:,} | "
            f"{r['steps_per_s']:.1f} | {r['val_nll']:.3f} | {r['test_nll']:.3f} | "
            f"{r['log_prob_per_s']:,.0f} |"
        )
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
