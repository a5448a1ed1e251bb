"""The bound K of Sohl-Dickstein et al. 2015 Eq. 14 (MATH.md s.7) as assembled by SohlGaussian / SohlBinomial:
against the trajectory ELBO it is derived from, exact enumerated likelihoods, the single-random-step estimator,
the dequantisation bound, sub-grids with composed kernels, edge values and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.sohl2015 import SohlBinomial, SohlGaussian
from baselines.sohl2015.schedules import alpha_bar, step_grid
from baselines.sohl2015.tiny import TinyMLP
from suite.data.base import DataSpec
from suite.methods import build_method

CONT = DataSpec("toy2d", "continuous", (2,))
BIN2 = DataSpec("bits2", "discrete", (2,), 2)



class ConstNet(nn.Module):
    """Returns a constant c for every output: c = 0 makes the reverse kernel the forward kernel (code param)."""

    def __init__(self, out_features: int, c: float = 0.0):
        super().__init__()
        self.out_features, self.c = out_features, c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, h, t):
        return torch.full((*h.shape[:-1], self.out_features), self.c) + 0 * self.dummy


def gaussian(T=6, spec=CONT, net=None, **kw) -> SohlGaussian:
    torch.manual_seed(0)
    J = kw.get("n_basis", 3)
    return SohlGaussian(spec, net or TinyMLP(spec.shape, 1, 2 * J, hidden=16), T=T, **{"n_basis": J, **kw})


def binomial(T=6, spec=BIN2, net=None, **kw) -> SohlBinomial:
    torch.manual_seed(0)
    J = kw.get("n_basis", 3)
    return SohlBinomial(spec, net or TinyMLP(spec.shape, 1, J, hidden=16), T=T, **{"n_basis": J, **kw})


def neg_K(m, x, n_steps=None, full=True, generator=None) -> torch.Tensor:
    """-K in nats (model space): every term but the data-space ones."""
    terms = (m.full_bound_terms if full else m.bound_terms)(x, n_steps, generator=generator)
    return sum(v for k, v in terms.items() if k not in ("log_scale", "dequantisation"))


def per_example_mean_se(v: torch.Tensor, n_rep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v is (n_rep * B,) from x.repeat(n_rep, ...): mean and standard error per distinct example."""
    v = v.view(n_rep, -1).double()
    return v.mean(0), v.std(0) / math.sqrt(n_rep)


def trajectory_elbo(m, y0: torch.Tensor, n_steps, g, kind: str) -> torch.Tensor:
    """Paper Eq. 10-11 estimated directly, independently of Eq. 14's rearrangement: one forward trajectory
    x^{s_1..s_n} ~ q per example (composed kernels),
    ln p(x^T) + sum_i ln p(x^{s_{i-1}}|x^{s_i}) + ln p_fixed(x^0|x^{s_1})
    - sum_i ln q(x^{s_i}|x^{s_{i-1}}). The reverse kernels come from the model; everything else is recomputed here."""
    grid = step_grid(m.T, n_steps)
    ab = alpha_bar(m.betas().detach())[torch.cat([torch.zeros(1, dtype=torch.long), grid])]
    n, N = len(grid), y0.shape[0]
    xs, lq = [y0], torch.zeros(N, dtype=torch.float64)
    for i in range(1, n + 1):
        b = 1 - ab[i] / ab[i - 1]
        if kind == "gauss":
            q = torch.distributions.Normal((1 - b).sqrt() * xs[-1].double(), b.sqrt())
            x = (
                q.sample()
                if g is None
                else q.mean + q.stddev * torch.randn(xs[-1].shape, generator=g, dtype=torch.float64)
            )
        else:
            q = torch.distributions.Bernoulli(probs=xs[-1].double() * (1 - b) + b * m.p1)
            x = torch.bernoulli(q.probs, generator=g)
        lq = lq + q.log_prob(x).sum(1)
        xs.append(x.float())
    if kind == "gauss":
        lp = torch.distributions.Normal(0.0, 1.0).log_prob(xs[-1].double()).sum(1)
        b1 = 1 - ab[1]
        lp = lp + torch.distributions.Normal((1 - b1).sqrt() * xs[1].double(), b1.sqrt()).log_prob(y0.double()).sum(1)
    else:
        lp = (
            torch.distributions.Bernoulli(probs=torch.full_like(xs[-1].double(), m.p1)).log_prob(xs[-1].double()).sum(1)
        )
        b1 = 1 - ab[1]
        lp = lp + torch.distributions.Bernoulli(probs=xs[1].double() * (1 - b1) + b1 * m.p1).log_prob(y0.double()).sum(
            1
        )
    with torch.no_grad():
        for i in range(2, n + 1):
            times = grid[i - 1].expand(N)
            p = m._reverse(xs[i], (1 - ab[i] / ab[i - 1]).expand(N), times)
            if kind == "gauss":
                lp = lp + torch.distributions.Normal(p[0].double(), (0.5 * p[1].double()).exp()).log_prob(
                    xs[i - 1].double()
                ).sum(1)
            else:
                lp = lp + torch.distributions.Bernoulli(logits=p.double()).log_prob(xs[i - 1].double()).sum(1)
    return lp - lq


@pytest.mark.parametrize("n_steps", [None, 4])
@pytest.mark.parametrize("variant", ["code", "paper", "learned"])
def test_gaussian_eq14_equals_trajectory_elbo(variant, n_steps):
    """Eq. 14 (analytic entropies, Gaussian KLs, corrections for non-unit-variance x^0)
    = E_q[ln p(x^{0..T})/q(x^{1..T}|x^0)]
    (Eq. 10-11) per x^0, for the full grid and a 4-step sub-grid of T = 6 with composed kernels; 5 combined s.e."""
    kw = {"reverse_param": "paper"} if variant == "paper" else {"schedule": "learned"} if variant == "learned" else {}
    m = gaussian(beta1=0.2, **kw)  # a large beta1 makes the first-step correction (~0.5 nats here) visible
    if variant == "learned":
        with torch.no_grad():
            m.schedule.coef.copy_(torch.tensor([0.5, -1.0, 0.8]))
    x0 = torch.tensor([[0.0, 0.0], [2.5, -1.0], [-0.3, 0.7]])  # not unit variance: the corrections matter
    R = 8_000
    g = torch.Generator().manual_seed(0)
    y = x0.repeat(R, 1)
    with torch.no_grad():
        k_mean, k_se = per_example_mean_se(-neg_K(m, y, n_steps, generator=g), R)
    e_mean, e_se = per_example_mean_se(trajectory_elbo(m, y, n_steps, g, "gauss"), R)
    assert torch.all((k_mean - e_mean).abs() <= 5 * (k_se**2 + e_se**2).sqrt()), (k_mean, e_mean, k_se, e_se)


@pytest.mark.parametrize("n_steps", [None, 3])
@pytest.mark.parametrize("p1", [0.5, 0.2])
def test_binomial_eq14_equals_trajectory_elbo(p1, n_steps):
    """Eq. 14 with binary entropies, Bernoulli KLs and (p1 != 0.5) the pi corrections = the trajectory ELBO
    (Eq. 10-11) per x^0, on the full grid (T = 6) and a 3-step sub-grid; 5 combined s.e."""
    m = binomial(p1=p1)
    x0 = torch.tensor([[0, 0], [0, 1], [1, 1]])
    R = 20_000
    g = torch.Generator().manual_seed(1)
    y = x0.repeat(R, 1)
    with torch.no_grad():
        k_mean, k_se = per_example_mean_se(-neg_K(m, y, n_steps, generator=g), R)
    e_mean, e_se = per_example_mean_se(trajectory_elbo(m, y.float(), n_steps, g, "bin"), R)
    assert torch.all((k_mean - e_mean).abs() <= 5 * (k_se**2 + e_se**2).sqrt()), (k_mean, e_mean, k_se, e_se)


def enumerated_log_p(m: SohlBinomial, n_steps) -> torch.Tensor:
    """Exact ln p_n(x^0) for all 4 states of D = 2 bits: pi^T R_n ... R_2 F, the n-step model's reverse kernels
    (the network at the grid times) as 4 x 4 matrices and F the fixed first step."""
    grid = step_grid(m.T, n_steps)
    ab = alpha_bar(m.betas())[torch.cat([torch.zeros(1, dtype=torch.long), grid])]
    S = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float32)
    bern = lambda probs: torch.stack([torch.where(S == 1, probs[a], 1 - probs[a]).prod(1) for a in range(4)])  # [a, b]
    dist = torch.tensor([m.p1 ** s.sum() * (1 - m.p1) ** (2 - s.sum()) for s in S], dtype=torch.float64)
    with torch.no_grad():
        for i in range(len(grid), 1, -1):
            logits = m._reverse(S, (1 - ab[i] / ab[i - 1]).expand(4), grid[i - 1].expand(4))
            dist = dist @ bern(torch.sigmoid(logits.double()))
    b1 = (1 - ab[1]).double()
    return (dist @ bern(S.double() * (1 - b1) + b1 * m.p1)).log()


@pytest.mark.parametrize("n_steps", [None, 3, 1])
def test_binomial_bound_below_enumerated_log_likelihood(n_steps):
    """K <= ln p_n(x^0) (Eq. 14 is a lower bound; for n < T on the n-step model with composed kernels, so the sub-grid
    bound is valid), with p_n enumerated exactly over all trajectories of a D = 2, T = 5 model; p_n sums to 1;
    n = 1 is exact (-K = -ln B(x; p1), MATH.md s.7 with abar_T = 0)."""
    m = binomial(T=5)
    with torch.no_grad():  # a sharper reverse kernel so the bound is far from the null model
        for p in m.net.parameters():
            p.mul_(3.0)
    log_p = enumerated_log_p(m, n_steps)
    assert math.isclose(log_p.exp().sum().item(), 1.0, rel_tol=1e-9)
    x0 = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    R = 5_000
    with torch.no_grad():
        k_mean, k_se = per_example_mean_se(
            -neg_K(m, x0.repeat(R, 1), n_steps, generator=torch.Generator().manual_seed(2)), R
        )
    if n_steps == 1:
        assert torch.allclose(k_mean, torch.full_like(k_mean, 2 * math.log(0.5)), atol=1e-5) and torch.all(k_se < 1e-6)
    else:
        assert torch.all(k_mean <= log_p + 5 * k_se), (k_mean, log_p)


def test_binomial_sampler_matches_enumerated_model():
    """sample(n_steps) draws from the same n-step model the bound scores: frequencies of the 4 states of D = 2
    against the enumerated p_n(x) (5 s.e.), on a 3-step sub-grid of T = 5."""
    m = binomial(T=5)
    with torch.no_grad():
        for p in m.net.parameters():
            p.mul_(3.0)
    p_exact = enumerated_log_p(m, 3).exp()
    N = 40_000
    x = m.sample(N, 3, torch.Generator().manual_seed(3))
    freq = torch.stack([((x[:, 0] == a) & (x[:, 1] == b)).double().mean() for a in (0, 1) for b in (0, 1)])
    se = (p_exact * (1 - p_exact) / N).sqrt()
    assert torch.all((freq - p_exact).abs() <= 5 * se), (freq, p_exact)


@pytest.mark.parametrize("m_factory", [gaussian, binomial])
def test_single_step_estimator_is_unbiased_for_full_bound(m_factory):
    """E_i[(n - 1) KL_i] + fixed terms = sum_{i=2..n} KL_i + fixed terms (the single-random-t estimator of the public
    code, one t per example, vs the term-by-term bound with n - 1 network passes); 5 combined s.e."""
    m = m_factory(T=8)
    x0 = torch.tensor([[0.4, -1.2], [1.5, 0.2]]) if m_factory is gaussian else torch.tensor([[0, 1], [1, 1]])
    R = 20_000
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        single = m.bound_terms(x0.repeat(R, 1), generator=g)
        full = m.full_bound_terms(x0.repeat(R, 1), generator=g)
    for k in single:
        if k != "kl":  # the fixed terms are closed forms of x^0
            assert torch.equal(single[k], full[k]), k
    s_mean, s_se = per_example_mean_se(single["kl"], R)
    f_mean, f_se = per_example_mean_se(full["kl"], R)
    assert torch.all((s_mean - f_mean).abs() <= 5 * (s_se**2 + f_se**2).sqrt()), (s_mean, f_mean)
    assert torch.all(s_se > f_se)  # one pass instead of n - 1: noisier, as it should be


def test_gaussian_one_step_bound_is_the_isotropic_gaussian():
    """n = 1 (one jump 0 -> T, fixed to the forward reversal): Eq. 14 with both corrections is exactly
    -ln N(y; 0, I) per example, whatever the data's variance (MATH.md s.7 entropies + corrections, derived)."""
    m = gaussian(T=6)
    y = torch.tensor([[0.0, 0.0], [3.0, -2.0], [0.1, 5.0]])
    with torch.no_grad():
        nk = neg_K(m, y, 1)
    ref = -torch.distributions.Normal(0.0, 1.0).log_prob(y.double()).sum(1)
    assert torch.allclose(nk.double(), ref, atol=1e-5)


@pytest.mark.parametrize("n_steps", [None, 3])
def test_null_readout_gaussian_bound_is_tight_at_the_null_model(n_steps):
    """With the readout at zero (code param) every reverse step is the forward kernel, its own reversal under
    pi = N(0, I): p(x^{0..T}) is the forward chain started at pi, so p(x^0) = N(0, I) (the null model) and
    p(x^{1..T}|x^0) = q(x^{1..T}|x^0): Eq. 14 is tight, E[K] = L_null, K - L_null = 0 for every x^0, also on
    data far from unit variance (the corrections of MATH.md s.7 make this exact); 5 s.e."""
    m = gaussian(T=10, net=ConstNet(6))
    x0 = torch.tensor([[0.0, 0.0], [2.0, -2.0], [0.5, 1.0]])
    R = 5_000
    with torch.no_grad():
        r = m.report(x0.repeat(R, 1), n_steps, full=True, generator=torch.Generator().manual_seed(5))
    d_mean, d_se = per_example_mean_se(r["K_minus_L_null_bits"], R)
    assert torch.all(d_mean.abs() <= 5 * d_se + 1e-6), (d_mean, d_se)
    assert torch.all(d_se > 0)  # the KL terms are random, not identically zero


def test_discretised_nll_bounds_bin_probability():
    """Uniform dequantisation (module doc of gaussian.py): E_u[nll] = E_u[-ln p_x(x + u)] - D ln(2/K) >= -ln P(bin)
    (Jensen), with the data scaling's Jacobian D ln(data_scale). With the readout at zero and n = 1, p_y = N(0, 1)
    exactly, so E_u[nll] equals the quadrature of the right-hand side; for n = T it is larger still."""
    K, shift, scale = 16, 0.1, 0.5
    spec = DataSpec("img1", "discretised", (1,), K)
    m = gaussian(T=8, spec=spec, net=ConstNet(6), data_shift=shift, data_scale=scale)
    centres = torch.tensor([-1 + 1 / K, -1 + 7 / K, 1 - 1 / K])
    N = 40_000
    x = centres.repeat(N)[:, None]
    with torch.no_grad():
        one, one_se = per_example_mean_se(m.nll(x, 1, generator=torch.Generator().manual_seed(6)), N)
        full, full_se = per_example_mean_se(m.full_bound(x, None, generator=torch.Generator().manual_seed(7)), N)
    normal = torch.distributions.Normal(0.0, 1.0)
    for j, c in enumerate(centres.double()):
        v = torch.linspace(c - 1 / K, c + 1 / K, 20_001, dtype=torch.float64)
        neg_log_px = -(normal.log_prob((v - shift) / scale) - math.log(scale))
        quad = torch.trapezoid(neg_log_px, v) * K / 2 - math.log(2 / K)
        p_bin = normal.cdf((c + 1 / K - shift) / scale) - normal.cdf((c - 1 / K - shift) / scale)
        assert abs(one[j] - quad) <= 5 * one_se[j] + 1e-4, (one[j], quad)
        assert quad >= -p_bin.log() - 1e-9
        assert full[j] + 5 * full_se[j] >= -p_bin.log()


def test_subgrid_with_all_steps_is_the_full_bound():
    """n_steps = T builds the grid 1..T from the sub-grid formula and gives the same bound as n_steps = None,
    draw for draw (same generator seed): composed kernels with consecutive times are the single-step kernels."""
    for m, x in ((gaussian(T=7), torch.randn(5, 2)), (binomial(T=7), torch.randint(0, 2, (5, 2)))):
        with torch.no_grad():
            for full in (False, True):
                terms = m.full_bound_terms if full else m.bound_terms
                a = terms(x, 7, generator=torch.Generator().manual_seed(8))
                b = terms(x, None, generator=torch.Generator().manual_seed(8))
                assert all(torch.equal(a[k], b[k]) for k in a)


def test_nll_reproducible_under_seed_and_terms_sum():
    """nll is one Monte-Carlo sample: the same generator seed gives the same value, another seed another;
    nll = the sum of bound_terms; loss = nll (the training objective is the single-step estimate of -K)."""
    m = gaussian(T=10)
    x = torch.randn(6, 2)
    with torch.no_grad():
        a = m.nll(x, generator=torch.Generator().manual_seed(9))
        b = m.nll(x, generator=torch.Generator().manual_seed(9))
        c = m.nll(x, generator=torch.Generator().manual_seed(10))
        terms = m.bound_terms(x, generator=torch.Generator().manual_seed(9))
        lo = m.loss(x, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(sum(terms.values()), a) and torch.equal(lo, a)


def test_edge_values_finite_and_float32_under_autocast():
    """No NaN/inf: discretised data at the extreme bin centres, tiny beta1, T = 1 and 2, saturated network outputs
    (+-1e4), binary data all 0 / all 1 with p1 far from 0.5; losses float32 under bf16 autocast, gradients finite."""
    K = 256
    spec = DataSpec("img", "discretised", (2, 3), K)
    x = torch.tensor([[[-1 + 1 / K, 1 - 1 / K, 0.0]] * 2] * 2)
    for T in (1, 2, 50):
        for c in (0.0, 1e4, -1e4):
            m = gaussian(T=T, spec=spec, net=ConstNet(6, c), beta1=1e-9)
            for n in (None, 1, T):
                for full in (False, True):
                    v = m.full_bound(x, n) if full else m.nll(x, n)
                    assert torch.isfinite(v).all(), (T, c, n, full)
            bits = torch.tensor([[0, 0], [1, 1]])
            mb = binomial(T=T, net=ConstNet(3, c), p1=0.01)
            assert torch.isfinite(mb.full_bound(bits)).all()
    m = gaussian(T=20, spec=spec, net=TinyMLP(spec.shape, 1, 6), schedule="learned")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo = m.loss(x)
    assert lo.dtype == torch.float32 and torch.isfinite(lo).all()
    lo.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_bad_input_errors_name_the_problem():
    """Hyperparameters and batches that cannot work raise errors that say what is wrong and what to do."""
    net = TinyMLP((2,), 1, 6)
    cases = [
        (lambda: SohlGaussian(CONT, net, T=0), "T must be an integer >= 1"),
        (lambda: SohlGaussian(CONT, net, T=2.5), "T must be an integer >= 1"),
        (lambda: SohlGaussian(CONT, net, n_basis=0), "basis"),
        (lambda: SohlGaussian(CONT, net, beta1=0.0), r"beta1 must lie in \(0, 1\)"),
        (lambda: SohlGaussian(CONT, net, beta1=1.0), r"beta1 must lie in \(0, 1\)"),
        (lambda: SohlGaussian(CONT, net, schedule="cosine"), "schedule must be one of"),
        (lambda: SohlGaussian(CONT, net, reverse_param="x"), "reverse_param"),
        (lambda: SohlGaussian(CONT, net, data_scale=0.0), "data_scale"),
        (lambda: SohlGaussian(BIN2, net), "use sohl_binomial"),
        (lambda: SohlBinomial(CONT, net), "use sohl_gaussian"),
        (lambda: SohlBinomial(DataSpec("t", "discrete", (2,), 27), net), "multinomial"),
        (lambda: SohlBinomial(BIN2, net, p1=1.0), r"p1 .* must lie in \(0, 1\)"),
        (lambda: SohlGaussian(CONT, "net"), "nn.Module"),
        (lambda: gaussian(T=5).nll(torch.randn(3, 2), 6), r"n_steps must be an integer in 1..T"),
        (lambda: gaussian(T=5).nll(torch.randn(3, 2), 0), r"n_steps must be an integer in 1..T"),
        (lambda: gaussian(T=5).nll(torch.randn(3, 3)), "does not match"),
        (lambda: binomial().nll(torch.tensor([[0, 2]])), "0/1"),
        (lambda: binomial().nll(torch.tensor([[0.0, 1.0]])), "integer tensor"),
        (lambda: gaussian(spec=DataSpec("i", "discretised", (2,), 16)).nll(torch.tensor([[0.0, 1.5]])), r"\[-1, 1\]"),
        (lambda: gaussian().sample(0, 2), "num"),
        (lambda: build_method("sohl_gaussian", BIN2, net=net), "use sohl_binomial"),
    ]
    for make, msg in cases:
        with pytest.raises((ValueError, TypeError), match=msg):
            make()
