"""Writes the flowforge/1 files in this folder. Run it with the code of d46d5da on the path:

    git worktree add /tmp/old d46d5da
    PYTHONPATH=/tmp/old/src python tests/data/format1/make.py

run-moons/ was made by that version's workbench:

    PYTHONPATH=/tmp/old/src python -m flowforge.workbench.cli train --model realnvp --data moons \
        --out run-moons --model-kwargs '{"layers": 2, "hidden": [8]}' --limit 200 --epochs 1

Each model is built, its ActNorms initialised on data, every parameter nudged off its
initial value (so an identity layer cannot pass by accident), saved with that version's
``ff.save``, and scored on five points; ``expected.json`` keeps the points and the scores.
"""

import json
from pathlib import Path

import torch

import flowforge as ff

HERE = Path(__file__).parent

MODELS = {
    "realnvp": dict(model="realnvp", features=3, layers=4, hidden=16),
    "realnvp-vardeq": dict(
        model="realnvp", features=4, layers=2, hidden=8, levels=17, dequantization="variational"
    ),
    "glow-vardeq": dict(
        model="glow",
        shape=(2, 4, 4),
        scales=2,
        steps=2,
        hidden=8,
        levels=17,
        dequantization={"name": "variational", "steps": 1, "hidden": 8},
    ),
    "maf-madmog": dict(
        model="maf", features=3, layers=2, hidden=[16], base={"name": "made-mog", "components": 3}
    ),
    "planar-int-hidden": dict(model="planar", features=2, layers=3, context_features=2, hidden=16),
    "nsf": dict(model="nsf", features=3, layers=2, hidden=[16], bins=4),
    "realnvp-image": dict(model="realnvp", shape=(1, 4, 4), scales=1, hidden=8, levels=17),
}


def points(kw, g):
    shape = (kw["features"],) if "features" in kw else tuple(kw["shape"])
    if kw.get("levels"):
        return torch.randint(0, kw["levels"], (5, *shape), generator=g).float()
    return torch.randn(5, *shape, generator=g)


def main():
    expected = {}
    for name, kw in MODELS.items():
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        kw = dict(kw)
        flow = ff.models.build(kw.pop("model"), **kw)
        x = points({**kw}, g)
        ctx = (
            torch.randn(5, kw["context_features"], generator=g)
            if kw.get("context_features")
            else None
        )
        flow.train()
        with torch.no_grad():
            flow.log_prob(x, ctx)  # data-dependent initialisation
            for p in flow.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        flow.eval()
        ff.save(flow, HERE / f"{name}.ff")
        torch.manual_seed(2)
        with torch.no_grad():
            lp = flow.log_prob(x, ctx)
        assert torch.isfinite(lp).all(), name
        expected[name] = {
            "x": x.tolist(),
            "context": None if ctx is None else ctx.tolist(),
            "log_prob": lp.tolist(),
        }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
