"""What ``flowforge list`` shows, without importing torch.

The models are read from the source of ``flowforge/models/*.py`` (every function decorated with
``@register``: its name, first docstring line, inputs and main arguments with their defaults);
the datasets' descriptions live here and :mod:`flowforge.workbench.data` takes them from here.
``tests/test_workbench.py`` checks both against the live registries.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

__all__ = [
    "DATASET_NOTES",
    "OBJECTIVES",
    "OWN_OBJECTIVES",
    "SIZING",
    "TARGET_NAMES",
    "WORKBENCH_REFUSES",
    "data_options",
    "live_models",
    "models",
]

# the training objectives (train.objective), with what each does
OBJECTIVES: dict[str, str] = {
    "nll": "maximum likelihood (forward KL)",
    "flow-matching": "conditional flow matching of a CNF, linear path (flowforge.matching)",
    "flow-matching-ot": "flow matching, linear path, mini-batch optimal-transport pairing",
    "flow-matching-vp": "flow matching, variance-preserving path",
    "mflow": "an M-flow's manifold phase (reconstruction), then its density phase",
    "mflow-alternating": "an M-flow's manifold and density epochs alternating, then density",
}
# models that train with objectives of their own only (MFlow.objectives), and the registered
# models the workbench neither trains nor scores (build.PYTHON_ONLY says why): tests check both
OWN_OBJECTIVES = {"mflow": ("mflow", "mflow-alternating")}
WORKBENCH_REFUSES = ("augmented",)
# the built-in fit-target targets (flowforge.targets.available(), which imports torch)
TARGET_NAMES = ("banana", "funnel", "funnel10", "mog2", "mog8", "u1", "u2", "u3", "u4")

_TOY_NAMES = (
    "moons",
    "circles",
    "8gaussians",
    "checkerboard",
    "pinwheel",
    "2spirals",
    "rings",
    "swissroll",
)

DATASET_NOTES = {
    "digits": "sklearn 8x8 digits, 17 levels; 1000/350/447 train/val/test",
    **{k: f"2-D toy '{k}' (continuous, seeded)" for k in _TOY_NAMES},
    "circle-vonmises": "mixture of 3 von Mises on the circle (angles in [-pi, pi)), known density",
    "torus-vonmises": "mixture of 4 von Mises products on the torus T^2, known density",
    "sphere-vmf": "mixture of 4 von Mises-Fisher on the sphere (unit vectors), known density",
    "surface-64": "a 2-D surface in R^64 with noise 0.01, known density on it (M-flows)",
    # the benchmarks of the flow papers, read from their files under data.root
    # (flowforge.workbench.benchmark_data; docs/benchmark-data.md)
    "power": "UCI POWER as the MAF paper prepares it, 6-D (data.root: power/data.npy)",
    "gas": "UCI GAS as the MAF paper prepares it, 8-D (data.root: gas/ethylene_CO.txt)",
    "hepmass": "UCI HEPMASS as the MAF paper prepares it, 21-D (data.root: hepmass/*.csv)",
    "miniboone": "UCI MINIBOONE as the MAF paper prepares it, 43-D (data.root: miniboone/data.npy)",
    "bsds300": "BSDS300 8x8 patches, MAF paper's, 63-D (data.root: BSDS300/BSDS300.hdf5; h5py)",
    "mnist": "MNIST 1x28x28, 256 levels; 50k/10k/10k (data.root: mnist/*-idx3-ubyte[.gz])",
    "fashion-mnist": "Fashion-MNIST, as mnist (data.root: fashion-mnist/*-idx3-ubyte[.gz])",
}

SIZING = """\
When a run's model arguments leave the depth and the width unset, the workbench sizes the
model to the data (d: the dimension, n: the training examples), never above the builder's own
defaults (those are sized for benchmarks):

    vectors: depth = 4 + ceil(log2(d)), at most 8
             width = 2^round(log2(n / 50)) clamped to [32, 256], at least 2^ceil(log2(2 d))
    images:  depth (Glow steps per scale) = round(log2(n / 40)) clamped to [2, 8]
             width (channels) = 2^round(log2(n / 40)) clamped to [32, 128]

Give the argument (e.g. --model-kwargs '{"layers": 8, "hidden": [256, 256]}') to override;
the choice is printed when the run starts and recorded in config.json (resolved.sizing)."""

_MODELS = Path(__file__).resolve().parent.parent / "models"


def _register_call(fn: ast.FunctionDef) -> ast.expr | None:
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Name) and target.id == "register":
            return d
    return None


def summary(doc: str) -> str:
    """A builder's docstring's first paragraph on one line, as ``flowforge list`` shows it
    (its first line cut sentences short): Sphinx roles by their name (``:class:`~a.B``` as
    ``B``), literals in single backquotes (an argument's name)."""
    first = " ".join(doc.strip().split("\n\n", 1)[0].split())
    first = re.sub(r":\w+:`~?([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], first)
    return first.replace("``", "`")


def models() -> list[dict]:
    """Each registered builder: ``name``, ``summary``, ``inputs`` and ``arguments`` (its own
    arguments with their defaults as source text; the shared data options and inputs aside)."""
    out = []
    for path in sorted(_MODELS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for fn in tree.body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            deco = _register_call(fn)
            if deco is None:
                continue
            inputs: tuple[str, ...] = ("features",)
            marks = {"depth": "layers", "width": "hidden"}  # register()'s defaults
            lr = None
            if isinstance(deco, ast.Call):
                for kw in deco.keywords:
                    if kw.arg == "inputs":
                        inputs = tuple(ast.literal_eval(kw.value))
                    if kw.arg in marks:
                        marks[kw.arg] = ast.literal_eval(kw.value)
                    if kw.arg == "lr":
                        lr = ast.literal_eval(kw.value)
            a = fn.args
            pos = a.posonlyargs + a.args
            defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
            arguments = {
                p.arg: ast.unparse(d) if d is not None else None
                for p, d in zip(pos, defaults)
                if p.arg not in inputs
            }
            names = {p.arg for p in pos + a.kwonlyargs}
            marks = {k: v if v in names else None for k, v in marks.items()}  # (as register())
            doc = ast.get_docstring(fn) or ""
            out.append(
                {
                    "name": fn.name.lower(),
                    "summary": summary(doc),
                    "inputs": list(inputs),
                    "arguments": arguments,
                    # whether it takes the shared data options (a keyword-only ``data``)
                    "data_options": any(k.arg == "data" for k in a.kwonlyargs),
                    "lr": lr,  # (its own learning rate, where it has one: register(lr=))
                    **marks,
                }
            )
    return sorted(out, key=lambda m: m["name"])


def data_options() -> list[str]:
    """The data options every builder takes (the fields of ``models.assembly.DataOptions``)."""
    tree = ast.parse((_MODELS / "assembly.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "DataOptions":
            return [
                n.target.id
                for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            ]
    return []


def live_models() -> list[dict]:
    """The same records from the live registry, if ``flowforge.models`` is already imported
    (builders registered at run time, e.g. by a plugin module); else nothing."""
    registry = sys.modules.get("flowforge.models.registry")
    if registry is None:
        return []
    out = []
    for name in registry.available():
        spec = registry.spec(name)
        out.append(
            {
                "name": name,
                "summary": summary(inspect.getdoc(spec.build) or ""),
                "inputs": list(spec.inputs),
                "arguments": {k: repr(v) for k, v in spec.defaults().items()},
                "depth": spec.depth,
                "width": spec.width,
                "lr": spec.lr,
                "data_options": spec.data,
            }
        )
    return out
