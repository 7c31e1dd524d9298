"""Images given as one integer ``.npy`` array ``(N, C, H, W)`` (what ``flowforge decompress``
writes) train as images: 8-bit values as a folder of PNGs reads them (``data.bits``), or
integers in ``[0, levels - 1]`` with ``data.levels``; every other array is one line saying
what to give instead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_support import cli, one_line_error
from flowforge.workbench.data import DataError, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_GLOW = ["--model", "glow", "--epochs", 1, "--no-progress", "--quiet", "--model-kwargs",
             '{"steps": 1, "hidden": 8}']  # fmt: skip


def _images(n=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1, 8, 8)).astype(np.uint8)


def test_an_image_array_trains_and_scores_as_images(tmp_path, capsys):
    path = tmp_path / "img.npy"
    np.save(path, _images())
    ds = load_dataset(str(path))
    assert ds.kind == "image" and ds.shape == (1, 8, 8) and ds.levels == 256
    assert sum(len(ds.split(k)) for k in ("train", "val", "test")) == 60
    ds = load_dataset(str(path), bits=5)  # the top 5 bits, as for a folder of PNGs
    assert ds.levels == 32 and float(ds.train.max()) <= 31
    run = tmp_path / "run"
    rc, out, err = cli(capsys, "train", "--data", path, "--layout", "image", "--out", run,
                       *TINY_GLOW)  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", run, "--data", path)
    assert rc == 0 and "bits/dim" in out, err


def test_an_integer_array_with_levels_codes_exactly(tmp_path, capsys):
    # digits as flowforge decompress writes them: uint8 in 0..16, data.levels=17
    x = np.random.default_rng(1).integers(0, 17, size=(80, 1, 8, 8)).astype(np.uint8)
    path = tmp_path / "digits.npy"
    np.save(path, x)
    run = tmp_path / "idf"
    rc, _, err = cli(capsys, "train", "--model", "idf", "--data", path, "--set", "data.levels=17",
                     "--model-kwargs", '{"layers": 1, "hidden": 8}', "--epochs", 1,
                     "--no-progress", "--quiet", "--out", run)  # fmt: skip
    assert rc == 0, err
    ffz, back = tmp_path / "x.ffz", tmp_path / "back.npy"
    assert cli(capsys, "compress", run, "--data", path, "--out", ffz, "--no-baselines")[0] == 0
    assert cli(capsys, "decompress", ffz, "--model", run, "--out", back)[0] == 0
    assert np.array_equal(np.load(back).reshape(x.shape), x)


@pytest.mark.parametrize(
    "array, options, needle",
    [
        (_images().transpose(0, 2, 3, 1), {}, "channels last?"),
        (_images().astype(np.float32), {}, "expected integer pixel values"),
        (_images()[:, 0], {}, "for grayscale images add the channel axis"),
        (_images().astype(np.int32) * 300, {}, "other integers: give data.levels"),
        (_images(), {"levels": 17}, "levels=17 needs integer values in [0, 16]"),
        (_images(), {"standardize": True}, "data.standardize applies to tables"),
        (_images(), {"bits": 9}, "bits must be an integer in [1, 8]"),
        (_images()[:, 0, 0], {"bits": 4}, "data.bits applies to images"),
    ],
)
def test_arrays_that_are_not_images_to_train_on_get_one_line(tmp_path, array, options, needle):
    path = tmp_path / "a.npy"
    np.save(path, array)
    with pytest.raises(DataError) as e:
        load_dataset(str(path), **options)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_cli_refuses_a_channels_last_array_in_one_line(tmp_path, capsys):
    path = tmp_path / "a.npy"
    np.save(path, _images().transpose(0, 2, 3, 1))
    one_line_error(*cli(capsys, "train", "--data", path, "--out", tmp_path / "r",
                        *TINY_GLOW)[::2], "channels last?")  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_a_run_of_fewer_bits_says_how_to_give_it_an_8_bit_array(tmp_path, capsys):
    # an array is taken as the model's levels (what decompress writes); 8-bit values for a
    # run trained with data.bits=4 failed in the dequantizer's words, with no way out
    path = tmp_path / "img.npy"
    np.save(path, _images())
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", path, "--layout", "image", "--out", run,
                     "--set", "data.bits=4", *TINY_GLOW)  # fmt: skip
    assert rc == 0, err
    # compress codes an array as it is: the shift would lose bits, so it says how
    rc, _, err = cli(capsys, "compress", run, "--data", path, "--out", tmp_path / "c.ffz")
    one_line_error(rc, err, "keeps the top 4 bits", "give a >> 4")
    off = tmp_path / "off.npy"  # (not 8-bit pixels: no shift to advise)
    np.save(off, (_images() >> 4).astype(np.float64) + 0.5)
    rc, _, err = cli(capsys, "eval", run, "--data", off)
    assert rc == 1 and "values in [0.5, 15.5]" in err and ">>" not in err, err
    np.save(tmp_path / "four.npy", _images() >> 4)  # the model's levels: scored
    rc, out, err = cli(capsys, "eval", run, "--data", tmp_path / "four.npy", "--json")
    assert rc == 0, err
    four = json.loads(out)["nll"]
    # eval reads the 8-bit array as training read it (it was refused: the file the run was
    # trained on could not be scored), with a note
    rc, out, err = cli(capsys, "eval", run, "--data", path)
    assert rc == 0, err
    assert "are 8-bit pixels: scored as training read such an array" in out + err
    rc, out, err = cli(capsys, "eval", run, "--data", path, "--json")
    assert json.loads(out)["nll"] == pytest.approx(four)


def test_a_fewer_bits_runs_own_samples_train_as_they_are(tmp_path, capsys):
    # a 3-bit run's samples (values 0 to 7) given back with data.bits=3 were shifted by 5:
    # every image black, and a normal-looking NLL
    path = tmp_path / "three.npy"
    np.save(path, _images() >> 5)
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", path, "--layout", "image", "--out", run,
                     "--set", "data.bits=3", *TINY_GLOW)  # fmt: skip
    one_line_error(rc, err, "fit in 3 bits", "would make them all 0", "data.levels=8")
    assert not run.exists()
    rc, _, err = cli(capsys, "train", "--data", path, "--layout", "image", "--out", run,
                     "--set", "data.levels=8", *TINY_GLOW)  # fmt: skip
    assert rc == 0, err
    from flowforge.workbench.data import load_dataset

    ds = load_dataset(str(path), levels=8)
    assert ds.train.max() > 0 and ds.levels == 8


def test_boolean_and_fortran_order_arrays(tmp_path):
    np.save(tmp_path / "b.npy", _images() > 127)
    with pytest.raises(DataError, match="binary images\\? give data.levels=2"):
        load_dataset(str(tmp_path / "b.npy"))
    assert load_dataset(str(tmp_path / "b.npy"), levels=2).levels == 2
    np.save(tmp_path / "f.npy", np.asfortranarray(_images()))  # (trained differently before)
    np.save(tmp_path / "c.npy", _images())
    f, c = load_dataset(str(tmp_path / "f.npy")), load_dataset(str(tmp_path / "c.npy"))
    assert f.train.is_contiguous() and torch.equal(f.train, c.train)


def test_a_mistyped_option_of_an_array_file_suggests_bits(tmp_path):
    np.save(tmp_path / "i.npy", _images())
    with pytest.raises(DataError, match="did you mean bits"):
        load_dataset(str(tmp_path / "i.npy"), bitz=3)


def test_an_npz_of_one_image_array_is_images(tmp_path):
    # (the message said "or an .npz of one" and refused it)
    np.savez(tmp_path / "i.npz", x=_images())
    ds = load_dataset(str(tmp_path / "i.npz"))
    assert ds.kind == "image" and ds.shape == (1, 8, 8) and ds.levels == 256
