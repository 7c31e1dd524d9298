"""Wide tables with few rows, with and without ``data.whiten``, against the true density.

Two tables of 200 columns: ten Gaussian factors seen through a random 200 x 10 loading
matrix, plus independent noise, so that the true density is a Gaussian with a
low-rank-plus-diagonal covariance. "low noise": noise sd 0.3, 500 rows (400 train, 50 val,
50 test); "noisy": noise sd 1, 250 rows (200 train, as many as columns, 25 val, 25 test).
Each of the workbench's default NSF, MAF and RealNVP (sized to the data as ``flowforge
train`` sizes them, default training settings) is trained with ``--set data.whiten=false``
(per-column standardisation, as before ``data.whiten``) and with the default (``auto``:
fewer than 10 training rows per column, so both tables are decorrelated with their
Ledoit-Wolf covariance first); the tables give the test NLL beside the true one and the
Gaussian that ``flowforge eval`` sets beside every table's model.

    python benchmarks/wide_tables.py --out benchmarks/results/wide_tables.json
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

MODELS = ("nsf", "maf", "realnvp")
SETTINGS = (
    ("per-column standardisation", ["--set", "data.whiten=false"]),
    ("data.whiten (auto)", []),
)


TABLES = {"low noise": (500, 0.3), "noisy": (250, 1.0)}  # rows, noise sd


def table(n: int = 500, noise: float = 0.3, d: int = 200, k: int = 10, seed: int = 0):
    """The rows and the true covariance."""
    g = np.random.default_rng(seed)
    loading = g.normal(size=(d, k))
    x = g.normal(size=(n, k)) @ loading.T + noise * g.normal(size=(n, d))
    return x, loading @ loading.T + noise**2 * np.eye(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {"tables": {}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for tname, (rows, noise) in TABLES.items():
            x, cov = table(rows, noise)
            order = np.random.default_rng(0).permutation(len(x))  # the workbench's split
            n_test = max(1, round(len(x) * 0.1))
            test = x[order[len(x) - n_test :]]
            true_nll = float(
                -stats.multivariate_normal(np.zeros(x.shape[1]), cov).logpdf(test).mean()
            )
            results["tables"][tname] = {"rows": rows, "noise": noise, "true_nll": true_nll}
            csv = Path(tmp) / f"{tname.replace(' ', '_')}.csv"
            names = ",".join(f"c{j}" for j in range(x.shape[1]))
            body = "".join(",".join(f"{v:.10g}" for v in r) + "\n" for r in x)
            csv.write_text(names + "\n" + body)
            for seed in args.seeds:
                for model in args.models:
                    for name, extra in SETTINGS:
                        out = Path(tmp) / f"{len(results['runs'])}"
                        t0 = time.process_time()
                        quiet(["train", "--model", model, "--data", str(csv),
                                "--out", str(out), "--seed", str(seed), "--quiet",
                                "--no-progress", *extra])  # fmt: skip
                        seconds = time.process_time() - t0
                        r = json.loads(quiet(["eval", str(out), "--json"]))
                        results["runs"].append({"table": tname, "model": model, "setting": name,
                                                "seed": seed, "nll": r["nll"],
                                                "gaussian_nll": r["gaussian_nll"],
                                                "cpu_seconds": seconds})  # fmt: skip
                        print(f"{tname:9s} {model:8s} {name:28s} seed {seed}: test NLL "
                              f"{r['nll']:.2f} (Gaussian {r['gaussian_nll']:.2f}), {seconds:.0f} s",
                              flush=True)  # fmt: skip
    for tname, info in results["tables"].items():
        runs = [r for r in results["runs"] if r["table"] == tname]
        print(f"\n{tname}: true NLL of the test rows {info['true_nll']:.2f}; eval's Gaussian "
              f"{runs[0]['gaussian_nll']:.2f}\n")  # fmt: skip
        print("| model | per-column standardisation | data.whiten (auto) |")
        print("|---|---:|---:|")
        for model in args.models:
            cells = []
            for name, _ in SETTINGS:
                v = [r["nll"] for r in runs if r["model"] == model and r["setting"] == name]
                cells.append(f"{np.mean(v):.2f}")
            print(f"| {model} | {' | '.join(cells)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
