r"""An M-flow on the ``surface-64`` dataset (a 2-D surface in R^64, noise 0.01): the manifold
phase, then the density phase, then the test-split figures: the mean reconstruction error
against the noise's ``D sigma^2 = 0.0064`` and the mean on-manifold log-density against the
true one.

    python scripts/mflow_surface.py --n-train 10000 --epochs 30 --density-epochs 30
"""

from __future__ import annotations

import argparse
import json

import torch

from flowforge.models.mflow import mflow
from flowforge.workbench.data import load_dataset
from flowforge.workbench.mflow import evaluate_mflow, train_mflow


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--density-epochs", type=int, default=30)
    ap.add_argument("--outer-layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    ds = load_dataset("surface-64", n_train=args.n_train, n_val=2000, n_test=5000)
    model = mflow(64, 2, outer_layers=args.outer_layers, inner_layers=6, hidden=args.hidden)
    common = {"batch_size": 128, "lr": args.lr, "warmup_steps": 100, "patience": 10}
    phases = train_mflow(
        model,
        ds.train,
        ds.val,
        {**common, "epochs": args.epochs},
        {**common, "epochs": args.density_epochs},
        seed=args.seed,
        echo=True,
    )
    print(
        json.dumps({"args": vars(args), "phases": phases, "test": evaluate_mflow(model, ds.test)})
    )


if __name__ == "__main__":
    main()
