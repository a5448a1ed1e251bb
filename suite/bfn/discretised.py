"""BFN for discretised data: K bins on [-1, 1] (MATH.md s.4; BFN paper Sec. 5).

Flow, schedule, sender and update are those of continuous data (continuous.py). The network outputs
(mu_eps, ln sigma_eps) per dimension, turned into (mu_x, sigma_x) (MATH.md s.4); the output distribution
is the discretised N(mu_x, sigma_x^2) with tails clipped into the end bins (dgauss.py).

  L^inf(x) = -ln(sigma1) E_t[sigma1^(-2t) ||x - k-hat(theta, t)||^2]                        (MATH.md s.4)
  L^n(x)   = n E_{i, theta, y ~ N(x, 1/alpha_i)}[ln N(y | x, 1/alpha_i) - sum_d ln p_R^(d)(y^(d))],
             p_R = sum_k p_O(k) N(. | k_c, 1/alpha_i), Monte Carlo over `n_y_samples` sender draws  (MATH.md s.4)
  L^r(x)   = -ln p_O(x | theta; 1)                                                          (MATH.md s.4)
"""

from __future__ import annotations

import math

import torch

from suite.bfn import dgauss_cpu
from suite.bfn.base import build_net, paper_hparams
from suite.bfn.continuous import GaussianFlowBFN
from suite.bfn.dgauss import bin_mean, bin_probs, cpu_kernel_params, mode_bins, sample_bins
from suite.bfn.mixture import mixture_lse, mixture_lse_fixed, official_mixture_lse
from suite.methods import register_method

Tensor = torch.Tensor
SIGMA_MIN, SIGMA_MAX = 1e-3, 10.0  # the reference's clamp on sigma_x
LOG_SIGMA_MIN, LOG_SIGMA_MAX = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
OFFICIAL_LOG_SIGMA_EPS = 10.0  # quirk log_sigma_clamp: the official safe_exp's range for ln sigma_eps


class _KHatSquaredError(torch.autograd.Function):
    """(x - k-hat(mu_x, sigma_x))^2 per element straight from the network's output (mu_eps, ln sigma_eps), in one
    compiled CPU pass (dgauss_cpu.k_hat_squared_error); the gradient with respect to that output comes out of
    the same pass, so backward is one multiply."""

    @staticmethod
    def forward(ctx, net_out, mu, x, coef, K):
        sq, grad = dgauss_cpu.k_hat_squared_error(net_out, mu, x, coef, K, cpu_kernel_params(K),
                                                  (LOG_SIGMA_MIN, LOG_SIGMA_MAX))  # fmt: skip
        ctx.save_for_backward(grad)
        return sq

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g[..., None], None, None, None, None


class DiscretisedBFN(GaussianFlowBFN):
    name = "bfn_discretised"
    allowed_quirks = ("bin_floor", "categorical_floor", "gamma_float32", "log_sigma_clamp", "recon_fallback")

    def __init__(
        self,
        spec,
        net,
        sigma1: float = 1e-3,
        t_min: float = 1e-6,
        n_y_samples: int = 1,
        final: str = "sample",
        chunk_elems: int = 1 << 18,
        quirks=(),
    ):
        """n_y_samples: sender draws per example in L^n (the reference averages 10; any count is unbiased).
        chunk_elems: elements x bins processed at once by the fused receiver (memory, not results).
        quirks: official-code quirks to reproduce (continuous.QUIRKS; "official" = all five); none by default.
        log_sigma_clamp sends L^inf through the torch path instead of the compiled CPU kernel (same sums);
        categorical_floor sends L^n through an O(K) torch receiver (mixture.official_mixture_lse)."""
        self.check_spec(spec)
        super().__init__(spec, net, sigma1, t_min, final, quirks)
        self._log_sigma_clamp = "log_sigma_clamp" in self.quirks
        self._categorical_floor = "categorical_floor" in self.quirks
        if isinstance(n_y_samples, bool) or not isinstance(n_y_samples, int) or n_y_samples < 1:
            raise ValueError(f"n_y_samples must be an integer >= 1, got {n_y_samples!r}")
        self.K = spec.num_classes
        self.n_y_samples = n_y_samples
        self.chunk_elems = int(chunk_elems)
        z = torch.zeros(1, dtype=torch.float64)  # ln p_O(k) at t < t_min, (mu_x, sigma_x) = (0, 1): the prior's
        self.prior_logp = bin_probs(z, z + 1.0, self.K)[0].log()

    @staticmethod
    def check_spec(spec) -> None:
        if spec.kind != "discretised":
            raise ValueError(
                f"bfn_discretised needs a discretised data set (K bins on [-1, 1]); {spec.name} is {spec.kind}"
            )

    def out_params(self, mu: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(mu_x, sigma_x) (MATH.md s.4): mu_x = mu/gamma - sqrt((1-gamma)/gamma) mu_eps,
        sigma_x = sqrt((1-gamma)/gamma) exp(ln sigma_eps) clamped to [1e-3, 10]; (0, 1) for t < t_min."""
        out = self.run_net(mu[..., None], t)
        mu_eps, log_sigma_eps = out[..., 0], out[..., 1]
        inv_g, ratio, keep = self.coefficients(t)  # per example; inv_g = ratio = 0 where t < t_min
        mu_x = mu * inv_g - ratio * mu_eps  # 0 where t < t_min
        if self._log_sigma_clamp:  # quirk: clamp ln sigma_eps, scale, then clamp sigma_x; 1 where t < t_min
            c = OFFICIAL_LOG_SIGMA_EPS
            sigma = torch.clamp(ratio * log_sigma_eps.clamp(-c, c).exp(), SIGMA_MIN, SIGMA_MAX)
            return mu_x, torch.where(keep, sigma, 1.0)
        # clamp ln sigma_x, not sigma_x: exp of a large network output must not overflow into a NaN gradient.
        # Where t < t_min, ln ratio := 0 and ln sigma_eps is multiplied by 0, so sigma_x = 1 with no gradient;
        # per-example factors instead of torch.where over every pixel (two fewer full passes each way)
        log_sigma = torch.clamp(torch.addcmul(self._log_ratio(ratio), keep.to(log_sigma_eps.dtype), log_sigma_eps),
                                LOG_SIGMA_MIN, LOG_SIGMA_MAX)  # fmt: skip
        return mu_x, log_sigma.exp()

    @staticmethod
    def _log_ratio(ratio: Tensor) -> Tensor:
        """ln sqrt((1-gamma)/gamma), := 0 where t < t_min (ratio = 0)."""
        return torch.where(ratio > 0, ratio, 1.0).log()

    def loss_cts(self, x: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """-ln(sigma1) sigma1^(-2t) ||x - k-hat||^2 (MATH.md s.4), k-hat in O(1) per pixel (dgauss.bin_mean).

        On CPU with numba (dgauss_cpu.enabled) the elementwise part, from the network's output to (x - k-hat)^2,
        is one compiled pass (`_KHatSquaredError`); it computes what out_params and bin_mean do, tested equal."""
        mu = self.flow(x, t, noise)
        if dgauss_cpu.enabled(mu) and not self._log_sigma_clamp:  # the kernel clamps ln sigma_x (exact)
            inv_g, ratio, keep = self.coefficients(t)
            coef = torch.stack([inv_g.reshape(-1), ratio.reshape(-1), keep.reshape(-1).to(inv_g.dtype),
                                self._log_ratio(ratio).reshape(-1)], 1)  # fmt: skip
            sq = _KHatSquaredError.apply(self.run_net(mu[..., None], t), mu, x.float(), coef, self.K)
        else:
            mu_x, sigma_x = self.out_params(mu, t)
            sq = (x.float() - bin_mean(mu_x, sigma_x, self.K)) ** 2
        w = (-self.schedule.log_sigma1 * self.schedule.rho(t)).float()
        return w * self.per_example(sq)

    def loss_nstep(
        self, x: Tensor, i: Tensor, n: int, noise: Tensor | None = None, y_noise: Tensor | None = None
    ) -> Tensor:
        """n [ln N(y | x, 1/alpha_i) - ln p_R(y | theta; t_{i-1}, alpha_i)], y = x + y_noise / sqrt(alpha_i),
        averaged over y_noise's leading axis (n_y_samples draws by default) (MATH.md s.4)."""
        t = (i.to(torch.float64) - 1) / n
        mu_x, sigma_x = self.out_params(self.flow(x, t, noise), t)
        alpha = self.bcast(self.schedule.alpha_i(i, n)).float().expand_as(mu_x)
        if y_noise is None:
            y_noise = torch.randn(self.n_y_samples, *x.shape, device=x.device)
        y = x.float() + y_noise / alpha.sqrt()
        if self._categorical_floor:  # quirk: the official receiver weights, O(K) per element
            S = y.shape[0]
            lam = official_mixture_lse(mu_x.reshape(-1), sigma_x.reshape(-1), alpha.reshape(-1), y.reshape(S, -1),
                                       self.K).reshape(mu_x.shape)  # fmt: skip
        else:
            lam = self._receiver_lse(mu_x, sigma_x, alpha, y, t < max(self.t_min, 1e-300))  # as in coefficients()
        # ln N(y | x, 1/alpha) - ln p_R(y) = -alpha (y - x)^2 / 2 - Lambda (the normalisers cancel)
        kl = -0.5 * (y_noise**2).mean(0) - lam
        return n * self.per_example(kl)

    def _receiver_lse(self, mu_x: Tensor, sigma_x: Tensor, alpha: Tensor, y: Tensor, prior: Tensor) -> Tensor:
        """mixture_lse per element, shaped like mu_x. Examples at t < t_min (`prior`) have the constant output
        distribution (0, 1): no gradient flows there, so their rows skip the fused gradient pass."""
        B, S = mu_x.shape[0], y.shape[0]

        def lse(idx, grad):
            if grad:
                args = (mu_x[idx].reshape(-1), sigma_x[idx].reshape(-1), alpha[idx].reshape(-1))
                out = mixture_lse(*args, y[:, idx].reshape(S, -1), self.K, self.chunk_elems)
            else:  # p_O = the prior's discretised N(0, 1) everywhere
                out = mixture_lse_fixed(self.prior_logp, alpha[idx].reshape(-1), y[:, idx].reshape(S, -1))
            return out.reshape(-1, *mu_x.shape[1:])

        if not prior.any():
            return lse(slice(None), True)
        if prior.all():
            return lse(slice(None), False)
        rows_p, rows_n = prior.nonzero().squeeze(1), (~prior).nonzero().squeeze(1)
        out = mu_x.new_zeros(B, *mu_x.shape[1:])
        return out.index_copy(0, rows_n, lse(rows_n, True)).index_copy(0, rows_p, lse(rows_p, False))

    def recon(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """-ln p_O(x | theta; 1), exact in the tails (log-space bin mass; quirks bin_floor, recon_fallback)."""
        t = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        mu_x, sigma_x = self.out_params(self.flow(x, t, noise), t)
        return -self.per_example(self.recon_log_prob(x.float(), mu_x, sigma_x))

    # --- sampler hooks ---
    def output(self, state, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.out_params(state[0], t)

    def sample_output(self, out, generator=None) -> Tensor:
        return sample_bins(*out, self.K, generator)

    def final_sample(self, out, generator=None) -> Tensor:
        return sample_bins(*out, self.K, generator) if self.final == "sample" else mode_bins(*out, self.K)


@register_method("bfn_discretised")
def bfn_discretised(
    spec, backbone: str | None = None, backbone_kwargs: dict | None = None, net=None, **hparams
) -> DiscretisedBFN:
    """BFN for discretised data. Hyperparameters: sigma1, t_min, n_y_samples, final, quirks (official-code
    quirks, continuous.QUIRKS; none by default); the reference config's `min_variance` (= sigma1^2) is accepted
    and converted."""
    DiscretisedBFN.check_spec(spec)
    net = net if net is not None else build_net(spec, backbone, backbone_kwargs, 1, 2)
    return DiscretisedBFN(spec, net, **paper_hparams(hparams))
