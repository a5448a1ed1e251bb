"""Multinomial diffusion (Hoogeboom et al. 2021; MATH.md s.10): kernels, posterior, KLs, bound, oracle, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.discrete import MultinomialDiffusion, multinomial_betas
from suite.data.base import DataSpec
from suite.methods import build_method
from tests.helpers.categorical import assert_mc_equal, draw, factorised, mean_se, train_on_cyclic_corpus
from tests.helpers.estimators import stratified_se
from tests.helpers.nets import TinyNet, spec_of


class DataOracle(nn.Module):
    """x0_hat = p_data, whatever x_t: for factorised data this makes every reverse step exact (see module doc)."""

    def __init__(self, log_p: torch.Tensor):
        super().__init__()
        self.register_buffer("log_p", log_p)

    def forward(self, h, t):
        return self.log_p.expand(h.shape).clone()


class PosteriorMeanOracle(nn.Module):
    """x0_hat = q(x_0 | x_t) ∝ p_data(x_0) q(x_t | x_0), the exact posterior mean of x_0 given x_t."""

    def __init__(self, log_p: torch.Tensor, betas: torch.Tensor):
        super().__init__()
        self.register_buffer("log_p", log_p)
        self.register_buffer("abar", torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)]))

    def forward(self, h, t):
        K, T = h.shape[-1], self.abar.numel() - 1
        abar = self.abar[torch.round(t.double() * T).long()].reshape(-1, *([1] * (h.dim() - 1)))
        return self.log_p + torch.log(abar * h.double() + (1 - abar) / K).float()


# ---- schedules and validation ---------------------------------------------------------------------------


def test_schedules():
    """Linear: abar_t = 1 - t/T exactly (beta_t = 1/(T - t + 1)); cosine: abar_t = f(t)/f(0) (Hoogeboom Eq. 12 /
    Nichol & Dhariwal), both float64 with beta in (0, 1]."""
    T = 50
    lin = multinomial_betas(T, "linear")
    assert lin.dtype == torch.float64
    torch.testing.assert_close(torch.cumprod(1 - lin, 0), 1 - torch.arange(1, T + 1, dtype=torch.float64) / T)
    cos = multinomial_betas(T, "cosine")
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(torch.cumprod(1 - cos, 0)[:-1], (f / f[0])[1:-1])  # last beta is clipped to 0.999
    assert (cos > 0).all() and (cos <= 0.999).all()
    m = MultinomialDiffusion(spec_of(3), TinyNet((6,), 3, 3), T=T)
    assert torch.equal(m.grid(T).tau, torch.arange(T + 1))
    for n in (1, 7, 33, 49):  # sub-grids: tau_j = round(j T / n), 0 = tau_0 < ... < tau_n = T
        tau = m.grid(n).tau
        assert tau[0] == 0 and tau[-1] == T and (tau.diff() > 0).all()
        assert ((tau - torch.arange(n + 1) * T / n).abs() <= 0.5).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"T": 0}, "T must be"), ({"schedule": "quadratic"}, "unknown schedule"), ({"betas": [0.1, 1.5]}, r"\(0, 1\]"),
     ({"betas": [0.0, 0.5]}, r"\(0, 1\]"), ({"t_sampling": "sobol"}, "t_sampling")],
)
def test_bad_hyperparameters(kwargs, match):
    """Bad hyperparameters get a ValueError naming the problem."""
    with pytest.raises(ValueError, match=match):
        MultinomialDiffusion(spec_of(3), TinyNet((6,), 3, 3), **kwargs)


def test_bad_input():
    """Wrong data kind, dtype, class range, shape, n_steps, or a net with the wrong output: clear errors."""
    with pytest.raises(ValueError, match="discrete data"):
        build_method("multinomial_diffusion", DataSpec("img", "discretised", (4,), 16), net=TinyNet((4,), 16, 16))
    m = MultinomialDiffusion(spec_of(3), TinyNet((6,), 3, 3), T=10)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        m.nll(torch.full((2, 6), 3))
    with pytest.raises(TypeError, match="integer tensor"):
        m.nll(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="batch shape"):
        m.nll(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="finer grid"):
        m.nll(torch.zeros(2, 6, dtype=torch.long), n_steps=11)
    bad = MultinomialDiffusion(spec_of(3), TinyNet((6,), 3, 4), T=10)
    with pytest.raises(ValueError, match="out_features=3"):
        bad.nll(torch.zeros(2, 6, dtype=torch.long))


@pytest.mark.parametrize("backbone, kwargs, K, shape", [
    ("transformer", {"d_model": 32, "n_layers": 1, "n_heads": 4}, 27, (16,)),
    ("conv", {"channels": 8, "n_blocks": 1}, 2, (1, 8, 8)),
])
def test_registry_builds_on_shared_backbones(backbone, kwargs, K, shape):
    """build_method("multinomial_diffusion") on suite.nets backbones: text (K = 27) and binarised images (K = 2)."""
    m = build_method("multinomial_diffusion", spec_of(K, shape), backbone=backbone, backbone_kwargs=kwargs, T=20)
    x = torch.randint(K, (3, *shape))
    terms = m.full_bound_terms(x, 4)
    assert set(terms) == {"prior", "decoder", "diffusion"} and all(v.shape == (3,) for v in terms.values())
    one = m.bound_terms(x, 4)  # one draw of the one-pass estimator, by the same terms
    assert set(one) == {"prior", "decoder", "diffusion"} and all(v.shape == (3,) for v in one.values())
    assert torch.isfinite(m.nll(x)).all() and m.sample(2, 3).shape == (2, *shape)


# ---- kernels, posterior, KLs ----------------------------------------------------------------------------


def kernel_matrix(a: float, K: int) -> torch.Tensor:
    """Test-only K x K uniform kernel Q[i, j] = q(next = j | prev = i) = a delta_ij + (1 - a)/K."""
    return a * torch.eye(K, dtype=torch.float64) + (1 - a) / K


@pytest.mark.parametrize("K, T, n, schedule", [(3, 6, 6, "cosine"), (3, 6, 4, "linear"), (2, 5, 2, "cosine")])
def test_posterior_is_bayes_rule(K, T, n, schedule):
    """theta~(x_t, x_0) = q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0) (Bayes' rule, MATH.md s.10), brute force
    over K with the composed kernel of a sub-grid step built as a product of one-step matrices (not the abar ratio);
    and the x0_hat kernel equals sum_k x0_hat(k) q(x_{t-1}, x_t | x_0 = k), normalised (x_0-parameterisation)."""
    m = MultinomialDiffusion(spec_of(K, (1,)), TinyNet((1,), K, K), T=T, schedule=schedule)
    g = m.grid(n)
    step = [kernel_matrix(1 - b.item(), K) for b in m.betas]
    qbar = [torch.eye(K, dtype=torch.float64)]
    for Q in step:
        qbar.append(qbar[-1] @ Q)
    x0_hat = torch.softmax(torch.randn(K, dtype=torch.float64), 0)
    for j in range(1, n + 1):
        lo, hi = g.tau[j - 1].item(), g.tau[j].item()
        Qj = torch.eye(K, dtype=torch.float64)
        for Q in step[lo:hi]:
            Qj = Qj @ Q
        for x0 in range(K):
            for xt in range(K):
                joint = qbar[lo][x0] * Qj[:, xt]  # q(x_{t-1} = k, x_t | x_0)
                want = joint / joint.sum()
                jj, xt_, x0_ = torch.tensor([j]), torch.tensor([[xt]]), torch.tensor([[x0]])
                got = m.log_posterior(xt_, x0_, g, jj).exp()[0, 0].double()
                torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
            mix = sum(x0_hat[k] * qbar[lo][k] * Qj[:, xt] for k in range(K))
            got = m.log_posterior(xt_, x0_hat.log().float()[None, None], g, jj).exp()[0, 0].double()
            torch.testing.assert_close(got, mix / mix.sum(), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["custom", "cosine", "linear"])
def test_prior_kl_matches_monte_carlo(schedule):
    """Prior KL(q(x_T|x_0) || Cat(1/K)) = E_{x_T ~ q}[ln q(x_T|x_0) + ln K] (closed form against Monte Carlo)."""
    K, N = 4, 200_000
    kw = {"betas": [0.2, 0.3]} if schedule == "custom" else {"T": 3, "schedule": schedule}  # custom: abar_T = 0.56
    m = MultinomialDiffusion(spec_of(K, (1,)), TinyNet((1,), K, K), **kw)
    lab = m.grid(m.T).log_abar[-1]
    x0 = torch.zeros(N, 1, dtype=torch.long)
    xT = m.q_sample(x0, lab.expand(N), torch.Generator().manual_seed(1))
    q = torch.where(xT == x0, lab.exp() + (1 - lab.exp()) / K, (1 - lab.exp()) / K)
    mc = (torch.log(q) + math.log(K)).squeeze(1)
    if schedule == "linear":
        assert m.prior_kl(1).item() == 0.0  # abar_T = 0
    assert_mc_equal(mc, m.prior_kl(1).double().item())
    q_vec = lab.exp() * torch.eye(K, dtype=torch.float64)[0] + (1 - lab.exp()) / K  # enumeration over K
    torch.testing.assert_close(m.prior_kl(1).double(), (q_vec * torch.log(q_vec * K)).sum()[None], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("K, n", [(3, 8), (2, 3)])
def test_step_kl_matches_forward_chain_monte_carlo(K, n):
    """E_{x_t} KL(theta~(x_t, x_0) || p(x_{t-1}|x_t)) = E_{x_{t-1} ~ q(.|x_0), x_t ~ q(.|x_{t-1})}
    [ln q(x_{t-1}|x_t, x_0) - ln p(x_{t-1}|x_t)]: the analytic KL term against a simulated forward chain, with
    q(x_{t-1}|x_t, x_0) from scalar kernel values (Bayes) rather than the model's posterior code."""
    torch.manual_seed(0)
    D, N = 4, 200_000
    m = MultinomialDiffusion(spec_of(K, (D,)), TinyNet((D,), K, K), T=8, schedule="cosine")
    g = m.grid(n)
    x0 = torch.randint(K, (N, D), generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(5)
    for j in (2, n):
        jj = torch.full((N,), j)
        with torch.no_grad():
            analytic = m.step_term(x0, jj, n, gen)
            abar_prev, a = g.log_abar[j - 1].exp(), g.log_a[j].exp()
            x_prev = m.q_sample(x0, g.log_abar[jj - 1], gen)
            x_t = m.q_sample(x_prev, g.log_a[jj], gen)  # one composed forward step
            k_t = torch.where(x_t == x_prev, a + (1 - a) / K, (1 - a) / K)
            k_prev = torch.where(x_prev == x0, abar_prev + (1 - abar_prev) / K, (1 - abar_prev) / K)
            abar_t = abar_prev * a
            k_0 = torch.where(x_t == x0, abar_t + (1 - abar_t) / K, (1 - abar_t) / K)
            log_q = torch.log(k_t * k_prev / k_0)
            log_p = m.log_posterior(x_t, m.x0_logits(x_t, g.tau[jj].double() / m.T), g, jj)
            mc = (log_q - log_p.gather(-1, x_prev.unsqueeze(-1)).squeeze(-1).double()).sum(1)
        m1, s1 = mean_se(analytic)
        m2, s2 = mean_se(mc)
        assert abs(m1 - m2) <= 5 * math.hypot(s1, s2), (j, m1, m2, s1, s2)
        if j == 2:
            assert 5 * math.hypot(s1, s2) < 0.03 * m1  # resolving power: a 3 % error in the KL would fail


# ---- the bound ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, t_sampling", [(8, "iid"), (5, "stratified")])
def test_full_bound_equals_single_t_estimator_in_expectation(n, t_sampling):
    """sum_{j=1..n} E[term_j] + prior = E_j[n term_j] + prior, j ~ U{1..n} (iid or stratified): the term-by-term
    bound (n passes) and the one-pass estimator agree in expectation (MATH.md s.8/s.10 estimators)."""
    torch.manual_seed(0)
    K, D, N = 5, 6, 65536
    m = MultinomialDiffusion(spec_of(K, (D,)), TinyNet((D,), K, K), T=8, t_sampling=t_sampling)
    x = torch.randint(K, (4, D)).repeat(N // 4, 1)
    with torch.no_grad():
        full = sum(m.full_bound_terms(x[: N // 8], n, generator=torch.Generator().manual_seed(1)).values())
        single = m.nll(x, n, generator=torch.Generator().manual_seed(2))
    j = m.sample_steps(N, n, generator=torch.Generator().manual_seed(2))  # the j's nll drew (its first draw)
    (m1, s1), (m2, s2) = mean_se(full), mean_se(single)
    if t_sampling == "stratified":
        counts = torch.bincount(j, minlength=n + 1)[1:]
        assert counts.max() - counts.min() <= 1  # stratified: every step drawn N/n times
        s2 = stratified_se(single, j)
    assert abs(m1 - m2) <= 5 * math.hypot(s1, s2), (m1, m2, s1, s2)
    assert 5 * math.hypot(s1, s2) < 0.03 * m1  # resolving power: a 3 % bias (e.g. weight n + 0.3) would fail


def expected_prior_gap(log_p: torch.Tensor, lab_T: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """E_{q(x_T|x_0)}[ln q(x_T) - ln U(x_T)] per example, q(x_T) = abar_T p_data + (1 - abar_T)/K (float64)."""
    K, abar = log_p.numel(), lab_T.exp()
    q_marg = abar * log_p.exp() + (1 - abar) / K
    q_cond = abar * torch.nn.functional.one_hot(x0, K).double() + (1 - abar) / K
    return (q_cond * torch.log(K * q_marg)).sum(-1).sum(-1)


@pytest.mark.parametrize("K, schedule, n", [(4, "linear", 10), (4, "cosine", 3), (2, "cosine", 10), (3, "linear", 1)])
def test_oracle_bound_equals_data_nll(K, schedule, n):
    """Oracle: factorised p_data and x0_hat = p_data make p(x_{t-1}|x_t) = q(x_{t-1}|x_t) and the decoder
    p(x_0|x_1) ∝ q(x_1|x_0) p_data(x_0) Bayes' q(x_0|x_1), so NELBO(x_0) = -ln p_data(x_0)
    + E_{q(x_T|x_0)} ln[q(x_T)/U(x_T)] exactly in expectation, for every sub-grid n (checks the decoder formula)."""
    D, N = 5, 4096
    log_p = factorised(K)
    m = MultinomialDiffusion(spec_of(K, (D,)), DataOracle(log_p.float()), T=10, schedule=schedule)
    x0 = draw(log_p, (N, D))
    target = -log_p[x0].sum(1) + expected_prior_gap(log_p, m.grid(n).log_abar[-1], x0)
    terms = m.full_bound_terms(x0, n, generator=torch.Generator().manual_seed(1))
    assert_mc_equal(terms["prior"] + terms["decoder"] + terms["diffusion"], target)
    assert_mc_equal(m.nll(x0, n, generator=torch.Generator().manual_seed(2)), target)


def test_posterior_mean_oracle_is_looser_than_data_oracle():
    """With the x_0-parameterisation, plugging the exact posterior mean E[x_0|x_t] into theta~ is NOT the exact
    reverse kernel (theta~ is linear in x0_hat but the true reverse weights x_0 by q(x_0|x_t)/q(x_t|x_0)); its
    bound stays above the entropy, while x0_hat = p_data attains it (previous test)."""
    K, D, N, T = 4, 5, 4096, 10
    log_p = factorised(K)
    x0 = draw(log_p, (N, D))
    m = MultinomialDiffusion(spec_of(K, (D,)), PosteriorMeanOracle(log_p, multinomial_betas(T, "linear")), T=T,
                             schedule="linear")
    terms = m.full_bound_terms(x0, T, generator=torch.Generator().manual_seed(1))
    gap, se = mean_se(terms["prior"] + terms["decoder"] + terms["diffusion"] + log_p[x0].sum(1))
    assert gap > 10 * se and gap > 0.05, (gap, se)


def test_no_nan_at_edges():
    """T = 1, beta_T = 1 (abar_T = 0), saturated logits (+-1e4) and bf16 autocast: finite float32 bound and grads."""
    K, D = 3, 4

    class Saturated(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(1e4))

        def forward(self, h, t):
            return self.w * (2 * h - 1)

    for T, schedule in [(1, "linear"), (1, "cosine"), (4, "linear")]:
        m = MultinomialDiffusion(spec_of(K, (D,)), Saturated(), T=T, schedule=schedule)
        x = torch.randint(K, (64, D))
        for n in range(1, T + 1):
            terms = m.full_bound_terms(x, n)
            assert all(torch.isfinite(v).all() for v in terms.values())
        loss = m.loss(x)
        loss.mean().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(m.net.w.grad)
    m = MultinomialDiffusion(spec_of(K, (D,)), TinyNet((D,), K, K), T=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.nll(torch.randint(K, (8, D)))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ---- sampling and training ------------------------------------------------------------------------------


def test_sampling_shapes_range_determinism():
    """sample(num, n): shape (num, *data_shape), classes in 0..K-1, identical under the same seed (K = 2, 2-D)."""
    K, shape = 2, (1, 3, 3)
    m = MultinomialDiffusion(spec_of(K, shape), TinyNet(shape, K, K), T=20)
    a = m.sample(16, 7, generator=torch.Generator().manual_seed(1))
    b = m.sample(16, 7, generator=torch.Generator().manual_seed(1))
    c = m.sample(16, 7, generator=torch.Generator().manual_seed(2))
    assert a.shape == (16, *shape) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) <= K - 1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kw, n", [({"T": 10, "schedule": "linear"}, 10), ({"T": 10, "schedule": "linear"}, 3),
                                   ({"betas": [0.3, 0.5]}, 2), ({"betas": [0.3, 0.5]}, 1)])
def test_oracle_sampler_is_exact_reverse_chain(kw, n):
    """With x0_hat = p_data each reverse step is the exact time reversal q(x_{t-1}|x_t), on any sub-grid, so samples
    follow p(x_0 = k) = sum_j U(j) q(x_0 = k | x_T = j) = p(k) sum_j U(j) q(j|k)/q(j) (= p_data when abar_T = 0, the
    linear schedule; the custom betas leave abar_T = 0.35 and test the prior draw): within 5 binomial s.e."""
    K, D, N = 4, 5, 4000
    log_p = factorised(K)
    m = MultinomialDiffusion(spec_of(K, (D,)), DataOracle(log_p.float()), **kw)
    s = m.sample(N, n, generator=torch.Generator().manual_seed(3)).flatten()
    abar, p = m.grid(n).log_abar[-1].exp(), log_p.exp()
    q_cond = abar * torch.eye(K, dtype=torch.float64) + (1 - abar) / K  # q(x_T = j | x_0 = k), [k, j]
    want = p * (q_cond / (K * (p @ q_cond))).sum(1)
    freq = torch.bincount(s, minlength=K).double() / s.numel()
    assert ((freq - want).abs() <= 5 * torch.sqrt(want * (1 - want) / s.numel())).all(), (freq, want)
    if "betas" in kw:
        assert ((want - p).abs() > 5 * torch.sqrt(want * (1 - want) / s.numel())).any()  # the prior matters here


def test_training_improves_bound():
    """A few hundred Adam steps on a tiny corpus (cyclic pattern 0..K-1, random phase: -ln p(x) = ln K) lower the
    NELBO far below the untrained value (which is about D ln K)."""
    torch.manual_seed(0)
    K, D, T = 5, 8, 20
    m = MultinomialDiffusion(spec_of(K, (D,)), TinyNet((D,), K, K, hidden=128), T=T)
    before, se_b, after, se_a = train_on_cyclic_corpus(m, K, D)
    print(f"multinomial toy: NELBO {before:.2f} +- {se_b:.2f} -> {after:.2f} +- {se_a:.2f} nats "
          f"(-ln p = {math.log(K):.2f})")
    assert after < before - 5 * math.hypot(se_a, se_b)
    assert after < 0.5 * before
