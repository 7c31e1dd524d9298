"""Run folders written by earlier flowforge versions, read by this one (an upgrade audit).

The folders are made here as those versions wrote them, from tests/data/format1/run-moons
(trained by the workbench of d46d5da, 2026-11-22, flowforge/1) where one is needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
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


def test_a_flowforge1_run_resumes_and_replays(tmp_path, capsys):
    """F3: its stored flow_config (the arguments given) and the rebuilt one (every argument)
    are compared completed with the builder's defaults. Before, resume said "the model builder
    now gives a different model" and replay "this flowforge builds another model"."""
    from cli_support import cli

    run = _copy_run1(tmp_path)
    rc, out, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress")
    assert rc == 0, err
    assert "nothing to train: the run had finished" in out + err
    rc, _, err = cli(capsys, "train", "--config", run / "config.json", "--out", tmp_path / "r",
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    then, now = (
        [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (RUN1, tmp_path / "r")
    )
    then, now = ([r for r in m if r["type"] == "epoch"] for m in (then, now))
    assert now[0]["train_loss"] == then[0]["train_loss"]  # the same training, step by step
    assert abs(now[0]["val_nll"] - then[0]["val_nll"]) < 1e-6


def test_same_model_still_tells_other_models_apart():
    """F3's comparison completes a flowforge/1 configuration with the builder's defaults, and
    still refuses another model; a refusal of an old run says it predates flowforge/2."""
    from flowforge.workbench.build import rebuild_refusal, same_model

    before = {"model": "RealNVP", "kwargs": {"features": 2, "layers": 2, "hidden": [8]}}
    legacy = {"standardize": False, "shift_first": False, "residual": False, "alternate": True}
    now = ff.models.build("realnvp", features=2, layers=2, hidden=[8], **legacy).config
    assert same_model(before, now)
    other = ff.models.build("realnvp", features=2, layers=3, hidden=[8], **legacy)
    assert not same_model(before, other.config)
    std = ff.models.build(
        "realnvp", features=2, layers=2, hidden=[8], **{**legacy, "standardize": True}
    )
    assert not same_model(before, std.config)  # (flowforge/1 did not standardise inside)
    assert "predates flowforge/2" in rebuild_refusal("r", before)
    assert "--init-from r" in rebuild_refusal("r", before)
    assert "predates" not in rebuild_refusal("r", now)


def _column_table(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)) * [1.0, 2.0, 1.4] + [0.0, -1.0, 3.16]
    path = tmp_path / "t.csv"
    np.savetxt(path, x, delimiter=",", fmt="%.5f", header="a,b,c", comments="")
    return path


def test_a_column_conditional_run_of_2026_12_05_keeps_its_data(tmp_path):
    """F4: --target-columns runs up to 2026-12-05 fingerprinted their contexts standardised in
    float32, ``(c - loc32) / scale32``; since then float64 is tried too. Before, such a run's
    unchanged data was "not the data this run was trained on"."""
    from flowforge.workbench.data import load_dataset
    from flowforge.workbench.runner import same_data
    from flowforge.workbench.runs import fingerprint

    ds = load_dataset(str(_column_table(tmp_path)), seed=0, target_columns="0,1")
    info = ds.context_info
    loc, scale = (torch.tensor(info["stats"][k], dtype=torch.float32) for k in ("loc", "scale"))
    base = [ds.split(k) for k in ("train", "val", "test")]
    ctx = [(ds.split_context(k).float() - loc) / scale for k in ("train", "val")]
    old = {
        "flow_config": {"model": "MAF", "kwargs": {}},
        "data_fingerprint": fingerprint(*base, *ctx),
    }
    assert same_data(ds, old)
    moved = [c.clone() for c in ctx]
    moved[1][0, 0] += 1e-3  # (another file: still refused)
    assert not same_data(ds, {**old, "data_fingerprint": fingerprint(*base, *moved)})


@pytest.mark.parametrize("first, then_header", [("1,2,3", False), ("1.5.2,2.5,3.5", True)])
def test_a_run_on_a_csv_with_an_ambiguous_first_line_reads_it_as_then(tmp_path, first, then_header):
    """F5: before 2026-12-06 a first line of numbers (``1,2,3``) was a row of data, and before
    2026-12-07 one of names beside numbers that are not whole (``1.5.2,2.5``, now a data row
    with a bad cell) was a header. A run that recorded no ``header`` option reads its CSV as
    its fingerprint says it was read; a new run on such a file is refused, naming
    ``data.header``."""
    from flowforge.workbench.data import DataError, load_dataset
    from flowforge.workbench.runner import _splits_fingerprint, run_dataset

    rng = np.random.default_rng(1)
    path = tmp_path / "first.csv"
    rows = "\n".join(",".join(f"{v:.5f}" for v in r) for r in rng.normal(size=(120, 3)))
    path.write_text(f"{first}\n" + rows + "\n")
    then = load_dataset(str(path), seed=0, header=then_header)
    cfg = {
        "data": {"name": str(path), "seed": 0, "options": {}},
        "resolved": {"data_fingerprint": _splits_fingerprint(then)},
    }
    ds = run_dataset(cfg, checks=False)
    assert torch.equal(ds.split("train"), then.split("train"))
    assert len(then.split("train")) == (96 if then_header else 97)
    with pytest.raises(DataError, match="header"):
        load_dataset(str(path), seed=0)


def test_a_new_run_starts_from_a_flowforge1_run(tmp_path, capsys):
    """F6: --init-from with no model options builds the new run's model from the arguments
    the source's model was built with (completed as loading completes them), not from today's
    defaults; before, every old run was refused ("residual False there, None here ...")."""
    from cli_support import cli

    rc, out, err = cli(capsys, "train", "--init-from", RUN1, "--out", tmp_path / "n",
                       "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    new = ff.load(tmp_path / "n" / "model.ff")
    assert set(new.state_dict()) == set(ff.load(RUN1).state_dict())


def test_resuming_a_run_without_a_data_fingerprint_says_what_to_do(tmp_path):
    """F9: a run from before data fingerprints cannot be resumed on its file (nothing tells
    it is the run's data); the refusal gives the --init-from command that continues from it."""
    from flowforge.workbench.errors import RunError
    from flowforge.workbench.runner import run_dataset

    path = _column_table(tmp_path)
    cfg = {"data": {"name": str(path), "seed": 0, "options": {}}, "resolved": {}}
    with pytest.raises(RunError, match=f"--init-from old --data {path} --out NEW_RUN"):
        run_dataset(cfg, RunError, "old")
