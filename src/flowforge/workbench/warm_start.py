r"""A new run that starts from another run's best model: ``init_from`` (``train --init-from``).

The new run is a run of its own (its folder, its options, its data); only its model's starting
point is the other run's ``model.ff``, read through :func:`~flowforge.workbench.runs.load_run`.
The model must be the same architecture: the new run's config builds its model as any run's
(the depth and width the sizing rule would pick are the other run's), and a builder or an
argument that differs, or data of another width, levels or context, is refused in one line
naming both. The new run then trains the other run's whole saved model: its learned layers
(data-initialised ones, ActNorm or DataStandardize, keep their statistics and are not
initialised again) *and* the fixed preprocessing the workbench put in front of them
(standardisation or whitening, context standardisation) with the other run's statistics,
because its layers were trained on inputs shaped by those; the new run's ``config.json``
records that model (``resolved.flow_config``, ``stats``, ``whiten``, ``context.stats``) and
where it came from (``init_from``, and ``resolved.init_from``: the folder as given and
resolved, the SHA-256 of its ``model.ff``, its best epoch and its data's fingerprint).

A resumed run never reads the other run again: its checkpoint holds the weights, and its
model is rebuilt from its own ``config.json``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import io
from .config import deep_merge, merge_config, run_path
from .errors import RunError, shell_word
from .runs import CKPT_FILE, CONFIG_FILE, MODEL_FILE, load_run, run_config, run_status

__all__ = [
    "Source",
    "open_source",
    "with_defaults",
    "adopt",
    "rebuild",
    "take_preprocessing",
    "describe_source",
]

# builder arguments that come from the data, not from the user's model options
_DATA_ARGS = {
    "features": "the data's width (columns)",
    "shape": "the image shape",
    "levels": "the data's levels",
    "context_features": "the context's width",
}


@dataclass
class Source:
    """The run a new run starts from: ``given`` (the path as given), ``path`` (resolved), its
    ``config.json``, its best model (``flow``), the SHA-256 of its ``model.ff`` and what its
    checkpoint says of its best epoch."""

    given: str
    path: Path
    cfg: dict
    flow: torch.nn.Module
    sha256: str
    best_epoch: int | None = None
    best: float | None = None
    unfinished: dict | None = None
    took: list[str] = field(default_factory=list)  # the sections the new run took from it
    data_options: bool = False  # data options given here over the data taken from it

    @property
    def what(self) -> str:
        return f"--init-from {self.given}"

    def record(self) -> dict:
        """What the new run's ``resolved.init_from`` keeps."""
        r = self.cfg["resolved"]
        fp = r.get("data_fingerprint")
        return {
            "run": self.given,
            "path": str(self.path),
            "model_sha256": self.sha256,
            "best_epoch": self.best_epoch,
            "data": self.cfg["data"].get("name"),
            "data_sha256": fp.get("sha256") if isinstance(fp, dict) else None,
            "took": list(self.took),
            # (the source was still training or interrupted: its best model so far; None
            # for a finished run, as run_status gives it)
            "unfinished": self.unfinished,
        }


def _same_folder(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def open_source(given, out: Path) -> Source:
    """The run ``given`` names, checked and loaded (before anything of the new run is read or
    written); :class:`RunError` in one line for a folder that is not a finished run's, the new
    run's own ``--out``, or a damaged ``model.ff``."""
    given = run_path(given)
    path = Path(given)
    if _same_folder(path, Path(out)):
        raise RunError(
            f"--init-from {given} is this run's own --out: a new run starting from that model "
            "needs another --out (a run continues in its own folder with --resume, under its "
            "own options)"
        )
    try:
        cfg = run_config(path)
    except RunError as e:
        raise RunError(f"--init-from {given}: {e}") from None
    model = path / MODEL_FILE

    def sha256() -> str:
        h = hashlib.sha256()
        try:
            with open(model, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            raise RunError(f"--init-from {given}: cannot read {model}: {e.strerror}") from None
        return h.hexdigest()

    before = sha256() if model.is_file() else None
    try:  # (ff.load builds on a forked random stream: this run draws what its seed draws)
        flow = load_run(path)
    except RunError as e:
        raise RunError(f"--init-from {given}: {e}") from None
    if getattr(flow, "config", None) is None:  # (a run's model is always a builder's)
        raise RunError(f"--init-from {given}: its model has no builder config to rebuild it from")
    digest = sha256()
    if digest != before:  # (the recorded hash must be that of the model loaded)
        raise RunError(
            f"--init-from {given}: its {MODEL_FILE} changed while it was read (is it still "
            "training, writing a new best model?); try again, or once it has finished"
        )
    best_epoch = best = None
    try:
        meta = io.read_metadata(path / CKPT_FILE)
        e, b = meta.get("best_epoch"), meta.get("best")
        epochs = cfg["train"].get("epochs")
        most = epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else 1 << 30
        if isinstance(e, int) and not isinstance(e, bool) and 0 <= e < most:
            best_epoch = e + 1
        if isinstance(b, (int, float)) and not isinstance(b, bool) and abs(b) < 1e15:
            best = float(b)  # (a checkpoint's header is data: an edited value is not said)
    except (ValueError, OSError):  # no checkpoint (removed): its best epoch is not said
        pass
    flow.__dict__.pop("saved_config", None)  # (trained on, it is this run's model now)
    flow.train()
    return Source(
        given=given,
        path=path.resolve(),
        cfg=cfg,
        flow=flow,
        sha256=digest,
        best_epoch=best_epoch,
        best=best,
        unfinished=run_status(path, cfg),
    )


def recorded_hint(config: dict) -> str:
    """For a replayed ``config.json`` whose ``init_from`` is not found as given (a path relative
    to where that run was started): the folder it recorded, resolved, as a hint; else ``""``."""
    resolved = config.get("resolved")
    was = resolved.get("init_from") if isinstance(resolved, dict) else None
    path = was.get("path") if isinstance(was, dict) else None
    given = config.get("init_from")
    if not isinstance(path, str) or not isinstance(given, str) or not path.isprintable():
        return ""
    try:  # (found as given: the refusal is about that run; not found where it was: no hint)
        if (Path(given) / CONFIG_FILE).is_file() or not (Path(path) / CONFIG_FILE).is_file():
            return ""
    except (OSError, ValueError):
        return ""
    return f"; the run this config records started from {path}: give --init-from {shell_word(path)}"


REUSE_CHECK_VALUES = 50_000_000  # a starting run's training split larger than this (values):
# its rows are not read a second time to compare with the new run's (the check is skipped)


def reused_rows(source: Source, ds, source_ds) -> str | None:
    """A warning where the new run's validation or test examples are examples the starting
    model was trained on (its data split another way: another ``data.seed``, ``shuffle`` or
    fractions; or a file that shares its rows): early stopping then selects on them, and the
    test NLL is optimistic. None where none is."""
    from .data import repeated_rows

    counts = {k: repeated_rows(source_ds.train, ds.split(k)) for k in ("val", "test")}
    if not any(counts.values()):
        return None
    what = "images" if ds.is_image else "rows"
    said = " and ".join(
        f"{n} of the {len(ds.split(k))} {'validation' if k == 'val' else 'test'} {what}"
        for k, n in counts.items()
        if n
    )
    return (
        f"{said} are {what} the starting model ({source.given}) was trained on (its data split "
        "another way: another data.seed, shuffle or fractions, or a file that shares its "
        f"{what}): early stopping selects on them and this run's test NLL will be optimistic; "
        "keep the starting run's split (its data and data options) for a fair test"
    )


def with_defaults(config: dict, source: Source) -> dict:
    """``config`` with the sections it leaves out taken from the source run: its model (name
    and arguments) when no model is named, its data (the file it recorded, its split seed and
    options, under the options given) when no data is named, and its layout when none is
    given. ``source.took`` lists them. A float64 run's precision is kept where the config
    sets no ``train.dtype`` (its model is float64)."""
    config = dict(config or {})
    given = merge_config(None, config)
    theirs = source.cfg
    if given["model"]["name"] is None:
        model = {"name": theirs["model"]["name"], **(theirs["model"].get("kwargs") or {})}
        config["model"] = deep_merge(model, config.get("model") or {})
        source.took.append("model")
    if given["data"]["name"] is None:
        d = theirs["data"]
        name = d["name"]
        recorded = theirs["resolved"].get("data_path")
        if isinstance(recorded, str) and not Path(name).exists() and Path(recorded).exists():
            name = recorded  # (a relative path from another folder)
        data = {"name": name, "seed": d.get("seed", 0), **(d.get("options") or {})}
        mine = config.get("data") or {}
        config["data"] = deep_merge(data, mine if isinstance(mine, dict) else {})
        source.took.append("data")
        source.data_options = bool(mine)
    train = config.get("train")
    if (theirs.get("train") or {}).get("dtype") == "float64" and not (
        isinstance(train, dict) and "dtype" in train
    ):
        config["train"] = {**(train if isinstance(train, dict) else {}), "dtype": "float64"}
    if "layout" not in config:
        layout = theirs["resolved"].get("layout")
        if layout in ("vector", "image"):
            config["layout"] = layout
            source.took.append("layout")
    return config


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _model_words(name: str, parameters) -> str:
    n = f"{parameters:,} parameters" if isinstance(parameters, int) else "parameters unknown"
    return f"{name}, {n}"


def _its_options(source: Source) -> str:
    """The source run's model as flags: ``--model maf --model-kwargs '{...}'``."""
    import json
    import shlex

    name = str(source.cfg["model"].get("name"))
    built = source.cfg["resolved"].get("builder_kwargs")
    if not isinstance(built, dict):
        built = source.cfg["model"].get("kwargs") or {}
    kwargs = {k: v for k, v in built.items() if k not in _DATA_ARGS}
    said = f"--model {name}"
    if kwargs:
        text = json.dumps(kwargs)
        said += f" --model-kwargs {shlex.quote(text if len(text) <= 300 else text[:297] + '...')}"
    return said


def _check_model(source: Source, cfg: dict, resolved: dict) -> None:
    """The new run's model (``resolved.flow_config``, built from its own config) is the source
    run's architecture, or a one-line :class:`RunError` naming both."""
    from .. import models
    from .build import same_model

    mine = {k: v for k, v in resolved["flow_config"].items() if k != "prefix"}
    theirs = {k: v for k, v in source.flow.config.items() if k != "prefix"}
    if same_model(theirs, mine):
        return
    their_name = str(source.cfg["model"].get("name") or theirs.get("model")).lower()
    theirs_said = _model_words(their_name, source.cfg["resolved"].get("parameters"))
    mine_said = _model_words(cfg["model"]["name"], resolved.get("parameters"))
    words = (
        f"{source.what}: its model ({theirs_said}) is built with other arguments than this run's"
        if theirs_said == mine_said
        else f"{source.what}: its model ({theirs_said}) is not this run's ({mine_said})"
    )
    if str(theirs.get("model", "")).lower() != str(mine.get("model", "")).lower():
        raise RunError(
            f"{words}; give its model ({_its_options(source)}), or no --model and no model "
            "options to take it"
        )
    try:
        a = models.registry.saved_kwargs(theirs["model"], theirs.get("kwargs") or {})
    except (ValueError, TypeError):
        a = dict(theirs.get("kwargs") or {})
    b = mine.get("kwargs") or {}
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    said = "; ".join(f"{k} {_show(a.get(k))} there, {_show(b.get(k))} here" for k in keys[:4])
    said += "; ..." if len(keys) > 4 else ""
    if keys and set(keys) <= set(_DATA_ARGS):
        options = source.cfg["data"].get("options") or {}
        fix = (
            "a run starts from a model of data of the same shape: give data with the same "
            "columns, levels and context"
            + (
                f" (its data options: {', '.join(f'{k}={_show(v)}' for k, v in options.items())}"
                "; --data without them drops them)"
                if options
                else ""
            )
        )
    elif keys == ["dequantization"]:
        fix = f"give --dequantization {_show(a.get('dequantization'))}, as it was trained"
    elif keys == ["standardize"]:
        fix = "give the data option standardize as it had it"
    else:
        fix = (
            f"give the model options it was trained with ({_its_options(source)}), or no "
            "--model and no model options to take its model"
        )
    raise RunError(f"{words}: {said or 'another structure'}; {fix}")


def _check_data(source: Source, resolved: dict) -> None:
    """What the source model's fixed layers and inputs assume of the data: the same bounds and
    integer columns, the same classes (the kind of context: :func:`_check_context`, first),
    the same column names where both runs have them; a one-line :class:`RunError` otherwise."""
    theirs = source.cfg["resolved"]
    for key, option in (("bounds", "data.bounds"), ("integers", "data.integers")):
        if theirs.get(key) != resolved.get(key):
            raise RunError(
                f"{source.what}: its {option} ({_show(theirs.get(key))}) are not this run's "
                f"({_show(resolved.get(key))}); its model maps the columns with them: give the "
                "same"
            )
    a, b = theirs.get("context") or {}, resolved.get("context") or {}
    if a.get("kind") == "label" and a.get("classes") != b.get("classes"):
        raise RunError(
            f"{source.what}: its classes ({_show(a.get('classes'))}) are not this run's "
            f"({_show(b.get('classes'))}); its model's contexts are one-hot codes of them"
        )
    for key, what in (("columns", "modelled columns"), ("context_column_names", "context columns")):
        x, y = theirs.get(key), resolved.get(key)
        if x and y and x != y:
            raise RunError(
                f"{source.what}: its {what} ({_show(x)}) are not this run's ({_show(y)}); its "
                "model takes the columns by position: give a table with the same columns in "
                "the same order"
            )


def _check_context(source: Source, resolved: dict) -> None:
    """The same kind of context (none, class labels, table columns), or a one-line
    :class:`RunError`."""
    a = source.cfg["resolved"].get("context") or {}
    b = resolved.get("context") or {}
    if a.get("kind") != b.get("kind"):
        kinds = {None: "unconditional", "label": "label-conditional",
                 "columns": "column-conditional"}  # fmt: skip
        raise RunError(
            f"{source.what}: it is {kinds.get(a.get('kind'), 'conditional')} and this run "
            f"{kinds.get(b.get('kind'), 'conditional')}; give the same --conditional or "
            "--target-columns as it had"
        )


def take_preprocessing(resolved: dict, model: dict) -> dict:
    """``resolved`` describing the model whose resolved section is ``model``: its config
    (``flow_config``) and its fixed preprocessing's statistics (``stats``, ``whiten``, the
    context's ``stats``); the rest (the data, its ranges and examples) stays this run's."""
    out = dict(resolved)
    out["flow_config"] = model["flow_config"]
    out["stats"] = model.get("stats")
    if model.get("whiten"):
        out["whiten"] = True
    else:
        out.pop("whiten", None)
    a, b = model.get("context"), out.get("context")
    if isinstance(a, dict) and isinstance(b, dict) and "stats" in a:
        out["context"] = {**b, "stats": a["stats"]}
    return out


def adopt(source: Source, cfg: dict, flow, resolved: dict):
    """The source run's model for a new run whose own config built ``flow`` (checked to be the
    same architecture, on data its preprocessing takes), and ``resolved`` recording it."""
    _check_context(source, resolved)
    _check_model(source, cfg, resolved)
    _check_data(source, resolved)
    theirs = source.cfg["resolved"]
    asked = cfg["data"]["options"].get("whiten")
    if asked in (True, False) and asked != bool(theirs.get("whiten")):
        did = "whitens" if theirs.get("whiten") else "does not whiten"
        raise RunError(
            f"{source.what}: its model {did} the data (data.whiten), and a run started from it "
            f"keeps its model whole: drop data.whiten={str(asked).lower()}"
        )
    shifted = _shifted_statistics(source, resolved)  # (before the source's replace them)
    layers = fixed_layers(source.flow.config)  # (the record follows the model: a statistic
    model = {  # config.json names that no layer of model.ff holds is not carried over)
        "flow_config": source.flow.config,
        "stats": theirs.get("stats") if "standardize" in layers else None,
        "whiten": theirs.get("whiten") if "whiten" in layers else None,
        "context": theirs.get("context"),
    }
    out = take_preprocessing(resolved, model)
    out["init_from"] = source.record()
    if shifted is not None:  # said when training starts, and again by eval and report
        out["data_warnings"] = [*out.get("data_warnings", []), shifted]
    return source.flow, out


FAR_STATISTICS = 10.0  # kept standard deviations apart (or a spread this many times): a warning


def _shifted_statistics(source: Source, resolved: dict) -> str | None:
    """A warning when this run's data (or contexts), standardised with the source run's kept
    statistics as its model will see them, lie far from what that model was trained on:
    their means :data:`FAR_STATISTICS` kept standard deviations apart, or their spread that
    many times wider (other units, a drift). Only for statistics the source run's model keeps."""
    theirs = source.cfg["resolved"]
    layers = fixed_layers(source.flow.config)
    pairs = []
    if "standardize" in layers:
        pairs.append(
            ("column", theirs.get("stats"), resolved.get("stats"), resolved.get("columns"))
        )
    a, b = theirs.get("context"), resolved.get("context")
    if isinstance(a, dict) and isinstance(b, dict) and a.get("kind") == "columns":
        pairs.append(
            ("context column", a.get("stats"), b.get("stats"), resolved.get("context_column_names"))
        )
    said = []
    for what, kept, mine, names in pairs:
        try:
            k_loc, k_scale = (list(map(float, kept[key])) for key in ("loc", "scale"))
            m_loc, m_scale = (list(map(float, mine[key])) for key in ("loc", "scale"))
        except (TypeError, KeyError, ValueError):  # (a config is data: no verdict)
            continue
        if not (len(k_loc) == len(k_scale) == len(m_loc) == len(m_scale)):
            continue
        for j, (kl, ks, ml, ms) in enumerate(zip(k_loc, k_scale, m_loc, m_scale)):
            if not (ks > 0 and ms > 0):
                continue
            shift, ratio = abs(ml - kl) / ks, ms / ks
            # (a narrower spread, a subset of the data: inside what the model saw, no word)
            if shift > FAR_STATISTICS or ratio > FAR_STATISTICS:
                name = names[j] if isinstance(names, list) and len(names) == len(k_loc) else j
                said.append(
                    f"{what} {name!r}: mean {ml:.4g} and spread {ms:.4g} here, {kl:.4g} and "
                    f"{ks:.4g} in {source.given}"
                )
    if not said:
        return None
    more = " ..." if len(said) > 3 else ""
    return (
        f"this run's data lies far from what {source.given}'s model was trained on "
        f"({'; '.join(said[:3])}{more}): the model keeps that run's standardisation, so it "
        "sees these values many standard deviations out (other units, or a drift), where its "
        "training starts from extrapolation; convert the data to the source's units, or start "
        "a new run instead of --init-from"
    )


def rebuild(resolved: dict, budget: int):
    """A resumed init-from run's model, rebuilt from its own ``config.json`` (the source run's
    structure and preprocessing; the checkpoint holds the weights): the source run is not read
    again."""
    try:
        return io._build(resolved["flow_config"], budget)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise RunError(
            f"cannot rebuild the model of this run from its config.json: {' '.join(str(e).split())}"
        ) from None


def fixed_layers(flow_config) -> set[str]:
    """The names of the fixed preprocessing layers a model's config lists under ``"prefix"``
    (``standardize``, ``whiten``, ``context_standardize``, ``bounded``, ...)."""
    prefix = flow_config.get("prefix") if isinstance(flow_config, dict) else None
    names = set()
    for layer in prefix if isinstance(prefix, list) else ():
        if isinstance(layer, str):
            names.add(layer)
        elif isinstance(layer, dict) and len(layer) == 1:
            names.add(str(next(iter(layer))))
    return names


def preprocessing_words(flow_config) -> str:
    """What a run started from another keeps of it: ``"its weights"``, and the statistics of
    the fixed layers its model holds (whitening or standardisation, context standardisation)."""
    layers = fixed_layers(flow_config)
    pre = [
        "whitening" if "whiten" in layers else "standardisation" if "standardize" in layers else "",
        "context standardisation" if "context_standardize" in layers else "",
    ]
    pre = " and ".join(p for p in pre if p)
    return f"its weights and its {pre} statistics" if pre else "its weights"


def describe_source(source: Source, objective: str | None = None) -> str:
    """The start line's note: where the model comes from, and what was taken; and, where the
    new run trains by another ``objective`` than the source did (training options are the new
    run's own), which, and how to keep the source's."""
    best = f"epoch {source.best_epoch}" if source.best_epoch else "its best epoch"
    if source.best is not None and source.cfg["train"].get("objective", "nll") == "nll":
        best += f", val NLL {source.best:.4f}"
    kept = preprocessing_words(source.flow.config)
    line = f"initialised from {source.given} (its best model, {best}): {kept}"
    took = [t for t in source.took if t != "layout"]
    if took:
        line += f"; its {' and '.join(took)} section{'s' if len(took) > 1 else ''} (none given)"
    if source.unfinished:
        line += f"; note: {source.given} has not finished training (its best model so far)"
    theirs = source.cfg["train"].get("objective", "nll")
    if objective is not None and objective != theirs:
        line += (
            f"; note: {source.given} trained by {theirs}, this run trains by {objective} "
            f"(--set train.objective={theirs} keeps its objective)"
        )
    return line
