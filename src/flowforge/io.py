r"""Saving and loading flows without pickle: weights in safetensors, configuration in JSON.

A ``.ff`` file is one safetensors file whose header metadata holds the builder's name and its
*whole* resolved configuration as JSON (format ``flowforge/2``; files of ``flowforge/1``, which
recorded only the arguments given, still load). Loading parses that JSON, checks it against the
registered builder's signature and types, rebuilds the flow and copies the tensors in; no code
from the file is ever executed. Files are written atomically (a temporary file in the same
folder, fsync, then rename), so a crash never leaves a half-written checkpoint in place of a
good one. Before writing, :func:`save` rebuilds the flow from its configuration, loads the
state into it and compares samples and ``log_prob`` (:func:`rebuilt_differs`): a flow whose
reload would be another model (state kept outside its parameters and persistent buffers) is
refused, not written.

:func:`pack` and :func:`unpack` are the one safetensors+JSON codec: ``.ff`` files and the
workbench's training checkpoints both use them. :func:`unpack` reads only regular files of a
bounded size (:data:`MAX_BYTES`, or the caller's ``max_bytes``) and checks the header before it
reads any tensor. See ``docs/security.md`` for what a file can and cannot make flowforge do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import struct
import tempfile
import time
import warnings
import weakref
import zlib
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ._util import all_finite, restore_modes, training_modes
from .core import Flow
from .nets import MADEWidthWarning

__all__ = [
    "save",
    "load",
    "atomic_write",
    "pack",
    "unpack",
    "read_metadata",
    "Budget",
    "rebuilt_differs",
    "FORMAT",
    "MAX_BYTES",
]

FORMAT = "flowforge/2"
FORMATS = ("flowforge/1", FORMAT)
MODEL_FILE = "model.ff"  # the model file of a workbench run folder
MAX_BYTES = 4 * 2**30  # the largest file read unless the caller raises it (4 GiB)
BUILD_FLOOR = 64 * 2**20  # a file's model may allocate 8x its tensors' bytes, at least this
BUILD_SECONDS = 30.0  # and take at most this long to build
BUILD_OPS, BUILD_OPS_PER_TENSOR = 5000, 50  # and this many tensor ops (builders use about 12)
_MAX_HEADER = 16 * 2**20  # safetensors' own limit on the JSON header is larger; ours is 16 MiB
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError(
            "saving and loading flows needs safetensors: pip install 'flowforge[io]'"
        ) from None
    return safetensors


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux's
    /proc): setting it to read it leaves a moment in which another thread's new files get
    mode 0666."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # (elsewhere: briefly the strictest, never a looser one)
    os.umask(umask)
    return umask


_NAME_MAX = 255  # bytes of one file name on the usual file systems (ext4, XFS, APFS, NTFS)


def atomic_write(path: str | os.PathLike, data, replace: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    ``data``: bytes (or any buffer), or an iterable of them written one after the other (a
    large output made piece by piece, never whole in memory).

    An ``OSError`` (a full disk, a read-only folder) names the file and leaves any previous
    version of it in place. ``replace=False``: never replace anything at ``path`` (a file, or
    a link, that appeared since the caller looked): the new file is linked into place, which
    fails if the name exists (``FileExistsError``), and the temporary file is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # (beside its target, named after it unless that name is too long to take 14 more
        # bytes: a name the file system takes is never refused for its temporary's)
        long = len(os.fsencode(path.name)) > _NAME_MAX - 14
        prefix = ".ff-" if long else f".{path.name}."
        # (beside the target as the kernel finds it: mkstemp resolves `link/..` by its text)
        fd, tmp = tempfile.mkstemp(dir=os.path.realpath(path.parent), prefix=prefix, suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            for chunk in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
            Path(tmp).unlink(missing_ok=True)
    except FileExistsError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = e.strerror or str(e)
        kept = "; the previous file is kept" if os.path.lexists(path) else ""
        raise OSError(e.errno, f"cannot write {path}: {reason}{kept}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def append(path: str | os.PathLike, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing), whole or not at all: a failed write (a
    full disk, a file-size limit) truncates the file back to its size before, where it can, and
    raises an ``OSError`` that names the file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    try:
        size = os.fstat(fd).st_size
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:
        with contextlib.suppress(OSError):  # no partial line left, where it can be undone
            os.ftruncate(fd, size)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def write_npy(path: str | os.PathLike, a, replace: bool = True) -> None:
    """``numpy.save`` of array ``a`` to ``path``, atomically (:func:`atomic_write`): its header,
    then the array's own memory (no copy of a contiguous array)."""
    import io as _io

    import numpy as np

    a = np.ascontiguousarray(a)
    head = _io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
    atomic_write(path, [head.getvalue(), memoryview(a.reshape(-1))], replace=replace)


def _link_new(tmp: str, path: Path) -> None:
    """Give the file ``tmp`` the name ``path`` unless ``path`` exists (a hard link fails on an
    existing name, atomically); where the file system has no hard links, a check then a
    rename."""
    exists = FileExistsError(
        errno.EEXIST,
        f"{path} appeared while this command ran; it is kept (choose another --out, or pass "
        "--overwrite to replace it)",
    )
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.ENOTSUP):
            raise
        if os.path.lexists(path):
            raise exists from None
        os.replace(tmp, path)


# -- the codec -----------------------------------------------------------------------------------


def pack(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    """Tensors and a JSON-able ``meta`` dict as safetensors bytes (``meta`` in the header)."""
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    if CRC_KEY in meta:
        raise ValueError(f"the metadata key {CRC_KEY!r} is flowforge's own")
    # (one metadata entry: safetensors writes several in no fixed order, and files would differ)
    ours = json.dumps({**meta, CRC_KEY: _crc32(tensors)})
    return _safetensors().torch.save(tensors, metadata={"flowforge": ours})


CRC_KEY = "tensors_crc32"  # in the metadata: the tensors' checksum (files since 2026-12-06)


def _crc32(tensors: dict[str, torch.Tensor]) -> int:
    """CRC-32 of the tensors' names, dtypes, shapes and bytes, in the order of their names: a
    flipped bit in a weight is a damaged file, not a slightly different model."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name]
        crc = zlib.crc32(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode(), crc)
        if t.numel():
            flat = t.detach().cpu().contiguous().reshape(-1)
            if flat.stride(-1) != 1:  # (one entry of stride 0, as contiguous() leaves it)
                flat = flat.clone(memory_format=torch.contiguous_format)
            crc = zlib.crc32(flat.view(torch.uint8).numpy(), crc)
    return crc


class Unreadable(ValueError):
    """A file that could not be read (no permission, an I/O error): not a damaged one. Its
    message is ``cannot read PATH: REASON``."""


def _open(path: Path) -> tuple[int, os.stat_result]:
    """A descriptor of ``path``, opened without blocking (a FIFO is not waited on), and its
    ``fstat``; :class:`Unreadable` where it cannot be opened. The caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise Unreadable(f"cannot read {path}: {e.strerror or e}") from None
    return fd, os.fstat(fd)


class _Intact(ValueError):
    """A file refused for what it is, not for damage: larger than the limit, or a safetensors
    file of another program (its message is said as it is, without "corrupt or truncated?")."""


def _read_bounded(path: Path, max_bytes: int, hint: str = "") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ``ValueError`` otherwise."""
    fd, st = _open(path)
    try:
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise _Intact(f"{st.st_size:,} bytes, more than the limit of {max_bytes:,}{hint}")
        chunks, left = [], st.st_size + 1  # one byte more: a file that grows is refused
        while left > 0:
            try:
                chunk = os.read(fd, min(left, 1 << 24))
            except OSError as e:
                raise Unreadable(f"cannot read {path}: {e.strerror or e}") from None
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > st.st_size:
            raise ValueError(f"{path} changed size while it was read")
        return data
    finally:
        os.close(fd)


def _parse_header(raw: bytes) -> tuple[dict, dict, int | None]:
    """``(flowforge metadata, the other entries, the tensors' checksum or None)`` of a
    safetensors JSON header."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not isinstance(meta.get("flowforge"), str):
        raise _Intact(  # (a safetensors file another program wrote)
            "a safetensors file without flowforge's metadata: not a file flowforge wrote "
            "(ff.save, a run's model.ff or checkpoint)"
        )
    try:
        ours = json.loads(meta["flowforge"])
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"the flowforge metadata is not JSON ({e})") from None
    if not isinstance(ours, dict):
        raise ValueError("the flowforge metadata is not a JSON object")
    crc = ours.pop(CRC_KEY, None)
    if crc is not None and (isinstance(crc, bool) or not isinstance(crc, int) or crc < 0):
        raise ValueError("the tensors' checksum in the header is malformed")
    return ours, header, crc


def read_metadata(path: str | os.PathLike) -> dict:
    """The flowforge metadata of a file written with :func:`pack`, from its header alone (at
    most 16 MiB read, the tensors not at all); ``ValueError`` for anything else."""
    path = Path(path)
    fd, st = _open(path)
    try:
        if not stat.S_ISREG(st.st_mode) or st.st_size < 8:
            raise ValueError(f"{path} is not a flowforge file")
        (n,) = struct.unpack("<Q", os.read(fd, 8).ljust(8, b"\0"))
        if n > min(_MAX_HEADER, st.st_size - 8):
            raise ValueError(f"{path}: {_long_header(n, st.st_size)}")
        raw = b""
        while len(raw) < n and (chunk := os.read(fd, n - len(raw))):
            raw += chunk
    finally:
        os.close(fd)
    try:
        return _parse_header(raw)[0]
    except _Intact as e:
        raise ValueError(f"{path} is {e}") from None
    except ValueError as e:  # (each names the file, as unpack's do)
        raise ValueError(f"{path}: {e}") from None


def _long_header(n: int, size: int) -> str:
    """Why a header length ``n`` (a file's first 8 bytes) is refused, without the number: in
    a file that is no safetensors file, it is 8 bytes of that file's text."""
    if n > size - 8:
        return "the header is longer than the file"
    return f"the header is longer than the {_MAX_HEADER >> 20} MiB limit"


def _header(data: bytes, path: Path) -> tuple[dict, dict, int | None]:
    """``(flowforge metadata, {name: (dtype, shape)}, the tensors' checksum or None)`` from
    the safetensors header alone."""
    if len(data) < 8:
        raise ValueError("the file is shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise ValueError(_long_header(n, len(data)))
    ours, header, crc = _parse_header(data[8 : 8 + n])
    body = len(data) - 8 - n
    specs = {}
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has a malformed header entry") from None
        if not 0 <= start <= end <= body or min(shape, default=0) < 0:
            raise ValueError(f"tensor {name!r} lies outside the file")
        specs[name] = (dtype, shape)
    return ours, specs, crc


def unpack(
    path: str | os.PathLike, max_bytes: int = MAX_BYTES, what: str = "flowforge file"
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a file written with :func:`pack`: ``(meta, tensors)``.

    Reads only a regular file of at most ``max_bytes``, checks the header and the tensors'
    checksum (files written since 2026-12-06 carry one), and refuses non-finite
    floating-point tensors. Every problem is a ``ValueError`` that names the file.
    """
    path = Path(path)
    st = _safetensors()
    try:
        hint = (  # (a model file: what ff.load reads; a run's checkpoint has no such way)
            "; a larger model you trust is read with ff.load(path, max_bytes=...)"
            if what in ("flowforge file", "flowforge checkpoint")
            else ""
        )
        data = _read_bounded(path, max_bytes, hint)
        meta, _, crc = _header(data, path)
        tensors = st.torch.load(data)
        if crc is not None and _crc32(tensors) != crc:
            raise ValueError("its tensors fail their checksum (a damaged file)")
    except Unreadable:
        raise  # (no permission, an I/O error: not a damaged file)
    except _Intact as e:
        raise ValueError(f"{path} is {e}") from None
    except ValueError as e:
        raise ValueError(f"{path} is not a readable {what} (corrupt or truncated?): {e}") from None
    except OSError as e:
        raise Unreadable(f"cannot read {path}: {e.strerror or e}") from None
    except (st.SafetensorError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        raise ValueError(
            f"{path} is not a readable {what} (corrupt or truncated?): {msg}"
        ) from None
    for name, t in tensors.items():
        if not all_finite(t):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or inf; the file is damaged")
    return meta, tensors


# -- flows ---------------------------------------------------------------------------------------


def _unwrap(flow):
    """The flowforge Flow inside ``torch.compile``'s, DDP's or ``AveragedModel``'s wrapper (their
    state dicts prefix every name, which the saved configuration would not rebuild)."""
    for _ in range(4):
        inner = getattr(flow, "_orig_mod", None)  # (torch.compile's wrapper passes attributes on)
        if not isinstance(inner, torch.nn.Module):
            if isinstance(flow, Flow) or getattr(flow, "__dict__", {}).get("config") is not None:
                break  # a Flow, or another model a builder made (an M-flow)
            inner = getattr(flow, "module", None)  # DDP, AveragedModel
        if not isinstance(inner, torch.nn.Module):
            break
        flow = inner
    return flow


def to_bytes(flow: Flow, extra: dict | None = None) -> bytes:
    """Serialise a flow built by :mod:`flowforge.models` to safetensors bytes (through a
    ``torch.compile``, DDP or ``AveragedModel`` wrapper). The flow's state must be what its
    configuration rebuilds, so that :func:`load` can read the file: a flow whose parts were
    replaced after it was built is refused here, not when it is loaded."""
    flow = _unwrap(flow)
    if not isinstance(flow, torch.nn.Module):
        raise TypeError(f"ff.save takes a flowforge Flow, got {type(flow).__name__}")
    if getattr(flow, "config", None) is None:
        raise ValueError(
            "ff.save needs a flow built by a flowforge.models builder (it records the "
            "configuration); for a flow of your own, decorate the function that builds it with "
            "@ff.models.register (docs/extending.md), or save flow.state_dict() with "
            "safetensors.torch.save_file and rebuild the flow before loading it"
        )
    why = unsaveable_config(flow.config)
    if why is not None:  # (json.dumps would fail below, naming a type but no argument)
        raise ValueError(f"ff.save: {why}")
    state = flow.state_dict()
    for name, t in state.items():  # what load() refuses is not written (over a good file)
        if t.is_floating_point() and not all_finite(t):
            raise ValueError(
                f"ff.save: the flow's tensor {name!r} holds NaN or inf (training diverged?); "
                "nothing was written"
            )
    try:
        _check_rebuilds(flow.config, state, flow)
    except _Differs as e:
        raise ValueError(f"ff.save: {e}; nothing was written") from None
    except ValueError as e:
        why = str(e).replace("checkpoint does not match its configuration: ", "")
        raise ValueError(
            f"ff.save: this flow no longer matches the configuration it was built with ({why}); "
            "was a part replaced after building? Save flow.state_dict() with "
            "safetensors.torch.save_file instead, and rebuild the same flow to load it"
        ) from None
    return pack(state, {"format": FORMAT, "config": flow.config, **(extra or {})})


def unsaveable_config(config) -> str | None:
    """Why a flow's configuration (``flow.config``) cannot be written to a file, in one line:
    the builder argument that JSON cannot hold (a class, a function, a module); None if it
    can be written. A builder may take such a value, but a file cannot record it: ``ff.save``
    refuses it, and the workbench's trainer before its first epoch."""
    from .models.registry import not_json

    kwargs = config.get("kwargs") if isinstance(config, dict) else None
    bad = not_json(kwargs) if isinstance(kwargs, dict) else None
    if bad is None:
        return None
    return (
        f"the argument {bad} of {config.get('model')} is not a JSON value, so no file can "
        "record it; give the builder JSON values (numbers, strings, true/false, null, lists, "
        "dicts), e.g. a name that it maps to the class (activation: str = 'tanh')"
    )


_REBUILDS: dict[str, None] = {}  # structures already checked (the trainer saves every best epoch)
_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # flows compared, by structure
PROBE_POINTS = 3  # the points at which a save compares the flow with its rebuilt copy


class _Differs(ValueError):
    """The flow rebuilt from a configuration and loaded with the state behaves otherwise."""


def _check_rebuilds(config: dict, state: dict[str, torch.Tensor], flow=None) -> None:
    """``ValueError`` unless ``config`` rebuilds a flow with ``state``'s tensors (names, shapes,
    kinds of dtype) and, given the ``flow`` itself, one that behaves as it does once loaded
    with ``state`` (:func:`rebuilt_differs`). The trial build runs on a forked random state, so
    that saving never moves the caller's random numbers (a training run saves its best model
    as it goes), and a structure that passed once is not built again."""
    key = json.dumps(
        [config, [(k, tuple(t.shape), str(t.dtype)) for k, t in state.items()]],
        sort_keys=True,
        default=str,
    )
    # a flow with layers of the user's own is compared with its rebuilt copy once for each
    # flow object (the library's layers: the generic test's), not once for each structure:
    # another flow of the same structure may hold what its state does not (a plain attribute)
    probe = flow is not None and _own_code(flow)
    if key in _REBUILDS and (not probe or _PROBED.get(flow) == key):
        return
    rebuilt = rebuilt_from(config, state)
    if probe:
        why = rebuilt_differs(flow, rebuilt, state)
        if why is not None:
            raise _Differs(why)
        _PROBED[flow] = key
    if len(_REBUILDS) >= 16:
        _REBUILDS.pop(next(iter(_REBUILDS)))
    _REBUILDS[key] = None


def rebuilt_from(config: dict, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The flow ``config`` builds, checked to hold ``state``'s tensors (names, shapes, kinds
    of dtype; ``ValueError`` otherwise), built on a forked random state (the caller's random
    numbers do not move) and not yet loaded with ``state``."""
    with _forked_rng(state):
        rebuilt = _build(config, BUILD_FLOOR + 8 * _size(state), len(state))
        _check_tensors(rebuilt, state)
    return rebuilt


def _own_code(flow: torch.nn.Module) -> bool:
    """Whether ``flow`` holds a module of the user's own (a class neither flowforge's nor
    torch's) or was built by a builder of the user's (which may draw, say, random masks that
    no file keeps): only such a flow is probed by :func:`rebuilt_differs` when saved. The
    library's layers and builders are covered by its generic test (save and load included),
    and probing them would cost a sequential sampler (TarFlow) seconds on the first save of
    every run."""
    return _users_builder(flow) is not None or any(
        not type(m).__module__.startswith(("flowforge.", "torch.")) for m in flow.modules()
    )


def _users_builder(flow: torch.nn.Module) -> str | None:
    """The builder of ``flow``'s config (``module.function``) where it is not flowforge's own;
    None for the library's builders (or an unknown name)."""
    from .models import registry

    name = (getattr(flow, "config", None) or {}).get("model")
    try:
        origin = registry._origin(registry.spec(name).build)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return None if origin.startswith("flowforge.") else origin


class _forked_rng:
    """torch's random state (on the CPU and on the devices of ``state``'s tensors) and numpy's,
    restored on exit: building and probing a copy never moves the caller's random numbers."""

    def __init__(self, state: dict[str, torch.Tensor] | None = None):
        devices = {t.device for t in (state or {}).values() if t.device.type == "cuda"}
        self._torch = torch.random.fork_rng(devices=sorted(d.index or 0 for d in devices))

    def __enter__(self):
        import numpy as np

        self._np = np.random.get_state()
        self._torch.__enter__()

    def __exit__(self, *exc):
        import numpy as np

        np.random.set_state(self._np)
        return self._torch.__exit__(*exc)


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` differs from ``a`` by more than the rounding of ``a``'s dtype can make two
    runs of the same computation differ (NaN at the same places is no difference)."""
    if a.shape != b.shape:
        return True
    tol = 1e-9 if a.dtype == torch.float64 else 1e-4
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    same = (torch.isnan(a) & torch.isnan(b)) | (a == b)
    return bool((~same & ~((a - b).abs() <= tol * (1 + a.abs()))).any())


def _first(a: torch.Tensor, b: torch.Tensor) -> str:
    """``"a vs b"`` at the entry where they differ most."""
    gap = (a.detach().double().cpu() - b.detach().double().cpu()).abs().nan_to_num(math.inf)
    i = int(gap.reshape(-1).argmax())
    return f"{a.reshape(-1)[i].item():.6g} vs {b.reshape(-1)[i].item():.6g}"


def _hidden(flow: torch.nn.Module, rebuilt: torch.nn.Module) -> tuple[str, torch.nn.Module | None]:
    """Where ``flow`` keeps state that its rebuilt copy does not share: a buffer registered
    with ``persistent=False`` or a numpy array, list or tuple attribute whose values differ,
    and the module that holds it (``("", None)`` if none is found)."""
    import numpy as np

    others = dict(rebuilt.named_modules())
    for name, m in flow.named_modules():
        r = others.get(name)
        if r is None or type(r) is not type(m):
            continue
        where = f"layer {name!r} ({type(m).__name__})" if name else type(m).__name__
        for b in sorted(getattr(m, "_non_persistent_buffers_set", ())):
            mine, theirs = m._buffers.get(b), r._buffers.get(b)
            if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor):
                if mine.shape != theirs.shape or not torch.equal(mine.cpu(), theirs.cpu()):
                    return f"{where} holds {b!r} in a buffer registered with persistent=False", m
        for k, v in vars(m).items():
            if k.startswith("_") or not isinstance(v, (np.ndarray, list, tuple)):
                continue
            w = getattr(r, k, None)
            if isinstance(v, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in v):
                same = (
                    type(w) is type(v)
                    and len(w) == len(v)
                    and all(
                        isinstance(a, torch.Tensor)
                        and isinstance(b, torch.Tensor)
                        and a.shape == b.shape
                        and torch.equal(a.detach().cpu(), b.detach().cpu())
                        for a, b in zip(v, w)
                    )
                )
                if not same:
                    return (
                        f"{where} holds {k!r} in a plain {type(v).__name__} of tensors (which "
                        "is not trained either: an nn.ParameterList is)",
                        m,
                    )
                continue
            try:
                same = type(w) is type(v) and bool(np.array_equal(np.asarray(v), np.asarray(w)))
            except (TypeError, ValueError, RuntimeError):  # (of modules, of parameters...)
                continue
            if not same:
                kind = "a numpy array" if isinstance(v, np.ndarray) else f"a {type(v).__name__}"
                return f"{where} holds {k!r} in {kind}", m
    return "", None


def rebuilt_differs(
    flow: torch.nn.Module,
    rebuilt: torch.nn.Module,
    state: dict[str, torch.Tensor] | None = None,
    points: int = PROBE_POINTS,
) -> str | None:
    """What tells ``rebuilt`` (a flow built from ``flow``'s configuration) apart from ``flow``
    once it is loaded with ``flow``'s state (``state``, default ``flow.state_dict()``), as
    ``ff.load`` would return it; None if nothing does.

    Compares, in eval mode, without gradients, with the same seed before each call: ``points``
    samples of each (one per row of a one-hot context for a conditional flow), then ``log_prob``
    of each at ``flow``'s samples. A flow that cannot sample (or whose samples it cannot score)
    is compared at standard normal points; where ``flow`` itself fails there, nothing is
    compared. ``flow`` is left as it was: its modes, its random numbers and the caller's.
    """
    if state is None:
        state = flow.state_dict()
    floating = {t.dtype for t in state.values() if t.is_floating_point()}
    device = next((t.device for t in state.values()), torch.device("cpu"))
    with _forked_rng(state):
        rebuilt = rebuilt.to(device)
        if len(floating) == 1:  # (as ff.load does: half precision comes back in float32)
            dtype = floating.pop()
            rebuilt.to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
        try:
            rebuilt.load_state_dict(state)
        except (RuntimeError, ValueError) as e:  # (a layer's own check of what it loads)
            msg = " ".join(str(e).split())[:300]
            return f"ff.load could not load this flow's state into the flow it rebuilds ({msg})"
        rebuilt.eval()
        # the inverse each autoregressive layer was set to (set_inverse: not in the
        # configuration), so that both draw their samples the same way
        others = dict(rebuilt.named_modules())
        for name, m in flow.named_modules():
            r = others.get(name)
            if hasattr(m, "inverse_mode") and hasattr(r, "set_inverse"):
                r.set_inverse(m.inverse_mode, getattr(m, "tol", None), getattr(m, "max_iter", None))
        modes = training_modes(flow)
        kept = {k: flow.__dict__[k] for k in _SAMPLE_RECORDS if k in flow.__dict__}
        flow.eval()
        try:
            return _probe(flow, rebuilt, device, points)
        finally:
            restore_modes(modes)
            for k in _SAMPLE_RECORDS:
                flow.__dict__.pop(k, None)
            flow.__dict__.update(kept)


# what a flow's sample() records on it (the share of draws clamped, in all and by column):
# the probe's own samples must not replace the caller's
_SAMPLE_RECORDS = ("clamped", "clamped_columns")


def _probe(flow, rebuilt, device: torch.device, n: int) -> str | None:
    def run(model, fn):
        torch.default_generator.manual_seed(0)  # (the caller's are restored after)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(0)
        with torch.no_grad():
            return fn(model)

    c = int(getattr(flow, "context_features", 0) or 0)
    dtype = getattr(flow, "dtype", torch.get_default_dtype())
    context = None
    if c:  # (one-hot rows: a label-conditional flow's contexts, and fine for any other)
        context = torch.eye(c, device=device, dtype=dtype)[torch.arange(n) % c]
    shape = tuple(getattr(flow, "event_shape", ()) or ())

    def sample(model):
        x = model.sample(1, context) if c else model.sample(n)
        return x.reshape(n, *x.shape[x.dim() - len(shape) :]) if shape else x

    try:
        x = run(flow, sample)
        sampled = True
    except Exception:  # (a flow that cannot sample: scored at normal points only)
        x, sampled = torch.randn(n, *shape, device=device, dtype=dtype), False
    try:
        lp = run(flow, lambda m: m.log_prob(x, context))
    except Exception:
        return None  # (nothing to compare: the flow itself cannot score these points)
    if not isinstance(lp, torch.Tensor):
        return None
    what = None
    try:
        if sampled and _differ(x, x2 := run(rebuilt, sample)):
            what = f"its samples with the same seed differ, {_first(x, x2)}"
        elif _differ(lp, lp2 := run(rebuilt, lambda m: m.log_prob(x, context))):
            what = f"its log_prob differs, {_first(lp, lp2)} at the same point"
    except Exception as e:
        msg = " ".join(str(e).split())[:200]
        what = f"it fails where this flow does not ({type(e).__name__}: {msg})"
    if what is None:
        return None
    where, holder = _hidden(flow, rebuilt)
    builder = _users_builder(flow)
    if builder is not None and (holder is None or type(holder).__module__.startswith("flowforge.")):
        # (a library layer's own state differs: what differs is what the builder gave it)
        return (
            f"ff.load would rebuild another model from this file ({what}): the builder "
            f"{builder} builds another flow from the same arguments"
            + (f" ({where}, set from what the builder gave it)" if where else "")
            + ", so it draws something at random or reads something besides its arguments (a "
            "random mask or order); derive it from an argument, e.g. a seed: int taken by "
            "torch.Generator().manual_seed(seed) (docs/extending.md)"
        )
    where = where or (
        "a layer holds state outside its parameters and persistent buffers (a numpy array, a "
        "list, a buffer registered with persistent=False)"
    )
    return (
        f"ff.load would rebuild another model from this file ({what}): likely {where}, which "
        "a file does not keep; hold it in a parameter or a persistent buffer "
        "(register_buffer(name, tensor); docs/extending.md)"
    )


def _size(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def save(flow: Flow | torch.nn.Module, path: str | os.PathLike) -> None:
    """Save ``flow`` to ``path`` (conventionally ``*.ff``), atomically.

    Example:
        >>> import flowforge as ff, tempfile, os
        >>> flow = ff.models.NICE(features=4)
        >>> path = os.path.join(tempfile.mkdtemp(), "nice.ff")
        >>> ff.save(flow, path)
        >>> ff.load(path).config["model"]
        'NICE'
    """
    if Path(path).is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; give a file name such as {Path(path) / 'model.ff'}"
        )
    atomic_write(path, to_bytes(flow))


def read(
    path: str | os.PathLike, max_bytes: int = MAX_BYTES
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Parse a ``.ff`` file (or a run folder's ``model.ff``) into ``(metadata, tensors)``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"expected path to be a str or os.PathLike (a .ff file or a run folder), got "
            f"{type(path).__name__}"
        )
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
        if path.is_symlink():  # (as every command refuses it: a link reads outside the folder)
            raise ValueError(
                f"{path} is a link; a run folder's {MODEL_FILE} is a plain file in its folder"
            )
    if not path.exists():
        raise ValueError(f"no flowforge checkpoint at {path}")
    meta, tensors = unpack(path, max_bytes, "flowforge checkpoint")
    if meta.get("format") not in FORMATS:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    config = meta.get("config")
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("model"), str)
        or not isinstance(config.get("kwargs"), dict)
    ):
        raise ValueError(f"{path}: the checkpoint's configuration is malformed")
    return meta, tensors


def _upgrade_format1(config: dict, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A ``flowforge/1`` configuration and state in today's terms."""
    config = {**config, "kwargs": dict(config["kwargs"])}
    kwargs = config["kwargs"]
    if config.pop("standardize", False):
        config["prefix"] = ["standardize"]
    # ResidualFlow's hidden=int meant one layer then; an int now repeats the default depth
    if config["model"].lower() == "residualflow" and isinstance(kwargs.get("hidden"), int):
        kwargs["hidden"] = [kwargs["hidden"]]
    if isinstance(kwargs.get("dequantization"), dict) or kwargs.get("dequantization") == (
        "variational"
    ):
        from .transforms.dequantization import VariationalDequantization

        tensors = VariationalDequantization.upgrade_format1(tensors, "dequantizer.")
    return config, tensors


def _shape_numel(values) -> int | None:
    """The element count of a size given as ``(2, 3)``, ``[2, 3]`` or ``2, 3``; None if not."""
    if len(values) == 1 and isinstance(values[0], (list, tuple, torch.Size)):
        values = values[0]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return math.prod(values)
    return None


_FACTORIES = {"empty", "zeros", "ones", "rand", "randn", "empty_strided"}
_NEW = {"new_empty", "new_zeros", "new_ones", "new_full", "repeat"}


class Budget(TorchFunctionMode):
    """Bounds what building a model from a file's configuration may cost: the bytes of every
    tensor it creates (a factory's size is read from its arguments *before* it runs), the
    number of tensor operations, and the wall time. A file's configuration can then never make
    flowforge allocate or compute without bound."""

    def __init__(
        self,
        max_bytes: int,
        max_seconds: float,
        max_ops: int | None = None,
        why: str = "far more than the file holds",
    ):
        super().__init__()
        self.max_bytes, self.max_seconds, self.max_ops = max_bytes, max_seconds, max_ops
        self.why = why
        self.used, self.ops, self.start = 0, 0, time.monotonic()

    @staticmethod
    def _planned(func, args, kwargs) -> int | None:
        """The elements a factory will allocate, from its arguments; None for other ops."""
        name = getattr(func, "__name__", "")
        if name in _FACTORIES:
            return _shape_numel(args if args else (kwargs.get("size", ()),))
        if name == "full" and args:
            return _shape_numel(args[:1])
        if name in _NEW and args and isinstance(args[0], torch.Tensor):
            rest = args[1:2] if name == "new_full" else args[1:]
            n = _shape_numel(rest if rest else (kwargs.get("size", ()),))
            return None if n is None else n * (args[0].numel() if name == "repeat" else 1)
        if name == "arange":
            nums = [float(a) for a in args if isinstance(a, (int, float))]
            if not nums:
                return None
            start, end = (0.0, nums[0]) if len(nums) == 1 else (nums[0], nums[1])
            step = nums[2] if len(nums) > 2 else 1.0
            return max(0, math.ceil((end - start) / step)) if step else 0
        if name in ("eye", "linspace", "logspace"):
            ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
            return math.prod(ints[:2]) if name == "eye" else (ints[-1] if ints else None)
        return None

    def _charge(self, n: int) -> None:
        self.used += n
        if self.used > self.max_bytes:
            raise ValueError(
                f"its configuration would allocate more than {self.max_bytes:,} bytes, "
                f"{self.why}; refusing to build it"
            )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if self.max_ops is not None and self.ops > self.max_ops:
            raise ValueError(
                f"its configuration takes more than {self.max_ops:,} tensor operations to build, "
                "far more than the file's tensors need; refusing to build it"
            )
        if time.monotonic() - self.start > self.max_seconds:
            raise ValueError(
                f"its configuration takes more than {self.max_seconds:g} s to build; refusing"
            )
        planned = self._planned(func, args, kwargs)
        if planned is not None:
            self._charge(planned * 8)  # 8 bytes: the widest dtype a builder uses
            return func(*args, **kwargs)
        out = func(*args, **kwargs)  # other ops make outputs the size of what they were given
        self._charge(
            sum(
                t.numel() * t.element_size()
                for t in tree_flatten(out)[0]
                if isinstance(t, torch.Tensor) and not t._is_view()
            )
        )
        return out


def _check_tensors(flow: Flow, tensors: dict[str, torch.Tensor]) -> None:
    """The file's tensors are exactly the model's state: names, shapes, kinds of dtype."""
    want = flow.state_dict()
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise ValueError(
            "checkpoint does not match its configuration: "
            + (f"missing tensors {missing[:4]}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected tensors {extra[:4]}" if extra else "")
        )
    for k, w in want.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(w.shape):
            raise ValueError(
                f"checkpoint does not match its configuration: tensor {k!r} has shape "
                f"{tuple(t.shape)}, the model expects {tuple(w.shape)}"
            )
        if t.is_floating_point() != w.is_floating_point() or (t.dtype == torch.bool) != (
            w.dtype == torch.bool
        ):
            raise ValueError(
                f"checkpoint does not match its configuration: tensor {k!r} is {t.dtype}, the "
                f"model expects {w.dtype}"
            )


def _build(config: dict, max_bytes: int, n_tensors: int = 0) -> Flow:
    """The flow a saved configuration describes, built under an allocation and time budget."""
    from . import models

    with Budget(max_bytes, BUILD_SECONDS, BUILD_OPS + BUILD_OPS_PER_TENSOR * n_tensors):
        kwargs = models.registry.saved_kwargs(config["model"], config["kwargs"])
        with warnings.catch_warnings():  # (a saved model's widths were chosen when built)
            warnings.simplefilter("ignore", MADEWidthWarning)
            flow = models.build(config["model"], **kwargs)
        prefix = config.get("prefix", [])
        if not isinstance(prefix, list):
            raise ValueError("the checkpoint's configuration: prefix must be a list of layer names")
        for layer in prefix:
            if layer == "standardize":
                flow = models.standardized(flow)
            elif layer == "whiten":
                flow = models.whitened(flow)
            elif isinstance(layer, dict) and list(layer) == ["bounded"]:
                bounds = layer["bounded"]
                if not isinstance(bounds, dict) or not set(bounds) <= {"lower", "upper"}:
                    raise ValueError(
                        "the checkpoint's configuration: a bounded layer takes lower and upper"
                    )
                flow = models.bounded(flow, bounds.get("lower"), bounds.get("upper"))
            elif isinstance(layer, dict) and list(layer) == ["context_standardize"]:
                spec = layer["context_standardize"]
                if not isinstance(spec, dict) or set(spec) != {"loc", "scale"}:
                    raise ValueError(
                        "the checkpoint's configuration: a context standardisation takes loc and "
                        "scale"
                    )
                flow = models.context_standardized(flow, spec["loc"], spec["scale"])
            elif isinstance(layer, dict) and list(layer) == ["integer_columns"]:
                spec = layer["integer_columns"]
                if not isinstance(spec, dict) or not set(spec) <= {"columns", "lower", "upper"}:
                    raise ValueError(
                        "the checkpoint's configuration: integer columns take columns, lower "
                        "and upper"
                    )
                flow = models.integer_columns(
                    flow, spec.get("columns") or [], spec.get("lower"), spec.get("upper")
                )
            else:
                raise ValueError(
                    f"unknown fixed layer {str(layer)[:80]!r} in the checkpoint's configuration"
                )
    return flow


def from_parts(meta: dict, tensors: dict[str, torch.Tensor], max_bytes: int | None = None) -> Flow:
    """Rebuild a flow from a config and its tensors.

    The build runs under an allocation budget (``max_bytes``; default eight times the
    tensors' size, at least 64 MiB) and a time limit (30 s), and the built model's tensors
    must match the file's names, shapes and kinds of dtype before anything is copied."""
    config = meta["config"]
    if meta.get("format") == "flowforge/1":
        config, tensors = _upgrade_format1(config, tensors)
    if max_bytes is None:
        max_bytes = max(BUILD_FLOOR, 8 * _size(tensors))
    with torch.random.fork_rng(devices=[]):  # (its weights are the file's: the caller's random
        flow = _build(config, max_bytes, len(tensors))  # numbers stay where they were, as save)
    # the configuration as saved, before the builder's later arguments completed it: the
    # identity the flow had when it was saved (the .ffz model hash covers it)
    flow.saved_config = config
    _check_tensors(flow, tensors)
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(dtypes) == 1:  # (half-precision weights come back in float32, where flows compute)
        dtype = dtypes.pop()
        flow.to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    try:
        flow.load_state_dict(tensors)
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:400]
        raise ValueError(f"checkpoint does not match its configuration: {msg}") from None
    return flow


def load(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    max_bytes: int = MAX_BYTES,
) -> Flow:
    """Load a flow saved by :func:`save`, or the model of a workbench run folder.

    ``path`` may be a ``.ff`` file or a folder holding ``model.ff``. Never unpickles; reads at
    most ``max_bytes`` (4 GiB by default) from a regular file. The flow comes back in eval
    mode, so that it scores and samples as the saved one did (batch normalisation with its
    running statistics, no dropout, the NaN guard on); call ``.train()`` to train it further.
    """
    meta, tensors = read(path, max_bytes)
    try:
        flow = from_parts(meta, tensors)
    except (TypeError, ValueError, RuntimeError) as e:  # (torch's own, from a crafted config)
        raise ValueError(f"{path}: {' '.join(str(e).split())}") from None
    return flow.to(map_location).eval()
