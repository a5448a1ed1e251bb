"""The discretised Gaussian over K bins on [-1, 1] (MATH.md s.4; BFN paper Sec. 5), in float32.

Bins k = 1..K have centres k_c = (2k - 1)/K - 1 and edges k_c -+ 1/K; the first and last bins take the
Gaussian's tails, so p(k) = G(k_c + 1/K) - G(k_c - 1/K) with G := 0 below bin 1 and G := 1 above bin K.

Everything here is elementwise in (mu, sigma) and either O(K) per element (`bin_probs`, exact) or O(1)
per element (`bin_mean`, `log_bin_prob`, `sample_bins`), so no (B x D x K) tensor is needed unless a
caller asks for the probabilities themselves.
"""

from __future__ import annotations

import math

import torch

from suite.bfn import dgauss_cpu

Tensor = torch.Tensor
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def centres(K: int, device=None, dtype=torch.float32) -> Tensor:
    return (2 * torch.arange(1, K + 1, device=device, dtype=torch.float64) - 1).div(K).sub(1).to(dtype)


def edges(K: int, device=None, dtype=torch.float32) -> Tensor:
    """The K - 1 interior edges -1 + 2j/K, j = 1..K-1."""
    return (2 * torch.arange(1, K, device=device, dtype=torch.float64)).div(K).sub(1).to(dtype)


# Beyond these |z| every Phi tail or phi underflows (float32) or nearly so; clamping there keeps erfc and exp
# out of their slow underflow paths (5-10x slower on x86) and only ever makes a tail or density larger.
_Z_MAX = {torch.float32: 12.0, torch.float64: 37.0}
_EXP_MIN = {torch.float32: -87.0, torch.float64: -700.0}


def normal_cdf(z: Tensor) -> Tensor:
    """Phi(z) via erfc, accurate in the lower tail (erf-based 0.5(1 + erf) loses it); |z| clamped at _Z_MAX."""
    zm = _Z_MAX.get(z.dtype, 12.0)
    return 0.5 * torch.erfc(z.clamp(-zm, zm) * -_SQRT1_2)


def normal_pdf(z: Tensor) -> Tensor:
    zm = _Z_MAX.get(z.dtype, 12.0)
    zc = z.clamp(-zm, zm)
    return torch.exp(-0.5 * zc * zc - _LOG_SQRT_2PI)


def _log1mexp(d: Tensor) -> Tensor:
    """ln(1 - e^d) for d <= 0, stable on both sides of -ln 2 (Maechler 2012)."""
    return torch.where(d > -math.log(2.0), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def log_normal_mass(a: Tensor, b: Tensor, lower_open: Tensor, upper_open: Tensor) -> Tensor:
    """ln(Phi(b) - Phi(a)) for standardised edges a < b, exact in the far tails.

    `lower_open` / `upper_open` mark a = -inf / b = +inf (the clipped end bins); the values of a / b
    there are ignored. Works on the side of the bin nearer the mode (flip b <-> -a when the bin lies
    above it), and never evaluates an infinite edge, so gradients stay finite everywhere.
    """
    flip = (a + b > 0) & ~lower_open | upper_open
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    lo_open = torch.where(flip, upper_open, lower_open)  # after flipping, the open side is always `lo`
    lo_safe = torch.where(lo_open, hi - 1.0, lo)
    log_hi = torch.special.log_ndtr(hi)
    with_lo = log_hi + _log1mexp(torch.clamp(torch.special.log_ndtr(lo_safe) - log_hi, max=0.0))
    return torch.where(lo_open, log_hi, with_lo)


def log_bin_prob(x: Tensor, mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """ln p(x) for x a bin centre, under the discretised N(mu, sigma^2) with clipped end bins (MATH.md s.4).

    Used for the reconstruction loss L^r, where only the data's own bin is needed (O(1) per element).
    """
    k = torch.clamp(torch.round((x + 1) * K / 2 - 0.5), 0, K - 1)
    xc = (2 * k + 1) / K - 1
    a = (xc - 1.0 / K - mu) / sigma
    b = (xc + 1.0 / K - mu) / sigma
    return log_normal_mass(a, b, k == 0, k == K - 1)


def bin_probs(mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """p(k), k = 1..K, shaped (*mu.shape, K) (MATH.md s.4): exact, O(K) per element.

    Each interior edge contributes T_j = Phi(-|z_j|), a tail probability computed without cancellation;
    a bin below the mean is T_hi - T_lo, one above is T_lo - T_hi, the bin holding the mean 1 - T_lo - T_hi.
    """
    z = (edges(K, mu.device, mu.dtype) - mu[..., None]) / sigma[..., None]
    T = 0.5 * torch.erfc(z.abs() * _SQRT1_2)
    pos = z > 0
    zero = T.new_zeros((*T.shape[:-1], 1))
    T_lo, T_hi = torch.cat([zero, T], -1), torch.cat([T, zero], -1)
    pos_lo = torch.cat([torch.zeros_like(zero, dtype=torch.bool), pos], -1)
    pos_hi = torch.cat([pos, torch.ones_like(zero, dtype=torch.bool)], -1)
    below, above = ~pos_hi, pos_lo
    return torch.where(below, T_hi - T_lo, torch.where(above, T_lo - T_hi, 1.0 - T_lo - T_hi))


def bin_mean_sum(mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """k_hat = sum_k p(k) k_c by the direct O(K) sum (the definition; `bin_mean` is the fast path)."""
    return (bin_probs(mu, sigma, K) * centres(K, mu.device, mu.dtype)).sum(-1)


# --- k-hat = sum_k p(k) k_c in O(1) per element (`bin_mean`) ------------------------------------------------
#
# In lattice units u = (mu + 1) / h and s = sigma / h (h = 2 / K; edges e_j = -1 + j h, j = 1..K-1), summation
# by parts gives
#     k-hat = 1 - h/2 - h sum_{j=1}^{K-1} Phi(z_j),    z_j = (j - u) / s,
#     d k-hat / d mu = (1/s) sum_j phi(z_j),           d k-hat / d sigma = (1/s) sum_j z_j phi(z_j).
# Extending the bins to an infinite lattice and clipping its two ends again splits k-hat into
#     k-hat = mu + A + h L - h U,    L = sum_{j <= 0} Phi(z_j),    U = sum_{j >= K} Phi(-z_j),
# where A, the infinite lattice's aliasing, is by Poisson summation (the sawtooth c(x) - x = h (1/2 - frac((x+1)/h))
# has Fourier coefficients h / (pi m), and E sin(2 pi m W) = q^(m^2) sin(2 pi m u) for W ~ N(u, s^2))
#     A = (h / pi) sum_{m >= 1} q^(m^2) sin(2 pi m u) / m,    q = exp(-2 pi^2 s^2).
# Each element takes one of three routes; every term a route leaves out has a bound below BIN_MEAN_TOL
# (values, derivatives), checked in tests/test_bfn_receiver.py, except the Euler-Maclaurin remainder, which is
# measured, not bounded (<= 1e-11 / 4e-9 at K = 256, 3e-9 / 1.4e-8 at K = 2 where h = 1; float64, tested):
#   s >= S_EM      mu + h L - h U, L and U by Euler-Maclaurin from their end points (4 correction terms), for the
#                  ends within Z_FAR sigma of mu (`far_end_bound` covers the others); A (`alias_bound`) < 1e-34.
#   s < S_ALIAS, or an end within Z_FAR sigma (and s < S_EM)
#                  the 2W edges nearest u summed directly, W >= WINDOW_Z s: every other edge lies WINDOW_Z
#                  sigma or more away, so its Phi is 0 or 1 to within `window_bound`.
#   otherwise      k-hat = mu, d/dmu = 1, d/dsigma = 0: A (`alias_bound`) and both ends (`far_end_bound`) are
#                  negligible.
# The windows come in two widths, for s < S_NARROW (W <= 4) and the rest (W <= 14).
BIN_MEAN_TOL = (1e-9, 1e-8)
S_EM = 2.0
S_ALIAS = 1.05
S_NARROW = 4.0 / 7.0
Z_FAR = 7.0
WINDOW_Z = 7.0

_EM_COEFFS = dgauss_cpu.EM_COEFFS  # Euler-Maclaurin coefficients c_m = B_2m / (2m)!, m = 1..4


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


def _end_sums(mu: Tensor, sigma: Tensor, s: Tensor, sign: Tensor) -> Tensor:
    """Sums of f = Phi, phi, z phi over one end's clipped edges, shaped (3, n), one column per (element, end):
    sign = -1 for the lower end (edges j <= 0, z_0 = (-1 - mu) / sigma), +1 for the upper (edges j >= K, in
    w = -z, w_K = (mu - 1) / sigma). One-point Euler-Maclaurin: sum_{j <= 0} f(z_0 + j / s) = s int_{-inf}^{z_0} f
    + f(z_0) / 2 + sum_m c_m s^(1-2m) f^(2m-1)(z_0), with int Phi = z Phi + phi, int phi = Phi, int z phi = -phi
    and, from phi^(n) = (-1)^n He_n phi, Phi^(2m-1) = He_(2m-2) phi, phi^(2m-1) = -He_(2m-1) phi and
    (z phi)^(2m-1) = -He_(2m) phi."""
    Z = torch.addcmul(mu.new_tensor(-1.0), sign, mu).div_(sigma).clamp_(min=-_Z_MAX.get(mu.dtype, 12.0))
    P, p = normal_cdf(Z), normal_pdf(Z)
    He = mu.new_empty(9, Z.shape[0])  # He_0..He_8 (Z) by He_(n+1) = z He_n - n He_(n-1)
    He[0].fill_(1.0)
    He[1].copy_(Z)
    for n in range(1, 8):
        torch.mul(Z, He[n], out=He[n + 1]).sub_(He[n - 1], alpha=n)
    inv_s = s.reciprocal()
    v = inv_s * inv_s
    c1, c2, c3, c4 = _EM_COEFFS
    corr = He[6:9] * c4  # Horner in 1/s^2, the three series at once: sum_m c_m s^(1-2m) He_(2m-2+k), k = 0, 1, 2
    for c, lo in ((c3, 4), (c2, 2), (c1, 0)):
        corr = torch.add(corr.mul_(v), He[lo : lo + 3], alpha=c)
    sums = corr.mul_(inv_s * p)
    sums[1:].neg_()
    sums[0].addcmul_(s, torch.mul(Z, P).add_(p)).add_(P, alpha=0.5)  # + s int Phi + Phi / 2
    sums[1].addcmul_(s, P).add_(p, alpha=0.5)  # + s int phi + phi / 2
    sums[2].addcmul_(s, p, value=-1.0).addcmul_(Z, p, value=0.5)  # + s int z phi + z phi / 2
    return sums


def _signs(like: Tensor, values: tuple[float, ...], shape: tuple[int, ...]) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)


def _window_sum(mu: Tensor, sigma: Tensor, K: int, W: int) -> Tensor:
    """(k-hat, d/dmu, d/dsigma), shaped (3, n), from the 2W edges nearest u = (mu + 1) / h (all K - 1 when
    2W >= K - 1), the window kept inside 1..K-1: edges below it count Phi = 0, edges above it Phi = 1
    (`window_bound` with c = W / s bounds the error). No mask is needed: near an end the window stops at the
    end's edge."""
    h = 2.0 / K
    c1 = sigma.reciprocal() * (-h * _SQRT1_2)  # every edge as v_j = -z_j / sqrt(2) = c0 + j c1
    c0 = (1.0 + mu) * (_SQRT1_2 / sigma)
    if 2 * W >= K - 1:
        j = torch.arange(1, K, dtype=mu.dtype, device=mu.device)[:, None]
        V, above = torch.addcmul(c0, j, c1), 0.0
    else:
        j0 = torch.floor((mu + 1.0) / h).clamp_(W, K - 1 - W)
        offs = torch.arange(1 - W, W + 1, dtype=mu.dtype, device=mu.device)[:, None]
        V, above = torch.addcmul(torch.addcmul(c0, j0, c1), offs, c1), (K - 1 - W) - j0
    zm = _Z_MAX.get(mu.dtype, 12.0) * _SQRT1_2  # beyond: Phi is 0 or 1 and phi 0 in float32; keeps erf / exp fast
    V.clamp_(-zm, zm)
    one_minus_2Phi = torch.erf(V).sum(0)  # erf, not erfc: only absolute accuracy matters, each Phi weighs h
    p = torch.mul(V, V).neg_().exp_()  # sqrt(2 pi) phi
    sum_p = p.sum(0)
    sum_vp = V.mul_(p).sum(0)  # -sqrt(pi) z phi
    res = mu.new_empty(3, mu.shape[0])
    torch.mul(one_minus_2Phi, 0.5 * h, out=res[0]).sub_(h * (above + 0.5 * V.shape[0]) - (1.0 - h / 2))
    g = sigma.reciprocal().mul_(h * _INV_SQRT_2PI)
    torch.mul(sum_p, g, out=res[1])
    torch.mul(sum_vp, g, out=res[2]).mul_(-math.sqrt(2.0))
    return res


@torch.no_grad()
def _bin_mean_and_grads(mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """(k-hat, d/dmu, d/dsigma) as the rows of a (3, N) tensor, for flat mu, sigma (the routes: see the note
    above BIN_MEAN_TOL)."""
    h = 2.0 / K
    s = sigma * (1.0 / h)
    out = mu.new_empty(3, mu.shape[0])  # every element first as the infinite lattice's: k-hat = mu, 1, 0
    out[0].copy_(mu)
    out[1].fill_(1.0)
    out[2].zero_()
    # the ends within Z_FAR sigma of mu (`far_end_bound` covers the others), by Euler-Maclaurin where s >= S_EM;
    # above s_far even a far end's h L would exceed the tolerance: then every end of those rows is summed
    near = torch.addcmul(sigma * Z_FAR, _signs(mu, (-1.0, 1.0), (2, 1)), mu) > 1.0  # (lower, upper) end near
    em = s >= S_EM
    ends = near & em
    s_far = _s_far(K)
    if s.numel() and float(s.max()) > s_far:
        ends |= em & (s > s_far)
    end, row = ends.nonzero(as_tuple=True)
    mu_sigma = torch.stack([mu, sigma])  # gathered together below
    if row.numel():
        sign = end.to(mu.dtype).mul_(2.0).sub_(1.0)  # -1 lower, +1 upper
        m, sg = mu_sigma.index_select(1, row)
        s_row = sg * (1.0 / h)
        sums = _end_sums(m, sg, s_row, sign)
        sums[0::2].mul_(-sign)  # k-hat gains h (L - U); d/dsigma's z phi sum flips with z -> -z for U
        sums[0].mul_(h)
        sums[1:].div_(s_row).neg_()  # d/dmu and d/dsigma lose (1/s) sum phi and (1/s) sum z phi
        out.index_add_(1, row, sums)  # an element with both ends near gets two columns
    # windows of edges where the lattice's aliasing matters (s < S_ALIAS) or an end is near (and s < S_EM)
    window = (near[0] | near[1] | (s < S_ALIAS)) & ~em
    for rows in (s < S_NARROW, window & (s >= S_NARROW)):
        idx = rows.nonzero().squeeze(1)
        if idx.numel():
            m, sg = mu_sigma.index_select(1, idx)
            W = max(2, math.ceil(WINDOW_Z * float(sg.max()) / h))
            out.index_copy_(1, idx, _window_sum(m, sg, K, W))
    return out


def _s_far(K: int) -> float:
    """Above s = sigma / h = s_far, even an end Z_FAR sigma away moves k-hat by more than BIN_MEAN_TOL (h L grows
    like h s phi(Z_FAR)): then both ends are summed whatever their distance."""
    h = 2.0 / K
    return (BIN_MEAN_TOL[0] / h - _Phi(-Z_FAR)) / _phi(Z_FAR)


def cpu_kernel_params(K: int) -> tuple[float, ...]:
    """The thresholds dgauss_cpu's kernel reads, at call time (so tests can move them)."""
    return (dgauss_cpu.S_FOURIER, S_ALIAS, S_EM, Z_FAR, WINDOW_Z, _s_far(K), dgauss_cpu.FOURIER_EPS)


class _BinMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, K):
        with torch.autocast(mu.device.type, enabled=False):  # float32 throughout
            if dgauss_cpu.enabled(mu):  # one compiled pass on CPU (same sums, fewer passes)
                k_hat, d_mu, d_sigma = dgauss_cpu.bin_mean_and_grads(mu.reshape(-1), sigma.reshape(-1), K,
                                                                     cpu_kernel_params(K))  # fmt: skip
            else:
                k_hat, d_mu, d_sigma = _bin_mean_and_grads(mu.reshape(-1), sigma.reshape(-1), K)
        ctx.save_for_backward(d_mu.view(mu.shape), d_sigma.view(mu.shape))
        return k_hat.view(mu.shape)

    @staticmethod
    def backward(ctx, grad):
        d_mu, d_sigma = ctx.saved_tensors
        return grad * d_mu, grad * d_sigma, None


def bin_mean(mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """k_hat = sum_k p(k) k_c in O(1) per element (MATH.md s.4), differentiable in mu, sigma.

    On CPU (float32 / float64, numba installed) one compiled pass computes it (`dgauss_cpu`); elsewhere each
    element takes the cheapest of three exact torch routes (the note above `BIN_MEAN_TOL`): the infinite
    lattice's mean mu, with the clipped end bins by Euler-Maclaurin where sigma >= 2 bins; a window of the
    edges nearest mu; or mu alone where neither the lattice's aliasing nor the ends matter. Derivatives in
    closed form. Agrees with `bin_mean_sum` within BIN_MEAN_TOL at K = 256 (tested route by route) and to 1e-8
    (values) / 5e-8 (gradients) for K = 2..256, in float64. This is what makes the continuous-time discretised
    loss cost one network pass rather than K CDFs per pixel.
    """
    if mu.shape != sigma.shape:
        mu, sigma = torch.broadcast_tensors(mu, sigma)
    return _BinMean.apply(mu.contiguous(), sigma.contiguous(), K)


def sample_bins(mu: Tensor, sigma: Tensor, K: int, generator: torch.Generator | None = None) -> Tensor:
    """k ~ p(k), returned as the bin centre: z ~ N(mu, sigma^2) snapped to its bin (tails clipped)."""
    z = mu + sigma * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    k = torch.clamp(torch.floor((z + 1.0) * K / 2), 0, K - 1)
    return (2 * k + 1) / K - 1


def mode_bins(mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """The most probable bin's centre (the reference sampler's final step); O(K) per element."""
    k = bin_probs(mu, sigma, K).argmax(-1).to(mu.dtype)
    return (2 * k + 1) / K - 1
