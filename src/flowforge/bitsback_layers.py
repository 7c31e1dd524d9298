r"""Layer-by-layer local bits-back coding (Ho, Lohn & Abbeel 2019's compositional variant):
the flow's chain of layers coded one layer at a time, each with the cheapest exact local scheme
its Jacobian's structure allows, instead of one dense ``D x D`` Jacobian for the whole flow
(:mod:`flowforge.bitsback`; used when every layer has a structure, see :func:`plan`).

A flow ``f = f_L o ... o f_1`` maps ``y`` (on the grid ``2^-y_bits``) through intermediate
values ``h_1, ..., h_L = z``, all on the latent grid ``2^-z_bits``. Step ``l`` codes its input
``h_{l-1}`` given nothing but what the coder already holds: it *decodes* ``hbar_l`` from the
stream under ``N(f_l(h_{l-1}), sigma^2 J_l J_l^T)`` (bits back) and *encodes* ``h_{l-1}``'s cell
under ``N(f_l^-1(hbar_l), sigma^2 I)``; the net cost, ``-log2|det J_l| - D log2 step_in + D
log2 step_out``, telescopes over the chain to ``-log2 p(y) - D log2 y_step`` once the base codes
``z``. The step kinds, by the structure of ``J_l``:

* :class:`Diag`, *elementwise given a passed-through part*: a coupling (affine, additive,
  spline... transformer) keeps ``x1`` and maps ``x2`` entrywise given ``x1``; ActNorm, Logit,
  Scaling, Standardize are elementwise with nothing passed. ``x1`` is kept exactly (its cell,
  on its grid); the transformed entries' local Gaussian is diagonal, ``sigma^2 h'(x2)^2``,
  and ``h'`` comes from one forward pass on a batch of two (a difference quotient, see
  :meth:`Diag.forward_diag`): no backward pass.
* :class:`Perm`, pure re-indexing (permutations, squeeze, factor-out bookkeeping): grid- and
  volume-preserving, nothing is coded.
* :class:`Linear`, a constant linear map along dimension 1 (LU/QR/plain linear, i.e. Glow's
  1x1 convolution for images): the Jacobian is one ``C x C`` block ``W`` per position, known
  without autodiff; its Gaussian ``N(z, sigma^2 W W^T)`` is decoded channel by channel through
  ``A`` (lower triangular, ``A A^T = W W^T``, from a QR of ``W^T`` computed once).

A :class:`~flowforge.transforms.FactorOut` is its split prior (a coupling step given the kept
channels, which the decoder thus knows first), the re-indexing to ``[out, kept]`` and the inner
steps on the kept part; :class:`~flowforge.Inverse` reverses and inverts its transform's steps.
Anything else (autoregressive layers, residual flows, CNFs, emerging convolutions...) has no
declared structure: :func:`plan` returns ``None`` and the flow is coded with the whole-flow
black-box Jacobian (coding such layers one at a time would cost ``D`` backward passes *per
layer*, more than one dense Jacobian of the whole flow). The table of structures is
:data:`STRUCTURES`.

Entries keep the grid they are on until a step transforms them: data entries sit on the
``y`` grid (cell centres ``(n + 1/2) 2^-y_bits``), transformed ones on the ``z`` grid
(``n 2^-z_bits``); a coupling's passed-through half may thus stay on the ``y`` grid for a
while. Before the base codes the latent, any entry still on the ``y`` grid goes through an
identity step onto the ``z`` grid.

Determinism as in :mod:`flowforge.bitsback`: one example at a time, float64, the decoder
recomputes every parameter from the same values; the sums of the linear steps' conditional
means are accumulated in a fixed order with elementwise numpy operations (each rounded, so
independent of vectorisation).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import bitsback as bb
from .core import Compose, Identity, Inverse, Transform
from .transforms.coupling import Coupling
from .transforms.image import FactorOut, Squeeze
from .transforms.integer import IntegerCoupling
from .transforms.linear import LULinear, Permutation, PlainLinear, QRLinear, Scaling
from .transforms.normalization import ActNorm, BatchNorm
from .transforms.preprocessing import DataStandardize, Logit, Standardize

__all__ = ["plan", "STRUCTURES", "Diag", "Perm", "Linear", "LayerDensity"]

DIFF_STEP = 2.0**-20  # the difference quotient's step (see Diag.forward_diag)


def _coupling_keep(layer: Coupling) -> Tensor:
    if layer.indexed:
        keep = torch.zeros(layer.event_shape, dtype=torch.bool)
        keep[layer.idx_a] = True
        return keep
    return layer.mask.detach().cpu().clone()


# How each layer declares the structure of its Jacobian: "elementwise" (given the entries of
# the returned mask, which pass through unchanged; none for a context-free elementwise layer),
# "reindex" (a permutation of the entries) or "linear" (the C x C matrix applied along
# dimension 1 at every position). Checked in this order, with isinstance; a layer that matches
# none (or an IntegerCoupling, whose rounding is not a bijection of the reals) has no structure.
STRUCTURES: list[tuple[type, str, object]] = [
    (Coupling, "elementwise", _coupling_keep),
    (ActNorm, "elementwise", None),
    (Logit, "elementwise", None),
    (Scaling, "elementwise", None),
    (Standardize, "elementwise", None),
    (DataStandardize, "elementwise", None),
    (BatchNorm, "elementwise", None),  # in eval mode (the coder's copy): running statistics
    (Squeeze, "reindex", None),
    (Permutation, "reindex", None),  # and Reverse
    (LULinear, "linear", lambda layer: layer.weight()),
    (QRLinear, "linear", lambda layer: layer._q() @ layer._r()),
    (PlainLinear, "linear", lambda layer: layer.weight),
]
_NO_STRUCTURE = (IntegerCoupling,)


# -- steps -----------------------------------------------------------------------------------------


class _Step:
    """One step on the window ``[lo, lo + n)`` of the flat example."""

    lo: int
    n: int


class Perm(_Step):
    """Re-indexing: output entry ``j`` is input entry ``perm[j]`` (within the window)."""

    def __init__(self, lo: int, perm: np.ndarray):
        self.lo, self.n, self.perm = lo, len(perm), perm

    def inverted(self) -> Perm:
        return Perm(self.lo, np.argsort(self.perm))

    def apply(self, a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[self.lo : self.lo + self.n] = a[self.lo : self.lo + self.n][self.perm]
        return a

    def undo(self, a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[self.lo + self.perm] = a[self.lo : self.lo + self.n].copy()
        return a


class _Mapped(_Step):
    """A step that calls a map: ``fwd(x (1, *in_shape), ctx) -> z (1, *out_shape)``."""

    def __init__(self, lo, in_shape, out_shape, fwd, inv):
        self.lo, self.n = lo, math.prod(in_shape)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.fwd, self.inv = fwd, inv

    def forward(self, v: np.ndarray, ctx) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(v)).reshape(1, *self.in_shape)
        return self.fwd(x, ctx).reshape(-1).numpy()

    def inverse(self, v: np.ndarray, ctx) -> np.ndarray:
        z = torch.from_numpy(np.ascontiguousarray(v)).reshape(1, *self.out_shape)
        return self.inv(z, ctx).reshape(-1).numpy()


class Diag(_Mapped):
    """Elementwise given the entries ``keep`` (flat bool over the window), which pass through
    unchanged to the same positions."""

    def __init__(self, lo, shape, fwd, inv, keep: np.ndarray):
        super().__init__(lo, shape, shape, fwd, inv)
        self.keep = keep
        self.moved = ~keep
        self.tangent = torch.from_numpy(self.moved.astype(np.float64)).reshape(1, *shape)

    def inverted(self) -> Diag:
        return Diag(self.lo, self.in_shape, self.inv, self.fwd, self.keep)

    def forward_diag(self, v: np.ndarray, ctx) -> tuple[np.ndarray, np.ndarray]:
        """``(z, dz/dx)`` of the moved entries, from one forward pass on a batch of two:
        ``x`` and ``x`` with every moved entry shifted by ``DIFF_STEP`` (the kept entries do
        not move and the moved ones do not see each other, so the difference quotient is the
        Jacobian's diagonal, to ``O(DIFF_STEP)``; it only sets the widths of the Gaussians the
        bits back come from, so both directions computing the same number is what matters).
        A forward-mode JVP would be exact but costs 8 to 30 forward passes here."""
        x = torch.from_numpy(np.ascontiguousarray(v)).reshape(1, *self.in_shape)
        xb = torch.cat([x, x + DIFF_STEP * self.tangent])
        if ctx is not None:
            ctx = ctx.expand(2, *ctx.shape[1:])
        zb = self.fwd(xb, ctx).reshape(2, -1)
        z = zb[0].numpy()
        return z, (zb[1].numpy() - z)[self.moved] / DIFF_STEP


class Linear(_Mapped):
    """``z = W x + b`` along dimension 1 of ``shape`` (``C`` channels at ``P`` positions)."""

    def __init__(self, lo, shape, fwd, inv, weight: Tensor):
        super().__init__(lo, shape, shape, fwd, inv)
        self.weight = weight.detach().to(torch.float64)
        self.c = shape[0]
        self.p = math.prod(shape[1:])
        r = torch.linalg.qr(self.weight.T, mode="r")[1]  # W^T = Q R: W W^T = R^T R
        self.a = (r.T * torch.sign(torch.diagonal(r))[None, :]).numpy()

    def inverted(self) -> Linear:
        return Linear(self.lo, self.in_shape, self.inv, self.fwd, torch.linalg.inv(self.weight))


def _layer(layer: Transform, inverse: bool = False):
    def fwd(x, ctx):
        return (layer.inverse if inverse else layer)(x, ctx)[0]

    def inv(z, ctx):
        return (layer if inverse else layer.inverse)(z, ctx)[0]

    return fwd, inv


def _reindexing(layer: Transform, lo: int) -> Perm:
    n = math.prod(layer.event_shape)
    probe = torch.arange(n, dtype=torch.float64).reshape(1, *layer.event_shape)
    out = layer(probe)[0].reshape(-1)
    perm = out.round().long().numpy()
    if not np.array_equal(np.sort(perm), np.arange(n)) or not torch.equal(
        out, torch.from_numpy(perm.astype(np.float64))
    ):
        raise ValueError(f"{type(layer).__name__} declares a re-indexing but is not one")
    return Perm(lo, perm)


def _steps(t: Transform, lo: int) -> list | None:
    if isinstance(t, Compose):
        out = []
        for layer in t.layers:
            s = _steps(layer, lo)
            if s is None:
                return None
            out += s
        return out
    if isinstance(t, Inverse):
        s = _steps(t.transform, lo)
        return None if s is None else [step.inverted() for step in reversed(s)]
    if type(t) is Identity:
        return []
    if isinstance(t, FactorOut):
        out = []
        if t.prior is not None:
            out += _steps(t.prior, lo)
        c, h, w = t.event_shape
        k = t.kept * h * w  # channel-major: [kept, out] -> the output's [out, kept]
        n = c * h * w
        out.append(Perm(lo, np.concatenate([np.arange(k, n), np.arange(k)])))
        inner = _steps(t.inner, lo + t._n_out)
        return None if inner is None else out + inner
    if isinstance(t, _NO_STRUCTURE):
        return None
    for cls, kind, info in STRUCTURES:
        if isinstance(t, cls):
            fwd, inv = _layer(t)
            if kind == "reindex":
                return [_reindexing(t, lo)]
            if kind == "linear":
                return [Linear(lo, t.event_shape, fwd, inv, info(t))]
            keep = np.zeros(math.prod(t.event_shape), bool)
            if info is not None:
                keep = info(t).reshape(-1).numpy().astype(bool)
            return [Diag(lo, t.event_shape, fwd, inv, keep)]
    return None


def plan(transform: Transform, post=None, check: bool = True) -> list | None:
    """The layer-wise steps of ``transform`` (float64, on the CPU), and of ``post``, a
    ``(fwd, inv)`` pair of elementwise maps on the flat output (a diagonal Gaussian base's
    standardisation); ``None`` if a layer has no declared structure.

    With ``check``, the composed steps must reproduce ``transform`` on a fixed input (to 1e-9,
    relative): a wrong declaration gives ``None`` rather than an undecodable file."""
    steps = _steps(transform, 0)
    if steps is None:
        return None
    d = math.prod(transform.event_shape)
    if post is not None:
        steps.append(Diag(0, (d,), post[0], post[1], np.zeros(d, bool)))
    # entries still on the y grid at the end go onto the z grid through an identity step
    on_y = np.ones(d, bool)
    for s in steps:
        on_y = _grids_after(s, on_y)
    if on_y.any():
        ident = lambda x, ctx: x  # noqa: E731
        steps.append(Diag(0, (d,), ident, ident, ~on_y))
    if check and not _reproduces(transform, steps, post):
        return None
    return steps


def _grids_after(s: _Step, on_y: np.ndarray) -> np.ndarray:
    if isinstance(s, Perm):
        return s.apply(on_y)
    on_y = on_y.copy()
    w = on_y[s.lo : s.lo + s.n]
    if isinstance(s, Diag):
        w[s.moved] = False
    else:
        w[:] = False
    return on_y


def _reproduces(transform: Transform, steps: list, post) -> bool:
    shape = transform.event_shape
    d = math.prod(shape)
    g = torch.Generator().manual_seed(0)
    x = 0.1 + 0.8 * torch.rand(1, *shape, generator=g, dtype=torch.float64)
    x = x * getattr(_first_logit(transform), "levels", 1.0)
    ctx = None
    if transform.context_shape:
        ctx = torch.rand(1, *transform.context_shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = transform(x, ctx)[0].reshape(-1)
        if post is not None:
            want = post[0](want, None)
        v = x.reshape(-1).numpy().copy()
        for s in steps:
            if isinstance(s, Perm):
                v = s.apply(v)
            else:
                v[s.lo : s.lo + s.n] = s.forward(v[s.lo : s.lo + s.n], ctx)
    got = torch.from_numpy(v)
    return len(v) == d and bool(torch.allclose(got, want, rtol=1e-9, atol=1e-9))


def _first_logit(t):
    while isinstance(t, Compose):
        t = t.layers[0]
    return t if isinstance(t, Logit) else None


# -- coding ----------------------------------------------------------------------------------------


def _windows(need: np.ndarray) -> np.ndarray:
    """:func:`flowforge.bitsback._window` entrywise (exact: ``frexp``)."""
    mant, exp = np.frexp(np.asarray(need, np.float64))
    p = np.where(mant == 0.5, exp - 1, exp)
    return np.clip(np.exp2(np.clip(p, 6, 16)), 64, 1 << 16).astype(np.int64)


def _gpush(coder, models, sym, mu, sd, w, check: bool) -> None:
    """Encode the offsets ``sym`` under ``N(mu, sd)`` on their windows, one call per window
    size, the smallest windows first (:func:`_gpop` takes the largest first)."""
    if check and (np.abs(sym) > w).any():
        raise bb._OutOfWindow("corrupt .ffz file: a latent left its window")
    for wv in np.unique(w):
        sel = w == wv
        coder.encode_reverse(
            sym[sel].astype(np.int32), models.gauss(int(wv)), mu[sel], np.ascontiguousarray(sd[sel])
        )


def _gpop(coder, models, mu, sd, w) -> np.ndarray:
    out = np.zeros(len(mu), np.int64)
    for wv in np.unique(w)[::-1]:
        sel = w == wv
        out[sel] = np.asarray(
            coder.decode(models.gauss(int(wv)), mu[sel], np.ascontiguousarray(sd[sel])), np.int64
        )
    return out


class LayerDensity(bb._LocalDensity):
    """:class:`flowforge.bitsback._LocalDensity`'s interface (``push``, ``pop``,
    ``last_log_density``), coded step by step along ``steps`` (from :func:`plan`). ``ctx``:
    the context every step's map reads (the dequantizer's ``x``), ``clip``: the range of the
    ``y``-grid indices (variational noise stays in its bin)."""

    def __init__(self, steps: list, d: int, grid, clip=None, ctx: Tensor | None = None):
        super().__init__(None, None, grid, clip)
        self.steps, self.d, self.ctx = steps, d, ctx
        self.on_y_in = []  # the grid of every step's input entries, known to both sides
        on_y = np.ones(d, bool)
        for s in steps:
            self.on_y_in.append(on_y)
            on_y = _grids_after(s, on_y)

    # values of the cells on their grids
    def _values(self, idx: np.ndarray, on_y: np.ndarray) -> np.ndarray:
        g = self.g
        return np.where(on_y, (idx.astype(np.float64) + 0.5) * g.y_step, idx * g.z_step)

    def _cells(self, mean: np.ndarray, on_y: np.ndarray, spread: float):
        """Windows for encoding cells (on their grids) under ``N(mean, sigma^2)``, ``spread``
        standard deviations wide."""
        g = self.g
        step = np.where(on_y, g.y_step, g.z_step)
        mb = mean / step - np.where(on_y, 0.5, 0.0)
        c = np.floor(mb + 0.5)
        sb = g.sigma / step
        w = _windows(spread * sb)
        if self.clip is not None and on_y.any():
            lo, hi = self.clip
            cc = np.clip(c, lo + 1, hi - 1)
            c = np.where(on_y, cc, c)
            w = np.where(on_y, np.minimum(w, np.minimum(cc - lo, hi - cc)), w).astype(np.int64)
        return c.astype(np.int64), mb - c, sb, w

    def _latent(self, mean: np.ndarray, std: np.ndarray):
        """The z-grid Gaussians ``N(mean, std^2)`` that bits back are taken from."""
        zs = self.g.z_step
        mb = mean / zs
        c = np.floor(mb + 0.5)
        sb = std / zs
        w = _windows(8.0 * sb)
        return c.astype(np.int64), mb - c, np.minimum(np.maximum(sb, 0.05), w / 8.0), w

    # -- one diagonal step ---------------------------------------------------------------------
    def _diag_push(self, coder, s: Diag, idx, on_y) -> float:
        m = self.g.models
        lo, hi = s.lo, s.lo + s.n
        x_idx, x_on_y = idx[lo:hi], on_y[lo:hi]
        v = self._values(x_idx, x_on_y)
        z, dg = s.forward_diag(v, self.ctx)
        mv = s.moved
        c, mu, sd, w = self._latent(z[mv], self.g.sigma * np.abs(dg))
        zbar = c + _gpop(coder, m, mu, sd, w)  # bits back
        zv = v.copy()
        zv[mv] = zbar * self.g.z_step
        xhat = s.inverse(zv, self.ctx)[mv]
        c, mu, sd, w = self._cells(xhat, x_on_y[mv], 16.0)
        off = x_idx[mv] - c
        if (np.abs(off) > w).any():
            raise bb._unfit()
        _gpush(coder, m, off, mu, sd, w, False)
        idx[lo:hi][mv] = zbar
        on_y[lo:hi][mv] = False
        return float(np.log(np.abs(dg)).sum())

    def _diag_pop(self, coder, s: Diag, idx, on_y_in) -> None:
        m = self.g.models
        lo, hi = s.lo, s.lo + s.n
        mv = s.moved
        x_on_y = on_y_in[lo:hi]
        zbar = idx[lo:hi][mv].copy()
        zv = self._values(idx[lo:hi], x_on_y)  # the kept entries: on their input grids
        zv[mv] = zbar * self.g.z_step
        xhat = s.inverse(zv, self.ctx)[mv]
        c, mu, sd, w = self._cells(xhat, x_on_y[mv], 16.0)
        x_idx = idx[lo:hi].copy()
        x_idx[mv] = c + _gpop(coder, m, mu, sd, w)
        z, dg = s.forward_diag(self._values(x_idx, x_on_y), self.ctx)
        c, mu, sd, w = self._latent(z[mv], self.g.sigma * np.abs(dg))
        _gpush(coder, m, zbar - c, mu, sd, w, True)  # give the bits back
        idx[lo:hi] = x_idx

    # -- one linear step (C x C blocks at P positions) -----------------------------------------
    def _conditionals(self, s: Linear, z: np.ndarray, zbar: np.ndarray | None, coder=None):
        """Channel by channel: the Gaussian of ``zbar[i]`` given ``zbar[:i]`` (decoded from
        ``coder`` when ``zbar`` is None)."""
        g, a = self.g, s.a
        z = z.reshape(s.c, s.p)
        out = np.zeros((s.c, s.p), np.int64) if zbar is None else zbar.reshape(s.c, s.p)
        eps = np.zeros((s.c, s.p))
        params = []
        for i in range(s.c):
            acc = np.zeros(s.p)
            for j in range(i):  # a fixed order of rounded elementwise operations
                acc = acc + a[i, j] * eps[j]
            mean = z[i] + g.sigma * acc
            std = g.sigma * a[i, i]
            c, mu, sd, w = self._latent(mean, np.full(s.p, std))
            if zbar is None:
                out[i] = c + _gpop(coder, g.models, mu, sd, w)
            params.append((c, mu, sd, w))
            eps[i] = (out[i] * g.z_step - mean) / std
        return out.reshape(-1), params

    def _linear_push(self, coder, s: Linear, idx, on_y) -> float:
        m = self.g.models
        lo, hi = s.lo, s.lo + s.n
        x_idx, x_on_y = idx[lo:hi], on_y[lo:hi]
        z = s.forward(self._values(x_idx, x_on_y), self.ctx)
        zbar, _ = self._conditionals(s, z, None, coder)
        xhat = s.inverse(zbar * self.g.z_step, self.ctx)
        c, mu, sd, w = self._cells(xhat, x_on_y, 8.0 * math.sqrt(s.c) + 8.0)
        off = x_idx - c
        if (np.abs(off) > w).any():
            raise bb._unfit()
        _gpush(coder, m, off, mu, sd, w, False)
        idx[lo:hi] = zbar
        on_y[lo:hi] = False
        return float(s.p * np.log(np.abs(np.diag(s.a))).sum())

    def _linear_pop(self, coder, s: Linear, idx, on_y_in) -> None:
        m = self.g.models
        lo, hi = s.lo, s.lo + s.n
        x_on_y = on_y_in[lo:hi]
        zbar = idx[lo:hi].copy()
        xhat = s.inverse(zbar * self.g.z_step, self.ctx)
        c, mu, sd, w = self._cells(xhat, x_on_y, 8.0 * math.sqrt(s.c) + 8.0)
        x_idx = c + _gpop(coder, m, mu, sd, w)
        z = s.forward(self._values(x_idx, x_on_y), self.ctx)
        _, params = self._conditionals(s, z, zbar)
        zb = zbar.reshape(s.c, s.p)
        for i in reversed(range(s.c)):  # give the bits back, last channel first
            c, mu, sd, w = params[i]
            _gpush(coder, m, zb[i] - c, mu, sd, w, True)
        idx[lo:hi] = x_idx

    # -- the chain -----------------------------------------------------------------------------
    def push(self, coder, n: np.ndarray) -> None:
        """Encode the ``y``-grid cell indices ``n`` (int64, flat)."""
        idx, on_y = n.astype(np.int64).copy(), np.ones(self.d, bool)
        log_det = 0.0
        for s in self.steps:
            if isinstance(s, Perm):
                idx, on_y = s.apply(idx), s.apply(on_y)
            elif isinstance(s, Diag):
                log_det += self._diag_push(coder, s, idx, on_y)
            else:
                log_det += self._linear_push(coder, s, idx, on_y)
        z = idx * self.g.z_step
        self.last_log_density = float(-0.5 * (z @ z + len(z) * math.log(2 * math.pi)) + log_det)
        self._push_prior(coder, idx)

    def pop(self, coder, d: int) -> np.ndarray:
        """Decode ``d`` ``y``-grid cell indices (the inverse of :meth:`push`)."""
        idx = self._pop_prior(coder, d)
        for k in reversed(range(len(self.steps))):
            s = self.steps[k]
            if isinstance(s, Perm):
                idx = s.undo(idx)
            elif isinstance(s, Diag):
                self._diag_pop(coder, s, idx, self.on_y_in[k])
            else:
                self._linear_pop(coder, s, idx, self.on_y_in[k])
        return idx
