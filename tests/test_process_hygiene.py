"""What the library leaves of the process it runs in: each submodule's train/eval mode, the
seed queued for GPUs not yet started, a class-level switch that a fit pinned on its layers, a
save check that an earlier save of the same structure skipped, the command run from Python
(an audit of process-global state)."""

from __future__ import annotations

import pytest
import torch

import flowforge as ff
from flowforge.workbench import Trainer, cli, load_dataset


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", n_train=128, n_val=64, n_test=64)


def _frozen(flow):
    """The flow in training mode with its last submodule frozen (eval), as a BatchNorm kept
    fixed while fine-tuning."""
    flow.train()
    sub = list(flow.transform.modules())[-1]
    sub.eval()
    return sub


def test_library_calls_give_back_every_submodules_mode():
    # (`flow.train(was)` unfroze a frozen BatchNorm: its statistics then moved)
    torch.manual_seed(0)
    flow = ff.models.RealNVP(features=2, layers=2, hidden=(8,))
    flow.eval()
    flow.log_prob(torch.randn(8, 2))  # (data-initialised layers: initialised)
    x = torch.randn(16, 2)
    for call in (lambda: ff.nll(flow, x), lambda: ff.objectives.log_likelihoods(flow, x)):
        sub = _frozen(flow)
        call()
        assert flow.training and not sub.training
    idf = ff.models.IDF(features=4, levels=5, layers=2, hidden=(8,))
    xi = torch.randint(0, 5, (20, 4))
    data = ff.codec.encode(idf.eval(), xi)
    for call in (lambda: ff.codec.encode(idf, xi), lambda: ff.codec.decode(idf, data)):
        sub = _frozen(idf)
        call()
        assert idf.training and not sub.training


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="CUDA has started: no seed is queued")
def test_a_seeded_fit_on_the_cpu_keeps_the_seed_queued_for_gpus(moons):
    # (a fit reseeded inside a fork: GPUs started later took its seed, not the caller's)
    tracker = torch.cuda._lazy_seed_tracker
    for seed in (123, 124):
        torch.manual_seed(seed)
        queued = tracker.manual_seed_all_cb
        flow = ff.models.RealNVP(features=2, layers=1, hidden=(8,))
        Trainer(flow, moons.train, moons.val, {"epochs": 1}, progress=False, echo=False).fit()
        assert tracker.manual_seed_all_cb is queued


def test_a_class_level_switch_still_reaches_a_trained_flow(moons, monkeypatch):
    from flowforge.transforms.splines import RationalQuadratic

    flow = ff.models.NSF(features=2, layers=1, hidden=(8,))
    Trainer(flow, moons.train, moons.val, {"epochs": 1}, progress=False, echo=False).fit()
    splines = [m for m in flow.modules() if isinstance(m, RationalQuadratic)]
    assert splines and not any("compiled" in vars(m) for m in splines)
    monkeypatch.setattr(RationalQuadratic, "compiled", True)
    assert all(m.compiled for m in splines)


class _Shift(ff.Transform):
    """``x + offset``, the offset a plain attribute (outside the state dict)."""

    def __init__(self, features):
        super().__init__((features,))
        self.offset = 0.0
        self.w = torch.nn.Parameter(torch.zeros(features))

    def _forward(self, x, context):
        return x + self.offset + self.w, x.new_zeros(x.shape[0])

    def _inverse(self, z, context):
        return z - self.offset - self.w, z.new_zeros(z.shape[0])


def test_a_save_compares_each_flow_not_only_the_first_of_a_structure(tmp_path, monkeypatch):
    # (after one save of a structure, another flow of it that reloads otherwise was accepted)
    from flowforge.models import registry

    def shifted_for_test(features: int = 2) -> ff.Flow:
        return ff.Flow([_Shift(features)], ff.distributions.StandardNormal((features,)))

    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # (the registry as it was)
    build = ff.models.register(shifted_for_test)
    ff.save(build(), tmp_path / "a.ff")
    other = build()
    other.transform[0].offset = 3.0
    with pytest.raises(ValueError, match="would rebuild another model"):
        ff.save(other, tmp_path / "b.ff")


def test_the_command_from_python_leaves_threads_and_random_numbers(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    rc = cli.main(["fit-target", "--target", "banana", "--steps", "5", "--threads", "1", "--out",
                   str(tmp_path / "vi"), "--quiet"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), expected)


def test_an_atomic_write_reads_the_umask_without_changing_it(tmp_path, monkeypatch):
    # (it set the umask to 0 for a moment: another thread's new files came out 0666)
    import os
    import stat

    from flowforge import io

    calls, real = [], os.umask
    umask = real(0o022)
    real(umask)
    monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real(m))
    io.atomic_write(tmp_path / "f", b"x")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~umask
    assert calls == [] or not os.path.exists("/proc/self/status")


def test_modes_are_given_back_through_train():
    # (a module that does work on a mode switch, a LoRA-style merge, stayed merged)
    class Merging(torch.nn.Module):
        merged = False

        def train(self, mode=True):
            self.merged = not mode
            return super().train(mode)

    from flowforge._util import restore_modes, training_modes

    outer = torch.nn.Sequential(torch.nn.Linear(2, 2), Merging())
    outer.train()
    was = training_modes(outer)
    outer.eval()
    assert outer[1].merged
    restore_modes(was)
    assert outer.training and outer[1].training and not outer[1].merged
