"""flowforge inside a pipeline (an audit of an engineer automating it, 2026-12-07;
docs/workbench.md "Where output goes"): results on standard output, every warning on
standard error as one `flowforge: warning:` line, machine-readable outputs that parse as
documented, and mistakes a script makes refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_support import cli, one_line_error
from flowforge.workbench import read_metrics
from flowforge.workbench.errors import RunError


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    g = np.random.default_rng(0)
    a = g.normal(size=(300, 3))
    a[:, 2] = np.round(a[:, 2] * 2)  # (an integer column: a data warning)
    np.savetxt(d / "t.csv", a, delimiter=",", header="a,b,c", comments="", fmt="%.8g")
    from flowforge.workbench.cli import main

    assert main(["train", "--model", "maf", "--data", str(d / "t.csv"), "--model-kwargs",
                 '{"hidden": [8]}', "--epochs", "2", "--out", str(d / "r"), "--no-progress",
                 "--quiet"]) == 0  # fmt: skip
    return d


def test_warnings_go_to_standard_error_and_results_to_standard_output(table_run, capsys):
    # train's data checks and eval's warnings went to standard output as "warning: ...",
    # sample's to standard error, the Trainer's as "flowforge: warning: ..."
    d = table_run
    rc, out, err = cli(capsys, "train", "--model", "maf", "--data", d / "t.csv",
                       "--model-kwargs", '{"hidden": [8]}', "--epochs", "1", "--out", d / "r2",
                       "--no-progress")  # fmt: skip
    assert rc == 0 and "warning" not in out, out
    assert "flowforge: warning: column(s) c hold only a few integer values" in err
    rc, out, err = cli(capsys, "eval", d / "r")
    assert rc == 0 and "warning" not in out and out.startswith("test NLL ")
    assert "flowforge: warning: the training data: column(s) c" in err
    assert all(line.startswith("flowforge: warning: ") for line in err.splitlines())


def test_json_and_records_parse_as_documented(table_run, capsys):
    d = table_run
    rc, out, _ = cli(capsys, "eval", d / "r", "--json")
    res = json.loads(out)
    assert rc == 0 and res["bound"] is None and res["noise"] is None  # (an exact score)
    assert res["nll_se"] > 0
    epochs = [r for r in read_metrics(d / "r") if r["type"] == "epoch"]
    assert len(epochs) == 2 and all("val_nll" in r and r["time"] > 0 for r in epochs)
    with pytest.raises(RunError, match="is not a folder"):  # (a typo: not an empty list)
        read_metrics(d / "r-typo")
    (d / "mine").mkdir()
    with pytest.raises(RunError, match="is not a flowforge run"):
        read_metrics(d / "mine")


def test_a_key_set_twice_and_a_missing_output_folder_are_refused(table_run, capsys):
    d = table_run
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", d / "t.csv", "--set",
                     "train.lr=0.5", "--set", "train.lr=1e-3", "--out", d / "r3")  # fmt: skip
    one_line_error(rc, err, "--set train.lr is given twice")
    rc, _, err = cli(capsys, "decompress", d / "x.ffz", "--model", d / "r", "--out",
                     d / "nowhere" / "x.npy")  # fmt: skip
    one_line_error(rc, err, "there is no folder")
    assert not (d / "nowhere").exists()


def test_a_second_demo_names_what_demo_takes(tmp_path, capsys, monkeypatch):
    # "use --resume to continue it", which demo does not take (exit 2 when followed)
    from flowforge.workbench import runner

    def held(cfg, out, **kw):  # (train's refusal of a folder holding the same run)
        raise RunError(
            f"{out} already holds this run; use --resume to continue it or --overwrite to "
            "start again (from Python: resume=True, overwrite=True)"
        )

    monkeypatch.setattr(runner, "train", held)
    rc, _, err = cli(capsys, "demo", "--out", tmp_path / "demo", "--no-progress")
    one_line_error(rc, err, "flowforge demo --overwrite", "--resume continues it")
    assert "use --resume" not in err
