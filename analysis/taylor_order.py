"""How many Taylor terms does the EMI log-det surrogate need, and for which scale rule?

For K = 1..16 and each scale rule (mitools.logdet), measures on spectra with condition numbers
1 .. 1e6 (geometric spectra in random orthonormal bases, normalised to mean eigenvalue 1 as for
standardised features, so log det <= 0) and dimensions 64 .. 2048:

- the error of log det C (absolute, per dimension, and relative to |log det C|);
- the error of the Gaussian MI of two views, I = 1/2 [ld(C11) + ld(C22) - ld(C)], on a joint
  covariance with C11 = C22 = Sigma, C12 = Sigma^1/2 R Sigma^1/2 and canonical correlations
  rho_i ~ U(0, 0.9) in a second random basis (exact MI = -1/2 sum log(1 - rho_i^2));
- the cosine between the Taylor gradient and the exact gradient (w.r.t. the covariance) of both.

Every value comes from the spectrum: the truncated series equals ``d log s - sum_i sum_{k<=K}
m_i^k/k`` (m_i = 1 - lambda_i/s) and its gradient ``C^{-1}(I - M^K)``; tests/test_logdet.py
proves both identities for the matrix-product implementation to 1e-10, and the driver re-checks
the matrix path at d <= 256 (column ``matrix_check``). Scales are computed by the library
(``resolve_taylor_scale``) on the actual matrices.

Rows (tidy, ``taylor_order.csv``), column ``study``:
- "order": the sweep above (quantity = "logdet" | "mi");
- "breakdown": s = lambda_max / r for r in (0.25, 2.6): error vs the max ratio lambda_max/s,
  showing the divergence at r = 2;
- "running": a RunningScale (EMA) tracking a spectrum that grows by a factor ``growth`` per step;
  the lag of the EMA pushes lambda_max/s up, towards the region boundary.

With ``--checkpoint PATH`` the "order" study also runs on real embeddings: a .npy/.pt file holding
an (N, d) array (log-det only) or a (2, N, d) array / a .pt dict with "z1" and "z2" (two views:
log-det and MI), or a ``trainers.pretrain`` checkpoint, whose encoder embeds two augmented views
of its dataset's evaluation split (projector output).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis._common import (
    BadInput,
    base_parser,
    common_problem,
    fail,
    print_table,
    progress,
    run_and_record,
    write_table,
)
from mitools.logdet import (
    RunningScale,
    TaylorConvergenceWarning,
    logdet_taylor,
    resolve_taylor_scale,
    taylor_error_bound,
    taylor_series_from_eigenvalues,
)

NAME = "taylor_order"
F64 = torch.float64

#: Scale rules of the study. "trace_clamp" is ``scale="trace", on_violation="clamp"``.
RULES = ("max_eig", "midrange", "power", "trace", "trace_clamp")

FULL = {
    "dims": (64, 256, 1024),  # d = 2048 works (--dims) but costs ~10 min per case on 2 cores
    "kappas": (1.0, 1e1, 1e2, 1e3, 1e4, 1e6),
    "orders": tuple(range(1, 17)),
    "kmax": 20_000,
}
QUICK = {"dims": (64,), "kappas": (1.0, 1e2, 1e4), "orders": (1, 2, 4, 8, 16), "kmax": 2_000}


# ----------------------------------------------------------------------------------------------
# construction
# ----------------------------------------------------------------------------------------------


def geometric_spectrum(d: int, kappa: float) -> torch.Tensor:
    """lambda_i = kappa^(-i/(d-1)), i = 0..d-1, rescaled to mean 1 (condition number kappa)."""
    lam = torch.logspace(0, -math.log10(kappa), d, dtype=F64) if d > 1 else torch.ones(1, dtype=F64)
    return lam / lam.mean()


def random_orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def two_view_covariance(lam: torch.Tensor, gen: torch.Generator, rho_max: float = 0.9):
    """(Sigma, Q, J, exact MI): Sigma = Q diag(lam) Q', J = [[Sigma, C12], [C12', Sigma]] with
    C12 = Sigma^1/2 P diag(rho) P' Sigma^1/2 and rho ~ U(0, rho_max)."""
    d = lam.shape[0]
    Q = random_orthogonal(d, gen)
    P = random_orthogonal(d, gen)
    rho = torch.rand(d, generator=gen, dtype=F64) * rho_max
    sigma = (Q * lam) @ Q.T
    root = (Q * lam.sqrt()) @ Q.T
    c12 = root @ ((P * rho) @ P.T) @ root
    J = torch.cat([torch.cat([sigma, c12], 1), torch.cat([c12.T, sigma], 1)], 0)
    J = 0.5 * (J + J.T)
    mi = float(-0.5 * torch.log1p(-(rho**2)).sum())
    return 0.5 * (sigma + sigma.T), Q, J, mi


# ----------------------------------------------------------------------------------------------
# spectral evaluation of the truncated series and its gradient
# ----------------------------------------------------------------------------------------------


def scale_for(rule: str, C: torch.Tensor, eigenvalues: torch.Tensor | None = None) -> float:
    """The scale the library uses for ``rule`` on C (eigenvalue rules reuse known eigenvalues)."""
    if rule == "max_eig" and eigenvalues is not None:
        return float(eigenvalues.max())
    if rule == "midrange" and eigenvalues is not None:
        return float(0.5 * (eigenvalues.max() + eigenvalues.min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaylorConvergenceWarning)
        if rule == "trace_clamp":
            return float(resolve_taylor_scale(C, "trace", on_violation="clamp"))
        return float(resolve_taylor_scale(C, rule, on_violation="ignore"))


def series_terms(lam: torch.Tensor, s: float, orders) -> tuple[torch.Tensor, torch.Tensor]:
    """For each K in ``orders``: the series value ``d log s - sum_i sum_{k<=K} m_i^k/k`` and the
    spectral gradient factors ``(1 - m_i^K)/lambda_i`` (shape (len(orders), d))."""
    m = 1.0 - lam / s
    kmax = max(orders)
    k = torch.arange(1, kmax + 1, dtype=F64)
    terms = m[None, :] ** k[:, None] / k[:, None]  # (kmax, d)
    partial = terms.sum(1).cumsum(0)  # sum over eigenvalues, cumulative over k
    idx = torch.tensor(orders) - 1
    values = lam.shape[0] * math.log(s) - partial[idx]
    grads = (1.0 - m[None, :] ** torch.tensor(orders, dtype=F64)[:, None]) / lam[None, :]
    return values, grads


def series_errors_all_orders(lam: torch.Tensor, s: float, kmax: int) -> np.ndarray:
    """Truncated-series values for K = 1..kmax (float64 array), by running partial sums."""
    m = 1.0 - lam.numpy() / s
    term = m.copy()
    partial = np.empty(kmax)
    acc = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, kmax + 1):
            acc += term.sum() / k
            partial[k - 1] = acc
            term *= m
    return lam.shape[0] * math.log(s) - partial


def first_order_staying_below(rel_err: np.ndarray, tol: float) -> float:
    """Smallest K such that rel_err[K'] <= tol for every K' >= K up to kmax; NaN if none."""
    bad = np.flatnonzero(~(rel_err <= tol))
    if len(bad) == 0:
        return 1.0
    if bad[-1] == len(rel_err) - 1:
        return float("nan")
    return float(bad[-1] + 2)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _ratio_stats(lam: torch.Tensor, s: float) -> tuple[float, float, float]:
    mx, mn = float(lam.max() / s), float(lam.min() / s)
    return mx, mn, max(abs(1 - mx), abs(1 - mn))


def _k_row(quantity: str, rule: str, tol: float, order: float, kmax: int) -> dict:
    return {
        "study": "k_needed",
        "quantity": quantity,
        "scale": rule,
        "tol": tol,
        "order": order,
        "kmax": kmax,
    }


def study_matrices(
    blocks: list[torch.Tensor],
    joint: torch.Tensor | None,
    orders,
    rules=RULES,
    mi_reference: float | None = None,
    matrix_check: bool = False,
    kmax: int = 0,
    tols=(1e-2, 1e-3),
) -> list[dict]:
    """Rows for one set of matrices: log det of ``blocks[0]``; MI from ``blocks`` and ``joint``.

    The MI gradient cosine uses G = 1/2 [blockdiag(g(C11), g(C22)) - g(J)] with g(A) = A^{-1}
    (exact) or A^{-1}(I - M_A^K) (Taylor); inner products between functions of the two bases go
    through P = (Qb' V)^2 (Qb: block eigenvectors, V: eigenvectors of J), so every order and rule
    costs O(d^2) after one O(d^3) set-up.

    ``grad_cos_embedding`` is the cosine of the gradients with respect to embeddings Z whose
    (uncentred) covariance is the matrix, Z'Z/N = C: dL/dZ = 2 Z G / N, so
    <Z G1, Z G2> = N tr(G1 C G2). It weights directions by their variance instead of letting the
    1/lambda of the smallest eigenvalues dominate; for the MI, tr(A1 J A2) needs diag(Qb' J Qb).
    """
    cache: dict[int, tuple] = {}  # C11 and C22 are often the same matrix
    for B in blocks:
        if id(B) not in cache:
            cache[id(B)] = torch.linalg.eigh(B)
    eig_blocks = [cache[id(B)] for B in blocks]
    lam0 = eig_blocks[0].eigenvalues
    ld0 = float(torch.log(lam0).sum())
    d0 = lam0.shape[0]
    rows = []
    if joint is not None:
        mu, V = torch.linalg.eigh(joint)
        lam_b = torch.cat([e.eigenvalues for e in eig_blocks])
        Qb = torch.block_diag(*[e.eigenvectors for e in eig_blocks])
        QV = Qb.T @ V
        P = QV**2
        x_diag = P @ mu  # diagonal of Qb' J Qb
        mi_exact = 0.5 * (
            sum(float(torch.log(e.eigenvalues).sum()) for e in eig_blocks)
            - float(torch.log(mu).sum())
        )
        a_ex, b_ex = 1.0 / lam_b, 1.0 / mu
    for rule in rules:
        s0 = scale_for(rule, blocks[0], lam0)
        if kmax and abs(ld0) > 1e-9 * d0:  # relative error undefined when log det = 0 (kappa = 1)
            rel = np.abs(series_errors_all_orders(lam0, s0, kmax) - ld0) / abs(ld0)
            for tol in tols:
                rows.append(_k_row("logdet", rule, tol, first_order_staying_below(rel, tol), kmax))
        vals, grads = series_terms(lam0, s0, orders)
        gcos = _cos(grads, (1.0 / lam0)[None, :])
        root = lam0.sqrt()[None, :]
        gcos_z = _cos(grads * root, root / lam0[None, :])
        mx, mn, q = _ratio_stats(lam0, s0)
        check = {}
        if matrix_check:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TaylorConvergenceWarning)
                K = max(orders)
                mat = float(
                    logdet_taylor(blocks[0], K, scale=s0, float64=True, on_violation="ignore")
                )
            check[K] = abs(mat - float(vals[-1])) / max(1.0, abs(mat))
        for i, K in enumerate(orders):
            err = float(vals[i]) - ld0
            rows.append(
                {
                    "study": "order",
                    "quantity": "logdet",
                    "scale": rule,
                    "order": K,
                    "exact": ld0,
                    "taylor": float(vals[i]),
                    "abs_err": abs(err),
                    "signed_err": err,
                    "abs_err_per_dim": abs(err) / d0,
                    "rel_err": abs(err) / abs(ld0) if abs(ld0) > 1e-9 * d0 else float("nan"),
                    "grad_cos": float(gcos[i]),
                    "grad_cos_embedding": float(gcos_z[i]),
                    "max_ratio": mx,
                    "min_ratio": mn,
                    "q": q,
                    "in_region": 0 < mn and mx < 2,
                    "error_bound": taylor_error_bound(
                        K, s0, float(lam0.min()), float(lam0.max()), d0
                    ),
                    "matrix_check": check.get(K, float("nan")),
                }
            )
        if joint is None:
            continue
        # MI: each log det gets its own scale from the same rule
        block_vals, block_grads, stats = [], [], [(mx, mn, q)]
        for e, B in zip(eig_blocks, blocks, strict=True):
            s_b = s0 if B is blocks[0] else scale_for(rule, B, e.eigenvalues)
            v, g = series_terms(e.eigenvalues, s_b, orders)
            block_vals.append(v)
            block_grads.append(g)
            stats.append(_ratio_stats(e.eigenvalues, s_b))
        s_j = scale_for(rule, joint, mu)
        vj, gj = series_terms(mu, s_j, orders)
        stats.append(_ratio_stats(mu, s_j))
        mi_k = 0.5 * (sum(block_vals) - vj)
        if kmax:
            all_k = -series_errors_all_orders(mu, s_j, kmax)
            for e, B in zip(eig_blocks, blocks, strict=True):
                s_b = s0 if B is blocks[0] else scale_for(rule, B, e.eigenvalues)
                all_k = all_k + series_errors_all_orders(e.eigenvalues, s_b, kmax)
            rel = np.abs(0.5 * all_k - mi_exact) / abs(mi_exact)
            for tol in tols:
                rows.append(_k_row("mi", rule, tol, first_order_staying_below(rel, tol), kmax))
        a_k = torch.cat(block_grads, 1)  # (orders, 2d)
        b_k = gj
        dot = (a_k @ a_ex) - (a_k @ P @ b_ex) - (a_ex @ P @ b_k.T) + (b_k @ b_ex)
        norm_k = ((a_k**2).sum(1) - 2 * ((a_k @ P) * b_k).sum(1) + (b_k**2).sum(1)).sqrt()
        norm_ex = math.sqrt(float(a_ex @ a_ex - 2 * a_ex @ P @ b_ex + b_ex @ b_ex))
        mi_cos = dot / (norm_k * norm_ex)
        # embedding-space version: tr(G1 J G2)
        mb_ex, mb_k = mu * b_ex, mu[None, :] * b_k
        dot_z = ((a_k * x_diag) @ a_ex) - (a_k @ P @ mb_ex) - (a_ex @ P @ mb_k.T) + (b_k @ mb_ex)
        norm_k_z = (a_k**2 * x_diag).sum(1) - 2 * ((a_k @ P) * mb_k).sum(1) + (b_k * mb_k).sum(1)
        norm_ex_z = float((a_ex**2 * x_diag).sum() - 2 * a_ex @ P @ mb_ex + b_ex @ mb_ex)
        mi_cos_z = dot_z / (norm_k_z.clamp_min(0).sqrt() * math.sqrt(max(norm_ex_z, 0.0)))
        mx_all = max(st[0] for st in stats)
        mn_all = min(st[1] for st in stats)
        q_all = max(st[2] for st in stats)
        for i, K in enumerate(orders):
            err = float(mi_k[i]) - mi_exact
            rows.append(
                {
                    "study": "order",
                    "quantity": "mi",
                    "scale": rule,
                    "order": K,
                    "exact": mi_exact,
                    "taylor": float(mi_k[i]),
                    "abs_err": abs(err),
                    "signed_err": err,
                    "abs_err_per_dim": abs(err) / d0,
                    "rel_err": abs(err) / abs(mi_exact),
                    "grad_cos": float(mi_cos[i]),
                    "grad_cos_embedding": float(mi_cos_z[i]),
                    "max_ratio": mx_all,
                    "min_ratio": mn_all,
                    "q": q_all,
                    "in_region": 0 < mn_all and mx_all < 2,
                    "error_bound": float("nan"),
                    "matrix_check": float("nan"),
                    "mi_reference": mi_reference if mi_reference is not None else float("nan"),
                }
            )
    return rows


# ----------------------------------------------------------------------------------------------
# sub-studies
# ----------------------------------------------------------------------------------------------


def breakdown_rows(d: int, kappas, orders, gen: torch.Generator) -> list[dict]:
    """Error of log det as the scale moves through the region: s = lambda_max / r."""
    rows = []
    for kappa in kappas:
        lam = geometric_spectrum(d, kappa)
        ld = float(torch.log(lam).sum())
        for r in np.round(np.linspace(0.25, 2.6, 48), 4):
            s = float(lam.max()) / float(r)
            vals, grads = series_terms(lam, s, orders)
            gcos = _cos(grads, (1.0 / lam)[None, :])
            mx, mn, q = _ratio_stats(lam, s)
            for i, K in enumerate(orders):
                err = float(vals[i]) - ld
                rows.append(
                    {
                        "study": "breakdown",
                        "source": "geometric",
                        "d": d,
                        "kappa": kappa,
                        "scale": "fixed",
                        "order": K,
                        "quantity": "logdet",
                        "exact": ld,
                        "taylor": float(vals[i]),
                        "abs_err": abs(err),
                        "signed_err": err,
                        "abs_err_per_dim": abs(err) / d,
                        "rel_err": abs(err) / abs(ld),
                        "grad_cos": float(gcos[i]),
                        "max_ratio": mx,
                        "min_ratio": mn,
                        "q": q,
                        "in_region": mx < 2,
                    }
                )
    return rows


def running_rows(
    d: int, growths, momenta, steps: int, order: int, gen: torch.Generator, safety: float = 1.05
) -> list[dict]:
    """RunningScale tracking a spectrum scaled by growth^t: the EMA lags, lambda_max/s drifts to
    (1 - m/g) / ((1 - m) * safety) (steady state, growth g > m)."""
    lam = geometric_spectrum(d, 10.0)
    Q = random_orthogonal(d, gen)
    base = (Q * lam) @ Q.T
    rows = []
    for m in momenta:
        for g in growths:
            rs = RunningScale(momentum=m, safety=safety, power_iters=20)
            worst = 0.0
            for t in range(steps):
                C = base * g**t
                s = float(rs(C))
                ratio = float(lam.max()) * g**t / s
                if t >= steps // 2:
                    worst = max(worst, ratio)
            lam_t = lam * g ** (steps - 1)
            val = float(taylor_series_from_eigenvalues(lam_t, order, s))
            ld = float(torch.log(lam_t).sum())
            steady = (1 - m / g) / ((1 - m) * safety) if g > m else float("nan")
            rows.append(
                {
                    "study": "running",
                    "source": "geometric",
                    "d": d,
                    "kappa": 10.0,
                    "scale": "running",
                    "order": order,
                    "quantity": "logdet",
                    "exact": ld,
                    "taylor": val,
                    "abs_err": abs(val - ld),
                    "signed_err": val - ld,
                    "abs_err_per_dim": abs(val - ld) / d,
                    "rel_err": abs(val - ld) / abs(ld),
                    "max_ratio": worst,
                    "in_region": worst < 2,
                    "growth": g,
                    "momentum": m,
                    "steady_state_ratio": steady,
                    "steps": steps,
                }
            )
    return rows


def largest_geometric_order_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The order-sweep rows of the synthetic (geometric) spectra at the largest dimension: what the
    figures plot."""
    order = df[(df["study"] == "order") & (df["source"] == "geometric")]
    return order[order["d"] == order["d"].max()]


def embeddings_from_trainer_checkpoint(
    checkpoint: dict, samples: int = 2048, seed: int = 0
) -> list[torch.Tensor]:
    """Two augmented views' projector embeddings from a loaded ``trainers.pretrain`` checkpoint.

    The encoder is rebuilt from the checkpoint alone (its ``encoder_spec``); the images are the
    first ``samples`` of the evaluation split of the dataset named in the stored config (digits by
    default), augmented twice by the dataset's preset (:class:`BatchAugment`, seeded).
    """
    from mitools.data import build_dataset, get_spec
    from mitools.data.augment import BatchAugment, loader_transform, preset_for
    from mitools.models import build_encoder_from_checkpoint_dict

    model = build_encoder_from_checkpoint_dict(checkpoint["encoder_spec"], checkpoint["model"])
    config = checkpoint.get("config")
    data_cfg = config.get("data", {}) if isinstance(config, dict) else {}
    name = data_cfg.get("name", "digits")
    dataset = build_dataset(
        name, data_cfg.get("root"), get_spec(name).eval_split, transform=loader_transform(name)
    )
    n = min(samples, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(n)])
    generator = torch.Generator().manual_seed(seed)
    x1, x2 = BatchAugment(preset_for(name))(images, generator)
    with torch.no_grad():
        return [model.projector(model.backbone(x)).to(F64) for x in (x1, x2)]


def load_embeddings(path: str | Path) -> list[torch.Tensor]:
    """One (N, d) view or two views from a .npy / .npz / .pt file (see module docstring), or two
    views embedded by a trainer checkpoint (.pt holding ``model`` and ``encoder_spec``)."""
    path = Path(path)
    obj = None
    if path.suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "encoder_spec" in obj and "model" in obj:
            return embeddings_from_trainer_checkpoint(obj)
    if path.suffix == ".npy":
        arr = torch.from_numpy(np.load(path))
    elif path.suffix == ".npz":
        data = np.load(path)
        arr = (
            torch.stack([torch.from_numpy(data["z1"]), torch.from_numpy(data["z2"])])
            if "z1" in data
            else torch.from_numpy(data[data.files[0]])
        )
    elif path.suffix in (".pt", ".pth"):
        if isinstance(obj, dict):
            if not {"z1", "z2"} <= set(obj):
                raise ValueError(f"{path}: a dict must hold 'z1' and 'z2', found {sorted(obj)}")
            arr = torch.stack([torch.as_tensor(obj["z1"]), torch.as_tensor(obj["z2"])])
        else:
            arr = torch.as_tensor(obj)
    else:
        raise ValueError(
            f"{path}: expected .npy, .npz or .pt embeddings, or a trainer checkpoint (.pt)"
        )
    arr = arr.to(F64)
    if arr.ndim == 2:
        views = [arr]
    elif arr.ndim == 3 and arr.shape[0] == 2:
        views = [arr[0], arr[1]]
    else:
        raise ValueError(
            f"{path}: embeddings must have shape (N, d) or (2, N, d), got {tuple(arr.shape)}"
        )
    if not bool(torch.isfinite(arr).all()):
        raise ValueError(f"{path}: embeddings contain NaN or inf")
    if views[0].shape[0] < 2:
        raise ValueError(f"{path}: need at least 2 samples, got {views[0].shape[0]}")
    return views


def covariance(z: torch.Tensor) -> torch.Tensor:
    z = z - z.mean(0)
    return z.T @ z / (z.shape[0] - 1)


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def run(
    quick: bool,
    out: Path,
    seed: int = 0,
    dims=None,
    kappas=None,
    orders=None,
    rules=RULES,
    checkpoint: str | Path | None = None,
    ridge: float = 1e-6,
    kmax: int | None = None,
) -> pd.DataFrame:
    """Run the three studies and write ``taylor_order.csv`` (+ .json metadata) to ``out``."""
    cfg = QUICK if quick else FULL
    dims = tuple(dims or cfg["dims"])
    kappas = tuple(kappas or cfg["kappas"])
    orders = tuple(sorted(orders or cfg["orders"]))
    kmax = kmax or cfg["kmax"]
    views = None
    if checkpoint is not None:  # first, so that a bad file fails before the studies
        try:
            views = load_embeddings(checkpoint)
        except ValueError as exc:  # the file was read; its content is wrong (message names it)
            raise BadInput(str(exc)) from exc
        except Exception as exc:  # unreadable: torch.load / np.load raise many kinds
            raise BadInput(f"{checkpoint}: cannot read ({type(exc).__name__}: {exc})") from exc
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    cases = [(d, k) for d in dims for k in kappas]
    for d, kappa in progress(cases, desc="taylor order: spectra"):
        lam = geometric_spectrum(d, kappa)
        sigma, _, J, mi = two_view_covariance(lam, gen)
        for row in study_matrices(
            [sigma, sigma], J, orders, rules, mi_reference=mi, matrix_check=d <= 256, kmax=kmax
        ):
            rows.append(
                {
                    "source": "geometric",
                    "d": d,
                    "kappa": kappa,
                    "seed": seed,
                    **row,
                }
            )
    if views is not None:
        covs = [covariance(v) for v in views]
        mean_diag = float(torch.diagonal(covs[0]).mean())
        eye = torch.eye(covs[0].shape[0], dtype=F64)
        blocks = [c + ridge * mean_diag * eye for c in covs]
        joint = None
        if len(views) == 2:
            joint = covariance(torch.cat(views, 1))
            joint = joint + ridge * mean_diag * torch.eye(joint.shape[0], dtype=F64)
        ev = torch.linalg.eigvalsh(blocks[0])
        kappa = float(ev.max() / ev.min())
        for row in study_matrices(
            blocks if joint is not None else blocks[:1], joint, orders, rules, kmax=kmax
        ):
            rows.append(
                {
                    "source": Path(checkpoint).name,
                    "d": blocks[0].shape[0],
                    "kappa": kappa,
                    "seed": seed,
                    **row,
                }
            )
    bd_d = 64
    rows += breakdown_rows(bd_d, (10.0, 1e3) if quick else (10.0, 1e2, 1e3, 1e4), (4, 8, 16), gen)
    rows += running_rows(
        32,
        growths=(0.99, 1.0, 1.005, 1.01, 1.02, 1.05)
        if quick
        else (0.98, 0.99, 1.0, 1.002, 1.005, 1.01, 1.015, 1.02, 1.05, 1.1),
        momenta=(0.9, 0.99),
        steps=120 if quick else 600,
        order=8,
        gen=gen,
    )
    df = pd.DataFrame(rows)
    meta = {
        "quick": quick,
        "seed": seed,
        "dims": dims,
        "kappas": kappas,
        "orders": orders,
        "kmax_for_k_needed": kmax,
        "rules": list(rules),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "ridge_for_checkpoint": ridge,
        "spectrum": "geometric, mean eigenvalue 1, random orthonormal basis",
        "mi_model": "C11=C22=Sigma, C12=Sigma^1/2 P diag(rho) P' Sigma^1/2, rho~U(0,0.9)",
        "power_iters": 20,
        "safety": 1.05,
        "clamp_margin": 0.1,
    }
    write_table(df, out, NAME, meta)
    return df


def summary(df: pd.DataFrame, tol: float = 1e-3) -> pd.DataFrame:
    """Order K from which the relative error stays <= tol (study "k_needed"), one row per
    (source, quantity, d, kappa) and one column per scale rule; NaN = not reached by kmax."""
    sub = df[(df["study"] == "k_needed") & (df["tol"] == tol)]
    return sub.set_index(["source", "quantity", "d", "kappa", "scale"])["order"].unstack("scale")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        __doc__,
        prog="analysis.taylor_order",
        quick_help="d = 64, three condition numbers, orders 1-16 in powers of 2: about 10 seconds",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="embeddings file: .npy/.npz/.pt with an (N, d) array, a (2, N, d) array, or a .pt dict "
        "{'z1','z2'} of two views, or a trainer checkpoint (two augmented views of its dataset's "
        "evaluation split are embedded through the projector).",
    )
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="override dimensions")
    parser.add_argument(
        "--kappas", type=float, nargs="+", default=None, help="override condition numbers"
    )
    parser.add_argument(
        "--orders", type=int, nargs="+", default=None, help="override Taylor orders"
    )
    args = parser.parse_args(argv)
    problem = common_problem(args)
    if not problem and args.checkpoint is not None and not Path(args.checkpoint).is_file():
        problem = f"--checkpoint {args.checkpoint}: no such file"
    if not problem and args.dims and min(args.dims) < 1:
        problem = f"--dims must be >= 1, got {args.dims}"
    if not problem and args.kappas and not min(args.kappas) >= 1:
        problem = f"--kappas must be >= 1 (condition numbers), got {args.kappas}"
    if not problem and args.orders and min(args.orders) < 1:
        problem = f"--orders must be >= 1, got {args.orders}"
    if problem:
        return fail(problem)
    try:
        df, _ = run_and_record(
            run,
            quick=args.quick,
            out=Path(args.out),
            seed=args.seed,
            dims=args.dims,
            kappas=args.kappas,
            orders=args.orders,
            checkpoint=args.checkpoint,
        )
    except BadInput as exc:  # raised before the studies start
        return fail(exc)
    kmax = int(df["kmax"].max())
    for tol in (1e-2, 1e-3):
        print(f"order K from which the relative error stays <= {tol:g} (NaN: not by K={kmax})")
        print_table(summary(df, tol))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
