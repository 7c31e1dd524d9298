r"""Lossless compression with integer discrete flows: ``encode(flow, x) -> bytes`` and
``decode(flow, data) -> x``, through an rANS coder (``constriction``, the ``compress`` extra).

How a batch is coded
--------------------
``x`` (integers in ``{0, ..., levels - 1}``, shape ``(N, *flow.event_shape)``) is cut into
chunks of ``chunk`` examples (at most ``N``, and at most ``MAX_CHUNK_VALUES`` values; the last
chunk padded with zeros), and each chunk is mapped to its integer latent
``z = flow.transform(x)``. The prior
(:class:`~flowforge.transforms.DiscretizedLogisticMixture`) is coded block by block, from the
last block (unconditional) to the first, each block's parameters computed from the blocks
already known, exactly as the decoder will see them. For every latent entry a probability table
over a window ``[c - r, c + r]`` around the mixture's rounded mean ``c`` (``r`` wide enough
for the mixture's components, at most ``radius``), plus one *escape* symbol for the mass
outside it, is computed in float64 and turned into integers
summing to ``2**24`` (every entry at least 1); an escaped value follows as a raw 32-bit integer.
The decoder rebuilds the same tables from the same inputs, decodes ``z``, and inverts the flow.

Determinism: the networks run in the flow's dtype on the CPU with ``threads`` torch threads
(recorded in the file) and the same chunk shape as the encoder, so encoder and decoder compute
bit-identical tables on the same machine and software. The file records a fingerprint of the
environment (torch version, platform, dtype, and the CPU kernels: :func:`kernels`);
:func:`decode` refuses a file from another environment unless ``force=True``. :func:`encode`
decodes its own output before returning it (``verify=True``) and fails loudly rather than hand
back a file that would not decode.

File format (``.ffz``, little-endian), see ``docs/compression.md``::

    magic "FFZ\x01"  version u16  flags u16  levels u32  count u32  ndim u8  shape u32*ndim
    chunk u32  threads u16  radius u16  precision u8  model hash 16 B  environment u32
    data CRC32 u32  payload CRC32 u32  payload words u32  header CRC32 u32
    payload: rANS words, u32 each
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import hashlib
import json
import math
import os
import platform
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._util import event_shape, restore_modes, training_modes
from .core import Flow, exact_levels
from .models import registry
from .models.integer import IntegerFlow, check_exact_latents
from .transforms.integer import DiscretizedLogisticMixture

__all__ = [
    "CodecError",
    "Header",
    "encode",
    "decode",
    "read_header",
    "model_hash",
    "environment",
    "kernels",
    "kernel_setting",
    "ideal_bits",
    "MAGIC",
    "VERSION",
    "PRECISION",
]

MAGIC = b"FFZ\x01"
VERSION = 1
PRECISION = 24  # the coder's probability resolution: every table sums to 2**24
MAX_VALUES = 2**31  # data values in one file, at most
# the default window radius's cap: 2 * levels covers the data's range up to 2,048 levels (each
# window is only as wide as its mixtures need, so a sharp model never pays for it)
MAX_DEFAULT_RADIUS = 4096
MAX_CHUNK = 65536  # examples per network call, at most
MAX_CHUNK_VALUES = 2**20  # values per network call (chunk x values per example), at most
MAX_THREADS = 64  # torch threads a file may ask for (encoder and decoder)
_PIECE = 2**20  # table entries (rows x window x components) of one piece, at most
_PASS = 2**16  # window entries (rows x window) computed in one pass: its buffers fit a cache
_FIXED = struct.Struct("<4sHHIIB")  # magic, version, flags, levels, count, ndim
_TAIL = struct.Struct("<IHHB16sIIII")  # chunk, threads, radius, precision, hash, env, crcs, words
_CRC = struct.Struct("<I")


def _pack_frame(version, flags, levels, count, shape, tail: struct.Struct, values) -> bytes:
    """A ``.ffz`` header: the common prefix (magic, version, flags, levels, count, shape), a
    version's ``tail`` of fields (the last is the payload's word count) and a CRC32."""
    head = _FIXED.pack(MAGIC, version, flags, levels, count, len(shape))
    head += struct.pack(f"<{len(shape)}I", *shape)
    head += tail.pack(*values)
    return head + _CRC.pack(zlib.crc32(head))


def _frame_size(shape, tail: struct.Struct) -> int:
    return _FIXED.size + 4 * len(shape) + tail.size + _CRC.size


def _unpack_frame(data, tail: struct.Struct, check_version) -> tuple:
    """``(version, flags, levels, count, shape, tail values)`` of a ``.ffz`` file's header,
    after the checks every version shares: bytes, magic, length, ``check_version(version,
    flags)``, the header CRC, and the file's length against the payload's word count."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        how = "f.read()" if hasattr(data, "read") else "open(path, 'rb').read()"
        raise CodecError(f"expected the file's bytes, got {type(data).__name__} (read it: {how})")
    data = bytes(data)
    if len(data) < 4 or data[:4] != MAGIC:
        raise CodecError("not a flowforge .ffz file (bad magic bytes)")
    if len(data) < _FIXED.size:
        raise CodecError(f"truncated .ffz file: {len(data)} bytes, shorter than its header")
    _, version, flags, levels, count, ndim = _FIXED.unpack_from(data)
    check_version(version, flags)
    size = _FIXED.size + 4 * ndim + tail.size + _CRC.size
    if len(data) < size:
        raise CodecError(f"truncated .ffz file: {len(data)} bytes, header needs {size}")
    (crc,) = _CRC.unpack_from(data, size - _CRC.size)
    if zlib.crc32(data[: size - _CRC.size]) != crc:
        raise CodecError("corrupt .ffz file: the header fails its CRC check")
    shape = tuple(struct.unpack_from(f"<{ndim}I", data, _FIXED.size))
    values = tail.unpack_from(data, _FIXED.size + 4 * ndim)
    want = size + 4 * values[-1]
    if len(data) != want:
        what = "is truncated" if len(data) < want else "has trailing bytes"
        raise CodecError(f"the .ffz file {what}: {len(data)} bytes, expected {want}")
    return version, flags, levels, count, shape, values


class CodecError(ValueError):
    """A file that cannot be decoded, or data/models the codec cannot take; the message says
    which."""


@dataclass(frozen=True)
class Header:
    """The header of a ``.ffz`` file (see the module docstring)."""

    levels: int
    count: int
    shape: tuple[int, ...]
    chunk: int
    threads: int
    radius: int
    model_hash: bytes
    environment: int
    data_crc: int
    payload_crc: int
    words: int
    version: int = VERSION
    flags: int = 0
    precision: int = PRECISION

    def pack(self) -> bytes:
        values = (self.chunk, self.threads, self.radius, self.precision, self.model_hash)
        values += (self.environment, self.data_crc, self.payload_crc, self.words)
        return _pack_frame(
            self.version, self.flags, self.levels, self.count, self.shape, _TAIL, values
        )

    @property
    def size(self) -> int:
        return _frame_size(self.shape, _TAIL)


def _coder(stack, words: np.ndarray):
    """An rANS decoder on a file's payload words; a payload the coder refuses (it passed its
    CRC, so it was written so) is a corrupt file, in the codec's own error."""
    try:
        return stack.AnsCoder(words)
    except ValueError as e:
        raise CodecError(f"corrupt .ffz file: the payload is not an rANS stream ({e})") from None


def _constriction():
    try:
        import constriction
    except ImportError:
        raise ImportError(
            "flowforge.codec needs the 'constriction' entropy coder: "
            "pip install 'flowforge[compress]'"
        ) from None
    return constriction.stream.stack, constriction.stream.model


# -- model identity ------------------------------------------------------------------------------


def _hash(config, flow: torch.nn.Module, settings: bool = True) -> bytes:
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True).encode())
    if config is None and settings:  # built by hand: its modules' settings (a coupling's center
        h.update(repr(flow).encode())  # and scale, ...), which the state does not hold
    for name, t in sorted(flow.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:16]


def model_hash(flow: torch.nn.Module) -> bytes:
    """16 bytes of SHA-256 over the flow's configuration and every tensor of its state (a flow
    built by hand, without a configuration: its ``repr``, which holds its modules' settings). For a
    flow loaded from a file, the configuration as that file holds it (``saved_config``), not as
    today's builder completes it, so that a builder gaining an argument later does not change
    the identity of a model saved before."""
    return _hash(getattr(flow, "saved_config", getattr(flow, "config", None)), flow)


def _earlier_hashes(flow: torch.nn.Module) -> list[bytes]:
    """The hashes earlier versions of flowforge wrote for the same flow. A loaded flow: they
    hashed its configuration as completed by the builder arguments added until then
    (``registry.LEGACY``, in the order they were added), or, for a file saved again since,
    without the arguments it records at their earlier values. A flow built here: the configuration
    their builders recorded for the same call (:func:`~flowforge.models.registry.earlier_configs`:
    without the arguments added since, with the defaults changed since as they were). A flow
    built by hand (no configuration): its state alone, without its settings."""
    saved = getattr(flow, "saved_config", None)
    if saved is None:
        config = getattr(flow, "config", None)
        if config is None:
            return [_hash(None, flow, settings=False)]
        return [_hash(c, flow) for c in registry.earlier_configs(config)]
    if not isinstance(saved, dict) or not isinstance(saved.get("kwargs"), dict):
        return []
    try:
        params = registry.spec(saved["model"]).signature.parameters
    except (KeyError, ValueError):
        return []
    out, kwargs = [], dict(saved["kwargs"])
    for k, v in registry.LEGACY.items():
        if k in params and k not in kwargs:
            kwargs[k] = v
            out.append(_hash({**saved, "kwargs": dict(kwargs)}, flow))
    # (and a model saved again since, its file recording the arguments added at their LEGACY
    # values: the configurations without them, as the versions before wrote them)
    out += [_hash(c, flow) for c in registry.earlier_configs(saved)]
    return out


def check_model(file_hash: bytes, flow: torch.nn.Module) -> None:
    """Raise :class:`CodecError` unless a file's model hash is this flow's (today's, or one an
    earlier version wrote for it)."""
    ours = model_hash(flow)
    if file_hash != ours and file_hash not in _earlier_hashes(flow):
        for dtype, move in ((torch.float32, ".float()"), (torch.float64, ".double()")):
            other = copy.deepcopy(flow).to(dtype) if flow.dtype != dtype else None
            if other is not None and model_hash(other) == file_hash:  # (on the error path only)
                raise CodecError(
                    f"this file was made with this model in {dtype}, and the model is now "
                    f"{flow.dtype}; move it back ({move}) to decode it"
                )
        # (on the error path only) an argument a builder took since, given today's value
        # where the file's model had the earlier one: named, with the value to build with
        config = getattr(flow, "config", None)
        kwargs = config.get("kwargs") if isinstance(config, dict) else None
        for k, old in registry.LEGACY.items() if isinstance(kwargs, dict) else ():
            if k in kwargs and kwargs[k] != old:
                before = {**config, "kwargs": {a: v for a, v in kwargs.items() if a != k}}
                if _hash(before, flow) == file_hash:
                    raise CodecError(
                        f"this file was made with this model as built before its builder took "
                        f"{k} (that is, with {k}={old!r}); build it with {k}={old!r} to decode "
                        "it, or load the model file saved with it"
                    )
        raise CodecError(
            f"this file was made with another model (model hash {file_hash.hex()}, this "
            f"model's is {ours.hex()})"
        )


# MKL's code paths (mkl_cbwr.h), by the number MKL reports and the name MKL_CBWR takes (1:
# not set, 2: AUTO, both the CPU's own choice, named after the branch MKL picks where it names
# one; STRICT, a flag, is 0x10000)
_MKL_BRANCHES = {
    3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2",
    11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1",
}  # fmt: skip
_MKL_STRICT = 0x10000
# torch's vectorised kernels, as torch.backends.cpu.get_cpu_capability() names them, and the
# ATEN_CPU_CAPABILITY value that selects each
_TORCH_KERNELS = {
    "DEFAULT": "default", "NO AVX": "default", "AVX2": "avx2", "AVX512": "avx512",
    "VSX": "vsx", "Z VECTOR": "zvector", "ZVECTOR": "zvector", "SVE256": "sve256",
}  # fmt: skip


@functools.cache
def _mkl_branch() -> str:
    """The code path MKL's matrix products take in this process (fixed when MKL first runs:
    the ``MKL_CBWR`` environment variable, or else the best the CPU has), as ``MKL_CBWR``
    names it (``AVX2``, ``AVX2,STRICT``...), or "none" where torch has no MKL."""
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        mode = lib.mkl_serv_cbwr_get(-1)  # -1: MKL_CBWR_ALL, the branch and the STRICT flag
        branch = mode & 0xFFFF
        if branch in (1, 2):  # not set, or AUTO: the branch MKL picks for this CPU
            auto = lib.mkl_serv_cbwr_get_auto_branch()
            branch = branch if auto in (1, 2) else auto
    except (OSError, AttributeError):
        return "none"
    # MKL may name no branch of its own (an AMD EPYC with AVX-512, 2026-12-07), where it takes
    # no setting but COMPATIBLE, and computes otherwise with MKL_CBWR unset (mode 1: UNSET; an
    # empty MKL_CBWR is the same) than with any other value (mode 2: AUTO)
    name = {1: "UNSET", 2: "AUTO"}.get(branch) or _MKL_BRANCHES.get(branch, str(branch))
    return name + (",STRICT" if mode & _MKL_STRICT else "")


def kernels() -> tuple[str, str]:
    """The CPU kernels this process computes with: torch's vectorised kernels
    (``ATEN_CPU_CAPABILITY``) and MKL's code path for matrix products (``MKL_CBWR``). The same
    torch rounds differently with other kernels (an AVX-512 matrix product is not an AVX2 one),
    so a coded file decodes only with the kernels it was written with."""
    return torch.backends.cpu.get_cpu_capability(), _mkl_branch()


def kernel_setting(kernels: tuple[str, str] | list) -> str:
    """The environment variables that select ``kernels`` (as :func:`kernels` reports them) in
    a process started with them: ``ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2``."""
    cap, mkl = kernels
    setting = f"ATEN_CPU_CAPABILITY={_TORCH_KERNELS.get(cap, str(cap).lower())}"
    if mkl == "UNSET":  # (MKL_CBWR unset: an empty value selects the same)
        return setting + " MKL_CBWR=''"
    return setting + (f" MKL_CBWR={mkl}" if mkl != "none" else "")


def _former_name(mkl: str) -> str | None:
    """The name flowforge gave MKL's mode ``mkl`` before 2026-12-07 where MKL names no branch
    of its own: "2" for both UNSET and AUTO (None for a named branch)."""
    base, _, flag = str(mkl).partition(",")
    return "2" + (f",{flag}" if flag else "") if base in ("UNSET", "AUTO") else None


def same_kernels(recorded, here) -> bool:
    """Whether recorded kernels name this process's: the same names, or the name flowforge
    gave before 2026-12-07 (:func:`_former_name`: a file or run of then is taken as it comes,
    as one that does not record its kernels)."""
    recorded, here = [str(k) for k in recorded], [str(k) for k in here]
    return recorded == here or (recorded[0] == here[0] and recorded[1] == _former_name(here[1]))


def ignored_setting(recorded_mkl: str, rest: str = "only another CPU, or --force, remains") -> str:
    """A clause saying that this process was started with ``MKL_CBWR`` set to the value that
    selects ``recorded_mkl`` and MKL did not take it (on some CPUs MKL takes COMPATIBLE
    alone), so that following the advice again cannot help; empty otherwise."""
    asked = os.environ.get("MKL_CBWR")
    here = kernels()[1]
    if asked is None or here == recorded_mkl or asked.upper() != recorded_mkl:
        return ""
    return (
        f" (this process was started with MKL_CBWR={asked}, and MKL here did not take it: it "
        f"runs {here}, so {rest})"
    )


def _environment_key(dtype, kernels: tuple[str, str] | None) -> int:
    key = f"torch {torch.__version__}|{platform.machine()}|{platform.system()}|{dtype}"
    if kernels is not None:  # None: the key of files written before the kernels were in it
        key += f"|kernels {kernels[0]}|mkl {kernels[1]}"
    return zlib.crc32(key.encode())


def _dtype(flow: torch.nn.Module):
    return next((p.dtype for p in flow.parameters()), torch.float32)


def environment(flow: torch.nn.Module) -> int:
    """CRC32 of what the float computations depend on: torch version, machine, OS, dtype and
    the CPU kernels (:func:`kernels`)."""
    return _environment_key(_dtype(flow), kernels())


def check_environment(recorded: int, flow: torch.nn.Module, force: bool, what: str) -> None:
    """Refuse (a :class:`CodecError`, unless ``force``) a file whose recorded environment is
    not this one's, naming the kernels to decode it with where only they differ. A file
    written before the kernels were recorded is taken as it comes."""
    dtype = _dtype(flow)
    if force or recorded in _accepted(dtype):
        return
    here = kernels()
    found = _recorded_kernels(recorded, dtype)
    if found is not None:
        cap, mkl = found
        setting = kernel_setting(found)
        raise CodecError(
            f"this file was written with other CPU kernels (torch {cap}, MKL {mkl}; here "
            f"torch {here[0]}, MKL {here[1]}), which round differently: decode it on a CPU "
            f"that has them, in a process started with {setting} set (`{setting} flowforge "
            "decompress ...`), or pass force=True (on the command line: --force) to try "
            f"anyway{ignored_setting(mkl)}"
        )
    raise CodecError(
        "this file was made in another environment (torch version, platform, dtype or CPU "
        f"kernels); its {what} may differ here: pass force=True (on the command line: "
        "--force) to try anyway"
    )


def _accepted(dtype) -> tuple[int, ...]:
    """The environment keys a file decodes under here without a word: this process's, that of
    a file that does not record its kernels, and this process's under the name flowforge gave
    its MKL mode before 2026-12-07 (:func:`same_kernels`)."""
    here = kernels()
    former = _former_name(here[1])
    keys = (_environment_key(dtype, here), _environment_key(dtype, None))
    return keys + ((_environment_key(dtype, (here[0], former)),) if former else ())


def _recorded_kernels(recorded: int, dtype) -> tuple[str, str] | None:
    """The CPU kernels (as :func:`kernels` names them) of a recorded environment that differs
    from this one's in its kernels alone; None when it differs otherwise."""
    names = [*_MKL_BRANCHES.values(), "AUTO"]
    branches = ["UNSET", *(b + f for b in names for f in ("", ",STRICT"))]
    for cap in _TORCH_KERNELS:
        for mkl in ("none", *branches):
            if recorded == _environment_key(dtype, (cap, mkl)):
                return cap, mkl
    return None


def _forced_hint(flow: torch.nn.Module, data) -> str:
    """What a failure to decode ``data`` with ``force=True`` most likely means, when the file
    records another environment than this one's and its bytes check out (header, payload CRC,
    model): the environment, as :func:`check_environment` warned, not a damaged file. Empty
    otherwise."""
    try:
        h = read_header(data)
        intact = zlib.crc32(bytes(data)[h.size :]) == h.payload_crc
        check_model(h.model_hash, flow)
    except CodecError:
        return ""
    dtype = _dtype(flow)
    if not intact or h.environment in _accepted(dtype):
        return ""
    found = _recorded_kernels(h.environment, dtype)
    start = "decoding with force=True (--force) failed, as the refusal without it warned: "
    if found is None:
        return (
            f"{start}this file was made in another environment (torch version, platform, dtype "
            "or CPU kernels) and its bytes pass their CRC checks, so it is probably intact: "
            "decode it where it was made"
        )
    here, setting = kernels(), kernel_setting(found)
    return (
        f"{start}this file was written with other CPU kernels (torch {found[0]}, MKL "
        f"{found[1]}; here torch {here[0]}, MKL {here[1]}) and its bytes pass their CRC "
        f"checks, so it is probably intact: decode it on a CPU that has them, in a process "
        f"started with {setting} set: `{setting} flowforge decompress ...`"
        f"{ignored_setting(found[1])}"
    )


@contextlib.contextmanager
def _explained(flow: torch.nn.Module, data, force: bool):
    """Decoding ``data``: a :class:`CodecError` said with what may be its cause other than a
    damaged file (a forced decode in another environment, or a file that does not record its
    kernels)."""
    try:
        yield
    except CodecError as e:
        hint = _forced_hint(flow, data) if force else ""
        if hint:
            what = str(e).removeprefix("corrupt .ffz file: ")
            raise CodecError(f"{hint}; what failed here: {what}") from None
        if "decod" in str(e) and _legacy_environment(flow, data):
            raise CodecError(f"{e}{LEGACY_HINT}") from None
        raise


LEGACY_HINT = (
    "; the file does not record the CPU kernels it was written with (an earlier flowforge): "
    "if it was written on another machine, decode it in a process started with "
    "that machine's kernels, e.g. ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2"
)


def _legacy_environment(flow: torch.nn.Module, data) -> bool:
    """Whether ``data``'s header has the environment key of a file written before the kernels
    were recorded."""
    try:
        recorded = read_header(data).environment
    except CodecError:
        return False
    return recorded == _environment_key(_dtype(flow), None)


@contextlib.contextmanager
def _threads(n: int):
    """Run with ``n`` torch threads: the count a file records, since the networks' results
    (and so the decoded data) depend on it; ``MAX_THREADS`` bounds what a header can ask."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- checks --------------------------------------------------------------------------------------


def _check_flow(flow) -> None:
    if isinstance(flow, IntegerFlow) and isinstance(flow.base, DiscretizedLogisticMixture):
        if flow.context_features:
            raise CodecError(
                f"the codec codes unconditional integer flows; this one is conditional "
                f"(context_features={flow.context_features}) and a .ffz file holds no context"
            )
        if flow.levels >= 2**31:  # the header's levels field, the int32 data checksum
            raise CodecError(f"the codec codes at most 2^31 - 1 levels, got {flow.levels:,}")
        try:  # a float32 flow cannot tell more than 2^23 integers apart: no table would decode
            exact_levels(flow.levels, flow.dtype)
        except ValueError as e:
            raise CodecError(str(e)) from None
        return
    if getattr(flow, "dequantizer", None) is not None:
        raise CodecError(
            "this flow dequantizes its data (a continuous flow): the integer tables need an "
            "integer discrete flow (ff.models.IDF); encode/decode code it by bits-back instead"
        )
    raise CodecError(
        f"the codec needs a flow with a discrete likelihood (an ff.models.IDF, or a flow built "
        f"with levels=, coded by bits-back), got {type(flow).__name__} without levels"
    )


def _as_integers(flow: IntegerFlow, x) -> np.ndarray:
    """``x`` as an int64 array of shape ``(N, *event_shape)``, checked."""
    shape = tuple(flow.event_shape)
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.layout != torch.strided:  # (sparse: numpy has no such array)
            x = x.to_dense()
        if x.is_floating_point() and x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()  # bfloat16 and the float8s: numpy has none, float32 holds their values
        x = x.numpy()
    try:
        x = np.asarray(x)
    except ValueError:  # ragged nested lists
        raise CodecError(
            f"expected data of shape (N, {', '.join(map(str, shape))}) for this model, got "
            "rows of different lengths"
        ) from None
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        # (the same values per example in another shape, as decompress writes a run's data
        # shape: a hint, not a silent reshape, since which axes are the example's is a guess)
        fits = x.ndim >= 1 and math.prod(x.shape[1:]) == math.prod(shape)
        hint = f": reshape it, x.reshape(len(x), {', '.join(map(str, shape))})" if fits else ""
        raise CodecError(
            f"expected data of shape (N, {', '.join(map(str, shape))}) for this model, got "
            f"{tuple(x.shape)}{hint}"
        )
    if x.shape[0] == 0:
        raise CodecError("expected at least one example, got 0")
    if x.size > MAX_VALUES:
        raise CodecError(f"one file holds at most {MAX_VALUES:,} values, got {x.size:,}")
    if x.dtype.kind not in "iub":
        if x.dtype.kind != "f":
            raise CodecError(f"expected integer data in [0, {flow.levels - 1}], got {x.dtype}")
        bad = ~np.isfinite(x) | (x != np.rint(x))  # on the values as given: never rounded first
        if bad.any():
            row, col = divmod(int(np.argmax(bad)), math.prod(shape))
            raise CodecError(
                f"expected integer data in [0, {flow.levels - 1}]; the value at row {row}, "
                f"column {col} (0-based) is {float(x[row].flat[col])!r}, not an integer"
            )
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > flow.levels - 1:
        raise CodecError(
            f"expected data in [0, {flow.levels - 1}] ({flow.levels} levels), got values in "
            f"[{lo:g}, {hi:g}]"
        )
    return x.astype(np.int64)


def default_chunk(shape) -> int:
    """64 examples per network call, or as many as ``MAX_CHUNK_VALUES`` values allow."""
    return max(1, min(64, MAX_CHUNK_VALUES // math.prod(event_shape(shape))))


def _check_chunk(chunk: int, shape: tuple[int, ...]) -> None:
    """Refuse a chunk whose network call would take more than ``MAX_CHUNK_VALUES`` values (one
    example at a time is always allowed): the encoder and the decoder apply the same limit."""
    values = math.prod(shape)
    if chunk > 1 and chunk * values > MAX_CHUNK_VALUES:
        raise CodecError(
            f"a chunk of {chunk} examples of {values:,} values is more than the "
            f"{MAX_CHUNK_VALUES:,} values one network call may take; expected a chunk of at "
            f"most {max(1, MAX_CHUNK_VALUES // values)}"
        )


def _data_crc(x: np.ndarray) -> int:
    return zlib.crc32(x.astype("<i4").tobytes())


# -- probability tables --------------------------------------------------------------------------


def _plan(params, radius: int, rows: int):
    """A block's mixtures as float64 arrays, one row per entry (the first ``rows``), with what
    fixes its tables: ``(w, loc, log_scale, center, r, step)``, ``center`` the rounded mean of
    each entry's mixture, ``r`` the window's half-width and ``step`` the rows of a piece.
    The window half-width ``r`` is the smallest that holds every component of weight above
    1e-6 out to 16 of its scales around the rounded mean (where a logistic's tail mass is below
    1e-7), capped at ``radius``: a function of the parameters alone, so encoder and decoder
    agree on it. A piece has at most ``_PIECE`` table entries (rows x window x components),
    which bounds the memory whatever the chunk and window, and lets the decoder check its
    payload between pieces. ``params`` as from ``block_params``."""
    log_w, loc, log_scale = (
        p.detach().double().reshape(-1, p.shape[-1])[:rows].numpy() for p in params
    )
    with np.errstate(all="ignore"):  # (a damaged model's overflow: its file fails its CRC)
        w = np.exp(log_w)
        w /= w.sum(-1, keepdims=True)
        mean = (w * loc).sum(-1)
        center = np.clip(np.nan_to_num(np.rint(mean)), -(2**30), 2**30).astype(np.int64)
        reach = np.abs(loc - center[:, None]) + 16.0 * np.exp(log_scale)
        need = np.nan_to_num(np.where(w > 1e-6, reach, 0.0).max(), nan=0.0)
    r = int(min(radius, max(4, math.ceil(min(need, 2.0**20)))))
    step = max(1, _PIECE // ((2 * r + 2) * w.shape[1]))
    return w, loc, log_scale, center, r, step


def _tables(params, radius: int, rows: int):
    """Integer tables for the first ``rows`` entries of a block, in consecutive pieces of rows
    (:func:`_plan`): ``(lo, counts)`` per piece, ``lo`` ``(m,)`` the first value of each
    entry's window and ``counts`` ``(m, 2 * r + 2)`` int64 summing to ``2**24``, the last
    column the escape."""
    w, loc, log_scale, center, r, step = _plan(params, radius, rows)
    for a in range(0, len(w), step):
        b = a + step
        lo = center[a:b] - r
        yield lo, _counts(w[a:b], loc[a:b], log_scale[a:b], lo, r)


def _counts(w, loc, log_scale, lo, r: int) -> np.ndarray:
    """The integer table of each row's window ``[lo, lo + 2r]`` plus the escape, computed
    ``_PASS`` window entries at a time (each row's table is its own: the same integers
    however the rows are grouped)."""
    bins = 2 * r + 2
    step = max(1, _PASS // bins)
    with np.errstate(all="ignore"):  # (as in _plan)
        if len(w) <= step:
            return _quantized(w, loc, log_scale, lo, r)
        out = np.empty((len(w), bins), np.int64)
        for a in range(0, len(w), step):
            b = a + step
            out[a:b] = _quantized(w[a:b], loc[a:b], log_scale[a:b], lo[a:b], r)
        return out


def _quantized(w, loc, log_scale, lo, r: int) -> np.ndarray:
    """The tables of rows ``(w, loc, log_scale)`` (``(m, K)`` each) over the windows that start
    at ``lo``: the mixture's CDF at the ``2r + 2`` bin edges in float64, its differences and
    the escape mass, quantized to integers summing to ``2**24`` (every bin at least 1, the
    rounding's remainder on the largest). The arithmetic is the format's definition (the
    decoder must rebuild these integers bit for bit): each operation, and the order in which
    the components are summed, is that of the original one-expression form (see
    :func:`_mixture_cdf`); only the buffers are reused."""
    m, bins = len(w), 2 * r + 2
    cdf = _mixture_cdf(w, loc, log_scale, lo, bins)
    p = np.empty((m, bins))
    np.subtract(cdf[:, 1:], cdf[:, :-1], out=p[:, :-1])  # (np.diff)
    p[:, -1] = np.clip(1.0 - (cdf[:, -1] - cdf[:, 0]), 0.0, 1.0)  # the escape
    np.clip(p, 0.0, None, out=p)
    p /= p.sum(-1, keepdims=True)
    total = 1 << PRECISION
    p *= total - bins
    np.floor(p, out=p)
    counts = p.astype(np.int64)
    counts += 1
    rest = total - counts.sum(-1)
    counts[np.arange(m), counts.argmax(-1)] += rest
    return counts


def _mixture_cdf(w, loc, log_scale, lo, bins: int) -> np.ndarray:
    """``sum_k w_k / (1 + exp(-clip((edge - loc_k) / scale_k, -700, 700)))`` at the ``bins``
    edges ``lo - 0.5 + j``, ``(m, bins)``: component by component into ``(m, bins)`` buffers,
    summed in the order numpy's ``ndarray.sum(-1)`` adds the ``(m, bins, K)`` array of the
    terms (its pairwise summation: :func:`_pairwise`), so bit for bit that sum without
    building the array K times the size, or reducing over its short last axis (a third of the
    time of a table)."""
    m, k = w.shape
    edges = lo[:, None] - 0.5 + np.arange(bins, dtype=np.float64)[None, :]
    inv = np.exp(-log_scale)

    def term(j: int, out: np.ndarray) -> np.ndarray:
        np.subtract(edges, loc[:, j, None], out=out)
        out *= inv[:, j, None]
        np.clip(out, -700, 700, out=out)
        np.negative(out, out=out)
        np.exp(out, out=out)
        np.add(1.0, out, out=out)
        return np.divide(w[:, j, None], out, out=out)

    return _pairwise(term, 0, k, (m, bins))


def _pairwise(term, start: int, n: int, shape) -> np.ndarray:
    """``term(start) + ... + term(start + n - 1)`` (each ``term(j, out)`` written into a
    buffer ``out`` of ``shape``) added in the order of numpy's pairwise summation, which
    ``ndarray.sum`` applies along a contiguous axis (``pairwise_sum`` in numpy's
    ``loops_utils.h.src``): fewer than 8 terms one after another from 0; up to 128, eight
    running sums over every eighth term, combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) +
    (r6 + r7)), then the rest one by one; beyond, the two halves (cut at a multiple of 8)."""
    if n < 8:
        res, buf = np.zeros(shape), np.empty(shape)
        for j in range(start, start + n):
            res += term(j, buf)
        return res
    if n <= 128:
        acc = [term(start + j, np.empty(shape)) for j in range(8)]
        buf, i, whole = np.empty(shape), 8, n - n % 8
        while i < whole:
            for j in range(8):
                acc[j] += term(start + i + j, buf)
            i += 8
        for a, b in ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (4, 6), (0, 4)):
            acc[a] += acc[b]
        res = acc[0]
        for j in range(start + whole, start + n):
            res += term(j, buf)
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(term, start, half, shape) + _pairwise(term, start + half, n - half, shape)


def ideal_bits(flow: IntegerFlow, x, chunk: int | None = None, radius: int | None = None) -> float:
    """The code length in bits that the integer tables give ``x`` (what an ideal entropy coder
    would write, header aside): the model's NLL plus the table rounding and window cost.
    ``chunk`` and ``radius`` as in :func:`encode` (the same defaults)."""
    _check_flow(flow)
    if chunk is None:
        chunk = default_chunk(flow.event_shape)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= MAX_CHUNK:
        raise CodecError(f"expected chunk to be an integer in [1, {MAX_CHUNK}], got {chunk!r}")
    xs = _as_integers(flow, x)
    chunk = min(chunk, len(xs))
    _check_chunk(chunk, xs.shape[1:])
    radius = _radius(flow, radius)
    bits = 0.0
    was_training = training_modes(flow)
    flow.eval()
    try:
        with torch.no_grad():
            for _, syms, counts, _ in _segments(flow, xs, chunk, radius):
                if counts is not None:
                    bits += float(np.sum(PRECISION - np.log2(counts[np.arange(len(syms)), syms])))
                else:
                    bits += 16.0 * len(syms)
    finally:
        restore_modes(was_training)
    return bits


def _radius(flow: IntegerFlow, radius: int | None) -> int:
    r = min(2 * flow.levels, MAX_DEFAULT_RADIUS) if radius is None else radius
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 65535:
        raise CodecError(f"expected a window radius in [1, 65535], got {radius!r}")
    return r


# -- the two directions --------------------------------------------------------------------------


def _chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield start, min(chunk, n - start)


def _latent(flow: IntegerFlow, x: np.ndarray, chunk: int) -> Tensor:
    """``z`` of one chunk (padded to ``chunk`` rows with zeros), flat ``(chunk, D)``."""
    pad = np.zeros((chunk, *x.shape[1:]), np.int64)
    pad[: len(x)] = x
    xt = torch.from_numpy(pad).to(flow.dtype)
    z, _ = flow.transform(xt)
    try:
        check_exact_latents(z, flow.dtype)
    except ValueError as e:
        raise CodecError(f"this model cannot code the data: {e}") from None
    return z.reshape(chunk, -1)


def _escape_words(v: np.ndarray) -> np.ndarray:
    """Escaped latent values as pairs of 16-bit symbols (two's complement, high half first);
    a value beyond 32 bits is refused, never wrapped (the file would not decode)."""
    if len(v) and (v.min() < -(2**31) or v.max() >= 2**31):
        raise CodecError(
            f"a latent value of the model reaches {int(np.abs(v).max()):,}, beyond the 32 bits "
            "an escaped value is stored in; use fewer levels"
        )
    u = v.astype(np.int64) & 0xFFFFFFFF
    return np.stack([u >> 16, u & 0xFFFF], 1).reshape(-1).astype(np.int32)


def _unescape(words: np.ndarray) -> np.ndarray:
    u = (words.reshape(-1, 2).astype(np.int64) << np.array([16, 0])).sum(1)
    return np.where(u >= 2**31, u - 2**32, u)


def _segments(flow: IntegerFlow, xs: np.ndarray, chunk: int, radius: int):
    """What the encoder writes, in decoding order: ``(kind, symbols, counts, values)`` with
    ``counts`` None for raw 16-bit words of escaped values."""
    for start, n in _chunks(len(xs), chunk):
        yield from _chunk_segments(flow, xs[start : start + n], chunk, radius)


def _chunk_segments(flow: IntegerFlow, x: np.ndarray, chunk: int, radius: int):
    """:func:`_segments` of one chunk of ``n <= chunk`` examples ``x``."""
    base, n = flow.base, len(x)
    z = _chunk_latent(flow, x, chunk)
    for i in reversed(range(len(base.blocks))):
        s = base.block_slice(i)
        m = n * (s.stop - s.start)
        v = z[:n, s].reshape(-1).to(torch.int64).numpy()
        escaped, a = [], 0
        for lo, counts in _tables(_block_params(base, i, z), radius, m):
            piece, a = v[a : a + len(lo)], a + len(lo)
            syms, esc = _symbols(piece, lo, counts.shape[1] - 1)
            yield "block", syms, counts, None
            escaped.append(piece[esc])
        escaped = np.concatenate(escaped)
        if len(escaped):
            yield "escape", _escape_words(escaped), None, None


def _symbols(v: np.ndarray, lo: np.ndarray, escape: int) -> tuple[np.ndarray, np.ndarray]:
    """The table symbols of latent values ``v`` in windows starting at ``lo``: the offset in
    the window, or ``escape`` (a table's last column) where the value falls outside it; and
    where it does."""
    off = v - lo
    esc = (off < 0) | (off >= escape)
    return np.where(esc, escape, off).astype(np.int32), esc


def _chunk_latent(flow: IntegerFlow, x: np.ndarray, chunk: int) -> Tensor:
    """The flat latent ``(chunk, D)`` of one chunk of ``n <= chunk`` examples, its padding
    rows zeros, as the decoder sees them."""
    z_full = _latent(flow, x, chunk)
    z = torch.zeros_like(z_full)
    z[: len(x)] = z_full[: len(x)]
    return z


def _encode_chunk(coder, categorical, raw, flow: IntegerFlow, x: np.ndarray, chunk, radius):
    """Push one chunk of ``n <= chunk`` examples ``x`` onto the rANS ``coder``, in the reverse
    of the order the decoder reads them (:func:`_chunk_segments`; the coder is a stack): the
    first block first, and in each block the words of its escaped values, then its pieces of
    tables from the last piece. The encoder knows the whole latent, so every block's
    parameters come from it in any order, and only one piece of tables exists at a time (at
    most ``_PIECE`` entries, the decoder's bound), whatever the chunk."""
    base, n = flow.base, len(x)
    z = _chunk_latent(flow, x, chunk)
    for i in range(len(base.blocks)):
        s = base.block_slice(i)
        m = n * (s.stop - s.start)
        v = z[:n, s].reshape(-1).to(torch.int64).numpy()
        w, loc, log_scale, center, r, step = _plan(_block_params(base, i, z), radius, m)
        lo = center - r
        syms, esc = _symbols(v, lo, 2 * r + 1)
        if esc.any():
            coder.encode_reverse(_escape_words(v[esc]), raw)
        for a in reversed(range(0, m, step)):
            b = a + step
            counts = _counts(w[a:b], loc[a:b], log_scale[a:b], lo[a:b], r)
            coder.encode_reverse(syms[a:b], categorical, counts / float(1 << PRECISION))


def _block_params(base: DiscretizedLogisticMixture, i: int, z: Tensor):
    return base.block_params(i, z.to(base._anchor.dtype))


def encode(
    flow: IntegerFlow | Flow,
    x,
    chunk: int | None = None,
    threads: int = 1,
    radius: int | None = None,
    verify: bool = True,
) -> bytes:
    """Compress integer data ``x`` of shape ``(N, *flow.event_shape)`` with ``flow``.

    Args:
        flow: an integer discrete flow (:func:`flowforge.models.IDF`), in eval mode, or a
            flow with a dequantizer (``levels=``), coded by bits-back
            (:func:`flowforge.bitsback.encode`, which takes its own options).
        x: integers in ``[0, flow.levels - 1]`` (a tensor or an array).
        chunk: examples per network call (the decoder uses the same): at most ``N`` is used,
            and at most ``MAX_CHUNK_VALUES`` values per call (one example always works).
            Default: 64, or fewer for examples of more than 16,384 values.
        threads: torch threads during coding (recorded; the decoder uses the same, since the
            networks' rounding depends on it), at most ``MAX_THREADS``.
        radius: the largest half-width of a table window (default ``min(2 * levels, 4096)``,
            which covers the data range up to 2,048 levels); each block's window is as wide
            as its mixtures need, up to this. Values outside the window are escaped, not
            lost.
        verify: decode the result and compare before returning it.

    Returns:
        the ``.ffz`` bytes. Raises :class:`CodecError` (a ``ValueError``) on bad input.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.IDF(features=4, levels=5, layers=2, hidden=(8,)).eval()
        >>> x = torch.randint(0, 5, (10, 4))
        >>> torch.equal(ff.codec.decode(flow, ff.codec.encode(flow, x)), x)
        True
    """
    _mixed(flow)
    if _bits_back(flow):
        from . import bitsback

        given = [n for n, v in (("chunk", chunk), ("radius", radius)) if v is not None]
        if given:  # (silently dropped before)
            raise CodecError(
                f"{' and '.join(given)} set the integer codec's tables; a dequantizing flow is "
                "coded by bits-back (flowforge.bitsback.encode takes its own options)"
            )
        return bitsback.encode(flow, x, threads=threads, verify=verify)
    stack, model = _constriction()
    _check_flow(flow)
    if chunk is None:
        chunk = default_chunk(flow.event_shape)
    for name, v, hi in (("chunk", chunk, MAX_CHUNK), ("threads", threads, MAX_THREADS)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise CodecError(f"expected {name} to be an integer in [1, {hi}], got {v!r}")
    xs = _as_integers(flow, x)
    chunk = min(chunk, len(xs))  # no padding beyond the data (the header records this)
    _check_chunk(chunk, xs.shape[1:])
    radius = _radius(flow, radius)
    was_training = training_modes(flow)
    flow.eval()
    coder = stack.AnsCoder()
    categorical, raw = model.Categorical(perfect=False), model.Uniform(1 << 16)
    try:
        with torch.no_grad(), _threads(threads):
            # the stack codes in reverse: the last chunk first, and in each chunk the last
            # piece of tables first, so that one piece of tables exists at a time
            for start, n in reversed(list(_chunks(len(xs), chunk))):
                part = xs[start : start + n]
                _encode_chunk(coder, categorical, raw, flow, part, chunk, radius)
    finally:
        restore_modes(was_training)
    words = np.asarray(coder.get_compressed(), dtype=np.uint32).astype("<u4")
    payload = words.tobytes()
    header = Header(
        levels=flow.levels,
        count=len(xs),
        shape=tuple(flow.event_shape),
        chunk=chunk,
        threads=threads,
        radius=radius,
        model_hash=model_hash(flow),
        environment=environment(flow),
        data_crc=_data_crc(xs),
        payload_crc=zlib.crc32(payload),
        words=len(words),
    )
    data = header.pack() + payload
    if verify:  # (a failure here is the model's, not a file's: said so)
        try:
            back = decode(flow, data)
        except CodecError as e:
            raise CodecError(
                f"the encoded data did not decode to the input ({e}); nothing was written"
            ) from None
        if not np.array_equal(back.numpy(), xs):
            raise CodecError(
                "the encoded data did not decode to the input (non-deterministic model "
                "computations?); nothing was written"
            )
    return data


def _mixed(flow) -> None:
    """A :class:`CodecError` for a flow of mixed data (some integer columns among continuous
    ones), which no lossless code covers."""
    deq = getattr(flow, "dequantizer", None)
    if deq is not None and deq.levels is None:
        raise CodecError(
            "the model scores integer columns among continuous ones (data.integers); lossless "
            "coding needs discrete data throughout (levels, or an integer flow)"
        )


def _bits_back(flow) -> bool:
    """Whether ``flow`` is a continuous flow with a dequantizer (coded by bits-back)."""
    return not isinstance(flow, IntegerFlow) and getattr(flow, "dequantizer", None) is not None


def _version(data) -> int | None:
    data = bytes(data[:6]) if isinstance(data, (bytes, bytearray, memoryview)) else b""
    return struct.unpack_from("<H", data, 4)[0] if len(data) == 6 and data[:4] == MAGIC else None


def read_header(data: bytes):
    """Parse and check a ``.ffz`` header (magic, version, header CRC, length): a
    :class:`Header`, or a :class:`flowforge.bitsback.Header` for a version-2 (bits-back)
    file."""
    if _version(data) == 2:
        from . import bitsback

        return bitsback.read_header(data)

    def check_version(version, flags):
        if version != VERSION:
            raise CodecError(
                f"unsupported .ffz version {version} (this flowforge reads {VERSION} and 2, "
                "bits-back)"
            )
        if flags:
            raise CodecError(
                f"corrupt .ffz file: unknown header flags {flags:#06x} (version {VERSION} "
                "defines none)"
            )

    version, flags, levels, count, shape, tail = _unpack_frame(data, _TAIL, check_version)
    chunk, threads, radius, precision, mhash, env, dcrc, pcrc, words = tail
    h = Header(
        levels,
        count,
        shape,
        chunk,
        threads,
        radius,
        mhash,
        env,
        dcrc,
        pcrc,
        words,
        version,
        flags,
        precision,
    )
    if (
        precision != PRECISION
        or not 1 <= chunk <= MAX_CHUNK
        or not 1 <= threads <= MAX_THREADS
        or radius < 1
        or count < 1
        or count * math.prod(shape) > MAX_VALUES
    ):
        raise CodecError("corrupt .ffz file: impossible header values")
    try:
        _check_chunk(chunk, shape)
    except CodecError as e:
        raise CodecError(f"corrupt or unsupported .ffz file: {e}") from None
    return h


def _check_left(coder, done: int, count: int, spent: float, budget: float) -> None:
    """Refuse to decode past the payload. Symbols still to decode from an empty coder, or
    decoded symbols whose information (``spent``, ``-log2`` of their table probabilities, in
    bits) exceeds what the payload holds (``budget``), mean a damaged or forged file: a coder
    whose state has run below its floor goes on decoding the same symbol at no cost to its
    state, so emptiness alone would let a forged header's count run for hours. Checked before
    every piece of a table, so that a header promising more examples than the payload holds
    stops within one piece, not after a whole chunk."""
    if coder.is_empty() or not spent <= budget:  # (NaN from a damaged table: refused too)
        raise CodecError(
            f"corrupt .ffz file: its payload ran out after {done} of the {count} examples its "
            "header announces"
        )


def _information(counts: np.ndarray, syms: np.ndarray) -> float:
    """The bits that decoding ``syms`` from tables ``counts`` took from the coder."""
    taken = counts[np.arange(len(syms)), syms]
    return float(len(syms) * PRECISION - np.log2(taken).sum())


def decode(flow: IntegerFlow | Flow, data: bytes, force: bool = False) -> Tensor:
    """Decompress ``.ffz`` bytes made by :func:`encode` with the same ``flow``.

    Returns an int64 tensor of shape ``(count, *flow.event_shape)``. Raises
    :class:`CodecError` for a corrupt, truncated or foreign file, another model, or (unless
    ``force``) another environment, CPU kernels included (:func:`kernels`).
    """
    with _explained(flow, data, force):  # (a failure after --force, or without kernels: why)
        return _decode(flow, data, force)


def _decode(flow, data: bytes, force: bool) -> Tensor:
    _mixed(flow)
    if _version(data) == 2 or _bits_back(flow):
        from . import bitsback

        if not _bits_back(flow):
            read_header(data)
            raise CodecError(
                "this file was made by bits-back coding with a continuous flow, but the model "
                "is not one (a flow with levels and a dequantizer)"
            )
        if _version(data) != 2:
            read_header(data)  # a clear error for a file that is not a .ffz at all
            raise CodecError(
                "this file was made with an integer flow, but the model is a continuous flow "
                "(bits-back coding)"
            )
        return bitsback._decode(flow, data, force)
    stack, model = _constriction()
    _check_flow(flow)
    h = read_header(data)
    payload = bytes(data)[h.size :]
    if zlib.crc32(payload) != h.payload_crc:
        raise CodecError("corrupt .ffz file: the payload fails its CRC check")
    if h.levels != flow.levels or h.shape != tuple(flow.event_shape):
        raise CodecError(
            f"this file holds data of shape {h.shape} with {h.levels} levels, but the model "
            f"takes shape {tuple(flow.event_shape)} with {flow.levels} levels"
        )
    check_model(h.model_hash, flow)
    check_environment(h.environment, flow, force, "tables")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    coder = _coder(stack, words)
    # the payload's information, with room for the coder's sub-word state and the rounding of
    # the tables' quantization (a genuine file spends at most its payload)
    budget = 32.0 * (len(words) + 2)
    budget += 1e-3 * budget
    spent = 0.0
    categorical, raw = model.Categorical(perfect=False), model.Uniform(1 << 16)
    base, r = flow.base, h.radius
    parts: list[np.ndarray] = []  # grown as chunks decode: a header's count allocates nothing
    store = np.uint8 if flow.levels <= 256 else np.uint16 if flow.levels <= 65536 else np.int64
    was_training = training_modes(flow)
    flow.eval()
    try:
        with torch.no_grad(), _threads(h.threads):
            for start, n in _chunks(h.count, h.chunk):
                _check_left(coder, start, h.count, spent, budget)
                z = torch.zeros(h.chunk, base.features, dtype=flow.dtype)
                for i in reversed(range(len(base.blocks))):
                    s = base.block_slice(i)
                    m = n * (s.stop - s.start)
                    v, esc = [], []
                    for lo, counts in _tables(_block_params(base, i, z), r, m):
                        _check_left(coder, start, h.count, spent, budget)
                        syms = np.asarray(
                            coder.decode(categorical, counts / float(1 << PRECISION)), np.int64
                        )
                        spent += _information(counts, syms)
                        v.append(lo + syms)
                        esc.append(syms == counts.shape[1] - 1)
                    v, esc = np.concatenate(v), np.concatenate(esc)
                    if esc.any():
                        _check_left(coder, start, h.count, spent, budget)
                        v[esc] = _unescape(np.asarray(coder.decode(raw, 2 * int(esc.sum()))))
                        spent += 32.0 * int(esc.sum())
                    z[:n, s] = torch.from_numpy(v.reshape(n, -1)).to(z.dtype)
                xt, _ = flow.transform.inverse(z.reshape(h.chunk, *flow.transform.output_shape))
                x = xt[:n].round().to(torch.int64).numpy()
                if x.size and (x.min() < 0 or x.max() > flow.levels - 1):
                    raise CodecError(
                        f"corrupt .ffz file: it decodes to values outside the data's "
                        f"{flow.levels} levels [0, {flow.levels - 1}] (in its examples from "
                        f"{start})"
                    )
                parts.append(x.astype(store))
    except CodecError:
        raise
    except Exception as e:  # the coder or the model fed garbage by a damaged payload
        raise CodecError(f"corrupt .ffz file: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        restore_modes(was_training)
    out = np.concatenate(parts).reshape(h.count, *h.shape)
    if not coder.is_empty() or _data_crc(out) != h.data_crc:
        raise CodecError("corrupt .ffz file: the decoded data fail the CRC check")
    return torch.from_numpy(out.astype(np.int64))
