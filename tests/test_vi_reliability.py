"""Variational inference numbers a practitioner can trust, or a word that they cannot: the
tail of the importance weights, an impossible log Z, a fit that never trained, a target's
own errors and support."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge import targets
from flowforge.objectives import ZeroDensity, pareto_k, reverse_kl, vi_diagnostics
from flowforge.workbench.vi import evaluate_target, summary_line


@pytest.mark.parametrize("xi", [0.2, 0.5, 0.8])
def test_pareto_k_finds_the_shape_of_a_generalised_pareto_tail(xi):
    rng = np.random.default_rng(0)
    ks = []
    for _ in range(10):
        w = (rng.uniform(size=4000) ** -xi - 1) / xi  # generalised Pareto, shape xi
        ks.append(pareto_k(torch.tensor(np.log(w))))
    assert abs(np.mean(ks) - xi) < 0.08
    assert pareto_k(torch.zeros(10)) is None  # (too few weights for a tail)
    assert pareto_k(torch.zeros(400)) == 0.0  # (equal weights: none)


def _gauss(d: int, scale: float = 1.0) -> ff.Flow:
    """A fixed N(0, scale^2 I) in ``d`` dimensions as the variational distribution."""
    layer = ff.transforms.Standardize((d,), 0.0, scale)
    return ff.Flow(ff.Compose(layer), ff.distributions.StandardNormal((d,)))


@pytest.mark.parametrize("d, sd", [(1, 2.0), (2, 1.8)])
def test_a_flow_narrower_than_its_target_is_said_to_have_a_heavy_tail(d, sd):
    # q = N(0, I) against N(0, sd^2 I) (log Z = 0): the weights' variance is infinite; the
    # ESS stayed above 0.1 in most seeds and the log Z interval covered the truth in 62-73%
    flow = _gauss(d)

    def target(x):
        return (-0.5 * (x / sd).square().sum(-1) - d * math.log(sd)
                - 0.5 * d * math.log(2 * math.pi))  # fmt: skip

    torch.manual_seed(0)
    m = vi_diagnostics(flow, target, n=4000)
    assert m["pareto_k"] > 0.5
    assert any("Pareto k" in w for w in m["warnings"])
    assert "Pareto k" in summary_line({**m, "kl": None})
    torch.manual_seed(0)  # a flow as wide as its target: no such word
    m = vi_diagnostics(flow, lambda x: -0.5 * x.square().sum(-1), n=4000)
    assert m["pareto_k"] < 0.5 and not m["warnings"]


def test_a_grid_that_misses_the_mass_gives_no_negative_kl(tmp_path, capsys):
    # it printed "log Z (grid/exact) 0.3977, KL -1.1021 +- 0.0004" as the truth
    def wide(x):  # N(0, 5^2 I) times e^1.5, registered with a box of +-2
        return 1.5 - 0.5 * (x / 5).square().sum(-1) - 2 * math.log(5) - math.log(2 * math.pi)

    flow = _gauss(2, 5.0)  # (the target itself)
    targets.register("wide_box", wide, dim=2, box=(-2, 2, -2, 2))
    try:
        m = evaluate_target(flow, targets.get("wide_box"), n=2000, grid_n=200)
    finally:
        targets.TARGETS.pop("wide_box", None)
    assert m["kl"] is None and m["true_log_z"] is None
    assert any("lies below the ELBO" in w and "wider box" in w for w in m["warnings"])
    assert abs(m["log_z"] - 1.5) < 0.01  # (the importance-sampled one is right)
    # a plain function is a target too (the KL left out: no log Z, no box)
    m = evaluate_target(flow, wide, n=500)
    assert m["kl"] is None and abs(m["log_z"] - 1.5) < 0.05


def test_a_fit_that_never_trained_is_an_error_and_writes_nothing(tmp_path, capsys):
    # 39 of 40 steps skipped: it exited 0 with a report of "KL 4.5e19"
    src = (
        "import math, torch, flowforge as ff\n"
        "def fn(x):\n"
        "    z = (x - torch.tensor([1.0, -1.0])) / 0.5\n"
        "    return 3.0 - 0.5 * z.square().sum(-1) - 2 * math.log(0.5) - math.log(2 * math.pi)\n"
        "ff.targets.register('divmine', fn, dim=2, log_z=3.0)\n"
    )
    (tmp_path / "t.py").write_text(src)
    try:
        base = ["fit-target", "--import", tmp_path / "t.py", "--target", "divmine",
                "--model", "realnvp", "--steps", 40, "--n-eval", 200, "--seed", 1]  # fmt: skip
        # the builder's own default (residual couplings of 128, what fit-target built before)
        big = '{"hidden": [128, 128, 128], "residual": true}'
        rc, _, err = cli(capsys, *base, "--model-kwargs", big, "--out", tmp_path / "run",
                         "--quiet")  # fmt: skip
        lines = [ln for ln in err.splitlines() if ln.startswith("flowforge: error")]
        assert rc == 1 and len(lines) == 1, err
        assert "the fit diverged: 39 of 40 steps" in lines[0]
        assert "parameters: --layers, --model-kwargs" in lines[0]
        assert not (tmp_path / "run").exists()
        # unsized, fit-target sizes the couplings' networks as for a small table: it fits
        targets.TARGETS.pop("divmine", None)  # (the module registers it again)
        rc, out, err = cli(capsys, *base, "--out", tmp_path / "run")
        assert rc == 0, err
        assert "9,488 parameters, sized for a 2-d target: hidden=[32, 32]" in out
        kl = float(out.split(", KL ")[1].split()[0])
        assert abs(kl) < 0.05
    finally:
        targets.TARGETS.pop("divmine", None)


def test_an_exception_in_the_targets_own_code_is_said_as_the_targets(tmp_path, capsys):
    src = (
        "import torch, flowforge as ff\n"
        "W = torch.ones(3, 3)\n"
        "def fn(x):\n"
        "    return -(x @ W).square().sum(-1)  # a (n, 2) x (3, 3) bug\n"
        "ff.targets.register('buggy', fn, dim=2, box=(-3, 3, -3, 3))\n"
    )
    (tmp_path / "t.py").write_text(src)
    try:
        rc, _, err = cli(capsys, "fit-target", "--import", tmp_path / "t.py", "--target",
                         "buggy", "--steps", 5, "--n-eval", 100,
                         "--out", tmp_path / "run")  # fmt: skip
    finally:
        targets.TARGETS.pop("buggy", None)
    one_line_error(rc, err, "target 'buggy' raised RuntimeError", "the target's own code")
    assert "internal error" not in err


def test_a_zero_density_is_refused_where_values_are_not_checked(monkeypatch):
    # on a GPU (no value checks) the loss was inf and the steps went on, or were skipped
    # with the advice of a lower learning rate
    import flowforge.core as core

    monkeypatch.setattr(core, "_checks_on", lambda t, decided: False)
    flow = ff.models.RealNVP(features=2, layers=1, hidden=(8,), standardize=False)

    def positive(x):
        return torch.where(x[..., 1] > 0, -x.square().sum(-1), -math.inf)

    with pytest.raises(ZeroDensity, match=r"ff.models.bounded\(flow, lower, upper\)"):
        reverse_kl(flow, positive, 64)
    with pytest.raises(ValueError, match=r"a log of a negative parameter\? .*ff.models.bounded"):
        reverse_kl(flow, lambda x: torch.log(x[..., 1]), 64)
