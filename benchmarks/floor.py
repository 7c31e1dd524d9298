"""The conditioner floor: what a training step costs with the flow taken away.

At equal architecture every library runs the same conditioner networks (the same matmuls,
activations and Adam updates); a library can only differ in what it adds around them
(splitting, the elementwise transformer, the log-determinant, the base density). This module
times the conditioners of the flowforge model alone, fed tensors of the shapes they see inside
the flow, so that the benchmark can report each library's overhead above that floor and the
largest speed-up that any implementation could have over a peer: ``peer time / floor time``.
"""

from __future__ import annotations

import statistics
import time

import torch

from flowforge.transforms import Autoregressive, Coupling


def conditioners(flow) -> list[tuple[torch.nn.Module, tuple[int, ...]]]:
    """``(net, input shape without the batch)`` for every coupling (an indexed one, of vectors or
    channel masks, sees its kept part; a masked one, a checkerboard, the whole masked input)
    and autoregressive layer."""
    found = []
    for m in flow.modules():
        if isinstance(m, Coupling):
            shape = (len(m.idx_a), *m.event_shape[1:]) if m.indexed else tuple(m.event_shape)
            found.append((m.net, shape))
        elif isinstance(m, Autoregressive):
            found.append((m.net, m.event_shape))
    return found


def _timings(fn, calls: int) -> list[float]:
    """Seconds of ``calls`` single calls after a warm-up."""
    for _ in range(20):  # the first calls of a process pay for allocations and kernel setup
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def floor_seconds(flow, batch: int, eval_batch: int, lr: float = 1e-3, calls: int = 200):
    """Seconds per training step and per ``log_prob`` call of the conditioners alone.

    Training: forward, backward (inputs after the first layer require grad, as inside a
    flow, so the backward also computes their gradient) and an Adam step over the
    conditioners' parameters. ``log_prob``: one forward of each conditioner, without grad.
    Returns ``None`` when the model has no conditioners this module knows. The Adam steps
    change the conditioners' weights: pass a model built for the purpose (``run.py`` does).
    """
    fns = floor_fns(flow, batch, eval_batch, lr)
    if fns is None:
        return None
    step, density = fns
    # the statistics run.py uses: the median training step, the fastest log_prob call
    return {
        "train_s": statistics.median(_timings(step, calls)),
        "log_prob_s": min(_timings(density, calls // 4)),
    }


def floor_fns(flow, batch: int, eval_batch: int, lr: float = 1e-3):
    """``(step, density)``: one training step and one ``log_prob``-like pass of the
    conditioners alone (see :func:`floor_seconds`), for callers that time them their own way
    (``cross_library.py`` interleaves them with the libraries); ``None`` without conditioners."""
    nets = conditioners(flow)
    if not nets:
        return None
    params = [p for net, _ in nets for p in net.parameters()]
    dev = params[0].device  # (the model's: the CPU, or a GPU for benchmarks/device.py)
    xs = [torch.randn(batch, *shape, requires_grad=i > 0, device=dev)
          for i, (_, shape) in enumerate(nets)]  # fmt: skip
    xe = [torch.randn(eval_batch, *shape, device=dev) for _, shape in nets]
    opt = torch.optim.Adam(params, lr=lr)

    def step():
        loss = sum(net(x, None).mean() for (net, _), x in zip(nets, xs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def density():
        for (net, _), x in zip(nets, xe):
            net(x, None)

    return step, density
