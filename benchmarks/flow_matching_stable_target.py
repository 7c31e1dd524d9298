"""Flow matching with a stable target (a lever for issue 15's 12-second clause): the linear
path's regression target ``e - y`` replaced by its self-normalised posterior mean over a
reference batch (the stable target field of Xu et al. 2023), ``(x_s - sum_j w_j y_j) / s`` with
``w_j`` proportional to ``N(x_s; (1 - s) y_j, s^2 I)`` over the example's own point and ``R``
points drawn from the batch. Everything else is ``benchmarks/flow_matching.py``'s (its options
follow ``R``):

    python benchmarks/flow_matching_stable_target.py 256 /tmp/stf.json --parts toys --split val \
        --budget 12 --lr 2e-2 --activation silu --space-features 32 --space-scale 4 \
        --batch 1024 --times power --time-power 2 --toys checkerboard rings --threads 1

``R = 0`` runs the plain target through the same code. Results: docs/flowmatching.md, "The
RealNVP row's own time".
"""

import sys
from pathlib import Path

import torch

import flowforge.matching as M

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow_matching as bfm  # noqa: E402

_plain = M._path


def stable_path(refs: int):
    def path(name, y, e, s):
        xs, target = _plain(name, y, e, s)
        if refs == 0 or name != "linear":
            return xs, target
        b = y.shape[0]
        ref = y[torch.randint(0, b, (refs,))]
        sc = s.reshape(b, 1)
        own = -((xs - (1 - sc) * y) ** 2).sum(1, keepdim=True) / (2 * sc**2)
        d = xs.unsqueeze(1) - (1 - sc).unsqueeze(1) * ref.unsqueeze(0)
        w = torch.softmax(torch.cat([own, -(d**2).sum(2) / (2 * sc**2)], 1), 1)
        mean = w[:, :1] * y + w[:, 1:] @ ref
        return xs, (xs - mean) / sc.clamp_min(1e-6)

    return path


if __name__ == "__main__":
    M._path = stable_path(int(sys.argv[1]))
    bfm.main(["--out", sys.argv[2], *sys.argv[3:]])
