"""Data-parallel training: 2 CPU processes (gloo) follow the single-process trajectory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flowforge as ff

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
import wb_models  # noqa: E402,F401  (registers wbtest_actnorm, with an ActNorm first layer)

from flowforge.workbench.runner import train  # noqa: E402

CONFIG = {
    "seed": 5,
    "model": {"name": "wbtest_actnorm", "layers": 2, "hidden": [16]},
    "data": {"name": "moons", "n_train": 256, "n_val": 64, "n_test": 64},
    "train": {"epochs": 2, "batch_size": 64, "warmup_steps": 2, "lr": 0.01, "log_every": 1},
}


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_processes_match_one(tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(CONFIG))
    one, two = tmp_path / "one", tmp_path / "two"
    train(CONFIG, one, progress=False, echo=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(DATA / "wb_models.py"), "train", "--config", str(cfg_file), "--out", str(two),
           "--no-progress"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes" in r.stdout  # it really ran data-parallel
    env = json.loads((two / "config.json").read_text())["resolved"]["environment"]
    assert env["processes"] == 2  # (recorded: the last digits follow it)
    assert (
        json.loads((one / "config.json").read_text())["resolved"]["environment"]["processes"] == 1
    )
    s1, s2 = _records(one, "step"), _records(two, "step")
    assert len(s1) == len(s2) == 8  # rank 0 alone writes the metrics
    l1 = torch.tensor([r["loss"] for r in s1])
    l2 = torch.tensor([r["loss"] for r in s2])
    assert not torch.allclose(l1[0], l1[-1])  # it trained
    torch.testing.assert_close(l2, l1, rtol=1e-4, atol=1e-4)
    v1 = torch.tensor([r["val_nll"] for r in _records(one, "epoch")])
    v2 = torch.tensor([r["val_nll"] for r in _records(two, "epoch")])
    torch.testing.assert_close(v2, v1, rtol=1e-4, atol=1e-4)
    p1, p2 = ff.load(one).state_dict(), ff.load(two).state_dict()
    assert bool(p2["transform.layers.0.initialized"])
    # Adam divides by sqrt(v): parameters with near-zero gradients move by up to lr per step
    # whatever the float noise, so weights agree more loosely than the losses
    for k in p1:
        torch.testing.assert_close(p2[k], p1[k], rtol=1e-2, atol=5e-3, msg=k)


def test_the_process_group_follows_the_device_the_run_resolves(monkeypatch, tmp_path):
    """The backend is chosen from the run's device as it resolves: NCCL for ``cuda`` and for
    ``auto`` on a GPU machine, with the rank's GPU made current first; a resumed run's own
    device where the command sets none; gloo on the CPU."""
    import torch.distributed as dist

    from flowforge.workbench import distributed
    from flowforge.workbench.runner import _device_name

    run = tmp_path / "run"  # a run trained on cuda (as its config says), resumed without one
    assert train({**CONFIG, "train": {**CONFIG["train"], "epochs": 1}}, run, echo=False,
                 progress=False)["status"] == "finished"  # fmt: skip
    stored = json.loads((run / "config.json").read_text())
    stored["train"]["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(stored))
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    for name in ("cuda", "auto", "cpu"):
        assert distributed.init_distributed(name)
    cuda1 = torch.device("cuda", 1)
    assert calls == [cuda1, "nccl", cuda1, "nccl", "gloo"]
    assert _device_name({**CONFIG, "train": {"device": "auto"}}, tmp_path, False) == "auto"
    assert _device_name(CONFIG, tmp_path, False) == "cpu"  # (the default)
    assert _device_name({"train": {"device": "cuda"}}, tmp_path, False) == "cuda"  # (raw)
    assert _device_name({}, run, True) == "cuda"


def test_train_starts_the_process_group_for_the_resolved_device(monkeypatch, tmp_path):
    """``train`` passes the device the run resolves to (a resumed run's own ``auto``, not the
    command's empty section) to the process group's start; ``cuda:N`` under torchrun is
    refused in one line (every process would share that GPU)."""
    from flowforge.workbench import distributed, runner
    from flowforge.workbench.errors import WorkbenchError

    seen = []
    monkeypatch.setattr(runner, "init_distributed", lambda name: seen.append(name) or False)
    cfg = {**CONFIG, "train": {**CONFIG["train"], "epochs": 1, "device": "auto"}}
    run = tmp_path / "run"
    assert train(cfg, run, echo=False, progress=False)["status"] == "finished"
    train({}, run, resume=True, echo=False, progress=False)
    assert seen == ["auto", "auto"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(WorkbenchError, match="under torchrun"):
        distributed.device("cuda:1")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ranks_take_the_same_decisions_with_batch_norm(tmp_path):
    # a batch norm's running statistics differ between the ranks by the last step's batch, so
    # their validation NLLs did too: rank 0 stopped early while rank 1 trained on (a hang)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "flowforge", "train", "--model", "realnvp", "--model-kwargs",
           '{"layers": 2, "hidden": [16], "batch_norm": true}', "--data", "moons",
           "--set", "data.n_train=512", "--set", "data.n_val=200", "--epochs", "8",
           "--batch-size", "64", "--lr", "1e-6", "--set", "train.schedule=constant",
           "--warmup-steps", "0", "--patience", "2", "--no-progress",
           "--out", str(tmp_path / "bn")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]


def _two_processes_with(fault: str, run: Path, epochs: int = 1, quiet: bool = True):
    """A 2-process training of a small RealNVP on moons into ``run``, with ``fault`` on one
    process (``WBTEST_FAULT``, tests/data/wb_models.py); the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(DATA / "wb_models.py"), "train", "--model", "realnvp", "--model-kwargs",
           '{"layers": 1, "hidden": [8]}', "--data", "moons", "--set", "data.n_train=256",
           "--epochs", str(epochs), "--batch-size", "64", "--no-progress",
           *(["--quiet"] if quiet else []), "--out", str(run)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "WBTEST_FAULT": fault})  # fmt: skip


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_a_non_finite_loss_on_one_process_is_said_by_that_process(tmp_path):
    # every rank re-ran its own part of the batch and printed its own diagnosis: rank 0, first
    # and without a label, blamed an overflow in a part that was finite
    r = _two_processes_with("1:nan", tmp_path / "run")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("flowforge: error")]
    zero = [ln for ln in lines if ln.startswith("flowforge: error: ")]
    one = [ln for ln in lines if ln.startswith("flowforge: error (rank 1): ")]
    assert len(zero) == 1 and len(one) == 1, r.stderr[-3000:]
    assert "non-finite loss at epoch 1, step 3: on process (rank) 1 of 2" in zero[0]
    assert "this process's part of the batch was finite" in zero[0]
    assert "overflowed" not in zero[0]
    assert "non-finite loss at epoch 1, step 3" in one[0] and "on process (rank)" not in one[0]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_a_process_killed_is_said_by_rank_0_with_the_way_to_resume(tmp_path):
    # rank 0 said "flowforge: interrupted" (torchrun's SIGTERM) or an internal error of gloo
    run = tmp_path / "run"
    r = _two_processes_with("1:kill", run)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("flowforge: ")]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("flowforge: stopped: another process of this torchrun run ended")
    assert f"--out {run} --resume" in lines[0]


def test_the_number_of_processes_is_compared_on_a_replay():
    from flowforge.workbench.runs import describe_environment, environment_warning

    was = {"device": "cpu", "threads": 1, "processes": 2}
    now = {"device": "cpu", "threads": 1, "processes": 1, "kernels": ["AVX2", "AVX2"]}
    said = environment_warning(was, now, "the recorded run")
    assert "2 processes, here 1" in said and "torchrun --nproc_per_node=2" in said
    assert environment_warning(was, now, "a resume", processes=False) is None
    assert environment_warning({"device": "cpu", "threads": 1}, now, "x") is None  # (older)
    assert "2 processes (torchrun)" in describe_environment(was)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_a_stop_asked_on_one_process_ends_every_process_after_the_epoch(tmp_path):
    # the process that asked left its loop alone, and the others waited in a collective
    run = tmp_path / "run"
    r = _two_processes_with("1:stop", run, epochs=4, quiet=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped after epoch 1, as asked" in r.stdout
    assert len(_records(run, "epoch")) == 1


@pytest.mark.parametrize("name, value", [("WORLD_SIZE", "abc"), ("RANK", "abc"),
                                         ("LOCAL_RANK", "abc"), ("WORLD_SIZE", "0")])  # fmt: skip
def test_a_malformed_torchrun_variable_is_named(monkeypatch, capsys, name, value):
    # (a reference audit) "invalid literal for int() with base 10: 'abc'", naming no variable
    from flowforge.workbench.cli import main

    monkeypatch.setenv(name, value)
    assert main(["train", "--model", "realnvp", "--data", "moons", "--epochs", "1", "--out",
                 "unused", "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    least = 1 if name == "WORLD_SIZE" else 0  # (a count; a rank)
    assert f"the environment variable {name}={value!r} is not an integer >= {least}" in err
