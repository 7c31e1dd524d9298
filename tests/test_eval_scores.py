"""``flowforge eval --scores``: each example's log-density in a file, and ``eval --data`` of a
label-conditional run, with each example's label in the file (the sample -> eval round trip)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge.workbench import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_LABEL_RUN = [
    "train", "--model", "realnvp", "--layout", "vector", "--data", "digits", "--conditional",
    "label", "--model-kwargs", '{"hidden": [16], "layers": 2}', "--limit", "128", "--epochs",
    "1", "--no-progress", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    from flowforge.workbench.cli import main

    out = tmp_path_factory.mktemp("scores") / "moons"
    assert main(["train", "--model", "realnvp", "--data", "moons", "--out", str(out),
                 "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--limit", "64",
                 "--epochs", "1", "--no-progress", "--quiet"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from flowforge.workbench.cli import main

    out = tmp_path_factory.mktemp("scores") / "digits-label"
    assert main([*TINY_LABEL_RUN, "--out", str(out)]) == 0
    return out


def read_scores(path):
    lines = path.read_text().splitlines()
    return lines[0].split(","), np.array([[float(v) for v in r.split(",")] for r in lines[1:]])


def test_the_scores_mean_is_the_printed_nll_in_the_order_of_the_file(moons, tmp_path, capsys):
    rc, out, err = cli(capsys, "eval", moons, "--json", "--scores", tmp_path / "t.csv")
    res = json.loads(out)
    names, t = read_scores(tmp_path / "t.csv")
    assert rc == 0 and names == ["log_density"] and t.shape == (1000, 1), err
    assert res["scores"] == {"path": str(tmp_path / "t.csv"), "columns": names, "examples": 1000}
    assert -t[:, 0].mean() == pytest.approx(res["nll"], rel=1e-12, abs=1e-12)
    assert t[:, 0].std(ddof=1) / np.sqrt(1000) == pytest.approx(res["nll_se"], rel=1e-9)
    # the library's own per-example figures, which the docs name beside the option
    test = load_dataset("moons", n_train=5000).test
    lp = ff.objectives.log_likelihoods(ff.load(moons), test).numpy()
    assert np.allclose(t[:, 0], lp, rtol=1e-6, atol=1e-6)
    # a file's rows, and the same rows reversed: the scores follow the file's order
    x = test[:200].numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "r.npy", x[::-1].copy())
    rc, out, err = cli(capsys, "eval", moons, "--data", tmp_path / "x.npy", "--scores",
                       tmp_path / "x.csv")  # fmt: skip
    assert rc == 0 and "wrote 200 log-densities (nats) to" in out and "columns log_density" in out
    assert "nats/example (200 examples)" in out.splitlines()[0]
    rc, _, err = cli(capsys, "eval", moons, "--data", tmp_path / "r.npy", "--scores",
                     tmp_path / "r.npy.npy")  # fmt: skip
    forward, backward = read_scores(tmp_path / "x.csv")[1][:, 0], np.load(tmp_path / "r.npy.npy")
    assert rc == 0 and backward.dtype == np.float64 and backward.shape == (200,), err
    assert np.allclose(forward, backward[::-1], rtol=1e-6, atol=1e-6)
    assert np.allclose(forward, lp[:200], rtol=1e-6, atol=1e-6)
    printed = float(out.split("NLL ")[1].split()[0])
    assert -forward.mean() == pytest.approx(printed, abs=1e-4)
    # and its standard error over those examples, as the JSON's nll_se
    se = forward.std(ddof=1) / np.sqrt(len(forward))
    assert f"{printed:.4f} +- {se:.4f} nats/example" in out


def test_an_existing_scores_file_is_kept_without_overwrite(moons, tmp_path, capsys):
    path = tmp_path / "s.csv"
    path.write_text("mine\n")
    rc, out, err = cli(capsys, "eval", moons, "--scores", path)
    one_line_error(rc, err, f"{path} exists", "--overwrite")
    assert path.read_text() == "mine\n" and out == ""  # refused before anything was scored
    rc, _, err = cli(capsys, "eval", moons, "--scores", path, "--overwrite")
    assert rc == 0 and read_scores(path)[0] == ["log_density"], err
    assert not [p for p in tmp_path.iterdir() if p.name != "s.csv"]  # (no temporary left)
    rc, _, err = cli(capsys, "eval", moons, "--overwrite")
    one_line_error(rc, err, "--overwrite goes with --scores")
    rc, _, err = cli(capsys, "eval", moons, "--scores", tmp_path / "s.txt")
    one_line_error(rc, err, "expected a .csv or .npy file")
    rc, _, err = cli(capsys, "eval", moons, "--scores", tmp_path)
    one_line_error(rc, err, "expected a .csv or .npy file")
    # never over the file it scores, the run's data or the run's own files, even with
    # --overwrite (a --data file replaced by its scores is lost)
    data = tmp_path / "rows.csv"
    np.savetxt(data, np.random.default_rng(0).normal(size=(20, 2)), delimiter=",")
    kept = data.read_bytes()
    rc, _, err = cli(capsys, "eval", moons, "--data", data, "--scores", data, "--overwrite")
    one_line_error(rc, err, "which this command reads or the run keeps")
    assert data.read_bytes() == kept
    model = Path(moons) / "model.ff"
    before = model.read_bytes()
    rc, _, err = cli(capsys, "eval", moons, "--scores", model.with_suffix(".npy"))
    assert rc == 0, err  # (a new file beside it is fine)
    rc, _, err = cli(capsys, "eval", moons, "--scores", Path(moons) / "config.json",
                     "--overwrite")  # fmt: skip
    one_line_error(rc, err, "expected a .csv or .npy file")
    assert model.read_bytes() == before


def test_a_discrete_runs_scores_say_which_bound_they_are(labelled, tmp_path, capsys):
    rc, out, err = cli(capsys, "eval", labelled, "--scores", tmp_path / "k1.csv")
    names, t = read_scores(tmp_path / "k1.csv")
    # (and the reference eval compares with, each image under its own class's histogram)
    assert rc == 0, err
    assert names == ["log_density_bound_k1", "bits_per_dim_bound_k1", "class_histogram_log_density"]
    res = json.loads(cli(capsys, "eval", labelled, "--json")[1])
    assert -t[:, 2].mean() == pytest.approx(res["class_histogram_nll"], rel=1e-9)
    assert "(nats, a dequantization bound with K = 1)" in out
    nll = float(out.split("NLL ")[1].split()[0])
    assert -t[:, 0].mean() == pytest.approx(nll, abs=1e-4)
    assert np.allclose(t[:, 1], -t[:, 0] / (64 * math.log(2)), rtol=1e-12)
    rc, out, err = cli(capsys, "eval", labelled, "--samples", 3, "--iw", "--json", "--scores",
                       tmp_path / "iw.csv")  # fmt: skip
    res = json.loads(out)
    names, t = read_scores(tmp_path / "iw.csv")
    assert rc == 0 and names[:2] == ["log_density_iw_bound_k3", "bits_per_dim_iw_bound_k3"], err
    assert -t[:, 0].mean() == pytest.approx(res["nll"], rel=1e-12)
    assert t[:, 1].mean() == pytest.approx(res["bits_per_dim"], rel=1e-12)
    assert (t[:, 0] >= read_scores(tmp_path / "k1.csv")[1][:, 0] - 30).all()  # (sane: a bound)
    rc, out, err = cli(capsys, "eval", labelled, "--samples", 2, "--scores", tmp_path / "m.npy")
    assert rc == 0 and "the mean of 2 dequantization bounds with K = 1) to" in out, err
    assert np.load(tmp_path / "m.npy").shape == (447,)


def test_a_label_conditional_run_scores_what_sample_wrote(labelled, tmp_path, capsys):
    s = tmp_path / "s.csv"
    rc, _, err = cli(capsys, "sample", labelled, "--label", "3,7", "-n", 8, "--out", s)
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", labelled, "--data", s, "--json", "--scores",
                       tmp_path / "sc.csv")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    assert res["examples"] == 16 and res["split"] == str(s), err
    _, t = read_scores(tmp_path / "sc.csv")
    assert -t[:, 0].mean() == pytest.approx(res["nll"], rel=1e-12)
    # the same examples and labels as an .npz (images or flattened): the same scores
    table = np.loadtxt(s, delimiter=",", skiprows=1)
    labels, x = table[:, 0].astype(np.int64), table[:, 1:]
    for name, xs in (("a.npz", x.reshape(-1, 1, 8, 8)), ("b.npz", x)):
        np.savez(tmp_path / name, x=xs, labels=labels)
        rc, _, err = cli(capsys, "eval", labelled, "--data", tmp_path / name, "--scores",
                         tmp_path / f"{name}.csv")  # fmt: skip
        assert rc == 0, err
        assert np.array_equal(read_scores(tmp_path / f"{name}.csv")[1], t)
    # sample writes that .npz itself (the same seed: the same samples, labels and scores)
    rc, _, err = cli(capsys, "sample", labelled, "--label", "3,7", "-n", 8, "--out",
                     tmp_path / "s.npz")  # fmt: skip
    assert rc == 0, err
    with np.load(tmp_path / "s.npz") as f:
        assert np.array_equal(f["labels"], labels) and f["x"].shape[0] == 16
    rc, _, err = cli(capsys, "eval", labelled, "--data", tmp_path / "s.npz", "--scores",
                     tmp_path / "s.npz.csv")  # fmt: skip
    assert rc == 0 and np.array_equal(read_scores(tmp_path / "s.npz.csv")[1], t), err
    # the model's own figures for those labels (their one-hot context), in the file's order
    flow = ff.load(labelled)
    context = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).float()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # (the seed eval draws its dequantization noise with)
        lp = ff.objectives.log_likelihoods(flow, torch.from_numpy(x).float(), context).numpy()
    assert np.allclose(t[:, 0], lp, rtol=1e-5, atol=1e-4)
    # the other labels give the same images other scores: the labels are read
    np.savez(tmp_path / "swapped.npz", x=x, labels=np.where(labels == 3, 7, 3))
    rc, _, err = cli(capsys, "eval", labelled, "--data", tmp_path / "swapped.npz", "--scores",
                     tmp_path / "swapped.csv")  # fmt: skip
    assert rc == 0 and not np.allclose(read_scores(tmp_path / "swapped.csv")[1], t), err


def test_labelled_files_that_cannot_be_scored_are_one_line(labelled, tmp_path, capsys):
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data[:6], d.target[:6]
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "nolabels.npz", x=x)
    np.savez(tmp_path / "half.npz", x=x, labels=y + 0.5)
    np.savez(tmp_path / "unseen.npz", x=x, labels=y + 9)
    np.savez(tmp_path / "short.npz", x=x, labels=y[:3])
    np.savetxt(tmp_path / "plain.csv", np.c_[y, x], delimiter=",", fmt="%g")
    header = ",".join(["label", *(f"x{j}" for j in range(64))])
    np.savetxt(tmp_path / "wide.csv", np.c_[y, x, x[:, :1]], delimiter=",", fmt="%g",
               header=header + ",extra", comments="")  # fmt: skip
    for name, needles in (
        ("x.npy", ["a CSV whose first column is named label", "an .npz with arrays x"]),
        ("nolabels.npz", ["holds arrays ['x']", "arrays x (the examples) and labels"]),
        ("half.npz", ["holds 0.5 (example 0, 0-based)", "whole numbers"]),
        ("unseen.npz", ["unseen.npz: label 10 is not one of the 10 classes seen in training"]),
        ("short.npz", ["expected one label per example (6,)"]),
        ("plain.csv", ["has no label column (its first row starts with '0')", "named label"]),
        ("wide.csv", ["has 65 data columns after its label", "expects 64"]),
    ):
        rc, out, err = cli(capsys, "eval", labelled, "--data", tmp_path / name, "--scores",
                           tmp_path / f"{name}.scores.csv")  # fmt: skip
        one_line_error(rc, err, *needles)
        assert not (tmp_path / f"{name}.scores.csv").exists()  # nothing written


def test_an_mflow_run_is_refused_scores_in_one_line(tmp_path, capsys):
    from flowforge.workbench import train

    cfg = {
        "seed": 0,
        "model": {
            "name": "mflow",
            "manifold_dim": 2,
            "outer_layers": 1,
            "inner_layers": 1,
            "hidden": [8],
        },  # fmt: skip
        "data": {"name": "surface-64", "n_train": 64, "n_val": 32, "n_test": 32},
        "train": {
            "objective": "mflow",
            "epochs": 2,
            "manifold_epochs": 1,
            "batch_size": 64,
            "tensorboard": False,
        },  # fmt: skip
    }
    train(cfg, tmp_path / "m", progress=False, echo=False)
    rc, _, err = cli(capsys, "eval", tmp_path / "m", "--scores", tmp_path / "s.csv")
    one_line_error(rc, err, "--scores writes each example's log-density", "an M-flow")
    assert not (tmp_path / "s.csv").exists()


def test_a_folders_scores_name_each_rows_image(tmp_path):
    # (an audit) eval --data FOLDER --scores wrote its rows in the class folders' name order
    # (0, 1, 10, 11, 2, ...) with nothing saying which image a row was: a user matching rows
    # in numeric order paired most scores with the wrong image; a file column now says
    from PIL import Image

    from flowforge.workbench.data import read_examples, read_labelled
    from flowforge.workbench.evaluate import save_scores

    folder = tmp_path / "imgs"
    names = {"0": ["b.png", "a.png"], "1": ["x.png"], "10": ["=c,d.png"], "2": ["e.png"]}
    for k, (d, files) in enumerate(names.items()):
        (folder / d).mkdir(parents=True)
        for j, f in enumerate(files):
            Image.fromarray(np.full((4, 4), 10 * k + j, dtype=np.uint8)).save(folder / d / f)
    files: list = []
    info = {"names": list(names), "classes": [0, 1, 10, 2]}  # (the run's labels)
    x, labels = read_labelled(folder, (1, 4, 4), None, info, 8, files)
    assert files == ["0/a.png", "0/b.png", "1/x.png", "10/=c,d.png", "2/e.png"]
    assert x[:, 0].tolist() == [1, 0, 10, 20, 30] and labels.tolist() == [0, 0, 1, 10, 2]
    image = tmp_path / "one"  # (an unlabelled folder: its own images, by name)
    image.mkdir()
    for f in ("b.png", "a.png"):
        Image.fromarray(np.full((4, 4), ord(f[0]), dtype=np.uint8)).save(image / f)
    got: list = []
    assert read_examples(image, 8, (1, 4, 4), files=got)[:, 0].tolist() == [97, 98]
    assert got == ["a.png", "b.png"]
    res = {"log_densities": np.arange(5.0), "dims": 16, "samples": 1, "noise": None,
           "files": files}  # fmt: skip
    assert save_scores(tmp_path / "s.csv", res) == ["file", "log_density"]
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "file,log_density" and lines[1] == "0/a.png,0.0"
    assert lines[4] == '"10/=c,d.png",3.0'  # (quoted: the name holds a comma)


def test_samples_never_replace_the_runs_data_or_its_files(tmp_path, capsys):
    # (sample --out data.csv --overwrite replaced the table the run was trained on)
    data = tmp_path / "rows.csv"
    np.savetxt(data, np.random.default_rng(0).normal(size=(200, 2)), delimiter=",")
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--model-kwargs",
                     '{"hidden": [8], "layers": 1}', "--data", data, "--epochs", 1, "--out", run,
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    kept = data.read_bytes()
    rc, _, err = cli(capsys, "sample", run, "-n", 5, "--out", data, "--overwrite")
    one_line_error(rc, err, "which this command reads or the run keeps")
    assert data.read_bytes() == kept
    rc, _, err = cli(capsys, "sample", run, "-n", 5, "--out", tmp_path / "s.npz")
    one_line_error(rc, err, "for a label-conditional run")  # (no labels: .npy or .csv)
    rc, _, err = cli(capsys, "sample", run, "-n", 5, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    rc, _, err = cli(capsys, "sample", run, "-n", 5, "--out", tmp_path / "s.csv", "--overwrite")
    assert rc == 0, err  # (an earlier samples file is what --overwrite is for)


def test_against_scores_another_run_on_the_same_examples_with_a_paired_error(
    moons, tmp_path, capsys
):
    # two models on the same split: the difference is the mean of the per-example differences
    # of their scores files, and its standard error theirs; another split or kind is refused
    other = tmp_path / "maf"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", "moons", "--out", other,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--limit", "64",
                     "--epochs", "1", "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    for run, name in ((moons, "a.csv"), (other, "b.csv")):
        rc, _, err = cli(capsys, "eval", run, "--scores", tmp_path / name)
        assert rc == 0, err
    a, b = (read_scores(tmp_path / n)[1][:, 0] for n in ("a.csv", "b.csv"))
    diff = b - a  # (NLL of moons' run minus the other's)
    rc, out, err = cli(capsys, "eval", moons, "--against", other, "--json")
    assert rc == 0, err
    res = json.loads(out)["against"]
    assert res["difference"] == pytest.approx(diff.mean(), abs=1e-6)
    assert res["difference_se"] == pytest.approx(diff.std(ddof=1) / math.sqrt(len(diff)), rel=1e-4)
    assert res["model"] == "maf" and res["run"] == str(other.resolve())
    rc, out, err = cli(capsys, "eval", moons, "--against", other)
    way = "worse" if diff.mean() > 0 else "better"
    assert rc == 0 and f"this run is {abs(diff.mean()):.4f} +- " in out and way in out, out
    # one file for both
    x = load_dataset("moons").test[:50].numpy()
    np.save(tmp_path / "x.npy", x)
    rc, out, err = cli(capsys, "eval", moons, "--against", other, "--data", tmp_path / "x.npy")
    assert rc == 0 and "on the same examples" in out, err
    # refused: other draws of the data, the run itself, with --calibration
    drawn = tmp_path / "seed3"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", "moons", "--out", drawn,
                     "--set", "data.seed=3", "--model-kwargs", '{"layers": 1, "hidden": [4]}',
                     "--limit", "64", "--epochs", "1", "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "eval", moons, "--against", drawn)
    one_line_error(rc, err, "test split holds other examples than this run's", "--data FILE")
    rc, _, err = cli(capsys, "eval", moons, "--against", moons)
    one_line_error(rc, err, "is the run itself")
    # (a review) a run on fewer training rows, the same split: compared, not refused
    fewer = tmp_path / "fewer"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", "moons", "--out", fewer,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--limit", "32",
                     "--epochs", "1", "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", moons, "--against", fewer)
    assert rc == 0 and "on the same examples" in out, err


def test_against_refuses_runs_of_another_quantity(labelled, tmp_path, capsys):
    # (a review: two conditional runs of other target columns were compared on one file)
    g = np.random.default_rng(0)
    path = tmp_path / "t.csv"
    np.savetxt(path, g.normal(size=(200, 3)), delimiter=",", header="a,b,c", comments="")
    runs = []
    for targets in ("a,b", "b,c"):
        runs.append(tmp_path / targets.replace(",", ""))
        rc, _, err = cli(capsys, "train", "--model", "maf", "--data", path, "--target-columns",
                         targets, "--model-kwargs", '{"hidden": [8]}', "--epochs", "1",
                         "--out", runs[-1], "--no-progress", "--quiet")  # fmt: skip
        assert rc == 0, err
    rc, _, err = cli(capsys, "eval", runs[0], "--against", runs[1], "--data", path)
    one_line_error(rc, err, "models p(columns [1, 2] | columns [0]), this run p(columns [0, 1]")
    unconditional = tmp_path / "u"
    plain = [a for a in TINY_LABEL_RUN if a not in ("--conditional", "label")]
    rc, _, err = cli(capsys, *plain, "--out", unconditional)
    assert rc == 0, err
    rc, _, err = cli(capsys, "eval", unconditional, "--against", labelled)
    one_line_error(rc, err, "models p(x | label), this run p(x)")


def test_against_applies_to_each_run_the_options_that_apply_to_it(tmp_path, capsys):
    # (an audit: --samples 4 for a dequantized run was applied to the IDF run it was compared
    # with, refused after the first run was scored, in words about "this run")
    runs = {}
    for model, kw in (("realnvp", '{"hidden": [16], "layers": 2}'), ("idf", '{"layers": 1}')):
        runs[model] = tmp_path / model
        rc, _, err = cli(capsys, "train", "--model", model, "--layout", "vector", "--data",
                         "digits", "--model-kwargs", kw, "--limit", "128", "--epochs", "1",
                         "--out", runs[model], "--no-progress", "--quiet")  # fmt: skip
        assert rc == 0, err
    rc, out, err = cli(capsys, "eval", runs["realnvp"], "--against", runs["idf"], "--samples", 2,
                       "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    assert res["samples"] == 2 and res["against"]["samples"] == 1
    assert res["against"]["model"] == "idf"
    rc, out, err = cli(capsys, "eval", runs["idf"], "--against", runs["realnvp"])
    assert rc == 0 and "(a dequantization bound with K = 1)" in out, err
