r"""One training run, start to finish: :func:`train` orchestrates the pieces.

config (:mod:`.config`) -> data (:mod:`.data`) -> model (:mod:`.build`) -> run folder
(:mod:`.runs`) -> :class:`~flowforge.workbench.trainer.Trainer`. Every option and the data are
checked, and the model built, before anything is written; only rank 0 writes under torchrun.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import math
import os
import random
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import io, models
from .._util import fork_rng
from . import warm_start
from .build import build_flow, describe, has_context_map, rebuild_refusal, same_model
from .config import DEFAULT_TRAIN, model_lr, read_config, resolve_config
from .data import (
    DATASETS,
    constant_columns,
    load_dataset,
    reload_dataset,
    run_dtype,
    user_path,
)
from .distributed import barrier, device, dist_env, init_distributed
from .errors import DataError, NonFiniteError, RunError, WorkbenchError, shell_word
from .runs import (
    CKPT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RUN_FORMAT,
    WHERE_IT_RUNS,
    RunLock,
    check_out_dir,
    clear_run,
    environment_warning,
    fingerprint,
    is_run,
    load_run,
    remove_orphans,
    run_config,
    run_environment,
    write_json,
)
from .trainer import Trainer, adam, find_nonfinite

__all__ = [
    "DEFAULT_TRAIN",
    "NonFiniteError",
    "RunError",
    "Trainer",
    "WorkbenchError",
    "adam",
    "build_flow",
    "find_nonfinite",
    "load_run",
    "read_config",
    "resolve_config",
    "run_dataset",
    "train",
]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _callers_random_state():
    """Python's, numpy's and torch's global streams (every CUDA device's in use) as they were
    on entry, once the block is done: a training called from Python seeds them all for its
    run, and leaves the caller's seeded draws after it as they would have been without it."""
    py, np_state = random.getstate(), np.random.get_state()
    with fork_rng():
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _splits_fingerprint(ds, legacy: bool = False, dtype=torch.float64, test_context=True) -> dict:
    """The fingerprint a run records of its data: its three splits and, for conditional data,
    their contexts (the test split's since 2026-12-07: before, ``test_context=False``, a test
    context could change unseen). ``legacy``: the contexts standardised, as runs from before
    2026-12-06 recorded them (no test context either)."""
    conditional = ds.context is not None and test_context and not legacy
    contexts = [ds.split_context(k) for k in ("train", "val", "test")[: 3 if conditional else 2]]
    if legacy:  # standardised, as the workbench handed them to the model before 2026-12-06
        info = ds.context_info  # (in float32 up to 2026-12-05, in float64 then)
        loc, scale = (torch.tensor(info["stats"][k], dtype=dtype) for k in ("loc", "scale"))
        contexts = [((c.to(dtype) - loc) / scale).float() for c in contexts]
    return fingerprint(*(ds.split(k) for k in ("train", "val", "test")), *contexts)


def same_data(ds, resolved: dict, now: dict | None = None) -> bool:
    """Whether ``ds`` is the data a run recorded (``resolved.data_fingerprint``; True when it
    recorded none). A column-conditional run from before its model standardised its contexts
    (no ``context_standardize`` in its model's config) fingerprinted them standardised.
    ``now``: ``ds``'s fingerprint where it was taken already (a pass over all the data)."""
    want = resolved.get("data_fingerprint")
    if want is None or (now or _splits_fingerprint(ds)) == want:
        return True
    if ds.context is None or not isinstance(want, dict) or len(want.get("shapes") or ()) != 5:
        return False
    if _splits_fingerprint(ds, test_context=False) == want:  # (a run from before 2026-12-07)
        return True
    info = ds.context_info or {}
    if info.get("kind") != "columns" or has_context_map(resolved.get("flow_config")):
        return False
    try:
        return any(
            _splits_fingerprint(ds, legacy=True, dtype=dtype) == want
            for dtype in (torch.float64, torch.float32)
        )
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError):
        return False  # (statistics that are not numbers: not the run's data, said as such)


BIG_DATA_BYTES = 50 << 20  # a data file this large gets a line saying it is being read


def say_reading(name, stream=None) -> None:
    """One line before a large data file is read (a million-row CSV takes seconds to read
    and check, and nothing else is printed meanwhile); ``stream``: stderr by default."""
    path = Path(str(name))
    try:
        size = path.stat().st_size if path.is_file() else 0
    except OSError:
        return
    if size >= BIG_DATA_BYTES:
        print(f"reading {path.name} ({size / 2**20:,.0f} MiB) ...", file=stream or sys.stderr,
              flush=True)  # fmt: skip


def say_warning(text: str) -> None:
    """A warning of a command, on standard error as one ``flowforge: warning:`` line (every
    command's warnings alike, a Trainer's Python warnings included: a pipeline that reads the
    results on standard output finds none of them there), above a progress bar if one is
    drawn."""
    from tqdm import tqdm

    from .errors import visible

    tqdm.write(f"flowforge: warning: {visible(text)}", file=sys.stderr)
    sys.stderr.flush()


# (eval and report read a run's data: only eval takes a file of the user's choice)
OTHER_FILE = (
    "; the run's own splits need its data as it was (report has no other); flowforge eval RUN "
    "--data FILE scores a file of your choice"
)


def run_dataset(cfg: dict, error=DataError, run=None, checks: bool = True):
    """Reload the dataset a run was trained on, and check it is that data (:func:`_run_data`).

    A file is read by its name, and from the path the run recorded when the name no longer
    finds it or finds other data (a command run from another folder). The data's fingerprint
    (recorded when the run started) must match, so a run folder's config can never make
    flowforge read and plot some other file of yours, and a run is never evaluated, or
    resumed (``run``: the folder, for the messages), on data that changed since.
    ``checks=False`` (eval, report) leaves out the data checks whose only product is a
    warning (:func:`~flowforge.workbench.data.reload_dataset`): the run's ``config.json``
    keeps what they found (``resolved.data_warnings``); the fingerprint is checked either way.
    A generated dataset whose split sizes are not the ones the run recorded is refused before
    it is drawn (:func:`_drawn_as_recorded`)."""
    return _run_data(cfg, error, run, checks)[0]


def _run_data(cfg: dict, error=DataError, run=None, checks: bool = True, source=None):
    """:func:`run_dataset`, and the name the data was read by; ``source``: the run an
    ``--init-from`` takes its data from (``cfg`` its config), for its messages."""
    d = cfg["data"]
    name = d["name"]
    resolved = cfg.get("resolved", {})
    path = resolved.get("data_path")
    names = [name] + ([path] if path and Path(path).exists() else [])
    names = [n for i, n in enumerate(names) if i == 0 or not _same_file(n, names[0])]
    if not Path(name).exists() and len(names) > 1:
        names = names[1:]
    want = resolved.get("data_fingerprint")
    dtype = run_dtype(cfg)  # (the fingerprint is of the data in it)
    what = f"cannot resume {run}: " if run is not None else ""
    other, this = OTHER_FILE, "this run"
    if source is not None:
        what, other, this = f"{source.what}: ", "; give the data to train on with --data", "it"
    if want is None and Path(names[0]).exists():
        raise error(
            f"{what}the run's config names the file {names[0]} but records no fingerprint of "
            "it, so flowforge cannot tell it is the run's data"
            + (
                f" (a run from before data fingerprints); a new run can start from its model "
                f"on that file: flowforge train --init-from {shell_word(run)} --data "
                f"{shell_word(names[0])} --out NEW_RUN --epochs N"
                if run is not None
                else other
            )
        )
    size = resolved.get("data_bytes")  # a file's size when the run started (since 2026-12-06)
    for candidate in names:
        if size is not None and _file_size(candidate) not in (None, size):
            continue  # not the run's file: never read
        if not _drawn_as_recorded(d, resolved):
            continue  # not the run's sizes: never drawn
        say_reading(candidate)
        for options in _readings(d["options"], candidate, want):
            try:
                if checks:
                    ds = load_dataset(candidate, seed=d["seed"], dtype=dtype, **options)
                else:
                    ds = reload_dataset(candidate, d["seed"], options, dtype)
            except DataError:
                if want is None:
                    raise
                continue  # the run's data reads: this is not it (and its contents are not shown)
            if same_data(ds, resolved):
                return ds, candidate
    tried = " nor at ".join(names)
    if path and not any(Path(n).exists() for n in names):
        gone = (
            f"the run's data file {path} is not there (moved, deleted, or a relative path "
            "from another folder?)"
        )
        raise error(f"{what}{gone}; restore it" + ("" if run is not None else other))
    if run is not None:
        raise error(
            f"{what}the data changed since the run started (the data at {tried} has another "
            "size or fingerprint, or no longer reads); restore the data or start a new run"
        )
    raise error(
        f"{what}the data at {tried} is not the data {this} was trained on (its size or "
        f"fingerprint differs, or it does not read){other}"
    )


def _drawn_as_recorded(d: dict, resolved: dict) -> bool:
    """Whether a generated dataset's split sizes (``n_train``, ``n_val``, ``n_test``, the
    training split cut to ``limit``) are those the run recorded (its fingerprint's shapes,
    else ``resolved.examples``), looked at before anything is drawn: a config edited to
    ``n_train: 2**26`` drew gigabytes before its fingerprint refused them. True for a file,
    a dataset of no such options, and a run that recorded no sizes."""
    load = DATASETS.get(str(d["name"]).lower(), (None,))[0]
    params = inspect.signature(load).parameters if load is not None else {}
    if "n_train" not in params:
        return True
    options = d.get("options") or {}
    want = [options.get(k, params[k].default) for k in ("n_train", "n_val", "n_test")]
    limit = options.get("limit")
    if type(limit) is int and type(want[0]) is int:
        want[0] = min(want[0], limit)
    fp, examples = resolved.get("data_fingerprint"), resolved.get("examples")
    try:
        if isinstance(fp, dict):
            had = [shape[0] for shape in fp["shapes"][:3]]
        elif isinstance(examples, dict):
            had = [examples.get(k) for k in ("train", "val", "test")]
        else:
            return True
    except (KeyError, TypeError, IndexError):
        return False  # (malformed: no run's)
    return want == had


def _readings(options: dict, name, want) -> list[dict]:
    """The data options to read a run's file with: its own; and for a CSV of a run that
    recorded no ``header`` (and a fingerprint to tell), ``header: false`` and ``header: true``
    after them, as flowforge read first lines that are now refused as ambiguous: a line of
    numbers (column names such as ``1,2,3``) as data before 2026-12-06, names beside numbers
    (``10-20,0.5``) as a header before 2026-12-07. The fingerprint tells which was right."""
    if want is None or "header" in options or Path(str(name)).suffix.lower() != ".csv":
        return [options]
    return [options, {**options, "header": False}, {**options, "header": True}]


def _in_recorded_dtype(flow, resolved: dict, checkpoint: Path | None = None, train=None):
    """``flow`` in the dtype its run trained in, so that a resume continues the run it
    checkpointed: the dtype of the checkpoint's weights (a run an earlier flowforge resumed in
    float32 goes on in float32), else torch's default dtype when the run was trained, as
    recorded (a notebook's float64)."""
    dtype = _checkpoint_dtype(checkpoint) if checkpoint is not None else None
    train = train if isinstance(train, dict) else {}  # (the run's train options)
    if dtype is not None and "dtype" in train and dtype != run_dtype({"train": train}):
        raise RunError(  # (a run that records its precision: its checkpoint must hold it)
            f"cannot resume: the run trained in {train['dtype']} (train.dtype) and its "
            f"{checkpoint.name} holds {str(dtype).removeprefix('torch.')} weights; the file "
            "was changed or replaced"
        )
    if dtype is None:
        env = resolved.get("environment")
        want = env.get("default_dtype") if isinstance(env, dict) else None
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(want)
    have = next((p.dtype for p in flow.parameters() if p.is_floating_point()), None)
    if dtype is None or have is None or have == dtype:  # (an M-flow is a Module: no .dtype)
        return flow
    return flow.to(dtype)


def _checkpoint_dtype(path: Path):
    """The floating dtype of a checkpoint's model weights (float32 or float64), read from
    the file's header alone; None where it cannot be told."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith("model/"):
                    dtype = f.get_slice(key).get_dtype()
                    if dtype in ("F32", "F64"):
                        return torch.float32 if dtype == "F32" else torch.float64
    except Exception:  # noqa: BLE001 - (an unreadable checkpoint is refused by the Trainer)
        return None
    return None


def _source_data(source, cfg: dict):
    """The data an ``--init-from`` run takes from the run it starts from (none given): that
    run's data exactly as :func:`run_dataset` takes it for ``eval`` (a file of another size
    is not opened, one of no recorded fingerprint is refused, and the data must have the
    fingerprint recorded; else one line: give ``--data``), so that a copied or edited run
    folder cannot make flowforge read and train on some other file of the user's. Data options
    given here (another split of it) then read that file again with them."""
    ds, name = _run_data(source.cfg, RunError, checks=not source.data_options, source=source)
    cfg["data"]["name"] = name  # (the name it was found by: the name given, or the recorded path)
    dtype = run_dtype(cfg)
    if not source.data_options and ds.train.dtype == dtype:
        return ds
    if not source.data_options:  # its data, read again in this run's precision
        return load_dataset(name, seed=cfg["data"]["seed"], dtype=dtype, **cfg["data"]["options"])
    say_reading(name)
    new = load_dataset(name, seed=cfg["data"]["seed"], dtype=dtype, **cfg["data"]["options"])
    _note_reused_rows(source, new, ds)
    return new


def _note_reused_rows(source, ds, source_ds=None) -> None:
    """Add to ``ds``'s warnings (said at the start, kept in the run for eval and report) how
    many of its validation and test examples the ``--init-from`` model trained on. The
    starting run's data (``source_ds``, read here if None) is read again only where it is at
    hand, unchanged, and of reasonable size; otherwise nothing is said."""
    if source_ds is None:
        r = source.cfg.get("resolved") or {}
        try:
            size = int(r["examples"]["train"]) * math.prod(int(v) for v in r["event_shape"])
        except (KeyError, TypeError, ValueError):
            return
        if size > warm_start.REUSE_CHECK_VALUES:  # (said: a check skipped is not a check passed)
            what = "images" if ds.is_image else "rows"
            note = (
                f"{source.given}'s training split ({size:,} values) is too large to read again "
                f"to check whether this run's validation and test {what} are {what} the "
                f"starting model was trained on (the check reads up to "
                f"{warm_start.REUSE_CHECK_VALUES:,}); if they share {what}, this run's test NLL "
                "is optimistic"
            )
            ds.info["warnings"] = [*ds.info.get("warnings", ()), note]
            return
        try:
            source_ds = _run_data(source.cfg, RunError, checks=False, source=source)[0]
        except (WorkbenchError, OSError, ValueError):
            return  # (its data is gone or changed: nothing to compare with)
    note = warm_start.reused_rows(source, ds, source_ds)
    if note:
        ds.info["warnings"] = [*ds.info.get("warnings", ()), note]


def _file_size(name: str) -> int | None:
    """The size of a regular file, None for anything else (a dataset's name, a folder)."""
    try:
        st = os.stat(user_path(name))
    except (OSError, ValueError, TypeError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _ended(out: Path, epochs) -> bool:
    """Whether the run in ``out`` has ``epochs`` behind it already (finished or early-stopped):
    resuming it trains nothing."""
    from .runs import _checkpoint_counters

    done = _checkpoint_counters(out / CKPT_FILE)
    return done is not None and (done["finished"] or done["epoch"] >= epochs)


def _refuse_read_only(out: Path, epochs) -> None:
    """A resumed run replaces its model, checkpoint and metrics (atomically: a new file under
    the name): one the operator made read-only (no write bit) is refused, not replaced by a
    writable file without a word. A run that has ``epochs`` behind it already (finished or
    early-stopped) replaces nothing: it is left to say "nothing to train"."""
    if _ended(out, epochs):
        return

    for name in (MODEL_FILE, CKPT_FILE, METRICS_FILE):
        path = out / name
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and not mode & 0o222:
            raise RunError(
                f"cannot resume {out}: {path} is read-only (mode {stat.S_IMODE(mode):o}) and "
                f"resuming replaces it; make it writable (chmod u+w {shell_word(path)}) "
                "to resume"
            )


def _device_name(config, out: Path, resume: bool) -> str:
    """``train.device`` of the run as it will resolve (a resumed run's own, the default where
    none is set), for choosing the process group's backend before anything else; "cpu" where
    the config cannot be resolved and sets none (training then refuses it with its own
    message)."""
    try:
        return str(resolve_config(run_config(out) if resume else None, config)["train"]["device"])
    except Exception:  # noqa: BLE001 - refused later, in order, with a one-line error
        section = config.get("train") if isinstance(config, dict) else None
        return str(section.get("device", "cpu")) if isinstance(section, dict) else "cpu"


def _lr_note(cfg: dict, config, stored_raw) -> str | None:
    """The line a new run prints about its learning rate, where it is not what was asked: the
    model's own (``register(lr=...)``) where none was given, or one a run's config.json used
    as a template carries from a model that trains at another rate."""
    spec = models.spec(cfg["model"]["name"])
    if model_lr(spec, (stored_raw, config)) is not None:
        return (
            f"learning rate {spec.lr:g}: {spec.name}'s own (the usual 1e-3 trains it far too "
            "slowly; --lr or --set train.lr=..., in Python train={'lr': ...}, to choose)"
        )
    was = ((config or {}).get("resolved") or {}).get("flow_config") or {}
    was = str(was.get("model", "")).lower() if isinstance(was, dict) else ""
    if not was or was == spec.name.lower() or was not in models.available():
        return None
    other, usual = models.spec(was), DEFAULT_TRAIN["lr"]
    theirs = usual if other.lr is None else other.lr
    ours = usual if spec.lr is None else spec.lr
    lr = cfg["train"]["lr"]
    if lr != theirs or lr == ours:
        return None
    return (
        f"note: learning rate {lr:g} comes from the config's run, a {other.name}'s; "
        f"{spec.name} trains at {ours:g} (--lr or --set train.lr=... to choose)"
    )


def train(
    config: dict,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: bool = True,
    callback: Callable[[Trainer], None] | None = None,
    notes: bool | None = None,
    new_data: bool = False,
    init_from: str | os.PathLike | None = None,
) -> dict:
    """Train a model as a config describes, into run folder ``out``.

    ``config`` is a raw config (as in a YAML file); on ``resume`` it may be empty and the run's
    own config is used (anything it does set must agree with the stored config).
    ``init_from`` (or ``init_from:`` in the config): a run folder whose best model the new
    run starts from, the same architecture, with that run's fixed preprocessing
    (:mod:`.warm_start`); its model, data and layout sections are taken where the config
    gives none. Returns the
    trainer's summary plus ``out``, ``parameters`` and ``data_warnings`` (what the data checks
    found: duplicates, outliers, integer columns; also kept in the run's ``config.json``, and
    repeated by ``eval`` and ``report``). ``notes``: print those warnings (default: as
    ``echo``; the command prints them even with ``--quiet``).

    A run's own ``config.json`` as ``config`` (it has a ``resolved`` section) replays that
    run: its data must be the data the run recorded (the fingerprint), or a
    :class:`RunError` says so, and its model is built from the arguments the run recorded
    (:func:`~flowforge.workbench.build.build_flow`). ``new_data``: the data was named anew
    (the command sets it when its flags or ``--set`` give data options): other data is then
    a new run on it, sized as any new run. On a replay and on ``resume``, a thread count,
    CPU kernels or torch version other than the run recorded (``resolved.environment``) get
    one warning line: the result will not be bit-identical to the recorded one. Python's,
    numpy's and torch's global random streams, seeded for the run, are as they were once it
    returns.
    """
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise RunError(  # (a run folder is what train keeps: none is the bare Trainer's)
            f"out must be the run folder's path, got {out!r} (to train without writing "
            "anything, use Trainer(flow, train_x, val_x, ...) on tensors)"
        )
    if isinstance(config, (str, os.PathLike)):  # (a file's name: "unknown config key 'c'")
        raise RunError(
            f"config must be a dict (as a YAML file holds it), got the path {str(config)!r}: "
            "read it first, train(read_config(path), out)"
        )
    with _callers_random_state():
        return _train(
            config, out, resume, overwrite, progress, echo, callback, notes, new_data, init_from
        )


def _train(
    config, out, resume, overwrite, progress, echo, callback, notes, new_data, init_from
) -> dict:
    import torch.distributed as dist

    out = Path(out)
    if init_from is not None:
        if resume:
            raise RunError(
                "--init-from starts a new run from another run's model, and --resume continues "
                f"the run in {out} from its own checkpoint: drop --init-from (a resumed run "
                "keeps the init_from it started with)"
            )
        config = {**(config or {}), "init_from": os.fspath(init_from)}
    source = None
    if not resume and isinstance(config, dict) and config.get("init_from") is not None:
        # the run it starts from, checked and loaded before anything else: its sections
        # complete this run's config
        try:
            source = warm_start.open_source(config["init_from"], out)
        except RunError as e:  # a replayed config.json names its run as given then: relative
            raise RunError(f"{e}{warm_start.recorded_hint(config)}") from None  # to elsewhere
        config = warm_start.with_defaults(config, source)
    started = init_distributed(_device_name(config, out, resume))
    try:
        rank, world = dist_env()
        stored_raw = run_config(out) if resume else None
        cfg = resolve_config(stored_raw, config)
        if stored_raw is None and _session_float64(config):
            cfg["train"]["dtype"] = "float64"  # (a notebook's float64 session: its precision)
        stored = check_out_dir(out, cfg, resume, overwrite)
        if stored is not None:  # exactly the stored run, where it runs as given now
            given, cfg = cfg, resolve_config(stored)
            for k in WHERE_IT_RUNS:
                cfg["train"][k] = given["train"][k]
        device(cfg["train"]["device"])  # refuse a missing device before writing anything
        if stored is not None:  # the run's own data: by its recorded path where the name no
            # longer finds it, checked against its fingerprint (never another file)
            ds = run_dataset({**cfg, "resolved": stored["resolved"]}, RunError, out)
        elif source is not None and "data" in source.took:
            ds = _source_data(source, cfg)
        else:
            if echo and rank == 0:
                say_reading(cfg["data"]["name"], sys.stdout)
            ds = load_dataset(
                cfg["data"]["name"],
                seed=cfg["data"]["seed"],
                dtype=run_dtype(cfg),
                **cfg["data"]["options"],
            )
            if source is not None:  # (other data than the starting run's: rows it shares?)
                _note_reused_rows(source, ds)
        prints = (echo if notes is None else notes) and rank == 0
        lr_note = _lr_note(cfg, config, stored_raw) if stored is None else None
        recorded = None  # a replayed run's resolved section, while the data is its data
        if stored is None and isinstance(config, dict) and isinstance(config.get("resolved"), dict):
            recorded = config["resolved"]
        data_fingerprint = _splits_fingerprint(ds)
        started_from = (recorded or {}).get("init_from")
        if source is not None and isinstance(started_from, dict):
            sha = started_from.get("model_sha256")
            was = started_from.get("path")
            if isinstance(was, str) and Path(was) != source.path and sha != source.sha256:
                raise RunError(
                    f"cannot replay the run this config records: it started from {was}, not "
                    f"{source.given}; give --init-from {shell_word(was)} (or drop --init-from)"
                )
            if sha is not None and sha != source.sha256:  # (a replay starts from that model)
                raise RunError(
                    f"cannot replay the run this config records: it started from "
                    f"{source.given}'s best model, and that model has changed since (its "
                    f"{MODEL_FILE}'s SHA-256 differs); restore it, or train a new run from "
                    "these options (remove the config's resolved section)"
                )
        if recorded is not None and not same_data(ds, recorded, data_fingerprint):
            if not new_data:
                name = cfg["data"]["name"]
                was = recorded.get("data_path")
                there = (
                    f"; the run read {was}: give --data {shell_word(was)} to replay it"
                    if isinstance(was, str) and Path(was).exists() and not _same_file(was, name)
                    else ""
                )
                raise RunError(
                    f"cannot replay the run this config records: the data {name!r} is not "
                    "the data it was trained on (its fingerprint differs: an edited file, or "
                    f"a dataset another library version makes otherwise){there}; "
                    "restore that data to replay the run, or name the data on the command "
                    f"line (--data {shell_word(name)}; from Python new_data=True) to train a new "
                    "run on it with the same options"
                )
            if prints:
                print(
                    "note: the data differs from the data the config's run was trained on: "
                    "this is a new run on it, not a replay",
                    flush=True,
                )
            recorded = None
        degenerate = None if resume else constant_columns(ds)
        if degenerate:
            raise DataError(degenerate)
        seed_all(cfg["seed"])
        if resume:  # the stored config came from a folder: build it under the file budget
            size = (out / CKPT_FILE).stat().st_size
            if size > io.MAX_BYTES:  # refused when read: before it sizes the build's budget
                raise RunError(
                    f"cannot resume {out}: its {CKPT_FILE} is {size:,} bytes, more than the "
                    f"{io.MAX_BYTES:,} a checkpoint may hold"
                )
            budget = max(io.BUILD_FLOOR, 8 * size)
            with io.Budget(budget, io.BUILD_SECONDS):
                flow, _, resolved = build_flow(cfg, ds, stored and stored["resolved"])
            if stored is not None and stored["resolved"].get("init_from") is not None:
                # started from another run's model: its structure and fixed preprocessing, as
                # config.json records them (the run it came from is not read again)
                flow = warm_start.rebuild(stored["resolved"], budget)
                resolved = warm_start.take_preprocessing(resolved, stored["resolved"])
                resolved["init_from"] = stored["resolved"]["init_from"]
            if stored is not None:  # (a run trained in a float64 session resumes in float64)
                flow = _in_recorded_dtype(
                    flow, stored["resolved"], out / CKPT_FILE, stored.get("train")
                )
        elif source is not None:
            flow, _, resolved = build_flow(cfg, ds, like=source.cfg["resolved"])
            flow, resolved = warm_start.adopt(source, cfg, flow, resolved)
            flow = flow.to(run_dtype(cfg))  # (its weights, in this run's precision)
        else:
            flow, _, resolved = build_flow(cfg, ds, recorded=recorded)
        if stored is not None and stored["resolved"].get("data_path"):
            resolved["data_path"] = stored["resolved"]["data_path"]
        elif user_path(cfg["data"]["name"]).exists():  # (~/x.csv too)
            resolved["data_path"] = str(user_path(cfg["data"]["name"]).resolve())
        resolved["data_fingerprint"] = data_fingerprint
        if stored is not None and "data_bytes" in stored["resolved"]:
            resolved["data_bytes"] = stored["resolved"]["data_bytes"]
        elif stored is None and _file_size(cfg["data"]["name"]) is not None:
            resolved["data_bytes"] = _file_size(cfg["data"]["name"])
        if stored is not None:
            if not same_model(stored["resolved"].get("flow_config"), resolved["flow_config"]):
                raise RunError(rebuild_refusal(out, stored["resolved"].get("flow_config")))
        environment = run_environment(device(cfg["train"]["device"]), world)
        if stored is None:
            resolved["environment"] = environment
        before = (stored["resolved"] if stored is not None else recorded or {}).get("environment")
        what = "an uninterrupted run on the recorded setup" if resume else "the recorded run"
        # (a resume with other processes: the Trainer's note says what that changes)
        changed = environment_warning(before, environment, what, processes=not resume)
        if resume and _ended(out, cfg["train"]["epochs"]):
            changed = None  # (nothing is trained, so nothing differs from the recorded run)
        shape = tuple(resolved["event_shape"])
        barrier()  # every rank has checked the folder before rank 0 writes to it
        # the Trainer checks the training options against the model (an objective the model
        # cannot train): before anything is written, so a refusal leaves no folder behind
        trainer = Trainer(
            flow,
            ds.train.reshape(-1, *shape),
            ds.val.reshape(-1, *shape),
            # (the model is in the run's precision already, or in a float64 session's for a run
            # from before train.dtype, which resumes as it trained)
            {k: v for k, v in cfg["train"].items() if k != "dtype"},
            seed=cfg["seed"],
            out=out,
            bits_dims=math.prod(shape) if ds.levels else None,
            progress=progress,
            callback=callback,
            echo=echo,
            train_context=ds.split_context("train"),
            val_context=ds.split_context("val"),
        )
        trainer._run_folder = True  # (checked and cleared below, under the lock)
        lock = RunLock(out) if rank == 0 else _NoLock()
        with lock:
            if rank == 0:
                if resume:
                    _refuse_read_only(out, cfg["train"]["epochs"])
                if not resume:  # again, under the lock: another training may have finished
                    check_out_dir(out, cfg, resume, overwrite)  # a run here since the first look
                if not resume and out.is_dir() and is_run(out):
                    clear_run(out)
                    kept = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
                    if kept and prints:  # (a user's files stay: outputs of the run replaced)
                        n = len(kept)
                        say_warning(
                            f"{out} keeps {n} entr{'ies' if n > 1 else 'y'} that "
                            f"{'are' if n > 1 else 'is'} not the run's ("
                            f"{', '.join(kept[:5])}{' ...' if n > 5 else ''}): if made from the "
                            "model this run replaces (samples, scores), "
                            f"{'they are' if n > 1 else 'it is'} not of the new one"
                        )
                out.mkdir(parents=True, exist_ok=True)
                remove_orphans(out)
                if not resume:
                    write_json(
                        out / CONFIG_FILE, {"format": RUN_FORMAT, **cfg, "resolved": resolved}
                    )
            barrier()
            if echo and rank == 0:
                print(describe(cfg, resolved, ds, world), flush=True)
                if lr_note and prints:
                    print(lr_note, flush=True)
                if source is not None:
                    said = warm_start.describe_source(source, cfg["train"]["objective"])
                    print(said, flush=True)
            if source is not None and source.unfinished and prints and not echo:
                say_warning(  # (--quiet: the start line that says it is not printed)
                    f"{source.given} has not finished training: this run starts from its best "
                    "model so far"
                )
            if source is not None and prints:  # (data taken from it is its data: checked)
                for note in resolved.get("data_warnings", ()):
                    if note not in ds.info.get("warnings", ()):  # (adopt's, of the statistics)
                        say_warning(note)
            if prints:
                for note in ds.info.get("warnings", ()):
                    say_warning(note)
                if changed:
                    say_warning(changed)
            result = trainer.fit(resume=resume)
            # every rank leaves together: a rank that tears its process group down while
            # another still uses it can abort in gloo's teardown
            barrier()
        result.update(
            out=str(out),
            parameters=resolved["parameters"],
            data_warnings=list(ds.info.get("warnings", ())),
        )
        return result
    finally:
        if started:
            # the DDP wrapper's reducer holds the process group, and the group's gloo threads
            # live as long as it does: free it (it sits in reference cycles) while the group is
            # still whole, so that destroying the group joins those threads instead of leaving
            # them to the interpreter's exit, where gloo can abort ("terminate called without
            # an active exception")
            gc.collect()
            dist.destroy_process_group()


def _session_float64(config) -> bool:
    """Whether a new run is made in a float64 session (``torch.set_default_dtype``, a
    notebook's) with no ``train.dtype`` of its own: it trains, and reads its data, in float64.
    (A replayed ``config.json`` keeps the precision it records, float32 where it has none.)"""
    if torch.get_default_dtype() != torch.float64 or not isinstance(config, (dict, type(None))):
        return False
    if config is None:
        return True
    train = config.get("train")
    return "resolved" not in config and not (isinstance(train, dict) and "dtype" in train)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
