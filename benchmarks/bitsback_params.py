"""Bits-back coding parameters on the first digits test images: initial bits, and the coder's
excess over its ideal code length (``flowforge.bitsback.encode_stats``), against the model's
NLL (the dequantization bound, averaged over 16 seeded noise draws).

    python benchmarks/bitsback_params.py runs/digits-realnvp-image --images 100 \
        --params 12,16,18 10,12,14 10,12,16 9,11,13
    python benchmarks/bitsback_params.py runs/digits-realnvp-image --images 100 --split val \
        --params 12,16,18 10,12,14 10,12,16 9,11,13

``--scheme jacobian`` or ``layers`` picks the bits-back scheme (default: layer-wise where the
flow's layers allow it). ``--split val`` takes the first validation images instead of the
first test images (the default, as before the option): parameters are to be chosen there.
``--seed`` seeds the coder's initial words (``encode_stats(seed=)``, default 0 as before): the
noise the coder draws, and so the net bits, move with it by about 0.5% on 100 images.

Each ``--params`` entry is ``sigma_bits,y_bits,z_bits``. "net" is the payload less the initial
bits; "ideal" is ``sum -log2 p(x + u) + log2 q(u | x)`` at the noise the coder drew.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from flowforge import bitsback
from flowforge.workbench.data import load_dataset
from flowforge.workbench.runs import load_run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--params", nargs="+", default=["10,12,14"])
    p.add_argument("--scheme", default="auto", choices=bitsback.SCHEMES)
    p.add_argument(
        "--split", default="test", choices=["test", "val"],
        help="the digits split whose first --images images are coded (default: test)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="encode_stats' seed (default 0)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    flow = load_run(args.run).eval()
    x = load_dataset("digits", seed=0).split(args.split)
    x = np.asarray(x).reshape(-1, *flow.event_shape)[: args.images]
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        xt = torch.from_numpy(x).to(flow.dtype)
        nll = -np.mean([flow.log_prob(xt).double().sum().item() for _ in range(16)])
    print(f"{args.run}, {len(x)} {args.split} images: model NLL {nll / math.log(2):.1f} bits")
    for spec in args.params:
        sb, yb, zb = (int(v) for v in spec.split(","))
        t0 = time.perf_counter()
        _, st = bitsback.encode_stats(
            flow, x, verify=False, sigma_bits=sb, y_bits=yb, z_bits=zb, scheme=args.scheme,
            seed=args.seed,
        )  # fmt: skip
        net = st["payload_bits"] - st["initial_bits"]
        print(
            f"sigma_bits {sb} y_bits {yb} z_bits {zb}: initial bits {st['initial_bits']}, "
            f"net {net}, ideal {st['ideal_bits']:.1f} ({100 * (net / st['ideal_bits'] - 1):+.2f}%"
            f"), ideal over NLL {100 * (st['ideal_bits'] * math.log(2) / nll - 1):+.2f}%, "
            f"fallbacks {st['uniform_fallbacks']}, {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
