"""BFN for discrete data (MATH.md s.2, s.5; BFN paper Sec. 6): receivers, the oracle identity, limits, edges."""

import math

import pytest
import torch

from suite.bfn.discrete import DiscreteBFN, factorised_receiver_kl, paper_receiver_kl
from suite.bfn.testing import OraclePosterior, TinyNet, oracle_input
from suite.data.base import DataSpec
from tests.helpers.bfn import (
    assert_edge_losses_finite,
    assert_loss_float32_under_autocast,
    assert_nstep_tends_to_cts,
)

P_DATA = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3]])  # factorised, D = 3, K = 3


def _mvn_logpdf(y, mean, var):
    return -0.5 * (((y - mean) ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)


def test_paper_receiver_matches_the_k_dim_mixture():
    """y_x - LSE_k(y_k + ln p_O(k)) = ln p_S(y | x) - ln sum_k p_O(k) N(y | alpha (K e_k - 1), alpha K I)
    (MATH.md s.5), against the mixture of K-dim Gaussians evaluated directly (float64)."""
    torch.manual_seed(0)
    for K, alpha in [(2, 0.5), (3, 2.0), (27, 0.05), (5, 40.0)]:
        B = 50
        log_p = torch.log_softmax(torch.randn(B, K, dtype=torch.float64) * 2, -1)
        x, eps = torch.randint(0, K, (B,)), torch.randn(B, K, dtype=torch.float64)
        a = torch.full((B,), alpha, dtype=torch.float64)
        E = torch.eye(K, dtype=torch.float64)
        y = alpha * (K * E[x] - 1) + math.sqrt(alpha * K) * eps
        log_s = _mvn_logpdf(y, alpha * (K * E[x] - 1), torch.tensor(alpha * K, dtype=torch.float64))
        comp = torch.stack(
            [_mvn_logpdf(y, alpha * (K * E[k] - 1), torch.tensor(alpha * K, dtype=torch.float64)) for k in range(K)], -1
        )
        direct = log_s - torch.logsumexp(comp + log_p, -1)
        torch.testing.assert_close(paper_receiver_kl(log_p, x, eps, a), direct, rtol=1e-9, atol=1e-9)


def test_factorised_receiver_matches_the_product_of_1d_mixtures():
    """ln p_S(y | x) - sum_j ln[p_j N(y_j | alpha(K-1), alpha K) + (1 - p_j) N(y_j | -alpha, alpha K)]
    (MATH.md s.5, the reference code's receiver), against torch.distributions.Normal (float64)."""
    torch.manual_seed(1)
    for K, alpha in [(2, 0.5), (3, 2.0), (27, 0.05), (5, 40.0)]:
        B = 50
        log_p = torch.log_softmax(torch.randn(B, K, dtype=torch.float64) * 3, -1)
        x, eps = torch.randint(0, K, (B,)), torch.randn(B, K, dtype=torch.float64)
        a = torch.full((B,), alpha, dtype=torch.float64)
        E = torch.eye(K, dtype=torch.float64)
        y = alpha * (K * E[x] - 1) + math.sqrt(alpha * K) * eps
        s = math.sqrt(alpha * K)
        log_s = torch.distributions.Normal(alpha * (K * E[x] - 1), s).log_prob(y).sum(-1)
        on = torch.distributions.Normal(torch.tensor(alpha * (K - 1), dtype=torch.float64), s).log_prob(y)
        off = torch.distributions.Normal(torch.tensor(-alpha, dtype=torch.float64), s).log_prob(y)
        mix = torch.logaddexp(log_p + on, torch.log1p(-log_p.exp()) + off).sum(-1)
        torch.testing.assert_close(factorised_receiver_kl(log_p, x, eps, a), log_s - mix, rtol=1e-8, atol=1e-8)


def test_factorised_receiver_is_exact_near_one_hot_outputs():
    """ln(1 - p_j) of the most probable class is summed from the others, so p_O one-hot up to 1e-12 keeps
    full precision (float32; against float64). MATH.md s.5: both receivers agree for one-hot p_O."""
    K, B = 4, 8
    logits = torch.tensor([30.0, 0.0, -2.0, 1.0]).expand(B, K)
    log_p32 = torch.log_softmax(logits, -1)
    x, eps = torch.zeros(B, dtype=torch.long), torch.randn(B, K)
    a = torch.full((B,), 0.7)
    got = factorised_receiver_kl(log_p32, x, eps, a)
    want = factorised_receiver_kl(log_p32.double(), x, eps.double(), a.double())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def _oracle(receiver):
    spec = DataSpec("fact", "discrete", (3,), 3)
    model = DiscreteBFN(spec, OraclePosterior(P_DATA), beta1=3.0, receiver=receiver)
    model.net_input = oracle_input
    return model


def _oracle_bound(model, x, n, seed):
    """One sample per example of L^n + L^r (antithetic sender noise: still unbiased) or L^inf + L^r."""
    g = torch.Generator().manual_seed(seed)
    N = x.shape[0]
    with torch.no_grad():
        if n is None:
            L = model.loss_cts(x, torch.rand(N, generator=g, dtype=torch.float64), torch.randn(N, 3, 3, generator=g))
        else:
            i, fl = torch.randint(1, n + 1, (N,), generator=g), torch.randn(N, 3, 3, generator=g)
            yn = torch.randn(N, 3, 3, generator=g)
            L = 0.5 * (model.loss_nstep(x, i, n, fl, yn) + model.loss_nstep(x, i, n, fl, -yn))
        return (L + model.recon(x, torch.randn(N, 3, 3, generator=g))).double()


@pytest.fixture(scope="module")
def oracle_data():
    g = torch.Generator().manual_seed(7)
    N = 12000
    x = torch.stack([torch.multinomial(P_DATA[d], N, replacement=True, generator=g) for d in range(3)], 1)
    return x, -(P_DATA.double().log()[torch.arange(3), x]).sum(1)


@pytest.mark.parametrize("n", [1, 10, 100, None])
def test_oracle_bound_equals_data_entropy_with_paper_receiver(oracle_data, n):
    """With p_O(k | theta) = p(k | theta) prop. to p_data(k) theta_k, L^n + L^r = -ln p(x) in expectation for
    every n, and L^inf + L^r too (MATH.md s.2 "Exact posterior and oracle identity"; factorised p_data, so
    the per-dimension receiver is the exact predictive). Mean of (bound + ln p(x)) within 4.5 s.e. of 0."""
    x, nlp = oracle_data
    d = _oracle_bound(_oracle("paper"), x, n, seed=11) - nlp
    se = d.std() / math.sqrt(len(d))
    assert abs(float(d.mean())) < 4.5 * float(se), (float(d.mean()), float(se))


@pytest.mark.parametrize("n", [1, 10])
def test_factorised_receiver_is_strictly_looser_than_the_oracle(oracle_data, n):
    """The reference code's product-of-1-D-mixtures receiver is not the sender's marginal, so under the
    oracle its bound exceeds -ln p(x) (MATH.md s.5): paired with the paper receiver on common random
    numbers, the mean excess is > 5 s.e. above 0."""
    x, nlp = oracle_data
    fact = _oracle_bound(_oracle("factorised_1d"), x, n, seed=11)
    paper = _oracle_bound(_oracle("paper"), x, n, seed=11)
    d = fact - paper
    assert float(d.mean()) > 5 * float(d.std() / math.sqrt(len(d)))
    e = fact - nlp
    assert float(e.mean()) > 5 * float(e.std() / math.sqrt(len(e)))


def test_binary_single_channel_equals_the_two_class_formulas():
    """K = 2 as in the reference (MATH.md s.5): input 2 theta_1 - 1 = tanh((z_1 - z_0)/2) and one logit l with
    ln p_O = log_softmax((0, l)), equal to the two-class softmax formulas."""
    model = DiscreteBFN(DataSpec("b", "discrete", (6,), 2), TinyNet((6,), 1, 1), beta1=2.0)
    z, t = torch.randn(5, 6, 2) * 3, torch.rand(5, dtype=torch.float64)
    h = model.net_input(z)
    torch.testing.assert_close(h[..., 0], 2 * torch.softmax(z, -1)[..., 1] - 1, rtol=1e-6, atol=1e-6)
    l = model.net(h, t.float())
    want = torch.log_softmax(torch.cat([torch.zeros_like(l), l], -1), -1)
    torch.testing.assert_close(model.log_output(z, t), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("K", [2, 5])
def test_continuous_time_loss_formula(K):
    """L^inf integrand K beta1 t ||e_x - e-hat||^2 (paper Eq. 205) against the one-hot squared distance computed
    directly from the output probabilities for the same theta."""
    spec = DataSpec("c", "discrete", (4,), K)
    model = DiscreteBFN(spec, TinyNet((4,), 1 if K == 2 else K, 1 if K == 2 else K), beta1=2.0)
    torch.manual_seed(0)
    x, t, noise = torch.randint(0, K, (16, 4)), torch.rand(16, dtype=torch.float64), torch.randn(16, 4, K)
    p = model.log_output(model.flow(x, t, noise), t).exp()
    direct = K * 2.0 * t.float() * ((torch.nn.functional.one_hot(x, K) - p) ** 2).sum((1, 2))
    torch.testing.assert_close(model.loss_cts(x, t, noise), direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("receiver", ["paper", "factorised_1d"])
def test_nstep_loss_tends_to_continuous_time_loss(receiver):
    """L^n -> L^inf as n grows (MATH.md s.2: L^inf = lim L^n; s.5: E KL -> (alpha K/2)||e_x - p_O||^2) for a
    fixed network, on common random numbers (t = u, i = floor(u n) + 1, same flow noise, antithetic y).
    The gap shrinks at least like 1/n from n = 10 and is below 0.1% of L^inf (+5 s.e.) at n = 10000."""
    K, D, N = 4, 3, 4000
    spec = DataSpec("c", "discrete", (D,), K)
    model = DiscreteBFN(spec, TinyNet((D,), K, K, seed=3), beta1=2.0, receiver=receiver)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, K, (N, D), generator=g)
    u, fl, yn = (
        torch.rand(N, generator=g, dtype=torch.float64),
        torch.randn(N, D, K, generator=g),
        torch.randn(N, D, K, generator=g),
    )
    assert_nstep_tends_to_cts(model, x, u, fl, yn)


@pytest.mark.parametrize("receiver", ["paper", "factorised_1d"])
def test_no_nan_or_inf_at_edges(receiver):
    """t = 0 (uniform theta), t = 1, i = 1 and i = n, beta1 = 1e4: losses and gradients finite."""
    for beta1 in (1e-3, 1.0, 1e4):
        for K in (2, 27):
            spec = DataSpec("e", "discrete", (5,), K)
            F = 1 if K == 2 else K
            model = DiscreteBFN(spec, TinyNet((5,), F, F), beta1=beta1, receiver=receiver)
            x = torch.randint(0, K, (4, 5))
            t = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
            assert_edge_losses_finite(model, x, t, (beta1, K))


def test_large_vocabulary_needs_no_k_squared_memory():
    """K = 50,000 classes: loss, both receivers and reconstruction run in O(B D K) memory (the reference's
    B x D x K x K receiver tensor would need 10^10 floats here)."""
    K, D = 50_000, 3
    spec = DataSpec("vocab", "discrete", (D,), K)
    net = OraclePosterior(torch.full((D, K), 1.0 / K))
    for receiver in ("paper", "factorised_1d"):
        model = DiscreteBFN(spec, net, beta1=1.0, receiver=receiver)
        model.net_input = oracle_input
        x = torch.randint(0, K, (2, D))
        with torch.no_grad():
            assert torch.isfinite(model.nll(x, n_steps=5)).all()
            assert torch.isfinite(model.nll(x)).all()


def test_losses_are_float32_under_autocast():
    """The network runs under autocast (bfloat16 here); its outputs are cast up and the loss is computed in
    float32: identical to computing the loss from the float32-cast outputs outside autocast."""
    K = 5
    spec = DataSpec("a", "discrete", (6,), K)
    assert_loss_float32_under_autocast(
        lambda net: DiscreteBFN(spec, net, beta1=1.0), TinyNet((6,), K, K), torch.randint(0, K, (8, 6)),
        lambda m, x, n: m.loss(x, n), 1e-6,
    )  # fmt: skip


def test_bad_inputs_are_clear_errors():
    spec = DataSpec("b", "discrete", (4,), 3)
    net = TinyNet((4,), 3, 3)
    with pytest.raises(ValueError, match="receiver must be 'paper'"):
        DiscreteBFN(spec, net, receiver="reference")
    with pytest.raises(ValueError, match="beta1 must be a finite number > 0"):
        DiscreteBFN(spec, net, beta1=0.0)
    with pytest.raises(ValueError, match="class indices must lie in 0..2"):
        DiscreteBFN(spec, net).loss(torch.tensor([[0, 1, 2, 3]]))
    with pytest.raises(TypeError, match="integer tensor of class indices"):
        DiscreteBFN(spec, net).loss(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="needs a discrete data set"):
        DiscreteBFN(DataSpec("c", "continuous", (4,)), net)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        DiscreteBFN(spec, net).loss(torch.zeros(1, 4, dtype=torch.long), n_steps=0)
    assert DiscreteBFN.from_reference_config(spec, net, max_sqrt_beta=3.0).beta1 == pytest.approx(9.0)
