r"""Building the model a config asks for, shaped for a dataset.

What a builder takes comes from its :class:`~flowforge.models.BuilderSpec` (vectors, images,
the shared data options), never from inspecting signatures.
"""

from __future__ import annotations

import math

import torch

from .. import models
from ..core import Flow
from .data import Dataset
from .errors import WorkbenchError

__all__ = ["build_flow", "standardized"]


def standardized(flow: Flow, stats: dict, shape) -> Flow:
    """``flow`` preceded by a fixed ``(x - loc) / scale`` layer (training-split statistics).

    The result scores raw data (the standardisation's log-determinant included) and keeps the
    statistics through ``ff.save``/``ff.load`` (:func:`flowforge.models.standardized`).
    """
    loc = torch.tensor(stats["loc"], dtype=torch.float32).reshape(shape)
    scale = torch.tensor(stats["scale"], dtype=torch.float32).reshape(shape)
    return models.standardized(flow, loc, scale)


def _context_note(resolved: dict) -> str:
    c = resolved.get("context")
    if not c:
        return ""
    if c["kind"] == "label":
        return f"; conditional on {c['features']} class labels"
    return f"; p(columns {c['target_columns']} | columns {c['context_columns']})"


def build_flow(cfg: dict, ds: Dataset) -> tuple[Flow, Flow, dict]:
    """Build the model a config asks for, shaped for ``ds``.

    Returns ``(flow, inner, resolved)``: ``inner`` is the builder's flow; ``flow`` is what the
    trainer fits, saves to ``model.ff`` and scores raw data with (``inner`` preceded by the
    standardisation, if the data has statistics); ``resolved`` records the decisions.
    """
    name, kwargs = cfg["model"]["name"], dict(cfg["model"]["kwargs"])
    spec = models.spec(name)
    for k in ("features", "shape"):
        if k in kwargs:
            raise WorkbenchError(f"model argument {k!r} comes from the data; remove it")
    layout = cfg["layout"]
    if layout == "image":
        if not ds.is_image:
            raise WorkbenchError(f"--layout image needs image data; {ds.name} has shape {ds.shape}")
        if "shape" not in spec.inputs:
            raise WorkbenchError(f"model {name!r} takes vectors only (no image layout)")
    elif layout == "vector":
        if "features" not in spec.inputs:
            raise WorkbenchError(f"model {name!r} takes images only (no vector layout)")
    else:
        layout = "image" if ds.is_image and "shape" in spec.inputs else "vector"
        if layout == "vector" and "features" not in spec.inputs:
            raise WorkbenchError(f"model {name!r} takes images only; {ds.name} is not image data")
    takes = spec.signature.parameters
    if ds.levels is not None and "levels" not in kwargs:
        if "levels" not in takes:
            raise WorkbenchError(f"model {name!r} cannot model discrete data (no levels= option)")
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
    elif kwargs.get("base") == "class-gaussian":
        raise WorkbenchError(
            "base 'class-gaussian' needs a conditional run: add --conditional label (or "
            "--target-columns for a table)"
        )
    shape_kw = {"shape": list(ds.shape)} if layout == "image" else {"features": math.prod(ds.shape)}
    try:
        inner = models.build(name, **shape_kw, **kwargs)
    except ImportError as e:
        raise WorkbenchError(f"model {name!r} is not available here: {e}") from None
    except (TypeError, ValueError) as e:
        raise WorkbenchError(f"cannot build {name!r}: {' '.join(str(e).split())}") from None
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
    if ds.info.get("columns"):
        resolved["columns"] = ds.info["columns"]
    return flow, inner, resolved


def describe(cfg: dict, resolved: dict, ds: Dataset, world: int = 1) -> str:
    """The one line a run prints when it starts."""
    shape = resolved["event_shape"]
    return (
        f"model {cfg['model']['name']} ({resolved['layout']} {'x'.join(map(str, shape))}"
        f"{', levels=' + str(ds.levels) if ds.levels else ''}): "
        f"{resolved['parameters']:,} parameters; data {ds.name}: "
        f"{resolved['examples']['train']} train / {resolved['examples']['val']} val"
        f"{_context_note(resolved)}"
        f"{'; ' + str(world) + ' processes' if world > 1 else ''}"
    )
