"""Parameter counts of the workbench's models with and without the sizing rule (docs/defaults.md).

python scripts/sizes.py [CSV]   # CSV: the table to size for (default: the 6-column table that
                                # scripts/report_gallery.py writes, made in a temporary folder)

Prints the table of docs/defaults.md as it stands there.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from flowforge.workbench.build import build_flow
from flowforge.workbench.config import resolve_config
from flowforge.workbench.data import load_dataset

CASES = [("realnvp", "moons"), ("nsf", "moons"), ("maf", "moons"), ("glow", "digits"),
         ("realnvp", "digits")]  # fmt: skip


def rows(csv: Path | None):
    cases = CASES + [(m, str(csv)) for m in ("realnvp", "nsf")] if csv else CASES
    for model, data in cases:
        ds = load_dataset(data)
        cfg = resolve_config(None, {"model": model, "data": {"name": data}})
        _, _, sized = build_flow(cfg, ds)
        args = (sized["sizing"] or {}).get("arguments", {})
        # the builder's defaults: give the sized arguments their default values back
        _, _, plain = build_flow(cfg, ds, stored={"flow_config": None})
        image = sized["layout"] == "image" and model != "glow"
        what = f"{ds.train.shape[1]}-column CSV" if data.endswith(".csv") else data
        words = ", ".join(f"{k}={v}" for k, v in args.items()) or "(none: the defaults fit)"
        yield (f"{model} (image)" if image else model, what, sized["examples"]["train"], words,
               f"{sized['parameters']:,}", f"{plain['parameters']:,}")  # fmt: skip


def main(argv):
    print("| model | data | n train | sized arguments | parameters | builder defaults |")
    print("|---|---|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        if argv:
            csv = Path(argv[0])
        else:  # the gallery's table, as report_gallery.py writes it
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from report_gallery import make_table

            csv = Path(tmp) / "mix6.csv"
            make_table(csv)
        for row in rows(csv):
            print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", nargs="?", help="the table to size for (default: the gallery's)")
    a = p.parse_args()
    main([a.csv] if a.csv else [])
