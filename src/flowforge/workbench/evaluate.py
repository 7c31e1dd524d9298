r"""Evaluating a run's model: its NLL on a split or a file, and the contexts that sampling a
conditional run asks for."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .._util import fork_rng
from ..core import Flow
from ..objectives import log_likelihoods
from ..transforms.continuous import (
    _FIXED,
    CNF,
    MIN_TOL,
    ODEStepBudgetError,
    exact_scoring,
    grid_steps,
)
from .build import check_manifold_data, column_words
from .config import MANIFOLD_MODELS, MAX_SAMPLES
from .data import (
    _chunk_rows,
    beyond_ranges,
    check_bounds,
    check_integers,
    check_levels,
    column_context,
    csv_field,
    examples_words,
    image_words,
    label_context,
    read_examples,
    read_labelled,
    run_dtype,
    shrunk_gaussian,
    unit_scaled,
)
from .distributed import device as resolve_device
from .errors import ContextError, DataError
from .runner import run_dataset, say_reading
from .runs import load_run, run_config, run_identity, run_status

__all__ = [
    "evaluate_run",
    "calibrate_run",
    "check_eval_options",
    "sample_context",
    "save_scores",
]


def _byte_escaped(name: str) -> str:
    """A file name as text: one that is not UTF-8 (Python holds its bytes as lone surrogates)
    with those bytes written ``\\xe9``, which shows the byte, where ``\\udce9`` named nothing."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def nats(v: float) -> str:
    """A number of nats as the commands print it: 4 decimals, or 6 significant digits past
    1e9 (a far row's 1e58 nats, not 59 digits)."""
    return f"{v:.4f}" if abs(v) < 1e9 else f"{v:.6g}"


def _one_line(e: BaseException) -> str:
    from .errors import one_line

    return one_line(e)


def _sample_names_first(path, width: int) -> bool:
    """Whether the CSV at ``path`` starts with ``x0,x1,...``: the header ``flowforge sample``
    writes for a table trained without one (its first 64 KiB read, no more)."""
    want = ",".join(f"x{j}" for j in range(width))
    if not Path(path).is_file():  # (a pipe or device is never opened here)
        return False
    try:
        with open(path, "rb") as f:
            line = f.read(65536).split(b"\n", 1)[0].decode("utf-8", "replace")
    except OSError:
        return False
    return ",".join(c.strip() for c in line.lstrip("\ufeff").strip().split(",")) == want


def evaluate_run(
    run: str | os.PathLike,
    split: str = "test",
    data: str | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    samples: int = 1,
    iw: bool = False,
    trace: str = "exact",
    tol: float | None = None,
    dataset=None,
    device: str = "cpu",
    references: dict | None = None,
    scores: bool = False,
    model=None,
) -> dict:
    """The NLL of a run's best model on one split (or on a file), in the data's units.

    ``samples`` dequantization draws are averaged (discrete data); with ``iw`` they give the
    importance-weighted bound instead, ``log (1/K) sum_k p(x + u_k) / q(u_k | x)`` (Burda et
    al.; tighter as ``K = samples`` grows). The noise is seeded by ``seed``. Continuous flows
    are scored with the exact trace at tolerance 1e-5, whatever their training settings
    (:func:`~flowforge.transforms.exact_scoring`); ``trace="hutchinson"`` (one noise draw per
    solve, held along the trajectory: an unbiased, noisier estimate of the log-likelihood, one
    backward pass per evaluation instead of ``D``) and ``tol`` (an adaptive solver's
    ``rtol = atol``; default: 1e-5, or the model's own if tighter) trade accuracy for speed,
    and ``ode`` in the result says how they were solved. On a synthetic dataset with a known density
    (the 2-D toys, the manifold sets) the result also holds the
    true NLL on the same examples (``true_nll``) and the gap, an estimate of ``KL(p || q)``,
    with its standard error (``gap``, ``gap_se``; None for one example). Every number returned
    is finite (or None where one example gives no standard error), or a
    :class:`DataError` says which examples the model cannot score. ``dataset``: the run's
    data as :func:`~flowforge.workbench.runner.run_dataset` gave it, when the caller has it
    already (it is not read again). ``device``: where the model scores (``cpu``, ``cuda``,
    ``cuda:N`` or ``auto``); the numbers come back on the host either way, and on a GPU differ
    from the CPU's in the last digits (another order of float operations). ``references``: a
    dict the caller keeps between calls on the same ``dataset`` (``flowforge report`` scores
    two splits): the reference densities fitted to its training split are kept in it and
    reused, not fitted again. Everything the model and the options alone decide is refused
    before any data is read (:func:`check_eval_options`).

    A label-conditional run's ``data`` holds each example's label (:func:`~flowforge.
    workbench.data.read_labelled`). ``scores``: the result also holds ``log_densities``, each
    example's log-density (the bound or estimate the NLL averages, nats, float64, in the order
    of the split or file; its mean is ``-nll``), and ``dims`` (values per example), for
    :func:`save_scores`; refused for an M-flow. ``model``: the run's model as the caller read
    it already (``flowforge report``, which scores two splits with the model whose curves it
    draws), not read again.
    """
    cfg, flow, dev = _checked_options(run, samples, iw, trace, tol, batch_size, device, model)
    r = cfg["resolved"]
    truth, refs = None, {}  # (the reference densities' per-example log-densities, by name)
    ds = None  # (the run's data: read again for the references, where they apply)
    file_warnings: list[str] = []  # what the checks of a --data file found
    files: list[str] = []  # a --data folder's images, in the rows' order (for --scores)
    if not isinstance(flow, Flow) and scores:
        raise DataError(
            "--scores writes each example's log-density; an M-flow run's model has a density "
            "on its learned surface and a reconstruction error instead, not one figure per "
            "example (from Python: model.log_prob(x) and model.reconstruction_error(x))"
        )
    if not isinstance(flow, Flow):  # an M-flow: a density on a learned manifold
        return _evaluate_manifold_model(run, cfg, flow, split, data, batch_size, dev)
    shape = tuple(r["event_shape"])
    info = r.get("context")
    context = None
    if data is not None and info is not None and info["kind"] == "label":
        want = tuple(r["data_shape"])
        say_reading(data)
        bits = int(cfg["data"]["options"].get("bits", 8))
        x, labels = read_labelled(data, want, r.get("columns"), info, bits, files)
        try:  # (a label not seen in training: label_context's words, with the file's name)
            context = label_context(labels, info)
        except ContextError as e:
            raise ContextError(f"{data}: {_one_line(e)}") from None
        del labels
        x = x.reshape(-1, *want)
        split = str(data)
        file_warnings += _check_file(x, r, str(data), bits, ranges=False)  # (read at the bits)
        check_manifold_data(cfg["model"]["name"], flow, x, str(data))
    elif data is not None and info is not None:
        import warnings

        with warnings.catch_warnings(record=True) as said:  # (the contexts' range: the file's)
            warnings.simplefilter("always", RuntimeWarning)
            x, context = read_column_file(cfg, data)
        for w in said:
            if issubclass(w.category, RuntimeWarning) and "context" in str(w.message):
                file_warnings.append(f"{data}: {w.message}")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        split = str(data)
        file_warnings += _check_file(x, r, str(data), ranges=False)
        check_manifold_data(cfg["model"]["name"], flow, x, str(data))
    elif data is not None:
        want = tuple(r["data_shape"])
        bits = int(cfg["data"]["options"].get("bits", 8))
        header = cfg["data"]["options"].get("header")
        say_reading(data)
        x = read_examples(data, bits, want, r.get("columns"), header, files, run_dtype(cfg))
        if x.shape[1] != math.prod(want) and len(want) == 3:  # an image run: in images' words
            raise DataError(
                f"{data}: {examples_words(data, x.shape[1])}; this run takes "
                f"{image_words(*want)}, {math.prod(want)} values each (or arrays of shape "
                f"(examples, {', '.join(map(str, want))}))"
            )
        if x.shape[1] != math.prod(want):  # a table, or an array flattened
            shape = f" or arrays of shape (examples, {', '.join(map(str, want))})"
            raise DataError(
                f"{data} has {x.shape[1]} columns; this run's model expects "
                f"{math.prod(want)} columns{shape if len(want) > 1 else ''}"
            )
        x = x.reshape(-1, *want)
        split = str(data)
        x, shifted = _as_trained(x, r.get("levels"), bits, str(data))
        file_warnings += [shifted] if shifted else []
        file_warnings += _check_file(x, r, str(data), bits, ranges=False)
        check_manifold_data(cfg["model"]["name"], flow, x, str(data))
    else:
        ds = dataset if dataset is not None else run_dataset(cfg, checks=False)
        x, context = ds.split(split), ds.split_context(split)
        refs = _references(ds, x, context, cfg, seed, samples, iw, references)
        comparable = ds.density_measure == "lebesgue" or (
            ds.density_measure == "sphere" and cfg["model"]["name"] == "sphereflow"
        )
        if ds.density is not None and comparable:
            truth = torch.from_numpy(ds.density(x.double().numpy()))
    if data is not None and cfg["model"]["name"] != "sphereflow":
        # a file's rows against the same references, fitted to the run's training split
        # (none, and no error, where that data cannot be read again: a file moved since)
        try:
            ds = dataset if dataset is not None else run_dataset(cfg, checks=False)
        except (DataError, OSError, ValueError):
            ds = None
        if ds is not None:
            refs = _references(ds, x, context, cfg, seed, samples, iw, references)
    if data is not None and x.dim() == 2:  # (with the run's validation rows beside it)
        outside = _outside_ranges(x, r, str(data), ds.split("val") if ds is not None else None)
        file_warnings += [outside] if outside else []
    dtype = next((p.dtype for p in flow.parameters()), torch.float32)
    x = x.reshape(-1, *shape).to(dev, dtype)
    context = None if context is None else context.to(dev, dtype)
    cnfs = [m for m in flow.modules() if isinstance(m, CNF)]
    noise = _scoring_noise(flow, trace)
    nfes: list[int] = []  # function evaluations of each solve (each CNF block, each batch)
    hooks = [c.register_forward_hook(lambda m, i, o: nfes.append(m.nfe_forward)) for c in cnfs]
    with fork_rng(), exact_scoring(flow):
        torch.manual_seed(seed)
        for c in cnfs:  # as asked (exact_scoring restores the training settings on exit)
            c.trace = trace
            if tol is not None and c.method not in _FIXED:
                c.rtol = c.atol = float(tol)
        ode = solver_settings(cnfs)  # as scored (exact trace, tight tolerances)
        began = time.perf_counter()
        try:
            draws = [log_likelihoods(flow, x, context, batch_size).cpu() for _ in range(samples)]
        except ODEStepBudgetError as e:  # kept as what it is: the CLI adds its remedy
            raise ODEStepBudgetError(f"{split}: {_one_line(e)}") from None
        except ValueError as e:
            raise DataError(f"{split}: {_one_line(e)}") from None
        finally:
            for h in hooks:
                h.remove()
    if iw:  # log of the mean weight, in float64
        lp = torch.logsumexp(torch.stack(draws).double(), 0) - math.log(samples)
    else:
        lp = sum(draws) / samples
    v = -lp.mean().item()
    out = {
        "run": str(run),
        "split": split,
        "examples": int(x.shape[0]),
        "nll": v,
        # over the examples (with a random score, its noise is in each example's number)
        "nll_se": (lp.double().std() / math.sqrt(len(lp))).item() if len(lp) > 1 else None,
        "bits_per_dim": (
            v / (math.prod(shape) * math.log(2)) if r.get("levels") is not None else None
        ),
        "samples": samples,
        "noise": noise,  # what the draws average over (None: an exact, deterministic score)
        # (what the draws' combination is; None for an exact score, where there are none)
        "bound": "importance-weighted" if iw else ("mean" if noise is not None else None),
        "model": cfg["model"]["name"],
        "seed": seed,  # (this evaluation's: the dequantization noise, a Hutchinson draw)
        **run_identity(cfg),
    }
    model_lp = lp.double().numpy()
    for key, ref in refs.items():
        if ref is None or not np.isfinite(ref).all():
            continue
        out[f"{key}_nll"] = float(-ref.mean())
        # the model's NLL minus the reference's, example by example: its standard error says
        # whether the difference is more than the noise of this many examples
        diff = ref - model_lp
        out[f"{key}_difference_se"] = (
            float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else None
        )  # (None: one example, no standard error)
        if key in ("histogram", "class_histogram"):
            out[f"{key}_bits_per_dim"] = out[f"{key}_nll"] / (math.prod(shape) * math.log(2))
    per = density_unit(cfg["model"]["name"], math.prod(shape))
    if per is not None:
        out["density_per"] = per
    if r.get("data_warnings"):
        out["data_warnings"] = list(r["data_warnings"])
    if file_warnings:
        out["file_warnings"] = file_warnings
    if ode is not None and nfes:
        ode.update(solves=len(nfes), nfe_mean=sum(nfes) / len(nfes), nfe_max=max(nfes))
        ode["seconds"] = time.perf_counter() - began  # (wall time of the scoring)
        out["ode"] = ode
    if truth is not None and bool(torch.isfinite(truth).all()):
        gap = truth - lp  # per example: log p - log q
        out["true_nll"] = -truth.mean().item()
        out["gap"] = gap.mean().item()
        out["gap_se"] = (gap.std() / math.sqrt(len(gap))).item() if len(gap) > 1 else None
    if data is not None:
        higher = _scores_higher_than_validation(run, v, out["nll_se"], str(data))
        if higher is not None:
            out.setdefault("file_warnings", []).append(higher)
    status = run_status(run, cfg)  # an interrupted run, or one still training: said
    if status is not None:
        out["run_status"] = status
    if scores:  # (for save_scores; not in the command's --json)
        out["log_densities"], out["dims"] = model_lp, math.prod(shape)
        if files:
            out["files"] = files
        for key, ref in refs.items():  # the reference's own, beside the model's (a ratio)
            if ref is not None and np.isfinite(ref).all():
                # (a Gaussian over dequantized integer columns: the same kind of bound as the
                # model's, drawn with its own noise; its column is named as the model's is)
                bound = key == "gaussian" and bool(r.get("integers"))
                out["reference_log_densities"] = (key, np.asarray(ref, dtype=np.float64), bound)
                break
    return out


SCORE_SUFFIXES = (".csv", ".npy")


def density_unit(model: str, dims: int) -> str | None:
    """What a flow on a manifold's density is per ("radian^2", "steradian"), for the numbers
    eval prints; None for a density on ``R^D`` (per unit of each column's own scale)."""
    if model == "torusflow":
        return "radian" if dims == 1 else f"radian^{dims}"
    if model == "sphereflow":
        return "steradian (unit area of the sphere)"
    return None


def describe_bound(res: dict) -> str:
    """What an eval result's NLL is, in words ("a dequantization bound with K = 1", "the
    importance-weighted bound with K = 8", "4 Hutchinson trace draws"), or "" for an exact
    log-density of one draw."""
    k, noise = res["samples"], res.get("noise")
    if res.get("bound") == "importance-weighted":
        return f"the importance-weighted bound with K = {k}"
    if noise == "dequantization":  # the variational bound, as the Trainer's
        if k > 1:
            return f"the mean of {k} dequantization bounds with K = 1"
        return "a dequantization bound with K = 1"
    return f"{k} {noise} draws" if k > 1 else ""


def score_columns(res: dict) -> list[str]:
    """The column names of :func:`save_scores`'s CSV for an eval result: ``log_density`` (an
    exact log-density), ``log_density_bound_k1`` (one dequantization draw: a lower bound),
    ``log_density_mean_of_K_bounds_k1`` (``--samples K``), ``log_density_iw_bound_kK``
    (``--iw``), ``log_density_estimate`` / ``log_density_mean_of_K_estimates`` (a Hutchinson
    trace or Russian-roulette estimate); then, for discrete data, the same as
    ``bits_per_dim...``."""
    k, noise = res["samples"], res.get("noise")
    if res.get("bound") == "importance-weighted":
        tail = f"_iw_bound_k{k}"
    elif noise == "dequantization":
        tail = f"_mean_of_{k}_bounds_k1" if k > 1 else "_bound_k1"
    elif noise is not None:
        tail = f"_mean_of_{k}_estimates" if k > 1 else "_estimate"
    else:  # (an exact log-density: K > 1 is refused)
        tail = ""
    names = [f"log_density{tail}"]
    if res.get("bits_per_dim") is not None:
        names.append(f"bits_per_dim{tail}")
    return names


def save_scores(path, res: dict, overwrite: bool = False) -> list[str]:
    """Write the per-example scores of :func:`evaluate_run` (``scores=True``) to ``path``,
    atomically, and return the column names (:func:`score_columns`). A ``.csv`` has a header
    and one row per example: its log-density in nats and, for discrete data, its bits/dim
    (``-log_density / (D ln 2)``), written in full (float64 as Python's ``repr``), a chunk of
    rows at a time. A ``.npy`` holds the log-densities alone, float64 ``(N,)``. The order is
    the split's or the file's. ``overwrite=False``: a file that exists at ``path`` is kept
    (``FileExistsError``)."""
    from ..io import atomic_write, write_npy

    path = Path(path)
    lp = np.asarray(res["log_densities"], dtype=np.float64)
    names = score_columns(res)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        write_npy(path, lp, replace=overwrite)
        return names[:1]
    if suffix != ".csv":
        raise DataError(f"--scores {path}: expected a .csv or .npy file")
    per_bit = None
    if len(names) > 1:
        per_bit = 1.0 / (res["dims"] * math.log(2))
    columns = [lp] + ([-lp * per_bit] if per_bit is not None else [])
    ref = res.get("reference_log_densities")
    if ref is not None:  # (its column: the reference eval compares with, row by row)
        tail = names[0][len("log_density") :] if len(ref) > 2 and ref[2] else ""
        names = [*names, f"{ref[0]}_log_density{tail}"]
        columns.append(np.asarray(ref[1], dtype=np.float64))
    files = res.get("files")
    if files is not None and len(files) == len(lp):  # (a folder's images: which row is which)
        names = ["file", *names]
    else:
        files = None

    def row(i, values):
        numbers = ",".join(map(repr, values))
        return numbers if files is None else f"{csv_field(_byte_escaped(files[i]))},{numbers}"

    def lines(chunk: int = 1 << 14):
        yield (",".join(names) + "\n").encode()
        for i in range(0, len(lp), chunk):
            parts = [c[i : i + chunk].tolist() for c in columns]
            text = "\n".join(row(i + j, r) for j, r in enumerate(zip(*parts)))
            yield (text + "\n").encode("utf-8", "backslashreplace")  # (a name not in UTF-8)

    atomic_write(path, lines(), replace=overwrite)
    return names


def check_eval_options(
    run: str,
    samples: int = 1,
    iw: bool = False,
    trace: str = "exact",
    tol: float | None = None,
    batch_size: int = 1024,
    device: str = "cpu",
) -> None:
    """A ``DataError`` for what :func:`evaluate_run` refuses from the run's model and these
    options alone (``--samples`` above 1 for a model that scores exactly, ``--iw`` without
    discrete data, a trace for a model without an ODE, ...), with its message, before any
    data is read (``flowforge eval --calibration`` checks them before its own pass)."""
    _checked_options(run, samples, iw, trace, tol, batch_size, device)


def _checked_options(run, samples, iw, trace, tol, batch_size, device, model=None):
    """``(config, model on its device, device)`` of a run whose options :func:`evaluate_run`
    takes (:func:`check_eval_options`); ``model``: the run's, read already."""
    for name, v in (("--batch-size", batch_size), ("--samples", samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"{name} must be a positive integer, got {v!r}")
    if samples > MAX_SAMPLES:
        raise DataError(
            f"--samples {samples:,} is more than the {MAX_SAMPLES:,} draws one evaluation "
            "averages (each is a full pass over the split)"
        )
    if trace not in ("exact", "hutchinson"):
        raise DataError(f"unknown trace {trace!r}; expected 'exact' or 'hutchinson'")
    if tol is not None and (
        isinstance(tol, bool) or not isinstance(tol, (int, float)) or not MIN_TOL <= tol < 1
    ):
        raise DataError(
            f"the ODE tolerance must be a number in [{MIN_TOL:g}, 1) (a CNF's solver resolves "
            f"no finer), got {tol!r}"
        )
    cfg = run_config(run)
    r = cfg["resolved"]
    discrete = r.get("levels") is not None or bool(r.get("integers"))
    if iw and not discrete:
        raise DataError(
            "--iw is the importance-weighted dequantization bound: it needs discrete data, and "
            "this run's data has no levels or integer columns"
        )
    if iw and samples < 2:
        raise DataError(
            "--iw is the importance-weighted dequantization bound over K draws: it needs "
            f"--samples of 2 or more (got {samples})"
        )
    dev = resolve_device(device, "--device")  # (a missing GPU: one line, before any loading)
    flow = (load_run(run) if model is None else model).to(dev)
    if not isinstance(flow, Flow):  # an M-flow: a density on a learned manifold
        if samples > 1:
            raise DataError(
                f"--samples {samples} averages draws of a random score; an M-flow scores its "
                "data exactly, so every draw is the same: use --samples 1"
            )
        return cfg, flow, dev
    # what the model decides, before any data is read (a large table takes seconds to load)
    cnfs = [m for m in flow.modules() if isinstance(m, CNF)]
    if not cnfs and (trace != "exact" or tol is not None):
        raise DataError(
            "the trace and the ODE tolerance apply to continuous flows (the cnf and ffjord "
            f"models); this run's model ({cfg['model']['name']}) has no ODE"
        )
    noise = _scoring_noise(flow, trace)
    estimated = _scoring_noise(flow, trace, dequantization=False)
    if iw and estimated is not None:
        # log(1/K sum_k exp(l_k)) of noisy, unbiased estimates l_k of log p(x + u_k) is biased
        # upwards (Jensen): not a bound, and optimistic (0.2 nats on the digits' CNF)
        fix = "--trace exact" if estimated == "Hutchinson trace" else "no --iw"
        raise DataError(
            f"--iw needs each draw's log-density exactly, but this model's {estimated} is an "
            "estimate: the log of a mean of exponentiated noisy estimates comes out too high "
            f"(an optimistic NLL, not a bound); use {fix}"
        )
    if samples > 1 and noise is None:
        raise DataError(
            f"--samples {samples} averages draws of a random score (dequantization noise, "
            f"Hutchinson's trace, a Russian-roulette log-determinant); this run's model "
            f"({cfg['model']['name']}) scores its data exactly, so every draw is the same: "
            "use --samples 1"
        )
    return cfg, flow, dev


CALIBRATION_FEW = 50  # pairs below which eval --calibration says its verdicts are weak
MAX_CALIBRATION_DRAWS = 10_000  # posterior draws per pair that --calibration-samples allows


def read_column_file(cfg: dict, data) -> tuple[torch.Tensor, torch.Tensor]:
    """A file of rows for a column-conditional run (its target and context columns, found by
    the header names it was trained with where it kept them): the targets and the checked raw
    contexts (:func:`~flowforge.workbench.data.column_context`), as the run's splits hold them."""
    r = cfg["resolved"]
    info = r["context"]
    want = len(info["target_columns"]) + len(info["context_columns"])
    names = None  # the table's header as trained on (runs since the context names are kept)
    if r.get("columns") and r.get("context_column_names"):
        names = [None] * want
        for i, n in zip(info["target_columns"], r["columns"]):
            names[i] = n
        for i, n in zip(info["context_columns"], r["context_column_names"]):
            names[i] = n
    header = cfg["data"]["options"].get("header")
    if header is False and names is None and _sample_names_first(data, want):
        header = True  # (the header `sample` writes for a table that had none)
    say_reading(data)
    full = read_examples(data, columns=names, header=header, dtype=run_dtype(cfg))
    if full.dim() != 2 or full.shape[1] != want:
        raise DataError(f"{data} has shape {tuple(full.shape)}; this run expects {want} columns")
    context = column_context(full[:, info["context_columns"]], info, r.get("context_column_names"))
    return full[:, info["target_columns"]], context


def calibrate_run(
    run: str,
    split: str = "test",
    seed: int = 0,
    samples: int = 100,
    pairs: int = 1000,
    batch_size: int = 8192,
    dataset=None,
    device: str = "cpu",
    data=None,
) -> dict:
    """Calibration of a column-conditional run's model as a posterior ``q(targets | context)``
    on one split: SBC, the HPD coverage from its log-density ranks, and TARP
    (:mod:`flowforge.diagnostics`), with ``samples`` draws per row, on at most ``pairs`` rows
    of the split (a seeded random subset when it has more). The split's rows are the pairs
    ``(theta_i, x_i)``: valid when they were drawn from the joint (a simulator's output).
    Numbers only (finite), for ``eval --json``; :func:`describe_calibration` gives the lines.
    ``device``: where the model draws, as in :func:`evaluate_run`. ``data``: a file of such
    rows (fresh simulations, say) to check instead of a split, read as ``eval --data`` reads
    it."""
    from .. import diagnostics

    for name, v, low in (("--calibration-samples", samples, 1), ("--calibration-pairs", pairs, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise DataError(f"{name} must be an integer >= {low}, got {v!r}")
    if samples > MAX_CALIBRATION_DRAWS:
        raise DataError(
            f"--calibration-samples {samples:,} is more than the {MAX_CALIBRATION_DRAWS:,} "
            "draws per row it allows (100 to 1,000 is typical)"
        )
    cfg = run_config(run)
    r = cfg["resolved"]
    info = r.get("context")
    if info is None or info.get("kind") != "columns":
        what = "unconditional" if info is None else "label-conditional"
        raise DataError(
            "--calibration checks a posterior q(target columns | context columns): it needs a "
            f"run trained with --target-columns, and this run is {what}"
        )
    if r.get("levels") is not None or r.get("integers"):
        raise DataError(
            "--calibration needs continuous targets: this run dequantizes discrete columns "
            "(its samples tie on the integers and its log-density is a bound)"
        )
    flow = load_run(run).to(resolve_device(device, "--device"))
    if not isinstance(flow, Flow):
        raise DataError("--calibration needs a flow with a density; this run's model is not one")
    if data is not None:
        theta, x = read_column_file(cfg, data)
        split = str(data)
        _check_file(theta, r, split)
    else:
        ds = dataset if dataset is not None else run_dataset(cfg, checks=False)
        theta, x = ds.split(split), ds.split_context(split)
    n = theta.shape[0]
    if n < 2:
        where = split if data is not None else f"the {split} split"
        raise DataError(f"--calibration needs at least 2 rows in {where}, got {n}")
    if n > pairs:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:pairs]
        theta, x = theta[keep.sort().values], x[keep.sort().values]
    dtype = next((p.dtype for p in flow.parameters()), torch.float32)
    theta = theta.reshape(-1, *r["event_shape"]).to(dtype)
    x = x.to(dtype)
    try:
        sbc = diagnostics.sbc(flow, theta, x, samples, batch_size=batch_size, seed=seed)
        cov = sbc.coverage(seed=seed)
        tarp = diagnostics.tarp(flow, theta, x, samples, batch_size=batch_size, seed=seed)
    except ValueError as e:
        raise DataError(f"{split}: --calibration: {_one_line(e)}") from None
    return {
        "split": split,
        "pairs": int(theta.shape[0]),
        "rows": int(n),
        "samples": samples,
        "seed": seed,
        "sbc": {
            "chi2_pvalues": sbc.chi2_pvalues.tolist(),
            "ks_pvalues": sbc.ks_pvalues.tolist(),
            "log_prob_chi2_pvalue": sbc.log_prob_chi2_pvalue,
            "log_prob_ks_pvalue": sbc.log_prob_ks_pvalue,
            "mean_rank": sbc.mean_rank.tolist(),
            "bins": sbc.bins,
            "consistent": sbc.consistent(),
            "summary": sbc.describe(),
        },
        "coverage": {
            "levels": cov.levels.tolist(),
            "coverage": cov.coverage.tolist(),
            "area": cov.area,
            "signed_area": cov.signed_area,
            "max_deviation": cov.max_deviation,
            "ks_pvalue": cov.ks_pvalue,
            "verdict": cov.verdict(),
            "summary": cov.describe(),
        },
        "tarp": {
            "levels": tarp.levels.tolist(),
            "ecp": tarp.ecp.tolist(),
            "area": tarp.area,
            "max_deviation": tarp.max_deviation,
            "ks_pvalue": tarp.ks_pvalue,
            "summary": tarp.describe(),
        },
    }


def describe_calibration(c: dict) -> list[str]:
    """The lines ``eval --calibration`` prints for :func:`calibrate_run`'s result."""
    rows = (
        f"{c['pairs']:,} of its {c['rows']:,} rows"
        if c["pairs"] < c["rows"]
        else f"all {c['rows']:,} rows"
    )
    few = []
    if c["pairs"] < CALIBRATION_FEW:  # (a verdict from a handful of pairs is mostly noise)
        few = [
            f"  note: {c['pairs']} pairs are too few for these tests to tell much (a few hundred "
            "are usual); their verdicts are weak either way"
        ]
    return [
        f"calibration on {c['split']} ({rows}, {c['samples']} "
        f"draw{'s' if c['samples'] != 1 else ''} each, seed {c['seed']}):",
        *few,
        "  " + c["sbc"]["summary"],
        "  " + c["coverage"]["summary"],
        "  " + c["tarp"]["summary"],
    ]


# the reference densities eval and report set a model beside: (result key, what it is, its noun)
WORSE_HINT = (
    "it under- or over-fits (compare its training and validation losses in flowforge report: "
    "a training loss far below the validation loss is overfitting, common with few rows for "
    "the columns); try a smaller model, train.weight_decay or more data, and where none beats "
    "the reference, the reference is the better model of these data"
)

IMPROVING_HINT = (
    "its best epoch is its last, so it was still improving: train it longer (a new run with "
    "more --epochs) before judging its size"
)


def worse_hint(run) -> str:
    """What to try for a model that scores worse than a reference: more training where its best
    validation epoch is its last of two or more (an undertrained model, not an overfitted
    one), else :data:`WORSE_HINT`."""
    from .runs import _logged_epochs

    count, last = 0, None  # (no metrics to tell by: the general advice)
    for rec in _logged_epochs(Path(run)):
        count, last = count + 1, rec
    if count >= 2 and last.get("best") is True:
        return IMPROVING_HINT
    return WORSE_HINT


REFERENCES = (
    ("gaussian_nll", "a Gaussian fitted to the training split", "Gaussian"),
    ("histogram_nll", "a histogram per position of the training split", "histogram"),
    (
        "class_histogram_nll",
        "a histogram per position and class of the training split",
        "histogram",
    ),
    (
        "regression_nll",
        "a linear-Gaussian regression on the context columns, fitted to the training split",
        "regression",
    ),
    (
        "von_mises_nll",
        "a von Mises distribution fitted to each angle of the training split",
        "von Mises",
    ),
)


def against_reference(res: dict, key: str) -> tuple[str, bool]:
    """How the model's NLL compares with a reference's in ``res`` (``key`` from
    :data:`REFERENCES`): words like "the model is 0.33 +- 0.12 nats/example better", and
    whether it is worse by more than twice the paired standard error (a warning), so that a
    difference within the noise of the scored examples is neither warned about nor claimed."""
    d = res["nll"] - res[key]
    se = res.get(key.replace("_nll", "_difference_se"), 0.0)
    way = "worse" if d > 0 else "better"
    if se is None:  # one example: no noise estimate, so neither a claim nor a warning
        words = f"the model is {nats(abs(d))} nats/example {way} (one example: no standard error)"
        return words, False
    words = f"the model is {nats(abs(d))} +- {nats(se)} nats/example {way}"
    if abs(d) <= 2 * se:
        words += " (within the noise of these examples)"
    return words, d > 2 * se


def check_comparable(run, other, data=None, split: str = "test"):
    """Refuse ``eval RUN --against OTHER`` where their numbers would not be of the same
    examples in the same units: another quantity (other modelled columns, another context:
    ``p(y | x)`` against ``p(x)``), other examples (another split of the data, without
    ``--data`` naming one file for both), other levels or integer columns (a bound on
    probabilities beside a density), a density on a manifold beside one in space, or an
    M-flow (whose score is not a log-density of the data). Returns the two runs' datasets where
    they had to be read to compare the split's examples (runs of the same split of the same
    data, trained on other rows: another ``--limit``), else ``(None, None)``."""
    from .runs import run_config

    a, b = run_config(run), run_config(other)
    ra, rb = a.get("resolved") or {}, b.get("resolved") or {}
    if Path(run).resolve() == Path(other).resolve():
        raise DataError(f"--against {other} is the run itself: give another run")
    if "mflow" in (a["model"]["name"], b["model"]["name"]):
        raise DataError("--against compares log-densities; an M-flow's score is not one")
    ca, cb = (r.get("context") or {} for r in (ra, rb))
    if ca.get("kind") != cb.get("kind") or any(
        ca.get(k) != cb.get(k) for k in ("target_columns", "context_columns", "classes")
    ):

        def quantity(c: dict) -> str:
            if c.get("kind") == "columns":
                return f"p(columns {c.get('target_columns')} | columns {c.get('context_columns')})"
            return "p(x | label)" if c.get("kind") == "label" else "p(x)"

        raise DataError(
            f"{other} models {quantity(cb)}, this run {quantity(ca)}: their log-densities do "
            "not compare"
        )
    if ra.get("columns") and rb.get("columns") and ra["columns"] != rb["columns"]:
        raise DataError(
            f"{other} models the columns {rb['columns']}, this run {ra['columns']}: their "
            "log-densities are of different things"
        )
    if list(ra.get("event_shape") or ()) != list(rb.get("event_shape") or ()):
        raise DataError(
            f"{other} models examples of shape {rb.get('event_shape')}, this run "
            f"{ra.get('event_shape')}: their log-densities are of different things"
        )
    for key, what in (("levels", "levels"), ("integers", "integer columns")):
        if ra.get(key) != rb.get(key):
            raise DataError(
                f"{other} has other {what} ({rb.get(key)}) than this run ({ra.get(key)}): a "
                "bound on the probability of discrete values and a density do not compare"
            )
    units = [density_unit(c["model"]["name"], 1) for c in (a, b)]
    if units[0] != units[1]:
        here, there = (u or "volume of the space" for u in units)
        raise DataError(f"{other}'s density is per {there}, this run's per {here}: they do not "
                        "compare")  # fmt: skip
    if data is not None:
        return None, None
    fa, fb = (r.get("data_fingerprint") or {} for r in (ra, rb))
    if fa.get("sha256") and fa.get("sha256") == fb.get("sha256"):
        return None, None
    # trained on other rows (another --limit) or another split: the split's own examples say
    try:
        da, db = run_dataset(a, checks=False), run_dataset(b, checks=False)
    except (DataError, OSError, ValueError) as e:
        raise DataError(f"cannot read the data of both runs to compare their {split} splits: "
                        f"{_one_line(e)}") from None  # fmt: skip
    same = da.split(split).shape == db.split(split).shape and torch.equal(
        da.split(split), db.split(split)
    )
    ka, kb = da.split_context(split), db.split_context(split)
    if same and (ka is None) == (kb is None) and (ka is None or torch.equal(ka, kb)):
        return da, db
    if da.split(split).dtype != db.split(split).dtype:  # (train.dtype: the values as read)
        precisions = [str(d.split(split).dtype).removeprefix("torch.") for d in (da, db)]
        raise DataError(
            f"this run reads its data in {precisions[0]} and {other} in {precisions[1]} "
            "(train.dtype): their examples are not the same numbers; compare the two on one "
            "file, --data FILE, where each model scores the file's values"
        )
    raise DataError(
        f"{other}'s {split} split holds other examples than this run's (other data, or the "
        "data split another way: another data.seed, shuffle or fractions); compare the two "
        "on one file: --data FILE"
    )


def options_for(other, score: dict) -> dict:
    """``eval``'s options (``score``, :func:`evaluate_run`'s keywords) as they apply to the run
    ``other`` compared with: a trace and a tolerance only to a continuous flow, K draws only
    to a model whose score is random (an IDF run, or a run without an ODE, beside a
    dequantized CNF scored with Hutchinson's trace); checked as :func:`check_eval_options`
    checks them, before anything is scored."""
    flow = load_run(other)
    s = dict(score)
    if isinstance(flow, Flow):
        if not any(isinstance(m, CNF) for m in flow.modules()):
            s["trace"], s["tol"] = "exact", None
        if _scoring_noise(flow, s["trace"]) is None:
            s["samples"], s["iw"] = 1, False
    try:
        _checked_options(other, s["samples"], s["iw"], s["trace"], s["tol"], s["batch_size"],
                         s["device"], model=flow)  # fmt: skip
    except DataError as e:
        raise DataError(f"--against {other}: {_one_line(e)}") from None
    return s


def compare_scores(res: dict, other: dict) -> dict:
    """This run's NLL minus ``other``'s on the same examples (both ``evaluate_run`` results
    with ``scores=True``), with the paired standard error: ``{"nll", "difference",
    "difference_se"}`` (None for one example)."""
    a, b = np.asarray(res["log_densities"]), np.asarray(other["log_densities"])
    if a.shape != b.shape:  # (checked before: the same examples)
        raise DataError("the two runs scored different numbers of examples")
    diff = b - a  # this run's NLL minus the other's, example by example
    return {
        "nll": other["nll"],
        "difference": float(diff.mean()),
        "difference_se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else None,
    }


def _integer_chunks(a, width: int):
    """The rows of ``a`` (examples of ``width`` values, a tensor or an array) as int64
    arrays ``(rows, width)``, a chunk of rows at a time (``data._chunk_rows``): never an
    8-byte copy of the whole split. An int64 ``a``'s chunks are views of it: read-only."""
    step = _chunk_rows(width)
    for i in range(0, len(a), step):
        yield np.asarray(a[i : i + step], dtype=np.int64).reshape(-1, width)


def histogram_baseline(train, x, levels: int, per_example: bool = False, fitted=None):
    """The mean NLL (nats) of discrete ``x`` under an independent histogram per position
    (pixel or column) of the training split, with add-1/2 counts: the reference a model of
    discrete data must beat to have learned any dependence (106.4 nats on the digits' test
    split). ``per_example``: the log-probability of each example instead (an array). The
    counts are taken a chunk of examples at a time (one ``np.bincount`` over every position of
    the chunk). ``fitted``: a dict kept between calls with the same ``train`` (as
    :func:`evaluate_run`'s ``references``): the histogram is counted once and kept in it."""
    levels = int(levels)
    width = math.prod(train.shape[1:])
    key = ("histogram", levels)
    logp = None if fitted is None else fitted.get(key)
    if logp is None:
        counts = np.zeros(width * levels, dtype=np.int64)
        offsets = np.arange(width, dtype=np.int64) * levels  # (position j counts at j * levels)
        for t in _integer_chunks(train, width):
            if t.min() < 0:  # (numpy's refusal, as a count of the whole column gave it)
                raise ValueError("'list' argument must have no negative elements")
            inside = t < levels  # (a value past the levels is not counted, as bincount's [:K])
            t = t + offsets  # (not +=: an int64 chunk is a view of the caller's array)
            counts += np.bincount(t[inside] if not inside.all() else t.ravel(),
                                  minlength=len(counts))  # fmt: skip
        counts = counts.reshape(width, levels) + 0.5
        logp = np.log(counts / counts.sum(1, keepdims=True))
        if fitted is not None:
            fitted[key] = logp
    positions = np.arange(width)
    lp = np.concatenate(
        [logp[positions, v].sum(1) for v in _integer_chunks(x, width)] or [np.zeros(0)]
    )
    return lp if per_example else float(-lp.mean())


def _as_trained(x, levels, bits: int, where: str):
    """An array of 8-bit pixels for a run of ``bits < 8``, read as training read it: its top
    ``bits`` bits (``a >> (8 - bits)``), with a note; ``(x, note or None)``. Values that fit
    in ``bits`` bits (what ``sample`` and ``decompress`` write) are the levels as they are."""
    if levels is None or bits >= 8 or levels != 2**bits or not len(x):
        return x, None
    lo, hi = float(x.min()), float(x.max())
    whole = not x.is_floating_point() or bool((x == x.round()).all())
    if not (whole and lo >= 0 and levels - 1 < hi <= 255):
        return x, None
    note = (
        f"{where}: its values (0 to {int(hi)}) are 8-bit pixels: scored as training read such "
        f"an array, by their top {bits} bits (a >> {8 - bits})"
    )
    return torch.div(x, 2 ** (8 - bits), rounding_mode="floor"), note


def _check_file(x, r: dict, where: str, bits: int = 8, ranges: bool = True) -> list[str]:
    """Another file's rows against the run's levels, integer columns and bounds (one line
    each); images (``x`` of more than 2 dimensions) also against a scaling to [0, 1]
    (:func:`~flowforge.workbench.data.unit_scaled`), and with ``ranges`` a table's rows
    against its columns' training ranges: the warnings are returned."""
    scaled = unit_scaled(x, r.get("levels"), where) if x.dim() > 2 else None
    check_levels(x, r.get("levels"), bits, where)
    if r.get("integers"):
        check_integers({"": x.numpy()}, r["integers"], r.get("columns"), where)
    if r.get("bounds"):
        check_bounds(
            {"": x.numpy()}, r["bounds"], r.get("columns"), where, r.get("integers") or (), True
        )
    outside = _outside_ranges(x, r, where) if x.dim() == 2 and ranges else None
    return [w for w in (scaled, outside) if w]


def _outside_ranges(x: torch.Tensor, r: dict, where: str, val=None) -> str | None:
    """A note for a table file's rows beyond a column's training range (``resolved.ranges``;
    :func:`~flowforge.workbench.data.beyond_ranges`): their log-densities are the model's
    extrapolation (for anomaly detection, the far rows). With ``val``, the run's validation
    rows, the note says how many of those lie outside too: rows from the training
    distribution itself do, the more so the fewer training rows and the more columns. Not for
    a flow on a manifold, whose columns are angles or coordinates on the sphere."""
    model = str((r.get("flow_config") or {}).get("model", "")).lower()
    if model in MANIFOLD_MODELS:
        return None
    found = beyond_ranges(x, r.get("ranges"), r.get("columns"))
    if found is None:
        return None
    words, rows = found
    n = int(rows.sum())
    base = ""
    if val is not None and val.dim() == 2 and val.shape[1] == x.shape[1] and len(val):
        seen = beyond_ranges(val, r.get("ranges"), r.get("columns"))
        m = 0 if seen is None else int(seen[1].sum())
        base = (
            f" (for comparison, {m} of the run's {len(val)} validation rows, "
            f"{_share(m, len(val))}, {'does' if m == 1 else 'do'}: rows like the training "
            "data fall outside some column's range too, the more so the fewer training rows "
            "and the more columns)"
            if m
            else f" (for comparison, none of the run's {len(val)} validation rows does)"
        )
    return (
        f"{where}: {n} of its {len(x)} rows ({_share(n, len(x))}; the first at index "
        f"{int(rows.nonzero()[0])}, counting from 0 as the scores file does) "
        f"{'lies' if n == 1 else 'lie'} outside the training range: {words}; "
        f"{'its log-density is' if n == 1 else 'their log-densities are'} the model's "
        f"extrapolation there{base}"
    )


def _share(k: int, n: int) -> str:
    """``k`` of ``n`` as a percentage, to three digits (under 0.01%: said so)."""
    p = 100 * k / n
    if 0 < p < 0.01:
        return "under 0.01%"
    return "over 99.9%" if 99.9 < p < 100 else f"{p:.3g}%"


def _scores_higher_than_validation(run, nll: float, se: float | None, where: str) -> str | None:
    """A note when a file scores clearly more likelihood than the run's best epoch did on
    both its validation split and its training data (``metrics.jsonl``: the best validation
    NLL and that epoch's training loss, so that a file of the training rows, which an
    overfitted model scores above validation, says nothing): a flow can rank inputs unlike
    its training data above them."""
    from .runs import _logged_epochs

    best = None  # (no readable epoch: no note, not an error)
    for rec in _logged_epochs(Path(run)):  # (streamed: one record in memory)
        v = rec.get("val_nll")
        if (
            isinstance(v, (int, float))
            and math.isfinite(v)
            and (best is None or v < best["val_nll"])
        ):
            best = rec
    if best is None or se is None:
        return None
    seen = [best["val_nll"]]
    if isinstance(best.get("train_loss"), (int, float)) and math.isfinite(best["train_loss"]):
        seen.append(best["train_loss"])
    if nll + 3 * se >= min(seen):
        return None
    return (
        f"{where} scores a higher likelihood than the run's own data did (NLL {nll:.4f}, "
        f"against {best['val_nll']:.4f} on its validation split"
        + (f" and a training loss of {seen[1]:.4f}" if len(seen) > 1 else "")
        + " at its best epoch): a flow can give inputs unlike its training data, simple "
        "ones especially "
        "(blank images, constant rows), more likelihood than typical ones, so a high "
        "likelihood alone does not show that data is like the training data (the model's "
        "own samples score high too: they are what it finds most typical; docs/workbench.md, "
        '"Anomaly detection")'
    )


def von_mises_baseline(train, x, fitted=None) -> np.ndarray:
    """The log-density of each row of ``x`` (angles in radians) under a product of von Mises
    distributions, one fitted to each column of ``train`` by maximum likelihood
    (``scipy.stats.vonmises.fit``): the simplest density on the torus a flow on it should
    beat, per unit of angle as the flow's is. ``fitted``: as :func:`gaussian_baseline`'s."""
    from scipy.stats import vonmises

    key = ("von_mises",)
    fit = None if fitted is None else fitted.get(key)
    if fit is None:
        t = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
        fit = [vonmises.fit(t[:, j], fscale=1)[:2] for j in range(t.shape[1])]
        if fitted is not None:
            fitted[key] = fit
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return sum(vonmises.logpdf(x[:, j], kappa, loc) for j, (kappa, loc) in enumerate(fit))


def gaussian_baseline(
    train,
    x,
    per_example: bool = False,
    integers=None,
    seed: int = 0,
    samples: int = 1,
    iw: bool = False,
    fitted=None,
):
    """The mean NLL (nats) of ``x`` under a Gaussian fitted to ``train``
    (:func:`~flowforge.workbench.data.shrunk_gaussian`: the columns' means and standard
    deviations and their Ledoit-Wolf shrunk correlation, well defined with fewer rows than
    columns; the estimator of the Gaussian a wide table's model starts as). The simplest
    density a table's model should beat, on the same raw scale as the model's NLL.
    ``per_example``: the log-density of each row instead (an array). ``integers``: columns
    dequantized, as the model's are, with uniform noise (seeded by ``seed``), so that the
    Gaussian's figure is the same kind of bound as the model's: the mean of ``samples``
    single-draw bounds, or with ``iw`` the importance-weighted bound with ``K = samples``, as
    eval gives the model's. ``fitted``: a dict kept between calls with the same ``train`` (as
    :func:`evaluate_run`'s ``references``): the Gaussian is fitted once and kept in it, and
    later calls give what a fit of their own would (the same noise after it)."""
    from scipy.linalg import solve_triangular
    from scipy.special import logsumexp

    x = np.asarray(x, dtype=np.float64)
    key = ("gaussian", tuple(integers or ()), seed)
    fit = None if fitted is None else fitted.get(key)
    if fit is None:
        t = np.asarray(train, dtype=np.float64)
        own = t is not train and not np.shares_memory(t, np.asarray(train))
        g = np.random.default_rng(seed)
        if integers:
            t, own = (t, own) if own else (t.copy(), True)
            t[:, integers] += g.random((len(t), len(integers)))
        loc, factor = shrunk_gaussian(t, overwrite=own)
        del t
        const = 0.5 * len(loc) * math.log(2 * math.pi) + np.log(np.diag(factor)).sum()
        fit = (loc, factor, const, g.bit_generator.state)  # (the stream where the fit left it)
        if fitted is not None:
            fitted[key] = fit
    loc, factor, const, state = fit
    g = np.random.default_rng(seed)
    g.bit_generator.state = state
    draws = []
    for _ in range(samples if integers else 1):
        v = x
        if integers:
            v = x.copy()
            v[:, integers] += g.random((len(v), len(integers)))
        z = solve_triangular(factor, (v - loc).T, lower=True).T
        draws.append(-0.5 * (z**2).sum(1) - const)
    lp = np.stack(draws)
    lp = logsumexp(lp, 0) - math.log(len(draws)) if iw else lp.mean(0)
    return lp if per_example else float(-np.mean(lp))


def _references(ds, x, context, cfg: dict, seed: int, samples: int, iw: bool, references):
    """The reference densities' per-example log-densities at ``x`` (``context``), each fitted
    to ``ds``'s training split, as a tuple ``(histogram, gaussian, von_mises, regression)``
    (None where one does not apply): a per-position histogram for discrete data, a Gaussian
    for a continuous table (von Mises on the torus), a linear-Gaussian regression for a
    conditional table."""
    r = cfg["resolved"]
    info = r.get("context")
    histogram = baseline = von_mises = regression = class_histogram = None
    if ds.levels is not None and info is None:  # discrete data: a per-position histogram
        histogram = histogram_baseline(ds.train, x, ds.levels, per_example=True, fitted=references)
    if ds.levels is not None and info is not None and info.get("kind") == "label":
        class_histogram = _class_histogram(ds, x, context, references)
    # (not for a density on the sphere: per unit area, where a Gaussian's is per volume;
    # on the torus a Gaussian on R^D leaves mass outside [-pi, pi): von Mises instead)
    on_sphere = cfg["model"]["name"] == "sphereflow" or ds.density_measure == "sphere"
    if (
        ds.kind == "table"
        and ds.levels is None
        and info is None
        and len(ds.train) > 1
        and not on_sphere
    ):
        try:
            if cfg["model"]["name"] == "torusflow":
                von_mises = von_mises_baseline(ds.train, x, fitted=references)
            else:
                baseline = gaussian_baseline(
                    ds.train,
                    x,
                    per_example=True,
                    integers=r.get("integers"),
                    seed=seed,
                    samples=samples,
                    iw=iw,
                    fitted=references,
                )
        except (ValueError, np.linalg.LinAlgError):  # a reference only: none, then
            baseline = von_mises = None
    if (
        info is not None
        and info.get("kind") == "columns"
        and ds.levels is None
        and not r.get("integers")  # (a dequantized target: a bound, not this density)
        and len(ds.train) > 2
    ):
        try:
            regression = regression_baseline(
                ds.train, ds.split_context("train"), x, context, fitted=references
            )
        except (ValueError, np.linalg.LinAlgError):
            regression = None
    found = {
        "gaussian": baseline,
        "histogram": histogram,
        "class_histogram": class_histogram,
        "von_mises": von_mises,
        "regression": regression,
    }
    return {k: v for k, v in found.items() if v is not None}


def _class_histogram(ds, x, context, references) -> np.ndarray | None:
    """Each example's log-probability under the per-position histogram of its own class's
    training examples (add-1/2 counts): the reference a label-conditional model of discrete
    data must beat. None where a class of ``x`` has no training example."""
    train_c = ds.split_context("train")
    if train_c is None or context is None or len(context) != len(x):
        return None
    have, want = train_c.argmax(1).numpy(), context.argmax(1).cpu().numpy()
    out = np.empty(len(x))
    for c in np.unique(want):
        rows = np.flatnonzero(want == c)
        mine = np.flatnonzero(have == c)
        if not len(mine):
            return None
        kept = (
            None if references is None else references.setdefault(("class histogram", int(c)), {})
        )
        out[rows] = histogram_baseline(
            ds.train[mine], x[rows], ds.levels, per_example=True, fitted=kept
        )
    return out


def regression_baseline(train_y, train_c, y, c, fitted=None) -> np.ndarray:
    """Each row's log-density of ``y`` given its context ``c`` under a linear-Gaussian
    regression fitted to the training rows: the maximum-likelihood Gaussian of ``(y, c)``
    (least squares; with at most ten rows per column, or collinear columns, the shrunk one
    :func:`gaussian_baseline` fits), conditioned on ``c``: ``log p(y, c) - log p(c)``. The
    simplest conditional density a conditional table's model should beat (is the flow better
    than a linear regression with Gaussian noise?), on the model's raw scale. ``fitted``: as
    :func:`gaussian_baseline`'s."""
    from scipy.linalg import cholesky, solve_triangular

    key = ("regression",)
    fit = None if fitted is None else fitted.get(key)
    if fit is None:
        joint = np.concatenate(
            [np.asarray(train_y, np.float64), np.asarray(train_c, np.float64)], 1
        )
        d = np.asarray(train_y).shape[1]
        try:  # least squares: the maximum-likelihood Gaussian, where the rows determine it
            if len(joint) <= 10 * joint.shape[1]:
                raise np.linalg.LinAlgError("few rows: shrink")
            loc = joint.mean(0)
            factor = cholesky(np.cov(joint, rowvar=False, bias=True), lower=True)
        except np.linalg.LinAlgError:  # (few rows or collinear columns: as a table's)
            loc, factor = shrunk_gaussian(joint, overwrite=True)
        cov_c = (factor @ factor.T)[d:, d:]
        factor_c = cholesky(cov_c, lower=True)
        fit = (loc, factor, factor_c, d)
        if fitted is not None:
            fitted[key] = fit
    loc, factor, factor_c, d = fit
    v = np.concatenate([np.asarray(y, np.float64), np.asarray(c, np.float64)], 1)

    def log_normal(v, loc, f):
        z = solve_triangular(f, (v - loc).T, lower=True).T
        return (
            -0.5 * (z**2).sum(1) - 0.5 * len(loc) * math.log(2 * math.pi) - np.log(np.diag(f)).sum()
        )

    return log_normal(v, loc, factor) - log_normal(v[:, d:], loc[d:], factor_c)


def _scoring_noise(flow, trace: str | None, dequantization: bool = True) -> str | None:
    """What makes a flow's score random, as eval's output names it ("dequantization", ...),
    or None when ``log_prob`` is exact and deterministic (then more draws are pointless).
    ``dequantization=False``: only an estimated log-density (Hutchinson, Russian roulette).
    ``trace``: the trace estimator eval sets on every CNF block, or None for each block's own
    (as the trainer's validation scores them)."""
    from ..transforms.iresnet import ResidualBlock

    if dequantization and getattr(flow, "dequantizer", None) is not None:
        return "dequantization"
    cnfs = [m for m in flow.modules() if isinstance(m, CNF)]
    if any((trace or m.trace) == "hutchinson" for m in cnfs):
        return "Hutchinson trace"
    if any(isinstance(m, ResidualBlock) and m._method() == "roulette" for m in flow.modules()):
        return "Russian-roulette log-determinant"
    return None


def solver_settings(cnfs: list) -> dict | None:
    """How a continuous flow's blocks are solved (the first block's settings; ``blocks``
    counts them), for the report; None without a CNF."""
    if not cnfs:
        return None
    c = cnfs[0]
    fixed = c.method in _FIXED
    return {
        "method": c.method,
        "steps": grid_steps(c.time, c._step_size()) if fixed else None,
        "rtol": None if fixed else c.rtol,
        "atol": None if fixed else c.atol,
        "trace": c.trace,
        "blocks": len(cnfs),
    }


def describe_solver(o: dict) -> str:
    """``"rk4, 8 steps"`` or ``"dopri5, rtol 1e-05, atol 1e-05"`` for :func:`solver_settings`."""
    grid = (
        f"{o['steps']} step{'' if o['steps'] == 1 else 's'}"
        if o["steps"] is not None
        else f"rtol {o['rtol']:g}, atol {o['atol']:g}"
    )
    return f"{o['method']}, {grid}"


def describe_ode(o: dict, timed: bool = True) -> str:
    """One line for a result's ``ode`` entry: the solver as scored and its evaluations (and,
    ``timed``, the seconds the scoring took)."""
    blocks = f" in each of {o['blocks']} blocks" if o["blocks"] > 1 else ""
    line = (
        f"{describe_solver(o)}, {o['trace']} trace; {o['nfe_mean']:.1f} function evaluations "
        f"per solve{blocks} (max {o['nfe_max']}, {o['solves']} solve"
        f"{'s' if o['solves'] != 1 else ''}"
        + (f", {o['seconds']:.3g} s" if timed and "seconds" in o else "")
        + ")"
    )
    if o["trace"] == "hutchinson":
        line += "; Hutchinson's trace gives an unbiased estimate, noisier than the exact one"
    return line


def _evaluate_manifold_model(
    run, cfg: dict, model, split: str, data, batch_size: int, dev: torch.device
) -> dict:
    """An M-flow run's figures (:func:`~flowforge.workbench.mflow.evaluate_mflow`): the
    reconstruction error against the data's noise level where known, the on-manifold NLL, and
    the gap to the true density where the data has one on a surface."""
    from .mflow import evaluate_mflow, noise_level

    truth, noise = None, None
    if data is not None:
        say_reading(data)
        x = read_examples(data, header=cfg["data"]["options"].get("header"), dtype=run_dtype(cfg))
        if x.dim() != 2 or x.shape[1] != model.features:
            raise DataError(
                f"{data} has shape {tuple(x.shape)}; this run's model expects "
                f"{model.features} columns"
            )
        split = str(data)
    else:
        ds = run_dataset(cfg, checks=False)
        x = ds.split(split)
        noise = noise_level(ds.name)
        if ds.density is not None and ds.density_measure == "surface":
            truth = torch.from_numpy(ds.density(x.double().numpy()))
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    try:
        out = evaluate_mflow(model, x.to(dev, dtype), truth, batch_size)
    except ValueError:  # a layer met non-finite values the (finite) data made overflow
        raise DataError(
            f"{split}: the model cannot score every example (non-finite values inside it: "
            "examples this far from the training data overflow its layers)"
        ) from None
    if not all(v is None or math.isfinite(v) for v in out.values()):  # (None: a one-row se)
        raise DataError(f"{split}: the model cannot score every example (non-finite figures)")
    return {
        "run": str(run),
        "split": split,
        "model": cfg["model"]["name"],
        **run_identity(cfg),
        "bits_per_dim": None,
        "samples": 1,
        "noise_level": noise,
        **out,
    }


def named_of(info: dict, label: int) -> str:
    """A label of a label-conditional run in words: ``3`` or, for a folder's class, ``3
    'dogs'``."""
    names = dict(zip(info["classes"], info.get("names") or ()))
    return f"{label} {names[label]!r}" if label in names else str(label)


def context_file_rows(cfg: dict, spec: str) -> list[list[float]]:
    """The context rows of a table file (``flowforge sample --context-file``): its columns of a
    column-conditional run's context columns, found by their header names (the run's own
    table, held-out rows, or a file of the context columns alone), or, for a run trained
    without a header, a file of just those columns, or of the run's whole width, in order."""
    from .data import _names, read_table

    r, info = cfg["resolved"], cfg["resolved"]["context"]
    found: list = []
    x = read_table(spec, names=found, header=cfg["data"]["options"].get("header"))
    if x.ndim != 2 or not len(x):
        raise ContextError(f"--context-file {spec} holds no rows of context values")
    names = r.get("context_column_names")
    if names and found:
        have = _names(found)
        twice = [n for n in names if have.count(_names([n])[0]) > 1]
        if twice:  # (which of the two is the context: not guessed)
            raise ContextError(
                f"--context-file {spec} has two columns named {str(twice[0])!r}; give the "
                "context columns once"
            )
        missing = [n for n in names if _names([n])[0] not in have]
        if missing:
            raise ContextError(
                f"--context-file {spec} has no column "
                f"{', '.join(repr(str(n)) for n in missing[:5])} (the run's context columns: "
                f"{', '.join(repr(str(n)) for n in names)})"
            )
        index = [have.index(_names([n])[0]) for n in names]
    elif x.shape[1] == info["features"]:
        index = list(range(x.shape[1]))
    elif x.shape[1] == len(info["target_columns"]) + len(info["context_columns"]):
        index = list(info["context_columns"])
    else:
        raise ContextError(
            f"--context-file {spec} has {x.shape[1]} columns: expected the run's "
            f"{info['features']} context column(s), or its whole table "
            f"({len(info['target_columns']) + len(info['context_columns'])} columns)"
        )
    return x[:, index].astype(np.float64).tolist()


def sample_context(cfg: dict, label: str | None, context: str | None, context_file=None):
    """The model-ready context rows that ``--label`` / ``--context`` / ``--context-file`` ask
    for (None for an unconditional run), a few words for the messages, and what was given as
    ``(column names, raw rows)`` (None when unconditional) for the samples' CSV; one-line
    errors otherwise."""
    info = cfg["resolved"].get("context")
    if context_file is not None:
        if context is not None or label is not None:
            raise ContextError("give the context once: --context-file, or --context/--label")
        if info is None or info.get("kind") != "columns":
            raise ContextError(
                "--context-file gives the context columns of a run conditioned on table "
                "columns; this run is "
                + ("unconditional" if info is None else "conditioned on class labels (--label)")
            )
        rows = context_file_rows(cfg, context_file)
        header = cfg["resolved"].get("context_column_names")
        names = [str(c) for c in header or info["context_columns"]]
        n = len(rows)
        what = f" given the {n:,} context row{'s' if n != 1 else ''} of {context_file}"
        return column_context(rows, info, header), what, (names, rows)
    if info is None:
        if label is not None or context is not None:
            raise ContextError("this run is unconditional; drop --label/--context")
        return None, "", None
    if info["kind"] == "label":
        if context is not None:
            raise ContextError(
                "this run is conditioned on class labels: use --label, not --context"
            )
        if label is None:
            raise ContextError(
                f"this run is conditional: pass --label with one or more of its classes "
                f"{info['classes']} (e.g. --label 3 or --label 0,1,2)"
                + (f", or their names ({', '.join(info['names'])})" if info.get("names") else "")
            )
        named = dict(zip(info.get("names") or (), info["classes"]))  # a folder's classes
        try:  # (an empty item, as in 1,,2, is a typo: refused, not skipped)
            labels = [named[v] if v in named else int(v) for v in str(label).split(",")]
        except ValueError:
            labels = []
        for v in str(label).split(","):  # a name that is another class's number: refused
            if v in named and v.strip().lstrip("-").isdecimal() and named[v] != int(v):
                raise ContextError(
                    f"--label {v} names the class folder {v!r} (label {named[v]}) and is the "
                    f"label of another ({named_of(info, int(v))}): give the folder's label, "
                    f"{named[v]}, or rename the folders"
                )
        if not labels:
            names = f" or class names ({', '.join(named)})" if named else ""
            raise ContextError(f"--label expects integers like 3 or 0,1,2{names}, got {label!r}")
        return label_context(labels, info), f" of label {label}", (["label"], [[v] for v in labels])
    if label is not None:
        raise ContextError("this run is conditioned on table columns: use --context, not --label")
    if context is None:
        raise ContextError(
            f"this run is conditional: pass --context with the {info['features']} raw values of "
            f"{column_words(cfg['resolved'].get('context_column_names'), info['context_columns'])}"
            " (rows separated by ';')"
        )
    try:
        rows = [[float(v) for v in row.split(",")] for row in context.split(";") if row.strip()]
    except ValueError:
        rows = []
    if not rows:
        raise ContextError(f"--context expects numbers like '1.5,2' or '1,2;3,4', got {context!r}")
    if len({len(r) for r in rows}) > 1:
        raise ContextError("--context rows have different lengths")
    # the context columns' header names when the table had a header, else their positions
    names = cfg["resolved"].get("context_column_names") or info["context_columns"]
    names = [str(c) for c in names]
    header = cfg["resolved"].get("context_column_names")
    return column_context(rows, info, header), f" given context {context}", (names, rows)
