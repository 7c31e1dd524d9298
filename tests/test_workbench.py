"""Workbench tests: datasets, the CLI, resume, bad input. Tiny models, a few steps each."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli
from flowforge.workbench import data as wbdata
from flowforge.workbench.checkpoint import read_checkpoint
from flowforge.workbench.cli import main
from flowforge.workbench.errors import NonFiniteError
from flowforge.workbench.runner import train
from flowforge.workbench.runs import load_run

sys.path.insert(0, str(Path(__file__).parent / "data"))
import wb_models  # noqa: E402,F401  (registers wbtest_actnorm)

TINY = ["train", "--model", "realnvp", "--model-kwargs", '{"layers": 2, "hidden": [16]}',
        "--layout", "vector", "--no-progress", "--quiet"]  # fmt: skip
TINY_CFG = {"model": {"name": "realnvp", "layers": 2, "hidden": [16]}, "layout": "vector"}


def assert_one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("flowforge: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits run, trained once for the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    rc = main([*TINY, "--data", "digits", "--out", str(out), "--epochs", "2", "--limit", "128",
               "--batch-size", "32"])  # fmt: skip
    assert rc == 0
    return out


# -- datasets ------------------------------------------------------------------------------------


def test_digits_splits_are_fixed_and_discrete():
    from sklearn.datasets import load_digits

    ds = wbdata.load_dataset("digits")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 350, 447)
    assert ds.shape == (1, 8, 8) and ds.levels == 17 and ds.stats is None
    raw = load_digits().data
    assert torch.equal(ds.test[0].reshape(-1), torch.tensor(raw[1350], dtype=torch.float32))
    assert torch.equal(ds.val[-1].reshape(-1), torch.tensor(raw[1349], dtype=torch.float32))
    x = torch.cat([ds.train, ds.val, ds.test])
    assert x.min() == 0 and x.max() == 16 and torch.equal(x, x.floor())


@pytest.mark.parametrize("name", sorted(wbdata.TOYS))
def test_toys_are_seeded(name):
    a = wbdata.load_dataset(name, seed=1, n_train=500, n_val=100, n_test=100)
    b = wbdata.load_dataset(name, seed=1, n_train=500, n_val=100, n_test=100)
    c = wbdata.load_dataset(name, seed=2, n_train=500, n_val=100, n_test=100)
    assert a.train.shape == (500, 2) and a.val.shape == (100, 2) and a.test.shape == (100, 2)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.val, a.test)
    assert torch.isfinite(a.train).all() and a.train.abs().max() < 6
    assert 0.3 < a.train.std() < 3  # on a sensible scale without standardisation


def test_csv_table_header_split_and_stats(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * [1, 10, 100] + [0, 5, -50]
    p = tmp_path / "t.csv"
    p.write_text("a,b,c\n" + "\n".join(",".join(map(str, r)) for r in x) + "\n")
    ds = wbdata.load_dataset(str(p), seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 5, 5)
    assert ds.shape == (3,) and ds.kind == "table" and ds.levels is None
    all_rows = torch.cat([ds.train, ds.val, ds.test]).double()
    assert torch.allclose(all_rows.sort(0).values, torch.tensor(x).sort(0).values, atol=1e-4)
    assert np.allclose(ds.stats["loc"], ds.train.double().mean(0).numpy())
    assert np.allclose(ds.stats["scale"], ds.train.double().std(0, correction=0).numpy())


def test_npz_with_splits_and_npy(tmp_path):
    a = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.savez(tmp_path / "s.npz", train=a, val=a[:2], test=a[:3])
    ds = wbdata.load_dataset(str(tmp_path / "s.npz"))
    assert len(ds.train) == 10 and len(ds.val) == 2 and len(ds.test) == 3
    # (a reference audit) the split options were taken and did nothing: now refused
    # (a warning, not a refusal: runs that recorded one still resume and replay, a review)
    for option, v in (("val_fraction", 0.5), ("test_fraction", 0.1), ("shuffle", False)):
        said = wbdata.load_dataset(str(tmp_path / "s.npz"), **{option: v})
        assert len(said.val) == 2
        assert said.info["warnings"][0].startswith(f"data.{option} does not apply: ")
        assert "holds its own train, val and test arrays" in said.info["warnings"][0]
        again = wbdata.reload_dataset(str(tmp_path / "s.npz"), options={option: v})
        assert len(again.val) == 2 and "warnings" not in again.info
    np.save(tmp_path / "one.npy", np.tile(a, (4, 1)))  # (one array: the options split it)
    ds = wbdata.load_dataset(str(tmp_path / "one.npy"), val_fraction=0.5, shuffle=False)
    assert len(ds.val) == 20
    bad = a.copy()
    bad[4, 1] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(wbdata.DataError, match="rows .0-based. 4"):
        wbdata.load_dataset(str(tmp_path / "bad.npy"))


def _png(path, size=(6, 5), mode="L", value=100):
    from PIL import Image

    c = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    a = np.full((size[1], size[0], c), value, dtype=np.uint8)
    Image.fromarray(a[..., 0] if c == 1 else a, mode).save(path)


def test_image_folder(tmp_path):
    for i in range(10):
        _png(tmp_path / f"{i:02d}.png", value=10 * i)
    ds = wbdata.load_dataset(str(tmp_path))
    assert ds.shape == (1, 5, 6) and ds.levels == 256 and ds.kind == "image"
    assert len(ds.train) + len(ds.val) + len(ds.test) == 10
    ds5 = wbdata.load_dataset(str(tmp_path), bits=5)
    assert ds5.levels == 32 and torch.cat([ds5.train, ds5.val, ds5.test]).max() == 90 >> 3
    (note,) = ds.info.get("warnings")  # (only that 10 images are few, 2026-12-07)
    assert note.startswith("only 8 training, 1 validation and 1 test images")
    copies = tmp_path / "copies"  # every image saved four times: val and test repeat training
    copies.mkdir()
    for i in range(10):
        for k in range(4):
            _png(copies / f"{i:02d}_{k}.png", value=10 * i)
    notes = wbdata.load_dataset(str(copies)).info["warnings"]
    assert any("val images also appear in the training split" in n for n in notes)


# -- the command line ----------------------------------------------------------------------------


def test_list_json_uses_the_registry(capsys):
    rc, out, _ = cli(capsys, "list", "--json")
    info = json.loads(out)
    assert rc == 0
    assert list(info["models"]) == ff.models.available() and "wbtest_actnorm" in info["models"]
    assert {"digits", "moons", "checkerboard", "swissroll"} <= set(info["datasets"])


def test_train_eval_sample_report(digits_run, capsys, tmp_path):
    run = digits_run
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.ff", "checkpoint.safetensors", "metrics.jsonl"} <= names
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["layout"] == "vector" and cfg["resolved"]["levels"] == 17
    assert cfg["resolved"]["parameters"] == sum(p.numel() for p in ff.load(run).parameters())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["type"] == "epoch"] == [1, 2]

    flow = ff.load(run)  # the library reads the run folder
    assert isinstance(flow, ff.Flow) and flow.config["kwargs"]["levels"] == 17
    rc, out, _ = cli(capsys, "eval", run, "--split", "test", "--json")
    res = json.loads(out)
    assert rc == 0 and res["split"] == "test" and res["examples"] == 447
    x = wbdata.load_dataset("digits").test.reshape(-1, 64)
    torch.manual_seed(0)
    assert res["nll"] == pytest.approx(ff.nll(flow, x), rel=1e-9)
    assert res["bits_per_dim"] == pytest.approx(res["nll"] / (64 * math.log(2)))
    assert 0.5 < res["bits_per_dim"] < 10  # barely trained, but sane

    rc, out, _ = cli(capsys, "sample", run, "-n", 9, "--temperature", 0.7,
                     "--out", tmp_path / "s.npy")  # fmt: skip
    s = np.load(tmp_path / "s.npy")
    assert rc == 0 and s.shape == (9, 1, 8, 8)
    assert s.min() >= 0 and s.max() <= 16 and np.array_equal(s, np.floor(s))
    rc, _, _ = cli(capsys, "sample", run, "-n", 9, "--out", tmp_path / "s.png")
    assert rc == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    rc, _, err = cli(capsys, "sample", run, "-n", 9, "--out", tmp_path / "s.png")
    assert_one_line_error(rc, err, "exists")

    rc, out, _ = cli(capsys, "report", run)
    html = (run / "report.html").read_text()
    assert rc == 0 and "report.html" in out
    imgs = [p.split('"')[0] for p in html.split('<img src="')[1:]]
    plain = {re.sub(r"\.report-[a-z0-9_]{8}\.png$", ".png", p) for p in imgs}  # (the page's copies)
    assert {"report/curves.png", "report/samples.png", "report/nearest.png",
            "report/latent.png"} <= plain  # fmt: skip
    assert all((run / p).is_file() for p in [*imgs, *plain])


def test_toy_run_report_has_density(tmp_path, capsys):
    out = tmp_path / "moons"
    rc, _, _ = cli(capsys, *TINY, "--data", "moons", "--out", out, "--epochs", 1,
                   "--data-kwargs", '{"n_train": 256, "n_val": 64, "n_test": 64}')  # fmt: skip
    assert rc == 0
    rc, _, _ = cli(capsys, "report", out)
    html = (out / "report.html").read_text()
    assert rc == 0 and re.search(r'src="report/density\.report-[a-z0-9_]{8}\.png"', html)
    assert (out / "report/density.png").is_file()
    rc, out_, _ = cli(capsys, "eval", out, "--json")
    assert json.loads(out_)["bits_per_dim"] is None  # continuous data


def test_python_m_and_library_boundary():
    code = (
        "import sys, flowforge, flowforge.models, flowforge.io;"
        "assert 'flowforge.workbench' not in sys.modules, 'library imports the workbench';"
        "assert 'matplotlib' not in sys.modules, 'library imports matplotlib'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    r = subprocess.run([sys.executable, "-m", "flowforge", "list", "--json"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    assert "realnvp" in json.loads(r.stdout)["models"]


def test_config_files_and_reproducibility(tmp_path, capsys):
    yaml_cfg = tmp_path / "c.yaml"
    yaml_cfg.write_text(
        "seed: 3\nlayout: vector\nmodel:\n  name: realnvp\n  layers: 2\n  hidden: [8]\n"
        "data:\n  name: moons\n  n_train: 128\n  n_val: 32\n  n_test: 32\n"
        "train:\n  epochs: 5\n  batch_size: 32\n"
    )
    a = tmp_path / "a"
    rc, _, _ = cli(capsys, "train", "--config", yaml_cfg, "--out", a, "--epochs", 1,
                   "--no-progress", "--quiet")  # fmt: skip
    cfg = json.loads((a / "config.json").read_text())
    assert rc == 0 and cfg["train"]["epochs"] == 1 and cfg["seed"] == 3  # flag beats file
    assert cfg["model"]["kwargs"] == {"layers": 2, "hidden": [8]}
    assert cfg["data"]["options"]["n_train"] == 128
    # the stored config alone redoes the run bit for bit
    b = tmp_path / "b"
    rc, _, _ = cli(capsys, "train", "--config", a / "config.json", "--out", b, "--no-progress",
                   "--quiet")  # fmt: skip
    assert rc == 0
    sa, sb = ff.load(a).state_dict(), ff.load(b).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # TOML works the same; a different seed gives different weights
    toml_cfg = tmp_path / "c.toml"
    toml_cfg.write_text(
        'seed = 4\nlayout = "vector"\n[model]\nname = "realnvp"\nlayers = 2\nhidden = [8]\n'
        '[data]\nname = "moons"\nn_train = 128\nn_val = 32\nn_test = 32\n'
        "[train]\nepochs = 1\nbatch_size = 32\n"
    )
    c = tmp_path / "c"
    rc, _, _ = cli(capsys, "train", "--config", toml_cfg, "--out", c, "--no-progress", "--quiet")
    assert rc == 0
    sc = ff.load(c).state_dict()
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_layout_follows_the_builder(tmp_path):
    base = {"model": "wbtest_actnorm", "data": {"name": "digits", "limit": 64},
            "train": {"epochs": 1, "batch_size": 32}}  # fmt: skip
    train(base, tmp_path / "img", progress=False, echo=False)
    cfg = json.loads((tmp_path / "img/config.json").read_text())
    assert cfg["resolved"]["builder_kwargs"] == {"shape": [1, 8, 8], "levels": 17}
    flow = ff.load(tmp_path / "img")
    assert flow.event_shape == (1, 8, 8)
    assert bool(flow.transform.layers[0].initialized)  # ActNorm initialised from data
    train({**base, "layout": "vector"}, tmp_path / "vec", progress=False, echo=False)
    cfg = json.loads((tmp_path / "vec/config.json").read_text())
    assert cfg["resolved"]["builder_kwargs"]["features"] == 64
    assert ff.load(tmp_path / "vec").event_shape == (64,)


def test_standardised_table_scores_raw_data(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 2)) * [3.0, 200.0] + [10.0, -500.0]
    np.savetxt(tmp_path / "t.csv", x, delimiter=",")
    run = tmp_path / "run"
    rc, _, _ = cli(capsys, *TINY, "--data", tmp_path / "t.csv", "--out", run, "--epochs", 2,
                   "--batch-size", 16)  # fmt: skip
    assert rc == 0
    stats = json.loads((run / "config.json").read_text())["resolved"]["stats"]
    loc, scale = torch.tensor(stats["loc"]), torch.tensor(stats["scale"])
    assert scale[1] > 100  # statistics are those of the raw data
    xr = torch.tensor(x, dtype=torch.float32)
    flow = ff.load(run)  # scores raw data: the statistics travel with the model
    assert flow.config.get("prefix") == ["standardize"]
    inner = ff.Flow(flow.transform.layers[1], flow.base, flow.dequantizer)
    expect = inner.log_prob((xr - loc) / scale) - scale.log().sum()
    assert torch.allclose(flow.log_prob(xr), expect, atol=1e-4)
    assert torch.equal(load_run(run).log_prob(xr), flow.log_prob(xr))
    rc, out, _ = cli(capsys, "eval", run, "--data", tmp_path / "t.csv", "--json")
    assert rc == 0 and json.loads(out)["nll"] == pytest.approx(-expect.mean().item(), rel=1e-5)


# -- resume and interruption -----------------------------------------------------------------


def _params(path):
    _, t = read_checkpoint(Path(path) / "checkpoint.safetensors")
    return {k: v for k, v in t.items() if k.startswith(("model/", "optim/"))}


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, capsys):
    cfg = {**TINY_CFG, "data": {"name": "digits", "limit": 96},
           "train": {"epochs": 3, "batch_size": 32, "warmup_steps": 4, "log_every": 1}}  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    ra = train(cfg, a, progress=False, echo=False)
    assert ra["status"] == "finished" and ra["steps"] == 9

    def interrupt(trainer):  # Ctrl-C in the middle of epoch 2 (a SIGTERM ends the process)
        if trainer.global_step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    rb = train(cfg, b, progress=False, echo=False, callback=interrupt)
    assert rb["status"] == "interrupted" and rb["steps"] == 5
    meta, _ = read_checkpoint(b / "checkpoint.safetensors")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 2)
    rc, _, _ = cli(capsys, "train", "--out", b, "--resume", "--no-progress", "--quiet")
    assert rc == 0
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and len(pa) > 10
    assert all(torch.equal(pa[k], pb[k]) for k in pa), [
        k for k in pa if not torch.equal(pa[k], pb[k])
    ]
    assert (a / "model.ff").read_bytes() == (b / "model.ff").read_bytes()

    def strip(p):
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (p / "metrics.jsonl").read_text().splitlines()]  # fmt: skip

    assert strip(a) == strip(b)
    # resuming a finished run is a no-op
    rc, _, _ = cli(capsys, "train", "--out", b, "--resume", "--no-progress", "--quiet")
    assert rc == 0 and _params(b).keys() == pa.keys()


def test_nonfinite_loss_names_the_layer_and_keeps_the_checkpoint(tmp_path):
    cfg = {**TINY_CFG, "data": {"name": "digits", "limit": 64},
           "train": {"epochs": 3, "batch_size": 32}}  # fmt: skip

    def poison(trainer):
        if trainer.global_step == 3:  # after epoch 1 was validated and saved
            lin = next(m for m in trainer.flow.transform.layers[2].modules()
                       if isinstance(m, torch.nn.Linear))  # fmt: skip
            lin.weight.data.fill_(math.nan)

    out = tmp_path / "r"
    with pytest.raises(NonFiniteError) as e:
        train(cfg, out, progress=False, echo=False, callback=poison)
    msg = str(e.value)
    assert "non-finite loss at epoch 2" in msg
    assert "transform.layers.2 (Coupling), first at transform.layers.2." in msg
    assert "(Linear)" in msg
    flow = ff.load(out)  # the last good model is still there and finite
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    meta, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["epoch"] == 1


# -- bad input -----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case",
    ["model", "dataset", "nan", "columns", "empty", "img_size", "img_mode", "no_file"],
)
def test_bad_input_is_one_line(case, tmp_path, capsys):
    data, model, needles = "digits", "realnvp", []
    if case == "model":
        model, needles = "realnpv", ["unknown model 'realnpv'", "did you mean realnvp"]
    elif case == "dataset":
        data, needles = "digts", ["unknown dataset 'digts'", "did you mean digits"]
    elif case == "nan":
        data = _write(tmp_path / "n.csv", "1,2\n3,nan\n5,6\n7,inf\n1,1\n")
        needles = ["NaN or inf", "lines 2, 4"]
    elif case == "columns":
        data = _write(tmp_path / "c.csv", "x,y\n1,2\n3,4\n5,6,7\n")
        needles = ["line 4 has 3 columns, expected 2"]
    elif case == "empty":
        data, needles = _write(tmp_path / "e.csv", ""), ["is empty"]
    elif case in ("img_size", "img_mode"):
        folder = tmp_path / "imgs"
        folder.mkdir()
        for i in range(5):
            _png(folder / f"{i}.png")
        if case == "img_size":
            _png(folder / "9.png", size=(7, 5))
            needles = ["9.png is 7x5 L, expected 6x5 L"]
        else:
            _png(folder / "9.png", mode="RGBA")
            needles = ["9.png: image mode RGBA"]
        data = folder
    elif case == "no_file":
        data, needles = tmp_path / "missing.csv", ["no such file"]
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "train", "--model", model, "--data", data, "--out", out,
                     "--no-progress", "--quiet")  # fmt: skip
    assert_one_line_error(rc, err, *needles)
    assert not (out / "config.json").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="unknown dataset"):
        main(["train", "--model", "realnvp", "--data", "digts", "--out", str(tmp_path / "o"),
              "--debug"])  # fmt: skip


def test_corrupt_or_truncated_checkpoint(digits_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(digits_run, run)
    data = (run / "model.ff").read_bytes()
    (run / "model.ff").write_bytes(data[: len(data) // 2])
    rc, _, err = cli(capsys, "eval", run)
    assert_one_line_error(rc, err, "corrupt or truncated")
    (run / "model.ff").write_bytes(b"\x00" * 64)
    rc, _, err = cli(capsys, "sample", run, "-n", 2, "--out", tmp_path / "s.npy")
    assert_one_line_error(rc, err, "model.ff")
    ck = (run / "checkpoint.safetensors").read_bytes()
    (run / "checkpoint.safetensors").write_bytes(ck[:1000])
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--quiet")
    assert_one_line_error(rc, err, "checkpoint.safetensors", "corrupt or truncated")


def test_resume_with_a_different_config_is_refused(digits_run, capsys):
    before = (digits_run / "checkpoint.safetensors").read_bytes()
    rc, _, err = cli(capsys, "train", "--out", digits_run, "--resume", "--lr", "0.5")
    assert_one_line_error(rc, err, "config differs", "train.lr")
    assert (digits_run / "checkpoint.safetensors").read_bytes() == before


def test_out_dir_is_never_clobbered(digits_run, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in digits_run.iterdir() if p.is_file()}
    args = [*TINY, "--data", "moons", "--out", digits_run, "--epochs", 1]
    rc, _, err = cli(capsys, *args)
    assert_one_line_error(rc, err, "already holds a different run", "--overwrite")
    assert "data.name: 'digits' -> 'moons'" in err  # (what differs, as a resume says it)
    rc, _, err = cli(capsys, *TINY, "--data", "digits", "--out", digits_run, "--epochs", 2,
                     "--limit", 128, "--batch-size", 32)  # fmt: skip
    assert_one_line_error(rc, err, "already holds this run", "--resume")
    # where it runs may change on a resume: still this run, and --resume is the way on
    rc, _, err = cli(capsys, *TINY, "--data", "digits", "--out", digits_run, "--epochs", 2,
                     "--limit", 128, "--batch-size", 32,
                     "--set", "train.tensorboard=false")  # fmt: skip
    assert_one_line_error(rc, err, "already holds this run", "--resume")
    assert {p.name: p.read_bytes() for p in digits_run.iterdir() if p.is_file()} == before
    # a folder with the user's own files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        rc, _, err = cli(capsys, *TINY, "--data", "moons", "--out", mine, "--epochs", 1, *extra)
        assert_one_line_error(rc, err, "not a flowforge run")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "precious"


def test_trainer_adam_is_fused_on_cpu_and_follows_the_same_rule():
    from flowforge.workbench.trainer import adam

    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    fused = adam(a.parameters(), lr=0.1, kind="adamw", weight_decay=0.01)
    plain = torch.optim.AdamW(b.parameters(), lr=0.1, weight_decay=0.01)
    assert fused.defaults["fused"] and isinstance(fused, torch.optim.AdamW)
    x = torch.randn(8, 3)
    for _ in range(3):
        for net, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_eval_importance_weighted_bound(digits_run, capsys):
    # --iw: log (1/K) sum_k of the K draws' weights, a tighter bound than their mean
    rc, out, _ = cli(capsys, "eval", digits_run, "--samples", 4, "--json")
    mean = json.loads(out)
    rc, out, _ = cli(capsys, "eval", digits_run, "--samples", 4, "--iw", "--json")
    assert rc == 0
    iw = json.loads(out)
    assert iw["bound"] == "importance-weighted" and mean["bound"] == "mean"
    assert math.isfinite(iw["nll"]) and iw["nll"] <= mean["nll"] + 1e-6
    # the same draws (same seed): by Jensen the gap is positive unless the draws agree
    assert iw["nll"] < mean["nll"]
    rc, out, _ = cli(capsys, "eval", digits_run, "--samples", 4, "--iw")
    assert "the importance-weighted bound with K = 4" in out
    rc, _, err = cli(capsys, "eval", digits_run, "--iw")
    assert_one_line_error(rc, err, "--iw", "--samples of 2 or more")


def test_the_iw_refusal_names_the_condition_that_failed(tmp_path, capsys):
    # (a reference audit) a continuous run's --samples 3 --iw read "... and --samples of 2 or
    # more (got 3)", as if 3 were the fault
    from cli_support import tiny_moons_run

    run = tiny_moons_run(capsys, tmp_path / "moons")
    rc, _, err = cli(capsys, "eval", run, "--samples", 3, "--iw")
    assert_one_line_error(rc, err, "this run's data has no levels or integer columns")
    assert "got 3" not in err
