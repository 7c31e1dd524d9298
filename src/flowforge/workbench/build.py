r"""Building the model a config asks for, shaped for a dataset.

What a builder takes comes from its :class:`~flowforge.models.BuilderSpec` (vectors, images,
the shared data options), never from inspecting signatures.
"""

from __future__ import annotations

import math
import os

import torch

from .. import models
from ..core import Flow
from ..io import Budget, unsaveable_config
from .catalog import SIZING
from .data import FEW_LEVELS, Dataset, describe_bounds, discrete_column, model_bounds, run_dtype
from .data import whitening as data_whitening
from .errors import WorkbenchError, shell_word, visible
from .warm_start import _DATA_ARGS as DATA_ARGS

__all__ = [
    "build_flow",
    "standardized",
    "size_rule",
    "same_model",
    "rebuild_refusal",
    "model_arguments",
    "SIZING",
]


def standardized(flow: Flow, stats: dict, shape, dtype=torch.float32) -> Flow:
    """``flow`` preceded by a fixed ``(x - loc) / scale`` layer (training-split statistics,
    held in ``dtype``, the run's precision).

    The result scores raw data (the standardisation's log-determinant included) and keeps the
    statistics through ``ff.save``/``ff.load`` (:func:`flowforge.models.standardized`).
    """
    loc = torch.tensor(stats["loc"], dtype=dtype).reshape(shape)
    scale = torch.tensor(stats["scale"], dtype=dtype).reshape(shape)
    return models.standardized(flow, loc, scale)


def column_words(names, indices) -> str:
    """Columns as a user's table names them (``'income', 'age'``), or by their indices in the
    table where the run kept no names (runs from before the names were kept, headerless
    files)."""
    if names and len(names) == len(indices) and all(isinstance(n, str) for n in names):
        return ", ".join(repr(n) for n in names)
    return f"columns {list(indices)}"


def _context_note(resolved: dict) -> str:
    c = resolved.get("context")
    if not c:
        return ""
    if c["kind"] == "label":
        return f"; conditional on {c['features']} class labels"
    targets = column_words(resolved.get("columns"), c["target_columns"])
    context = column_words(resolved.get("context_column_names"), c["context_columns"])
    order = list(c["target_columns"])
    if order != sorted(order):  # (the model's y is in the order given, not the table's)
        return (
            f"; p({targets} | {context}), y in that order (as ff.load(run).log_prob(y, x) "
            "and .sample(n, x) take and give it; the table's order is another)"
        )
    return f"; p({targets} | {context})"


def model_arguments(name: str) -> dict:
    """A builder's own arguments and their defaults, depth and width first (``flowforge list``);
    the data options every builder shares are left out."""
    spec = models.spec(name)
    defaults = spec.defaults()
    first = [k for k in (spec.depth, spec.width) if k in defaults]
    order = first + [k for k in defaults if k not in first]
    out = {}
    for k in order:
        v = defaults[k]
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _pow2(v: float) -> int:
    return 2 ** round(math.log2(max(v, 1.0)))


def size_rule(d: int, n: int, image: bool) -> tuple[int, int]:
    """``(depth, width)`` for data of dimension ``d`` with ``n`` training examples (see
    :data:`SIZING`), before the builder's own defaults cap them."""
    if image:
        depth = min(8, max(2, round(math.log2(max(n / 40, 1.0)))))
        return depth, min(128, max(32, _pow2(n / 40)))
    depth = min(8, 4 + math.ceil(math.log2(d))) if d > 1 else 4
    width = min(256, max(32, _pow2(n / 50)))
    return depth, max(width, min(256, 2 ** math.ceil(math.log2(2 * d))))


def _as_width(default, width: int, image: bool):
    """``width`` in the form of the builder's default (an int, or one per hidden layer)."""
    if isinstance(default, int):
        return min(default, width)
    if isinstance(default, (tuple, list)) and default:
        return [min(h, width) for h in default]
    return width if image else [width, width]  # None: the builder picks its own depth


# builders whose default depth/width is None: the caps the sizing rule uses for
# d-dimensional vectors, and the image width. The vector RealNVP is sized as plain MLP
# couplings (8 of 256x256 at most; its width is always set, so its residual default, which
# applies when no width is given, does not). MAF's depth default depends on d; its width
# default is three layers of 128 in residual MADEs (two, plain, with residual=False), which
# the rule narrows keeping the residual MADEs (so residual=True is set with the width). The
# vector IDF's couplings default to MLPs of two layers of 256.
def _vector_defaults(name: str, d: int, kwargs: dict) -> tuple[int | None, list | None]:
    if name == "realnvp":
        return 8, [256, 256]
    if name == "maf":
        plain = kwargs.get("residual") is False
        return models.autoregressive.maf_layers(d), [128] * (2 if plain else 3)
    if name == "idf":
        return None, [256, 256]
    return None, None


# builders whose width default (None) is set whenever the run is sized, matching or not
_ALWAYS_SET = {"realnvp"}

_IMAGE_WIDTHS = {"realnvp": 64}


def _sizing(name: str, spec, kwargs: dict, layout: str, ds: Dataset) -> dict | None:
    """The depth and width chosen for a run that did not set them, where they differ from the
    builder's defaults (None: the defaults fit)."""
    n = int(ds.split("train").shape[0])
    return sizing_for(name, spec, kwargs, layout == "image", math.prod(ds.shape), n)


def sizing_for(name: str, spec, kwargs: dict, image: bool, d: int, n: int) -> dict | None:
    """:func:`_sizing` for data of dimension ``d`` with ``n`` training examples."""
    depth, width = size_rule(d, n, image)
    defaults = spec.defaults()
    chosen = {}
    dep = spec.depth
    if dep and dep not in kwargs and not (image and name == "realnvp"):
        default = defaults.get(dep)
        if default is None and not image:
            default = _vector_defaults(name, d, kwargs)[0]
        if isinstance(default, int) and not isinstance(default, bool) and depth < default:
            chosen[dep] = depth
    wid = spec.width
    if wid and wid not in kwargs:
        default = defaults.get(wid)
        if default is None and not image:
            default = _vector_defaults(name, d, kwargs)[1]
        if default is None and image:
            default = _IMAGE_WIDTHS.get(name)
        if default is not None:
            w = _as_width(default, width, image)
            always = name in _ALWAYS_SET and not image
            if always or w != (list(default) if isinstance(default, tuple) else default):
                chosen[wid] = w
                if name == "maf" and "residual" not in kwargs:
                    chosen["residual"] = True  # the default's residual MADEs, narrower
    if not chosen:
        return None
    return {"dimension": d, "examples": n, "arguments": chosen}


def _sizing_like(like: dict, name: str, kwargs: dict, own: dict | None) -> dict | None:
    """The sizing of the run a new run starts from (``like``, its resolved section), for the
    arguments ``kwargs`` leave unset: its model was sized for its own data, and a model sized
    for this run's (fewer rows, say) would not take its weights. ``own`` (this run's sizing)
    where that run's model is another builder's (refused afterwards, naming both)."""
    before = like.get("flow_config")
    if not isinstance(before, dict) or str(before.get("model", "")).lower() != name.lower():
        return own
    # (absent: a run from before the sizing rule, sized by defaults)
    return _unset_sizing(like.get("sizing"), kwargs)


def _unset_sizing(sizing, kwargs: dict) -> dict | None:
    """A recorded ``sizing`` reduced to the arguments ``kwargs`` leave unset (those given win);
    None when it leaves none, or is not a sizing record."""
    if not isinstance(sizing, dict) or not isinstance(sizing.get("arguments"), dict):
        return None
    chosen = {k: v for k, v in sizing["arguments"].items() if k not in kwargs}
    return {**sizing, "arguments": chosen} if chosen else None


def _sizing_note(sizing: dict | None) -> str:
    if not sizing:
        return ""
    args = ", ".join(f"{k}={v}" for k, v in sizing["arguments"].items())
    return (
        f"sized for {sizing['dimension']}-d data and {sizing['examples']} training examples: "
        f"{args} (set them in the model arguments to override; see 'flowforge list')"
    )


# Registered models the workbench does not train or score, each with the line that says so:
# an augmented flow's log_prob is a stochastic bound over auxiliary draws, which the
# workbench's preprocessing wrappers, objectives and evaluation (exact densities, or the
# dequantization bound) do not handle.
PYTHON_ONLY = {
    "augmented": (
        "model 'augmented' (augmented flows) is Python-only: its log_prob is a bound over "
        "auxiliary draws, not a density, and the workbench neither trains, scores nor fits a "
        "target with it; use ff.models.augmented(...) with its log_prob(x, samples=K) bound "
        "(docs/augmented.md)"
    ),
}


def _base_name(base) -> str:
    return str(base.get("name") if isinstance(base, dict) else base).lower()


# model arguments a builder reads only with another argument's value: (the condition on the
# arguments as the builder takes them, then the words for it), for every model ("*") and by
# model; a value given where it is not read built the same model as without it, unsaid
_READ_ONLY_WITH: dict[str, dict] = {
    "*": {
        "components": (
            lambda a: _base_name(a["base"]) in ("mixture", "made-mog"),
            "a mixture base (base: mixture or made-mog)",
        ),
        "alpha": (
            lambda a: a["levels"] is not None and a["preprocess"] == "logit",
            "discrete data (data.levels) with preprocess: logit",
        ),
    },
    **{
        m: {"hidden": (lambda a: a["context_features"] > 0, "a conditional run (a context)")}
        for m in ("planar", "radial")
    },
    "sylvester": {
        "hidden": (lambda a: a["context_features"] > 0, "a conditional run (a context)"),
        "reflections": (lambda a: a["kind"] == "householder", "kind: householder"),
        "rank": (lambda a: a["kind"] == "orthogonal", "kind: orthogonal"),
    },
    "glow": {"prior_hidden": (lambda a: a["split_prior"] is True, "split_prior: true")},
}


def _refuse_unread(spec, kwargs: dict, ds: Dataset) -> None:
    """A :class:`WorkbenchError` for a model argument given where the builder does not read it
    (:data:`_READ_ONLY_WITH`): an option a sweep would find changes nothing."""
    name = spec.name.lower()
    shared = _READ_ONLY_WITH["*"] if spec.data else {}  # (the shared data options: IDF's
    rules = {**shared, **_READ_ONLY_WITH.get(name, {})}  # components are its own prior's)
    given = [k for k in kwargs if k in rules and k in spec.signature.parameters]
    if not given:
        return
    args = {k: p.default for k, p in spec.signature.parameters.items()}
    args.update(kwargs, levels=ds.levels if ds.levels is not None else kwargs.get("levels"))
    info = ds.context_info or {}
    args["context_features"] = info.get("features") or len(info.get("context_columns") or ())
    for k in given:
        read, words = rules[k]
        try:
            reads = read(args)
        except (KeyError, TypeError, AttributeError):
            continue  # (an argument the builder checks itself)
        if not reads:
            raise WorkbenchError(
                f"model argument {k}={kwargs[k]!r} is read by {spec.name} only with {words}, "
                f"which this run does not have: it would build the same model without it "
                f"(remove it)"
            )


def build_flow(
    cfg: dict,
    ds: Dataset,
    stored: dict | None = None,
    recorded: dict | None = None,
    like: dict | None = None,
) -> tuple[Flow, Flow, dict]:
    """Build the model a config asks for, shaped for ``ds``.

    Returns ``(flow, inner, resolved)``: ``inner`` is the builder's flow; ``flow`` is what the
    trainer fits, saves to ``model.ff`` and scores raw data with (``inner`` preceded by the
    standardisation, if the data has statistics); ``resolved`` records the decisions.
    ``stored``: the resolved section of the run being resumed (a run from before the sizing
    rule and the ``standardize`` option is rebuilt as it was). ``recorded``: the resolved
    section of the run a config replays (``train --config RUN/config.json``, on the data it
    recorded): the model is built from the arguments that run's model was built with, the
    config's own model arguments over them (a copy edited on purpose), so that a later
    flowforge's sizing rule or defaults do not change it; a :class:`WorkbenchError` when this
    flowforge builds another model from them. ``like``: the resolved section of the run a new
    run starts from (``init_from``): the depth and width the model arguments leave unset are
    that run's, not those the sizing rule gives this run's data (its weights are loaded into
    the model).
    """
    name, kwargs = cfg["model"]["name"], dict(cfg["model"]["kwargs"])
    dtype = run_dtype(cfg)
    spec = models.spec(name)
    if spec.name in PYTHON_ONLY:
        raise WorkbenchError(PYTHON_ONLY[spec.name])
    legacy = stored is not None and "sizing" not in stored
    for k in ("features", "shape"):
        if k in kwargs:
            raise WorkbenchError(f"model argument {k!r} comes from the data; remove it")
    if ds.levels is not None and "levels" in kwargs and kwargs["levels"] != ds.levels:
        raise WorkbenchError(
            f"model argument levels={kwargs['levels']!r} does not match the data's "
            f"{ds.levels} levels; remove it (levels come from the data)"
        )
    if ds.levels is None and "levels" in kwargs and stored is None:
        lv = kwargs["levels"]
        raise WorkbenchError(
            f"model argument levels={lv!r} applies to discrete data, and {ds.name} is read as "
            f"continuous; declare its levels on the data instead, --set "
            f"data.levels={lv!r} (integer values in [0, levels - 1]), and remove model.levels"
        )
    ignored = [k for k in ("preprocess", "alpha") if k in kwargs]
    if ds.levels is None and "levels" not in kwargs and ignored and stored is None:
        raise WorkbenchError(
            f"model argument {ignored[0]} applies to discrete data (data.levels): continuous "
            "data are standardised instead (data.standardize); remove it (a bounded or "
            "positive column is mapped to the real line by data.bounds, e.g. --set "
            "data.bounds.COLUMN=positive or =[0, 1])"
        )
    layout = cfg["layout"]
    if layout == "image":
        if not ds.is_image:
            raise WorkbenchError(f"--layout image needs image data; {ds.name} has shape {ds.shape}")
        if "shape" not in spec.inputs:
            raise WorkbenchError(
                f"model {name!r} takes vectors only (no image layout): use --layout vector "
                "(the images flattened) or auto, or an image model (glow, realnvp, tarflow)"
            )
    elif layout == "vector":
        if "features" not in spec.inputs:
            raise WorkbenchError(f"model {name!r} takes images only (no vector layout)")
    else:
        layout = "image" if ds.is_image and "shape" in spec.inputs else "vector"
        if layout == "vector" and "features" not in spec.inputs:
            raise WorkbenchError(f"model {name!r} takes images only; {ds.name} is not image data")
    takes = spec.signature.parameters
    if stored is None and recorded is None:  # (a new run: resumed and replayed ones as recorded)
        _refuse_unread(spec, kwargs, ds)
    extra = any(p.kind == p.VAR_KEYWORD for p in takes.values())
    for opt in ("dequantization", "base"):  # the flags every builder of a continuous flow has
        if opt in kwargs and opt not in takes and not extra:
            why = (
                "its base distribution is fixed by the space it models"
                if opt == "base"
                else "it models integers exactly"
                if name.lower() == "idf"
                else "it has no dequantizer"
            )
            raise WorkbenchError(f"model {name!r} takes no {opt} option (--{opt}): {why}")
    if ds.levels is None and "levels" not in kwargs and name.lower() == "idf":
        raise WorkbenchError(
            f"model 'idf' models discrete data, and {ds.name} is read as continuous (no "
            "data.levels): give its number of levels, --set data.levels=K (every column an "
            "integer in [0, K)), or use a continuous model"
        )
    if ds.levels is not None and "levels" not in kwargs:
        if "levels" not in takes:
            raise WorkbenchError(
                f"model {name!r} models continuous data only, and {ds.name} is discrete "
                f"({ds.levels} levels): a model that dequantizes (realnvp, nsf, maf, glow, ...) "
                "or an integer flow (idf) takes it"
            )
        kwargs["levels"] = ds.levels
    if ds.context_info is not None:
        k = int(ds.context_info["features"])
        if "context_features" not in takes:
            raise WorkbenchError(f"model {name!r} cannot be conditional (no context_features=)")
        if kwargs.setdefault("context_features", k) != k:
            raise WorkbenchError(
                f"model argument context_features={kwargs['context_features']} does not match "
                f"the data's context of {k} features; remove it"
            )
    elif kwargs.get("context_features"):
        raise WorkbenchError(
            f"model argument context_features={kwargs['context_features']!r} comes from the "
            "data, and this run's data has no context: remove it, or make the run conditional "
            "(--conditional label, or --target-columns for a table)"
        )
    elif kwargs.get("base") == "class-gaussian":
        raise WorkbenchError(
            "base 'class-gaussian' needs a conditional run: add --conditional label (or "
            "--target-columns for a table)"
        )
    before = (stored or recorded or {}).get("flow_config") or {}
    if not isinstance(before, dict):
        before = {}
    own = None  # replaying: whether the config's model is the one the run recorded
    if isinstance(before.get("kwargs"), dict) and str(before.get("model")).lower() == name.lower():
        # resuming or replaying: the arguments the run's model was built with, all of them
        # (completed with the values of those added since), so that changed builder defaults
        # rebuild it as it was
        saved = models.registry.saved_kwargs(name, before["kwargs"])
        saved = {k: v for k, v in saved.items() if k not in ("features", "shape")}
        sizing = (stored or recorded).get("sizing")
        if stored is None:  # replaying: the config's own arguments (as given) over them
            own = layout == recorded.get("layout") and all(
                saved.get(k, _ABSENT) == v for k, v in kwargs.items()
            )
            if ds.stats is not None and "standardize" in takes:
                kwargs.setdefault("standardize", False)  # standardised here, as a new run
            if (recorded.get("stats") is None) != (ds.stats is None):  # data.standardize
                own = False  # changed in the copy: the model follows it, as a new run's
                if ds.stats is None:
                    saved.pop("standardize", None)
            sizing = _unset_sizing(sizing, kwargs)
            kwargs = {**saved, **kwargs}
        else:
            kwargs = saved
    else:
        theirs = (like or {}).get("flow_config")
        if isinstance(theirs, dict) and isinstance(theirs.get("kwargs"), dict):
            if str(theirs.get("model")).lower() == name.lower():
                # a new run from another run's model: the arguments that model was built with
                # (completed as loading completes them), the config's own over them, so that a
                # default changed since (or an old run's legacy values) is not another model
                # (not what this run's data decides: its size, levels and context, and the
                # standardisation where the run's data options say it; the checks of
                # warm_start refuse a source that differs there)
                tied = set(DATA_ARGS)
                if "standardize" in cfg["data"]["options"]:
                    tied.add("standardize")
                saved = models.registry.saved_kwargs(name, theirs["kwargs"])
                if cfg["data"]["options"].get("standardize") is False and "standardize" in saved:
                    # its model's own (a run from before 2026-12-08 with data.standardize:
                    # false standardised itself from its first batch)
                    kwargs.setdefault("standardize", saved["standardize"])
                saved = {k: v for k, v in saved.items() if k not in tied}
                kwargs = {**saved, **kwargs}
        if legacy:  # the builder's arguments added since take the values that rebuild the run
            kwargs = models.registry.saved_kwargs(name, kwargs)
        elif "standardize" in takes and (
            ds.stats is not None or cfg["data"]["options"].get("standardize") is False
        ):
            # the data is standardised here, with the whole training split's statistics; or
            # not at all, as data.standardize: false asks (the builder's own layer would
            # standardise it from the first batch)
            kwargs.setdefault("standardize", False)
        sizing = None if legacy else _sizing(spec.name.lower(), spec, kwargs, layout, ds)
        if like is not None and not legacy:
            sizing = _sizing_like(like, spec.name, kwargs, sizing)
        if sizing:
            kwargs.update(sizing["arguments"])
    shape_kw = {"shape": list(ds.shape)} if layout == "image" else {"features": math.prod(ds.shape)}
    try:
        # a config's sizes (bins, widths, layers) are bounded by the machine: half its memory
        with Budget(_build_bytes(), math.inf, why="half this machine's memory"):
            inner = models.build(name, **shape_kw, **kwargs)
            # (train.dtype, whatever torch's default dtype: a float64 session's float32 run is
            # float32; a resumed run then takes its checkpoint's, runner._in_recorded_dtype)
            inner = inner.to(dtype)
    except ImportError as e:
        raise WorkbenchError(f"model {name!r} is not available here: {e}") from None
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"cannot build {name!r}: {' '.join(str(e).split())}") from None
    why = unsaveable_config(getattr(inner, "config", None))
    if why is not None:  # (the run records it, and its model.ff: refused before training)
        raise WorkbenchError(f"cannot build {name!r}: {why}")
    event_shape = tuple(ds.shape) if layout == "image" else (math.prod(ds.shape),)
    _check_objective(name, inner, cfg["train"]["objective"], ds)
    _check_angles(name, inner, ds, new_run=stored is None)
    flow = inner
    # resuming, the checkpoint holds the whitening (a run from before data.whiten has none)
    if stored is not None:
        whitening = {} if stored.get("whiten") else None
    elif kwargs.get("adjacency") is not None:  # a graph on the columns: none mixes them first
        if ds.info.get("whiten") is True:
            raise WorkbenchError(
                "model.adjacency is a graph on the data's columns, and data.whiten: true mixes "
                "the columns before the model sees them; set data.whiten: false (a structured "
                "model is never whitened automatically)"
            )
        whitening = None
    else:
        whitening = data_whitening(ds)
    if whitening is not None:
        loc, factor = (
            torch.tensor(whitening[k], dtype=dtype) if k in whitening else None
            for k in ("loc", "factor")
        )
        flow = models.whitened(inner, loc, factor)
    elif ds.stats is not None:
        flow = standardized(inner, ds.stats, event_shape, dtype)
    bounds, integers = ds.info.get("bounds"), ds.info.get("integers")
    if bounds:  # first of all: the bounds' logs and logits, then the standardisation
        wide = model_bounds(bounds, integers or ())
        flow = models.bounded(flow, wide["lower"], wide["upper"])
    if integers:  # uniform noise on those columns, before everything else
        ranges = bounds or {"lower": [None] * event_shape[0], "upper": [None] * event_shape[0]}
        lower, upper = ([ranges[k][j] for j in integers] for k in ("lower", "upper"))
        flow = models.integer_columns(flow, integers, lower, upper)
    context = ds.context_info
    if context is not None and context["kind"] == "columns":
        # the model takes the raw context columns, as it takes the raw data
        saved = flow.config
        flow = models.context_standardized(flow, **context["stats"])
        if _legacy_context(stored):  # resumed from before: the files keep its identity
            flow.config = saved
    flow = flow.to(dtype)  # (the layers the data's preprocessing added)
    resolved = {
        "layout": layout,
        "event_shape": list(event_shape),
        "data_shape": list(ds.shape),
        "levels": ds.levels,
        "kind": ds.kind,
        "stats": ds.stats,
        "builder_kwargs": {**shape_kw, **kwargs},
        "flow_config": flow.config,
        "parameters": sum(p.numel() for p in inner.parameters()),
        "examples": {k: int(ds.split(k).shape[0]) for k in ("train", "val", "test")},
    }
    if not legacy:
        resolved["sizing"] = sizing
    if own:  # a replay of the recorded model: this flowforge must build that model
        _check_replayed(before, flow.config, recorded.get("parameters"), resolved["parameters"])
    if ds.context_info is not None:
        resolved["context"] = ds.context_info
    if ds.info.get("columns"):
        resolved["columns"] = ds.info["columns"]
    if bounds:
        resolved["bounds"] = bounds
    if integers:
        resolved["integers"] = list(integers)
    if whitening is not None:
        resolved["whiten"] = True
    if ds.info.get("context_columns"):  # a conditional table: its context columns' names
        resolved["context_column_names"] = ds.info["context_columns"]
    if ds.info.get("warnings"):  # what the data checks found: eval and report repeat it
        resolved["data_warnings"] = list(ds.info["warnings"])
    if ds.kind == "table" and ds.levels is None and len(ds.shape) == 1 and len(ds.train):
        # each column's training range: `flowforge sample` says how much falls outside it
        t = ds.train.reshape(len(ds.train), -1)
        lows, highs = t.min(0).values.tolist(), t.max(0).values.tolist()
        resolved["ranges"] = [[float(a), float(b)] for a, b in zip(lows, highs)]
        if integers:  # the values few-valued integer columns hold: sample names new ones
            seen = {}
            for j in integers:
                values = torch.unique(t[:, j])
                if len(values) <= FEW_LEVELS:
                    seen[str(j)] = [float(v) for v in values.tolist()]
            if seen:
                resolved["integer_values"] = seen
        # whole-numbered columns left continuous (not declared, and too many values for the
        # integer-columns warning): `flowforge sample` says its values there are not whole.
        # (Above 2^24 every float32 is whole: such a column's own values cannot tell.)
        whole = [
            j
            for j in range(t.shape[1])
            if j not in (integers or ())
            and float(t[:, j].abs().max()) < 2**24
            and bool((t[:, j] == t[:, j].round()).all())
            and not discrete_column(len(t), len(torch.unique(t[:, j])))
        ]
        if whole:
            resolved["whole_columns"] = whole
    return flow, inner, resolved


def _build_bytes() -> int:
    """What building a model may allocate: half the machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf: 8 GiB
        return 1 << 33


def _check_angles(name: str, model, ds: Dataset, new_run: bool = False) -> None:
    """A flow on the torus (uniform base on ``[-pi, pi)^D``) models angles, a flow on the
    sphere unit vectors: refuse data that is not, before anything is written (it would train
    and print an NLL on another space, or stop at its first step)."""
    from ..transforms.manifolds import SphereToCylinder, UniformTorus

    torus = isinstance(getattr(model, "base", None), UniformTorus)
    sphere = any(isinstance(m, SphereToCylinder) for m in model.modules())
    if not (torus or sphere):
        if new_run and getattr(model, "objectives", None) is None:  # (an M-flow learns one)
            _check_not_on_sphere(name, ds)
            _note_angle_columns(name, ds)
        return
    what = "angles in [-pi, pi]" if torus else "unit vectors in R^3"
    if torus and ds.density_measure != "lebesgue":
        raise WorkbenchError(
            f"model {name!r} models {what}; {ds.name} holds points on a {ds.density_measure}, "
            "not angles"
        )
    if ds.stats is not None:
        raise WorkbenchError(
            f"model {name!r} models {what}, which must not be standardised: set the data option "
            "standardize: false"
        )
    for option, does in (("bounds", "logits of the bounded columns"),
                         ("integers", "dequantization noise on the integer columns")):  # fmt: skip
        if ds.info.get(option):
            raise WorkbenchError(
                f"model {name!r} models {what}, and data.{option} would give it {does} "
                f"instead; drop data.{option}"
            )
    for k in ("train", "val", "test"):
        check_manifold_data(name, model, ds.split(k), ds.name, ds.info.get("columns"))


def _note_angle_columns(name: str, ds: Dataset) -> None:
    """A note (the data's warnings, which eval and report repeat) for columns that look like
    angles in radians, filling ``[-pi, pi]`` or ``[0, 2 pi]``: a density on the real line puts
    -pi and pi far apart, where they are one direction."""
    if ds.kind != "table" or ds.levels is not None or not len(ds.train):
        return
    x = ds.train.reshape(len(ds.train), -1)  # (compared as it is: no float64 copy)
    lows, highs = x.min(0).values.double(), x.max(0).values.double()
    centred = (lows >= -math.pi - 1e-5) & (highs <= math.pi + 1e-5)
    from_zero = (lows >= 0) & (highs <= 2 * math.pi + 1e-5)
    full = (highs - lows >= 0.98 * 2 * math.pi) & (centred | from_zero)
    # and values near both ends, as angles across the seam have (a normal column of a few
    # hundred rows spans [-3.1, 3.1] too, with 0.4% of its values beyond 2.64 on each side)
    lo_end = torch.where(centred, -math.pi, 0.0)
    hi_end = lo_end + 2 * math.pi
    near = 0.5
    share_lo = (x < (lo_end + near).to(x)).sum(0) / len(x)
    share_hi = (x > (hi_end - near).to(x)).sum(0) / len(x)
    full &= (share_lo >= 0.01) & (share_hi >= 0.01)
    cols = full.nonzero().flatten().tolist()
    if not cols:
        return
    names = ds.info.get("columns")
    said = ", ".join(repr(names[j]) if names else f"column {j}" for j in cols[:5])
    ds.info.setdefault("warnings", []).append(
        f"column(s) {said} fill [-pi, pi] (or [0, 2 pi]): if they are angles in radians, "
        f"model {name!r} puts -pi and pi far apart, where they are one direction; --model "
        "torusflow models angles on the circle (every column an angle, in [-pi, pi])"
    )


def _check_not_on_sphere(name: str, ds: Dataset) -> None:
    """A density on ``R^D`` of rows that all have one norm (unit vectors, directions) is
    degenerate: they lie on a sphere, a surface of no volume, and the likelihood grows without
    bound as training goes on (as for a constant column). Refused for a new run of a table
    (integer columns, dequantized, are not on a surface)."""
    x = ds.train.reshape(len(ds.train), -1)
    if ds.density_measure == "sphere":  # (a registry dataset on the sphere: known, not sought)
        radius = 1.0
    elif ds.kind != "table" or ds.levels is not None or ds.info.get("integers"):
        return
    else:
        radius = common_norm(x)
    if radius is None:
        return
    d = x.shape[1]
    shape = "circle" if d == 2 else "sphere"
    raise WorkbenchError(
        f"{ds.name}: every training row has the same norm ({radius:.6g}; they vary by less "
        f"than {COMMON_NORM_TOL:.0%} of the data's spread): the points lie on a {shape}, where "
        f"model {name!r} (a density on R^{d}) is degenerate: its NLL falls without bound as it "
        "trains; "
        + _SPHERE_HINT.get(d, "model the vectors before they were normalised")
        + " (a sphere of another radius: divide the rows by it first)"
    )


def check_manifold_data(
    name: str, model, x: torch.Tensor, where: str, columns: list[str] | None = None
) -> None:
    """``WorkbenchError`` unless the rows ``x`` lie where ``model`` has its density: angles in
    ``[-pi, pi]`` for a flow on the torus, unit vectors for a flow on the sphere (``where``
    names the data in the message, ``columns`` its columns)."""
    from ..transforms.manifolds import NORM_TOL, SphereToCylinder, UniformTorus

    if not len(x):
        return
    if isinstance(getattr(model, "base", None), UniformTorus):
        _check_torus_columns(name, x.reshape(len(x), -1), where, columns)
    if any(isinstance(m, SphereToCylinder) for m in model.modules()):
        norms = x.reshape(len(x), -1).norm(dim=1)
        lo, hi = norms.min().item(), norms.max().item()
        if not (1 - NORM_TOL <= lo and hi <= 1 + NORM_TOL):
            raise WorkbenchError(
                f"model {name!r} models unit vectors in R^3; {where} has rows of norm in "
                f"[{lo:.6g}, {hi:.6g}] (norm 1 to {NORM_TOL:g} is expected: divide each row by "
                "its norm first)"
            )


def _check_torus_columns(name: str, x: torch.Tensor, where: str, columns) -> None:
    """A flow on the torus takes every column as an angle in ``[-pi, pi]`` (radians): each
    column outside it is named with its range and what it looks like (degrees, ``[0, 2 pi)``,
    pi rounded up in a printout, not an angle at all); rows of one norm are refused as points
    on a sphere (or circle), which are not angles either."""
    pi = torch.tensor(math.pi, dtype=x.dtype).item()  # (float32's pi lies above math.pi)
    lows, highs = x.min(0).values.tolist(), x.max(0).values.tolist()
    bad = [j for j, (lo, hi) in enumerate(zip(lows, highs)) if lo < -pi or hi > pi]
    if bad:
        names = [repr(columns[j]) if columns else f"column {j}" for j in bad]
        each = ", ".join(f"{n} [{lows[j]:.9g}, {highs[j]:.9g}]" for n, j in zip(names, bad))
        over = [max(highs[j], -lows[j]) for j in bad]
        if max(over) - math.pi < 1e-5:
            why = (
                "pi rounded up when the file was written: clip to [-pi, pi], e.g. "
                "numpy.clip(x, -numpy.pi, numpy.pi); -pi and pi are the same angle"
            )
        elif all(lows[j] >= 0 and highs[j] <= 2 * math.pi + 1e-5 for j in bad):
            why = "angles in [0, 2 pi)? wrap them: (x + pi) % (2 pi) - pi"
        elif (
            len(bad) == x.shape[1]
            and all(2 * math.pi < o <= 360 + 1e-3 for o in over)
            and max(over) > 4 * math.pi
        ):
            why = "degrees? numpy.deg2rad(x), then wrap: (x + pi) % (2 pi) - pi"
        else:
            why = (
                "radians wrapped to [-pi, pi) are expected: (x + pi) % (2 pi) - pi; a column "
                "that is not an angle, such as a speed or a height, has no model here: flows on "
                "angles together with columns on the real line are not in flowforge"
            )
        raise WorkbenchError(
            f"model {name!r} models every column as an angle in [-pi, pi] (radians); {where} "
            f"has values outside it in {each} ({why})"
        )
    if x.shape[1] > 1 and (radius := common_norm(x)) is not None:
        raise WorkbenchError(
            f"model {name!r} models angles, and every row of {where} has the same norm "
            f"({radius:.6g}): points on a {'circle' if x.shape[1] == 2 else 'sphere'}, not "
            "angles; " + _SPHERE_HINT[min(x.shape[1], 3)]
        )


_SPHERE_HINT = {
    2: "for points (x, y) on a circle, model the angle numpy.arctan2(y, x) with torusflow",
    3: "for unit vectors in R^3 use --model sphereflow",
}
COMMON_NORM_TOL = 0.02  # rows whose norms vary by less than this share of the data's spread
COMMON_NORM_ROWS = 10  # fewer rows say nothing
SHELL_TOL = 2e-3  # ... and by less than this share of their radius (a CSV's 3 decimals)


def common_norm(x: torch.Tensor) -> float | None:
    """The norm every row of ``x`` has, where at least :data:`COMMON_NORM_ROWS` rows of two or
    more columns lie on one sphere about the origin: their norms vary by at most
    :data:`COMMON_NORM_TOL` of the data's own spread (the norm of its columns' standard
    deviations), so that a table far from the origin (GPS positions in one city, timestamps),
    whose norms vary as little compared with their size, is not taken for one; None
    otherwise. No copy of ``x`` is made (its norms only)."""
    if x.dim() != 2 or x.shape[1] < 2 or len(x) < COMMON_NORM_ROWS:
        return None
    norms = torch.linalg.vector_norm(x, dim=1).double()
    mid = norms.median().item()
    scale = x.std(0).double().norm().item()
    if not (math.isfinite(mid) and mid > 0 and math.isfinite(scale) and scale > 0):
        return None
    spread = (norms - mid).abs().max().item()
    # and thin against the radius too: a shell of 0.3% radial noise is a density's support
    return mid if spread <= COMMON_NORM_TOL * scale and spread <= SHELL_TOL * mid else None


def _check_objective(name: str, model, objective: str, ds: Dataset) -> None:
    """A model that trains with its own objectives only (an M-flow: ``model.objectives``) gets
    one of them, on data that is not standardised; the other models never get those."""
    own = getattr(model, "objectives", None)
    if own is None:
        if objective in models.MFlow.objectives:
            raise WorkbenchError(f"train.objective {objective!r} trains M-flows (model mflow)")
        return
    if objective not in own:
        raise WorkbenchError(
            f"model {name!r} trains with train.objective {' or '.join(own)}, not "
            f"{objective!r} (--set train.objective={own[0]})"
        )
    if ds.stats is not None:
        raise WorkbenchError(
            f"model {name!r} models the data on its own scale: set the data option "
            "standardize: false"
        )


_ABSENT = object()


def _check_replayed(before: dict, now: dict, then_params, now_params: int) -> None:
    """A replayed run's model as this flowforge builds it from the recorded arguments must be
    the recorded one: the builder's arguments and its parameter count (the layers in front,
    standardisation, bounds, whitening, follow the data options, which a copied config may
    change on purpose)."""
    inner = ("model", "kwargs")
    same = same_model({k: before.get(k) for k in inner}, {k: now.get(k) for k in inner})
    if same and then_params in (None, now_params):
        return
    what = (
        f"{now_params:,} parameters, not the run's {then_params:,}"
        if isinstance(then_params, int) and then_params != now_params
        else "other builder arguments than the run's"
    )
    raise WorkbenchError(
        f"cannot replay the run this config records: this flowforge builds another model from "
        f"the arguments it recorded ({what}){_predates(before)}; replay it with the flowforge it "
        "was trained with (resolved.environment), or train a new run from these options (remove "
        "the config's resolved section)"
    )


def same_model(before: dict | None, now: dict | None) -> bool:
    """Whether a stored ``flow_config`` and a rebuilt one describe the same model (a stored one
    from before an argument existed counts that argument at its legacy value). A stored one
    of flowforge/1 (:func:`format1_config`) is compared as loading reads it: upgraded
    (``io._upgrade_format1``), and both completed with the builder's defaults, since it lists
    only the arguments given and a rebuilt one lists them all."""
    if before == now:
        return True
    if not isinstance(before, dict) or not isinstance(now, dict):
        return False
    if not before or not now or not isinstance(before.get("kwargs"), dict):
        return False
    old = format1_config(before)
    if old:
        from ..io import _upgrade_format1

        before = _upgrade_format1(before, {})[0]
    kwargs = models.registry.saved_kwargs(before["model"], before["kwargs"])
    if {**before, "kwargs": kwargs} == now:
        return True
    if not old or not isinstance(now.get("kwargs"), dict) or now.get("model") != before["model"]:
        return False
    params = models.spec(before["model"]).signature.parameters.values()
    defaults = models.registry._jsonable(
        {p.name: p.default for p in params if p.default is not p.empty}
    )
    theirs = models.registry.saved_kwargs(now["model"], now["kwargs"])
    return {**before, "kwargs": {**defaults, **kwargs}} == {
        **now,
        "kwargs": {**defaults, **theirs},
    }


def _predates(flow_config) -> str:
    """Where a stored ``flow_config`` is of flowforge/1, the words that say so."""
    if isinstance(flow_config, dict) and format1_config(flow_config):
        return (
            " (the run predates flowforge/2, 2026-12-01, and its config lists only the arguments"
            " given)"
        )
    return ""


def rebuild_refusal(run, flow_config) -> str:
    """Why a run cannot be resumed when this flowforge builds another model from its recorded
    arguments, and the ways forward."""
    return (
        f"cannot resume {run}: the model builder now gives a different model"
        f"{_predates(flow_config)}; finish it with the flowforge it was trained with "
        f"(resolved.environment), or start a new run from its model: flowforge train "
        f"--init-from {shell_word(run)} --out NEW_RUN --epochs N"
    )


def format1_config(config: dict) -> bool:
    """Whether a stored ``flow_config`` was written by flowforge/1 (before 2026-12-01), which
    recorded only the arguments given: it has a top-level ``standardize``, or lacks the data
    options that every flowforge/2 configuration of such a builder lists."""
    if "standardize" in config:
        return True
    try:
        spec = models.spec(str(config.get("model")))
    except ValueError:
        return False
    return spec.data and not {"preprocess", "alpha", "base"} <= set(config.get("kwargs") or {})


def _legacy_context(stored: dict | None) -> bool:
    """Whether a resumed run is a column-conditional one from before its model standardised
    its contexts (its stored model has no ``context_standardize`` layer): its config keeps the
    model's identity as it was, and :func:`~flowforge.workbench.runs.load_run` gives the
    saved model the layer from the run's statistics."""
    before = (stored or {}).get("flow_config")
    if not isinstance(before, dict) or (stored or {}).get("context", {}).get("kind") != "columns":
        return False
    return not has_context_map(before)


def has_context_map(flow_config: dict | None) -> bool:
    """Whether a flow's saved config standardises its contexts."""
    prefix = (flow_config or {}).get("prefix") or []
    return any(isinstance(p, dict) and "context_standardize" in p for p in prefix)


def describe(cfg: dict, resolved: dict, ds: Dataset, world: int = 1) -> str:
    """The one line a run prints when it starts."""
    shape = resolved["event_shape"]
    return (
        f"model {cfg['model']['name']} ({resolved['layout']} {'x'.join(map(str, shape))}"
        f"{', levels=' + str(ds.levels) if ds.levels else ''}): "
        f"{resolved['parameters']:,} parameters"
        f"{' in float64' if cfg['train'].get('dtype') == 'float64' else ''}; data {ds.name}: "
        f"{resolved['examples']['train']} train / {resolved['examples']['val']} val"
        f"{_context_note(resolved)}"
        f"{'; ' + str(world) + ' processes' if world > 1 else ''}"
        + (f"\n{_sizing_note(resolved.get('sizing'))}" if resolved.get("sizing") else "")
        + (f"\n{_bounds_note(resolved)}" if resolved.get("bounds") else "")
        + (f"\n{_integers_note(resolved)}" if resolved.get("integers") else "")
        + (
            f"\n{_whiten_note(resolved)}"
            if resolved.get("whiten") and not resolved.get("init_from")  # (it starts from a run)
            else ""
        )
    )


def _whiten_note(resolved: dict) -> str:
    n, d = resolved["examples"]["train"], resolved["event_shape"][0]
    return (
        f"whitened (data.whiten; {n} training rows for {d} columns): the model starts as the "
        "Gaussian with the training split's shrunk (Ledoit-Wolf) covariance"
    )


def _integers_note(resolved: dict) -> str:
    names = resolved.get("columns")
    cols = [visible(names[j]) if names else str(j) for j in resolved["integers"]]
    return (
        f"integer columns (data.integers): {', '.join(cols)}; dequantized, so the NLL is a bound "
        "on the likelihood of the integers and the other columns together"
    )


def _bounds_note(resolved: dict) -> str:
    b = resolved["bounds"]
    names = resolved.get("columns") or [f"column {i}" for i in range(len(b["lower"]))]
    said = describe_bounds(b, names, resolved.get("integers") or ())
    return f"bounded columns (data.bounds): {said}; samples stay inside"
