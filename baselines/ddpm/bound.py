"""The terms of the DDPM variational bound (MATH.md s.8; Ho et al. 2020 Eq. 5; Nichol & Dhariwal 2021 Sec. 2).

All elementwise; callers sum over an example's D dimensions. Gaussian KLs are written so that nearly equal
Gaussians lose no precision in float32 (expm1(d) - d, not exp(d) - 1 - d); the decoder's bin masses are
computed in float64 with log-CDFs on the side of the bin nearer the mode, so tails and tiny scales stay exact.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats.

    = 0.5 [(logvar2 - logvar1) + e^(logvar1 - logvar2) - 1 + (mean1 - mean2)^2 e^-logvar2]; with
    d = logvar1 - logvar2 the variance part is 0.5 (expm1(d) - d) >= 0.
    """
    d = logvar1 - logvar2
    return 0.5 * (torch.expm1(d) - d + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_kl_to_standard(mean: Tensor, var: Tensor | float, log_var: Tensor | float) -> Tensor:
    """KL(N(mean, var) || N(0, 1)) = 0.5 (mean^2 + var - ln var - 1): the prior term L_T (MATH.md s.8)."""
    return 0.5 * (mean**2 + var - log_var - 1.0)


def _log1mexp(d: Tensor) -> Tensor:
    """ln(1 - e^d) for d < 0, accurate on both sides of -ln 2 (Maechler 2012)."""
    d = torch.clamp(d, max=-1e-300)  # d = 0 only if a bin has no width at float64 resolution
    return torch.where(d > -math.log(2.0), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def log_normal_interval(lo: Tensor, hi: Tensor) -> Tensor:
    """ln(Phi(hi) - Phi(lo)) for standardised lo < hi, finite with finite gradients for finite inputs.

    A bin above the mode (lo > 0) is mirrored, Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi), so the log-CDFs are
    always read in the lower tail where log_ndtr is exact.
    """
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    lb = torch.special.log_ndtr(b)
    return lb + _log1mexp(torch.special.log_ndtr(a) - lb)


def discretised_gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, K: int) -> Tensor:
    """ln p(x | mean, e^log_scale) for x on the K bin centres of [-1, 1], end bins taking the tails (MATH.md s.8).

    The bin of centre x is [x - 1/K, x + 1/K]; the lowest bin is (-inf, x + 1/K], the highest [x - 1/K, inf).
    Computed in float64 (exact normal CDF, not improved-diffusion's tanh approximation); returns float64.
    """
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    inv_s = torch.exp(-log_scale)
    lo = (x - 1.0 / K - mean) * inv_s
    hi = (x + 1.0 / K - mean) * inv_s
    lowest = x < -1.0 + 2.0 / K  # below the first interior edge
    highest = x > 1.0 - 2.0 / K
    mid = log_normal_interval(lo, hi)
    return torch.where(lowest, torch.special.log_ndtr(hi), torch.where(highest, torch.special.log_ndtr(-lo), mid))
