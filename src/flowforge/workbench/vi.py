r"""Variational inference on a named target: ``flowforge fit-target``.

``fit_target`` trains a flow by reverse KL (the :class:`~.trainer.Trainer` with a
:class:`~.trainer.ReverseKL` objective) on an unnormalised target from
:mod:`flowforge.targets`, then ``evaluate_target`` measures it with
:func:`flowforge.objectives.vi_diagnostics`; :func:`.report.write_vi_report` writes a PNG
(target density, learned density, samples) and a markdown report. The CLI::

    flowforge fit-target --target u1 --model planar --layers 32 --out runs/u1

prints the final reverse KL (up to log Z), ELBO, importance-sampled log Z and ESS, and for 2-D
targets the grid-integrated log Z and the true KL.
"""

from __future__ import annotations

import time
import warnings

import torch

from .. import models
from .._util import fork_rng
from ..models.assembly import count
from ..objectives import vi_diagnostics
from ..targets import grid_log_z
from .build import PYTHON_ONLY
from .runner import _callers_random_state
from .trainer import ReverseKL, Trainer

__all__ = [
    "CLI_OPTIONS",
    "build_vi_model",
    "describe_elbo",
    "fit_target",
    "evaluate_target",
    "summary_line",
]


# how fit-target spells fit_target's options in its hints (it has no gradient-clipping flag)
CLI_OPTIONS = {"lr": "--lr", "anneal": "--anneal"}


# fit-target sizes the networks of a model whose width is left unset as the workbench sizes
# one for this many training examples (the smallest width, 32, unless the dimension asks for
# more): the builders' defaults are sized for density estimation on benchmarks (a RealNVP of
# 536,608 parameters for a 2-d target, whose first steps by reverse KL blew it up beyond
# recovery)
VI_EXAMPLES = 1600


def build_vi_model(name: str, features: int, layers: int | None = None, **kwargs):
    """Build a registered model for ``features`` dimensions; ``layers`` sets the builder's
    depth argument (``layers``, ``blocks`` or ``steps``, from its spec). A width left unset is
    sized as :data:`VI_EXAMPLES` training examples of ``features`` columns would size it in
    the workbench (``flowforge.workbench.build.size_rule``; the depth stays the builder's, a
    planar flow's 8 layers); the model's ``vi_sizing`` attribute says what was chosen (None:
    the builder's defaults)."""
    from .build import sizing_for

    spec = models.spec(name)  # ValueError for an unknown name, with suggestions
    if spec.name in PYTHON_ONLY:  # (a bound, not a density: no reverse KL through it)
        raise ValueError(PYTHON_ONLY[spec.name])
    if "features" not in spec.inputs:
        raise ValueError("it takes images only; a target needs a vector model")
    if layers is not None:
        if spec.depth is None:
            raise ValueError("it has no depth argument for --layers: leave --layers out")
        kwargs[spec.depth] = layers
    if spec.data:
        kwargs.setdefault("standardize", False)  # no data to initialise from
    sizing = sizing_for(spec.name.lower(), spec, kwargs, False, features, VI_EXAMPLES)
    chosen = {k: v for k, v in (sizing or {}).get("arguments", {}).items() if k != spec.depth}
    flow = spec.build(features=features, **{**chosen, **kwargs})
    flow.vi_sizing = chosen or None
    return flow


def fit_target(
    flow,
    target,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 5e-3,
    anneal: int = 0,
    grad_clip: float = 100.0,
    seed: int = 0,
    log_every: int = 0,
    option_names: dict[str, str] | None = None,
) -> dict:
    r"""Minimise the reverse KL ``E_q[log q - log p~]`` with Adam, through the one Trainer.

    ``anneal > 0`` multiplies ``log p~`` by ``β_t = min(1, 0.01 + t / anneal)`` (Rezende &
    Mohamed's annealing); an annealing longer than the run is refused. The learning rate
    decays by cosine to 1/10 over the run. Steps whose loss is not finite are skipped
    (counted in ``skipped``). Returns a history summary.

    ``flow`` is unconditional; a conditional flow (amortised VI) trains in a loop of your own
    on :func:`flowforge.reverse_kl` with ``context=``.

    ``seed`` fixes the whole run (the Trainer's draws and the target's samples): the same
    ``seed`` on a freshly built flow repeats it, so random restarts need different seeds
    (``seed=i``). The caller's Python, numpy and torch random streams are left as they were.

    ``option_names`` spells the options that hints on a diverging run name (keys ``lr``,
    ``grad_clip``, ``anneal``; default these arguments; ``flowforge fit-target`` passes its
    flags, ``CLI_OPTIONS``).
    """
    count("steps", steps)
    count("batch_size", batch_size)
    c = getattr(flow, "context_features", 0)
    if c:
        raise ValueError(
            f"fit_target fits unconditional flows; this one takes a context of {c} features: "
            "for amortised VI, train it in your own loop on ff.reverse_kl(flow, target, n, "
            "context=c) with a target(x, context)"
        )
    if anneal > steps:
        raise ValueError(
            f"annealing over {anneal} steps is longer than the run's {steps} steps: the target "
            "would never be reached at full strength; use --anneal <= --steps (or 0)"
        )
    with _callers_random_state():
        torch.manual_seed(seed)
        return _fit_target(
            flow, target, steps, batch_size, lr, anneal, grad_clip, seed, log_every, option_names
        )


def _fit_target(
    flow, target, steps, batch_size, lr, anneal, grad_clip, seed, log_every, option_names
) -> dict:
    last: list[float] = []
    trainer = Trainer(
        flow,
        train={
            "epochs": 1,
            "optimizer": "adam",
            "lr": lr,
            "warmup_steps": 0,
            "min_lr_ratio": 0.1,
            "grad_clip": grad_clip,
            "patience": 0,
            "log_every": 0,
            "tensorboard": False,
        },
        objective=ReverseKL(target, batch=batch_size, anneal=anneal, option_names=option_names),
        steps_per_epoch=steps,
        seed=seed,
        progress=log_every > 0,
        echo=False,
        callback=lambda t: last.append(t.epoch_losses[-1]) if t.epoch_losses else None,
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    flow.eval()
    tail = last[-100:]
    return {
        "status": result["status"],  # "interrupted" after a signal
        "steps": result["steps"],  # the steps taken (``steps`` unless interrupted)
        "batch_size": batch_size,
        "lr": lr,
        "anneal": anneal,
        "skipped": result["skipped_steps"],
        "final_loss": float(sum(tail) / max(1, len(tail))),
        "seconds": time.perf_counter() - t0,
    }


def evaluate_target(flow, target, n: int = 20000, seed: int = 1, grid_n: int = 600) -> dict:
    """:func:`~flowforge.objectives.vi_diagnostics` plus, for 2-D targets, the grid log Z and
    the true ``KL(q || p) = log Z - ELBO`` (or the exact log Z where the target knows it).
    ``target``: a registered :class:`~flowforge.targets.Target`, or any ``log_prob`` callable
    (then the KL is left out unless it has ``log_z``, or ``dim == 2`` and a ``box``).

    A log Z below the ELBO by more than its noise is impossible (the KL would be negative): a
    grid whose box misses part of the target's mass, or a wrong ``log_z``. Then neither it nor
    the KL is given (``true_log_z`` and ``kl`` None), and ``warnings`` says why."""
    with fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (its zero-density warning: raised)
        torch.manual_seed(seed)
        d = vi_diagnostics(flow, target, n=n)
    if d["zero_density"]:  # an ELBO of -inf: not a number to print or write
        raise ValueError(
            f"the target's log-density is -inf (zero density) at {d['zero_density']} of "
            f"{d['n']:,} of the flow's samples: the ELBO is -inf (the flow puts mass where the "
            f"target has none); a flow on R^D needs a target positive everywhere: {SUPPORT_FIX}"
        )
    log_z, how = getattr(target, "log_z", None), "the target's log_z"
    box = getattr(target, "box", None)
    if log_z is None and getattr(target, "dim", None) == 2 and box is not None:
        x0, x1, y0, y1 = box
        box = (x0 - 2, x1 + 2, y0 - 2, y1 + 2)
        log_z = grid_log_z(target, box, grid_n)
        how = f"the grid's log Z over [{box[0]:g}, {box[1]:g}] x [{box[2]:g}, {box[3]:g}]"
    se = d["elbo_se"] or 0.0
    if log_z is not None and log_z - d["elbo"] < -(4 * se + 1e-3):
        d["warnings"].append(
            f"{how} ({log_z:.4f}) lies below the ELBO ({d['elbo']:.4f} +- {se:.4f}), which a "
            "log Z cannot: "
            + (
                "the box misses part of the target's mass (register the target with a wider "
                "box, or with its log_z)"
                if how.startswith("the grid")
                else "that log_z is wrong"
            )
            + "; no KL is given"
        )
        log_z = None
    d["true_log_z"] = log_z
    d["kl"] = None if log_z is None else log_z - d["elbo"]
    d["params"] = sum(p.numel() for p in flow.parameters())
    return d


# how a target on a bounded or positive space gets a flow: the library's wrapper, or by hand
SUPPORT_FIX = (
    "map the flow into its support with ff.models.bounded(flow, lower, upper) (from Python), "
    "or reparameterise the target (e.g. the log or logit of bounded coordinates, adding the "
    "log-Jacobian to the log-density)"
)


def summary_line(m: dict) -> str:
    pm = "" if m["elbo_se"] is None else f" +- {m['elbo_se']:.4f}"
    k = m.get("pareto_k")
    s = (
        f"reverse KL (up to log Z) {m['reverse_kl']:.4f}{pm}, ELBO {m['elbo']:.4f}{pm}, "
        f"log Z (IS) {m['log_z']:.4f}{_pm(m['log_z_se'])}, ESS {m['ess']:.3f}"
        + ("" if k is None else f", Pareto k {k:.2f}")
        + f" ({m['n']:,} samples)"
    )
    if m["kl"] is not None:
        s += f"; log Z (grid/exact) {m['true_log_z']:.4f}, KL {m['kl']:.4f}{pm}"
    return s


def _pm(se: float | None) -> str:
    return "" if se is None else f" +- {se:.4f}"


def describe_elbo(m: dict) -> str:
    """What the figures are worth: the Monte-Carlo error of the ELBO (and of the KL, which is
    log Z minus it) over ``n`` samples, the tail of the weights, and the diagnostics'
    warnings (``m["warnings"]``: a low ESS, a heavy tail, an impossible log Z)."""
    s = (
        f"± is the Monte-Carlo standard error over {m['n']:,} samples; for the importance-"
        "sampled log Z, the delta-method standard error of the log of the mean weight, "
        "sqrt((1/ESS - 1) / (n - 1)), which needs weights of finite variance (Pareto k below "
        "0.5)."
        if m["elbo_se"] is not None
        else "One sample: no standard error."
    )
    return s + "".join(f" Warning: {w}." for w in m.get("warnings", ()))
