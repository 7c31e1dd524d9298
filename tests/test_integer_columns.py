"""Integer columns among continuous ones: ``ColumnDequantization`` (``ff.models.integer_columns``)
and the workbench's ``data.integers``, under which a table's likelihood is a bound on the
probability of its integers times the density of its other columns, and samples hold integers
there (within the column's bounds, where given)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge import io
from flowforge.workbench.data import DataError, load_dataset

TINY = ["--model", "nsf", "--epochs", 2, "--quiet", "--no-progress", "--model-kwargs",
        '{"layers": 2, "hidden": [16]}']  # fmt: skip


def _table(n=400, seed=0):
    """count (Poisson(3)), flag (0/1), x (normal, shifted by the flag)."""
    g = np.random.default_rng(seed)
    count = g.poisson(3.0, n)
    flag = (g.random(n) < 0.3).astype(float)
    return np.c_[count, flag, g.normal(size=n) + 2 * flag]


def _csv(path, x, names=("count", "flag", "x")):
    rows = "".join(",".join(f"{v:.9g}" for v in r) + "\n" for r in x)
    path.write_text(",".join(names) + "\n" + rows)
    return path


def test_only_the_integer_columns_get_noise_and_samples_hold_integers_there():
    torch.manual_seed(0)
    deq = ff.transforms.ColumnDequantization(3, [1, 0], lower=[0, None], upper=[1, None])
    assert deq.columns == [0, 1] and deq.lower == [None, 0] and deq.upper == [None, 1]
    x = torch.from_numpy(_table(64)).float()
    y, log_q = deq(x)
    assert torch.equal(y[:, 2], x[:, 2]) and torch.equal(log_q, torch.zeros(64))
    u = y[:, :2] - x[:, :2]
    assert ((u >= 0) & (u < 1)).all() and u.std() > 0.2
    assert torch.equal(deq.quantize(y), x)
    # a sample's floor outside a column's inclusive bounds is clamped, and counted
    s = torch.tensor([[2.5, -0.3, 0.7], [-1.2, 2.0, 0.1]])
    want = torch.tensor([[2.0, 0.0, 0.7], [-2.0, 1.0, 0.1]])
    assert torch.equal(deq.quantize(s), want)
    assert deq.off_grid(s).tolist() == [[False, True, False], [False, True, False]]


def test_the_flow_scores_the_inner_density_of_the_dequantized_rows():
    torch.manual_seed(0)
    inner = ff.models.NSF(features=3, layers=2, hidden=[16]).double()
    flow = ff.models.integer_columns(inner, [0, 1])
    x = torch.from_numpy(_table(32))
    torch.manual_seed(5)
    with torch.no_grad():
        got = flow.log_prob(x)
    torch.manual_seed(5)
    u = torch.rand_like(x) * torch.tensor([1.0, 1.0, 0.0], dtype=x.dtype)
    with torch.no_grad():
        want = inner.log_prob(x + u)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="defined for discrete data"):
        flow.bits_per_dim(x)
    with pytest.raises(ValueError, match="defined for discrete data"):
        ff.bits_per_dim(flow, x)


@pytest.mark.parametrize(
    "row, msg",
    [
        ([2.5, 0.0, 0.1], "expected integers in column 0 (an integer column), got 2.5"),
        ([2.0, 3.0, 0.1], "expected integers in [0, 1] in column 1"),
        ([3e5, 0.0, 0.1], "more than torch.float32 resolves"),
    ],
)
def test_bad_integer_data_is_refused_by_the_flow(row, msg):
    flow = ff.models.integer_columns(
        ff.models.NSF(features=3, layers=1, hidden=[8]), [0, 1], [None, 0], [None, 1]
    )
    x = torch.from_numpy(_table(8)).float()
    x[2] = torch.tensor(row)
    with pytest.raises(ValueError, match=re.escape(msg)):
        flow.log_prob(x)


def test_integer_columns_are_for_continuous_vector_flows():
    with pytest.raises(ValueError, match="has a dequantizer already"):
        ff.models.integer_columns(ff.models.MAF(features=3, levels=5), [0])
    for columns, msg in (([], "non-empty list"), ([0, 0], "distinct"), ([3], "distinct columns")):
        with pytest.raises(ValueError, match=msg):
            ff.transforms.ColumnDequantization(3, columns)
    with pytest.raises(ValueError, match="an integer of at most 2.53 or None"):
        ff.transforms.ColumnDequantization(3, [0], lower=[0.5])
    with pytest.raises(ValueError, match="lower bound <= its upper"):
        ff.transforms.ColumnDequantization(3, [0], lower=[2], upper=[1])


def test_integer_columns_survive_save_and_load_and_crafted_entries_are_refused(tmp_path):
    flow = ff.models.integer_columns(
        ff.models.RealNVP(features=3, layers=1, hidden=[4]), [1], lower=[0], upper=[1]
    )
    path = tmp_path / "f.ff"
    ff.save(flow, path)
    back = ff.load(path)
    assert back.dequantizer.columns == [1] and back.dequantizer.upper == [1]
    meta, tensors = io.read(path)
    for entry, msg in (
        ({"integer_columns": [1]}, "take columns, lower and upper"),
        ({"integer_columns": {"columns": [7]}}, "distinct columns in"),
        ({"integer_columns": {"columns": [1], "lower": ["0"]}}, "or None, got '0'"),
    ):
        meta["config"]["prefix"] = [entry]
        path.write_bytes(io.pack(tensors, meta))
        with pytest.raises(ValueError, match=msg):
            ff.load(path)


def test_data_integers_train_a_run_whose_numbers_are_bounds_and_samples_integers(tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", _table())
    out = tmp_path / "run"
    loud = [a for a in TINY if a != "--quiet"]
    rc, stdout, err = cli(capsys, "train", "--data", path, "--out", out, *loud,
                          "--set", "data.integers=[count, flag]",
                          "--set", "data.bounds.count=positive",
                          "--set", "data.bounds.flag=[0, 1]")  # fmt: skip
    assert rc == 0, err
    assert "integer columns (data.integers): count, flag; dequantized" in stdout
    assert "count integers in [0, inf]; flag integers in [0, 1]" in stdout
    assert "hold only integer values that repeat" not in stdout + err  # (declared: no warning)
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["integers"] == [0, 1]
    flow = ff.load(out / "model.ff")
    # the model's bounds keep half a bin around the dequantized values x + u in [a, b + 1)
    assert flow.config["prefix"][-2] == {
        "bounded": {"lower": [-0.5, -0.5, None], "upper": [None, 2.5, None]}
    }
    rc, stdout, err = cli(capsys, "eval", out)
    assert rc == 0, err
    assert "a dequantization bound with K = 1" in stdout
    assert "a Gaussian fitted to the training split: NLL" in stdout
    rc, stdout, err = cli(capsys, "eval", out, "--samples", 4, "--iw", "--json")
    assert rc == 0, err
    res = json.loads(stdout)
    assert res["bound"] == "importance-weighted" and math.isfinite(res["nll"])
    assert res["bits_per_dim"] is None and math.isfinite(res["gaussian_nll"])
    # the scores file: the Gaussian's column, a bound of its own draws, is named as one (an
    # audit: plain gaussian_log_density, a number that moved with --seed)
    for args, tail in (((), "bound_k1"), (("--samples", 4, "--iw"), "iw_bound_k4")):
        rc, _, err = cli(capsys, "eval", out, *args, "--scores", tmp_path / "sc.csv",
                         "--overwrite")  # fmt: skip
        assert rc == 0, err
        head = (tmp_path / "sc.csv").read_text().splitlines()[0]
        assert head == f"log_density_{tail},gaussian_log_density_{tail}", head
    rc, _, err = cli(capsys, "sample", out, "-n", 3000, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    s = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert np.array_equal(s[:, :2], np.floor(s[:, :2])) and (s[:, 0] >= 0).all()
    assert set(np.unique(s[:, 1])) <= {0.0, 1.0} and len(np.unique(s[:, 2])) > 2900
    # draws clamped to the bounds are counted by column too, and the warning names them
    torch.manual_seed(0)
    flow.sample(3000, temperature=3.0)
    by = flow.clamped_columns
    assert by.shape == (3,) and by[2] == 0 and by[:2].sum() > 0
    assert torch.allclose(by[:2].mean(), flow.clamped)
    rc, _, err = cli(capsys, "sample", out, "-n", 3000, "--temperature", 3, "--out",
                     tmp_path / "s3.csv")  # fmt: skip
    assert rc == 0 and re.search(r"were clamped to them \((count|flag) \d+(\.\d+)?%", err), err
    # over a draw of several chunks, the shares by column are the whole draw's (a review: they
    # were the last chunk's, and "()" when it clamped nothing)
    from flowforge.workbench.report import SAMPLE_CHUNK, sample_run
    from flowforge.workbench.runs import run_config

    sample_run(flow, run_config(out), SAMPLE_CHUNK + 4, temperature=3.0)
    by = flow.clamped_columns
    assert by.shape == (3,) and torch.allclose(by[:2].mean(), torch.tensor(float(flow.clamped)))
    # another file with a non-integer count: one line naming the column
    bad = _table(20, seed=1)
    bad[3, 0] = 2.5
    rc, _, err = cli(capsys, "eval", out, "--data", _csv(tmp_path / "bad.csv", bad))
    one_line_error(rc, err, "column 'count' is in data.integers but holds 1 value that is not")
    bad = _table(20, seed=1)
    bad[3, 1] = 2
    rc, _, err = cli(capsys, "eval", out, "--data", _csv(tmp_path / "bad.csv", bad))
    one_line_error(rc, err, "column 'flag' has 1 value above its upper bound 1 (the highest: 2;")
    rc, _, err = cli(capsys, "compress", out, "--out", tmp_path / "x.ffz")
    one_line_error(rc, err, "integer columns among continuous ones")
    rc, _, err = cli(capsys, "report", out)
    assert rc == 0, err
    assert "count, flag: dequantized, NLL a bound" in (out / "report.html").read_text()


def test_the_integer_warning_names_the_option_that_fixes_it(tmp_path):
    path = _csv(tmp_path / "t.csv", _table())
    notes = load_dataset(str(path)).info["warnings"]
    assert any("data.integers: [count, flag]" in n for n in notes), notes
    notes = load_dataset(str(path), integers=["count", "flag"]).info.get("warnings", [])
    assert not any("integer values that repeat" in n for n in notes), notes


@pytest.mark.parametrize(
    "options, msg",
    [
        ({"integers": ["x"]}, "column 'x' is in data.integers but holds"),
        ({"integers": ["nope"]}, "data.integers column 'nope' is neither"),
        ({"integers": []}, "data.integers must list the integer-valued columns"),
        ({"integers": "count,count"}, "names a column twice"),
        ({"integers": ["count"], "bounds": {"count": [0.5, None]}}, "expected whole numbers"),
        ({"integers": ["count"], "bounds": {"count": [1, None]}}, "below its lower bound 1"),
    ],
)
def test_bad_integer_options_get_one_line(tmp_path, options, msg):
    path = _csv(tmp_path / "t.csv", _table())
    with pytest.raises(DataError) as e:
        load_dataset(str(path), **options)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_integer_options_need_a_continuous_table_and_follow_the_modelled_columns(tmp_path):
    path = _csv(tmp_path / "t.csv", _table())
    ds = load_dataset(str(path), integers="count", target_columns="x,count")
    assert ds.info["integers"] == [1]  # count, the second modelled column
    # a context column is conditioned on, not modelled: naming it did nothing, now refused
    for integers in ("count,flag", "flag"):
        with pytest.raises(DataError) as e:
            load_dataset(str(path), integers=integers, target_columns="x,count")
        assert "data.integers names column 'flag', a context column" in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="data.bounds names column 'flag', a context column"):
        load_dataset(str(path), bounds={"flag": [0, 1]}, target_columns="x,count")
    big = _table()
    big[:, 0] *= 100000
    with pytest.raises(DataError, match="beyond the 131072 that float32 resolves"):
        load_dataset(str(_csv(tmp_path / "big.csv", big)), integers=["count"])
    ints = _csv(tmp_path / "i.csv", np.random.default_rng(0).integers(0, 4, size=(100, 2)))
    with pytest.raises(DataError, match="data.integers applies to continuous tables"):
        load_dataset(str(ints), levels=4, integers=[0])


def test_the_importance_weighted_bound_tends_to_the_mixed_likelihood():
    # a flow that is N(0, I) at its identity start: P(x_int) = Phi(x + 1) - Phi(x) exactly
    torch.manual_seed(0)
    inner = ff.models.MAF(features=2, layers=1, hidden=[4], standardize=False).double().eval()
    flow = ff.models.integer_columns(inner, [0]).double()
    x = torch.tensor([[-1.0, 0.3], [0.0, -1.2], [2.0, 0.0]], dtype=torch.float64)
    exact = np.log(stats.norm.cdf(x[:, 0] + 1) - stats.norm.cdf(x[:, 0])) + stats.norm.logpdf(
        x[:, 1]
    )
    k = 100_000
    with torch.no_grad():
        draws = flow.log_prob(x.repeat(k, 1)).reshape(k, len(x))
    single = draws.mean(0).numpy()
    iw = (torch.logsumexp(draws, 0) - math.log(k)).numpy()
    assert (single < exact - 0.005).all()  # (Jensen's gap: one draw is a loose bound)
    np.testing.assert_allclose(iw, exact, atol=0.01)  # (the weights' noise: about 0.003)


def test_the_clamped_share_counts_the_integer_columns_only():
    deq = ff.transforms.ColumnDequantization(4, [0], lower=[0], upper=[1])
    y = torch.tensor([[3.5, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    assert deq.clamped_share(y).item() == 0.5


def test_crafted_or_huge_integer_columns_get_short_errors(tmp_path):
    for columns, msg in ((5, "non-empty list"), (list(range(3_000_000)), "distinct columns")):
        with pytest.raises(ValueError, match=msg) as e:
            ff.transforms.ColumnDequantization(3, columns)
        assert len(str(e.value)) < 200
    with pytest.raises(ValueError, match="at most 2.53"):
        ff.transforms.ColumnDequantization(3, [0], lower=[10**400])
    path = _csv(tmp_path / "t.csv", _table())
    with pytest.raises(DataError, match="below 2.24 in magnitude"):
        load_dataset(str(path), integers=["count"], bounds={"count": [0, 1e30]})


def test_a_constant_integer_column_is_not_degenerate_once_dequantized(tmp_path):
    from flowforge.workbench.data import constant_columns

    x = _table()
    x[:, 1] = 1.0
    path = _csv(tmp_path / "t.csv", x)
    assert "hold the same value" in constant_columns(load_dataset(str(path)))
    assert constant_columns(load_dataset(str(path), integers=["flag"])) is None


def test_eval_gives_the_gaussian_the_same_kind_of_bound():
    from flowforge.workbench.evaluate import gaussian_baseline

    train, x = _table(300), _table(50, seed=1)
    one = gaussian_baseline(train, x, per_example=True, integers=[0, 1], samples=8)
    iw = gaussian_baseline(train, x, per_example=True, integers=[0, 1], samples=8, iw=True)
    assert (iw >= one).all() and (iw > one).any()


def test_a_conditional_run_with_integer_targets_scores_other_files(tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", _table())
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", path, "--out", out, *TINY,
                     "--target-columns", "count,x", "--set", "data.integers=[count]",
                     "--set", "data.bounds.count=[0, null]")  # fmt: skip
    assert rc == 0, err
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["integers"] == [0] and resolved["bounds"]["lower"] == [0, None]
    rc, stdout, err = cli(capsys, "eval", out, "--data", path)
    assert rc == 0, err
    assert "a dequantization bound with K = 1" in stdout
    bad = _table(30, seed=2)
    bad[4, 0] = -1
    rc, _, err = cli(capsys, "eval", out, "--data", _csv(tmp_path / "bad.csv", bad))
    one_line_error(rc, err, "column 'count' has 1 value below its lower bound 0")


def test_limit_takes_the_statistics_from_the_rows_it_keeps(tmp_path):
    path = _csv(tmp_path / "t.csv", _table())
    full = load_dataset(str(path), integers=["count", "flag"], bounds={"count": [0, None]})
    few = load_dataset(str(path), integers=["count", "flag"], bounds={"count": [0, None]}, limit=40)
    assert few.stats != full.stats and len(few.train) == 40
    from flowforge.workbench.data import model_stats

    assert few.stats == model_stats(few.train, few.info["bounds"], few.info["integers"])


def test_an_integer_column_far_inside_its_bounds_is_refused(tmp_path):
    x = _table()
    x[:, 0] += 100000  # counts around 1e5 ...
    path = _csv(tmp_path / "t.csv", x)
    with pytest.raises(DataError, match="column 'count' lies so far inside its bounds"):
        load_dataset(str(path), integers=["count"], bounds={"count": [-16000000, None]})
    ds = load_dataset(str(path), integers=["count"], bounds={"count": [99990, None]})
    assert ds.info["integers"] == [0]


def test_the_column_warnings_name_modelled_columns_only(tmp_path, capsys):
    # count and flag hold few integers, flag puts many rows on 0 and 1: as context columns
    # they are conditioned on, and neither train nor eval warns about them
    path = _csv(tmp_path / "t.csv", _table())
    notes = load_dataset(str(path), target_columns="x").info.get("warnings", [])
    assert not any("count" in n or "flag" in n for n in notes), notes
    notes = load_dataset(str(path), target_columns="x,count").info["warnings"]
    assert any("column(s) count hold only integer values that repeat" in n for n in notes), notes
    assert not any("flag" in n for n in notes), notes
    # the fix it gives names the bounds too (an audit: declared without them, a count was
    # sampled down to -7 and codes from -3 to 6)
    assert any(re.search(r"data.bounds.count=\[0, \d+\]", n) for n in notes), notes
    run = tmp_path / "run"
    one_column = '{"layers": 2, "hidden": [16], "autoregressive": true}'
    rc, out, err = cli(capsys, "train", "--data", path, "--target-columns", "x", "--out", run,
                       *TINY[:-1], one_column)  # fmt: skip
    assert rc == 0, err
    assert "integer values" not in out + err and "sharpen the spikes" not in out + err
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0 and "integer values" not in out + err


def test_integer_columns_whose_values_repeat_are_said_however_many_values_they_take(tmp_path):
    # (an audit) two columns uniform on 0..39 held more than 32 values, so nothing was said, and
    # a default NSF printed a test NLL 0.16-0.23 nats below the truth (-2 log 40 a row); the
    # rule is now also "four rows a value on average", so ages and 8-bit pixels count
    g = np.random.default_rng(0)
    table = np.c_[g.integers(0, 40, (4000, 2)), g.normal(size=4000)]
    path = tmp_path / "u40.csv"
    np.savetxt(path, table, delimiter=",", header="a,b,c", comments="", fmt="%.8g")
    notes = load_dataset(str(path)).info["warnings"]
    said = [n for n in notes if "hold only integer values that repeat" in n]
    assert len(said) == 1 and said[0].startswith("column(s) a, b hold"), notes
    assert "data.integers: [a, b]" in said[0]
    ids = np.c_[g.permutation(4000), g.normal(size=4000)]  # (whole, but each value once)
    np.savetxt(tmp_path / "ids.csv", ids, delimiter=",", header="id,c", comments="", fmt="%.8g")
    notes = load_dataset(str(tmp_path / "ids.csv")).info.get("warnings", [])
    assert not any("integer values" in n for n in notes), notes
    # (a review) nor in a tiny table, whose few distinct integers are "at most 32 values"
    from flowforge.workbench.data import discrete_column

    assert not discrete_column(20, 20) and discrete_column(20, 19) and discrete_column(200, 32)
    # the Trainer's check of tensors: an 8-bit image array given flat, 40-50 values a column
    from flowforge.workbench.trainer import _integer_valued

    flat = torch.from_numpy(g.binomial(255, 0.5, (3000, 64))).float()
    assert len(torch.unique(flat[:, 0])) > 32
    said = _integer_valued(ff.models.RealNVP(features=64), flat)
    assert said and "hold only integer values that repeat" in said and "column(s) 0, 1" in said


def test_samples_on_integer_values_never_seen_are_said(tmp_path, capsys):
    # (an audit: codes {0, 2, 5} declared as integers gave 19% of synthetic rows the codes 1, 3
    # and 4, which do not exist, with no word)
    g = np.random.default_rng(0)
    code = g.choice([0, 2, 5], 600)
    path = _csv(tmp_path / "g.csv", np.c_[g.normal(size=600) + code, code, code % 2],
                ("a", "code", "odd"))  # fmt: skip
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", path, "--out", out, *TINY,
                     "--set", "data.integers=[code, odd]", "--set", "data.bounds.code=[0, 5]",
                     "--set", "data.bounds.odd=[0, 1]")  # fmt: skip
    assert rc == 0, err
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["integer_values"] == {"1": [0.0, 2.0, 5.0], "2": [0.0, 1.0]}
    rc, _, err = cli(capsys, "sample", out, "-n", 2000, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    s = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    share = np.mean(~np.isin(s[:, 1], [0, 2, 5]))
    assert share >= 0.01  # (a model of two epochs: much of its mass between the codes)
    said = [line for line in err.splitlines() if "never held" in line]
    assert len(said) == 1 and f"column(s) code {share:.1%} (" in said[0], err
    assert "odd" not in said[0]  # (every value it can take was seen)


def test_sample_repeats_that_undeclared_integer_columns_come_out_continuous(tmp_path, capsys):
    # (an audit: train said it, sample did not, and its file had 2.517 where counts were)
    path = _csv(tmp_path / "t.csv", _table())
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", path, "--out", out, *TINY)
    assert rc == 0 and "column(s) count, flag hold only integer values" in err, err
    rc, _, err = cli(capsys, "sample", out, "-n", 50, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    said = [line for line in err.splitlines() if "non-integer values there" in line]
    assert len(said) == 1 and said[0].startswith(
        "flowforge: warning: the training data: column(s) count, flag hold only integer values"
    ), err


def test_sample_says_that_whole_numbered_columns_of_many_values_come_out_continuous(
    tmp_path, capsys
):
    # (an audit: wine's magnesium and proline, whole numbers of many values, came back as
    # 765.6 with no word: too many values for the integer-columns warning)
    g = np.random.default_rng(0)
    # (and a review: fractional timestamps, whole in float32 above 2^24, were named too)
    ts = 1.7e9 + g.uniform(0, 1e6, 300)
    path = _csv(tmp_path / "w.csv", np.c_[g.normal(size=300), g.integers(100, 2000, 300), ts],
                ("a", "mg", "ts"))  # fmt: skip
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--data", path, "--out", out, *TINY)
    assert rc == 0 and "hold only integer values" not in err, err
    assert json.loads((out / "config.json").read_text())["resolved"]["whole_columns"] == [1]
    rc, _, err = cli(capsys, "sample", out, "-n", 20, "--out", tmp_path / "s.csv")
    assert rc == 0 and "column(s) mg hold only whole numbers in the training data" in err, err
