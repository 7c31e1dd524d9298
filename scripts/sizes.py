"""Parameter counts of the workbench's models with and without the sizing rule (docs/defaults.md).

python scripts/sizes.py [CSV]      # CSV: a table to size for (default: none)
"""

from __future__ import annotations

import sys

from flowforge.workbench.build import build_flow
from flowforge.workbench.config import resolve_config
from flowforge.workbench.data import load_dataset

CASES = [("realnvp", "moons"), ("nsf", "moons"), ("maf", "moons"), ("glow", "digits"),
         ("realnvp", "digits")]  # fmt: skip


def main(argv):
    cases = CASES + [(m, argv[0]) for m in ("realnvp", "nsf")] if argv else CASES
    print("| model | data | n train | sized: arguments | parameters | builder defaults |")
    print("|---|---|---:|---|---:|---:|")
    for model, data in cases:
        ds = load_dataset(data)
        cfg = resolve_config(None, {"model": model, "data": {"name": data}})
        _, _, sized = build_flow(cfg, ds)
        args = (sized["sizing"] or {}).get("arguments", {})
        # the builder's defaults: give the sized arguments their default values back
        _, _, plain = build_flow(cfg, ds, stored={"flow_config": None})
        n = sized["examples"]["train"]
        print(f"| {model} | {data} | {n} | {args} | {sized['parameters']:,} | "
              f"{plain['parameters']:,} |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
