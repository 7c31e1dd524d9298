r"""Plots and ``report.html`` for a run (matplotlib, Agg backend).

``write_report(run)`` writes PNGs under ``<run>/report/`` and ``<run>/report.html``, which
links them by relative path, so the folder can be copied or zipped as a whole:

- ``curves.png``: training loss and validation NLL per epoch (bits/dim for discrete data);
- image data: ``samples.png`` (a grid per temperature) and ``nearest.png`` (each sample beside
  its nearest training image in pixel space, a memorisation check);
- 2-D data: ``density.png`` (the data beside the model's density) and ``samples.png``;
- vector data (tables): per-column marginals, the most dependent pairs and the correlation
  matrices against the data, a per-column table (mean, standard deviation, quantiles and the
  KS statistic against what sampling noise gives) and a distance-to-closest-record check of
  the samples against held-out rows (:func:`nearest_check`, a memorisation check);
- every run: ``latent.png``, a histogram and a QQ plot of ``z = flow.transform(x)`` against
  a standard normal.
"""

from __future__ import annotations

import functools
import html
import itertools
import json
import math
import os
import shutil
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._util import fork_rng
from ..core import Flow
from ..distributions import StandardNormal
from .config import MANIFOLD_MODELS
from .data import _chunk_rows, _count, csv_field, describe_bounds
from .errors import WorkbenchError
from .runner import run_dataset
from .runs import (
    MAX_UNREADABLE,
    METRICS_FILE,
    MODEL_FILE,
    REPORT_DIR,
    describe_environment,
    describe_run_status,
    is_report_figure,
    is_report_temporary,
    load_run,
    read_metrics,
    remove_report_leftovers,
    report_folder_name,
    run_config,
    run_identity,
    run_status,
    versioned_figure,
    versioned_token,
)
from .warm_start import preprocessing_words

__all__ = [
    "write_report",
    "save_samples",
    "sample_run",
    "image_grid",
    "write_vi_report",
    "plot_pair",
]


# names from the user's data are drawn as written: "$" would start TeX (a column named a$_$b
# stopped the report with a parser error; R$ turned italic). Set only while a figure is drawn.
_RC = {"text.parse_math": False}


class _Figures:
    """What the report draws with in place of pyplot: figures of their own on an Agg canvas,
    which neither pyplot's list of figures nor the process's backend ever sees (a notebook's
    inline plots and its ``$...$`` labels are left as they were)."""

    @staticmethod
    def subplots(*args, figsize=None, **kwargs):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig) -> None:  # (no pyplot figure to close: the figure goes with its last use)
        fig.clear()


def _plt() -> type[_Figures]:
    return _Figures


def _drawing(fn):
    """``fn`` run under the report's matplotlib settings (:data:`_RC`), the caller's restored
    after it, also when it raises."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapped


def _as_images(x: Tensor, cfg: dict) -> np.ndarray:
    """Samples or data -> ``(N, H, W, C)`` floats in [0, 1]."""
    r = cfg["resolved"]
    shape = tuple(r["data_shape"])
    x = x.reshape(x.shape[0], *shape).float()
    levels = r.get("levels") or 256
    x = (x / (levels - 1)).clamp(0, 1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile ``(N, H, W, C)`` images into one ``(rows*H, cols*W, C)`` array; ``cols`` by
    default makes the grid about as tall as it is wide (strips of 1x16 stack in few columns)."""
    n, h, w, c = images.shape
    cols = cols or max(1, min(n, math.ceil(math.sqrt(n * (h + pad) / (w + pad)))))
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
    c = img.shape[-1]
    # channels a screen has no colours for, side by side in gray: 4 of them too (an array's
    # 4 bands are not an alpha channel: PNG folders with alpha are refused before training)
    if c not in (1, 3):
        img = np.concatenate([img[..., k] for k in range(c)], axis=1)[..., None]
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _angle_box(cfg: dict) -> list | None:
    """A flow on the torus's density lives on ``[-pi, pi]`` in every angle (padding the
    data's range would ask it about points that are not angles)."""
    if cfg["model"]["name"] != "torusflow":
        return None
    return [[-math.pi, math.pi]] * math.prod(cfg["resolved"]["event_shape"])


SAMPLE_CHUNK = 4096  # samples drawn (and checked) per call: memory is the output's and a chunk
PAIR_COLUMNS = 128  # a report's search for dependent pairs: among this many columns at most
SAMPLE_LIMIT = 2**28  # values (1 GiB of float32) one sample command may write
MAX_TEMPERATURES = 8  # sample grids one report draws per figure


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
    dtype = next((p.dtype for p in flow.parameters() if p.is_floating_point()), None)
    out = torch.empty(rows, n, *shape, dtype=dtype)  # (a float64 run's samples: float64)
    clamped = 0.0  # an integer flow's values drawn outside its levels, over all the chunks
    by_column = None  # and for integer columns, each column's share
    bad = 0  # samples with a value that is not finite, counted chunk by chunk (as stored)
    with fork_rng():
        torch.manual_seed(seed)
        for start in range(0, n, SAMPLE_CHUNK):
            m = min(SAMPLE_CHUNK, n - start)
            x = flow.sample(m, context, temperature=temperature)
            part = out[:, start : start + m]
            part.copy_(x.reshape(m, rows, *shape).transpose(0, 1))
            bad += int((~torch.isfinite(part.reshape(rows * m, -1))).any(1).sum())
            clamped += float(getattr(flow, "clamped", 0.0)) * m / n
            by = getattr(flow, "clamped_columns", None)  # (each integer column's, likewise)
            if by is not None:
                part_share = by.detach().cpu() * (m / n)
                by_column = part_share if by_column is None else by_column + part_share
    if hasattr(flow, "clamped"):
        flow.clamped = clamped  # the whole draw's fraction, for the caller to report
    if by_column is not None:
        flow.clamped_columns = by_column
    if bad:
        raise WorkbenchError(
            f"{bad} of {rows * n} samples are not finite (inf or NaN): the model is unstable "
            f"at temperature {temperature:g}; try a lower --temperature or check the run"
        )
    return out.reshape(-1, *shape)


def _table_order(x: Tensor, header, given, info: dict):
    """Samples of a column-conditional run and the context they were given, as rows of the
    table the run was trained on: every column in its place (what ``eval --data`` reads)."""
    context_names, context_rows = given
    ys, cs = info["target_columns"], info["context_columns"]
    c = torch.tensor(context_rows, dtype=torch.float64)
    full = torch.empty(x.shape[0], len(ys) + len(cs), dtype=torch.float64)
    full[:, ys] = x.double()
    full[:, cs] = c.repeat_interleave(x.shape[0] // len(c), 0)
    names = [f"x{j}" for j in range(full.shape[1])]
    if header is not None:
        for j, n in zip(ys, header):
            names[j] = n
        for j, n in zip(cs, context_names):
            names[j] = n
    return full, names


def _exact(v: float) -> str:
    """``v`` in at most 9 significant digits where they hold it exactly (a float32 sample, a
    label), else as Python's shortest round-trip form (a context value 1712345678)."""
    short = f"{v:.9g}"
    return short if float(short) == v else repr(float(v))


def _cell(v: float) -> str:
    """A float32 sample's value in 9 significant digits, its shortest exact form; a whole
    number from 1e9 to 1e16 in plain digits (1701239936, not 1.70123994e+09: a timestamp or an
    amount as the user's file wrote it; float32 holds such values exactly)."""
    short = f"{v:.9g}"
    if "e+" in short and math.isfinite(v) and v == int(v) and abs(v) < 1e16:
        return f"{v:.0f}"
    return short


def _csv_lines(
    x: Tensor, lead: list[str] | None, per: int, chunk: int = 4096, exact=(), wide=False
):
    """The CSV's data lines as encoded chunks of ``chunk`` rows (never the whole text in
    memory); ``lead``: each context row's cells, for ``per`` samples each; ``exact``: the
    columns written in full (a context the user gave, not a float32 sample); ``wide``: every
    column is, a float64 run's samples (``train.dtype``; a float32 run's samples beside its
    contexts are in a float64 table too, and keep 9 digits)."""
    exact = set(range(x.shape[1]) if wide else exact)
    for i in range(0, x.shape[0], chunk):
        rows = [
            ",".join(_exact(v) if j in exact else _cell(v) for j, v in enumerate(row))
            for row in x[i : i + chunk].tolist()
        ]
        if lead is not None:
            rows = [f"{lead[(i + k) // per]},{r}" for k, r in enumerate(rows)]
        yield ("\n".join(rows) + "\n").encode()


@_drawing
def _whole(a: np.ndarray, chunk: int = 1 << 20) -> bool:
    """Whether every value of ``a`` is a whole number, a chunk at a time (no copy of ``a``)."""
    flat = a.reshape(-1)
    return all(
        bool((flat[i : i + chunk] == np.rint(flat[i : i + chunk])).all())
        for i in range(0, len(flat), chunk)
    )


def check_npz_out(path, given) -> None:
    """Refuse an ``.npz`` samples file for a run that is not label-conditional (``given``:
    the contexts :func:`sample_run` is given; an ``.npz`` holds each sample's label)."""
    from .data import WorkbenchError

    if Path(path).suffix.lower() == ".npz" and (given is None or list(given[0]) != ["label"]):
        raise WorkbenchError(
            f"--out {path}: an .npz holds the samples with their labels, for a label-conditional "
            "run; write this run's samples to a .npy or .csv file"
        )


def save_samples(
    x: Tensor,
    cfg: dict,
    path: str | os.PathLike,
    title: str = "",
    given=None,
    overwrite: bool = True,
) -> None:
    """Write samples as .npy, .csv or .png (a grid for images, a scatter for 2-D data), or, for
    a label-conditional run, as .npz with arrays ``x`` and ``labels`` (what ``eval --data``
    reads).

    A CSV has one sample per row (an image's values flattened), under the data's column names
    when the run knows them. ``given``: ``(names, rows)``, the contexts the samples were drawn
    for, as :func:`sample_run` orders them (each row's samples together), so that every sample
    says what it was given: a label starts each line; context columns take their places in the
    table the run was trained on (a file ``eval --data`` reads).
    ``overwrite=False``: a file that appeared at ``path`` meanwhile is kept (FileExistsError)."""
    from ..io import atomic_write, write_npy
    from .data import WorkbenchError

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):  # the header, then the array's own memory
        a = x.cpu().numpy()
        levels = cfg.get("resolved", {}).get("levels")
        shape = cfg.get("resolved", {}).get("data_shape") or ()
        if len(shape) == 3 and levels and levels <= 2**16 and _whole(a):
            # images as integers, as the data came (and as train, eval and compress read them)
            a = a.astype(np.uint8 if levels <= 256 else np.uint16)
        if suffix == ".npy":
            write_npy(path, a, replace=overwrite)
            return
        check_npz_out(path, given)
        import io as _io

        per = len(a) // len(given[1])  # (each label's samples together, as sample_run draws)
        labels = np.repeat(np.asarray([r[0] for r in given[1]], dtype=np.int64), per)
        buf = _io.BytesIO()
        np.savez(buf, x=a, labels=labels)  # (as eval --data reads a labelled file)
        atomic_write(path, [buf.getbuffer()], replace=overwrite)
        return
    if suffix == ".csv":
        x = x.reshape(x.shape[0], -1)
        names = cfg.get("resolved", {}).get("columns")
        header = list(names) if names and len(names) == x.shape[1] else None
        lead, per, exact = None, 1, ()
        info = cfg.get("resolved", {}).get("context") or {}
        if given is not None and x.shape[0] and info.get("kind") == "columns":
            x, header = _table_order(x, header, given, info)  # as eval --data reads a table
            exact = info["context_columns"]
        elif given is not None and x.shape[0]:
            context_names, context_rows = given
            per = x.shape[0] // len(context_rows)  # samples per context row, row by row
            lead = [",".join(_exact(v) for v in r) for r in context_rows]
            if header is None:
                header = [f"x{j}" for j in range(x.shape[1])]
            header = [*context_names, *header]
        head = [(",".join(csv_field(str(n)) for n in header) + "\n").encode()] if header else []
        from .data import run_dtype

        wide = run_dtype(cfg) == torch.float64
        lines = _csv_lines(x, lead, per, exact=exact, wide=wide)
        atomic_write(path, itertools.chain(head, lines), replace=overwrite)
        return
    if suffix != ".png":
        raise WorkbenchError(
            f"unsupported output {path.name}; expected .png, .npy, .csv or (labels) .npz"
        )
    plt = _plt()
    shape = tuple(cfg["resolved"]["data_shape"])
    if len(shape) == 3:  # one row per context given (a label's samples side by side)
        per = x.shape[0] // len(given[1]) if given is not None and given[1] else None
        grid = image_grid(_as_images(x, cfg), cols=per if per and len(given[1]) > 1 else None)
        fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1]))
        _show(ax, grid)
    elif shape == (2,):
        fig, ax = plt.subplots(figsize=(5, 5))
        rows = given[1] if given is not None and given[1] else [None]
        per = max(x.shape[0] // len(rows), 1)
        for k, row in enumerate(rows):  # each context's samples in a colour of their own
            part = x[k * per : (k + 1) * per]
            said = None if row is None else ", ".join(_exact(float(v)) for v in row)
            ax.scatter(part[:, 0], part[:, 1], s=3, alpha=0.6, label=said)
        if len(rows) > 1:
            ax.legend(title=", ".join(map(str, given[0])), fontsize=7, markerscale=3)
        if cfg["resolved"].get("kind") == "points":  # (the toys: one unit on both axes)
            ax.set_aspect("equal")
        names = cfg["resolved"].get("columns")
        if isinstance(names, list) and len(names) == 2:  # (a table's: each its own unit)
            ax.set_xlabel(_label(names[0]))
            ax.set_ylabel(_label(names[1]))
    else:
        raise WorkbenchError(
            f"PNG output needs image or 2-D data (this run's data has shape {shape}); "
            "use .npy or .csv"
        )
    if title:
        ax.set_title(title)
    _savefig(fig, path, overwrite)


@_drawing
def _savefig(fig, path: Path, overwrite: bool = True) -> None:
    import io as _io

    from ..io import atomic_write

    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    atomic_write(path, buf.getvalue(), replace=overwrite)


SPIKE_WINDOW = 5  # values before a spike it is judged against; the longest run of spikes
MAX_SPIKE_LABELS = 3  # spikes labelled with their value (the rest counted in the legend)


def spike_mask(curve, gap: float) -> np.ndarray:
    """Which values of ``curve`` (in order) are spikes: a run of at most :data:`SPIKE_WINDOW`
    values, each more than ``gap`` above the lowest of the :data:`SPIKE_WINDOW` values before
    the run, that falls back below that or ends the curve. So a falling start is a descent,
    not spikes (the first value has none before it), and neither a slowly rising curve nor a
    lasting step up is spikes."""
    y = np.asarray(curve, dtype=np.float64)
    w, out = SPIKE_WINDOW, np.zeros(len(y), dtype=bool)
    k = 1
    while k < len(y):
        limit = y[max(0, k - w) : k].min() + gap
        end = k
        while end < len(y) and y[end] > limit:
            end += 1
        if end > k and end - k <= w:
            out[k:end] = True
        k = max(end, k + 1)
    return out


PLOT_MAX = 1e100  # the largest magnitude a curve's value is drawn at (a damaged history's)


def robust_limits(*curves, factor: float = 10.0) -> tuple[float, float]:
    """y-limits that keep curves readable through spikes. A spike is a value, or a short run of
    them, more than ``factor`` spreads above the values before it (:func:`spike_mask`, each
    curve on its own), where the spread is the median's height above the smallest value (all curves
    together), but at least 1% of the median's size (at least 0.01). The limits span every
    other value, a falling start and a validation curve above the training one included;
    spikes lie above the upper limit and are drawn at the top edge."""
    finite = [[x for x in c if x is not None and math.isfinite(x)] for c in curves]
    # (values above PLOT_MAX count as that, and those below -PLOT_MAX, never drawn, not at all:
    # their spreads would overflow in the plotting)
    finite = [np.minimum(np.asarray([x for x in c if x >= -PLOT_MAX], dtype=np.float64),
                         PLOT_MAX) for c in finite]  # fmt: skip
    finite = [c for c in finite if len(c)]
    if not finite:
        return 0.0, 1.0
    v = np.concatenate(finite)
    bottom, med = float(v.min()), float(np.median(v))
    rise = max(med - bottom, 0.01 * max(1.0, abs(med)))
    kept = np.concatenate([c[~spike_mask(c, factor * rise)] for c in finite])
    top = float(kept.max())
    pad = 0.05 * max(top - bottom, rise)
    return bottom - pad, top + pad


def _plot_clipped(ax, x, y, top: float, annotate: bool = True, **kw) -> np.ndarray:
    """Plot ``y`` with values above ``top`` drawn as red marks at the top edge; the mask of
    those values. With ``annotate``, the highest of them are labelled (:func:`_label_spikes`);
    a panel of several curves labels their spikes together instead."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    over = ~(y <= top)  # NaN and inf count as spikes too
    ax.plot(x, np.where(over | (y < -PLOT_MAX), np.nan, y), **kw)  # (below: off every chart)
    if over.any():
        ax.plot(x[over], np.full(over.sum(), top), "v", color="red", ms=6, clip_on=False)
        if annotate:
            _label_spikes(ax, x[over], y[over], top, (float(x.min()), float(x.max())))
    return over


def _label_spikes(ax, x, y, top: float, extent: tuple[float, float]) -> None:
    """Label at most :data:`MAX_SPIKE_LABELS` of the spikes ``(x, y)`` of one panel with their
    values, the highest first, each apart from the others by an eighth of the ``extent`` of
    the x-axis (labels never overprint, whichever curve they come from)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    span = (extent[1] - extent[0]) or 1.0
    labelled: list[float] = []
    for i in np.argsort(-np.nan_to_num(y, nan=np.inf), kind="stable"):
        if len(labelled) == MAX_SPIKE_LABELS:
            break
        if all(abs(x[i] - u) > 0.12 * span for u in labelled):
            labelled.append(float(x[i]))
            ax.annotate(f"{y[i]:.3g}", (x[i], top), fontsize=7, color="red",
                        xytext=(2, -10), textcoords="offset points")  # fmt: skip


def _series(records: list[dict], key: str, at: str, per: float = 1) -> tuple[list, list, list]:
    """The finite values of ``key`` against ``record[at] / per`` (a damaged or hand-edited
    history's missing, NaN or non-numeric entries are left out), and the records' ids."""
    xs, ys, ids = [], [], []
    for m in records:
        x, y = m.get(at), m.get(key)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (x, y)):  # fmt: skip
            xs.append(x / per)
            ys.append(y)
            ids.append(id(m))
    return xs, ys, ids


def _curve_panel(ax, ep, steps, key_train, key_val, per_epoch, ylabel) -> set:
    """One panel of curves; the logged values off the chart, as ``(record id, curve)`` pairs
    (the same value in nats and in bits/dim is one pair)."""
    train, val = _series(ep, key_train, "epoch"), _series(ep, key_val, "epoch")
    logged = ([], [], [])
    if key_train == "train_loss":
        logged = _series(steps, "loss", "step", per_epoch)
    lo, hi = robust_limits(train[1], val[1], *([logged[1]] if logged[1] else []))
    off: set = set()
    curves = [(logged, "step", dict(color="0.6", lw=0.8, label="train (logged steps)"))]
    curves += [(train, "train", dict(marker=".", label="train"))]
    curves += [(val, "val", dict(marker=".", label="validation"))]
    spikes_x, spikes_y, xs_all = [], [], []  # the panel's spikes, labelled together
    for (xs, ys, ids), role, kw in curves:
        if role == "step" and len(xs) == 1:  # one logged step: a point, not an unseen line
            kw = {**kw, "marker": "."}
        if xs or (role != "step" and (train[0] or val[0])):
            over = _plot_clipped(ax, xs, ys, hi, annotate=False, **kw)
            off |= {(ids[i], role) for i in np.flatnonzero(over)}
            spikes_x += [xs[i] for i in np.flatnonzero(over)]
            spikes_y += [ys[i] for i in np.flatnonzero(over)]
            xs_all += list(xs)
    if spikes_x:
        _label_spikes(ax, spikes_x, spikes_y, hi, (min(xs_all), max(xs_all)))
    ax.set_ylim(lo, hi)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(_integer_ticks())  # (a run of one epoch: no ticks of 0.96)
    ax.set_ylabel(ylabel)
    if off:
        ax.plot([], [], "v", color="red", label=f"off the chart ({len(off)})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finite values logged", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    return off


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _validation(ep: list[dict], objective: str) -> tuple[str, str]:
    """The epoch records' validation key and what it is: the NLL, or (``val``) the loss of
    another objective (flow matching, M-flows)."""
    if not ep or "val_nll" in ep[0]:
        return "val_nll", "NLL"
    return "val", f"{objective} loss"


def _non_finite(v) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


@_drawing
def _curves(metrics: list[dict], path: Path, discrete: bool, objective: str = "nll") -> int | None:
    """Training curves, clipped to robust limits with the spikes marked; the number of
    logged values off the chart, each counted once over the panels (None: no metrics). Another
    objective than the NLL (flow matching, M-flows) logs its validation loss as ``val`` and is
    plotted under its name."""
    ep = [m for m in metrics if m.get("type") == "epoch"]
    steps = [m for m in metrics if m.get("type") == "step"]
    if not ep and not steps:
        return None
    plt = _plt()
    two = discrete and ep and "val_bpd" in ep[0]
    fig, ax = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6.5, 4), squeeze=False)
    per_epoch = max(1, ep[0]["step"]) if ep else 1
    key_val, what = _validation(ep, objective)
    label = "NLL (nats/example)" if key_val == "val_nll" else what
    spikes = _curve_panel(ax[0, 0], ep, steps, "train_loss", key_val, per_epoch, label)
    if two:  # the same values in bits/dim: a spike in both panels is counted once
        spikes |= _curve_panel(ax[0, 1], ep, [], "train_bpd", "val_bpd", per_epoch, "bits/dim")
    _savefig(fig, path)
    return len(spikes)


@_drawing
def _samples_images(flow, cfg, temps, n, seed, path: Path) -> dict:
    """The samples' grids at each temperature; returns the share of the sampled values
    clamped to the data's levels at each (:func:`clamped_fact`)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(temps), figsize=(3.2 * len(temps), 3.6), squeeze=False)
    clamped = {}
    for ax, t in zip(axes[0], temps):
        x = sample_run(flow, cfg, n, t, seed)
        clamped[t] = float(getattr(flow, "clamped", 0.0))
        _show(ax, image_grid(_as_images(x, cfg)))
        ax.set_title(f"T = {t:g}")
    _savefig(fig, path)
    return clamped


def clamped_fact(clamped: dict, levels) -> tuple[str, str] | None:
    """The report's row for sampled values clamped to the data's levels (``clamped``: the
    share at each temperature), as `flowforge sample` warns of them; None if none were."""
    shares = {t: c for t, c in clamped.items() if c > 0}
    if not shares:
        return None
    each = ", ".join(f"{c:.2%} at T = {t:g}" for t, c in shares.items())
    return (
        "warning: samples clamped",
        f"of the sampled values, {each} fell outside the data's {levels} levels (0 to "
        f"{levels - 1}) and were clamped to them (the figures show them on the extreme "
        "levels): the model puts that mass outside the data's range",
    )


@_drawing
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
@_drawing
def _density(
    flow,
    train_x: Tensor,
    samples: Tensor,
    path_density: Path,
    path_samples: Path,
    box=None,
    bounds=None,
    names=None,
):
    plt = _plt()
    x = train_x[:5000].numpy()
    shown = f"training data ({_count(len(x), 'row')}" + (
        f" of {len(train_x):,})" if len(train_x) > len(x) else ")"
    )
    lo, hi = _box(x, 0.15)
    if box is not None:  # the data's own domain (angles: [-pi, pi]^2)
        lo, hi = np.asarray(box, dtype=np.float64).T
    lower, upper = _declared_bounds(bounds)
    for j in range(2):  # not past a declared bound: the model has no density there
        if lower[j] is not None:
            lo[j] = max(lo[j], lower[j])
        if upper[j] is not None:
            hi[j] = min(hi[j], upper[j])
    g = 200
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], g), np.linspace(lo[1], hi[1], g))
    # (in the model's precision: a float64 run's 1.7e9 +- 35 is one float32 value)
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=_dtype(flow))
    inside = torch.ones(len(pts), dtype=torch.bool)  # (the bounds are open: their edges out)
    for j in range(2):
        if lower[j] is not None:
            inside &= pts[:, j] > lower[j]
        if upper[j] is not None:
            inside &= pts[:, j] < upper[j]
    flow.eval()
    overflowed = 0
    if flow.dequantizer is None:
        # in float64: a density of data at a scale of 1e-20 is 1e40 per unit^2, past float32
        dens = torch.zeros(len(pts), dtype=torch.float64)
        keep = pts[inside]
        if len(keep):
            logp = torch.cat([_grid_log_prob(flow, c) for c in keep.split(8192)]).double()
            overflowed = int((~torch.isfinite(logp) & ~(logp == -math.inf)).sum())
            dens[inside] = torch.nan_to_num(logp, nan=-math.inf, posinf=-math.inf).exp()
            overflowed += int(torch.isinf(dens).sum())  # (past float64's range too: dark)
            dens = torch.nan_to_num(dens, posinf=0.0)
        dens = dens.reshape(g, g).numpy()
    else:
        dens = None
    s = samples.numpy()
    xlim, ylim = (lo[0], hi[0]), (lo[1], hi[1])
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.6))
    ax[0].scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
    ax[0].set_title(shown)
    if dens is not None:
        image = ax[1].imshow(
            dens, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), aspect="auto", cmap="viridis"
        )
        fig.colorbar(image, ax=ax[1], label="density (per unit of x per unit of y)")
        # the model's mass in the box, as the share of its samples there: a sum over the grid
        # under-counts a density that peaks at a declared bound (94% where 99% lie inside)
        share = 1 - _off_axes_count(s[:, 0], s[:, 1], xlim, ylim) / max(len(s), 1)
        held = f" ({share:.0%} of its samples in this box)" if len(s) and share < 0.99 else ""
        ax[1].set_title(
            "model density"
            + held
            + (
                f" ({overflowed:,} of the {g * g:,} grid points overflow the model: dark)"
                if overflowed
                else ""
            ),
            fontsize=None if not (overflowed or held) else 8,
        )
    else:  # a discrete likelihood: no density over the plane to draw
        ax[1].set_title("model density: none drawn")
        ax[1].text(
            0.5, 0.5, "the model scores integers\n(a discrete likelihood);\nsee samples.png",
            ha="center", va="center", transform=ax[1].transAxes,
        )  # fmt: skip
    for a in ax:
        a.set_xlim(lo[0], hi[0])
        a.set_ylim(lo[1], hi[1])
        if names:
            a.set_xlabel(names[0])
            a.set_ylabel(names[1])
    _savefig(fig, path_density)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.6))
    ax[0].scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
    ax[0].set_title(shown)
    ax[1].scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="C1")
    ax[1].set_title(f"{len(s):,} model samples{_off_axes(s[:, 0], s[:, 1], xlim, ylim)}")
    for a in ax:
        a.set_xlim(lo[0], hi[0])
        a.set_ylim(lo[1], hi[1])
        if names:
            a.set_xlabel(names[0])
            a.set_ylabel(names[1])
    _savefig(fig, path_samples)


@torch.no_grad()
@_drawing
def _density_1d(flow, train_x: Tensor, bounds, name, path: Path, box=None, n: int = 400) -> None:
    """A one-column table's figure: the training data's histogram under the model's density
    (per unit of the column), over the data's range, within its declared bounds; ``box``: the
    data's own domain (an angle's ``[[-pi, pi]]``), the range drawn."""
    plt = _plt()
    x = train_x.reshape(len(train_x), -1)[:, 0].double().numpy()
    lo, hi = _box(x[:, None], 0.15)
    if box is not None:  # (a circle flow's angles: no density beyond them)
        lo, hi = np.asarray(box, dtype=np.float64).T
    lower, upper = _declared_bounds(bounds)
    lo0 = lo[0] if lower[0] is None else max(lo[0], lower[0])
    hi0 = hi[0] if upper[0] is None else min(hi[0], upper[0])
    grid = np.linspace(lo0, hi0, n + 2)[1:-1]  # (the bounds are open: their edges out)
    flow.eval()
    pts = torch.tensor(grid[:, None], dtype=_dtype(flow))
    logp = torch.cat([_grid_log_prob(flow, c) for c in pts.split(8192)]).double()
    dens = torch.nan_to_num(logp, nan=-math.inf, posinf=-math.inf).exp().numpy()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    edges = np.linspace(lo0, hi0, 61)
    _hist(ax, x, edges, alpha=0.35, label=f"training data ({_count(len(x), 'row')})")
    ax.plot(grid, dens, color="C1", label="model density")
    ax.set_xlim(lo0, hi0)
    ax.set_xlabel(name or "x")
    ax.set_ylabel(f"density (per unit of {name or 'x'})")
    ax.legend(fontsize=8)
    _savefig(fig, path)


def _grid_log_prob(flow, pts: Tensor) -> Tensor:
    """``flow.log_prob`` at the report's own grid points, with NaN where the model overflows
    (points the user did not give: drawn dark and counted, not an error that loses the
    report)."""
    from ..core import NaNLogProb

    try:
        return flow.log_prob(pts)
    except NaNLogProb:
        held = flow.validate_args
        flow.validate_args = False
        try:
            return flow.log_prob(pts)
        finally:
            flow.validate_args = held


def _off_axes_count(u, v, xlim, ylim) -> int:
    """The points of a scatter that its axes ``xlim`` and ``ylim`` leave out."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    out = (u < xlim[0]) | (u > xlim[1]) | (v < ylim[0]) | (v > ylim[1]) | ~np.isfinite(u + v)
    return int(out.sum())


def _off_axes(u, v, xlim, ylim) -> str:
    """`` (8 off the axes)`` for the points of a scatter that its axes leave out (the
    model's mass where the data has none: counted, never silently dropped), else ``""``."""
    n = _off_axes_count(u, v, xlim, ylim)
    return f" ({n:,} off the axes)" if n else ""


def _declared_bounds(bounds) -> tuple[list, list]:
    """``(lower, upper)`` of a run's recorded bounds for two columns (None: unbounded), from
    the config (data: anything malformed counts as no bound)."""
    out = []
    for k in ("lower", "upper"):
        v = bounds.get(k) if isinstance(bounds, dict) else None
        ok = isinstance(v, list) and len(v) == 2
        out.append([
            float(b) if ok and isinstance(b, (int, float)) and not isinstance(b, bool)
            and math.isfinite(b) else None
            for b in (v if ok else [None, None])
        ])  # fmt: skip
    return out[0], out[1]


@torch.no_grad()
def latent(flow, x: Tensor, seed: int = 0, context: Tensor | None = None, flat: bool = True):
    """``z = flow.transform(x)`` (after dequantization for discrete data), flattened unless
    ``flat=False`` (then one row per example)."""
    flow.eval()
    with fork_rng():
        torch.manual_seed(seed)
        if flow.dequantizer is not None:
            x, _ = flow.dequantizer(x, context)
        parts = []
        for i in range(0, len(x), 1024):
            c = None if context is None else context[i : i + 1024]
            xb, c, _ = flow._prepare(x[i : i + 1024], c)  # (raw contexts as the flow maps them)
            parts.append(flow.transform(xb, c)[0])
        z = torch.cat(parts)
    return z.reshape(-1) if flat else z.reshape(z.shape[0], -1)


@_drawing
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
    _hist(ax[0], zs.numpy(), np.linspace(-5, 5, 81), alpha=0.6, label="z")
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
    mean = float(z.mean()) if n else None  # None: undefined (no value, or one for a std)
    return {"mean": mean, "std": float(z.std()) if n > 1 else None, "values": n}


# -- tables: the model against the data, column by column -----------------------------------------

MAX_COLUMNS = 16  # columns shown in the per-column panels
PAIRS = 4  # pairwise panels (the most dependent pairs)


def _finite_rows(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a).all(1)]


def _box(x: np.ndarray, pad: float = 0.1, also=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-column plot limits around the central 99% of ``x``, in float64. A column with one
    value (a single row, a constant column) takes its limits from ``x`` and ``also`` (the
    samples) together, or failing that gets a box of its size around it (at least 1)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = np.percentile(x, 0.5, 0), np.percentile(x, 99.5, 0)
    if also is not None and len(also) and (lo == hi).any():
        both = np.concatenate([x, np.asarray(also, dtype=np.float64)])
        lo2, hi2 = np.percentile(both, 0.5, 0), np.percentile(both, 99.5, 0)
        lo, hi = np.where(lo == hi, lo2, lo), np.where(lo == hi, hi2, hi)
    size = np.maximum(np.abs(lo), np.abs(hi))  # (a spread of 1e-20 at 1e-20 is a spread:
    spread = hi - lo  # data in SI units of farads or kilograms of particles)
    width = np.where((spread > 1e-9 * size) & (spread > 0), spread, np.where(size > 0, size, 1.0))
    return lo - pad * width, hi + pad * width


def _hist(ax, v: np.ndarray, edges: np.ndarray, **kw) -> None:
    """A density histogram normalised by all of ``v``, values outside the edges included (so
    mass off the plot lowers the curve, and none inside is no division by zero)."""
    w = np.full(len(v), 1.0 / (max(len(v), 1) * (edges[1] - edges[0])))
    ax.hist(v, edges, weights=w, **kw)


def dependence(x: np.ndarray, bins: int | None = None) -> np.ndarray:
    """Pairwise dependence of the columns of ``x``: the mutual information (nats) of a 2-D
    histogram on each column's quantile bins, so monotone and non-monotone dependence count
    alike, less the Miller-Madow estimate of the histogram's bias ((cells - rows - columns +
    1) / 2n over the occupied ones; independent columns of 100 rows read about 0 instead of
    0.7), floored at 0. ``bins``: per column (default: 12, fewer for fewer than 720 rows, so
    that a cell holds about 5 rows). A ``(d, d)`` matrix with zeros on the diagonal, from one
    matrix product of the columns' one-hot bins."""
    n, d = x.shape
    if bins is None:
        bins = int(np.clip(round(math.sqrt(n / 5)), 2, 12))
    if n == 0 or d < 2:
        return np.zeros((d, d))
    onehot = np.zeros((n, d * bins), dtype=np.float32)
    for j in range(d):
        edges = np.unique(np.quantile(x[:, j], np.linspace(0, 1, bins + 1)[1:-1]))
        onehot[np.arange(n), j * bins + np.searchsorted(edges, x[:, j], side="right")] = 1.0
    joint = (onehot.T @ onehot).astype(np.float64).reshape(d, bins, d, bins) / n
    marg = onehot.sum(0).astype(np.float64).reshape(d, bins) / n
    outer = marg[:, :, None, None] * marg[None, None, :, :]  # p_i(a) p_j(b)
    nz = joint > 0
    ratio = np.where(nz, joint / np.where(nz, outer, 1.0), 1.0)
    mi = (joint * np.log(ratio)).sum(axis=(1, 3))
    cells = nz.sum(axis=(1, 3))
    used = (marg > 0).sum(1)
    mi -= (cells - used[:, None] - used[None, :] + 1) / (2 * n)
    out = np.maximum(mi, 0.0)
    np.fill_diagonal(out, 0.0)
    return out


def _corr(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlations of the columns (NaN in the rows and columns of a constant column,
    where a correlation is undefined) and the mask of non-constant columns."""
    x = np.asarray(x, dtype=np.float64)
    varies = np.ptp(x, 0) > 0
    u = x - x.mean(0)
    u = u / np.where(varies, np.sqrt((u * u).sum(0)), 1.0)
    c = u.T @ u
    c[~varies] = np.nan
    c[:, ~varies] = np.nan
    np.fill_diagonal(c, 1.0)
    return c, varies


NOISE_LEVEL = 0.05  # "beyond sampling noise": what a perfect model's samples pass 1 time in 20


def _max_abs_quantile(sd: np.ndarray, q: float = 1 - NOISE_LEVEL) -> float:
    """The ``q`` quantile of the largest ``|X_k|`` of independent ``X_k ~ N(0, sd_k^2)``:
    the ``t`` where the product of ``erf(t / (sd_k sqrt 2))`` is ``q``, by bisection (exact,
    and cheap for any number of pairs)."""
    sd = torch.as_tensor(np.asarray(sd, dtype=np.float64)[np.asarray(sd) > 0])
    if not len(sd):
        return 0.0
    lo, hi = 0.0, float(sd.max()) * 12
    for _ in range(60):
        t = (lo + hi) / 2
        p = float(torch.log(torch.special.erf(t / (sd * math.sqrt(2)))).sum())
        lo, hi = (t, hi) if p < math.log(q) else (lo, t)
    return hi


def _corr_fact(cd, cs, vd, vs, names, n_data: int, n_samples: int) -> tuple[str, bool]:
    """The largest off-diagonal ``|samples - data|`` correlation, the pair of columns it is
    of and both correlations, beside what sampling noise alone gives (what a perfect model's
    largest difference stays below 19 times in 20, with ``n_data`` rows and ``n_samples``
    samples), and whether it is beyond that; or n/a and why."""
    both = vd & vs
    pick = np.outer(both, both) & ~np.eye(len(both), dtype=bool)
    if not pick.any():
        return "n/a (fewer than two columns vary in both the data and the samples)", False
    diff = np.where(np.triu(pick, 1), np.abs(cs - cd), -1.0)
    i, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
    # each pair's difference has a standard deviation of about (1 - r^2) sqrt(1/n + 1/m)
    # (Fisher); the 95% quantile of the largest of them, taken as independent
    sd = (1 - np.clip(cd[np.triu(pick, 1)], -1, 1) ** 2) * math.sqrt(1 / n_data + 1 / n_samples)
    floor = _max_abs_quantile(sd)
    beyond = int((diff > floor).sum())
    out = (
        f"{diff[i, j]:.3f} (sampling noise alone: about {floor:.3f} or less, 19 times in 20, "
        f"with {n_data:,} rows and {n_samples:,} samples), {names[i]} & {names[j]}: data "
        f"{cd[i, j]:.2f}, samples {cs[i, j]:.2f}"
    )
    if beyond:
        out += f"; {_count(beyond, 'pair')} of {int(np.triu(pick, 1).sum()):,} beyond the noise"
    if not both.all():
        left = ", ".join(names[j] for j in np.flatnonzero(~both)[:5])
        out += f" (left out, constant in the data or the samples: {left})"
    return out, beyond > 0


def _few_ticks(ax) -> None:
    """At most 4 or 5 ticks a side, short labels (a large scale in an offset: "1e5"), so that
    the labels of a wide-valued column ("100000120000" on an income axis) never run together."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=4))
        f = ScalarFormatter(useOffset=True)
        f.set_powerlimits((-3, 4))
        axis.set_major_formatter(f)
        axis.get_offset_text().set_fontsize(7)
    ax.tick_params(labelsize=7)


@_drawing
def table_figures(
    data: np.ndarray,
    samples: np.ndarray,
    z: np.ndarray | None,
    names,
    figdir,
    split: str = "val",
    total: int | None = None,
):
    """Per-column marginals, the most dependent pairs, correlation matrices and a per-column
    latent QQ for vector data; returns ``[(title, file)]`` and facts ``[(name, value)]``.
    ``data``: rows of the ``split`` (of ``total`` rows there), named in the figures."""
    plt = _plt()
    figs, facts = [], []
    labels = _labels(names)  # (the figures'; the facts name the columns in full)
    data, samples = _finite_rows(data), _finite_rows(samples)
    total = max(total or 0, len(data))
    rows_shown = f"{len(data):,} of {total:,} rows" if total > len(data) else _count(total, "row")
    side = f"data ({split}, {rows_shown})"  # what every figure's data side is
    d = data.shape[1]
    lo, hi = _box(data, also=samples)
    shown = list(range(min(d, MAX_COLUMNS)))
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(shown):
            ax.axis("off")
            continue
        j = shown[k]
        edges = np.linspace(lo[j], hi[j], 41)
        _hist(ax, data[:, j], edges, histtype="stepfilled", alpha=0.35, label=side)
        _hist(ax, samples[:, j], edges, histtype="step", lw=1.5, color="C1",
              label=f"{len(samples):,} samples")  # fmt: skip
        ax.set_title(labels[j], fontsize=9)
        _few_ticks(ax)
        if k == 0:
            ax.legend(fontsize=7)
    more = f" (first {len(shown)} of {d} columns)" if d > len(shown) else ""
    title = f"marginals: {side} vs {len(samples):,} model samples{more}"
    # (wrapped to the figure: one column's is 3.2 inches wide, and the title was cut off)
    fig.suptitle("\n".join(textwrap.wrap(title, int(11 * 3.2 * cols))), fontsize=10)
    _savefig(fig, figdir / "marginals.png")
    figs.append((f"Per-column marginals: {side} vs samples", "report/marginals.png"))
    if d >= 2:
        k = min(d, PAIR_COLUMNS)  # (the estimate is quadratic in d)
        dep = dependence(data[:5000, :k])
        iu = np.triu_indices(k, 1)
        order = np.argsort(-dep[iu])[:PAIRS]
        pairs = [(int(iu[0][k]), int(iu[1][k])) for k in order]
        fig, axes = plt.subplots(len(pairs), 2, figsize=(8, 3.6 * len(pairs)), squeeze=False)
        m = min(len(data), len(samples), 3000)  # as many points on each side
        pair_side = f"data ({split}, {m:,} of {total:,} rows)" if m < total else side
        for (i, j), (a, b) in zip(pairs, axes):
            a.scatter(data[:m, i], data[:m, j], s=2, alpha=0.35)
            b.scatter(samples[:m, i], samples[:m, j], s=2, alpha=0.35, color="C1")
            # (wrapped to the panel: long column names ran into the next panel's title)
            a.set_title("\n".join(textwrap.wrap(
                f"{pair_side}: {labels[i]} vs {labels[j]} (MI {dep[i, j]:.2f} nats)", 60)),
                fontsize=8)  # fmt: skip
            off = _off_axes(samples[:m, i], samples[:m, j], (lo[i], hi[i]), (lo[j], hi[j]))
            b.set_title("\n".join(textwrap.wrap(f"{m:,} samples{off}: {labels[i]} vs {labels[j]}",
                                                 60)), fontsize=8)  # fmt: skip
            for ax in (a, b):
                ax.set_xlim(lo[i], hi[i])
                ax.set_ylim(lo[j], hi[j])
                ax.set_xlabel(labels[i], fontsize=8)
                ax.set_ylabel(labels[j], fontsize=8)
                _few_ticks(ax)
        _savefig(fig, figdir / "pairs.png")
        among = f" (among the first {k} of {d} columns)" if k < d else ""
        title = f"The most dependent pairs of columns{among}: {side} vs samples"
        figs.append((title, "report/pairs.png"))
        n_rows = min(len(data), len(samples))
        if n_rows < 3:  # a correlation of 2 rows is always +-1
            why = f"n/a (only {_count(n_rows, 'row')} to correlate; at least 3 needed)"
            facts.append(("largest correlation difference (samples - data)", why))
        else:
            (cd, vd), (cs, vs) = _corr(data), _corr(samples)
            fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
            for ax, c, t, cmap, v in (
                (axes[0], cd, side, "RdBu_r", 1),
                (axes[1], cs, f"{len(samples):,} samples", "RdBu_r", 1),
                (axes[2], cs - cd, "samples - data (beyond ±0.5: at ±0.5)", "PuOr_r", 0.5),
            ):
                import matplotlib

                # (an undefined correlation, a column constant in a split, in grey: not 0's white)
                shade = matplotlib.colormaps[cmap].with_extremes(bad="0.6")
                im = ax.imshow(np.ma.masked_invalid(c), cmap=shade, vmin=-v, vmax=v)
                ax.set_title(f"correlation: {t}", fontsize=10)
                ticks = range(d) if d <= MAX_COLUMNS else []
                ax.set_xticks(ticks)
                ax.set_yticks(ticks)
                if d <= MAX_COLUMNS:
                    ax.set_xticklabels([labels[j] for j in ticks], rotation=90, fontsize=7)
                    ax.set_yticklabels([labels[j] for j in ticks], fontsize=7)
                fig.colorbar(im, ax=ax, fraction=0.046, extend="both" if v < 1 else "neither")
            _savefig(fig, figdir / "correlations.png")
            figs.append((f"Correlation matrices: {side} vs samples", "report/correlations.png"))
            fact, beyond = _corr_fact(cd, cs, vd, vs, names, len(data), len(samples))
            key = "largest correlation difference (samples - data)"
            facts.append((f"warning: {key}" if beyond else key, fact))
    if z is not None:
        z = _finite_rows(z)
        n = len(z)
        q = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).numpy()
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= len(shown):
                ax.axis("off")
                continue
            j = shown[k]
            ax.plot(q, np.sort(z[:, j]), ".", ms=1.5)
            ax.plot([-4, 4], [-4, 4], "k--", lw=0.8)
            # (after couplings and permutations latent j is not column j: no column's name)
            ax.set_title(f"latent {j}", fontsize=9)
            ax.tick_params(labelsize=7)
        fig.supxlabel("standard normal quantile", fontsize=9)
        fig.supylabel("latent quantile", fontsize=9)
        _savefig(fig, figdir / "latent_columns.png")
        some = f" (the first {len(shown)} of {d} dimensions)" if len(shown) < d else ""
        figs.append((f"Per-dimension latent QQ plots{some}", "report/latent_columns.png"))
    return figs, facts


# -- tables: fidelity and memorisation checks ------------------------------------------------------

SMALL_SPLIT = 200  # a validation split of fewer rows: a table's checks use the training split
TABLE_ALL = 40  # the per-column table shows every column of a table this wide or narrower,
TABLE_WORST = 20  # else this many, those with the largest KS statistic
QUANTILES = (0.01, 0.5, 0.99)  # the per-column table's quantiles
NEAREST_SAMPLES = 2000  # samples the nearest-row check measures, at most (and held-out rows)
NEAREST_TRAIN = 20_000  # training rows it measures them against, at most ...
NEAREST_VALUES = 2**21  # ... and at most this many training values (rows x columns)
NEAREST_CHUNK = 2**22  # distances computed at once (32 MiB of float64)
COPY_FRACTION = 0.01  # a copy: nearer a training row than this share of the held-out median
NEAR_RATIO = 0.5  # samples' median distance below this share of the held-out rows': a warning


def ks_noise(n: int, m: int, columns: int = 1, level: float = NOISE_LEVEL) -> float:
    """The two-sample Kolmogorov-Smirnov statistic that ``m`` samples from the distribution
    of ``n`` data rows stay below in every one of ``columns`` columns with probability
    ``1 - level``: the asymptotic critical value ``sqrt(-ln(level / (2 columns)) (n + m) /
    (2 n m))`` (level / columns each: Bonferroni), at most 1."""
    # (at most 1, the statistic's own bound: a few rows leave no test at all)
    return min(1.0, math.sqrt(-math.log(level / (2 * columns)) * (n + m) / (2 * n * m)))


def ks_statistics(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each column's two-sample Kolmogorov-Smirnov statistic: the largest gap between the
    empirical distribution functions of ``a[:, j]`` and ``b[:, j]`` (0 to 1)."""
    out = np.zeros(a.shape[1])
    for j in range(a.shape[1]):
        x, y = np.sort(a[:, j]), np.sort(b[:, j])
        v = np.concatenate([x, y])
        gap = np.searchsorted(x, v, "right") / len(x) - np.searchsorted(y, v, "right") / len(y)
        out[j] = np.abs(gap).max()
    return out


def column_statistics(data: np.ndarray, samples: np.ndarray) -> dict:
    """Per column, of the data and of the samples (finite rows of each): ``mean``, ``std``
    and ``quantiles`` (:data:`QUANTILES`), each ``(2, ...)`` (data first); ``ks``, the KS
    statistic between them; ``noise``, what sampling noise alone keeps every column's KS
    below 19 times in 20 (:func:`ks_noise`); ``beyond``, the columns above it; ``rows`` and
    ``samples``, the counts."""
    data = _finite_rows(np.asarray(data, dtype=np.float64))
    samples = _finite_rows(np.asarray(samples, dtype=np.float64))
    both = (data, samples)
    ks = ks_statistics(data, samples)
    noise = ks_noise(len(data), len(samples), data.shape[1])
    return {
        "mean": np.stack([a.mean(0) for a in both]),
        "std": np.stack(
            [a.std(0, ddof=1) if len(a) > 1 else np.full(a.shape[1], np.nan) for a in both]
        ),
        "quantiles": np.stack([np.quantile(a, QUANTILES, axis=0) for a in both]),
        "ks": ks,
        "noise": noise,
        "beyond": ks > noise,
        "rows": len(data),
        "samples": len(samples),
    }


def _num(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v + 0.0:.4g}"  # (+ 0.0: no "-0")


def _ks_fact(st: dict, names, split: str) -> tuple[str, str]:
    """The report's row on the per-column KS statistics (of the samples against ``split``'s
    rows): a warning naming the columns beyond sampling noise, worst first, or the largest
    where none is."""
    key = "column distributions (KS statistic, samples vs data)"
    counts = f"{_count(st['rows'], f'{split} row')} and {_count(st['samples'], 'sample')}"
    order = np.argsort(-st["ks"], kind="stable")
    bad = [j for j in order if st["beyond"][j]]
    d = len(st["ks"])
    if not bad:
        j = order[0]
        return key, (
            f"{'the column' if d == 1 else f'all {d} columns'} within sampling noise (the "
            f"largest {st['ks'][j]:.3f}, {names[j]}; noise: up to {st['noise']:.3f} with "
            f"{counts}); the per-column table below"
        )
    each = ", ".join(f"{names[j]} {st['ks'][j]:.3f}" for j in bad[:OUTSIDE_NAMED])
    more = f", and {len(bad) - OUTSIDE_NAMED:,} more" if len(bad) > OUTSIDE_NAMED else ""
    return f"warning: {key}", (
        f"{len(bad)} of {_count(d, 'column')} {'differs' if len(bad) == 1 else 'differ'} "
        f"from the data beyond sampling noise (KS above {st['noise']:.3f}, what sampling "
        f"noise alone stays below in every column 19 times in 20 with {counts}): "
        f"{each}{more}; the per-column table below"
    )


def _columns_html(st: dict, names, side: str) -> tuple[str, str]:
    """The per-column table of the data (``side`` says which rows) against the samples: a
    title and its HTML (every column up to :data:`TABLE_ALL`, else the
    :data:`TABLE_WORST` with the largest KS statistic)."""
    d = len(st["ks"])
    shown = list(range(d))
    which = ""
    if d > TABLE_ALL:
        shown = sorted(np.argsort(-st["ks"], kind="stable")[:TABLE_WORST].tolist())
        which = (
            f"<p>The {TABLE_WORST} of the {d} columns with the largest KS statistic, in table "
            f"order; {int(st['beyond'].sum())} of the {d} are beyond sampling noise.</p>\n"
        )
    qs = [f"{q:.0%}" for q in QUANTILES]
    head = ["column", "mean", "std", *(f"{q} quantile" for q in qs), "KS", ""]
    rows = []
    for j in shown:
        cells = [names[j]]
        cells += [f"{_num(a)} / {_num(b)}" for a, b in (st["mean"][:, j], st["std"][:, j])]
        cells += [f"{_num(a)} / {_num(b)}" for a, b in st["quantiles"][:, :, j].T]
        cells += [f"{st['ks'][j]:.3f}", "beyond noise" if st["beyond"][j] else ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    n, m = st["rows"], st["samples"]
    text = (
        f"<p>Each cell gives the data's value, then the samples'. KS is the two-sample "
        f"Kolmogorov-Smirnov statistic, the largest gap between the two columns' cumulative "
        f"distributions (0: alike, 1: apart). Samples drawn from "
        f"the data's own distribution keep it below {st['noise']:.3f} in every column 19 "
        f"times in 20 with these counts: the 5% critical value, Bonferroni-corrected for "
        f"{_count(d, 'column')}, sqrt(-ln(0.05 / (2 &times; {d})) (n + m) / (2 n m)) with "
        f"n = {n:,} rows and m = {m:,} samples. Columns above it are marked "
        f"&ldquo;beyond noise&rdquo;.</p>\n"
    )
    table = (
        '<table class="columns">\n<tr>'
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>\n"
        + "\n".join(rows)
        + "\n</table>"
    )
    return f"Per-column statistics: {side} vs {m:,} samples", text + which + table


def nearest_distances(train: Tensor, queries: Tensor) -> Tensor:
    """Each row of ``queries``' Euclidean distance to its closest row of ``train`` (float64),
    :data:`NEAREST_CHUNK` distances at a time: the closest found from ``torch.cdist``, its
    distance computed again from the difference (exact for a copy, where the expansion
    cdist uses for speed loses the digits of a small distance)."""
    step = max(1, NEAREST_CHUNK // max(len(train), 1))
    out = []
    for a in range(0, len(queries), step):
        q = queries[a : a + step]
        idx = torch.cdist(q, train).argmin(1)
        out.append(torch.linalg.vector_norm(q - train[idx], dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _rows(c: Tensor) -> Tensor:
    """Rows as a 2-D float64 table (a record's values flattened; a label as one column)."""
    return (c.flatten(1) if c.dim() > 1 else c.unsqueeze(1)).double()


def _records(x, c, rows) -> Tensor:
    """Rows ``rows`` (a slice or indices) of a table ``x`` in float64, led by the same rows of
    their context ``c`` where there is one."""
    x = _rows(torch.as_tensor(x)[rows])  # (the rows first: never a float64 copy of all)
    return x if c is None else torch.cat([_rows(torch.as_tensor(c)[rows]), x], 1)


def nearest_check(train, samples, held, seed: int = 0, contexts=None) -> dict:
    """The memorisation check of a table: each sample's and each held-out row's distance to
    its closest training row, every column divided by its training standard deviation.

    At most :data:`NEAREST_SAMPLES` samples and held-out rows (the first) and
    :data:`NEAREST_TRAIN` training rows (and :data:`NEAREST_VALUES` training values; drawn
    at random with ``seed``) are measured. Returns the counts used and in all
    (``samples``, ``held``, ``train``, each ``(used, total)``), each side's ``median`` and
    ``p5`` (5th percentile) distance and its share of ``copies`` (nearer a training row than
    :data:`COPY_FRACTION` of the held-out median; ``copy_distance``), each ``(samples,
    held)``, and ``warning``: the words of a sign of memorisation (the samples' median below
    :data:`NEAR_RATIO` of the held-out rows', or 1% or more of them copies, at least twice the
    held-out rows' share), else None.

    ``contexts``: a conditional run's ``(train, samples, held)`` context rows, which lead each
    record (the samples drawn for the held-out rows' contexts: only their modelled values
    differ)."""
    g = np.random.default_rng(seed)
    ct, cs, ch = contexts or (None, None, None)
    totals = (len(samples), len(held), len(train))
    width = math.prod(train.shape[1:]) + (0 if ct is None else _rows(ct[:1]).shape[1])
    cap = max(1, min(NEAREST_TRAIN, NEAREST_VALUES // max(width, 1)))
    if len(train) > cap:  # (capped before a copy: never all of a large training split)
        rows = torch.as_tensor(np.sort(g.choice(len(train), cap, replace=False)))
    else:
        rows = slice(None)
    t = _records(train, ct, rows)
    s = _records(samples, cs, slice(NEAREST_SAMPLES))
    h = _records(held, ch, slice(NEAREST_SAMPLES))
    s, h = s[torch.isfinite(s).all(1)], h[torch.isfinite(h).all(1)]
    sd = t.std(0) if len(t) > 1 else torch.ones(t.shape[1], dtype=torch.float64)
    scale = torch.where(sd > 0, sd, torch.ones_like(sd))  # (a column constant here: as is)
    t, s, h = t / scale, s / scale, h / scale
    ds, dh = nearest_distances(t, s).numpy(), nearest_distances(t, h).numpy()
    med = tuple(float(np.median(v)) if len(v) else math.nan for v in (ds, dh))
    p5 = tuple(float(np.percentile(v, 5)) if len(v) else math.nan for v in (ds, dh))
    near = COPY_FRACTION * med[1] if math.isfinite(med[1]) else 0.0
    copies = tuple(float(((v < near) | (v == 0)).mean()) if len(v) else math.nan for v in (ds, dh))
    warning = None
    if len(ds) and len(dh):
        if med[0] < NEAR_RATIO * med[1]:
            warning = (
                f"the samples lie much nearer the training rows than held-out rows do "
                f"(median {med[0]:.3g} against {med[1]:.3g})"
            )
        elif copies[0] >= 0.01 and copies[0] >= 2 * copies[1]:
            warning = (
                f"{_pct(copies[0])} of the samples copy a training row (held-out rows: "
                f"{_pct(copies[1])})"
            )
    return {
        "samples": (len(s), totals[0]),
        "held": (len(h), totals[1]),
        "train": (len(t), totals[2]),
        "median": med,
        "p5": p5,
        "copies": copies,
        "copy_distance": near,
        "warning": warning,
    }


def _nearest_fact(res: dict, held_name: str) -> tuple[str, str]:
    key = "distance to the closest training row (memorisation check)"
    (ns, _), (nh, _) = res["samples"], res["held"]
    if not nh:
        return key, f"n/a (the {held_name} split has no rows to compare the samples with)"
    said = (
        f"median {res['median'][0]:.3g} for {_count(ns, 'sample')}, {res['median'][1]:.3g} "
        f"for the {_count(nh, f'{held_name} row')} (standardised units); copies of a training "
        f"row: {_pct(res['copies'][0])} of the samples, {_pct(res['copies'][1])} of the "
        f"{held_name} rows"
    )
    if res["warning"]:
        return f"warning: {key}", (
            f"{res['warning']}: the model may reproduce its training rows; {said}"
        )
    ms, mh = res["median"]
    how = (
        f"the samples' median is {ms / mh:.2f} of the held-out rows'"
        if mh > 0 and math.isfinite(ms / mh)
        else "the held-out rows' median is 0"
    )
    return key, (
        f"{said}; {how} (a warning below {NEAR_RATIO:g}, or with 1% or more copies): no sign "
        "of memorisation"
    )


def _nearest_html(res: dict, held_name: str) -> tuple[str, str]:
    """The memorisation check's section: a title and its HTML."""
    (ns, ts), (nh, th), (nt, tt) = res["samples"], res["held"], res["train"]
    capped = []
    if ns < ts:
        capped.append(f"the first {ns:,} of {ts:,} samples")
    if nh < th:
        capped.append(f"the first {nh:,} of the {th:,} {held_name} rows")
    if nt < tt:
        capped.append(f"{nt:,} of the {tt:,} training rows, drawn at random")
    cap = f" To bound its cost it measures {', '.join(capped)}." if capped else ""
    text = (
        f"<p>The distance from each sample, and from each row of the {held_name} split "
        f"(rows the model was not trained on), to its closest training row, with every "
        f"column divided by its training standard deviation.{cap} A model that generalises "
        f"draws samples about as far from the training rows as held-out rows are; samples "
        f"much nearer the training rows than the held-out rows (a far smaller median or 5th "
        f"percentile), or many copies, mean that the model reproduces its training rows "
        f"(memorisation), which matters before sharing the samples in place of the data. A "
        f"copy: nearer a training row than {COPY_FRACTION:.0%} of the held-out rows' median "
        f"distance ({res['copy_distance']:.3g}).</p>\n"
    )
    rows = [
        ("samples", ns, 0),
        (f"held-out rows ({held_name} split)", nh, 1),
    ]
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (
            who, f"{k:,}", _num(res["median"][i]), _num(res["p5"][i]),
            "n/a" if not k else _pct(res["copies"][i]),
        )) + "</tr>"
        for who, k, i in rows
    )  # fmt: skip
    head = ["", "rows", "median distance", "5th percentile", "copies"]
    table = (
        '<table class="nearest">\n<tr>'
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>\n"
        + body
        + "\n</table>"
    )
    title = "Distance to the closest training row (memorisation check)"
    return title, text + table


# -- conditional runs ------------------------------------------------------------------------------


@_drawing
def _class_grid(flow, cfg, classes, n, temperature, seed, path):
    """One row of ``n`` samples per class (label-conditional image runs)."""
    from .data import label_context

    info = cfg["resolved"]["context"]
    ctx = label_context(classes, info)
    x = sample_run(flow, cfg, n, temperature, seed, context=ctx)
    clamped = float(getattr(flow, "clamped", 0.0))
    plt = _plt()
    grid = image_grid(_as_images(x, cfg), cols=n)
    fig, ax = plt.subplots(figsize=(0.9 * n + 1, 0.9 * len(classes) + 0.6))
    _show(ax, grid)
    h = grid.shape[0] / len(classes)
    ax.set_yticks([h * (i + 0.5) for i in range(len(classes))])
    names = dict(zip(info["classes"], info.get("names") or ()))
    ax.set_yticklabels([f"{c} {names[c]}" if c in names else str(c) for c in classes])
    ax.set_ylabel("class")
    total = len(info["classes"])
    some = f" (the first {len(classes)} of {total} classes)" if total > len(classes) else ""
    ax.set_title(f"{n} samples per class{some}, T={temperature:g}")
    _savefig(fig, path)
    return clamped


def _context_value(v: float) -> str:
    """A context value as the table holds it, to 4 significant digits."""
    return f"{float(v) + 0.0:.4g}"  # (+ 0.0: no "-0")


@_drawing
def _per_context(flow, cfg, ds, split, names, seed, path, rows: int = 4, n: int = 500):
    """For a few rows of the split: samples given that row's context against its true value."""
    ctx = ds.split_context(split)[:rows]
    truth = ds.split(split)[:rows].numpy()
    raw = ctx.numpy()  # (the model standardises them itself)
    x = sample_run(flow, cfg, n, 1.0, seed, context=ctx).reshape(len(ctx), n, -1).numpy()
    plt = _plt()
    fig, axes = plt.subplots(1, len(ctx), figsize=(3.6 * len(ctx), 3.6), squeeze=False)
    for k, ax in enumerate(axes[0]):
        s = _finite_rows(x[k])
        if s.shape[1] == 1:
            ax.hist(s[:, 0], 40, density=True, color="C1", alpha=0.6, label="samples")
            ax.axvline(truth[k, 0], color="k", lw=1.5, label="true value")
            ax.set_xlabel(names[0], fontsize=8)
        else:
            ax.scatter(s[:, 0], s[:, 1], s=3, alpha=0.4, color="C1", label="samples")
            ax.plot(truth[k, 0], truth[k, 1], "k*", ms=12, label="true value")
            ax.set_xlabel(names[0], fontsize=8)
            ax.set_ylabel(names[1], fontsize=8)
        named = cfg["resolved"].get("context_column_names") or []
        named = named if len(named) == raw.shape[1] else [None] * raw.shape[1]
        given = ", ".join(
            _context_value(v) if m is None else f"{_label(m)} {_context_value(v)}"
            for m, v in zip(named[:4], raw[k][:4])
        ) + (", ..." if raw.shape[1] > 4 else "")
        ax.set_title(f"{split} row {k}: context {given}", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7)
    _savefig(fig, path)


def _context_words(info: dict, r: dict) -> str:
    """What a conditional run is conditioned on, by the columns' names where the table had
    a header (``r``: the run's resolved config)."""
    if info["kind"] == "label":
        named = [f"{c} {n}" for c, n in zip(info["classes"], info.get("names") or ())]
        return f"class labels {info['classes']}" + (f" ({', '.join(named)})" if named else "")
    given, modelled = r.get("context_column_names"), r.get("columns")
    if given and modelled:
        return f"columns {', '.join(given)} (modelled: {', '.join(modelled)})"
    return f"columns {info['context_columns']} (modelled: columns {info['target_columns']})"


MAX_LABEL = 30  # characters of a column name a figure shows


def _label(name: str) -> str:
    """A column name as a figure's label: at most :data:`MAX_LABEL` characters, on one line (a
    long one broke the figures' layout and printed matplotlib's warning)."""
    name = " ".join(str(name).split())
    return name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "…"


def _labels(names) -> list[str]:
    """Column names as figure labels (:func:`_label`), told apart: names cut to the same label
    keep their endings instead (``measurement_of_q…_number_12``), or failing that get their
    index."""
    out = [_label(n) for n in names]
    if len(set(out)) == len(out):
        return out
    head = (MAX_LABEL - 1) // 2
    tail = MAX_LABEL - 1 - head
    out = [" ".join(str(n).split()) for n in names]
    out = [n if len(n) <= MAX_LABEL else f"{n[:head]}…{n[-tail:]}" for n in out]
    seen = Counter(out)
    return [f"{n} [{j}]" if seen[n] > 1 else n for j, n in enumerate(out)]


def _column_names(cfg: dict, d: int) -> list[str]:
    """The modelled columns' names (a CSV header, kept in ``resolved.columns``), else their
    indices in the table."""
    r = cfg["resolved"]
    stored = r.get("columns")
    if isinstance(stored, list) and len(stored) == d:
        return [str(n) for n in stored]
    ctx = r.get("context") or {}
    index = ctx.get("target_columns") or list(range(d))
    return [f"column {i}" for i in index]


def _epochs_run(ep: list, cfg: dict, run) -> str:
    """``65 of 200`` (the epochs logged, of the configured ``train.epochs``), why training
    ended (an early stop, with its patience), the seconds it took (the epochs' own), and
    whether the best epoch is the last (the model was still improving)."""
    k = len(ep)
    n = cfg.get("train", {}).get("epochs")
    ok = isinstance(n, int) and not isinstance(n, bool) and n > 0
    said = f"{k} of {n} (train.epochs)" if ok else str(k)
    how = _ended(run)
    if how == "early-stopped":
        patience = cfg.get("train", {}).get("patience")
        said += "; early-stopped" + (
            f": no better validation for {patience} epochs (train.patience)"
            if isinstance(patience, int) and not isinstance(patience, bool)
            else ""
        )
    times = [r["time"] for r in ep if isinstance(r.get("time"), (int, float))]
    if times and all(math.isfinite(t) and t >= 0 for t in times):
        said += f"; {_seconds(sum(times))} of training (the epochs' own time)"
    if ep and ep[-1].get("best") is True and how != "early-stopped" and k > 1:
        said += "; the best epoch is the last: the model was still improving (train it longer)"
    return said


def _ended(run) -> str | None:
    """How a run's training ended, as its checkpoint records it: ``"finished"``,
    ``"early-stopped"``, or None (unfinished, or no readable checkpoint to tell)."""
    from .runs import CKPT_FILE, _checkpoint_counters

    counters = _checkpoint_counters(Path(run) / CKPT_FILE)
    return counters["finished"] if counters else None


def _split_seed(cfg: dict) -> str:
    """``; split seed 3 (data.seed)`` where the run's data were split with a seed other than
    the default 0 (another seed: other examples in each split, so other figures)."""
    from .data import FIXED_SPLITS

    seed = cfg.get("data", {}).get("seed", 0)
    fixed = str(cfg.get("data", {}).get("name")).lower() in FIXED_SPLITS  # (a seed changes none)
    return f"; split seed {seed} (data.seed)" if seed and not fixed else ""


def _seconds(s: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 4 min``."""
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def _standardised(resolved: dict, flow) -> str:
    from ..transforms import DataStandardize

    if resolved.get("whiten"):
        return "yes, and decorrelated (data.whiten: the training split's Ledoit-Wolf covariance)"
    if resolved.get("stats"):
        return "yes, by the workbench (training-split statistics)"
    if any(isinstance(m, DataStandardize) for m in flow.modules()):
        return "yes, by the model's first layer (DataStandardize, set from a training batch)"
    return "no"


def _init_words(rec: dict, flow_config) -> str:
    """Where a run's model started (``resolved.init_from``): the run, its best epoch, the hash
    of its model.ff."""
    said = str(rec.get("run"))
    if rec.get("path") and str(rec["path"]) != said:
        said += f" ({rec['path']})"
    epoch = rec.get("best_epoch")
    said += f": its best model (epoch {epoch})" if isinstance(epoch, int) else ": its best model"
    sha = rec.get("model_sha256")
    if isinstance(sha, str):
        said += f", model.ff SHA-256 {sha[:16]}..."
    return f"{said}; {preprocessing_words(flow_config)}"


def _model_words(model: dict, sized: bool = False) -> str:
    """The model's name and the arguments the run gave; ``sized``: the sizing rule set some
    others (its own row says which)."""
    kw = model.get("kwargs") or {}
    rest = "sized to the data" if sized else "builder defaults"
    if not kw:
        return f"{model['name']} ({rest})"
    given = ", ".join(f"{k}={json.dumps(v)}" for k, v in kw.items())
    return f"{model['name']} with {given}" + (f" (the rest {rest})" if sized else "")


def _levels_words(levels) -> str:
    if levels is None:
        return "continuous data"
    return f"{levels} (discrete data: integers 0 to {levels - 1})"


MIN_TRAIN = 20  # fewer training examples than this: a small-data warning
MAX_PARAMS_PER_VALUE = 100  # more parameters than this per training value: the same
MIN_SCORED = 10  # fewer val or test examples than this: their NLLs are noted as fragile


def _small_data(r: dict, splits) -> list[tuple[str, str]]:
    """Warnings for a run whose data are tiny for its model, or whose NLLs (on ``splits``)
    rest on a few examples."""
    n, params = r.get("examples") or {}, r.get("parameters")
    out = []
    train, per = n.get("train"), math.prod(r["event_shape"])
    if train and params and (train < MIN_TRAIN or params > MAX_PARAMS_PER_VALUE * train * per):
        out.append((
            "warning: little training data",
            f"{_count(train, 'training example')} ({_count(train * per, 'value')}) for "
            f"{params:,} parameters ({params / (train * per):,.0f} per value): the model can "
            "memorise them, so its training loss says little about new data; a smaller model "
            "(--model-kwargs) or more data would help",
        ))  # fmt: skip
    few = [
        f"{name}: {n[name]}"
        for name in splits
        if name != "train" and isinstance(n.get(name), int) and n[name] < MIN_SCORED
    ]
    if few:
        out.append((
            "warning: few examples scored",
            f"the NLL figures below rest on few examples ({', '.join(few)}); other examples "
            "could give quite different ones",
        ))  # fmt: skip
    return out


def _two_val_nlls(logged: float, res: dict, cfg: dict) -> str:
    """Why the best epoch's logged val NLL and the report's rescoring of it differ."""
    gap = f"{abs(logged - res['nll']):.4g} nats"
    if res.get("noise"):
        logged_draws = _count(int(cfg.get("train", {}).get("val_samples", 1)), "draw")
        draws = _count(res["samples"], "draw")
        return (
            f"the best epoch's {logged:.4f} was scored during training, with {logged_draws} "
            f"of {res['noise']} noise seeded by the trainer; the val NLL row rescores the "
            f"saved model as `flowforge eval` does ({draws}, seed {res['seed']}). Both "
            f"estimate the same NLL: the {gap} between them is the noise alone "
            "(`flowforge eval --samples 10` averages more draws)"
        )
    if "ode" in res:
        return (
            f"the best epoch's {logged:.4f} was scored during training with the model's own "
            "ODE settings; the val NLL row rescores the saved model as `flowforge eval` does "
            f"(exact trace, tight tolerances); they differ by {gap}"
        )
    return (
        f"the best epoch's {logged:.4f} is the value logged during training; the val NLL row "
        f"rescores the saved model as `flowforge eval` does; they differ by {gap}"
    )


MODEL_READS = 5  # the most times a report reads a training run's model and metrics again


def _model_and_metrics(run: Path) -> tuple:
    """The run's best model and its metrics records (and the damaged lines' numbers), read
    together: a run still training replaces its model file (atomically) whenever validation
    improves, so both are read again until the file is the same before and after. Every
    number of a report is then of one model, and its curves reach that model's epoch (an
    audit: a report of a training run gave the best epoch of one model and the NLLs of a
    later one)."""
    for i in range(MODEL_READS):
        if i:
            time.sleep(0.1 * i)  # (a trainer between its model and its record: moments)
        before = _identity(run / MODEL_FILE)
        flow = load_run(run)
        damaged: list[int] = []
        metrics = read_metrics(run, damaged)
        if _identity(run / MODEL_FILE) == before and (
            i == MODEL_READS - 1 or not _record_pending(run)  # (still pending: as it is)
        ):
            return flow, metrics, damaged
    raise WorkbenchError(
        f"{run}: its {MODEL_FILE} changed each of the {MODEL_READS} times the report read it "
        "(a run still training, improving every epoch): run the report again, or once it has "
        "finished"
    )


def _record_pending(run: Path) -> bool:
    """Whether a run still training has written a better model and not yet the epoch's record
    that says so (its model file newer than its metrics): the trainer writes the model first."""
    try:
        newer = (run / MODEL_FILE).stat().st_mtime_ns > (run / METRICS_FILE).stat().st_mtime_ns
    except OSError:
        return False
    status = run_status(run) if newer else None  # (a run copied with new times: finished)
    # (a lock of another host's is kept as "training", though it may be a copy's: not waited on)
    return bool(status) and status["state"] == "training" and "host" not in status


def _identity(path: Path) -> tuple | None:
    """What changes when a file is replaced or written (None: no such file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def write_report(
    run: str | os.PathLike,
    split: str = "val",
    temperatures=None,
    n: int = 64,
    seed: int = 0,
    summary: dict | None = None,
    test: bool = True,
    out: str | os.PathLike | None = None,
) -> Path:
    """Write ``<run>/report.html`` and its figures; returns the HTML path.

    ``out``: a folder to write ``report.html`` and ``report/`` into instead of the run (a
    read-only run, a run shared with others): a new folder (its parent must exist), or one
    that holds nothing but an earlier report.

    The page scores ``split`` and, with ``test``, the test split too; ``test=False`` leaves
    the test split unscored and unshown (comparing the runs of a sweep on validation alone).

    ``temperatures`` (at most :data:`MAX_TEMPERATURES`) sets the sampling temperatures of an
    image run's figures: one grid each (default 0.5, 0.7, 0.85 and 1 for an unconditional run,
    1 and 0.7 for the per-class grids of a label-conditional one). A table run's samples are
    drawn at T = 1, to be compared with the data; the report notes temperatures given for one.
    ``summary``: a dict to fill with the page's headline facts (``flowforge report --json``).
    """
    run = Path(run)
    if not test and split == "test":
        raise WorkbenchError(
            "the report is asked to leave the test split out (--no-test) and to be of it "
            "(--split test): give one of them"
        )
    if temperatures is not None:
        temperatures = tuple(float(t) for t in temperatures)
        if not 1 <= len(temperatures) <= MAX_TEMPERATURES or not all(
            math.isfinite(t) and t >= 0 for t in temperatures
        ):
            raise WorkbenchError(
                f"temperatures: expected 1 to {MAX_TEMPERATURES} finite numbers >= 0, got "
                f"{', '.join(f'{t:g}' for t in temperatures[: MAX_TEMPERATURES + 1])}"
                + (" ..." if len(temperatures) > MAX_TEMPERATURES + 1 else "")
            )
    cfg = run_config(run)
    dest = run if out is None else report_destination(out, run)
    folder = dest / REPORT_DIR
    if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
        raise WorkbenchError(
            f"{folder} is not the report's folder (a file or a link); move it away and rerun"
        )
    flow, metrics, damaged = _model_and_metrics(run)
    if not isinstance(flow, Flow):
        raise WorkbenchError(
            f"{run}: flowforge report has no report for a {cfg['model']['name']} model yet; use "
            "flowforge eval and flowforge sample"
        )
    ds = run_dataset(cfg, checks=False)  # (the data checks' warnings: in the run's config)
    if ds.density_measure == "sphere" or cfg["model"]["name"] == "sphereflow":
        # (latents on a cylinder: no plot here fits them)
        raise WorkbenchError(
            f"{run}: flowforge report has no report for a density on the sphere yet; use "
            "flowforge eval and flowforge sample (and scripts/manifold_plots.py for figures)"
        )
    # the figures go to a folder of their own first and replace report/'s only when the whole
    # report has been made: a report that fails leaves the last one as it was
    remove_report_leftovers(dest)  # (a killed report's; a live one's stay)
    try:
        figdir = Path(
            tempfile.mkdtemp(prefix=report_folder_name(), suffix=".tmp", dir=os.path.realpath(dest))
        )
    except OSError as e:  # (a read-only run: said of the run, not of a temporary name)
        elsewhere = "; --out FOLDER writes it elsewhere" if out is None else ""
        raise WorkbenchError(
            f"cannot write the report into {dest}: {e.strerror or e}{elsewhere}"
        ) from None
    try:
        splits = tuple(dict.fromkeys((split, "test") if test else (split,)))
        return _write_report(
            run,
            cfg,
            flow,
            (metrics, damaged),
            ds,
            splits,
            temperatures,
            n,
            seed,
            figdir,
            summary,
            dest,
        )
    finally:
        shutil.rmtree(figdir, ignore_errors=True)


def report_destination(out, run: Path) -> Path:
    """``report --out``: the folder the page and its figures go to, made if it is new (its
    parent must exist: a mistyped path is not made). A folder that holds anything but an
    earlier report (``report.html``, ``report/``, a killed report's temporary folder), or that
    lies inside the run, is refused: a report never writes among a user's files."""
    path = Path(out)
    if not str(out).strip():
        raise WorkbenchError("--out is empty; expected a folder for the report")
    if path.exists() and path.resolve() == run.resolve():
        return run
    if run.resolve() in path.resolve().parents:
        raise WorkbenchError(
            f"--out {out} is inside the run {run}; give a folder outside it (or leave --out "
            "out to write the report into the run)"
        )
    if os.path.islink(path) or (os.path.lexists(path) and not path.is_dir()):
        raise WorkbenchError(f"--out {out} is not a folder (a file or a link)")
    if path.is_dir():
        other = sorted(
            f.name for f in path.iterdir()
            if f.name not in ("report.html", REPORT_DIR) and not is_report_temporary(f.name)
        )  # fmt: skip
        if other:
            raise WorkbenchError(
                f"--out {out} holds other files ({', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}); give a new folder, or one that holds "
                "only an earlier report"
            )
        return path
    if not path.parent.is_dir():
        raise WorkbenchError(f"--out {out}: there is no folder {path.parent}; create it first")
    try:
        path.mkdir()
    except OSError as e:
        raise WorkbenchError(f"cannot make --out {out}: {e.strerror or e}") from None
    return path


OUTSIDE_SHARE = 0.01  # samples beyond a column's training range worth naming the column for
OUTSIDE_NAMED = 6  # columns the out-of-range warning names (then "and N more columns")


BOUND_KEYS = ("lower", "upper")


def _pct(share: float) -> str:
    """A share as a percentage: one decimal from 1% up ("5.0%"), two significant digits
    below ("0.43%", "0.033%"), never a rounded 0 for a share that is not 0."""
    if share >= 0.01 or share == 0:
        return f"{share:.1%}"
    return f"{100 * share:.2g}%"


def _sign_words(kinds: set) -> str:
    """A value of the other sign than every training value of its column, as said of the
    columns ``kinds`` holds (``"negative"`` for one of a column of values >= 0,
    ``"positive"`` for one of values <= 0)."""
    if kinds == {"negative"}:
        return "a negative value in a column whose training values are all >= 0"
    if kinds == {"positive"}:
        return "a positive value in a column whose training values are all <= 0"
    return "a value of the other sign than all of its column's training values"


def outside_ranges(x, cfg: dict) -> str | None:
    """One line on a table run's samples beyond their columns' training ranges (a bounded or
    positive column drawn past its bounds); None where no column is named, or for a run that
    recorded no ranges.

    It names each column where 1% or more of the samples fall outside (:data:`OUTSIDE_SHARE`)
    and each column with any sample of the other sign than all its training values (a
    negative value where every training value is >= 0, a positive one where every value is
    <= 0: an impossible value, not a tail), whatever its share; the first
    :data:`OUTSIDE_NAMED` of them (those of the other sign first, then by share) with their
    shares and ranges, then how many more. It also gives the share of sample rows with a
    value outside any column's range, beside what draws from the data's own distribution give
    (a draw passes the range of n training rows with probability 2 / (n + 1), so a row of d
    columns at most 2d / (n + 1)), and the share with a value of the other sign. The samples
    are looked at a chunk of rows at a time. A flow on the torus or the sphere gets none: its
    samples lie on its manifold, where a column's range says nothing (a mode across the seam
    at pi fills [-pi, pi]), and data.bounds does not apply."""
    if (cfg.get("model") or {}).get("name") in MANIFOLD_MODELS:
        return None
    ranges = cfg.get("resolved", {}).get("ranges")
    if not isinstance(ranges, list) or not ranges or x.dim() != 2 or x.shape[1] != len(ranges):
        return None
    if not len(x) or not all(  # (a config is data: anything else, no verdict)
        isinstance(r, list) and len(r) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
        for r in ranges
    ):  # fmt: skip
        return None
    d = len(ranges)
    lo, hi = torch.tensor(ranges, dtype=torch.float64).T
    nonneg, nonpos = lo >= 0, hi <= 0  # (a column of zeros alone: constant, refused)
    outside = torch.zeros(d, dtype=torch.int64)
    flipped = torch.zeros(d, dtype=torch.int64)  # values of the other sign than the data's
    rows_out = rows_flipped = 0
    low = torch.full((d,), math.inf, dtype=torch.float64)
    high = torch.full((d,), -math.inf, dtype=torch.float64)
    step = _chunk_rows(d)  # rows at a time: never a copy of all
    for a in range(0, len(x), step):
        v = x[a : a + step].double()
        out = (v < lo) | (v > hi)
        flip = (nonneg & (v < 0)) | (nonpos & (v > 0))
        outside += out.sum(0)
        flipped += flip.sum(0)
        rows_out += int(out.any(1).sum())
        rows_flipped += int(flip.any(1).sum())
        low = torch.minimum(low, v.min(0).values)
        high = torch.maximum(high, v.max(0).values)
    n = len(x)
    share = outside.double() / n  # (as the mean of the 0/1 flags: sum / n, exact sums)
    named = [j for j in range(d) if share[j] >= OUTSIDE_SHARE or flipped[j] > 0]
    if not named:
        return None
    named.sort(key=lambda j: (-int(flipped[j]), -float(share[j]), j))  # the other sign first
    names = cfg["resolved"].get("columns")
    if not isinstance(names, list) or len(names) != d:
        info = cfg["resolved"].get("context") or {}
        where = info.get("target_columns") if info.get("kind") == "columns" else None
        if not (isinstance(where, list) and len(where) == d):
            where = range(d)  # (a conditional run's targets: their table columns)
        names = [f"column {j}" for j in where]

    def one(j: int) -> str:
        sign = ""
        if flipped[j]:
            sign = f"{_pct(float(flipped[j]) / n)} {'negative' if nonneg[j] else 'positive'}; "
        return (
            f"{names[j]} {_pct(float(share[j]))} ({sign}samples {low[j]:.4g} to "
            f"{high[j]:.4g}, data {ranges[j][0]:.4g} to {ranges[j][1]:.4g})"
        )

    each = "; ".join(one(j) for j in named[:OUTSIDE_NAMED])
    left = len(named) - OUTSIDE_NAMED
    if left > 0:
        each += f"; and {_count(left, 'more column')}"
    kinds = {"negative" if nonneg[j] else "positive" for j in named if flipped[j]}
    which = "1% or more of the samples" + (", or any of the other sign than the data" if kinds
                                           else "")  # fmt: skip
    columns = "its one column" if d == 1 else f"{len(named)} of {d} columns"
    context = cfg["resolved"].get("context")
    train = (cfg["resolved"].get("examples") or {}).get("train")
    base = ""
    if not context and isinstance(train, int) and train > 0:
        chance = min(1.0, 2 * d / (train + 1))
        base = f"; draws from the data's own distribution: at most {_pct(chance)}"
    said = (
        f"in {columns} ({which}), and in {_pct(rows_out / n)} of the sample rows (a value "
        f"outside in any column{base})"
    )
    if kinds:
        said += f"; {_pct(rows_flipped / n)} of the rows hold {_sign_words(kinds)}"
    bounds = cfg["resolved"].get("bounds")
    declared = set()
    if isinstance(bounds, dict) and all(
        isinstance(bounds.get(k), list) for k in ("lower", "upper")
    ):
        pairs = enumerate(zip(bounds["lower"], bounds["upper"]))
        declared = {j for j, pair in pairs if pair != (None, None)}
    hint = (
        " (a bounded or positive column? declare its bounds and the model keeps to them: "
        "data.bounds, e.g. --set data.bounds.COLUMN=positive or =[0, 1])"
        if set(named) - declared
        else " (within the bounds declared, beyond the training values)"
    )
    if context:  # samples for given contexts, a range over all of them
        return (
            f"samples fall outside the training data's range (over all its contexts) {said}: "
            f"{each}: for a context near the edge of the training contexts the data's own "
            f"values can pass that range too; for one inside them, the model puts mass where "
            f"the data has none{hint}"
        )
    return (
        f"samples fall outside the training data's range {said}: {each}: the model puts mass "
        f"where the data has none{hint}"
    )


def _write_report(
    run,
    cfg,
    flow,
    history,
    ds,
    splits,
    temperatures,
    n,
    seed,
    figdir: Path,
    summary=None,
    dest: Path | None = None,
) -> Path:
    from ..io import atomic_write
    from .evaluate import (
        REFERENCES,
        against_reference,
        describe_ode,
        evaluate_run,
        worse_hint,
    )

    r = cfg["resolved"]
    shape = tuple(r["event_shape"])
    data_shape = tuple(r["data_shape"])
    info = r.get("context")
    figs: list[tuple[str, str]] = []
    sections: list[tuple[int, str, str]] = []  # (figures before it, title, HTML): a table's
    fidelity: dict = {}  # the table checks' figures, for the summary
    metrics, damaged = history  # (read with the model: _model_and_metrics)
    split = splits[0]  # (the split the page is about; the test split may follow it)
    discrete = r.get("levels") is not None
    facts: list[tuple[str, str]] = []
    if damaged:  # a cut or edited metrics file: say so, rather than report fewer epochs
        where = ", ".join(map(str, damaged[:5])) + (" ..." if len(damaged) > 5 else "")
        facts.append((
            "warning: metrics.jsonl is damaged",
            f"{'at least ' if len(damaged) >= MAX_UNREADABLE else ''}{len(damaged):,} "
            f"unreadable line(s) ({where}); the epoch count and the curves "
            "miss their records",
        ))  # fmt: skip
    bad = [m for m in metrics if any(_non_finite(v) for v in m.values())]
    if bad:  # never drawn, nor counted as spikes, nor taken for the best epoch
        where = ", ".join(f"{m.get('type', 'record')} {m.get('epoch', m.get('step', '?'))}"
                          for m in bad[:5]) + (" ..." if len(bad) > 5 else "")  # fmt: skip
        facts.append((
            "warning: non-finite values in the history",
            f"{len(bad)} logged record(s) hold NaN or inf ({where}); those values are left "
            "out of the curves and of the best epoch",
        ))  # fmt: skip
    if not any(m.get("type") == "epoch" for m in metrics):
        facts.append((
            "warning: no epoch records",
            "metrics.jsonl holds no finished epoch (missing, emptied or damaged): the epochs "
            "run and the training curves are unknown",
        ))  # fmt: skip
    unfinished = run_status(run, cfg)  # interrupted, or still training: said first
    facts += _small_data(r, splits)
    for note in r.get("data_warnings", ()):  # what the data checks found at training time
        facts.append(("warning: the training data", note))
    ema = float(cfg.get("train", {}).get("ema") or 0)
    if ema > 0:  # the two curves are two models
        facts.append((
            "note: two sets of weights",
            f"the training curve scores the weights as trained, the validation curve their "
            f"moving average (train.ema {ema:g}), which is what the run keeps",
        ))  # fmt: skip
    objective = cfg.get("train", {}).get("objective", "nll")
    ep = [m for m in metrics if m.get("type") == "epoch"]
    key, what = _validation(ep, objective)
    scored = [m for m in ep if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
    best = min(scored, key=lambda m: m[key]) if scored else None
    spikes = _curves(metrics, figdir / "curves.png", discrete, objective)
    if spikes is not None:
        figs.append(("Training curves", "report/curves.png"))
        if spikes:
            note = (
                f"{_count(spikes, 'logged value')} far above the values before them (red marks "
                "at the top of the curves)"
            )
            facts.append(("warning: loss spikes", note))
    x_split = ds.split(split).reshape(-1, *shape)
    c_split = ds.split_context(split)
    fitted: dict = {}  # the references fitted to the training split: once for both splits
    scores = {}  # each split's figures, for the summary
    for name in splits:
        # as `flowforge eval` scores it
        res = evaluate_run(run, name, seed=seed, dataset=ds, references=fitted, model=flow)
        scores[name] = {k: res.get(k) for k in ("nll", "nll_se", "bits_per_dim", "examples")}
        v = res["nll"]
        many = f"{res['examples']} example{'s' if res['examples'] != 1 else ''}"
        se = "" if res["nll_se"] is None else f" +- {res['nll_se']:.4f}"
        facts.append((f"{name} NLL (nats/example, {many})", f"{v:.4f}{se}"))
        if discrete:
            facts.append((f"{name} bits/dim", f"{v / (math.prod(shape) * math.log(2)):.4f}"))
        if "true_nll" in res:
            facts.append((f"{name} true NLL (the data's known density)", f"{res['true_nll']:.4f}"))
            se = res["gap_se"]
            gap = f"{res['gap']:.4f} " + ("(one example)" if se is None else f"+- {se:.4f}")
            facts.append((f"{name} gap to it (nats, an estimate of KL)", gap))
        for ref, ref_name, noun in REFERENCES:  # the simplest densities the model should beat
            short = f"a {noun}"
            if ref in res:
                g = res[ref]
                words, worse = against_reference(res, ref)
                facts.append((f"{name} NLL of {ref_name}", f"{g:.4f} ({words})"))
                if worse:  # an unfinished model gets no advice on its size
                    facts.append((
                        f"{'note' if unfinished else 'warning'}: worse than {short} on {name}",
                        f"the model's {v:.4f} against {g:.4f}: "
                        + (
                            "its training is unfinished"
                            if unfinished
                            else worse_hint(run).replace(
                                "in flowforge report", "in the training curves of this page"
                            )
                        ),
                    ))  # fmt: skip
        if "ode" in res:  # a continuous flow: how it was scored, and what that cost
            facts.append(
                (f"{name} scored by the ODE", describe_ode(res["ode"], timed=False))
            )  # (a page the same each time)
        if name == "val" and best and key == "val_nll" and f"{best[key]:.4f}" != f"{v:.4f}":
            facts.append(("note: two val NLLs", _two_val_nlls(best[key], res, cfg)))
    if len(data_shape) == 3:
        if info and info["kind"] == "label":
            classes = info["classes"][:10]
            clamped = {}
            for t in dict.fromkeys(temperatures or (1.0, 0.7)):
                path = figdir / f"classes_T{t:g}.png"
                clamped[t] = _class_grid(flow, cfg, classes, 8, t, seed, path)
                figs.append((f"Samples per class (T = {t:g})", f"report/classes_T{t:g}.png"))
        else:
            temps = temperatures or (0.5, 0.7, 0.85, 1.0)
            clamped = _samples_images(flow, cfg, temps, n, seed, figdir / "samples.png")
            title = "Samples at several temperatures" if len(temps) > 1 else "Samples"
            figs.append((title, "report/samples.png"))
        said = clamped_fact(clamped, cfg["resolved"].get("levels")) if ds.levels else None
        facts += [said] if said else []
        if info is None:
            t_near = 1.0 if 1.0 in temps else temps[-1]
            med = _nearest(flow, cfg, ds.train, 16, t_near, seed + 1, figdir / "nearest.png")
            figs.append(
                (
                    "Nearest training image of each sample (memorisation check)",
                    "report/nearest.png",
                )  # fmt: skip
            )
            facts.append(
                ("median L2 distance sample -> nearest training image (data units)", f"{med:.3f}")
            )
    else:
        if temperatures is not None and temperatures != (1.0,):
            facts.append((
                "note: temperatures",
                "a table's samples are drawn at T = 1, to compare with the data; the "
                "temperatures given apply to an image run's figures",
            ))  # fmt: skip
        d = math.prod(data_shape)
        names = [" ".join(str(n).split()) for n in _column_names(cfg, d)]  # (in full)
        data = x_split.reshape(len(x_split), -1)
        m = min(len(data), 5000)
        if info is None:
            if data_shape == (2,):
                s = sample_run(flow, cfg, 2000, 1.0, seed)
                _density(
                    flow,
                    ds.train,
                    s,
                    figdir / "density.png",
                    figdir / "samples.png",
                    _angle_box(cfg) or ds.info.get("box"),
                    cfg["resolved"].get("bounds"),
                    _labels(names) if cfg["resolved"].get("columns") else None,
                )
                figs.append(("Data and model density", "report/density.png"))
                figs.append(("Samples", "report/samples.png"))
            elif data_shape == (1,) and flow.dequantizer is None:
                name = names[0] if cfg["resolved"].get("columns") else None
                box = _angle_box(cfg) or ds.info.get("box")
                _density_1d(flow, ds.train, cfg["resolved"].get("bounds"), name,
                            figdir / "density.png", box)  # fmt: skip
                figs.append(("Data and model density", "report/density.png"))
            # at least 2,000 samples: a split of a few rows would leave a few samples to judge by
            samples = sample_run(flow, cfg, max(m, 2000), 1.0, seed + 2)
        else:
            # one sample given each row's context: draws from the joint of the split
            samples = sample_run(flow, cfg, 1, 1.0, seed + 2, context=c_split[:m])
            title = "Samples given the context of a few rows, against their true values"
            _per_context(flow, cfg, ds, split, _labels(names), seed, figdir / "contexts.png")
            figs.append((title, "report/contexts.png"))
        z = None  # the per-column latent QQ is against N(0, 1): for that base only
        if isinstance(flow.base, StandardNormal):
            c_m = None if c_split is None else c_split[:m]
            z = latent(flow, x_split[:m], seed, c_m, flat=False).numpy()
        flat = samples.reshape(len(samples), -1)
        outside = outside_ranges(flat, cfg)
        if outside:
            facts.append(("warning: samples outside the data's range", outside))
        tf, tfacts = table_figures(
            data[:m].numpy(), flat.numpy(), z, names, figdir, split, len(data)
        )
        first = len(figs)  # (the per-column table follows the marginals)
        figs += tf
        facts += tfacts
        # the checks compare the samples with the split reported, or with the training split
        # where the validation split (the default) is too small to show a model's errors: a
        # KS statistic or a correlation moves by 0.2 to 0.4 by chance alone on 14 to 46 rows
        versus, ref, ref_samples = split, data, flat
        if split == "val" and len(data) < SMALL_SPLIT and len(ds.train) > len(data):
            versus, ref = "train", ds.train.reshape(len(ds.train), -1)
            if info is not None:  # (draws from the joint of the training split)
                c = ds.split_context("train")[:5000]
                ref_samples = sample_run(flow, cfg, 1, 1.0, seed + 3, context=c).reshape(len(c), -1)
            chance = (
                f"a column's KS statistic moves by up to "
                f"{ks_noise(len(data), len(flat), d):.2f} by chance alone there"
                if len(data)
                else "nothing to compare with"
            )
            facts.append((
                "note: checks against the training split",
                f"the val split has only {_count(len(data), 'row')} ({chance}): the "
                f"per-column statistics and the rows that name the training split compare "
                f"the samples with the {_count(len(ref), 'training row')}, which the model "
                f"was fitted to (the closest-row check shows whether it copies them); the "
                f"figures show the val split, and --split test compares both with the test "
                f"split",
            ))  # fmt: skip
            a, b = _finite_rows(ref[:5000].numpy()), _finite_rows(ref_samples.numpy())
            if d >= 2 and min(len(a), len(b)) >= 3:
                (cd, vd), (cs, vs) = _corr(a), _corr(b)
                said, beyond = _corr_fact(cd, cs, vd, vs, names, len(a), len(b))
                row = "largest correlation difference (samples - training split)"
                facts.append((f"warning: {row}" if beyond else row, said))
        m_ref = min(len(ref), 5000)
        if m_ref:
            st = column_statistics(ref[:m_ref].numpy(), ref_samples.numpy())
            facts.append(_ks_fact(st, names, versus))
            total = max(len(ref), st["rows"])
            shown = f"{st['rows']:,} of {total:,} rows" if total > st["rows"] else (
                _count(total, "row"))  # fmt: skip
            sections.append((first + 1, *_columns_html(st, names, f"data ({versus}, {shown})")))
            fidelity.update(
                compared_with=versus,
                rows=st["rows"],
                samples=st["samples"],
                ks_noise=st["noise"],
                columns_beyond_noise=[names[j] for j in np.flatnonzero(st["beyond"])],
            )
        # memorisation: samples and held-out rows, each against the closest training row
        held = split if split != "train" else "val"
        x_held = ds.split(held).reshape(-1, d)
        near_samples, contexts = flat, None
        if info is not None and len(x_held):  # records with their contexts: samples drawn
            c_h = ds.split_context(held)[:NEAREST_SAMPLES]  # for the held-out rows' own
            k = max(1, NEAREST_SAMPLES // len(c_h))  # (several each for a small split)
            near_samples = sample_run(flow, cfg, k, 1.0, seed + 4, context=c_h)
            contexts = (ds.split_context("train"), c_h.repeat_interleave(k, 0), c_h)
        near = nearest_check(ds.train, near_samples, x_held, seed, contexts)
        facts.append(_nearest_fact(near, held))
        if near["held"][0]:
            sections.append((len(figs), *_nearest_html(near, held)))
        fidelity["nearest_training_row"] = {
            "held_out": held,
            "median": {"samples": near["median"][0], "held_out": near["median"][1]},
            "p5": {"samples": near["p5"][0], "held_out": near["p5"][1]},
            "copies": {"samples": near["copies"][0], "held_out": near["copies"][1]},
            "rows": {"samples": near["samples"][0], "held_out": near["held"][0],
                     "train": near["train"][0]},
        }  # fmt: skip
    if isinstance(flow.base, StandardNormal):  # the latents of a good fit look N(0, 1)
        z = latent(flow, x_split, seed, c_split)
        zs = _latent_plot(z, figdir / "latent.png")
        title = f"Latent normality check ({split} split, all dimensions)"
        figs.append((title, "report/latent.png"))
        if zs["std"] is None:
            stat = f"n/a ({_count(zs['values'], 'finite latent value')}; a std needs 2)"
        else:
            stat = f"{zs['mean']:.3f} / {zs['std']:.3f}"
    else:  # a learned or discrete base: its latents need not look normal
        stat = f"n/a (the base is a {type(flow.base).__name__}, not a standard normal)"
    facts.append(("latent mean / std", stat))
    rows = []
    if unfinished:  # first: every number below is of an unfinished model
        rows.append(("note: unfinished training", describe_run_status(unfinished, run)))
    rows += [
        ("model", _model_words(cfg["model"], bool(r.get("sizing")))),
        ("layout", f"{r['layout']} ({' x '.join(map(str, shape))} values per example)"),
        ("parameters", f"{r['parameters']:,}"),
        (
            "data",
            f"{cfg['data']['name']} ({r['examples']['train']} train, "
            f"{r['examples']['val']} val, {r['examples']['test']} test" + _split_seed(cfg) + ")",
        ),
        ("levels", _levels_words(r.get("levels"))),
        ("standardised", _standardised(r, flow)),
        ("epochs run", _epochs_run(ep, cfg, run)),
    ]
    if r.get("bounds"):
        names = _column_names(cfg, len(r["bounds"]["lower"]))
        said = describe_bounds(r["bounds"], names, r.get("integers") or ())
        rows.append(("bounds (data.bounds)", said))
    if r.get("integers"):
        names = _column_names(cfg, r["event_shape"][0])
        said = ", ".join(names[j] for j in r["integers"])
        rows.append(("integer columns (data.integers)", f"{said}: dequantized, NLL a bound"))
    if r.get("sizing"):
        args = ", ".join(f"{k}={v}" for k, v in r["sizing"]["arguments"].items())
        rows.append(("sized to the data", args))
    if isinstance(r.get("init_from"), dict):
        rows.append(("initialised from", _init_words(r["init_from"], r.get("flow_config"))))
    if info:
        rows.append(("conditional on", _context_words(info, r)))
    trained_with = describe_environment(r.get("environment"))
    if trained_with:  # (a run from before the environment was recorded has none)
        rows.append(("trained with", trained_with))
    if best:
        rows.append((f"best epoch (val {what})", f"{best['epoch']} ({best[key]:.4f})"))
    elif ep:
        rows.append((f"best epoch (val {what})", f"n/a (no finite validation {what})"))
    rows += facts
    table = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    # the page shows this report's own copies of the figures (report/curves.TOKEN.png, TOKEN
    # the temporary folder's random part), published before it: never another report's
    token = figdir.name[-len("XXXXXXXX.tmp") : -len(".tmp")]
    shown = [(t, f"{REPORT_DIR}/{versioned_figure(Path(p).name, token)}") for t, p in figs]
    parts = [
        f'<h2>{html.escape(t)}</h2>\n<img src="{html.escape(p)}" alt="{html.escape(t)}">'
        for t, p in shown
    ]
    # (inserted last first, so that each goes where the figures before it end)
    for _, (at, t, part) in sorted(enumerate(sections), key=lambda e: (e[1][0], e[0]))[::-1]:
        parts.insert(at, f"<h2>{html.escape(t)}</h2>\n{part}")
    body = "\n".join(parts)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>flowforge report: {html.escape(run.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
th{{text-align:left;padding-right:1em}}img{{max-width:100%}}
table.columns td,table.nearest td{{text-align:right;padding:0 0.7em}}
table.columns td:first-child,table.nearest td:first-child{{text-align:left}}</style></head>
<body><h1>flowforge run <code>{html.escape(str(run))}</code></h1>
<table>{table}</table>
{body}
<h2>Configuration</h2><pre>{
        html.escape(json.dumps({k: cfg[k] for k in cfg if k != "resolved"}, indent=2))
    }</pre>
</body></html>
"""
    dest = run if dest is None else dest  # (where the page and its figures go)
    final = dest / REPORT_DIR
    final.mkdir(exist_ok=True)
    made = sorted(f.name for f in figdir.iterdir())
    for name in made:  # this report's figures under names of their own, before its page
        os.replace(figdir / name, final / versioned_figure(name, token))
    out = dest / "report.html"
    # (a path's undecodable byte, a lone surrogate here, escaped rather than failing)
    page_bytes = page.encode("utf-8", "backslashreplace")
    atomic_write(figdir / out.name, page_bytes)  # (no temporary page in the run itself)
    os.replace(figdir / out.name, out)  # all old (with its figures) or all new
    for name in made:  # report/curves.png and the others: the latest report's, as before
        try:
            os.link(final / versioned_figure(name, token), figdir / name)
        except OSError:  # (a file system without hard links)
            shutil.copyfile(final / versioned_figure(name, token), figdir / name)
        os.replace(figdir / name, final / name)
    _remove_unshown_figures(dest, final, made, token)
    if summary is not None:  # the headline's facts, as the rows above say them
        summary.update(
            page=str(out.resolve()),
            figures=[{"title": t, "path": str((dest / p).resolve())} for t, p in figs],
            model=cfg["model"]["name"],
            **run_identity(cfg),
            parameters=r["parameters"],
            status=unfinished["state"] if unfinished else _ended(run),
            epochs=len(ep),
            max_epochs=cfg.get("train", {}).get("epochs"),
            best_epoch=best["epoch"] if best else None,
            best_val=best[key] if best else None,
            best_val_unit="nats/example" if key == "val_nll" else what,
            scores=scores,
            warnings=[f"{k[len('warning: ') :]}: {v}" for k, v in rows if k.startswith("warning:")],
            notes=[f"{k[len('note: ') :]}: {v}" for k, v in rows if k.startswith("note:")],
        )
        if fidelity:
            summary["fidelity"] = fidelity
        if unfinished:
            summary["run_status"] = unfinished
    return out


def _remove_unshown_figures(run: Path, final: Path, made: list, token: str) -> None:
    """Remove the earlier reports' figures from ``report/``: the plain names this report has
    not made, and the copies that neither the page now in place (another report's, if one
    finished since) nor a report still running (its temporary folder) shows."""
    try:
        page = (run / "report.html").read_text(errors="replace")
    except OSError:
        page = ""
    running = {f.name[-len("XXXXXXXX.tmp") : -len(".tmp")] for f in run.glob(".report-*.tmp")}
    keep = {*made, *running, token}
    for f in final.iterdir():
        if not f.is_file() or f.is_symlink() or not is_report_figure(f.name):
            continue
        copy = versioned_token(f.name)
        if (copy or f.name) in keep or f'src="{REPORT_DIR}/{f.name}"' in page:
            continue
        f.unlink(missing_ok=True)


# -- variational inference (flowforge fit-target) ------------------------------------------------


def _density_grid(fn, box, n):
    from ..targets import grid

    pts, _ = grid(box, n, torch.float32)
    with torch.no_grad():
        lp = torch.cat([fn(c) for c in pts.split(8192)])
    return lp.reshape(n, n)


def _plot_1d(ax, flow, target, s: np.ndarray, n: int = 400) -> None:
    """A 1-D target's figure: a histogram of the flow's samples ``s``, the flow's density, and
    the target's, normalised by the midpoint rule over the samples' range widened by a half
    (its ``log Z`` is unknown in general), all per unit of x."""
    s = s[np.isfinite(s)]
    lo, hi = np.percentile(s, [0.5, 99.5]) if len(s) else (-4.0, 4.0)
    lo, hi = lo - 0.5 * (hi - lo or 1.0), hi + 0.5 * (hi - lo or 1.0)
    x = torch.linspace(float(lo), float(hi), n, dtype=torch.float64)[:, None]
    step = float(hi - lo) / (n - 1)
    _hist(ax, s, np.linspace(lo, hi, 61), alpha=0.35, label=f"{len(s):,} samples")
    with torch.no_grad():
        lt = target(x).double()
        ax.plot(x[:, 0], torch.exp(lt - torch.logsumexp(lt, 0) - math.log(step)), label="target")
        flow.eval()
        try:
            lq = flow.log_prob(x.to(_dtype(flow))).double()
            ax.plot(x[:, 0], lq.exp(), label="flow", linestyle="--")
        except Exception:  # noqa: BLE001 - (a model with no log_prob of given points)
            pass
    ax.set_xlim(lo, hi)
    ax.set_title(f"target {target.name}, flow and samples (density)", fontsize=9)
    ax.legend(fontsize=7)


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


VI_FILES = ("report.png", "report.md", "metrics.json", "model.ff")  # what fit-target writes


def is_vi_report(folder: Path) -> bool:
    """Whether ``folder`` holds what ``flowforge fit-target`` writes (its ``metrics.json``
    with the fit's ``metrics`` and ``fit``), which ``fit-target --overwrite`` may replace."""
    path = folder / "metrics.json"
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return False
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and set(d) == {"metrics", "fit"}


@_drawing
def write_vi_report(out: Path, flow, target, metrics: dict, fit: dict, title: str) -> Path:
    """``report.png`` (target, learned density, samples), ``report.md``, ``metrics.json``,
    each written atomically."""
    import io as _io

    from ..io import atomic_write
    from .vi import describe_elbo

    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    if target.dim == 1:  # one panel: the densities are curves over the samples' histogram
        fig, ax = plt.subplots(figsize=(5, 3.4))
        axes = [None, None, ax]
    else:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    if target.dim == 2:
        plot_pair(axes[0], axes[1], flow, target, title=title)
    elif target.dim > 2:
        for ax in axes[:2]:
            ax.axis("off")
        axes[0].text(0.5, 0.5, f"{target.dim}-D target: densities not drawn", ha="center")
    with torch.no_grad():
        s = flow.sample(2000).float()
    if target.dim == 1:  # the samples' histogram, under both densities (normalised on it)
        _plot_1d(axes[2], flow, target, s[:, 0].numpy())
    else:
        axes[2].scatter(s[:, 0].numpy(), s[:, 1].numpy(), s=1, alpha=0.4)
        axes[2].set_title("2000 samples (dims 1, 2)", fontsize=9)
    if target.dim == 2:
        axes[2].set_xlim(target.box[0], target.box[1])
        axes[2].set_ylim(target.box[2], target.box[3])
        box = (target.box[0], target.box[1]), (target.box[2], target.box[3])
        off = _off_axes(s[:, 0].numpy(), s[:, 1].numpy(), *box)  # (mass outside the box)
        axes[2].set_title(f"2000 samples (dims 1, 2){off}", fontsize=9)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(out / "report.png", buf.getvalue())
    metrics_json = json.dumps({"metrics": metrics, "fit": fit}, indent=2, allow_nan=False)
    atomic_write(out / "metrics.json", metrics_json.encode())
    se = metrics["elbo_se"]

    def pm(v):
        return "n/a" if v is None else f"{v:.4f}" + ("" if se is None else f" ± {se:.4f}")

    rows = [
        ("reverse KL up to log Z (= -ELBO)", pm(metrics["reverse_kl"])),
        ("ELBO", pm(metrics["elbo"])),
        (
            "log Z, importance sampled",
            f"{metrics['log_z']:.4f}"
            + ("" if metrics["log_z_se"] is None else f" ± {metrics['log_z_se']:.4f}"),
        ),
        ("ESS (normalised)", f"{metrics['ess']:.4f}"),
        (
            "Pareto k of the weights' tail",
            "n/a" if metrics.get("pareto_k") is None else f"{metrics['pareto_k']:.2f}",
        ),
        (
            "log Z, exact or grid",
            "n/a" if metrics["kl"] is None else f"{metrics['true_log_z']:.4f}",
        ),
        ("KL(q ‖ p)", pm(metrics["kl"])),
    ]
    lines = [
        f"# {title} on {target.name}",
        "",
        f"{target.description}. Model parameters: {metrics['params']}. Training: {fit['steps']} "
        f"steps, batch {fit['batch_size']}, Adam lr {fit['lr']} (cosine), anneal "
        f"{fit['anneal']}, {fit['seconds']:.1f} s"
        + (f", {fit['skipped']} steps skipped (non-finite)" if fit.get("skipped") else "")
        + f". Diagnostics on {metrics['n']} samples.",
        "",
        "![target, learned density, samples](report.png)",
        "",
        "| quantity | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        describe_elbo(metrics),
        "",
    ]
    atomic_write(out / "report.md", "\n".join(lines).encode())
    return out / "report.md"
