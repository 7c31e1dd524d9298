r"""Named flows. Each builder only assembles layers and a base into a :class:`~flowforge.Flow`.

Every builder takes ``features=`` (vectors) or ``shape=`` (images), works with nothing else
given, takes the shared data options (:class:`~flowforge.models.assembly.DataOptions`:
``context_features``, ``levels``, ``preprocess``, ``alpha``, ``base``, ``components``,
``dequantization``, ``standardize``), and records its whole configuration in ``flow.config`` so that
:func:`flowforge.save` can rebuild it from JSON. ``build(name, **kwargs)`` looks a builder up
by name (case-insensitive); ``spec(name)`` says what it takes.

Layout, bottom to top (each file imports only the ones above it in this list):
``assembly`` (data options, bases, dequantizers, shared parsers), ``registry``, then one file
per family: ``image`` (Glow, the multi-scale RealNVP), ``coupling`` (NICE, RealNVP),
``autoregressive`` (MAF, IAF, NSF), ``monotone`` (NAF, UNAF, SOSPF, BPF), ``bnaf`` (BNAF),
``residual`` (Planar, Radial, Sylvester, ResidualFlow), ``continuous`` (FFJORD),
``flowmatching`` (CNF, for flow matching), ``transformer`` (TarFlow), ``integer`` (IDF),
``manifolds`` (TorusFlow, SphereFlow), ``mflow`` (M-flows: ``MFlow``, ``mflow``; registered,
though an M-flow is not a ``Flow`` on ``R^D``: the workbench trains it with its own
objectives), ``augmented`` (augmented flows: ``AugmentedFlow``,
``augmented``; registered, not a ``Flow``: its ``log_prob`` is a bound, Python API only).
"""

from .assembly import (
    DataOptions,
    bounded,
    context_standardized,
    integer_columns,
    standardized,
    whitened,
)
from .augmented import AugmentedFlow, augmented
from .autoregressive import IAF, MAF, NSF
from .bnaf import BNAF
from .continuous import FFJORD
from .coupling import NICE, RealNVP
from .flowmatching import CNF
from .image import Glow, default_scales
from .integer import IDF, IntegerFlow
from .manifolds import SphereFlow, TorusFlow
from .mflow import MFlow, mflow
from .monotone import BPF, NAF, SOSPF, UNAF
from .registry import BuilderSpec, available, build, builder, register, spec
from .residual import Planar, Radial, ResidualFlow, Sylvester
from .transformer import TarFlow

__all__ = [
    "NICE",
    "RealNVP",
    "Glow",
    "MAF",
    "IAF",
    "NSF",
    "BNAF",
    "NAF",
    "UNAF",
    "SOSPF",
    "BPF",
    "FFJORD",
    "CNF",
    "Planar",
    "Radial",
    "Sylvester",
    "ResidualFlow",
    "IDF",
    "IntegerFlow",
    "TorusFlow",
    "SphereFlow",
    "MFlow",
    "mflow",
    "AugmentedFlow",
    "augmented",
    "TarFlow",
    "BuilderSpec",
    "DataOptions",
    "available",
    "build",
    "builder",
    "default_scales",
    "register",
    "spec",
    "standardized",
    "context_standardized",
    "bounded",
    "integer_columns",
    "whitened",
]
