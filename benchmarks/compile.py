"""``torch.compile`` against eager on the benchmark's flowforge models (digits' 64-d, or
``--features 2`` for the toys' size): training step (batch 256, Adam) and ``log_prob`` (batch
1,024, no grad), one thread, with the compile times and the conditioner floor
(``benchmarks/floor.py``) of the same model; the spline models also with only their splines
compiled (``RationalQuadratic.compiled``).

Eager, compiled and floor calls are interleaved round by round (median over the rounds), so
that the load of a shared machine weighs on all alike.

    python benchmarks/compile.py --out benchmarks/results/compile.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import floor
import peers
import torch

from flowforge.transforms import RationalQuadratic

MODELS = ("maf", "realnvp", "nsf-c", "nsf-ar", "glow")


def measure(
    kind: str, rounds: int, layers: int = 4, hidden: int = 128, bins: int = 8, d: int = 64
) -> dict:
    torch.manual_seed(0)
    model = peers.flowforge(kind, d, layers, hidden, bins)
    flow = model.module
    flow.validate_args = False  # as in a compiled graph (no checks inside one)
    x = torch.randn(256, d) * 0.5
    xe = torch.randn(1024, d) * 0.5
    opt = torch.optim.Adam(flow.parameters(), 1e-3)

    model.log_prob(x)  # data-dependent initialisation (DataStandardize, ActNorm), eagerly

    def loss_eager(b):
        return -model.log_prob(b).mean()

    loss_compiled = torch.compile(loss_eager)
    lp_compiled = torch.compile(model.log_prob)

    def step(loss):
        opt.zero_grad(set_to_none=True)
        loss(x).backward()
        opt.step()

    t0 = time.perf_counter()
    step(loss_compiled)
    compile_train = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        lp_compiled(xe)
        compile_lp = time.perf_counter() - t0
        diff = (lp_compiled(xe) - model.log_prob(xe)).abs().max().item()
    # the floor (the conditioners and Adam alone, of a model built for it), timed in the same
    # rounds so that the machine's load weighs on it as on the rest
    fns = floor.floor_fns(peers.flowforge(kind, d, layers, hidden, bins).module, 256, 1024)
    # the spline models once more with only their splines compiled (RationalQuadratic.compiled,
    # the workbench's train.compile: splines), switched on for those calls only
    trains = [("train_eager", loss_eager), ("train_compiled", loss_compiled)]
    scores = [("lp_eager", model.log_prob), ("lp_compiled", lp_compiled)]
    compile_splines = None
    if any(isinstance(m, RationalQuadratic) for m in flow.modules()):

        def splines(fn):
            def call(b):
                RationalQuadratic.compiled = True
                try:
                    return fn(b)
                finally:
                    RationalQuadratic.compiled = False

            return call

        trains.append(("train_splines", splines(loss_eager)))
        scores.append(("lp_splines", splines(model.log_prob)))
        t0 = time.perf_counter()
        step(trains[-1][1])
        with torch.no_grad():
            scores[-1][1](xe)
        compile_splines = time.perf_counter() - t0
    names = [n for n, _ in trains + scores] + ["train_floor", "lp_floor"]
    times = {k: [] for k in names}
    for _ in range(5):
        for _, loss in trains:
            step(loss)
        if fns is not None:
            fns[0]()
    for _ in range(rounds):
        for name, loss in trains:
            t0 = time.perf_counter()
            step(loss)
            times[name].append(time.perf_counter() - t0)
        with torch.no_grad():
            for name, fn in scores:
                t0 = time.perf_counter()
                fn(xe)
                times[name].append(time.perf_counter() - t0)
        if fns is not None:
            for name, fn in (("train_floor", fns[0]), ("lp_floor", fns[1])):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    out = {
        "model": kind,
        "params": model.params(),
        "compile_train_s": compile_train,
        "compile_log_prob_s": compile_lp,
        "log_prob_max_abs_difference": diff,
        "train_eager_per_s": 256 / med["train_eager"],
        "train_compiled_per_s": 256 / med["train_compiled"],
        "log_prob_eager_per_s": 1024 / med["lp_eager"],
        "log_prob_compiled_per_s": 1024 / med["lp_compiled"],
    }
    if compile_splines is not None:
        out["compile_splines_s"] = compile_splines
        out["train_splines_per_s"] = 256 / med["train_splines"]
        out["log_prob_splines_per_s"] = 1024 / med["lp_splines"]
    if fns is not None:
        out["train_floor_per_s"] = 256 / med["train_floor"]
        out["log_prob_floor_per_s"] = 1024 / med["lp_floor"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--features", type=int, default=64, help="D: 64 (digits' size) or 2 (toys)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for kind in args.models.split(","):
        r = measure(kind, args.rounds, d=args.features)
        rows.append(r)
        fl = ""
        if "train_floor_per_s" in r:
            fl = f"  floor {r['train_floor_per_s']:8.0f} / {r['log_prob_floor_per_s']:8.0f}"
        print(
            f"{kind:8s} compile {r['compile_train_s']:5.1f} + {r['compile_log_prob_s']:5.1f} s  "
            f"train {r['train_eager_per_s']:8.0f} -> {r['train_compiled_per_s']:8.0f}/s  "
            f"log_prob {r['log_prob_eager_per_s']:8.0f} -> {r['log_prob_compiled_per_s']:8.0f}/s"
            f"{fl}  diff {r['log_prob_max_abs_difference']:.1e}",
            flush=True,
        )
        if "compile_splines_s" in r:
            print(
                f"{'':8s} splines only: compile {r['compile_splines_s']:5.1f} s  train "
                f"{r['train_splines_per_s']:8.0f}/s  log_prob {r['log_prob_splines_per_s']:8.0f}/s",
                flush=True,
            )
    if args.out:
        meta = {"torch": torch.__version__, "threads": 1, "features": args.features,
                "load_average": os.getloadavg()}  # fmt: skip
        with open(args.out, "w") as f:
            json.dump({**meta, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
