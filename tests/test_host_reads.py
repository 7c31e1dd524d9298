"""Nothing in a training step, a scoring pass or sampling reads values back to the host.

On an accelerator every such read (``.item()``, ``bool(tensor)``, indexing by a boolean mask,
``.tolist()``) makes the host wait for the device. The "meta" device stands in for one here:
its tensors have shapes and no values, so any read of a value raises. The flows are
initialised on the CPU (ActNorm and DataStandardize take their statistics from a first
batch), then moved to "meta" with their default ``validate_args`` (None: the input checks
run on CPU tensors only). Layers that solve for their output to a tolerance (the planar
flow's forward, Sylvester's orthogonalisation, residual flows' fixed-point inverse, ODE
solvers) and mini-batch OT's assignment read by design and are not listed (docs/speed.md).
"""

from __future__ import annotations

import math

import pytest
import torch

import flowforge as ff
from flowforge.matching import flow_matching_loss

VEC = (16, 4)
IMG = (4, 1, 8, 8)
FAMILIES = {
    "realnvp": lambda: (ff.models.RealNVP(features=4, layers=2, hidden=(8,)), VEC),
    "nice": lambda: (ff.models.NICE(features=4, layers=2, hidden=(8,)), VEC),
    "nsf": lambda: (ff.models.NSF(features=4, layers=2, hidden=(8,)), VEC),
    "nsf-autoregressive": lambda: (
        ff.models.NSF(features=4, layers=2, hidden=(8,), autoregressive=True),
        VEC,
    ),
    "maf": lambda: (ff.models.MAF(features=4, layers=2, hidden=(8,)), VEC),
    "iaf": lambda: (ff.models.IAF(features=4, layers=2, hidden=(8,)), VEC),
    "maf-conditional": lambda: (
        ff.models.MAF(features=4, layers=2, hidden=(8,), context_features=3),
        VEC,
    ),
    "nsf-dequantized": lambda: (ff.models.NSF(features=4, layers=2, hidden=(8,), levels=5), VEC),
    "radial": lambda: (ff.models.Radial(features=4, layers=2), VEC),
    "glow": lambda: (ff.models.Glow((1, 8, 8), levels=256, hidden=8, steps=1, scales=2), IMG),
    "realnvp-image": lambda: (
        ff.models.RealNVP(shape=(1, 8, 8), levels=256, hidden=8, scales=1),
        IMG,
    ),
    "tarflow": lambda: (ff.models.TarFlow(shape=(1, 8, 8), levels=256), IMG),
    "idf": lambda: (ff.models.IDF(features=4, levels=5), VEC),
    "torus": lambda: (ff.models.TorusFlow(features=2), (16, 2)),
    "sphere": lambda: (ff.models.SphereFlow(), (16, 3)),
    "naf": lambda: (ff.models.NAF(features=4, layers=2, hidden=(8,)), VEC),
    "unaf": lambda: (ff.models.UNAF(features=4, layers=2, hidden=(8,)), VEC),
    "unaf-coupling-conditional": lambda: (
        ff.models.UNAF(features=4, layers=2, hidden=(8,), autoregressive=False, context_features=3),
        VEC,
    ),
    "sospf": lambda: (ff.models.SOSPF(features=4, layers=2, hidden=(8,)), VEC),
    "bpf": lambda: (ff.models.BPF(features=4, layers=2, hidden=(8,)), VEC),
    "bnaf": lambda: (ff.models.BNAF(features=4, layers=2, hidden=4), VEC),
    "bnaf-conditional": lambda: (
        ff.models.BNAF(features=4, layers=2, hidden=4, context_features=3),
        VEC,
    ),
}
# sampling solves a numerical inverse whose iterations read values (by design: it stops when
# they converge); training and scoring must not
SAMPLING_READS = {"bnaf", "bnaf-conditional"}


def _data(name: str, shape: tuple) -> torch.Tensor:
    torch.manual_seed(0)
    if name == "torus":
        return (torch.rand(shape) * 2 - 1) * math.pi
    if name == "sphere":
        return torch.nn.functional.normalize(torch.randn(shape), dim=1)
    if name in ("idf", "nsf-dequantized"):
        return torch.randint(0, 5, shape).float()
    if len(shape) == 4:
        return torch.randint(0, 256, shape).float()
    return torch.randn(shape)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_training_scoring_and_sampling_read_nothing_back(name):
    flow, shape = FAMILIES[name]()
    x = _data(name, shape)
    context = torch.randn(shape[0], 3) if flow.context_features else None
    flow.train()
    flow.log_prob(x, context)  # data-dependent initialisation, on the CPU
    flow.to("meta")
    xm = x.to("meta")
    cm = None if context is None else context.to("meta")
    (-flow.log_prob(xm, cm).mean()).backward()  # any read of a value raises on "meta"
    flow.eval()
    with torch.no_grad():
        assert flow.log_prob(xm, cm).shape == (shape[0],)
        if name in SAMPLING_READS:
            return
        assert flow.sample(3, cm).shape[0] == 3


@pytest.mark.parametrize(
    "options",
    [{}, {"path": "vp"}, {"times": "power", "time_power": 2.0}, {"sigma": 0.01}],
    ids=["linear", "vp", "power-times", "sigma"],
)
def test_a_flow_matching_step_reads_nothing_back(options):
    flow = ff.models.CNF(features=2, hidden=(8,))
    flow_matching_loss(flow, torch.randn(16, 2), **options)  # initialises DataStandardize
    flow.to("meta")
    flow_matching_loss(flow, torch.randn(16, 2, device="meta"), **options).backward()


def test_a_flow_matching_step_on_discrete_data_reads_nothing_back():
    """The dequantizer's value check follows validate_args in a flow-matching step, as in
    log_prob (it read the batch's minimum and maximum back on every step)."""
    flow = ff.models.CNF(features=2, hidden=(8,), levels=5)
    x = torch.randint(0, 5, (16, 2)).float()
    flow_matching_loss(flow, x)  # initialises DataStandardize
    flow.to("meta")
    flow_matching_loss(flow, x.to("meta")).backward()


def test_layer_checks_follow_the_flows_validate_args():
    # a torus flow's angle check: on CPU tensors by default, on any device when asked for,
    # nowhere when switched off (the caller's choice, as for the input scan)
    flow = ff.models.TorusFlow(features=2)
    outside = torch.full((4, 2), 4.0)
    with pytest.raises(ValueError, match=r"angles in \[-pi, pi\]"):
        flow.log_prob(outside)
    flow.validate_args = False
    assert flow.log_prob(outside).shape == (4,)
    from flowforge.core import checking

    meta = torch.zeros(1, device="meta")
    flow.validate_args = True  # inside its calls, the layers check on any device
    with flow._checks():
        assert checking(meta) and checking(torch.zeros(1))
    flow.validate_args = False
    with flow._checks():
        assert not checking(meta) and not checking(torch.zeros(1))
    flow.validate_args = None  # the default: CPU tensors only, as outside a flow call
    with flow._checks():
        assert checking(torch.zeros(1)) and not checking(meta)
    assert checking(torch.zeros(1)) and not checking(meta)
    coupling = flow.to("meta").transform.layers[0]  # a layer's own angle check, on "meta":
    flow.validate_args = False
    with flow._checks():
        assert coupling(outside.to("meta"))[0].shape == (4, 2)  # off: nothing is read
    flow.validate_args = True
    with flow._checks(), pytest.raises(RuntimeError, match="meta"):
        coupling(outside.to("meta"))  # on: it reads the values, which "meta" does not have


def test_an_mflow_training_step_reads_nothing_back():
    """An M-flow's two losses scan their input for NaN as a Flow does, by validate_args (the
    scan read a value back on every call)."""
    from flowforge.models.mflow import mflow

    torch.manual_seed(0)
    m = mflow(3, 2, outer_layers=2, inner_layers=2, hidden=(8,), activation="tanh")
    x = torch.randn(16, 3)
    m.manifold_loss(x)
    m.density_loss(x)
    m.to("meta")
    xm = x.to("meta")
    (m.manifold_loss(xm) + m.density_loss(xm)).backward()
