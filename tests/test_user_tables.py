"""Users' own CSV files as a spreadsheet or a script writes them: the header rule and its
ambiguous cases, files that are not text CSV, decimal commas and other separators, image
folders with subfolders, and what the reader costs in memory."""

from __future__ import annotations

import gzip
import json
import os
import re
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
import torch

from cli_support import cli, one_line_error, png_folder
from flowforge.workbench.data import DataError, _read_csv, load_dataset, read_table

TINY = ["--model", "realnvp", "--epochs", 1, "--quiet", "--no-progress", "--model-kwargs",
        '{"layers": 1, "hidden": [4]}']  # fmt: skip


def _rows(x) -> str:
    return "".join(",".join(f"{v:.5f}" for v in r) + "\n" for r in x)


def _normal(n=60, d=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("first", [",0.5,0.25", "NA,0.5,0.25", "0.5,n/a,0.25"])
def test_a_first_row_with_a_missing_value_is_not_taken_for_a_header(tmp_path, first):
    path = tmp_path / "t.csv"
    path.write_text(first + "\n" + _rows(_normal()))
    with pytest.raises(DataError, match="line 1 reads as data with a missing value"):
        _read_csv(path)
    x, names = _read_csv(path, header=True)  # the user says it is a header
    assert x.shape == (60, 3) and names == first.split(",")
    # a header whose first name is empty (a pandas index) is still a header
    path.write_text(",a,b\n" + _rows(np.c_[np.arange(60), _normal(60, 2)]))
    x, names = _read_csv(path)
    assert names == ["", "a", "b"] and x.shape == (60, 3)


def test_a_row_index_without_a_name_is_warned_of(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(",a,b\n" + _rows(np.c_[np.arange(60), _normal(60, 2)]))
    notes = load_dataset(str(path)).info["warnings"]
    assert any("row index" in n and "index=False" in n for n in notes), notes
    path.write_text(",a,b\n" + _rows(_normal(60, 3)))
    notes = load_dataset(str(path)).info["warnings"]
    assert any("column 0 (0-based) has no name" in n for n in notes), notes


def test_a_numeric_header_is_refused_until_the_user_says(tmp_path, capsys):
    path = tmp_path / "years.csv"
    x = _normal(100)
    path.write_text("2019,2020,2021\n" + _rows(x))
    with pytest.raises(DataError, match="line 1 .2019, 2020, 2021. holds whole numbers"):
        _read_csv(path)
    got, names = _read_csv(path, header=True)
    assert names == ["2019", "2020", "2021"] and np.allclose(got, x, atol=1e-5)
    got, names = _read_csv(path, header=False)
    assert names is None and got.shape == (101, 3) and got[0].tolist() == [2019, 2020, 2021]
    # data whose rows are all whole numbers: line 1 is data, as before
    ints = tmp_path / "ints.csv"
    ints.write_text("".join(f"{a},{b}\n" for a, b in np.arange(40).reshape(20, 2)))
    got, names = _read_csv(ints)
    assert names is None and np.array_equal(got, np.arange(40).reshape(20, 2))
    # the command line: refused, then trained with the option, then scored with the same file
    rc, _, err = cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY)
    one_line_error(rc, err, "header: true")
    rc, _, err = cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY,
                     "--set", "data.header=true")  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["resolved"]["columns"] == ["2019", "2020", "2021"]
    rc, out, err = cli(capsys, "eval", tmp_path / "r", "--data", path)
    assert rc == 0 and "100 examples" in out, err
    rc, _, err = cli(capsys, "train", "--data", path, "--out", tmp_path / "r2", *TINY,
                     "--set", "data.header=2")  # fmt: skip
    one_line_error(rc, err, "header must be true or false")


def test_decimal_commas_are_not_read_as_two_columns(tmp_path):
    rng = np.random.default_rng(0)
    cents = rng.integers(0, 100, 200)
    cents[3] = 5  # a fraction with a leading zero on some line
    path = tmp_path / "prices.csv"
    path.write_text("".join(f"{a},{c:02d}\n" for a, c in zip(rng.integers(100, 400, 200), cents)))
    with pytest.raises(DataError, match="decimal commas.*sep=';', decimal=','"):
        _read_csv(path)
    # two integer columns written without leading zeros are two columns
    path.write_text("".join(f"{a},{c}\n" for a, c in zip(rng.integers(100, 400, 200), cents)))
    assert _read_csv(path)[0].shape == (200, 2)


@pytest.mark.parametrize(
    "text, hint",
    [
        ("a;b;c\n0,5;1,25;2,5\n1,5;0,25;3,5\n", "semicolons with decimal commas"),
        ("0,5;1,25;2,5\n1,5;0,25;3,5\n2,5;1,5;0,5\n", "semicolons with decimal commas"),
        ("a;b\n0.5;1.25\n1.5;0.25\n", "separated by semicolons: "),
        ("a;b\n0.5;1.25\n1.5;0.25\n", "sep=';').to_csv"),
        ("a\tb\n0.5\t1.25\n1.5\t0.25\n", "sep='\\t')"),
    ],
)
def test_other_separators_get_the_conversion_that_works(tmp_path, text, hint):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        _read_csv(path)
    assert hint in str(e.value), e.value


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda p, t: p.write_bytes(gzip.compress(t.encode())), "gzip-compressed"),
        (lambda p, t: zipfile.ZipFile(p, "w").writestr("sheet1.xml", t), "ZIP archive"),
        (lambda p, t: p.write_bytes(t.encode("utf-16")), "UTF-16 text"),
        (lambda p, t: p.write_bytes(t.encode("utf-16-le")), "NUL bytes"),
        (lambda p, t: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)), "a PNG image"),
    ],
)
def test_files_that_are_not_text_csv_say_what_they_look_like(tmp_path, capsys, make, what):
    path = tmp_path / "t.csv"
    make(path, "a,b\n" + _rows(_normal(50, 2)))
    with pytest.raises(DataError, match=what):
        _read_csv(path)
    rc, _, err = cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY)
    one_line_error(rc, err, "is not a", what)


def test_windows_1252_names_are_read(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(("été,b\n" + _rows(_normal(20, 2))).encode("cp1252"))
    assert _read_csv(path)[1] == ["été", "b"]


def test_the_reader_holds_about_the_numbers_not_the_text(tmp_path):
    """8 bytes a value and a little more: the old reader kept every row as Python strings
    (about 55 times the file). 100,000 rows of 3 values: 2.4 MB of float64."""
    path = tmp_path / "big.csv"
    x = np.random.default_rng(0).integers(0, 1000, (100_000, 3))
    np.savetxt(path, x, fmt="%d", delimiter=",")
    tracemalloc.start()
    got, _ = _read_csv(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(got, x)
    assert peak < 4 * x.size * 8, peak  # the old reader: about 40 times the values' bytes


def test_tiny_values_one_row_and_fifos(tmp_path, capsys):
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("a,b\n" + _rows(_normal(40, 2)).replace("\n", "e-300\n").replace(",", "e-300,"))
    with pytest.raises(DataError, match="smaller than 1e-20.*multiply it by 1e30"):
        load_dataset(str(tiny))
    three = tmp_path / "three.csv"
    three.write_text("a,b\n1.5,2.5\n0.5,1.5\n2.5,0.25\n")
    rc, _, err = cli(capsys, "train", "--data", three, "--out", tmp_path / "r", *TINY)
    one_line_error(rc, err, "the training split holds one row")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.csv"
        os.mkfifo(fifo)
        rc, _, err = cli(capsys, "train", "--data", fifo, "--out", tmp_path / "r2", *TINY)
        one_line_error(rc, err, "is not a regular file or a folder")


def test_image_subfolders_are_named(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)

    def images(folder, n):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(folder / f"{i}.png")

    images(tmp_path / "classes" / "cats", 10)
    images(tmp_path / "classes" / "dogs", 10)
    with pytest.raises(DataError, match="its subfolders cats, dogs do"):
        load_dataset(str(tmp_path / "classes"))
    images(tmp_path / "mixed", 20)
    images(tmp_path / "mixed" / "more", 5)
    (tmp_path / "mixed" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    ds = load_dataset(str(tmp_path / "mixed"))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20
    assert any("subfolders more" in n for n in ds.info["warnings"])


def test_python_remedies_are_said_in_the_commands_words(tmp_path, capsys):
    """The library's "move the flow to float64 (flow.double())" is a Python remedy; the
    command line's models are float32, so its messages give what the command can do."""
    import flowforge as ff
    from flowforge.workbench.cli import _one_line

    path = tmp_path / "counts.csv"
    np.savetxt(path, np.random.default_rng(0).integers(0, 1000, (100, 2)), fmt="%d", delimiter=",")
    rc, _, err = cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY,
                     "--set", "data.levels=100000000")  # fmt: skip
    one_line_error(rc, err, "data.levels must be an integer", "a float32 model tells apart")
    assert "flow.double()" not in err
    flow = ff.models.build("realnvp", features=2, layers=1, hidden=[4])
    with pytest.raises(ValueError) as e:
        flow._check_samples(torch.tensor([[float("inf"), 0.0]]))
    assert "flow.double()" in str(e.value)
    assert _one_line(e.value).endswith("sample at a lower --temperature")


def test_record_and_long_double_arrays(tmp_path):
    rec = tmp_path / "rec.npy"
    table = np.random.default_rng(0).normal(size=(50, 2))
    np.save(rec, np.rec.fromarrays(table.T, names="height,weight"))
    with pytest.raises(DataError, match=r"structured array with fields \(height, weight\)"):
        load_dataset(str(rec))
    if np.finfo(np.longdouble).max > np.finfo(np.float64).max:  # (x86: 80-bit)
        big = tmp_path / "big.npy"
        wide = table.astype(np.longdouble)
        wide[7, 0] = np.longdouble("1e400")  # finite in 80 bits, inf in float64
        np.save(big, wide)
        with pytest.raises(DataError, match="beyond float32's range .* rows .0-based. 7"):
            load_dataset(str(big))


def test_a_csv_number_too_long_for_float64_is_out_of_range_not_missing(tmp_path):
    """400 nines read as inf: it was called "NaN or inf (missing values?)"; a spelled-out inf
    still is."""
    rows = "\n".join(f"{i},{i % 3}" for i in range(40))
    (tmp_path / "huge.csv").write_text(f"a,b\n{rows}\n{'9' * 400},1\n")
    with pytest.raises(DataError, match="beyond float32's range .*on line 42"):
        load_dataset(str(tmp_path / "huge.csv"))
    (tmp_path / "inf.csv").write_text(f"a,b\n{rows}\ninf,1\n")
    with pytest.raises(DataError, match="NaN or inf on line 42"):
        load_dataset(str(tmp_path / "inf.csv"))


def test_formula_led_column_names_are_neutralised_and_read_back(tmp_path, capsys):
    """A column named like a spreadsheet formula (from the user's file) is written to a
    sample CSV led by ', which a spreadsheet shows as text; eval reads it as the name."""
    path = tmp_path / "t.csv"
    path.write_text("=cmd|' /C calc'!A0,-x,plain\n" + _rows(_normal(80)))
    assert cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY)[0] == 0
    rc, _, err = cli(capsys, "sample", tmp_path / "r", "-n", 3, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    head = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert head == "'=cmd|' /C calc'!A0,'-x,plain"
    rc, out, err = cli(capsys, "eval", tmp_path / "r", "--data", tmp_path / "s.csv")
    assert rc == 0 and "(3 examples)" in out, err


def test_sample_outputs_are_bounded(tmp_path, capsys):
    from flowforge.workbench.report import save_samples

    cfg = {"resolved": {"columns": ["a", "b"], "data_shape": [2]}}
    x = torch.randn(50_000, 2)
    save_samples(x[:10], cfg, tmp_path / "s.csv")  # (its imports, outside the measure: alone,
    tracemalloc.start()  # this test counted them, 10.9 MB, and failed)
    save_samples(x, cfg, tmp_path / "s.csv")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    back = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert np.allclose(back, x.numpy(), rtol=1e-8, atol=0)  # 9 digits hold a float32
    assert peak < 4_000_000, peak  # chunks of 4,096 rows: 1.3 MB (the whole text: 10.5 MB)
    save_samples(x, cfg, tmp_path / "s.npy")
    assert np.array_equal(np.load(tmp_path / "s.npy"), x.numpy())
    from cli_support import tiny_moons_run

    run = tiny_moons_run(capsys, tmp_path / "moons")
    rc, _, err = cli(capsys, "sample", run, "-n", 100_001, "--out", tmp_path / "p.png")
    one_line_error(rc, err, "a PNG shows at most 100,000 points", ".npy or .csv")
    assert not (tmp_path / "p.png").exists()


def test_column_names_are_drawn_as_written(tmp_path, capsys):
    """A "$" in a column name is text in the report's figures, not TeX (a$_$b stopped the
    report with a parser error)."""
    path = tmp_path / "t.csv"
    path.write_text("a$_$b,R$ / US$\n" + _rows(_normal(120, 2)))
    assert cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY)[0] == 0
    rc, _, err = cli(capsys, "report", tmp_path / "r")
    assert rc == 0, err


def test_small_messages_of_the_conditional_and_output_commands(tmp_path, capsys):
    import flowforge as ff
    from cli_support import tiny_moons_run

    run = tiny_moons_run(capsys, tmp_path / "run")
    (tmp_path / "d.csv").mkdir()
    rc, _, err = cli(capsys, "sample", run, "-n", 2, "--out", tmp_path / "d.csv", "--overwrite")
    one_line_error(rc, err, "is a folder; give a file name")
    (run / "report").write_text("mine")
    rc, _, err = cli(capsys, "report", run)
    one_line_error(rc, err, "is not the report's folder")
    assert (run / "report").read_text() == "mine"
    with pytest.raises(ValueError, match="n >= 1 cells"):
        ff.targets.grid_log_z(ff.targets.get("u1"), (-6, 6, -6, 6), 0)
    with pytest.raises(ValueError, match="x0 < x1"):
        ff.targets.grid_log_z(ff.targets.get("u1"), (6, -6, -6, 6), 10)
    flow = ff.models.Planar(features=2, layers=1)
    with pytest.raises(ValueError, match="batch_size to be an integer >= 1"):
        ff.objectives.vi_diagnostics(flow, ff.targets.get("u1"), n=10, batch_size=0)
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n" + _rows(_normal(40)))
    rc, _, err = cli(capsys, "train", "--data", path, "--target-columns", "", "--out",
                     tmp_path / "r", *TINY)  # fmt: skip
    one_line_error(rc, err, "at least one target column")
    from flowforge.workbench.data import ContextError
    from flowforge.workbench.evaluate import sample_context

    cfg = {"resolved": {"context": {"kind": "label", "classes": [0, 1, 2], "features": 3}}}
    assert sample_context(cfg, "0,2", None)[2] == (["label"], [[0], [2]])
    with pytest.raises(ContextError, match="--label expects integers"):
        sample_context(cfg, "1,,2", None)


def test_a_png_of_several_labels_has_one_row_per_label(tmp_path):
    from PIL import Image

    from flowforge.workbench.report import save_samples

    cfg = {"resolved": {"data_shape": [1, 8, 8], "levels": 17}}
    x = torch.randint(0, 17, (30, 1, 8, 8)).float()
    save_samples(x, cfg, tmp_path / "a.png", given=(["label"], [[0], [1], [2]]))
    w, h = Image.open(tmp_path / "a.png").size
    assert w > 2.5 * h  # 3 rows of 10, not a 6 x 5 square mixing the labels


def test_large_table_checks_work_in_bounded_pieces(monkeypatch):
    """The data checks of a large file look at a chunk of rows at a time (a 500 MB .npy took
    4.7 GB): the same verdicts as whole-array numpy, without float64 copies of float32 data."""
    from flowforge.workbench import data

    a = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    assert data._as_table(a, "x") is a  # float32 data is used as it is
    assert data._as_table(a.astype(np.int16), "x").dtype == np.float32
    assert data._as_table(a.astype(np.float64), "x").dtype == np.float64
    monkeypatch.setattr(data, "CHUNK_ROWS", 7)
    mean, sd, top = data._column_stats(a)
    assert np.allclose(mean, a.astype(np.float64).mean(0), rtol=0, atol=1e-12)
    assert np.allclose(sd, a.astype(np.float64).std(0), rtol=1e-12)
    assert np.array_equal(top, np.abs(a).max(0))
    b = a.copy()
    b[[3, 500, 999], 1] = np.nan
    assert data._bad_rows(b, lambda c: ~np.isfinite(c)).tolist() == [3, 500, 999]
    # exact duplicates by row hashes, against the plain set of rows' bytes, for tables of odd
    # widths and images
    rng = np.random.default_rng(1)
    for train in (rng.integers(0, 3, (600, 3)).astype(np.uint8), a, rng.normal(size=(50, 5))):
        val = np.concatenate([train[rng.integers(0, len(train), 40)], train[:20] + 1])
        seen = {r.tobytes() for r in train}
        want = sum(r.tobytes() in seen for r in val)
        note = data._duplicates(train, {"val": val})
        assert (note[0].split(" of ")[0] == str(want)) if want else not note
    # the outlier check takes its median from a sample of rows when there are many
    monkeypatch.setattr(data, "MEDIAN_ROWS", 500)
    c = rng.normal(size=(5000, 2))
    c[[10, 20, 4000], 0] = 1e4
    notes = data._table_checks(c, {"val": c[:0], "test": c[:0]}, ["u", "v"], "x")
    assert "column 'u': 3 rows" in notes[0]


def test_out_of_memory_is_the_machine_not_an_internal_error(tmp_path, capsys, monkeypatch):
    from flowforge.workbench import cli as cli_module

    def huge(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.73 GiB for an array with shape (25000000, 20)")

    monkeypatch.setattr(cli_module, "cmd_train", huge)
    rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", "moons", "--out", tmp_path / "r")
    one_line_error(rc, err, "out of memory (MemoryError: Unable to allocate 3.73 GiB", "--limit")


def test_a_csv_line_longer_than_any_table_row_is_refused_before_it_is_split(tmp_path, monkeypatch):
    from flowforge.workbench import data

    monkeypatch.setattr(data, "MAX_CSV_LINE", 1000)
    path = tmp_path / "one.csv"
    path.write_text("a,b\n1,2\n" + ",".join(["12"] * 400) + "\n")
    with pytest.raises(DataError, match="one.csv: line 3 is longer than 1,000 characters"):
        data.load_dataset(str(path))


def test_a_large_data_file_is_announced_before_it_is_read(tmp_path, capsys, monkeypatch):
    """A million-row CSV took 14 s to read and check with nothing printed."""
    from flowforge.workbench import runner

    monkeypatch.setattr(runner, "BIG_DATA_BYTES", 100)
    path = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    path.write_text("a,b\n" + "\n".join(f"{u:.4f},{v:.4f}" for u, v in rng.normal(size=(80, 2))))
    rc, out, err = cli(capsys, "train", "--model", "realnvp", "--data", path, "--out",
                       tmp_path / "r", "--model-kwargs", '{"layers": 1, "hidden": [4]}',
                       "--epochs", 1, "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert out.splitlines()[0].startswith("reading t.csv (0 MiB) ...")
    rc, out, err = cli(capsys, "eval", tmp_path / "r", "--json")
    assert rc == 0 and json.loads(out) and "reading t.csv" in err  # stdout stays JSON


CSV_CASES = {
    "header": "a,b,c\n1,2.5,3\n4,5,6e-3\n7,8,9\n",
    "no header": "1,2.5,3\n4,5,6\n7,8,9.25\n",
    "quotes, spaces, BOM, blank lines": '\ufeff"a", b ,c\n\n "1.5" , 2,3\n4,5,6\n\n7,8,9\n\n',
    "quoted, BOM, blank line": '\ufeff"a","b","c"\n"1.5",2, 3 \n4,5,6\n\n7,8,9\n',
    "numbers past float32": "a,b,c\n1,2,3\n4,5e300,6\n7,8,9\n",
    "a NaN row": "a,b,c\n1,2,3\nnan,5,6\n7,8,9\n",
    "a ragged row": "a,b,c\n1,2,3\n4,5\n7,8,9\n",
    "a word": "a,b,c\n1,2,3\n4,x,6\n7,8,9\n",
    "decimal commas": "326,05\n327,10\n328,00\n",
    "years as names": "2019,2020,2021\n1.5,2.5,3.5\n4.5,5.5,6.5\n7.5,8.5,9.5\n",
    "underscores": "a,b,c\n1_000,2,3\n4,5,6\n7,8,9\n",
    "a blank-celled row": "a,b,c\n1,2,3\n,,\n7,8,9\n",
    "latin-1 names": "caf\xe9,b,c\n1,2,3\n4,5,6\n7,8,9\n",
    "comment-like cell": "a,b,c\n1,2,3\n#4,5,6\n7,8,9\n",
}


@pytest.mark.parametrize("name", list(CSV_CASES))
def test_numpys_reader_and_the_row_by_row_one_read_every_table_alike(name, tmp_path, monkeypatch):
    """Large plain tables are read by numpy's C reader (4x faster): the same numbers, bit for
    bit, and every table it cannot read plainly goes to the row-by-row reader, whose refusals
    name the line."""
    from flowforge.workbench import data

    path = tmp_path / "t.csv"
    text = CSV_CASES[name]
    path.write_bytes(text.encode("cp1252" if "latin" in name else "utf-8"))

    def read(threshold):
        monkeypatch.setattr(data, "FAST_CSV_BYTES", threshold)
        try:
            table, cols = data._read_csv(path)
            return table.tobytes(), table.shape, cols
        except DataError as e:
            return str(e)

    assert read(0) == read(1 << 62)
    plain = name in (
        "header",
        "no header",
        "quoted, BOM, blank line",
        "years as names",
        "latin-1 names",
    )
    monkeypatch.setattr(data, "FAST_CSV_BYTES", 0)
    encoding = "cp1252" if "latin" in name else "utf-8-sig"
    fast = data._parse_csv_fast(path, encoding, "strict", None, None)
    assert (fast is not None) == plain  # (the plain ones did take numpy's path)


def test_duplicates_are_found_across_splits_saved_in_different_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 3)).astype(np.float32)
    path = tmp_path / "s.npz"
    np.savez(path, train=train, val=rng.normal(size=(20, 3)), test=train[:40].astype(np.float64))
    notes = load_dataset(str(path)).info["warnings"]
    assert any(n.startswith("40 of the 40 test rows also appear") for n in notes), notes


def test_a_csv_as_wide_as_the_run_is_read_past_the_usual_line_cap(tmp_path, monkeypatch):
    """flowforge sample writes a 3x384x384 run's CSV in lines of 4.8M characters: eval --data
    and compress --data read it (the cap follows the width they expect)."""
    from flowforge.workbench import data

    monkeypatch.setattr(data, "MAX_CSV_LINE", 100)
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(",".join(["1.5"] * 40) for _ in range(3)) + "\n")  # 159 chars
    with pytest.raises(DataError, match="line 1 is longer than 100 characters"):
        data.read_table(str(path))
    assert data.read_table(str(path), shape=(40,)).shape == (3, 40)
    exact = tmp_path / "exact.csv"  # exactly the cap, with a Windows line end: not over it
    exact.write_bytes(b"\r\n".join([b",".join([b"1"] * 50)[:99] + b"9"] * 3) + b"\r\n")
    assert data.read_table(str(exact)).shape == (3, 50)


@pytest.mark.parametrize("sampled", [False, True])
def test_point_masses_and_discrete_repeats_are_named_for_what_they_are(
    tmp_path, monkeypatch, sampled
):
    """A [0, 1] column with 30% exact zeros gave an NLL that fell without bound, unwarned; a
    binary table's inevitable repeats were called duplicates to remove."""
    from flowforge.workbench import data

    if sampled:  # many rows: the shares come from a sample of them
        monkeypatch.setattr(data, "MEDIAN_ROWS", 100)
    rng = np.random.default_rng(0)
    n = 600
    prob = np.where(rng.random(n) < 0.3, 0.0, rng.random(n))
    path = tmp_path / "p.csv"
    rows = np.stack([prob, rng.normal(size=n)], 1)
    path.write_text("prob,z\n" + "\n".join(f"{a:.17g},{b:.17g}" for a, b in rows))
    notes = load_dataset(str(path)).info.get("warnings", [])
    assert any(n.startswith("column(s) 'prob' (") and "on 0)" in n and "falls without bound" in n
               for n in notes), notes  # fmt: skip
    # values rounded to a few decimals repeat too, spread over many: no point masses there
    rounded = np.stack([np.round(rng.normal(170, 10, n), 1), np.round(rng.normal(0, 1, n), 2)], 1)
    assert data._atoms(rounded, ["height", "z"]) is None
    # a coarse rounding (sd 0.05 to 0.01) puts 8% of the rows on single values: warned of,
    # with the remedy for a grid, declared integers (it offered only a flag column or noise)
    coarse = np.stack([np.round(rng.normal(0, 0.05, n), 2), rng.normal(size=n)], 1)
    note = data._atoms(coarse, ["dose", "z"])
    assert note.startswith("column(s) 'dose' (") and "falls without bound" in note
    assert "multiply it to integers ('dose' by 100) and declare it in data.integers" in note
    assert "on a grid" not in data._atoms(rows, ["prob", "z"])  # (exact 0s and a continuum)
    assert data._grid_step(np.array([-0.5, 0.0, 1.5])) == 0.5
    assert data._grid_step(np.array([0.0, 0.3, 0.9])) is None  # (0.3: no rounding's step)
    # float32 tables (a review: 0.1 is 0.10000000149 there, and no grid was ever found)
    f32 = coarse.astype(np.float32)
    assert "('dose' by 100)" in data._atoms(f32, ["dose", "z"])
    tenths = np.round(rng.normal(100, 3, n), 1).astype(np.float32).astype(np.float64)
    assert data._grid_step(np.unique(tenths), np.finfo(np.float32).eps) == 0.1
    halves = np.unique(np.round(rng.normal(1e6, 3, n) * 2) / 2).astype(np.float32)  # (exact)
    assert data._grid_step(halves.astype(np.float64), np.finfo(np.float32).eps) == 0.5
    binary = tmp_path / "b.csv"
    bits = rng.integers(0, 2, (n, 3))
    binary.write_text("a,b,c\n" + "\n".join(",".join(map(str, r)) for r in bits))
    notes = load_dataset(str(binary)).info["warnings"]
    dup = [n for n in notes if "also appear in the training split" in n]
    assert dup and all("repeats are expected" in n for n in dup), dup


MISSING = [
    ("", "cannot read '' as a number (a missing value"),
    ("NA", "cannot read 'NA' as a number (a missing"),
    ("nan", "contains NaN or inf on line 3 (missing"),
]


@pytest.mark.parametrize("cell, needle", MISSING)
def test_a_missing_value_is_called_one_with_what_to_do(tmp_path, cell, needle):
    path = tmp_path / "m.csv"
    path.write_text(f"a,b\n1,2\n3,{cell}\n5,6\n7,8\n")
    with pytest.raises(DataError, match="drop") as e:
        load_dataset(str(path))
    assert needle in str(e.value)


def test_a_text_column_is_named_with_what_to_do(tmp_path):
    # (an audit: "cannot read 'blue' as a number", neither the column nor a way on)
    path = tmp_path / "t.csv"
    path.write_text("a,eye colour,b\n1,blue,2\n3,brown,4\n5,blue,6\n")
    with pytest.raises(DataError) as e:
        load_dataset(str(path))
    msg = str(e.value)
    assert "cannot read 'blue' as a number (column 'eye colour' holds text" in msg, msg
    assert "--set 'data.integers=[eye colour]' --set 'data.bounds.eye colour=[0,K-1]'" in msg
    # a cell with a letter below numbers in its column is a stray cell, not a text column
    path.write_text("a,b\n1,2\n3,1.5e-3x\n5,6\n")
    with pytest.raises(DataError, match=r"column 'b' holds numbers on the lines above: a stray"):
        load_dataset(str(path))


def test_a_last_best_epoch_on_spiky_columns_does_not_ask_for_more_epochs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 2000
    prob = np.where(rng.random(n) < 0.3, 0.0, rng.random(n))
    path = tmp_path / "p.csv"
    path.write_text("prob,z\n" + "\n".join(f"{a:.17g},{b:.17g}" for a, b in
                                            zip(prob, rng.normal(size=n))))  # fmt: skip
    rc, out, err = cli(capsys, "train", "--model", "realnvp", "--data", path, "--out",
                       tmp_path / "r", "--model-kwargs", '{"layers": 2, "hidden": [8]}',
                       "--epochs", 3, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert "note: the best epoch is the last, but the columns the data warnings name" in out
    assert "more epochs sharpen the spikes" in out and "may do better" not in out


def test_a_table_of_very_few_rows_is_warned_of(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n" + _rows(_normal(30)))
    notes = load_dataset(str(path)).info["warnings"]
    assert any(n.startswith("only 24 training, 3 validation and 3 test rows") for n in notes)
    path.write_text("a,b,c\n" + _rows(_normal(200)))
    assert not any("training, " in n for n in load_dataset(str(path)).info.get("warnings", []))
    notes = load_dataset(str(path), limit=40).info["warnings"]  # (the rows --limit keeps)
    assert any(n.startswith("only 40 training, 20 validation and 20 test rows") for n in notes)


def _png_rgb16(path, rng):
    """A 16-bit RGB PNG (colour type 2, depth 16), written by hand: Pillow writes none."""
    import struct
    import zlib

    rows = b"".join(b"\0" + rng.integers(0, 65535, 24).astype(">u2").tobytes() for _ in range(8))

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))  # fmt: skip


def test_image_folders_against_bombs_links_and_disguised_depths(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(2):  # 25 M pixels each, a few kB on disk: refused from the header, unread
        Image.new("L", (5000, 5000)).save(big / f"{i}.png")
    tracemalloc.start()
    with pytest.raises(DataError, match=r"0.png is 5000x5000, more than the 16,777,216 pixels"):
        load_dataset(str(big))
    assert tracemalloc.get_traced_memory()[1] < 5_000_000
    tracemalloc.stop()
    deep = tmp_path / "deep"
    deep.mkdir()
    for i in range(4):  # a 16-bit PNG named .jpg was cut to its top 8 bits
        _png_rgb16(deep / f"{i}.jpg", rng)
    with pytest.raises(DataError, match="16 bits per channel"):
        load_dataset(str(deep))
    ok, outside = tmp_path / "ok", tmp_path / "outside"
    ok.mkdir()
    outside.mkdir()
    for i in range(19):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(ok / f"{i:02d}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside / "secret.png")
    (ok / "19.png").symlink_to(ok / "00.png")  # a link within the folder reads
    ds = load_dataset(str(ok))
    assert sum(len(ds.split(k)) for k in ("train", "val", "test")) == 20
    (ok / "zz.png").symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match="zz.png is a link to .*outside the folder"):
        load_dataset(str(ok))


def test_npz_bombs_and_a_npy_named_npz_are_refused_unread(tmp_path):
    path = tmp_path / "many.npz"
    member = np.lib.format.header_data_from_array_1_0(np.zeros((1 << 17, 1)))
    head = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(head, member)
    payload = head.getvalue() + bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as z:
        for i in range(70):  # 70 MiB declared from a few kB: each member alone passed
            z.writestr(f"m{i}.npy", payload)
    with pytest.raises(DataError, match="more than a compressor gives for real data"):
        load_dataset(str(path))
    fake = tmp_path / "fake.npz"  # a .npy under another name: its header is checked as one's
    head = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False,
                                                "shape": (10**9, 8)})  # fmt: skip
    fake.write_bytes(head.getvalue() + bytes(64))
    with pytest.raises(DataError, match="header promises an array of shape"):
        load_dataset(str(fake))


def test_digit_separators_and_repeated_column_names(tmp_path, capsys):
    path = tmp_path / "u.csv"
    rows = "\n".join(f"{i % 7 + 0.5},{i % 5 + 0.25}" for i in range(60))
    path.write_text("a,b\n" + rows + "\n1_000,0.5\n")
    with pytest.raises(DataError, match="1_000"):
        load_dataset(str(path))
    first = tmp_path / "first.csv"  # on the first row it was taken for a header, the row lost
    first.write_text("1_000,2\n" + rows + "\n")
    with pytest.raises(DataError, match=r"line 1: cannot read '1_000' .* write '1000'"):
        load_dataset(str(first))
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a,b\n" + "\n".join(f"{i % 7 - 3},{i % 5 + 1},{i % 3}" for i in range(60)))
    with pytest.raises(DataError, match=r"'a' names columns 0, 1 \(the header repeats it\)"):
        load_dataset(str(dup), bounds={"a": "positive"})


def test_long_column_names_are_shortened_in_figures():
    from flowforge.workbench.report import MAX_LABEL, _label

    assert _label("x" * 300) == "x" * (MAX_LABEL - 1) + "…"
    assert _label("a\nb") == "a b" and _label("short") == "short"


# -- a data review's findings (2026-12-06) ---------------------------------------------------------


def test_one_column_of_decimal_commas_with_one_decimal_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    temps = tmp_path / "temps.csv"  # 36,6 37,1 ...: never a zero-led second cell
    temps.write_text("".join(f"{v:.1f}".replace(".", ",") + "\n" for v in rng.normal(37, 0.6, 300)))
    with pytest.warns(UserWarning, match=r"always of 1 digit .*decimal commas"):
        load_dataset(str(temps))
    thousands = tmp_path / "thousands.csv"  # 13,750
    thousands.write_text(
        "".join(f"{a},{b}\n" for a, b in zip(rng.integers(1, 99, 50), rng.integers(100, 999, 50)))
    )
    with pytest.warns(UserWarning, match="thousands separators"):
        load_dataset(str(thousands))
    with warnings.catch_warnings():  # said to be two columns: no warning
        warnings.simplefilter("error")
        assert load_dataset(str(thousands), header=False).shape == (2,)
    signed = tmp_path / "signed.csv"  # a sign rules out a decimal comma
    pairs = zip(rng.integers(-50, 50, 50), rng.integers(-9, 9, 50))
    signed.write_text("".join(f"{a},{b:+d}\n" for a, b in pairs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(str(signed)).shape == (2,)
    dice = tmp_path / "dice.csv"  # both columns of one digit: two columns, as written
    dice.write_text("".join(f"{a},{b}\n" for a, b in rng.integers(1, 7, (50, 2))))
    assert load_dataset(str(dice)).shape == (2,)
    named = tmp_path / "named.csv"
    named.write_text("age,children\n" + "".join(f"{a},{b}\n" for a, b in zip(
        rng.integers(20, 60, 50), rng.integers(0, 9, 50))))  # fmt: skip
    assert load_dataset(str(named)).shape == (2,)


def test_a_header_of_evenly_spaced_numbers_over_whole_rows_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "sales.csv"
    rows = rng.integers(100, 5000, (300, 3))
    f.write_text("2019,2020,2021\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    with pytest.raises(DataError, match="evenly spaced whole numbers"):
        load_dataset(str(f))
    assert load_dataset(str(f), header=True).info["columns"] == ["2019", "2020", "2021"]
    assert load_dataset(str(f), header=False).shape == (3,)
    one = tmp_path / "one.csv"  # one column of whole numbers: data, read as before
    one.write_text("".join(f"{v}\n" for v in range(1, 40)))
    assert load_dataset(str(one)).shape == (1,)


def test_levels_of_a_table_are_checked_before_reading(tmp_path):
    f = tmp_path / "bin.csv"
    f.write_text("".join(f"{a},{b}\n" for a, b in np.random.default_rng(0).integers(0, 2, (50, 2))))
    for bad in (2.5, 1e9, True, "8"):
        with pytest.raises(DataError, match=r"data.levels must be an integer in \[2, 8,388,608\]"):
            load_dataset(str(f), levels=bad)
    assert load_dataset(str(f), levels=2.0).shape == (2,)


def test_a_png_with_an_oversized_text_chunk_is_named(tmp_path, capsys):
    from PIL import Image, PngImagePlugin

    folder = png_folder(tmp_path / "imgs", 12)
    info = PngImagePlugin.PngInfo()
    info.add_text("note", "x" * 5_000_000, zip=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "big.png", pnginfo=info)
    rc, _, err = cli(capsys, "train", "--data", folder, "--out", tmp_path / "r", *TINY)
    one_line_error(rc, err, "big.png is not a readable image")


def test_image_arrays_of_two_or_four_channels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "rgba.npy", rng.integers(0, 256, (40, 16, 16, 4), dtype=np.uint8))
    rc, _, err = cli(capsys, "train", "--data", tmp_path / "rgba.npy", "--out", tmp_path / "g",
                     *TINY)  # fmt: skip
    one_line_error(rc, err, "channels last?", "transpose(0, 3, 1, 2)")
    np.save(tmp_path / "c8.npy", rng.integers(0, 256, (60, 8, 4, 4), dtype=np.uint8))
    assert load_dataset(str(tmp_path / "c8.npy")).shape == (8, 4, 4)  # channels first, small
    # two channels (gray and alpha, two fields): trained, and drawn channel by channel
    np.save(tmp_path / "la.npy", rng.integers(0, 256, (40, 2, 8, 8), dtype=np.uint8))
    rc, _, err = cli(capsys, "train", "--data", tmp_path / "la.npy", "--out", tmp_path / "la",
                     "--layout", "vector", *TINY)  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", tmp_path / "la", "-n", 4, "--out", tmp_path / "la.png")
    assert rc == 0 and (tmp_path / "la.png").stat().st_size > 0, err


def test_a_headerless_conditional_run_reads_its_own_samples_back(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(10, 3, 400)
    rows = np.stack([x, 1 / (1 + np.exp(-(x - 10) / 3)), 2 * x + rng.normal(0, 1, 400)], 1)
    np.savetxt(tmp_path / "c.csv", rows, delimiter=",", fmt="%.4f")
    rc, _, err = cli(capsys, "train", "--data", tmp_path / "c.csv", "--out", tmp_path / "c",
                     "--target-columns", "1,2", "--set", "data.header=false",
                     *TINY)  # fmt: skip
    assert rc == 0, err
    out = tmp_path / "s.csv"
    rc, _, err = cli(capsys, "sample", tmp_path / "c", "-n", 20, "--context", 1712345678.25,
                     "--temperature", 3, "--out", out)  # fmt: skip
    assert rc == 0, err
    lines = out.read_text().splitlines()
    assert lines[0] == "x0,x1,x2" and lines[1].startswith("1712345678.25,")  # as given
    # a warning about samples beyond the data names the table's columns (1, 2), not 0, 1
    assert "column 1 " in err or "column 2 " in err, err
    rc, got, err = cli(capsys, "eval", tmp_path / "c", "--data", out)
    assert rc == 0 and "20 examples" in got, err


def test_a_constant_column_is_not_refused_as_lost_precision(tmp_path):
    """A column of 0.3 everywhere has a float64 spread of 1e-16 (rounding), which the float32
    check took for a variation float32 rounds away: "varies by 1.11e-16 around 0.3"."""
    a = np.random.default_rng(0).normal(size=(1000, 3))
    a[:, 2] = 0.3
    np.save(tmp_path / "const.npy", a)
    ds = load_dataset(str(tmp_path / "const.npy"))
    assert ds.train.shape[1] == 3


# files as spreadsheets and other tools write them (an audit, 2026-12-07): each was read
# silently wrong (a header of numbers as data, a data row as the header, one column as two), or
# refused without the fix
_COUNTS = "\n".join(f"{40 + i % 17},{55 - i % 13},{47 + i % 11}" for i in range(60))
_SMALL = "\n".join(f"{i % 6},{i * 7 % 6},{i * 5 % 6},{i % 4}" for i in range(60))
SPREADSHEET_REFUSALS = [
    ("years.csv", "2019,2020,2021\n" + _COUNTS, "far outside every column's range"),
    (
        "years2.csv",
        "2020,2021\n" + "\n".join(r[:5] for r in _COUNTS.split("\n")),
        "far outside every column's range",
    ),
    (
        "pandas.csv",
        "0,1,2,3\n2,3,4,5\n" + _SMALL,
        "holds the column numbers",  # (2,3,4,5: a later row evenly spaced as well)
    ),
    (
        "exp.csv",
        "1e3,1e4,1e5\n0.5,1.25,2.5\n0.75,1.5,3.25\n1.5,0.25,0.125\n",
        "holds whole numbers",
    ),
    ("div0.csv", "#DIV/0!,-1.3243,0.2483\n0.5,1.25,2.5\n0.75,1.5,3.25\n", "a missing value"),
    ("minus.csv", "\u22121.5,2.5,3.1\n0.5,1.25,2.5\n", "its minus is U+2212"),
    ("typo.csv", "1.5.2,2.5,3.1\n0.5,1.25,2.5\n", "mixes text ('1.5.2'"),
    ("bool.csv", "a,b\n1.5,TRUE\n", "code TRUE/FALSE as 1/0"),
    ("thousands.csv", 'a,b\n1.5,"1,234.5"\n', "thousands separators"),
    ("trailing.csv", "a,b,c,\n1.5,2.25,-3,\n", "is empty on every line, a trailing comma"),
    ("sep.csv", "sep=,\na,b,c\n0.5,1.5,2.5\n", "Excel's 'sep=' line"),
    ("title.csv", "Sales report\na,b,c\n0.5,1.5,2.5\n", "a title line above the header"),
    ("comma.csv", "temp\n36,6\n37,1\n", "one column of numbers with decimal commas"),
    ("table.csv.gz", "a,b\n1,2\n", "type '.csv.gz'; expected"),
    ("book.xlsx", "a,b\n1,2\n", "export the sheet as CSV"),
]


@pytest.mark.parametrize("name, text, needle", SPREADSHEET_REFUSALS)
def test_what_spreadsheets_write_is_refused_with_the_fix(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(needle)):
        read_table(str(path))


def test_what_spreadsheets_write_is_warned_of(tmp_path):
    prices = tmp_path / "prices.csv"  # decimal commas, trailing zeros dropped: 47,7 is 47.70
    prices.write_text("32,33\n48,95\n7,27\n47,7\n12,85\n13,26\n5,49\n21,99\n9,15\n30,5\n")
    with pytest.warns(UserWarning, match="the second always of 1 or 2 digits"):
        read_table(str(prices))
    ids = tmp_path / "ids.csv"
    ids.write_text("Unnamed: 0,x\n" + "\n".join(f"{i},{(i * 37) % 11 / 3:.4f}" for i in range(30)))
    notes = load_dataset(str(ids)).info["warnings"]
    assert any("column 0 (0-based, 'Unnamed: 0') numbers the rows (0 to 29" in n for n in notes)
    mixed = tmp_path / "mixed.csv"  # UTF-8 names and one Latin-1 byte
    mixed.write_bytes("temp\u00e9rature,d\u00e9bit,".encode() + b"na\xefve\n0.5,1.5,2.5\n1,2,3.5\n")
    with pytest.warns(UserWarning, match="not UTF-8 .* look garbled"):
        read_table(str(mixed))


def test_a_one_dimensional_array_is_told_how_to_become_a_column(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(30.0))
    with pytest.raises(DataError, match=re.escape("one column of numbers, add the column axis")):
        load_dataset(str(path))


def test_a_header_that_repeats_a_name_is_warned_of(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "x,x,y\n" + "\n".join(f"{i * 0.37 % 1:.3f},{i * 0.71 % 1:.3f},{i}" for i in range(30))
    )
    notes = load_dataset(str(path)).info["warnings"]
    assert any("the header names 'x' more than once" in n for n in notes), notes


def test_headers_of_names_and_numbers_and_plain_integer_tables_still_read(tmp_path):
    # a review of the rules above: each of these read before them, and must still
    spectra = tmp_path / "spectra.csv"  # a name beside numeric names: a header
    spectra.write_text(
        "label,400.5,401.5,402.5\n1,0.25,0.5,0.75\n2,0.5,0.25,0.125\n3,0.1,0.2,0.3\n"
    )
    table, names = _read_csv(spectra)
    assert names == ["label", "400.5", "401.5", "402.5"] and table.shape == (3, 4)
    rng = np.random.default_rng(0)
    dice = tmp_path / "dice.csv"  # three columns of small counts starting 0,1,2 by chance
    rows = [[0, 1, 2]] + rng.integers(0, 5, (60, 3)).tolist()
    dice.write_text("\n".join(",".join(map(str, r)) for r in rows))
    assert _read_csv(dice)[0].shape == (61, 3)
    ym = tmp_path / "ym.csv"  # a year and a month: no decimal commas (months 10 and 20-ends)
    ym.write_text("\n".join(f"{y},{m}" for y, m in zip(rng.integers(1990, 2021, 100),
                                                      rng.integers(1, 13, 100))))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _read_csv(ym)[0].shape == (100, 2)


def test_tables_a_review_found_refused_read_again(tmp_path):
    # a second review: a table ranked by a column, whose top row dominates every column; a
    # header of ranges beside a number; sliding windows that count up from 0,1,2,3
    rng = np.random.default_rng(1)
    ranked = np.sort(np.round(np.exp(rng.normal(5, 2, (60, 2)))), axis=0)[::-1]
    cases = {
        "ranked.csv": "\n".join(f"{a:.0f},{b:.0f}" for a, b in ranked),
        "ranges.csv": "10-20,20-30,0.5\n1.5,2.5,0.25\n2.5,3.5,0.75\n",
        "windows.csv": "\n".join(",".join(str(i + k) for k in range(4)) for i in range(30)),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        read_table(str(tmp_path / name))  # (no refusal)
    assert _read_csv(tmp_path / "ranges.csv")[1] == ["10-20", "20-30", "0.5"]


def test_large_whole_values_are_sampled_in_plain_digits(tmp_path, capsys):
    # (a column of timestamps came back as 1.70123994e+09: exponent form for values float32
    # holds exactly, unlike the file's own)
    from cli_support import cli

    rng = np.random.default_rng(0)
    t = np.round(1.7e9 + rng.normal(0.0, 1e7, 300))
    data = tmp_path / "t.csv"
    data.write_text(
        "time,x\n" + "".join(f"{a:.0f},{b:.4f}\n" for a, b in zip(t, rng.normal(size=300)))
    )
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--out", tmp_path / "r",
                     "--model-kwargs", '{"layers": 1, "hidden": [8]}', "--epochs", 1,
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", tmp_path / "r", "-n", 50, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    times = [line.split(",")[0] for line in (tmp_path / "s.csv").read_text().splitlines()[1:]]
    assert all(re.fullmatch(r"-?[0-9]+", v) for v in times), times[:5]
    assert all(abs(float(v) - 1.7e9) < 2e8 for v in times)


def test_standardize_false_leaves_the_table_unstandardised(tmp_path, capsys):
    # (the builder's own layer standardised it from the first batch instead, unsaid)
    import flowforge as ff
    from cli_support import cli

    rng = np.random.default_rng(1)
    data = tmp_path / "raw.csv"
    x = rng.normal(size=(300, 2)) * [100, 0.01] + [5000, 3]
    data.write_text("big,small\n" + "".join(f"{a:.4f},{b:.6f}\n" for a, b in x))
    common = ["train", "--model", "nsf", "--data", data, "--epochs", 1, "--no-progress",
              "--quiet", "--model-kwargs", '{"layers": 1, "hidden": [8]}']  # fmt: skip
    rc, _, err = cli(capsys, *common, "--out", tmp_path / "off", "--set", "data.standardize=false")
    assert rc == 0, err
    flow = ff.load(tmp_path / "off")
    assert flow.config["kwargs"]["standardize"] is False
    kinds = {type(m).__name__ for m in flow.modules()}
    assert not kinds & {"Standardize", "DataStandardize"}, kinds
    rc, _, err = cli(capsys, *common, "--out", tmp_path / "on")
    assert rc == 0, err
    assert "Standardize" in {type(m).__name__ for m in ff.load(tmp_path / "on").modules()}


def test_a_data_seed_that_changes_nothing_is_said(tmp_path):
    # (a seed sweep on a file with its own splits, or read in order, scored the same rows)
    from flowforge.workbench import load_dataset

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", train=rng.normal(size=(200, 2)), val=rng.normal(size=(50, 2)),
             test=rng.normal(size=(50, 2)))  # fmt: skip
    np.savetxt(tmp_path / "t.csv", rng.normal(size=(300, 2)), delimiter=",")
    said = load_dataset(str(tmp_path / "s.npz"), seed=5).info["warnings"]
    assert any("holds its own train, val and test arrays, so data.seed = 5" in w for w in said)
    said = load_dataset(str(tmp_path / "t.csv"), seed=5, shuffle=False).info["warnings"]
    assert any("(shuffle: false), so data.seed = 5 changes nothing" in w for w in said)
    assert "warnings" not in load_dataset(str(tmp_path / "t.csv"), seed=5).info
    assert "warnings" not in load_dataset(str(tmp_path / "s.npz")).info
