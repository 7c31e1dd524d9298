r"""Run configuration: defaults, reading config files, merging layers, and checking every value.

A config has five sections: ``seed``, ``model`` (a builder name and its arguments), ``data``
(a dataset name or path and its options), ``layout`` (``auto``, ``vector`` or ``image``) and
``train`` (:data:`DEFAULT_TRAIN`), and optionally ``init_from`` (a run folder whose best model
the new run starts from: :mod:`.warm_start`). Files, ``--config``, flags and ``--set`` are
merged in that order; :func:`resolve_config` checks every value's type and range *before*
anything is written, and names the key when one is wrong.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from .. import models
from .._util import suggest
from ..models.registry import plain_numbers as plain
from .catalog import OBJECTIVES
from .errors import WorkbenchError, in_memory_data, shown

__all__ = [
    "DEFAULT_TRAIN",
    "OBJECTIVES",
    "read_config",
    "merge_config",
    "resolve_config",
    "user_part",
    "config_diff",
    "deep_merge",
    "checked",
    "TRAIN_CHECKS",
    "model_lr",
]

DEFAULT_TRAIN: dict = {
    "objective": "nll",  # nll (maximum likelihood), flow-matching[-ot|-vp] (a CNF)
    "epochs": 50,
    "batch_size": 64,
    "eval_batch_size": 1024,
    "optimizer": "adamw",  # adam | adamw | adamax
    "lr": 1e-3,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "schedule": "cosine",  # after the warm-up: cosine decay to min_lr_ratio * lr, or constant
    "warmup_steps": "auto",  # linear warm-up steps; auto: 100, or a tenth of a shorter run
    "min_lr_ratio": 0.0,
    "grad_clip": 10.0,  # max global gradient norm; 0 disables clipping
    "patience": 20,  # epochs without a better validation NLL before stopping; 0 disables
    "halve_after": 0,  # halve the learning rate after this many epochs without one; 0 disables
    "ema": 0.0,  # decay of an exponential moving average of the weights (evaluated, saved); 0: off
    "init_batch": 0,  # examples for a data-dependent initialisation (ActNorm); 0: one batch
    "val_samples": 1,  # draws averaged in each validation NLL (one where the score is exact)
    "memory_saving": False,  # recompute activations from outputs (flowforge.memory_saving)
    "compile": False,  # torch.compile the training step (eager if compiling fails);
    # "splines": only the rational-quadratic splines (seconds to compile, not minutes)
    "log_every": 10,  # steps between 'step' records in metrics.jsonl (0: none)
    "device": "cpu",  # cpu | cuda | cuda:N | auto
    "tensorboard": True,  # used only if tensorboard is installed
    "manifold_epochs": 0,  # M-flow objectives: epochs of the first phase; 0: half the epochs
    "fm_time_power": 1.0,  # flow matching: path times s = u ** p (1: uniform; > 1: nearer data)
    "dtype": "float32",  # the model's precision, and the data's as read: float32 | float64
}
TOP_KEYS = ("seed", "model", "data", "layout", "train", "init_from")
# the top-level keys a config may leave out (a resolved config has them only when set)
OPTIONAL_KEYS = ("init_from",)
# names other libraries give to a train option, and the option they are here
TRAIN_ALIASES = {
    "learning_rate": "lr",
    "learningrate": "lr",
    "epoch": "epochs",
    "n_epochs": "epochs",
    "num_epochs": "epochs",
    "max_epochs": "epochs",
    "batch": "batch_size",
    "batchsize": "batch_size",
    "clip": "grad_clip",
    "gradient_clip": "grad_clip",
    "clip_grad_norm": "grad_clip",
    "scheduler": "schedule",
    "warmup": "warmup_steps",
    "early_stopping": "patience",
}


def train_key_hint(key: str, prefix: str = "") -> str:
    """``"; did you mean X?"`` for a mistyped train option ``key`` (an alias another library
    uses, or a close match), each name given with ``prefix`` (``"train."`` for a top-level
    key); ``""`` if none is close."""
    key = str(key)
    name = next((k for k in (key, key.lower()) if k in DEFAULT_TRAIN), None)  # (LR: lr)
    name = name or TRAIN_ALIASES.get(key.lower())
    if name is not None:
        return f"; did you mean {prefix}{name}?"
    close = suggest(key.lower(), DEFAULT_TRAIN, 1, 0.6)
    return close.replace("did you mean ", f"did you mean {prefix}") if close else ""


LAYOUTS = ("auto", "vector", "image")
OPTIMIZERS = ("adam", "adamw", "adamax")
SCHEDULES = ("cosine", "constant")


# -- reading -------------------------------------------------------------------------------------


def _yaml_load(text: str):
    """YAML without alias expansion: a document of nested aliases (a 'billion laughs') could
    expand to gigabytes; configs never need aliases, so they are refused. Numbers in exponent
    notation without a dot (``1e-3``, ``4e0``) are floats, as in YAML 1.2 and JSON (PyYAML's
    YAML 1.1 reads them as strings)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:  # a key given twice: the first would be dropped
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str) and key in seen:
                    raise yaml.YAMLError(
                        f"the key {key!r} is given twice (again at line "
                        f"{key_node.start_mark.line + 1})"
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(
                    f"aliases (*name) are not allowed in flowforge configs (at line "
                    f"{event.start_mark.line + 1})"
                )
            return super().compose_node(parent, index)

    def construct_int(loader, node):  # YAML 1.2's integers: 010 is 10, not octal 8
        text = loader.construct_scalar(node)
        digits = text.replace("_", "")
        if ":" in digits:  # YAML 1.1's base 60 (1:01 was 61): a string, refused where a
            return text  # number is wanted
        sign, digits = (-1, digits[1:]) if digits[:1] == "-" else (1, digits.lstrip("+"))
        for prefix, base in (("0x", 16), ("0o", 8), ("0b", 2)):
            if digits.lower().startswith(prefix):
                return sign * int(digits[2:], base)
        return sign * int(digits, 10)

    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)

    def construct_float(loader, node):  # YAML 1.1's base 60 (1:30.5 was 90.5): a string
        text = loader.construct_scalar(node)
        if ":" in text:
            return text
        return yaml.SafeLoader.construct_yaml_float(loader, node)

    Loader.add_constructor("tag:yaml.org,2002:float", construct_float)
    Loader.add_implicit_resolver(  # copies the resolvers for this class; SafeLoader is unchanged
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:  # its text names "<unicode string>" and draws carets
        raise yaml.YAMLError(_yaml_words(e)) from None


def _yaml_words(e) -> str:
    """A YAML syntax error as one line: where (line and column, from 1) and what, with the
    construct it was inside (``line 2, column 1: expected the node content, but found
    '<stream end>' (while parsing a flow node)``)."""
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = e.problem or "not valid YAML"
    for end in ("'<stream end>'", "<stream end>"):
        problem = problem.replace(end, "the end of the text")
    return where + problem + (f" ({e.context})" if e.context else "")


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are each given once (json keeps the last silently)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} is given twice")
        out[k] = v
    return out


MAX_CONFIG_BYTES = 1 << 20


def read_config(path: str | os.PathLike) -> dict:
    """Read a YAML, TOML or JSON config file (at most 1 MiB) into a dict."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise WorkbenchError(f"config {path} is not a regular file (a folder, pipe or device)")
    if not path.is_file():
        raise WorkbenchError(f"no such config file: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise WorkbenchError(f"{path} is larger than {MAX_CONFIG_BYTES:,} bytes; not a config")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")  # (a byte-order mark, as editors write)
        if suffix in (".yaml", ".yml"):
            data = _yaml_load(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_keys)
        else:
            raise WorkbenchError(f"{path}: expected a .yaml, .yml, .toml or .json config file")
    except (WorkbenchError, ModuleNotFoundError):  # (a missing parser is no broken file)
        raise
    except Exception as e:  # the parsers' own error types, UnicodeDecodeError
        msg = " ".join(str(e).split())
        raise WorkbenchError(f"cannot parse config {path}: {msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: expected a mapping at the top level")
    return data


# -- merging -------------------------------------------------------------------------------------


def deep_merge(a, b, key=None):
    """``b`` over ``a``, mappings merged key by key; ``model: NAME`` (or ``data: NAME``) under
    a mapping of arguments keeps them (``{"name": NAME, **arguments}``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = deep_merge(a[k], v, k if key is None else None) if k in a else v
        return out
    if key in NAMED_SECTIONS and isinstance(a, dict) and isinstance(b, str):
        return {**a, "name": b}
    if key in NAMED_SECTIONS and isinstance(a, str) and isinstance(b, dict) and "name" not in b:
        return {"name": a, **b}
    return b


NAMED_SECTIONS = ("model", "data")  # the top-level sections that a name alone can stand for


def unquoted_name(key: str, value) -> str | None:
    """What to say of a name (a data file's, a run folder's) that a YAML config or ``--set``
    typed as something else: ``2024-01-01`` read as a date, ``on`` or ``no`` as a boolean,
    ``2019`` or ``0x10`` as a number. None for any other value."""
    import datetime

    if isinstance(value, bool):
        read = f"the boolean {value} (YAML reads on/off, yes/no and true/false so)"
    elif isinstance(value, (int, float, datetime.date)):
        read = f"the {'date' if isinstance(value, datetime.date) else 'number'} {value}"
    else:
        return None
    return (
        f"config {key} was read as {read}, not as a name; if it names a file or folder, "
        f"quote it in the config ({key.split('.')[0]}: '...') or give it on the command line"
    )


def flat_sections(layer: dict) -> dict:
    """A config layer with ``model.kwargs`` and ``data.options`` lifted into ``model`` and
    ``data`` (the form a run's config.json has), so that the flags merged over it, which write
    ``model.X`` and ``data.X``, override the same keys rather than stand beside them."""
    if not isinstance(layer, dict):
        return layer
    out = dict(layer)
    for what, extra in (("model", "kwargs"), ("data", "options")):
        value = out.get(what)
        if isinstance(value, dict) and isinstance(value.get(extra), dict):
            name, kwargs = _section(value, what)  # (refuses a key given both ways)
            out[what] = {**({"name": name} if name is not None else {}), **kwargs}
    return out


def _section(value, what: str) -> tuple[str | None, dict]:
    """``model: realnvp`` or ``model: {name: realnvp, layers: 4}`` -> (name, kwargs)."""
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value, {}
    if what == "data" and isinstance(value, os.PathLike):
        return os.fspath(value), {}
    if not isinstance(value, dict):
        if what == "data":
            raise WorkbenchError(unquoted_name("data", value) or f"config {in_memory_data(value)}")
        raise WorkbenchError(f"config '{what}' must be a name or a mapping, got {shown(value)}")
    value = dict(value)
    name = value.pop("name", None)
    if what == "data" and isinstance(name, os.PathLike):
        name = os.fspath(name)
    if name is not None and not isinstance(name, str):
        if what == "data":
            said = unquoted_name("data.name", name)
            raise WorkbenchError(said or f"config {in_memory_data(name)} (data.name)")
        raise WorkbenchError(f"config '{what}.name' must be a string, got {shown(name)}")
    extra = "kwargs" if what == "model" else "options"
    nested = value.pop(extra, None) or {}
    if not isinstance(nested, dict):
        raise WorkbenchError(f"config '{what}.{extra}' must be a mapping")
    for k in nested.keys() & value.keys():  # one of the two would win without a word
        if nested[k] != value[k]:
            raise WorkbenchError(
                f"config '{what}' gives {k!r} twice, {what}.{k} = {value[k]!r} and "
                f"{what}.{extra}.{k} = {nested[k]!r}: give one of them"
            )
    return name, {**value, **nested}


def merge_config(base: dict | None, override: dict | None) -> dict:
    """Normalise and merge raw config dicts (``override`` wins, sections merge key by key)."""
    out = {
        "seed": 0,
        "model": {"name": None, "kwargs": {}},
        "data": {"name": None, "seed": 0, "options": {}},
        "layout": "auto",
        "train": dict(DEFAULT_TRAIN),
    }
    for raw in (base or {}, override or {}):
        for key in raw:
            if key not in TOP_KEYS and key not in ("format", "resolved"):
                hint = suggest(key, TOP_KEYS, 1, 0.6) or train_key_hint(key, "train.")
                raise WorkbenchError(
                    f"unknown config key {key!r}{hint} (the keys: {', '.join(TOP_KEYS)}; "
                    "training options go under train)"
                )
        for key in ("seed", "layout"):  # (an empty --set seed= is no default)
            if key in raw and raw[key] is None:
                raise WorkbenchError(
                    f"config {key!r} is empty (null); give it a value or leave the key out"
                )
        if "seed" in raw:
            out["seed"] = raw["seed"]
        if raw.get("init_from") is not None:  # (null: none, as when the key is left out)
            out["init_from"] = raw["init_from"]
        if "layout" in raw:
            out["layout"] = raw["layout"]
        name, kwargs = _section(raw.get("model"), "model")
        if name is not None:
            out["model"]["name"] = name
        out["model"]["kwargs"].update(kwargs)
        name, options = _section(raw.get("data"), "data")
        if name is not None:
            out["data"]["name"] = str(name)
        if "seed" in options:
            out["data"]["seed"] = options.pop("seed")
        for k, v in options.items():  # a mapping option (bounds) merges column by column
            had = out["data"]["options"].get(k)
            out["data"]["options"][k] = (
                {**had, **v} if isinstance(had, dict) and isinstance(v, dict) else v
            )
        tr = raw.get("train", {})
        if tr is None:  # (a train: section whose options are all commented out)
            tr = {}
        if not isinstance(tr, dict):
            raise WorkbenchError(
                f"config 'train' must be a mapping of options (train.lr=..., train.epochs=...), "
                f"got {shown(tr)}"
            )
        for k, v in tr.items():
            if k not in DEFAULT_TRAIN:
                raise WorkbenchError(
                    f"unknown train option {k!r}"
                    + (train_key_hint(k) or f" (the train options: {', '.join(DEFAULT_TRAIN)})")
                )
            out["train"][k] = v
    return out


# -- checking ------------------------------------------------------------------------------------


SEED_MAX = 2**32 - 1  # numpy's seeds; every command's seeds are in [0, SEED_MAX]


def _int(lo: int, hi: float = math.inf) -> Callable:
    def check(v):
        v = plain(v)  # (np.int64 from np.arange: an integer; a bool is not one)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            rng = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi}]"
            raise ValueError(f"an integer {rng}")
        return v

    return check


def _auto_or(check: Callable) -> Callable:
    """``"auto"`` (the trainer decides), or a value ``check`` accepts."""

    def either(v):
        if v == "auto":
            return v
        try:
            return check(v)
        except ValueError as e:
            raise ValueError(f"'auto' or {e}") from None

    return either


def _float(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    def check(v):
        v = plain(v)  # (np.float32, np.int64: numbers)
        if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                v = float(v)
            except ValueError:
                v = None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            v = None
        ok = v is not None and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
        if not ok:
            a = "(" if lo_open else "["
            b = ")" if hi_open or hi == math.inf else "]"
            raise ValueError(f"a finite number in {a}{lo:g}, {hi:g}{b}")
        return float(v)

    return check


def _choice(*choices) -> Callable:
    def check(v):
        if v not in choices:
            raise ValueError(f"one of {', '.join(map(str, choices))}")
        return v

    return check


def _bool(v):
    v = plain(v)
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _compile(v):
    if v is True or v is False or v == "splines":
        return v
    raise ValueError("true, false or splines")


def _betas(v):
    b = _float(0.0, 1.0, hi_open=True)
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError("two numbers in [0, 1), e.g. [0.9, 0.999]")
    try:
        return [b(x) for x in v]
    except ValueError:
        raise ValueError("two numbers in [0, 1), e.g. [0.9, 0.999]") from None


def _device(v):
    import re

    if not isinstance(v, str) or not (  # (ASCII digits, no leading zero: cuda:00 is no device)
        v in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:(0|[1-9][0-9]{0,3})", v)
    ):
        raise ValueError("cpu, cuda, cuda:N or auto")
    return v


MAX_SAMPLES = 10_000  # draws one evaluation averages (IWAE's bounds use up to 5,000)

TRAIN_CHECKS: dict[str, Callable] = {
    "objective": lambda v: _choice(*OBJECTIVES)(v),
    "epochs": _int(1),
    "batch_size": _int(1),
    "eval_batch_size": _int(1),
    "optimizer": _choice(*OPTIMIZERS),
    "lr": _float(0.0, lo_open=True),
    "weight_decay": _float(0.0),
    "betas": _betas,
    "schedule": _choice(*SCHEDULES),
    "warmup_steps": _auto_or(_int(0)),
    "min_lr_ratio": _float(0.0, 1.0),
    "grad_clip": _float(0.0),
    "patience": _int(0),
    "halve_after": _int(0),
    "ema": _float(0.0, 1.0, hi_open=True),
    "init_batch": _int(0),
    "val_samples": _int(1, MAX_SAMPLES),  # (as eval's --samples)
    "memory_saving": _bool,
    "compile": _compile,
    "log_every": _int(0),
    "device": _device,
    "tensorboard": _bool,
    "manifold_epochs": _int(0),
    "fm_time_power": _float(0.0, 10.0, lo_open=True),  # u ** 10: 90% of times below 0.35
    "dtype": _choice("float32", "float64"),
}


def checked(key: str, value, check: Callable):
    try:
        return check(value)
    except ValueError as e:
        raise WorkbenchError(f"{key} must be {e}, got {shown(value)}") from None


MANIFOLD_MODELS = ("torusflow", "sphereflow")  # flows on a manifold: data as it is


def resolve_config(*layers: dict | None) -> dict:
    """Merge config layers (later ones win) and check every value; returns plain JSON types."""
    cfg = None
    for layer in layers:
        cfg = merge_config(cfg, layer)
    cfg = plain(cfg or merge_config(None, None))  # (numpy scalars: Python's)
    cfg["seed"] = checked("seed", cfg["seed"], _int(0, SEED_MAX))
    cfg["data"]["seed"] = checked("data.seed", cfg["data"]["seed"], _int(0, SEED_MAX))
    cfg["layout"] = checked("layout", cfg["layout"], _choice(*LAYOUTS))
    if not cfg["model"]["name"]:
        raise WorkbenchError(
            "no model given: use --model NAME (e.g. nsf for a table, glow for images; "
            "'flowforge list' names them all) or a 'model:' section"
        )
    if not cfg["data"]["name"]:
        raise WorkbenchError("no data given: use --data NAME|PATH or a 'data:' section")
    try:
        spec = models.spec(cfg["model"]["name"])
    except ValueError as e:
        raise WorkbenchError(str(e)) from None
    cfg["model"]["name"] = spec.name.lower()
    if model_lr(spec, layers) is not None:
        cfg["train"]["lr"] = spec.lr  # (the model's own: the usual default is far too slow)
    if cfg["model"]["name"] in MANIFOLD_MODELS and Path(str(cfg["data"]["name"])).is_file():
        # angles and unit vectors in a file of the user's are modelled as they are: a
        # standardised copy would no longer lie on the torus or the sphere
        cfg["data"]["options"].setdefault("standardize", False)
    for k, check in TRAIN_CHECKS.items():
        cfg["train"][k] = checked(f"train.{k}", cfg["train"][k], check)
    if "dtype" in cfg["data"]["options"]:  # (the data are read in the model's precision)
        raise WorkbenchError(
            "data.dtype is not a data option: the data are read in the run's precision, "
            "train.dtype (float32 or float64): --set train.dtype=float64"
        )
    limit = cfg["data"]["options"].get("limit")
    if limit is not None:
        checked("data.limit", limit, _int(1))
    if "init_from" in cfg:
        cfg["init_from"] = run_path(cfg["init_from"])
    _json_types(cfg, "")
    return json.loads(json.dumps(cfg))  # plain JSON types only (tuples -> lists)


def model_lr(spec, layers) -> float | None:
    """The learning rate a registered model asks for (``register(lr=...)``), where none of
    the config ``layers`` sets ``train.lr``; None otherwise."""
    given = any(
        isinstance(layer, dict) and isinstance(layer.get("train"), dict) and "lr" in layer["train"]
        for layer in layers
    )
    return None if given else spec.lr


def run_path(value) -> str:
    """``init_from`` checked: the path of a run folder, or a one-line ``WorkbenchError``."""
    if said := unquoted_name("init_from", value):
        raise WorkbenchError(said)
    return checked("init_from", value, _run_path)


def _run_path(v):
    """A run folder's path (``init_from``): a non-empty string."""
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str) or not v.strip() or "\0" in v:
        raise ValueError("the path of a run folder")
    return v


def _json_types(v, where: str) -> None:
    """A ``WorkbenchError`` naming the key of a value that is not a number, string, list or
    mapping (a YAML date, ``!!binary`` or ``!!set``, a TOML date): a config is JSON data."""
    if isinstance(v, dict):
        for k, x in v.items():
            _json_types(x, f"{where}.{k}" if where else str(k))
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _json_types(x, f"{where}[{i}]")
    elif not (v is None or isinstance(v, (str, int, float, bool))):
        raise WorkbenchError(
            f"config {where} must be a number, string, list or mapping, got a "
            f"{type(v).__name__} ({str(v)[:40]})"
        )


def column_list(v):
    """Columns given as ``"a, b"``, ``[a, b]`` or ``3``, as data._parse_columns reads them (for
    comparing two spellings of the same columns)."""
    if isinstance(v, str):
        return [w.strip() for w in v.split(",") if w.strip()]
    if isinstance(v, (list, tuple)):
        return [w.strip() if isinstance(w, str) else w for w in v]
    return v  # (an index 2 and a name "2" may be different columns: not the same)


def user_part(cfg: dict) -> dict:
    """The part of a config that defines the run (what --resume compares)."""
    return {k: cfg[k] for k in TOP_KEYS if k in cfg or k not in OPTIONAL_KEYS}


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out
