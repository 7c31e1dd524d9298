"""The flow-matching CNF in the generic test: float64, exact trace, dopri5 at 1e-8, after
flow-matching steps (a trained field, not the near-zero one of a fresh network), with the
linear path and with the VP path and a context. (Fixed-grid solves: ``continuous.py``'s
``cnf-2-rk4``.)"""

from __future__ import annotations

import torch

import flowforge as ff
from flowforge.matching import FlowMatching

from .base import Case

TIGHT = dict(rtol=1e-8, atol=1e-8, trace="exact")


def trained(
    path: str = "linear", context_features: int = 0, embed: int | None = None, **kw
) -> ff.Flow:
    """A small CNF after 30 flow-matching steps on a shifted, scaled Gaussian (``embed``: a
    ``TimeEmbeddingNet`` with that many frequencies and 3 random Fourier features of the
    state, trained with power-law times)."""
    torch.manual_seed(0)
    kw = {"hidden": (8, 8), **kw}
    if embed is not None:
        kw.update(time_frequencies=embed, time_eps=0.1, space_features=3, space_scale=0.5)
    flow = ff.models.build("cnf", features=2, context_features=context_features, **kw)
    opt = torch.optim.Adam(flow.parameters(), lr=2e-2)
    times = {} if embed is None else dict(times="power", time_power=2.0)
    loss_fn = FlowMatching(path=path, **times)
    flow.train()
    for _ in range(30):
        x = torch.randn(64, 2) * torch.tensor([0.5, 2.0]) + 1
        c = torch.randn(64, context_features) if context_features else None
        loss = loss_fn(flow, x, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow.eval()


CASES = [
    Case("fm-cnf-trained-linear", lambda: trained("linear", **TIGHT)),
    Case(
        "fm-cnf-trained-vp-context",
        lambda: trained("vp", context_features=2, activation="silu", **TIGHT),
    ),
    Case(
        "fm-cnf-time-embedding-context",
        lambda: trained("linear", context_features=2, embed=3, **TIGHT),
    ),
]
