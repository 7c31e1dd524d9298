"""What keeps a test number honest: a split named beside a file that is scored whole, a test
context that changed since training, a data seed that changes nothing, the training data
handed in as the validation data (an audit of leakage between the splits)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cli_support import cli, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--model-kwargs", '{"layers": 1, "hidden": [8]}', "--epochs", "1", "--no-progress",
        "--quiet"]  # fmt: skip


def _table(path, rows=300):
    x = np.random.default_rng(5).normal(size=(rows, 3)) * [1, 2, 3] + [0, 5, -1]
    np.savetxt(path, x, delimiter=",", header="x,k,p", comments="", fmt="%.6f")
    return path


def test_eval_refuses_a_split_beside_a_file_it_scores_whole(tmp_path, capsys):
    data = _table(tmp_path / "a.csv")
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", data, "--out", run, *TINY)
    assert rc == 0, err
    for split in ("test", "bogus"):  # (both were taken, and the whole file scored)
        rc, _, err = cli(capsys, "eval", run, "--data", data, "--split", split)
        one_line_error(rc, err, "--split chooses a split of the run's data", "scored whole")
    rc, out, err = cli(capsys, "eval", run, "--data", data)  # the run's own file: said
    assert rc == 0 and "is the file this run was trained on" in err and "300 examples" in out
    other = _table(tmp_path / "b.csv", 120)
    rc, _, err = cli(capsys, "eval", run, "--data", other)
    assert rc == 0 and "trained on" not in err, err
    rc, out, err = cli(capsys, "eval", run)  # (the default split: test)
    assert rc == 0 and out.startswith("test NLL") and "30 examples" in out, out


def test_a_changed_test_context_is_not_the_runs_data(tmp_path, capsys):
    # (the fingerprint left the test split's contexts out: an edited context was scored)
    data = _table(tmp_path / "a.csv")
    run = tmp_path / "c"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--out", run,
                     "--target-columns", "x,p", *TINY)  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "eval", run, "--split", "test")
    assert rc == 0, err
    lines = data.read_text().splitlines()
    test_rows = np.random.default_rng(0).permutation(300)[270:]  # (data.seed 0, 80/10/10)
    for i in test_rows:
        cells = lines[1 + i].split(",")
        cells[1] = cells[1].replace("1", "2") if "1" in cells[1] else cells[1].replace("2", "1")
        lines[1 + i] = ",".join(cells)  # (the same size: the file's length still matches)
    data.write_text("\n".join(lines) + "\n")
    rc, _, err = cli(capsys, "eval", run, "--split", "test")
    one_line_error(rc, err, "fingerprint")


def test_a_data_seed_that_changes_no_split_is_said(tmp_path, capsys):
    args = ["--model", "realnvp", "--data", "digits", "--limit", "64", "--layout", "vector",
            *TINY[:-1]]  # fmt: skip
    rc, _, err = cli(capsys, "train", *args, "--out", tmp_path / "d5", "--set", "data.seed=5")
    assert rc == 0 and "digits has a fixed split" in err, err
    rc, _, err = cli(capsys, "train", *args, "--out", tmp_path / "d0")
    assert rc == 0 and "fixed split" not in err, err
    rc, _, err = cli(capsys, "report", tmp_path / "d5", "--no-test")
    page = (tmp_path / "d5" / "report.html").read_text()
    assert rc == 0 and "split seed" not in page and "fixed split" in page, err


def test_the_training_data_as_validation_data_is_said():
    import flowforge as ff
    from flowforge.workbench.trainer import Trainer

    x = torch.randn(64, 2)
    flow = ff.models.build("realnvp", features=2, layers=1, hidden=[8])
    for val in (x, x[:], x.clone()):
        with pytest.warns(UserWarning, match="val_x is train_x"):
            Trainer(flow, x, val, {"epochs": 1}, progress=False, echo=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(flow, x, torch.randn(64, 2), {"epochs": 1}, progress=False, echo=False)
