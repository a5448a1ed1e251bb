"""BFN for continuous data (MATH.md s.3; BFN paper Sec. 4).

Input distribution N(mu, 1/rho) per dimension, prior (0, 1); sender N(x, 1/alpha); the network sees mu
and t and predicts the noise eps-hat, so x-hat = mu/gamma - sqrt((1 - gamma)/gamma) eps-hat (MATH.md s.3),
x-hat = 0 for t < t_min, clipped to the data range.

  L^inf(x) = -ln(sigma1) E_t[sigma1^(-2t) ||x - x-hat(theta, t)||^2]                      (MATH.md s.3)
  L^n(x)   = (n/2)(1 - sigma1^(2/n)) E_i[sigma1^(-2i/n) ||x - x-hat(theta, t_{i-1})||^2]  (MATH.md s.3)
  L^r(x)   = -ln p_O(x | theta; 1) with p_O = N(x-hat, sigma_r^2): over the data's K bins (discretised
             data, tails into the end bins, so images get bits/dim), else a Gaussian *density* (toys:
             not a discrete NLL, may be negative).

Official-code quirks (`quirks=...`, QUIRKS below; shared/reference/official_quirks.md, docs/official.md): named
departures from the exact computation that the official code (nnaisense/bayesian-flow-networks) makes, for
reproducing its numbers from its checkpoints (`bfnbench reproduce --protocol reference` turns them all on).
Off by default: training and the suite's own evaluation keep the exact computation, at no cost (one branch
on a Python flag).
"""

from __future__ import annotations

import math

import torch

from suite.bfn.base import BFN, build_net, check_t_min, paper_hparams
from suite.bfn.dgauss import log_bin_prob
from suite.bfn.schedules import ContinuousSchedule
from suite.methods import register_method

Tensor = torch.Tensor

#: The official code's quirks, by option name: what each computes instead of the exact value.
QUIRKS = {
    "gamma_float32": "gamma = 1 - sigma1^(2t) in float32 (flow and x-hat / (mu_x, sigma_x)), as torch.pow(min_variance, t) "
                     "there; exact float64 otherwise",
    "recon_fallback": "L^r: P(bin) as a float32 difference of Phi at the bin's edges, and where it is < 1e-5, "
                      "ln N(bin centre | mu, sigma) + ln(bin width) instead of ln P",
    "bin_floor": "L^r: the bin of a value by floor((x + 1) K / 2) (the official float_to_idx), not the nearest centre; "
                 "the same for data on bin centres",
    "log_sigma_clamp": "discretised: ln sigma_eps clamped to [-10, 10] before scaling by sqrt((1 - gamma) / gamma), then "
                       "sigma_x to [1e-3, 10] (exact: ln sigma_x clamped to [ln 1e-3, ln 10] only)",
    "categorical_floor": "L^n receiver weights passed through torch's Categorical(probs=): p / sum p clamped to "
                         "[eps, 1 - eps] (float32 eps 1.19e-7) and renormalised; discretised: p_O(k) as float32 "
                         "differences of Phi at the edges; discrete: float32 p_O (K = 2: (1 - sigmoid(l), sigmoid(l)))",
    "sender_samples": "discrete L^n: the mean over 10 sender draws y per flow draw theta (the official "
                      "discrete_time_loss's n_samples=10), not one",
    "flow_t_clamp": "discrete flow: beta = (sqrt(beta1) min(t, 1 - 1e-6))^2 in float32, theta uniform where sqrt(beta) "
                    "< 1e-10 (the official epsilon, min_sqrt_beta); L^r's theta at beta1 (1 - 1e-6)^2; the network sees t",
}
OFFICIAL_MIN_PROB = 1e-5  # the official DiscretizedCtsDistribution's min_prob (recon_fallback)


def check_quirks(quirks, allowed: tuple[str, ...], method: str) -> tuple[str, ...]:
    """The quirk names `quirks` turns on, sorted: a name, a sequence of names, "official" (every quirk that
    applies to `method`), or None / () / "none" for the exact computation."""
    if quirks is None:
        return ()
    if isinstance(quirks, str):
        quirks = (quirks,)
    names: set[str] = set()
    for q in quirks:
        if q == "official":
            names |= set(allowed)
        elif q == "none":
            continue
        elif q not in QUIRKS:
            raise ValueError(f"unknown official-code quirk {q!r}; known: {', '.join(QUIRKS)}, or 'official' for all of them")
        elif q not in allowed:
            raise ValueError(f"quirk {q!r} does not apply to {method}; its quirks: {', '.join(allowed)}")
        else:
            names.add(q)
    return tuple(sorted(names))


def official_normal_cdf(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Phi((x - mu) / sigma) in float32 as torch.distributions.Normal.cdf computes it (0.5 (1 + erf)): absolute
    error ~6e-8, so a tail mass below that is lost (the exact paths use erfc tails in log space)."""
    f32 = torch.float32
    return 0.5 * (1 + torch.erf((x.to(f32) - mu.to(f32)) * sigma.to(f32).reciprocal() / math.sqrt(2)))


def official_log_bin_prob(x: Tensor, mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """ln p(x) under the discretised N(mu, sigma^2), clipped end bins, as the official code computes it (quirk
    `recon_fallback`): P = Phi(hi) - Phi(lo) in float32, and where P < 1e-5 the density at the bin's centre
    times the bin width, ln N(centre | mu, sigma^2) + ln(2 / K), instead of ln P (which is >= 1e-10 there)."""
    k = torch.clamp(torch.round((x + 1) * K / 2 - 0.5), 0, K - 1)  # the bin of a centre (bin_floor: see recon)
    xc = ((2 * k + 1) / K - 1).float()
    mu, sigma = mu.float(), sigma.float()
    lo = torch.where(k <= 0, 0.0, official_normal_cdf(xc - 1.0 / K, mu, sigma))
    hi = torch.where(k >= K - 1, 1.0, official_normal_cdf(xc + 1.0 / K, mu, sigma))
    p = hi - lo
    dens = -((xc - mu) ** 2) / (2 * sigma**2) - sigma.log() - 0.5 * math.log(2 * math.pi) + math.log(2.0 / K)
    return torch.where(p < OFFICIAL_MIN_PROB, dens, p.clamp(min=1e-10).log())


def floor_bin_centre(x: Tensor, K: int) -> Tensor:
    """The centre of the bin that floor((x + 1) K / 2) picks (the official float_to_idx; quirk `bin_floor`)."""
    k = torch.clamp(torch.floor((x + 1) * K / 2), 0, K - 1)
    return (2 * k + 1) / K - 1


class GaussianFlowBFN(BFN):
    """The Gaussian input distribution, flow and update shared by continuous and discretised data."""

    #: the official-code quirks (QUIRKS) this variant can reproduce
    allowed_quirks: tuple[str, ...] = ("bin_floor", "gamma_float32", "recon_fallback")

    def __init__(self, spec, net, sigma1: float = 1e-3, t_min: float = 1e-6, final: str = "sample", quirks=()):
        super().__init__(spec, net, final)
        self.schedule = ContinuousSchedule(sigma1)
        self.sigma1 = self.schedule.sigma1
        self.t_min = check_t_min(t_min)
        self.quirks = check_quirks(quirks, self.allowed_quirks, self.name)
        self._gamma32 = "gamma_float32" in self.quirks
        self._recon_fallback = "recon_fallback" in self.quirks
        self._bin_floor = "bin_floor" in self.quirks

    @classmethod
    def from_reference_config(cls, spec, net, **cfg):
        """Build from the reference code's names: min_variance = sigma1^2 (others as the paper names them)."""
        return cls(spec, net, **paper_hparams(dict(cfg)))

    def flow(self, x: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """mu ~ p_F(. | x; t) = N(gamma x, gamma (1 - gamma) I) (MATH.md s.3); rho = sigma1^(-2t) is implied by t."""
        if self._gamma32:  # quirk: the official float32 gamma
            g, one_minus = self.schedule.gamma_float32(t)
            std = torch.sqrt(g * one_minus)
        else:
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
        if self._gamma32:  # quirk: 1 / gamma and sqrt((1 - gamma) / gamma) from the official float32 gamma
            g, one_minus = self.schedule.gamma_float32(t_safe)
            inv_g, ratio = torch.where(keep, 1.0 / g, 0.0), torch.where(keep, torch.sqrt(one_minus / g), 0.0)
        else:
            inv_g = torch.where(keep, 1.0 / self.schedule.gamma(t_safe), 0.0)
            ratio = torch.where(keep, self.schedule.noise_ratio(t_safe), 0.0)
        return self.bcast(inv_g).float(), self.bcast(ratio).float(), self.bcast(keep)

    def recon_log_prob(self, x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
        """ln p_O(x) over the data's K bins: exact in log space, or with the quirks bin_floor / recon_fallback."""
        K = self.spec.num_classes
        if self._bin_floor:
            x = floor_bin_centre(x, K)
        if self._recon_fallback:
            return official_log_bin_prob(x, mu, sigma, K)
        return log_bin_prob(x, mu, sigma, K)

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
        quirks=(),
    ):
        """x_range: x-hat is clipped to it; "auto" = (-1, 1) for discretised data, no clipping otherwise.
        sigma_r: std of the reconstruction Gaussian, default sigma1 (the reference uses 0.7 sigma1 in its
        16-bin configuration; pass it explicitly to reproduce that).
        quirks: official-code quirks to reproduce (QUIRKS; "official" = gamma_float32, recon_fallback,
        bin_floor); none by default.
        """
        self.check_spec(spec)
        super().__init__(spec, net, sigma1, t_min, final, quirks)
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
            return -self.per_example(self.recon_log_prob(x.float(), x_hat, sr))
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
    sigma_r, final, quirks (official-code quirks, QUIRKS; none by default); the reference config's
    `min_variance` (= sigma1^2) is accepted and converted."""
    ContinuousBFN.check_spec(spec)
    net = net if net is not None else build_net(spec, backbone, backbone_kwargs, 1, 1)
    return ContinuousBFN(spec, net, **paper_hparams(hparams))
