"""What the workbench costs on large data (the scale review): the data checks read a table a
chunk of rows at a time instead of making float64 copies of it, eval and report reload a run's
data without the checks whose only product is a warning (kept in its config.json), a report
fits its Gaussian once, the histogram counts small integers, ``--limit`` frees the rows it
drops, and eval refuses what the model alone decides before it reads the data. Each test
measures the thing itself (memory with ``tracemalloc``, the calls a check makes, the size of
what a function is given), on data small enough to take a second."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from cli_support import cli, one_line_error, tiny_moons_run
from flowforge.workbench import data, evaluate, trainer
from flowforge.workbench.data import Dataset, constant_columns, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _peak(f, *args, **kwargs):
    """``(f's result, the most memory numpy held during the call beyond what it held before)``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = f(*args, **kwargs)
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _table(train: np.ndarray, **info) -> Dataset:
    t = torch.from_numpy(train)
    return Dataset("t.csv", t, t[:2], t[:2], (train.shape[1],), kind="table", info=info)


# -- constant_columns: a chunk of rows at a time ---------------------------------------------


def test_constant_columns_reads_the_training_split_a_chunk_at_a_time(monkeypatch):
    """It made three or four float64 copies of the training split (400k x 300 float32: from
    1.15 GB to 4.1 GB peak inside it); now its temporaries are a chunk of rows."""
    monkeypatch.setattr(data, "CHUNK_VALUES", 4096)  # (chunks of 102 rows of 40 columns)
    g = np.random.default_rng(0)
    train = g.normal(size=(20_000, 40)).astype(np.float32)
    result, peak = _peak(constant_columns, _table(train))
    assert result is None
    assert peak < train.nbytes / 4, peak  # (one float64 copy: twice train.nbytes)
    # the verdicts are those of the whole split: a column tied to two others across chunks
    train[:, 7] = 2 * train[:, 1] - train[:, 3]
    msg = constant_columns(_table(train))
    assert "columns 1 (0-based), 3 (0-based), 7 (0-based) are a linear function" in msg
    train[:, 7] = 5.0
    train[19_999, 9] = train[0, 9]  # (equal in the first and last chunks only: not constant)
    assert "column(s) 7 (0-based) hold the same value" in constant_columns(_table(train))


def test_the_chunks_of_a_table_with_integer_columns_are_its_model_view(monkeypatch):
    """With integer columns the check sees the values with their dequantization noise: the
    chunks hold exactly the rows of ``model_view``, the same draw of noise."""
    monkeypatch.setattr(data, "CHUNK_VALUES", 64)
    g = np.random.default_rng(1)
    train = np.c_[g.integers(0, 3, 500), g.normal(size=500), np.zeros(500)].astype(np.float32)
    whole = data.model_view(train, None, [0, 2])
    chunks = list(data._model_chunks(train, [0, 2]))
    assert len(chunks) > 10
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    assert constant_columns(_table(train, integers=[0, 2])) is None  # (noise: not constant)


# -- eval and report: the run's data reloaded without the warnings' checks ------------------


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A run on a table whose integer column draws a warning when it is trained."""
    tmp = tmp_path_factory.mktemp("scale")
    g = np.random.default_rng(0)
    x = np.c_[g.normal(size=300), g.integers(0, 3, 300), g.normal(size=300)]
    path = tmp / "t.csv"
    path.write_text("a,n,b\n" + "".join(f"{a:.5f},{n:.0f},{b:.5f}\n" for a, n, b in x))
    out = tmp / "run"
    from flowforge.workbench.cli import main

    assert main(["train", "--model", "realnvp", "--data", str(path), "--out", str(out),
                 "--epochs", "1", "--quiet", "--no-progress",
                 "--model-kwargs", '{"layers": 1, "hidden": [4]}']) == 0  # fmt: skip
    return out, path


WARNING_CHECKS = ("_table_checks", "_near_duplicates", "_duplicates", "_integer_columns",
                  "_atoms", "_few_rows", "_unnamed_columns")  # fmt: skip


def _no_warning_checks(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a data check whose only product is a warning ran")

    for name in WARNING_CHECKS:
        monkeypatch.setattr(data, name, refuse)


def test_eval_reloads_a_run_without_the_warning_checks(table_run, capsys, monkeypatch):
    """eval re-ran every data check (13 s of 23 s on 200k x 300) to print the warnings the
    run's config.json already holds; it prints those, as before."""
    run, path = table_run
    rc, before, err = cli(capsys, "eval", run)
    assert rc == 0, err
    assert "warning: the training data: column(s) n hold only integer values that repeat" in err
    _no_warning_checks(monkeypatch)
    rc, after, err = cli(capsys, "eval", run)
    assert rc == 0, err
    assert after == before
    # the data must still be the run's: its fingerprint is checked as ever
    text = path.read_text()
    lines = text.splitlines()
    lines[5] = "0.5," + lines[5].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    try:
        rc, _, err = cli(capsys, "eval", run)
        one_line_error(rc, err, "is not the data this run was trained on")
    finally:
        path.write_text(text)


def test_a_report_reloads_the_data_without_the_warning_checks(table_run, capsys, monkeypatch):
    run, _ = table_run
    _no_warning_checks(monkeypatch)
    rc, _, err = cli(capsys, "report", run)
    assert rc == 0, err
    assert "hold only integer values that repeat" in (run / "report.html").read_text()  # (stored)


def test_a_report_fits_the_gaussian_reference_once(table_run, capsys, monkeypatch):
    """report fitted the Gaussian reference twice (val and test) on the same training split
    (6 s each on 200k x 300)."""
    from flowforge.workbench.data import shrunk_gaussian

    run, _ = table_run
    fits = []

    def counted(train, **kw):
        fits.append(len(train))
        return shrunk_gaussian(train, **kw)

    monkeypatch.setattr(evaluate, "shrunk_gaussian", counted)
    rc, _, err = cli(capsys, "report", run)
    assert rc == 0, err
    assert fits == [240]  # once, on the 240 training rows
    page = (run / "report.html").read_text()
    assert "val NLL of a Gaussian fitted to the training split" in page
    assert "test NLL of a Gaussian fitted to the training split" in page


def test_a_gaussian_fitted_once_scores_as_one_fitted_each_time():
    g = np.random.default_rng(2)
    train = np.c_[g.integers(0, 4, 200), g.normal(size=(200, 2))]
    x = np.c_[g.integers(0, 4, 30), g.normal(size=(30, 2))]
    fitted: dict = {}
    for iw in (False, True):
        kw = dict(per_example=True, integers=[0], seed=3, samples=4, iw=iw)
        fresh = evaluate.gaussian_baseline(train, x, **kw)
        np.testing.assert_array_equal(evaluate.gaussian_baseline(train, x, **kw, fitted=fitted),
                                      fresh)  # fmt: skip
    assert len(fitted) == 1  # (one fit for both)
    kw = dict(per_example=True, integers=[0], seed=4)  # (another seed: another noise, its own fit)
    fresh = evaluate.gaussian_baseline(train, x, **kw)
    np.testing.assert_array_equal(evaluate.gaussian_baseline(train, x, **kw, fitted=fitted), fresh)
    assert len(fitted) == 2


def test_the_gaussian_reference_standardises_its_own_copy_in_place_only():
    """The fit standardises a float64 table in place where it is the fit's own copy (a 200k x
    300 table's eval peaked at 2.2 GB in float64 copies), never the caller's array."""
    g = np.random.default_rng(5)
    train = np.c_[g.integers(0, 4, 300), g.normal(3.0, 2.0, size=(300, 3))]
    x = g.normal(size=(20, 4))
    kept = train.copy()
    for integers in (None, [0]):
        a = evaluate.gaussian_baseline(train, x, per_example=True, integers=integers)
        np.testing.assert_array_equal(train, kept)  # float64: the caller's memory, untouched
        b = evaluate.gaussian_baseline(train.astype(np.float32), x, per_example=True,
                                       integers=integers)  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-5)  # (a float32 table: a copy of its own)
    from flowforge.workbench.data import shrunk_gaussian

    loc, factor = shrunk_gaussian(train)
    np.testing.assert_array_equal(train, kept)
    own = train.copy()
    loc2, factor2 = shrunk_gaussian(own, overwrite=True)
    np.testing.assert_array_equal(loc, loc2)
    np.testing.assert_array_equal(factor, factor2)


# -- the histogram reference: small integers, a chunk at a time ------------------------------


def test_histogram_baseline_counts_a_chunk_at_a_time(monkeypatch):
    """It converted the whole training split to int64 (8 bytes a pixel: 40k images of 3x32x32
    added 1.2 GB)."""
    monkeypatch.setattr(data, "CHUNK_VALUES", 4096)
    g = np.random.default_rng(0)
    train = g.integers(0, 17, (3000, 1, 8, 24)).astype(np.float32)
    x = g.integers(0, 17, (50, 1, 8, 24)).astype(np.float32)
    lp, peak = _peak(evaluate.histogram_baseline, train, x, 17, per_example=True)
    assert peak < train.nbytes / 4, peak  # (an int64 copy: twice train.nbytes)
    # the same numbers as per position counts of the whole split
    t, v = train.reshape(3000, -1).astype(np.int64), x.reshape(50, -1).astype(np.int64)
    counts = np.stack([np.bincount(t[:, j], minlength=17) for j in range(t.shape[1])]) + 0.5
    logp = np.log(counts / counts.sum(1, keepdims=True))
    np.testing.assert_array_equal(lp, logp[np.arange(t.shape[1]), v].sum(1))
    tt = torch.from_numpy(train)
    assert evaluate.histogram_baseline(tt, torch.from_numpy(x), 17) == -lp.mean()


# -- --limit: a copy of the rows kept ---------------------------------------------------------


def test_limit_keeps_a_copy_of_its_rows_not_a_view_of_the_split(tmp_path):
    """``ds.train[:limit]`` was a view: the whole split stayed allocated for the whole run
    (192 MB of storage for 1,000 rows)."""
    g = np.random.default_rng(0)
    np.save(tmp_path / "t.npy", g.normal(size=(2000, 6)).astype(np.float32))
    whole = load_dataset(str(tmp_path / "t.npy"))
    ds = load_dataset(str(tmp_path / "t.npy"), limit=10)
    assert ds.train.untyped_storage().nbytes() == 10 * 6 * 4
    assert torch.equal(ds.train, whole.train[:10])


# -- no temporaries the size of the data -------------------------------------------------------


def test_the_fast_csv_reader_checks_the_values_without_a_table_sized_temporary(
    tmp_path, monkeypatch
):
    """``np.abs(out) > float32 max`` made a float64 temporary the table's size."""
    monkeypatch.setattr(data, "FAST_CSV_BYTES", 0)
    g = np.random.default_rng(0)
    path = tmp_path / "t.csv"
    path.write_text(
        "".join(",".join(f"{v:.6g}" for v in r) + "\n" for r in g.normal(size=(4000, 20)))
    )
    loadtxt, after = np.loadtxt, []

    def measured(*args, **kwargs):  # (what comes after numpy's reader: a fresh peak)
        out = loadtxt(*args, **kwargs)
        after.append((out.nbytes, tracemalloc.get_traced_memory()[0]))
        tracemalloc.reset_peak()
        return out

    monkeypatch.setattr(np, "loadtxt", measured)
    fast, _ = _peak(data._parse_csv_fast, path, "utf-8", "strict", None, None)
    assert fast is not None and fast[0].shape == (4000, 20)
    tracemalloc.start()
    try:
        data._parse_csv_fast(path, "utf-8", "strict", None, None)
        nbytes, held = after[-1]
        extra = tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()
    assert extra < nbytes / 4, (extra, nbytes)
    for bad in ("nan", "inf", "-inf", "1e39", "-4e38"):  # (left to the row-by-row reader)
        lines = path.read_text().splitlines()
        lines[1234] = bad + lines[1234][lines[1234].index(",") :]
        (tmp_path / "b.csv").write_text("\n".join(lines) + "\n")
        assert data._parse_csv_fast(tmp_path / "b.csv", "utf-8", "strict", None, None) is None


def test_the_trainer_checks_rows_for_nan_a_chunk_at_a_time(monkeypatch):
    """``torch.isfinite`` of the whole float32 training tensor: +480 MB on 50k images."""
    monkeypatch.setattr(data, "CHUNK_VALUES", 64)
    seen, isfinite = [], torch.isfinite

    def counted(t):
        seen.append(t.numel())
        return isfinite(t)

    monkeypatch.setattr(torch, "isfinite", counted)
    x = torch.randn(100, 2, 4)
    trainer._check_rows(x, "training")
    assert seen and max(seen) <= 64 and sum(seen) == x.numel()
    x[3, 1, 2] = float("nan")
    x[9, 0, 0] = float("inf")
    x[[63, 99], 1, 3] = -float("inf")
    with pytest.raises(trainer.WorkbenchError) as e:
        trainer._check_rows(x, "training")
    assert (
        str(e.value) == "the training data has NaN or inf in 4 row(s), first at rows [3, 9, 63, 99]"
    )


@pytest.mark.parametrize("bits", [8, 5])
def test_an_8_bit_image_array_is_not_copied_before_it_is_split(tmp_path, monkeypatch, bits):
    """``a.astype(np.uint8)`` copied an array that is uint8 already."""
    g = np.random.default_rng(0)
    a = g.integers(0, 256, (300, 3, 8, 8), dtype=np.uint8)
    want = a >> (8 - bits)
    held, splits = [], data._splits

    def measured(*args):  # (called once the pixels are ready, before the split copies them)
        held.append(tracemalloc.get_traced_memory()[0])
        return splits(*args)

    monkeypatch.setattr(data, "_splits", measured)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ds = data._image_array(a, tmp_path / "x.npy", 0, bits, None, 0.1, 0.1, False)
    finally:
        tracemalloc.stop()
    assert held[-1] - base < a.nbytes / 4, (held[-1] - base, a.nbytes)  # (a copy: a.nbytes)
    assert ds.levels == 2**bits
    assert torch.equal(ds.train, torch.from_numpy(want[: len(ds.train)].astype(np.float32)))


# -- eval: what the model decides, before the data ---------------------------------------------


def test_eval_refuses_samples_for_an_exact_model_before_reading_the_data(
    tmp_path, capsys, monkeypatch
):
    """``eval RUN --samples 8`` on a model that scores exactly was refused after the whole
    dataset loaded (15 s and 1 GB on a 1M-row table); with --calibration, after its pass."""
    run = tiny_moons_run(capsys, tmp_path / "moons")

    def never(*args, **kwargs):
        raise AssertionError("the data were read before the options were checked")

    monkeypatch.setattr(evaluate, "run_dataset", never)
    monkeypatch.setattr(evaluate, "calibrate_run", never)
    for extra in ([], ["--calibration"], ["--split", "val", "--json"]):
        rc, _, err = cli(capsys, "eval", run, "--samples", 8, *extra)
        one_line_error(
            rc, err, "--samples 8 averages draws of a random score", "(realnvp) scores its data "
            "exactly, so every draw is the same: use --samples 1"
        )  # fmt: skip
    rc, _, err = cli(capsys, "eval", run, "--trace", "hutchinson")
    one_line_error(rc, err, "the trace and the ODE tolerance apply to continuous flows")


@pytest.mark.parametrize("as_tensor", [False, True])
def test_histogram_baseline_leaves_an_int64_train_split_as_it_was(as_tensor):
    """Its chunks of an int64 array are views, and the positions' offsets were added in
    place: the digits' training array had its maximum turned into 1087, and a second call
    gave 178.50 nats where the first gave 106.37."""
    g = np.random.default_rng(0)
    train = g.integers(0, 17, (200, 64))
    x = g.integers(0, 17, (20, 64))
    if as_tensor:
        train, x = torch.from_numpy(train), torch.from_numpy(x)
    before = train.clone() if as_tensor else train.copy()
    first = evaluate.histogram_baseline(train, x, 17)
    assert (train == before).all()
    assert evaluate.histogram_baseline(train, x, 17) == first
