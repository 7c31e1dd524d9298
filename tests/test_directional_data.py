"""A practitioner's own directional data (wind directions, dihedral angles, unit vectors) in
the workbench: what is refused and why, what is said, and the numbers printed for it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge.workbench.report import outside_ranges

SMALL = ["--epochs", "1", "--model-kwargs", '{"layers": 1, "hidden": [8], "bins": 4}',
         "--no-progress", "--quiet"]  # fmt: skip


def _csv(path, a, header):
    np.savetxt(path, a, delimiter=",", header=header, comments="", fmt="%.6f")
    return path


def _unit_vectors(n=200, d=3, radius=1.0, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("d, radius, hint", [
    (3, 1.0, "use --model sphereflow"),
    (2, 1.0, "numpy.arctan2(y, x) with torusflow"),
    (3, 6371.0, "divide the rows by it first"),
])  # fmt: skip
def test_a_density_on_r_d_of_points_on_a_sphere_is_refused(tmp_path, capsys, d, radius, hint):
    # its NLL has no floor there: it fell every epoch and eval called it better than a Gaussian
    path = _csv(tmp_path / "sky.csv", _unit_vectors(d=d, radius=radius), ",".join("xyz"[:d]))
    rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", path, "--out",
                     tmp_path / "run", "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "every training row has the same norm", "is degenerate", hint)
    assert not (tmp_path / "run").exists()
    # rows of differing norms (a ball, not a sphere) train
    ball = _unit_vectors(d=d) * np.random.default_rng(1).uniform(0.5, 1, (200, 1))
    _csv(path, ball, ",".join("xyz"[:d]))
    rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", path, "--out",
                     tmp_path / "run", *SMALL[:2])  # fmt: skip
    assert rc == 0, err


def test_a_torus_flow_refuses_unit_vectors(tmp_path, capsys):
    # their values lie in [-1, 1], inside [-pi, pi]: they trained as three angles, silently
    path = _csv(tmp_path / "sky.csv", _unit_vectors(), "x,y,z")
    rc, _, err = cli(capsys, "train", "--model", "torusflow", "--data", path, "--out",
                     tmp_path / "run", *SMALL)  # fmt: skip
    one_line_error(rc, err, "sky.csv has the same norm (1)", "points on a sphere",
                   "--model sphereflow")  # fmt: skip


def test_a_torus_flow_names_the_columns_that_are_not_angles(tmp_path, capsys):
    rng = np.random.default_rng(0)
    direction, other = rng.vonmises(0.3, 4, 300), rng.vonmises(-2.0, 2, 300)
    train = ["train", "--model", "torusflow", "--out", tmp_path / "run", *SMALL]
    # a direction and a speed: the speed is named, and no model takes the two together
    wind = _csv(tmp_path / "wind.csv", np.c_[direction, rng.gamma(2, 3, 300)], "direction,speed")
    rc, _, err = cli(capsys, *train, "--data", wind)
    one_line_error(rc, err, "outside it in 'speed' [", "not an angle", "not in flowforge")
    assert "'direction'" not in err and "deg2rad" not in err
    # every column in degrees
    deg = _csv(tmp_path / "deg.csv", np.c_[direction, other] * 57.3 % 360, "a,b")
    rc, _, err = cli(capsys, *train, "--data", deg)
    one_line_error(rc, err, "'a' [", "'b' [", "degrees? numpy.deg2rad(x)")
    # pi written with six decimals lies above float32's pi: said, with the values in full
    a = np.c_[direction, other]
    a[0, 0] = np.pi
    six = _csv(tmp_path / "six.csv", a, "phi,psi")  # "3.141593"
    rc, _, err = cli(capsys, *train, "--data", six)
    one_line_error(rc, err, "'phi' [", "3.14159298]", "pi rounded up", "numpy.clip")
    assert "'psi'" not in err
    np.savetxt(six, np.clip(np.loadtxt(six, delimiter=",", skiprows=1), -np.pi, np.pi),
               delimiter=",", header="phi,psi", comments="")  # fmt: skip
    rc, _, err = cli(capsys, *train, "--data", six)
    assert rc == 0, err


def test_a_flow_on_r_d_of_columns_that_fill_the_circle_is_told_of_torusflow(tmp_path, capsys):
    a = np.random.default_rng(0).uniform(-np.pi, np.pi, (300, 2))
    path = _csv(tmp_path / "ang.csv", a, "phi,psi")
    rc, out, err = cli(capsys, "train", "--model", "nsf", "--data", path, "--out",
                       tmp_path / "run", "--epochs", 1, "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert "column(s) 'phi', 'psi' fill [-pi, pi]" in err and "--model torusflow" in err
    rc, out, err = cli(capsys, "eval", tmp_path / "run")
    assert "--model torusflow" in err  # (the data's notes, repeated)
    # columns that do not fill it get no such note
    _csv(path, a / 2, "phi,psi")
    rc, out, err = cli(capsys, "train", "--model", "nsf", "--data", path, "--out",
                       tmp_path / "run2", "--epochs", 1, "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert "torusflow" not in out


def test_a_torus_run_is_compared_with_von_mises_and_says_its_unit(tmp_path, capsys):
    # a Gaussian on R^D keeps only part of its mass in [-pi, pi): not a density on the torus
    from scipy.stats import vonmises

    rng = np.random.default_rng(0)
    a = np.c_[rng.vonmises(3.0, 2, 400), rng.vonmises(-1.0, 8, 400)]
    path = tmp_path / "ang.npy"
    np.save(path, a.astype(np.float32))
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "torusflow", "--data", path, "--out", run,
                     *SMALL)  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", run, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert "gaussian_nll" not in res and res["density_per"] == "radian^2"
    ds = ff.workbench.load_dataset(str(path), seed=json.loads(
        (run / "config.json").read_text())["seed"], standardize=False)  # fmt: skip
    train, test = ds.train.double().numpy(), ds.test.double().numpy()
    want = 0.0
    for j in range(2):  # maximum likelihood per angle, scored on the test split
        kappa, loc, _ = vonmises.fit(train[:, j], fscale=1)
        want -= vonmises.logpdf(test[:, j], kappa, loc).mean()
    assert res["von_mises_nll"] == pytest.approx(want, rel=1e-9)
    rc, out, err = cli(capsys, "eval", run)
    assert "a density per radian^2" in out
    assert "a von Mises distribution fitted to each angle" in out


def test_a_torus_run_on_a_file_has_a_report_on_the_torus(tmp_path, capsys):
    # the density grid was the data's range padded by 15%, past pi: the report failed,
    # blaming the user's angles
    a = np.random.default_rng(0).uniform(-np.pi, np.pi, (300, 2))
    path = tmp_path / "ang.npy"
    np.save(path, a.astype(np.float32))
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "torusflow", "--data", path, "--out", run,
                     *SMALL)  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", run)
    assert rc == 0, err
    assert (run / "report" / "density.png").exists()


def test_a_sphere_run_on_a_file_has_no_report_as_the_registrys(tmp_path, capsys):
    path = tmp_path / "sky.npy"
    np.save(path, _unit_vectors().astype(np.float32))
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "sphereflow", "--data", path, "--out", run,
                     *SMALL)  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", run)
    one_line_error(rc, err, "no report for a density on the sphere")
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err
    assert "a density per steradian" in out
    # a file of directions (a review: an internal error, the run's data not read for it)
    rc, out, err = cli(capsys, "eval", run, "--data", path)
    assert rc == 0, err
    assert "a density per steradian" in out and "training range" not in err


def test_samples_of_a_flow_on_a_manifold_get_no_range_advice():
    # "declare its bounds: data.bounds", which the same runs refuse
    x = torch.tensor([[-3.1, 0.0], [3.1, 0.0]] * 50)
    cfg = {"model": {"name": "nsf"}, "resolved": {"ranges": [[-0.5, 0.5], [-1.0, 1.0]]}}
    assert "data.bounds" in outside_ranges(x, cfg)
    for name in ("torusflow", "sphereflow"):
        assert outside_ranges(x, {**cfg, "model": {"name": name}}) is None


def test_manifold_models_train_at_their_own_learning_rate(tmp_path, capsys):
    # at 1e-3 a circle's free parameters barely moved: 0.10 nats from the truth on
    # concentrated directions after 100 epochs, 0.015 at 1e-2
    path = tmp_path / "ang.npy"
    np.save(path, np.random.default_rng(0).vonmises(0.3, 15, (200, 1)).astype(np.float32))
    rc, out, err = cli(capsys, "train", "--model", "torusflow", "--data", path, "--out",
                       tmp_path / "run", "--epochs", 1, "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert "learning rate 0.01: TorusFlow's own" in out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["lr"] == 0.01


def test_the_python_api_says_what_to_do_with_lat_lon_and_a_rounded_pi():
    with pytest.raises(ValueError, match=r"latitude and longitude\? .*cos lat cos lon"):
        ff.models.SphereFlow(features=2)
    flow = ff.models.TorusFlow(features=2, layers=1, hidden=(8,)).double()
    x = torch.tensor([[torch.tensor(math.pi).item(), 0.0]], dtype=torch.float64)  # float32's
    with pytest.raises(ValueError, match=r"pi rounded up .*x.clamp\(-pi, pi\)"):
        flow.log_prob(x)
    assert torch.isfinite(flow.log_prob(x.clamp(-math.pi, math.pi))).all()
    with pytest.raises(ValueError, match=r"wrap them first"):
        flow.log_prob(x + 1)


def test_the_registrys_sphere_is_refused_to_a_flow_on_r_d_as_a_file_of_it_is(tmp_path, capsys):
    # the same points as a table were refused; the built-in dataset trained and printed an NLL
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "sphere-vmf",
                     "--set", "data.n_train=200", "--out", tmp_path / "run",
                     *SMALL[:2])  # fmt: skip
    one_line_error(rc, err, "sphere-vmf: every training row has the same norm", "sphereflow")
    assert not (tmp_path / "run").exists()


def test_a_normal_column_is_not_taken_for_angles(tmp_path, capsys):
    # 300 standard-normal rows span [-3.1, 3.1]: they were told of torusflow
    rng = np.random.default_rng(0)
    a = np.c_[rng.normal(size=300), rng.normal(size=300)]
    a[0, 0], a[1, 0] = -3.10, 3.07  # (the span the note looked at)
    path = _csv(tmp_path / "n.csv", a, "a,b")
    rc, out, err = cli(capsys, "train", "--model", "nsf", "--data", path, "--out",
                       tmp_path / "run", "--epochs", 1, "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert "torusflow" not in out


def test_tables_far_from_the_origin_are_not_taken_for_a_sphere(tmp_path, capsys):
    # GPS positions in one city and timestamps have norms that vary little against their size
    # (a review of the check): refused only where the norms vary little against the data's
    # own spread
    from flowforge.workbench.build import common_norm

    rng = np.random.default_rng(0)
    gps = np.c_[40.75 + 0.02 * rng.normal(size=500), -73.98 + 0.02 * rng.normal(size=500)]
    assert common_norm(torch.tensor(gps)) is None
    assert common_norm(torch.tensor(_unit_vectors(500))) == pytest.approx(1.0)
    rounded = np.round(_unit_vectors(500), 3)  # (a CSV of three decimals: still a sphere)
    assert common_norm(torch.tensor(rounded, dtype=torch.float32)) is not None
    shell = _unit_vectors(500) * (1 + 0.003 * rng.normal(size=(500, 1)))  # (a thin shell)
    assert common_norm(torch.tensor(shell)) is None
    path = _csv(tmp_path / "gps.csv", gps, "lat,lon")
    rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", path, "--out",
                     tmp_path / "run", "--epochs", 1, "--quiet")  # fmt: skip
    assert rc == 0, err


def test_pareto_k_takes_weights_that_carry_gradients():
    from flowforge.objectives import pareto_k

    log_w = torch.randn(400, requires_grad=True)
    assert pareto_k(log_w) is not None


def test_an_m_flow_learns_the_sphere_it_is_given(tmp_path, capsys):
    # the refusal of rows of one norm is for densities on R^D; an M-flow learns that manifold
    path = tmp_path / "sky.npy"
    np.save(path, _unit_vectors(300).astype(np.float32))
    rc, _, err = cli(capsys, "train", "--model", "mflow", "--data", path, "--set",
                     "train.objective=mflow", "--set", "data.standardize=false", "--epochs", 2,
                     "--model-kwargs", '{"outer_layers": 1, "inner_layers": 1, "hidden": [8]}',
                     "--out", tmp_path / "run", "--quiet")  # fmt: skip
    assert rc == 0, err
