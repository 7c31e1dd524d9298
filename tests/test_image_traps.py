"""What a practitioner's own images run into: layouts that could be read two ways, image
files of other formats, few levels, few images, EXIF rotations, modes the reader refuses,
scaled arrays given to ``eval --data``, samples in the data's dtype, and odd sizes. Each is
either read as documented with a warning that says what was assumed, or one line with the fix
(the image audit of 2026-12-07)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_support import cli, one_line_error
from flowforge.workbench.data import DataError, load_dataset
from flowforge.workbench.report import image_grid

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_GLOW = ["--model", "glow", "--epochs", 1, "--no-progress", "--quiet", "--model-kwargs",
             '{"steps": 1, "hidden": 8}']  # fmt: skip


def _warnings(ds) -> list[str]:
    return ds.info.get("warnings", [])


def _pngs(folder, n=12, size=(8, 8), mode="L", bits=None, seed=0, suffix=".png"):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        if mode == "L":
            a = rng.integers(0, 256 if bits is None else 2**bits, size=size[::-1])
            im = Image.fromarray(a.astype(np.uint8), "L")
        else:
            im = Image.fromarray(rng.integers(0, 256, (*size[::-1], 4)).astype(np.uint8), mode)
        kw = {"bits": bits} if bits else {}
        im.save(folder / f"im{i:03d}{suffix}", **kw)
    return folder


@pytest.mark.parametrize("shape", [(40, 8, 2, 1), (40, 6, 5, 4), (40, 5, 2, 3)])
def test_channels_last_arrays_of_any_height_are_refused(tmp_path, shape):
    # (N, 8, 2, 1): gray images 8x2; before, only a height and width over 4 were caught and
    # these trained as 8-channel 2x1 images
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match=r"channels last\? .*transpose\(0, 3, 1, 2\)"):
        load_dataset(str(path))


def test_a_layout_read_either_way_is_read_channels_first_and_said(tmp_path):
    path = tmp_path / "strips.npy"  # RGB strips 1x8, or gray 8x3 images: both fit
    np.save(path, np.random.default_rng(0).integers(0, 256, (40, 1, 8, 3)).astype(np.uint8))
    ds = load_dataset(str(path))
    assert ds.shape == (1, 8, 3)
    (note,) = [w for w in _warnings(ds) if "channels first" in w]
    assert "read as 1 channel(s) of 8x3 images" in note and "transpose(0, 3, 1, 2)" in note
    two = tmp_path / "two.npy"  # RGB images 2x8, or 2 channels of 8x3: read as before, said
    np.save(two, np.random.default_rng(0).integers(0, 256, (40, 2, 8, 3)).astype(np.uint8))
    ds = load_dataset(str(two))
    assert ds.shape == (2, 8, 3) and any("channels first" in w for w in _warnings(ds))
    square = tmp_path / "square.npy"  # 4x4 gray images: no doubt to speak of
    np.save(square, np.random.default_rng(0).integers(0, 256, (200, 1, 4, 4)).astype(np.uint8))
    assert not [w for w in _warnings(load_dataset(str(square))) if "channels" in w]


def test_eight_bit_data_on_few_levels_suggests_data_levels(tmp_path):
    x = np.random.default_rng(0).integers(0, 17, (200, 1, 8, 8)).astype(np.uint8)
    path = tmp_path / "digits.npy"
    np.save(path, x)
    (note,) = [w for w in _warnings(load_dataset(str(path))) if "levels" in w]
    assert "every value is in [0, 16]" in note and "data.levels=17" in note
    # given: no note; and none for 8-bit images that use the range
    assert not _warnings(load_dataset(str(path), levels=17))
    np.save(path, np.random.default_rng(0).integers(0, 256, (200, 1, 8, 8)).astype(np.uint8))
    assert not _warnings(load_dataset(str(path)))


def test_a_folder_names_the_image_files_it_does_not_read(tmp_path):
    folder = _pngs(tmp_path / "mixed", n=110)
    _pngs(folder, n=3, suffix=".bmp", seed=1)
    _pngs(folder, n=2, suffix=".tif", seed=2)
    ds = load_dataset(str(folder))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 110
    (note,) = [w for w in _warnings(ds) if "not read" in w]
    assert "3 .bmp, 2 .tif files are not read" in note and "convert them to PNG" in note
    only = _pngs(tmp_path / "bmps", n=3, suffix=".bmp")
    with pytest.raises(DataError, match=r"holds no PNG or JPEG images \(it holds 3 \.bmp"):
        load_dataset(str(only))


def test_low_bit_pngs_suggest_data_bits_and_compress_from_the_folder(tmp_path, capsys):
    folder = _pngs(tmp_path / "g4", n=40, bits=4)  # Pillow reads them scaled, k * 17
    ds = load_dataset(str(folder))
    (note,) = [w for w in _warnings(ds) if "bits per pixel" in w]
    assert "PNGs of 4 bits per pixel" in note and "data.bits=4" in note
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", folder, "--set", "data.bits=4", "--out", run,
                     *TINY_GLOW)  # fmt: skip
    assert rc == 0, err
    # the folder codes exactly: its PNGs hold the run's 16 levels (before: refused, the
    # scaling's low bits taken for data); decompress gives back the PNGs' own values
    ffz, back = tmp_path / "x.ffz", tmp_path / "back.npy"
    rc, _, err = cli(capsys, "compress", run, "--data", folder, "--out", ffz, "--no-baselines")
    assert rc == 0, err
    assert cli(capsys, "decompress", ffz, "--model", run, "--out", back)[0] == 0
    files = sorted(folder.iterdir())
    want = np.stack([np.asarray(Image.open(f)) for f in files])[:, None] // 17
    assert np.array_equal(np.load(back), want)
    # an 8-bit folder for that run is still refused (its low bits would be lost)
    eight = _pngs(tmp_path / "g8", n=40)
    rc, _, err = cli(capsys, "compress", run, "--data", eight, "--out", tmp_path / "y.ffz")
    one_line_error(rc, err, "drop the 4 low bits")


def test_a_jpeg_rotated_by_exif_is_said(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        im = Image.fromarray(rng.integers(0, 256, (8, 16)).astype(np.uint8), "L")
        exif = Image.Exif()
        exif[0x0112] = 6 if i < 4 else 1  # rotated 90 degrees in a viewer
        im.save(folder / f"p{i}.jpg", exif=exif)
    notes = _warnings(load_dataset(str(folder)))
    assert any("4 JPEG file(s) carry an EXIF orientation" in w for w in notes)


def test_few_images_are_said_and_one_image_names_its_folder(tmp_path):
    folder = _pngs(tmp_path / "three", n=3)
    notes = _warnings(load_dataset(str(folder)))
    assert any(w.startswith("only 1 training, 1 validation and 1 test images") for w in notes)
    single = _pngs(tmp_path / "one", n=1)
    with pytest.raises(DataError, match=r"one: need at least 3 examples"):
        load_dataset(str(single))


@pytest.mark.parametrize(
    "mode, fix",
    [("RGBA", "convert('RGB'), which drops the transparency"), ("LA", "convert('L')")],
)
def test_refused_modes_say_how_to_convert(tmp_path, mode, fix):
    folder = tmp_path / mode
    folder.mkdir()
    size = (4, 4, 4 if mode == "RGBA" else 2)
    Image.fromarray(np.zeros(size, np.uint8), mode).save(folder / "a.png")
    with pytest.raises(DataError, match=f"image mode {mode};") as e:
        load_dataset(str(folder))
    assert fix in str(e.value)


def test_eval_data_refuses_images_scaled_to_the_unit_interval(tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, (60, 1, 8, 8)).astype(np.uint8)
    data = tmp_path / "img.npy"
    np.save(data, x)
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", data, "--out", run, *TINY_GLOW)
    assert rc == 0, err
    scaled = tmp_path / "scaled.npy"
    np.save(scaled, (x / 255).astype(np.float32))
    rc, _, err = cli(capsys, "eval", run, "--data", scaled)
    one_line_error(rc, err, "fractions in [0, 1]", "numpy.rint(a * 255)")
    masks = tmp_path / "masks.npy"  # 0 and 1 only: scored, and said
    np.save(masks, (x > 127).astype(np.float32))
    rc, out, err = cli(capsys, "eval", run, "--data", masks)
    assert rc == 0, err
    assert "every value is 0 or 1" in err and "numpy.rint(a * 255)" in err
    # a folder of other images is said in images' words, not columns
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(rgb / f"{i}.png")
    rc, _, err = cli(capsys, "eval", run, "--data", rgb)
    one_line_error(rc, err, "8x8 RGB images (192 values each)", "takes 8x8 grayscale images")


def test_image_samples_are_written_as_integers_that_train_reads(tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, (60, 1, 8, 8)).astype(np.uint8)
    data = tmp_path / "img.npy"
    np.save(data, x)
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", data, "--out", run, *TINY_GLOW)[0] == 0
    out = tmp_path / "s.npy"
    rc, _, err = cli(capsys, "sample", run, "-n", 40, "--out", out)
    assert rc == 0, err
    s = np.load(out)
    assert s.dtype == np.uint8 and s.shape == (40, 1, 8, 8)
    again = tmp_path / "again"  # (a float32 file was refused by train: "scale and round them")
    rc, _, err = cli(capsys, "train", "--data", out, "--out", again, *TINY_GLOW)
    assert rc == 0, err
    # a run of fewer bits says what its samples' values are
    four = tmp_path / "four"
    rc, _, err = cli(capsys, "train", "--data", data, "--set", "data.bits=4", "--out", four,
                     *TINY_GLOW)  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "sample", four, "-n", 4, "--out", tmp_path / "s4.npy")
    assert rc == 0 and "the values are 4-bit, 0 to 15" in out, err


def test_odd_sizes_for_squeezing_models_say_what_takes_them(tmp_path, capsys):
    path = tmp_path / "odd.npy"
    np.save(
        path, np.zeros((30, 1, 7, 9), np.uint8) + np.arange(30, dtype=np.uint8)[:, None, None, None]
    )
    rc, _, err = cli(capsys, "train", "--data", path, "--out", tmp_path / "r", *TINY_GLOW)
    one_line_error(rc, err, "even height and width", "RealNVP or TarFlow")


def test_sample_grids_keep_strips_about_square():
    grid = image_grid(np.zeros((64, 1, 16, 1)))
    assert 0.5 < grid.shape[0] / grid.shape[1] < 2  # (one column of 64 strips: 8 x 136 before)
    assert image_grid(np.zeros((64, 8, 8, 1))).shape == (73, 73, 1)


def _classes(root, names=("cats", "dogs", "owls"), n=30):
    for c, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True)
        rng = np.random.default_rng(c)
        for i in range(n):
            a = rng.integers(0, 40, (8, 8)) + 60 * c
            Image.fromarray(a.astype(np.uint8), "L").save(d / f"{i}.png")
    return root


def test_a_folder_of_class_subfolders_trains_a_class_conditional_model(tmp_path, capsys):
    root = _classes(tmp_path / "pets")
    ds = load_dataset(str(root), conditional="label")
    assert ds.context_info["names"] == ["cats", "dogs", "owls"]
    assert ds.context_info["classes"] == [0, 1, 2]
    # each image's label is its subfolder's: the class means stand apart (60 per class)
    for k in ("train", "val", "test"):
        x, c = ds.split(k), ds.split_context(k).argmax(1)
        assert torch.all((x.mean((1, 2, 3)) - 60 * c - 19.5).abs() < 8), k
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", root, "--conditional", "label", "--out", run,
                     *TINY_GLOW)  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "sample", run, "--label", "dogs,0", "-n", 2, "--out",
                       tmp_path / "s.csv")  # fmt: skip
    assert rc == 0, err
    assert [r.split(",")[0] for r in (tmp_path / "s.csv").read_text().splitlines()[1:]] == [
        "1", "1", "0", "0"
    ]  # fmt: skip
    rc, _, err = cli(capsys, "sample", run, "--label", "horses", "-n", 2, "--out",
                     tmp_path / "h.csv")  # fmt: skip
    one_line_error(rc, err, "cats, dogs, owls")
    # eval --data: a folder of some of the classes, labelled by their names
    part = tmp_path / "part"
    (part / "owls").mkdir(parents=True)
    for f in sorted((root / "owls").iterdir())[:5]:
        (part / "owls" / f.name).write_bytes(f.read_bytes())
    rc, out, err = cli(capsys, "eval", run, "--data", part)
    assert rc == 0 and "(5 examples" in out, err
    (part / "horses").mkdir()
    (part / "horses" / "a.png").write_bytes((root / "owls" / "0.png").read_bytes())
    rc, _, err = cli(capsys, "eval", run, "--data", part)
    one_line_error(rc, err, "class subfolder 'horses' is not one of this run's classes")


def test_class_subfolders_that_cannot_be_classes_are_refused(tmp_path):
    one = _classes(tmp_path / "one", names=("cats",))
    with pytest.raises(DataError, match="needs one per class, at least two"):
        load_dataset(str(one), conditional="label")
    flat = _pngs(tmp_path / "flat", n=20)
    with pytest.raises(DataError, match="has no subfolders of images"):
        load_dataset(str(flat), conditional="label")
    with pytest.raises(DataError, match="--conditional label"):  # unconditional: the hint
        load_dataset(str(_classes(tmp_path / "three")))
    outside = _classes(tmp_path / "elsewhere", names=("x",))
    linked = _classes(tmp_path / "linked", names=("cats",))
    (linked / "dogs").symlink_to(outside / "x", target_is_directory=True)
    with pytest.raises(DataError, match="a link to a folder outside"):
        load_dataset(str(linked), conditional="label")


def test_numbered_class_folders_keep_their_numbers_and_hidden_ones_are_not_classes(tmp_path):
    root = _classes(tmp_path / "num", names=("1", "2", "10"))
    _classes(root / ".thumbs", names=("x",), n=3)  # (a hidden folder: no class)
    ds = load_dataset(str(root), conditional="label")
    # folders 1, 2, 10 are labels 1, 2, 10 (in name order they were 0, 1, 2: "1", "10", "2")
    assert ds.context_info["classes"] == [1, 2, 10]
    assert ds.context_info["names"] == ["1", "2", "10"]
    # each image under its own folder's label (_classes draws folder j's around 60 * j)
    x, c = ds.train, ds.split_context("train").argmax(1)
    assert torch.all((x.mean((1, 2, 3)) - 60 * c - 19.5).abs() < 8)


def test_the_few_images_note_counts_the_images_a_limit_keeps(tmp_path):
    folder = _pngs(tmp_path / "many", n=150)
    assert not [w for w in _warnings(load_dataset(str(folder))) if w.startswith("only ")]
    (note,) = [w for w in _warnings(load_dataset(str(folder), limit=10)) if w.startswith("only ")]
    assert note.startswith("only 10 training")


def test_an_8_bit_folder_of_two_values_is_not_taken_for_low_bit_pngs(tmp_path, capsys):
    folder = tmp_path / "masks"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):  # 8-bit PNGs of 0 and 255: their top 4 bits scale back exactly
        Image.fromarray((rng.random((8, 8)) > 0.5).astype(np.uint8) * 255, "L").save(
            folder / f"{i}.png"
        )
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", folder, "--set", "data.bits=4", "--out", run,
                     *TINY_GLOW)  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "compress", run, "--data", folder, "--out", tmp_path / "m.ffz")
    one_line_error(rc, err, "drop the 4 low bits")
