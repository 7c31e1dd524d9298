"""The incremental autoregressive inverse against a forward pass: ``flow.sample(n)`` and
``flow.log_prob(x)`` of the same MAF, CPU time, medians of ``--repeats`` calls after a warm-up,
one thread (``nets.MADE.solve``; docs/autoregressive.md). Run it in fresh processes against
two versions of the code, interleaved, to compare them:

    for v in old new; do PYTHONPATH=$v/src python benchmarks/made_sampling.py; done
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import flowforge as ff


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    flow = ff.models.build("maf", features=args.features).eval()
    x = torch.randn(args.batch, args.features)
    times: dict[str, list[float]] = {"sample": [], "log_prob": []}
    with torch.no_grad():
        flow.log_prob(x), flow.sample(args.batch)  # warm-up
        for _ in range(args.repeats):
            for name, call in (("sample", lambda: flow.sample(args.batch)),
                               ("log_prob", lambda: flow.log_prob(x))):  # fmt: skip
                t0 = time.process_time()
                call()
                times[name].append(time.process_time() - t0)
    s, lp = (statistics.median(times[k]) for k in ("sample", "log_prob"))
    print(f"MAF D={args.features}, {args.batch} rows: sample {1e3 * s:.1f} ms, log_prob "
          f"{1e3 * lp:.1f} ms of CPU time; sample / log_prob {s / lp:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
