"""Local bits-back coding of continuous flows with a dequantizer (flowforge.bitsback)."""

import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge import bitsback, codec

pytest.importorskip("constriction")


def tiny_flow(dequantization="uniform", seed=0, features=6):
    torch.manual_seed(seed)
    flow = ff.models.RealNVP(
        features=features, layers=2, hidden=(16,), levels=5, dequantization=dequantization
    ).eval()
    with torch.no_grad():  # weights away from the identity, so the Jacobian is not trivial
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow


def data(n, features=6, seed=1):
    return torch.randint(0, 5, (n, features), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_round_trip_is_exact(dequantization):
    flow, x = tiny_flow(dequantization), data(12)
    blob = codec.encode(flow, x)  # the generic entry point picks bits-back
    assert codec.read_header(blob).version == 2
    assert torch.equal(codec.decode(flow, blob), x)
    assert torch.equal(bitsback.decode(flow, blob), x)  # and again: decoding is repeatable
    h = bitsback.read_header(blob)
    assert h.dequantization == (dequantization == "variational")
    assert 0 < h.initial_bits <= 32 * h.init_words


def test_coding_reports_its_progress_example_by_example():
    flow, x = tiny_flow(), data(7)
    enc, dec = [], []
    blob, _ = bitsback.encode_stats(flow, x, progress=enc.append)
    assert torch.equal(bitsback.decode(flow, blob, progress=dec.append), x)
    assert enc == dec == [1] * 7


def test_round_trip_of_an_image_flow_with_a_diagonal_gaussian_base():
    torch.manual_seed(0)
    flow = ff.models.RealNVP(shape=(1, 4, 4), scales=1, hidden=8, levels=3, base="diag").eval()
    x = torch.randint(0, 3, (4, 1, 4, 4))
    assert torch.equal(codec.decode(flow, codec.encode(flow, x)), x)


def test_decodes_identically_in_a_fresh_process(tmp_path):
    flow, x = tiny_flow(), data(6)
    ff.save(flow, tmp_path / "m.ff")
    (tmp_path / "x.ffz").write_bytes(codec.encode(flow, x))
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch, flowforge as ff\n"
        "from flowforge import codec\n"
        "d = sys.argv[1]\n"
        "flow = ff.load(d + '/m.ff').eval()\n"
        "back = codec.decode(flow, open(d + '/x.ffz', 'rb').read())\n"
        "assert torch.equal(back, torch.load(d + '/x.pt')), 'differs'\n"
        "print('identical')\n"
    )
    src = str(Path(ff.__file__).parents[1])
    env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and "identical" in out.stdout, out.stderr


def test_file_size_is_the_models_nll_plus_the_initial_bits():
    """Over many examples the payload, less the initial bits, is the model's NLL (the
    dequantization bound, here estimated with 100 noise draws per example) to within 2%."""
    flow, x = tiny_flow(features=4), data(200, features=4)
    blob, stats = bitsback.encode_stats(flow, x, verify=False)
    assert stats["scheme"] == "layers"  # couplings: coded layer by layer
    with torch.no_grad():
        torch.manual_seed(0)
        xf = x.float().repeat(100, 1)
        nll_bits = -flow.log_prob(xf).double().sum().item() / 100 / math.log(2)
    net = stats["payload_bits"] - stats["initial_bits"]
    assert abs(net / nll_bits - 1) < 0.02, (net, nll_bits)
    # and to within a word and 0.2% of -log2 p(y) at the noise the coder drew
    assert abs(net - stats["ideal_bits"]) < 32 + 0.002 * stats["ideal_bits"], stats
    assert 0 < stats["initial_bits"] < 40 * 4 * 8  # about y_bits + z_bits per entry, once
    assert len(blob) * 8 == stats["payload_bits"] + stats["header_bits"]


def _refresh_crcs(blob: bytes) -> bytes:
    """Recompute the payload and header CRCs of a (tampered) version-2 file."""
    ndim = blob[16]
    size = 17 + 4 * ndim + bitsback._TAIL.size + 4
    payload = blob[size:]
    head = bytearray(blob[: size - 4])
    struct.pack_into("<I", head, size - 4 - 8, zlib.crc32(payload))  # payload CRC
    return bytes(head) + struct.pack("<I", zlib.crc32(bytes(head))) + payload


def test_corrupt_files_are_refused():
    flow, x = tiny_flow(), data(8)
    blob = codec.encode(flow, x)
    size = bitsback.read_header(blob).size
    bad = bytearray(blob)
    bad[size + 5] ^= 0x10
    with pytest.raises(codec.CodecError, match="payload fails its CRC"):
        codec.decode(flow, bytes(bad))
    with pytest.raises(codec.CodecError, match="corrupt"):  # the CRC forged to match
        codec.decode(flow, _refresh_crcs(bytes(bad)))
    with pytest.raises(codec.CodecError, match="truncated"):
        codec.decode(flow, blob[:-4])
    bad = bytearray(blob)
    bad[20] ^= 1  # a header byte
    with pytest.raises(codec.CodecError, match="header fails its CRC"):
        codec.decode(flow, bytes(bad))


def test_another_model_or_codec_is_refused():
    flow, x = tiny_flow(), data(5)
    blob = codec.encode(flow, x)
    with pytest.raises(codec.CodecError, match="another model"):
        codec.decode(tiny_flow(seed=3), blob)
    idf = ff.models.IDF(features=6, levels=5, layers=1, hidden=(8,)).eval()
    with pytest.raises(codec.CodecError, match="integer flow"):
        codec.decode(flow, codec.encode(idf, x))
    with pytest.raises(codec.CodecError, match="bits-back coding with a continuous flow"):
        codec.decode(idf, blob)


def test_flows_it_cannot_code_are_refused():
    no_levels = ff.models.RealNVP(features=6, layers=2, hidden=(8,))
    with pytest.raises(codec.CodecError, match="without levels"):
        codec.encode(no_levels, data(3))
    with pytest.raises(codec.CodecError, match="levels="):
        bitsback.encode(no_levels, data(3))
    mog = ff.models.RealNVP(features=6, layers=2, hidden=(8,), levels=5, base="mixture")
    with pytest.raises(codec.CodecError, match="Gaussian base"):
        codec.encode(mog, data(3))
    flow = tiny_flow()
    with pytest.raises(codec.CodecError, match=r"expected data in \[0, 4\]"):
        codec.encode(flow, data(3) + 1)
    with pytest.raises(codec.CodecError, match=r"shape \(N, 6\)"):
        codec.encode(flow, data(3, features=5))
    with pytest.raises(codec.CodecError, match="bad bits-back parameters"):
        bitsback.encode(flow, data(3), sigma_bits=20, y_bits=16)


def test_many_levels_take_the_finest_latent_grid_the_coder_allows():
    # default_z_bits grows with the levels (27 bits at 70,000), beyond what the coder takes
    # (coarse_bits + 20): the default stops there, and a flow with more levels than the
    # header's field holds is refused
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=3, layers=2, hidden=(8,), levels=70_000).eval()
    x = torch.randint(0, 70_000, (4, 3), generator=torch.Generator().manual_seed(2))
    blob = bitsback.encode(flow, x)
    assert bitsback.read_header(blob).z_bits == 26 and torch.equal(bitsback.decode(flow, blob), x)
    huge = ff.models.RealNVP(features=3, layers=2, hidden=(8,), levels=2**32 + 5).eval()
    with pytest.raises(codec.CodecError, match="at most 2\\^32 - 1 levels"):
        bitsback.encode(huge, x)


def test_continuous_time_flows_are_refused_in_one_line():
    for flow in (
        ff.models.CNF(features=2, hidden=(8,), levels=5),
        ff.models.FFJORD(features=2, hidden=(8,), levels=5),
    ):
        with pytest.raises(codec.CodecError, match="continuous flows .* not supported"):
            codec.encode(flow.eval(), data(2, features=2))


def test_residual_flows_round_trip_through_a_row_by_row_jacobian():
    # their blocks run autograd inside the forward pass, which torch.func cannot trace
    torch.manual_seed(0)
    flow = ff.models.ResidualFlow(features=3, blocks=2, levels=5).eval()
    x = data(6, features=3)
    blob = codec.encode(flow, x)
    assert torch.equal(codec.decode(flow, blob), x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_low_precision_float_input_is_coded_like_float32(dtype):
    flow, x = tiny_flow(), data(4)
    assert torch.equal(codec.decode(flow, codec.encode(flow, x.to(dtype))), x)
    idf = ff.models.IDF(features=4, levels=5, layers=2, hidden=(8,)).eval()
    y = data(3, features=4)
    assert torch.equal(torch.as_tensor(codec.decode(idf, codec.encode(idf, y.to(dtype)))), y)
    with pytest.raises(codec.CodecError, match="not an integer"):
        codec.encode(idf, (y + 0.5).to(dtype))


def test_compress_and_decompress_a_continuous_run(tmp_path, capsys):
    from cli_support import cli, one_line_error
    from flowforge.workbench.cli import main

    run = tmp_path / "realnvp"
    assert main(["train", "--model", "realnvp", "--model-kwargs", '{"layers": 2, "hidden": [8]}',
                 "--data", "digits", "--layout", "vector", "--epochs", "1", "--limit", "64",
                 "--no-progress", "--quiet", "--out", str(run)]) == 0  # fmt: skip
    x = np.random.default_rng(0).integers(0, 17, (5, 64))
    np.save(tmp_path / "x.npy", x)
    ffz, npy = tmp_path / "x.ffz", tmp_path / "back.npy"
    rc, out, err = cli(capsys, "compress", run, "--data", tmp_path / "x.npy", "--out", ffz)
    assert rc == 0, err
    assert "initial bits" in out and "model NLL" in out and "file " in out
    assert "encoding 5 examples by bits-back coding, then decoding them" in err  # not silent
    rc, out, err = cli(capsys, "decompress", ffz, "--model", run, "--out", npy)
    assert rc == 0, err
    assert np.array_equal(np.load(npy).reshape(5, 64), x)
    rc, _, err = cli(capsys, "compress", run, "--data", tmp_path / "x.npy", "--out",
                     tmp_path / "y.ffz", "--chunk", 5)  # fmt: skip
    one_line_error(rc, err, "--chunk applies to integer flows")


def test_latents_outside_the_base_table_are_counted_and_reported(tmp_path, capsys, monkeypatch):
    """A latent beyond the base's table [-z_range, z_range) is coded by its escape, whatever
    the model's density there: on outlier rows (a RealNVP on 1000-level counts, |z| 375) the
    file was 99.41% below the NLL and ideal_bits 274,050 against an 832-bit payload, with
    nothing to say why. encode_stats counts them; compress prints and explains them."""
    import functools
    import json

    from cli_support import cli
    from flowforge.workbench import compress

    flow, x = tiny_flow(features=4), data(6, features=4)
    blob, stats = bitsback.encode_stats(flow, x)
    assert stats["base_escapes"] == 0
    net = stats["payload_bits"] - stats["initial_bits"]
    assert abs(net - stats["ideal_bits"]) < 32 + 0.002 * stats["ideal_bits"]
    blob, stats = bitsback.encode_stats(flow, x, z_range=1)  # (most latents past |z| = 1)
    assert stats["base_escapes"] > 0 and torch.equal(bitsback.decode(flow, blob), x)
    # compress: the count in --json and in its text
    run = tmp_path / "realnvp"
    kwargs = '{"layers": 2, "hidden": [8]}'
    assert cli(capsys, "train", "--model", "realnvp", "--model-kwargs", kwargs,
               "--data", "digits", "--layout", "vector", "--epochs", "1", "--limit", "64",
               "--no-progress", "--quiet", "--out", run)[0] == 0  # fmt: skip
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 17, (3, 64)))
    monkeypatch.setattr(bitsback, "encode_stats", functools.partial(bitsback.encode_stats,
                                                                    z_range=1))  # fmt: skip
    rc, out, err = cli(capsys, "compress", run, "--data", tmp_path / "x.npy", "--out",
                       tmp_path / "x.ffz", "--json")  # fmt: skip
    res = json.loads(out)
    assert rc == 0 and res["base_escapes"] > 0 and res["z_range"] == 1, err
    rc, out, err = cli(capsys, "compress", run, "--data", tmp_path / "x.npy", "--out",
                       tmp_path / "y.ffz")  # fmt: skip
    line = next(k for k in out.splitlines() if k.strip().startswith("escapes"))
    assert f"{res['base_escapes']} latent value(s) outside the base's table [-1, 1)" in line
    assert "more cheaply" not in line  # (not so at |z| = 1: the escape costs more there)
    # the default table, and a file below the NLL: the NLL is what is off (the audit's numbers)
    audit = {**res, "base_escapes": 7, "z_range": 32, "overhead_percent": -99.40783683558661}
    monkeypatch.setattr(compress, "compress_run", lambda *a: audit)
    out = cli(capsys, "compress", run, "--out", tmp_path / "z.ffz")[1]
    assert "7 latent value(s) outside the base's table [-32, 32) coded raw" in out
    assert "more cheaply than the model's density there; the file is 99.41% below the " in out
    assert "the NLL, not the file, is the number that is off" in out


def test_short_and_foreign_bytes_are_refused():
    flow = tiny_flow()
    blob = codec.encode(flow, data(3))
    for bad, needle in ((blob[:10], "truncated"), (b"PK\x03\x04", "bad magic"),
                        (blob + b"\0\0\0\0", "trailing bytes")):  # fmt: skip
        with pytest.raises(codec.CodecError, match=needle):
            codec.decode(flow, bad)
    with pytest.raises(codec.CodecError, match="init_words"):
        bitsback.encode(flow, data(3), init_words=1)


def test_thread_count_is_recorded_and_used():
    flow, x = tiny_flow(), data(4)
    blob = codec.encode(flow, x, threads=2)
    assert bitsback.read_header(blob).threads == 2
    before = torch.get_num_threads()
    assert torch.equal(codec.decode(flow, blob), x)
    assert torch.get_num_threads() == before  # restored


def test_a_crafted_header_cannot_make_decoding_run_long():
    # a huge count and a large free seeded stack: decoding stops when the stack falls below
    # what the encoder left untouched, after a few examples, with one clear error
    import dataclasses
    import time

    flow, x = tiny_flow(), data(4)
    for scheme, needle in (("jacobian", "payload ran out after"), ("layers", "corrupt")):
        blob = bitsback.encode(flow, x, scheme=scheme)
        h = bitsback.read_header(blob)
        crafted = dataclasses.replace(
            h,
            count=2**31 // 6,
            init_words=1 << 20,
            kept_words=1 << 20,
            payload_crc=zlib.crc32(b""),
            words=0,
        ).pack()
        t = time.perf_counter()
        with pytest.raises(codec.CodecError, match=needle):
            codec.decode(flow, crafted)
        assert time.perf_counter() - t < 20
    for field, value in (("version", 7), ("flags", 8)):
        forged = dataclasses.replace(h, **{field: value}).pack() + blob[h.size :]
        with pytest.raises(codec.CodecError, match="not a bits-back .ffz file"):
            bitsback.decode(flow, forged)
    with pytest.raises(codec.CodecError, match="bad magic"):
        bitsback.read_header(b"XXXX" + blob[4:])
    variational = dataclasses.replace(h, dequantization=1).pack() + blob[h.size :]
    with pytest.raises(codec.CodecError, match="coded with variational dequantization"):
        bitsback.decode(flow, variational)


def test_the_coder_inverts_autoregressive_layers_exactly_whatever_the_users_mode():
    # Jacobi sweeps stop at a tolerance and "auto" picks by timing: the coder's copy of the
    # flow always takes the exact sequential inverse, so a file decodes in any process
    from flowforge.transforms import set_inverse

    torch.manual_seed(0)
    maf = ff.models.MAF(features=4, layers=2, hidden=(8,), levels=5)
    with torch.no_grad():
        for p in maf.parameters():  # off the identity, so that Jacobi needs several sweeps
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(3))
    plain = bitsback.encode(maf, x)
    set_inverse(maf, "parallel", tol=1e-2)
    assert bitsback.encode(maf, x) == plain
    set_inverse(maf, "sequential")
    assert torch.equal(bitsback.decode(maf, plain), x)
