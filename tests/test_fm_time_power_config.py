"""``train.fm_time_power``: the workbench's flow-matching objectives with times ``s = u ** p``."""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge.workbench.errors import WorkbenchError
from flowforge.workbench.trainer import Trainer

CFG = {"epochs": 1, "batch_size": 64, "warmup_steps": 0}


def _trainer(**train):
    torch.manual_seed(0)
    x = torch.randn(128, 2)
    flow = ff.models.build("cnf", features=2, hidden=(8,))
    return Trainer(flow, x, x[:32], {**CFG, **train}, progress=False, echo=False)


def test_the_default_keeps_uniform_times_and_a_power_is_used():
    assert _trainer(objective="flow-matching").objective.fm.times[0] == "uniform"
    t = _trainer(objective="flow-matching-vp", fm_time_power=2.0)
    fm = t.objective.fm
    assert fm.times[0] == "power" and fm.times[3] == 2.0 and fm.path == "vp"
    out = t.fit()
    assert out["status"] == "finished" and math.isfinite(out["best_val"])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "two", True])
def test_bad_powers_are_refused(bad):
    with pytest.raises(WorkbenchError, match="fm_time_power"):
        _trainer(objective="flow-matching", fm_time_power=bad)


def test_a_power_without_flow_matching_is_refused():
    with pytest.raises(WorkbenchError, match="flow-matching objectives only"):
        _trainer(objective="nll", fm_time_power=2.0)
