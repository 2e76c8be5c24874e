"""Homeomorphisms of R^d (continuous bijections with continuous inverses) used to check that MI
estimators respect Theorem 1 of EMI: I(F(X); G(Y)) = I(X; Y) for homeomorphisms F, G.

Every map is a :class:`Homeomorphism` with ``forward`` / ``inverse`` (``__call__`` is ``forward``)
acting on samples of shape ``(n,)`` (n scalars) or ``(n, d)`` (n points of R^d); the output has the
input's shape. Elementwise maps act on any shape; vector maps (:class:`Affine`, :class:`Spiral`,
:class:`RandomMonotoneRotation`) treat ``(n,)`` as ``(n, 1)``.

Maps that need random parameters (:class:`Spiral`, :class:`RandomMonotoneRotation`) draw them from
``numpy.random.default_rng((seed, dim))`` the first time they meet a dimension ``dim``, so one
object can act on X and Y of different dimensions and is reproducible from its seed.

Round-trip accuracy (what the tests assert; ``eps`` = 2.2e-16, float64):

* ``Identity``, ``HalfCube``, ``Asinh``, ``Wiggly``, ``RandomMonotoneRotation``, ``Affine``
  (well conditioned): ``|inverse(forward(x)) - x| <= 64 eps max(1, |x|)`` per coordinate.
* ``NormalCDF``: error grows like ``eps / phi(x)`` in the upper tail (see its docstring).
* ``Spiral``: ``|x - inverse(forward(x))| <= 64 eps (1 + speed |x|^2) max(1, |x|)`` in norm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import special

__all__ = [
    "Homeomorphism",
    "Identity",
    "Affine",
    "HalfCube",
    "Asinh",
    "NormalCDF",
    "Wiggly",
    "Spiral",
    "RandomMonotoneRotation",
    "Compose",
    "default_homeomorphisms",
]

_EPS = np.finfo(np.float64).eps


def _as_float_array(x, who: str) -> np.ndarray:
    """float64 copy-free view of ``x``; ValueError on bad rank or non-finite values."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{who}: expected shape (n,) or (n, d), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{who}: input contains NaN or inf")
    return arr


def _as_points(x, who: str) -> tuple[np.ndarray, bool]:
    """``(n, d)`` view of ``x`` and whether it was 1-D (to restore the shape on output)."""
    arr = _as_float_array(x, who)
    if arr.ndim == 1:
        return arr[:, None], True
    return arr, False


def _invert_increasing(
    f_and_slope: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    y: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    f_scale: np.ndarray,
    max_iter: int = 200,
) -> np.ndarray:
    """Solve ``f(x) = y`` elementwise for a strictly increasing ``f`` with ``f(lo) <= y <= f(hi)``.

    ``f_and_slope(x)`` returns ``(f(x), f'(x))``; ``f_scale`` bounds the magnitude of the terms
    summed in ``f`` (its rounding error is about ``eps * f_scale``). Safeguarded Newton: the
    Newton step is taken when it lands inside the current (closed) bracket, otherwise the bracket
    midpoint; the bracket shrinks every iteration, so it always converges, quadratically near the
    root. An element stops at an exact root, a collapsed bracket, or once its Newton correction is
    below rounding (``<= 4 eps max(|x|, f_scale / f'(x))``).
    """
    y = np.asarray(y, dtype=np.float64)
    lo = np.array(np.broadcast_to(lo, y.shape), dtype=np.float64)
    hi = np.array(np.broadcast_to(hi, y.shape), dtype=np.float64)
    f_scale = np.broadcast_to(f_scale, y.shape)
    x = 0.5 * (lo + hi)
    active = np.ones(y.shape, dtype=bool)
    for _ in range(max_iter):
        fx, slope = f_and_slope(x)
        r = fx - y
        above = r > 0
        hi = np.where(above, x, hi)
        lo = np.where(above, lo, x)
        step = x - r / slope
        inside = (step >= lo) & (step <= hi)
        x_new = np.where(inside, step, 0.5 * (lo + hi))
        noise = 4.0 * _EPS * np.maximum(np.abs(x), f_scale / slope)
        newton_tiny = np.abs(r / slope) <= noise
        collapsed = np.nextafter(lo, np.inf) >= hi
        move = active & (r != 0) & (inside | ~newton_tiny)
        x = np.where(move, x_new, x)
        active &= ~((r == 0) | collapsed | newton_tiny)
        if not np.any(active):
            break
    return x


class Homeomorphism:
    """A continuous bijection ``R^d -> U`` (``U`` open) with continuous inverse.

    Subclasses implement :meth:`forward` and :meth:`inverse` on arrays of shape ``(n,)`` or
    ``(n, d)``, keeping the shape. ``min_dim`` is the smallest point dimension the map supports
    (2 for :class:`Spiral`). ``elementwise`` says the map acts on each coordinate separately with
    the same strictly increasing scalar function.
    """

    name: str = "homeomorphism"
    min_dim: int = 1
    elementwise: bool = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def supports(self, dim: int) -> bool:
        """Whether the map acts on points of dimension ``dim``."""
        return dim >= self.min_dim

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Identity(Homeomorphism):
    """x -> x."""

    name = "none"
    elementwise = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        return _as_float_array(x, "Identity.forward").copy()

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return _as_float_array(y, "Identity.inverse").copy()


class Affine(Homeomorphism):
    """x -> A x + b with invertible A (a scalar, or a ``(d, d)`` matrix) and shift b.

    Points are rows: ``forward(x) = x @ A.T + b``. A scalar ``A`` acts on any dimension.
    ``A`` is rejected (ValueError) when its condition number exceeds ``1 / sqrt(eps)``, where the
    inverse would lose more than half the digits.
    """

    def __init__(
        self,
        matrix: float | np.ndarray = 1.0,
        shift: float | np.ndarray = 0.0,
        name: str = "affine",
    ):
        a = np.asarray(matrix, dtype=np.float64)
        b = np.asarray(shift, dtype=np.float64)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise ValueError("Affine: matrix and shift must be finite")
        if a.ndim == 0:
            if a == 0:
                raise ValueError("Affine: scalar matrix must be non-zero")
        elif a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"Affine: matrix must be a scalar or square, got shape {a.shape}")
        elif np.linalg.cond(a) > 1.0 / np.sqrt(_EPS):
            raise ValueError(f"Affine: matrix is (nearly) singular, cond = {np.linalg.cond(a):.3g}")
        if b.ndim > 1 or (b.ndim == 1 and a.ndim == 2 and b.shape[0] != a.shape[0]):
            raise ValueError(f"Affine: shift shape {b.shape} does not match matrix shape {a.shape}")
        self.matrix, self.shift, self.name = a, b, name
        self.dim = None if a.ndim == 0 else a.shape[0]

    def _check_dim(self, pts: np.ndarray, who: str) -> None:
        if self.dim is not None and pts.shape[1] != self.dim:
            raise ValueError(
                f"{who}: points have dimension {pts.shape[1]}, matrix is {self.dim}x{self.dim}"
            )
        if self.shift.ndim == 1 and self.shift.shape[0] != pts.shape[1]:
            raise ValueError(
                f"{who}: shift has length {self.shift.shape[0]}, points dimension {pts.shape[1]}"
            )

    def forward(self, x: np.ndarray) -> np.ndarray:
        pts, flat = _as_points(x, "Affine.forward")
        self._check_dim(pts, "Affine.forward")
        out = (pts * self.matrix if self.dim is None else pts @ self.matrix.T) + self.shift
        return out[:, 0] if flat else out

    def inverse(self, y: np.ndarray) -> np.ndarray:
        pts, flat = _as_points(y, "Affine.inverse")
        self._check_dim(pts, "Affine.inverse")
        centred = pts - self.shift
        out = (
            centred / self.matrix if self.dim is None else np.linalg.solve(self.matrix, centred.T).T
        )
        return out[:, 0] if flat else out


class HalfCube(Homeomorphism):
    """x -> sign(x) |x|^(3/2) elementwise (the "half-cube" map of Czyz et al. 2023, *Beyond
    Normal*). Inverse: y -> sign(y) |y|^(2/3). Continuous, strictly increasing, derivative 0 at 0
    (so the inverse is not differentiable there: a homeomorphism, not a diffeomorphism)."""

    name = "half_cube"
    elementwise = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_float_array(x, "HalfCube.forward")
        return np.sign(x) * np.abs(x) ** 1.5

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = _as_float_array(y, "HalfCube.inverse")
        return np.sign(y) * np.cbrt(np.abs(y)) ** 2


class Asinh(Homeomorphism):
    """x -> asinh(x / scale) elementwise, R -> R, inverse y -> scale * sinh(y).

    Compresses tails logarithmically: the monotone map the analyses apply to heavy-tailed GGD
    samples (small beta) before KSG; the MI is unchanged.
    """

    elementwise = True

    def __init__(self, scale: float = 1.0, name: str = "asinh"):
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"Asinh: scale must be positive and finite, got {scale}")
        self.scale, self.name = float(scale), name

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.arcsinh(_as_float_array(x, "Asinh.forward") / self.scale)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = _as_float_array(y, "Asinh.inverse")
        if np.any(np.abs(y) > 710.0):
            raise ValueError("Asinh.inverse: |y| > 710 overflows sinh in float64")
        return self.scale * np.sinh(y)


class NormalCDF(Homeomorphism):
    """x -> Phi(x) (standard normal CDF) elementwise, R -> (0, 1); inverse ``scipy.special.ndtri``.

    Numerical saturation in float64: ``Phi(x) == 1.0`` exactly for x >= ``X_HIGH`` (about 8.2924)
    and ``Phi(x) == 0.0`` for x < ``X_LOW`` (about -37.677); there the map is not injective in
    floating point. ``saturation="raise"`` (default) raises ValueError when an input would
    saturate; ``"clip"`` clips inputs
    (``[X_LOW, X_HIGH - 0.001]``, a documented information loss).

    Accuracy of the round trip follows the conditioning: Phi(x) is stored with absolute error
    ``ulp(Phi(x))/2``, so x comes back with error about ``ulp(Phi(x)) / phi(x)``: ~1e-15 for
    x <= 3 (the lower tail keeps relative precision down to x ~ -37), 3e-11 at x = 5, 6e-6 at
    x = 7, 1e-2 at x = 8. Invertible to within 1e-10 for x in [-37, 5.19] (:data:`X_ACCURATE`;
    measured max 9.8e-11 on a 1e-7 grid up to 5.19, first above 1e-10 at x = 5.1934, 1.7e-10 at
    x = 5.3).
    """

    name = "normal_cdf"
    elementwise = True
    X_HIGH = 8.2924  # ndtr(x) == 1.0 in float64 for x >= 8.29236107...
    X_LOW = -37.677  # ndtr(x) underflows to 0.0 for x < -37.67712...
    X_ACCURATE = (-37.0, 5.19)  # round trip within 1e-10 (see the docstring)

    def __init__(self, saturation: str = "raise"):
        if saturation not in ("raise", "clip"):
            raise ValueError(f"NormalCDF: saturation must be 'raise' or 'clip', got {saturation!r}")
        self.saturation = saturation

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_float_array(x, "NormalCDF.forward")
        if self.saturation == "clip":
            x = np.clip(x, self.X_LOW, self.X_HIGH - 1e-3)  # ndtr < 1 and > 0 there
        p = special.ndtr(x)
        if np.any((p <= 0.0) | (p >= 1.0)):
            bad = x[(p <= 0.0) | (p >= 1.0)]
            raise ValueError(
                f"NormalCDF.forward: Phi saturates to 0 or 1 in float64 for inputs such as "
                f"{bad.flat[0]:.4g} (invertible range about [{self.X_LOW}, {self.X_HIGH}))"
            )
        return p

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = _as_float_array(y, "NormalCDF.inverse")
        if np.any((y <= 0.0) | (y >= 1.0)):
            raise ValueError("NormalCDF.inverse: values must lie in the open interval (0, 1)")
        return special.ndtri(y)


class Wiggly(Homeomorphism):
    """x -> x + sum_i a_i sin(w_i x + phi_i) elementwise.

    Strictly increasing because its derivative is >= 1 - sum_i |a_i w_i| > 0 (checked at
    construction). The default (a, w, phi) = ((0.4, 0.2, 0.1), (1, 1.5, 2.5), (0, 1, 2)) has
    sum |a w| = 0.95: strongly wiggly yet monotone. The inverse solves ``f(x) = y`` inside the
    bracket ``[y - sum|a|, y + sum|a|]`` by safeguarded Newton (quadratic, never leaves the bracket)
    to rounding level.
    """

    elementwise = True

    def __init__(
        self,
        amplitudes: Sequence[float] = (0.4, 0.2, 0.1),
        frequencies: Sequence[float] = (1.0, 1.5, 2.5),
        phases: Sequence[float] = (0.0, 1.0, 2.0),
        name: str = "wiggly",
    ):
        a, w, p = (np.asarray(v, dtype=np.float64) for v in (amplitudes, frequencies, phases))
        if not (a.ndim == w.ndim == p.ndim == 1 and a.shape == w.shape == p.shape):
            raise ValueError(
                "Wiggly: amplitudes, frequencies and phases must be 1-D of equal length"
            )
        slope_budget = float(np.sum(np.abs(a * w)))
        if not slope_budget < 1.0:
            raise ValueError(
                f"Wiggly: sum |a_i w_i| = {slope_budget:.4g} must be < 1 for monotonicity"
            )
        self.a, self.w, self.p, self.name = a, w, p, name
        self.min_slope = 1.0 - slope_budget

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._f(_as_float_array(x, "Wiggly.forward"))

    def _f(self, x: np.ndarray) -> np.ndarray:
        return x + np.sum(self.a * np.sin(x[..., None] * self.w + self.p), axis=-1)

    def _f_and_slope(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arg = x[..., None] * self.w + self.p
        fx = x + np.sum(self.a * np.sin(arg), axis=-1)
        return fx, 1.0 + np.sum(self.a * self.w * np.cos(arg), axis=-1)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = _as_float_array(y, "Wiggly.inverse")
        reach = float(np.sum(np.abs(self.a)))
        return _invert_increasing(self._f_and_slope, y, y - reach, y + reach, np.abs(y) + 2 * reach)


class Spiral(Homeomorphism):
    """x -> expm(theta(|x|) A) x with theta(r) = speed * r^2 and A skew-symmetric (d >= 2).

    ``expm(theta A)`` is a rotation, so ``|forward(x)| = |x|`` and the inverse is
    ``y -> expm(-theta(|y|) A) y``; the map is the identity at 0 and near it. As in Czyz et al.
    (2023), larger ``speed`` twists the distribution more. ``generator`` fixes A (and the
    dimension); otherwise A = (M - M^T)/2 with M standard normal from ``default_rng((seed, d))``,
    rescaled to spectral norm 1, one per dimension met.

    Evaluation without one ``expm`` per point: iA is Hermitian, so iA = U diag(mu) U^H with U
    unitary and expm(theta A) x = U diag(exp(-i theta mu)) U^H x (real part).
    """

    min_dim = 2

    def __init__(
        self,
        speed: float = 0.5,
        generator: np.ndarray | None = None,
        seed: int = 0,
        name: str = "spiral",
    ):
        if not (np.isfinite(speed) and speed >= 0):
            raise ValueError(f"Spiral: speed must be finite and >= 0, got {speed}")
        self.speed, self.seed, self.name = float(speed), int(seed), name
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.fixed_dim = None
        if generator is not None:
            g = np.asarray(generator, dtype=np.float64)
            if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] < 2:
                raise ValueError(
                    f"Spiral: generator must be a (d, d) matrix with d >= 2, got {g.shape}"
                )
            if not np.allclose(g, -g.T, atol=1e-12 * max(1.0, np.abs(g).max())):
                raise ValueError("Spiral: generator must be skew-symmetric (A^T = -A)")
            self.fixed_dim = g.shape[0]
            self._cache[g.shape[0]] = self._decompose(0.5 * (g - g.T))

    @staticmethod
    def _decompose(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mu, u = np.linalg.eigh(1j * a)
        return a, mu, u

    def generator(self, dim: int) -> np.ndarray:
        """The skew-symmetric generator A used for points of dimension ``dim``."""
        return self._params(dim)[0]

    def _params(self, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if dim < 2:
            raise ValueError(f"Spiral: needs points of dimension >= 2, got {dim}")
        if self.fixed_dim is not None and dim != self.fixed_dim:
            raise ValueError(
                f"Spiral: generator is {self.fixed_dim}x{self.fixed_dim}, points have dimension {dim}"
            )
        if dim not in self._cache:
            m = np.random.default_rng((self.seed, dim)).standard_normal((dim, dim))
            a = 0.5 * (m - m.T)
            self._cache[dim] = self._decompose(a / np.linalg.norm(a, 2))
        return self._cache[dim]

    def _rotate(self, pts: np.ndarray, sign: float) -> np.ndarray:
        _, mu, u = self._params(pts.shape[1])
        theta = self.speed * np.sum(pts * pts, axis=1)
        coeff = pts @ u.conj()  # row form of U^H x
        return np.real((coeff * np.exp(-1j * sign * theta[:, None] * mu)) @ u.T)

    def forward(self, x: np.ndarray) -> np.ndarray:
        pts = _as_float_array(x, "Spiral.forward")
        if pts.ndim != 2:
            raise ValueError("Spiral.forward: needs points of shape (n, d) with d >= 2")
        return self._rotate(pts, +1.0)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        pts = _as_float_array(y, "Spiral.inverse")
        if pts.ndim != 2:
            raise ValueError("Spiral.inverse: needs points of shape (n, d) with d >= 2")
        return self._rotate(pts, -1.0)


class RandomMonotoneRotation(Homeomorphism):
    """x -> Q f(x): a seeded strictly increasing map per coordinate, then a seeded rotation.

    For coordinate j, ``f_j(t) = c_j t + sum_k w_jk tanh(s_jk (t - t_jk))`` with c_j in [0.5, 1.5],
    w_jk in [0.2, 1], s_jk in [0.5, 3], t_jk ~ N(0, 1) (K = ``n_terms``): f_j' >= c_j > 0, so f_j is
    a bijection of R, and ``|f_j(t) - c_j t| <= W_j = sum_k w_jk`` brackets its inverse in
    ``[(y - W_j)/c_j, (y + W_j)/c_j]`` (solved by safeguarded Newton). Q is Haar-distributed on
    SO(d) (QR of a Gaussian matrix with the sign fix; det +1, so Q = 1 when d = 1). Parameters come
    from ``default_rng((seed, d))``, one set per dimension met.
    """

    def __init__(self, seed: int = 0, n_terms: int = 3, name: str = "random_monotone_rotation"):
        if n_terms < 0:
            raise ValueError(f"RandomMonotoneRotation: n_terms must be >= 0, got {n_terms}")
        self.seed, self.n_terms, self.name = int(seed), int(n_terms), name
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def params(self, dim: int) -> dict[str, np.ndarray]:
        """Parameters used for dimension ``dim``: slope (d,), weight/steep/centre (d, K), rotation."""
        if dim not in self._cache:
            rng = np.random.default_rng((self.seed, dim))
            k = self.n_terms
            q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
            q = q * np.sign(np.diag(r))
            if np.linalg.det(q) < 0:
                q[:, 0] = -q[:, 0]
            self._cache[dim] = {
                "slope": rng.uniform(0.5, 1.5, dim),
                "weight": rng.uniform(0.2, 1.0, (dim, k)),
                "steep": rng.uniform(0.5, 3.0, (dim, k)),
                "centre": rng.standard_normal((dim, k)),
                "rotation": q,
            }
        return self._cache[dim]

    @staticmethod
    def _f(t: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        z = p["steep"] * (t[..., None] - p["centre"])
        return p["slope"] * t + np.sum(p["weight"] * np.tanh(z), axis=-1)

    @staticmethod
    def _f_and_slope(t: np.ndarray, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        th = np.tanh(p["steep"] * (t[..., None] - p["centre"]))
        fx = p["slope"] * t + np.sum(p["weight"] * th, axis=-1)
        return fx, p["slope"] + np.sum(p["weight"] * p["steep"] * (1.0 - th * th), axis=-1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        pts, flat = _as_points(x, "RandomMonotoneRotation.forward")
        p = self.params(pts.shape[1])
        out = self._f(pts, p) @ p["rotation"].T
        return out[:, 0] if flat else out

    def inverse(self, y: np.ndarray) -> np.ndarray:
        pts, flat = _as_points(y, "RandomMonotoneRotation.inverse")
        p = self.params(pts.shape[1])
        u = pts @ p["rotation"]
        reach = p["weight"].sum(axis=1)
        out = _invert_increasing(
            lambda t: self._f_and_slope(t, p),
            u,
            (u - reach) / p["slope"],
            (u + reach) / p["slope"],
            np.abs(u) + 2 * reach,
        )
        return out[:, 0] if flat else out


class Compose(Homeomorphism):
    """``Compose(f, g, h)(x) = h(g(f(x)))`` (applied left to right); inverse in reverse order."""

    def __init__(self, *maps: Homeomorphism, name: str | None = None):
        if not maps:
            raise ValueError("Compose: needs at least one map")
        for m in maps:
            if not isinstance(m, Homeomorphism):
                raise ValueError(f"Compose: {m!r} is not a Homeomorphism")
        self.maps = tuple(maps)
        self.name = name or "+".join(m.name for m in maps)
        self.min_dim = max(m.min_dim for m in maps)
        self.elementwise = all(m.elementwise for m in maps)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for m in self.maps:
            x = m.forward(x)
        return x

    def inverse(self, y: np.ndarray) -> np.ndarray:
        for m in reversed(self.maps):
            y = m.inverse(y)
        return y


def default_homeomorphisms(seed: int = 0) -> dict[str, Homeomorphism]:
    """The standard battery used by the invariance analysis, keyed by name (no identity).

    half_cube, asinh, normal_cdf, wiggly, spiral (speed 0.5, d >= 2 only), random monotone
    rotation, and a fixed affine map (scale 2, shift 1), all with default parameters.
    """
    maps: list[Homeomorphism] = [
        HalfCube(),
        Asinh(),
        NormalCDF(),
        Wiggly(),
        Spiral(speed=0.5, seed=seed),
        RandomMonotoneRotation(seed=seed),
        Affine(2.0, 1.0),
    ]
    return {m.name: m for m in maps}
