r"""Datasets for the workbench: a small registry plus user files.

``load_dataset(spec, seed=0, **options)`` returns a :class:`Dataset` with raw ``train``, ``val``
and ``test`` tensors. ``spec`` is a registered name (``digits``, the 2-D toys, the benchmarks
of :mod:`.benchmark_data` read from files under ``root``) or a path: a
``.npy`` / ``.npz`` / ``.csv`` table (rows are examples) or a folder of PNG/JPEG images.

Units. Data stays on its own scale here. Discrete data (digits, images, tables given
``levels``) carries ``levels`` so the flow dequantizes and reports raw-scale likelihoods.
Continuous tables are standardised by default with statistics of the training split
(``Dataset.stats``); the trainer puts them into the run so that
``ff.load(run)`` scores raw data. The 2-D toys are not standardised: the
generators already put them in roughly ``[-4, 4]^2``.
"""

from __future__ import annotations

import array
import csv
import functools
import math
import os
import re
import stat
import sys
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._util import all_finite, suggest
from . import benchmark_data, manifold_data, toy_density
from .catalog import DATASET_NOTES
from .errors import ContextError, DataError, WorkbenchError, in_memory_data, shell_word, visible

__all__ = [
    "DATASETS",
    "Dataset",
    "ContextError",
    "DataError",
    "WorkbenchError",
    "column_context",
    "label_context",
    "make_conditional",
    "load_dataset",
    "read_examples",
    "read_run_table",
    "read_labelled",
    "reload_dataset",
    "read_table",
    "TOYS",
]


@dataclass
class Dataset:
    """Raw data split three ways.

    Attributes:
        name: the registered name or the path it was read from.
        train, val, test: float32 tensors ``(N, *shape)`` on the data's own scale.
        shape: one example's shape, ``(D,)`` for tables and points, ``(C, H, W)`` for images.
        levels: number of discrete levels (17 for digits, ``2**bits`` for images) or None.
        kind: ``"image"``, ``"points"`` (2-D toys) or ``"table"``.
        stats: ``{"loc": [...], "scale": [...]}`` from the training split if the data is to be
            standardised, else None.
        density: for synthetic data, the true log-density, ``(n, D)`` array -> ``(n,)`` float64
            (``eval`` prints the gap to it); ``density_measure`` says with respect to what:
            ``"lebesgue"`` (the data's coordinates, angles included), ``"sphere"`` (area on
            the unit sphere: only a sphere flow's density is comparable) or ``"surface"`` (area
            on an embedded surface: an M-flow's).
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    shape: tuple[int, ...]
    levels: int | None = None
    kind: str = "table"
    stats: dict | None = None
    info: dict = field(default_factory=dict)
    # conditional data: the model-ready context of each split, and how to make one
    context: dict | None = None
    context_info: dict | None = None
    density: Callable[[np.ndarray], np.ndarray] | None = None
    density_measure: str = "lebesgue"

    def __repr__(self) -> str:  # (the splits' sizes, not their values)
        sizes = " / ".join(str(len(self.split(k))) for k in ("train", "val", "test"))
        levels = f", levels={self.levels}" if self.levels else ""
        kind = (self.context_info or {}).get("kind", "given")
        context = "" if self.context is None else f", context={kind}"
        return (
            f"Dataset({self.name!r}, {self.kind}, shape={tuple(self.shape)}{levels}, "
            f"train / val / test = {sizes}{context})"
        )

    def split(self, name: str) -> Tensor:
        if name not in ("train", "val", "test"):
            case = " (in lower case)" if str(name).lower() in ("train", "val", "test") else ""
            raise DataError(f"unknown split {name!r}; expected train, val or test{case}")
        return getattr(self, name)

    def split_context(self, name: str) -> Tensor | None:
        """The context rows of split ``name`` (None for unconditional data)."""
        self.split(name)
        return None if self.context is None else self.context[name]

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


def _no_such_file(spec) -> str:
    """The refusal of a data name that names nothing, with a name's stray white space made
    visible (a pasted `` data.csv`` reads like ``data.csv``)."""
    text = str(spec)
    stray = text != text.strip() or any(c in text for c in "\t\n\r")
    return f"no such file or folder: {text!r}" if stray else f"no such file or folder: {text}"


def user_path(spec) -> Path:
    """``spec`` as a path, ``~`` and ``~user`` expanded as a shell does them; a name that only
    starts with ``~`` (a backup's ``~data.csv``, where no user ``data.csv`` has a home) is taken
    as it is."""
    path = Path(spec)
    try:
        home = path.expanduser()
    except RuntimeError:  # (no such user)
        return path
    return home if home.exists() or not path.exists() else path


# -- 2-D toys ------------------------------------------------------------------------------------


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    k = rng.integers(0, 2, n)
    t = rng.uniform(0, math.pi, n)
    x = np.where(k == 0, np.cos(t), 1 - np.cos(t))
    y = np.where(k == 0, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x - 0.5, y - 0.25], 1) * 2.0
    return pts + rng.normal(0, 0.1, (n, 2))


def _circles(rng, n):
    r = np.where(rng.integers(0, 2, n) == 0, 1.0, 2.0)
    t = rng.uniform(0, 2 * math.pi, n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1) + rng.normal(0, 0.08, (n, 2))


def _8gaussians(rng, n):
    a = rng.integers(0, 8, n) * (math.pi / 4)
    centres = 2.0 * np.stack([np.cos(a), np.sin(a)], 1)
    return centres + rng.normal(0, 0.15, (n, 2))


def _checkerboard(rng, n):
    # a 4x4 board on [-2, 2]^2; points fall in the cells with (row + col) even
    row = rng.integers(0, 4, n)
    col = 2 * rng.integers(0, 2, n) + row % 2
    u = rng.uniform(0, 1, (n, 2))
    return np.stack([col + u[:, 0], row + u[:, 1]], 1) - 2.0


def _pinwheel(rng, n, arms=5):
    arm = rng.integers(0, arms, n)
    r = rng.normal(1.0, 0.3, n)  # radial position along the arm
    tangential = rng.normal(0, 0.05, n)
    angle = arm * (2 * math.pi / arms) + 0.25 * np.exp(r)
    c, s = np.cos(angle), np.sin(angle)
    return 1.5 * np.stack([c * r - s * tangential, s * r + c * tangential], 1)


def _2spirals(rng, n):
    t = np.sqrt(rng.uniform(0, 1, n)) * 3 * math.pi
    sign = np.where(rng.integers(0, 2, n) == 0, 1.0, -1.0)
    pts = sign[:, None] * np.stack([t * np.cos(t), t * np.sin(t)], 1) / 3.0
    return pts + rng.normal(0, 0.1, (n, 2))


def _rings(rng, n):
    r = rng.integers(1, 5, n) * 0.75
    t = rng.uniform(0, 2 * math.pi, n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1) + rng.normal(0, 0.06, (n, 2))


def _swissroll(rng, n):
    t = 1.5 * math.pi * (1 + 2 * rng.uniform(0, 1, n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 4.0
    return pts + rng.normal(0, 0.1, (n, 2))


TOYS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "moons": _moons,
    "circles": _circles,
    "8gaussians": _8gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _2spirals,
    "rings": _rings,
    "swissroll": _swissroll,
}


# the memory a synthetic dataset may take to draw: the generators compute in float64 and hold
# up to 12 times the float32 result at their peak (tracemalloc: sphere-vmf 12, pinwheel 10,
# moons 8, the other toys 4-7), counted as 16 (64 bytes a value): 2^24 values in 1 GiB
MAX_DRAW_BYTES = 1 << 30
DRAW_BYTES_PER_VALUE = 16 * 4
MAX_DRAWN_VALUES = MAX_DRAW_BYTES // DRAW_BYTES_PER_VALUE


def _draw_splits(name: str, draw, seed: int, sizes) -> list[Tensor]:
    """Train, validation and test draws of a synthetic dataset, as float32 tensors: one
    independent stream per split, so changing ``n_train`` leaves val and test unchanged."""
    for key, k in zip(("n_train", "n_val", "n_test"), sizes):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError(f"data option {key} must be an integer >= 1, got {k!r}")
    columns = np.asarray(draw(np.random.default_rng(0), 1)).size  # values per example
    if sum(sizes) * columns > MAX_DRAWN_VALUES:
        raise DataError(
            f"{name}: {sum(sizes):,} examples of {columns} values are more than the "
            f"{MAX_DRAWN_VALUES:,} values flowforge draws for a synthetic dataset (drawing "
            "them takes up to 64 bytes a value, and at most 1 GiB)"
        )
    seqs = np.random.SeedSequence([int(seed), sum(map(ord, name))]).spawn(3)
    return [
        torch.from_numpy(np.asarray(draw(np.random.default_rng(s), int(k)), dtype=np.float32))
        for s, k in zip(seqs, sizes)
    ]


def _toy(name: str):
    def load(
        seed: int = 0, n_train: int = 5000, n_val: int = 1000, n_test: int = 1000, **options
    ) -> Dataset:
        _no_options(name, options, _TOY_OPTIONS)
        parts = _draw_splits(name, TOYS[name], seed, (n_train, n_val, n_test))
        density = functools.partial(toy_density.log_prob, name)
        return Dataset(name, *parts, shape=(2,), kind="points", density=density)

    return load


def _digits(seed: int = 0, **options) -> Dataset:
    _no_options("digits", options)
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.data.astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(digits.target.astype(np.int64))
    labels = {"train": y[:1000], "val": y[1000:1350], "test": y[1350:]}
    return Dataset(
        "digits",
        x[:1000],
        x[1000:1350],
        x[1350:],
        (1, 8, 8),
        levels=17,
        kind="image",
        info={"labels": labels},
    )


# the built-in datasets whose split is fixed, data.seed or not: what a seed is said to do
FIXED_SPLITS = {
    "digits": lambda seed: (
        f"digits has a fixed split (the tutorial's: its first 1,000 images train, the next 350 "
        f"validate, the last 447 test), so data.seed = {seed} changes nothing: runs of "
        "different data seeds score the same images"
    ),
    **benchmark_data.FIXED_SPLITS,  # (power, gas, ..., mnist: the benchmarks' own splits)
}


_TOY_OPTIONS = ("n_train", "n_val", "n_test")
_TABLE_OPTIONS = ("val_fraction", "test_fraction", "shuffle", "levels", "standardize", "header",
                  "bounds", "integers", "whiten")  # fmt: skip
_IMAGE_OPTIONS = ("bits", "val_fraction", "test_fraction", "shuffle")


def _no_options(name: str, options: dict, valid=()) -> None:
    """``DataError`` for the first of ``options`` that the dataset ``name`` does not take
    (``valid``: those it takes), with the close matches among them."""
    if options:
        bad = sorted(options)[0]
        kind = Path(name).name if Path(name).suffix or os.sep in name else name
        if bad in (*_TOY_OPTIONS, *_TABLE_OPTIONS, *_IMAGE_OPTIONS):  # another kind's option
            takes = f"it takes {', '.join(valid)}" if valid else "it takes no options"
            raise DataError(f"data option {bad!r} does not apply to dataset {kind!r} ({takes})")
        if not valid:
            raise DataError(f"unknown data option {bad!r}: dataset {kind!r} takes no options")
        raise DataError(
            f"unknown data option {bad!r}{suggest(bad, valid)} (dataset {kind!r} takes "
            f"{', '.join(valid)})"
        )


def _manifold(name: str):
    def load(
        seed: int = 0, n_train: int = 20000, n_val: int = 5000, n_test: int = 10000, **options
    ) -> Dataset:
        _no_options(name, options, _TOY_OPTIONS)
        draw = functools.partial(manifold_data.sample, name)
        parts = _draw_splits(name, draw, seed, (n_train, n_val, n_test))
        shape = tuple(parts[0].shape[1:])
        # angles: plots stay inside their domain
        info = {"box": [[-math.pi, math.pi]] * shape[0]} if name.endswith("vonmises") else {}
        return Dataset(
            name,
            *parts,
            shape=shape,
            kind="points",
            info=info,
            density=functools.partial(manifold_data.log_prob, name),
            density_measure={"sphere-vmf": "sphere", "surface-64": "surface"}.get(name, "lebesgue"),
        )

    return load


DATASETS: dict[str, tuple[Callable[..., Dataset], str]] = {
    "digits": (_digits, DATASET_NOTES["digits"]),
    **{k: (_toy(k), DATASET_NOTES[k]) for k in TOYS},
    **{k: (_manifold(k), DATASET_NOTES[k]) for k in manifold_data.DATASET_NAMES},
    **{k: (benchmark_data.loader(k), DATASET_NOTES[k]) for k in benchmark_data.NAMES},
}


# -- user files ------------------------------------------------------------------------------


def _rows(idx, base: int = 0, limit: int = 8) -> str:
    idx = [int(i) + base for i in idx]
    s = ", ".join(map(str, idx[:limit]))
    return s + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


CHUNK_ROWS = 1 << 16  # rows a check looks at at once: its temporaries stay that size
CHUNK_VALUES = 1 << 22  # values a chunk of a wide table holds at most (32 MiB in float64)


def _chunk_rows(width: int) -> int:
    """Rows of a table ``width`` columns wide to look at at once: :data:`CHUNK_ROWS`, fewer
    for a wide table, so that a chunk's float64 temporaries stay near 32 MiB."""
    return max(1, min(CHUNK_ROWS, CHUNK_VALUES // max(int(width), 1)))


def _bad_rows(a: np.ndarray, bad) -> np.ndarray:
    """The indices of the rows of a table where ``bad(chunk)`` (elementwise) holds anywhere,
    looked at a chunk of rows at a time."""
    hits = [
        i + np.flatnonzero(bad(a[i : i + CHUNK_ROWS]).any(axis=1))
        for i in range(0, len(a), CHUNK_ROWS)
    ]
    return np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)


def _column_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a finite table: the mean, the (population) standard deviation and the
    largest absolute value, in float64, a chunk of rows at a time."""
    n = len(a)
    total = np.zeros(a.shape[1])
    top = np.zeros(a.shape[1])
    for i in range(0, n, CHUNK_ROWS):
        c = np.asarray(a[i : i + CHUNK_ROWS], dtype=np.float64)
        total += c.sum(0)
        top = np.maximum(top, np.abs(c).max(0))
    mean = total / max(n, 1)
    sq = np.zeros(a.shape[1])
    for i in range(0, n, CHUNK_ROWS):
        sq += np.square(np.asarray(a[i : i + CHUNK_ROWS], dtype=np.float64) - mean).sum(0)
    return mean, np.sqrt(sq / max(n, 1)), top


def _check_finite(a: np.ndarray, where: str, unit: str, base: int) -> None:
    bad = _bad_rows(a, lambda c: ~np.isfinite(c))
    if len(bad):
        raise DataError(f"{where} contains NaN or inf in {unit} {_rows(bad, base)}")


# the first characters that make a spreadsheet read a cell as a formula
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def csv_field(text: str) -> str:
    """A name (a column's, a file's) as a CSV cell: quoted where it holds a separator, a quote
    or a line break, and led by ``'`` where a spreadsheet would run it as a formula (a name
    from a user's file such as ``=cmd|...``; OWASP's advice)."""
    if text[:1] in FORMULA_LEADS and not _is_float(text):
        text = "'" + text
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


# the signatures of files that are not text, what they look like, and what to do
_NOT_TEXT = (
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it first (gunzip)"),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one)", "export the sheet as CSV"),
    (b"\xd0\xcf\x11\xe0", "an Office file (an Excel .xls workbook?)", "export the sheet as CSV"),
    (b"BZh[1-9]1AY&SY", "a bzip2-compressed file", "decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it first (unxz)"),
    (b"(\xb5/\xfd", "a zstd-compressed file", "decompress it first (unzstd)"),
    (b"\x89PNG", "a PNG image", "give a folder of images as --data"),
    (b"\xff\xd8\xff", "a JPEG image", "give a folder of images as --data"),
    (b"\x93NUMPY", "a NumPy array", "name it .npy"),
    (b"\xff\xfe", "UTF-16 text", "save it as UTF-8 (Excel: CSV UTF-8)"),
    (b"\xfe\xff", "UTF-16 text", "save it as UTF-8 (Excel: CSV UTF-8)"),
)
# the cells that stand for a missing value in a data row, not for a column's name
_MISSING = frozenset(
    {
        "",
        "na",
        "n/a",
        "nan",
        "null",
        "none",
        "nil",
        "-",
        "?",
        "#n/a",
        "missing",
        "#div/0!",
        "#value!",
        "#ref!",
        "#num!",
        "#name?",
        "#null!",
    }
)  # (Excel's)


def _check_text(path: Path) -> None:
    """Refuse a file named ``.csv`` that is not a text table (compressed, a workbook, an
    image, UTF-16), saying what it looks like, before any of it is parsed."""
    with open(path, "rb") as f:
        head = f.read(4096)
    for magic, what, fix in _NOT_TEXT:
        if re.match(re.escape(magic) if b"[" not in magic else magic, head):
            raise DataError(f"{path} is not a text CSV file: it looks like {what}; {fix}")
    if b"\x00" in head:
        what = "UTF-16 text" if 3 * head.count(b"\x00") > len(head) else "a binary file"
        raise DataError(
            f"{path} is not a UTF-8 text CSV file: it holds NUL bytes (it looks like {what}); "
            "save it as UTF-8 text"
        )


def _read_csv(
    path: Path, header: bool | None = None, names: list | None = None, width: int | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """The table and its header's column names (None without a header).

    ``header``: None decides from the first row (a row with a cell that is not a number is a
    header; one that reads as data with a missing value, or a row of whole numbers over rows
    that are not, is refused as ambiguous), True or False say. ``names``: the column names a
    run was trained with; a first row equal to them is a header even where they are numbers.
    A plain table of 1 MiB or more is read by numpy's C reader, anything else row by row into
    one float64 buffer (8 bytes a value), which names the line that is wrong; the same numbers
    either way. The file is UTF-8, or read as Windows-1252 where it is not."""
    _check_text(path)
    try:
        return _parse_csv(path, "utf-8-sig", "strict", header, names, width)
    except UnicodeDecodeError as e:  # a Windows spreadsheet's export with accented names
        out, columns = _parse_csv(path, "cp1252", "replace", header, names, width)
        if columns and any(_GARBLED.search(c) for c in columns):
            warnings.warn(  # (UTF-8 names read as Windows-1252: "tempÃ©rature")
                f"{path} is not UTF-8 (a byte {e.object[e.start]:#x} at offset {e.start:,} is "
                f"not), so it was read as Windows-1252, and its header names look garbled "
                f"({', '.join(map(repr, columns[:3]))}): the file mixes encodings; save it as "
                "UTF-8 (Excel: CSV UTF-8)",
                UserWarning,
                stacklevel=2,
            )
        return out, columns


# UTF-8's two-byte letters read as Windows-1252 ("Ã©" for "é"), or a byte it has no letter for
_GARBLED = re.compile("[\u00c2\u00c3][\u0080-\u00bf\u2000-\u203a\u20ac\u0152-\u0178]|\ufffd")


MAX_CSV_LINE = 4 << 20  # characters in one line of a CSV (a table of some 300,000 columns)


def _bounded_lines(f, path: Path, cap: int | None = None):
    """The file's lines, each refused past ``cap`` characters (:data:`MAX_CSV_LINE`, or
    what a known width needs) before the csv module splits it (a one-line file of 10M fields
    took 1.5 GB to be refused)."""
    cap = cap or MAX_CSV_LINE
    for i, line in enumerate(iter(lambda: f.readline(cap + 2), ""), 1):
        end = 2 if line.endswith("\r\n") else 1 if line.endswith(("\n", "\r")) else 0
        if len(line) - end > cap:
            raise DataError(
                f"{path}: line {i} is longer than {cap:,} characters, more than a table's row "
                "(is the file one line, or not a table? a table this wide reads faster as "
                ".npy); flowforge reads tables of one row per line"
            )
        yield line


FAST_CSV_BYTES = 1 << 20  # from this size, a plain table is read by numpy's C reader


def _line_cap(width: int | None) -> int:
    """The longest line a CSV of ``width`` columns may have (None: not known)."""
    return max(MAX_CSV_LINE, 64 * width) if width else MAX_CSV_LINE


def _parse_csv_fast(path: Path, encoding: str, errors: str, header, names, width=None):
    """``(table, columns, first row)`` by numpy's C reader (4 to 5 times faster than row by
    row), for a plain table: every line after the header a row of the same number of finite
    numbers. None for anything else, which the row-by-row reader then reads, or refuses with
    the line that is wrong. The header is decided on the first row exactly as there."""
    if path.stat().st_size < FAST_CSV_BYTES:
        return None
    with open(path, encoding=encoding, errors=errors, newline="") as f:
        reader = csv.reader(_bounded_lines(f, path, _line_cap(width)))
        try:
            row = next((r for r in reader if any(c.strip() for c in r)), None)
        except csv.Error:
            return None
        if row is None:
            return None
        lineno = reader.line_num
    named = _is_header(path, lineno, row, header, names)
    if len(row) == 2 and not named:  # (two columns may be one with decimal commas: see below)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = np.loadtxt(
                path, delimiter=",", skiprows=lineno if named else lineno - 1, dtype=np.float64,
                encoding=encoding, comments=None, quotechar='"', ndmin=2,
            )  # fmt: skip
    except Exception:  # noqa: BLE001 - anything unusual: the row-by-row reader says what
        return None
    if out.shape[1] != len(row) or not len(out):
        return None
    # every value finite and within float32's range: the extremes say (NaN propagates into
    # them), with no temporary the table's size
    top = float(np.finfo(np.float32).max)
    if not (-top <= out.min() and out.max() <= top):
        return None
    return out, ([c.strip() for c in row] if named else None), (lineno, row)


def _parse_csv(path: Path, encoding: str, errors: str, header, names, width=None):
    fast = _parse_csv_fast(path, encoding, errors, header, names, width)
    if fast is not None:
        out, columns, first = fast
        return _csv_verdicts(path, out, columns, first, header, None)
    values, lines = array.array("d"), array.array("q")
    first, d, columns, zero_led, tens, twos = None, 0, None, None, False, 0
    widths: list[set[int]] = [set(), set()]  # two columns: the digits of each one's cells
    with open(path, encoding=encoding, errors=errors, newline="") as f:
        reader = csv.reader(_bounded_lines(f, path, _line_cap(width)))
        try:
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                lineno = reader.line_num
                if first is None:
                    first = (lineno, row)
                    if _is_header(path, lineno, row, header, names):
                        columns = [c.strip() for c in row]
                        continue
                if not d:
                    d = len(row)
                    if columns is not None and len(columns) != d:
                        raise DataError(
                            f"{path}: the header has {_count(len(columns), 'column')}, the "
                            f"first data row {d} (line {lineno})"
                            f"{_other_separator(row) or _width_hint(columns, row)}"
                        )
                if len(row) != d:
                    raise DataError(
                        f"{path}: line {lineno} has {_count(len(row), 'column')}, expected {d} "
                        f"(as on line {lines[0]}){_other_separator(row) or _width_hint(None, row)}"
                    )
                try:
                    values.extend([_number(c) for c in row])
                except ValueError:
                    j, bad = next((j, c) for j, c in enumerate(row) if not _is_float(c))
                    missing = (
                        " (a missing value: drop the rows that miss values, or fill them in: "
                        "a flow models complete rows)"
                        if bad.strip().lower() in _MISSING
                        else ""
                    )
                    if not bad.strip():  # (dropping the rows would drop them all)
                        missing = missing[:-1] + (
                            f"; if column {j} (0-based) is empty on every line, a trailing comma "
                            "or an empty column, delete the column)"
                        )
                    hint = missing or _cell_hint(bad) or _other_separator(row)
                    name = visible(columns[j]) if columns else f"{j}"
                    said = repr(name) if columns else f"{j} (0-based)"
                    if not hint and re.search(r"[^\W\d_]", bad) and not lines:
                        # (letters on the first data row: a text column)
                        declare = " ".join(
                            f"--set {shell_word(f'data.{k}')}"
                            for k in (f"integers=[{name}]", f"bounds.{name}=[0,K-1]")
                        )
                        hint = (
                            f" (column {said} holds text, a label or a category: flowforge "
                            "models numbers; drop the column, or code its categories as "
                            f"integers 0 to K-1, declared when training: {declare})"
                        )
                    elif not hint and re.search(r"[^\W\d_]", bad):  # (numbers above it)
                        hint = (
                            f" (column {said} holds numbers on the lines above: a stray cell? "
                            "correct it, or drop its row)"
                        )
                    raise DataError(
                        f"{path}: line {lineno}: cannot read {bad.strip()!r} as a number{hint}"
                    ) from None
                lines.append(lineno)
                if d == 2 and zero_led is None and _zero_led(row[1]):
                    zero_led = (lineno, row)
                if d == 2 and len(widths[1]) < 4:
                    for j in (0, 1):  # (a sign or a '.' is no decimal comma's: width 0 marks it)
                        c = row[j].strip()
                        widths[j].add(0 if c[:1] in "+-" or "." in c else len(c))
                    c = row[1].strip()
                    tens, twos = tens or (len(c) == 2 and c[1] == "0"), twos + (len(c) == 2)
        except csv.Error as e:  # a field beyond the csv module's limit: binary, or not a table
            raise DataError(
                f"{path} cannot be read as a CSV table ({e}): is it a text CSV?"
            ) from None
    if first is None:
        raise DataError(f"{path} is empty")
    if not lines:
        raise DataError(f"{path} has a header but no data rows")
    out = np.frombuffer(values, dtype=np.float64).reshape(-1, d)
    bad = _bad_rows(out, lambda c: ~np.isfinite(c))
    if len(bad):
        raise DataError(
            f"{path} contains NaN or inf on line{'s' if len(bad) > 1 else ''} "
            f"{_rows([lines[i] for i in bad])} (missing "
            "values? drop those rows, or fill them in: a flow models complete rows)"
        )
    big = _bad_rows(out, lambda c: np.abs(c) > np.finfo(np.float32).max)
    if len(big):
        raise DataError(
            f"{path}: values beyond float32's range (about 3.4e38) on "
            f"line{'s' if len(big) > 1 else ''} "
            f"{_rows([lines[i] for i in big])}"
        )
    # the second column's cells all of one width, the first's not that one (36,6 or 13,750),
    # or of one or two digits (prices 32,33 and 47,7: a spreadsheet drops the trailing zero)
    unsigned = 0 not in widths[0] | widths[1]
    one = len(widths[1]) == 1 and widths[0] != widths[1]
    # (a price whose trailing zero was dropped never ends in 0 with two digits: 47,7 not 47,70;
    # a height and an age, a year and a month, do)
    # (and most of them of two digits, as cents are: counts of 1 to 19 are not)
    mixed = widths[1] == {1, 2} and not tens and twos >= 0.7 * len(lines)
    split = unsigned and (one or mixed)
    return _csv_verdicts(path, out, columns, first, header, zero_led, split and sorted(widths[1]))


def _whole_rows(a: np.ndarray) -> np.ndarray:
    """Whether each row of a table holds only whole numbers, a chunk of rows at a time (no
    rounded copy of the table)."""
    step = _chunk_rows(a.shape[1])
    chunks = (a[i : i + step] for i in range(0, len(a), step))
    return np.concatenate([(c == np.round(c)).all(axis=1) for c in chunks])


def _csv_verdicts(path: Path, out: np.ndarray, columns, first, header, zero_led, split=None):
    """The refusals a whole table decides (a read that the first row or the file's lines
    cannot): two columns of whole numbers that are one of decimal commas (a zero-led second
    cell, or second cells all of one width that the first's are not), a header of numbers."""
    d = out.shape[1]
    whole = _whole_rows(out)
    if split and zero_led is None and columns is None and header is None and whole.all():
        # (a warning, not a refusal: two columns of whole numbers, an age and a 0/1 flag, look
        # the same; it names what to do either way)
        k = " or ".join(map(str, split)) + (" digits" if split != [1] else " digit")
        warnings.warn(
            f"{path}: every line holds two whole numbers, the second always of {k} "
            f"(line {first[0]}: {','.join(first[1])!r}), read as "
            "two columns; if it is one column of numbers with decimal commas (36,6) or "
            "thousands separators (13,750), convert the file, e.g. with pandas: "
            "pd.read_csv(f, sep=';', decimal=',', thousands='.', header=None).to_csv('out.csv', "
            "index=False, header=False); set data.header: false to say the two columns are right",
            UserWarning,
            stacklevel=2,
        )
    if zero_led is not None and columns is None and whole.all():
        lineno, row = zero_led
        raise DataError(
            f"{path}: every line holds two whole numbers, and line {lineno} writes "
            f"{','.join(row)!r}: one column of numbers with decimal commas? flowforge reads ',' "
            "as the separator and '.' as the decimal point; convert the file, e.g. with pandas: "
            "pd.read_csv(f, sep=';', decimal=',', header=None).to_csv('out.csv', index=False, "
            "header=False); if they are two columns of whole numbers, write them without "
            "leading zeros"
        )
    lineno, row = first
    if header is None and columns is None and len(out) >= 3 and whole[0] and _integers(row):
        what = "whole numbers and no other line does" if not whole[1:].any() else None
        rest = out[1:]
        lo, hi = rest.min(axis=0), rest.max(axis=0)
        if (
            what is None
            and d >= 2
            and (np.diff(out[0]) > 0).all()  # (names in order: 2019, 2020)
            and (np.maximum(lo - out[0], out[0] - hi) > np.maximum(hi - lo, 1)).all()
            and not _sorted_column(out)  # (a ranked table's top row of data continues its order)
        ):  # (2019, 2020 over counts: farther outside each column than it is wide)
            what = "whole numbers far outside every column's range on the other lines"
        if what is None and d >= 3:
            steps = np.diff(out, axis=1)
            # evenly spaced whole numbers (2019, 2020, 2021; 400, 450, 500), no later row so
            progression = (steps[:, :1] == steps).all(axis=1) & (steps[:, 0] != 0)
            if progression[0] and not progression[1:].any():
                what = "evenly spaced whole numbers and no other line does"
            elif (
                d >= 4
                and ((out[0] == np.arange(d)).all() or (out[0] == np.arange(1, d + 1)).all())
                and not (rest == out[0]).all(axis=1).any()
                and progression[1:].mean() < 0.5  # (sliding windows: every row counts up)
            ):  # (three columns of small counts start with 0,1,2 by chance too often)
                what = "the column numbers (0, 1, 2, ... as pandas names columns, or 1, 2, 3, ...)"
        if what is not None:
            cells = ", ".join(c.strip() for c in row[:6]) + (", ..." if d > 6 else "")
            raise DataError(
                f"{path}: line {lineno} ({cells}) holds {what}: a header "
                "of numeric column names (years, wavelengths)? Set the data option header: "
                f"true to read line {lineno} as the columns' names, or header: false to read it "
                "as data"
            )
    return out, columns


def _sorted_column(a: np.ndarray) -> bool:
    """Whether some column of ``a`` is sorted, up or down (a table ranked by a column); a
    column at a time, with no copy of the table."""
    return any(
        bool((np.diff(a[:, j]) >= 0).all() or (np.diff(a[:, j]) <= 0).all())
        for j in range(a.shape[1])
    )


def _check_header_option(header, path: Path | None = None) -> None:
    if header is not None and not isinstance(header, bool):
        raise DataError(
            f"data option header must be true or false (or left out: decided from the first "
            f"row), got {header!r}"
        )
    if header is not None and path is not None and path.suffix.lower() != ".csv":
        raise DataError(f"data option header applies to CSV files, not {path}")


def _unnamed_columns(table: np.ndarray, columns: list[str] | None) -> str | None:
    """A warning for header cells left empty: modelled as data all the same, and a row index
    that pandas writes (``to_csv`` without ``index=False``) says nothing about the data."""
    empty = [j for j, c in enumerate(columns or []) if not c]
    twice = sorted({c for c in columns or [] if c and columns.count(c) > 1})
    if twice and not empty:  # (a name given twice cannot name a column: bounds, targets)
        return (
            f"the header names {', '.join(map(repr, twice[:3]))} more than once: those columns "
            "are taken by their indices (0-based) wherever a column is named"
        )
    if not empty:
        return _numbered_rows(table, columns)
    j = empty[0]
    if _counts_rows(table[:, j]):
        return (
            f"column {j} (0-based) has no name in the header and holds the row numbers: a row "
            "index (pandas writes one unless to_csv(..., index=False)) is modelled as data; "
            "drop it"
        )
    more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
    return f"column {j} (0-based){more} has no name in the header; it is modelled as data"


def _counts_rows(col: np.ndarray) -> bool:
    """Whether a column is 0, 1, 2, ... or 1, 2, 3, ... in file order (a row index, an ID)."""
    rows = np.arange(len(col))
    return bool(np.array_equal(col, rows) or np.array_equal(col, rows + 1))


def _numbered_rows(table: np.ndarray, columns: list[str] | None) -> str | None:
    """A warning for a column that numbers the rows (0, 1, 2, ... or 1, 2, 3, ... in file
    order, as an ID or a saved index column is: ``Unnamed: 0``, ``id``), modelled as data."""
    n = len(table)
    if n < 3:
        return None
    first = table[0]
    maybe = np.flatnonzero(((first == 0) | (first == 1)) & (table[1] == first + 1))
    for j in maybe.tolist():
        if _counts_rows(table[:, j]):
            name = f", {columns[j]!r}" if columns else ""
            return (
                f"column {j} (0-based{name}) numbers the rows ({first[j]:g} to "
                f"{n - 1 + first[j]:g} in file order): if it is a row index or an ID (pandas "
                "writes an index unless to_csv(..., index=False)), drop it: modelled as data it "
                "says nothing about the rows; a time or step column is data, keep it"
            )
    return None


def _is_header(path: Path, lineno: int, row: list[str], header, names) -> bool:
    """Whether a CSV's first row names the columns (see :func:`_read_csv`)."""
    if header is not None:
        return bool(header)
    cells = [c.strip() for c in row]
    if names and cells == [str(n) for n in names]:
        return True
    text = [(j, c) for j, c in enumerate(cells) if not _is_float(c)]
    if text and all(c.lower() in _MISSING for _, c in text):
        j, c = text[0]
        raise DataError(
            f"{path}: line {lineno} reads as data with a missing value "
            f"({repr(c) if c else 'an empty cell'} in column {j}, 0-based), not as a header: "
            f"every cell must be a number (fill or drop the row); if line {lineno} names the "
            "columns, name every column (or set the data option header: true)"
        )
    if text and all(_is_float(c, python=True) for _, c in text):  # (1_000: to Python alone)
        j, c = text[0]
        raise DataError(
            f"{path}: line {lineno}: cannot read {c!r} (column {j}, 0-based) as a number: digit "
            "separators are not read as numbers, as spreadsheets and pandas do not; write "
            f"{c.replace('_', '')!r}, or if line {lineno} names the columns, set the data option "
            "header: true"
        )
    numbers = [c for c in cells if _is_float(c)]
    broken = [(j, c) for j, c in text if _BROKEN_NUMBER.fullmatch(c)]
    if broken and any(float(c) != round(float(c)) for c in numbers if math.isfinite(float(c))):
        # (names are text, label,400.5 a header; a data row with a cell that is a number gone
        # wrong keeps numbers such as -1.3243 beside it)
        j, c = broken[0]
        raise DataError(
            f"{path}: line {lineno} mixes text ({c!r}, column {j}, 0-based) with numbers that "
            f"are not whole ({', '.join(c for c in numbers[:3])}): a data row with a cell that "
            f"is not a number{_cell_hint(c)}? Fix the cell; or, if line {lineno} names the "
            "columns, set the data option header: true"
        )
    return bool(text)


# a cell that is a number gone wrong (1.5.2, a Unicode minus, 1,234.5), not a name (label, x1)
_BROKEN_NUMBER = re.compile("[+\\-\u2212]?[\\d.,\\s]*\\d[\\d.,\\s]*(?:[eE][+\\-]?\\d+)?")


def _cell_hint(cell: str) -> str:
    """Why a cell a spreadsheet shows as a number is not one to flowforge, and the fix."""
    c = cell.strip()
    if "\u2212" in c:
        return " (its minus is U+2212, not '-': replace it)"
    if c.upper() in ("TRUE", "FALSE"):
        return " (code TRUE/FALSE as 1/0, and declare the column in data.integers)"
    if c.endswith("%") or c[:1] in "$€£¥":
        return " (a percentage or a currency: write the bare number)"
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", c):
        return " (thousands separators: write it without them, or pd.read_csv(f, thousands=','))"
    if "\xa0" in c or "\u202f" in c:
        return " (a non-breaking space inside it: remove it)"
    return ""


def _integers(row: list[str]) -> bool:
    """Cells written as whole numbers: digits, with an exponent of their own (1e3) too."""
    return all(re.fullmatch(r"[+-]?\d+(?:[eE]\+?\d+)?", c.strip()) for c in row)


def _zero_led(cell: str) -> bool:
    """A cell such as '05': whole-number digits after a leading zero (decimal commas split
    326,05 into 326 and 05)."""
    c = cell.strip()
    return len(c) > 1 and c[0] == "0" and c.isdigit()


def _other_separator(row: list[str]) -> str:
    """A hint when a CSV row looks separated by ';' or tabs (its cells hold them), with
    decimal commas when commas split it as well."""
    line = ",".join(row)
    for sep, name, code in ((";", "semicolons", "';'"), ("\t", "tabs", "'\\t'")):
        if sep in line:
            comma = len(row) > 1  # commas split the row: decimal commas, in such a file
            with_ = " with decimal commas" if comma else ""
            decimal = ", decimal=','" if comma else ""
            return (
                f" (the file looks separated by {name}{with_}: flowforge reads comma-separated "
                "values with '.' as the decimal point; convert it, e.g. with pandas: "
                f"pd.read_csv(f, sep={code}{decimal}).to_csv('out.csv', index=False))"
            )
    return ""


def _suffix(path: Path) -> str:
    """A file's type as its name says it: ``.csv.gz``, not ``.gz``."""
    return "".join(path.suffixes[-2:]) if path.suffix.lower() in _PACKED else path.suffix


_PACKED = (".gz", ".bz2", ".xz", ".zst", ".zip")
_SUFFIX_FIXES = {
    ".xlsx": "export the sheet as CSV (File > Save As > CSV UTF-8)",
    ".xls": "export the sheet as CSV (File > Save As > CSV UTF-8)",
    ".ods": "export the sheet as CSV",
    ".parquet": "convert it, e.g. pd.read_parquet(f).to_csv('out.csv', index=False)",
    ".feather": "convert it, e.g. pd.read_feather(f).to_csv('out.csv', index=False)",
    ".tsv": "convert it, e.g. pd.read_csv(f, sep='\\t').to_csv('out.csv', index=False)",
    ".tab": "convert it, e.g. pd.read_csv(f, sep='\\t').to_csv('out.csv', index=False)",
    ".txt": "if it is comma-separated, name it .csv; if tab-separated, convert it, e.g. "
    "pd.read_csv(f, sep='\\t').to_csv('out.csv', index=False)",
}


def _suffix_hint(path: Path) -> str:
    """The fix for a file type flowforge does not read."""
    s = path.suffix.lower()
    if s in _PACKED:
        return f"; decompress it first ({'unzip' if s == '.zip' else 'gunzip, or the like'})"
    return f"; {_SUFFIX_FIXES[s]}" if s in _SUFFIX_FIXES else ""


def _count(k: int, noun: str) -> str:
    """``1 row``, ``2 rows``, ``1,000 rows`` (the report's counts too)."""
    return f"{k:,} {noun}" if k == 1 else f"{k:,} {noun}s"


def _width_hint(header: list[str] | None, row: list[str]) -> str:
    """What a row of another width than the header (or the first row) may mean: Excel's
    ``sep=`` line, a title line above the header, one column with decimal commas, a trailing
    comma."""
    if header and header[0].strip().lower().startswith("sep="):
        return " (line 1 is Excel's 'sep=' line: delete it)"
    cells = [c.strip() for c in row]
    if header is not None and len(header) == 1 and len(cells) == 2 and all(map(str.isdigit, cells)):
        return (
            " (one column of numbers with decimal commas? flowforge reads ',' as the separator; "
            "convert the file, e.g. with pandas: pd.read_csv(f, sep=';', decimal=',')"
            ".to_csv('out.csv', index=False))"
        )
    if header is not None and len(header) == 1 and len(cells) > 1:
        return " (a title line above the header? delete it)"
    if cells and not cells[-1]:
        return " (a trailing comma at the end of the line? delete it)"
    return ""


def _column_name(j: int, names: list[str] | None) -> str:
    return repr(names[j]) if names else f"{j} (0-based)"


def _column_key(j: int, names: list[str] | None) -> str:
    """How ``data.bounds`` names column ``j``: its header name, else its index."""
    return str(names[j]) if names else str(j)


def _model_chunks(train: np.ndarray, integers=None):
    """A table's training rows as :func:`model_view` gives them without bounds (its integer
    columns with the same draw of dequantization noise), in float64, a chunk of
    :func:`_chunk_rows` rows at a time: never a whole copy of the split."""
    cols = list(integers or ())
    rng = np.random.default_rng(0)  # (drawn row after row: the stream of _with_noise's draw)
    step = _chunk_rows(train.shape[1])
    for i in range(0, len(train), step):
        c = np.array(train[i : i + step], dtype=np.float64)
        if cols:
            c[:, cols] += rng.random((len(c), len(cols)))
        yield c


def constant_columns(ds) -> str | None:
    """Why no density can model a table with a column that holds one value in every
    training row, or columns that are a linear function of each other (a density on a
    hyperplane: its likelihood grows without bound while training goes on). ``flowforge
    train`` refuses such a table; a run's data reloaded for eval is not. The training split
    is read a chunk of rows at a time (its mean, spread and cross-products summed in
    float64), never copied whole."""
    train = ds.train.numpy()
    if ds.kind != "table" or ds.levels is not None or not len(train):
        return None
    # (dequantized: a constant integer column is not degenerate)
    integers = ds.info.get("integers") or None
    names = ds.info.get("columns")
    if len(train) == 1:
        return (
            f"{ds.name}: the training split holds one row: no density can be fitted to one "
            "example; give more rows (or smaller data options val_fraction and test_fraction)"
        )
    n, d = train.shape
    first, same, total = None, np.ones(d, dtype=bool), np.zeros(d)
    for c in _model_chunks(train, integers):
        first = c[0].copy() if first is None else first
        same &= (c == first).all(0)
        total += c.sum(0)
    const = np.flatnonzero(same).tolist()
    if const:
        cols = ", ".join(_column_name(j, names) for j in const[:5])
        return (
            f"{ds.name}: column(s) {cols} hold the same value in every training row: a density "
            "over a constant is degenerate (it can grow without bound); drop them"
        )
    if d < 2 or n <= 2 * d:  # (with few rows per column a correlation is singular anyway)
        return None
    mean = total / n
    cross = np.zeros((d, d))  # the centred cross-products, summed over the chunks
    for c in _model_chunks(train, integers):
        c -= mean
        cross += c.T @ c
    sd = np.sqrt(np.diag(cross) / n)
    corr = cross / n / np.outer(sd, sd)
    eig, vec = np.linalg.eigh(corr)  # the correlation's eigenvalues, ascending
    if eig[0] > 1e-7:
        return None
    weight = np.abs(vec[:, 0])
    tied = [j for j in np.argsort(-weight) if weight[j] > 0.1][:5]
    cols = ", ".join(_column_name(int(j), names) for j in sorted(tied))
    return (
        f"{ds.name}: columns {cols} are a linear function of each other in the training rows "
        f"(their correlation's smallest eigenvalue is {eig[0]:.2g}): a density on a hyperplane "
        "is degenerate (it can grow without bound); drop one of them"
    )


def _check_float32(train: np.ndarray, names: list[str] | None, where: str) -> None:
    """A ``DataError`` for a column whose variation float32 (the models' precision) cannot
    hold: values of 1e6 +- 0.01 all round to one or a few float32 numbers, which would be
    refused as a constant column, or modelled as a handful of spikes. Refused when rounding
    moves a value by more than a hundredth of the column's standard deviation."""
    a = train
    if a.shape[0] < 2 or len(_bad_rows(a, lambda c: ~np.isfinite(c))):
        return  # (too few rows to judge; non-finite values are refused elsewhere)
    _, sd, top = _column_stats(a)
    big = top > np.finfo(np.float32).max
    if big.any():
        j = int(np.flatnonzero(big)[0])
        raise DataError(
            f"{where}: column {_column_name(j, names)} holds values beyond float32's range "
            f"(the models' precision; largest {top[j]:.6g}): rescale it"
        )
    tiny = np.flatnonzero((top > 0) & (top < 1e-20))
    if tiny.size:  # float32 flushes or coarsens them, and their spread underflows
        j = int(tiny[0])
        raise DataError(
            f"{where}: column {_column_name(j, names)} holds only values smaller than 1e-20 "
            f"(largest {top[j]:.3g}), too small for float32 (the models' precision) to keep "
            f"their spread: rescale it, e.g. multiply it by 1e{-math.floor(math.log10(top[j]))}"
        )
    err = np.zeros(a.shape[1])
    if a.dtype != np.float32:  # (float32 data loses nothing)
        for i in range(0, len(a), CHUNK_ROWS):
            c = np.asarray(a[i : i + CHUNK_ROWS], dtype=np.float64)
            err = np.maximum(err, np.abs(c - c.astype(np.float32).astype(np.float64)).max(0))
    # a spread at float64's own rounding level (a constant 0.3 column) is a constant column
    lost = np.flatnonzero((err > 1e-2 * sd) & (sd > 64 * np.finfo(np.float64).eps * top))
    if lost.size:
        j = int(lost[0])
        more = f" (and {lost.size - 1} more)" if lost.size > 1 else ""
        raise DataError(
            f"{where}: column {_column_name(j, names)}{more} varies by {sd[j]:.3g} around "
            f"{np.abs(a[:, j]).max():.6g}, finer than float32 (the models' precision) resolves "
            f"there (it rounds by up to {err[j]:.3g}); subtract an offset from the column, e.g. "
            "its first value or its mean, before training, or train in float64 (--set "
            "train.dtype=float64)"
        )


MEDIAN_ROWS = 200_000  # rows the outlier check takes its median and spread from


def _table_checks(
    train: np.ndarray,
    splits: dict,
    names: list[str] | None,
    where: str,
    bounds=None,
    integers=None,
) -> list:
    """Warnings for what makes a fit or its test figure misleading: far outliers, which set
    the standardisation's scale and squeeze every other value together, and test/val rows that
    repeat training rows (exact duplicates, an optimistic test NLL). A constant column is
    refused when training starts (:func:`constant_columns`). ``bounds``, ``integers``:
    outliers are sought on the scale the model sees (:func:`model_view`)."""
    notes = []
    raw = train
    bounded = set()
    if bounds or integers:
        given = bounds or {"lower": [], "upper": []}
        pairs = enumerate(zip(given["lower"], given["upper"]))
        bounded = {j for j, (a, b) in pairs if (a, b) != (None, None)}
        train = model_view(train, bounds, integers)
    # per column, in float64: the median and the spread around it (of a sample of rows when
    # there are many), and the rows far from it (all of them)
    pick = None
    if len(train) > MEDIAN_ROWS:
        pick = np.sort(np.random.default_rng(0).permutation(len(train))[:MEDIAN_ROWS])
    far = []
    for j in range(train.shape[1]):
        col = np.asarray(train[:, j], dtype=np.float64)
        some = col if pick is None else col[pick]
        med = np.median(some)
        robust = 1.4826 * np.median(np.abs(some - med))  # the sd a normal column would have
        if robust > 0:
            n = int((np.abs(col - med) > 100 * robust).sum())
            if n:
                far.append((j, n))
    if far:
        what = "; ".join(
            f"column {_column_name(j, names)}: {n} {'row' if n == 1 else 'rows'}"
            f"{' (on its bounds scale)' if j in bounded else ''}"
            for j, n in far[:5]
        )
        positive = [j for j, _ in far if j not in bounded and raw[:, j].min() > 0]
        keys = ", ".join(f"{_column_key(j, names)}: positive" for j in positive[:3])
        hint = (
            "; if they are real, a positive column's heavy tail is better modelled on a log "
            f"scale: data.bounds: {{{keys}}}"
            if positive
            else ""
        )
        notes.append(
            f"training values more than 100 robust standard deviations from the median ({what}"
            f"{'; ...' if len(far) > 5 else ''}): they set the standardisation's scale and "
            f"squeeze the other values together; check them (a typo, a missing-value code?){hint}"
        )
    dup = _duplicates(raw, splits)
    if dup or integers:  # (rows of integer columns sit close by design: no near-copy check)
        return notes + dup
    return notes + _near_duplicates(raw, splits)


def _near_duplicates(train: np.ndarray, splits: dict, rows: int = 300, pool: int = 10000) -> list:
    """Warnings for validation and test rows that sit almost on a training row (a copy with a
    little noise added, a row saved twice with rounding): closer to their nearest training row
    than a hundredth of the usual distance between training rows (the median distance to a
    row's fifth nearest, which copies inside the training split cannot shrink), in
    standardised units; in one dimension a ten-thousandth, since there a hundredth catches
    about 1 honest row in 20 by chance. Exact copies are :func:`_duplicates`' to report. At
    most ``rows`` rows of each split are compared with at most ``pool`` training rows.
    Columns whose training values are all whole numbers (counts, flags, labels: a context of
    simulations, say) are left out of the distance, since independent rows share their values
    by design; without another column there is nothing to check."""
    if len(train) < 20 or len(_bad_rows(train, lambda c: ~np.isfinite(c))):
        return []
    cont = [j for j in range(train.shape[1]) if not _whole(train[:, j])]
    if not cont:
        return []
    t = train[:, cont]
    splits = {name: a[:, cont] for name, a in splits.items()}
    rng = np.random.default_rng(0)
    mean, sd, _ = _column_stats(t)
    sd[sd == 0] = 1.0
    pool_rows = rng.permutation(len(t))[:pool]  # (standardised: these rows only)
    ref = torch.from_numpy((np.asarray(t[pool_rows], dtype=np.float64) - mean) / sd)
    own = ref[:rows]  # (rows of the pool: each finds itself first)
    exact = "donot_use_mm_for_euclid_dist"  # (exact zeros for exact copies)
    d_own = torch.cdist(own, ref, compute_mode=exact).sort(1).values[:, 5]  # ([:, 0]: itself)
    typical = float(d_own.median())
    if not typical > 0:
        return []
    # the chance that an honest row falls that close is about 5 * frac ** D: 5% in 1-D at 0.01
    frac, said = (1e-4, "a ten-thousandth") if t.shape[1] == 1 else (0.01, "a hundredth")
    notes = []
    for name, a in splits.items():
        if not len(a) or len(_bad_rows(a, lambda c: ~np.isfinite(c))):
            continue
        pick = np.asarray(a[rng.permutation(len(a))[:rows]], dtype=np.float64)
        d = torch.cdist(torch.from_numpy((pick - mean) / sd), ref, compute_mode=exact)
        d = d.min(1).values
        near = int(((d > 0) & (d < frac * typical)).sum())
        if near > max(1, len(pick) // 20):  # more than 1 in 20: not chance
            notes.append(
                f"{near} of {len(pick)} {name} rows checked lie almost on a training row (closer "
                f"than {said} of the usual distance between training rows): copies with a "
                f"little noise? the {name} NLL would be optimistic; remove near-duplicates before "
                "splitting"
            )
    return notes


def _whole(col: np.ndarray) -> bool:
    """Whether every value of a column equals its rounding (a NaN does not, an inf does)."""
    col = np.asarray(col, dtype=np.float64)
    return bool(np.all(col == np.round(col)))


def _row_hashes(a: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes (a 2-D C-contiguous array), a chunk of rows at a
    time: equal rows hash alike, and different rows rarely do."""
    out = np.zeros(len(a), dtype=np.uint64)
    width = a.shape[1] * a.dtype.itemsize if a.ndim == 2 else 0
    if not len(a) or not width:
        return out
    with np.errstate(over="ignore"):
        for i in range(0, len(a), CHUNK_ROWS):
            b = a[i : i + CHUNK_ROWS].view(np.uint8).reshape(-1, width)
            if width % 8:
                b = np.pad(b, ((0, 0), (0, 8 - width % 8)))
            words = b.view(np.uint64)
            h = np.full(len(b), 0x9E3779B97F4A7C15, dtype=np.uint64)
            for j in range(words.shape[1]):
                h ^= words[:, j]
                h *= np.uint64(0xBF58476D1CE4E5B9)
                h ^= h >> np.uint64(31)
            out[i : i + len(b)] = h
    return out


def _flat_rows(a) -> np.ndarray:
    """``a`` as C-contiguous rows of its examples' values (an empty split, as when a folder is
    read whole, has no rows to compare)."""
    a = np.asarray(a)
    return np.ascontiguousarray(a.reshape(len(a), -1)) if len(a) else a[:0].reshape(0, 0)


def repeated_rows(train, a, train_hashes: np.ndarray | None = None) -> int:
    """How many of the examples ``a`` are exactly (bit for bit) an example of ``train``."""
    train, a = _flat_rows(train), _flat_rows(a)
    if not len(a) or not len(train) or train.shape[1:] != a.shape[1:]:
        return 0
    train_hashes = _row_hashes(train) if train_hashes is None else train_hashes
    h = _row_hashes(a)
    maybe = np.flatnonzero(np.isin(h, train_hashes))  # equal rows hash alike: check those only
    if not len(maybe):
        return 0
    seen = {r.tobytes() for r in train[np.flatnonzero(np.isin(train_hashes, h[maybe]))]}
    return sum(a[i].tobytes() in seen for i in maybe)


def _duplicates(train: np.ndarray, splits: dict, what: str = "rows") -> list:
    """Warnings for validation and test examples that repeat a training example exactly (a
    table's rows, an image folder's images): their NLL is optimistic, and early stopping on a
    contaminated validation split does not stop."""

    train = _flat_rows(train)
    train_hashes = _row_hashes(train)
    notes = []
    for name, a in splits.items():
        dup = repeated_rows(train, a, train_hashes)
        if dup:
            # the training split repeating its own rows: discrete-valued data, where repeats
            # across splits follow from the values themselves, or copies of records
            own = 1 - len(np.unique(train_hashes)) / max(len(train), 1)
            fix = (
                f"the training split repeats {own:.0%} of its own {what} too: if the data take "
                f"few values and are declared discrete (levels, data.integers), repeats are "
                f"expected and the NLL is fair; if they are copies of one record, remove them "
                f"before splitting"
                if own >= 0.1
                else f"the {name} NLL will be optimistic; remove duplicate {what} before splitting"
            )
            notes.append(
                f"{dup} of the {len(a)} {name} {what} also appear in the training split (exact "
                f"duplicates): {fix}"
            )
    return notes


ATOM_SHARE = 0.01  # a value that this share of a non-integer column's rows hold is an atom


FEW_ROWS = 100  # fewer training rows than this: a table too small to say much (a warning)


def _is_few_rows_note(note: str) -> bool:
    return note.startswith("only ") and " training, " in note


def _few_rows(sizes: dict, images: bool = False) -> str | None:
    """A warning for a table (or, ``images``, an image set) with very few rows: its fit and
    its test figure are noise."""
    if sizes["train"] >= FEW_ROWS:
        return None
    what = "images" if images else "rows"
    return (
        f"only {sizes['train']} training, {sizes['val']} validation and {sizes['test']} test "
        f"{what}: a flow can overfit so few at once (the early stop then keeps an almost "
        f"untrained model), and a test NLL over so few {what} is mostly noise (eval gives its "
        "standard error)"
        + (
            ""
            if images
            else "; a Gaussian (eval's reference, for an unconditional table) is often the "
            "better model here"
        )
    )


def _low_levels(hi: int, where: str, folder: bool = False) -> str | None:
    """A warning for 8-bit images whose values all lie far below 255 (counts or class
    indices, 0/1 masks): modelled as 256 levels, their bits/dim are per 8-bit pixel and the
    samples spread over levels the data never uses. ``folder``: the images are files, which
    take no ``data.levels``."""
    if hi >= 64:
        return None
    fix = (
        "save them as one .npy array (examples, channels, height, width) and give "
        if folder
        else "give "
    )
    return (
        f"{where}: every value is in [0, {hi}], a small part of the 256 levels of 8-bit pixels "
        f"this run models; if the images have {hi + 1} levels (class indices, masks), {fix}"
        f"data.levels={hi + 1} (the likelihood and samples are then on those levels)"
    )


FEW_LEVELS = 32  # a column of at most this many integer values: counts or categories
REPEATS = 4  # or whose values hold this many rows each on average (ages, years, pixel levels)


def discrete_column(rows: int, values: int) -> bool:
    """Whether a whole-valued column of ``rows`` holding ``values`` distinct values is one a
    continuous density would put spikes on: few values (at most :data:`FEW_LEVELS`), or values
    that repeat (:data:`REPEATS` rows a value on average: two columns uniform on 0..39 gave a
    test NLL 0.2-1.7 nats below the truth, with no word, before this counted them). Values
    that never repeat (a tiny table's distinct integers) are none of these."""
    return values < rows and (values <= FEW_LEVELS or rows >= REPEATS * values)


def _integer_columns(train: np.ndarray, names: list[str] | None, declared=()) -> str | None:
    """A warning for columns of integer values that repeat (:func:`discrete_column`:
    categories, counts, ages): a continuous density can put spikes on them and report a
    meaninglessly low NLL (not for the ``declared`` ones, which ``data.integers``
    dequantizes)."""
    flagged = []
    for j in range(train.shape[1]):
        if j in declared:
            continue
        col = train[:, j]
        if _whole(col) and discrete_column(len(col), len(np.unique(col))):
            flagged.append((names[j] if names else str(j), float(col.min()), float(col.max())))
    if not flagged:
        return None
    said = [n for n, _, _ in flagged[:8]]
    # (their bounds too: declared integers without them are sampled beyond the data's
    # values, negative counts and codes of -3 among them)
    bounds = ", ".join(f"data.bounds.{n}=[{a:g}, {b:g}]" for n, a, b in flagged[:8])
    return (
        f"column(s) {', '.join(said)}{' ...' if len(flagged) > 8 else ''} "
        f"{INTEGERS_NOTE}; they are modelled as continuous, where a "
        "flow can put density spikes on the integers and report a misleadingly low NLL (that "
        "falls the longer it trains). Give the data option levels: K if every column is an "
        "integer in [0, K-1]; otherwise declare them, data.integers: "
        f"[{', '.join(said)}] (dequantized: the NLL is then a bound on the likelihood "
        "of the integers and the other columns together), with the values they can take as "
        f"bounds, so that samples keep to them (the training values: {bounds}; null for a "
        "side without a limit, as a count's top), or drop them"
    )


INTEGERS_NOTE = "hold only integer values that repeat (categories, counts, ages?)"
_ATOMS_NOTE = "put many rows on single values (a floor, a cap, exact 0s and 1s)"


def _is_column_note(note: str) -> bool:
    """Whether a data warning is one of :func:`_integer_columns`'s or :func:`_atoms`'s."""
    return note.startswith("column(s) ") and (INTEGERS_NOTE in note or _ATOMS_NOTE in note)


def _atoms(train: np.ndarray, names: list[str] | None) -> str | None:
    """A warning for non-integer columns that put many rows on single values (exact 0s and 1s
    in a probability, a floor or a cap): a density spikes on them, and its NLL has no floor."""
    found, grids = [], []  # (the columns, and those on a grid with their factors)
    n = len(train)
    if n < 20:
        return None
    rows = None  # (the shares from a sample of rows when there are many)
    if n > MEDIAN_ROWS:
        rows = np.sort(np.random.default_rng(0).permutation(n)[:MEDIAN_ROWS])
        n = MEDIAN_ROWS
    for j in range(train.shape[1]):
        col = np.asarray(train[:, j] if rows is None else train[rows, j], dtype=np.float64)
        if _whole(col):
            continue  # (integer columns: _integer_columns)
        values, counts = np.unique(col, return_counts=True)
        top = np.argsort(counts)[::-1][:2]
        # a floor or a cap (the smallest or largest value) held by 1% of the rows, or any
        # value by 5% (values rounded to a few decimals repeat too, but spread over many)
        edge = {0, len(values) - 1}
        atoms = [(values[i], counts[i] / n) for i in top if counts[i] > 1 and
                 counts[i] / n >= (ATOM_SHARE if i in edge else 5 * ATOM_SHARE)]  # fmt: skip
        if atoms:
            what = " and ".join(f"{share:.1%} on {value:g}" for value, share in atoms)
            found.append(f"{_column_name(j, names)} ({what})")
            step = _grid_step(values, np.finfo(train.dtype).eps if train.dtype.kind == "f" else 0)
            if step is not None:
                grids.append(f"{_column_name(j, names)} by {1 / step:.6g}")
    if not found:
        return None
    rounded = (  # (every value a multiple of one step: measurements rounded to it)
        f"; a column whose values all lie on a grid (rounded measurements) is discrete: "
        f"multiply it to integers ({', '.join(grids[:5])}) and declare it in data.integers, "
        "for a bound on the likelihood of the rounded values (its samples are then in the "
        "multiplied units: divide them back)"
        if grids
        else ""
    )
    return (
        f"column(s) {'; '.join(found[:5])}{' ...' if len(found) > 5 else ''} {_ATOMS_NOTE}: "
        "a continuous density puts spikes "
        "there, and its NLL falls without bound the longer it trains (not a better model). "
        "Model the exact values apart (a flag column and the rest), or spread them with a "
        f"little noise before training{rounded}"
    )


def _grid_step(values: np.ndarray, eps: float = 0.0) -> float | None:
    """The step of a grid that holds every one of the (sorted, distinct) ``values``, as
    measurements rounded to 0.01 are (None: they are not on one, or the step is not a power
    of ten times 1, 2, 2.5 or 5, as a rounding's is); ``eps``: the machine epsilon of the
    values as stored (float32's: 0.1 is 0.10000000149), which sets the tolerance."""
    if len(values) < 3 or not np.isfinite(values).all():
        return None
    smallest = float(np.diff(values).min())
    if smallest <= 0:
        return None
    tol = max(1e-6, 8 * eps * float(np.abs(values).max()) / smallest)
    if tol > 0.01:  # (their precision cannot tell a grid of this step, unless they are on it
        tol = 1e-6  # exactly, as halves near 1e6 are in float32)
    scale = 10.0 ** math.floor(math.log10(smallest))
    steps = [m * scale for m in (1, 2, 2.5, 5, 10)]
    step = next((h for h in steps if math.isclose(smallest, h, rel_tol=tol)), None)
    if step is None:
        return None
    k = (values - values[0]) / step  # (the exact step: no error that grows along the values)
    return step if np.allclose(k, np.round(k), rtol=0, atol=tol) else None


def _is_float(s: str, python: bool = False) -> bool:
    """Whether a CSV cell is a number (``python``: whether Python's ``float`` takes it)."""
    try:
        float(s) if python else _number(s)
        return True
    except ValueError:
        return False


def _number(s: str) -> float:
    """A CSV cell as a number, as spreadsheets and pandas read one: Python's ``float`` also
    takes digit separators (``1_000``), which they read as text."""
    if "_" in s:
        raise ValueError(f"could not convert string to float: {s!r}")
    v = float(s)
    if math.isinf(v) and "inf" not in s.lower():  # digits beyond float64 (400 nines): out of
        return math.copysign(sys.float_info.max, v)  # range, as the caller says, not "inf"
    return v


NPY_HEADER_MAX = 10_000  # bytes of a .npy header: numpy's own limit (np.load's default)


def _check_npy_header(f, size: int, where: str) -> None:
    """Refuse a ``.npy`` stream whose header promises more bytes than ``size`` holds, before
    numpy allocates what the header claims (a 200-byte file can claim terabytes)."""
    try:
        version = np.lib.format.read_magic(f)
    except (ValueError, EOFError):  # not a .npy stream: np.load says what it is
        return
    if version not in ((1, 0), (2, 0), (3, 0)):  # numpy's reader refuses the others itself
        return
    # the header's length, read here: numpy reads every byte it claims (up to 4 GiB) before
    # its own limit on the header's size applies
    start = f.tell()
    field = 2 if version == (1, 0) else 4
    raw = f.read(field)
    if len(raw) < field:
        raise DataError(f"{where}: not a readable .npy file (it ends inside its header)")
    length = int.from_bytes(raw, "little")
    if not 0 < length <= NPY_HEADER_MAX:
        raise DataError(
            f"{where}: not a readable .npy file (its header claims {length:,} bytes; numpy "
            f"reads headers of at most {NPY_HEADER_MAX:,})"
        )
    f.seek(start)
    try:
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:  # (version 3 is version 2 with a UTF-8 header)
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, EOFError, SyntaxError) as e:
        why = " ".join(str(e).split())[:120]
        raise DataError(f"{where}: not a readable .npy file ({why})") from None
    need = math.prod(shape) * dtype.itemsize
    if need > size:
        raise DataError(
            f"{where}: its header promises an array of shape {tuple(shape)} ({need:,} bytes), "
            f"but the file holds {size:,} bytes"
        )
    if math.prod(shape) > _memory_values():
        raise DataError(
            f"{where}: an array of shape {tuple(shape)} holds more values than this machine's "
            f"memory holds for training (about {_memory_values():,}); use fewer examples"
        )


def _read_array(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f:
            # (a zip appended to a .npy is still a .npy; an archive of no members, as
            # np.savez(path) writes, starts at its end record)
            zipped = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
        if path.suffix.lower() == ".npy" or not (zipped and zipfile.is_zipfile(path)):
            # (a .npy renamed .npz is still one: its header is checked as any .npy's)
            with open(path, "rb") as f:
                _check_npy_header(f, path.stat().st_size, str(path))
            out = np.load(path, allow_pickle=False)
            if not isinstance(out, np.ndarray):  # (an archive numpy found after all)
                out.close()
                raise DataError(f"{path} is not a readable .npy array")
            return out
        with zipfile.ZipFile(path) as zf:
            packed = [i for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED]
            declared = sum(i.file_size for i in packed)
            if declared > max(1 << 26, 1100 * sum(i.compress_size for i in packed)):
                raise DataError(  # the members together, however many (see below)
                    f"{path} declares {declared:,} bytes from "
                    f"{sum(i.compress_size for i in packed):,} compressed: more than a "
                    "compressor gives for real data; refused unread"
                )
            for info in zf.infolist():
                where = f"{path}[{info.filename!r}]"
                if not info.filename.endswith(".npy"):  # numpy would read it as raw bytes
                    raise DataError(f"{where} is not a .npy array (an .npz holds only those)")
                # a member's declared size is only what the zip says: deflate (what numpy
                # writes) expands at most about 1,032 times, so more is a crafted member
                if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(
                    1 << 26, 1100 * info.compress_size
                ):
                    raise DataError(
                        f"{where} declares {info.file_size:,} bytes from "
                        f"{info.compress_size:,} compressed: more than a compressor gives "
                        "for real data; refused unread"
                    )
                with zf.open(info) as f:
                    _check_npy_header(f, info.file_size, where)
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        for k, v in out.items():  # (a member that is not a .npy stream comes back as bytes)
            if not isinstance(v, np.ndarray):
                raise DataError(f"{path}: its member {k!r} is not a numpy array")
        return out
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(
                f"{path} is not a numeric numpy array (it holds Python objects or is not a .npy/"
                ".npz file at all); only numeric arrays are read"
            ) from None
        raise DataError(f"{path} is not a readable numpy file: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a readable numpy file: {e}") from None
    except MemoryError:
        raise DataError(f"{path} is too large to read into this machine's memory") from None


def _shape_hint(a: np.ndarray) -> str:
    """What an array of the wrong shape for a table could be given as."""
    if a.ndim == 3:
        return (
            " or images (examples, channels, height, width): for grayscale images add the "
            "channel axis, numpy.save(path, a[:, None])"
        )
    if a.ndim == 4:
        return (
            " (images, (examples, channels, height, width), are read from one .npy array, or "
            "an .npz of one)"
        )
    if a.ndim == 1:
        return ": for one column of numbers, add the column axis, numpy.save(path, a[:, None])"
    return ""


def image_words(c: int, h: int, w: int) -> str:
    """``"16x16 grayscale images"``, ``"8x8 RGB images"``, ``"8x8 images of 2 channels"``."""
    kind = {1: "grayscale ", 3: "RGB "}.get(c, "")
    return f"{h}x{w} {kind}images" + ("" if kind else f" of {c} channels")


def examples_words(spec: str, k: int) -> str:
    """What a file given to a run holds, in a refusal: a folder's images as images
    (``"8x8 RGB images (192 values each)"``), anything else as ``"examples of k values"``."""
    path = user_path(spec)
    if path.is_dir():
        c, h, w = _image_folder(path, 0, False, shuffle=False, val_fraction=0,
                                test_fraction=0).shape  # fmt: skip
        return f"{image_words(c, h, w)} ({k} values each)"
    return f"examples of {k} values"


def reduced_bits_note(cfg: dict) -> str | None:
    """For a run of images read at ``data.bits < 8``: its values (samples, decoded files) are
    its levels, the top bits of 8-bit pixels, not 8-bit images (None for any other run)."""
    bits = int(cfg["data"]["options"].get("bits", 8))
    levels = cfg["resolved"].get("levels")
    if bits >= 8 or levels != 2**bits:
        return None
    return (
        f"the values are {bits}-bit, 0 to {levels - 1}, as the run models them: the top "
        f"{bits} bits of 8-bit pixels (pixels >> {8 - bits}), not 8-bit images"
    )


def unit_scaled(x, levels: int | None, where: str) -> str | None:
    """An image file for a run of more than two levels whose values all lie in [0, 1]:
    images scaled to [0, 1] (a float array of fractions) are refused with the scaling to give;
    values that are all 0 or 1 give a warning (returned), since a float array that looks
    scaled and an integer one of two levels read the same here."""
    if levels is None or levels <= 2 or not len(x):
        return None
    x = torch.as_tensor(x)
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        return None
    if float(x.max()) == 0:  # (all zeros, blank images: the same levels however scaled)
        return None
    scale = f"numpy.rint(a * {levels - 1})"
    if x.is_floating_point() and not bool((x == x.round()).all()):
        raise DataError(
            f"{where} holds fractions in [0, 1]: images scaled to [0, 1]? this run models "
            f"{levels} levels, integers in [0, {levels - 1}]: give {scale}"
        )
    return (
        f"{where}: every value is 0 or 1, scored as the levels 0 and 1 of the {levels} this "
        f"run models; if these are images scaled to [0, 1], give {scale}"
    )


def check_levels(x, levels: int | None, bits: int, where: str, coding: bool = False) -> None:
    """``DataError`` when discrete data of another file lie outside the run's ``levels``, saying
    what to give: a folder of images is read at the run's ``bits``, an array of values within
    the levels is taken as it is (what ``flowforge decompress`` writes; ``eval`` reads an
    8-bit array for a run of fewer bits by its top bits first, as training did).
    ``coding``: for ``flowforge compress``, where the shift loses the low bits (the file
    decodes to ``a >> (8 - bits)``) and a folder is refused."""
    if levels is None or not len(x):
        return
    x = torch.as_tensor(x)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError(f"{where} holds NaN or inf; this run models {levels} levels")
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi <= levels - 1:
        return
    hint = ""
    whole = not x.is_floating_point() or bool((x == x.round()).all())
    if coding and not whole:  # (what is wrong first: 16.000001 is not an integer, not a bound)
        a = x.reshape(len(x), -1).numpy()
        row, col = divmod(int(np.argmax(a != np.rint(a))), a.shape[1])
        raise DataError(
            f"{where}: the value at row {row}, column {col} (0-based) is {a[row, col]}, not an "
            f"integer; this run models {levels} levels, integers in [0, {levels - 1}]"
        )
    if coding and bits < 8 and whole and hi <= 255 and levels == 2**bits:
        hint = (
            f": this run keeps the top {bits} bits of 8-bit pixels ({levels} levels), and "
            f"an array is coded as it is: to compress these values losslessly use a run "
            f"trained on 8 bits, or, to code their top {bits} bits, give a >> {8 - bits} "
            f"(which decodes to a >> {8 - bits}, not a)"
        )
    elif bits < 8 and whole and hi <= 255 and levels == 2**bits:
        hint = (
            f": this run keeps the top {bits} bits of 8-bit pixels ({levels} levels), and an "
            f"array is taken as the model's levels, as flowforge decompress writes them: give "
            f"a >> {8 - bits}, or the images as a folder"
        )
    # (bounds with the digits that tell them apart from the levels': 16.000001, not 16)
    outside = ((x < 0) | (x > levels - 1)).reshape(len(x), -1).any(1)
    first = int(outside.nonzero()[0]) if bool(outside.any()) else 0
    lo, hi = (str(int(v)) if v == round(v) else str(x.new_tensor(v).numpy()) for v in (lo, hi))
    raise DataError(
        f"{where} has values in [{lo}, {hi}] ({int(outside.sum())} of its {len(x)} examples, "
        f"the first at index {first}, 0-based); this run models {levels} levels, values in "
        f"[0, {levels - 1}]{hint}"
    )


def _image_array(
    a: np.ndarray,
    path: Path,
    seed: int,
    bits,
    levels,
    val_fraction,
    test_fraction,
    shuffle,
    checks: bool = True,
) -> Dataset:
    """Images given as one integer array ``(N, C, H, W)`` (what ``flowforge decompress``
    writes): 8-bit values kept to their top ``bits`` bits as for a folder of PNGs (levels
    ``2**bits``), or, with ``levels``, integers in ``[0, levels - 1]`` as they are. A uint8
    array is shifted in place, not copied. ``checks``: look for what the warnings say
    (duplicates across the splits); False when a run's data are reloaded
    (:func:`reload_dataset`)."""
    where = str(path)
    if a.size == 0:
        raise DataError(f"{where} is empty")
    transpose = "numpy.save(path, a.transpose(0, 3, 1, 2))"
    small = (1, 3, 4)  # (gray, RGB, RGBA: a channel count; rarely an image's height or width)
    # (a last axis of 1, 3 or 4 after a second of more than 4 reads as channels last, such
    # as (N, 8, 2, 3); a square one, (N, 8, 4, 4), as 8 channels of 4x4 images; a second of
    # 2 to 4, as (N, 2, 8, 4), could be either: read channels first, and said, below)
    if (a.shape[1] > 4 and a.shape[2] > 4 and a.shape[3] <= 4) or (
        a.shape[3] in small and a.shape[1] > 4 and a.shape[2] != a.shape[3]
    ):
        raise DataError(
            f"{where} has shape {a.shape}: channels last? images are (examples, channels, "
            f"height, width): {transpose}"
        )
    layout = None
    if a.shape[1] <= 4 and a.shape[3] in small and a.shape[2] != a.shape[3]:
        layout = (  # (N, 1, 8, 3): gray 8x3 images, or RGB 1x8 strips?
            f"{where} has shape {a.shape}, read as {a.shape[1]} channel(s) of "
            f"{a.shape[2]}x{a.shape[3]} images (channels first); if its last axis is the "
            f"channels ({a.shape[3]} channel(s) of {a.shape[1]}x{a.shape[2]} images), save it as "
            f"{transpose}"
        )
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise DataError(
            f"{where} holds images of dtype {a.dtype}; expected integer pixel values (uint8, "
            "0-255, or integers in [0, levels - 1] with data.levels): scale and round them, "
            "or flatten to a table, a.reshape(len(a), -1)"
        )
    if a.dtype == bool and levels is None:
        raise DataError(
            f"{where} holds booleans: binary images? give data.levels=2 (then False/True are "
            "the levels 0 and 1); without it they would be 8-bit pixel values 0 and 1"
        )
    lo, hi = int(a.min()), int(a.max())
    low = None  # (the few-levels note, for 8-bit pixels only)
    if levels is not None:
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 2**16:
            raise DataError(f"data.levels must be an integer in [2, 65536], got {levels!r}")
        if bits is not None:
            raise DataError(
                "data.bits keeps the top bits of 8-bit images, data.levels takes integers as "
                "they are: give one of them"
            )
        if lo < 0 or hi > levels - 1:
            raise DataError(
                f"{where}: levels={levels} needs integer values in [0, {levels - 1}], got "
                f"values in [{lo}, {hi}]"
            )
        x = a.astype(np.int32 if levels > 256 else np.uint8, copy=False)
    else:
        bits = 8 if bits is None else bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise DataError(f"data option bits must be an integer in [1, 8], got {bits!r}")
        if lo < 0 or hi > 255:
            raise DataError(
                f"{where} holds images with values in [{lo}, {hi}]; 8-bit pixel values are in "
                "[0, 255] (other integers: give data.levels, values in [0, levels - 1])"
            )
        if checks and bits < 8 and hi < 2**bits:  # (a new run; a run read again reads as it did)
            # data.bits reads 8-bit pixels and keeps their top bits: these would all be 0 or
            # near it, while they look like a b-bit run's own samples (what `sample` writes)
            raise DataError(
                f"{where}: its values ({lo} to {hi}) fit in {bits} bits, and data.bits={bits} "
                f"keeps the top {bits} bits of 8-bit pixels (a >> {8 - bits}), which would make "
                f"them {'all 0' if hi < 2 ** (8 - bits) else 'nearly black'}: values that are "
                f"already the levels (a {bits}-bit run's samples) take data.levels="
                f"{2**bits} instead of data.bits"
            )
        x = a.astype(np.uint8, copy=False)  # (the file's array itself, shifted in place)
        if bits < 8:
            np.right_shift(x, 8 - int(bits), out=x)
        levels = 2 ** int(bits)
        low = _low_levels(hi, where) if bits == 8 else None
    del a
    tr, va, te = _splits(len(x), seed, val_fraction, test_fraction, shuffle, where)
    parts = [x[i] for i in (tr, va, te)]
    # (C order, whatever the file's: a Fortran-order array trained differently)
    t = [torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)) for p in parts]
    notes = []
    if checks:
        few = _few_rows({k: len(p) for k, p in zip(("train", "val", "test"), parts)}, True)
        notes = [n for n in (layout, low, few) if n]
        notes += _duplicates(parts[0], {"val": parts[1], "test": parts[2]}, "images")
    return Dataset(
        where, *t, shape=tuple(x.shape[1:]), levels=int(levels), kind="image",
        info={"warnings": notes} if notes else {},
    )  # fmt: skip


def _as_table(a: np.ndarray, where: str) -> np.ndarray:
    if a.size == 0:
        raise DataError(f"{where} is empty")
    if a.dtype.names:  # a record array, as np.genfromtxt(names=True) reads a CSV
        fields = ", ".join(a.dtype.names[:6]) + (", ..." if len(a.dtype.names) > 6 else "")
        raise DataError(
            f"{where} is a structured array with fields ({fields}); expected a plain table "
            "(examples, columns): save numpy.lib.recfunctions.structured_to_unstructured(a), or "
            "give the CSV itself (its header names the columns)"
        )
    if a.ndim != 2:
        raise DataError(
            f"{where} has shape {a.shape}; expected a table (examples, columns){_shape_hint(a)}"
        )
    if np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(f"{where} has complex dtype {a.dtype}; expected real numbers")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DataError(f"{where} has dtype {a.dtype}; expected numbers")
    if a.dtype.itemsize > 8 and np.issubdtype(a.dtype, np.floating):  # longdouble
        finite = np.isfinite(a).all()
        if finite and (np.abs(a) > np.finfo(np.float32).max).any():
            rows = np.nonzero((np.abs(a) > np.finfo(np.float32).max).any(axis=1))[0]
            raise DataError(
                f"{where} has values beyond float32's range (about 3.4e38) in rows (0-based) "
                f"{_rows(rows)}"
            )
    exact = a.dtype in (np.float32, np.float16, bool) or (
        np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize <= 2
    )
    # float32 holds these exactly: no float64 copy (a large file needs memory for two copies
    # while it is split, not nine)
    a = a.astype(np.float32 if exact else np.float64, copy=False)
    _check_finite(a, where, "rows (0-based)", 0)
    big = [] if exact else _bad_rows(a, lambda c: np.abs(c) > np.finfo(np.float32).max)
    if len(big):
        raise DataError(
            f"{where} has values beyond float32's range (about 3.4e38) in rows (0-based) "
            f"{_rows(big)}"
        )
    return a


def _splits(
    n: int, seed: int, val_fraction: float, test_fraction: float, shuffle: bool, where: str = ""
):
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise DataError(f"data option {name} must be a number in [0, 1), got {v!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"data options val_fraction + test_fraction must be below 1, got "
            f"{val_fraction} + {test_fraction}"
        )
    if not isinstance(shuffle, bool):
        raise DataError(f"data option shuffle must be true or false, got {shuffle!r}")
    if n < 3 and (val_fraction or test_fraction):
        of = f"{where}: " if where else ""
        raise DataError(f"{of}need at least 3 examples to split into train/val/test, got {n}")
    n_val = max(1, round(n * val_fraction)) if val_fraction else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"no training examples left after the val/test split of {n}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


BOUND_WORDS = {"positive": (0.0, None), "negative": (None, 0.0)}
BOUNDS_FORMS = (
    "positive, negative, or [lower, upper] with null for no bound (e.g. {income: positive, "
    "share: [0, 1]})"
)


def _bound_pair(value) -> bool:
    """Whether ``value`` is ``[lower, upper]``: numbers within float32's range (the models'
    precision) or None, not both None."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or list(value) == [None, None]:
        return False
    top = float(np.finfo(np.float32).max)
    for v in value:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        try:
            if not abs(float(v)) <= top:  # (NaN and inf too)
                return False
        except OverflowError:  # (an integer too large for a float)
            return False
    return True


def _parse_bounds(spec, width: int, names: list[str] | None) -> dict:
    """``data.bounds`` (columns, by name or 0-based index, to ``positive``, ``negative`` or
    ``[lower, upper]``) as ``{"lower": [...], "upper": [...]}``, one entry (or None) a column."""
    if not isinstance(spec, dict) or not spec:
        raise DataError(
            f"data.bounds must map columns (names or 0-based indices) to {BOUNDS_FORMS}"
        )
    lower, upper = [None] * width, [None] * width
    seen = {}
    for key, value in spec.items():
        j = _column_index(key, width, names, "data.bounds column")
        if j in seen:
            raise DataError(
                f"data.bounds names column {_column_name(j, names)} twice ({seen[j]!r}, {key!r})"
            )
        seen[j] = key
        if isinstance(value, str) and value.strip().lower() in BOUND_WORDS:
            lo, hi = BOUND_WORDS[value.strip().lower()]
        elif _bound_pair(value):
            lo, hi = (None if v is None else float(v) for v in value)
            if lo is not None and hi is not None and not lo < hi:
                raise DataError(
                    f"data.bounds for column {_column_name(j, names)}: expected lower < upper, "
                    f"got [{lo:g}, {hi:g}]"
                )
        else:
            raise DataError(
                f"data.bounds for column {_column_name(j, names)}: expected {BOUNDS_FORMS}, "
                f"within float32's range (the models' precision), got {str(value)[:60]}"
            )
        lower[j], upper[j] = lo, hi
    return {"lower": lower, "upper": upper}


def check_bounds(
    arrays: dict,
    bounds: dict,
    names: list[str] | None,
    where: str,
    integers=(),
    scoring: bool = False,
) -> None:
    """A ``DataError`` naming the first column with a value on or beyond its bounds (within
    them, inclusive, for the ``integers`` columns; ``arrays``: split name, or "", to its
    rows). ``scoring``: rows given to a trained run's model (``eval --data``), whose options
    are fixed: the remedy is the rows, not the data options."""
    for split, a in arrays.items():
        a = np.asarray(a)
        for j, (lo, hi) in enumerate(zip(bounds["lower"], bounds["upper"])):
            closed = j in integers
            for b, side in ((lo, "lower"), (hi, "upper")):
                if b is None or not len(a):
                    continue
                col = a[:, j]
                below = side == "lower"
                if closed:
                    bad = col < b if below else col > b
                else:
                    bad = col <= b if below else col >= b
                n = int(bad.sum())
                on = int((col == b).sum())
                integral = n == on and float(b).is_integer() and _whole(col)
                if n and not closed and integral and not scoring:
                    # a flag or a count whose values sit on its (integer) bound, as they may
                    raise DataError(
                        f"{where}: column {_column_name(j, names)} holds only integers, "
                        f"{n} of its {len(col)} {split + ' ' if split else ''}values on its "
                        f"{side} bound {b:g}: declare it in data.integers (then its bounds are "
                        f"inclusive: --set 'data.integers=[{_column_key(j, names)}]')"
                    )
                if n and not closed and n == on >= max(2, ATOM_SHARE * len(col)) and not scoring:
                    raise DataError(
                        f"{where}: column {_column_name(j, names)} has {on} of its {len(col)} "
                        f"{split + ' ' if split else ''}values exactly on its {side} bound "
                        f"{b:g}: a density has no room for a share of values on one point "
                        "(data.bounds are open intervals); model the exact values apart (a "
                        "flag column and the rest), or widen the bound"
                    )
                if n:
                    worst = col.min() if below else col.max()
                    what = f"{split} value" if split else "value"
                    why = (
                        "the bounds of an integer column are the integers it may hold"
                        if closed
                        else "data.bounds are open intervals, as the density is not defined "
                        "on a bound"
                    )
                    first = int(np.flatnonzero(bad)[0])
                    rounded = (  # (rows read as float32: a value near the bound is on it)
                        "; float32, the models' precision, reads a value within about 6e-8 "
                        "of the bound, relative to it, as the bound"
                        if a.dtype == np.float32 and float(worst) == b and not closed
                        else ""
                    )
                    raise DataError(
                        f"{where}: column {_column_name(j, names)} has {n} {what}"
                        f"{'' if n == 1 else 's'} {'' if closed else 'on or '}"
                        f"{'below' if below else 'above'} its {side} bound {b:g} (the "
                        f"{'lowest' if below else 'highest'}: {float(worst):.10g}{rounded}; "
                        f"the first at row index {first}, 0-based); {why}: "
                        + (
                            "the run's model has no density there, so drop those rows"
                            if scoring
                            else "widen it, or drop those rows"
                        )
                    )


def model_bounds(bounds: dict | None, integers=()) -> dict | None:
    """The intervals the model's ``Bounded`` layer maps: ``data.bounds`` as given, except for
    integer columns, whose inclusive range ``[a, b]`` of integers becomes ``(a - 1/2, b + 3/2)``
    around the dequantized values ``x + u`` in ``[a, b + 1)`` (a margin that keeps a value
    and its noise off the bounds in float32)."""
    if not bounds:
        return bounds
    lower, upper = list(bounds["lower"]), list(bounds["upper"])
    for j in integers:
        lower[j] = None if lower[j] is None else lower[j] - 0.5
        upper[j] = None if upper[j] is None else upper[j] + 1.5
    return {"lower": lower, "upper": upper}


def describe_bounds(bounds: dict, names: list[str], integers=()) -> str:
    """``data.bounds`` as a user reads them: each bounded column, its interval and its map
    (for integer columns, the integers they hold)."""
    out = []
    for j, (name, a, b) in enumerate(zip(names, bounds["lower"], bounds["upper"])):
        if a is None and b is None:
            continue
        name = visible(name)  # (a header's line break cannot start a line of its own)
        if j in integers:
            lo = "-inf" if a is None else f"{a:g}"
            out.append(f"{name} integers in [{lo}, {'inf' if b is None else f'{b:g}'}]")
        elif a is not None and b is not None:
            out.append(f"{name} in ({a:g}, {b:g}), logit")
        elif a is not None:
            out.append(f"{name} > {a:g}, log")
        else:
            out.append(f"{name} < {b:g}, -log({b:g} - x)")
    return "; ".join(out)


def _parse_integers(spec, width: int, names: list[str] | None, bounds: dict | None) -> list[int]:
    """``data.integers`` (columns by name or 0-based index: a list, or a comma-separated
    string) as sorted indices."""
    parts = [p.strip() for p in spec.split(",") if p.strip()] if isinstance(spec, str) else spec
    if isinstance(parts, (int, float)) and not isinstance(parts, bool):
        parts = [parts]
    if not isinstance(parts, (list, tuple)) or not parts:
        raise DataError(
            "data.integers must list the integer-valued columns (names or 0-based indices), "
            f"e.g. [age, visits], got {spec!r}"
        )
    out = [_column_index(p, width, names, "data.integers column") for p in parts]
    if len(set(out)) != len(out):
        raise DataError(f"data.integers names a column twice: {spec!r}")
    for j in out:
        for b in (bounds["lower"][j], bounds["upper"][j]) if bounds else ():
            if b is not None and (b != math.floor(b) or abs(b) >= 2.0**24):
                raise DataError(
                    f"data.bounds for column {_column_name(j, names)}, an integer column: "
                    f"expected whole numbers (the integers it may hold) below 2^24 in "
                    f"magnitude, got {b:g}"
                )
    return sorted(out)


def check_integers(
    arrays: dict, integers: list[int], names: list[str] | None, where: str, dtype=torch.float32
):
    """A ``DataError`` naming the first integer column (``data.integers``) holding a value that
    is not a whole number, or one too large for the model's ``dtype`` to carry dequantization
    noise (``arrays``: split name, or "", to its rows)."""
    from ..core import integer_limit

    top = integer_limit(dtype)  # (the models' precision)
    precision = str(dtype).removeprefix("torch.")
    for split, a in arrays.items():
        a = np.asarray(a)
        for j in integers:
            if not len(a):
                continue
            col = a[:, j]
            bad = col != np.floor(col)
            what = f"in the {split} split" if split else "in the file"
            if bad.any():
                n = int(bad.sum())
                raise DataError(
                    f"{where}: column {_column_name(j, names)} is in data.integers but holds "
                    f"{n} {'value' if n == 1 else 'values'} that {'is' if n == 1 else 'are'} "
                    f"not {'a whole number' if n == 1 else 'whole numbers'} {what} (e.g. "
                    f"{float(col[bad][0]):.10g}); drop it from data.integers, or round it"
                )
            if np.abs(col).max() >= top:
                raise DataError(
                    f"{where}: column {_column_name(j, names)} in data.integers holds "
                    f"{float(np.abs(col).max()):g}, beyond the {top:g} that {precision} resolves "
                    "with dequantization noise added: a continuous column, rather (drop it from "
                    "data.integers)"
                )


def to_reals(a: np.ndarray, bounds: dict | None, dtype=torch.float64) -> np.ndarray:
    """A table's columns as the model sees them after its ``Bounded`` layer (the layer itself,
    in ``dtype``): log for one bound, logit for two; ``a`` if none. Values on a bound come out
    infinite (they are refused before this is called)."""
    if not bounds:
        return a
    from ..core import _Checks
    from ..transforms import Bounded

    layer = Bounded(a.shape[1], bounds["lower"], bounds["upper"]).to(dtype)
    x = torch.as_tensor(np.asarray(a), dtype=dtype)
    with torch.no_grad(), _Checks(False):
        y, _ = layer(x)
    return y.numpy()


def _with_noise(a: np.ndarray, columns) -> np.ndarray:
    """A float64 copy of ``a`` with one draw of dequantization noise on ``columns``, seeded:
    the same every time (the values an integer column's model sees)."""
    t = np.array(a, dtype=np.float64)
    if len(columns):
        t[:, columns] += np.random.default_rng(0).random((len(t), len(columns)))
    return t


def model_view(train: np.ndarray, bounds: dict | None, integers=None) -> np.ndarray:
    """A table's training rows as its model sees them before the standardisation: its integer
    columns with one draw of dequantization noise (:func:`_with_noise`), then the bounds' map
    (:func:`model_bounds`), in float64."""
    if not bounds and not integers:
        return train
    return to_reals(_with_noise(train, list(integers or ())), model_bounds(bounds, integers or ()))


def check_float32_bounds(arrays: dict, bounds: dict, integers, names, where: str) -> None:
    """A ``DataError`` for a bounded column that float32 (the models' precision) cannot map:
    a value that rounds onto its bound (0.99999999 with the bound 1), or a bound so far from
    the values that their distance to it keeps too little of their variation (values of 1 to
    10 above a bound of -1e7; for an integer column, its values with their noise)."""
    ints = set(integers or ())
    wide = model_bounds(bounds, integers or ())
    pairs = enumerate(zip(wide["lower"], wide["upper"]))
    cols = [j for j, (a, b) in pairs if (a, b) != (None, None)]
    if not cols:
        return
    sub = {k: [wide[k][j] for j in cols] for k in ("lower", "upper")}
    shown = {k: [bounds[k][j] for j in cols] for k in ("lower", "upper")}  # (as given)
    noisy = [k for k, j in enumerate(cols) if j in ints]
    for split, a in arrays.items():
        if not len(a):
            continue
        v = _with_noise(np.asarray(a)[:, cols], noisy)
        y32 = to_reals(v.astype(np.float32), sub, torch.float32)
        bad = ~np.isfinite(y32)
        if bad.any():
            k = int(np.flatnonzero(bad.any(0))[0])
            value = float(np.asarray(a)[:, cols][bad[:, k], k][0])
            raise DataError(
                f"{where}: column {_column_name(cols[k], names)} has {split + ' ' if split else ''}"
                f"values that float32 (the models' precision) rounds onto a bound (e.g. "
                f"{value:.10g}, bounds {_interval(shown, k)}): widen the bound a little, or "
                "round the values"
            )
        if split != "train":
            continue
        y64 = to_reals(v, sub)
        sd = y64.std(0)
        # (the typical value's error: a few values near a bound lose digits in any case)
        err = np.median(np.abs(y32.astype(np.float64) - y64), 0)
        lost = np.flatnonzero((err > 1e-2 * sd) | (sd == 0))
        if lost.size:
            k = int(lost[0])
            raise DataError(
                f"{where}: column {_column_name(cols[k], names)} lies so far inside its bounds "
                f"{_interval(shown, k)} that float32 (the models' precision) keeps too little "
                "of its variation on their log scale: set the bounds near the values (a lower "
                "bound just below the smallest possible value, e.g. 0 for amounts)"
            )


def _interval(bounds: dict, k: int) -> str:
    a, b = bounds["lower"][k], bounds["upper"][k]
    return f"({'-inf' if a is None else f'{a:g}'}, {'inf' if b is None else f'{b:g}'})"


def model_stats(train: Tensor, bounds: dict | None = None, integers=None) -> dict:
    """The standardisation statistics of a training split as its model sees it
    (:func:`model_view`)."""
    if bounds or integers:
        train = torch.from_numpy(model_view(train.numpy(), bounds, integers))
    return _standardize_stats(train)


# data.whiten: auto decorrelates a table with fewer than this many training rows per column
WHITEN_ROWS_PER_COLUMN = 10
WHITEN_MAX_COLUMNS = 2048  # (the factor is columns^2 numbers, in the model and in memory)


WHITEN_MIN_ROWS = 10  # (fewer: a covariance of so few rows is no start for a model)


def whitening(ds) -> dict | None:
    """``{"loc", "factor"}`` of the :class:`flowforge.transforms.Whiten` a table's model
    starts with when ``data.whiten`` asks (auto: fewer than ``WHITEN_ROWS_PER_COLUMN``
    training rows per column), else None: the mean and the Cholesky factor of the covariance
    of :func:`shrunk_gaussian` (the estimator of the Gaussian eval sets beside the model),
    fitted to the training rows as the model sees them (:func:`model_view`). Computed when a
    model is built (it is saved in the model), not when data is loaded."""
    if ds.stats is None or ds.kind != "table" or ds.levels is not None:
        return None
    n, d = ds.train.shape[0], math.prod(ds.shape)
    option = ds.info.get("whiten", "auto")
    if option is True and d > WHITEN_MAX_COLUMNS:
        raise DataError(
            f"data.whiten: true takes at most {WHITEN_MAX_COLUMNS:,} columns (its factor is "
            f"columns^2 numbers); this table has {d:,}"
        )
    if option is False or d < 2 or n < WHITEN_MIN_ROWS:
        return None
    if option == "auto" and (n >= WHITEN_ROWS_PER_COLUMN * d or d > WHITEN_MAX_COLUMNS):
        return None
    t = model_view(ds.train.numpy(), ds.info.get("bounds"), ds.info.get("integers"))
    try:
        loc, factor = shrunk_gaussian(t)
    except np.linalg.LinAlgError:  # (a singular correlation: the plain standardisation)
        return None
    return {"loc": loc, "factor": factor}


def shrunk_gaussian(train, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, F)`` of the Gaussian fitted to a table's training rows, ``F`` the lower
    triangular factor of its covariance ``F F^T``: the columns' means and standard deviations
    (as the standardisation takes them), and their Ledoit-Wolf shrunk correlation (defined
    with fewer rows than columns, blind to the columns' units and to their order). A
    ``numpy.linalg.LinAlgError`` when that correlation is singular (two rows, no shrinkage).
    ``overwrite``: ``train`` is a float64 array of the caller's own that may be standardised in
    place (no copy of the table)."""
    from sklearn.covariance import ledoit_wolf

    given = np.asarray(train)
    t = given if overwrite and given.dtype == np.float64 else np.array(given, dtype=np.float64)
    stats = _standardize_stats(torch.from_numpy(t))
    loc, sd = np.asarray(stats["loc"]), np.asarray(stats["scale"])
    t -= loc  # (standardised in place: one float64 table, and sklearn's blocks of it)
    t /= sd
    corr, _ = ledoit_wolf(t, assume_centered=True)
    if np.linalg.eigvalsh(corr)[0] < 1e-8:
        raise np.linalg.LinAlgError("the shrunk correlation is singular")
    return loc, sd[:, None] * np.linalg.cholesky(corr)


def _restandardize(ds) -> None:
    """A table's standardisation taken again from its training split, after the split
    changed (``--limit``, ``--target-columns``)."""
    ds.stats = model_stats(ds.train, ds.info.get("bounds"), ds.info.get("integers"))


def _standardize_stats(train: Tensor) -> dict:
    if train.numel() > 1 << 24 and train.dim() == 2:  # a large table: no float64 copy of it
        mean, sd, _ = _column_stats(train.numpy())
        loc, scale = torch.from_numpy(mean), torch.from_numpy(sd)
    else:
        t = train.double()
        loc = t.mean(0)
        scale = t.std(0, correction=0) if t.shape[0] > 1 else torch.ones_like(loc)
    # a spread of at most 1e-8 is left unscaled only where it is float32 rounding around the
    # column's mean, or nothing at all: a small column in its own units (5e-9 +- 5e-9, a
    # wavelength in metres) is scaled like any other, or the flow could not fit it
    wide = train.dtype == torch.float64  # (a float64 run's data: its own rounding and range)
    eps = torch.finfo(torch.float64 if wide else torch.float32).eps
    noise = 4 * eps * loc.abs()
    ok = (scale > 1e-8) | ((scale > noise) & (scale > (1e-290 if wide else 1e-30)))
    scale = torch.where(ok, scale, torch.ones_like(scale))
    return {"loc": loc.tolist(), "scale": scale.tolist()}


def _check_levels(x: np.ndarray, levels: int, where: str) -> None:
    if x.min() < 0 or x.max() > levels - 1 or not np.array_equal(x, np.floor(x)):
        raise DataError(
            f"{where}: levels={levels} needs integer values in [0, {levels - 1}], got values in "
            f"[{x.min():g}, {x.max():g}]{'' if np.array_equal(x, np.floor(x)) else ', non-integer'}"
        )


def _table(
    path: Path,
    seed: int,
    checks: bool = True,
    dtype: torch.dtype = torch.float32,
    /,
    val_fraction=None,
    test_fraction=None,
    shuffle=None,
    levels=None,
    standardize=None,
    header=None,
    bounds=None,
    integers=None,
    whiten="auto",
    bits=None,
    targets=None,
    **options,
) -> Dataset:
    """A table file, or images as one array ``(N, C, H, W)`` (:func:`_image_array`, which
    takes ``bits``); ``targets``: the ``--target-columns`` of a conditional run (checked
    against ``bounds`` and ``integers`` before any value is). ``checks``: look for what the
    warnings say (outliers, duplicates, integer columns, atoms); False when a finished run's
    data are reloaded (:func:`reload_dataset`): the checks that refuse data are made either
    way. ``dtype``: the splits' precision (``train.dtype``), which the checks of what a
    precision holds are made for. (Positional only: a data option of that name is refused as
    any unknown one.)"""
    array = path.suffix.lower() != ".csv"  # (may hold images, which take bits)
    _no_options(str(path), options, _TABLE_OPTIONS + (("bits",) if array else ()))
    _check_header_option(header, path)
    if levels is not None:  # (before a value is read; an image array checks its own range)
        whole = isinstance(levels, int) or (isinstance(levels, float) and levels.is_integer())
        if isinstance(levels, bool) or not whole or not 2 <= levels <= 2**23:
            raise DataError(
                f"data.levels must be an integer in [2, {2**23:,}] (the integers a float32 "
                f"model tells apart), got {levels!r}"
            )
        levels = int(levels)
    if levels is not None and standardize:
        raise DataError(
            "data.standardize applies to continuous tables; a table with levels is modelled on "
            "its integer grid 0..levels-1 by dequantization (drop standardize, or levels)"
        )
    if not (isinstance(whiten, bool) or whiten == "auto"):  # (not 0 or 1: they equal bools)
        from ..models.registry import _short

        raise DataError(f"data.whiten must be auto, true or false, got {_short(whiten, 40)}")
    if whiten is True and (levels is not None or standardize is False):
        raise DataError(
            "data.whiten: true replaces the standardisation of a continuous table with a "
            "decorrelating one; it needs a continuous table with standardize on"
        )
    if levels is not None and integers is not None:
        raise DataError(
            "data.integers applies to continuous tables with some integer columns; a table "
            "with levels is all integers already (drop integers, or levels)"
        )
    if levels is not None and bounds is not None:
        raise DataError(
            "data.bounds applies to continuous tables; a table with levels is modelled on its "
            "integer grid 0..levels-1 (drop bounds, or levels)"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    split = {"val_fraction": val_fraction, "test_fraction": test_fraction, "shuffle": shuffle}
    val_fraction = 0.1 if val_fraction is None else val_fraction  # (the defaults: None, so
    test_fraction = 0.1 if test_fraction is None else test_fraction  # that a file's own
    shuffle = True if shuffle is None else shuffle  # splits can refuse them when given)
    columns, unnamed, unused, own = None, None, None, False
    if path.suffix.lower() == ".csv":
        table, columns = _read_csv(path, header)
        arrays = {"data": table}
        unnamed = _unnamed_columns(table, columns) if checks else None
        del table
    else:
        raw = _read_array(path)
        if isinstance(raw, dict):
            if not raw:
                raise DataError(f"{path} is empty (no arrays)")
            if "train" in raw:
                own = True
                missing = {"val", "test"} - set(raw)
                if missing:
                    raise DataError(f"{path} has 'train' but no {sorted(missing)} array")
                given = [k for k, v in split.items() if v is not None]
                if given:  # (taken without a word before: a warning, not a refusal, so that
                    # the runs that recorded one still resume and replay)
                    unused = (
                        f"data.{given[0]} does not apply: {path} holds its own train, val and "
                        "test arrays, which are the splits (it is ignored; drop it)"
                    )
                arrays = {k: _as_table(raw[k], f"{path}[{k!r}]") for k in ("train", "val", "test")}
            elif len(raw) == 1 and next(iter(raw.values())).ndim == 4:  # an .npz of images
                raw = next(iter(raw.values()))
            elif len(raw) == 1:
                (k,) = raw
                arrays = {"data": _as_table(raw[k], f"{path}[{k!r}]")}
            else:
                raise DataError(
                    f"{path} holds arrays {sorted(raw)}; expected one array, or train/val/test"
                )
        if not isinstance(raw, dict) and raw.ndim == 4:  # images (examples, C, H, W)
            table_only = {"standardize": standardize, "header": header, "bounds": bounds,
                          "integers": integers}  # fmt: skip
            given = [k for k, v in table_only.items() if v is not None]
            given += ["whiten"] if whiten != "auto" else []
            if given:
                raise DataError(
                    f"data.{given[0]} applies to tables; {path} holds images of shape "
                    f"{raw.shape[1:]} (their options: bits or levels, val_fraction, "
                    "test_fraction, shuffle)"
                )
            return _image_array(
                raw, path, seed, bits, levels, val_fraction, test_fraction, shuffle, checks
            )
        elif not isinstance(raw, dict):
            arrays = {"data": _as_table(raw, str(path))}
        del raw  # (the file's array, when its dtype needed converting)
    if bits is not None:
        raise DataError(
            f"data.bits applies to images (a folder of PNGs, or one array (examples, channels, "
            f"height, width)); {path} is a table"
        )
    if len({v.dtype for v in arrays.values()}) > 1:  # splits saved in different dtypes: one,
        common = np.result_type(*arrays.values())  # so that equal rows have equal bytes
        arrays = {k: v.astype(common, copy=False) for k, v in arrays.items()}
    if "data" in arrays:
        a = arrays.pop("data")
        tr, va, te = _splits(len(a), seed, val_fraction, test_fraction, shuffle)
        arrays = {"train": a[tr], "val": a[va], "test": a[te]}
        del a
    widths = {k: v.shape[1] for k, v in arrays.items()}
    if len(set(widths.values())) > 1:
        raise DataError(f"{path}: the splits have different numbers of columns {widths}")
    if levels is not None:
        for k, v in arrays.items():
            _check_levels(v, int(levels), f"{path} ({k})")
    elif dtype == torch.float32:  # (float64 holds every value a file gives, as read)
        _check_float32(arrays["train"], columns, str(path))
    if bounds is not None:
        bounds = _parse_bounds(bounds, arrays["train"].shape[1], columns)
    if integers is not None:
        integers = _parse_integers(integers, arrays["train"].shape[1], columns, bounds)
    if targets is not None:
        _check_targets(targets, arrays["train"].shape[1], columns, bounds, integers)
    if integers is not None:
        check_integers(arrays, integers, columns, str(path), dtype)
    if bounds is not None:
        check_bounds(arrays, bounds, columns, str(path), integers or ())
        if dtype == torch.float32:
            check_float32_bounds(arrays, bounds, integers, columns, str(path))
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    t = {k: torch.from_numpy(v.astype(np_dtype, copy=False)) for k, v in arrays.items()}
    if standardize is not None and standardize not in (True, False):  # ("false" is truthy; 0/1)
        raise DataError(f"data.standardize must be true or false, got {standardize!r}")
    if standardize is None:
        standardize = levels is None
    stats = model_stats(t["train"], bounds, integers) if standardize else None
    info: dict = {"columns": columns}
    if bounds is not None:
        info["bounds"] = bounds
    if integers is not None:
        info["integers"] = integers
    if stats is not None:
        info["whiten"] = whiten
    if checks and levels is None:
        notes = [unnamed] if unnamed else []
        notes += _table_checks(
            arrays["train"],
            {"val": arrays["val"], "test": arrays["test"]},
            columns,
            str(path),
            bounds,
            integers,
        )
        for note in (
            _few_rows({k: len(v) for k, v in arrays.items()}),
            _integer_columns(arrays["train"], columns, set(integers or ())),
            _atoms(arrays["train"], columns),
        ):
            notes += [note] if note else []
        if notes:
            info["warnings"] = notes
    elif checks:  # discrete tables: exact repeats are the one check that applies
        notes = [unnamed] if unnamed else []
        notes += _duplicates(arrays["train"], {"val": arrays["val"], "test": arrays["test"]})
        if notes:
            info["warnings"] = notes
    if unused and checks:
        info["warnings"] = [unused, *info.get("warnings", [])]
    if seed and checks and (own or not shuffle):  # (as digits' fixed split says it)
        why = (
            "holds its own train, val and test arrays"
            if own
            else "is split in its rows' order (shuffle: false)"
        )
        info["warnings"] = [
            f"{path} {why}, so data.seed = {seed} changes nothing: runs of different data "
            "seeds score the same rows",
            *info.get("warnings", []),
        ]
    return Dataset(
        str(path),
        t["train"],
        t["val"],
        t["test"],
        (t["train"].shape[1],),
        levels=None if levels is None else int(levels),
        kind="table",
        stats=stats,
        info=info,
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# image files a folder may hold that are not read (they are named, so none is left out unsaid)
OTHER_IMAGE_SUFFIXES = (
    *(".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2"),
    *(".heic", ".heif", ".avif", ".ico", ".tga", ".psd"),
)


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _png_bit_depth(path: Path) -> int:
    """The bit depth a PNG's header declares (8 when the header cannot be read here; Pillow
    then says what is wrong with the file)."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return 8


def _mode_fix(mode: str, deep: bool) -> str:
    """How to turn an image of a mode the folder reader refuses into one it reads."""
    if deep or mode.startswith("I"):
        return (
            ": for 16-bit images, save them as one .npy array (examples, channels, height, "
            "width) of their values and give data.levels=65536"
        )
    if mode == "1":
        return ": convert each with Pillow, Image.open(f).convert('L'), and give data.bits=1"
    to = "L" if mode in ("LA", "La") else "RGB"
    what = " (a palette of colours)" if mode.startswith("P") else ""
    alpha = ", which drops the transparency" if "A" in mode or mode == "RGBa" else ""
    return f"{what}: convert each with Pillow, Image.open(f).convert('{to}'){alpha}"


MAX_CLASSES = 1024  # class subfolders --conditional label takes (a one-hot context each)
MAX_IMAGE_PIXELS = 1 << 24  # pixels of one image in a folder (4096 x 4096), checked unread


def _memory_values() -> int:
    """How many data values training may hold within half this machine's physical memory: a
    value costs one byte as read and 4 + 4 as float32 (the splits and a copy of them)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 << 30
    return ram // 2 // 9


def _image_folder(
    path: Path,
    seed: int,
    checks: bool = True,
    labelled: bool = False,
    /,
    bits: int = 8,
    val_fraction=0.1,
    test_fraction=0.1,
    shuffle=True,
    **options,
) -> Dataset:
    _no_options(str(path), options, _IMAGE_OPTIONS)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError(
            "reading image folders needs pillow: pip install 'flowforge[workbench]'"
        ) from None
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise DataError(f"data option bits must be an integer in [1, 8], got {bits!r}")
    home = path.resolve()
    try:
        entries = sorted(path.iterdir())
        # (macOS's AppleDouble files ._name.png carry no image)
        files = [p for p in entries if _is_image_name(p) and not p.name.startswith("._")]
        nested = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")
                  and any(map(_is_image_name, p.iterdir()))]  # fmt: skip
        labels = [0] * len(files)
        own = len(files)  # (the folder's own images, which a labelled read leaves out)
        if labelled:  # one subfolder of images per class, in the order of their names
            for d in nested:
                if (path / d).resolve().parent != home:
                    raise DataError(
                        f"{path / d} is a link to a folder outside {path}; flowforge reads only "
                        "the folder's own class subfolders: copy the images in"
                    )
            if len(nested) > MAX_CLASSES:
                raise DataError(
                    f"{path} has {len(nested):,} subfolders of images; --conditional label "
                    f"takes at most {MAX_CLASSES:,} classes (a one-hot context each)"
                )
            # numbered class folders (0/, 1/, ... as digits) keep their numbers as labels;
            # others are numbered by their place in name order
            numbers = [int(d) for d in nested if d.isdecimal()]
            if len(numbers) < len(nested) or len(set(numbers)) < len(numbers):
                numbers = list(range(len(nested)))
            inside = [(path / d, sorted((path / d).iterdir())) for d in nested]
            files, labels = [], []
            for k, (_, fs) in zip(numbers, inside):
                kept = [f for f in fs if _is_image_name(f) and not f.name.startswith("._")]
                files += kept
                labels += [k] * len(kept)
            entries += [f for _, fs in inside for f in fs]
            entries += [  # (the other formats of subfolders that hold no PNG or JPEG)
                f
                for d in sorted(path.iterdir())
                if d.is_dir() and not d.name.startswith(".") and d.name not in nested
                for f in d.iterdir()
            ]
    except OSError as e:
        raise DataError(f"{path}: cannot list it ({e.strerror})") from None
    inner = ", ".join(nested[:5]) + (f" and {len(nested) - 5} more" if len(nested) > 5 else "")
    kinds = Counter(p.suffix.lower() for p in entries if p.suffix.lower() in OTHER_IMAGE_SUFFIXES)
    others = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    if labelled and not nested:
        raise DataError(
            f"{path} has no subfolders of images; --conditional label reads a folder of one "
            "subfolder per class (cats/, dogs/, ...), each holding that class's images"
        )
    if labelled and len(nested) < 2 and checks:  # (eval --data may score one class)
        raise DataError(
            f"{path} has one subfolder of images ({nested[0]}); --conditional label needs one "
            "per class, at least two"
        )
    if not files:
        if nested:
            raise DataError(
                f"{path} holds no PNG or JPEG images of its own; its subfolders {inner} do (one "
                "folder per class?): flowforge reads the images of one folder; give a subfolder "
                "as --data, move the images up, or train a class-conditional model on them all "
                "with --conditional label"
            )
        held = f" (it holds {others}: convert them to PNG)" if others else ""
        raise DataError(f"{path} holds no PNG or JPEG images{held}")
    arrays, first = [], None
    shallow, turned = set(), 0  # PNG bit depths below 8; JPEGs an EXIF tag rotates or flips
    budget = _memory_values()
    for f in files:
        try:  # a pipe or a device is never opened (a FIFO named x.png would block for ever)
            if not stat.S_ISREG(f.stat().st_mode):
                raise DataError(f"{f} is not a regular file (a pipe, device or socket)")
            if f.is_symlink() and f.resolve().parent != f.parent.resolve():
                raise DataError(
                    f"{f} is a link to {os.readlink(f)}, outside the folder; flowforge reads "
                    "only the folder's own images: copy the image in"
                )
        except OSError as e:
            raise DataError(f"{f}: cannot read it ({e.strerror})") from None
        try:
            with warnings.catch_warnings():  # (Pillow's bomb warning: the size is checked here)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(f)  # (reads the header only: the size before the pixels)
            with im:
                mode, size = im.mode, im.size
                if size[0] * size[1] > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{f} is {size[0]}x{size[1]}, more than the {MAX_IMAGE_PIXELS:,} pixels "
                        "an image of a flow's data set may have (downscale the images first)"
                    )
                # 16-bit PNGs (whatever the file's name): Pillow keeps an RGB one's top bytes
                depth = _png_bit_depth(f)
                deep = depth > 8
                if depth < 8 and mode == "L":  # (Pillow scales 2- and 4-bit gray to 0..255)
                    shallow.add(depth)
                if im.format == "JPEG" and im.getexif().get(0x0112, 1) not in (0, 1):
                    turned += 1  # (the EXIF orientation a viewer applies)
                if mode not in ("L", "RGB") or deep:
                    depth = " of 16 bits per channel" if deep else ""
                    raise DataError(
                        f"{f}: image mode {mode}{depth}; expected L (grayscale) or RGB, 8 bits "
                        f"per channel{_mode_fix(mode, deep)}"
                    )
                if first is not None and (mode, size) != first[1:3]:
                    raise DataError(
                        f"{f} is {size[0]}x{size[1]} {mode}, expected {first[2][0]}x"
                        f"{first[2][1]} {first[1]} like {first[0].name}"
                    )
                if first is not None and len(files) * math.prod(first[3]) > budget:
                    raise DataError(
                        f"{path}: {len(files):,} images of {first[2][0]}x{first[2][1]} {mode} "
                        f"are more than this machine's memory holds for training (about "
                        f"{budget:,} values); use fewer or smaller images"
                    )
                im.load()
                a = np.asarray(im, dtype=np.uint8)
        except Image.DecompressionBombError:
            raise DataError(f"{f} declares an image too large to read safely") from None
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as e:  # (ValueError: a text or
            # colour-profile chunk beyond Pillow's limits, among others)
            raise DataError(f"{f} is not a readable image: {' '.join(str(e).split())}") from None
        if first is None:
            first = (f, mode, size, a.shape)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    x = np.stack(arrays)
    del arrays
    hi = int(x.max()) if checks else 255
    np.right_shift(x, 8 - int(bits), out=x)
    tr, va, te = _splits(len(x), seed, val_fraction, test_fraction, shuffle, str(path))
    parts = [x] if len(tr) == len(x) and not shuffle else [x[i] for i in (tr, va, te)]
    parts += [x[:0]] * (3 - len(parts))  # (unsplit and in order: no copy)
    # (C order, whatever the file's: a Fortran-order array trained differently)
    t = [torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32)) for p in parts]
    notes = []
    info: dict = {}
    if labelled:
        y = torch.tensor(labels, dtype=torch.long)
        info["labels"] = {
            k: y[torch.from_numpy(np.asarray(i, dtype=np.int64))]
            for k, i in zip(("train", "val", "test"), (tr, va, te))
        }
        info["class_names"] = dict(zip(numbers, nested))  # (label: subfolder)
    if checks:
        if nested and not labelled:
            notes.append(f"the images in subfolders {inner} of {path} are not read")
        if labelled and own:
            notes.append(
                f"the {own} images in {path} itself are not read (--conditional label reads its "
                "class subfolders)"
            )
        if others:
            notes.append(
                f"{path}: {others} files are not read (flowforge reads PNG and JPEG images): "
                "convert them to PNG to train on them too"
            )
        if shallow and bits == 8:
            d = max(shallow)
            notes.append(
                f"{path} holds PNGs of {'/'.join(map(str, sorted(shallow)))} bits per pixel, "
                f"read as 8-bit pixels (0..255) with {2**d} of the 256 values used at most: "
                f"give data.bits={d} to model their {2**d} levels"
            )
        elif bits == 8 and hi < 64:
            notes.append(_low_levels(hi, str(path), folder=True))
        if turned:
            notes.append(
                f"{path}: {turned} JPEG file(s) carry an EXIF orientation (a viewer shows them "
                "rotated or flipped); they are read as stored, not turned"
            )
        few = _few_rows({k: len(p) for k, p in zip(("train", "val", "test"), parts)}, True)
        notes += [few] if few else []
        notes += _duplicates(parts[0], {"val": parts[1], "test": parts[2]}, "images")
    ds = Dataset(
        str(path), *t, shape=tuple(x.shape[1:]), levels=2 ** int(bits), kind="image",
        info={**info, "warnings": notes} if notes else info,
    )  # fmt: skip
    ds.files = [f.relative_to(path).as_posix() for f in files]  # (the rows' images, in order)
    return ds


def read_table(
    spec: str,
    bits: int = 8,
    shape: tuple[int, ...] | None = None,
    names: list | None = None,
    header: bool | None = None,
    columns: list | None = None,
    files: list | None = None,
) -> np.ndarray:
    """Every example of a table file or image folder, unsplit, as ``(N, columns)``: the
    file's own values, in float64, or in float32 where that holds them exactly (images,
    float32 and small-integer arrays), never rounded (``flowforge compress`` checks them for
    integers). With ``shape``, a ``.npy``/``.npz`` array of shape ``(N, *shape)`` (what
    ``flowforge sample`` and ``decompress`` write for the run) is read as its flattened table.
    A CSV header's column names are appended to ``names`` when a list is given; ``header``
    is the run's data option of that name, and ``columns`` the run's column names (a first
    row equal to them is a header, numbers or not). A folder's image files, as paths inside
    it in the rows' order, are appended to ``files`` when a list is given."""
    _check_header_option(header)
    path = user_path(spec)
    if path.is_dir():
        ds = _image_folder(path, 0, False, bits=bits, shuffle=False, val_fraction=0,
                           test_fraction=0)  # fmt: skip
        if files is not None:
            files.extend(ds.files)
        x = ds.train  # (every image: no split was made; integers, exact in float32)
        return x.reshape(len(x), -1).numpy()
    if not path.exists():
        raise DataError(_no_such_file(spec))
    if not path.is_file():
        raise DataError(f"{spec} is not a regular file or a folder of images")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        width = math.prod(shape) if shape else (len(columns) if columns else None)
        a, found = _read_csv(path, header, columns, width)
        if names is not None and found:
            names.extend(found)  # the caller checks them against the run's columns
        return a
    if suffix not in (".npy", ".npz"):
        raise DataError(
            f"{path}: unsupported file type {_suffix(path)!r}; expected a .csv (comma-separated), "
            f".npy or .npz file, or a folder of images{_suffix_hint(path)}"
        )
    raw = _read_array(path)
    where = str(path)
    if isinstance(raw, dict):
        if not raw:
            raise DataError(f"{path} is empty (no arrays)")
        if len(raw) != 1:
            splits = {"train", "val", "test"} <= set(raw)
            raise DataError(
                f"{path} holds arrays {sorted(raw)}; expected exactly one"
                + (
                    " (a train/val/test .npz is a run's data: score a run's own splits with "
                    "--split, or save the one array to score: np.save('x.npy', z['test']))"
                    if splits
                    else ""
                )
            )
        ((k, raw),) = raw.items()
        where = f"{path}[{k!r}]"
    if not raw.size:
        raise DataError(f"{where} holds no examples (an array of shape {raw.shape})")
    if shape is not None and len(shape) > 1 and raw.ndim == 1 + len(shape):
        if tuple(raw.shape[1:]) != tuple(shape):
            raise DataError(
                f"{where} has shape {raw.shape}; expected (examples, {', '.join(map(str, shape))})"
                f" or a table (examples, {math.prod(shape)})"
            )
        raw = raw.reshape(len(raw), -1)
    return _as_table(raw, where)


def read_examples(
    spec: str,
    bits: int = 8,
    shape: tuple[int, ...] | None = None,
    columns: list | None = None,
    header: bool | None = None,
    files: list | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`read_table` in ``dtype``, the run's precision (for ``flowforge eval --data``).
    With ``columns`` (the run's column names), a CSV whose header names other columns, or the
    same in another order, is refused: its numbers would be scored against the wrong columns.
    ``header``: the run's data option (None: decided from the file's first row). ``files``: as
    :func:`read_table`'s."""
    x = read_run_table(spec, bits, shape, columns, header, files)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return torch.from_numpy(x.astype(np_dtype, copy=False))


def _names(columns) -> list:
    """Column names as compared with a run's: in one Unicode normal form (NFC), so that a
    header written by software that decomposes accents (macOS's NFD) names the same columns."""
    import unicodedata

    return [unicodedata.normalize("NFC", n) if isinstance(n, str) else n for n in columns]


def read_run_table(
    spec: str,
    bits: int = 8,
    shape: tuple[int, ...] | None = None,
    columns: list | None = None,
    header: bool | None = None,
    files: list | None = None,
) -> np.ndarray:
    """:func:`read_table` of a file for a run, its values as the file holds them: with
    ``columns`` (the run's column names), a CSV whose header names other columns, or the same
    in another order, is refused, since its numbers would go to the wrong columns (what
    ``flowforge eval --data`` and ``compress --data`` read)."""
    found: list = []
    x = read_table(spec, bits, shape, found, header, columns, files)
    # a name that flowforge sample led by ' (a spreadsheet would run it as a formula)
    found = [n[1:] if n[:1] == "'" and n[1:2] in FORMULA_LEADS else n for n in found]
    if columns and found and _names(found) != _names(columns):
        j = next(
            (i for i, (a, b) in enumerate(zip(_names(found), _names(columns))) if a != b), None
        )
        what = (
            f"its column {j + 1} is {found[j]!r} where this run's is {columns[j]!r}"
            if j is not None
            else f"it has {len(found)} columns, this run {len(columns)}"
        )
        raise DataError(
            f"{spec}: {what}; give the columns the run was trained on, in the same order"
        )
    if columns and not found and str(spec).lower().endswith(".csv"):
        import warnings

        shown = ", ".join(map(str, columns[:8])) + (" ..." if len(columns) > 8 else "")
        warnings.warn(
            f"{spec} has no header: its columns are taken as the run's, in its order "
            f"({shown}); a header naming them lets the order be checked",
            RuntimeWarning,
            stacklevel=2,
        )
    return x


LABELLED_FORMATS = (
    "a CSV whose first column is named label, then the data columns (as flowforge sample "
    "--label writes), or an .npz with arrays x (the examples) and labels (one integer each), "
    "or, for a run trained on a folder of class subfolders, such a folder"
)


def read_labelled(
    spec: str,
    shape: tuple[int, ...],
    columns: list | None = None,
    info: dict | None = None,
    bits: int = 8,
    files: list | None = None,
) -> tuple[Tensor, np.ndarray]:
    """The examples and class labels of a labelled file (``flowforge eval --data`` of a
    label-conditional run): ``(x, labels)``, ``x`` float32 ``(N, prod(shape))`` and ``labels``
    whole numbers ``(N,)``. The file is :data:`LABELLED_FORMATS`: a CSV under a header whose
    first column is ``label`` (its other names checked against ``columns``, the run's, when it
    has them), or an ``.npz`` with ``x`` of shape ``(N, *shape)`` or ``(N, prod(shape))`` and
    ``labels`` of shape ``(N,)``; for a run trained on a folder of class subfolders (``info``,
    its context, names them), also such a folder, read at ``bits``, its subfolders' names
    taken as the labels. Anything else is a one-line ``DataError`` saying so."""
    names, classes = (info or {}).get("names"), (info or {}).get("classes")
    path = user_path(spec)
    width = math.prod(shape)
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(_no_such_file(spec))
    if path.is_dir() and names:  # a folder of class subfolders, for a run trained on one
        ds = _image_folder(path, 0, False, True, bits=bits, shuffle=False, val_fraction=0,
                           test_fraction=0)  # fmt: skip
        if files is not None:
            files.extend(ds.files)
        found = ds.info["class_names"]  # (its own labels: this folder's, not the run's)
        unknown = [n for n in found.values() if n not in names]
        if unknown:
            raise DataError(
                f"{spec}: class subfolder {unknown[0]!r} is not one of this run's classes "
                f"({', '.join(names)})"
            )
        label = {n: c for n, c in zip(names, classes)}
        y = np.asarray([label[found[int(i)]] for i in ds.info["labels"]["train"]])
        return ds.train.reshape(len(ds.train), -1), y
    if suffix == ".npz" and path.is_file():
        raw = _read_array(path)
        if not isinstance(raw, dict) or "labels" not in raw or "x" not in raw:
            held = (
                ("no arrays" if not raw else f"arrays {sorted(raw)}")
                if isinstance(raw, dict)
                else "one array"
            )
            raise DataError(
                f"{spec} holds {held}; a label-conditional run scores {LABELLED_FORMATS}"
            )
        x, labels = raw["x"], raw["labels"]
        if len(shape) > 1 and x.ndim == 1 + len(shape) and tuple(x.shape[1:]) == tuple(shape):
            x = x.reshape(len(x), -1)
        x = _as_table(x, f"{spec}['x']")
        if x.shape[1] != width:
            raise DataError(
                f"{spec}['x'] has shape {raw['x'].shape}; this run's model expects "
                f"(examples, {', '.join(map(str, shape))})"
                + (f" or (examples, {width})" if len(shape) > 1 else "")
            )
        if labels.ndim != 1 or len(labels) != len(x):
            raise DataError(
                f"{spec}['labels'] has shape {labels.shape}; expected one label per example "
                f"({len(x)},)"
            )
        if not (np.issubdtype(labels.dtype, np.number) and labels.dtype.kind != "c"):
            raise DataError(f"{spec}['labels'] has dtype {labels.dtype}; expected integers")
        where = f"{spec}['labels']"
    elif suffix == ".csv" and path.is_file():
        found: list = []
        names = ["label", *columns] if columns else None
        t = read_table(spec, names=found, header=True, columns=names)
        found = [n[1:] if n[:1] == "'" and n[1:2] in FORMULA_LEADS else n for n in found]
        if not found or found[0].strip().lower() != "label":
            first = repr(found[0]) if found else "nothing"
            raise DataError(
                f"{spec} has no label column (its first row starts with {first}); a "
                f"label-conditional run scores {LABELLED_FORMATS}"
            )
        if t.shape[1] != width + 1:
            raise DataError(
                f"{spec} has {t.shape[1] - 1} data columns after its label; this run's model "
                f"expects {width}"
            )
        if columns and _names(found[1:]) != _names(columns):
            j = next(
                i for i, (a, b) in enumerate(zip(_names(found[1:]), _names(columns))) if a != b
            )
            raise DataError(
                f"{spec}: its column {j + 2} is {found[j + 1]!r} where this run's is "
                f"{columns[j]!r}; give label, then the columns the run was trained on, in the "
                "same order"
            )
        labels, x = t[:, 0].copy(), t[:, 1:]
        where = f"{spec}: the label column"
    else:
        raise DataError(
            f"{spec}: a label-conditional run scores examples with their class labels: "
            f"{LABELLED_FORMATS}"
        )
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if len(bad):
            raise DataError(
                f"{where} holds {labels[bad[0]]:g} (example {bad[0]}, 0-based); labels are "
                "whole numbers"
            )
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), labels


# -- entry point ---------------------------------------------------------------------------------


def load_dataset(
    spec: str,
    seed: int = 0,
    limit: int | None = None,
    conditional: str | None = None,
    target_columns=None,
    dtype: torch.dtype = torch.float32,
    **options,
) -> Dataset:
    """Load a registered dataset by name, or a table / image folder by path.

    Args:
        spec: a name from :data:`DATASETS` or a path.
        seed: seeds toy generation and the train/val/test split of user files.
        limit: keep only the first ``limit`` training examples (quick experiments).
        options: dataset options: toys take ``n_train``, ``n_val``, ``n_test``; files take
            ``val_fraction``, ``test_fraction``, ``shuffle``; tables take ``levels`` and
            ``standardize``; image folders take ``bits``; the benchmarks (``power`` ...
            ``mnist``, :mod:`.benchmark_data`) take ``root``, the folder of their files.
        conditional: ``"label"``: a class-conditional dataset whose context is the one-hot
            label (digits; see :func:`make_conditional`).
        target_columns: for tables, the columns modelled as ``y``; the other columns become
            the context of a conditional density ``p(y | x)``, standardised with training-split
            statistics.
        dtype: ``torch.float32`` (the default) or ``torch.float64``, the precision of the
            splits and of the checks on what that precision holds: a table is read into it from
            the file's own values, without a float32 rounding first (``train.dtype``).
    """
    return _load_dataset(spec, seed, limit, conditional, target_columns, options, True, dtype)


def reload_dataset(
    spec: str, seed: int = 0, options: dict | None = None, dtype: torch.dtype = torch.float32
) -> Dataset:
    """:func:`load_dataset` for the data of a run that has been trained (``options``: its
    data options as a dict, ``limit``, ``conditional`` and ``target_columns`` among them, as
    ``load_dataset`` takes them), without the checks whose only product is a warning (outliers,
    duplicates and near-duplicates across the splits, integer columns, atoms, a few rows):
    what they found when the run was trained is in its ``config.json``
    (``resolved.data_warnings``), and eval and report repeat that. Every check that refuses
    data is made as in :func:`load_dataset`; the caller compares the data's fingerprint with
    the run's. The dataset's ``info`` holds no ``"warnings"``."""
    options = dict(options or {})
    limit, conditional = options.pop("limit", None), options.pop("conditional", None)
    targets = options.pop("target_columns", None)
    return _load_dataset(spec, seed, limit, conditional, targets, options, False, dtype)


DTYPES = {"float32": torch.float32, "float64": torch.float64}  # (train.dtype's values)


def run_dtype(cfg: dict) -> torch.dtype:
    """The precision a run's data are read in and its model computes in: its ``train.dtype``
    (float32 for runs from before the option); a :class:`WorkbenchError` for another value (a
    config.json edited)."""
    train = cfg.get("train") if isinstance(cfg, dict) else None
    value = train.get("dtype", "float32") if isinstance(train, dict) else "float32"
    if not isinstance(value, str) or value not in DTYPES:
        raise WorkbenchError(f"train.dtype must be float32 or float64, got {str(value)[:40]!r}")
    return DTYPES[value]


def _load_dataset(
    spec: str,
    seed: int,
    limit,
    conditional,
    target_columns,
    options: dict,
    checks: bool,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise DataError(
            f"dtype must be torch.float32 or torch.float64 (the precision of the splits and of "
            f"the model: train.dtype), got {str(dtype)[:40]!r}"
        )
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):  # (an array or a tensor: one line, not the array printed)
        raise DataError(in_memory_data(spec))
    key = str(spec).lower()
    if key in DATASETS:
        ds = DATASETS[key][0](seed=seed, **options)
        if key in FIXED_SPLITS and seed and checks:  # (said when the run is trained, kept)
            ds.info["warnings"] = [*ds.info.get("warnings", ()), FIXED_SPLITS[key](seed)]
    else:
        path = user_path(spec)
        if path.is_dir():  # (--conditional label: one subfolder per class)
            ds = _image_folder(path, seed, checks, conditional == "label", **options)
        elif path.is_file():
            if path.suffix.lower() not in (".npy", ".npz", ".csv"):
                raise DataError(
                    f"{path}: unsupported file type {_suffix(path)!r}; expected .npy, .npz, .csv "
                    f"or a folder of PNG/JPEG images{_suffix_hint(path)}"
                )
            ds = _table(path, seed, checks, dtype, targets=target_columns, **options)
        elif path.exists():
            raise DataError(f"{spec} is not a regular file or a folder (a pipe, device or socket)")
        elif path.suffix or "/" in str(spec) or "\\" in str(spec):
            raise DataError(_no_such_file(spec))
        else:
            hint = suggest(key, DATASETS)
            raise DataError(
                f"unknown dataset {spec!r}{hint} (available: {', '.join(DATASETS)}, "
                "or a .npy/.npz/.csv file or an image folder)"
            )
    if limit is not None:
        if int(limit) < len(ds.train):  # a copy: the rest of the split is freed (not a view)
            ds.train = ds.train[: int(limit)].clone()
        if ds.stats is not None:
            _restandardize(ds)
        # the few-rows note, for the rows kept
        image = ds.kind == "image"
        if checks and (image or (ds.kind == "table" and ds.levels is None)):
            notes = [n for n in ds.info.get("warnings", []) if not _is_few_rows_note(n)]
            sizes = {k: int(ds.split(k).shape[0]) for k in ("train", "val", "test")}
            note = _few_rows(sizes, image)
            ds.info["warnings"] = ([note] if note else []) + notes
            if not ds.info["warnings"]:
                del ds.info["warnings"]
    for k in ("train", "val", "test"):
        if ds.split(k).shape[0] == 0:
            raise DataError(f"{spec}: the {k} split is empty")
        if ds.split(k).dtype != dtype:  # (generated draws, images, benchmark files: float32
            setattr(ds, k, ds.split(k).to(dtype))  # values, exact in float64)
    if conditional is not None or target_columns is not None:
        make_conditional(ds, conditional, target_columns)
    return ds


# -- conditional data ----------------------------------------------------------------------------


def _column_index(p, width: int, names: list[str] | None, what: str) -> int:
    """A column given as a header name or an integer index (negative from the end), as an
    index. A string is a name first (a header of numbers: ``--set data.bounds.2=...`` names
    the column called "2"); an integer that is also another column's name is refused."""
    if isinstance(p, str) and names and p in names:
        same = [j for j, n in enumerate(names) if n == p]
        if len(same) > 1:
            raise DataError(
                f"{what} {p[:40]!r} names columns {', '.join(map(str, same[:6]))} (the header "
                "repeats it); give the column's index instead"
            )
        return same[0]
    try:
        if isinstance(p, bool) or (isinstance(p, float) and not p.is_integer()):
            raise TypeError
        i = int(p)
    except (TypeError, ValueError, OverflowError):
        known = f"; the columns are {', '.join(map(repr, names[:12]))}" if names else ""
        raise DataError(
            f"{what} {str(p)[:40]!r} is neither a column index nor a column name{known}"
        ) from None
    if not isinstance(p, str) and names and str(i) in names and names.index(str(i)) != i % width:
        raise DataError(
            f"{what} {i} is both the index of column {names[i % width]!r} and the name of "
            f"another column: give the name as a string ('{i}') or the other column's name"
        )
    if not -width <= i < width:
        raise DataError(f"{what} {i} is out of range for a table of {width} columns")
    return i % width


def _parse_columns(spec, width: int, names: list[str] | None = None) -> list[int]:
    """Target columns as indices: integers (negative from the end) or header names."""
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
    elif isinstance(spec, int):
        parts = [spec]
    else:
        parts = list(spec)
    out = [_column_index(p, width, names, "target column") for p in parts]
    if not out:
        raise DataError(f"expected at least one target column (indices or names), got {spec!r}")
    if len(set(out)) != len(out):
        raise DataError(f"expected distinct target columns, got {spec!r}")
    if len(out) == width:
        raise DataError(
            f"target columns {out} leave no context column (the table has {width} columns)"
        )
    return out


def _check_targets(targets, width: int, names, bounds: dict | None, integers) -> None:
    """``DataError`` if ``data.bounds`` or ``data.integers`` names a context column (one that
    ``targets``, the modelled columns, leaves out)."""
    ys = _parse_columns(targets, width, names)
    for j in integers or ():
        if j not in ys:
            raise DataError(
                f"data.integers names column {_column_name(j, names)}, a context column: "
                "context columns are conditioned on, not modelled; name the target columns"
            )
    for j in range(width):
        if bounds and (bounds["lower"][j], bounds["upper"][j]) != (None, None) and j not in ys:
            raise DataError(
                f"data.bounds names column {_column_name(j, names)}, a context column: bounds "
                "apply to the modelled (target) columns; a context is only standardised"
            )


def make_conditional(ds: Dataset, conditional: str | None, target_columns=None) -> Dataset:
    """Give ``ds`` a context per example, in place.

    - ``conditional="label"``: the one-hot class label (classes: those of the training split).
    - ``target_columns``: table columns kept as the data ``y``; the others become the context,
      raw: the run's model standardises them with the training split's mean and std
      (``context_info["stats"]``).
    """
    if conditional is not None and target_columns is not None:
        raise DataError("give either --conditional label or --target-columns, not both")
    if conditional is not None:
        if conditional != "label":
            raise DataError(f"unknown conditional {conditional!r}; expected 'label'")
        labels = ds.info.get("labels")
        if labels is None:
            raise DataError(
                f"{ds.name} has no class labels (--conditional label works with digits and "
                "with a folder of one image subfolder per class); for a table, use "
                "--target-columns to condition on the other columns"
            )
        labels = {k: labels[k][: ds.split(k).shape[0]] for k in ("train", "val", "test")}
        classes = sorted(int(c) for c in torch.unique(labels["train"]))
        info = {"kind": "label", "classes": classes, "features": len(classes)}
        names = ds.info.get("class_names")  # (a folder's class subfolders: label -> name)
        if names:
            missing = [n for i, n in names.items() if i not in classes]
            if missing:
                raise DataError(
                    f"{ds.name}: class {missing[0]!r} has no image in the training split; give "
                    "each class more images (or remove its subfolder)"
                )
            info["names"] = [names[c] for c in classes]
        ds.context = {k: label_context(v, info) for k, v in labels.items()}
        ds.context_info = info
        return ds
    if ds.kind != "table":
        raise DataError(f"--target-columns selects columns of a table; {ds.name} is {ds.kind} data")
    width = ds.shape[0]
    ys = _parse_columns(target_columns, width, ds.info.get("columns"))
    cs = [i for i in range(width) if i not in ys]
    names = ds.info.get("columns")
    if ds.info.get("integers"):
        on_context = [j for j in ds.info["integers"] if j not in ys]
        if on_context:
            raise DataError(
                f"data.integers names column {_column_name(on_context[0], names)}, a context "
                "column: context columns are conditioned on, not modelled; name the target "
                "columns"
            )
    raw_c = {k: ds.split(k)[:, cs] for k in ("train", "val", "test")}
    if ds.info.get("warnings") and ds.levels is None:
        # the per-column checks of the whole table, again for the modelled columns only
        notes = [n for n in ds.info["warnings"] if not _is_column_note(n)]
        train = ds.train[:, ys].numpy()
        target_names = [names[i] for i in ys] if names else [str(i) for i in ys]
        declared = {ys.index(j) for j in ds.info.get("integers") or () if j in ys}
        for note in (_integer_columns(train, target_names, declared), _atoms(train, target_names)):
            notes += [note] if note else []
        ds.info["warnings"] = notes
        if not notes:
            del ds.info["warnings"]
    for k in ("train", "val", "test"):
        setattr(ds, k, ds.split(k)[:, ys].contiguous())
    ds.shape = (len(ys),)
    if names:
        ds.info["columns"] = [names[i] for i in ys]
        ds.info["context_columns"] = [names[i] for i in cs]
    bounds = ds.info.get("bounds")
    if bounds:
        on_context = [i for i in cs if (bounds["lower"][i], bounds["upper"][i]) != (None, None)]
        if on_context:
            raise DataError(
                f"data.bounds names column {_column_name(on_context[0], names)}, a context "
                "column: bounds apply to the modelled (target) columns; a context is only "
                "standardised"
            )
        ds.info["bounds"] = {k: [bounds[k][i] for i in ys] for k in ("lower", "upper")}
    if ds.info.get("integers"):  # (all of them targets: a context column is refused above)
        ds.info["integers"] = sorted(ys.index(j) for j in ds.info["integers"])
    if ds.stats is not None:
        _restandardize(ds)
    info = {
        "kind": "columns",
        "target_columns": ys,
        "context_columns": cs,
        "features": len(cs),
        "stats": _standardize_stats(raw_c["train"]),
    }
    ds.context = {k: column_context(v, info) for k, v in raw_c.items()}
    # the training contexts' range, per column: other values are extrapolation (a warning
    # where --context, eval --data or sample give them; after the splits, which may pass it)
    lo, hi = raw_c["train"].double().min(0).values, raw_c["train"].double().max(0).values
    info["range"] = [[float(a), float(b)] for a, b in zip(lo.tolist(), hi.tolist())]
    constant = [j for j, (a, b) in enumerate(info["range"]) if a == b]
    if constant:
        cnames = ds.info.get("context_columns") or [str(i) for i in cs]
        said = ", ".join(f"{cnames[j]} ({info['range'][j][0]:.6g})" for j in constant[:8])
        ds.info.setdefault("warnings", []).append(
            f"context column(s) {said} hold one value in every training row: they tell the "
            "model nothing, and any other value of them is extrapolation; drop them"
        )
    ds.context_info = info
    return ds


def label_context(labels, info: dict) -> Tensor:
    """One-hot contexts for integer ``labels``; ``ContextError`` for a label not seen in
    training (or a run that is not label-conditional)."""
    if not info or info.get("kind") != "label":
        raise ContextError("this model is not conditioned on class labels")
    classes = info["classes"]
    t = torch.as_tensor(labels)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.is_floating_point() and not (all_finite(t) and torch.equal(t, t.floor())):
        raise ContextError(f"labels must be integers, got {t.tolist()[:10]}")
    # exact Python integers, not a cast to int64 (which wraps a uint64's 2**64 - 1 to -1 and
    # a float's 1e30 to -2**63: a wrong label in the message)
    values = [int(v) for v in t.reshape(-1).tolist()]
    index = {c: i for i, c in enumerate(classes)}
    bad = sorted(set(values) - set(index))
    if bad:
        raise ContextError(
            f"label {bad[0]} is not one of the {len(classes)} classes seen in training "
            f"({classes[0]}..{classes[-1]})"
            if classes == list(range(classes[0], classes[-1] + 1))
            else f"label {bad[0]} is not one of the classes seen in training {classes}"
        )
    idx = torch.tensor([index[v] for v in values], dtype=torch.long).reshape(t.shape)
    return torch.nn.functional.one_hot(idx, len(classes)).float()


FAR_CONTEXT = 100  # standard deviations from the training contexts' mean: a warning


def column_context(values, info: dict, names=None) -> Tensor:
    """Raw context-column ``values`` of shape ``(B, k)`` (or ``(k,)``), checked, for a run's
    model, which standardises them itself (:func:`flowforge.models.context_standardized`, with
    ``info["stats"]``): ``ContextError`` if the width is wrong or a value is not finite, and a
    warning for a value far outside the training contexts. A float32 or float64 tensor stays
    in its dtype; anything else becomes float64. ``names``: the context columns' header names,
    for the messages (else their positions)."""
    if not info or info.get("kind") != "columns":
        raise ContextError("this model is not conditioned on table columns")
    if not isinstance(values, (Tensor, np.ndarray)):  # (numbers as parsed: float64)
        values = np.asarray(values, dtype=np.float64)
    given = torch.as_tensor(values)
    if given.dtype not in (torch.float32, torch.float64):
        given = given.to(torch.float64)
    t = given.to(torch.float64)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    k = info["features"]
    if t.dim() != 2 or t.shape[1] != k:
        which = (
            ", ".join(repr(str(n)) for n in names)
            if names and len(names) == k
            else f"columns {info['context_columns']}"
        )
        raise ContextError(
            f"expected {k} context value(s) per row ({which}), got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise ContextError("the context contains NaN or inf")
    big = t.abs().max().item() if t.numel() else 0.0
    if big > torch.finfo(torch.float32).max:
        raise ContextError(
            f"the context holds {big:.3g}, beyond float32's range (about 3.4e38; the models' "
            "precision)"
        )
    outside = _outside_context_range(t, info.get("range"), names, info)
    loc = torch.tensor(info["stats"]["loc"], dtype=torch.float64)
    scale = torch.tensor(info["stats"]["scale"], dtype=torch.float64)
    z = (t - loc) / scale
    far = z.abs().max().item() if z.numel() else 0.0
    if outside is None and far > FAR_CONTEXT:  # (a run that recorded no range)
        outside = (
            f"a context value lies {far:.3g} standard deviations from the training contexts' "
            "mean: far outside what the model was trained on, its densities and samples "
            "there are extrapolation"
        )
    if outside is not None:
        import warnings

        warnings.warn(outside, RuntimeWarning, stacklevel=2)
    return given.reshape(t.shape)


CONTEXT_MARGIN = 0.1  # of a column's training range, past which a given value is said
_RANGE_ROWS = 65536  # rows a chunk in beyond_ranges


def beyond_ranges(t: Tensor, ranges, names=None, margin: float = CONTEXT_MARGIN):
    """Which of ``t``'s values (``(n, k)``) lie beyond their column's training range
    (``ranges``: ``[[lo, hi], ...]`` from a run's config, data: anything else, and a range
    that is not finite or not ordered, gives no verdict) by more than ``margin`` of it: None,
    or ``(words, rows)``, the columns in words (each with its farthest value and the range)
    and the rows' mask. One rule for a table file's columns (``eval --data``) and for given
    contexts (``--context``)."""
    k = t.shape[1] if t.dim() == 2 else 0
    ok = (
        isinstance(ranges, list)
        and len(ranges) == k
        and all(
            isinstance(r, list)
            and len(r) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
            and math.isfinite(r[0])
            and math.isfinite(r[1])
            and r[0] <= r[1]
            for r in ranges
        )
    )
    if not ok or not k or not t.numel():
        return None
    lo, hi = torch.tensor(ranges, dtype=torch.float64, device=t.device).T
    # (and float32's rounding: a range recorded from float32 data, a value typed in float64)
    pad = margin * (hi - lo) + 1e-6 * torch.maximum(lo.abs().maximum(hi.abs()), lo.new_ones(k))
    rows = torch.zeros(len(t), dtype=torch.bool, device=t.device)
    counts = lo.new_zeros(k, dtype=torch.long)
    most = lo.new_full((k,), -math.inf)  # each column's largest excess so far
    worst = lo.new_zeros(k)  # (the value that has it, either side)
    for i in range(0, len(t), _RANGE_ROWS):  # (a chunk at a time: no float64 copy of a table)
        v = t[i : i + _RANGE_ROWS].double()
        excess = torch.maximum(lo - pad - v, v - hi - pad)  # (> 0: beyond the range)
        far = excess > 0
        rows[i : i + _RANGE_ROWS] = far.any(1)
        counts += far.sum(0)
        top, at = excess.nan_to_num(-math.inf).max(0)
        worst = torch.where(top > most, v[at, torch.arange(k, device=t.device)], worst)
        most = torch.maximum(most, top)
    if not bool(rows.any()):
        return None
    if not (names and len(names) == k):
        names = [str(j) for j in range(k)]
    each = []
    for j in counts.nonzero().flatten().tolist()[:5]:
        n = int(counts[j])
        each.append(
            f"{names[j]} {worst[j].item():.4g} ({n} value{'s' if n != 1 else ''} past the "
            f"training range {ranges[j][0]:.4g} to {ranges[j][1]:.4g})"
        )
    more = " ..." if int((counts > 0).sum()) > 5 else ""
    return "; ".join(each) + more, rows


def _outside_context_range(t: Tensor, rng, names, info: dict) -> str | None:
    """A warning for context values (``t``, float64 ``(B, k)``) beyond the training contexts'
    range (:func:`beyond_ranges`), naming the columns and the first row."""
    if not (names and len(names) == t.shape[1]):
        names = [str(c) for c in info.get("context_columns", range(t.shape[1]))]
    found = beyond_ranges(t, rng, names)
    if found is None:
        return None
    words, rows = found
    first = f"; the first at row index {int(rows.nonzero()[0])}" if len(t) > 1 else ""
    return (
        f"context values outside the training contexts' range: {words}{first}; the model was "
        "not trained there, so its densities and samples for them are extrapolation"
    )
