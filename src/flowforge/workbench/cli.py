r"""The ``flowforge`` command (also ``python -m flowforge``).

Subcommands: ``list``, ``train``, ``eval``, ``sample``, ``report``, ``demo``, ``fit-target``,
``compress``, ``decompress``.
This module only parses arguments and calls the workbench; torch is imported lazily, so
``--help`` answers at once. Errors a user can fix print one line on stderr and exit with status
1 (``--debug`` shows the traceback); an interrupted training exits with 130 after saving a
resumable checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

__all__ = ["main", "DEMO"]

# The demo: change the model here (e.g. {"model": "glow", "layout": "image", ...}).
DEMO = {
    "model": {"name": "realnvp", "kwargs": {"hidden": 64, "actnorm": True}},
    "layout": "image",
    "data": "digits",
    "train": {"epochs": 40, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "patience": 10},
}


# the library's remedies in Python's words, and what the command offers instead (a run is
# trained in float64 with train.dtype; its model cannot be moved to float64 after)
_F64 = "train the run in float64 (--set train.dtype=float64)"
_PYTHON_REMEDIES = (
    ("; move the flow to float64 (flow.double())", f"; {_F64}"),
    ("move the flow to float64 (flow.double()) or rescale", f"{_F64} or rescale"),
    ("move the flow to float64 (flow.double()) or subtract", f"{_F64} or subtract"),
    (
        "sample in float64 (flow.double()), or at a lower temperature",
        "sample at a lower --temperature",
    ),
    ("score them in float64 (flow.double()), or remove them", "remove them"),
)


def demo_config(model: str | None = None, epochs: int | None = None) -> dict:
    """The demo's config (:data:`DEMO`), with ``epochs``, and for ``model`` other than the
    demo's its own defaults, sized to the data, and its own learning rate where it has one
    (BNAF's 0.01: ``flowforge list`` says it trains with it unless train.lr is set)."""
    cfg = json.loads(json.dumps(DEMO))
    if epochs is not None:
        cfg["train"]["epochs"] = epochs
    if model is not None and model.strip().lower() != DEMO["model"]["name"]:
        cfg["model"] = {"name": model}
        cfg["layout"] = "auto"
        try:
            from .. import models

            if models.spec(model).lr is not None:
                del cfg["train"]["lr"]
        except ValueError:
            pass  # (an unknown model: train refuses it, naming the models)
    return cfg


class StdoutError(OSError):
    """A write to standard output failed (its reader gone, its disk full): an ``OSError`` from
    ``print`` names no file, and "No space left on device" sent the reader to the run's disk."""


class _GuardedStdout:
    """``sys.stdout`` for the command, whose write errors are :class:`StdoutError` saying
    "cannot write to standard output: REASON" (everything else is the stream's own)."""

    def __init__(self, stream):
        self._stream = stream
        self.failed = False
        # a character the terminal's encoding lacks (a path or column name on an ASCII or
        # Latin-1 console, a file name's undecodable byte) is escaped, not an error after the
        # command's work is done
        try:  # (where Python keeps a name's bytes already, surrogateescape, it stays)
            if getattr(stream, "errors", None) == "strict":
                stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # (not a text stream we can set)
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def _call(self, method, *args):
        try:
            return method(*args)
        except OSError as e:
            self.failed = True
            reason = e.strerror or _one_line(e)
            raise StdoutError(e.errno, f"cannot write to standard output: {reason}") from None

    def write(self, text):
        from .errors import visible  # (a run's strings cannot drive the terminal)

        return self._call(self._stream.write, visible(text, lines=True))

    def flush(self):
        return self._call(self._stream.flush)


def _one_line(e) -> str:
    """An exception's (or a warning's) message on one line, in the command's words."""
    from .errors import one_line, visible

    if isinstance(e, OSError) and e.strerror and e.filename is None and len(e.args) == 2:
        return one_line(e.strerror)  # our own (errno, message): without "[Errno N]"
    msg = visible(one_line(e)) or type(e).__name__
    for python, ours in _PYTHON_REMEDIES:
        msg = msg.replace(python, ours)
    msg = msg.strip("'\"") if isinstance(e, KeyError) else msg
    if len(msg) > _LONGEST:  # (a 100 KB value echoed back is no longer one line to read)
        cut = len(msg) - _LONGEST + 200
        msg = f"{msg[: _LONGEST - 400]} ... ({cut:,} characters left out) ... {msg[-200:]}"
    return msg


_LONGEST = 2000  # characters of one error line


def _device_name(text: str) -> str:
    """A ``--device`` of eval or sample, checked as ``train.device`` is."""
    from .config import _device

    try:
        return _device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected {e}, got {text!r}") from None


def _device_option(parser, verb: str, same: str) -> None:
    parser.add_argument(
        "--device",
        type=_device_name,
        default="cpu",
        help=f"where the model {verb}: cpu (default), cuda, cuda:N, or auto (a GPU if there is "
        f"one); {same}",
    )


def _warmup(text: str):
    """A ``--warmup-steps``: a number of steps, or ``auto`` (its default)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of steps or auto, got {text!r}"
        ) from None


def _seed(text: str) -> int:
    """A ``--seed``: an integer in [0, 2**32 - 1], as a config's seed."""
    from .config import SEED_MAX

    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {text!r}")
    return v


MAX_THREADS = 1024


def _threads(text: str) -> int:
    """``--threads``: torch's intra-op threads, an integer in ``[1, MAX_THREADS]``."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if not 1 <= v <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {MAX_THREADS}], got {text!r}")
    return v


def _threads_option(s) -> None:
    s.add_argument(
        "--threads",
        type=_threads,
        help="torch threads (default torch's: one per core); 1 is as fast for small models "
        "and several times faster on a machine other jobs share",
    )


def _parse_mapping(text: str, what: str) -> dict:
    from .config import _yaml_load
    from .errors import WorkbenchError

    try:
        value = _yaml_load(text)
    except ImportError:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise WorkbenchError(f"{what}: not valid JSON: {e}") from None
    except Exception as e:
        raise WorkbenchError(f"{what}: cannot parse {text!r}: {_one_line(e)}") from None
    if not isinstance(value, dict):
        raise WorkbenchError(f"{what}: expected a mapping like '{{\"layers\": 4}}', got {text!r}")
    return value


def _parse_scalar(text: str):
    from .config import _yaml_load

    try:
        return _yaml_load(text)
    except Exception:
        return text


# -- subcommands ---------------------------------------------------------------------------------


def _json_default(text):
    """A builder argument's default as ``list`` shows it (Python source, ``'alternating'``,
    ``None``), as a JSON value where it is one; else the text."""
    import ast

    if not isinstance(text, str):
        return text
    try:
        v = ast.literal_eval(text)
        json.dumps(v, allow_nan=False)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return list(v) if isinstance(v, tuple) else v


def _print_json(obj) -> None:
    """``--json``: ``obj`` as one JSON document on standard output, its NaN and infinities as
    ``null`` (a JSON reader takes no other; ``eval --json``'s figures are finite already)."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return [finite(x) for x in v] if isinstance(v, (list, tuple)) else v

    print(json.dumps(finite(obj), allow_nan=False))


def cmd_list(args) -> int:
    from .catalog import (
        DATASET_NOTES,
        OBJECTIVES,
        OWN_OBJECTIVES,
        SIZING,
        TARGET_NAMES,
        WORKBENCH_REFUSES,
        data_options,
        live_models,
        models,
    )

    info = {
        "models": {m["name"]: m for m in models()},
        "datasets": dict(DATASET_NOTES),
        "files": ".npy/.npz/.csv tables (data options: header, levels, standardize, whiten, "
        "bounds, integers, val_fraction, test_fraction, shuffle, limit; docs/workbench.md); a "
        "folder of PNG/JPEG images (bits)",
        "objectives": dict(OBJECTIVES),
        "targets": list(TARGET_NAMES),
    }
    for m in live_models():  # builders registered in this process (plugins), when loaded
        info["models"].setdefault(m["name"], m)
    info["models"] = dict(sorted(info["models"].items()))
    for name, m in info["models"].items():  # (what the workbench needs of it, or refuses)
        if name in WORKBENCH_REFUSES:
            m["workbench"] = False
        if name in OWN_OBJECTIVES:
            m["objectives"] = list(OWN_OBJECTIVES[name])
    import importlib.util

    for name, (package, extra) in MODEL_PACKAGES.items():  # (installed or not: said here)
        if name in info["models"] and importlib.util.find_spec(package) is None:
            info["models"][name]["needs"] = f"pip install 'flowforge[{extra}]' ({package})"
    if args.json:  # (the defaults as JSON values: "alternating", false, 3.0, null)
        for m in info["models"].values():
            m["arguments"] = {k: _json_default(v) for k, v in m["arguments"].items()}
        print(json.dumps(info, indent=2))
        return 0
    print("models (their own arguments and defaults; * = sized to the data when not given):")
    for name, m in info["models"].items():
        sized = {m.get("depth"), m.get("width")}
        args = ", ".join(f"{k}{'*' if k in sized else ''}={v}" for k, v in m["arguments"].items())
        print(f"  {name:<13} {m['summary']}")
        print(f"  {'':<13} inputs: {'/'.join(m['inputs'])}; {args}")
        if m.get("lr") is not None:
            print(f"  {'':<13} trains with lr {m['lr']:g} unless train.lr is set")
        if m.get("needs"):
            print(f"  {'':<13} not installed here: {m['needs']}")
        if name in WORKBENCH_REFUSES:
            print(f"  {'':<13} Python only: the workbench does not train or score it")
        elif m.get("objectives"):
            print(f"  {'':<13} trains with --objective {' or '.join(m['objectives'])} only")
    without = [n for n, m in info["models"].items() if not m.get("data_options", True)]
    which = f"every model but {', '.join(without)}" if without else "every model"
    print(f"  ({which} also takes the data options: " + ", ".join(data_options()) + ")")
    print(SIZING)
    print("datasets:")
    for k, v in info["datasets"].items():
        print(f"  {k:<13} {v}")
    print(f"  {'<path>':<13} {info['files']}")
    print("objectives (train --objective):")
    for k, v in OBJECTIVES.items():
        print(f"  {k:<18} {v}")
    print(f"targets (fit-target --target): {', '.join(info['targets'])}")
    return 0


def _train_overrides(args) -> dict:
    o: dict = {}
    if args.model is not None:
        o["model"] = {"name": args.model}
    from .errors import WorkbenchError

    if args.data is not None:
        o["data"] = {"name": args.data}
    for given, flag, section, option in (
        (args.model_kwargs, "--model", "model", "--model-kwargs"),
        (args.data_kwargs, "--data", "data", "--data-kwargs"),
    ):
        if given is None:
            continue
        kwargs = _parse_mapping(given, option)
        name = o.get(section, {}).get("name")
        if name is not None and "name" in kwargs and kwargs["name"] != name:
            raise WorkbenchError(
                f"{option} names {kwargs['name']!r}, and {flag} {name!r}: give one of them"
            )
        o.setdefault(section, {}).update(kwargs)
    for flag, section, key in (
        ("limit", "data", "limit"),
        ("conditional", "data", "conditional"),
        ("target_columns", "data", "target_columns"),
        ("dequantization", "model", "dequantization"),
        ("base", "model", "base"),
    ):
        value = getattr(args, flag)
        if value is None:
            continue
        given = o.get(section, {})
        if key in given and not _same((section, key), given[key], value):  # (the kwargs')
            option = "--model-kwargs" if section == "model" else "--data-kwargs"
            raise WorkbenchError(
                f"{option} gives {key} = {given[key]!r}, and --{flag.replace('_', '-')} "
                f"{value!r}: give one of them"
            )
        o.setdefault(section, {})[key] = value
    if args.seed is not None:
        o["seed"] = args.seed
    if getattr(args, "init_from", None) is not None:
        o["init_from"] = args.init_from
    if args.layout is not None:
        o["layout"] = args.layout
    tr = {}
    for flag, key in (
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("optimizer", "optimizer"),
        ("weight_decay", "weight_decay"),
        ("warmup_steps", "warmup_steps"),
        ("grad_clip", "grad_clip"),
        ("patience", "patience"),
        ("device", "device"),
        ("objective", "objective"),
    ):
        v = getattr(args, flag)
        if v is not None:
            tr[key] = v
    if tr:
        o["train"] = tr
    import copy

    from .config import deep_merge

    flags = copy.deepcopy(o)  # what the flags set: no --set may change or drop it quietly

    # (a key --set twice is refused: two --set items may come from two places in a script;
    # a flag given twice takes its last value, as argparse's flags do: an appended override)
    given: dict[str, str] = {}
    for item in args.set or []:
        if "=" not in item:
            raise WorkbenchError(f"--set expects KEY=VALUE (e.g. train.lr=3e-4), got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise WorkbenchError(f"--set {item!r}: expected a dotted key like train.lr")
        if key.strip() in given:
            raise WorkbenchError(
                f"--set {key.strip()} is given twice ({given[key.strip()]!r} and {item!r}); "
                "give it once"
            )
        given[key.strip()] = item
        if not value.strip():  # (YAML reads nothing as null: the default, or none, unasked)
            raise WorkbenchError(
                f"--set {key.strip()}= has no value; give one (null, written out, where the key "
                "takes none), or leave that --set out"
            )
        layer: dict = {}
        node = layer
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_scalar(value)
        o = deep_merge(o, layer)  # --set model=glow keeps the --model-kwargs given
        for path, want in _leaves(flags):  # a flag and a --set: neither wins quietly
            got = _lookup(o, path)
            nested = _lookup(o, _nested(path))  # model.kwargs.X, data.options.X: the same
            if nested is not _ABSENT:  # key, and the one that wins (config._section)
                got = nested
            if not _same(path, got, want):
                flag = _FLAG_OF.get(path) or (
                    f"--{path[0]}-kwargs" if path[0] in ("model", "data") and len(path) > 1
                    else "--" + path[-1].replace("_", "-")
                )  # fmt: skip
                raise WorkbenchError(
                    f"--set {key.strip()}={value.strip()} contradicts {flag} "
                    f"({'.'.join(path)} = {want!r}): give one of them"
                )
    return o


# the flags whose keys are not the flag's own name
_FLAG_OF = {
    ("init_from",): "--init-from",
    ("model", "name"): "--model",
    ("model", "dequantization"): "--dequantization",
    ("model", "base"): "--base",
    ("data", "name"): "--data",
    ("data", "limit"): "--limit",
    ("data", "conditional"): "--conditional",
    ("data", "target_columns"): "--target-columns",
}
_ABSENT = object()


def _leaves(tree, path=()):
    """``(path, value)`` of every value below the mappings of ``tree``."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, tree


def _nested(path: tuple) -> tuple:
    """``model.X`` and ``data.X`` as the nested keys a config may also give them under
    (``model.kwargs.X``, ``data.options.X``, which win over them: see config._section)."""
    if len(path) == 2 and path[0] in ("model", "data") and path[1] != "name":
        return (path[0], "kwargs" if path[0] == "model" else "options", path[1])
    return path


def _same(path: tuple, got, want) -> bool:
    """A --set value equal to a flag's: columns as a list or a comma-separated string alike
    (and a NaN the same NaN: the flag's own value, refused later for what it is)."""
    if got == want or got is want:
        return True
    if isinstance(got, float) and isinstance(want, float) and math.isnan(got) and math.isnan(want):
        return True
    if path == ("data", "target_columns"):  # (a flag's "a,b", --set data.target_columns=[a, b])
        from .config import column_list

        return column_list(got) == column_list(want)
    return False


def _lookup(tree, path):
    """``tree``'s value at ``path``; ``_ABSENT`` where a step is missing or not a mapping
    (a flag's value replaced by --set model=NAME keeps the name's place: see deep_merge)."""
    for k in path:
        if not isinstance(tree, dict) or k not in tree:
            return _ABSENT
        tree = tree[k]
    return tree


def _unambiguous_data(data) -> None:
    """A new run's data named like a built-in dataset while a file or folder of that name is
    here: refused, rather than training the built-in one on the user's behalf."""
    from .data import DATASETS
    from .errors import WorkbenchError

    name = data.get("name") if isinstance(data, dict) else data
    if isinstance(name, str) and name.lower() in DATASETS and os.path.lexists(name):
        raise WorkbenchError(
            f"the data {name!r} names a built-in dataset, and {name} here is a file or folder "
            f"of that name: give ./{name} for yours, or run elsewhere for the built-in one"
        )


def cmd_train(args) -> int:
    from .config import deep_merge, flat_sections, read_config
    from .runner import train

    layers = []
    if args.config is not None and not args.config.strip():  # (an unset shell variable)
        from .errors import WorkbenchError

        raise WorkbenchError("--config is empty; expected a .yaml, .toml or .json file")
    if args.config:
        layers.append(_other_model(flat_sections(read_config(args.config)), args.model))
    layers.append(flat_sections(_train_overrides(args)))
    raw: dict = {}
    for layer in layers:  # the file, then the flags on top (model.X over model.kwargs.X)
        raw = deep_merge(raw, layer)
    _unambiguous_data(raw.get("data"))
    if args.config and not args.resume and args.data is None:  # (--data: the user's choice)
        _replayed_data(args.config, layers[0], raw.get("data"))
    start = time.perf_counter()
    # --json: standard output holds the JSON alone; the epoch lines go to standard error
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        result = train(
            raw,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=_progress(args),
            echo=not args.quiet,
            notes=True,  # the data's warnings even with --quiet (it silences the epoch lines)
            # data options on the command line (--data, --limit, --set data.X ...): a run's
            # config.json then trains a new run if they give other data than the run recorded
            new_data=bool(layers[-1].get("data")),
            init_from=args.init_from,
        )
    return _finish_train(result, time.perf_counter() - start if args.json else None)


def _other_model(layer: dict, model: str | None) -> dict:
    """A config file's layer under ``--model``: where the flag names another model than the
    file, the file's model arguments were that model's, and are left out (the new model is
    built with its own defaults and sizing, as ``demo --model`` does), with a line saying so."""
    section = layer.get("model") if isinstance(layer, dict) else None
    name = section.get("name") if isinstance(section, dict) else section
    if model is None or not isinstance(name, str) or name.lower() == model.lower():
        return layer
    dropped = sorted(k for k in section if k != "name") if isinstance(section, dict) else []
    if dropped:
        say_warning(
            f"--model {model} replaces the config's model {name}, whose arguments "
            f"({', '.join(dropped)}) are left out: {model} is built with its own defaults "
            "(give its arguments with --model-kwargs)"
        )
    return {**layer, "model": {"name": model}}


def _replayed_data(config: str, stored: dict, data) -> None:
    """A run's config.json as --config names its data as it was given (a relative path): from
    another folder that is another file, or none. Where there is none, refused with the path
    that replays the run (if that file is still there). A file that is there is the run's
    data if its fingerprint says so (the replay checks it): a project folder moved with its
    data replays from its new place."""
    from .errors import WorkbenchError, shell_word

    resolved = stored.get("resolved")
    recorded = resolved.get("data_path") if isinstance(resolved, dict) else None
    name = data.get("name") if isinstance(data, dict) else data
    if not (isinstance(recorded, str) and isinstance(name, str)) or Path(name).is_absolute():
        return
    if Path(name).exists() or Path(name).resolve() == Path(recorded):
        return
    if Path(recorded).exists():
        raise WorkbenchError(
            f"{config} names its data {name!r}, and here there is no such file; the run was "
            f"trained on {recorded}: give --data {shell_word(recorded)} to replay it (or --data "
            "with the file you mean)"
        )
    raise WorkbenchError(
        f"{config} names its data {name!r}, and here there is no such file; the run was "
        f"trained on {recorded}, which is not there either (moved?): give --data with the "
        "run's data file where it is now (the replay checks that it is the same data)"
    )


def _finish_train(result: dict, seconds: float | None = None) -> int:
    """The end of ``flowforge train``: its summary line and notes, or (``seconds``, the
    command's wall time, given with ``--json``) one JSON object of the same facts."""
    from .distributed import dist_env

    rank, _ = dist_env()
    if result["status"] == "interrupted":
        if rank == 0 and (Path(result["out"]) / "checkpoint.safetensors").is_file():
            from .errors import shell_word

            print(
                "flowforge: interrupted; resume with: flowforge train --out "
                f"{shell_word(result['out'])} --resume",
                file=sys.stderr,
            )
        elif rank == 0:  # stopped before the first checkpoint: nothing to resume
            print(
                "flowforge: interrupted before the first checkpoint; nothing to resume: run "
                "the same command again",
                file=sys.stderr,
            )
        return 130
    if result.get("stdout_error") is not None:  # at the last epoch's line: the run has ended
        if rank == 0:
            print(
                f"flowforge: error: {result['stdout_error']} (the training {result['status']}; "
                f"model in {result['out']}/model.ff)",
                file=sys.stderr,
            )
        return 1
    if rank == 0:
        best = result["best_val"]
        what = result.get("objective", "nll")
        if what == "nll":
            msg = f"{result['status']}: best val NLL {best:.4f} nats/example"
        else:  # e.g. flow matching: its own validation loss, not a likelihood
            msg = f"{result['status']}: best val {what} loss {best:.4f}"
        if what == "nll" and result.get("best_val_bpd") is not None:
            msg += f" ({result['best_val_bpd']:.4f} bits/dim)"
        if result.get("already_ended"):
            msg = f"nothing to train: the run had {msg}"
        notes = []
        if result["status"] == "finished" and result["best_epoch"] == result["epochs"] > 1:
            from .runs import run_config

            warned = run_config(result["out"])["resolved"].get("data_warnings", [])
            if any("the longer it trains" in w for w in warned):  # spikes on atoms: no floor
                notes.append(
                    "the best epoch is the last, but the columns the data warnings name "
                    "let the NLL fall for as long as it trains: more epochs sharpen the spikes, "
                    "not the model"
                )
            else:
                from .errors import shell_word

                notes.append(
                    "the best epoch is the last, so the model was still improving: more "
                    "epochs may do better; a new run can start from this model: flowforge train "
                    f"--init-from {shell_word(result['out'])} --out NEW_RUN --epochs N"
                    + (  # (training options are the new run's own: its objective too)
                        f" --set train.objective={shell_word(result['objective'])}"
                        if result.get("objective", "nll") != "nll"
                        else ""
                    )
                    + _time_power_option(result["out"])
                )
        elif result["best_epoch"] == 1 and result["epochs"] > 1:
            notes.append(
                "the best epoch is the first: every later epoch scored worse on validation "
                "(a learning rate too high, or a model that overfits at once), so the kept model "
                "has had one epoch of training"
            )
        if seconds is not None:
            _print_json(_train_json(result, seconds, notes))
            return 0
        print(msg + f" at epoch {result['best_epoch']}; model in {result['out']}/model.ff")
        for note in notes:
            print(f"note: {note}")
    return 0


def _train_json(result: dict, seconds: float, notes: list) -> dict:
    """``train --json``'s object: the summary line's facts, and the files the run holds."""
    from .runs import CKPT_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE, run_config, run_identity

    out = Path(result["out"]).resolve()
    cfg = run_config(out)
    what = result.get("objective", "nll")
    files = {"model": MODEL_FILE, "checkpoint": CKPT_FILE, "metrics": METRICS_FILE,
             "config": CONFIG_FILE}  # fmt: skip
    return {
        "run": str(out),
        "model": cfg["model"]["name"],
        "data": cfg["data"]["name"],
        **run_identity(cfg),
        "parameters": result["parameters"],
        "status": result["status"],  # finished or early-stopped (interrupted: no JSON)
        "already_ended": bool(result.get("already_ended")),  # --resume of an ended run
        "epochs": result["epochs"],
        "max_epochs": cfg["train"]["epochs"],
        "steps": result["steps"],
        "objective": what,
        "best_epoch": result["best_epoch"] if result["best_epoch"] > 0 else None,
        "best_val": result["best_val"],  # (null: no finite validation)
        "best_val_unit": "nats/example" if what == "nll" else f"{what} loss",
        "best_val_bits_per_dim": result.get("best_val_bpd"),
        "skipped_steps": result.get("skipped_steps", 0),
        "seconds": seconds,
        "init_from": cfg["resolved"].get("init_from"),
        "files": {k: str(out / f) for k, f in files.items() if (out / f).is_file()},
        "notes": notes,
        "warnings": result.get("warnings", []),
        "data_warnings": result.get("data_warnings", []),
    }


def _eval_split(args) -> None:
    """``eval``'s ``--split`` (test where none is given), refused with ``--data``: a file is
    scored whole, so a split named beside it would be a number of other rows than it says.
    The run's own data file given as ``--data`` is scored whole too, and said to be."""
    from .errors import WorkbenchError

    if args.data is not None and args.split is not None:
        raise WorkbenchError(
            f"--split chooses a split of the run's data; --data {args.data} is scored whole "
            "(every example in it): give one of them"
        )
    args.split = args.split or "test"
    if args.data is None:
        return
    from .data import user_path
    from .errors import shell_word
    from .runs import run_config

    try:
        recorded = run_config(args.run)["resolved"].get("data_path")
        own = isinstance(recorded, str) and user_path(args.data).resolve() == Path(recorded)
    except (OSError, ValueError, TypeError, KeyError, WorkbenchError):
        return  # (a run that cannot be read: eval's own refusal says so next)
    if own:
        say_warning(
            f"{args.data} is the file this run was trained on: its NLL is of every row, the "
            f"training rows among them; flowforge eval {shell_word(args.run)} --split test "
            "scores its test rows alone"
        )


def cmd_eval(args) -> int:
    from .evaluate import (
        REFERENCES,
        against_reference,
        describe_bound,
        describe_ode,
        evaluate_run,
        worse_hint,
    )

    calibration = None
    _eval_split(args)
    scores = _scores_path(args)  # (checked before any scoring)
    score = dict(split=args.split, data=args.data, seed=args.seed, batch_size=args.batch_size,
                 samples=args.samples, iw=args.iw, trace=args.trace, tol=args.ode_tol,
                 device=args.device)  # fmt: skip
    mine = theirs = None  # (the runs' data, where comparing them read it)
    if args.against is not None:  # (refused before any scoring)
        from .evaluate import check_comparable, check_eval_options, options_for

        if args.calibration:
            from .errors import WorkbenchError

            raise WorkbenchError("--against and --calibration: give one of them")
        check_eval_options(args.run, args.samples, args.iw, args.trace, args.ode_tol,
                           args.batch_size, args.device)  # fmt: skip
        mine, theirs = check_comparable(args.run, args.against, args.data, args.split)
        theirs_score = options_for(args.against, score)  # (its options as they apply to it)
    if not args.calibration and (
        args.calibration_samples is not None or args.calibration_pairs is not None
    ):
        from .errors import WorkbenchError

        raise WorkbenchError("--calibration-samples and --calibration-pairs go with --calibration")
    if args.calibration:  # first: its refusals come before the NLL's pass over the split
        from .evaluate import calibrate_run, check_eval_options

        # (and the NLL's own refusals of these options, before either reads the data)
        check_eval_options(
            args.run, args.samples, args.iw, args.trace, args.ode_tol, args.batch_size,
            args.device,
        )  # fmt: skip
        samples, pairs = args.calibration_samples, args.calibration_pairs
        calibration = calibrate_run(
            args.run,
            args.split,
            args.seed,
            100 if samples is None else samples,
            1000 if pairs is None else pairs,
            device=args.device,
            data=args.data,
        )
    keep = scores is not None or args.against is not None  # (each example's log-density)
    res = evaluate_run(args.run, dataset=mine, scores=keep, **score)
    if args.against is not None:  # the other run on the same examples, with the same draws
        from .evaluate import compare_scores

        other = evaluate_run(args.against, dataset=theirs, scores=True, **theirs_score)
        res["against"] = {"run": str(Path(args.against).resolve()), "model":
                          other["model"], **compare_scores(res, other)}  # fmt: skip
        for key in ("samples", "bound", "noise", "run_status"):  # (how its score was made)
            if other.get(key) is not None:
                res["against"][key] = other[key]
        if scores is None:
            del res["log_densities"], res["dims"]
            res.pop("reference_log_densities", None)
            res.pop("files", None)
    if calibration is not None:
        res["calibration"] = calibration
    wrote = None
    if scores is not None:
        from .evaluate import save_scores

        columns = save_scores(scores, res, overwrite=args.overwrite)
        del res["log_densities"], res["dims"]
        res.pop("reference_log_densities", None)  # (the file holds them; not the JSON)
        res["scores"] = {"path": str(scores), "columns": columns, "examples": res["examples"]}
        bound = describe_bound(res)
        wrote = (
            f"wrote {_count(res['examples'], 'log-density', 'log-densities')} (nats"
            f"{', ' + bound if bound else ''}) to {scores}"
            + (f": columns {', '.join(columns)}" if scores.suffix.lower() == ".csv" else "")
        )
    if args.json:
        from .distributed import device
        from .runs import recorded_environment, run_config, run_environment

        # the setup the run was trained in (null for a run from before it was recorded; only
        # fields of the kinds flowforge writes) and the one this evaluation ran in: the last
        # digits of both numbers follow them
        trained = run_config(args.run)["resolved"].get("environment")
        res["environment"] = {
            "run": recorded_environment(trained),
            "eval": run_environment(device(args.device, "--device")),
        }
        res["run"] = str(Path(args.run).resolve())  # (absolute, as every command's --json)
        if isinstance(res.get("scores"), dict):
            res["scores"]["path"] = str(Path(res["scores"]["path"]).resolve())
        print(json.dumps(res, allow_nan=False))
    else:
        if "reconstruction" in res:  # an M-flow run
            _print_manifold_eval(res)
            return 0
        msg = f"{res['split']} NLL {_nats(res['nll'])}{_nll_se(res)} nats/example"
        if res["bits_per_dim"] is not None:
            msg += f", {res['bits_per_dim']:.4f} bits/dim"
        extra = describe_bound(res)
        if res.get("density_per"):  # a flow on a manifold: the density's unit
            extra = ", ".join(filter(None, (extra, f"a density per {res['density_per']}")))
        print(msg + f" ({_count(res['examples'], 'example')}{', ' + extra if extra else ''})")
        if "true_nll" in res:
            print(
                f"true NLL {_nats(res['true_nll'])} (the data's known density); gap "
                f"{_nats(res['gap'])} {_se(res['gap_se'])} nats, an estimate of KL(data || model)"
            )
        if "ode" in res:
            print(f"ODE: {describe_ode(res['ode'])}")
        for note in res.get("data_warnings", ()):  # found when the run was trained
            say_warning(f"the training data: {note}")
        for note in res.get("file_warnings", ()):  # found in the --data file now
            say_warning(note)
        unfinished = res.get("run_status")
        if unfinished:
            from .runs import describe_run_status

            print(f"note: {describe_run_status(unfinished, args.run)}")
        for key, what, noun in REFERENCES:
            short = f"that {noun}"
            if key in res:
                g = res[key]
                bpd = res.get(key.replace("_nll", "_bits_per_dim"))
                extra = f" ({bpd:.4f} bits/dim)" if bpd is not None else ""
                words, worse = against_reference(res, key)
                print(f"{what}: NLL {_nats(g)}{extra} on the same examples; {words}")
                if worse and unfinished:  # no advice on the model: it is not trained yet
                    print(f"note: the model scores worse than {short}, but its training is "
                          "unfinished")  # fmt: skip
                elif worse and args.data is not None:  # (rows of the user's, not the split)
                    say_warning(
                        f"the model scores worse than {short} on these rows (the comparison on "
                        "the run's own test split, `flowforge eval RUN`, is the one that judges "
                        "the model; on rows unlike the training data a simple reference can win)"
                    )
                elif worse:
                    say_warning(f"the model scores worse than {short}: {worse_hint(args.run)}")
        if "against" in res:
            c = res["against"]
            d, se = c["difference"], c["difference_se"]
            way = "worse" if d > 0 else "better"
            words = f"this run is {_nats(abs(d))}"
            if se is None:
                words += f" nats/example {way} (one example: no standard error)"
            else:
                words += f" +- {_nats(se)} nats/example {way}"
                words += " (within the noise of these examples)" if abs(d) <= 2 * se else ""
            how = describe_bound(c)
            print(f"{args.against} ({c['model']}): NLL {_nats(c['nll'])} on the same examples"
                  f"{f' ({how})' if how else ''}; {words}")  # fmt: skip
            if c.get("run_status"):
                from .runs import describe_run_status

                print(f"note: {describe_run_status(c['run_status'], args.against)}")
        if calibration is not None:
            from .evaluate import describe_calibration

            print("\n".join(describe_calibration(calibration)))
        if wrote:
            print(wrote)
    return 0


def _scores_path(args) -> Path | None:
    """``eval --scores FILE`` checked before anything is scored: a .csv or .npy file that is
    not there yet, or ``--overwrite``; None without ``--scores``."""
    from .errors import WorkbenchError
    from .evaluate import SCORE_SUFFIXES

    if args.scores is None:
        if args.overwrite:
            raise WorkbenchError("--overwrite goes with --scores (the file it may replace)")
        return None
    if not str(args.scores).strip():
        raise WorkbenchError("--scores is empty; expected a .csv or .npy file name")
    _output_file(str(args.scores), "--scores")
    out = Path(args.scores)
    if out.suffix.lower() not in SCORE_SUFFIXES:
        raise WorkbenchError(f"--scores {out}: expected a .csv or .npy file")
    if out.is_dir():
        raise WorkbenchError(f"--scores {out} is a folder; give a file name")
    _folder_exists(out, "--scores")
    if os.path.lexists(out) and not args.overwrite:  # (a link, even to nothing, is the user's)
        raise WorkbenchError(f"{out} exists; choose another --scores file or pass --overwrite")
    from .runs import not_the_runs

    not_the_runs(out, args.run, "--scores", "scores", also=(args.data,))
    return out


def _print_manifold_eval(res: dict) -> None:
    rec = f"{res['reconstruction']:.5f} {_se(res['reconstruction_se'], 5)}"
    noise = res.get("noise_level")
    print(
        f"{res['split']} reconstruction error |x - pi(x)|^2 {rec}"
        + (f" (the data's noise level {noise:.5f})" if noise is not None else "")
        + f" ({_count(res['examples'], 'example')})"
    )
    print(f"on-manifold NLL {res['nll']:.4f} {_se(res['nll_se'])} nats/example")
    if "true_nll" in res:
        print(
            f"true NLL {res['true_nll']:.4f} (the data's known density on its surface); gap "
            f"{res['gap']:.4f} {_se(res['gap_se'])} nats (mean absolute per example "
            f"{res['gap_mean_abs']:.4f})"
        )
        if noise is not None and res["reconstruction"] > 10 * noise:  # (off the surface)
            print(
                f"note: the reconstruction error is {res['reconstruction'] / noise:.0f} times "
                "the data's noise: the learned surface is still far from the data's, so the gap "
                "compares densities on different surfaces; train longer before reading it"
            )


def _progress(args) -> bool:
    """A progress bar for a command's training: asked for (no --no-progress) and on a terminal;
    a log file or a pipe gets the epoch lines, not the bar's carriage-return redraws."""
    return not args.no_progress and sys.stderr.isatty()


PNG_IMAGES, PNG_POINTS = 1024, 100_000  # what sample --out X.png draws at most
FIT_MAX_SAMPLES = 10**7  # fit-target's --batch-size and --n-eval (float64 weights: 80 MB)


def _check_fit_out(out: Path, overwrite: bool) -> None:
    """fit-target writes into an empty or new folder, or (with ``--overwrite``) over an
    earlier fit-target report; never into a training run or a folder of the user's."""
    from .errors import WorkbenchError
    from .report import is_vi_report
    from .runs import is_run

    if os.path.lexists(out) and not out.is_dir():
        raise WorkbenchError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if is_run(out):
        raise WorkbenchError(
            f"{out} holds a training run; fit-target never writes into one: use another --out"
        )
    if not is_vi_report(out):
        raise WorkbenchError(
            f"{out} is not empty and holds no fit-target report; flowforge never writes into "
            "a folder it did not create: use another --out"
        )
    if not overwrite:
        raise WorkbenchError(f"{out} holds a fit-target report; pass --overwrite or another --out")


def cmd_sample(args) -> int:
    from .data import reduced_bits_note
    from .errors import WorkbenchError
    from .evaluate import sample_context
    from .report import check_npz_out, sample_run, save_samples
    from .runs import load_run, run_config

    if not str(args.out).strip():
        raise WorkbenchError("--out is empty; expected a .png, .npy, .csv or .npz file name")
    _output_file(str(args.out), "--out")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npy", ".csv", ".npz"):
        raise WorkbenchError(
            f"--out {out}: expected a .png, .npy or .csv file (or, for a label-conditional "
            "run, .npz: the samples and their labels)"
        )
    if out.is_dir():
        raise WorkbenchError(f"--out {out} is a folder; give a file name")
    _folder_exists(out, "--out")
    if os.path.lexists(out) and not args.overwrite:  # (a link, even to nothing, is the user's)
        raise WorkbenchError(f"{out} exists; choose another --out or pass --overwrite")
    if args.n < 1:
        raise WorkbenchError(f"-n must be at least 1, got {args.n}")
    if not 0 <= args.temperature < math.inf:  # (0: every sample the image of the base's mode)
        raise WorkbenchError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.tol is not None and args.inverse == "sequential":
        raise WorkbenchError(
            "--tol is the parallel inverse's tolerance; the sequential inverse is exact: use "
            "--inverse parallel or auto, or drop --tol"
        )
    tol = 1e-4 if args.tol is None else args.tol
    if not 0 < tol < 1:  # (NaN too) at 1 and above, one sweep would pass for converged
        raise WorkbenchError(f"--tol must be a number in (0, 1), got {tol}")
    cfg = run_config(args.run)
    from .runs import not_the_runs

    also = (args.context_file,) if args.context_file is not None else ()
    not_the_runs(out, args.run, "--out", "samples", also)  # (after the arguments' own checks)
    with warnings.catch_warnings(record=True) as said:  # (e.g. a context past the training
        warnings.simplefilter("always")  # range: in --json's warnings too, said at the end)
        context, what, given = sample_context(cfg, args.label, args.context, args.context_file)
    check_npz_out(out, given)  # (before sampling)
    if out.suffix.lower() == ".png":  # a picture shows so many; more is memory for nothing
        total = args.n * (len(given[1]) if given else 1)
        images = len(cfg["resolved"]["data_shape"]) == 3
        cap, noun = (PNG_IMAGES, "images") if images else (PNG_POINTS, "points")
        if total > cap:
            raise WorkbenchError(
                f"--out {out}: a PNG shows at most {cap:,} {noun}, and {total:,} were asked "
                "for; write them to a .npy or .csv file"
            )
    from .distributed import device

    dev = device(args.device, "--device")  # (a missing GPU: one line, before any loading)
    flow = load_run(args.run).to(dev)
    context = None if context is None else context.to(dev)
    if args.inverse != "sequential":  # autoregressive layers: Jacobi sweeps (see set_inverse)
        from ..transforms import Autoregressive, set_inverse

        none = not any(isinstance(m, Autoregressive) for m in flow.modules())
        if none and (args.inverse != "auto" or args.tol is not None):
            option = f"--inverse {args.inverse}" if args.inverse != "auto" else "--tol"
            raise WorkbenchError(
                f"{option} sets how autoregressive layers (MAF, NSF-AR, TarFlow) invert; this "
                "run's model has none"
            )
        set_inverse(flow, args.inverse, tol=tol)
    ode, used = _ode_solver(flow, args.ode_method, args.ode_steps, args.ode_tol), None
    start = time.perf_counter()
    with ode:  # checks the solver's settings (one line if wrong) before sampling
        x = sample_run(flow, cfg, args.n, args.temperature, args.seed, context)
        from ..matching import _cnfs
        from .evaluate import solver_settings

        cnfs = _cnfs(flow)
        solved = solver_settings(cnfs)  # (None without a CNF)
        if cnfs:
            solved["nfe"] = [c.nfe_forward for c in cnfs]  # each block's, in the last solve
        if not isinstance(ode, contextlib.nullcontext):
            from ..matching import nfe
            from .evaluate import describe_solver

            counts = sorted({c.nfe_forward for c in cnfs})
            if len(cnfs) == 1:
                nfes = f"{_count(nfe(flow), 'function evaluation')} in the last solve"
            elif len(counts) == 1:  # a fixed grid: every block the same
                nfes = f"{_count(counts[0], 'function evaluation')} in the last solve of each "
                nfes += f"of its {len(cnfs)} blocks"
            else:
                each = ", ".join(str(c.nfe_forward) for c in cnfs)
                nfes = f"function evaluations in the last solve of its {len(cnfs)} blocks: {each}"
            used = f"ODE: {describe_solver(solved)}, {nfes}"
    title = f"{args.n} samples{what}, T={args.temperature:g}"
    save_samples(x, cfg, out, title=title, given=given, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    reduced = reduced_bits_note(cfg) if Path(out).suffix.lower() != ".png" else None
    from .report import outside_ranges

    warned = [*dict.fromkeys(str(w.message) for w in said), outside_ranges(x, cfg)]
    warned += [_unseen_integers(x, cfg), *_continuous_integers(x, cfg)]
    clamped = float(getattr(flow, "clamped", 0.0))  # draws outside the data's levels
    if clamped and cfg["resolved"].get("levels") is None:  # integer columns with bounds
        by = getattr(flow, "clamped_columns", None)
        where = ""
        if by is not None and by.dim() == 1 and len(by) == x.shape[-1]:
            from .report import _column_names, _pct

            names, shares = _column_names(cfg, len(by)), by.tolist()
            each = sorted(zip(names, shares), key=lambda e: -e[1])
            where = " (" + ", ".join(f"{n} {_pct(v)}" for n, v in each if v > 0) + ")"
        warned.append(
            f"{clamped:.2%} of the sampled values of the integer columns fell outside their "
            f"bounds and were clamped to them{where}: the model puts that mass outside the "
            "data's range, so these samples are not exactly the model's (the clamped values "
            "pile up on the bounds)"
        )
    elif clamped:
        levels = cfg["resolved"]["levels"]
        warned.append(
            f"{clamped:.2%} of the sampled values fell outside the data's {levels} "
            f"levels (0 to {levels - 1}) and were clamped to them: the model puts that mass "
            "outside the data's range, so these samples are not exactly the model's"
        )
    warned = [w for w in warned if w]
    if args.json:
        _print_json({
            "out": str(out.resolve()),
            "run": str(Path(args.run).resolve()),
            "model": cfg["model"]["name"],
            "samples": x.shape[0],
            "shape": list(x.shape),  # (a .npy file's array)
            "temperature": args.temperature,
            "seed": args.seed,
            "context": None if given is None else (
                {"columns": given[0], "rows": given[1]} if args.context_file is None else
                {"columns": given[0], "file": str(Path(args.context_file).resolve()),
                 "rows": len(given[1])}  # (the file's rows: not echoed, however many)
            ),  # fmt: skip
            "device": str(dev),
            "ode": solved,
            "seconds": seconds,
            "notes": [reduced] if reduced else [],
            "warnings": warned,  # (also on standard error, as without --json)
        })  # fmt: skip
    else:
        print(f"wrote {_count(x.shape[0], 'sample')}{what} to {out}")
        if used:
            print(used)
        if reduced:
            print(f"note: {reduced}")
    for w in warned:
        say_warning(w)
    return 0


def _ode_solver(flow, method, steps, tol):
    """The context that sets a continuous flow's ODE solver for ``flowforge sample``
    (``--ode-method/--ode-steps/--ode-tol``; a null one when none is given). Refused, in one
    line, for a model without a CNF."""
    from ..matching import _cnfs, solver
    from .errors import WorkbenchError

    if method is None and steps is None and tol is None:
        return contextlib.nullcontext()
    if not _cnfs(flow):
        raise WorkbenchError(
            "--ode-method, --ode-steps and --ode-tol set the ODE solver of a continuous flow "
            "(the cnf and ffjord models); this run's model has none"
        )
    from ..transforms.continuous import _FIXED, MIN_TOL

    if tol is not None and not (math.isfinite(tol) and MIN_TOL <= tol < 1):
        raise WorkbenchError(f"--ode-tol must be a number in [{MIN_TOL:g}, 1), got {tol}")
    if steps is not None and method is None:
        method = "rk4"  # as flowforge.matching.sample

    used = method or _cnfs(flow)[0].method  # the solver asked for, or the model's own
    if tol is not None and used in _FIXED:
        raise WorkbenchError(
            f"--ode-tol sets an adaptive solver's tolerance, but {used} steps on a fixed grid: "
            "set --ode-steps instead (or --ode-method dopri5 with --ode-tol)"
        )
    if steps is not None:  # in the command's words (the library's name its arguments)
        budget = min(c.max_steps for c in _cnfs(flow))
        if steps < 1 or steps > budget:
            raise WorkbenchError(
                f"--ode-steps must be an integer in [1, {budget:,}] (the model's step budget), "
                f"got {steps:,}"
            )
        if used not in _FIXED:
            raise WorkbenchError(
                f"--ode-steps sets a fixed grid, but --ode-method {used} is adaptive: use a "
                f"fixed-grid method ({', '.join(sorted(_FIXED))}), or --ode-tol for {used}"
            )
    return solver(flow, method, steps=steps, rtol=tol, atol=tol)


def cmd_report(args) -> int:
    from .errors import WorkbenchError
    from .report import MAX_TEMPERATURES, write_report

    temps = None
    if args.temperatures is not None:
        temps = []
        for t in args.temperatures.split(","):
            try:
                temps.append(float(t))
            except ValueError:
                temps.append(math.nan)
            if not (math.isfinite(temps[-1]) and temps[-1] >= 0):
                raise WorkbenchError(
                    "--temperatures: expected comma-separated finite numbers >= 0, got "
                    f"{t.strip()!r}"
                )
        if len(temps) > MAX_TEMPERATURES:
            raise WorkbenchError(
                f"--temperatures: at most {MAX_TEMPERATURES} (one sample grid each), got "
                f"{len(temps)}"
            )
        temps = tuple(temps)
    summary = {} if args.json else None
    path = write_report(
        args.run,
        split=args.split,
        temperatures=temps,
        seed=args.seed,
        summary=summary,
        test=not args.no_test,
        out=args.out,
    )
    if args.json:
        _print_json({"run": str(Path(args.run).resolve()), "split": args.split, **summary})
        return 0
    print(f"report: {path}")
    from .runs import describe_run_status, run_status

    status = run_status(args.run)  # (the report's first row says it too)
    if status is not None:
        print(f"note: {describe_run_status(status, args.run)}")
    return 0


def _output_file(given: str, flag: str) -> None:
    """A ``WorkbenchError`` for an output file name that names a folder (``s.csv/``: pathlib
    drops the slash, and a file was written) or something other than a file (a pipe, which
    the atomic write would replace by a file)."""
    from .errors import WorkbenchError

    if given.endswith(("/", os.sep)):
        raise WorkbenchError(f"{flag} {given} ends with a slash; expected a file name")
    path = Path(given)
    if os.path.exists(path) and not path.is_dir() and not path.is_file():  # (a link: its target)
        raise WorkbenchError(
            f"{flag} {given} is not a regular file (a pipe, socket or device); writing replaces "
            "a file whole, so give a file name"
        )


def _folder_exists(out: Path, flag: str) -> None:
    """A ``WorkbenchError`` unless the folder of an output file exists: a mistyped folder is
    not made (a tree of typos), by any command."""
    from .errors import WorkbenchError

    folder = Path(out).parent
    if not os.path.lexists(folder):
        raise WorkbenchError(f"{flag} {out}: there is no folder {folder}; create it first")
    if not folder.is_dir():  # (a file, or a link to nothing: said before the work, not after)
        raise WorkbenchError(f"{flag} {out}: {folder} is not a folder")


def cmd_compress(args) -> int:
    from .compress import compress_run

    res = compress_run(
        args.run,
        args.out,
        args.data,
        args.split,
        args.chunk,
        args.threads,
        args.overwrite,
        not args.no_baselines,
    )
    if args.json:
        print(json.dumps(res, allow_nan=False))
        return 0
    print(
        f"{res['data']}: {res['examples']:,} example{'s' * (res['examples'] != 1)}, "
        f"{res['dims']:,} values -> {res['out']} "
        f"({res['bytes']:,} bytes)\n"
        f"  model NLL   {res['nll_bits_per_dim']:.4f} bits/dim "
        f"({res['nll_nats_per_example']:.2f} nats/example)\n"
        f"  file        {res['file_bits_per_dim']:.4f} bits/dim "
        f"(overhead {res['overhead_percent']:+.2f}% over the NLL; "
        f"{res['overhead_percent_without_header']:+.2f}% without the "
        f"{res['header_bytes']}-byte header)\n"
        f"  speed       encode {res['encode_per_s']:.0f} examples/s, "
        f"decode {res['decode_per_s']:.0f} examples/s (decoded identical)\n"
        f"  sha256      {res['sha256']}"
    )
    if res["bytes"] > res["raw_bytes"]:
        print(
            f"  note        the file is larger than the raw data ({res['raw_bytes']:,} bytes "
            f"as decompress writes them): its {res['header_bytes']}-byte header is paid once "
            "per file, so code more examples in one file"
        )
    if "initial_bits" in res:
        print(
            f"  bits-back   initial bits {res['initial_bits']:,} "
            f"({res['initial_bits_per_dim']:.4f} bits/dim, included in the file), "
            f"{res['scheme']} scheme"
            + (
                f"; {res['escapes']} example(s) too far in the model's tails for bits-back, "
                "coded uniformly"
                if res.get("escapes")
                else ""
            )
        )
    if res.get("base_escapes"):
        r = res["z_range"]
        # (the base's Gaussian alone gives a value past r at least r^2 / 2 nats: beyond the
        # escape's 32 bits and its symbol for the default r = 32, not for a small r)
        cheaper = r * r / 2 / math.log(2) > 40
        why = ", more cheaply than the model's density there" if cheaper else ""
        if cheaper and res["overhead_percent"] < 0:
            why += (
                f"; the file is {-res['overhead_percent']:.2f}% below the model's NLL: for "
                "those rows the NLL, not the file, is the number that is off"
            )
        print(
            f"  escapes     {res['base_escapes']:,} latent value(s) outside the base's table "
            f"[-{r}, {r}) coded raw (about 32 bits each){why}"
        )
    if res["classical"]:
        print(
            "  classical   "
            + ", ".join(f"{k} {v:.4f}" for k, v in res["classical"].items())
            + " bits/dim"
        )
    return 0


def cmd_decompress(args) -> int:
    from .compress import decompress_file

    res = decompress_file(args.file, args.model, args.out, args.overwrite, args.force)
    if args.json:
        print(json.dumps(res, allow_nan=False))
        return 0
    print(
        f"wrote {res['examples']} examples of shape {tuple(res['shape'])} to {res['out']} "
        f"({res['decode_per_s']:.0f} examples/s); sha256 {res['sha256']}"
    )
    if "note" in res:
        print(f"note: {res['note']}")
    return 0


def _continuous_integers(x, cfg: dict) -> list[str]:
    """Warnings for the columns of whole numbers a table run models as continuous, whose
    samples are then not whole: those train warned of (few values that repeat), repeated, and
    those of many values it leaves out (``resolved.whole_columns``: a count in the
    thousands)."""
    from .data import INTEGERS_NOTE

    out = []
    whole = cfg["resolved"].get("whole_columns")
    if isinstance(whole, list) and whole and x.dim() == 2:
        from .report import _column_names

        names = _column_names(cfg, x.shape[1])
        listed = [names[j] for j in whole if isinstance(j, int) and 0 <= j < len(names)][:8]
        if listed:
            out.append(
                f"column(s) {', '.join(listed)}{' ...' if len(whole) > 8 else ''} hold only "
                "whole numbers in the training data, and the model is continuous: its samples "
                "are not whole there (round them, or declare the columns in data.integers, with "
                "bounds, and train again)"
            )
    for note in cfg["resolved"].get("data_warnings") or ():
        if isinstance(note, str) and INTEGERS_NOTE in note:
            out.append(
                f"the training data: {note.split(INTEGERS_NOTE)[0]}{INTEGERS_NOTE}, and this "
                "run models them as "
                "continuous: its samples hold non-integer values there (declare them in "
                "data.integers, with bounds, and train again for integer samples)"
            )
    return out


UNSEEN_SHARE = 0.01  # samples on an integer value the training data never held: said


def _unseen_integers(x, cfg: dict) -> str | None:
    """A warning naming the few-valued integer columns (``resolved.integer_values``) where 1%
    or more of the samples take a value the training data never held: right for a count's
    tail, wrong for category codes with gaps (1, 2, 9), which are modelled as ordered numbers
    and get samples between them."""
    seen = cfg["resolved"].get("integer_values")
    if not isinstance(seen, dict) or x.dim() != 2:
        return None
    import torch

    from .report import _column_names, _pct

    names, found = _column_names(cfg, x.shape[1]), []
    for key, values in seen.items():
        try:
            j, values = int(key), [float(v) for v in values]
        except (TypeError, ValueError):  # (a config is data: anything else, no verdict)
            return None
        if not 0 <= j < x.shape[1] or not values:
            continue
        col = x[:, j].double().cpu()
        new = ~torch.isin(col, torch.tensor(values, dtype=torch.float64))
        share = float(new.double().mean()) if len(col) else 0.0
        if share >= UNSEEN_SHARE:
            shown = sorted(set(col[new].tolist()))
            listed = ", ".join(f"{v:g}" for v in shown[:6]) + (" ..." if len(shown) > 6 else "")
            found.append(f"{names[j]} {_pct(share)} ({listed})")
    if not found:
        return None
    return (
        f"samples take integer values the training data never held in column(s) "
        f"{'; '.join(found)}: expected in a count's tail; for category codes it means codes "
        "that do not exist, as integer columns are modelled as ordered numbers: recode the "
        "categories as 0 to K-1 without gaps (and declare data.bounds.NAME=[0,K-1])"
    )


def cmd_demo(args) -> int:
    from .errors import RunError
    from .evaluate import describe_bound, evaluate_run
    from .report import write_report
    from .runner import train

    cfg = demo_config(args.model, args.epochs)
    try:
        result = train(cfg, args.out, overwrite=args.overwrite, progress=_progress(args))
    except RunError as e:
        if "already holds this run;" not in str(e):
            raise
        from .errors import shell_word

        out = shell_word(args.out)
        raise RunError(  # (demo has no --resume: train's words would name one)
            f"{args.out} already holds the demo's run; flowforge demo --overwrite trains it "
            f"again, flowforge train --out {out} --resume continues it"
        ) from None
    if result["status"] == "interrupted":
        return _finish_train(result)
    res = evaluate_run(args.out, "test")
    report = write_report(args.out)
    print(
        f"test NLL {_nats(res['nll'])}{_nll_se(res)} nats/example, "
        f"{res['bits_per_dim']:.4f} bits/dim ({res['examples']} examples"
        + "".join(f", {b}" for b in [describe_bound(res)] if b)
        + ")"
    )
    print(f"report: {report}")
    return 0


def cmd_fit_target(args) -> int:
    import torch

    from .. import io, targets
    from .errors import WorkbenchError
    from .report import write_vi_report
    from .vi import (
        CLI_OPTIONS,
        build_vi_model,
        evaluate_target,
        fit_target,
        summary_line,
    )

    target = targets.get(args.target)  # unknown target: ValueError, one line
    # (JSON or YAML, as train takes them)
    kwargs = _parse_mapping(args.model_kwargs, "--model-kwargs") if args.model_kwargs else {}
    checks = (
        ("--steps", args.steps, 1, 10**8),
        ("--batch-size", args.batch_size, 1, FIT_MAX_SAMPLES),
        ("--n-eval", args.n_eval, 2, FIT_MAX_SAMPLES),
    )  # fmt: skip (the ELBO's standard error needs 2)
    for flag, v, lo, hi in checks:
        if not lo <= v <= hi:
            raise WorkbenchError(f"{flag} must be between {lo} and {hi:,}, got {v}")
    for key, why in (
        ("features", f"the target {args.target!r} sets it ({target.dim})"),
        ("context_features", "fit-target fits unconditional flows"),
    ):
        if key in kwargs:
            raise WorkbenchError(f"--model-kwargs: drop {key!r}: {why}")
    anneal = min(1000, args.steps // 3) if args.anneal is None else args.anneal
    if anneal < 0:
        raise WorkbenchError(f"--anneal must be 0 or more, got {anneal}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise WorkbenchError(f"--lr must be positive, got {args.lr}")
    out = Path(args.out)
    _check_fit_out(out, args.overwrite)
    torch.manual_seed(args.seed)
    if "layers" in kwargs and args.layers is not None and kwargs["layers"] != args.layers:
        raise WorkbenchError(
            f"--model-kwargs sets layers {kwargs['layers']!r}, and --layers {args.layers}: give "
            "one of them"
        )
    layers = kwargs.pop("layers", args.layers)
    try:
        flow = build_vi_model(args.model, target.dim, layers, **kwargs)
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"model {args.model!r}: {' '.join(str(e).split())}") from None
    if flow.vi_sizing and not args.quiet:  # (as train says how it sized a model)
        chosen = ", ".join(f"{k}={v}" for k, v in flow.vi_sizing.items())
        params = sum(p.numel() for p in flow.parameters())
        print(
            f"model {args.model}: {params:,} parameters, sized for a {target.dim}-d target: "
            f"{chosen} (set them with --model-kwargs to override)",
            flush=True,
        )
    with _targets_own_errors(target):
        fit = fit_target(
            flow,
            target,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            anneal=anneal,
            seed=args.seed,
            # (the bar only on a terminal, as train's: a log file gets no carriage-return
            # redraws)
            log_every=0 if args.quiet or not sys.stderr.isatty() else max(1, args.steps // 10),
            option_names=CLI_OPTIONS,  # (its hints name its flags)
        )
    if fit["status"] == "interrupted":  # a partial fit is not reported as the one asked for
        print(
            f"flowforge: interrupted after {fit['steps']} of {args.steps} steps; nothing "
            "written (fit-target has no --resume: run it again)",
            file=sys.stderr,
        )
        return 130
    if 2 * fit["skipped"] > fit["steps"]:  # the flow blew up and stayed there: no fit to report
        params = sum(p.numel() for p in flow.parameters())
        raise WorkbenchError(
            f"the fit diverged: {fit['skipped']} of {fit['steps']} steps had a non-finite loss "
            "or gradient and were skipped, so the flow barely trained (nothing written): a "
            f"lower --lr (it was {args.lr:g}), a smaller model (this {args.model} has "
            f"{params:,} parameters: --layers, --model-kwargs), a shorter --anneal, or another "
            "--seed"
        )
    with _targets_own_errors(target):
        # (the evaluation's samples follow --seed, as the fit's do)
        metrics = evaluate_target(flow, target, n=args.n_eval, seed=args.seed + 1)
        title = f"{args.model}" + (f" K={args.layers}" if args.layers else "")
        # (what the fit was, so that two fits' folders tell apart, and one can be made again)
        fit = {**fit, "target": args.target, "model": args.model, "layers": layers,
               "model_kwargs": kwargs, "seed": args.seed}  # fmt: skip
        report = write_vi_report(out, flow, target, metrics, fit, title)
    if getattr(flow, "config", None) is not None:
        io.save(flow, out / "model.ff")
    print(summary_line(metrics))
    for w in metrics["warnings"]:  # a low ESS, a heavy tail, an impossible log Z
        say_warning(w)
    if fit["skipped"]:  # (their loss or gradient was not finite: the fit is that much shorter)
        say_warning(
            f"{fit['skipped']} of {fit['steps']} steps were skipped (a non-finite "
            "loss or gradient); a lower --lr may help"
        )
    print(f"report: {report}")
    return 0


@contextlib.contextmanager
def _targets_own_errors(target):
    """An exception raised inside a target's own function (a user's ``--import`` module) is
    said as the target's error, not flowforge's internal one."""
    from .errors import WorkbenchError

    code = getattr(getattr(target, "fn", None), "__code__", None)
    try:
        yield
    except Exception as e:
        if isinstance(e, (WorkbenchError, ValueError, OSError, KeyboardInterrupt)) or code is None:
            raise
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code is not code:
            tb = tb.tb_next
        if tb is None:  # not from the target's function
            raise
        raise WorkbenchError(
            f"target {target.name!r} raised {type(e).__name__}: {_one_line(e)} (an error in "
            "the target's own code; --debug shows where)"
        ) from e


# -- parser --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with a wrong option or value said in one line as the command's own errors
    are (argparse prints its usage block first), and where to read the options. Options are
    taken as written: ``--ep 1`` is refused, not read as ``--epochs`` (an abbreviation that a
    later option makes ambiguous would break a script)."""

    def __init__(self, *args, **kwargs):
        import re

        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # a value such as -1e-3 is a number, not an option (argparse's own pattern takes -1
        # and -0.001 only, and said "expected one argument" of --lr -1e-3)
        self._negative_number_matcher = re.compile(
            r"^-(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|infinity|nan)$", re.IGNORECASE
        )

    def error(self, message: str):
        self.exit(2, f"flowforge: error: {message} (see: {self.prog} --help)\n")


def _version() -> str:
    from .. import __version__

    return __version__


def make_parser() -> argparse.ArgumentParser:
    # --debug before or after the command: the command's own flag has no default, so that
    # `flowforge --debug CMD` is not reset to False by CMD's parser
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    common.add_argument(
        "--import",
        dest="imports_cmd",  # (after the command: kept apart from those before it)
        action="append",
        metavar="MODULE",
        default=argparse.SUPPRESS,
        help="import a module (a name, or a .py file) that registers models of your own "
        "with ff.models.register (or, for fit-target, targets with ff.targets.register) "
        "first; repeatable",
    )
    p = _Parser(
        prog="flowforge", description="Train, evaluate, sample and report normalizing flows."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version=f"flowforge {_version()}")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE", default=[],
                   help="import a module (a name, or a .py file) that registers models or "
                   "targets of your own first; repeatable")  # fmt: skip
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    p.commands = sub.choices  # (each command's parser, for its own errors)

    s = sub.add_parser("list", parents=[common], help="list models and datasets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("train", parents=[common], help="train a model into a run folder")
    s.add_argument("--model", help="a name from 'flowforge list'")
    s.add_argument("--data", help="a dataset name, a .npy/.npz/.csv file or an image folder")
    s.add_argument("--out", required=True, help="the run folder")
    s.add_argument("--config", help="a YAML, TOML or JSON config file (flags override it)")
    s.add_argument("--model-kwargs", help="builder arguments as JSON, e.g. '{\"layers\": 4}'")
    s.add_argument("--data-kwargs", help="dataset options as JSON, e.g. '{\"n_train\": 2000}'")
    s.add_argument("--layout", help="auto (default), vector or image")
    s.add_argument(
        "--seed",
        type=_seed,
        help="seeds the weights, the batches and the noise (default 0); epoch e's order is "
        "seeded by seed + e, so seeds s and s + 1 share orders shifted by one: give a sweep's "
        "seeds far apart (0, 1000, 2000)",
    )
    s.add_argument("--epochs", type=int, help="training epochs (default 50)")
    s.add_argument("--batch-size", type=int, help="the global batch size (default 64)")
    s.add_argument("--lr", type=float, help="learning rate (default 1e-3, or the model's own)")
    s.add_argument("--optimizer", help="adam, adamw (default) or adamax")
    s.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    s.add_argument(
        "--warmup-steps",
        type=_warmup,
        help="linear warm-up steps, or auto (default: 100, or a tenth of a shorter run)",
    )
    s.add_argument(
        "--grad-clip", type=float, help="largest global gradient norm (default 10; 0: off)"
    )
    s.add_argument(
        "--patience", type=int, help="early-stopping patience in epochs (default 20; 0: off)"
    )
    s.add_argument(
        "--objective",
        help="nll (default); for a CNF, flow-matching, flow-matching-ot or flow-matching-vp; "
        "for an M-flow (which needs one of them), mflow or mflow-alternating",
    )
    s.add_argument("--limit", type=int, help="use only the first N training examples")
    s.add_argument(
        "--conditional",
        choices=["label"],
        help="label: a class-conditional model (one-hot labels as context: digits, or a "
        "folder of one subfolder per class)",
    )
    s.add_argument(
        "--target-columns",
        help="a table's columns to model, e.g. 0,1: p(those | the other columns)",
    )
    s.add_argument(
        "--dequantization",
        choices=["uniform", "variational"],
        help="for discrete data: uniform noise (default) or a learned q(u|x) (Flow++)",
    )
    s.add_argument(
        "--base",
        help="base distribution: normal (default), diag, mixture, made-mog or class-gaussian",
    )
    s.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="set any config key, e.g. --set train.log_every=1 (repeatable)",
    )
    s.add_argument(
        "--init-from",
        metavar="RUN",
        help="start this new run from RUN's best model (the same architecture; RUN's model, data "
        "and layout where none is given; its preprocessing statistics are kept)",
    )
    s.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    s.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    s.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object (the epoch lines go to standard error)",
    )
    _threads_option(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", parents=[common], help="NLL of a run's best model")
    s.add_argument("run")
    s.add_argument(
        "--split", help="train, val or test (default test); not with --data, scored whole"
    )
    s.add_argument(
        "--data",
        help="evaluate on this file or image folder instead (a label-conditional run: a CSV "
        "whose first column is label, or an .npz with arrays x and labels)",
    )
    s.add_argument(
        "--scores",
        metavar="FILE",
        help="also write each example's log-density (nats, the bound or estimate the NLL "
        "averages; bits/dim too for discrete data) to a .csv (a header names the columns) or "
        ".npy file, in the order of the split or file",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing --scores file")
    s.add_argument(
        "--against",
        metavar="OTHER_RUN",
        help="also score another run on the same examples (its split of the same data, or "
        "--data's file) and give the difference with its paired standard error",
    )
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seeds the draws of the score: dequantization noise, Hutchinson trace probes, "
        "Russian-roulette terms (default 0)",
    )
    s.add_argument("--batch-size", type=int, default=1024, help="examples at once (default 1024)")
    s.add_argument(
        "--samples",
        type=int,
        default=1,
        help="draws averaged per example where the score is an estimate (dequantized data, "
        "Hutchinson traces, residual flows' series; default 1)",
    )
    s.add_argument(
        "--iw",
        action="store_true",
        help="with --samples K >= 2: the importance-weighted bound over the K draws (tighter) "
        "instead of their mean (exact log-densities only: not with --trace hutchinson)",
    )
    s.add_argument(
        "--trace",
        choices=("exact", "hutchinson"),
        default="exact",
        help="continuous flows: the divergence, exact (default; D backward passes per "
        "evaluation) or Hutchinson's estimate (one; unbiased, noisier)",
    )
    s.add_argument(
        "--ode-tol",
        type=float,
        help="continuous flows: the adaptive solver's rtol = atol (default 1e-5, or the "
        "model's own if tighter)",
    )
    s.add_argument(
        "--calibration",
        action="store_true",
        help="a --target-columns run as a posterior q(targets | context): SBC, HPD coverage "
        "and TARP on the split, or on --data's file of fresh simulations (its rows taken as "
        "draws from the joint; docs/diagnostics.md)",
    )
    s.add_argument(
        "--calibration-samples",
        type=int,
        help="with --calibration: posterior draws per row (default 100)",
    )
    s.add_argument(
        "--calibration-pairs",
        type=int,
        help="with --calibration: at most this many rows of the split (or file), a seeded "
        "random subset "
        "(default 1000)",
    )
    _device_option(
        s,
        "scores",
        "the figures agree up to the last digits (and the dequantization noise, "
        "drawn on the device)",
    )
    _threads_option(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", parents=[common], help="draw samples from a run's model")
    s.add_argument("run")
    s.add_argument("-n", type=int, default=64, help="the number of samples (default 64)")
    s.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scales the base's noise (default 1: the model itself; 0: the image of the "
        "base's mode for a Gaussian base); a mixture base (mixture, made-mog) and an integer "
        "flow's prior narrow each component but still pick it as at 1, so there it changes "
        "little and 0 is no mode",
    )
    s.add_argument(
        "--out",
        required=True,
        help="a .png, .npy or .csv file, or an .npz (the samples and their labels) for a "
        "label-conditional run",
    )
    s.add_argument("--label", help="class label(s) of a class-conditional run, e.g. 3 or 0,1,2")
    s.add_argument(
        "--context",
        help="raw context values of a column-conditional run, e.g. '1.5,2' (rows split by ';')",
    )
    s.add_argument(
        "--context-file",
        metavar="FILE",
        help="a table file whose rows are the contexts (its context columns found by name: "
        "the run's own table or held-out rows of it, or a file of those columns alone); -n "
        "samples for each row",
    )
    s.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seeds the draws (default 0: the same samples every time; another seed, others; "
        "with --inverse auto, a run whose timing picks the other inverse differs within --tol)",
    )
    s.add_argument("--overwrite", action="store_true")
    s.add_argument(
        "--inverse",
        choices=("sequential", "parallel", "auto"),
        default="auto",
        help="how autoregressive layers invert: 'auto' (default) times both ways on the first "
        "batch and keeps the parallel one where it is 1.25x faster or more, 'sequential' is the "
        "exact step-by-step inverse (identical files for a seed), "
        "'parallel' always uses Jacobi sweeps; the sweeps stop at --tol and fall back to the "
        "exact inverse when they do not reach it",
    )
    s.add_argument(
        "--tol",
        type=float,
        default=None,
        help="tolerance of the parallel inverse, in (0, 1) (default 1e-4)",
    )
    s.add_argument(
        "--ode-method",
        help="continuous flows (cnf, ffjord): the ODE solver, e.g. dopri5 (adaptive) or rk4, "
        "midpoint, euler (fixed grid); default: the model's own (dopri5), rk4 with --ode-steps",
    )
    s.add_argument(
        "--ode-steps",
        type=int,
        help="continuous flows: steps of a fixed-grid solver, from 1 to the model's step budget",
    )
    s.add_argument(
        "--ode-tol",
        type=float,
        help="continuous flows: an adaptive solver's rtol = atol, in [1e-12, 1)",
    )
    _device_option(
        s,
        "samples",
        "a GPU draws from its own random stream: other samples than the CPU's for "
        "the same --seed, from the same model",
    )
    s.add_argument("--json", action="store_true", help="print what was written as one JSON object")
    _threads_option(s)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("report", parents=[common], help="write <run>/report.html (or --out's)")
    s.add_argument("run")
    s.add_argument(
        "--split", default="val", help="the split the page scores and plots (default val)"
    )
    s.add_argument(
        "--no-test",
        action="store_true",
        help="leave the test split out (by default the page also scores it): to compare the "
        "runs of a sweep on validation without seeing their test NLLs",
    )
    s.add_argument(
        "--temperatures",
        help="comma-separated sampling temperatures of an image run's sample grids (default: "
        "0.5,0.7,0.85,1 unconditional, 1,0.7 per class; a table's samples stay at 1)",
    )
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument(
        "--out",
        metavar="FOLDER",
        help="write report.html and report/ into FOLDER instead of the run (a read-only or "
        "shared run): a new folder, or one holding only an earlier report",
    )
    s.add_argument(
        "--json", action="store_true", help="print the page's path and figures as one JSON object"
    )
    _threads_option(s)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "demo",
        parents=[common],
        help="train on digits, evaluate on the test split, write the report",
    )
    s.add_argument("--out", default="runs/demo", help="the run folder (default runs/demo)")
    s.add_argument("--epochs", type=int, help="training epochs (default: the demo config's)")
    s.add_argument(
        "--model",
        help=f"default {DEMO['model']['name']} with the demo's settings (hidden "
        f"{DEMO['model']['kwargs']['hidden']}, actnorm); another model is built with its own "
        "defaults, sized to the data",
    )
    s.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out if there is one"
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads_option(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser(
        "fit-target",
        parents=[common],
        help="variational inference: fit a flow to an unnormalised target by reverse KL",
    )
    s.add_argument(
        "--target",
        required=True,
        help="one of flowforge's (flowforge list names them) or one of your own "
        "(ff.targets.register in a module given to --import)",
    )
    s.add_argument("--model", default="planar", help="a model from 'flowforge list'")
    s.add_argument("--layers", type=int, help="number of layers (or residual blocks)")
    s.add_argument("--model-kwargs", help="more builder arguments as JSON")
    s.add_argument("--out", required=True, help="the report folder")
    s.add_argument("--steps", type=int, default=3000, help="optimisation steps (default 3000)")
    s.add_argument("--batch-size", type=int, default=256, help="samples a step (default 256)")
    s.add_argument("--lr", type=float, default=5e-3, help="learning rate (default 5e-3)")
    s.add_argument(
        "--anneal",
        type=int,
        help="annealing steps (0: off; default min(1000, steps / 3))",
    )
    s.add_argument("--n-eval", type=int, default=20000, help="samples for the diagnostics")
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    _threads_option(s)
    s.set_defaults(func=cmd_fit_target)

    s = sub.add_parser(
        "compress",
        parents=[common],
        help="losslessly compress integer data with a run's integer flow (IDF), or a continuous "
        "flow with levels (bits-back coding), into a .ffz file",
    )
    s.add_argument("run")
    s.add_argument("--data", help="a dataset name or a .npy/.npz/.csv file or image folder")
    s.add_argument("--split", help="with a dataset: train, val or test (default test)")
    s.add_argument("--out", required=True, help="the .ffz file")
    s.add_argument(
        "--chunk", type=int, help="examples per network call (default 64, fewer for large images)"
    )
    s.add_argument(
        "--threads", type=int, default=1, help="torch threads while coding (1 to 64; recorded)"
    )
    s.add_argument("--no-baselines", action="store_true", help="skip the classical codecs")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("decompress", parents=[common], help="decode a .ffz file to a .npy file")
    s.add_argument("file")
    s.add_argument("--model", required=True, help="the run whose model wrote the file")
    s.add_argument("--out", required=True, help="a .npy file")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--force", action="store_true", help="decode a file made in another environment")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_decompress)
    return p


# The models that need an optional package, and its extra (`flowforge list` says so where it
# is missing).
MODEL_PACKAGES = {"cnf": ("torchdiffeq", "ode"), "ffjord": ("torchdiffeq", "ode")}

# Optional packages (top-level module name) and the pyproject extra that installs each.
EXTRAS = {
    "safetensors": "workbench",  # (the library's io extra; the command needs all of these)
    "scipy": "workbench",
    "torchdiffeq": "ode",
    "sklearn": "workbench",
    "matplotlib": "workbench",
    "tqdm": "workbench",
    "yaml": "workbench",
    "PIL": "workbench",
    "tomli": "workbench",
    "constriction": "compress",
}

# Options whose value may start with "-" (negative numbers: --context -1.78,0.5). argparse reads
# such a value as an option unless it is attached (--context=-1.78,0.5); attach it here.
_SIGNED_VALUES = ("--context",)


def _attach_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = str(argv[i])
        if a in _SIGNED_VALUES and i + 1 < len(argv) and str(argv[i + 1]).startswith("-"):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def say_warning(text: str) -> None:
    """:func:`flowforge.workbench.runner.say_warning`: one ``flowforge: warning:`` line on
    standard error (imported when a warning is said: ``--help`` stays quick)."""
    from .runner import say_warning as say

    say(text)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (the library's, say a compiled spline falling back to eager, or the
    Trainer's) printed as one ``flowforge: warning:`` line, like the command's own, without
    file and line (above a progress bar, where one is drawn). Matplotlib's warning for each
    character its font lacks (a CJK column name: three per character and figure) is said
    once, as one line."""
    text = _one_line(message)
    if text.startswith("Glyph ") and " missing from " in text and "font" in text:
        if "glyph" in _said:
            return
        _said.add("glyph")
        text = (
            "the figures' font lacks some characters of the names they show, which are drawn "
            f"as boxes (the page names them in full); first: {text}"
        )
    say_warning(text)


_said: set = set()  # (what is said once per command)


def _import_user_module(name: str, before: frozenset = frozenset()) -> None:
    """Import ``name``: a ``.py`` file by its path (under its own name unless that would
    shadow another module, with its folder on ``sys.path`` for the modules beside it), or a
    module by name, found from the current folder first (as ``python -m`` would). A file that
    this command has imported already (another ``--import`` file imports it) is not run again;
    ``before``: the modules loaded before this command's imports."""
    import importlib
    import importlib.util

    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {name}")
        path = path.resolve()
        folder = str(path.parent)
        if folder not in sys.path:  # its neighbours import as they do under `python file.py`
            sys.path.append(folder)
        key = path.stem
        held = sys.modules.get(key)
        same = held is not None and Path(getattr(held, "__file__", "") or "").resolve() == path
        if same and key not in before:
            return  # (imported already by this command: another --import file imports it)
        if not key.isidentifier() or (held and not same) or _importable_elsewhere(key, path):
            # under a name of its own: a file called copy.py must not replace the module copy
            key = f"_flowforge_import_{path.stem}"
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
        return
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(here)


def _importable_elsewhere(name: str, path: Path) -> bool:
    """Whether ``import name`` finds a module other than the file ``path`` (a standard or
    installed module the file's name would shadow)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    origin = getattr(spec, "origin", None)
    return spec is not None and not (origin and Path(origin).resolve() == path)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status. An interrupt (Ctrl-C, SIGTERM, SIGHUP) at any
    point, start-up included, is one line and status 130."""
    return _run(argv, exiting=False)


def command() -> int:
    """The ``flowforge`` command and ``python -m flowforge``: :func:`main`, after which the
    interrupts are ignored while the process exits. Its result is out by then, and torch's
    clean-up at exit (tenths of a second) cut short by a late second Ctrl-C printed a
    traceback, or ended a finished run by the signal, with no word."""
    return _run(None, exiting=True)


def _run(argv: list[str] | None, exiting: bool) -> int:
    _SIGNALLED.clear()
    _OWNS_PROCESS[:] = [exiting]
    stderr = sys.stderr
    was = (getattr(stderr, "line_buffering", None), getattr(stderr, "write_through", None))
    try:  # one write per line, also where stderr is unbuffered (PYTHONUNBUFFERED): the lines
        # of torchrun's processes, which share it, interleaved mid-line
        stderr.reconfigure(line_buffering=True, write_through=False)
    except (AttributeError, ValueError, OSError):  # (not a text stream we can set)
        was = None
    handlers = _interrupt_handlers()
    threads = _threads_now()
    try:
        _import_numpy()
        if exiting or "torch" not in sys.modules:  # (torch not yet imported: no state)
            return _main(argv)
        from .._util import fork_rng

        with fork_rng():  # (from Python: the caller's random numbers do not move)
            return _main(argv)
    except KeyboardInterrupt:
        print("flowforge: interrupted", file=sys.stderr)
        return 130
    finally:
        for s, h in handlers.items():
            signal.signal(s, signal.SIG_IGN if exiting else h)
        if not exiting:  # main() from Python: the process is the caller's again as it was
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            if was is not None:
                with contextlib.suppress(AttributeError, ValueError, OSError):
                    stderr.reconfigure(line_buffering=was[0], write_through=was[1])


_OWNS_PROCESS: list[bool] = [True]  # whether the command runs as its own process (not main())


def _threads_now() -> int | None:
    """torch's intra-op threads, where torch is imported already (None: not yet, and then
    the command's --threads leaves torch's own default behind it)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _import_numpy() -> None:
    """numpy, whole, with the interrupts held until it is (one then arrives as the
    interrupt): torch imports it from C, which swallows an interrupt raised inside, and the
    command then ran to its end, or failed with "cannot load module more than once"."""
    held = {s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s}
    if not hasattr(signal, "pthread_sigmask"):  # (Windows)
        import numpy  # noqa: F401

        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        import numpy  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _time_power_option(run) -> str:
    """`` --set train.fm_time_power=P`` where a flow-matching run trained with times other
    than uniform ones (a new run's training options are its own: it would take 1)."""
    from .errors import WorkbenchError
    from .runs import run_config

    try:
        power = run_config(run)["train"].get("fm_time_power", 1.0)
    except (WorkbenchError, OSError, KeyError, TypeError, AttributeError):
        return ""
    if isinstance(power, bool) or not isinstance(power, (int, float)) or power == 1.0:
        return ""  # (a config is data: anything but a number, no hint)
    return f" --set train.fm_time_power={power:g}"


def _peer_lost(e: BaseException, strict: bool = False) -> bool:
    """Whether ``e`` is a collective operation that failed because another process of a
    torchrun run is gone: its connection closed or reset (``strict``), or, for a rank above 0
    (whose rank 0 has said why it stopped), any error of the process group."""
    words = ("Connection closed", "Connection reset", "Broken pipe", "remote process exited",
             "communicator was aborted")  # fmt: skip
    if not strict:
        words += ("gloo", "NCCL")
    return type(e).__name__ in ("RuntimeError", "DistBackendError") and any(
        w in str(e) for w in words
    )


def _peer_lost_line(e: BaseException | None, args) -> str | None:
    """The line for a torchrun run that stopped because another of its processes is gone
    (killed: the collective operation this one was in failed, then torchrun's SIGTERM may
    interrupt the handling of that), found in ``e`` or the exceptions it was raised in; None
    for anything else."""
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.strip().isdigit() or int(world) < 2:  # (a malformed one: said elsewhere)
        return None
    seen = 0
    while e is not None and seen < 8:  # (the chain of exceptions, a few deep)
        if _peer_lost(e, strict=True):  # (not this process's own fault of the group)
            break
        e, seen = e.__context__, seen + 1
    else:
        return None
    out = getattr(args, "out", None)
    resume = ""
    if out is not None and getattr(args, "command", None) == "train":
        from .errors import shell_word

        resume = (
            f"; the run folder keeps its last checkpoint (torchrun ... -m flowforge train --out "
            f"{shell_word(out)} --resume continues it)"
        )
    return (
        "flowforge: stopped: another process of this torchrun run ended first (killed, or out "
        f"of memory?), so this one could not go on{resume}"
    )


def _interrupted_meanwhile(args, e: BaseException | None = None) -> bool:
    """Whether an error comes of an interrupt that a dependency swallowed (numpy imported
    by torch, cut short, gives "module 'numpy' has no attribute ...", and a second import
    "cannot load module more than once"): then it is said as the interrupt."""
    if not _SIGNALLED or getattr(args, "debug", False):
        return False
    print(_peer_lost_line(e, args) or "flowforge: interrupted", file=sys.stderr)
    return True


def _missing_workbench() -> list[str]:
    """The packages of the workbench extra that are not installed (looked up, not imported),
    so that a partial install is told once, before any work, what the command needs."""
    import importlib.util

    names = [k for k, extra in EXTRAS.items() if extra == "workbench" and k != "tomli"]
    if sys.version_info < (3, 11):
        names.append("tomli")
    pip = {"sklearn": "scikit-learn", "yaml": "PyYAML", "PIL": "pillow"}  # (what pip calls them)
    return [pip.get(n, n) for n in names if importlib.util.find_spec(n) is None]


def _main(argv: list[str] | None) -> int:
    from .allocator import reuse_freed_memory
    from .errors import WorkbenchError, out_of_memory

    parser = make_parser()
    try:  # (an option's check may import torch: an interrupt it swallowed is the interrupt)
        args, extra = parser.parse_known_args(
            _attach_values(sys.argv[1:] if argv is None else argv)
        )
    except ImportError:
        if _SIGNALLED:
            print("flowforge: interrupted", file=sys.stderr)
            return 130
        raise
    if _SIGNALLED:  # (one that a dependency's import swallowed whole)
        print("flowforge: interrupted", file=sys.stderr)
        return 130
    if extra:  # said by the command's own parser: its --help lists the options it takes
        parser.commands.get(getattr(args, "command", None), parser).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    # (list, compress and decompress work with fewer packages: they name a missing one)
    fewer = getattr(args, "command", None) in ("list", "compress", "decompress")
    missing = [] if fewer else _missing_workbench()
    if missing:
        print(
            "flowforge: error: the flowforge command needs the workbench extra (missing: "
            f"{', '.join(missing)}); install it with pip install -c constraints.txt -e "
            "\".[workbench]\" (from a clone) or pip install 'flowforge[workbench]'",
            file=sys.stderr,
        )
        return 1
    try:  # (the process's own: not for main() called from Python, whose process it is not)
        if _OWNS_PROCESS[0]:
            reuse_freed_memory()  # no page faults for each step's large tensors (allocator.py)
    except ValueError as e:  # (the environment variable's value)
        print(f"flowforge: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "threads", None) and args.command not in ("compress", "decompress"):
        import torch  # (compress records its own --threads, used while coding)

        torch.set_num_threads(args.threads)
    imports = [*getattr(args, "imports", []), *getattr(args, "imports_cmd", [])]
    before = frozenset(sys.modules)
    for name in imports:  # the user's own builders: named here, never by a
        try:  # config or a run folder
            _import_user_module(name, before)
        except Exception as e:
            if _interrupted_meanwhile(args):
                return 130
            if args.debug:
                raise
            print(f"flowforge: error: --import {name}: {type(e).__name__}: {_one_line(e)}",
                  file=sys.stderr)  # fmt: skip
            return 1
    import warnings

    shown = warnings.showwarning
    _said.clear()  # (a command run from Python again says its notes again)
    if not args.debug:  # the library's warnings as the command's own lines, not Python's
        warnings.showwarning = _warning_line
    stdout = None  # (none to guard where Python has none: a closed descriptor, pythonw)
    if sys.stdout is not None:
        stdout = sys.stdout = _GuardedStdout(sys.stdout)
    try:
        status = args.func(args)
        if stdout is not None and not stdout.failed:  # (a training that lost it has said so)
            sys.stdout.flush()  # (a full disk is met here, not as Python's error at exit)
        if _SIGNALLED and status == 0:  # (an interrupt swallowed on the way: not a success)
            print("flowforge: interrupted", file=sys.stderr)
            return 130
        return status
    except StdoutError as e:
        if args.debug:
            raise
        _drop_stdout(stdout)  # (no second error when Python flushes stdout at exit)
        if e.errno == errno.EPIPE:  # `flowforge list | head -1`: the reader has what it wanted
            return 141  # as a shell reports a command ended by SIGPIPE
        print(f"flowforge: error: {e.strerror}", file=sys.stderr)
        return 1
    except BrokenPipeError as e:
        if args.debug:
            raise
        if not _stdout_gone():  # another pipe's: an error as any other
            print(f"flowforge: error: {_one_line(e)}", file=sys.stderr)
            return 1
        # `flowforge list | head -1`: the reader has what it wanted; no second error when
        # Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE
    except KeyboardInterrupt as e:
        print(_peer_lost_line(e, args) or "flowforge: interrupted", file=sys.stderr)
        return 130
    except ImportError as e:
        if _interrupted_meanwhile(args):
            return 130
        if not isinstance(e, ModuleNotFoundError):
            return _import_error(e, args)
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None or args.debug:
            raise
        print(
            f"flowforge: error: this needs the optional package {e.name!r}; install it with "
            f'pip install -c constraints.txt -e ".[{extra}]" (from a clone) or '
            f"pip install 'flowforge[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except (WorkbenchError, ValueError, OSError) as e:
        if args.debug:
            raise
        rank = f" (rank {_rank()})" if _rank() else ""  # (under torchrun: whose it is)
        print(f"flowforge: error{rank}: {_one_line(e)}{_ode_hint(e, args) or ''}", file=sys.stderr)
        return 1
    except Exception as e:
        if _interrupted_meanwhile(args, e):
            return 130
        if args.debug:
            raise
        rank = f" (rank {_rank()})" if _rank() else ""  # (under torchrun: whose it is)
        if out_of_memory(e):  # the data or model outgrew the machine: not a flowforge bug
            print(
                f"flowforge: error{rank}: out of memory ({type(e).__name__}: "
                f"{_one_line(e)[:200]}); "
                "the data, the model or a batch needs more memory than is free: use a smaller "
                "--batch-size, --limit or model, or a machine with more memory",
                file=sys.stderr,
            )
            return 1
        hint = _ode_hint(e, args)
        if hint is not None:  # a solve's step budget: ours
            print(f"flowforge: error{rank}: {_one_line(e)}{hint}", file=sys.stderr)
            return 1
        if _rank() > 0 and _peer_lost(e):  # rank 0 stopped (and said why): not this rank's
            print(f"flowforge: rank {_rank()} stopped: rank 0 ended the run", file=sys.stderr)
            return 1
        lost = _peer_lost_line(e, args)
        if lost:  # rank 0: another rank is gone
            print(lost, file=sys.stderr)
            return 1
        print(
            f"flowforge: internal error{rank}: {type(e).__name__}: {_one_line(e)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = shown
        if stdout is not None and sys.stdout is stdout:
            sys.stdout = stdout._stream
            if stdout.failed:
                _drop_stdout(stdout)


def _import_error(e: ImportError, args) -> int:
    """The library's own "needs X: pip install ..." messages; any other ImportError is ours."""
    if args.debug or "pip install" not in str(e):
        raise e
    print(f"flowforge: error: {_one_line(e)}", file=sys.stderr)
    return 1


_SIGNALLED: list[int] = []  # the interrupts the command has received


def _interrupt(signum, frame):
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


_interrupt.handles_training = True  # (a fit it interrupts returns "interrupted": exit 130)


def _interrupt_handlers() -> dict:
    """Ctrl-C, and SIGTERM and SIGHUP (what ``timeout``, batch schedulers and a closed
    terminal send), as a :class:`KeyboardInterrupt` that is remembered: the command's clean-up
    runs (its temporary files removed) and it exits with 130; training handles them itself.
    Only where they have their default action (an ignored one stays ignored); returns the
    handlers replaced."""
    old = {}
    for s, default in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGTERM, signal.SIG_DFL),
        (getattr(signal, "SIGHUP", None), signal.SIG_DFL),
    ):
        if s is not None and signal.getsignal(s) is default:
            try:
                old[s] = signal.signal(s, _interrupt)
            except ValueError:  # not the main thread
                pass
    return old


def _drop_stdout(stdout: _GuardedStdout) -> None:
    """Point a failed standard output at /dev/null (a stream without a descriptor, as tests
    capture it, is left as it is)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout._stream.fileno())
    except (OSError, ValueError, AttributeError):  # (no file descriptor: captured in tests)
        pass


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # (no file descriptor: captured in tests)
        return False


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise, or for a malformed RANK)."""
    v = os.environ.get("RANK", "0")
    return int(v) if v.isascii() and v.isdigit() else 0


def _se(se, digits: int = 4) -> str:
    """``+- 0.0123``, or what one example gives (no standard error)."""
    if se is None:
        return "(one example: no standard error)"
    return f"+- {se:.{digits}f}" if abs(se) < 1e9 else f"+- {se:.6g}"  # (as _nats)


def _nll_se(res: dict) -> str:
    """`` +- 0.0123`` after an NLL, its standard error over the examples (none for one)."""
    se = res.get("nll_se")
    return "" if se is None else f" +- {_nats(se)}"


def _nats(v: float) -> str:
    """An NLL as eval prints it (:func:`~flowforge.workbench.evaluate.nats`)."""
    from .evaluate import nats

    return nats(v)


def _count(k: int, noun: str, plural: str | None = None) -> str:
    """``1 sample``, ``2 samples``."""
    return f"{k} {noun}" if k == 1 else f"{k} {plural or noun + 's'}"


# what the command itself offers against a solve over its step budget (the library's message
# names the Python arguments)
_ODE_HINTS = {
    cmd_eval: "; from this command: a looser --ode-tol",
    cmd_sample: "; from this command: a looser --ode-tol, or a fixed grid (--ode-steps N)",
    cmd_report: (
        "; the report scores at the run's own settings: flowforge eval RUN --ode-tol 1e-3 "
        "scores it with a looser tolerance, and sample --ode-steps N draws on a fixed grid"
    ),
}


def _ode_hint(e: BaseException, args) -> str | None:
    """For a solve over its step budget, the command's own remedy ("" if it has none);
    None for any other error."""
    ode = sys.modules.get("flowforge.transforms.continuous")  # (imported if it was used)
    if ode is None or not isinstance(e, ode.ODEStepBudgetError):
        return None
    if "fixed grid" in str(e) and getattr(args, "func", None) is cmd_sample:
        return "; from this command: a fixed grid within the budget (--ode-steps N)"
    return _ODE_HINTS.get(getattr(args, "func", None), "")


if __name__ == "__main__":
    sys.exit(main())
