"""Invertible layers. Every class here follows :class:`flowforge.Transform`'s contract."""

from .coupling import Coupling, alternating_mask, channel_mask, checkerboard_mask, half_mask
from .elementwise import Additive, Affine
from .linear import LULinear, Permutation, PlainLinear, QRLinear, Reverse, Scaling
from .normalization import ActNorm, BatchNorm
from .preprocessing import Logit, Standardize, UniformDequantization

__all__ = [
    "ActNorm",
    "Additive",
    "Affine",
    "BatchNorm",
    "Coupling",
    "LULinear",
    "Logit",
    "Permutation",
    "PlainLinear",
    "QRLinear",
    "Reverse",
    "Scaling",
    "Standardize",
    "UniformDequantization",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "half_mask",
]
