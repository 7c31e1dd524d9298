"""FFJORD on the workbench's 2-D toys, against RealNVP (and NSF if registered), with the gap to
each toy's true density.

The toys are ``flowforge.workbench.data``'s own generators (not FFJORD's: different scales and
noise), so the oracle log-likelihoods are computed here, for these generators, from their
exact densities (quadrature over the generators' latent curve parameters; a change of
variables for pinwheel). Each model trains for a fixed wall-clock budget on the 5000-point
training split; the test split (1000 points, data seed 0) is scored once at the end (FFJORD
with the exact trace at rtol = atol = 1e-5).

    python scripts/ffjord_toys.py --budget 120 --budget-other 45 --out ffjord_toys.json
    python scripts/ffjord_toys.py --oracle-only          # the oracle table alone
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from scipy.special import i0e, logsumexp

import flowforge as ff
from flowforge.core import regularization
from flowforge.transforms import CNF
from flowforge.workbench.data import load_dataset

TOYS = ["8gaussians", "checkerboard", "moons", "rings", "2spirals", "pinwheel"]


# -- oracle log-densities of the workbench generators ------------------------------------------


def _log_gauss_curve(x: np.ndarray, centres: np.ndarray, logw: np.ndarray, sd: float):
    """log sum_j w_j N(x; centres_j, sd^2 I) for a quadrature of a curve, chunked over x."""
    out = []
    for i in range(0, len(x), 200):
        d2 = ((x[i : i + 200, None, :] - centres[None]) ** 2).sum(-1)
        out.append(logsumexp(logw[None] - d2 / (2 * sd**2), axis=1))
    return np.concatenate(out) - math.log(2 * math.pi * sd**2)


def _simpson(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w / w.sum()


def oracle_log_prob(name: str, x: np.ndarray) -> np.ndarray:
    """The exact log-density of ``flowforge.workbench.data.TOYS[name]`` at ``x`` (n, 2)."""
    x = np.asarray(x, dtype=np.float64)
    if name == "8gaussians":
        a = np.arange(8) * math.pi / 4
        c = 2.0 * np.stack([np.cos(a), np.sin(a)], 1)
        return _log_gauss_curve(x, c, np.full(8, -math.log(8)), 0.15)
    if name == "checkerboard":
        row, col = np.floor(x[:, 1] + 2), np.floor(x[:, 0] + 2)
        inside = (np.abs(x) < 2).all(1) & ((row + col) % 2 == 0)
        return np.where(inside, -math.log(8), -np.inf)
    if name == "moons":
        t = np.linspace(0, math.pi, 1201)
        w = np.log(_simpson(len(t)) / 2)
        m0 = np.stack([np.cos(t) - 0.5, np.sin(t) - 0.25], 1) * 2
        m1 = np.stack([1 - np.cos(t) - 0.5, 0.5 - np.sin(t) - 0.25], 1) * 2
        return _log_gauss_curve(x, np.concatenate([m0, m1]), np.concatenate([w, w]), 0.1)
    if name == "rings":  # a circle convolved with a Gaussian: a Bessel function
        rho, sd = np.linalg.norm(x, axis=1)[:, None], 0.06
        r = np.arange(1, 5)[None] * 0.75
        z = rho * r / sd**2
        lp = -((rho - r) ** 2) / (2 * sd**2) + np.log(i0e(z)) - math.log(2 * math.pi * sd**2)
        return logsumexp(lp, axis=1) - math.log(4)
    if name == "2spirals":  # t = 3 pi sqrt(U): density 2 t / (3 pi)^2 on [0, 3 pi]
        t = np.linspace(0, 3 * math.pi, 4001)
        w = _simpson(len(t)) * 3 * math.pi * 2 * t / (3 * math.pi) ** 2
        c = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 3
        logw = np.log(np.maximum(w, 1e-300) / 2)
        return _log_gauss_curve(x, np.concatenate([c, -c]), np.concatenate([logw, logw]), 0.1)
    if name == "pinwheel":
        return _pinwheel_log_prob(x)
    raise ValueError(f"no oracle for {name!r}")


def _pinwheel_log_prob(x: np.ndarray, arms: int = 5) -> np.ndarray:
    """x = 1.5 (r u(th) + s u_perp(th)), th = 2 pi k / arms + e^r / 4, r ~ N(1, .3^2),
    s ~ N(0, .05^2): sum over arms and over every root r of r = y.u(th(r)) of
    p(r) p(s) / |det|, det = 1.5^2 (1 - s th'(r))."""
    y = x / 1.5
    grid = np.linspace(1 - 8 * 0.3, 1 + 8 * 0.3, 8001)
    total = np.full(len(x), -np.inf)
    for k in range(arms):
        th = 2 * math.pi * k / arms + 0.25 * np.exp(grid)
        u = np.stack([np.cos(th), np.sin(th)], 1)
        h = grid[None] - y @ u.T  # (n, grid): root where h changes sign
        i, j = np.nonzero(np.sign(h[:, :-1]) != np.sign(h[:, 1:]))
        # refine each bracketed root by Newton's method from the linear interpolation
        r = grid[j] - h[i, j] * (grid[j + 1] - grid[j]) / (h[i, j + 1] - h[i, j])
        yi = y[i]
        for _ in range(6):
            t = 2 * math.pi * k / arms + 0.25 * np.exp(r)
            dt = 0.25 * np.exp(r)
            uu = np.stack([np.cos(t), np.sin(t)], 1)
            up = np.stack([-np.sin(t), np.cos(t)], 1)
            g = r - (yi * uu).sum(1)
            r = r - g / (1 - dt * (yi * up).sum(1))
        t = 2 * math.pi * k / arms + 0.25 * np.exp(r)
        s = (yi * np.stack([-np.sin(t), np.cos(t)], 1)).sum(1)
        det = 1.5**2 * np.abs(1 - s * 0.25 * np.exp(r))
        lp = (
            -0.5 * ((r - 1) / 0.3) ** 2
            - math.log(0.3 * math.sqrt(2 * math.pi))
            - 0.5 * (s / 0.05) ** 2
            - math.log(0.05 * math.sqrt(2 * math.pi))
            - np.log(det)
            - math.log(arms)
        )
        np.logaddexp.at(total, i, lp)
    return total


def oracle_mass(name: str, half: float = 5.0, n: int = 250) -> float:
    """Integral of exp(oracle) over [-half, half]^2 (a check: close to 1)."""
    g = np.linspace(-half, half, n)
    xx, yy = np.meshgrid(g, g)
    p = np.exp(oracle_log_prob(name, np.stack([xx.ravel(), yy.ravel()], 1)))
    return float(p.sum() * (g[1] - g[0]) ** 2)


# -- models ----------------------------------------------------------------------------------------


def build(model: str, seed: int) -> ff.Flow:
    torch.manual_seed(seed)
    if model == "ffjord":
        return ff.models.FFJORD(
            features=2,
            hidden=(64, 64, 64),
            trace="hutchinson",
            rtol=1e-3,
            atol=1e-3,
            regularization={"kinetic": 0.01, "jacobian": 0.01},
        )
    if model == "realnvp":
        return ff.models.RealNVP(features=2, layers=8, hidden=(32, 32))
    if model == "nsf":
        return ff.models.build("nsf", features=2, layers=4, hidden=(32, 32))
    raise ValueError(model)


def cnfs(flow) -> list[CNF]:
    return [m for m in flow.modules() if isinstance(m, CNF)]


def fit(flow, x: torch.Tensor, budget: float, lr: float, batch: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    flow.train()
    steps, nfe_f, nfe_b, t0 = 0, 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < budget:
        for group in opt.param_groups:  # cosine decay over the wall-clock budget
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        xb = x[torch.randint(0, len(x), (batch,), generator=g)]
        loss = -flow.log_prob(xb).mean()
        reg = regularization(flow)
        reg = 0.0 if reg is None else reg
        opt.zero_grad(set_to_none=True)
        (loss + reg).backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        steps += 1
        nfe_f += sum(c.nfe_forward for c in cnfs(flow))
        nfe_b += sum(c.nfe_backward for c in cnfs(flow))
    return {
        "steps": steps,
        "train_s": time.perf_counter() - t0,
        "last_train_nll": loss.item(),
        "nfe_forward_per_step": nfe_f / max(steps, 1),
        "nfe_backward_per_step": nfe_b / max(steps, 1),
    }


@torch.no_grad()
def test_log_lik(flow, x: torch.Tensor) -> tuple[float, float, int]:
    """Mean test log-likelihood, its standard error, and the NFE of the scoring solve."""
    flow.eval()
    for c in cnfs(flow):
        c.trace, c.rtol, c.atol = "exact", 1e-5, 1e-5
    lp = flow.log_prob(x).double()
    nfe = sum(c.nfe_forward for c in cnfs(flow))
    return lp.mean().item(), (lp.std() / math.sqrt(len(lp))).item(), nfe


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--toys", nargs="+", default=TOYS)
    p.add_argument("--models", nargs="+", default=["ffjord", "realnvp", "nsf"])
    p.add_argument("--budget", type=float, default=120.0, help="FFJORD seconds per toy")
    p.add_argument("--budget-other", type=float, default=45.0, help="other models' seconds")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--oracle-only", action="store_true")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m for m in args.models if m != "nsf" or "nsf" in ff.models.available()]
    if len(models) < len(args.models):
        print("note: nsf is not registered in ff.models here; skipped")
    results: dict = {"args": vars(args), "toys": {}}
    for toy in args.toys:
        ds = load_dataset(toy, seed=0)
        test = ds.split("test")
        oracle = oracle_log_prob(toy, test.numpy())
        entry = {
            "oracle": float(oracle.mean()),
            "oracle_se": float(oracle.std() / math.sqrt(len(oracle))),
            "oracle_mass": oracle_mass(toy),
            "models": {},
        }
        results["toys"][toy] = entry
        print(
            f"{toy:13s} oracle test log-lik {entry['oracle']:.3f} "
            f"(mass on [-5,5]^2: {entry['oracle_mass']:.4f})",
            flush=True,
        )
        if args.oracle_only:
            continue
        for model in models:
            flow = build(model, args.seed)
            params = sum(p.numel() for p in flow.parameters())
            budget = args.budget if model == "ffjord" else args.budget_other
            info = fit(flow, ds.split("train"), budget, args.lr, args.batch, args.seed)
            t0 = time.perf_counter()
            ll, se, nfe = test_log_lik(flow, test)
            info.update(
                params=params,
                test_log_lik=ll,
                test_se=se,
                gap=entry["oracle"] - ll,
                test_nfe=nfe,
                test_s=time.perf_counter() - t0,
            )
            entry["models"][model] = info
            print(
                f"  {model:8s} {params:6d} params  {info['steps']:5d} steps "
                f"{info['train_s']:5.0f}s  test log-lik {ll:.3f} +- {se:.3f}  "
                f"gap {info['gap']:.3f}  NFE/step {info['nfe_forward_per_step']:.0f}"
                f"+{info['nfe_backward_per_step']:.0f}  test NFE {nfe}",
                flush=True,
            )
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
