"""torch.compile: the library traces without graph breaks (the data-dependent initialisation
and the input checks stay out of the graph), and the trainer's opt-in ``compile`` trains the
same model as eager, reports its compile time, and falls back to eager when compiling fails.
The trainer test also guards ``COMPILE_OPTIONS``: without one-thread kernels it aborts the
process (inductor's two-thread CPU kernels, torch 2.13, on this machine)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import flowforge as ff
from flowforge.workbench import Trainer, WorkbenchError

# inductor compiles C++ on the CPU: without a compiler there is nothing to test but the fall-back
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile on the CPU needs a C++ compiler",
)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g) * torch.tensor([2.0, 0.5, 1.0]) + 1.0


@needs_compiler
def test_a_flow_with_a_data_dependent_layer_compiles_in_one_graph():
    torch.manual_seed(0)
    flow = ff.models.MAF(features=3, layers=2, hidden=(8,))  # DataStandardize first
    x = _data()
    flow.train()
    flow.log_prob(x)  # the initialisation runs eagerly, once
    # fullgraph: any graph break raises; one-thread kernels, as the trainer compiles them
    compiled = torch.compile(flow, fullgraph=True, options={"cpp.threads": 1})
    got = compiled(x)
    torch.testing.assert_close(got, flow(x), rtol=1e-5, atol=1e-5)
    got.mean().backward()
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad)
    for setting in (True, False):  # the checks' switch leaves the graph whole either way
        flow.validate_args = setting
        torch._dynamo.reset()
        torch.compile(flow, fullgraph=True, options={"cpp.threads": 1})(x)
    flow.validate_args = None
    # a reloaded state decides from its buffer again, when it is loaded (eagerly): a resumed or
    # loaded model compiles in one graph too
    fresh = ff.models.MAF(features=3, layers=2, hidden=(8,))
    fresh.load_state_dict(flow.state_dict())
    assert fresh.transform.layers[0].__dict__.get("_seen_initialized") is True
    assert not ff.core.needs_data_init(fresh) and not fresh.transform.layers[0]._waiting()
    fresh = ff.models.MAF(features=3, layers=2, hidden=(8,))
    fresh.load_state_dict(flow.state_dict())
    torch._dynamo.reset()
    torch.compile(fresh, fullgraph=True, options={"cpp.threads": 1})(x).mean().backward()
    waiting = ff.models.MAF(features=3, layers=2, hidden=(8,))
    waiting.load_state_dict(ff.models.MAF(features=3, layers=2, hidden=(8,)).state_dict())
    assert ff.core.needs_data_init(waiting)  # an uninitialised state still waits


def _eager_and_compiled(tmp_path, x, build) -> dict:
    """``{compile: (history, metrics records)}`` of two 2-epoch runs of ``build()`` on ``x``,
    eager and compiled, from the same seed."""
    out = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        cfg = {"epochs": 2, "batch_size": 16, "tensorboard": False, "compile": compile_,
               "log_every": 1}  # fmt: skip
        folder = tmp_path / str(compile_)
        folder.mkdir()
        tr = Trainer(build(), x, x[:16], cfg, out=folder, progress=False, echo=False)
        tr.fit()
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        out[compile_] = (tr.history, [json.loads(line) for line in lines])
    return out


@needs_compiler
def test_trainer_compile_trains_like_eager_and_reports_its_time(tmp_path):
    runs = _eager_and_compiled(
        tmp_path, _data(), lambda: ff.models.RealNVP(features=3, layers=2, hidden=(8,))
    )
    for compile_, (_, records) in runs.items():
        assert ("compile" in {r["type"] for r in records}) == compile_
    eager, compiled = ([r for r in h if r["type"] == "epoch"] for h, _ in runs.values())
    for a, b in zip(eager, compiled):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-4)


@needs_compiler
def test_trainer_compile_with_flow_matching_compiles_the_velocity_network(tmp_path):
    pytest.importorskip("torchdiffeq")
    x = _data(256)[:, :2]
    runs = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        flow = ff.models.build("cnf", features=2, hidden=(16, 16))
        cfg = {"epochs": 2, "batch_size": 64, "tensorboard": False, "compile": compile_,
               "objective": "flow-matching"}  # fmt: skip
        out = tmp_path / str(compile_)
        out.mkdir()
        tr = Trainer(flow, x, x[:64], cfg, out=out, progress=False, echo=False)
        assert tr.fit()["status"] == "finished"
        assert not [w for w in tr.warnings if "compil" in w]  # no fall-back
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert ("compile" in {r["type"] for r in records}) == compile_
        runs[compile_] = [r["train_loss"] for r in tr.history if r["type"] == "epoch"]
    assert runs[True] == pytest.approx(runs[False], rel=1e-4, abs=1e-5)


def _compiler_that_fails(message: str):
    """A stand-in for ``torch.compile`` whose compiled model raises ``message`` when called."""

    def compile_(model, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError(message)

        return call

    return compile_


def test_running_out_of_memory_is_not_taken_for_a_compiler_failure(monkeypatch):
    """A compiled step that runs out of memory raises as such (the eager step needs the memory
    too), instead of switching compiling off with a warning that blames the compiler."""
    oom = getattr(torch, "OutOfMemoryError", MemoryError)

    def compile_(model, *args, **kwargs):
        def call(*a, **k):
            raise oom("CUDA out of memory. Tried to allocate 2.00 GiB")

        return call

    monkeypatch.setattr(torch, "compile", compile_)
    flow = ff.models.RealNVP(features=3, layers=2, hidden=(8,))
    x = _data()
    tr = Trainer(flow, x, x[:16], {"epochs": 1, "batch_size": 16, "tensorboard": False,
                                   "compile": True}, progress=False, echo=False)  # fmt: skip
    with pytest.raises(oom):
        tr.fit()
    assert not [w for w in tr.warnings if "compiling failed" in w]


def test_trainer_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch, "compile", _compiler_that_fails("no C++ compiler\nmore detail"))
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=3, layers=2, hidden=(8,))
    x = _data()
    tr = Trainer(flow, x, x[:16], {"epochs": 3, "batch_size": 16, "tensorboard": False,
                                   "compile": True}, progress=False, echo=False)  # fmt: skip
    # the eager model for the rest of the run: later epochs do not call the broken one again
    assert tr.fit()["status"] == "finished" and tr.epoch == 3
    failed = [w for w in tr.warnings if "compiling failed" in w]
    assert len(failed) == 1 and "compiling failed (RuntimeError: no C++ compiler)" in failed[0]
    both = {"epochs": 1, "compile": True, "memory_saving": True, "tensorboard": False}
    with pytest.raises(WorkbenchError, match="compile and train.memory_saving"):
        Trainer(flow, x, x[:16], both, progress=False, echo=False)  # before any folder


class _FailsBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("the backward graph did not compile")


def test_a_compile_failure_in_the_backward_pass_redoes_the_step_eagerly(monkeypatch):
    # AOTAutograd compiles the backward pass on the first backward: a failure there must fall
    # back like one in the forward pass, the step redone from the same random state
    def compile_whose_backward_fails(model, *args, **kwargs):
        def call(*a, **k):
            return _FailsBackward.apply(model(*a, **k))

        return call

    # discrete data: the step draws dequantization noise, which the redo must draw again
    x = torch.randint(0, 4, (64, 3), generator=torch.Generator().manual_seed(0))
    losses = {}
    for broken in (False, True):
        torch.manual_seed(0)
        flow = ff.models.RealNVP(features=3, layers=2, hidden=(8,), levels=4)
        cfg = {"epochs": 2, "batch_size": 16, "tensorboard": False, "compile": broken}
        if broken:
            monkeypatch.setattr(torch, "compile", compile_whose_backward_fails)
        tr = Trainer(flow, x, x[:16], cfg, progress=False, echo=False)
        assert tr.fit()["status"] == "finished"
        losses[broken] = [r["train_loss"] for r in tr.history if r["type"] == "epoch"]
        if broken:
            failed = [w for w in tr.warnings if "compiling failed" in w]
            assert len(failed) == 1 and "the backward graph did not compile" in failed[0]
    assert losses[True] == losses[False]  # the same steps, eagerly, from the same state


class _ScaledBackward(torch.autograd.Function):
    """The identity, whose backward multiplies the gradient by ``scale``."""

    scale = 1.0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return _ScaledBackward.scale * g


def _with_a_fake_compiler(monkeypatch, compile_, objective=None):
    """The same seeded RealNVP (batch norm, dequantized levels) trained for 2 epochs eagerly
    and with ``torch.compile`` replaced by ``compile_`` (``objective(trainer)``: the compiled
    run's objective, in place of its own): for each, the epochs' losses, the buffers, the
    compile warnings and (compiled) the Trainer."""
    x = torch.randint(0, 4, (64, 3), generator=torch.Generator().manual_seed(0))  # (noise drawn)
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        flow = ff.models.RealNVP(features=3, layers=2, hidden=(8,), levels=4, batch_norm=True)
        cfg = {"epochs": 2, "batch_size": 16, "tensorboard": False, "compile": compiled}
        if compiled:
            monkeypatch.setattr(torch, "compile", compile_)
        tr = Trainer(flow, x, x[:16], cfg, progress=False, echo=False)
        if compiled and objective is not None:
            monkeypatch.setattr(tr, "objective", objective(tr))
        assert tr.fit()["status"] == "finished"
        runs.append((
            [r["train_loss"] for r in tr.history if r["type"] == "epoch"],
            [b.clone() for b in flow.buffers()],
            [w for w in tr.warnings if "compil" in w and "first step compiles" not in w],
            tr,
        ))  # fmt: skip
    return runs


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_a_compiled_step_with_wrong_gradients_is_caught_and_the_run_goes_on_eagerly(
    monkeypatch, scale
):
    # torch 2.13's inductor gave BNAF the right loss and wrong gradients (an audit): the first
    # compiled step is checked against the eager one; where they agree (scale 1) the compiled
    # steps stand and a batch norm's running statistics are updated once, as eagerly
    calls = []

    def compile_(model, *args, **kwargs):
        def call(*a, **k):
            calls.append(1)
            return _ScaledBackward.apply(model(*a, **k))

        return call

    monkeypatch.setattr(_ScaledBackward, "scale", scale)
    eager, (losses, buffers, warned, _) = _with_a_fake_compiler(monkeypatch, compile_)
    assert losses == eager[0] and all(torch.equal(a, b) for a, b in zip(buffers, eager[1]))
    if scale == 1.0:
        assert not warned and len(calls) == 8  # (every step compiled)
    else:
        assert len(warned) == 1 and "first step disagrees with the eager model's" in warned[0]
        assert "by 0.5 of the largest gradient" in warned[0] and len(calls) == 1


def test_an_eager_check_that_runs_out_of_memory_leaves_the_compiled_run_as_it_was(monkeypatch):
    # (a review) the eager step that checks the first compiled one keeps more for backward
    # than fused kernels do: running out of memory there ended a run that trained compiled
    calls = []

    def compile_(model, *args, **kwargs):
        def call(*a, **k):
            calls.append(1)
            return model(*a, **k)

        return call

    eager, (losses, buffers, warned, tr) = _with_a_fake_compiler(
        monkeypatch, compile_, lambda tr: _OutOfMemoryEagerly(tr.objective, tr.model)
    )
    assert losses == eager[0] and all(torch.equal(a, b) for a, b in zip(buffers, eager[1]))
    # (the compile is recorded, and the eager model kept for a fallback)
    assert [r["type"] for r in tr.history].count("compile") == 1
    assert tr._eager_model is tr.model
    assert len(warned) == 1 and "ran out of memory; training goes on compiled" in warned[0]
    assert len(calls) == 8  # (every step compiled)


class _OutOfMemoryEagerly:
    """An objective whose first training step on the eager model ``flow`` runs out of
    memory, as torch's CPU allocator says it."""

    def __init__(self, inner, flow):
        self.inner, self.flow = inner, flow

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, trainer, model, x, context):
        if model is self.flow and torch.is_grad_enabled():
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")
        return self.inner.loss(trainer, model, x, context)


def test_an_error_the_eager_model_raises_too_is_the_runs_not_a_compile_failure(monkeypatch):
    monkeypatch.setattr(torch, "compile", _compiler_that_fails("the compiled graph failed"))
    flow = ff.models.RealNVP(features=3, layers=2, hidden=(8,))
    x = _data()
    cfg = {"epochs": 1, "batch_size": 16, "tensorboard": False, "compile": True}
    tr = Trainer(flow, x, x[:16], cfg, progress=False, echo=False)
    monkeypatch.setattr(tr, "objective", _Raising(tr.objective), raising=False)
    with pytest.raises(ValueError, match="the data's own error"):
        tr.fit()
    assert not any("compiling failed" in w for w in tr.warnings)


class _Raising:
    """An objective whose eager loss raises, as bad data would."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, trainer, model, x, context):
        if torch.is_grad_enabled():  # a training step (not the no-grad initialisation)
            raise ValueError("the data's own error")
        return self.inner.loss(trainer, model, x, context)


@needs_compiler
def test_trainer_compile_on_discrete_data_draws_the_eager_runs_noise(tmp_path):
    # the dequantization noise is drawn inside the compiled graph: from torch's generator
    # (COMPILE_OPTIONS' fallback_random), so the compiled run sees the eager run's data
    x = torch.randint(0, 4, (64, 3), generator=torch.Generator().manual_seed(0))
    runs = _eager_and_compiled(
        tmp_path, x, lambda: ff.models.RealNVP(features=3, layers=2, hidden=(8,), levels=4)
    )
    eager, compiled = (
        [r["loss"] for r in recs if r["type"] == "step"] for _, recs in runs.values()
    )
    assert compiled[0] == pytest.approx(eager[0], rel=1e-6)  # the first step: the same
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-4)


@pytest.fixture
def eager_splines_after():
    from flowforge.transforms import splines

    yield splines
    splines._compiled, splines._compile_failed = None, None
    splines.RationalQuadratic.compiled = False


@needs_compiler
def test_compiled_splines_agree_with_eager_forward_inverse_and_gradients(eager_splines_after):
    torch.manual_seed(0)
    rq = ff.transforms.RationalQuadratic(bins=4, bound=2.0)
    x = torch.randn(32, 3) * 1.5  # some outside [-2, 2]: the identity tails
    params = torch.randn(32, 3, rq.params_per_dim, requires_grad=True)
    want = rq(x, params)
    gw = torch.autograd.grad(sum(t.sum() for t in want), params)[0]
    rq.compiled = True
    got = rq(x, params)
    gg = torch.autograd.grad(sum(t.sum() for t in got), params)[0]
    for a, b in zip(want + (gw,), got + (gg,)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    z, _ = want
    torch.testing.assert_close(rq.inverse(z, params)[0], x, rtol=1e-4, atol=1e-4)
    assert eager_splines_after._compiled is not None  # it did go through torch.compile
    # a graph backpropagated twice (retain_graph=True): as the docstring says, with torch's
    # donated buffers off around both passes
    from torch._functorch import config as functorch_config

    with functorch_config.patch(donated_buffer=False):
        y, ladj = rq(x, params)
        g1 = torch.autograd.grad(y.sum(), params, retain_graph=True)[0]
        g2 = torch.autograd.grad(ladj.sum(), params)[0]
    want_y, want_ladj = rq.__class__(bins=4, bound=2.0)(x, params)  # (a fresh layer: eager)
    torch.testing.assert_close(g1, torch.autograd.grad(want_y.sum(), params, retain_graph=True)[0])
    torch.testing.assert_close(g2, torch.autograd.grad(want_ladj.sum(), params)[0])


@needs_compiler
def test_trainer_compile_splines_trains_like_eager(tmp_path, eager_splines_after):
    x = _data()
    losses = {}
    for compile_ in (False, "splines"):
        torch.manual_seed(0)
        flow = ff.models.NSF(features=3, layers=2, hidden=(8,), bins=4)
        cfg = {"epochs": 2, "batch_size": 16, "tensorboard": False, "compile": compile_}
        tr = Trainer(flow, x, x[:16], cfg, progress=False, echo=False)
        assert tr.fit()["status"] == "finished" and not tr.warnings
        splines = [m for m in flow.modules() if isinstance(m, ff.transforms.RationalQuadratic)]
        assert not any(m.compiled for m in splines)  # (the training's: switched back after it)
        losses[compile_] = [r["train_loss"] for r in tr.history if r["type"] == "epoch"]
    assert losses["splines"] == pytest.approx(losses[False], rel=1e-4, abs=1e-4)
    # the compiling first step is timed and logged, as for train.compile: true
    assert any(r["type"] == "compile" and r["seconds"] > 0 for r in tr.history)
    with pytest.raises(WorkbenchError, match="this model has none"):
        Trainer(ff.models.RealNVP(features=3, layers=1, hidden=(4,)), x, x[:16],
                {"compile": "splines"}, progress=False, echo=False)  # fmt: skip


def test_compiled_splines_fall_back_to_eager_once(monkeypatch, eager_splines_after):
    splines = eager_splines_after

    def broken(fn, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    rq = ff.transforms.RationalQuadratic(bins=4)
    x, params = torch.randn(5, 2), torch.randn(5, 2, rq.params_per_dim)
    want = rq(x, params)
    rq.compiled = True
    with pytest.raises(RuntimeError, match="split"):  # the caller's error: compiling stays on
        rq(x, params[..., :-1])
    assert splines._compile_failed is None
    with pytest.warns(RuntimeWarning, match=r"compiling the spline failed \(RuntimeError: no C"):
        got = rq(x, params)
    assert all(torch.equal(a, b) for a, b in zip(got, want))  # eager from now on
    assert splines._compile_failed is not None


def test_the_bits_back_coder_keeps_the_eager_spline(eager_splines_after):
    from flowforge.bitsback import _copy64

    ff.transforms.RationalQuadratic.compiled = True  # on for every layer...
    flow = ff.models.NSF(features=4, layers=2, hidden=(8,), bins=4, levels=5)
    copy = _copy64(flow)  # ...but the coder's copy evaluates eagerly (files decode anywhere)
    splines = [m for m in copy.modules() if isinstance(m, ff.transforms.RationalQuadratic)]
    assert splines and not any(m.compiled for m in splines)
