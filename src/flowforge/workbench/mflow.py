r"""Training and evaluating M-flows (:class:`flowforge.models.mflow.MFlow`) through the Trainer.

The paper's sequential schedule: the manifold phase fits the outer flow to the reconstruction
error, then the density phase fits the inner flow to the encoded data with the outer flow
frozen. Each phase is one :class:`~flowforge.workbench.trainer.Trainer` run with a
:class:`~flowforge.workbench.trainer.Loss` objective (best validation weights kept).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from ..models.mflow import MFlow
from . import manifold_data
from .trainer import Loss, Trainer

__all__ = ["evaluate_mflow", "train_mflow"]


def _phase(model: MFlow, train_x, val_x, loss, name, cfg: dict, seed: int, echo: bool) -> dict:
    trainer = Trainer(
        model,
        train_x,
        val_x,
        {"tensorboard": False, **cfg},
        objective=Loss(lambda m, x, c: loss(m, x), name=name),
        seed=seed,
        progress=False,
        echo=echo,
    )
    result = trainer.fit()
    trainer.load_best()
    return {"epochs": result["epochs"], "best_val": result["best_val"]}


def train_mflow(
    model: MFlow,
    train_x: Tensor,
    val_x: Tensor,
    manifold: dict,
    density: dict,
    seed: int = 0,
    echo: bool = False,
) -> dict:
    """Both phases in turn; ``manifold`` and ``density`` are the phases' train options
    (``epochs``, ``lr``, ...). Returns each phase's epochs, best validation loss and time."""
    out = {}
    for name, loss, cfg in (
        ("manifold", MFlow.manifold_loss, manifold),
        ("density", MFlow.density_loss, density),
    ):
        t0 = time.time()
        out[name] = _phase(model, train_x, val_x, loss, name, cfg, seed, echo)
        out[name]["seconds"] = round(time.time() - t0, 1)
    model.eval()
    return out


def evaluate_mflow(model: MFlow, x: Tensor, batch: int = 1024) -> dict:
    """On the ``surface-64`` data: the mean reconstruction error ``|x - pi(x)|^2`` against the
    noise's ``D sigma^2``, and the mean on-manifold log-density against the true one."""
    model.eval()
    rec, lq = [], []
    for xb in x.split(batch):
        with torch.no_grad():
            rec.append(model.reconstruction_error(xb))
        lq.append(model.log_prob(xb).detach())
    rec_t, lq_t = torch.cat(rec).double(), torch.cat(lq).double()
    lp = torch.from_numpy(manifold_data.surface_log_prob(x.numpy()))
    d = lq_t - lp
    noise = manifold_data.SURFACE_DIM * manifold_data.SURFACE_NOISE**2
    return {
        "reconstruction": rec_t.mean().item(),
        "noise": noise,
        "log_prob": lq_t.mean().item(),
        "true_log_prob": lp.mean().item(),
        "log_prob_gap": d.mean().item(),
        "log_prob_gap_se": (d.std() / np.sqrt(len(d))).item(),
        "log_prob_mean_abs_error": d.abs().mean().item(),
    }
