"""Integer columns among continuous ones with and without ``data.integers``, on a table whose
likelihood is known.

The table (4,000 rows: 3,200 train, 400 val, 400 test) has a count (Poisson(3)), a flag
(1 with probability 0.3) and a measurement (normal, shifted by 2 where the flag is 1). Its true
log-likelihood is the log-probability of the count and the flag plus the log-density of the
measurement given them. The workbench's default NSF is trained on the raw columns (a density
on integers: no meaning, and no floor), with ``data.integers`` (a dequantization bound on
the true likelihood), and with the integer columns' bounds as well; the table gives the test
NLL (K = 1, and the importance-weighted bound with K = 16) against the true NLL of the same
rows, and the share of 10,000 samples whose integer columns leave the data's values.

    python benchmarks/integer_columns.py --out benchmarks/results/integer_columns.json
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

INTEGERS = ["--set", "data.integers=[count, flag]"]
BOUNDS = ["--set", "data.bounds.count=[0, null]", "--set", "data.bounds.flag=[0, 1]"]
SETTINGS = (("raw columns", []), ("data.integers", INTEGERS),
            ("data.integers and bounds", INTEGERS + BOUNDS))  # fmt: skip


def table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows and each row's true log-likelihood (probability of the integers, density of
    the measurement)."""
    g = np.random.default_rng(seed)
    count = g.poisson(3.0, n)
    flag = (g.random(n) < 0.3).astype(float)
    x = g.normal(size=n) + 2 * flag
    log_p = (
        stats.poisson.logpmf(count, 3.0)
        + np.where(flag == 1, np.log(0.3), np.log(0.7))
        + stats.norm.logpdf(x - 2 * flag)
    )
    return np.c_[count, flag, x], log_p


def run(csv: Path, out: Path, extra: list[str], seed: int) -> dict:
    t0 = time.process_time()
    quiet(["train", "--model", "nsf", "--data", str(csv), "--out", str(out), "--seed", str(seed),
            "--quiet", "--no-progress", "--overwrite", *extra])  # fmt: skip
    seconds = time.process_time() - t0
    nll = json.loads(quiet(["eval", str(out), "--json"]))["nll"]
    iw = None
    if extra:
        iw = json.loads(quiet(["eval", str(out), "--json", "--samples", "16", "--iw"]))["nll"]
    samples = out / "samples.csv"
    quiet(["sample", str(out), "-n", "10000", "--out", str(samples), "--overwrite"])
    s = np.loadtxt(samples, delimiter=",", skiprows=1)
    count_off = (s[:, 0] != np.floor(s[:, 0])) | (s[:, 0] < 0)
    off = {
        "count not a whole number >= 0": float(count_off.mean()),
        "flag not 0 or 1": float((~np.isin(s[:, 1], [0.0, 1.0])).mean()),
    }
    return {"nll": nll, "nll_iw16": iw, "cpu_seconds": seconds, "off": off}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    x, log_p = table(4000, 0)
    order = np.random.default_rng(0).permutation(len(x))  # the workbench's split, data.seed 0
    true_nll = float(-log_p[order[3600:]].mean())
    results = {"true_nll": true_nll, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "mixed.csv"
        rows = "".join(f"{int(c)},{int(f)},{v:.10g}\n" for c, f, v in x)
        csv.write_text("count,flag,x\n" + rows)
        for seed in args.seeds:
            for name, extra in SETTINGS:
                r = run(csv, Path(tmp) / f"{len(results['runs'])}", extra, seed)
                results["runs"].append({"setting": name, "seed": seed, **r})
                iw = "" if r["nll_iw16"] is None else f", K = 16: {r['nll_iw16']:.4f}"
                print(f"{name:26s} seed {seed}: test NLL {r['nll']:.4f}{iw}, "
                      f"{r['cpu_seconds']:.0f} s, samples off the integers {r['off']}",
                      flush=True)  # fmt: skip
    print(f"\ntrue NLL of the test rows: {true_nll:.4f}\n")
    print("| setting | test NLL, K = 1 | K = 16 (importance-weighted) | minus the true NLL "
          "(K = 16) | samples off the data's integers (count, flag) |")  # fmt: skip
    print("|---|---:|---:|---:|---|")
    for name, _ in SETTINGS:
        rs = [r for r in results["runs"] if r["setting"] == name]
        nll = np.mean([r["nll"] for r in rs])
        iw = [r["nll_iw16"] for r in rs if r["nll_iw16"] is not None]
        iw_s = f"{np.mean(iw):.3f}" if iw else "n/a"
        gap = f"{np.mean(iw) - true_nll:+.3f}" if iw else f"{nll - true_nll:+.3f} (K = 1)"
        offs = [np.mean([r["off"][k] for r in rs]) for k in rs[0]["off"]]
        print(f"| {name} | {nll:.3f} | {iw_s} | {gap} | "
              f"{', '.join(f'{100 * o:.1f}%' for o in offs)} |")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
