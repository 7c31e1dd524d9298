"""Positive and bounded columns: the ``Bounded`` layer (``ff.models.bounded``) and the
workbench's ``data.bounds``, which model such columns on the real line (log, logit) with the
map's log-determinant counted, so that likelihoods stay in the data's units and samples stay
inside the bounds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge import io
from flowforge.workbench.data import DataError, load_dataset

TINY = ["--model", "nsf", "--epochs", 2, "--quiet", "--no-progress", "--model-kwargs",
        '{"layers": 2, "hidden": [16]}']  # fmt: skip


def _table(n=400, seed=0):
    """income (positive, lognormal), share (in (0, 1), beta), score (below 10), z (normal)."""
    g = np.random.default_rng(seed)
    income = np.exp(g.normal(10, 1, n))
    share = g.beta(2, 5, n)
    score = 10 - g.gamma(2, 1, n)
    return np.c_[income, share, score, g.normal(size=n)]


def _csv(path, x, names=("income", "share", "score", "z")):
    path.write_text(
        ",".join(names) + "\n" + "".join(",".join(f"{v:.9g}" for v in r) + "\n" for r in x)
    )
    return path


LOWER, UPPER = [0.0, 0.0, None, None], [None, 1.0, 10.0, None]


def test_the_density_is_the_inner_flows_on_the_mapped_values_times_the_jacobian():
    torch.manual_seed(0)
    inner = ff.models.NSF(features=4, layers=2, hidden=[16])
    flow = ff.models.bounded(inner, LOWER, UPPER).double()
    x = torch.from_numpy(_table(64))
    y = torch.stack(
        [
            x[:, 0].log(),
            x[:, 1].log() - (1 - x[:, 1]).log(),
            -(10 - x[:, 2]).log(),
            x[:, 3],
        ],
        1,
    )
    # dy/dx: 1/x, 1/(x(1 - x)), 1/(10 - x), 1
    log_jac = -x[:, 0].log() - x[:, 1].log() - (1 - x[:, 1]).log() - (10 - x[:, 2]).log()
    with torch.no_grad():
        want = inner.double().log_prob(y) + log_jac
        got = flow.log_prob(x)
    torch.testing.assert_close(got, want)


def test_samples_stay_inside_the_bounds_and_the_bounds_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    flow = ff.models.bounded(ff.models.RealNVP(features=4, layers=2, hidden=[8]), LOWER, UPPER)
    x = torch.from_numpy(_table(200)).float()
    flow.train()
    flow.log_prob(x)  # the data-initialised standardisation sees the mapped values
    flow.eval()
    ff.save(flow, tmp_path / "f.ff")
    back = ff.load(tmp_path / "f.ff")
    assert back.config["prefix"] == [{"bounded": {"lower": LOWER, "upper": UPPER}}]
    with torch.no_grad():
        torch.testing.assert_close(back.log_prob(x), flow.log_prob(x))
        s = back.sample(4000).double()
    assert (s[:, 0] > 0).all() and (s[:, 1] > 0).all() and (s[:, 1] < 1).all()
    assert (s[:, 2] < 10).all() and torch.isfinite(s).all()


def test_a_value_on_or_beyond_a_bound_is_refused_by_the_flow():
    flow = ff.models.bounded(ff.models.NSF(features=4, layers=1, hidden=[8]), LOWER, UPPER)
    x = torch.from_numpy(_table(8)).float()
    for j, v, msg in (
        (0, 0.0, "entry 0 above its lower bound 0"),
        (1, 1.0, "entry 1 below its upper bound 1"),
        (2, 11.0, "entry 2 below its upper bound 10"),
    ):
        bad = x.clone()
        bad[3, j] = v
        with pytest.raises(ValueError, match=msg):
            flow.log_prob(bad)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"lower": [0.0, 1.0], "upper": [None, 1.0]}, "entry 1's lower bound below its upper"),
        ({"lower": [0.0]}, "expected 2 lower bounds"),
        ({"lower": [math.nan, None]}, "finite number or None"),
        ({"upper": [True, None]}, "finite number or None"),
        ({"lower": "0"}, "expected lower to be None, a number or a list, got '0'"),
    ],
)
def test_bad_bounds_are_refused_when_the_layer_is_built(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ff.transforms.Bounded(2, **kwargs)


@pytest.mark.parametrize(
    "entry, msg",
    [
        ({"bounded": "x"}, "a bounded layer takes lower and upper"),
        ({"bounded": {"lower": [0.0], "code": 1}}, "a bounded layer takes lower and upper"),
        ({"bounded": {"lower": [0.0, 0.0, 0.0]}}, "expected 2 lower bounds"),
        ({"bounded": {"lower": [2.0, None], "upper": [1.0, None]}}, "below its upper"),
        ({"bounded": {}, "other": 1}, "unknown fixed layer"),
    ],
)
def test_a_crafted_bounds_entry_in_a_checkpoint_is_refused(tmp_path, entry, msg):
    path = tmp_path / "f.ff"
    ff.save(ff.models.RealNVP(features=2, layers=1, hidden=[4]), path)
    meta, tensors = io.read(path)
    meta["config"]["prefix"] = [entry]
    path.write_bytes(io.pack(tensors, meta))
    with pytest.raises(ValueError, match=msg):
        ff.load(path)


def test_data_bounds_train_a_run_whose_numbers_and_samples_respect_them(tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", _table())
    out = tmp_path / "run"
    loud = [a for a in TINY if a != "--quiet"]  # (the run's first lines name the bounds)
    rc, stdout, err = cli(capsys, "train", "--data", path, "--out", out, *loud,
                          "--set", "data.bounds.income=positive",
                          "--set", "data.bounds.share=[0, 1]",
                          "--set", "data.bounds.score=[null, 10]")  # fmt: skip
    assert rc == 0, err
    assert (
        "bounded columns (data.bounds): income > 0, log; share in (0, 1), logit; score < 10"
        in stdout
    )
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["bounds"] == {"lower": LOWER, "upper": UPPER}
    flow = ff.load(out / "model.ff")
    assert flow.config["prefix"][-1] == {"bounded": {"lower": LOWER, "upper": UPPER}}
    # the standardisation is taken on the mapped values: log(income) has mean about 10
    assert (
        abs(resolved["stats"]["loc"][0] - 10) < 0.3 and abs(resolved["stats"]["scale"][0] - 1) < 0.2
    )
    # eval's NLL is the loaded flow's on the raw test rows
    rc, stdout, err = cli(capsys, "eval", out, "--json")
    assert rc == 0, err
    nll = json.loads(stdout)["nll"]
    ds = load_dataset(
        str(path), bounds={"income": "positive", "share": [0, 1], "score": [None, 10]}
    )
    with torch.no_grad():
        assert math.isclose(nll, -flow.log_prob(ds.test).mean().item(), rel_tol=1e-5)
    rc, _, err = cli(capsys, "sample", out, "-n", 2000, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    s = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert (s[:, 0] > 0).all() and ((s[:, 1] > 0) & (s[:, 1] < 1)).all() and (s[:, 2] < 10).all()
    # other data with a value out of bounds: one line naming the column
    bad = _table(20, seed=1)
    bad[4, 1] = 1.5
    rc, _, err = cli(capsys, "eval", out, "--data", _csv(tmp_path / "bad.csv", bad))
    one_line_error(
        rc,
        err,
        "column 'share' has 1 value on or above its upper bound 1",
        "(the highest: 1.5; the first at row index 4, 0-based)",
    )
    assert "the run's model has no density there, so drop those rows" in err
    assert "float32" not in err  # (1.5: beyond the bound as typed)
    # a value just below the bound, which float32 rounds onto it: the message says so (it
    # read "the highest: 1" of a file whose highest was 0.99999999; an audit)
    bad[4, 1] = 0.99999999
    rc, _, err = cli(capsys, "eval", out, "--data", _csv(tmp_path / "f32.csv", bad))
    one_line_error(
        rc,
        err,
        "(the highest: 1; float32, the models' precision, reads a value within about 6e-8 of "
        "the bound, relative to it, as the bound; the first at row index 4, 0-based)",
    )
    # values on a bound, all of them integers: not "declare it in data.integers" (a data
    # option eval does not take, and the run's model is fixed), the rows (an audit)
    bad[4, 1], bad[5, 1] = 1.0, 0.0
    bad[:, 1] = np.round(bad[:, 1])
    rc, _, err = cli(capsys, "eval", out, "--data", _csv(tmp_path / "edge.csv", bad))
    one_line_error(rc, err, "column 'share'", "drop those rows")
    assert "data.integers" not in err and "--set" not in err
    rc, _, err = cli(capsys, "report", out)
    assert rc == 0, err
    assert "income &gt; 0, log; share in (0, 1), logit" in (out / "report.html").read_text()


def test_bounds_from_a_config_file_and_from_set_merge_column_by_column(tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", _table())
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data:\n  name: {path}\n  bounds:\n    income: positive\n    2: [null, 10]\n"
    )
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--config", config, "--out", out, *TINY, "--epochs", 1,
                     "--set", "data.bounds.share=[0, 1]")  # fmt: skip
    assert rc == 0, err
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["bounds"] == {"lower": LOWER, "upper": UPPER}
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--quiet", "--no-progress")
    assert rc == 0, err


@pytest.mark.parametrize(
    "bounds, msg",
    [
        ({"share": [0, 0.5]}, "column 'share' has"),
        ({"z": "positive"}, "column 'z' has"),
        (
            {"nope": "positive"},
            "data.bounds column 'nope' is neither a column index nor a column name",
        ),
        ({"share": "log"}, "expected positive, negative, or [lower, upper]"),
        ({"share": [1, 0]}, "expected lower < upper"),
        ({"share": [None, None]}, "expected positive, negative"),
        ({"share": [0, "1"]}, "expected positive, negative"),
        ({9: "positive"}, "data.bounds column 9 is out of range for a table of 4 columns"),
        ({"share": [0, 1], 1: [0, 1]}, "names column 'share' twice"),
        (["share"], "data.bounds must map columns"),
    ],
)
def test_bad_bounds_get_one_line(tmp_path, bounds, msg):
    path = _csv(tmp_path / "t.csv", _table())
    with pytest.raises(DataError) as e:
        load_dataset(str(path), bounds=bounds)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_bounds_need_a_continuous_table_and_modelled_columns(tmp_path):
    path = _csv(tmp_path / "t.csv", _table())
    with pytest.raises(DataError, match="a context column: bounds apply to the modelled"):
        load_dataset(str(path), bounds={"income": "positive"}, target_columns="share,z")
    ds = load_dataset(
        str(path), bounds={"score": [None, 10], "share": [0, 1]}, target_columns="score,share"
    )
    assert ds.info["bounds"] == {"lower": [None, 0.0], "upper": [10.0, 1.0]}
    g = np.random.default_rng(0)
    ints = _csv(tmp_path / "i.csv", g.integers(0, 4, size=(100, 2)), names=("a", "b"))
    with pytest.raises(DataError, match="data.bounds applies to continuous tables"):
        load_dataset(str(ints), levels=4, bounds={"a": [0, 4]})


def test_float32_limits_of_the_bounds_are_refused_naming_the_column(tmp_path):
    g = np.random.default_rng(0)
    x = np.c_[g.uniform(0.4, 12.6, 400), g.beta(2, 2, 400), g.normal(size=400)]
    path = _csv(tmp_path / "f.csv", x, names=("income", "share", "z"))
    for bounds, msg in (
        ({"income": [-1e7, None]}, "column 'income' lies so far inside its bounds (-1e+07, inf)"),
        ({"z": [-1e30, 1e30]}, "column 'z' lies so far inside its bounds"),
        ({"income": [0, 1e50]}, "within float32's range"),
        ({"income": [0, 10**400]}, "within float32's range"),
    ):
        with pytest.raises(DataError) as e:
            load_dataset(str(path), bounds=bounds)
        assert msg in str(e.value), str(e.value)
    x[5, 1] = 0.99999999  # inside the bound in float64, on it in float32
    path = _csv(tmp_path / "g.csv", x, names=("income", "share", "z"))
    with pytest.raises(DataError, match="column 'share' has .*values that float32 .* rounds onto"):
        load_dataset(str(path), bounds={"share": [0, 1]})
    with pytest.raises(ValueError, match="within float32's range"):
        ff.transforms.Bounded(2, lower=[0.0, 1e50])
    with pytest.raises(ValueError, match="within float32's range"):
        ff.transforms.Bounded(2, lower=[0.0, 10**400])


def test_samples_far_in_a_tail_stay_strictly_inside_the_bounds():
    layer = ff.transforms.Bounded(3, lower=[1e5, 0.0, None], upper=[None, 1.0, 5.0])
    y = torch.tensor([[-60.0, 60.0, -60.0], [-200.0, -200.0, 200.0]])
    x, _ = layer.inverse(y)
    assert (x[:, 0] > 1e5).all() and (x[:, 1] > 0).all() and (x[:, 1] < 1).all()
    assert (x[:, 2] < 5).all()
    z, ladj = layer(x)  # and they score
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all()


def test_the_out_of_range_warning_does_not_ask_for_bounds_a_run_has():
    from flowforge.workbench.report import outside_ranges

    cfg = {"resolved": {"ranges": [[0.1, 0.9], [0.0, 1.0]], "columns": ["a", "b"]}}
    x = torch.tensor([[0.95, 0.5]] * 10)
    assert "declare its bounds" in outside_ranges(x, cfg)
    cfg["resolved"]["bounds"] = {"lower": [0.0, None], "upper": [1.0, None]}
    said = outside_ranges(x, cfg)
    assert "declare its bounds" not in said and "within the bounds declared" in said


def test_a_header_of_numbers_names_columns_by_name_first(tmp_path):
    g = np.random.default_rng(0)
    x = np.c_[g.uniform(1, 2, 200), g.normal(size=200), g.normal(size=200)]
    path = _csv(tmp_path / "n.csv", x, names=("1", "0", "x"))
    ds = load_dataset(str(path), bounds={"1": "positive"}, header=True)  # the column named "1"
    assert ds.info["bounds"]["lower"] == [0.0, None, None]
    with pytest.raises(DataError, match="1 is both the index of column '0' and the name"):
        load_dataset(str(path), bounds={1: "positive"}, header=True)
    with pytest.raises(DataError, match="0.7' is neither a column index nor a column name"):
        load_dataset(str(path), integers=[0.7], header=True)
    with pytest.raises(DataError, match="inf' is neither a column index"):
        load_dataset(str(path), integers=[float("inf")], header=True)


def test_values_near_their_bounds_are_not_taken_for_a_far_bound(tmp_path):
    # a share piled against both ends: a few values lose digits in float32, most do not
    share = np.random.default_rng(0).beta(0.6, 0.6, 3000)
    path = _csv(tmp_path / "s.csv", np.c_[share, share**2], names=("share", "sq"))
    ds = load_dataset(str(path), bounds={"share": [0, 1]})
    assert ds.info["bounds"]["upper"] == [1.0, None]


def test_a_float64_flow_keeps_to_the_bounds_as_given():
    torch.manual_seed(0)
    flow = ff.models.bounded(
        ff.models.NSF(features=2, layers=1, hidden=[8]), [0.7, None], [0.8, None]
    )
    flow = flow.double().eval()
    with torch.no_grad():
        s = flow.sample(20000, temperature=10.0)
    assert (s[:, 0] > 0.7).all() and (s[:, 0] < 0.8).all()
    with pytest.raises(ValueError, match="above its lower bound 0.7"):
        flow.log_prob(torch.tensor([[0.69999999, 0.0]], dtype=torch.float64))


def test_the_out_of_range_warning_reads_a_malformed_bounds_record_as_none():
    from flowforge.workbench.report import outside_ranges

    x = torch.tensor([[0.95, 0.5]] * 10)
    for junk in ("x", {"lower": 3}, {"lower": [0.0, None]}):
        cfg = {"resolved": {"ranges": [[0.1, 0.9], [0.0, 1.0]], "bounds": junk}}
        assert "declare its bounds" in outside_ranges(x, cfg)


def test_bounded_builds_no_constant_per_call(monkeypatch):
    """On a GPU each ``torch.tensor`` of host values is a blocking copy to the device: the
    bounds live on the layer's device, and neither direction builds a tensor from the host."""
    from flowforge.transforms import Bounded

    b = Bounded(3, lower=[0.1, None, -1.0], upper=[None, 0.7, 2.3])
    x = torch.tensor([[0.5, 0.2, 0.0], [3.0, -4.0, 2.0]])

    def refuse(*args, **kwargs):
        raise AssertionError("torch.tensor called on the hot path")

    monkeypatch.setattr(torch, "tensor", refuse)
    z, ladj = b(x)
    x2, _ = b.inverse(z)
    assert torch.allclose(x2, x) and torch.isfinite(ladj).all()


def test_a_bound_that_integer_or_atom_values_sit_on_points_to_what_fixes_it(tmp_path, capsys):
    # a 0/1 flag bounded [0, 1] without data.integers used to be told to drop 70% of its rows
    g = np.random.default_rng(0)
    n = 300
    flag = (g.random(n) < 0.7).astype(int)
    share = np.where(g.random(n) < 0.2, 0.0, g.uniform(0.01, 0.99, n))
    x = g.normal(size=n)
    path = tmp_path / "t.csv"
    rows = "".join(f"{a},{b:.6f},{c:.6f}\n" for a, b, c in zip(flag, share, x))
    path.write_text("is member,share,x\n" + rows)
    rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", path, "--out", tmp_path / "r",
                     "--set", "data.bounds.is member=[0, 1]")  # fmt: skip
    one_line_error(rc, err, "column 'is member' holds only integers",
                   "declare it in data.integers (then its bounds are inclusive",
                   "--set 'data.integers=[is member]'")  # fmt: skip
    assert "drop those rows" not in err and not (tmp_path / "r").exists()
    # declared, it loads (the bounds inclusive)
    ds = load_dataset(str(path), bounds={"is member": [0, 1]}, integers=["is member"])
    assert ds.info["integers"] == [0]
    # a continuous column with a share of its rows on the bound: a point mass, not stray rows
    with pytest.raises(DataError) as e:
        load_dataset(str(path), bounds={"share": [0, 1]})
    assert "values exactly on its lower bound 0" in str(e.value)
    assert "model the exact values apart" in str(e.value) and "drop those rows" not in str(e.value)
    # values beyond a bound still get the rows to drop
    with pytest.raises(DataError, match="drop those rows"):
        load_dataset(str(path), bounds={"x": [0, None]})
