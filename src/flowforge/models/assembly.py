r"""The shared part of every builder: data options, bases, dequantizers, preprocessing, and the
small parsers (shapes, widths, masks, mixers) that the family files use.

Data options
------------
Every builder takes the same keyword-only data options, declared once in :class:`DataOptions`
and validated there:

    context_features: size of a conditioning vector (0: unconditional).
    levels: if the data is discrete with this many levels (17 for digits, 256 for 8-bit images),
        the flow dequantizes and reports likelihoods on the raw scale.
    preprocess: with ``levels``: ``"logit"`` (RealNVP's, ``alpha``), ``"scale"`` (to
        ``[-1/2, 1/2]``) or ``None``.
    alpha: the logit's margin (RealNVP: 0.05).
    base: ``"normal"``, ``"diag"`` (learnable diagonal Gaussian), ``"mixture"`` (learnable
        Gaussian mixture, ``components``), ``"made-mog"`` (autoregressive: a MADE gives a
        ``components``-Gaussian mixture per dimension) or ``"class-gaussian"`` (needs a context:
        a Gaussian whose mean and scale are linear in it, i.e. one Gaussian per class for a
        one-hot label). A mapping ``{"name": ..., **options}`` passes options to the base.
        With a context, learnable bases are conditional.
    components: mixture components of ``"mixture"`` and ``"made-mog"``.
    dequantization: with ``levels``: ``"uniform"`` (``u ~ U[0, 1)``) or ``"variational"``
        (Flow++: a learned conditional flow ``q(u | x)``, trained jointly; the NLL is the
        variational bound). A mapping ``{"name": "variational", **options}`` sizes it.
    standardize: for continuous data (``levels=None``): a
        :class:`~flowforge.transforms.DataStandardize` first layer, which takes a per-entry
        mean and scale from the first batch it sees in training mode and keeps them fixed, so
        that a flow with its defaults fits raw data of any moderate scale (default True; the
        splines act on ``[-bound, bound]`` only, and zero-initialised couplings start at the
        identity). Checkpoints written before it existed load with ``standardize=False``.

Widths
------
``hidden`` means the same in every builder: the widths of each conditioner's hidden layers.
A sequence lists them; an int ``h`` repeats ``h`` at the builder's default depth (the length of
its default ``hidden``). Convolutional conditioners (image builders) have one width, their
channel count, and take their depth from ``blocks``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import distributions as D
from .._util import checked_int, unknown
from ..core import Compose, Flow, Transform
from ..nets import MLP, ConvResNet, ResidualMLP
from ..transforms import (
    Additive,
    Affine,
    Bounded,
    ColumnDequantization,
    ContextStandardize,
    DataStandardize,
    EmergingConv2d,
    Logit,
    LULinear,
    Permutation,
    PlainLinear,
    Reverse,
    Standardize,
    UniformDequantization,
    VariationalDequantization,
    Whiten,
    alternating_mask,
    half_mask,
)

__all__ = [
    "DataOptions",
    "BASES",
    "DEQUANTIZATIONS",
    "PREPROCESSING",
    "MIXERS",
    "assemble",
    "make_base",
    "make_dequantizer",
    "preprocessing",
    "standardized",
    "event_shape",
    "count",
    "widths",
    "channels",
    "mlp_conditioner",
    "conv_conditioner",
    "MaskTurns",
    "mixer",
    "mask",
    "coupling_transformer",
]

BASES = ("normal", "diag", "mixture", "made-mog", "class-gaussian")
DEQUANTIZATIONS = ("uniform", "variational")
PREPROCESSING = ("logit", "scale", None)
MIXERS = ("reverse", "random", "lu", "plain", "emerging", None)


def _named(value, what: str, choices: Sequence) -> tuple[object, dict]:
    """``"name"`` or ``{"name": ..., **options}`` -> ``(name, options)``, name checked."""
    options: dict = {}
    if isinstance(value, dict):
        options = dict(value)
        if "name" not in options:
            shown = ", ".join(repr(k) for k in list(options)[:5])
            one = next((c for c in options if c in choices), None)
            named = [c for c in choices if c is not None]
            like = (
                f'{{"name": "{one}", ...}}'
                if one
                else f'{{"name": NAME, ...}}, NAME one of {", ".join(map(str, named))}'
            )
            raise ValueError(
                f"a {what} given as a mapping names itself with its 'name' key ({like}); got "
                f"the keys {shown or 'none'}"
            )
        value = options.pop("name")
    if value not in choices:
        raise unknown(what, value, [c for c in choices if c is not None])
    return value, options


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """The options every builder shares (see the module docstring); validated on creation."""

    context_features: int = 0
    levels: int | None = None
    preprocess: str | None = "logit"
    alpha: float = 0.05
    base: str | dict = "normal"
    components: int = 8
    dequantization: str | dict = "uniform"
    standardize: bool = True

    def __post_init__(self):
        cf = self.context_features
        if isinstance(cf, bool) or not isinstance(cf, int) or cf < 0:
            raise ValueError(f"expected context_features to be an integer >= 0, got {cf!r}")
        lv = self.levels
        if lv is not None and (isinstance(lv, bool) or not isinstance(lv, int) or lv < 2):
            raise ValueError(f"expected levels to be None or an integer >= 2, got {lv!r}")
        if self.preprocess not in PREPROCESSING:
            raise ValueError(
                f"unknown preprocess {self.preprocess!r}; expected 'logit', 'scale' or None"
            )
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a < 0.5:
            raise ValueError(f"expected 0 <= alpha < 0.5, got {a!r}")
        if a == 0 and lv is not None and self.preprocess == "logit":
            # the top level's x + u rounds to `levels` in float32 (7 draws in a million at 256
            # levels), where the logit is infinite: a NaN density from valid data
            raise ValueError(
                "expected alpha > 0 for the logit of dequantized data (alpha = 0 puts the "
                "levels' edges at infinity); RealNVP's is 0.05"
            )
        count("components", self.components)
        if not isinstance(self.standardize, bool):
            raise ValueError(f"expected standardize to be True or False, got {self.standardize!r}")
        _named(self.base, "base", BASES)
        kind, options = _named(self.dequantization, "dequantization", DEQUANTIZATIONS)
        if kind == "uniform" and options:
            raise ValueError(f"uniform dequantization takes no options, got {sorted(options)}")
        if kind == "variational" and lv is None:
            raise ValueError(
                "dequantization='variational' is for discrete data: give levels= (the number "
                "of discrete values, e.g. 17 for digits); continuous data needs no dequantization"
            )

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


# -- shapes and widths ---------------------------------------------------------------------------


MAX_COUNT = 4096  # a builder's depth: layers, blocks (a build's time grows with them)
DEPTHS = ("layers", "blocks", "depth", "outer_layers", "inner_layers")


def count(name: str, v) -> int:
    """``v`` if it is an integer >= 1 (a size, a number of components), and for a depth
    (``DEPTHS``) at most ``MAX_COUNT`` (``layers: 100000000`` built for minutes); a
    ValueError naming ``name`` otherwise."""
    return checked_int(name, v, 1, MAX_COUNT if name in DEPTHS else None)


def event_shape(features: int | None, shape: Sequence[int] | None) -> tuple[int, ...]:
    """``(features,)`` or ``shape=(C, H, W)``: exactly one of them, with positive sizes."""
    if (features is None) == (shape is None):
        raise ValueError("give exactly one of features= (vectors) or shape=(C, H, W) (images)")
    if features is not None:
        return (count("features", features),)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise ValueError(f"expected shape=(C, H, W), got {shape!r}")
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) for s in shape):
        raise ValueError(f"expected shape=(C, H, W) of three integers, got {tuple(shape)}")
    if min(shape) < 1:
        raise ValueError(f"expected shape=(C, H, W) with positive sizes, got {tuple(shape)}")
    return tuple(shape)


def widths(hidden: int | Sequence[int], default_depth: int = 2) -> tuple[int, ...]:
    """Hidden widths: a sequence as given, an int repeated ``default_depth`` times."""
    if isinstance(hidden, bool):
        raise ValueError(f"expected hidden widths, got {hidden!r}")
    out = (hidden,) * default_depth if isinstance(hidden, int) else tuple(hidden)
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in out):
        raise ValueError(f"expected hidden widths >= 1, got {hidden!r}")
    return out


def channels(hidden: int | Sequence[int]) -> int:
    """The one width of a convolutional conditioner: an int, or a sequence of one width."""
    w = widths(hidden, 1)
    if len(set(w)) != 1:
        raise ValueError(
            f"a convolutional conditioner has one width (its channels; depth is blocks=), "
            f"got hidden={hidden!r}"
        )
    return w[0]


# -- pieces --------------------------------------------------------------------------------------


def mlp_conditioner(
    hidden: Sequence[int],
    context_features: int,
    activation: str,
    zero_init: bool = True,
    residual: bool = False,
) -> Callable[[int, int], nn.Module]:
    """A coupling's MLP; ``residual=True``: a :class:`~flowforge.nets.ResidualMLP` of
    ``len(hidden) - 1`` blocks of the (equal) width ``hidden[0]``."""
    if not residual:
        return lambda i, o: MLP(i, o, hidden, context_features, activation, zero_init)
    if len(set(hidden)) != 1:
        raise ValueError(f"residual=True needs equal hidden widths, got {tuple(hidden)}")
    blocks = len(hidden) - 1
    return lambda i, o: ResidualMLP(
        i, o, hidden[0], blocks, context_features, activation, zero_init
    )


def conv_conditioner(
    hidden: int, blocks: int, context_features: int, activation: str, zero_init: bool = True
) -> Callable[[int, int], nn.Module]:
    return lambda i, o: ConvResNet(i, o, hidden, blocks, context_features, activation, zero_init)


def mask(kind: str, features: int, flip: bool):
    """A vector coupling mask: ``"half"`` or ``"alternating"``."""
    if kind == "half":
        return half_mask(features, flip)
    if kind == "alternating":
        return alternating_mask(features, flip)
    raise unknown("mask", kind, ("half", "alternating"))


class MaskTurns:
    """The mixing layers and the mask of each coupling of a chain, made in the chain's order:
    ``options`` are 1-d boolean masks over the entries a permutation moves (features, or an
    image's channels), True where an entry passes through; ``permutation`` is the mixing
    between couplings (:func:`mixer`) and ``shape`` the event shape it acts on.

    ``alternate``: True: the options take turns in each coupling's own coordinates (coupling
    ``i`` takes ``options[i % len(options)]``), whatever the permutations do to the entries
    (flowforge before 2026-12-07, and the models saved then: a ``"reverse"`` permutation undid
    the turns, so that with two halves of an even count every coupling transformed the same
    half, and a ``"random"`` one could leave an entry that no coupling transformed); False:
    every coupling takes ``options[0]``; None (the builders' default): the turns are kept in
    the data's own order. After ``"reverse"``, each coupling takes the option that transforms
    the most entries that no coupling has transformed yet, then the one whose entries were
    transformed least recently, then the turn's; a ``"random"`` permutation (drawn from the
    same random numbers as before, and saved as always) is arranged so that the entries
    transformed least recently come to the part the next coupling transforms.

    Example:
        >>> first = torch.tensor([True, True, False, False])
        >>> turns = MaskTurns([first, ~first], alternate=None, permutation="reverse", shape=4)
        >>> [turns()[1].tolist() for _ in range(3)]
        [[True, True, False, False], [True, True, False, False], [True, True, False, False]]
    """

    def __init__(self, options: Sequence[torch.Tensor], alternate, permutation, shape):
        self.options, self.alternate, self.i = list(options), alternate, 0
        self.permutation, self.shape = permutation, shape
        self.follow = alternate is None and permutation in ("reverse", "random")
        size = self.options[0].numel()
        self.where = torch.arange(size)  # the data's index of each entry, here
        self.last = torch.full((size,), -1.0)  # the coupling that last transformed each entry

    def __call__(self) -> tuple[list[Transform], torch.Tensor]:
        """The mixing layers before the next coupling (none before the first) and its mask."""
        i, n = self.i, len(self.options)
        self.i += 1
        turn = i % n if self.alternate is not False else 0
        mixing = mixer(self.permutation, self.shape) if i else []
        if not self.follow:
            return mixing, self.options[turn]
        if mixing and self.permutation == "random":
            mixing = [self._arranged(mixing[0].perm, self.options[turn])]
        for layer in mixing:  # (Permutation and Reverse: entry j comes from entry perm[j])
            self.where = self.where[layer.perm]
        moved = [self.where[~m] for m in self.options]
        if self.permutation == "random":
            k = turn
        else:  # (most entries never transformed first, then the least recently transformed)
            never = [int((self.last[w] < 0).sum()) for w in moved]
            age = [self.last[w].mean().item() if len(w) else float("inf") for w in moved]
            k = min(range(n), key=lambda k: (-never[k], age[k], k != turn, k))
        self.last[moved[k]] = i
        return mixing, self.options[k]

    def _arranged(self, drawn: torch.Tensor, mask: torch.Tensor) -> Transform:
        """The permutation ``drawn``, its entries reordered so that those transformed least
        recently (never, first; ``drawn``'s order among equals) go where ``mask`` is False."""
        order = drawn[torch.argsort(self.last[self.where[drawn]], stable=True)]
        moved, kept = (~mask).nonzero()[:, 0], mask.nonzero()[:, 0]
        perm = torch.empty_like(drawn)
        perm[moved], perm[kept] = order[: len(moved)], order[len(moved) :]
        return Permutation(self.shape, perm)


def mixer(kind: str | None, shape: int | tuple[int, ...]) -> list[Transform]:
    """The mixing layer between two steps: None, ``"reverse"``, ``"random"`` (a saved random
    permutation), ``"lu"`` (LU linear; Glow's 1x1 convolution on images), ``"plain"`` (a
    full matrix) or, on images only, ``"emerging"`` (the LU 1x1 convolution followed by a 3x3
    :class:`~flowforge.transforms.EmergingConv2d`, as Hoogeboom et al. 2019 combine them;
    ``"emerging-5"`` for a 5x5 kernel, any odd size)."""
    if kind is None or kind == "none":
        return []
    if kind == "reverse":
        return [Reverse(shape)]
    if kind == "random":
        return [Permutation(shape)]
    if kind == "lu":
        return [LULinear(shape)]
    if kind == "plain":
        return [PlainLinear(shape)]
    if isinstance(kind, str) and (kind == "emerging" or kind.startswith("emerging-")):
        size = kind[len("emerging-") :] if kind != "emerging" else "3"
        if not size.isdigit() or int(size) % 2 == 0:
            raise ValueError(
                f"permutation {kind!r}: expected 'emerging' or 'emerging-K' with an odd kernel "
                f"size K, e.g. 'emerging-5'"
            )
        if not isinstance(shape, tuple) or len(shape) != 3:
            raise ValueError(
                f"permutation {kind!r} is a convolution and needs images (C, H, W), got "
                f"event shape {shape}; use 'lu' for vectors"
            )
        return [LULinear(shape), EmergingConv2d(shape, int(size))]
    raise unknown("permutation", kind, ("reverse", "random", "lu", "plain", "emerging", "none"))


def coupling_transformer(
    kind: str, scale_bound: float | None, shift_first: bool = False
) -> nn.Module:
    if kind == "affine":
        return Affine(scale_bound, shift_first)
    if kind == "additive":
        return Additive()
    raise unknown("coupling", kind, ("affine", "additive"))


# -- bases, dequantizers, preprocessing ----------------------------------------------------------


def make_base(
    name, event_shape: tuple[int, ...], context_features: int = 0, components: int = 8
) -> D.Distribution:
    """A base distribution by name: normal, diag, mixture, made-mog or class-gaussian.

    ``name`` may also be a mapping such as ``{"name": "made-mog", "hidden": [32, 32],
    "components": 4}``: the other keys go to the base's constructor (for ``made-mog`` and
    ``mixture``: ``hidden``, ``components``, ``spread``).
    """
    name, options = _named(name, "base", BASES)
    components = options.pop("components", components)
    if options and name not in ("made-mog", "mixture"):
        raise ValueError(f"base {name!r} takes no options, got {sorted(options)}")
    if "hidden" in options:  # (a negative width reached torch's allocator)
        options["hidden"] = widths(options["hidden"])
    try:
        if name == "made-mog":
            return D.MADEMoG(event_shape, components, context_features, **options)
        if name == "mixture":
            return D.GaussianMixture(event_shape, components, context_features, **options)
    except TypeError as e:
        raise ValueError(f"bad {name} base options {options}: {e}") from None
    if name == "class-gaussian":
        if not context_features:
            raise ValueError(
                "base='class-gaussian' is a Gaussian per class and needs a context "
                "(context_features > 0, e.g. a one-hot label)"
            )
        return D.DiagGaussian(event_shape, context_features, hidden=())
    if name == "diag":
        return D.DiagGaussian(event_shape, context_features)
    return D.StandardNormal(event_shape)


def make_dequantizer(kind, event_shape: tuple[int, ...], levels: int | None):
    """The dequantizer for ``levels`` discrete values (None for continuous data)."""
    kind, options = _named(kind, "dequantization", DEQUANTIZATIONS)
    if levels is None:
        return None
    if kind == "variational":
        try:
            return VariationalDequantization(event_shape, levels, **options)
        except TypeError as e:
            raise ValueError(f"bad variational dequantization options {options}: {e}") from None
    return UniformDequantization(levels)


def preprocessing(event_shape: tuple[int, ...], data: DataOptions) -> list[Transform]:
    """The first layers: for data with ``levels`` discrete values, the fixed logit or scaling;
    for continuous data, the data-initialised standardisation (``standardize=True``)."""
    if data.levels is None:
        return [DataStandardize(event_shape)] if data.standardize else []
    if data.preprocess is None:
        return []
    if data.preprocess == "logit":
        return [Logit(event_shape, data.levels, data.alpha)]
    return [Standardize(event_shape, data.levels / 2, data.levels)]


def assemble(layers: list[Transform], event_shape: tuple[int, ...], data: DataOptions) -> Flow:
    """Preprocessing + ``layers`` + base (+ dequantizer), as one :class:`Flow`."""
    transform = Compose(*preprocessing(event_shape, data), *layers)
    base = make_base(data.base, transform.output_shape, data.context_features, data.components)
    return Flow(transform, base, make_dequantizer(data.dequantization, event_shape, data.levels))


def _like(flow: Flow) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device of ``flow``'s floating-point tensors (None, None without any)."""
    ref = next((t for t in itertools.chain(flow.parameters(), flow.buffers())
                if t.is_floating_point()), None)  # fmt: skip
    return (None, None) if ref is None else (ref.dtype, ref.device)


@contextlib.contextmanager
def _built_like(flow: Flow):
    """Build a layer to prepend in ``flow``'s dtype: its statistics (a float64 flow's
    standardisation, whitening) are not first rounded to float32."""
    dtype, _ = _like(flow)
    old = torch.get_default_dtype()
    if dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _prepended(flow: Flow, entry, layer: Transform | None = None, dequantizer=None) -> Flow:
    """``flow`` with the fixed ``layer`` first (or with ``dequantizer``), moved to the flow's
    dtype and device; its config lists ``entry`` under ``"prefix"`` (what
    :func:`flowforge.load` replays, in order)."""
    dtype, device = _like(flow)
    if dtype is not None:
        for part in (layer, dequantizer):
            if part is not None:
                part.to(device=device, dtype=dtype)
    transform = flow.transform if layer is None else Compose(layer, flow.transform)
    out = Flow(transform, flow.base, dequantizer or flow.dequantizer)
    out.context_map = flow.context_map
    if flow.config is not None:
        out.config = {**flow.config, "prefix": [*flow.config.get("prefix", []), entry]}
    return out


def context_standardized(flow: Flow, loc, scale) -> Flow:
    """``flow``, in place, taking raw contexts: each context feature is standardised with
    ``loc`` and ``scale`` (one number per feature, the training contexts' mean and standard
    deviation) before any layer reads it, in float64
    (:class:`~flowforge.transforms.ContextStandardize`). ``log_prob``, ``sample`` and the
    losses all take the raw values then, and ``ff.save``/``ff.load`` keep the statistics (in
    the config, under ``"prefix"``). The workbench's runs with ``--target-columns`` are built
    so.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.NSF(features=2, context_features=1)
        >>> flow = ff.models.context_standardized(flow, loc=[1000.0], scale=[0.5])
        >>> flow.sample(3, context=torch.tensor([[1000.2]])).shape
        torch.Size([3, 1, 2])
    """
    if not flow.context_features:
        raise ValueError("the flow is unconditional (context_features=0): it takes no context")
    if flow.context_map is not None:
        raise ValueError("the flow standardises its contexts already")
    layer = ContextStandardize(flow.context_features, loc, scale)
    _, device = _like(flow)
    if device is not None:
        layer.to(device=device)
    flow.context_map = layer
    if flow.config is not None:
        entry = {"context_standardize": {"loc": layer.loc, "scale": layer.scale}}
        flow.config = {**flow.config, "prefix": [*flow.config.get("prefix", []), entry]}
    return flow


def standardized(flow: Flow, loc=0.0, scale=1.0) -> Flow:
    """``flow`` with a fixed :class:`~flowforge.transforms.Standardize` prepended.

    For continuous data standardised with training-set statistics: the returned flow scores
    *raw* data, counting ``-sum(log scale)``, and ``ff.save``/``ff.load`` keep the statistics
    (they are buffers; the config lists the layer under ``"prefix"``).
    """
    with _built_like(flow):
        layer = Standardize(flow.event_shape, loc, scale)
    return _prepended(flow, "standardize", layer)


def whitened(flow: Flow, loc=None, factor=None) -> Flow:
    """``flow`` with a fixed :class:`~flowforge.transforms.Whiten` prepended: ``z = F^{-1} (x -
    loc)`` with ``F`` the Cholesky factor of a covariance fitted to the data, so that the flow
    starts as that Gaussian. Like :func:`standardized`, the result scores raw data, and
    ``ff.save``/``ff.load`` keep ``loc`` and ``factor`` (buffers; ``"whiten"`` in the config's
    ``"prefix"``). Defaults: zero and the identity."""
    with _built_like(flow):
        layer = Whiten(flow.event_shape, loc, factor)
    return _prepended(flow, "whiten", layer)


def bounded(flow: Flow, lower=None, upper=None) -> Flow:
    """``flow`` with a fixed :class:`~flowforge.transforms.Bounded` prepended: each entry's
    interval ``(lower, upper)`` mapped onto the real line (log for one bound, logit for two).

    The returned flow scores data in its own units (the map's log-determinant counted) and
    samples inside the bounds; ``ff.save``/``ff.load`` keep them (in the config, under
    ``"prefix"``). ``lower``/``upper``: None, one number, or one number or None per entry.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.bounded(ff.models.NSF(features=3), [0, None, 0], [None, None, 1])
        >>> flow.sample(5).min(0).values[[0, 2]].gt(0).all().item()
        True
    """
    with _built_like(flow):
        pre = Bounded(flow.event_shape, lower, upper)
    return _prepended(flow, {"bounded": {"lower": pre.lower, "upper": pre.upper}}, pre)


def integer_columns(flow: Flow, columns, lower=None, upper=None) -> Flow:
    """``flow`` scoring vectors whose ``columns`` hold integers (counts, ages, codes) and whose
    other entries are continuous: those columns are dequantized with uniform noise
    (:class:`~flowforge.transforms.ColumnDequantization`), so that ``log_prob`` is a lower
    bound on the mixed likelihood (probability of the integers times the density of the
    rest) and samples hold integers there. ``ff.save``/``ff.load`` keep the columns (in the
    config, under ``"prefix"``). For a flow of continuous vectors without a dequantizer.
    ``lower``/``upper``: one inclusive bound (an integer or None) per entry of ``columns``:
    samples are clamped to them (pair with :func:`bounded` on ``(lower - 1/2, upper + 3/2)``
    for a density that keeps to them).

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.integer_columns(ff.models.NSF(features=3), columns=[0, 2])
        >>> x = flow.sample(4)
        >>> torch.equal(x[:, [0, 2]], x[:, [0, 2]].floor())
        True
    """
    if flow.dequantizer is not None:
        raise ValueError(
            "the flow has a dequantizer already (discrete data: levels=); integer columns are "
            "for flows of continuous vectors"
        )
    if len(flow.event_shape) != 1:
        shape = tuple(flow.event_shape)
        raise ValueError(f"integer columns are entries of vectors; the flow's events are {shape}")
    with _built_like(flow):
        deq = ColumnDequantization(flow.event_shape[0], columns, lower, upper)
    entry = {"integer_columns": {"columns": deq.columns, "lower": deq.lower, "upper": deq.upper}}
    return _prepended(flow, entry, dequantizer=deq)
