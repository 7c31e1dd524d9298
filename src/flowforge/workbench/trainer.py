r"""The one training loop: :class:`Trainer`.

It fits any model to any :class:`Objective`: maximum likelihood on data (:class:`NLL`, the
default), reverse KL to an unnormalised target (:class:`ReverseKL`, ``flowforge fit-target``),
or a loss of your own (:class:`Loss`, e.g. a VAE's negative ELBO). Around the loop: AdamW /
Adam / Adamax (fused where torch has a fused kernel), linear warm-up then cosine or constant
learning rate, gradient clipping, an exponential moving average of the weights, learning-rate
halving on plateaus, per-epoch validation with the best model kept, early stopping,
bit-exact resume, data-parallel training under ``torchrun``, and warnings when the loss or the
gradient norm jumps.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import random
import signal
import statistics
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import io
from .._util import (
    COMPILE_OPTIONS,
    fork_rng,
    restore_modes,
    rng_states,
    set_rng_states,
    training_modes,
)
from ..core import (
    NaNLogProb,
    NonFiniteSamples,
    layer_metrics,
    needs_data_init,
    precision_lost,
    regularization,
)
from ..models.assembly import count
from ..objectives import ZeroDensity, check_log_prob, reverse_kl, target_name
from .checkpoint import (
    check_optimizer_state,
    optimizer_state,
    read_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .config import (
    DEFAULT_TRAIN,
    OBJECTIVES,
    SEED_MAX,
    TRAIN_CHECKS,
    _int,
    checked,
    train_key_hint,
)
from .data import _chunk_rows
from .distributed import device as resolve_device
from .distributed import dist_env
from .errors import NonFiniteError, RunError, WorkbenchError, out_of_memory
from .runs import (
    CKPT_FILE,
    METRICS_FILE,
    METRICS_STEP_BYTES,
    MODEL_FILE,
    Records,
    claim_training_folder,
    truncate_metrics,
)

__all__ = [
    "Trainer",
    "TrainingWarning",
    "Objective",
    "NLL",
    "ReverseKL",
    "Loss",
    "FlowMatchingObjective",
    "make_objective",
    "adam",
    "find_nonfinite",
]


class TrainingWarning(UserWarning):
    """What the :class:`Trainer` warns of while it trains (a loss spike, settings that defeat
    themselves, a compile that fell back): a Python warning, which a program can filter,
    record or log (``warnings.catch_warnings``); also in the summary's ``warnings`` and, in a
    run folder, in ``metrics.jsonl``. The command line prints each as one
    ``flowforge: warning:`` line."""


# -- objectives ----------------------------------------------------------------------------------


class Objective:
    """What the :class:`Trainer` minimises, and the number it validates with (lower is better).

    ``loss(trainer, model, x, context)`` returns a scalar tensor for one batch (``x`` is None
    for objectives that need no data); ``validate(trainer, x, context)`` returns a float.
    """

    name = "objective"
    needs_data = True
    skip_nonfinite = False  # skip (and count) steps whose loss is not finite, instead of stopping
    # what overflowed when a non-finite loss comes from no layer's output
    overflow = "the base log-density or the log-det sum overflowed"

    def remedy(self, trainer: Trainer) -> str:
        """What may help a run whose loss spikes or diverges, in the caller's own options."""
        return "a lower --lr or train.grad_clip may help"

    def phase_starts(self, cfg: dict) -> list[int]:
        """The epochs (0-based) at which a new training phase begins, besides epoch 0, for the
        train options ``cfg`` (default: none, one phase). At each phase the trainer restarts
        the learning-rate schedule
        (warm-up, then cosine), starts from the best validated weights of the phase before and
        compares validation numbers only within the phase; ``patience`` stops the run in its
        last phase only (an earlier phase runs its epochs in full), and a learning rate halved
        on a plateau (``halve_after``) is whole again at a phase's start."""
        return []

    def validated_epochs(self, trainer: Trainer, after: int, upto: int) -> int:
        """How many of the epochs ``after + 1 .. upto`` (0-based) train what the validation
        number measures, so that a plateau (``halve_after``) counts them only (default: every
        epoch)."""
        return upto - after

    def loss_kind(self, trainer: Trainer) -> str:
        """Which of the objective's losses the epoch in progress minimises (one by default): the
        trainer watches each kind's losses for spikes apart."""
        return "loss"

    def loss(self, trainer: Trainer, model, x: Tensor | None, context: Tensor | None) -> Tensor:
        raise NotImplementedError

    def validate(self, trainer: Trainer, x: Tensor | None, context: Tensor | None) -> float:
        raise NotImplementedError


class NLL(Objective):
    """Maximum likelihood: ``-mean log p(x)`` (nats/example); validated by the mean NLL."""

    name = "nll"

    def check(self, trainer, model) -> None:
        if not callable(getattr(model, "log_prob", None)):
            raise WorkbenchError(
                f"the nll objective trains a density (a model with log_prob, such as a "
                f"flowforge Flow), and {type(model).__name__} has none: for a module of your "
                "own, give objective=Loss(fn) with fn(model, x, context) -> loss"
            )

    def loss(self, trainer, model, x, context):
        return -(model(x) if context is None else model(x, context)).mean()

    def validate(self, trainer, x, context):
        return trainer.nll(x, context)


def _same_settings(mine: list[dict], theirs: list[dict]) -> None:
    """A ``ValueError`` when a checkpoint's optimizer settings are not this run's (its own
    would replace the config's: a checkpoint of another run, with its learning rate)."""
    for a, b in zip(mine, theirs):
        for key in ("initial_lr", "betas", "weight_decay", "eps"):
            if key in a and key in b:
                x = [float(v) for v in a[key]] if isinstance(a[key], (list, tuple)) else a[key]
                y = [float(v) for v in b[key]] if isinstance(b[key], (list, tuple)) else b[key]
                if x != y:
                    name = "lr" if key == "initial_lr" else key
                    raise ValueError(
                        f"its optimizer's {name} is {b[key]!r}, this run's {a[key]!r}: it "
                        "belongs to another run"
                    )


class ReverseKL(Objective):
    r"""Reverse KL to an unnormalised target, ``E_q[log q - log p~]`` (``-ELBO``), with
    ``batch`` samples per step. ``anneal > 0`` multiplies ``log p~`` by
    ``min(1, 0.01 + t / anneal)`` (Rezende & Mohamed). Validated by the reverse KL (up to
    ``log Z``) on ``n_val`` seeded samples. ``option_names`` spells the caller's options in its
    hints (keys ``lr``, ``grad_clip``, ``anneal``; a key left out is not offered): by default
    :func:`~.vi.fit_target`'s arguments."""

    name = "reverse-kl"
    needs_data = False
    skip_nonfinite = True  # a sample can land where a planar flow's density underflows

    def __init__(
        self,
        target: Callable[[Tensor], Tensor],
        batch: int = 256,
        anneal: int = 0,
        n_val: int = 4096,
        option_names: dict[str, str] | None = None,
    ):
        if isinstance(anneal, bool) or not isinstance(anneal, int) or anneal < 0:
            # (a negative anneal makes beta negative: the flow would flee the target)
            raise ValueError(f"expected anneal to be an integer >= 0 (0: off), got {anneal!r}")
        self.target, self.anneal = target, anneal
        self.batch, self.n_val = count("batch", batch), count("n_val", n_val)
        self.options = (
            {"lr": "lr", "grad_clip": "grad_clip", "anneal": "anneal"}
            if option_names is None
            else option_names
        )

    def beta(self, step: int) -> float:
        return min(1.0, 0.01 + step / self.anneal) if self.anneal else 1.0

    def remedy(self, trainer) -> str:
        o, step = self.options, trainer.global_step
        lower = " or ".join(f"a lower {o[k]}" if k == "lr" else o[k] for k in o if k != "anneal")
        if not self.anneal or step >= self.anneal or "anneal" not in o:
            return f"{lower} may help"
        return (
            f"this came during the annealing (beta = {self.beta(step):.2f} of 1, rising over "
            f"{self.anneal} steps), whose flattened target lets the flow spread far: a shorter "
            f"{o['anneal']} (0: off) or {lower} may help"
        )

    def _moved(self, trainer, e: ZeroDensity) -> ZeroDensity:
        """``e``, said as the training's doing where the flow's earlier samples had no zero."""
        if trainer.global_step > 0:
            e.args = (
                f"target {e.name!r}: its log-density is -inf (zero density, or an underflow) at "
                f"{e.count} of {e.n} of the flow's samples at step {trainer.global_step + 1} "
                f"(first at x = {e.first}), and at none of the steps before: "
                f"{self.remedy(trainer)}; if the target really is zero there, {e.remedy}",
            )
        return e

    def loss(self, trainer, model, x, context):
        beta = self.beta(trainer.global_step)
        try:
            return reverse_kl(model, _Annealed(self.target, beta), self.batch)
        except NonFiniteSamples:  # a non-finite loss through every parameter: skipped, counted
            return sum(p.sum() for p in model.parameters()) * math.nan
        except ZeroDensity as e:  # an infinite loss: no step can be taken
            raise self._moved(trainer, e) from None

    @torch.no_grad()
    def validate(self, trainer, x, context):
        with trainer.validating() as model:
            try:
                return reverse_kl(model, self.target, self.n_val).item()
            except NonFiniteSamples:  # the flow diverged: a non-finite validation loss, said so
                return math.nan
            except ZeroDensity as e:
                raise self._moved(trainer, e) from None


class Loss(Objective):
    """A loss of your own: ``fn(model, x, context) -> scalar``; validated by ``validate(model,
    x, context) -> float`` (default: ``fn`` itself, averaged over batches of
    ``train.eval_batch_size``, its value detached).

    ``fn`` runs with gradients enabled wherever it runs, so it may differentiate with respect
    to its inputs (``torch.autograd.grad``: a gradient penalty, score matching): in training,
    in the default validation (a ``validate`` of your own runs without them), and once before
    the first step on the first batch when the model has a layer that initialises from data
    (ActNorm), whose output is not used."""

    def __init__(self, fn: Callable, validate: Callable | None = None, name: str = "loss"):
        self.fn, self._validate, self.name = fn, validate, name
        self._needs_parameters = False  # fn differentiates with respect to the parameters
        self.overflow = (  # (no layer output went non-finite: the function did)
            f"the loss function {name!r} itself returned a non-finite value"
        )

    def loss(self, trainer, model, x, context):
        return self.fn(model, x, context)

    def validate(self, trainer, x, context):
        with trainer.validating() as model:
            if self._validate is not None:
                with torch.no_grad():
                    return float(self._validate(model, x, context))
            bs, total = trainer.cfg["eval_batch_size"], 0.0
            with torch.enable_grad():  # (fn may differentiate with respect to its inputs)
                for i in range(0, x.shape[0], bs):
                    c = None if context is None else context[i : i + bs]
                    xb = x[i : i + bs]
                    total += float(self.evaluate(model, xb, c).detach()) * xb.shape[0]
            return total / x.shape[0]

    def evaluate(self, model, x, context):
        """``fn`` where no step follows (validation, the set-up pass): with the parameters
        frozen, so that no graph of them is kept, unless ``fn`` differentiates with respect
        to them (a gradient-norm penalty), which is then remembered."""
        if not self._needs_parameters:
            try:
                with _frozen(model):
                    return self.fn(model, x, context)
            except RuntimeError as e:
                if "grad" not in str(e):
                    raise
                self._needs_parameters = True
        return self.fn(model, x, context)


@contextlib.contextmanager
def _frozen(model: torch.nn.Module):
    """``model``'s parameters without gradients while inside (as they were on leaving)."""
    held = [p for p in model.parameters() if p.requires_grad]
    for p in held:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in held:
            p.requires_grad_(True)


class _Annealed:
    """``beta * target(z)``, named as the target (its messages name the user's target)."""

    def __init__(self, target, beta: float):
        self.target, self.beta = target, beta
        self.name = target_name(target)

    def __call__(self, z):
        # checked before it is scaled: a list or a wrong shape is named as the target's error
        return self.beta * check_log_prob(self.target(z), z, self.name)


class FlowMatchingObjective(Objective):
    """Conditional flow matching of a flow that ends in a CNF (:mod:`flowforge.matching`):
    ``path`` ``"linear"`` or ``"vp"``, ``ot`` mini-batch OT pairing, ``sigma`` path noise.
    Validated by the flow-matching loss on the validation set with seeded times and noise
    (score the likelihood afterwards: ``flowforge eval`` or ``matching.log_likelihood``)."""

    def __init__(self, path: str = "linear", ot: bool = False, sigma: float = 0.0, name=None):
        from ..matching import FlowMatching as Matching

        self.fm = Matching(path, ot, sigma)
        self.name = name or "flow-matching"
        self.overflow = (
            "the flow-matching regression loss overflowed (the data, or the velocities between "
            "them and the noise, are too large for the model's dtype: standardise the data)"
        )
        self._compiled = (None, None)  # (a CNF's network, its compiled module): train.compile

    def check(self, trainer: Trainer, model) -> None:
        """Before training: the model is one the loss can train, in a single process."""
        from ..matching import split_flow

        try:
            split_flow(model)
        except ValueError as e:
            raise WorkbenchError(str(e)) from None
        if trainer.world > 1:
            raise WorkbenchError("the flow-matching objective runs in a single process")
        from ..transforms.continuous import CNF

        for m in model.modules():  # (maximum likelihood's options: a regression ignores them)
            if isinstance(m, CNF) and (getattr(m, "penalty_weights", None) or m.adjoint):
                which = " and ".join(
                    w for w, on in (("regularization (RNODE)", m.penalty_weights),
                                    ("adjoint", m.adjoint)) if on
                )  # fmt: skip
                warnings.warn_explicit(  # (logged nowhere yet: the run folder may not exist)
                    f"flow matching regresses the CNF's velocity without solving its ODE, so "
                    f"the model's {which} does nothing in this run (it is maximum "
                    "likelihood's: a run started from this one with --init-from and "
                    "train.objective nll uses it)",
                    TrainingWarning, __file__, 0, module=__name__, registry={},
                )  # fmt: skip
                break
        if self.fm.ot and getattr(model, "context_features", 0):
            raise WorkbenchError(
                f"train.objective {self.name} pairs examples across contexts (mini-batch OT); "
                "a conditional run takes --objective flow-matching or flow-matching-vp"
            )

    def with_time_power(self, power: float) -> FlowMatchingObjective:
        """A copy drawing the path's times as ``s = u ** power`` (``train.fm_time_power``:
        more of them near the data for ``power > 1``)."""
        out, f = copy.copy(self), self.fm
        if f.times[0] != "uniform":
            raise WorkbenchError(
                f"train.fm_time_power = {power:g} and the objective's own times ({f!r}) both "
                "set the path's times; keep one"
            )
        out.fm = type(f)(f.path, f.ot, f.sigma, times="power", time_power=power)
        return out

    def loss(self, trainer, model, x, context):
        flow = getattr(model, "_orig_mod", model)
        if flow is model:
            return self.fm(model, x, context)
        # train.compile: the trainer compiled the flow, but flow matching never calls it (the
        # loss regresses the CNF's network at points of the path): compile that network
        from ..matching import split_flow

        net = split_flow(flow)[1].net
        if self._compiled[0] is not net:
            self._compiled = (net, torch.compile(net, options=COMPILE_OPTIONS))
        return self.fm(flow, x, context, net=self._compiled[1])

    @torch.no_grad()
    def validate(self, trainer, x, context):
        return Loss(self.fm).validate(trainer, x, context)


_OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "nll": NLL,
    "flow-matching": lambda: FlowMatchingObjective(),
    "flow-matching-ot": lambda: FlowMatchingObjective(ot=True, name="flow-matching-ot"),
    "flow-matching-vp": lambda: FlowMatchingObjective(path="vp", name="flow-matching-vp"),
    "mflow": lambda: _mflow("sequential"),
    "mflow-alternating": lambda: _mflow("alternating"),
}


def _mflow(schedule: str) -> Objective:
    from .mflow import MFlowObjective  # (it imports this module)

    return MFlowObjective(schedule)


assert set(_OBJECTIVES) == set(OBJECTIVES), "config.OBJECTIVES and the trainer's must agree"


def make_objective(spec) -> Objective:
    """An :class:`Objective` from a name (``train.objective``), an objective, or a callable
    ``(model, x, context) -> loss``."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        if spec not in _OBJECTIVES:
            raise WorkbenchError(
                f"unknown objective {spec!r}; expected one of {sorted(_OBJECTIVES)}"
            )
        return _OBJECTIVES[spec]()
    from ..matching import FlowMatching

    if isinstance(spec, FlowMatching):  # the library's loss: the flow-matching objective (its
        out = FlowMatchingObjective(spec.path, spec.ot, spec.sigma)  # checks, fm_time_power)
        out.fm = spec
        return out
    if callable(spec):
        return Loss(spec)
    raise WorkbenchError(f"expected an objective name or callable, got {type(spec).__name__}")


# -- pieces --------------------------------------------------------------------------------------


def adam(params, lr: float, kind: str = "adam", **kwargs) -> torch.optim.Optimizer:
    """Adam, AdamW or Adamax, fused into one kernel where torch has one for the parameters'
    device (the per-tensor update loop is a quarter of a small flow's CPU step). The fused
    kernels follow the same update rule."""
    params = list(params)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}[kind]
    if kind == "adamax":
        return cls(params, lr=lr, **kwargs)  # torch has no fused Adamax
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )
    return cls(params, lr=lr, fused=fused or None, **kwargs)


def _nonfinite(obj) -> bool:
    if isinstance(obj, Tensor):
        return obj.is_floating_point() and not bool(torch.isfinite(obj).all())
    if isinstance(obj, (tuple, list)):
        return any(_nonfinite(o) for o in obj)
    return False


def _check_rows(t: Tensor | None, what: str) -> None:
    """Once, before training: the data's NaN/inf rows, by their index in the data set,
    looked for a chunk of rows at a time (``torch.isfinite`` of a whole split of images
    takes temporaries of the split's size)."""
    if t is None or not t.is_floating_point():
        return
    step = _chunk_rows(math.prod(t.shape[1:]))  # (rows whose temporaries stay small)
    chunks = (t[i : i + step] for i in range(0, len(t), step))
    bad = [~torch.isfinite(c.reshape(len(c), -1)).all(1) for c in chunks]
    bad = torch.cat(bad) if bad else torch.zeros(0, dtype=torch.bool, device=t.device)
    if bad.any():
        rows = bad.nonzero().flatten()[:8].tolist()
        raise WorkbenchError(
            f"the {what} data has NaN or inf in {int(bad.sum())} row(s), first at rows {rows}"
        )


LOOKED_ROWS = 10_000  # the rows (the first) that _integer_valued looks at


def _integer_valued(model, x: Tensor | None) -> str | None:
    """A warning for training data whose features hold only integer values that repeat
    (counts, categories, ages, raw pixel levels: :func:`.data.discrete_column`), given to a
    model with no dequantizer: a continuous density can put spikes on the integers, and its
    NLL then falls without bound as it trains (the
    command line's table check, for tensors). Looks at the first :data:`LOOKED_ROWS` rows;
    a table's columns one by one, and wider examples (images) as a whole."""
    from ..models.integer import IntegerFlow
    from .data import discrete_column  # (the command line's table check's rule)

    if (
        x is None
        or x.dtype.is_complex
        or len(x) < 2
        or getattr(model, "dequantizer", None) is not None
        or isinstance(model, IntegerFlow)  # (exact on integers)
    ):
        return None
    flat = x[:LOOKED_ROWS].reshape(min(len(x), LOOKED_ROWS), -1)
    if not flat.is_floating_point():  # (integer tensors: whole by construction)
        flat = flat.double()
    whole = (flat == flat.round()).all(0)
    fix = (
        "build the model with levels=K for integers in [0, K - 1] (it then dequantizes them), "
        "or wrap it as ff.models.integer_columns(flow, columns=[...]) for some columns of a "
        "table, so that its NLL is a bound on the integers' likelihood"
    )
    if flat.shape[1] > 64 or x.dim() > 2:  # (images, sequences: one verdict for the whole)
        if not bool(whole.all()):
            return None
        values = torch.unique(flat)
        if len(values) > 256:
            return None
        return (
            f"train_x holds only integers ({len(values)} values in [{values[0].item():g}, "
            f"{values[-1].item():g}]) and the model has no dequantizer: a continuous density "
            "can put spikes on them, and its NLL then falls without bound as it trains; " + fix
        )
    flagged = [
        j
        for j in whole.nonzero().flatten().tolist()
        if discrete_column(len(flat), len(torch.unique(flat[:, j])))
    ]
    if not flagged:
        return None
    cols = ", ".join(map(str, flagged[:8])) + (" ..." if len(flagged) > 8 else "")
    return (
        f"train_x's column(s) {cols} hold only integer values that repeat (categories, "
        "counts, ages?) "
        "and the model has no dequantizer: a continuous density can put spikes on them and "
        "report a misleadingly low NLL that falls the longer it trains; " + fix + ", or drop them"
    )


FEW_INIT_ROWS = 16  # a data-dependent layer initialised from fewer rows: a warning at fit()


def _check_precision(t: Tensor | None, what: str, dtype: torch.dtype) -> None:
    """Once, before training: a ``WorkbenchError`` for a column of ``t`` (float64 data) whose
    variation the model's ``dtype`` (float32) cannot hold, as the workbench checks a table
    file: 1.7e9 +- 10 rounds onto a few float32 values, and the flow would fit those spikes
    (an NLL far below the truth). Refused when rounding moves a value by more than a hundredth
    of its column's standard deviation (:func:`flowforge.core.precision_lost`)."""
    if (
        t is None
        or not t.is_floating_point()
        or not dtype.is_floating_point
        or torch.finfo(t.dtype).eps >= torch.finfo(dtype).eps
        or len(t) < 2
    ):
        return
    said = precision_lost(t, dtype)  # (the check of a flow's inputs, over the whole data)
    if said is not None:
        raise WorkbenchError(f"{what} {said}")


def _layer_name(model: torch.nn.Module, name: str) -> str:
    """``transform.layers.3 (Coupling)`` for a parameter or module path inside a flow: the
    deepest layer (a :class:`~flowforge.Transform` other than a chain) that holds it."""
    from ..core import Compose, Transform

    mods = dict(model.named_modules())
    parts = name.split(".")
    best = None
    for i in range(1, len(parts) + 1):
        m = mods.get(".".join(parts[:i]))
        if isinstance(m, Transform) and not isinstance(m, Compose):
            best = ".".join(parts[:i])
    if best is None:
        top = name
        while top and top not in mods:
            top = top.rpartition(".")[0]
        best = top
    return f"{best} ({type(mods[best]).__name__})" if best else name


@torch.no_grad()
def find_nonfinite(
    model: torch.nn.Module,
    rerun: Callable[[], object],
    rng_state=None,
    overflow: str = Objective.overflow,
) -> str:
    """Re-run a forward pass with hooks; name the first module whose output is NaN/inf
    (``overflow``: what to say when none is)."""
    names = {m: n for n, m in model.named_modules()}
    hits: list[str] = []

    def hook(module, inputs, output):
        if not hits and _nonfinite(output):
            hits.append(names[module])

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    # the step's random state on the CPU and on the model's device (a CUDA device draws its
    # noise from its own generator), restored afterwards
    held = next(iter(model.parameters()), None)
    device = held.device if held is not None else torch.device("cpu")
    state = rng_states(device)
    try:
        if isinstance(rng_state, tuple):
            set_rng_states(rng_state, device)
        elif rng_state is not None:  # (a CPU state alone)
            torch.set_rng_state(rng_state)
        try:
            rerun()
        except Exception as e:  # report, do not mask the original problem
            return f"the re-run raised {type(e).__name__}: {' '.join(str(e).split())}"
    finally:
        set_rng_states(state, device)
        for h in handles:
            h.remove()
    if not hits:
        return f"no layer output is NaN/inf: {overflow}"
    inner = hits[0]
    what = _layer_name(model, inner)
    mods = dict(model.named_modules())
    if not what.startswith(inner + " "):
        what += f", first at {inner} ({type(mods[inner]).__name__})"
    return f"first non-finite output in {what}"


class _ForcedStop(KeyboardInterrupt):
    """A second signal before training reached a point where it can stop exactly."""


class _Signals:
    """While training, SIGINT, SIGTERM and SIGHUP ask it to stop: the trainer stops at the end
    of the step in progress (``pending``; with several processes, at the end of a step they all
    agree on), where the checkpoint it saves resumes exactly: the weights, the optimizer and
    the counters of finished steps, and the random state before the next step's draws. A
    second signal before then stops at once (:class:`_ForcedStop`) and keeps the last
    checkpoint; inside :meth:`deferred` (a file being written) every signal waits. A signal
    ignored when training starts (SIGHUP under ``nohup``) stays ignored."""

    SIGNALS = tuple(
        s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s
    )

    def __init__(self, force: bool = True):
        self.old: dict = {}
        self.pending = False
        self.received: int | None = None  # the first signal's number
        self.deferring = False
        # with several processes a second signal waits too: a rank stopping alone would leave
        # the others waiting in the next collective (torchrun's own kill is the hard stop)
        self.force = force

    def _handler(self, signum, frame):
        if self.pending and self.force and not self.deferring:
            raise _ForcedStop
        self.pending = True
        self.received = self.received or signum

    def __enter__(self):
        for s in self.SIGNALS:
            if signal.getsignal(s) is signal.SIG_IGN:  # (nohup, `&` in a script): stays so
                continue
            try:
                self.old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        # a SIGTERM or SIGHUP (a scheduler's kill, a closed terminal) whose action was the
        # default one, or a handler of the caller's own, is passed on now that the checkpoint
        # is saved: the process ends (or the caller's handler runs) as the sender meant, rather
        # than going on to its next experiment and exiting 0. Ctrl-C stays an interrupted fit
        # (a notebook's stop button), and the command line handles its own.
        s = self.received
        if s is not None and s != signal.SIGINT and s in self.old and exc[0] is None:
            h = self.old[s]
            if h is signal.SIG_DFL or (callable(h) and not getattr(h, "handles_training", False)):
                signal.raise_signal(s)
        return False

    @contextlib.contextmanager
    def deferred(self):
        """Signals wait while inside (a file is being written): even a second one."""
        before, self.deferring = self.deferring, True
        try:
            yield
        finally:
            self.deferring = before


class _Watch:
    """Flags a loss far above its running median, or a gradient norm far above its own."""

    WINDOW = 50

    def __init__(self, window: int = WINDOW):
        self.losses: deque[float] = deque(maxlen=window)
        self.norms: deque[float] = deque(maxlen=window)

    def check(self, loss: float, norm: float) -> str | None:
        msg = None
        if len(self.losses) >= 10:
            med = statistics.median(self.losses)
            mad = statistics.median(abs(v - med) for v in self.losses)
            if loss - med > max(20 * mad, 0.5 * abs(med), 1.0):
                msg = f"loss {loss:.4g} jumped far above its running median {med:.4g}"
            nmed = statistics.median(self.norms)
            if math.isfinite(norm) and nmed > 0 and norm > 100 * nmed and norm > 10:
                msg = (msg + "; " if msg else "") + (
                    f"gradient norm {norm:.3g} is {norm / nmed:.0f}x its running median"
                )
        self.losses.append(loss)
        if math.isfinite(norm):
            self.norms.append(norm)
        return msg


SPIKES_SHOWN = 5  # loss spikes printed; the rest are logged only
MAX_WARNINGS = 1000  # warnings a checkpoint keeps for the resumed run's summary
MAX_WARNING_CHARS = 10_000  # and their length


def _saved_watch(meta: dict) -> tuple[list[str], dict[str, _Watch]]:
    """A checkpoint's warnings and spike-watch windows (none in one from before they were
    saved); ValueError for values this trainer does not write."""
    warnings = meta.get("warnings", [])
    if (
        not isinstance(warnings, list)
        or len(warnings) > MAX_WARNINGS
        or not all(isinstance(w, str) and len(w) <= MAX_WARNING_CHARS for w in warnings)
    ):
        raise ValueError("its list of warnings is malformed")
    watch = {}
    saved = meta.get("watch", {})
    if not isinstance(saved, dict) or len(saved) > 8:
        raise ValueError("its loss watch is malformed")
    for kind, windows in saved.items():
        if not (
            isinstance(windows, list)
            and len(windows) == 2
            and all(
                isinstance(w, list)
                and len(w) <= _Watch.WINDOW
                and all(
                    not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                    for v in w
                )
                for w in windows
            )
        ):
            raise ValueError(f"its loss watch {kind!r} is malformed")
        w = watch[kind] = _Watch()
        w.losses.extend(float(v) for v in windows[0])
        w.norms.extend(float(v) for v in windows[1])
    return list(warnings), watch


# -- the trainer ---------------------------------------------------------------------------------


COMPILE_AGREEMENT = 1e-3  # of the largest gradient: float32's reordered sums stay far below


def _disagreement(first: list, second: list) -> float:
    """The largest difference between two lists of gradients (None: no gradient), relative
    to the second's largest entry; inf where one has a gradient, or a non-finite entry, that
    the other has not."""
    worst, scale = 0.0, 0.0
    for a, b in zip(first, second):
        if a is None or b is None:
            if a is not b:
                return math.inf
            continue
        fa, fb = torch.isfinite(a), torch.isfinite(b)
        if not torch.equal(fa, fb):
            return math.inf
        diff, size = (a - b)[fb].abs(), b[fb].abs()
        if diff.numel():
            worst, scale = max(worst, float(diff.max())), max(scale, float(size.max()))
    return worst / scale if scale > 0 else (0.0 if worst == 0 else math.inf)


def _same_examples(train_x, val_x, train_context=None, val_context=None) -> bool:
    """Whether the validation examples are the training ones (the same tensor, a view of
    its storage, or equal values), context included: ``Trainer(flow, x, x)``."""
    if train_x.shape != val_x.shape or train_x.device != val_x.device:
        return False
    if train_x.device.type == "meta":  # (shapes only: nothing to compare)
        return train_x is val_x
    if (train_context is None) != (val_context is None):
        return False
    pairs = [(train_x, val_x)] + (
        [(train_context, val_context)] if train_context is not None else []
    )
    for a, b in pairs:
        if a is b or (a.data_ptr() == b.data_ptr() and a.stride() == b.stride()):
            continue
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        if not torch.equal(a, b):
            return False
    return True


class Trainer:
    r"""Training with validation, best checkpoint, EMA, LR halving, early stopping and resume.

    Args:
        model: the model to fit (a :class:`~flowforge.Flow`, or any module the objective takes).
        train_x, val_x: data tensors shaped like the model's input (None for objectives that
            need no data, e.g. :class:`ReverseKL`).
        train: training options (see :data:`~flowforge.workbench.config.DEFAULT_TRAIN`);
            missing keys take the defaults, unknown keys are an error.
        objective: a name (default: ``train.objective``, ``"nll"``), an :class:`Objective`,
            or ``fn(model, x, context) -> loss``.
        seed: seeds the data order (and the validation noise).
        out: the run folder; None trains without writing anything.
        model_bytes: ``model_bytes(module) -> bytes`` of ``model.ff`` (default
            ``io.to_bytes``); called with the EMA copy when there is one.
        bits_dims: with discrete data, the number of dimensions for bits/dim, else None.
        steps_per_epoch: for objectives without data, the optimizer steps of one epoch.
        progress: show a tqdm bar (rank 0). echo: print one line per epoch (rank 0).
        callback: ``callback(trainer)`` after every optimizer step; it may call
            ``trainer.stop()`` to end the run after the epoch in progress, and read the
            records logged so far (epochs, steps, warnings) in ``trainer.history``.
        train_context, val_context: per-example contexts of a conditional model.
        overwrite: a new training in an ``out`` that holds an earlier one's files (checkpoint,
            model, metrics) replaces them; without it that folder is refused (so is one
            holding files flowforge did not write). ``fit(resume=True)`` continues one.

    The data order of epoch ``e`` is a permutation seeded by ``seed + e``
    (:class:`~torch.utils.data.DistributedSampler`); under torchrun each rank takes every
    ``world``-th example of it and a ``batch_size / world`` slice per step, so a global batch
    holds the same examples as in a single process. When the model has a batch-normalisation
    layer, a last batch of a single example is dropped (its batch statistics are undefined).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_x: Tensor | None = None,
        val_x: Tensor | None = None,
        train: dict | None = None,
        *,
        objective: str | Objective | Callable | None = None,
        seed: int = 0,
        out: str | os.PathLike | None = None,
        model_bytes: Callable[[torch.nn.Module], bytes] | None = None,
        bits_dims: int | None = None,
        steps_per_epoch: int | None = None,
        progress: bool = True,
        callback: Callable[[Trainer], None] | None = None,
        echo: bool = True,
        train_context: Tensor | None = None,
        val_context: Tensor | None = None,
        overwrite: bool = False,
    ):
        unknown = set(train or {}) - set(DEFAULT_TRAIN)
        if unknown:
            first = sorted(unknown, key=str)[0]
            raise WorkbenchError(
                f"unknown train options {sorted(map(str, unknown))}{train_key_hint(first)}"
            )
        held = next(itertools.chain(model.parameters(), model.buffers()), None)
        if "device" not in (train or {}) and held is not None and held.device.type == "cuda":
            # trained where it is, not moved to the CPU unasked; under torchrun each rank on
            # its own GPU ("cuda": LOCAL_RANK's), whichever one the model was put on
            where = "cuda" if dist_env()[1] > 1 else str(held.device)
            train = {**(train or {}), "device": where}
        self.cfg = {
            k: checked(f"train.{k}", v, TRAIN_CHECKS[k])
            for k, v in {**DEFAULT_TRAIN, **(train or {})}.items()
        }
        weights = next((p for p in model.parameters() if p.is_floating_point()), None)
        precision = None if weights is None else str(weights.dtype).removeprefix("torch.")
        # (a float64 run asked of a model in another precision; "float32", as DEFAULT_TRAIN
        # holds it, leaves a float64 model of the caller's as it is)
        asked = (train or {}).get("dtype") == "float64"
        if asked and precision is not None and precision != self.cfg["dtype"]:
            raise WorkbenchError(
                f"train.dtype is {self.cfg['dtype']} and the model's weights are {precision}: "
                f"the Trainer trains a model in its own precision; move it first "
                f"(model.{'double' if self.cfg['dtype'] == 'float64' else 'float'}()), or drop "
                "train.dtype"
            )
        if precision in ("float32", "float64"):  # (not given: the model's, as it trains)
            self.cfg["dtype"] = precision
        self.objective = make_objective(self.cfg["objective"] if objective is None else objective)
        if self.cfg["fm_time_power"] != 1.0:
            if not isinstance(self.objective, FlowMatchingObjective):
                name = getattr(self.objective, "name", self.cfg["objective"])
                raise WorkbenchError(
                    f"train.fm_time_power = {self.cfg['fm_time_power']:g} applies to the "
                    f"flow-matching objectives only, and this run's objective is {name}: drop "
                    "it, or override a config file's with --set train.fm_time_power=1"
                )
            self.objective = self.objective.with_time_power(self.cfg["fm_time_power"])
        self.model, self.seed = model, _checked_seed(seed)
        self.out = None if out is None else Path(out)
        self.overwrite = bool(overwrite)
        self._run_folder = False  # train() sets it: its run folder, checked and cleared there
        self.rank, self.world = dist_env()
        if hasattr(self.objective, "check"):  # e.g. flow matching: refuse a model it cannot train
            self.objective.check(self, model)
        self.device = resolve_device(self.cfg["device"])
        self.model.to(self.device)
        if self.cfg["compile"] is True and self.cfg["memory_saving"]:
            raise WorkbenchError(
                "train.compile and train.memory_saving do not combine (the recomputing "
                "backward pass runs outside the compiled graph); choose one"
            )
        if self.cfg["memory_saving"]:
            from ..core import memory_saving

            with self._switched():  # (checked now; switched on while fit() trains)
                try:
                    memory_saving(self.model)
                except ValueError as e:
                    raise WorkbenchError(f"train.memory_saving: {e}") from None
        if self.cfg["compile"] == "splines":  # only the splines, through torch.compile
            from ..transforms.splines import RationalQuadratic
            from .mflow import MFlowObjective

            splines = [m for m in self.model.modules() if isinstance(m, RationalQuadratic)]
            if isinstance(self.objective, MFlowObjective):
                raise WorkbenchError(
                    "train.compile: splines cannot train an M-flow (its Jacobian-vector "
                    "products differentiate twice, which a compiled spline cannot)"
                )
            if not splines:
                raise WorkbenchError(
                    "train.compile: splines compiles a model's rational-quadratic splines, and "
                    "this model has none (use train.compile: true to compile the whole model)"
                )
        for what, t in (("train_x", train_x), ("val_x", val_x), ("train_context", train_context),
                        ("val_context", val_context)):  # fmt: skip
            if t is not None and not isinstance(t, Tensor):
                convert = (
                    f"convert it with {what} = torch.as_tensor({what}, dtype=torch.float32)"
                    if hasattr(t, "__array__")
                    else "the Trainer batches the data itself: pass the tensors a DataLoader "
                    "would draw from"
                )
                raise WorkbenchError(
                    f"{what} must be a tensor of examples, got {type(t).__name__} ({convert})"
                )
        for what, x, c in (("training", train_x, train_context),
                           ("validation", val_x, val_context)):  # fmt: skip
            if x is not None and c is not None and len(c) != len(x):
                raise WorkbenchError(
                    f"the {what} context has {len(c):,} rows and the {what} data {len(x):,}; "
                    "expected one context row per example"
                )
        if train_x is not None and val_x is not None and train_x.shape[1:] != val_x.shape[1:]:
            raise WorkbenchError(  # (found before training, not at the first validation)
                f"val_x has examples of shape {tuple(val_x.shape[1:])} and train_x "
                f"{tuple(train_x.shape[1:])}; expected the same"
            )
        both = train_x is not None and val_x is not None
        if both and _same_examples(train_x, val_x, train_context, val_context):
            warnings.warn(  # (the validation split then selects nothing: said, not refused)
                "val_x is train_x (the same examples): early stopping, the best epoch and the "
                "learning-rate halving then select on the training data; hold out examples "
                "the model does not train on",
                stacklevel=2,
            )
        if both and (train_context is None) != (val_context is None):
            given, missing = ("val_context", "train_context")
            if val_context is None:
                given, missing = missing, given
            raise WorkbenchError(
                f"{given} is given and {missing} is not: a conditional model needs a context "
                "for every example, in training and in validation"
            )
        if (
            train_context is not None
            and val_context is not None
            and train_context.shape[1:] != val_context.shape[1:]
        ):
            raise WorkbenchError(
                f"val_context has rows of shape {tuple(val_context.shape[1:])} and "
                f"train_context {tuple(train_context.shape[1:])}; expected the same"
            )
        put = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        self.train_x, self.val_x = put(train_x), put(val_x)
        self.train_c, self.val_c = put(train_context), put(val_context)
        if self.objective.needs_data:
            if train_x is None or val_x is None:
                missing = " and ".join(k for k, v in (("train_x", train_x), ("val_x", val_x))
                                       if v is None)  # fmt: skip
                raise WorkbenchError(
                    f"the {self.objective.name} objective needs data: {missing} is None"
                )
            if len(train_x) == 0 or len(val_x) == 0:
                raise WorkbenchError("the training and validation sets must not be empty")
            for what, t in (("training", train_x), ("validation", val_x),
                            ("training context", train_context),
                            ("validation context", val_context)):  # fmt: skip
                _check_rows(t, what)
            held = next((p for p in model.parameters() if p.is_floating_point()), None)
            for what, t in (("train_x", train_x), ("val_x", val_x),
                            ("train_context", train_context),
                            ("val_context", val_context)):  # fmt: skip
                _check_precision(t, what, torch.get_default_dtype() if held is None else held.dtype)
        self.model_bytes = model_bytes or io.to_bytes
        why = io.unsaveable_config(getattr(io._unwrap(model), "config", None))
        if self.out is not None and self.model_bytes is io.to_bytes and why is not None:
            raise WorkbenchError(f"cannot write {MODEL_FILE} for this model: {why}")
        self.bits_dims = bits_dims
        self.progress, self.callback, self.echo = progress, callback, echo
        if self.cfg["batch_size"] % self.world:
            raise WorkbenchError(
                f"batch_size {self.cfg['batch_size']} is not divisible by {self.world} processes"
            )
        self.local_batch = self.cfg["batch_size"] // self.world
        if self.objective.needs_data:
            from torch.utils.data import DistributedSampler

            self.sampler = DistributedSampler(
                range(len(train_x)),
                num_replicas=self.world,
                rank=self.rank,
                shuffle=True,
                seed=self.seed,
            )
            n = len(self.sampler)
            self.steps_per_epoch = math.ceil(n / self.local_batch)
            batch_stats = any(
                isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                or type(m).__name__ == "BatchNorm"
                for m in model.modules()
            )
            if batch_stats and n % self.local_batch == 1 and self.steps_per_epoch > 1:
                self.steps_per_epoch -= 1  # drop a last batch of one example
        else:
            self.sampler = None
            if not steps_per_epoch or steps_per_epoch < 1:
                raise WorkbenchError("an objective without data needs steps_per_epoch >= 1")
            self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = self.steps_per_epoch * self.cfg["epochs"]
        starts = sorted(set(self.objective.phase_starts(self.cfg)) - {0})
        if any(not 0 < s < self.cfg["epochs"] for s in starts):
            raise WorkbenchError(
                f"the {self.objective.name} objective's phases {starts} do not fit in "
                f"{self.cfg['epochs']} epochs"
            )
        self.phase_starts = [0, *starts]
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise WorkbenchError(
                "the model has no parameter that requires a gradient (all frozen?): nothing "
                "to train"
            )
        self.opt = adam(
            params,
            lr=float(self.cfg["lr"]),
            kind=self.cfg["optimizer"],
            betas=tuple(self.cfg["betas"]),
            weight_decay=float(self.cfg["weight_decay"]),
        )
        self.lr_factor = 1.0  # halved on plateaus
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_lambda)
        self.ema = copy.deepcopy(model) if self.cfg["ema"] else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.epoch = 0  # the epoch in progress (0-based)
        self.step_in_epoch = 0  # optimizer steps done in it
        self.global_step = 0
        self.best = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.last_halved = -1
        self.skipped = 0
        self.spikes = 0  # loss spikes flagged
        self.epoch_losses: list[float] = []  # losses of the epoch in progress
        self.finished: str | None = None
        # the records logged; step records evenly thinned past MAX_STEP_RECORDS (runs.Records)
        self.history: list[dict] = Records()
        self._metrics_bytes: int | None = None  # metrics.jsonl's size (None: not looked yet)
        self._metrics_full = False  # step records no longer written (METRICS_STEP_BYTES)
        self.warnings: list[str] = []
        self.best_state: dict | None = None  # without a run folder, the best weights
        self._watch: dict[str, _Watch] = {}  # one per kind of loss
        self._signals: _Signals | None = None
        self.stdout_error: str | None = None  # standard output failed: training stops
        self._tb = None
        self._step_lr = float(self.cfg["lr"])  # the rate the last step took (its record's)
        self._stop_asked = False  # Trainer.stop(): end after this epoch

    # -- helpers --------------------------------------------------------------------------
    @property
    def flow(self) -> torch.nn.Module:
        """The model being trained (its weights; see :attr:`eval_model` for the EMA)."""
        return self.model

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model

    @property
    def writer(self) -> bool:
        return self.rank == 0 and self.out is not None

    def _phase_span(self, epoch: int) -> tuple[int, int]:
        """``(first, end)`` epochs of the training phase that holds ``epoch``."""
        first = max(s for s in self.phase_starts if s <= epoch)
        end = min((s for s in self.phase_starts if s > epoch), default=self.cfg["epochs"])
        return first, end

    def _lr_lambda(self, step: int) -> float:
        # warm-up then cosine within the phase that holds the step (the whole run by default)
        first, end = self._phase_span(min(step // self.steps_per_epoch, self.cfg["epochs"] - 1))
        step -= first * self.steps_per_epoch
        warmup = self.cfg["warmup_steps"]
        if warmup == "auto":  # 100 steps, but at most a tenth of a short run (small data)
            warmup = min(100, (end - first) * self.steps_per_epoch // 10)
        if warmup > 0 and step < warmup:
            return self.lr_factor * (step + 1) / warmup
        if self.cfg["schedule"] == "constant":
            return self.lr_factor
        span = max(1, (end - first) * self.steps_per_epoch - warmup)
        progress = min(1.0, (step - warmup) / span)
        lo = float(self.cfg["min_lr_ratio"])
        return self.lr_factor * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress)))

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.writer:
            path = self.out / METRICS_FILE
            if self._metrics_bytes is None:  # (a resumed run that was full has said so)
                self._metrics_bytes = path.stat().st_size if path.is_file() else 0
                self._metrics_full = self._metrics_bytes >= METRICS_STEP_BYTES
            full = self._metrics_bytes >= METRICS_STEP_BYTES
            if record["type"] != "step" or not full:
                line = (json.dumps(record) + "\n").encode()
                io.append(path, line)  # (a failure names the file and leaves no partial line)
                self._metrics_bytes += len(line)
            if record["type"] == "step" and self._metrics_bytes >= METRICS_STEP_BYTES:
                if not self._metrics_full:  # (the warning is not a step record: no loop)
                    self._metrics_full = True
                    self._warn(
                        f"metrics.jsonl has reached {METRICS_STEP_BYTES >> 20:,} MiB: no more "
                        "step records are written to it (epoch records are); raise "
                        "train.log_every to log fewer steps"
                    )
            if self._tb is not None:
                self._tb_scalars(record)

    def _tb_scalars(self, record: dict) -> None:
        for k, v in record.items():
            if isinstance(v, float) and k != "time":
                self._tb.add_scalar(f"{record['type']}/{k}", v, record["step"])

    def _say(self, msg: str) -> None:
        if self.echo and self.rank == 0:
            try:
                if self.progress:  # (above the bar)
                    from tqdm import tqdm

                    tqdm.write(msg, file=sys.stdout)
                else:  # (no bar: no tqdm needed)
                    print(msg, file=sys.stdout)
                if sys.stdout is not None:  # (None where Python has no stdout: nothing to say)
                    sys.stdout.flush()  # (a full disk is met at this line, not at exit)
            except OSError as e:  # its reader gone (`| head`), its disk full: as a SIGHUP
                self.echo = False
                reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
                if not reason.startswith("cannot write to standard output"):
                    reason = f"cannot write to standard output: {reason}"
                self.stdout_error = reason
                if self._signals is not None:
                    self._signals.pending = True  # training stops at the end of this step

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self._log(
            {"type": "warning", "epoch": self.epoch + 1, "step": self.global_step, "message": msg}
        )
        if self.rank == 0:  # (the command line prints it as "flowforge: warning: ...")
            # explicit, with a registry of its own: said every time (a second run in a
            # notebook warns again), and still filtered, recorded or raised as the caller asks
            warnings.warn_explicit(msg, TrainingWarning, __file__, 0, module=__name__, registry={})

    def _bpd(self, nll: float) -> float | None:
        return None if self.bits_dims is None else nll / (self.bits_dims * math.log(2))

    @torch.no_grad()
    def nll(self, x: Tensor, context: Tensor | None = None, samples: int | None = None) -> float:
        """Mean NLL (nats/example) of the evaluated weights in eval mode, averaged over
        ``samples`` draws (``train.val_samples``) where the score is random (dequantization, a
        Hutchinson trace, Russian roulette), in one pass where it is exact; the noise is seeded,
        so the number is repeatable and independent of the training random stream."""
        samples = int(samples or self.cfg["val_samples"])
        total, bs = 0.0, self.cfg["eval_batch_size"]
        with self.validating() as model:
            if samples > 1:
                from .evaluate import _scoring_noise

                if _scoring_noise(model, None) is None:  # each draw the same number
                    samples = 1
            for _ in range(samples):
                for i in range(0, x.shape[0], bs):
                    c = None if context is None else context[i : i + bs]
                    total += model.log_prob(x[i : i + bs], c).double().sum().item()
        return -total / (x.shape[0] * samples)

    @contextlib.contextmanager
    def validating(self):
        """The evaluated weights in eval mode, under a forked random stream seeded apart from
        training's: every validation number is repeatable, moves no layer's running state and
        leaves the training stream as it was."""
        model = self.eval_model
        was = training_modes(model)
        with fork_rng():
            torch.manual_seed(self.seed + 7919)
            model.eval()
            try:
                yield model
            finally:
                restore_modes(was)

    def _warn_early_init(self) -> None:
        """A warning, at the start of training, for a layer that initialised itself from data
        (DataStandardize, ActNorm) before the Trainer saw the data, from fewer rows than the
        Trainer would have given it (a ``flow.log_prob(x[:3])`` in training mode): its
        statistics are fixed for good, and training from them can end far worse. Each such layer
        records the rows it initialised from (``init_rows``); one loaded initialised (from a
        file, a state dict) has no record and says nothing."""
        from ..core import DataInit

        early = []
        if self.train_x is not None:
            size = min(len(self.train_x), int(self.cfg["init_batch"]) or self.cfg["batch_size"])
            for name, m in self.model.named_modules():
                rows = m.__dict__.get("init_rows") if isinstance(m, DataInit) else None
                # (a few rows, as a stray call gives them: an earlier Trainer's init batch of
                # 128 is no cause for alarm)
                if rows is not None and rows < min(size, FEW_INIT_ROWS) and not m._waiting():
                    early.append((name, m, rows))
        if early:
            name, m, rows = early[0]
            more = f" (and {len(early) - 1} more such layers)" if len(early) > 1 else ""
            self._warn(
                f"{type(m).__name__} ({name or 'the model'}){more} initialised itself before "
                f"fit() from a batch of only {rows} rows (a call of the flow in training mode, "
                f"e.g. flow.log_prob(x[:{rows}])), not the {size} the Trainer gives it; its "
                "statistics stay fixed: build the flow again and look at it in eval mode "
                "(flow.eval()) before fit(), or initialise it from a large shuffled sample "
                "(flow.train(); flow.log_prob(sample))"
            )

    def _unread_options(self) -> list[str]:
        """What the train options set that this run does not read (warnings, not refusals:
        runs that recorded them resume): a sweep over them would give identical runs."""
        out = []
        name = getattr(self.objective, "name", self.cfg["objective"])
        if self.cfg["val_samples"] != 1 and not isinstance(self.objective, NLL):
            out.append(
                f"train.val_samples = {self.cfg['val_samples']} averages draws of the maximum-"
                f"likelihood objective's validation NLL; this run's objective is {name}, which "
                "validates in one pass and does not read it (--set train.val_samples=1 leaves "
                "it out)"
            )
        if self.cfg["min_lr_ratio"] and self.cfg["schedule"] == "constant":
            out.append(
                f"train.min_lr_ratio = {self.cfg['min_lr_ratio']:g} is where the cosine decay "
                "ends; with train.schedule: constant it does nothing (--set train.schedule="
                "cosine uses it)"
            )
        if self.cfg["init_batch"] and self.train_x is not None and not needs_data_init(self.model):
            out.append(
                f"train.init_batch = {self.cfg['init_batch']} is the batch a data-initialised "
                "layer (ActNorm, a first-batch standardisation) starts from; no layer of this "
                "model initialises from data (it has none, or has them from a run it starts "
                "from), so it does nothing"
            )
        return out

    def _init_data_dependent(self) -> None:
        """One forward pass on a fixed batch (``train.init_batch`` examples of the first
        epoch's order) if a layer initialises from data (ActNorm), identical on every rank."""
        if not needs_data_init(self.model) or self.train_x is None:
            return
        from torch.utils.data import DistributedSampler

        whole = DistributedSampler(
            range(len(self.train_x)), num_replicas=1, rank=0, shuffle=True, seed=self.seed
        )
        whole.set_epoch(0)
        size = int(self.cfg["init_batch"]) or self.cfg["batch_size"]
        idx = torch.tensor(list(whole)[:size]).to(self.device)
        # (a loss of the user's may differentiate with respect to its inputs: with gradients)
        grad = torch.enable_grad() if isinstance(self.objective, Loss) else torch.no_grad()
        with fork_rng(), grad:
            torch.manual_seed(self.seed + 104729)
            self.model.train()
            c = None if self.train_c is None else self.train_c[idx]
            said: list = []
            try:
                with warnings.catch_warnings(record=True) as said:
                    warnings.simplefilter("always")
                    if isinstance(self.objective, Loss):  # (no graph of the parameters kept)
                        self.objective.evaluate(self.model, self.train_x[idx], c)
                    else:
                        self.objective.loss(self, self.model, self.train_x[idx], c)
            except ValueError as e:
                if "first batch" not in str(e):
                    raise
                raise WorkbenchError(
                    f"a layer initialises itself from the first {len(idx)} training example(s) "
                    "(train.init_batch, or the batch size when it is 0), too few for its "
                    "statistics: set train.init_batch to a few hundred (--set "
                    "train.init_batch=256; in Python, train={'init_batch': 256})"
                ) from None
            finally:
                small = False
                for w in said:  # the layer's advice is Python's; the trainer says it its way
                    if "takes its statistics for good" in str(w.message):
                        small = True
                    else:
                        # (module=None made Python drop it silently: a recorded warning has
                        # no module; without the argument it is derived from the file name)
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                if small:
                    self._warn(
                        f"a layer takes its statistics from the first {len(idx)} training "
                        "examples only (train.init_batch, or the batch size when it is 0); "
                        "--set train.init_batch=256 (in Python, train={'init_batch': 256}) gives "
                        "it more"
                    )
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = float(self.cfg["ema"])
        ema_p = [p for p in self.ema.parameters()]
        own_p = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_p, own_p, 1 - decay)
        for be, b in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(b)

    # -- state ----------------------------------------------------------------------------
    _STATE = (
        "epoch", "step_in_epoch", "global_step", "best", "best_epoch", "bad_epochs",
        "last_halved", "lr_factor", "skipped", "finished", "epoch_losses", "spikes",
    )  # fmt: skip

    @property
    def _saves_model(self) -> bool:
        """Whether the best weights go to ``model.ff`` (a model with a builder config, which
        ``ff.load`` can rebuild); other models keep them in memory and in the checkpoint."""
        return getattr(self.eval_model, "config", None) is not None

    def save_checkpoint(self, interrupt: bool = False) -> None:
        """Write the checkpoint; a signal during the write waits for it to finish (training
        then stops at the end of its step). ``interrupt``: the save of an interrupt (recorded,
        so that a run that stopped without one is not said to be interrupted)."""
        if not self.writer:
            return
        meta = {k: getattr(self, k) for k in self._STATE}
        meta["interrupt"] = interrupt
        warned = [w[:MAX_WARNING_CHARS] for w in self.warnings[-MAX_WARNINGS:]]
        meta.update(seed=self.seed, world=self.world, warnings=warned)
        # what the counters count in, and the options they ran under (checked on resume)
        meta.update(steps_per_epoch=self.steps_per_epoch, train=self._run_options())
        # the spike watch's windows: a resumed run flags (and misses) the spikes it would have
        meta["watch"] = {k: [list(w.losses), list(w.norms)] for k, w in self._watch.items()}
        meta["data"] = self._data_fingerprint()  # (a resume on other data is refused)
        ctx = self._signals.deferred() if self._signals else _nothing()
        with ctx:
            save_checkpoint(
                self.out / CKPT_FILE, self.model, self.opt, self.sched, meta, self.ema,
                best=None if self._saves_model else self.best_state, device=self.device,
            )  # fmt: skip

    def _data_fingerprint(self) -> list | None:
        """The training data's (and its context's) shapes and three float64 sums, the second
        weighted by row position: another file, another split or the same rows in another
        order give other numbers. Computed once, a chunk of rows at a time."""
        if self.train_x is None:
            return None
        if getattr(self, "_fingerprint", None) is None:
            out = []
            for t in (self.train_x, self.train_c):
                if t is None:
                    out.append(None)
                    continue
                sums = [0.0, 0.0, 0.0]
                step = _chunk_rows(max(1, math.prod(t.shape[1:])))
                for i in range(0, len(t), step):
                    c = t[i : i + step].reshape(len(t[i : i + step]), -1).double()
                    rows = c.sum(1)
                    at = torch.arange(i + 1, i + 1 + len(c), dtype=torch.float64, device=c.device)
                    part = torch.stack([rows.sum(), (rows * at).sum(), c.square().sum()])
                    sums = [a + b for a, b in zip(sums, part.tolist())]
                out.append([list(t.shape), sums])
            self._fingerprint = out
        return self._fingerprint

    def _check_same_data(self, meta: dict) -> None:
        """A ValueError when the checkpoint was trained on other data than this Trainer's (a
        checkpoint from before it was recorded is not checked)."""
        saved, now = meta.get("data"), self._data_fingerprint()
        if saved is None or now is None:
            return
        try:
            same = all(
                (a is None) == (b is None)
                and (a is None or (list(a[0]) == b[0] and all(
                    math.isclose(float(u), v, rel_tol=1e-9, abs_tol=1e-9)
                    for u, v in zip(a[1], b[1]))))
                for a, b in zip(saved, now)
            )  # fmt: skip
        except (TypeError, ValueError, IndexError):
            raise ValueError("its record of the training data is malformed") from None
        if not same:
            raise ValueError(
                "it was trained on other data than this Trainer's (the training data's shape "
                "or values, or their order, differ): resume with the data it was trained on, "
                "or start a new training"
            )

    def _run_options(self) -> dict:
        """The training options a resumed run must share with its checkpoint (as JSON has
        them): all but where it runs and whether it writes TensorBoard files."""
        keep = {k: v for k, v in self.cfg.items() if k not in ("device", "tensorboard")}
        return json.loads(json.dumps(keep))

    def _check_same_run(self, meta: dict, sched: dict) -> None:
        """A checkpoint written by this run as configured now, its counters consistent with
        one another (ValueError otherwise). Checkpoints written before these were recorded
        are checked for what they hold."""
        saved = meta.get("train")
        if saved is not None:
            if not isinstance(saved, dict):
                raise ValueError("its record of the training options is malformed")
            now = self._run_options()
            diff = [
                f"train.{k} {saved[k]!r}, now {v!r}"
                for k, v in now.items()
                if k in saved and saved[k] != v
            ]
            if diff:
                raise ValueError(
                    f"it was written with other training options than the run's config.json "
                    f"holds now ({'; '.join(diff[:4])}): restore them, or start the run again "
                    "with --overwrite"
                )
        if meta.get("world", 1) != self.world:  # (a note follows; the counters were another's)
            return
        spe = meta.get("steps_per_epoch", self.steps_per_epoch)
        if spe != self.steps_per_epoch:
            raise ValueError(
                f"it counts {spe!r} steps per epoch, and the run's data and batch size make "
                f"{self.steps_per_epoch}"
            )
        if (
            meta["global_step"] != meta["epoch"] * spe + meta["step_in_epoch"]
            or len(meta["epoch_losses"]) > meta["step_in_epoch"]
            or sched["last_epoch"] != meta["global_step"]
        ):
            raise ValueError(
                f"its counters disagree (epoch {meta['epoch']}, step {meta['step_in_epoch']} "
                f"of the epoch, step {meta['global_step']} of the run, scheduler step "
                f"{sched['last_epoch']}, {len(meta['epoch_losses'])} losses of the epoch)"
            )

    def _check_counters(self, st: dict) -> None:
        """A checkpoint's counters must describe a point of this run (ValueError otherwise)."""

        def whole(k, lo=0, hi=None):
            v = st[k]
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < lo
                or (hi is not None and v > hi)
            ):
                span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(f"its counter {k!r} is {v!r}, expected an integer {span}")

        whole("epoch", 0, self.cfg["epochs"])
        # (steps_per_epoch: an epoch interrupted after its last step, before its validation)
        whole("step_in_epoch", 0, self.steps_per_epoch)
        whole("global_step", 0, self.cfg["epochs"] * self.steps_per_epoch)
        whole("best_epoch", -1, self.cfg["epochs"])
        whole("bad_epochs", 0, self.cfg["epochs"])
        whole("last_halved", -1, self.cfg["epochs"])
        whole("skipped", 0)
        whole("spikes", 0)
        for k in ("best", "lr_factor"):
            if isinstance(st[k], bool) or not isinstance(st[k], (int, float)):
                raise ValueError(f"its value {k!r} is {st[k]!r}, expected a number")
        if math.isnan(st["best"]) or st["best"] == -math.inf:
            raise ValueError(f"its best validation value is {st['best']!r}, expected a number")
        if not 0 < st["lr_factor"] <= 1:  # (1, halved on each plateau)
            raise ValueError(f"its learning-rate factor is {st['lr_factor']!r}, expected (0, 1]")
        if st["finished"] not in (None, "finished", "early-stopped"):
            raise ValueError(f"its status {st['finished']!r} is not one this trainer writes")
        losses = st["epoch_losses"]
        if (
            not isinstance(losses, list)
            or len(losses) > self.steps_per_epoch
            or not all(
                not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                for v in losses
            )
        ):
            raise ValueError("its list of the epoch's losses is malformed")

    def _scheduler_state(self, saved) -> dict:
        """A checkpoint's scheduler state, checked against this run's scheduler: integer
        counters within the run, this run's base learning rates, finite rates, and flags (what
        else a torch version stores) that are flags."""
        own = self.sched.state_dict()
        need = ("base_lrs", "last_epoch", "_step_count", "_last_lr")
        if (
            not isinstance(saved, dict)
            or any(k not in saved for k in need)
            or any(
                not (v is None or isinstance(v, bool))
                for k, v in saved.items()
                if k not in (*need, "lr_lambdas")
            )
        ):
            raise ValueError("its scheduler state does not fit the run's scheduler")
        total = self.cfg["epochs"] * self.steps_per_epoch
        for k, lo in (("last_epoch", -1), ("_step_count", 0)):
            v = saved[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= total + 1:
                raise ValueError(f"its scheduler's {k} is {v!r}, expected an integer in "
                                 f"[{lo}, {total + 1}]")  # fmt: skip
        if saved["base_lrs"] != own["base_lrs"]:
            raise ValueError(
                f"its scheduler's base learning rates {saved['base_lrs']!r} are not the run's "
                f"{own['base_lrs']!r}"
            )
        last = saved.get("_last_lr")
        if not (
            isinstance(last, list)
            and len(last) == len(own["base_lrs"])
            and all(not isinstance(v, bool) and isinstance(v, (int, float)) for v in last)
            and all(math.isfinite(v) and v >= 0 for v in last)
        ):
            raise ValueError(f"its scheduler's last learning rates {last!r} are malformed")
        # the learning-rate functions are closures: rebuilt, not stored
        return {**saved, "lr_lambdas": [None] * len(self.opt.param_groups)}

    def load_checkpoint(self) -> None:
        if self.out is None:
            raise RunError(
                "resume needs the run folder its checkpoint is in: give the Trainer out=; "
                "without one, call fit() again on the same Trainer to continue in memory"
            )
        meta, tensors = read_checkpoint(self.out / CKPT_FILE)
        model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
        ema = {k[len("ema/") :]: v for k, v in tensors.items() if k.startswith("ema/")}
        best = {k[len("best/") :]: v for k, v in tensors.items() if k.startswith("best/")}
        try:
            like = self.model.state_dict()
            if model.keys() != like.keys() or any(
                v.shape != like[k].shape for k, v in model.items()
            ):  # (torch's own words name every tensor, in hundreds of characters)
                raise ValueError(
                    "its weights do not fit this run's model (a tensor missing, extra or of "
                    "another shape): was the run's config.json or checkpoint edited, or copied "
                    "from another run?"
                )
            was = {v.dtype for v in model.values() if v.is_floating_point()}
            now = {v.dtype for v in like.values() if v.is_floating_point()}
            if was and now and was != now:  # (load_state_dict would cast them without a word)
                names = ", ".join(sorted(str(d).replace("torch.", "") for d in was))
                raise ValueError(
                    f"it holds weights in {names} and this run's model is "
                    f"{', '.join(sorted(str(d).replace('torch.', '') for d in now))}: the "
                    "resumed run would not be the one checkpointed; move the model to the "
                    f"checkpoint's dtype first (model.to(torch.{names.split(', ')[0]}))"
                )
            self.model.load_state_dict(model)
            if best and self._saves_model:  # (model.ff holds them: the trainer writes none)
                raise ValueError("it holds best weights for a model whose best is in model.ff")
            if best:  # a model without model.ff: its best weights, shaped like the model's
                like = self.eval_model.state_dict()
                if best.keys() != like.keys() or any(
                    v.shape != like[k].shape or v.dtype != like[k].dtype for k, v in best.items()
                ):
                    raise ValueError("its best weights do not fit the model")
                self.best_state = best
            if self.ema is not None:
                self.ema.load_state_dict(ema)
            if meta.get("seed", self.seed) != self.seed:
                raise ValueError(
                    f"it belongs to another run (its seed is {meta.get('seed')!r}, this run's "
                    f"{self.seed})"
                )
            opt_state = optimizer_state(tensors, meta["optimizer"])
            check_optimizer_state(self.opt, opt_state)
            _same_settings(self.opt.param_groups, opt_state["param_groups"])
            self.opt.load_state_dict(opt_state)
            sched = self._scheduler_state(meta["scheduler"])
            self.sched.load_state_dict(sched)
            state = {k: meta.get(k, getattr(self, k)) for k in self._STATE}
            self._check_counters(state)
            self._check_same_run({**meta, **state}, sched)
            self._check_same_data(meta)
            for k, v in state.items():
                setattr(self, k, v)
            set_rng_state(tensors, meta["rng"], self.device)
            self.warnings, self._watch = _saved_watch(meta)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, OverflowError) as e:
            msg = " ".join(str(e).split())[:300]
            raise RunError(f"cannot resume from {self.out / CKPT_FILE}: {msg}") from None
        if meta.get("world", 1) != self.world and not self.finished:
            self._say(
                f"note: resuming a {meta.get('world')}-process run with {self.world}: each "
                "global batch holds the same examples, but the padding of an epoch's last batch "
                "(a training set that does not divide by the processes) and the noise draws "
                "(every process draws the same) differ, so the result differs from an "
                "uninterrupted run's in its last digits (in more, for a model that draws noise)"
            )
        if self.writer and (self.out / METRICS_FILE).is_file():
            # metrics written after the checkpoint belong to a lost future: drop them
            self.history = truncate_metrics(self.out, self.global_step, self.epoch)
            self._metrics_bytes = None  # (its size is looked up again)

    # -- the loop -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _switched(self):
        """The model's (and the EMA copy's) memory saving and compiled splines as they were
        when it was given, on leaving: ``train.memory_saving`` and ``train.compile: splines``
        are this training's, not the caller's model's for good."""
        from ..core import Compose

        held = [self.model] + ([self.ema] if getattr(self, "ema", None) is not None else [])
        gone = object()  # (an attribute the layer does not set itself: its class's, kept so)
        kept = [
            (m, name, vars(m).get(name, gone))
            for h in held
            for m in h.modules()
            for name in ("memory_saving", "compiled")
            if (name == "memory_saving" and isinstance(m, Compose)) or
            (name == "compiled" and hasattr(m, "compiled"))
        ]  # fmt: skip
        try:
            yield
        finally:
            for m, name, v in kept:
                if v is gone:
                    vars(m).pop(name, None)  # (the class's setting reaches it again)
                else:
                    setattr(m, name, v)

    def __repr__(self) -> str:  # (what a notebook shows of it)
        model = getattr(io._unwrap(self.model), "config", None)
        name = model.get("model") if isinstance(model, dict) else None
        name = name if isinstance(name, str) else type(io._unwrap(self.model)).__name__
        objective = getattr(self.objective, "name", type(self.objective).__name__)
        out = "" if self.out is None else f", out={str(self.out)!r}"
        return (
            f"Trainer({name}, objective={objective}, epochs={self.cfg['epochs']}, "
            f"batch_size={self.cfg['batch_size']}, lr={self.cfg['lr']:g}, "
            f"step {self.global_step} of {self.total_steps}{out})"
        )

    def fit(self, resume: bool = False) -> dict:
        """Train; returns a summary with ``status`` in finished, early-stopped, interrupted.

        The model holds the last step's weights afterwards (what more training continues
        from); the summary's ``best_val`` and ``best_epoch`` describe the best validated
        weights, which :meth:`load_best` loads (a run folder's ``model.ff`` holds them).
        ``train.memory_saving`` and ``train.compile: splines`` switch the model while it
        trains, and are switched back when ``fit`` returns."""
        from ..core import memory_saving
        from ..transforms.splines import RationalQuadratic

        held = [self.model] + ([self.ema] if self.ema is not None else [])
        with self._switched():
            for h in held:
                if self.cfg["memory_saving"]:
                    memory_saving(h)
                if self.cfg["compile"] == "splines":
                    for m in h.modules():
                        if isinstance(m, RationalQuadratic):
                            m.compiled = True
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict:
        if self.writer and not resume and not self._run_folder:  # (train's: checked there)
            claim_training_folder(self.out, self.overwrite)  # (never over an earlier one's)
            self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
            if (
                self.out is not None
                and self.best_epoch >= 0
                and getattr(self.eval_model, "config", None) is not None  # (it writes one)
                and not (self.out / MODEL_FILE).is_file()
            ):
                # the best weights live only in model.ff: without it the run would end by
                # naming a model that is not there, or the last weights as the best
                raise RunError(
                    f"cannot resume {self.out}: its best model ({MODEL_FILE}, epoch "
                    f"{self.best_epoch + 1}) is missing, and the checkpoint holds the last "
                    "weights, not the best; train the run again with --overwrite"
                )
            if (
                self.out is not None
                and self.best_epoch >= 0
                and self._saves_model
                and self.model_bytes is io.to_bytes  # (a format of the caller's: theirs)
            ):
                try:  # read now, not named at the end as the model when it cannot be loaded
                    io.unpack(self.out / MODEL_FILE, what="model file")
                except io.Unreadable as e:  # (no permission: not a reason to train again)
                    raise RunError(f"cannot resume {self.out}: {e}") from None
                except ValueError as e:
                    raise RunError(
                        f"cannot resume {self.out}: its best model ({MODEL_FILE}, epoch "
                        f"{self.best_epoch + 1}) is damaged ({' '.join(str(e).split())[:200]}); "
                        "train the run again with --overwrite"
                    ) from None
        else:
            self._warn_early_init()
            if self.cfg["manifold_epochs"] and not hasattr(self.objective, "first_phase"):
                name = getattr(self.objective, "name", self.cfg["objective"])
                self._warn(  # (a warning, not a refusal: runs that recorded it resume)
                    f"train.manifold_epochs = {self.cfg['manifold_epochs']} applies to the "
                    f"M-flow objectives only (mflow, mflow-alternating); this run's objective "
                    f"is {name}, which does not read it (--set train.manifold_epochs=0 leaves "
                    "it out)"
                )
            for said in self._unread_options():
                self._warn(said)
            # (train's data checks say it of a table's columns; a Loss may dequantize itself)
            if not self._run_folder and isinstance(self.objective, (NLL, FlowMatchingObjective)):
                said = _integer_valued(self.model, self.train_x)
                if said is not None:
                    self._warn(said)
            if self.train_x is not None and self.cfg["batch_size"] > len(self.train_x):
                self._warn(
                    f"batch_size {self.cfg['batch_size']:,} is larger than the training "
                    f"split's {len(self.train_x):,} examples: each epoch is one step of "
                    f"{len(self.train_x):,}"
                )
            self._init_data_dependent()
            if self.out is not None and not self._saves_model:
                self._say(
                    f"note: {type(self.eval_model).__name__} has no builder config (built by "
                    f"hand), so no {MODEL_FILE} is written: the best weights are kept in "
                    f"{CKPT_FILE} (Trainer.load_best()); a builder registered with "
                    "ff.models.register makes a model that ff.save and ff.load take"
                )
            decay = float(self.cfg["ema"] or 0)
            if decay > 0 and self.total_steps * (1 - decay) < 3:  # the average is mostly the start
                fix = (
                    f"a smaller decay (about {1 - 10 / self.total_steps:.3g}) or more epochs"
                    if self.total_steps >= 20
                    else "more epochs, or train.ema: 0"
                )
                self._warn(
                    f"train.ema {decay:g} averages over about {1 / (1 - decay):,.0f} steps and "
                    f"this run has {self.total_steps:,}: the weights it keeps would still be "
                    f"{decay**self.total_steps:.0%} the initialisation's; use {fix}"
                )
            warmup = self.cfg["warmup_steps"]
            if warmup != "auto" and warmup >= self.total_steps > 0:
                self._warn(
                    f"train.warmup_steps {warmup:,} is at least the run's {self.total_steps:,} "
                    "steps: the learning rate never reaches train.lr; use fewer warm-up steps"
                )
        if self.writer and self.cfg["tensorboard"] and not self.finished:  # (an ended run: none)
            try:
                from torch.utils.tensorboard import SummaryWriter

                # resumed: TensorBoard hides what a killed process logged from the checkpoint's
                # step on (an epoch's validation can share its last step), and the records kept
                # at that step (as metrics.jsonl keeps them) are logged again
                purge = self.global_step if self.global_step > 0 else None
                self._tb = SummaryWriter(str(self.out / "tb"), purge_step=purge)
                for rec in self.history if purge else ():
                    if rec.get("step") == self.global_step and isinstance(rec.get("type"), str):
                        self._tb_scalars(rec)
            except ImportError:
                self._tb = None
        model = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(self.model)  # broadcasts rank 0's state
        self._eager_model = None
        if self.cfg.get("compile") is True:
            # each new batch size (the epoch's last, smaller batch) compiles once more
            self._eager_model, model = model, torch.compile(model, options=COMPILE_OPTIONS)
        # the first step of a compiled run (or of compiled splines) is timed: it compiles
        self._compile_time = None if self.cfg["compile"] else 0.0
        if self.cfg["compile"] and not self.finished:  # (a minute without a word otherwise)
            self._say(
                "train.compile: the first step compiles the model (tens of seconds on a CPU; "
                "its time is logged as a compile record)"
            )
        self._step_model = model  # what the steps call (the eager model after a compile fallback)
        bar = _NoBar()
        if self.progress and self.rank == 0:  # (tqdm only where a bar is shown)
            from tqdm import tqdm

            bar = tqdm(
                total=self.total_steps,
                initial=self.global_step,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                leave=False,
            )
        status = self.finished or "running"
        already = bool(self.finished)  # a resumed run that had ended: nothing is trained
        signals = self._signals = _Signals(force=self.world == 1)
        try:
            with signals:  # one context for training and the interrupt's save: no gap
                signals.pending = self.stdout_error is not None  # (failed before training)
                try:
                    while status == "running" and self.epoch < self.cfg["epochs"]:
                        status = self._epoch(bar)
                        more = status == "running" and self.epoch < self.cfg["epochs"]
                        if signals.pending and self.world == 1 and more:  # asked at the epoch's end
                            raise KeyboardInterrupt
                    if status == "running":
                        status = self.finished = "finished"
                        self.save_checkpoint()
                except _ForcedStop:
                    status = "interrupted"
                    saved = self.writer and (self.out / CKPT_FILE).is_file()
                    kept = "the last checkpoint is kept" if saved else "nothing saved yet"
                    self._say(
                        f"stopped at once by a second signal, at step {self.global_step}; {kept}"
                    )
                except KeyboardInterrupt:  # at the end of a step: the state resumes exactly
                    status = "interrupted"
                    # a further signal waits for this save to finish: the checkpoint is whole
                    signals.deferring, signals.pending = True, False
                    self.save_checkpoint(interrupt=True)
                    again = signals.pending
                    saved = (
                        "checkpoint saved (resume with --resume; from Python, resume=True)"
                        if self.writer
                        else "nothing saved"
                    )
                    if again:
                        saved += "; a second signal arrived during the save and waited for it"
                    said = f"interrupted at epoch {self.epoch + 1}, step {self.global_step}"
                    said += f"; {saved}"
                    if self.stdout_error is not None and self.rank == 0:  # said where it can be
                        print(f"flowforge: {self.stdout_error}; {said}", file=sys.stderr)
                    self._say(said)
        finally:
            self._signals = None
            bar.close()
            if self._tb is not None:
                self._tb.close()
        nll = self.objective.name == "nll"  # (another objective's loss is no likelihood)
        return {
            "status": status,
            "epochs": self.epoch,
            "steps": self.global_step,
            "best_val": self.best,  # the objective's validation value (an NLL for "nll")
            "best_val_nll": self.best if nll else None,
            "objective": self.objective.name,
            "best_epoch": self.best_epoch + 1,
            "best_val_bpd": self._bpd(self.best) if nll and math.isfinite(self.best) else None,
            "skipped_steps": self.skipped,
            "warnings": list(self.warnings),
            "already_ended": already,
            "stdout_error": self.stdout_error,
        }

    def _batches(self):
        """``(x, context)`` for each remaining step of the epoch in progress."""
        if self.sampler is None:
            for _ in range(self.step_in_epoch, self.steps_per_epoch):
                yield None, None
            return
        self.sampler.set_epoch(self.epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.device)
        b = self.local_batch
        for s in range(self.step_in_epoch, self.steps_per_epoch):
            ib = order[s * b : (s + 1) * b] if s < self.steps_per_epoch - 1 else order[s * b :]
            yield self.train_x[ib], (None if self.train_c is None else self.train_c[ib])

    def _epoch(self, bar) -> str:
        import torch.distributed as dist

        t0 = time.perf_counter()  # (a duration: the wall clock can be stepped back)
        if self.step_in_epoch == 0 and self.epoch in self.phase_starts[1:]:
            self._new_phase()
        losses = self.epoch_losses
        self.model.train()
        clip = float(self.cfg["grad_clip"] or 0)
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for xb, cb in self._batches():
            rng = rng_states(self.device)  # (to redo the step: compile fallback, diagnosis)
            loss = self._forward_backward(xb, cb, rng)
            asked = float(self._signals is not None and self._signals.pending)
            stop = loss.detach().new_full((), asked, dtype=torch.float64)  # (no host copy)
            # a non-finite loss as this rank's bit: every rank learns which ranks had one
            bit = 2.0**self.rank if self.world <= MASK_RANKS else 1.0
            bad = (~torch.isfinite(loss)).double() * bit
            stats = torch.stack([loss.detach().double(), bad, stop])
            if self.world > 1:  # (every rank learns whether any was asked to stop)
                dist.all_reduce(stats)
                stats[0] /= self.world
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            # the step's one read-back from the device: loss, its finiteness and the norm
            value, bad_loss, asked, norm = torch.cat(
                [stats, norm.detach().double().reshape(1)]
            ).tolist()
            if bad_loss > 0 and self.objective.skip_nonfinite:
                self.skipped += 1
                norm = None
            elif bad_loss > 0:
                self._nonfinite(xb, cb, rng, "loss", _ranks(int(bad_loss), self.world))
            elif not math.isfinite(norm):
                if not self.objective.skip_nonfinite:
                    self._nonfinite(xb, cb, rng, "gradient")
                self.skipped += 1
                norm = None
            if norm is None:
                self.opt.zero_grad(set_to_none=True)
            else:
                self.opt.step()
                if self.ema is not None:
                    self._update_ema()
            self._step_lr = self.opt.param_groups[0]["lr"]  # (the rate this step took)
            if norm is None:  # (a skipped first step: torch's scheduler warning is moot)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                    self.sched.step()
            else:
                self.sched.step()
            self.global_step += 1
            self.step_in_epoch += 1
            if math.isfinite(value):
                losses.append(value)
                watch = self._watch.setdefault(self.objective.loss_kind(self), _Watch())
                spike = watch.check(value, norm if norm is not None else math.nan)
                if spike:
                    self.spikes += 1
                    msg = f"step {self.global_step}: {spike}; {self._largest_gradient()}"
                    if self.spikes <= SPIKES_SHOWN:
                        self._warn(msg)
                    else:  # logged, not printed (a run of 80 filled the terminal)
                        self._log({"type": "warning", "epoch": self.epoch + 1,
                                   "step": self.global_step, "message": msg})  # fmt: skip
                    if self.spikes == SPIKES_SHOWN:
                        self._warn(
                            f"{SPIKES_SHOWN} loss spikes so far: further ones "
                            + ("go to metrics.jsonl only" if self.writer else "are not shown")
                            + f" ({self.objective.remedy(self)})"
                        )
            bar.update(1)
            post = {"epoch": self.epoch + 1, "loss": f"{value:.4g}"}
            if self.bits_dims and self.objective.name == "nll":
                post["bpd"] = f"{self._bpd(value):.4f}"
            bar.set_postfix(post, refresh=False)
            every = int(self.cfg["log_every"] or 0)
            if every and self.global_step % every == 0:
                self._log(
                    {
                        "type": "step",
                        "epoch": self.epoch + 1,
                        "step": self.global_step,
                        "loss": value,
                        "lr": self._step_lr,
                        "grad_norm": norm,
                        **layer_metrics(self.model),
                    }
                )
            if self.callback is not None:
                self.callback(self)
            # a stop asked for: here, with the step finished (one process: asked at any time
            # so far; several: asked before this step's all-reduce, on any rank, the same for all)
            if asked or (self.world == 1 and self._signals is not None and self._signals.pending):
                raise KeyboardInterrupt
        return self._end_epoch(losses, t0)

    def _forward_backward(self, xb, cb, rng) -> Tensor:
        """The step's loss, its gradients in ``.grad``. With ``train.compile`` the first step
        compiles (forward and backward; its time is reported), and so does a new batch size
        later: if compiling fails, a warning says why, and the step is redone eagerly from the
        same random state, as is the rest of the run. An error the eager model raises too is
        the run's."""
        first = self._compile_time is None
        # (numpy's and Python's generators too, for the first step's check against eager: a
        # loss may draw from them)
        hosts = (np.random.get_state(), random.getstate()) if first else None
        t0 = time.perf_counter()
        try:
            loss = self._loss_and_backward(self._step_model, xb, cb)
        except Exception as e:  # noqa: BLE001 - a compiler failure: redo eagerly, say why
            if self._eager_model is None or out_of_memory(e):
                raise  # (memory is not the compiler's failing: the eager step needs it too)
            set_rng_states(rng, self.device)
            # an error the eager model raises too is the run's (no word of compiling then)
            loss = self._loss_and_backward(self._eager_model, xb, cb)
            self._warn(
                f"train.compile: compiling failed ({type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[0]}); "
                "training continues without compiling"
            )
            self._step_model, self._eager_model = self._eager_model, None
            return loss
        if first and self._eager_model is not None:
            loss = self._checked_against_eager(loss, xb, cb, rng, hosts)
        if first:
            from ..transforms import splines

            self._compile_time = time.perf_counter() - t0
            what = "the training step" if self._eager_model is not None else "the splines"
            splines_compiled = self.cfg["compile"] == "splines" and not splines._compile_failed
            if self._eager_model is not None or splines_compiled:
                self._say(
                    f"compiled {what} (forward and backward, in the first step) in "
                    f"{self._compile_time:.1f} s; a new batch size compiles once more"
                )
                self._log(
                    {"type": "compile", "step": self.global_step, "seconds": self._compile_time}
                )
        return loss

    def _checked_against_eager(self, loss: Tensor, xb, cb, rng, hosts) -> Tensor:
        """The first compiled step's loss and gradients against the eager model's, from the
        same random state and model state: torch's compiler has produced the right loss with
        wrong gradients (BNAF's weights, torch 2.13's inductor on a CPU: 0.16 where eager and
        finite differences give 0), which no error would show. Where they differ (beyond
        ``COMPILE_AGREEMENT`` of the largest gradient), a warning, and the run goes on eagerly
        from the eager step; where they agree, the compiled step stands as it was."""
        params = [p for g in self.opt.param_groups for p in g["params"]]
        compiled = [p.grad for p in params]
        buffers = [b.clone() for b in self.model.buffers()]  # (batch norm's running statistics)
        after = rng_states(self.device), np.random.get_state(), random.getstate()
        set_rng_states(rng, self.device)
        np.random.set_state(hosts[0])
        random.setstate(hosts[1])
        try:
            eager = self._loss_and_backward(self._eager_model, xb, cb)
        except Exception as e:  # (eager keeps more for backward than compiled kernels do)
            if not out_of_memory(e) or self.world > 1:  # (ranks must decide alike)
                raise
            eager = None
        if eager is None:
            self._restore_compiled_step(params, compiled, buffers, after)
            self._warn(
                "train.compile: the eager step that checks the compiled model's first step "
                "ran out of memory; training goes on compiled, unchecked"
            )
            return loss  # (the eager model kept: a later compile failure falls back to it)
        worst = _disagreement(compiled, [p.grad for p in params])
        if self.world == 1:  # (the loss is each rank's own; the gradients are all-reduced)
            a, b = loss.detach().double(), eager.detach().double()
            if torch.isfinite(a) and torch.isfinite(b):
                worst = max(worst, float((a - b).abs() / (1 + b.abs())))
            elif bool(torch.isfinite(a)) != bool(torch.isfinite(b)):
                worst = math.inf
        with torch.no_grad():  # (the step's forward pass ran twice: its updates count once)
            for b, kept in zip(self.model.buffers(), buffers):
                b.copy_(kept)
        if worst > COMPILE_AGREEMENT:
            self._warn(
                "train.compile: the compiled model's first step disagrees with the eager "
                f"model's (by {worst:.2g} of the largest gradient: torch's compiler computes "
                "this model wrongly); training continues without compiling"
            )
            self._step_model, self._eager_model = self._eager_model, None
            return eager
        self._restore_compiled_step(params, compiled, None, after)
        return loss

    def _restore_compiled_step(self, params, grads, buffers, after) -> None:
        """The compiled step's gradients and the random states after it back (and, given,
        the buffers from before the eager step)."""
        if buffers is not None:
            with torch.no_grad():
                for b, kept in zip(self.model.buffers(), buffers):
                    b.copy_(kept)
        for p, g in zip(params, grads):
            p.grad = g
        set_rng_states(after[0], self.device)
        np.random.set_state(after[1])
        random.setstate(after[2])

    def _loss_and_backward(self, model, xb, cb) -> Tensor:
        loss = self.objective.loss(self, model, xb, cb)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
            raise WorkbenchError(
                f"the training objective's loss must be a scalar tensor (the batch's mean), "
                f"got {got}"
            )
        self.opt.zero_grad(set_to_none=True)
        reg = regularization(self.model)
        (loss if reg is None else loss + reg).backward()
        return loss

    def _end_epoch(self, losses: list[float], t0: float) -> str:
        # validation (every rank computes it: same weights, same seeded noise; rank 0's
        # number then goes to all, since a batch norm's running statistics differ by the last
        # step's batch between the ranks, and so would the stop and halving decisions)
        try:
            val = self.objective.validate(self, self.val_x, self.val_c)
        except NaNLogProb:  # the model gives NaN on validation data: as a NaN loss below
            val = math.nan
        if self.world > 1:
            shared = torch.tensor([val], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(shared, src=0)
            val = float(shared.item())
        if not math.isfinite(val):
            what = self.objective.name
            what += "" if what == "nll" or what.endswith("loss") else " loss"
            raise NonFiniteError(
                f"the validation {what} is {val} at epoch {self.epoch + 1} (after step "
                f"{self.global_step}; {self.objective.remedy(self)})"
                + (
                    f"; the best model so far is kept in {self.out}"
                    if self.best_epoch >= 0 and self.out
                    else ""
                )
            )
        improved = val < self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = val, self.epoch, 0
            if self.out is None or not self._saves_model:  # kept in memory (and checkpoint)
                self.best_state = {
                    k: v.detach().clone() for k, v in self.eval_model.state_dict().items()
                }
            elif self.writer:
                ctx = self._signals.deferred() if self._signals else _nothing()
                with ctx:
                    io.atomic_write(self.out / MODEL_FILE, self.model_bytes(self.eval_model))
        else:
            self.bad_epochs += 1
        halve = int(self.cfg["halve_after"])
        halved = False
        since = max(self.best_epoch, self.last_halved)
        stale = self.objective.validated_epochs(self, since, self.epoch) if halve else 0
        if halve and not improved and stale >= halve:
            self.lr_factor /= 2
            self.last_halved = self.epoch
            halved = True
            self._rates_again()
        train_loss = float(np.mean(losses)) if losses else float("nan")
        rec = {
            "type": "epoch",
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "train_loss": train_loss,
            "val_nll" if self.objective.name == "nll" else "val": val,
            "lr": self.opt.param_groups[0]["lr"],  # (the next step's: a halving shows)
            "best": improved,
            "time": time.perf_counter() - t0,
        }
        if self.bits_dims and self.objective.name == "nll":
            rec["train_bpd"], rec["val_bpd"] = self._bpd(train_loss), self._bpd(val)
        if len(self.phase_starts) > 1:  # a phased objective: which phase, which loss
            rec["phase"] = sum(s <= self.epoch for s in self.phase_starts)
            rec["loss_kind"] = self.objective.loss_kind(self)
        self._log(rec)
        msg = f"epoch {self.epoch + 1}/{self.cfg['epochs']}  train {train_loss:.4f}  val {val:.4f}"
        if self.bits_dims and self.objective.name == "nll":
            msg += f" ({self._bpd(val):.4f} bits/dim)"
        if halved:
            msg += f"  [lr halved, x{self.lr_factor:g}]"
        self._say(msg + ("  *" if improved else ""))
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_losses = []
        patience = int(self.cfg["patience"] or 0)
        status = "running"
        last_phase = self.epoch - 1 >= self.phase_starts[-1]  # the epoch just validated
        if patience and self.bad_epochs >= patience and last_phase:
            status = self.finished = "early-stopped"
            self._say(
                f"early stop: no better validation {self.objective.name} for {patience} epochs"
            )
        elif self._stop_heard() and self.epoch < self.cfg["epochs"]:
            status = self.finished = "early-stopped"
            self._say(f"stopped after epoch {self.epoch}, as asked (Trainer.stop())")
        self.save_checkpoint()
        return status

    def _stop_heard(self) -> bool:
        """Whether :meth:`stop` was called, on any process (they decide together)."""
        if self.world > 1:
            import torch.distributed as dist

            flag = torch.tensor([float(self._stop_asked)], device=self.device)
            dist.all_reduce(flag)
            self._stop_asked = self._stop_asked or flag.item() > 0
        return self._stop_asked

    def stop(self) -> None:
        """Ask the training to end after the epoch in progress, once it is validated and
        checkpointed, as an early stop (``status`` "early-stopped"; ``load_best`` and the run
        folder as after one). For a callback that decides a run has had enough; an interrupt
        (``KeyboardInterrupt``) stops at the end of the step instead, resumably."""
        self._stop_asked = True

    def _new_phase(self) -> None:
        """At the first epoch of a phase: continue from the best weights of the phase before
        and validate afresh (the phases' validation numbers are not comparable). The checkpoint
        then holds the phase's start, so a run resumed in the phase starts from it, and one
        resumed before it does the same again."""
        if self.best_epoch < 0:
            return  # done already (or nothing was validated better than infinity)
        self.load_best()
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())
        self.best, self.best_epoch, self.bad_epochs, self.best_state = math.inf, -1, 0, None
        if self.lr_factor != 1.0:  # (its schedule starts whole)
            self.lr_factor, self.last_halved = 1.0, self.epoch - 1
            self._rates_again()
        # the phase's start in the checkpoint: the phase's first epoch rewrites model.ff (its
        # first validation is its best), and a run resumed after that must not start from it
        self.save_checkpoint()
        self._say(f"phase {self.phase_starts.index(self.epoch) + 1}: from the best weights so far")

    def _rates_again(self) -> None:
        """The next step's learning rates set again after ``lr_factor`` changed: the scheduler
        set them before, or the next epoch's first step would take the old rate."""
        rates = [base * self._lr_lambda(self.sched.last_epoch) for base in self.sched.base_lrs]
        for group, lr in zip(self.opt.param_groups, rates):
            group["lr"] = lr
        self.sched._last_lr = rates

    def load_best(self) -> torch.nn.Module:
        """Load the best validated weights into the model (from ``model.ff`` in a run folder,
        from memory without one or for a model that has no builder config) and return it."""
        if self.best_epoch < 0:  # (a model.ff in the folder would be another training's)
            raise WorkbenchError(
                "no epoch of this training has been validated yet, so it has no best weights; "
                "the model holds the last step's"
            )
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif self.out is not None and (self.out / MODEL_FILE).is_file():
            self.model.load_state_dict(io.load(self.out / MODEL_FILE).state_dict())
        return self.model

    def _largest_gradient(self) -> str:
        """Where the gradient is largest: the layer holding the largest share of its norm."""
        share: dict[str, float] = {}
        held = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if not held:
            return "no gradient recorded"
        # one read from the device for all of them (not one per parameter)
        squares = torch.stack([g.detach().float().square().sum() for _, g in held]).tolist()
        for (name, _), g in zip(held, squares):
            if not math.isfinite(g):
                return f"non-finite gradient in {_layer_name(self.model, name)}"
            layer = _layer_name(self.model, name)
            share[layer] = share.get(layer, 0.0) + g
        total = sum(share.values())
        if not share or total <= 0:
            return "no gradient recorded"
        where = max(share, key=share.get)
        return f"largest gradient in {where} ({share[where] / total:.0%} of its squared norm)"

    def _nonfinite(self, xb, cb, rng, what: str, ranks: list[int] | None = None) -> None:
        """Stop with what went non-finite, found by re-running this process's batch under
        hooks. ``ranks``: the processes whose loss was non-finite (None: unknown, or this
        one's); another process's is named, not diagnosed from this one's finite batch."""
        overflow = getattr(self.objective, "overflow", Objective.overflow)
        if what == "gradient":  # the loss was finite: the backward pass overflowed
            overflow = (
                "the loss was finite, so the backward pass overflowed (too large a step: a "
                "lower --lr, or train.grad_clip)"
            )
        if ranks is not None and self.rank not in ranks:
            which = ", ".join(map(str, ranks))
            where = (
                f"on process (rank) {which} of {self.world}, whose own line says where; this "
                "process's part of the batch was finite"
            )
        else:
            where = find_nonfinite(
                self.model, lambda: self.objective.loss(self, self.model, xb, cb), rng, overflow
            )
        if self.out is None:
            kept = ""
        elif self.best_epoch >= 0:
            kept = f"; the best model so far is kept in {self.out / MODEL_FILE}"
        else:
            kept = "; no model was saved yet (nothing finished an epoch)"
        raise NonFiniteError(
            f"non-finite {what} at epoch {self.epoch + 1}, step {self.global_step + 1}: "
            f"{where}{kept}"
        )


def _checked_seed(seed) -> int:
    """A seed as the command line and configs take it (``config``'s check: an integer in
    [0, SEED_MAX]; torch keeps 32 bits, so 2**32 would repeat the run of 0), or a 0-d integer
    tensor holding one."""
    if isinstance(seed, Tensor) and seed.dim() == 0 and not seed.is_floating_point():
        seed = seed.item() if seed.dtype != torch.bool else bool(seed)
    try:
        return _int(0, SEED_MAX)(seed)
    except ValueError:
        raise WorkbenchError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}") from None


MASK_RANKS = 52  # up to this many processes, a non-finite loss is said by its process


def _ranks(mask: int, world: int) -> list[int] | None:
    """The ranks whose bits are set in ``mask`` (None where the bits cannot say it)."""
    if world > MASK_RANKS:
        return None
    return [r for r in range(world) if mask >> r & 1] or None


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _NoBar:
    """The progress bar's calls, where none is shown."""

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass
