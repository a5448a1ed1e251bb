"""BFN for discretised data: K bins on [-1, 1] (MATH.md s.4; BFN paper Sec. 5; docs/formulas.md s.4).

Flow, schedule, sender and update are those of continuous data (continuous.py). The network outputs
(mu_eps, ln sigma_eps) per dimension, turned into (mu_x, sigma_x) (MATH.md s.4); the output distribution
is the discretised N(mu_x, sigma_x^2) with tails clipped into the end bins (dgauss.py).

  L^inf(x) = -ln(sigma1) E_t[sigma1^(-2t) ||x - k-hat(theta, t)||^2]                        (MATH.md s.4)
  L^n(x)   = n E_{i, theta, y ~ N(x, 1/alpha_i)}[ln N(y | x, 1/alpha_i) - sum_d ln p_R^(d)(y^(d))],
             p_R = sum_k p_O(k) N(. | k_c, 1/alpha_i), Monte Carlo over `n_y_samples` sender draws  (MATH.md s.4)
  L^r(x)   = -ln p_O(x | theta; 1)                                                          (MATH.md s.4)

The two per-element sums these need are defined here, as chunked O(K) sums: `k_hat_reference` (k-hat and its
derivatives) and `receiver_lse_reference` (ln p_R, in log space, by autograd). `bin_mean` and `receiver_lse`
compute them through `suite.bfn.fast.dispatch` where an acceleration applies and through these references
otherwise (BFNBENCH_FAST=0: always); every acceleration is tested against them.
"""

from __future__ import annotations

import math

import torch

from suite.bfn import fast
from suite.bfn.base import build_net, paper_hparams
from suite.bfn.continuous import GaussianFlowBFN
from suite.bfn.dgauss import (
    P_MIN,
    bin_probs,
    categorical_log_weights,
    centres,
    edges,
    mode_bins,
    normal_cdf,
    normal_pdf,
    official_bin_probs,
    sample_bins,
)
from suite.methods import register_method

Tensor = torch.Tensor
SIGMA_MIN, SIGMA_MAX = 1e-3, 10.0  # the reference's clamp on sigma_x
LOG_SIGMA_MIN, LOG_SIGMA_MAX = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
OFFICIAL_LOG_SIGMA_EPS = 10.0  # quirk log_sigma_clamp: the official safe_exp's range for ln sigma_eps
REFERENCE_CHUNK = 1 << 20  # elements x bins per chunk of the reference sums (memory, not results)


# --- k-hat = sum_k p(k) k_c (MATH.md s.4; docs/formulas.md E4.5) ------------------------------------------------


@torch.no_grad()
def k_hat_reference(mu: Tensor, sigma: Tensor, K: int, chunk_elems: int = REFERENCE_CHUNK) -> Tensor:
    """(k-hat, d k-hat / d mu, d k-hat / d sigma) as the rows of a (3, N) tensor, for flat mu, sigma: the O(K)
    sums over the K - 1 interior edges e_j = -1 + j h (h = 2 / K), `chunk_elems` elements x edges at a time.

    Summation by parts turns sum_k p(k) k_c (bins k_c = -1 + (k - 1/2) h, tails clipped into the end bins) into
        k-hat = 1 - h/2 - h sum_j Phi(z_j),   d/dmu = (h / sigma) sum_j phi(z_j),   d/dsigma = (h / sigma) sum_j z_j phi(z_j),
    z_j = (e_j - mu) / sigma: K - 1 CDFs per element, no cancellation to lose (each Phi weighs h). Summed in
    float64 whatever mu's dtype (a float32 sum of K CDFs would be off by ~1e-7, which L^inf's weight
    sigma1^(-2t) amplifies up to 1e6-fold late in the flow); returned in mu's dtype."""
    h = 2.0 / K
    dtype, mu, sigma = mu.dtype, mu.double(), sigma.double()
    e = edges(K, mu.device, mu.dtype)
    out = mu.new_empty(3, mu.shape[0])
    per = max(1, int(chunk_elems) // max(K - 1, 1))
    for a in range(0, mu.shape[0], per):
        m, s = mu[a : a + per, None], sigma[a : a + per, None]
        z = (e - m) / s
        P, p = normal_cdf(z), normal_pdf(z)
        out[0, a : a + per] = 1 - h / 2 - h * P.sum(-1)
        out[1, a : a + per] = h * p.sum(-1) / s[:, 0]
        out[2, a : a + per] = h * (z * p).sum(-1) / s[:, 0]
    return out.to(dtype)


class _BinMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, K):
        with torch.autocast(mu.device.type, enabled=False):  # float32 throughout
            impl = fast.dispatch("k_hat", mu) or k_hat_reference
            k_hat, d_mu, d_sigma = impl(mu.reshape(-1), sigma.reshape(-1), K)
        ctx.save_for_backward(d_mu.view(mu.shape), d_sigma.view(mu.shape))
        return k_hat.view(mu.shape)

    @staticmethod
    def backward(ctx, grad):
        d_mu, d_sigma = ctx.saved_tensors
        return grad * d_mu, grad * d_sigma, None


def bin_mean(mu: Tensor, sigma: Tensor, K: int) -> Tensor:
    """k-hat = sum_k p(k) k_c per element (MATH.md s.4), differentiable in mu and sigma (closed-form derivatives).

    `k_hat_reference` where no acceleration applies; otherwise `fast.dispatch("k_hat")`: the compiled CPU kernel
    (numba) or the torch routes, O(1) per element, each within fast.bounds.BIN_MEAN_TOL of the reference (values
    1e-9, derivatives 1e-8, float64; tested route by route). This is what makes the continuous-time discretised
    loss cost about one network pass rather than K CDFs per pixel."""
    if mu.shape != sigma.shape:
        mu, sigma = torch.broadcast_tensors(mu, sigma)
    return _BinMean.apply(mu.contiguous(), sigma.contiguous(), K)


class _KHatSquaredError(torch.autograd.Function):
    """(x - k-hat(mu_x, sigma_x))^2 per element straight from the network's output (mu_eps, ln sigma_eps), by the
    fused implementation `fast.dispatch("k_hat_squared_error")` returns; the gradient with respect to that output
    comes out of the same pass, so backward is one multiply."""

    @staticmethod
    def forward(ctx, net_out, mu, x, coef, K, impl):
        sq, grad = impl(net_out, mu, x, coef, K, (LOG_SIGMA_MIN, LOG_SIGMA_MAX))
        ctx.save_for_backward(grad)
        return sq

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g[..., None], None, None, None, None, None


# --- the receiver's ln p_R(y) (MATH.md s.4; docs/formulas.md E4.7) ----------------------------------------------


def receiver_lse_reference(mu: Tensor, sigma: Tensor, alpha: Tensor, y: Tensor, K: int, weights: str = "paper",
                           chunk_elems: int = REFERENCE_CHUNK) -> Tensor:  # fmt: skip
    """Per element, the mean over the S sender samples y_s of Lambda = LSE_k(ln w_k - alpha (y_s - k_c)^2 / 2), i.e.
    ln p_R(y_s) up to the Gaussian normaliser ln sqrt(alpha / 2 pi) (it cancels against p_S in L^n).

    weights "paper": w_k = p_O(k) + P_MIN (bin_probs; the floor keeps ln finite, mass 1 + K P_MIN);
            "official": the official code's categorical weights of its float32 masses (quirk categorical_floor).
    mu, sigma, alpha: (N,); y: (S, N). O(K) per element, `chunk_elems` elements x bins at a time, differentiable
    in mu, sigma by autograd."""
    if y.dim() != 2 or y.shape[1] != mu.shape[0]:
        raise ValueError(f"y must be shaped (S, N) = (S, {mu.shape[0]}), got {tuple(y.shape)}")
    if weights not in ("paper", "official"):
        raise ValueError(f"weights must be 'paper' or 'official', got {weights!r}")
    if weights == "official":
        mu, sigma, alpha, y = (v.to(torch.float32) for v in (mu, sigma, alpha, y))
    alpha, y = alpha.to(mu.dtype), y.to(mu.dtype)
    c = centres(K, mu.device, mu.dtype)
    per = max(1, int(chunk_elems) // K)
    out = []
    for a in range(0, mu.shape[0], per):
        rows = slice(a, a + per)
        if weights == "paper":
            lw = (bin_probs(mu[rows], sigma[rows], K) + P_MIN).log()
        else:
            lw = categorical_log_weights(official_bin_probs(mu[rows], sigma[rows], K))
        half_a = 0.5 * alpha[rows, None]
        acc = 0.0
        for s in range(y.shape[0]):
            d = y[s, rows, None] - c
            acc = acc + torch.logsumexp(lw - half_a * d * d, -1)
        out.append(acc / y.shape[0])
    return torch.cat(out) if out else mu.new_zeros(0)


def receiver_lse(mu: Tensor, sigma: Tensor, alpha: Tensor, y: Tensor, K: int, chunk_elems: int = 1 << 18) -> Tensor:
    """`receiver_lse_reference` (weights "paper"), by `fast.dispatch("receiver_lse")` (the fused receiver: closed
    form, windows or all K bins per element, within 1e-7 relative in float32) where it applies."""
    impl = fast.dispatch("receiver_lse", mu)
    if impl is None:
        return receiver_lse_reference(mu, sigma, alpha, y, K)
    return impl(mu, sigma, alpha, y, K, chunk_elems)


def receiver_lse_prior(logp: Tensor, alpha: Tensor, y: Tensor, chunk_elems: int = 1 << 18) -> Tensor:
    """The same for one fixed output distribution ln p_O(k) (K,) shared by all elements (the prior's at t < t_min),
    no gradient."""
    impl = fast.dispatch("receiver_lse_prior", y)
    if impl is not None:
        return impl(logp, alpha, y, chunk_elems)
    K, N = logp.shape[0], y.shape[1]
    z = torch.zeros(N, dtype=y.dtype, device=y.device)  # the prior's (mu_x, sigma_x) = (0, 1) for every element
    with torch.no_grad():
        return receiver_lse_reference(z, z + 1.0, alpha, y, K)


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
        log_sigma_clamp sends L^inf through out_params and bin_mean instead of the fused per-pixel term (same sums);
        categorical_floor sends L^n through the O(K) reference receiver with the official weights."""
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
        """-ln(sigma1) sigma1^(-2t) ||x - k-hat||^2 (MATH.md s.4), k-hat by `bin_mean`.

        Where `fast.dispatch("k_hat_squared_error")` has a fused implementation (CPU with numba), the elementwise
        part, from the network's output to (x - k-hat)^2, is one pass (`_KHatSquaredError`); it computes what
        out_params and bin_mean do, tested equal."""
        mu = self.flow(x, t, noise)
        fused = None if self._log_sigma_clamp else fast.dispatch("k_hat_squared_error", mu)  # it clamps ln sigma_x
        if fused is not None:
            inv_g, ratio, keep = self.coefficients(t)
            coef = torch.stack([inv_g.reshape(-1), ratio.reshape(-1), keep.reshape(-1).to(inv_g.dtype),
                                self._log_ratio(ratio).reshape(-1)], 1)  # fmt: skip
            sq = _KHatSquaredError.apply(self.run_net(mu[..., None], t), mu, x.float(), coef, self.K, fused)
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
            lam = receiver_lse_reference(mu_x.reshape(-1), sigma_x.reshape(-1), alpha.reshape(-1), y.reshape(S, -1),
                                         self.K, weights="official").reshape(mu_x.shape)  # fmt: skip
        else:
            lam = self._receiver_lse(mu_x, sigma_x, alpha, y, t < max(self.t_min, 1e-300))  # as in coefficients()
        # ln N(y | x, 1/alpha) - ln p_R(y) = -alpha (y - x)^2 / 2 - Lambda (the normalisers cancel)
        kl = -0.5 * (y_noise**2).mean(0) - lam
        return n * self.per_example(kl)

    def _receiver_lse(self, mu_x: Tensor, sigma_x: Tensor, alpha: Tensor, y: Tensor, prior: Tensor) -> Tensor:
        """receiver_lse per element, shaped like mu_x. Examples at t < t_min (`prior`) have the constant output
        distribution (0, 1): no gradient flows there, so their rows take receiver_lse_prior."""
        B, S = mu_x.shape[0], y.shape[0]

        def lse(idx, grad):
            if grad:
                args = (mu_x[idx].reshape(-1), sigma_x[idx].reshape(-1), alpha[idx].reshape(-1))
                out = receiver_lse(*args, y[:, idx].reshape(S, -1), self.K, self.chunk_elems)
            else:  # p_O = the prior's discretised N(0, 1) everywhere
                out = receiver_lse_prior(self.prior_logp, alpha[idx].reshape(-1), y[:, idx].reshape(S, -1))
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
