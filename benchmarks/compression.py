"""Lossless compression: flowforge's IDF codec against the classical codecs.

Two data sets:

- ``digits``: the tutorial's test split (447 images, 8x8, 17 levels), coded with the run that
  ``configs/digits-idf.yaml`` trains (``--digits-run``);
- ``patches``: 8-bit grayscale 8x8 patches cut from scikit-learn's two sample photographs
  (``china.jpg``, ``flower.jpg``; 256 levels), seeded split; an IDF is trained on them here
  (``--patches-epochs``).

With ``--bitsback-run RUN`` also a continuous flow with ``levels`` (e.g. the run of
``configs/digits-realnvp-image.yaml``) on the digits, coded by local bits-back
(:mod:`flowforge.bitsback`; its NLL is the dequantization bound, averaged over 8 noise draws,
and the file includes the initial bits); ``--digits-run ''`` skips the IDF.

For each: the model's NLL (bits/dim), the ``.ffz`` file's bits/dim and its overhead over the
NLL, encode/decode throughput, a decode in a *fresh process* checked by SHA-256, and gzip -9,
bz2 -9, lzma -9e, PNG and WebP lossless on the same bytes, plus a per-pixel histogram of the
training split as a reference model.

    python benchmarks/compression.py --digits-run runs/digits-idf \
        --out benchmarks/results/compression.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import flowforge as ff
from flowforge import bitsback, codec
from flowforge.workbench.compress import classical_bits, data_hash
from flowforge.workbench.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
CLASSICAL = ("gzip", "bz2", "lzma", "png", "webp")


def patches(seed: int = 0, n_train: int = 6000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8x8 grayscale patches (uint8 values 0..255, as int64) of the two sample photographs
    (8,480 in all), shuffled with ``seed``: the first ``n_train`` (at most 6000) to train on,
    the next 1000 to validate, the last 1,480 to test."""
    from sklearn.datasets import load_sample_images

    out = []
    for img in load_sample_images().images:
        rgb = img.astype(np.int64)
        gray = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000
        h, w = (gray.shape[0] // 8) * 8, (gray.shape[1] // 8) * 8
        p = gray[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
        out.append(p)
    x = np.concatenate(out)
    x = x[np.random.default_rng(seed).permutation(len(x))]
    return x[: min(n_train, 6000)], x[6000:7000], x[7000:]


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.int64)
    return x[:1000], x[1000:1350], x[1350:]


def histogram_bits(train: np.ndarray, test: np.ndarray, levels: int) -> float:
    """Bits/dim of a per-position categorical with add-1/2 counts from the training split
    (the reference `flowforge eval` prints: ``histogram_baseline``)."""
    from flowforge.workbench.evaluate import histogram_baseline

    return histogram_baseline(train, test, levels) / (test.shape[1] * math.log(2))


def train_idf(train: np.ndarray, val: np.ndarray, levels: int, epochs: int, seed: int = 0):
    """An IDF for vectors, fitted by the Trainer (best validation weights kept)."""
    from flowforge.workbench.trainer import Trainer

    torch.manual_seed(seed)
    flow = ff.models.IDF(
        features=train.shape[1], levels=levels, layers=1, components=8, prior_blocks=64,
        prior_hidden=(64,),
    )  # fmt: skip
    cfg = {"optimizer": "adamax", "lr": 1e-3, "batch_size": 64, "epochs": epochs,
           "patience": 10, "schedule": "constant", "warmup_steps": 0}  # fmt: skip
    trainer = Trainer(
        flow, torch.from_numpy(train).float(), torch.from_numpy(val).float(), cfg, progress=False
    )
    trainer.fit()
    trainer.load_best()
    return flow.eval()


def fresh_decode(model: Path, blob: Path) -> tuple[str, float]:
    """Decode ``blob`` with the model file in a new Python process; its data hash and
    examples/s."""
    code = (
        "import sys, time, flowforge as ff; from flowforge.workbench.compress import data_hash;"
        "f = ff.load(sys.argv[1]).eval(); b = open(sys.argv[2], 'rb').read();"
        "t = time.perf_counter(); x = ff.codec.decode(f, b).numpy();"
        "print(data_hash(x), len(x) / (time.perf_counter() - t))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(model), str(blob)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    h, rate = out.stdout.split()
    return h, float(rate)


def measure(name: str, flow, train, test, levels: int, work: Path, shape=None) -> dict:
    x = test.reshape(-1, *flow.event_shape)
    bb = codec._bits_back(flow)
    stats = {}
    t0 = time.perf_counter()
    if bb:
        blob, stats = bitsback.encode_stats(flow, x, verify=False)
    else:
        blob = codec.encode(flow, x, verify=False)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = codec.decode(flow, blob).numpy()
    t_dec = time.perf_counter() - t0
    assert np.array_equal(back, x), "decoded data differ"
    model, path = work / f"{name}.ff", work / f"{name}.ffz"
    ff.save(flow, model)
    path.write_bytes(blob)
    h, fresh_rate = fresh_decode(model, path)
    dims = x.size
    reps = 8 if bb else 1  # a dequantizing flow's NLL is a bound: average the noise draws
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        xt = torch.from_numpy(x).to(flow.dtype)
        nll = -sum(flow.log_prob(xt).double().sum().item() for _ in range(reps)) / reps
    nll_bpd = nll / math.log(2) / dims
    img = test.reshape(-1, *shape) if shape else test
    return {
        "data": name,
        "codec": "bits-back" if bb else "integer",
        "initial_bits": stats.get("initial_bits", 0),
        "examples": int(len(x)),
        "dims": int(dims),
        "levels": levels,
        "nll_bits_per_dim": nll_bpd,
        "nll_nats_per_example": nll / len(x),
        "file_bytes": len(blob),
        "file_bits_per_dim": len(blob) * 8 / dims,
        "overhead_percent": 100 * (len(blob) * 8 / dims / nll_bpd - 1),
        "ideal_bits_per_dim": math.nan if bb else codec.ideal_bits(flow, x) / dims,
        "encode_per_s": len(x) / t_enc,
        "decode_per_s": len(x) / t_dec,
        "fresh_process_decode_per_s": fresh_rate,
        "identical_in_fresh_process": h == data_hash(x),
        "histogram_bits_per_dim": histogram_bits(
            train.reshape(len(train), -1), test.reshape(len(test), -1), levels
        ),  # fmt: skip
        "classical_bits_per_dim": classical_bits(img, levels),
    }


def table(results: list[dict]) -> str:
    rows = ["| data | model NLL | .ffz file | overhead | enc/s | dec/s | fresh dec identical "
            "| histogram | gzip | bz2 | lzma | PNG | WebP |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        c = r["classical_bits_per_dim"]
        rows.append(
            f"| {r['data']} ({r['examples']}) | {r['nll_bits_per_dim']:.3f} "
            f"({r['nll_nats_per_example']:.1f} nats) | **{r['file_bits_per_dim']:.3f}** | "
            f"{r['overhead_percent']:+.2f}% | {r['encode_per_s']:.0f} | {r['decode_per_s']:.0f} | "
            f"{r['identical_in_fresh_process']} | {r['histogram_bits_per_dim']:.3f} | "
            + " | ".join(f"{c.get(k, math.nan):.3f}" for k in CLASSICAL)
            + " |"
        )  # fmt: skip
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--digits-run", default="runs/digits-idf", help="'' skips the IDF")
    p.add_argument("--bitsback-run", default=None, help="a continuous digits run with levels")
    p.add_argument("--patches-epochs", type=int, default=30, help="0 skips the patches")
    p.add_argument("--patches-train", type=int, default=6000, help="training patches (<= 6000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/compression.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tr, _, te = digits()
        if args.digits_run:
            flow = load_run(args.digits_run).eval()
            results.append(measure("digits", flow, tr, te, 17, work, shape=(1, 8, 8)))
            print(table(results), flush=True)
        if args.bitsback_run:
            flow = load_run(args.bitsback_run).eval()
            results.append(measure("digits-bb", flow, tr, te, 17, work, shape=(1, 8, 8)))
            print(table(results), flush=True)
        if args.patches_epochs:
            tr, va, te = patches(n_train=args.patches_train)
            t0 = time.perf_counter()
            flow = train_idf(tr, va, 256, args.patches_epochs)
            print(f"patches IDF trained in {time.perf_counter() - t0:.0f} s", flush=True)
            results.append(measure("patches", flow, tr, te, 256, work, shape=(1, 8, 8)))
    out = {
        "command": "python benchmarks/compression.py " + " ".join(argv or sys.argv[1:]),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": args.threads,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    md = Path(args.out).with_suffix(".md")
    md.write_text(f"`{out['command']}` (torch {out['torch']}, {out['machine']})\n\n"
                  f"Bits per dimension.\n\n{table(results)}\n")  # fmt: skip
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
