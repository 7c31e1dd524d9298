"""How close can a neural spline flow come to the conditioner floor?

``benchmarks/floor.py`` times a model's conditioner networks alone; the issue's target is 0.9
of that floor for every model. A spline flow also has to evaluate its splines, and a
rational-quadratic spline of ``K`` bins costs per transformed entry ``2K`` exponentials (the
softmaxes of the bin widths and heights), two softplus (the slopes of the entry's bin's two
knots) and two logarithms (the log-derivative), whatever the implementation (until 2026-12-05
flowforge's spline took the softplus of all ``K - 1`` interior slopes, and three logarithms).
This script times, at the shapes the benchmark's NSFs see (digits, 4 layers, hidden 128, 8
bins; training batch 256, ``log_prob`` batch 1,024; one thread):

- ``floor``: the conditioners alone (training step with Adam; ``log_prob`` without grad);
- ``eager``: flowforge's spline (``rational_quadratic``), forward without grad, and forward
  plus backward;
- ``compiled``: the same, ``torch.compile``d (``cpp.threads = 1``, as the trainer compiles);
- ``fused``: a formulation with every operation elementwise (the bins unrolled in Python, so
  inductor emits one loop over the entries), compiled: the fastest forward found;
- ``transcendentals``: the exponentials, softplus and logarithms alone, each one vectorised
  ATen call over all entries: no implementation that computes these values exactly does less.

and the ceilings they imply, ``floor / (floor + layers * spline forward)``: even with a
spline forward as cheap as ``fused`` (or as the transcendentals alone) and a backward that
costs nothing, a training step or a ``log_prob`` call cannot run faster than that fraction of
the floor.

    OMP_NUM_THREADS=1 python benchmarks/spline_bound.py --out benchmarks/results/spline_bound.json
"""

from __future__ import annotations

import argparse
import json
import math
import os

import floor
import peers
import torch
from torch.nn import functional as F

from flowforge._util import COMPILE_OPTIONS
from flowforge.transforms.splines import rational_quadratic


def fused_rq(x, params, bound: float, min_size: float = 1e-3, min_derivative: float = 1e-3):
    """The forward spline with every operation elementwise over ``x`` (bins unrolled), the
    same function as ``rational_quadratic(x, params)`` (checked in :func:`main`) for
    ``x`` of shape ``(B, E)`` and parameters in the bins-second layout ``(B, 3K - 1, E)``.
    The softplus of every slope and three logarithms: compiled, faster than the softplus of
    the bin's two slopes and two logarithms (which the eager spline takes)."""
    k = (params.shape[1] + 1) // 3
    u = params.unbind(1)

    def sizes(us):
        top = us[0]
        for v in us[1:]:
            top = torch.maximum(top, v)
        e = [torch.exp(v - top) for v in us]
        total = e[0]
        for v in e[1:]:
            total = total + v
        scale = (2 * bound) * (1 - min_size * k) / total
        return [(2 * bound) * min_size + v * scale for v in e]

    widths, heights = sizes(u[:k]), sizes(u[k : 2 * k])
    shift = math.log(math.expm1(1 - min_derivative))
    slopes = [min_derivative + F.softplus(v.clamp(max=1e4) + shift) for v in u[2 * k :]]
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    one = torch.ones_like(xc)
    x0 = y0 = cx = cy = -bound * one
    w, h, d0, d1 = widths[0], heights[0], one, slopes[0]
    for j in range(1, k):  # the input's bin: the last knot at or below it
        cx, cy = cx + widths[j - 1], cy + heights[j - 1]
        sel = xc >= cx
        x0, y0 = torch.where(sel, cx, x0), torch.where(sel, cy, y0)
        w, h = torch.where(sel, widths[j], w), torch.where(sel, heights[j], h)
        d0 = torch.where(sel, slopes[j - 1], d0)
        d1 = torch.where(sel, slopes[j] if j < k - 1 else one, d1)
    s = h / w
    xi = ((xc - x0) / w).clamp(0, 1)
    t = xi * (1 - xi)
    den = s + (d1 + d0 - 2 * s) * t
    y = (y0 + h * (s * xi * xi + d0 * t) / den).clamp(-bound, bound)
    ladj = (
        2 * torch.log(s)
        + torch.log(d1 * xi * xi + 2 * s * t + d0 * (1 - xi) * (1 - xi))
        - 2 * torch.log(den)
    )
    return torch.where(inside, y, x), torch.where(inside, ladj, torch.zeros_like(ladj))


def _best(fn, calls: int) -> float:
    """The fastest of ``calls`` calls after a warm-up: the spline's most favourable cost, so
    that the ceilings below are upper bounds (floor.py's training step is a median, its
    ``log_prob`` the fastest call), timed as floor.py times (the same warm-up)."""
    return min(floor._timings(fn, calls))


def spline_times(batch: int, entries: int, bins: int, bound: float, calls: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, entries)
    p_binsecond = torch.randn(batch, 3 * bins - 1, entries) * 0.5
    p = p_binsecond.movedim(1, -1)  # as a grouped conditioner hands it over: a view
    xg, pg = x.clone().requires_grad_(), p.detach().clone().requires_grad_()

    def backward_of(fn):
        def run():
            y, ladj = fn(xg, pg)
            (y.sum() + ladj.sum()).backward()

        return run

    eager = lambda a, b: rational_quadratic(a, b, bound=bound)  # noqa: E731
    compiled = torch.compile(eager, options=COMPILE_OPTIONS)
    fused = torch.compile(
        lambda a, b: fused_rq(a, b.movedim(-1, 1), bound), options=COMPILE_OPTIONS
    )
    with torch.no_grad():
        ref, got = eager(x, p), fused(x, p)
        difference = max((r - g).abs().max().item() for r, g in zip(ref, got))
        n = batch * entries
        u = torch.randn(n * 2 * bins)
        v = torch.randn(n * 2)
        w = torch.rand(n * 2) + 0.5

        def transcendentals():
            torch.exp(u)
            F.softplus(v)
            torch.log(w)

        out = {
            "batch": batch,
            "entries": entries,
            "fused_max_abs_difference": difference,
            "eager_forward_s": _best(lambda: eager(x, p), calls),
            "compiled_forward_s": _best(lambda: compiled(x, p), calls),
            "fused_forward_s": _best(lambda: fused(x, p), calls),
            "transcendentals_s": _best(transcendentals, calls),
        }
    out["eager_forward_backward_s"] = _best(backward_of(eager), calls)
    out["compiled_forward_backward_s"] = _best(backward_of(compiled), calls)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    layers, hidden, bins, d = 4, 128, 8, 64
    results = []
    for kind, entries in (("nsf-c", d // 2), ("nsf-ar", d)):
        torch.manual_seed(0)
        model = peers.flowforge(kind, d, layers, hidden, bins)
        fl = floor.floor_seconds(model.module, 256, 1024)
        row = {"model": kind, "layers": layers, "bins": bins, "floor": fl}
        for phase, batch, floor_s in (
            ("train", 256, fl["train_s"]),
            ("log_prob", 1024, fl["log_prob_s"]),
        ):
            times = spline_times(batch, entries, bins, peers.BOUND, args.calls)
            for key in ("eager_forward_s", "fused_forward_s", "transcendentals_s"):
                cost = layers * times[key]
                times["ceiling_" + key[:-2]] = floor_s / (floor_s + cost)
            row[phase] = times
            print(
                f"{kind} {phase}: floor {floor_s * 1e3:.2f} ms; per layer: spline forward "
                f"eager {times['eager_forward_s'] * 1e3:.3f} ms, compiled "
                f"{times['compiled_forward_s'] * 1e3:.3f}, "
                f"fused {times['fused_forward_s'] * 1e3:.3f}, "
                f"transcendentals {times['transcendentals_s'] * 1e3:.3f}; forward+backward eager "
                f"{times['eager_forward_backward_s'] * 1e3:.3f}, compiled "
                f"{times['compiled_forward_backward_s'] * 1e3:.3f}; ceiling (fused) "
                f"{times['ceiling_fused_forward']:.2f}, (transcendentals) "
                f"{times['ceiling_transcendentals']:.2f}",
                flush=True,
            )
        results.append(row)
    if args.out:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
        }
        with open(args.out, "w") as f:
            json.dump({**meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
