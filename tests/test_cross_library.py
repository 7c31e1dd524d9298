"""benchmarks/cross_library.py on a tiny case: every part runs and writes what the docs cite."""

import json
import os
import sys

import pytest
import torch

pytest.importorskip("sklearn")
zuko = pytest.importorskip("zuko")

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import cross_library as cl  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pca8_is_deterministic_standardised_and_8d():
    a, b = cl.pca8(), cl.pca8()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    train, val, test, logjac = a
    assert train.shape == (1000, 8) and val.shape[1] == 8 and test.shape[1] == 8
    assert torch.allclose(train.mean(0), torch.zeros(8), atol=1e-4)
    assert torch.allclose(train.std(0), torch.ones(8), atol=1e-4)
    assert logjac.shape == (len(test),) and torch.isfinite(logjac).all()


def test_interleaved_times_every_library_and_caps_the_slow_calls(monkeypatch):
    calls = []
    a = {("op", 1024): lambda: calls.append("a")}
    b = {("op", 1024): lambda: calls.append("b"), ("op", 20_000): lambda: calls.append("big")}
    res = cl.interleaved({"a": a, "b": b}, [("op", 1024), ("op", 20_000)], rounds=3)
    assert res["a"][("op", 1024)]["rounds"] == 3 and res["a"][("op", 1024)]["ex_s"] > 0
    assert res["b"][("op", 20_000)]["rounds"] == 3 and "a" in calls and "big" in calls
    assert ("op", 20_000) not in res["a"]  # an op a library does not have is left out
    monkeypatch.setattr(cl, "SKIP", 0.0)  # any time at 1,024 predicts too long a call
    monkeypatch.setattr(cl, "SLOW", 0.0)  # any call is slow: timed in the first round only
    calls.clear()
    res = cl.interleaved({"b": b}, [("op", 1024), ("op", 20_000)], rounds=3)
    assert res["b"][("op", 1024)]["rounds"] == 1
    assert res["b"][("op", 20_000)]["skipped"].startswith("not timed: batch 1,024 took")
    assert "big" not in calls


def test_quick_run_on_a_tiny_case(tmp_path):
    plot = tmp_path / "curve.png"
    argv = ["--quick", "--libs", "flowforge,zuko", "--models", "maf", "--datasets", "moons",
            "--train-batches", "32", "--eval-batches", "64", "--rounds", "1", "--steps", "8",
            "--budget", "0.4", "--chunk", "0.2", "--out", str(tmp_path), "--plot", str(plot),
            "--name", "tiny", "--rss-dataset", "none"]  # fmt: skip
    cl.main(argv)
    out = json.loads((tmp_path / "tiny.json").read_text())
    recs = out["throughput"]["records"]
    libs = {r["library"] for r in recs}
    assert {"flowforge", "zuko", "floor"} <= libs
    for r in recs:
        if r["library"] != "floor" or r["op"] != "sample":  # no sampling floor for a MAF
            assert r["ex_s"] > 0 and r["cpu_ex_s"] > 0 and r["rounds"] == 1
            assert len(r["loadavg_1min"]) == 2
    assert (
        out["throughput"]["params"]["moons/maf/flowforge"]
        == (out["throughput"]["params"]["moons/maf/zuko"])
    )
    mem = out["memory"]["records"]
    assert len(mem) == 2 and all(r["saved_MB_32"] > 0 for r in mem)
    nll = out["nll"]["records"]
    assert len(nll) == 2 and all(r["test_nll"] == r["test_nll"] for r in nll)  # not NaN
    runs = out["curve"]["runs"]
    assert set(runs) == {"flowforge", "zuko"}
    for r in runs.values():
        assert r["points"][0]["cpu_s"] == 0 and r["points"][-1]["cpu_s"] >= 0.4
        assert set(r["time_to"]) == {f"{t:g}" for t in cl.THRESHOLDS}
    assert plot.stat().st_size > 1000
    md = (tmp_path / "tiny.md").read_text()
    assert "| maf | zuko |" in md and "s to 105 nats" in md


def test_rss_growth_of_a_training_step():
    r = cl.rss_growth("flowforge", "maf", "moons", 4096)
    assert r["rss_before_MB"] > 50 and r["rss_growth_MB"] >= 0


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        cl.main(["--parts", "speed"])
    assert "unknown parts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cl.main(["--libs", "tensorflow_probability"])
    assert "unknown libraries" in capsys.readouterr().err


def test_compiled_ops_train_and_score_as_the_eager_model():
    data = cl.load("moons")
    m = cl.build("flowforge", "realnvp", 2)
    ops, max_abs_diff = cl._compiled_ops(m, data, [32], [64])
    assert set(ops) == {("train", 32), ("log_prob", 64)}  # sampling is not compiled
    before = [p.detach().clone() for p in m.module.parameters()]
    for op in ops.values():
        op()
        assert op.compile_s is not None and op.compile_s > 0
        first = op.compile_s
        op()
        assert op.compile_s == first  # the first call is the one timed as the compilation
    assert any(not torch.equal(a, p) for a, p in zip(before, m.module.parameters()))
    assert max_abs_diff() < 1e-4


def test_a_compiler_failure_is_a_result_and_other_errors_propagate():
    def broken():
        raise RuntimeError("inductor gave up\nmore lines")

    fns = {"a": {("op", 8): lambda: None}, "a+compile": {("op", 8): cl.CompiledOp(broken)}}
    errors = {}
    res = cl.interleaved(fns, [("op", 8)], rounds=2, errors=errors)
    assert res["a"][("op", 8)]["rounds"] == 2
    assert res["a+compile"][("op", 8)] == {"skipped": errors["a+compile"]}
    assert errors["a+compile"] == "did not compile: RuntimeError: inductor gave up"
    with pytest.raises(RuntimeError, match="inductor gave up"):  # no errors dict: raised
        cl.interleaved(fns, [("op", 8)], rounds=1)
    eager_broken = {"a": {("op", 8): broken}}
    with pytest.raises(RuntimeError):  # an eager library's error is never a result
        cl.interleaved(eager_broken, [("op", 8)], rounds=1, errors={})


def test_summary_of_compiled_runs_against_every_peer_mode():
    def rec(lib, v):
        return {"dataset": "moons", "threads": 1, "model": "maf", "op": "train", "batch": 256,
                "library": lib, "ex_s": v, "cpu_ex_s": v}  # fmt: skip

    tp = {
        "records": [
            rec("flowforge", 100.0),
            rec("flowforge+compile", 150.0),
            rec("zuko", 110.0),
            rec("zuko+compile", 140.0),
            rec("floor", 160.0),
        ]
    }
    (eager,) = cl.summary(tp)
    assert eager["fastest_peer"] == "zuko" and eager["vs_peer"] == pytest.approx(100 / 110)
    (comp,) = cl.summary(tp, compiled=True)
    assert comp["fastest_peer"] == "zuko+compile"
    assert comp["vs_peer"] == pytest.approx(150 / 140)
    assert comp["vs_floor"] == pytest.approx(150 / 160)
    assert "flowforge compiled against" in "\n".join(cl._summary_lines(tp, compiled=True))


@pytest.mark.parametrize(
    "build",
    [
        lambda ff: ff.models.RealNVP(shape=(1, 8, 8), scales=2, hidden=8, levels=17),
        lambda ff: ff.models.Glow(shape=(1, 8, 8), scales=2, steps=2, hidden=8, levels=17),
        lambda ff: ff.models.MAF(features=5, layers=2, hidden=[8]),
    ],
    ids=["realnvp-image", "glow", "maf"],
)
def test_the_floor_holds_every_conditioner_and_runs_it(build):
    """The floor times every conditioner of the model (checkerboard couplings included), each
    on an input of the shape it sees inside the flow."""
    from floor import conditioners, floor_fns

    import flowforge as ff

    flow = build(ff)
    held = {id(p) for net, _ in conditioners(flow) for p in net.parameters()}
    every = {id(p) for name, m in flow.named_modules() if name.endswith(".net")
             for p in m.parameters()}  # fmt: skip
    assert held == every and every
    step, density = floor_fns(flow, 4, 4)
    step()
    density()
