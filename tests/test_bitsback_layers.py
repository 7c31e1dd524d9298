"""Layer-by-layer local bits-back coding (flowforge.bitsback_layers): every kind of layer
with a declared Jacobian structure round-trips bit for bit, the file is near its ideal code
length, the header says which scheme it used, and old (whole-flow Jacobian) files decode."""

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge import bitsback, bitsback_layers, codec
from flowforge.nets import MADE

pytest.importorskip("constriction")

DATA = Path(__file__).parent / "data" / "bitsback-v2"
# The stored files were written on an AMD EPYC (x86-64, AVX2) before the files' environment key
# recorded the kernels (codec.kernels()); that they were AVX2 in torch and MKL is inferred: an
# Intel Xeon with AVX-512 decodes the spline file only with MKL_CBWR=AVX2 (MKL's AVX-512
# matrix products round differently), and then decodes all of them byte for byte.
# An AMD EPYC with AVX-512, whose MKL names no branch of its own (codec.kernels() says UNSET, or
# AUTO with MKL_CBWR set to anything MKL does not take there, as AVX2), decodes them all byte for
# byte with torch's AVX2 kernels in either mode.
FILES_KERNELS = ("AVX2", "AVX2")


def _files_kernels(kernels) -> bool:
    return kernels[0] == FILES_KERNELS[0] and kernels[1] in (FILES_KERNELS[1], "AUTO", "UNSET")


STORED_FILE_TESTS = (
    "test_old_version_2_files_still_decode",
    "test_files_written_before_escape_flags_still_decode",
    "test_data_the_local_gaussian_cannot_code_is_escaped_not_refused",
    "test_spline_files_written_before_the_grouped_layout_decode_byte_for_byte",
    "test_maf_files_written_before_grouped_made_outputs_decode_byte_for_byte",
)


@pytest.fixture(scope="module")
def _run_with_the_files_kernels(request):
    """Where this process's kernels are not the stored files' (and the CPU can run those),
    the stored-file tests run once more in a process started with them: the names of those
    that passed there. None where this process has the files' kernels."""
    if _files_kernels(codec.kernels()):
        return None
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
    if env.items() <= os.environ.items() or codec.kernels()[0] not in ("AVX2", "AVX512"):
        pytest.skip(f"this process cannot run the stored files' kernels {FILES_KERNELS}")
    ids = [f"{Path(__file__)}::{name}" for name in STORED_FILE_TESTS]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *ids],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return {line.split("::")[-1] for line in r.stdout.splitlines() if line.startswith("PASSED")}


def _here(request) -> bool:
    """Whether the calling stored-file test runs in this process (True), or passed in one
    started with the files' kernels (False)."""
    passed = request.getfixturevalue("_run_with_the_files_kernels")
    if passed is None:
        return True
    assert request.node.name in passed, f"{request.node.name} did not pass with AVX2 kernels"
    return False


def _stored(flow, name: str) -> bytes:
    """The stored file; skipped where it was written on another platform or torch version."""
    blob = (DATA / name).read_bytes()
    if codec.read_header(blob).environment != codec._environment_key(codec._dtype(flow), None):
        pytest.skip("the stored file was written on another platform or torch version")
    return blob


def _same_file(blob: bytes, stored: bytes, flow=None) -> bool:
    """Whether a file written now equals a stored one but for its environment key, which
    records the CPU kernels now (and so the header's CRC), and, given the ``flow``, for a model
    hash an earlier version wrote for it (a builder that gained an argument since records it
    in a freshly built flow's configuration; a flow built by hand has its repr hashed since)."""
    a, b = codec.read_header(blob), codec.read_header(stored)
    if flow is not None and b.model_hash in codec._earlier_hashes(flow):
        assert a.model_hash == codec.model_hash(flow)
        a = dataclasses.replace(a, model_hash=b.model_hash)
    return dataclasses.replace(a, environment=b.environment) == b and (
        blob[a.size :] == stored[b.size :]
    )


def perturbed(flow, seed=0, scale=0.1):
    """The flow with its weights moved off their (often identity) initialisation."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow.eval()


def ints(shape, levels, seed=1):
    return torch.randint(0, levels, shape, generator=torch.Generator().manual_seed(seed))


def step_kinds(flow):
    steps = bitsback_layers.plan(bitsback._copy64(flow).transform)
    return {type(s).__name__ for s in steps}


# name -> (builder, data shape, levels, the step kinds its plan must hold)
FLOWS = {
    # affine couplings (indexed split), the logit preprocessing
    "realnvp": (
        lambda: ff.models.RealNVP(features=6, layers=2, hidden=(16,), levels=5),
        (6,),
        5,
        {"Diag"},
    ),
    # BatchNorm (eval mode: running statistics) between affine couplings
    "realnvp-batchnorm": (
        lambda: ff.models.RealNVP(features=6, layers=2, hidden=(16,), batch_norm=True, levels=5),
        (6,),
        5,
        {"Diag"},
    ),
    # additive couplings, LU linear layers, NICE's scaling
    "nice-lu": (
        lambda: ff.models.NICE(features=6, layers=3, hidden=(16,), permutation="lu", levels=5),
        (6,),
        5,
        {"Diag", "Linear"},
    ),
    # spline couplings, reversals
    "nsf": (
        lambda: ff.models.NSF(features=6, layers=2, hidden=(16,), bins=4, levels=5),
        (6,),
        5,
        {"Diag", "Perm"},
    ),
    # ActNorm, LU 1x1 convolutions, channel-mask affine couplings, squeeze, factor-out with
    # Glow's learned split prior
    "glow": (
        lambda: ff.models.Glow(shape=(1, 4, 4), scales=2, steps=1, hidden=8, levels=3),
        (1, 4, 4),
        3,
        {"Diag", "Linear", "Perm"},
    ),
    # additive couplings with plain 1x1 convolutions, checkerboard masks
    "glow-additive-plain": (
        lambda: ff.models.Glow(
            shape=(1, 4, 4),
            scales=1,
            steps=2,
            hidden=8,
            levels=3,
            coupling="additive",
            permutation="plain",
            mask="checkerboard",
        ),
        (1, 4, 4),
        3,
        {"Diag", "Linear", "Perm"},
    ),
    # the image RealNVP (masked and indexed splits, factor-out without a prior), diagonal base
    "realnvp-image-diag-base": (
        lambda: ff.models.RealNVP(shape=(1, 4, 4), scales=2, hidden=8, levels=3, base="diag"),
        (1, 4, 4),
        3,
        {"Diag", "Perm"},
    ),
}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_round_trip_layer_by_layer(name):
    build, shape, levels, kinds = FLOWS[name]
    torch.manual_seed(0)
    flow = perturbed(build())
    assert kinds <= step_kinds(flow)
    x = ints((6, *shape), levels)
    blob, stats = bitsback.encode_stats(flow, x)  # verify=True: decodes and compares
    assert stats["scheme"] == "layers"
    assert bitsback.read_header(blob).flags == bitsback.FLAG_LAYERS | bitsback.FLAG_ESCAPE
    assert torch.equal(codec.decode(flow, blob), x)
    # the whole-flow Jacobian still codes the same flow, into another file
    jac = bitsback.encode(flow, x, scheme="jacobian")
    assert bitsback.read_header(jac).flags == bitsback.FLAG_ESCAPE and jac != blob
    assert torch.equal(codec.decode(flow, jac), x)


def test_variational_dequantization_layer_by_layer():
    torch.manual_seed(0)
    flow = perturbed(
        ff.models.RealNVP(
            features=4, layers=2, hidden=(16,), levels=5, dequantization="variational"
        )
    )
    x = ints((8, 4), 5)
    blob, stats = bitsback.encode_stats(flow, x)
    assert stats["scheme"] == "layers"
    assert bitsback.read_header(blob).flags == bitsback.FLAGS  # the flow and q's flow
    assert torch.equal(bitsback.decode(flow, blob), x)


def test_file_size_is_near_the_ideal_code_length():
    """``ideal_bits`` is ``-log2 p(y)`` at the cells coded (checked against the flow's own
    log-density), and the payload less the initial bits is within 10% of it and of the NLL.
    The tolerance is loose for this tiny random Glow (16 entries, 3 levels): the noise is
    drawn from the previous example's bits, which are not uniform where the latent's 8 fine
    bits per entry do not cover the noise's 12, so one file's cost strays from its
    expectation. test_bitsback.py's size test (a vector RealNVP, now coded layer by layer)
    holds the coder to 0.2% of ``ideal_bits``; the digits model to 0.3% (docs)."""
    torch.manual_seed(0)
    flow = perturbed(ff.models.Glow(shape=(1, 4, 4), scales=2, steps=1, hidden=8, levels=3))
    x = ints((80, 1, 4, 4), 3)
    seen = []
    push = bitsback_layers.LayerDensity.push

    def spy(self, coder, n):
        push(self, coder, n)
        seen.append((n.copy(), self.last_log_density))

    bitsback_layers.LayerDensity.push = spy
    try:
        blob, stats = bitsback.encode_stats(flow, x, verify=False)
    finally:
        bitsback_layers.LayerDensity.push = push
    y = torch.from_numpy(np.stack([(n + 0.5) / 4096 for n, _ in seen])).reshape(-1, 1, 4, 4)
    f64 = bitsback._copy64(flow)
    with torch.no_grad():
        z, ladj = f64.transform(y)
        log_p = (f64.base.log_prob(z) + ladj).numpy()
    assert np.allclose([d for _, d in seen], log_p, atol=1.0)  # O(sigma) per step
    assert stats["ideal_bits"] == pytest.approx(-log_p.sum() / math.log(2), rel=0.01)
    net = stats["payload_bits"] - stats["initial_bits"]
    assert abs(net - stats["ideal_bits"]) < 32 + 0.1 * stats["ideal_bits"], stats
    with torch.no_grad():
        torch.manual_seed(0)
        nll = -flow.log_prob(x.float().repeat(20, 1, 1, 1)).double().sum().item() / 20
    assert abs(net / (nll / math.log(2)) - 1) < 0.1, (net, nll / math.log(2))
    # initial bits: paid once, a few words per entry at most
    assert 0 < stats["initial_bits"] < 16 * (12 + 14 + 40)
    assert len(blob) * 8 == stats["payload_bits"] + stats["header_bits"]


def test_a_corrupt_layer_wise_payload_is_refused():
    from test_bitsback import _refresh_crcs

    torch.manual_seed(0)
    flow = perturbed(ff.models.Glow(shape=(1, 4, 4), scales=2, steps=1, hidden=8, levels=3))
    blob = codec.encode(flow, ints((6, 1, 4, 4), 3))
    size = bitsback.read_header(blob).size
    for pos in (size + 3, len(blob) - 9):
        bad = bytearray(blob)
        bad[pos] ^= 0x24
        with pytest.raises(codec.CodecError, match="payload fails its CRC"):
            codec.decode(flow, bytes(bad))
        with pytest.raises(codec.CodecError, match="corrupt"):  # the CRCs forged to match
            codec.decode(flow, _refresh_crcs(bytes(bad)))


def test_flows_without_structure_fall_back_to_the_whole_flow_jacobian():
    torch.manual_seed(0)
    maf = perturbed(ff.models.MAF(features=4, layers=2, hidden=(8,), levels=5))
    assert bitsback_layers.plan(bitsback._copy64(maf).transform) is None
    x = ints((4, 4), 5)
    blob, stats = bitsback.encode_stats(maf, x)
    assert stats["scheme"] == "jacobian"
    assert bitsback.read_header(blob).flags == bitsback.FLAG_ESCAPE
    assert torch.equal(codec.decode(maf, blob), x)
    with pytest.raises(codec.CodecError, match="declare its Jacobian's structure"):
        bitsback.encode(maf, x, scheme="layers")
    with pytest.raises(codec.CodecError, match="scheme"):
        bitsback.encode(maf, x, scheme="fast")
    # a header claiming layer-wise coding for this flow: one clear error
    h = bitsback.read_header(blob)
    forged = dataclasses.replace(h, flags=bitsback.FLAG_LAYERS).pack() + blob[h.size :]
    with pytest.raises(codec.CodecError, match="coded layer by layer"):
        codec.decode(maf, forged)
    forged = dataclasses.replace(h, flags=8).pack() + blob[h.size :]
    with pytest.raises(codec.CodecError, match="not a bits-back .ffz file"):
        codec.decode(maf, forged)


def old_flow():
    """The flow of ``tests/data/bitsback-v2``, built by hand (no builder configuration: its
    model hash is of its weights and its repr; the stored files hashed its weights alone)."""
    from flowforge.nets import MLP
    from flowforge.transforms import Affine, Coupling, Reverse, half_mask

    def net(i, o):
        return MLP(i, o, (16,))

    t = ff.Compose(
        Coupling(half_mask(6), net, Affine()), Reverse(6), Coupling(half_mask(6), net, Affine())
    )
    flow = ff.Flow(t, ff.distributions.StandardNormal((6,)), ff.transforms.UniformDequantization(5))
    flow.load_state_dict(torch.load(DATA / "state.pt", weights_only=True))
    return flow.eval()


def test_old_version_2_files_still_decode(request):
    """A file written by the code before layer-wise coding (flags 0), decoded now; the same
    flow is coded layer by layer now."""
    flow = old_flow()
    blob = _stored(flow, "realnvp-jacobian.ffz")
    h = bitsback.read_header(blob)
    assert h.version == 2 and h.flags == 0
    if not _here(request):
        return
    x = np.load(DATA / "x.npy")
    assert np.array_equal(codec.decode(flow, blob).numpy(), x)
    assert bitsback.read_header(codec.encode(flow, torch.from_numpy(x))).flags == 5


def test_files_written_before_escape_flags_still_decode(request):
    """A layer-wise file (flags 1) written before examples carried escape flags, by the main
    branch at commit 7bed373, decoded now."""
    flow = old_flow()
    blob = _stored(flow, "realnvp-layers.ffz")
    assert bitsback.read_header(blob).flags == bitsback.FLAG_LAYERS
    if not _here(request):
        return
    assert np.array_equal(codec.decode(flow, blob).numpy(), np.load(DATA / "x.npy"))


def test_data_the_local_gaussian_cannot_code_is_escaped_not_refused(request):
    # uniform random integers lie far out in this small flow's tails: bits drawn back from
    # what earlier examples coded there land far out too, and some example's inverse then
    # misses its window (the encoder used to stop with "cannot be bits-back coded")
    flow = old_flow()
    x = torch.from_numpy(np.load(DATA / "x-escapes.npy"))
    blob, stats = bitsback.encode_stats(flow, x)
    assert stats["escapes"] >= 1 and stats["scheme"] == "layers"
    assert torch.equal(codec.decode(flow, blob), x)
    # the same file, stored: the coder's arithmetic must not drift between versions (a change
    # in a layer's floating-point evaluation breaks every file written before it)
    stored = _stored(flow, "realnvp-escapes.ffz")
    if _here(request):
        assert _same_file(blob, stored, flow)  # (written when its hash was of its weights)
        assert torch.equal(codec.decode(flow, stored), x)


def spline_flow():
    """The spline flow of ``tests/data/bitsback-v2/nsf-layers.ffz`` (weights in
    ``nsf-state.pt``)."""
    from flowforge.nets import MLP
    from flowforge.transforms import Coupling, RationalQuadratic, Reverse, half_mask

    def net(i, o):
        return MLP(i, o, (16,))

    t = ff.Compose(
        Coupling(half_mask(6), net, RationalQuadratic(bins=4, bound=3.0)),
        Reverse(6),
        Coupling(half_mask(6), net, RationalQuadratic(bins=4, bound=3.0)),
    )
    flow = ff.Flow(t, ff.distributions.StandardNormal((6,)), ff.transforms.UniformDequantization(5))
    flow.load_state_dict(torch.load(DATA / "nsf-state.pt", weights_only=True))
    return flow.eval()


def _decodes_and_reproduces(request, flow, name: str) -> None:
    """The stored file ``name`` (of the examples in ``x-escapes.npy``) decodes, and the current
    encoder writes it again byte for byte (but for the environment key)."""
    stored = _stored(flow, name)
    if not _here(request):
        return
    x = torch.from_numpy(np.load(DATA / "x-escapes.npy"))
    assert torch.equal(codec.decode(flow, stored), x)
    assert _same_file(codec.encode(flow, x), stored, flow)


def test_spline_files_written_before_the_grouped_layout_decode_byte_for_byte(request):
    """Spline couplings now read their parameters bins-second, from conditioners that return
    them grouped: faster, and the coder's arithmetic must not drift (a relative change of
    1e-12 in a bin's left edge already makes this file undecodable)."""
    _decodes_and_reproduces(request, spline_flow(), "nsf-layers.ffz")


def test_maf_files_written_before_grouped_made_outputs_decode_byte_for_byte(request):
    """MADE returns its parameters grouped now (permuted output rows); the coder's copy keeps
    the plain layout, and a whole-Jacobian MAF file written before must still decode."""
    flow = ff.models.MAF(features=6, layers=2, hidden=(16,), levels=5)
    flow.load_state_dict(torch.load(DATA / "maf-state.pt", weights_only=True))
    _decodes_and_reproduces(request, flow.eval(), "maf-jacobian.ffz")
    assert not any(m.grouped for m in bitsback._copy64(flow).modules() if isinstance(m, MADE))


def test_the_plan_reproduces_the_flow_and_tracks_the_grids():
    torch.manual_seed(0)
    flow = perturbed(ff.models.Glow(shape=(1, 4, 4), scales=2, steps=1, hidden=8, levels=3))
    f64 = bitsback._copy64(flow)
    steps = bitsback_layers.plan(f64.transform)
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 3
    v = x.reshape(-1).numpy().copy()
    for s in steps:  # the steps, applied in turn, are the flow
        if isinstance(s, bitsback_layers.Perm):
            v = s.apply(v)
        else:
            v[s.lo : s.lo + s.n] = s.forward(v[s.lo : s.lo + s.n], None)
    with torch.no_grad():
        want = f64.transform(x)[0].reshape(-1).numpy()
    assert np.allclose(v, want, rtol=1e-12, atol=1e-12)
    # a coupling right after the data leaves its kept half on the data's grid: an identity
    # step puts it onto the latent grid before the base codes it
    flow2 = ff.Flow(
        ff.transforms.Coupling(
            ff.transforms.half_mask(4), lambda i, o: ff.nets.MLP(i, o, (8,)), ff.transforms.Affine()
        ),
        ff.distributions.StandardNormal((4,)),
        ff.transforms.UniformDequantization(5),
    )
    perturbed(flow2)
    last = bitsback_layers.plan(bitsback._copy64(flow2).transform)[-1]
    assert isinstance(last, bitsback_layers.Diag) and last.moved.sum() == 2
    x = ints((5, 4), 5)
    blob, stats = bitsback.encode_stats(flow2, x)
    assert stats["scheme"] == "layers" and torch.equal(codec.decode(flow2, blob), x)
