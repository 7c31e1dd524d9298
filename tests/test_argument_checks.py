"""Bad arguments at the Python API's boundary: one ValueError (TypeError for a wrong type) that
says what was expected, never torch's or Python's own message (audit s28: M3, L10, L11).

Every size argument of a public layer, base or network is an integer >= 1 (a shape, a tuple
of them; a context size >= 0); booleans are not integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge import codec as C
from flowforge import distributions as D
from flowforge import matching as M
from flowforge import nets as N
from flowforge import transforms as T
from flowforge.objectives import log_importance_weights, vi_diagnostics


def _flow():
    return ff.models.RealNVP(features=3, layers=2, hidden=(8,)).eval()


def _cnf():
    return ff.models.CNF(features=2, hidden=(8,))


def _conditional_with_nan_context():
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,), context_features=2).eval()
    context = torch.zeros(5, 2)
    context[3, 1] = float("nan")
    return flow.log_prob(torch.zeros(5, 2), context)


def _mlp(i, o):
    return N.MLP(i, o, (8,))


FEATURES = "expected features to be an integer >= 1, got"
SHAPE = "expected shape to be an integer >= 1 or a tuple of positive sizes, got"
EVENT = "expected event_shape to be an integer >= 1 or a tuple of positive sizes, got"
IMAGE = "expected shape to be an image shape (C, H, W) of positive sizes, got"
CONTEXT = "expected context_features to be an integer >= 0, got -1"

CASES = {
    # 1. Inverse shares Flow's type check
    "Inverse(5)": (
        lambda: ff.Inverse(5),
        TypeError,
        "expected transform to be a flowforge Transform (subclass flowforge.core.Transform), "
        "got int",
    ),
    "Inverse(None)": (
        lambda: ff.Inverse(None),
        TypeError,
        ("a flowforge Transform", "got NoneType"),
    ),
    # 2. sizes of layers taking an int
    "Planar(-1)": (lambda: T.Planar(-1), ValueError, f"{FEATURES} -1"),
    "Planar(0)": (lambda: T.Planar(0), ValueError, f"{FEATURES} 0"),
    "Planar(True)": (lambda: T.Planar(True), ValueError, f"{FEATURES} True"),
    "Planar(2.5)": (lambda: T.Planar(2.5), ValueError, f"{FEATURES} 2.5"),
    "Radial(-1)": (lambda: T.Radial(-1), ValueError, f"{FEATURES} -1"),
    "Radial(0)": (lambda: T.Radial(0), ValueError, f"{FEATURES} 0"),
    "Sylvester(0)": (lambda: T.Sylvester(0), ValueError, f"{FEATURES} 0"),
    "Sylvester(rank=2.5)": (
        lambda: T.Sylvester(3, rank=2.5),
        ValueError,
        "expected rank to be an integer in [1, 3], got 2.5",
    ),
    "Sylvester(reflections=0)": (
        lambda: T.Sylvester(3, "householder", reflections=0),
        ValueError,
        "expected reflections to be an integer >= 1, got 0",
    ),
    "QRLinear(reflections=2.5)": (
        lambda: T.QRLinear(3, reflections=2.5),
        ValueError,
        "expected reflections to be an integer in [0, 3], got 2.5",
    ),
    "ResidualBlock(0)": (lambda: T.ResidualBlock(0), ValueError, f"{FEATURES} 0"),
    "ResidualBlock(hidden=(0,))": (
        lambda: T.ResidualBlock(2, hidden=(8, 0)),
        ValueError,
        "expected every hidden width to be an integer >= 1, got 0",
    ),
    "CNF(0)": (lambda: T.CNF(0), ValueError, f"{FEATURES} 0"),
    "ODENet(-1)": (lambda: T.ODENet(-1), ValueError, f"{FEATURES} -1"),
    "ODENet(context_features=-1)": (
        lambda: T.ODENet(2, context_features=-1),
        ValueError,
        CONTEXT,
    ),
    "CircularElementwise(0)": (lambda: T.CircularElementwise(0), ValueError, f"{FEATURES} 0"),
    "UniformTorus(0)": (lambda: T.UniformTorus(0), ValueError, f"{FEATURES} 0"),
    "ContextStandardize(0)": (
        lambda: T.ContextStandardize(0, 0.0, 1.0),
        ValueError,
        f"{FEATURES} 0",
    ),
    "Autoregressive(0)": (
        lambda: T.Autoregressive(0, T.Affine()),
        ValueError,
        "expected features to be an integer >= 1 or a tuple of positive sizes, got (0,)",
    ),
    "Autoregressive(True)": (
        lambda: T.Autoregressive(True, T.Affine()),
        ValueError,
        "expected features to be an integer >= 1 or a tuple",
    ),
    "VariationalDequantization(steps=-1)": (
        lambda: T.VariationalDequantization(2, 4, steps=-1),
        ValueError,
        "expected steps to be an integer >= 0, got -1",
    ),
    # 2. layers and bases taking a shape
    "ActNorm((0,))": (lambda: T.ActNorm((0,)), ValueError, f"{SHAPE} (0,)"),
    "ActNorm(())": (lambda: T.ActNorm(()), ValueError, f"{SHAPE} ()"),
    "BatchNorm((2, 0))": (lambda: T.BatchNorm((2, 0)), ValueError, f"{SHAPE} (2, 0)"),
    "LULinear((0,))": (lambda: T.LULinear((0,)), ValueError, f"{SHAPE} (0,)"),
    "QRLinear((-1,))": (lambda: T.QRLinear((-1,)), ValueError, f"{SHAPE} (-1,)"),
    "PlainLinear(())": (lambda: T.PlainLinear(()), ValueError, f"{SHAPE} ()"),
    "Permutation((0,))": (lambda: T.Permutation((0,)), ValueError, f"{SHAPE} (0,)"),
    "Reverse(-1)": (lambda: T.Reverse(-1), ValueError, f"{SHAPE} (-1,)"),
    "Scaling((0,))": (lambda: T.Scaling((0,)), ValueError, f"{SHAPE} (0,)"),
    "Logit((0,))": (lambda: T.Logit((0,)), ValueError, f"{SHAPE} (0,)"),
    "Standardize(())": (lambda: T.Standardize(()), ValueError, f"{SHAPE} ()"),
    "DataStandardize((True,))": (
        lambda: T.DataStandardize((True,)),
        ValueError,
        f"{SHAPE} (True,)",
    ),
    "Bounded((0,))": (lambda: T.Bounded((0,)), ValueError, f"{SHAPE} (0,)"),
    "Whiten((0,))": (lambda: T.Whiten((0,)), ValueError, f"{SHAPE} (0,)"),
    "Identity((-1,))": (lambda: T.Identity((-1,)), ValueError, f"{SHAPE} (-1,)"),
    "Identity(context_features=-1)": (
        lambda: T.Identity(2, context_features=-1),
        ValueError,
        CONTEXT,
    ),
    "Sylvester(True)": (lambda: T.Sylvester(True), ValueError, f"{FEATURES} True"),
    "StandardNormal(-1)": (lambda: D.StandardNormal(-1), ValueError, f"{EVENT} (-1,)"),
    "StandardNormal((0,))": (lambda: D.StandardNormal((0,)), ValueError, f"{EVENT} (0,)"),
    "StandardNormal(context_features=-1)": (
        lambda: D.StandardNormal(2, context_features=-1),
        ValueError,
        CONTEXT,
    ),
    "DiagGaussian(context_features=-1)": (
        lambda: D.DiagGaussian((2,), context_features=-1),
        ValueError,
        CONTEXT,
    ),
    "DiagGaussian(())": (lambda: D.DiagGaussian(()), ValueError, f"{EVENT} ()"),
    "GaussianMixture(-1)": (lambda: D.GaussianMixture(-1), ValueError, f"{EVENT} (-1,)"),
    "MADEMoG(0)": (lambda: D.MADEMoG(0), ValueError, f"{EVENT} (0,)"),
    "DiscretizedLogisticMixture((0,))": (
        lambda: T.DiscretizedLogisticMixture((0,)),
        ValueError,
        f"{EVENT} (0,)",
    ),
    # 2. context sizes of layers
    "Planar(context_features=-1)": (lambda: T.Planar(2, context_features=-1), ValueError, CONTEXT),
    "Autoregressive(context_features=-1)": (
        lambda: T.Autoregressive(2, T.Affine(), context_features=-1),
        ValueError,
        CONTEXT,
    ),
    "Coupling(context_features=-1)": (
        lambda: T.Coupling(T.half_mask(4), _mlp, T.Affine(), context_features=-1),
        ValueError,
        CONTEXT,
    ),
    "UniformDequantization(context_features=-1)": (
        lambda: T.UniformDequantization(4, context_features=-1),
        ValueError,
        CONTEXT,
    ),
    # 2. networks
    "MADE(0)": (lambda: D.MADE(0), ValueError, f"{FEATURES} 0"),
    "MADE(params_per_dim=0)": (
        lambda: N.MADE(3, params_per_dim=0),
        ValueError,
        "expected params_per_dim to be an integer >= 1, got 0",
    ),
    "MADE(hidden=(8, 2.5))": (
        lambda: N.MADE(3, hidden=(8, 2.5)),
        ValueError,
        "expected every hidden width to be an integer >= 1, got 2.5",
    ),
    "MADE(context_features=-1)": (lambda: N.MADE(3, context_features=-1), ValueError, CONTEXT),
    "MLP(0, 2)": (lambda: N.MLP(0, 2), ValueError, "expected in_features to be an integer >= 1"),
    "MLP(2, 0)": (lambda: N.MLP(2, 0), ValueError, "expected out_features to be an integer >= 1"),
    "MLP(hidden=(0,))": (
        lambda: N.MLP(2, 2, hidden=(0,)),
        ValueError,
        "expected every hidden width to be an integer >= 1, got 0",
    ),
    "MLP(context_features=-1)": (lambda: N.MLP(2, 2, context_features=-1), ValueError, CONTEXT),
    "ResidualMLP(True, 2)": (
        lambda: N.ResidualMLP(True, 2),
        ValueError,
        "expected in_features to be an integer >= 1, got True",
    ),
    "ResidualMLP(hidden=0)": (
        lambda: N.ResidualMLP(2, 2, hidden=0),
        ValueError,
        "expected hidden to be an integer >= 1, got 0",
    ),
    "ConvResNet(0, 2)": (
        lambda: N.ConvResNet(0, 2),
        ValueError,
        "expected in_channels to be an integer >= 1, got 0",
    ),
    "ConvResNet(blocks=-1)": (
        lambda: N.ConvResNet(2, 2, blocks=-1),
        ValueError,
        "expected blocks to be an integer >= 0, got -1",
    ),
    # 3. masks
    "half_mask(-2)": (lambda: T.half_mask(-2), ValueError, f"{FEATURES} -2"),
    "alternating_mask(0)": (lambda: T.alternating_mask(0), ValueError, f"{FEATURES} 0"),
    "checkerboard_mask((3,))": (lambda: T.checkerboard_mask((3,)), ValueError, f"{IMAGE} (3,)"),
    "checkerboard_mask((1, 0, 2))": (
        lambda: T.checkerboard_mask((1, 0, 2)),
        ValueError,
        f"{IMAGE} (1, 0, 2)",
    ),
    "channel_mask((0, 2, 2))": (
        lambda: T.channel_mask((0, 2, 2)),
        ValueError,
        f"{SHAPE} (0, 2, 2)",
    ),
    # 4. grid steps and chunks
    "grid_steps(1.0, 0.0)": (
        lambda: M.grid_steps(1.0, 0.0),
        ValueError,
        "expected a finite step_size > 0, got 0.0",
    ),
    "grid_steps(1.0, -0.1)": (
        lambda: M.grid_steps(1.0, -0.1),
        ValueError,
        "expected a finite step_size > 0, got -0.1",
    ),
    "grid_steps(nan, 0.1)": (
        lambda: M.grid_steps(float("nan"), 0.1),
        ValueError,
        "expected a finite time > 0, got nan",
    ),
    "default_chunk((0,))": (lambda: C.default_chunk((0,)), ValueError, f"{SHAPE} (0,)"),
    # 5. the flow-matching loss checks what FlowMatching checks
    "flow_matching_loss(sigma=-1)": (
        lambda: M.flow_matching_loss(_cnf(), torch.randn(8, 2), sigma=-1),
        ValueError,
        "expected a finite sigma >= 0, got -1",
    ),
    "flow_matching_loss(ot='yes')": (
        lambda: M.flow_matching_loss(_cnf(), torch.randn(8, 2), ot="yes"),
        ValueError,
        "expected ot to be True or False, got 'yes'",
    ),
    # 6. a target that is not a function
    "reverse_kl(flow, str)": (
        lambda: ff.reverse_kl(_flow(), "not a function", 10),
        TypeError,
        ("expected target_log_prob to be a callable", "got str"),
    ),
    "log_importance_weights(flow, None)": (
        lambda: log_importance_weights(_flow(), None, 10),
        TypeError,
        ("expected target_log_prob to be a callable", "got NoneType"),
    ),
    "vi_diagnostics(flow, 3)": (
        lambda: vi_diagnostics(_flow(), 3, 10),
        TypeError,
        ("expected target_log_prob to be a callable", "got int"),
    ),
    # 7. (L10) messages that name what the user has
    "TorusFlow.log_prob(4.0)": (
        lambda: ff.models.TorusFlow(features=2).eval().log_prob(torch.full((2, 2), 4.0)),
        ValueError,
        "expected a torus flow's input (CircularCoupling's) to be angles in [-pi, pi]",
    ),
    "log_prob(x, context with NaN)": (
        _conditional_with_nan_context,
        ValueError,
        "context contains NaN or inf (first bad batch indices: [3])",
    ),
    # 8. (L11) the solver name is checked before looking for layers
    "set_emerging_solver(flow, 'bogus')": (
        lambda: T.set_emerging_solver(_flow(), "bogus"),
        ValueError,
        "unknown solver 'bogus'; expected one of auto, dense, sequential, parallel",
    ),
    "set_emerging_solver(flow, tol=-1)": (
        lambda: T.set_emerging_solver(_flow(), "parallel", tol=-1.0),
        ValueError,
        "expected a finite tol > 0, got -1.0",
    ),
    # (a reference audit) depths that built models of no flow steps
    "Glow(steps=-3)": (
        lambda: ff.models.Glow(shape=(1, 8, 8), steps=-3),
        ValueError,
        "expected steps to be an integer in [1, 4096], got -3",
    ),
    "RealNVP(image, couplings=-2)": (
        lambda: ff.models.RealNVP(shape=(1, 8, 8), couplings=-2),
        ValueError,
        "expected couplings to be an integer in [0, 4096], got -2",
    ),
    "RealNVP(image, final_couplings=0)": (
        lambda: ff.models.RealNVP(shape=(1, 8, 8), final_couplings=0),
        ValueError,
        "expected final_couplings to be an integer in [1, 4096], got 0",
    ),
    "FFJORD(regularization kinetic -1)": (
        lambda: ff.models.FFJORD(features=2, regularization={"kinetic": -1.0}),
        ValueError,
        "expected regularization['kinetic'] to be a finite number >= 0 (an RNODE weight), got -1",
    ),
    "FFJORD(regularization jacobian 'a')": (
        lambda: ff.models.FFJORD(features=2, regularization={"jacobian": "a"}),
        ValueError,
        "expected regularization['jacobian'] to be a finite number >= 0",
    ),
    # (the reproducer's last case) a path that is not one
    "load(None)": (
        lambda: ff.load(None),
        TypeError,
        "expected path to be a str or os.PathLike (a .ff file or a run folder), got NoneType",
    ),
}


@pytest.mark.parametrize("call, error, fragment", CASES.values(), ids=CASES.keys())
def test_a_bad_argument_gets_one_clear_error(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message  # one line
    for part in (fragment,) if isinstance(fragment, str) else fragment:
        assert part in message, message


def test_sizes_that_are_right_are_still_taken():
    # numpy integers are integers (a width from np.prod, a shape from an array's shape)
    assert T.Planar(np.int64(3)).event_shape == (3,)
    assert D.StandardNormal((np.int64(2), 3)).event_shape == (2, 3)
    assert T.ActNorm(torch.Size([2, 4, 4])).event_shape == (2, 4, 4)
    assert T.LULinear(3).event_shape == (3,)  # an int is a vector's shape
    # a network fed by a context alone takes no input features (a coupling that keeps nothing,
    # VariationalDequantization's first layer), and zero blocks or steps are allowed
    net = N.MLP(0, 4, (8,), context_features=2)
    assert net(torch.zeros(5, 0), torch.zeros(5, 2)).shape == (5, 4)
    N.ConvResNet(0, 2, hidden=4, blocks=0, context_features=3)
    N.ResidualMLP(2, 2, blocks=0)
    T.VariationalDequantization(2, 4, steps=0)
    assert T.channel_mask((4,)).tolist() == [True, True, False, False]
    assert M.grid_steps(1.0, 0.3) == 4
    assert C.default_chunk((3, 128, 128)) == 21
    # the solver is checked first, and a model without emerging layers still counts none
    assert T.set_emerging_solver(_flow(), "parallel") == 0
