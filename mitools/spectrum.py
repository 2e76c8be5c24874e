"""Collapse diagnostics from the spectrum of an embedding matrix Z (n samples x d dims).

RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained
self-supervised representations by their rank")
    With sigma_1..sigma_m (m = min(n, d)) the singular values of the UNCENTRED Z, NOT squared,

        p_k = sigma_k / sum_j sigma_j + eps,     RankMe(Z) = exp(-sum_k p_k log p_k),

    eps = 1e-7; the paper uses ~25,600 samples. A flat spectrum of rank r gives ~r.
    Libraries differ: some use squared singular values (eigenvalues of Z'Z, i.e. of the
    covariance when Z is centred; Roy & Vetterli's effective rank applies the same entropy to
    singular values), some centre Z. :func:`effective_rank` exposes both choices
    (``convention="rankme" | "squared"``, ``center``). Note that sigma^2 concentrates the
    distribution, so ``"squared"`` <= ``"rankme"`` (up to eps effects).

Normalised std (SimSiam, Chen & He 2021)
    Mean over dimensions of the per-dimension std (ddof=1, as ``torch.std``) of the L2-normalised
    rows: ~1/sqrt(d) for isotropic embeddings, 0 under complete collapse.

Spectrum
    :func:`embedding_spectrum`: singular values of Z (optionally row-L2-normalised first, then
    centred) and the eigenvalues of its covariance (Jing et al. 2022 plot these on a log scale).

All functions accept numpy arrays or torch tensors (any device; computed in float64), check that
Z is 2-D, finite and has n >= 2 rows, and return Python floats / numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = [
    "Spectrum",
    "effective_rank",
    "embedding_spectrum",
    "normalized_std",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(z: ArrayLike, name: str = "z") -> torch.Tensor:
    if isinstance(z, torch.Tensor):
        t = z.detach()
        if t.is_complex():
            raise ValueError(f"{name} must be real, got dtype {t.dtype}")
        t = t.to(torch.float64)
    else:
        arr = np.asarray(z)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, dim), got shape {tuple(t.shape)}")
    n, d = t.shape
    if n < 2:
        raise ValueError(f"{name} needs at least 2 samples (rows), got shape {tuple(t.shape)}")
    if d < 1:
        raise ValueError(f"{name} needs at least 1 dimension (column), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite values (NaN or inf)")
    return t


def _l2_normalize_rows(t: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    # Zero rows stay zero (as torch.nn.functional.normalize) instead of becoming NaN.
    return t / torch.linalg.vector_norm(t, dim=1, keepdim=True).clamp_min(eps)


def effective_rank(
    z: ArrayLike,
    *,
    convention: Literal["rankme", "squared"] = "rankme",
    eps: float = 1e-7,
    center: bool = False,
) -> float:
    """RankMe effective rank ``exp(-sum p_k log p_k)``, ``p_k = s_k / sum(s) + eps``.

    ``convention="rankme"``: s = singular values of Z (Garrido et al. 2023, the default);
    ``"squared"``: s = squared singular values (eigenvalues of Z'Z; of the scatter matrix when
    centred). ``center=True`` subtracts the column means first (the paper does not).
    ``eps=0`` gives Roy & Vetterli's effective rank. If every singular value is zero (all-zero
    embeddings, or identical embeddings with ``center=True``) the rank is 0.
    """
    if convention not in ("rankme", "squared"):
        raise ValueError(f"convention must be 'rankme' or 'squared', got {convention!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    t = _as_float64(z)
    if center:
        t = t - t.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(t)
    if convention == "squared":
        s = s * s
    total = s.sum()
    if float(total) == 0.0:
        return 0.0
    p = s / total + eps
    # p > 0 whenever eps > 0; with eps = 0, 0 log 0 = 0.
    entropy = -torch.special.xlogy(p, p).sum()
    return float(torch.exp(entropy))


def normalized_std(z: ArrayLike, ddof: int = 1) -> float:
    """SimSiam collapse check: mean over dims of std over samples of the L2-normalised rows."""
    t = _l2_normalize_rows(_as_float64(z))
    return float(t.std(dim=0, correction=ddof).mean())


@dataclass(frozen=True)
class Spectrum:
    """Singular values of the (processed) embedding matrix and its covariance eigenvalues.

    ``singular_values``: length min(n, d), descending. ``covariance_eigenvalues``: length d,
    descending, eigenvalues of ``Z'Z / (n - 1)`` when centred (sample covariance) or ``Z'Z / n``
    (second-moment matrix) when not; entries beyond min(n, d) are exactly 0.
    """

    singular_values: np.ndarray
    covariance_eigenvalues: np.ndarray
    n_samples: int
    dim: int
    centered: bool
    normalized: bool


def embedding_spectrum(z: ArrayLike, center: bool = True, normalize: bool = False) -> Spectrum:
    """Spectrum of Z after optional row L2-normalisation (first) and column centring (second)."""
    t = _as_float64(z)
    n, d = t.shape
    if normalize:
        t = _l2_normalize_rows(t)
    if center:
        t = t - t.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(t).cpu().numpy()
    eig = np.zeros(d)
    eig[: s.size] = s**2 / (n - 1 if center else n)
    return Spectrum(
        singular_values=s,
        covariance_eigenvalues=eig,
        n_samples=n,
        dim=d,
        centered=center,
        normalized=normalize,
    )
