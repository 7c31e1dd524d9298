r"""Training checkpoints: model, optimizer, scheduler, EMA and RNG state in one file.

The same safetensors + JSON codec as ``.ff`` files (:func:`flowforge.io.pack` /
:func:`flowforge.io.unpack`): tensors under ``model/``, ``optim/<param>/<name>``, ``ema/`` and
``rng/``; everything else (loop counters, optimizer hyper-parameters, RNG positions) as JSON in
the header. Nothing is unpickled.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import io
from .errors import RunError, one_line, shown

__all__ = [
    "CKPT_FORMAT",
    "save_checkpoint",
    "read_checkpoint",
    "optimizer_state",
    "check_optimizer_state",
]

CKPT_FORMAT = "flowforge-checkpoint/1"


def _rng_state(device: torch.device | None = None) -> tuple[dict[str, Tensor], dict]:
    """The random state of the CPU, numpy and Python, and of the run's CUDA device (``device``)
    as ``rng/device``: every rank of a multi-GPU run draws the same noise on its own device
    (the same seed, the same shapes: the sampler pads every rank to the same batches), so rank
    0's device state is each rank's to restore, as its ``rng/torch`` is. This assumes GPUs of
    one model: a CUDA generator's position after a draw can depend on the device's size."""
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
    if device is not None and device.type == "cuda":
        tensors["rng/device"] = torch.cuda.get_rng_state(device)
    return tensors, meta


def _check_rng_state(tensors: dict[str, Tensor], meta) -> None:
    """A ``ValueError`` naming the field unless the CPU's, numpy's and Python's random states
    are of the kinds :func:`_rng_state` writes (a crafted one met numpy's and Python's own
    words: "an integer is required", "too many values to unpack")."""

    def words(t, n: int, top: int) -> bool:  # n integers in [0, top)
        return (
            t is not None
            and t.shape == (n,)
            and not t.is_floating_point()
            and (n == 0 or (int(t.min()) >= 0 and int(t.max()) < top))
        )

    def whole(v, lo: int, hi: int) -> bool:
        return type(v) is int and lo <= v <= hi

    torch_state = tensors.get("rng/torch")
    if (
        torch_state is None
        or torch_state.dtype != torch.uint8
        or torch_state.shape != (torch.get_rng_state().numel(),)
    ):
        raise ValueError("its random state rng/torch is not torch's generator state")
    if not words(tensors.get("rng/numpy"), 624, 2**32):
        raise ValueError("its random state rng/numpy is not 624 words of numpy's MT19937")
    if (
        not words(tensors.get("rng/python"), 625, 2**32)
        or not 0 <= int(tensors["rng/python"][-1]) <= 624
    ):
        raise ValueError("its random state rng/python is not 625 words of Python's generator")
    np_meta = meta.get("numpy") if isinstance(meta, dict) else None
    if not (
        isinstance(np_meta, list)
        and len(np_meta) == 4
        and np_meta[0] == "MT19937"
        and whole(np_meta[1], 0, 624)
        and whole(np_meta[2], 0, 1)
        and type(np_meta[3]) in (int, float)
    ):
        raise ValueError(
            f"its random state rng.numpy is {shown(np_meta)}, expected "
            "['MT19937', position, has_gauss, cached_gaussian]"
        )
    py_meta = meta.get("python")
    if not (
        isinstance(py_meta, list)
        and len(py_meta) == 2
        and py_meta[0] == random.Random.VERSION
        and (py_meta[1] is None or type(py_meta[1]) is float)
    ):
        raise ValueError(
            f"its random state rng.python is {shown(py_meta)}, expected [version "
            f"{random.Random.VERSION}, next_gaussian or null]"
        )


def set_rng_state(
    tensors: dict[str, Tensor], meta: dict, device: torch.device | None = None
) -> None:
    """Restore :func:`_rng_state`'s state, the device's into ``device`` (a CUDA device); a
    ``ValueError`` naming the field for a state of another kind, before anything is set."""
    _check_rng_state(tensors, meta)
    torch.set_rng_state(tensors["rng/torch"])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state(
        (kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["rng/python"].tolist()), gauss_next))
    if "rng/device" in tensors:
        if device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/device"], device)
        return
    # a checkpoint written before rng/device: every device's state as rank 0's process saw it
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


def optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    """The optimizer ``state_dict`` stored in a checkpoint's tensors and header."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, st in meta["state"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


# what each of the Trainer's optimizers keeps per parameter once it has stepped
_STATE_KEYS = {
    torch.optim.Adam: {"step", "exp_avg", "exp_avg_sq"},
    torch.optim.AdamW: {"step", "exp_avg", "exp_avg_sq"},
    torch.optim.Adamax: {"step", "exp_avg", "exp_inf"},
}


def _number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v == v and abs(v) < 1e308


def check_optimizer_state(opt: torch.optim.Optimizer, sd: dict) -> None:
    """A ``ValueError`` unless ``sd`` (from a checkpoint) is a state ``opt`` can load and step
    with: its groups hold the same settings, each a value of the same kind (numbers, flags),
    and each parameter's state has the optimizer's entries, in the parameter's shape; so a
    damaged file is refused when it is read, not in the middle of an epoch."""
    fresh, groups = opt.param_groups, sd["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh):
        raise ValueError(f"its optimizer should have {len(fresh)} parameter group(s)")
    for g, f in zip(groups, fresh):
        if not isinstance(g, dict):
            raise ValueError("its optimizer's settings are malformed")
        for k, v in f.items():
            if k == "params" or (k not in g and (isinstance(v, bool) or v is None)):
                continue  # (flags torch fills in when missing)
            got = g.get(k)
            if isinstance(v, bool):  # (None: a flag torch resolves itself, as older files hold)
                ok = isinstance(got, bool) or got is None
            elif _number(v):
                ok = _number(got)
            elif isinstance(v, (tuple, list)):
                ok = isinstance(got, (tuple, list)) and len(got) == len(v)
                ok = ok and all(_number(a) for a in got)
            else:
                ok = got is None or type(got) is type(v)
            if not ok:
                raise ValueError(f"its optimizer setting {k!r} is {got!r}, expected one like {v!r}")
    params = [p for f in fresh for p in f["params"]]
    want = _STATE_KEYS.get(type(opt))
    if want is not None and any(g.get("amsgrad") for g in groups):
        want = want | {"max_exp_avg_sq"}
    for idx, st in sd["state"].items():
        if not 0 <= idx < len(params):
            raise ValueError(f"its optimizer state names parameter {idx}, of {len(params)}")
        if want is not None and set(st) != want:
            raise ValueError(
                f"its optimizer state for parameter {idx} holds {sorted(st)}, expected "
                f"{sorted(want)}"
            )
        for name, v in st.items():
            if name == "step":  # a number, or a one-element tensor
                ok = _number(v) or (isinstance(v, Tensor) and v.numel() == 1)
                if not ok:
                    raise ValueError(f"its optimizer's step count of parameter {idx} is {v!r}")
                continue
            shape = params[idx].shape
            if isinstance(v, Tensor) and v.shape != shape:
                raise ValueError(
                    f"its optimizer state {name!r} of parameter {idx} has shape "
                    f"{tuple(v.shape)}, expected {tuple(shape)}"
                )
            if not isinstance(v, Tensor):
                raise ValueError(f"its optimizer state {name!r} of parameter {idx} is {v!r}")


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched,
    meta: dict,
    ema: torch.nn.Module | None = None,
    best: dict[str, Tensor] | None = None,
    device: torch.device | None = None,
) -> None:
    """Write the whole training state to ``path``, atomically (``best``: the best weights, for
    a model that has no ``model.ff`` to keep them; ``device``: the run's device, whose random
    state is kept)."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    if best is not None:
        tensors.update({f"best/{k}": v for k, v in best.items()})
    t_opt, m_opt = _flatten_optimizer(opt)
    t_rng, m_rng = _rng_state(device)
    tensors.update(t_opt)
    tensors.update(t_rng)
    sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    full = {
        "format": CKPT_FORMAT,
        **meta,
        "optimizer": m_opt,
        "scheduler": sched_state,
        "rng": m_rng,
    }
    io.atomic_write(path, io.pack(tensors, full))


def read_checkpoint(path: Path) -> tuple[dict, dict[str, Tensor]]:
    """``(header, tensors)`` of a checkpoint; :class:`RunError` if it is not a readable one."""
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    try:
        meta, tensors = io.unpack(path, what="checkpoint")
    except ValueError as e:
        raise RunError(one_line(e)) from None
    if meta.get("format") != CKPT_FORMAT:
        raise RunError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta, tensors
