"""The VAE example: shapes, the bound ordering, gradients, a quick run through the Trainer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from model import POSTERIORS, VAE, evaluate_vae, load_digits_splits, train_vae

HERE = Path(__file__).resolve().parent


def _tiny(kind: str, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(kind, latent=3, hidden=(16,), context=8, flow_layers=2)


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 17, (n, 64), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", POSTERIORS)
def test_shapes_and_gradients_reach_encoder_decoder_and_flow(kind):
    vae = _tiny(kind)
    x = _images()
    log_px, neg_kl = vae.log_weights(x, k=4)
    assert log_px.shape == neg_kl.shape == (4, 6)
    z, log_q = vae.posterior.rsample_and_log_prob(5, context=vae.encode(x))
    assert z.shape == (5, 6, 3) and log_q.shape == (5, 6)
    assert vae.elbo(x, k=2).shape == (6,)
    # the flow's context nets start at zero: perturb them so that every parameter matters
    with torch.no_grad():
        for p in vae.posterior.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.zero_grad()
    (-vae.elbo(x, k=2).mean()).backward()
    groups = {"encoder": vae.encoder, "decoder": vae.decoder, "base": vae.posterior.base}
    if kind != "gaussian":
        groups["flow"] = vae.posterior.transform
    for name, module in groups.items():
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    # the amortisation: the flow's parameters depend on x through h(x)
    if kind != "gaussian":
        h = vae.encode(x).detach().requires_grad_()
        _, lq = vae.posterior.rsample_and_log_prob(1, context=h)
        assert torch.autograd.grad(lq.sum(), h)[0].abs().sum() > 0


@pytest.mark.parametrize("kind", ["gaussian", "planar", "sylvester-orthogonal", "iaf"])
def test_iw_bound_is_at_least_the_elbo_on_average(kind):
    vae = _tiny(kind, seed=1).eval()
    with torch.no_grad():
        for p in vae.posterior.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = _images(8, seed=1)
    torch.manual_seed(0)
    elbo, iw = vae.bounds(x, k=200, chunk=64)
    # log mean w >= mean log w for the same samples (Jensen), per image
    assert (iw >= elbo - 1e-9).all()
    # and against independent draws: the k-sample IW bound beats the 1-sample ELBO on average
    torch.manual_seed(1)
    with torch.no_grad():
        e1 = sum(vae.log_weights(x, k=200)).double().mean(0)  # the 1-sample ELBO, averaged
        log_w = sum(vae.log_weights(x, k=20 * 16)).double().reshape(20, 16, -1)
    iw_k = (torch.logsumexp(log_w, 1) - torch.log(torch.tensor(16.0))).mean(0)  # 20 IW draws
    assert (iw_k - e1).mean() > 0
    # k = 1 is the ELBO itself
    torch.manual_seed(2)
    a = vae.bounds(x, k=1)
    assert torch.allclose(a[0], a[1])


def test_bad_input_and_data_split():
    with pytest.raises(ValueError, match="unknown posterior 'nope'"):
        VAE("nope")
    vae = _tiny("planar")
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 64\)"):
        vae.elbo(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="pixel values in 0..16"):
        vae.elbo(torch.full((2, 64), 17))
    s = load_digits_splits()
    assert {k: len(v) for k, v in s.items()} == {"train": 1000, "val": 350, "test": 447}
    assert s["train"].min() >= 0 and s["train"].max() == 16


def test_one_epoch_training_and_evaluation():
    s = load_digits_splits()
    small = {"train": s["train"][:200], "val": s["val"][:50]}
    vae = _tiny("sylvester-householder")
    fit = train_vae(vae, small, epochs=1, warmup=0, batch_size=50)
    assert fit["epochs"] == 1 and fit["best_epoch"] == 1
    res = evaluate_vae(vae, s["test"][:16], k=20)
    assert res["iw"] >= res["elbo"] and -200 < res["elbo"] < 0


def test_quick_table_script_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("vae_table", HERE / "table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = tmp_path / "vi.md"
    doc.write_text(f"# doc\n\n{mod.START}\nold\n{mod.END}\n\nafter\n")
    out = tmp_path / "t.json"
    rc = mod.main(
        ["--quick", "--posteriors", "gaussian", "iaf", "--json", str(out), "--doc", str(doc)]
    )
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["posterior"] for r in rows] == ["gaussian", "iaf"]
    text = doc.read_text()
    assert "old" not in text and "| + IAF (2 layers) |" in text and text.endswith("after\n")
    assert "test IW bound (k=20)" in capsys.readouterr().out
