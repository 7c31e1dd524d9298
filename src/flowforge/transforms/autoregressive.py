r"""Masked autoregressive layers: MAF, IAF and autoregressive neural spline flows.

:class:`Autoregressive` transforms every dimension elementwise with parameters that a
:class:`~flowforge.nets.MADE` computes from the dimensions before it in an order:

    ``z_i = transformer(x_i; MADE(x_{<i}, context)_i)``

Directions and costs (``forward`` is data to noise):

- ``forward`` (density, ``log_prob``): **fast**, one MADE pass for all dimensions at once;
- ``inverse`` (sampling): **sequential**, ``D`` steps, because ``x_i`` is needed before the
  parameters of ``x_{i+1}`` exist. :meth:`MADE.solve` computes each hidden unit exactly once
  as its inputs become known, so the whole inverse costs about one MADE pass of arithmetic,
  though in ``D`` small steps.

A MAF is a stack of ``Autoregressive`` layers (fast density, slow sampling). An IAF is
``Inverse(Autoregressive(...))``: sampling and ``rsample_and_log_prob`` run in one pass and
density evaluation of arbitrary data is sequential.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..core import Transform, Transformer
from ..nets import MADE

__all__ = ["Autoregressive"]


class Autoregressive(Transform):
    r"""An autoregressive layer: any elementwise transformer conditioned by a MADE.

    Forward (data to noise) takes one MADE pass; inverse takes ``D`` sequential steps (see the
    module docstring). Wrap it in :class:`~flowforge.Inverse` for an IAF (fast sampling).

    Args:
        features: dimension ``D`` of the input vectors.
        transformer: an elementwise transformer: ``Affine()``, ``Additive()``,
            ``RationalQuadratic(bins=8)``...
        hidden: hidden widths of the MADE.
        context_features: size of a context vector (fed to every hidden unit).
        order: ``"natural"``, ``"reversed"``, ``"random"`` or an explicit permutation (first
            dimension first).
        residual: residual MADE (each hidden layer after the first is a residual block).
        activation: the MADE's activation.

    Example:
        >>> from flowforge.transforms import Autoregressive, Affine
        >>> maf_layer = Autoregressive(4, Affine(), hidden=(32, 32))
        >>> z, ladj = maf_layer(torch.randn(10, 4))    # one pass
        >>> x, _ = maf_layer.inverse(z)                # four sequential steps
    """

    def __init__(
        self,
        features: int,
        transformer: Transformer,
        hidden: Sequence[int] | int = (128, 128),
        context_features: int = 0,
        order="natural",
        residual: bool = False,
        activation: str = "relu",
    ):
        features = int(features)
        if features < 1:
            raise ValueError(f"expected features >= 1, got {features}")
        super().__init__((features,), context_features)
        if not isinstance(transformer, Transformer):
            raise TypeError(
                f"expected an elementwise transformer (a flowforge.core.Transformer such as "
                f"Affine()), got {type(transformer).__name__}"
            )
        self.transformer = transformer
        self.net = MADE(
            features,
            transformer.params_per_dim,
            hidden,
            context_features,
            order=order,
            residual=residual,
            activation=activation,
        )

    def _forward(self, x, context):
        y, ladj = self.transformer.forward(x, self.net(x, context))
        return y, ladj.sum(1)

    def _inverse(self, z, context):
        cols: list[Tensor | None] = [None] * self.event_shape[0]
        ladj = z.new_zeros(z.shape[0])

        def step(i: int, params: Tensor) -> Tensor:
            nonlocal ladj
            x_i, l_i = self.transformer.inverse(z[:, i], params)
            cols[i] = x_i
            ladj = ladj + l_i
            return x_i

        self.net.solve(step, z.shape[0], context, like=z)
        return torch.stack(cols, 1), ladj
