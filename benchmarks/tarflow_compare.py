"""TarFlow against flowforge's best coupling model and the peers' spline flows on the digits.

Models (parameter counts are printed and stored):

- ``tarflow``: flowforge's transformer autoregressive flow, built from
  ``configs/digits-tarflow.yaml`` exactly as ``flowforge train`` builds it;
- ``realnvp-image``: flowforge's multi-scale RealNVP of ``configs/digits-realnvp-image.yaml``
  (its ActNorm initialised from a first batch, as the trainer does);
- ``zuko-nsf``: ``zuko.flows.NSF`` (autoregressive rational-quadratic splines, 8 bins);
- ``nflows-nsf``: nflows' masked autoregressive rational-quadratic spline flow (8 bins).

The peers are built by ``benchmarks/peers.py`` (two hidden layers per MADE, a reversal
between layers), sized to about the TarFlow's 291k parameters.

Same data for every model: the workbench's digits split (17 levels), uniform dequantization
``x + u`` with the same noise and the same batches (seeded generators), and the same fixed
logit preprocessing (flowforge's ``Logit``, alpha 0.05: inside flowforge's models, prepended to
the peers with its log-determinant), so every log-density is in the same units. Each model
is trained for the same number of Adam steps (lr 1e-3, batch 256, gradient norm clipped at 5,
no schedule, no weight average) at one thread, then scored:

- training throughput: examples/s, median over the timed steps after ``--warmup`` steps;
- log_prob throughput: examples/s at batch 1,024, eval mode, no grad (median of repeats);
- test NLL in nats/image, mean over the test split and ``--draws`` dequantization draws.

The NLL after a short budget is not a converged figure (see docs/tarflow.md).

    nice -n 10 python benchmarks/tarflow_compare.py              # the committed results
    python benchmarks/tarflow_compare.py --steps 20 --out -        # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402

from flowforge.transforms import Logit  # noqa: E402
from flowforge.workbench.build import build_flow  # noqa: E402
from flowforge.workbench.config import read_config, resolve_config  # noqa: E402
from flowforge.workbench.data import load_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEVELS = 17
D = 64
MODELS = ["tarflow", "realnvp-image", "zuko-nsf", "nflows-nsf"]
# (layers, hidden) of the peers' autoregressive NSF, chosen for ~291k parameters
PEER_SIZE = {"zuko-nsf": (3, 60), "nflows-nsf": (3, 60)}


def flowforge_model(config: str, ds):
    """The flow of a config file as the workbench builds it; returns (module, log_prob)."""
    cfg = resolve_config(read_config(ROOT / config))
    flow, _, resolved = build_flow(cfg, ds)
    shape = tuple(resolved["event_shape"])

    def log_prob(y):  # y: dequantized rows (B, 64) on the 0-17 scale; skip the dequantizer
        z, ladj = flow.transform(y.reshape(-1, *shape), None)
        return flow.base.log_prob(z, None) + ladj

    return flow, log_prob


def peer_model(name: str):
    layers, hidden = PEER_SIZE[name]
    make = peers.zuko if name.startswith("zuko") else peers.nflows
    m = make("nsf-ar", D, layers, hidden, 8)
    logit = Logit((D,), LEVELS, 0.05)

    def log_prob(y):
        u, ladj = logit(y, None)
        return m.log_prob(u) + ladj

    module = torch.nn.ModuleDict({"flow": m.module, "logit": logit})
    return module, log_prob


def build(name: str, ds):
    if name == "tarflow":
        return flowforge_model("configs/digits-tarflow.yaml", ds)
    if name == "realnvp-image":
        return flowforge_model("configs/digits-realnvp-image.yaml", ds)
    return peer_model(name)


def params(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def run(name: str, ds, args) -> dict:
    torch.manual_seed(args.seed)
    module, log_prob = build(name, ds)
    train_x = ds.train.reshape(len(ds.train), -1)
    test_x = ds.test.reshape(len(ds.test), -1)
    gen = torch.Generator().manual_seed(args.seed + 1)  # batches and noise: same for all models
    module.train()
    if name == "realnvp-image":  # ActNorm's data-dependent initialisation, as the trainer does
        with torch.no_grad():
            idx = torch.randperm(len(train_x), generator=gen)[:500]
            x = train_x[idx]
            log_prob(x + torch.rand(x.shape, generator=gen))
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=args.lr)
    times, losses = [], []
    order, pos = torch.randperm(len(train_x), generator=gen), 0
    for step in range(args.steps):
        if pos + args.batch > len(order):
            order, pos = torch.randperm(len(train_x), generator=gen), 0
        x = train_x[order[pos : pos + args.batch]]
        pos += args.batch
        y = x + torch.rand(x.shape, generator=gen)
        t0 = time.perf_counter()
        loss = -log_prob(y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            print(f"  {name}: non-finite loss at step {step}", flush=True)
            break
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"  {name}: step {step + 1} loss {statistics.mean(losses[-20:]):.2f}", flush=True)
    timed = times[args.warmup :] or times
    train_rate = args.batch / statistics.median(timed)

    module.eval()
    noise = torch.Generator().manual_seed(args.seed + 2)
    with torch.no_grad():
        xb = train_x[torch.arange(1024) % len(train_x)]
        yb = xb + torch.rand(xb.shape, generator=noise)
        log_prob(yb)  # warm-up
        lp_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            log_prob(yb)
            lp_times.append(time.perf_counter() - t0)
        nll = []
        for _ in range(args.draws):
            yt = test_x + torch.rand(test_x.shape, generator=noise)
            nll.append(-log_prob(yt).mean().item())
    return {
        "model": name,
        "parameters": params(module),
        "train_examples_per_s": train_rate,
        "log_prob_examples_per_s": 1024 / statistics.median(lp_times),
        "test_nll": statistics.mean(nll),
        "final_train_loss": statistics.mean(losses[-20:]),
        "steps": len(losses),
        "wall_s": sum(times),
    }


def markdown(rows: list[dict], args) -> str:
    head = (
        f"Digits (8x8, 17 levels), {args.steps} Adam steps (lr {args.lr}, batch {args.batch}), "
        f"1 thread, seed {args.seed}; test NLL over {args.draws} dequantization draws "
        "(not converged: a short fixed budget).\n\n"
        "| model | parameters | train examples/s | log_prob examples/s (batch 1024) | "
        f"test NLL after {args.steps} steps (nats/image) |\n|---|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['model']} | {r['parameters']:,} | {r['train_examples_per_s']:,.0f} | "
        f"{r['log_prob_examples_per_s']:,.0f} | {r['test_nll']:.2f} |\n"
        for r in rows
    )
    return head + body


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/tarflow_compare"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    rows = []
    for name in args.models.split(","):
        if name not in MODELS:
            p.error(f"unknown model {name!r}; expected some of {MODELS}")
        try:
            rows.append(run(name, ds, args))
        except peers.Unavailable as e:
            print(f"{name}: unavailable: {e}", flush=True)
            continue
        print(json.dumps(rows[-1]), flush=True)
    md = markdown(rows, args)
    print(md)
    if args.out != "-":
        out = Path(args.out)
        meta = {k: v for k, v in vars(args).items() if k != "out"}
        meta["torch"] = torch.__version__
        out.with_suffix(".json").write_text(json.dumps({"args": meta, "rows": rows}, indent=1))
        out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
