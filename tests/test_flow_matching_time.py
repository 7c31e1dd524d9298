"""benchmarks/flow_matching_time.py on a tiny budget: every method trains to its marks, is
scored there, and the table reports the first mark within each threshold."""

import importlib.util
import math
import os
import sys

import pytest

pytest.importorskip("torchdiffeq")
pytest.importorskip("sklearn")

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import flow_matching_time as fmt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_time_to_is_the_first_mark_within_the_threshold():
    rows = [{"mark_s": 1, "gap": 0.9}, {"mark_s": 2, "gap": 0.4}, {"mark_s": 4, "gap": 0.45}]
    assert fmt.time_to(rows, 1.0) == 1 and fmt.time_to(rows, 0.5) == 2
    assert fmt.time_to(rows, 0.1) is None


def test_each_method_trains_to_its_marks_and_is_scored_there(tmp_path):
    methods = ["flowforge", "ffjord", "recipe"]
    if importlib.util.find_spec("torchcfm") is not None:
        methods.append("torchcfm")
    out = tmp_path / "t.json"
    res = fmt.main(
        ["--toys", "moons", "--methods", *methods, "--marks", "0.2", "0.4", "--fm-budget", "0.4",
         "--ffjord-budget", "0.2", "--out", str(out)]
    )  # fmt: skip
    rows = res["toys"]["moons"]
    assert set(rows) == set(methods)
    assert [r["mark_s"] for r in rows["ffjord"]] == [0.2]  # its budget ends the marks
    for method in methods:
        for r in rows[method]:
            assert r["cpu_s"] >= r["mark_s"] and r["steps"] >= 1
            assert math.isfinite(r["gap"]) and r["gap_se"] > 0 and r["test_nfe"] > 0
    fm = rows["flowforge"]
    assert fm[1]["steps"] > fm[0]["steps"] and fm[1]["cpu_s"] >= 0.4
    md = out.with_suffix(".md").read_text()
    assert "| moons | flowforge |" in md and "to 0.1" in md
    merged = fmt.main(["--merge", str(out), "--out", str(tmp_path / "m.json")])
    assert merged["toys"] == res["toys"]


def test_merge_adds_the_methods_of_later_files(tmp_path):
    import json

    row = {"mark_s": 1, "cpu_s": 1.0, "gap": 0.2}
    common = {"args": {}, "torch": "x", "thresholds": [0.5]}
    a = {**common, "toys": {"moons": {"flowforge": [row]}, "rings": {"ffjord": [row]}}}
    b = {**common, "toys": {"moons": {"recipe": [{**row, "gap": 0.1}]}}}
    for name, part in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
    out = tmp_path / "m.json"
    res = fmt.main(
        ["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]
    )
    assert set(res["toys"]["moons"]) == {"flowforge", "recipe"} and set(res["toys"]) == {
        "moons",
        "rings",
    }
    assert "| moons | recipe | 0.100 | 1 s |" in out.with_suffix(".md").read_text()
