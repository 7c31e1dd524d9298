"""A VAE on scikit-learn's digits with each flow posterior; test ELBO and IW bound.

    make vae-table                              # the full table
    python examples/vae/table.py --quick        # smoke check: 1 epoch, k = 20, docs untouched

Writes docs/vae_table.json, replaces the table between the markers in docs/vi.md, and prints
the table. The model and its training (flowforge's Trainer with an ELBO objective) are in
``model.py`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import POSTERIORS, VAE, evaluate_vae, load_digits_splits, train_vae  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- vae-table:start -->", "<!-- vae-table:end -->"
LABELS = {
    "gaussian": "diagonal Gaussian",
    "planar": "+ planar (8 layers)",
    "sylvester-householder": "+ Householder Sylvester (4 layers)",
    "sylvester-orthogonal": "+ orthogonal Sylvester (4 layers)",
    "sylvester-triangular": "+ triangular Sylvester (4 layers)",
    "iaf": "+ IAF (2 layers)",
}


def markdown(rows: list[dict], k: int) -> str:
    lines = [
        f"| posterior q(z\\|x) | test ELBO | test IW bound (k={k}) | gap | params | "
        "epochs (best) | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {LABELS.get(r['posterior'], r['posterior'])} | {r['elbo']:.2f} ± {r['elbo_se']:.2f}"
            f" | {r['iw']:.2f} ± {r['iw_se']:.2f} | {r['iw'] - r['elbo']:.2f} | {r['params']:,} "
            f"| {r['epochs']} ({r['best_epoch']}) | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_doc(path: Path, table: str) -> None:
    text = path.read_text()
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 epoch, k=20, 64 test images, no docs")
    p.add_argument("--posteriors", nargs="+", default=list(POSTERIORS), choices=POSTERIORS)
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--patience", type=int, default=40)
    p.add_argument("--warmup", type=int, default=20, help="epochs of KL warm-up")
    p.add_argument("--k", type=int, default=1000, help="importance samples for the IW bound")
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="default docs/vae_table.json")
    p.add_argument("--doc", type=Path, default=None, help="default docs/vi.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    splits = load_digits_splits()
    test = splits["test"]
    if a.quick:
        a.epochs, a.warmup, a.k, test = 1, 1, 20, test[:64]
    json_path = a.json or (None if a.quick else ROOT / "docs" / "vae_table.json")
    doc_path = a.doc or (None if a.quick else ROOT / "docs" / "vi.md")

    rows, t_all = [], time.time()
    for kind in a.posteriors:
        torch.manual_seed(a.seed)
        model = VAE(kind, latent=a.latent)
        fit = train_vae(
            model,
            splits,
            epochs=a.epochs,
            warmup=a.warmup,
            patience=a.patience,
            seed=a.seed,
        )
        res = evaluate_vae(model, test, k=a.k, seed=a.seed)
        row = {
            "posterior": kind,
            **res,
            **fit,
            "params": sum(q.numel() for q in model.parameters()),
        }
        rows.append(row)
        print(
            f"{kind:22s} ELBO {res['elbo']:8.2f}  IW {res['iw']:8.2f}  epochs {fit['epochs']} "
            f"(best {fit['best_epoch']})  {fit['seconds']:.0f}s",
            flush=True,
        )
    table = markdown(rows, a.k)
    print()
    print(table)
    meta = {
        "data": "sklearn digits, 17 levels; train [:1000], val [1000:1350], test [1350:]",
        "units": "nats per image (log-likelihood bounds; higher is better)",
        "latent": a.latent,
        "k": a.k,
        "epochs_max": a.epochs,
        "patience": a.patience,
        "warmup": a.warmup,
        "seed": a.seed,
        "threads": a.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "total_seconds": time.time() - t_all,
        "quick": a.quick,
    }
    if json_path is not None:
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if doc_path is not None:
        write_doc(doc_path, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
