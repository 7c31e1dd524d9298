"""Precision where it could move a number without a word: linear layers under autocast, a
column of tiny spread, a float64 run's report, a resume in another dtype, far-out reference
numbers (an audit of precision and dtypes)."""

from __future__ import annotations

import warnings

import pytest
import torch

import flowforge as ff
from flowforge import transforms as T


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.LULinear((4, 4, 4)),
        lambda: T.QRLinear(4),
        lambda: T.PlainLinear(4),
        lambda: T.EmergingConv2d((4, 4, 4)),
    ],
    ids=["lu", "qr", "plain", "emerging"],
)
def test_linear_layers_stay_bijections_under_autocast(make):
    # (autocast ran their product in bfloat16 beside the float32 weights' log-determinant:
    # forward and inverse disagreed by up to 0.5, a Glow's bits/dim moved 0.014)
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(8, *layer.event_shape)
    z, ladj = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        za, ladja = layer(x)
    assert za.dtype == torch.float32 and torch.equal(za, z) and torch.equal(ladja, ladj)
    torch.testing.assert_close(layer.inverse(za)[0], x, rtol=1e-4, atol=1e-4)


def test_a_column_of_tiny_spread_is_standardised_or_said():
    # (a spread below 1e-31 was taken as constant in float32: 70 nats off, without a word)
    torch.manual_seed(0)
    x = torch.randn(512, 2) * torch.tensor([1e-33, 1.0])
    layer = T.DataStandardize(2)
    layer.train()
    layer(x)
    assert abs(layer.scale[0].item() / 1e-33 - 1) < 0.1
    z, _ = layer(x)
    assert 0.9 < z[:, 0].std().item() < 1.1
    layer = T.DataStandardize(2)
    layer.train()
    with pytest.warns(RuntimeWarning, match="too little for torch.float32 to resolve"):
        layer(torch.randn(512, 2) * torch.tensor([1e-36, 1.0]))
    assert layer.scale[0].item() == 1.0


def test_a_float64_run_gets_its_report(tmp_path):
    # (a run trained in a float64 session: the 2-D density panel failed in torch's words)
    from flowforge.workbench import train, write_report

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cfg = {"model": {"name": "maf", "layers": 1, "hidden": [8]},
               "data": {"name": "moons", "n_train": 256, "n_val": 64, "n_test": 64},
               "train": {"epochs": 1, "tensorboard": False}}  # fmt: skip
        train(cfg, tmp_path / "r64", progress=False, echo=False)
    finally:
        torch.set_default_dtype(before)
    assert ff.load(tmp_path / "r64").dtype == torch.float64
    assert write_report(tmp_path / "r64", test=False).is_file()


def test_a_float64_run_resumes_in_float64_and_a_trainer_refuses_another_dtype(tmp_path, capsys):
    # (the command resumed a float64 session's run in float32, and a Trainer cast the
    # checkpoint's weights to its model's dtype without a word)
    import os
    import signal

    from cli_support import cli
    from flowforge.workbench import Trainer, load_dataset, train
    from flowforge.workbench.errors import RunError

    cfg = {"model": {"name": "maf", "layers": 1, "hidden": [8]},
           "data": {"name": "moons", "n_train": 256, "n_val": 64, "n_test": 64},
           "train": {"epochs": 3, "batch_size": 64, "tensorboard": False}}  # fmt: skip

    def stop(trainer):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train(cfg, tmp_path / "whole", progress=False, echo=False)
        assert (
            train(cfg, tmp_path / "cut", progress=False, echo=False, callback=stop)["status"]
            == "interrupted"
        )
    finally:
        torch.set_default_dtype(before)
    rc, _, err = cli(capsys, "train", "--out", tmp_path / "cut", "--resume", "--no-progress")
    assert rc == 0, err
    assert ff.load(tmp_path / "cut").dtype == torch.float64
    assert (tmp_path / "cut" / "model.ff").read_bytes() == (
        tmp_path / "whole" / "model.ff"
    ).read_bytes()
    ds = load_dataset("moons", n_train=128, n_val=64, n_test=64)
    flow = ff.models.MAF(features=2, layers=1, hidden=(8,)).double()
    t = Trainer(flow, ds.train, ds.val, {"epochs": 2}, out=tmp_path / "t", progress=False,
                echo=False, callback=stop)  # fmt: skip
    assert t.fit()["status"] == "interrupted"
    other = Trainer(ff.models.MAF(features=2, layers=1, hidden=(8,)), ds.train, ds.val,
                    {"epochs": 2}, out=tmp_path / "t", progress=False, echo=False)  # fmt: skip
    with pytest.raises(RunError, match="holds weights in float64 and this run's model is float32"):
        other.fit(resume=True)


def test_more_levels_than_the_dequantization_noise_resolves_are_said():
    # (2^23 levels passed in float32, where x + u rounds onto a few values and a quarter of
    # the draws onto the next level: no bound; the column dequantizer already stopped at 2^17)
    x = torch.tensor([[2.0**18 - 1, 5.0]])
    flow = ff.models.RealNVP(features=2, layers=1, hidden=(4,), levels=2**18)
    with pytest.warns(RuntimeWarning, match="with dequantization noise \\(at most 131,072\\)"):
        assert torch.isfinite(flow.log_prob(x)).all()  # (a model trained so still scores)
    assert torch.isfinite(flow.double().log_prob(x.double())).all()
    ok = ff.models.RealNVP(features=2, layers=1, hidden=(4,), levels=2**17)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(ok.log_prob(torch.tensor([[2.0**17 - 1, 5.0]]))).all()


def test_an_m_flow_scores_under_autocast():
    # (its Gram matrix came out in bfloat16, which torch's slogdet refuses)
    torch.manual_seed(0)
    m = ff.models.build("mflow", features=3).eval()
    x = torch.randn(8, 3)
    want = m.log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m.log_prob(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - want).abs().max() < 0.5


def test_far_out_numbers_are_printed_in_six_significant_digits():
    # (the reference line printed 12857887622308122624.0000: 25 digits)
    from flowforge.workbench.evaluate import nats

    assert nats(1.2857887622308122e19) == "1.28579e+19" and nats(3.14159265) == "3.1416"


def test_a_float16_columns_spread_is_scaled_as_before():
    # (the floor for tiny spreads, tiny * 2^12, is 0.25 in float16: it must stay 0.0625)
    layer = T.DataStandardize(2).to(torch.float16)
    layer.train()
    x = (torch.randn(512, 2) * torch.tensor([0.1, 1.0])).to(torch.float16)
    layer.initialize(x)
    assert abs(layer.scale[0].item() - 0.1) < 0.02
