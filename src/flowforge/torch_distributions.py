r"""Interoperability with ``torch.distributions``, both ways.

- :class:`TorchBase`: a ``torch.distributions.Distribution`` as a flow's base. It is built by a
  function of tensors the base registers (``nn.Parameter`` to train, any other tensor a
  buffer), so training, ``.to()``, ``.double()``, ``state_dict`` and ``ff.save`` see them.
- :class:`FlowDistribution` (``flow.as_torch()``): a :class:`~flowforge.core.Flow` seen as a
  ``torch.distributions.Distribution``, for code written against that interface
  (``Independent``, ``TransformedDistribution``, Monte Carlo KL estimates, pyro-like code).

Example:
    >>> from torch import nn
    >>> from torch.distributions import Independent, Normal
    >>> base = TorchBase(
    ...     lambda loc, log_scale: Independent(Normal(loc, log_scale.exp()), 1),
    ...     loc=nn.Parameter(torch.zeros(2)),
    ...     log_scale=nn.Parameter(torch.zeros(2)),
    ... )
    >>> flow = ff.Flow(ff.transforms.Scaling(2), base)
    >>> flow.log_prob(torch.randn(5, 2)).shape
    torch.Size([5])
    >>> q = flow.as_torch()
    >>> q.log_prob(q.rsample((3,))).shape
    torch.Size([3])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution as TorchDistribution
from torch.distributions import Independent, MixtureSameFamily, constraints, register_kl

from .core import Distribution, Flow, _fmt

__all__ = ["TorchBase", "FlowDistribution", "angles", "unit_vectors"]

_NO_SAMPLE_SHAPE = torch.Size()  # (one draw, as torch's default)

_EXAMPLE = "TorchBase(lambda loc, scale: Independent(Normal(loc, scale), 1), loc=..., scale=...)"


def _checked(dist, event_shape: tuple[int, ...] | None = None) -> TorchDistribution:
    """``dist`` if it can be a flow's base (one continuous distribution over a non-scalar
    event, of ``event_shape`` where given), else a one-line error."""
    if not isinstance(dist, TorchDistribution):
        raise TypeError(
            f"expected TorchBase's factory to return a torch.distributions.Distribution, got "
            f"{type(dist).__name__}"
        )
    name = type(dist).__name__
    if dist.batch_shape:
        k = len(dist.batch_shape)
        raise ValueError(
            f"the torch distribution {name} has batch shape {_fmt(dist.batch_shape)}, and a "
            f"flow's base is one distribution over the whole event: make those dimensions "
            f"event dimensions with torch.distributions.Independent(dist, {k})"
        )
    if not dist.event_shape:
        raise ValueError(
            f"the torch distribution {name} is over a scalar (event shape ()), and a flow's "
            "base is over (D,) at least: build it from tensors of shape (1,) and wrap it in "
            "torch.distributions.Independent(dist, 1)"
        )
    if event_shape is not None and tuple(dist.event_shape) != event_shape:
        raise ValueError(
            f"TorchBase's factory now returns a distribution over {_fmt(dist.event_shape)}, "
            f"and the base was built over {_fmt(event_shape)}"
        )
    return dist


def _mixture_log_prob(mix: MixtureSameFamily, z: Tensor) -> Tensor:
    """A mixture's ``log p(z)`` with each component's density set to zero outside that
    component's own support (torch's check asks a point to lie in every component's)."""
    comp = mix.component_distribution
    x = z.unsqueeze(-1 - len(mix.event_shape))  # (a component axis, as torch pads it)
    lp = comp.log_prob(x)
    inside = comp.support.check(x)  # (a support without parameters: not per component)
    while inside.dim() > lp.dim():
        inside = inside.all(-1)
    inside = torch.broadcast_to(inside, lp.shape)
    lp = torch.where(inside, lp, lp.new_tensor(-math.inf))
    weights = torch.log_softmax(mix.mixture_distribution.logits, -1)
    return torch.logsumexp(lp + weights, -1)


def _holds_mixture(dist: TorchDistribution, depth: int = 0) -> bool:
    """Whether ``dist`` holds a ``MixtureSameFamily`` (whose support check is not per point)."""
    if isinstance(dist, MixtureSameFamily):
        return True
    held = [v for v in vars(dist).values() if isinstance(v, TorchDistribution)]
    return depth < 8 and any(_holds_mixture(v, depth + 1) for v in held)


def _by_row(t: Tensor) -> Tensor:
    """``t`` as ``(rows, values)`` (a batch of scalars: one value a row)."""
    return t.flatten(1) if t.dim() > 1 else t.unsqueeze(1)


def _unvalidated(dist: TorchDistribution, on: bool = False, depth: int = 0) -> None:
    """Switch torch's own argument validation off (``on``: on) in ``dist`` and the
    distributions it holds (an ``Independent``'s base, a mixture's components), as built by a
    factory."""
    dist._validate_args = on
    if depth < 8:
        for v in vars(dist).values():
            if isinstance(v, TorchDistribution):
                _unvalidated(v, on, depth + 1)


class TorchBase(Distribution):
    r"""A ``torch.distributions`` distribution as a flow's base.

    A torch distribution holds tensors, not parameters, and has no ``.to()``: this base holds
    the tensors instead, and builds the distribution from them with ``factory(**tensors)``
    each time it is used. An ``nn.Parameter`` among them is trained; any other tensor is a
    constant buffer. Both are in the base's ``state_dict`` (so ``ff.save`` of a flow made by a
    registered builder, and ``ff.load``, keep them) and move with ``.to()`` and ``.double()``.
    Constrained arguments are the factory's to map: train ``log_scale`` and pass
    ``log_scale.exp()`` as the scale.

    The distribution must have batch shape ``()`` and a non-scalar event shape, which becomes
    the base's ``event_shape`` (``Independent(Normal(loc, scale), 1)`` with ``loc`` of shape
    ``(D,)`` is over ``(D,)``), and a continuous support.

    - Sampling uses the distribution's ``rsample`` where it has one (``has_rsample``), else
      its ``sample``. Without ``rsample`` (a ``MixtureSameFamily``, say) no gradient of the
      base's parameters rides on its samples, as with a flowforge mixture base: a flow's
      ``rsample`` still trains its layers through them, and :func:`flowforge.reverse_kl` adds
      the score-function term that trains the base's parameters (an unbiased gradient, noisier
      than a reparameterised one); the torch view (:class:`FlowDistribution`) refuses
      ``rsample``, as torch does for such a distribution.
    - ``temperature`` (scaling the noise, Glow's trick) has no meaning for an arbitrary
      distribution: any temperature but 1 is refused.
    - The base is unconditional. In a conditional flow its layers read the context, and the
      base ignores it, as :class:`~flowforge.distributions.StandardNormal` does; a base whose
      parameters depend on the context is out of scope (use
      :class:`~flowforge.distributions.DiagGaussian` with ``context_features``).

    A tensor the factory makes itself (``torch.zeros(2)`` inside it) is not moved by
    ``.to()``: a sample in another dtype or on another device than the base's tensors is
    refused. A lambda factory cannot be pickled (``torch.save(flow)``); ``ff.save`` and
    ``state_dict`` do not need to.

    Args:
        factory: a function that returns a ``torch.distributions.Distribution`` built from the
            tensors, given as keyword arguments.
        **tensors: the tensors to build it from, by the factory's argument names.

    Example:
        >>> from torch.distributions import Independent, StudentT
        >>> base = TorchBase(
        ...     lambda df, loc: Independent(StudentT(df, loc), 1),
        ...     df=torch.full((3,), 4.0),
        ...     loc=torch.nn.Parameter(torch.zeros(3)),
        ... )
        >>> base.event_shape, base.has_rsample
        ((3,), True)
        >>> base.sample(4).shape
        torch.Size([4, 3])
    """

    def __init__(self, factory: Callable[..., TorchDistribution], /, **tensors: Tensor):
        if isinstance(factory, TorchDistribution):
            raise TypeError(
                f"TorchBase takes a function that builds the distribution from tensors, not a "
                f"built {type(factory).__name__} (whose tensors .to(), training and ff.save "
                f"would not reach): {_EXAMPLE}"
            )
        if not callable(factory):
            raise TypeError(
                f"expected TorchBase's factory to be a function that returns a torch "
                f"distribution, got {type(factory).__name__}: {_EXAMPLE}"
            )
        if "context_features" in tensors:
            raise ValueError(
                "TorchBase is unconditional: a torch distribution whose parameters depend on "
                "the context is out of scope; condition the flow's layers, or use "
                "flowforge.distributions.DiagGaussian(event_shape, context_features=...)"
            )
        for name, t in tensors.items():
            if not isinstance(t, Tensor):
                raise TypeError(
                    f"expected TorchBase's keyword arguments to be tensors, got {name}="
                    f"{type(t).__name__}: pass torch.tensor(...) (nn.Parameter to train it), "
                    "or write a constant inside the factory"
                )
            if t.requires_grad and not isinstance(t, nn.Parameter):
                raise ValueError(
                    f"TorchBase's tensor {name!r} requires grad but is not an nn.Parameter: "
                    f"pass nn.Parameter({name}) to train it, or {name}.detach() for a constant"
                )
        dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
        devices = {t.device for t in tensors.values()}
        if len(dtypes) > 1 or len(devices) > 1:
            said = ", ".join(f"{n} {t.dtype} on {t.device}" for n, t in tensors.items())
            raise ValueError(
                f"expected TorchBase's tensors in one floating dtype and on one device, got {said}"
            )
        dist = _checked(factory(**tensors))
        super().__init__(tuple(dist.event_shape))
        try:
            discrete = dist.support.is_discrete
        except NotImplementedError:
            discrete = False
        if discrete:
            raise ValueError(
                f"the torch distribution {type(dist).__name__} is discrete, and a flow's base "
                "is a density over real values"
            )
        self.factory = factory
        self.tensor_names = tuple(tensors)
        for name, t in tensors.items():
            if not name.isidentifier() or name.startswith("_") or hasattr(self, name):
                raise ValueError(
                    f"TorchBase cannot hold a tensor named {name!r} (a name the module uses, "
                    "or not an attribute name): rename the factory's argument"
                )
            if isinstance(t, nn.Parameter):
                self.register_parameter(name, t)
            else:
                self.register_buffer(name, t)
        self._distribution_name = type(dist).__name__
        like = next((t for t in tensors.values() if t.is_floating_point()), None)
        if like is not None:  # samples come out in the tensors' dtype and device
            self._anchor = self._anchor.to(like)

    def distribution(self) -> TorchDistribution:
        """The torch distribution, built from the base's tensors as they are now."""
        tensors = {name: getattr(self, name) for name in self.tensor_names}
        return _checked(self.factory(**tensors), self.event_shape)

    @property
    def has_rsample(self) -> bool:  # (a property: the class attribute of Distribution)
        return bool(self.distribution().has_rsample)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p(z)``: ``-inf`` where ``z`` lies outside the distribution's support (a
        density of zero; where torch can tell the support: not for a support it cannot check,
        and a ``ValueError`` for a mixture nested deeper than a base ``MixtureSameFamily`` or
        an ``Independent`` of one), NaN for a row holding NaN or inf (an overflow in the layers
        before: the flow then says so in its own words), whatever torch's global argument validation
        is (``torch.compile`` switches it off for the whole process, and a bounded base would
        then give numbers outside its support); read without a host synchronisation."""
        self._check(z, context)
        dist = self.distribution()
        n = len(z)
        if not n:  # (an empty batch: no values, whatever torch's reshapes make of one)
            return z.new_zeros((0,))
        finite = _by_row(torch.isfinite(z)).all(1)
        # the rows with NaN or inf are scored at a finite row instead (their own values would
        # give NaN gradients to the parameters through the others), then set to NaN
        fill = z[finite.int().argmax()]  # (the first finite row; row 0 if none: all NaN)
        safe = torch.where(finite.reshape(n, *[1] * (z.dim() - 1)), z, fill)
        if isinstance(dist, MixtureSameFamily):  # (each component within its own support)
            _unvalidated(dist)
            lp = _mixture_log_prob(dist, safe)
        elif isinstance(dist, Independent) and isinstance(dist.base_dist, MixtureSameFamily):
            _unvalidated(dist)  # (a mixture per entry, its entries' log-densities summed)
            lp = _mixture_log_prob(dist.base_dist, safe)
            lp = lp.reshape(n, -1).sum(1) if dist.reinterpreted_batch_ndims else lp
        elif _holds_mixture(dist):
            # a support the check cannot tell (a mixture's components, each with its own
            # support, checked all at once, deeper inside another distribution): torch's own
            # validation, whatever its global default, refuses a value outside it, said in
            # one line
            _unvalidated(dist, on=True)
            try:
                lp = dist.log_prob(safe)
            except ValueError:
                raise ValueError(
                    f"a point lies outside the support of the base's {self._distribution_name} "
                    "(a mixture inside it, whose support torch checks for all components at "
                    "once): its density there is zero, which flowforge can give for a "
                    "MixtureSameFamily, or an Independent of one, as the base itself"
                ) from None
        else:
            try:
                inside = _by_row(dist.support.check(safe)).all(1)
            except (NotImplementedError, ValueError, RuntimeError):  # (torch cannot tell)
                inside = None  # (nor can its own validation, which asks the same check)
            _unvalidated(dist)  # (the support is checked here, where it can be)
            lp = dist.log_prob(safe)
            if inside is not None:
                lp = torch.where(inside, lp, lp.new_tensor(-math.inf))
        return torch.where(finite, lp, lp.new_tensor(math.nan))

    def _draw(self, dist: TorchDistribution, n: int) -> Tensor:
        z = dist.rsample((n,)) if dist.has_rsample else dist.sample((n,))
        a = self._anchor
        if z.dtype != a.dtype or z.device != a.device:
            raise ValueError(
                f"the torch distribution's samples are {z.dtype} on {z.device}, and the base's "
                f"tensors {a.dtype} on {a.device}: build the distribution from tensors given to "
                "TorchBase (they move with .to()), not from tensors made inside the factory"
            )
        return z

    def _sample(self, n, context, temperature):
        if temperature != 1:
            raise ValueError(
                f"TorchBase cannot sample at temperature {temperature!r}: scaling a torch "
                "distribution's noise has no meaning in general; sample at temperature 1, or "
                "use a Gaussian base (StandardNormal, DiagGaussian) for temperatures"
            )
        return self._draw(self.distribution(), n)

    def rsample_with_choice(self, n: int, context: Tensor | None = None):
        """``(z, log_prob, choice)``: reparameterised draws where the distribution has
        ``rsample``; else draws without a gradient, and ``choice`` their log-probability, the
        score-function term :func:`flowforge.reverse_kl` adds for the base's parameters."""
        n = self._n(n, context)
        dist = self.distribution()
        z = self._draw(dist, n)
        log_p = dist.log_prob(z)
        return z, log_p, (None if dist.has_rsample else log_p)

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None):
        return self.rsample_with_choice(n, context)[:2]

    def extra_repr(self) -> str:
        return (
            f"event_shape={self.event_shape}, distribution={self._distribution_name}, "
            f"tensors=({', '.join(self.tensor_names)})"
        )


class _UnitVectors(constraints.Constraint):
    """Vectors of unit length along the last dimension (to a few roundings of their dtype)."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        tol = 16 * torch.finfo(value.dtype).eps if value.is_floating_point() else 0.0
        return (torch.linalg.vector_norm(value, dim=-1) - 1).abs() <= tol

    def __repr__(self) -> str:
        return "UnitVectors()"


#: the support of a flow on the sphere: unit vectors
unit_vectors = _UnitVectors()
#: the support of a flow on the torus: angles in ``[-pi, pi)``
angles = constraints.independent(constraints.half_open_interval(-math.pi, math.pi), 1)


class FlowDistribution(TorchDistribution):
    r"""A :class:`~flowforge.core.Flow` as a ``torch.distributions.Distribution``
    (``flow.as_torch(context)`` makes one).

    ``log_prob``, ``sample`` and ``rsample`` are the flow's; ``event_shape`` is the flow's,
    ``batch_shape`` the context's leading shape (``()`` without a context or with one of shape
    ``(c,)``, ``(B,)`` for a ``(B, c)`` context), so ``Independent``, ``TransformedDistribution``
    and sample-based estimates (a KL divergence as the mean of ``p.log_prob(x) - q.log_prob(x)``
    over ``x = p.rsample((n,))``) work with it. Its parameters are the flow's: train the flow,
    and the view follows.

    - ``has_rsample`` is the base's: ``False`` for a mixture base (its component choice is
      discrete) or a :class:`TorchBase` without ``rsample``; ``rsample`` is then refused.
    - ``support`` is ``support=`` where given, else the flow's own ``flow.support`` where its
      builder set one (:data:`angles` for a ``TorusFlow``, :data:`unit_vectors` for a
      ``SphereFlow``; the sphere has no ``biject_to`` transform, as it is not a copy of
      ``R^2``), else the real vectors over the event: a flow's log-density is defined on all
      of them (zero, ``-inf``, outside a bounded support), but a flow whose layers bound its
      samples (a sigmoid last, bounded columns) should declare its support for code that maps
      onto it (pyro's ``biject_to``).
    - ``mean``, ``mode``, ``variance``, ``entropy`` and ``kl_divergence`` (against anything)
      have no closed form for a flow: they raise ``NotImplementedError`` naming the sample
      estimate; ``cdf``, ``icdf``, ``expand`` and ``enumerate_support`` are not provided
      (torch's ``NotImplementedError``).
    - A flow with a dequantizer is refused: its ``log_prob`` is a random bound on a discrete
      likelihood, not a density that torch code could use as one.
    - The view does not check values against the support (``validate_args=False``): the flow
      checks its inputs itself (``Flow.validate_args``).

    Args:
        flow: the flow.
        context: for a conditional flow, its context, ``(c,)`` or ``(*batch, c)``.
        support: a ``torch.distributions.constraints`` constraint to declare as the support.
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        flow: Flow,
        context: Tensor | None = None,
        support: constraints.Constraint | None = None,
    ):
        if not isinstance(flow, Flow):
            raise TypeError(f"expected a flowforge Flow, got {type(flow).__name__}")
        if flow.dequantizer is not None:
            raise ValueError(
                "a flow with a dequantizer models discrete data: its log_prob is a random "
                "bound, not a density torch.distributions code could use; view a flow "
                "without one"
            )
        c = flow.context_features
        if c and context is None:
            raise ValueError(
                f"the flow is conditional: expected a context of shape ({c},) or (*batch, {c}), "
                "got None"
            )
        if not c and context is not None:
            raise ValueError("the flow is unconditional: expected context=None")
        batch_shape: tuple[int, ...] = ()
        if context is not None:
            if not isinstance(context, Tensor):
                raise TypeError(
                    f"expected context to be a torch.Tensor, got {type(context).__name__}"
                )
            if context.dim() < 1 or context.shape[-1] != c:
                raise ValueError(
                    f"expected a context of shape ({c},) or (*batch, {c}), got "
                    f"{_fmt(context.shape)}"
                )
            batch_shape = tuple(context.shape[:-1])
        if support is not None and not isinstance(support, constraints.Constraint):
            raise TypeError(
                f"expected support to be a torch.distributions.constraints.Constraint, got "
                f"{type(support).__name__}"
            )
        self.flow = flow
        self.context = context
        self._support = support
        super().__init__(torch.Size(batch_shape), torch.Size(flow.event_shape), False)

    @property
    def has_rsample(self) -> bool:
        return bool(self.flow.base.has_rsample)

    @property
    def support(self) -> constraints.Constraint:
        if self._support is not None:
            return self._support
        if self.flow.support is not None:
            return self.flow.support
        return constraints.independent(constraints.real, len(self.event_shape))

    def _broadcast(self, value: Tensor) -> Tensor:
        """``value`` expanded to the view's batch shape, as torch distributions broadcast."""
        if self.context is None or not self.batch_shape or not isinstance(value, Tensor):
            return value
        k = len(self.event_shape)
        if value.dim() < k or tuple(value.shape[value.dim() - k :]) != tuple(self.event_shape):
            return value  # (the flow says what shape it expects)
        batch = value.shape[: value.dim() - k]
        try:
            shape = torch.broadcast_shapes(batch, self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"expected a value of shape (*sample, {', '.join(map(str, self.batch_shape))}, "
                f"{', '.join(map(str, self.event_shape))}) for the view's batch shape "
                f"{_fmt(self.batch_shape)}, got {_fmt(value.shape)}"
            ) from None
        return value.expand(*shape, *self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.flow.log_prob(self._broadcast(value), self.context)

    def sample(self, sample_shape=_NO_SAMPLE_SHAPE) -> Tensor:
        return self.flow.sample(tuple(sample_shape), self.context)

    def rsample(self, sample_shape=_NO_SAMPLE_SHAPE) -> Tensor:
        if not self.has_rsample:
            raise NotImplementedError(
                f"the flow's base ({type(self.flow.base).__name__}) is not reparameterisable "
                "(has_rsample is False): its samples carry no gradient of its parameters; use "
                "sample(), or flowforge.reverse_kl for variational inference"
            )
        return self.flow.rsample(tuple(sample_shape), self.context)

    @staticmethod
    def _no_closed_form(what: str, estimate: str):
        raise NotImplementedError(
            f"a flow has no closed-form {what}; estimate it from samples: {estimate}"
        )

    @property
    def mean(self) -> Tensor:
        self._no_closed_form("mean", "dist.sample((n,)).mean(0)")

    @property
    def mode(self) -> Tensor:
        self._no_closed_form("mode", "the sample of highest dist.log_prob")

    @property
    def variance(self) -> Tensor:
        self._no_closed_form("variance", "dist.sample((n,)).var(0)")

    def entropy(self) -> Tensor:
        self._no_closed_form("entropy", "x = dist.sample((n,)); -dist.log_prob(x).mean(0)")

    def __repr__(self) -> str:
        shape = f"event_shape={_fmt(self.event_shape)}"
        if self.batch_shape:
            shape += f", batch_shape={_fmt(self.batch_shape)}"
        return f"FlowDistribution({type(self.flow).__name__}, {shape})"


def _kl_has_no_closed_form(p, q):
    raise NotImplementedError(
        f"KL({type(p).__name__} || {type(q).__name__}) has no closed form for a flow; estimate "
        "it by samples: x = p.rsample((n,)); (p.log_prob(x) - q.log_prob(x)).mean(0)"
    )


for _pair in (
    (FlowDistribution, FlowDistribution),
    (FlowDistribution, TorchDistribution),
    (TorchDistribution, FlowDistribution),
):
    register_kl(*_pair)(_kl_has_no_closed_form)

del _pair
