"""Conditional runs in the workbench: conditional training and sampling, --dequantization, --base,
and the one-line errors for bad contexts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge.workbench.cli import main
from flowforge.workbench.data import ContextError, label_context, load_dataset
from flowforge.workbench.runs import load_run

TINY_GLOW = '{"steps": 1, "hidden": 8, "blocks": 0}'


pytestmark = pytest.mark.usefixtures("one_thread")


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def label_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    code = main(
        [
            "train",
            "--model",
            "glow",
            "--data",
            "digits",
            "--conditional",
            "label",
            "--dequantization",
            "variational",
            "--base",
            "class-gaussian",
            "--model-kwargs",
            TINY_GLOW,
            "--epochs",
            "1",
            "--limit",
            "128",
            "--out",
            str(out),
            "--no-progress",
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_class_conditional_glow_trains_saves_and_samples(label_run, tmp_path, capsys):
    flow = ff.load(label_run)
    assert flow.context_features == 10
    assert isinstance(flow.dequantizer, ff.transforms.VariationalDequantization)
    assert flow.config["kwargs"]["dequantization"] == "variational"
    code, out, _ = run(
        ["sample", label_run, "--label", "3", "-n", "8", "--out", tmp_path / "s.png"], capsys
    )
    assert code == 0 and (tmp_path / "s.png").is_file()
    code, out, _ = run(
        ["sample", label_run, "--label", "0,1,2", "-n", "4", "--out", tmp_path / "s.npy"], capsys
    )
    x = np.load(tmp_path / "s.npy")
    assert code == 0 and x.shape == (12, 1, 8, 8)
    code, out, _ = run(
        ["sample", label_run, "--label", "0,1,2", "-n", "4", "--out", tmp_path / "s.csv"], capsys
    )
    lines = (tmp_path / "s.csv").read_text().splitlines()  # images, one flattened per row
    assert code == 0 and lines[0].startswith("label,x0,x1,") and len(lines) == 13
    assert [line.split(",")[0] for line in lines[1:]] == ["0"] * 4 + ["1"] * 4 + ["2"] * 4
    assert len(lines[1].split(",")) == 1 + 64
    code, out, _ = run(["eval", label_run, "--json"], capsys)
    assert code == 0 and '"nll"' in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label", "12"], "label 12 is not one of the 10 classes seen in training (0..9)"),
        ([], "this run is conditional: pass --label"),
        (["--context", "1,2"], "use --label, not --context"),
        (["--label", "x"], "--label expects integers"),
        (["--label", ""], "--label expects integers like 3 or 0,1,2, got ''"),  # (no labels)
        (["--label", ","], "--label expects integers like 3 or 0,1,2, got ','"),
    ],
)
def test_bad_labels_are_one_line_errors(label_run, tmp_path, capsys, extra, message):
    code, _, err = run(
        ["sample", label_run, "-n", "2", "--out", tmp_path / "s.png", *extra], capsys
    )
    assert code == 1
    assert err.count("\n") == 1 and message in err, err


def test_label_context_is_a_value_error():
    info = load_dataset("digits", conditional="label").context_info
    assert label_context([3, 0], info).argmax(1).tolist() == [3, 0]
    with pytest.raises(ValueError, match="label 10 is not one of"):
        label_context([10], info)
    assert issubclass(ContextError, ValueError)
    # the label said is the one given: no cast to int64 first (it wrapped 2**64 - 1 to -1, and
    # 1e30 to -2**63)
    for bad in ([1.0, float("inf")], [float("nan")]):  # (int(inf) raised OverflowError)
        with pytest.raises(ContextError, match="labels must be integers"):
            label_context(np.array(bad), info)
    for given in (np.array([2**64 - 1], np.uint64), np.array([1e30])):
        with pytest.raises(ContextError, match=f"label {int(given[0])} is not one of"):
            label_context(given, info)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (300, 2))
    y = np.sin(x[:, :1]) + 0.1 * rng.normal(size=(300, 1))
    path = tmp_path_factory.mktemp("table") / "t.csv"
    y2 = y * 0.5 + 0.1 * rng.normal(size=(300, 1))  # (not a function of y: no hyperplane)
    np.savetxt(path, np.hstack([y, y2, 10 * x + 5]), delimiter=",")
    return path


@pytest.mark.parametrize("model", ["maf", "nsf"])
def test_conditional_density_estimation_on_a_table(table, tmp_path, capsys, model):
    out = tmp_path / model
    code, _, err = run(
        [
            "train",
            "--model",
            model,
            "--data",
            table,
            "--target-columns",
            "0,1",
            "--model-kwargs",
            '{"hidden": [16]}',
            "--epochs",
            "1",
            "--out",
            out,
            "--no-progress",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    ds = load_dataset(str(table), target_columns="0,1")
    # the contexts are the raw columns; the run's model standardises them with the training
    # statistics (in its config: ff.load of model.ff alone takes raw contexts too)
    assert ds.shape == (2,) and ds.context_info["context_columns"] == [2, 3]
    stats = ds.context_info["stats"]
    raw = torch.from_numpy(np.loadtxt(table, delimiter=",")[:, 2:]).float()
    assert set(map(tuple, ds.context["train"].tolist())) <= set(map(tuple, raw.tolist()))
    assert ds.context["train"].double().mean(0).tolist() == pytest.approx(stats["loc"])
    for flow in (ff.load(out / "model.ff"), load_run(out)):
        assert flow.context_map.loc == stats["loc"] and flow.context_map.scale == stats["scale"]
    flow = ff.load(out).eval()
    y, c = ds.split("test"), ds.split_context("test")
    code, said, err = run(["eval", out, "--split", "test", "--json"], capsys)
    assert code == 0, err
    nll = -flow.log_prob(y, c).double().mean().item()
    assert nll == pytest.approx(json.loads(said)["nll"], rel=1e-6)  # raw contexts, as eval
    code, _, err = run(
        ["sample", out, "--context", "5,5;30,-10", "-n", "3", "--out", tmp_path / "s.csv"], capsys
    )
    assert code == 0, err
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "x0,x1,x2,x3"  # the table's columns in its order (no header: positions)
    got = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert got.shape == (6, 4)  # each sample beside the context it was drawn for
    assert np.array_equal(got[:, 2:], [[5, 5]] * 3 + [[30, -10]] * 3)
    code, out_, err = run(["eval", out, "--data", tmp_path / "s.csv"], capsys)
    assert code == 0 and "(6 examples)" in out_, err  # the samples read back as the table
    code, _, err = run(
        ["sample", out, "--context", "5", "-n", "3", "--out", tmp_path / "b.csv"], capsys
    )
    assert code == 1 and "expected 2 context value(s) per row" in err
    code, _, err = run(["sample", out, "-n", "3", "--out", tmp_path / "b.csv"], capsys)
    assert code == 1 and "pass --context" in err
    code, out_, err = run(["eval", out, "--data", table], capsys)
    assert code == 0 and "NLL" in out_, err


def test_variational_dequantization_refuses_continuous_data(tmp_path, capsys):
    code, _, err = run(
        ["train", "--model", "realnvp", "--data", "moons", "--dequantization", "variational",
         "--out", tmp_path / "r", "--epochs", "1", "--no-progress", "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 1 and "is for discrete data" in err and err.count("\n") == 1


def test_label_flag_on_an_unconditional_run(tmp_path, capsys):
    out = tmp_path / "u"
    code, _, _ = run(
        ["train", "--model", "glow", "--data", "digits", "--model-kwargs", TINY_GLOW,
         "--epochs", "1", "--limit", "64", "--out", out, "--no-progress", "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0
    code, _, err = run(
        ["sample", out, "--label", "3", "-n", "2", "--out", tmp_path / "s.png"], capsys
    )
    assert code == 1 and "unconditional" in err


def test_a_sample_csv_names_the_context_columns_by_their_header(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    path = tmp_path / "named.csv"
    np.savetxt(path, x, delimiter=",", header="y1,y2,age,dose", comments="")
    out = tmp_path / "r"
    code, said, err = run(["train", "--model", "maf", "--data", path, "--target-columns",
                           "y1,y2", "--model-kwargs", '{"hidden": [8]}', "--epochs", "1",
                           "--out", out, "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert "p('y1', 'y2' | 'age', 'dose')" in said  # (by name, not "columns [0, 1]")
    code, _, err = run(["sample", out, "-n", "2", "--out", tmp_path / "s.csv"], capsys)
    assert code == 1 and "2 raw values of 'age', 'dose'" in err
    code, _, err = run(["sample", out, "--context", "7", "-n", "2", "--out", tmp_path / "s.csv"],
                       capsys)  # fmt: skip
    assert code == 1 and "per row ('age', 'dose'), got shape (1, 1)" in err  # (not [2, 3])
    code, _, err = run(["sample", out, "--context", "1,2", "-n", "2", "--out",
                        tmp_path / "s.csv"], capsys)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "y1,y2,age,dose"  # the table's
    code, out_, err = run(["eval", out, "--data", tmp_path / "s.csv"], capsys)
    assert code == 0 and "(2 examples)" in out_, err
    # the context columns first in the table: still in their places
    np.savetxt(path, x[:, [2, 0, 3, 1]], delimiter=",", header="age,y1,dose,y2", comments="")
    code, _, err = run(["train", "--model", "maf", "--data", path, "--target-columns", "y1,y2",
                        "--model-kwargs", '{"hidden": [8]}', "--epochs", "1", "--out",
                        tmp_path / "r2", "--no-progress", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run(["sample", tmp_path / "r2", "--context", "1,2", "-n", "2", "--out",
                        tmp_path / "s2.csv"], capsys)  # fmt: skip
    assert code == 0, err
    got = np.loadtxt(tmp_path / "s2.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "s2.csv").read_text().splitlines()[0] == "age,y1,dose,y2"
    assert np.array_equal(got[:, [0, 2]], [[1, 2], [1, 2]])
    code, out_, err = run(["eval", tmp_path / "r2", "--data", tmp_path / "s2.csv"], capsys)
    assert code == 0 and "(2 examples)" in out_, err


def test_contexts_from_a_file_give_one_synthetic_row_set_per_row(tmp_path, capsys):
    # (an audit: a synthetic table with the real contexts' mix needed thousands of rows packed
    # into one --context argument, past the command line's limit)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    path = tmp_path / "named.csv"
    np.savetxt(path, x[:200], delimiter=",", header="y1,age,y2,dose", comments="")
    held = tmp_path / "held.csv"  # the whole table's columns, in another order
    np.savetxt(held, x[200:, [3, 0, 1, 2]], delimiter=",", header="dose,y1,age,y2",
               comments="")  # fmt: skip
    out = tmp_path / "r"
    code, _, err = run(["train", "--model", "maf", "--data", path, "--target-columns", "y1,y2",
                        "--model-kwargs", '{"hidden": [8]}', "--epochs", "1", "--out", out,
                        "--no-progress", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    code, said, err = run(["sample", out, "--context-file", held, "-n", "2", "--out",
                           tmp_path / "s.csv"], capsys)  # fmt: skip
    assert code == 0 and "given the 100 context rows of" in said, err
    got = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "y1,age,y2,dose"
    assert got.shape == (200, 4)
    assert np.allclose(np.sort(got[:, [1, 3]], 0), np.sort(np.repeat(x[200:, [1, 3]], 2, 0), 0))
    # a file of the context columns alone; one that lacks one; with --context too
    only = tmp_path / "only.csv"
    only.write_text("age,dose\n1,2\n3,4\n")
    code, _, err = run(["sample", out, "--context-file", only, "-n", "1", "--out",
                        tmp_path / "o.csv"], capsys)  # fmt: skip
    assert code == 0, err
    assert np.loadtxt(tmp_path / "o.csv", delimiter=",", skiprows=1)[:, [1, 3]].tolist() == [
        [1, 2], [3, 4]]  # fmt: skip
    only.write_text("age\n1\n")
    code, _, err = run(["sample", out, "--context-file", only, "-n", "1", "--out",
                        tmp_path / "p.csv"], capsys)  # fmt: skip
    assert code == 1 and "has no column 'dose'" in err and len(err.splitlines()) == 1, err
    code, _, err = run(["sample", out, "--context-file", held, "--context", "1,2", "-n", "1",
                        "--out", tmp_path / "p.csv"], capsys)  # fmt: skip
    assert code == 1 and "give the context once" in err, err
    # the file it reads is not one it may write
    code, _, err = run(["sample", out, "--context-file", held, "-n", "1", "--out", held,
                        "--overwrite"], capsys)  # fmt: skip
    assert code == 1 and "which this command reads" in err, err


def test_a_context_far_outside_or_beyond_float32_is_said():
    from flowforge.workbench.data import ContextError, column_context

    info = {"kind": "columns", "features": 2, "context_columns": [1, 2],
            "stats": {"loc": [10.0, 0.0], "scale": [2.0, 1.0]}}  # fmt: skip
    got = column_context([[12.0, 1.0]], info)  # raw, checked: the model standardises them
    assert got.dtype == torch.float64 and torch.equal(got, torch.tensor([[12.0, 1.0]]).double())
    flow = ff.models.context_standardized(
        ff.models.MAF(features=1, context_features=2), **info["stats"]
    )
    assert torch.equal(flow.context_map(got, torch.float32), torch.tensor([[1.0, 1.0]]))
    with pytest.warns(RuntimeWarning, match="5e\\+29 standard deviations"):
        column_context([[1e30, 0.0]], info)
    with pytest.raises(ContextError, match="1e\\+39, beyond float32's range"):
        column_context([[1e39, 0.0]], info)
    with pytest.raises(ContextError, match="NaN or inf"):
        column_context([[float("inf"), 0.0]], info)


def test_a_column_conditional_run_from_before_the_model_standardised_its_contexts(
    table, tmp_path, capsys
):
    """Runs written before the model took raw contexts (their workbench standardised them,
    and model.ff has no context layer) score, sample and resume as they did: load_run gives
    their model the layer from config.json's statistics."""
    import os
    import signal

    from flowforge.workbench.runner import train

    cfg = {"model": {"name": "maf", "layers": 1, "hidden": [8]}, "layout": "vector",
           "data": {"name": str(table), "target_columns": [0, 1]},
           "train": {"epochs": 3, "batch_size": 64, "tensorboard": False}}  # fmt: skip

    def stop(t):
        if t.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "old"
    assert train(cfg, out, progress=False, echo=False, callback=stop)["status"] == "interrupted"
    code, said, err = run(["eval", out, "--json"], capsys)
    assert code == 0, err
    before = json.loads(said)["nll"]
    # what the older flowforge wrote: no context_standardize layer in either file
    flow = ff.load(out / "model.ff")
    prefix = [p for p in flow.config["prefix"] if "context_standardize" not in p]
    flow.context_map, flow.config = None, {**flow.config, "prefix": prefix}
    ff.save(flow, out / "model.ff")
    stored = json.loads((out / "config.json").read_text())
    stored["resolved"]["flow_config"]["prefix"] = prefix
    # and its data fingerprint over the contexts it handed the model: standardised
    from flowforge.workbench.runs import fingerprint

    ds = load_dataset(str(table), target_columns=[0, 1])
    stats = stored["resolved"]["context"]["stats"]
    loc, scale = (torch.tensor(stats[k], dtype=torch.float64) for k in ("loc", "scale"))
    old = [((ds.split_context(k).double() - loc) / scale).float() for k in ("train", "val")]
    legacy = fingerprint(*(ds.split(k) for k in ("train", "val", "test")), *old)
    assert legacy != stored["resolved"]["data_fingerprint"]
    stored["resolved"]["data_fingerprint"] = legacy
    (out / "config.json").write_text(json.dumps(stored))
    assert ff.load(out / "model.ff").context_map is None
    code, said, err = run(["eval", out, "--json"], capsys)
    assert code == 0 and json.loads(said)["nll"] == before, err
    code, _, err = run(["train", "--out", out, "--resume", "--no-progress", "--quiet"], capsys)
    assert code == 0, err
    assert ff.load(out / "model.ff").context_map is None  # (the run keeps its model's identity)
    assert load_run(out).context_map is not None
    code, said, err = run(["eval", out, "--json"], capsys)
    assert code == 0 and json.loads(said)["nll"] < before + 1.0, err
    code, _, err = run(["sample", out, "--context", "5,5", "-n", "4", "--out", tmp_path / "s.csv"],
                       capsys)  # fmt: skip
    assert code == 0, err


def test_targets_given_out_of_the_tables_order_are_said_as_the_models_order(tmp_path, capsys):
    # an audit: ff.load(run).log_prob(y, x) takes y in the order --target-columns gave, and y
    # in the table's order was scored thousands of nats off without a word
    rng = np.random.default_rng(0)
    path = tmp_path / "asym.csv"
    np.savetxt(path, rng.normal(size=(200, 3)), delimiter=",", header="y1,y2,x", comments="")
    common = ["--model", "maf", "--data", path, "--model-kwargs", '{"hidden": [8]}',
              "--epochs", "1", "--no-progress"]  # fmt: skip
    code, said, err = run(["train", *common, "--target-columns", "y2,y1", "--out",
                           tmp_path / "a"], capsys)  # fmt: skip
    assert code == 0, err
    assert "p('y2', 'y1' | 'x'), y in that order (as ff.load(run).log_prob(y, x)" in said
    code, said, err = run(["train", *common, "--target-columns", "y1,y2", "--out",
                           tmp_path / "b"], capsys)  # fmt: skip
    assert code == 0 and "p('y1', 'y2' | 'x')\n" in said and "in that order" not in said


def test_contexts_outside_the_training_range_and_constant_or_shifted_ones_are_said(
    tmp_path, capsys
):
    # an audit: one step past the largest training category drew 79% of the samples outside
    # the data's range without a word about the context (the warning began at 100 standard
    # deviations); a constant context column, and --init-from onto contexts in other units
    # (a first loss of 1.8e12, then 12,002 nats/example), were said by nothing
    rng = np.random.default_rng(0)
    k = rng.integers(0, 4, 400).astype(float)
    y = k + rng.normal(size=400)
    path = tmp_path / "k.csv"
    np.savetxt(path, np.c_[y, k, np.full(400, 5.0)], delimiter=",", header="y,k,c", comments="")
    common = ["--model", "maf", "--model-kwargs", '{"hidden": [8]}', "--epochs", "1",
              "--no-progress", "--target-columns", "y"]  # fmt: skip
    code, said, err = run(["train", "--data", path, *common, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    assert "context column(s) c (5) hold one value in every training row" in err
    code, _, err = run(["sample", tmp_path / "a", "--context", "3,5", "-n", "5", "--out",
                        tmp_path / "in.csv"], capsys)  # fmt: skip
    assert code == 0 and "training contexts' range" not in err, err
    code, _, err = run(["sample", tmp_path / "a", "--context", "4,5", "-n", "5", "--out",
                        tmp_path / "out.csv"], capsys)  # fmt: skip
    assert (
        code == 0
        and "outside the training contexts' range: k 4 (1 value past the training range 0 to 3)"
        in err
    )
    assert err.count("training contexts' range") == 1, err
    code, said, err = run(["sample", tmp_path / "a", "--context", "4,5", "-n", "5", "--out",
                           tmp_path / "out.csv", "--overwrite", "--json"], capsys)  # fmt: skip
    assert code == 0 and any("training contexts' range" in w for w in json.loads(said)["warnings"])
    shifted = tmp_path / "k100.csv"
    np.savetxt(shifted, np.c_[y, 100 * k + 500, np.full(400, 5.0)], delimiter=",",
               header="y,k,c", comments="")  # fmt: skip
    code, said, err = run(["train", "--init-from", tmp_path / "a", "--data", shifted,
                           "--target-columns", "y", "--epochs", "1", "--no-progress",
                           "--out", tmp_path / "b"], capsys)  # fmt: skip
    assert code == 0, err
    assert "warning: this run's data lies far from what" in err
    assert "context column 'k': mean 6" in err
    code, said, err = run(["eval", tmp_path / "b"], capsys)  # (and eval repeats it)
    assert "this run's data lies far from what" in err


def test_a_file_without_a_header_for_a_run_with_names_is_said(tmp_path, capsys):
    # an audit: a header-less file with its columns swapped was scored in the run's order
    # without a word (3.22 nats against 0.74), where a header would have been checked
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    path = tmp_path / "t.csv"
    np.savetxt(path, x, delimiter=",", header="y,x", comments="")
    code, _, err = run(["train", "--model", "maf", "--data", path, "--target-columns", "y",
                        "--model-kwargs", '{"hidden": [8]}', "--epochs", "1", "--no-progress",
                        "--out", tmp_path / "r"], capsys)  # fmt: skip
    assert code == 0, err
    np.savetxt(tmp_path / "bare.csv", x[:20], delimiter=",")
    code, _, err = run(["eval", tmp_path / "r", "--data", tmp_path / "bare.csv"], capsys)
    assert code == 0 and "bare.csv has no header: its columns are taken as the run's" in err
    code, _, err = run(["eval", tmp_path / "r", "--data", path], capsys)
    assert code == 0 and "no header" not in err


def test_a_conditional_table_is_compared_with_a_linear_gaussian_regression(tmp_path, capsys):
    # an audit: a conditional run got no reference density, where a regression with Gaussian
    # noise is the one that says whether the flow learned more than a linear trend
    from flowforge.workbench.evaluate import regression_baseline

    g = np.random.default_rng(0)
    x = g.normal(size=(20000, 1))
    y = 2 * x + 1 + 0.5 * g.normal(size=(20000, 1))
    lp = regression_baseline(y[:10000], x[:10000], y[10000:], x[10000:])
    truth = -0.5 * ((y[10000:] - 2 * x[10000:] - 1) / 0.5) ** 2 - np.log(0.5 * np.sqrt(2 * np.pi))
    assert abs(lp.mean() - truth.mean()) < 0.005  # (the true model, fitted)
    x = g.uniform(-3, 3, 600)
    y = np.sin(x) + (0.1 + 0.3 * abs(x)) * g.normal(size=600)
    path = tmp_path / "h.csv"
    np.savetxt(path, np.c_[y, x], delimiter=",", header="y,x", comments="")
    code, _, err = run(["train", "--model", "maf", "--data", path, "--target-columns", "y",
                        "--model-kwargs", '{"hidden": [16]}', "--epochs", "3", "--no-progress",
                        "--out", tmp_path / "r"], capsys)  # fmt: skip
    assert code == 0, err
    code, said, err = run(["eval", tmp_path / "r", "--json"], capsys)
    res = json.loads(said)
    assert code == 0 and math.isfinite(res["regression_nll"]) and res["regression_difference_se"]
    code, said, _ = run(["eval", tmp_path / "r"], capsys)
    assert "a linear-Gaussian regression on the context columns, fitted to the training" in said
