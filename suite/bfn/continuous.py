"""BFN for continuous data (MATH.md s.3; BFN paper Sec. 4).

Input distribution N(mu, 1/rho) per dimension, prior (0, 1); sender N(x, 1/alpha); the network sees mu
and t and predicts the noise eps-hat, so x-hat = mu/gamma - sqrt((1 - gamma)/gamma) eps-hat (MATH.md s.3),
x-hat = 0 for t < t_min, clipped to the data range.

  L^inf(x) = -ln(sigma1) E_t[sigma1^(-2t) ||x - x-hat(theta, t)||^2]                      (MATH.md s.3)
  L^n(x)   = (n/2)(1 - sigma1^(2/n)) E_i[sigma1^(-2i/n) ||x - x-hat(theta, t_{i-1})||^2]  (MATH.md s.3)
  L^r(x)   = -ln p_O(x | theta; 1) with p_O = N(x-hat, sigma_r^2): over the data's K bins (discretised
             data, tails into the end bins, so images get bits/dim), else a Gaussian *density* (toys:
             not a discrete NLL, may be negative).
"""

from __future__ import annotations

import math

import torch

from suite.bfn.base import BFN, build_net, check_t_min, paper_hparams
from suite.bfn.dgauss import log_bin_prob
from suite.bfn.schedules import ContinuousSchedule
from suite.methods import register_method

Tensor = torch.Tensor


class GaussianFlowBFN(BFN):
    """The Gaussian input distribution, flow and update shared by continuous and discretised data."""

    def __init__(self, spec, net, sigma1: float = 1e-3, t_min: float = 1e-6, final: str = "sample"):
        super().__init__(spec, net, final)
        self.schedule = ContinuousSchedule(sigma1)
        self.sigma1 = self.schedule.sigma1
        self.t_min = check_t_min(t_min)

    @classmethod
    def from_reference_config(cls, spec, net, **cfg):
        """Build from the reference code's names: min_variance = sigma1^2 (others as the paper names them)."""
        return cls(spec, net, **paper_hparams(dict(cfg)))

    def flow(self, x: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """mu ~ p_F(. | x; t) = N(gamma x, gamma (1 - gamma) I) (MATH.md s.3); rho = sigma1^(-2t) is implied by t."""
        g = self.schedule.gamma(t)
        std = torch.sqrt(g * self.schedule.one_minus_gamma(t))  # not 1 - g: sigma1^2 may be 1e-12
        mean, std = self.bcast(g).float(), self.bcast(std).float()
        noise = torch.randn_like(x, dtype=torch.float32) if noise is None else noise
        return mean * x.float() + std * noise

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(1/gamma, sqrt((1-gamma)/gamma), keep) per example, float32, zero where t < t_min.

        The zeros stand in for the infinities at t = 0 so the unused branch stays finite (no NaN gradients).
        """
        keep = t >= max(self.t_min, 1e-300)  # t = 0 always takes the x-hat = 0 branch
        t_safe = torch.where(keep, t, torch.ones_like(t))
        inv_g = torch.where(keep, 1.0 / self.schedule.gamma(t_safe), 0.0)
        ratio = torch.where(keep, self.schedule.noise_ratio(t_safe), 0.0)
        return self.bcast(inv_g).float(), self.bcast(ratio).float(), self.bcast(keep)

    def update(self, state: tuple[Tensor, float], y: Tensor, alpha: float) -> tuple[Tensor, float]:
        """Bayesian update (MATH.md s.3): rho' = rho + alpha, mu' = (rho mu + alpha y) / rho'."""
        mu, rho = state
        rho_new = rho + alpha
        return (rho * mu + alpha * y) / rho_new, rho_new

    def prior(self, num: int, device) -> tuple[Tensor, float]:
        return torch.zeros(num, *self.spec.shape, device=device), 1.0

    def sender(self, xk: Tensor, alpha: float, generator=None) -> Tensor:
        """y ~ N(x, 1/alpha)."""
        noise = torch.randn(xk.shape, generator=generator, device=xk.device, dtype=torch.float32)
        return xk + noise / math.sqrt(alpha)


class ContinuousBFN(GaussianFlowBFN):
    """BFN for continuous data; on a discretised data set its reconstruction is over the data's bins."""

    name = "bfn_continuous"

    def __init__(
        self,
        spec,
        net,
        sigma1: float = 1e-3,
        t_min: float = 1e-6,
        x_range: tuple[float, float] | None | str = "auto",
        sigma_r: float | None = None,
        final: str = "sample",
    ):
        """x_range: x-hat is clipped to it; "auto" = (-1, 1) for discretised data, no clipping otherwise.
        sigma_r: std of the reconstruction Gaussian, default sigma1 (the reference uses 0.7 sigma1 in its
        16-bin configuration; pass it explicitly to reproduce that).
        """
        self.check_spec(spec)
        super().__init__(spec, net, sigma1, t_min, final)
        if x_range == "auto":
            x_range = (-1.0, 1.0) if spec.kind == "discretised" else None
        if x_range is not None and not (len(x_range) == 2 and x_range[0] < x_range[1]):
            raise ValueError(f"x_range must be (low, high) with low < high, or None for no clipping; got {x_range!r}")
        self.x_range = None if x_range is None else (float(x_range[0]), float(x_range[1]))
        self.sigma_r = self.sigma1 if sigma_r is None else float(sigma_r)
        if not self.sigma_r > 0:
            raise ValueError(f"sigma_r must be > 0, got {sigma_r!r}")

    @staticmethod
    def check_spec(spec) -> None:
        if spec.kind == "discrete":
            raise ValueError(
                f"bfn_continuous models continuous or discretised data; {spec.name} is discrete: use bfn_discrete"
            )

    def x_hat(self, mu: Tensor, t: Tensor) -> Tensor:
        """x-hat(theta, t) = mu/gamma - sqrt((1-gamma)/gamma) eps-hat (MATH.md s.3); 0 for t < t_min; clipped."""
        eps = self.run_net(mu[..., None], t)[..., 0]
        inv_g, ratio, keep = self.coefficients(t)
        x = torch.where(keep, mu * inv_g - ratio * eps, 0.0)
        return x if self.x_range is None else x.clamp(*self.x_range)

    def loss_cts(self, x: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """-ln(sigma1) sigma1^(-2t) ||x - x-hat||^2 (MATH.md s.3)."""
        x_hat = self.x_hat(self.flow(x, t, noise), t)
        w = (-self.schedule.log_sigma1 * self.schedule.rho(t)).float()
        return w * self.per_example((x.float() - x_hat) ** 2)

    def loss_nstep(self, x: Tensor, i: Tensor, n: int, noise: Tensor | None = None) -> Tensor:
        """n KL(N(x, 1/alpha_i) || N(x-hat, 1/alpha_i)) = (n/2) alpha_i ||x - x-hat(t_{i-1})||^2 (MATH.md s.3)."""
        t = (i.to(torch.float64) - 1) / n
        x_hat = self.x_hat(self.flow(x, t, noise), t)
        w = (0.5 * n * self.schedule.alpha_i(i, n)).float()
        return w * self.per_example((x.float() - x_hat) ** 2)

    def recon(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """-ln p_O(x | theta; 1), p_O = N(x-hat(theta, 1), sigma_r^2): discretised over bins, else a density."""
        t = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        x_hat = self.x_hat(self.flow(x, t, noise), t)
        if self.spec.kind == "discretised":
            sr = torch.full_like(x_hat, self.sigma_r)
            return -self.per_example(log_bin_prob(x.float(), x_hat, sr, self.spec.num_classes))
        z = (x.float() - x_hat) / self.sigma_r
        return self.per_example(0.5 * z * z + math.log(self.sigma_r) + 0.5 * math.log(2 * math.pi))

    # --- sampler hooks ---
    def output(self, state, t: Tensor) -> Tensor:
        return self.x_hat(state[0], t)

    def sample_output(self, out: Tensor, generator=None) -> Tensor:
        return out  # p_O is a point mass at x-hat (MATH.md s.3)

    def final_sample(self, out: Tensor, generator=None) -> Tensor:
        """x ~ N(x-hat, sigma_r^2) (snapped to the bins for discretised data), or its mode x-hat."""
        x = out
        if self.final == "sample":
            x = x + self.sigma_r * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.spec.kind == "discretised":
            K = self.spec.num_classes
            k = torch.clamp(torch.floor((x + 1.0) * K / 2), 0, K - 1)
            x = (2 * k + 1) / K - 1
        return x


@register_method("bfn_continuous")
def bfn_continuous(
    spec, backbone: str | None = None, backbone_kwargs: dict | None = None, net=None, **hparams
) -> ContinuousBFN:
    """BFN for continuous data (or images modelled as continuous). Hyperparameters: sigma1, t_min, x_range,
    sigma_r, final; the reference config's `min_variance` (= sigma1^2) is accepted and converted."""
    ContinuousBFN.check_spec(spec)
    net = net if net is not None else build_net(spec, backbone, backbone_kwargs, 1, 1)
    return ContinuousBFN(spec, net, **paper_hparams(hparams))
