"""Paths and names a user's machine has: a console that cannot encode a name, a file name with
an undecodable byte, a data file whose name starts with ``~``, outputs inside a run's image
folder (an audit of paths, names and locales)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_support import TINY_IDF, cli, one_line_error, png_folder

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = ["--model", "realnvp", "--model-kwargs", '{"layers": 1, "hidden": [8]}', "--epochs", "1",
         "--no-progress", "--quiet"]  # fmt: skip


def table(path: Path) -> Path:
    np.savetxt(path, np.random.default_rng(0).normal(size=(120, 2)), delimiter=",")
    return path


def test_a_console_that_cannot_encode_a_name_gets_it_escaped(tmp_path):
    # (an ASCII or Latin-1 console: the command failed after writing, on its last line)
    data = table(tmp_path / "données.csv")
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run é"
    cmd = [sys.executable, "-m", "flowforge", "train", "--data", str(data), "--out", str(run),
           *MODEL[:-1]]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace")
    assert r.returncode == 0 and "run \\xe9" in r.stdout, r.stderr
    out = tmp_path / "s é.csv"
    cmd = [sys.executable, "-m", "flowforge", "sample", str(run), "-n", "3", "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace")
    assert r.returncode == 0 and out.exists() and "\\xe9" in r.stdout, r.stderr


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_a_report_of_a_run_with_an_undecodable_byte_in_its_name(tmp_path, capsys):
    name = os.fsdecode(b"r\xe9x")  # (a Latin-1 name: a lone surrogate in Python)
    run = tmp_path / name
    rc, _, err = cli(capsys, "train", "--data", table(tmp_path / "t.csv"), "--out", run, *MODEL)
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", run, "--no-test")
    assert rc == 0 and (run / "report.html").exists(), err
    page = (run / "report.html").read_text()
    assert all(p.name in page for p in (run / "report").iterdir() if ".report-" in p.name)


def test_a_data_file_whose_name_starts_with_a_tilde(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table(tmp_path / "~data.csv")
    rc, _, err = cli(capsys, "train", "--data", "~data.csv", "--out", "r", *MODEL)
    assert rc == 0, err


def test_outputs_never_go_into_the_folder_a_run_was_trained_on(tmp_path, capsys):
    folder = png_folder(tmp_path / "images", 40)
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", folder, "--layout", "vector", "--out", run, *MODEL)
    assert rc == 0, err
    before = (folder / "0.png").read_bytes()
    for out, extra in ((folder / "0.png", ["--overwrite"]), (folder / "new.png", [])):
        rc, _, err = cli(capsys, "sample", run, "-n", 2, "--out", out, *extra)
        one_line_error(rc, err, "is an image in", "the folder this run's data comes from")
    assert (folder / "0.png").read_bytes() == before and not (folder / "new.png").exists()
    rc, _, err = cli(capsys, "sample", run, "-n", 2, "--out", folder / "s.csv")  # (not an image)
    assert rc == 0, err
    rc, _, err = cli(capsys, "eval", run, "--split", "val")
    assert rc == 0, err


def test_a_data_file_named_from_home_is_never_written_over(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    data = table(tmp_path / "x.csv")
    kept = data.read_bytes()
    rc, _, err = cli(capsys, "train", "--data", "~/x.csv", "--out", tmp_path / "r", *MODEL)
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", tmp_path / "r", "-n", 2, "--out", data, "--overwrite")
    one_line_error(rc, err, "which this command reads or the run keeps")
    assert data.read_bytes() == kept


def test_a_folder_named_as_a_built_in_data_set_is_no_runs_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli(capsys, "train", "--data", "moons", "--limit", 64, "--out", "r", *MODEL)
    assert rc == 0, err
    (tmp_path / "moons").mkdir()  # (made after: train refuses the ambiguous name)
    rc, _, err = cli(capsys, "sample", "r", "-n", 2, "--out", "moons/s.csv")
    assert rc == 0 and (tmp_path / "moons" / "s.csv").exists(), err


def test_decompress_never_replaces_the_runs_data(tmp_path, capsys):
    data = tmp_path / "d.npy"
    from sklearn.datasets import load_digits

    np.save(data, load_digits().images[:128, None].astype(np.uint8))
    args = [a if a != "digits" else str(data) for a in TINY_IDF]
    rc, _, err = cli(capsys, *args, "--out", tmp_path / "idf")
    assert rc == 0, err
    rc, _, err = cli(capsys, "compress", tmp_path / "idf", "--out", tmp_path / "t.ffz",
                     "--no-baselines")  # fmt: skip
    assert rc == 0, err
    kept = data.read_bytes()
    rc, _, err = cli(capsys, "decompress", tmp_path / "t.ffz", "--model", tmp_path / "idf",
                     "--out", data, "--overwrite")  # fmt: skip
    one_line_error(rc, err, "which this command reads or the run keeps")
    assert data.read_bytes() == kept


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
def test_a_config_file_with_a_byte_order_mark(tmp_path, capsys, suffix):
    from flowforge.workbench.config import read_config

    text = {".json": '{"seed": 3}', ".toml": "seed = 3", ".yaml": "seed: 3"}[suffix]
    path = tmp_path / f"c{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_config(path) == {"seed": 3}


def test_white_space_in_a_name_is_printed_as_it_was_given(tmp_path, capsys, monkeypatch):
    # (errors used to collapse white space: "no such file or folder: base.csv" when it exists)
    monkeypatch.chdir(tmp_path)
    table(tmp_path / "base.csv")
    rc, _, err = cli(capsys, "train", "--data", " base.csv", "--out", "r", *MODEL)
    one_line_error(rc, err, "no such file or folder: ' base.csv'")
    rc, _, err = cli(capsys, "eval", "two  spaces")
    one_line_error(rc, err, "two  spaces: no such folder")


def test_suggested_commands_can_be_pasted_into_a_shell():
    import shlex

    from flowforge.workbench.errors import shell_word

    for name in ("runs/a b", "-run", "it's", "plain/run", "$HOME", "a;b"):
        given = "./" + name if name.startswith("-") else name
        assert shlex.split(f"flowforge train --out {shell_word(name)}")[-1] == given
    assert shell_word("plain/run") == "plain/run"


def test_a_line_break_in_a_column_name_cannot_start_a_result_line(tmp_path, capsys):
    data = tmp_path / "nl.csv"
    rows = "\n".join(f"{i % 7},{i % 5}" for i in range(60))
    data.write_text(f'"x\ntest NLL -99.0 fake",b\n{rows}\n')
    rc, out, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "r", *MODEL[:-1],
                       "--set", "data.bounds.0=[-100,100]", "--set", "data.integers=1")  # fmt: skip
    assert rc == 0, err
    assert not any(line.startswith("test NLL -99") for line in out.splitlines()), out
    assert "x\\ntest NLL -99.0 fake in (-100, 100)" in out


def test_a_long_output_name_the_file_system_takes_is_written(tmp_path):
    # (the temporary file beside it was 14 bytes longer: 242-255-byte names were refused)
    from flowforge.io import atomic_write

    for n in (241, 250, 255):
        target = tmp_path / ("a" * (n - 4) + ".csv")
        atomic_write(target, b"1,2\n")
        assert target.read_bytes() == b"1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_output_under_a_file_is_refused_before_the_work(tmp_path, capsys):
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--data", table(tmp_path / "t.csv"), "--out", run, *MODEL)
    assert rc == 0, err
    (tmp_path / "ln").symlink_to(tmp_path / "nowhere")
    for parent in ("t.csv", "ln"):
        rc, _, err = cli(capsys, "sample", run, "-n", "2", "--out", tmp_path / parent / "s.csv")
        one_line_error(rc, err, f"{parent} is not a folder")
        rc, _, err = cli(capsys, "eval", run, "--scores", tmp_path / parent / "s.csv")
        one_line_error(rc, err, f"{parent} is not a folder")
    rc, _, err = cli(capsys, "sample", run, "-n", "2", "--out", "")
    one_line_error(rc, err, "--out is empty")
    rc, _, err = cli(capsys, "train", "--config", "", "--out", tmp_path / "r2")
    one_line_error(rc, err, "--config is empty")


TYPED = [
    ("2024-01-01", "the date 2024-01-01"),
    ("on", "the boolean True"),
    ("0x10", "the number 16"),
]


@pytest.mark.parametrize("value, said", TYPED)
def test_a_name_yaml_reads_as_another_type_is_said_to_need_quotes(tmp_path, capsys, value, said):
    for key in ("data", "init_from"):
        config = tmp_path / "c.yaml"
        config.write_text(f"model: realnvp\n{key}: {value}\n" + ("data: t.csv\n" * (key != "data")))
        rc, _, err = cli(capsys, "train", "--config", config, "--out", tmp_path / "r")
        one_line_error(rc, err, f"config {key} was read as {said}", "not as a name", "quote it")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--set", f"data.name={value}",
                     "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, f"config data.name was read as {said}")


def test_a_header_in_another_unicode_form_names_the_same_columns(tmp_path, capsys):
    # (macOS software writes NFD: "température" as "tempe\u0301rature", which looks the same)
    import unicodedata

    rows = np.random.default_rng(0).normal(size=(120, 2))
    for name, form in (("nfc.csv", "NFC"), ("nfd.csv", "NFD")):
        header = unicodedata.normalize(form, "température,b")
        np.savetxt(tmp_path / name, rows, delimiter=",", header=header, comments="")
    rc, _, err = cli(
        capsys, "train", "--data", tmp_path / "nfc.csv", "--out", tmp_path / "r", *MODEL
    )
    assert rc == 0, err
    rc, _, err = cli(capsys, "eval", tmp_path / "r", "--data", tmp_path / "nfd.csv")
    assert rc == 0, err


def test_characters_the_figures_font_lacks_are_said_once(tmp_path, capsys):
    data = tmp_path / "cjk.csv"
    rows = np.random.default_rng(0).normal(size=(120, 2))
    np.savetxt(data, rows, delimiter=",", header="中文列,b", comments="", encoding="utf-8")
    rc, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "r", *MODEL)
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", tmp_path / "r", "--no-test")
    glyphs = [line for line in err.splitlines() if "Glyph" in line]
    assert rc == 0 and len(glyphs) == 1 and "drawn as boxes" in glyphs[0], err


def test_a_report_written_outside_its_run(tmp_path, capsys):
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--data", table(tmp_path / "t.csv"), "--out", run, *MODEL)
    assert rc == 0, err
    before = sorted(p.name for p in run.iterdir())
    for _ in range(2):  # (a second report replaces the first)
        rc, out, err = cli(capsys, "report", run, "--no-test", "--out", tmp_path / "rep")
        assert rc == 0 and (tmp_path / "rep" / "report.html").is_file(), err
    assert sorted(p.name for p in run.iterdir()) == before  # (the run is not written)
    page = (tmp_path / "rep" / "report.html").read_text()
    assert all((tmp_path / "rep" / src).is_file() for src in re.findall(r'src="([^"]+)"', page))
    rc, _, err = cli(capsys, "report", run, "--out", tmp_path)  # (t.csv is there)
    one_line_error(rc, err, "holds other files (r, rep, t.csv)")
    rc, _, err = cli(capsys, "report", run, "--out", run / "sub")
    one_line_error(rc, err, "is inside the run")
    rc, _, err = cli(capsys, "report", run, "--out", tmp_path / "no" / "rep")
    one_line_error(rc, err, "there is no folder")
    assert not (tmp_path / "no").exists() and not (run / "sub").exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names that are not UTF-8")
def test_a_scores_file_shows_the_byte_of_a_name_that_is_not_utf8():
    # (an image named lat\xe9.png was written "lat\udce9.png", which names no file)
    from flowforge.workbench.evaluate import _byte_escaped

    assert _byte_escaped(os.fsdecode(b"lat\xe9.png")) == "lat\\xe9.png"
    assert _byte_escaped("café.png") == "café.png"


def test_an_out_through_a_link_and_dot_dot_is_made_where_the_kernel_finds_it(tmp_path, capsys):
    # (`ln/far/../run`: the folder was made through the link, then looked for by its text,
    # and the command failed leaving an empty folder behind)
    (tmp_path / "far" / "inner").mkdir(parents=True)
    (tmp_path / "ln").mkdir()
    (tmp_path / "ln" / "far").symlink_to(tmp_path / "far" / "inner")
    out = f"{tmp_path}/ln/far/../run"
    rc, _, err = cli(capsys, "train", "--data", table(tmp_path / "t.csv"), "--out", out, *MODEL)
    assert rc == 0 and (tmp_path / "far" / "run" / "model.ff").is_file(), err
    rc, _, err = cli(capsys, "sample", out, "-n", "2", "--out", f"{tmp_path}/ln/far/../s.csv")
    assert rc == 0 and (tmp_path / "far" / "s.csv").is_file(), err


def test_an_output_name_with_a_slash_or_on_a_pipe_is_refused(tmp_path, capsys):
    # (`s.csv/` wrote a file s.csv; --overwrite over a FIFO replaced it by a file)
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--data", table(tmp_path / "t.csv"), "--out", run, *MODEL)
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", run, "-n", "2", "--out", f"{tmp_path}/s.csv/")
    one_line_error(rc, err, "ends with a slash")
    assert not (tmp_path / "s.csv").exists()
    os.mkfifo(tmp_path / "fifo.csv")
    rc, _, err = cli(capsys, "eval", run, "--scores", tmp_path / "fifo.csv", "--overwrite")
    one_line_error(rc, err, "is not a regular file")
    assert (tmp_path / "fifo.csv").is_fifo()
