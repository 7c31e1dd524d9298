"""What type checkers, IDEs and notebooks see of flowforge: the package says it is typed (PEP
561), the names imported on first use are declared for type checkers, the same names the
package serves, and a model, a dataset and a trainer print as what they are."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import flowforge

SRC = Path(flowforge.__file__).parent


def test_the_package_is_marked_typed_and_ships_the_marker():
    assert (SRC / "py.typed").is_file()
    pyproject = (SRC.parent.parent / "pyproject.toml").read_text()
    assert 'flowforge = ["py.typed"]' in pyproject


def _type_checking_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    return {a.asname or a.name for imp in block.body for a in imp.names}


@pytest.mark.parametrize("package", ["flowforge", "flowforge.workbench"])
def test_the_names_imported_on_first_use_are_declared_for_type_checkers(package):
    module = importlib.import_module(package)
    served = set(module._NAMES) | set(getattr(module, "_SUBMODULES", ()))
    declared = _type_checking_names(Path(module.__file__))
    assert declared == served
    assert set(module.__all__) <= served and served - set(module.__all__) <= {"io"}
    for name in module.__all__:  # (each one is there, and is what the declaration names)
        assert getattr(module, name) is not None


def test_a_model_a_dataset_and_a_trainer_print_as_what_they_are():
    import flowforge as ff
    from flowforge.workbench import Trainer, load_dataset

    flow = ff.models.NSF(features=2, context_features=3, layers=1, hidden=(8,))
    n = sum(p.numel() for p in flow.parameters())
    assert repr(flow).splitlines()[1].strip() == (
        f"NSF, event_shape=(2,), context_features=3, {n:,} parameters"
    )
    ds = load_dataset("moons", n_train=64, n_val=32, n_test=32)
    assert repr(ds) == "Dataset('moons', points, shape=(2,), train / val / test = 64 / 32 / 32)"
    t = Trainer(ff.models.RealNVP(features=2, layers=1, hidden=(4,)), ds.train, ds.val,
                {"epochs": 2, "batch_size": 32}, progress=False, echo=False)  # fmt: skip
    assert repr(t) == (
        "Trainer(RealNVP, objective=nll, epochs=2, batch_size=32, lr=0.001, step 0 of 4)"
    )
