"""The messages of the workbench and the builders (an audit read them message-first): each says
what was wrong in the user's own terms (the option they typed, YAML's words, the command's help)
and nothing is accepted that the model would never use."""

from __future__ import annotations

import pytest

import flowforge as ff
from cli_support import cli, one_line_error


@pytest.mark.parametrize(
    "option, needle",
    [
        ("model.time_eps=.nan", "argument time_eps=nan is not finite"),
        ("model.space_scale=.inf", "argument space_scale=inf is not finite"),
    ],
)
def test_a_non_finite_model_argument_is_named_before_the_run_folder_is_made(
    tmp_path, capsys, option, needle
):
    # it failed writing config.json ("Out of range float values are not JSON compliant: nan"),
    # leaving an empty --out folder
    out = tmp_path / "r"
    rc, _, err = cli(capsys, "train", "--model", "cnf", "--data", "moons", "--set", option,
                     "--out", out)  # fmt: skip
    one_line_error(rc, err, needle)
    assert not out.exists()
    with pytest.raises(ValueError, match="is not finite"):  # and from Python
        ff.models.build("cnf", features=2, time_frequencies=2, time_eps=float("nan"))


@pytest.mark.parametrize(
    "model, kwargs, needle",
    [
        ("tarflow", {"bins": 16}, "bins applies to transformer='spline', not to the 'affine'"),
        ("tarflow", {"transformer": "spline", "scale_bound": 2.0}, "'affine' or 'mixture'"),
        ("tarflow", {"transformer": "mixture", "bound": 3.0}, "bound applies to"),
        ("cnf", {"time_eps": 0.01}, "time_eps applies only with time_frequencies"),
        ("cnf", {"space_scale": 4.0}, "space_scale applies only with space_features"),
    ],
)
def test_an_argument_the_chosen_variant_never_reads_is_refused(model, kwargs, needle):
    # --set model.bins=16 on the default (affine) TarFlow trained the same affine model, and
    # its config.json said bins: 16
    small = {"blocks": 1, "width": 8, "heads": 1} if model == "tarflow" else {"hidden": (8,)}
    with pytest.raises(ValueError, match=needle):
        ff.models.build(model, features=4, **small, **kwargs)
    # the same value as the default, or with the variant that reads it, builds
    ff.models.build(model, features=4, **small, **({"bins": 8} if model == "tarflow" else {}))
    reads = {"transformer": "spline"} if model == "tarflow" else {"time_frequencies": 2}
    ff.models.build(model, features=4, **small, **reads, **({"bins": 16} if model == "tarflow"
                                                             else {"time_eps": 0.01}))  # fmt: skip


def test_types_are_said_in_a_config_files_words(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--set",
                     "model.residual=x", "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "expected true, false or null")  # (was "bool | None")
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--set",
                     "model.base=null", "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "argument base=null", "expected a string or a mapping")


def test_a_yaml_syntax_error_names_the_line_and_column_not_a_unicode_string(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: [realnvp\n")
    rc, _, err = cli(capsys, "train", "--config", cfg, "--out", tmp_path / "r")
    one_line_error(rc, err, f"cannot parse config {cfg}: line 3, column 1: expected ',' or ']'",
                   "the end of the text")  # fmt: skip
    assert "<unicode string>" not in err and "^" not in err
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--model-kwargs",
                     "{bad json", "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "--model-kwargs: cannot parse '{bad json': line 1, column 10")


def test_an_unknown_option_points_at_the_commands_own_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(capsys, "eval", tmp_path, "--ode-stepz", "4")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --ode-stepz 4 (see: flowforge eval --help)" in err


def test_a_negative_number_in_exponent_notation_is_a_value(tmp_path, capsys):
    # "argument --lr: expected one argument"
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--lr", "-1e-3",
                     "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "train.lr must be a finite number in (0, inf), got -0.001")


def test_validation_draws_are_bounded_as_evals_are(tmp_path, capsys):
    # 1e8 made the first validation endless
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--set",
                     "train.val_samples=100000000", "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "train.val_samples must be an integer in [1, 10000]")


def test_an_unknown_train_option_with_no_close_name_lists_them(tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--set",
                     "train.zzz=1", "--out", tmp_path / "r")  # fmt: skip
    one_line_error(rc, err, "unknown train option 'zzz' (the train options: objective, epochs")


def test_evals_options_are_named_as_typed(tmp_path, capsys):
    # "the samples must be a positive integer", "the batch size must be ..."
    for flag in ("--samples", "--batch-size"):
        rc, _, err = cli(capsys, "eval", tmp_path, flag, "0")
        one_line_error(rc, err, f"{flag} must be a positive integer, got 0")


def test_any_annotation_is_said_in_words_without_failing():
    # (a builder of one's own may annotate with Literal: the message must not fail on it)
    import typing
    from collections.abc import Sequence

    from flowforge.models.registry import _describe

    assert _describe(typing.Literal["a", "b"]) == "one of 'a', 'b'"
    assert _describe(Sequence[int] | int | None) == "a list of integers, an integer or null"
    assert _describe(bool | None) == "true, false or null"
    assert _describe(dict[str, int]) == "a mapping"
    assert "Callable" in _describe(typing.Callable[[int], int])


def test_a_negative_infinity_is_a_value_too(tmp_path, capsys):
    # "argument --temperature: expected one argument"
    rc, _, err = cli(capsys, "sample", tmp_path, "-n", "3", "--temperature", "-inf", "--out",
                     tmp_path / "s.csv")  # fmt: skip
    one_line_error(rc, err, "--temperature must be a finite number >= 0, got -inf")
