"""Wide tables with few rows: the ``Whiten`` layer (``ff.models.whitened``) and the workbench's
``data.whiten``, which starts a table's model as the Gaussian with the training split's shrunk
covariance when there are few rows per column (before, every default flow scored worse than
that Gaussian on such tables)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

import flowforge as ff
from cli_support import cli
from flowforge import io
from flowforge.workbench.data import DataError, load_dataset, shrunk_gaussian, whitening

TINY = ["--model", "maf", "--epochs", 2, "--no-progress", "--model-kwargs",
        '{"layers": 2, "hidden": [16]}']  # fmt: skip

F = [[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.2, 3.0]]


def test_a_whitened_flow_at_its_identity_start_is_the_gaussian_of_the_factor():
    loc = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    factor = torch.tensor(F, dtype=torch.float64)
    inner = ff.models.MAF(features=3, layers=2, hidden=[8])
    flow = ff.models.whitened(inner, loc, factor).double().eval()
    x = torch.randn(16, 3, dtype=torch.float64)
    with torch.no_grad():
        got = flow.log_prob(x).numpy()
    want = stats.multivariate_normal(loc.numpy(), (factor @ factor.T).numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-6)  # (factor stored in float32)


@pytest.mark.parametrize(
    "factor, msg",
    [
        ([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "lower triangular"),
        ([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], "positive diagonal"),
        ([[1.0, 0.0, 0.0], [0.0, float("nan"), 0.0], [0.0, 0.0, 1.0]], "finite|NaN or inf"),
        ([[1.0, 0.0, 0.0], [0.0, 1e-35, 0.0], [0.0, 0.0, 1.0]], "diagonal in .1e-30, 1e30."),
        ([[1.0, 0.0, 0.0], [3e37, 1.0, 0.0], [0.0, 0.0, 1.0]], "at most 1e30 in magnitude"),
    ],
)
def test_a_bad_factor_is_refused_when_built_and_when_loaded(tmp_path, factor, msg):
    with pytest.raises(ValueError, match=msg):
        ff.transforms.Whiten(3, None, torch.tensor(factor))
    path = tmp_path / "f.ff"
    ff.save(ff.models.whitened(ff.models.MAF(features=3, layers=1, hidden=[4])), path)
    meta, tensors = io.read(path)
    name = next(k for k in tensors if k.endswith("factor"))
    tensors[name] = torch.tensor(factor)
    path.write_bytes(io.pack(tensors, meta))
    with pytest.raises(ValueError, match=msg):
        ff.load(path)


def _wide(path, n=100, d=20, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 3)) @ g.normal(size=(3, d)) + 0.3 * g.normal(size=(n, d))
    names = ",".join(f"c{j}" for j in range(d))
    path.write_text(names + "\n" + "".join(",".join(f"{v:.8g}" for v in r) + "\n" for r in x))
    return path


def test_auto_whitens_a_table_with_few_rows_per_column_only(tmp_path):
    from sklearn.covariance import LedoitWolf

    wide = load_dataset(str(_wide(tmp_path / "w.csv")))  # 80 training rows for 20 columns
    w = whitening(wide)
    factor = np.asarray(w["factor"])
    assert factor.shape == (20, 20) and np.allclose(factor, np.tril(factor))
    # F F^T is the Ledoit-Wolf shrunk correlation in the columns' units
    t = wide.train.double().numpy()
    sd = t.std(0)
    corr = LedoitWolf(assume_centered=True).fit((t - t.mean(0)) / sd).covariance_
    np.testing.assert_allclose(factor @ factor.T, sd[:, None] * corr * sd[None, :], rtol=1e-6)
    np.testing.assert_allclose(w["loc"], t.mean(0), rtol=1e-6, atol=1e-9)
    tall = load_dataset(str(_wide(tmp_path / "t.csv", n=400, d=4)))
    assert whitening(tall) is None
    assert whitening(load_dataset(str(tmp_path / "t.csv"), whiten=True)) is not None
    assert whitening(load_dataset(str(tmp_path / "w.csv"), whiten=False)) is None
    # --limit and --target-columns: taken from the split they leave
    few = load_dataset(str(tmp_path / "t.csv"), limit=20)
    assert np.asarray(whitening(few)["factor"]).shape == (4, 4)
    part = load_dataset(str(tmp_path / "w.csv"), target_columns=list(range(15)))
    assert np.asarray(whitening(part)["factor"]).shape == (15, 15)
    part = load_dataset(str(tmp_path / "w.csv"), target_columns="c0,c1,c2")  # 80 rows for 3
    assert whitening(part) is None


def test_degenerate_or_tiny_tables_fall_back_to_the_standardisation(tmp_path):
    # two training rows: the shrunk correlation is singular
    path = _wide(tmp_path / "two.csv", n=4, d=5)
    two = load_dataset(str(path), val_fraction=0.25, test_fraction=0.25)
    assert len(two.train) == 2 and whitening(two) is None
    with pytest.raises(np.linalg.LinAlgError):
        shrunk_gaussian(two.train.numpy())
    # columns on a tiny scale are scaled, as the standardisation scales them
    x = np.random.default_rng(0).normal(size=(60, 12)) * 1e-15
    loc, factor = shrunk_gaussian(x)
    assert np.allclose(np.diag(factor) / x.std(0), 1, rtol=0.2)


def test_eval_s_gaussian_is_a_gaussian_log_density(tmp_path):
    from flowforge.workbench.evaluate import gaussian_baseline

    g = np.random.default_rng(0)
    train = g.normal(size=(300, 4)) @ g.normal(size=(4, 4)) + [1.0, -2.0, 0.0, 5.0]
    x = g.normal(size=(20, 4))
    loc, factor = shrunk_gaussian(train)
    want = stats.multivariate_normal(loc, factor @ factor.T).logpdf(x)
    np.testing.assert_allclose(gaussian_baseline(train, x, per_example=True), want, rtol=1e-10)


@pytest.mark.parametrize(
    "options, msg",
    [
        ({"whiten": "yes"}, "data.whiten must be auto, true or false"),
        ({"whiten": 0}, "data.whiten must be auto, true or false"),
        ({"whiten": 1}, "data.whiten must be auto, true or false"),
        ({"whiten": True, "standardize": False}, "it needs a continuous table"),
    ],
)
def test_bad_whiten_options_get_one_line(tmp_path, options, msg):
    with pytest.raises(DataError, match=msg):
        load_dataset(str(_wide(tmp_path / "w.csv")), **options)


def test_a_wide_run_is_whitened_and_says_so(tmp_path, capsys):
    path = _wide(tmp_path / "w.csv")
    out = tmp_path / "run"
    rc, stdout, err = cli(capsys, "train", "--data", path, "--out", out, *TINY)
    assert rc == 0, err
    assert "whitened (data.whiten; 80 training rows for 20 columns)" in stdout
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["whiten"] is True
    flow = ff.load(out / "model.ff")
    assert flow.config["prefix"] == ["whiten"]
    rc, _, err = cli(capsys, "train", "--out", out, "--resume", "--quiet", "--no-progress")
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", out)
    assert rc == 0, err
    assert "decorrelated (data.whiten" in (out / "report.html").read_text()
    out2 = tmp_path / "plain"
    rc, stdout, err = cli(capsys, "train", "--data", path, "--out", out2, *TINY,
                          "--set", "data.whiten=false")  # fmt: skip
    assert rc == 0, err
    assert "whitened (data.whiten" not in stdout
    assert ff.load(out2 / "model.ff").config["prefix"] == ["standardize"]


def test_prepended_layers_take_the_flows_dtype(tmp_path):
    # built in the default dtype before: a float64 flow standardised with float32-rounded
    # statistics, sampling a whitened one failed on mixed dtypes, and a saved one reloaded
    # as float32
    torch.manual_seed(0)
    loc = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64) * (1 + 1e-7)
    scale = torch.full((3,), 3.0000001, dtype=torch.float64)
    std = ff.models.standardized(ff.models.NSF(features=3).double(), loc, scale)
    assert torch.equal(std.transform.layers[0].loc, loc)
    ff.save(std, tmp_path / "s.ff")
    assert ff.load(tmp_path / "s.ff").dtype == torch.float64
    for flow in (
        ff.models.whitened(ff.models.NSF(features=3).double()),
        ff.models.bounded(ff.models.NSF(features=3).double(), 0.0, 1.0),
        ff.models.integer_columns(ff.models.NSF(features=3).double(), [0]),
    ):
        assert flow.eval().sample(2).dtype == torch.float64
        assert {t.dtype for t in flow.state_dict().values() if t.is_floating_point()} == {
            torch.float64
        }
    assert torch.get_default_dtype() == torch.float32
