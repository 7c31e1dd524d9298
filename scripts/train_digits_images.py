"""Train Glow or the image RealNVP on scikit-learn's 8x8 digits; report test NLL and bits/dim.

Data: ``load_digits().data`` reshaped to ``(N, 1, 8, 8)``, integers 0..16 (17 levels). Rows
``[:1000]`` train, ``[1000:1350]`` validation, ``[1350:]`` test, in the file's order. The flow is
built with ``levels=17``, so ``log_prob`` is the dequantization bound on the raw 0..16 scale
and ``-log_prob`` is the NLL in nats per image; bits/dim is ``NLL / (64 ln 2)``.

Example (the commands behind docs/images.md)::

    python scripts/train_digits_images.py --model glow
    python scripts/train_digits_images.py --model realnvp

Prints one JSON line of results at the end and writes sample grids (temperature 1.0 and 0.7)
to ``docs/img/digits_<model>_t<T>.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import flowforge as ff

ROOT = Path(__file__).resolve().parents[1]


def load_splits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return x[:1000], x[1000:1350], x[1350:]


def build(args) -> ff.Flow:
    common = dict(shape=(1, 8, 8), levels=17, alpha=args.alpha, scales=args.scales)
    if args.model == "glow":
        return ff.models.Glow(
            **common,
            steps=args.steps,
            hidden=args.hidden,
            blocks=args.blocks,
            coupling=args.coupling,
            base=args.base,
        )
    return ff.models.RealNVP(
        **common,
        hidden=args.hidden,
        blocks=args.blocks,
        coupling=args.coupling,
        actnorm=args.actnorm,
        batch_norm=args.batch_norm,
        base=args.base,
    )


@torch.no_grad()
def evaluate(flow: ff.Flow, x: torch.Tensor, samples: int, seed: int) -> tuple[float, float]:
    """Mean NLL (nats/image) averaged over ``samples`` dequantizations, and the tighter
    importance-weighted bound ``-log mean_k p(x + u_k)``."""
    flow.eval()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    lp = torch.stack([flow.log_prob(x).double() for _ in range(samples)])  # (K, N)
    torch.random.set_rng_state(gen_state)
    flow.train()
    nll = -lp.mean().item()
    iw = -(torch.logsumexp(lp, 0) - math.log(samples)).mean().item()
    return nll, iw


def save_grid(flow: ff.Flow, temperature: float, path: Path, n: int = 64) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flow.eval()
    torch.manual_seed(0)
    s = flow.sample(n, temperature=temperature).squeeze(1).numpy()
    side = int(math.ceil(math.sqrt(n)))
    grid = np.ones((side * 9 + 1, side * 9 + 1)) * 16
    for i, img in enumerate(s):
        r, c = divmod(i, side)
        grid[1 + r * 9 : 1 + r * 9 + 8, 1 + c * 9 : 1 + c * 9 + 8] = img
    fig = plt.figure(figsize=(4, 4), dpi=100)
    plt.imshow(grid, cmap="gray_r", vmin=0, vmax=16)
    plt.axis("off")
    plt.title(f"{flow.config['model']} samples, T={temperature}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=["glow", "realnvp"], default="glow")
    p.add_argument("--scales", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="Glow: flow steps per scale")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--coupling", choices=["affine", "additive"], default="affine")
    p.add_argument("--base", default="normal")
    p.add_argument("--actnorm", action="store_true", help="RealNVP: ActNorm after couplings")
    p.add_argument("--batch-norm", action="store_true", help="RealNVP: BatchNorm bijectors")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=1e-5)
    p.add_argument("--warmup", type=int, default=200, help="linear LR warm-up, in steps")
    p.add_argument("--patience", type=int, default=30, help="epochs without val improvement")
    p.add_argument("--ema", type=float, default=0.0, help="evaluate an EMA of the weights")
    p.add_argument("--halve", type=int, default=0, help="halve the LR after N stale epochs")
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--val-samples", type=int, default=4)
    p.add_argument("--test-samples", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=540, help="training seconds at most")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img", default=str(ROOT / "docs" / "img"))
    p.add_argument("--save", default=None, help="save the best flow here (.ff)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, val, test = load_splits()
    flow = build(args)
    params = sum(q.numel() for q in flow.parameters())
    print(f"{args.model}: {params} parameters; config {flow.config}", flush=True)

    # ActNorm's data-dependent init on a large batch, not the first mini-batch
    flow.train()
    with torch.no_grad():
        flow.log_prob(train[torch.randperm(1000)[:500]])

    opt = torch.optim.Adamax(flow.parameters(), lr=args.lr, weight_decay=args.wd)
    ema = copy.deepcopy(flow) if args.ema else flow  # Polyak averaging of the weights
    best, best_state, best_epoch, history = math.inf, None, 0, []
    step, factor, last_halved = 0, 1.0, 0
    t0 = time.perf_counter()
    epoch = 0
    for epoch in range(1, args.epochs + 1):
        flow.train()
        perm = torch.randperm(train.shape[0])
        total = 0.0
        for i in range(0, train.shape[0], args.batch):
            xb = train[perm[i : i + args.batch]]
            loss = -flow.log_prob(xb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 50.0)
            step += 1
            for group in opt.param_groups:  # linear warm-up, then halvings on plateaus
                group["lr"] = args.lr * factor * min(1.0, step / args.warmup)
            opt.step()
            if args.ema:
                with torch.no_grad():
                    for pe, q in zip(ema.parameters(), flow.parameters()):
                        pe.lerp_(q, 1 - args.ema)
                    for be, b in zip(ema.buffers(), flow.buffers()):
                        be.copy_(b)
            total += loss.item() * xb.shape[0]
        if epoch % args.eval_every == 0:
            v, _ = evaluate(ema, val, args.val_samples, seed=1)
            history.append((epoch, total / train.shape[0], v))
            print(
                f"epoch {epoch:4d}  train {total / train.shape[0]:7.2f}  val {v:7.2f}  "
                f"({time.perf_counter() - t0:5.0f}s)",
                flush=True,
            )
            if v < best:
                best, best_state, best_epoch = v, copy.deepcopy(ema.state_dict()), epoch
            elif args.halve and epoch - max(best_epoch, last_halved) >= args.halve:
                factor, last_halved = factor / 2, epoch
                print(f"lr halved to {args.lr * factor:.2e}", flush=True)
            if epoch - best_epoch >= args.patience:
                print(f"early stop: no val improvement since epoch {best_epoch}", flush=True)
                break
        if time.perf_counter() - t0 > args.time_limit:
            print("time limit reached", flush=True)
            break
    wall = time.perf_counter() - t0
    flow.load_state_dict(best_state)
    test_nll, test_iw = evaluate(flow, test, args.test_samples, seed=2)
    val_nll, _ = evaluate(flow, val, args.test_samples, seed=3)
    bpd = test_nll / (64 * math.log(2))
    bpd_check = ff.bits_per_dim(flow, test, levels=17)  # one dequantization sample
    img = Path(args.img)
    for t in (1.0, 0.7):
        save_grid(flow, t, img / f"digits_{args.model}_t{int(t * 10):02d}.png")
    if args.save:
        ff.save(flow, args.save)
    result = dict(
        model=args.model,
        test_nll_nats=round(test_nll, 2),
        test_nll_iw_nats=round(test_iw, 2),
        test_bits_per_dim=round(bpd, 4),
        test_bits_per_dim_1sample=round(bpd_check, 4),
        val_nll_nats=round(val_nll, 2),
        best_epoch=best_epoch,
        epochs_run=epoch,
        train_seconds=round(wall, 1),
        parameters=params,
        args=vars(args),
    )
    print("RESULT " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
