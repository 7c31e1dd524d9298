r"""M-flows: simultaneous manifold learning and density estimation (Brehmer & Cranmer, 2020).

An :class:`MFlow` has an *outer* invertible flow ``f`` on ``R^D`` and an *inner* flow on
``R^d`` (``d < D``). Its generator is the injective map ``g(u) = f^{-1}([u, 0])`` from
``R^d`` into ``R^D``; the learned manifold is its image. Data are

- *encoded* to ``u = f(x)[:d]`` (the padded coordinates ``f(x)[d:]`` are dropped),
- *projected* onto the manifold, ``pi(x) = g(u)``, with reconstruction error
  ``|x - pi(x)|^2``,
- scored with the manifold-restricted log-density (with respect to the manifold's volume)

    ``log p(x) = log p_inner(u) - (1/2) log det(J_g(u)^T J_g(u))``

  where ``J_g`` is the ``D x d`` Jacobian of the generator, computed exactly here with ``d``
  Jacobian-vector products (fine for small ``d``).

The *M_e-flow* variant (``variant="me"``) encodes with a separate network ``e: R^D -> R^d``
(an MLP) instead of the outer flow's inverse: ``u = e(x)``, ``pi(x) = g(e(x))``. The decoder
``g`` stays the injective ``f^{-1}([u, 0])``, so the manifold and its density are defined as for
the M-flow; the encoder is only bound to invert ``g`` through the reconstruction loss, which
lets it learn a projection that is not along the outer flow's fibres.

Training (the paper's separated updates): a *manifold phase* fits ``f`` (and the M_e-flow's
encoder) to the reconstruction error (:meth:`MFlow.manifold_loss`), a *density phase* fits the
inner flow by maximum likelihood of the encoded data with the rest frozen
(:meth:`MFlow.density_loss`; the ``log det`` term does not depend on the inner flow). The
workbench runs them in sequence or alternating (:mod:`flowforge.workbench.mflow`).

This is not a :class:`~flowforge.Flow`: it has no density on ``R^D``. The builder is registered
(``flowforge train --model mflow``), so that ``ff.save``/``ff.load`` and run folders work; the
workbench trains it with its own objectives only (:attr:`MFlow.objectives`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.functional import jvp

from .._util import all_finite
from ..core import Compose, Flow, Transform, _autocasting, check_shape
from ..nets import MLP
from ..transforms import Affine, Coupling, LULinear, half_mask
from .assembly import count, mlp_conditioner, widths
from .autoregressive import NSF
from .coupling import RealNVP
from .registry import register

__all__ = ["MFlow", "mflow"]


class MFlow(nn.Module):
    r"""A flow on a learned ``d``-dimensional manifold in ``R^D`` (see the module docstring).

    Args:
        outer: an invertible :class:`~flowforge.Transform` on vectors ``(D,)``.
        inner: a :class:`~flowforge.Flow` on vectors ``(d,)``, ``d < D``.
        encoder: for an M_e-flow, a module mapping ``(batch, D)`` to ``(batch, d)``; None (the
            M-flow) encodes with the outer flow, ``f(x)[:d]``.

    Example:
        >>> m = mflow(features=6, manifold_dim=2, outer_layers=2, inner_layers=2, hidden=(16,))
        >>> x = torch.randn(4, 6)
        >>> m.project(x).shape, m.log_prob(m.project(x)).shape
        (torch.Size([4, 6]), torch.Size([4]))
    """

    #: the workbench objectives that train it (``train.objective``)
    objectives = ("mflow", "mflow-alternating")
    #: why ``ff.nll``, ``ff.bits_per_dim`` and ``ff.objectives.log_likelihoods`` refuse it
    not_a_density = (
        "its density lives on its learned manifold, not in R^D (its log_prob scores each "
        "point's projection, so off-manifold data get a finite, meaningless number): score "
        "points on the manifold with model.log_prob, and check their distance to it with "
        "model.reconstruction_error (docs/manifolds.md)"
    )

    def __init__(self, outer: Transform, inner: Flow, encoder: nn.Module | None = None):
        super().__init__()
        if len(outer.event_shape) != 1 or outer.output_shape != outer.event_shape:
            raise ValueError(
                f"the outer flow must map vectors to vectors of the same size, got "
                f"{outer.event_shape} -> {outer.output_shape}"
            )
        if len(inner.event_shape) != 1:
            raise ValueError(f"the inner flow must model vectors, got {inner.event_shape}")
        self.features, self.manifold_dim = outer.event_shape[0], inner.event_shape[0]
        _check_dims(self.manifold_dim, self.features)
        self.outer, self.inner, self.encoder = outer, inner, encoder

    @property
    def variant(self) -> str:
        """``"m"`` (the M-flow: the outer flow's inverse encodes) or ``"me"`` (the M_e-flow)."""
        return "m" if self.encoder is None else "me"

    @property
    def event_shape(self) -> tuple[int]:
        """The data's shape, ``(D,)``."""
        return (self.features,)

    def _check(self, x: Tensor, what: str, size: int) -> None:
        check_shape(x, (size,), what)

    def _data(self, x: Tensor, what: str = "data to project", name: str = "x") -> Tensor:
        """``x`` checked (a real ``(batch, D)`` tensor, finite) and in the model's dtype, as a
        :class:`~flowforge.Flow` takes its inputs (``u``: manifold coordinates, ``(batch, d)``)."""
        self._check(x, what, self.features if name == "x" else self.manifold_dim)
        x = self.inner._as_input(x, name)  # the dtype move and refusals a Flow applies
        # the NaN scan follows the inner flow's validate_args, as a Flow's (on a GPU it reads
        # a value back, which a training step must not)
        if self.inner._validating(x) and not all_finite(x):
            bad = (~torch.isfinite(x)).any(1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"{name} contains NaN or inf (first bad batch indices: {bad})")
        return x

    def encode(self, x: Tensor) -> Tensor:
        """The manifold coordinates of data ``x`` of shape ``(batch, D)``: ``f(x)[:d]`` (M-flow)
        or ``e(x)`` (M_e-flow)."""
        x = self._data(x)
        if self.encoder is not None:
            u = self.encoder(x)
            self._check(u, "the encoder's output", self.manifold_dim)
            return u
        return self.outer(x)[0][:, : self.manifold_dim]

    def decode(self, u: Tensor) -> Tensor:
        """The generator ``g(u) = f^{-1}([u, 0])``: points on the manifold, ``(batch, D)``."""
        return self._generate(self._data(u, "manifold coordinates", "u"))

    def _generate(self, u: Tensor) -> Tensor:
        """:meth:`decode` of coordinates already checked (the Jacobian products call it)."""
        pad = u.new_zeros(u.shape[0], self.features - self.manifold_dim)
        return self.outer.inverse(torch.cat([u, pad], 1))[0]

    def project(self, x: Tensor) -> Tensor:
        """``x`` projected onto the learned manifold, ``g(encode(x))``."""
        return self._generate(self.encode(x))

    def reconstruction_error(self, x: Tensor) -> Tensor:
        """``|x - project(x)|^2`` per example, ``(batch,)``."""
        x = self._data(x)
        return (x - self.project(x)).square().sum(1)

    def log_det_gram(self, u: Tensor, create_graph: bool | None = None) -> Tensor:
        """``log det(J_g^T J_g)`` at ``u`` (``(batch,)``), exactly, from ``d`` Jacobian-vector
        products (each example's output depends on its own input only). Differentiable (with
        respect to ``u`` and the parameters) wherever autograd records; ``create_graph=False``
        detaches it (a cheaper value, whose gradient is then zero)."""
        return self._log_det_gram(self._data(u, "manifold coordinates", "u"), create_graph)

    def _log_det_gram(self, u: Tensor, create_graph: bool | None) -> Tensor:
        """:meth:`log_det_gram` of coordinates already checked (``log_prob``'s encoding), with
        autocast off: a bfloat16 Gram matrix's log-determinant is refused by torch, and would
        be far off if it were not."""
        if _autocasting(u):
            with torch.autocast(u.device.type, enabled=False):
                dtype = next((p.dtype for p in self.parameters()), torch.float32)
                return self._log_det_gram(u.to(dtype), create_graph)
        try:
            jac = self._jacobian(u, None)
        except RuntimeError as e:  # (a decoder torch.func cannot transform: autograd's own)
            if "functorch" not in str(e) and "torch.func" not in str(e):
                raise
            graph = torch.is_grad_enabled() if create_graph is None else create_graph
            jac = self._jacobian(u, graph)
        out = torch.linalg.slogdet(jac.transpose(1, 2) @ jac)[1]
        return out.detach() if create_graph is False else out

    def _jacobian(self, u: Tensor, create_graph: bool | None) -> Tensor:
        """The decoder's Jacobian at ``u``, ``(B, D, d)``, from ``d`` Jacobian-vector products:
        by torch.func's forward mode (``create_graph`` None: differentiable by autograd, and
        composable with torch.func's transforms), or by torch.autograd.functional's (for a
        decoder that torch.func cannot transform, a layer that uses autograd inside)."""
        cols = []
        for i in range(self.manifold_dim):
            e = torch.zeros_like(u)
            e[:, i] = 1
            if create_graph is None:
                cols.append(torch.func.jvp(self._generate, (u,), (e,))[1])
            else:
                cols.append(jvp(self._generate, u, e, create_graph=create_graph)[1])
        return torch.stack(cols, 2)

    def log_det_gram_estimate(
        self, u: Tensor, probes: int = 8, steps: int = 10, create_graph: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""A stochastic estimate of ``log det(J_g^T J_g)`` at ``u`` and its standard error
        (each ``(batch,)``), from Jacobian-vector and vector-Jacobian products only (no
        ``D x d`` Jacobian), for ``d`` where the exact value is costly.

        ``log det G = tr log G`` (``G = J^T J``) with the trace estimated from ``probes``
        Rademacher vectors ``v`` (Hutchinson), each ``v^T log(G) v`` by stochastic Lanczos
        quadrature: ``steps`` Lanczos steps on ``G`` from ``v`` give a tridiagonal ``T`` and
        ``v^T log(G) v ~ |v|^2 e_1^T log(T) e_1`` (exact when ``steps >= d``; the error of fewer
        steps shrinks fast with ``G``'s conditioning). The standard error is that of the mean
        over the probes. Costs ``2 probes min(steps, d)`` passes through the decoder; the exact
        :meth:`log_det_gram` costs ``d``.
        """
        from torch.autograd.functional import vjp

        u = self._data(u, "manifold coordinates", "u")
        if create_graph is None:  # (differentiable wherever autograd records)
            create_graph = torch.is_grad_enabled()
        for name, v in (("probes", probes), ("steps", steps)):
            count(name, v)
        if probes < 2:
            raise ValueError("a standard error needs probes >= 2")
        d, m = self.manifold_dim, min(steps, self.manifold_dim)

        def gram(v: Tensor) -> Tensor:  # G v per example, (B, d)
            jv = jvp(self._generate, u, v, create_graph=create_graph)[1]
            return vjp(self._generate, u, jv, create_graph=create_graph)[1]

        def dot(a: Tensor, b: Tensor) -> Tensor:
            return (a * b).sum(1, keepdim=True)

        per_probe = []
        for _ in range(probes):
            v = torch.randint(0, 2, u.shape, device=u.device).to(u.dtype) * 2 - 1
            qs = [v / d**0.5]
            alphas, betas = [], []
            for j in range(m):
                w = gram(qs[j])
                if j > 0:
                    w = w - betas[-1] * qs[j - 1]
                alphas.append(dot(w, qs[j]))
                for _ in range(2):  # full re-orthogonalisation
                    for q in qs:
                        w = w - dot(w, q) * q
                if j == m - 1:
                    break
                beta = w.norm(dim=1, keepdim=True)
                # a Krylov space exhausted early: go on from a fresh orthogonal direction with a
                # zero coupling (the start vector's quadrature is then already exact)
                tiny = beta <= 1e-9 * alphas[0].abs().clamp_min(1e-30)
                r = torch.randn_like(w)
                for _ in range(2):
                    for q in qs:
                        r = r - dot(r, q) * q
                nxt = torch.where(tiny, r / r.norm(dim=1, keepdim=True), w / beta.clamp_min(1e-30))
                betas.append(torch.where(tiny, torch.zeros_like(beta), beta))
                qs.append(nxt)
            t = torch.diag_embed(torch.cat(alphas, 1))
            if betas:
                off = torch.cat(betas, 1)
                t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
            theta, vec = torch.linalg.eigh(t)
            per_probe.append(d * (vec[:, 0, :].square() * theta.log()).sum(1))
        est = torch.stack(per_probe)  # (probes, B)
        return est.mean(0), est.std(0) / probes**0.5

    def log_prob(
        self, x: Tensor, context: Tensor | None = None, *, create_graph: bool | None = None
    ) -> Tensor:
        """The manifold-restricted log-density at the projection of ``x`` (w.r.t. the learned
        manifold's volume), ``(batch,)``. An M-flow is unconditional: ``context`` must be None
        (it is there so that ``log_prob(x, context)`` reads as a Flow's does). Its gradients
        (with respect to ``x`` and the parameters) are whole wherever autograd records;
        ``create_graph=False`` leaves the volume term out of them (it was the default before
        2026-12-07, which gave a wrong gradient without a word)."""
        if context is not None:
            raise ValueError("an M-flow is unconditional; it takes no context")
        u = self.encode(x)
        return self.inner.log_prob(u) - 0.5 * self._log_det_gram(u, create_graph)

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """``n`` points on the learned manifold, ``(n, D)``, or ``(*n, D)`` for a shape ``n``
        (``temperature`` scales the inner flow's base noise; an M-flow takes no context)."""
        if context is not None:
            raise ValueError("an M-flow is unconditional; it takes no context")
        u = self.inner.sample(n, temperature=temperature)
        x = self._generate(u.reshape(-1, u.shape[-1]))
        return x.reshape(*u.shape[:-1], x.shape[-1])

    # -- the two training phases -----------------------------------------------------------
    def manifold_loss(self, x: Tensor) -> Tensor:
        """The manifold phase's loss: the mean reconstruction error (trains the outer flow)."""
        return self.reconstruction_error(x).mean()

    def density_loss(self, x: Tensor) -> Tensor:
        """The density phase's loss: the inner flow's NLL of the encoded data, the outer flow
        frozen."""
        with torch.no_grad():
            u = self.encode(x)
        return -self.inner.log_prob(u).mean()


def _check_dims(d: int, features: int) -> None:
    for name, v in (("manifold_dim", d), ("features", features)):
        count(name, v)
    if d >= features:
        raise ValueError(
            f"the manifold dimension must be below the data dimension, got manifold_dim={d} "
            f"and features={features}"
        )


VARIANTS = ("m", "me")


@register(inputs=("features",), depth="outer_layers", width="hidden")
def mflow(
    features: int,
    manifold_dim: int = 2,
    outer_layers: int = 8,
    inner_layers: int = 6,
    hidden: int | tuple[int, ...] = (128, 128),
    activation: str = "relu",
    variant: str = "m",
) -> MFlow:
    r"""M-flow (Brehmer & Cranmer 2020): a density on a learned d-dim manifold (variant m or me).

    The outer flow alternates LU-linear mixing and affine couplings on ``R^D``, the inner flow
    is a :func:`~flowforge.models.RealNVP` on ``R^d``; ``variant="me"`` adds the M_e-flow's
    separate encoder, an MLP ``R^D -> R^d`` with the same widths.

    Args:
        features: the data dimension ``D``.
        manifold_dim: the manifold dimension ``d < D``.
        outer_layers: couplings in the outer flow.
        inner_layers: couplings in the inner flow (a RealNVP; for ``manifold_dim=1``, which
            no coupling can split, an autoregressive NSF of that many layers).
        hidden: the MLPs' widths (both flows and the encoder).
        activation: the MLPs' activation.
        variant: ``"m"`` (the outer flow's inverse encodes) or ``"me"`` (a separate encoder).
    """
    _check_dims(manifold_dim, features)
    if variant not in VARIANTS:
        raise ValueError(f"expected variant to be one of {', '.join(VARIANTS)}, got {variant!r}")
    for name, v in (("outer_layers", outer_layers), ("inner_layers", inner_layers)):
        count(name, v)
    h = widths(hidden)
    cond = mlp_conditioner(h, 0, activation)
    chain: list[Transform] = []
    for i in range(outer_layers):
        chain += [LULinear(features), Coupling(half_mask(features, i % 2 == 1), cond, Affine())]
    if manifold_dim == 1:  # (a curve: no coupling splits one dimension)
        inner = NSF(
            features=1, layers=inner_layers, hidden=h, activation=activation, autoregressive=True
        )
    else:
        inner = RealNVP(features=manifold_dim, layers=inner_layers, hidden=h, activation=activation)
    encoder = None
    if variant == "me":
        encoder = MLP(features, manifold_dim, h, activation=activation, zero_init=False)
    return MFlow(Compose(chain), inner, encoder)
