"""Flow matching in flowforge against torchcfm, on the same network, data, batches and steps.

torchcfm (Tong et al. 2024, MIT; a benchmark extra: ``pip install -c constraints.txt -e
".[bench]"``) is the reference implementation of conditional flow matching. Here it trains the
very network flowforge trains: the CNF of ``ff.models.build("cnf", features=2)`` (ActNorm +
concat-squash MLP 64x64x64, tanh), from the same initialisation, on the same batches, with the
same optimiser, schedule and weight average, for the same number of steps. Only the loss
differs: flowforge's :class:`flowforge.matching.FlowMatching` or torchcfm's
``ConditionalFlowMatcher`` (``sigma = 0``) / ``ExactOptimalTransportConditionalFlowMatcher``,
whose time runs from noise to data (``t = 1 - s``, velocity ``-u_t``) where flowforge's CNF maps
data to noise. Both models are then scored the same way: exact divergence, dopri5 at
rtol = atol = 1e-5 on the 1000 test points (data seed 0), against each toy's exact density
(``flowforge.workbench.toy_density``).

    python benchmarks/torchcfm_compare.py                       # 6 toys, 2,000 steps each
    python benchmarks/torchcfm_compare.py --toys moons --steps 200 --out -   # smoke run

Reported per toy and method: the test NLL, its gap to the oracle (± standard error), and the
median wall time of one training step (loss, backward, Adam, weight average).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge.matching import FlowMatching, log_likelihood, split_flow
from flowforge.workbench import toy_density
from flowforge.workbench.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
TOYS = ["8gaussians", "checkerboard", "moons", "rings", "2spirals", "pinwheel"]
METHODS = ["flowforge", "torchcfm", "flowforge-ot", "torchcfm-ot"]


def torchcfm_loss(ot: bool):
    """The flow-matching loss of a flowforge CNF computed by torchcfm's matcher."""
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        ExactOptimalTransportConditionalFlowMatcher,
    )

    matcher = (ExactOptimalTransportConditionalFlowMatcher if ot else ConditionalFlowMatcher)(0.0)

    def loss(flow, x):
        before, cnf = split_flow(flow)
        with torch.no_grad():  # the fixed preprocessing (the data-initialised ActNorm)
            y = x
            for layer in before:
                y, _ = layer(y, None)
            e = flow.base.sample(y.shape[0]).to(y)
        # torchcfm's path runs from x0 (noise) at t = 0 to x1 (data) at t = 1
        t, xt, ut = matcher.sample_location_and_conditional_flow(e, y)
        s = 1 - t
        velocity = cnf.net(s * cnf.time, xt, None)
        return (velocity + ut / cnf.time).square().mean()

    return loss


def train(method: str, x: torch.Tensor, steps: int, lr: float, batch: int, seed: int, ema: float):
    torch.manual_seed(seed)
    flow = ff.models.build("cnf", features=2)
    ot = method.endswith("-ot")
    loss_fn = torchcfm_loss(ot) if method.startswith("torchcfm") else FlowMatching(ot=ot)
    flow.train()
    with torch.no_grad():
        FlowMatching()(flow, x)  # the ActNorm's data-dependent initialisation (the same for all)
    params = [p for p in flow.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    avg = copy.deepcopy(flow)
    avg_p = list(avg.parameters())
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)  # the noise and the times each loss draws
    times, losses = [], []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        xb = x[torch.randint(0, len(x), (batch,), generator=g)]
        t0 = time.perf_counter()
        loss = loss_fn(flow, xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(avg_p, params, 1 - min(ema, (1 + step) / (10 + step)))
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    flow.load_state_dict(avg.state_dict())
    return flow, {
        "step_ms": 1000 * statistics.median(times),
        "last_loss": statistics.mean(losses[-100:]),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--toys", nargs="+", default=TOYS)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/torchcfm_compare.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import torchcfm

    res: dict = {"args": vars(a), "torch": torch.__version__, "torchcfm": torchcfm.__version__}
    res["toys"] = {}
    print("| toy | oracle NLL | method | test NLL | gap ± se | step (ms) |")
    print("|---|---:|---|---:|---:|---:|")
    for toy in a.toys:
        ds = load_dataset(toy, seed=0)
        test = ds.split("test")
        truth = torch.from_numpy(toy_density.log_prob(toy, test.double().numpy()))
        entry = res["toys"][toy] = {"oracle_nll": -truth.mean().item(), "methods": {}}
        for method in a.methods:
            flow, info = train(method, ds.split("train"), a.steps, a.lr, a.batch, a.seed, a.ema)
            flow.eval()
            lp = log_likelihood(flow, test, trace="exact", method="dopri5", rtol=1e-5, atol=1e-5)
            gap = truth - lp.log_prob.double()
            info.update(
                test_nll=-lp.mean,
                gap=gap.mean().item(),
                gap_se=(gap.std() / math.sqrt(len(gap))).item(),
                test_nfe=lp.nfe,
            )
            entry["methods"][method] = info
            print(
                f"| {toy} | {entry['oracle_nll']:.3f} | {method} | {-lp.mean:.3f} | "
                f"{info['gap']:.3f} ± {info['gap_se']:.3f} | {info['step_ms']:.2f} |",
                flush=True,
            )
    if a.out != "-":
        Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
