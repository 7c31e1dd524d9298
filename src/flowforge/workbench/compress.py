r"""``flowforge compress`` and ``flowforge decompress``: a run's integer flow as a lossless codec
(:mod:`flowforge.codec`), or a continuous flow with ``levels`` by local bits-back coding
(:mod:`flowforge.bitsback`), measured against the classical codecs on the same data."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import math
import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import bitsback, codec
from .._util import fork_rng
from ..core import Flow
from ..io import atomic_write
from .data import (
    DATASETS,
    _is_image_name,
    _png_bit_depth,
    check_levels,
    examples_words,
    image_words,
    load_dataset,
    read_run_table,
    read_table,
    reduced_bits_note,
    user_path,
)
from .errors import DataError, WorkbenchError
from .runner import run_dataset
from .runs import CONFIG_FILE, load_run, not_the_runs, run_config

__all__ = ["compress_run", "decompress_file", "classical_bits", "data_hash", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 1 << 31  # the largest .ffz file decompress reads


def data_hash(x: np.ndarray) -> str:
    """SHA-256 of integer data as little-endian int64 (what compress and decompress print)."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype="<i8").tobytes()).hexdigest()


def _flow_of(run: str):
    flow = load_run(run)
    if not isinstance(flow, Flow):
        raise WorkbenchError(
            f"{run}: its {type(flow).__name__} model has no discrete likelihood, so it cannot "
            "compress or decompress data"
        )
    try:
        if codec._bits_back(flow):
            bitsback.check_flow(flow)
        else:
            codec._check_flow(flow)
    except codec.CodecError as e:
        raise WorkbenchError(f"{run}: {e}") from None
    return flow.eval()


def _data_shape(run: str, cfg: dict, flow) -> tuple[int, ...]:
    """The run's data shape (``resolved.data_shape``, a list of positive integers once
    ``run_config`` has read it), checked against the model: data are reshaped with it, so it
    must hold exactly the model's values."""
    shape = cfg["resolved"]["data_shape"]
    values = math.prod(flow.event_shape)
    if math.prod(shape) != values:
        raise WorkbenchError(
            f"{Path(run) / 'config.json'} is damaged: resolved.data_shape "
            f"{str(shape)[:60]} does not hold the model's {values:,} values per example"
        )
    return tuple(shape)


def _check_out(out, overwrite: bool, suffix: str | None = None) -> Path:
    """``--out`` as a path a file can be written at, checked before any work is done."""
    if not str(out).strip():
        raise WorkbenchError(f"--out is empty; expected a {suffix or 'file'} path")
    path = Path(out)
    if suffix and path.suffix.lower() != suffix:
        raise WorkbenchError(f"--out {out}: expected a {suffix} file")
    if path.is_dir():
        raise WorkbenchError(f"--out {out} is a folder; expected a file path")
    if os.path.lexists(path) and not overwrite:  # (a link, even to nothing, is the user's)
        raise WorkbenchError(f"{out} exists; choose another --out or pass --overwrite")
    folder = next((p for p in path.parents if p.exists()), Path("."))  # where it goes, or above
    if not folder.is_dir():
        raise WorkbenchError(f"--out {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WorkbenchError(f"--out {out}: no permission to write in {folder}")
    if not os.path.lexists(path.parent):  # (a mistyped folder is not made, as by sample)
        raise WorkbenchError(f"--out {out}: there is no folder {path.parent}; create it first")
    return path


def _check_args(chunk, threads) -> None:
    for name, v, hi in (
        ("--chunk", chunk, codec.MAX_CHUNK),
        ("--threads", threads, codec.MAX_THREADS),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise WorkbenchError(f"{name} must be an integer in [1, {hi}], got {v!r}")


def _levels(flow) -> int:
    return flow.dequantizer.levels if codec._bits_back(flow) else flow.levels


def _nll_bits(flow, xs: np.ndarray, samples: int) -> float:
    """The model's NLL of ``xs`` in bits: exact for an integer flow; for a dequantizing flow
    the bound, averaged over ``samples`` draws of the noise (seeded, the global RNG kept)."""
    total = 0.0
    with torch.no_grad(), fork_rng():
        torch.manual_seed(0)
        xt = torch.from_numpy(xs).to(flow.dtype)
        reps = samples if codec._bits_back(flow) else 1
        for _ in range(reps):
            total -= sum(
                flow.log_prob(xt[i : i + 1024]).double().sum().item()
                for i in range(0, len(xt), 1024)
            )
    return total / reps / math.log(2)


def _examples(
    cfg: dict, data: str | None, split: str | None, want: tuple[int, ...]
) -> tuple[np.ndarray, str]:
    """The examples to code, in the run's data shape ``want``, and a name for them. A file's
    values are read as they are (float64, not rounded): the codec checks they are integers."""
    named = data is None or data.lower() in DATASETS
    if not named and split is not None:
        raise WorkbenchError(f"--split chooses a split of a dataset; {data} is coded whole")
    split = split or "test"
    if named:
        if data is None or data.lower() == str(cfg["data"]["name"]).lower():
            ds = run_dataset(cfg)
        else:
            ds = load_dataset(data, seed=cfg["data"].get("seed", 0))
        x, name = ds.split(split), f"{ds.name} {split}"
    else:
        bits = int(cfg["data"]["options"].get("bits", 8))
        header = cfg["data"]["options"].get("header")
        columns = cfg["resolved"].get("columns")
        if bits < 8 and user_path(data).is_dir():
            _refuse_reduced_images(data, bits, want)
        x, name = read_run_table(data, bits, want, columns=columns, header=header), data
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if math.prod(x.shape[1:]) != math.prod(want):
        got, k = tuple(x.shape[1:]), math.prod(x.shape[1:])
        given = f"examples of {k} values (shape {got})"
        if not named and user_path(data).is_dir():  # images: say them as images
            given = examples_words(data, k)
        if len(want) == 3:  # an image run: say it in images' words
            raise DataError(
                f"{name}: {given}; this run takes {image_words(*want)}, {math.prod(want)} "
                "values each"
            )
        if given.startswith("examples"):
            raise DataError(f"{name}: examples of shape {got}; this run takes {want}")
        raise DataError(f"{name}: {given}; this run takes examples of {want[0]} values")
    if not named:  # (8-bit pixels for a run of fewer bits: said with the shift to give)
        bits = int(cfg["data"]["options"].get("bits", 8))
        check_levels(x, cfg["resolved"].get("levels"), bits, str(name), coding=True)
    return x.reshape(-1, *want), name


def _refuse_reduced_images(folder: str, bits: int, want: tuple[int, ...]) -> None:
    """A folder of 8-bit images for a run of ``bits < 8``: read at the run's bits they would
    lose their low bits, and decompress would give back ``pixels >> (8 - bits)``, not the
    images. Refused, with the count of pixels that would change. Images of ``bits`` bits
    per pixel (4-bit PNGs for a 4-bit run), which Pillow reads scaled to 0..255 (``k * 17``),
    pass: their values are exactly the run's levels ``k``, which decompress gives back."""
    x = read_table(folder, 8, want).astype(np.uint8)
    low = 8 - bits
    k = x >> low
    files = [f for f in user_path(folder).iterdir() if _is_image_name(f)]
    if all(f.suffix.lower() == ".png" and _png_bit_depth(f) == bits for f in files) and (
        np.array_equal(x, (k.astype(np.int32) * 255 // (2**bits - 1)).astype(np.uint8))
    ):
        return  # (PNGs of `bits` bits per pixel, which Pillow scales to 0..255)
    changed = int(np.count_nonzero(x & ((1 << low) - 1)))
    raise DataError(
        f"{folder}: images of 8 bits per channel, and this run models their top {bits} bits "
        f"({2**bits} levels): coding them would drop the {low} low bits of every pixel "
        f"({changed:,} of the {x.size:,} values here have some set), and decompress would give "
        f"back pixels >> {low}, not these images; to compress the images losslessly use a run "
        f"trained on their 8 bits, or, to code the {bits}-bit values, give them as an array "
        f"(numpy.save(path, pixels >> {low})), which decodes to exactly those"
    )


def _image_strip(x: np.ndarray) -> np.ndarray:
    """Examples ``(N, C, H, W)`` (or ``(N, D)``) side by side in one uint8 image (a grid
    of rows when a strip would be wider than WebP allows): ``(H', W')`` or ``(H', W', C)``."""
    if x.ndim == 2:
        x = x[:, None, None, :]
    n, c, h, w = x.shape
    per_row = max(1, min(n, 16383 // w))
    rows = -(-n // per_row)
    pad = np.zeros((rows * per_row - n, c, h, w), x.dtype)
    g = np.concatenate([x, pad]).reshape(rows, per_row, c, h, w)
    g = g.transpose(0, 3, 1, 4, 2).reshape(rows * h, per_row * w, c)
    return g[..., 0] if c == 1 else g


def classical_bits(x: np.ndarray, levels: int) -> dict[str, float]:
    """Bits per dimension of the classical lossless codecs on integer data ``x`` (raw values
    as bytes, not rescaled): gzip -9, bz2 -9, lzma -9e on the bytes, PNG and WebP lossless of
    the examples side by side (when 8 bits and 1 or 3 channels allow an image)."""
    if levels > 256:
        return {}
    raw = np.ascontiguousarray(x, np.uint8)
    dims = raw.size
    out = {
        "gzip": len(gzip.compress(raw.tobytes(), 9)) * 8 / dims,
        "bz2": len(bz2.compress(raw.tobytes(), 9)) * 8 / dims,
        "lzma": len(lzma.compress(raw.tobytes(), preset=9 | lzma.PRESET_EXTREME)) * 8 / dims,
    }
    if raw.ndim == 2 or (raw.ndim == 4 and raw.shape[1] in (1, 3)):
        from PIL import Image

        img = Image.fromarray(_image_strip(raw))
        for fmt, kw in (("PNG", {"optimize": True}), ("WEBP", {"lossless": True, "method": 6})):
            buf = io.BytesIO()
            try:
                img.save(buf, fmt, **kw)
            except (OSError, KeyError, ValueError):  # a Pillow built without WebP
                continue
            out[fmt.lower()] = len(buf.getvalue()) * 8 / dims
    return out


def _bar(total: int, what: str):
    """A progress bar on stderr when it is a terminal (none in logs)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="example", file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())  # fmt: skip


def compress_run(
    run: str,
    out: str,
    data: str | None = None,
    split: str | None = None,
    chunk: int | None = None,
    threads: int = 1,
    overwrite: bool = False,
    baselines: bool = True,
) -> dict:
    """Compress examples with a run's integer flow into ``out`` (a ``.ffz`` file), check that
    the file decodes to them, and measure it. Returns the numbers ``flowforge compress``
    prints."""
    out_path = _check_out(out, overwrite)
    _check_args(64 if chunk is None else chunk, threads)
    cfg = run_config(run)
    flow = _flow_of(run)
    bits_back = codec._bits_back(flow)
    if bits_back and chunk is not None:
        raise WorkbenchError(
            "--chunk applies to integer flows (IDF); bits-back coding codes one example at a "
            "time: drop --chunk"
        )
    if chunk is None:  # 64, or fewer for large examples (an explicit --chunk is checked)
        chunk = codec.default_chunk(flow.event_shape)
    elif not bits_back:
        try:
            codec._check_chunk(chunk, tuple(flow.event_shape))
        except codec.CodecError as e:
            raise WorkbenchError(f"--chunk {chunk}: {e}") from None
    x, name = _examples(cfg, data, split, _data_shape(run, cfg, flow))
    shape = tuple(flow.event_shape)
    xs = x.reshape(-1, *shape)
    stats: dict = {}
    try:
        t0 = time.perf_counter()
        if bits_back:  # example by example (tens a second): a bar on a terminal, a line in logs
            print(f"encoding {len(xs):,} examples by bits-back coding, then decoding them to "
                  "check ...", file=sys.stderr, flush=True)  # fmt: skip
            with _bar(len(xs), "encoding") as bar:
                blob, stats = bitsback.encode_stats(
                    flow, xs, threads=threads, verify=False, progress=bar.update
                )
        else:
            blob = codec.encode(flow, xs, chunk=chunk, threads=threads, verify=False)
        t_enc = time.perf_counter() - t0
    except codec.CodecError as e:
        raise DataError(f"{name}: {e}") from None
    if len(blob) > MAX_FILE_BYTES:  # what decompress would refuse to read
        raise WorkbenchError(
            f"the compressed file would take {len(blob):,} bytes, more than the "
            f"{MAX_FILE_BYTES:,} that decompress reads; compress the data in parts; nothing was "
            "written"
        )
    t0 = time.perf_counter()
    try:
        if bits_back:
            with _bar(len(xs), "checking") as bar:
                back = bitsback.decode(flow, blob, progress=bar.update).numpy()
        else:
            back = codec.decode(flow, blob).numpy()
    except codec.CodecError as e:  # our own fresh file: the model, not the data or a file
        raise WorkbenchError(
            f"the run's model does not decode what it encoded from {name} ({e}): its "
            "transform is not exact on these data in float arithmetic (parameters far out of "
            "range?); nothing was written"
        ) from None
    t_dec = time.perf_counter() - t0
    if not np.array_equal(back, xs):
        raise WorkbenchError("the file did not decode to the data; nothing was written")
    atomic_write(out_path, blob, replace=overwrite)
    dims = xs.size
    nll_bits = _nll_bits(flow, xs, samples=8)
    file_bpd = len(blob) * 8 / dims
    nll_bpd = nll_bits / dims
    header_bytes = codec.read_header(blob).size  # (paid once per file, whatever its size)
    levels = _levels(flow)
    raw_bytes = dims * (1 if levels <= 256 else 2 if levels <= 65536 else 8)  # (as decompress)
    result = {
        "run": str(Path(run).resolve()),  # (absolute, as every command's --json gives it)
        "codec": "bits-back" if codec._bits_back(flow) else "integer",
        "data": name,
        "examples": int(len(xs)),
        "dims": int(dims),
        "out": str(Path(out_path).resolve()),
        "bytes": len(blob),
        "nll_bits_per_dim": nll_bpd,
        "nll_nats_per_example": nll_bits * math.log(2) / len(xs),
        "file_bits_per_dim": file_bpd,
        "overhead_percent": 100 * (file_bpd / nll_bpd - 1),
        "header_bytes": header_bytes,
        "overhead_percent_without_header": 100 * ((len(blob) - header_bytes) * 8 / nll_bits - 1),
        "raw_bytes": raw_bytes,
        "encode_per_s": len(xs) / t_enc,
        "decode_per_s": len(xs) / t_dec,
        "sha256": data_hash(xs),
        "classical": classical_bits(x, _levels(flow)) if baselines else {},
    }
    if stats:  # bits-back: the initial bits the file pays once, and the fallbacks
        result["initial_bits"] = stats["initial_bits"]
        result["initial_bits_per_dim"] = stats["initial_bits"] / dims
        result["uniform_fallbacks"] = stats["uniform_fallbacks"]
        result["escapes"] = stats["escapes"]
        result["base_escapes"] = stats["base_escapes"]
        result["z_range"] = bitsback.read_header(blob).z_range
        result["scheme"] = stats["scheme"]
    return result


def decompress_file(
    file: str, model: str, out: str, overwrite: bool = False, force: bool = False
) -> dict:
    """Decode a ``.ffz`` file with a run's model into ``out`` (a ``.npy`` file, written
    atomically, never over an existing file without ``overwrite``)."""
    out_path = _check_out(out, overwrite, ".npy")
    if (Path(model) / CONFIG_FILE).is_file():  # (a run folder: never over its data or files)
        not_the_runs(out_path, model, "--out", "decoded data")
    path = Path(file)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"no such file: {file}") from None
    except OSError as e:
        raise DataError(f"{file}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{file} is a folder; expected a .ffz file")
    if not stat.S_ISREG(mode):
        raise DataError(
            f"{file} is not a regular file (a pipe, device or socket); expected a .ffz file"
        )
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{file} is larger than any .ffz file flowforge writes")
    try:
        with path.open("rb") as f:  # the magic first: a large file that is not ours is not read
            head = f.read(len(codec.MAGIC))
            if len(head) == len(codec.MAGIC) and head != codec.MAGIC:
                raise DataError(f"{file}: not a flowforge .ffz file (bad magic bytes)")
            blob = head + f.read()
    except OSError as e:
        raise DataError(f"{file}: cannot read it ({e.strerror})") from None
    try:
        codec.read_header(blob)
    except codec.CodecError as e:
        raise DataError(f"{file}: {e}") from None
    cfg = run_config(model)
    flow = _flow_of(model)
    data_shape = _data_shape(model, cfg, flow)
    t0 = time.perf_counter()
    try:
        x = codec.decode(flow, blob, force=force).numpy()
    except codec.CodecError as e:
        raise DataError(f"{file}: {e}") from None
    seconds = time.perf_counter() - t0
    x = x.reshape(-1, *data_shape)
    levels = _levels(flow)
    dtype = np.uint8 if levels <= 256 else np.uint16 if levels <= 65536 else np.int64
    buf = io.BytesIO()
    np.save(buf, x.astype(dtype))
    atomic_write(out_path, buf.getvalue(), replace=overwrite)
    result = {
        "file": str(file),
        "out": str(out_path),
        "examples": int(x.shape[0]),
        "shape": list(x.shape[1:]),
        "levels": int(levels),
        "decode_per_s": x.shape[0] / seconds,
        "sha256": data_hash(x),
    }
    note = reduced_bits_note(cfg)
    if note:
        result["note"] = note
    return result
