"""benchmarks/device.py on the CPU (``--device cpu`` runs the same code without the peak and
memory parts): it runs, writes JSON without NaN, and its tables of the committed H100 results
are the committed ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import device  # noqa: E402

RESULTS = BENCH / "results"
H100 = ["device_h100.json", "device_h100_first.json", "device_h100_compiled_maf.json",
        "device_h100_compiled_realnvp.json"]  # fmt: skip


def test_the_committed_tables_are_what_render_writes():
    assert device.render([RESULTS / n for n in H100]) == (RESULTS / "device_h100.md").read_text()


def test_it_runs_on_the_cpu_and_writes_json_without_nan(tmp_path, capsys):
    out = tmp_path / "d.json"
    device.main(["--out", str(out), "--device", "cpu", "--datasets", "moons", "--models",
                 "realnvp", "--libs", "flowforge", "--train-batches", "64", "--eval-batches",
                 "256", "--trainer-epochs", "2", "--trainer-models", "maf", "--rounds", "1",
                 "--parts", "throughput,trainer"])  # fmt: skip
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    r = json.loads(text)
    ops = {(x["library"], x["op"]) for x in r["throughput"]}
    assert {("flowforge", "train"), ("floor", "train"), ("flowforge", "sample")} <= ops
    assert all(x["trainer_step_s"] > 0 and x["bare_step_s"] > 0 for x in r["trainer"])
    table = device.render([out])
    assert "| moons | realnvp | train | 64 |" in table and "Trainer step" in table
