"""The one Trainer: objectives, EMA, learning-rate halving, exact resume with every option,
the batch-norm last batch, stability warnings, and keeping the best weights in memory."""

from __future__ import annotations

import json
import math
import os
import signal
import warnings

import pytest
import torch

import flowforge as ff
from flowforge.workbench import Loss, ReverseKL, Trainer, TrainingWarning, WorkbenchError
from flowforge.workbench.runner import train

TINY_CFG = {"model": {"name": "realnvp", "layers": 2, "hidden": [16]}, "layout": "vector"}


def _flow(seed=0, **kw):
    torch.manual_seed(seed)
    return ff.models.RealNVP(features=2, layers=2, hidden=(8,), **kw)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * torch.tensor([2.0, 0.5]) + 1.0


QUIET = {"progress": False, "echo": False}


def test_ema_weights_are_the_exponential_average():
    flow, x = _flow(), _data()
    seen = []

    def record(t):
        seen.append({k: v.detach().clone() for k, v in t.model.named_parameters()})

    tr = Trainer(flow, x, x[:16], {"epochs": 1, "batch_size": 16, "ema": 0.9,
                                   "tensorboard": False}, callback=record, **QUIET)  # fmt: skip
    start = {k: v.detach().clone() for k, v in flow.named_parameters()}
    tr.fit()
    want = dict(start)
    for step in seen:
        want = {k: 0.9 * want[k] + 0.1 * step[k] for k in want}
    got = dict(tr.ema.named_parameters())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    key = "transform.layers.1.net.net.2.weight"  # layer 0: the DataStandardize
    assert not torch.equal(got[key], dict(flow.named_parameters())[key])


def test_lr_halves_after_stale_epochs():
    flow, x = _flow(), _data()
    tr = Trainer(flow, x, x[:16], {"epochs": 6, "batch_size": 64, "halve_after": 2,
                                   "schedule": "constant", "warmup_steps": 0, "patience": 0,
                                   "tensorboard": False}, **QUIET)  # fmt: skip
    vals = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])  # improves, then stalls
    tr.objective.validate = lambda trainer, x, c: next(vals)
    taken = []  # the rate each optimizer step used
    tr.opt.register_step_pre_hook(lambda opt, a, k: taken.append(opt.param_groups[0]["lr"]))
    tr.fit()
    lrs = [r["lr"] for r in tr.history if r["type"] == "epoch"]
    # stale epochs 3 and 4 -> halved after epoch 4; stale 5, 6 -> halved again after epoch 6;
    # each epoch's record says the rate the next step takes
    assert lrs[:3] == [1e-3] * 3 and math.isclose(lrs[3], 5e-4) and math.isclose(lrs[4], 5e-4)
    assert math.isclose(lrs[5], 2.5e-4) and tr.lr_factor == 0.25
    per_epoch = len(taken) // 6
    assert taken[: 4 * per_epoch] == [1e-3] * (4 * per_epoch)  # from epoch 5's first step on:
    assert all(math.isclose(r, 5e-4) for r in taken[4 * per_epoch :])  # the halved rate


@pytest.mark.parametrize(
    "options",
    [
        {"ema": 0.95, "halve_after": 1, "schedule": "constant"},
        {"optimizer": "adamax", "val_samples": 2, "init_batch": 40},
    ],
    ids=["ema-halving", "adamax-samples"],
)
def test_resume_is_bit_identical_with_every_option(tmp_path, options):
    cfg = {**TINY_CFG, "model": {"name": "glow", "steps": 1, "hidden": 8, "blocks": 0},
           "layout": "image", "data": {"name": "digits", "limit": 96},
           "train": {"epochs": 3, "batch_size": 32, "warmup_steps": 2, "log_every": 1,
                     "tensorboard": False, **options}}  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    ra = train(cfg, a, **QUIET)
    assert ra["status"] == "finished" and ra["steps"] == 9

    def interrupt(trainer):
        if trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    assert train(cfg, b, callback=interrupt, **QUIET)["status"] == "interrupted"
    assert train({}, b, resume=True, **QUIET)["status"] == "finished"
    assert (a / "model.ff").read_bytes() == (b / "model.ff").read_bytes()
    assert (a / "checkpoint.safetensors").read_bytes() != b""

    def strip(p):
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (p / "metrics.jsonl").read_text().splitlines()]  # fmt: skip

    assert strip(a) == strip(b)


def test_a_loss_of_your_own_and_the_best_weights_in_memory():
    flow, x = _flow(), _data()

    def loss(model, xb, c):  # maximum likelihood written by hand
        return -model.log_prob(xb).mean()

    vals = iter([3.0, 2.0, 2.5])
    tr = Trainer(flow, x, x[:16], {"epochs": 3, "batch_size": 32, "patience": 0,
                                   "tensorboard": False}, objective=loss, **QUIET)  # fmt: skip
    snap = {}
    real = tr.objective.validate

    def validate(trainer, xv, c):
        v = next(vals)
        snap[v] = {k: t.clone() for k, t in trainer.model.state_dict().items()}
        real(trainer, xv, c)
        return v

    tr.objective.validate = validate
    res = tr.fit()
    assert res["best_epoch"] == 2 and res["best_val"] == 2.0
    tr.load_best()
    assert all(torch.equal(v, snap[2.0][k]) for k, v in flow.state_dict().items())


def test_reverse_kl_trains_without_data_and_skips_nonfinite_steps():
    target = ff.targets.get("u1")
    torch.manual_seed(0)
    flow = ff.models.Planar(features=2, layers=4)
    tr = Trainer(flow, train={"epochs": 1, "lr": 5e-3, "warmup_steps": 0,
                              "tensorboard": False},
                 objective=ReverseKL(target, batch=64), steps_per_epoch=150, **QUIET)  # fmt: skip
    first = ReverseKL(target, n_val=2048).validate(tr, None, None)
    res = tr.fit()
    assert res["steps"] == 150 and res["best_val"] < first
    with pytest.raises(WorkbenchError, match="steps_per_epoch"):
        Trainer(flow, objective=ReverseKL(target), **QUIET)


def test_batch_norm_never_sees_a_batch_of_one():
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,), batch_norm=True)
    x = _data(65)  # 65 = 2 x 32 + 1
    sizes = []

    def loss(m, xb, c):
        sizes.append(len(xb))
        return -m.log_prob(xb).mean()

    tr = Trainer(flow, x, x[:16], {"epochs": 2, "batch_size": 32, "tensorboard": False},
                 objective=Loss(loss), **QUIET)  # fmt: skip
    tr.fit()
    train_sizes = sizes[: tr.global_step]
    assert min(train_sizes) >= 2 and tr.steps_per_epoch == 2


def test_unknown_options_and_a_nonfinite_validation_are_errors():
    flow, x = _flow(), _data()
    with pytest.raises(WorkbenchError, match=r"unknown train options \['lrr'\]"):
        Trainer(flow, x, x, {"lrr": 1e-3}, **QUIET)
    tr = Trainer(flow, x, x[:8], {"epochs": 1, "tensorboard": False}, **QUIET)
    tr.objective.validate = lambda *a: float("nan")
    with pytest.raises(WorkbenchError, match="validation nll is nan"):
        tr.fit()


def test_a_loss_spike_is_reported_with_the_layer():
    flow, x = _flow(), _data(640)
    tr = Trainer(flow, x, x[:16], {"epochs": 1, "batch_size": 16, "tensorboard": False},
                 **QUIET)  # fmt: skip
    real = tr.objective.loss

    def spiky(trainer, model, xb, c):
        loss = real(trainer, model, xb, c)
        return loss * 1000 if trainer.global_step == 30 else loss

    tr.objective.loss = spiky
    res = tr.fit()
    assert len(res["warnings"]) >= 1
    w = res["warnings"][0]
    assert "step 31" in w and "jumped far above its running median" in w
    assert "largest gradient" in w and "layers." in w
    assert any(r["type"] == "warning" for r in tr.history)


def test_the_warm_up_is_at_most_a_tenth_of_a_short_run():
    flow = ff.models.RealNVP(features=2, layers=1, hidden=(4,))
    short = Trainer(flow, _data(64), _data(16), {"epochs": 5, "batch_size": 16,
                    "tensorboard": False}, **QUIET)  # fmt: skip
    assert short.steps_per_epoch == 4  # 20 steps: a warm-up of 2, not of the default 100
    assert short._lr_lambda(0) == pytest.approx(short.lr_factor / 2)
    assert short._lr_lambda(2) == pytest.approx(short.lr_factor)  # the cosine's start
    long = Trainer(flow, _data(64), _data(16), {"epochs": 500, "batch_size": 16,
                   "tensorboard": False}, **QUIET)  # fmt: skip
    assert long._lr_lambda(49) == pytest.approx(long.lr_factor / 2)  # 2,000 steps: all 100


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    # the command: a log file or a pipe gets the epoch lines, not a bar's redraws
    from cli_support import cli

    rc, out, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out",
                       tmp_path / "r", "--epochs", 2, "--limit", 500, "--model-kwargs",
                       '{"layers": 1, "hidden": [4]}')  # fmt: skip
    assert rc == 0 and "epoch 2/2" in out
    assert "step/s" not in err and "\r" not in err
    # from Python the bar is the caller's choice (a notebook's stderr is not a terminal either)
    cfg = {"model": {"name": "realnvp", "layers": 1, "hidden": [4]}, "data": "moons",
           "train": {"epochs": 1, "batch_size": 500}}  # fmt: skip
    train(cfg, tmp_path / "py", progress=True, echo=False)
    assert "step/s" in capsys.readouterr().err


def test_an_average_longer_than_the_run_is_warned_about():
    flow, x = _flow(), _data()
    tr = Trainer(flow, x, x[:16], {"epochs": 2, "batch_size": 16, "ema": 0.999,
                                   "tensorboard": False}, progress=False, echo=False)  # fmt: skip
    tr.fit()
    warned = [w for w in tr.warnings if "train.ema 0.999 averages over about 1,000 steps" in w]
    assert warned and "99% the initialisation's" in warned[0]
    cfg = {"epochs": 2, "batch_size": 16, "ema": 0.5, "tensorboard": False}
    tr = Trainer(_flow(), x, x[:16], cfg, progress=False, echo=False)
    tr.fit()
    assert not [w for w in tr.warnings if "train.ema" in w]


def test_a_model_without_a_config_resumes_though_it_writes_no_model_file(tmp_path):
    # the trainer writes model.ff only for a flow with a config (a builder's); a hand-built one
    # keeps its best weights in the checkpoint's run, and resuming must not ask for the file
    import flowforge as ff
    from flowforge.workbench import Trainer

    def flow():
        torch.manual_seed(0)
        from flowforge.nets import MLP

        net = lambda i, o: MLP(i, o, hidden=(4,))  # noqa: E731
        t = ff.Compose(
            ff.transforms.Coupling(ff.transforms.half_mask(2), net, ff.transforms.Affine())
        )
        return ff.Flow(t, ff.distributions.StandardNormal((2,)))

    x = torch.randn(64, 2)
    cfg = {"epochs": 1, "batch_size": 16, "tensorboard": False}
    first = flow()
    assert getattr(first, "config", None) is None
    Trainer(first, x, x[:16], cfg, out=tmp_path, progress=False, echo=False).fit()
    assert not (tmp_path / "model.ff").exists() and (tmp_path / "checkpoint.safetensors").exists()
    tr = Trainer(flow(), x, x[:16], cfg, out=tmp_path, progress=False, echo=False)
    assert tr.fit(resume=True)["status"] == "finished"  # (no "model.ff is missing")


def test_a_resumed_run_flags_the_spikes_the_uninterrupted_one_flags(tmp_path):
    """The spike watch's windows and the warnings are in the checkpoint: a resumed run started
    with empty windows, so a spike soon after the resume went unflagged (and later medians
    differed), and the summary lost the warnings from before the interrupt."""
    from flowforge.workbench.trainer import NLL

    class Spiky(NLL):  # bad batches at steps 12 and 16, either side of the interrupt
        def loss(self, trainer, model, x, context):
            extra = 50.0 if trainer.global_step + 1 in (12, 16) else 0.0
            return super().loss(trainer, model, x, context) + extra

    def make(out, callback=None):
        x = torch.randn(320, 2, generator=torch.Generator().manual_seed(1))
        cfg = {"epochs": 2, "batch_size": 32, "log_every": 1, "tensorboard": False}
        return Trainer(_flow(), x, x[:64], cfg, objective=Spiky(), seed=0, out=out,
                       callback=callback, **QUIET)  # fmt: skip

    def records(out):
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (out / "metrics.jsonl").read_text().splitlines()]  # fmt: skip

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ra = make(a).fit()
    assert [w[:13] for w in ra["warnings"]] == ["step 12: loss", "step 16: loss"]

    def stop(trainer):
        if trainer.global_step == 13:
            os.kill(os.getpid(), signal.SIGINT)

    assert make(b, stop).fit()["status"] == "interrupted"
    assert make(b).fit(resume=True)["warnings"] == ra["warnings"]
    assert records(a) == records(b)


def test_a_resumed_run_has_tensorboard_hide_what_followed_its_checkpoint(tmp_path, monkeypatch):
    """A killed run's TensorBoard events after its last checkpoint are purged on resume, as
    metrics.jsonl's records are (TensorBoard's purge_step)."""
    import sys
    import types

    made, logged = [], []

    class Writer:
        def __init__(self, logdir, purge_step=None):
            made.append(purge_step)
            logged.append([])

        def add_scalar(self, tag, value, step):
            logged[-1].append((tag, value, step))

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(
        SummaryWriter=Writer))  # fmt: skip
    cfg = {**TINY_CFG, "data": {"name": "moons", "limit": 96},
           "train": {"epochs": 2, "batch_size": 32, "tensorboard": True,
                     "log_every": 1}}  # fmt: skip

    def interrupt(trainer):
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    assert train(cfg, tmp_path / "r", callback=interrupt, **QUIET)["status"] == "interrupted"
    assert train({}, tmp_path / "r", resume=True, **QUIET)["status"] == "finished"
    # hidden from the checkpoint's step 2 on (an epoch's record can share its last step),
    # and the records kept at step 2 logged again
    assert made == [None, 2]
    at_2 = [x for x in logged[0] if x[2] == 2]
    assert at_2 and logged[1][: len(at_2)] == at_2


def test_a_hand_built_flow_in_a_run_folder_keeps_its_best_weights(tmp_path):
    """A flow without a builder config writes no model.ff: load_best() returned the last
    weights (val 2.52 against the reported best 2.35). The best weights now stay in memory and
    in the checkpoint, across an interrupt."""
    base = ff.distributions.StandardNormal(2)

    def hand_built():
        torch.manual_seed(0)
        t = ff.transforms
        return ff.Flow(ff.Compose(t.LULinear(2), t.Reverse(2), t.LULinear(2)), base)

    x = _data(40)
    val = _data(64, seed=1) * 3  # a validation set the flow overfits away from
    cfg = {"epochs": 6, "batch_size": 8, "lr": 0.05, "patience": 0, "tensorboard": False,
           "warmup_steps": 0}  # fmt: skip
    scores = {}
    for name, out in (("memory", None), ("folder", tmp_path / "a")):
        tr = Trainer(hand_built(), x, val, cfg, out=out, seed=0, **QUIET)
        s = tr.fit()
        assert s["best_epoch"] < 6  # the last epoch is not the best
        tr.load_best()
        scores[name] = (s["best_val_nll"], tr.nll(val))
    assert scores["folder"] == scores["memory"]
    assert math.isclose(scores["folder"][0], scores["folder"][1], rel_tol=1e-6)
    assert not (tmp_path / "a" / "model.ff").exists()

    def stop(trainer):
        if trainer.global_step == 22:  # after the best epoch
            os.kill(os.getpid(), signal.SIGINT)

    b = tmp_path / "b"
    assert Trainer(hand_built(), x, val, cfg, out=b, seed=0, callback=stop,
                   **QUIET).fit()["status"] == "interrupted"  # fmt: skip
    tr = Trainer(hand_built(), x, val, cfg, out=b, seed=0, **QUIET)
    assert tr.fit(resume=True)["best_val_nll"] == scores["memory"][0]
    tr.load_best()
    assert tr.nll(val) == scores["memory"][1]


def test_a_checkpoints_best_weights_must_fit_the_model(tmp_path):
    from flowforge import io
    from flowforge.workbench.checkpoint import read_checkpoint
    from flowforge.workbench.errors import RunError

    def flow():
        torch.manual_seed(0)
        t = ff.transforms
        return ff.Flow(ff.Compose(t.LULinear(2), t.Reverse(2)), ff.distributions.StandardNormal(2))

    def stop(trainer):
        if trainer.global_step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    x, cfg = _data(40), {"epochs": 3, "batch_size": 8, "tensorboard": False}
    run = tmp_path / "run"
    assert Trainer(flow(), x, x, cfg, out=run, callback=stop, **QUIET).fit()["status"] == (
        "interrupted"
    )
    path = run / "checkpoint.safetensors"
    meta, tensors = read_checkpoint(path)
    key = next(k for k in tensors if k.startswith("best/"))
    tensors[key] = torch.zeros(7)
    path.write_bytes(io.pack(tensors, meta))
    with pytest.raises(RunError, match="its best weights do not fit the model"):
        Trainer(flow(), x, x, cfg, out=run, **QUIET).fit(resume=True)


def test_a_long_warning_does_not_make_the_runs_own_checkpoint_unresumable(tmp_path):
    def stop(trainer):
        if trainer.global_step == 3:
            trainer.warnings.append("w" * 50_000)  # (a compiler's message, say)
            os.kill(os.getpid(), signal.SIGINT)

    x, cfg = _data(64), {"epochs": 2, "batch_size": 16, "tensorboard": False}
    run = tmp_path / "run"
    assert Trainer(_flow(), x, x, cfg, out=run, callback=stop, **QUIET).fit()["status"] == (
        "interrupted"
    )
    res = Trainer(_flow(), x, x, cfg, out=run, **QUIET).fit(resume=True)
    assert res["status"] == "finished" and res["warnings"] == ["w" * 10_000]


def test_loss_spikes_past_the_fifth_are_logged_not_printed(tmp_path, capsys):
    from flowforge.workbench.trainer import NLL

    class Spiky(NLL):  # a bad batch every third step from step 12
        def loss(self, trainer, model, x, context):
            step = trainer.global_step + 1
            extra = 50.0 if step >= 12 and step % 3 == 0 else 0.0
            return super().loss(trainer, model, x, context) + extra

    x = torch.randn(320, 2, generator=torch.Generator().manual_seed(1))
    cfg = {"epochs": 4, "batch_size": 32, "tensorboard": False}
    tr = Trainer(_flow(), x, x[:64], cfg, objective=Spiky(), seed=0, out=tmp_path, **QUIET)
    with pytest.warns(TrainingWarning) as said:  # (Python warnings: the CLI prints them)
        res = tr.fit()
    printed = [w for w in said if "jumped far above" in str(w.message)]
    logged = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    spikes = [r for r in logged if r["type"] == "warning" and "jumped far above" in r["message"]]
    assert len(printed) == 5 and len(spikes) > 8 and tr.spikes == len(spikes)
    assert any("further ones go to metrics.jsonl only" in w for w in res["warnings"])


def test_the_nonfinite_diagnosis_replays_the_steps_random_state():
    """The re-run that names the first non-finite layer draws the failed step's noise again
    (the CPU's and, for a model on a CUDA device, that device's: ``rng_states``) and leaves the
    random state as it found it."""
    from flowforge._util import rng_states
    from flowforge.workbench.trainer import find_nonfinite

    class Noisy(torch.nn.Module):  # infinite where its draw is 0.5 or more
        def forward(self, x):
            return x / (torch.rand(()) < 0.5).to(x.dtype)

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), Noisy())
    x = torch.ones(1, 2)
    torch.manual_seed(1)  # (draws 0.76, then 0.28)
    state = rng_states(torch.device("cpu"))
    assert not torch.isfinite(model(x)).all()  # the failed step
    after = torch.get_rng_state()
    where = find_nonfinite(model, lambda: model(x), state)
    assert "first non-finite output in 1" in where, where
    assert torch.equal(torch.get_rng_state(), after)
    assert "no layer output" in find_nonfinite(model, lambda: model(x))  # (the next draw)


def test_a_checkpoint_keeps_the_runs_device_random_state_for_every_rank(monkeypatch):
    """The checkpoint keeps the random state of the run's device (``rng/device``), and each
    rank restores it into its own device (rank 0's state is every rank's: the same seed, the
    same draws); a checkpoint without it restores as before."""
    from flowforge.workbench import checkpoint

    got = []
    state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: got.append((s, device)))
    tensors, meta = checkpoint._rng_state(torch.device("cuda", 0))
    assert torch.equal(tensors["rng/device"], state)
    assert "rng/device" not in checkpoint._rng_state(torch.device("cpu"))[0]
    checkpoint.set_rng_state(tensors, meta, torch.device("cuda", 3))  # rank 3's device
    assert len(got) == 1 and torch.equal(got[0][0], state) and got[0][1] == torch.device("cuda", 3)
    checkpoint.set_rng_state(tensors, meta, torch.device("cpu"))  # (resumed on the CPU)
    assert len(got) == 1


def test_the_largest_gradient_is_found_with_one_read(monkeypatch):
    """Naming the layer with the largest gradient (a loss spike's warning) reads the squared
    norms back once, not once per parameter (each a wait for the device on a GPU)."""
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))
    tr = Trainer(flow, _data(64), _data(16), {"epochs": 1, "tensorboard": False}, **QUIET)
    (-flow.log_prob(_data(16)).mean()).backward()
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(1) or tolist(t))
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: 1 / 0)  # (no float() per tensor)
    assert "largest gradient in" in tr._largest_gradient()
    assert len(reads) == 1


def test_the_checkpoint_is_given_the_runs_device(monkeypatch, tmp_path):
    """The Trainer hands its device to the checkpoint, whose random state it keeps and
    restores (``rng/device`` on a GPU): saved with it, and restored into it on resume."""
    from flowforge.workbench import trainer as trainer_module

    saved, restored = [], []
    save, restore = trainer_module.save_checkpoint, trainer_module.set_rng_state
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda *a, **k: saved.append(k.get("device")) or save(*a, **k))  # fmt: skip
    monkeypatch.setattr(trainer_module, "set_rng_state",
                        lambda t, m, d=None: restored.append(d) or restore(t, m, d))  # fmt: skip
    flow, x = _flow(), _data(64)
    cfg = {"epochs": 1, "batch_size": 16, "tensorboard": False}
    Trainer(flow, x, x[:16], cfg, out=tmp_path / "r", **QUIET).fit()
    Trainer(_flow(), x, x[:16], cfg, out=tmp_path / "r", **QUIET).fit(resume=True)
    assert saved and set(saved) == {torch.device("cpu")}
    assert restored == [torch.device("cpu")]


def test_out_of_memory_is_recognised_however_it_is_worded():
    from flowforge.workbench.errors import out_of_memory

    assert out_of_memory(MemoryError())
    assert out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not out_of_memory(RuntimeError("shape mismatch"))


def test_contexts_must_have_a_row_per_example_and_the_data_must_be_tensors():
    flow = _flow(context_features=1)
    x, v = _data(64), _data(32, seed=1)
    for kw, needle in (
        ({"train_context": torch.zeros(64, 1), "val_context": torch.zeros(1, 1)},
         "the validation context has 1 rows and the validation data 32"),
        ({"train_context": torch.zeros(5000, 1), "val_context": torch.zeros(32, 1)},
         "the training context has 5,000 rows"),
    ):  # fmt: skip
        with pytest.raises(WorkbenchError, match=needle):
            Trainer(flow, x, v, {"epochs": 1}, **kw, **QUIET)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8)
    with pytest.raises(
        WorkbenchError, match="train_x must be a tensor of examples, got DataLoader"
    ):
        Trainer(_flow(), loader, v, {"epochs": 1}, **QUIET)


def test_a_loss_that_is_not_a_scalar_is_one_clear_error():
    per_example = Loss(lambda m, x, c: -m.log_prob(x))
    t = Trainer(_flow(), _data(), _data(16, 1), {"epochs": 1}, objective=per_example, **QUIET)
    with pytest.raises(WorkbenchError, match=r"must be a scalar tensor .*got shape \(64,\)"):
        t.fit()


def test_a_gradient_that_overflows_after_a_finite_loss_is_said_to_be_the_backward_pass(
    tmp_path, capsys
):
    from cli_support import cli

    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--limit", 256,
                     "--set", "model.hidden=[8]", "--lr", "1e3", "--epochs", 5, "--out",
                     tmp_path / "r", "--no-progress", "--quiet")  # fmt: skip
    assert rc == 1
    assert "non-finite gradient" in err and "the backward pass overflowed" in err


def test_reverse_kl_validation_is_repeatable_and_leaves_the_model_alone():
    from flowforge.targets import TARGETS

    target = TARGETS["u1"]
    torch.manual_seed(0)
    flow = ff.models.ResidualFlow(features=2, blocks=2)
    t = Trainer(flow, None, None, {"epochs": 1}, objective=ReverseKL(target, 8, n_val=64),
                steps_per_epoch=1, **QUIET)  # fmt: skip
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    a, b = t.objective.validate(t, None, None), t.objective.validate(t, None, None)
    assert a == b
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())


def test_a_warm_up_longer_than_the_run_is_warned_of(capsys):
    said = "train.warmup_steps 50 is at least the run's 2 steps"
    with pytest.warns(TrainingWarning, match=said):
        Trainer(_flow(), _data(), _data(16, 1),
                {"epochs": 1, "batch_size": 32, "warmup_steps": 50},
                progress=False).fit()  # fmt: skip


def test_warnings_of_the_data_initialisation_pass_are_shown():
    # they were re-emitted with module=None, which Python drops silently (a compile fallback
    # of train.compile: splines went unsaid)
    flow, x = _flow(), _data()
    layer = flow.transform.layers[1]
    real = layer.forward

    def forward(*a, **k):
        warnings.warn("a layer's own warning", RuntimeWarning, stacklevel=2)
        return real(*a, **k)

    layer.forward = forward
    tr = Trainer(flow, x, x[:16], {"epochs": 1, "batch_size": 32, "tensorboard": False}, **QUIET)
    with pytest.warns(RuntimeWarning, match="a layer's own warning"):
        tr._init_data_dependent()


def test_validation_draws_only_where_the_score_is_random():
    """train.val_samples: 4 scored a continuous table's validation split four times over, to
    the same number each time; the draws stay where dequantization makes the score random."""
    x = _data()
    calls = []
    for dequantize, want in ((False, 1), (True, 4)):
        flow = _flow()
        if dequantize:
            flow = ff.Flow(flow.transform, flow.base, ff.transforms.UniformDequantization(16))
        tr = Trainer(flow, x, x[:16], {"epochs": 1, "batch_size": 16, "val_samples": 4,
                                       "tensorboard": False}, **QUIET)  # fmt: skip
        calls.clear()
        hook = flow.transform.register_forward_hook(lambda m, i, o: calls.append(1))
        with torch.no_grad():
            data = x[:16].clamp(0, 15).round() if dequantize else x[:16]
            value = tr.nll(data)
        hook.remove()
        assert len(calls) == want and math.isfinite(value)


def test_epoch_durations_do_not_follow_a_clock_stepped_back(tmp_path, monkeypatch):
    """An NTP step of the wall clock during an epoch wrote "time": -3599.9 into
    metrics.jsonl: the durations are measured on a monotonic clock."""
    import json
    import time

    real, calls = time.time, []

    def stepped_back():  # each reading an hour earlier than the one before
        calls.append(1)
        return real() - 3600.0 * len(calls)

    monkeypatch.setattr(time, "time", stepped_back)
    cfg = {**TINY_CFG, "data": {"name": "moons", "limit": 96},
           "train": {"epochs": 2, "batch_size": 32, "tensorboard": False}}  # fmt: skip
    assert train(cfg, tmp_path / "r", **QUIET)["status"] == "finished"
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    times = [r["time"] for r in map(json.loads, lines) if r["type"] == "epoch"]
    assert len(times) == 2 and all(0 <= t < 600 for t in times), times


def test_a_quiet_trainer_needs_no_progress_bar_package(monkeypatch):
    # (a Python user without the workbench extra: progress=False drew no bar but imported tqdm)
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # (import tqdm: ModuleNotFoundError)
    flow, x = _flow(), _data()
    for echo in (False, True):  # (its epoch lines printed without tqdm.write)
        result = Trainer(flow, x, x[:16], {"epochs": 1, "batch_size": 32, "tensorboard": False},
                         progress=False, echo=echo).fit()  # fmt: skip
        assert math.isfinite(result["best_val"])


def test_a_learning_rate_halved_on_a_plateau_is_whole_again_in_the_next_phase():
    # (the halving carried into the next phase, whose schedule the docs say restarts: an
    # M-flow's density phase trained at an eighth of its rate)
    import warnings

    from flowforge.workbench.trainer import NLL

    class Phased(NLL):
        name = "phased"

        def phase_starts(self, cfg):
            return [3]

        def validate(self, trainer, x, c):  # phase 1 worse every epoch, phase 2 better
            return [1.0, 2.0, 3.0, 0.5, 0.4, 0.3][trainer.epoch]

    torch.manual_seed(0)
    x = torch.randn(256, 2)
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))
    cfg = {"epochs": 6, "batch_size": 64, "halve_after": 1, "log_every": 1, "warmup_steps": 0,
           "schedule": "constant", "patience": 0}  # fmt: skip
    t = Trainer(flow, x, x[:64] + 0.1, cfg, objective=Phased(), progress=False, echo=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit()
    steps = [r for r in t.history if r["type"] == "step"]
    first = [r["lr"] for r in steps if (r["step"] - 1) % 4 == 0]
    assert first == pytest.approx([1e-3, 1e-3, 5e-4, 1e-3, 1e-3, 1e-3]), first


def test_the_alternating_m_flow_s_density_epochs_are_no_plateau():
    # (each density epoch of the first phase left the reconstruction error as it was, and
    # counted as stale: halve_after: 1 halved the rate after every one of them)
    from flowforge.workbench.mflow import MFlowObjective

    class Fake:
        phase_starts = [0, 6]

    objective = MFlowObjective("alternating")
    t = Fake()
    assert objective.validated_epochs(t, 0, 1) == 0  # (epoch 1: a density epoch)
    assert objective.validated_epochs(t, 0, 4) == 2  # (epochs 2 and 4)
    assert objective.validated_epochs(t, 5, 8) == 3  # (the density phase: every epoch)
    assert MFlowObjective("sequential").validated_epochs(t, 0, 4) == 4


def test_options_this_run_does_not_read_are_said():
    # (accepted and recorded, they changed nothing: a sweep over them gave identical runs)
    torch.manual_seed(0)
    x = torch.randn(128, 2)

    def said(cfg, objective=None):
        flow = ff.models.MAF(features=2, layers=1, hidden=(8,), standardize=False)
        t = Trainer(flow, x, x[:32], {"epochs": 1, "batch_size": 64, **cfg},
                    objective=objective, progress=False, echo=False)  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t.fit()
        return " | ".join(str(w.message) for w in caught if w.category is TrainingWarning)

    loss = Loss(lambda model, xb, c: -model.log_prob(xb).mean())
    assert "train.val_samples = 4 averages draws" in said({"val_samples": 4}, loss)
    assert "val_samples" not in said({"val_samples": 4})  # (the NLL reads it)
    assert "with train.schedule: constant it does nothing" in said(
        {"min_lr_ratio": 0.5, "schedule": "constant"}
    )
    assert "train.init_batch = 64 is the batch a data-initialised layer" in said({"init_batch": 64})
