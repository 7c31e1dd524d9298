r"""Saving and loading flows without pickle: weights in safetensors, configuration in JSON.

A ``.ff`` file is one safetensors file whose header metadata holds the builder's name and
arguments as JSON. Loading parses that JSON, rebuilds the flow with the registered builder and
copies the tensors in; no code from the file is ever executed. Files are written atomically
(a temporary file in the same folder, fsync, then rename), so a crash never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .core import Flow

__all__ = ["save", "load", "atomic_write", "FORMAT"]

FORMAT = "flowforge/1"
MODEL_FILE = "model.ff"


def _safetensors():
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        raise ImportError(
            "saving and loading flows needs safetensors: pip install 'flowforge[io]'"
        ) from None
    return safetensors


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_bytes(flow: Flow, extra: dict | None = None) -> bytes:
    """Serialise a flow built by :mod:`flowforge.models` to safetensors bytes."""
    if getattr(flow, "config", None) is None:
        raise ValueError(
            "ff.save needs a flow built by a flowforge.models builder (it records the "
            "configuration); for a hand-built flow, save flow.state_dict() with "
            "safetensors.torch.save_file and rebuild the flow before loading it"
        )
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in flow.state_dict().items()}
    meta = {"format": FORMAT, "config": flow.config, **(extra or {})}
    return _safetensors().torch.save(tensors, metadata={"flowforge": json.dumps(meta)})


def save(flow: Flow, path: str | os.PathLike) -> None:
    """Save ``flow`` to ``path`` (conventionally ``*.ff``), atomically.

    Example:
        >>> import flowforge as ff, tempfile, os
        >>> flow = ff.models.NICE(features=4)
        >>> path = os.path.join(tempfile.mkdtemp(), "nice.ff")
        >>> ff.save(flow, path)
        >>> ff.load(path).config["model"]
        'NICE'
    """
    atomic_write(path, to_bytes(flow))


def read(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Parse a ``.ff`` file into ``(metadata, tensors)``; ``ValueError`` if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise ValueError(f"no flowforge checkpoint at {path}")
    st = _safetensors()
    try:
        tensors = st.torch.load(path.read_bytes())
        with st.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = json.loads(header["flowforge"])
    except (
        st.SafetensorError,
        KeyError,
        TypeError,
        json.JSONDecodeError,
        OSError,
        RuntimeError,
    ) as e:
        raise ValueError(
            f"{path} is not a readable flowforge checkpoint (corrupt or truncated?): {e}"
        ) from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta, tensors


def from_parts(meta: dict, tensors: dict[str, torch.Tensor]) -> Flow:
    """Rebuild a flow from a config and its tensors."""
    from . import models

    config = meta["config"]
    flow = models.build(config["model"], **config["kwargs"])
    if config.get("standardize"):
        flow = models.standardized(flow)
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        flow.to(dtypes.pop())
    try:
        flow.load_state_dict(tensors)
    except RuntimeError as e:
        raise ValueError(f"checkpoint does not match its configuration: {e}") from None
    return flow


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Flow:
    """Load a flow saved by :func:`save`, or the model of a workbench run folder.

    ``path`` may be a ``.ff`` file or a folder holding ``model.ff``. Never unpickles.
    """
    meta, tensors = read(path)
    return from_parts(meta, tensors).to(map_location)
