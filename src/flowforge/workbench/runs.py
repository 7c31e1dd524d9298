r"""The run folder: its layout, what makes a folder a run, and the rules for touching one.

A *run* is a folder that flowforge wrote::

    config.json              the resolved configuration, marked "format": "flowforge-run/1"
    model.ff                 the best model so far (``ff.load(run)`` reads it)
    checkpoint.safetensors   the last resumable state: weights, optimizer, scheduler, RNGs
    metrics.jsonl            one JSON record per logged step and per epoch
    report.html, report/     written by ``flowforge report``
    .lock                    while a training runs in it (the owner's pid)

The rules: a folder is a run only if its ``config.json`` carries flowforge's format marker;
``--overwrite`` removes only the files flowforge writes (and ``report/``/``tb/`` only of the
files flowforge put there), never anything else; a run that holds no checkpoint yet (it failed
before its first epoch ended) may be started again by any command; one training at a time (a
lock file with the owner's pid; a lock whose owner is gone is taken over). Every file is
written atomically (:func:`flowforge.io.atomic_write`); temporary files a killed writer left
behind are removed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import re
import signal
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import io
from ..core import Flow
from .config import (
    SEED_MAX,
    _int,
    checked,
    column_list,
    config_diff,
    resolve_config,
    user_part,
)
from .errors import RunError, WorkbenchError, one_line, shell_word

__all__ = [
    "RUN_FORMAT",
    "CONFIG_FILE",
    "MODEL_FILE",
    "CKPT_FILE",
    "METRICS_FILE",
    "run_config",
    "is_run",
    "load_run",
    "check_out_dir",
    "clear_run",
    "RunLock",
    "write_json",
    "read_metrics",
    "truncate_metrics",
    "fingerprint",
    "run_status",
    "describe_run_status",
    "run_environment",
    "recorded_environment",
    "describe_environment",
    "environment_warning",
]

RUN_FORMAT = "flowforge-run/1"
CONFIG_FILE, MODEL_FILE, CKPT_FILE, METRICS_FILE = (
    "config.json",
    "model.ff",
    "checkpoint.safetensors",
    "metrics.jsonl",
)
LOCK_FILE = ".lock"
TAKEOVER = ".takeover"  # the guard of a stale lock's takeover: LOCK_FILE + TAKEOVER
RUN_FILES = (CONFIG_FILE, MODEL_FILE, CKPT_FILE, METRICS_FILE, "report.html", LOCK_FILE)
REPORT_DIR, TB_DIR = "report", "tb"
# the figures flowforge report writes (what --overwrite removes from report/: these names
# exactly, so that a user's own notes there, "latent_notes.txt", stay)
REPORT_FIGURES = (
    "curves.png", "samples.png", "nearest.png", "density.png", "latent.png",
    "latent_columns.png", "marginals.png", "pairs.png", "correlations.png", "contexts.png",
)  # fmt: skip
_CLASS_FIGURE = re.compile(r"classes_T[0-9.e+-]+\.png")  # samples per class at temperature T


# curves.report-x1y2z3w4.png: one report's copy (a word of flowforge's own in the name, so
# that a user's curves.20240101.png in report/ is not taken for one)
_VERSIONED = re.compile(r"(.+)\.report-([a-z0-9_]{8})(\.png)")


def versioned_figure(name: str, token: str) -> str:
    """The name under which one report's page shows a figure: ``curves.png`` as
    ``curves.report-TOKEN.png``, so that a page never shows another report's figure."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.report-{token}{dot}{suffix}"


def versioned_token(name: str) -> str | None:
    """The TOKEN of a report's own copy of a figure (``curves.report-TOKEN.png``); None
    otherwise."""
    m = _VERSIONED.fullmatch(name)
    return m[2] if m is not None and is_report_figure(m[1] + m[3]) else None


def is_report_figure(name: str) -> bool:
    """Whether a file name in ``report/`` is one of the figures ``flowforge report`` writes
    (``curves.png``, and one report's own copy ``curves.report-TOKEN.png``)."""
    m = _VERSIONED.fullmatch(name)
    if m is not None and (m[1] + m[3] in REPORT_FIGURES or _CLASS_FIGURE.fullmatch(m[1] + m[3])):
        return True
    return name in REPORT_FIGURES or _CLASS_FIGURE.fullmatch(name) is not None


MAX_CONFIG_BYTES = 16 << 20


def run_identity(cfg: dict) -> dict:
    """What tells a run's numbers from another's in a sweep, for the commands' ``--json``:
    the run's training seed, its data's seed and options, and the SHA-256 of its splits as
    training read them (two runs on differently drawn data have different validation sets,
    and their validation NLLs do not compare)."""
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    fp = (cfg.get("resolved") or {}).get("data_fingerprint")
    return {
        "run_seed": cfg.get("seed"),
        "data_seed": data.get("seed"),
        "data_options": data.get("options") or {},
        "data_sha256": fp.get("sha256") if isinstance(fp, dict) else None,
    }


def run_config(run: str | os.PathLike) -> dict:
    """The ``config.json`` of a run folder; :class:`RunError` if the folder is not a run."""
    path = Path(run) / CONFIG_FILE
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        _check_run_files(Path(run))  # a link or a pipe: refused before it is opened
    if not path.is_file():
        if not os.path.lexists(run):  # (a mistyped path, or a run not yet started)
            raise RunError(f"{run}: no such folder (no run there)")
        raise RunError(f"{run} is not a flowforge run (no {CONFIG_FILE})")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise RunError(f"{path} is too large to be a flowforge run config")
        cfg = json.loads(path.read_text())
    except RecursionError:
        raise RunError(f"{path} is corrupt: nested too deeply") from None
    except OSError as e:  # (no permission, an I/O error: not a corrupt file)
        raise RunError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # (JSON, UTF-8, a number of thousands of digits)
        raise RunError(f"{path} is corrupt: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT:
        raise RunError(f"{run} is not a flowforge run ({CONFIG_FILE} was not written by flowforge)")
    if not isinstance(cfg.get("resolved"), dict):
        raise RunError(f"{path} is not a complete flowforge run config")
    _check_run_files(Path(run))
    _check_sections(path, cfg)
    _check_shapes(path, cfg["resolved"])
    _check_names(path, cfg["resolved"])
    return cfg


MAX_NOTES = 200  # data warnings a run's config may hold (flowforge writes a handful)


def _is_list(v, kind) -> bool:
    return (
        isinstance(v, list)
        and len(v) <= 1 << 20
        and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)
    )


def _check_names(path: Path, r: dict) -> None:
    """The column names and the context description commands print, write and index with:
    of the kinds flowforge writes (a hand-edited config is refused here, not met as an
    internal error when a sample file is written)."""

    def damaged(key: str, what: str):
        return RunError(f"{path} is damaged: resolved.{key} must be {what}")

    for key in ("columns", "context_column_names"):
        if r.get(key) is not None and not _is_list(r[key], str):
            raise damaged(key, "a list of column names (strings)")
    # what sample, eval and report repeat or read of the data (a run folder is data: a
    # hand-made one is refused here, not met as an internal error or a flood of lines)
    notes = r.get("data_warnings")
    if notes is not None and not (
        _is_list(notes, str) and len(notes) <= MAX_NOTES and all(len(n) <= 20_000 for n in notes)
    ):
        raise damaged("data_warnings", f"a list of at most {MAX_NOTES} notes (strings)")
    if r.get("whole_columns") is not None and not _is_list(r["whole_columns"], int):
        raise damaged("whole_columns", "a list of column indices")

    def finite(v, most: int) -> bool:  # (a list of at most `most` finite numbers)
        return _is_list(v, (int, float)) and len(v) <= most and all(map(math.isfinite, v))

    seen = r.get("integer_values")
    if seen is not None and not (
        isinstance(seen, dict) and len(seen) <= 1 << 16 and all(finite(v, 1 << 10)
                                                                  for v in seen.values())
    ):  # fmt: skip
        raise damaged("integer_values", "a mapping of column indices to lists of values")
    ranges = r.get("ranges")
    if ranges is not None and not (
        isinstance(ranges, list) and len(ranges) <= 1 << 20
        and all(finite(p, 2) and len(p) == 2 and p[0] <= p[1] for p in ranges)
    ):  # fmt: skip
        raise damaged("ranges", "a list of finite [low, high] pairs, one per column")
    info = r.get("context")
    if info is None:
        return
    if not isinstance(info, dict) or info.get("kind") not in ("label", "columns"):
        raise damaged("context", "a description of a label or column context")
    lists = ("classes",) if info["kind"] == "label" else ("target_columns", "context_columns")
    for key in lists:
        if not _is_list(info.get(key), int):
            raise damaged(f"context.{key}", "a list of integers")
    if not (isinstance(info.get("features"), int) and info["features"] >= 1):
        raise damaged("context.features", "a positive integer")


def _check_run_files(run: Path) -> None:
    """A run's files are plain files in its folder: a link (to a file elsewhere, or to
    nothing) or a pipe there would make flowforge read or append outside the folder, or wait
    for ever."""
    for name in (CONFIG_FILE, METRICS_FILE, MODEL_FILE, CKPT_FILE):
        p = run / name
        if os.path.lexists(p) and (p.is_symlink() or not p.is_file()):
            raise RunError(
                f"{p} is not a regular file (a link, pipe or folder); a run's files are plain "
                "files in its folder"
            )
    tb = run / TB_DIR  # where training appends TensorBoard's events
    if os.path.lexists(tb) and (tb.is_symlink() or not tb.is_dir()):
        raise RunError(
            f"{tb} is not a folder of the run's own (a link, or a file); training writes its "
            "TensorBoard events there, and flowforge writes only inside the run folder"
        )


def _check_sections(path: Path, cfg: dict) -> None:
    """The sections every command reads, of the kinds flowforge writes."""
    for key in ("model", "data", "train"):
        if not isinstance(cfg.get(key), dict):
            raise RunError(f"{path} is damaged: {key} must be a mapping")
    d = cfg["data"]
    if not isinstance(d.get("name"), str) or not isinstance(d.get("options", {}), dict):
        raise RunError(f"{path} is damaged: data must name a dataset and map its options")
    try:  # (what splits the data: numpy's own words did not name it)
        checked("data.seed", d.get("seed", 0), _int(0, SEED_MAX))
    except WorkbenchError as e:
        raise RunError(f"{path} is damaged: {e}") from None
    if not isinstance(cfg["model"].get("kwargs", {}), dict):
        raise RunError(f"{path} is damaged: model.kwargs must be a mapping")
    for key in ("flow_config", "init_from", "environment", "sizing"):
        if cfg["resolved"].get(key) is not None and not isinstance(cfg["resolved"][key], dict):
            raise RunError(f"{path} is damaged: resolved.{key} must be a mapping")


def _check_shapes(path: Path, r: dict) -> None:
    """The shapes every command reshapes data with: lists of positive integers of one size
    (a damaged or hand-edited config is refused here, not met as an error deep inside)."""
    shapes = {}
    for key in ("data_shape", "event_shape"):
        v = r.get(key)
        if not (
            isinstance(v, list)
            and 1 <= len(v) <= 8
            and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1 << 24 for n in v)
        ):
            raise RunError(
                f"{path} is damaged: resolved.{key} must be a list of positive integers, got "
                f"{json.dumps(v)[:60]}"
            )
        shapes[key] = v
    if math.prod(shapes["data_shape"]) != math.prod(shapes["event_shape"]):
        raise RunError(
            f"{path} is damaged: resolved.data_shape {shapes['data_shape']} and event_shape "
            f"{shapes['event_shape']} hold different numbers of values"
        )


def is_run(path: Path) -> bool:
    try:
        run_config(path)
        return True
    except RunError:
        return False


def load_run(run: str | os.PathLike, map_location="cpu") -> Flow:
    """The best model of a run, scoring raw data: ``ff.load(run)`` with a run-folder check
    and one-line errors. The flow takes inputs of shape ``config["resolved"]["event_shape"]``
    (flattened images under the vector layout)."""
    cfg = run_config(run)
    if not (Path(run) / MODEL_FILE).exists():
        if any(True for _ in _logged_epochs(Path(run))):  # the best model was written, then lost
            raise RunError(
                f"{run} has no {MODEL_FILE}, although its training finished epochs: the file was "
                "removed or lost, and the checkpoint holds the last weights, not the best; train "
                f"the run again (flowforge train ... --out {shell_word(run)} --overwrite)"
            )
        resume = (
            f"; continue it with flowforge train --out {shell_word(run)} --resume"
            if _has_checkpoint(Path(run))
            else "; run its flowforge train command again"
        )
        raise RunError(
            f"{run} has no model yet: its training stopped before the first epoch ended{resume}"
        )
    try:
        flow = io.load(Path(run) / MODEL_FILE, map_location)
    except ValueError as e:
        raise RunError(one_line(e)) from None
    from .build import same_model

    built = cfg["resolved"].get("flow_config")
    if built is not None and not same_model(built, getattr(flow, "saved_config", None)):
        raise RunError(
            f"{run}'s config.json and {MODEL_FILE} disagree: the model is not the one this run "
            "built (another architecture or size); one of the files was changed or replaced"
        )
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    want = train.get("dtype")  # (runs since 2026-12-08 record their precision)
    weights = next((p.dtype for p in flow.parameters() if p.is_floating_point()), None)
    # (a float64 run's model in float32 would round its float64 data; a float32 run's model
    # moved to float64 scores its data as well or better)
    if want == "float64" and weights is not None and str(weights) != "torch.float64":
        raise RunError(
            f"{run}'s config.json and {MODEL_FILE} disagree: the run trained in {str(want)[:20]} "
            f"(train.dtype) and the model's weights are {str(weights).removeprefix('torch.')}; "
            "one of the files was changed or replaced"
        )
    has = getattr(flow, "event_shape", None)
    said = cfg["resolved"].get("event_shape")
    if has is not None and said is not None and list(has) != list(said):
        raise RunError(
            f"{run}'s config.json and {MODEL_FILE} disagree: the config says examples of shape "
            f"{tuple(said)}, the model takes {tuple(has)}; one of the files was changed or replaced"
        )
    info = cfg["resolved"].get("context")
    if isinstance(flow, Flow) and info and info["kind"] == "columns" and flow.context_map is None:
        # a run from before its model standardised its contexts: the layer from its statistics
        from .. import models

        try:
            flow = models.context_standardized(flow, **info["stats"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise RunError(f"{run} is damaged: resolved.context.stats: {str(e)[:200]}") from None
    levels = cfg["resolved"].get("levels")
    if isinstance(flow, Flow):  # discrete data: a dequantizer, or an integer flow's levels
        has = getattr(flow.dequantizer or flow, "levels", None)
        if has != levels:
            said = "continuous data" if levels is None else f"data of {levels} levels"
            model = "continuous data" if has is None else f"data of {has} levels"
            raise RunError(
                f"{run}'s config.json and {MODEL_FILE} disagree: the config says {said}, the "
                f"model is one for {model}; one of the files was changed or replaced"
            )
    return flow


def _has_checkpoint(out: Path) -> bool:
    return (out / CKPT_FILE).is_file()


WHERE_IT_RUNS = ("device", "tensorboard")  # train options a resume may change


COLUMN_OPTIONS = ("integers", "target_columns")  # columns as "a,b" or [a, b] alike


def _same_spelling(given: dict, stored: dict) -> dict:
    """``given`` with what names the run's own settings otherwise spelled as the run has them:
    its data file by another path (``./tab.csv``, an absolute one, one from another folder),
    columns as ``"c"`` or ``[c]``. A resume that repeats the original options in other words
    is the same run, not "config differs"."""
    a, b = given.get("data"), stored.get("data")
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return given
    data = dict(a)
    x, y = a.get("name"), b.get("name")
    if isinstance(x, str) and isinstance(y, str) and x != y:
        try:
            if Path(x).exists() and Path(x).resolve() == Path(y).resolve():
                data["name"] = y
        except (OSError, ValueError):
            pass
    mine, theirs = a.get("options"), b.get("options")
    if isinstance(mine, dict) and isinstance(theirs, dict):
        options = dict(mine)
        for k in COLUMN_OPTIONS:
            if k in mine and k in theirs and column_list(mine[k]) == column_list(theirs[k]):
                options[k] = theirs[k]
        data["options"] = options
    return {**given, "data": data}


def _defining(cfg: dict) -> dict:
    """:func:`user_part` without :data:`WHERE_IT_RUNS`: what a resume must keep."""
    part = user_part(cfg)
    train = part.get("train")
    if isinstance(train, dict):
        part = {**part, "train": {k: v for k, v in train.items() if k not in WHERE_IT_RUNS}}
    return part


def check_out_dir(out: Path, cfg: dict, resume: bool, overwrite: bool) -> dict | None:
    """Refuse to clobber anything; returns the stored config when resuming.

    A run folder that holds no checkpoint (its training failed before the first epoch ended)
    is treated as empty: the same or a corrected command starts it again.
    """
    if resume:
        if overwrite:
            raise RunError("--resume and --overwrite contradict each other")
        stored = run_config(out)
        if not _has_checkpoint(out):
            epochs = sum(1 for _ in _logged_epochs(out))
            train = stored.get("train") if isinstance(stored, dict) else None
            target = train.get("epochs") if isinstance(train, dict) else None
            # trained, its checkpoint removed: more than the first epoch logged, or every
            # epoch the run asked for (a finished one-epoch run)
            done = isinstance(target, int) and 1 <= target <= epochs
            if (out / MODEL_FILE).exists() and (epochs > 1 or done):
                raise RunError(
                    f"{out} has no {CKPT_FILE} to resume from, though it holds a model trained "
                    f"for {epochs} epoch{'s' if epochs != 1 else ''} (the checkpoint was "
                    "removed?); use --overwrite "
                    "(overwrite=True from Python) to "
                    "train it again, or another --out"
                )
            raise RunError(
                f"{out} has no {CKPT_FILE} to resume from (its training stopped before the "
                "first checkpoint); run the same command without --resume to start it again"
            )
        # (a key added to flowforge since the run was written takes its default: no change;
        # where it runs and whether it writes TensorBoard files may change, as the Trainer's
        # own checkpoint check allows: a GPU run resumed on the CPU, or on another GPU)
        mine = _defining(resolve_config(stored))
        diff = config_diff(mine, _same_spelling(_defining(cfg), mine))
        if diff:
            raise RunError(
                f"cannot resume {out}: its config differs ({'; '.join(diff[:4])}"
                f"{'; ...' if len(diff) > 4 else ''}); drop the changed options or use a new --out"
            )
        return stored
    if os.path.lexists(out) and not out.exists():
        raise RunError(f"--out {out} is a link to nothing ({os.readlink(out)})")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or all(
        f.is_file()
        and (
            _lock_record(f) is not None
            if f.name == LOCK_FILE
            else _our_temporary(f.name) or (f.name == LOCK_FILE + TAKEOVER and not f.stat().st_size)
        )
        for f in out.iterdir()
    ):
        return None  # (empty, or holding only a lock a training took, or its leftovers)
    if not is_run(out):
        raise RunError(
            f"{out} is not empty and is not a flowforge run; flowforge never writes into or "
            "clears a folder it did not create: use another --out"
        )
    if overwrite or not (_has_checkpoint(out) or (out / MODEL_FILE).exists()):
        return None  # the user asked to replace it, or nothing to keep (a failed start)
    stored = run_config(out)
    try:  # (a key added to flowforge since: its default, no difference)
        mine = _defining(resolve_config(stored))
    except WorkbenchError:  # (a damaged config: compared as written)
        mine = _defining(stored)
    diff = config_diff(mine, _same_spelling(_defining(cfg), mine))
    same = not diff  # (another device or tensorboard setting: the same run, where it runs)
    if same and not _has_checkpoint(out):
        epochs = sum(1 for _ in _logged_epochs(out))
        if epochs <= 1:  # the first checkpoint's write failed (a full disk): start it again
            return None
        raise RunError(  # a trained model whose checkpoint was removed
            f"{out} already holds this run's trained model ({epochs} epochs) but no "
            f"{CKPT_FILE}, so it cannot be resumed; use --overwrite (overwrite=True from "
            "Python) to train it again, or "
            "another --out"
        )
    if same:
        raise RunError(
            f"{out} already holds this run; use --resume to continue it or --overwrite "
            "to start again (from Python: resume=True, overwrite=True)"
        )
    raise RunError(
        f"{out} already holds a different run ({'; '.join(diff[:4])}"
        f"{'; ...' if len(diff) > 4 else ''}); use another --out, or --overwrite "
        "(overwrite=True from Python) to replace it"
    )


def _ours_in(folder: Path, ours) -> None:
    """Remove the files flowforge wrote in ``folder`` (``ours(name)`` true) and the folder if
    that leaves it empty; anything else stays."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for f in folder.iterdir():
        if f.is_file() and not f.is_symlink() and ours(f.name):
            f.unlink()
    try:
        folder.rmdir()
    except OSError:  # not empty: something that is not ours
        pass


@contextlib.contextmanager
def held_signals():
    """SIGINT, SIGTERM and SIGHUP wait while inside (a run's files are being cleared): one
    that arrives is raised again on leaving, under the handler there was before. An ignored
    signal stays ignored; outside the main thread nothing is held."""
    got: list[int] = []
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if s is None or signal.getsignal(s) in (signal.SIG_IGN, None):
            continue
        try:
            old[s] = signal.signal(s, lambda signum, frame: got.append(signum))
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)


def clear_run(out: Path) -> None:
    """Remove the files a run writes, and nothing else (a user's file in the folder stays).
    ``config.json``, what marks the folder as a run, goes last: a folder left half cleared
    (a kill) is still a run, which ``--overwrite`` clears; signals wait for the clearing."""
    if not is_run(out):
        raise RunError(f"{out} is not a flowforge run; refusing to clear it")
    with held_signals():
        _clear_training(out)
        (out / CONFIG_FILE).unlink(missing_ok=True)


def _clear_training(out: Path) -> None:
    """Remove what a training writes in ``out`` (checkpoint, model, metrics, report,
    TensorBoard events, their temporaries), nothing else."""
    for name in RUN_FILES:
        if name not in (LOCK_FILE, CONFIG_FILE):
            (out / name).unlink(missing_ok=True)
    _ours_in(out / REPORT_DIR, is_report_figure)
    _ours_in(out / TB_DIR, lambda name: name.startswith("events.out.tfevents."))
    remove_orphans(out)


# what a Trainer writes in its folder (``train`` adds config.json and the lock)
TRAINING_FILES = (CKPT_FILE, MODEL_FILE, METRICS_FILE, "report.html", REPORT_DIR, TB_DIR)


def claim_training_folder(out: Path, overwrite: bool) -> None:
    """Before a bare :class:`~.trainer.Trainer` (not :func:`train`'s, which checks and clears
    its run folder itself) starts a new training in ``out``: refuse a run folder of
    :func:`train`, a folder that holds files flowforge did not write, and one that holds an
    earlier training's (checkpoint, model, metrics) unless ``overwrite``, which removes those
    (and only those)."""
    if os.path.lexists(out) and not out.exists():
        raise RunError(f"out={out} is a link to nothing ({os.readlink(out)})")
    if out.exists() and not out.is_dir():
        raise RunError(f"out={out} exists and is not a folder")
    if not out.is_dir():
        return
    if is_run(out):  # (train's folder, with its config.json: train clears and checks it)
        raise RunError(
            f"out={out} is a run folder of flowforge train; the bare Trainer writes no "
            "config.json for it: use train(..., overwrite=True) (or --overwrite) to train it "
            "again, or another out"
        )
    theirs, earlier = [], []
    for f in sorted(out.iterdir()):
        n = f.name
        if n in (LOCK_FILE, LOCK_FILE + TAKEOVER) or _our_temporary(n):
            continue
        (earlier if n in TRAINING_FILES else theirs).append(n)
    if theirs:
        raise RunError(
            f"out={out} holds files flowforge did not write ({', '.join(theirs[:3])}"
            f"{', ...' if len(theirs) > 3 else ''}); it never writes into a folder of yours: "
            "use another out"
        )
    if earlier and not overwrite:
        raise RunError(
            f"out={out} holds an earlier training's {', '.join(earlier)}: fit(resume=True) "
            "continues it, Trainer(..., overwrite=True) replaces it, or use another out"
        )
    if earlier:
        with held_signals():
            _clear_training(out)


def _our_temporary(name: str) -> bool:
    """Exactly the names io.atomic_write and the lock give their temporary files (a run file's
    name between dots, mkstemp's 8 random characters, ``.tmp``): a user's .config.backup.tmp
    is not one."""
    return any(re.fullmatch(rf"\.{re.escape(n)}\.[a-z0-9_]{{8}}\.tmp", name) for n in RUN_FILES)


# .report-hHOST-PID-XXXXXXXX.tmp (HOST: 6 hex digits of this machine's name; an older
# flowforge's .report-PID-... and .report-...: no host)
_REPORT_TMP = re.compile(r"\.report-(?:h([0-9a-f]{6})-)?(?:([0-9]+)-)?[a-z0-9_]{8}\.tmp")


def is_report_temporary(name: str) -> bool:
    """Whether ``name`` is that of a ``flowforge report``'s temporary folder (its own, a
    killed one's, another machine's)."""
    return _REPORT_TMP.fullmatch(name) is not None


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _report_file(name: str) -> bool:
    """What ``flowforge report`` writes in its temporary folder: figures and the page."""
    return is_report_figure(name) or name == "report.html" or _our_temporary(name)


def report_folder_name() -> str:
    """The prefix of ``flowforge report``'s temporary folder in a run (``tempfile.mkdtemp``
    adds 8 random characters and ``.tmp``): its machine and process id tell a live one (or
    another machine's) from a leftover."""
    return f".report-h{_host_tag()}-{os.getpid()}-"


def _report_leftover(f: Path) -> bool:
    """Whether ``f`` is a killed report's temporary folder: one of this machine whose process
    is gone (a report in progress, or one of another machine sharing the run's folder, stays),
    or an older flowforge's, which named neither."""
    m = _REPORT_TMP.fullmatch(f.name)
    if not m or not f.is_dir() or f.is_symlink():
        return False
    host, pid = m.group(1), int(m.group(2)) if m.group(2) else None
    if host is not None and host != _host_tag():
        return False
    return pid is None or (pid != os.getpid() and not _pid_alive(pid))


def remove_report_leftovers(run: Path) -> None:
    """Remove what a killed ``flowforge report`` left in ``run``: its temporary folders
    (:func:`_report_leftover`: ``.report-hHOST-PID-XXXXXXXX.tmp/`` of this machine whose
    process is gone, and an older flowforge's), their figures and page only, and its page's
    temporary file (``.report.html.XXXXXXXX.tmp``). A user's file of another name stays."""
    for f in Path(run).iterdir():
        if _report_leftover(f):
            _ours_in(f, _report_file)
        elif f.name.startswith(".report.html.") and _our_temporary(f.name) and f.is_file():
            f.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # (another user's: alive; an absurd number: leave it be)
    return True


def remove_orphans(out: Path) -> None:
    """Remove temporary files that a killed atomic write left behind (``.<name>.*.tmp``), and
    the figures of a killed ``flowforge report`` (``.report-*.tmp/``)."""
    if not out.is_dir():
        return
    for f in out.iterdir():
        if f.name.startswith(".") and f.name.endswith(".tmp") and f.is_file():
            # exactly the names io.atomic_write gives (mkstemp's 8 random characters): a
            # user's .config.backup.tmp stays
            if _our_temporary(f.name):
                f.unlink(missing_ok=True)
        elif _report_leftover(f):  # a killed report's figures (not a live one's)
            _ours_in(f, _report_file)


def _lock_record(path: Path) -> dict | None:
    """The record of a lock file RunLock wrote (``pid``, ``host``): a regular file holding it
    whole (it is written aside and linked into place, so it is never seen part-written); None
    for anything else, a user's ``.lock`` (even an empty one) included."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
            return None
        info = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    pid = info.get("pid") if isinstance(info, dict) else None
    # (a pid os.kill takes: one beyond a C int was an internal OverflowError)
    ok = isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31 and "host" in info
    return info if ok else None


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (``/proc/PID/stat``'s field 22, clock ticks since boot);
    None where that cannot be read (no /proc, no such process)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        return int(raw[raw.rindex(b")") + 2 :].split()[19])  # (fields from the 3rd on)
    except (OSError, ValueError, IndexError):
        return None


def _exited(pid: int) -> bool:
    """Whether process ``pid`` has ended and waits only to be reaped (a zombie: state ``Z``
    or ``X`` in ``/proc/PID/stat``): a training killed under a parent that has not waited
    for it still answers ``kill(pid, 0)``; False where ``/proc`` cannot tell."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        return raw[raw.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")
    except (OSError, ValueError, IndexError):
        return False


def _may_train(pid: int) -> bool:
    """Whether process ``pid`` may be a training (a Python process: ``flowforge``, ``python``,
    ``torchrun``); True where ``/proc`` cannot tell."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return True
    return not cmd or any(w in cmd for w in (b"python", b"flowforge", b"torchrun"))


class RunLock:
    """``with RunLock(out):`` holds ``out/.lock`` (pid and host) for one training; a second
    training into the same folder is refused; a lock whose process is gone is taken over."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.held = False

    def _owner_alive(self, info: dict) -> bool:
        """Whether the process of a lock's record (:func:`_lock_record`) may still run."""
        pid, host = info["pid"], info.get("host")
        if host != socket.gethostname():
            return True  # another machine's lock: cannot tell, keep it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        if _exited(pid):
            return False  # (killed, not yet reaped by its parent)
        start = info.get("start")
        if isinstance(start, int) and _process_start(pid) not in (None, start):
            return False  # the pid now names another process (reused since the owner died)
        if not isinstance(start, int) and not _may_train(pid):
            return False  # (a lock without its start naming init, a shell: no training of ours)
        return pid != os.getpid() or self.held

    def _take(self, record: bytes) -> None:
        """Create the lock holding ``record``, whole or not at all (``FileExistsError`` if
        there is one): written to a temporary name and hard-linked into place; where the file
        system has no hard links, created exclusively and written."""
        # (the folder as the kernel finds it: mkstemp resolves `link/..` by its text, and would
        # look for another folder than the one just made through the link)
        folder = os.path.realpath(self.path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(record)
            try:
                os.link(tmp, self.path)
                return
            except FileExistsError:
                raise
            except OSError:  # no hard links here (FAT, some network file systems)
                pass
        finally:
            os.unlink(tmp)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(record)

    def _take_over(self, stale: dict) -> None:
        """Remove a stale lock, one process at a time and only while it still holds the record
        found stale: two processes that both found it stale would otherwise each remove it,
        the second removing the lock the first had just taken. The guard, ``.lock.takeover``,
        is created exclusively; one left by a process killed within these lines is removed
        after 30 s."""
        guard = self.path.with_name(self.path.name + TAKEOVER)
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another process is taking it over: look again shortly
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > 30:
                    guard.unlink()
            time.sleep(0.05)
            return
        os.close(fd)
        try:
            if _lock_record(self.path) == stale:
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        mine = {"pid": os.getpid(), "host": socket.gethostname()}
        start = _process_start(os.getpid())
        if start is not None:  # (tells a reused pid from the owner)
            mine["start"] = start
        record = json.dumps(mine).encode()
        self._record = record
        for _ in range(100):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._take(record)
            except FileExistsError:
                info = _lock_record(self.path)
                if info is None:
                    raise RunError(
                        f"{self.path} exists and is not a lock flowforge wrote (an empty one "
                        "included); flowforge does not touch files it did not create: use "
                        "another --out, or remove it if it is an old lock of flowforge's"
                    ) from None
                if self._owner_alive(info):
                    raise RunError(
                        f"{self.path.parent} is in use by another training ({json.dumps(info)}); "
                        f"wait for it to finish, or remove {self.path} if that process is gone"
                    ) from None
                self._take_over(info)  # stale: its owner is gone
                continue
            except OSError as e:  # a read-only or full disk, a folder that is not ours to write
                raise RunError(f"cannot write into {self.path.parent}: {e.strerror or e}") from None
            self.held = True
            return self
        raise RunError(
            f"cannot take the lock {self.path}: another process is taking over its stale lock "
            f"({self.path.name}{TAKEOVER}, removed after 30 s if that process died); try again"
        )

    def __exit__(self, *exc) -> bool:
        if self.held:
            with contextlib.suppress(OSError):
                if self.path.read_bytes() == self._record:  # ours still (never another's)
                    self.path.unlink()
            self.held = False
        return False


def _checkpoint_counters(path: Path) -> dict | None:
    """``epoch`` and ``finished`` from a checkpoint's header (the tensors are not read), or
    None for a missing, unreadable or malformed one (a run folder is untrusted data)."""
    try:
        meta = io.read_metadata(path)
        epoch, finished = meta["epoch"], meta["finished"]
    except (ValueError, KeyError):
        return None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return None
    if finished not in (None, "finished", "early-stopped"):
        return None
    interrupt = meta.get("interrupt")  # (None: a checkpoint from before it was recorded)
    return {"epoch": epoch, "finished": finished, "interrupt": interrupt}


def _logged_epochs(run: Path):
    """The epoch records of ``metrics.jsonl``, streamed (none where it cannot be read): what
    every ``eval`` looks at, in memory of one record."""
    path = Path(run) / METRICS_FILE
    try:
        if path.is_file():
            yield from (r for r in _known_records(path) if r["type"] == "epoch")
    except (RunError, OSError):
        return


def _before_first_checkpoint(run: Path, cfg: dict, epochs: int) -> dict | None:
    """:func:`run_status` of a run with a model and no checkpoint: one killed (or failed) after
    its first ``model.ff`` and before its first checkpoint; None for a run whose epochs all
    ran, or that stopped early, and whose checkpoint was removed (to save disk)."""
    if not (run / MODEL_FILE).is_file():
        return None
    done = bad = 0  # the last epoch logged, and the epochs since the last best one
    for r in _logged_epochs(run):
        done = max(done, r["epoch"])
        bad = 0 if r.get("best") is True else bad + 1
    if not 0 < done < epochs:
        return None
    patience = cfg["train"].get("patience")
    if isinstance(patience, int) and patience > 0 and bad >= patience:
        return None  # (early-stopped)
    return {
        "state": "interrupted",
        "epoch": done + 1,
        "epochs": epochs,
        "finished_epochs": done,
        "checkpoint": False,
    }


def run_status(run: str | os.PathLike, cfg: dict | None = None) -> dict | None:
    """Whether a run's training is unfinished: ``{"state": "training" | "interrupted",
    "epoch": E, "epochs": N, "finished_epochs": F}`` (``E``: the epoch in progress or cut off,
    ``F``: the epochs finished), from its lock (a live owner: still training) and its
    checkpoint's counters; None for a finished or early-stopped run, and wherever the files
    do not tell (missing, malformed: nothing is said rather than a guess)."""
    run = Path(run)
    try:
        cfg = cfg if cfg is not None else run_config(run)
        epochs = cfg["train"]["epochs"]
    except (RunError, KeyError, TypeError):
        return None
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return None
    lock = _lock_record(run / LOCK_FILE)
    try:
        # (a pid of 0 or below would ask after a process group: not a lock of ours)
        training = lock is not None and lock["pid"] > 0 and RunLock(run)._owner_alive(lock)
    except (OSError, ValueError, TypeError, OverflowError):
        training = False
    counters = _checkpoint_counters(run / CKPT_FILE)
    if counters is None and not training:
        if os.path.lexists(run / CKPT_FILE):
            return None  # (a damaged checkpoint: nothing is said)
        return _before_first_checkpoint(run, cfg, epochs)
    done = counters["epoch"] if counters is not None else 0
    if done > epochs or (not training and (counters["finished"] or done == epochs)):
        return None  # (finished, early-stopped, or counters that fit no run of this config)
    state = "training" if training else "interrupted"
    if not training:  # an epoch's model.ff and record written, its checkpoint not (a kill)
        done = max(done, min(epochs, max((r["epoch"] for r in _logged_epochs(run)), default=0)))
    out = {
        "state": state,
        "epoch": min(done + 1, epochs),
        "epochs": epochs,
        "finished_epochs": done,
    }
    if not training and counters["interrupt"] is False:
        out["interrupt"] = False  # it stopped without an interrupt's save: killed, or failed
    if training and lock.get("host") != socket.gethostname():  # (its process cannot be asked)
        out["host"] = str(lock.get("host"))[:100]
    return out


def describe_run_status(status: dict, run) -> str:
    """One sentence for :func:`run_status`'s record."""
    k, n, done = status["epoch"], status["epochs"], status["finished_epochs"]
    finished = f"{done} epoch{'s' if done != 1 else ''} finished"  # (interrupted)
    if status["state"] == "training" and "host" in status:
        return (
            f"this run's lock says it is training on host {status['host']!r} ({done} of {n} "
            "epochs finished so far), which cannot be checked from here; its scores are of the "
            "best model so far"
        )
    if status["state"] == "training":
        return (
            f"this run is still training ({done} of {n} epochs finished so far); its scores are "
            "of the best model so far"
        )
    if status.get("checkpoint") is False:
        return (
            f"this run stopped at epoch {k} of {n} before its first checkpoint ({finished}); its "
            "scores are of an unfinished model (the same train command starts it again)"
        )
    how = f"was interrupted at epoch {k} of {n} ({finished})"
    if status.get("interrupt") is False:
        how = (
            f"stopped at epoch {k} of {n} ({finished}) without an interrupt's save (killed, or "
            "an error such as a full disk)"
        )
    return (
        f"this run {how}; its scores are of an unfinished model "
        f"(flowforge train --out {shell_word(run)} --resume continues it)"
    )


def write_json(path: Path, obj) -> None:
    io.atomic_write(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


MAX_METRICS_BYTES = 4 << 30  # a metrics file larger than this is not read (not one we wrote)
METRICS_STEP_BYTES = 1 << 30  # past this size the trainer logs no more step records
MAX_METRICS_LINE = 1 << 20  # a longer line is unreadable (no record is that long)
MAX_STEP_RECORDS = 50_000  # step records held in memory; beyond, every other one is dropped
MAX_OTHER_RECORDS = 50_000  # the same for the epoch, warning and compile records, each type
MAX_UNREADABLE = 1000  # line numbers of unreadable lines kept (report names a few)


class Records(list):
    """Metrics records in logged order, holding at most about ``2 * steps`` step records and
    ``2 * MAX_OTHER_RECORDS`` records of each other type the trainer writes: past that, every
    other record of that type is dropped (and then only every 2nd, 4th, ... new one kept), so
    a long run's history is an even thinning of its records in bounded memory. A record of no
    such type (the trainer writes none) is kept."""

    def __init__(self, records=(), steps: int = MAX_STEP_RECORDS):
        super().__init__()
        self.limit = steps
        self.kinds: dict[str, list[int]] = {}  # type: [stride, records seen, records held]
        self.extend(records)

    @property
    def stride(self) -> int:
        """The step records' thinning: every ``stride``-th one is held."""
        return self.kinds.get("step", [1])[0]

    def append(self, record) -> None:
        kind = record.get("type") if isinstance(record, dict) else None
        if kind in _RECORD_FIELDS:
            k = self.kinds.setdefault(kind, [1, 0, 0])
            k[1] += 1
            if (k[1] - 1) % k[0]:
                return
            if k[2] >= 2 * (self.limit if kind == "step" else MAX_OTHER_RECORDS):
                self._thin(kind)
                if (k[1] - 1) % k[0]:
                    return
            k[2] += 1
        super().append(record)

    def extend(self, records) -> None:
        for r in records:
            self.append(r)

    def __reduce__(self):  # (pickle, copy: the records as held, with the thinning's state)
        return _records, (list(self), self.limit, self.kinds)

    def _thin(self, kind: str) -> None:
        i, kept = -1, []
        for r in self:
            if isinstance(r, dict) and r.get("type") == kind:
                i += 1
                if i % 2:
                    continue
            kept.append(r)
        self[:] = kept
        self.kinds[kind][0] *= 2
        self.kinds[kind][2] = (i + 2) // 2  # the records of that type held now


def _records(items: list, limit: int, kinds: dict) -> Records:
    r = Records(steps=limit)
    list.extend(r, items)
    r.kinds = {k: list(v) for k, v in kinds.items()}
    return r


def _metrics_lines(path: Path):
    """``(line number, bytes of the line or None when it is too long to be a record)``; a
    file that cannot be read (no permission, an I/O error) is a :class:`RunError` saying so."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; its errors are a read's
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        for i in itertools.count(1):
            try:
                line = f.readline(MAX_METRICS_LINE + 1)
                if len(line) > MAX_METRICS_LINE and not line.endswith(b"\n"):
                    while (more := f.readline(MAX_METRICS_LINE)) and not more.endswith(b"\n"):
                        pass  # the rest of the overlong line
                    line = None
            except OSError as e:
                raise RunError(f"cannot read {path}: {e.strerror or e}") from None
            if line == b"":
                return
            yield i, line


# the records the trainer writes (docs/workbench.md, "The run folder"): each type with its
# whole-number counters, a warning with its message; values are numbers, text, flags or null,
# at most MAX_RECORD_FIELDS of them. Any other line ("{}", a record of no such type) is a
# damaged one, never held: a file padded with them made eval hold every one.
_RECORD_FIELDS = {
    "step": ("epoch", "step"),
    "epoch": ("epoch", "step"),
    "warning": ("epoch", "step"),
    "compile": ("step",),
}
# (a step record carries the layers' metrics: a few names, or many of a user's own layers)
MAX_RECORD_FIELDS = 256


def _record(line: bytes | None) -> dict | None:
    """The record a line of ``metrics.jsonl`` holds, None for anything the trainer does not
    write."""
    if line is None:
        return None
    try:
        rec = json.loads(line.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):  # (a number of thousands of digits, deep nesting)
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
        return None
    need = _RECORD_FIELDS.get(rec["type"])
    ok = (
        need is not None
        and len(rec) <= MAX_RECORD_FIELDS
        and all(v is None or isinstance(v, (int, float, str)) for v in rec.values())
        and all(type(rec.get(k)) is int and rec[k] >= 0 for k in need)
        and (rec["type"] != "warning" or isinstance(rec.get("message"), str))
    )
    return rec if ok else None


def _known_records(path: Path, unreadable: list[int] | None = None):
    """The records of the metrics file ``path`` (:func:`_record`), streamed; the numbers of
    the other lines (the first :data:`MAX_UNREADABLE`) are appended to ``unreadable``."""
    _check_metrics_size(path)
    for i, line in _metrics_lines(path):
        rec = _record(line)
        if rec is not None:
            yield rec
        elif unreadable is not None and (line is None or line.strip()):
            if len(unreadable) < MAX_UNREADABLE:
                unreadable.append(i)


def _check_metrics_size(path: Path) -> None:
    if path.stat().st_size > MAX_METRICS_BYTES:
        raise RunError(
            f"{path} is larger than {MAX_METRICS_BYTES:,} bytes, which flowforge never writes; "
            "not a run's metrics"
        )


def read_metrics(
    run: str | os.PathLike, unreadable: list[int] | None = None, steps: int = MAX_STEP_RECORDS
) -> Records:
    """The records of ``metrics.jsonl``, read line by line, with the step records evenly
    thinned to at most about ``2 * steps`` (:class:`Records`); unreadable lines (a damaged or
    hand-cut file, a record of no type the trainer writes) are skipped, and their line numbers
    (the first :data:`MAX_UNREADABLE`) appended to ``unreadable`` when given.
    A :class:`RunError` for a path that is no run (no such folder, or one with neither
    ``config.json`` nor a checkpoint: a mistyped path is not a run without records); a run
    that has logged nothing yet gives no records."""
    path = Path(run) / METRICS_FILE
    out = Records(steps=steps)
    if not path.is_file():
        folder = Path(run)
        if not folder.is_dir():
            raise RunError(f"{run} is not a folder: no run there")
        if not (folder / CONFIG_FILE).is_file() and not _has_checkpoint(folder):
            raise RunError(
                f"{run} is not a flowforge run (no {CONFIG_FILE}, {CKPT_FILE} or {METRICS_FILE})"
            )
        return out
    out.extend(_known_records(path, unreadable))
    return out


def truncate_metrics(run: Path, step: int, epochs: int | None = None) -> Records:
    """Drop the records after ``step`` (a lost future after an interrupt), streaming the file
    through; returns the records kept (:class:`Records`). With ``epochs`` (the checkpoint's
    finished epochs), an epoch record of a later epoch goes too: a checkpoint taken on an
    epoch's last step, before its validation, has the step of that epoch's record. A line
    that holds no record the trainer writes (:func:`_record`) goes as well."""
    path = Path(run) / METRICS_FILE
    keep = Records()
    if not path.is_file():
        return keep
    _check_metrics_size(path)

    def kept():
        for _, line in _metrics_lines(path):
            rec = _record(line)  # (a line that holds no record of the trainer's goes too)
            if rec is None or rec["step"] > step:
                continue
            if epochs is not None and rec["type"] == "epoch" and rec["epoch"] > epochs:
                continue
            keep.append(rec)
            yield line if line.endswith(b"\n") else line + b"\n"

    io.atomic_write(path, kept())
    return keep


def fingerprint(*tensors) -> dict:
    """A hash and the shapes of the data (what ``--resume`` checks has not changed)."""
    h = hashlib.sha256()
    shapes = []
    for t in tensors:
        if t is None:
            shapes.append(None)
            continue
        t = t.detach().cpu().contiguous()
        shapes.append(list(t.shape))
        h.update(str(t.dtype).encode())
        h.update(t.numpy().reshape(-1).view(np.uint8))  # (the bytes, without a copy)
    return {"sha256": h.hexdigest(), "shapes": shapes}


# -- the environment a run's numbers depend on ---------------------------------------------------


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


@functools.cache
def source_hash() -> str:
    """The first 12 hex digits of a SHA-256 over the flowforge package's Python files (their
    paths and bytes, in path order): what tells one flowforge apart from another where the
    version number stays (0.1.0 from 2026-11-22 on, while the splines' arithmetic changed in
    its last digits). About a megabyte, read once per process."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def run_environment(device="cpu", processes: int = 1) -> dict:
    """What a run's numbers depend on besides its config and data, as ``config.json`` records
    it (``resolved.environment``): the versions of flowforge, torch, numpy, scikit-learn (the
    digits dataset) and Python, torch's thread count, the number of torchrun processes, the
    device (and the GPU's name), and the CPU kernels as :func:`flowforge.codec.kernels`
    reports them (torch's vectorised kernels, MKL's code path)."""
    import platform

    import torch

    from .. import __version__, codec

    dev = torch.device(device)
    env = {
        "flowforge": __version__,
        "source": source_hash(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": _version("scikit-learn"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "processes": int(processes),  # (the gradients' all-reduce order; the padding)
        # (set in a notebook, torch.set_default_dtype builds the model, and a resumed one, in it)
        "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
        "device": dev.type,
        "kernels": list(codec.kernels()),
    }
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


_ENV_TEXT = re.compile(r"[A-Za-z0-9 ._+()\-:/,]{1,64}")  # a version, a device, a GPU's name
MAX_THREADS = 1 << 16


def recorded_environment(env) -> dict | None:
    """A run's recorded environment as data from a file: only fields of the kinds flowforge
    writes (short plain text, a thread count up to :data:`MAX_THREADS`, two kernel names);
    anything else (control characters, a 100,000-character version, 10**30 threads) is left
    out, never echoed to a terminal."""
    if not isinstance(env, dict):
        return None
    out = {}
    for k in (
        "flowforge",
        "source",
        "torch",
        "numpy",
        "scikit-learn",
        "python",
        "device",
        "gpu",
        "default_dtype",
    ):
        v = env.get(k)
        if isinstance(v, str) and _ENV_TEXT.fullmatch(v):
            out[k] = v
    for key in ("threads", "processes"):
        t = env.get(key)
        if isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= MAX_THREADS:
            out[key] = t
    k = env.get("kernels")
    if (
        isinstance(k, list)
        and len(k) == 2
        and all(isinstance(v, str) and _ENV_TEXT.fullmatch(v) for v in k)
    ):
        out["kernels"] = list(k)
    return out


def describe_environment(env) -> str:
    """``flowforge 0.1.0, torch 2.5.1, numpy 2.1.0, scikit-learn 1.5.2, Python 3.12.3; cpu,
    1 thread, kernels AVX2 (MKL AVX2)``; "" for a run that recorded none."""
    env = recorded_environment(env)
    if not env:
        return ""
    names = ("flowforge", "torch", "numpy", "scikit-learn")  # (every field checked: above)
    versions = [f"{k} {env[k]}" for k in names if k in env]
    if "source" in env and versions and versions[0].startswith("flowforge "):
        versions[0] += f" (code {env['source']})"
    if "python" in env:
        versions.append(f"Python {env['python']}")
    setup = []
    if "device" in env:
        setup.append(env["device"] + (f" ({env['gpu']})" if "gpu" in env else ""))
    if "threads" in env:
        setup.append(f"{env['threads']} thread{'s' if env['threads'] != 1 else ''}")
    if env.get("processes", 1) > 1:
        setup.append(f"{env['processes']} processes (torchrun)")
    if "kernels" in env:
        setup.append(f"kernels {env['kernels'][0]} (MKL {env['kernels'][1]})")
    if env.get("default_dtype", "float32") != "float32":  # (torch's own default: not said)
        setup.append(f"default dtype {env['default_dtype']}")
    return "; ".join(", ".join(part) for part in (versions, setup) if part)


def environment_warning(recorded, now: dict, what: str, processes: bool = True) -> str | None:
    """One line when this process's thread count, CPU kernels, torch version, default dtype
    (or device), or the number of torchrun processes (where ``processes``) differ from those
    a run recorded (``resolved.environment``), so that the result will not be bit-identical to
    ``what`` (e.g. "an uninterrupted run on the recorded setup"); None when they agree or the
    run recorded none (a run from before they were recorded)."""
    recorded = recorded_environment(recorded)
    if not recorded:
        return None
    diffs, fixes = [], []
    was = recorded.get("processes")
    if processes and was is not None and was != now.get("processes", 1):
        diffs.append(f"{was} process{'es' if was != 1 else ''}, here {now.get('processes', 1)}")
        fixes.append(f"torchrun --nproc_per_node={was}" if was > 1 else "one process")
    cpu = recorded.get("device") == "cpu" and now.get("device") == "cpu"
    if "device" in recorded and recorded["device"] != now["device"]:
        diffs.append(f"device {recorded['device']}, here {now['device']}")
        fixes.append(f"train on {recorded['device']}")
    threads = recorded.get("threads")
    if cpu and threads is not None and threads != now["threads"]:
        many = "s" if threads != 1 else ""
        diffs.append(f"{threads} torch thread{many}, here {now['threads']}")
        fixes.append(f"OMP_NUM_THREADS={threads}")
    k = recorded.get("kernels")
    from ..codec import ignored_setting, kernel_setting, same_kernels

    if cpu and k and not same_kernels(k, now["kernels"]):
        here = now["kernels"]
        diffs.append(f"CPU kernels {k[0]} (MKL {k[1]}), here {here[0]} (MKL {here[1]})")
        fixes.append(
            kernel_setting(k)
            + " (on a CPU that has them)"
            + ignored_setting(k[1], "it cannot match here")
        )
    if "torch" in recorded and recorded["torch"] != now["torch"]:
        diffs.append(f"torch {recorded['torch']}, here {now['torch']}")
        fixes.append(f"torch {recorded['torch']}")
    if "source" in recorded and now.get("source") and recorded["source"] != now["source"]:
        # (another flowforge: its arithmetic may differ in the last digits, which training
        # amplifies; recorded since 2026-12-07)
        diffs.append(f"flowforge's code {recorded['source']}, here {now['source']}")
        fixes.append(f"the flowforge whose code hashes to {recorded['source']}")
    was = recorded.get("default_dtype")
    if was is not None and was != now.get("default_dtype"):
        diffs.append(f"torch's default dtype {was}, here {now.get('default_dtype')}")
        fixes.append(f"torch.set_default_dtype(torch.{was}) before it")
    if not diffs:
        return None
    # (another flowforge alone: the numbers differ only where the code that changed computes;
    # another default dtype alone: a resumed model is moved to the recorded one, and only
    # what else is made in the default dtype can differ)
    will = (
        "may not be"
        if all(d.startswith(("flowforge's code", "torch's default dtype")) for d in diffs)
        else ("will not be")
    )
    return (
        f"the run was recorded with {'; '.join(diffs)}: the result {will} "
        f"bit-identical to {what}; to match it, run with {', '.join(fixes)}"
    )


def not_the_runs(out, run, flag: str, what: str, also=()) -> None:
    """Refuse an output file that would replace or change what the run in ``run`` reads: its
    data file, an image inside the folder its data comes from (which the folder's fingerprint
    covers), one of its own files, or one of ``also`` (what the command itself reads)."""
    from .data import _is_image_name, user_path

    cfg = run_config(run)
    where = cfg["resolved"].get("data_path")  # (absolute, as train found it)
    try:
        inside = (
            isinstance(where, str)
            and Path(where).is_dir()
            and _is_image_name(Path(out))
            and Path(out).resolve().is_relative_to(Path(where).resolve())
        )
    except (OSError, ValueError, RuntimeError):
        inside = False
    if inside:
        raise WorkbenchError(
            f"{flag} {out} is an image in {where}, the folder this run's data comes from: it "
            f"would change the run's data; write the {what} elsewhere"
        )
    options = cfg["data"].get("options") if isinstance(cfg.get("data"), dict) else None
    root = options.get("root") if isinstance(options, dict) else None
    try:  # a benchmark's files (data.root): a file there may be one the run reads
        under = isinstance(root, str) and Path(out).resolve().is_relative_to(
            Path(root).expanduser().resolve()
        )
    except (OSError, ValueError, RuntimeError):
        under = False
    if under:
        raise WorkbenchError(
            f"{flag} {out} is inside {root}, the data.root this run's benchmark files are read "
            f"from: it could replace one of them; write the {what} elsewhere"
        )
    if not os.path.exists(out):
        return
    name = cfg["data"]["name"]
    kept = [*also, user_path(name) if isinstance(name, str) else name, where]
    kept += [Path(run) / f for f in (CONFIG_FILE, MODEL_FILE, CKPT_FILE, METRICS_FILE)]
    for p in kept:
        try:
            same = isinstance(p, (str, Path)) and os.path.samefile(out, p)
        except (OSError, ValueError):
            same = False
        if same:
            raise WorkbenchError(
                f"{flag} {out} is {p}, which this command reads or the run keeps (its data or "
                f"its own files); write the {what} to another file"
            )
