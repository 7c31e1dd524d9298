"""Wide tables with few rows, with and without ``data.whiten``, against the true density.

The table has 200 columns and 500 rows (400 train, 50 val, 50 test): ten Gaussian factors
seen through a random 200 x 10 loading matrix, plus independent noise of sd 0.3, so that its
true density is a Gaussian with a low-rank-plus-diagonal covariance. Each of the workbench's
default NSF, MAF and RealNVP (sized to the data as ``flowforge train`` sizes them, default
training settings) is trained with ``--set data.whiten=false`` (per-column standardisation, as
before ``data.whiten``) and with the default (``auto``: fewer than 10 training rows per
column, so this table is decorrelated with its Ledoit-Wolf covariance first); the table gives
the test NLL beside the true one and the Gaussian that ``flowforge eval`` sets beside every
table's model.

    python benchmarks/wide_tables.py --out benchmarks/results/wide_tables.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from flowforge.workbench.cli import main as flowforge

MODELS = ("nsf", "maf", "realnvp")
SETTINGS = (
    ("per-column standardisation", ["--set", "data.whiten=false"]),
    ("data.whiten (auto)", []),
)


def table(n: int = 500, d: int = 200, k: int = 10, seed: int = 0):
    """The rows and the true covariance."""
    g = np.random.default_rng(seed)
    loading = g.normal(size=(d, k))
    x = g.normal(size=(n, k)) @ loading.T + 0.3 * g.normal(size=(n, d))
    return x, loading @ loading.T + 0.09 * np.eye(d)


def _quiet(args: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = flowforge(args)
    if rc:
        raise SystemExit(f"flowforge {args[0]} failed ({rc})")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    x, cov = table()
    order = np.random.default_rng(0).permutation(len(x))  # the workbench's split, data.seed 0
    test = x[order[450:]]
    true_nll = float(-stats.multivariate_normal(np.zeros(x.shape[1]), cov).logpdf(test).mean())
    results = {"true_nll": true_nll, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "wide.csv"
        names = ",".join(f"c{j}" for j in range(x.shape[1]))
        csv.write_text(names + "\n" + "".join(",".join(f"{v:.10g}" for v in r) + "\n" for r in x))
        for seed in args.seeds:
            for model in args.models:
                for name, extra in SETTINGS:
                    out = Path(tmp) / f"{len(results['runs'])}"
                    t0 = time.process_time()
                    _quiet(["train", "--model", model, "--data", str(csv), "--out", str(out),
                            "--seed", str(seed), "--quiet", "--no-progress", *extra])  # fmt: skip
                    seconds = time.process_time() - t0
                    r = json.loads(_quiet(["eval", str(out), "--json"]))
                    results["runs"].append({"model": model, "setting": name, "seed": seed,
                                            "nll": r["nll"], "gaussian_nll": r["gaussian_nll"],
                                            "cpu_seconds": seconds})  # fmt: skip
                    print(f"{model:8s} {name:28s} seed {seed}: test NLL {r['nll']:.2f} "
                          f"(Gaussian {r['gaussian_nll']:.2f}), {seconds:.0f} s",
                          flush=True)  # fmt: skip
    gauss = results["runs"][0]["gaussian_nll"]
    print(f"\ntrue NLL of the test rows: {true_nll:.2f}; eval's Gaussian: {gauss:.2f}\n")
    print("| model | per-column standardisation | data.whiten (auto) |")
    print("|---|---:|---:|")
    for model in args.models:
        cells = []
        for name, _ in SETTINGS:
            v = [r["nll"] for r in results["runs"] if r["model"] == model and r["setting"] == name]
            cells.append(f"{np.mean(v):.2f}")
        print(f"| {model} | {' | '.join(cells)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
