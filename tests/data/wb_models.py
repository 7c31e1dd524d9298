"""Test-only builders for the workbench tests (imported by them and by the DDP entry point)."""

import sys

import flowforge as ff
from flowforge import distributions as D
from flowforge.transforms import ActNorm, UniformDequantization


def _register():
    if "wbtest_actnorm" in ff.models.available():
        return

    @ff.models.register(inputs=("features", "shape"))
    def wbtest_actnorm(features=None, shape=None, levels=None, layers=2, hidden=(16,)):
        """ActNorm first, then (for vectors) a small RealNVP: exercises the data-dependent init
        and the vector/image layout choice."""
        if shape is not None:
            shape = tuple(shape)
            deq = None if levels is None else UniformDequantization(levels)
            return ff.Flow(ff.Compose(ActNorm(shape)), D.StandardNormal(shape), deq)
        inner = ff.models.RealNVP(
            features=features, layers=layers, hidden=hidden, levels=levels, standardize=False
        )
        pre = list(inner.transform.layers)
        k = 0 if levels is None else 1  # after the logit preprocessing, if any
        t = ff.Compose(*pre[:k], ActNorm(features), *pre[k:])
        return ff.Flow(t, inner.base, inner.dequantizer)


_register()

if __name__ == "__main__":  # torchrun entry point: python wb_models.py train ...
    from flowforge.workbench.cli import main

    sys.exit(main(sys.argv[1:]))
