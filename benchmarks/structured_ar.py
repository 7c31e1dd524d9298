"""Structured autoregression (``adjacency=``) against unstructured MAFs, on few examples from a
known nonlinear DAG whose density is exact.

The data: ``D = 10`` variables of a random DAG (each node has up to three parents among the
earlier ones; the labels are shuffled, so the natural order is not a topological one),
``x_i = m_i(x_pa) + s_i(x_pa) e_i`` with ``e_i ~ N(0, 1)``, a nonlinear mean ``m_i`` (a
linear part plus tanh terms) and a heteroscedastic scale ``s_i``. Its log-density is exact:
``sum_i log N(e_i) - log s_i``. 500 training rows, 250 validation rows, 20,000 test rows.

Three MAFs (affine MADE layers, the builder's defaults otherwise), each trained with Adam
(lr 1e-3, batch 64, at most 400 epochs, early stopping after 40 epochs without a better
validation NLL, the best validation state kept), the layers and widths chosen per model and
seed on the validation NLL among ``layers in {1, 4}`` and ``hidden in {(32, 32), (128, 128)}``:

- ``structured``: ``adjacency=`` the true graph (no permutations);
- ``topological``: an order of the graph (``order=`` a topological order, no permutations):
  knows the order, not the sparsity;
- ``default``: the natural order with the default reversals between layers.

Reported: the test NLL minus the true NLL of the same rows (an estimate of the KL divergence
from the truth, in nats), mean and spread over the seeds, training seconds (one thread), and
the seconds to draw 10,000 samples from the chosen model. Then the sampling cost alone, on
one architecture (4 layers of 128x128, untrained; median of 5 draws of 16 and of 10,000
samples): the structured inverse takes one step per generation of the graph, the ordered one
``D`` steps, each about one MADE pass of arithmetic in all; "structured, naive" is the
structured inverse done the naive way, a full MADE pass per generation (the same numbers).

    python benchmarks/structured_ar.py --out benchmarks/results/structured_ar.json

writes the JSON and prints the table of ``benchmarks/results/structured_ar.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

import flowforge as ff
from flowforge.nets import MADE

D = 10
SAMPLERS = ("structured", "structured, naive", "topological")
SETTINGS = [
    dict(layers=layers, hidden=hidden) for layers in (1, 4) for hidden in ((32, 32), (128, 128))
]


class Truth:
    """The data's DAG and its exact sampler and log-density."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        topo = torch.randperm(D, generator=g)  # topo[k]: the label of the k-th node
        self.parents: list[list[int]] = [[] for _ in range(D)]
        for k in range(1, D):
            n = int(torch.randint(1, 4, (), generator=g)) if k > 1 else 1
            picks = torch.randperm(k, generator=g)[: min(n, k)]
            self.parents[int(topo[k])] = sorted(int(topo[p]) for p in picks)
        self.topo = topo.tolist()
        self.adjacency = torch.zeros(D, D, dtype=torch.bool)
        for i, ps in enumerate(self.parents):
            self.adjacency[i, ps] = True
        self.lin = torch.randn(D, D, generator=g) * 0.5
        self.nl = torch.randn(D, D, generator=g) * 1.5
        self.sc = torch.randn(D, D, generator=g) * 0.5

    def _mean_scale(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ps = self.parents[i]
        if not ps:
            return torch.zeros(len(x), dtype=x.dtype), torch.ones(len(x), dtype=x.dtype)
        xp = x[:, ps]
        m = xp @ self.lin[i, ps].to(x.dtype) + torch.tanh(2 * xp) @ self.nl[i, ps].to(x.dtype)
        s = 0.2 + 0.6 * torch.sigmoid(xp @ self.sc[i, ps].to(x.dtype))
        return m, s

    def sample(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = torch.zeros(n, D, dtype=torch.float64)
        for i in self.topo:
            m, s = self._mean_scale(x, i)
            x[:, i] = m + s * torch.randn(n, generator=g, dtype=torch.float64)
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), dtype=torch.float64)
        for i in range(D):
            m, s = self._mean_scale(x, i)
            e = (x[:, i] - m) / s
            out += -0.5 * e.square() - 0.5 * math.log(2 * math.pi) - s.log()
        return out


def _full_pass_per_generation(self, step, batch, context, like):
    """MADE's inverse by generations the naive way: a whole network pass per generation."""
    x = like.new_zeros(batch, self.features)
    start = 0
    for size in self._generation_sizes:
        dims = self._generation_index[start : start + size]
        start += size
        x = x.index_copy(1, dims, step(dims, self(x, context).index_select(1, dims)))


def build(kind: str, truth: Truth, setting: dict) -> ff.Flow:
    if kind == "structured":
        return ff.models.MAF(features=D, adjacency=truth.adjacency, **setting)
    if kind == "topological":
        return ff.models.MAF(features=D, order=truth.topo, permutation=None, **setting)
    return ff.models.MAF(features=D, **setting)


def nll(flow: ff.Flow, x: torch.Tensor) -> float:
    with torch.no_grad():
        return -flow.log_prob(x).double().mean().item()


def fit(flow, train, val, seed: int, epochs=400, patience=40, batch=64, lr=1e-3):
    """Adam with early stopping on the validation NLL; the best state is kept."""
    torch.manual_seed(seed)
    flow.train()
    with torch.no_grad():  # the data-initialised standardisation: the whole training split
        flow.log_prob(train)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    best, best_state, stale = math.inf, None, 0
    t0 = time.process_time()
    for _ in range(epochs):
        flow.train()
        for idx in torch.randperm(len(train)).split(batch):
            loss = -flow.log_prob(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        flow.eval()
        v = nll(flow, val)
        if v < best - 1e-4:
            best, best_state, stale = v, copy.deepcopy(flow.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    flow.load_state_dict(best_state)
    flow.eval()
    return best, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=400, help="(a quick check: fewer)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    truth = Truth(args.data_seed)
    train = truth.sample(args.train, 1).float()
    val = truth.sample(250, 2).float()
    test = truth.sample(20000, 3)
    true_nll = -truth.log_prob(test).mean().item()
    test = test.float()
    depth = len(ff.nets.generations(truth.adjacency))
    print(f"DAG: {int(truth.adjacency.sum())} edges, {depth} generations; true test NLL "
          f"{true_nll:.4f}")  # fmt: skip
    rows = []
    for kind in ("structured", "topological", "default"):
        for seed in range(args.seeds):
            tried = []
            for setting in SETTINGS:
                torch.manual_seed(100 + seed)
                flow = build(kind, truth, setting)
                v, secs = fit(flow, train, val, seed, epochs=args.epochs)
                tried.append((v, setting, flow, secs))
                print(f"  {kind} seed {seed} {setting}: val {v:.4f} ({secs:.1f} s)", flush=True)
            v, setting, flow, secs = min(tried, key=lambda t: t[0])
            t0 = time.perf_counter()
            with torch.no_grad():
                flow.sample(10000)
            sample_s = time.perf_counter() - t0
            gap = nll(flow, test) - true_nll
            rows.append(dict(model=kind, seed=seed, setting=setting, val_nll=v, gap=gap,
                             train_seconds=secs, sample_seconds=sample_s,
                             all_train_seconds=sum(t[3] for t in tried)))  # fmt: skip
            print(f"{kind} seed {seed}: chose {setting}, test gap {gap:.4f} nats", flush=True)
    sampling = {}
    flows = {}
    for kind in ("structured", "topological"):
        flows[kind] = build(kind, truth, dict(layers=4, hidden=(128, 128))).eval()
        with torch.no_grad():
            flows[kind].transform(train)  # (the data-initialised standardisation)
    one_pass = MADE._solve_by_generations
    for n in (16, 10000):
        times = {k: [] for k in SAMPLERS}
        for _ in range(5):  # (interleaved: the machine's load falls on all alike)
            for kind in SAMPLERS:
                naive = kind.endswith("naive")
                MADE._solve_by_generations = _full_pass_per_generation if naive else one_pass
                t0 = time.perf_counter()
                with torch.no_grad():
                    flows[kind.split(",")[0]].sample(n)
                times[kind].append(time.perf_counter() - t0)
        MADE._solve_by_generations = one_pass
        for kind in SAMPLERS:
            sampling[f"{kind} {n}"] = sorted(times[kind])[2]
    summary = {}
    for kind in ("structured", "topological", "default"):
        r = [x for x in rows if x["model"] == kind]
        gaps = torch.tensor([x["gap"] for x in r])
        summary[kind] = dict(
            gap_mean=gaps.mean().item(),
            gap_sd=gaps.std().item() if len(gaps) > 1 else 0.0,
            train_seconds=sum(x["train_seconds"] for x in r) / len(r),
            sample_seconds=sum(x["sample_seconds"] for x in r) / len(r),
            chosen=[x["setting"] for x in r],
        )
    lines = [
        f"D = {D}, {int(truth.adjacency.sum())} edges, {depth} generations; {args.train} "
        f"training rows, 250 validation, 20,000 test; true test NLL {true_nll:.3f} nats; "
        f"{args.seeds} seeds, one thread",
        "",
        "| MAF | test NLL - true NLL (nats) | train s | sample 10k s | chosen (layers x hidden) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for kind, s in summary.items():
        chosen = ", ".join(f"{c['layers']}x{c['hidden'][0]}" for c in s["chosen"])
        lines.append(
            f"| {kind} | {s['gap_mean']:.3f} ± {s['gap_sd']:.3f} | {s['train_seconds']:.1f} "
            f"| {s['sample_seconds']:.3f} | {chosen} |"
        )
    lines += [
        "",
        "Sampling alone, 4 layers of 128x128 (median of 5, seconds):",
        "",
        "| MAF | 16 samples | 10,000 samples |",
        "|---|---|---|",
    ]
    for kind in SAMPLERS:
        lines.append(f"| {kind} | {sampling[f'{kind} 16']:.4f} | {sampling[f'{kind} 10000']:.3f} |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(
            json.dumps(
                dict(
                    D=D,
                    edges=int(truth.adjacency.sum()),
                    generations=depth,
                    true_nll=true_nll,
                    train=args.train,
                    rows=rows,
                    summary=summary,
                    sampling=sampling,
                    adjacency=truth.adjacency.int().tolist(),
                    torch=torch.__version__,
                ),
                indent=1,
            )  # fmt: skip
        )
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
