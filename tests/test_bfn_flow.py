"""The Bayesian flow equals n sequential Bayesian updates in distribution (MATH.md s.2: accuracies add;
BFN paper MATH.md s.3 and 186), and the update / sender identities the losses rely on."""

import math

import pytest
import torch
from scipy import stats

from suite.bfn.continuous import ContinuousBFN
from suite.bfn.discrete import DiscreteBFN
from suite.bfn.testing import TinyNet
from suite.data.base import DataSpec

N = 20000  # chains per two-sample test
P_MIN = 1e-3  # fixed seeds: a pass is deterministic; under the null a p-value below this has chance 1e-3


def _continuous(sigma1=0.02):
    spec = DataSpec("pts", "continuous", (3,))
    return ContinuousBFN(spec, TinyNet((3,), 1, 1), sigma1=sigma1)


def _discrete(K=4, beta1=3.0):
    spec = DataSpec("cls", "discrete", (2,), K)
    return DiscreteBFN(spec, TinyNet((2,), K, K), beta1=beta1)


@pytest.mark.parametrize("n, m", [(10, 3), (10, 10), (50, 27)])
def test_continuous_flow_matches_sequential_updates(n, m):
    """After m of n updates with alpha_i (MATH.md s.3), mu ~ N(gamma x, gamma(1-gamma)) and rho = 1/(1-gamma)
    at t = m/n (MATH.md s.3; MATH.md s.3). Two-sample KS per dimension; a wrong time must be rejected."""
    model = _continuous()
    x = torch.tensor([0.7, -0.2, 0.0]).expand(N, 3)
    g = torch.Generator().manual_seed(1)
    state = model.prior(N, "cpu")
    for a in model.schedule.alphas(n)[:m].tolist():
        state = model.update(state, model.sender(x, a, g), a)
    mu_seq, rho_seq = state
    t = torch.full((N,), m / n, dtype=torch.float64)
    assert rho_seq == pytest.approx(float(model.schedule.rho(m / n)), rel=1e-10)
    torch.manual_seed(2)
    mu_flow = model.flow(x, t)
    # negative control: the flow at 3/4 of the accuracy must be told apart
    t_wrong = torch.log1p(0.75 * model.schedule.beta(t)) / (-2 * model.schedule.log_sigma1)
    mu_wrong = model.flow(x, t_wrong)
    for d in range(3):
        assert stats.ks_2samp(mu_seq[:, d], mu_flow[:, d]).pvalue > P_MIN
        assert stats.ks_2samp(mu_seq[:, d], mu_wrong[:, d]).pvalue < 1e-6


@pytest.mark.parametrize("n, m", [(10, 4), (10, 10), (40, 17)])
def test_discrete_flow_matches_sequential_updates(n, m):
    """After m of n updates theta' prop. to e^y theta with y ~ N(alpha_i (K e_x - 1), alpha_i K I) (MATH.md s.5),
    theta ~ softmax(N(beta (K e_x - 1), beta K I)) at t = m/n (MATH.md s.5; MATH.md s.5). KS on each theta_k."""
    model = _discrete()
    x = torch.tensor([1, 3]).expand(N, 2)
    g = torch.Generator().manual_seed(3)
    z = model.prior(N, "cpu")
    for a in model.schedule.alphas(n)[:m].tolist():
        z = model.update(z, model.sender(x, a, g), a)
    th_seq = torch.softmax(z, -1)
    t = torch.full((N,), m / n, dtype=torch.float64)
    torch.manual_seed(4)
    th_flow = torch.softmax(model.flow(x, t), -1)
    th_wrong = torch.softmax(model.flow(x, t * math.sqrt(0.75)), -1)  # 3/4 of the accuracy: negative control
    for d in range(2):
        for k in range(model.K):
            assert stats.ks_2samp(th_seq[:, d, k], th_flow[:, d, k]).pvalue > P_MIN
        assert stats.ks_2samp(th_seq[:, d, x[0, d]], th_wrong[:, d, x[0, d]]).pvalue < 1e-6


def test_continuous_update_is_the_gaussian_posterior():
    """h(theta, y, alpha): N(mu, 1/rho) prior x N(y | x, 1/alpha) likelihood -> N(mu', 1/rho') (MATH.md s.3),
    checked against the posterior computed by completing the square numerically on a grid."""
    model = _continuous()
    mu, rho, y, a = 0.3, 2.5, -0.4, 7.0
    mu2, rho2 = model.update((torch.tensor([mu]), rho), torch.tensor([y]), a)
    xs = torch.linspace(-4, 4, 200001, dtype=torch.float64)
    logpost = -0.5 * rho * (xs - mu) ** 2 - 0.5 * a * (y - xs) ** 2
    w = torch.softmax(logpost, 0)
    mean = (w * xs).sum()
    var = (w * (xs - mean) ** 2).sum()
    assert float(mu2) == pytest.approx(float(mean), abs=1e-8)
    assert rho2 == pytest.approx(1 / float(var), rel=1e-6)


def test_discrete_sender_logpdf_is_c_plus_y_k():
    """ln N(y | alpha (K e_k - 1), alpha K I) = c(y, alpha) + y_k with
    c = -(K/2) ln(2 pi alpha K) - ||y + alpha 1||^2/(2 alpha K) + alpha - alpha K/2, free of k (MATH.md s.2)."""
    torch.manual_seed(0)
    for K, alpha in [(2, 0.3), (5, 1.7), (27, 0.01)]:
        y = torch.randn(K, dtype=torch.float64) * 3
        c = (-(K / 2) * math.log(2 * math.pi * alpha * K) - ((y + alpha) ** 2).sum() / (2 * alpha * K)
             + alpha - alpha * K / 2)  # fmt: skip
        for k in range(K):
            mean = alpha * (K * torch.nn.functional.one_hot(torch.tensor(k), K).double() - 1)
            mvn = torch.distributions.MultivariateNormal(mean, alpha * K * torch.eye(K, dtype=torch.float64))
            assert float(mvn.log_prob(y)) == pytest.approx(float(c + y[k]), rel=1e-12, abs=1e-10)


def test_discrete_update_is_bayes_rule():
    """theta'_k prop. to p_S(y | k) theta_k = e^(c + y_k) theta_k prop. to e^(y_k) theta_k (MATH.md s.5; MATH.md s.2),
    against Bayes' rule with the multivariate-normal densities (float64)."""
    model = _discrete(K=5)
    torch.manual_seed(1)
    z = torch.randn(5, dtype=torch.float64)
    theta = torch.softmax(z, 0)
    y, a, K = torch.randn(5, dtype=torch.float64) * 2, 0.8, 5
    lik = torch.stack([
        torch.distributions.MultivariateNormal(a * (K * torch.eye(K, dtype=torch.float64)[k] - 1),
                                               a * K * torch.eye(K, dtype=torch.float64)).log_prob(y).exp()
        for k in range(K)
    ])  # fmt: skip
    bayes = lik * theta / (lik * theta).sum()
    torch.testing.assert_close(torch.softmax(model.update(z, y, a), 0), bayes, rtol=1e-10, atol=0)
