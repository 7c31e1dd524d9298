"""The affine coupling's order (issue 17, item 3): the image RealNVP shifts, then scales.

With the paper's ``z = x * exp(s) + t`` the image RealNVP with ActNorm blew up in training on
small images with a flat background: the loss reached 1e11 to 1e14 (docs/images.md, "Training
stability"). ``test_image_realnvp_trains_on_flat_backgrounds`` is that run, shortened to the 45
steps before the first blow-up; it fails with ``shift_first=False``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import flowforge as ff
from flowforge import transforms as T


def _laws(model: torch.nn.Module) -> set[bool]:
    return {m.shift_first for m in model.modules() if isinstance(m, T.Affine)}


# -- the law ---------------------------------------------------------------------------------------


def test_both_orders_are_bijections_with_the_same_log_det():
    torch.manual_seed(0)
    x, params = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, 2, dtype=torch.float64)
    for law in (T.Affine(), T.Affine(shift_first=True), T.Affine(None, shift_first=True)):
        z, ladj = law(x, params)
        back, ladj_inv = law.inverse(z, params)
        torch.testing.assert_close(back, x)
        torch.testing.assert_close(ladj, -ladj_inv)
    s = T.Affine()._scale(params[..., 1])
    # the same maps: (x + t) e^s is x e^s + t' with t' = t e^s
    z_first, _ = T.Affine(shift_first=True)(x, params)
    z_paper, _ = T.Affine()(x, torch.stack([params[..., 0] * s.exp(), params[..., 1]], -1))
    torch.testing.assert_close(z_first, z_paper)
    # zero parameters: the identity in both orders
    for law in (T.Affine(), T.Affine(shift_first=True)):
        torch.testing.assert_close(law(x, torch.zeros_like(params))[0], x)


def test_a_log_scale_step_moves_an_off_centre_background_only_in_the_paper_order():
    """The mechanism of the blow-up, on one transformer: a logit-preprocessed background pixel
    sits at logit(0.05) = -2.94 with a spread of 0.02 (dequantization noise). Both orders map it
    to the same standardised values; a log-scale step of 0.04 (what one Adam step did to the first
    coupling, docs/images.md) then shifts it by about x * exp(s) * 0.04 = 2.3 standard deviations
    in the paper's order and leaves its mean in place with the shift first."""
    g = torch.Generator().manual_seed(0)
    x = math.log(0.05 / 0.95) + 0.9 / 256 / (0.05 * 0.95) * torch.rand(10_000, generator=g)
    s = torch.full_like(x, 3.0)
    t_first = torch.full_like(x, -x.mean().item())  # z = (x + t) e^s centres the background
    t_paper = t_first * s.exp()  # z = x e^s + t, the same map
    step = 0.04
    for shift_first, t, moved in ((False, t_paper, True), (True, t_first, False)):
        law = T.Affine(bound=None, shift_first=shift_first)
        z, _ = law(x, torch.stack([t, s], -1))
        z2, _ = law(x, torch.stack([t, s + step], -1))
        assert abs(z.mean()) < 1e-3 * z.std()  # both standardise the background's mean ...
        shift = ((z2 - z).mean() / z.std()).abs().item()
        assert (shift > 2) if moved else (shift < 0.01), (shift_first, shift)


def test_the_order_is_shown_and_checked():
    assert "shift_first=True" in repr(T.Affine(shift_first=True))
    assert "shift_first" not in repr(T.Affine())
    with pytest.raises(ValueError, match="shift_first"):
        ff.models.RealNVP(shape=(1, 4, 4), scales=1, shift_first="yes")


# -- the builders ----------------------------------------------------------------------------------


def test_image_realnvp_shifts_first_and_vectors_keep_the_paper_order():
    image = ff.models.RealNVP(shape=(1, 4, 4), scales=1, hidden=4, blocks=0)
    assert _laws(image) == {True} and image.config["kwargs"]["shift_first"] is None
    assert _laws(ff.models.RealNVP(shape=(1, 4, 4), scales=1, hidden=4, shift_first=False)) == {
        False
    }
    assert _laws(ff.models.RealNVP(features=4, layers=2, hidden=(8,))) == {False}
    assert _laws(ff.models.RealNVP(features=4, layers=2, hidden=(8,), shift_first=True)) == {True}


def test_an_image_realnvp_saved_before_the_option_reloads_in_the_paper_order(tmp_path):
    """A configuration without ``shift_first`` was written when every coupling used the paper's
    order: it must rebuild that model, not today's default."""
    torch.manual_seed(0)
    old = ff.models.RealNVP(shape=(1, 4, 4), scales=1, hidden=4, blocks=0, shift_first=False)
    with torch.no_grad():  # non-zero conditioners, so the two orders give different densities
        for p in old.parameters():
            p.normal_(0, 0.3)
    del old.config["kwargs"]["shift_first"]
    ff.save(old, tmp_path / "old.ff")
    back = ff.load(tmp_path / "old.ff")
    assert _laws(back) == {False}
    old.eval()  # as ff.load returns it (ActNorm keeps its saved, uninitialised state)
    x = torch.randn(8, 1, 4, 4)
    torch.testing.assert_close(back.log_prob(x), old.log_prob(x))


# -- the regression: the new user's run --------------------------------------------------------


def _shapes(n: int = 400, seed: int = 0) -> np.ndarray:
    """``n`` 16x16 grayscale images on a black background: discs, square outlines and X's, as
    in the new-user report (docs/images.md, "Training stability")."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16]
    out = np.zeros((n, 16, 16), dtype=np.uint8)
    for i in range(n):
        img = np.zeros((16, 16))
        cy, cx = rng.uniform(5, 11, 2)
        r, v = rng.uniform(2.5, 5), rng.uniform(150, 255)
        if i % 3 == 0:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = v
        elif i % 3 == 1:
            y0, x0 = max(int(cy - r), 0), max(int(cx - r), 0)
            y1, x1 = min(int(cy + r), 15), min(int(cx + r), 15)
            img[y0 : y1 + 1, [x0, x1]] = v
            img[[y0, y1], x0 : x1 + 1] = v
        else:
            box = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            cross = (np.abs((yy - cy) - (xx - cx)) < 0.8) | (np.abs((yy - cy) + (xx - cx)) < 0.8)
            img[cross & box] = v
        out[i] = img.astype(np.uint8)
    return out


def test_image_realnvp_trains_on_flat_backgrounds(tmp_path):
    """`flowforge train --model realnvp --data <400 shapes> --model-kwargs '{"hidden": 32,
    "actnorm": true}'`, first 9 epochs (45 steps, all in the warm-up, so identical to the first
    9 of the 15-epoch run). In the paper's order one Adam step (step 45) broke the model: the
    validation NLL of epoch 9 was 2.1e11 nats (1,166 at epoch 1) and steps 46-75 reached 1e15."""
    pytest.importorskip("PIL")
    from PIL import Image

    from flowforge.workbench import train

    folder = tmp_path / "shapes"
    folder.mkdir()
    for i, img in enumerate(_shapes()):
        Image.fromarray(img, "L").save(folder / f"{i:03d}.png")
    config = {
        "model": {"name": "realnvp", "hidden": 32, "actnorm": True},
        "data": str(folder),
        # (the 100-step warm-up the run was made with: "auto" now warms a run this short up
        # over a tenth of its steps, and the 45 steps would not be the same)
        "train": {"epochs": 9, "log_every": 1, "warmup_steps": 100},
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the figures in the docstring are from one thread
    try:
        train(config, tmp_path / "run", progress=False, echo=False)
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r["loss"] for r in records if r["type"] == "step"]
    vals = [r["val_nll"] for r in records if r["type"] == "epoch"]
    assert len(steps) == 45 and len(vals) == 9
    assert max(steps) < 1.05 * steps[0], steps  # no spike above the first step's loss
    assert max(vals) == vals[0] and vals[-1] < 0.9 * vals[0], vals
