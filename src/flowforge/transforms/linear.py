r"""Linear bijections along dimension 1 (features of a vector, channels of an image).

Each acts on dimension 1 and is applied identically at every other event position, so the
same class is a dense linear flow for vectors and Glow's invertible 1x1 convolution for images:
``LULinear((C, H, W))`` *is* the LU-parametrised 1x1 convolution, with
``ladj = H * W * sum(log|diag U|)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._util import checked_int, householder, per_channel
from .._util import event_shape as _event
from ..core import Transform

__all__ = ["Permutation", "Reverse", "Scaling", "LULinear", "QRLinear", "PlainLinear"]


class _OnDim1(Transform):
    """Shared plumbing: the size of dim 1 and the number of positions it is repeated at."""

    def __init__(self, shape, context_features: int = 0):
        super().__init__(_event(shape), context_features)
        self.features = self.event_shape[0]
        self.positions = math.prod(self.event_shape[1:])

    def _matmul(self, x: Tensor, w: Tensor) -> Tensor:
        """``x @ w.T`` along dimension 1."""
        if x.dim() == 2:
            return x @ w.T
        return torch.einsum("ij,bj...->bi...", w, x)


class Permutation(_OnDim1):
    """A fixed permutation of dimension 1; random (seeded by ``torch``'s RNG) if not given.

    The permutation is a saved buffer, so a reloaded model keeps the same order.
    """

    def __init__(self, shape, perm: Tensor | None = None):
        super().__init__(shape)
        if perm is not None and torch.as_tensor(perm).is_floating_point():
            raise ValueError(f"expected a permutation of integers, got {perm!r}")
        perm = torch.randperm(self.features) if perm is None else torch.as_tensor(perm).long()
        if sorted(perm.tolist()) != list(range(self.features)):
            raise ValueError(
                f"expected a permutation of range({self.features}), got {perm.tolist()}"
            )
        self.register_buffer("perm", perm)
        self.register_buffer("inv", torch.argsort(perm), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if sorted(self.perm.tolist()) != list(range(self.features)):  # a crafted file
            raise ValueError(
                f"tensor '{prefix}perm' is not a permutation of range({self.features})"
            )
        self.inv = torch.argsort(self.perm)

    def _forward(self, x, context):
        return x.index_select(1, self.perm), x.new_zeros(x.shape[0])

    def _inverse(self, z, context):
        return z.index_select(1, self.inv), z.new_zeros(z.shape[0])


class Reverse(Permutation):
    """Reverses dimension 1 (the tutorial's ``flip``)."""

    def __init__(self, shape):
        n = _event(shape)[0]
        super().__init__(shape, torch.arange(n - 1, -1, -1))

    def _forward(self, x, context):
        return x.flip(1), x.new_zeros(x.shape[0])

    def _inverse(self, z, context):
        return z.flip(1), z.new_zeros(z.shape[0])


class Scaling(Transform):
    """NICE's diagonal scaling layer: ``z = x * exp(s)``, one learnable ``s`` per entry."""

    def __init__(self, shape):
        super().__init__(_event(shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def _forward(self, x, context):
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def _inverse(self, z, context):
        return z * (-self.log_scale).exp(), -self.log_scale.sum().expand(z.shape[0])


class LULinear(_OnDim1):
    r"""``z = W x + b`` with ``W = P L (U + diag(sign * exp(log_s)))`` (Glow's LU form).

    ``P`` is a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly upper-triangular.
    The log-determinant is ``sum(log_s)`` per position, O(C); the inverse is two triangular
    solves. Initialised from a random orthogonal matrix (``init="orthogonal"``; the Q of a QR
    decomposition of a Gaussian matrix, as Glow's code draws it, which for an even size is a
    reflection, determinant -1) or the identity.

    Example:
        >>> conv1x1 = LULinear((4, 8, 8))   # Glow's invertible 1x1 convolution
        >>> z, ladj = conv1x1(torch.randn(2, 4, 8, 8))
    """

    # (a matrix product that autocast would run in bfloat16, next to a log-determinant from
    # the float32 weights: the layer would not be the bijection it counts)
    full_precision = True

    def __init__(self, shape, init: str = "orthogonal"):
        super().__init__(shape)
        c = self.features
        if init == "orthogonal":
            w = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))[0]
        elif init == "identity":
            w = torch.eye(c, dtype=torch.float64)
        else:
            raise ValueError(f"unknown init {init!r}; expected 'orthogonal' or 'identity'")
        p, l, u = torch.linalg.lu(w)
        d = torch.diagonal(u)
        dtype = torch.get_default_dtype()  # built in float64 first, then the default dtype
        self.register_buffer("p", p.to(dtype))
        self.register_buffer("sign", torch.sign(d).to(dtype))
        # only the free entries are parameters: strictly below / above the diagonal
        self.register_buffer("tril_idx", torch.tril_indices(c, c, -1), persistent=False)
        self.register_buffer("triu_idx", torch.triu_indices(c, c, 1), persistent=False)
        self.lower = nn.Parameter(l[tuple(self.tril_idx)].to(dtype))
        self.upper = nn.Parameter(u[tuple(self.triu_idx)].to(dtype))
        self.log_s = nn.Parameter(d.abs().log().to(dtype))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("eye", torch.eye(c), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        p = self.p
        ones = (p == 1).sum(0), (p == 1).sum(1)
        if not (((p == 0) | (p == 1)).all() and all(bool((n == 1).all()) for n in ones)):
            raise ValueError(f"tensor '{prefix}p' is not a permutation matrix")  # (a crafted file)
        if not (self.sign.abs() == 1).all():
            raise ValueError(f"tensor '{prefix}sign' holds entries other than +1 and -1")

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.eye.index_put(tuple(self.tril_idx), self.lower)
        upper = torch.diag(self.sign * self.log_s.exp()).index_put(tuple(self.triu_idx), self.upper)
        return lower, upper

    def weight(self) -> Tensor:
        lower, upper = self._factors()
        return self.p @ lower @ upper

    def _forward(self, x, context):
        z = self._matmul(x, self.weight()) + per_channel(self.bias, x)
        return z, (self.positions * self.log_s.sum()).expand(x.shape[0])

    def _inverse(self, z, context):
        lower, upper = self._factors()
        y = (z - per_channel(self.bias, z)).movedim(1, -1).reshape(-1, self.features)
        y = y @ self.p  # P^T y, row-wise
        y = torch.linalg.solve_triangular(lower, y.T, upper=False, unitriangular=True)
        y = torch.linalg.solve_triangular(upper, y, upper=True).T
        shape = (z.shape[0], *self.event_shape[1:], self.features)
        x = y.reshape(shape).movedim(-1, 1)
        return x, (-self.positions * self.log_s.sum()).expand(z.shape[0])


class QRLinear(_OnDim1):
    r"""``z = Q R x + b``: ``Q`` orthogonal (a product of Householder reflections), ``R``
    upper-triangular with positive diagonal ``exp(log_s)``; ``ladj = sum(log_s)`` per position.

    Args:
        shape: event shape; dimension 1 is transformed.
        reflections: number of Householder reflections (default: ``C``, none when ``C = 1``,
            where every reflection is the same sign flip).
    """

    # (a matrix product that autocast would run in bfloat16, next to a log-determinant from
    # the float32 weights: the layer would not be the bijection it counts)
    full_precision = True

    def __init__(self, shape, reflections: int | None = None):
        super().__init__(shape)
        c = self.features
        k = c if c > 1 else 0  # (one feature: no reflection)
        k = k if reflections is None else checked_int("reflections", reflections, 0, c)
        self.vectors = nn.Parameter(torch.randn(k, c))
        self.register_buffer("triu_idx", torch.triu_indices(c, c, 1), persistent=False)
        self.upper = nn.Parameter(torch.zeros(c * (c - 1) // 2))
        self.log_s = nn.Parameter(torch.zeros(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def _q(self) -> Tensor:
        return householder(self.vectors)

    def _r(self) -> Tensor:
        return torch.diag(self.log_s.exp()).index_put(tuple(self.triu_idx), self.upper)

    def _forward(self, x, context):
        z = self._matmul(x, self._q() @ self._r()) + per_channel(self.bias, x)
        return z, (self.positions * self.log_s.sum()).expand(x.shape[0])

    def _inverse(self, z, context):
        y = (z - per_channel(self.bias, z)).movedim(1, -1).reshape(-1, self.features)
        y = torch.linalg.solve_triangular(self._r(), (y @ self._q()).T, upper=True).T
        x = y.reshape(z.shape[0], *self.event_shape[1:], self.features).movedim(-1, 1)
        return x, (-self.positions * self.log_s.sum()).expand(z.shape[0])


class PlainLinear(_OnDim1):
    r"""``z = W x + b`` with a full matrix ``W``; ``ladj = slogdet(W)`` per position, O(C^3).

    Glow's plain (non-LU) 1x1 convolution. Initialised from a random orthogonal matrix.
    """

    # (a matrix product that autocast would run in bfloat16, next to a log-determinant from
    # the float32 weights: the layer would not be the bijection it counts)
    full_precision = True

    def __init__(self, shape):
        super().__init__(shape)
        c = self.features
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(c, c))[0].contiguous())
        self.bias = nn.Parameter(torch.zeros(c))

    def _forward(self, x, context):
        ladj = self.positions * torch.linalg.slogdet(self.weight)[1]
        return self._matmul(x, self.weight) + per_channel(self.bias, x), ladj.expand(x.shape[0])

    def _inverse(self, z, context):
        w_inv = torch.linalg.inv(self.weight)
        ladj = -self.positions * torch.linalg.slogdet(self.weight)[1]
        return self._matmul(z - per_channel(self.bias, z), w_inv), ladj.expand(z.shape[0])
