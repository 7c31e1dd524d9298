"""M-flows: the exact log det(J^T J) against autograd and the stochastic estimate against the
exact value, projection, a manifold density that integrates to 1 over the learned surface
(areas from finite differences), the M_e-flow's encoder, the registered builder through
save/load, and training through the one Trainer (``flowforge train``: the sequential and the
alternating schedules, phases, resume, ``flowforge eval``), bad input."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge.models.mflow import MFlow, mflow
from flowforge.workbench import trainer as trainer_module
from flowforge.workbench.checkpoint import read_checkpoint
from flowforge.workbench.mflow import MFlowObjective
from flowforge.workbench.runner import train


def small(features=3, d=2, seed=0, variant="m"):
    torch.manual_seed(seed)
    m = mflow(features, d, outer_layers=2, inner_layers=2, hidden=(8,), activation="tanh",
              variant=variant)  # fmt: skip
    m = m.double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


def test_log_det_gram_matches_autograd():
    m = small(5, 2)
    u = torch.randn(4, 2, dtype=torch.float64)
    got = m.log_det_gram(u)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: m.decode(v[None])[0], u[i])
        want = torch.linalg.slogdet(jac.T @ jac)[1]
        assert torch.allclose(got[i], want, atol=1e-10)


def test_the_log_density_has_its_whole_gradient():
    # (the volume term's Jacobian came detached unless create_graph=True: a score and the
    # parameters' gradients were wrong without a word; torch.func could not transform it)
    torch.manual_seed(0)
    m = mflow(features=4, manifold_dim=2, outer_layers=2, inner_layers=2, hidden=(16,)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    m.eval()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    (score,) = torch.autograd.grad(m.log_prob(x).sum(), x)
    fd, h = torch.zeros_like(x), 1e-6
    with torch.no_grad():
        for i in range(x.numel()):
            e = torch.zeros_like(x).view(-1)
            e[i] = h
            e = e.view_as(x)
            fd.view(-1)[i] = (m.log_prob(x + e).sum() - m.log_prob(x - e).sum()) / (2 * h)
    torch.testing.assert_close(score, fd, rtol=1e-6, atol=1e-6)
    per_example = torch.func.vmap(torch.func.grad(lambda v: m.log_prob(v[None]).sum()))(x.detach())
    torch.testing.assert_close(per_example, score)


def test_a_decoder_torch_func_cannot_transform_still_scores():
    # (the volume term's forward mode failed in torch's words for a residual block, which
    # uses autograd inside; autograd's own Jacobian-vector products take it)
    from flowforge.core import Compose
    from flowforge.transforms import LULinear, ResidualBlock

    torch.manual_seed(0)
    outer = Compose([LULinear(3), ResidualBlock(3, hidden=(8,))])
    m = MFlow(outer, ff.models.RealNVP(features=2, layers=1, hidden=(8,))).eval()
    x = torch.randn(4, 3)
    with torch.no_grad():
        quiet = m.log_prob(x)
    assert torch.isfinite(quiet).all()
    torch.testing.assert_close(m.log_prob(x).detach(), quiet)


def test_stochastic_log_det_estimate_against_the_exact_value():
    """Lanczos quadrature with steps >= d is exact per probe: what is left is the probes'
    noise, which the standard error describes (z-scores of 16 examples, and the error shrinks
    as 1/sqrt(probes)); fewer steps on a well-conditioned G stay close."""
    m = small(10, 4)
    torch.manual_seed(1)
    u = torch.randn(16, 4, dtype=torch.float64)
    exact = m.log_det_gram(u)
    est, se = m.log_det_gram_estimate(u, probes=8, steps=4)
    z = (est - exact) / se
    assert z.abs().max() < 4.5 and z.mean().abs() < 4 / 16**0.5, z
    est4, se4 = m.log_det_gram_estimate(u, probes=32, steps=4)
    assert se4.mean() < 0.7 * se.mean()
    assert ((est4 - exact).abs() < 4.5 * se4).all()
    # a G near a multiple of the identity: one step is nearly exact, and so is every probe
    iso = small(10, 4, seed=3)
    with torch.no_grad():
        for p in iso.parameters():
            p.mul_(0.01)
    e1, s1 = iso.log_det_gram_estimate(u[:5], probes=4, steps=1)
    assert torch.allclose(e1, iso.log_det_gram(u[:5]), atol=0.05) and (s1 < 0.05).all()


def test_projection_is_idempotent_and_decoding_is_invertible():
    m = small(5, 2)
    x = torch.randn(6, 5, dtype=torch.float64)
    p = m.project(x)
    assert torch.allclose(m.project(p), p, atol=1e-10)
    assert torch.allclose(m.reconstruction_error(p), torch.zeros(6, dtype=p.dtype), atol=1e-18)
    u = torch.randn(6, 2, dtype=torch.float64)
    assert torch.allclose(m.encode(m.decode(u)), u, atol=1e-10)
    s = m.sample(7)
    assert s.shape == (7, 5) and torch.allclose(m.project(s), s, atol=1e-10)


def test_me_flow_encodes_with_its_own_network():
    m = small(5, 2, variant="me")
    assert m.variant == "me" and small(5, 2).variant == "m"
    x = torch.randn(6, 5, dtype=torch.float64)
    assert torch.allclose(m.encode(x), m.encoder(x))
    assert not torch.allclose(m.encode(x), m.outer(x)[0][:, :2])
    # the projection is a point of the manifold (the decoder's image), the density is finite
    assert torch.allclose(m.project(x), m.decode(m.encoder(x)))
    assert torch.isfinite(m.log_prob(x)).all()
    # the manifold phase trains the encoder and the outer flow, not the inner flow
    m.train()
    m.manifold_loss(x).backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
    assert all(p.grad is not None for p in m.outer.parameters())
    assert all(p.grad is None for p in m.inner.parameters())


def test_manifold_density_integrates_to_one_over_the_learned_surface():
    """Sum of p(g(u)) times the area of the grid cell's image, the area measured from finite
    differences of g (not from the log-det under test)."""
    m = small(3, 2)
    n, lo, hi = 120, -6.0, 6.0
    h = (hi - lo) / n
    g = lo + h * torch.arange(n + 1, dtype=torch.float64)
    with torch.no_grad():
        pts = m.decode(torch.cartesian_prod(g, g)).reshape(n + 1, n + 1, 3)
        centres = m.decode(torch.cartesian_prod(g[:-1] + h / 2, g[:-1] + h / 2))
    # each cell's image as two triangles
    a, b, c, d = pts[:-1, :-1], pts[1:, :-1], pts[1:, 1:], pts[:-1, 1:]
    area = (
        torch.linalg.cross(b - a, c - a).norm(dim=-1)
        + torch.linalg.cross(c - a, d - a).norm(dim=-1)
    ) / 2
    dens = m.log_prob(centres).detach().exp().reshape(n, n)
    mass = (dens * area).sum().item()
    assert abs(mass - 1) < 0.01, mass


@pytest.mark.parametrize("variant", ["m", "me"])
def test_registered_builder_saves_and_loads(tmp_path, variant):
    m = ff.models.build("mflow", features=5, manifold_dim=2, outer_layers=2, inner_layers=2,
                        hidden=[8], variant=variant)  # fmt: skip
    assert isinstance(m, MFlow) and m.config["model"] == "mflow"
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ff.save(m, tmp_path / "m.ff")
    back = ff.load(tmp_path / "m.ff")
    assert isinstance(back, MFlow) and back.variant == variant
    m.eval()  # as ff.load returns it: the data-initialised layers keep their saved state
    x = torch.randn(4, 5)
    assert torch.equal(back.project(x), m.project(x))
    assert torch.allclose(back.log_prob(x), m.log_prob(x))


# -- training through the workbench --------------------------------------------------------------


def tiny_cfg(objective="mflow", epochs=4, manifold_epochs=2, **model):
    return {
        "seed": 0,
        "model": {"name": "mflow", "manifold_dim": 2, "outer_layers": 2, "inner_layers": 2,
                  "hidden": [16], **model},  # fmt: skip
        "data": {"name": "surface-64", "n_train": 192, "n_val": 64, "n_test": 64},
        "train": {"objective": objective, "epochs": epochs, "manifold_epochs": manifold_epochs,
                  "batch_size": 64, "warmup_steps": 2, "log_every": 1, "tensorboard": False},
    }  # fmt: skip


def epochs_of(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


def steps_of(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "step"]


def test_sequential_schedule_trains_both_phases(tmp_path, capsys):
    run = tmp_path / "seq"
    res = train(tiny_cfg(), run, progress=False, echo=False)
    assert res["status"] == "finished" and res["objective"] == "mflow"
    ep = epochs_of(run)
    # phase 1 validates the reconstruction error and improves it; phase 2 the inner NLL
    assert ep[1]["val"] < ep[0]["val"] < 20
    assert ep[2]["best"]  # a fresh comparison in the new phase
    assert [(e["phase"], e["loss_kind"]) for e in ep] == [(1, "manifold")] * 2 + [
        (2, "density")
    ] * 2
    # the learning-rate schedule restarts: warm-up at the first step of each phase
    lr = {r["step"]: r["lr"] for r in steps_of(run)}
    # (3 steps an epoch; a record's lr is the rate its step took: step 7 opens phase 2)
    assert lr[6] < lr[7] == pytest.approx(0.5e-3) and lr[8] == pytest.approx(1e-3)
    # the density phase starts from the best manifold-phase weights and leaves them alone
    best = ff.load(run)
    rc, out, _ = cli(capsys, "eval", run, "--split", "val", "--json")
    figs = json.loads(out)
    assert rc == 0 and figs["reconstruction"] == pytest.approx(min(e["val"] for e in ep[:2]))
    ds_val = ff.workbench.load_dataset("surface-64", n_train=192, n_val=64, n_test=64).val
    assert figs["reconstruction"] == pytest.approx(best.manifold_loss(ds_val).item(), rel=1e-5)
    assert {"nll", "true_nll", "gap", "gap_se", "noise_level"} <= set(figs)
    assert figs["noise_level"] == pytest.approx(64 * 0.01**2)
    rc, out, _ = cli(capsys, "eval", run)
    assert rc == 0 and "reconstruction error" in out and "gap" in out
    # a short run: the surface is far from the data's, and the gap is said to mean little
    test = json.loads(cli(capsys, "eval", run, "--json")[1])
    far = test["reconstruction"] > 10 * test["noise_level"]
    assert far == ("compares densities on different surfaces" in out)
    rc, _, err = cli(capsys, "eval", run, "--samples", 2)  # it was taken, and did nothing
    one_line_error(rc, err, "an M-flow scores its data exactly", "use --samples 1")
    rc, out, _ = cli(capsys, "sample", run, "-n", 5, "--out", tmp_path / "s.npy")
    s = torch.from_numpy(np.load(tmp_path / "s.npy"))
    assert rc == 0 and s.shape == (5, 64)
    assert torch.allclose(best.project(s), s, atol=1e-4)  # on the learned manifold


def test_alternating_schedule_alternates_manifold_and_density_epochs(tmp_path):
    obj = MFlowObjective("alternating")

    class T:
        phase_starts = [0, 5]

    t = T()
    phases = [obj.phase(t, e) for e in range(7)]
    assert phases == ["manifold", "density"] * 2 + ["manifold", "density", "density"]
    run = tmp_path / "alt"
    res = train(tiny_cfg("mflow-alternating", epochs=5, manifold_epochs=4), run,
                progress=False, echo=False)  # fmt: skip
    assert res["status"] == "finished" and not res["warnings"]
    ep = epochs_of(run)
    # a density epoch leaves the validated reconstruction error as it was, a manifold epoch
    # lowers it; the losses alternate between the reconstruction error and the inner NLL
    assert ep[1]["val"] == ep[0]["val"] > ep[2]["val"] == ep[3]["val"]
    assert ep[0]["train_loss"] > 1 > abs(ep[1]["train_loss"])
    assert [e["loss_kind"] for e in ep] == ["manifold", "density"] * 2 + ["density"]


def test_interrupted_mflow_run_resumes_bit_identically(tmp_path, capsys):
    cfg = tiny_cfg(epochs=4, manifold_epochs=2)
    a, b = tmp_path / "a", tmp_path / "b"
    train(cfg, a, progress=False, echo=False)

    def interrupt(trainer):  # after the manifold phase's last step (before its validation),
        if trainer.global_step in (6, 8):  # then inside the density phase
            os.kill(os.getpid(), signal.SIGINT)

    assert train(cfg, b, progress=False, echo=False, callback=interrupt)["status"] == "interrupted"
    res = train({}, b, resume=True, progress=False, echo=False, callback=interrupt)
    assert res["status"] == "interrupted" and res["steps"] == 8
    rc, _, _ = cli(capsys, "train", "--out", b, "--resume", "--no-progress", "--quiet")
    assert rc == 0
    _, ta = read_checkpoint(a / "checkpoint.safetensors")
    _, tb = read_checkpoint(b / "checkpoint.safetensors")
    keys = [k for k in ta if k.startswith(("model/", "optim/"))]
    assert keys and all(torch.equal(ta[k], tb[k]) for k in keys)
    assert (a / "model.ff").read_bytes() == (b / "model.ff").read_bytes()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="manifold dimension must be below the data dimension"):
        mflow(4, 4)
    with pytest.raises(ValueError, match="manifold_dim to be an integer >= 1"):
        mflow(4, 0)
    with pytest.raises(ValueError, match="variant to be one of m, me"):
        mflow(4, 2, variant="pie")
    m = small(5, 2)
    with pytest.raises(ValueError, match=r"expected data to project of shape \(batch, 5\)"):
        m.project(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"manifold coordinates of shape \(batch, 2\)"):
        m.decode(torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"manifold coordinates of shape \(batch, 2\)"):
        m.log_det_gram_estimate(torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="probes >= 2"):
        m.log_det_gram_estimate(torch.randn(3, 2, dtype=torch.float64), probes=1)
    with pytest.raises(ValueError, match="manifold_dim=3 and features=3"):
        MFlow(small(3, 2).outer, small(6, 3).inner)
    with pytest.raises(ValueError, match="takes no context"):
        m.sample(2, context=torch.zeros(2, 1))


def test_workbench_refuses_mismatched_objectives_and_phases(tmp_path, capsys):
    cases = [
        ({"train": {"objective": "nll"}}, ["trains with train.objective mflow", "'nll'"]),
        ({"train": {"manifold_epochs": 4}}, ["manifold_epochs (4) below train.epochs (4)"]),
        ({"model": "realnvp"}, ["train.objective 'mflow' trains M-flows"]),
    ]
    for i, (change, needles) in enumerate(cases):
        cfg = tiny_cfg()
        for k, v in change.items():
            cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
        if change.get("model") == "realnvp":
            cfg["model"] = {"name": "realnvp", "layers": 2, "hidden": [8]}
        path = tmp_path / f"c{i}.json"
        path.write_text(json.dumps(cfg))
        rc, _, err = cli(capsys, "train", "--config", path, "--out", tmp_path / f"r{i}")
        one_line_error(rc, err, *needles)
        assert not (tmp_path / f"r{i}" / "checkpoint.safetensors").exists()
    # a table the workbench would standardise
    np.save(tmp_path / "t.npy", np.random.default_rng(0).standard_normal((64, 4)).astype("f4"))
    cfg = {**tiny_cfg(), "data": {"name": str(tmp_path / "t.npy")}}
    (tmp_path / "t.json").write_text(json.dumps(cfg))
    rc, _, err = cli(capsys, "train", "--config", tmp_path / "t.json", "--out", tmp_path / "rt")
    one_line_error(rc, err, "standardize: false")
    # commands that have nothing for an M-flow say so
    run = tmp_path / "ok"
    train(tiny_cfg(epochs=2, manifold_epochs=1), run, progress=False, echo=False)
    rc, _, err = cli(capsys, "report", run)
    one_line_error(rc, err, "no report for a mflow model")
    rc, _, err = cli(capsys, "eval", run, "--data", tmp_path / "t.npy")
    one_line_error(rc, err, "has shape (64, 4); this run's model expects 64 columns")
    # one example: the figures without standard errors (was an internal error)
    np.save(tmp_path / "one.npy", np.random.default_rng(0).standard_normal((1, 64)).astype("f4"))
    rc, out, err = cli(capsys, "eval", run, "--data", tmp_path / "one.npy")
    assert rc == 0 and "on-manifold NLL" in out, err


def test_the_generator_takes_inputs_as_the_encoder_does():
    """decode (and log_det_gram through it) moves u to the model's dtype and refuses NaN, as
    encode does with x; it raised a dtype error and returned NaN silently."""
    m = ff.models.build("mflow", features=5, manifold_dim=2).double()
    assert m.decode(torch.randn(3, 2)).dtype == torch.float64
    for f in (m.decode, m.log_det_gram):
        with pytest.raises(ValueError, match="u contains NaN or inf"):
            f(torch.full((1, 2), float("nan")))


class _PowerCut(BaseException):
    """The process dies (nothing after this runs but the interpreter's unwinding)."""


@pytest.mark.parametrize("name", ["mflow", "mflow-alternating"])
def test_a_crash_in_the_second_phases_first_checkpoint_resumes_from_the_phase_start(
    tmp_path, monkeypatch, name
):
    """The density phase's first epoch rewrites model.ff before its checkpoint; a run that died
    in between resumed from those weights, not from the phase's start (12 of 39 tensors off)."""
    cfg = tiny_cfg(name, epochs=4, manifold_epochs=2)
    a, b = tmp_path / "a", tmp_path / "b"
    train(cfg, a, progress=False, echo=False)
    real = trainer_module.save_checkpoint

    def save(path, model, opt, sched, meta, ema=None, **more):
        if meta["epoch"] == 3 and meta["step_in_epoch"] == 0:  # model.ff is written already
            raise _PowerCut
        return real(path, model, opt, sched, meta, ema, **more)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)
    with pytest.raises(_PowerCut):
        train(cfg, b, progress=False, echo=False)
    monkeypatch.setattr(trainer_module, "save_checkpoint", real)
    assert train({}, b, resume=True, progress=False, echo=False)["status"] == "finished"
    _, ta = read_checkpoint(a / "checkpoint.safetensors")
    _, tb = read_checkpoint(b / "checkpoint.safetensors")
    keys = [k for k in ta if k.startswith(("model/", "optim/", "ema/"))]
    assert keys and all(torch.equal(ta[k], tb[k]) for k in keys)
    assert (a / "model.ff").read_bytes() == (b / "model.ff").read_bytes()


def test_sampling_takes_a_shape_as_every_flow_does():
    m = small()
    torch.manual_seed(0)
    a = m.sample((2, 3))
    torch.manual_seed(0)
    b = m.sample(6)
    assert a.shape == (2, 3, 3) and torch.equal(a.reshape(6, 3), b)


def test_a_one_dimensional_manifold_builds_with_a_spline_inner_flow(tmp_path):
    # no coupling splits one dimension: a curve in R^D gets an autoregressive NSF inside
    # (it was refused with advice to use a MAF, which is no M-flow)
    torch.manual_seed(0)
    m = ff.models.build("mflow", features=3, manifold_dim=1, hidden=(8,))
    x = torch.randn(6, 3)
    lp = m.log_prob(x)
    assert lp.shape == (6,) and torch.isfinite(lp).all()
    assert m.encode(x).shape == (6, 1) and m.decode(m.encode(x)).shape == (6, 3)
    ff.save(m, tmp_path / "m.ff")
    torch.testing.assert_close(ff.load(tmp_path / "m.ff").log_prob(x), m.eval().log_prob(x))
