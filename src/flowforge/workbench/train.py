r"""Run configuration, model building and the :class:`Trainer`.

A *run* is a folder::

    config.json              the resolved configuration (enough to redo the run)
    model.ff                 the best model so far (``ff.load(run)`` reads it)
    checkpoint.safetensors   the last resumable state: weights, optimizer, scheduler, RNGs
    metrics.jsonl            one JSON record per logged step and per epoch
    report.html, report/     written by ``flowforge report``

Every file is written atomically (:func:`flowforge.io.atomic_write`): a crash leaves the previous
version in place. Only rank 0 writes under ``torchrun``.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import io, models
from ..core import Flow, layer_metrics, needs_data_init, regularization
from .data import Dataset, WorkbenchError, load_dataset

__all__ = [
    "DEFAULT_TRAIN",
    "NonFiniteError",
    "RunError",
    "Trainer",
    "WorkbenchError",
    "build_flow",
    "load_run",
    "read_config",
    "resolve_config",
    "train",
]

RUN_FORMAT = "flowforge-run/1"
CKPT_FORMAT = "flowforge-checkpoint/1"
CONFIG_FILE, MODEL_FILE, CKPT_FILE, METRICS_FILE = (
    "config.json",
    "model.ff",
    "checkpoint.safetensors",
    "metrics.jsonl",
)
RUN_FILES = (CONFIG_FILE, MODEL_FILE, CKPT_FILE, METRICS_FILE, "report.html")
RUN_DIRS = ("report", "tb")


class RunError(WorkbenchError):
    """A run folder cannot be used as asked (exists, differs, missing, corrupt)."""


class NonFiniteError(WorkbenchError):
    """Training produced a NaN or inf."""


# -- configuration -------------------------------------------------------------------------------

DEFAULT_TRAIN: dict = {
    "epochs": 50,
    "batch_size": 64,
    "eval_batch_size": 1024,
    "optimizer": "adamw",  # adam | adamw
    "lr": 1e-3,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "warmup_steps": 100,  # linear warm-up, then cosine decay to min_lr_ratio * lr
    "min_lr_ratio": 0.0,
    "grad_clip": 10.0,  # max global gradient norm; 0 disables clipping
    "patience": 20,  # epochs without a better validation NLL before stopping; 0 disables
    "log_every": 10,  # steps between 'step' records in metrics.jsonl
    "device": "cpu",  # cpu | cuda | auto
    "tensorboard": True,  # used only if tensorboard is installed
}
TOP_KEYS = ("seed", "model", "data", "layout", "train")
LAYOUTS = ("auto", "vector", "image")


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_config(path: str | os.PathLike) -> dict:
    """Read a YAML, TOML or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"no such config file: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise WorkbenchError(f"{path}: expected a .yaml, .yml, .toml or .json config file")
    except WorkbenchError:
        raise
    except Exception as e:  # the parsers' own error types
        msg = " ".join(str(e).split())
        raise WorkbenchError(f"cannot parse config {path}: {msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: expected a mapping at the top level")
    return data


def _section(value, what: str) -> tuple[str | None, dict]:
    """``model: realnvp`` or ``model: {name: realnvp, layers: 4}`` -> (name, kwargs)."""
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value, {}
    if not isinstance(value, dict):
        raise WorkbenchError(f"config '{what}' must be a name or a mapping, got {value!r}")
    value = dict(value)
    name = value.pop("name", None)
    extra = "kwargs" if what == "model" else "options"
    nested = value.pop(extra, None) or {}
    if not isinstance(nested, dict):
        raise WorkbenchError(f"config '{what}.{extra}' must be a mapping")
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
                raise WorkbenchError(f"unknown config key {key!r}{_suggest(key, TOP_KEYS)}")
        if raw.get("seed") is not None:
            out["seed"] = int(raw["seed"])
        if raw.get("layout") is not None:
            out["layout"] = raw["layout"]
        name, kwargs = _section(raw.get("model"), "model")
        if name is not None:
            out["model"]["name"] = name
        out["model"]["kwargs"].update(kwargs)
        name, options = _section(raw.get("data"), "data")
        if name is not None:
            out["data"]["name"] = str(name)
        if "seed" in options:
            out["data"]["seed"] = int(options.pop("seed"))
        out["data"]["options"].update(options)
        tr = raw.get("train") or {}
        if not isinstance(tr, dict):
            raise WorkbenchError("config 'train' must be a mapping")
        for k, v in tr.items():
            if k not in DEFAULT_TRAIN:
                raise WorkbenchError(f"unknown train option {k!r}{_suggest(k, DEFAULT_TRAIN)}")
            out["train"][k] = v
    return out


def resolve_config(*layers: dict | None) -> dict:
    """Merge config layers (later ones win) and check the result."""
    cfg = None
    for layer in layers:
        cfg = merge_config(cfg, layer)
    cfg = cfg or merge_config(None, None)
    if cfg["layout"] not in LAYOUTS:
        raise WorkbenchError(f"unknown layout {cfg['layout']!r}; expected auto, vector or image")
    if not cfg["model"]["name"]:
        raise WorkbenchError("no model given: use --model NAME or a 'model:' section")
    if not cfg["data"]["name"]:
        raise WorkbenchError("no data given: use --data NAME|PATH or a 'data:' section")
    key = str(cfg["model"]["name"]).lower()
    if key not in models.available():
        close = difflib.get_close_matches(key, models.available(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise WorkbenchError(
            f"unknown model {cfg['model']['name']!r}{hint} "
            f"(available: {', '.join(models.available())})"
        )
    cfg["model"]["name"] = key
    t = cfg["train"]
    if t["optimizer"] not in ("adam", "adamw"):
        raise WorkbenchError(f"unknown optimizer {t['optimizer']!r}; expected adam or adamw")
    for k in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(t[k], int) or t[k] < 1:
            raise WorkbenchError(f"train.{k} must be a positive integer, got {t[k]!r}")
    if not float(t["lr"]) > 0:
        raise WorkbenchError(f"train.lr must be positive, got {t['lr']!r}")
    return json.loads(json.dumps(cfg))  # plain JSON types only (tuples -> lists)


def user_part(cfg: dict) -> dict:
    """The part of a config that defines the run (what --resume compares)."""
    return {k: cfg[k] for k in TOP_KEYS}


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


# -- models --------------------------------------------------------------------------------------


def _builder_params(name: str) -> dict | None:
    try:
        fn = models.builder(name)
    except ValueError:
        return None
    return dict(inspect.signature(fn).parameters)


def _prepare(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    return x.reshape(x.shape[0], *shape)


def standardized(flow: Flow, stats: dict, shape) -> Flow:
    """``flow`` preceded by a fixed ``(x - loc) / scale`` layer (training-split statistics).

    The result scores raw data (the standardisation's log-determinant included) and keeps the
    statistics through ``ff.save``/``ff.load`` (:func:`flowforge.models.standardized`).
    """
    loc = torch.tensor(stats["loc"], dtype=torch.float32).reshape(shape)
    scale = torch.tensor(stats["scale"], dtype=torch.float32).reshape(shape)
    return models.standardized(flow, loc, scale)


def build_flow(cfg: dict, ds: Dataset) -> tuple[Flow, Flow, dict]:
    """Build the model a config asks for, shaped for ``ds``.

    Returns ``(flow, inner, resolved)``: ``inner`` is the builder's flow; ``flow`` is what the
    trainer fits, saves to ``model.ff`` and scores raw data with (``inner`` preceded by the
    standardisation, if the data has statistics); ``resolved`` records the decisions.
    """
    name, kwargs = cfg["model"]["name"], dict(cfg["model"]["kwargs"])
    for k in ("features", "shape"):
        if k in kwargs:
            raise WorkbenchError(f"model argument {k!r} comes from the data; remove it")
    params = _builder_params(name)
    accepts = (lambda a: a in params) if params is not None else (lambda a: True)
    layout = cfg["layout"]
    if layout == "image":
        if not ds.is_image:
            raise WorkbenchError(f"--layout image needs image data; {ds.name} has shape {ds.shape}")
        if not accepts("shape"):
            raise WorkbenchError(f"model {name!r} takes vectors only (no shape= argument)")
    elif layout == "auto":
        layout = "image" if ds.is_image and accepts("shape") else "vector"
    if ds.levels is not None and "levels" not in kwargs:
        if not accepts("levels"):
            raise WorkbenchError(
                f"model {name!r} cannot model discrete data (it takes no levels= argument)"
            )
        kwargs["levels"] = ds.levels
    if ds.context_info is not None:
        k = int(ds.context_info["features"])
        if not accepts("context_features"):
            raise WorkbenchError(f"model {name!r} cannot be conditional (no context_features=)")
        if kwargs.setdefault("context_features", k) != k:
            raise WorkbenchError(
                f"model argument context_features={kwargs['context_features']} does not match "
                f"the data's context of {k} features; remove it"
            )
    elif kwargs.get("base") == "class-gaussian":
        raise WorkbenchError(
            "base 'class-gaussian' needs a conditional run: add --conditional label (or "
            "--target-columns for a table)"
        )
    fell_back = None
    shape_kw = {"shape": list(ds.shape)} if layout == "image" else {"features": math.prod(ds.shape)}
    try:
        inner = models.build(name, **shape_kw, **kwargs)
    except ImportError as e:
        if cfg["layout"] != "auto" or layout != "image":
            raise WorkbenchError(f"model {name!r} is not available here: {e}") from None
        fell_back = f"image layout unavailable ({e}); using vector layout"
        layout = "vector"
        shape_kw = {"features": math.prod(ds.shape)}
        inner = _build(name, {**shape_kw, **kwargs})
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"cannot build {name!r} with {kwargs}: {e}") from None
    event_shape = tuple(ds.shape) if layout == "image" else (math.prod(ds.shape),)
    flow = inner
    if ds.stats is not None:
        flow = standardized(inner, ds.stats, event_shape)
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
    if ds.context_info is not None:
        resolved["context"] = ds.context_info
    if fell_back:
        resolved["note"] = fell_back
    return flow, inner, resolved


def _context_note(resolved: dict) -> str:
    c = resolved.get("context")
    if not c:
        return ""
    if c["kind"] == "label":
        return f"; conditional on {c['features']} class labels"
    return f"; p(columns {c['target_columns']} | columns {c['context_columns']})"


def _build(name: str, kwargs: dict) -> Flow:
    try:
        return models.build(name, **kwargs)
    except (TypeError, ValueError, ImportError) as e:
        raise WorkbenchError(f"cannot build {name!r} with {kwargs}: {e}") from None


# -- runs ----------------------------------------------------------------------------------------


def run_config(run: str | os.PathLike) -> dict:
    """The ``config.json`` of a run folder."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run} is not a flowforge run (no {CONFIG_FILE})")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is corrupt: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != RUN_FORMAT or "resolved" not in cfg:
        raise RunError(f"{path} is not a flowforge run config")
    return cfg


def load_run(run: str | os.PathLike, map_location="cpu") -> Flow:
    """The best model of a run, scoring raw data: ``ff.load(run)`` with a run-folder check
    and one-line errors. The flow takes inputs of shape ``config["resolved"]["event_shape"]``
    (flattened images under the vector layout)."""
    run_config(run)
    try:
        return io.load(Path(run) / MODEL_FILE, map_location)
    except ValueError as e:
        raise RunError(" ".join(str(e).split())) from None


def run_dataset(cfg: dict) -> Dataset:
    """Reload the dataset a run was trained on."""
    d = cfg["data"]
    name = d["name"]
    path = cfg.get("resolved", {}).get("data_path")
    if path and not Path(name).exists() and Path(path).exists():
        name = path
    return load_dataset(name, seed=d["seed"], **d["options"])


def _is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def check_out_dir(out: Path, cfg: dict, resume: bool, overwrite: bool) -> dict | None:
    """Refuse to clobber anything; returns the stored config when resuming."""
    if resume:
        if overwrite:
            raise RunError("--resume and --overwrite contradict each other")
        stored = run_config(out)
        if not (out / CKPT_FILE).is_file():
            raise RunError(f"{out} has no {CKPT_FILE} to resume from")
        diff = config_diff(user_part(stored), user_part(cfg))
        if diff:
            raise RunError(
                f"cannot resume {out}: its config differs ({'; '.join(diff[:4])}"
                f"{'; ...' if len(diff) > 4 else ''}); drop the changed options or use a new --out"
            )
        return stored
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        if _is_run_dir(out):
            try:
                stored = user_part(run_config(out))
                same = not config_diff(stored, user_part(cfg))
            except (RunError, KeyError):
                same = False
            if same:
                raise RunError(
                    f"{out} already holds this run; use --resume to continue it or --overwrite "
                    "to start again"
                )
            raise RunError(
                f"{out} already holds a different run; use another --out, or --overwrite to "
                "replace it"
            )
        raise RunError(f"{out} is not empty and is not a flowforge run; use another --out")
    if out.is_dir() and overwrite and any(out.iterdir()) and not _is_run_dir(out):
        raise RunError(f"{out} is not empty and is not a flowforge run; refusing to overwrite it")
    return None


def clear_run(out: Path) -> None:
    """Remove the files a run writes (and nothing else)."""
    import shutil

    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def write_json(path: Path, obj) -> None:
    io.atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


# -- distributed ---------------------------------------------------------------------------------


def dist_env() -> tuple[int, int]:
    """(rank, world size), from torch.distributed if running, else from torchrun's variables."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: str) -> bool:
    """Start the process group under torchrun (gloo on CPU, NCCL on GPU). True if started."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    return True


def _device(name: str) -> torch.device:
    rank_local = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise WorkbenchError("train.device is 'cuda' but no GPU is available")
        return torch.device("cuda", rank_local % torch.cuda.device_count())
    return torch.device(name)


# -- checkpoints ---------------------------------------------------------------------------------


def _rng_state() -> tuple[dict[str, Tensor], dict]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors = {
        "rng/torch": torch.get_rng_state(),
        "rng/numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "rng/python": torch.tensor(py_state[1], dtype=torch.int64),
    }
    meta = {
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    return tensors, meta


def _set_rng_state(tensors: dict[str, Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state(
        (kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["rng/python"].tolist()), gauss_next))
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        for k in cuda:
            i = int(k.rsplit("/", 1)[1])
            if i < torch.cuda.device_count():
                torch.cuda.set_rng_state(tensors[k], i)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    sd = opt.state_dict()
    tensors, state_meta = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim/{idx}/{name}"] = v
            else:
                state_meta.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "state": state_meta}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, st in meta["state"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: Path, flow: Flow, opt, sched, meta: dict) -> None:
    from safetensors.torch import save

    tensors = {f"model/{k}": v for k, v in flow.state_dict().items()}
    t_opt, m_opt = _flatten_optimizer(opt)
    t_rng, m_rng = _rng_state()
    tensors.update(t_opt)
    tensors.update(t_rng)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    full = {
        "format": CKPT_FORMAT,
        **meta,
        "optimizer": m_opt,
        "scheduler": sched_state,
        "rng": m_rng,
    }
    io.atomic_write(path, save(tensors, metadata={"flowforge": json.dumps(full)}))


def read_checkpoint(path: Path) -> tuple[dict, dict[str, Tensor]]:
    import safetensors
    from safetensors.torch import load

    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    try:
        data = path.read_bytes()
        tensors = load(data)
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["flowforge"])
    except (
        safetensors.SafetensorError,
        KeyError,
        TypeError,
        ValueError,
        OSError,
        RuntimeError,
    ) as e:
        msg = " ".join(str(e).split())
        raise RunError(
            f"{path} is not a readable checkpoint (corrupt or truncated?): {msg}"
        ) from None
    if meta.get("format") != CKPT_FORMAT:
        raise RunError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta, tensors


# -- diagnosis -----------------------------------------------------------------------------------


def _nonfinite(obj) -> bool:
    if isinstance(obj, Tensor):
        return obj.is_floating_point() and not bool(torch.isfinite(obj).all())
    if isinstance(obj, (tuple, list)):
        return any(_nonfinite(o) for o in obj)
    return False


@torch.no_grad()
def find_nonfinite(
    flow: Flow, x: Tensor, rng_state: Tensor | None = None, context: Tensor | None = None
) -> str:
    """Re-run ``flow.log_prob(x)`` with hooks; name the first module whose output is NaN/inf."""
    names = {m: n for n, m in flow.named_modules()}
    hits: list[str] = []

    def hook(module, inputs, output):
        if not hits and _nonfinite(output):
            hits.append(names[module])

    handles = [m.register_forward_hook(hook) for m in flow.modules() if m is not flow]
    state = torch.get_rng_state()
    try:
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        try:
            flow.log_prob(x, context)
        except Exception as e:  # report, do not mask the original problem
            return f"the re-run raised {type(e).__name__}: {' '.join(str(e).split())}"
    finally:
        torch.set_rng_state(state)
        for h in handles:
            h.remove()
    if not hits:
        return "no layer output is NaN/inf: the base log-density or the log-det sum overflowed"
    inner = hits[0]
    parts = inner.split(".")
    top = inner
    for i in range(len(parts)):
        if parts[i] == "layers" and i + 1 < len(parts):
            top = ".".join(parts[: i + 2])
            break
    mods = dict(flow.named_modules())
    what = f"{top} ({type(mods[top]).__name__})"
    if top != inner:
        what += f", first at {inner} ({type(mods[inner]).__name__})"
    return f"first non-finite output in {what}"


# -- the trainer ---------------------------------------------------------------------------------


def layer_extras(flow: torch.nn.Module) -> tuple[Tensor | None, dict[str, float]]:
    """What layers publish after a forward pass: the sum of their ``regularization_loss``
    tensors (the trainer adds it to the loss it minimises; e.g. a CNF's RNODE penalty) and
    the sums of their ``metrics()`` dicts (logged with each step; e.g. a CNF's NFE counts)."""
    return regularization(flow), layer_metrics(flow)


def adam(params, lr: float, decoupled: bool = False, **kwargs) -> torch.optim.Optimizer:
    """Adam (AdamW with ``decoupled``), fused into one kernel where torch has one for the
    parameters' device (CPU and CUDA): the per-tensor update loop is a quarter of a small
    flow's training step on CPU. The fused kernel follows the same update rule."""
    params = list(params)
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, fused=fused or None, **kwargs)


def _lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class _Sigterm:
    """Turn SIGTERM into KeyboardInterrupt while training (main thread only)."""

    def __enter__(self):
        self.old = None
        try:
            self.old = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


class Trainer:
    r"""Maximum-likelihood training with validation, best checkpoint, early stopping and resume.

    Args:
        flow: the flow to fit (``flow(x)`` returns ``log p(x)``).
        train_x, val_x: data tensors shaped like the flow's input.
        train: training options (see :data:`DEFAULT_TRAIN`); missing keys take the defaults.
        seed: seeds the data order (and the validation noise).
        out: the run folder; None trains without writing anything.
        model_bytes: returns the bytes of ``model.ff`` (default ``io.to_bytes(flow)``).
        bits_dims: with discrete data, the number of dimensions for bits/dim, else None.
        progress: show a tqdm bar (rank 0).
        callback: ``callback(trainer)`` after every optimizer step (tests use it to interrupt).
        echo: print one line per epoch (rank 0).

    The data order of epoch ``e`` is a permutation seeded by ``seed + e``
    (:class:`~torch.utils.data.DistributedSampler`); under torchrun each rank takes every
    ``world``-th example of it and a ``batch_size / world`` slice per step, so a global batch
    holds the same examples as in a single process.
    """

    def __init__(
        self,
        flow: Flow,
        train_x: Tensor,
        val_x: Tensor,
        train: dict | None = None,
        *,
        seed: int = 0,
        out: str | os.PathLike | None = None,
        model_bytes: Callable[[], bytes] | None = None,
        bits_dims: int | None = None,
        progress: bool = True,
        callback: Callable[[Trainer], None] | None = None,
        echo: bool = True,
        train_context: Tensor | None = None,
        val_context: Tensor | None = None,
    ):
        self.cfg = {**DEFAULT_TRAIN, **(train or {})}
        self.flow, self.seed = flow, int(seed)
        self.out = None if out is None else Path(out)
        self.rank, self.world = dist_env()
        self.device = _device(self.cfg["device"])
        self.flow.to(self.device)
        self.train_x, self.val_x = train_x.to(self.device), val_x.to(self.device)
        # contexts of a conditional flow (row i conditions example i); None: unconditional
        self.train_c = None if train_context is None else train_context.to(self.device)
        self.val_c = None if val_context is None else val_context.to(self.device)
        self.model_bytes = model_bytes or (lambda: io.to_bytes(flow))
        self.bits_dims = bits_dims
        self.progress, self.callback, self.echo = progress, callback, echo
        if self.cfg["batch_size"] % self.world:
            raise WorkbenchError(
                f"batch_size {self.cfg['batch_size']} is not divisible by {self.world} processes"
            )
        self.local_batch = self.cfg["batch_size"] // self.world
        from torch.utils.data import DistributedSampler

        self.sampler = DistributedSampler(
            range(len(train_x)),
            num_replicas=self.world,
            rank=self.rank,
            shuffle=True,
            seed=self.seed,
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.local_batch)
        self.total_steps = self.steps_per_epoch * self.cfg["epochs"]
        params = [p for p in flow.parameters() if p.requires_grad]
        self.opt = adam(
            params,
            lr=float(self.cfg["lr"]),
            betas=tuple(self.cfg["betas"]),
            weight_decay=float(self.cfg["weight_decay"]),
            decoupled=self.cfg["optimizer"] == "adamw",
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            _lr_lambda(
                int(self.cfg["warmup_steps"]), self.total_steps, float(self.cfg["min_lr_ratio"])
            ),
        )
        self.epoch = 0  # the epoch in progress (0-based)
        self.step_in_epoch = 0  # optimizer steps done in it
        self.global_step = 0
        self.best = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.epoch_losses: list[float] = []  # losses of the epoch in progress
        self.finished: str | None = None
        self.history: list[dict] = []
        self._tb = None

    # -- helpers --------------------------------------------------------------------------
    @property
    def writer(self) -> bool:
        return self.rank == 0 and self.out is not None

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.writer:
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self._tb is not None:
                for k, v in record.items():
                    if isinstance(v, float) and k not in ("time",):
                        self._tb.add_scalar(f"{record['type']}/{k}", v, record["step"])

    def _say(self, msg: str) -> None:
        if self.echo and self.rank == 0:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)

    def _bpd(self, nll: float) -> float | None:
        return None if self.bits_dims is None else nll / (self.bits_dims * math.log(2))

    @torch.no_grad()
    def evaluate(self, x: Tensor, context: Tensor | None = None) -> float:
        """Mean NLL (nats/example) in eval mode; dequantization noise is seeded, so repeatable
        and independent of the training random stream."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 7919)
            was = self.flow.training
            self.flow.eval()
            try:
                total = 0.0
                bs = self.cfg["eval_batch_size"]
                for i in range(0, x.shape[0], bs):
                    c = None if context is None else context[i : i + bs]
                    total += self.flow.log_prob(x[i : i + bs], c).double().sum().item()
            finally:
                self.flow.train(was)
        return -total / x.shape[0]

    def _init_data_dependent(self) -> None:
        """Run one forward pass on the first global batch if a layer (ActNorm) initialises from
        data, so that every rank (and a single process) gets the same initialisation."""
        if not needs_data_init(self.flow):
            return
        from torch.utils.data import DistributedSampler

        whole = DistributedSampler(
            range(len(self.train_x)), num_replicas=1, rank=0, shuffle=True, seed=self.seed
        )
        whole.set_epoch(0)
        idx = torch.tensor(list(whole)[: self.cfg["batch_size"]])
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed + 104729)
            self.flow.train()
            idx = idx.to(self.device)
            c = None if self.train_c is None else self.train_c[idx]
            self.flow.log_prob(self.train_x[idx], c)

    # -- state ----------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "finished": self.finished,
            "epoch_losses": self.epoch_losses,
            "seed": self.seed,
            "world": self.world,
        }

    def save_checkpoint(self) -> None:
        if self.writer:
            save_checkpoint(self.out / CKPT_FILE, self.flow, self.opt, self.sched, self._meta())

    def load_checkpoint(self) -> None:
        meta, tensors = read_checkpoint(self.out / CKPT_FILE)
        model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
        try:
            self.flow.load_state_dict(model)
            self.opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
            lambdas = [None] * len(self.opt.param_groups)  # closures: rebuilt, not stored
            self.sched.load_state_dict({**meta["scheduler"], "lr_lambdas": lambdas})
        except (RuntimeError, ValueError, KeyError) as e:
            msg = " ".join(str(e).split())[:300]
            raise RunError(f"checkpoint does not match this run's model: {msg}") from None
        _set_rng_state(tensors, meta["rng"])
        for k in (
            "epoch",
            "step_in_epoch",
            "global_step",
            "best",
            "best_epoch",
            "bad_epochs",
            "finished",
            "epoch_losses",
        ):
            setattr(self, k, meta[k])
        if meta.get("world", 1) != self.world:
            self._say(
                f"note: resuming a {meta.get('world')}-process run on {self.world}; "
                "the data order differs from an uninterrupted run"
            )
        # metrics written after the checkpoint belong to a lost future: drop them
        if self.writer and (self.out / METRICS_FILE).is_file():
            keep = []
            for line in (self.out / METRICS_FILE).read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("step", 0) <= self.global_step:
                    keep.append(line)
                    self.history.append(rec)
            io.atomic_write(self.out / METRICS_FILE, "".join(x + "\n" for x in keep).encode())

    # -- the loop -------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Train; returns a summary with ``status`` in finished, early-stopped, interrupted."""
        if resume:
            self.load_checkpoint()
        else:
            self._init_data_dependent()
        if self.writer and self.cfg["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tb"))
            except (ImportError, ModuleNotFoundError):
                self._tb = None
        model = self.flow
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(self.flow)  # broadcasts rank 0's state
        from tqdm import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            unit="step",
            disable=not (self.progress and self.rank == 0),
            dynamic_ncols=True,
            file=sys.stderr,
            leave=False,
        )
        status = self.finished or "running"
        try:
            with _Sigterm():
                while status == "running" and self.epoch < self.cfg["epochs"]:
                    status = self._epoch(model, bar)
                if status == "running":
                    status = "finished"
                    self.finished = status
                    self.save_checkpoint()
        except KeyboardInterrupt:
            status = "interrupted"
            self.save_checkpoint()
            self._say(
                f"interrupted at epoch {self.epoch + 1}, step {self.global_step}; "
                "checkpoint saved (resume with --resume)"
            )
        finally:
            bar.close()
            if self._tb is not None:
                self._tb.close()
        return {
            "status": status,
            "epochs": self.epoch,
            "steps": self.global_step,
            "best_val_nll": self.best,
            "best_epoch": self.best_epoch + 1,
            "best_val_bpd": self._bpd(self.best) if math.isfinite(self.best) else None,
        }

    def _epoch(self, model, bar) -> str:
        import torch.distributed as dist

        t0 = time.time()
        self.sampler.set_epoch(self.epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.device)
        losses = self.epoch_losses
        self.flow.train()
        clip = float(self.cfg["grad_clip"] or 0)
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for s in range(self.step_in_epoch, self.steps_per_epoch):
            ib = order[s * self.local_batch : (s + 1) * self.local_batch]
            xb = self.train_x[ib]
            cb = None if self.train_c is None else self.train_c[ib]
            rng = torch.get_rng_state()
            loss = -(model(xb) if cb is None else model(xb, cb)).mean()
            stats = torch.stack([loss.detach().double(), (~torch.isfinite(loss)).double()])
            if self.world > 1:
                dist.all_reduce(stats)
                stats[0] /= self.world
            if stats[1] > 0:
                self._nonfinite(xb, rng, "loss", cb)
            reg, _ = layer_extras(self.flow)
            self.opt.zero_grad(set_to_none=True)
            (loss if reg is None else loss + reg).backward()
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            if not torch.isfinite(norm):
                self._nonfinite(xb, rng, "gradient", cb)
            self.opt.step()
            self.sched.step()
            self.global_step += 1
            self.step_in_epoch = s + 1
            value = stats[0].item()
            losses.append(value)
            bar.update(1)
            post = {"epoch": self.epoch + 1, "loss": f"{value:.4g}"}
            if self.bits_dims:
                post["bpd"] = f"{self._bpd(value):.4f}"
            bar.set_postfix(post, refresh=False)
            every = int(self.cfg["log_every"] or 0)
            if every and self.global_step % every == 0:
                self._log(
                    {
                        "type": "step",
                        "epoch": self.epoch + 1,
                        "step": self.global_step,
                        "loss": value,
                        "lr": self.opt.param_groups[0]["lr"],
                        "grad_norm": float(norm),
                        **layer_extras(self.flow)[1],
                    }
                )
            if self.callback is not None:
                self.callback(self)
        # validation (every rank computes it: same weights, same seeded noise, same number)
        val = self.evaluate(self.val_x, self.val_c)
        improved = val < self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = val, self.epoch, 0
            if self.writer:
                io.atomic_write(self.out / MODEL_FILE, self.model_bytes())
        else:
            self.bad_epochs += 1
        train_loss = float(np.mean(losses)) if losses else float("nan")
        rec = {
            "type": "epoch",
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "train_loss": train_loss,
            "val_nll": val,
            "lr": self.opt.param_groups[0]["lr"],
            "best": improved,
            "time": time.time() - t0,
        }
        if self.bits_dims:
            rec["train_bpd"], rec["val_bpd"] = self._bpd(train_loss), self._bpd(val)
        self._log(rec)
        msg = f"epoch {self.epoch + 1}/{self.cfg['epochs']}  train {train_loss:.4f}  val {val:.4f}"
        if self.bits_dims:
            msg += f" ({self._bpd(val):.4f} bits/dim)"
        self._say(msg + ("  *" if improved else ""))
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_losses = []
        patience = int(self.cfg["patience"] or 0)
        status = "running"
        if patience and self.bad_epochs >= patience:
            status = self.finished = "early-stopped"
            self._say(f"early stop: no better validation NLL for {patience} epochs")
        self.save_checkpoint()
        return status

    def _nonfinite(self, xb: Tensor, rng: Tensor, what: str, cb: Tensor | None = None) -> None:
        where = find_nonfinite(self.flow, xb, rng, cb)
        kept = f"; the last good checkpoint is kept in {self.out}" if self.out else ""
        raise NonFiniteError(
            f"non-finite {what} at epoch {self.epoch + 1}, step {self.global_step + 1}: "
            f"{where}{kept}"
        )


# -- the whole run -------------------------------------------------------------------------------


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: dict,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: bool = True,
    callback: Callable[[Trainer], None] | None = None,
) -> dict:
    """Train a model as a config describes, into run folder ``out``.

    ``config`` is a raw config (as in a YAML file); on ``resume`` it may be empty and the run's
    own config is used (anything it does set must agree with the stored config).
    """
    import torch.distributed as dist

    out = Path(out)
    started = init_distributed(str((config.get("train") or {}).get("device", "cpu")))
    try:
        rank, world = dist_env()
        stored_raw = None
        if resume:
            stored_raw = run_config(out)
        cfg = resolve_config(stored_raw, config)
        stored = check_out_dir(out, cfg, resume, overwrite)
        if world > 1 and dist.is_initialized():
            dist.barrier()  # every rank has checked the folder before rank 0 writes to it
        if stored is not None:
            cfg = resolve_config(stored)  # exactly the stored run
        ds = load_dataset(cfg["data"]["name"], seed=cfg["data"]["seed"], **cfg["data"]["options"])
        _seed_all(cfg["seed"])
        flow, inner, resolved = build_flow(cfg, ds)
        if Path(cfg["data"]["name"]).exists():
            resolved["data_path"] = str(Path(cfg["data"]["name"]).resolve())
        if stored is not None and stored["resolved"].get("flow_config") != resolved["flow_config"]:
            raise RunError(f"cannot resume {out}: the model builder now gives a different model")
        shape = tuple(resolved["event_shape"])
        full = {"format": RUN_FORMAT, **cfg, "resolved": resolved}
        if rank == 0:
            if overwrite and out.is_dir():
                clear_run(out)
            out.mkdir(parents=True, exist_ok=True)
            if not resume:
                write_json(out / CONFIG_FILE, full)
        if world > 1 and dist.is_initialized():
            dist.barrier()
        if echo and rank == 0:
            note = f" [{resolved['note']}]" if "note" in resolved else ""
            print(
                f"model {cfg['model']['name']} ({resolved['layout']} "
                f"{'x'.join(map(str, shape))}"
                f"{', levels=' + str(ds.levels) if ds.levels else ''}): "
                f"{resolved['parameters']:,} parameters; data {ds.name}: "
                f"{resolved['examples']['train']} train / {resolved['examples']['val']} val"
                f"{_context_note(resolved)}"
                f"{'; ' + str(world) + ' processes' if world > 1 else ''}{note}",
                flush=True,
            )
        trainer = Trainer(
            flow,
            _prepare(ds.train, shape),
            _prepare(ds.val, shape),
            cfg["train"],
            seed=cfg["seed"],
            out=out,
            model_bytes=lambda: io.to_bytes(flow),
            bits_dims=math.prod(shape) if ds.levels else None,
            progress=progress,
            callback=callback,
            echo=echo,
            train_context=ds.split_context("train"),
            val_context=ds.split_context("val"),
        )
        result = trainer.fit(resume=resume)
        result.update(out=str(out), parameters=resolved["parameters"])
        return result
    finally:
        if started:
            dist.destroy_process_group()
