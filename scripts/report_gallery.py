"""Figures of each kind of ``flowforge report`` for docs/reports.md.

No headless browser is installed on the machine these docs were made on (checked:
``which chromium chromium-browser google-chrome firefox`` finds none), so instead of page
screenshots this script trains one small run of each kind, writes its report, and copies the
report's own PNG figures into ``docs/img/reports/<kind>-<figure>.png``; with ``--screenshot``
and a Chromium on the PATH it also takes a full-page screenshot of each ``report.html``.

    python scripts/report_gallery.py                   # runs under /tmp/ff-gallery
    python scripts/report_gallery.py --screenshot      # plus docs/img/reports/<kind>-page.png

Kinds: ``table`` (a 6-column CSV made here: a 3-component mixture with sin, product and
exponential columns and one on a scale of about 100), ``conditional-table`` (the same CSV,
columns 0 and 1 given the others), ``toy`` (moons) and ``conditional-image`` (class-conditional
Glow on digits).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from flowforge.workbench.cli import main as flowforge

DOCS = Path(__file__).resolve().parent.parent / "docs" / "img" / "reports"


def make_table(path: Path, n: int = 3000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, n)
    a = rng.normal(2.0 * k, 0.5)
    b = np.sin(a) + 0.1 * rng.normal(size=n)
    c = a * b + 0.2 * rng.normal(size=n)
    d = np.exp(0.3 * rng.normal(size=n))
    e = rng.normal(size=n)
    f = 100 + 10 * (a + e)
    rows = np.stack([a, b, c, d, e, f], 1)
    text = "alpha,beta,gamma,delta,eps,big\n"
    text += "\n".join(",".join(f"{v:.6g}" for v in r) for r in rows) + "\n"
    path.write_text(text)


def runs(root: Path) -> dict[str, list[str]]:
    csv = root / "mix6.csv"
    make_table(csv)
    common = ["--no-progress", "--quiet", "--seed", "0"]
    return {
        "table": ["--model", "nsf", "--data", str(csv), "--epochs", "15", *common],
        "conditional-table": [
            "--model",
            "nsf",
            "--data",
            str(csv),
            "--target-columns",
            "0,1",
            "--epochs",
            "15",
            *common,
        ],  # fmt: skip
        "toy": ["--model", "realnvp", "--data", "moons", "--epochs", "10", *common],
        "conditional-image": [
            "--model",
            "glow",
            "--data",
            "digits",
            "--conditional",
            "label",
            "--epochs",
            "10",
            *common,
        ],  # fmt: skip
    }


def screenshot(html: Path, png: Path) -> bool:
    for exe in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(exe):
            subprocess.run([exe, "--headless", "--no-sandbox", "--window-size=1200,3000",
                            f"--screenshot={png}", html.as_uri()], check=True)  # fmt: skip
            return True
    return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/ff-gallery"))
    p.add_argument("--kinds", default="table,conditional-table,toy,conditional-image")
    p.add_argument("--screenshot", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    a.root.mkdir(parents=True, exist_ok=True)
    DOCS.mkdir(parents=True, exist_ok=True)
    todo = runs(a.root)
    for kind in a.kinds.split(","):
        out = a.root / kind
        rc = flowforge(["train", "--out", str(out), "--overwrite", *todo[kind]])
        if rc != 0:
            raise SystemExit(f"training {kind} failed")
        if flowforge(["report", str(out)]) != 0:
            raise SystemExit(f"report of {kind} failed")
        for fig in sorted((out / "report").glob("*.png")):
            shutil.copyfile(fig, DOCS / f"{kind}-{fig.name}")
        if a.screenshot and not screenshot(out / "report.html", DOCS / f"{kind}-page.png"):
            print("no headless Chromium found: figures only")
        print(f"{kind}: {out / 'report.html'}")


if __name__ == "__main__":
    main()
