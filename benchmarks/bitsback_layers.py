"""Layer-wise against whole-flow-Jacobian bits-back coding at larger dimension.

A Glow (ActNorm, LU 1x1 convolutions, affine couplings, squeeze, factor-out with the learned
split prior, the logit preprocessing; uniform dequantization, 256 levels) on 3xSxS
"random-ish" 8-bit images: a smooth random colour field (4x4 uniform values, bilinearly
upsampled) plus integer noise of +-8, clipped to [0, 255]. The flow is *not trained*: it is
data-initialised (ActNorm's first-batch statistics) and its couplings perturbed off the
identity, so its bits/dim are poor; what this measures is the coder's speed and its overhead
over ``-log2 p(y)`` (``ideal_bits``) as D grows. One torch thread.

    python benchmarks/bitsback_layers.py --size 16 --images 20 --jacobian-images 2
    python benchmarks/bitsback_layers.py --size 32 --images 10 --jacobian-images 1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge import bitsback


def images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    field = torch.rand(n, 3, 4, 4, generator=g) * 255
    smooth = torch.nn.functional.interpolate(field, size=(size, size), mode="bilinear")
    noise = torch.randint(-8, 9, (n, 3, size, size), generator=g)
    return (smooth.round().long() + noise).clamp(0, 255)


def build(size: int, seed: int) -> ff.Flow:
    torch.manual_seed(seed)
    scales = 3 if size >= 16 else 2
    flow = ff.models.Glow(shape=(3, size, size), scales=scales, steps=4, hidden=32, levels=256)
    flow.train()
    with torch.no_grad():
        flow.log_prob(images(64, size, seed + 1).float())  # ActNorm's data-dependent init
        for name, p in flow.named_parameters():  # couplings and split priors off the identity
            if "net" in name:
                p.add_(0.02 * torch.randn_like(p))
    return flow.eval()


def run(flow, x, scheme: str) -> dict:
    d = x[0].numel()
    t = time.perf_counter()
    blob, stats = bitsback.encode_stats(flow, x, scheme=scheme, verify=False)
    enc = time.perf_counter() - t
    t = time.perf_counter()
    back = bitsback.decode(flow, blob)
    dec = time.perf_counter() - t
    dims = x.numel()
    return {
        "scheme": stats["scheme"],
        "images": len(x),
        "dims": d,
        "identical": bool(torch.equal(back, x)),
        "file_bits_per_dim": 8 * len(blob) / dims,
        "ideal_bits_per_dim": stats["ideal_bits"] / dims,
        "coder_excess_percent": 100
        * ((stats["payload_bits"] - stats["initial_bits"]) / stats["ideal_bits"] - 1),
        "initial_bits": stats["initial_bits"],
        "z_bits": bitsback.read_header(blob).z_bits,
        "encode_per_s": len(x) / enc,
        "decode_per_s": len(x) / dec,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--jacobian-images", type=int, default=2, help="0: skip the black-box run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append the results to this .jsonl file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    flow = build(args.size, args.seed)
    x = images(args.images, args.size, args.seed + 2)
    with torch.no_grad():
        nll = -flow.log_prob(x.float()).mean().item() / (x[0].numel() * math.log(2))
    rows = [run(flow, x, "layers")]
    if args.jacobian_images:
        rows.append(run(flow, x[: args.jacobian_images], "jacobian"))
    for r in rows:
        r.update(size=args.size, model_nll_bits_per_dim=nll, torch=torch.__version__)
        print(json.dumps(r))
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(json.dumps(r) + "\n")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
