"""Operations per call: what a GPU launches, counted on the CPU.

On a GPU at the benchmark's sizes a call costs about one kernel launch per tensor operation,
whatever the arithmetic (``device.py``: 0.001-0.06 of the peak). This counts the operations
each library's model dispatches (``TorchDispatchMode``; views, which launch nothing, are left
out) for ``log_prob`` without grad, a training step's forward and backward, and sampling, on
the digits (D = 64, the cross-library architecture: 4 layers of width 128), with the floor's
conditioners alone for comparison.

    python benchmarks/op_count.py --out benchmarks/results/op_count.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
import cross_library as xl  # noqa: E402
from floor import floor_fns  # noqa: E402

# aten operations that make a view or an alias (no kernel on a device)
VIEWS = {
    "_reshape_alias", "_unsafe_view", "alias", "as_strided", "chunk", "detach", "expand",
    "flatten", "lift_fresh", "narrow", "permute", "reshape", "select", "slice", "split",
    "split_with_sizes", "squeeze", "t", "transpose", "unbind", "unflatten", "unsqueeze", "view",
}  # fmt: skip


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def counted(fn) -> dict:
    with Count() as c:
        fn()
    return {"total": sum(c.ops.values()), "ops": dict(sorted(c.ops.items()))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="maf,realnvp,nsf-c,nsf-ar")
    ap.add_argument("--libs", default="flowforge,zuko,nflows,normflows,FrEIA")
    args = ap.parse_args(argv)
    x = xl.load("digits")[0][:256]
    out = {"batch": 256, "dataset": "digits", "records": []}
    for kind in args.models.split(","):
        for lib in args.libs.split(","):
            try:
                m = xl.build(lib, kind, 64)
            except ImportError:
                m = None
            if m is None:
                continue
            m.module.train()
            m.log_prob(x)  # (data-dependent initialisation, not counted)
            m.module.eval()
            with torch.no_grad():
                lp = counted(lambda m=m: m.log_prob(x))
                smp = counted(lambda m=m: m.sample(256))
            m.module.train()
            tr = counted(lambda m=m: (-m.log_prob(x).mean()).backward())
            rec = {"model": kind, "library": lib, "log_prob": lp, "train": tr, "sample": smp}
            out["records"].append(rec)
            print(f"{kind:7s} {lib:10s} log_prob {lp['total']:5d}  train {tr['total']:5d}  "
                  f"sample {smp['total']:6d}")  # fmt: skip
        torch.manual_seed(0)
        floor = floor_fns(xl.build("flowforge", kind, 64).module, 256, 256)
        if floor is not None:
            with torch.no_grad():
                lp = counted(floor[1])
            rec = {"model": kind, "library": "floor", "log_prob": lp}
            out["records"].append(rec)
            print(f"{kind:7s} {'floor':10s} log_prob {lp['total']:5d}")
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
