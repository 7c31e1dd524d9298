"""The known densities of the workbench's 2-D toys, and the gap ``flowforge eval`` prints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cli_support import cli, tiny_moons_run
from flowforge.workbench import toy_density
from flowforge.workbench.data import TOYS, load_dataset


def test_every_toy_has_a_density():
    assert set(toy_density.NAMES) == set(TOYS)


@pytest.mark.parametrize("name", toy_density.NAMES)
def test_density_integrates_to_one_and_matches_its_samples(name):
    # midpoint rule on [-6, 6]^2 (cells of 1/12, aligned with the checkerboard's edges)
    h = 1 / 12
    g = -6 + h * (np.arange(144) + 0.5)
    xx, yy = np.meshgrid(g, g)
    p = np.exp(toy_density.log_prob(name, np.stack([xx.ravel(), yy.ravel()], 1)))
    assert p.sum() * h**2 == pytest.approx(1.0, abs=2e-3)
    # the generator's samples lie where the density is: a Monte Carlo check that the
    # entropy -E log p is close to the value the density gives on a second sample
    x = TOYS[name](np.random.default_rng(1), 2000)
    assert np.isfinite(toy_density.log_prob(name, x)).all()
    w = p / p.sum()
    entropy = -(w * np.log(np.where(p > 0, p, 1))).sum()
    assert -toy_density.log_prob(name, x).mean() == pytest.approx(entropy, abs=0.05)


def test_a_closed_form_value_and_the_scale():
    # 8gaussians at a centre: the mixture is dominated by one component of sd 0.15
    lp = toy_density.log_prob("8gaussians", np.array([[2.0, 0.0]]))
    assert lp[0] == pytest.approx(-math.log(8 * 2 * math.pi * 0.15**2), abs=1e-9)
    x = np.array([[0.3, -1.2], [1.5, 0.5]])
    assert toy_density.log_prob("moons", 2 * x, scale=2.0) == pytest.approx(
        toy_density.log_prob("moons", x) - 2 * math.log(2)
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="no known density for 'digits'"):
        toy_density.log_prob("digits", np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        toy_density.log_prob("moons", np.zeros((3, 3)))


def test_eval_prints_the_gap_to_the_known_density(capsys, tmp_path):
    run = tiny_moons_run(capsys, str(tmp_path / "run"))
    rc, out, err = cli(capsys, "eval", run, "--json")
    assert rc == 0, err
    res = json.loads(out)
    test = load_dataset("moons", seed=0).split("test").numpy()
    assert res["true_nll"] == pytest.approx(-toy_density.log_prob("moons", test).mean())
    assert res["gap"] == pytest.approx(res["nll"] - res["true_nll"])
    assert 0 < res["gap_se"] < 1
    rc, out, _ = cli(capsys, "eval", run)
    assert rc == 0 and "gap" in out and "KL(data || model)" in out
    # a file has no known density: no gap is claimed
    np.savetxt(tmp_path / "pts.csv", test[:50], delimiter=",")
    rc, out, err = cli(capsys, "eval", run, "--data", str(tmp_path / "pts.csv"), "--json")
    assert rc == 0, err
    assert "gap" not in json.loads(out)


def test_eval_scores_a_cnf_exactly(capsys, tmp_path):
    pytest.importorskip("torchdiffeq")
    out = str(tmp_path / "cnf")
    rc, _, err = cli(capsys, "train", "--model", "ffjord", "--data", "moons", "--out", out,
                     "--model-kwargs", '{"hidden": [8], "trace": "hutchinson", "rtol": 0.01, '
                     '"atol": 0.01}', "--limit", 64, "--epochs", 1, "--no-progress",
                     "--quiet")  # fmt: skip
    assert rc == 0, err
    results = []
    for seed in ("0", "1"):  # Hutchinson's noise would make the two differ
        rc, o, err = cli(capsys, "eval", out, "--json", "--seed", seed)
        assert rc == 0, err
        results.append(json.loads(o)["nll"])
    assert results[0] == results[1]
    assert torch.isfinite(torch.tensor(results)).all()
