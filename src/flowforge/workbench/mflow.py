r"""Training and evaluating M-flows (:class:`flowforge.models.mflow.MFlow`) through the Trainer.

:class:`MFlowObjective` is the Trainer objective of ``train.objective: mflow`` (the paper's
sequential schedule) and ``mflow-alternating``. A run has two phases
(:meth:`~flowforge.workbench.trainer.Objective.phase_starts`); the first lasts
``train.manifold_epochs`` epochs (0: half the run):

- ``mflow``: the first phase is the *manifold phase*: every epoch fits the outer flow (and an
  M_e-flow's encoder) to the reconstruction error, validated by the mean reconstruction error.
- ``mflow-alternating``: the first phase alternates manifold epochs (even epochs, from the first)
  and density epochs (odd), validated by the reconstruction error.

The second phase is the *density phase*: the inner flow is fitted to the encoded data with the
rest frozen, validated by the inner flow's NLL of the encoded validation data (the on-manifold
NLL up to the ``log det`` term, which this phase does not change). The Trainer starts each phase
from the best weights of the one before and restarts the learning-rate schedule in it.
:func:`evaluate_mflow` gives the figures ``flowforge eval`` prints for an M-flow run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._util import restore_modes, training_modes
from ..models.mflow import MFlow
from . import manifold_data
from .errors import WorkbenchError
from .trainer import Objective, Trainer

__all__ = ["MFlowObjective", "SCHEDULES", "evaluate_mflow", "noise_level"]

SCHEDULES = ("sequential", "alternating")


def _mflow(model) -> MFlow:
    return model.module if hasattr(model, "module") else model


class MFlowObjective(Objective):
    """The two phases of an M-flow (see the module docstring); ``schedule`` is
    ``"sequential"`` or ``"alternating"``."""

    def __init__(self, schedule: str = "sequential"):
        if schedule not in SCHEDULES:
            raise ValueError(
                f"expected schedule to be one of {', '.join(SCHEDULES)}, got {schedule!r}"
            )
        self.schedule = schedule
        self.name = "mflow" if schedule == "sequential" else "mflow-alternating"

    def check(self, trainer: Trainer, model) -> None:
        """Before training: an M-flow, in a single process."""
        if not isinstance(model, MFlow):
            raise WorkbenchError(
                f"the {self.name} objective trains M-flows (model mflow), not "
                f"{type(model).__name__}"
            )
        if trainer.world > 1:
            raise WorkbenchError(f"the {self.name} objective runs in a single process")

    def first_phase(self, cfg: dict) -> int:
        """The number of epochs of the first phase for train options ``cfg``."""
        epochs, m = cfg["epochs"], cfg["manifold_epochs"] or cfg["epochs"] // 2
        if epochs < 2:
            raise WorkbenchError(
                f"the {self.name} objective needs at least 2 epochs (train.epochs is {epochs}): "
                "the manifold phase's, then the density phase's"
            )
        if m >= epochs:
            raise WorkbenchError(
                f"the {self.name} objective needs train.manifold_epochs ({m}) below "
                f"train.epochs ({epochs}), to leave epochs for the density phase"
            )
        return m

    def phase_starts(self, cfg: dict) -> list[int]:
        return [self.first_phase(cfg)]

    def phase(self, trainer: Trainer, epoch: int | None = None) -> str:
        """``"manifold"`` or ``"density"``: what epoch ``epoch`` (default: the one in progress)
        trains."""
        e = trainer.epoch if epoch is None else epoch
        if e >= trainer.phase_starts[1]:
            return "density"
        if self.schedule == "alternating" and e % 2 == 1:
            return "density"
        return "manifold"

    def validated_epochs(self, trainer, after: int, upto: int) -> int:
        """The epochs that move the validation number: not the first phase's density epochs
        of the alternating schedule (validated by the reconstruction error)."""
        return sum(
            1
            for e in range(after + 1, upto + 1)
            if e >= trainer.phase_starts[1] or self.phase(trainer, e) == "manifold"
        )

    def loss_kind(self, trainer: Trainer) -> str:
        return self.phase(trainer)

    def loss(self, trainer, model, x, context):
        m = _mflow(model)
        if self.phase(trainer) == "manifold":
            return m.manifold_loss(x)
        return m.density_loss(x)

    @torch.no_grad()
    def validate(self, trainer, x, context):
        model = trainer.eval_model
        was = training_modes(model)
        model.eval()
        density = trainer.epoch >= trainer.phase_starts[1]
        try:
            bs, total = trainer.cfg["eval_batch_size"], 0.0
            for xb in x.split(bs):
                loss = model.density_loss(xb) if density else model.manifold_loss(xb)
                total += float(loss) * xb.shape[0]
            return total / x.shape[0]
        finally:
            restore_modes(was)


# -- evaluation ----------------------------------------------------------------------------------


def noise_level(dataset: str) -> float | None:
    """The mean squared norm of a dataset's off-manifold noise, ``D sigma^2`` (``surface-64``:
    0.0064), where the dataset knows it; else None."""
    if dataset == "surface-64":
        return manifold_data.SURFACE_DIM * manifold_data.SURFACE_NOISE**2
    return None


def evaluate_mflow(
    model: MFlow, x: Tensor, true_log_prob: Tensor | None = None, batch: int = 1024
) -> dict:
    """An M-flow's figures on data ``x``: the mean reconstruction error ``|x - pi(x)|^2`` and
    the mean on-manifold NLL (exact ``log det``), each with its standard error; with the true
    on-manifold log-density of the examples, the true NLL and the gap ``log p - log q`` with its
    standard error."""
    model.eval()
    rec, lq = [], []
    for xb in x.split(batch):
        with torch.no_grad():  # (the volume term's forward-mode products need no graph)
            rec.append(model.reconstruction_error(xb))
            lq.append(model.log_prob(xb))
    rec_t, lq_t = torch.cat(rec).double().cpu(), torch.cat(lq).double().cpu()
    n = len(rec_t)

    def se(t: Tensor) -> float | None:  # (one example: no standard error, as eval says)
        return (t.std() / math.sqrt(n)).item() if n > 1 else None

    out = {
        "examples": n,
        "reconstruction": rec_t.mean().item(),
        "reconstruction_se": se(rec_t),
        "nll": -lq_t.mean().item(),
        "nll_se": se(lq_t),
    }
    if true_log_prob is not None:
        lp = true_log_prob.double()
        gap = lp - lq_t
        out.update(
            true_nll=-lp.mean().item(),
            gap=gap.mean().item(),
            gap_se=se(gap),
            gap_mean_abs=gap.abs().mean().item(),
        )
    return out
