"""Sohl-Dickstein et al. 2015 closed forms (MATH.md s.7): KLs, entropies, forward posteriors, composed kernels,
schedules and temporal basis, each against an independent computation (Monte Carlo, quadrature, Bayes' rule by
enumeration, explicit step-by-step chaining)."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.sohl2015.kernels import (
    bernoulli_kl_logits,
    bernoulli_posterior_logit,
    binary_entropy,
    gaussian_entropy,
    gaussian_kl,
    gaussian_posterior,
)
from baselines.sohl2015.schedules import (
    GaussianBetas,
    alpha_bar,
    binomial_betas,
    constant_fraction_betas,
    step_grid,
)
from baselines.sohl2015.temporal import temporal_basis, temporal_readout

N_MC = 400_000



def mc_check(samples: torch.Tensor, exact: torch.Tensor, k: float = 5.0) -> None:
    """|mean - exact| <= k standard errors of the Monte-Carlo mean (samples along dim 0)."""
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    assert torch.all((mean - exact).abs() <= k * se + 1e-12), (mean, exact, se)


def test_gaussian_kl_matches_monte_carlo():
    """MATH.md s.7: KL(N(m_q, v_q)||N(m_p, v_p)) = ln(s_p/s_q) + (v_q + (m_q - m_p)^2)/(2 v_p) - 1/2
    vs E_q[ln q - ln p]."""
    g = torch.Generator().manual_seed(0)
    mq = torch.tensor([0.0, 1.5, -0.3, 2.0], dtype=torch.float64)
    vq = torch.tensor([1.0, 0.2, 3e-3, 0.9], dtype=torch.float64)
    mp = torch.tensor([0.5, 1.0, -0.25, -1.0], dtype=torch.float64)
    vp = torch.tensor([2.0, 0.3, 5e-3, 0.05], dtype=torch.float64)
    x = mq + vq.sqrt() * torch.randn(N_MC, 4, generator=g, dtype=torch.float64)
    q, p = torch.distributions.Normal(mq, vq.sqrt()), torch.distributions.Normal(mp, vp.sqrt())
    mc_check(q.log_prob(x) - p.log_prob(x), gaussian_kl(mq, vq, mp, vp.log()))


def test_gaussian_entropy_matches_monte_carlo():
    """MATH.md s.7: H_q(X^t|X^0) = 0.5 ln(2 pi e (1 - abar_t)) vs E[-ln N(x)] over samples."""
    g = torch.Generator().manual_seed(1)
    var = torch.tensor([1.0, 1e-3, 0.37], dtype=torch.float64)
    x = var.sqrt() * torch.randn(N_MC, 3, generator=g, dtype=torch.float64)
    mc_check(-torch.distributions.Normal(0.0, var.sqrt()).log_prob(x), gaussian_entropy(var))


def test_bernoulli_kl_and_entropy_match_monte_carlo():
    """MATH.md s.7: KL(B(q)||B(p)) = q ln(q/p) + (1-q) ln((1-q)/(1-p)) and H(B(q)) vs E over Bernoulli draws."""
    g = torch.Generator().manual_seed(2)
    q = torch.tensor([0.5, 0.1, 0.93, 2e-3], dtype=torch.float64)
    p = torch.tensor([0.3, 0.4, 0.99, 0.05], dtype=torch.float64)
    x = torch.bernoulli(q.expand(N_MC, 4), generator=g)
    logq = torch.where(x > 0, q.log(), (1 - q).log())
    logp = torch.where(x > 0, p.log(), (1 - p).log())
    mc_check(logq - logp, bernoulli_kl_logits(torch.logit(q), torch.logit(p)))
    mc_check(-logq, binary_entropy(q))


def test_bernoulli_kl_and_entropy_edges_finite():
    """Edge values: H(B(0)) = H(B(1)) = 0; KL from saturated logits (|u| = 80) is finite, >= 0 and -ln p at q = 1."""
    assert torch.equal(binary_entropy(torch.tensor([0.0, 1.0])), torch.zeros(2))
    u = torch.tensor([80.0, -80.0, 80.0, 0.0])
    v = torch.tensor([-80.0, -80.0, 0.0, 80.0])
    kl = bernoulli_kl_logits(u, v)
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    # KL(B(~1) || B(sigmoid(-80))) = -ln sigmoid(-80) = 80 + ln(1 + e^-80)
    assert kl[1] == 0 and math.isclose(kl[0].item(), 80.0, rel_tol=1e-6)


@pytest.mark.parametrize("s,t", [(3, 4), (2, 9)])
def test_gaussian_posterior_matches_bayes_quadrature(s, t):
    """MATH.md s.7 posterior mu~, beta~ (with the composed beta' = 1 - abar_t/abar_s for a jump s -> t) against
    Bayes' rule q(x^s|x^t, x^0) ~ N(x^t; sqrt(1 - beta') x^s, beta') N(x^s; sqrt(abar_s) x^0, 1 - abar_s)
    by quadrature."""
    ab = alpha_bar(constant_fraction_betas(10))
    x0, xt = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    bp = 1 - ab[t] / ab[s]
    grid = torch.linspace(-8, 8, 400_001, dtype=torch.float64)
    logw = torch.distributions.Normal((1 - bp).sqrt() * grid, bp.sqrt()).log_prob(xt) + torch.distributions.Normal(
        ab[s].sqrt() * x0, (1 - ab[s]).sqrt()
    ).log_prob(grid)
    w = torch.softmax(logw, 0)
    m = (w * grid).sum()
    v = (w * (grid - m) ** 2).sum()
    mu, var = gaussian_posterior(x0, xt, ab[s], ab[t])
    assert torch.allclose(mu, m, atol=1e-7) and torch.allclose(var, v, rtol=1e-5)


def test_gaussian_forward_chain_composes_to_abar():
    """MATH.md s.7: t steps of q(x^t|x^{t-1}) = N(sqrt(1 - beta_t) x^{t-1}, beta_t) compose to
    q(x^t|x^0) = N(sqrt(abar_t) x^0, 1 - abar_t): simulated chain vs closed form (mean and variance, 5 s.e.)."""
    g = torch.Generator().manual_seed(3)
    betas = constant_fraction_betas(12)
    ab = alpha_bar(betas)
    x = torch.full((N_MC,), 1.3, dtype=torch.float64)
    for t in range(1, 13):
        x = (1 - betas[t - 1]).sqrt() * x + betas[t - 1].sqrt() * torch.randn(N_MC, generator=g, dtype=torch.float64)
        if t in (1, 5, 12):
            mc_check(x[:, None], ab[t].sqrt() * 1.3)
            resid = (x - ab[t].sqrt() * 1.3) ** 2
            mc_check(resid[:, None], 1 - ab[t])


def _step_matrix(beta: float, p1: float) -> torch.Tensor:
    """M[a, b] = q(x^t = b | x^{t-1} = a) of the binomial kernel B(x(1 - beta) + beta p1)."""
    on = torch.tensor([beta * p1, 1 - beta + beta * p1], dtype=torch.float64)  # P(1 | a = 0), P(1 | a = 1)
    return torch.stack([1 - on, on], 1)


@pytest.mark.parametrize("p1", [0.5, 0.2])
@pytest.mark.parametrize("s,t", [(1, 2), (2, 6), (3, 8)])
def test_bernoulli_posterior_matches_enumerated_bayes(p1, s, t):
    """MATH.md s.7 q(x^s = 1|x^t, x^0) = ab/(ab + a'(1 - b)) for the composed jump s -> t, against Bayes' rule with
    transition matrices multiplied step by step (which also checks abar composition: beta' = 1 - abar_t/abar_s)."""
    T = 8
    betas = binomial_betas(T)
    ab = alpha_bar(betas)
    M = lambda lo, hi: torch.linalg.multi_dot(
        [torch.eye(2, dtype=torch.float64)] * 2 + [_step_matrix(betas[k - 1].item(), p1) for k in range(lo + 1, hi + 1)]
    )
    A, Bm = M(0, s), M(s, t)  # q(x^s|x^0), q(x^t|x^s)
    for x0 in (0, 1):
        for xt in (0, 1):
            joint = A[x0, :] * Bm[:, xt]
            exact = joint[1] / joint.sum()
            got = torch.sigmoid(
                bernoulli_posterior_logit(torch.tensor(float(x0)), torch.tensor(float(xt)), ab[s], ab[t], p1).double()
            )
            assert math.isclose(got.item(), exact.item(), rel_tol=1e-5), (x0, xt, got, exact)


def test_binomial_schedule_abar_closed_form():
    """Paper Table App.1 / MATH.md s.7: beta_t = 1/(T - t + 1) gives abar_t = (T - t)/T and abar_T = 0."""
    T = 37
    ab = alpha_bar(binomial_betas(T))
    assert torch.allclose(ab, (T - torch.arange(T + 1, dtype=torch.float64)) / T, atol=1e-14)


def test_constant_fraction_schedule_and_learned_start():
    """MATH.md s.7 public-code schedule beta_t = 1/linspace(T, 2, T)_t (in [1e-6, 1 - 1e-5]); beta_1 = beta1 fixed;
    the learned schedule starts equal to it, gets gradients on beta_2..T only, and stays in (0, 1)."""
    T = 40
    fixed = GaussianBetas(T, beta1=1e-3)()
    base = 1 / torch.linspace(T, 2, T, dtype=torch.float64)
    assert fixed[0] == 1e-3 and torch.allclose(fixed[1:], base[1:], rtol=1e-4)
    ab = alpha_bar(fixed)
    assert 0 < ab[-1] < 5.0 / T  # most of the signal variance is erased by T
    learned = GaussianBetas(T, beta1=1e-3, learned=True)
    b = learned()
    assert torch.allclose(b, fixed, rtol=1e-12, atol=0)  # sigmoid(logit(.)) round-off only
    (b[0] * 0 + b[1:].log().sum()).backward()
    assert learned.coef.grad.abs().sum() > 0
    with torch.no_grad():
        learned.coef.fill_(50.0)
    b = learned()
    assert b[0] == 1e-3 and (b > 0).all() and (b < 1).all()


def test_step_grid():
    """Sub-grid s_1 < ... < s_n (MATH.md s.7 composed kernels): n = T is the full grid 1..T; s_1 = 1 and s_n = T;
    strictly increasing for every n <= T; n = 1 is the single jump 0 -> T."""
    assert torch.equal(step_grid(10, None), torch.arange(1, 11))
    for T in (2, 7, 40, 1000):
        assert torch.equal(step_grid(T, T), torch.arange(1, T + 1))
        for n in range(2, min(T, 60) + 1):
            s = step_grid(T, n)
            assert len(s) == n and s[0] == 1 and s[-1] == T and bool((s[1:] > s[:-1]).all())
    assert torch.equal(step_grid(9, 1), torch.tensor([9]))
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ValueError, match="n_steps"):
            step_grid(10, bad)


def test_temporal_basis_and_readout():
    """MATH.md s.7 time basis: g_j(t) normalised over j, peaked at its centre tau_j; z = sum_j y_j g_j(t)."""
    T, J = 100, 10
    G = temporal_basis(T, J)
    assert G.shape == (T, J) and torch.allclose(G.sum(1), torch.ones(T, dtype=torch.float64))
    centres = torch.round(torch.linspace(0, T - 1, J)).long()
    assert torch.equal(G[centres].argmax(1), torch.arange(J))
    y = torch.randn(3, 5, 2 * J)
    times = torch.tensor([1, 50, 100])
    z = temporal_readout(y, G[times - 1], 2)
    for b in range(3):
        for k in range(2):
            ref = (y[b, :, k * J : (k + 1) * J].double() * G[times[b] - 1]).sum(-1)
            assert torch.allclose(z[b, :, k].double(), ref, atol=1e-5)
    assert torch.equal(temporal_basis(5, 1), torch.ones(5, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="basis"):
        temporal_basis(5, 0)
