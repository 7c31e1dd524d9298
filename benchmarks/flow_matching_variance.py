"""Flow matching with less noise in each step's loss (a lever for issue 15's 12-second clause):
``strat`` draws the batch's times stratified (one per ``1/n`` of ``[0, 1]``, in random order,
then the power law), ``anti`` draws the noise in antithetic pairs (``e`` and ``-e``), ``both``
does both. Everything else is ``benchmarks/flow_matching.py``'s (its options follow the mode):

    python benchmarks/flow_matching_variance.py strat --parts toys --split val --budget 12 \
        --lr 2e-2 --batch 1024 --times power --time-power 2 --activation silu \
        --space-features 32 --space-scale 4 --toys checkerboard rings --out /tmp/strat.json

Results: docs/flowmatching.md, "The RealNVP row's own time" (not adopted).
"""

import sys
from pathlib import Path

import torch

import flowforge.matching as M

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow_matching as bfm  # noqa: E402


def main(argv):
    mode, plain_times, plain_build = argv[0], M.sample_times, bfm.build_cnf
    if mode not in ("strat", "anti", "both"):
        raise SystemExit(f"expected a mode strat, anti or both, got {mode!r}")

    def times(n, times="uniform", loc=0.0, scale=1.0, power=1.0, dtype=None, device=None):
        if mode == "anti" or not n:
            return plain_times(n, times, loc, scale, power, dtype, device)
        order = torch.randperm(n, device=device).to(dtype)
        u = (order + torch.rand(n, dtype=dtype, device=device)) / n
        return u.pow(power) if times == "power" else u

    def build(*args, **kw):
        flow = plain_build(*args, **kw)
        if mode != "strat":
            draw = flow.base.sample

            def antithetic(n, context=None):
                e = draw((n + 1) // 2, context)
                return torch.cat([e, -e])[:n]

            flow.base.sample = antithetic
        return flow

    M.sample_times, bfm.build_cnf = times, build
    return bfm.main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
