"""Careless and hostile inputs to the workbench: each is refused in one line, before anything
is written or allocated, and the data a user gives is read as it is (never rounded)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error, tiny_moons_run
from flowforge.workbench.data import DataError, load_dataset, read_examples, read_table
from flowforge.workbench.errors import WorkbenchError


def test_debug_before_the_command_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "nothing"
    rc, _, err = cli(capsys, "eval", missing)
    one_line_error(rc, err, "nothing: no such folder (no run there)")
    for args in (("--debug", "eval", missing), ("eval", missing, "--debug")):
        with pytest.raises(Exception, match="no such folder"):
            cli(capsys, *args)


def test_a_npy_header_cannot_claim_more_than_the_file_holds(tmp_path):
    header = b"{'descr': '<i8', 'fortran_order': False, 'shape': (100000000000, 64), }"
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + (255).to_bytes(2, "little") + header.ljust(255) + b"\n")
    with pytest.raises(DataError, match=r"promises an array of shape \(100000000000, 64\)"):
        read_examples(str(path))
    np.save(tmp_path / "ok.npy", np.arange(6.0).reshape(3, 2))
    assert read_examples(str(tmp_path / "ok.npy")).shape == (3, 2)
    # the same claim inside a .npz member
    import zipfile

    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.writestr("x.npy", path.read_bytes())
    with pytest.raises(DataError, match="promises an array"):
        read_examples(str(tmp_path / "bad.npz"))


def test_a_npy_header_length_is_checked_before_numpy_reads_it(tmp_path):
    # a version-2 header may claim 4 GiB, which numpy read in full before its own limit (a
    # sparse 4.4 GB file took 8.6 GB of memory); a broken header is one line too
    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as f:
        f.write(b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little") + b"{")
        f.truncate(1 << 20)
    with pytest.raises(DataError, match=r"its header claims 4,294,967,295 bytes"):
        read_examples(str(huge))
    v3 = tmp_path / "v3.npy"  # (version 3 reads as 2 does: it was let through unchecked)
    with open(v3, "wb") as f:
        f.write(b"\x93NUMPY\x03\x00" + (600 * 2**20).to_bytes(4, "little") + b"{")
        f.truncate(1 << 20)
    with pytest.raises(DataError, match=r"its header claims 629,145,600 bytes"):
        read_examples(str(v3))
    with open(tmp_path / "ok3.npy", "wb") as f:
        np.lib.format.write_array(f, np.arange(6.0).reshape(3, 2), version=(3, 0))
    assert read_examples(str(tmp_path / "ok3.npy")).shape == (3, 2)
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x02\x00\x05")
    with pytest.raises(DataError, match="ends inside its header"):
        read_examples(str(tmp_path / "cut.npy"))
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"\x93NUMPY\x01\x00" + (10).to_bytes(2, "little") + b"{nonsense}")
    with pytest.raises(DataError, match="not a readable .npy file"):
        read_examples(str(broken))


def test_tables_keep_their_values_and_arrays_of_the_run_shape_are_read(tmp_path):
    a = np.zeros((2, 4))
    a[0, 0] = 2.00000001  # float32 would round this to 2.0
    np.save(tmp_path / "a.npy", a)
    assert read_table(str(tmp_path / "a.npy"))[0, 0] == 2.00000001
    img = np.arange(24.0).reshape(2, 3, 2, 2)
    np.save(tmp_path / "img.npy", img)
    assert read_table(str(tmp_path / "img.npy"), shape=(3, 2, 2)).shape == (2, 12)
    with pytest.raises(DataError, match=r"expected \(examples, 1, 2, 2\) or a table"):
        read_table(str(tmp_path / "img.npy"), shape=(1, 2, 2))
    with pytest.raises(DataError, match="expected a table"):  # no run shape given
        read_table(str(tmp_path / "img.npy"))
    os.mkfifo(tmp_path / "fifo.npy")  # never opened (a read would block)
    with pytest.raises(DataError, match="is not a regular file"):
        read_table(str(tmp_path / "fifo.npy"))


@pytest.mark.parametrize(
    "option, needle",
    [
        ("data.n_test=-5", "n_test must be an integer >= 1, got -5"),
        ("data.n_train=abc", "n_train must be an integer >= 1, got 'abc'"),
        ("data.n_train=1000000000", "more than the 16,777,216 values"),
        ("model.hidden=[100000, 100000]", "half this machine's memory"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_a_run_folder_exists(
    tmp_path, capsys, option, needle
):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", out,
                     "--set", option, "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "data, needle",
    [
        ("sphere-vmf", "sphere-vmf holds points on a sphere, not angles"),
        ("moons", "moons has values outside it in column 0 ["),
    ],
)
def test_a_torus_flow_refuses_data_that_are_not_angles(tmp_path, capsys, data, needle):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "torusflow", "--data", data, "--out", out,
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "models ", needle)
    assert not out.exists()


def test_a_torus_flow_names_degrees_when_the_angles_look_like_them(tmp_path, capsys):
    deg = np.random.default_rng(0).uniform(0, 360, size=(200, 2))
    path = tmp_path / "deg.npy"
    np.save(path, deg)
    rc, _, err = cli(capsys, "train", "--model", "torusflow", "--data", path, "--out",
                     tmp_path / "run", "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "models every column as an angle in [-pi, pi]",
                   "degrees? numpy.deg2rad(x), then wrap")  # fmt: skip


def test_levels_come_from_the_data(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "idf", "--data", "digits", "--out", out,
                     "--set", "model.levels=5", "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "levels=5 does not match the data's 17 levels")
    assert not out.exists()


def test_model_levels_on_continuous_data_point_to_the_datas_levels(tmp_path, capsys):
    # the IDF trained on standardised floats off its grid, and printed NLLs of nothing
    path = tmp_path / "ints.npy"
    np.save(path, np.random.default_rng(0).integers(0, 17, (200, 4)) + 0.5)
    out = tmp_path / "run"
    for model in ("idf", "realnvp"):
        rc, _, err = cli(capsys, "train", "--model", model, "--data", path, "--out", out,
                         "--set", "model.levels=17", "--epochs", 1, "--quiet")  # fmt: skip
        one_line_error(rc, err, "levels=17 applies to discrete data", "--set data.levels=17")
        assert not out.exists()


def test_a_sphere_flow_on_vectors_off_the_sphere_is_refused_before_writing(tmp_path, capsys):
    path = tmp_path / "off.npy"
    np.save(path, np.random.default_rng(0).normal(size=(200, 3)))
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "sphereflow", "--data", path, "--out", out,
                     "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "models unit vectors in R^3", "off.npy has rows of norm in")
    assert not out.exists()
    x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    np.save(path, x / np.linalg.norm(x, axis=1, keepdims=True))  # float32 unit vectors: fine,
    rc, _, err = cli(capsys, "train", "--model", "sphereflow", "--data", path, "--out", out,
                     "--set", "data.standardize=true", "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "must not be standardised")  # but not standardised
    assert not out.exists()


def test_a_sphere_run_has_no_report_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "sphere"
    rc, _, err = cli(capsys, "train", "--model", "sphereflow", "--data", "sphere-vmf",
                     "--out", out, "--set", "data.n_train=64", "--set", "data.n_val=32",
                     "--set", "data.n_test=32",
                     "--model-kwargs", '{"layers": 2, "hidden": [8]}',
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", out)
    one_line_error(rc, err, "no report for a density on the sphere")
    assert not (out / "report").exists()


def test_samples_are_refused_where_the_score_is_exact(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    rc, _, err = cli(capsys, "eval", run, "--samples", 4)
    one_line_error(rc, err, "scores its data exactly", "use --samples 1")
    rc, _, err = cli(capsys, "eval", run, "--samples", 10**9)  # it ran for ever, silently
    one_line_error(rc, err, "more than the 10,000 draws")
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err


@pytest.mark.parametrize(
    "shape, needle",
    [
        ("abc", "resolved.data_shape must be a list of positive integers"),
        (None, "resolved.data_shape must be a list of positive integers"),
        ([1e308], "resolved.data_shape must be a list of positive integers"),
        ([2, 32], "hold different numbers of values"),
    ],
)
def test_a_damaged_data_shape_is_refused_when_the_run_is_read(tmp_path, capsys, shape, needle):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    cfg = json.loads((run / "config.json").read_text())
    cfg["resolved"]["data_shape"] = shape
    (run / "config.json").write_text(json.dumps(cfg))
    for args in (("eval", run), ("sample", run, "-n", 4, "--out", tmp_path / "s.npy")):
        rc, _, err = cli(capsys, *args)
        one_line_error(rc, err, "is damaged", needle)


def test_eval_reads_arrays_in_the_run_shape(tmp_path, capsys):
    out = tmp_path / "digits"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "digits", "--out", out,
                     "--layout", "vector", "--model-kwargs", '{"layers": 1, "hidden": [8]}',
                     "--limit", 64, "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    x = np.random.default_rng(0).integers(0, 17, (5, 1, 8, 8))
    np.save(tmp_path / "img.npy", x)
    np.save(tmp_path / "table.npy", x.reshape(5, 64))
    res = []
    for f in ("img.npy", "table.npy"):
        rc, o, err = cli(capsys, "eval", out, "--data", tmp_path / f, "--json")
        assert rc == 0, err
        res.append(json.loads(o)["nll"])
    assert math.isfinite(res[0]) and res[0] == pytest.approx(res[1], abs=1e-4)
    np.save(tmp_path / "wrong.npy", x.reshape(5, 1, 4, 16))
    rc, _, err = cli(capsys, "eval", out, "--data", tmp_path / "wrong.npy")
    one_line_error(rc, err, "expected (examples, 1, 8, 8) or a table (examples, 64)")


def test_bad_batch_indices_are_listed_flat():
    import flowforge as ff

    flow = ff.models.RealNVP(features=2, layers=1, hidden=(4,))
    x = torch.zeros(6, 2)
    x[[1, 4], 0] = float("nan")
    with pytest.raises(ValueError, match=r"first bad batch indices: \[1, 4\]\)"):
        flow.log_prob(x)


def test_exponent_notation_is_a_number_everywhere(tmp_path, capsys):
    from flowforge.workbench.config import read_config

    (tmp_path / "c.yaml").write_text("model:\n  name: ffjord\n  rtol: 1e-3\n  atol: 1E-3\n")
    assert read_config(tmp_path / "c.yaml")["model"] == {
        "name": "ffjord",
        "rtol": 1e-3,
        "atol": 1e-3,
    }
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "moons", "--out", out,
                     "--objective", "flow-matching", "--limit", 64, "--epochs", 1, "--quiet",
                     "--model-kwargs", '{"hidden": [4], "rtol": 1e-3}', "--set", "model.atol=1e-3",
                     "--no-progress")  # fmt: skip
    assert rc == 0, err
    kw = json.loads((out / "config.json").read_text())["resolved"]["builder_kwargs"]
    assert kw["rtol"] == 1e-3 and kw["atol"] == 1e-3


def test_flow_matching_options_that_cannot_train_are_refused_up_front(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "moons", "--out", out,
                     "--objective", "flow-matching", "--set", "train.fm_time_power=1e308",
                     "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "train.fm_time_power", "(0, 10]")
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "digits", "--out", out,
                     "--objective", "flow-matching-ot", "--conditional", "label", "--limit", 64,
                     "--model-kwargs", '{"hidden": [8]}', "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "--objective flow-matching or flow-matching-vp")
    assert not out.exists()  # the run's config was written, then taken back


def test_an_ode_budget_is_an_error_not_an_internal_one(tmp_path, capsys, monkeypatch):
    from flowforge.transforms.continuous import ODEStepBudgetError
    from flowforge.workbench import evaluate

    run = tiny_moons_run(capsys, tmp_path / "moons")

    def over_budget(*args, **kwargs):
        raise ODEStepBudgetError("CNF solve stopped: it exceeded its step budget (max_steps=2)")

    monkeypatch.setattr(evaluate, "evaluate_run", over_budget)
    rc, _, err = cli(capsys, "eval", run)
    one_line_error(rc, err, "step budget")
    assert "internal error" not in err


def test_report_options_and_damaged_metrics(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    for bad in ("abc", "nan", "-1", "0.5,x"):
        rc, _, err = cli(capsys, "report", run, "--temperatures", bad)
        one_line_error(rc, err, "--temperatures: expected comma-separated finite numbers >= 0")
    rc, _, err = cli(capsys, "report", run, "--temperatures", ",".join(["1"] * 9))
    one_line_error(rc, err, "--temperatures: at most 8 (one sample grid each), got 9")
    from flowforge.workbench.errors import WorkbenchError
    from flowforge.workbench.report import write_report

    with pytest.raises(WorkbenchError, match="temperatures: expected 1 to 8 finite numbers"):
        write_report(run, temperatures=(1.0, math.inf))
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:40] + "\ngarbage {{\n")
    rc, out, err = cli(capsys, "report", run)
    assert rc == 0, err
    html = (run / "report.html").read_text()
    assert "metrics.jsonl is damaged" in html and "no epoch records" in html


def test_a_run_stopped_before_its_first_epoch_says_so(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    (run / "model.ff").unlink()
    metrics = run / "metrics.jsonl"  # no epoch ended: no epoch record
    keep = [ln for ln in metrics.read_text().splitlines() if '"type": "epoch"' not in ln]
    metrics.write_text("".join(ln + "\n" for ln in keep))
    for args in (("eval", run), ("sample", run, "-n", 2, "--out", tmp_path / "s.npy")):
        rc, _, err = cli(capsys, *args)
        one_line_error(rc, err, "has no model yet", "--resume")


def test_a_finished_run_that_lost_its_model_says_so_and_is_not_resumed(tmp_path, capsys):
    # the best model lives only in model.ff (the checkpoint holds the last weights): eval must
    # not send the user to --resume, and --resume must not end by naming a file it never wrote
    run = tiny_moons_run(capsys, tmp_path / "moons")
    (run / "model.ff").unlink()
    rc, _, err = cli(capsys, "eval", run)
    one_line_error(rc, err, "has no model.ff, although its training finished epochs", "--overwrite")
    rc, out, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress")
    one_line_error(rc, err, "its best model (model.ff, epoch 1) is missing", "--overwrite")
    assert "finished" not in out and not (run / "model.ff").exists()


def test_actnorm_refuses_to_initialise_from_one_value_per_channel():
    import flowforge as ff

    layer = ff.transforms.ActNorm(3)
    for n in (0, 1):
        with pytest.raises(ValueError, match="needs at least 2 values per channel"):
            layer(torch.randn(n, 3))
        assert not bool(layer.initialized)
    z, _ = layer(torch.randn(8, 3))  # a real batch initialises it, as before
    assert bool(layer.initialized) and torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5)
    img = ff.transforms.ActNorm((2, 4, 4))  # one image has 16 values per channel: enough
    img(torch.randn(1, 2, 4, 4))
    assert bool(img.initialized)


# -- the library: bounds and edge cases of the newer families --------------------------------------


def test_an_infinite_tolerance_is_refused():
    import flowforge as ff
    from flowforge.transforms import EmergingConv2d, set_inverse

    flow = ff.models.TarFlow(features=4, blocks=1, width=8, heads=2)
    with pytest.raises(ValueError, match="finite tolerance tol > 0"):
        set_inverse(flow, "parallel", tol=float("inf"))
    with pytest.raises(ValueError, match="finite tol > 0"):
        EmergingConv2d((2, 3, 3)).set_solver("parallel", tol=float("inf"))


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), float("nan")])
def test_scale_bounds_must_be_finite_and_positive(bound):
    import flowforge as ff

    with pytest.raises(ValueError, match="bound"):
        ff.models.TarFlow(features=4, blocks=1, width=8, heads=2, scale_bound=bound)
    with pytest.raises(ValueError, match="bound"):
        ff.models.RealNVP(features=4, layers=1, hidden=(8,), scale_bound=bound)
    with pytest.raises(ValueError, match="bound"):
        ff.transforms.LogisticMixture(2, affine_bound=bound)


def test_a_nan_log_density_is_an_error_in_eval_mode():
    import flowforge as ff

    torch.manual_seed(0)
    flow = ff.models.TarFlow(features=4, blocks=2, width=8, heads=2).eval()
    x = torch.zeros(3, 4)
    x[1] = 1e20  # finite, but the attention overflows on it
    with pytest.raises(ff.core.NaNLogProb, match=r"NaN for batch rows \[1\]"):
        flow.log_prob(x)
    assert torch.isfinite(flow.log_prob(x[[0, 2]])).all()
    flow.validate_args = False  # checks off (as on an accelerator): the raw numbers
    assert torch.isnan(flow.log_prob(x)[1])


@pytest.mark.parametrize("name", ["tarflow", "maf", "torusflow", "sphereflow", "idf"])
def test_empty_batches_score_and_sample_nothing(name):
    import flowforge as ff

    kw = {"sphereflow": {}, "idf": {"features": 4, "levels": 5}}.get(name, {"features": 4})
    flow = ff.models.build(name, **kw)
    d = 3 if name == "sphereflow" else 4
    assert flow.log_prob(torch.zeros(0, d)).shape == (0,)
    assert flow.sample(0).shape == (0, d)
    # in training mode the loss of an empty batch backpropagates (zero gradients), as in
    # torch.distributions, instead of autograd's "does not require grad"
    flow.train()
    x = torch.zeros(0, d, requires_grad=True)
    lp = flow.log_prob(x)
    assert lp.dtype == flow.dtype and lp.shape == (0,)
    lp.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, d)
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)
    with torch.no_grad():
        assert flow.log_prob(torch.zeros(0, d)).grad_fn is None


def test_integer_flows_check_the_values_as_given():
    import flowforge as ff

    idf = ff.models.IDF(features=4, levels=5, layers=1, hidden=(8,))
    x = torch.tensor([[2 + 1e-9, 1, 0, 4]], dtype=torch.float64)  # float32 would make it 2
    with pytest.raises(ValueError, match="non-integer"):
        idf.log_prob(x)
    x = torch.randint(0, 5, (8, 4))
    exact = idf.bits_per_dim(x).item()
    assert ff.bits_per_dim(idf, x) == pytest.approx(exact, rel=1e-6)
    assert ff.bits_per_dim(idf, x, levels=5) == pytest.approx(exact, rel=1e-6)
    with pytest.raises(ValueError, match="models 5 levels, but levels=6"):
        ff.bits_per_dim(idf, x, levels=6)
    flow = ff.models.RealNVP(features=4, layers=1, hidden=(8,))
    assert math.isfinite(ff.bits_per_dim(flow, x, levels=5))  # integer tensors dequantize
    cond = ff.models.IDF(features=4, levels=5, layers=1, hidden=(8,), context_features=2)
    with pytest.raises(ValueError, match="codes unconditional integer flows"):
        ff.codec.encode(cond.eval(), x)


def test_mflows_take_inputs_as_flows_do():
    from flowforge.models import mflow

    m = mflow(features=4, manifold_dim=2, outer_layers=1, inner_layers=1, hidden=(8,)).eval()
    ref = m.log_prob(torch.zeros(2, 4))
    assert torch.equal(m.log_prob(torch.zeros(2, 4, dtype=torch.float64)), ref)
    assert torch.equal(m.log_prob(torch.zeros(2, 4, dtype=torch.long)), ref)
    with pytest.raises(ValueError, match="unconditional"):
        m.log_prob(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        m.reconstruction_error(torch.tensor([[float("nan"), 0.0, 0.0, 0.0]]))


def test_overwrite_knows_every_figure_the_report_writes():
    import re
    from pathlib import Path

    from flowforge.workbench import report
    from flowforge.workbench.runs import is_report_figure

    names = set(re.findall(r'figdir / "([a-z_]+\.png)"', Path(report.__file__).read_text()))
    assert names and all(is_report_figure(n) for n in names), names
    assert is_report_figure("classes_T0.7.png") and is_report_figure("classes_T1.png")
    for mine in ("latent_notes.txt", "table_notes.txt", "curves.png.bak", "samples_old.png"):
        assert not is_report_figure(mine)  # a user's files there are not ours


def _csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows))
    return path


def test_tables_that_no_density_fits_or_that_mislead(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).round(6)
    const = _csv(tmp_path / "const.csv", ["a", "b", "c"], np.c_[x[:, :2], np.full(200, 3.5)])
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", const, "--out",
                     tmp_path / "r1", "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "'c'", "same value in every training row")
    assert not (tmp_path / "r1").exists()
    y = x.copy()
    y[5, 1] = 1e9
    rows = np.r_[y, y]  # every row twice: val and test rows repeat training rows
    data = _csv(tmp_path / "dup.csv", ["a", "b", "c"], rows)
    rc, out, err = cli(capsys, "train", "--model", "realnvp", "--data", data, "--out",
                       tmp_path / "r2", "--epochs", 1, "--no-progress", "--quiet",
                       "--model-kwargs", '{"layers": 1, "hidden": [4]}')  # fmt: skip
    assert rc == 0, err  # (--quiet silences the epoch lines, not what the data checks found)
    far = "more than 100 robust standard deviations from the median (column 'b': 2 rows)"
    assert far in out + err
    assert "also appear in the training split" in out + err
    # kept with the run, and repeated where its numbers are read
    stored = json.loads((tmp_path / "r2" / "config.json").read_text())["resolved"]
    assert any("also appear in the training split" in w for w in stored["data_warnings"])
    rc, out, err = cli(capsys, "eval", tmp_path / "r2")
    assert rc == 0 and "warning: the training data: " in err and "training split" in err
    assert cli(capsys, "report", tmp_path / "r2")[0] == 0
    assert "warning: the training data" in (tmp_path / "r2" / "report.html").read_text()


def _swapped_header_is_refused(tmp_path, capsys, *extra):
    """Train on a 3-column CSV, then eval on the same numbers with the header reversed."""
    x = np.random.default_rng(0).normal(size=(100, 3))
    data = _csv(tmp_path / "t.csv", ["a", "b", "c"], x)
    rc, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "r", "--epochs", 1,
                     "--quiet", "--model-kwargs", '{"layers": 1, "hidden": [4]}',
                     *extra)  # fmt: skip
    assert rc == 0, err
    assert cli(capsys, "eval", tmp_path / "r", "--data", data)[0] == 0
    swapped = _csv(tmp_path / "s.csv", ["c", "b", "a"], x[:, ::-1])
    rc, _, err = cli(capsys, "eval", tmp_path / "r", "--data", swapped)
    one_line_error(rc, err, "its column 1 is 'c' where this run's is 'a'")


def test_eval_refuses_a_table_whose_columns_are_not_the_runs(tmp_path, capsys):
    _swapped_header_is_refused(tmp_path, capsys, "--model", "realnvp")
    semi = tmp_path / "semi.csv"
    semi.write_text("a;b;c\n1.0;2.0;3.0\n4.0;5.0;6.0\n")
    rc, _, err = cli(capsys, "eval", tmp_path / "r", "--data", semi)
    one_line_error(rc, err, "separated by semicolons")


def test_target_columns_by_name(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = _csv(tmp_path / "t.csv", ["a", "b", "target"], rng.normal(size=(100, 3)))
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--target-columns",
                     "target", "--out", tmp_path / "r", "--epochs", 1, "--quiet",
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}')  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["resolved"]["context"]["target_columns"] == [2]
    rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", data, "--target-columns",
                     "nope", "--out", tmp_path / "r2", "--epochs", 1, "--quiet")  # fmt: skip
    one_line_error(rc, err, "neither a column index nor a column name", "'target'")


def test_eval_sets_a_table_model_beside_a_gaussian(tmp_path, capsys):
    from scipy.stats import multivariate_normal

    from flowforge.workbench.evaluate import gaussian_baseline

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3)) @ np.array([[2.0, 0, 0], [1.0, 0.5, 0], [0, 0, 100.0]])
    mle = multivariate_normal(a.mean(0), np.cov(a.T, bias=True)).logpdf(a[:500]).mean()
    assert gaussian_baseline(a, a[:500]) == pytest.approx(-mle, abs=0.01)  # little shrinkage
    data = _csv(tmp_path / "t.csv", ["a", "b", "c"], a[:300])
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", data, "--out",
                     tmp_path / "r", "--epochs", 1, "--quiet",
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}')  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", tmp_path / "r", "--json")
    res = json.loads(out)
    assert rc == 0 and math.isfinite(res["gaussian_nll"])
    rc, out, err = cli(capsys, "eval", tmp_path / "r")
    assert "a Gaussian fitted to the training split: NLL" in out
    # a warning only when the model is worse by more than twice the paired standard error
    d, se = res["nll"] - res["gaussian_nll"], res["gaussian_difference_se"]
    assert 0 < se < math.inf and f"{abs(d):.4f} +- {se:.4f} nats/example" in out
    assert ("warning: the model scores worse" in out) == (d > 2 * se)


def test_a_difference_within_the_noise_is_neither_warned_about_nor_claimed():
    from flowforge.workbench.evaluate import against_reference

    res = {"nll": 2.007, "gaussian_nll": 2.0, "gaussian_difference_se": 0.011}
    words, worse = against_reference(res, "gaussian_nll")
    assert not worse and "0.0070 +- 0.0110 nats/example worse (within the noise" in words
    res = {"nll": 2.1, "gaussian_nll": 2.0, "gaussian_difference_se": 0.011}
    assert against_reference(res, "gaussian_nll")[1]  # 9 standard errors: a warning
    res = {"nll": 1.994, "gaussian_nll": 2.0, "gaussian_difference_se": 0.058}
    assert "better (within the noise" in against_reference(res, "gaussian_nll")[0]


def test_the_report_sets_a_table_model_beside_the_gaussian(tmp_path, capsys):
    rng = np.random.default_rng(1)
    data = _csv(tmp_path / "t.csv", ["a", "b"], rng.normal(size=(200, 2)))
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", data, "--out",
                     tmp_path / "r", "--epochs", 1, "--quiet",
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}')  # fmt: skip
    assert rc == 0, err
    assert cli(capsys, "report", tmp_path / "r")[0] == 0
    html = (tmp_path / "r" / "report.html").read_text()
    assert "test NLL of a Gaussian fitted to the training split" in html


def test_second_signals_nan_rows_solvers_and_chunks(tmp_path, monkeypatch):
    import signal as sig

    import flowforge as ff
    from flowforge.transforms.continuous import exact_scoring
    from flowforge.workbench.trainer import _ForcedStop, _Signals

    # with several processes a second signal waits (a rank stopping alone would hang the rest)
    for force, raises in ((True, True), (False, False)):
        s = _Signals(force=force)
        s._handler(sig.SIGINT, None)
        if raises:
            with pytest.raises(_ForcedStop):
                s._handler(sig.SIGINT, None)
        else:
            s._handler(sig.SIGINT, None)
            assert s.pending
    # NaN rows are named by their index in the data, not in the batch
    torch.manual_seed(0)
    flow = ff.models.TarFlow(features=4, blocks=2, width=8, heads=2).eval()
    x = torch.zeros(2200, 4)
    x[2100] = 1e20
    # (a float32 overflow is scored again in float64, as flow.double() scores it)
    lp = ff.objectives.log_likelihoods(flow, x, batch_size=1024)
    assert torch.isfinite(lp).all() and lp[2100] < lp[0]
    import flowforge.objectives as objectives

    with pytest.MonkeyPatch.context() as mp:  # where float64 overflows too: named by index
        mp.setattr(objectives, "_in_float64", lambda *a, **k: None)
        with pytest.raises(ValueError, match=r"indices \[2100\]"):
            ff.objectives.log_likelihoods(flow, x, batch_size=1024)
    # adaptive solvers keep their method under exact scoring; fixed grids get dopri5
    cnf = ff.models.build("cnf", features=2, hidden=(4,), method="bosh3")
    grid = ff.models.build("cnf", features=2, hidden=(4,), method="rk4", step_size=0.25)
    with exact_scoring(cnf), exact_scoring(grid):
        methods = [m.method for f in (cnf, grid) for m in f.modules() if hasattr(m, "method")]
    assert methods == ["bosh3", "dopri5"]
    assert ff.codec.default_chunk((3, 128, 128)) == 21 and ff.codec.default_chunk((64,)) == 64


def test_a_signal_at_the_last_epochs_end_leaves_the_run_finished(tmp_path, monkeypatch):
    import os
    import signal as sig

    from flowforge.workbench import trainer as trainer_module
    from flowforge.workbench.runner import train

    real = trainer_module.Trainer._end_epoch

    def end(self, losses, t0):
        if self.epoch == self.cfg["epochs"] - 1:
            os.kill(os.getpid(), sig.SIGINT)  # during the last validation
        return real(self, losses, t0)

    monkeypatch.setattr(trainer_module.Trainer, "_end_epoch", end)
    cfg = {"model": {"name": "realnvp", "layers": 1, "hidden": [4]}, "data": "moons",
           "train": {"epochs": 2, "batch_size": 500}}  # fmt: skip
    result = train(cfg, tmp_path / "r", progress=False, echo=False)
    assert result["status"] == "finished"


def test_conditional_eval_data_checks_the_columns_too(tmp_path, capsys):
    _swapped_header_is_refused(tmp_path, capsys, "--model", "maf", "--target-columns", "a,b")


def test_columns_that_are_a_linear_function_of_each_other_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b, e = rng.normal(size=(3, 400))
    data = _csv(tmp_path / "lin.csv", ["a", "b", "c", "e"], np.c_[a, b, a + 2 * b, e])
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", data, "--out",
                     tmp_path / "r", "--epochs", 1, "--no-progress")  # fmt: skip
    one_line_error(rc, err, "columns 'a', 'b', 'c' are a linear function of each other")
    assert not (tmp_path / "r").exists()
    near = _csv(tmp_path / "near.csv", ["a", "b", "c", "e"],
                np.c_[a, b, a + 2 * b + 0.01 * e, rng.normal(size=400)])  # fmt: skip
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", near, "--out",
                     tmp_path / "r2", "--epochs", 1, "--no-progress", "--quiet",
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}')  # fmt: skip
    assert rc == 0, err  # strongly correlated, not degenerate: trained


def test_a_constant_column_is_refused_for_training_only(tmp_path):
    from flowforge.workbench.data import constant_columns, load_dataset

    rng = np.random.default_rng(0)
    data = _csv(tmp_path / "c.csv", ["a", "k"], np.c_[rng.normal(size=50), np.full(50, 2.0)])
    ds = load_dataset(str(data))  # a run's data reloaded for eval or report: still readable
    assert "'k' hold the same value" in constant_columns(ds)


def test_a_column_finer_than_float32_resolves_is_refused_with_the_remedy(tmp_path, capsys):
    from flowforge.workbench.data import load_dataset

    rng = np.random.default_rng(0)
    big = np.c_[1e6 + 0.01 * rng.normal(size=300), rng.normal(size=300)]  # 1e6 +- 0.01
    path = _csv(tmp_path / "big.csv", ["metres", "b"], big)
    with pytest.raises(DataError, match=r"column 'metres' varies by 0.0\d+ around 1e\+06"):
        load_dataset(str(path))
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", path, "--out",
                     tmp_path / "r", "--epochs", 1, "--no-progress")  # fmt: skip
    one_line_error(rc, err, "subtract an offset from the column")
    assert not (tmp_path / "r").exists()
    big[:, 0] -= 1e6  # the remedy: the same variation, near zero
    assert load_dataset(str(_csv(tmp_path / "ok.csv", ["metres", "b"], big))).train.shape[1] == 2
    wide = np.c_[1e6 + 10 * rng.normal(size=300), rng.normal(size=300)]  # float32 holds this
    assert load_dataset(str(_csv(tmp_path / "wide.csv", ["a", "b"], wide))).train.shape[1] == 2


def test_levels_with_standardize_is_refused_before_training(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = _csv(tmp_path / "ints.csv", ["a", "b"], rng.integers(0, 8, size=(100, 2)))
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", path, "--out",
                     tmp_path / "r", "--set", "data.levels=8", "--set", "data.standardize=true",
                     "--epochs", 1, "--no-progress")  # fmt: skip
    one_line_error(rc, err, "data.standardize applies to continuous tables")
    assert not (tmp_path / "r").exists()


def test_a_run_still_improving_at_its_last_epoch_says_so(tmp_path, capsys):
    rc, out, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out",
                       tmp_path / "r", "--epochs", 2, "--no-progress", "--limit", 256,
                       "--model-kwargs", '{"layers": 1, "hidden": [8]}')  # fmt: skip
    assert rc == 0, err
    last = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "epoch" and last["best"]  # (seed 0: the second epoch improves)
    assert "note: the best epoch is the last" in out


def test_eval_sets_a_discrete_model_beside_a_per_position_histogram(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "digits", "--layout",
                     "vector", "--out", tmp_path / "r", "--epochs", 1, "--quiet",
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}')  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", tmp_path / "r", "--split", "test", "--json")
    res = json.loads(out)
    assert res["histogram_nll"] == pytest.approx(106.3652, abs=1e-3)  # the README's 106.4
    assert res["histogram_bits_per_dim"] == pytest.approx(2.3977, abs=1e-4)
    rc, out, err = cli(capsys, "eval", tmp_path / "r", "--split", "test")
    assert "a histogram per position of the training split: NLL 106.3652 (2.3977 bits/dim)" in out
    assert ("worse than that histogram" in err) == (res["nll"] > res["histogram_nll"])
    assert ("the reference is the better model" in err) == (res["nll"] > res["histogram_nll"])
    assert cli(capsys, "report", tmp_path / "r")[0] == 0
    assert "NLL of a histogram per position" in (tmp_path / "r" / "report.html").read_text()


def test_a_run_whose_best_epoch_is_its_first_says_so(capsys):
    from flowforge.workbench.cli import _finish_train

    result = {"status": "early-stopped", "best_val": 2.5, "best_epoch": 1, "epochs": 21,
              "out": "runs/x", "objective": "nll"}  # fmt: skip
    assert _finish_train(result) == 0
    out = capsys.readouterr().out
    assert "note: the best epoch is the first" in out and "one epoch of training" in out
    _finish_train({**result, "best_epoch": 5})
    assert "note:" not in capsys.readouterr().out


def test_near_duplicates_across_the_splits_are_warned_about(tmp_path):
    from flowforge.workbench.data import load_dataset

    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 3))
    copies = np.r_[a, a + 1e-4 * rng.normal(size=a.shape)]  # every row twice, a little noise
    ds = load_dataset(str(_csv(tmp_path / "jitter.csv", ["a", "b", "c"], copies)))
    assert any("lie almost on a training row" in w for w in ds.info.get("warnings", []))
    fresh = rng.normal(size=(600, 3))  # the same distribution, no copies: no warning
    ds = load_dataset(str(_csv(tmp_path / "fresh.csv", ["a", "b", "c"], fresh)))
    assert not ds.info.get("warnings")
    grid = np.round(rng.normal(size=(600, 3)) * 2) / 2  # quantised: exact repeats, not near ones
    ds = load_dataset(str(_csv(tmp_path / "grid.csv", ["a", "b", "c"], grid)))
    assert not any("almost" in w for w in ds.info.get("warnings", []))


def test_one_dimensional_data_gives_no_false_near_duplicate_alarm(tmp_path):
    from flowforge.workbench.data import load_dataset

    for seed in range(6):  # a hundredth of the usual distance catches 1 honest 1-D row in 20
        x = np.random.default_rng(seed).normal(size=(800, 1))
        ds = load_dataset(str(_csv(tmp_path / f"one{seed}.csv", ["a"], x)))
        assert not any("almost" in w for w in ds.info.get("warnings", [])), seed
    a = np.random.default_rng(0).normal(size=(400, 1))
    copies = np.r_[a, a + 1e-9 * np.random.default_rng(1).normal(size=a.shape)]
    ds = load_dataset(str(_csv(tmp_path / "jitter1.csv", ["a"], copies)))
    assert any("lie almost on a training row" in w for w in ds.info.get("warnings", []))


def test_count_columns_give_no_false_near_duplicate_alarm(tmp_path):
    """Simulations with a count among their columns (a Poisson summary as the context): rows
    share the count by design, so the near-copy distance leaves whole-number columns out (the
    warning fired in 8 of 10 such files); copies in the continuous column are still caught."""
    from flowforge.workbench.data import load_dataset

    for seed in range(4):
        rng = np.random.default_rng(seed)
        lam = rng.gamma(2.0, 1.0, 6000)
        table = np.c_[lam, rng.poisson(10 * lam)]
        ds = load_dataset(str(_csv(tmp_path / f"pois{seed}.csv", ["lam", "S"], table)))
        assert not any("almost" in w for w in ds.info.get("warnings", [])), seed
    rng = np.random.default_rng(0)
    lam = rng.gamma(2.0, 1.0, 400)
    a = np.c_[lam, rng.poisson(10 * lam)]
    copies = np.r_[a, a + [1e-9, 0] * rng.normal(size=a.shape)]
    ds = load_dataset(str(_csv(tmp_path / "jitter.csv", ["lam", "S"], copies)))
    assert any("lie almost on a training row" in w for w in ds.info.get("warnings", []))
    counts = rng.poisson(3, size=(600, 2)).astype(float)  # whole numbers only: nothing to check
    ds = load_dataset(str(_csv(tmp_path / "counts.csv", ["a", "b"], counts)))
    assert not any("almost" in w for w in ds.info.get("warnings", []))


def test_a_flag_and_a_set_that_disagree_are_refused(tmp_path, capsys):
    out = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "moons", "--objective",
                     "flow-matching", "--set", "train.objective=nll", "--out", out)  # fmt: skip
    one_line_error(rc, err, "--set train.objective=nll contradicts --objective")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--batch-size",
                     "64", "--set", "train.batch_size=32", "--out", out)  # fmt: skip
    one_line_error(rc, err, "contradicts --batch-size")
    # every flag, and a --set that replaces or empties its section (they won quietly)
    base = ["train", "--model", "realnvp", "--data", "moons", "--out", out]
    for extra, needle in (
        (["--seed", "5", "--set", "seed=7"], "contradicts --seed (seed = 5)"),
        (["--limit", "50", "--set", "data.limit=20"], "contradicts --limit"),
        (["--set", "model=nice"], "contradicts --model (model.name = 'realnvp')"),
        (["--epochs", "2", "--set", "train={epochs: 1}"], "contradicts --epochs"),
        (["--epochs", "2", "--set", "train=null"], "contradicts --epochs"),
        (["--model-kwargs", '{"name": "nice"}'], "--model-kwargs names 'nice', and --model"),
        (
            ["--model-kwargs", '{"layers": 2}', "--set", "model.layers=3"],
            "contradicts --model-kwargs",
        ),
        # the nested keys a config may give them under (they won over the flag quietly)
        (["--limit", "50", "--set", "data.options.limit=20"], "contradicts --limit"),
        (
            ["--model-kwargs", '{"layers": 2}', "--set", "model.kwargs.layers=3"],
            "contradicts --model-kwargs",
        ),
    ):
        one_line_error(*cli(capsys, *base, *extra)[::2], needle)
    assert not out.exists()
    # the same value, as a list or a comma-separated string: no contradiction
    from flowforge.workbench.cli import _train_overrides, make_parser
    from flowforge.workbench.errors import WorkbenchError

    for cols, same in (("[a, b]", True), ("[b, a]", False), ("a", False), ("'a,b'", True)):
        argv = ["train", "--data", "t.csv", "--target-columns", "a,b",
                "--set", f"data.target_columns={cols}", "--out", "o"]  # fmt: skip
        args = make_parser().parse_args(argv)
        if same:
            assert _train_overrides(args)["data"]["target_columns"] in ("a,b", ["a", "b"])
        else:
            with pytest.raises(WorkbenchError, match="contradicts --target-columns"):
                _train_overrides(args)
    # a --set of the model's name keeps the --model-kwargs given (no flag names the model)
    rc, _, err = cli(capsys, "train", "--data", "moons", "--limit", "64", "--epochs", "1",
                     "--model-kwargs", '{"layers": 2, "hidden": [4]}', "--set", "model=nice",
                     "--out", out, "--quiet", "--no-progress")  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["name"] == "nice" and cfg["model"]["kwargs"]["layers"] == 2


def test_flow_matching_options_under_another_objective_say_where_they_came_from(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--config", "configs/fm-moons.yaml", "--objective", "nll",
                     "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "train.fm_time_power = 2", "objective is nll",
                   "--set train.fm_time_power=1")  # fmt: skip


def test_a_first_batch_too_small_to_initialise_from_names_the_option(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "moons", "--objective",
                     "flow-matching", "--batch-size", 1, "--limit", 32, "--epochs", 1,
                     "--out", tmp_path / "b1", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "first 1 training example(s)", "--set train.init_batch=256")


def test_ema_advice_for_a_run_of_few_steps_is_a_possible_setting(capsys):
    import flowforge as ff
    from flowforge.workbench import Trainer, TrainingWarning

    x = torch.randn(64, 2)
    for steps, advice in ((2, "use more epochs, or train.ema: 0"), (32, "(about 0.688)")):
        flow = ff.models.RealNVP(features=2, layers=1, hidden=(4,))
        cfg = {"epochs": steps // 2, "batch_size": 32, "ema": 0.999}
        with pytest.warns(TrainingWarning) as said:
            Trainer(flow, x, x, train=cfg).fit()
        err = " ".join(str(w.message) for w in said)
        assert advice in err and "about -" not in err


def test_a_manifold_model_takes_a_users_file_as_it_is(tmp_path, capsys):
    # unit vectors and angles in a file: not standardised by default (a standardised copy is
    # off the sphere or the torus), and the sphere's per-area NLL is not compared with a
    # Gaussian's per-volume one
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 3))
    np.save(tmp_path / "sph.npy", (v / np.linalg.norm(v, axis=1, keepdims=True)).astype("f4"))
    np.save(tmp_path / "ang.npy", rng.uniform(-np.pi, np.pi, size=(300, 2)).astype("f4"))
    small = ["--epochs", 1, "--model-kwargs", '{"layers": 1, "hidden": [8]}', "--no-progress"]
    for model, data in (("sphereflow", "sph.npy"), ("torusflow", "ang.npy")):
        run = tmp_path / model
        rc, _, err = cli(capsys, "train", "--model", model, "--data", tmp_path / data,
                         "--out", run, *small)  # fmt: skip
        assert rc == 0, err
        assert json.loads((run / "config.json").read_text())["data"]["options"] == {
            "standardize": False
        }
        rc, out, err = cli(capsys, "eval", run)
        assert rc == 0, err
        assert "a Gaussian fitted" not in out  # (on the torus: von Mises, as a density there)
        assert ("a von Mises distribution fitted" in out) == (model == "torusflow")


def test_a_flag_a_model_does_not_take_says_so(tmp_path, capsys):
    for model, data, flag, value, why in (
        ("idf", "digits", "--dequantization", "variational", "it models integers exactly"),
        ("torusflow", "torus-vonmises", "--base", "mixture", "fixed by the space it models"),
    ):
        rc, _, err = cli(capsys, "train", "--model", model, "--data", data, flag, value,
                         "--epochs", 1, "--limit", 50, "--out", tmp_path / model)  # fmt: skip
        one_line_error(rc, err, f"model '{model}' takes no {flag[2:]} option", why)
        assert not (tmp_path / model).exists()


def test_a_run_whose_config_and_model_disagree_on_levels_is_refused(tmp_path, capsys):
    """A config.json that says the data are discrete while model.ff models continuous data
    (or other levels) would print bits/dim of nothing: refused in one line, by every
    command that loads the model."""
    run = tiny_moons_run(capsys, tmp_path / "moons")
    cfg = json.loads((run / "config.json").read_text())
    cfg["resolved"]["levels"] = 17
    (run / "config.json").write_text(json.dumps(cfg))
    for args in (("eval", run), ("sample", run, "-n", 2, "--out", tmp_path / "s.npy")):
        rc, _, err = cli(capsys, *args)
        one_line_error(rc, err, "config.json and model.ff disagree", "data of 17 levels",
                       "continuous data")  # fmt: skip
    assert not (tmp_path / "s.npy").exists()


def test_seeds_outside_their_range_are_refused_by_every_command(tmp_path, capsys):
    run = tiny_moons_run(capsys, tmp_path / "moons")
    for seed in ("-1", "4294967296", "99999999999999999999999", "abc"):
        for args in (("eval", run), ("sample", run, "-n", 2, "--out", tmp_path / "s.npy"),
                     ("train", "--data", "moons", "--out", tmp_path / "t")):  # fmt: skip
            with pytest.raises(SystemExit) as stop:  # argparse's usage line and its error
                cli(capsys, *args, "--seed", seed)
            err = capsys.readouterr().err
            assert stop.value.code == 2 and "--seed: expected an integer in [0, 4294967295]" in err
    rc, _, err = cli(capsys, "train", "--data", "moons", "--out", tmp_path / "t", "--set",
                     "seed=4294967296")  # fmt: skip
    one_line_error(rc, err, "seed must be an integer in [0, 4294967295]")
    assert not (tmp_path / "t").exists() and not (tmp_path / "s.npy").exists()


def test_eval_says_a_dequantized_nll_is_a_bound_with_k(tmp_path, capsys):
    run = tmp_path / "digits"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", "digits", "--limit", 200,
                     "--layout", "vector", "--epochs", 1, "--model-kwargs",
                     '{"layers": 1, "hidden": [8]}', "--no-progress", "--quiet",
                     "--out", run)  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", run)
    assert rc == 0, err
    assert "examples, a dequantization bound with K = 1)" in out.splitlines()[0]
    rc, out, err = cli(capsys, "eval", run, "--samples", 3)
    assert "examples, the mean of 3 dequantization bounds with K = 1)" in out
    rc, out, err = cli(capsys, "eval", run, "--samples", 3, "--iw")
    assert "examples, the importance-weighted bound with K = 3)" in out


def test_options_a_run_cannot_use_are_named(tmp_path, capsys):
    """A context width for data without a context, and the parallel inverse's --tol for a model
    without autoregressive layers, are refused in one line naming the option."""
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", "moons", "--set",
                     "model.context_features=2", "--out", tmp_path / "c")  # fmt: skip
    one_line_error(rc, err, "context_features=2 comes from the data", "--conditional label")
    run = tiny_moons_run(capsys, tmp_path / "moons")  # a RealNVP: couplings, no autoregression
    rc, _, err = cli(capsys, "sample", run, "-n", 2, "--out", tmp_path / "s.npy", "--tol", 0.5)
    one_line_error(rc, err, "--tol sets how autoregressive layers", "this run's model has none")
    assert not (tmp_path / "s.npy").exists()


def test_a_users_files_in_the_report_folder_are_kept(tmp_path, capsys):
    """Report figures are removed by their exact names: notes whose names merely start like a
    figure's ("latent_notes.txt") were deleted by the next report."""
    run = tiny_moons_run(capsys, tmp_path / "moons")
    assert cli(capsys, "report", run)[0] == 0
    for name in ("latent_notes.txt", "table_notes.txt", "curves_old.png"):
        (run / "report" / name).write_text("mine")
    assert cli(capsys, "report", run)[0] == 0
    assert (run / "report" / "curves.png").is_file()
    for name in ("latent_notes.txt", "table_notes.txt", "curves_old.png"):
        assert (run / "report" / name).read_text() == "mine"


def test_a_folder_named_like_a_built_in_dataset_is_not_silently_replaced(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()  # the user's own "digits"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", "digits", "--out", "r")
    one_line_error(rc, err, "names a built-in dataset", "give ./digits for yours")
    assert not (tmp_path / "r").exists()


def test_data_options_and_unreadable_files_are_one_line_errors(tmp_path, capsys):
    """Data options are checked for type and range (a string fraction was an internal error, a
    negative one and shuffle: "no" were taken); a CSV field beyond the csv module's limit and
    an .npz member that is not an array were internal errors."""
    import zipfile

    data = tmp_path / "t.csv"
    np.savetxt(data, np.random.default_rng(0).normal(size=(40, 2)), delimiter=",")
    for kw, needle in (
        ('{"val_fraction": "abc"}', "val_fraction must be a number in [0, 1), got 'abc'"),
        ('{"val_fraction": -0.1}', "val_fraction must be a number in [0, 1), got -0.1"),
        ('{"shuffle": "no"}', "shuffle must be true or false, got 'no'"),
        ('{"val_fraction": 0.6, "test_fraction": 0.5}', "must be below 1"),
    ):
        rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--data-kwargs", kw,
                         "--out", tmp_path / "r")  # fmt: skip
        one_line_error(rc, err, needle)
    (tmp_path / "big.csv").write_text("a,b\n" + "x" * 200_000 + ",1\n")
    with zipfile.ZipFile(tmp_path / "m.npz", "w") as z:
        z.writestr("x", b"hello")
    import io as _io

    buf = _io.BytesIO()  # a bzip2 member declaring 400 MB in a few hundred bytes: not read
    np.save(buf, np.zeros((12_500_000, 4)))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", compression=zipfile.ZIP_BZIP2) as z:
        z.writestr("x.npy", buf.getvalue())
    del buf
    for f, needle in (("big.csv", "cannot be read as a CSV table"),
                      ("m.npz", "m.npz['x'] is not a .npy array"),
                      ("bomb.npz", "declares 400,000,128 bytes from")):  # fmt: skip
        rc, _, err = cli(capsys, "train", "--model", "maf", "--data", tmp_path / f, "--out",
                         tmp_path / "r")  # fmt: skip
        one_line_error(rc, err, needle)
    assert not (tmp_path / "r").exists()


def test_an_npz_of_no_arrays_is_said_to_be_empty(tmp_path, capsys):
    # (an audit: np.savez(path) with nothing in it starts with the zip's end record, was read as
    # a .npy and gave "internal error: AttributeError: 'NpzFile' object has no attribute 'ndim'")
    np.savez(tmp_path / "e.npz")
    np.savez_compressed(tmp_path / "c.npz")
    for f in ("e.npz", "c.npz"):
        rc, _, err = cli(capsys, "train", "--model", "maf", "--data", tmp_path / f, "--out",
                         tmp_path / "r")  # fmt: skip
        one_line_error(rc, err, f"{f} is empty (no arrays)")
        with pytest.raises(DataError, match=r"is empty \(no arrays\)"):
            read_examples(str(tmp_path / f))
    (tmp_path / "e.npy").write_bytes((tmp_path / "e.npz").read_bytes())
    with pytest.raises(DataError, match=r"e.npy is not a readable .npy array"):
        read_examples(str(tmp_path / "e.npy"))


def test_small_columns_are_standardised_and_rounding_is_not():
    """A spread of 5e-9 in a column's own units is scaled like any other (the rule was an
    absolute 1e-8, and such a column's NLL came out 37 nats off); a column whose spread is
    float32 rounding around its mean is left unscaled."""
    from flowforge.workbench.data import _standardize_stats

    g = torch.Generator().manual_seed(0)
    small = torch.randn(300, generator=g) * 5e-9
    stamps = 1.7e9 + 1000 * torch.randn(300, generator=g, dtype=torch.float64)
    ulp = torch.tensor(0.01).nextafter(torch.tensor(1.0)) - 0.01  # one float32 step at 0.01
    rounding = 0.01 + torch.tensor([0.0, 1.0] * 150) * ulp  # spread 5e-10: rounding, unscaled
    t = torch.stack([small, stamps.float(), rounding], 1)
    scale = _standardize_stats(t)["scale"]
    assert 4e-9 < scale[0] < 6e-9 and 900 < scale[1] < 1100 and scale[2] == 1.0


def test_train_without_a_model_names_where_to_find_one(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--data", "moons", "--out", tmp_path / "run")
    one_line_error(rc, err, "no model given: use --model NAME", "flowforge list")
    assert not (tmp_path / "run").exists()


def test_a_preprocessing_option_for_discrete_data_is_refused_on_a_continuous_table(
    tmp_path, capsys
):
    """model.preprocess=logit on a continuous table was recorded and silently not applied."""
    rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", "moons", "--set",
                     "model.preprocess=logit", "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "model argument preprocess applies to discrete data")
    assert not (tmp_path / "r").exists()


def test_vectors_and_images_given_the_other_word_say_which_the_model_takes():
    with pytest.raises(TypeError, match=r"Glow takes images: shape=\(C, H, W\)"):
        ff.models.Glow(features=4)
    with pytest.raises(TypeError, match=r"MAF takes vectors: features=D"):
        ff.models.build("maf", shape=(1, 4, 4))


def test_a_mistyped_data_option_is_named_with_its_close_match_and_the_valid_ones(tmp_path, capsys):
    # it was "dataset 't.csv' takes no options ['integer']"
    data = tmp_path / "t.csv"
    np.savetxt(data, np.random.default_rng(0).integers(0, 3, size=(40, 2)), delimiter=",")
    for args, needles in (
        ((data, "--set", "data.integer=[1]"),
         ("unknown data option 'integer'; did you mean integers?", "dataset 't.csv' takes",
          "bounds, integers, whiten")),
        (("moons", "--set", "data.ntrain=100"),
         ("unknown data option 'ntrain'; did you mean n_train?", "takes n_train, n_val, n_test")),
        (("digits", "--set", "data.bits=3"),
         ("data option 'bits' does not apply to dataset 'digits'", "takes no options")),
        # another kind's option: said as such (it suggested n_test for integers)
        (("moons", "--set", "data.integers=[1]"),
         ("data option 'integers' does not apply to dataset 'moons'", "n_train, n_val, n_test")),
    ):  # fmt: skip
        rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", *args, "--out",
                         tmp_path / "r")  # fmt: skip
        one_line_error(rc, err, *needles)
        assert not (tmp_path / "r").exists()


def test_mistyped_train_keys_and_unbracketed_lists_get_suggestions(tmp_path, capsys):
    for setting, needles in (
        ("epochs=1", ("unknown config key 'epochs'; did you mean train.epochs?",)),
        ("learning_rate=0.1", ("unknown config key 'learning_rate'; did you mean train.lr?",)),
        ("train.learning_rate=0.1", ("unknown train option 'learning_rate'; did you mean lr?",)),
        ("train.epoc=3", ("unknown train option 'epoc'; did you mean epochs?",)),
        ("LR=0.1", ("unknown config key 'LR'; did you mean train.lr?",)),  # (upper case: none)
        ("train.Epoch=3", ("unknown train option 'Epoch'; did you mean epochs?",)),
        ("model.hidden=64,64", ("hidden='64,64' has the wrong type", "give a list, [64, 64]")),
        ("model.hidden=(64,64)", ("give a list, [64, 64]",)),
    ):
        rc, _, err = cli(capsys, "train", "--model", "nsf", "--data", "moons", "--set", setting,
                         "--out", tmp_path / "r")  # fmt: skip
        one_line_error(rc, err, *needles)
    config = tmp_path / "c.yaml"
    config.write_text("model: nsf\ndata: moons\ntrain:\n  learning_rate: 0.01\n")
    rc, _, err = cli(capsys, "train", "--config", config, "--out", tmp_path / "r")
    one_line_error(rc, err, "unknown train option 'learning_rate'; did you mean lr?")
    from flowforge.workbench.trainer import Trainer

    x = torch.randn(8, 2)
    with pytest.raises(WorkbenchError, match=r"\['learning_rate'\]; did you mean lr\?"):
        Trainer(ff.models.NSF(features=2), x, x, train={"learning_rate": 0.1})


def test_config_values_that_meant_a_default_or_another_type_are_refused(tmp_path, capsys):
    out = tmp_path / "r"
    base = ["train", "--model", "realnvp", "--data", "moons", "--out", out]
    for extra, needle in (
        (["--set", "seed=null"], "config 'seed' is empty"),
        # nothing after '=' (YAML's null: the default, or none, unasked): for every key
        (["--set", "seed="], "--set seed= has no value"),
        (["--set", "init_from= "], "--set init_from= has no value"),
        (["--set", "data.limit="], "--set data.limit= has no value"),
        (["--epochs", "2", "--set", "train="], "--set train= has no value"),
        (["--set", "layout=null"], "config 'layout' is empty"),
        (["--set", "train=[]"], "config 'train' must be a mapping"),
        # (a sweep audit: "unknown train option 'name'", a name the user never typed)
        (["--set", "train=foo"], "config 'train' must be a mapping of options (train.lr=..."),
        (["--set", "train.grad_clip=1:30.0"], "grad_clip"),  # YAML 1.1's base 60: not 90.0
        (["--set", "train.device=cuda:00"], "cpu, cuda, cuda:N or auto"),
        (["--set", "model.layers=100000000"], "integer in [1, 4096]"),
    ):
        one_line_error(*cli(capsys, *base, *extra)[::2], needle)
    np.savetxt(tmp_path / "t.csv", np.random.default_rng(0).normal(size=(50, 2)), delimiter=",")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", tmp_path / "t.csv",
                     "--out", out, "--set", 'data.standardize="false"')  # fmt: skip
    one_line_error(rc, err, "data.standardize must be true or false")
    assert load_dataset(str(tmp_path / "t.csv"), standardize=0).stats is None  # (0/1: as before)
    assert not out.exists()


def test_a_config_giving_one_key_twice_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: realnvp, layers: 2, kwargs: {layers: 3}}\ndata: moons\n")
    rc, _, err = cli(capsys, "train", "--config", cfg, "--out", tmp_path / "r")
    one_line_error(rc, err, "config 'model' gives 'layers' twice", "model.kwargs.layers = 3")
    cfg.write_text("model: realnvp\ndata: {name: moons, limit: 64, options: {limit: 32}}\n")
    rc, _, err = cli(capsys, "train", "--config", cfg, "--out", tmp_path / "r")
    one_line_error(rc, err, "config 'data' gives 'limit' twice")
    assert not (tmp_path / "r").exists()


def test_options_are_not_abbreviated(tmp_path, capsys):
    with pytest.raises(SystemExit):  # --ep would have been --epochs
        cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--ep", "1",
            "--out", tmp_path / "r")  # fmt: skip
    err = capsys.readouterr().err
    assert "unrecognized arguments: --ep 1" in err and not (tmp_path / "r").exists()


def test_a_huge_bad_value_is_not_echoed_whole(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons",
                     "--set", "train.lr=" + "x" * 100_000, "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "train.lr", "'xxx", "...")  # (cut where it is echoed)
    assert len(err) < 300


def test_a_closed_pipe_ends_the_command_quietly():
    import subprocess
    import sys

    # `flowforge list | head -1` where head has already closed the pipe: no "Broken pipe"
    # error and no traceback, the exit status a shell gives a command ended by SIGPIPE
    read, write = os.pipe()
    os.close(read)
    lister = subprocess.run([sys.executable, "-m", "flowforge", "list"], stdout=write,
                            stderr=subprocess.PIPE, timeout=120)  # fmt: skip
    os.close(write)
    err = lister.stderr.decode()
    assert lister.returncode == 141 and not err.strip(), err


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_an_output_into_a_missing_folder_is_refused(tmp_path, capsys, command):
    """`sample --out nodir/sub/s.csv` made the folders silently (a typo made a tree)."""
    from cli_support import cli, one_line_error, tiny_moons_run

    run = tiny_moons_run(capsys, tmp_path / "run")
    out = tmp_path / "nodir" / "sub" / "s.csv"
    args = ["sample", run, "-n", 5, "--out", out] if command == "sample" else [
        "eval", run, "--scores", out]  # fmt: skip
    rc, _, err = cli(capsys, *args)
    one_line_error(rc, err, f"there is no folder {out.parent}; create it first")
    assert not (tmp_path / "nodir").exists()


def test_model_and_data_kinds_that_do_not_fit_say_what_does(tmp_path, capsys):
    # "cannot model discrete data (no levels= option)", "needs levels=", "takes vectors only"
    for args, needles in (
        (("--model", "torusflow", "--data", "digits", "--layout", "vector"),
         ("models continuous data only", "digits is discrete (17 levels)", "idf")),
        (("--model", "idf", "--data", "moons"),
         ("model 'idf' models discrete data", "--set data.levels=K")),
        (("--model", "maf", "--data", "digits", "--layout", "image"),
         ("takes vectors only", "use --layout vector")),
    ):  # fmt: skip
        rc, _, err = cli(capsys, "train", *args, "--epochs", 1, "--limit", 50,
                         "--out", tmp_path / "run")  # fmt: skip
        one_line_error(rc, err, *needles)
        assert not (tmp_path / "run").exists()


def test_an_mflow_of_one_epoch_says_it_needs_two(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--model", "mflow", "--data", "surface-64",
                     "--set", "data.n_train=100", "--set", "train.objective=mflow", "--epochs", 1,
                     "--out", tmp_path / "m")  # fmt: skip
    one_line_error(rc, err, "needs at least 2 epochs (train.epochs is 1)")


def test_sample_takes_the_temperatures_report_and_python_take(tmp_path, capsys):
    # 0 was refused by sample and taken by report --temperatures and flow.sample
    run = tiny_moons_run(capsys, tmp_path / "run")
    out = tmp_path / "s.npy"
    rc, _, err = cli(capsys, "sample", run, "-n", 4, "--temperature", 0, "--out", out)
    assert rc == 0, err
    s = np.load(out)
    assert np.allclose(s, s[0])  # (every sample the image of the base's mode)
    rc, _, err = cli(capsys, "sample", run, "-n", 4, "--temperature", -1, "--out",
                     tmp_path / "t.npy")  # fmt: skip
    one_line_error(rc, err, "--temperature must be a finite number >= 0")


@pytest.mark.parametrize(
    "model, kwargs, needle",
    [
        ("planar", {"layers": 1, "hidden": [16]}, "hidden=[16] is read by Planar only with a"),
        ("sylvester", {"layers": 1, "reflections": 4}, "reflections=4 is read by Sylvester only"),
        ("realnvp", {"layers": 1, "components": 4}, "components=4 is read by RealNVP only with a"),
        ("maf", {"layers": 1, "alpha": 0.1, "preprocess": "scale"}, "alpha=0.1 is read by MAF"),
    ],
    ids=["planar-hidden", "sylvester-reflections", "components", "alpha"],
)
def test_a_model_argument_the_builder_would_not_read_is_refused(
    tmp_path, capsys, model, kwargs, needle
):
    # (an options audit: each built the same weights as without it, and was recorded as set)
    data = ["digits", "--layout", "vector"] if "preprocess" in kwargs else ["moons"]
    rc, _, err = cli(capsys, "train", "--model", model, "--data", *data, "--out",
                     tmp_path / "r", "--model-kwargs", json.dumps(kwargs), "--epochs", 1,
                     "--no-progress")  # fmt: skip
    one_line_error(rc, err, needle, "(remove it)")
    assert not (tmp_path / "r").exists()
    read = {**kwargs, "kind": "householder"} if model == "sylvester" else None
    read = {**kwargs, "base": "mixture"} if model == "realnvp" else read
    if read is not None:  # (where it is read, it is taken)
        rc, _, err = cli(capsys, "train", "--model", model, "--data", "moons", "--out",
                         tmp_path / "ok", "--model-kwargs", json.dumps(read), "--epochs", 1,
                         "--limit", 64, "--no-progress", "--quiet")  # fmt: skip
        assert rc == 0, err
