"""check_invariance / summarise_invariance: structure, pairing, validation, and the science check of
EMI Theorem 1 (I(F(X); G(Y)) = I(X; Y)) on KSG and on the Gaussian (second-order) estimator.

Invariance criterion used below ("within spread"): |mean over seeds of the paired difference
est(map, s) - est(none, s)| <= 1 x the seed-to-seed standard deviation of the untransformed
estimate (ddof=1). "Visibly moves": |paired z| > 3 and, for the strongly nonlinear maps,
|shift| > 1 x that seed spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mitools.mi.ggd import GGD
from mitools.mi.homeomorphisms import (
    Affine,
    Asinh,
    HalfCube,
    Identity,
    NormalCDF,
    RandomMonotoneRotation,
    Spiral,
    Wiggly,
    default_homeomorphisms,
)
from mitools.mi.invariance import check_invariance, summarise_invariance

RHO_HALF_NAT = float(np.sqrt(1.0 - np.exp(-1.0)))  # -1/2 log(1 - rho^2) = 0.5 nats


def gaussian_pair(rho: float):
    """Bivariate standard normal sampler with correlation rho; truth -1/2 log(1 - rho^2)."""

    def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(n)
        y = rho * x + np.sqrt(1.0 - rho**2) * rng.standard_normal(n)
        return x, y

    draw.truth = -0.5 * np.log1p(-(rho**2))
    return draw


def _first_x(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.ravel(x)[0])


def _first_y(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.ravel(y)[0])


# -- structure and pairing


def test_output_is_tidy_and_rows_share_one_sample_per_seed() -> None:
    sampler = gaussian_pair(0.5)
    transforms = {"scale": (Affine(2.0, 1.0), Identity()), "cube": HalfCube()}
    df = check_invariance(
        sampler, transforms, {"x0": _first_x, "y0": _first_y}, n=50, seeds=[3, 4, 5]
    )
    assert list(df.columns[:6]) == ["transform", "estimator", "seed", "n", "estimate", "truth"]
    assert len(df) == 3 * 2 * 3
    assert list(dict.fromkeys(df["transform"])) == ["none", "scale", "cube"]
    assert (df["n"] == 50).all() and (df[["dim_x", "dim_y"]] == 1).all().all()
    np.testing.assert_allclose(df["truth"], -0.5 * np.log(1 - 0.25))
    for seed in (3, 4, 5):
        x, y = sampler(50, seed)
        row = df[df["seed"] == seed].set_index(["transform", "estimator"])["estimate"]
        assert row["none", "x0"] == x[0] and row["none", "y0"] == y[0]
        assert row["scale", "x0"] == 2.0 * x[0] + 1.0 and row["scale", "y0"] == y[0]
        assert (
            row["cube", "x0"] == HalfCube()(x[:1])[0] and row["cube", "y0"] == HalfCube()(y[:1])[0]
        )


def test_list_of_maps_and_ggd_tuple_sampler() -> None:
    cov = np.eye(4)
    cov[0, 2] = cov[2, 0] = 0.6
    ggd = GGD(cov=cov, beta=0.5)
    maps = [Asinh(), Spiral(speed=0.3)]
    df = check_invariance((ggd, 2), maps, {"x0": _first_x}, n=20, seeds=[0, 1])
    assert sorted(set(df["transform"])) == ["asinh", "none", "spiral"]
    assert (df["dim_x"] == 2).all() and (df["dim_y"] == 2).all()
    np.testing.assert_allclose(df["truth"], ggd.mi(2))
    z = ggd.sample(20, 1)
    est = df.set_index(["transform", "seed"])["estimate"]
    assert est["none", 1] == z[0, 0]
    assert est["asinh", 1] == np.arcsinh(z[0, 0])
    # truth argument overrides the sampler's
    df2 = check_invariance((ggd, 2), maps, {"x0": _first_x}, n=20, seeds=[0], truth=1.25)
    assert (df2["truth"] == 1.25).all()


def test_unknown_truth_is_nan() -> None:
    df = check_invariance(
        lambda n, s: (np.arange(n) * 1.0, np.arange(n) * 2.0), [Asinh()], {"x0": _first_x}, 5, [0]
    )
    assert df["truth"].isna().all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": 3}, "sampler must be a callable"),
        ({"sampler": (object(), 1)}, "ggd"),
        ({"transforms": {}}, "transforms is empty"),
        ({"transforms": []}, "transforms is empty"),
        ({"transforms": {"none": Asinh()}}, "reserved"),
        ({"transforms": {"a": (Asinh(), 3)}}, "pair"),
        ({"transforms": [Asinh(), "x"]}, "Homeomorphism"),
        ({"estimators": {}}, "estimators"),
        ({"estimators": {"bad": 1.0}}, "not callable"),
        ({"n": 1}, "n must be an integer >= 2"),
        ({"n": 10.5}, "n must be an integer >= 2"),
        ({"seeds": []}, "seeds is empty"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"transforms": [Spiral()]}, "dimension >= 2"),
        ({"sampler": lambda n, s: (np.zeros(n - 1), np.zeros(n))}, "shape"),
        ({"sampler": lambda n, s: (np.full(n, np.nan), np.zeros(n))}, "non-finite"),
        (
            {"transforms": [NormalCDF()], "sampler": lambda n, s: (np.full(n, 9.0), np.zeros(n))},
            "saturates",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(kwargs: dict, message: str) -> None:
    args = {
        "sampler": gaussian_pair(0.5),
        "transforms": [Asinh()],
        "estimators": {"x0": _first_x},
        "n": 10,
        "seeds": [0],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        check_invariance(**args)


def test_summary_against_hand_computation() -> None:
    base = np.array([1.0, 1.2, 0.9, 1.1])
    moved = np.array([1.5, 1.6, 1.45, 1.55])
    rows = [
        {"transform": t, "estimator": "e", "seed": s, "estimate": v, "truth": 1.0}
        for t, vals in (("none", base), ("m", moved), ("same", base + 1e-15))
        for s, v in enumerate(vals)
    ]
    out = summarise_invariance(pd.DataFrame(rows)).set_index("transform")
    d = moved - base
    spread = base.std(ddof=1)
    assert out.loc["m", "shift"] == pytest.approx(d.mean(), rel=1e-14)
    assert out.loc["m", "seed_spread"] == pytest.approx(spread, rel=1e-14)
    assert out.loc["m", "shift_sd"] == pytest.approx(d.std(ddof=1), rel=1e-14)
    assert out.loc["m", "shift_over_spread"] == pytest.approx(abs(d.mean()) / spread, rel=1e-14)
    assert out.loc["m", "paired_z"] == pytest.approx(d.mean() / (d.std(ddof=1) / 2.0), rel=1e-14)
    assert out.loc["m", "bias"] == pytest.approx(moved.mean() - 1.0, rel=1e-14)
    assert not out.loc["m", "invariant_within_spread"]
    assert out.loc["same", "shift_over_spread"] == 0.0 and out.loc["same", "paired_z"] == 0.0
    assert out.loc["same", "invariant_within_spread"] and out.loc["none", "invariant_within_spread"]
    loose = summarise_invariance(pd.DataFrame(rows), spread_factor=5.0).set_index("transform")
    assert loose.loc["m", "invariant_within_spread"]
    with pytest.raises(ValueError, match="identity"):
        summarise_invariance(pd.DataFrame(rows[4:]))
    with pytest.raises(ValueError, match="by"):
        summarise_invariance(pd.concat([pd.DataFrame(rows)] * 2))


# -- true invariants of the estimators (exact, or exact up to rounding)


def test_ksg_exact_invariants() -> None:
    """KSG uses max-norm distances and neighbour counts only, so these leave it bit-identical:
    sign flips and permutations of coordinates within a side, swapping X and Y, and scaling every
    coordinate of both sides by one power of 2 (exact in floating point)."""
    from mitools.mi.estimators import ksg_mi

    z = GGD(cov=np.eye(4) + 0.5 * np.fliplr(np.eye(4)), beta=0.5).sample(600, 0)
    x, y = z[:, :2], z[:, 2:]
    ref = ksg_mi(x, y, k=5)
    flips = np.array([-1.0, 1.0])
    for name, (xx, yy) in {
        "sign flip": (x * flips, -y),
        "permute x": (x[:, ::-1], y),
        "swap sides": (y, x),
        "scale by 4": (4.0 * x, 4.0 * y),
    }.items():
        assert ksg_mi(xx, yy, k=5) == ref, name


def test_gaussian_mi_invariant_under_per_side_affine_maps() -> None:
    """Second-order MI depends on the covariance only through det ratios that an invertible
    linear map per side leaves unchanged: invariant up to rounding (checked to 1e-10)."""
    from mitools.mi.estimators import gaussian_mi

    rng = np.random.default_rng(0)
    z = GGD(cov=np.eye(4) + 0.5 * np.fliplr(np.eye(4)), beta=2.0).sample(500, 1)
    x, y = z[:, :2], z[:, 2:]
    f = Affine(rng.standard_normal((2, 2)) + 2 * np.eye(2), rng.standard_normal(2))
    g = Affine(rng.standard_normal((2, 2)) + 2 * np.eye(2), rng.standard_normal(2))
    assert gaussian_mi(f(x), g(y)) == pytest.approx(gaussian_mi(x, y), abs=1e-10)


# -- science: Theorem 1 on data


N_SCIENCE, SEEDS = 2000, range(10)
NONLINEAR_1D = ["half_cube", "asinh", "normal_cdf", "wiggly", "random_monotone_rotation"]


def _estimators():
    from mitools.mi.estimators import gaussian_mi, ksg_mi

    return {"ksg": lambda x, y: ksg_mi(x, y, k=5), "gaussian": gaussian_mi}


@pytest.fixture(scope="module")
def gaussian_1d_summary() -> pd.DataFrame:
    maps = {k: v for k, v in default_homeomorphisms().items() if v.supports(1)}
    df = check_invariance(gaussian_pair(RHO_HALF_NAT), maps, _estimators(), N_SCIENCE, SEEDS)
    return summarise_invariance(df).set_index(["transform", "estimator"])


@pytest.fixture(scope="module")
def ggd_2d_summary() -> pd.DataFrame:
    cov = np.eye(4)
    cov[0, 2] = cov[2, 0] = cov[1, 3] = cov[3, 1] = 0.7
    df = check_invariance(
        (GGD(cov=cov, beta=0.5), 2), default_homeomorphisms(), _estimators(), N_SCIENCE, SEEDS
    )
    return summarise_invariance(df).set_index(["transform", "estimator"])


def test_gaussian_case_truth_and_baseline(gaussian_1d_summary: pd.DataFrame) -> None:
    row = gaussian_1d_summary.loc["none"]
    assert row.loc["ksg", "truth"] == pytest.approx(0.5, abs=1e-12)
    # both estimators are consistent here: within 3 standard errors of 0.5
    for est in ("ksg", "gaussian"):
        se = row.loc[est, "std"] / np.sqrt(len(SEEDS))
        assert abs(row.loc[est, "mean"] - 0.5) <= 3 * se + 0.01, est


@pytest.mark.parametrize("name", [*NONLINEAR_1D, "affine"])
def test_ksg_invariant_within_spread_gaussian_1d(
    gaussian_1d_summary: pd.DataFrame, name: str
) -> None:
    row = gaussian_1d_summary.loc[(name, "ksg")]
    assert row["invariant_within_spread"], row.to_dict()


@pytest.mark.parametrize("name", NONLINEAR_1D)
def test_gaussian_mi_moves_under_nonlinear_maps_gaussian_1d(
    gaussian_1d_summary: pd.DataFrame, name: str
) -> None:
    row = gaussian_1d_summary.loc[(name, "gaussian")]
    assert abs(row["paired_z"]) > 3, row.to_dict()
    # Gebelein: |corr(F(X), G(Y))| <= |rho| for a Gaussian pair, so the Gaussian MI can only drop
    assert row["shift"] < 0
    if name != "asinh":  # asinh is nearly linear on +-2 sd: a small (0.9 spread) but certain shift
        assert row["shift_over_spread"] > 1.0, row.to_dict()


@pytest.mark.parametrize(
    "name", ["asinh", "normal_cdf", "wiggly", "random_monotone_rotation", "affine"]
)
def test_ksg_invariant_within_spread_ggd_2d(ggd_2d_summary: pd.DataFrame, name: str) -> None:
    row = ggd_2d_summary.loc[(name, "ksg")]
    assert row["invariant_within_spread"], row.to_dict()


@pytest.mark.parametrize("name", ["half_cube", "spiral"])
@pytest.mark.xfail(
    strict=True,
    reason="known finite-sample failure: at n=2000 KSG drops by ~2 (half_cube) and ~6 (spiral) seed "
    "spreads on the 2+2 GGD(beta=0.5); the true MI is unchanged (see the invariance analysis)",
)
def test_ksg_invariant_within_spread_ggd_2d_strong_maps(
    ggd_2d_summary: pd.DataFrame, name: str
) -> None:
    row = ggd_2d_summary.loc[(name, "ksg")]
    assert row["invariant_within_spread"], row.to_dict()


@pytest.mark.parametrize("name", ["half_cube", "normal_cdf", "spiral", "random_monotone_rotation"])
def test_gaussian_mi_moves_under_nonlinear_maps_ggd_2d(
    ggd_2d_summary: pd.DataFrame, name: str
) -> None:
    row = ggd_2d_summary.loc[(name, "gaussian")]
    assert abs(row["paired_z"]) > 3 and row["shift_over_spread"] > 1.0, row.to_dict()


def test_gaussian_mi_exact_under_affine_in_summary(ggd_2d_summary: pd.DataFrame) -> None:
    row = ggd_2d_summary.loc[("affine", "gaussian")]
    assert abs(row["shift"]) <= 1e-12 and row["invariant_within_spread"]


def test_spiral_rotation_in_1d_is_rejected_but_monotone_rotation_accepts() -> None:
    assert (
        not Spiral().supports(1) and RandomMonotoneRotation().supports(1) and Wiggly().supports(1)
    )
