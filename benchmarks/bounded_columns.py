"""Positive and bounded columns with and without ``data.bounds``, on a table whose density is
known.

The table (4,000 rows: 3,200 train, 400 val, 400 test) has four independent columns: an
income (log-normal, log-mean 10.8, sd 1), a share in (0, 1) piled against both ends
(Beta(0.6, 0.6)), a score below 10 (10 minus a Gamma(2, 1) draw) and a standard normal. Each
setting trains the workbench's default NSF with its default training settings, then reports
the test NLL against the true NLL of the same rows (the gap estimates the KL divergence), and
the share of 10,000 samples that fall outside each column's support.

    python benchmarks/bounded_columns.py --out benchmarks/results/bounded_columns.json

writes the JSON and prints the table of ``benchmarks/results/bounded_columns.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats
from workbench_cli import quiet

BOUNDS = ["--set", "data.bounds.income=positive", "--set", "data.bounds.share=[0, 1]",
          "--set", "data.bounds.score=[null, 10]"]  # fmt: skip


def table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows and each row's true log-density."""
    g = np.random.default_rng(seed)
    income = np.exp(g.normal(10.8, 1.0, n))
    share = g.beta(0.6, 0.6, n)
    gap = g.gamma(2.0, 1.0, n)
    z = g.normal(size=n)
    log_p = (
        stats.lognorm.logpdf(income, 1.0, scale=np.exp(10.8))
        + stats.beta.logpdf(share, 0.6, 0.6)
        + stats.gamma.logpdf(gap, 2.0)
        + stats.norm.logpdf(z)
    )
    return np.c_[income, share, 10 - gap, z], log_p


def run(csv: Path, out: Path, extra: list[str], seed: int) -> dict:
    t0 = time.process_time()
    quiet(["train", "--model", "nsf", "--data", str(csv), "--out", str(out), "--seed", str(seed),
           "--quiet", "--no-progress", "--overwrite", *extra])  # fmt: skip
    seconds = time.process_time() - t0
    nll = json.loads(quiet(["eval", str(out), "--json"]))["nll"]
    samples = out / "samples.csv"
    quiet(["sample", str(out), "-n", "10000", "--out", str(samples), "--overwrite"])
    s = np.loadtxt(samples, delimiter=",", skiprows=1)
    outside = {
        "income <= 0": float((s[:, 0] <= 0).mean()),
        "share outside (0, 1)": float(((s[:, 1] <= 0) | (s[:, 1] >= 1)).mean()),
        "score >= 10": float((s[:, 2] >= 10).mean()),
    }
    return {"nll": nll, "cpu_seconds": seconds, "outside": outside}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    x, log_p = table(4000, 0)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "incomes.csv"
        rows = "".join(",".join(f"{v:.10g}" for v in r) + "\n" for r in x)
        csv.write_text("income,share,score,z\n" + rows)
        # the test rows as the workbench splits them (80/10/10 after a permutation by data.seed 0)
        order = np.random.default_rng(0).permutation(len(x))
        true_nll = float(-log_p[order[3600:]].mean())
        results = {"true_nll": true_nll, "runs": []}
        for seed in args.seeds:
            for name, extra in (("raw columns", []), ("data.bounds", BOUNDS)):
                r = run(csv, Path(tmp) / f"{name}-{seed}", extra, seed)
                results["runs"].append({"setting": name, "seed": seed, **r})
                print(f"{name:12s} seed {seed}: test NLL {r['nll']:.4f} (gap "
                      f"{r['nll'] - true_nll:.4f}), {r['cpu_seconds']:.0f} s, outside "
                      f"{r['outside']}", flush=True)  # fmt: skip
    print(f"\ntrue NLL of the test rows: {true_nll:.4f}\n")
    print("| setting | test NLL (mean over seeds) | gap to the truth | samples outside the support "
          "(income, share, score) |")  # fmt: skip
    print("|---|---:|---:|---|")
    for name in ("raw columns", "data.bounds"):
        rs = [r for r in results["runs"] if r["setting"] == name]
        nll = np.mean([r["nll"] for r in rs])
        outs = [np.mean([r["outside"][k] for r in rs]) for k in rs[0]["outside"]]
        print(f"| {name} | {nll:.3f} | {nll - true_nll:.3f} | "
              f"{', '.join(f'{100 * o:.2f}%' for o in outs)} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
