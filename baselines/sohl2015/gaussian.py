"""Gaussian diffusion of Sohl-Dickstein et al. 2015 (paper s.2, App. B.2 and D; MATH.md s.7).

Forward q(x^t|x^{t-1}) = N(sqrt(1 - beta_t) x^{t-1}, beta_t I), pi = N(0, I). Reverse kernel a perturbation around
the forward one, read out through the temporal basis (z^mu, z^Sigma per dimension):
  "code"  (default; public code): mu = x^t sqrt(1 - beta_t) + z^mu sqrt(beta_t),
          Sigma = sigmoid(z^Sigma/sqrt(T) + logit beta_t)  -> exactly the forward kernel at z = 0;
  "paper" (App. D.2.4): Sigma = sigmoid(z^Sigma + logit beta_t), mu = (x^t - z^mu)(1 - Sigma) + z^mu.

Data space -> model space: y = (x - data_shift)/data_scale (the paper fits unit-variance data). Then
  continuous data:  -ln p_x(x) <= -K(y) + D ln data_scale                    (a density bound: any sign)
  discretised data: y from x + u, u ~ U(-1/K_bins, 1/K_bins) per dimension (uniform dequantisation over the bin
                    of width 2/K_bins around each centre); by Jensen,
                    -ln P(bin) <= E_u[-ln p_x(x + u)] - D ln(2/K_bins),
                    so -ln P(bin) <= -K(y) + D ln data_scale - D ln(2/K_bins) in expectation: a discrete NLL bound.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.sohl2015.base import SohlDiffusion
from baselines.sohl2015.kernels import LOG_2PI_E, gaussian_kl, gaussian_posterior
from baselines.sohl2015.schedules import GaussianBetas
from suite.data.base import DataSpec, bin_centres_from_index

REVERSE_PARAMS = ("code", "paper")
LOGIT_MAX = 40.0  # |variance logit| cap: reverse variance >= 4e-18, so saturated outputs keep the bound finite
SCHEDULES = ("fixed", "learned")


class SohlGaussian(SohlDiffusion):
    name = "sohl_gaussian"
    n_readout = 2  # (z^mu, z^Sigma)

    def __init__(
        self,
        spec: DataSpec,
        net: nn.Module,
        *,
        T: int = 1000,
        n_basis: int = 10,
        beta1: float = 1e-3,
        schedule: str = "fixed",
        reverse_param: str = "code",
        data_shift: float = 0.0,
        data_scale: float = 1.0,
        net_time_input: bool = False,
        max_batch: int = 1024,
    ):
        if spec.kind not in ("continuous", "discretised"):
            raise ValueError(
                f"sohl_gaussian models continuous or discretised data; {spec.name!r} is {spec.kind}: "
                "use sohl_binomial for binary data"
            )
        if schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {SCHEDULES} (constant fraction erased per step, or learned on K), "
                f"got {schedule!r}"
            )
        if reverse_param not in REVERSE_PARAMS:
            raise ValueError(f"reverse_param must be one of {REVERSE_PARAMS}, got {reverse_param!r}")
        if not (math.isfinite(data_scale) and data_scale > 0) or not math.isfinite(data_shift):
            raise ValueError(
                f"data_scale must be finite and > 0 and data_shift finite (model space y = (x - shift)/scale), "
                f"got {data_scale!r}, {data_shift!r}"
            )
        super().__init__(spec, net, T, n_basis, net_time_input, max_batch)
        self.schedule = GaussianBetas(T, beta1, learned=schedule == "learned", n_basis=n_basis)
        self.reverse_param = reverse_param
        self.data_shift, self.data_scale = float(data_shift), float(data_scale)

    def betas(self) -> torch.Tensor:
        return self.schedule()

    # ---- data <-> model space ---------------------------------------------------------------------------
    def _to_model(self, x, generator):
        x = x.float()
        D, B = self.spec.ndim, x.shape[0]
        terms = {"log_scale": torch.full((B,), D * math.log(self.data_scale), device=x.device)}
        if self.spec.kind == "discretised":
            if x.abs().max() > 1:
                raise ValueError(
                    f"{self.name}: discretised data must be bin centres in [-1, 1]; "
                    f"got values up to {x.abs().max().item():.3g}"
                )
            Kb = self.spec.num_classes
            u = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) / Kb
            x = x + u
            terms["dequantisation"] = torch.full((B,), -D * math.log(2.0 / Kb), device=x.device)
        return (x - self.data_shift) / self.data_scale, terms

    def _to_data(self, y):
        x = y * self.data_scale + self.data_shift
        if self.spec.kind == "discretised":  # snap to the nearest bin centre
            Kb = self.spec.num_classes
            x = bin_centres_from_index(torch.clamp(torch.floor((x + 1) * Kb / 2), 0, Kb - 1), Kb)
        return x

    def _log_null(self, y, x):
        """L_null: ln N(y; 0, I), the isotropic unit Gaussian's log-density per example (Table 1's baseline)."""
        return -0.5 * (y.flatten(1) ** 2).sum(1) - 0.5 * self.spec.ndim * math.log(2 * math.pi)

    # ---- kernels --------------------------------------------------------------------------------------------
    def _forward_sample(self, y, a_t, generator):
        eps = torch.randn(y.shape, generator=generator, device=y.device)
        return a_t.sqrt().float() * y + (1 - a_t).sqrt().float() * eps

    def _posterior(self, y, xt, a_prev, a_t):
        return gaussian_posterior(y, xt, a_prev, a_t)

    def _reverse(self, xt, beta, times):
        """(mean, ln variance) of p(x^{s_{i-1}}|x^{s_i}) with beta' = composed forward beta (B,), float32."""
        z = self.readout(xt, times)
        z_mu, z_sig = z[..., 0], z[..., 1]
        shape = (-1,) + (1,) * (xt.dim() - 1)
        beta = beta.double().view(shape)
        logit_b = torch.logit(beta, eps=1e-12).float()
        if self.reverse_param == "code":
            c = (z_sig / math.sqrt(self.T) + logit_b).clamp(-LOGIT_MAX, LOGIT_MAX)
            mean = xt * (1 - beta).sqrt().float() + z_mu * beta.sqrt().float()
        else:
            c = (z_sig + logit_b).clamp(-LOGIT_MAX, LOGIT_MAX)
            mean = (xt - z_mu) * (1 - torch.sigmoid(c)) + z_mu
        log_var = F.logsigmoid(c)
        return mean, log_var

    def _kl_elementwise(self, q, p):
        return gaussian_kl(q[0], q[1], p[0], p[1])

    def _fixed_terms(self, y, b1, aT):
        """Entropies of Eq. 14 and the two corrections for data that is not unit variance (module docstring of base)."""
        D = self.spec.ndim
        ss = (y.flatten(1) ** 2 - 1).sum(1)
        ones = torch.ones_like(ss)
        return {
            "entropy_q1": ones * (0.5 * D * (LOG_2PI_E + torch.log(b1))).float(),  # H_q(X^1|X^0)
            "neg_entropy_qT": ones * (-0.5 * D * (LOG_2PI_E + torch.log(1 - aT))).float(),  # -H_q(X^T|X^0)
            "entropy_pT": ones * (0.5 * D * LOG_2PI_E),  # H_p(X^T)
            "prior_correction": 0.5 * aT.float() * ss,  # E_q[-ln pi(x^T)] - H_p(X^T)
            "first_step_correction": 0.5 * b1.float() * ss,  # -E_q[ln pi(x^0) - ln pi(x^1)]
        }

    # ---- sampling -------------------------------------------------------------------------------------------
    def _prior_sample(self, num, generator):
        return torch.randn((num, *self.spec.shape), generator=generator, device=self.device)

    def _reverse_sample(self, p, generator):
        mean, log_var = p
        return mean + (0.5 * log_var).exp() * torch.randn(mean.shape, generator=generator, device=mean.device)

    def _first_step_sample(self, x1, b1, generator):
        """Fixed last reverse step: the forward kernel's reversal under pi = N(0, I) is the same kernel (App. B.2)."""
        eps = torch.randn(x1.shape, generator=generator, device=x1.device)
        return (1 - b1).sqrt().float() * x1 + b1.sqrt().float() * eps
