"""Accuracy schedules (MATH.md s.2, s.3, s.5, 95, 182-185) and hyperparameter checks."""

import math

import pytest
import torch

from suite.bfn.schedules import ContinuousSchedule, DiscreteSchedule, from_reference_config

SIGMAS = [1e-6, 1e-3, math.sqrt(1e-3), 0.5]
BETAS = [0.5625, 9.0, 1e4]


def _derivative(f, t):
    t = t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(t).sum(), t)
    return g


@pytest.mark.parametrize("sigma1", SIGMAS)
def test_continuous_alpha_is_dbeta_dt(sigma1):
    """alpha(t) = d beta / dt for beta(t) = sigma1^(-2t) - 1 (MATH.md s.2: beta = int_0^t alpha)."""
    s = ContinuousSchedule(sigma1)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(_derivative(s.beta, t), s.alpha(t), rtol=1e-12, atol=0)
    assert float(s.beta(0.0)) == 0.0


@pytest.mark.parametrize("beta1", BETAS)
def test_discrete_alpha_is_dbeta_dt(beta1):
    """alpha(t) = d beta / dt = 2 beta1 t for beta(t) = beta1 t^2 (MATH.md s.5; paper Eq. 182-183)."""
    s = DiscreteSchedule(beta1)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(_derivative(s.beta, t), s.alpha(t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 10000])
@pytest.mark.parametrize("sched", [ContinuousSchedule(s) for s in SIGMAS] + [DiscreteSchedule(b) for b in BETAS])
def test_nstep_alphas_are_beta_increments_and_sum_to_beta1(sched, n):
    """alpha_i = beta(i/n) - beta((i-1)/n), so sum_i alpha_i = beta(1) (MATH.md s.2, 185)."""
    a = sched.alphas(n)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    torch.testing.assert_close(a, sched.beta(i / n) - sched.beta((i - 1) / n), rtol=1e-9, atol=0)
    torch.testing.assert_close(a.sum(), sched.beta(1.0), rtol=1e-11, atol=0)
    assert bool((a > 0).all())


@pytest.mark.parametrize("sigma1", SIGMAS)
def test_gamma_identities(sigma1):
    """gamma = beta/(1+beta) = 1 - sigma1^(2t); rho = 1 + beta = 1/(1-gamma); input variance sigma1^2 at t = 1
    (MATH.md s.3)."""
    s = ContinuousSchedule(sigma1)
    t = torch.linspace(0, 1, 51, dtype=torch.float64)
    beta, g = s.beta(t), s.gamma(t)
    torch.testing.assert_close(g, beta / (1 + beta), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        s.one_minus_gamma(t), torch.tensor(sigma1, dtype=torch.float64) ** (2 * t), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(s.rho(t), 1 + beta, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.rho(t) * s.one_minus_gamma(t), torch.ones_like(t), rtol=1e-12, atol=0)
    tt = t[1:]
    torch.testing.assert_close(s.noise_ratio(tt) ** 2, s.one_minus_gamma(tt) / s.gamma(tt), rtol=1e-10, atol=0)
    torch.testing.assert_close(1 / s.rho(1.0), torch.tensor(sigma1**2, dtype=torch.float64), rtol=1e-12, atol=0)


def test_gamma_accurate_at_small_t_and_finite_at_edges():
    """gamma(t) ~ -2 ln(sigma1) t as t -> 0 (first-order Taylor of 1 - sigma1^(2t)); no inf/NaN at t = 0, 1."""
    s = ContinuousSchedule(1e-6)
    t = torch.tensor([1e-12, 1e-9], dtype=torch.float64)
    torch.testing.assert_close(s.gamma(t), -2 * math.log(1e-6) * t, rtol=1e-6, atol=0)
    for f in (s.beta, s.alpha, s.gamma, s.rho, s.one_minus_gamma):
        assert torch.isfinite(f(torch.tensor([0.0, 1.0], dtype=torch.float64))).all()


def test_reference_config_names():
    """min_variance = sigma1^2, max_sqrt_beta = sqrt(beta1) (MATH.md s.6)."""
    assert from_reference_config(min_variance=1e-6) == {"sigma1": pytest.approx(1e-3)}
    assert from_reference_config(max_sqrt_beta=0.75) == {"beta1": pytest.approx(0.5625)}
    assert from_reference_config(sigma1=0.1, t_min=1e-6) == {"sigma1": 0.1, "t_min": 1e-6}
    with pytest.raises(ValueError, match="min_variance"):
        from_reference_config(min_variance=2.0)
    with pytest.raises(ValueError, match="unknown reference config name"):
        from_reference_config(beta=3.0)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 2.0, float("nan")])
def test_bad_sigma1_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"sigma1 must lie in \(0, 1\)"):
        ContinuousSchedule(bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_beta1_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="beta1 must be a finite number > 0"):
        DiscreteSchedule(bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_n_steps_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        DiscreteSchedule(1.0).alphas(bad)
