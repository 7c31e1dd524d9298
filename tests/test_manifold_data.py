"""The manifold datasets: on the manifold, seeded, a true density that integrates to 1 and that
the samples follow; a TorusFlow and a SphereFlow train on them through the workbench."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowforge.workbench import manifold_data
from flowforge.workbench.data import DATASETS, DataError, load_dataset
from flowforge.workbench.errors import WorkbenchError
from flowforge.workbench.evaluate import evaluate_run
from flowforge.workbench.report import write_report
from flowforge.workbench.runner import train
from flowforge.workbench.runs import load_run

NAMES = list(manifold_data.MANIFOLD_DATASETS)


def _mid(n, lo, hi):
    return lo + (np.arange(n) + 0.5) * (hi - lo) / n


def _quadrature(name):
    """Points and weights of a quadrature over the dataset's manifold."""
    if name == "circle-vonmises":
        g = _mid(4000, -np.pi, np.pi)
        return g[:, None], np.full(len(g), 2 * np.pi / 4000)
    if name == "torus-vonmises":
        g = _mid(400, -np.pi, np.pi)
        pts = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        return pts, np.full(len(pts), (2 * np.pi / 400) ** 2)
    th, ph = np.meshgrid(_mid(400, 0, np.pi), _mid(800, -np.pi, np.pi), indexing="ij")
    pts = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
    w = np.sin(th) * (np.pi / 400) * (2 * np.pi / 800)
    return pts.reshape(-1, 3), w.reshape(-1)


@pytest.mark.parametrize("name", NAMES)
def test_dataset_lies_on_the_manifold_and_is_seeded(name):
    assert name in DATASETS
    ds = load_dataset(name, n_train=500, n_val=100, n_test=100)
    assert ds.stats is None  # angles and unit vectors are never standardised
    for split in ("train", "val", "test"):
        x = ds.split(split)
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == ds.shape
        if name == "sphere-vmf":
            assert torch.allclose(x.norm(dim=1), torch.ones(len(x)), atol=1e-6)
        else:
            assert (x >= -math.pi).all() and (x.double() < math.pi).all()
    again = load_dataset(name, n_train=500, n_val=100, n_test=100)
    assert torch.equal(ds.train, again.train)
    assert not torch.equal(ds.train, load_dataset(name, seed=1, n_train=500).train)


@pytest.mark.parametrize("name", NAMES)
def test_true_density_integrates_to_one_and_the_samples_follow_it(name):
    pts, w = _quadrature(name)
    lp = manifold_data.log_prob(name, pts)
    mass = (np.exp(lp) * w).sum()
    assert abs(mass - 1) < 1e-3, mass
    entropy = -(np.exp(lp) * lp * w).sum()
    x = manifold_data.sample(name, np.random.default_rng(0), 40000)
    lps = manifold_data.log_prob(name, x)
    se = lps.std() / math.sqrt(len(lps))
    assert abs(-lps.mean() - entropy) < 4 * se, (-lps.mean(), entropy, se)


def test_bad_dataset_options_are_refused():
    with pytest.raises(DataError, match="unknown data option 'kappa'"):
        load_dataset("torus-vonmises", kappa=3)


@pytest.mark.parametrize(
    "model, data", [("torusflow", "torus-vonmises"), ("sphereflow", "sphere-vmf")]
)
def test_workbench_trains_a_manifold_flow(tmp_path, model, data):
    config = {
        "model": {"name": model, "layers": 2, "bins": 4, "hidden": [16]},
        "data": {"name": data, "n_train": 512, "n_val": 128, "n_test": 128},
        "train": {"epochs": 2, "batch_size": 128, "tensorboard": False, "warmup_steps": 0},
    }
    train(config, tmp_path / "run", progress=False, echo=False)
    flow = load_run(tmp_path / "run")
    ds = load_dataset(data, n_train=512, n_val=128, n_test=128)
    with torch.no_grad():
        lp = flow.log_prob(ds.test)
    # better than the uniform distribution on the manifold after two epochs
    uniform = -math.log(4 * math.pi) if data == "sphere-vmf" else -2 * math.log(2 * math.pi)
    assert lp.mean().item() > uniform
    if data == "torus-vonmises":  # the report's density grid stays inside [-pi, pi]^2
        write_report(tmp_path / "run")
        assert (tmp_path / "run" / "report" / "density.png").is_file()
        # latents uniform on [-pi, pi] are not drawn against normal quantiles
        assert not (tmp_path / "run" / "report" / "latent_columns.png").exists()

    # another file off the manifold, given to eval: refused in one line naming the file
    bad = tmp_path / "bad.npy"
    off = ds.test * 1.5 if data == "sphere-vmf" else ds.test + 4.0
    np.save(bad, off.numpy())
    with pytest.raises(WorkbenchError, match="bad.npy has (values outside it|rows of norm) in"):
        evaluate_run(str(tmp_path / "run"), data=str(bad))


def test_angles_of_exactly_pi_train_and_coordinate_changes_are_refused(tmp_path, capsys):
    from cli_support import cli, one_line_error

    a = np.random.default_rng(0).uniform(-3, 3, (300, 2))
    a[0, 0], a[1, 1] = np.pi, -np.pi  # float32's pi lies a hair above math.pi
    np.save(tmp_path / "pi.npy", a.astype(np.float32))
    base = ["train", "--model", "torusflow", "--data", tmp_path / "pi.npy", "--epochs", 1,
            "--model-kwargs", '{"layers": 1, "hidden": [8], "bins": 4}', "--no-progress",
            "--quiet"]  # fmt: skip
    rc, _, err = cli(capsys, *base, "--out", tmp_path / "r")
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", tmp_path / "r", "--data", tmp_path / "pi.npy")
    assert rc == 0, err
    np.savetxt(tmp_path / "a.csv", a, delimiter=",", header="a,b", comments="")
    np.savetxt(tmp_path / "i.csv", np.rint(a), delimiter=",", header="a,b", comments="")
    for option, does, file in (("data.bounds.a=[-3.2,3.2]", "logits", "a.csv"),
                               ("data.integers=[a]", "noise", "i.csv")):  # fmt: skip
        rc, _, err = cli(capsys, *base[:4], tmp_path / file, *base[5:], "--set", option,
                         "--out", tmp_path / "r2")  # fmt: skip
        one_line_error(rc, err, "models angles", does, "drop data.")
        assert not (tmp_path / "r2").exists()
