"""A 2-D mixture of Gaussians laid along the swiss roll, standardised: an exact log-density, no fitting.

Raw space (the swiss roll's, suite/data/toys.py): M components with equal weight 1/M at t_j = t0 + (j + 1/2) dt,
dt = (t1 - t0)/M, on the spiral mu_j = (t_j cos t_j, t_j sin t_j). Each covers its segment of the curve: the
spread of t ~ U[t_j - dt/2, t_j + dt/2] linearised along the tangent v_j = d mu/dt plus the roll's isotropic noise,

    Sigma_j = noise^2 I + (dt^2 / 12) v_j v_j^T.

The data the model sees are standardised, z = (x - m) / s, with the mixture's own exact mean m and per-coordinate
standard deviation s (m = mean_j mu_j, s^2 = mean_j (Sigma_j,ii + mu_j,i^2) - m_i^2), so each coordinate has mean 0
and variance 1 in distribution. The mixture is carried to z-space exactly (mu'_j = (mu_j - m)/s, Sigma'_j =
S^-1 Sigma_j S^-1, S = diag s), so log_prob is the density of z itself: ln p_z(z) = ln p_x(x) + ln s_1 + ln s_2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from suite.data.toys import ROLL_NOISE, ROLL_T

LOG_2PI = math.log(2 * math.pi)


@dataclass
class GaussianMixture:
    weights: torch.Tensor  # (M,)
    means: torch.Tensor  # (M, d)
    covs: torch.Tensor  # (M, d, d), symmetric positive definite

    def __post_init__(self):
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.covs = torch.as_tensor(self.covs, dtype=torch.float64)
        self.chol = torch.linalg.cholesky(self.covs)  # raises for a covariance that is not positive definite

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Exact ln p(z) (float64, (N,)): logsumexp_j [ln w_j - d/2 ln 2pi - ln|L_j| - |L_j^-1 (z - mu_j)|^2 / 2]."""
        z = torch.as_tensor(z, dtype=torch.float64)
        d = self.means.shape[1]
        if z.ndim != 2 or z.shape[1] != d:
            raise ValueError(f"GaussianMixture.log_prob needs points (N, {d}), got shape {tuple(z.shape)}")
        diff = (z[None] - self.means[:, None]).unsqueeze(-1)  # (M, N, d, 1)
        sol = torch.linalg.solve_triangular(self.chol[:, None], diff, upper=False).squeeze(-1)
        logdet = self.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # ln |L_j| = ln |Sigma_j| / 2
        comp = -0.5 * (sol**2).sum(-1) - 0.5 * d * LOG_2PI - logdet[:, None] + self.weights.log()[:, None]
        return torch.logsumexp(comp, 0)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n points (float64, (n, d)): component by inverse CDF, then mu_j + L_j eps."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        j = torch.searchsorted(self.weights.cumsum(0), u).clamp_(max=len(self.weights) - 1)
        eps = torch.randn(n, self.means.shape[1], 1, generator=generator, dtype=torch.float64)
        return self.means[j] + (self.chol[j] @ eps).squeeze(-1)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and covariance of the mixture: sum_j w_j mu_j and sum_j w_j (Sigma_j + mu_j mu_j^T) - m m^T."""
        w = self.weights[:, None]
        m = (w * self.means).sum(0)
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return m, second - m[:, None] * m[None, :]


def swiss_roll_gmm(num_components: int = 32, noise: float = ROLL_NOISE) -> tuple[GaussianMixture, torch.Tensor,
                                                                                   torch.Tensor]:
    """The standardised mixture (module doc), with the raw-space mean m and scale s it was standardised by."""
    if num_components < 1:
        raise ValueError(f"gmm_2d num_components must be >= 1, got {num_components}")
    if not noise > 0:
        raise ValueError(f"gmm_2d noise must be > 0 (a covariance needs it), got {noise}")
    t0, t1 = ROLL_T
    dt = (t1 - t0) / num_components
    t = t0 + (torch.arange(num_components, dtype=torch.float64) + 0.5) * dt
    mu = torch.stack([t * t.cos(), t * t.sin()], 1)
    v = torch.stack([t.cos() - t * t.sin(), t.sin() + t * t.cos()], 1)
    cov = noise**2 * torch.eye(2, dtype=torch.float64) + (dt**2 / 12) * v[:, :, None] * v[:, None, :]
    raw = GaussianMixture(torch.ones(num_components), mu, cov)
    m, c = raw.moments()
    s = c.diagonal().sqrt()
    std = GaussianMixture(raw.weights, (mu - m) / s, cov / (s[:, None] * s[None, :]))
    return std, m, s
