"""The report's figures say what they show (a newcomer study): the data side of the table
figures names its split and its rows, latent QQ panels are not titled with column names,
context values are the table's (a 0/1 flag's 0, not 3.98e-09), and tick labels of a
wide-valued column never run together ("100000120000")."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cli_support import cli
from flowforge.workbench import report as R
from flowforge.workbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = '{"layers": 2, "hidden": [8]}'
QUIET = ["--epochs", "1", "--no-progress", "--quiet", "--model-kwargs", TINY]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 300-row table (30 validation rows): a wide income column, a share, a 0/1 flag and
    a count; one unconditional run and one conditional on the flag and the count."""
    tmp = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(0)
    n = 300
    income = rng.uniform(1_000, 128_000, n).round(0)  # ticks 0 to 140000, 20000 apart
    share = rng.uniform(0, 0.7, n)
    flag = (rng.uniform(size=n) < 0.2).astype(int)  # mostly 0
    kids = rng.integers(0, 5, n)
    csv = tmp / "people.csv"
    rows = [f"{a:.0f},{b:.4f},{c},{d}" for a, b, c, d in zip(income, share, flag, kids)]
    csv.write_text("income,share,flag,kids\n" + "\n".join(rows) + "\n")
    out = {}
    for name, extra in (("plain", []), ("cond", ["--target-columns", "income,share"])):
        out[name] = tmp / name
        args = ["train", "--model", "maf", "--data", csv, "--out", out[name], *QUIET, *extra]
        assert main([str(a) for a in args]) == 0
    return out


def _overlaps(labels, renderer, horizontal: bool) -> list[str]:
    boxes = [(t.get_window_extent(renderer), t.get_text()) for t in labels]
    key = (lambda b: b[0].x0) if horizontal else (lambda b: b[0].y0)
    boxes.sort(key=key)
    bad = []
    for (a, ta), (b, tb) in zip(boxes, boxes[1:]):
        if (b.x0 < a.x1 - 0.5) if horizontal else (b.y0 < a.y1 - 0.5):
            bad.append(f"{ta!r} / {tb!r}")
    return bad


@pytest.fixture
def figures(monkeypatch):
    """What each figure the report saves shows: ``{file: {"titles", "legends", "suptitle",
    "overlaps"}}`` (overlapping tick labels, as drawn)."""
    seen: dict[str, dict] = {}
    real = R._savefig

    def look(fig, path, overwrite=True):
        fig.tight_layout()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        titles, legends, overlaps = [], [], []
        for ax in fig.axes:
            if not ax.get_visible() or not ax.axison:
                continue
            titles.append(ax.get_title())
            if ax.get_legend() is not None:
                legends += [t.get_text() for t in ax.get_legend().get_texts()]
            for axis, lim, horizontal in ((ax.xaxis, ax.get_xlim(), True),
                                          (ax.yaxis, ax.get_ylim(), False)):  # fmt: skip
                lo, hi = min(lim), max(lim)
                labels = [
                    t for loc, t in zip(axis.get_majorticklocs(), axis.get_ticklabels())
                    if lo <= loc <= hi and t.get_visible() and t.get_text()
                ]  # fmt: skip
                overlaps += _overlaps(labels, renderer, horizontal)
        sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
        seen[Path(path).name] = dict(titles=titles, legends=legends, suptitle=sup,
                                     overlaps=overlaps)  # fmt: skip
        real(fig, path, overwrite)

    monkeypatch.setattr(R, "_savefig", look)
    return seen


def test_the_data_side_names_its_split_and_rows(runs, figures, capsys):
    rc, _, err = cli(capsys, "report", runs["plain"])
    assert rc == 0, err
    side = "data (val, 30 rows)"
    assert side in figures["marginals.png"]["legends"]
    assert figures["marginals.png"]["suptitle"].startswith(f"marginals: {side} vs 2,000 model")
    pairs = figures["pairs.png"]["titles"]
    assert all(t.startswith(f"{side}: ") for t in pairs[::2]), pairs
    # (the samples the axes leave out are counted: "30 samples (5 off the axes): ...")
    assert all(re.match(r"30 samples( \(\d+ off the axes\))?: ", t) for t in pairs[1::2]), pairs
    html = (runs["plain"] / "report.html").read_text()
    assert f"Per-column marginals: {side} vs samples" in html
    corr = figures["correlations.png"]["titles"]  # (they read "data" and "samples")
    assert corr[:2] == [f"correlation: {side}", "correlation: 2,000 samples"], corr
    assert f"Correlation matrices: {side} vs samples" in html


def test_latent_panels_are_not_titled_with_column_names(runs, figures, capsys):
    assert cli(capsys, "report", runs["plain"])[0] == 0
    assert figures["latent_columns.png"]["titles"][:4] == [f"latent {j}" for j in range(4)]


def test_wide_valued_tick_labels_never_overlap(runs, figures, capsys):
    assert cli(capsys, "report", runs["plain"])[0] == 0
    for name in ("marginals.png", "pairs.png"):
        assert figures[name]["overlaps"] == [], (name, figures[name]["overlaps"])


def test_context_values_are_the_tables(runs, figures, capsys):
    rc, _, err = cli(capsys, "report", runs["cond"])
    assert rc == 0, err
    titles = figures["contexts.png"]["titles"]
    assert len(titles) == 4
    for t in titles:  # "val row 0: context flag 1, kids 3": named (an audit of the figures)
        assert re.fullmatch(r"val row \d: context flag [01], kids [0-4]", t), t


def test_context_values_are_rounded():
    # (the contexts are the table's raw values: the model standardises them itself, so a
    # flag's 0 is 0, not an un-standardised 3.98e-09)
    assert [R._context_value(v) for v in (0.0, -0.0, 2.0, 1234567.0)] == [
        "0",
        "0",
        "2",
        "1.235e+06",
    ]
    assert R._context_value(0.123456) == "0.1235" and R._context_value(2.5) == "2.5"


# -- a figures audit (2026-12-08) -----------------------------------------------------------


def test_a_2d_report_counts_the_samples_off_its_axes_and_gives_the_model_s_share(
    tmp_path, figures, capsys
):
    # (every 2-D report said "(2,000 off the axes)": the box's limits were passed as x and y)
    run = tmp_path / "moons"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", run,
                     "--limit", 500, *QUIET)  # fmt: skip
    assert rc == 0, err
    assert cli(capsys, "report", run)[0] == 0
    title = figures["samples.png"]["titles"][1]
    off = re.search(r"\(([0-9,]+) off the axes\)", title)
    assert off is None or int(off.group(1).replace(",", "")) < 1000, title
    assert "of its mass in this box" not in figures["density.png"]["titles"][1]


def test_columns_of_a_long_shared_prefix_keep_their_names(tmp_path, figures, capsys):
    # (cut to 29 characters, every column read "measurement_of_quantity_numbe…": in the
    # figures, the warnings, the per-column table and report --json)
    rng = np.random.default_rng(0)
    names = [f"measurement_of_quantity_number_{j:02d}_in_units" for j in range(3)]
    x = rng.normal(size=(300, 3)) * [1.0, 2.0, 3.0]
    csv = tmp_path / "wide.csv"
    csv.write_text(",".join(names) + "\n" + "".join(",".join(f"{v:.5f}" for v in r) + "\n"
                                                     for r in x))  # fmt: skip
    run = tmp_path / "wide"
    assert main(["train", "--model", "maf", "--data", str(csv), "--out", str(run), *QUIET]) == 0
    capsys.readouterr()
    rc, out, err = cli(capsys, "report", run, "--json")
    assert rc == 0, err
    import json

    said = json.loads(out)
    assert set(said["fidelity"]["columns_beyond_noise"]) <= set(names)
    titles = figures["marginals.png"]["titles"]
    ends = ("00_in_units", "01_in_units", "02_in_units")
    assert len(set(titles[:3])) == 3 and all(t.endswith(ends) for t in titles[:3]), titles
    html = (run / "report.html").read_text()
    assert all(n in html for n in names)


def test_the_plot_box_of_data_at_a_tiny_scale_is_its_range():
    # (a spread under 1e-9 counted as a constant column: a box of width 1 around one dot)
    lo, hi = R._box(np.array([[1e-20, -3e-20], [3e-20, 2e-20]]), pad=0.1)
    assert hi - lo == pytest.approx([2.4e-20, 6e-20], rel=1e-3)
    lo, hi = R._box(np.array([[5.0], [5.0]]), pad=0.1)  # (one value: a box of its size)
    assert hi[0] - lo[0] == pytest.approx(1.0)


def test_a_2d_table_s_sample_figure_names_its_axes_and_its_contexts(tmp_path, capsys, figures):
    # (an equal-aspect scatter of age against income was a blank vertical line, unnamed)
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 70, 300)
    income = 800 * age + rng.normal(0, 5000, 300)
    flag = (rng.uniform(size=300) < 0.5).astype(int)
    csv = tmp_path / "people.csv"
    rows = [f"{a:.2f},{b:.0f},{c}\n" for a, b, c in zip(age, income, flag)]
    csv.write_text("age,income,flag\n" + "".join(rows))
    run = tmp_path / "r"
    args = ["train", "--model", "maf", "--data", csv, "--out", run, "--target-columns",
            "age,income", *QUIET]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    rc, _, err = cli(capsys, "sample", run, "-n", 50, "--context", "0;1",
                     "--out", tmp_path / "s.png")  # fmt: skip
    assert rc == 0, err
    assert figures["s.png"]["legends"] == ["0", "1"]


def test_fit_target_draws_a_1d_target(tmp_path, capsys):
    # (a 1-D target trained, then stopped with an internal IndexError in its figure)
    from flowforge import targets

    (tmp_path / "t1.py").write_text(
        "import flowforge as ff\n"
        "ff.targets.register('one_d', lambda x: -0.5 * ((x[..., 0] - 3) / 0.5) ** 2, dim=1)\n"
    )
    try:
        rc, _, err = cli(capsys, "fit-target", "--import", tmp_path / "t1.py", "--target",
                         "one_d", "--model", "maf", "--steps", 30, "--n-eval", 500,
                         "--out", tmp_path / "vi", "--quiet")  # fmt: skip
    finally:
        targets.TARGETS.pop("one_d", None)
    assert rc == 0, err
    assert (tmp_path / "vi" / "report.png").stat().st_size > 0


def test_an_image_report_says_how_many_sampled_values_were_clamped(tmp_path, capsys):
    # (9-14% of the pixels were clamped to the levels and the grids showed them as clean
    # black and white, with no word; `sample` warned of them)
    run = tmp_path / "img"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "digits", "--out", run,
                     "--limit", 200, "--layout", "vector", *QUIET)  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "report", run, "--json")
    assert rc == 0, err
    import json

    warnings = json.loads(out)["warnings"]
    said = [w for w in warnings if w.startswith("samples clamped: of the sampled values, ")]
    assert len(said) == 1 and "at T = 1 fell outside the data's 17 levels" in said[0], warnings


def test_class_grids_name_their_classes_and_say_those_left_out(tmp_path, figures, capsys):
    # (a 12-class folder got the grids of classes 0-9, labelled by index, unsaid)
    from cli_support import png_folder

    root = tmp_path / "cls"
    root.mkdir()
    for k in range(12):
        png_folder(root / f"c{k:02d}", 6)
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", root, "--conditional",
                     "label", "--layout", "vector", "--out", run, *QUIET)  # fmt: skip
    assert rc == 0, err
    assert cli(capsys, "report", run, "--temperatures", "1")[0] == 0
    assert figures["classes_T1.png"]["titles"] == [
        "8 samples per class (the first 10 of 12 classes), T=1"
    ]


def test_a_one_column_table_gets_its_model_density_drawn(tmp_path, figures, capsys):
    # (a 1-D run got only a histogram of samples over data; its density is cheap to draw)
    rng = np.random.default_rng(0)
    csv = tmp_path / "one.csv"
    csv.write_text("height\n" + "".join(f"{v:.4f}\n" for v in rng.normal(170, 8, 200)))
    run = tmp_path / "r"
    assert main(["train", "--model", "maf", "--data", str(csv), "--out", str(run), *QUIET]) == 0
    assert cli(capsys, "report", run)[0] == 0
    assert set(figures["density.png"]["legends"]) == {"training data (160 rows)", "model density"}
    assert "Data and model density" in (run / "report.html").read_text()


def test_a_circle_run_s_density_is_drawn_on_its_angles(tmp_path, figures, capsys):
    # (the one-column density figure asked the circle flow about points beyond pi: the whole
    # report failed)
    run = tmp_path / "circle"
    rc, _, err = cli(capsys, "train", "--model", "torusflow", "--data", "circle-vonmises",
                     "--out", run, "--epochs", 1, "--limit", 200, "--no-progress",
                     "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", run)
    assert rc == 0, err
    assert "model density" in figures["density.png"]["legends"]
