"""Flow matching from a fitted source (a lever for issue 15's 12-second clause): the CNF's base
N(0, I) replaced by a fixed mixture of ``K`` diagonal Gaussians fitted by EM (scikit-learn) to
the training points as the flow's data-dependent layers (DataStandardize, ActNorm) map them,
so that the paths start nearer the data. The fit's CPU time is taken from the budget. ``K = 0``
is the recipe itself. Everything else is ``benchmarks/flow_matching.py``'s (its options follow
``K``):

    python benchmarks/flow_matching_source.py 16 --parts toys --split val --budget 12 \
        --lr 2e-2 --batch 1024 --times power --time-power 2 --activation silu \
        --space-features 32 --space-scale 4 --toys checkerboard rings --out /tmp/k16.json

Results: docs/flowmatching.md, "The RealNVP row's own time" (not adopted).
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.mixture import GaussianMixture as EM

from flowforge.distributions import GaussianMixture
from flowforge.matching import FlowMatching

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flow_matching as bfm  # noqa: E402


def fitted_base(flow, x, k: int, seed: int) -> GaussianMixture:
    """The mixture of ``k`` diagonal Gaussians fitted to ``x`` mapped by the layers before the
    CNF (initialised from ``x`` here), as buffers: a fixed base, as flow matching requires."""
    with torch.no_grad():
        FlowMatching()(flow, x)  # the data-dependent initialisations, on the whole set
        z = x
        for layer in flow.transform.layers[:-1]:
            z = layer(z)[0]
    em = EM(k, covariance_type="diag", random_state=seed).fit(z.double().numpy())
    base = GaussianMixture(z.shape[1], components=k)
    for name, value in [
        ("logits", np.log(em.weights_)),
        ("loc", em.means_),
        ("log_scale", 0.5 * np.log(em.covariances_)),
    ]:
        delattr(base, name)
        base.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))
    return base


def main(argv):
    k, plain_train = int(argv[0]), bfm.train_fm

    def train(flow, x, budget, lr, batch, seed, *args, **kw):
        t0 = time.process_time()
        if k:
            flow.base = fitted_base(flow, x, k, seed)
        return plain_train(
            flow, x, budget - (time.process_time() - t0), lr, batch, seed, *args, **kw
        )

    bfm.train_fm = train
    return bfm.main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
