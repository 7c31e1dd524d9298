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
from flowforge.workbench.data import DataError, load_dataset

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
    wide = load_dataset(str(_wide(tmp_path / "w.csv")))  # 80 training rows for 20 columns
    w = wide.info["whitening"]
    factor = np.asarray(w["factor"])
    assert factor.shape == (20, 20) and np.allclose(factor, np.tril(factor))
    # the whitened training rows have unit variances
    z = np.linalg.solve(factor, (wide.train.double().numpy() - w["loc"]).T).T
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-6)
    tall = load_dataset(str(_wide(tmp_path / "t.csv", n=400, d=4)))
    assert "whitening" not in tall.info
    assert "whitening" in load_dataset(str(tmp_path / "t.csv"), whiten=True).info
    assert "whitening" not in load_dataset(str(tmp_path / "w.csv"), whiten=False).info
    # --limit and --target-columns take it again from the split they leave
    few = load_dataset(str(tmp_path / "t.csv"), limit=20)
    assert "whitening" in few.info and np.asarray(few.info["whitening"]["factor"]).shape == (4, 4)
    part = load_dataset(str(tmp_path / "w.csv"), target_columns=list(range(15)))
    assert np.asarray(part.info["whitening"]["factor"]).shape == (15, 15)
    part = load_dataset(str(tmp_path / "w.csv"), target_columns="c0,c1,c2")  # 80 rows for 3
    assert "whitening" not in part.info


@pytest.mark.parametrize(
    "options, msg",
    [
        ({"whiten": "yes"}, "data.whiten must be auto, true or false"),
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
