"""flowforge against zuko, nflows, normflows and FrEIA on matched architectures.

    python benchmarks/run.py            # full run (make bench)
    python benchmarks/run.py --quick    # smoke check in a few minutes (make bench-quick)
    python benchmarks/run.py --seeds 5  # NLL over 5 training seeds (default 3; --quick: 1)

For each data set and model family (MAF, NSF autoregressive and coupling, RealNVP; Glow on
digits as 1x8x8 images) it builds every library's version (see ``peers.py``), prints
parameter counts, then measures, in one process and through the same code:

- training throughput (examples/s) from the median Adam step of the training run, same batches;
- ``log_prob`` and sampling throughput (examples/s, eval mode, no grad);
- memory: bytes autograd saves for backward in one training step (the activation memory
  that dominates a step's peak), plus the process's peak RSS at the end;
- FLOPs of one training step (``FlopCounterMode``: matmuls and convolutions; elementwise
  work such as the splines is not counted) and the achieved FLOP/s as a fraction of this
  machine's ``torch.mm`` ceiling measured at the model's layer shape in the same process;
- the floor (``floor.py``): flowforge's conditioner networks and the Adam step alone, the
  speed no implementation of the architecture can beat;
- test NLL after the budget, in nats, at the step with the best validation NLL (checked
  every ``eval_every`` steps: 1000 digits overfit within a few hundred steps), in the raw
  data's units (digits: 0..17 per pixel after uniform dequantization; the logit and
  standardisation Jacobian is added for everyone).

Every (library, model) is trained ``--seeds`` times; seed ``k`` sets both the initialisation
(``torch.manual_seed(k)``) and the order of the training batches, and every library gets the
same seeds. The NLL is reported per seed (``test_nll_seeds``) and as their mean (``test_nll``)
and standard deviation (``test_nll_sd``); speeds are the best over seeds (they measure speed,
not training luck). The data sets and their splits do not depend on the seed.

Results go to ``benchmarks/results/<name>.json`` and tables to
``benchmarks/results/README.md`` (the full run) or ``<name>.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
from floor import floor_seconds  # noqa: E402
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


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


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


def make_batches(n: int, cfg: dict, seed: int) -> list[torch.Tensor]:
    """The training batch indices of one seed (the same for every library)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n, (cfg["batch"],), generator=g) for _ in range(cfg["steps"])]


def run_one(lib, kind, data, cfg, batches, seed):
    """Build, train (one seed) and measure one library's model; a row of results."""
    train, val, test, logjac = data
    d = train.shape[1]
    torch.manual_seed(seed)
    model = LIBRARIES[lib](kind, d, cfg["layers"], cfg["hidden"], cfg["bins"])
    row = {"library": lib, "model": kind, "params": model.params(), "note": model.note}
    model.module.train()
    xb = train[batches[0]]
    row["saved_MB"] = saved_bytes(model, xb) / 2**20
    row["step_MFLOP"] = step_flops(model, xb) / 1e6
    opt = torch.optim.Adam(model.module.parameters(), lr=cfg["lr"])
    warm, every = 5, cfg["eval_every"]
    best_val, best_state, times = math.inf, None, []
    for s, idx in enumerate(batches):
        t0 = time.perf_counter()
        loss = -model.log_prob(train[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s >= warm:
            times.append(time.perf_counter() - t0)
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
    # the median step: robust to the other jobs of a shared machine and to the CPU warming up
    # for whichever library runs first
    dt = float(np.median(times))
    row["train_ex_s"] = cfg["batch"] / dt
    row["train_GFLOP_s"] = row["step_MFLOP"] / dt / 1e3
    model.module.eval()
    xe = test[: cfg["eval_batch"]]
    with torch.no_grad():
        row["log_prob_ex_s"] = throughput(lambda: model.log_prob(xe), len(xe), cfg["min_time"])
        n = cfg["sample_batch"]
        row["sample_ex_s"] = throughput(lambda: model.sample(n), n, cfg["min_time"])
    row["test_nll"] = test_nll(model, test, logjac)
    return row


SPEEDS = ("train_ex_s", "train_GFLOP_s", "log_prob_ex_s", "sample_ex_s")


def merge_seeds(rows: list[dict], seeds: list[int]) -> dict:
    """One row from the per-seed rows: best speeds, per-seed NLLs, their mean and sd.

    A seed that failed (non-finite loss) makes the whole row an error row (no ``test_nll``),
    so a mean is never taken over the lucky seeds only.
    """
    out = {k: v for k, v in rows[0].items() if k not in (*SPEEDS, "test_nll", "best_step")}
    out["seeds"] = seeds
    out["best_step_seeds"] = [r.get("best_step") for r in rows]
    nll = [r.get("test_nll") for r in rows]
    out["test_nll_seeds"] = nll
    errors = [f"seed {s}: {r['error']}" for s, r in zip(seeds, rows) if "error" in r]
    if errors:
        out["error"] = "; ".join(errors)
        return out
    for k in SPEEDS:
        out[k] = max(r[k] for r in rows)
    out["test_nll"] = float(np.mean(nll))
    out["test_nll_sd"] = float(np.std(nll, ddof=1)) if len(nll) > 1 else None
    return out


# (library, model) pairs trained with the first seed only, and why: recorded in the row's note
ONE_SEED = {
    ("normflows", "maf"): "one seed: its D-pass log_prob makes 400 steps take ~7 min on digits",
}


def conditioner_floor(kind: str, d: int, cfg: dict, eval_batch: int) -> dict | None:
    """Examples/s of flowforge's conditioners alone (see ``floor.py``): the most any library
    can reach at this architecture."""
    torch.manual_seed(0)
    try:
        model = LIBRARIES["flowforge"](kind, d, cfg["layers"], cfg["hidden"], cfg["bins"])
    except Unavailable:
        return None
    t = floor_seconds(model.module, cfg["batch"], eval_batch, cfg["lr"])
    if t is None:
        return None
    return {
        "train_ex_s": cfg["batch"] / t["train_s"],
        "log_prob_ex_s": eval_batch / t["log_prob_s"],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, digits and moons only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--libs", default=",".join(LIBRARIES), help="comma-separated libraries")
    ap.add_argument("--models", default="maf,nsf-ar,nsf-c,realnvp,glow")
    ap.add_argument("--datasets", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="training seeds 0..N-1 per model (init and batch order); default 3, --quick 1",
    )
    ap.add_argument(
        "--name",
        default=None,
        help="results/<name>.json and .md (default: full, whose table goes to README.md, or "
        "quick); give one for partial runs so they do not overwrite the full results",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = ap.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        ap.error("--seeds must be at least 1")
    torch.set_num_threads(args.threads)
    quick = args.quick
    name = args.name or ("quick" if quick else "full")
    datasets = args.datasets or ("digits,moons" if quick else "digits,moons,8gaussians")
    n_seeds = args.seeds if args.seeds is not None else (1 if quick else 3)
    cfg = dict(
        layers=4,
        hidden=128,
        bins=8,
        batch=256,
        lr=1e-3,
        seeds=list(range(n_seeds)),
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
        "floor": {},
    }
    for lib in libs:  # the installed distribution's version (nflows and FrEIA have no __version__)
        try:
            out["versions"][lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out["versions"][lib] = "not installed"
    for ds in datasets.split(","):
        data = digits() if ds == "digits" else toy(ds)
        ceiling = matmul_ceiling(cfg["batch"], cfg["hidden"])
        out["matmul_ceiling_GFLOP_s"][ds] = ceiling / 1e9
        seed_batches = {s: make_batches(len(data[0]), cfg, s) for s in cfg["seeds"]}
        print(
            f"\n== {ds}: D={data[0].shape[1]}, matmul ceiling {ceiling / 1e9:.1f} GFLOP/s, "
            f"seeds {cfg['seeds']}"
        )
        for kind in args.models.split(","):
            # the floor is timed before and after the libraries and the faster kept, so that a
            # busy moment of a shared machine does not lower it; log_prob on the rows the
            # runner times (the first eval_batch test rows: 447 for digits)
            eval_rows = min(cfg["eval_batch"], len(data[2]))
            floor_args = (kind, data[0].shape[1], cfg, eval_rows)
            fl = conditioner_floor(*floor_args)
            for lib in libs:
                try:
                    rows = []
                    one_seed = (lib, kind) in ONE_SEED and len(cfg["seeds"]) > 1
                    seeds = cfg["seeds"][:1] if one_seed else cfg["seeds"]
                    for s in seeds:
                        rows.append(run_one(lib, kind, data, cfg, seed_batches[s], s))
                        if len(cfg["seeds"]) > 1:
                            nll = _fmt(rows[-1].get("test_nll"), ".3f")
                            print(f"  {kind} {lib} seed {s}: NLL {nll}", flush=True)
                    row = merge_seeds(rows, seeds)
                    if one_seed:
                        row["note"] = "; ".join(filter(None, [row["note"], ONE_SEED[lib, kind]]))
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
                        + (
                            f" ± {row['test_nll_sd']:.3f}"
                            if row.get("test_nll_sd") is not None
                            else ""
                        )
                        if "test_nll" in row
                        else row.get("error", "")
                    ),
                    flush=True,
                )
            if fl:
                again = conditioner_floor(*floor_args)
                fl = {k: max(v, again[k]) for k, v in fl.items()}
                out["floor"].setdefault(ds, {})[kind] = fl
                print(
                    f"{kind:8s} floor (conditioners + Adam alone, faster of before/after): "
                    f"train {fl['train_ex_s']:8.0f}/s  log_prob {fl['log_prob_ex_s']:9.0f}/s",
                    flush=True,
                )
    out["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(out, indent=1))
    from report import write_report

    write_report(out, args.out / ("README.md" if name == "full" else f"{name}.md"))
    print(f"\nwrote {args.out / (name + '.json')}")


if __name__ == "__main__":
    main()
