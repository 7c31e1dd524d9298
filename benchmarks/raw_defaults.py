"""Library defaults on raw (unstandardised) 2-D data: the gap to the true entropy.

``ff.models.NSF(features=2)``, ``MAF(features=2)`` and ``RealNVP(features=2)``, each with its
defaults, trained by one plain loop (the loop a library user writes: Adam, fresh samples every
step, no standardisation) on the workbench's 8-gaussians and checkerboard generators at two
scales: ``--scale 2`` (about +-4: 8 Gaussians of sd 0.3 on a circle of radius 4, a checkerboard
on [-4, 4]^2) and ``--scale 1`` (the workbench's own toys, about +-2).

The oracle is each generator's exact density (``flowforge.workbench.toy_density``): for data
``x = s * y``, ``log p(x) = log p_toy(x / s) - 2 log s``. The gap is the model's test NLL minus
the oracle's NLL on the same 20,000 test points (nats; 0 is perfect, up to sampling noise).
The test points are one fixed draw (``default_rng(12345)``); ``--split val`` scores on a
validation draw of the same size from another fixed seed (``default_rng(54321)``) instead, for
choosing between configurations without looking at the test draw. Each row records its
``split``; on ``val`` the model's NLL is stored as ``val_nll`` (``test_nll`` on ``test``).

    python benchmarks/raw_defaults.py                        # every model, toy and scale
    python benchmarks/raw_defaults.py --models nsf --toys checkerboard --scale 2
    python benchmarks/raw_defaults.py --variant legacy       # the defaults before issue 17
    python benchmarks/raw_defaults.py --split val --models maf --scale 2   # validation draw

``--kwargs '{"layers": 10}'`` passes builder arguments (the experiments behind a default).
``--library zuko`` runs the same loop on zuko's flows with zuko's defaults (the bench extra).
``--variant`` (for the measurement in docs/defaults.md):
    default: today's defaults;
    legacy: ``standardize=False`` (the defaults before issue 17: no data-initialised layer);
    bound5 / bound8: legacy with a spline bound of 5 / 8 (NSF only).

Results are appended (one JSON object per line) to ``--out``
(default ``benchmarks/results/raw_defaults.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import flowforge as ff
from flowforge.workbench import toy_density
from flowforge.workbench.data import TOYS

RESULTS = Path(__file__).parent / "results"

# The held-out draws: a fixed seed and size per split. ``test`` is the draw every row before
# ``--split`` existed was scored on; ``val`` is for choosing configurations.
SPLITS = {"test": 12345, "val": 54321}
HELD_OUT = 20000


def build(model: str, variant: str, extra: dict | None = None):
    kwargs = dict(extra or {})
    if variant != "default":
        kwargs["standardize"] = False
    if variant in ("bound5", "bound8"):
        if model != "nsf":
            raise ValueError(f"--variant {variant} is for NSF only")
        kwargs["bound"] = float(variant[5:])
    return ff.models.build(model, features=2, **kwargs)


class _Zuko(torch.nn.Module):
    """A zuko flow (``zuko.flows.<MODEL>(2)``, its defaults) with flowforge's ``log_prob``."""

    NAMES = {"nsf": "NSF", "maf": "MAF", "realnvp": "RealNVP"}

    def __init__(self, model: str, extra: dict | None):
        super().__init__()
        import zuko

        self.flow = getattr(zuko.flows, self.NAMES[model])(2, **(extra or {}))

    def log_prob(self, x):
        return self.flow().log_prob(x)


def run(
    model, toy, scale, variant, steps, batch, lr, seed, extra=None, library="flowforge",
    split="test", note=None,
):  # fmt: skip
    torch.manual_seed(seed)
    flow = build(model, variant, extra) if library == "flowforge" else _Zuko(model, extra)
    rng = np.random.default_rng(seed)
    test = scale * TOYS[toy](np.random.default_rng(SPLITS[split]), HELD_OUT)
    oracle = -toy_density.log_prob(toy, test, scale).mean()
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    flow.train()
    for _ in range(steps):
        x = torch.from_numpy(scale * TOYS[toy](rng, batch)).float()
        loss = -flow.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    flow.eval()
    with torch.no_grad():
        nll = -torch.cat([flow.log_prob(t) for t in torch.from_numpy(test).float().split(5000)])
    nll = float(nll.double().mean())
    return {
        "model": model,
        **({"library": library} if library != "flowforge" else {}),
        "toy": toy,
        "scale": scale,
        "variant": variant,
        **({"kwargs": extra} if extra else {}),
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "params": sum(p.numel() for p in flow.parameters()),
        "split": split,
        f"{split}_nll": round(nll, 4),
        "oracle_nll": round(float(oracle), 4),
        "gap": round(nll - float(oracle), 4),
        "seconds": round(seconds, 1),
        **({"note": note} if note else {}),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="nsf,maf,realnvp")
    p.add_argument("--toys", default="8gaussians,checkerboard")
    p.add_argument("--scale", type=float, nargs="+", default=[2.0, 1.0])
    p.add_argument(
        "--variant", default="default", choices=["default", "legacy", "bound5", "bound8"]
    )
    p.add_argument("--kwargs", type=json.loads, default=None, help="builder arguments, JSON")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--library", default="flowforge", choices=["flowforge", "zuko"],
        help="zuko: the same loop on zuko.flows.<MODEL>(2) with zuko's defaults (bench extra)",
    )  # fmt: skip
    p.add_argument(
        "--split", default="test", choices=sorted(SPLITS),
        help="held-out draw to score on: test (default_rng(12345), the rows before this option)"
        " or val (default_rng(54321)); both 20,000 points",
    )  # fmt: skip
    p.add_argument("--note", default=None, help="a note stored in each row")
    p.add_argument("--out", type=Path, default=RESULTS / "raw_defaults.jsonl")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for scale in a.scale:
        for toy in a.toys.split(","):
            for model in a.models.split(","):
                r = run(
                    model, toy, scale, a.variant, a.steps, a.batch, a.lr, a.seed, a.kwargs,
                    a.library, a.split, a.note,
                )  # fmt: skip
                print(json.dumps(r), flush=True)
                if str(a.out) != "-":
                    a.out.parent.mkdir(parents=True, exist_ok=True)
                    with open(a.out, "a") as f:
                        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
