"""The couplings of NICE, the vector RealNVP and the IDF take turns on the data's entries
whatever permutation comes between them (``alternate``,
:class:`flowforge.models.assembly.MaskTurns`): a "reverse" permutation undid the masks' turns
before 2026-12-07 (every coupling transformed the same half of an even number of features,
and some entries of an odd number with the "half" mask), and a random one could leave a
feature that no coupling transformed. Models saved before rebuild as they were."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge.transforms import Coupling, Permutation


def transformed(flow, size: int) -> set[int]:
    """The entries (along dimension 1, in the data's order after any squeeze) that some
    coupling of ``flow`` transforms."""
    where, done = torch.arange(size), set()
    for layer in flow.transform.modules():
        if isinstance(layer, Permutation):
            where = where[layer.perm]
        elif isinstance(layer, Coupling):
            moved = layer.idx_b if layer.indexed else (~layer.mask).nonzero()[:, 0].unique()
            done |= set(where[moved].tolist())
    return done


VECTORS = [
    ("nice", {}),
    ("realnvp", {"hidden": [8], "residual": False}),
    ("idf", {"levels": 17, "hidden": [8]}),
]


@pytest.mark.parametrize("name, kwargs", VECTORS)
@pytest.mark.parametrize("permutation", [None, "reverse", "random"])
@pytest.mark.parametrize("features", [4, 5, 8])
@pytest.mark.parametrize("mask", [None, "half"])
def test_every_feature_is_transformed_by_some_coupling(name, kwargs, permutation, features, mask):
    if mask and name == "idf":
        pytest.skip("the IDF's parts are contiguous: it has no mask argument")
    extra = {"mask": mask} if mask else {}
    for seed in range(5):
        torch.manual_seed(seed)
        flow = ff.models.build(name, features=features, permutation=permutation, layers=4,
                               **kwargs, **extra)  # fmt: skip
        assert transformed(flow, features) == set(range(features)), (seed, flow.config)


@pytest.mark.parametrize("name, kwargs", VECTORS)
def test_after_reverse_consecutive_couplings_transform_different_halves(name, kwargs):
    part = {"partitions": 2} if name == "idf" else {}
    flow = ff.models.build(name, features=8, permutation="reverse", layers=2, **kwargs, **part)
    assert transformed(flow, 8) == set(range(8))
    old = ff.models.build(name, features=8, permutation="reverse", layers=2, alternate=True,
                          **kwargs, **part)  # fmt: skip
    assert len(transformed(old, 8)) == 4  # (what flowforge built before: one half, twice)


def test_the_image_idf_shifts_every_channel_after_reverse():
    flow = ff.models.IDF(shape=(1, 4, 4), levels=17, layers=2, scales=1, permutation="reverse")
    assert transformed(flow, 4) == set(range(4))
    old = ff.models.IDF(shape=(1, 4, 4), levels=17, layers=2, scales=1, permutation="reverse",
                        alternate=True)  # fmt: skip
    assert transformed(old, 4) == {2, 3}


@pytest.mark.parametrize("name, kwargs", VECTORS)
def test_without_a_permutation_the_masks_are_those_of_before(name, kwargs):
    torch.manual_seed(0)
    now = ff.models.build(name, features=6, permutation=None, layers=5, **kwargs)
    torch.manual_seed(0)
    then = ff.models.build(name, features=6, permutation=None, layers=5, alternate=True, **kwargs)
    x = torch.randint(0, 17, (7, 6)).float()
    with torch.no_grad():
        for p in now.parameters():
            p.add_(0.1 * torch.randn_like(p))
        then.load_state_dict(now.state_dict())
        assert torch.equal(now.log_prob(x), then.log_prob(x))


@pytest.mark.parametrize("name, kwargs", VECTORS)
@pytest.mark.parametrize("permutation", ["reverse", "random"])
def test_a_model_saved_before_rebuilds_as_it_was(name, kwargs, permutation, tmp_path):
    torch.manual_seed(0)
    old = ff.models.build(name, features=8, permutation=permutation, layers=3, alternate=True,
                          **kwargs)  # fmt: skip
    x = torch.randint(0, 17, (5, 8)).float()
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.1 * torch.randn_like(p))
        old.log_prob(x)  # (a first batch in training mode: any standardisation is set)
    del old.config["kwargs"]["alternate"]  # as such a model was saved
    ff.save(old, tmp_path / "old.ff")
    torch.manual_seed(1)  # (another draw: a random permutation comes from the file)
    again = ff.load(tmp_path / "old.ff").eval()
    assert again.config["kwargs"]["alternate"] is True
    with torch.no_grad():
        assert torch.equal(again.log_prob(x), old.eval().log_prob(x))
    assert transformed(again, 8) == transformed(old, 8)


def test_the_image_realnvp_refuses_alternate_false():
    with pytest.raises(ValueError, match="alternate"):
        ff.models.RealNVP(shape=(1, 4, 4), alternate=False)
    ff.models.RealNVP(shape=(1, 4, 4), alternate=True)  # (as models saved before rebuild)


@pytest.mark.parametrize(
    "name, kwargs, same_as_before",
    [
        ("idf", {"shape": (1, 4, 4), "levels": 17, "scales": 1, "permutation": "reverse"}, False),
        ("idf", {"features": 8, "levels": 17, "alternate": False}, False),
        ("nice", {"features": 4, "permutation": None, "alternate": False}, False),
        ("realnvp", {"features": 4, "permutation": "reverse"}, False),
        ("realnvp", {"features": 4, "permutation": "random"}, True),
        ("realnvp", {"shape": (1, 4, 4)}, True),
        ("idf", {"features": 8, "levels": 17}, True),
    ],
)
def test_an_old_files_model_is_matched_only_where_the_masks_are_the_same(
    name, kwargs, same_as_before
):
    # (the codec takes a file's model as the same when an earlier configuration of it matches)
    from flowforge.models.registry import earlier_configs

    image_realnvp = name == "realnvp" and "shape" in kwargs
    flow = ff.models.build(name, **({} if image_realnvp else {"layers": 2}), **kwargs)
    before = [c for c in earlier_configs(flow.config) if "alternate" not in c["kwargs"]]
    assert bool(before) == same_as_before
