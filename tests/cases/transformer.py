"""Generic-test cases for the causal-transformer conditioner, the logistic-mixture transformer,
the parallel (Jacobi) inverse and the TarFlow builder, in the vector and image layouts."""

from __future__ import annotations

import flowforge as ff
from flowforge import transforms as T
from flowforge.attention import CausalTransformer

from .base import Case, in_levels, mlp


def tar(shape, transformer, context=0, patch=1, order="natural", **kw):
    def build():
        t = transformer()
        net = CausalTransformer(
            shape, t.params_per_dim, 8, 2, 2, patch, context, order=order, mlp_ratio=2
        )
        return T.Autoregressive(shape, t, context_features=context, net=net, **kw)

    return build


def made(d, transformer, context=0, **kw):
    return lambda: T.Autoregressive(d, transformer(), (12, 12), context, **kw)


def mixture():
    return T.LogisticMixture(3)


def spline():
    return T.RationalQuadratic(4, 2.0)


CASES: list[Case] = [
    # the transformer conditioner, vectors (one feature or two per token) and images
    Case("tar-affine-5", tar((5,), T.Affine)),
    Case("tar-affine-6-patch2-reversed", tar((6,), T.Affine, patch=2, order="reversed")),
    Case("tar-spline-4-context", tar((4,), spline, context=3)),
    Case("tar-affine-1", tar((1,), T.Affine)),
    Case("tar-image-affine", tar((2, 2, 4), T.Affine, patch=2)),
    Case("tar-image-pixels-context", tar((1, 3, 3), T.Affine, context=2, order="reversed")),
    # the parallel (Jacobi) inverse, declared at its tolerance
    Case(
        "tar-image-parallel",
        tar((1, 2, 4), T.Affine, 2, inverse_mode="parallel", tol=1e-10),
    ),
    Case("maf-layer-4-parallel", made(4, T.Affine, inverse_mode="parallel", tol=1e-10)),
    Case(
        "ar-spline-3-context-parallel",
        made(3, spline, 2, inverse_mode="parallel", tol=1e-10),
    ),
    # the logistic mixture in a coupling (the deep TarFlow case has it in autoregressive layers)
    Case("mixture-coupling-4", lambda: T.Coupling(T.half_mask(4), mlp(), mixture())),
    # the builder, in both layouts
    Case("TarFlow", lambda: ff.models.TarFlow(features=4, blocks=2, width=8, heads=2)),
    Case(
        "TarFlow-deep-mixture-context",
        lambda: ff.models.TarFlow(
            features=4,
            blocks=2,
            deep=2,
            depth=1,
            width=8,
            heads=2,
            patch=2,
            transformer="mixture",
            mixtures=2,
            context_features=2,
        ),
    ),
    Case(
        "TarFlow-image-levels",
        lambda: ff.models.TarFlow(shape=(1, 4, 4), blocks=2, width=8, heads=2, patch=2, levels=5),
        sample=in_levels(5),
    ),
]
