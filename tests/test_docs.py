"""Every ```python block in the README and docs/ runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (f"{path.name}:{i}", code)
    for path in DOCS
    if path.exists()
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # (a snippet that walks into a trap)
@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[n for n, _ in BLOCKS])
def test_snippet_runs(code, tmp_path, monkeypatch):
    from flowforge import targets
    from flowforge.models import registry

    monkeypatch.chdir(tmp_path)
    # a snippet that registers a builder (docs/extending.md) leaves the registry as it was,
    # so later tests see the library's models only, whatever the order they run in
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    monkeypatch.setattr(targets, "TARGETS", dict(targets.TARGETS))  # (and docs/vi.md's target)
    exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})
