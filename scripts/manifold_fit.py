r"""How close trained runs come to the known density of a manifold dataset.

For each run folder (trained on ``circle-vonmises``, ``torus-vonmises`` or ``sphere-vmf``) it
prints, on the test split: the model's NLL, the true entropy estimate ``-mean log p(x)`` on the
same points, and their difference, an estimate of ``KL(p || q)`` with its standard error. For
a Euclidean model on angles it also scores the *wrapped* density
``sum_k q(x + 2 pi k)`` (``k`` in ``{-2..2}^D``), the best a Euclidean flow's density can do
as a density on the torus.

    python scripts/manifold_fit.py runs/torus-vonmises runs/torus-vonmises-euclidean
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from flowforge.workbench import manifold_data
from flowforge.workbench.runner import run_dataset
from flowforge.workbench.runs import load_run, run_config


@torch.no_grad()
def _log_q(flow, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([flow.log_prob(b).double() for b in x.split(4096)])


@torch.no_grad()
def _wrapped_log_q(flow, x: torch.Tensor) -> torch.Tensor:
    shifts = torch.tensor(list(itertools.product(range(-2, 3), repeat=x.shape[1])), dtype=x.dtype)
    lq = torch.stack([_log_q(flow, x + 2 * math.pi * s) for s in shifts], 1)
    return torch.logsumexp(lq, 1)


def _gap(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[float, float]:
    d = log_p - log_q
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | model | data | NLL | entropy | KL (NLL - entropy) |")
    print("|---|---|---|---|---|---|")
    first: dict[str, tuple[str, torch.Tensor]] = {}  # per dataset, the first row's log q
    paired = []
    for run in args.runs:
        cfg = run_config(run)
        name = cfg["data"]["name"]
        if name not in manifold_data.MANIFOLD_DATASETS:
            raise SystemExit(f"{run}: trained on {name!r}, not a manifold dataset")
        x = run_dataset(cfg).split(args.split)
        flow = load_run(run).eval()
        log_p = torch.from_numpy(manifold_data.log_prob(name, x.numpy()))
        model = cfg["model"]["name"]
        rows = [(model, _log_q(flow, x))]
        if model.lower() not in ("torusflow", "sphereflow") and name != "sphere-vmf":
            rows.append((f"{model}, wrapped", _wrapped_log_q(flow, x)))
        for label, log_q in rows:
            kl, se = _gap(log_p, log_q)
            print(
                f"| {run} | {label} | {name} | {-log_q.mean().item():.4f} | "
                f"{-log_p.mean().item():.4f} | {kl:.4f} ± {se:.4f} |"
            )
            if name not in first:
                first[name] = (f"{run} ({label})", log_q)
            else:
                ref, ref_q = first[name]
                diff, se = _gap(ref_q, log_q)
                paired.append(f"{run} ({label}) - {ref}: {diff:+.4f} ± {se:.4f} nats")
    if paired:
        print("\nNLL differences on the same test points (paired standard errors):")
        print("\n".join(paired))


if __name__ == "__main__":
    main()
