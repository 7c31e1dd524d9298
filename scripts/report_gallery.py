"""Figures of each kind of ``flowforge report`` for docs/reports.md.

It trains one small run of each kind, writes its report, and copies the report's own PNG
figures into ``docs/img/reports/<kind>-<figure>.png``; with ``--screenshot`` it also takes a
full-page screenshot of each ``report.html`` in a headless Chromium
(``docs/img/reports/<kind>-page.png``) through ``scripts/screenshot/shot.mjs`` (puppeteer-core;
the browser is ``$CHROMIUM`` or the one the npm package ``@sparticuz/chromium`` unpacks:
``make screenshots`` installs both from the npm registry and runs this script).

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
    # its own noise: 100 + 10 (a + e) alone is a linear function of two other columns, which
    # training refuses (a density on a hyperplane is degenerate)
    f = 100 + 10 * (a + e) + 3 * rng.normal(size=n)
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


SHOT = Path(__file__).resolve().parent / "screenshot"


def browser_available() -> bool:
    """Whether :func:`screenshot` can run: node, and puppeteer-core installed next to shot.mjs
    (``npm install --prefix scripts/screenshot``)."""
    return shutil.which("node") is not None and (SHOT / "node_modules" / "puppeteer-core").is_dir()


def screenshot(html: Path, png: Path) -> None:
    """A full-page screenshot of ``html`` in a headless Chromium; an error if any figure of the
    page fails to load."""
    if not browser_available():
        raise SystemExit(
            "no headless browser: run `npm install --prefix scripts/screenshot` (node and npm "
            "needed), or `make screenshots`"
        )
    subprocess.run(["node", str(SHOT / "shot.mjs"), str(html), str(png)], check=True)


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
        if a.screenshot:
            screenshot(out / "report.html", DOCS / f"{kind}-page.png")
        print(f"{kind}: {out / 'report.html'}")


if __name__ == "__main__":
    main()
