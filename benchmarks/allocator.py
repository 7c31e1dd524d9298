"""Page faults against kept memory: the benchmark's flowforge models (digits size, D = 64) with
the C allocator's defaults and with ``flowforge.workbench.reuse_freed_memory()`` (what the
``flowforge`` command sets at start).

Each measurement runs in a fresh process (the setting is process-wide and cannot be undone),
alternating default / kept, ``--rounds`` times per model; each process times training steps
(batch 256, fused Adam) and ``log_prob`` calls (batch 1,024 and 10,000, no grad) in its own CPU
time, one thread, and reports medians; the table gives the median over rounds.

    python benchmarks/allocator.py --out benchmarks/results/allocator.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("maf", "realnvp", "nsf-c", "nsf-ar")
HERE = Path(__file__).resolve().parent


def worker(kind: str, keep: bool, steps: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    import peers

    from flowforge.workbench.allocator import reuse_freed_memory

    applied = reuse_freed_memory() if keep else False
    torch.set_num_threads(1)
    torch.manual_seed(0)
    flow = peers.flowforge(kind, 64, 4, 128, 8).module
    x = torch.randn(10_000, 64) * 0.5
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)

    def step():
        loss = -flow.log_prob(x[torch.randint(0, len(x), (256,), generator=g)]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn, n):
        out = []
        for _ in range(n):
            t0 = time.process_time()
            fn()
            out.append(time.process_time() - t0)
        return statistics.median(out)

    for _ in range(10):
        step()
    with torch.no_grad():
        flow.log_prob(x)
        lp1k = timed(lambda: flow.log_prob(x[:1024]), steps)
        lp10k = timed(lambda: flow.log_prob(x), max(3, steps // 8))
    return {
        "applied": applied,
        "train_per_s": 256 / timed(step, steps),
        "log_prob_1024_per_s": 1024 / lp1k,
        "log_prob_10000_per_s": 10_000 / lp10k,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="timed calls per process")
    ap.add_argument("--out")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # internal: KIND KEEP STEPS
    args = ap.parse_args()
    if args.worker:
        kind, keep, steps = args.worker
        print(json.dumps(worker(kind, keep == "1", int(steps))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for kind in args.models.split(","):
        runs: dict = {"default": [], "kept": []}
        for _ in range(args.rounds):
            for name, keep in (("default", "0"), ("kept", "1")):
                cmd = [sys.executable, __file__, "--worker", kind, keep, str(args.steps)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        row: dict = {"model": kind, "runs": runs}
        for key in ("train_per_s", "log_prob_1024_per_s", "log_prob_10000_per_s"):
            a = statistics.median(r[key] for r in runs["default"])
            b = statistics.median(r[key] for r in runs["kept"])
            row[key] = {"default": a, "kept": b, "ratio": b / a}
        rows.append(row)
        cells = []
        for k in ("train_per_s", "log_prob_1024_per_s", "log_prob_10000_per_s"):
            r = row[k]
            cells.append(f"{k[:-6]} {r['default']:7.0f} -> {r['kept']:7.0f} ({r['ratio']:.2f}x)")
        print(f"{kind:8s} " + "  ".join(cells), flush=True)
    if args.out:
        import torch

        meta = {"torch": torch.__version__, "threads": 1, "load_average": os.getloadavg()}
        with open(args.out, "w") as f:
            json.dump({**meta, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
