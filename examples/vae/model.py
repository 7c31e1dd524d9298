r"""Example: a variational autoencoder on scikit-learn's digits with flow posteriors.

flowforge's flows as *posteriors*, and flowforge's one :class:`~flowforge.workbench.Trainer` on
a model that is not a flow, with an objective of our own (:class:`ELBO`, with a KL warm-up).

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
    >>> from model import VAE
    >>> vae = VAE("planar", latent=4, hidden=(32,), context=16)
    >>> x = torch.randint(0, 17, (5, 64))
    >>> vae.elbo(x).shape, vae.iw_bound(x, k=10).shape
    (torch.Size([5]), torch.Size([5]))
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowforge import Compose, Flow, Transform, models
from flowforge._util import LOG_2PI
from flowforge.distributions import DiagGaussian
from flowforge.nets import MLP
from flowforge.transforms import Identity
from flowforge.workbench import Objective, Trainer, load_dataset

__all__ = ["POSTERIORS", "VAE", "ELBO", "load_digits_splits", "train_vae", "evaluate_vae"]

POSTERIORS = (
    "gaussian",
    "planar",
    "sylvester-householder",
    "sylvester-orthogonal",
    "sylvester-triangular",
    "iaf",
)


def load_digits_splits() -> dict[str, Tensor]:
    """The workbench's digits (the tutorial split: rows ``[:1000]`` train, ``[1000:1350]``
    val, ``[1350:]`` test) as ``long`` tensors of shape ``(n, 64)``, values ``0..16``."""
    ds = load_dataset("digits")
    return {k: ds.split(k).reshape(-1, 64).long() for k in ("train", "val", "test")}


def posterior_transform(kind: str, latent: int, context: int, layers: int | None) -> Transform:
    """The amortised flow of posterior ``kind`` (one of :data:`POSTERIORS`), reading a context
    of size ``context``. ``layers=None`` picks the default depth of each family."""
    if kind == "gaussian":
        return Identity((latent,), context)
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
        log_pz = -0.5 * (z.square() + LOG_2PI).sum(-1)
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


class ELBO(Objective):
    """The negative ELBO with a KL warm-up, ``beta = min(1, epoch / warmup)``; validated by the
    mean negative ELBO (``k`` samples per image, on a fixed random stream)."""

    name = "elbo"

    def __init__(self, warmup: int = 20, k_val: int = 5):
        self.warmup, self.k_val = warmup, k_val

    def loss(self, trainer, model, x, context):
        beta = min(1.0, (trainer.epoch + 1) / self.warmup) if self.warmup else 1.0
        return -model.elbo(x, beta=beta).mean()

    @torch.no_grad()
    def validate(self, trainer, x, context):
        model = trainer.eval_model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trainer.seed + 1)
            total = sum(model.elbo(b, self.k_val).double().sum().item() for b in _batches(x, 500))
        return -total / len(x)


def train_vae(
    model: VAE,
    splits: dict[str, Tensor],
    epochs: int = 500,
    batch_size: int = 100,
    lr: float = 1e-3,
    warmup: int = 20,
    patience: int = 40,
    seed: int = 0,
    echo: bool = False,
) -> dict:
    """Adam on the (warmed-up) ELBO through flowforge's Trainer: keeps the weights with the
    best validation ELBO (5 samples per image) and stops after ``patience`` epochs without
    improvement or after ``epochs``."""
    torch.manual_seed(seed)
    trainer = Trainer(
        model,
        splits["train"],
        splits["val"],
        {
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": "adam",
            "lr": lr,
            "schedule": "constant",
            "warmup_steps": 0,
            "grad_clip": 100.0,
            "patience": patience,
            "tensorboard": False,
        },
        objective=ELBO(warmup),
        seed=seed,
        progress=False,
        echo=echo,
    )
    t0 = time.time()
    result = trainer.fit()
    trainer.load_best()
    model.eval()
    return {
        "epochs": result["epochs"],
        "best_epoch": result["best_epoch"],
        "best_val_elbo": -result["best_val"],
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
