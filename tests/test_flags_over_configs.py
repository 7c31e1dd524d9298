"""Flags over a config, and what a resume may change: a run's config.json with flags over it,
a flag against the same key in --model-kwargs or --data-kwargs, a resume on another device
(an audit of what the command line says of itself)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from cli_support import cli, one_line_error
from flowforge.workbench.runner import train

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = ["--no-progress", "--quiet"]
CFG = {"model": {"name": "realnvp", "layers": 2, "hidden": [8]},
       "data": {"name": "moons", "n_train": 256, "n_val": 64, "n_test": 64},
       "train": {"epochs": 2, "batch_size": 64, "tensorboard": False}}  # fmt: skip


def test_flags_override_a_runs_config_json(tmp_path, capsys):
    # (the file's model.kwargs.layers and the flag's model.layers were "given twice")
    a = tmp_path / "a"
    assert train(CFG, a, progress=False, echo=False)["status"] == "finished"
    rc, _, err = cli(capsys, "train", "--config", a / "config.json", "--out", tmp_path / "b",
                     "--model-kwargs", '{"layers": 3}', "--data-kwargs", '{"n_train": 128}',
                     "--epochs", "1", *QUIET)  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["model"]["kwargs"]["layers"] == 3 and cfg["data"]["options"]["n_train"] == 128
    rc, _, err = cli(capsys, "train", "--config", a / "config.json", "--out", tmp_path / "c",
                     "--set", "model.layers=1", "--epochs", "1", *QUIET)  # fmt: skip
    assert rc == 0, err
    assert (
        json.loads((tmp_path / "c" / "config.json").read_text())["model"]["kwargs"]["layers"] == 1
    )


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--limit", "50", "--data-kwargs", '{"limit": 60}'], "--data-kwargs gives limit = 60"),
        (["--base", "diag", "--model-kwargs", '{"base": "mixture"}'], "--model-kwargs gives base"),
    ],
)
def test_a_flag_against_the_same_key_in_the_kwargs_is_refused(tmp_path, capsys, flags, said):
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", *flags,
                     "--out", tmp_path / "r", *QUIET)  # fmt: skip
    one_line_error(rc, err, said, "give one of them")


def test_a_resume_may_change_where_it_runs(tmp_path, capsys):
    # (train.device and train.tensorboard were compared: a GPU run could not resume on a CPU,
    # nor --device auto on the CPU it ran on)
    out = tmp_path / "r"

    def stop(trainer):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = {**CFG, "train": {**CFG["train"], "epochs": 3, "device": "cpu"}}
    assert train(cfg, out, progress=False, echo=False, callback=stop)["status"] == "interrupted"
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--device", "auto",
                     "--set", "train.tensorboard=true", *QUIET)  # fmt: skip
    assert rc == 0, err


def test_a_flag_given_twice_takes_its_last_value(tmp_path, capsys):
    # (an appended override, as argparse's flags do everywhere; documented)
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--epochs", "2",
                     "--epochs", "1", "--data-kwargs", '{"n_train": 128}', "--out", tmp_path / "s",
                     *QUIET)  # fmt: skip
    assert rc == 0, err
    assert json.loads((tmp_path / "s" / "config.json").read_text())["train"]["epochs"] == 1


def test_another_model_over_a_config_takes_its_own_arguments(tmp_path, capsys):
    # (nsf was built with the config's RealNVP arguments, and glow refused them naming neither)
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name: realnvp\n  layers: 8\n  hidden: [32, 32]\ndata: moons\n")
    rc, _, err = cli(capsys, "train", "--config", config, "--model", "maf", "--epochs", "1",
                     "--data-kwargs", '{"n_train": 128}', "--out", tmp_path / "r",
                     "--no-progress")  # fmt: skip
    assert rc == 0 and "replaces the config's model realnvp" in err, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["kwargs"] == {}


def test_what_the_commands_say_of_themselves(tmp_path, capsys, monkeypatch):
    # --warmup-steps takes its own default; list names what a model needs or the workbench
    # refuses, the objectives and the targets; fit-target takes YAML arguments and records its
    # fit; eval --json gives the run's path absolute, as the other commands do
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "list")
    assert rc == 0 and "Python only: the workbench does not train or score it" in out
    assert "trains with --objective mflow or mflow-alternating only" in out
    assert "objectives (train --objective):" in out and "targets (fit-target --target):" in out
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--epochs", "1",
                     "--warmup-steps", "auto", "--data-kwargs", '{"n_train": 128}', "--out", "r",
                     *QUIET)  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", "r", "--json")
    assert rc == 0 and json.loads(out)["run"] == str((tmp_path / "r").resolve()), err
    rc, _, err = cli(capsys, "fit-target", "--target", "banana", "--steps", "20",
                     "--model-kwargs", "{layers: 2}", "--seed", "3", "--out", "vi",
                     "--quiet")  # fmt: skip
    assert rc == 0, err
    fit = json.loads((tmp_path / "vi" / "metrics.json").read_text())["fit"]
    assert (fit["target"], fit["model"], fit["layers"], fit["seed"]) == ("banana", "planar", 2, 3)


def test_a_resume_may_repeat_its_options_in_other_words(tmp_path, capsys, monkeypatch):
    # (./tab.csv for tab.csv, or [c] for c, were "config differs")
    import numpy as np

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    rows = np.c_[rng.normal(size=(300, 2)), rng.integers(0, 5, size=300)]
    np.savetxt("tab.csv", rows, delimiter=",", header="a,b,c", comments="", fmt="%.5f")

    def stop(trainer):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = {"model": {"name": "realnvp", "layers": 1, "hidden": [8]},
           "data": {"name": "tab.csv", "integers": "c"},
           "train": {"epochs": 2, "batch_size": 64, "tensorboard": False}}  # fmt: skip
    assert train(cfg, "r", progress=False, echo=False, callback=stop)["status"] == "interrupted"
    rc, _, err = cli(capsys, "train", "--out", "r", "--resume", "--data", "./tab.csv",
                     "--set", "data.integers=[c]", *QUIET)  # fmt: skip
    assert rc == 0, err
