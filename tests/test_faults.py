"""Fault injection on the run folder: kill -9 at several points, a full disk, a second signal
during the interrupt save, SIGHUP, two trainings into one folder, float64 checkpoints. Each
asserts that nothing the user had is lost and that what is printed is one clear line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import flowforge as ff
from cli_support import cli, tiny_moons_run
from flowforge import io
from flowforge.workbench import trainer as trainer_module
from flowforge.workbench.checkpoint import read_checkpoint
from flowforge.workbench.cli import main
from flowforge.workbench.runner import train
from flowforge.workbench.runs import RunLock

CFG = {
    "model": {"name": "realnvp", "layers": 2, "hidden": [16]},
    "layout": "vector",
    "data": {"name": "digits", "limit": 96},
    "train": {"epochs": 3, "batch_size": 32, "warmup_steps": 4, "log_every": 1},
}


def _errors(err: str) -> list[str]:
    """The lines of standard error that are not warnings (each its own line before)."""
    return [ln for ln in err.strip().splitlines() if not ln.startswith("flowforge: warning: ")]


def params(run: Path) -> dict:
    _, t = read_checkpoint(run / "checkpoint.safetensors")
    return {k: v for k, v in t.items() if k.startswith(("model/", "optim/"))}


def same_weights(a: Path, b: Path) -> bool:
    pa, pb = params(a), params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert train(CFG, out, progress=False, echo=False)["status"] == "finished"
    return out


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from flowforge.workbench.runner import train
    cfg, out, at, where = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if where == "rename":  # die inside the atomic write of the checkpoint at step `at`
        import flowforge.io as io
        real = os.replace
        def replace(src, dst):
            if str(dst).endswith("checkpoint.safetensors") and state["step"] >= at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        io.os.replace = replace
    state = {"step": 0}
    def cb(trainer):
        state["step"] = trainer.global_step
        if where == "step" and trainer.global_step == at:
            os.kill(os.getpid(), signal.SIGKILL)
    train(cfg, out, progress=False, echo=False, callback=cb)
    """
)


@pytest.mark.parametrize("at, where", [(1, "step"), (5, "step"), (6, "rename")])
def test_kill_9_then_the_same_command_or_resume(tmp_path, capsys, reference, at, where):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", KILLER, json.dumps(CFG), str(out), str(at), where],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert (out / ".lock").exists()  # the dead process's lock: stale, taken over below
    if (out / "checkpoint.safetensors").exists():
        rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    else:  # killed before the first checkpoint: the same command starts it again
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps(CFG))
        rc, _, err = cli(capsys, "train", "--config", cfg, "--out", out, "--no-progress",
                         "--quiet")  # fmt: skip
    assert rc == 0, err
    assert same_weights(out, reference)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # orphans removed
    assert not (out / ".lock").exists()


def test_a_full_disk_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "run"
    real = io.atomic_write
    calls = {"n": 0}

    def full(path, data):
        if str(path).endswith("checkpoint.safetensors"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        return real(path, data)

    monkeypatch.setattr(io, "atomic_write", full)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CFG))
    rc, _, err = cli(capsys, "train", "--config", cfg, "--out", out, "--no-progress", "--quiet")
    assert rc == 1 and len(_errors(err)) == 1 and "No space left" in err, err
    meta, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["epoch"] == 1  # the first epoch's checkpoint is intact
    monkeypatch.setattr(io, "atomic_write", real)
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert same_weights(out, reference)


def test_a_second_signal_during_the_interrupt_save(tmp_path, monkeypatch, capsys, reference):
    out = tmp_path / "run"
    real = trainer_module.save_checkpoint
    state = {"interrupted": False}

    def slow_save(*args, **kwargs):
        if state["interrupted"]:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the save
        return real(*args, **kwargs)

    def interrupt(trainer):
        if trainer.global_step == 5:
            state["interrupted"] = True
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(trainer_module, "save_checkpoint", slow_save)
    result = train(CFG, out, progress=False, echo=True, callback=interrupt)
    printed = capsys.readouterr().out
    assert result["status"] == "interrupted"
    assert "checkpoint saved" in printed and "second signal" in printed, printed
    meta, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 2)  # the partial epoch is kept
    monkeypatch.setattr(trainer_module, "save_checkpoint", real)
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert same_weights(out, reference)


KILLED = textwrap.dedent(
    """
    import json, os, signal, sys
    from flowforge.workbench.runner import train
    sig = getattr(signal, sys.argv[2])
    def kill(trainer):
        if trainer.global_step == 4:
            os.kill(os.getpid(), sig)
    result = train(json.loads(sys.argv[3]), sys.argv[1], progress=False, echo=False,
                   callback=kill)
    print("went on after", result["status"])
    """
)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_kill_saves_then_ends_a_python_process(tmp_path, name):
    # (a fit in a script of one's own caught SIGTERM, saved, and returned: the script went on
    # to its next runs and exited 0, and a scheduler saw a success)
    if not hasattr(signal, name):
        pytest.skip(f"no {name} here")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", KILLED, str(out), name, json.dumps(CFG)],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == -getattr(signal, name) and "went on" not in r.stdout, r.stderr
    meta, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["global_step"] == 4  # (saved first: it resumes)
    assert train({}, out, resume=True, progress=False, echo=False)["status"] == "finished"


def test_a_kill_handled_by_the_caller_reaches_its_handler(tmp_path):
    out, seen = tmp_path / "run", []

    def kill(trainer):
        if trainer.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        result = train(CFG, out, progress=False, echo=False, callback=kill)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert result["status"] == "interrupted" and seen == [signal.SIGTERM]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_an_ignored_signal_stays_ignored(tmp_path):
    """Under nohup SIGHUP is ignored when training starts (and SIGINT for `cmd &` in a
    script): closing the terminal must not stop the training."""
    out = tmp_path / "run"

    def hangup(trainer):
        if trainer.global_step == 4:
            os.kill(os.getpid(), signal.SIGHUP)

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        result = train(CFG, out, progress=False, echo=False, callback=hangup)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)
    assert result["status"] == "finished" and result["epochs"] == CFG["train"]["epochs"]


def test_two_trainings_into_one_folder(tmp_path, capsys, reference):
    """A run whose lock is held by a live process (a training in progress) is neither
    overwritten, resumed nor restarted; once that process is gone the lock is stale."""
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(reference), str(out)], check=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = json.dumps({"pid": sleeper.pid, "host": os.uname().nodename})
        (out / ".lock").write_text(lock)
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps({**CFG, "train": {**CFG["train"], "epochs": 4}}))
        for extra, needle in ((["--overwrite"], "in use by another training"),
                              ([], "already holds a different run")):  # fmt: skip
            rc, _, err = cli(capsys, "train", "--config", cfg, "--out", out, "--no-progress",
                             *extra)  # fmt: skip
            assert rc == 1 and len(_errors(err)) == 1, err
            assert needle in err, err
        rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
        assert rc == 1 and "in use by another training" in err, err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {
            **before,
            ".lock": lock.encode(),
        }
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(out):  # its owner is gone: the lock is stale and taken over
        pass
    assert not (out / ".lock").exists()


def test_batch_norm_refuses_a_training_batch_of_one():
    flow = ff.models.RealNVP(features=4, layers=2, hidden=[8], batch_norm=True)
    flow.train()
    with pytest.raises(ValueError, match="batch of 1"):
        flow.log_prob(torch.randn(1, 4))
    flow.eval()
    assert torch.isfinite(flow.log_prob(torch.randn(1, 4))).all()


def test_a_float64_checkpoint_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_moons_run(capsys, out)
    rc, out32, _ = cli(capsys, "eval", out, "--json")
    flow = ff.load(out / "model.ff").to(torch.float64)
    ff.save(flow, out / "model.ff")
    assert ff.load(out / "model.ff").dtype == torch.float64
    rc, out64, err = cli(capsys, "eval", out, "--json")
    assert rc == 0, err
    assert abs(json.loads(out64)["nll"] - json.loads(out32)["nll"]) < 1e-4


def test_a_folder_with_a_foreign_config_json_is_not_a_run(tmp_path, capsys):
    """Audit item 1: --overwrite once deleted the user's folders next to any config.json."""
    out = tmp_path / "p"
    (out / "report").mkdir(parents=True)
    (out / "tb").mkdir()
    (out / "config.json").write_text('{"name": "my-web-app"}')
    (out / "report" / "q3.docx").write_text("x")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--epochs", 1,
                     "--out", out, "--overwrite", "--no-progress")  # fmt: skip
    assert rc == 1 and "not a flowforge run" in err, err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_resume_refuses_data_that_changed(tmp_path, capsys):
    """Audit item 6: a CSV edited between an interrupt and --resume."""
    table = tmp_path / "t.csv"
    rows = torch.randn(200, 3, generator=torch.Generator().manual_seed(0)).tolist()
    table.write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n")
    out = tmp_path / "run"

    def stop(trainer):
        if trainer.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = {"model": {"name": "realnvp", "layers": 1, "hidden": [4]}, "data": str(table),
           "train": {"epochs": 3, "batch_size": 32}}  # fmt: skip
    assert train(cfg, out, progress=False, echo=False, callback=stop)["status"] == "interrupted"
    rows[5][1] += 1.0
    table.write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n")
    before = (out / "checkpoint.safetensors").read_bytes()
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert rc == 1 and len(_errors(err)) == 1 and "data changed" in err, err
    assert (out / "checkpoint.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "option",
    [
        ["--patience", "-1"], ["--grad-clip", "-5"], ["--limit", "-1"], ["--lr", "inf"],
        ["--weight-decay", "-1"], ["--device", "tpu"], ["--set", "train.lr=abc"],
        ["--set", "train.log_every=abc"], ["--set", "train.betas=[2,3]"], ["--epochs", "0"],
        ["--batch-size", "0"],
    ],
)  # fmt: skip
def test_nonsense_options_are_refused_before_anything_is_written(tmp_path, capsys, option):
    """Audit items 2 and 10: every option is checked, with its key named, before the folder
    exists."""
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", out,
                     "--no-progress", *option)  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("flowforge: error: "), err
    key = option[1].split("=")[0] if option[0] == "--set" else option[0][2:].replace("-", "_")
    assert key.split(".")[-1] in lines[0], lines[0]
    assert not out.exists()


def _epochs(run: Path) -> list:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["val_nll"], r["best"]) for r in recs if r.get("type") == "epoch"]


def test_a_signal_inside_a_step_stops_after_it_and_resumes_exactly(
    tmp_path, monkeypatch, capsys, reference
):
    """The step's dequantization noise is drawn when the signal arrives: the run finishes
    that step, then saves, so the resumed run draws what the uninterrupted one drew."""
    out = tmp_path / "run"
    real = trainer_module.Trainer._forward_backward

    def loss(self, xb, cb, rng):
        value = real(self, xb, cb, rng)
        if self.global_step == 4:  # the fifth step's passes are done, its update is not
            os.kill(os.getpid(), signal.SIGINT)
        return value

    monkeypatch.setattr(trainer_module.Trainer, "_forward_backward", loss)
    result = train(CFG, out, progress=False, echo=False)
    assert result["status"] == "interrupted" and result["steps"] == 5  # the step finished
    monkeypatch.setattr(trainer_module.Trainer, "_forward_backward", real)
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert same_weights(out, reference) and _epochs(out) == _epochs(reference)


def test_a_signal_while_the_best_model_is_written_ends_that_epoch_first(
    tmp_path, monkeypatch, capsys, reference
):
    """Before, the held signal was raised inside the epoch's end: the checkpoint had the new
    best and the resumed run counted the same epoch as not improved."""
    out = tmp_path / "run"
    real = io.atomic_write
    sent = []

    def write(path, data):
        if str(path).endswith("model.ff") and not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)  # waits: a file is being written
        return real(path, data)

    monkeypatch.setattr(io, "atomic_write", write)
    result = train(CFG, out, progress=False, echo=False)
    assert result["status"] == "interrupted" and result["epochs"] == 1  # the epoch completed
    monkeypatch.setattr(io, "atomic_write", real)
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert same_weights(out, reference) and _epochs(out) == _epochs(reference)


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys, reference
):
    out = tmp_path / "run"
    real = trainer_module.Trainer._forward_backward

    def loss(self, xb, cb, rng):
        if self.global_step == 4:  # (the first epoch's checkpoint holds step 3)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, xb, cb, rng)

    monkeypatch.setattr(trainer_module.Trainer, "_forward_backward", loss)
    result = train(CFG, out, progress=False, echo=True)
    printed = capsys.readouterr().out
    assert result["status"] == "interrupted" and "stopped at once by a second signal" in printed
    meta, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)  # the last whole checkpoint
    monkeypatch.setattr(trainer_module.Trainer, "_forward_backward", real)
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert same_weights(out, reference) and _epochs(out) == _epochs(reference)


def _records(run: Path) -> list:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in recs]


def test_a_crash_after_resuming_from_an_epochs_last_step_leaves_no_second_epoch_record(
    tmp_path, monkeypatch, capsys, reference
):
    """Interrupted on an epoch's last step (its checkpoint has that epoch's step, its
    validation still to do), resumed, and killed after the epoch's record but before its
    checkpoint: the next resume drops that record (before, it was kept, and the epoch logged
    twice: "epochs run 4 of 3")."""
    out = tmp_path / "run"

    def interrupt(trainer):
        if trainer.global_step == 6:  # the last step of epoch 2 (3 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)

    result = train(CFG, out, progress=False, echo=False, callback=interrupt)
    assert result["status"] == "interrupted" and result["steps"] == 6
    meta, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"], meta["global_step"]) == (1, 3, 6)

    def full(self):
        raise OSError(errno.ENOSPC, "cannot write checkpoint.safetensors: No space left")

    monkeypatch.setattr(trainer_module.Trainer, "save_checkpoint", full)
    with pytest.raises(OSError):
        train({}, out, resume=True, progress=False, echo=False)
    assert [e for e, _, _ in _epochs(out)] == [1, 2]  # epoch 2's record, no checkpoint
    monkeypatch.undo()
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert same_weights(out, reference) and _records(out) == _records(reference)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_failed_metrics_append_names_the_file_and_leaves_no_partial_line(
    tmp_path, capsys, monkeypatch
):
    """A file-size limit (or a full disk) in the middle of a record: before, the error was
    "File too large" naming no file, and metrics.jsonl ended in half a record."""
    out = tmp_path / "run"
    real, writes = os.write, {"n": 0}

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            writes["n"] += 1
            if writes["n"] == 5:  # half the record goes in, then the limit is reached
                real(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.EFBIG, "File too large")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CFG))
    rc, _, err = cli(capsys, "train", "--config", cfg, "--out", out, "--no-progress", "--quiet")
    assert rc == 1 and len(_errors(err)) == 1, err
    assert f"cannot write {out / 'metrics.jsonl'}: File too large" in err, err
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 4, text
    assert all(json.loads(line) for line in text.splitlines())


class _FailingStdout:
    """A standard output that fails from the first line holding ``after`` on (no descriptor)."""

    def __init__(self, error: OSError, after: str = ""):
        self.error, self.after, self.failed, self.text = error, after, False, []

    def write(self, text):
        if self.failed or self.after in text:
            self.failed = True
            raise self.error
        self.text.append(text)
        return len(text)

    def flush(self):
        if self.failed:
            raise self.error

    def isatty(self):
        return False


@pytest.mark.parametrize(
    "error",
    [BrokenPipeError(errno.EPIPE, "Broken pipe"), OSError(errno.ENOSPC, "No space left on device")],
)
def test_a_lost_standard_output_stops_training_with_a_checkpoint(
    tmp_path, capsys, monkeypatch, reference, error
):
    """`train | head -3` (the reader gone) or `train > log` on a full disk: before, training
    ended silently (exit 141, no interrupt save) or with "No space left on device" naming
    no file. Now it stops as for SIGHUP, saving a checkpoint, and says it was stdout."""
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CFG))
    monkeypatch.setattr(sys, "stdout", _FailingStdout(error, after="epoch 2/"))
    rc, _, err = cli(capsys, "train", "--config", cfg, "--out", out, "--no-progress")
    reason = error.strerror
    assert rc == 130, err
    assert f"flowforge: cannot write to standard output: {reason}; interrupted at" in err, err
    assert "checkpoint saved" in err and "Traceback" not in err, err
    meta, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == (2, 0)  # epoch 2 finished and saved
    monkeypatch.undo()
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert same_weights(out, reference) and _epochs(out) == _epochs(reference)


def test_a_full_standard_output_is_named_as_such(tmp_path, capsys, monkeypatch):
    out = tiny_moons_run(capsys, tmp_path / "run")
    monkeypatch.setattr(sys, "stdout", _FailingStdout(OSError(errno.ENOSPC, "No space left")))
    rc, _, err = cli(capsys, "eval", out)
    assert rc == 1 and err == "flowforge: error: cannot write to standard output: No space left\n"


TERMINATED = textwrap.dedent(
    """
    import os, signal, sys
    import flowforge.io as io
    from flowforge.workbench.cli import main
    real = os.fsync
    def fsync(fd):  # SIGTERM (timeout, a batch scheduler) while the output is being written
        if sys.argv[1] in os.readlink(f"/proc/self/fd/{fd}"):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(fd)
    io.os.fsync = fsync
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize("command", ["sample", "eval --scores", "report"])
def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path, capsys, command):
    """Before, SIGTERM killed sample, eval --scores and report at once, leaving their
    temporary files (.s.npy.XXXXXXXX.tmp in the user's folder, .report-XXXXXXXX.tmp/ in the
    run) for good."""
    run = tiny_moons_run(capsys, tmp_path / "run")
    dest = tmp_path / "dest"
    dest.mkdir()
    args, name = {
        "sample": (["sample", run, "-n", 5, "--out", dest / "s.npy"], ".s.npy."),
        "eval --scores": (["eval", run, "--scores", dest / "sc.csv"], ".sc.csv."),
        "report": (["report", run], "report.html"),
    }[command]
    r = subprocess.run([sys.executable, "-c", TERMINATED, name, *map(str, args)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 130 and r.stderr.strip() == "flowforge: interrupted", r.stderr
    assert not [p.name for p in [*dest.iterdir(), *run.iterdir()] if p.name.endswith(".tmp")]
    assert not (dest / "s.npy").exists() and not (dest / "sc.csv").exists()


def test_report_removes_a_killed_reports_leftovers_and_nothing_else(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    ours = [".report-abcd_123.tmp", f".report-{dead}-x1y2z3w4.tmp"]
    for name in ours:
        (run / name).mkdir()
        (run / name / "curves.png").write_bytes(b"a killed report's figure")
        (run / name / "report.html").write_text("a killed report's page")
    (run / ".report.html.q9w8e7r6.tmp").write_text("a killed report's page")
    theirs = [".report-notes.tmp", ".report.html.backup.tmp"]
    for name in theirs:
        (run / name).write_text("the user's own")
    (run / ".report-mine1234.tmp").mkdir()
    (run / ".report-mine1234.tmp" / "notes.txt").write_text("the user's own")
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    left = sorted(p.name for p in run.iterdir() if p.name.startswith(".report"))
    assert left == sorted([*theirs, ".report-mine1234.tmp"])
    assert (run / ".report-mine1234.tmp" / "notes.txt").is_file()


SWALLOWED = textwrap.dedent(
    """
    import os, signal, sys, time
    from flowforge.workbench import cli
    kind = sys.argv[1]
    def swallowed():  # a dependency that catches the interrupt, half imported (numpy in torch)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass
    def command(args):
        swallowed()
        if kind == "whole":  # (swallowed without a trace: the command ran on to its end)
            return 0
        if kind == "import":
            raise ImportError("cannot load module more than once per process")
        raise AttributeError("module 'numpy' has no attribute 'multiply'")
    def parser():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the command starts
        time.sleep(5)
    cli.cmd_list = command
    if kind == "start":
        cli.make_parser = parser
    if kind == "exit":  # the command, at its end: a late Ctrl-C cannot cut its exit short
        cli.cmd_list = lambda args: 0
        sys.argv = ["flowforge", "list"]
        status = cli.command()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        sys.exit(status)
    sys.exit(cli.main(["list"]))
    """
)


@pytest.mark.parametrize("kind", ["start", "import", "attribute", "whole"])
def test_ctrl_c_during_start_up_is_an_interrupt(kind):
    """Before: a KeyboardInterrupt traceback (start-up was outside main's handling), a raw
    ImportError traceback, "internal error: AttributeError: module 'numpy' ...", or (an
    interrupt swallowed whole, as torch's import of numpy did) the command ran to its end and
    exited 0."""
    r = subprocess.run([sys.executable, "-c", SWALLOWED, kind], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 130 and r.stderr == "flowforge: interrupted\n", r.stderr[-2000:]


def test_a_late_ctrl_c_does_not_cut_the_commands_exit_short():
    # (an audit) a second Ctrl-C while torch cleaned up at exit printed "Exception ignored
    # in atexit callback ... KeyboardInterrupt", or ended a finished run by the signal
    r = subprocess.run([sys.executable, "-c", SWALLOWED, "exit"], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]


def test_the_resume_hint_after_an_interrupt_is_shell_quoted(tmp_path, capsys, monkeypatch):
    import shlex

    out = tmp_path / "my run"
    real = trainer_module.Trainer._forward_backward

    def loss(self, xb, cb, rng):
        if self.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, xb, cb, rng)

    monkeypatch.setattr(trainer_module.Trainer, "_forward_backward", loss)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CFG))
    rc, _, err = cli(capsys, "train", "--config", cfg, "--out", out, "--no-progress", "--quiet")
    assert rc == 130
    hint = err.strip().splitlines()[-1].split("resume with: ")[1]
    assert shlex.split(hint) == ["flowforge", "train", "--out", str(out), "--resume"], err


def test_reports_of_other_machines_and_user_figures_stay(tmp_path, capsys):
    # (a review of the day's change): a temporary folder named by this machine's pid rules
    # removed another machine's live report on a shared folder, and a user's
    # report/curves.20240101.png was taken for one report's copy of a figure
    from flowforge.workbench.runs import _host_tag

    run = tiny_moons_run(capsys, tmp_path / "run")
    other = "0" * 6 if _host_tag() != "0" * 6 else "1" * 6
    live_elsewhere = run / f".report-h{other}-1-x1y2z3w4.tmp"
    live_elsewhere.mkdir()
    (live_elsewhere / "curves.png").write_bytes(b"another machine's report at work")
    (run / "report").mkdir()
    mine = run / "report" / "curves.20240101.png"
    mine.write_bytes(b"the user's own figure")
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    assert (live_elsewhere / "curves.png").is_file() and mine.is_file()
    assert main(["train", "--out", str(run), "--overwrite", "--model", "realnvp", "--data",
                 "moons", "--epochs", "1", "--limit", "64", "--no-progress", "--quiet",
                 "--model-kwargs", '{"layers": 1, "hidden": [4]}']) == 0  # fmt: skip
    assert mine.is_file()


def test_a_command_without_standard_output_runs_as_before(tmp_path):
    # stdout closed (`>&-`, pythonw): Python has none, and every command failed with an
    # AttributeError of the stdout guard; it trains, with nothing to print to
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flowforge", "train", "--model", "realnvp", "--data", "moons",
           "--out", str(out), "--epochs", "1", "--limit", "64", "--no-progress",
           "--model-kwargs", '{"layers": 1, "hidden": [4]}']  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       env=env, pass_fds=(), preexec_fn=lambda: os.close(1))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert (out / "model.ff").is_file() and "Error" not in p.stderr
