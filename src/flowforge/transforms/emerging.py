r"""Emerging convolutions: invertible ``k x k`` convolutions from two masked convolutions.

Hoogeboom, van den Berg & Welling, *Emerging Convolutions for Generative Normalizing Flows*
(ICML 2019). A convolution whose kernel is masked so that each output pixel reads only the pixels
before it in raster order (and, at its own pixel, only the channels up to its own) is an
autoregressive linear map: in the order (row, column, channel) its matrix is lower-triangular,
with the kernel's centre diagonal on its diagonal. Composing it with a second convolution masked
in the reverse order (upper-triangular) gives a ``k x k`` convolution with a full receptive field
that "emerges" from the two:

    ``u = K_1 * x``,    ``z = K_2 * u + b``,

``K_1``'s centre diagonal is ``exp(log_s)`` (learned), ``K_2``'s is 1, so

    ``log|det dz/dx| = H * W * sum(log_s)``

in closed form. The inverse solves the two triangular systems (``K_2`` first, in reverse raster
order, then ``K_1`` in raster order); see :class:`EmergingConv2d` for the three solvers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import event_shape as _event
from .._util import per_channel, warn
from ..core import Transform, refresh_tolerances
from .autoregressive import ParallelInverseWarning

__all__ = ["EmergingConv2d", "set_emerging_solver", "SOLVERS", "DENSE_LIMIT"]

SOLVERS = ("auto", "dense", "sequential", "parallel")
DENSE_LIMIT = 1024  # "auto" solves with the dense matrix up to this many entries per image


def _free_mask(c: int, k: int, causal: bool) -> Tensor:
    """The free kernel entries ``(C_out, C_in, k, k)`` of a masked convolution: every tap
    strictly before (``causal``) or after the centre in raster order, and at the centre the
    channel pairs strictly below (or above) the diagonal."""
    p = k // 2
    m = torch.zeros(c, c, k, k, dtype=torch.bool)
    rows = slice(0, p) if causal else slice(p + 1, k)
    cols = slice(0, p) if causal else slice(p + 1, k)
    m[:, :, rows, :] = True
    m[:, :, p, cols] = True
    tri = torch.ones(c, c, dtype=torch.bool)
    m[:, :, p, p] = tri.tril(-1) if causal else tri.triu(1)
    return m


class EmergingConv2d(Transform):
    r"""An invertible ``k x k`` convolution (``k`` odd) built from two masked convolutions.

    ``z = K_2 * (K_1 * x) + b`` with zero padding: ``K_1`` is causal in raster order (each
    output pixel reads the pixels above it and to its left, and at its own pixel the channels
    below its own, with a learned diagonal ``exp(log_s)``), ``K_2`` is the same in reverse order
    with a unit diagonal. ``ladj = H * W * sum(log_s)``. The kernels start at the identity
    (off-centre taps zero), so the layer begins as a per-channel scaling of 1.

    The inverse is exact; ``solver`` chooses how it is computed:

    - ``"sequential"``: substitution pixel by pixel (raster order for ``K_1``, reverse order
      for ``K_2``), batched over the batch; ``2 H W`` small steps, any image size.
    - ``"dense"``: the whole ``(CHW) x (CHW)`` triangular matrix of each convolution, then one
      triangular solve; fast for small images (memory grows as ``(CHW)^2``).
    - ``"parallel"``: Jacobi fixed-point sweeps ``x <- T^{-1} (y - N * x)`` (``T`` the centre
      tap, ``N`` the other taps), each a whole convolution; it is exact after at most ``H W``
      sweeps (``N`` is nilpotent in raster order) and stops earlier once a sweep moves ``x`` by
      less than ``tol`` (relative); ``max_iter`` caps the sweeps, and a run that hits the cap
      warns (:class:`~flowforge.transforms.ParallelInverseWarning`) and falls back to the
      sequential solver. Its round trip is then accurate to ``tol``.
    - ``"auto"`` (default): dense up to :data:`DENSE_LIMIT` entries per image, else sequential.

    Args:
        shape: image shape ``(C, H, W)``.
        kernel_size: odd kernel size ``k`` (3 by default; 1 gives an LU-factored 1x1 conv).
        solver: the inverse's solver, see above (also :meth:`set_solver`).
        tol: the parallel solver's relative tolerance.
        max_iter: the parallel solver's sweep cap (default ``H * W``, where it is exact).

    Example:
        >>> conv = EmergingConv2d((2, 4, 4))
        >>> x = torch.randn(3, 2, 4, 4)
        >>> z, ladj = conv(x)
        >>> torch.allclose(conv.inverse(z)[0], x, atol=1e-5)
        True
    """

    # (a matrix product that autocast would run in bfloat16, next to a log-determinant from
    # the float32 weights: the layer would not be the bijection it counts)
    full_precision = True

    def __init__(
        self,
        shape,
        kernel_size: int = 3,
        solver: str = "auto",
        tol: float = 1e-8,
        max_iter: int | None = None,
    ):
        shape = _event(shape, image=True)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
            raise ValueError(f"expected an odd int kernel_size, got {kernel_size!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"EmergingConv2d needs an odd kernel_size >= 1 (a centre pixel), got {kernel_size}"
            )
        super().__init__(shape)
        c, h, w = self.event_shape
        self.channels, self.kernel_size = c, kernel_size
        self.positions = h * w
        # only the free (unmasked) kernel entries are parameters, zero at first (the identity)
        free1, free2 = _free_mask(c, kernel_size, True), _free_mask(c, kernel_size, False)
        self.register_buffer("idx1", free1.flatten().nonzero().squeeze(1), persistent=False)
        self.register_buffer("idx2", free2.flatten().nonzero().squeeze(1), persistent=False)
        self.weight1 = nn.Parameter(torch.zeros(int(free1.sum())))
        self.weight2 = nn.Parameter(torch.zeros(int(free2.sum())))
        self.log_s = nn.Parameter(torch.zeros(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.set_solver(solver, tol, max_iter)

    def set_solver(self, solver: str, tol: float | None = None, max_iter: int | None = None):
        """Choose the inverse's solver (``"auto"``, ``"dense"``, ``"sequential"`` or
        ``"parallel"``) and the parallel solver's ``tol`` and ``max_iter``. Returns the layer."""
        _check_solver(solver, tol, max_iter)
        tol = getattr(self, "tol", 1e-8) if tol is None else float(tol)
        self.solver, self.tol, self.max_iter = solver, tol, max_iter
        self.numeric_inverse = tol if solver == "parallel" else None
        self.last_sweeps = 0  # sweeps of the latest parallel inverse
        return self

    # -- kernels -------------------------------------------------------------------------------
    def kernels(self) -> tuple[Tensor, Tensor]:
        """The two masked kernels ``K_1, K_2`` of shape ``(C, C, k, k)``, diagonals included."""
        c, k, p = self.channels, self.kernel_size, self.kernel_size // 2
        out = []
        for idx, free, diag in (
            (self.idx1, self.weight1, self.log_s.exp()),
            (self.idx2, self.weight2, torch.ones_like(self.log_s)),
        ):
            w = free.new_zeros(c * c * k * k).index_put((idx,), free).view(c, c, k, k)
            centre = torch.zeros_like(w)
            centre[:, :, p, p] = torch.diag(diag)
            out.append(w + centre)
        return out[0], out[1]

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, padding=self.kernel_size // 2)

    def _ladj(self, x: Tensor) -> Tensor:
        return (self.positions * self.log_s.sum()).expand(x.shape[0])

    def _forward(self, x, context):
        k1, k2 = self.kernels()
        z = self._conv(self._conv(x, k1), k2) + per_channel(self.bias, x)
        return z, self._ladj(x)

    def _inverse(self, z, context):
        k1, k2 = self.kernels()
        y = z - per_channel(self.bias, z)
        solver = self.solver
        if solver == "auto":
            solver = "dense" if math.prod(self.event_shape) <= DENSE_LIMIT else "sequential"
        if solver == "parallel" and y.shape[0]:  # (an empty batch: any solver, nothing to do)
            x = self._parallel(y, k1, k2)
        else:
            solve = self._dense if solver == "dense" else self._sequential
            x = solve(solve(y, k2, upper=True), k1, upper=False)
        return x, -self._ladj(z)

    # -- the three solvers ---------------------------------------------------------------------
    def _dense(self, y: Tensor, w: Tensor, upper: bool) -> Tensor:
        """Solve ``w * x = y`` with the convolution's matrix in (row, column, channel) order,
        where it is triangular."""
        c, h, wd = self.event_shape
        d = c * h * wd
        basis = torch.eye(d, dtype=y.dtype, device=y.device).view(d, h, wd, c).permute(0, 3, 1, 2)
        # row i of the image of basis vector i is column i of the matrix
        mat = self._conv(basis, w).permute(0, 2, 3, 1).reshape(d, d).T
        rhs = y.permute(0, 2, 3, 1).reshape(y.shape[0], d).T
        x = torch.linalg.solve_triangular(mat, rhs, upper=upper)
        return x.T.reshape(y.shape[0], h, wd, c).permute(0, 3, 1, 2)

    def _sequential(self, y: Tensor, w: Tensor, upper: bool) -> Tensor:
        """Solve ``w * x = y`` by substitution, one pixel at a time (raster order for a causal
        kernel, reverse raster order for an anti-causal one)."""
        _, h, wd = self.event_shape
        k, p = self.kernel_size, self.kernel_size // 2
        centre = w[:, :, p, p]
        sign = 1 if upper else -1  # the solved neighbours lie after (upper) or before the pixel
        taps = [
            (a - p, b - p)
            for a in range(k)
            for b in range(k)
            if (a - p, b - p) != (0, 0) and sign * ((a - p) * k + (b - p)) > 0
        ]
        order = [(i, j) for i in range(h) for j in range(wd)]
        if upper:
            order.reverse()
        solved: dict[tuple[int, int], Tensor] = {}
        for i, j in order:
            acc = y[:, :, i, j]
            for da, db in taps:
                n = solved.get((i + da, j + db))
                if n is not None:
                    acc = acc - n @ w[:, :, da + p, db + p].T
            solved[(i, j)] = torch.linalg.solve_triangular(centre, acc.T, upper=upper).T
        rows = [torch.stack([solved[(i, j)] for j in range(wd)], -1) for i in range(h)]
        return torch.stack(rows, -2)

    def _parallel(self, y: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
        """Jacobi sweeps on both systems; the sequential solver if the cap is reached."""
        cap = self.positions if self.max_iter is None else int(self.max_iter)
        sweeps = 0
        x = y
        for w, upper in ((k2, True), (k1, False)):
            out = self._jacobi(x, w, upper, cap)
            if out is None:
                warn(
                    f"EmergingConv2d's parallel inverse did not reach tol={self.tol:g} in "
                    f"{cap} sweeps; used the sequential solver",
                    ParallelInverseWarning,
                )
                self.last_sweeps = 0
                return self._sequential(self._sequential(y, k2, True), k1, False)
            x, n = out
            sweeps += n
        self.last_sweeps = sweeps
        return x

    def _jacobi(self, y: Tensor, w: Tensor, upper: bool, cap: int) -> tuple[Tensor, int] | None:
        p = self.kernel_size // 2
        centre = w[:, :, p, p]
        off = w.clone()
        off[:, :, p, p] = 0.0
        b, c, h, wd = y.shape

        def centre_solve(r: Tensor) -> Tensor:
            flat = r.permute(1, 0, 2, 3).reshape(c, -1)
            x = torch.linalg.solve_triangular(centre, flat, upper=upper)
            return x.reshape(c, b, h, wd).permute(1, 0, 2, 3)

        x = centre_solve(y)
        for sweep in range(1, cap + 1):
            new = centre_solve(y - self._conv(x, off))
            moved = (new - x).abs().max() / (1 + new.abs().max())
            x = new
            if moved <= self.tol:
                return x, sweep
        return None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}, solver={self.solver!r}"


def _check_solver(solver: str, tol: float | None, max_iter: int | None) -> None:
    """A ValueError unless ``solver`` is one of ``SOLVERS``, ``tol`` None or finite and > 0,
    ``max_iter`` None or an integer >= 1 (checked before any layer is touched)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    if tol is not None and not 0 < float(tol) < math.inf:  # inf: one sweep, unsolved
        raise ValueError(f"expected a finite tol > 0, got {tol}")
    if max_iter is not None and (
        isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1
    ):
        raise ValueError(f"expected max_iter to be an integer >= 1 or None, got {max_iter!r}")


def set_emerging_solver(
    model: nn.Module, solver: str, tol: float | None = None, max_iter: int | None = None
) -> int:
    """Set the solver of every :class:`EmergingConv2d` in ``model`` (a layer, a chain or a
    :class:`~flowforge.Flow`) and update the tolerances the chains above them declare. Returns
    the number of layers switched.

    Example:
        >>> import flowforge as ff
        >>> glow = ff.models.Glow(shape=(1, 4, 4), scales=1, steps=2, permutation="emerging")
        >>> set_emerging_solver(glow, "parallel", tol=1e-6)
        2
    """
    _check_solver(solver, tol, max_iter)
    n = 0
    for m in model.modules():
        if isinstance(m, EmergingConv2d):
            m.set_solver(solver, tol, max_iter)
            n += 1
    refresh_tolerances(model)
    return n
