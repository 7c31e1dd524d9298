r"""Variational inference on a named target: ``flowforge fit-target``.

``fit_target`` trains a flow by reverse KL (``ff.objectives.reverse_kl``) on an unnormalised
target from :mod:`flowforge.targets`, then measures it with
:func:`flowforge.objectives.vi_diagnostics`; ``write_vi_report`` writes a PNG (target density,
learned density, samples) and a markdown report. The CLI::

    flowforge fit-target --target u1 --model planar --layers 32 --out runs/u1

prints the final reverse KL (up to log Z), ELBO, importance-sampled log Z and ESS, and for 2-D
targets the grid-integrated log Z and the true KL.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path

import torch

__all__ = ["build_vi_model", "fit_target", "evaluate_target", "write_vi_report", "add_parser"]


def build_vi_model(name: str, features: int, layers: int | None = None, **kwargs):
    """Build a registered model for ``features`` dimensions; ``layers`` goes to the builder's
    ``layers`` (or ``blocks``) argument."""
    from .. import models

    builder = models.builder(name)  # ValueError for an unknown name, with suggestions
    params = inspect.signature(builder).parameters
    if layers is not None:
        if "layers" in params:
            kwargs["layers"] = layers
        elif "blocks" in params:
            kwargs["blocks"] = layers
        else:
            raise ValueError(f"model {name!r} takes neither layers= nor blocks=")
    if "preprocess" in params and "levels" in params:
        kwargs.setdefault("preprocess", None)
    return builder(features=features, **kwargs)


def fit_target(
    flow,
    target,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 5e-3,
    anneal: int = 0,
    grad_clip: float = 100.0,
    seed: int = 0,
    log_every: int = 0,
) -> dict:
    r"""Minimise the reverse KL ``E_q[log q - log p~]`` with Adam.

    ``anneal > 0`` multiplies ``log p~`` by ``β_t = min(1, 0.01 + t / anneal)`` (Rezende &
    Mohamed's annealing). The learning rate decays by cosine to 1/10 over the run. Steps whose
    loss is not finite are skipped (counted in ``skipped``). Returns a history summary.
    """
    from ..objectives import reverse_kl
    from .train import adam

    torch.manual_seed(seed)
    flow.train()
    opt = adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 10)
    losses, skipped, t0 = [], 0, time.time()
    for t in range(steps):
        beta = min(1.0, 0.01 + t / anneal) if anneal else 1.0
        loss = reverse_kl(flow, lambda x, beta=beta: beta * target(x), batch_size)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1
            sched.step()
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (t + 1) % log_every == 0:
            print(f"step {t + 1}/{steps}  beta {beta:.2f}  loss {loss.item():.4f}", flush=True)
    flow.eval()
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "anneal": anneal,
        "skipped": skipped,
        "final_loss": float(sum(losses[-100:]) / max(1, len(losses[-100:]))),
        "seconds": time.time() - t0,
    }


def evaluate_target(flow, target, n: int = 20000, seed: int = 1, grid_n: int = 600) -> dict:
    """:func:`~flowforge.objectives.vi_diagnostics` plus, for 2-D targets, the grid log Z and
    the true ``KL(q || p) = log Z - ELBO`` (or the exact log Z where the target knows it)."""
    from ..objectives import vi_diagnostics
    from ..targets import grid_log_z

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        d = vi_diagnostics(flow, target, n=n)
    log_z = target.log_z
    if log_z is None and target.dim == 2:
        x0, x1, y0, y1 = target.box
        box = (x0 - 2, x1 + 2, y0 - 2, y1 + 2)
        log_z = grid_log_z(target, box, grid_n)
    d["true_log_z"] = log_z
    d["kl"] = None if log_z is None else log_z - d["elbo"]
    d["params"] = sum(p.numel() for p in flow.parameters())
    return d


def _density_grid(fn, box, n):
    from ..targets import grid

    pts, _ = grid(box, n, torch.float32)
    with torch.no_grad():
        lp = torch.cat([fn(c) for c in pts.split(8192)])
    return lp.reshape(n, n)


def plot_pair(ax_t, ax_q, flow, target, n: int = 200, title: str = "") -> None:
    """Draw ``exp(log p~)`` on ``ax_t`` and the flow's density on ``ax_q`` over the target box."""
    box = target.box
    ext = [box[0], box[1], box[2], box[3]]
    lt = _density_grid(lambda x: target(x.double()).float(), box, n)
    ax_t.imshow(torch.exp(lt - lt.max()).numpy(), origin="lower", extent=ext, cmap="viridis")
    ax_t.set_title(f"target {target.name}", fontsize=9)
    flow.eval()
    try:
        lq = _density_grid(lambda x: flow.log_prob(x.to(_dtype(flow))).float(), box, n)
        lq = torch.nan_to_num(lq, nan=-1e30, neginf=-1e30)
        ax_q.imshow(torch.exp(lq - lq.max()).numpy(), origin="lower", extent=ext, cmap="viridis")
    except Exception as e:  # a model with no log_prob of given points still gets its samples
        ax_q.text(
            0.5, 0.5, f"no density: {type(e).__name__}", ha="center", transform=ax_q.transAxes
        )
    ax_q.set_title(title or "flow", fontsize=9)
    for ax in (ax_t, ax_q):
        ax.set_xticks([])
        ax.set_yticks([])


def _dtype(flow):
    for p in flow.parameters():
        return p.dtype
    return torch.float32


def write_vi_report(out: Path, flow, target, metrics: dict, fit: dict, title: str) -> Path:
    """``report.png`` (target, learned density, samples), ``report.md``, ``metrics.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    if target.dim == 2:
        plot_pair(axes[0], axes[1], flow, target, title=title)
    else:
        for ax in axes[:2]:
            ax.axis("off")
        axes[0].text(0.5, 0.5, f"{target.dim}-D target: densities not drawn", ha="center")
    with torch.no_grad():
        s = flow.sample(2000).float()
    axes[2].scatter(s[:, 0].numpy(), s[:, 1].numpy(), s=1, alpha=0.4)
    if target.dim == 2:
        axes[2].set_xlim(target.box[0], target.box[1])
        axes[2].set_ylim(target.box[2], target.box[3])
    axes[2].set_title("2000 samples (dims 1, 2)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=110)
    plt.close(fig)
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "fit": fit}, indent=2))
    rows = [
        ("reverse KL up to log Z (= -ELBO)", metrics["reverse_kl"]),
        ("ELBO", metrics["elbo"]),
        ("log Z, importance sampled", metrics["log_z"]),
        ("ESS (normalised)", metrics["ess"]),
        ("log Z, exact or grid", metrics["true_log_z"]),
        ("KL(q || p)", metrics["kl"]),
    ]
    lines = [
        f"# {title} on {target.name}",
        "",
        f"{target.description}. Model parameters: {metrics['params']}. Training: {fit['steps']} "
        f"steps, batch {fit['batch_size']}, Adam lr {fit['lr']} (cosine), anneal "
        f"{fit['anneal']}, {fit['seconds']:.1f} s. Diagnostics on {metrics['n']} samples.",
        "",
        "![target, learned density, samples](report.png)",
        "",
        "| quantity | value |",
        "|---|---|",
        *[f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |" for k, v in rows],
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def summary_line(m: dict) -> str:
    s = (
        f"reverse KL (up to log Z) {m['reverse_kl']:.4f}, ELBO {m['elbo']:.4f}, "
        f"log Z (IS) {m['log_z']:.4f}, ESS {m['ess']:.3f}"
    )
    if m["kl"] is not None:
        s += f"; log Z (grid/exact) {m['true_log_z']:.4f}, KL {m['kl']:.4f}"
    return s


def cmd_fit_target(args) -> int:
    from .. import io, targets
    from .data import WorkbenchError

    target = targets.get(args.target)  # unknown target: ValueError, one line
    kwargs = {}
    if args.model_kwargs:
        try:
            kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as e:
            raise WorkbenchError(f"--model-kwargs: not valid JSON: {e}") from None
        if not isinstance(kwargs, dict):
            raise WorkbenchError("--model-kwargs: expected a JSON object like '{\"hidden\": 8}'")
    for flag, v in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if v < 1:
            raise WorkbenchError(f"{flag} must be at least 1, got {v}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise WorkbenchError(f"--lr must be positive, got {args.lr}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise WorkbenchError(f"{out} exists and is not empty; pass --overwrite or another --out")
    torch.manual_seed(args.seed)
    try:
        flow = build_vi_model(args.model, target.dim, args.layers, **kwargs)
    except TypeError as e:
        raise WorkbenchError(f"model {args.model!r}: {e}") from None
    fit = fit_target(
        flow,
        target,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        anneal=args.anneal,
        seed=args.seed,
        log_every=0 if args.quiet else max(1, args.steps // 10),
    )
    metrics = evaluate_target(flow, target, n=args.n_eval)
    title = f"{args.model}" + (f" K={args.layers}" if args.layers else "")
    report = write_vi_report(out, flow, target, metrics, fit, title)
    if getattr(flow, "config", None) is not None:
        io.save(flow, out / "model.ff")
    print(summary_line(metrics))
    print(f"report: {report}")
    return 0


def add_parser(sub, common) -> None:
    """Register ``fit-target`` on the ``flowforge`` CLI's subparsers."""
    s = sub.add_parser(
        "fit-target",
        parents=[common],
        help="variational inference: fit a flow to an unnormalised target by reverse KL",
    )
    s.add_argument("--target", required=True, help="u1, u2, u3, u4, banana, funnel, mog2, ...")
    s.add_argument("--model", default="planar", help="a model from 'flowforge list'")
    s.add_argument("--layers", type=int, help="number of layers (or residual blocks)")
    s.add_argument("--model-kwargs", help="more builder arguments as JSON")
    s.add_argument("--out", required=True, help="the report folder")
    s.add_argument("--steps", type=int, default=3000)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--lr", type=float, default=5e-3)
    s.add_argument("--anneal", type=int, default=1000, help="annealing steps (0: off)")
    s.add_argument("--n-eval", type=int, default=20000, help="samples for the diagnostics")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_fit_target)
