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


def _fault_on_one_rank(rank: str, fault: str, step: int = 2):
    """At its training step ``step``, process ``rank``'s loss becomes NaN (``fault="nan"``: a
    bad batch on one process only) or the process is killed (``"kill"``: SIGKILL, as the
    out-of-memory killer does); every other process goes on as usual."""
    import os
    import signal

    import flowforge.workbench.trainer as T

    loss = T.NLL.loss

    def bad(self, trainer, model, x, context):
        out = loss(self, trainer, model, x, context)
        if model.training and os.environ.get("RANK") == rank and trainer.global_step == step:
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "stop":  # (Trainer.stop() on this process alone)
                trainer.stop()
                return out
            return out * float("nan")
        return out

    T.NLL.loss = bad


if __name__ == "__main__":  # torchrun entry point: python wb_models.py train ...
    import os

    from flowforge.workbench.cli import main

    if os.environ.get("WBTEST_FAULT"):  # e.g. "1:nan", "1:kill"
        _fault_on_one_rank(*os.environ["WBTEST_FAULT"].split(":"))
    sys.exit(main(sys.argv[1:]))
