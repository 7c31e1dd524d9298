r"""The builder registry: ``register``, ``builder``, ``build``, ``available``, ``spec``.

A builder is a function that assembles layers into a :class:`~flowforge.Flow`.
:func:`register` makes it findable by name (case-insensitive), records the *whole* resolved
configuration in ``flow.config`` (every argument, defaults included, so that a default changed
in a later version cannot silently change a reloaded model), checks argument types against the
builder's annotations, and records what the builder takes (:class:`BuilderSpec`) so that the
workbench never inspects signatures.

A builder that ends its signature with a ``data: DataOptions`` parameter takes the shared data
options (:class:`~flowforge.models.assembly.DataOptions`) as keyword arguments; the public
signature lists them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .._util import suggest, unknown
from ..core import Flow
from .assembly import DataOptions

__all__ = [
    "BuilderSpec",
    "register",
    "builder",
    "build",
    "available",
    "spec",
    "check_arguments",
    "saved_kwargs",
    "earlier_configs",
    "not_json",
    "plain_numbers",
]

# Arguments added after configurations were first saved, each with the value that rebuilds
# what a configuration written before it existed describes.
LEGACY = {
    "standardize": False,
    "shift_first": False,  # RealNVP's affine order; images now default to True (docs/images.md)
    "residual": False,  # RealNVP's conditioners: plain MLPs (8 of 256x256 by default) before
    "adjacency": None,  # MAF, IAF and NSF: unstructured (an order) before
    "spread": 0.0,  # NAF's and TarFlow's mixtures: equal components before (docs/monotone.md)
    "alternate": True,  # NICE's, RealNVP's and IDF's masks: turns in each coupling's own order
}

# Arguments of LEGACY that a builder records where they do not apply, per builder: the test
# of its arguments that says they do (an affine TarFlow records `spread`, which only its
# mixture transformer reads: its configuration before `spread` is the same model).
APPLIES = {
    ("tarflow", "spread"): lambda kwargs: kwargs.get("transformer") == "mixture",
    # (alternate=True is the masks of before; None differs from it only after "reverse", a
    # random permutation's order being saved with it; the image RealNVP has its own masks)
    ("nice", "alternate"): lambda kwargs: (
        kwargs.get("alternate") is False or kwargs.get("permutation") == "reverse"
    ),
    ("realnvp", "alternate"): lambda kwargs: (
        kwargs.get("alternate") is False
        or (
            kwargs.get("permutation") == "reverse"
            and not (kwargs.get("features") is None and len(kwargs.get("shape") or ()) == 3)
        )
    ),
    ("idf", "alternate"): lambda kwargs: (
        kwargs.get("alternate") is False or kwargs.get("permutation") == "reverse"
    ),
}

# The defaults that changed when an argument of LEGACY was added, per builder: the value
# recorded since and the value recorded before for the same model.
CHANGED_WITH = {
    "adjacency": {b: {"permutation": ("auto", "reverse")} for b in ("maf", "iaf", "nsf")},
}

# Defaults a builder had when flowforge/1 files were written (2026-11), which record only the
# arguments given, and that changed since, per builder: the value an argument absent from such
# a file stands for (MAF: 5 layers of two 128-wide plain MADEs, then max(5, 32 // features) of
# residual ones; MAF, IAF, NSF: permutation "reverse", now "auto", the same without an
# adjacency). A flowforge/2 configuration records every argument, so none is absent there.
FORMAT1_DEFAULTS = {
    "maf": {"layers": 5, "hidden": [128, 128], "permutation": "reverse"},
    "iaf": {"permutation": "reverse"},
    "nsf": {"permutation": "reverse"},
}

# Defaults that changed without an argument being added, per builder: the value recorded
# since and the value recorded before for the same model (the IDF's partitions: 4 before,
# None since, which is min(4, features), the same model wherever 4 was valid).
CHANGED_DEFAULTS = {"idf": {"partitions": (None, 4)}}


@dataclasses.dataclass(frozen=True)
class BuilderSpec:
    """What a registered builder takes.

    Attributes:
        name: the builder's name (``"RealNVP"``); lookups are case-insensitive.
        build: the public builder.
        inputs: ``("features",)`` for vectors, ``("shape",)`` for images, or both.
        depth: the argument that sets the number of layers/steps/blocks (None: none).
        width: the argument that sets the networks' widths (None: none).
        data: whether it takes the shared data options.
        summary: the first line of its docstring.
        lr: the learning rate it trains well with, where the usual 1e-3 is far too slow
            (the workbench uses it when a run leaves ``train.lr`` unset); None: no advice.
    """

    name: str
    build: Callable[..., Flow]
    inputs: tuple[str, ...]
    depth: str | None
    width: str | None
    data: bool
    summary: str
    lr: float | None = None

    @property
    def signature(self) -> inspect.Signature:
        return self.build.__signature__

    def defaults(self) -> dict:
        """The builder's own arguments (the data options aside) and their defaults."""
        data = set(DataOptions.fields()) if self.data else set()
        return {
            k: p.default
            for k, p in self.signature.parameters.items()
            if k not in data and k not in self.inputs and p.kind != p.VAR_KEYWORD
        }


_SPECS: dict[str, BuilderSpec] = {}


def _jsonable(v):
    if isinstance(v, torch.Tensor):  # (e.g. an adjacency given as a tensor)
        return v.tolist()
    if isinstance(v, (tuple, list)):
        return [_jsonable(i) for i in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(i) for k, i in v.items()}
    return v


def _tuple_hint(hint) -> bool:
    """Whether ``hint`` asks for a tuple and not a list (``tuple[int, ...]``, ``tuple``, or
    such a hint in a union without ``list`` or ``Sequence``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        return any(map(_tuple_hint, members)) and not any(
            h in (list, Sequence) or typing.get_origin(h) in (list, Sequence) for h in members
        )
    return hint is tuple or origin is tuple


def _from_json(v, hint, default=inspect.Parameter.empty):
    """``v`` with the lists a JSON configuration (or a command line) gives turned back into the
    tuples its annotation asks for, nested ones included (``tuple[tuple[int, int], ...]``);
    without an annotation, where its default is a tuple. Other values come back as they are."""
    if isinstance(v, dict) and typing.get_origin(hint) is dict:
        args = typing.get_args(hint)
        return {k: _from_json(i, args[1]) for k, i in v.items()} if len(args) == 2 else v
    if not isinstance(v, (list, tuple)):
        return v
    if hint in (inspect.Parameter.empty, typing.Any):
        return tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = typing.get_args(hint) if union else (hint,)
    seq = next((h for h in members if typing.get_origin(h) in (tuple, list, Sequence)), None)
    items = list(v)
    if seq is not None:
        args = typing.get_args(seq)
        if typing.get_origin(seq) is tuple and args and args[-1] is not Ellipsis:
            if len(args) == len(items):  # (a fixed-length tuple: one hint per place)
                items = [_from_json(i, h) for i, h in zip(items, args)]
        elif args:
            items = [_from_json(i, args[0]) for i in items]
    if _tuple_hint(hint):
        return tuple(items)
    return type(v)(items)


def not_json(kwargs: dict) -> str | None:
    """The first argument of a configuration (``flow.config["kwargs"]``) that JSON cannot
    hold, as ``"name=value"`` (``"layers[2]=..."`` inside a list), or None if every one is
    JSON: None, a bool, a number, a string, or a list or dict (string keys) of them."""

    def bad(v, where: str) -> str | None:
        if v is None or isinstance(v, (bool, int, float, str)):
            return None
        if isinstance(v, (list, tuple)):
            return next((b for i, x in enumerate(v) if (b := bad(x, f"{where}[{i}]"))), None)
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    return f"{where} (a key {_short(k)})"
                if b := bad(x, f"{where}[{k!r}]"):
                    return b
            return None
        return f"{where}={_short(v)}"

    return next((b for k, v in kwargs.items() if (b := bad(v, str(k)))), None)


# -- argument types ------------------------------------------------------------------------------


def _type_ok(value, hint) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (the forms builders use)."""
    if hint is typing.Any or hint is inspect.Parameter.empty:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin in (Sequence, list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(hint)
        return not args or all(_type_ok(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


_WORDS = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
          "dict": "a mapping", "list": "a list", "tuple": "a list", "NoneType": "null"}  # fmt: skip
_PLURALS = {"a number": "numbers", "an integer": "integers", "a string": "strings"}


def _describe(hint) -> str:
    """An annotation in the words of a config file (YAML, JSON) rather than Python's:
    ``int | None`` is "an integer or null", ``Sequence[int] | int`` "a list of integers or an
    integer"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = list(dict.fromkeys(w for a in args for w in _describe(a).split(" or ")))
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if isinstance(origin, type) and issubclass(origin, Sequence):
        each = _PLURALS.get(_describe(args[0])) if args else None
        return f"a list of {each}" if each else "a list"
    if origin is dict:
        return "a mapping"
    if isinstance(hint, type):  # <class 'float'> reads as Python; "a number" as a config
        return _WORDS.get(hint.__name__, hint.__name__)
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def _list_hint(v, hint) -> str:
    """For a string of numbers given where a sequence is expected (``"64,64"``, ``"(64, 64)"``,
    as a command line's ``--set model.hidden=64,64`` gives): the list to write instead."""
    if not isinstance(v, str) or "Sequence" not in str(hint):
        return ""
    parts = [p for p in v.strip().strip("()[]").replace(",", " ").split() if p]
    try:
        numbers = [int(p) if p.lstrip("+-").isdigit() else float(p) for p in parts]
    except ValueError:
        return ""
    if not numbers:
        return ""
    return f": give a list, [{', '.join(map(str, numbers))}] (in brackets, also on a command line)"


def plain_numbers(v):
    """``v`` with its numpy scalars as Python values (``np.int64(3)``, as ``np.arange`` gives,
    is the integer 3; ``np.float32`` a float; ``np.bool_`` a bool), in lists, tuples and
    mappings too: what the builder checks and ``flow.config`` records is plain JSON."""
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return type(v)(plain_numbers(x) for x in v)
    if isinstance(v, dict):
        return {k: plain_numbers(x) for k, x in v.items()}
    return v


def _short(v, most: int = 80) -> str:
    """``repr(v)`` on one line, cut to ``most`` characters (a tensor or array spans many)."""
    if v is None or isinstance(v, bool):  # as a config file writes them
        return {None: "null", True: "true", False: "false"}[v]
    r = " ".join(repr(v).split())
    return r if len(r) <= most else r[: most - 3] + "..."


def _not_finite(v) -> bool:
    """A float NaN or infinity in ``v`` (a number, or a list, tuple or dict holding one)."""
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, dict):
        v = v.values()
    return isinstance(v, (list, tuple, type({}.values()))) and any(_not_finite(x) for x in v)


def check_arguments(spec: BuilderSpec, arguments: dict) -> None:
    """``ValueError`` naming the first argument whose value does not fit its annotation, or
    that holds a NaN or an infinity (no builder takes one, and a model's record is JSON)."""
    hints = spec.build.__annotations_resolved__
    params = spec.signature.parameters
    # an argument taken by **kwargs has the annotation of **kwargs (if any)
    varkw = next((p.name for p in params.values() if p.kind == p.VAR_KEYWORD), None)
    for k, v in arguments.items():
        key = k if k in params or varkw is None else varkw
        hint = hints.get(key, inspect.Parameter.empty)
        if not _type_ok(v, hint):
            raise ValueError(
                f"{spec.name}: argument {k}={_short(v)} has the wrong type; expected "
                f"{_describe(hint)}"
                f"{_list_hint(v, hint)}"
            )
        if _not_finite(v):
            raise ValueError(
                f"{spec.name}: argument {k}={_short(v)} is not finite; expected finite numbers"
            )


# -- registration --------------------------------------------------------------------------------


# what zuko, nflows and normflows call some arguments, and flowforge's name ("DEPTH": the
# builder's own depth argument: layers, steps, blocks...)
_PEER_NAMES = {
    "hidden_features": "hidden",
    "hidden_units": "hidden",
    "transforms": "DEPTH",
    "num_layers": "DEPTH",
    "num_transforms": "DEPTH",
    "num_flows": "DEPTH",
    "n_layers": "DEPTH",
    "context": "context_features",
    "num_bins": "bins",
    "count_bins": "bins",
    "tail_bound": "bound",
}


_Model = typing.TypeVar("_Model")


@typing.overload
def register(
    fn: Callable[..., _Model],
    *,
    inputs: Sequence[str] = ...,
    depth: str | None = ...,
    width: str | None = ...,
    lr: float | None = ...,
) -> Callable[..., _Model]: ...
@typing.overload
def register(
    fn: None = None,
    *,
    inputs: Sequence[str] = ...,
    depth: str | None = ...,
    width: str | None = ...,
    lr: float | None = ...,
) -> Callable[[Callable[..., _Model]], Callable[..., _Model]]: ...
def register(
    fn=None,
    *,
    inputs: Sequence[str] = ("features",),
    depth: str | None = "layers",
    width: str | None = "hidden",
    lr: float | None = None,
):
    """Register a builder (used as ``@register`` or ``@register(inputs=("shape",), ...)``).

    ``lr``: the learning rate the model trains well with, where the usual 1e-3 is far too
    slow (the workbench takes it when a run leaves ``train.lr`` unset, and says so).

    The registered builder binds its arguments, applies the defaults, checks the types, calls
    the function and records ``flow.config = {"model": name, "kwargs": {...}}``.

    ``**kwargs`` reach the function as given and are recorded flat beside the named arguments
    (a file passes them back by name); ``*args`` and positional-only arguments cannot be, and
    are refused here. A list (as JSON gives it) where the annotation, or without one the
    default, is a tuple reaches the function as a tuple.
    """

    def wrap(fn: Callable[..., _Model]) -> Callable[..., _Model]:
        sig = inspect.signature(fn)
        name = fn.__name__
        for p in sig.parameters.values():
            # (a configuration records arguments by name, and a file rebuilds the flow with
            # keyword arguments: an argument without a name could not be passed back)
            if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
                what = f"*{p.name}" if p.kind == p.VAR_POSITIONAL else f"positional-only {p.name}"
                raise TypeError(
                    f"register: builder {name} takes {what}, which a saved configuration cannot "
                    "pass back by name; give each argument a name (keyword arguments and "
                    "**kwargs are fine)"
                )
        takes_data = "data" in sig.parameters
        params = [p for p in sig.parameters.values() if p.name != "data"]
        varkw = next((p for p in params if p.kind == p.VAR_KEYWORD), None)
        params = [p for p in params if p is not varkw]  # (**kwargs last, after the data options)
        hints = typing.get_type_hints(fn)
        if takes_data:
            data_hints = typing.get_type_hints(DataOptions)
            for f in dataclasses.fields(DataOptions):
                params.append(
                    inspect.Parameter(
                        f.name,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=f.default,
                        annotation=data_hints[f.name],
                    )
                )
                hints[f.name] = data_hints[f.name]
        if varkw is not None:
            params.append(varkw)
        public = sig.replace(parameters=params)
        defaults = {p.name: p.default for p in params}
        taken = _SPECS.get(name.lower())
        if taken is not None and _origin(taken.build) != _origin(fn):  # (the same one again: ok)
            raise ValueError(
                f"a model named {taken.name!r} is registered already (by "
                f"{_origin(taken.build)}): name the builder something else, or a file saved "
                "by either would rebuild as the other"
            )
        data_fields = DataOptions.fields() if takes_data else ()

        @functools.wraps(fn)
        def builder(*args, **kwargs) -> Flow:
            try:
                bound = public.bind(*args, **kwargs)
            except TypeError as e:
                bad = next((k for k in kwargs if k not in public.parameters), None)
                hint = suggest(bad, public.parameters, n=1, cutoff=0.6) if bad else ""
                ours = _PEER_NAMES.get(bad or "")
                if ours == "DEPTH":
                    ours = _SPECS[name.lower()].depth
                if ours and ours in public.parameters:  # (zuko's or nflows' word for it)
                    hint = f"; {name} calls it {ours}"
                if bad == "features" and "shape" in public.parameters:  # (vectors' word)
                    hint = f"; {name} takes images: shape=(C, H, W)"
                elif bad == "shape" and "features" in public.parameters:
                    hint = f"; {name} takes vectors: features=D (flatten images first)"
                raise TypeError(f"{name}(): {e}{hint}") from None
            bound.apply_defaults()
            given = dict(bound.arguments)
            # **kwargs as the caller gave them: flat, beside the named arguments (bound holds
            # them as one dict under the parameter's name)
            extra = given.pop(varkw.name, {}) if varkw is not None else {}
            if "data" in extra and takes_data:
                raise TypeError(f"{name}(): data is set by its data options, not by keyword")
            # (a numpy array where a list is expected, e.g. an adjacency: as its nested lists;
            # a list where the annotation or the default is a tuple, as JSON gives it: a tuple)
            arguments = {
                k: _from_json(
                    v.tolist() if isinstance(v, np.ndarray) else plain_numbers(v),
                    hints.get(k if k in given else varkw.name, inspect.Parameter.empty),
                    defaults.get(k, inspect.Parameter.empty),
                )
                for k, v in {**given, **extra}.items()
            }
            check_arguments(_SPECS[name.lower()], arguments)
            own = {k: v for k, v in arguments.items() if k not in data_fields}
            if takes_data:
                own["data"] = DataOptions(**{k: arguments[k] for k in data_fields})
            flow = fn(**own)
            if not isinstance(flow, torch.nn.Module) or not callable(
                getattr(flow, "log_prob", None)
            ):  # (a chain of layers alone has no base, so no density)
                raise TypeError(
                    f"the builder {name} returned a {type(flow).__name__}, which has no "
                    "log_prob: return ff.Flow(transform, base)"
                )
            flow.config = {"model": name, "kwargs": _jsonable(arguments)}
            return flow

        builder.__signature__ = public
        builder.__annotations_resolved__ = hints
        doc = inspect.getdoc(fn) or ""
        _SPECS[name.lower()] = BuilderSpec(
            name=name,
            build=builder,
            inputs=tuple(inputs),
            # (the defaults name arguments a builder may not have: then it has no such knob)
            depth=depth if depth in public.parameters else None,
            width=width if width in public.parameters else None,
            data=takes_data,
            summary=doc.splitlines()[0] if doc else "",
            lr=lr,
        )
        return builder

    return wrap if fn is None else wrap(fn)


def _origin(fn) -> str:
    fn = inspect.unwrap(fn)
    return f"{fn.__module__}.{fn.__qualname__}"


def available() -> list[str]:
    """Names of the registered builders (lower case)."""
    return sorted(_SPECS)


def spec(name: str) -> BuilderSpec:
    """The :class:`BuilderSpec` of the builder called ``name`` (case-insensitive)."""
    key = str(name).lower()
    if key not in _SPECS:
        e = unknown("model", name, _SPECS)
        raise ValueError(
            f"{e}; a model of your own is known once the module that registers it "
            "(@ff.models.register) is imported (flowforge's commands: --import MODULE)"
        ) from None
    return _SPECS[key]


def builder(name: str) -> Callable[..., Flow]:
    """The registered builder called ``name`` (case-insensitive); ``ValueError`` if unknown."""
    return spec(name).build


def build(name: str, **kwargs) -> Flow:
    """Build a registered model by name, e.g. ``build("realnvp", features=64)``."""
    return builder(name)(**kwargs)


def saved_kwargs(name: str, kwargs: dict) -> dict:
    """The arguments of a saved configuration (``flow.config["kwargs"]``), completed with the
    :data:`LEGACY` value of every argument the builder gained after it was written, and with
    the :data:`FORMAT1_DEFAULTS` of a builder whose defaults changed since flowforge/1."""
    params = spec(name).signature.parameters
    old = {**LEGACY, **FORMAT1_DEFAULTS.get(str(name).lower(), {})}
    return {**{k: v for k, v in old.items() if k in params and k not in kwargs}, **kwargs}


def earlier_configs(config) -> list[dict]:
    """The configurations earlier versions recorded for a model built now with ``config``
    (``flow.config``), newest first: without each argument added since (at its :data:`LEGACY`
    value; a model that sets one otherwise had no earlier form), the defaults changed with it
    (:data:`CHANGED_WITH`) at their earlier values; and each of those with the defaults changed
    on their own (:data:`CHANGED_DEFAULTS`) at their earlier values."""
    if not isinstance(config, dict) or not isinstance(config.get("kwargs"), dict):
        return []
    name = str(config.get("model", "")).lower()
    kwargs, out = dict(config["kwargs"]), []
    for k in reversed(list(LEGACY)):
        if k not in kwargs:
            continue
        applies = APPLIES.get((name, k), lambda kwargs: True)
        if kwargs[k] != LEGACY[k] and applies(kwargs):
            break
        del kwargs[k]
        for arg, (now, before) in CHANGED_WITH.get(k, {}).get(name, {}).items():
            if kwargs.get(arg) == now:
                kwargs[arg] = before
        out.append({**config, "kwargs": dict(kwargs)})
    changed = CHANGED_DEFAULTS.get(name, {})
    for c in [config, *out]:
        was = {a: before for a, (now, before) in changed.items() if c["kwargs"].get(a) == now}
        if was:
            out.append({**c, "kwargs": {**c["kwargs"], **was}})
    return out
