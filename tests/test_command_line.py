"""The command line a new user meets first: a fast ``--help`` and ``list`` (no torch import),
negative numbers as option values, missing optional packages named, CSV column names kept,
integer columns flagged, hostile data files refused in one line."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge.workbench import cli as command
from flowforge.workbench.catalog import DATASET_NOTES, models, summary
from flowforge.workbench.data import DATASETS
from flowforge.workbench.errors import DataError

# -- fast answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["list"], ["list", "--json"]])
def test_help_and_list_do_not_import_torch(argv):
    code = (
        "import sys\n"
        "from flowforge.workbench.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_torch_free_lists_match_the_live_ones():
    """``flowforge list`` names the targets, the models the workbench refuses and the
    objectives a model takes alone without importing torch: they must be the live ones."""
    from flowforge import targets
    from flowforge.models import MFlow
    from flowforge.workbench import catalog
    from flowforge.workbench.build import PYTHON_ONLY

    assert list(catalog.TARGET_NAMES) == targets.available()
    assert set(catalog.WORKBENCH_REFUSES) == set(PYTHON_ONLY)
    assert catalog.OWN_OBJECTIVES == {"mflow": tuple(MFlow.objectives)}


def test_the_torch_free_catalog_matches_the_live_registry():
    """``flowforge list`` reads the builders from the source; it must say what they take."""
    listed = {m["name"]: m for m in models()}
    live = {  # (the library's own: not the builders other test modules register on import)
        n
        for n in ff.models.available()
        if ff.models.spec(n).build.__module__.startswith("flowforge.")
    }
    assert set(listed) == live
    for name, m in listed.items():
        spec = ff.models.spec(name)
        assert m["inputs"] == list(spec.inputs), name
        assert (m["depth"], m["width"], m["lr"]) == (spec.depth, spec.width, spec.lr), name
        assert set(m["arguments"]) == set(spec.defaults()), name
        for k, text in m["arguments"].items():
            try:
                value = ast.literal_eval(text)
            except ValueError:
                continue
            assert value == spec.defaults()[k], (name, k)
        # the docstring's first paragraph, whole (its first line cut five mid-sentence)
        assert m["summary"] == summary(inspect.getdoc(spec.build))
        assert m["summary"].startswith(spec.summary.replace("``", "`").split(":class:")[0])
        assert m["summary"].endswith((".", ")")), (name, m["summary"])
    assert set(DATASET_NOTES) == set(DATASETS)


def test_list_shows_main_arguments(capsys):
    rc, out, _ = cli(capsys, "list")
    assert rc == 0
    assert "glow" in out and "steps*=8" in out and "8gaussians" in out


# -- argument parsing ---------------------------------------------------------------------------


def test_negative_numbers_after_context():
    argv = ["sample", "run", "--context", "-1.78,0.5", "-n", "3", "--out", "x.csv"]
    args = command.make_parser().parse_args(command._attach_values(argv))
    assert args.context == "-1.78,0.5" and args.n == 3
    argv = ["sample", "run", "--context", "-1;-2.5", "--out", "x.csv"]
    assert command.make_parser().parse_args(command._attach_values(argv)).context == "-1;-2.5"


def test_the_librarys_own_install_hints_are_one_line(capsys, monkeypatch):
    def needs_torchdiffeq(args):
        raise ImportError("continuous flows need torchdiffeq: pip install 'flowforge[ode]'")

    monkeypatch.setattr(command, "cmd_list", needs_torchdiffeq)
    rc, _, err = cli(capsys, "list")
    one_line_error(rc, err, "flowforge[ode]")


def test_a_missing_optional_package_names_its_extra(capsys, monkeypatch):
    def needs_matplotlib(args):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(command, "cmd_list", needs_matplotlib)
    rc, _, err = cli(capsys, "list")
    one_line_error(rc, err, "'matplotlib'", "flowforge[workbench]")


def test_a_partial_install_is_told_the_workbench_extra_before_any_work(
    capsys, monkeypatch, tmp_path
):
    # (a core or io install: the command named one package at a time, after writing a folder)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n in ("tqdm", "scipy", "yaml") else real(n, *a),
    )
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", "moons", "--out", tmp_path / "r")
    one_line_error(rc, err, "missing: scipy, tqdm, PyYAML", "flowforge[workbench]")
    assert not (tmp_path / "r").exists()
    rc, out, err = cli(capsys, "list")  # (it needs none of them)
    assert rc == 0 and "realnvp" in out, err
    for package in ("safetensors", "scipy"):  # (the command's extra, not the library's io)
        assert command.EXTRAS[package] == "workbench"


def test_list_says_which_models_need_a_missing_package(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "torchdiffeq" else real(n, *a)
    )
    rc, out, err = cli(capsys, "list", "--json")
    assert rc == 0, err
    models = json.loads(out)["models"]
    assert "flowforge[ode]" in models["cnf"]["needs"] and "needs" not in models["maf"]
    rc, out, _ = cli(capsys, "list")
    assert out.count("not installed here: pip install 'flowforge[ode]'") == 2


def test_the_calibration_diagnostics_need_scipy_before_they_sample(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "scipy" else real(n, *a)
    )

    def never(*args, **kwargs):
        raise AssertionError("sampled before finding scipy missing")

    monkeypatch.setattr(ff.diagnostics, "_run", never)
    flow = ff.models.MAF(features=2, context_features=1, layers=1, hidden=[4])
    theta, x = torch.zeros(3, 2), torch.zeros(3, 1)
    for check in (ff.diagnostics.sbc, ff.diagnostics.hpd_coverage, ff.diagnostics.tarp):
        with pytest.raises(ImportError, match=r"flowforge\[diagnostics\]"):
            check(flow, theta, x)


# -- tables -------------------------------------------------------------------------------------


def test_csv_column_names_are_kept_and_integer_columns_flagged(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 120
    table = np.c_[rng.normal(size=n), rng.normal(size=n) * 3, rng.integers(0, 4, size=n)]
    path = tmp_path / "t.csv"
    lines = ['height,weight,"group, coded"'] + [",".join(f"{v:.6g}" for v in r) for r in table]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    rc, stdout, err = cli(
        capsys, "train", "--model", "realnvp", "--model-kwargs", '{"layers": 2, "hidden": [8]}',
        "--data", path, "--out", out, "--epochs", 1, "--no-progress",
    )  # fmt: skip
    assert rc == 0, err
    assert "flowforge: warning: column(s) group, coded hold only integer values that repeat" in err
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["columns"] == ["height", "weight", "group, coded"]
    rc, _, err = cli(capsys, "sample", out, "-n", 5, "--out", tmp_path / "s.csv")
    assert rc == 0, err
    text = (tmp_path / "s.csv").read_text().splitlines()
    assert text[0] == 'height,weight,"group, coded"' and len(text) == 6
    assert len(text[1].split(",")) == 3


def test_a_header_of_another_width_is_refused(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2,3\n4,5,6\n7,8,9\n")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", path,
                         "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "header has 2 columns")


def test_values_beyond_float32_are_refused(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("1,2\n3,1e39\n5,6\n7,8\n")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", path,
                         "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "float32", "line")
    np.save(tmp_path / "big.npy", np.array([[1.0, 2.0], [3.0, -1e300], [1.0, 1.0]]))
    with pytest.raises(DataError, match="float32"):
        from flowforge.workbench.data import load_dataset

        load_dataset(str(tmp_path / "big.npy"))


def test_complex_arrays_are_refused(tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.ones((10, 2), dtype=np.complex64))
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", tmp_path / "c.npy",
                         "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "complex")


def test_a_decompression_bomb_is_refused(tmp_path, capsys, monkeypatch):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), i * 10, dtype=np.uint8)).save(folder / f"{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # 64 pixels > 2 x 16: a "bomb"
    rc, _, err = cli(capsys, "train", "--model", "glow", "--data", folder,
                         "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "too large to read safely")


def test_a_section_of_the_wrong_type_and_a_file_that_is_not_numpy(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: [1, 2]\n")
    rc, _, err = cli(capsys, "train", "--config", cfg, "--model", "realnvp", "--data",
                         "moons", "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "'train' must be a mapping")
    bad = tmp_path / "x.npy"
    bad.write_bytes(b"x")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", bad,
                         "--out", tmp_path / "r", "--no-progress")  # fmt: skip
    one_line_error(rc, err, "not a numeric numpy array")
    assert not (tmp_path / "r").exists()


def test_import_brings_a_users_own_model_to_the_command_line(tmp_path, capsys):
    """A builder registered by the user's module: the command line could not reach it."""
    mod = tmp_path / "my_cli_flows.py"
    mod.write_text(
        "import flowforge as ff\n\n\n"
        "@ff.models.register\n"
        "def my_cli_flow(features: int = 2, hidden: int = 8) -> ff.Flow:\n"
        '    """An affine coupling and a reversal."""\n'
        "    t = ff.transforms\n"
        "    net = lambda i, o: ff.nets.MLP(i, o, (hidden,))  # noqa: E731\n"
        "    layers = [t.Coupling(t.half_mask(features), net, t.Affine()), t.Reverse(features)]\n"
        "    return ff.Flow(ff.Compose(*layers), ff.distributions.StandardNormal(features))\n"
    )
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--import", mod, "--model", "my_cli_flow", "--data", "moons",
                     "--limit", 64, "--epochs", 1, "--out", run, "--no-progress")  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", run, "--import", mod)
    assert rc == 0 and "NLL" in out, err
    # a fresh process: the run's model is found only with the module imported (a run folder
    # never imports code itself)
    cmd = [sys.executable, "-m", "flowforge", "eval", str(run)]
    bare = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert bare.returncode == 1 and "the module that registers it" in bare.stderr
    given = subprocess.run([*cmd, "--import", "my_cli_flows"], capture_output=True, text=True,
                           cwd=tmp_path)  # fmt: skip
    assert given.returncode == 0 and "NLL" in given.stdout, given.stderr
    rc, _, err = cli(capsys, "train", "--import", tmp_path / "nowhere.py", "--model", "nsf",
                     "--data", "moons", "--out", tmp_path / "r2")  # fmt: skip
    one_line_error(rc, err, "--import", "no such file")


def test_import_before_and_after_the_command_and_a_file_named_like_a_module(tmp_path, capsys):
    for name in ("copy", "flows_b"):
        (tmp_path / f"{name}.py").write_text(f"import builtins\nbuiltins._ff_{name} = 1\n")
    rc, _, err = cli(capsys, "--import", tmp_path / "copy.py", "list",
                     "--import", tmp_path / "flows_b.py")  # fmt: skip
    assert rc == 0, err
    import builtins
    import copy

    assert builtins._ff_copy == builtins._ff_flows_b == 1  # both ran...
    assert callable(copy.deepcopy)  # ...and the module copy is still the standard library's


def test_version(capsys):
    import flowforge
    from flowforge.workbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"flowforge {flowforge.__version__}"


def test_each_error_line_is_one_write_also_on_an_unbuffered_stderr(monkeypatch):
    # (under torchrun with PYTHONUNBUFFERED, print wrote a line and its newline apart, and two
    # processes' lines ran together on one line)
    import io

    class Raw(io.BytesIO):
        writes: list = []

        def write(self, b):
            self.writes.append(bytes(b))
            return super().write(b)

    raw = Raw()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, write_through=True))
    assert command.main(["train", "--model", "realnvp", "--out", "x"]) == 1
    sys.stderr.flush()
    assert raw.writes and all(w.endswith(b"\n") for w in raw.writes), raw.writes


def test_points_of_a_two_column_run_sample_to_a_png_scatter(tmp_path, capsys):
    # (a coverage audit: sample --out s.png of 2-D points ran in no test; images do)
    run = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", run,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--limit", 64,
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli(capsys, "sample", run, "-n", 200, "--out", tmp_path / "s.png")
    assert rc == 0 and "wrote 200 samples" in out, err
    from PIL import Image

    with Image.open(tmp_path / "s.png") as im:
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert im.width > 100 and im.height > 100 and len(colours) > 2
