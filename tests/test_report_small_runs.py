"""Reports on runs with very little data (audit D, item 7 and its "still present" items): no
raw warnings and no NaN, "n/a" with a reason instead; a flat validation curve is a curve, not
"spikes"; a small-data warning; readable table values; the two val NLLs of a discrete run
explained."""

from __future__ import annotations

import html
import math
import re
import warnings

import numpy as np
import pytest

from flowforge.workbench import report as R
from flowforge.workbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--no-progress", "--quiet"]


def report(run) -> dict:
    """``flowforge report RUN``'s table; ``"python warnings"`` in it lists the Python
    warnings raised on the way (on a console, each would be printed raw)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["report", str(run)]) == 0
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", (run / "report.html").read_text())
    table = {html.unescape(k): html.unescape(v) for k, v in rows}
    return {**table, "python warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The report table of the audit's tiny5.csv case: 5 rows of 3 columns (3 train, 1 val,
    1 test)."""
    tmp = tmp_path_factory.mktemp("tiny")
    rows = np.random.default_rng(0).normal(size=(5, 3))
    csv = tmp / "tiny5.csv"
    csv.write_text("x,y,z\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows))
    out = tmp / "tiny5"
    args = ["train", "--model", "realnvp", "--data", str(csv), "--out", str(out), *QUIET]
    assert main(args) == 0
    return report(out)


def test_a_tiny_run_reports_without_warnings_or_nan(table):
    assert table["python warnings"] == []
    cells = [v for k, v in table.items() if k != "python warnings"]
    assert not any("nan" in v.lower().replace("n/a", "") for v in cells), table
    corr = table["largest correlation difference (samples - data)"]
    assert corr == "n/a (only 1 row to correlate; at least 3 needed)"
    assert table["val NLL (nats/example, 1 example)"]


# the audit's tiny5 run: a slowly falling training loss, a flat validation NLL well above it
TRAIN = [3.1275, 3.1272, 3.1267, 3.126, 3.125, 3.1237, 3.1222, 3.1204, 3.1184, 3.1161, 3.1134,
         3.1105, 3.1072, 3.1037, 3.0997, 3.0954, 3.0907, 3.0856, 3.08, 3.074, 3.0675]  # fmt: skip
VAL = [5.6898, 5.6903, 5.691, 5.692, 5.6933, 5.6949, 5.6967, 5.6989, 5.7014, 5.7042, 5.7074,
       5.711, 5.7151, 5.7195, 5.7245, 5.73, 5.7362, 5.7429, 5.7503, 5.7585, 5.7675]  # fmt: skip


def test_a_flat_validation_curve_is_no_spikes(table, tmp_path):
    metrics = [
        {"type": "epoch", "epoch": e + 1, "step": e + 1, "train_loss": t, "val_nll": v}
        for e, (t, v) in enumerate(zip(TRAIN, VAL))
    ] + [{"type": "step", "step": s, "loss": TRAIN[s - 1]} for s in (10, 20)]
    assert R._curves(metrics, tmp_path / "curves.png", False) == 0  # was 21: all of val
    metrics[7]["val_nll"] = 1e6
    assert R._curves(metrics, tmp_path / "curves.png", False) == 1  # a real spike still is one
    assert "warning: loss spikes" not in table, table["warning: loss spikes"]
    # one flat curve with a step of 1e-3: the spread is at least 1% of the level
    lo, hi = R.robust_limits([3.0] * 11 + [3.001] * 10)
    assert hi > 3.001
    # a validation curve wholly above a flat training curve is drawn, not marked
    lo, hi = R.robust_limits([3.12 - 0.001 * k for k in range(21)], [5.69] * 21)
    assert lo < 3.1 and 5.69 < hi < 6
    # a real spike in it still is one
    assert R.robust_limits([3.1] * 21, [5.69] * 20 + [1e6])[1] < 1e3


def test_tiny_data_gets_a_warning(table):
    assert table["warning: little training data"].startswith(
        "3 training examples (9 values) for 7,410 parameters (823 per value)"
    )
    few = table["warning: few examples scored"]
    assert few.startswith("the NLL figures below rest on few examples (val: 1, test: 1)")
    keys = list(table)
    assert keys.index("warning: few examples scored") < keys.index(
        "val NLL (nats/example, 1 example)"
    )
    # and none for a run of ordinary size
    r = {"examples": {"train": 800, "val": 100, "test": 100}, "parameters": 50_000}
    assert R._small_data({**r, "event_shape": [4]}, "val") == []
    wide = R._small_data({**r, "parameters": 400_000, "event_shape": [4]}, "val")
    assert [k for k, _ in wide] == ["warning: little training data"]


def test_the_table_prints_settings_for_people(table):
    # (the sizing rule chose its depth and width: said, not "builder defaults", 2026-12-07)
    assert table["model"] == "realnvp (sized to the data)" and table["sized to the data"]
    assert table["levels"] == "continuous data"
    assert table["layout"] == "vector (3 values per example)"
    assert R._model_words({"name": "glow", "kwargs": {"steps": 1, "hidden": [8]}}) == (
        "glow with steps=1, hidden=[8]"
    )
    assert R._model_words({"name": "glow", "kwargs": {"steps": 1}}, sized=True) == (
        "glow with steps=1 (the rest sized to the data)"
    )
    assert R._model_words({"name": "nsf", "kwargs": {}}) == "nsf (builder defaults)"


def test_a_constant_column_in_the_split_is_left_out_of_the_correlations(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(50, 3)).astype(np.float32)
    data[:, 1] = 2.5  # constant in this split (float32, as the report's data are)
    samples = rng.normal(size=(50, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs, facts = R.table_figures(data, samples, samples, ["a", "b", "c"], tmp_path)
    corr = dict(facts)["largest correlation difference (samples - data)"]
    value, noise, why = corr.split(" (", 2)
    assert math.isfinite(float(value)) and noise.startswith("sampling noise alone: about ")
    assert why == "left out, constant in the data or the samples: b)"


def test_the_two_val_nlls_of_a_discrete_run_are_explained(tmp_path):
    out = tmp_path / "digits"
    small = '{"steps": 1, "hidden": 8, "scales": 1}'
    args = ["train", "--model", "glow", "--data", "digits", "--model-kwargs", small]
    assert main([*args, "--out", str(out), "--epochs", "1", "--limit", "100", *QUIET]) == 0
    table = report(out)
    assert table["python warnings"] == []
    logged = table["best epoch (val NLL)"].split("(")[1].rstrip(")")
    rescored = next(v for k, v in table.items() if k.startswith("val NLL (nats/example"))
    rescored, se = rescored.split(" +- ")  # (its standard error over the examples)
    assert 0 < float(se) < 1
    assert logged != rescored  # another draw of the dequantization noise
    note = table["note: two val NLLs"]
    assert note.startswith(f"the best epoch's {logged} was scored during training, with 1 draw")
    assert "as `flowforge eval` does (1 draw, seed 0)" in note and "noise alone" in note
    assert table["levels"] == "17 (discrete data: integers 0 to 16)"


def _decay(epochs: int = 100, bpd: bool = False) -> list[dict]:
    """A healthy run's history: losses falling fast from 3.25 to a floor near 1.7 (the
    newcomer study's nsf-moons run), with logged steps, in nats and (``bpd``) bits/dim."""
    rng = np.random.default_rng(0)
    out = []
    for e in range(1, epochs + 1):
        t = 1.7 + 1.55 * math.exp(-(e - 1) / 4) + 0.003 * rng.normal()
        v = t + 0.04
        rec = {"type": "epoch", "epoch": e, "step": 10 * e, "train_loss": t, "val_nll": v}
        if bpd:
            rec |= {"train_bpd": t / (2 * math.log(2)), "val_bpd": v / (2 * math.log(2))}
        out += [{"type": "step", "epoch": e, "step": 10 * e, "loss": t + 0.02 * rng.normal()}]
        out.append(rec)
    return out


def test_a_falling_start_is_a_curve_not_spikes(tmp_path):
    # the study's nsf-moons run: the first epochs (3.25, 3.05, 2.83, ...) were clipped as 7
    # "loss spikes" because the limit was 10 late-phase spreads above the floor
    metrics = _decay()
    assert R._curves(metrics, tmp_path / "curves.png", False) == 0
    ys = [m["train_loss"] for m in metrics if m["type"] == "epoch"]
    lo, hi = R.robust_limits(ys, [y + 0.04 for y in ys])
    assert lo < 1.7 and 3.29 < hi < 3.5  # the whole descent is on the chart
    assert R._curves(_decay(bpd=True), tmp_path / "curves.png", True) == 0


def test_spikes_are_counted_once_per_logged_value(tmp_path):
    metrics = _decay(bpd=True)
    ep = [m for m in metrics if m["type"] == "epoch"]
    for e in (30, 70):  # two spikes, in nats and (the same values) in bits/dim
        ep[e]["train_loss"], ep[e]["train_bpd"] = 400.0, 400.0 / (2 * math.log(2))
    # the two panels once counted each spike twice
    assert R._curves(metrics, tmp_path / "curves.png", True) == 2
    assert R._curves([m for m in metrics if m["type"] == "epoch"], tmp_path / "c.png", False) == 2
    # a spike in a falling start is one too, the descent around it is not
    ep[3]["train_loss"] = 60.0
    assert R._curves(metrics, tmp_path / "curves.png", True) == 3


def test_spike_labels_never_overprint():
    plt = R._plt()
    fig, ax = plt.subplots()
    x = np.arange(40.0)
    y = np.where((x > 10) & (x < 20), 1e3 + x, 1.0)  # nine spikes side by side
    assert np.sum(R._plot_clipped(ax, x, y, 2.0)) == 9
    # at most 3 labels, far apart (it was five, one epoch apart, printed over each other)
    at = sorted(t.xy[0] for t in ax.texts)
    assert 1 <= len(at) <= 3 and all(b - a > 0.1 * 39 for a, b in zip(at, at[1:]))
    plt.close(fig)


def test_spike_labels_are_shared_by_a_panels_curves(tmp_path):
    # spikes at the same epochs in the logged steps, training and validation curves: each
    # curve labelled its own three, and labels of different curves printed over each other
    metrics = []
    for e in range(1, 61):
        bad = e in (10, 30, 50)
        metrics.append({"type": "step", "step": 10 * e, "epoch": e, "lr": 1e-3,
                        "loss": 58.0 + e if bad else 1.0})  # fmt: skip
        metrics.append({"type": "epoch", "epoch": e, "train_loss": 48.0 + e if bad else 1.0,
                        "val_nll": 40.0 + e if bad else 1.1})  # fmt: skip
    plt = R._plt()
    fig, ax = plt.subplots()
    ep = [m for m in metrics if m["type"] == "epoch"]
    steps = [m for m in metrics if m["type"] == "step"]
    off = R._curve_panel(ax, ep, steps, "train_loss", "val_nll", 10, "NLL")
    assert len(off) == 9  # three spikes in each of the three curves
    at = sorted(t.xy[0] for t in ax.texts)
    assert 1 <= len(at) <= 3 and all(b - a > 0.1 * 59 for a, b in zip(at, at[1:])), at
    plt.close(fig)


def test_limits_of_finite_but_huge_values_are_finite():
    # +-1.7e308 in a damaged history: the spread overflowed and matplotlib refused the limits
    lo, hi = R.robust_limits([1.7e308, -1.7e308, 1.0, 2.0], [1e308, 3.0])
    assert math.isfinite(lo) and math.isfinite(hi) and lo < hi
    # a value far below is left out, not a floor that flattens the curve onto 0
    lo, hi = R.robust_limits([-1e200, 1.0, 2.0, 3.0])
    assert 0.5 < lo < 1.0 and 3.0 < hi < 3.5


def test_a_history_of_huge_values_is_drawn(tmp_path):
    import warnings

    metrics = [{"type": "epoch", "epoch": e, "step": 10 * e, "train_loss": v, "val_nll": -v}
               for e, v in enumerate([1.7e308, 2.0, 1.5, 1.2], 1)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (an overflow inside matplotlib's limits)
        R._curves(metrics, tmp_path / "curves.png", False)
    assert (tmp_path / "curves.png").is_file()


def test_two_bounded_or_integer_columns_get_their_density_figure(tmp_path, capsys):
    # the density grid reached past the declared bounds, where log_prob refuses points: the
    # report failed; a discrete run's panel was left blank without a word
    from cli_support import cli

    rng = np.random.default_rng(0)
    share, income = rng.beta(2, 5, 400), rng.lognormal(0, 0.5, 400)
    (tmp_path / "b2.csv").write_text(
        "share,income\n" + "".join(f"{a:.5f},{b:.5f}\n" for a, b in zip(share, income))
    )
    common = ["--model", "realnvp", "--epochs", 1, "--quiet", "--no-progress",
              "--model-kwargs", '{"layers": 2, "hidden": [8]}']  # fmt: skip
    rc, _, err = cli(capsys, "train", "--data", tmp_path / "b2.csv", "--out", tmp_path / "b",
                     *common, "--set", "data.bounds.share=[0, 1]",
                     "--set", "data.bounds.income=positive")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", tmp_path / "b")
    assert rc == 0 and (tmp_path / "b" / "report" / "density.png").is_file(), err
    ints = rng.integers(0, 8, (300, 2))
    (tmp_path / "lv.csv").write_text("".join(f"{a},{b}\n" for a, b in ints))
    rc, _, err = cli(capsys, "train", "--data", tmp_path / "lv.csv", "--out", tmp_path / "lv",
                     *common, "--set", "data.levels=8")  # fmt: skip
    assert rc == 0, err
    import matplotlib.axes

    titles = []
    real = matplotlib.axes.Axes.set_title
    try:
        matplotlib.axes.Axes.set_title = lambda self, t, *a, **k: (
            titles.append(t), real(self, t, *a, **k))[1]  # fmt: skip
        rc, _, err = cli(capsys, "report", tmp_path / "lv")
    finally:
        matplotlib.axes.Axes.set_title = real
    assert rc == 0, err
    assert "model density: none drawn" in titles
