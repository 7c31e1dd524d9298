r"""Masked autoregressive layers: MAF, IAF and autoregressive neural spline flows.

:class:`Autoregressive` transforms every dimension elementwise with parameters that a
:class:`~flowforge.nets.MADE` computes from the dimensions before it in an order:

    ``z_i = transformer(x_i; MADE(x_{<i}, context)_i)``

Directions and costs (``forward`` is data to noise):

- ``forward`` (density, ``log_prob``): **fast**, one MADE pass for all dimensions at once;
- ``inverse`` (sampling): **sequential**, ``D`` steps, because ``x_i`` is needed before the
  parameters of ``x_{i+1}`` exist. :meth:`MADE.solve` computes each hidden unit exactly once
  as its inputs become known, so the whole inverse costs about one MADE pass of arithmetic,
  though in ``D`` small steps. With an ``adjacency`` (a directed acyclic graph: dimension
  ``i`` depends only on its parents) the inverse runs by generations of the graph instead:
  each step solves every dimension whose parents are all known, so it takes the graph's
  depth plus one steps (``steps``) instead of ``D``, again about one MADE pass of arithmetic
  in all (each hidden unit computed once, when its inputs are known).

A MAF is a stack of ``Autoregressive`` layers (fast density, slow sampling). An IAF is
``Inverse(Autoregressive(...))``: sampling and ``rsample_and_log_prob`` run in one pass and
density evaluation of arbitrary data is sequential.

Conditioners
------------
The conditioner is a MADE by default; ``net=`` takes any network with the same protocol, such
as :class:`~flowforge.attention.CausalTransformer` (TarFlow: tokens are features, pixels or
patches, and ``Autoregressive`` then works on images too). The protocol:

- attributes ``event_shape``, ``params_per_dim``, ``context_features`` and ``steps`` (the
  number of sequential inverse steps);
- ``net(x, context) -> params`` of shape ``(B, *event_shape, P)``, ``params[:, i]`` depending
  only on entries earlier in the net's order;
- ``net.solve(step, batch, context, like)``, which calls ``step(index, params)`` in order,
  ``index`` one flat index (``params (B, P)``) or a tensor of ``k`` flat indices (``params
  (B, k, P)``), and feeds the values ``step`` returns to the next step.

Parallel (Jacobi) inverse
-------------------------
``inverse_mode="parallel"`` inverts by fixed-point iteration: from ``x = z``, repeat
``x <- transformer.inverse(z, net(x))`` (one whole network pass per sweep, every dimension at
once) until no entry moves by more than ``tol``, at most ``max_iter`` sweeps. Because the map
is triangular, sweep ``k`` fixes at least the first ``k`` steps exactly, so with
``max_iter >= steps + 1`` it always converges; fewer sweeps than steps is where it pays. A run
that does not converge (or produces a non-finite value) falls back to the exact sequential
inverse with a :class:`ParallelInverseWarning`, never a silently wrong sample.
``inverse_mode="auto"`` tries at most ``max(2, steps // 4)`` sweeps (or ``max_iter``) and
takes the sequential inverse, without a warning, when they do not reach the tolerance: Jacobi
pays when it converges in a small fraction of the steps. Which is faster also depends on the
conditioner and the batch (see ``docs/tarflow.md`` for the measured speeds), so the first
``"auto"`` inverse of each batch size (to a power of two) times both and the layer keeps the
faster for that size. :func:`set_inverse` switches every autoregressive layer of a model at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._util import event_shape as _event
from .._util import warn
from ..core import Transform, Transformer, checked_transformer, refresh_tolerances
from ..nets import MADE

__all__ = ["Autoregressive", "ParallelInverseWarning", "set_inverse", "INVERSE_MODES"]

INVERSE_MODES = ("sequential", "parallel", "auto")


# "auto" takes the parallel inverse where it was at least this many times faster than the
# sequential one on its first batch: near a tie, the exact one, whichever the clock favoured
AUTO_MARGIN = 1.25


def _clock(t: Tensor) -> float:
    if t.is_cuda:  # time the work, not its launch
        torch.cuda.synchronize(t.device)
    return time.perf_counter()


class ParallelInverseWarning(UserWarning):
    """A parallel (Jacobi) inverse did not converge; the sequential inverse was used."""


def _check_inverse_options(mode: str, tol: float, max_iter: int | None) -> None:
    if mode not in INVERSE_MODES:
        raise ValueError(
            f"unknown inverse_mode {mode!r}; expected 'sequential', 'parallel' or 'auto'"
        )
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < math.inf:
        raise ValueError(f"expected a finite tolerance tol > 0, got {tol!r}")
    if max_iter is not None and (
        isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1
    ):
        raise ValueError(f"expected max_iter to be None or an integer >= 1, got {max_iter!r}")


class Autoregressive(Transform):
    r"""An autoregressive layer: any elementwise transformer conditioned by a MADE (or by
    another autoregressive network, ``net=``).

    Forward (data to noise) takes one network pass; inverse takes ``steps`` sequential steps,
    or a few parallel sweeps with ``inverse_mode="parallel"`` (see the module docstring). Wrap
    it in :class:`~flowforge.Inverse` for an IAF (fast sampling).

    Args:
        features: dimension ``D`` of the input vectors; with ``net=``, the net's event shape
            (an int or ``(C, H, W)``).
        transformer: an elementwise transformer: ``Affine()``, ``Additive()``,
            ``RationalQuadratic(bins=8)``, ``LogisticMixture(4)``...
        hidden: hidden widths of the MADE.
        context_features: size of a context vector (fed to every hidden unit).
        order: ``"natural"`` (None: natural), ``"reversed"``, ``"random"`` or an explicit
            permutation (first dimension first).
        residual: residual MADE (each hidden layer after the first is a residual block).
        activation: the MADE's activation.
        net: a conditioner to use instead of the MADE (``hidden``, ``order``, ``residual``
            and ``activation`` are then unused), e.g. a
            :class:`~flowforge.attention.CausalTransformer`.
        inverse_mode: ``"sequential"`` (exact), ``"parallel"`` (Jacobi sweeps, a warning and
            the sequential inverse when they do not converge) or ``"auto"`` (a few sweeps,
            else the sequential inverse, silently).
        tol: the parallel inverse stops when no entry moves by more than ``tol``.
        max_iter: the most sweeps of the parallel inverse (None: ``steps + 1``, which always
            converges; ``max(2, steps // 4)`` in ``"auto"`` mode).
        adjacency: a ``(D, D)`` matrix of 0/1 or booleans, ``adjacency[i, j]`` set where
            dimension ``i`` may depend on dimension ``j`` (a directed acyclic graph, no
            self-loops): the MADE's output for ``i`` then reads only the parents of ``i`` and
            the context (structured autoregression), instead of everything before ``i`` in an
            ``order`` (giving both is an error). The exact inverse then takes one step per
            generation of the graph (``steps``: its depth plus one), not ``D`` steps.

    Example:
        >>> from flowforge.transforms import Autoregressive, Affine
        >>> maf_layer = Autoregressive(4, Affine(), hidden=(32, 32))
        >>> z, ladj = maf_layer(torch.randn(10, 4))    # one pass
        >>> x, _ = maf_layer.inverse(z)                # four sequential steps
        >>> chain = [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]  # 0 -> 1 -> 2 -> 3
        >>> markov = Autoregressive(4, Affine(), hidden=(32,), adjacency=chain)
        >>> markov.steps                               # generations: 4 steps for a chain
        4
    """

    # the exact inverse steps through the positions, and cannot replay the dropout masks of the
    # network's one forward pass (memory saving's recomputation reads it: reversible.refusal)
    inverts_by_position = True

    def __init__(
        self,
        features: int | Sequence[int],
        transformer: Transformer,
        hidden: Sequence[int] | int = (128, 128),
        context_features: int = 0,
        order=None,
        residual: bool = False,
        activation: str = "relu",
        net: nn.Module | None = None,
        inverse_mode: str = "sequential",
        tol: float = 1e-6,
        max_iter: int | None = None,
        adjacency=None,
    ):
        checked_transformer(transformer)
        shape = _event(features, "features")
        if net is None:
            if len(shape) != 1:
                raise ValueError(
                    f"a MADE conditioner takes vectors; for the event shape {shape} give a "
                    "net= such as flowforge.attention.CausalTransformer"
                )
            net = MADE(
                shape[0],
                transformer.params_per_dim,
                hidden,
                context_features,
                order=order,
                residual=residual,
                activation=activation,
                adjacency=adjacency,
            )
        else:
            if adjacency is not None:
                raise ValueError(
                    "adjacency= shapes the MADE this layer builds; a net= of your own has its "
                    "own structure (give one or the other)"
                )
            self._check_net(net, shape, transformer, context_features)
        super().__init__(shape, context_features)
        self.transformer = transformer
        self.net = net
        self.set_inverse(inverse_mode, tol, max_iter)

    @staticmethod
    def _check_net(net, shape, transformer, context_features) -> None:
        for attr in ("event_shape", "params_per_dim", "context_features", "steps", "solve"):
            if not hasattr(net, attr):
                raise TypeError(
                    f"net= must follow the autoregressive conditioner protocol (see "
                    f"flowforge.transforms.autoregressive); {type(net).__name__} has no {attr!r}"
                )
        if tuple(net.event_shape) != shape:
            raise ValueError(f"the net's event shape {tuple(net.event_shape)} is not {shape}")
        if net.params_per_dim != transformer.params_per_dim:
            raise ValueError(
                f"the net outputs {net.params_per_dim} parameters per entry but the transformer "
                f"takes {transformer.params_per_dim}"
            )
        if net.context_features != context_features:
            raise ValueError(
                f"the net reads a context of {net.context_features} features but the layer was "
                f"given context_features={context_features}"
            )

    @property
    def steps(self) -> int:
        """The number of sequential steps of the exact inverse."""
        return int(getattr(self.net, "steps", None) or self.net.features)

    def set_inverse(self, mode: str, tol: float | None = None, max_iter: int | None = None):
        """Choose the inverse: ``"sequential"``, ``"parallel"`` or ``"auto"`` (with ``tol``,
        ``max_iter``; None keeps the current tolerance). Returns the layer."""
        tol = getattr(self, "tol", 1e-6) if tol is None else tol
        _check_inverse_options(mode, tol, max_iter)
        self.inverse_mode, self.tol, self.max_iter = mode, float(tol), max_iter
        # the round trip of a parallel inverse is as accurate as its tolerance (the generic
        # test checks it there)
        self.numeric_inverse = None if mode == "sequential" else self.tol
        self.last_sweeps = 0  # sweeps used by the latest parallel inverse (0: sequential)
        self._auto_picks = {}  # "auto": batch-size bucket -> the inverse measured faster
        return self

    def _forward(self, x, context):
        y, ladj = self.transformer.forward(x, self.net(x, context))
        return y, ladj.reshape(x.shape[0], -1).sum(1)

    def _inverse(self, z, context):
        if self.inverse_mode == "auto":
            return self._auto_inverse(z, context)
        if self.inverse_mode == "parallel":
            out = self._parallel_inverse(z, context)
            if out is not None:
                return out
        self.last_sweeps = 0
        return self._sequential_inverse(z, context)

    def _auto_inverse(self, z, context):
        # which inverse is faster depends on the conditioner, the batch and the machine (a
        # transformer's key/value-cached sequential pass beats Jacobi sweeps on large CPU
        # batches, a MADE's does not): the first call per batch size (to a power of two) times
        # both and remembers the faster; later calls take it, the sequential one whenever the
        # sweeps do not reach the tolerance
        picks = self.__dict__.setdefault("_auto_picks", {})
        key = int(z.shape[0]).bit_length()
        pick = picks.get(key)
        if pick is None:  # time both (the clock waits for an accelerator: only here)
            t0 = _clock(z)
            out = self._parallel_inverse(z, context)
            t1 = _clock(z)
            sweeps = self.last_sweeps
            faster = False
            if out is not None:
                seq = self._sequential_inverse(z, context)
                # clearly faster only: near a tie the exact inverse, so that the pick (and
                # with it a seeded sample's last digits) does not follow the clock's noise
                faster = AUTO_MARGIN * (t1 - t0) < _clock(z) - t1
            picks[key] = "parallel" if faster else "sequential"
            if faster:
                self.last_sweeps = sweeps
                return out
            self.last_sweeps = 0
            return seq if out is not None else self._sequential_inverse(z, context)
        if pick == "parallel":
            out = self._parallel_inverse(z, context)
            if out is not None:
                return out
        self.last_sweeps = 0
        return self._sequential_inverse(z, context)

    def _sequential_inverse(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        b = z.shape[0]
        flat = z.reshape(b, -1)
        pieces: list[Tensor] = []
        where: list = []  # each step's index: an int (a MADE's) or a tensor of them
        ladj = z.new_zeros(b)

        def step(index, params: Tensor) -> Tensor:
            nonlocal ladj
            x_i, l_i = self.transformer.inverse(flat[:, index], params)
            pieces.append(x_i.reshape(b, -1))
            where.append(index)
            l_i = l_i.reshape(b, -1)  # (one column, a MADE's: taken as it is, a launch fewer)
            ladj = ladj + (l_i[:, 0] if l_i.shape[1] == 1 else l_i.sum(1))
            return x_i

        self.net.solve(step, b, context, like=z)
        if all(isinstance(i, int) for i in where):  # (a MADE's order, kept on the host: the
            # pieces are put in place there, without copying an index to the device, which
            # would make the host wait for it)
            x = torch.cat([pieces[j] for j in sorted(range(len(where)), key=where.__getitem__)], 1)
        else:  # index tensors (a transformer's tokens), on the device already
            order = torch.cat([torch.as_tensor(i, device=z.device).reshape(-1) for i in where])
            x = torch.cat(pieces, 1)[:, torch.argsort(order)]
        return x.reshape(z.shape), ladj

    def _parallel_inverse(self, z: Tensor, context: Tensor | None):
        """Jacobi sweeps from ``x = z``; None when they do not reach the tolerance."""
        cap = self.max_iter
        if cap is None:
            cap = self.steps + 1 if self.inverse_mode == "parallel" else max(2, self.steps // 4)
        x, delta = z, math.inf
        for sweep in range(1, cap + 1):
            x_new, ladj = self.transformer.inverse(z, self.net(x, context))
            delta = (x_new - x).abs().max().item() if x.numel() else 0.0
            x = x_new
            if delta <= self.tol:  # NaN never passes
                self.last_sweeps = sweep
                return x, ladj.reshape(z.shape[0], -1).sum(1)
        if self.inverse_mode == "auto":
            return None
        warn(
            f"the parallel inverse of {type(self).__name__} did not converge in {cap} sweeps "
            f"(largest change {delta:.3g} > tol {self.tol:g}); used the sequential inverse",
            ParallelInverseWarning,
        )
        return None

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.inverse_mode != "sequential":
            s += f", inverse_mode={self.inverse_mode!r}, tol={self.tol:g}"
        return s


def set_inverse(
    model: nn.Module, mode: str = "parallel", tol: float = 1e-6, max_iter: int | None = None
) -> int:
    """Switch every :class:`Autoregressive` layer of ``model`` (a layer, a chain or a
    :class:`~flowforge.Flow`) to the ``"sequential"``, ``"parallel"`` or ``"auto"`` inverse
    (see :class:`Autoregressive`), and update the
    tolerances the chains above them declare. Returns the number of layers switched.

    Example:
        >>> import flowforge as ff
        >>> flow = ff.models.MAF(features=4, layers=2)
        >>> set_inverse(flow, "parallel", tol=1e-6)
        2
        >>> flow.sample(3).shape
        torch.Size([3, 4])
    """
    _check_inverse_options(mode, tol, max_iter)
    n = 0
    for m in model.modules():
        if isinstance(m, Autoregressive):
            m.set_inverse(mode, tol, max_iter)
            n += 1
    refresh_tolerances(model)
    return n
