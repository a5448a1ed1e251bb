"""DDPM schedules and closed-form tables (MATH.md s.8): float64 tables vs diffusers, posterior identities, respacing."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from baselines.ddpm.bound import discretised_gaussian_log_prob
from baselines.ddpm.schedules import Tables, make_betas, spaced_steps

U32 = 2.0**-24  # float32 unit roundoff

CASES = [("linear", "linear", 1000), ("cosine", "squaredcos_cap_v2", 1000), ("cosine", "squaredcos_cap_v2", 50),
         ("linear", "linear", 50)]


@pytest.mark.parametrize("ours,theirs,T", CASES)
def test_float64_tables_match_diffusers_to_float32_precision(ours, theirs, T):
    """MATH.md s.8 schedules: our float64 betas / alphas_cumprod equal diffusers' DDPMScheduler tables up to float32
    rounding. Bound: betas within 4 u (u = 2^-24, diffusers rounds each beta once, linspace adds a few ulp);
    abar_t within 4 u sum_{s<=t} (1/alpha_s + 1) (each float32 alpha_s = 1 - beta_s carries an absolute error u,
    a relative error u/alpha_s, plus one rounding per product)."""
    d = DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, beta_start=1e-4, beta_end=0.02)
    betas = make_betas(ours, T, 1e-4, 0.02)
    tab = Tables.from_betas(betas)
    assert betas.dtype == torch.float64 and tab.abar.dtype == torch.float64
    assert torch.all((d.betas.double() - betas).abs() <= 4 * U32 * betas)
    bound = 4 * U32 * torch.cumsum(1 / (1 - betas) + 1, 0)
    assert torch.all((d.alphas_cumprod.double() - tab.abar).abs() <= bound * tab.abar)


def test_cosine_schedule_closed_form():
    """Nichol & Dhariwal Eq. 17 (MATH.md s.8): abar_t = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), wherever no
    beta is clipped at 0.999; the clip applies at the last step only for T = 1000."""
    T = 1000
    b = make_betas("cosine", T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = torch.cumprod(1 - b, 0)
    want = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    clipped = b >= 0.999
    assert clipped.nonzero().flatten().tolist() == [T - 1]
    torch.testing.assert_close(abar[:-1], want[:-1], rtol=1e-12, atol=0)


def test_linear_default_is_improved_diffusion_scaled():
    """MATH.md s.8: linear beta 1e-4 -> 0.02 scaled by 1000/T (improved-diffusion's get_named_beta_schedule)."""
    b = make_betas("linear", 250)
    assert b[0].item() == pytest.approx(4e-4, rel=1e-12) and b[-1].item() == pytest.approx(0.08, rel=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_is_gaussian_conditioning(schedule):
    """Ho et al. Eq. 6-7 (MATH.md s.8 mu~_t = c1 x_0 + c2 x_t, beta~_t): equal to conditioning the joint Gaussian of
    (x_{t-1}, x_t) given x_0: x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1}) e1,
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) e2."""
    T = 100
    tab = Tables.from_betas(make_betas(schedule, T))
    b, ap = tab.betas, tab.abar_prev
    cov = (1 - b).sqrt() * (1 - ap)  # Cov(x_{t-1}, x_t | x0)
    var_t = (1 - b) * (1 - ap) + b  # Var(x_t | x0) = 1 - abar_t
    c2 = cov / var_t
    c1 = ap.sqrt() - c2 * (1 - b).sqrt() * ap.sqrt()  # from E[x_{t-1}|x_t] = m_{t-1} + c2 (x_t - m_t)
    post = (1 - ap) - cov**2 / var_t
    torch.testing.assert_close(tab.c1, c1, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(tab.c2, c2, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(tab.post_var, post, rtol=1e-9, atol=1e-16)
    assert tab.post_var[0].item() == 0.0  # beta~_1 = 0 exactly: no clamp in our tables
    torch.testing.assert_close(tab.one_m_abar, 1 - tab.abar, rtol=1e-12, atol=1e-15)


def test_kl_weight_is_snr_difference():
    """Ties MATH.md s.8 to s.9: c1^2 / beta~_t = SNR(t-1) - SNR(t), SNR = abar/(1 - abar), for t >= 2; so the
    fixed_small KL term is (SNR(t-1) - SNR(t)) ||x0 - x0_hat||^2 / 2, VDM's discrete-time term."""
    tab = Tables.from_betas(make_betas("cosine", 200))
    snr = tab.abar / tab.one_m_abar
    torch.testing.assert_close((tab.c1**2 / tab.post_var)[1:], snr[:-1] - snr[1:], rtol=1e-9, atol=0)


def test_step_one_variance_is_not_diffusers_clamp():
    """MATH.md s.8: beta~_1 = 0, so step 1 uses beta~_2 (improved-diffusion's posterior_log_variance_clipped), not
    diffusers' clamp to 1e-20, whose decoder is a near-delta that puts ~0 mass on the data's bin once the mean
    misses by a fraction of a bin."""
    T, K = 1000, 256
    d = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    tab = Tables.from_betas(make_betas("cosine", T))
    assert d._get_variance(0, variance_type="fixed_small").item() == pytest.approx(1e-20, rel=1e-6)
    assert tab.log_post_var_clipped[0].item() == pytest.approx(math.log(tab.post_var[1].item()), rel=1e-14)
    assert tab.log_betas_large[0].item() == tab.log_post_var_clipped[0].item()
    x = torch.tensor([1 / K])  # a bin centre; the decoder mean misses it by 1.2 half-bins
    mean = x + 1.2 / K
    ours = -discretised_gaussian_log_prob(x, mean, 0.5 * tab.log_post_var_clipped[:1], K)
    clamp = -discretised_gaussian_log_prob(x, mean, torch.tensor([0.5 * math.log(1e-20)]), K)
    assert ours.item() < 3.0
    assert clamp.item() > 1e6 and torch.isfinite(clamp).all()


def test_spaced_steps_keep_ends_and_match_improved_diffusion():
    """improved-diffusion space_timesteps(T, [n]) (0-based round(i (T-1)/(n-1))): n distinct steps from 1..T with both
    ends; n = 1 keeps t = T only. (1000, 7) has exact ties (stride 166.5): half-to-even, as Python's round there."""
    for T, n in [(1000, 50), (1000, 100), (1000, 7), (40, 40), (40, 2), (10, 3)]:
        s = spaced_steps(T, n)
        stride = (T - 1) / (n - 1)
        assert s == [1 + round(i * stride) for i in range(n)]
        assert s[0] == 1 and s[-1] == T and len(set(s)) == n
    assert spaced_steps(1000, 7)[1] == 167  # round(166.5) = 166 (0-based)
    assert spaced_steps(10, 1) == [10]


@pytest.mark.parametrize("n", [1, 2, 5, 17, 64])
def test_respaced_chain_composes_kernels(n):
    """Respacing (MATH.md s.8; improved-diffusion): beta'_i = 1 - abar_{s_i}/abar_{s_{i-1}}, so the respaced chain's
    marginals q(x_s | x_0) equal the original at every kept step and each kernel is the composition of the skipped
    ones: ln(1 - beta'_i) = sum_{s_{i-1} < u <= s_i} ln(1 - beta_u)."""
    T = 64
    full = Tables.from_betas(make_betas("cosine", T))
    sub = full.respace(n)
    keep = torch.tensor(spaced_steps(T, n))
    assert torch.equal(sub.steps, keep) and sub.T == T and sub.n == n
    torch.testing.assert_close(sub.abar, full.abar[keep - 1], rtol=1e-12, atol=0)
    prev = torch.cat([torch.tensor([0]), keep[:-1]])
    comp = torch.stack([torch.log1p(-full.betas[a:b]).sum() for a, b in zip(prev.tolist(), keep.tolist(), strict=True)])
    torch.testing.assert_close(torch.log(sub.alphas), comp, rtol=1e-12, atol=1e-15)  # logs: no cancellation
    torch.testing.assert_close(sub.betas, -torch.expm1(comp), rtol=1e-12, atol=0)
    assert bool(((sub.betas > 0) & (sub.betas < 1)).all())
    assert full.respace(T) is full


def test_schedule_validation_errors():
    """Bad hyperparameters get a ValueError naming the problem and the fix."""
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        make_betas("cosine", 0)
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        make_betas("cosine", 2.5)
    with pytest.raises(ValueError, match="exceeds 1 for T < 21"):
        make_betas("linear", 10)
    with pytest.raises(ValueError, match="beta_start"):
        make_betas("linear", 100, beta_start=0.0)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_betas("quadratic", 100)
    with pytest.raises(ValueError, match=r"every beta_t must lie in \(0, 1\)"):
        Tables.from_betas(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="exceeds the T = 10 steps"):
        spaced_steps(10, 11)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        spaced_steps(10, 0)


def test_single_step_chain_is_finite():
    """T = 1 (or respaced to n = 1): beta~_2 does not exist, so step 1 uses beta_1 (documented); tables finite."""
    tab = Tables.from_betas(make_betas("cosine", 1))
    for v in (tab.log_post_var_clipped, tab.log_betas_large, tab.c1, tab.c2):
        assert torch.isfinite(v).all()
    assert tab.log_post_var_clipped[0].item() == pytest.approx(math.log(tab.betas[0].item()))
