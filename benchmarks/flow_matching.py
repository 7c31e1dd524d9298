"""Flow matching (``flowforge.matching``) against maximum-likelihood FFJORD on the six 2-D toys.

Three measurements, each written to ``benchmarks/results/flow_matching.json`` (and a table in
``flow_matching.md``):

``toys``: a CNF (``ff.models.build("cnf")``: ActNorm, then concat-squash MLP 64x64x64, tanh,
9,228 parameters: FFJORD's network in ``configs/ffjord-toy.yaml``) trained by flow matching
for a wall-clock budget on each toy's 5000 training points (``--n-train``; Adam, cosine decay
over the budget, EMA of the weights), then scored on the 1000 test points (data seed 0)
through the ODE with the exact divergence, dopri5 at rtol = atol = 1e-5, against the toy's
exact oracle (``flowforge.workbench.toy_density``); the gap's standard error ``gap_se`` is the
paired one, of ``oracle_i - log q_i`` over the scored points.

``cost``: the median wall time of one training step (forward, backward, fused Adam as the
Trainer uses) at the same network and batch: flow matching against FFJORD as
``configs/ffjord-toy.yaml`` trains it (Hutchinson trace, rtol = atol = 1e-3, RNODE penalties),
FFJORD as the FFJORD paper's toy script trains it (Hutchinson trace, dopri5 at rtol = atol =
1e-5), and FFJORD with the exact trace at rtol = atol = 1e-5. FFJORD's step cost depends on its
dynamics, so it is measured on a trained model (the flow-matching model of the first toy) as
well as at initialisation.

``sampling``: for the first toy's trained model, the time and the quality of 2000 samples
from fixed-step solvers (euler, midpoint, rk4) with 1 to 32 steps and dopri5; quality is the
squared MMD (Gaussian kernel, bandwidth 0.3) between the samples and the 1000 test points.

    python benchmarks/flow_matching.py --budget 45 --threads 1
    python benchmarks/flow_matching.py --toys 8gaussians --budget 10 --quick   # smoke check
    python benchmarks/flow_matching.py --merge a.json b.json   # one JSON and the .md table

The budget is counted in this process's CPU time by default (``--clock cpu``, one thread): on a
shared machine wall time measures the neighbours, CPU time the work.
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
from flowforge.matching import FlowMatching, log_likelihood, nfe, sample
from flowforge.workbench import toy_density
from flowforge.workbench.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
TOYS = ["8gaussians", "checkerboard", "moons", "rings", "2spirals", "pinwheel"]


def build_cnf(
    seed: int,
    hidden=(64, 64, 64),
    activation: str = "tanh",
    frequencies=None,
    eps=1e-3,
    space=0,
    space_scale=1.0,
) -> ff.Flow:
    """The CNF builder's flow; with ``frequencies`` (an int) its network is a
    ``TimeEmbeddingNet`` of the same widths (time embedded by sines, cosines, log)."""
    torch.manual_seed(seed)
    kw = {} if frequencies is None else dict(time_frequencies=frequencies, time_eps=eps)
    if space:
        if not isinstance(space_scale, (int, float)) and len(space_scale) == 1:
            space_scale = space_scale[0]
        kw.update(space_features=space, space_scale=space_scale)
    return ff.models.build("cnf", features=2, hidden=hidden, activation=activation, **kw)


class Muon(torch.optim.Optimizer):
    """Muon (momentum, then the update orthogonalised by a quintic Newton-Schulz iteration),
    as ``torch.optim.Muon`` with ``adjust_lr_fn="original"`` and no weight decay, but in float32
    and in one batched product for all its matrices: torch's iterates in bfloat16, which a CPU
    without bfloat16 arithmetic runs 2.4x slower than float32 on these sizes. The matrices are
    zero-padded to one shape (the iteration keeps zero columns zero, so the result is exact)."""

    COEFFS = (3.4445, -4.775, 2.0315)

    def __init__(self, params, lr=0.02, momentum=0.95, steps=5):
        super().__init__(params, dict(lr=lr, momentum=momentum, steps=steps))

    @torch.no_grad()
    def step(self):
        a, b, c = self.COEFFS
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            ups = []
            for p in ps:
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                ups.append(p.grad.add(buf, alpha=group["momentum"]))  # Nesterov
            flip = [u.shape[0] > u.shape[1] for u in ups]
            ups = [u.T if f else u for u, f in zip(ups, flip)]
            rows = max(u.shape[0] for u in ups)
            cols = max(u.shape[1] for u in ups)
            x = torch.zeros(len(ups), rows, cols)
            for i, u in enumerate(ups):
                x[i, : u.shape[0], : u.shape[1]] = u
            x /= x.flatten(1).norm(dim=1).clamp(min=1e-7)[:, None, None]
            for _ in range(group["steps"]):
                gram = x @ x.transpose(1, 2)
                x = a * x + torch.baddbmm(gram, gram, gram, beta=b, alpha=c) @ x
            for i, (p, u, f) in enumerate(zip(ps, ups, flip)):
                o = x[i, : u.shape[0], : u.shape[1]]
                scale = math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
                p.add_(o.T if f else o, alpha=-group["lr"] * scale)


def _muon_param(name: str, p: torch.Tensor) -> bool:
    """A hidden layer's weight matrix (both sides wider than 2): what Muon orthogonalises."""
    return name.endswith("linear.weight") and p.ndim == 2 and min(p.shape) > 2


def train_fm(
    flow,
    x,
    budget,
    lr,
    batch,
    seed,
    ema=0.999,
    path="linear",
    ot=False,
    clock="cpu",
    warmup=0.0,
    weight_decay=0.0,
    betas=(0.9, 0.999),
    optimizer="adam",
    muon_lr=0.02,
    muon_steps=5,
    **times,
) -> dict:
    """Flow matching for ``budget`` seconds of ``clock`` (``"cpu"``: this process's CPU time,
    which a loaded machine does not inflate; ``"wall"``); the EMA weights are loaded at the
    end. The learning rate rises linearly over the first ``warmup`` fraction of the budget,
    then decays as a cosine. ``times``: the other keywords of :class:`FlowMatching` (the time
    distribution, ``sigma``)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    loss_fn = FlowMatching(path=path, ot=ot, **times)
    g = torch.Generator().manual_seed(seed)
    flow.train()
    with torch.no_grad():
        loss_fn(flow, x)  # the ActNorm's data-dependent initialisation, on the whole set
    params = [p for p in flow.parameters() if p.requires_grad]
    betas = tuple(betas)
    if optimizer in ("muon", "torch-muon"):  # the hidden matrices by Muon, the rest by Adam
        hidden = [q for n, q in flow.named_parameters() if _muon_param(n, q)]
        ids = {id(q) for q in hidden}
        rest = [q for q in params if id(q) not in ids]
        opts = [
            Muon(hidden, muon_lr, steps=muon_steps)
            if optimizer == "muon"
            else torch.optim.Muon(
                hidden, muon_lr, weight_decay=weight_decay, adjust_lr_fn="original"
            ),
            torch.optim.Adam(rest, lr, betas, fused=True),
        ]
        bases = [muon_lr, lr]
    elif weight_decay:  # decoupled (AdamW), as the Trainer's adamw
        opts = [torch.optim.AdamW(params, lr, betas, weight_decay=weight_decay, fused=True)]
        bases = [lr]
    else:
        opts = [torch.optim.Adam(params, lr, betas, fused=True)]  # as the Trainer
        bases = [lr]
    avg = copy.deepcopy(flow)
    avg_p = list(avg.parameters())
    steps, t0, w0, losses = 0, now(), time.perf_counter(), []
    while (elapsed := now() - t0) < budget:
        factor = 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        if elapsed < warmup * budget:
            factor *= elapsed / (warmup * budget)
        for opt, base in zip(opts, bases):
            for group in opt.param_groups:
                group["lr"] = base * factor
        xb = x[torch.randint(0, len(x), (batch,), generator=g)]
        loss = loss_fn(flow, xb)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(avg_p, params, 1 - min(ema, (1 + steps) / (10 + steps)))
        steps += 1
        losses.append(loss.item())
    flow.load_state_dict(avg.state_dict())
    return {
        "steps": steps,
        "train_s": now() - t0,
        "clock": clock,
        "wall_s": time.perf_counter() - w0,
        "last_loss": statistics.mean(losses[-200:]),
    }


def cost(x: torch.Tensor, batch: int, trained: ff.Flow | None, rounds: int) -> dict:
    """Median step times, interleaved (each round times every variant once, flow matching
    over 10 steps) so that a load on the machine weighs on all of them alike."""
    g = torch.Generator().manual_seed(0)

    def batch_x():
        return x[torch.randint(0, len(x), (batch,), generator=g)]

    fm_flow = build_cnf(0)
    fm = FlowMatching()
    with torch.no_grad():
        fm(fm_flow, x)
    fm_opt = torch.optim.Adam(fm_flow.parameters(), lr=1e-4, fused=True)

    def fm_step():
        loss = fm(fm_flow, batch_x())
        fm_opt.zero_grad(set_to_none=True)
        loss.backward()
        fm_opt.step()
        return 0

    steps = {"flow_matching": fm_step}
    variants = {
        "ffjord_hutchinson_1e-3": dict(
            trace="hutchinson", rtol=1e-3, atol=1e-3,
            regularization={"kinetic": 0.01, "jacobian": 0.01},
        ),
        "ffjord_hutchinson_1e-5": dict(trace="hutchinson", rtol=1e-5, atol=1e-5),
        "ffjord_exact_1e-5": dict(trace="exact", rtol=1e-5, atol=1e-5),
    }  # fmt: skip
    for name, kw in variants.items():
        for where, source in (("init", None), ("trained", trained)):
            if where == "trained" and source is None:
                continue
            torch.manual_seed(0)
            flow = ff.models.FFJORD(features=2, hidden=(64, 64, 64), **kw)
            if source is not None:
                flow.load_state_dict(source.state_dict())
            else:
                with torch.no_grad():
                    flow.train()
                    flow.log_prob(x[:1000])  # ActNorm init
            opt = torch.optim.Adam(flow.parameters(), lr=1e-4, fused=True)

            def ml_step(flow=flow, opt=opt):
                loss = -flow.log_prob(batch_x()).mean()
                reg = ff.core.regularization(flow)
                opt.zero_grad(set_to_none=True)
                (loss if reg is None else loss + reg).backward()
                opt.step()
                c = [m for m in flow.modules() if isinstance(m, ff.transforms.CNF)][0]
                return c.nfe_forward + c.nfe_backward

            steps[f"{name}_{where}"] = ml_step
    times: dict = {k: [] for k in steps}
    counts: dict = {k: [] for k in steps}
    for r in range(rounds + 1):
        for k, fn in steps.items():
            reps = 10 if k == "flow_matching" else 1
            t0 = time.perf_counter()
            for _ in range(reps):
                c = fn()
            if r:  # round 0 warms up
                times[k].append((time.perf_counter() - t0) / reps)
                counts[k].append(c)
    out = {"flow_matching_s": statistics.median(times["flow_matching"])}
    for k in steps:
        if k != "flow_matching":
            out[f"{k}_s"] = statistics.median(times[k])
            out[f"{k}_nfe"] = statistics.median(counts[k])
            out[f"{k}_ratio"] = out[f"{k}_s"] / out["flow_matching_s"]
    return out


def _has_ffjords_network(flow: ff.Flow) -> bool:
    """Whether ``flow`` (a ``build_cnf`` flow) has the network ``ff.models.FFJORD`` builds in
    :func:`cost`, so that its weights load there."""
    kw = flow.config["kwargs"]
    return (
        list(kw["hidden"]) == [64, 64, 64]
        and kw["activation"] == "tanh"
        and not kw.get("space_features")
        and kw.get("time_frequencies") is None
    )


def run_cost(x: torch.Tensor, batch: int, steps: int, seed: int = 0) -> dict:
    """Step costs averaged over whole training runs from initialisation, in this process's
    CPU time: ``steps`` steps of flow matching, then ``steps`` of maximum-likelihood FFJORD at
    the FFJORD paper's toy settings (Hutchinson trace, dopri5 at rtol = atol = 1e-5), same
    network, batch, fused Adam at lr 1e-3. FFJORD's cost grows as its field trains (more
    function evaluations); the mean over a run is what a user pays per step."""
    g = torch.Generator().manual_seed(seed)
    out: dict = {"steps": steps, "batch": batch}
    for name in ("flow_matching", "ffjord_hutchinson_1e-5"):
        torch.manual_seed(seed)
        if name == "flow_matching":
            flow, fm = build_cnf(seed), FlowMatching()
            with torch.no_grad():
                fm(flow, x)  # the ActNorm's initialisation

            def loss_fn(xb, flow=flow, fm=fm):
                return fm(flow, xb)
        else:
            flow = ff.models.FFJORD(
                features=2, hidden=(64, 64, 64), trace="hutchinson", rtol=1e-5, atol=1e-5
            )
            with torch.no_grad():
                flow.train()
                flow.log_prob(x[:1000])  # ActNorm init

            def loss_fn(xb, flow=flow):
                return -flow.log_prob(xb).mean()

        cnf = [m for m in flow.modules() if isinstance(m, ff.transforms.CNF)][0]
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3, fused=True)
        flow.train()
        times, nfes = [], []
        for _ in range(steps):
            xb = x[torch.randint(0, len(x), (batch,), generator=g)]
            t0 = time.process_time()
            loss = loss_fn(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.process_time() - t0)
            nfes.append(cnf.nfe_forward + cnf.nfe_backward)
        tenth = max(1, steps // 10)
        out[name] = {
            "mean_ms": 1e3 * statistics.mean(times),
            "first_tenth_ms": 1e3 * statistics.mean(times[:tenth]),
            "last_tenth_ms": 1e3 * statistics.mean(times[-tenth:]),
            "nfe_first_tenth": statistics.mean(nfes[:tenth]),
            "nfe_last_tenth": statistics.mean(nfes[-tenth:]),
            "final_loss": loss.item(),
        }
        print(f"  {name}: {out[name]}", flush=True)
    fm_ms = out["flow_matching"]["mean_ms"]
    out["ratio_mean"] = out["ffjord_hutchinson_1e-5"]["mean_ms"] / fm_ms
    out["ratio_last_tenth"] = out["ffjord_hutchinson_1e-5"]["last_tenth_ms"] / fm_ms
    return out


def train_ml(flow, x, budget, lr, batch, seed, clock="cpu") -> dict:
    """Maximum-likelihood fine-tuning as ``configs/ffjord-toy.yaml`` trains FFJORD (Hutchinson
    trace, rtol = atol = 1e-3, RNODE penalties 0.01), cosine decay over the budget."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    for c in flow.modules():
        if isinstance(c, ff.transforms.CNF):
            c.trace, c.rtol, c.atol = "hutchinson", 1e-3, 1e-3
            c.penalty_weights = {"kinetic": 0.01, "jacobian": 0.01}
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    flow.train()
    steps, t0, w0 = 0, now(), time.perf_counter()
    while (elapsed := now() - t0) < budget:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        loss = -flow.log_prob(x[torch.randint(0, len(x), (batch,), generator=g)]).mean()
        reg = ff.core.regularization(flow)
        opt.zero_grad(set_to_none=True)
        (loss if reg is None else loss + reg).backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        opt.step()
        steps += 1
    for c in flow.modules():
        if isinstance(c, ff.transforms.CNF):
            c.penalty_weights = {}
    return {"ml_steps": steps, "ml_s": now() - t0, "ml_wall_s": time.perf_counter() - w0}


def mmd2(a: torch.Tensor, b: torch.Tensor, bw: float = 0.3) -> float:
    def k(u, v):
        return torch.exp(-torch.cdist(u, v).square() / (2 * bw**2))

    a, b = a.double(), b.double()
    n, m = len(a), len(b)
    kaa = (k(a, a).sum() - n) / (n * (n - 1))
    kbb = (k(b, b).sum() - m) / (m * (m - 1))
    return float(kaa + kbb - 2 * k(a, b).mean())


def sampling(flow: ff.Flow, test: torch.Tensor, n: int, steps_list) -> list[dict]:
    rows = []
    flow.eval()
    runs = [("dopri5", None)] + [(m, s) for m in ("euler", "midpoint", "rk4") for s in steps_list]
    for method, steps in runs:
        torch.manual_seed(1)
        t0 = time.perf_counter()
        xs = sample(flow, n, method=method, steps=steps)
        dt = time.perf_counter() - t0
        rows.append(
            {"method": method, "steps": steps, "nfe": nfe(flow), "seconds": dt,
             "mmd2": mmd2(xs, test)}
        )  # fmt: skip
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--toys", nargs="+", default=TOYS)
    p.add_argument("--budget", type=float, default=45.0, help="training seconds per toy")
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"], help="the budget's clock")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--path", default="linear")
    p.add_argument("--ot", action="store_true")
    p.add_argument("--sigma", type=float, default=0.0, help="I-CFM noise along the path")
    p.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999], help="Adam's betas")
    p.add_argument("--optimizer", choices=["adam", "muon", "torch-muon"], default="adam")
    p.add_argument("--muon-lr", type=float, default=0.02, help="Muon's rate (hidden matrices)")
    p.add_argument("--muon-steps", type=int, default=5, help="Muon's Newton-Schulz iterations")
    p.add_argument("--weight-decay", type=float, default=0.0, help="> 0: AdamW's decay")
    p.add_argument("--warmup", type=float, default=0.0, help="linear warmup, fraction of budget")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64, 64], help="network widths")
    p.add_argument("--activation", default="tanh", help="tanh, softplus, elu or silu")
    p.add_argument(
        "--time-embed", type=int, metavar="J",
        help="embed time (J sine/cosine pairs and log(t + eps)): TimeEmbeddingNet",
    )  # fmt: skip
    p.add_argument("--time-eps", type=float, default=1e-3, help="TimeEmbeddingNet's log offset")
    p.add_argument("--space-features", type=int, default=0, help="random Fourier features of z")
    p.add_argument(
        "--space-scale", type=float, nargs="+", default=[1.0],
        help="their frequencies' std (several: a mixture, the features split equally)",
    )  # fmt: skip
    p.add_argument("--times", default="uniform", help="uniform, logit-normal or power")
    p.add_argument("--time-loc", type=float, default=0.0, help="logit-normal: mean")
    p.add_argument("--time-scale", type=float, default=1.0, help="logit-normal: std")
    p.add_argument("--time-power", type=float, default=1.0, help="power: s = u ** power")
    p.add_argument(
        "--split", default="test", choices=["val", "test"],
        help="the split scored against the oracle (choose settings on val)",
    )  # fmt: skip
    p.add_argument("--rtol", type=float, default=1e-5, help="scoring: dopri5 rtol = atol")
    p.add_argument("--save", help="a folder for each toy's trained weights (TOY.pt)")
    p.add_argument(
        "--n-train", type=int, default=5000,
        help="training points drawn from the toy's generator (the README's rows: 5000)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cost-rounds", type=int, default=15, help="interleaved timing rounds")
    p.add_argument(
        "--parts", nargs="+", default=["toys", "cost", "sampling"],
        help="toys, cost, runcost, sampling, warmstart",
    )  # fmt: skip
    p.add_argument("--run-steps", type=int, default=400, help="runcost: steps per run")
    p.add_argument("--quick", action="store_true", help="fewer timings and sampling runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/flow_matching.json"))
    p.add_argument("--ml-budget", type=float, default=45.0, help="warmstart: ML seconds")
    p.add_argument("--ml-lr", type=float, default=2e-4, help="warmstart: ML learning rate")
    p.add_argument("--merge", nargs="+", help="merge these result files into --out instead")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    torch.set_num_threads(args.threads)
    res: dict = {"args": vars(args), "torch": torch.__version__, "toys": {}}
    first = None
    for toy in args.toys:
        ds = load_dataset(toy, seed=0, n_train=args.n_train)  # val and test do not change
        train, test = ds.split("train"), ds.split(args.split)
        ora = toy_density.log_prob(toy, test.numpy())
        flow = build_cnf(
            args.seed,
            tuple(args.hidden),
            args.activation,
            args.time_embed,
            args.time_eps,
            args.space_features,
            args.space_scale,
        )
        info = train_fm(
            flow,
            train,
            args.budget,
            args.lr,
            args.batch,
            args.seed,
            args.ema,
            args.path,
            args.ot,
            args.clock,
            args.warmup,
            args.weight_decay,
            args.betas,
            args.optimizer,
            args.muon_lr,
            args.muon_steps,
            sigma=args.sigma,
            times=args.times,
            time_loc=args.time_loc,
            time_scale=args.time_scale,
            time_power=args.time_power,
        )
        tol = args.rtol
        r = log_likelihood(flow, test, method="dopri5", rtol=tol, atol=tol, trace="exact")
        diff = torch.as_tensor(ora, dtype=torch.float64) - r.log_prob.double()
        info.update(
            split=args.split,
            oracle=float(ora.mean()),
            test_log_lik=r.mean,
            test_se=r.stderr,
            gap=float(ora.mean()) - r.mean,
            gap_se=float(diff.std() / math.sqrt(len(diff))),  # paired: same points
            test_nfe=r.nfe,
            test_s=r.seconds,
            params=sum(q.numel() for q in flow.parameters()),
        )
        res["toys"][toy] = info
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            torch.save(flow.state_dict(), Path(args.save) / f"{toy}.pt")
            torch.save(r.log_prob, Path(args.save) / f"{toy}.{args.split}_log_prob.pt")
        print(
            f"{toy:13s} {info['steps']:6d} steps {info['train_s']:5.1f}s {args.clock} "
            f"({info['wall_s']:.0f}s wall)  {args.split} log-lik "
            f"{r.mean:.3f} +- {r.stderr:.3f}  oracle {info['oracle']:.3f}  gap {info['gap']:.3f}"
            f" +- {info['gap_se']:.3f}  test NFE {r.nfe:.0f} ({r.seconds:.1f}s)",
            flush=True,
        )
        if first is None:
            first = (toy, flow, train, test)
        if "warmstart" in args.parts:  # FFJORD's network, flow matching then likelihood
            ml = train_ml(flow, train, args.ml_budget, args.ml_lr, args.batch, args.seed)
            r = log_likelihood(flow, test, method="dopri5", rtol=1e-5, atol=1e-5, trace="exact")
            ml.update(test_log_lik=r.mean, test_se=r.stderr, gap=info["oracle"] - r.mean)
            info["warmstart"] = ml
            print(
                f"  + maximum likelihood {ml['ml_steps']} steps {ml['ml_s']:.0f}s: test log-lik "
                f"{r.mean:.3f} +- {r.stderr:.3f}  gap {ml['gap']:.3f}",
                flush=True,
            )
        _write(res, args.out)
    toy, flow, train, test = first
    if "cost" in args.parts:
        # the trained field's rows load its weights into FFJORD's network: only when it is that
        # network (the Fourier-feature recipe's is not; its rows are left out, with the reason)
        same = _has_ffjords_network(flow)
        res["cost"] = {
            "toy": toy,
            "batch": args.batch,
            **cost(
                train, args.batch, flow if same else None, 3 if args.quick else args.cost_rounds
            ),
        }
        if not same:
            res["cost"]["trained"] = (
                "not timed: the trained network is not FFJORD's (hidden 64x3, tanh, no Fourier "
                "or time features); run the cost part with the default network options"
            )
        c = res["cost"]
        print(
            f"step cost at batch {args.batch}: flow matching {1e3 * c['flow_matching_s']:.2f} ms; "
            + "; ".join(
                f"{k[:-2]} {1e3 * v:.0f} ms ({c[k[:-2] + '_ratio']:.0f}x, NFE {c[k[:-2] + '_nfe']})"
                for k, v in c.items()
                if k.startswith("ffjord") and k.endswith("_s")
            ),
            flush=True,
        )
        _write(res, args.out)
    if "runcost" in args.parts:
        res["run_cost"] = run_cost(train, args.batch, args.run_steps, args.seed)
        c = res["run_cost"]
        print(
            f"step cost over {c['steps']}-step runs: flow matching "
            f"{c['flow_matching']['mean_ms']:.2f} ms, FFJORD (Hutchinson, 1e-5) "
            f"{c['ffjord_hutchinson_1e-5']['mean_ms']:.0f} ms: {c['ratio_mean']:.0f}x on average, "
            f"{c['ratio_last_tenth']:.0f}x over the last tenth",
            flush=True,
        )
        _write(res, args.out)
    if "sampling" in args.parts:
        steps_list = (1, 4, 16) if args.quick else (1, 2, 4, 8, 16, 32)
        res["sampling"] = {"toy": toy, "rows": sampling(flow, test, 2000, steps_list)}
        torch.manual_seed(3)
        ref = load_dataset(toy, seed=1).split("test")
        res["sampling"]["mmd2_between_true_sets"] = mmd2(ref, test)
        for row in res["sampling"]["rows"]:
            print(
                f"  sample {row['method']:8s} steps {str(row['steps']):>4s}  NFE {row['nfe']:4d}  "
                f"{row['seconds']:.3f}s  MMD^2 {row['mmd2']:.5f}",
                flush=True,
            )
        _write(res, args.out)
    return res


def merge(paths: list[str], out: str) -> dict:
    """Merge result files (toys from all; cost and sampling from the first that has them) and
    write ``out`` and the table beside it (``.md``)."""
    res: dict = {"toys": {}, "sources": paths}
    for p in paths:
        r = json.loads(Path(p).read_text())
        res.setdefault("args", r["args"])
        res.setdefault("torch", r["torch"])
        for toy, t in r["toys"].items():
            if "warmstart" in t:  # its own table: flow matching, then maximum likelihood
                res.setdefault("warmstart", {})[toy] = t
            else:
                res["toys"][toy] = t
        for k in ("cost", "sampling"):
            if k in r and k not in res:
                res[k] = r[k]
    _write(res, out)
    a = res["args"]
    hidden = "x".join(str(h) for h in a.get("hidden", [64, 64, 64]))
    net = f"concat-squash MLP {hidden}, {a.get('activation', 'tanh')}"
    if a.get("time_embed") is not None:
        net += f", time embedded ({a['time_embed']} frequencies, log(t + {a['time_eps']:g}))"
    if a.get("space_features"):
        net += (
            f", {a['space_features']} random Fourier features of the state (scale "
            f"{_scales(a['space_scale'])})"
        )
    times = a.get("times", "uniform")
    if times == "power":
        times += f" (s = u^{a['time_power']:g})"
    elif times == "logit-normal":
        times += f" ({a['time_loc']:g}, {a['time_scale']:g})"
    split = a.get("split", "test")
    n = 1000
    lines = [
        "# Flow matching on the 2-D toys (`benchmarks/flow_matching.py`)",
        "",
        f"CNF `ff.models.build('cnf', features=2, ...)` (ActNorm + {net}; "
        f"{res['toys'][next(iter(res['toys']))].get('params', 9228)} parameters), "
        f"linear path, {times} times, batch {a['batch']}, Adam lr {a['lr']} cosine, EMA "
        f"{a['ema']}, {a['budget']:g} s of {a.get('clock', 'wall')} time per toy, "
        f"{a.get('n_train', 5000):,} training points; {split} log-likelihood on the {n} {split} "
        f"points (data seed 0), exact divergence, dopri5 at rtol = atol = {a.get('rtol', 1e-5):g}; "
        "oracle: each generator's exact density (`flowforge.workbench.toy_density`).",
        "",
        "| toy | oracle | flow matching | gap (± paired se) | steps | wall s | scoring NFE |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for toy, t in res["toys"].items():
        lines.append(
            f"| {toy} | {t['oracle']:.3f} | {t['test_log_lik']:.3f} ± {t['test_se']:.3f} | "
            f"{t['gap']:.3f}{_pm(t.get('gap_se'))} | {t['steps']} | "
            f"{t.get('wall_s', t['train_s']):.0f} | "
            f"{t['test_nfe']:.0f} |"
        )
    if "warmstart" in res:
        lines += [
            "",
            "FFJORD's network trained by flow matching, then fine-tuned by maximum likelihood as "
            "`configs/ffjord-toy.yaml` trains FFJORD (Hutchinson, rtol = atol = 1e-3, RNODE "
            f"0.01; lr {a.get('ml_lr')}, {a.get('ml_budget')} s of {a.get('clock')} time):",
            "",
            "| toy | oracle | flow matching (gap) | + maximum likelihood (gap) | ML steps |",
            "|---|---:|---:|---:|---:|",
        ]
        for toy, t in res["warmstart"].items():
            w = t["warmstart"]
            lines.append(
                f"| {toy} | {t['oracle']:.3f} | {t['test_log_lik']:.3f} ({t['gap']:.3f}) | "
                f"{w['test_log_lik']:.3f} ({w['gap']:.3f}) | {w['ml_steps']} |"
            )
    if "cost" in res:
        c = res["cost"]
        lines += [
            "",
            f"Training-step cost at batch {c['batch']} (median of interleaved rounds, "
            f"same network): flow matching {1e3 * c['flow_matching_s']:.2f} ms.",
            "",
            "| FFJORD step | ms | NFE (forward + backward) | x flow matching |",
            "|---|---:|---:|---:|",
        ]
        for k, v in c.items():
            if k.startswith("ffjord") and k.endswith("_s"):
                n = k[:-2]
                lines.append(f"| {n} | {1e3 * v:.0f} | {c[n + '_nfe']} | {c[n + '_ratio']:.0f} |")
    if "sampling" in res:
        sm = res["sampling"]
        lines += [
            "",
            f"Sampling 2000 points from the {sm['toy']} model: squared MMD to the test set "
            f"(two true sample sets: {sm['mmd2_between_true_sets']:.5f}).",
            "",
            "| solver | steps | NFE | seconds | MMD^2 |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in sm["rows"]:
            lines.append(
                f"| {r['method']} | {r['steps'] or 'adaptive'} | {r['nfe']} | "
                f"{r['seconds']:.3f} | {r['mmd2']:.5f} |"
            )
    Path(out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    return res


def _pm(se) -> str:
    return "" if se is None else f" ± {se:.3f}"


def _scales(v) -> str:
    v = v if isinstance(v, list) else [v]
    return " + ".join(f"{x:g}" for x in v)


def _write(res: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
