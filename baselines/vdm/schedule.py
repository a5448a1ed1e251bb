"""VDM noise schedule gamma(t) = -ln SNR(t), linear in t, fixed or with learnable ends (MATH.md s.9).

sigma_t^2 = sigmoid(gamma(t)), alpha_t^2 = sigmoid(-gamma(t)) (Kingma et al. 2021, Eq. 3-4). Evaluated in
float64 (the parameters stay float32 for the optimiser and are cast up), so differences such as
gamma(i/T) - gamma((i-1)/T) keep their digits for large T.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LinearGamma(nn.Module):
    """gamma(t) = b + |w| t; with learnable=True both ends are trained (VDM's CIFAR-10 setting).

    |w| keeps gamma increasing (SNR decreasing) whatever the optimiser does.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, learnable: bool = True):
        super().__init__()
        if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
            raise ValueError(
                f"vdm: need finite gamma_min < gamma_max (SNR decreasing in t), got {gamma_min}, {gamma_max}"
            )
        b = torch.tensor(float(gamma_min))
        w = torch.tensor(float(gamma_max - gamma_min))
        if learnable:
            self.b, self.w = nn.Parameter(b), nn.Parameter(w)
        else:
            self.register_buffer("b", b)
            self.register_buffer("w", w)
        self.learnable = learnable

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """gamma(t), float64, same shape as t."""
        return self.b.double() + self.w.double().abs() * t.double()

    def prime(self, t: torch.Tensor) -> torch.Tensor:
        """d gamma / dt, float64 (constant |w| for a linear schedule)."""
        return self.w.double().abs().expand(t.shape)

    def increment(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """gamma(t) - gamma(s) = |w| (t - s), exact (no difference of two large numbers)."""
        return self.w.double().abs() * (t.double() - s.double())


def alpha_sigma2(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha^2, sigma^2) = (sigmoid(-gamma), sigmoid(gamma)), each accurate even where it is tiny."""
    return torch.sigmoid(-gamma), torch.sigmoid(gamma)
