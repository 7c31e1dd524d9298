"""Time to a test NLL: flow matching (flowforge, torchcfm) against maximum-likelihood FFJORD.

Issue 15 asks for the wall time each way of training a CNF takes to reach a given test
likelihood, on the same toys and the same network. All three train FFJORD's network (the
``cnf`` builder: ActNorm + concat-squash MLP 64x64x64, tanh, 9,228 parameters; ``FFJORD`` with
``hidden=(64, 64, 64)`` is the same module tree), from the same initialisation, on batches of
512 of the 5,000 training points, with Adam at a constant learning rate so that every
checkpoint is a model a user could stop at:

- ``flowforge``: :class:`flowforge.matching.FlowMatching` (linear path), lr 2e-3, scored on
  the weight average (EMA 0.999), as docs/flowmatching.md trains it;
- ``torchcfm``: the same, with torchcfm's ``ConditionalFlowMatcher`` (``sigma = 0``) computing
  the loss (``torchcfm_compare.py``; a benchmark extra);
- ``ffjord``: maximum likelihood as ``configs/ffjord-toy.yaml`` trains it (Hutchinson trace,
  dopri5 at rtol = atol = 1e-3, RNODE penalties 0.01, gradient clip 10, lr 1e-3), scored on
  its weights.

and, for reference, on its own network (not the same architecture):

- ``recipe``: flow matching as docs/flowmatching.md recommends for the toys (``configs/fm-*.yaml``:
  silu, 32 random Fourier features of scale 4, 13,324 parameters, times s = u^2, batch 1024,
  lr 2e-2 with a cosine decay over its budget, EMA 0.999).

Training time is this process's CPU time (one thread), so that other jobs on a shared machine
do not inflate it; scoring is not counted. At each mark (CPU seconds of training) the model is
scored on the 1000 test points (data seed 0) with the exact divergence, dopri5 at
rtol = atol = 1e-5, against the toy's exact density (``flowforge.workbench.toy_density``);
the table gives the gap to the oracle at each mark and the first mark at which it is within
each threshold.

    python benchmarks/flow_matching_time.py                      # 6 toys, about 45 CPU-min
    python benchmarks/flow_matching_time.py --toys moons --marks 1 2 --ffjord-budget 2 --out -
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge.matching import FlowMatching, log_likelihood
from flowforge.workbench import toy_density
from flowforge.workbench.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TOYS = ["8gaussians", "checkerboard", "moons", "rings", "2spirals", "pinwheel"]
METHODS = ["flowforge", "torchcfm", "ffjord", "recipe"]
MARKS = [1, 2, 4, 8, 15, 30, 45, 90, 180, 300]
THRESHOLDS = [1.0, 0.5, 0.25, 0.1]


def _flow(method: str, seed: int) -> ff.Flow:
    torch.manual_seed(seed)
    if method == "recipe":
        return ff.models.build(
            "cnf", features=2, activation="silu", space_features=32, space_scale=4.0
        )
    if method == "ffjord":  # the README's FFJORD row (configs/ffjord-toy.yaml)
        return ff.models.FFJORD(
            features=2, hidden=(64, 64, 64), trace="hutchinson", rtol=1e-3, atol=1e-3,
            regularization={"kinetic": 0.01, "jacobian": 0.01},
        )  # fmt: skip
    return ff.models.build("cnf", features=2)


def trainer(method: str, x: torch.Tensor, batch: int, seed: int, ema: float, budget: float):
    """``(flow, step, scored)``: the model, one training step (called with the training time
    spent so far), and the weights to score."""
    flow = _flow(method, seed)
    flow.train()
    with torch.no_grad():  # the data-dependent initialisation (standardising, ActNorm)
        if method == "ffjord":
            flow.log_prob(x[:1000])
        else:
            FlowMatching()(flow, x)
    if method == "torchcfm":
        from torchcfm_compare import torchcfm_loss

        loss_fn = torchcfm_loss(False)
    elif method == "flowforge":
        loss_fn = FlowMatching()
    elif method == "recipe":
        loss_fn, batch = FlowMatching(times="power", time_power=2.0), 1024
    params = [p for p in flow.parameters() if p.requires_grad]
    lr = {"ffjord": 1e-3, "recipe": 2e-2}.get(method, 2e-3)
    opt = torch.optim.Adam(params, lr, fused=True)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)  # the noise and times the losses draw
    avg = None if method == "ffjord" else copy.deepcopy(flow)
    avg_p = None if avg is None else list(avg.parameters())
    count = [0]

    def step(elapsed: float):
        if method == "recipe":  # its cosine decay over the budget
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0)))
        xb = x[torch.randint(0, len(x), (batch,), generator=g)]
        if method == "ffjord":
            loss = -flow.log_prob(xb).mean()
            reg = ff.core.regularization(flow)
            loss = loss if reg is None else loss + reg
        else:
            loss = loss_fn(flow, xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if method == "ffjord":
            torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        if avg_p is not None:
            with torch.no_grad():
                decay = min(ema, (1 + count[0]) / (10 + count[0]))
                torch._foreach_lerp_(avg_p, params, 1 - decay)
        count[0] += 1

    return flow, step, (flow if avg is None else avg)


def score(flow: ff.Flow, test: torch.Tensor, oracle: torch.Tensor) -> dict:
    was = flow.training
    flow.eval()
    r = log_likelihood(flow, test, trace="exact", method="dopri5", rtol=1e-5, atol=1e-5)
    flow.train(was)
    gap = oracle - r.log_prob.double()
    return {
        "test_nll": -r.mean,
        "gap": gap.mean().item(),
        "gap_se": (gap.std() / math.sqrt(len(gap))).item(),
        "test_nfe": r.nfe,
        "score_s": r.seconds,
    }


def run(step, scored, test, oracle, marks) -> list[dict]:
    """Train until each mark (CPU seconds, scoring excluded) and score there."""
    rows, spent, wall, steps = [], 0.0, 0.0, 0
    for mark in marks:
        t0, w0 = time.process_time(), time.perf_counter()
        while (elapsed := spent + (time.process_time() - t0)) < mark:
            step(elapsed)
            steps += 1
        spent += time.process_time() - t0
        wall += time.perf_counter() - w0
        rows.append(
            {"mark_s": mark, "cpu_s": spent, "wall_s": wall, "steps": steps,
             **score(scored, test, oracle)}
        )  # fmt: skip
        r = rows[-1]
        print(
            f"    {mark:5g} s: {steps:6d} steps, gap {r['gap']:.3f} +- {r['gap_se']:.3f}, "
            f"test NFE {r['test_nfe']}",
            flush=True,
        )
    return rows


def time_to(rows: list[dict], threshold: float) -> float | None:
    """The first mark (CPU seconds) at which the gap is within ``threshold``; None if none."""
    return next((r["mark_s"] for r in rows if r["gap"] <= threshold), None)


def table(res: dict) -> str:
    marks = sorted({r["mark_s"] for t in res["toys"].values() for m in t.values() for r in m})
    head = "| toy | method | " + " | ".join(f"{m:g} s" for m in marks) + " | "
    head += " | ".join(f"to {th:g}" for th in res["thresholds"]) + " |"
    lines = [head, "|---|---|" + "---:|" * (len(marks) + len(res["thresholds"]))]
    for toy, methods in res["toys"].items():
        for method, rows in methods.items():
            by = {r["mark_s"]: r for r in rows}
            cells = [f"{by[m]['gap']:.3f}" if m in by else "" for m in marks]
            cells += [
                "-" if (t := time_to(rows, th)) is None else f"{t:g} s" for th in res["thresholds"]
            ]
            lines.append(f"| {toy} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--toys", nargs="+", default=TOYS)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--marks", type=float, nargs="+", default=MARKS, help="CPU seconds")
    p.add_argument("--fm-budget", type=float, default=45.0, help="flow matching: last mark")
    p.add_argument("--ffjord-budget", type=float, default=300.0, help="FFJORD: last mark")
    p.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS, help="nats")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/flow_matching_time.json"))
    p.add_argument("--merge", nargs="+", help="merge these result files into --out instead")
    a = p.parse_args(argv)
    if a.merge:
        return merge(a.merge, a.out)
    torch.set_num_threads(a.threads)
    res: dict = {"args": vars(a), "torch": torch.__version__, "thresholds": a.thresholds}
    res["toys"] = {}
    for toy in a.toys:
        ds = load_dataset(toy, seed=0)
        train, test = ds.split("train"), ds.split("test")
        oracle = torch.from_numpy(toy_density.log_prob(toy, test.double().numpy()))
        res["toys"][toy] = {}
        for method in a.methods:
            budget = a.ffjord_budget if method == "ffjord" else a.fm_budget
            print(f"{toy} {method}", flush=True)
            _, step, scored = trainer(method, train, a.batch, a.seed, a.ema, budget)
            marks = [m for m in a.marks if m <= budget]
            res["toys"][toy][method] = run(step, scored, test, oracle, marks)
            _write(res, a.out)
    print(table(res))
    return res


def merge(paths: list[str], out: str) -> dict:
    """One result from several runs (their toys and methods), written to ``out`` and beside it."""
    parts = [json.loads(Path(q).read_text()) for q in paths]
    res = {k: parts[0][k] for k in ("args", "torch", "thresholds")}
    res["sources"] = [{"path": q, "args": part["args"]} for q, part in zip(paths, parts)]
    res["toys"] = {}
    for part in parts:  # a later file adds methods to a toy, or replaces the same method
        for toy, methods in part["toys"].items():
            res["toys"].setdefault(toy, {}).update(methods)
    _write(res, out)
    print(table(res))
    return res


def _write(res: dict, out: str) -> None:
    if out == "-":
        return
    Path(out).write_text(json.dumps(res, indent=1) + "\n")
    Path(out).with_suffix(".md").write_text(
        "Gap to the oracle (nats) at each mark (CPU seconds of training, one thread) and the "
        "first mark within each threshold (- : not within the budget); "
        f"`benchmarks/flow_matching_time.py`, torch {res['torch']}.\n\n" + table(res) + "\n"
    )


if __name__ == "__main__":
    main()
