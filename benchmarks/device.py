"""flowforge on a CUDA device: throughput against the conditioner floor and the peers, the
fraction of the device's peak that it reaches, images per second, the workbench's own overhead,
and what memory-saving backpropagation does to the device's peak memory.

    python benchmarks/device.py --out benchmarks/results/device.json

Parts (``--parts``, all by default):

- ``peak``: the device's measured peak, float32 (TF32 off, torch's default) and TF32 matrix
  products of 8192 x 8192 x 8192, and a device-to-device copy's bandwidth. The fractions below
  are of these measured figures, not of the data sheet's.
- ``throughput``: the cross-library benchmark's models (``cross_library.py``: MAF, RealNVP,
  coupling and autoregressive NSF, 4 layers of width 128) on the digits (D = 64) and moons
  (D = 2), for flowforge, each peer that imports, and the floor (the conditioners alone,
  ``floor.py``): examples/s of a training step (Adam), ``log_prob`` without grad and sampling,
  at the batch sizes of ``--train-batches`` and ``--eval-batches``. Every call is followed by
  ``torch.cuda.synchronize()`` (a step is timed to its end, as a training loop that reads its
  loss sees it); libraries are interleaved round by round (``--rounds``), medians reported.
  The floating-point operations of each flowforge call are counted once
  (``torch.utils.flop_counter``) to give TFLOP/s and the fraction of the measured peak.
- ``images``: a multi-scale Glow (3 x 32 x 32, 3 scales of 8 steps, width 256) and the image
  RealNVP on CIFAR-shaped 8-bit data: training and ``log_prob`` images/s, with the floor.
- ``trainer``: ``flowforge train`` (the workbench's Trainer, one read from the device per
  step) against a bare loop of the same model, batch and optimizer: its examples/s per epoch.
- ``memory``: ``benchmarks/memory.py``'s 32-step Glow and 16-layer RealNVP: peak allocated
  device memory over one training step and the step time, memory saving off and on.

Peers come from the ``bench`` extra; on a machine without network access their pure-Python
packages can be put on ``PYTHONPATH``. Results go to ``--out`` (JSON, written after each part)
and the tables to stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import cross_library as xl  # noqa: E402
from floor import floor_fns  # noqa: E402

import flowforge as ff  # noqa: E402

LIBS = ["flowforge", "zuko", "nflows", "normflows", "FrEIA"]


_CUDA = [True]  # False for a check of this script's code on the CPU (--device cpu)


def sync():
    if _CUDA[0]:
        torch.cuda.synchronize()


def synced(fn):
    """``fn`` followed by a synchronisation, keeping a compiled op's first-call time."""

    def call():
        fn()
        sync()

    return call


def flops(fn) -> int:
    """Floating-point operations of one call of ``fn`` (matrix products and convolutions, as
    torch's counter counts them: the elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    sync()
    return counter.get_total_flops()


# -- peak ----------------------------------------------------------------------------------------


def part_peak(dev) -> dict:
    n = 8192
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    out = {}
    for name, tf32 in (("fp32_tflops", False), ("tf32_tflops", True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for _ in range(3):
            a @ b
        sync()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        out[name] = 10 * 2 * n**3 / (time.perf_counter() - t0) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.empty(2**30 // 4, device=dev)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync()
    out["copy_tb_s"] = 10 * 2 * x.numel() * 4 / (time.perf_counter() - t0) / 1e12
    del a, b, x, y
    torch.cuda.empty_cache()
    print(f"peak: fp32 {out['fp32_tflops']:.1f} TFLOP/s, TF32 {out['tf32_tflops']:.1f}, "
          f"copy {out['copy_tb_s']:.2f} TB/s", flush=True)  # fmt: skip
    return out


# -- throughput ----------------------------------------------------------------------------------


def _device_ops(model, data, batch_sizes, eval_sizes):
    model.module.to(data[0].device)
    return xl._ops(model, data, batch_sizes, eval_sizes)


def _device_floor(kind, d, batch_sizes, eval_sizes, dev):
    torch.manual_seed(0)
    model = xl.build("flowforge", kind, d).module.to(dev)
    ops = {}
    for b in batch_sizes:
        fns = floor_fns(model, b, eval_sizes[0], xl.LR)
        if fns is None:
            return {}
        ops["train", b] = fns[0]
    for e in eval_sizes:
        _, density = floor_fns(model, batch_sizes[0], e, xl.LR)
        ops["log_prob", e] = density
        if kind in ("nsf-c", "realnvp"):
            ops["sample", e] = density  # (a coupling inverse runs each conditioner once)
    return ops


def part_throughput(args, dev, peak) -> list[dict]:
    ops = [("train", b) for b in args.train_batches]
    ops += [(o, b) for b in args.eval_batches for o in ("log_prob", "sample")]
    records = []
    for ds in args.datasets:
        data = tuple(t.to(dev) for t in xl.load(ds))
        d = data[0].shape[1]
        for kind in args.models:
            fns, params = {}, {}
            for lib in args.libs:
                m = xl.build(lib, kind, d)
                if m is None:
                    continue
                params[lib] = m.params()
                raw = _device_ops(m, data, args.train_batches, args.eval_batches)
                fns[lib] = {op: synced(f) for op, f in raw.items()}
            fl = _device_floor(kind, d, args.train_batches, args.eval_batches, dev)
            if fl:
                fns["floor"] = {op: synced(f) for op, f in fl.items()}
            counted = {(lib, op): flops(f) for lib in ("flowforge", "floor") if lib in fns
                       for op, f in fns[lib].items()}  # fmt: skip
            t0 = time.perf_counter()
            res = xl.interleaved(fns, ops, args.rounds)
            for lib, cells in res.items():
                for (op, b), cell in cells.items():
                    rec = {"dataset": ds, "D": d, "model": kind, "library": lib, "op": op,
                           "batch": b, "params": params.get(lib), **cell}  # fmt: skip
                    rec.pop("cpu_s", None), rec.pop("cpu_ex_s", None), rec.pop("cpu_times_s", None)
                    f = counted.get((lib, (op, b)))
                    if f and "s" in cell:
                        rec["flops"] = f
                        rec["tflops"] = f / cell["s"] / 1e12
                        rec["fraction_of_fp32_peak"] = rec["tflops"] / peak["fp32_tflops"]
                    records.append(rec)
            line = "  ".join(
                f"{lib} {res[lib].get(('train', args.train_batches[-1]), {}).get('ex_s', 0):,.0f}"
                for lib in res
            )
            print(f"{ds:6s} D={d:<3d} {kind:7s} {time.perf_counter() - t0:4.0f} s; "
                  f"train@{args.train_batches[-1]:,}: {line}", flush=True)  # fmt: skip
    return records


# -- compiled -------------------------------------------------------------------------------------


def _own(fn):
    """``fn`` with a code object of its own: dynamo keeps its programs per code object."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)  # fmt: skip


def _loss_of(log_prob):
    return lambda x: -log_prob(x).mean()


def _score_of(log_prob):
    return lambda x: log_prob(x)


def part_compiled(args, dev, peak) -> list[dict]:
    """flowforge eager against ``torch.compile(mode="reduce-overhead")`` (inductor's fused
    kernels replayed as CUDA graphs: one launch per call instead of one per operation) and the
    eager floor, on the digits: a training step at ``--train-batches[1]`` and ``log_prob`` at
    ``--eval-batches[0]``, all timed in the same rounds. The compiled ``log_prob`` must agree
    with the eager one to 1e-3 nats, or the part stops. Inductor compiles in this process
    (``compile_threads = 1``): its pool of compiling processes, left running, would compete
    with the host thread that launches the kernels."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1
    data = tuple(t.to(dev) for t in xl.load("digits"))
    b, e = args.train_batches[min(1, len(args.train_batches) - 1)], args.eval_batches[0]
    g = torch.Generator().manual_seed(0)
    xb = data[0][torch.randint(0, len(data[0]), (b,), generator=g)]
    xe = data[0][torch.randint(0, len(data[0]), (e,), generator=g)]
    records = []
    for kind in args.compile_models:
        fns = {}
        eager = xl.build("flowforge", kind, 64)
        fns["flowforge"] = {op: synced(f) for op, f in _device_ops(eager, data, [b], [e]).items()
                            if op[0] != "sample"}  # fmt: skip
        m = xl.build("flowforge", kind, 64)
        m.module.to(dev).train()
        with torch.no_grad():
            m.log_prob(xb)  # (a data-dependent initialisation runs eagerly)
        opt = torch.optim.Adam(m.module.parameters(), lr=xl.LR)
        mode = "reduce-overhead"
        loss = torch.compile(_own(_loss_of(m.log_prob)), mode=mode, dynamic=False)
        score = torch.compile(_own(_score_of(m.log_prob)), mode=mode, dynamic=False)

        def step(loss=loss, opt=opt, m=m):
            torch.compiler.cudagraph_mark_step_begin()
            m.module.train()
            opt.zero_grad(set_to_none=True)
            loss(xb).backward()
            opt.step()

        @torch.no_grad()
        def lp(score=score, m=m):
            torch.compiler.cudagraph_mark_step_begin()
            m.module.eval()
            return score(xe)

        first = {}
        for name, f in (("train", step), ("log_prob", lp)):
            t0 = time.perf_counter()
            f()
            sync()
            first[name] = time.perf_counter() - t0
        with torch.no_grad():
            m.module.eval()
            diff = (lp().clone() - m.log_prob(xe)).abs().max().item()
        if not diff <= 1e-3:  # (a wrong program's speed is no result)
            raise SystemExit(f"compiled {kind}: log_prob differs from the eager one by {diff:.3g}")
        fns["flowforge+compile"] = {("train", b): synced(step), ("log_prob", e): synced(lp)}
        fl = _device_floor(kind, 64, [b], [e], dev)
        if fl:
            fns["floor"] = {op: synced(f) for op, f in fl.items() if op[0] != "sample"}
        res = xl.interleaved(fns, [("train", b), ("log_prob", e)], args.rounds)
        for lib, cells in res.items():
            for (op, bb), cell in cells.items():
                rec = {"dataset": "digits", "model": kind, "library": lib, "op": op,
                       "batch": bb, "s": cell["s"], "ex_s": cell["ex_s"],
                       "times_s": cell["times_s"]}  # fmt: skip
                if lib == "flowforge+compile":
                    rec["first_call_s"] = first[op]
                    rec["mode"] = mode
                    rec["log_prob_max_abs_diff"] = diff
                records.append(rec)
        print(f"compiled digits {kind}: " + "  ".join(
            f"{lib} {op}@{bb:,} {res[lib][op, bb]['ex_s']:,.0f}"
            for lib in res for op, bb in res[lib]) +
            f"; first calls {first['train']:.1f} s / {first['log_prob']:.1f} s, "
            f"|compiled - eager| {diff:.1e}", flush=True)  # fmt: skip
    return records


# -- images --------------------------------------------------------------------------------------

IMAGE_MODELS = {
    "glow-3x32x32": lambda: ff.models.Glow(
        shape=(3, 32, 32), scales=3, steps=8, hidden=256, levels=256
    ),  # fmt: skip
    "realnvp-3x32x32": lambda: ff.models.RealNVP(
        shape=(3, 32, 32), scales=3, hidden=64, levels=256
    ),  # fmt: skip
}


def part_images(args, dev, peak) -> list[dict]:
    records = []
    for name, make in IMAGE_MODELS.items():
        torch.manual_seed(0)
        flow = make()
        x0 = torch.randint(0, 256, (256, 3, 32, 32)).float()
        flow.train()
        with torch.no_grad():
            flow.log_prob(x0)  # ActNorm's initialisation
        flow.to(dev)
        params = sum(p.numel() for p in flow.parameters())
        opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
        fns = {"flowforge": {}, "floor": {}}
        for b in args.image_batches:
            x = torch.randint(0, 256, (b, 3, 32, 32), device=dev).float()

            def step(x=x, flow=flow, opt=opt):
                loss = -flow.log_prob(x).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            @torch.no_grad()
            def score(x=x, flow=flow):
                flow.log_prob(x)

            fns["flowforge"]["train", b] = synced(step)
            fns["flowforge"]["log_prob", b] = synced(score)
            floor = floor_fns(make().to(dev), b, b, 1e-4)
            if floor is not None:
                fns["floor"]["train", b] = synced(floor[0])
                fns["floor"]["log_prob", b] = synced(floor[1])
        if not fns["floor"]:
            del fns["floor"]
        ops = [(o, b) for b in args.image_batches for o in ("train", "log_prob")]
        counted = {(lib, op): flops(f) for lib in fns for op, f in fns[lib].items()}
        res = xl.interleaved(fns, ops, args.rounds)
        for lib, cells in res.items():
            for (op, b), cell in cells.items():
                rec = {"model": name, "library": lib, "op": op, "batch": b, "params": params,
                       "s": cell["s"], "images_s": cell["ex_s"],
                       "times_s": cell["times_s"]}  # fmt: skip
                f = counted[lib, (op, b)]
                rec["tflops"] = f / cell["s"] / 1e12
                # (cuDNN's convolutions run in TF32 unless torch.backends.cudnn.allow_tf32 is off)
                key = "tf32_tflops" if torch.backends.cudnn.allow_tf32 else "fp32_tflops"
                rec[f"fraction_of_{key[:4]}_peak"] = rec["tflops"] / peak[key]
                records.append(rec)
        print(f"{name}: " + "  ".join(
            f"{lib} {op}@{b} {res[lib][op, b]['ex_s']:,.0f} img/s"
            for lib in res for op, b in ops), flush=True)  # fmt: skip
        del flow, opt, fns
        torch.cuda.empty_cache()
    return records


# -- the workbench's trainer ---------------------------------------------------------------------


def part_trainer(args, dev) -> list[dict]:
    """``flowforge train`` (the demo's RealNVP on the digits images, as configs/demo.yaml, and
    the vector MAF) against a bare loop of the same model, batch and optimizer (AdamW with the
    Trainer's gradient clipping at 10, reading its loss each step). Two comparisons: a whole
    epoch (the Trainer's includes its validation pass), and one training step (the time between
    the Trainer's callbacks within an epoch, which follow its one read per step)."""
    import tempfile

    from flowforge.workbench.runner import train

    records = []
    for name, model, layout, batch in (
        ("realnvp-image", {"name": "realnvp", "hidden": 64, "actnorm": True}, "image", 256),
        ("maf", {"name": "maf", "layers": 4, "hidden": [128, 128]}, "vector", 256),
    ):
        if name not in args.trainer_models:
            continue
        cfg = {"seed": 0, "model": model, "data": "digits", "layout": layout,
               "train": {"epochs": args.trainer_epochs, "batch_size": batch, "lr": 1e-3,
                         "device": str(dev), "val_samples": 1}}  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            marks: list[tuple[int, float]] = []  # (step in its epoch, time) after each step

            def mark(trainer, marks=marks):
                marks.append((trainer.step_in_epoch, time.perf_counter()))

            t0 = time.perf_counter()
            r = train(cfg, out, progress=False, echo=False, callback=mark)
            wall = time.perf_counter() - t0
            epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            epochs = [e for e in epochs if e.get("type") == "epoch"]
            from flowforge.workbench.runs import load_run

            flow = load_run(out).to(dev)
        n_train = 1000  # (the digits' training split)
        steps_per_epoch = -(-n_train // batch)
        x = torch.randint(0, 17, (batch, *flow.event_shape), device=dev).float()
        opt = torch.optim.AdamW(flow.parameters(), lr=1e-3)
        flow.train()

        def step(flow=flow, opt=opt, x=x):
            loss = -flow.log_prob(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
            return loss

        for _ in range(5):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(10 * steps_per_epoch):
            step().item()  # (one read per step, as any loop that logs its loss)
        bare = (time.perf_counter() - t0) / 10
        epoch_s = statistics.median(e["time"] for e in epochs[1:] or epochs)
        steps = [b - a for (_, a), (k, b) in zip(marks, marks[1:]) if k > 1]  # (within epochs)
        step_s = statistics.median(steps) if steps else math.nan
        bare_step = bare / steps_per_epoch
        rec = {"model": name, "batch": batch, "status": r["status"], "epochs": len(epochs),
               "wall_s": wall, "epoch_s_median": epoch_s, "bare_epoch_s": bare,
               "trainer_over_bare": epoch_s / bare, "trainer_step_s": step_s,
               "bare_step_s": bare_step, "trainer_step_over_bare": step_s / bare_step,
               "val_nll_last": epochs[-1].get("val_nll")}  # fmt: skip
        records.append(rec)
        print(f"trainer {name}: epoch {epoch_s * 1e3:.0f} ms (train and validation), bare loop "
              f"{bare * 1e3:.0f} ms; a step {step_s * 1e3:.2f} ms, bare {bare_step * 1e3:.2f} ms; "
              f"{len(epochs)} epochs in {wall:.1f} s", flush=True)  # fmt: skip
    return records


# -- memory --------------------------------------------------------------------------------------


def part_memory(args, dev) -> list[dict]:
    import memory

    records = []
    for name in memory.MODELS:
        flow, x = memory._setup(name)
        flow.to(dev)
        x = x.to(dev)
        opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
        out = {"model": name, "batch": list(x.shape),
               "parameters": sum(p.numel() for p in flow.parameters())}  # fmt: skip
        times = {False: [], True: []}
        for i in range(args.rounds + 2):
            for saving in (False, True) if i % 2 else (True, False):  # (the order alternates)
                ff.memory_saving(flow, saving)
                opt.zero_grad(set_to_none=True)
                sync()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                t0 = time.perf_counter()
                (-flow.log_prob(x).mean()).backward()
                opt.step()  # (a whole training step, as the CPU table in docs/benchmarks.md)
                sync()
                dt = time.perf_counter() - t0
                key = "on" if saving else "off"
                out[f"peak_mb_{key}"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                if i >= 2:
                    times[saving].append(dt)
        out["step_s_off"] = statistics.median(times[False])
        out["step_s_on"] = statistics.median(times[True])
        out["memory_ratio"] = out["peak_mb_off"] / out["peak_mb_on"]
        out["time_ratio"] = out["step_s_on"] / out["step_s_off"]
        records.append(out)
        print(f"memory {name}: peak {out['peak_mb_off']:,.0f} -> {out['peak_mb_on']:,.0f} MiB "
              f"({out['memory_ratio']:.1f}x lower), step "
              f"{out['step_s_off'] * 1e3:.1f} -> {out['step_s_on'] * 1e3:.1f} ms "
              f"({out['time_ratio']:.2f}x)", flush=True)  # fmt: skip
        del flow, opt, x
        torch.cuda.empty_cache()
    return records


# -- tables ---------------------------------------------------------------------------------------


def _f(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _throughput_lines(recs: list[dict], peak: dict) -> list[str]:
    by: dict = {}
    for r in recs:
        by.setdefault((r["dataset"], r["model"], r["op"], r["batch"]), {})[r["library"]] = r
    lines = [
        _row("data", "model", "op", "batch", "flowforge ex/s", "/ floor", "fastest peer",
             "flowforge / it", "TFLOP/s (share of fp32 peak)"),
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]  # fmt: skip
    for (ds, kind, op, b), libs in by.items():
        mine = libs.get("flowforge", {}).get("ex_s")
        if mine is None:
            continue
        fl = libs.get("floor", {}).get("ex_s")
        # (normflows' MAF is an IAF in effect: one pass to sample, D to score; left out)
        peers = {k: v["ex_s"] for k, v in libs.items()
                 if k not in ("flowforge", "floor") and "ex_s" in v
                 and not (k == "normflows" and kind == "maf")}  # fmt: skip
        best = max(peers, key=peers.get) if peers else None
        tf = libs["flowforge"].get("tflops")
        lines.append(_row(
            ds, kind, op, f"{b:,}", f"{mine:,.0f}", _f(fl and mine / fl, ".2f"),
            f"{best} ({peers[best]:,.0f})" if best else "n/a",
            _f(best and mine / peers[best], ".2f") + ("x" if best else ""),
            f"{tf:.2f} ({tf / peak['fp32_tflops']:.3f})" if tf else "n/a",
        ))  # fmt: skip
    return lines


def _compiled_lines(comp: list[dict]) -> list[str]:
    lines = [
        _row("model", "op", "batch", "eager ex/s", "compiled ex/s", "eager floor ex/s",
             "compiled / floor", "compiled / eager", "first call", "max abs diff"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    by: dict = {}
    for rec in comp:
        by.setdefault((rec["model"], rec["op"], rec["batch"]), {})[rec["library"]] = rec
    for (kind, op, b), libs in by.items():
        c, e = libs["flowforge+compile"]["ex_s"], libs["flowforge"]["ex_s"]
        fl = libs.get("floor", {}).get("ex_s")
        lines.append(_row(
            kind, op, f"{b:,}", f"{e:,.0f}", f"{c:,.0f}", _f(fl, ",.0f"),
            _f(fl and c / fl, ".2f"), f"{c / e:.2f}",
            f"{libs['flowforge+compile']['first_call_s']:.1f} s",
            f"{libs['flowforge+compile']['log_prob_max_abs_diff']:.1e}",
        ))  # fmt: skip
    return lines


def _image_lines(recs: list[dict], peak: dict) -> list[str]:
    lines = [
        _row("model", "parameters", "op", "batch", "flowforge images/s", "floor images/s",
             "/ floor", "TFLOP/s (share of the TF32 peak)"),
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    im = {(x["model"], x["library"], x["op"], x["batch"]): x for x in recs}
    for (m, lib, op, b), x in im.items():
        if lib != "flowforge":
            continue
        fl = im.get((m, "floor", op, b), {}).get("images_s")
        lines.append(_row(
            m, f"{x['params']:,}", op, b, f"{x['images_s']:,.0f}", _f(fl, ",.0f"),
            _f(fl and x["images_s"] / fl, ".2f"),
            f"{x['tflops']:.1f} ({x['tflops'] / peak['tf32_tflops']:.3f})",
        ))  # fmt: skip
    return lines


def _peak(r: dict) -> dict:
    """A result file's own measured peak (NaN where it measured none: shares read nan)."""
    k = r.get("peak") or {}
    if isinstance(k.get("tf32_tflops"), float):
        return k
    return {"fp32_tflops": math.nan, "tf32_tflops": math.nan}


def render(paths: list[Path]) -> str:
    """Markdown tables of result files: each part from every file that has it."""
    runs = [(p, json.loads(p.read_text())) for p in paths]
    head = runs[0][1]
    v = head["versions"]
    mine = ("torch", "python", "flowforge", "flowforge_commit")
    peers = ", ".join(f"{k} {x}" for k, x in v.items() if k not in mine)
    out = [
        f"# flowforge on {head['device']}",
        "",
        f"flowforge at {v.get('flowforge_commit', 'an unrecorded commit')}; torch {v['torch']}; "
        f"peers: {peers}. Written by `python benchmarks/device.py --render "
        + " ".join(p.name for p in paths)
        + "` (in benchmarks/results); the method is in docs/benchmarks.md, On a GPU.",
        "",
    ]
    for p, r in runs:
        k = _peak(r)
        if math.isfinite(k["tf32_tflops"]):
            out.append(
                f"- `{p.name}`: measured peak {k['fp32_tflops']:.1f} TFLOP/s float32, "
                f"{k['tf32_tflops']:.1f} TF32, device-to-device copy {k['copy_tb_s']:.2f} TB/s"
            )
    for p, r in runs:
        if r.get("throughput"):
            title = f"## Throughput (`{p.name}`, {r['args']['rounds']} rounds, interleaved)"
            out += ["", title, "", *_throughput_lines(r["throughput"], _peak(r))]
    comp = [rec for _, r in runs for rec in r.get("compiled", [])]
    if comp:
        out += ["", "## Compiled: inductor kernels replayed as CUDA graphs", ""]
        out += _compiled_lines(comp)
    for p, r in runs:
        if r.get("images"):
            title = f"## Images, 3x32x32 (`{p.name}`)"
            out += ["", title, "", *_image_lines(r["images"], _peak(r))]
        if r.get("trainer"):
            out += ["", f"## The workbench's Trainer (`{p.name}`)", ""]
            out += [_row("model", "batch", "Trainer epoch (training and validation)",
                         "bare loop (training steps only)", "ratio", "Trainer step",
                         "bare step", "ratio"),
                    "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for x in r["trainer"]:
                step = x.get("trainer_step_s")  # (runs before the step timing: n/a)
                out.append(_row(x["model"], x["batch"], f"{x['epoch_s_median'] * 1e3:.0f} ms",
                                f"{x['bare_epoch_s'] * 1e3:.0f} ms",
                                f"{x['trainer_over_bare']:.2f}",
                                _f(step and step * 1e3, ".2f") + (" ms" if step else ""),
                                _f(step and x["bare_step_s"] * 1e3, ".2f")
                                + (" ms" if step else ""),
                                _f(step and x["trainer_step_over_bare"], ".2f")))  # fmt: skip
        if r.get("memory"):
            out += ["", f"## Memory-saving backpropagation (`{p.name}`)", ""]
            out += [_row("model", "batch", "peak allocated, off", "on", "lower by",
                         "forward and backward, off", "on", "time ratio"),
                    "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for x in r["memory"]:
                out.append(_row(
                    x["model"], "x".join(map(str, x["batch"])), f"{x['peak_mb_off']:.0f} MiB",
                    f"{x['peak_mb_on']:.0f} MiB", f"{x['memory_ratio']:.1f}x",
                    f"{x['step_s_off'] * 1e3:.1f} ms", f"{x['step_s_on'] * 1e3:.1f} ms",
                    f"{x['time_ratio']:.2f}x",
                ))  # fmt: skip
    return "\n".join(out) + "\n"


def _finite(v):
    """``v`` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--render", type=Path, nargs="+", help="print the tables of result files")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--parts", default="peak,throughput,images,trainer,memory")
    ap.add_argument("--datasets", default="digits,moons")
    ap.add_argument("--models", default="maf,realnvp,nsf-c,nsf-ar")
    ap.add_argument("--compile-models", default="maf,realnvp,nsf-c")
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--train-batches", type=_ints, default=[256, 1024, 8192])
    ap.add_argument("--eval-batches", type=_ints, default=[10_000, 100_000])
    ap.add_argument("--image-batches", type=_ints, default=[64, 256])
    ap.add_argument("--trainer-epochs", type=int, default=6)
    ap.add_argument("--trainer-models", default="realnvp-image,maf")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if args.render:
        print(render(args.render), end="")
        return
    if args.out is None:
        ap.error("--out is required (or --render FILES)")
    for k in ("parts", "datasets", "models", "libs", "compile_models", "trainer_models"):
        setattr(args, k, getattr(args, k).split(","))
    dev = torch.device(args.device)
    _CUDA[0] = dev.type == "cuda"
    if _CUDA[0] and not torch.cuda.is_available():
        raise SystemExit("benchmarks/device.py: no CUDA device here (--device cpu checks the code)")
    if not _CUDA[0]:  # (its peak is not measured and its memory not counted)
        args.parts = [p for p in args.parts if p not in ("peak", "memory")]
    torch.backends.cuda.matmul.allow_tf32 = False  # (torch's default: float32 as written)
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:  # (the package's version says nothing of an uncommitted tree)
        git = ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"]
        versions["flowforge_commit"] = subprocess.run(
            git, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        versions["flowforge_commit"] = "unknown"
    for lib in args.libs:
        try:
            __import__(lib)
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "unknown"
        except Exception as e:  # noqa: BLE001 - a peer that does not import is left out
            versions[lib] = f"not available: {type(e).__name__}: {e}"
    name = torch.cuda.get_device_name(dev) if _CUDA[0] else platform.processor() or "cpu"
    out = {"device": name, "versions": versions,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "args": {k: v for k, v in vars(args).items() if k != "out"}}  # fmt: skip
    out["args"]["libs"] = [lib for lib in args.libs if "not available" not in str(versions[lib])]
    args.libs = out["args"]["libs"]
    print(f"{out['device']}; torch {torch.__version__}; libraries {args.libs}", flush=True)

    def save():
        args.out.write_text(json.dumps(_finite(out), indent=1, default=str) + "\n")

    none = {"fp32_tflops": math.nan, "tf32_tflops": math.nan}  # (not measured: shares read nan)
    peak = part_peak(dev) if "peak" in args.parts else none
    out["peak"] = peak
    for part, fn in (("throughput", lambda: part_throughput(args, dev, peak)),
                     ("compiled", lambda: part_compiled(args, dev, peak)),
                     ("images", lambda: part_images(args, dev, peak)),
                     ("trainer", lambda: part_trainer(args, dev)),
                     ("memory", lambda: part_memory(args, dev))):  # fmt: skip
        if part in args.parts:
            t0 = time.perf_counter()
            out[part] = fn()
            out[f"{part}_s"] = time.perf_counter() - t0
            save()
    save()


if __name__ == "__main__":
    main()
