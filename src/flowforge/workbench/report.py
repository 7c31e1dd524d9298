r"""Plots and ``report.html`` for a run (matplotlib, Agg backend).

``write_report(run)`` writes PNGs under ``<run>/report/`` and ``<run>/report.html``, which
links them by relative path, so the folder can be copied or zipped as a whole:

- ``curves.png``: training loss and validation NLL per epoch (bits/dim for discrete data);
- image data: ``samples.png`` (a grid per temperature) and ``nearest.png`` (each sample beside
  its nearest training image in pixel space, a memorisation check);
- 2-D data: ``density.png`` (the data beside the model's density) and ``samples.png``;
- every run: ``latent.png``, a histogram and a QQ plot of ``z = flow.transform(x)`` against
  a standard normal.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .runner import run_dataset
from .runs import load_run, read_metrics, run_config

__all__ = [
    "write_report",
    "save_samples",
    "sample_run",
    "image_grid",
    "write_vi_report",
    "plot_pair",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _as_images(x: Tensor, cfg: dict) -> np.ndarray:
    """Samples or data -> ``(N, H, W, C)`` floats in [0, 1]."""
    r = cfg["resolved"]
    shape = tuple(r["data_shape"])
    x = x.reshape(x.shape[0], *shape).float()
    levels = r.get("levels") or 256
    x = (x / (levels - 1)).clamp(0, 1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile ``(N, H, W, C)`` images into one ``(rows*H, cols*W, C)`` array."""
    n, h, w, c = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones(((h + pad) * rows + pad, (w + pad) * cols + pad, c), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + q * (w + pad) : pad + q * (w + pad) + w,
        ] = images[i]
    return grid


def _show(ax, img: np.ndarray) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


SAMPLE_CHUNK = 4096  # samples drawn per call: memory stays that of the output
SAMPLE_LIMIT = 2**28  # values (1 GiB of float32) one sample command may write


@torch.no_grad()
def sample_run(
    flow, cfg: dict, n: int, temperature: float = 1.0, seed: int = 0, context=None
) -> Tensor:
    """``n`` samples from a run's flow on the data's own scale and shape.

    With a ``(B, k)`` context (a conditional run) it returns ``n`` samples per row, ``B * n``
    in all, row by row. Samples are drawn :data:`SAMPLE_CHUNK` at a time into one output
    tensor; more than :data:`SAMPLE_LIMIT` values in all, or a non-finite sample, is an error.
    """
    from .errors import WorkbenchError

    shape = tuple(cfg["resolved"]["data_shape"])
    rows = context.shape[0] if context is not None else 1
    total = n * rows * math.prod(shape)
    if total > SAMPLE_LIMIT:
        most = SAMPLE_LIMIT // (rows * math.prod(shape))
        raise WorkbenchError(
            f"{n:,} samples of shape {shape}{f' x {rows} contexts' if rows > 1 else ''} are "
            f"{total:,} values, more than the {SAMPLE_LIMIT:,} one command writes; ask for at "
            f"most {most:,} and write several files (with different --seed)"
        )
    flow.eval()
    out = torch.empty(rows, n, *shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, SAMPLE_CHUNK):
            m = min(SAMPLE_CHUNK, n - start)
            x = flow.sample(m, context, temperature=temperature)
            out[:, start : start + m] = x.reshape(m, rows, *shape).transpose(0, 1)
    bad = (~torch.isfinite(out.reshape(rows * n, -1))).any(1).sum().item()
    if bad:
        raise WorkbenchError(
            f"{bad} of {rows * n} samples are not finite (inf or NaN): the model is unstable "
            f"at temperature {temperature:g}; try a lower --temperature or check the run"
        )
    return out.reshape(-1, *shape)


def _csv_field(name: str) -> str:
    if any(c in name for c in ',"\n\r'):
        return '"' + name.replace('"', '""') + '"'
    return name


def save_samples(x: Tensor, cfg: dict, path: str | os.PathLike, title: str = "") -> None:
    """Write samples as .npy, .csv or .png (a grid for images, a scatter for 2-D data)."""
    from ..io import atomic_write
    from .data import WorkbenchError

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        import io as _io

        buf = _io.BytesIO()
        np.save(buf, x.cpu().numpy())
        atomic_write(path, buf.getvalue())
        return
    if suffix == ".csv":
        if x.dim() != 2:
            raise WorkbenchError("CSV output needs vector data; use .npy or .png for images")
        rows = [",".join(f"{v:.9g}" for v in row) for row in x.tolist()]
        names = cfg.get("resolved", {}).get("columns")
        if names and len(names) == x.shape[1]:
            rows.insert(0, ",".join(_csv_field(n) for n in names))
        text = "\n".join(rows) + "\n"
        atomic_write(path, text.encode())
        return
    if suffix != ".png":
        raise WorkbenchError(f"unsupported output {path.name}; expected .png, .npy or .csv")
    plt = _plt()
    shape = tuple(cfg["resolved"]["data_shape"])
    if len(shape) == 3:
        grid = image_grid(_as_images(x, cfg))
        fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1]))
        _show(ax, grid)
    elif shape == (2,):
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.6)
        ax.set_aspect("equal")
    else:
        raise WorkbenchError(
            f"PNG output needs image or 2-D data (this run's data has shape {shape}); "
            "use .npy or .csv"
        )
    if title:
        ax.set_title(title)
    _savefig(fig, path)


def _savefig(fig, path: Path) -> None:
    import io as _io

    from ..io import atomic_write

    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    atomic_write(path, buf.getvalue())


def _curves(metrics: list[dict], path: Path, discrete: bool) -> bool:
    ep = [m for m in metrics if m.get("type") == "epoch"]
    steps = [m for m in metrics if m.get("type") == "step"]
    if not ep and not steps:
        return False
    plt = _plt()
    fig, ax = plt.subplots(
        1, 2 if discrete else 1, figsize=(11 if discrete else 6, 4), squeeze=False
    )
    a = ax[0, 0]
    if steps and ep:
        per_epoch = max(1, ep[0]["step"])
        a.plot(
            [s["step"] / per_epoch for s in steps],
            [s["loss"] for s in steps],
            color="0.8",
            lw=0.8,
            label="train (steps)",
        )
    if ep:
        a.plot([m["epoch"] for m in ep], [m["train_loss"] for m in ep], label="train")
        a.plot([m["epoch"] for m in ep], [m["val_nll"] for m in ep], label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("NLL (nats/example)")
    a.legend()
    a.grid(alpha=0.3)
    if discrete and ep and "val_bpd" in ep[0]:
        b = ax[0, 1]
        b.plot([m["epoch"] for m in ep], [m["train_bpd"] for m in ep], label="train")
        b.plot([m["epoch"] for m in ep], [m["val_bpd"] for m in ep], label="validation")
        b.set_xlabel("epoch")
        b.set_ylabel("bits/dim")
        b.legend()
        b.grid(alpha=0.3)
    _savefig(fig, path)
    return True


def _samples_images(flow, cfg, temps, n, seed, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(temps), figsize=(3.2 * len(temps), 3.6), squeeze=False)
    for ax, t in zip(axes[0], temps):
        x = sample_run(flow, cfg, n, t, seed)
        _show(ax, image_grid(_as_images(x, cfg)))
        ax.set_title(f"T = {t:g}")
    _savefig(fig, path)


def _nearest(flow, cfg, train_x: Tensor, n: int, temperature, seed: int, path: Path) -> float:
    x = sample_run(flow, cfg, n, temperature, seed).float()
    flat = x.reshape(n, -1)
    data = train_x.reshape(train_x.shape[0], -1).float()
    d = torch.cdist(flat, data)
    dist, idx = d.min(1)
    plt = _plt()
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.3 * cols, 2.8 * rows), squeeze=False)
    imgs, near = _as_images(x, cfg), _as_images(train_x[idx], cfg)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        a, b = axes[2 * r, c], axes[2 * r + 1, c]
        if i < n:
            _show(a, imgs[i])
            _show(b, near[i])
            b.set_title(f"d={dist[i]:.1f}", fontsize=7)
        else:
            a.axis("off")
            b.axis("off")
    fig.suptitle(f"samples (T={temperature:g}, upper rows) and nearest training images")
    _savefig(fig, path)
    return float(dist.median())


@torch.no_grad()
def _density(
    flow, train_x: Tensor, samples: Tensor, path_density: Path, path_samples: Path, box=None
):
    plt = _plt()
    x = train_x[:5000].numpy()
    lo, hi = np.percentile(x, 0.5, 0), np.percentile(x, 99.5, 0)
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if box is not None:  # the data's own domain (angles: [-pi, pi]^2)
        lo, hi = np.asarray(box, dtype=np.float64).T
    g = 200
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], g), np.linspace(lo[1], hi[1], g))
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
    flow.eval()
    if flow.dequantizer is None:
        logp = torch.cat([flow.log_prob(pts[i : i + 8192]) for i in range(0, len(pts), 8192)])
        dens = logp.exp().reshape(g, g).numpy()
    else:
        dens = None
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.6))
    ax[0].scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
    ax[0].set_title("training data")
    if dens is not None:
        ax[1].imshow(
            dens, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), aspect="auto", cmap="viridis"
        )
        ax[1].set_title("model density")
    for a in ax:
        a.set_xlim(lo[0], hi[0])
        a.set_ylim(lo[1], hi[1])
    _savefig(fig, path_density)
    s = samples.numpy()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.6))
    ax[0].scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
    ax[0].set_title("training data")
    ax[1].scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="C1")
    ax[1].set_title(f"{len(s)} model samples")
    for a in ax:
        a.set_xlim(lo[0], hi[0])
        a.set_ylim(lo[1], hi[1])
    _savefig(fig, path_samples)


@torch.no_grad()
def latent(flow, x: Tensor, seed: int = 0) -> Tensor:
    """``z = flow.transform(x)`` (after dequantization for discrete data), flattened."""
    flow.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if flow.dequantizer is not None:
            x, _ = flow.dequantizer(x)
        z = torch.cat([flow.transform(x[i : i + 1024])[0] for i in range(0, len(x), 1024)])
    return z.reshape(-1)


def _latent_plot(z: Tensor, path: Path) -> dict:
    plt = _plt()
    z = z[torch.isfinite(z)].double()
    g = torch.Generator().manual_seed(0)
    if len(z) > 20000:
        z = z[torch.randperm(len(z), generator=g)[:20000]]
    zs = z.sort().values
    n = len(zs)
    q = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].hist(zs.numpy(), bins=80, density=True, alpha=0.6, label="z")
    t = np.linspace(-4, 4, 200)
    ax[0].plot(t, np.exp(-t * t / 2) / math.sqrt(2 * math.pi), label="N(0, 1)")
    ax[0].set_xlim(-5, 5)
    ax[0].legend()
    ax[0].set_title("latent histogram (all dimensions)")
    ax[1].plot(q.numpy(), zs.numpy(), ".", ms=1)
    ax[1].plot([-4, 4], [-4, 4], "k--", lw=0.8)
    ax[1].set_xlabel("standard normal quantile")
    ax[1].set_ylabel("latent quantile")
    ax[1].set_title("QQ plot")
    _savefig(fig, path)
    return {"mean": float(z.mean()), "std": float(z.std()), "values": n}


def write_report(
    run: str | os.PathLike,
    split: str = "val",
    temperatures=(0.5, 0.7, 0.85, 1.0),
    n: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``<run>/report.html`` and its figures; returns the HTML path."""
    from ..io import atomic_write
    from ..objectives import nll as nll_fn

    run = Path(run)
    cfg = run_config(run)
    flow = load_run(run)
    r = cfg["resolved"]
    ds = run_dataset(cfg)
    shape = tuple(r["event_shape"])
    data_shape = tuple(r["data_shape"])
    figdir = run / "report"
    figdir.mkdir(exist_ok=True)
    figs: list[tuple[str, str]] = []
    metrics = read_metrics(run)
    discrete = r.get("levels") is not None
    if _curves(metrics, figdir / "curves.png", discrete):
        figs.append(("Training curves", "report/curves.png"))
    facts: list[tuple[str, str]] = []
    x_split = ds.split(split)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        v = nll_fn(flow, x_split.reshape(-1, *shape))
    facts.append((f"{split} NLL (nats/example)", f"{v:.4f}"))
    if discrete:
        facts.append((f"{split} bits/dim", f"{v / (math.prod(shape) * math.log(2)):.4f}"))
    if len(data_shape) == 3:
        _samples_images(flow, cfg, temperatures, n, seed, figdir / "samples.png")
        figs.append(("Samples at several temperatures", "report/samples.png"))
        t_near = 1.0 if 1.0 in temperatures else temperatures[-1]
        med = _nearest(flow, cfg, ds.train, 16, t_near, seed + 1, figdir / "nearest.png")
        figs.append(
            ("Nearest training image of each sample (memorisation check)", "report/nearest.png")
        )
        facts.append(("median L2 distance sample -> nearest training image", f"{med:.3f}"))
    elif data_shape == (2,):
        s = sample_run(flow, cfg, 2000, 1.0, seed)
        _density(
            flow, ds.train, s, figdir / "density.png", figdir / "samples.png", ds.info.get("box")
        )
        figs.append(("Data and model density", "report/density.png"))
        figs.append(("Samples", "report/samples.png"))
    z = latent(flow, x_split.reshape(-1, *shape), seed)
    zs = _latent_plot(z, figdir / "latent.png")
    figs.append((f"Latent normality check ({split} split)", "report/latent.png"))
    facts.append(("latent mean / std", f"{zs['mean']:.3f} / {zs['std']:.3f}"))
    ep = [m for m in metrics if m.get("type") == "epoch"]
    best = min(ep, key=lambda m: m["val_nll"]) if ep else None
    rows = [
        ("model", f"{cfg['model']['name']} {json.dumps(cfg['model']['kwargs'])}"),
        ("layout", f"{r['layout']} {tuple(r['event_shape'])}"),
        ("parameters", f"{r['parameters']:,}"),
        (
            "data",
            f"{cfg['data']['name']} ({r['examples']['train']} train, "
            f"{r['examples']['val']} val, {r['examples']['test']} test)",
        ),
        ("levels", str(r.get("levels"))),
        ("standardised", "yes (training-split statistics)" if r.get("stats") else "no"),
        ("epochs run", str(len(ep))),
    ]
    if best:
        rows.append(("best epoch (val NLL)", f"{best['epoch']} ({best['val_nll']:.4f})"))
    rows += facts
    table = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    body = "\n".join(
        f'<h2>{html.escape(t)}</h2>\n<img src="{html.escape(p)}" alt="{html.escape(t)}">'
        for t, p in figs
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>flowforge report: {html.escape(run.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
th{{text-align:left;padding-right:1em}}img{{max-width:100%}}</style></head>
<body><h1>flowforge run <code>{html.escape(str(run))}</code></h1>
<table>{table}</table>
{body}
<h2>Configuration</h2><pre>{
        html.escape(json.dumps({k: cfg[k] for k in cfg if k != "resolved"}, indent=2))
    }</pre>
</body></html>
"""
    out = run / "report.html"
    atomic_write(out, page.encode())
    return out


# -- variational inference (flowforge fit-target) ------------------------------------------------


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
    plt = _plt()
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
