"""The run folder against careless and hostile use (an audit's findings): two trainings into
one new folder, a user's hidden files, run files that are links, checkpoints and models of
other runs, YAML 1.1 numbers, configs holding dates or deep nesting, runs written by an
older flowforge, and resuming from another working directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from cli_support import cli, one_line_error, tiny_moons_run
from flowforge.workbench import runner
from flowforge.workbench.runner import train

SMALL = {
    "model": {"name": "realnvp", "layers": 1, "hidden": [8]},
    "data": {"name": "moons", "limit": 128},
    "train": {"epochs": 3, "batch_size": 32, "tensorboard": False},
}


def interrupted(out: Path, cfg=SMALL, at: int = 5) -> Path:
    """A run interrupted (SIGINT) after step ``at``: a folder with a checkpoint to resume."""

    def stop(t):
        if t.global_step == at:
            os.kill(os.getpid(), signal.SIGINT)

    assert train(cfg, out, progress=False, echo=False, callback=stop)["status"] == "interrupted"
    return out


def test_a_run_that_appears_while_another_loads_its_data_is_kept(tmp_path, capsys, monkeypatch):
    """The folder is looked at again under the lock: a training that finished into it
    meanwhile is not cleared by the slower one (it was, without --overwrite)."""
    done = tiny_moons_run(capsys, tmp_path / "done")
    out = tmp_path / "shared"
    real = runner.load_dataset

    def slow(*a, **k):  # the other training finishes while this one loads its data
        shutil.copytree(done, out)
        return real(*a, **k)

    monkeypatch.setattr(runner, "load_dataset", slow)
    with pytest.raises(Exception, match="already holds"):
        train({**SMALL, "seed": 3}, out, progress=False, echo=False)
    assert (out / "model.ff").read_bytes() == (done / "model.ff").read_bytes()


def test_only_flowforges_own_temporary_files_are_removed(tmp_path, capsys):
    run = interrupted(tmp_path / "run")
    for name in (".config.backup.tmp", ".model.v1.tmp", ".metrics.tmp", "..tmp"):
        (run / name).write_text("mine")
    (run / ".model.ff.a1b2c3d4.tmp").write_text("a killed write")
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    for name in (".config.backup.tmp", ".model.v1.tmp", ".metrics.tmp", "..tmp"):
        assert (run / name).read_text() == "mine"
    assert not (run / ".model.ff.a1b2c3d4.tmp").exists()


def test_run_files_that_are_links_or_pipes_are_refused(tmp_path, capsys):
    run = interrupted(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(tmp_path / "outside.jsonl")
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress")
    one_line_error(rc, err, "metrics.jsonl is not a regular file")
    assert not (tmp_path / "outside.jsonl").exists()
    if hasattr(os, "mkfifo"):
        (run / "metrics.jsonl").unlink()
        os.mkfifo(run / "metrics.jsonl")
        rc, _, err = cli(capsys, "eval", run)
        one_line_error(rc, err, "is not a regular file")


def test_a_checkpoint_or_model_of_another_run_is_refused(tmp_path, capsys):
    a = interrupted(tmp_path / "a", at=10)
    b = interrupted(tmp_path / "b", {**SMALL, "seed": 99}, at=9)
    c = interrupted(tmp_path / "c", {**SMALL, "train": {**SMALL["train"], "lr": 0.01}}, at=9)
    saved = (a / "checkpoint.safetensors").read_bytes()
    for other, needle in ((b, "its seed is 99"), (c, "its optimizer's lr is 0.01")):
        shutil.copy(other / "checkpoint.safetensors", a / "checkpoint.safetensors")
        rc, _, err = cli(capsys, "train", "--out", a, "--resume", "--no-progress")
        one_line_error(rc, err, "cannot resume", needle, "another run")
    (a / "checkpoint.safetensors").write_bytes(saved)
    big = {**SMALL, "model": {"name": "realnvp", "layers": 2, "hidden": [4]}}
    d = interrupted(tmp_path / "d", big, at=10)
    rc, _, err = cli(capsys, "train", "--out", d, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    tiny_moons_run(capsys, tmp_path / "e")
    shutil.copy(d / "model.ff", tmp_path / "e" / "model.ff")
    rc, _, err = cli(capsys, "eval", tmp_path / "e")
    one_line_error(rc, err, "disagree: the model is not the one this run built")


def test_yaml_numbers_are_read_as_yaml_1_2_reads_them(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 017\ntrain: {epochs: 01}\n")
    out = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--limit", 64,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--config", cfg,
                     "--out", out, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert json.loads((out / "config.json").read_text())["seed"] == 17  # (octal 15 before)
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out",
                     tmp_path / "r2", "--set", "train.epochs=1:01", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "epochs")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("model: {layers: 1, hidden: 2001-01-01}\n", "hidden must be a number, string"),
        ("model: {hidden: !!binary aGVsbG8=}\n", "got a bytes"),
    ],
)
def test_config_values_that_are_not_json_are_named(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--config", cfg,
                     "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    one_line_error(rc, err, needle)


def test_damaged_run_files_are_one_line_errors(tmp_path, capsys):
    good = tiny_moons_run(capsys, tmp_path / "good")
    deep = tmp_path / "deep"
    shutil.copytree(good, deep)
    text = (deep / "config.json").read_text().rstrip().rstrip("}")
    (deep / "config.json").write_text(text + ', "x": ' + "[" * 100000 + "]" * 100000 + "}")
    rc, _, err = cli(capsys, "eval", deep)
    one_line_error(rc, err, "is corrupt: nested too deeply")
    lines = tmp_path / "lines"
    shutil.copytree(good, lines)
    with open(lines / "metrics.jsonl", "a") as f:
        f.write("[" * 100000 + "]" * 100000 + "\n")
        f.write('{"type": "epoch", "epoch": ' + "9" * 5000 + "}\n")
    rc, _, err = cli(capsys, "report", lines)
    assert rc == 0, err  # the damaged lines are skipped, and said
    changes = (
        ({"data": None}, "data must be a mapping"),
        ({"data": {"name": "moons", "options": [1]}}, "map its options"),
    )
    for change, needle in changes:
        bad = tmp_path / f"bad{len(needle)}"
        shutil.copytree(good, bad)
        cfg = json.loads((bad / "config.json").read_text())
        cfg.update(change)
        (bad / "config.json").write_text(json.dumps(cfg))
        rc, _, err = cli(capsys, "eval", bad)
        one_line_error(rc, err, "is damaged", needle)


def test_a_run_of_an_older_flowforge_resumes(tmp_path, capsys):
    """A train key added since the run was written takes its default: not a change the
    user made (resume was refused: "train.fm_time_power: '<unset>' -> 1.0")."""
    run = interrupted(tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    del cfg["train"]["fm_time_power"]
    (run / "config.json").write_text(json.dumps(cfg))
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err


def test_resume_finds_its_data_from_another_folder_and_never_another_file(
    tmp_path, capsys, monkeypatch
):
    rng = np.random.default_rng(0)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    np.savetxt(tmp_path / "x" / "t.csv", rng.normal(size=(200, 2)), delimiter=",")
    np.savetxt(tmp_path / "y" / "t.csv", rng.normal(size=(200, 2)), delimiter=",")
    monkeypatch.chdir(tmp_path / "x")
    run = interrupted(tmp_path / "x" / "run", {**SMALL, "data": {"name": "t.csv"}})
    monkeypatch.chdir(tmp_path / "y")  # another t.csv here: the recorded path is the run's
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    # a run whose config names a file but records no fingerprint: refused, as eval refuses it
    crafted = interrupted(tmp_path / "crafted")
    cfg = json.loads((crafted / "config.json").read_text())
    cfg["data"] = {"name": str(tmp_path / "y" / "t.csv"), "seed": 0, "options": {}}
    cfg["resolved"].pop("data_fingerprint")
    (crafted / "config.json").write_text(json.dumps(cfg))
    rc, _, err = cli(capsys, "train", "--out", crafted, "--resume", "--no-progress")
    one_line_error(rc, err, "records no fingerprint")


def test_small_messages_of_the_run_folder(tmp_path, capsys):
    from flowforge.workbench.cli import _finish_train

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out",
                     tmp_path / "dangling", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "is a link to nothing")
    rc, _, err = cli(capsys, "train", "--config", tmp_path, "--out", tmp_path / "r")
    one_line_error(rc, err, "is not a regular file")
    (tmp_path / "fresh").mkdir()
    assert _finish_train({"status": "interrupted", "out": str(tmp_path / "fresh")}) == 130
    err = capsys.readouterr().err
    assert "before the first checkpoint" in err and "--resume" not in err


def test_a_replayed_config_names_its_data_as_the_run_recorded_it(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        np.savetxt(tmp_path / sub / "t.csv", rng.normal(size=(200, 2)), delimiter=",")
    monkeypatch.chdir(tmp_path / "x")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "t.csv", "--epochs", 1,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--out", "run",
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    config = tmp_path / "x" / "run" / "config.json"
    rc, _, err = cli(capsys, "train", "--config", config, "--out", tmp_path / "again",
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err  # from the run's own folder: the same file
    monkeypatch.chdir(tmp_path / "y")  # (its t.csv: other rows)
    rc, _, err = cli(capsys, "train", "--config", config, "--out", "replay", "--no-progress")
    one_line_error(
        rc, err, "the data 't.csv' is not the data it was trained on",
        f"give --data {tmp_path / 'x' / 't.csv'} to replay it",
    )  # fmt: skip
    rc, _, err = cli(capsys, "train", "--config", config, "--data", tmp_path / "x" / "t.csv",
                     "--out", "replay", "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    # no t.csv here: the recorded file is named
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    rc, _, err = cli(capsys, "train", "--config", config, "--out", "replay", "--no-progress")
    one_line_error(rc, err, "names its data 't.csv'", f"--data {tmp_path / 'x' / 't.csv'}")
    # the project folder moved with its data (an audit: the replay refused the same file and
    # named the old path, which no longer existed): it replays from the new place
    (tmp_path / "x").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    moved = tmp_path / "moved" / "run" / "config.json"
    rc, _, err = cli(capsys, "train", "--config", moved, "--out", "replayed", "--no-progress",
                     "--quiet")  # fmt: skip
    assert rc == 0, err
    assert (tmp_path / "moved" / "replayed" / "model.ff").read_bytes() == (
        tmp_path / "again" / "model.ff"
    ).read_bytes()
    monkeypatch.chdir(tmp_path / "w")  # (neither here nor at the recorded place)
    rc, _, err = cli(capsys, "train", "--config", moved, "--out", "replay", "--no-progress")
    one_line_error(rc, err, "which is not there either (moved?)", "give --data with the run's")


@pytest.mark.parametrize(
    "name, text",
    [("c.yaml", "train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.01\n"),
     ("c.json", '{"train": {"lr": 0.1, "lr": 0.2}}')],
)  # fmt: skip
def test_a_key_given_twice_in_a_config_is_refused(tmp_path, capsys, name, text):
    cfg = tmp_path / name
    cfg.write_text(text)
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--config", cfg,
                     "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "the key 'lr' is given twice")


def test_a_wrong_option_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli(capsys, "sample", "run", "-n", "1e3", "--out", "a.npy")
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["flowforge: error: argument -n: invalid int value: '1e3' "
                     "(see: flowforge sample --help)"]  # fmt: skip


def test_resuming_a_finished_run_says_there_was_nothing_to_train(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "run")
    rc, out, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress")
    assert rc == 0, err
    assert "nothing to train: the run had finished: best val NLL" in out


def test_a_long_history_is_thinned_evenly_in_memory():
    from flowforge.workbench.runs import Records

    r = Records(steps=5)
    for i in range(1000):
        r.append({"type": "step", "step": i})
        if i % 100 == 0:
            r.append({"type": "epoch", "step": i})
    steps = [x["step"] for x in r if x["type"] == "step"]
    assert 5 <= len(steps) <= 10 and steps == list(range(0, 1000, r.stride))
    assert [x["step"] for x in r if x["type"] == "epoch"] == list(range(0, 1000, 100))
    assert [x["step"] for x in r] == sorted(x["step"] for x in r)  # in logged order
    import copy
    import pickle

    for again in (pickle.loads(pickle.dumps(r)), copy.copy(r), copy.deepcopy(r)):
        assert list(again) == list(r) and again.stride == r.stride
        again.append({"type": "step", "step": 1000})
        assert len(again) == len(r) + (1000 % r.stride == 0)  # it thins on as the original


def test_metrics_padded_with_records_of_no_kind_hold_none_of_them(tmp_path, capsys, monkeypatch):
    """A metrics.jsonl padded with "{}" lines and records of no type the trainer writes made
    eval, report and --resume hold every one (24-46 bytes of memory a byte of the file, an
    audit): none is kept (counted as damaged), --resume's truncation drops them, every type
    is thinned as step records are, and run_status (every eval) streams the epoch records."""
    from flowforge.workbench import runs

    run = interrupted(tmp_path / "run")  # (epoch 1 logged, interrupted in epoch 2)
    path = run / "metrics.jsonl"
    real = path.read_bytes()
    before = runs.read_metrics(run)
    assert [r["epoch"] for r in before if r["type"] == "epoch"] == [1]
    keys = "".join(f', "k{i}": 0' for i in range(runs.MAX_RECORD_FIELDS))
    junk = [
        "{}", '{"type": "epoch"}', '{"type": "x", "step": 1, "epoch": 1}', '{"type": 7}',
        '{"type": ["epoch"], "step": 1}', '{"type": "step", "step": -1, "epoch": 1}',
        '{"type": "epoch", "step": 1.5, "epoch": 1}', '{"type": "warning", "epoch": 1, "step": 1}',
        '{"type": "epoch", "epoch": 2, "step": 8, "x": [1, 2]}',
        '{"type": "step", "epoch": 2, "step": 6' + keys + "}",
    ]  # fmt: skip
    path.write_bytes(real + ("\n".join(junk * 200) + "\n").encode())
    bad: list[int] = []
    assert runs.read_metrics(run, bad) == before
    assert len(bad) == runs.MAX_UNREADABLE  # (the first line numbers; the report says "at least")
    monkeypatch.setattr(runs.Records, "append", lambda self, r: pytest.fail("records held"))
    status = runs.run_status(run)
    assert status["state"] == "interrupted" and status["finished_epochs"] == 1
    monkeypatch.undo()
    assert runs.truncate_metrics(run, 10**9) == before and path.read_bytes() == real
    # each type of record is thinned, evenly, as step records are
    monkeypatch.setattr(runs, "MAX_OTHER_RECORDS", 5)
    held = runs.Records()
    for e in range(1, 1001):
        held.append({"type": "epoch", "epoch": e, "step": e})
        held.append({"type": "warning", "epoch": e, "step": e, "message": "m"})
    epochs = [r["epoch"] for r in held if r["type"] == "epoch"]
    assert 5 <= len(epochs) <= 10 and epochs == list(range(1, 1001, held.kinds["epoch"][0]))
    assert 5 <= sum(r["type"] == "warning" for r in held) <= 10


def test_a_run_never_writes_metrics_it_cannot_read_back(tmp_path, capsys, monkeypatch):
    """The readers' size cap refused a long run's own metrics.jsonl (--resume and report
    failed with 'not a run's metrics'): past METRICS_STEP_BYTES the trainer writes no more
    step records (one warning says so), and the files are read line by line."""
    from flowforge.workbench import runs
    from flowforge.workbench import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "METRICS_STEP_BYTES", 3000)
    cfg = {
        "model": {"name": "realnvp", "layers": 1, "hidden": [4]},
        "data": {"name": "moons", "limit": 256},
        "train": {"epochs": 4, "batch_size": 16, "log_every": 1, "tensorboard": False},
    }

    def stop(trainer):
        if trainer.global_step == 40:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    assert train(cfg, run, progress=False, echo=False, callback=stop)["status"] == "interrupted"
    res = train({}, run, resume=True, progress=False, echo=False)
    assert res["status"] == "finished"
    recs = runs.read_metrics(run)
    warned = [r for r in recs if r["type"] == "warning" and "no more step records" in r["message"]]
    assert len(warned) == 1 and sum(r["type"] == "epoch" for r in recs) == 4
    last = max(r["step"] for r in recs if r["type"] == "step")
    assert last < 40 and (run / "metrics.jsonl").stat().st_size < 3000 + 2000
    rc, _, err = cli(capsys, "report", run)
    assert rc == 0, err
    # a file larger than any the trainer writes is still refused, and a line of a megabyte is
    # skipped as unreadable without being parsed
    (run / "metrics.jsonl").write_bytes(b'{"type": "epoch", "x": "' + b"a" * (2 << 20) + b'"}\n')
    bad: list[int] = []
    assert runs.read_metrics(run, bad) == [] and bad == [1]
    monkeypatch.setattr(runs, "MAX_METRICS_BYTES", 1000)
    with pytest.raises(runs.RunError, match="which flowforge never writes"):
        runs.read_metrics(run)


def test_a_trained_run_whose_checkpoint_was_removed_is_not_replaced(tmp_path, capsys):
    run = tmp_path / "fin"
    args = ["train", "--model", "realnvp", "--data", "moons", "--out", run, "--model-kwargs",
            '{"layers": 1, "hidden": [4]}', "--limit", 64, "--no-progress", "--quiet"]  # fmt: skip
    rc, _, err = cli(capsys, *args, "--epochs", 2)
    assert rc == 0, err
    (run / "checkpoint.safetensors").unlink()  # e.g. to save disk once the run finished
    model = (run / "model.ff").read_bytes()
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", "8gaussians", "--epochs", 1,
                     "--out", run, "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "already holds a different run")
    rc, _, err = cli(capsys, *args, "--epochs", 2)
    one_line_error(rc, err, "trained model (2 epochs)", "cannot be resumed", "--overwrite")
    assert (run / "model.ff").read_bytes() == model


def test_a_run_whose_first_checkpoint_was_never_written_starts_again(tmp_path, capsys):
    # model.ff is written at the first validation, the checkpoint after it: a full disk in
    # between leaves the first epoch's model alone, and the same command starts the run again
    run = tiny_moons_run(capsys, tmp_path / "run")
    (run / "checkpoint.safetensors").unlink()
    tiny_moons_run(capsys, run)
    assert (run / "checkpoint.safetensors").is_file()


@pytest.mark.parametrize("text", ["my notes", ""])
def test_a_users_lock_file_is_not_ours(tmp_path, capsys, text):
    out = tmp_path / "mine"
    out.mkdir()
    (out / ".lock").write_text(text)  # (`touch .lock` makes the empty one)
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", out,
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "not empty and is not a flowforge run")
    assert [f.name for f in out.iterdir()] == [".lock"]
    assert (out / ".lock").read_text() == text


def test_a_lock_is_written_whole_and_a_stale_one_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    seen = []

    def look(t):
        if t.global_step == 1:
            seen.append(json.loads((out / ".lock").read_text()))

    cfg = {**SMALL, "train": {**SMALL["train"], "epochs": 1}}
    assert train(cfg, out, progress=False, echo=False, callback=look)["status"] == "finished"
    assert seen[0]["pid"] == os.getpid() and not (out / ".lock").exists()
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": seen[0]["host"]}))
    rc, _, err = cli(capsys, "train", "--out", out, "--overwrite", "--model", "realnvp",
                     "--data", "moons", "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err  # its process is gone: taken over


def test_a_linked_tensorboard_folder_is_refused(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    cfg = {**SMALL, "train": {**SMALL["train"], "tensorboard": True}}
    run = interrupted(tmp_path / "run", cfg)
    assert any((run / "tb").iterdir())  # it logs there
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.rmtree(run / "tb")
    (run / "tb").symlink_to(victim)
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    one_line_error(rc, err, "tb is not a folder of the run's own")
    assert list(victim.iterdir()) == []


def test_a_run_config_naming_another_file_never_shows_or_parses_it(tmp_path, capsys):
    data = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    np.savetxt(data, rng.normal(size=(200, 2)), delimiter=",", header="a,b", comments="")
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", data, "--out", run,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--epochs", 1,
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["data_bytes"] == data.stat().st_size
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1.5,SECRET-TOKEN\n")
    cfg["data"]["name"] = str(secret)
    cfg["resolved"]["data_path"] = str(secret)
    (run / "config.json").write_text(json.dumps(cfg))
    rc, _, err = cli(capsys, "eval", run)
    one_line_error(rc, err, "not the data this run was trained on")
    assert "SECRET" not in err
    # a file of the run's size that is not its data: parsed, refused, its contents not shown
    secret.write_text("a,b\n" + "x" * (data.stat().st_size - 5) + "\n")
    assert secret.stat().st_size == data.stat().st_size
    rc, _, err = cli(capsys, "eval", run)
    one_line_error(rc, err, "not the data this run was trained on")
    assert "xxxx" not in err


def test_a_huge_sparse_checkpoint_is_refused_before_the_model_is_built(tmp_path, capsys):
    run = interrupted(tmp_path / "run")
    ckpt = run / "checkpoint.safetensors"
    ckpt.unlink()
    with open(ckpt, "wb") as f:
        f.truncate(5 << 30)  # sparse: no disk used
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    one_line_error(rc, err, "more than the 4,294,967,296 a checkpoint may hold")


def test_a_config_whose_shapes_are_not_the_models_is_refused(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["resolved"]["event_shape"] = cfg["resolved"]["data_shape"] = [4]
    (run / "config.json").write_text(json.dumps(cfg))
    for args in (("sample", run, "-n", 3, "--out", tmp_path / "s.npy"), ("eval", run)):
        rc, _, err = cli(capsys, *args)
        one_line_error(rc, err, "config says examples of shape (4,), the model takes (2,)")


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "run"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", out,
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "cannot write into", "file/run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_out_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out",
                         ro / "run", "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    finally:
        ro.chmod(0o755)
    one_line_error(rc, err, "cannot write into")


def test_a_stale_lock_is_taken_over_by_one_process_only(tmp_path):
    # two trainings found the same stale lock; the first took it over and holds a fresh one:
    # the second's takeover must not remove it, nor its exit remove another's lock
    import socket

    from flowforge.workbench.runs import RunLock, _lock_record

    out = tmp_path / "run"
    out.mkdir()
    lock = out / ".lock"
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    stale = _lock_record(lock)
    first = RunLock(out).__enter__()  # takes it over
    fresh = lock.read_bytes()
    second = RunLock(out)
    second._take_over(stale)  # late: the record it found stale is gone
    assert lock.read_bytes() == fresh and not (out / ".lock.takeover").exists()
    second.held, second._record = True, b"{}"  # (as if it had held one)
    second.__exit__(None, None, None)
    assert lock.read_bytes() == fresh
    first.__exit__(None, None, None)
    assert not lock.exists()


def test_damaged_files_are_refused_on_resume_and_an_ended_run_writes_nothing(tmp_path, capsys):
    run = interrupted(tmp_path / "run")
    ckpt = run / "checkpoint.safetensors"
    good = ckpt.read_bytes()
    bad = bytearray(good)
    bad[-10] ^= 0x10  # one bit of a tensor: a slightly different model, were it not checked
    ckpt.write_bytes(bytes(bad))
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    one_line_error(rc, err, "fail their checksum")
    ckpt.write_bytes(good)
    model = run / "model.ff"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    one_line_error(rc, err, "its best model (model.ff, epoch", "is damaged", "--overwrite")
    # a finished run: resuming it trains nothing and starts no TensorBoard file
    done = tmp_path / "done"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", done,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--limit", 64,
                     "--epochs", 2, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    before = sorted(p.name for p in done.rglob("*"))
    rc, _, err = cli(capsys, "train", "--out", done, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in done.rglob("*")) == before
    # a trained run whose checkpoint was removed: said so, not "stopped before the first"
    (done / "checkpoint.safetensors").unlink()
    rc, _, err = cli(capsys, "train", "--out", done, "--resume", "--no-progress", "--quiet")
    one_line_error(rc, err, "though it holds a model trained for", "--overwrite")
    # (an audit) the same for a finished run of one epoch, which was "stopped before the first"
    one = tmp_path / "one"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", one,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--limit", 64,
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    (one / "checkpoint.safetensors").unlink()
    rc, _, err = cli(capsys, "train", "--out", one, "--resume", "--no-progress", "--quiet")
    one_line_error(rc, err, "though it holds a model trained for 1 epoch (", "--overwrite")


def test_training_and_loading_leave_the_callers_random_streams(tmp_path):
    """train() seeded Python's, numpy's and torch's global streams for its run and left them
    so (a user's seeded draws after it were the run's); ff.load rebuilt the model on the
    caller's torch stream (loading a second model changed every seeded sample after it)."""
    import random

    import torch

    import flowforge as ff

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    want = draws()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    assert train(SMALL, tmp_path / "r", progress=False, echo=False)["status"] == "finished"
    assert draws() == want
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    ff.load(tmp_path / "r")
    assert torch.equal(torch.rand(3), want)


def test_damaged_sections_of_a_run_config_are_one_line(tmp_path, capsys):
    """model.kwargs as a list and resolved.flow_config as a string were internal errors (a
    TypeError in --init-from, an AttributeError in eval)."""
    run = tmp_path / "r"
    assert train(SMALL, run, progress=False, echo=False)["status"] == "finished"
    good = (run / "config.json").read_text()
    for where, value, said in (
        (("model", "kwargs"), [1, 2], "model.kwargs must be a mapping"),
        (("resolved", "flow_config"), "x", "resolved.flow_config must be a mapping"),
        (("resolved", "environment"), [1], "resolved.environment must be a mapping"),
    ):
        cfg = json.loads(good)
        cfg[where[0]][where[1]] = value
        (run / "config.json").write_text(json.dumps(cfg))
        for args in (("eval", run), ("train", "--init-from", run, "--out", tmp_path / "n")):
            rc, _, err = cli(capsys, *args)
            one_line_error(rc, err, said)


class _Killed(BaseException):
    """Stands for a kill -9 in the middle of clearing a run."""


def test_a_kill_while_overwrite_clears_leaves_a_run_overwrite_clears(tmp_path, capsys, monkeypatch):
    """config.json (what makes the folder a run) goes last: before, it went first, and a
    folder killed midway was "not a flowforge run" that --overwrite refused to clear."""
    from flowforge.workbench import runs

    out = tiny_moons_run(capsys, tmp_path / "run")
    real, calls = Path.unlink, []

    def unlink(self, missing_ok=False):
        calls.append(self.name)
        if len(calls) == 2:
            raise _Killed
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(_Killed):
        runs.clear_run(out)
    monkeypatch.undo()
    assert runs.is_run(out) and "config.json" not in calls
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", out,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--limit", 64,
                     "--epochs", 1, "--no-progress", "--quiet", "--overwrite")  # fmt: skip
    assert rc == 0, err


def test_a_signal_while_a_run_is_cleared_waits_for_the_clearing(tmp_path, capsys, monkeypatch):
    from flowforge.workbench import runs

    out = tiny_moons_run(capsys, tmp_path / "run")
    real, calls = Path.unlink, []

    def unlink(self, missing_ok=False):
        calls.append(self.name)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        runs.clear_run(out)
    monkeypatch.undo()
    assert calls[-1] == "config.json" and not (out / "config.json").exists()
    assert not (out / "model.ff").exists() and not (out / "metrics.jsonl").exists()


def _unreadable(monkeypatch, name: str) -> None:
    """Opening the file ``name`` fails as a mode-000 file does for a user who is not root."""
    import builtins

    real_os_open, real_open, real_read_text = os.open, builtins.open, Path.read_text

    def denied(path):
        if Path(path).name == name:
            raise PermissionError(13, "Permission denied", str(path))

    def os_open(path, *a, **k):
        denied(path)
        return real_os_open(path, *a, **k)

    def open_(path, *a, **k):
        if isinstance(path, (str, os.PathLike)):
            denied(path)
        return real_open(path, *a, **k)

    def read_text(self, *a, **k):
        denied(self)
        return real_read_text(self, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(Path, "read_text", read_text)


@pytest.mark.parametrize(
    "name, command",
    [
        ("model.ff", "resume"),
        ("model.ff", "eval"),
        ("checkpoint.safetensors", "resume"),
        ("config.json", "eval"),
        ("metrics.jsonl", "resume"),
        ("metrics.jsonl", "report"),
    ],
)
def test_an_unreadable_file_is_said_to_be_unreadable_not_damaged(
    tmp_path, capsys, monkeypatch, name, command
):
    """A permission problem is no damage: before, model.ff was "damaged" with the advice to
    train again with --overwrite (which throws a resumable run away), config.json "corrupt",
    and a metrics.jsonl that failed to read "cannot write"."""
    out = interrupted(tmp_path / "run")
    _unreadable(monkeypatch, name)
    args = {
        "resume": ("train", "--out", out, "--resume", "--no-progress", "--quiet"),
        "eval": ("eval", out),
        "report": ("report", out),
    }[command]
    rc, _, err = cli(capsys, *args)
    one_line_error(rc, err, f"cannot read {out / name}: Permission denied")
    for word in ("damaged", "corrupt", "--overwrite", "cannot write"):
        assert word not in err, err


def test_resume_refuses_run_files_made_read_only(tmp_path, capsys):
    """A resume replaced a mode-444 checkpoint with a 644 one, without a word."""
    out = interrupted(tmp_path / "run")
    ckpt = out / "checkpoint.safetensors"
    ckpt.chmod(0o444)
    before = ckpt.read_bytes()
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    one_line_error(rc, err, f"{ckpt} is read-only (mode 444)", "chmod u+w")
    assert ckpt.read_bytes() == before and ckpt.stat().st_mode & 0o777 == 0o444
    ckpt.chmod(0o644)
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    # finished, it replaces nothing: read-only files are no reason to refuse "nothing to train"
    for name in ("checkpoint.safetensors", "model.ff", "metrics.jsonl"):
        (out / name).chmod(0o444)
    rc, out_text, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert rc == 0 and "nothing to train" in out_text + err, err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_lock_of_a_killed_training_not_yet_reaped_is_stale(tmp_path):
    # (an audit) a training killed under a parent that had not waited for it (a driver
    # script, a notebook's Popen) is a zombie: kill(pid, 0) still answers, and --resume was
    # refused as "in use by another training" until the parent reaped it
    import socket
    import subprocess
    import sys
    import time

    from flowforge.workbench.runs import RunLock, _process_start

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{child.pid}/stat")
    try:
        for _ in range(200):  # (until it has exited; not reaped: no wait() or poll())
            if stat.read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
            time.sleep(0.02)
        record = {"pid": child.pid, "host": socket.gethostname(),
                  "start": _process_start(child.pid)}  # fmt: skip
        assert not RunLock(tmp_path)._owner_alive(record)
        own = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
        }
        lock = RunLock(tmp_path)
        lock.held = True
        assert lock._owner_alive(own)  # (a live process is still one)
    finally:
        child.wait()
