"""``flowforge eval --device`` and ``flowforge sample --device`` on a machine without a GPU:
the CPU (named, or ``auto`` finding no GPU) gives what the default gives, and a GPU that is not
there, or a device that is no device, is one line before anything is loaded. The GPU itself is
tested in ``test_cuda.py`` (the device session)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_support import cli, one_line_error, tiny_moons_run

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from flowforge.workbench.cli import main

    out = tmp_path_factory.mktemp("dev") / "run"

    class _Quiet:  # (the module fixture has no capsys: main's output is not asserted here)
        def readouterr(self):
            return "", ""

    tiny_moons_run(_Quiet(), out)
    assert main(["eval", str(out), "--json"]) == 0
    return out


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_eval_and_sample_on_the_cpu_by_name_give_the_defaults_figures(
    run, tmp_path, capsys, device
):
    rc, out, err = cli(capsys, "eval", run, "--json")
    assert rc == 0, err
    rc, named, err = cli(capsys, "eval", run, "--json", "--device", device)
    assert rc == 0, err
    assert json.loads(named) == json.loads(out)
    rc, _, err = cli(capsys, "sample", run, "-n", 50, "--out", tmp_path / "a.npy")
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", run, "-n", 50, "--out", tmp_path / "b.npy", "--device",
                     device)  # fmt: skip
    assert rc == 0, err
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize("command", ["eval", "sample"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_that_is_not_there_is_one_line(run, tmp_path, capsys, command, device):
    extra = ["-n", 5, "--out", tmp_path / "s.npy"] if command == "sample" else []
    rc, _, err = cli(capsys, command, run, "--device", device, *extra)
    one_line_error(rc, err, f"--device is '{device}'", "no GPU")
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_device_that_is_no_device_is_refused_by_the_parser(run, tmp_path, capsys, command):
    extra = ["-n", 5, "--out", tmp_path / "s.npy"] if command == "sample" else []
    with pytest.raises(SystemExit) as e:
        cli(capsys, command, run, "--device", "gpu", *extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--device" in err and "cpu, cuda, cuda:N or auto" in err and "Traceback" not in err
