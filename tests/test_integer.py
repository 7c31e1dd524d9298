"""Integer discrete flows and the lossless codec: exact integer round trips, a likelihood that
sums to one, the .ffz file and every way a file or an input can be wrong."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge import codec
from flowforge import transforms as T

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_idf(seed=0, features=6, levels=5, **kw):
    torch.manual_seed(seed)
    options = dict(layers=3, hidden=(8,), prior_blocks=3, prior_hidden=(8,), components=2)
    flow = ff.models.IDF(features=features, levels=levels, **{**options, **kw})
    with torch.no_grad():  # away from the identity start, so the couplings really shift
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return flow.eval()


def data(n=10, features=6, levels=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n, features), generator=g)


# -- the flow ------------------------------------------------------------------------------------


def test_round_trip_on_integers_is_exact_and_shifts_are_integers():
    flow = tiny_idf(levels=17, features=8)
    x = data(50, 8, 17).float()
    z, ladj = flow.transform(x)
    assert torch.equal(z, z.round()) and not torch.equal(z, x), "latent not integer or no shift"
    assert torch.equal(ladj, torch.zeros(50))
    back, _ = flow.transform.inverse(z)
    assert torch.equal(back, x)


def test_image_idf_round_trip_and_factor_out():
    torch.manual_seed(0)
    flow = ff.models.IDF(shape=(1, 8, 8), levels=17, layers=2, hidden=8, blocks=0).eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    # two scales: squeeze to (4, 4, 4), factor out 2 channels (32 entries), squeeze the kept
    # (2, 4, 4) to (8, 2, 2): the deepest 32 entries come last and are coded first
    assert flow.base.blocks == (32, 32)
    x = data(4, 64, 17).reshape(4, 1, 8, 8).float()
    z, _ = flow.transform(x)
    assert torch.equal(flow.transform.inverse(z)[0], x)
    assert torch.isfinite(flow.log_prob(x)).all()


def test_probabilities_sum_to_one_by_enumeration():
    """Sum P(x) over a box of Z^2 that holds all but a negligible tail: the flow is a bijection
    of Z^2, so the total is the prior's total mass, 1."""
    flow = tiny_idf(features=2, levels=3, prior_blocks=2, partitions=2).double()
    grid = torch.arange(-60.0, 61.0, dtype=torch.float64)
    x = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        z, _ = flow.transform(x)
        total = flow.base.log_prob(z).exp().sum().item()
        support = torch.tensor(list(itertools.product(range(3), repeat=2)), dtype=torch.float64)
        inside = flow.log_prob(support).exp().sum().item()
    assert abs(total - 1) < 1e-9, total
    assert 0 < inside <= 1


def test_prior_log_pmf_is_the_discretized_mixture():
    prior = T.DiscretizedLogisticMixture(1, components=2).double()
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([[-1.0, 3.0]]))
        prior.log_scale.copy_(torch.tensor([[0.0, -0.5]]))
        prior.logits.copy_(torch.tensor([[0.2, -0.1]]))
    z = torch.tensor([[-2.0], [0.0], [3.0]], dtype=torch.float64)
    w = torch.softmax(torch.tensor([0.2, -0.1], dtype=torch.float64), 0)
    s = torch.tensor([1.0, np.exp(-0.5)], dtype=torch.float64)
    mu = torch.tensor([-1.0, 3.0], dtype=torch.float64)
    want = (w * (torch.sigmoid((z + 0.5 - mu) / s) - torch.sigmoid((z - 0.5 - mu) / s))).sum(1)
    assert torch.allclose(prior.log_prob(z).exp(), want, rtol=1e-12)


def test_samples_are_integers_in_range():
    flow = tiny_idf(levels=17, features=8)
    s = flow.sample(20)
    assert s.shape == (20, 8) and torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= 16


def test_sample_and_log_prob_gives_the_clamped_samples_and_their_own_log_probabilities():
    # (an audit) the inherited sample_and_log_prob returned values beyond the levels, which
    # the flow's own log_prob then refused as "expected integer data"; rsample had no gradient
    flow = tiny_idf(levels=17, features=8)
    torch.manual_seed(3)
    x, lp = flow.sample_and_log_prob(200)
    assert x.min() >= 0 and x.max() <= 16 and torch.equal(x, x.round())
    assert torch.equal(lp, flow.log_prob(x))
    torch.manual_seed(3)
    assert torch.equal(x, flow.sample(200))
    for call in (flow.rsample, flow.rsample_and_log_prob):
        with pytest.raises(ValueError, match="no gradient reaches them"):
            call(4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_an_integer_flow_in_half_precision_is_refused_as_every_flow_is(dtype):
    # log_prob skipped the flow's checks: a float16 IDF scored 0.4-0.7 nats off, silently
    flow = tiny_idf(levels=5).to(dtype)
    with pytest.raises(ValueError, match="computes densities in float32 or float64"):
        flow.log_prob(data())


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.full((2, 6), 5.0), r"expected integer data in \[0, 4\]"),
        (torch.full((2, 6), -1.0), r"got values in \[-1, -1\]"),
        (torch.full((2, 6), 1.5), "non-integer"),
    ],
)
def test_log_prob_refuses_data_off_the_grid(x, match):
    with pytest.raises(ValueError, match=match):
        tiny_idf().log_prob(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(features=4), "needs levels="),
        (dict(features=4, levels=17, partitions=5), "partitions"),
        (dict(features=4, levels=17, prior_blocks=5), "prior_blocks"),
        (dict(features=4, levels=17, permutation="lu"), "unknown permutation"),
        (dict(shape=(1, 8, 8), levels=17, prior_blocks=2), "prior_blocks is for vectors"),
        (dict(shape=(1, 6, 6), levels=17, scales=2), "divisible by 4"),
    ],
)
def test_builder_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ff.models.IDF(**kwargs)


def test_integer_coupling_argument_errors():
    with pytest.raises(ValueError, match="scale > 0"):
        T.IntegerCoupling(T.half_mask(4), lambda i, o: torch.nn.Linear(i, o), 0.0, 0.0)
    with pytest.raises(ValueError, match="sum to the latent"):
        T.DiscretizedLogisticMixture(4, blocks=(2, 1))


# -- the codec -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [4, 64])
def test_codec_round_trip_is_exact(chunk):
    flow = tiny_idf()
    x = data(10)
    blob = codec.encode(flow, x, chunk=chunk)
    back = codec.decode(flow, blob)
    assert back.dtype == torch.int64 and torch.equal(back, x)


def test_hand_built_flows_differing_only_in_settings_have_different_hashes():
    # a coupling's center and scale are no tensors: the hash of a flow built without a
    # configuration covers them through its repr, so a file is refused as another model's
    from flowforge.core import Compose
    from flowforge.models.integer import IntegerFlow
    from flowforge.nets import MLP
    from flowforge.transforms import DiscretizedLogisticMixture, IntegerCoupling, half_mask

    def build(scale, center=8.0):
        torch.manual_seed(0)
        t = Compose(IntegerCoupling(half_mask(4), lambda i, o: MLP(i, o, (8,)), center, scale))
        base = DiscretizedLogisticMixture(4, 2, center=8.0, spread=17.0)
        return IntegerFlow(t, base, 17).eval()

    a = build(17.0)
    assert codec.model_hash(a) == codec.model_hash(build(17.0))
    assert codec.model_hash(a) != codec.model_hash(build(3.0))
    assert codec.model_hash(a) != codec.model_hash(build(17.0, center=7.0))
    x = data(20, 4, 17)
    with pytest.raises(codec.CodecError, match="another model"):
        codec.decode(build(3.0), codec.encode(a, x))


def test_sparse_tensors_are_coded_as_their_values():
    flow, x = tiny_idf(), data(6)
    assert torch.equal(codec.decode(flow, codec.encode(flow, x.to_sparse())), x)


def test_ideal_bits_takes_the_encoders_default_chunk():
    flow = tiny_idf(levels=5, features=20_000, layers=1)
    x = data(60, 20_000, 5)
    assert codec.ideal_bits(flow, x) > 0  # (64 examples of 20,000 values: over the limit)


def test_codec_escapes_values_outside_the_window():
    flow = tiny_idf(levels=17, features=8)
    x = data(12, 8, 17)
    blob = codec.encode(flow, x, radius=1)  # a 3-value window: most entries escape
    assert torch.equal(codec.decode(flow, blob), x)
    assert len(blob) > len(codec.encode(flow, x))  # escapes cost raw bits


def _reference_tables(w, loc, log_scale, lo, r):
    """The mixture's CDF at the window's edges and the integer tables, as the format defined
    them, in one expression over the (rows, window, components) array: what codec._counts
    must give bit for bit, however it is computed (a file decodes only from the same
    integers; a CDF one rounding off changes an integer too seldom for the integers alone to
    show it)."""
    with np.errstate(all="ignore"):
        edges = lo[:, None] - 0.5 + np.arange(2 * r + 2)[None, :]
        inv = np.exp(-log_scale)
        u = (edges[:, :, None] - loc[:, None, :]) * inv[:, None, :]
        cdf = (w[:, None, :] / (1.0 + np.exp(-np.clip(u, -700, 700)))).sum(-1)
        mass = np.diff(cdf, axis=1)
        escape = np.clip(1.0 - (cdf[:, -1] - cdf[:, 0]), 0.0, 1.0)
        p = np.clip(np.concatenate([mass, escape[:, None]], 1), 0.0, None)
        p /= p.sum(-1, keepdims=True)
        total, bins = 1 << codec.PRECISION, p.shape[1]
        counts = np.floor(p * (total - bins)).astype(np.int64) + 1
        counts[np.arange(len(counts)), counts.argmax(-1)] += total - counts.sum(-1)
    return cdf, counts


@pytest.mark.parametrize("k", [1, 2, 3, 8, 9, 17, 130])
def test_the_tables_are_the_formats_integers_bit_for_bit(k):
    # codec._counts sums the components one buffer at a time, in the order numpy's sum over
    # the components' axis adds them (pairwise: sequential below 8, eight running sums up to
    # 128, halves beyond), rows a cache's worth at a time: the same integers as the formula.
    # (Should a numpy sum in another order one day, the reference moves, not the codec: its
    # files were written in this order.)
    g = np.random.default_rng(k)
    for r, m in ((4, 3000), (37, 200), (512, 70), (3000, 2)):
        w = np.exp(g.normal(size=(m, k)))
        w /= w.sum(-1, keepdims=True)
        loc = g.normal(scale=r / 2, size=(m, k))
        log_scale = g.uniform(-7.0, math.log(r + 1.0), size=(m, k))
        if r == 37:  # a damaged model's values: NaN, infinities, overflow
            for a in (w, loc, log_scale):
                hit = g.uniform(size=a.shape) < 0.05
                a[hit] = g.choice([np.nan, np.inf, -np.inf, 1e300, -1e300, -0.0], hit.sum())
        lo = np.rint((w * loc).sum(-1)).astype(np.int64) - r if r != 37 else np.zeros(m, np.int64)
        cdf, counts = _reference_tables(w, loc, log_scale, lo, r)
        with np.errstate(all="ignore"):
            ours = codec._mixture_cdf(w, loc, log_scale, lo, 2 * r + 2)
        assert np.array_equal(ours, cdf, equal_nan=True), (k, r)  # every bit of every float
        assert np.array_equal(codec._counts(w, loc, log_scale, lo, r), counts), (k, r)


def test_file_size_matches_the_likelihood():
    flow = tiny_idf(levels=17, features=8)
    x = data(200, 8, 17)
    blob = codec.encode(flow, x)
    nll_bits = -flow.log_prob(x.float()).sum().item() / np.log(2)
    ideal = codec.ideal_bits(flow, x)
    header = codec.read_header(blob).size * 8
    # the tables give every value at least 2**-24, so a value the random model finds less
    # likely than that costs a little less than its NLL; otherwise they cost the NLL
    assert nll_bits * 0.99 <= ideal <= nll_bits * 1.001, (ideal, nll_bits)
    payload = len(blob) * 8 - header
    assert ideal <= payload <= ideal + 64, (payload, ideal)


def test_header_records_what_decoding_needs():
    flow = tiny_idf()
    h = codec.read_header(codec.encode(flow, data(7), chunk=3, threads=2))
    assert (h.count, h.shape, h.levels, h.chunk, h.threads) == (7, (6,), 5, 3, 2)
    assert h.model_hash == codec.model_hash(flow) and h.version == codec.VERSION


def _reheader(blob: bytes, **changes) -> bytes:
    """``blob`` with header fields changed and the header CRC recomputed (a forged file)."""
    h = codec.read_header(blob)
    fields = {**h.__dict__, **changes}
    return codec.Header(**fields).pack() + blob[h.size :]


def test_decode_errors():
    flow = tiny_idf()
    blob = codec.encode(flow, data(10))
    size = codec.read_header(blob).size
    with pytest.raises(codec.CodecError, match="not a flowforge .ffz file"):
        codec.decode(flow, b"PK\x03\x04" + blob[4:])
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.decode(flow, blob[:-4])
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.decode(flow, blob[:12])
    with pytest.raises(codec.CodecError, match="trailing bytes"):
        codec.decode(flow, blob + b"\0\0\0\0")
    bad = bytearray(blob)
    bad[10] ^= 0x01
    with pytest.raises(codec.CodecError, match="header fails its CRC"):
        codec.decode(flow, bytes(bad))
    bad = bytearray(blob)
    bad[size + 1] ^= 0x10
    with pytest.raises(codec.CodecError, match="payload fails its CRC"):
        codec.decode(flow, bytes(bad))
    with pytest.raises(codec.CodecError, match="unsupported .ffz version 3"):
        codec.decode(flow, blob[:4] + struct.pack("<H", 3) + blob[6:])
    with pytest.raises(codec.CodecError, match="header fails its CRC"):  # read as bits-back
        codec.decode(flow, blob[:4] + struct.pack("<H", 2) + blob[6:])
    with pytest.raises(codec.CodecError, match="another model"):
        codec.decode(tiny_idf(seed=5), blob)
    with pytest.raises(codec.CodecError, match="takes shape"):
        codec.decode(tiny_idf(features=7), blob)
    with pytest.raises(codec.CodecError, match="impossible header values"):
        codec.decode(flow, _reheader(blob, chunk=2**20))
    with pytest.raises(codec.CodecError, match="impossible header values"):
        codec.decode(flow, _reheader(blob, count=2**30))
    with pytest.raises(codec.CodecError, match="another environment"):
        codec.decode(flow, _reheader(blob, environment=12345))
    assert torch.equal(codec.decode(flow, _reheader(blob, environment=12345), force=True), data(10))


def test_a_damaged_payload_with_a_matching_crc_is_still_caught():
    flow = tiny_idf()
    blob = codec.encode(flow, data(10))
    h = codec.read_header(blob)
    payload = bytearray(blob[h.size :])
    payload[0] ^= 0xFF
    forged = _reheader(blob, payload_crc=zlib.crc32(bytes(payload)))[: h.size] + bytes(payload)
    with pytest.raises(codec.CodecError, match="corrupt") as e:
        codec.decode(flow, forged)
    assert "kernels" not in str(e.value)  # the file records its kernels: they are not the cause
    # the same damage in a file written before the kernels were recorded: they may be the cause
    old = codec._environment_key(torch.float32, None)
    with pytest.raises(codec.CodecError, match="corrupt .* does not record the CPU kernels"):
        codec.decode(flow, _reheader(forged, environment=old))


def test_files_written_with_other_cpu_kernels_name_them():
    """The same torch computes with AVX2 or AVX-512 kernels by the CPU (MKL's matrix products
    round differently), so a file records them, and one written with others names the setting
    that decodes it."""
    flow = tiny_idf()
    blob = codec.encode(flow, data(10))
    here = codec.kernels()
    assert len(here) == 2 and all(isinstance(k, str) and k for k in here)
    assert codec.read_header(blob).environment == codec.environment(flow)
    other = ("AVX2", "AVX2") if here != ("AVX2", "AVX2") else ("AVX512", "AVX512_E1")
    env = codec._environment_key(torch.float32, other)
    setting = f"ATEN_CPU_CAPABILITY={other[0].lower()} MKL_CBWR={other[1]}"
    with pytest.raises(codec.CodecError, match=f"other CPU kernels .*{setting}"):
        codec.decode(flow, _reheader(blob, environment=env))
    assert torch.equal(codec.decode(flow, _reheader(blob, environment=env), force=True), data(10))
    # a file written before the kernels were recorded is decoded as it comes
    old = _reheader(blob, environment=codec._environment_key(torch.float32, None))
    assert torch.equal(codec.decode(flow, old), data(10))
    # the bits-back coder's files likewise
    vflow = ff.models.RealNVP(features=4, layers=2, hidden=(8,), levels=5).eval()
    x = torch.randint(0, 5, (6, 4))
    bb = codec.encode(vflow, x)
    h = codec.read_header(bb)
    forged = dataclasses.replace(h, environment=env).pack() + bb[h.size :]
    with pytest.raises(codec.CodecError, match=f"other CPU kernels .*{setting}"):
        codec.decode(vflow, forged)


def _other_kernels_failing(blob: bytes, env: int) -> bytes:
    """``blob`` as another machine's kernels would leave it for this one: recording ``env``,
    its payload decoding to something else (changed, with its CRC made to match, since the
    decoder cannot tell other rounding from other bytes)."""
    h = codec.read_header(blob)
    payload = bytearray(blob[h.size :])
    payload[0] ^= 0xFF
    h = dataclasses.replace(h, environment=env, payload_crc=zlib.crc32(bytes(payload)))
    return h.pack() + bytes(payload)


def test_a_forced_decode_that_fails_blames_the_kernels_not_the_file():
    """With --force on a file written with other CPU kernels, the failure read "corrupt .ffz
    file: it decodes to values outside the data's 17 levels" (or "its payload ran out after 0
    of the 40 examples"), though the file decoded bit for bit with the recorded kernels: a
    user could delete a good file."""
    here = codec.kernels()
    other = ("AVX2", "AVX2") if here != ("AVX2", "AVX2") else ("AVX512", "AVX512_E1")
    setting = f"ATEN_CPU_CAPABILITY={other[0].lower()} MKL_CBWR={other[1]}"
    env = codec._environment_key(torch.float32, other)
    vflow = ff.models.RealNVP(features=4, layers=2, hidden=(8,), levels=5).eval()
    for flow, x in ((tiny_idf(), data(10)), (vflow, torch.randint(0, 5, (6, 4)))):
        forged = _other_kernels_failing(codec.encode(flow, x), env)
        decoders = [codec.decode] + [ff.bitsback.decode] * (flow is vflow)
        for decode in decoders:
            with pytest.raises(codec.CodecError) as e:
                decode(flow, forged, force=True)
            msg = str(e.value)
            assert "\n" not in msg and not msg.startswith("corrupt"), msg
            assert "probably intact" in msg and setting in msg and "what failed here" in msg
        with pytest.raises(codec.CodecError, match="other CPU kernels"):  # (unforced: refused)
            codec.decode(flow, forged)
    # the same damage in a file of this environment is a corrupt file
    blob = codec.encode(tiny_idf(), data(10))
    forged = _other_kernels_failing(blob, codec.read_header(blob).environment)
    with pytest.raises(codec.CodecError, match="^corrupt"):
        codec.decode(tiny_idf(), forged, force=True)


def test_a_file_of_mkl_unset_is_told_from_one_of_mkl_auto(monkeypatch):
    # (an AMD EPYC with AVX-512: MKL names no branch, and computes otherwise unset than set)
    flow = tiny_idf()
    monkeypatch.setattr(codec, "kernels", lambda: ("AVX512", "UNSET"))
    blob = codec.encode(flow, data(3))
    monkeypatch.setattr(codec, "kernels", lambda: ("AVX512", "AUTO"))
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    with pytest.raises(codec.CodecError, match=r"MKL UNSET; here torch AVX512, MKL AUTO") as e:
        codec.decode(flow, blob)
    assert "MKL_CBWR='' set" in str(e.value) and "MKL here did not take it" not in str(e.value)
    monkeypatch.setattr(codec, "kernels", lambda: ("AVX512", "UNSET"))
    assert torch.equal(codec.decode(flow, blob), data(3))
    # a file of flowforge before 2026-12-07 on such a CPU named both modes "2": taken as it
    # comes (as a file that does not record its kernels), not refused
    monkeypatch.setattr(codec, "kernels", lambda: ("AVX512", "2"))
    old = codec.encode(flow, data(3))
    for mode in ("UNSET", "AUTO"):
        monkeypatch.setattr(codec, "kernels", lambda mode=mode: ("AVX512", mode))
        assert torch.equal(codec.decode(flow, old), data(3))
    # a file of an Intel CPU's AVX2 path, read where MKL ignored MKL_CBWR=AVX2: said so
    monkeypatch.setattr(codec, "kernels", lambda: ("AVX2", "AVX2"))
    blob = codec.encode(flow, data(3))
    monkeypatch.setattr(codec, "kernels", lambda: ("AVX2", "AUTO"))
    with pytest.raises(codec.CodecError, match="MKL here did not take it: it runs AUTO"):
        codec.decode(flow, blob)


def test_kernels_name_mkls_code_path_as_mkl_cbwr_does():
    # MKL numbers its code paths 1 (unset) and 2 (AUTO) for the CPU's own choice, 3 COMPATIBLE,
    # 4 SSE2, ..., with STRICT a flag: each is named as the MKL_CBWR setting that selects it
    if codec.kernels()[1] == "none":
        pytest.skip("this torch has no MKL")

    def mkl(setting):
        env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
        if setting:
            env["MKL_CBWR"] = setting
        code = "from flowforge import codec; print(codec.kernels()[1])"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        return out.stdout.strip()

    own = mkl(None)
    assert own not in ("", "1", "2") and mkl("COMPATIBLE") == "COMPATIBLE"
    if own == "UNSET":  # where MKL names no branch of its own (an AMD EPYC with AVX-512), it
        # takes no setting but COMPATIBLE, and computes otherwise unset than with any value
        assert mkl("AUTO") == mkl("AVX2") == "AUTO" and mkl("") == "UNSET"
        assert codec.kernel_setting(("AVX512", "UNSET")).endswith("MKL_CBWR=''")
    else:
        assert mkl("AUTO") == own
        if codec.kernels()[0] in ("AVX2", "AVX512"):
            assert mkl("AVX2,STRICT") == "AVX2,STRICT"
    # a file from an s390x build names the ATEN_CPU_CAPABILITY value, not torch's label
    flow = tiny_idf()
    env = codec._environment_key(torch.float32, ("Z VECTOR", "none"))
    forged = _reheader(codec.encode(flow, data(3)), environment=env)
    with pytest.raises(codec.CodecError, match=r"ATEN_CPU_CAPABILITY=zvector set"):
        codec.decode(flow, forged)


def test_encode_errors():
    flow = tiny_idf()
    with pytest.raises(codec.CodecError, match=r"expected data in \[0, 4\]"):
        codec.encode(flow, data(3) + 1)
    with pytest.raises(codec.CodecError, match=r"shape \(N, 6\)"):
        codec.encode(flow, data(3, 5))
    with pytest.raises(codec.CodecError, match="integer data"):
        codec.encode(flow, data(3).float() + 0.5)
    with pytest.raises(codec.CodecError, match="at least one example"):
        codec.encode(flow, data(0))
    with pytest.raises(codec.CodecError, match="without levels"):
        codec.encode(ff.models.RealNVP(features=6, layers=2, hidden=(8,)), data(3))
    with pytest.raises(codec.CodecError, match="chunk"):
        codec.encode(flow, data(3), chunk=0)
    with pytest.raises(codec.CodecError, match="radius"):
        codec.encode(flow, data(3), radius=0)


def test_codec_survives_save_and_load(tmp_path):
    flow = tiny_idf()
    blob = codec.encode(flow, data(10))
    ff.save(flow, tmp_path / "m.ff")
    again = ff.load(tmp_path / "m.ff").eval()
    assert codec.model_hash(again) == codec.model_hash(flow)
    assert torch.equal(codec.decode(again, blob), data(10))


def test_image_idf_reloads_as_saved(tmp_path):
    """The saved configuration (JSON lists) rebuilds the same model."""
    torch.manual_seed(0)
    flow = ff.models.IDF(shape=(1, 8, 8), levels=17, layers=1, blocks=0)
    ff.save(flow, tmp_path / "m.ff")
    again = ff.load(tmp_path / "m.ff")
    assert codec.model_hash(again) == codec.model_hash(flow)


def test_a_model_saved_before_its_builder_gained_an_argument_keeps_its_hash(tmp_path):
    # files coded with a model saved before RealNVP had `residual` must still decode once the
    # model is reloaded by today's code, which completes the arguments (registry.LEGACY)
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=4, layers=2, hidden=(8,), levels=17)
    del flow.config["kwargs"]["residual"]  # as such a model was saved
    ff.save(flow, tmp_path / "old.ff")
    blob = ff.codec.encode(flow, torch.randint(0, 17, (3, 4)))
    again = ff.load(tmp_path / "old.ff")
    assert again.config["kwargs"]["residual"] is False  # completed
    assert codec.model_hash(again) == codec.model_hash(flow)
    assert ff.codec.decode(again, blob).shape == (3, 4)
    fresh = ff.models.RealNVP(features=4, layers=2, hidden=(8,), levels=17)
    ff.save(fresh, tmp_path / "new.ff")  # a model saved today keeps its identity too
    assert codec.model_hash(ff.load(tmp_path / "new.ff")) == codec.model_hash(fresh)


def test_files_coded_by_earlier_versions_still_decode(tmp_path):
    # earlier versions hashed a reloaded model's configuration as completed by the builder
    # arguments known then (registry.LEGACY: standardize, shift_first; residual came later)
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=4, layers=2, hidden=(8,), levels=17)
    for k in ("residual", "shift_first", "standardize"):
        del flow.config["kwargs"][k]  # a model saved before these arguments existed
    ff.save(flow, tmp_path / "old.ff")
    then = copy.deepcopy(flow)
    then.config["kwargs"].update(standardize=False, shift_first=False)
    x = torch.randint(0, 17, (3, 4))
    blob = ff.codec.encode(then, x)
    assert torch.equal(ff.codec.decode(ff.load(tmp_path / "old.ff"), blob).long(), x)
    other = ff.load(tmp_path / "old.ff")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(codec.CodecError, match="another model"):
        ff.codec.decode(other, blob)


def test_a_header_that_promises_more_examples_than_the_payload_holds():
    # a forged count must neither allocate for it nor decode past the end of the payload
    flow = tiny_idf()
    blob = codec.encode(flow, data(10))
    h = codec.read_header(blob)
    count = 2**31 // math.prod(h.shape) - 1
    with pytest.raises(codec.CodecError, match="payload ran out after"):
        codec.decode(flow, _reheader(blob, count=count - count % h.chunk))


def test_samples_outside_the_levels_are_clamped_and_counted(tmp_path, capsys, monkeypatch):
    from cli_support import TINY_IDF, cli
    from flowforge.models import IntegerFlow

    rc, _, err = cli(capsys, *TINY_IDF, "--out", tmp_path / "r")
    assert rc == 0, err
    flow = ff.load(tmp_path / "r")
    x = flow.sample(64)
    assert 0 <= x.min() and x.max() <= flow.levels - 1
    assert 0 <= float(flow.clamped) <= 1  # the fraction of values drawn outside the levels
    big = flow.base.sample
    flow.base.sample = lambda n, context=None, temperature=1.0: big(n) + 1000  # far outside
    flow.sample(8)
    assert float(flow.clamped) > 0.5
    from flowforge.workbench import report

    real, calls = IntegerFlow.sample, []

    def first_chunk_outside(self, *args, **kwargs):  # all of the first chunk, none after
        x = real(self, *args, **kwargs)
        self.clamped = torch.tensor(0.0 if calls else 1.0)
        calls.append(len(x))
        return x

    monkeypatch.setattr(IntegerFlow, "sample", first_chunk_outside)
    monkeypatch.setattr(report, "SAMPLE_CHUNK", 16)  # 64 samples in 4 draws: all counted
    rc, out, err = cli(capsys, "sample", tmp_path / "r", "-n", 64, "--out", tmp_path / "s.npy")
    assert calls == [16, 16, 16, 16]
    assert rc == 0 and "wrote 64 samples" in out
    assert "warning: 25.00% of the sampled values fell outside the data's 17 levels" in err


def test_the_report_of_an_integer_flow_makes_no_normality_claim(tmp_path, capsys):
    from cli_support import TINY_IDF, cli

    rc, _, err = cli(capsys, *TINY_IDF, "--out", tmp_path / "r")
    assert rc == 0, err
    rc, _, err = cli(capsys, "report", tmp_path / "r")
    assert rc == 0, err
    page = (tmp_path / "r" / "report.html").read_text()
    assert "not a standard normal" in page and "Latent normality check" not in page


def _pushed(levels, gate, dtype=torch.float32, seed=0):
    """An IDF whose couplings shift far (the ReZero gates set to ``gate``)."""
    torch.manual_seed(seed)
    f = ff.models.IDF(features=4, levels=levels, layers=2, hidden=(8,), prior_hidden=(8,))
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.5 * torch.randn_like(p))
            if p.numel() == 1:
                p.fill_(gate)
    return f.to(dtype).eval()


def test_latents_beyond_the_dtypes_exact_integers_are_refused():
    """Past 2^24 in float32 the rounded couplings merge inputs: log_prob gave finite numbers of
    no mass function, and the codec wrote files that failed their CRC; past 32 bits the codec
    wrapped escaped values into a file that never decoded (verify=False)."""
    from flowforge import codec

    f = _pushed(2**23, 4.0)
    x = torch.randint(0, 2**23, (8, 4))
    with pytest.raises(ValueError, match="latents reach .* beyond the integers torch.float32"):
        f.log_prob(x.float())
    with pytest.raises(codec.CodecError, match="cannot code the data"):
        codec.encode(f, x)
    g = _pushed(2**30, 8.0, torch.float64)
    x = torch.randint(0, 2**30, (8, 4))
    z, _ = g.transform(x.double())
    assert torch.equal(g.transform.inverse(z)[0], x.double())  # the flow itself is exact
    for verify in (True, False):
        with pytest.raises(codec.CodecError, match="beyond the 32 bits"):
            codec.encode(g, x, verify=verify)
    with pytest.raises(ValueError, match="more than torch.float32 resolves"):
        ff.models.IDF(features=4, levels=2**30, layers=1, hidden=(4,), prior_hidden=(4,)).sample(2)
    small = ff.models.IDF(features=4, levels=5, layers=2, hidden=(8,)).eval()
    for chunk in (-1, 0, 2.5, 10**6):
        with pytest.raises(codec.CodecError, match="expected chunk"):
            codec.ideal_bits(small, torch.randint(0, 5, (10, 4)), chunk=chunk)
    with pytest.raises(ValueError, match="context_features to be an integer >= 0"):
        ff.models.IDF(features=4, levels=5, context_features=-1)


def test_codec_and_sampling_messages_and_signs():
    from flowforge import codec

    # the default partitions fit the features (min(4, features)); more than that is refused
    assert ff.models.IDF(features=2, levels=4).config["kwargs"]["partitions"] is None
    with pytest.raises(ValueError, match=r"partitions <= features \(2\), got 3"):
        ff.models.IDF(features=2, levels=4, partitions=3)
    flow = ff.models.RealNVP(features=6, layers=1, hidden=(8,), levels=5).eval()
    with pytest.raises(codec.CodecError, match="chunk set the integer codec's tables"):
        codec.encode(flow, torch.randint(0, 5, (4, 6)), chunk=8)
    torch.manual_seed(0)
    idf = ff.models.IDF(features=4, levels=5, layers=1, hidden=(4,), prior_hidden=(4,)).eval()
    s = idf.sample(2000, temperature=3.0)
    assert not torch.signbit(s).any()  # clamped, and no -0.0 among the zeros


def test_the_same_model_in_another_dtype_is_named_as_such():
    from flowforge import codec

    torch.manual_seed(0)
    f = ff.models.IDF(features=4, levels=5, layers=2, hidden=(8,)).eval()
    data = codec.encode(f, torch.randint(0, 5, (10, 4)))
    with pytest.raises(
        codec.CodecError, match=r"made with this model in torch.float32.*\.float\(\)"
    ):
        codec.decode(copy.deepcopy(f).double(), data)
    with pytest.raises(codec.CodecError, match="rows of different lengths"):
        codec.encode(f, [[1, 2, 3, 4], [1, 2]])


def test_an_idf_built_in_memory_keeps_the_model_hash_of_its_earlier_partitions_default():
    """IDF's partitions default became None (min(4, features)) where it was 4: a .ffz coded by
    an IDF(features=8) built in memory before still names this model (its hash is among the
    earlier ones the coder accepts)."""
    from flowforge import codec
    from flowforge.models.registry import earlier_configs

    flow = ff.models.build("idf", features=8, levels=16, hidden=[16])
    assert flow.config["kwargs"]["partitions"] is None
    old = {**flow.config, "kwargs": {**flow.config["kwargs"], "partitions": 4}}
    assert old in earlier_configs(flow.config)
    assert codec._hash(old, flow) in codec._earlier_hashes(flow)


def test_api_misuse_messages_say_what_to_do():
    """``encode`` of the (N, 1, 8, 8) array decompress writes for a vector run, and ``decode``
    of a path or an open file, were refused with no way out."""
    import io

    flow = tiny_idf()
    x = data(3)
    with pytest.raises(codec.CodecError, match=r"got \(3, 2, 3\): reshape it, x.reshape\(len"):
        codec.encode(flow, x.reshape(3, 2, 3))
    with pytest.raises(codec.CodecError) as e:  # (other values per example: no reshape)
        codec.encode(flow, x[:, :4])
    assert "reshape" not in str(e.value)
    blob = codec.encode(flow, x)
    for given, how in (("t.ffz", "open(path, 'rb').read()"), (io.BytesIO(blob), "f.read()")):
        with pytest.raises(codec.CodecError, match=re.escape(f"(read it: {how})")):
            codec.decode(flow, given)
