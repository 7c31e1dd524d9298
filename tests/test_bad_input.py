"""Careless and hostile inputs to the workbench: each is refused in one line, before anything
is written or allocated, and the data a user gives is read as it is (never rounded)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from cli_support import cli, one_line_error, tiny_moons_run
from flowforge.workbench.data import DataError, read_examples, read_table


def test_debug_before_the_command_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "nothing"
    rc, _, err = cli(capsys, "eval", missing)
    one_line_error(rc, err, "is not a flowforge run")
    for args in (("--debug", "eval", missing), ("eval", missing, "--debug")):
        with pytest.raises(Exception, match="is not a flowforge run"):
            cli(capsys, *args)


def test_a_npy_header_cannot_claim_more_than_the_file_holds(tmp_path):
    header = b"{'descr': '<i8', 'fortran_order': False, 'shape': (100000000000, 64), }"
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + (255).to_bytes(2, "little") + header.ljust(255) + b"\n")
    with pytest.raises(DataError, match=r"promises an array of shape \(100000000000, 64\)"):
        read_examples(str(path))
    np.save(tmp_path / "ok.npy", np.arange(6.0).reshape(3, 2))
    assert read_examples(str(tmp_path / "ok.npy")).shape == (3, 2)
    # the same claim inside a .npz member
    import zipfile

    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.writestr("x.npy", path.read_bytes())
    with pytest.raises(DataError, match="promises an array"):
        read_examples(str(tmp_path / "bad.npz"))


def test_tables_keep_their_values_and_arrays_of_the_run_shape_are_read(tmp_path):
    a = np.zeros((2, 4))
    a[0, 0] = 2.00000001  # float32 would round this to 2.0
    np.save(tmp_path / "a.npy", a)
    assert read_table(str(tmp_path / "a.npy"))[0, 0] == 2.00000001
    img = np.arange(24.0).reshape(2, 3, 2, 2)
    np.save(tmp_path / "img.npy", img)
    assert read_table(str(tmp_path / "img.npy"), shape=(3, 2, 2)).shape == (2, 12)
    with pytest.raises(DataError, match=r"expected \(examples, 1, 2, 2\) or a table"):
        read_table(str(tmp_path / "img.npy"), shape=(1, 2, 2))
    with pytest.raises(DataError, match="expected a table"):  # no run shape given
        read_table(str(tmp_path / "img.npy"))
    os.mkfifo(tmp_path / "fifo.npy")  # never opened (a read would block)
    with pytest.raises(DataError, match="is not a regular file"):
        read_table(str(tmp_path / "fifo.npy"))


@pytest.mark.parametrize(
    "option, needle",
    [
        ("data.n_test=-5", "n_test must be an integer >= 1, got -5"),
        ("data.n_train=abc", "n_train must be an integer >= 1, got 'abc'"),
        ("data.n_train=1000000000", "more than the 268,435,456 values"),
        ("model.hidden=[100000, 100000]", "half this machine's memory"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_a_run_folder_exists(
    tmp_path, capsys, option, needle
):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", out,
                     "--set", option, "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "data, needle",
    [
        ("sphere-vmf", "sphere-vmf holds points on a sphere, not angles"),
        ("moons", "moons has values in ["),
    ],
)
def test_a_torus_flow_refuses_data_that_are_not_angles(tmp_path, capsys, data, needle):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "torusflow", "--data", data, "--out", out,
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "models angles in [-pi, pi]", needle)
    assert not out.exists()


def test_levels_come_from_the_data(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "idf", "--data", "digits", "--out", out,
                     "--set", "model.levels=5", "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "levels=5 does not match the data's 17 levels")
    assert not out.exists()


def test_a_sphere_run_has_no_report_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "sphere"
    rc, _, err = cli(capsys, "train", "--model", "sphereflow", "--data", "sphere-vmf",
                     "--out", out, "--set", "data.n_train=64", "--set", "data.n_val=32",
                     "--set", "data.n_test=32",
                     "--model-kwargs", '{"layers": 2, "hidden": [8]}',
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", out)
    one_line_error(rc, err, "no report for a density on the sphere")
    assert not (out / "report").exists()


def test_samples_are_refused_where_the_score_is_exact(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    rc, _, err = cli(capsys, "eval", run, "--samples", 4)
    one_line_error(rc, err, "scores its data exactly", "use --samples 1")
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err


@pytest.mark.parametrize(
    "shape, needle",
    [
        ("abc", "resolved.data_shape must be a list of positive integers"),
        (None, "resolved.data_shape must be a list of positive integers"),
        ([1e308], "resolved.data_shape must be a list of positive integers"),
        ([2, 32], "hold different numbers of values"),
    ],
)
def test_a_damaged_data_shape_is_refused_when_the_run_is_read(tmp_path, capsys, shape, needle):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    cfg = json.loads((run / "config.json").read_text())
    cfg["resolved"]["data_shape"] = shape
    (run / "config.json").write_text(json.dumps(cfg))
    for args in (("eval", run), ("sample", run, "-n", 4, "--out", tmp_path / "s.npy")):
        rc, _, err = cli(capsys, *args)
        one_line_error(rc, err, "is damaged", needle)


def test_eval_reads_arrays_in_the_run_shape(tmp_path, capsys):
    out = tmp_path / "digits"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "digits", "--out", out,
                     "--layout", "vector", "--model-kwargs", '{"layers": 1, "hidden": [8]}',
                     "--limit", 64, "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    x = np.random.default_rng(0).integers(0, 17, (5, 1, 8, 8))
    np.save(tmp_path / "img.npy", x)
    np.save(tmp_path / "table.npy", x.reshape(5, 64))
    res = []
    for f in ("img.npy", "table.npy"):
        rc, o, err = cli(capsys, "eval", out, "--data", tmp_path / f, "--json")
        assert rc == 0, err
        res.append(json.loads(o)["nll"])
    assert math.isfinite(res[0]) and res[0] == pytest.approx(res[1], abs=1e-4)
    np.save(tmp_path / "wrong.npy", x.reshape(5, 1, 4, 16))
    rc, _, err = cli(capsys, "eval", out, "--data", tmp_path / "wrong.npy")
    one_line_error(rc, err, "expected (examples, 1, 8, 8) or a table (examples, 64)")


def test_bad_batch_indices_are_listed_flat():
    import flowforge as ff

    flow = ff.models.RealNVP(features=2, layers=1, hidden=(4,))
    x = torch.zeros(6, 2)
    x[[1, 4], 0] = float("nan")
    with pytest.raises(ValueError, match=r"first bad batch indices: \[1, 4\]\)"):
        flow.log_prob(x)


def test_exponent_notation_is_a_number_everywhere(tmp_path, capsys):
    from flowforge.workbench.config import read_config

    (tmp_path / "c.yaml").write_text("model:\n  name: ffjord\n  rtol: 1e-3\n  atol: 1E-3\n")
    assert read_config(tmp_path / "c.yaml")["model"] == {
        "name": "ffjord",
        "rtol": 1e-3,
        "atol": 1e-3,
    }
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "moons", "--out", out,
                     "--objective", "flow-matching", "--limit", 64, "--epochs", 1, "--quiet",
                     "--model-kwargs", '{"hidden": [4], "rtol": 1e-3}', "--set", "model.atol=1e-3",
                     "--no-progress")  # fmt: skip
    assert rc == 0, err
    kw = json.loads((out / "config.json").read_text())["resolved"]["builder_kwargs"]
    assert kw["rtol"] == 1e-3 and kw["atol"] == 1e-3


def test_flow_matching_options_that_cannot_train_are_refused_up_front(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "moons", "--out", out,
                     "--objective", "flow-matching", "--set", "train.fm_time_power=1e308",
                     "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "train.fm_time_power", "(0, 10]")
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "digits", "--out", out,
                     "--objective", "flow-matching-ot", "--conditional", "label", "--limit", 64,
                     "--model-kwargs", '{"hidden": [8]}', "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "--objective flow-matching or flow-matching-vp")
    assert not out.exists()  # the run's config was written, then taken back


def test_an_ode_budget_is_an_error_not_an_internal_one(tmp_path, capsys, monkeypatch):
    from flowforge.transforms.continuous import ODEStepBudgetError
    from flowforge.workbench import evaluate

    run = tiny_moons_run(capsys, tmp_path / "moons")

    def over_budget(*args, **kwargs):
        raise ODEStepBudgetError("CNF solve stopped: it exceeded its step budget (max_steps=2)")

    monkeypatch.setattr(evaluate, "evaluate_run", over_budget)
    rc, _, err = cli(capsys, "eval", run)
    one_line_error(rc, err, "step budget")
    assert "internal error" not in err


def test_report_options_and_damaged_metrics(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    for bad in ("abc", "nan", "-1", "0.5,x"):
        rc, _, err = cli(capsys, "report", run, "--temperatures", bad)
        one_line_error(rc, err, "--temperatures: expected comma-separated finite numbers >= 0")
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:40] + "\ngarbage {{\n")
    rc, out, err = cli(capsys, "report", run)
    assert rc == 0, err
    html = (run / "report.html").read_text()
    assert "metrics.jsonl is damaged" in html and "no epoch records" in html


def test_a_run_stopped_before_its_first_epoch_says_so(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    (run / "model.ff").unlink()
    for args in (("eval", run), ("sample", run, "-n", 2, "--out", tmp_path / "s.npy")):
        rc, _, err = cli(capsys, *args)
        one_line_error(rc, err, "has no model yet", "--resume")
