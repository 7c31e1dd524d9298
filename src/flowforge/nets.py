"""Conditioners: plain networks that output the parameters of an elementwise transformer.

Every conditioner takes ``(x, context=None)``; a context is concatenated to the input (vectors)
or broadcast as extra channels (images). The last layer is zero-initialised by default, so a
coupling layer built on it starts as the identity.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._util import checked_int, unknown

__all__ = [
    "grouped_linear",
    "MLP",
    "ResidualMLP",
    "ConvResNet",
    "MADE",
    "check_adjacency",
    "generations",
    "LipSwish",
    "ACTIVATIONS",
    "activation_class",
]


class LipSwish(nn.Module):
    """``x sigmoid(x) / 1.1``, 1-Lipschitz and smooth (Chen et al., 2019)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x) / 1.1


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "lipswish": LipSwish,
}


# Activations that may overwrite their input. Applied to a linear layer's fresh output, which
# nothing else reads, they give the same numbers and, bit for bit, the same gradients (the
# backward of each reads the sign of its output, which it keeps) without allocating a second
# tensor per hidden layer (docs/speed.md, "In-place activations"). Not ELU: its in-place
# backward computes the derivative from the output, which rounds differently. Only where no
# hook of any kind watches the layers (a hook may read or keep the linear output, and a full
# backward hook wraps it in a view that must not be modified): otherwise the modules run as
# they are, out of place.
IN_PLACE_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU)


def apply_to_fresh(act: nn.Module, t: Tensor) -> Tensor:
    """``act(t)`` for a ``t`` that nothing else reads: in place for ReLU and LeakyReLU (with
    a positive slope), ``act(t)`` otherwise. Skips the module's hooks: callers check
    :func:`_hooked` first."""
    kind = type(act)
    if kind is nn.ReLU:
        return torch.relu_(t)
    if kind is nn.LeakyReLU and act.negative_slope > 0:
        return nn.functional.leaky_relu_(t, act.negative_slope)
    return act(t)


def activation_class(name: str, allowed: Sequence[str] | None = None) -> type[nn.Module]:
    """The activation called ``name``; ``allowed`` narrows the choice (e.g. to the 1-Lipschitz
    or the smooth ones)."""
    choices = ACTIVATIONS if allowed is None else {k: ACTIVATIONS[k] for k in allowed}
    if name not in choices:
        raise unknown("activation", name, choices)
    return choices[name]


# Grouped outputs pay from this many parameters per dimension (the spline's 3K - 1). For the
# affine layer's 2, reading each parameter with a stride of 2 costs less than permuting the
# output layer's rows and their gradient: the plain layout trains RealNVP and MAF 2 to 15%
# faster at D = 64 (docs/speed.md, "Since the first run"). Compiled, a MADE's grouped output
# trains MAF 12% faster than the plain one (the fused kernels read it contiguously), so MADE
# groups from 2 parameters under torch.compile.
GROUPED_FROM = 3
GROUPED_FROM_COMPILED = 2


_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _hooked(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` has hooks of any kind (forward, forward-pre, backward,
    backward-pre), or any module-wide hook is registered: a call that skips the modules' own
    ``__call__`` (grouped outputs, in-place activations) is then not made."""
    if any(getattr(nn.modules.module, name, None) for name in _GLOBAL_HOOKS):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in modules
    )


def _hidden_layers(net: nn.Sequential, x: Tensor, stop: int) -> Tensor:
    """``net[:stop](x)``, each activation that follows an ``nn.Linear`` applied in place to
    its fresh output (:func:`apply_to_fresh`); the caller has checked that no hook watches."""
    prev = None
    for layer in itertools.islice(net, stop):
        if type(prev) is nn.Linear and type(layer) in IN_PLACE_ACTIVATIONS:
            x = apply_to_fresh(layer, x)
        else:
            x = layer(x)
        prev = layer
    return x


def _grouped_view(out: Tensor, groups: int) -> Tensor:
    return out.view(*out.shape[:-1], -1, groups)


def grouped_linear(h: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    r"""``linear(h, weight, bias)`` for ``D * P`` outputs grouped by dimension (output
    ``i * P + k``: parameter ``k`` of dimension ``i``), returned as ``(B, D, P)``, a view of
    parameter-major memory ``(B, P, D)``.

    The same numbers as ``linear(...).view(B, D, P)``, laid out so that every parameter
    ``params[..., k]`` is contiguous: the elementwise transformer reads its parameters one at
    a time (``movedim(-1, 0)``, ``unbind(-1)``), which on the dimension-major layout costs a
    strided transposition forward and backward. Here the weight's rows are permuted instead (a
    copy of ``D * P`` contiguous rows), a fraction of that cost.
    """
    d = weight.shape[0] // groups
    w = weight.view(d, groups, -1).transpose(0, 1).reshape(groups * d, -1)
    b = None if bias is None else bias.view(d, groups).t().reshape(-1)
    return nn.functional.linear(h, w, b).view(*h.shape[:-1], groups, d).transpose(-1, -2)


def _sizes(n_in, n_out, context_features, unit: str = "features") -> tuple[int, int, int]:
    """A network's checked sizes: ``in_{unit}`` may be 0 where a context feeds it (a coupling
    that keeps nothing reads the context alone: VariationalDequantization's first layer)."""
    context_features = checked_int("context_features", context_features, 0)
    n_in = checked_int(f"in_{unit}", n_in, 0 if context_features else 1)
    return n_in, checked_int(f"out_{unit}", n_out), context_features


class MLP(nn.Module):
    """A multi-layer perceptron ``in_features (+ context) -> hidden... -> out_features``.

    Args:
        in_features: input size.
        out_features: output size.
        hidden: hidden layer widths; ``()`` gives a single linear map.
        context_features: size of a context vector concatenated to the input.
        activation: one of relu, leaky_relu, elu, tanh, gelu, silu.
        zero_init: zero the last layer's weights and bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        activation: str = "relu",
        zero_init: bool = True,
    ):
        super().__init__()
        in_features, out_features, context_features = _sizes(
            in_features, out_features, context_features
        )
        act = activation_class(activation)
        widths = [
            in_features + context_features,
            *(checked_int("every hidden width", h) for h in hidden),
        ]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(widths[-1], out_features))
        if zero_init:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.context_features = context_features

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            x = torch.cat([x, context], dim=-1)
        if _hooked(self.net, *self.net):
            return self.net(x)
        return _hidden_layers(self.net, x, len(self.net))

    def forward_grouped(self, x: Tensor, context: Tensor | None, groups: int) -> Tensor:
        """``forward(x, context).view(B, -1, groups)``, in parameter-major memory
        (:func:`grouped_linear`); a subclass's own ``forward`` or a hook is called as it is
        instead."""
        last = self.net[-1]
        if type(self).forward is not MLP.forward or _hooked(self, self.net, *self.net):
            return _grouped_view(self(x, context), groups)
        if self.context_features:
            x = torch.cat([x, context], dim=-1)
        return grouped_linear(
            _hidden_layers(self.net, x, len(self.net) - 1), last.weight, last.bias, groups
        )


class ResidualMLP(nn.Module):
    """An MLP with pre-activation residual blocks of constant width ``hidden``.

    Args:
        in_features: input size.
        out_features: output size.
        hidden: block width.
        blocks: number of residual blocks (two linear layers each).
        context_features: size of a context vector concatenated to the input.
        activation: as in :class:`MLP`.
        zero_init: zero the output layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 128,
        blocks: int = 2,
        context_features: int = 0,
        activation: str = "relu",
        zero_init: bool = True,
    ):
        super().__init__()
        in_features, out_features, context_features = _sizes(
            in_features, out_features, context_features
        )
        hidden, blocks = checked_int("hidden", hidden), checked_int("blocks", blocks, 0)
        act = activation_class(activation)
        self.context_features = context_features
        self.inp = nn.Linear(in_features + context_features, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, hidden))
            for _ in range(blocks)
        )
        self.out = nn.Sequential(act(), nn.Linear(hidden, out_features))
        if zero_init:
            nn.init.zeros_(self.out[1].weight)
            nn.init.zeros_(self.out[1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.out(self._trunk(x, context))

    def _trunk(self, x: Tensor, context: Tensor | None) -> Tensor:
        if self.context_features:
            x = torch.cat([x, context], dim=-1)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return h

    def forward_grouped(self, x: Tensor, context: Tensor | None, groups: int) -> Tensor:
        """``forward(x, context).view(B, -1, groups)``, in parameter-major memory
        (:func:`grouped_linear`); a subclass's own ``forward`` or a forward hook is called as
        it is instead."""
        last = self.out[1]
        if type(self).forward is not ResidualMLP.forward or _hooked(self, self.out, last):
            return _grouped_view(self(x, context), groups)
        return grouped_linear(self.out[0](self._trunk(x, context)), last.weight, last.bias, groups)


class ConvResNet(nn.Module):
    """A convolutional ResNet ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    The conditioner of image couplings and of Glow's split prior: a 3x3 input convolution,
    ``blocks`` pre-activation residual blocks (3x3 then 1x1 convolution, as in Glow's coupling
    network), and a zero-initialised 3x3 output convolution, so a coupling built on it starts
    as the identity. A context vector of size ``context_features`` is broadcast over the image
    and concatenated as extra input channels; a context image ``(B, context_features, H, W)`` is
    concatenated as it is.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        hidden: channels of the hidden layers.
        blocks: number of residual blocks (0: conv, activation, output conv).
        context_features: size of a context vector read as extra channels.
        activation: as in :class:`MLP`.
        zero_init: zero the output convolution.

    Example:
        >>> net = ConvResNet(2, 4, hidden=16, blocks=1)
        >>> net(torch.randn(3, 2, 8, 8)).shape
        torch.Size([3, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        blocks: int = 2,
        context_features: int = 0,
        activation: str = "relu",
        zero_init: bool = True,
    ):
        super().__init__()
        in_channels, out_channels, context_features = _sizes(
            in_channels, out_channels, context_features, "channels"
        )
        hidden, blocks = checked_int("hidden", hidden), checked_int("blocks", blocks, 0)
        act = activation_class(activation)
        self.context_features = context_features
        self.inp = nn.Conv2d(in_channels + context_features, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                act(), nn.Conv2d(hidden, hidden, 3, padding=1), act(), nn.Conv2d(hidden, hidden, 1)
            )
            for _ in range(blocks)
        )
        self.out = nn.Sequential(act(), nn.Conv2d(hidden, out_channels, 3, padding=1))
        if zero_init:
            nn.init.zeros_(self.out[1].weight)
            nn.init.zeros_(self.out[1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            # a context vector is broadcast over the image; an image context is stacked as is
            c = context if context.dim() == 4 else context[:, :, None, None]
            x = torch.cat([x, c.expand(-1, -1, *x.shape[2:])], dim=1)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


# -- MADE: masked autoencoder for distribution estimation --------------------------------------


def _input_degrees(features: int, order) -> Tensor:
    """Degree ``1..D`` of each input: its position in the autoregressive order (None:
    natural)."""
    if order is None:
        order = "natural"
    if isinstance(order, str):
        if order == "natural":
            return torch.arange(1, features + 1)
        if order in ("reversed", "reverse"):
            return torch.arange(features, 0, -1)
        if order == "random":
            return torch.randperm(features) + 1
        raise ValueError(f"unknown order {order!r}; expected 'natural', 'reversed' or 'random'")
    perm = torch.as_tensor(order).long().flatten()
    if sorted(perm.tolist()) != list(range(features)):
        raise ValueError(
            f"an explicit order must be a permutation of range({features}) (the index of the "
            f"first, second, ... dimension), got {perm.tolist()}"
        )
    return torch.argsort(perm) + 1


class MADEWidthWarning(UserWarning):
    """An ordered MADE whose hidden layers are narrower than its order needs (not said when a
    saved model is loaded, whose width was chosen). Python's warning filters decide how often:
    by default once for each place and size (a MAF's MADEs, built on one line, say it once)."""


def _hidden_degrees(features: int, width: int, conditional: bool) -> Tensor:
    """Degrees ``1..D-1`` spread evenly (and sorted) over ``width`` units.

    With a context the range starts at 0: units of degree 0 see only the context, so that the
    first dimension in the order depends on it too. With ``D == 1`` every degree is 0.
    """
    low = 0 if conditional or features == 1 else 1
    return torch.sort(torch.arange(width) % (features - low) + low).values


def check_adjacency(adjacency, features: int) -> Tensor:
    """``adjacency`` as a ``(D, D)`` boolean tensor, or ``ValueError`` in one line saying what
    is wrong with it: not a square matrix, not ``D x D``, entries other than 0/1, a self-loop,
    a cycle. ``adjacency[i, j]`` True: dimension ``i`` depends on dimension ``j``.

    Example:
        >>> check_adjacency([[0, 0], [1, 0]], 2)
        tensor([[False, False],
                [ True, False]])
    """
    if isinstance(adjacency, Tensor):
        a = adjacency.detach().cpu()
    else:
        try:
            a = torch.as_tensor(adjacency)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                "adjacency must be a square matrix of 0/1 or booleans (a list of equally long "
                f"rows or a tensor), got {str(adjacency)[:60]}"
            ) from None
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(
            f"adjacency must be a square (D, D) matrix of 0/1 or booleans, got shape "
            f"{tuple(a.shape)}"
        )
    if a.shape[0] != features:
        raise ValueError(f"adjacency is {a.shape[0]} x {a.shape[1]} but features={features}")
    if a.dtype != torch.bool:
        if a.is_complex():
            raise ValueError(f"adjacency entries must be 0/1 or booleans, got dtype {a.dtype}")
        if not ((a == 0) | (a == 1)).all():
            bad = (~((a == 0) | (a == 1))).nonzero()[0].tolist()
            raise ValueError(
                f"adjacency entries must be 0/1 or booleans, got {a[tuple(bad)].item()!r} at {bad}"
            )
        a = a != 0
    loops = a.diagonal().nonzero().flatten().tolist()
    if loops:
        i = loops[0]
        raise ValueError(
            f"adjacency[{i}, {i}] is set: dimension {i} cannot depend on itself (an "
            "autoregressive transform conditions each dimension on others); clear the diagonal"
        )
    generations(a)  # raises on a cycle
    return a.clone()


def generations(adjacency) -> list[list[int]]:
    """The dimensions of a DAG by generation: first those without parents, then those whose
    parents are all in earlier generations, and so on; ``ValueError`` naming a cycle.
    ``adjacency``: a square 0/1 matrix (tensor, array or nested lists)."""
    a = torch.as_tensor(adjacency).bool().cpu()
    d = a.shape[0]
    parents = [set(a[i].nonzero().flatten().tolist()) for i in range(d)]
    known: set[int] = set()
    out: list[list[int]] = []
    while len(known) < d:
        ready = [i for i in range(d) if i not in known and parents[i] <= known]
        if not ready:
            raise ValueError(
                f"adjacency has a cycle, {_a_cycle(parents, known)} (i <- j: i depends on j); "
                "an autoregressive flow needs a directed acyclic graph"
            )
        out.append(ready)
        known.update(ready)
    return out


def _a_cycle(parents: list[set[int]], known: set[int]) -> str:
    """One cycle among the dimensions not in ``known``, as ``"i <- j <- ... <- i"``."""
    i = min(k for k in range(len(parents)) if k not in known)
    path: list[int] = []
    while i not in path:  # every unsolved dimension has an unsolved parent
        path.append(i)
        i = min(parents[i] - known)
    cycle = path[path.index(i) :] + [i]
    return " <- ".join(map(str, cycle))


def _receptive_sets(adjacency: Tensor, conditional: bool) -> list[frozenset[int]]:
    """The distinct non-empty parent sets of a DAG (the empty set too with a context, or when
    no dimension has a parent), smallest first: what the hidden units of a structured MADE see."""
    d = adjacency.shape[0]
    sets = {frozenset(adjacency[i].nonzero().flatten().tolist()) for i in range(d)}
    sets.discard(frozenset())
    if conditional or not sets:
        sets.add(frozenset())
    return sorted(sets, key=lambda s: (len(s), sorted(s)))


def _grown(known: Tensor, new: Tensor, lo: int, fill: bool) -> Tensor:
    """``known`` with the columns ``new`` at ``lo`` onwards. ``fill``: ``known`` is a buffer of
    its final width, written in place (no gradients: each step would otherwise copy all the
    columns so far, ``D^2`` copies per row over a sampling); else ``known`` grows by a
    concatenation (``new`` itself while ``known`` has none: on a GPU each copy is a kernel
    launch, and sampling launches D steps of them)."""
    if fill:
        known[:, lo : lo + new.shape[1]] = new
        return known
    return new if not known.shape[1] else torch.cat([known, new], 1)


def _known(ref: Tensor, batch: int, width: int, fill: bool) -> Tensor:
    """The columns computed so far: a buffer of the final ``width`` (``fill``), or none yet."""
    return ref.new_empty(batch, width) if fill else ref.new_zeros(batch, 0)


class MADE(nn.Module):
    r"""A masked MLP whose output for dimension ``i`` depends only on inputs earlier in ``order``,
    or only on the parents of ``i`` in a directed acyclic graph (``adjacency``).

    MADE (Germain et al., 2015) as the conditioner of autoregressive flows: from ``x`` of shape
    ``(B, D)`` it returns parameters of shape ``(B, D, P)``, where ``out[:, i]`` depends on
    ``x[:, j]`` only for ``j`` before ``i`` in the order, and on the whole context. Hidden unit
    degrees are spread evenly over ``1..D-1`` (``0..D-1`` with a context) and sorted, so the
    units of one degree form a contiguous block (:meth:`solve` uses this to invert in about
    one pass of arithmetic).

    With ``adjacency`` (structured autoregression) ``out[:, i]`` depends on ``x[:, j]`` only
    where ``adjacency[i, j]`` is set, and on the whole context. Each hidden unit sees one of
    the graph's distinct non-empty parent sets (with a context also the empty set: units that
    see only the context, so that root dimensions are conditioned too), cycled over the width
    (then sorted by the step of :meth:`solve` that can compute them); input ``j`` feeds a
    unit whose set holds ``j``, a unit feeds a unit of the next layer whose set contains its
    own, and an output ``i`` whose parents contain it. Every hidden layer needs at least as
    many units as there are such sets (``ValueError`` otherwise), so that each dimension's own
    parent set has units and its output can read all of its parents.

    Args:
        features: D.
        params_per_dim: P, the parameters of the elementwise transformer per dimension.
        hidden: hidden widths, e.g. ``(128, 128)``; with ``residual=True`` all must be equal
            (an input layer, then one residual block per further entry).
        context_features: size of a context vector, connected to every hidden unit (unmasked).
        order: ``"natural"`` (None: natural), ``"reversed"``, ``"random"`` or a permutation
            listing the dimensions from first to last. Saved in the state dict.
        residual: pre-activation residual blocks (two masked layers each), as in NSF's ResMADE.
        activation: as in :class:`MLP`.
        zero_init: zero the output layer, so an autoregressive layer starts as the identity.
        grouped: return the parameters in parameter-major memory (:func:`grouped_linear`),
            what an elementwise transformer with ``P >= 3`` parameters reads fastest (with
            ``P <= 2`` the output is dimension-major either way); ``False``: dimension-major, for a
            consumer that reduces over the last axis (the mixture base of
            :class:`~flowforge.distributions.MADEMoG`). The same numbers either way.
        adjacency: a ``(D, D)`` matrix of 0/1 or booleans (a tensor or a list of rows),
            ``adjacency[i, j]`` set where dimension ``i`` may depend on dimension ``j``; it
            must describe a directed acyclic graph without self-loops. Replaces ``order``
            (giving both is an error). Saved in the state dict.

    Example:
        >>> made = MADE(3, params_per_dim=2, hidden=(16,))
        >>> made(torch.randn(5, 3)).shape
        torch.Size([5, 3, 2])
        >>> chain = MADE(3, hidden=(8,), adjacency=[[0, 0, 0], [1, 0, 0], [0, 1, 0]])
        >>> chain.steps  # inverted in 3 steps, one per generation: 0, then 1, then 2
        3
    """

    def __init__(
        self,
        features: int,
        params_per_dim: int = 1,
        hidden: Sequence[int] | int = (128, 128),
        context_features: int = 0,
        order=None,
        residual: bool = False,
        activation: str = "relu",
        zero_init: bool = True,
        grouped: bool = True,
        adjacency=None,
    ):
        super().__init__()
        hidden = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
        if not hidden:
            raise ValueError(f"MADE needs at least one hidden layer of positive width: {hidden}")
        hidden = tuple(checked_int("every hidden width", h) for h in hidden)
        self.grouped = bool(grouped)
        if residual and len(set(hidden)) != 1:
            raise ValueError(f"a residual MADE needs equal hidden widths, got {hidden}")
        self.features = checked_int("features", features)
        self.params_per_dim = checked_int("params_per_dim", params_per_dim)
        self.hidden, self.residual = hidden, bool(residual)
        self.context_features = checked_int("context_features", context_features, 0)
        self.act = activation_class(activation)()
        d, p = self.features, self.params_per_dim
        if adjacency is None:
            self.register_buffer("degrees", _input_degrees(d, order))  # persistent: random order
            self.register_buffer("adjacency", None)
            # Inputs with degree D feed nothing; with D == 1 no input feeds anything, and the
            # input layer has zero columns (no dead weights).
            n_in = d if d > 1 else 0
        else:
            if order is not None:
                raise ValueError(
                    "MADE takes an order or an adjacency, not both: the adjacency decides what "
                    "each dimension depends on"
                )
            adj = check_adjacency(adjacency, d)
            self._check_width(adj)
            self.register_buffer("degrees", None)
            self.register_buffer("adjacency", adj)  # persistent, checked when loaded
            n_in = d if adj.any() else 0  # a graph without edges: no input feeds anything
        self._n_in = n_in
        sizes = list(zip((n_in, *hidden), hidden))
        # a zero-column layer warns that its init is a no-op (silenced only there: a change
        # of the filters makes Python forget which warnings it has said, the width one below)
        quiet = warnings.catch_warnings() if n_in == 0 else contextlib.nullcontext()
        with quiet:
            if n_in == 0:
                warnings.simplefilter("ignore", UserWarning)
            self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in sizes)
        self.out = nn.Linear(hidden[-1], d * p)
        if self.context_features:
            self.ctx = nn.Linear(self.context_features, sum(hidden), bias=False)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self._build_masks()

    @property
    def steps(self) -> int:
        """The sequential steps of the exact inverse (:meth:`solve`): ``D`` in an order, the
        depth of the graph plus one (its generations) with an adjacency."""
        return self.features if self.adjacency is None else len(self._generation_sizes)

    def _check_width(self, adjacency: Tensor) -> None:
        sets = len(_receptive_sets(adjacency, self.context_features > 0))
        note = " (the context-only one included)" if self.context_features else ""
        for k, w in enumerate(self.hidden):
            if w < sets:
                raise ValueError(
                    f"hidden layer {k} of the MADE has {w} units, fewer than {sets}, the distinct "
                    f"parent sets of the adjacency{note}: give every hidden layer at least "
                    f"{sets} units (e.g. hidden=[{2 * sets}, {2 * sets}]; each output "
                    "reads about width / sets units), or some dimension could not read all its "
                    "parents"
                )

    def _build_masks(self, warn: bool = True) -> None:
        if self.adjacency is not None:
            return self._build_graph_masks()
        d, p = self.features, self.params_per_dim
        deg_in = self.degrees.cpu()
        conditional = self.context_features > 0
        need = d - (0 if conditional else 1)  # (the hidden degrees there are: D - 1, or D)
        width = min(self.hidden, default=need)
        if d > 1 and width < need and warn:
            reads = width - (1 if conditional else 0)
            warnings.warn(
                f"a MADE of {d} features with a hidden layer of {width} units: its order needs "
                f"{need} hidden degrees ({'D with a context' if conditional else 'D - 1'}), so "
                f"each output reads only the first {reads} inputs of the order, and the "
                f"dependencies on the later ones are lost; give every hidden layer at least "
                f"{need} units",
                MADEWidthWarning,
                stacklevel=2,
            )
        hid = [_hidden_degrees(d, h, self.context_features > 0) for h in self.hidden]
        masks = []
        prev = deg_in if d > 1 else deg_in[:0]
        for h in hid:
            masks.append(h[:, None] >= prev[None, :])
            prev = h
        out_deg = deg_in.repeat_interleave(p)  # output unit i * P + k belongs to dimension i
        masks.append(out_deg[:, None] > prev[None, :])
        dev = self.out.weight.device
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m.to(dev, torch.get_default_dtype()), persistent=False)
        # for solve(), kept on the host: the dimension of each degree, and per hidden layer the
        # end of each degree's units, so that its loop reads nothing back from the device
        self._order = torch.argsort(deg_in).tolist()  # _order[k]: the dimension of degree k + 1
        self.register_buffer("_order_index", torch.tensor(self._order, device=dev), False)
        self._degree_ends = [torch.bincount(h, minlength=d + 1).cumsum(0).tolist() for h in hid]

    def _build_graph_masks(self) -> None:
        """Masks from the adjacency: each hidden unit sees one receptive set (see the class
        docstring), the same sets in the same places in every layer."""
        d, p = self.features, self.params_per_dim
        adj = self.adjacency.cpu()
        sets = _receptive_sets(adj, self.context_features > 0)
        parents = [frozenset(adj[i].nonzero().flatten().tolist()) for i in range(d)]
        holds = torch.tensor([[j in s for j in range(d)] for s in sets])  # (S, D)
        within = torch.tensor([[a <= b for a in sets] for b in sets])  # [b, a]: a within b
        reads = torch.tensor([[s <= parents[i] for s in sets] for i in range(d)])  # (D, S)
        gens = generations(adj)
        # the inverse's step at which a set's units can be computed: 0 for the empty set, else
        # one after the latest generation among its members
        gen_of = {j: g for g, dims in enumerate(gens) for j in dims}
        ready = torch.tensor([1 + max(gen_of[j] for j in s) if s else 0 for s in sets])
        # each unit's set: the sets cycled over the width, then sorted by that step, so that
        # the units of one step form a contiguous block (as a MADE's degrees do in an order)
        units = []
        for h in self.hidden:
            cycled = torch.arange(h) % len(sets)
            units.append(cycled[torch.argsort(ready[cycled], stable=True)])
        masks = [holds[units[0]][:, : self._n_in]]
        for prev, now in zip(units[:-1], units[1:]):
            masks.append(within[now][:, prev])
        masks.append(reads[:, units[-1]].repeat_interleave(p, 0))  # output i * P + k: dim i
        dev = self.out.weight.device
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m.to(dev, torch.get_default_dtype()), persistent=False)
        # for the inverse, kept on the host: the size of each generation, and per hidden layer
        # the end of each step's units
        self._generation_sizes = [len(g) for g in gens]
        flat = torch.tensor([i for g in gens for i in g], device=dev)
        self.register_buffer("_generation_index", flat, persistent=False)
        self._unit_ends = [
            torch.bincount(ready[u], minlength=len(gens)).cumsum(0).tolist() for u in units
        ]

    def _check_loaded_adjacency(self, state_dict, prefix) -> None:
        """``ValueError`` naming the tensor for a file's adjacency that is not a DAG on
        ``D`` dimensions this MADE can hold (before anything is loaded)."""
        key = prefix + "adjacency"
        if key not in state_dict:
            return
        t = state_dict[key]
        d = self.features
        try:
            if not isinstance(t, Tensor) or tuple(t.shape) != (d, d):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"expected shape {(d, d)}, got {shape}")
            adj = check_adjacency(t, d)
            self._check_width(adj)
        except ValueError as e:
            raise ValueError(f"tensor '{key}' is not a usable adjacency: {e}") from None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.adjacency is not None:
            self._check_loaded_adjacency(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.adjacency is None and sorted(self.degrees.tolist()) != list(
            range(1, self.features + 1)
        ):  # a crafted file
            raise ValueError(
                f"tensor '{prefix}degrees' is not an order of 1..{self.features} (each once)"
            )
        dtype = self.out.weight.dtype
        self._build_masks(warn=False)  # (a saved model: its width was chosen when built)
        for i in range(len(self.hidden) + 1):
            setattr(self, f"mask{i}", getattr(self, f"mask{i}").to(dtype))

    def _mask(self, i: int) -> Tensor:
        return getattr(self, f"mask{i}")

    def _weights(self) -> list[Tensor]:
        """Masked weight matrices: hidden layers, then the output layer."""
        ws = [lin.weight * self._mask(i) for i, lin in enumerate(self.linears)]
        return ws + [self.out.weight * self._mask(len(self.linears))]

    def _act_fresh(self, pre: Tensor) -> Tensor:
        if _hooked(self.act):
            return self.act(pre)
        return apply_to_fresh(self.act, pre)

    def _context_terms(self, context: Tensor | None) -> list[Tensor | None]:
        if not self.context_features:
            return [None] * len(self.hidden)
        return list(self.ctx(context).split(self.hidden, dim=-1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``(B, D)`` (and ``(B, C)``) to parameters ``(B, D, P)``, in one pass."""
        ws, cs = self._weights(), self._context_terms(context)
        lin = nn.functional.linear
        h = x if self._n_in else x[:, :0]
        for i, layer in enumerate(self.linears):
            inp = self.act(h) if self.residual and i > 0 else h
            pre = lin(inp, ws[i], layer.bias)
            if cs[i] is not None:
                pre = pre + cs[i]
            if not self.residual:
                h = self._act_fresh(pre)
            else:  # h0 = W0 x; h_i = h_{i-1} + W_i act(h_{i-1}): one masked layer per block
                h = pre if i == 0 else h + pre
        h = self.act(h) if self.residual else h
        least = GROUPED_FROM_COMPILED if torch.compiler.is_compiling() else GROUPED_FROM
        if self.grouped and self.params_per_dim >= least:  # each parameter contiguous
            return grouped_linear(h, ws[-1], self.out.bias, self.params_per_dim)
        return lin(h, ws[-1], self.out.bias).reshape(x.shape[0], self.features, self.params_per_dim)

    def _grow(
        self, ws, cs, hs, acts, x_known, n_known: int, ends, fill: bool
    ) -> tuple[Tensor, int]:
        """One step of an incremental inverse: the hidden units ``ends[i] = (lo, hi)`` of each
        layer ``i``, whose inputs are all known now, appended to ``hs`` (and their activations
        to ``acts``, residual nets; written into buffers with ``fill``); returns the last
        layer's known units and their count."""
        lin = nn.functional.linear
        prev, n_prev = x_known, n_known
        for i, layer in enumerate(self.linears):
            lo, hi = ends[i]
            if hi > lo:
                inp = acts[i - 1] if self.residual and i > 0 else prev
                pre = lin(inp[:, :n_prev], ws[i][lo:hi, :n_prev], layer.bias[lo:hi])
                if cs[i] is not None:
                    pre = pre + cs[i][:, lo:hi]
                if not self.residual:
                    new = self._act_fresh(pre)
                else:
                    new = pre if i == 0 else hs[i - 1][:, lo:hi] + pre
                    acts[i] = _grown(acts[i], self.act(new), lo, fill)
                hs[i] = _grown(hs[i], new, lo, fill)
            prev, n_prev = hs[i], hi
        return (acts[-1] if self.residual else hs[-1]), n_prev

    def solve(
        self,
        step: Callable[[int, Tensor], Tensor],
        batch: int,
        context: Tensor | None = None,
        like: Tensor | None = None,
    ) -> None:
        r"""Run the network *incrementally* along the order, for sequential inversion.

        For ``k = 1..D`` it computes the parameters ``(B, P)`` of the ``k``-th dimension ``i``
        in the order and calls ``step(i, params)``, which must return that dimension's value
        ``(B,)``; the next parameters depend on it. Each hidden unit is computed exactly once
        (when the last input it sees becomes known) and each output row once, so the whole
        loop costs about one forward pass in arithmetic, spread over ``D`` small steps, instead
        of the ``D`` full passes of the naive inverse.

        With an adjacency it inverts by generations of the graph instead: each step calls
        ``step(index, params)`` once for all the ``k`` dimensions whose parents are all known
        (``index`` a tensor of them, ``params`` ``(B, k, P)``), so it takes ``steps`` (the
        depth of the graph plus one) steps instead of ``D``. Each hidden unit is computed
        once here too, at the step where the last input its set reads becomes known: about
        one forward pass of arithmetic in all (a full pass per generation would be the naive
        way: the same numbers, ``steps`` times the arithmetic).
        """
        if self.adjacency is not None:
            return self._solve_by_generations(step, batch, context, like)
        d, p = self.features, self.params_per_dim
        ref = self.out.weight if like is None else like
        ws, cs = self._weights(), self._context_terms(context)
        if d > 1:  # input columns in degree order
            ws[0] = ws[0].index_select(1, self._order_index)
        w_out = ws[-1].reshape(d, p, -1)
        b_out = self.out.bias.reshape(d, p)
        # units of each layer with degree exactly k, as contiguous slices (degrees are sorted)
        bounds = self._degree_ends
        lin = nn.functional.linear
        fill = not torch.is_grad_enabled()  # (buffers written in place: nothing to backpropagate)
        x_known = _known(ref, batch, d, fill)  # inputs in degree order
        hs = [_known(ref, batch, h, fill) for h in self.hidden]  # computed units per layer
        acts = [_known(ref, batch, h, fill) for h in self.hidden]  # act(hs), residual nets
        for k in range(d):  # inputs with degree <= k are known; find dimension of degree k + 1
            ends = [((b[k - 1] if k else 0), b[k]) for b in bounds]
            last, n_prev = self._grow(ws, cs, hs, acts, x_known, (k if d > 1 else 0), ends, fill)
            dim = self._order[k]
            params = lin(last[:, :n_prev], w_out[dim][:, :n_prev], b_out[dim])
            value = step(dim, params)
            if k + 1 < d:
                x_known = _grown(x_known, value.unsqueeze(1), k, fill)

    def _solve_by_generations(self, step, batch: int, context, like) -> None:
        """The inverse by generations, each hidden unit computed once: at the step where the
        last input its set reads becomes known (the units of one step are a contiguous block,
        the inputs are taken in generation order), so the whole loop costs about one forward
        pass of arithmetic."""
        d, p = self.features, self.params_per_dim
        ref = self.out.weight if like is None else like
        ws, cs = self._weights(), self._context_terms(context)
        if self._n_in:  # input columns in generation order
            ws[0] = ws[0].index_select(1, self._generation_index)
        w_out = ws[-1].reshape(d, p, -1)
        b_out = self.out.bias.reshape(d, p)
        lin = nn.functional.linear
        fill = not torch.is_grad_enabled()  # (buffers written in place: nothing to backpropagate)
        x_known = _known(ref, batch, d, fill)  # inputs in generation order
        hs = [_known(ref, batch, h, fill) for h in self.hidden]  # computed units per layer
        acts = [_known(ref, batch, h, fill) for h in self.hidden]  # act(hs), residual nets
        start = 0
        for g, size in enumerate(self._generation_sizes):
            ends = [((u[g - 1] if g else 0), u[g]) for u in self._unit_ends]
            n_known = start if self._n_in else 0
            last, n_prev = self._grow(ws, cs, hs, acts, x_known, n_known, ends, fill)
            dims = self._generation_index[start : start + size]
            w = w_out.index_select(0, dims)[:, :, :n_prev].reshape(size * p, n_prev)
            b = b_out.index_select(0, dims).reshape(-1)
            value = step(dims, lin(last[:, :n_prev], w, b).view(batch, size, p))
            if start + size < d:
                new = value.reshape(batch, size).to(x_known.dtype)
                x_known = _grown(x_known, new, start, fill)
            start += size

    def extra_repr(self) -> str:
        s = (
            f"features={self.features}, params_per_dim={self.params_per_dim}, "
            f"hidden={self.hidden}, residual={self.residual}"
        )
        if self.adjacency is not None:
            sets = len(_receptive_sets(self.adjacency, self.context_features > 0))
            s += (
                f", adjacency: {int(self.adjacency.sum())} edges, {self.steps} generations, "
                f"{sets} parent sets sharing the width"
            )
        return s
