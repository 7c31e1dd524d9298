"""Calibration diagnostics (``flowforge.diagnostics``) on a conjugate Gaussian model.

Prior ``theta ~ N(0, I_3)``, simulator ``x = theta + eps`` with ``eps ~ N(0, I_3)``: the
posterior is ``N(x / 2, I / 2)`` in closed form. Scored on the same 1,000 held-out pairs:

- the exact posterior, written as a conditional flow (one conditional affine layer), and three
  wrong ones: overconfident (posterior sd x 0.5), underconfident (sd x 2), biased (mean shifted
  by 0.5 posterior sd in every coordinate);
- conditional MAFs trained by neural posterior estimation (maximum likelihood of ``theta``
  given ``x`` on 20,000 simulated pairs) for 3,000 steps and for 60 steps.

For each: SBC (L = 200 draws per pair), HPD coverage, TARP and C2ST (the flow's draws against
exact posterior draws, 1,000 of each at 5 fixed observations, mean accuracy).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/calibration.py \\
        --out benchmarks/results/calibration.json

writes the JSON and prints the table of ``benchmarks/results/calibration.md``, then the
false-alarm rates of the yes/no verdicts on the exact posterior (``--false-alarms``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge import diagnostics as dg

D = 3
SHRINK, POST_SD = 0.5, math.sqrt(0.5)  # x = theta + N(0, I), theta ~ N(0, I)


class GaussianPosterior(ff.Transform):
    """``q(theta | x) = N(SHRINK x + shift, (width POST_SD)^2 I)`` as one conditional layer."""

    def __init__(self, width: float = 1.0, shift: float = 0.0):
        super().__init__((D,), context_features=D)
        self.sd, self.shift = width * POST_SD, shift

    def _forward(self, theta, x):
        z = (theta - SHRINK * x - self.shift) / self.sd
        return z, theta.new_full((theta.shape[0],), -D * math.log(self.sd))

    def _inverse(self, z, x):
        return z * self.sd + SHRINK * x + self.shift, z.new_full(
            (z.shape[0],), D * math.log(self.sd)
        )


def analytic(**kwargs) -> ff.Flow:
    return ff.Flow(GaussianPosterior(**kwargs), ff.distributions.StandardNormal(D))


def simulate(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.randn(n, D, generator=g)
    return theta, theta + torch.randn(n, D, generator=g)


def npe(steps: int, seed: int) -> tuple[ff.Flow, float]:
    """A conditional MAF trained on 20,000 simulated pairs by maximum likelihood."""
    g = torch.Generator().manual_seed(seed)
    theta, x = simulate(20000, g)
    torch.manual_seed(seed)
    flow = ff.models.build("maf", features=D, context_features=D, layers=5, hidden=(64, 64))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    t0 = time.process_time()
    flow.train()
    for _ in range(steps):
        i = torch.randint(0, theta.shape[0], (256,), generator=g)
        loss = -flow.log_prob(theta[i], x[i]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    return flow, time.process_time() - t0


def score(flow: ff.Flow, theta, x, x_fixed, num_samples: int) -> dict:
    t0 = time.process_time()
    s = dg.sbc(flow, theta, x, num_samples)
    cov = dg.hpd_coverage(flow, theta, x, num_samples)
    tp = dg.tarp(flow, theta, x, num_samples)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        mine = flow.sample(1000, x_fixed)  # (1000, 5, D)
        ref = analytic().sample(1000, x_fixed)
    c2 = [dg.c2st(mine[:, j], ref[:, j]).accuracy for j in range(x_fixed.shape[0])]
    with torch.no_grad():
        true_nll = float(
            -torch.distributions.Normal(SHRINK * x, POST_SD).log_prob(theta).sum(-1).mean()
        )
        nll = float(-flow.log_prob(theta, x).mean())
    return {
        "nll_gap": nll - true_nll,
        "sbc": {
            "chi2_min_p": float(s.chi2_pvalues.min()),
            "ks_min_p": float(s.ks_pvalues.min()),
            "log_prob_chi2_p": s.log_prob_chi2_pvalue,
            "log_prob_ks_p": s.log_prob_ks_pvalue,
            "mean_rank": s.mean_rank.tolist(),
            "consistent": s.consistent(),
            "line": s.describe(),
        },
        "coverage": {
            "levels": cov.levels.tolist(),
            "coverage": cov.coverage.tolist(),
            "area": cov.area,
            "signed_area": cov.signed_area,
            "max_deviation": cov.max_deviation,
            "verdict": cov.verdict(),
            "line": cov.describe(),
        },
        "tarp": {
            "area": tp.area,
            "max_deviation": tp.max_deviation,
            "ks_p": tp.ks_pvalue,
            "line": tp.describe(),
        },
        "c2st": c2,
        "cpu_seconds": time.process_time() - t0,
    }


def false_alarms(runs: int, pairs: int = 200, num_samples: int = 30) -> dict:
    """How often ``SBCResult.consistent()`` and ``CoverageResult.verdict()`` (both at their
    default level 0.01) call the exact posterior miscalibrated, over ``runs`` seeded runs
    (new pairs and new draws each)."""
    exact = analytic()
    sbc_alarms = verdict_alarms = 0
    for r in range(runs):
        theta, x = simulate(pairs, torch.Generator().manual_seed(50_000 + r))
        s = dg.sbc(exact, theta, x, num_samples, seed=r)
        sbc_alarms += not s.consistent()
        verdict_alarms += s.coverage(seed=r).verdict() != "calibrated"
    return {
        "runs": runs,
        "pairs": pairs,
        "num_samples": num_samples,
        "sbc_consistent_false_alarms": sbc_alarms / runs,
        "coverage_verdict_false_alarms": verdict_alarms / runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--num-samples", type=int, default=200)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--false-alarms",
        type=int,
        default=200,
        help="seeded runs of the exact posterior (200 pairs, 30 draws) that measure the "
        "false-alarm rates of consistent() and verdict() (0: skip)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1000 + args.seed)
    theta, x = simulate(args.pairs, g)
    x_fixed = simulate(5, g)[1]
    trained, secs = npe(args.steps, args.seed)
    short, short_secs = npe(60, args.seed)
    models = {
        "exact posterior": analytic(),
        "overconfident (sd x 0.5)": analytic(width=0.5),
        "underconfident (sd x 2)": analytic(width=2.0),
        "biased (mean + 0.5 sd)": analytic(shift=0.5 * POST_SD),
        f"NPE MAF, {args.steps} steps": trained,
        "NPE MAF, 60 steps": short,
    }
    results = {
        "pairs": args.pairs,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "train_cpu_seconds": {f"{args.steps} steps": secs, "60 steps": short_secs},
        "models": {},
    }
    rows = []
    for name, flow in models.items():
        r = score(flow, theta, x, x_fixed, args.num_samples)
        results["models"][name] = r
        s, c, t = r["sbc"], r["coverage"], r["tarp"]
        rows.append(
            f"| {name} | {r['nll_gap']:+.3f} | {s['chi2_min_p']:.2g} / {s['ks_min_p']:.2g} | "
            f"{s['log_prob_ks_p']:.2g} | {min(s['mean_rank']):.3f}..{max(s['mean_rank']):.3f} | "
            f"{c['signed_area']:+.3f} ({c['verdict']}) | {t['area']:.3f} / {t['max_deviation']:.3f}"
            f" (p {t['ks_p']:.2g}) | {sum(r['c2st']) / len(r['c2st']):.3f} |"
        )
        print(name)
        for key in ("sbc", "coverage", "tarp"):
            print("  " + r[key]["line"])
        print(f"  C2ST vs exact draws at 5 x: {', '.join(f'{a:.3f}' for a in r['c2st'])}")
    print()
    print(
        "| posterior | NLL gap (nats) | SBC min p chi2 / KS | log-density rank KS p | mean rank "
        "| HPD coverage signed area (verdict) | TARP area / max dev (KS p) | C2ST acc |"
    )
    print("|---|---:|---:|---:|---:|---|---|---:|")
    print("\n".join(rows))
    if args.false_alarms:
        fa = false_alarms(args.false_alarms)
        results["false_alarms"] = fa
        print(
            f"\nfalse alarms on the exact posterior over {fa['runs']} seeded runs of "
            f"{fa['pairs']} pairs, L = {fa['num_samples']}: SBCResult.consistent() "
            f"{fa['sbc_consistent_false_alarms']:.1%}, CoverageResult.verdict() "
            f"{fa['coverage_verdict_false_alarms']:.1%}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
