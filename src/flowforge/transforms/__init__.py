"""Invertible layers. Every class here follows :class:`flowforge.Transform`'s contract;
the elementwise transformers follow :class:`flowforge.core.Transformer`'s and the dequantizers
:class:`flowforge.core.Dequantizer`'s.

One file per family: coupling, elementwise transformers, autoregressive, bnaf (block neural
autoregressive flows), splines, linear, emerging (emerging k x k convolutions), normalization,
image (squeeze, multi-scale factor-out), integer (integer discrete flows), mixture (Flow++'s
logistic mixture), monotone (UMNN, sum-of-squares and Bernstein transformers), residual
(planar, radial, Sylvester), iresnet (invertible residual blocks), continuous (CNF;
torchdiffeq is imported only when one is built), preprocessing, dequantization and manifolds
(circles, tori, the sphere).
"""

from ..core import Identity
from .autoregressive import Autoregressive, ParallelInverseWarning, set_inverse
from .bnaf import BlockNeuralAutoregressive
from .continuous import CNF, ODENet, ODEStepBudgetError, exact_scoring, ode_methods
from .coupling import Coupling, alternating_mask, channel_mask, checkerboard_mask, half_mask
from .dequantization import (
    ColumnDequantization,
    UniformDequantization,
    VariationalDequantization,
)
from .elementwise import Additive, Affine
from .emerging import EmergingConv2d, set_emerging_solver
from .image import FactorOut, Squeeze
from .integer import DiscretizedLogisticMixture, IntegerAdditive, IntegerCoupling, round_ste
from .iresnet import ResidualBlock
from .linear import LULinear, Permutation, PlainLinear, QRLinear, Reverse, Scaling
from .manifolds import (
    CircularCoupling,
    CircularElementwise,
    SphereToCylinder,
    UniformCylinder,
    UniformTorus,
)
from .mixture import LogisticMixture
from .monotone import Bernstein, SumOfSquares, UnconstrainedMonotonic
from .normalization import ActNorm, BatchNorm
from .preprocessing import (
    Bounded,
    ContextStandardize,
    DataStandardize,
    Logit,
    Standardize,
    Whiten,
)
from .residual import Planar, Radial, Sylvester
from .splines import RationalQuadratic, rational_quadratic

__all__ = [
    "ActNorm",
    "Additive",
    "Affine",
    "Autoregressive",
    "BatchNorm",
    "BlockNeuralAutoregressive",
    "Bernstein",
    "CNF",
    "CircularCoupling",
    "CircularElementwise",
    "ContextStandardize",
    "Coupling",
    "DataStandardize",
    "Bounded",
    "Whiten",
    "EmergingConv2d",
    "FactorOut",
    "Identity",
    "DiscretizedLogisticMixture",
    "IntegerAdditive",
    "IntegerCoupling",
    "ParallelInverseWarning",
    "LULinear",
    "LogisticMixture",
    "Logit",
    "ODENet",
    "ODEStepBudgetError",
    "Permutation",
    "PlainLinear",
    "Planar",
    "QRLinear",
    "Radial",
    "RationalQuadratic",
    "ResidualBlock",
    "Reverse",
    "Scaling",
    "SphereToCylinder",
    "Squeeze",
    "Standardize",
    "SumOfSquares",
    "Sylvester",
    "UnconstrainedMonotonic",
    "UniformCylinder",
    "UniformTorus",
    "UniformDequantization",
    "ColumnDequantization",
    "VariationalDequantization",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "exact_scoring",
    "half_mask",
    "ode_methods",
    "rational_quadratic",
    "round_ste",
    "set_emerging_solver",
    "set_inverse",
]
