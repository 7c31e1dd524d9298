"""The Trainer inside a researcher's own Python code: its folder is as safe as the command
line's, a loss of one's own may differentiate, warnings are Python warnings, records say
what happened, and the caller's model is left as it was given."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import flowforge as ff
from flowforge.workbench import Loss, RunError, Trainer, TrainingWarning, WorkbenchError

QUIET = {"progress": False, "echo": False}
CFG = {"epochs": 2, "batch_size": 32, "tensorboard": False}


def _flow(seed=0):
    torch.manual_seed(seed)
    return ff.models.RealNVP(features=2, layers=2, hidden=(8,))


def _data(n=128, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) + 1.0


def test_a_trainer_never_writes_over_an_earlier_training_or_into_a_users_folder(tmp_path):
    # the same cell run twice replaced the first run's model.ff and checkpoint and appended
    # to its metrics.jsonl (epoch records 1, 2, 1, 2)
    x, out = _data(), tmp_path / "run"
    assert Trainer(_flow(), x, x[:32], CFG, out=out, **QUIET).fit()["status"] == "finished"
    first = (out / "model.ff").read_bytes()
    with pytest.raises(RunError, match="holds an earlier training's checkpoint.safetensors"):
        Trainer(_flow(1), x, x[:32], CFG, out=out, **QUIET).fit()
    assert (out / "model.ff").read_bytes() == first
    again = Trainer(_flow(1), x, x[:32], CFG, out=out, overwrite=True, **QUIET)
    assert again.fit()["status"] == "finished"
    epochs = [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(ln)["type"] == "epoch"]  # fmt: skip
    assert epochs == [1, 2]
    # a folder of the user's: refused, overwrite or not, and left as it was
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "metrics.jsonl").write_text("{}\n")
    for overwrite in (False, True):
        with pytest.raises(RunError, match="holds files flowforge did not write"):
            Trainer(_flow(), x, x[:32], CFG, out=mine, overwrite=overwrite, **QUIET).fit()
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.jsonl", "notes.txt"]
    assert (mine / "metrics.jsonl").read_text() == "{}\n"


def test_load_best_before_any_validation_is_refused(tmp_path):
    # it loaded the folder's model.ff, an earlier training's, into the new model
    x = _data()

    def stop(t):
        if t.global_step == 2:
            raise RuntimeError("stop")

    tr = Trainer(_flow(), x, x[:32], CFG, callback=stop, **QUIET)
    with pytest.raises(RuntimeError, match="stop"):
        tr.fit()
    with pytest.raises(WorkbenchError, match="no epoch of this training has been validated"):
        tr.load_best()


def test_a_loss_of_ones_own_may_differentiate_with_respect_to_its_inputs():
    # a gradient penalty failed before the first step: the set-up pass and the default
    # validation ran the loss without gradients
    def penalised(model, x, context):
        x = x.clone().requires_grad_()
        lp = model.log_prob(x)
        (g,) = torch.autograd.grad(lp.sum(), x, create_graph=True)
        return -lp.mean() + 0.01 * g.square().sum(-1).mean()

    x = _data(256)
    tr = Trainer(_flow(), x, x[:64], CFG, objective=Loss(penalised, name="gp"), **QUIET)
    res = tr.fit()
    assert res["status"] == "finished" and math.isfinite(res["best_val"])
    # a NaN of the loss function itself is said as its own, not the flow's
    bad = Loss(lambda m, x, c: -m.log_prob(x).mean() * math.nan, name="mine")
    with pytest.raises(WorkbenchError, match="the loss function 'mine' itself returned"):
        Trainer(_flow(), x, x[:64], CFG, objective=bad, **QUIET).fit()


def test_the_trainers_warnings_are_python_warnings_said_every_time():
    # they were written to stderr past echo=False, the warnings filters and logging
    x = _data()
    cfg = {**CFG, "epochs": 1, "warmup_steps": 50}
    for _ in range(2):  # (a notebook cell run twice warns twice)
        with pytest.warns(TrainingWarning, match="warmup_steps 50 is at least"):
            Trainer(_flow(), x, x[:32], cfg, **QUIET).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (filters apply: here, none may be issued)
        warnings.simplefilter("ignore", TrainingWarning)
        res = Trainer(_flow(), x, x[:32], cfg, **QUIET).fit()
    assert any("warmup_steps" in w for w in res["warnings"])


def test_step_records_carry_the_rate_the_step_took():
    x = _data(256)
    cfg = {**CFG, "epochs": 1, "lr": 1.0, "warmup_steps": 4, "log_every": 1}
    taken = []
    tr = Trainer(_flow(), x, x[:32], cfg, **QUIET)
    tr.opt.register_step_pre_hook(lambda opt, a, k: taken.append(opt.param_groups[0]["lr"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingWarning)
        tr.fit()
    logged = [r["lr"] for r in tr.history if r["type"] == "step"]
    assert logged == pytest.approx(taken) and logged[0] == pytest.approx(0.25)


@pytest.mark.parametrize("seed", [2**32, -1, 1.7, "3", True])
def test_a_seed_is_an_integer_torch_can_hold(seed):
    # 2**32 repeated the run of 0, 1.7 became 1, "3" was taken
    x = _data()
    with pytest.raises(WorkbenchError, match="seed must be an integer from 0 to 2\\*\\*32 - 1"):
        Trainer(_flow(), x, x[:32], CFG, seed=seed, **QUIET)
    Trainer(_flow(), x, x[:32], CFG, seed=2**32 - 1, **QUIET)


def test_training_and_validation_data_that_disagree_are_refused_before_training():
    # found after a whole epoch, at the first validation, as a raw ValueError of the flow
    x = _data()
    with pytest.raises(WorkbenchError, match="val_x has examples of shape \\(3,\\)"):
        Trainer(_flow(), x, torch.randn(16, 3), CFG, **QUIET)
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=2, layers=1, hidden=(8,), context_features=1)
    c = torch.randn(len(x), 1)
    with pytest.raises(WorkbenchError, match="train_context is given and val_context is not"):
        Trainer(flow, x, x[:32], CFG, train_context=c, **QUIET)
    with pytest.raises(WorkbenchError, match="val_context has rows of shape \\(2,\\)"):
        Trainer(flow, x, x[:32], CFG, train_context=c, val_context=torch.randn(32, 2), **QUIET)


def test_memory_saving_is_the_trainings_and_the_model_is_given_back_as_it_was():
    x = _data()
    flow = _flow()
    chains = [m for m in flow.modules() if isinstance(m, ff.Compose)]
    during = []
    tr = Trainer(flow, x, x[:32], {**CFG, "memory_saving": True},
                 callback=lambda t: during.append(all(c.memory_saving for c in chains)),
                 **QUIET)  # fmt: skip
    assert not any(c.memory_saving for c in chains)  # (not before fit)
    tr.fit()
    assert during and all(during)
    assert not any(c.memory_saving for c in chains)  # (nor after)


def test_a_callback_can_end_the_run_after_its_epoch():
    # it could only raise KeyboardInterrupt: status "interrupted", the epoch unvalidated
    x = _data(256)
    tr = Trainer(_flow(), x, x[:32], {**CFG, "epochs": 5},
                 callback=lambda t: t.stop() if t.global_step == 3 else None,
                 **QUIET)  # fmt: skip
    res = tr.fit()
    epochs = [r for r in tr.history if r["type"] == "epoch"]
    assert res["status"] == "early-stopped" and len(epochs) == 1 and res["best_epoch"] == 1
    tr.load_best()


def test_the_trainers_own_mistakes_are_said_in_its_words(tmp_path):
    from flowforge.workbench import train

    x = _data()
    with pytest.raises(WorkbenchError, match="Linear has none: .*objective=Loss"):
        Trainer(torch.nn.Linear(2, 2), x, x[:32], CFG, **QUIET)
    frozen = _flow().requires_grad_(False)
    with pytest.raises(WorkbenchError, match="no parameter that requires a gradient"):
        Trainer(frozen, x, x[:32], CFG, **QUIET)
    with pytest.raises(WorkbenchError, match="needs data: val_x is None"):
        Trainer(_flow(), x, None, CFG, **QUIET)
    with pytest.raises(RunError, match="out must be the run folder's path, got None"):
        train({"model": {"name": "realnvp"}, "data": "moons"}, out=None)
    (tmp_path / "f").write_text("")
    with pytest.raises(RunError, match="exists and is not a folder"):
        Trainer(_flow(), x, x[:32], CFG, out=tmp_path / "f", **QUIET).fit()


def test_a_resume_on_other_data_is_refused(tmp_path):
    # it trained on without a word
    x, out = _data(256), tmp_path / "run"

    def stop(t):
        if t.global_step == 5:
            raise KeyboardInterrupt

    res = Trainer(_flow(), x, x[:32], CFG, out=out, callback=stop, **QUIET).fit()
    assert res["status"] == "interrupted"
    for other in (_data(256, seed=1), x.flip(0)):  # other values; the same rows reordered
        with pytest.raises(RunError, match="trained on other data than this Trainer's"):
            Trainer(_flow(), other, x[:32], CFG, out=out, **QUIET).fit(resume=True)
    assert Trainer(_flow(), x, x[:32], CFG, out=out, **QUIET).fit(resume=True)["status"] == (
        "finished"
    )


def test_a_trainer_leaves_a_train_run_folder_to_train(tmp_path, capsys):
    # with overwrite=True it replaced the run's files but kept its config.json: eval then
    # called the folder corrupt
    from cli_support import tiny_moons_run
    from flowforge.workbench.cli import main

    run = tiny_moons_run(capsys, tmp_path / "run")
    x = _data()
    for overwrite in (False, True):
        with pytest.raises(RunError, match="is a run folder of flowforge train"):
            Trainer(_flow(), x, x[:32], CFG, out=run, overwrite=overwrite, **QUIET).fit()
    # and train --overwrite of a run folder holding a file of the user's trains it again
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(run), "--overwrite", "--model", "realnvp", "--data",
                 "moons", "--epochs", "1", "--limit", "64", "--no-progress", "--quiet",
                 "--model-kwargs", '{"layers": 1, "hidden": [4]}']) == 0  # fmt: skip
    assert (run / "notes.txt").read_text() == "mine"


def test_the_default_validation_of_a_loss_holds_no_graph_of_the_parameters():
    seen = []

    def fn(model, x, context):
        seen.append((torch.is_grad_enabled(), any(p.requires_grad for p in model.parameters())))
        return -model.log_prob(x).mean()

    x = _data()
    flow = _flow()
    Trainer(flow, x, x[:32], {**CFG, "epochs": 1}, objective=Loss(fn), **QUIET).fit()
    assert (True, True) in seen  # training
    assert (True, False) in seen  # the set-up pass and validation: gradients, no parameters'
    assert all(p.requires_grad for p in flow.parameters())


def test_a_seed_may_be_a_numpy_or_torch_integer():
    import numpy as np

    x = _data()
    for seed in (np.int64(3), torch.tensor(3)):
        assert Trainer(_flow(), x, x[:32], CFG, seed=seed, **QUIET).seed == 3


def test_a_batch_larger_than_the_training_split_is_said():
    x = _data(40)
    with pytest.warns(TrainingWarning, match="batch_size 64 is larger than the training split's"):
        Trainer(_flow(), x, x[:8], {**CFG, "batch_size": 64, "epochs": 1}, **QUIET).fit()


def test_a_loss_may_differentiate_with_respect_to_the_parameters_too():
    # validation froze the parameters: a gradient-norm penalty failed there
    def penalised(model, x, context):
        nll = -model.log_prob(x).mean()
        grads = torch.autograd.grad(nll, list(model.parameters()), create_graph=True)
        return nll + 1e-4 * sum(g.square().sum() for g in grads)

    x = _data(256)
    res = Trainer(_flow(), x, x[:64], CFG, objective=Loss(penalised), **QUIET).fit()
    assert res["status"] == "finished" and math.isfinite(res["best_val"])


def _fit_warnings(flow, x, **kw):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Trainer(flow, x, x[:32], {**CFG, "epochs": 1}, **QUIET, **kw).fit()
    return [str(w.message) for w in seen if issubclass(w.category, TrainingWarning)]


def test_integer_valued_data_for_a_continuous_flow_is_said():
    # (x * 3).round() trained without a word: a density can spike on the integers and its
    # NLL fall without bound; the command line's table check says it, the Trainer did not
    x = _data()
    x[:, 1] = (x[:, 1] * 3).round()
    said = _fit_warnings(_flow(), x)
    assert any("column(s) 1 hold only integer values that repeat" in w and "dequantizer" in w
               for w in said), said  # fmt: skip
    assert not any("integer" in w for w in _fit_warnings(_flow(), _data()))  # continuous
    # pixel levels (wider than a table): said once for the whole example
    torch.manual_seed(0)
    wide = ff.models.RealNVP(features=100, layers=2, hidden=(8,))
    said = _fit_warnings(wide, torch.randint(0, 256, (64, 100)).float())
    assert any("train_x holds only integers (256 values in [0, 255])" in w for w in said), said
    # a dequantizing flow, or an integer flow, models integers: nothing to say
    torch.manual_seed(0)
    deq = ff.Flow(_flow().transform, ff.distributions.StandardNormal((2,)),
                  dequantizer=ff.transforms.ColumnDequantization(2, columns=[1]))  # fmt: skip
    x[:, 1] -= x[:, 1].min()
    assert not any("integer" in w for w in _fit_warnings(deq, x))
