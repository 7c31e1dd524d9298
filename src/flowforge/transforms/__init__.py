"""Invertible layers. Every class here follows :class:`flowforge.Transform`'s contract."""

from .autoregressive import Autoregressive
from .coupling import Coupling, alternating_mask, channel_mask, checkerboard_mask, half_mask
from .elementwise import Additive, Affine
from .image import FactorOut, Squeeze
from .linear import LULinear, Permutation, PlainLinear, QRLinear, Reverse, Scaling
from .normalization import ActNorm, BatchNorm
from .preprocessing import Logit, Standardize, UniformDequantization
from .splines import RationalQuadratic, rational_quadratic

__all__ = [
    "ActNorm",
    "Additive",
    "Affine",
    "Autoregressive",
    "BatchNorm",
    "Coupling",
    "FactorOut",
    "LULinear",
    "Logit",
    "Permutation",
    "PlainLinear",
    "QRLinear",
    "RationalQuadratic",
    "Reverse",
    "Scaling",
    "Squeeze",
    "Standardize",
    "UniformDequantization",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "half_mask",
    "rational_quadratic",
]

# continuous flows (torchdiffeq is imported only when a CNF is built)
from .continuous import CNF, ODENet, ODEStepBudgetError, ode_methods  # noqa: E402

__all__ += ["CNF", "ODENet", "ODEStepBudgetError", "ode_methods"]

# residual flows: planar, radial, Sylvester, invertible residual blocks
from .residual import Planar, Radial, ResidualBlock, Sylvester  # noqa: E402

__all__ += ["Planar", "Radial", "ResidualBlock", "Sylvester"]

# learned dequantization noise (Flow++)
from .dequantization import VariationalDequantization  # noqa: E402

__all__ += ["VariationalDequantization"]
