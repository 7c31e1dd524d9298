"""Memory-saving backpropagation (ff.memory_saving) against ordinary backpropagation.

For a 32-step Glow on 3x32x32 images and a 16-layer RealNVP on 64-D vectors, each run in a
fresh process: the bytes autograd keeps for the backward pass (every tensor saved by a forward
op, counted with torch.autograd.graph.saved_tensors_hooks), the process's peak resident memory
over one training step (each in a fresh process), and the step time with memory saving off
and on, interleaved round by round in one process (median over ``--rounds``).

    python benchmarks/memory.py --out benchmarks/results/memory.json

Writes the table to stdout and the records to --out.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODELS = {
    "glow-32": dict(
        build=("glow", dict(shape=(3, 32, 32), scales=2, steps=16, hidden=64, levels=256)),
        batch=(32, 3, 32, 32),
        discrete=True,
    ),
    "realnvp-16": dict(
        build=("realnvp", dict(features=64, layers=16, hidden=[256, 256])),
        batch=(1024, 64),
        discrete=False,
    ),
}


def _setup(name: str):
    """The model ``name`` (seeded, data-initialised, in training mode) and its batch."""
    import torch

    import flowforge as ff

    torch.manual_seed(0)
    spec = MODELS[name]
    model, kwargs = spec["build"]
    flow = ff.models.build(model, **kwargs)
    shape = spec["batch"]
    x = torch.randint(0, 256, shape).float() if spec["discrete"] else torch.randn(shape)
    flow.train()
    with torch.no_grad():
        flow.log_prob(x)  # ActNorm's initialisation
    return flow, x


def one(name: str, saving: bool, steps: int) -> dict:
    import torch

    import flowforge as ff

    flow, x = _setup(name)
    shape = MODELS[name]["batch"]
    if saving:
        ff.memory_saving(flow)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 1):
        saved[0] = 0
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = -flow.log_prob(x).mean()
        kept = saved[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model": name,
        "memory_saving": saving,
        "parameters": sum(p.numel() for p in flow.parameters()),
        "batch": list(shape),
        "saved_for_backward_mb": kept / 2**20,
        "peak_rss_mb": peak / 1024,
        "peak_rss_growth_mb": (peak - base_rss) / 1024,
        "step_s": statistics.median(times),
        "threads": torch.get_num_threads(),
    }


def timing(name: str, rounds: int) -> dict:
    """Step times with memory saving off and on, interleaved in one process (the same model,
    switched between rounds), so that a shared machine's load weighs on both alike."""
    import torch

    import flowforge as ff

    flow, x = _setup(name)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    times = {False: [], True: []}
    for i in range(rounds + 1):
        for saving in (False, True):
            ff.memory_saving(flow, saving)
            t0 = time.perf_counter()
            loss = -flow.log_prob(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:
                times[saving].append(time.perf_counter() - t0)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return {"model": name, "rounds": rounds, "step_off_s": off, "step_on_s": on,
            "ratio": on / off, "threads": torch.get_num_threads()}  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: NAME SAVING
    p.add_argument("--timing", help=argparse.SUPPRESS)  # internal: NAME
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1] == "1", args.steps)))
        return
    if args.timing:
        print(json.dumps(timing(args.timing, args.rounds)))
        return
    records = []
    for name in MODELS:
        for saving in (False, True):
            cmd = [sys.executable, __file__, "--one", name, str(int(saving)), "--steps",
                   str(args.steps)]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            records.append(json.loads(r.stdout.strip().splitlines()[-1]))
    timings = {}
    for name in MODELS:
        cmd = [sys.executable, __file__, "--timing", name, "--rounds", str(args.rounds)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        timings[name] = json.loads(r.stdout.strip().splitlines()[-1])
    records.extend(timings.values())
    print("| model | memory saving | saved for backward (MB) | peak RSS (MB) | growth over the "
          "step (MB) | step (s), interleaved |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for r in records:
        if "memory_saving" not in r:
            continue
        step = timings[r["model"]]["step_on_s" if r["memory_saving"] else "step_off_s"]
        print(f"| {r['model']} ({r['parameters']:,} params, batch {r['batch'][0]}) | "
              f"{'on' if r['memory_saving'] else 'off'} | {r['saved_for_backward_mb']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_growth_mb']:.0f} | {step:.3f} |")  # fmt: skip
    for name in MODELS:
        off, on = (r for r in records if r.get("model") == name and "memory_saving" in r)
        kept = off["saved_for_backward_mb"] / on["saved_for_backward_mb"]
        print(f"{name}: saved-for-backward {kept:.1f}x smaller, peak RSS "
              f"{off['peak_rss_mb'] / on['peak_rss_mb']:.2f}x smaller, growth over the step "
              f"{off['peak_rss_growth_mb'] / on['peak_rss_growth_mb']:.2f}x smaller, "
              f"step time {timings[name]['ratio']:.2f}x (interleaved, median of "
              f"{args.rounds})")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
