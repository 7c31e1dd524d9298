"""`flowforge train --init-from RUN`: a new run starting from another run's best model."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_support import cli, one_line_error
from flowforge import io
from flowforge.workbench.checkpoint import read_checkpoint
from flowforge.workbench.cli import _finish_train
from flowforge.workbench.runner import train
from flowforge.workbench.runs import load_run, run_config
from flowforge.workbench.trainer import Trainer

QUIET = ["--no-progress", "--quiet"]
TINY = {"name": "realnvp", "layers": 1, "hidden": [8]}


def _table(path: Path, rows: int, loc, scale, seed: int, names=("a", "b", "c")) -> Path:
    """A CSV of ``rows`` correlated Gaussian rows with columns ``names``."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, len(names)))
    z[:, 1] += 0.8 * z[:, 0]
    x = np.asarray(loc) + np.asarray(scale) * z
    np.savetxt(path, x, delimiter=",", header=",".join(names), comments="", fmt="%.6f")
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    return {
        # 600 rows of 3 columns: standardised, not whitened (60 rows per column)
        "big": _table(d / "big.csv", 600, [10.0, -5.0, 100.0], [2.0, 1.0, 30.0], 0),
        # 32 rows, shifted: left to itself this table would be whitened, with other statistics
        "small": _table(d / "small.csv", 32, [12.0, -4.0, 130.0], [3.0, 1.5, 20.0], 1),
        "narrow": _table(d / "narrow.csv", 300, [0.0, 0.0], [1.0, 1.0], 2, names=("a", "b")),
        "renamed": _table(d / "renamed.csv", 300, [0.0] * 3, [1.0] * 3, 3, names=("a", "b", "x")),
    }


@pytest.fixture(scope="module")
def table_run(tables, tmp_path_factory):
    """A finished run on the big table (kept unchanged by the tests that start from it)."""
    run = tmp_path_factory.mktemp("runs") / "big"
    cfg = {"model": TINY, "data": {"name": str(tables["big"])},
           "train": {"epochs": 2, "batch_size": 100, "tensorboard": False}}  # fmt: skip
    assert train(cfg, run, progress=False, echo=False)["status"] == "finished"
    return run


def _state(flow) -> dict:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def test_step_zero_weights_are_the_runs_best_and_data_init_layers_are_kept(tmp_path, monkeypatch):
    """The new run's model before its first step is the run's best model, bit for bit: its
    DataStandardize (a data-initialised layer) keeps its statistics, on other data too."""
    run = tmp_path / "a"
    cfg = {"model": TINY, "data": {"name": "moons", "limit": 128},
           "train": {"epochs": 2, "batch_size": 32, "tensorboard": False}}  # fmt: skip
    train(cfg, run, progress=False, echo=False)
    best = _state(load_run(run))
    assert any(k.endswith("initialized") for k in best)  # (a DataStandardize)
    seen = []
    init = Trainer._init_data_dependent

    def after_init(self):  # the state at step 0: after the data-dependent initialisation
        init(self)
        seen.append(_state(self.model))

    monkeypatch.setattr(Trainer, "_init_data_dependent", after_init)
    other = {"data": {"name": "circles", "limit": 64}, "train": {"epochs": 1, "batch_size": 32}}
    res = train(other, tmp_path / "b", progress=False, echo=False, init_from=run)
    assert res["status"] == "finished" and len(seen) == 1
    assert seen[0].keys() == best.keys()
    assert all(torch.equal(seen[0][k], best[k]) for k in best), [
        k for k in best if not torch.equal(seen[0][k], best[k])
    ]
    cfg_b = run_config(tmp_path / "b")
    assert cfg_b["model"] == {"name": "realnvp", "kwargs": {"layers": 1, "hidden": [8]}}
    assert cfg_b["data"]["name"] == "circles"  # (its own data; the model section was taken)


def test_the_data_taken_from_the_run_is_checked_against_its_fingerprint(tmp_path, capsys):
    """No --data: the run's own file, split as it was; a file changed since is said."""
    first = _table(tmp_path / "t.csv", 200, [0.0] * 3, [1.0] * 3, 5)
    run = tmp_path / "a"
    cfg = {"model": TINY, "data": {"name": str(first), "seed": 3}, "train": {"epochs": 1}}
    train(cfg, run, progress=False, echo=False)
    rc, out, err = _one(capsys, "--init-from", run, "--out", tmp_path / "b", "--epochs", 1)
    assert rc == 0 and "warning" not in out + err, err
    b = run_config(tmp_path / "b")
    assert b["data"]["seed"] == 3 and b["resolved"]["init_from"]["took"] == [
        "model",
        "data",
        "layout",
    ]
    assert b["resolved"]["data_fingerprint"] == run_config(run)["resolved"]["data_fingerprint"]
    _table(first, 200, [0.0] * 3, [1.0] * 3, 6)  # the file changed since: not trained on
    rc, out, err = cli(capsys, "train", "--init-from", run, "--out", tmp_path / "c",
                       "--epochs", 1, "--no-progress")  # fmt: skip
    one_line_error(rc, err, "is not the data it was trained on")
    assert not (tmp_path / "c").exists()
    # named on the command line, the changed file is the new run's data
    rc, out, err = cli(capsys, "train", "--init-from", run, "--out", tmp_path / "c",
                       "--data", first, "--epochs", 1, "--no-progress")  # fmt: skip
    assert rc == 0, err


def test_a_run_folder_naming_another_file_never_has_it_read(tmp_path, capsys):
    """A copied run folder whose config.json names another file of the user's: --init-from
    (no --data) read it, trained on it, and recorded its columns and ranges."""
    mine = _table(tmp_path / "t.csv", 200, [0.0] * 3, [1.0] * 3, 5)
    run = tmp_path / "a"
    train({"model": TINY, "data": {"name": str(mine)}, "train": {"epochs": 1}}, run,
          progress=False, echo=False)  # fmt: skip
    secret = _table(tmp_path / "secret.csv", 300, [5e4] * 3, [1e3] * 3, 1)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["name"] = cfg["resolved"]["data_path"] = str(secret)
    (run / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _one(capsys, "--init-from", run, "--out", tmp_path / "b", "--epochs", 1)
    one_line_error(rc, err, "is not the data it was trained on (its size or fingerprint differs")
    assert not (tmp_path / "b").exists()


def test_a_run_folder_that_cannot_tell_its_data_has_no_file_read(tmp_path, capsys, monkeypatch):
    """--init-from takes a run's data as eval does (an audit): a config recording no
    fingerprint had the file it names read and trained on; with a data option given, a file
    whose fingerprint differs was trained on with a warning; and another file of the recorded
    size had its structure described ("line 71 has 10 columns")."""
    from flowforge.workbench import runner

    mine = _table(tmp_path / "t.csv", 200, [0.0] * 3, [1.0] * 3, 5)
    run = tmp_path / "a"
    train({"model": TINY, "data": {"name": str(mine)}, "train": {"epochs": 1}}, run,
          progress=False, echo=False)  # fmt: skip
    good = json.loads((run / "config.json").read_text())
    secret = _table(tmp_path / "secret.csv", 300, [5e4] * 3, [1e3] * 3, 1)
    same_size = tmp_path / "same_size.csv"  # 4 columns on its second line: a parse error
    text = mine.read_text().splitlines(keepends=True)
    same_size.write_text("".join([text[0], text[1].replace(",", ";", 1), *text[2:]]))
    assert same_size.stat().st_size == mine.stat().st_size

    def case(data: Path, drop, *more):
        cfg = json.loads(json.dumps(good))
        cfg["data"]["name"] = cfg["resolved"]["data_path"] = str(data)
        for key in drop:
            del cfg["resolved"][key]
        (run / "config.json").write_text(json.dumps(cfg))
        return _one(capsys, "--init-from", run, "--out", tmp_path / "b", "--epochs", 1, *more)

    read = []
    load = runner.load_dataset
    monkeypatch.setattr(runner, "load_dataset", lambda name, **kw: read.append(name) or load(
        name, **kw))  # fmt: skip
    rc, _, err = case(secret, ["data_fingerprint", "data_bytes"])
    one_line_error(rc, err, f"--init-from {run}: ", "records no fingerprint", "with --data")
    rc, _, err = case(secret, ["data_fingerprint", "data_bytes"], "--limit", 100)
    one_line_error(rc, err, "records no fingerprint", "with --data")
    assert read == []  # (refused before the file was opened)
    rc, _, err = case(secret, ["data_bytes"], "--limit", 100)  # (read: its fingerprint tells)
    one_line_error(rc, err, "is not the data it was trained on", "with --data")
    rc, _, err = case(same_size, [], "--limit", 100)
    one_line_error(rc, err, "is not the data it was trained on", "with --data")
    assert "column" not in err and "line" not in err
    assert not (tmp_path / "b").exists()
    # the run's own file, split anew by a data option given here: trained on, without a warning
    rc, out, err = case(mine, [], "--limit", 100)
    assert rc == 0 and "warning" not in out + err, err
    assert run_config(tmp_path / "b")["resolved"]["examples"]["train"] == 100


def test_fine_tuning_on_another_table_keeps_the_runs_standardisation(
    tables, table_run, tmp_path, capsys
):
    """The fixed standardisation is the run's (statistics of its training split), not the new
    table's, and the whitening the small table would get on its own is not added; config.json
    records where the model came from, eval and report read the new run."""
    new = tmp_path / "ft"
    rc, out, err = cli(capsys, "train", "--init-from", table_run, "--data", tables["small"],
                       "--out", new, "--epochs", 1, "--lr", 1e-4, "--no-progress")  # fmt: skip
    assert rc == 0, err
    start = [line for line in out.splitlines() if line.startswith("initialised from")]
    assert len(start) == 1 and "standardisation statistics" in start[0], out
    assert "its model section (none given)" in start[0]
    theirs, mine = run_config(table_run), run_config(new)
    r = mine["resolved"]
    assert r["stats"] == theirs["resolved"]["stats"] and "whiten" not in r
    assert r["flow_config"] == theirs["resolved"]["flow_config"]
    assert mine["init_from"] == str(table_run)
    rec = r["init_from"]
    assert rec["path"] == str(table_run.resolve())
    assert rec["model_sha256"] == io_sha256(table_run / "model.ff")
    assert rec["data_sha256"] == theirs["resolved"]["data_fingerprint"]["sha256"]
    assert rec["best_epoch"] in (1, 2) and rec["took"] == ["model", "layout"]
    assert rec["unfinished"] is None  # (a finished source)
    # the model's standardisation holds the big table's statistics, not the small one's
    std = {
        k: v for k, v in load_run(new).state_dict().items() if k.startswith("transform.layers.0")
    }
    loc = next(v for k, v in std.items() if k.endswith("loc"))
    assert torch.allclose(loc.double(), torch.tensor(theirs["resolved"]["stats"]["loc"]).double())
    small = np.loadtxt(tables["small"], delimiter=",", skiprows=1)
    assert abs(loc[2].item() - small[:, 2].mean()) > 10  # (130 there, 100 here)
    # a run trained on the small table alone whitens it: the same model, other statistics
    rc, out, err = cli(capsys, "train", "--data", tables["small"], "--out", tmp_path / "own",
                       "--model", "realnvp", "--model-kwargs", '{"layers": 1, "hidden": [8]}',
                       "--epochs", 1, *QUIET)  # fmt: skip
    assert rc == 0 and run_config(tmp_path / "own")["resolved"].get("whiten") is True, err
    rc, out, err = cli(capsys, "eval", new, "--json")
    assert rc == 0 and np.isfinite(json.loads(out)["nll"]), err
    rc, out, err = cli(capsys, "report", new)
    assert rc == 0, err
    page = (new / "report.html").read_text()
    assert "initialised from" in page and str(table_run) in page


def io_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_config_files_init_from_and_the_same_run_again(tables, table_run, tmp_path, capsys):
    """``init_from:`` at the top of a config file does what the flag does; the same command
    again is the same run (use --resume), and --resume with the file's init_from is fine."""
    conf = tmp_path / "ft.yaml"
    conf.write_text(f"init_from: {table_run}\ndata: {tables['small']}\ntrain:\n  epochs: 1\n")
    out = tmp_path / "ft"
    rc, _, err = cli(capsys, "train", "--config", conf, "--out", out, *QUIET)
    assert rc == 0, err
    assert run_config(out)["resolved"]["init_from"]["run"] == str(table_run)
    rc, _, err = cli(capsys, "train", "--config", conf, "--out", out, *QUIET)
    one_line_error(rc, err, "already holds this run", "--resume")
    rc, out_, err = cli(capsys, "train", "--config", conf, "--out", out, "--resume", *QUIET)
    assert rc == 0 and "nothing to train" in out_, err


def _params(path: Path) -> dict:
    _, t = read_checkpoint(path / "checkpoint.safetensors")
    return {k: v for k, v in t.items() if k.startswith(("model/", "optim/"))}


def test_resume_of_an_init_from_run_is_bit_identical_without_the_run(tables, tmp_path, capsys):
    """A column-conditional run fine-tuned on another table (other context statistics),
    interrupted and resumed after the run it started from is gone, ends bit for bit as the
    uninterrupted one; its model keeps the first run's context standardisation."""
    first = tmp_path / "first"
    cfg = {"model": TINY, "data": {"name": str(tables["big"]), "target_columns": "a,b"},
           "train": {"epochs": 1, "batch_size": 100, "tensorboard": False}}  # fmt: skip
    train(cfg, first, progress=False, echo=False)
    ft = {"data": {"name": str(tables["small"]), "target_columns": "a,b"},
          "train": {"epochs": 3, "batch_size": 16, "warmup_steps": 2, "log_every": 1,
                    "tensorboard": False}}  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(ft, a, progress=False, echo=False, init_from=first)["status"] == "finished"

    def interrupt(trainer):  # Ctrl-C in the middle of epoch 2 (3 steps an epoch)
        if trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    rb = train(ft, b, progress=False, echo=False, callback=interrupt, init_from=first)
    assert rb["status"] == "interrupted" and rb["steps"] == 5
    shutil.rmtree(first)  # the resume reads its own folder only
    rc, _, err = cli(capsys, "train", "--out", b, "--resume", *QUIET)
    assert rc == 0, err
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and len(pa) > 10
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert (a / "model.ff").read_bytes() == (b / "model.ff").read_bytes()

    def strip(p):
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (p / "metrics.jsonl").read_text().splitlines()]  # fmt: skip

    assert strip(a) == strip(b)
    ctx = run_config(b)["resolved"]["context"]["stats"]
    small = np.loadtxt(tables["small"], delimiter=",", skiprows=1)
    assert abs(ctx["loc"][0] - small[:, 2].mean()) > 10  # the first run's (about 100), not 130
    flow = load_run(b)
    assert [float(v) for v in flow.context_map.loc] == pytest.approx(ctx["loc"])


def _one(capsys, *args):
    return cli(capsys, "train", *args, *QUIET)


def test_refusals_are_one_line(tables, table_run, tmp_path, capsys):
    big, out = tables["big"], tmp_path / "new"
    cases = [
        ((table_run, "--model", "realnvp", "--model-kwargs", '{"layers": 2, "hidden": [8]}'),
         ("its model (realnvp, ", "is not this run's (realnvp, ", "layers 1 there, 2 here",
          "--model realnvp --model-kwargs")),
        ((table_run, "--model", "maf"),
         ("its model (realnvp", "this run's (maf", "--model realnvp")),
        ((table_run, "--data", tables["narrow"]), ("features 3 there, 2 here", "same columns")),
        ((table_run, "--data", tables["renamed"]), ("modelled columns", "same order")),
        ((table_run, "--target-columns", "a,b"), ("unconditional", "--target-columns")),
        ((table_run, "--set", "data.bounds.c=positive"), ("data.bounds",)),
        ((tmp_path,), ("is not a flowforge run",)),
        ((tmp_path / "missing",), ("missing: no such folder",)),
    ]  # fmt: skip
    for (run, *more), needles in cases:
        rc, _, err = _one(capsys, "--init-from", run, "--out", out, "--epochs", 1, *more)
        one_line_error(rc, err, f"--init-from {run}", *needles)
        assert not out.exists()
    rc, _, err = _one(capsys, "--init-from", table_run, "--out", table_run, "--overwrite")
    one_line_error(rc, err, "this run's own --out")
    assert (table_run / "model.ff").is_file()
    rc, _, err = _one(capsys, "--init-from", table_run, "--out", out, "--resume")
    one_line_error(rc, err, "--init-from", "--resume")
    rc, _, err = _one(capsys, "--init-from", table_run, "--out", out, "--set", "init_from=x")
    one_line_error(rc, err, "--set init_from=x contradicts --init-from")
    # a run without its model, and one whose model is damaged
    copy = tmp_path / "copy"
    shutil.copytree(table_run, copy)
    data = bytearray((copy / "model.ff").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.ff").write_bytes(bytes(data))
    rc, _, err = _one(capsys, "--init-from", copy, "--out", out)
    one_line_error(rc, err, f"--init-from {copy}: ")
    (copy / "model.ff").unlink()
    rc, _, err = _one(capsys, "--init-from", copy, "--out", out)
    one_line_error(rc, err, f"--init-from {copy}: ", "model.ff")
    assert not out.exists()
    rc, _, err = _one(capsys, "--out", out, "--data", big, "--model", "realnvp",
                      "--set", "init_from=[1]")  # fmt: skip
    one_line_error(rc, err, "init_from must be the path of a run folder")


def test_a_run_still_improving_points_to_init_from(table_run, capsys):
    result = {"status": "finished", "best_val": 1.0, "objective": "nll", "best_epoch": 3,
              "epochs": 3, "out": str(table_run)}  # fmt: skip
    assert _finish_train(result) == 0
    said = capsys.readouterr().out
    assert f"flowforge train --init-from {table_run} --out NEW_RUN --epochs N" in said


def test_an_mflow_run_starts_from_another(tmp_path):
    """An M-flow (a model that is not a Flow) loads the same way."""
    cfg = {"model": {"name": "mflow", "manifold_dim": 2, "outer_layers": 1, "inner_layers": 1,
                     "hidden": [8]},
           "data": {"name": "surface-64", "n_train": 64, "n_val": 32, "n_test": 32},
           "train": {"objective": "mflow", "epochs": 2, "batch_size": 32,
                     "tensorboard": False}}  # fmt: skip
    train(cfg, tmp_path / "m", progress=False, echo=False)
    best = _state(load_run(tmp_path / "m"))
    res = train({"train": cfg["train"]}, tmp_path / "m2", progress=False, echo=False,
                init_from=tmp_path / "m")  # fmt: skip
    assert res["status"] == "finished"
    rec = run_config(tmp_path / "m2")["resolved"]["init_from"]
    assert rec["model_sha256"] == io_sha256(tmp_path / "m" / "model.ff")
    assert type(io.load(tmp_path / "m2")) is type(load_run(tmp_path / "m"))
    assert best.keys() == load_run(tmp_path / "m2").state_dict().keys()


def test_a_replay_of_an_init_from_run_needs_the_model_it_started_from(tmp_path, capsys):
    """Replaying the config.json of a run started from another run's model, after that run
    was trained again, silently started from the other model (a different run)."""
    import json

    from flowforge.workbench.runner import train

    cfg = {"model": {"name": "realnvp", "layers": 1, "hidden": [8]},
           "data": {"name": "moons", "limit": 128},
           "train": {"epochs": 1, "batch_size": 32, "tensorboard": False}}  # fmt: skip
    quiet = {"progress": False, "echo": False}
    assert train(cfg, tmp_path / "src", **quiet)["status"] == "finished"
    assert train({"init_from": str(tmp_path / "src")}, tmp_path / "b", **quiet)["status"] == (
        "finished"
    )
    recorded = json.loads((tmp_path / "b" / "config.json").read_text())
    assert train(recorded, tmp_path / "again", **quiet)["status"] == "finished"  # unchanged
    assert (tmp_path / "again" / "model.ff").read_bytes() == (
        tmp_path / "b" / "model.ff"
    ).read_bytes()
    retrained = {**cfg, "seed": 1}
    assert train(retrained, tmp_path / "src", overwrite=True, **quiet)["status"] == "finished"
    with pytest.raises(Exception, match="best model, and that model has changed since"):
        train(recorded, tmp_path / "c", **quiet)


def test_contradictions_with_the_run_started_from_are_one_line(tmp_path, capsys):
    """An explicit data.whiten=false on a whitened run's model was ignored (the config said
    false, the model whitened); a replay given another --init-from than the run started from
    blamed that run for having changed."""
    t = _table(tmp_path / "t.csv", 60, [0.0] * 3, [1.0] * 3, 5)
    w = tmp_path / "w"
    train({"model": TINY, "data": {"name": str(t), "whiten": True}, "train": {"epochs": 1}}, w,
          progress=False, echo=False)  # fmt: skip
    rc, _, err = _one(capsys, "--init-from", w, "--set", "data.whiten=false",
                      "--out", tmp_path / "b", "--epochs", 1)  # fmt: skip
    one_line_error(rc, err, "its model whitens the data", "drop data.whiten=false")
    rc, out, err = cli(capsys, "train", "--init-from", w, "--out", tmp_path / "b", "--epochs", 1,
                       "--no-progress")  # fmt: skip
    assert rc == 0 and "the model starts as the Gaussian" not in out, err  # (it starts as w's)
    other = tmp_path / "o"
    train({"model": TINY, "data": {"name": str(t)}, "train": {"epochs": 1}}, other,
          progress=False, echo=False)  # fmt: skip
    rc, _, err = _one(capsys, "--config", tmp_path / "b" / "config.json", "--init-from", other,
                      "--out", tmp_path / "c")  # fmt: skip
    one_line_error(rc, err, f"it started from {w.resolve()}, not {other}")


def test_an_edited_init_from_run_a_replay_elsewhere_and_a_statistic_no_layer_holds(
    tmp_path, capsys, monkeypatch
):
    """Three things the hostile audit met: the resume of an init-from run whose config.json's
    model was edited gave torch's state-dict error (hundreds of characters); the replay of an
    init-from run's config.json from another folder did not say where its run was; and a
    statistic in the source's config.json that no layer of its model holds (crafted) was
    carried over and announced as the new run's standardisation."""
    quiet = {"progress": False, "echo": False}
    src = tmp_path / "runs" / "src"
    cfg = {"model": TINY, "data": {"name": "moons", "limit": 64},
           "train": {"epochs": 1, "batch_size": 32, "tensorboard": False}}  # fmt: skip
    assert train(cfg, src, **quiet)["status"] == "finished"
    conf = json.loads((src / "config.json").read_text())
    assert conf["resolved"]["stats"] is None  # moons: the model standardises nothing
    conf["resolved"]["stats"] = {"loc": [1e308, 0.0], "scale": [0.0, 1.0]}
    (src / "config.json").write_text(json.dumps(conf))

    def stop(trainer):  # interrupted in its second epoch (two steps an epoch)
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.chdir(tmp_path)
    b = tmp_path / "runs" / "b"
    more = {"epochs": 2, "batch_size": 32, "tensorboard": False}
    r = train({"init_from": "runs/src", "train": more}, b, callback=stop, **quiet)
    assert r["status"] == "interrupted"
    rec = json.loads((b / "config.json").read_text())
    assert rec["resolved"]["stats"] is None and rec["init_from"] == "runs/src"
    rc, _, err = cli(capsys, "report", b)
    assert rc == 0, err
    row = (b / "report.html").read_text().split("initialised from")[1][:400]
    assert "its weights" in row and "statistics" not in row
    # the replay from elsewhere: the folder as resolved then, named
    (tmp_path / "else").mkdir()
    monkeypatch.chdir(tmp_path / "else")
    rc, _, err = cli(capsys, "train", "--config", b / "config.json", "--out", tmp_path / "c",
                     *QUIET)  # fmt: skip
    one_line_error(rc, err, "runs/src: no such folder", f"give --init-from {src}")
    # the resume of the edited run: one line, ours
    rec["resolved"]["flow_config"]["kwargs"]["hidden"] = [16]
    (b / "config.json").write_text(json.dumps(rec))
    rc, _, err = cli(capsys, "train", "--out", b, "--resume", *QUIET)
    one_line_error(rc, err, "cannot resume", "its weights do not fit this run's model")
    assert len(err) < 400


def test_a_discrete_source_is_refused_for_continuous_data_not_inherited(tmp_path, capsys):
    # the source's arguments are taken where the data does not decide them (2026-12-07):
    # its levels came along too, and a discrete MAF trained on continuous data, or failed in
    # the trainer, where the refusal named the levels
    rng = np.random.default_rng(0)
    ints, cont = tmp_path / "ints.csv", tmp_path / "cont.csv"
    np.savetxt(ints, rng.integers(0, 16, (300, 3)), delimiter=",", header="a,b,c",
               comments="", fmt="%d")  # fmt: skip
    np.savetxt(cont, rng.normal(size=(300, 3)), delimiter=",", header="a,b,c", comments="")
    src = tmp_path / "src"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", ints, "--set", "data.levels=16",
                     "--out", src, "--epochs", 1, "--quiet", "--no-progress", "--model-kwargs",
                     '{"layers": 1, "hidden": [8]}')  # fmt: skip
    assert rc == 0, err
    for data in (ints, cont):
        rc, _, err = cli(capsys, "train", "--init-from", src, "--data", data, "--out",
                         tmp_path / f"n-{data.stem}", "--epochs", 1)  # fmt: skip
        one_line_error(rc, err, "levels 16 there, None here")
    rc, _, err = cli(capsys, "train", "--init-from", src, "--data", ints, "--set",
                     "data.levels=16", "--out", tmp_path / "same", "--epochs", 1, "--quiet",
                     "--no-progress")  # fmt: skip
    assert rc == 0, err


def test_a_new_run_from_a_flow_matching_run_says_its_objective_changed(tmp_path, capsys):
    # it trained by maximum likelihood through the ODE without a word
    src = tmp_path / "fm"
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "moons", "--set",
                     "data.n_train=128", "--set", "data.n_val=64", "--epochs", 1, "--objective",
                     "flow-matching", "--model-kwargs", '{"hidden": [8]}', "--out", src,
                     "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "train", "--init-from", src, "--out", tmp_path / "new",
                       "--epochs", 1, "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert "trained by flow-matching, this run trains by nll" in out
    assert "--set train.objective=flow-matching keeps its objective" in out


def test_a_run_of_one_modelled_column_starts_another(tmp_path, capsys):
    # an audit: every one-target regression (and one-column table) failed --init-from with
    # "internal error: RuntimeError: self.stride(-1) must be 1 to view Float as Byte", and
    # ff.save(ff.load(run)) too: a rebuilt Standardize of one entry held a stride-0 buffer
    import flowforge as ff

    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 400)
    y = np.sin(x) + 0.3 * rng.standard_normal(400)
    data = tmp_path / "reg.csv"
    np.savetxt(data, np.c_[y, x], delimiter=",", header="y,x", comments="", fmt="%.6f")
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["--epochs", "1", *QUIET]
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--target-columns", "y",
                     "--out", first, *common)  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "--init-from", first, "--out", second, *common)
    assert rc == 0 and (second / "model.ff").is_file(), err
    ff.save(ff.load(second / "model.ff"), tmp_path / "again.ff")


def test_an_unfinished_source_is_said_with_quiet_and_recorded(tmp_path, capsys):
    # (a sweep audit) with --quiet or --json nothing said that the source had not finished,
    # and its config recorded nothing of it
    import socket
    import subprocess

    from cli_support import tiny_moons_run
    from flowforge.workbench.runs import _process_start

    src = tiny_moons_run(capsys, tmp_path / "src")
    owner = subprocess.Popen(["sleep", "60"])  # (a live owner: the run is still training)
    try:
        lock = {"pid": owner.pid, "host": socket.gethostname(), "start": _process_start(owner.pid)}
        (src / ".lock").write_text(json.dumps(lock))
        rc, out, err = cli(capsys, "train", "--init-from", src, "--out", tmp_path / "new",
                           "--epochs", 1, "--quiet")  # fmt: skip
        assert rc == 0, err
        assert "has not finished training: this run starts from its best model so far" in err
        rec = run_config(tmp_path / "new")["resolved"]["init_from"]
        assert rec["unfinished"]["state"] == "training"
        rc, out, err = cli(capsys, "train", "--init-from", src, "--out", tmp_path / "json",
                           "--epochs", 1, "--json")  # fmt: skip
        assert rc == 0, err
        assert json.loads(out)["init_from"]["unfinished"]["state"] == "training"
    finally:
        owner.kill()
        owner.wait()


def test_a_new_split_that_tests_on_the_runs_training_rows_is_said(
    tables, table_run, tmp_path, capsys
):
    # (an audit: --set data.seed=1 put 25 of 30 test rows the starting model trained on into
    # the new test split, and nothing said so; its test NLL was 1.6 nats optimistic)
    out = tmp_path / "b"
    rc, _, err = cli(capsys, "train", "--init-from", table_run, "--out", out, "--epochs", "1",
                     "--set", "data.seed=1", *QUIET)  # fmt: skip
    assert rc == 0, err
    said = [line for line in err.splitlines() if "the starting model" in line]
    assert len(said) == 1 and "test rows are rows the starting model" in said[0], err
    rc, _, err = cli(capsys, "eval", out)
    assert rc == 0 and "the starting model" in err  # (eval repeats it)
    # data of its own that shares the rows: said too; the same split (--limit): nothing
    rc, _, err = cli(capsys, "train", "--init-from", table_run, "--out", tmp_path / "c",
                     "--data", tables["big"], "--epochs", "1", "--set", "data.seed=2",
                     *QUIET)  # fmt: skip
    assert rc == 0 and "the starting model" in err, err
    rc, _, err = cli(capsys, "train", "--init-from", table_run, "--out", tmp_path / "d",
                     "--limit", "200", "--epochs", "1", *QUIET)  # fmt: skip
    assert rc == 0 and "the starting model" not in err, err


def test_a_starting_split_too_large_to_compare_is_said(tables, table_run, tmp_path, capsys,
                                                       monkeypatch):  # fmt: skip
    # (a review: above the cap the check was skipped without a word, which reads as "no
    # shared rows")
    from flowforge.workbench import warm_start

    monkeypatch.setattr(warm_start, "REUSE_CHECK_VALUES", 10)
    rc, _, err = cli(capsys, "train", "--init-from", table_run, "--out", tmp_path / "c",
                     "--data", tables["big"], "--epochs", "1", "--set", "data.seed=2",
                     *QUIET)  # fmt: skip
    assert rc == 0 and "too large to read again" in err and "optimistic" in err, err
