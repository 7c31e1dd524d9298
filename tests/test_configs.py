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


def test_a_toml_config_reads_as_its_yaml_and_json_twins(tmp_path):
    # (a coverage audit: no test read a TOML config, though the docs offer the format)
    import json

    text = {
        "yaml": "model:\n  name: realnvp\n  hidden: [8]\ndata: moons\ntrain:\n  lr: 2.0e-3\n",
        "toml": 'data = "moons"\n[model]\nname = "realnvp"\nhidden = [8]\n[train]\nlr = 2e-3\n',
        "json": json.dumps(
            {"model": {"name": "realnvp", "hidden": [8]}, "data": "moons", "train": {"lr": 2e-3}}
        ),  # fmt: skip
    }
    read = {}
    for suffix, body in text.items():
        path = tmp_path / f"c.{suffix}"
        path.write_text(body)
        read[suffix] = resolve_config(read_config(path))
    assert read["toml"] == read["yaml"] == read["json"]
    assert read["toml"]["train"]["lr"] == 2e-3 and read["toml"]["model"]["name"] == "realnvp"
    (tmp_path / "bad.toml").write_text("model = [\n")
    with pytest.raises(Exception, match="bad.toml"):
        read_config(tmp_path / "bad.toml")


def test_demo_of_another_model_takes_its_own_learning_rate():
    # (`demo --model bnaf` trained at the demo's 1e-3, not BNAF's own 0.01, without a word)
    from flowforge.workbench.cli import demo_config
    from flowforge.workbench.config import resolve_config

    assert resolve_config(demo_config("bnaf"))["train"]["lr"] == 0.01
    assert resolve_config(demo_config("maf", 3))["train"]["lr"] == 1e-3
    assert resolve_config(demo_config())["train"] == resolve_config(DEMO)["train"]
