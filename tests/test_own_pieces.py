"""A researcher's own pieces (docs/extending.md): the checks and the registry name what is
wrong with a layer, a transformer or a builder of one's own, in one line (an audit of writing
one's own layers, 2026-12-07)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flowforge as ff
from flowforge.core import Transformer
from flowforge.testing import check_transform, check_transformer

D64 = torch.float64


class _Shift(Transformer):
    """x + a, with the inverse's log-determinant given the wrong sign."""

    params_per_dim = 1

    def forward(self, x, params):
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, z, params):
        return z - params[..., 0], torch.ones_like(z)  # (should be zeros)


class _Unsized(Transformer):
    """Forgets params_per_dim."""

    def forward(self, x, params):
        return x, torch.zeros_like(x)

    def inverse(self, z, params):
        return z, torch.zeros_like(z)


def test_a_transformers_inverse_log_determinant_of_the_wrong_sign_is_said():
    x = torch.randn(5, 3, dtype=D64)
    with pytest.raises(AssertionError, match="the inverse's ladj is not minus the forward's"):
        check_transformer(_Shift(), x, torch.randn(5, 3, 1, dtype=D64))


def test_a_transformer_without_params_per_dim_is_refused_by_the_layers_that_size_for_it():
    # it was taken, warned of zero-element tensors and failed with an IndexError
    net = lambda i, o: ff.nets.MLP(i, o, (8,))  # noqa: E731
    with pytest.raises(ValueError, match=r"_Unsized.params_per_dim is 0: .*integer >= 1"):
        ff.transforms.Coupling(ff.transforms.half_mask(4), net, _Unsized())
    with pytest.raises(ValueError, match="_Unsized.params_per_dim is 0"):
        ff.transforms.Autoregressive(4, _Unsized())


def _coupling(hidden_layer):
    def net(i, o):
        return nn.Sequential(nn.Linear(i, 8), hidden_layer(8), nn.Tanh(), nn.Linear(8, o))

    return ff.transforms.Coupling(ff.transforms.half_mask(4), net, ff.transforms.Affine()).to(D64)


def test_check_transform_in_training_mode_takes_dropout_zero_and_names_batchnorm():
    x = torch.randn(6, 4, dtype=D64)
    check_transform(_coupling(lambda w: nn.Dropout(0.0)), x)  # (was: "training mode with dropout")
    with pytest.raises(AssertionError, match="training mode with BatchNorm: call t.eval"):
        check_transform(_coupling(nn.BatchNorm1d), x)  # (was torch's "Expected more than 1 value")
    check_transform(_coupling(nn.BatchNorm1d).eval(), x)


def test_a_builder_that_returns_no_flow_is_refused_when_called():
    @ff.models.register
    def op_chain_only(features: int = 2) -> ff.Flow:
        return ff.Compose(ff.transforms.Scaling(features))

    with pytest.raises(TypeError, match="op_chain_only returned a Compose, which has no log_prob"):
        op_chain_only()


def test_an_unknown_model_names_the_import_flag_and_list_says_who_takes_data_options(capsys):
    with pytest.raises(ValueError, match="flowforge's commands: --import MODULE"):
        ff.models.build("op_nowhere_registered", features=2)

    @ff.models.register
    def op_plain(features: int = 2) -> ff.Flow:
        return ff.Flow(ff.transforms.Scaling(features), ff.distributions.StandardNormal(features))

    from flowforge.workbench.catalog import live_models

    assert {m["name"]: m["data_options"] for m in live_models()}["op_plain"] is False
    from flowforge.workbench.cli import main

    assert main(["list"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if "also takes the data" in s)
    assert "op_plain" in line  # (among the models that do not)


def test_import_files_that_import_each_other_or_their_neighbours(tmp_path, monkeypatch, capsys):
    # an audit: --import a.py --import b.py, where b.py does `import a`, was refused as a
    # second registration of a's builder (a.py ran under an alias, and again as `a`); and a
    # file given from another folder could not import the module beside it
    import sys

    from flowforge.workbench.cli import main

    monkeypatch.setattr(sys, "path", list(sys.path))
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "op_layers_a.py").write_text(
        "import flowforge as ff\n\n"
        "@ff.models.register\n"
        "def op_from_a(features: int = 2) -> ff.Flow:\n"
        "    return ff.Flow(ff.transforms.Scaling(features),"
        " ff.distributions.StandardNormal(features))\n"
    )
    (lib / "op_uses_a.py").write_text(
        "import op_layers_a\nimport flowforge as ff\n\n"
        "@ff.models.register\n"
        "def op_from_b(features: int = 2) -> ff.Flow:\n"
        "    return op_layers_a.op_from_a(features)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        assert main(["list", "--import", str(lib / "op_layers_a.py"),
                     "--import", str(lib / "op_uses_a.py")]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert "op_from_a" in out and "op_from_b" in out
    finally:
        for m in ("op_layers_a", "op_uses_a"):
            sys.modules.pop(m, None)
