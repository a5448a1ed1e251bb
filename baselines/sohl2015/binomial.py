"""Binomial diffusion of Sohl-Dickstein et al. 2015 (paper s.2, Table App.1; MATH.md s.7), for binary data.

Forward q(x^t = 1|x^{t-1}) = x^{t-1}(1 - beta_t) + beta_t p1 with beta_t = 1/(T - t + 1) (p1 = 0.5 in the paper's
kernel table; any p1 in (0, 1) is stationary), so abar_t = (T - t)/T and x^T ~ pi = B(p1) exactly.
Reverse p(x^{t-1} = 1|x^t) = f_b = sigmoid(z + logit(x^t(1 - beta_t) + beta_t p1)): a perturbation, read out
through the temporal basis, around the forward kernel's reversal under pi (the same kernel, by detailed balance).
The bound is on -ln P(x) of the binary data itself: a discrete NLL bound, no dequantisation needed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from baselines.sohl2015.base import SohlDiffusion
from baselines.sohl2015.kernels import bernoulli_kl_logits, bernoulli_posterior_logit, binary_entropy
from baselines.sohl2015.schedules import binomial_betas
from suite.data.base import DataSpec


class SohlBinomial(SohlDiffusion):
    name = "sohl_binomial"
    n_readout = 1

    def __init__(
        self,
        spec: DataSpec,
        net: nn.Module,
        *,
        T: int = 2000,
        n_basis: int = 10,
        p1: float = 0.5,
        null_mean: float | None = None,
        net_time_input: bool = False,
        max_batch: int = 1024,
    ):
        if spec.kind != "discrete" or spec.num_classes != 2:
            raise ValueError(
                f"sohl_binomial models binary data (discrete, K = 2); {spec.name!r} is {spec.kind} "
                f"with K = {spec.num_classes}: "
                "use sohl_gaussian for continuous or discretised data, a multinomial diffusion for K > 2"
            )
        if not 0 < p1 < 1:
            raise ValueError(f"p1 (the stationary probability of a 1) must lie in (0, 1), got {p1!r}")
        if null_mean is not None and not 0 < null_mean < 1:
            raise ValueError(
                f"null_mean (the independent-Bernoulli null model's p) must lie in (0, 1) or be None, got {null_mean!r}"
            )
        super().__init__(spec, net, T, n_basis, net_time_input, max_batch)
        self.p1, self.null_mean = float(p1), null_mean
        self.register_buffer("_betas", binomial_betas(T), persistent=False)

    def betas(self) -> torch.Tensor:
        return self._betas.double()

    def _net_input(self, xt):
        return 2 * xt - 1  # bits centred at 0

    # ---- data <-> model space ---------------------------------------------------------------------------
    def _to_model(self, x, generator):
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"{self.name}: binary data must hold 0/1 class indices; "
                f"got values in [{x.min().item()}, {x.max().item()}]"
            )
        return x.float(), {}

    def _to_data(self, y):
        return y.long()

    def _log_null(self, y, x):
        """L_null: ln prod_d B(x_d; m), independent Bernoullis at the data mean m (null_mean, else this batch's
        mean)."""
        m = y.mean().clamp(1e-6, 1 - 1e-6) if self.null_mean is None else torch.tensor(self.null_mean, device=y.device)
        return (y * torch.log(m) + (1 - y) * torch.log1p(-m)).flatten(1).sum(1)

    # ---- kernels --------------------------------------------------------------------------------------------
    def _forward_sample(self, y, a_t, generator):
        m = a_t.float() * y + (1 - a_t).float() * self.p1
        return torch.bernoulli(m.expand(y.shape).contiguous(), generator=generator)

    def _posterior(self, y, xt, a_prev, a_t):
        return bernoulli_posterior_logit(y, xt, a_prev, a_t, self.p1)

    def _reverse(self, xt, beta, times):
        """Logit of f_b (B, *shape), float32; the forward-reversal logit is taken in float64 for tiny beta."""
        z = self.readout(xt, times)[..., 0]
        shape = (-1,) + (1,) * (xt.dim() - 1)
        b, p1 = beta.double().view(shape), self.p1
        l1 = torch.log1p(-b * (1 - p1)) - torch.log(b * (1 - p1))  # logit(1 - beta (1 - p1)), x^t = 1
        l0 = torch.log(b * p1) - torch.log1p(-b * p1)  # logit(beta p1), x^t = 0
        return z + torch.where(xt > 0.5, l1.float(), l0.float())

    def _kl_elementwise(self, q, p):
        return bernoulli_kl_logits(q, p)

    def _fixed_terms(self, y, b1, aT):
        """Entropies of Eq. 14 (binary) and the corrections, which vanish for p1 = 0.5 (pi uniform)."""
        D, p1 = self.spec.ndim, self.p1
        b1f, aTf = b1.float(), aT.float()
        lp = math.log(p1 / (1 - p1))
        dev = (y - p1).flatten(1).sum(1)
        h_p1 = -(p1 * math.log(p1) + (1 - p1) * math.log(1 - p1))
        return {
            "entropy_q1": binary_entropy(y * (1 - b1f) + b1f * p1).flatten(1).sum(1),  # H_q(X^1|X^0)
            "neg_entropy_qT": -binary_entropy(aTf * y + (1 - aTf) * p1).flatten(1).sum(1),  # -H_q(X^T|X^0)
            "entropy_pT": torch.full_like(dev, D * h_p1),  # H_p(X^T)
            "prior_correction": -aTf * lp * dev,  # E_q[-ln pi(x^T)] - H_p(X^T)
            "first_step_correction": -b1f * lp * dev,  # -E_q[ln pi(x^0) - ln pi(x^1)]
        }

    # ---- sampling -------------------------------------------------------------------------------------------
    def _prior_sample(self, num, generator):
        return torch.bernoulli(torch.full((num, *self.spec.shape), self.p1, device=self.device), generator=generator)

    def _reverse_sample(self, logits, generator):
        return torch.bernoulli(torch.sigmoid(logits), generator=generator)

    def _first_step_sample(self, x1, b1, generator):
        """Fixed last reverse step: the forward kernel itself, its own reversal under pi = B(p1) (App. B.2)."""
        b1 = b1.float()
        return torch.bernoulli(x1 * (1 - b1) + b1 * self.p1, generator=generator)
