"""A synthetic table's fidelity and memorisation checks (an audit of synthetic rows, H1 and M2):
the out-of-range warning names every column with a value of the other sign than its data and
counts the columns and rows; a table run's report names the worst correlation pair, has a
per-column table with the KS statistic against its noise, and a distance-to-closest-record
check of the samples against held-out rows."""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pytest
import torch

from flowforge.workbench import report as R
from flowforge.workbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = '{"layers": 2, "hidden": [16]}'


def _facts(page: str) -> dict:
    """The report's table of facts (its first table) as a dict."""
    first = page.split("</table>")[0]
    pairs = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", first, re.S)
    return {html.unescape(k): html.unescape(v) for k, v in pairs}


def _section(page: str, title: str) -> str:
    """The HTML of the page's section headed ``title``, up to the next heading."""
    start = page.index(f"<h2>{html.escape(title)}</h2>")
    end = page.find("<h2>", start + 4)
    return page[start:end]


# -- the out-of-range warning (H1) ----------------------------------------------------------------


def _ranged_samples():
    """1,000 samples of 10 columns: c0..c6 (range [-1, 1]) with 2% outside each, in rows of
    their own (rows 0-139); `area` (all training values >= 0) negative in 2 rows (140, 141);
    `debt` (all <= 0) positive in 1 (142); `ok` 0.5% outside (rows 0-4: rows counted already)."""
    x = torch.zeros(1000, 10, dtype=torch.float64)
    for k in range(7):
        x[20 * k : 20 * k + 20, k] = 1.5
    x[:, 7], x[:, 8] = 100.0, -100.0
    x[140:142, 7] = -50.0
    x[142, 8] = 3.0
    x[:5, 9] = 1.2
    names = [*(f"c{k}" for k in range(7)), "area", "debt", "ok"]
    ranges = [[-1.0, 1.0]] * 7 + [[5.0, 900.0], [-500.0, -1.0], [-1.0, 1.0]]
    cfg = {"resolved": {"ranges": ranges, "columns": names, "examples": {"train": 999}}}
    return x.float(), cfg


def test_a_value_of_the_other_sign_is_named_whatever_its_share_and_all_columns_are_counted():
    # an audit: 14% of synthetic rows had a negative area or size, and the warning named 5
    # of the 20 columns affected (" ..."), none of them under 1% of the samples
    x, cfg = _ranged_samples()
    said = R.outside_ranges(x, cfg)
    assert "\n" not in said  # one line
    assert said.startswith(
        "samples fall outside the training data's range in 9 of 10 columns (1% or more of the "
        "samples, or any of the other sign than the data), and in 14.3% of the sample rows (a "
        "value outside in any column; draws from the data's own distribution: at most 2.0%); "
        "0.3% of the rows hold a value of the other sign than all of its column's training "
        "values: "
    ), said
    # the impossible values first, under the 1% threshold as they are
    named = said.split("values: ", 1)[1]
    assert named.startswith(
        "area 0.2% (0.2% negative; samples -50 to 100, data 5 to 900); "
        "debt 0.1% (0.1% positive; samples -100 to 3, data -500 to -1); "
    ), named
    assert "; and 3 more columns: the model puts mass where the data has none" in said
    assert " ok " not in said  # (0.5% outside, no other sign: not named)
    assert "declare its bounds" in said  # (the hint on data.bounds stays)


def test_one_negative_sample_in_a_positive_column_is_named():
    x = torch.ones(3000, 2)
    x[17, 1] = -0.25
    cfg = {"resolved": {"ranges": [[0.0, 2.0], [0.5, 3.0]], "columns": ["dose", "weight"]}}
    said = R.outside_ranges(x, cfg)
    assert said is not None
    assert "in 1 of 2 columns" in said and "in 0.033% of the sample rows" in said
    assert "0.033% of the rows hold a negative value in a column whose training values are " \
        "all >= 0: weight 0.033% (0.033% negative; samples -0.25 to 1" in said  # fmt: skip
    assert "draws from the data's own" not in said  # (no training count: no comparison)
    x[17, 1] = 0.75  # inside: nothing to say
    assert R.outside_ranges(x, cfg) is None


def test_a_conditional_runs_warning_counts_the_same_and_keeps_its_own_words():
    x, cfg = _ranged_samples()
    cfg["resolved"]["context"] = {"kind": "columns", "target_columns": list(range(10)),
                                  "context_columns": [10], "features": 1}  # fmt: skip
    said = R.outside_ranges(x, cfg)
    assert said.startswith("samples fall outside the training data's range (over all its "
                           "contexts) in 9 of 10 columns")  # fmt: skip
    assert "draws from the data's own" not in said  # (given contexts: no such figure)
    assert "for a context near the edge of the training contexts" in said


# -- the correlation row, the per-column table, the closest-record check (M2) --------------------


def test_the_largest_correlation_difference_names_its_pair_and_is_flagged_beyond_noise(tmp_path):
    g = np.random.default_rng(0)
    a = g.normal(size=400)
    data = np.c_[a, 0.9 * a + math.sqrt(1 - 0.81) * g.normal(size=400), g.normal(size=400)]
    samples = g.normal(size=(2000, 3))  # the pair's correlation lost
    _, facts = R.table_figures(data, samples, None, ["s3", "s4", "x"], tmp_path)
    said = dict(facts)["warning: largest correlation difference (samples - data)"]
    assert re.match(r"0\.9\d\d \(sampling noise alone: about 0\.\d+ or less, 19 times in "
                    r"20, with 400 rows and 2,000 samples\), s3 & s4: data 0\.9\d, samples "
                    r"-?0\.0\d; 1 pair of 3 beyond the noise$", said), said  # fmt: skip
    # the same distribution on both sides: a plain row
    samples = np.c_[data[:, :2], g.normal(size=400)]
    samples = np.concatenate([samples, samples[::-1] + 1e-3 * g.normal(size=(400, 3))])
    _, facts = R.table_figures(data, samples, None, ["s3", "s4", "x"], tmp_path)
    assert "largest correlation difference (samples - data)" in dict(facts)


def test_the_ks_statistic_and_what_noise_gives_for_it():
    assert R.ks_statistics(np.array([[1.0], [2.0], [3.0]]), np.array([[2.5]]))[0] == (
        pytest.approx(2 / 3)
    )
    n, m = 400, 2000
    assert R.ks_noise(n, m) == pytest.approx(math.sqrt(-math.log(0.025) * (n + m) / (2 * n * m)))
    # Bonferroni over the columns: level 0.05 / columns each
    assert R.ks_noise(n, m, 10) == pytest.approx(R.ks_noise(n, m, 1, 0.005))
    g = np.random.default_rng(3)
    data = g.normal(size=(n, 3))
    samples = g.normal(size=(m, 3)) + [0.0, 0.5, 0.0]
    samples[:, 2] *= 1.02
    st = R.column_statistics(data, samples)
    assert st["beyond"].tolist() == [False, True, False]
    assert st["rows"] == n and st["samples"] == m and st["noise"] == R.ks_noise(n, m, 3)
    np.testing.assert_allclose(st["mean"][1], samples.mean(0))
    np.testing.assert_allclose(st["quantiles"][0, 1], np.quantile(data, 0.5, axis=0))


def test_the_per_column_table_keeps_a_wide_table_readable():
    g = np.random.default_rng(2)
    names = [f"col{j}" for j in range(45)]
    data, samples = g.normal(size=(300, 45)), g.normal(size=(2000, 45))
    samples[:, 44] += 1.0
    st = R.column_statistics(data, samples)
    title, part = R._columns_html(st, names, "data (val, 300 rows)")
    assert title == "Per-column statistics: data (val, 300 rows) vs 2,000 samples"
    assert part.count("<tr>") == 1 + R.TABLE_WORST  # the header and the 20 worst columns
    assert "The 20 of the 45 columns with the largest KS statistic, in table order; 1 of " \
        "the 45 are beyond sampling noise." in part  # fmt: skip
    row = re.search(r"<tr><td>col44</td>.*?</tr>", part).group(0)
    assert row.endswith("<td>beyond noise</td></tr>")
    assert f"keep it below {st['noise']:.3f} in every column 19 times in 20" in part
    _, part = R._columns_html(R.column_statistics(data[:, :40], samples[:, :40]), names, "x")
    assert part.count("<tr>") == 41  # 40 columns: every one


def test_the_closest_record_check_tells_memorisation_from_generalisation():
    g = np.random.default_rng(3)
    train = torch.tensor(g.normal(size=(500, 4)))
    held = torch.tensor(g.normal(size=(100, 4)))
    fresh = torch.tensor(g.normal(size=(1000, 4)))
    res = R.nearest_check(train, fresh, held)
    assert res["warning"] is None and res["copies"] == (0.0, 0.0)
    assert 0.8 < res["median"][0] / res["median"][1] < 1.25
    # every column divided by its training standard deviation: a column in other units
    # measures the same
    scale = torch.tensor([1.0, 1000.0, 1.0, 0.01], dtype=torch.float64)
    again = R.nearest_check(train * scale, fresh * scale, held * scale)
    np.testing.assert_allclose(again["median"], res["median"])
    # training rows given back (float32 round-off): nearer than held-out rows, and copies
    copied = train[g.integers(0, 500, 1000)].float()
    res = R.nearest_check(train, copied, held)
    assert res["copies"][0] == 1.0 and res["median"][0] < 1e-6
    assert res["warning"].startswith("the samples lie much nearer the training rows")
    # 5% copies among fresh draws: the medians agree, the copies say it
    mixed = torch.cat([fresh[:950], copied[:50].double()])
    res = R.nearest_check(train, mixed, held)
    assert res["warning"] == "5.0% of the samples copy a training row (held-out rows: 0.0%)"
    # the cost is bounded: at most 20,000 training rows and 2,000 samples
    big = torch.tensor(g.normal(size=(30_000, 2)))
    res = R.nearest_check(big, torch.tensor(g.normal(size=(3000, 2))), big[:10])
    assert res["train"] == (20_000, 30_000) and res["samples"] == (2000, 3000)
    assert "2,000 of 3,000 samples" in R._nearest_html(res, "val")[1]
    assert "20,000 of the 30,000 training rows, drawn at random" in R._nearest_html(res, "val")[1]


# -- the report and the sample command on a table run ----------------------------------------------


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A 300-row table (a normal column, a positive log-normal one, a correlated one) and a
    small NSF trained on it for 2 epochs: 240 training rows, 30 validation rows."""
    tmp = tmp_path_factory.mktemp("fidelity")
    g = np.random.default_rng(0)
    a = g.normal(size=300)
    rows = np.c_[a, np.exp(g.normal(size=300)), 0.8 * a + 0.6 * g.normal(size=300)]
    csv = tmp / "t.csv"
    csv.write_text("a,size,c\n" + "\n".join(",".join(f"{v:.6g}" for v in r) for r in rows))
    run = tmp / "run"
    assert main(["train", "--model", "nsf", "--data", str(csv), "--out", str(run), "--epochs",
                 "2", "--model-kwargs", TINY, "--no-progress", "--quiet"]) == 0  # fmt: skip
    return run


def test_a_table_report_checks_the_samples_against_the_training_split_where_validation_is_small(
    table_run, capsys
):
    capsys.readouterr()
    assert main(["report", str(table_run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    page = (table_run / "report.html").read_text()
    facts = _facts(page)
    note = facts["note: checks against the training split"]
    assert note.startswith("the val split has only 30 rows (a column's KS statistic moves by up "
                           "to 0.")  # fmt: skip
    assert "compare the samples with the 240 training rows" in note
    assert "the figures show the val split" in note
    titles = [f["title"] for f in summary["figures"]]
    assert "Per-column marginals: data (val, 30 rows) vs samples" in titles  # (as they were)
    # the correlations against the split shown and against the training split, each named
    assert any(k.endswith("largest correlation difference (samples - data)") for k in facts)
    corr = next(
        v
        for k, v in facts.items()
        if k.endswith("largest correlation difference (samples - training split)")
    )
    assert "with 240 rows and 2,000 samples), " in corr
    fid = summary["fidelity"]
    assert fid["compared_with"] == "train" and fid["rows"] == 240 and fid["samples"] == 2000
    assert fid["ks_noise"] == pytest.approx(R.ks_noise(240, 2000, 3))
    # the per-column table: every column, data / samples, the KS and its noise
    part = _section(page, "Per-column statistics: data (train, 240 rows) vs 2,000 samples")
    assert part.count("<tr>") == 4
    assert re.search(r"<tr><td>size</td><td>[-\d.e]+ / [-\d.e]+</td>", part)
    ks = next(
        v
        for k, v in facts.items()
        if k.endswith("column distributions (KS statistic, samples vs data)")
    )
    assert f"{fid['ks_noise']:.3f}" in ks and "with 240 train rows and 2,000 samples" in ks
    # the closest-record check, against the validation rows, which the model never saw
    part = _section(page, "Distance to the closest training row (memorisation check)")
    assert "<td>held-out rows (val split)</td><td>30</td>" in part
    assert "<td>samples</td><td>2,000</td>" in part
    near = fid["nearest_training_row"]
    assert near["held_out"] == "val" and near["rows"] == {"samples": 2000, "held_out": 30,
                                                           "train": 240}  # fmt: skip
    said = next(
        v
        for k, v in facts.items()
        if k.endswith("distance to the closest training row (memorisation check)")
    )
    assert f"median {near['median']['samples']:.3g} for 2,000 samples, " \
        f"{near['median']['held_out']:.3g} for the 30 val rows (standardised" in said  # fmt: skip
    # the section order: the per-column table follows the marginals, the check the figures
    order = re.findall(r"<h2>(.*?)</h2>", page)
    i = order.index("Per-column marginals: data (val, 30 rows) vs samples")
    assert order[i + 1].startswith("Per-column statistics")
    assert order.index("Distance to the closest training row (memorisation check)") == (
        order.index("Latent normality check (val split, all dimensions)") - 1
    )


def test_a_split_asked_for_is_the_one_compared_with(table_run, capsys):
    capsys.readouterr()
    assert main(["report", str(table_run), "--split", "test", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fidelity"]["compared_with"] == "test"
    assert summary["fidelity"]["nearest_training_row"]["held_out"] == "test"
    assert not any(n.startswith("checks against the training split") for n in summary["notes"])


def test_sample_names_the_negative_values_of_a_positive_column(table_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "s.csv"
    assert main(["sample", str(table_run), "-n", "2000", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "outside the training data's range" in x)
    assert " of the sample rows (a value outside in any column; draws from the data's own " \
        "distribution: at most 2.5%)" in line  # fmt: skip
    assert "of the rows hold a negative value in a column whose training values are all " \
        ">= 0: size " in line  # fmt: skip
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    share = (rows[:, 1] < 0).mean()
    assert f"size {share:.1%}" in line or f"({share:.1%} negative;" in line


def test_a_conditional_table_report_checks_records_with_their_contexts(table_run, capsys):
    run = table_run.parent / "cond"
    cfg = json.loads((table_run / "config.json").read_text())
    assert main(["train", "--model", "maf", "--data", cfg["data"]["name"], "--out", str(run),
                 "--target-columns", "0,1", "--epochs", "1", "--model-kwargs", TINY,
                 "--no-progress", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["report", str(run), "--json"]) == 0
    fid = json.loads(capsys.readouterr().out)["fidelity"]
    # two modelled columns; the check measures whole records (the context too), the samples
    # drawn for the validation rows' own contexts (66 each: 1,980)
    assert fid["compared_with"] == "train" and fid["rows"] == 240
    assert fid["nearest_training_row"]["rows"] == {"samples": 1980, "held_out": 30,
                                                   "train": 240}  # fmt: skip
    med = fid["nearest_training_row"]["median"]
    assert 0 < med["samples"] < 10 and 0 < med["held_out"] < 10
