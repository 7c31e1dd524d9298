"""In-place activations against the modules' own out-of-place calls, on the same model.

``MLP`` and ``MADE`` apply ReLU in place to each linear layer's fresh output when no hook
watches them (``flowforge.nets.apply_to_fresh``). A no-op forward hook on every MLP's
``Sequential`` and every MADE's ``act`` turns that off, so one model can be timed both ways in
one process, interleaved: training steps (Adam) at batch 256 and 1,024 and ``log_prob`` of
1,024 and 10,000 rows, for the benchmark's digits models (``peers.py``: 4 layers, two hidden
layers of 128). The two paths give the same numbers bit for bit (checked here on every model
before timing, and in ``tests/test_in_place_activations.py``).

    OMP_NUM_THREADS=1 python benchmarks/in_place.py --out benchmarks/results/in_place.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from peers import LIBRARIES  # noqa: E402
from run import digits  # noqa: E402

from flowforge.nets import MADE, MLP  # noqa: E402

OPS = [("train", 256), ("train", 1024), ("log_prob", 1024), ("log_prob", 10_000)]


def out_of_place(module: torch.nn.Module) -> list:
    """Hooks that make every MLP and MADE in ``module`` call its modules as they are."""
    handles = []
    for m in module.modules():
        if isinstance(m, MLP):
            handles.append(m.net.register_forward_hook(lambda *a: None))
        elif isinstance(m, MADE):
            handles.append(m.act.register_forward_hook(lambda *a: None))
    return handles


def timed(fn, min_time: float) -> float:
    """Wall-clock seconds per call, calls repeated for ``min_time`` seconds."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def measure(kind: str, op: str, batch: int, train, rounds: int, min_time: float) -> dict:
    torch.manual_seed(0)
    model = LIBRARIES["flowforge"](kind, train.shape[1], 4, 128, 8)
    flow = model.module
    flow.train()
    model.log_prob(train[:2000])  # the data-initialised layer, as in cross_library.py
    x = train[torch.randint(0, len(train), (batch,), generator=torch.Generator().manual_seed(0))]
    if op == "train":
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)

        def fn():
            loss = -model.log_prob(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        flow.eval()

        @torch.no_grad()
        def fn():
            model.log_prob(x)

        with torch.no_grad():  # the same bits both ways
            fast = model.log_prob(x)
            hooks = out_of_place(flow)
            plain = model.log_prob(x)
            for h in hooks:
                h.remove()
            if not torch.equal(fast, plain):
                raise AssertionError(f"{kind}: the two paths differ")
    times = {"in_place": [], "out_of_place": []}
    for r in range(rounds):
        for path in ("in_place", "out_of_place") if r % 2 else ("out_of_place", "in_place"):
            hooks = out_of_place(flow) if path == "out_of_place" else []
            fn()  # a warm call after the switch
            times[path].append(timed(fn, min_time))
            for h in hooks:
                h.remove()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": kind,
        "op": op,
        "batch": batch,
        "in_place_s": med["in_place"],
        "out_of_place_s": med["out_of_place"],
        "speedup": med["out_of_place"] / med["in_place"],
        "rounds": rounds,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="maf,realnvp,nsf-ar,nsf-c")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.1, help="seconds per timing")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    train = digits()[0]
    rows = []
    for kind in args.models.split(","):
        for op, batch in OPS:
            row = measure(kind, op, batch, train, args.rounds, args.min_time)
            rows.append(row)
            print(
                f"{kind:8s} {op:8s} {batch:6d}  in place {row['in_place_s'] * 1e3:8.2f} ms  "
                f"out of place {row['out_of_place_s'] * 1e3:8.2f} ms  {row['speedup']:.3f}x",
                flush=True,
            )
    if args.out:
        info = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d"),
        }
        args.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
