"""Check MI estimators against Theorem 1 of EMI: I(F(X); G(Y)) = I(X; Y) for homeomorphisms F, G.

The true MI does not move under per-side homeomorphisms, so any change of an estimate after a map
is estimator error (finite-sample bias that depends on the geometry of the sample, or model
misspecification, e.g. the Gaussian formula applied to non-Gaussian data).

Design: every map is applied to the SAME sample (same seed) as the untransformed row ("none"), so
in the paired difference ``estimate(map, seed) - estimate(none, seed)`` the sampling noise that both
share cancels; what remains is the map's systematic effect plus the part of the noise that the map
changes. :func:`summarise_invariance` reports both the size of the shift relative to the
estimator's seed-to-seed spread (practical invariance) and a paired z-score (detectability).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mitools.mi.homeomorphisms import Homeomorphism, Identity

__all__ = ["check_invariance", "summarise_invariance", "IDENTITY_NAME"]

IDENTITY_NAME = "none"

Sampler = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
Estimator = Callable[[np.ndarray, np.ndarray], float]


def _resolve_sampler(sampler, truth: float | None) -> tuple[Sampler, float]:
    """A ``(n, seed) -> (x, y)`` callable and the ground truth (NaN when unknown)."""
    if isinstance(sampler, tuple):
        if len(sampler) != 2:
            raise ValueError("sampler tuple must be (ggd, split)")
        ggd, split = sampler
        if not hasattr(ggd, "sample") or not callable(ggd.sample):
            raise ValueError(
                "sampler tuple must be (ggd, split) with a ggd that has .sample(n, seed)"
            )
        split = int(split)

        def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
            z = np.asarray(ggd.sample(n, seed))
            if z.ndim != 2 or not 0 < split < z.shape[1]:
                raise ValueError(
                    f"split {split} must lie strictly inside the sample dimension {z.shape}"
                )
            return z[:, :split], z[:, split:]

        if truth is None and hasattr(ggd, "mi"):
            truth = float(ggd.mi(split))
        return draw, (math.nan if truth is None else float(truth))
    if not callable(sampler):
        raise ValueError(
            f"sampler must be a callable (n, seed) -> (x, y) or a (ggd, split) tuple, got {type(sampler).__name__}"
        )
    if truth is None:
        truth = getattr(sampler, "truth", None)
    return sampler, (math.nan if truth is None else float(truth))


def _resolve_transforms(transforms) -> dict[str, tuple[Homeomorphism, Homeomorphism]]:
    """``{name: (F, G)}`` with the identity row ``"none"`` first."""
    if transforms is None or len(transforms) == 0:
        raise ValueError(
            "transforms is empty: give a dict name -> (F, G) or a list of Homeomorphism"
        )
    pairs: dict[str, tuple[Homeomorphism, Homeomorphism]] = {}
    if isinstance(transforms, Mapping):
        items = list(transforms.items())
    elif isinstance(transforms, Sequence) and not isinstance(transforms, str):
        items = []
        for t in transforms:
            if not isinstance(t, Homeomorphism):
                raise ValueError(f"transforms list must hold Homeomorphism objects, got {t!r}")
            items.append((t.name, t))
    else:
        raise ValueError(f"transforms must be a dict or a list, got {type(transforms).__name__}")
    for name, value in items:
        if isinstance(value, Homeomorphism):
            value = (value, value)
        if not (
            isinstance(value, tuple)
            and len(value) == 2
            and all(isinstance(v, Homeomorphism) for v in value)
        ):
            raise ValueError(f"transform {name!r} must be a Homeomorphism or a (F, G) pair of them")
        if name == IDENTITY_NAME:
            raise ValueError(
                f"transform name {IDENTITY_NAME!r} is reserved for the automatic identity row"
            )
        if name in pairs:
            raise ValueError(f"transform name {name!r} appears twice")
        pairs[str(name)] = value
    return {IDENTITY_NAME: (Identity(), Identity()), **pairs}


def _check_sample(x, y, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    for label, arr in (("x", x), ("y", y)):
        if arr.ndim not in (1, 2) or arr.shape[0] != n:
            raise ValueError(
                f"sampler returned {label} of shape {arr.shape} for n={n}, seed={seed}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"sampler returned non-finite {label} for seed={seed}")
    return x, y


def _dim(a: np.ndarray) -> int:
    return 1 if a.ndim == 1 else a.shape[1]


def check_invariance(
    sampler,
    transforms,
    estimators: Mapping[str, Estimator],
    n: int,
    seeds: Iterable[int],
    *,
    truth: float | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> pd.DataFrame:
    """Estimate MI before and after per-side homeomorphisms, on the same samples.

    Parameters
    ----------
    sampler : callable ``(n, seed) -> (x, y)`` or tuple ``(ggd, split)``
        For a GGD, ``x = z[:, :split]``, ``y = z[:, split:]`` of ``ggd.sample(n, seed)`` and the
        truth defaults to ``ggd.mi(split)``. A callable may carry a ``truth`` attribute.
    transforms : dict ``name -> (F, G)`` (or ``name -> H`` for F = G = H), or list of
        :class:`Homeomorphism` (applied to both sides, keyed by ``.name``). The identity row
        ``"none"`` is added automatically (the name is reserved).
    estimators : dict ``name -> callable(x, y) -> float`` (MI in nats).
    n : sample size (>= 2). seeds : sampler seeds (non-empty, distinct).
    truth : ground-truth MI in nats; overrides the sampler's.
    progress : optional wrapper of the seed iterable (e.g. a tqdm bar).

    Returns
    -------
    Tidy DataFrame, one row per (transform, estimator, seed): ``transform, estimator, seed, n,
    estimate, truth, dim_x, dim_y, seconds``. Rows of one seed share one sample.
    """
    src, truth_value = _resolve_sampler(sampler, truth)
    pairs = _resolve_transforms(transforms)
    if not isinstance(estimators, Mapping) or len(estimators) == 0:
        raise ValueError("estimators must be a non-empty dict name -> callable(x, y) -> float")
    for name, fn in estimators.items():
        if not callable(fn):
            raise ValueError(f"estimator {name!r} is not callable")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    seed_list = [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds is empty")
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct, got {seed_list}")

    rows = []
    iterator = progress(seed_list) if progress is not None else seed_list
    for seed in iterator:
        x, y = _check_sample(*src(int(n), seed), n=int(n), seed=seed)
        for tname, (f, g) in pairs.items():
            for side, m, arr in (("x", f, x), ("y", g, y)):
                if not m.supports(_dim(arr)):
                    raise ValueError(
                        f"transform {tname!r}: {m.name} needs dimension >= {m.min_dim}, {side} has {_dim(arr)}"
                    )
            fx, gy = f(x), g(y)
            if not (np.all(np.isfinite(fx)) and np.all(np.isfinite(gy))):
                raise ValueError(f"transform {tname!r} produced non-finite values (seed {seed})")
            for ename, fn in estimators.items():
                start = time.perf_counter()
                est = float(fn(fx, gy))
                rows.append(
                    {
                        "transform": tname,
                        "estimator": ename,
                        "seed": seed,
                        "n": int(n),
                        "estimate": est,
                        "truth": truth_value,
                        "dim_x": _dim(x),
                        "dim_y": _dim(y),
                        "seconds": time.perf_counter() - start,
                    }
                )
    return pd.DataFrame(rows)


def summarise_invariance(
    df: pd.DataFrame,
    by: Sequence[str] = (),
    spread_factor: float = 1.0,
    rounding_tol: float = 1e-12,
) -> pd.DataFrame:
    """Per (``*by``, transform, estimator): how far each map moves the estimate.

    Columns:

    - ``mean``, ``std``: mean and seed-to-seed standard deviation (ddof=1) of the estimates.
    - ``truth``, ``bias`` (= mean - truth), ``n_seeds``.
    - ``seed_spread``: ``std`` of the SAME estimator on the untransformed ("none") rows: the noise
      of one estimate at this n.
    - ``shift``: mean over seeds of the paired difference d_s = est(map, s) - est(none, s) (equal to
      mean(map) - mean(none) over common seeds).
    - ``shift_sd``: std of d_s across seeds (ddof=1). Because both estimates use one sample, the
      shared noise cancels and ``shift_sd`` is usually far below ``seed_spread``.
    - ``shift_over_spread`` = |shift| / seed_spread: is the map's effect small next to the
      estimator's own random error? (0 when shift == 0; NaN when the spread is 0 or undefined.)
    - ``paired_z`` = shift / (shift_sd / sqrt(S)): a paired t-statistic for "the map changes the
      expected estimate". With many seeds any non-zero finite-sample bias change becomes
      significant, so large |z| with small ``shift_over_spread`` means "detectable but practically
      negligible"; it is NOT the invariance criterion.
    - ``invariant_within_spread``: ``|shift| <= spread_factor * seed_spread``.

    A shift with ``|shift| <= rounding_tol * max(1, |mean of none|)`` is floating-point noise of
    an exactly invariant estimator (e.g. ``gaussian_mi`` under affine maps): it is reported as is
    but counts as 0 for ``shift_over_spread`` and ``paired_z`` (otherwise z = 1e-17 / 1e-17).

    ``by`` names extra grouping columns (e.g. a ``case`` column added by a driver).
    """
    if not spread_factor > 0:
        raise ValueError(f"spread_factor must be > 0, got {spread_factor}")
    required = {"transform", "estimator", "seed", "estimate"}
    missing = required - set(df.columns)
    if missing:
        raise ValueError(f"summarise_invariance: missing columns {sorted(missing)}")
    by = list(by)
    keys = [*by, "estimator"]
    base = df[df["transform"] == IDENTITY_NAME]
    if base.empty:
        raise ValueError(f"summarise_invariance: no identity rows (transform == {IDENTITY_NAME!r})")
    if base.duplicated([*keys, "seed"]).any():
        raise ValueError(
            "summarise_invariance: several identity rows share an (estimator, seed); "
            "name the columns that tell them apart (e.g. case, n) in `by`"
        )
    base = base[[*keys, "seed", "estimate"]].rename(columns={"estimate": "base"})
    merged = df.merge(base, on=[*keys, "seed"], how="inner")
    merged["diff"] = merged["estimate"] - merged["base"]

    out_rows = []
    for key, grp in merged.groupby([*by, "transform", "estimator"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        s = len(grp)
        spread = float(grp["base"].std(ddof=1)) if s > 1 else math.nan
        shift = float(grp["diff"].mean())
        shift_sd = float(grp["diff"].std(ddof=1)) if s > 1 else math.nan
        exact = abs(shift) <= rounding_tol * max(1.0, abs(float(grp["base"].mean())))
        if exact:
            ratio = 0.0
        elif spread > 0:
            ratio = abs(shift) / spread
        else:
            ratio = math.nan
        if exact:
            z = 0.0
        elif shift_sd > 0:
            z = shift / (shift_sd / math.sqrt(s))
        else:
            z = math.copysign(math.inf, shift) if shift_sd == 0 else math.nan
        truth = float(grp["truth"].mean()) if "truth" in grp else math.nan
        mean = float(grp["estimate"].mean())
        row = dict(zip([*by, "transform", "estimator"], key, strict=True))
        row.update(
            {
                "n_seeds": s,
                "mean": mean,
                "std": float(grp["estimate"].std(ddof=1)) if s > 1 else math.nan,
                "truth": truth,
                "bias": mean - truth,
                "seed_spread": spread,
                "shift": shift,
                "shift_sd": shift_sd,
                "shift_over_spread": ratio,
                "paired_z": z,
                "invariant_within_spread": bool(ratio <= spread_factor)
                if not math.isnan(ratio)
                else False,
            }
        )
        out_rows.append(row)
    return pd.DataFrame(out_rows)
