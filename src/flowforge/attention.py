r"""A causal-transformer conditioner for autoregressive flows (TarFlow, Zhai et al., 2025).

:class:`CausalTransformer` plays the part of :class:`~flowforge.nets.MADE` in an
:class:`~flowforge.transforms.Autoregressive` layer: from ``x`` of shape ``(B, *event_shape)``
it returns the parameters ``(B, *event_shape, P)`` of an elementwise transformer, where the
parameters of every entry depend only on the entries of *earlier tokens* (and on a context).

Tokens
------
The event is cut into ``T`` tokens of ``d`` entries each:

- vectors ``(D,)``: ``T = D / patch`` groups of ``patch`` consecutive features (``patch=1``:
  one token per feature, a fully autoregressive layer);
- images ``(C, H, W)``: ``T = (H / patch) (W / patch)`` patches of ``d = C patch^2`` entries in
  raster order (``patch=1``: one token per pixel, with all its channels).

``order="reversed"`` runs the tokens from last to first (TarFlow flips the order between
blocks). The entries of one token are transformed together, each from the tokens before it.

Network
-------
The input sequence is ``[start, embed(token_1), ..., embed(token_{T-1})]`` plus learned
positions (and a linear embedding of the context, added to every position): the output at
position ``t`` has seen tokens ``< t`` only, through pre-norm blocks of causal multi-head
self-attention and a GELU MLP, with dropout. The output layer is zero-initialised, so a layer
built on it starts as the identity.

Sequential inversion (:meth:`CausalTransformer.solve`) runs one position at a time and caches
every block's keys and values, so the whole inverse costs about one forward pass of arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._util import derivatives_traced, first_order_only

__all__ = ["CausalTransformer", "token_layout"]


def token_layout(event_shape: Sequence[int], patch: int) -> Tensor:
    """The flat indices of each token's entries, ``(T, d)``, in the natural token order.

    ``ValueError`` when ``patch`` does not divide the features (vectors) or the height and
    width (images).
    """
    shape = tuple(int(s) for s in event_shape)
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"expected patch to be an integer >= 1, got {patch!r}")
    if len(shape) == 1:
        (d,) = shape
        if d % patch:
            raise ValueError(
                f"tokens of patch={patch} features do not divide the {d} features; choose a "
                f"patch that divides {d}"
            )
        return torch.arange(d).reshape(d // patch, patch)
    if len(shape) == 3:
        c, h, w = shape
        if h % patch or w % patch:
            raise ValueError(
                f"patches of {patch}x{patch} do not divide the image of height {h} and width "
                f"{w}; choose a patch that divides both"
            )
        idx = torch.arange(c * h * w).reshape(c, h // patch, patch, w // patch, patch)
        # (C, H/p, p, W/p, p) -> (H/p, W/p, C, p, p): raster order of patches, channel-major inside
        return idx.permute(1, 3, 0, 2, 4).reshape(-1, c * patch * patch)
    raise ValueError(f"expected an event shape (D,) or (C, H, W), got {shape}")


_FUSED_FIRST_ORDER = (
    "a transformer flow's attention has first derivatives only by default (PyTorch's fused CPU "
    "kernel); for second derivatives (a Hessian, a gradient penalty) set "
    "flowforge.attention.CausalTransformer.higher_order = True (the math kernel, 1.3-2.5x "
    "attention's cost)"
)


class _Block(nn.Module):
    """Pre-norm block: causal multi-head self-attention, then a GELU MLP, both residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, cache: list | None = None, math: bool = False) -> Tensor:
        b, n, w = h.shape
        q, k, v = self.qkv(self.norm1(h)).split(w, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        if cache is None:  # all positions at once, position t attends to positions <= t
            p = self.dropout if self.training else 0.0
            a = _attention(q, k, v, math, dropout_p=p, is_causal=True)
        else:  # the next position attends to the cached ones and itself
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
            a = _attention(q, k, v, math)
        h = h + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, w)))  # (B, n, W)
        return h + self.drop(self.mlp(self.norm2(h)))


def _attention(q: Tensor, k: Tensor, v: Tensor, math: bool, **options) -> Tensor:
    """Scaled dot-product attention: by PyTorch's math kernel where ``math`` (or forward-mode
    AD, a torch.func transform) asks for derivatives the fused kernel lacks, else by the
    fused kernel, whose output refuses a second derivative in one line."""
    if math or derivatives_traced():  # (forward mode: the fused kernel has none)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, **options)
    return first_order_only(F.scaled_dot_product_attention(q, k, v, **options), _FUSED_FIRST_ORDER)


class CausalTransformer(nn.Module):
    r"""Causal self-attention over tokens (features, pixels or patches) as an autoregressive
    conditioner (see the module docstring).

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)`` (an int for vectors).
        params_per_dim: ``P``, the elementwise transformer's parameters per entry.
        width: the model width (a multiple of ``heads``).
        depth: the number of transformer blocks.
        heads: attention heads.
        patch: token size (see the module docstring); must divide the features or the
            height and width.
        context_features: size of a context vector (a one-hot class, say), embedded and added
            to every position (0: none).
        dropout: dropout on the embeddings, the attention weights and the residual branches.
        order: ``"natural"`` or ``"reversed"`` token order.
        mlp_ratio: hidden width of each block's MLP, in multiples of ``width``.
        zero_init: zero the output layer (the layer starts as the identity).

    Derivatives: first derivatives everywhere (a backward pass that keeps its graph,
    ``create_graph=True``, is refused in one line unless :attr:`higher_order`, since only a
    second derivative needs it); second and forward-mode derivatives under
    ``torch.func`` (``jvp``, ``jacfwd``, ``hessian``) and forward-mode AD, which take PyTorch's
    math attention kernel by themselves, and with plain autograd's ``create_graph=True`` where
    :attr:`higher_order` is True (per network, or for the class): the fused CPU kernel used
    otherwise is 1.3-2.5x faster and has no second derivative (one line says so).

    Example:
        >>> net = CausalTransformer((1, 4, 4), params_per_dim=2, width=16, depth=1, heads=2)
        >>> net(torch.randn(3, 1, 4, 4)).shape
        torch.Size([3, 1, 4, 4, 2])
    """

    higher_order = False  # True: the math kernel, which plain autograd differentiates twice

    def __init__(
        self,
        event_shape: int | Sequence[int],
        params_per_dim: int,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        patch: int = 1,
        context_features: int = 0,
        dropout: float = 0.0,
        order: str = "natural",
        mlp_ratio: int = 4,
        zero_init: bool = True,
    ):
        super().__init__()
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        index = token_layout(shape, patch)
        sizes = (("width", width), ("depth", depth), ("heads", heads), ("mlp_ratio", mlp_ratio))
        for name, v, low in ((name, v, 1) for name, v in sizes):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"expected {name} to be an integer >= {low}, got {v!r}")
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads={heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"expected 0 <= dropout < 1, got {dropout!r}")
        if order not in ("natural", "reversed"):
            raise ValueError(f"unknown order {order!r}; expected 'natural' or 'reversed'")
        if order == "reversed":
            index = index.flip(0)
        self.event_shape, self.params_per_dim = shape, int(params_per_dim)
        self.context_features, self.order, self.patch = int(context_features), order, patch
        self.tokens, self.token_size = index.shape
        # derived from the arguments, so not saved: (T, d) flat indices, and their inverse
        self.register_buffer("token_index", index, persistent=False)
        self.register_buffer("_untoken", torch.argsort(index.flatten()), persistent=False)
        # a single token is conditioned on the start (and the context) only: no embedding
        self.embed = nn.Linear(self.token_size, width) if self.tokens > 1 else None
        self.start = nn.Parameter(torch.randn(width) * 0.02)
        self.pos = nn.Parameter(torch.randn(self.tokens, width) * 0.02)
        if self.context_features:
            self.ctx = nn.Linear(self.context_features, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, self.token_size * self.params_per_dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def steps(self) -> int:
        """Sequential steps of an inverse: the number of tokens."""
        return self.tokens

    def _context(self, context: Tensor | None) -> Tensor | float:
        return self.ctx(context)[:, None] if self.context_features else 0.0

    def _head(self, h: Tensor) -> Tensor:
        """``(B, n, W)`` -> ``(B, n, d, P)``."""
        return self.out(self.norm(h)).reshape(*h.shape[:2], self.token_size, -1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``(B, *event_shape)`` (and ``(B, C)``) to parameters ``(B, *event_shape, P)``."""
        b = x.shape[0]
        tokens = x.reshape(b, -1)[:, self.token_index]  # (B, T, d)
        start = self.start.expand(b, 1, -1)
        if self.embed is not None:  # (B, T, W): shifted right
            start = torch.cat([start, self.embed(tokens[:, :-1])], 1)
        h = start
        h = self.drop(h + self.pos + self._context(context))
        for block in self.blocks:
            h = block(h, math=self.higher_order)
        out = self._head(h).reshape(b, -1, self.params_per_dim)[:, self._untoken]  # (B, N, P)
        return out.reshape(b, *self.event_shape, self.params_per_dim)

    def solve(
        self,
        step: Callable[[Tensor, Tensor], Tensor],
        batch: int,
        context: Tensor | None = None,
        like: Tensor | None = None,
    ) -> None:
        r"""Run the network one token at a time, for sequential inversion.

        For ``t = 1..T`` it computes the parameters ``(B, d, P)`` of token ``t`` and calls
        ``step(index, params)`` with the token's flat indices ``(d,)``; ``step`` returns the
        token's values ``(B, d)``, which feed position ``t + 1``. Keys and values are cached,
        so each position is computed once.
        """
        caches: list[list] = [[] for _ in self.blocks]
        c = self._context(context)
        inp = self.start.expand(batch, 1, -1)
        if like is not None:
            inp = inp.to(like.dtype)
        for t in range(self.tokens):
            h = inp + self.pos[t] + c  # (B, 1, W)
            for block, cache in zip(self.blocks, caches):
                h = block(h, cache, math=self.higher_order)
            value = step(self.token_index[t], self._head(h)[:, 0])  # (B, d)
            if t + 1 < self.tokens:
                inp = self.embed(value.unsqueeze(1))

    def extra_repr(self) -> str:
        return (
            f"event_shape={self.event_shape}, tokens={self.tokens}, token_size={self.token_size}, "
            f"order={self.order!r}"
        )
