"""The workbench driven from Python, as a notebook does (the notebook audit's findings)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge.workbench import DataError, Trainer, WorkbenchError, load_dataset, resolve_config


def _one_short_line(message: str, most: int = 300) -> None:
    assert "\n" not in message and len(message) < most, message


# -- data given as a value (M6) ------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [lambda x: x, lambda x: {"name": x}], ids=["data", "data.name"])
@pytest.mark.parametrize("make", [np.zeros, torch.zeros], ids=["array", "tensor"])
def test_in_memory_data_is_refused_in_one_line_naming_what_works(wrap, make):
    with pytest.raises(WorkbenchError) as e:
        resolve_config({"model": "realnvp", "data": wrap(make((300, 3)))})
    msg = str(e.value)
    _one_short_line(msg)
    assert "shape (300, 3)" in msg and "np.save" in msg and "Trainer(flow, x_train" in msg
    with pytest.raises(DataError) as e:
        load_dataset(make((300, 3)))
    _one_short_line(str(e.value))
    assert "np.save" in str(e.value)


def test_a_path_object_names_the_data_and_long_values_are_cut():
    cfg = resolve_config({"model": "realnvp", "data": Path("x.npy")})
    assert cfg["data"]["name"] == "x.npy"
    cfg = resolve_config({"model": "realnvp", "data": {"name": Path("x.npy")}})
    assert cfg["data"]["name"] == "x.npy"
    with pytest.raises(WorkbenchError) as e:  # any echoed value is bounded
        resolve_config({"model": "realnvp", "data": "moons", "train": {"epochs": "9" * 5000}})
    _one_short_line(str(e.value))
    with pytest.raises(WorkbenchError) as e:
        resolve_config({"model": list(range(5000)), "data": "moons"})
    _one_short_line(str(e.value))


def test_the_trainer_refusing_an_array_gives_the_conversion():
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))
    x = np.zeros((20, 2))
    with pytest.raises(WorkbenchError, match=r"torch\.as_tensor\(train_x, dtype=torch\.float32\)"):
        Trainer(flow, x, torch.zeros(5, 2), {"epochs": 1}, progress=False, echo=False)


# -- numpy scalars (M7) --------------------------------------------------------------------------


def test_numpy_scalars_are_taken_as_python_numbers_and_recorded_as_plain_json():
    flow = ff.models.RealNVP(features=np.int64(3), layers=np.arange(3)[2], hidden=[np.int32(8)])
    kw = flow.config["kwargs"]
    assert type(kw["features"]) is int and type(kw["layers"]) is int
    assert all(type(h) is int for h in kw["hidden"])
    json.dumps(flow.config)
    cfg = resolve_config(
        {
            "seed": np.int64(3),
            "model": {"name": "realnvp", "hidden": [np.int64(16)]},
            "data": {"name": "moons", "seed": np.uint8(1), "n_train": np.int64(300)},
            "train": {"epochs": np.int64(2), "lr": np.float32(0.5), "tensorboard": np.bool_(0)},
        }
    )
    assert cfg["seed"] == 3 and type(cfg["seed"]) is int
    assert type(cfg["data"]["seed"]) is int and type(cfg["data"]["options"]["n_train"]) is int
    assert type(cfg["model"]["kwargs"]["hidden"][0]) is int
    assert type(cfg["train"]["epochs"]) is int and cfg["train"]["lr"] == 0.5
    assert cfg["train"]["tensorboard"] is False
    json.dumps(cfg)
    x = torch.randn(40, 3)
    t = Trainer(flow, x[:30], x[30:], {"epochs": np.int64(1), "batch_size": np.int16(8)},
                seed=np.int64(1), progress=False, echo=False)  # fmt: skip
    assert type(t.cfg["epochs"]) is int and type(t.cfg["batch_size"]) is int


def test_numpy_bools_are_still_no_integers():
    with pytest.raises(WorkbenchError, match="train.epochs must be an integer"):
        resolve_config({"model": "realnvp", "data": "moons", "train": {"epochs": np.bool_(1)}})
    with pytest.raises(ValueError, match="wrong type"):
        ff.models.RealNVP(features=np.bool_(1))


# -- the report and the notebook's matplotlib (M4) ---------------------------------------------


def test_a_report_leaves_the_callers_matplotlib_backend_and_settings(tmp_path):
    import matplotlib

    from flowforge.workbench import train
    from flowforge.workbench.report import write_report

    out = tmp_path / "r"
    train({"model": {"name": "realnvp", "layers": 2, "hidden": [8]},
           "data": {"name": "moons", "n_train": 200, "n_val": 100, "n_test": 100},
           "train": {"epochs": 1}}, out, progress=False, echo=False)  # fmt: skip
    was = matplotlib.get_backend()
    matplotlib.use("svg")  # (a notebook's inline backend)
    try:
        before = dict(matplotlib.rcParams)
        write_report(out)
        assert matplotlib.get_backend() == "svg"
        assert dict(matplotlib.rcParams) == before and matplotlib.rcParams["text.parse_math"]
        assert (out / "report.html").is_file() and (out / "report" / "curves.png").is_file()
    finally:
        matplotlib.use(was)


def test_resume_without_a_run_folder_says_what_to_do():
    from flowforge.workbench import RunError

    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))
    x = torch.randn(40, 2)
    t = Trainer(flow, x[:30], x[30:], {"epochs": 1}, progress=False, echo=False)
    with pytest.raises(RunError, match=r"give the Trainer out=.*call fit\(\) again") as e:
        t.fit(resume=True)
    _one_short_line(str(e.value))


# -- float64 data a float32 model cannot resolve (H1) ------------------------------------------


def test_the_trainer_refuses_float64_columns_its_model_would_round_onto_a_few_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64)
    big = x.clone()
    big[:, 0] = 1.7e9 + 10 * big[:, 0]  # (float32's spacing there is 128)
    opts = {"epochs": 1, "batch_size": 50}
    with pytest.raises(WorkbenchError, match=r"flow\.double\(\)") as e:
        Trainer(ff.models.RealNVP(features=2, layers=2, hidden=(8,)), big[:150], big[150:],
                opts, progress=False, echo=False)  # fmt: skip
    _one_short_line(str(e.value))
    assert "train_x loses its precision in the flow's torch.float32: entry 0" in str(e.value)
    with pytest.raises(WorkbenchError, match="val_x loses its precision"):  # (validation too)
        Trainer(ff.models.RealNVP(features=2, layers=2, hidden=(8,)), x[:150], big[150:],
                opts, progress=False, echo=False)  # fmt: skip
    # ordinary float64 data, and the remedy, train
    Trainer(ff.models.RealNVP(features=2, layers=2, hidden=(8,)), x[:150], x[150:], opts,
            progress=False, echo=False)  # fmt: skip
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,), standardize=True).double()
    t = Trainer(flow, big[:150], big[150:], opts, progress=False, echo=False)
    assert t.fit()["status"] == "finished"


# -- a flow initialised from a few rows before fit() (M3) --------------------------------------


def test_fit_warns_once_when_a_layer_took_its_statistics_from_a_few_rows_before_it():
    import warnings

    x = torch.randn(200, 2) * 5 + 100
    opts = {"epochs": 1, "batch_size": 50}

    def fitted(peek: int):
        torch.manual_seed(0)
        flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,), standardize=True)
        if peek:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flow.log_prob(x[:peek])  # (a fresh flow is in training mode)
        t = Trainer(flow, x[:150], x[150:], opts, progress=False, echo=False)
        summary = t.fit()
        assert not any(m._forward_pre_hooks for m in flow.modules())  # (none left to run)
        return [w for w in summary["warnings"] if "before fit()" in w]

    said = fitted(3)
    assert len(said) == 1 and "only 3 rows" in said[0] and "flow.eval()" in said[0]
    _one_short_line(said[0], 500)
    assert fitted(0) == [] and fitted(100) == []  # (the Trainer's own, or a larger sample)


def test_the_second_review_a_constant_column_a_second_stage_a_reload_one_line(tmp_path):
    """A review of the notebook fixes: the Trainer's float64 check refused an exactly constant
    column (a context of 0.3 everywhere: "varies by 5.55e-17"); a second Trainer continuing a
    flow that the first had initialised from its batch of 128 warned of a stray call;
    init_rows outlived load_state_dict; a value whose repr spans lines broke the one line."""
    import warnings

    from flowforge.core import DataInit
    from flowforge.workbench.errors import shown

    torch.manual_seed(0)
    y = torch.randn(400, 2, dtype=torch.float64)
    c = torch.full((400, 1), 0.3, dtype=torch.float64)
    t = Trainer(ff.models.MAF(features=2, context_features=1, layers=1, hidden=(8,)), y[:300],
                y[300:], {"epochs": 1, "batch_size": 100}, progress=False, echo=False,
                train_context=c[:300], val_context=c[300:])  # fmt: skip
    assert t.fit()["status"] == "finished"
    x = torch.randn(1000, 2) * 3 + 5
    flow = ff.Flow([ff.transforms.ActNorm(2), ff.transforms.ActNorm(2)],
                   ff.distributions.StandardNormal(2))  # fmt: skip
    Trainer(flow, x[:800], x[800:], {"epochs": 1, "batch_size": 128}, progress=False,
            echo=False).fit()  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = Trainer(flow, x[:800], x[800:], {"epochs": 1, "batch_size": 512, "lr": 1e-4},
                         progress=False, echo=False).fit()  # fmt: skip
    assert not any("initialised itself before" in w for w in second.get("warnings", []))
    layers = [m for m in flow.modules() if isinstance(m, DataInit)]
    assert all(m.__dict__.get("init_rows") for m in layers)
    flow.load_state_dict(flow.state_dict())
    assert not any("init_rows" in m.__dict__ for m in layers)
    table = type("Table", (), {"__repr__": lambda self: "   a  b\n0  1  4\n1  2  5"})()
    assert "\n" not in shown(table) and "a b 0 1 4" in shown(table)


def test_refusals_a_python_caller_meets_name_the_python_spelling(tmp_path):
    """A second train() into the same folder said "use --resume ... or --overwrite": flags a
    notebook has no use for. The messages now give both spellings."""
    from flowforge.workbench import train
    from flowforge.workbench.errors import RunError

    cfg = {"model": {"name": "realnvp", "kwargs": {"layers": 2, "hidden": [8]}},
           "data": {"name": "moons", "options": {"limit": 64}}, "train": {"epochs": 1}}  # fmt: skip
    out = tmp_path / "w"
    train(cfg, out, progress=False, echo=False)
    with pytest.raises(RunError, match=r"--resume .* \(from Python: resume=True, overwrite=True\)"):
        train(cfg, out, progress=False, echo=False)
    other = {**cfg, "seed": 3}
    with pytest.raises(RunError, match=r"--overwrite \(overwrite=True from Python\)"):
        train(other, out, progress=False, echo=False)
