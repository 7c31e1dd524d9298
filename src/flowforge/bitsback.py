r"""Local bits-back coding (Ho, Lohn & Abbeel 2019) of discrete data with a *continuous* flow
that dequantizes it: :func:`encode` / :func:`decode`, reached through
:func:`flowforge.codec.encode` and :func:`flowforge.codec.decode`.

A continuous flow with ``levels`` scores ``y = x + u`` (``u`` in ``[0, 1)^D`` from its
dequantizer ``q(u | x)``) with a density ``p(y) = N(f(y); 0, I) |det J(y)|``, ``J = df/dy``.
Its NLL ``E_q[-log p(x + u) + log q(u | x)]`` is a code length, reached this way, per example,
on one rANS stack (``constriction``):

1. **bits back from the dequantizer**: *decode* ``u`` from the stream under ``q(u | x)``
   discretised on the grid ``2^-y_bits`` (for uniform dequantization, ``y_bits`` raw bits per
   entry; for variational dequantization, the same local bits-back decoder as in 2, run for
   ``q``'s own flow). This takes ``-log2 q(u | x) + D * y_bits`` bits off the stream.
2. **the flow's density on that grid, by local bits-back**: with ``y = x + u`` (the cell's
   centre), ``z = f(y)`` and ``A`` lower triangular with ``A A^T = J J^T``: *decode*
   ``zbar ~ N(z, sigma^2 A A^T)`` on the fixed grid ``2^-z_bits`` entry by entry (the
   conditionals of a Gaussian factor through ``A``), *encode* ``y``'s cell under
   ``N(f^-1(zbar), sigma^2 I)``, then *encode* ``zbar`` under the base ``N(0, I)`` (a table of
   coarse cells of width ``2^-coarse_bits`` on ``[-z_range, z_range)`` plus an escape, and a
   uniform position inside the cell). Net: ``-log2 p(y) + D * y_bits`` bits, up to ``O(sigma)``
   terms: the linearisation of ``f`` over a ``sigma``-ball.

The decoder runs the same steps backwards (decode ``zbar``, decode ``y``, recompute
``f(y)`` and re-encode ``zbar``, re-encode ``u`` under ``q``), so it returns the stream to the
state it had before the example. The first example has nothing to decode ``u`` and ``zbar``
from: the stack starts with ``init_words`` 32-bit words drawn from a seeded generator (PCG64,
``seed`` in the header) that the decoder regenerates. The encoder leaves out of the file the
leading words of the stack that are still those words; what it consumed of them is the
**initial bits** (:attr:`Header.initial_bits`), a one-off cost that the file pays and that
:func:`encode_stats` reports apart.

**Layer by layer.** Step 2 needs the whole flow's ``D x D`` Jacobian (``D`` backward passes per
example and direction). When every layer of the flow declares its Jacobian's structure
(couplings and elementwise layers, re-indexing, linear layers; see
:mod:`flowforge.bitsback_layers`), the flow is coded one layer at a time instead, with forward
passes only; ``scheme="auto"`` (the default) does so, and the header's flags record it (bit 0:
the flow, bit 1: a variational dequantizer's flow; files with neither are the whole-flow
scheme, as every version-2 file written before). Bit 2: every example carries a one-symbol
escape flag (probability 2^-12); an example whose layer inverse misses the coder's window, as
data far out in the model's tails can make it, is then coded uniformly, ``log2(levels)`` bits
per entry, instead of stopping the encoder.

Determinism: every network call is made on one example at a time (the same shapes in both
directions), in float64 on a copy of the flow, on the CPU, with ``threads`` torch threads; the
linear algebra runs in torch; the Gaussian conditionals are sums computed with ``math.fsum``
(exactly rounded, so independent of memory alignment and summation order). The decoder thus
recomputes bit-identical coder parameters on the same machine and software; the file records
an environment fingerprint, and :func:`encode` decodes its own output before returning it.

File format (``.ffz`` version 2, little-endian), see ``docs/compression.md``::

    magic "FFZ\x01"  version u16 (=2)  flags u16  levels u32  count u32  ndim u8  shape u32*ndim
    threads u16  sigma_bits u8  y_bits u8  z_bits u8  coarse_bits u8  z_range u16
    dequantization u8  model hash 16 B  environment u32  data CRC32 u32  seed u32
    init_words u32  kept_words u32  payload CRC32 u32  payload words u32  header CRC32 u32
    payload: the rANS stack's u32 words after its first kept_words (the seeded initial words)
"""

from __future__ import annotations

import copy
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .core import Flow
from .distributions import DiagGaussian, StandardNormal
from .nets import MADE
from .transforms.autoregressive import set_inverse
from .transforms.continuous import CNF
from .transforms.coupling import Coupling
from .transforms.dequantization import UniformDequantization, VariationalDequantization
from .transforms.elementwise import Affine
from .transforms.iresnet import ResidualBlock
from .transforms.splines import RationalQuadratic

__all__ = [
    "Header",
    "encode",
    "decode",
    "encode_stats",
    "read_header",
    "VERSION",
    "check_flow",
    "default_z_bits",
]

VERSION = 2
PRECISION = 24
# header flags: which density is coded layer by layer (flowforge.bitsback_layers); a clear bit
# means the whole-flow black-box Jacobian (the only scheme of the first version-2 files)
FLAG_LAYERS = 1  # the flow
FLAG_Q_LAYERS = 2  # the variational dequantizer's flow
# every example carries a flag: 1 if the local Gaussian could not code it (an inverse that
# missed its window, as data far out in the model's tails can make it) and its cells were coded
# uniformly instead; files without this bit (written before it existed) have no such flags
FLAG_ESCAPE = 4
FLAGS = FLAG_LAYERS | FLAG_Q_LAYERS | FLAG_ESCAPE
SCHEMES = ("auto", "layers", "jacobian")
_TAIL = struct.Struct("<HBBBBHB16sIIIIIII")
_DEQ = {UniformDequantization: 0, VariationalDequantization: 1}
_DEQ_NAMES = {0: "uniform", 1: "variational"}
MAX_VALUES = 2**31
MAX_INIT_WORDS = 1 << 20


def _codec():
    from . import codec

    return codec


@dataclass(frozen=True)
class Header:
    """The header of a bits-back ``.ffz`` file (version 2; see the module docstring)."""

    levels: int
    count: int
    shape: tuple[int, ...]
    threads: int
    sigma_bits: int
    y_bits: int
    z_bits: int
    coarse_bits: int
    z_range: int
    dequantization: int
    model_hash: bytes
    environment: int
    data_crc: int
    seed: int
    init_words: int
    kept_words: int
    payload_crc: int
    words: int
    version: int = VERSION
    flags: int = 0

    def pack(self) -> bytes:
        values = (self.threads, self.sigma_bits, self.y_bits, self.z_bits, self.coarse_bits)
        values += (self.z_range, self.dequantization, self.model_hash, self.environment)
        values += (self.data_crc, self.seed, self.init_words, self.kept_words)
        values += (self.payload_crc, self.words)
        codec = _codec()
        return codec._pack_frame(
            self.version, self.flags, self.levels, self.count, self.shape, _TAIL, values
        )

    @property
    def size(self) -> int:
        return _codec()._frame_size(self.shape, _TAIL)

    @property
    def initial_bits(self) -> int:
        """Bits of the seeded initial stack that the file pays for (consumed by the first
        examples): ``32 * (init_words - kept_words)``."""
        return 32 * (self.init_words - self.kept_words)


def read_header(data: bytes) -> Header:
    """Parse and check a version-2 (bits-back) ``.ffz`` header."""
    codec = _codec()

    def check_version(version, flags):
        if version != VERSION or flags & ~FLAGS:
            raise codec.CodecError(
                f"not a bits-back .ffz file (version {version}, flags {flags}; expected version "
                f"{VERSION}, flags within {FLAGS})"
            )

    version, flags, levels, count, shape, tail = codec._unpack_frame(data, _TAIL, check_version)
    h = Header(levels, count, shape, *tail, version=version, flags=flags)
    if (
        not 1 <= h.threads <= codec.MAX_THREADS
        or h.count < 1
        or h.count * math.prod(h.shape) > MAX_VALUES
        or h.dequantization not in _DEQ_NAMES
        or not _params_ok(h.sigma_bits, h.y_bits, h.z_bits, h.coarse_bits, h.z_range)
        or not h.kept_words <= h.init_words <= MAX_INIT_WORDS
    ):
        raise codec.CodecError("corrupt .ffz file: impossible header values")
    return h


def _params_ok(sigma_bits, y_bits, z_bits, coarse_bits, z_range) -> bool:
    return (
        1 <= sigma_bits <= 30
        and sigma_bits < y_bits <= 22
        and sigma_bits < z_bits <= 30
        and 0 <= coarse_bits <= 12
        and 1 <= z_bits - coarse_bits <= 20
        and 1 <= z_range <= 256
        and z_range * (1 << coarse_bits) <= 1 << 16
    )


# -- checks ----------------------------------------------------------------------------------------


def check_flow(flow) -> None:
    """``CodecError`` unless bits-back coding can take ``flow``: a :class:`~flowforge.Flow`
    with a uniform or variational dequantizer (``levels``), no context, and a standard normal
    or an unconditional diagonal Gaussian base."""
    codec = _codec()
    if not isinstance(flow, Flow):
        raise codec.CodecError(f"expected a flowforge Flow, got {type(flow).__name__}")
    deq = flow.dequantizer
    if deq is None:
        raise codec.CodecError(
            "bits-back coding needs a flow with a discrete likelihood: build the flow with "
            "levels= (a dequantizer); this one models continuous data"
        )
    codec._mixed(flow)
    if deq.levels >= 2**32:  # the header's levels field
        raise codec.CodecError(
            f"bits-back coding codes at most 2^32 - 1 levels, got {deq.levels:,}"
        )
    if type(deq) not in _DEQ:
        raise codec.CodecError(
            f"bits-back coding takes uniform or variational dequantization, got "
            f"{type(deq).__name__}"
        )
    if flow.context_features:
        raise codec.CodecError("bits-back coding of conditional flows is not supported")
    if any(isinstance(m, CNF) for m in flow.modules()):
        raise codec.CodecError(
            "bits-back coding of continuous flows (CNF, FFJORD) is not supported: their inverse "
            "is an ODE solve, which the decoder cannot reproduce to the bit"
        )
    base = flow.base
    if not (
        isinstance(base, StandardNormal)
        or (isinstance(base, DiagGaussian) and not base.context_features)
    ):
        raise codec.CodecError(
            f"bits-back coding needs a Gaussian base (normal or unconditional diagonal), got "
            f"{type(base).__name__}"
        )


# -- the coder's pieces ----------------------------------------------------------------------------


class _Models:
    """constriction models, cached per window size."""

    def __init__(self, z_bits: int, coarse_bits: int, z_range: int):
        codec = _codec()
        _, self.m = codec._constriction()
        self._gauss: dict[int, object] = {}
        self.raw16 = self.m.Uniform(1 << 16)
        self.fine = self.m.Uniform(1 << (z_bits - coarse_bits))
        self.fine_bits = z_bits - coarse_bits
        self.buckets = z_range << coarse_bits  # cells on [0, z_range), as many below 0
        self.coarse_counts = _normal_table(coarse_bits, z_range)
        self.coarse = self.m.Categorical(self.coarse_counts / float(1 << PRECISION), perfect=False)

    def gauss(self, w: int):
        if w not in self._gauss:
            self._gauss[w] = self.m.QuantizedGaussian(-w, w)
        return self._gauss[w]


def _normal_table(coarse_bits: int, z_range: int) -> np.ndarray:
    """Integer counts (sum ``2**24``, each >= 1) of ``N(0, 1)`` over the cells
    ``[k, k + 1) * 2^-coarse_bits`` for ``k`` in ``[-B, B)``, ``B = z_range * 2^coarse_bits``,
    and one escape for the mass outside ``[-z_range, z_range)``."""
    b = z_range << coarse_bits
    edges = np.arange(-b, b + 1, dtype=np.float64) / (1 << coarse_bits)
    cdf = np.array([0.5 * math.erfc(-e / math.sqrt(2.0)) for e in edges])
    p = np.concatenate([np.diff(cdf), [max(0.0, 1.0 - (cdf[-1] - cdf[0]))]])
    p = np.clip(p, 0.0, None)
    p /= p.sum()
    total, bins = 1 << PRECISION, len(p)
    counts = np.floor(p * (total - bins)).astype(np.int64) + 1
    counts[counts.argmax()] += total - counts.sum()
    return counts


def _window(need: float) -> int:
    """Half-width of a symbol window: the smallest power of two >= ``need``, in [2^6, 2^16].

    Every symbol of a window gets at least ``2^-24`` of probability (constriction's
    guarantee), so a window of ``2w + 1`` symbols puts about ``2w * 2^-24`` of mass on its far
    tail: the windows are kept just wide enough (8 standard deviations)."""
    w = 64
    while w < need and w < 1 << 16:
        w <<= 1
    return w


@dataclass
class _Grid:
    """Coding parameters shared by the densities."""

    sigma: float
    y_step: float
    z_step: float
    models: _Models


class _OutOfWindow(ValueError):
    """A value the coder cannot re-encode: a corrupt file when decoding; when drawing
    dequantization noise, the encoder falls back to uniform noise for that example."""


class _Unfit(ValueError):
    """Encoding: the local Gaussian cannot code this example (see :func:`_unfit`)."""


def _unfit() -> Exception:
    """The encoder's error when a layer's inverse misses its input by more than the coder's
    window: with :data:`FLAG_ESCAPE` the example is coded uniformly instead."""
    return _Unfit(
        "a layer's inverse misses its input by more than the coder's window (an inexact or "
        "ill-conditioned inverse); this flow cannot be bits-back coded at this sigma"
    )


class _LocalDensity:
    """The density ``N(f(v); 0, I) |det df/dv|`` of a flow on the grid of cells
    ``[n, n + 1) * step`` (index vectors ``n``), coded by local bits-back: :meth:`push` encodes
    ``n`` (net ``-log2 p(v) - D log2 step`` bits), :meth:`pop` decodes one.

    ``fn(v) -> (z, J)`` and ``inv(z) -> v`` act on one flat float64 example. ``clip`` keeps
    decoded indices in ``[lo, hi]`` (the dequantization noise stays in its bin)."""

    def __init__(self, fn, inv, grid: _Grid, clip: tuple[int, int] | None = None):
        self.fn, self.inv, self.g, self.clip = fn, inv, grid, clip

    # the Gaussian N(z, sigma^2 A A^T), entry by entry -----------------------------------------
    def _conditional(self, i: int, z: np.ndarray, a: np.ndarray, eps: np.ndarray):
        g = self.g
        mean = z[i] + g.sigma * math.fsum((a[i, :i] * eps[:i]).tolist())
        std = g.sigma * a[i, i]
        mb = mean / g.z_step
        c = math.floor(mb + 0.5)
        sb = std / g.z_step
        w = _window(8.0 * sb)
        return mean, std, c, mb - c, min(max(sb, 0.05), w / 8.0), w

    last_log_density = 0.0  # log p at the cell last coded (nats; a diagnostic, not coded)

    def _local(self, n: np.ndarray):
        v = (n.astype(np.float64) + 0.5) * self.g.y_step
        z, jac = self.fn(torch.from_numpy(v))
        # A lower triangular with A A^T = J J^T: J^T = Q R gives J J^T = R^T R
        r = torch.linalg.qr(jac.T, mode="r")[1]
        a = r.T * torch.sign(torch.diagonal(r))[None, :]
        z, a = z.numpy(), a.numpy()
        self.last_log_density = float(
            -0.5 * (z @ z + len(z) * math.log(2 * math.pi)) + np.log(np.diag(a)).sum()
        )
        return z, a

    def _y_params(self, zbar_idx: np.ndarray):
        g = self.g
        mean = self.inv(torch.from_numpy(zbar_idx.astype(np.float64) * g.z_step)).numpy()
        mb = mean / g.y_step - 0.5
        c = np.floor(mb + 0.5)
        sb = g.sigma / g.y_step
        # y - f^-1(zbar) ~ sigma J^-1 A eps, J^-1 A orthogonal: up to sigma |eps|, and an entry
        # of eps can reach 8 (a draw from a window's tail); so 8 sqrt(D) + 8 deviations
        w = _window((8.0 * math.sqrt(len(zbar_idx)) + 8.0) * sb)
        ws = np.full(len(c), w, np.int64)
        if self.clip is not None:  # windows inside [lo, hi], centred on the mean's cell
            lo, hi = self.clip
            c = np.clip(c, lo + 1, hi - 1)
            ws = np.minimum(ws, np.minimum(c - lo, hi - c)).astype(np.int64)
        return c.astype(np.int64), mb - c, sb, ws

    def _push_y(self, coder, off, mu, sd, ws) -> None:
        gauss = self.g.models.gauss
        if (ws == ws[0]).all():
            coder.encode_reverse(off.astype(np.int32), gauss(int(ws[0])), mu, np.full(len(mu), sd))
            return
        for i in reversed(range(len(off))):  # the same order as one call over the array
            coder.encode_reverse(
                np.array([off[i]], np.int32), gauss(int(ws[i])), mu[i : i + 1], np.array([sd])
            )

    def _pop_y(self, coder, mu, sd, ws) -> np.ndarray:
        gauss = self.g.models.gauss
        if (ws == ws[0]).all():
            return np.asarray(coder.decode(gauss(int(ws[0])), mu, np.full(len(mu), sd)), np.int64)
        return np.array(
            [int(coder.decode(gauss(int(w)), mu[i : i + 1], np.array([sd]))[0])
             for i, w in enumerate(ws)],
            np.int64,
        )  # fmt: skip

    # base N(0, I) on the z grid: coarse cells + escape, then the position in the cell ---------
    def _push_prior(self, coder, m: np.ndarray) -> None:
        mods = self.g.models
        if np.abs(m).max() >= 2**31:
            raise _codec().CodecError("a latent value is too large for the coder's grid")
        cell = m >> mods.fine_bits
        fine = (m - (cell << mods.fine_bits)).astype(np.int32)
        sym = cell + mods.buckets
        esc = (sym < 0) | (sym >= 2 * mods.buckets)
        self.last_base_escapes = int(esc.sum())  # (counted by the caller if the push is kept)
        if esc.any():
            coder.encode_reverse(_codec()._escape_words(m[esc]), mods.raw16)
        coder.encode_reverse(np.where(esc, 2 * mods.buckets, sym).astype(np.int32), mods.coarse)
        # the positions inside the cells go on top: nearly uniform bits (a cell is far narrower
        # than the latent's spread), which are what the next example pops its noise from first
        coder.encode_reverse(fine, mods.fine)

    def _pop_prior(self, coder, d: int) -> np.ndarray:
        mods = self.g.models
        fine = np.asarray(coder.decode(mods.fine, d), np.int64)
        sym = np.asarray(coder.decode(mods.coarse, d), np.int64)
        esc = sym == 2 * mods.buckets
        m = ((sym - mods.buckets) << mods.fine_bits) + fine
        if esc.any():
            m[esc] = _codec()._unescape(np.asarray(coder.decode(mods.raw16, 2 * int(esc.sum()))))
        return m

    # the two directions ------------------------------------------------------------------------
    def push(self, coder, n: np.ndarray) -> None:
        """Encode the cell indices ``n`` (int64, flat)."""
        models = self.g.models
        z, a = self._local(n)
        d = len(n)
        m, eps = np.zeros(d, np.int64), np.zeros(d)
        for i in range(d):  # bits back: decode zbar ~ N(z, sigma^2 A A^T)
            mean, std, c, mu, sd, w = self._conditional(i, z, a, eps)
            s = coder.decode(models.gauss(w), np.array([mu]), np.array([sd]))
            m[i] = c + int(s[0])
            eps[i] = (m[i] * self.g.z_step - mean) / std
        c, mu, sd, w = self._y_params(m)
        off = n - c
        if (np.abs(off) > w).any():
            raise _unfit()
        self._push_y(coder, off, mu, sd, w)
        self._push_prior(coder, m)

    def pop(self, coder, d: int) -> np.ndarray:
        """Decode ``d`` cell indices (the inverse of :meth:`push`)."""
        models = self.g.models
        m = self._pop_prior(coder, d)
        c, mu, sd, w = self._y_params(m)
        n = c + self._pop_y(coder, mu, sd, w)
        z, a = self._local(n)
        eps = np.zeros(d)
        params = []
        for i in range(d):  # give the bits back: re-encode zbar ~ N(z, sigma^2 A A^T)
            mean, std, c_i, mu_i, sd_i, w_i = self._conditional(i, z, a, eps)
            params.append((c_i, mu_i, sd_i, w_i))
            eps[i] = (m[i] * self.g.z_step - mean) / std
        for i in reversed(range(d)):
            c_i, mu_i, sd_i, w_i = params[i]
            s = m[i] - c_i
            if abs(s) > w_i:
                raise _OutOfWindow("corrupt .ffz file: a latent left its window")
            coder.encode_reverse(
                np.array([s], np.int32), models.gauss(w_i), np.array([mu_i]), np.array([sd_i])
            )
        return n


def _jacobian_fn(transform, event_shape, post=None, context: Tensor | None = None):
    """``v (D,) -> (z (D,), J (D, D))`` for one example, by reverse-mode autodiff: vectorised
    (``torch.func.jacrev``), or one backward pass per row for a transform with residual blocks,
    whose log-determinant and implicit gradient run autograd inside the forward pass, which
    ``torch.func`` cannot trace."""

    def f(v):
        z, _ = transform(v.reshape(1, *event_shape), context)
        z = z.reshape(-1)
        if post is not None:
            z = post(z)
        return z, z

    if any(isinstance(m, ResidualBlock) for m in transform.modules()):

        def by_rows(v: Tensor):
            with torch.enable_grad():
                v = v.detach().requires_grad_()
                z = f(v)[0]
                eye = torch.eye(z.numel(), dtype=z.dtype, device=z.device)
                rows = [torch.autograd.grad(z, v, e, retain_graph=True)[0] for e in eye]
            return z.detach(), torch.stack(rows)

        return by_rows

    jac = torch.func.jacrev(f, has_aux=True)

    def fn(v: Tensor):
        j, z = jac(v)
        return z.detach(), j.detach()

    return fn


def _base_maps(flow: Flow):
    """``(post, pre)``: the diagonal Gaussian base's standardisation of the flat latent and its
    inverse, or ``(None, None)`` for a standard normal base."""
    base = flow.base
    if not isinstance(base, DiagGaussian):
        return None, None
    loc, inv_scale = base.loc.detach().reshape(-1), torch.exp(-base.log_scale.detach()).reshape(-1)
    return (lambda z: (z - loc) * inv_scale), (lambda z: z / inv_scale + loc)


def _plans(flow: Flow, flags: int, check: bool):
    """The layer-wise steps of the flow and of a variational dequantizer's flow that ``flags``
    asks for (``None`` where it does not, or where a layer has no declared structure)."""
    from . import bitsback_layers as bl

    post, pre = _base_maps(flow)
    steps = q_steps = None
    if flags & FLAG_LAYERS:
        maps = None if post is None else (lambda z, c: post(z), lambda z, c: pre(z))
        steps = bl.plan(flow.transform, maps, check)
    if flags & FLAG_Q_LAYERS and isinstance(flow.dequantizer, VariationalDequantization):
        q_steps = bl.plan(flow.dequantizer.flow, None, check)
    return steps, q_steps


def _choose_flags(flow64: Flow, scheme: str) -> int:
    """The header flags for ``scheme``: "auto" codes layer-wise every density whose layers all
    declare their structure, "layers" insists on it, "jacobian" never uses it."""
    if scheme == "jacobian":
        return FLAG_ESCAPE
    variational = isinstance(flow64.dequantizer, VariationalDequantization)
    steps, q_steps = _plans(flow64, FLAGS, check=True)
    flags = (FLAG_LAYERS if steps is not None else 0) | (
        FLAG_Q_LAYERS if q_steps is not None else 0
    )
    if scheme == "layers" and (steps is None or (variational and q_steps is None)):
        raise _codec().CodecError(
            "layer-wise bits-back coding needs every layer to declare its Jacobian's structure "
            "(couplings, elementwise, re-indexing, 1x1/linear layers; see "
            "flowforge.bitsback_layers.STRUCTURES); this flow has one that does not: use "
            "scheme='auto' or 'jacobian'"
        )
    return flags | FLAG_ESCAPE


class _Coder:
    """The flow (a float64 copy) and its dequantizer as local bits-back densities, coded
    layer-wise where ``flags`` says so."""

    def __init__(self, flow: Flow, grid: _Grid, y_bits: int, flags: int = 0):
        self.flow = flow
        self.grid = grid
        self.y_bits = y_bits
        self.shape = tuple(flow.event_shape)
        self.d = math.prod(self.shape)
        post, pre = _base_maps(flow)
        out_shape = flow.transform.output_shape
        steps, self.q_steps = _plans(flow, flags, check=False)
        variational = isinstance(flow.dequantizer, VariationalDequantization)
        if (flags & FLAG_LAYERS and steps is None) or (
            flags & FLAG_Q_LAYERS and (not variational or self.q_steps is None)
        ):
            raise _codec().CodecError(
                "this file was coded layer by layer, but this model has layers without a "
                "declared Jacobian structure"
            )

        def inv(zb: Tensor) -> Tensor:
            if pre is not None:
                zb = pre(zb)
            y, _ = flow.transform.inverse(zb.reshape(1, *out_shape))
            return y.reshape(-1)

        if steps is not None:
            from .bitsback_layers import LayerDensity

            self.density = LayerDensity(steps, self.d, grid)
        else:
            self.density = _LocalDensity(_jacobian_fn(flow.transform, self.shape, post), inv, grid)
        self.deq = flow.dequantizer
        self.escape, self.escapes = bool(flags & FLAG_ESCAPE), 0
        self.base_escapes = 0  # latent values outside the base's table, coded raw
        self.levels = flow.dequantizer.levels
        self.uniform = grid.models.m.Uniform(1 << y_bits)
        # per example, with variational dequantization: 1 if it fell back to uniform noise
        self.flag = grid.models.m.Categorical(np.array([1 - 2.0**-12, 2.0**-12]), perfect=False)

    def _q(self, x: np.ndarray) -> _LocalDensity:
        deq = self.deq
        xt = torch.from_numpy(x.astype(np.float64)).reshape(1, *self.shape)
        ctx = deq._features(xt)

        def inv(e: Tensor) -> Tensor:
            u, _ = deq.flow.inverse(e.reshape(1, *self.shape), ctx)
            return u.reshape(-1)

        clip = (0, (1 << self.y_bits) - 1)
        if self.q_steps is not None:
            from .bitsback_layers import LayerDensity

            return LayerDensity(self.q_steps, self.d, self.grid, clip, ctx)
        fn = _jacobian_fn(deq.flow, self.shape, None, ctx)
        return _LocalDensity(fn, inv, self.grid, clip=clip)

    def push_example(self, coder, x: np.ndarray):
        """Encode one example (flat int64); returns the coder (a saved copy if the variational
        draw had to be undone), whether the example fell back to uniform noise, and its ideal
        net code length in bits, ``-log2 p(y) + log2 q(u | x)`` at the cell coded."""
        fallback = False
        if isinstance(self.deq, VariationalDequantization):
            saved = coder.clone()
            try:
                q = self._q(x)
                nu = q.pop(coder, self.d)
                self._q_last = q.last_log_density
            except _OutOfWindow:  # q too sharp for its grid here: uniform noise instead
                coder, fallback = saved, True
                nu = np.asarray(coder.decode(self.uniform, self.d), np.int64)
            coder.encode_reverse(np.array([int(fallback)], np.int32), self.flag)
            log_q = 0.0 if fallback else self._q_last
        else:
            nu = np.asarray(coder.decode(self.uniform, self.d), np.int64)
            log_q = 0.0
        n = (x << self.y_bits) + nu
        if not self.escape:
            self.density.push(coder, n)
            self.base_escapes += self.density.last_base_escapes
            return coder, fallback, (log_q - self.density.last_log_density) / math.log(2)
        saved, escaped = coder.clone(), False
        try:
            self.density.push(coder, n)
            log_p = self.density.last_log_density
            self.base_escapes += self.density.last_base_escapes
        except _Unfit:  # undo its pops and pushes; the cells, uniformly
            coder, escaped = saved, True
            coder.encode_reverse(nu.astype(np.int32), self.uniform)
            self._push_raw(coder, x)
            log_p = -len(x) * math.log(self.levels * 2.0**self.y_bits)
        coder.encode_reverse(np.array([int(escaped)], np.int32), self.flag)
        self.escapes += escaped
        return coder, fallback, (log_q - log_p) / math.log(2)

    # an escaped example's values: base-2^16 digits, each under a uniform model
    def _digits(self) -> list[int]:
        sizes, rest = [], self.levels - 1
        while True:
            sizes.append(min(rest, 0xFFFF) + 1)
            rest >>= 16
            if not rest:
                return sizes

    def _push_raw(self, coder, x: np.ndarray) -> None:
        for k, size in enumerate(self._digits()):
            coder.encode_reverse(
                ((x >> (16 * k)) & 0xFFFF).astype(np.int32), self.grid.models.m.Uniform(size)
            )

    def _pop_raw(self, coder, d: int) -> np.ndarray:
        x = np.zeros(d, np.int64)
        for k, size in reversed(list(enumerate(self._digits()))):
            x |= np.asarray(coder.decode(self.grid.models.m.Uniform(size), d), np.int64) << (16 * k)
        return x

    def pop_example(self, coder, levels: int) -> np.ndarray:
        if self.escape and int(coder.decode(self.flag, 1)[0]) == 1:
            x = self._pop_raw(coder, self.d)
            nu = np.asarray(coder.decode(self.uniform, self.d), np.int64)
        else:
            n = self.density.pop(coder, self.d)
            x, nu = n >> self.y_bits, n & ((1 << self.y_bits) - 1)
        if x.min() < 0 or x.max() >= levels:
            raise _codec().CodecError("corrupt .ffz file: decoded values off the data's grid")
        if isinstance(self.deq, VariationalDequantization):
            if int(coder.decode(self.flag, 1)[0]) == 0:
                self._q(x).push(coder, nu)
                return x
        coder.encode_reverse(nu.astype(np.int32), self.uniform)
        return x


def _as_integers(flow: Flow, x) -> np.ndarray:
    """``x`` as int64 ``(N, *event_shape)``, checked against the dequantizer's levels."""

    class _View:  # what codec._as_integers reads
        event_shape = flow.event_shape
        levels = flow.dequantizer.levels

    return _codec()._as_integers(_View, x)


def _copy64(flow: Flow) -> Flow:
    f = copy.deepcopy(flow).to("cpu", torch.float64).eval()  # coding runs on the CPU
    for p in f.parameters():
        p.requires_grad_(False)
    # the exact step-by-step inverse of autoregressive layers: Jacobi sweeps stop at a
    # tolerance, and "auto" picks by timing, which another process may pick differently
    set_inverse(f, "sequential")
    # the plain conditioner path: a grouped one permutes the output layer's rows, and the
    # matmul may round them differently on another layout (files must decode across versions)
    # (and the affine layers' tanh clamp, not its faster sigmoid form)
    for m in f.modules():
        if isinstance(m, Coupling):
            m.grouped_params = False
        elif isinstance(m, MADE):
            m.grouped = False
        elif isinstance(m, Affine):
            m.sigmoid_clamp = False
        elif isinstance(m, RationalQuadratic):
            m.compiled = False  # the eager spline (a compiled one rounds differently)
            m.coder_arithmetic = True  # in the order files were always written with
    return f


def _initial_words(seed: int, n: int) -> np.ndarray:
    w = np.random.Generator(np.random.PCG64(seed)).integers(0, 1 << 32, n, dtype=np.uint64)
    w = w.astype(np.uint32)
    if n:
        w[-1] |= np.uint32(0x80000000)  # a full head word, so the stack reloads as written
    return w


def default_z_bits(levels: int) -> int:
    """The latent grid's default: 14 bits up to 17 levels (chosen on the digits), one more per
    doubling of the levels beyond (18 for 8-bit data). A flow maps the data's range to a latent
    of unit scale, so its derivatives shrink as the levels grow, and with them the widths
    ``sigma * |f'|`` of the Gaussians bits back are taken from; on a grid coarser than about a
    tenth of those widths the coder pays for the discretisation (an untrained Glow on 3x8x8
    8-bit images: +4.5% over ``ideal_bits`` with 14 bits, +0.9% with 18). :func:`encode` takes
    at most ``coarse_bits + 20`` (26 with its defaults, reached at 69,633 levels)."""
    return 14 + max(0, math.ceil(math.log2(levels / 17)))


def _grid(sigma_bits, y_bits, z_bits, coarse_bits, z_range) -> _Grid:
    return _Grid(
        2.0**-sigma_bits, 2.0**-y_bits, 2.0**-z_bits, _Models(z_bits, coarse_bits, z_range)
    )


# -- public API ------------------------------------------------------------------------------------


def encode_stats(
    flow: Flow,
    x,
    threads: int = 1,
    sigma_bits: int = 10,
    y_bits: int = 12,
    z_bits: int | None = None,
    coarse_bits: int = 6,
    z_range: int = 32,
    seed: int = 0,
    init_words: int | None = None,
    verify: bool = True,
    scheme: str = "auto",
    progress=None,
) -> tuple[bytes, dict]:
    """:func:`encode`, also returning the sizes: ``{"initial_bits", "header_bits",
    "payload_bits", "uniform_fallbacks", "escapes", "base_escapes", "ideal_bits", "scheme"}``
    (``escapes``: the examples coded uniformly because the local Gaussian missed;
    ``base_escapes``: the latent values outside the base's table ``[-z_range, z_range)``, each
    coded by an escape symbol and its raw 32 bits whatever the model's density there, which
    ``ideal_bits`` does not count; ``scheme``: "layers",
    "jacobian", or "layers+jacobian" where the flow and a variational dequantizer's flow differ;
    see :mod:`flowforge.bitsback_layers`); ``ideal_bits`` is the sum over the
    examples of ``-log2 p(y) + log2 q(u | x)`` at the cells the coder drew (the dequantization
    bound's one-sample estimate that this file realises), so without base escapes
    ``payload_bits - initial_bits - ideal_bits`` is what the coder itself costs.
    ``progress``: called with 1 after each example (a progress bar's ``update``)."""
    codec = _codec()
    stack, _ = codec._constriction()
    check_flow(flow)
    for name, v, lo, hi in (
        ("threads", threads, 1, codec.MAX_THREADS),
        ("seed", seed, 0, 2**32 - 1),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise codec.CodecError(f"expected {name} to be an integer in [{lo}, {hi}], got {v!r}")
    if z_bits is None:  # (at most 20 bits finer than the coarse grid, as the coder allows)
        z_bits = min(default_z_bits(flow.dequantizer.levels), coarse_bits + 20, 30)
    if not _params_ok(sigma_bits, y_bits, z_bits, coarse_bits, z_range):
        raise codec.CodecError(
            "bad bits-back parameters: need 1 <= sigma_bits < y_bits <= 22, sigma_bits < "
            "z_bits <= 30, 1 <= z_bits - coarse_bits <= 20, 1 <= z_range <= 256, "
            f"z_range * 2**coarse_bits <= 65536; got sigma_bits={sigma_bits}, y_bits={y_bits}, "
            f"z_bits={z_bits}, coarse_bits={coarse_bits}, z_range={z_range}"
        )
    if scheme not in SCHEMES:
        raise codec.CodecError(f"expected scheme to be one of {SCHEMES}, got {scheme!r}")
    xs = _as_integers(flow, x)
    d = math.prod(flow.event_shape)
    flow64 = _copy64(flow)
    with torch.no_grad():
        flags = _choose_flags(flow64, scheme)
    if init_words is None:  # ample for the first example: its pops, 32 bits per entry and more
        # (layer by layer, every step pops before it pushes: twice that)
        init_words = min(MAX_INIT_WORDS, 64 + d * (y_bits + z_bits + 40) // (8 if flags else 16))
    if isinstance(init_words, bool) or not isinstance(init_words, int):
        raise codec.CodecError(f"expected init_words to be an integer, got {init_words!r}")
    if not 2 <= init_words <= MAX_INIT_WORDS:
        raise codec.CodecError(f"expected init_words in [2, {MAX_INIT_WORDS}], got {init_words}")
    init = _initial_words(seed, init_words)
    coder = stack.AnsCoder(init.copy())
    c = _Coder(flow64, _grid(sigma_bits, y_bits, z_bits, coarse_bits, z_range), y_bits, flags)
    with torch.no_grad(), codec._threads(threads):
        fallbacks, ideal = 0, 0.0
        for row in xs.reshape(len(xs), -1):
            coder, fell, bits = c.push_example(coder, row)
            fallbacks += fell
            ideal += bits
            if progress is not None:
                progress(1)
    words = np.asarray(coder.get_compressed(), dtype=np.uint32)
    kept = 0
    limit = min(len(init), len(words))
    while kept < limit and words[kept] == init[kept]:
        kept += 1
    # the decoder prepends init[:kept]; keep at least the reloaded head words with the payload
    kept = max(0, min(kept, len(words) - 2))
    payload = words[kept:].astype("<u4").tobytes()
    header = Header(
        levels=flow.dequantizer.levels,
        count=len(xs),
        shape=tuple(flow.event_shape),
        threads=threads,
        sigma_bits=sigma_bits,
        y_bits=y_bits,
        z_bits=z_bits,
        coarse_bits=coarse_bits,
        z_range=z_range,
        dequantization=_DEQ[type(flow.dequantizer)],
        model_hash=codec.model_hash(flow),
        environment=codec.environment(flow),
        data_crc=codec._data_crc(xs),
        seed=seed,
        init_words=init_words,
        kept_words=kept,
        payload_crc=zlib.crc32(payload),
        words=len(words) - kept,
        flags=flags,
    )
    data = header.pack() + payload
    if verify:
        back = decode(flow, data)
        if not np.array_equal(back.numpy(), xs):
            raise codec.CodecError(
                "the encoded data did not decode to the input (non-deterministic model "
                "computations?); nothing was written"
            )
    stats = {
        "initial_bits": header.initial_bits,
        "header_bits": 8 * header.size,
        "payload_bits": 8 * len(payload),
        "uniform_fallbacks": fallbacks,
        "escapes": c.escapes,
        "base_escapes": c.base_escapes,
        "ideal_bits": ideal,
        "scheme": _scheme_name(flags, flow.dequantizer),
    }
    return data, stats


def _scheme_name(flags: int, deq) -> str:
    names = ["layers" if flags & FLAG_LAYERS else "jacobian"]
    if isinstance(deq, VariationalDequantization):
        names.append("layers" if flags & FLAG_Q_LAYERS else "jacobian")
    return "+".join(dict.fromkeys(names))


def encode(flow: Flow, x, **kwargs) -> bytes:
    """Compress integer data ``x`` of shape ``(N, *flow.event_shape)`` with a continuous flow
    that dequantizes it (``levels=``), by local bits-back coding.

    Args:
        flow: a :class:`~flowforge.Flow` with a uniform or variational dequantizer and a
            Gaussian base.
        x: integers in ``[0, levels - 1]``.
        threads: torch threads while coding (recorded; the decoder uses the same).
        sigma_bits: the local Gaussian's scale ``sigma = 2^-sigma_bits`` (in the data's units).
        y_bits: the dequantization grid ``2^-y_bits``; ``z_bits``: the latent grid
            ``2^-z_bits`` (default: :func:`default_z_bits` of the levels, at most
            ``coarse_bits + 20``); ``coarse_bits``,
            ``z_range``: the base's table (cells of ``2^-coarse_bits`` on
            ``[-z_range, z_range)``, an escape outside).
        seed, init_words: the seeded initial stack.
        verify: decode the result and compare before returning it.
        scheme: ``"auto"`` (default): code layer by layer every density (the flow, a
            variational dequantizer's flow) whose layers all declare their Jacobian's
            structure (:mod:`flowforge.bitsback_layers`), the rest with the whole-flow
            Jacobian; ``"layers"``: refuse a flow without that structure; ``"jacobian"``:
            the whole-flow Jacobian throughout. The header's flags record the choice.

    Returns the ``.ffz`` bytes (format version 2). Raises :class:`~flowforge.codec.CodecError`.
    """
    return encode_stats(flow, x, **kwargs)[0]


def decode(flow: Flow, data: bytes, force: bool = False, progress=None) -> Tensor:
    """Decompress a bits-back ``.ffz`` file made by :func:`encode` with the same ``flow``
    (``progress``: called with 1 after each example)."""
    codec = _codec()
    with codec._explained(flow, data, force):  # (a failure after force=True: likely why)
        return _decode(flow, data, force, progress)


def _decode(flow: Flow, data: bytes, force: bool, progress=None) -> Tensor:
    codec = _codec()
    stack, _ = codec._constriction()
    check_flow(flow)
    h = read_header(data)
    payload = bytes(data)[h.size :]
    if zlib.crc32(payload) != h.payload_crc:
        raise codec.CodecError("corrupt .ffz file: the payload fails its CRC check")
    levels = flow.dequantizer.levels
    if h.levels != levels or h.shape != tuple(flow.event_shape):
        raise codec.CodecError(
            f"this file holds data of shape {h.shape} with {h.levels} levels, but the model "
            f"takes shape {tuple(flow.event_shape)} with {levels} levels"
        )
    codec.check_model(h.model_hash, flow)
    codec.check_environment(h.environment, flow, force, "coder parameters")
    if _DEQ.get(type(flow.dequantizer)) != h.dequantization:
        have = _DEQ_NAMES.get(_DEQ.get(type(flow.dequantizer)), type(flow.dequantizer).__name__)
        raise codec.CodecError(
            f"this file was coded with {_DEQ_NAMES[h.dequantization]} dequantization, but the "
            f"model's is {have}"
        )
    init = _initial_words(h.seed, h.init_words)
    words = np.concatenate([init[: h.kept_words], np.frombuffer(payload, "<u4").astype(np.uint32)])
    # Decoding retraces the encoder's states backwards, and the encoder's stack never went below
    # the seeded words it left untouched (kept_words; a few words of slack for the coder's
    # head). A stack that goes lower is a damaged or crafted file: stopping there bounds the
    # work by the payload, whatever count the header claims.
    floor = h.kept_words - 4
    rows: list[np.ndarray] = []
    try:
        coder = stack.AnsCoder(words)
        flow64 = _copy64(flow)
        grid = _grid(h.sigma_bits, h.y_bits, h.z_bits, h.coarse_bits, h.z_range)
        c = _Coder(flow64, grid, h.y_bits, h.flags)
        with torch.no_grad(), codec._threads(h.threads):
            for _ in range(h.count):
                rows.append(c.pop_example(coder, levels))
                if progress is not None:
                    progress(1)
                if coder.num_words() < floor:
                    raise codec.CodecError(
                        f"corrupt .ffz file: its payload ran out after {len(rows)} of the "
                        f"{h.count} examples its header announces"
                    )
        rest = np.asarray(coder.get_compressed(), np.uint32)
    except codec.CodecError:
        raise
    except _OutOfWindow as e:
        raise codec.CodecError(str(e)) from None
    except Exception as e:  # the coder or the model fed garbage by a damaged payload
        raise codec.CodecError(
            f"corrupt .ffz file: decoding failed ({type(e).__name__}: {e})"
        ) from None
    out = np.stack(rows[::-1]).astype(np.int64).reshape(h.count, *h.shape)
    if not np.array_equal(rest, init) or codec._data_crc(out) != h.data_crc:
        raise codec.CodecError("corrupt .ffz file: the decoded data fail the CRC check")
    return torch.from_numpy(out)
