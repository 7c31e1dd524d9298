"""``train.dtype: float64``: a run whose model computes, trains, is saved and scored in float64,
with its data read in float64 (a table float32 cannot hold: timestamps of 1.7e9 +- 10)."""

from __future__ import annotations

import json
import os
import re
import signal

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error

TINY = ["--model", "maf", "--model-kwargs", '{"layers": 1, "hidden": [8]}', "--no-progress"]


def _moons(n_train: int = 128, **train) -> dict:
    """The config of the smallest MAF on moons, with train options ``train``."""
    return {"model": {"name": "maf", "layers": 1, "hidden": [8]},
            "data": {"name": "moons", "n_train": n_train, "n_val": 64, "n_test": 64},
            "train": {"epochs": 1, "tensorboard": False, **train}}  # fmt: skip


def _in_float64_session(cfg: dict, out) -> None:
    """Train ``cfg`` into ``out`` with torch's default dtype float64 (a notebook's)."""
    from flowforge.workbench import train

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train(cfg, out, progress=False, echo=False)
    finally:
        torch.set_default_dtype(before)


def _timestamps(path, n=600):
    rng = np.random.default_rng(0)
    t = 1.7e9 + rng.normal(0.0, 10.0, n)
    y = 0.05 * (t - 1.7e9) + rng.normal(0.0, 1.0, n)
    path.write_text("time,value\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in zip(t, y)))
    return path


def test_a_table_float32_cannot_hold_trains_scores_and_samples_in_float64(tmp_path, capsys):
    data = _timestamps(tmp_path / "ts.csv")
    rc, _, err = cli(capsys, "train", *TINY, "--data", data, "--out", tmp_path / "r32")
    one_line_error(rc, err, "finer than float32", "--set train.dtype=float64")
    run = tmp_path / "r64"
    rc, out, err = cli(capsys, "train", *TINY, "--data", data, "--out", run, "--epochs", 3,
                       "--set", "train.dtype=float64")  # fmt: skip
    assert rc == 0, err
    assert "parameters in float64; data" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["dtype"] == "float64"
    flow = ff.load(run)
    assert flow.dtype == torch.float64
    # the standardisation holds the column's mean as float64 has it (float32 spaces its
    # numbers 128 apart at 1.7e9)
    from flowforge.workbench.data import load_dataset

    ds = load_dataset(str(data), dtype=torch.float64)
    assert ds.train.dtype == torch.float64
    mean = ds.train[:, 0].mean().item()
    assert cfg["resolved"]["stats"]["loc"][0] == pytest.approx(mean, abs=1e-6)
    assert abs(mean - 1.7e9) < 5
    # scored on its own test split, finite and near the two Gaussians' entropy (5.14 nats)
    rc, out, err = cli(capsys, "eval", run, "--split", "test")
    assert rc == 0, err
    nll = float(re.search(r"test NLL ([0-9.]+)", out).group(1))
    assert 4.8 < nll < 6.0, out
    # a file of rows is read in float64: the score is the model's of the file's values
    rc, out, err = cli(capsys, "eval", run, "--data", data)
    assert rc == 0, err
    x = torch.from_numpy(np.loadtxt(data, delimiter=",", skiprows=1))
    with torch.no_grad():
        want = -flow.log_prob(x).mean().item()
    assert float(re.search(r"NLL ([0-9.]+)", out).group(1)) == pytest.approx(want, abs=1e-4)
    # samples are written with float64's digits: each timestamp its own value
    rc, out, err = cli(capsys, "sample", run, "-n", 20, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    rows = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert len(set(rows[:, 0].tolist())) == 20
    assert np.abs(rows[:, 0] - 1.7e9).max() < 1e3
    rc, _, err = cli(capsys, "sample", run, "-n", 5, "--out", tmp_path / "s.npy")
    assert rc == 0, err
    assert np.load(tmp_path / "s.npy").dtype == np.float64


def test_a_float64_run_resumes_exactly_and_a_run_from_it_keeps_its_precision(tmp_path, capsys):
    from flowforge.workbench import train

    cfg = _moons(256, epochs=3, batch_size=64, dtype="float64")

    def stop(trainer):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    train(cfg, tmp_path / "whole", progress=False, echo=False)
    result = train(cfg, tmp_path / "cut", progress=False, echo=False, callback=stop)
    assert result["status"] == "interrupted"
    rc, _, err = cli(capsys, "train", "--out", tmp_path / "cut", "--resume", "--no-progress")
    assert rc == 0, err
    whole = (tmp_path / "whole" / "model.ff").read_bytes()
    assert (tmp_path / "cut" / "model.ff").read_bytes() == whole
    assert ff.load(tmp_path / "cut").dtype == torch.float64
    # a run started from it is float64 too, unless it says otherwise
    rc, _, err = cli(capsys, "train", "--init-from", tmp_path / "whole", "--out", tmp_path / "i",
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert json.loads((tmp_path / "i" / "config.json").read_text())["train"]["dtype"] == "float64"
    assert ff.load(tmp_path / "i").dtype == torch.float64
    rc, _, err = cli(capsys, "train", "--init-from", tmp_path / "whole", "--out", tmp_path / "j",
                     "--epochs", 1, "--no-progress", "--quiet",
                     "--set", "train.dtype=float32")  # fmt: skip
    assert rc == 0, err
    assert ff.load(tmp_path / "j").dtype == torch.float32


def test_a_float64_session_records_its_precision(tmp_path):

    _in_float64_session(_moons(), tmp_path / "r")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["dtype"] == "float64"
    assert ff.load(tmp_path / "r").dtype == torch.float64


def test_the_precision_is_checked(tmp_path, capsys):
    from flowforge.workbench import Trainer, load_dataset
    from flowforge.workbench.errors import DataError, WorkbenchError

    rc, _, err = cli(capsys, "train", *TINY, "--data", "moons", "--out", tmp_path / "a",
                     "--set", "train.dtype=float16")  # fmt: skip
    one_line_error(rc, err, "train.dtype must be one of float32, float64", "float16")
    rc, _, err = cli(capsys, "train", *TINY, "--data", "moons", "--out", tmp_path / "a",
                     "--set", "data.dtype=float64")  # fmt: skip
    one_line_error(rc, err, "data.dtype is not a data option", "--set train.dtype=float64")
    assert not (tmp_path / "a").exists()
    ds = load_dataset("moons", n_train=64, n_val=32, n_test=32, dtype="float64")
    assert {ds.split(k).dtype for k in ("train", "val", "test")} == {torch.float64}
    with pytest.raises(DataError, match="dtype must be torch.float32 or torch.float64"):
        load_dataset("moons", dtype=torch.float16)
    flow = ff.models.MAF(features=2, layers=1, hidden=(8,))
    with pytest.raises(WorkbenchError, match=r"move it first \(model.double\(\)\)"):
        Trainer(flow, ds.train, ds.val, {"epochs": 1, "dtype": "float64"}, progress=False)
    t = Trainer(flow.double(), ds.train, ds.val, {"epochs": 1}, progress=False, echo=False)
    assert t.cfg["dtype"] == "float64"


def test_a_float64_run_standardises_values_of_1e_30(tmp_path, capsys):
    # (a spread below 1e-30 counted as none: the scale was 1, the model could not fit, and the
    # Gaussian reference printed -1.02 nats where the data's is about -66)
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.csv"
    x = np.c_[1e-30 + 1e-31 * rng.normal(size=400), rng.normal(size=400)]
    data.write_text("m,x\n" + "".join(f"{a:.6e},{b:.6f}\n" for a, b in x))
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", *TINY, "--data", data, "--out", run, "--epochs", 1,
                     "--set", "train.dtype=float64")  # fmt: skip
    assert rc == 0, err
    scale = json.loads((run / "config.json").read_text())["resolved"]["stats"]["scale"]
    assert scale[0] == pytest.approx(1e-31, rel=0.2)
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err
    reference = float(re.search(r"training split: NLL (-?[0-9.]+)", out).group(1))
    assert -70 < reference < -62, out


def test_a_run_folder_whose_files_disagree_on_the_precision_is_refused(tmp_path, capsys):
    # (a float32 model.ff in a float64 run scored float64 data rounded, without a word; an
    # edited train.dtype blamed the data, or was an internal error)
    from flowforge.workbench import train

    cfg = _moons(dtype="float64")
    run = tmp_path / "r"
    train(cfg, run, progress=False, echo=False)
    ff.save(ff.load(run / "model.ff").float(), run / "model.ff")
    rc, _, err = cli(capsys, "eval", run)
    one_line_error(rc, err, "the run trained in float64 (train.dtype) and the model's weights "
                   "are float32")  # fmt: skip
    c = json.loads((run / "config.json").read_text())
    c["train"]["dtype"] = ["float64"]
    (run / "config.json").write_text(json.dumps(c))
    rc, _, err = cli(capsys, "sample", run, "-n", 2, "--out", tmp_path / "s.csv")
    assert rc != 0 and "Traceback" not in err and "internal error" not in err, err


def test_a_float32_run_in_a_float64_session_is_float32(tmp_path):
    # (its model was built in the session's float64 beside float32 data and a float32 record)

    _in_float64_session(_moons(dtype="float32"), tmp_path / "r")
    assert ff.load(tmp_path / "r").dtype == torch.float32


def test_runs_of_two_precisions_are_compared_on_a_file(tmp_path, capsys):
    # (their splits were said to hold "other examples", as if split otherwise)
    from flowforge.workbench import train
    from flowforge.workbench.errors import RunError

    rng = np.random.default_rng(0)
    data = tmp_path / "t.csv"
    data.write_text("a,b\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in rng.normal(size=(200, 2))))
    for name, dtype in (("r32", "float32"), ("r64", "float64")):
        rc, _, err = cli(capsys, "train", *TINY, "--data", data, "--out", tmp_path / name,
                         "--epochs", 1, "--quiet", "--set", f"train.dtype={dtype}")  # fmt: skip
        assert rc == 0, err
    rc, _, err = cli(capsys, "eval", tmp_path / "r64", "--against", tmp_path / "r32")
    one_line_error(rc, err, "reads its data in float64", "in float32 (train.dtype)", "--data FILE")
    rc, out, err = cli(capsys, "eval", tmp_path / "r64", "--against", tmp_path / "r32",
                       "--data", data)  # fmt: skip
    assert rc == 0, err
    with pytest.raises(RunError, match="config must be a dict"):
        train("config.yaml", tmp_path / "x")


def test_a_review_s_float64_paths(tmp_path, capsys):
    # (a review of the day: a float64 torus run's report failed on its grid at pi; a Trainer
    # given DEFAULT_TRAIN refused a float64 model; an M-flow's eval --data read float32; a
    # float32 run's samples beside its contexts were written with 17 digits)
    from flowforge.workbench import DEFAULT_TRAIN, Trainer, load_dataset

    run = tmp_path / "torus"
    rc, _, err = cli(capsys, "train", "--model", "torusflow", "--data", "torus-vonmises",
                     "--out", run, "--epochs", 1, "--limit", 200, "--no-progress", "--quiet",
                     "--set", "train.dtype=float64")  # fmt: skip
    assert rc == 0, err
    assert cli(capsys, "report", run)[0] == 0
    ds = load_dataset("moons", n_train=64, n_val=32, n_test=32, dtype=torch.float64)
    flow = ff.models.MAF(features=2, layers=1, hidden=(8,)).double()
    t = Trainer(flow, ds.train, ds.val, {**DEFAULT_TRAIN, "epochs": 1}, progress=False)
    assert t.cfg["dtype"] == "float64"
    rng = np.random.default_rng(0)
    data = tmp_path / "c.csv"
    rows = rng.normal(size=(200, 3))
    data.write_text("a,b,c\n" + "".join(f"{a:.4f},{b:.4f},{c:.4f}\n" for a, b, c in rows))
    rc, _, err = cli(capsys, "train", *TINY, "--data", data, "--target-columns", "a,b",
                     "--out", tmp_path / "cond", "--epochs", 1, "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", tmp_path / "cond", "-n", 3, "--context", "0.5",
                     "--out", tmp_path / "s.csv")  # fmt: skip
    assert rc == 0, err
    cells = [c for line in (tmp_path / "s.csv").read_text().splitlines()[1:]
             for c in line.split(",")]  # fmt: skip
    assert all(len(c.lstrip("-").replace(".", "")) <= 10 for c in cells), cells


def test_a_run_from_a_self_standardising_run_of_standardize_false(tmp_path, capsys):
    # (a run made before 2026-12-08 with data.standardize: false standardised itself; a run
    # started from it was refused, with a fix that could not work)
    rng = np.random.default_rng(0)
    data = tmp_path / "raw.csv"
    rows = rng.normal(size=(200, 2)) * [100, 0.01]
    data.write_text("a,b\n" + "".join(f"{a:.4f},{b:.6f}\n" for a, b in rows))
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--out", tmp_path / "a",
                     "--model-kwargs", '{"layers": 1, "hidden": [8], "standardize": true}',
                     "--set", "data.standardize=false", "--epochs", 1, "--no-progress",
                     "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "--init-from", tmp_path / "a", "--out", tmp_path / "b",
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
