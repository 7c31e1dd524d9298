"""flowforge against zuko, nflows, normflows and FrEIA on matched architectures.

    python benchmarks/run.py            # full run (make bench)
    python benchmarks/run.py --quick    # smoke check in a few minutes (make bench-quick)

For each data set and model family it builds every library's version (see ``peers.py``),
prints parameter counts, then measures, in one process and through the same code:

- training throughput (examples/s) over an equal budget of Adam steps, same batches;
- ``log_prob`` and sampling throughput (examples/s, eval mode, no grad);
- memory: bytes autograd saves for backward in one training step (the activation memory
  that dominates a step's peak), plus the process's peak RSS at the end;
- FLOPs of one training step (``FlopCounterMode``: matmuls only, elementwise work such as
  the splines is not counted) and the achieved FLOP/s as a fraction of this machine's
  ``torch.mm`` ceiling measured at the model's layer shape in the same process;
- test NLL after the budget, in nats, at the step with the best validation NLL (checked
  every ``eval_every`` steps: 1000 digits overfit within a few hundred steps), in the raw
  data's units (digits: 0..17 per pixel after uniform dequantization; the logit and
  standardisation Jacobian is added for everyone).

Results go to ``benchmarks/results/<name>.json`` and a table to
``benchmarks/results/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from peers import LIBRARIES, Unavailable  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ALPHA = 0.05


# -- data ----------------------------------------------------------------------------------------


def digits(seed: int = 0):
    """sklearn digits, dequantized U[0,1), logit + standardised outside every model.

    Returns train/val/test tensors in model space and, per test row, the log-Jacobian of the
    preprocessing (model space w.r.t. raw 0..17 units), so NLL_raw = NLL_model - logjac.
    """
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64)
    g = np.random.default_rng(seed)
    x = x + g.random(x.shape)  # dequantize: values in [0, 17)
    p = ALPHA + (1 - 2 * ALPHA) * x / 17
    y = np.log(p) - np.log1p(-p)
    logjac = np.log((1 - 2 * ALPHA) / 17) - np.log(p) - np.log1p(-p)
    tr, va, te = slice(0, 1000), slice(1000, 1350), slice(1350, None)
    mu, sd = y[tr].mean(0), y[tr].std(0) + 1e-6
    y = (y - mu) / sd
    logjac = (logjac - np.log(sd)).sum(1)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t(y[tr]), t(y[va]), t(y[te]), t(logjac[te])


def toy(name: str, n: int = 12000, seed: int = 0):
    """2-D toys, generated here; standardised with training statistics."""
    g = np.random.default_rng(seed)
    if name == "moons":
        t = g.uniform(0, np.pi, n)
        side = g.integers(0, 2, n)
        x = np.stack([np.cos(t), np.sin(t)], 1)
        x[side == 1] = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)[side == 1]
        x += 0.05 * g.standard_normal((n, 2))
    elif name == "circles":
        t = g.uniform(0, 2 * np.pi, n)
        r = np.where(g.integers(0, 2, n) == 1, 1.0, 0.5)
        x = r[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + 0.04 * g.standard_normal((n, 2))
    elif name == "8gaussians":
        k = g.integers(0, 8, n)
        c = np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], 1) * 2
        x = c + 0.2 * g.standard_normal((n, 2))
    else:
        raise ValueError(name)
    tr, va, te = slice(0, 8000), slice(8000, 10000), slice(10000, None)
    mu, sd = x[tr].mean(0), x[tr].std(0)
    y = (x - mu) / sd
    logjac = np.full(n - 10000, -np.log(sd).sum())
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t(y[tr]), t(y[va]), t(y[te]), t(logjac)


# -- measurements --------------------------------------------------------------------------------


def matmul_ceiling(batch: int, hidden: int, repeats: int = 50) -> float:
    """FLOP/s of ``torch.mm`` at a (batch, hidden) x (hidden, hidden) product."""
    a, b = torch.randn(batch, hidden), torch.randn(hidden, hidden)
    for _ in range(5):
        a @ b
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.perf_counter() - t0) / repeats)
    return 2 * batch * hidden * hidden / best


def saved_bytes(model, x) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one training step."""
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = -model.log_prob(x).mean()
    loss.backward()
    model.module.zero_grad(set_to_none=True)
    return sum(seen.values())


def step_flops(model, x) -> int:
    with FlopCounterMode(display=False) as fc:
        loss = -model.log_prob(x).mean()
        loss.backward()
    model.module.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def throughput(fn, n: int, min_time: float) -> float:
    """Examples/s of ``fn()`` that processes ``n`` examples; best of repeated timings."""
    fn()
    best, spent = math.inf, 0.0
    while spent < min_time or best == math.inf:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return n / best


@torch.no_grad()
def test_nll(model, x, logjac, chunk: int = 1000) -> float:
    lp = torch.cat([model.log_prob(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    return float(-(lp.double() + logjac.double()).mean())


def run_one(lib, kind, data, cfg, batches):
    train, val, test, logjac = data
    d = train.shape[1]
    torch.manual_seed(cfg["seed"])
    model = LIBRARIES[lib](kind, d, cfg["layers"], cfg["hidden"], cfg["bins"])
    row = {"library": lib, "model": kind, "params": model.params(), "note": model.note}
    model.module.train()
    xb = train[batches[0]]
    row["saved_MB"] = saved_bytes(model, xb) / 2**20
    row["step_MFLOP"] = step_flops(model, xb) / 1e6
    opt = torch.optim.Adam(model.module.parameters(), lr=cfg["lr"])
    warm, every = 5, cfg["eval_every"]
    best_val, best_state, dt = math.inf, None, 0.0
    for s, idx in enumerate(batches):
        t0 = time.perf_counter()
        loss = -model.log_prob(train[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s >= warm:
            dt += time.perf_counter() - t0
        if not torch.isfinite(loss):
            row["error"] = f"non-finite loss at step {s}"
            return row
        if (s + 1) % every == 0 or s + 1 == len(batches):  # early stopping on validation
            model.module.eval()
            v = test_nll(model, val, torch.zeros(len(val)))
            model.module.train()
            if v < best_val:
                best_val, row["best_step"] = v, s + 1
                best_state = {k: t.detach().clone() for k, t in model.module.state_dict().items()}
    model.module.load_state_dict(best_state)
    steps = len(batches) - warm
    row["train_ex_s"] = steps * cfg["batch"] / dt
    row["train_GFLOP_s"] = row["step_MFLOP"] * steps / dt / 1e3
    model.module.eval()
    xe = test[: cfg["eval_batch"]]
    with torch.no_grad():
        row["log_prob_ex_s"] = throughput(lambda: model.log_prob(xe), len(xe), cfg["min_time"])
        n = cfg["sample_batch"]
        row["sample_ex_s"] = throughput(lambda: model.sample(n), n, cfg["min_time"])
    row["test_nll"] = test_nll(model, test, logjac)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, digits and moons only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--libs", default=",".join(LIBRARIES), help="comma-separated libraries")
    ap.add_argument("--models", default="maf,nsf-ar,nsf-c,realnvp")
    ap.add_argument("--datasets", default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    name = "quick" if quick else "full"
    datasets = args.datasets or ("digits,moons" if quick else "digits,moons,8gaussians")
    cfg = dict(
        layers=4,
        hidden=128,
        bins=8,
        batch=256,
        lr=1e-3,
        seed=0,
        steps=args.steps or (40 if quick else 400),
        eval_batch=1000,
        sample_batch=100 if quick else 250,
        eval_every=10 if quick else 25,
        min_time=0.2 if quick else 1.0,
    )
    libs = args.libs.split(",")
    out = {
        "config": cfg,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "versions": {},
        "matmul_ceiling_GFLOP_s": {},
        "results": [],
        "skipped": [],
    }
    for lib in libs:
        try:
            mod = {"flowforge": "flowforge", "FrEIA": "FrEIA"}.get(lib, lib)
            out["versions"][lib] = getattr(__import__(mod), "__version__", "?")
        except Exception as e:
            out["versions"][lib] = f"import failed: {e}"
    for ds in datasets.split(","):
        data = digits() if ds == "digits" else toy(ds)
        ceiling = matmul_ceiling(cfg["batch"], cfg["hidden"])
        out["matmul_ceiling_GFLOP_s"][ds] = ceiling / 1e9
        g = torch.Generator().manual_seed(cfg["seed"])
        n = len(data[0])
        batches = [torch.randint(0, n, (cfg["batch"],), generator=g) for _ in range(cfg["steps"])]
        print(f"\n== {ds}: D={data[0].shape[1]}, matmul ceiling {ceiling / 1e9:.1f} GFLOP/s")
        for kind in args.models.split(","):
            for lib in libs:
                try:
                    row = run_one(lib, kind, data, cfg, batches)
                except Unavailable as e:
                    out["skipped"].append({"dataset": ds, "model": kind, "library": lib,
                                           "reason": str(e)})  # fmt: skip
                    continue
                except Exception as e:  # a peer that breaks on this torch: record, go on
                    traceback.print_exc(limit=2)
                    out["skipped"].append({"dataset": ds, "model": kind, "library": lib,
                                           "reason": f"{type(e).__name__}: {e}"[:300]})  # fmt: skip
                    continue
                row["dataset"] = ds
                if "train_GFLOP_s" in row:
                    row["fraction_of_ceiling"] = row["train_GFLOP_s"] * 1e9 / ceiling
                out["results"].append(row)
                print(
                    f"{kind:8s} {lib:10s} params {row['params']:>8,d}  "
                    + (
                        f"train {row['train_ex_s']:8.0f}/s  log_prob {row['log_prob_ex_s']:9.0f}/s"
                        f"  sample {row['sample_ex_s']:9.0f}/s  saved {row['saved_MB']:6.1f} MB  "
                        f"{row['fraction_of_ceiling']:.0%} of mm  NLL {row['test_nll']:.3f}"
                        if "test_nll" in row
                        else row.get("error", "")
                    ),
                    flush=True,
                )
    out["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    from report import write_report

    write_report(out, RESULTS / ("README.md" if not quick else "quick.md"))
    print(f"\nwrote {RESULTS / (name + '.json')}")


if __name__ == "__main__":
    main()
