r"""Named flows. Each builder only assembles layers and a base into a :class:`~flowforge.Flow`.

Every builder takes ``features=`` (vectors) or ``shape=`` (images), works with nothing else
given, and records its arguments in ``flow.config`` so that :func:`flowforge.save` can rebuild
it from JSON. ``build(name, **kwargs)`` looks a builder up by name (case-insensitive).

Common arguments:
    context_features: size of a conditioning vector (0: unconditional).
    levels: if the data is discrete with this many levels (17 for digits, 256 for 8-bit images),
        the flow dequantizes with ``U[0, 1)`` and reports likelihoods on the raw scale.
    preprocess: with ``levels``: ``"logit"`` (RealNVP's, ``alpha``), ``"scale"`` (to
        ``[-1/2, 1/2]``) or ``None``.
    base: ``"normal"``, ``"diag"`` (learnable diagonal Gaussian), ``"mixture"`` (learnable
        Gaussian mixture, ``components``), ``"made-mog"`` (autoregressive: a MADE gives a
        ``components``-Gaussian mixture per dimension) or ``"class-gaussian"`` (needs a context:
        a Gaussian whose mean and scale are linear in it, i.e. one Gaussian per class for a
        one-hot label). With a context, learnable bases are conditional.
    dequantization: with ``levels``: ``"uniform"`` (``u ~ U[0, 1)``) or ``"variational"``
        (Flow++: a learned conditional flow ``q(u | x)``, trained jointly; the NLL is the
        variational bound). See :mod:`flowforge.transforms.dequantization`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Sequence

from torch import nn

from . import distributions as D
from .core import Compose, Flow, Transform
from .nets import MLP
from .transforms import (
    Additive,
    Affine,
    BatchNorm,
    Coupling,
    Logit,
    LULinear,
    Permutation,
    Reverse,
    Scaling,
    Standardize,
    UniformDequantization,
    alternating_mask,
    half_mask,
)

__all__ = ["NICE", "RealNVP", "Glow", "build", "available", "register"]

_REGISTRY: dict[str, Callable[..., Flow]] = {}


def register(fn: Callable[..., Flow]) -> Callable[..., Flow]:
    """Register a builder under its name and make it record its arguments in ``flow.config``."""

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def builder(*args, **kwargs) -> Flow:
        bound = sig.bind(*args, **kwargs)
        flow = fn(*bound.args, **bound.kwargs)
        config = {}
        for k, v in bound.arguments.items():
            if sig.parameters[k].kind is inspect.Parameter.VAR_KEYWORD:
                config.update({kk: _jsonable(vv) for kk, vv in v.items()})  # e.g. **image_options
            else:
                config[k] = _jsonable(v)
        flow.config = {"model": fn.__name__, "kwargs": config}
        return flow

    _REGISTRY[fn.__name__.lower()] = builder
    return builder


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(i) for i in v]
    if isinstance(v, list):
        return [_jsonable(i) for i in v]
    return v


def available() -> list[str]:
    """Names of the registered builders."""
    return sorted(_REGISTRY)


def builder(name: str) -> Callable[..., Flow]:
    """The registered builder called ``name`` (case-insensitive); ``ValueError`` if unknown."""
    key = name.lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (available: {', '.join(available())})")
    return _REGISTRY[key]


def build(name: str, **kwargs) -> Flow:
    """Build a registered model by name, e.g. ``build("realnvp", features=64)``."""
    return builder(name)(**kwargs)


# -- shared assembly ----------------------------------------------------------------------------


def _event_shape(features: int | None, shape: Sequence[int] | None) -> tuple[int, ...]:
    if (features is None) == (shape is None):
        raise ValueError("give exactly one of features= (vectors) or shape=(C, H, W) (images)")
    if features is not None:
        if int(features) < 1:
            raise ValueError(f"expected features >= 1, got {features}")
        return (int(features),)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"expected shape=(C, H, W) with positive sizes, got {shape}")
    return shape


def make_base(
    name: str, event_shape: tuple[int, ...], context_features: int = 0, components: int = 8
) -> nn.Module:
    """A base distribution by name: normal, diag, mixture, made-mog or class-gaussian.

    ``name`` may also be a mapping such as ``{"name": "made-mog", "hidden": [32, 32],
    "components": 4}``: the other keys go to the base's constructor (for ``made-mog`` and
    ``mixture``: ``hidden``, ``components``, ``spread``).
    """
    options = {}
    if isinstance(name, dict):
        options = dict(name)
        name = options.pop("name", None)
        components = options.pop("components", components)
        if options and name not in ("made-mog", "mademog", "made_mog", "mixture"):
            raise ValueError(f"base {name!r} takes no options, got {sorted(options)}")
    if name in ("made-mog", "mademog", "made_mog"):
        try:
            return D.MADEMoG(event_shape, components, context_features, **options)
        except TypeError as e:
            raise ValueError(f"bad made-mog base options {options}: {e}") from None
    if name == "mixture" and options:
        try:
            return D.GaussianMixture(event_shape, components, context_features, **options)
        except TypeError as e:
            raise ValueError(f"bad mixture base options {options}: {e}") from None
    if name == "class-gaussian":
        if not context_features:
            raise ValueError(
                "base='class-gaussian' is a Gaussian per class and needs a context "
                "(context_features > 0, e.g. a one-hot label)"
            )
        return D.DiagGaussian(event_shape, context_features, hidden=())
    if name == "normal":
        return D.StandardNormal(event_shape)
    if name == "diag":
        return D.DiagGaussian(event_shape, context_features)
    if name == "mixture":
        return D.GaussianMixture(event_shape, components, context_features)
    raise ValueError(
        f"unknown base {name!r}; expected 'normal', 'diag', 'mixture', 'made-mog' or "
        "'class-gaussian'"
    )


DEQUANTIZATIONS = ("uniform", "variational")


def make_dequantizer(kind, event_shape: tuple[int, ...], levels: int | None):
    """The dequantizer for ``levels`` discrete values: ``"uniform"`` or ``"variational"``.

    ``kind`` may also be a mapping ``{"name": "variational", "steps": 2, "hidden": 16,
    "blocks": 0}`` that sizes the variational dequantizer's flow (see
    :class:`~flowforge.transforms.VariationalDequantization`).
    """
    options = {}
    if isinstance(kind, dict):
        options = dict(kind)
        kind = options.pop("name", "variational")
        if kind == "uniform" and options:
            raise ValueError(f"uniform dequantization takes no options, got {sorted(options)}")
    if kind not in DEQUANTIZATIONS:
        raise ValueError(f"unknown dequantization {kind!r}; expected 'uniform' or 'variational'")
    if levels is None:
        if kind == "variational":
            raise ValueError(
                "dequantization='variational' is for discrete data: give levels= (the number "
                "of discrete values, e.g. 17 for digits); continuous data needs no dequantization"
            )
        return None
    if kind == "variational":
        from .transforms.dequantization import VariationalDequantization

        try:
            return VariationalDequantization(event_shape, levels, **options)
        except TypeError as e:
            raise ValueError(f"bad variational dequantization options {options}: {e}") from None
    return UniformDequantization(levels)


def preprocessing(
    event_shape: tuple[int, ...],
    levels: int | None,
    preprocess: str | None,
    alpha: float,
    dequantization: str = "uniform",
) -> tuple[list[Transform], nn.Module | None]:
    """The dequantizer and the fixed first layers for data with ``levels`` discrete values."""
    deq = make_dequantizer(dequantization, event_shape, levels)
    if levels is None:
        return [], None
    if preprocess == "logit":
        return [Logit(event_shape, levels, alpha)], deq
    if preprocess == "scale":
        return [Standardize(event_shape, levels / 2, levels)], deq
    if preprocess is None:
        return [], deq
    raise ValueError(f"unknown preprocess {preprocess!r}; expected 'logit', 'scale' or None")


DATA_OPTIONS = (
    "context_features",
    "levels",
    "preprocess",
    "alpha",
    "base",
    "components",
    "dequantization",
)


def data_options(arguments: dict) -> dict:
    """The options every builder shares with :func:`assemble`, picked from its arguments.

    A builder calls ``assemble(layers, shape, **data_options(locals()))``.
    """
    return {k: arguments[k] for k in DATA_OPTIONS if k in arguments}


def assemble(
    layers: list[Transform],
    event_shape: tuple[int, ...],
    *,
    context_features: int = 0,
    levels: int | None = None,
    preprocess: str | None = "logit",
    alpha: float = 0.05,
    base: str = "normal",
    components: int = 8,
    dequantization: str = "uniform",
) -> Flow:
    """Preprocessing + ``layers`` + base, as one :class:`Flow`."""
    pre, deq = preprocessing(event_shape, levels, preprocess, alpha, dequantization)
    transform = Compose(*pre, *layers)
    return Flow(
        transform,
        make_base(base, transform.output_shape, context_features, components),
        deq,
    )


def standardized(flow: Flow, loc=0.0, scale=1.0) -> Flow:
    """``flow`` with a fixed :class:`~flowforge.transforms.Standardize` prepended.

    For continuous data standardised with training-set statistics: the returned flow scores
    *raw* data, counting ``-sum(log scale)``, and ``ff.save``/``ff.load`` keep the statistics
    (they are buffers; the config records ``"standardize": true``).
    """
    pre = Standardize(flow.event_shape, loc, scale)
    out = Flow(Compose(pre, flow.transform), flow.base, flow.dequantizer)
    if flow.config is not None:
        out.config = {**flow.config, "standardize": True}
    return out


def mlp_conditioner(
    hidden: Sequence[int], context_features: int, activation: str, zero_init: bool
) -> Callable[[int, int], nn.Module]:
    hidden = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
    return lambda i, o: MLP(i, o, hidden, context_features, activation, zero_init)


def _mask(kind: str, features: int, flip: bool):
    if kind == "half":
        return half_mask(features, flip)
    if kind == "alternating":
        return alternating_mask(features, flip)
    raise ValueError(f"unknown mask {kind!r}; expected 'half' or 'alternating'")


def _mixer(kind: str | None, features: int) -> list[Transform]:
    if kind is None:
        return []
    if kind == "reverse":
        return [Reverse(features)]
    if kind == "random":
        return [Permutation(features)]
    if kind == "lu":
        return [LULinear(features)]
    raise ValueError(f"unknown permutation {kind!r}; expected None, 'reverse', 'random' or 'lu'")


# -- vector coupling flows ----------------------------------------------------------------------


@register
def NICE(
    features: int | None = None,
    layers: int = 4,
    hidden: Sequence[int] | int = (256, 256),
    context_features: int = 0,
    mask: str = "alternating",
    permutation: str | None = None,
    activation: str = "relu",
    levels: int | None = None,
    preprocess: str | None = "logit",
    alpha: float = 0.05,
    base: str = "normal",
    components: int = 8,
    dequantization: str = "uniform",
) -> Flow:
    r"""NICE (Dinh et al., 2015): additive couplings and a final diagonal scaling layer.

    Volume-preserving except for the scaling layer, whose ``log_scale`` carries the whole
    log-determinant.

    Args:
        features: data dimension (at least 2).
        layers: number of additive coupling layers (masks alternate between them).
        hidden: widths of each coupling's MLP.
        mask: ``"alternating"`` (even/odd entries) or ``"half"`` (first/second half).
        permutation: a mixing layer between couplings: None, ``"reverse"``, ``"random"`` or
            ``"lu"``.
        activation: the MLPs' activation.
        (see the module docstring for context_features, levels, preprocess, alpha, base)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.NICE(features=8)
        >>> flow.sample(2).shape
        torch.Size([2, 8])
    """
    (d,) = _event_shape(features, None)
    cond = mlp_conditioner(hidden, context_features, activation, zero_init=True)
    chain: list[Transform] = []
    for i in range(layers):
        if i:
            chain += _mixer(permutation, d)
        chain.append(Coupling(_mask(mask, d, i % 2 == 1), cond, Additive(), context_features))
    chain.append(Scaling(d))
    return assemble(chain, (d,), **data_options(locals()))


@register
def RealNVP(
    features: int | None = None,
    shape: Sequence[int] | None = None,
    layers: int | None = None,
    hidden: Sequence[int] | int | None = None,
    context_features: int = 0,
    mask: str = "alternating",
    permutation: str | None = None,
    batch_norm: bool = False,
    rezero: bool = False,
    scale_bound: float = 3.0,
    activation: str = "relu",
    levels: int | None = None,
    preprocess: str | None = "logit",
    alpha: float = 0.05,
    base: str = "normal",
    components: int = 8,
    dequantization: str = "uniform",
    **image_options,
) -> Flow:
    r"""RealNVP (Dinh et al., 2017): affine couplings with a bounded log-scale.

    With ``features=`` it is the vector flow of the founding tutorial: ``layers`` affine
    couplings with alternating masks. With ``shape=(C, H, W)`` it is the paper's multi-scale
    image architecture (see :func:`flowforge.image_models.realnvp_image`).

    Args:
        features: data dimension (at least 2).
        shape: image shape ``(C, H, W)`` instead of ``features``.
        layers: number of affine couplings (default 8; vectors only).
        hidden: widths of each coupling's MLP (default (256, 256); for images, the channels of
            the conv conditioner, default 64).
        mask: ``"alternating"`` (even/odd entries) or ``"half"``.
        permutation: mixing between couplings: None, ``"reverse"``, ``"random"`` or ``"lu"``.
        batch_norm: a batch-norm bijector after each coupling (as in the paper).
        rezero: gate each coupling's output with a zero-initialised scalar (ReZero) instead of
            zero-initialising the conditioner's last layer.
        scale_bound: the largest absolute log-scale of a coupling (soft clamp).
        activation: the MLPs' activation.
        (see the module docstring for context_features, levels, preprocess, alpha, base)

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.RealNVP(features=64, layers=8, hidden=(256, 256))
        >>> flow.sample(16).shape
        torch.Size([16, 64])
    """
    if shape is not None and features is None:
        from .image_models import realnvp_image

        return realnvp_image(
            shape=shape,
            layers=layers,
            hidden=hidden,
            context_features=context_features,
            rezero=rezero,
            scale_bound=scale_bound,
            levels=levels,
            preprocess=preprocess,
            alpha=alpha,
            base=base,
            components=components,
            dequantization=dequantization,
            batch_norm=batch_norm,
            activation=activation,
            **image_options,
        )
    if image_options:
        raise ValueError(f"unexpected arguments for a vector RealNVP: {sorted(image_options)}")
    (d,) = _event_shape(features, shape)
    layers = 8 if layers is None else layers
    hidden = (256, 256) if hidden is None else hidden
    cond = mlp_conditioner(hidden, context_features, activation, zero_init=not rezero)
    chain: list[Transform] = []
    for i in range(layers):
        if i:
            chain += _mixer(permutation, d)
        m = _mask(mask, d, i % 2 == 1)
        chain.append(Coupling(m, cond, Affine(scale_bound), context_features, rezero=rezero))
        if batch_norm:
            chain.append(BatchNorm(d))
    return assemble(chain, (d,), **data_options(locals()))


# -- the other families register themselves on import; they use the helpers above -------------
# isort: split
from .autoregressive_models import IAF, MAF, NSF  # noqa: E402
from .continuous_models import FFJORD  # noqa: E402
from .image_models import Glow  # noqa: E402
from .residual_models import Planar, Radial, ResidualFlow, Sylvester  # noqa: E402

__all__ += ["MAF", "IAF", "NSF", "FFJORD", "Planar", "Radial", "Sylvester", "ResidualFlow"]
