r"""The core contract: :class:`Transform`, :class:`Compose`, :class:`Inverse` and :class:`Flow`.

Direction
---------
``forward`` is the *normalizing* direction, data to noise. A transform ``t`` maps

    ``z, ladj = t(x, context)``   with ``ladj = log|det dz/dx|``, shape ``(batch,)``
    ``x, ladj = t.inverse(z, context)`` with ``ladj = log|det dx/dz|``

so ``t.inverse(t(x)[0])[1] == -t(x)[1]``. A flow scores data with the change of variables

    ``log p(x) = log p_z(t(x)) + log|det dt/dx|``

and samples by pushing base noise through ``t.inverse``.

Shapes
------
``x`` is ``(batch, *event_shape)``; the event shape is fixed when the layer is built
(``(D,)`` for vectors, ``(C, H, W)`` for images). ``context`` is ``(batch, context_features)``
or ``None``. A layer may change the event shape (``Squeeze``, multi-scale factor-out); it then
reports ``output_shape``. Layers with ``context_features == 0`` ignore a context they are given;
the :class:`Flow` is where a stray or a missing context is refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import operator
import typing
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._util import all_finite, checked_int, functorch_active
from ._util import event_shape as _event_shape
from ._util import warn as _warn
from .reversible import ReversibleChain, refusal

__all__ = [
    "Transform",
    "Compose",
    "Inverse",
    "Identity",
    "Flow",
    "Transformer",
    "Dequantizer",
    "Distribution",
    "DataInit",
    "check_shape",
    "checking",
    "exact_levels",
    "integer_limit",
    "needs_data_init",
    "regularization",
    "layer_metrics",
    "refresh_tolerances",
    "NaNLogProb",
    "NonFiniteSamples",
]


def _autocast(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` (False for a type it does not know,
    such as ``meta``)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # (torch < 2.4 takes no device type: TypeError)
        return False


def _listed(items) -> str:
    """A list's element types, briefly (for a message)."""
    names = [type(v).__name__ for v in list(items)[:4]]
    return f"{type(items).__name__} [{', '.join(names)}{', ...' if len(items) > 4 else ''}]"


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_shape(x: Tensor, event_shape: Sequence[int], what: str = "input") -> None:
    """Raise a ``ValueError`` unless ``x`` has shape ``(batch, *event_shape)``."""
    event_shape = tuple(event_shape)
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {what} to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != event_shape:
        raise ValueError(
            f"expected {what} of shape (batch, {', '.join(map(str, event_shape))}), "
            f"got {_fmt(x.shape)}"
        )


def _check_type(what: str, obj, cls) -> None:
    """A ``TypeError`` unless ``obj`` is a ``cls`` (a flowforge class, or a tuple of one and
    ``NoneType``): "expected transform to be a flowforge Transform (...), got int"."""
    if not isinstance(obj, cls):
        want = "None or a " if isinstance(cls, tuple) else "a "
        name = (cls[0] if isinstance(cls, tuple) else cls).__name__
        raise TypeError(
            f"expected {what} to be {want}flowforge {name} (subclass flowforge.core.{name}), "
            f"got {type(obj).__name__}"
        )


def _refuse_nonfinite(t: Tensor, batch: tuple, what: str) -> None:
    """The ``ValueError`` for ``t`` of shape ``(*batch, ...)`` holding NaN or inf, naming its
    first bad batch indices (``x`` and the context alike)."""
    if not batch:  # one example without a batch dimension
        raise ValueError(f"{what} contains NaN or inf")
    bad = (~torch.isfinite(t)).reshape(*batch, -1).any(-1).nonzero()[:5]
    bad = bad.flatten().tolist() if len(batch) == 1 else bad.tolist()  # [3, 7], not [[3], [7]]
    raise ValueError(f"{what} contains NaN or inf (first bad batch indices: {bad})")


class Transform(nn.Module):
    r"""An invertible map with a tractable log-determinant.

    Subclasses implement ``_forward(x, context)`` (data to noise) and
    ``_inverse(z, context)`` (noise to data), each returning ``(output, ladj)`` with ``ladj`` of
    shape ``(batch,)``. The public :meth:`forward` and :meth:`inverse` check the input's shape
    once and call them.

    Args:
        event_shape: shape of one input example, e.g. ``(D,)`` or ``(C, H, W)``.
        context_features: size of the context vector the layer reads, 0 if it reads none.
        output_shape: shape of one output example, if it differs from ``event_shape``.
        context_shape: shape of one context, if it is not a vector (e.g. ``(C, H, W)`` for a
            layer conditioned on an image); ``context_features`` is then its first entry.

    Class attributes:
        numeric_inverse: ``None`` for an exact inverse, else the tolerance a numerical inverse
            reaches (the generic test checks it at that tolerance).
        projects: ``True`` for a parameter-free chart that first projects its input onto a
            manifold (normalises a vector), so that its inverse gives back the projection, not
            the input; memory saving runs such a first layer outside its recomputed chain.
        full_precision: ``True`` for a layer whose iterations (a fixed-point or Newton solve,
            a power iteration, an orthogonalisation) do not converge in half precision, or
            whose map is a matrix product beside a log-determinant from its weights (LU, QR,
            convolutions): under ``torch.autocast`` it runs with autocast off, in its
            parameters' dtype.
    """

    numeric_inverse: float | None = None
    projects: bool = False
    full_precision: bool = False

    def __init__(
        self,
        event_shape: Sequence[int],
        context_features: int = 0,
        output_shape: Sequence[int] | None = None,
        context_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        self.event_shape = _event_shape(event_shape, "event_shape")
        self.output_shape = self.event_shape if output_shape is None else tuple(output_shape)
        if context_shape is None:
            context_features = checked_int("context_features", context_features, 0)
            context_shape = (context_features,) if context_features else ()
        self.context_shape = tuple(int(s) for s in context_shape)
        self.context_features = self.context_shape[0] if self.context_shape else 0

    # -- public boundary ---------------------------------------------------------------------
    def reversible_ops(self) -> list:
        """This transform as a flat list of steps for memory-saving backpropagation
        (:mod:`flowforge.reversible`): itself, by default. Chains splice in their layers and
        multi-scale layers their split, inner steps and join, so that every step is inverted
        and recomputed once, however deeply the chains nest."""
        return [self]

    def _recompute(self, z: Tensor, context: Tensor | None, replay) -> tuple:
        """For memory-saving backpropagation: this layer's input recovered from its output
        ``z``, and the output recomputed from it with a graph.

        Returns ``(x, out, ladj, shared)``: ``x`` a detached leaf that requires grad, ``(out,
        ladj)`` this layer's forward pass from it with a graph, and ``shared`` a list of ``(leaf,
        fold)``: further leaves standing for parts of ``x`` that the recomputation read directly,
        whose gradients ``fold(grad)`` turns into gradients of ``x``. ``replay()`` restores the
        random-number state the forward pass ran with. By default: the inverse without a graph,
        then the forward pass; a coupling overrides it, because its conditioner sees the same
        half in both and one evaluation serves the two."""
        with torch.no_grad():
            replay()
            x, _ = self.inverse(z, context)
        x = x.detach().requires_grad_()
        replay()
        out, ladj = self(x, context)
        return x, out, ladj, []

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to noise: returns ``(z, log|det dz/dx|)``."""
        check_shape(x, self.event_shape, f"{type(self).__name__} input")
        self._check_context(context, x.shape[0])
        if self.full_precision and _autocasting(x):
            return self._without_autocast(self.forward, x, context)
        z, ladj = self._forward(x, context)
        if not isinstance(ladj, Tensor) or ladj.dim() != 1 or ladj.shape[0] != x.shape[0]:
            self._bad_ladj(ladj, x.shape[0], "_forward")
        return z, ladj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Noise to data: returns ``(x, log|det dx/dz|)``."""
        check_shape(z, self.output_shape, f"{type(self).__name__}.inverse input")
        self._check_context(context, z.shape[0])
        if self.full_precision and _autocasting(z):
            return self._without_autocast(self.inverse, z, context)
        x, ladj = self._inverse(z, context)  # (shapes only: no host sync)
        if not isinstance(ladj, Tensor) or ladj.dim() != 1 or ladj.shape[0] != z.shape[0]:
            self._bad_ladj(ladj, z.shape[0], "_inverse")
        return x, ladj

    def _without_autocast(self, method, t: Tensor, context: Tensor | None):
        """``method(t, context)`` with autocast off, inputs in the parameters' dtype."""
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), t.dtype)
        with torch.autocast(t.device.type, enabled=False):
            if context is not None and context.is_floating_point():
                context = context.to(dtype)
            return method(t.to(dtype), context)

    def _bad_ladj(self, ladj, batch: int, where: str) -> None:
        what = f"shape {tuple(ladj.shape)}" if isinstance(ladj, Tensor) else repr(ladj)
        raise ValueError(
            f"{type(self).__name__}.{where} returned a log-determinant of {what}; expected a "
            f"tensor of shape ({batch},), one per example (sum it over the event's dimensions; "
            "x.new_zeros(x.shape[0]) for a volume-preserving map)"
        )

    def _check_context(self, context: Tensor | None, batch: int) -> None:
        if self.context_features == 0:
            return
        want = ", ".join(map(str, self.context_shape))
        if context is None:
            raise ValueError(
                f"{type(self).__name__} is conditional and expects a context of shape "
                f"(batch, {want}), got None"
            )
        if tuple(context.shape[1:]) != self.context_shape:
            raise ValueError(
                f"expected context of shape (batch, {want}), got {_fmt(context.shape)}"
            )
        if context.shape[0] != batch:
            raise ValueError(
                f"context batch size {context.shape[0]} does not match input batch size {batch}"
            )

    # -- to implement ------------------------------------------------------------------------
    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} implements no _forward")

    def _inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} has no inverse (it implements _forward only): sampling, "
            "check_transform's round trip and memory saving need its _inverse"
        )

    @property
    def invertible(self) -> bool:
        """Whether the class implements its inverse (``_inverse``, or ``inverse`` itself)."""
        cls = type(self)
        return cls._inverse is not Transform._inverse or cls.inverse is not Transform.inverse

    # -- training hooks (optional) -------------------------------------------------------------
    def regularization(self) -> Tensor | None:
        """A penalty this layer adds to the training loss after its latest forward pass (e.g. a
        CNF's RNODE terms), or None. :func:`regularization` sums it over a model."""
        return None

    def metrics(self) -> dict[str, float]:
        """Numbers to log after a forward pass (e.g. a CNF's function evaluations)."""
        return {}

    def extra_repr(self) -> str:
        s = f"event_shape={self.event_shape}"
        if self.output_shape != self.event_shape:
            s += f", output_shape={self.output_shape}"
        if self.context_features:
            s += f", context_features={self.context_features}"
        return s


class Compose(Transform):
    """Layers applied in reading order: ``Compose(a, b)(x) == b(a(x))``; ladjs add up.

    Neighbouring shapes are checked when the chain is built.

    Example:
        >>> import flowforge as ff
        >>> t = ff.Compose(ff.transforms.Reverse(3), ff.transforms.Scaling(3))
        >>> z, ladj = t(torch.randn(5, 3))
        >>> z.shape, ladj.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    def __init__(self, *layers: Transform):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Compose needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Transform):
                raise TypeError(
                    f"expected flowforge Transforms, got {type(layer).__name__} at position {i}"
                )
        for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
            if a.output_shape != b.event_shape:
                raise ValueError(
                    f"layer {i} ({type(a).__name__}) outputs shape {a.output_shape} but layer "
                    f"{i + 1} ({type(b).__name__}) expects {b.event_shape}"
                )
        context = max((layer.context_shape for layer in layers), key=len)
        for i, layer in enumerate(layers):
            if layer.context_shape not in ((), context):
                raise ValueError(
                    f"layer {i} ({type(layer).__name__}) reads a context of shape "
                    f"{layer.context_shape}, but another layer reads {context}"
                )
        super().__init__(layers[0].event_shape, 0, layers[-1].output_shape, context)
        self.layers = nn.ModuleList(layers)
        # numerical inverses (CNF) compound: the chain is as accurate as their summed tolerances
        tols = [layer.numeric_inverse for layer in layers if layer.numeric_inverse]
        self.numeric_inverse = sum(tols) if tols else None

    memory_saving = False  # see flowforge.memory_saving; not saved with the model

    def _forward(self, x, context):
        if self.memory_saving and torch.is_grad_enabled():
            params = [p for p in self.layers.parameters() if p.requires_grad]
            if params or x.requires_grad or (context is not None and context.requires_grad):
                ops = self.reversible_ops()
                if getattr(ops[0], "projects", False):  # (a Split has none) its input is not
                    # its inverse's output: it runs with a graph, keeping its input
                    x, head = ops[0](x, context)
                    z, ladj = ReversibleChain.apply(ops[1:], context, x, *params)
                    return z, head + ladj
                return ReversibleChain.apply(ops, context, x, *params)
        ladj = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, l = layer(x, context)
            ladj = ladj + l
        return x, ladj

    def reversible_ops(self) -> list:
        return [op for layer in self.layers for op in layer.reversible_ops()]

    def _inverse(self, z, context):
        ladj = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, l = layer.inverse(z, context)
            ladj = ladj + l
        return z, ladj

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def extra_repr(self) -> str:
        return ""


def refresh_tolerances(module: nn.Module) -> None:
    """Recompute the ``numeric_inverse`` that every chain and :class:`Inverse` inside
    ``module`` declares from their layers' (after a layer's inverse was switched between an
    exact and an iterative one)."""
    for m in reversed(list(module.modules())):  # children before their parents
        if isinstance(m, Compose):
            tols = [layer.numeric_inverse for layer in m.layers if layer.numeric_inverse]
            m.numeric_inverse = sum(tols) if tols else None
        elif isinstance(m, Inverse):
            m.numeric_inverse = m.transform.numeric_inverse


_Module = typing.TypeVar("_Module", bound=nn.Module)


def memory_saving(module: _Module, enabled: bool = True) -> _Module:
    """Switch memory-saving backpropagation on (or off) for every :class:`Compose` in
    ``module`` (a :class:`Flow` or a transform) and return ``module``.

    Each chain then keeps only its output for the backward pass and recomputes every layer's
    input with the layer's exact inverse (see :mod:`flowforge.reversible`): training memory no
    longer grows with depth, for about one more forward and one inverse pass per step.

    Raises:
        ValueError: if a chain holds a layer that cannot be recomputed exactly from its output
            (numerical inverses, BatchNorm); nothing is switched then.
    """
    chains = [m for m in module.modules() if isinstance(m, Compose)]
    if not chains:
        raise ValueError(f"{type(module).__name__} holds no chain of layers (Compose)")
    if enabled:
        for chain in chains:
            for i, layer in enumerate(chain.layers):
                why = refusal(layer)
                if why:
                    raise ValueError(
                        f"memory saving recomputes each layer's input from its output, but layer "
                        f"{i} ({type(layer).__name__}) cannot be recomputed exactly: {why}"
                    )
            inner = [op for op in chain.reversible_ops()[1:] if getattr(op, "projects", False)]
            if inner:
                raise ValueError(
                    f"memory saving recomputes each layer's input from its output, but "
                    f"{type(inner[0]).__name__} projects its input (its inverse gives back the "
                    "projection), which only a chain's first layer may do"
                )
    for chain in chains:
        chain.memory_saving = bool(enabled)
    return module


class Inverse(Transform):
    """Swaps the directions of a transform (an IAF is an inverted MAF)."""

    def __init__(self, transform: Transform):
        _check_type("transform", transform, Transform)
        super().__init__(transform.output_shape, 0, transform.event_shape, transform.context_shape)
        self.transform = transform
        self.numeric_inverse = transform.numeric_inverse

    def _forward(self, x, context):
        return self.transform.inverse(x, context)

    def _inverse(self, z, context):
        return self.transform(z, context)

    def extra_repr(self) -> str:
        return ""


class Identity(Transform):
    """The identity map (``ladj = 0``); a placeholder where a chain needs a layer."""

    def __init__(self, shape, context_features: int = 0):
        super().__init__(_event_shape(shape), context_features)

    def _forward(self, x, context):
        return x, x.new_zeros(x.shape[0])

    def _inverse(self, z, context):
        return z, z.new_zeros(z.shape[0])


LOW_PRECISION = (torch.float16, torch.bfloat16)  # refused as a flow's dtype (Flow._checks)


def _autocasting(t: Tensor) -> bool:
    """Whether ``torch.autocast`` is on for ``t``'s device (never on "meta")."""
    return t.device.type != "meta" and torch.is_autocast_enabled(t.device.type)


# The validate_args of the Flow whose call is running (None: none is, or it has the default), so
# that a layer's own value checks (angles in range, unit vectors) follow the flow's decision.
_FLOW_CHECKS: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "flowforge_flow_checks", default=None
)


# Set while Flow.sample runs its layers' inverses: the log-determinants are thrown away, so a
# layer that pays for its own (a CNF's trace, a residual block's log-det) may skip it and
# return NaN in its place (never a number that looks right).
_SAMPLES_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "flowforge_samples_only", default=False
)


def samples_only() -> bool:
    """Whether the running call wants samples only (:meth:`Flow.sample`, without gradients): a
    layer may then skip the cost of its log-determinant and return NaN for it."""
    return not torch.compiler.is_compiling() and not torch.is_grad_enabled() and _SAMPLES_ONLY.get()


@contextlib.contextmanager
def _sampling_only():
    if torch.compiler.is_compiling():  # (dynamo cannot set a context variable: samples_only()
        yield  # is False there, and the log-determinants are computed)
        return
    token = _SAMPLES_ONLY.set(True)
    try:
        yield
    finally:
        _SAMPLES_ONLY.reset(token)


def checking(t: Tensor) -> bool:
    """Whether a layer should check the values of ``t`` (angles in range, unit vectors...).

    Inside a :class:`Flow` call, the flow's ``validate_args`` when it is set; otherwise only
    for CPU tensors: a check reads values back to the host, which on an accelerator forces a
    synchronisation (the flow's own input scan follows the same rule). Never inside
    ``torch.compile`` or a ``torch.func`` transform (``vmap``, ``grad``...), where a
    data-dependent branch cannot run."""
    if torch.compiler.is_compiling():  # (before the context variable: dynamo cannot read one)
        return False
    return _checks_on(t, _FLOW_CHECKS.get())


def _checks_on(t: Tensor, decided: bool | None) -> bool:
    """Whether values of ``t`` are checked under a ``validate_args``-like decision (None: CPU
    tensors only); never inside a compiled graph or a torch.func transform."""
    if torch.compiler.is_compiling() or functorch_active():
        return False
    return t.device.type == "cpu" if decided is None else bool(decided)


# what torch says when a torch.func transform meets what it cannot transform
_TRANSFORM_WORDS = ("vmap", "functorch", "torch.func", "being transformed", "autograd.Function")


class _Checks:
    """Sets :func:`checking`'s answer to a flow's ``validate_args`` for the call's duration;
    names what a torch.func transform failed on (torch's own message is about its internals)."""

    __slots__ = ("value", "token")

    def __init__(self, value: bool | None):
        self.value, self.token = value, None

    def __enter__(self):
        if self.value is not None:
            self.token = _FLOW_CHECKS.set(bool(self.value))

    def __exit__(self, kind, error, tb):
        if self.token is not None:
            _FLOW_CHECKS.reset(self.token)
        if (
            kind is not None
            and issubclass(kind, RuntimeError)
            and not issubclass(kind, (NotImplementedError, torch.OutOfMemoryError))
            and functorch_active()
            and any(w in str(error) for w in _TRANSFORM_WORDS)
        ):
            first = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(
                f"torch.func (vmap, grad, jacrev) could not transform this flow (torch: "
                f"{first[:160]}): the flows that solve by iteration (Planar and Sylvester under "
                "vmap, residual flows), integrate an ODE (CNF, FFJORD) or recompute in the "
                "backward pass (ff.memory_saving: ff.memory_saving(flow, False) turns it off) "
                "are not transformable; per-example scores come from one "
                "torch.autograd.grad(flow.log_prob(x).sum(), x) in eval mode (each example's "
                "log-density depends on its own row only)"
            ) from error


def integer_limit(dtype: torch.dtype) -> float:
    """The integer magnitude from which ``dtype`` spaces its numbers 1/64 apart or more (2^17
    in float32), too coarse for dequantization noise: :class:`ColumnDequantization` refuses
    integers at or beyond it, and a dequantizer of more levels warns."""
    return 2.0 ** (round(-math.log2(torch.finfo(dtype).eps)) - 6)


def exact_levels(levels: int, dtype: torch.dtype) -> None:
    """``ValueError`` when ``dtype`` cannot tell the ``levels`` integers apart with room to
    spare (above ``2^mantissa``, float32's 2^23, consecutive integers round together or leave
    no room for dequantization noise): a density over them would be another one's."""
    if not dtype.is_floating_point:
        return
    bits = round(-math.log2(torch.finfo(dtype).eps))
    if levels > 2**bits:
        fix = "; move the flow to float64 (flow.double())" if dtype != torch.float64 else ""
        raise ValueError(
            f"{levels:,} levels are more than {dtype} resolves (at most 2^{bits}){fix}"
        )


def _narrows(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether converting ``src`` values to the floating ``dst`` can overflow or round them
    (float64 to float32; int32 or int64 to float32, whose mantissa holds integers up to 2^24,
    and int64 to float64). None overflows; discrete data's range is the levels' check
    (:func:`exact_levels`)."""
    if src == torch.bool:
        return False
    if not src.is_floating_point:
        return torch.iinfo(src).bits - 1 > -math.log2(torch.finfo(dst).eps) + 1
    info, big = torch.finfo(src), torch.finfo(dst)
    return info.bits > big.bits or info.max > big.max


def _check_cast(t: Tensor, out: Tensor, what: str, dtype: torch.dtype, warn: bool) -> bool:
    """A ``ValueError`` when moving ``t`` to ``out``'s dtype turned finite values into inf
    (otherwise reported as "NaN or inf", which the data do not hold). With ``warn``, also a
    ``RuntimeWarning`` when the conversion rounds an entry by more than a hundredth of its
    spread over the batch (coordinates of 1e8 +- 1 in float32: every point becomes the same
    value). A warning, not an error: a batch's spread can be much smaller than the data's (a
    sorted column), and the workbench checks whole columns of a table
    (``workbench.data._check_float32``)."""
    finite = all_finite(t)
    if finite and not all_finite(out):
        big = t.abs().max().item()
        raise ValueError(
            f"{what} holds values beyond the range of the flow's {dtype} (largest magnitude "
            f"{big:.6g}): move the flow to float64 (flow.double()) or rescale the data"
        )
    if not warn or not finite or t.dim() < 2 or t.shape[0] < 2:
        return False  # (the precision not looked at: a later batch is)
    said = precision_lost(t, dtype, out, where="this batch")
    if said is not None:
        _warn(f"{what} {said}", RuntimeWarning)
    return True


PRECISION_ROWS = 4096  # the rows of whole data that precision_lost looks at, evenly spaced


def precision_lost(
    t: Tensor, dtype: torch.dtype, out: Tensor | None = None, where: str = "the data"
) -> str | None:
    """Where converting ``t`` (examples along its first dimension) to ``dtype`` rounds an
    entry by more than a hundredth of its spread over the examples (coordinates of 1e8 +- 1
    in float32: every example becomes one of a few values), the words that say so ("loses its
    precision ..., move the flow to float64"); None where it does not. ``out``: ``t`` already
    converted, if at hand; ``where``: what ``t`` is, as the words say it. Finite values
    only."""
    exact = 2 / torch.finfo(dtype).eps  # (float32: every integer up to 2^24)
    if not t.is_floating_point() and t.numel() and t.abs().max().item() <= exact:
        return None  # integers the dtype holds exactly (pixels): nothing to round
    if t.shape[0] > PRECISION_ROWS:  # (whole data: an even subsample of rows judges it)
        keep = torch.linspace(0, t.shape[0] - 1, PRECISION_ROWS, device=t.device).long()
        t, out = t[keep], (None if out is None else out[keep])
    x = t.double().reshape(t.shape[0], -1)
    back = (t.to(dtype) if out is None else out).double().reshape(t.shape[0], -1)
    spread, size = x.std(0), x.abs().amax(0)
    err = (x - back).abs().amax(0)
    # a spread at float64's own rounding level (0.1 + 0.2 next to 0.3) is a constant entry
    lost = (err > 1e-2 * spread) & (spread > 64 * torch.finfo(torch.float64).eps * size)
    if not bool(lost.any()):
        return None
    i = int(lost.nonzero()[0, 0])
    return (
        f"loses its precision in the flow's {dtype}: entry {i} varies by "
        f"{spread[i].item():.3g} in {where} around {size[i].item():.6g}, and the "
        f"conversion rounds it by up to {err[i].item():.3g}; move the flow to float64 "
        "(flow.double()) or subtract an offset from the data first"
    )


class NonFiniteSamples(ValueError):
    """:meth:`Flow.sample` (or ``rsample_and_log_prob``) in eval mode drew samples, or their
    log-density, that its dtype cannot hold: the inverse or the base overflowed."""


class NaNLogProb(ValueError):
    """:meth:`Flow.log_prob` in eval mode met inputs it can only give NaN (or +inf) for;
    ``rows`` are their first indices in the batch it was given. (-inf is returned: a density
    of zero, or an overflow in the flow's dtype that ``flow.double()`` would show.)"""

    def __init__(self, message: str, rows: list | None = None, lp: Tensor | None = None):
        super().__init__(message)
        self.rows = rows or []
        self.lp = lp  # (the batch's log-densities as computed, NaN rows and all)


class DataInit:
    """Mixin for a layer that initialises itself from the first batch it sees in training mode
    (ActNorm). ``initialized`` is a saved bool buffer; trainers run one forward pass on a fixed
    batch before training when :func:`needs_data_init` is true."""

    initialized: Tensor

    def _waiting(self) -> bool:
        """Whether the layer still waits for its initialisation. Once it has seen itself
        initialised it answers from a Python flag instead of reading the buffer: a read that
        ``torch.compile`` cannot trace (a graph break at every layer) and that an accelerator
        must synchronise for. Loading a state dict makes it read the buffer again."""
        if self.__dict__.get("_seen_initialized", False):
            return False
        if self.initialized.is_meta:  # (no value to read: shapes only)
            raise RuntimeError(
                f"{type(self).__name__} initialises from data, and on device 'meta' there are "
                "none: initialise the flow on a real device first, or call .eval() for shapes "
                "only"
            )
        if bool(self.initialized):
            self.__dict__["_seen_initialized"] = True
            return False
        return True

    def _mark_initialized(self, rows: int | None = None) -> None:
        """Initialised (from a batch of ``rows`` examples, kept as ``init_rows``, which a
        trainer checks: a few rows fix statistics that training cannot mend)."""
        self.initialized.fill_(True)
        self.__dict__["_seen_initialized"] = True
        if rows is not None:
            self.__dict__["init_rows"] = int(rows)

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_seen_initialized", None)
        self.__dict__.pop("init_rows", None)  # (the state loaded is not the batch's)
        out = super()._load_from_state_dict(*args, **kwargs)
        # settle the flag now, eagerly: read first inside torch.compile (a resumed or loaded
        # model compiled afterwards), the buffer would break the graph at every such layer
        if self.initialized.device.type != "meta" and bool(self.initialized):
            self.__dict__["_seen_initialized"] = True
        return out


def needs_data_init(model: nn.Module) -> bool:
    """Whether a layer of ``model`` still waits for its data-dependent initialisation."""
    return any(isinstance(m, DataInit) and m._waiting() for m in model.modules())


def regularization(model: nn.Module) -> Tensor | None:
    """The sum of the :meth:`Transform.regularization` penalties of ``model``'s layers after
    its latest forward pass (None if no layer has one)."""
    total = None
    for m in model.modules():
        if isinstance(m, Transform):
            r = m.regularization()
            if r is not None:
                total = r if total is None else total + r
    return total


def layer_metrics(model: nn.Module) -> dict[str, float]:
    """The sums of the layers' :meth:`Transform.metrics` after the latest forward pass."""
    out: dict[str, float] = {}
    for m in model.modules():
        if isinstance(m, Transform):
            for k, v in m.metrics().items():
                out[k] = out.get(k, 0.0) + float(v)
    return out


# -- the side protocols ---------------------------------------------------------------------------


def checked_transformer(transformer) -> Transformer:
    """``transformer``, refused in one line unless it is a :class:`Transformer` that says how
    many parameters per entry it reads (``params_per_dim``, an integer >= 1)."""
    if not isinstance(transformer, Transformer):
        raise TypeError(
            f"expected an elementwise transformer (a flowforge.core.Transformer such as "
            f"Affine()), got {type(transformer).__name__}"
        )
    p = transformer.params_per_dim
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(
            f"{type(transformer).__name__}.params_per_dim is {p!r}: a transformer sets how "
            "many parameters it reads per entry (an integer >= 1), which sizes its conditioner"
        )
    return transformer


class Transformer(nn.Module):
    r"""An elementwise transformer: the invertible scalar map that a coupling or autoregressive
    layer applies to each transformed dimension.

    Its per-entry parameters, ``params`` of shape ``(*x.shape, params_per_dim)``, come from a
    conditioner; it may hold weights of its own, shared by every entry (the integrand network
    of :class:`~flowforge.transforms.UnconstrainedMonotonic`), which the layer holding it
    registers, saves and moves like its conditioner's. Each method returns ``(y, ladj)`` with
    ``ladj`` elementwise, the shape of ``x``. All-zero parameters must give the identity, so
    that a conditioner with a zero-initialised last layer starts its layer as the identity;
    a transformer whose parameters are exchangeable (a mixture's components) cannot both do
    that and let them come apart (they would start equal and stay equal), and sets
    ``identity_at_zero`` False (:class:`~flowforge.transforms.LogisticMixture`).

    Subclasses set ``params_per_dim`` and implement :meth:`forward` (data to noise) and
    :meth:`inverse`.
    """

    params_per_dim: int = 0

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Dequantizer(nn.Module):
    r"""Turns discrete data ``x`` in ``{0, ..., levels - 1}`` into continuous ``y = x + u`` with
    ``u`` in ``[0, 1)^D``, and back.

    ``dequantizer(x, context) -> (y, log q(u | x))``; the :class:`Flow` subtracts ``log q``,
    so its ``log_prob`` is a lower bound on the discrete log-likelihood. :meth:`quantize` maps a
    continuous sample back to the grid. Subclasses implement :meth:`_dequantize`; the public
    call checks the data first (:meth:`check`).

    Args:
        levels: number of discrete levels (None: integers of any size, for a subclass that
            dequantizes some entries only, :class:`~flowforge.transforms.ColumnDequantization`).
        context_features: size of the context it reads (0: none).
    """

    def __init__(self, levels: int | None, context_features: int = 0):
        super().__init__()
        if levels is not None and (
            isinstance(levels, bool) or not isinstance(levels, int) or levels < 2
        ):
            raise ValueError(f"expected levels to be an integer >= 2, got {levels!r}")
        self.levels = levels
        self.context_features = checked_int("context_features", context_features, 0)

    def check(self, x: Tensor) -> None:
        """``ValueError`` unless ``x`` holds integers in ``[0, levels - 1]`` that ``x``'s dtype
        resolves. Above 2^17 levels in float32 (numbers 1/64 apart there) the dequantization
        noise rounds onto a few values and some of it onto the next level's bin, so the NLL is
        no longer quite a bound: said once (a warning, so that models trained so still score)."""
        exact_levels(self.levels, x.dtype)
        if x.dtype.is_floating_point and not self.__dict__.get("_coarse_said"):
            limit = int(integer_limit(x.dtype))
            if self.levels > limit:
                self.__dict__["_coarse_said"] = True
                fix = (
                    "; move the flow to float64 (flow.double())" if x.dtype != torch.float64 else ""
                )
                _warn(
                    f"{self.levels:,} levels are more than {x.dtype} resolves with "
                    f"dequantization noise (at most {limit:,}): the noise rounds onto a few values "
                    f"near the top levels, and the NLL is not quite a bound there{fix}",
                    RuntimeWarning,
                )
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > self.levels - 1:
            raise ValueError(
                f"expected discrete data in [0, {self.levels - 1}] ({self.levels} levels), "
                f"got values in [{lo:.10g}, {hi:.10g}]"
            )
        if not torch.equal(x, x.floor()):
            raise ValueError(
                f"expected integer-valued data for {self.levels}-level dequantization, "
                "got non-integer values"
            )

    def forward(
        self, x: Tensor, context: Tensor | None = None, validate: bool = True
    ) -> tuple[Tensor, Tensor]:
        # validate=False skips the range check (which reads the values back to the host):
        # Flow passes its own validate_args decision, so that on an accelerator a training
        # step does not wait on the device for it
        if validate:
            self.check(x)
        return self._dequantize(x, context)

    def _dequantize(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def off_grid(self, y: Tensor) -> Tensor:
        """Where a continuous sample's floor falls off the grid (mass the discrete model leaves
        out, which :meth:`quantize` clamps)."""
        return (y < 0) | (y >= self.levels)

    def clamped_share(self, y: Tensor) -> Tensor:
        """The share of a continuous sample's values that :meth:`quantize` clamps."""
        return self.off_grid(y).float().mean()

    def quantize(self, y: Tensor) -> Tensor:
        """A continuous sample back to the grid: floor, then clamp to ``[0, levels - 1]``."""
        return y.floor().clamp_(0, self.levels - 1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class Distribution(nn.Module):
    r"""A base distribution over ``event_shape``, optionally conditional on a context.

    Subclasses implement ``log_prob(z, context=None) -> (batch,)`` and
    ``_sample(n, context, temperature)``; :meth:`sample` (no gradient) and
    :meth:`rsample_and_log_prob` (differentiable) are built on them. With a context of shape
    ``(n, c)``, ``n`` must equal the context's batch size: the :class:`Flow` expands contexts
    before it calls the base. Samples come out on the device and dtype of the base's parameters
    or buffers, so ``.to(...)`` is all a user does.

    Args:
        event_shape: shape of one sample (an int for vectors).
        context_features: size of the context, 0 for unconditional.

    Class attributes:
        has_rsample: ``True`` where :meth:`rsample_and_log_prob`'s samples carry the gradient
            of every parameter (reparameterised, as ``torch.distributions`` means it); a
            mixture, whose component choice is discrete, says ``False``.
    """

    has_rsample: bool = True

    def __init__(self, event_shape, context_features: int = 0):
        super().__init__()
        self.event_shape = _event_shape(event_shape, "event_shape")
        self.features = math.prod(self.event_shape)
        self.context_features = checked_int("context_features", context_features, 0)
        # A constant to take device and dtype from; not saved, so checkpoints stay portable.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _n(self, n: int, context: Tensor | None) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"expected a number of samples n >= 0 (an integer), got {n!r}")
        self._context(context)
        if context is not None and context.shape[0] != n:
            raise ValueError(f"expected a context with {n} rows, got {context.shape[0]}")
        return n

    def _context(self, context: Tensor | None) -> None:
        # (an unconditional base is given the flow's context too, for its layers: ignored)
        if self.context_features and context is None:
            raise ValueError(
                f"this base is conditional: expected a context of {self.context_features} "
                "features per row"
            )

    def _check(self, z: Tensor, context: Tensor | None) -> None:
        """For a base used directly: ``z`` of shape ``(batch, *event_shape)`` and the context
        it takes (a wrong shape would broadcast into a wrong number). Shapes only: no value is
        read."""
        if not isinstance(z, Tensor) or tuple(z.shape[1:]) != self.event_shape or z.dim() < 1:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            shape = ", ".join(map(str, self.event_shape))
            raise ValueError(f"expected z of shape (batch, {shape}), got {got}")
        self._context(context)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        ok = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if not (ok and 0 <= temperature < math.inf):
            raise ValueError(f"expected a temperature >= 0 and finite, got {temperature!r}")
        with torch.no_grad():
            m = self._n(n, context)
            return self._drawn(self._sample(m, context, temperature), m)

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None):
        m = self._n(n, context)
        z = self._drawn(self._sample(m, context, 1.0), m)
        return z, self.log_prob(z, context)

    def _drawn(self, z: Tensor, n: int) -> Tensor:
        """``_sample``'s draws, checked against the contract (``(n, *event_shape)``, in the
        dtype and on the device of the base's buffers): a base of one's own that breaks it is
        named here, not by the first layer's matrix product."""
        a = self._anchor
        if isinstance(z, Tensor) and z.shape == (n, *self.event_shape) and z.device == a.device:
            if z.dtype == a.dtype or (z.is_floating_point() and _autocast(z.device.type)):
                return z  # (under torch.autocast a network's draws come in its dtype: allowed)
        got = (
            f"{_fmt(z.shape)} {str(z.dtype).removeprefix('torch.')} on {z.device}"
            if isinstance(z, Tensor)
            else type(z).__name__
        )
        raise ValueError(
            f"{type(self).__name__}._sample gave {got}, expected "
            f"{_fmt((n, *self.event_shape))} {str(a.dtype).removeprefix('torch.')} on "
            f"{a.device} (the base's buffers' dtype and device: create draws with "
            "dtype=self._anchor.dtype, device=self._anchor.device)"
        )

    def rsample_with_choice(self, n: int, context: Tensor | None = None):
        """``(z, log_prob, choice)``: :meth:`rsample_and_log_prob`, and for a base whose
        sampling makes a discrete choice (a mixture's component) the log-probability of the
        choices made, differentiable, shape ``(n,)``; ``None`` for a continuous base. A
        discrete choice is not reparameterisable: :func:`flowforge.reverse_kl` adds the
        score-function term it needs for the choice's parameters (the mixture weights)."""
        z, log_prob = self.rsample_and_log_prob(n, context)
        return z, log_prob, None

    def extra_repr(self) -> str:
        s = f"event_shape={self.event_shape}"
        return s + (f", context_features={self.context_features}" if self.context_features else "")


SAMPLE_CHUNK = 4096  # rows a flow's sample maps through its transform per call


def _rows(t: Tensor | None, start: int, n: int) -> Tensor | None:
    """Rows ``start`` to ``start + n`` of ``t`` (None stays None: no context)."""
    return None if t is None else t[start : start + n]


def _labels(context: Tensor, classes: int) -> bool:
    """Whether ``context`` holds only integers in ``[0, classes)`` (an error path's read)."""
    try:
        return bool(((context >= 0) & (context < classes) & (context == context.round())).all())
    except (RuntimeError, NotImplementedError):  # (a meta tensor: no values, no hint)
        return False


class Flow(nn.Module):
    r"""A base distribution pushed through an invertible transform.

    ``log_prob(x) = base.log_prob(transform(x)) + log|det d transform / dx|``. With a
    ``dequantizer`` the flow models discrete data: ``log_prob`` adds dequantization noise and
    returns the variational bound ``log p(x + u) - log q(u | x)`` on the discrete log-likelihood,
    in the data's own units, and ``sample`` returns values on the data's grid.

    Args:
        transform: data-to-noise :class:`Transform`, or a list of them applied in order (one
            :class:`Compose`, as zuko and nflows take a flow's layers).
        base: a base distribution over ``transform.output_shape`` (see
            :mod:`flowforge.distributions`).
        dequantizer: optional, e.g. :class:`~flowforge.transforms.UniformDequantization`.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.RealNVP(features=4, layers=2, hidden=(16,))
        >>> flow.log_prob(torch.randn(8, 4)).shape
        torch.Size([8])
        >>> flow.sample(3).shape
        torch.Size([3, 4])
    """

    #: a ``torch.distributions.constraints`` constraint the flow's samples lie in, where its
    #: builder knows a narrower one than the real vectors (a manifold's); ``as_torch`` reports it
    support = None

    # a dequantizing flow's fraction of the last sample()'s values drawn outside the data's
    # levels and clamped, as a 0-d tensor on the flow's device (float() it to read)
    clamped: Tensor | float = 0.0
    # for integer columns (a column dequantizer), the same share for each column of the vector
    # (0 for the continuous ones), a ``(features,)`` tensor; None otherwise
    clamped_columns: Tensor | None = None

    def __init__(
        self,
        transform: Transform | Sequence[Transform],
        base: Distribution,
        dequantizer: Dequantizer | None = None,
    ):
        super().__init__()
        if isinstance(transform, (list, tuple)):  # zuko's and nflows' form: layers in order
            if not transform or not all(isinstance(t, Transform) for t in transform):
                raise TypeError(
                    "expected transform to be a flowforge Transform or a non-empty list of them "
                    f"(applied in order, as Compose), got {_listed(transform)}"
                )
            transform = Compose(*transform)
        if isinstance(base, torch.distributions.Distribution):
            raise TypeError(
                f"expected base to be a flowforge Distribution, got the torch distribution "
                f"{type(base).__name__}: wrap it as flowforge.distributions.TorchBase(factory, "
                "**tensors), a function that builds it from tensors the base holds "
                '(docs/extending.md, "Bases from torch.distributions")'
            )
        _check_type("transform", transform, Transform)
        _check_type("base", base, Distribution)
        _check_type("dequantizer", dequantizer, (Dequantizer, type(None)))
        if tuple(base.event_shape) != transform.output_shape:
            raise ValueError(
                f"the base is over shape {tuple(base.event_shape)} but the transform outputs "
                f"{transform.output_shape}"
            )
        if len(transform.context_shape) > 1:
            raise ValueError(
                f"a flow's context is a vector, but the transform reads a context of shape "
                f"{transform.context_shape}"
            )
        cf = {transform.context_features, base.context_features} - {0}
        if dequantizer is not None:
            cf |= {dequantizer.context_features} - {0}
        if len(cf) > 1:
            raise ValueError(f"transform and base read different context sizes: {sorted(cf)}")
        self.transform = transform
        self.base = base
        self.dequantizer = dequantizer
        self.context_features = cf.pop() if cf else 0
        self.event_shape = transform.event_shape
        self.config: dict | None = None  # set by the builders in flowforge.models; used by ff.save
        # a fixed map of raw contexts onto the layers' scale (models.context_standardized)
        self.context_map: nn.Module | None = None

    def extra_repr(self) -> str:
        """The first line a notebook shows: the model, its event shape, its context and the
        number of parameters (the layers follow, as torch lists them)."""
        model = self.config.get("model") if isinstance(self.config, dict) else None
        parts = [str(model)] if isinstance(model, str) else []
        parts.append(f"event_shape={tuple(self.event_shape)}")
        if self.context_features:
            parts.append(f"context_features={self.context_features}")
        parts.append(f"{sum(p.numel() for p in self.parameters()):,} parameters")
        return ", ".join(parts)

    def __setstate__(self, state):  # (flows pickled before the context map existed)
        if "context_map" not in state.get("_modules", {}):
            state.setdefault("context_map", None)
        super().__setstate__(state)

    # Scan inputs and contexts for NaN/inf, and discrete data for its range (the dequantizer's
    # check): a clear ValueError instead of a NaN or a wrong bound. None:
    # on CPU tensors, where the scan is one cheap reduction; skipped on accelerators, where it
    # would force a host synchronisation every call. True/False: always/never (per instance or
    # on the class, as torch.distributions' validate_args). Never inside torch.compile or a
    # torch.func transform (vmap, grad...).
    validate_args: bool | None = None

    def _validating(self, t: Tensor) -> bool:
        return _checks_on(t, self.validate_args)

    def _checks(self) -> _Checks | contextlib.nullcontext:
        """A context in which the layers' own value checks follow ``validate_args``; refuses
        a half-precision flow first. Inside ``torch.compile`` it sets nothing (dynamo cannot
        trace a context variable, and :func:`checking` is False there anyway)."""
        if torch.compiler.is_compiling():
            return contextlib.nullcontext()  # (the one context dynamo enters without a break)
        if self.dtype in LOW_PRECISION:
            raise ValueError(
                f"flowforge computes densities in float32 or float64, and this flow is "
                f"{self.dtype}: its log-densities would be off by up to a nat and overflow at "
                "|z| of a few hundred; move it with flow.float() (for mixed-precision training, "
                "keep the weights in float32 under torch.autocast, and score in float32)"
            )
        return _Checks(self.validate_args)

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point dtype of the flow's weights (inputs are converted to it)."""
        return self.base._anchor.dtype

    # -- checks ------------------------------------------------------------------------------
    def _as_input(self, t: Tensor, what: str) -> Tensor:
        """``t`` in the flow's dtype. Floating, integer and bool inputs are converted (so a
        float64 tensor, integer pixel values or a float16 batch just work, where validating,
        unless the conversion would overflow or round the data's variation away); complex
        inputs are refused."""
        if not isinstance(t, Tensor):
            raise TypeError(f"expected {what} to be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise ValueError(f"expected a real-valued {what} ({self.dtype}), got {t.dtype}")
        if t.dtype == self.dtype:
            return t
        out = t.to(self.dtype)
        if self._validating(t) and _narrows(t.dtype, self.dtype) and t.numel():
            # the precision warning once per flow (a few reductions; overflow every call)
            # the precision checked until one batch of each input (x, context) was looked at
            # (a batch of one row has no spread to lose): then only overflow, every call
            looked = self.__dict__.setdefault("_cast_looked", set())
            if _check_cast(t, out, what, self.dtype, what not in looked):
                looked.add(what)
        return out

    def _prepare(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None, tuple]:
        """Validate ``x`` and ``context``; flatten any batch shape to one dimension (one
        example without a batch dimension, as ``sample(())`` draws it, has the batch shape
        ``()``)."""
        x = self._as_input(x, "x")
        k = len(self.event_shape)
        if x.dim() < k or tuple(x.shape[x.dim() - k :]) != self.event_shape:
            raise ValueError(
                f"expected x of shape (*batch, {', '.join(map(str, self.event_shape))}), "
                f"got {_fmt(x.shape)}"
            )
        batch = tuple(x.shape[: x.dim() - k])
        if self._validating(x) and not all_finite(x):
            _refuse_nonfinite(x, batch, "x")
        x = x.reshape(-1, *self.event_shape)
        context = self._check_context(context, batch)
        return x, context, batch

    def _check_as_given(self, given: Tensor, x: Tensor) -> None:
        """A dequantizer's check of the values as given, before :meth:`_prepare` narrowed them
        to the flow's dtype (a cast to float32 rounds 16.0000001 onto the grid)."""
        if (
            self.dequantizer is not None
            and isinstance(given, Tensor)
            and given.is_floating_point()
            and torch.finfo(given.dtype).bits > torch.finfo(x.dtype).bits
            and self._validating(x)
        ):
            self.dequantizer.check(given.reshape(-1, *self.event_shape))

    def _check_context(self, context: Tensor | None, batch: tuple) -> Tensor | None:
        c = self.context_features
        if c == 0:
            if context is not None:
                raise ValueError(
                    "this flow is unconditional (context_features=0) but a context was given"
                )
            return None
        if context is None:
            raise ValueError(
                f"this flow is conditional and expects a context of shape (*batch, {c}), got None"
            )
        if (
            self.context_map is not None
            and isinstance(context, Tensor)
            and not context.is_complex()
            and context.shape[-1:] == (c,)
        ):  # raw contexts, standardised before any narrowing to the flow's dtype
            raw, context = context, self.context_map(context, self.dtype)
            if self._validating(context) and not all_finite(context) and all_finite(raw):
                big = raw.abs().max().item()
                raise ValueError(
                    f"the context, standardised with the flow's statistics (context_map), "
                    f"overflows {self.dtype} (largest value given {big:.6g}): a context this "
                    "far from the training contexts is far outside what the flow was trained on"
                )
        context = self._as_input(context, "context")
        if context.shape[-1:] == (c,) and batch and tuple(context.shape[:-1]) != batch:
            try:  # broadcast as torch.distributions does: (c,) or (B, c) against x's (n, B)
                context = context.expand(*batch, c)
            except RuntimeError:
                pass  # (refused below, with the shape it needs)
        if context.shape[-1:] != (c,) or tuple(context.shape[:-1]) != batch:
            want = ", ".join(map(str, (*batch, c))) + ("," if not batch else "")
            hint = ""
            one_column = context.dim() == 1 or (context.dim() > 1 and context.shape[-1] == 1)
            if c > 1 and one_column and context.numel() and _labels(context, c):
                hint = (
                    f" (class labels? a label-conditional flow takes one-hot rows: "
                    f"torch.nn.functional.one_hot(labels, {c}).float())"
                )
            elif c == 1 and batch and tuple(context.shape) == batch:  # (as zuko and nflows take)
                index = "[:, None]" if len(batch) == 1 else "[..., None]"
                hint = f"; one scalar context per row? give context{index}, shape ({want})"
            raise ValueError(f"expected context of shape ({want}), got {_fmt(context.shape)}{hint}")
        if self._validating(context) and not all_finite(context):
            _refuse_nonfinite(context, batch, "context")
        return context.reshape(-1, c)

    # -- density -----------------------------------------------------------------------------
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of ``x`` of shape ``(*batch, *event_shape)``; returns ``(*batch,)``.

        With a dequantizer, a one-sample bound on the discrete log-likelihood.
        """
        given = x
        x, context, batch = self._prepare(x, context)
        if not x.shape[0]:  # an empty batch: no layer needs to see it
            return self._empty_log_prob(batch, x, context)
        self._check_as_given(given, x)
        log_q = 0.0
        with self._checks():
            if self.dequantizer is not None:
                x, log_q = self.dequantizer(x, context, validate=self._validating(x))
            z, ladj = self.transform(x, context)
            base_lp = self.base.log_prob(z, context)
            if base_lp.shape != z.shape[:1]:  # (a shape check: nothing read from the device)
                raise ValueError(
                    f"the base {type(self.base).__name__}.log_prob returned shape "
                    f"{tuple(base_lp.shape)} for {z.shape[0]} points; expected "
                    f"({z.shape[0]},), one number per point (sum over the event's dimensions)"
                )
            lp = base_lp + ladj - log_q
        return self._scored(x, lp.reshape(batch))

    def _empty_log_prob(self, batch: tuple[int, ...], *inputs: Tensor | None) -> Tensor:
        """The log-density of an empty batch: zeros of shape ``batch`` that still hang on the
        parameters and on any input that requires a gradient, so that ``backward()`` of its
        loss gives zero gradients, as in ``torch.distributions``, not autograd's "does not
        require grad"."""
        out = inputs[0].new_zeros(batch, dtype=self.dtype)
        if torch.is_grad_enabled():
            for t in (*self.parameters(), *inputs):
                if t is not None and t.requires_grad:
                    out = out + t.reshape(-1)[:0].sum().to(out.dtype)
        return out

    def _scored(self, x: Tensor, lp: Tensor) -> Tensor:
        """``lp``, or a :class:`NaNLogProb` naming the rows where it is NaN (inputs so far from
        the data that the layers overflow): in eval mode with validation on, never a silent NaN.
        In training mode a NaN goes on to the loss, where the trainer finds the layer that made
        it."""
        if self.training or not self._validating(x) or all_finite(lp):
            return lp
        wrong = lp.isnan() | (lp == math.inf)  # -inf is a density of zero (a bounded support)
        if not bool(wrong.any()):
            return lp
        bad = wrong.reshape(-1).nonzero().flatten()[:5].tolist()
        what = "NaN" if bool(torch.isnan(lp).any()) else "+inf"
        broken = self.broken_tensor()
        if broken is not None:  # the model, not the inputs
            raise NaNLogProb(
                f"the model's log-density is {what} for batch rows {bad}: {broken}", bad, lp
            )
        remedy = (
            "remove them"
            if lp.dtype == torch.float64
            else "score them in float64 (flow.double()), or remove them"
        )
        raise NaNLogProb(
            f"the model's log-density is {what} for batch rows {bad} (inputs this far from "
            f"the training data overflow its {lp.dtype} layers); {remedy}",
            bad,
            lp,
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as :meth:`log_prob`, so DDP and hooks see a module call."""
        return self.log_prob(x, context)

    # -- sampling ----------------------------------------------------------------------------
    @staticmethod
    def _sample_shape(n) -> tuple[int, ...]:
        """``n`` as a sample shape: an int-like (a Python or numpy integer, a 0-d integer tensor)
        or a sequence of them (``(n,)``, ``torch.Size([n])``, ``(a, b)``), as torch accepts."""
        items = list(n) if isinstance(n, (tuple, list, torch.Size)) else [n]
        try:
            if any(isinstance(i, bool) for i in items):
                raise TypeError
            shape = tuple(operator.index(i) for i in items)
        except TypeError:
            raise ValueError(
                f"expected a number of samples n >= 0: an integer (or a tuple of integers, a "
                f"sample shape), got {n!r}"
            ) from None
        if any(i < 0 for i in shape):
            raise ValueError(f"expected a number of samples n >= 0, got {n!r}")
        return shape

    def _sample_context(self, n, context: Tensor | None) -> tuple[Tensor | None, tuple]:
        sample_shape = self._sample_shape(n)
        k = math.prod(sample_shape)
        if context is None:
            self._check_context(None, ())
            return None, sample_shape
        if not isinstance(context, Tensor):
            raise TypeError(f"expected context to be a torch.Tensor, got {type(context).__name__}")
        if context.dim() == 1:
            c = self.context_features
            if c and context.shape[0] != c:  # (said as given, not as reshaped below)
                hint = (
                    f"; one scalar context per row? give context[:, None], shape "
                    f"({context.shape[0]}, 1), for {context.shape[0]} rows of samples"
                    if c == 1
                    else ""
                )
                raise ValueError(
                    f"expected a context of shape ({c},) (one for all samples) or (B, {c}) "
                    f"(n samples for each of B rows), got ({context.shape[0]},){hint}"
                )
            context = context.unsqueeze(0)
            batch: tuple = ()
        else:
            batch = tuple(context.shape[:-1])
        context = self._check_context(context, tuple(context.shape[:-1]))
        b = context.shape[0]
        ctx = context.unsqueeze(0).expand(k, b, -1).reshape(k * b, context.shape[1])  # k may be 0
        return ctx, (*sample_shape, *batch)

    @torch.no_grad()
    def sample(self, n, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """Draw ``n`` samples.

        Returns ``(n, *event_shape)``; ``n`` may also be a sample shape (``(a, b)`` gives
        ``(a, b, *event_shape)``). With a context of shape ``(B, c)`` (or ``(*batch, c)``),
        returns ``(n, B, *event_shape)``: ``n`` samples for each context row, drawn in one
        vectorised call. A context of shape ``(c,)`` gives ``(n, *event_shape)``.
        ``temperature`` (finite, >= 0) scales the base noise (Glow's "temperature").
        The base draws every sample at once; the transform maps them ``SAMPLE_CHUNK`` (4,096)
        at a time, so that memory is the output's and one chunk's (a 10-D MAF's
        ``sample(300_000)`` in one pass held 1.45 GB, and took 2.6 times as long).
        """
        if (
            isinstance(temperature, bool)
            or not (
                isinstance(temperature, (int, float))
                and math.isfinite(temperature)
                and temperature >= 0
            )
            or temperature > torch.finfo(self.dtype).max
        ):
            raise ValueError(
                f"expected a temperature >= 0 and finite in the flow's {self.dtype}, got "
                f"{temperature!r}"
            )
        ctx, shape = self._sample_context(n, context)
        if not math.prod(shape):  # no samples: no layer needs to run
            anchor = self.base._anchor
            return anchor.new_zeros(*shape, *self.event_shape)
        with self._checks(), _sampling_only():
            z = self.base.sample(math.prod(shape), ctx, temperature=temperature)
            xs = [  # (log-determinants unused: see samples_only)
                self.transform.inverse(z[i : i + SAMPLE_CHUNK], _rows(ctx, i, SAMPLE_CHUNK))[0]
                for i in range(0, len(z), SAMPLE_CHUNK)
            ]
            x = xs[0] if len(xs) == 1 else torch.cat(xs)
            if self.dequantizer is not None:
                # the continuous draws whose floor falls off the grid (mass the discrete model
                # leaves out): counted as the integer flows count theirs, then clamped
                shares = getattr(self.dequantizer, "clamped_shares", None)  # (by column too)
                if shares is not None and x.dim() == 2 and x.numel():
                    self.clamped, self.clamped_columns = shares(x)
                else:
                    self.clamped = self.dequantizer.clamped_share(x) if x.numel() else 0.0
                x = self.dequantizer.quantize(x)
        self._check_samples(x)
        return x.reshape(*shape, *self.event_shape)

    def broken_tensor(self) -> str | None:
        """Which of the model's own tensors holds NaN or inf, said as the errors say it (None
        when every one is finite): a non-finite result is then the model's, not its inputs'
        or its dtype's."""
        name = next(
            (
                n
                for n, t in self.state_dict().items()
                if t.is_floating_point() and not all_finite(t)
            ),
            None,
        )
        if name is None:
            return None
        return (
            f"its own tensor {name!r} holds NaN or inf (training diverged, or its weights were "
            "damaged)"
        )

    def _check_samples(self, x: Tensor) -> None:
        """A ``ValueError`` naming the rows where samples came out NaN or inf (the inverse
        overflowed), where the flow validates (``validate_args``): never a silent NaN."""
        if not self._validating(x) or all_finite(x):
            return
        bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero().flatten()[:5]
        broken = self.broken_tensor()
        if broken is not None:
            raise NonFiniteSamples(
                f"the model's samples are NaN or infinite in rows {bad.tolist()}: {broken}"
            )
        raise NonFiniteSamples(
            f"the model's samples are NaN or infinite in rows {bad.tolist()} (its inverse "
            f"overflows {x.dtype}: a high temperature, or a flow trained too little or too "
            "far); sample in float64 (flow.double()), or at a lower temperature"
        )

    def rsample(self, n, context: Tensor | None = None) -> Tensor:
        """Differentiable samples (reparameterised through the base and the flow), shaped as
        :meth:`sample` gives them; continuous (any dequantizer is ignored)."""
        return self._rsample(n, context, log_q_checked=False)[0]

    def rsample_and_log_prob(self, n, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Differentiable samples and their log-density, for reverse-KL / variational inference.

        Returns ``(x, log_q)`` with shapes ``(n, *event_shape)`` and ``(n,)`` (``(n, B, ...)``
        and ``(n, B)`` with a ``(B, c)`` context). Ignores any dequantizer: the samples are
        continuous. A mixture base's component choice is discrete: no gradient reaches its
        weights through these samples (a loss's gradient in them has expectation zero), and
        :func:`flowforge.reverse_kl` adds the score-function term that trains them.
        """
        return self._rsample(n, context, log_q_checked=True)[:2]

    @torch.no_grad()
    def sample_and_log_prob(self, n, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Samples and their log-density in one pass, without gradients (nflows' name):
        :meth:`rsample_and_log_prob` under ``torch.no_grad()``, shaped as it is, continuous
        (any dequantizer is ignored). A layer waiting for its data initialisation keeps waiting.
        """
        return self._rsample(n, context, log_q_checked=True)[:2]

    def as_torch(self, context: Tensor | None = None, support=None):
        """This flow as a ``torch.distributions.Distribution`` (a
        :class:`~flowforge.torch_distributions.FlowDistribution`), for code written against
        that interface: ``log_prob``, ``sample`` and ``rsample`` are the flow's, ``batch_shape``
        the leading shape of ``context`` (``(B,)`` for ``(B, c)``). ``support`` declares a
        ``torch.distributions.constraints`` support: by default the flow's own ``support``
        where its builder set one (angles for ``TorusFlow``, unit vectors for
        ``SphereFlow``), else the real vectors."""
        from .torch_distributions import FlowDistribution

        return FlowDistribution(self, context, support)

    def _rsample(self, n, context, log_q_checked: bool):
        """``(x, log_q, choice)``: ``choice`` the log-probability of the base's discrete choices
        (:meth:`Distribution.rsample_with_choice`) shaped as ``log_q``, None for a continuous
        base."""
        ctx, shape = self._sample_context(n, context)
        if not math.prod(shape):  # no samples: no layer needs to run (nor initialise)
            anchor = self.base._anchor
            return anchor.new_zeros(*shape, *self.event_shape), anchor.new_zeros(shape), None
        with self._checks():
            z, log_pz, choice = self.base.rsample_with_choice(math.prod(shape), ctx)
            x, ladj = self.transform.inverse(z, ctx)
        log_q = log_pz - ladj
        if not self.training:  # in training (reverse KL) a NaN goes on to the loss's checks
            self._check_samples(x)
            if log_q_checked and self._validating(x) and not all_finite(log_q):
                bad = (~torch.isfinite(log_q)).nonzero().flatten()[:5].tolist()
                said = (
                    f"the log-density of the model's own samples is NaN or infinite in rows {bad}"
                )
                broken = self.broken_tensor()
                if broken is not None:
                    raise NonFiniteSamples(f"{said}: {broken}")
                raise NonFiniteSamples(
                    f"{said} (its base or layers overflow {x.dtype} there); sample in float64 "
                    "(flow.double())"
                )
        choice = None if choice is None else choice.reshape(shape)
        return x.reshape(*shape, *self.event_shape), log_q.reshape(shape), choice

    # -- metrics -----------------------------------------------------------------------------
    @property
    def dims(self) -> int:
        return math.prod(self.event_shape)

    def nll(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood in nats per example. A metric: no examples, or a NaN
        or infinite mean (a log-density that overflows, in training mode too, where
        :meth:`log_prob` leaves NaN to the loss), is a ``ValueError`` where the flow validates
        (``validate_args``); for a training loss use ``-log_prob(x).mean()``."""
        if isinstance(x, Tensor) and x.dim() > len(self.event_shape) and not x.shape[0]:
            raise ValueError("expected at least one example, got an empty batch")
        out = -self.log_prob(x, context).mean()
        if self._validating(out) and not all_finite(out):
            raise ValueError(
                f"the mean NLL is {out.item()}: the model's log-density of some examples is NaN "
                "or infinite (score them in eval mode to have the rows named)"
            )
        return out

    def bits_per_dim(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean NLL in bits per dimension (needs a dequantizer, i.e. discrete data)."""
        if self.dequantizer is None or self.dequantizer.levels is None:
            raise ValueError(
                "bits/dim is defined for discrete data: build the flow with levels=..., "
                "or use ff.bits_per_dim(flow, x, levels=...)"
            )
        return self.nll(x, context) / (self.dims * math.log(2))
