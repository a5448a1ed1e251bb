"""DDPM / improved-DDPM on discretised images: the full variational bound in nats (MATH.md s.8).

  L = L_T + sum_{t=2..T} L_{t-1} + L_0
  L_T     = KL(q(x_T | x_0) || N(0, I))
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))            (Ho et al. 2020, Eq. 5)
  L_0     = -ln p(x_0 | x_1), a discretised Gaussian on the data's K bins

The network predicts eps (and, for `learned_range`, the interpolation v of Nichol & Dhariwal 2021, Eq. 15).
`nll` is one draw of the unbiased estimator L_T + n * term_t, t ~ U{1..n} (term_1 = L_0, term_t = L_{t-1}),
one network pass per example (`bound_terms`: the same draw by term); `full_bound` computes all n terms (n passes;
`full_bound_terms` by term, `step_terms` the (B, n) list). With n < T the bound is that of
the respaced chain (a sub-sequence of the grid with composed kernels), still a bound on -ln p(x).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from suite.data.base import DataSpec, bin_centres_from_index, index_from_bin_centres
from suite.methods import Method, register_method

from .bound import discretised_gaussian_log_prob
from .common import (
    NetCaller,
    build_net,
    check_bins,
    check_discretised,
    check_t_sampling,
    expand_to,
    module_device,
    randn_like,
    sample_steps,
)
from .schedules import Tables, make_betas

VARIANCES = ("fixed_small", "fixed_large", "learned_range")
LOSSES = ("simple", "hybrid", "vlb")


class DDPM(Method):
    """Gaussian diffusion with an eps-predicting network; bound terms in nats per example (summed over D)."""

    name = "ddpm"
    continuous_time = False  # n_steps=None means the trained grid of T steps

    def __init__(
        self,
        spec: DataSpec,
        net: nn.Module,
        T: int = 1000,
        schedule: str = "cosine",
        beta_start: float | None = None,
        beta_end: float | None = None,
        variance: str = "learned_range",
        loss_type: str = "hybrid",
        vlb_weight: float = 1e-3,
        clip_denoised: bool = True,
        t_sampling: str = "iid",
    ):
        super().__init__(spec)
        self.K = check_discretised(spec, "ddpm")
        if variance not in VARIANCES:
            raise ValueError(f"ddpm: variance must be one of {VARIANCES}, got {variance!r}")
        if loss_type not in LOSSES:
            raise ValueError(f"ddpm: loss_type must be one of {LOSSES}, got {loss_type!r}")
        if loss_type == "simple" and variance == "learned_range":
            raise ValueError("ddpm: a learned_range variance is trained only by L_vlb; use loss_type='hybrid' or 'vlb'")
        if loss_type == "hybrid" and variance != "learned_range":
            raise ValueError("ddpm: 'hybrid' adds L_vlb with the mean frozen, which trains nothing unless "
                             "variance='learned_range'; use loss_type='simple' or 'vlb' with a fixed variance")
        if not (math.isfinite(vlb_weight) and vlb_weight > 0):
            raise ValueError(f"ddpm: vlb_weight must be > 0 (improved-diffusion uses 0.001), got {vlb_weight}")
        self.tables = Tables.from_betas(make_betas(schedule, T, beta_start, beta_end))
        self.T, self.variance, self.loss_type, self.vlb_weight = T, variance, loss_type, float(vlb_weight)
        self.clip_denoised = bool(clip_denoised)
        self.t_sampling = check_t_sampling(t_sampling, "ddpm")
        self.out_features = 2 if variance == "learned_range" else 1
        self.net = NetCaller(net, spec.shape, self.out_features, "ddpm")
        self._cache: dict[tuple[int, str], Tables] = {}

    @property
    def num_steps(self) -> int:
        """The trained grid's T: n_steps=None evaluates on it, n_steps = n <= T on n of its steps."""
        return self.T

    # ---- tables -------------------------------------------------------------------------------------------
    def grid(self, n_steps: int | None, device=None) -> Tables:
        """Float64 tables of the n-step chain (n = T: the trained grid), cached per (n, device)."""
        n = self.T if n_steps is None else n_steps
        device = torch.device(device or module_device(self))
        key = (n, str(device))
        if key not in self._cache:
            self._cache[key] = self.tables.respace(n).to(device)
        return self._cache[key]

    def sample_steps(self, B: int, n: int, device, generator=None) -> torch.Tensor:
        """t in 1..n per example, iid (or stratified across the batch: t_sampling); long."""
        return sample_steps(B, n, self.t_sampling, device, generator)

    # ---- one step of the reverse model ------------------------------------------------------------------
    def reverse(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, tab: Tables, clip: bool,
                eps: torch.Tensor | None = None, x0: torch.Tensor | None = None):
        """Model mean, log variance and x0_hat of p(x_{t-1} | x_t) from the network output (MATH.md s.8).

        Given the true (x0, eps) (bound evaluation), x0_hat = x0 - sqrt((1 - abar)/abar) (eps_hat - eps) is the
        same number as (x_t - sqrt(1 - abar) eps_hat)/sqrt(abar) without its cancellation.
        """
        i = t - 1
        f = lambda v: expand_to(v.float(), x_t)  # noqa: E731 (float64 table -> float32, broadcast)
        eps_hat = out[..., 0]
        if eps is not None:
            x0_hat = x0 - f(torch.sqrt(tab.one_m_abar[i] / tab.abar[i])) * (eps_hat - eps)
        else:
            x0_hat = (x_t - f(tab.one_m_abar[i].sqrt()) * eps_hat) / f(tab.abar[i].sqrt())
        if clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        mean = f(tab.c1[i]) * x0_hat + f(tab.c2[i]) * x_t
        if self.variance == "learned_range":
            frac = (out[..., 1] + 1) / 2  # Nichol & Dhariwal Eq. 15: ln s^2 = v ln beta + (1 - v) ln beta~
            logvar = frac * f(tab.log_betas_large[i]) + (1 - frac) * f(tab.log_post_var_clipped[i])
        else:
            lv = tab.log_betas_large if self.variance == "fixed_large" else tab.log_post_var_clipped
            logvar = f(lv[i]).expand_as(x_t)
        return mean, logvar, x0_hat

    def term_from_output(self, out, x0, x_t, eps, t, tab: Tables, clip: bool) -> torch.Tensor:
        """term_t per example (B,): L_0 = -ln p(x0 | x1) where t = 1, else L_{t-1} = KL(q(x_{t-1}|x_t,x0) || p).

        KL of two Gaussians: mean part c1^2 (x0 - x0_hat)^2 / (2 s^2) (as mu~ - mu = c1 (x0 - x0_hat)) plus the
        variance part 0.5 (expm1(d) - d), d = ln beta~_t - ln s^2, exact in float32 as d -> 0.
        """
        mean, logvar, x0_hat = self.reverse(out, x_t, t, tab, clip, eps, x0)
        first = t == 1
        n_first = int(first.sum())  # the decoder (float64 CDFs) only where t = 1, the KL only where t >= 2
        if n_first == 0:
            return self._kl(x0, x0_hat, logvar, t, tab)
        if n_first == t.numel():
            return self._decoder(x0, mean, logvar)
        res = torch.empty(t.shape, device=x0.device, dtype=torch.float32)
        rest = ~first
        res = res.index_put((first,), self._decoder(x0[first], mean[first], logvar[first]))
        return res.index_put((rest,), self._kl(x0[rest], x0_hat[rest], logvar[rest], t[rest], tab))

    def _kl(self, x0, x0_hat, logvar, t, tab: Tables) -> torch.Tensor:
        i = t - 1
        c1 = expand_to(tab.c1[i].float(), x0)
        d = expand_to(tab.log_post_var_clipped[i].float(), x0) - logvar
        return (0.5 * (torch.expm1(d) - d + (c1 * (x0 - x0_hat)) ** 2 * torch.exp(-logvar))).flatten(1).sum(1)

    def _decoder(self, x0, mean, logvar) -> torch.Tensor:
        return -discretised_gaussian_log_prob(x0, mean, 0.5 * logvar, self.K).float().flatten(1).sum(1)

    def forward_sample(self, x0: torch.Tensor, t: torch.Tensor, tab: Tables, generator=None):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, eps ~ N(0, I); returns (x_t, eps, network output)."""
        eps = randn_like(x0, generator)
        i = t - 1
        x_t = expand_to(tab.abar[i].sqrt().float(), x0) * x0 + expand_to(tab.one_m_abar[i].sqrt().float(), x0) * eps
        return x_t, eps, self.net(x_t, tab.steps[i].double() / tab.T)

    # ---- the bound ----------------------------------------------------------------------------------------
    def prior_term(self, x0: torch.Tensor, tab: Tables) -> torch.Tensor:
        """L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, I)), summed over D (MATH.md s.8)."""
        one_m = tab.one_m_abar[-1]
        const = 0.5 * (one_m - torch.log(one_m) - 1.0)  # variance part, float64
        kl = 0.5 * tab.abar[-1].float() * x0.float() ** 2 + const.float()
        return kl.flatten(1).sum(1)

    def step_term(self, x0: torch.Tensor, t: torch.Tensor, tab: Tables, clip: bool, generator=None) -> torch.Tensor:
        """term_t (B,) at per-example steps t (B,) in 1..n of the chain `tab`, one network pass with fresh noise."""
        x_t, eps, out = self.forward_sample(x0, t, tab, generator)
        return self.term_from_output(out, x0, x_t, eps, t, tab, clip)

    def _prepare(self, x: torch.Tensor, n_steps: int | None):
        self.check_batch(x)
        check_bins(x, self.K, "ddpm")
        return x.float(), self.grid(n_steps, x.device)

    def bound_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> dict[str, torch.Tensor]:
        """One draw of the single-t estimator, by term (nats per example): prior L_T; diffusion n L_{t-1}
        when t >= 2 (else 0); decoder n L_0 when t = 1 (else 0); t ~ U{1..n}. Their sum is unbiased for L."""
        x0, tab = self._prepare(x, n_steps)
        t = self.sample_steps(x0.shape[0], tab.n, x0.device, generator)
        term = tab.n * self.step_term(x0, t, tab, self.clip_denoised, generator)
        zero = torch.zeros_like(term)
        return {"prior": self.prior_term(x0, tab), "diffusion": torch.where(t >= 2, term, zero),
                "decoder": torch.where(t == 1, term, zero)}

    def step_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """(B, n): term_t for every t = 1..n with fresh noise each (n network passes); column 0 is L_0."""
        x0, tab = self._prepare(x, n_steps)
        B = x0.shape[0]
        cols = [self.step_term(x0, torch.full((B,), t, device=x0.device), tab, self.clip_denoised, generator)
                for t in range(1, tab.n + 1)]
        return torch.stack(cols, 1)

    def full_bound_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> dict[str, torch.Tensor]:
        """Every term of the n-step bound (n network passes): prior, diffusion = sum_{t>=2} L_{t-1}, decoder L_0."""
        x0, tab = self._prepare(x, n_steps)
        terms = self.step_terms(x0, n_steps, generator)
        return {"prior": self.prior_term(x0, tab), "diffusion": terms[:, 1:].sum(1), "decoder": terms[:, 0]}

    def full_bound(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """The n-step bound computed term by term (n network passes per example), nats."""
        return sum(self.full_bound_terms(x, n_steps, generator).values())

    def nll(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """One Monte-Carlo draw of the upper bound L_T + n term_t on -ln p(x), nats per example."""
        return sum(self.bound_terms(x, n_steps, generator).values())

    # ---- training -----------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """simple: ||eps - eps_hat||^2 (Ho et al. Eq. 14, summed over D); hybrid: + vlb_weight * T term_t with the
        mean frozen (Nichol & Dhariwal Sec. 3.1; their L_vlb is in bits, ours in nats); vlb: L_T + T term_t.
        Training never clamps x0_hat (as improved-diffusion)."""
        if n_steps not in (None, self.T):
            raise ValueError(f"ddpm trains on its own grid of T = {self.T} steps; pass n_steps=None (or {self.T})")
        x0, tab = self._prepare(x, None)
        t = self.sample_steps(x0.shape[0], tab.n, x0.device, generator)
        x_t, eps, out = self.forward_sample(x0, t, tab, generator)
        if self.loss_type == "vlb":
            return self.prior_term(x0, tab) + tab.n * self.term_from_output(out, x0, x_t, eps, t, tab, False)
        mse = ((eps - out[..., 0]) ** 2).flatten(1).sum(1)
        if self.loss_type == "simple":
            return mse
        frozen = torch.stack([out[..., 0].detach(), out[..., 1]], -1)  # L_vlb trains the variance only
        return mse + self.vlb_weight * tab.n * self.term_from_output(frozen, x0, x_t, eps, t, tab, False)

    # ---- sampling -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num: int, n_steps: int | None = None, generator: torch.Generator | None = None,
               final_mean: bool = False) -> torch.Tensor:
        """Ancestral sampling on the n-step chain: x_n ~ N(0, I), x_{t-1} ~ p(x_{t-1} | x_t), then x_0 from the
        discretised Gaussian decoder (its exact sample: Gaussian draw snapped to the nearest bin; end bins take
        the tails). final_mean=True returns the decoder mean snapped instead (improved-diffusion's images)."""
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        device = module_device(self)
        tab = self.grid(n_steps, device)
        x = torch.randn((num, *self.spec.shape), generator=generator, device=device)
        for t in range(tab.n, 0, -1):
            tt = torch.full((num,), t, device=device)
            out = self.net(x, tab.steps[tt - 1].double() / tab.T)
            mean, logvar, _ = self.reverse(out, x, tt, tab, self.clip_denoised)
            if t == 1 and final_mean:
                x = mean
            else:
                x = mean + torch.exp(0.5 * logvar) * torch.randn(x.shape, generator=generator, device=device)
        return bin_centres_from_index(index_from_bin_centres(x, self.K), self.K)


@register_method("ddpm")
def build_ddpm(spec: DataSpec, backbone: str = "unet", backbone_kwargs: dict | None = None,
               net: nn.Module | None = None, **hyperparameters) -> DDPM:
    """Factory: a shared backbone taking x_t (1 feature) and returning eps (+ v for learned_range)."""
    check_discretised(spec, "ddpm")
    out = 2 if hyperparameters.get("variance", "learned_range") == "learned_range" else 1
    if net is None:
        net = build_net(spec, backbone, backbone_kwargs, 1, out)
    return DDPM(spec, net, **hyperparameters)
