"""The benchmark datasets (power, gas, hepmass, miniboone, bsds300, mnist, fashion-mnist) on
small synthetic files of the real files' formats, made here: the MAF paper's preprocessing
(columns, noise, shuffle, splits, normalisation), the command line, and the one-line errors.

The expected values are derived here step by step from the MAF paper's recipe
(github.com/gpapamak/maf, ``datasets/*.py``), not from flowforge's code."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys

import numpy as np
import pytest

from cli_support import cli, one_line_error
from flowforge.workbench import benchmark_data
from flowforge.workbench.catalog import DATASET_NOTES
from flowforge.workbench.data import DATASETS, FIXED_SPLITS, DataError, load_dataset

HAS_H5PY = importlib.util.find_spec("h5py") is not None
TINY_MAF = ["--model", "maf", "--model-kwargs", '{"layers": 1, "hidden": [8]}', "--epochs", "1",
            "--no-progress", "--quiet"]  # fmt: skip


def _close(got, want):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def _tail(a):
    """The MAF code's split, written out: test the last 10%, val the last 10% of the rest."""
    n_test = int(0.1 * len(a))
    rest = a[: len(a) - n_test]
    n_val = int(0.1 * len(rest))
    return rest[: len(rest) - n_val], rest[len(rest) - n_val :], a[len(a) - n_test :]


# -- the files ---------------------------------------------------------------------------------


def _power(root, n=200):
    """power/data.npy: 8 columns, the last (time) a row number: the shuffle can be traced."""
    a = np.random.default_rng(1).normal(size=(n, 8)) * [1, 5, 3, 7, 2, 2, 2, 1]
    a[:, 7] = np.arange(n)
    (root / "power").mkdir(parents=True)
    np.save(root / "power" / "data.npy", a)
    return a


def _gas(root, n=400):
    """gas/ethylene_CO.txt: a header line, then time, two concentrations and 16 sensors, with
    sensor 2 = 2 x sensor 1, sensors 5, 6 and 7 alike, sensor 9 = -sensor 8 (anti-correlated:
    kept), all up to small noise."""
    rng = np.random.default_rng(2)
    s = rng.normal(size=(n, 16)) * 100 + 1000
    noise = rng.normal(size=(n, 16))
    s[:, 1] = 2 * s[:, 0] + noise[:, 1]
    s[:, 5] = s[:, 4] + noise[:, 5]
    s[:, 6] = 3 * s[:, 4] + noise[:, 6]
    s[:, 8] = -s[:, 7] + noise[:, 8]
    a = np.hstack([np.arange(n)[:, None] * 0.01, rng.integers(0, 600, (n, 2)), s.round(2)])
    (root / "gas").mkdir(parents=True)
    lines = ["Time (seconds), CO conc (ppm), Ethylene conc (ppm), Sensor readings (16 channels)"]
    lines += ["  ".join(f"{v:.2f}" for v in row) for row in a]
    (root / "gas" / "ethylene_CO.txt").write_text("\n".join(lines) + "\n")
    return a


# HEPMASS: 27 features after the label; f5 (a count) and f9, f13, f17, f21 (b-tags) are
# discrete, f3 holds its smallest value 6 times (dropped), f4 5 times (kept)
HEP_DROPPED = ["f3", "f5", "f9", "f13", "f17", "f21"]


def _hep_rows(rng, n):
    x = rng.normal(size=(n, 27)).round(6)
    x[:, 5] = rng.integers(1, 5, n)
    for j in (9, 13, 17, 21):
        x[:, j] = rng.integers(0, 2, n) * 2.0 - 0.5
    label = np.where(np.arange(n) % 3 == 0, 0.0, 1.0)  # (a third background, dropped)
    signal = np.flatnonzero(label == 1)
    x[signal[:6], 3] = -9.0
    x[signal[:5], 4] = -8.0
    return np.hstack([label[:, None], x])


def _hepmass(root, train_mass=False):
    """hepmass/1000_train.csv and 1000_test.csv: a header line ``# label,f0,...,f26`` and a
    ``mass`` column the MAF code drops from the test file (``train_mass``: the training file
    has it too, 1000 in every signal row, so that the repeated-value rule drops it)."""
    rng = np.random.default_rng(3)
    (root / "hepmass").mkdir(parents=True)
    out = {}
    for file, n, mass in (("1000_train.csv", 240, train_mass), ("1000_test.csv", 90, True)):
        a = _hep_rows(rng, n)
        names = ["# label"] + [f"f{j}" for j in range(27)]
        if mass:
            a = np.hstack([a, np.where(a[:, :1] == 1, 1000.0, 750.0)])
            names.append("mass")
        text = ",".join(names) + "\n" + "".join(",".join(f"{v:g}" for v in r) + "\n" for r in a)
        (root / "hepmass" / file).write_text(text)
        out[file] = a
    return out["1000_train.csv"], out["1000_test.csv"]


def _miniboone(root, n=150):
    a = np.random.default_rng(4).normal(size=(n, 43)) * np.arange(1, 44)
    (root / "miniboone").mkdir(parents=True)
    np.save(root / "miniboone" / "data.npy", a)
    return a


def _idx(path, a: np.ndarray, gz=False):
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    data = head + a.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _mnist(root, folder="mnist", n_train=60, n_test=12, labels=True):
    rng = np.random.default_rng(5)
    d = root / folder
    d.mkdir(parents=True)
    images = {
        k: rng.integers(0, 256, (n, 28, 28)) for k, n in (("train", n_train), ("t10k", n_test))
    }
    ys = {k: rng.integers(0, 10, len(v)) for k, v in images.items()}
    _idx(d / "train-images-idx3-ubyte", images["train"])
    _idx(d / "t10k-images-idx3-ubyte.gz", images["t10k"], gz=True)
    if labels:
        _idx(d / "train-labels-idx1-ubyte.gz", ys["train"], gz=True)
        _idx(d / "t10k-labels-idx1-ubyte", ys["t10k"])
    return images, ys


# -- registration --------------------------------------------------------------------------------


def test_the_names_are_registered_with_notes_and_fixed_splits():
    for name in benchmark_data.NAMES:
        assert name in DATASETS and name in DATASET_NOTES and name in FIXED_SPLITS
        assert "data.root" in DATASET_NOTES[name]


# -- the preprocessing -------------------------------------------------------------------------


def test_power_is_shuffled_noised_split_and_standardised_as_the_maf_code_does(tmp_path):
    raw = _power(tmp_path)
    ds = load_dataset("power", root=str(tmp_path))
    # the recipe, step by step: shuffle with RandomState(42), drop columns 3 then 1, noise
    # drawn from the same generator (voltage's first), the tail splits, train+val statistics
    rng = np.random.RandomState(42)
    a = raw.copy()
    rng.shuffle(a)
    a = np.delete(np.delete(a, 3, axis=1), 1, axis=1)
    voltage, active, meters = 0.01 * rng.rand(200, 1), 0.001 * rng.rand(200, 1), rng.rand(200, 3)
    a = a + np.hstack([active, voltage, meters, np.zeros((200, 1))])
    parts = _tail(a)
    fit = np.vstack(parts[:2])
    mu, s = fit.mean(0), fit.std(0)
    assert [tuple(ds.split(k).shape) for k in ("train", "val", "test")] == [(162, 6), (18, 6),
                                                                            (20, 6)]  # fmt: skip
    for k, p in zip(("train", "val", "test"), parts):
        _close(ds.split(k), (p - mu) / s)
    # the time column (no noise) traces the rows: train, val and test in the shuffled order
    order = np.concatenate([ds.split(k)[:, 5].numpy() for k in ("train", "val", "test")])
    np.testing.assert_array_equal(np.rint(order * s[5] + mu[5]), np.random.RandomState(42)
                                  .permutation(200))  # fmt: skip
    both = np.vstack([ds.train.numpy(), ds.val.numpy()])
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-5)
    assert ds.shape == (6,) and ds.levels is None and ds.stats is None and ds.kind == "table"
    assert ds.info["columns"][0] == "global_active_power"


def test_gas_reads_the_uci_text_drops_correlated_sensors_and_standardises_all_rows(tmp_path):
    raw = _gas(tmp_path)
    ds = load_dataset("gas", root=str(tmp_path))
    # a seeded 25% of the rows, in random order; sensors 1, 5 and 6 dropped (1 with 2; 5 with
    # 6 and 7, then 6 with 7), the anti-correlated 8 and 9 kept
    keep = [j for j in range(16) if j not in (0, 4, 5)]
    assert ds.info["columns"] == [f"sensor_{j + 1}" for j in keep]
    # 13 columns, not the papers' 8: these rows are not the papers' GAS, and that is said
    assert any("not the 8 of the papers' GAS" in w for w in ds.info["warnings"])
    rows = np.random.RandomState(benchmark_data.GAS_SEED).permutation(400)[:100]
    a = raw[rows][:, 3:][:, keep]
    a = (a - a.mean(0)) / a.std(0, ddof=1)  # (all rows, pandas' ddof 1, before the split)
    parts = _tail(a)
    assert [len(p) for p in parts] == [81, 9, 10]
    for k, p in zip(("train", "val", "test"), parts):
        _close(ds.split(k), p)


@pytest.mark.parametrize("train_mass", [False, True], ids=["no-mass", "mass"])
def test_hepmass_keeps_signal_rows_and_drops_repeated_value_features(tmp_path, train_mass):
    train, test = _hepmass(tmp_path, train_mass)
    ds = load_dataset("hepmass", root=str(tmp_path))
    names = [f"f{j}" for j in range(27)]
    keep = [j for j, c in enumerate(names) if c not in HEP_DROPPED]
    assert ds.info["columns"] == [names[j] for j in keep]  # (21, as the real data's)
    x = train[train[:, 0] == 1][:, 1:28]
    mu, s = x.mean(0), x.std(0, ddof=1)  # (the whole training file's signal rows)
    x = ((x - mu) / s)[:, keep]
    n_val = int(0.1 * len(x))
    t = test[test[:, 0] == 1][:, 1:28]
    assert (len(x) - n_val, n_val, len(t)) == (144, 16, 60)
    _close(ds.train, x[:-n_val])
    _close(ds.val, x[-n_val:])
    _close(ds.test, ((t - mu) / s)[:, keep])


def test_miniboone_is_split_in_file_order_and_standardised_with_train_and_val(tmp_path):
    raw = _miniboone(tmp_path)
    ds = load_dataset("miniboone", root=str(tmp_path))
    parts = _tail(raw)
    fit = np.vstack(parts[:2])
    assert [len(p) for p in parts] == [122, 13, 15] and ds.shape == (43,)
    for k, p in zip(("train", "val", "test"), parts):
        _close(ds.split(k), (p - fit.mean(0)) / fit.std(0))


@pytest.mark.skipif(not HAS_H5PY, reason="h5py is not installed (flowforge[benchmarks-data])")
def test_bsds300_reads_the_three_arrays_as_they_are(tmp_path):
    import h5py

    rng = np.random.default_rng(6)
    arrays = {k: rng.normal(size=(n, 63)).astype(np.float32)
              for k, n in (("train", 50), ("validation", 10), ("test", 20))}  # fmt: skip
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for k, v in arrays.items():
            f[k] = v
    ds = load_dataset("bsds300", root=str(tmp_path))
    for k, key in (("train", "train"), ("val", "validation"), ("test", "test")):
        np.testing.assert_array_equal(ds.split(k).numpy(), arrays[key])
    # an array that only links to another file is not read
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "a") as f:
        del f["test"]
        f["test"] = h5py.ExternalLink("other.hdf5", "/test")
    with pytest.raises(DataError, match="no array 'test' in the file itself"):
        load_dataset("bsds300", root=str(tmp_path))


def test_bsds300_without_h5py_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "BSDS300").mkdir()
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)  # (import h5py: ImportError)
    with pytest.raises(DataError, match=r"pip install 'flowforge\[benchmarks-data\]'"):
        load_dataset("bsds300", root=str(tmp_path))


@pytest.mark.parametrize(
    "name, folder", [("mnist", "mnist"), ("fashion-mnist", "FashionMNIST/raw")]
)
def test_mnist_idx_files_give_256_level_images_and_the_last_sixth_validates(tmp_path, name,
                                                                             folder):  # fmt: skip
    images, ys = _mnist(tmp_path, folder)
    ds = load_dataset(name, root=str(tmp_path))
    assert ds.shape == (1, 28, 28) and ds.levels == 256 and ds.kind == "image"
    np.testing.assert_array_equal(ds.train.numpy()[:, 0], images["train"][:50])
    np.testing.assert_array_equal(ds.val.numpy()[:, 0], images["train"][50:])
    np.testing.assert_array_equal(ds.test.numpy()[:, 0], images["t10k"])
    labels = ds.info["labels"]
    np.testing.assert_array_equal(labels["val"].numpy(), ys["train"][50:])
    np.testing.assert_array_equal(labels["test"].numpy(), ys["t10k"])


def test_mnist_labels_are_optional(tmp_path):
    _mnist(tmp_path, labels=False)
    assert "labels" not in load_dataset("mnist", root=str(tmp_path)).info


# -- the command line --------------------------------------------------------------------------


def test_train_eval_and_resume_on_a_benchmark(tmp_path, capsys):
    _power(tmp_path / "data", n=300)
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", "power", "--set", f"data.root={tmp_path / 'data'}",
                     "--out", run, *TINY_MAF)  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["options"] == {"root": str(tmp_path / "data")}
    assert cfg["resolved"]["data_fingerprint"]["shapes"][:3] == [[243, 6], [27, 6], [30, 6]]
    rc, out, err = cli(capsys, "eval", run, "--split", "test")
    assert rc == 0, err
    assert out.startswith("test NLL ") and "nats/example (30 examples)" in out
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    assert rc == 0, err  # (the data read again, its fingerprint the run's)
    # (an audit) outputs never go under data.root, where they could replace the run's files
    before = (tmp_path / "data" / "power" / "data.npy").read_bytes()
    for args in (("sample", run, "-n", 5, "--out", tmp_path / "data" / "power" / "data.npy"),
                 ("eval", run, "--scores", tmp_path / "data" / "power" / "data.npy")):  # fmt: skip
        rc, _, err = cli(capsys, *args, "--overwrite")
        one_line_error(rc, err, "is inside", "the data.root this run's benchmark files")
    assert (tmp_path / "data" / "power" / "data.npy").read_bytes() == before
    # one value changed since: eval refuses rather than score other data
    raw = np.load(tmp_path / "data" / "power" / "data.npy")
    raw[0, 0] += 1
    np.save(tmp_path / "data" / "power" / "data.npy", raw)
    rc, _, err = cli(capsys, "eval", run, "--split", "test")
    one_line_error(rc, err, "not the data")


def test_train_on_mnist_files(tmp_path, capsys):
    _mnist(tmp_path / "data")
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", "mnist", "--set", f"data.root={tmp_path / 'data'}",
                     "--layout", "vector", "--limit", 16, "--batch-size", 16, "--out", run,
                     *TINY_MAF)  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", run, "--split", "test")
    assert rc == 0, err
    assert out.startswith("test NLL ") and "bits/dim" in out


# -- the one-line errors -------------------------------------------------------------------------


def test_a_missing_root_says_which_option_and_where_to_get_the_files(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--data", "hepmass", "--out", tmp_path / "r", *TINY_MAF)
    one_line_error(
        rc, err, "--set data.root=DIR", "hepmass/1000_train.csv", "zenodo.org/record/1161203"
    )
    nowhere = tmp_path / "nowhere"
    rc, _, err = cli(capsys, "train", "--data", "power", "--set", f"data.root={nowhere}",
                     "--out", tmp_path / "r", *TINY_MAF)  # fmt: skip
    one_line_error(rc, err, "data.root", "no such folder")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "name, expected, source",
    [
        ("power", "power/data.npy", "zenodo.org/record/1161203"),
        ("miniboone", "miniboone/data.npy", "zenodo.org/record/1161203"),
        ("hepmass", "hepmass/1000_train.csv", "zenodo.org/record/1161203"),
        ("bsds300", "BSDS300/BSDS300.hdf5", "zenodo.org/record/1161203"),
        ("gas", "gas/ethylene_CO.txt", "archive.ics.uci.edu"),
        ("mnist", "train-images-idx3-ubyte", "ossci-datasets.s3.amazonaws.com/mnist"),
        ("fashion-mnist", "train-images-idx3-ubyte", "fashion-mnist"),
    ],
)
def test_a_missing_file_names_where_it_was_expected(tmp_path, capsys, name, expected, source):
    rc, _, err = cli(capsys, "train", "--data", name, "--set", f"data.root={tmp_path}",
                     "--out", tmp_path / "r", *TINY_MAF)  # fmt: skip
    one_line_error(rc, err, str(tmp_path), expected, source)


def test_the_gas_pickle_is_refused_unread(tmp_path, capsys):
    (tmp_path / "gas").mkdir()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"\x80\x04cos\nsystem\n.")
    rc, _, err = cli(capsys, "train", "--data", "gas", "--set", f"data.root={tmp_path}",
                     "--out", tmp_path / "r", *TINY_MAF)  # fmt: skip
    one_line_error(rc, err, "never unpickles", "ethylene_CO.pickle", "ethylene_CO.txt")


def test_a_truncated_idx_file_is_refused_before_it_is_read(tmp_path, capsys):
    _mnist(tmp_path)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    rc, _, err = cli(capsys, "train", "--data", "mnist", "--set", f"data.root={tmp_path}",
                     "--out", tmp_path / "r", *TINY_MAF)  # fmt: skip
    one_line_error(rc, err, "its header says 60 images", "truncated")
    # a header that promises billions of images, in a gzip of a few bytes: not unpacked
    gz = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(
        gzip.compress(bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") + bytes([0, 0, 0, 28]) * 2)
    )
    path.unlink()
    _idx(path, np.zeros((60, 28, 28)))
    with pytest.raises(DataError, match="more than the 100,000 flowforge reads"):
        load_dataset("mnist", root=str(tmp_path))
    # (an audit) a gzip bomb within that: 100,001 images of zeros in a file of about 80 KB
    gz.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + (100_001).to_bytes(4, "big")
                                 + bytes([0, 0, 0, 28]) * 2 + bytes(100_001 * 784)))  # fmt: skip
    assert gz.stat().st_size < 200_000
    with pytest.raises(DataError, match="more than the 100,000 flowforge reads"):
        load_dataset("mnist", root=str(tmp_path))
    gz.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes(5)))
    with pytest.raises(DataError, match="not an idx file of images"):
        load_dataset("mnist", root=str(tmp_path))


def test_damaged_tables_are_named_by_line(tmp_path):
    _gas(tmp_path)
    path = tmp_path / "gas" / "ethylene_CO.txt"
    lines = path.read_text().splitlines()
    lines[7] = lines[7].rsplit(" ", 1)[0]  # (18 numbers)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ethylene_CO.txt, line 8: expected 19 finite numbers"):
        load_dataset("gas", root=str(tmp_path))
    _hepmass(tmp_path)
    path = tmp_path / "hepmass" / "1000_test.csv"
    path.write_text(path.read_text().replace("f26,mass", "f26"))  # (no column left to drop)
    with pytest.raises(DataError, match="no column 'f26'"):
        load_dataset("hepmass", root=str(tmp_path))
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", np.zeros((50, 7)))
    with pytest.raises(DataError, match=r"expected 8 columns .* shape \(50, 7\)"):
        load_dataset("power", root=str(tmp_path))


def test_other_options_and_a_seed_are_said(tmp_path):
    _miniboone(tmp_path)
    with pytest.raises(DataError, match="does not apply to dataset 'miniboone' .it takes root"):
        load_dataset("miniboone", root=str(tmp_path), val_fraction=0.2)
    ds = load_dataset("miniboone", seed=3, root=str(tmp_path))
    assert any("data.seed = 3 changes nothing" in w for w in ds.info["warnings"])
    np.testing.assert_array_equal(ds.test.numpy(), load_dataset("miniboone", root=str(tmp_path))
                                  .test.numpy())  # fmt: skip


def test_values_too_large_to_standardise_are_one_line(tmp_path):
    # (an audit: a column of +-1e308 gave numpy's "Eigenvalues did not converge", one of 1e200
    # that varies was called constant)
    a = np.random.default_rng(0).normal(size=(300, 43))
    a[:, 4] *= 1e200
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", a)
    with pytest.raises(DataError, match=r"column 4 \(0-based, as kept\) holds values too large"):
        load_dataset("miniboone", root=str(tmp_path))
