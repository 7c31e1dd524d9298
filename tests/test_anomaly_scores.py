"""Scoring rows for anomaly detection (an audit of the use, 2026-12-07; docs/workbench.md
"Anomaly detection"): far rows get their numbers, a file far from the training data or
scoring above the validation split is said, and the scores carry the reference's."""

from __future__ import annotations

import numpy as np
import torch

import flowforge as ff
from cli_support import cli


def _table(path, rows, seed=0):
    g = np.random.default_rng(seed)
    a = g.normal(size=(rows, 3))
    a[:, 1] += a[:, 0]
    np.savetxt(path, a, delimiter=",", header="a,b,c", comments="", fmt="%.8g")
    return a


def test_a_row_a_float32_model_overflows_on_is_scored_in_float64_not_an_error():
    # one row at 1e30 made log_likelihoods (and eval --scores) fail for the whole file,
    # although flow.double() scores it (-2e58): the far rows are the anomalies
    torch.manual_seed(0)
    flow = ff.models.NSF(features=2)
    flow.train()
    flow.log_prob(torch.randn(500, 2))  # (its data-initialised standardisation)
    x = torch.tensor([[0.1, 0.2], [1e30, 0.0], [0.3, -0.2]])
    lp = ff.objectives.log_likelihoods(flow, x)
    assert torch.isfinite(lp).all() and lp[1] < -1e50
    want = flow.double().log_prob(x.double())
    assert torch.allclose(lp, want.detach(), rtol=1e-6)


def test_a_file_far_from_the_training_data_is_said_and_scored_beside_the_reference(
    tmp_path, capsys
):
    _table(tmp_path / "t.csv", 600)
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", tmp_path / "t.csv",
                     "--model-kwargs", '{"hidden": [16]}', "--epochs", "3", "--out", run,
                     "--no-progress")  # fmt: skip
    assert rc == 0, err
    new = _table(tmp_path / "new.csv", 20, seed=1)
    new[7, 2] = -999.0  # a sentinel
    np.savetxt(tmp_path / "new.csv", new, delimiter=",", header="a,b,c", comments="")
    rc, out, err = cli(capsys, "eval", run, "--data", tmp_path / "new.csv", "--scores",
                       tmp_path / "s.csv")  # fmt: skip
    assert rc == 0, err
    assert (
        "1 of its 20 rows (5%; the first at index 7, counting from 0 as the scores file does) "
        "lies" in err
    )
    # beside it, what the run's own validation rows do (600 rows, 3 columns: none or few)
    assert "(for comparison, none of the run's 60 validation rows does)" in err
    assert "outside the training range: c -999 (1 value past the training range" in err
    header, *rows = (tmp_path / "s.csv").read_text().splitlines()
    assert header == "log_density,gaussian_log_density" and len(rows) == 20
    model, gauss = np.array([list(map(float, r.split(","))) for r in rows]).T
    assert np.argmin(model) == 7 and np.argmin(gauss) == 7
    # a file of typical rows: no note; one scoring far above validation: a note
    rc, out, err = cli(capsys, "eval", run, "--data", tmp_path / "t.csv")
    assert "training range" not in err and "higher likelihood" not in err
    centre = np.zeros((50, 3))  # (the density's mode, every row: far more likely than data)
    np.savetxt(tmp_path / "mode.csv", centre, delimiter=",", header="a,b,c", comments="")
    rc, out, err = cli(capsys, "eval", run, "--data", tmp_path / "mode.csv")
    assert "scores a higher likelihood than the run's own data did" in err


def test_blank_images_are_not_told_to_rescale():
    from flowforge.workbench.data import unit_scaled

    assert unit_scaled(torch.zeros(3, 1, 8, 8), 17, "blank.npy") is None
    assert "every value is 0 or 1" in unit_scaled(torch.ones(3, 1, 8, 8), 17, "ones.npy")


def test_the_range_check_reads_a_table_a_chunk_at_a_time_with_the_same_verdict(monkeypatch):
    # eval --data's range check made float64 copies of the whole table (four of them at once);
    # it now goes a chunk at a time: the same words and rows whatever the chunk, and a NaN in
    # one chunk does not hide a far value in a later one
    from flowforge.workbench import data

    t = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
    t[900, 1], t[7, 1], t[990, 2], t[5, 2] = 9.0, -8.5, 7.0, float("nan")
    ranges, names = [[-5, 5], [-3, 3], [-4, 4]], ["a", "b", "c"]
    whole = data.beyond_ranges(t, ranges, names)
    assert (
        whole[0].startswith("b 9 (") and "c 7 (1 value past the training range -4 to 4)" in whole[0]
    )
    monkeypatch.setattr(data, "_RANGE_ROWS", 64)
    chunked = data.beyond_ranges(t, ranges, names)
    assert chunked[0] == whole[0] and torch.equal(chunked[1], whole[1])
    assert data.beyond_ranges(torch.zeros(3), []) is None  # (no columns: no verdict)


def test_the_range_note_says_how_many_validation_rows_lie_outside_too(tmp_path, capsys):
    # 150 training rows of 20 Gaussian columns: each column's range is an extreme of few
    # draws, so rows from the same distribution fall outside some column's range (an audit
    # found 3 to 8% of them flagged, read as a verdict): the note now gives the run's own
    # validation rows' share, the base rate of such rows
    g = np.random.default_rng(0)
    names = ",".join(f"c{j}" for j in range(20))
    np.savetxt(tmp_path / "t.csv", g.normal(size=(250, 20)), delimiter=",", header=names,
               comments="", fmt="%.8g")  # fmt: skip
    np.savetxt(tmp_path / "new.csv", g.normal(size=(1000, 20)), delimiter=",", header=names,
               comments="", fmt="%.8g")  # fmt: skip
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", tmp_path / "t.csv",
                     "--model-kwargs", '{"hidden": [8]}', "--epochs", "1", "--out", run,
                     "--no-progress")  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", run, "--data", tmp_path / "new.csv")
    assert rc == 0, err
    assert "lie outside the training range" in err
    assert "of the run's 25 validation rows, " in err, err
    assert "rows like the training data fall outside some column's range too" in err
