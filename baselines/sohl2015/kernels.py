"""Closed forms of Sohl-Dickstein et al. 2015 (arXiv 1503.03585): KLs, entropies, forward posteriors.

Pure functions, elementwise per dimension, in the dtype of their inputs (the callers pass float32 for
losses and float64 for tables). Formulas: MATH.md s.7.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI_E = math.log(2 * math.pi * math.e)


def gaussian_entropy(var: torch.Tensor | float) -> torch.Tensor:
    """H(N(m, var)) = 0.5 ln(2 pi e var), per dimension (MATH.md s.7 H_q terms)."""
    return 0.5 * (LOG_2PI_E + torch.log(torch.as_tensor(var)))


def gaussian_kl(
    mean_q: torch.Tensor, var_q: torch.Tensor, mean_p: torch.Tensor, log_var_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(m_q, v_q) || N(m_p, v_p)) = ln(s_p/s_q) + (v_q + (m_q - m_p)^2)/(2 v_p) - 1/2, per dimension.

    Takes ln v_p (the reverse variance is a sigmoid, so its log comes stably from logsigmoid).
    """
    var_q = torch.as_tensor(var_q, dtype=mean_q.dtype, device=mean_q.device)
    return 0.5 * (log_var_p - torch.log(var_q)) + (var_q + (mean_q - mean_p) ** 2) * torch.exp(-log_var_p) / 2 - 0.5


def gaussian_posterior(
    x0: torch.Tensor, xt: torch.Tensor, abar_prev: torch.Tensor, abar_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q(x^{s}|x^{t}, x^0) for a jump s -> t of the Gaussian chain with beta' = 1 - abar_t/abar_s (MATH.md s.7).

    mu~ = sqrt(abar_s) beta'/(1 - abar_t) x0 + sqrt(1 - beta')(1 - abar_s)/(1 - abar_t) x_t,
    beta~ = beta'(1 - abar_s)/(1 - abar_t). abar_* broadcast against x (float64 in, cast to x's dtype out).
    """
    beta = 1 - abar_t / abar_prev
    c0 = (abar_prev.sqrt() * beta / (1 - abar_t)).to(x0.dtype)
    ct = ((1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)).to(x0.dtype)
    var = (beta * (1 - abar_prev) / (1 - abar_t)).to(x0.dtype)
    return c0 * x0 + ct * xt, var


def binary_entropy(q: torch.Tensor) -> torch.Tensor:
    """H(B(q)) = -q ln q - (1-q) ln(1-q), per bit, 0 at q in {0, 1}."""
    return -(torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q))


def bernoulli_kl_logits(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """KL(B(sigmoid u) || B(sigmoid v)) = q ln(q/p) + (1-q) ln((1-q)/(1-p)), from logits, stable at the edges."""
    q = torch.sigmoid(u)
    return q * (F.logsigmoid(u) - F.logsigmoid(v)) + (1 - q) * (F.logsigmoid(-u) - F.logsigmoid(-v))


def bernoulli_posterior_logit(
    x0: torch.Tensor, xt: torch.Tensor, abar_prev: torch.Tensor, abar_t: torch.Tensor, p1: float
) -> torch.Tensor:
    """logit q(x^s = 1 | x^t, x^0) for a jump s -> t of the binomial chain (MATH.md s.7, Bayes' rule).

    a = P(x^t | x^s = 1), a' = P(x^t | x^s = 0) under the composed kernel with beta' = 1 - abar_t/abar_s;
    b = q(x^s = 1 | x^0) = abar_s x0 + (1 - abar_s) p1; logit = ln a + ln b - ln a' - ln(1 - b).
    """
    beta = (1 - abar_t / abar_prev).to(x0.dtype)
    abar_prev = abar_prev.to(x0.dtype)
    a = xt * (1 - beta + beta * p1) + (1 - xt) * beta * (1 - p1)
    a_ = xt * beta * p1 + (1 - xt) * (1 - beta * p1)
    b = abar_prev * x0 + (1 - abar_prev) * p1
    return torch.log(a) + torch.log(b) - torch.log(a_) - torch.log1p(-b)
