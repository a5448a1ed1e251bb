"""The discretised Gaussian over K bins on [-1, 1] (MATH.md s.4; BFN paper Sec. 5), in float32.

Bins k = 1..K have centres k_c = (2k - 1)/K - 1 and edges k_c -+ 1/K; the first and last bins take the
Gaussian's tails, so p(k) = G(k_c + 1/K) - G(k_c - 1/K) with G := 0 below bin 1 and G := 1 above bin K.

These are the definitions, shared by the BFN variants (continuous.py scores discretised data with
`log_bin_prob`; discretised.py builds its losses on them) and by the accelerations in suite/bfn/fast/, which are
tested against them: `bin_probs` (exact, O(K) per element), `bin_mean_sum` (k-hat = sum_k p(k) k_c, the literal
definition), `log_bin_prob` (O(1): only the data's own bin), `sample_bins` / `mode_bins`, and the official code's
float32 masses and receiver weights (quirk `categorical_floor`, docs/official.md).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
P_MIN = 1e-30  # the receiver raises every bin probability by this (MATH.md s.4; discretised.receiver_lse_reference)


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
    """k_hat = sum_k p(k) k_c by the literal O(K) sum, differentiable by autograd (the definition the tests hold
    `discretised.k_hat_reference` and every accelerated route to)."""
    return (bin_probs(mu, sigma, K) * centres(K, mu.device, mu.dtype)).sum(-1)


def sample_bins(mu: Tensor, sigma: Tensor, K: int, generator: torch.Generator | None = None) -> Tensor:
    """k ~ p(k), returned as the bin centre: z ~ N(mu, sigma^2) snapped to its bin (tails clipped)."""
    z = mu + sigma * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    k = torch.clamp(torch.floor((z + 1.0) * K / 2), 0, K - 1)
    return (2 * k + 1) / K - 1


def mode_bins(mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """The most probable bin's centre (the reference sampler's final step); O(K) per element."""
    k = bin_probs(mu, sigma, K).argmax(-1).to(mu.dtype)
    return (2 * k + 1) / K - 1


# --- the official code's masses and receiver weights (quirk `categorical_floor`, docs/official.md) -----------
#
# The official discretised L^n builds p_R as MixtureSameFamily(Categorical(probs=p_O), Normal(k_c, 1/sqrt(alpha)))
# with p_O the float32 differences of Phi at the bin edges. Categorical(probs=) normalises p, and its logits
# clamp every weight to [eps, 1 - eps] (eps = float32 eps, 1.19e-7) before MixtureSameFamily's log_softmax
# renormalises them: far-off bins weigh at least eps / (1 + K eps) instead of ~0, so a confidently wrong p_O
# costs far less at small n. The discrete BFN's official receiver uses the same weights (discrete.py).
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


def official_bin_probs(mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """p_O(k), shaped (*mu.shape, K), as the official code computes them: float32 differences of Phi (0.5 (1 + erf))
    at the K - 1 interior edges, 0 and 1 beyond the clipped end bins. Absolute error ~6e-8: tail bins come out
    0 or a few ulps (bin_probs is exact)."""
    f32 = torch.float32
    mu, sigma = mu.to(f32)[..., None], sigma.to(f32)[..., None]
    cdf = 0.5 * (1 + torch.erf((edges(K, mu.device, f32) - mu) * sigma.reciprocal() / math.sqrt(2.0)))
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf, torch.ones_like(cdf[..., :1])], -1)
    return cdf[..., 1:] - cdf[..., :-1]


def categorical_log_weights(p: Tensor) -> Tensor:
    """ln of the mixture weights MixtureSameFamily(Categorical(probs=p), ...) uses: p / sum p clamped to
    [eps, 1 - eps] (float32 eps), then renormalised (log_softmax of the clamped logs)."""
    q = (p / p.sum(-1, keepdim=True)).clamp(FLOAT32_EPS, 1.0 - FLOAT32_EPS).log()
    return q - torch.logsumexp(q, -1, keepdim=True)
