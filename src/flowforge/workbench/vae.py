r"""A variational autoencoder on scikit-learn's digits with flow posteriors (issue 6).

The model, for an 8x8 image ``x`` with pixel values in ``{0, ..., 16}``:

- prior ``p(z) = N(0, I)`` on ``latent`` dimensions;
- decoder ``p(x | z)``: an MLP gives 17 logits per pixel, a categorical per pixel;
- posterior ``q(z | x)``: the encoder MLP maps ``x`` to a feature vector ``h(x)``; a diagonal
  Gaussian whose mean and log-std are a linear map of ``h(x)``
  (:class:`flowforge.distributions.DiagGaussian` with ``context_features``), optionally pushed
  through an *amortised* flow whose parameters are offset by ``h(x)`` (the flow layers'
  ``context_features``): planar, Sylvester (Householder, orthogonal, triangular) or IAF.

The posterior is one :class:`flowforge.Flow`, so ``posterior.rsample_and_log_prob(k, h)`` gives
``k`` reparametrised samples per image and their exact ``log q(z | x)`` in one vectorised call
(all of these flows are closed form in the sampling direction).

Objectives, per image: ``log w = log p(x | z) + log p(z) - log q(z | x)`` with ``z ~ q``;
the ELBO is ``E_q[log w]``; the importance-weighted bound (Burda et al., 2016) is
``log (1/k) sum_k w_k``, which is ``>=`` the ELBO in expectation and tends to ``log p(x)`` as
``k`` grows.

Example:
    >>> from flowforge.workbench.vae import VAE
    >>> vae = VAE("planar", latent=4, hidden=(32,), context=16)
    >>> x = torch.randint(0, 17, (5, 64))
    >>> vae.elbo(x).shape, vae.iw_bound(x, k=10).shape
    (torch.Size([5]), torch.Size([5]))
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Compose, Flow, Transform
from ..distributions import DiagGaussian
from ..nets import MLP

__all__ = ["POSTERIORS", "VAE", "load_digits_splits", "train_vae", "evaluate_vae"]

_LOG_2PI = math.log(2 * math.pi)

POSTERIORS = (
    "gaussian",
    "planar",
    "sylvester-householder",
    "sylvester-orthogonal",
    "sylvester-triangular",
    "iaf",
)


def load_digits_splits() -> dict[str, Tensor]:
    """scikit-learn's digits as ``long`` tensors of shape ``(n, 64)``, values ``0..16``:
    rows ``[:1000]`` train, ``[1000:1350]`` val, ``[1350:]`` test (no shuffling)."""
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().data, dtype=torch.long)
    return {"train": x[:1000], "val": x[1000:1350], "test": x[1350:]}


class _Identity(Transform):
    """The identity (for the plain Gaussian posterior)."""

    def _forward(self, x, context):
        return x, x.new_zeros(x.shape[0])

    def _inverse(self, z, context):
        return z, z.new_zeros(z.shape[0])


def posterior_transform(kind: str, latent: int, context: int, layers: int | None) -> Transform:
    """The amortised flow of posterior ``kind`` (one of :data:`POSTERIORS`), reading a context
    of size ``context``. ``layers=None`` picks the default depth of each family."""
    from .. import models

    if kind == "gaussian":
        return _Identity((latent,), context)
    if kind == "planar":
        flow = models.Planar(features=latent, layers=layers or 8, context_features=context)
    elif kind.startswith("sylvester-"):
        flow = models.Sylvester(
            features=latent,
            layers=layers or 4,
            kind=kind.split("-", 1)[1],
            context_features=context,
        )
    elif kind == "iaf":
        flow = models.IAF(
            features=latent,
            layers=layers or 2,
            hidden=(64, 64),
            context_features=context,
            preprocess=None,
        )
    else:
        raise ValueError(f"unknown posterior {kind!r}; expected one of {', '.join(POSTERIORS)}")
    return flow.transform


class VAE(nn.Module):
    """A VAE for 64-pixel images with ``levels`` grey levels and a flow posterior.

    Args:
        posterior: one of :data:`POSTERIORS`.
        latent: latent dimension.
        hidden: hidden widths of the encoder and (reversed) the decoder MLPs.
        context: size of the encoder's feature vector ``h(x)`` that parametrises ``q(z | x)``.
        flow_layers: depth of the posterior flow (``None``: the family's default).
        pixels, levels: image size and number of grey levels (64 and 17 for the digits).
    """

    def __init__(
        self,
        posterior: str = "gaussian",
        latent: int = 8,
        hidden: Sequence[int] = (256, 256),
        context: int = 64,
        flow_layers: int | None = None,
        pixels: int = 64,
        levels: int = 17,
    ):
        super().__init__()
        if posterior not in POSTERIORS:
            raise ValueError(
                f"unknown posterior {posterior!r}; expected one of {', '.join(POSTERIORS)}"
            )
        self.kind, self.latent, self.pixels, self.levels = posterior, latent, pixels, levels
        hidden = tuple(hidden)
        self.encoder = MLP(pixels, context, hidden, activation="elu", zero_init=False)
        transform = posterior_transform(posterior, latent, context, flow_layers)
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        self.posterior = Flow(transform, DiagGaussian(latent, context_features=context))
        self.decoder = MLP(latent, pixels * levels, hidden[::-1], activation="elu", zero_init=False)

    def _check(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.pixels:
            raise ValueError(
                f"expected images of shape (batch, {self.pixels}), got {tuple(x.shape)}"
            )
        if x.dtype.is_floating_point:
            x = x.round()
        x = x.long()
        if x.numel() and (x.min() < 0 or x.max() >= self.levels):
            raise ValueError(f"expected pixel values in 0..{self.levels - 1}")
        return x

    def encode(self, x: Tensor) -> Tensor:
        """The feature vector ``h(x)``, ``(B, context)``."""
        return self.encoder(x.to(torch.get_default_dtype()) * (2.0 / (self.levels - 1)) - 1)

    def decode_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x | z)`` for ``z`` of shape ``(k, B, latent)``; returns ``(k, B)``."""
        k, b = z.shape[:2]
        logits = self.decoder(z.reshape(k * b, -1)).reshape(k, b, self.pixels, self.levels)
        idx = x.unsqueeze(0).expand(k, -1, -1).unsqueeze(-1)
        return F.log_softmax(logits, -1).gather(-1, idx).squeeze(-1).sum(-1)

    def log_weights(self, x: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """``(log p(x | z), log p(z) - log q(z | x))`` for ``k`` samples ``z ~ q(z | x)`` per
        image, each ``(k, B)``, differentiable (reparametrised)."""
        x = self._check(x)
        h = self.encode(x)
        z, log_q = self.posterior.rsample_and_log_prob(k, context=h)
        log_pz = -0.5 * (z.square() + _LOG_2PI).sum(-1)
        return self.decode_log_prob(x, z), log_pz - log_q

    def elbo(self, x: Tensor, k: int = 1, beta: float = 1.0) -> Tensor:
        """The ELBO per image, ``(B,)``, averaged over ``k`` samples; ``beta`` weights the
        ``log p(z) - log q(z | x)`` term (KL warm-up; ``beta = 1`` is the ELBO)."""
        log_px, neg_kl = self.log_weights(x, k)
        return (log_px + beta * neg_kl).mean(0)

    @torch.no_grad()
    def bounds(self, x: Tensor, k: int = 1000, chunk: int = 250) -> tuple[Tensor, Tensor]:
        """``(ELBO, IW bound)`` per image from the same ``k`` samples, computed ``chunk``
        samples at a time: the mean of ``log w`` and ``log mean_k w``, each ``(B,)``."""
        parts = []
        for i in range(0, k, chunk):
            log_px, neg_kl = self.log_weights(x, min(chunk, k - i))
            parts.append((log_px + neg_kl).double())
        log_w = torch.cat(parts)
        return log_w.mean(0), torch.logsumexp(log_w, 0) - math.log(k)

    def iw_bound(self, x: Tensor, k: int = 1000, chunk: int = 250) -> Tensor:
        """The importance-weighted bound ``log (1/k) sum_k p(x, z_k) / q(z_k | x)``, ``(B,)``."""
        return self.bounds(x, k, chunk)[1]


def _batches(x: Tensor, size: int):
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


@torch.no_grad()
def _mean_elbo(model: VAE, x: Tensor, k: int, seed: int) -> float:
    """Mean ELBO over ``x`` with ``k`` samples each, on a fixed random stream (less noise in
    early stopping), without disturbing the global one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return sum(model.elbo(b, k).double().sum().item() for b in _batches(x, 500)) / len(x)


def train_vae(
    model: VAE,
    splits: dict[str, Tensor],
    epochs: int = 500,
    batch_size: int = 100,
    lr: float = 1e-3,
    warmup: int = 20,
    patience: int = 40,
    max_seconds: float | None = None,
    seed: int = 0,
    log_every: int = 0,
) -> dict:
    """Adam on the (warmed-up) ELBO; keeps the weights with the best validation ELBO
    (5 samples per image) and stops after ``patience`` epochs without improvement, after
    ``epochs``, or after ``max_seconds``. KL warm-up: ``beta = min(1, epoch / warmup)``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_train, x_val = splits["train"], splits["val"]
    best, best_state, best_epoch, t0, epoch = -math.inf, None, 0, time.time(), 0
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        beta = min(1.0, epoch / warmup) if warmup else 1.0
        perm = torch.randperm(x_train.shape[0], generator=gen)
        total = 0.0
        for idx in perm.split(batch_size):
            loss = -model.elbo(x_train[idx], beta=beta).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        val = _mean_elbo(model, x_val, 5, seed + 1)
        history.append((epoch, -total / x_train.shape[0], val))
        if log_every and epoch % log_every == 0:
            print(f"  epoch {epoch}  beta {beta:.2f}  train {history[-1][1]:.2f}  val {val:.2f}")
        # only a full-beta ELBO counts as a validation score
        if beta >= 1.0 and val > best:
            best, best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        if beta >= 1.0 and epoch - best_epoch >= patience:
            break
        if max_seconds is not None and time.time() - t0 > max_seconds:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "epochs": epoch,
        "best_epoch": best_epoch,
        "best_val_elbo": best,
        "seconds": time.time() - t0,
    }


def evaluate_vae(model: VAE, x: Tensor, k: int = 1000, batch_size: int = 64, seed: int = 0) -> dict:
    """Test ELBO and IW bound (mean over images, nats per image) from ``k`` samples each."""
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        elbo, iw = [], []
        for b in _batches(x, batch_size):
            e, w = model.bounds(b, k)
            elbo.append(e)
            iw.append(w)
    elbo, iw = torch.cat(elbo), torch.cat(iw)
    n = x.shape[0]
    return {
        "elbo": elbo.mean().item(),
        "elbo_se": (elbo.std() / math.sqrt(n)).item(),
        "iw": iw.mean().item(),
        "iw_se": (iw.std() / math.sqrt(n)).item(),
        "k": k,
        "n": n,
    }
