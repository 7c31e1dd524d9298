"""The package's structure: no import cycle, every module importable on its own, the library
never imports the workbench, and files written by earlier versions still load."""

from __future__ import annotations

import ast
import json
import multiprocessing
import sys
from pathlib import Path

import pytest
import torch

import flowforge as ff

SRC = Path(ff.__file__).parent
DATA = Path(__file__).parent / "data"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The flowforge modules that ``name`` imports at module level (not inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # importing a.b.c runs the package a.b first: the package is a dependency, not an edge back
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_can_fail():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_workbench():
    graph = _graph()
    for m, deps in graph.items():
        if not m.startswith("flowforge.workbench") and m != "flowforge.__main__":
            bad = sorted(d for d in deps if d.startswith("flowforge.workbench"))
            assert not bad, f"{m} imports {bad}"


def _import_alone(name: str, queue) -> None:
    for m in [k for k in sys.modules if k == "flowforge" or k.startswith("flowforge.")]:
        del sys.modules[m]
    try:
        __import__(name)
        queue.put((name, None))
    except BaseException as e:  # report anything, the parent asserts
        queue.put((name, f"{type(e).__name__}: {e}"))


def test_every_module_imports_on_its_own():
    """Each module imported first, in a process of its own that has not imported flowforge
    (forked after torch, so that each costs a fraction of a second)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    failures = []
    for name in _modules():
        p = ctx.Process(target=_import_alone, args=(name, queue))
        p.start()
        p.join(60)
        got, error = queue.get(timeout=5)
        if error:
            failures.append(f"{got}: {error}")
    assert not failures, "\n".join(failures)


# -- earlier formats -----------------------------------------------------------------------------

FORMAT1 = json.loads((DATA / "format1" / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(FORMAT1))
def test_format1_checkpoints_load_and_score_the_same(name):
    """Files written by flowforge/1 (tests/data/format1, made by the code of d46d5da) load and
    give the log-probabilities that version computed."""
    rec = FORMAT1[name]
    flow = ff.load(DATA / "format1" / f"{name}.ff").eval()
    x = torch.tensor(rec["x"])
    ctx = None if rec["context"] is None else torch.tensor(rec["context"])
    torch.manual_seed(2)
    got = flow.log_prob(x, ctx)
    torch.testing.assert_close(got, torch.tensor(rec["log_prob"]), rtol=1e-5, atol=1e-4)
    # and it saves in today's format, with the whole configuration
    assert set(flow.config["kwargs"]) >= set(ff.models.spec(flow.config["model"]).defaults())


def test_a_run_folder_of_the_earlier_workbench_still_evaluates(tmp_path):
    """tests/data/format1/run-moons was trained by the workbench of d46d5da (flowforge/1 model,
    its checkpoint format); eval gives the number that version printed."""
    from flowforge.workbench.evaluate import evaluate_run

    res = evaluate_run(str(DATA / "format1" / "run-moons"), "test")
    assert res["examples"] == 1000
    assert abs(res["nll"] - 3.8089950013160707) < 1e-6


@pytest.mark.parametrize("model", ["maf", "iaf", "nsf"])
def test_a_format1_file_builds_with_the_defaults_of_its_time(tmp_path, model):
    """flowforge/1 files record only the arguments given: an absent one stands for the default
    of then (MAF: 5 layers of (128, 128) plain MADEs, today max(5, 32 // features) residual
    ones; permutation "reverse", today "auto"), so the file loads as the model it holds."""
    from flowforge import io

    torch.manual_seed(0)
    old = {"layers": 5, "hidden": [128, 128], "residual": False} if model == "maf" else {}
    then = ff.models.build(model, features=3, permutation="reverse", standardize=False, **old)
    with torch.no_grad():
        for p in then.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    meta = {"format": "flowforge/1", "config": {"model": model.upper(), "kwargs": {"features": 3}}}
    (tmp_path / "m.ff").write_bytes(io.pack(then.state_dict(), meta))
    flow = ff.load(tmp_path / "m.ff")
    assert flow.config["kwargs"]["permutation"] == "reverse"
    x = torch.randn(6, 3)
    torch.testing.assert_close(flow.log_prob(x), then.eval().log_prob(x))
