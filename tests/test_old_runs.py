"""Run folders written by earlier flowforge versions, read by this one (an upgrade audit).

The folders are made here as those versions wrote them, from tests/data/format1/run-moons
(trained by the workbench of d46d5da, 2026-11-22, flowforge/1) where one is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import flowforge as ff
from flowforge import io

DATA = Path(__file__).parent / "data"
RUN1 = DATA / "format1" / "run-moons"


def _copy_run1(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(RUN1, run)
    return run


def _standardized_format1_run(tmp_path) -> tuple[Path, ff.Flow]:
    """run-moons as flowforge/1 wrote a run on a standardised table: both the run's
    ``flow_config`` and its ``model.ff`` say ``"standardize": true`` at the top level."""
    run = _copy_run1(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    fc = {**cfg["resolved"]["flow_config"], "standardize": True}
    cfg["resolved"]["flow_config"] = fc
    (run / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    flow = ff.models.standardized(ff.load(RUN1))
    with torch.no_grad():
        for b in flow.buffers():
            if b.is_floating_point():
                b.add_(0.1 * torch.rand(b.shape) + 0.5)
    meta = {"format": "flowforge/1", "config": fc}
    (run / "model.ff").write_bytes(io.pack(flow.state_dict(), meta))
    return run, flow.eval()


def test_a_flowforge1_run_on_a_standardised_table_loads(tmp_path):
    """F1: its stored flow_config is compared after the upgrade loading applies (before, the
    run was refused: "config.json and model.ff disagree")."""
    from flowforge.workbench.runs import load_run

    run, then = _standardized_format1_run(tmp_path)
    flow = load_run(run)
    x = torch.randn(9, 2)
    torch.testing.assert_close(flow.log_prob(x), then.log_prob(x))
