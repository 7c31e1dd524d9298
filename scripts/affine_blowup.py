"""Where the image RealNVP's training blow-up comes from (docs/images.md, "Training stability").

python scripts/affine_blowup.py [--shift-first]
python scripts/affine_blowup.py --write-shapes shapes/   # the 400 PNGs alone, then exit

Trains the new user's run (RealNVP, hidden 32, ActNorm, on the 400 shapes of
tests/test_affine_order.py) for 45 steps on one thread, keeps the weights after steps 44 and 45,
and prints: the NLL of every training and validation image under both; which single parameter
tensor, set to its step-45 value, breaks the step-44 model; the shift and log-scale channels of
that tensor separately; and what the step did to the first coupling's background pixels. With
the paper's order (the default here) step 45 breaks the model; ``--shift-first`` runs the same
with the fix. ``--write-shapes DIR`` writes the 400 images as PNGs into a new folder ``DIR``
(the data of the 15-epoch ``flowforge train --data DIR ...`` runs in docs/images.md) and exits.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def shapes():
    """The 400 images of the regression test (one generator for both)."""
    spec = importlib.util.spec_from_file_location("t", ROOT / "tests" / "test_affine_order.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._shapes()


def write_shapes(folder: Path) -> None:
    """The 400 images, as ``000.png`` to ``399.png`` in ``folder``."""
    from PIL import Image

    for i, img in enumerate(shapes()):
        Image.fromarray(img, "L").save(folder / f"{i:03d}.png")


def main(argv: list[str]) -> None:

    from flowforge import transforms as T
    from flowforge.workbench import train
    from flowforge.workbench.data import load_dataset

    if "--write-shapes" in argv:
        i = argv.index("--write-shapes")
        if i + 1 >= len(argv):
            sys.exit("affine_blowup.py: --write-shapes needs a folder to create")
        out = Path(argv[i + 1])
        try:
            out.mkdir(parents=True)
        except FileExistsError:
            sys.exit(f"affine_blowup.py: {out} exists; give a new folder")
        write_shapes(out)
        print(f"wrote 400 shapes to {out}")
        return
    shift_first = "--shift-first" in argv
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    write_shapes(tmp)
    saved, model = {}, {}

    def keep(trainer):
        if trainer.global_step in (44, 45):
            saved[trainer.global_step] = {
                k: v.detach().clone() for k, v in trainer.model.state_dict().items()
            }
            model["flow"] = trainer.model

    config = {
        "model": {"name": "realnvp", "hidden": 32, "actnorm": True, "shift_first": shift_first},
        "data": str(tmp),
        # (the 100-step warm-up these figures were made with; "auto" now gives a short run a
        # tenth of its steps)
        "train": {"epochs": 9, "warmup_steps": 100},
    }
    train(config, tmp / "run", progress=False, echo=False, callback=keep)
    flow = model["flow"].eval()
    ds = load_dataset(str(tmp))
    x = torch.cat([ds.train, ds.val]).reshape(-1, *ds.shape)
    a, b = saved[44], saved[45]

    def nll(state):
        flow.load_state_dict(state)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            return -flow.log_prob(x)

    for step, state in ((44, a), (45, b)):
        v = nll(state)
        print(f"after step {step}: NLL of the {len(x)} images: median {v.median():.4g}, "
              f"worst {v.max():.4g}")  # fmt: skip
    rows = []
    for k in a:
        if a[k].is_floating_point() and not torch.equal(a[k], b[k]):
            v = nll({**a, k: b[k]})
            rows.append((v.max().item(), v.median().item(), k, (b[k] - a[k]).abs().max().item()))
    rows.sort(reverse=True)
    print("one tensor at its step-45 value, the others at step 44 (the 3 worst):")
    for worst, median, k, change in rows[:3]:
        print(f"  {k}: worst {worst:.4g}, median {median:.4g} (changed by <= {change:.2g})")
    k = rows[0][2]
    if k.endswith("net.out.1.weight"):  # a conditioner's output: channel 0 shift, 1 log-scale
        for ch, what in ((0, "shift"), (1, "log-scale")):
            w = a[k].clone()
            w[ch] = b[k][ch]
            v = nll({**a, k: w})
            print(f"  its {what} channel alone: worst {v.max():.4g}, median {v.median():.4g}")
    # the first coupling on the background (pixels at 0)
    couplings = [(n, m) for n, m in flow.named_modules() if isinstance(m, T.Coupling)]
    first = couplings[0][1]
    seen = {}
    first.register_forward_hook(lambda m, i, o: seen.update(x=i[0], z=o[0]))
    first.net.out[1].register_forward_hook(lambda m, i, o: seen.update(h=i[0], p=o))
    outs = []
    for state in (a, b):
        nll(state)
        outs.append((seen["z"], seen["h"], seen["p"]))
    bg = (x == 0) & ~first.mask
    h = outs[0][1]
    share = h.mean((0, 2, 3)).pow(2).sum() / h.pow(2).mean((0, 2, 3)).sum()
    print(f"background: {(x == 0).float().mean():.0%} of the pixels; the first coupling's "
          f"hidden features (input of its output convolution) are {share:.0%} constant over "
          f"images and positions (share of their squared norm)")  # fmt: skip
    dp = outs[1][2] - outs[0][2]
    print(f"step 45 moved that coupling's raw log-scale by {dp[:, 1].mean():+.3f} and its shift "
          f"by {dp[:, 0].mean():+.3f} on average")  # fmt: skip
    print(f"first coupling, background entries it transforms: input {seen['x'][bg].mean():.3f} "
          f"± {seen['x'][bg].std():.4f}; output after step 44 {outs[0][0][bg].mean():.3f} ± "
          f"{outs[0][0][bg].std():.3f}; moved by step 45: "
          f"{(outs[1][0] - outs[0][0])[bg].mean():+.3f} on average")  # fmt: skip
    # the cascade: the largest |z| after each coupling, step 44 vs only that tensor at step 45
    top = {}
    for n, m in couplings:
        m.register_forward_hook(lambda m, i, o, n=n: top.update({n: o[0].abs().max().item()}))
    print(f"largest |z| after each coupling, step 44 weights / with only {k} at step 45:")
    nll(a)
    before = dict(top)
    nll({**a, k: b[k]})
    for n, _ in couplings:
        print(f"  {n.replace('transform.', '')}: {before[n]:.3g} / {top[n]:.3g}")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shift-first", action="store_true", help="the fix's order of the affine map")
    p.add_argument("--write-shapes", metavar="DIR", help="write the 400 shapes as PNGs and exit")
    a = p.parse_args()
    main((["--shift-first"] if a.shift_first else [])
         + (["--write-shapes", a.write_shapes] if a.write_shapes else []))  # fmt: skip
