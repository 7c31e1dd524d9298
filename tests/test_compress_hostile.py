"""``flowforge compress`` / ``decompress`` against hostile or careless input: data that is
almost integer, forged ``.ffz`` headers, bad output paths, damaged run configs. Each is one
clear line, before any expensive work, and nothing is changed or left behind."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import time

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import TINY_IDF as IDF
from cli_support import cli, one_line_error
from flowforge import codec
from flowforge.workbench.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    assert main([*IDF, "--out", str(root / "idf")]) == 0
    return root / "idf"


@pytest.fixture(scope="module")
def ffz(run, tmp_path_factory):
    """The digits test split (447 examples) compressed with ``run``."""
    out = tmp_path_factory.mktemp("ffz") / "t.ffz"
    assert main(["compress", str(run), "--out", str(out), "--no-baselines"]) == 0
    return out


def _forge(src, dst, **changes):
    """``src`` with header fields changed and the header CRC recomputed, as a forger would."""
    blob = src.read_bytes()
    h = codec.read_header(blob)
    dst.write_bytes(dataclasses.replace(h, **changes).pack() + blob[h.size :])
    return dst


def _tiny_idf(features=6, levels=5):
    torch.manual_seed(0)
    return ff.models.IDF(
        features=features, levels=levels, layers=2, hidden=(8,), prior_blocks=6,
        prior_hidden=(8,), components=2,
    ).eval()  # fmt: skip


# -- the data are never changed ------------------------------------------------------------------


def test_almost_integer_floats_are_refused_not_rounded(run, tmp_path, capsys):
    # float64 2.00000001 rounds to 2.0 in float32: it must be refused, not coded as 2
    x = np.zeros((5, 64))
    x[0, 3] = 2.00000001
    np.save(tmp_path / "near.npy", x)
    rc, _, err = cli(capsys, "compress", run, "--data", tmp_path / "near.npy",
                     "--out", tmp_path / "o.ffz", "--no-baselines")  # fmt: skip
    one_line_error(rc, err, "near.npy", "row 0, column 3", "2.00000001", "not an integer")
    assert not (tmp_path / "o.ffz").exists()
    x[0, 3] = 2.0  # the same file with integer values is coded
    np.save(tmp_path / "near.npy", x)
    assert cli(capsys, "compress", run, "--data", tmp_path / "near.npy", "--out",
               tmp_path / "o.ffz", "--no-baselines")[0] == 0  # fmt: skip


def test_values_just_off_the_integers_at_the_top_level_are_named_as_not_integers(
    run, tmp_path, capsys
):
    """Digits + 1e-6 (the top level 16.000001) read "has values in [1e-06, 16]; this run
    models 17 levels, values in [0, 16]": a bound printed equal to the levels', and the
    problem, values that are not integers, unnamed."""
    x = np.zeros((5, 64), np.float32)
    x[:, 10] = 16
    x[1, 7] = 5
    x += 1e-6
    np.save(tmp_path / "f32.npy", x)
    rc, _, err = cli(capsys, "compress", run, "--data", tmp_path / "f32.npy",
                     "--out", tmp_path / "o.ffz", "--no-baselines")  # fmt: skip
    one_line_error(rc, err, "row 0, column 0", f"is {float(x[0, 0])!r}, not an integer",
                   "integers in [0, 16]")  # fmt: skip
    rc, _, err = cli(capsys, "eval", run, "--data", tmp_path / "f32.npy")  # (bounds, told apart)
    one_line_error(rc, err, f"values in [{str(x.min())}, {str(x.max())}]")
    assert str(x.max()) != "16"


def test_a_decompressed_file_compresses_again(run, ffz, tmp_path, capsys):
    npy = tmp_path / "r.npy"
    assert cli(capsys, "decompress", ffz, "--model", run, "--out", npy)[0] == 0
    assert np.load(npy).shape == (447, 1, 8, 8)  # the run's data shape
    rc, out, err = cli(capsys, "compress", run, "--data", npy, "--out", tmp_path / "again.ffz",
                       "--no-baselines", "--json")  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["sha256"] == ff.workbench.compress.data_hash(np.load(npy))


# -- forged headers ------------------------------------------------------------------------------


def test_a_forged_count_and_chunk_fail_fast(run, ffz, tmp_path, capsys):
    # the audit's forgery: a 4-million-example header on a 447-example payload, CRC recomputed
    big = _forge(ffz, tmp_path / "big.ffz", count=4_000_000, chunk=65536)
    rc, _, err = cli(capsys, "decompress", big, "--model", run, "--out", tmp_path / "x.npy")
    one_line_error(rc, err, "big.ffz", "16384")  # 65536 x 64 values: more than one call takes
    t0 = time.perf_counter()
    fit = _forge(ffz, tmp_path / "fit.ffz", count=4_000_000, chunk=16384)
    rc, _, err = cli(capsys, "decompress", fit, "--model", run, "--out", tmp_path / "x.npy")
    one_line_error(rc, err, "fit.ffz", "payload ran out after 0 of the 4000000 examples")
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "x.npy").exists()


def test_decoding_stops_inside_a_chunk_when_the_payload_runs_out(monkeypatch):
    # 10 examples coded, a header that claims a million in chunks of 16384: the payload runs
    # out within the first of the chunk's 6 prior blocks, and decoding stops at the next check
    flow = _tiny_idf()
    blob = codec.encode(flow, torch.randint(0, 5, (10, 6)))
    h = codec.read_header(blob)
    forged = dataclasses.replace(h, count=10**6, chunk=16384).pack() + blob[h.size :]
    calls = []
    block_params = codec._block_params
    monkeypatch.setattr(codec, "_block_params", lambda *a: calls.append(1) or block_params(*a))
    with pytest.raises(codec.CodecError, match="payload ran out after 0 of the 1000000"):
        codec.decode(flow, forged)
    assert len(calls) <= 2  # not all 6 blocks of the chunk


@pytest.mark.parametrize("words", [[1], [2**31], [5, 7, 11, 13], [3] * 40])
def test_a_forged_payload_cannot_decode_more_than_it_holds(words):
    """A coder whose state has run below its floor decodes the same symbol for ever without
    changing: emptiness never comes, and a header claiming 2**31 values would run for hours.
    The decoder counts the information its symbols take and stops once it exceeds what the
    payload holds, at the next piece of a table."""
    import zlib

    flow = _tiny_idf()
    blob = codec.encode(flow, torch.randint(0, 5, (10, 6)))
    h = codec.read_header(blob)
    payload = np.array(words, "<u4").tobytes()
    forged = dataclasses.replace(
        h, count=codec.MAX_VALUES // 6, payload_crc=zlib.crc32(payload), words=len(words)
    ).pack()
    t0 = time.perf_counter()
    with pytest.raises(
        codec.CodecError,
        match="corrupt .ffz file: (its payload ran out|it decodes to values outside)",
    ):
        codec.decode(flow, forged + payload)
    assert time.perf_counter() - t0 < 5


def test_decoded_values_off_the_levels_are_refused(monkeypatch):
    """A file whose (CRC-consistent) payload decodes to values outside [0, levels - 1] is
    corrupt: refused, never wrapped into the output's dtype."""
    flow = _tiny_idf()
    x = torch.randint(0, 5, (10, 6))
    x[0, :3] = torch.tensor([-1, 5, 300])
    monkeypatch.setattr(codec, "_as_integers", lambda flow, x: np.asarray(x, np.int64))
    blob = codec.encode(flow, x, verify=False)  # (the encoder's own check bypassed)
    with pytest.raises(codec.CodecError, match=r"values outside the data's 5 levels \[0, 4\]"):
        codec.decode(flow, blob)


def test_the_encoders_memory_grows_with_the_data_alone():
    """The tables (hundreds of bytes per value) are built and coded a piece at a time, last
    chunk first: the encoder's memory grows with the number of examples only by the data and
    the file (their copies: a few words per value), never by tables."""
    import tracemalloc

    flow = _tiny_idf(features=16)
    peaks = []
    for n in (500, 4000):
        x = torch.randint(0, 5, (n, 16), generator=torch.Generator().manual_seed(0))
        tracemalloc.start()
        codec.encode(flow, x, chunk=50, verify=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] - peaks[0] < 24 * 3500 * 16, peaks  # (12 bytes per value added)


def test_the_encoder_holds_one_piece_of_tables_whatever_the_chunk():
    """Within a chunk too: a chunk of 256 examples of 64 values, each with a window of 964
    bins, has 126 MB of tables (int64), which the encoder held whole, and the previous chunk's
    while it built the next (304 MB at its peak, tracemalloc). It builds and codes them a
    piece (at most 2^20 entries) at a time, last piece first, as the decoder reads them: its
    peak is that of one piece, and the file is the same."""
    import math
    import tracemalloc

    torch.manual_seed(0)
    flow = ff.models.IDF(
        features=64, levels=256, layers=1, components=1, prior_blocks=1, hidden=(8,)
    ).eval()
    with torch.no_grad():
        flow.base.log_scale.fill_(math.log(30.0))  # broad mixtures: windows of r = 481
    x = torch.randint(0, 256, (512, 64), generator=torch.Generator().manual_seed(0))
    tracemalloc.start()
    try:
        blob = codec.encode(flow, x, chunk=256, verify=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40e6, f"{peak / 1e6:.0f} MB"  # (19 MB: a piece's counts and probabilities)
    assert torch.equal(codec.decode(flow, blob), x)


def test_encoder_and_decoder_share_the_chunk_limit():
    flow = _tiny_idf(features=64, levels=2)
    x = torch.zeros(16385, 64, dtype=torch.int64)
    with pytest.raises(codec.CodecError, match="at most 16384"):
        codec.encode(flow, x, chunk=16385, verify=False)
    h = codec.read_header(codec.encode(flow, x[:3], chunk=64))
    assert h.chunk == 3  # never more than the examples: no padding to code
    assert codec.encode(flow, x[:1], chunk=1)  # one example at a time always works


def test_a_thread_count_beyond_the_limit_is_refused(tmp_path):
    flow = _tiny_idf()
    x = torch.randint(0, 5, (10, 6))
    blob = codec.encode(flow, x, threads=2)  # more threads than a 1-core decoder has: still fine
    assert torch.equal(codec.decode(flow, blob), x)
    h = codec.read_header(blob)
    forged = dataclasses.replace(h, threads=1024).pack() + blob[h.size :]
    with pytest.raises(codec.CodecError, match="impossible header values"):
        codec.decode(flow, forged)
    with pytest.raises(codec.CodecError, match=r"threads to be an integer in \[1, 64\]"):
        codec.encode(flow, x, threads=65)


def test_unknown_flags_are_a_corrupt_header(run, ffz, tmp_path, capsys):
    bad = _forge(ffz, tmp_path / "flags.ffz", flags=0x0001)
    rc, _, err = cli(capsys, "decompress", bad, "--model", run, "--out", tmp_path / "x.npy")
    one_line_error(rc, err, "flags.ffz", "corrupt", "flags")
    assert not (tmp_path / "x.npy").exists()


# -- output and input paths ----------------------------------------------------------------------


def test_a_file_that_appears_at_out_meanwhile_is_never_replaced(run, ffz, tmp_path, capsys,
                                                                 monkeypatch):  # fmt: skip
    """--out is checked before the work, but a file (or a link, even a dangling one) can
    appear there while it runs: without --overwrite it is kept, and the command says so."""
    from flowforge.workbench import compress as compress_module

    real = codec.decode

    def decode_and_race(flow, blob, *a, **k):  # someone writes at --out during the work
        (tmp_path / "race.ffz").write_text("theirs")
        (tmp_path / "race.npy").write_text("theirs")
        return real(flow, blob, *a, **k)

    monkeypatch.setattr(compress_module.codec, "decode", decode_and_race)
    rc, _, err = cli(capsys, "compress", run, "--out", tmp_path / "race.ffz", "--no-baselines")
    one_line_error(rc, err, "race.ffz appeared while this command ran; it is kept")
    (tmp_path / "race.npy").unlink()
    rc, _, err = cli(capsys, "decompress", ffz, "--model", run, "--out", tmp_path / "race.npy")
    one_line_error(rc, err, "race.npy appeared while this command ran; it is kept")
    assert (tmp_path / "race.ffz").read_text() == (tmp_path / "race.npy").read_text() == "theirs"
    assert not list(tmp_path.rglob(".*.tmp"))
    monkeypatch.undo()
    os.symlink(tmp_path / "absent.ffz", tmp_path / "dangling.ffz")
    os.symlink(tmp_path / "absent.npy", tmp_path / "dangling.npy")
    rc, _, err = cli(capsys, "compress", run, "--out", tmp_path / "dangling.ffz", "--no-baselines")
    one_line_error(rc, err, "dangling.ffz exists")
    rc, _, err = cli(capsys, "sample", run, "-n", 2, "--out", tmp_path / "dangling.npy")
    one_line_error(rc, err, "dangling.npy exists")
    assert (tmp_path / "dangling.ffz").is_symlink() and (tmp_path / "dangling.npy").is_symlink()


def test_an_image_folder_compresses_and_decodes_exactly(run, tmp_path, capsys):
    """A folder of images is a documented --data (read whole: no validation or test split,
    which the duplicate check once failed on)."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, (3, 8, 8), dtype=np.uint8)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"{i}.png")
    rc, _, err = cli(capsys, "compress", run, "--data", folder, "--out", tmp_path / "i.ffz",
                     "--no-baselines")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "decompress", tmp_path / "i.ffz", "--model", run, "--out",
                     tmp_path / "i.npy")  # fmt: skip
    assert rc == 0, err
    back = np.load(tmp_path / "i.npy")
    assert back.shape == (3, 1, 8, 8)
    assert sorted(map(bytes, back.reshape(3, -1))) == sorted(map(bytes, images.reshape(3, -1)))


def test_output_paths_are_checked_before_any_work(run, ffz, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "afile").write_text("mine")
    nowhere = tmp_path / "no-run"  # not a run: an output error must come before the model
    for out, needle in (
        (tmp_path / "folder", "is a folder"),
        (tmp_path / "afile" / "x.ffz", "afile is not a folder"),
        (tmp_path / "afile" / "sub" / "x.ffz", "afile is not a folder"),
        ("", "--out is empty"),
    ):
        rc, _, err = cli(capsys, "compress", nowhere, "--out", out, "--overwrite")
        one_line_error(rc, err, needle)
    for out, needle in ((tmp_path / "folder.npy", "is a folder"), ("", "--out is empty")):
        rc, _, err = cli(capsys, "decompress", ffz, "--model", nowhere, "--out", out,
                         "--overwrite")  # fmt: skip
        one_line_error(rc, err, needle)
    assert (tmp_path / "afile").read_text() == "mine"
    assert not list(tmp_path.rglob(".*.tmp"))


def test_decompress_input_that_is_not_a_file(run, tmp_path, capsys):
    rc, _, err = cli(capsys, "decompress", tmp_path, "--model", run, "--out", tmp_path / "x.npy")
    one_line_error(rc, err, "is a folder", ".ffz")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.ffz")  # opening it would block: it must not be read
        rc, _, err = cli(capsys, "decompress", tmp_path / "pipe.ffz", "--model", run,
                         "--out", tmp_path / "x.npy")  # fmt: skip
        one_line_error(rc, err, "not a regular file")
    one_line_error(*cli(capsys, "decompress", tmp_path / "none.ffz", "--model", run, "--out",
                        tmp_path / "x.npy")[::2], "no such file")  # fmt: skip


def test_written_files_get_the_umask_mode(run, ffz, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert cli(capsys, "compress", run, "--out", tmp_path / "m.ffz", "--no-baselines")[0] == 0
        assert cli(capsys, "decompress", ffz, "--model", run, "--out", tmp_path / "m.npy")[0] == 0
    finally:
        os.umask(old)
    for name in ("m.ffz", "m.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


# -- arguments and run configs -------------------------------------------------------------------


def test_chunk_errors_name_the_option_not_the_data(run, tmp_path, capsys):
    np.save(tmp_path / "d.npy", np.zeros((16385, 64)))
    for chunk, needle in (("0", "--chunk must be an integer in [1, 65536]"),
                          ("20000", "--chunk 20000")):  # fmt: skip
        rc, _, err = cli(capsys, "compress", run, "--data", tmp_path / "d.npy", "--out",
                         tmp_path / "o.ffz", "--chunk", chunk, "--no-baselines")  # fmt: skip
        one_line_error(rc, err, needle)
        assert "d.npy" not in err
    assert "at most 16384" in err
    # the run's own test split (447 digits) with a chunk beyond the limit: refused, as the
    # docs say, not clamped to the number of examples
    rc, _, err = cli(capsys, "compress", run, "--out", tmp_path / "o.ffz", "--chunk", 20000,
                     "--no-baselines")  # fmt: skip
    one_line_error(rc, err, "--chunk 20000", "at most 16384")


def test_a_data_shape_that_does_not_fit_the_model(run, ffz, tmp_path, capsys):
    evil = tmp_path / "evil"
    shutil.copytree(run, evil)
    cfg = json.loads((evil / "config.json").read_text())
    cfg["resolved"]["data_shape"] = cfg["resolved"]["event_shape"] = [128]  # the model takes 64
    (evil / "config.json").write_text(json.dumps(cfg))
    rc, _, err = cli(capsys, "decompress", ffz, "--model", evil, "--out", tmp_path / "x.npy")
    one_line_error(rc, err, "config.json", "data_shape", "64")
    rc, _, err = cli(capsys, "compress", evil, "--out", tmp_path / "o.ffz", "--no-baselines")
    one_line_error(rc, err, "config.json", "data_shape", "64")
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "o.ffz").exists()


def test_split_applies_to_a_named_dataset_only(run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((3, 64), np.uint8))
    rc, _, err = cli(capsys, "compress", run, "--data", tmp_path / "x.npy", "--split", "bogus",
                     "--out", tmp_path / "x.ffz", "--no-baselines")  # fmt: skip
    one_line_error(rc, err, "--split chooses a split of a dataset", "coded whole")
    rc, _, err = cli(capsys, "compress", run, "--split", "bogus", "--out", tmp_path / "y.ffz",
                     "--no-baselines")  # fmt: skip
    one_line_error(rc, err, "unknown split 'bogus'")


def test_a_payload_the_coder_refuses_is_a_corrupt_file_in_the_codecs_own_error():
    # a forger who recomputes the payload's CRC too: the rANS coder refuses a stream that does
    # not end in a non-zero word, which must be a CodecError like every other damage
    import zlib

    flow = _tiny_idf()
    blob = codec.encode(flow, torch.randint(0, 5, (10, 6)))
    h = codec.read_header(blob)
    zeros = bytes(len(blob) - h.size)
    forged = dataclasses.replace(h, payload_crc=zlib.crc32(zeros)).pack() + zeros
    with pytest.raises(codec.CodecError, match="corrupt .ffz file: the payload is not an rANS"):
        codec.decode(flow, forged)


def test_an_empty_array_is_refused_as_holding_no_examples(run, tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, 64), dtype=np.int64))
    rc, _, err = cli(capsys, "compress", run, "--data", tmp_path / "empty.npy",
                     "--out", tmp_path / "e.ffz", "--no-baselines")  # fmt: skip
    one_line_error(rc, err, "empty.npy holds no examples")
    assert not (tmp_path / "e.ffz").exists()


def test_levels_the_tables_cannot_hold_are_refused_before_coding():
    x = torch.zeros(2, 6, dtype=torch.int64)
    f32 = _tiny_idf(levels=2**24 + 1)  # float32 tells at most 2^23 integers apart
    with pytest.raises(codec.CodecError, match="more than torch.float32 resolves"):
        codec.encode(f32, x)
    f64 = _tiny_idf(levels=2**32).double()
    with pytest.raises(codec.CodecError, match="at most 2\\^31 - 1 levels"):
        codec.encode(f64, x)


# -- a run of fewer bits than the images hold ----------------------------------------------------


@pytest.fixture(scope="module")
def png5(tmp_path_factory):
    """A tiny IDF trained on a folder of 8x8 PNGs read at 5 bits, and the folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("png5")
    folder = root / "imgs"
    folder.mkdir()
    for i, a in enumerate(np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8)):
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    args = [a if a != "digits" else str(folder) for a in IDF if a not in ("--limit", "128")]
    assert main([*args, "--data-kwargs", '{"bits": 5}', "--out", str(root / "run")]) == 0
    return root / "run", folder


def test_a_folder_of_8_bit_images_for_a_5_bit_run_is_refused_not_cut(png5, tmp_path, capsys):
    """It printed "decoded identical" and a hash, and decompress gave back pixels >> 3: the
    images' 3 low bits were gone from a "lossless" file."""
    run, folder = png5
    out = tmp_path / "p.ffz"
    one_line_error(*cli(capsys, "compress", run, "--data", folder, "--out", out)[::2],
                   "drop the 3 low bits", "pixels >> 3", "trained on their 8 bits")  # fmt: skip
    assert not out.exists()
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(f)) for f in sorted(folder.iterdir())])[:, None]
    np.save(tmp_path / "p8.npy", pixels)
    one_line_error(*cli(capsys, "compress", run, "--data", tmp_path / "p8.npy", "--out", out)[::2],
                   "a >> 3", "trained on 8 bits")  # fmt: skip
    np.save(tmp_path / "p5.npy", pixels >> 3)  # the reduced values: coded, and given back
    assert cli(capsys, "compress", run, "--data", tmp_path / "p5.npy", "--out", out)[0] == 0
    rc, stdout, err = cli(capsys, "decompress", out, "--model", run, "--out", tmp_path / "b.npy")
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), pixels >> 3)
    assert "the values are 5-bit, 0 to 31" in stdout and "pixels >> 3" in stdout


def test_a_csv_of_the_runs_columns_in_another_order_is_refused(tmp_path, capsys):
    """compress coded the columns under the header's names in the run's order (so c5's
    numbers as c0), where eval --data refuses the file."""
    rng = np.random.default_rng(0)
    names = [f"c{j}" for j in range(6)]
    x = rng.integers(0, 5, (64, 6))
    table = tmp_path / "t.csv"
    np.savetxt(table, x, fmt="%d", delimiter=",", header=",".join(names), comments="")
    args = [a if a != "digits" else str(table) for a in IDF if a not in ("--limit", "128")]
    run = tmp_path / "run"
    assert main([*args, "--data-kwargs", '{"levels": 5}', "--out", str(run)]) == 0
    capsys.readouterr()  # (the training's own lines: a batch larger than its 52 rows)
    swapped = tmp_path / "swapped.csv"
    np.savetxt(swapped, x[:, ::-1], fmt="%d", delimiter=",", header=",".join(names[::-1]),
               comments="")  # fmt: skip
    out = tmp_path / "s.ffz"
    for command in (["eval", run, "--data", swapped], ["compress", run, "--data", swapped,
                                                       "--out", out]):  # fmt: skip
        one_line_error(*cli(capsys, *command)[::2], "its column 1 is 'c5' where this run's is 'c0'")
    assert not out.exists()
    assert cli(capsys, "compress", run, "--data", table, "--out", out, "--no-baselines")[0] == 0


def test_a_folder_of_other_images_is_described_as_images(run, tmp_path, capsys):
    """A 16x16 folder read "examples of 256 values (shape (256,))", an RGB folder for a
    grayscale run "examples of 432 values (shape (432,))"."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, shape, words in (("big", (16, 16), "16x16 grayscale images (256 values each)"),
                               ("rgb", (8, 8, 3), "8x8 RGB images (192 values each)")):  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 17, shape, dtype=np.uint8)).save(folder / f"{i}.png")
        rc, _, err = cli(capsys, "compress", run, "--data", folder, "--out", tmp_path / "o.ffz")
        want = "this run takes 8x8 grayscale images, 64 values each"
        one_line_error(rc, err, f"{folder}: {words}; {want}")
