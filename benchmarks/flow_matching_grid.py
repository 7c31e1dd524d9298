"""Flow matching with a multiresolution grid encoding of ``(z, t)`` (a lever for issue 15's
12-second clause; Instant-NGP-style dense grids, Mueller et al. 2022): the velocity is a small
silu MLP of ``[grid features, z, sin/cos of t, t]``, where each of ``L`` levels is a dense
``(r + 1) x (r + 1) x (r_t + 1)`` table of ``F`` features over the box ``[-4, 4]^2 x [0, 1]``,
read by interpolation with smoothstep weights (a C1 field, so the ODE solvers and the exact
divergence see a smooth enough function). Everything else is ``benchmarks/flow_matching.py``'s;
the grid's options come first, as a Python dict:

    python benchmarks/flow_matching_grid.py "{'levels': (8, 16, 32, 64), 't_levels': (1, 1, 1, 1),
        'hidden': (64, 64)}" --parts toys --split val --budget 12 --lr 2e-2 --batch 1024 \
        --times power --time-power 2 --toys checkerboard rings --out /tmp/grid.json

Results: docs/flowmatching.md, "The RealNVP row's own time" (not adopted).
"""

import ast
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow_matching as bfm  # noqa: E402


class GridNet(nn.Module):
    """``v(t, z)`` for ``d = 2``: all levels' tables in one parameter, the eight corners of
    every level gathered in one indexing."""

    def __init__(
        self,
        levels=(4, 8, 16, 32),
        t_levels=(2, 4, 8, 8),
        feat=4,
        box=4.0,
        hidden=(64,),
        init=1e-2,
        freq=4,
    ):
        super().__init__()
        self.box, self.levels, self.feat = box, len(levels), feat
        res = torch.tensor([[r, r, q] for r, q in zip(levels, t_levels)], dtype=torch.long)
        sizes = (res + 1).prod(1)
        stride = torch.stack(
            [(res[:, 1] + 1) * (res[:, 2] + 1), res[:, 2] + 1, res[:, 2] * 0 + 1], 1
        )
        corners = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        self.register_buffer("res", res.float(), False)
        self.register_buffer(
            "offsets", torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]), False
        )
        self.register_buffer("stride", stride, False)
        self.register_buffer("corner_offsets", corners @ stride.T, False)  # (8, L)
        self.register_buffer("corners", corners.float(), False)  # (8, 3)
        self.table = nn.Parameter(init * torch.randn(int(sizes.sum()), feat))
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(freq), False)
        width, layers = self.levels * feat + 2 + 2 * freq + 1, []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, t, z, context=None):
        n = z.shape[0]
        t = t.to(z).reshape(-1, 1).expand(n, 1)
        u = torch.cat([((z + self.box) / (2 * self.box)).clamp(0, 1), t.clamp(0, 1)], 1)
        res = self.res.to(z)
        p = u[:, None, :] * res  # (n, L, 3)
        i0 = torch.minimum(p.detach().floor(), res - 1)
        w = p - i0
        w = w * w * (3 - 2 * w)  # smoothstep
        idx = ((i0.long() * self.stride).sum(2) + self.offsets)[:, None, :] + self.corner_offsets
        c = self.corners.to(z)[None, :, None, :]
        weight = (c * w[:, None] + (1 - c) * (1 - w[:, None])).prod(3)  # (n, 8, L)
        vals = self.table[idx.reshape(-1)].reshape(n, 8, self.levels, self.feat)
        feats = (weight[..., None] * vals).sum(1).reshape(n, -1)
        arg = t * self.freqs
        return self.mlp(torch.cat([feats, z, torch.sin(arg), torch.cos(arg), t], 1))


def main(argv):
    options, plain = ast.literal_eval(argv[0]), bfm.build_cnf

    def build(seed, *args, **kw):  # the CNF builder's flow, its network replaced
        flow = plain(seed, (64,), "silu")
        torch.manual_seed(seed)
        cnf = next(m for m in flow.modules() if type(m).__name__ == "CNF")
        cnf.net = GridNet(**options)
        for m in cnf.modules():
            if m is not cnf and hasattr(m, "net"):
                m.net = cnf.net
        return flow

    bfm.build_cnf = build
    return bfm.main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
