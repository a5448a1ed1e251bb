"""DDPM bound terms (MATH.md s.8): Gaussian KLs and the decoder against Monte Carlo / numerical integration, the
single-t estimator against the term-by-term bound, oracles where the bound is known exactly."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from baselines.ddpm import DDPM, Tables, discretised_gaussian_log_prob, gaussian_kl_to_standard, make_betas, normal_kl
from suite.data.base import DataSpec, bin_centres_from_index
from tests.helpers.estimators import term_draws


class TinyNet(nn.Module):
    """net(h, t): an MLP over the flattened example and (sin, cos) time features; out_scale sizes its outputs."""

    def __init__(self, shape, out_features, hidden=32, out_scale=1.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.shape, self.out = tuple(shape), out_features
        D = math.prod(shape)
        self.mlp = nn.Sequential(nn.Linear(D + 2, hidden), nn.SiLU(), nn.Linear(hidden, D * out_features))
        with torch.no_grad():
            self.mlp[-1].weight.mul_(out_scale)
            self.mlp[-1].bias.mul_(out_scale)

    def forward(self, h, t):
        B = h.shape[0]
        z = torch.cat([h.reshape(B, -1), torch.sin(3 * t)[:, None], torch.cos(3 * t)[:, None]], 1)
        return self.mlp(z.to(self.mlp[0].weight.dtype)).reshape(B, *self.shape, self.out)


class OracleEps(nn.Module):
    """The exact E[eps | x_t] for data uniform over a finite set of images (MATH.md s.8 eps-parameterisation):
    x0_hat(x_t) = sum_j w_j x^(j), w = softmax_j(-||x_t - sqrt(abar) x^(j)||^2 / (2(1 - abar)))."""

    def __init__(self, images: torch.Tensor, schedule: str, T: int):
        super().__init__()
        self.images, self.T = images.double(), T
        self.abar = Tables.from_betas(make_betas(schedule, T)).abar  # the trained grid; t = step / T

    def forward(self, h, t):
        x_t = h[..., 0].double()
        step = torch.round(t.double() * self.T).long() - 1
        abar = self.abar[step].reshape(-1, *([1] * (x_t.dim() - 1)))
        d = x_t[:, None] - abar[:, None].sqrt() * self.images[None]  # (B, J, *shape)
        logits = -(d**2).flatten(2).sum(2) / (2 * (1 - abar.flatten()))[:, None]
        w = torch.softmax(logits, 1).reshape(*logits.shape, *([1] * (x_t.dim() - 1)))
        x0 = (w * self.images[None]).sum(1)
        return ((x_t - abar.sqrt() * x0) / (1 - abar).sqrt()).float()[..., None]


def spec_for(shape, K):
    return DataSpec("toy", "discretised", tuple(shape), num_classes=K)


def random_images(n, shape, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return bin_centres_from_index(torch.randint(0, K, (n, *shape), generator=g), K)


# ---- closed forms against Monte Carlo and quadrature -----------------------------------------------------

@pytest.mark.parametrize("m1,v1,m2,v2", [(0.3, 0.5, -0.2, 1.3), (0.0, 2.0, 0.0, 0.1), (1.0, 1e-3, 1.02, 2e-3)])
def test_normal_kl_matches_monte_carlo(m1, v1, m2, v2):
    """MATH.md s.8: KL(N(m1, v1) || N(m2, v2)) = E_q[ln q - ln p], estimated from 200k draws; |diff| < 5 s.e."""
    g = torch.Generator().manual_seed(1)
    x = m1 + math.sqrt(v1) * torch.randn(200_000, generator=g, dtype=torch.float64)
    lq = torch.distributions.Normal(m1, math.sqrt(v1)).log_prob(x)
    lp = torch.distributions.Normal(m2, math.sqrt(v2)).log_prob(x)
    r = lq - lp
    kl = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, math.log(v1), m2, math.log(v2))))
    assert abs(r.mean() - kl).item() < 5 * (r.std() / math.sqrt(r.numel())).item()


def test_normal_kl_float32_keeps_digits_for_nearly_equal_gaussians():
    """0.5 (expm1(d) - d) form of the KL (MATH.md s.8): for log-variances 1e-4 apart the float32 value matches the
    float64 one to 1e-3 relative, where the naive exp(d) - 1 - d in float32 is off by 50 % or more."""
    lv1, lv2 = torch.tensor(-3.0), torch.tensor(-3.0 - 1e-4)
    m = torch.tensor(0.0)
    ref = normal_kl(m.double(), lv1.double(), m.double(), lv2.double())
    f32 = normal_kl(m, lv1, m, lv2)
    naive = 0.5 * (torch.exp(lv1 - lv2) - 1 - (lv1 - lv2))
    assert abs(f32.double() - ref).item() < 1e-3 * ref.item()
    assert abs(naive.double() - ref).item() >= 0.5 * ref.item()  # (it returns 0 here)


def test_prior_kl_matches_monte_carlo():
    """L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) (MATH.md s.8), per pixel, against 200k draws (5 s.e.)."""
    model = DDPM(spec_for((3,), 16), TinyNet((3,), 1), T=10, schedule="linear", beta_start=0.01, beta_end=0.1,
                 variance="fixed_small", loss_type="simple")
    tab = model.grid(None)
    x0 = torch.tensor([[-15 / 16, 1 / 16, 15 / 16]])
    mean, var = (tab.abar[-1].sqrt() * x0.double()).flatten(), tab.one_m_abar[-1]
    g = torch.Generator().manual_seed(2)
    z = mean + var.sqrt() * torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    r = (torch.distributions.Normal(mean, var.sqrt()).log_prob(z) - torch.distributions.Normal(0, 1).log_prob(z)).sum(1)
    got = model.prior_term(x0, tab).double()
    assert abs(r.mean() - got).item() < 5 * (r.std() / math.sqrt(r.numel())).item()
    closed = gaussian_kl_to_standard(mean, var, var.log()).sum()
    assert got.item() == pytest.approx(closed.item(), rel=1e-5)


@pytest.mark.parametrize("K", [2, 16, 256])
def test_decoder_bin_mass_matches_quadrature(K):
    """MATH.md s.8 decoder: ln[Phi((x + 1/K - mu)/s) - Phi((x - 1/K - mu)/s)], end bins open to -+inf, equals the
    log of the integral of N(y; mu, s^2) over the bin (scipy quad) to 1e-8 relative."""
    rng = np.random.default_rng(0)
    for _ in range(12):
        k = int(rng.integers(0, K))
        x = (2 * k + 1) / K - 1
        mu, s = float(rng.normal(0, 0.8)), float(np.exp(rng.uniform(-5, 0)))
        lo = -np.inf if k == 0 else x - 1 / K
        hi = np.inf if k == K - 1 else x + 1 / K
        pts = None if np.isinf(lo) or np.isinf(hi) or not lo < mu < hi else [mu]
        mass = integrate.quad(stats.norm(mu, s).pdf, lo, hi, points=pts, epsabs=0, epsrel=1e-12, limit=200)[0]
        if mass < 1e-280:
            continue
        got = discretised_gaussian_log_prob(*(torch.tensor(v, dtype=torch.float64) for v in (x, mu, math.log(s))), K)
        assert got.item() == pytest.approx(math.log(mass), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("K", [2, 16, 256])
def test_decoder_masses_sum_to_one_and_tails_are_finite(K):
    """The K bin masses of the decoder partition the real line: sum_k p(k) = 1 (float64, 1e-12), for means far outside
    [-1, 1] and scales from 1e-6 to 10; every ln p and its gradient finite (no NaN/inf at the edges)."""
    x = bin_centres_from_index(torch.arange(K), K).double()
    for mu in (-40.0, -1.0, 0.013, 0.999, 25.0):
        for s in (1e-6, 1e-2, 1.0, 10.0):
            mean = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
            logs = torch.tensor(math.log(s), dtype=torch.float64, requires_grad=True)
            lp = discretised_gaussian_log_prob(x, mean, logs, K)
            assert torch.isfinite(lp).all()
            assert torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-12)
            lp.sum().backward()
            assert torch.isfinite(mean.grad) and torch.isfinite(logs.grad)


# ---- the model's terms ------------------------------------------------------------------------------------

def test_kl_terms_match_monte_carlo_and_gaussian_conditioning():
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) (Ho et al. Eq. 5; MATH.md s.8) for a learned_range
    model at every t >= 2: equal to E_q[ln q - ln p] over 40k draws of x_{t-1} from the posterior (5 s.e.), with the
    posterior built independently by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0."""
    shape, K, T = (4,), 16, 6
    net = TinyNet(shape, 2, out_scale=3.0)
    model = DDPM(spec_for(shape, K), net, T=T, schedule="cosine", variance="learned_range", loss_type="hybrid",
                 clip_denoised=False)
    tab = model.grid(None)
    x0 = random_images(1, shape, K)
    for t in range(2, T + 1):
        g = torch.Generator().manual_seed(t)
        term = model.step_term(x0, torch.tensor([t]), tab, clip=False, generator=g).double()
        g = torch.Generator().manual_seed(t)  # replay the same x_t
        eps = torch.randn(x0.shape, generator=g)
        x_t = tab.abar[t - 1].sqrt().float() * x0 + tab.one_m_abar[t - 1].sqrt().float() * eps
        out = net(x_t[..., None], torch.tensor([t / T]))
        mean, logvar, _ = model.reverse(out, x_t, torch.tensor([t]), tab, clip=False)
        b, ap = tab.betas[t - 1], tab.abar_prev[t - 1]
        m_prev, m_t = ap.sqrt() * x0.double(), tab.abar[t - 1].sqrt() * x0.double()
        cov, var_t = (1 - b).sqrt() * (1 - ap), tab.one_m_abar[t - 1]
        q_mean = m_prev + cov / var_t * (x_t.double() - m_t)
        q_std = ((1 - ap) - cov**2 / var_t).sqrt()
        gm = torch.Generator().manual_seed(100 + t)
        y = q_mean + q_std * torch.randn(40_000, *shape, generator=gm, dtype=torch.float64)
        p_std = torch.exp(0.5 * logvar.double())
        r = (torch.distributions.Normal(q_mean, q_std).log_prob(y)
             - torch.distributions.Normal(mean.double(), p_std).log_prob(y)).sum(1)
        se = (r.std() / math.sqrt(r.numel())).item()
        assert abs(r.mean().item() - term.item()) < 5 * se + 1e-5 * abs(term.item()), t


def test_decoder_term_is_minus_log_bin_mass():
    """L_0 = -sum_d ln p(x0_d | x_1) with mean mu_theta(x_1, 1) and the step-1 variance (MATH.md s.8), against
    scipy.stats.norm CDF differences in float64 (end bins take the tails)."""
    shape, K = (6,), 16
    net = TinyNet(shape, 1, out_scale=0.5)
    model = DDPM(spec_for(shape, K), net, T=5, schedule="cosine", variance="fixed_small", loss_type="simple",
                 clip_denoised=False)
    tab = model.grid(None)
    x0 = bin_centres_from_index(torch.tensor([[0, 3, 7, 8, 12, 15]]), K)
    g = torch.Generator().manual_seed(3)
    term = model.step_term(x0, torch.tensor([1]), tab, clip=False, generator=g)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    x1 = tab.abar[0].sqrt().float() * x0 + tab.one_m_abar[0].sqrt().float() * eps
    mean, logvar, _ = model.reverse(net(x1[..., None], torch.tensor([1 / 5])), x1, torch.tensor([1]), tab, clip=False)
    mu, s = mean.detach().double().numpy()[0], math.sqrt(tab.post_var[1].item())
    xs = x0.double().numpy()[0]
    lo = np.where(xs < -1 + 2 / K, -np.inf, xs - 1 / K)
    hi = np.where(xs > 1 - 2 / K, np.inf, xs + 1 / K)
    want = -np.log(stats.norm.cdf(hi, mu, s) - stats.norm.cdf(lo, mu, s)).sum()
    assert term.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("n_steps", [None, 3])
def test_single_t_estimator_equals_full_bound_in_expectation(n_steps):
    """MATH.md s.8 estimators: E_t,eps[L_T + n term_t] = L_T + sum_t E_eps[term_t] (t ~ U{1..n}), for the trained grid
    (n = T = 8) and a respaced one (n = 3): means over 6000 single-t draws and 600 term-by-term bounds agree to
    5 combined s.e., per example; the decoder and diffusion parts agree separately too."""
    shape, K = (3,), 16
    model = DDPM(spec_for(shape, K), TinyNet(shape, 2, out_scale=2.0), T=8, schedule="cosine",
                 variance="learned_range", loss_type="hybrid")
    x = random_images(2, shape, K, seed=4)
    single = term_draws(lambda v, generator: model.bound_terms(v, n_steps, generator=generator), x, 6000, 5)
    full = term_draws(lambda v, generator: model.full_bound_terms(v, n_steps, generator=generator), x, 600, 6)
    for part in ("total", "decoder", "diffusion"):
        s, f = single[part], full[part]
        se = (s.var(0) / s.shape[0] + f.var(0) / f.shape[0]).sqrt()
        assert torch.all((s.mean(0) - f.mean(0)).abs() < 5 * se), (part, s.mean(0), f.mean(0), se)


def test_clamping_x0_hat_never_loosens_the_bound():
    """Clamping x0_hat to [-1, 1] (MATH.md s.8, evaluation only) projects it towards x0 in [-1, 1], so with the same
    noise every KL mean part, hence the bound, is no larger: L(clamped) <= L(unclamped) term by term."""
    shape, K = (5,), 16
    net = TinyNet(shape, 1, out_scale=4.0)
    kw = dict(T=6, schedule="cosine", variance="fixed_large", loss_type="simple")
    clamped = DDPM(spec_for(shape, K), net, clip_denoised=True, **kw)
    free = DDPM(spec_for(shape, K), net, clip_denoised=False, **kw)
    x = random_images(16, shape, K, seed=9)
    with torch.no_grad():
        a = clamped.step_terms(x, generator=torch.Generator().manual_seed(1))
        b = free.step_terms(x, generator=torch.Generator().manual_seed(1))
    assert torch.all(a[:, 1:] <= b[:, 1:] + 1e-6)  # KL terms
    assert (a < b - 1e-3).any()  # the clamp does act here


def test_oracle_single_image_bound_is_prior_plus_decoder_and_tends_to_zero():
    """Data = one fixed image x*: the exact eps predictor gives x0_hat = x*, so every fixed_small KL term is 0 and the
    bound is L_T + L_0 in closed form (MATH.md s.8): sum_d KL(N(sqrt(abar_T) x*, 1 - abar_T) || N(0,1)) -
    sum_d ln P(|N(0, beta~_2)| < 1/K) (end pixels: one side). True NLL = 0; with K = 16 bins and T = 200 the bound
    is < 1e-3 nats per 4-pixel image. The single-t draws are L_T + T L_0 [t = 1] (all KLs 0), whose s.e. over N draws
    is L_0 sqrt(T - 1)/sqrt(N)."""
    shape, K, T = (4,), 16, 200
    x_star = bin_centres_from_index(torch.tensor([[0, 5, 10, 15]]), K)
    model = DDPM(spec_for(shape, K), OracleEps(x_star, "cosine", T), T=T, schedule="cosine", variance="fixed_small",
                 loss_type="simple", clip_denoised=False)
    tab = model.grid(None)
    s = math.sqrt(tab.post_var[1].item())
    inner = math.log(stats.norm.cdf(1 / K, 0, s) - stats.norm.cdf(-1 / K, 0, s))
    edge = math.log(stats.norm.cdf(1 / K, 0, s))
    dec = -(2 * inner + 2 * edge)
    prior = float(gaussian_kl_to_standard(tab.abar[-1].sqrt() * x_star.double(), tab.one_m_abar[-1],
                                          tab.one_m_abar[-1].log()).sum())
    with torch.no_grad():
        terms = model.step_terms(x_star.repeat(2, 1), generator=torch.Generator().manual_seed(0))
        single = model.nll(x_star.repeat(2000, 1), generator=torch.Generator().manual_seed(1))
    assert terms[:, 1:].abs().max().item() < 1e-7  # every KL vanishes
    assert terms[:, 0].double().mean().item() == pytest.approx(dec, rel=1e-4, abs=1e-9)
    assert model.prior_term(x_star, tab).item() == pytest.approx(prior, rel=1e-5)
    assert 0 <= (prior + dec) < 1e-3
    N = single.numel()
    assert abs(single.double().mean().item() - (prior + dec)) < 5 * dec * math.sqrt(T - 1) / math.sqrt(N) + 1e-6


def test_oracle_two_image_bound_is_above_the_entropy_and_approaches_it():
    """Data uniform over 2 images: true NLL = ln 2 for each. With the exact eps predictor (posterior mean of x0) and
    fixed_small variances the bound stays >= ln 2 up to Monte-Carlo error and its gap shrinks as T grows
    (T = 10 -> 100): the discrete-time bound with the exact denoiser tends to the continuous one, which is tight
    up to L_T and L_0 (MATH.md s.8-9)."""
    shape, K = (2,), 16
    imgs = bin_centres_from_index(torch.tensor([[4, 9], [6, 9]]), K)
    gaps = []
    for T in (10, 100):
        model = DDPM(spec_for(shape, K), OracleEps(imgs, "cosine", T), T=T, schedule="cosine",
                     variance="fixed_small", loss_type="simple", clip_denoised=False)
        x = imgs.repeat(5000, 1)
        with torch.no_grad():
            v = model.nll(x, generator=torch.Generator().manual_seed(T)).double()
        mean, se = v.mean().item(), (v.std() / math.sqrt(v.numel())).item()
        assert mean > math.log(2) - 5 * se
        gaps.append((mean - math.log(2), se))
    (g10, s10), (g100, s100) = gaps
    assert g100 + 5 * s100 < g10 - 5 * s10, gaps


def test_oracle_two_image_bound_at_T_1000():
    """As above, term by term at T = 1000 (1000 passes of the analytic oracle): the gap to ln 2 keeps shrinking,
    gap(100) - gap(1000) > 5 combined s.e., and the bound stays >= ln 2 - 5 s.e."""
    shape, K = (2,), 16
    imgs = bin_centres_from_index(torch.tensor([[4, 9], [6, 9]]), K)
    res = {}
    for T in (100, 1000):
        model = DDPM(spec_for(shape, K), OracleEps(imgs, "cosine", T), T=T, schedule="cosine",
                     variance="fixed_small", loss_type="simple", clip_denoised=False)
        with torch.no_grad():
            v = model.full_bound(imgs.repeat(4000, 1), generator=torch.Generator().manual_seed(T)).double()
        res[T] = (v.mean().item() - math.log(2), (v.std() / math.sqrt(v.numel())).item())
    (g100, s100), (g1000, s1000) = res[100], res[1000]
    assert g1000 > -5 * s1000, res
    assert g100 - g1000 > 5 * math.hypot(s100, s1000), res
