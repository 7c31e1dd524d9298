"""The flow-matching step with ODENet's regression pass against the same step through its
modules (docs/flowmatching.md, "Step cost", *The regression pass*).

FFJORD's network (the ``cnf`` builder, 64x64x64) with tanh and with silu, batch 512, fused Adam,
one thread; the module path is forced by a forward hook on the activation (a hooked network
takes the modules). Interleaved rounds of 100 steps in one process; medians in ms per step.

    OMP_NUM_THREADS=1 python benchmarks/regression_pass.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge.matching import FlowMatching

ROOT = Path(__file__).resolve().parents[1]


def step_fn(activation: str, fused: bool, x: torch.Tensor, batch: int):
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, activation=activation)
    fm = FlowMatching()
    with torch.no_grad():
        fm(flow, x)  # the data-dependent initialisation
    if not fused:
        flow.transform.layers[-1].net.act.register_forward_hook(lambda *a: None)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)

    def step():
        loss = fm(flow, x[torch.randint(0, len(x), (batch,), generator=g)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=100, help="steps per round")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/regression_pass.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
    fns = {
        f"{act}_{'pass' if fused else 'modules'}": step_fn(act, fused, x, a.batch)
        for act in ("tanh", "silu")
        for fused in (False, True)
    }
    times: dict = {k: [] for k in fns}
    for r in range(a.rounds + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                fn()
            if r:  # round 0 warms up
                times[k].append(1e3 * (time.perf_counter() - t0) / a.steps)
    res = {"args": vars(a), "torch": torch.__version__}
    res["ms_per_step"] = {k: statistics.median(v) for k, v in times.items()}
    for act in ("tanh", "silu"):
        m = res["ms_per_step"]
        res[f"{act}_saving"] = 1 - m[f"{act}_pass"] / m[f"{act}_modules"]
        print(f"{act}: modules {m[f'{act}_modules']:.3f} ms, regression pass "
              f"{m[f'{act}_pass']:.3f} ms ({100 * res[f'{act}_saving']:.0f}% less)")  # fmt: skip
    if a.out != "-":
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
