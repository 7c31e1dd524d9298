"""What type checkers and IDEs see of flowforge (PEP 561): the package says it is typed, and
the names imported on first use are declared for them, the same names the package serves."""

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
