"""Variational Diffusion Model (Kingma, Salimans, Poole, Ho 2021) on discretised data (MATH.md s.9).

  z_t = alpha_t x~ + sigma_t eps,  sigma_t^2 = sigmoid(gamma(t)),  alpha_t^2 = sigmoid(-gamma(t))
  L = L_prior + L_recon + L_diff  (nats per example, summed over D)
  L_prior = KL(q(z_1 | x) || N(0, I)) = 0.5 sum (alpha_1^2 x~^2 + sigma_1^2 - ln sigma_1^2 - 1)
  L_recon = -E ln p(x | z_0), p(x_i = v | z_0) = softmax_v[-(z_0i/alpha_0 - x~(v))^2 / (2 e^gamma(0))]
  L_diff  = 0.5 E_{t ~ U(0,1)} [gamma'(t) ||eps - eps_hat(z_t, t)||^2]                (continuous time)
          = (n/2) E_{i ~ U{1..n}} [expm1(gamma(i/n) - gamma((i-1)/n)) ||eps - eps_hat(z_{i/n}, i/n)||^2]   (n steps)

x~ are the suite's bin centres (2v + 1)/K - 1 (= VDM's 2(v + 0.5)/K - 1). The whole bound is the training loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from baselines.ddpm.common import (
    NetCaller,
    build_net,
    check_bins,
    check_discretised,
    check_t_sampling,
    expand_to,
    module_device,
    randn_like,
    uniform_times,
)
from suite.data.base import DataSpec, bin_centres_from_index
from suite.methods import Method, register_method

from .schedule import LinearGamma, alpha_sigma2

_CHUNK = 1 << 22  # elements x bins per chunk of the decoder's log-sum-exp: bounds its memory at ~16 MB


_CUT = 30.0  # bins whose logit is below the data's own by more than this are left out of the log-sum-exp


def recon_nll(k: torch.Tensor, eps: torch.Tensor, gamma0: torch.Tensor, K: int) -> torch.Tensor:
    """-ln p(x = bin k | z_0) elementwise, z_0/alpha_0 = x~ + e^(gamma0/2) eps (MATH.md s.9, VDM Eq. 31-32).

    With s = e^(gamma0/2) and x~(k) - x~(v) = 2(k - v)/K the logits are -(2(k - v)/(K s) + eps)^2 / 2, so the
    data's own logit is exactly -eps^2/2 and -ln p = eps^2/2 + LSE_v(...) >= 0 holds in floating point too.
    Only bins v with |2(k - v)/(K s)| < |eps| + sqrt(eps^2 + 2 CUT) enter the sum: every other logit is below the
    data's own by more than CUT = 30, so leaving out at most K of them lowers -ln p by under K e^-30 (2.4e-11 nats
    for K = 256), far below float32 resolution. For VDM's gamma(0) = -13.3 that is 7 bins instead of 256; a wide
    decoder (large gamma(0)) falls back to all K bins. Chunked over elements: memory O(chunk x window).
    """
    s = torch.exp(0.5 * gamma0.detach().double())
    e_max = float(eps.detach().abs().max()) if eps.numel() else 0.0
    w = math.ceil(float(s) * (e_max + math.sqrt(e_max**2 + 2 * _CUT)) * K / 2)
    inv = (torch.exp(-0.5 * gamma0) * (2.0 / K)).float()  # keeps the graph to a learnable gamma(0)
    kf, e = k.reshape(-1), eps.reshape(-1).float()
    if 2 * w + 1 >= K:  # the window covers every bin: offsets d = k - v for all v
        offsets = None
        width = K
    else:
        offsets = torch.arange(-w, w + 1, device=k.device)
        width = 2 * w + 1
    rows = max(1, _CHUNK // width)
    out = []
    for j in range(0, kf.numel(), rows):
        kj, ej = kf[j : j + rows, None], e[j : j + rows, None]
        if offsets is None:
            d = (kj - torch.arange(K, device=k.device)).float()
            a = d * inv + ej
            logits = -0.5 * a * a
        else:
            v = kj + offsets
            a = (-offsets).float() * inv + ej
            logits = torch.where((v >= 0) & (v < K), -0.5 * a * a, float("-inf"))
        out.append(0.5 * ej[:, 0] ** 2 + torch.logsumexp(logits, -1))
    return torch.cat(out).reshape(k.shape) if out else torch.zeros(k.shape, device=k.device)


class VDM(Method):
    """VDM with an eps-predicting network and a linear gamma (fixed or learned ends); any n or continuous time."""

    name = "vdm"
    continuous_time = True

    def __init__(
        self,
        spec: DataSpec,
        net: nn.Module,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        learned_gamma: bool = True,
        t_sampling: str = "iid",
    ):
        super().__init__(spec)
        self.K = check_discretised(spec, "vdm")
        self.gamma = LinearGamma(gamma_min, gamma_max, learnable=learned_gamma)
        self.t_sampling = check_t_sampling(t_sampling, "vdm")
        self.net = NetCaller(net, spec.shape, 1, "vdm")

    @staticmethod
    def _check_n(n_steps: int | None) -> None:
        if n_steps is not None and (not isinstance(n_steps, int) or n_steps < 1):
            raise ValueError(f"vdm: n_steps must be an integer >= 1, or None for continuous time; got {n_steps!r}")

    def _prepare(self, x: torch.Tensor, n_steps: int | None):
        self.check_batch(x)
        self._check_n(n_steps)
        return x.float(), check_bins(x, self.K, "vdm")

    # ---- the three terms ----------------------------------------------------------------------------------
    def prior_term(self, x: torch.Tensor) -> torch.Tensor:
        """L_prior = 0.5 sum (alpha_1^2 x^2 + sigma_1^2 - ln sigma_1^2 - 1); sigma^2 - 1 - ln sigma^2 is written
        softplus(-g) - sigmoid(-g) (g = gamma(1)) so it keeps its digits as sigma_1^2 -> 1."""
        g1 = self.gamma(torch.ones((), device=x.device))
        a2 = torch.sigmoid(-g1)
        const = torch.nn.functional.softplus(-g1) - a2
        return (0.5 * (a2.float() * x**2 + const.float())).flatten(1).sum(1)

    def recon_term(self, k: torch.Tensor, generator=None) -> torch.Tensor:
        """L_recon, one draw of z_0 ~ q(z_0 | x), summed over D."""
        eps = torch.randn(k.shape, generator=generator, device=k.device)
        g0 = self.gamma(torch.zeros((), device=k.device))
        return recon_nll(k, eps, g0, self.K).flatten(1).sum(1)

    def diffusion_at(self, x: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, generator=None) -> torch.Tensor:
        """weight(t) * 0.5 ||eps - eps_hat(z_t, t)||^2 per example (one network pass); t, weight float64 (B,)."""
        a2, s2 = alpha_sigma2(self.gamma(t))
        eps = randn_like(x, generator)
        z = expand_to(a2.sqrt().float(), x) * x + expand_to(s2.sqrt().float(), x) * eps
        eps_hat = self.net(z, t)[..., 0]
        return 0.5 * weight.float() * ((eps - eps_hat) ** 2).flatten(1).sum(1)

    def diffusion_term(self, x: torch.Tensor, n_steps: int | None, generator=None) -> torch.Tensor:
        """One draw of L_diff: continuous time (n_steps=None) or the n-step sum's unbiased single-i estimator."""
        u = uniform_times(x.shape[0], self.t_sampling == "stratified", x.device, generator)
        if n_steps is None:
            return self.diffusion_at(x, u, self.gamma.prime(u), generator)
        i = torch.clamp(torch.floor(u * n_steps) + 1, 1, n_steps)
        t, s = i / n_steps, (i - 1) / n_steps
        return self.diffusion_at(x, t, n_steps * torch.expm1(self.gamma.increment(s, t)), generator)

    # ---- the bound ----------------------------------------------------------------------------------------
    def bound_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> dict[str, torch.Tensor]:
        """One Monte-Carlo draw of every term (nats per example): prior, recon, diffusion."""
        x, k = self._prepare(x, n_steps)
        return {"prior": self.prior_term(x), "recon": self.recon_term(k, generator),
                "diffusion": self.diffusion_term(x, n_steps, generator)}

    def step_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """(B, n): 0.5 expm1(gamma(i/n) - gamma((i-1)/n)) ||eps - eps_hat||^2 for i = 1..n, fresh noise each."""
        if n_steps is None:
            raise ValueError("vdm: the term-by-term bound needs a number of steps n; continuous time has no terms")
        x, _ = self._prepare(x, n_steps)
        B, cols = x.shape[0], []
        for i in range(1, n_steps + 1):
            t = torch.full((B,), i / n_steps, dtype=torch.float64, device=x.device)
            s = torch.full((B,), (i - 1) / n_steps, dtype=torch.float64, device=x.device)
            cols.append(self.diffusion_at(x, t, torch.expm1(self.gamma.increment(s, t)), generator))
        return torch.stack(cols, 1)

    def full_bound_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> dict[str, torch.Tensor]:
        """The n-step bound term by term (n network passes): prior, recon (one z_0 draw), diffusion = sum_i."""
        xf, k = self._prepare(x, n_steps)
        steps = self.step_terms(x, n_steps, generator)
        return {"prior": self.prior_term(xf), "recon": self.recon_term(k, generator), "diffusion": steps.sum(1)}

    def full_bound(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """The n-step bound computed term by term (n network passes per example), nats."""
        return sum(self.full_bound_terms(x, n_steps, generator).values())

    def nll(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """One draw of the upper bound L_prior + L_recon + L_diff on -ln p(x), nats per example."""
        return sum(self.bound_terms(x, n_steps, generator).values())

    def loss(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """VDM trains on its bound (it also trains the ends of gamma when they are learnable)."""
        return self.nll(x, n_steps, generator)

    # ---- sampling -----------------------------------------------------------------------------------------
    def reverse_step(self, z: torch.Tensor, s: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor):
        """Mean and std of p(z_s | z_t) = q(z_s | z_t, x = x_hat) (VDM Eq. 8 and A.4): with c = 1 - SNR(t)/SNR(s),
        mean = (alpha_s/alpha_t)(z_t - c sigma_t eps_hat), var = c sigma_s^2; coefficients in float64."""
        inc = self.gamma.increment(s, t)
        c = -torch.expm1(-inc)
        a2_t, s2_t = alpha_sigma2(self.gamma(t))
        a2_s, s2_s = alpha_sigma2(self.gamma(s))
        f = lambda v: expand_to(v.float(), z)  # noqa: E731
        return f((a2_s / a2_t).sqrt()) * (z - f(s2_t.sqrt() * c) * eps_hat), f((s2_s * c).sqrt())

    @torch.no_grad()
    def sample(self, num: int, n_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling (VDM Appendix A.4): z_1 ~ N(0, I); z_s ~ q(z_s | z_t, x = x_hat) for t = i/n, s = (i-1)/n;
        then x ~ p(x | z_0), the categorical over bins (an exact draw, Gumbel-max)."""
        if n_steps is None or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"vdm: sampling needs an integer number of steps n >= 1, got {n_steps!r}")
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        device = module_device(self)
        z = torch.randn((num, *self.spec.shape), generator=generator, device=device)
        for i in range(n_steps, 0, -1):
            t = torch.full((num,), i / n_steps, dtype=torch.float64, device=device)
            s = torch.full((num,), (i - 1) / n_steps, dtype=torch.float64, device=device)
            mean, std = self.reverse_step(z, s, t, self.net(z, t)[..., 0])
            z = mean + std * torch.randn(z.shape, generator=generator, device=device)
        g0 = self.gamma(torch.zeros((), device=device))
        u = z / torch.sigmoid(-g0).sqrt().float()  # z_0 / alpha_0
        centres = bin_centres_from_index(torch.arange(self.K, device=device), self.K)
        logits = -((u[..., None] - centres) ** 2) / (2 * torch.exp(g0).float())
        u01 = torch.rand(logits.shape, generator=generator, device=device)
        gumbel = -torch.log((-torch.log(u01.clamp_min(1e-20))).clamp_min(1e-20))  # u = 0 or u -> 1 would give inf
        return bin_centres_from_index((logits + gumbel).argmax(-1), self.K)


@register_method("vdm")
def build_vdm(spec: DataSpec, backbone: str = "unet", backbone_kwargs: dict | None = None, net: nn.Module | None = None,
              **hyperparameters) -> VDM:
    """Factory: a shared backbone taking z_t (1 feature) and returning eps_hat (1 feature)."""
    check_discretised(spec, "vdm")
    if net is None:
        net = build_net(spec, backbone, backbone_kwargs, 1, 1)
    return VDM(spec, net, **hyperparameters)
