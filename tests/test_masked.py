"""Absorbing-state masked diffusion (MD4 / MDLM; MATH.md s.10): schedule, per-step KL, L^T and L^inf, end terms,
oracles, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.discrete import MaskedDiffusion
from suite.data.base import DataSpec
from suite.methods import build_method
from tests.helpers.categorical import assert_mc_equal, draw, factorised, mean_se, train_on_cyclic_corpus
from tests.helpers.estimators import stratified_se
from tests.helpers.nets import TinyNet, spec_of


class MarginalOracle(nn.Module):
    """mu = p_data for every masked token: the exact posterior of a masked token for factorised data."""

    def __init__(self, log_p: torch.Tensor):
        super().__init__()
        self.register_buffer("log_p", log_p.float())

    def forward(self, h, t):
        return self.log_p.expand(*h.shape[:-1], self.log_p.numel()).clone()


class CopyOracle(nn.Module):
    """Copy data (every token equal to c ~ p): the exact posterior of a masked token is e_c once any token is
    visible, else p."""

    def __init__(self, log_p: torch.Tensor):
        super().__init__()
        self.register_buffer("log_p", log_p.float())

    def forward(self, h, t):
        K = self.log_p.numel()
        seen = h[..., :K].sum(1)  # (B, K): counts of visible tokens
        any_seen = seen.sum(-1, keepdim=True) > 0
        logits = torch.where(any_seen, (seen > 0).float().log().clamp_min(-1e4), self.log_p)  # -1e4: "log 0"
        return logits[:, None, :].expand(*h.shape[:-1], K).clone()


# ---- schedule and validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("a0, a1", [(1.0, 0.0), (0.9, 0.2)])
def test_schedule(schedule, a0, a1):
    """alpha(0) = alpha0, alpha(1) = alpha1, 1 - alpha consistent, alpha' = d alpha/dt (central differences,
    float64); linear: weight -alpha'/(1 - alpha) = 1/t (MATH.md s.10); cosine alpha = 1 - cos(pi/2 (1 - t)) (MD4)."""
    m = MaskedDiffusion(spec_of(3), TinyNet((6,), 4, 3), schedule=schedule, alpha0=a0, alpha1=a1)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    a, one_m_a, da = m.alpha(t)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a + one_m_a, torch.ones_like(a))
    h = 1e-6
    torch.testing.assert_close(da, (m.alpha(t + h)[0] - m.alpha(t - h)[0]) / (2 * h), rtol=1e-6, atol=1e-8)
    ends = m.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))[0]
    torch.testing.assert_close(ends, torch.tensor([a0, a1], dtype=torch.float64))
    if schedule == "linear" and a0 == 1.0:
        torch.testing.assert_close(-da / one_m_a, 1 / t)
    if schedule == "cosine" and a0 == 1.0:
        torch.testing.assert_close(a, 1 - torch.cos(math.pi / 2 * (1 - t)))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"schedule": "exp"}, "unknown schedule"), ({"alpha0": 1.2}, "alpha1 < alpha0"),
     ({"alpha1": 1.0}, "alpha1 < alpha0"), ({"alpha1": -0.1}, "alpha1 < alpha0"),
     ({"t_sampling": "halton"}, "t_sampling")],
)
def test_bad_hyperparameters(kwargs, match):
    """Bad hyperparameters get a ValueError naming the problem."""
    with pytest.raises(ValueError, match=match):
        MaskedDiffusion(spec_of(3), TinyNet((6,), 4, 3), **kwargs)


def test_bad_input():
    """Wrong data kind, class range (a mask id is not data), n_steps, net output: clear errors."""
    with pytest.raises(ValueError, match="discrete data"):
        build_method("masked_diffusion", DataSpec("roll", "continuous", (2,)), net=TinyNet((2,), 1, 1))
    m = MaskedDiffusion(spec_of(3), TinyNet((6,), 4, 3))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        m.nll(torch.full((2, 6), 3))
    for n in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_steps"):
            m.nll(torch.zeros(2, 6, dtype=torch.long), n_steps=n)
    with pytest.raises(ValueError, match="integer number of steps"):
        m.sample(2, None)
    with pytest.raises(ValueError, match="out_features=3"):
        MaskedDiffusion(spec_of(3), TinyNet((6,), 4, 4)).nll(torch.zeros(2, 6, dtype=torch.long))


@pytest.mark.parametrize("backbone, kwargs, K, shape", [
    ("transformer", {"d_model": 32, "n_layers": 1, "n_heads": 4}, 27, (16,)),
    ("conv", {"channels": 8, "n_blocks": 1}, 2, (1, 8, 8)),
])
def test_registry_builds_on_shared_backbones(backbone, kwargs, K, shape):
    """build_method("masked_diffusion") on suite.nets backbones (K + 1 inputs incl. the mask, K outputs)."""
    m = build_method("masked_diffusion", spec_of(K, shape), backbone=backbone, backbone_kwargs=kwargs)
    x = torch.randint(K, (3, *shape))
    terms = m.full_bound_terms(x, 4)
    assert set(terms) == {"prior", "recon", "diffusion"} and all(v.shape == (3,) for v in terms.values())
    one = m.bound_terms(x, 4)  # one draw of the one-pass estimator, by the same terms
    assert set(one) == {"prior", "recon", "diffusion"} and all(v.shape == (3,) for v in one.values())
    assert torch.isfinite(m.nll(x)).all() and m.sample(2, 3).shape == (2, *shape)


# ---- per-step KL ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, a0, a1, n", [("linear", 1.0, 0.0, 5), ("cosine", 0.9, 0.2, 3)])
def test_step_kl_is_bayes_brute_force(schedule, a0, a1, n):
    """KL(q(z_s|z_t, x) || p(z_s|z_t)) over the K + 1 states, with q(z_s|z_t, x) from Bayes' rule on the
    absorbing kernels (matrices, test-only) and p the SUBS reverse kernel, equals the derived per-token weight
    (alpha_s - alpha_t)/(1 - alpha_t) * -ln mu[x] for a masked z_t, and 0 for an unmasked one (MATH.md s.10)."""
    K = 4
    m = MaskedDiffusion(spec_of(K, (1,)), TinyNet((1,), K + 1, K), schedule=schedule, alpha0=a0, alpha1=a1)
    mu = torch.softmax(torch.randn(K, dtype=torch.float64), 0)
    M = K  # mask index

    def absorb(keep: float) -> torch.Tensor:  # Q[i, j] = q(next = j | prev = i)
        Q = keep * torch.eye(K + 1, dtype=torch.float64)
        Q[:, M] += 1 - keep
        Q[M, M] = 1.0
        return Q

    for j in range(1, n + 1):
        t, s = torch.tensor([j / n], dtype=torch.float64), torch.tensor([(j - 1) / n], dtype=torch.float64)
        a_t, a_s = m.alpha(t)[0].item(), m.alpha(s)[0].item()
        Q0s, Qst = absorb(a_s), absorb(a_t / a_s)  # q(z_s | x), q(z_t | z_s)
        torch.testing.assert_close(Q0s @ Qst, absorb(a_t))  # kernels compose
        _, w = m.step_weight(torch.tensor([j]), n)
        for x in range(K):
            zt = M
            post = Q0s[x] * Qst[:, zt] / (Q0s[x] @ Qst[:, zt])
            rev = torch.zeros(K + 1, dtype=torch.float64)
            rev[:K] = (a_s - a_t) / (1 - a_t) * mu
            rev[M] = (1 - a_s) / (1 - a_t)
            nz = post > 0
            kl = (post[nz] * (post[nz] / rev[nz]).log()).sum()
            torch.testing.assert_close(kl, w[0] * -mu[x].log())
            if a_t > 0:  # z_t = x visible: z_s = x surely, as the reverse kernel carries it over
                post_vis = Q0s[x] * Qst[:, x] / (Q0s[x] @ Qst[:, x])
                torch.testing.assert_close(post_vis, torch.eye(K + 1, dtype=torch.float64)[x])


@pytest.mark.parametrize("j", [1, 3, 6])
def test_step_term_matches_forward_chain_monte_carlo(j):
    """E_{z_t} term_j = E_{z_s ~ q(.|x), z_t ~ q(.|z_s)}[ln q(z_s|z_t, x) - ln p(z_s|z_t)]: per token the log
    ratio is -ln mu[x] if z_s = x and z_t = mask, else 0 (the weight (alpha_s - alpha_t)/(1 - alpha_t) is NOT used:
    it comes out of the simulated chain)."""
    K, D, N, n = 5, 6, 100_000, 6
    torch.manual_seed(0)
    m = MaskedDiffusion(spec_of(K, (D,)), TinyNet((D,), K + 1, K), schedule="cosine")
    x = torch.randint(K, (N, D), generator=torch.Generator().manual_seed(1))
    jj, gen = torch.full((N,), j), torch.Generator().manual_seed(2)
    with torch.no_grad():
        analytic = m.step_term(x, jj, n, gen)
        t, s = jj.double() / n, (jj - 1).double() / n
        a_t, a_s = m.alpha(t)[0], m.alpha(s)[0]
        zs = m.q_sample(x, 1 - a_s, gen)
        zt = m.q_sample(zs, 1 - a_t / a_s, gen)  # forward step s -> t masks each visible token w.p. 1 - a_t/a_s
        nll = -m.log_mu(zt, t).gather(-1, x.unsqueeze(-1)).squeeze(-1).double()
        mc = torch.where((zt == m.mask_id) & (zs == x), nll, torch.zeros_like(nll)).sum(1)
    (m1, s1), (m2, s2) = mean_se(analytic), mean_se(mc)
    assert abs(m1 - m2) <= 5 * math.hypot(s1, s2), (m1, m2, s1, s2)
    assert 5 * math.hypot(s1, s2) < 0.05 * m1  # resolving power: a 5 % error in the weight would fail


# ---- the bound ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, t_sampling", [(8, "iid"), (5, "stratified")])
def test_full_bound_equals_single_t_estimator_in_expectation(n, t_sampling):
    """sum_j E[term_j] + end terms = E_j[n term_j] + end terms, j ~ U{1..n}: the term-by-term L^n (n passes) and
    the one-pass estimator agree in expectation (MATH.md s.10), with both end terms present (alpha0 < 1, alpha1 > 0)."""
    torch.manual_seed(0)
    K, D, N = 5, 6, 65536
    m = MaskedDiffusion(spec_of(K, (D,)), TinyNet((D,), K + 1, K), alpha0=0.95, alpha1=0.05, t_sampling=t_sampling)
    x = torch.randint(K, (4, D)).repeat(N // 4, 1)
    with torch.no_grad():
        full = sum(m.full_bound_terms(x[: N // 8], n, generator=torch.Generator().manual_seed(1)).values())
        single = m.nll(x, n, generator=torch.Generator().manual_seed(2))
    (m1, s1), (m2, s2) = mean_se(full), mean_se(single)
    if t_sampling == "stratified":
        j = m.sample_steps(N, n, generator=torch.Generator().manual_seed(2))  # nll's first draw
        counts = torch.bincount(j, minlength=n + 1)[1:]
        assert counts.max() - counts.min() <= 1
        s2 = stratified_se(single, j)
    assert abs(m1 - m2) <= 5 * math.hypot(s1, s2), (m1, m2, s1, s2)
    assert 5 * math.hypot(s1, s2) < 0.03 * m1  # resolving power


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("a0, a1", [(1.0, 0.0), (0.9, 0.3)])
def test_marginal_oracle_bound_equals_data_nll(schedule, a0, a1):
    """Factorised p_data, mu = p_data: L^inf = int -alpha' dt * (-ln p(x)) = (alpha0 - alpha1)(-ln p(x)), and L^n
    the same for every n (its integrand is constant); with the end terms (recon (1 - alpha0)(-ln p(x)), prior
    alpha1 D ln K) E[bound | x] = -ln p(x) + alpha1 sum_i ln(K p(x_i)); = -ln p(x) exactly for alpha0 = 1,
    alpha1 = 0."""
    K, D, N = 4, 5, 20_000
    log_p = factorised(K)
    m = MaskedDiffusion(spec_of(K, (D,)), MarginalOracle(log_p), schedule=schedule, alpha0=a0, alpha1=a1,
                        t_sampling="stratified")
    x = draw(log_p, (N, D))
    target = -log_p[x].sum(1) + a1 * (math.log(K) + log_p[x]).sum(1)
    for n in (None, 1, 4):
        assert_mc_equal(m.nll(x, n, generator=torch.Generator().manual_seed(7)), target)
    assert_mc_equal(sum(m.full_bound_terms(x[:4000], 3, generator=torch.Generator().manual_seed(8)).values()), target[:4000])


def copy_data_bound(m: MaskedDiffusion, L: int, n: int) -> float:
    """E[L^n] / (-ln p(c)) for copy data under the exact-posterior oracle (alpha0 = 1, alpha1 = 0):
    only the all-masked event costs, so term_j = w_j L (1 - alpha_t)^L, w_j = (alpha_s - alpha_t)/(1 - alpha_t)."""
    j = torch.arange(1, n + 1)
    t, w = m.step_weight(j, n)
    return (w * L * m.alpha(t)[1] ** L).sum().item()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_discrete_bound_above_continuous_and_converges(schedule):
    """Copy data (all L tokens equal c ~ p), exact-posterior oracle: L^inf = -ln p(c) in expectation (continuous time
    is tight for the exact reverse process; int_0^1 L (1 - alpha)^{L-1} d(-alpha) = 1), while L^n is a right Riemann
    sum of an increasing integrand, L^n >= L^inf, decreasing to it as n grows: MC estimates of L^n (term by term)
    match the closed form (L/n) sum_j (j/n)^{L-1} (linear) for n = 1, 2, 4, 16."""
    K, L, N = 3, 4, 20_000
    log_p = factorised(K, slope=1.2)
    m = MaskedDiffusion(spec_of(K, (L,)), CopyOracle(log_p), schedule=schedule, t_sampling="stratified")
    c = draw(log_p, (N,))
    x, nll_c = c[:, None].expand(N, L).contiguous(), -log_p[c]
    cont = m.nll(x, None, generator=torch.Generator().manual_seed(1))
    assert_mc_equal(cont, nll_c)
    closed = [copy_data_bound(m, L, n) for n in (1, 2, 4, 16, 256)]
    assert closed[0] == pytest.approx(L)  # one step decodes every token independently
    assert all(a > b > 1 for a, b in zip(closed, closed[1:], strict=False))
    assert closed[-1] == pytest.approx(1.0, abs=0.02)
    if schedule == "linear":
        assert closed[2] == pytest.approx(sum((j / 4) ** (L - 1) for j in range(1, 5)) * L / 4)
    for n, cf in zip((1, 2, 4, 16), closed[:4], strict=True):
        full = m.step_terms(x[:4000], n, generator=torch.Generator().manual_seed(n)).sum(1)
        assert_mc_equal(full, cf * nll_c[:4000])
        if n <= 4:  # the gap to continuous time is resolved by the estimates themselves
            (m1, s1), (m2, s2) = mean_se(full - nll_c[:4000]), mean_se(cont - nll_c)
            assert m1 - m2 > 5 * math.hypot(s1, s2)


def test_no_nan_at_edges():
    """t -> 0 (weight 1/t ~ 1e12), t = 1, alpha0 < 1 and alpha1 > 0, saturated logits, bf16 autocast: finite
    float32 bound and gradients."""
    K, D = 3, 4

    class Saturated(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(1e4))

        def forward(self, h, t):
            return self.w * (2 * h[..., :K] - 1)

    x = torch.randint(K, (64, D))
    for kw in ({}, {"schedule": "cosine", "alpha0": 0.99, "alpha1": 0.01}):
        m = MaskedDiffusion(spec_of(K, (D,)), Saturated(), **kw)
        t = torch.tensor([1e-12, 1e-6, 0.5, 1.0], dtype=torch.float64).repeat(16)
        v = m.continuous_term(x, t)
        loss = v.mean() + m.loss(x).mean() + m.loss(x, 3).mean()
        loss.backward()
        assert torch.isfinite(v).all() and torch.isfinite(loss) and torch.isfinite(m.net.w.grad)
    m = MaskedDiffusion(spec_of(K, (D,)), TinyNet((D,), K + 1, K))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.nll(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ---- sampling and training ------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"schedule": "cosine", "alpha0": 0.9, "alpha1": 0.2}])
def test_sampling_shapes_range_determinism(kw):
    """sample(num, n): shape (num, *data_shape), values in 0..K-1 (never the mask id K), same seed -> same samples."""
    K, shape = 2, (1, 3, 3)
    m = MaskedDiffusion(spec_of(K, shape), TinyNet(shape, K + 1, K), **kw)
    for n in (1, 7):
        a = m.sample(32, n, generator=torch.Generator().manual_seed(1))
        b = m.sample(32, n, generator=torch.Generator().manual_seed(1))
        c = m.sample(32, n, generator=torch.Generator().manual_seed(2))
        assert a.shape == (32, *shape) and a.dtype == torch.long
        assert int(a.min()) >= 0 and int(a.max()) <= K - 1
        assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("n", [1, 5])
def test_oracle_sampler_reproduces_data(n):
    """With mu = p_data (factorised data) every token is eventually revealed with a value drawn from p_data, for any n:
    sample frequencies equal p_data within 5 binomial s.e. sqrt(p(1 - p)/N)."""
    K, D, N = 4, 5, 4000
    log_p = factorised(K)
    m = MaskedDiffusion(spec_of(K, (D,)), MarginalOracle(log_p), schedule="cosine")
    s = m.sample(N, n, generator=torch.Generator().manual_seed(3)).flatten()
    freq, p = torch.bincount(s, minlength=K).double() / s.numel(), log_p.exp()
    assert ((freq - p).abs() <= 5 * torch.sqrt(p * (1 - p) / s.numel())).all(), (freq, p)


@pytest.mark.parametrize("kw", [{}, {"schedule": "cosine", "alpha0": 0.9, "alpha1": 0.2}])
def test_sampler_mask_rate_follows_forward_marginal(kw):
    """The reverse chain run from the prior p(z_1) has, at every grid time s_j = (j - 1)/n, the forward marginal
    mask rate P(z_s = mask) = 1 - alpha_s (a reveal probability (alpha_s - alpha_t)/(1 - alpha_t) per step telescopes
    (1 - alpha_1) prod (1 - alpha_s)/(1 - alpha_t) = 1 - alpha_s): within 5 binomial s.e."""
    K, D, N, n = 3, 8, 2000, 5
    m = MaskedDiffusion(spec_of(K, (D,)), TinyNet((D,), K + 1, K), **kw)
    gen = torch.Generator().manual_seed(4)
    z = m.prior_sample(N, gen)
    for j in range(n, 0, -1):
        rate = (z == m.mask_id).double().mean().item()
        p = m.alpha(torch.tensor(j / n, dtype=torch.float64))[1].item()
        assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / z.numel()) + 1e-12, (j, rate, p)
        z = m.reverse_step(z, j, n, gen)
    rate, p = (z == m.mask_id).double().mean().item(), 1 - m.alpha0
    assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / z.numel()) + 1e-12


def test_training_improves_bound():
    """A few hundred Adam steps on a tiny corpus (cyclic pattern 0..K-1, random phase: -ln p(x) = ln K) lower the
    continuous-time bound far below the untrained value (about D ln K)."""
    torch.manual_seed(0)
    K, D = 5, 8
    m = MaskedDiffusion(spec_of(K, (D,)), TinyNet((D,), K + 1, K, hidden=128), t_sampling="stratified")
    before, se_b, after, se_a = train_on_cyclic_corpus(m, K, D)
    print(f"masked toy: bound {before:.2f} +- {se_b:.2f} -> {after:.2f} +- {se_a:.2f} nats (-ln p = {math.log(K):.2f})")
    assert after < before - 5 * math.hypot(se_a, se_b)
    assert after < 0.5 * before
