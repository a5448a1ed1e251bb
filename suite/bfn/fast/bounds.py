"""The accelerated k-hat's route thresholds and the error bounds that justify them, in one place (docs/bfn.md).

Both k-hat backends (`khat_torch`, every device; `khat_numba`, CPU) read these at call time (so tests can move
them and watch the error appear), and both are held to BIN_MEAN_TOL against the O(K) reference sum
(`suite.bfn.discretised.k_hat_reference`).

In lattice units u = (mu + 1) / h and s = sigma / h (h = 2 / K; edges e_j = -1 + j h, j = 1..K-1), summation by
parts gives
    k-hat = 1 - h/2 - h sum_{j=1}^{K-1} Phi(z_j),    z_j = (j - u) / s,
    d k-hat / d mu = (1/s) sum_j phi(z_j),           d k-hat / d sigma = (1/s) sum_j z_j phi(z_j).
Extending the bins to an infinite lattice and clipping its two ends again splits k-hat into
    k-hat = mu + A + h L - h U,    L = sum_{j <= 0} Phi(z_j),    U = sum_{j >= K} Phi(-z_j),
where A, the infinite lattice's aliasing, is by Poisson summation (the sawtooth c(x) - x = h (1/2 - frac((x+1)/h))
has Fourier coefficients h / (pi m), and E sin(2 pi m W) = q^(m^2) sin(2 pi m u) for W ~ N(u, s^2))
    A = (h / pi) sum_{m >= 1} q^(m^2) sin(2 pi m u) / m,    q = exp(-2 pi^2 s^2).

Which term each route leaves out, and the bound on it (every bound is tested against the sum it bounds):
  A for s >= S_ALIAS                       `alias_bound` (M = 0)    both backends
  A's series after M terms                 `alias_bound` (M)        numba, S_FOURIER <= s < S_ALIAS
  an end's L or U when Z_FAR sigma away    `far_end_bound`          both, except s > `s_far`, where every end is summed
  edges beyond a window WINDOW_Z sigma     `window_bound`           both
  the Euler-Maclaurin remainder (s >= S_EM) measured, not bounded: <= 1e-11 / 4e-9 at K = 256, 3e-9 / 1.4e-8 at
                                           K = 2 (float64, tested)
The backends differ only in how they treat s < S_ALIAS: the torch routes sum a window of edges (two window widths,
split at S_NARROW, so rows of one width run as one tensor op); the compiled kernel sums A's Fourier series for
s >= S_FOURIER (a handful of terms, cheaper in a scalar loop) and a window below it.
"""

from __future__ import annotations

import math

BIN_MEAN_TOL = (1e-9, 1e-8)  # |error| allowed in k-hat and in its two derivatives
S_EM = 2.0  # s >= S_EM: the clipped ends by Euler-Maclaurin
S_ALIAS = 1.05  # s >= S_ALIAS: A is negligible
S_NARROW = 4.0 / 7.0  # torch routes: the narrow window width for s < S_NARROW
S_FOURIER = 0.25  # numba kernel: A's Fourier series for s >= S_FOURIER, a window below
FOURIER_EPS = 1e-17  # numba kernel: A's series summed while q^(m^2) > FOURIER_EPS
Z_FAR = 7.0  # an end more than Z_FAR sigma from mu is left out (unless s > s_far)
WINDOW_Z = 7.0  # windows reach WINDOW_Z sigma either side of mu
EM_COEFFS = (1.0 / 12.0, -1.0 / 720.0, 1.0 / 30240.0, -1.0 / 1209600.0)  # B_2m / (2m)!, m = 1..4


def _phi(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _Phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def alias_bound(s: float, h: float, M: int = 0) -> tuple[float, float, float]:
    """Bounds on the terms m > M of A = (h / pi) sum_{m >= 1} q^(m^2) sin(2 pi m u) / m and of its derivatives
    2 sum q^(m^2) cos(.) (d/dmu) and -4 pi s sum m q^(m^2) sin(.) (d/dsigma); M = 0 bounds the whole series.
    For m >= M + 1, m^2 - (M + 1)^2 >= (2M + 3)(m - M - 1), so q^(m^2) <= q^((M+1)^2) r^(m-M-1) with
    r = q^(2M+3), and the sums are geometric (sum (M + 1 + k) r^k = (M + 1) / (1 - r) + r / (1 - r)^2)."""
    q = math.exp(-2.0 * math.pi**2 * s * s)
    lead, r = q ** ((M + 1) ** 2), q ** (2 * M + 3)
    return (
        h / math.pi * lead / ((M + 1) * (1.0 - r)),
        2.0 * lead / (1.0 - r),
        4.0 * math.pi * s * lead * ((M + 1) / (1.0 - r) + r / (1.0 - r) ** 2),
    )


def window_bound(c: float, s: float, h: float) -> tuple[float, float, float]:
    """Bounds on what the edges beyond a window leave out when the nearest of them lies c >= 1 standard
    deviations from mu (both sides): sum_{i >= 0} Phi(-c - i/s) <= Phi(-c) + s phi(c), likewise
    sum phi <= phi(c) + s Phi(-c) and sum |z| phi <= (c + s) phi(c) (integral bounds of decreasing terms)."""
    P, p = _Phi(-c), _phi(c)
    return 2.0 * h * (P + s * p), 2.0 * (p / s + P), 2.0 * (c / s + 1.0) * p


def far_end_bound(z: float, s: float, h: float) -> tuple[float, float, float]:
    """Bounds on h L (or h U) and its derivatives when that end's edge lies at z <= -1 standard deviations."""
    P, p = _Phi(z), _phi(z)
    return h * (P + s * p), p / s + P, (1.0 - z) * p / s + p


def s_far(K: int) -> float:
    """Above s = sigma / h = s_far, even an end Z_FAR sigma away moves k-hat by more than BIN_MEAN_TOL (h L grows
    like h s phi(Z_FAR)): then both ends are summed whatever their distance."""
    h = 2.0 / K
    return (BIN_MEAN_TOL[0] / h - _Phi(-Z_FAR)) / _phi(Z_FAR)


def kernel_params(K: int) -> tuple[float, ...]:
    """The thresholds the compiled kernel reads, at call time: (S_FOURIER, S_ALIAS, S_EM, Z_FAR, WINDOW_Z, s_far,
    FOURIER_EPS)."""
    return (S_FOURIER, S_ALIAS, S_EM, Z_FAR, WINDOW_Z, s_far(K), FOURIER_EPS)
