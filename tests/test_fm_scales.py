"""A mixture of random-Fourier-feature scales in the flow-matching CNF's network
(``TimeEmbeddingNet(space_scale=[...])``, the CNF builder's ``space_scale``)."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge.models.flowmatching import TimeEmbeddingNet


def _net(scale, k=6):
    return TimeEmbeddingNet(2, (8,), frequencies=0, eps=0.0, space_features=k, space_scale=scale)


def test_one_scale_is_unchanged():
    g = torch.Generator().manual_seed(0)
    want = torch.randn(2, 6, generator=g) * 3.0
    assert torch.equal(_net(3.0).B, want)
    assert torch.equal(_net([3.0]).B, want)  # a list of one scale: the same matrix


def test_a_mixture_scales_equal_groups_of_columns():
    unit = _net(1.0).B
    mix = _net([0.5, 2.0, 8.0]).B  # 6 features: two per scale, in order
    want = unit * torch.tensor([0.5, 0.5, 2.0, 2.0, 8.0, 8.0])
    assert torch.allclose(mix, want)
    z = torch.randn(5, 2)
    assert _net((1, 4))(torch.tensor(0.5), z).shape == (5, 2)


def test_builder_takes_a_list_of_scales():
    torch.manual_seed(0)
    flow = ff.models.build("cnf", features=2, hidden=(8,), space_features=4, space_scale=[1, 4])
    (net,) = [m for m in flow.modules() if isinstance(m, TimeEmbeddingNet)]
    assert torch.allclose(net.B[:, 2:], 4 * _net(1.0, k=4).B[:, 2:])
    assert torch.isfinite(flow.log_prob(torch.randn(8, 2))).all()


@pytest.mark.parametrize(
    "scale, k, msg",
    [
        ([], 4, "at least one space_scale"),
        ([1.0, 0.0], 4, "finite space_scale > 0"),
        ([1.0, float("inf")], 4, "finite space_scale > 0"),
        ([1.0, True], 4, "finite space_scale > 0"),
        ([1.0, "2"], 4, "finite space_scale > 0"),
        ([1.0, 2.0, 3.0], 4, "multiple of the number of space scales"),
    ],
)
def test_bad_mixtures_are_refused(scale, k, msg):
    with pytest.raises(ValueError, match=msg):
        _net(scale, k)
    # the builder's own type check may answer first (a bool or a string in the list)
    with pytest.raises(
        ValueError, match=f"{msg}|space_scale=.* (has the wrong type|is not finite)"
    ):
        ff.models.build("cnf", features=2, hidden=(8,), space_features=k, space_scale=scale)
