"""BFN for continuous data (MATH.md s.3; BFN paper Sec. 4): x-hat, the n-step KL, limits, reconstruction."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from suite.bfn.continuous import ContinuousBFN
from suite.bfn.testing import TinyNet
from suite.data.base import DataSpec
from tests.helpers.bfn import (
    assert_edge_losses_finite,
    assert_loss_float32_under_autocast,
    assert_nstep_tends_to_cts,
)


class NoiseOracle(torch.nn.Module):
    """Returns a given eps as the network's noise prediction (shape (B, *shape, 1))."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, h, t):
        return self.eps[..., None] + 0 * self.anchor


class GaussianPosteriorNet(torch.nn.Module):
    """A fixed, well-behaved network: eps-hat of the exact posterior mean E[x | mu] = s^2 mu / (gamma s^2 + 1 - gamma)
    for data N(0, s^2). A random MLP instead makes x-hat ~ eps-hat / sqrt(t) near t = 0, and then L^inf's
    integrand ~ 1/t converges to L^n only logarithmically (the t < 1/n region)."""

    def __init__(self, sigma1, s):
        super().__init__()
        self.sigma1, self.s = sigma1, s
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, h, t):
        g = 1 - self.sigma1 ** (2 * t.double())
        g = g.clamp(min=1e-12).view(-1, *([1] * (h.dim() - 1)))
        x_hat = self.s**2 * h / (g * self.s**2 + 1 - g)
        return ((h / g - x_hat) / torch.sqrt((1 - g) / g)).float() + 0 * self.anchor


def _model(shape=(2,), sigma1=0.02, kind="continuous", K=None, seed=0, **kw):
    return ContinuousBFN(DataSpec("pts", kind, shape, K), TinyNet(shape, 1, 1, seed=seed), sigma1=sigma1, **kw)


def test_x_hat_recovers_x_from_the_true_noise():
    """mu = gamma x + sqrt(gamma(1-gamma)) eps (MATH.md s.3) and x-hat = mu/gamma - sqrt((1-gamma)/gamma) eps-hat
    (MATH.md s.3): with eps-hat = eps, x-hat = x, so L^inf = 0; below t_min x-hat = 0 (MATH.md s.3)."""
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(64, 3, generator=g) * 0.5, torch.randn(64, 3, generator=g)
    spec = DataSpec("pts", "continuous", (3,))
    model = ContinuousBFN(spec, NoiseOracle(eps), sigma1=1e-3, t_min=1e-4)
    t = torch.rand(64, generator=g, dtype=torch.float64) * (1 - 1e-3) + 1e-3
    torch.testing.assert_close(model.x_hat(model.flow(x, t, eps), t), x, rtol=0, atol=2e-5)
    small = torch.full((64,), 5e-5, dtype=torch.float64)
    assert bool((model.x_hat(model.flow(x, small, eps), small) == 0).all())


def test_nstep_kl_closed_form_matches_monte_carlo():
    """KL(N(x, 1/alpha) || N(x-hat, 1/alpha)) = alpha ||x - x-hat||^2 / 2 (MATH.md s.3): n times the closed form
    equals n times a Monte-Carlo mean of ln p_S(y) - ln p_R(y), y ~ p_S, within 5 s.e."""
    model, n = _model(), 20
    g = torch.Generator().manual_seed(1)
    x, noise, i = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g), torch.tensor([1, 3, 8, 12, 19, 20])
    closed = model.loss_nstep(x, i, n, noise).detach().double()
    t = (i.double() - 1) / n
    with torch.no_grad():
        x_hat = model.x_hat(model.flow(x, t, noise), t).double()
    alpha = model.schedule.alpha_i(i, n)[:, None]
    sd = 1 / alpha.sqrt()
    M = 400_000
    y = x.double() + sd * torch.randn(M, 6, 2, generator=g, dtype=torch.float64)
    log_ratio = (
        torch.distributions.Normal(x.double(), sd).log_prob(y) - torch.distributions.Normal(x_hat, sd).log_prob(y)
    ).sum(-1)
    mc, se = n * log_ratio.mean(0), n * log_ratio.std(0) / math.sqrt(M)
    assert bool(((mc - closed).abs() <= 5 * se).all()), (mc, closed, se)


def test_nstep_loss_tends_to_continuous_time_loss():
    """L^n -> L^inf as n grows (MATH.md s.2-3) for a fixed network, on common random numbers (t = u,
    i = floor(u n) + 1, same flow noise): the gap shrinks at least like 1/n from n = 10 and is below
    0.1% of L^inf (+5 s.e.) at n = 10000."""
    spec, N = DataSpec("pts", "continuous", (2,)), 20000
    model = ContinuousBFN(spec, GaussianPosteriorNet(0.05, s=0.8), sigma1=0.05)
    g = torch.Generator().manual_seed(3)
    x, u, fl = (
        torch.randn(N, 2, generator=g),
        torch.rand(N, generator=g, dtype=torch.float64),
        torch.randn(N, 2, generator=g),
    )
    assert_nstep_tends_to_cts(model, x, u, fl)


def test_reconstruction_over_bins_and_as_a_density():
    """L^r = -ln p_O(x | theta; 1), p_O = N(x-hat, sigma_r^2): over the K bins with tails into the end bins
    for discretised data (MATH.md s.3), a Gaussian density otherwise; against scipy for the same theta."""
    g = torch.Generator().manual_seed(4)
    K = 16
    m_img = _model(shape=(3,), sigma1=0.05, kind="discretised", K=K)
    x = (2 * torch.tensor([[0, 7, 15], [3, 3, 12]]) + 1).float() / K - 1
    noise, t = torch.randn(2, 3, generator=g), torch.ones(2, dtype=torch.float64)
    with torch.no_grad():
        x_hat = m_img.x_hat(m_img.flow(x, t, noise), t).double().numpy()
    xs, s = x.double().numpy(), m_img.sigma_r
    lo = np.where(xs < -1 + 1.5 / K, -np.inf, (xs - 1 / K - x_hat) / s)
    hi = np.where(xs > 1 - 1.5 / K, np.inf, (xs + 1 / K - x_hat) / s)
    want = -np.log(stats.norm.cdf(hi) - stats.norm.cdf(lo)).sum(1)
    np.testing.assert_allclose(m_img.recon(x, noise).detach().numpy(), want, rtol=1e-5)

    m_pts = _model(shape=(2,), sigma1=0.1, sigma_r=0.3)
    x = torch.randn(5, 2, generator=g)
    noise, t = torch.randn(5, 2, generator=g), torch.ones(5, dtype=torch.float64)
    with torch.no_grad():
        x_hat = m_pts.x_hat(m_pts.flow(x, t, noise), t).double()
    want = -torch.distributions.Normal(x_hat, 0.3).log_prob(x.double()).sum(1)
    torch.testing.assert_close(m_pts.recon(x, noise).detach().double(), want, rtol=1e-5, atol=1e-5)


def test_x_hat_is_clipped_to_the_data_range():
    """x-hat clipped to [-1, 1] for discretised data (MATH.md s.3), unclipped for continuous data by default."""
    with torch.no_grad():
        img = _model(shape=(4,), kind="discretised", K=256)
        img.net.out.bias.fill_(-50.0)
        pts = _model(shape=(4,))
        pts.net.out.bias.fill_(-50.0)
        t = torch.full((3,), 0.5, dtype=torch.float64)
        mu = torch.zeros(3, 4)
        assert float(img.x_hat(mu, t).max()) == 1.0
        assert float(pts.x_hat(mu, t).max()) > 1.0


def test_no_nan_or_inf_at_edges():
    """t = 0, t = t_min, t = 1, i = 1 and i = n, sigma1 = 1e-6: losses and gradients finite (MATH.md s.3:
    t = 0 always takes the x-hat = 0 branch)."""
    for sigma1 in (1e-6, 1e-3, 0.9):
        for kind, K in (("continuous", None), ("discretised", 256)):
            model = _model(shape=(3,), sigma1=sigma1, kind=kind, K=K)
            x = torch.rand(4, 3) * 2 - 1 if K is None else (2 * torch.randint(0, K, (4, 3)) + 1).float() / K - 1
            t = torch.tensor([0.0, 1e-6, 1.0, 1.0], dtype=torch.float64)
            assert_edge_losses_finite(model, x, t, (sigma1, kind))


def test_losses_are_float32_under_autocast():
    """Network under autocast (bfloat16), loss in float32: equal to the loss of the float32-cast outputs."""
    spec = DataSpec("pts", "continuous", (2,))
    assert_loss_float32_under_autocast(
        lambda net: ContinuousBFN(spec, net), TinyNet((2,), 1, 1), torch.randn(16, 2), lambda m, x, n: m.nll(x, n), 1e-4
    )


def test_bad_inputs_are_clear_errors():
    spec = DataSpec("pts", "continuous", (2,))
    net = TinyNet((2,), 1, 1)
    with pytest.raises(ValueError, match=r"sigma1 must lie in \(0, 1\)"):
        ContinuousBFN(spec, net, sigma1=0.0)
    with pytest.raises(ValueError, match=r"t_min must lie in \[0, 1\)"):
        ContinuousBFN(spec, net, t_min=1.0)
    with pytest.raises(ValueError, match="x_range must be"):
        ContinuousBFN(spec, net, x_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="is discrete: use bfn_discrete"):
        ContinuousBFN(DataSpec("d", "discrete", (2,), 3), net)
    with pytest.raises(TypeError, match="floating-point tensor"):
        ContinuousBFN(spec, net).loss(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        ContinuousBFN(spec, lambda h, t: h)
    assert ContinuousBFN.from_reference_config(spec, net, min_variance=1e-4).sigma1 == pytest.approx(1e-2)
