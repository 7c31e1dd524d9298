"""``flowforge compress`` / ``decompress``: a tiny IDF run codes the digits test split, the
restored file is identical, and every misuse is a one-line error that writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_support import TINY_IDF as IDF
from cli_support import cli, one_line_error, tiny_moons_run
from flowforge import codec
from flowforge.workbench.cli import main
from flowforge.workbench.compress import classical_bits, data_hash


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main([*IDF, "--out", str(root / "idf")]) == 0
    assert main([*IDF, "--out", str(root / "idf2"), "--seed", "1"]) == 0
    return root


def test_compress_then_decompress_is_identical(runs, tmp_path, capsys):
    ffz, npy = tmp_path / "test.ffz", tmp_path / "restored.npy"
    rc, out, err = cli(capsys, "compress", runs / "idf", "--data", "digits", "--split", "test",
                       "--out", ffz, "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    assert res["examples"] == 447 and res["bytes"] == ffz.stat().st_size
    assert res["file_bits_per_dim"] >= res["nll_bits_per_dim"]
    assert res["overhead_percent"] < 2 and {"gzip", "bz2", "lzma", "png"} <= set(res["classical"])
    rc, out, err = cli(capsys, "decompress", ffz, "--model", runs / "idf", "--out", npy)
    assert rc == 0, err
    x = np.load(npy)
    assert x.shape == (447, 1, 8, 8) and x.dtype == np.uint8
    assert data_hash(x) == res["sha256"] and res["sha256"] in out
    rc, out, err = cli(capsys, "compress", runs / "idf", "--out", tmp_path / "b.ffz")
    assert rc == 0 and "model NLL" in out and "bz2" in out  # the run's own data by default


def test_never_overwrites_and_refuses_bad_files(runs, tmp_path, capsys):
    ffz, npy = tmp_path / "t.ffz", tmp_path / "r.npy"
    assert cli(capsys, "compress", runs / "idf", "--out", ffz, "--no-baselines")[0] == 0
    npy.write_bytes(b"mine")
    one_line_error(*cli(capsys, "decompress", ffz, "--model", runs / "idf", "--out", npy)[::2],
                   "exists", "--overwrite")  # fmt: skip
    assert npy.read_bytes() == b"mine"
    one_line_error(*cli(capsys, "compress", runs / "idf", "--out", ffz)[::2], "exists")
    blob = ffz.read_bytes()
    for name, bad, needle in (
        ("cut.ffz", blob[: len(blob) // 2], "truncated"),
        ("flip.ffz", blob[:-3] + bytes([blob[-3] ^ 0xFF]) + blob[-2:], "payload fails its CRC"),
        ("foreign.ffz", b"\x89PNG\r\n\x1a\n" + blob[8:], "not a flowforge .ffz file"),
    ):
        (tmp_path / name).write_bytes(bad)
        one_line_error(*cli(capsys, "decompress", tmp_path / name, "--model", runs / "idf",
                            "--out", tmp_path / "x.npy")[::2], needle)  # fmt: skip
    one_line_error(*cli(capsys, "decompress", ffz, "--model", runs / "idf2", "--out",
                        tmp_path / "x.npy")[::2], "another model")  # fmt: skip
    assert not (tmp_path / "x.npy").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_compress_refuses_bad_data_and_models(runs, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((3, 64), 17, np.int64))
    one_line_error(*cli(capsys, "compress", runs / "idf", "--data", bad, "--out",
                        tmp_path / "o.ffz")[::2], "[0, 16]")  # fmt: skip
    np.save(bad, np.zeros((3, 10), np.int64))
    one_line_error(*cli(capsys, "compress", runs / "idf", "--data", bad, "--out",
                        tmp_path / "o.ffz")[::2], "10 values",
                   "this run takes 8x8 grayscale images, 64 values each")  # fmt: skip
    # a continuous flow with levels is coded by bits-back (tests/test_bitsback.py); a flow
    # without levels has no discrete likelihood
    moons = tiny_moons_run(capsys, tmp_path / "moons")
    one_line_error(*cli(capsys, "compress", moons, "--data", bad, "--out",
                        tmp_path / "o.ffz")[::2], "levels")  # fmt: skip
    assert not (tmp_path / "o.ffz").exists()


def test_classical_codecs_on_known_data():
    x = np.zeros((100, 1, 8, 8), np.uint8)
    bits = classical_bits(x, 17)
    assert set(bits) >= {"gzip", "bz2", "lzma", "png"} and all(v < 0.2 for v in bits.values())
    noise = np.random.default_rng(0).integers(0, 256, (100, 1, 8, 8)).astype(np.uint8)
    assert classical_bits(noise, 256)["lzma"] > 7.5  # random bytes do not compress


def test_idf_with_defaults_on_a_table_of_three_columns(tmp_path, capsys):
    # IDF's default partitions (4) used to exceed 3 columns: now min(4, columns)
    rng = np.random.default_rng(0)
    csv = tmp_path / "ints.csv"
    rows = "\n".join(",".join(map(str, r)) for r in rng.integers(0, 16, (200, 3)))
    csv.write_text("a,b,c\n" + rows + "\n")
    run = tmp_path / "ints"
    rc, out, err = cli(capsys, "train", "--model", "idf", "--data", csv, "--set",
                       "data.levels=16", "--out", run, "--epochs", "1", "--no-progress",
                       "--quiet")  # fmt: skip
    assert rc == 0, err
    ffz, npy = tmp_path / "ints.ffz", tmp_path / "back.npy"
    rc, out, err = cli(capsys, "compress", run, "--data", csv, "--out", ffz, "--json",
                       "--no-baselines")  # fmt: skip
    assert rc == 0, err
    assert cli(capsys, "decompress", ffz, "--model", run, "--out", npy)[0] == 0
    back = np.load(npy)
    assert back.shape == (200, 3)
    assert np.array_equal(back, np.loadtxt(csv, delimiter=",", skiprows=1).astype(back.dtype))
    one = tmp_path / "one.csv"
    one.write_text("a\n" + "\n".join(str(v) for v in rng.integers(0, 16, 50)) + "\n")
    one_line_error(*cli(capsys, "train", "--model", "idf", "--data", one, "--set",
                        "data.levels=16", "--out", tmp_path / "one")[::2],
                   "at least 2 features (columns), got 1")  # fmt: skip
    assert not (tmp_path / "one").exists()


def test_compress_refuses_a_file_decompress_would_not_read(runs, tmp_path, capsys, monkeypatch):
    import flowforge.workbench.compress as compress

    monkeypatch.setattr(compress, "MAX_FILE_BYTES", 1000)  # (the real limit is 2 GiB)
    out = tmp_path / "big.ffz"
    one_line_error(*cli(capsys, "compress", runs / "idf", "--out", out, "--no-baselines")[::2],
                   "more than the 1,000 that decompress reads", "in parts")  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_the_header_is_broken_out_of_the_overhead(runs, tmp_path, capsys):
    """One example: 86 bytes against a 129-bit NLL read "overhead +433.36%", the fixed header
    not named, and nothing said of a file larger than the data it holds."""
    rc, out, err = cli(capsys, "compress", runs / "idf", "--out", tmp_path / "a.ffz", "--json",
                       "--no-baselines")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    header = codec.read_header((tmp_path / "a.ffz").read_bytes()).size
    assert header == res["header_bytes"] > 0 and res["raw_bytes"] == res["dims"]
    want = 100 * ((res["bytes"] - header) * 8 / (res["nll_bits_per_dim"] * res["dims"]) - 1)
    assert res["overhead_percent_without_header"] == pytest.approx(want)
    np.save(tmp_path / "one.npy", np.zeros((1, 64), np.uint8))
    rc, out, err = cli(capsys, "compress", runs / "idf", "--data", tmp_path / "one.npy",
                       "--out", tmp_path / "one.ffz", "--no-baselines")  # fmt: skip
    assert rc == 0, err
    assert f"without the {header}-byte header)" in out
    assert "the file is larger than the raw data (64 bytes" in out
    assert (
        "larger than the raw data"
        not in cli(capsys, "compress", runs / "idf", "--out", tmp_path / "b.ffz", "--no-baselines")[
            1
        ]
    )


def test_one_example_is_said_in_the_singular_and_a_split_in_capitals_is_named(
    runs, tmp_path, capsys
):
    """ "1 examples"; and --split TEST was refused as unknown, as every command refuses it
    (split names are lower case): the message now says so."""
    np.save(tmp_path / "one.npy", np.zeros((1, 64), np.uint8))
    rc, out, err = cli(capsys, "compress", runs / "idf", "--data", tmp_path / "one.npy",
                       "--out", tmp_path / "one.ffz", "--no-baselines")  # fmt: skip
    assert rc == 0 and "one.npy: 1 example, 64 values" in out, err
    rc, _, err = cli(capsys, "compress", runs / "idf", "--split", "TEST", "--out", tmp_path / "t")
    one_line_error(rc, err, "expected train, val or test (in lower case)")
