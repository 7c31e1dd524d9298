r"""The density-estimation benchmarks of the flow literature, read from their standard files.

``power``, ``gas``, ``hepmass``, ``miniboone`` and ``bsds300`` are prepared as the MAF paper's
code prepares them (Papamakarios et al. 2017, github.com/gpapamak/maf ``datasets/``; NSF and
FFJORD reuse that code): the same columns removed, the same noise, the same seeded shuffle,
the same train/validation/test splits and the same normalisation, so that a test NLL here is
minus the test log-likelihood the papers report, in nats per example. ``mnist`` and
``fashion-mnist`` are the 1x28x28 images of the idx files, 256 levels, the last sixth of the
training file (10,000 of 60,000 images) the validation split, the t10k file the test split.

Every file lives under one folder, the data option ``root`` (``--set data.root=DIR``), laid
out as the MAF data release unpacks (zenodo.org/record/1161203, ``data.tar.gz``):
``power/data.npy``, ``gas/ethylene_CO.txt``, ``hepmass/1000_train.csv`` and
``1000_test.csv``, ``miniboone/data.npy``, ``BSDS300/BSDS300.hdf5``, ``mnist/`` and
``fashion-mnist/`` (or torchvision's ``MNIST/raw/`` and ``FashionMNIST/raw/``). The option is
recorded in the run, so ``eval`` and a resume find the same files.

Untrusted files are data, never code: nothing is unpickled. The release's GAS file is a pandas
pickle of a random 25% of the UCI text file ``ethylene_CO.txt``; flowforge reads that text
file instead and draws its own seeded 25% (as many rows, not the same ones). Every read is
bounded by what the file's own size or header says, checked before anything is allocated.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

__all__ = ["FIXED_SPLITS", "NAMES", "loader"]

NAMES = ("power", "gas", "hepmass", "miniboone", "bsds300", "mnist", "fashion-mnist")

ZENODO = (
    "the MAF data release, https://zenodo.org/record/1161203 (data.tar.gz; data.root is the "
    "data/ folder it unpacks to)"
)
UCI_GAS = (
    "the UCI 'gas sensor array under dynamic gas mixtures' set, "
    "https://archive.ics.uci.edu/ml/datasets/gas+sensor+array+under+dynamic+gas+mixtures"
)
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/ or http://yann.lecun.com/exdb/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ or "
    "https://github.com/zalandoresearch/fashion-mnist (data/fashion/)",
}
# where each image set's idx files may be, under data.root: ours, then torchvision's
IMAGE_FOLDERS = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"),
}

FIXED_SPLITS = {
    name: (
        lambda seed, name=name: (
            f"{name} has a fixed split (the benchmark's own), so data.seed = "
            f"{seed} changes nothing: runs of different data seeds score the same examples"
        )
    )
    for name in NAMES
}

BLOCK_BYTES = 1 << 24  # a text file is parsed this many bytes of whole lines at a time
MAX_LINE = 1 << 16  # bytes of one line of a benchmark's text file (theirs are ~200)
MAX_IDX_ITEMS = 100_000  # images (or labels) one idx file may hold (MNIST's: 60,000)
MAX_HDF5_VALUES = 1 << 28  # values of one BSDS300 split (the real training split: 63 M)


def loader(name: str):
    """The :data:`~flowforge.workbench.data.DATASETS` entry of benchmark ``name``: a function
    ``(seed=0, root=None, **options) -> Dataset`` (``seed`` changes nothing: the split is the
    benchmark's)."""
    read = _READERS[name]

    def load(seed: int = 0, root=None, **options):
        from .data import Dataset, _no_options

        _no_options(name, options, ("root",))
        parts, shape, info = read(_root(name, root))
        t = [torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)) for p in parts]
        image = len(shape) == 3
        return Dataset(
            name, *t, shape=shape, levels=256 if image else None,
            kind="image" if image else "table", info=info,
        )  # fmt: skip

    load.__doc__ = f"The benchmark dataset {name!r} from the files under ``root``."
    return load


# -- where the files are -------------------------------------------------------------------------


def _root(name: str, root) -> Path:
    where = _EXPECTED[name]
    if root is None:
        raise DataError(
            f"{name} is read from files: give the folder that holds {where} with --set "
            f"data.root=DIR (from {_source(name)})"
        )
    if isinstance(root, os.PathLike):
        root = os.fspath(root)
    if not isinstance(root, str) or not root.strip():
        raise DataError(f"data.root must be a folder's path, got {root!r}")
    try:
        path = Path(root).expanduser()
    except RuntimeError:  # (~user of no such user)
        raise DataError(f"data.root {root}: no such user's home folder") from None
    if path.exists() and not path.is_dir():
        raise DataError(f"data.root {root} is a file, not a folder (it should hold {where})")
    if not path.is_dir():
        raise DataError(f"data.root {root}: no such folder (it should hold {where})")
    return path


def _source(name: str) -> str:
    if name in MIRRORS:
        return f"an MNIST mirror: {MIRRORS[name]}"
    if name == "gas":
        return f"{UCI_GAS} (data.zip)"
    return ZENODO


def _need(path: Path, name: str) -> Path:
    if not path.is_file():
        raise DataError(f"{name}: expected the file {path.absolute()}, not found; get it from "
                        f"{_source(name)}")  # fmt: skip
    return path


def _npy(path: Path, name: str, width: int, what: str) -> np.ndarray:
    """The 2-D array of ``.npy`` file ``path`` in float64, ``width`` columns (``what`` they are)."""
    from .data import _read_array  # (bounded, and never unpickles)

    a = _read_array(_need(path, name))
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[1] != width:
        shape = getattr(a, "shape", "no array")
        raise DataError(f"{path}: expected {width} columns ({what}), got an array of shape {shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{path}: expected numbers, got an array of dtype {a.dtype}")
    return _finite(a.astype(np.float64, copy=False), path)


def _finite(a: np.ndarray, path) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if len(bad):
        raise DataError(f"{path}: row {bad[0]} (0-based) holds a NaN or an infinity")
    return a


# -- the MAF paper's recipe ----------------------------------------------------------------------


def _tail_splits(a: np.ndarray, path) -> list[np.ndarray]:
    """The MAF code's split: the last 10% (rounded down) the test split, the last 10% of the
    rest the validation split, the rest (in file order) the training split."""
    n_test = int(0.1 * len(a))
    n_val = int(0.1 * (len(a) - n_test))
    if n_val < 1:
        raise DataError(f"{path}: {len(a)} rows; the benchmark's split needs at least 11")
    return [a[: len(a) - n_test - n_val], a[len(a) - n_test - n_val : len(a) - n_test],
            a[len(a) - n_test :]]  # fmt: skip


def _standardised(parts: list[np.ndarray], fit: np.ndarray, ddof: int, path) -> list[np.ndarray]:
    """Every split less ``fit``'s column means, over its standard deviations (``ddof`` 0 as
    numpy's default, 1 as pandas')."""
    with np.errstate(over="ignore", invalid="ignore"):
        mu, s = fit.mean(axis=0), fit.std(axis=0, ddof=ddof)
        out = [(p - mu) / s for p in parts]
    bad = ~(np.isfinite(mu) & np.isfinite(s))
    if bad.any():  # (values near float64's limit: their sums overflow)
        raise DataError(
            f"{path}: column {int(np.argmax(bad))} (0-based, as kept) holds values too large to "
            "standardise (its mean or spread overflows float64); not that file"
        )
    if not (s > 0).all():
        raise DataError(f"{path}: column {int(np.argmin(s))} (0-based, as kept) is constant")
    if not all(np.isfinite(p).all() for p in out):
        raise DataError(f"{path}: values too large to standardise; not that file")
    return out


POWER_COLUMNS = ["global_active_power", "voltage", "sub_metering_1", "sub_metering_2",
                 "sub_metering_3", "time"]  # fmt: skip


def _power(root: Path):
    """POWER: the 8 columns of ``power/data.npy`` (global active power, global reactive power,
    voltage, global intensity, the three sub-meterings, time) shuffled with
    ``RandomState(42)``; reactive power and intensity dropped; uniform noise of width 0.001
    (active power), 0.01 (voltage) and 1 (sub-meterings) added, drawn from the same generator
    after the shuffle (voltage's first); the tail splits, standardised with the statistics of
    train and validation together."""
    path = root / "power" / "data.npy"
    a = _npy(path, "power", 8, "POWER's 7 measurements and the time")
    rng = np.random.RandomState(42)  # (the legacy generator: its streams never change)
    # (the rows in the order rng.shuffle(a) leaves them: the same draws, one copy of a row
    # each rather than three, and rng where the shuffle leaves it)
    a = a[:, [0, 2, 4, 5, 6, 7]][rng.permutation(len(a))]
    n = len(a)
    voltage = 0.01 * rng.rand(n, 1)
    active = 0.001 * rng.rand(n, 1)
    meters = rng.rand(n, 3)
    a += np.hstack((active, voltage, meters, np.zeros((n, 1))))
    del voltage, active, meters
    parts = _tail_splits(a, path)
    fit = a[: len(parts[0]) + len(parts[1])]
    return _standardised(parts, fit, 0, path), (6,), {"columns": POWER_COLUMNS}


GAS_COLUMNS = 19  # time, CO and ethylene concentrations, 16 sensors
GAS_FRACTION = 0.25  # the share of the text file's rows the release's pickle holds
GAS_SEED = 1161203  # (flowforge's draw of that share: the pickle's own draw is not known)


GAS_KEPT = 8  # the sensor columns the papers' GAS keeps (its dimension)


def _gas(root: Path):
    """GAS: the 16 sensor columns of the UCI ``ethylene_CO.txt`` (time and the two
    concentrations dropped), a seeded random 25% of its rows in random order (the size of the
    release's pickle: 1,052,065 rows), each column of a pair correlated above 0.98 dropped in
    turn (the first column that has such a partner, until none has), standardised with the
    statistics of all rows (pandas' ``std``, ddof 1), then the tail splits."""
    folder = root / "gas"
    path = folder / "ethylene_CO.txt"
    if not path.is_file() and (folder / "ethylene_CO.pickle").exists():
        raise DataError(
            f"gas: flowforge never unpickles a file (a pickle can run code), so it does not read "
            f"{folder / 'ethylene_CO.pickle'}; put the UCI original ethylene_CO.txt, from which "
            f"that pickle was made, in {folder.absolute()} ({UCI_GAS}, data.zip)"
        )
    _need(path, "gas")
    with open(path, "rb") as f:
        offset, line = _skip_header(f, None)
        n = sum(sum(1 for r in b.split(b"\n") if r.strip()) for b in _blocks(f, path))
        k = round(GAS_FRACTION * n)  # (as pandas' sample(frac=0.25))
        order = np.random.RandomState(GAS_SEED).permutation(n)[:k]  # (in random order)
        slot = np.full(n, -1, dtype=np.int64)  # each row's place in the sample, or -1
        slot[order] = np.arange(k)
        del order
        a = np.empty((k, 16))
        f.seek(offset)
        row = 0
        for block in _parsed(f, path, None, GAS_COLUMNS, line):
            if row + len(block) > n:
                break
            at = slot[row : row + len(block)]
            a[at[at >= 0]] = block[at >= 0, 3:]
            row += len(block)
    if row != n:  # (the file changed between the two passes)
        raise DataError(f"{path}: its rows changed while it was read; is it being written?")
    del slot
    with np.errstate(invalid="ignore", divide="ignore"):  # (a constant column: NaN, kept)
        c = np.corrcoef(a, rowvar=False)
    keep = list(range(16))
    while True:
        partners = (c[np.ix_(keep, keep)] > 0.98).sum(axis=1)  # (itself included)
        over = np.flatnonzero(partners > 1)
        if not len(over):
            break
        del keep[over[0]]
    a = _standardised([a[:, keep]], a[:, keep], 1, path)[0]
    names = [f"sensor_{j + 1}" for j in keep]
    info: dict = {"columns": names}
    if len(keep) != GAS_KEPT:  # (the rows are flowforge's own 25%: a check that they compare)
        info["warnings"] = [
            f"gas: {len(keep)} sensor columns remain after the correlated ones are dropped, "
            f"not the {GAS_KEPT} of the papers' GAS: these rows do not make the papers' data "
            "set, and its figures do not compare"
        ]
    return _tail_splits(a, path), (len(keep),), info


def _hepmass(root: Path):
    """HEPMASS: the signal rows (label 1) of ``hepmass/1000_train.csv`` and ``1000_test.csv``,
    the label dropped and the test file's last column too (as the MAF code does); columns
    matched by their header names; standardised with the training file's statistics (ddof 1);
    every column whose smallest value appears more than 5 times in the training file dropped
    (the MAF code's test for "too many repeated values"); the last 10% of the training
    file's rows the validation split."""
    folder = root / "hepmass"
    tables = []
    for file in ("1000_train.csv", "1000_test.csv"):
        path = _need(folder / file, "hepmass")
        with open(path, "rb") as f:
            names = _header(f, path)
            rows = [b[b[:, 0] == 1] for b in _parsed(f, path, ",", len(names), 2, exact=False)]
        a = np.concatenate(rows) if rows else np.empty((0, len(names)))
        if not len(a):
            raise DataError(f"{path}: no signal rows (label 1) after its header")
        tables.append((names, a, path))
        del rows
    (train_names, train, train_path), (test_names, test, test_path) = tables
    for names, path in ((train_names, train_path), (test_names, test_path)):
        twice = next((c for c in names if names.count(c) > 1), None)
        if twice is not None:  # (its columns are matched by name)
            raise DataError(f"{path}: two columns named {twice!r}; not the HEPMASS file")
    train_names, train = train_names[1:], train[:, 1:]
    test_names, test = test_names[1:-1], test[:, 1:-1]
    keep = [j for j in range(train.shape[1]) if _smallest_count(train[:, j]) <= 5]
    if not keep:
        raise DataError(
            f"{train_path}: every column's smallest value repeats more than 5 times, so the "
            "MAF code's rule drops them all; not the HEPMASS file"
        )
    missing = [train_names[j] for j in keep if train_names[j] not in test_names]
    if missing:
        raise DataError(
            f"{test_path}: no column {missing[0]!r} (less its last column, as the MAF code "
            f"drops it), which {train_path.name} has"
        )
    where = [test_names.index(train_names[j]) for j in keep]
    train, test = _standardised([train[:, keep], test[:, where]], train[:, keep], 1, train_path)
    n_val = int(0.1 * len(train))
    if n_val < 1:
        raise DataError(f"{train_path}: {len(train)} signal rows; the split needs at least 10")
    parts = [train[: len(train) - n_val], train[len(train) - n_val :], test]
    return parts, (len(keep),), {"columns": [train_names[j] for j in keep]}


def _smallest_count(col: np.ndarray) -> int:
    """How many times ``col``'s smallest value appears in it."""
    return int(np.count_nonzero(col == col.min()))


def _miniboone(root: Path):
    """MINIBOONE: ``miniboone/data.npy`` as the release holds it (the MAF authors removed the
    outliers and the repeated-value columns before saving it: 43 columns), the tail splits,
    standardised with the statistics of train and validation together."""
    path = root / "miniboone" / "data.npy"
    a = _npy(path, "miniboone", 43, "the release's 43 MiniBooNE features")
    parts = _tail_splits(a, path)
    fit = a[: len(parts[0]) + len(parts[1])]
    return _standardised(parts, fit, 0, path), (43,), {"columns": None}


def _bsds300(root: Path):
    """BSDS300: the ``train``, ``validation`` and ``test`` arrays of ``BSDS300/BSDS300.hdf5``
    as they are (8x8 patches of the BSDS300 images less their mean, the last pixel dropped:
    63 columns)."""
    path = _need(root / "BSDS300" / "BSDS300.hdf5", "bsds300")
    try:
        import h5py
    except ImportError:
        raise DataError(
            "bsds300 reads BSDS300.hdf5 with h5py, which is not installed: pip install "
            "'flowforge[benchmarks-data]'"
        ) from None
    parts = []
    try:
        with h5py.File(path, "r") as f:
            for key in ("train", "validation", "test"):
                link = f.get(key, getlink=True)
                if not isinstance(link, h5py.HardLink):  # (an external link reads another file)
                    raise DataError(f"{path}: no array {key!r} in the file itself")
                ds = f[key]
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[1] != 63:
                    shape = getattr(ds, "shape", "a group")
                    raise DataError(f"{path}[{key!r}]: expected 63 columns, got {shape}")
                if ds.is_virtual or ds.dtype.kind != "f" or ds.size > MAX_HDF5_VALUES:
                    raise DataError(
                        f"{path}[{key!r}]: expected at most {MAX_HDF5_VALUES:,} floating-point "
                        f"values stored in the file, got {ds.size:,} of dtype {ds.dtype}"
                        + (" (virtual)" if ds.is_virtual else "")
                    )
                parts.append(_finite(np.asarray(ds[()], dtype=np.float32), f"{path}[{key!r}]"))
    except (OSError, RuntimeError, KeyError, ValueError) as e:  # (not HDF5, or damaged)
        why = " ".join(str(e).split())
        raise DataError(f"{path} is not a readable HDF5 file ({why})") from None
    return parts, (63,), {"columns": None}


def _images(name: str):
    def read(root: Path):
        """The idx files: the training file's last sixth the validation split (MNIST's last
        10,000 of 60,000), the t10k file the test split; labels where both label files are."""
        first = "train-images-idx3-ubyte"
        folders = [root / d for d in IMAGE_FOLDERS[name]]
        has = [d for d in folders if (d / first).is_file() or (d / f"{first}.gz").is_file()]
        folder = has[0] if has else None
        where = f"{root / IMAGE_FOLDERS[name][0]} (or {root / IMAGE_FOLDERS[name][1]})"
        found = {}
        for key in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte",
                    "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
            paths = [folder / f"{key}{s}" for s in ("", ".gz")] if folder else []
            found[key] = next((p for p in paths if p.is_file()), None)
        for key in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
            if found[key] is None:
                raise DataError(
                    f"{name}: expected {key} (or {key}.gz) in {where}, not found; get the idx "
                    f"files from {MIRRORS[name]}"
                )
        train = _idx(found["train-images-idx3-ubyte"], 3)
        test = _idx(found["t10k-images-idx3-ubyte"], 3)
        n_val = len(train) // 6
        if n_val < 1 or not len(test):
            raise DataError(f"{name}: {len(train)} training and {len(test)} test images; the "
                            "split needs at least 6 and 1")  # fmt: skip
        cut = len(train) - n_val
        parts = [train[:cut, None], train[cut:, None], test[:, None]]
        info: dict = {}
        if found["train-labels-idx1-ubyte"] and found["t10k-labels-idx1-ubyte"]:
            labels = []
            for key, images in (("train", train), ("t10k", test)):
                y = _idx(found[f"{key}-labels-idx1-ubyte"], 1)
                if len(y) != len(images) or (len(y) and y.max() > 9):
                    raise DataError(
                        f"{found[f'{key}-labels-idx1-ubyte']}: expected {len(images)} labels in "
                        f"0..9 (one per image), got {len(y)} in 0..{y.max() if len(y) else '-'}"
                    )
                labels.append(torch.from_numpy(y.astype(np.int64)))
            info["labels"] = {"train": labels[0][:cut], "val": labels[0][cut:], "test": labels[1]}
        return parts, (1, 28, 28), info

    return read


def _idx(path: Path, ndim: int) -> np.ndarray:
    """The unsigned bytes of idx file ``path`` (gzipped when its name ends ``.gz``) of
    ``ndim`` dimensions, 28x28 images or labels, the sizes its header gives checked against
    the file's before anything is allocated."""
    gz = path.suffix == ".gz"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
            if len(head) < 4 or head[:3] != b"\0\0\x08" or head[3] != ndim:
                kind = "images (magic 0x00000803)" if ndim == 3 else "labels (magic 0x00000801)"
                raise DataError(f"{path}: not an idx file of {kind}")
            if len(head) < 4 + 4 * ndim:
                raise DataError(f"{path}: truncated (it ends inside its header)")
            dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            if dims[1:] != [28, 28][: ndim - 1]:
                raise DataError(f"{path}: images of {dims[1]}x{dims[2]}, expected 28x28")
            need = math.prod(dims)
            what = f"{dims[0]:,} {'images' if ndim == 3 else 'labels'}"
            if not gz and path.stat().st_size != len(head) + need:
                raise DataError(
                    f"{path}: its header says {what} ({len(head) + need:,} bytes), but the file "
                    f"holds {path.stat().st_size:,}: truncated or not that file"
                )
            if dims[0] > MAX_IDX_ITEMS:  # (a small .gz may claim gigabytes: never unpacked)
                raise DataError(
                    f"{path}: its header says {what}, more than the {MAX_IDX_ITEMS:,} flowforge "
                    "reads from one MNIST file (MNIST's own hold 60,000 and 10,000)"
                )
            data = f.read(need)
            if len(data) != need or f.read(1):
                raise DataError(
                    f"{path}: its header says {what}, but it unpacks to "
                    f"{'fewer' if len(data) != need else 'more'} bytes: truncated or not that file"
                )
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable idx file ({' '.join(str(e).split())})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


# -- text tables, read in bounded blocks ---------------------------------------------------------


def _blocks(f, path: Path):
    """Whole lines of the open binary file ``f`` from where it is, about
    :data:`BLOCK_BYTES` at a time (the last line's newline added where the file has none)."""
    tail = b""
    while True:
        chunk = f.read(BLOCK_BYTES)
        if not chunk:
            break
        chunk = tail + chunk
        cut = chunk.rfind(b"\n") + 1
        if not cut and len(chunk) > MAX_LINE:
            raise DataError(f"{path}: a line longer than {MAX_LINE:,} bytes; not that file")
        tail = chunk[cut:]
        if cut:
            yield chunk[:cut]
    if tail:
        yield tail + b"\n"


def _fields(line: str, delimiter) -> list[str]:
    return [c.strip() for c in line.split(delimiter)] if delimiter else line.split()


def _numbers(cells: list[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return bool(cells)


def _skip_header(f, delimiter) -> tuple[int, int]:
    """Past the first line of ``f`` if it is not a row of numbers (a header); returns the
    offset the rows start at and their first line's number."""
    line = f.readline(MAX_LINE)
    if _numbers(_fields(line.decode("latin-1"), delimiter)):
        f.seek(0)
        return 0, 1
    return f.tell(), 2


def _header(f, path: Path) -> list[str]:
    """The column names of a CSV's first line (HEPMASS: ``# label,f0,...``)."""
    line = f.readline(MAX_LINE).decode("latin-1")
    names = _fields(line.rstrip("\r\n"), ",")
    if not line.endswith("\n") or _numbers(names) or len(names) < 3:
        raise DataError(
            f"{path}: expected a header line of column names first (# label,f0,f1,...), got "
            f"{line[:60]!r}"
        )
    return names


def _parsed(f, path: Path, delimiter, width: int, line: int, exact: bool = True):
    """The rows of ``f`` from where it is, as float64 arrays of ``width`` columns, a block at
    a time (``exact=False``: a row's fields past ``width`` are ignored, as pandas does with
    ``index_col=False``); ``line``: the first row's line number, for the messages."""
    for block in _blocks(f, path):
        try:
            text = block.decode("ascii")
            a = np.loadtxt(io.StringIO(text), delimiter=delimiter, comments=None, ndmin=2,
                           usecols=None if exact else range(width))  # fmt: skip
            if a.shape[1] != width or not np.isfinite(a).all():
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise DataError(_bad_line(block, path, delimiter, width, line, exact)) from None
        line += block.count(b"\n")
        if len(a):
            yield a


def _bad_line(block: bytes, path: Path, delimiter, width: int, line: int, exact: bool) -> str:
    """The message naming the first line of ``block`` that is not a row of ``width`` finite
    numbers."""
    for i, raw in enumerate(block.split(b"\n")):
        text = raw.decode("latin-1")
        cells = _fields(text, delimiter)
        if not text.strip():
            continue
        used = cells if exact else cells[:width]
        good = _numbers(used) and all(math.isfinite(float(c)) for c in used)
        if len(used) != width or not good or not raw.isascii():
            return (
                f"{path}, line {line + i}: expected {width} finite numbers "
                f"({'whitespace' if delimiter is None else 'comma'}-separated), got "
                f"{text[:80]!r}"
            )
    return f"{path}: not a table of {width} numbers a row near line {line}"


_EXPECTED = {
    "power": "power/data.npy",
    "gas": "gas/ethylene_CO.txt",
    "hepmass": "hepmass/1000_train.csv and hepmass/1000_test.csv",
    "miniboone": "miniboone/data.npy",
    "bsds300": "BSDS300/BSDS300.hdf5",
    "mnist": "mnist/ with train-images-idx3-ubyte(.gz) and t10k-images-idx3-ubyte(.gz)",
    "fashion-mnist": "fashion-mnist/ with train-images-idx3-ubyte(.gz) and "
    "t10k-images-idx3-ubyte(.gz)",
}
_READERS = {
    "power": _power,
    "gas": _gas,
    "hepmass": _hepmass,
    "miniboone": _miniboone,
    "bsds300": _bsds300,
    "mnist": _images("mnist"),
    "fashion-mnist": _images("fashion-mnist"),
}
