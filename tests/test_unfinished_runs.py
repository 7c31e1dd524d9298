"""A run whose training is unfinished (interrupted, or still training) says so: ``eval`` prints
a note (``run_status`` with ``--json``) and gives no advice on the model's size, and the
report's first row says it (a newcomer study: an interrupted run was told to "try a smaller
model"). A damaged run folder is read safely: nothing is said rather than a crash."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from cli_support import cli, one_line_error
from flowforge.workbench import evaluate
from flowforge.workbench import runs as RUNS
from flowforge.workbench.runner import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A table run interrupted in its second epoch of 3, and one that finished."""
    tmp = tmp_path_factory.mktemp("unfinished")
    rows = np.random.default_rng(0).normal(size=(160, 2))  # 128 train rows: 4 steps an epoch
    (tmp / "t.csv").write_text("a,b\n" + "\n".join(f"{x:.5f},{y:.5f}" for x, y in rows))
    SMALL = {
        "model": {"name": "realnvp", "layers": 1, "hidden": [8]},
        "data": {"name": str(tmp / "t.csv")},
        "train": {"epochs": 3, "batch_size": 32, "tensorboard": False},
    }

    def stop(t):  # in the second epoch (4 steps an epoch)
        if t.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    cut = train(SMALL, tmp / "cut", progress=False, echo=False, callback=stop)
    done = train(SMALL, tmp / "done", progress=False, echo=False)
    assert (cut["status"], done["status"]) == ("interrupted", "finished")
    return tmp


@pytest.fixture
def run(runs, tmp_path, request):
    import shutil

    return Path(shutil.copytree(runs / request.param, tmp_path / request.param))


def _worse(monkeypatch):
    """Every reference comparison a warning (the advice shows only then)."""
    monkeypatch.setattr(evaluate, "against_reference", lambda res, key: ("it is worse", True))


def _table(run: Path) -> list[tuple[str, str]]:
    return re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", (run / "report.html").read_text())


@pytest.mark.parametrize("run", ["cut"], indirect=True)
def test_an_interrupted_run_says_so(run, capsys, monkeypatch):
    _worse(monkeypatch)
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err
    lines = out.splitlines()
    note = "note: this run was interrupted at epoch 2 of 3 (1 epoch finished); its scores are"
    at = [i for i, line in enumerate(lines) if line.startswith(note)]
    assert len(at) == 1 and f"flowforge train --out {run} --resume continues it" in lines[at[0]]
    assert at[0] < min(i for i, line in enumerate(lines) if "it is worse" in line), out
    assert "smaller model" not in out and "warning: the model scores worse" not in out
    assert "note: the model scores worse than that Gaussian, but its training is unfinished" in out
    rc, out, err = cli(capsys, "eval", run, "--json")
    assert rc == 0, err
    status = json.loads(out)["run_status"]
    assert status == {"state": "interrupted", "epoch": 2, "epochs": 3, "finished_epochs": 1}
    rc, out, err = cli(capsys, "report", run)
    assert rc == 0, err
    assert "note: this run was interrupted at epoch 2 of 3" in out  # on the console too
    table = _table(run)
    assert table[0][0] == "note: unfinished training"
    assert table[0][1].startswith("this run was interrupted at epoch 2 of 3")
    rows = dict(table)
    assert rows["epochs run"].startswith("1 of 3 (train.epochs); ")
    assert " s of training (the epochs" in rows["epochs run"]
    assert "early-stopped" not in rows["epochs run"]
    assert "smaller model" not in (run / "report.html").read_text()


@pytest.mark.parametrize("run", ["done"], indirect=True)
def test_a_run_still_training_says_so(run, capsys, monkeypatch):
    import subprocess
    import sys

    # a live Python process: its owner (a lock of this machine without its start time is
    # taken as a training's only where the process may be one)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": owner.pid, "host": socket.gethostname()}
        (run / ".lock").write_text(json.dumps(lock))
        _worse(monkeypatch)
        rc, out, err = cli(capsys, "eval", run)
        assert rc == 0, err
        assert "note: this run is still training (3 of 3 epochs finished so far)" in out
        assert "smaller model" not in out
        rc, out, _ = cli(capsys, "eval", run, "--json")
        assert json.loads(out)["run_status"]["state"] == "training"
    finally:
        owner.kill()
        owner.wait()
    lock["pid"] = 2**22 + 12345  # its owner is gone: a finished run again
    (run / ".lock").write_text(json.dumps(lock))
    assert RUNS.run_status(run) is None


@pytest.mark.parametrize("run", ["done"], indirect=True)
def test_a_finished_run_gets_no_note(run, capsys, monkeypatch):
    _worse(monkeypatch)
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err
    assert "note: this run" not in out and "smaller model" in err  # the advice, as before
    rc, out, _ = cli(capsys, "eval", run, "--json")
    assert "run_status" not in json.loads(out)


@pytest.mark.parametrize("run", ["cut"], indirect=True)
def test_a_damaged_checkpoint_or_lock_says_nothing(run):
    ckpt = run / "checkpoint.safetensors"
    assert RUNS.run_status(run)["state"] == "interrupted"
    good = ckpt.read_bytes()
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["flowforge"])
    for bad in (
        b"",
        b"\x00" * 7,
        (2**63).to_bytes(8, "little") + good[8:],  # a header beyond the file
        good[:8] + b"[" + good[9:],  # not JSON
        good[: 8 + n // 2],  # cut inside the header
    ):
        ckpt.write_bytes(bad)
        assert RUNS.run_status(run) is None
    for change in ({"epoch": "1"}, {"epoch": -1}, {"finished": "maybe"}, {"epoch": 99}):
        header["__metadata__"]["flowforge"] = json.dumps({**meta, **change})
        text = json.dumps(header).encode()
        ckpt.write_bytes(len(text).to_bytes(8, "little") + text)
        assert RUNS.run_status(run) is None, change
    ckpt.unlink()
    ckpt.mkdir()  # not a file
    assert RUNS.run_status(run) is None
    ckpt.rmdir()
    ckpt.write_bytes(good)
    here = socket.gethostname()
    odd = [{"pid": "x", "host": 1}, {"pid": 0, "host": here}, {"pid": -1, "host": here},
           {"pid": True, "host": here}]  # (True asked after pid 1: "still training")  # fmt: skip
    for lock in ("", "{", "[]", *map(json.dumps, odd), json.dumps({"pid": 2**80, "host": here})):
        (run / ".lock").write_text(lock)
        assert (
            RUNS.run_status(run)["state"] == "interrupted"
        )  # the lock is not ours: the checkpoint
    (run / ".lock").write_text(json.dumps({"pid": 1234, "host": "elsewhere"}))
    status = RUNS.run_status(run)  # another machine's lock: said as the lock's word
    assert status["state"] == "training" and status["host"] == "elsewhere"
    assert "lock says it is training on host 'elsewhere'" in RUNS.describe_run_status(status, run)
    (run / ".lock").unlink()
    (run / "config.json").write_text("{")
    assert RUNS.run_status(run) is None


@pytest.mark.parametrize("run", ["cut"], indirect=True)
def test_a_lock_of_a_pid_os_kill_cannot_take_is_no_lock_of_ours(run, capsys):
    """A lock of this machine naming a pid beyond a C int: --resume and --overwrite stopped
    with an internal OverflowError (an audit); it is no lock flowforge wrote, as a pid of 0."""
    from flowforge.workbench.runs import RunLock

    for pid in (10**20, 2**32, 2**31):
        lock = json.dumps({"pid": pid, "host": socket.gethostname()})
        (run / ".lock").write_text(lock)
        rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
        one_line_error(rc, err, ".lock exists and is not a lock flowforge wrote")
        with pytest.raises(RUNS.RunError, match="is not a lock flowforge wrote"):
            with RunLock(run):  # (what --overwrite takes)
                pass
        assert (run / ".lock").read_text() == lock


@pytest.mark.parametrize("run", ["done"], indirect=True)
def test_a_run_still_improving_is_told_to_train_longer(run, capsys, monkeypatch):
    """An undertrained run (its best epoch its last) was told to try a smaller model or weight
    decay, the advice for overfitting."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r.get("type") == "epoch"]
    for r in epochs:
        r["best"] = r is epochs[-1]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    _worse(monkeypatch)
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err
    assert "still improving: train it longer" in err and "smaller model" not in err
    rc, _, err = cli(capsys, "report", run)
    assert rc == 0, err
    page = (run / "report.html").read_text()
    assert "still improving: train it longer" in page and "smaller model" not in page


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="needs /proc")
@pytest.mark.parametrize("run", ["done"], indirect=True)
def test_a_stale_lock_whose_pid_was_reused_is_told_apart(run, capsys, monkeypatch):
    """The lock records its process's start time: a live process that took the dead owner's
    pid (a busy server, after a crash) made the run "still training" for good."""
    owner = os.getppid()  # a live process

    def started(pid):  # /proc/PID/stat's field 22
        raw = Path(f"/proc/{pid}/stat").read_bytes()
        return int(raw[raw.rindex(b")") + 2 :].split()[19])

    start = started(owner)
    lock = {"pid": owner, "host": socket.gethostname(), "start": start}
    (run / ".lock").write_text(json.dumps(lock))
    assert RUNS.run_status(run)["state"] == "training"  # its owner, as recorded
    lock["start"] = start + 1  # the pid is another process's now
    (run / ".lock").write_text(json.dumps(lock))
    _worse(monkeypatch)
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0 and "still training" not in out, err
    assert RUNS.run_status(run) is None
    # and a training's own lock records its start
    record = RUNS.RunLock(run.parent / "new")
    (run.parent / "new").mkdir()
    with record:
        held = json.loads((run.parent / "new" / ".lock").read_text())
    assert held["start"] == started(os.getpid())


def _failing_run(runs: Path, out: Path, monkeypatch, failing_save: int) -> Path:
    """A run whose ``failing_save``-th checkpoint write fails (a full disk, as a kill there):
    the epoch's model.ff and record are written, its checkpoint not."""
    from flowforge.workbench import trainer as trainer_module

    real, saves = trainer_module.Trainer.save_checkpoint, []

    def save(self, *a, **k):
        saves.append(1)
        if len(saves) == failing_save:
            raise OSError(28, "cannot write checkpoint.safetensors: No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(trainer_module.Trainer, "save_checkpoint", save)
    cfg = {
        "model": {"name": "realnvp", "layers": 1, "hidden": [8]},
        "data": {"name": str(runs / "t.csv")},
        "train": {"epochs": 3, "batch_size": 32, "tensorboard": False},
    }
    with pytest.raises(OSError):
        train(cfg, out, progress=False, echo=False)
    monkeypatch.undo()
    return out


def test_a_run_that_failed_before_its_first_checkpoint_gets_a_note(runs, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    """It has epoch 1's model.ff and no checkpoint: eval printed its scores with no note."""
    run = _failing_run(runs, tmp_path / "r", monkeypatch, failing_save=1)
    assert (run / "model.ff").is_file() and not (run / "checkpoint.safetensors").exists()
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err
    assert (
        "note: this run stopped at epoch 2 of 3 before its first checkpoint (1 epoch finished); "
        "its scores are of an unfinished model (the same train command starts it again)"
    ) in out
    rc, out, _ = cli(capsys, "eval", run, "--json")
    assert json.loads(out)["run_status"]["finished_epochs"] == 1


def test_a_failed_runs_note_counts_the_epochs_of_its_model(runs, tmp_path, capsys, monkeypatch):
    """Epoch 2's model.ff and record were written and its checkpoint not: the note said "1
    epoch finished" of epoch 2's model, and "interrupted" of a run nobody interrupted."""
    run = _failing_run(runs, tmp_path / "r", monkeypatch, failing_save=2)
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err
    assert (
        "note: this run stopped at epoch 3 of 3 (2 epochs finished) without an interrupt's "
        "save (killed, or an error such as a full disk)"
    ) in out


@pytest.mark.parametrize("run", ["done"], indirect=True)
def test_a_finished_run_without_its_checkpoint_gets_no_note(run, capsys):
    (run / "checkpoint.safetensors").unlink()  # removed to save disk
    assert RUNS.run_status(run) is None


@pytest.mark.parametrize("run", ["cut"], indirect=True)
def test_a_lock_naming_a_live_process_that_trains_nothing_is_stale(run, capsys):
    """A lock without its start time naming a live process that is no Python (init, a shell,
    here `sleep`): eval said "still training" and --resume refused, to wait for it forever (an
    audit of hostile run folders)."""
    import subprocess

    other = subprocess.Popen(["sleep", "60"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        rc, out, err = cli(capsys, "eval", run)
        assert rc == 0 and "still training" not in out + err
        rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
        assert "in use by another training" not in err
    finally:
        other.kill()
        other.wait()
