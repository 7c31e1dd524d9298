"""flowforge inside a pipeline (an audit of an engineer automating it, 2026-12-07;
docs/workbench.md "Where output goes"): results on standard output, every warning on
standard error as one `flowforge: warning:` line, machine-readable outputs that parse as
documented, and mistakes a script makes refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert "flowforge: warning: column(s) c hold only integer values that repeat" in err
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


@pytest.mark.parametrize("model, kept", [(None, True), ("realnvp", True), (" RealNVP", True),
                                          ("glow", False)])  # fmt: skip
def test_demo_with_its_default_model_named_keeps_the_demos_settings(
    tmp_path, capsys, monkeypatch, model, kept
):
    # (a reference audit) --model realnvp, the default --help names, dropped the demo's
    # hidden 64 and actnorm: 221,122 parameters instead of 851,856, not the README's number
    from flowforge.workbench import runner
    from flowforge.workbench.cli import DEMO

    seen = []

    def held(cfg, out, **kw):
        seen.append(cfg)
        raise RunError("stop here")

    monkeypatch.setattr(runner, "train", held)
    extra = () if model is None else ("--model", model)
    cli(capsys, "demo", "--out", tmp_path / "demo", "--no-progress", *extra)
    assert (seen[0]["model"] == DEMO["model"] and seen[0]["layout"] == "image") == kept


def test_a_nan_flag_is_refused_for_itself_not_as_a_contradiction(tmp_path, capsys):
    # (a reference audit) --lr nan with any --set was "--set X contradicts --lr": nan != nan
    for flag in ("--lr", "--grad-clip"):
        rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out",
                         tmp_path / "r", flag, "nan", "--set", "train.log_every=1")  # fmt: skip
        one_line_error(rc, err, f"train.{flag[2:].replace('-', '_')} must be a finite number")
        assert "contradicts" not in err


# -- --json on train, sample and report (asked for by the same engineer, 2026-12-08) -----------

MOONS = ["--model", "realnvp", "--data", "moons", "--model-kwargs",
         '{"layers": 1, "hidden": [4]}', "--limit", "64", "--no-progress"]  # fmt: skip


def one_json(out: str) -> dict:
    """Standard output is exactly one JSON document, on one line."""
    assert out.endswith("\n") and out.count("\n") == 1, out
    return json.loads(out)


def test_train_json_is_one_object_of_the_summary_facts(tmp_path, capsys):
    run = tmp_path / "r"
    # lr 1e-30 leaves the weights as they are: epoch 2 is no better, patience 1 stops it there
    rc, out, err = cli(capsys, "train", *MOONS, "--epochs", 3, "--patience", 1, "--lr", 1e-30,
                       "--out", run, "--json")  # fmt: skip
    assert rc == 0, err
    res = one_json(out)
    epochs = [r for r in read_metrics(run) if r["type"] == "epoch"]
    assert "epoch 1/3" in err and "early stop" in err  # (the epoch lines: on standard error)
    assert res["run"] == str(run.resolve()) and res["model"] == "realnvp"
    assert res["status"] == "early-stopped" and res["already_ended"] is False
    assert res["epochs"] == len(epochs) == 2 and res["max_epochs"] == 3
    assert res["steps"] == epochs[-1]["step"] and isinstance(res["steps"], int)
    assert res["best_epoch"] == 1 and res["best_val"] == epochs[0]["val_nll"]
    assert res["best_val_unit"] == "nats/example" and res["best_val_bits_per_dim"] is None
    assert isinstance(res["parameters"], int) and res["parameters"] > 0
    assert res["seconds"] > 0 and res["init_from"] is None
    assert res["files"] == {
        k: str(run.resolve() / f)
        for k, f in (("model", "model.ff"), ("checkpoint", "checkpoint.safetensors"),
                     ("metrics", "metrics.jsonl"), ("config", "config.json"))
    }  # fmt: skip
    assert res["notes"] and res["notes"][0].startswith("the best epoch is the first")
    # (a sweep audit) what tells this run's numbers from another's: its seed, its data's seed
    # and options, the splits' hash; the same in eval's and report's JSON
    cfg = json.loads((run / "config.json").read_text())
    ident = {"run_seed": cfg["seed"], "data_seed": cfg["data"]["seed"],
             "data_options": cfg["data"]["options"],
             "data_sha256": cfg["resolved"]["data_fingerprint"]["sha256"]}  # fmt: skip
    assert {k: res[k] for k in ident} == ident and len(ident["data_sha256"]) == 64
    rc, out, err = cli(capsys, "eval", run, "--json", "--seed", 5)
    assert rc == 0, err
    scored = one_json(out)
    assert {k: scored[k] for k in ident} == ident and scored["seed"] == 5
    rc, out, err = cli(capsys, "report", run, "--json")
    assert rc == 0, err
    assert {k: one_json(out)[k] for k in ident} == ident
    # a resumed run that had ended: nothing trained, the same facts
    rc, out, _ = cli(capsys, "train", "--out", run, "--resume", "--json", "--quiet")
    again = one_json(out)
    assert rc == 0 and again["already_ended"] is True
    assert {k: again[k] for k in ("status", "steps", "best_val")} == {
        k: res[k] for k in ("status", "steps", "best_val")
    }
    rc, out, _ = cli(capsys, "train", "--init-from", run, "--out", tmp_path / "r2", "--epochs",
                     1, "--json", "--quiet")  # fmt: skip
    started = one_json(out)
    assert rc == 0 and started["status"] == "finished" and started["steps"] == 1
    assert started["init_from"]["path"] == str(run.resolve())


def test_sample_json_names_the_file_it_wrote(table_run, capsys):
    d = table_run
    rc, out, err = cli(capsys, "sample", d / "r", "-n", 7, "--temperature", 0.8, "--seed", 3,
                       "--out", d / "s.npy", "--json")  # fmt: skip
    assert rc == 0, err
    res = one_json(out)
    assert res["out"] == str((d / "s.npy").resolve()) and res["run"] == str((d / "r").resolve())
    assert res["samples"] == 7 and res["shape"] == list(np.load(d / "s.npy").shape) == [7, 3]
    assert res["temperature"] == 0.8 and res["seed"] == 3 and res["model"] == "maf"
    assert res["ode"] is None and res["context"] is None and res["seconds"] > 0
    assert all(line.startswith("flowforge: warning: ") for line in err.splitlines())
    # the file is what sample writes without --json
    for args in ((), ("--json",)):
        rc, _, _ = cli(capsys, "sample", d / "r", "-n", 5, "--out", d / f"s{len(args)}.csv", *args)
        assert rc == 0
    # (equal to float32's last digits: an autoregressive inverse picks its fastest path by
    # timing, and the paths round differently)
    a, b = (np.loadtxt(d / f"s{i}.csv", delimiter=",", skiprows=1) for i in (0, 1))
    assert (d / "s0.csv").read_text().splitlines()[0] == (d / "s1.csv").read_text().splitlines()[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_report_json_has_the_pages_headline(table_run, capsys):
    d = table_run
    rc, out, err = cli(capsys, "report", d / "r", "--json")
    assert rc == 0, err
    res = one_json(out)
    page = (d / "r" / "report.html").read_text()
    assert res["page"] == str((d / "r" / "report.html").resolve())
    assert res["figures"] and all(Path(f["path"]).is_file() for f in res["figures"])
    assert res["status"] == "finished" and res["epochs"] == 2 and res["max_epochs"] == 2
    assert set(res["scores"]) == {"val", "test"}
    for s in res["scores"].values():  # the figures the page quotes
        assert f"{s['nll']:.4f} +- {s['nll_se']:.4f}" in page and s["examples"] > 0
    assert f"{res['best_epoch']} ({res['best_val']:.4f})" in page
    assert res["best_val_unit"] == "nats/example"
    assert any("integer" in w for w in res["warnings"])  # (the data's warning, as its row)


def test_json_errors_leave_standard_output_empty(table_run, capsys):
    d = table_run
    (d / "taken.csv").write_text("")
    for args, needle in (
        (("train", "--model", "maf", "--data", d / "t.csv", "--set", "train.lr=0.5", "--set",
          "train.lr=1e-3", "--out", d / "rx"), "is given twice"),
        (("train", "--model", "realnvp", "--data", d / "t.csv", "--out", d / "r"),
         "already holds a different run"),  # (refused in training: its lines go to stderr)
        (("sample", d / "r", "--out", d / "taken.csv"), "exists"),
        (("report", d / "r-typo"), "r-typo"),
    ):  # fmt: skip
        rc, out, err = cli(capsys, *args, "--json")
        one_line_error(rc, err, needle)
        assert out == ""


def test_json_has_null_for_a_number_that_is_not_finite(capsys):
    from flowforge.workbench.cli import _print_json

    _print_json({"best_val": float("inf"), "nll": [float("nan"), 1.5]})
    assert json.loads(capsys.readouterr().out) == {"best_val": None, "nll": [None, 1.5]}


def test_threads_are_set_for_the_command_and_recorded(tmp_path, capsys):
    # an audit: torch's default of one thread per core made small runs 10x slower on a shared
    # machine, and only compress had a --threads
    import torch

    before = torch.get_num_threads()
    try:
        rc, out, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--limit",
                           64, "--epochs", 1, "--threads", 2, "--out", tmp_path / "r", "--quiet",
                           "--json")  # fmt: skip
        assert rc == 0, err
        cfg = json.loads((tmp_path / "r" / "config.json").read_text())
        assert cfg["resolved"]["environment"]["threads"] == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        cli(capsys, "eval", tmp_path / "r", "--threads", 0)
    assert "--threads: expected an integer in [1, 1024], got '0'" in capsys.readouterr().err


def test_manifold_epochs_on_another_objective_is_said(tmp_path, capsys):
    # (a reference audit) it was taken and did nothing, without a word; a warning, not a
    # refusal, so that a run that recorded it still resumes (a review)
    rc, _, err = cli(capsys, "train", *MOONS, "--epochs", 1, "--out", tmp_path / "r", "--set",
                     "train.manifold_epochs=3")  # fmt: skip
    assert rc == 0, err
    assert "train.manifold_epochs = 3 applies to the M-flow objectives only" in err


def test_overwrite_says_which_files_of_the_replaced_run_it_keeps(tmp_path, capsys):
    # (a sweep audit) a run retrained with --overwrite sat beside the old model's samples
    # and scores, with no word (the user's files stay, as they must)
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", *MOONS, "--epochs", 1, "--out", run, "--quiet")
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", run, "-n", 10, "--out", run / "samples.csv")
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", *MOONS, "--epochs", 1, "--lr", 1e-2, "--out", run,
                     "--overwrite", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert "keeps 1 entry that is not the run's (samples.csv): if made from the model" in err
    assert (run / "samples.csv").is_file()
