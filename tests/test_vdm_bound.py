"""VDM bound terms (MATH.md s.9; Kingma et al. 2021): prior and decoder against Monte Carlo / direct computation,
the n-step bound against its term-by-term sum and against continuous time as n grows, oracle denoisers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from baselines.vdm import VDM, LinearGamma, alpha_sigma2, recon_nll
from suite.data.base import DataSpec, bin_centres_from_index
from tests.helpers.estimators import term_draws


class TinyNet(nn.Module):
    """net(h, t): an MLP over the flattened example and (sin, cos) time features."""

    def __init__(self, shape, hidden=32, out_scale=1.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.shape = tuple(shape)
        D = math.prod(shape)
        self.mlp = nn.Sequential(nn.Linear(D + 2, hidden), nn.SiLU(), nn.Linear(hidden, D))
        with torch.no_grad():
            self.mlp[-1].weight.mul_(out_scale)

    def forward(self, h, t):
        B = h.shape[0]
        z = torch.cat([h.reshape(B, -1), torch.sin(3 * t)[:, None], torch.cos(3 * t)[:, None]], 1)
        return self.mlp(z).reshape(B, *self.shape, 1)


class OracleEps(nn.Module):
    """The exact E[eps | z_t] for data uniform over a finite set of images (MATH.md s.9):
    x_hat = sum_j w_j x^(j), w = softmax_j(-||z - alpha_t x^(j)||^2 / (2 sigma_t^2)),
    eps_hat = (z - alpha_t x_hat)/sigma_t."""

    def __init__(self, images: torch.Tensor, gamma: LinearGamma):
        super().__init__()
        self.images, self.gamma = images.double(), gamma

    def forward(self, h, t):
        z = h[..., 0].double()
        a2, s2 = alpha_sigma2(self.gamma(t.double()))
        a, s = a2.sqrt().reshape(-1, 1), s2.sqrt().reshape(-1, 1)
        zf, imgs = z.flatten(1), self.images.flatten(1)
        logits = -((zf[:, None] - a[:, None] * imgs[None]) ** 2).sum(2) / (2 * s**2)
        x_hat = torch.softmax(logits, 1) @ imgs
        return ((zf - a * x_hat) / s).reshape(z.shape).float()[..., None]


def spec_for(shape, K):
    return DataSpec("toy", "discretised", tuple(shape), num_classes=K)


def fixed_vdm(shape, K, net=None, **kw):
    model = VDM(spec_for(shape, K), net if net is not None else nn.Identity(), learned_gamma=False, **kw)
    return model


def with_oracle(images, K, **kw):
    model = fixed_vdm(tuple(images.shape[1:]), K, **kw)
    model.net.net = OracleEps(images, model.gamma)
    return model


# ---- schedule ---------------------------------------------------------------------------------------------

def test_linear_gamma_identities():
    """MATH.md s.9: alpha^2 + sigma^2 = 1, SNR = alpha^2/sigma^2 = exp(-gamma); gamma' equals the central difference of
    gamma; gamma(t) - gamma(s) from `increment` equals the difference; ends at -13.3 and 5.0."""
    g = LinearGamma(-13.3, 5.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    a2, s2 = alpha_sigma2(g(t))
    torch.testing.assert_close(a2 + s2, torch.ones_like(t), rtol=0, atol=1e-15)
    torch.testing.assert_close(a2 / s2, torch.exp(-g(t)), rtol=1e-12, atol=0)
    h = 1e-6
    torch.testing.assert_close(g.prime(t), (g(t + h) - g(t - h)) / (2 * h), rtol=1e-7, atol=0)
    torch.testing.assert_close(g.increment(t[:-1], t[1:]), g(t[1:]) - g(t[:-1]), rtol=1e-12, atol=1e-12)
    assert g(torch.tensor(0.0)).item() == pytest.approx(-13.3, rel=1e-7)
    assert g(torch.tensor(1.0)).item() == pytest.approx(5.0, rel=1e-6)


def test_learned_gamma_gets_gradients_fixed_has_none():
    """VDM's learnable ends: the bound's gradient reaches both parameters of gamma; the fixed schedule has none."""
    shape, K = (3,), 16
    model = VDM(spec_for(shape, K), TinyNet(shape))
    x = bin_centres_from_index(torch.tensor([[1, 8, 14]]).repeat(8, 1), K)
    model.loss(x).mean().backward()
    assert model.gamma.b.grad.abs() > 0 and model.gamma.w.grad.abs() > 0
    assert list(fixed_vdm(shape, K).gamma.parameters()) == []
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        LinearGamma(5.0, -13.3)


# ---- prior and decoder ------------------------------------------------------------------------------------

def test_prior_term_matches_monte_carlo():
    """L_prior = KL(N(alpha_1 x, sigma_1^2) || N(0, 1)) = 0.5 (alpha_1^2 x^2 + sigma_1^2 - ln sigma_1^2 - 1) (MATH.md
    s.9, VDM Eq. 14), per example summed over D, against 400k draws of z_1 (5 s.e.), for gamma(1) = 5 and 0.3."""
    for g1 in (5.0, 0.3):
        model = fixed_vdm((3,), 16, gamma_max=g1)
        x = torch.tensor([[-15 / 16, 3 / 16, 15 / 16]])
        a2, s2 = alpha_sigma2(torch.tensor(g1, dtype=torch.float64))
        mean, sd = a2.sqrt() * x.double().flatten(), s2.sqrt()
        z = mean + sd * torch.randn(400_000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        r = (torch.distributions.Normal(mean, sd).log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(1)
        got = model.prior_term(x).double().item()
        assert abs(r.mean().item() - got) < 5 * (r.std() / math.sqrt(r.numel())).item()
        closed = 0.5 * (a2 * x.double() ** 2 + s2 - s2.log() - 1).sum().item()
        assert got == pytest.approx(closed, rel=1e-5)


@pytest.mark.parametrize("K,g0", [(256, -13.3), (16, -3.0), (2, 0.5)])
def test_recon_matches_softmax_over_bins(K, g0):
    """L_recon: p(x = v | z_0) = softmax_v[-(z_0/alpha_0 - x~(v))^2 / (2 e^gamma(0))] (MATH.md s.9, VDM Eq. 31-32),
    computed directly in float64 numpy, with z_0/alpha_0 = x~ + e^(gamma0/2) eps; the probabilities sum to 1 and
    -ln p >= 0."""
    rng = np.random.default_rng(0)
    k = torch.tensor(rng.integers(0, K, size=50))
    eps = torch.tensor(rng.normal(size=50), dtype=torch.float32)
    got = recon_nll(k, eps, torch.tensor(g0, dtype=torch.float64), K).double().numpy()
    centres = (2 * np.arange(K) + 1) / K - 1
    u = centres[k.numpy()] + math.exp(g0 / 2) * eps.double().numpy()
    logits = -((u[:, None] - centres[None]) ** 2) / (2 * math.exp(g0))
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    assert np.allclose(np.exp(logp).sum(1), 1.0, atol=1e-12)
    want = -logp[np.arange(50), k.numpy()]
    assert np.all(got >= 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_recon_window_and_chunks_do_not_change_values(monkeypatch):
    """The decoder's log-sum-exp (MATH.md s.9) keeps only bins within CUT = 30 nats of the data's own logit (the rest
    weigh < K e^-30 in total) and runs in chunks of elements: against all K bins in one chunk the values agree to
    float32 rounding (2 ulp of the largest value), for a narrow decoder (7-bin window) and wide ones (every bin)."""
    import baselines.vdm.method as vm

    g = torch.Generator().manual_seed(0)
    for K, g0 in [(256, -13.3), (256, -9.0), (16, -3.0)]:
        k = torch.randint(0, K, (7, 9), generator=g)
        eps = 1.5 * torch.randn(7, 9, generator=g)
        g0 = torch.tensor(g0, dtype=torch.float64)
        windowed = vm.recon_nll(k, eps, g0, K)
        with monkeypatch.context() as mp:
            mp.setattr(vm, "_CUT", 1e9)  # window = all K bins
            full = vm.recon_nll(k, eps, g0, K)
            mp.setattr(vm, "_CHUNK", K * 5)  # 5 elements per chunk
            chunked = vm.recon_nll(k, eps, g0, K)
        tol = 2 * torch.finfo(torch.float32).eps * max(1.0, full.abs().max().item())
        assert (windowed - full).abs().max().item() <= tol
        torch.testing.assert_close(chunked, full, rtol=0, atol=0)


# ---- the diffusion term -----------------------------------------------------------------------------------

def test_n_step_diffusion_term_tends_to_continuous_time():
    """MATH.md s.9: (n/2) expm1(gamma(i/n) - gamma((i-1)/n)) ||eps - eps_hat(z_{i/n})||^2
    -> 0.5 gamma'(t) ||eps - eps_hat(z_t)||^2
    as n grows. With common random numbers (the same u ~ U(0,1) mapped to i = ceil(u n), the same eps) each draw's
    n-step value tends to its continuous one, deterministically, at rate O(1/n): the worst relative gap shrinks at
    least 5x per decade of n and is < 5 % at n = 1000; so does the gap between the means over 4000 paired draws
    (leading order: the weight n expm1(Delta/n)/Delta - 1 ~ Delta/(2n), ~0.9 % at n = 1000 for Delta = 18.3)."""
    shape, K = (4,), 16
    model = fixed_vdm(shape, K, net=TinyNet(shape, out_scale=2.0))
    x = bin_centres_from_index(torch.randint(0, K, (4000, *shape), generator=torch.Generator().manual_seed(0)), K)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64).clamp_min(1e-9)

    def run(n):
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            if n is None:
                return model.diffusion_at(x, u, model.gamma.prime(u), g).double()
            i = torch.ceil(u * n)
            t, s = i / n, (i - 1) / n
            return model.diffusion_at(x, t, n * torch.expm1(model.gamma.increment(s, t)), g).double()

    cont = run(None)
    runs = {n: run(n) for n in (10, 100, 1000)}
    worst = [((runs[n] - cont).abs() / cont).max().item() for n in runs]
    mean = [abs(runs[n].mean() / cont.mean() - 1).item() for n in runs]
    for gaps in (worst, mean):
        assert gaps[1] < gaps[0] / 5 and gaps[2] < gaps[1] / 5 and gaps[2] < 0.05, (worst, mean)


def test_single_step_estimator_equals_term_by_term_bound_in_expectation():
    """MATH.md s.9: E_i[(n/2) expm1(...) ||eps - eps_hat||^2] = sum_i 0.5 expm1(...) E||eps - eps_hat||^2, i ~ U{1..n}
    (n = 6): 6000 single-i draws against 600 term-by-term sums, per example, within 5 combined s.e.; the prior and
    recon terms are the same fixed terms in both."""
    shape, K = (3,), 16
    model = fixed_vdm(shape, K, net=TinyNet(shape, out_scale=2.0))
    x = bin_centres_from_index(torch.tensor([[0, 7, 15], [3, 3, 12]]), K)
    single = term_draws(lambda v, generator: model.bound_terms(v, 6, generator=generator), x, 6000, 3)
    full = term_draws(lambda v, generator: model.full_bound_terms(v, 6, generator=generator), x, 600, 4)
    for part in ("total", "diffusion", "recon"):
        s, f = single[part], full[part]
        se = (s.var(0) / s.shape[0] + f.var(0) / f.shape[0]).sqrt()
        assert torch.all((s.mean(0) - f.mean(0)).abs() <= 5 * se + 1e-12), (part, s.mean(0), f.mean(0), se)
    torch.testing.assert_close(single["prior"], full["prior"][:1].expand_as(single["prior"]))


def test_stratified_times_are_unbiased():
    """VDM's low-discrepancy t_b = (u + b/B) mod 1 (MATH.md s.9): each t_b is U(0, 1), so the batch mean of the bound
    has the same expectation as with i.i.d. t (200 batches of 64, 5 combined s.e.). (How much it lowers the variance
    depends on how much of it comes from t; the benchmark reports the standard errors side by side.)"""
    shape, K = (3,), 16
    net = TinyNet(shape, out_scale=2.0)
    x = bin_centres_from_index(torch.tensor([[2, 9, 13]]).repeat(64, 1), K)
    means = {}
    for mode in ("iid", "stratified"):
        model = fixed_vdm(shape, K, net=net, t_sampling=mode)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            means[mode] = torch.stack([model.nll(x, generator=g).double().mean() for _ in range(200)])
    a, b = means["iid"], means["stratified"]
    se = (a.var() / a.numel() + b.var() / b.numel()).sqrt()
    assert abs(a.mean() - b.mean()) < 5 * se


# ---- oracles ----------------------------------------------------------------------------------------------

def test_oracle_single_image_diffusion_term_vanishes():
    """Data = one image x*: eps_hat(z_t) = (z_t - alpha_t x*)/sigma_t is exact, so L_diff = 0 for every t and n, and
    the bound is L_prior + L_recon (MATH.md s.9) with L_recon ~ 0 for K = 16 (decoder width e^(gamma0/2) = 1.3e-3
    against bins 0.125 apart): the bound equals the closed-form prior
    0.5 sum (alpha_1^2 x*^2 + sigma_1^2 - ln sigma_1^2 - 1), and tends to the true NLL 0 as gamma(1) grows
    (< 1e-4 nats at gamma(1) = 10)."""
    K = 16
    x_star = bin_centres_from_index(torch.tensor([[0, 6, 11, 15]]), K)
    x = x_star.repeat(64, 1)
    for g1 in (5.0, 10.0):
        model = with_oracle(x_star, K, gamma_max=g1)
        a2, s2 = alpha_sigma2(torch.tensor(g1, dtype=torch.float64))
        prior = 0.5 * (a2 * x_star.double() ** 2 + s2 - s2.log() - 1).sum().item()
        with torch.no_grad():
            # n = 1 is left out: its weight expm1(gamma(1) - gamma(0)) ~ 1e10 magnifies float32 rounding of z_t
            for n in (None, 2, 10):
                terms = model.bound_terms(x, n, generator=torch.Generator().manual_seed(0))
                assert terms["diffusion"].abs().max().item() < 1e-5
                assert terms["recon"].max().item() < 1e-6
                assert terms["prior"][0].item() == pytest.approx(prior, rel=1e-4)
                assert sum(terms.values()).min().item() >= 0
    assert prior < 1e-4


def test_oracle_two_images_bound_reaches_the_entropy():
    """Data uniform over 2 images symmetric about 0: with the exact denoiser, E[L_prior + L_recon + L_diff] =
    H(x) + KL(q(z_1) || N(0, I)) + E KL(q(x | z_0) || p(x | z_0)) (I-MMSE; Kingma et al. 2021 Sec. 4). Both gaps are
    < 1e-4 nats here (the mixture of z_1 has mean 0 and variance within 0.7 % of 1; bins 0.125 apart against a decoder
    width 1.3e-3), so the continuous-time bound equals ln 2 within 5 s.e.; the n-step bounds (n = 4, 16, 64, computed
    term by term) exceed ln 2 and decrease towards it."""
    K = 16
    imgs = bin_centres_from_index(torch.tensor([[4, 9], [11, 6]]), K)  # x and -x
    model = with_oracle(imgs, K)
    x = imgs.repeat(10_000, 1)
    res = {}
    for n in (None, 4, 16, 64):
        with torch.no_grad():
            fn = model.nll if n is None else model.full_bound
            v = fn(x if n is None else x[:2000], n, generator=torch.Generator().manual_seed(7)).double()
        res[n] = (v.mean().item(), (v.std() / math.sqrt(v.numel())).item())
    m, se = res[None]
    assert abs(m - math.log(2)) < 5 * se, res
    (m4, s4), (m16, s16), (m64, s64) = res[4], res[16], res[64]
    assert m4 - 5 * s4 > m16 + 5 * s16 and m16 - 5 * s16 > m64 + 5 * s64 and m64 - 5 * s64 > math.log(2), res


def test_ancestral_step_is_gaussian_conditioning():
    """VDM Eq. 8 / A.4: p(z_s | z_t) = q(z_s | z_t, x_hat) with x_hat = (z_t - sigma_t eps_hat)/alpha_t; mean
    alpha_{t|s} sigma_s^2/sigma_t^2 z_t + alpha_s sigma_{t|s}^2/sigma_t^2 x_hat, variance
    sigma_{t|s}^2 sigma_s^2/sigma_t^2, alpha_{t|s} = alpha_t/alpha_s,
    sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2
    (independent of the code's c form)."""
    model = fixed_vdm((5,), 16)
    g = torch.Generator().manual_seed(0)
    z, eps_hat = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    for s_, t_ in [(0.0, 0.1), (0.45, 0.5), (0.9, 1.0)]:
        s, t = torch.full((3,), s_, dtype=torch.float64), torch.full((3,), t_, dtype=torch.float64)
        mean, std = model.reverse_step(z, s, t, eps_hat)
        a2t, s2t = alpha_sigma2(model.gamma(t))
        a2s, s2s = alpha_sigma2(model.gamma(s))
        ats2 = a2t / a2s
        sts2 = s2t - ats2 * s2s
        x_hat = (z.double() - s2t.sqrt()[:, None] * eps_hat.double()) / a2t.sqrt()[:, None]
        want_mean = (ats2.sqrt() * s2s / s2t)[:, None] * z.double() + (a2s.sqrt() * sts2 / s2t)[:, None] * x_hat
        torch.testing.assert_close(mean.double(), want_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(std.double().flatten(), (sts2 * s2s / s2t).sqrt(), rtol=1e-5, atol=0)
