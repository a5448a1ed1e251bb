"""Accuracy schedules of BFN (MATH.md s.3, s.5; BFN paper Sec. 4-6), in float64.

Continuous and discretised data:  beta(t) = sigma1^(-2t) - 1,  alpha(t) = -2 ln(sigma1) sigma1^(-2t),
                                  gamma(t) = beta / (1 + beta) = 1 - sigma1^(2t),
                                  alpha_i = sigma1^(-2i/n) (1 - sigma1^(2/n)).
Discrete data:                    beta(t) = beta1 t^2,  alpha(t) = 2 beta1 t,  alpha_i = beta1 (2i - 1) / n^2.

In both cases alpha_i = beta(i/n) - beta((i-1)/n), so the n-step accuracies add up to beta(1).

The reference code's configs name the hyperparameters differently: `min_variance` = sigma1^2 and
`max_sqrt_beta` = sqrt(beta1); `from_reference_config` converts.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def check_sigma1(sigma1: float) -> float:
    if not (isinstance(sigma1, (int, float)) and 0.0 < float(sigma1) < 1.0):
        raise ValueError(
            f"sigma1 must lie in (0, 1) (the input standard deviation at t = 1), got {sigma1!r}; "
            "the paper uses 1e-3 for 8-bit images and sqrt(1e-3) for 4-bit images"
        )
    return float(sigma1)


def check_beta1(beta1: float) -> float:
    if not (isinstance(beta1, (int, float)) and math.isfinite(beta1) and float(beta1) > 0.0):
        raise ValueError(
            f"beta1 must be a finite number > 0 (the final accuracy of discrete data), got {beta1!r}; "
            "the paper uses 9 for binarised MNIST and 0.5625 for text8"
        )
    return float(beta1)


def check_n_steps(n_steps: int) -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1 (or None for continuous time), got {n_steps!r}")
    return n_steps


def _t64(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class ContinuousSchedule:
    """beta(t) = sigma1^(-2t) - 1 for continuous and discretised data (MATH.md s.3)."""

    def __init__(self, sigma1: float):
        self.sigma1 = check_sigma1(sigma1)
        self.log_sigma1 = math.log(self.sigma1)

    def beta(self, t: Tensor | float) -> Tensor:
        return torch.expm1(-2.0 * self.log_sigma1 * _t64(t))

    def alpha(self, t: Tensor | float) -> Tensor:
        """alpha(t) = d beta / dt = -2 ln(sigma1) sigma1^(-2t)."""
        return -2.0 * self.log_sigma1 * torch.exp(-2.0 * self.log_sigma1 * _t64(t))

    def rho(self, t: Tensor | float) -> Tensor:
        """Input precision after the flow: rho(t) = 1 + beta(t) = sigma1^(-2t)."""
        return torch.exp(-2.0 * self.log_sigma1 * _t64(t))

    def gamma(self, t: Tensor | float) -> Tensor:
        """gamma(t) = beta / (1 + beta) = 1 - sigma1^(2t); expm1 keeps it accurate for small t."""
        return -torch.expm1(2.0 * self.log_sigma1 * _t64(t))

    def one_minus_gamma(self, t: Tensor | float) -> Tensor:
        return torch.exp(2.0 * self.log_sigma1 * _t64(t))

    def gamma_float32(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(gamma, 1 - gamma) as the official code computes them (quirk `gamma_float32`): 1 - gamma =
        sigma1^(2t) by torch.pow(sigma1^2, t) in float32 and gamma = 1 minus that, which cancels at small t
        (relative error up to ~2.5e-5 at t = 1e-4 for sigma1 = 1e-3; `gamma` above is exact in float64)."""
        one_minus = torch.pow(self.sigma1**2, torch.as_tensor(t).to(torch.float32))
        return 1.0 - one_minus, one_minus

    def noise_ratio(self, t: Tensor | float) -> Tensor:
        """sqrt((1 - gamma) / gamma), the factor in front of eps-hat (inf at t = 0)."""
        return torch.rsqrt(torch.expm1(-2.0 * self.log_sigma1 * _t64(t)))

    def alpha_i(self, i: Tensor | int, n: int) -> Tensor:
        """alpha_i = sigma1^(-2i/n) (1 - sigma1^(2/n)) (MATH.md s.3)."""
        n = check_n_steps(n)
        return torch.exp(-2.0 * self.log_sigma1 * _t64(i) / n) * -math.expm1(2.0 * self.log_sigma1 / n)

    def alphas(self, n: int) -> Tensor:
        return self.alpha_i(torch.arange(1, check_n_steps(n) + 1, dtype=torch.float64), n)


class DiscreteSchedule:
    """beta(t) = beta1 t^2 for discrete data (MATH.md s.5; paper Eq. 182-183)."""

    def __init__(self, beta1: float):
        self.beta1 = check_beta1(beta1)

    def beta(self, t: Tensor | float) -> Tensor:
        return self.beta1 * _t64(t) ** 2

    def alpha(self, t: Tensor | float) -> Tensor:
        return 2.0 * self.beta1 * _t64(t)

    def alpha_i(self, i: Tensor | int, n: int) -> Tensor:
        """alpha_i = beta1 (2i - 1) / n^2 (paper MATH.md s.5)."""
        n = check_n_steps(n)
        return self.beta1 * (2.0 * _t64(i) - 1.0) / n**2

    def alphas(self, n: int) -> Tensor:
        return self.alpha_i(torch.arange(1, check_n_steps(n) + 1, dtype=torch.float64), n)


def from_reference_config(**cfg: float) -> dict[str, float]:
    """Translate the reference code's config names into the paper's.

    `min_variance` -> sigma1 = sqrt(min_variance);  `max_sqrt_beta` -> beta1 = max_sqrt_beta^2.
    Names the paper already uses (sigma1, beta1, t_min) pass through; anything else is an error.
    """
    out: dict[str, float] = {}
    for key, value in cfg.items():
        if key == "min_variance":
            if not 0.0 < value < 1.0:
                raise ValueError(f"min_variance = sigma1^2 must lie in (0, 1), got {value!r}")
            out["sigma1"] = math.sqrt(value)
        elif key == "max_sqrt_beta":
            if not value > 0.0:
                raise ValueError(f"max_sqrt_beta = sqrt(beta1) must be > 0, got {value!r}")
            out["beta1"] = float(value) ** 2
        elif key in ("sigma1", "beta1", "t_min"):
            out[key] = value
        else:
            raise ValueError(
                f"unknown reference config name {key!r}; known: min_variance (sigma1^2), "
                "max_sqrt_beta (sqrt(beta1)), or the paper's sigma1, beta1, t_min"
            )
    return out
