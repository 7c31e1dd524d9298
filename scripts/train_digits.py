"""Train a vector flow on scikit-learn's 8x8 digits and report the test NLL.

The founding tutorial's split: rows [:1000] train, [1000:1350] validation, [1350:] test, no
shuffling. Values 0..16 (17 levels), dequantized with U[0, 1) by the flow itself, so the NLL
is in nats per image on the raw 0..16 scale (a bound on the discrete NLL) and bits/dim is over
17 levels.

    python scripts/train_digits.py --model realnvp --epochs 300
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from sklearn.datasets import load_digits

import flowforge as ff


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.tensor(load_digits().data, dtype=torch.float32)
    return x[:1000], x[1000:1350], x[1350:]


def evaluate(flow, x, repeats: int) -> float:
    """Test NLL in nats/image, averaged over `repeats` dequantization draws."""
    return sum(ff.nll(flow, x) for _ in range(repeats)) / repeats


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="realnvp")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--kwargs", default="{}", help="extra builder arguments as JSON")
    p.add_argument("--save", default=None, help="save the best flow here (.ff)")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    train, val, test = digits()
    flow = ff.models.build(
        args.model,
        features=64,
        layers=args.layers,
        hidden=tuple(args.hidden),
        levels=17,
        **json.loads(args.kwargs),
    )
    params = sum(p.numel() for p in flow.parameters())
    opt = torch.optim.Adam(flow.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    best, best_state, bad, start = math.inf, None, 0, time.time()
    for epoch in range(args.epochs):
        flow.train()
        for idx in torch.randperm(len(train)).split(args.batch):
            loss = ff.objectives.forward_kl(flow, train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
        v = evaluate(flow, val, 1)
        if v < best:
            best, bad = v, 0
            best_state = {k: t.clone() for k, t in flow.state_dict().items()}
        else:
            bad += 1
        if epoch % 10 == 0:
            print(
                f"epoch {epoch:4d}  train {loss.item():8.2f}  val {v:8.2f}  best {best:8.2f}",
                flush=True,
            )
        if bad >= args.patience:
            break
    seconds = time.time() - start
    flow.load_state_dict(best_state)
    torch.manual_seed(args.seed + 1)
    nll = evaluate(flow, test, 10)
    result = {
        "model": args.model,
        "parameters": params,
        "epochs": epoch + 1,
        "val_nll": round(best, 2),
        "test_nll_nats": round(nll, 2),
        "test_bits_per_dim": round(nll / (64 * math.log(2)), 4),
        "train_seconds": round(seconds, 1),
    }
    print(json.dumps(result))
    if args.save:
        ff.save(flow, args.save)
    return result


if __name__ == "__main__":
    main()
