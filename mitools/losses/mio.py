"""MIO: mutual-information optimisation by binary (positive/negative pair) classification.

Source: Manna, Pal, Bhattacharya, "MIO: Mutual Information Optimization using Self-Supervised
Binary Contrastive Learning" (arXiv 2111.12664).

Default semantics = the public v1 reference code (the only verifiable version). For a batch of N
pairs, ``u = normalize(cat(z1, z2))`` (2N x d, rows L2-normalised) and ``S = u u'`` (cosines).

* positives: the 2N entries ``S[i, i+N]`` and ``S[i+N, i]``;
* negatives (``negatives="all"``): every other off-diagonal entry, 2N(2N-2) of them;
* ``loss = mean_pos softplus(-S/tau_p) + mean_neg softplus(S/tau_n) + lam * MSE``,
  two class-balanced binary cross-entropies with logits S/tau.

The MSE term: the reference applies it to the projections; ``mse_on="raw"`` (default) uses the
un-normalised inputs ``F.mse_loss(z1, z2)`` (mean over N*d entries), ``mse_on="normalized"`` the
L2-normalised rows.

Jensen-Shannon identity (tested): with ``lam=0`` and ``tau_p = tau_n = tau``, let ``T = S/tau``
(critic ``cos/tau``). The JS lower bound (Nowozin et al. 2016; Hjelm et al. 2019) is
``JSD_bound = E_pos[-softplus(-T)] - E_neg[softplus(T)]`` and ``loss = -JSD_bound`` exactly.
``last_terms["jsd_bound"] = -(positive + negative)``. It bounds the JS divergence between the
positive- and negative-pair distributions (``<= 2 JSD - 2 log 2``), not the KL MI itself, so no
``"mi"`` entry is reported.

v3 options. The v3 paper "removes the effect of positive-positive repulsion" and "uses an upper
bound of the negative-pair repulsion", but its equations are UNKNOWN. The options below are this
toolkit's interpretations, labelled as such:

* ``negatives="cross_view"``: negatives are only the cross-view pairs ``S[i, j+N]``,
  ``S[j+N, i]`` with ``j != i`` (2N(N-1) entries); same-view pairs are neither positive nor
  negative.
* ``remove_positive_repulsion=True`` (interpretation): in the v1 loss, a negative pair repels
  each *view* separately, so the two views of one image receive different repulsive forces and
  are partly pushed apart. Here the negative term acts on the *pair centroids*
  ``c_i = (u_i + u_{i+N}) / 2`` instead: ``mean_{i != j} softplus(c_i . c_j / tau_n)`` over the
  N(N-1) ordered image pairs. Both views of an image then receive the same negative-term gradient,
  which has no component separating them. Requires ``negatives="all"``.
* ``negative_bound=b`` (interpretation): the per-pair repulsion is capped, the negative logit is
  ``min(S, b)/tau_n``: negatives more similar than b (likely false negatives) contribute a
  constant ``softplus(b/tau_n)`` and no gradient.

Closed-form gradient (:func:`mio_gradient`, tested against autograd to 1e-10 in float64). With
``W`` the 2N x 2N matrix of ``dL/dS``: ``W_ij = -sigmoid(-S_ij/tau_p) / (tau_p P)`` on the P = 2N
positives and ``W_ij = sigmoid(S_ij/tau_n) 1[S_ij < b] / (tau_n M)`` on the M negatives
(``d softplus(x)/dx = sigmoid(x)``). Since ``S = u u'`` and W is symmetric, each pair appears
twice and ``dL/du = (W + W') u = 2 W u``. For centroid negatives, with ``V`` the N x N analogue on
``G = c c'``, ``dL/dc = 2 V c`` and ``dL/du_i = dL/du_{i+N} = V c``. The normalised-MSE term adds
``+-2 lam (u1 - u2)/(N d)``. The chain rule through ``u = z/||z||`` is
``dL/dz = (I - u u') (dL/du) / ||z||``; the raw-MSE term adds ``+-2 lam (z1 - z2)/(N d)`` directly.
Both use F.normalize's convention ``u = z / max(||z||, 1e-12)``: a row with ``||z|| < 1e-12``
(e.g. all zeros) gets ``dL/dz = (dL/du) / 1e-12``, finite and equal to autograd's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mitools._tensor_cache import TensorCache
from mitools.losses._common import (
    check_nonnegative,
    check_pair,
    check_positive,
    common_dtype,
    detach_terms,
    full_precision,
    maybe_gather,
)

__all__ = ["MIOLoss", "mio_loss", "mio_gradient"]

_NEGATIVES = ("all", "cross_view")
_MSE_ON = ("raw", "normalized")

#: ``F.normalize``'s default eps: rows are divided by ``max(||z||, eps)``. The closed form uses
#: the same convention so that it matches autograd of the loss on (near-)zero rows too.
_NORM_EPS = 1e-12


def _masks(n: int, device: torch.device, negatives: str) -> tuple[Tensor, Tensor]:
    idx = torch.arange(2 * n, device=device)
    partner = (idx + n) % (2 * n)
    pos = partner[:, None] == idx[None, :]  # row i's positive is column partner(i)
    if negatives == "all":
        neg = ~pos & ~torch.eye(2 * n, dtype=torch.bool, device=device)
    else:
        view = idx // n
        neg = (view[:, None] != view[None, :]) & ~pos
    return pos, neg


#: Largest 2N for which the negative weights are cached (2048^2 float32 = 16 MiB).
_CACHE_MAX_ROWS = 2048
_NEGATIVE_WEIGHTS = TensorCache(maxsize=8)


def _negative_weights(n: int, device: torch.device, negatives: str, dtype: torch.dtype) -> Tensor:
    """The negative mask as 0/1 weights in ``dtype``. Training calls it with the same batch size
    every step; building it costs eight kernel launches, so up to 2N = 2048 it is built once."""

    def build() -> Tensor:
        return _masks(n, device, negatives)[1].to(dtype)

    if 2 * n <= _CACHE_MAX_ROWS:
        return _NEGATIVE_WEIGHTS.get((n, device, negatives, dtype), build)
    return build()


def _validate(tau_p, tau_n, lam, negatives, remove_positive_repulsion, negative_bound, mse_on):
    check_positive("temperature tau_p", tau_p)
    check_positive("temperature tau_n", tau_n)
    check_nonnegative("lam", lam)
    if negatives not in _NEGATIVES:
        raise ValueError(f"negatives must be one of {_NEGATIVES}, got {negatives!r}")
    if mse_on not in _MSE_ON:
        raise ValueError(f"mse_on must be one of {_MSE_ON}, got {mse_on!r}")
    if remove_positive_repulsion and negatives != "all":
        raise ValueError(
            "remove_positive_repulsion=True uses centroid negatives; needs negatives='all'"
        )
    if negative_bound is not None and not -1.0 <= negative_bound <= 1.0:
        raise ValueError(
            f"negative_bound must be a cosine in [-1, 1] or None, got {negative_bound}"
        )


def mio_loss(
    z1: Tensor,
    z2: Tensor,
    *,
    tau_p: float = 0.5,
    tau_n: float = 0.5,
    lam: float = 0.0,
    negatives: str = "all",
    remove_positive_repulsion: bool = False,
    negative_bound: float | None = None,
    mse_on: str = "raw",
) -> tuple[Tensor, dict[str, Tensor]]:
    """MIO loss of one (global) batch and its terms; see the module docstring for the math."""
    _validate(tau_p, tau_n, lam, negatives, remove_positive_repulsion, negative_bound, mse_on)
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2], dim=0), dim=1, eps=_NORM_EPS)
    S = u @ u.T
    # Masked sums instead of boolean indexing (S[neg]), which would synchronise with the device
    # on every call; the positives are the two off-diagonals i -> i + n and i + n -> i, in the
    # row-major order boolean indexing gives.
    s_pos = torch.cat([S.diagonal(n), S.diagonal(-n)])
    positive = F.softplus(-s_pos / tau_p).mean()
    # counts are known: 2N - 2 negatives per row ("all") or N - 1 ("cross_view")
    neg_w = _negative_weights(n, u.device, negatives, S.dtype)
    n_neg = 2 * n * (2 * n - 2 if negatives == "all" else n - 1)
    if remove_positive_repulsion:
        c = 0.5 * (u[:n] + u[n:])
        sims, w = c @ c.T, 1.0 - torch.eye(n, dtype=S.dtype, device=u.device)
        count = n * (n - 1)
    else:
        sims, w, count = S, neg_w, n_neg
    if negative_bound is not None:
        sims = torch.clamp(sims, max=negative_bound)
    negative = (F.softplus(sims / tau_n) * w).sum() / count
    a, b = (z1, z2) if mse_on == "raw" else (u[:n], u[n:])
    if lam:
        mse = F.mse_loss(a, b)
        loss = positive + negative + lam * mse
    else:  # a logged term only: no gradient graph for it
        mse = F.mse_loss(a.detach(), b.detach())
        loss = positive + negative
    terms = {
        "positive": positive,
        "negative": negative,
        "mse": mse,
        "jsd_bound": -(positive + negative),
        "pos_cos": s_pos.detach().mean(),  # logged only: no autograd graph
        "neg_cos": (S.detach() * neg_w).sum() / n_neg,
    }
    return loss, terms


def mio_gradient(
    z1: Tensor,
    z2: Tensor,
    *,
    tau_p: float = 0.5,
    tau_n: float = 0.5,
    lam: float = 0.0,
    negatives: str = "all",
    remove_positive_repulsion: bool = False,
    negative_bound: float | None = None,
    mse_on: str = "raw",
    wrt: str = "input",
) -> tuple[Tensor, Tensor]:
    """Closed-form gradient of :func:`mio_loss` (module docstring for the derivation).

    ``wrt="input"``: w.r.t. the un-normalised z1, z2. ``wrt="normalized"``: w.r.t. the normalised
    rows u1, u2, of the terms that depend on them (the raw-MSE term is then excluded).
    """
    _validate(tau_p, tau_n, lam, negatives, remove_positive_repulsion, negative_bound, mse_on)
    if wrt not in ("input", "normalized"):
        raise ValueError(f"wrt must be 'input' or 'normalized', got {wrt!r}")
    check_pair(z1, z2)
    z1, z2 = common_dtype(z1, z2)
    with torch.no_grad():
        n, d = z1.shape
        z = torch.cat([z1, z2], dim=0)
        raw_norms = z.norm(dim=1, keepdim=True)
        # as F.normalize in the loss: u = z / max(||z||, eps)
        norms = raw_norms.clamp_min(_NORM_EPS)
        u = z / norms
        S = u @ u.T
        pos, neg = _masks(n, u.device, negatives)
        W = torch.zeros_like(S)
        W[pos] = -torch.sigmoid(-S[pos] / tau_p) / (tau_p * int(pos.sum()))
        if remove_positive_repulsion:
            c = 0.5 * (u[:n] + u[n:])
            G = c @ c.T
            off = ~torch.eye(n, dtype=torch.bool, device=u.device)
            V = torch.zeros_like(G)
            active = off if negative_bound is None else off & (G < negative_bound)
            V[active] = torch.sigmoid(G[active] / tau_n) / (tau_n * int(off.sum()))
            g_u = 2.0 * W @ u
            g_c = V @ c  # = (dL/dc) / 2, shared by both views
            g_u = g_u + torch.cat([g_c, g_c], dim=0)
        else:
            active = neg if negative_bound is None else neg & (S < negative_bound)
            W[active] = torch.sigmoid(S[active] / tau_n) / (tau_n * int(neg.sum()))
            g_u = 2.0 * W @ u
        if mse_on == "normalized" and lam:
            g_mse = 2.0 * lam * (u[:n] - u[n:]) / (n * d)
            g_u = g_u + torch.cat([g_mse, -g_mse], dim=0)
        if wrt == "normalized":
            return g_u[:n].clone(), g_u[n:].clone()
        # Rows with ||z|| < eps are divided by the constant eps, so no projection term there (the
        # gradient of clamp_min is zero below the threshold, as autograd of the loss gives).
        radial = torch.where(raw_norms >= _NORM_EPS, u * (u * g_u).sum(dim=1, keepdim=True), 0.0)
        g_z = (g_u - radial) / norms
        if mse_on == "raw" and lam:
            g_raw = 2.0 * lam * (z1 - z2) / (n * d)
            g_z = g_z + torch.cat([g_raw, -g_raw], dim=0)
        return g_z[:n].clone(), g_z[n:].clone()


class MIOLoss(nn.Module):
    """MIO binary-contrastive loss as a module (v1 reference semantics by default).

    Args: see :func:`mio_loss`; ``gather_distributed`` gathers all ranks' embeddings and
    computes the global-batch loss on every rank (:mod:`mitools.distributed`).
    ``last_terms``: loss, positive, negative, mse, jsd_bound, pos_cos, neg_cos.
    """

    def __init__(
        self,
        tau_p: float = 0.5,
        tau_n: float = 0.5,
        lam: float = 0.0,
        negatives: str = "all",
        remove_positive_repulsion: bool = False,
        negative_bound: float | None = None,
        mse_on: str = "raw",
        gather_distributed: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        _validate(tau_p, tau_n, lam, negatives, remove_positive_repulsion, negative_bound, mse_on)
        self.config = dict(
            tau_p=float(tau_p),
            tau_n=float(tau_n),
            lam=float(lam),
            negatives=negatives,
            remove_positive_repulsion=bool(remove_positive_repulsion),
            negative_bound=negative_bound,
            mse_on=mse_on,
        )
        self.gather_distributed = gather_distributed
        self.check_finite = check_finite
        self.last_terms: dict[str, float | Tensor] = {}

    @full_precision
    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        check_pair(z1, z2, check_finite=self.check_finite)
        z1, z2 = common_dtype(z1, z2)
        z1, z2 = maybe_gather(z1, z2, self.gather_distributed, self.check_finite)
        loss, terms = mio_loss(z1, z2, **self.config)
        self.last_terms = detach_terms({"loss": loss, **terms})
        return loss

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())
