"""The configuration files under configs/: each resolves, and every README/docs command that
names one points at a file that exists; ``flowforge demo`` trains exactly configs/demo.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flowforge.workbench.cli import DEMO
from flowforge.workbench.config import read_config, resolve_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_resolves(path):
    cfg = resolve_config(read_config(path))
    assert cfg["model"]["name"] and cfg["data"]["name"]


def test_the_docs_name_only_configs_that_exist():
    named = set()
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        named |= set(re.findall(r"configs/([\w.-]+\.ya?ml)", doc.read_text()))
    assert named, "the README names no config"
    missing = sorted(n for n in named if not (ROOT / "configs" / n).is_file())
    assert not missing, f"named in the docs but missing: {missing}"


def test_demo_trains_configs_demo_yaml():
    assert resolve_config(DEMO) == resolve_config(read_config(ROOT / "configs" / "demo.yaml"))
