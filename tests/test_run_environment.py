"""What a run folder records of the setup it was trained in (``resolved.environment``), the
warning a resume or a replay in another setup gets, and a replay of a run's ``config.json``
(``train --config RUN/config.json``): refused on data other than the run recorded, built from
the model arguments the run recorded (an audit's findings F1 and F2)."""

from __future__ import annotations

import html
import json
import os
import signal
from pathlib import Path

import numpy as np
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge import codec, models
from flowforge.workbench import build
from flowforge.workbench.runner import train
from flowforge.workbench.runs import (
    describe_environment,
    environment_warning,
    run_environment,
    write_json,
)

TINY = ["--model", "realnvp", "--model-kwargs", '{"layers": 1, "hidden": [8]}',
        "--no-progress", "--quiet"]  # fmt: skip
SMALL = {
    "model": {"name": "realnvp", "layers": 1, "hidden": [8]},
    "data": {"name": "moons", "limit": 128},
    "train": {"epochs": 2, "batch_size": 32, "tensorboard": False},
}


def moons_run(capsys, out: Path, *extra) -> Path:
    rc, _, err = cli(capsys, "train", *TINY, "--data", "moons", "--limit", 128, "--epochs", 1,
                     "--out", out, *extra)  # fmt: skip
    assert rc == 0, err
    return out


def table(path: Path) -> Path:
    np.savetxt(path, np.random.default_rng(0).normal(size=(200, 2)), delimiter=",")
    return path


def config_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def interrupted(out: Path, at: int = 5) -> Path:
    def stop(t):
        if t.global_step == at:
            os.kill(os.getpid(), signal.SIGINT)

    assert train(SMALL, out, progress=False, echo=False, callback=stop)["status"] == "interrupted"
    return out


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if "bit-identical" in line]


def test_a_run_records_its_environment(tmp_path, capsys):
    run = moons_run(capsys, tmp_path / "run")
    env = config_of(run)["resolved"]["environment"]
    assert env["flowforge"] == ff.__version__ and env["torch"] == torch.__version__
    assert env["numpy"] == np.__version__ and env["python"].count(".") == 2
    assert "scikit-learn" in env
    assert env["threads"] == torch.get_num_threads() and env["device"] == "cpu"
    assert env["kernels"] == list(codec.kernels())
    rc, out, err = cli(capsys, "eval", run, "--json")
    assert rc == 0, err
    said = json.loads(out)["environment"]
    assert said["run"] == env and said["eval"] == run_environment("cpu")
    line = describe_environment(env)
    assert f"torch {torch.__version__}" in line and f"kernels {env['kernels'][0]}" in line
    rc, _, err = cli(capsys, "report", run)
    assert rc == 0, err
    assert f"<th>trained with</th><td>{html.escape(line)}</td>" in (run / "report.html").read_text()


def test_the_warning_names_what_differs_and_how_to_match_it():
    now = run_environment("cpu")
    assert environment_warning(now, now, "x") is None
    assert environment_warning(None, now, "x") is None  # a run from before: nothing to say
    other = {**now, "threads": now["threads"] + 1, "kernels": ["AVX2", "AVX2"], "torch": "1.0"}
    line = environment_warning(other, now, "the recorded run")
    assert len(line.splitlines()) == 1 and "bit-identical to the recorded run" in line
    assert f"OMP_NUM_THREADS={now['threads'] + 1}" in line
    assert "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2" in line and "torch 1.0" in line
    # MKL unset where it names no branch (an AMD EPYC with AVX-512): an empty MKL_CBWR selects it
    unset = {**now, "kernels": ["AVX512", "UNSET"]}
    line = environment_warning(unset, {**now, "kernels": ["AVX512", "AUTO"]}, "x")
    assert "run with ATEN_CPU_CAPABILITY=avx512 MKL_CBWR=''" in line
    before = {**now, "kernels": ["AVX512", "2"]}  # (the name of either mode before 2026-12-07)
    assert environment_warning(before, {**now, "kernels": ["AVX512", "UNSET"]}, "x") is None
    # a config.json is data: what flowforge never writes is never echoed to a terminal
    forged = {**now, "torch": "2.0\nflowforge: forged\x1b[31m", "threads": 10**30,
              "kernels": ["A" * 100_000, "x"]}  # fmt: skip
    assert environment_warning(forged, now, "x") is None
    said = describe_environment(forged)
    assert "forged" not in said and "\x1b" not in said and "thread" not in said and len(said) < 300


def test_a_replay_is_bit_for_bit_and_refused_on_edited_data(tmp_path, capsys):
    data = table(tmp_path / "t.csv")
    a = tmp_path / "a"
    rc, _, err = cli(capsys, "train", *TINY, "--data", data, "--epochs", 1, "--out", a)
    assert rc == 0, err
    rc, out, err = cli(capsys, "train", "--config", a / "config.json", "--out", tmp_path / "b",
                       "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert not warnings_in(out)
    assert (a / "model.ff").read_bytes() == (tmp_path / "b" / "model.ff").read_bytes()
    lines = data.read_text().splitlines()
    first = lines[5].split(",")
    first[1] = repr(float(first[1]) + 1.0)
    lines[5] = ",".join(first)
    data.write_text("\n".join(lines) + "\n")  # one value edited since the run
    rc, _, err = cli(capsys, "train", "--config", a / "config.json", "--out", tmp_path / "c",
                     "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "cannot replay", "not the data it was trained on", "--data")
    assert not (tmp_path / "c").exists()
    # the way out: the data named on the command line, a new run on it
    rc, out, err = cli(capsys, "train", "--config", a / "config.json", "--data", data,
                       "--out", tmp_path / "c", "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert "a new run on it, not a replay" in out
    new = config_of(tmp_path / "c")["resolved"]["data_fingerprint"]
    assert new != config_of(a)["resolved"]["data_fingerprint"]
    # from Python, the same
    rc = train(config_of(a), tmp_path / "d", progress=False, echo=False, new_data=True)
    assert rc["status"] == "finished"


def test_a_replay_with_edited_training_options_works(tmp_path, capsys):
    run = moons_run(capsys, tmp_path / "run")
    cfg = config_of(run)
    cfg["train"]["epochs"] = 2
    copy = tmp_path / "more.json"
    copy.write_text(json.dumps(cfg))
    rc, out, err = cli(capsys, "train", "--config", copy, "--out", tmp_path / "more",
                       "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert not warnings_in(out)
    again = config_of(tmp_path / "more")
    assert again["train"]["epochs"] == 2 and "environment" in again["resolved"]
    epochs = [json.loads(r) for r in (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["type"] == "epoch"] == [1, 2]
    # a copy whose model arguments are edited gets that model
    cfg["model"]["kwargs"]["hidden"] = [16]
    copy.write_text(json.dumps(cfg))
    rc, _, err = cli(capsys, "train", "--config", copy, "--out", tmp_path / "wider",
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert config_of(tmp_path / "wider")["resolved"]["flow_config"]["kwargs"]["hidden"] == [16]


def test_a_replay_under_another_sizing_rule_builds_the_recorded_model(
    tmp_path, capsys, monkeypatch
):
    a = tmp_path / "a"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--limit", 128,
                     "--epochs", 1, "--out", a, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    recorded = config_of(a)["resolved"]
    assert recorded["sizing"]  # the run was sized to its data
    rule = build.size_rule
    monkeypatch.setattr(build, "size_rule", lambda d, n, im: tuple(2 * v for v in rule(d, n, im)))
    fresh = train(config_of(a) | {"resolved": None}, tmp_path / "fresh", progress=False, echo=False)
    assert fresh["parameters"] != recorded["parameters"]  # a new run follows the new rule
    rc, _, err = cli(capsys, "train", "--config", a / "config.json", "--out", tmp_path / "b",
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    replayed = config_of(tmp_path / "b")["resolved"]
    assert replayed["parameters"] == recorded["parameters"]
    assert replayed["flow_config"] == recorded["flow_config"]
    assert replayed["sizing"] == recorded["sizing"]
    assert (a / "model.ff").read_bytes() == (tmp_path / "b" / "model.ff").read_bytes()


def test_a_model_this_flowforge_builds_otherwise_is_refused(tmp_path, capsys, monkeypatch):
    a = moons_run(capsys, tmp_path / "a")
    real = models.build

    def wider(name, **kwargs):  # a later builder: the same arguments, another network
        flow = real(name, **{**kwargs, "hidden": [16]})
        flow.config["kwargs"]["hidden"] = kwargs["hidden"]
        return flow

    monkeypatch.setattr(models, "build", wider)
    rc, _, err = cli(capsys, "train", "--config", a / "config.json", "--out", tmp_path / "b",
                     "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "cannot replay", "builds another model", "parameters")
    assert not (tmp_path / "b").exists()


def test_a_resume_under_another_thread_count_warns_once(tmp_path, capsys, monkeypatch):
    same, other = interrupted(tmp_path / "same"), interrupted(tmp_path / "other")
    threads = config_of(same)["resolved"]["environment"]["threads"]
    rc, out, err = cli(capsys, "train", "--out", same, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert not warnings_in(out + err)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    rc, out, err = cli(capsys, "train", "--out", other, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    said = warnings_in(out + err)
    assert len(said) == 1, out + err
    assert "an uninterrupted run on the recorded setup" in said[0]
    assert f"OMP_NUM_THREADS={threads}" in said[0]
    # the same run, now finished, resumed again: nothing is trained, so nothing is said
    rc, out, err = cli(capsys, "train", "--out", other, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert "nothing to train" in out + err and not warnings_in(out + err), out + err
    # a replay under it: the same warning, about the recorded run
    rc, out, err = cli(capsys, "train", "--config", same / "config.json", "--out",
                       tmp_path / "replay", "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    said = warnings_in(out + err)
    assert len(said) == 1 and "the recorded run" in said[0]


def test_a_run_from_before_the_environment_was_recorded_is_quiet(tmp_path, capsys, monkeypatch):
    run = interrupted(tmp_path / "old")
    cfg = config_of(run)
    del cfg["resolved"]["environment"]
    write_json(run / "config.json", cfg)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    rc, out, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err
    assert not warnings_in(out + err)
    rc, out, err = cli(capsys, "eval", run, "--json")
    assert rc == 0, err
    assert json.loads(out)["environment"]["run"] is None
    rc, out, err = cli(capsys, "train", "--config", run / "config.json", "--out",
                       tmp_path / "replay", "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert not warnings_in(out + err)
    assert config_of(tmp_path / "replay")["resolved"]["environment"]["threads"] == 7
    assert describe_environment(None) == ""


def test_a_resume_under_another_default_dtype_warns(tmp_path, capsys, monkeypatch):
    """A notebook audit: torch.set_default_dtype(torch.float64) in a notebook, then a resume of
    a run started under float32, mixed the dtypes and was no longer bit-exact without a word."""
    from flowforge.workbench.runs import describe_environment, environment_warning

    run = interrupted(tmp_path / "run")
    env = config_of(run)["resolved"]["environment"]
    assert env["default_dtype"] == "float32"
    now = {**env, "default_dtype": "float64"}
    line = environment_warning(env, now, "an uninterrupted run")
    assert "torch's default dtype float32, here float64" in line
    assert "torch.set_default_dtype(torch.float32)" in line and "\n" not in line
    assert "default dtype float64" in describe_environment(now)
    assert "default dtype" not in describe_environment(env)
    monkeypatch.setattr(torch, "get_default_dtype", lambda: torch.float64)
    rc, out, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    said = warnings_in(out + err)
    assert len(said) == 1 and "default dtype float32, here float64" in said[0], out + err


def test_another_flowforge_code_is_said_on_resume_and_replay():
    # the version stayed 0.1.0 while the splines' last digits changed (2026-12-05/06): a replay
    # of an older NSF run drifted (1.3180 against 1.3322) and nothing said why; the package's
    # code hash is recorded and compared since 2026-12-07
    now = run_environment("cpu")
    assert len(now["source"]) == 12 and now["source"] == run_environment("cpu")["source"]
    assert environment_warning(now, now, "x") is None
    line = environment_warning({**now, "source": "0123456789ab"}, now, "the recorded run")
    assert "flowforge's code 0123456789ab, here " + now["source"] in line
    assert "may not be bit-identical" in line
    both = environment_warning({**now, "source": "0123456789ab", "torch": "1.0"}, now, "x")
    assert "will not be bit-identical" in both
    assert f"(code {now['source']})" in describe_environment(now)
    # a run from before it was recorded: nothing to compare
    old = {k: v for k, v in now.items() if k != "source"}
    assert environment_warning(old, now, "x") is None
