"""Slow, independent reference for the GGD marginal entropies and the MI gap.

Adaptive ``scipy.integrate.quad`` on the defining integrals, written separately from the
sinh-mapped trapezoid rules of :mod:`mitools.mi.ggd`. It is the truth that ``tests/test_ggd.py`` and
``benchmarks/bench_ggd_mi.py`` compare against: accurate (about 1e-12 nats) but 5-100x slower.
"""

from __future__ import annotations

import math

from scipy import integrate, optimize, special

__all__ = ["ref_log_c", "ref_log_generator", "ref_marginal_entropy", "ref_mi_gap"]


def ref_log_c(n: int, beta: float) -> float:
    """log c(n, beta) from direct radial integration: 1/c = pi^(n/2) 2^(n/2b) Gamma(n/2b)/(b Gamma(n/2))."""
    a = n / (2 * beta)
    return (
        math.log(beta)
        + math.lgamma(n / 2)
        - (n / 2) * math.log(math.pi)
        - a * math.log(2)
        - math.lgamma(a)
    )


def ref_log_generator(u: float, k: int, n: int, beta: float) -> float:
    """log g_k(u) by adaptive scipy quad in z = log t around the peak (independent of ggd.py)."""
    m = n - k
    log_c = ref_log_c(n, beta)
    if m == 0:
        return log_c - 0.5 * u**beta
    ub = u**beta

    def excess(t):  # (u + t)^beta - u^beta without cancellation
        if u == 0.0:
            return math.exp(min(beta * math.log(t), 700.0))
        e = beta * (math.log1p(t / u) if t < 1e300 * u else math.log(t) - math.log(u))
        if e == 0.0:
            return 0.0
        log_expm1 = e + math.log1p(-math.exp(-e)) if e > 30.0 else math.log(math.expm1(e))
        return math.exp(min(beta * math.log(u) + log_expm1, 700.0))

    def phi(z):
        return 0.5 * m * z - 0.5 * excess(math.exp(z))

    def dphi(z):
        t = math.exp(z)
        return 0.5 * m - 0.5 * beta * t * (u + t) ** (beta - 1)

    lo, hi = -50.0, 50.0
    while dphi(lo) < 0:
        lo -= 50.0
    while dphi(hi) > 0:
        hi += 50.0
    zs = optimize.brentq(dphi, lo, hi, xtol=1e-14)
    peak = phi(zs)
    left = zs - (120.0 / m + 30.0)
    right = zs + 1.0
    while peak - phi(right) < 60.0:
        right = zs + 2.0 * (right - zs)
    f = lambda z: math.exp(phi(z) - peak)  # noqa: E731
    tot = 0.0
    for a, b in [(left, zs - 3.0), (zs - 3.0, zs), (zs, zs + 3.0), (zs + 3.0, right)]:
        if b > a:
            tot += integrate.quad(f, a, b, epsabs=0.0, epsrel=1e-13, limit=400)[0]
    const = log_c + 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m)
    return const - 0.5 * ub + peak + math.log(tot)


def ref_marginal_entropy(k: int, n: int, beta: float) -> float:
    """-E[log g_k(U)] by nested scipy quad over y = log U (outer) and the generator (inner)."""
    a = n / (2 * beta)
    mean = (
        (math.log(2) + special.digamma(a)) / beta + special.digamma(k / 2) - special.digamma(n / 2)
    )
    sd = math.sqrt(
        special.polygamma(1, a) / beta**2
        + special.polygamma(1, k / 2)
        - special.polygamma(1, n / 2)
    )
    y_hi = math.log(2 * (a + 60 + 12 * math.sqrt(a))) / beta
    y_lo = mean - 10 * sd - 100 / k
    const = 0.5 * k * math.log(math.pi) - math.lgamma(0.5 * k)

    def integrand(y):
        lg = ref_log_generator(math.exp(y), k, n, beta)
        return -math.exp(const + 0.5 * k * y + lg) * lg

    pts = sorted({mean - 2 * sd, mean, min(mean + 2 * sd, y_hi - 1e-3)})
    edges = [y_lo] + [p for p in pts if y_lo < p < y_hi] + [y_hi]
    return sum(
        integrate.quad(integrand, a_, b_, epsabs=1e-13, epsrel=1e-12, limit=400)[0]
        for a_, b_ in zip(edges[:-1], edges[1:], strict=True)
    )


def ref_mi_gap(beta: float, p: int, q: int) -> float:
    n = p + q
    h_n = -ref_log_c(n, beta) + n / (2 * beta)
    return ref_marginal_entropy(p, n, beta) + ref_marginal_entropy(q, n, beta) - h_n
