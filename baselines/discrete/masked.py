"""Absorbing-state (masked) diffusion with a continuous-time bound: MD4 (Shi et al. 2024, arXiv 2406.04329) /
MDLM (Sahoo et al. 2024, arXiv 2406.07524), MATH.md s.10.

Forward, per token: q(z_t | x) = Cat(alpha_t e_x + (1 - alpha_t) e_mask), alpha decreasing in t in [0, 1].
Schedules: alpha_t = alpha_1 + (alpha_0 - alpha_1) g(t), g linear 1 - t or cosine 1 - cos(pi/2 (1 - t)) (MD4);
alpha_0 = 1, alpha_1 = 0 by default.
Reverse (SUBS parameterisation): mu_theta(z_t, t) over the K real tokens (the mask gets probability 0), unmasked
tokens carried over. For s < t a masked token stays masked with prob (1 - alpha_s)/(1 - alpha_t) and becomes
k with prob (alpha_s - alpha_t)/(1 - alpha_t) mu_theta[k]; the forward posterior is the same with mu = e_x, so the
per-step KL is (alpha_s - alpha_t)/(1 - alpha_t) sum_{i masked} -ln mu_theta(z_t, t)_i[x_i] (derived; the mask
branch cancels). Hence, with t_j = j/T, s_j = (j - 1)/T:
    L^T   = sum_j E_q[(alpha_{s_j} - alpha_{t_j})/(1 - alpha_{t_j}) sum_{i masked} -ln mu_theta(z_{t_j}, t_j)_i[x_i]]
    L^inf = int_0^1 [-alpha'_t/(1 - alpha_t)] E_q[sum_{i masked} -ln mu_theta(z_t, t)_i[x_i]] dt   (T -> inf)
End terms (zero for alpha_0 = 1, alpha_1 = 0):
    prior  KL(q(z_1|x) || p(z_1)), p(z_1) = Cat(alpha_1 U(K) + (1 - alpha_1) e_mask):  = alpha_1 D ln K
    recon  -E_q ln p(x | z_0) = E_q sum_{i masked at t = 0} -ln mu_theta(z_0, 0)_i[x_i]   (one more pass)
The bound, one-pass estimators and the sampler all work with any n; continuous time is n_steps=None.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from suite.data.base import DataSpec
from suite.methods import Method, register_method

from .common import (
    bernoulli,
    build_discrete,
    call_net,
    check_spec,
    check_t_sampling,
    check_values,
    gumbel_argmax,
    sample_steps,
    uniform_times,
)

SCHEDULES = ("linear", "cosine")


class MaskedDiffusion(Method):
    """Absorbing-state diffusion on K classes + a mask token (index K); the network predicts x over K classes."""

    name = "masked_diffusion"
    continuous_time = True
    extra_input_classes = 1  # the network reads one-hot z_t over the K classes and the mask

    def __init__(
        self,
        spec: DataSpec,
        net: nn.Module,
        *,
        schedule: str = "linear",
        alpha0: float = 1.0,
        alpha1: float = 0.0,
        t_sampling: str = "iid",
        unmasked_weight: float = 0.0,
    ):
        super().__init__(spec)
        self.K = check_spec(spec, self.name)
        self.mask_id = self.K
        if not (math.isfinite(float(unmasked_weight)) and float(unmasked_weight) >= 0):
            raise ValueError(f"{self.name}: unmasked_weight must be a finite number >= 0, got {unmasked_weight!r}")
        self.unmasked_weight = float(unmasked_weight)
        if schedule not in SCHEDULES:
            raise ValueError(f"{self.name}: unknown schedule {schedule!r}; use one of {SCHEDULES}")
        if not (0 < alpha0 <= 1 and 0 <= alpha1 < alpha0):
            raise ValueError(
                f"{self.name}: need 0 <= alpha1 < alpha0 <= 1 (alpha_t falls from alpha0 at t = 0 to alpha1 at t = 1), "
                f"got alpha0={alpha0}, alpha1={alpha1}"
            )
        self.schedule, self.alpha0, self.alpha1 = schedule, float(alpha0), float(alpha1)
        self.t_sampling = check_t_sampling(t_sampling, self.name)
        self.net = net

    # ---- schedule (float64) -----------------------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha_t, 1 - alpha_t, alpha'_t) in float64; 1 - alpha is formed directly so it stays exact near t = 0."""
        t = t.to(torch.float64)
        a0, a1 = self.alpha0, self.alpha1
        if self.schedule == "linear":
            one_m_g, dg = t, -torch.ones_like(t)
        else:  # g = 1 - cos(pi/2 (1 - t)) = 1 - sin(pi t / 2)
            one_m_g, dg = torch.sin(math.pi * t / 2), -math.pi / 2 * torch.cos(math.pi * t / 2)
        one_m_alpha = (1 - a0) + (a0 - a1) * one_m_g
        return 1 - one_m_alpha, one_m_alpha, (a0 - a1) * dg

    def resolve_steps(self, n_steps: int | None) -> int | None:
        if n_steps is None:
            return None
        if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 1:
            raise ValueError(f"{self.name}: n_steps must be None (continuous time) or an integer >= 1, got {n_steps!r}")
        return int(n_steps)

    # ---- the pieces of the bound ------------------------------------------------------------------------
    def q_sample(self, x: torch.Tensor, one_m_alpha: torch.Tensor, generator=None) -> torch.Tensor:
        """z_t: each token replaced by the mask with probability 1 - alpha_t (per example)."""
        return torch.where(bernoulli(one_m_alpha, tuple(x.shape), generator), self.mask_id, x)

    def log_mu(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ln mu_theta(z_t, t) over the K real tokens (B, *S, K), float32; the network sees one-hot z over K + 1.

        SUBS: only masked positions are ever scored or sampled from; unmasked ones are carried over.
        """
        h = F.one_hot(z, self.K + 1).float()
        return torch.log_softmax(call_net(self.net, h, t, self.spec.shape, self.K, self.name), -1)

    def masked_nll(self, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """sum_{i masked in z} -ln mu_theta(z, t)_i[x_i], per example (B,)."""
        nll = -self.log_mu(z, t).gather(-1, x.unsqueeze(-1)).squeeze(-1)
        return torch.where(z == self.mask_id, nll, torch.zeros_like(nll)).flatten(1).sum(1)

    def prior_term(self, B: int, device=None) -> torch.Tensor:
        """KL(q(z_1|x) || Cat(alpha_1 U(K) + (1 - alpha_1) e_mask)) = alpha_1 ln K per token (closed form)."""
        return torch.full((B,), self.alpha1 * math.log(self.K) * self.spec.ndim, device=device)

    def recon_term(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """-ln p(x | z_0), z_0 ~ q(.|x): masked tokens decoded by mu_theta(z_0, 0); no pass when alpha_0 = 1."""
        B = x.shape[0]
        if self.alpha0 == 1.0:
            return torch.zeros(B, device=x.device)
        t0 = torch.zeros(B, dtype=torch.float64, device=x.device)
        z0 = self.q_sample(x, self.alpha(t0)[1], generator)
        return self.masked_nll(x, z0, t0)

    def step_weight(self, j: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t_j = j/n and the discrete-time weight (alpha_s - alpha_t)/(1 - alpha_t), s = (j - 1)/n (float64)."""
        t = j.to(torch.float64) / n
        a_t, one_m_a_t, _ = self.alpha(t)
        a_s = self.alpha((j - 1).to(torch.float64) / n)[0]
        return t, (a_s - a_t) / one_m_a_t

    def sample_steps(self, B: int, n: int | None, device=None, generator=None) -> torch.Tensor:
        """n None: t ~ U(0, 1] (float64; t = 0 is excluded, the weight -alpha'/(1 - alpha) is infinite there when
        alpha_0 = 1); integer n: j ~ U{1..n}. iid or stratified (u_b = (u + b/B) mod 1)."""
        if n is None:
            return 1 - uniform_times(B, stratified=self.t_sampling == "stratified", device=device, generator=generator)
        return sample_steps(B, n, self.t_sampling, device, generator)

    def continuous_term(self, x: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """The L^inf integrand at t (B,): [-alpha'_t/(1 - alpha_t)] sum_{i masked} -ln mu_theta(z_t, t)_i[x_i]."""
        _, one_m_a, da = self.alpha(t)
        z = self.q_sample(x, one_m_a, generator)
        return (-da / one_m_a).float() * self.masked_nll(x, z, t)

    def step_term(self, x: torch.Tensor, j: torch.Tensor, n: int, generator=None) -> torch.Tensor:
        """Term j of L^n (B,), one pass: (alpha_s - alpha_t)/(1 - alpha_t) sum_{i masked} -ln mu_theta(z_t, t)_i[x_i]
        with t = j/n, s = (j - 1)/n."""
        t, w = self.step_weight(j, n)
        z = self.q_sample(x, self.alpha(t)[1], generator)
        return w.float() * self.masked_nll(x, z, t)

    def diffusion_estimate(self, x: torch.Tensor, n: int | None, generator=None) -> torch.Tensor:
        """One-pass unbiased estimate of L^inf (n None) or of L^n (n * term_j, j ~ U{1..n})."""
        s = self.sample_steps(x.shape[0], n, x.device, generator)
        return self.continuous_term(x, s, generator) if n is None else n * self.step_term(x, s, n, generator)

    def step_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """Every term of L^n, (B, n): column j - 1 is a one-sample estimate of term j (n network passes)."""
        self._check(x)
        n = self.resolve_steps(n_steps)
        if n is None:
            raise ValueError(f"{self.name}: step_terms needs an integer n_steps (continuous time has no steps)")
        B = x.shape[0]
        js = [torch.full((B,), j, device=x.device) for j in range(1, n + 1)]
        return torch.stack([self.step_term(x, j, n, generator) for j in js], 1)

    def full_bound_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> dict[str, torch.Tensor]:
        """prior, recon and diffusion per example. Integer n: the full L^n term by term (n passes);
        n None: L^inf has no finite term list, so diffusion is the one-pass estimate (as in `bound_terms`)."""
        self._check(x)
        n = self.resolve_steps(n_steps)
        diff = self.diffusion_estimate(x, None, generator) if n is None else self.step_terms(x, n, generator).sum(1)
        return {
            "prior": self.prior_term(x.shape[0], x.device),
            "recon": self.recon_term(x, generator),
            "diffusion": diff,
        }

    def full_bound(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """The bound with L^n computed term by term (n passes); n None: the one-pass L^inf estimate."""
        return sum(self.full_bound_terms(x, n_steps, generator).values())

    # ---- the contract -----------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        self.check_batch(x)
        check_values(x, self.K, self.name)

    def bound_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> dict[str, torch.Tensor]:
        """One draw of the bound by term (nats per example): prior, recon and the one-pass diffusion estimate
        (L^inf, or n term_j with j ~ U{1..n}); they sum to `nll`."""
        self._check(x)
        n = self.resolve_steps(n_steps)
        diff = self.diffusion_estimate(x, n, generator)  # drawn before recon: nll's order of random draws
        return {"prior": self.prior_term(x.shape[0], x.device), "recon": self.recon_term(x, generator),
                "diffusion": diff}

    def nll(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """One-sample upper bound on -ln p(x): prior + recon + one-pass diffusion estimate (L^inf or L^n)."""
        return sum(self.bound_terms(x, n_steps, generator).values())

    def loss(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """Training objective: the bound estimate (continuous time by default, as MD4 / MDLM train), plus, when
        `unmasked_weight` w > 0, the training-only auxiliary term w sum_{i unmasked in z_t} -ln mu_theta(z_t, t)_i[x_i]
        from the same network pass (`aux_terms`). The auxiliary term is never part of `nll` or any bound: with
        w = 0 (the default) this is `nll` itself.

        Why: a scored (masked) position's input is always the mask token, so its own input carries nothing and the
        network's only way below the unigram is attention, which starts uniform (an attention saddle; measured in
        shared/notes/baselines-at-null.md). Scoring the unmasked positions too gives a copy signal that makes
        attention local early on; under SUBS those positions are carried over, so their prediction never enters the
        bound.
        """
        if self.unmasked_weight == 0.0:
            return self.nll(x, n_steps, generator)
        terms, aux = self.aux_terms(x, n_steps, generator)
        return sum(terms.values()) + self.unmasked_weight * aux

    def aux_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None):
        """(bound_terms, aux) from one draw: the bound terms exactly as `bound_terms` draws them (same random order,
        so the same generator gives the same values) and aux = sum_{i unmasked in z} -ln mu_theta(z, t)_i[x_i] (B,)
        at the diffusion estimate's (t, z)."""
        self._check(x)
        n = self.resolve_steps(n_steps)
        s = self.sample_steps(x.shape[0], n, x.device, generator)
        if n is None:
            _, one_m_a, da = self.alpha(s)
            t, w = s, -da / one_m_a
        else:
            t, w = self.step_weight(s, n)
            one_m_a = self.alpha(t)[1]
        z = self.q_sample(x, one_m_a, generator)
        nll_tok = -self.log_mu(z, t).gather(-1, x.unsqueeze(-1)).squeeze(-1)
        masked = z == self.mask_id
        zero = torch.zeros_like(nll_tok)
        diff = w.float() * torch.where(masked, nll_tok, zero).flatten(1).sum(1)
        if n is not None:
            diff = n * diff
        aux = torch.where(masked, zero, nll_tok).flatten(1).sum(1)
        terms = {"prior": self.prior_term(x.shape[0], x.device), "recon": self.recon_term(x, generator),
                 "diffusion": diff}
        return terms, aux

    def prior_sample(self, num: int, generator=None) -> torch.Tensor:
        """z_1 ~ p(z_1): all masked, except that with alpha_1 > 0 each token is a uniform class w.p. alpha_1."""
        dev, shape = self.device, (num, *self.spec.shape)
        z = torch.full(shape, self.mask_id, device=dev)
        if self.alpha1 > 0:
            keep = bernoulli(torch.full((num,), self.alpha1, dtype=torch.float64, device=dev), shape, generator)
            z = torch.where(keep, torch.randint(self.K, shape, generator=generator, device=dev), z)
        return z

    @torch.no_grad()
    def reverse_step(self, z: torch.Tensor, j: int, n: int, generator=None) -> torch.Tensor:
        """z_s ~ p(z_s | z_t), t = j/n, s = (j - 1)/n: each masked token revealed w.p. (alpha_s - alpha_t)/(1 - alpha_t)
        with a value drawn from mu_theta(z_t, t); visible tokens carried over."""
        t, w = self.step_weight(torch.full((z.shape[0],), j, device=z.device), n)
        draw = gumbel_argmax(self.log_mu(z, t), generator)
        reveal = (z == self.mask_id) & bernoulli(w, tuple(z.shape), generator)
        return torch.where(reveal, draw, z)

    @torch.no_grad()
    def sample(self, num: int, n_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling with n steps from the prior; tokens still masked at t = 0 (alpha_0 < 1) are decoded by
        mu_theta(z_0, 0), as the recon term scores them."""
        n = self.resolve_steps(n_steps)
        if n is None:
            raise ValueError(f"{self.name}: sampling needs an integer number of steps n_steps >= 1")
        z = self.prior_sample(num, generator)
        for j in range(n, 0, -1):
            z = self.reverse_step(z, j, n, generator)
        if self.alpha0 < 1:
            draw = gumbel_argmax(self.log_mu(z, torch.zeros(num, dtype=torch.float64, device=z.device)), generator)
            z = torch.where(z == self.mask_id, draw, z)
        return z


@register_method("masked_diffusion")
def build_masked_diffusion(
    spec: DataSpec,
    backbone: str = "mlp",
    backbone_kwargs: dict | None = None,
    net: nn.Module | None = None,
    **hyperparameters,
) -> MaskedDiffusion:
    """Factory: a shared backbone with K + 1 one-hot input features (mask included) and K output logits."""
    return build_discrete(MaskedDiffusion, spec, backbone, backbone_kwargs, net, **hyperparameters)
