"""The official BFN code's quirks (shared/reference/official_quirks.md) as named options of the Gaussian-flow
BFNs (`quirks=`, suite/bfn/continuous.py QUIRKS), each against the official formula written out here in a few
lines of torch (torch.distributions as the official code uses them), and, with the option off, against the
exact computation. Also: each quirk changes a number where the quirk table says it does, the recorded inputs
of the small official checkpoints (shared/reference/official_nets/small) give the official L^n and L^r with
every quirk on, and `bfnbench reproduce` records the quirks of every cell.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as D

from suite.bfn.continuous import QUIRKS, ContinuousBFN, check_quirks, official_log_bin_prob
from suite.bfn.dgauss import categorical_log_weights, log_bin_prob, official_bin_probs
from suite.bfn.discretised import DiscretisedBFN, receiver_lse_reference
from suite.bfn.fast.receiver import mixture_lse
from suite.bfn.schedules import ContinuousSchedule
from suite.data.base import DataSpec
from tests.helpers.official import REF, FixedNet

need_ref = pytest.mark.skipif(not (REF / "small/cifar10_discretized_16bins.npz").is_file(),
                              reason=f"official reference files not at {REF}")


# --- the official formulas (nnaisense/bayesian-flow-networks b62568e: model.py, probability.py, utils_model.py) --
def off_out_params(mu, eps, log_dev, t, min_var, min_t=1e-6):
    """noise_pred_params_to_data_pred_params + DiscretizedNormal: float32 gamma, safe_exp, then the std clamp."""
    mask = t < min_t
    pv = torch.pow(min_var, t.clamp(min=min_t))
    g = 1 - pv
    B = (pv / g).sqrt()
    mean = torch.where(mask, 0 * mu, mu / g - B * eps)
    dev = torch.where(mask, 1 + 0 * mu, B * log_dev.clamp(-10, 10).exp())
    return mean, dev.clamp(1e-3, 10)


def off_probs(mean, dev, K):
    """DiscretizedCtsDistribution.probs (clip=True): float32 CDF differences at the class boundaries."""
    bw = 2.0 / K
    cdf = D.Normal(mean, dev, validate_args=False).cdf(torch.arange(bw - 1, 1 - bw / 2, bw).reshape(-1, *[1] * mean.dim()))
    cdf = torch.cat([torch.zeros_like(cdf[:1]), cdf, torch.ones_like(cdf[:1])], 0)
    return (cdf[1:] - cdf[:-1]).moveaxis(0, -1)


def off_receiver(mean, dev, alpha, K):
    bw = 2.0 / K
    mix = D.Categorical(probs=off_probs(mean, dev, K), validate_args=False)
    comp = D.Normal(torch.arange(bw / 2 - 1, 1, bw), (1.0 / alpha.sqrt()).unsqueeze(-1), validate_args=False)
    return D.MixtureSameFamily(mix, comp, validate_args=False)


def off_nstep(x, mean, dev, t, n, min_var, y, K):
    """CtsBayesianFlowLoss.discrete_time_loss (discretised), summed over dims instead of averaged."""
    i = t * n + 1
    s1 = math.sqrt(min_var)
    alpha = s1 ** (-2 * i / n) * (1 - s1 ** (2 / n))
    sender = D.Normal(x, 1.0 / alpha**0.5, validate_args=False)
    return n * (sender.log_prob(y) - off_receiver(mean, dev, alpha, K).log_prob(y)).mean(0).sum(-1)


def off_log_prob(x, mean, dev, K):
    """DiscretizedCtsDistribution.log_prob (clip=True, min_prob=1e-5): float_to_idx by floor, the density fallback."""
    idx = torch.floor((x / 2 + 0.5) * K).clamp(0, K - 1)
    c = (idx + 0.5) / K * 2 - 1
    N = D.Normal(mean, dev, validate_args=False)
    lo = torch.where(idx <= 0, 0 * c, N.cdf(c - 1 / K))
    hi = torch.where(idx >= K - 1, 1 + 0 * c, N.cdf(c + 1 / K))
    p = hi - lo
    return torch.where(p < 1e-5, N.log_prob(c) + math.log(2 / K), p.clamp(min=1e-10).log())


def exact_log_bin_prob(x, mu, sigma, K):
    """ln P(bin of x) in float64 by log-space CDFs (the definition the exact path implements)."""
    x, mu, sigma = x.double(), mu.double(), sigma.double()
    k = torch.clamp(torch.round((x + 1) * K / 2 - 0.5), 0, K - 1)
    a = torch.where(k == 0, -math.inf, ((2 * k + 1) / K - 1 - 1 / K - mu) / sigma)
    b = torch.where(k == K - 1, math.inf, ((2 * k + 1) / K - 1 + 1 / K - mu) / sigma)
    flip = a + b > 0  # work on the side of the bin nearer the mode
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    lh, ll = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return lh + torch.log1p(-torch.exp(ll - lh))


def spec(K):
    return DataSpec(f"cifar10_{K}", "discretised", (3, 4, 4), num_classes=K)


# --- names ---------------------------------------------------------------------------------------------------
def test_quirk_names_official_and_errors():
    all5 = ("bin_floor", "categorical_floor", "gamma_float32", "log_sigma_clamp", "recon_fallback")
    # and the discrete BFN's (tests/test_official_quirks_discrete.py): categorical_floor, flow_t_clamp, sender_samples
    assert tuple(sorted(QUIRKS)) == tuple(sorted(all5 + ("flow_t_clamp", "sender_samples")))
    assert check_quirks("official", all5, "m") == all5 and check_quirks(None, all5, "m") == ()
    assert check_quirks(["gamma_float32", "none"], all5, "m") == ("gamma_float32",)
    net = FixedNet(torch.zeros(1, 3, 4, 4, 2))
    assert DiscretisedBFN(spec(16), net).quirks == ()  # off by default
    assert DiscretisedBFN(spec(16), net, quirks="official").quirks == all5
    assert ContinuousBFN(spec(16), net, quirks="official").quirks == ("bin_floor", "gamma_float32", "recon_fallback")
    with pytest.raises(ValueError, match="unknown official-code quirk 'floor'"):
        DiscretisedBFN(spec(16), net, quirks=["floor"])
    with pytest.raises(ValueError, match="does not apply to bfn_continuous"):
        ContinuousBFN(spec(16), net, quirks="categorical_floor")


# --- 1. categorical_floor ---------------------------------------------------------------------------------------
def _receiver_inputs(K, N=64, S=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(N, generator=g) * 2.4 - 1.2
    sigma = 10 ** (torch.rand(N, generator=g) * 3 - 3)  # 1e-3 .. 1
    alpha = 10 ** (torch.rand(N, generator=g) * 6)  # 1 .. 1e6
    x = torch.rand(N, generator=g) * 2 - 1
    y = x + torch.randn(S, N, generator=g) / alpha.sqrt()
    return mu, sigma, alpha, y


@pytest.mark.parametrize("K", [16, 256])
def test_categorical_floor_is_the_official_receiver(K):
    mu, sigma, alpha, y = _receiver_inputs(K)
    ours = receiver_lse_reference(mu, sigma, alpha, y, K, weights="official", chunk_elems=K * 10)  # several chunks
    # MixtureSameFamily.log_prob = Lambda + ln N's normaliser ln sqrt(alpha / 2 pi)
    off = off_receiver(mu, sigma, alpha, K).log_prob(y) + 0.5 * torch.log(2 * math.pi / alpha)
    assert (ours - off.mean(0)).abs().max().item() < 2e-4  # float32 sums of up to 256 terms, values up to ~1e3
    assert torch.allclose(ours, off.mean(0), rtol=1e-5, atol=1e-4)
    w = categorical_log_weights(official_bin_probs(mu, sigma, K)).exp()
    cat = D.Categorical(probs=off_probs(mu, sigma, K), validate_args=False)
    assert torch.allclose(w, torch.softmax(cat.logits, -1), rtol=1e-5)  # MixtureSameFamily's log_softmax(logits)
    assert w.min().item() >= 1.19e-7 / (1 + K * 1.2e-7)
    # off: the fused receiver is the exact definition (weights raised by 1e-30 only), in float64
    exact = mixture_lse(mu.double(), sigma.double(), alpha.double(), y.double(), K)
    assert torch.allclose(exact, receiver_lse_reference(mu.double(), sigma.double(), alpha.double(), y.double(), K), atol=1e-9)


def test_categorical_floor_changes_a_confidently_wrong_256_bin_loss_at_n10():
    """x = 0.5 but p_O = discretised N(-0.5, 1e-3^2): the exact receiver has ~no mass near y, the official one
    eps / (1 + K eps) in every bin. One pixel-sized example, 256 bins, n = 10, every step."""
    K, n = 256, 10
    s = DataSpec("c", "discretised", (1,), num_classes=K)
    x = torch.full((n, 1), 0.5 + 1 / K)  # a bin centre
    i = torch.arange(1, n + 1)
    out = torch.zeros(n, 1, 2)
    losses = {}
    for q in ((), ("categorical_floor",)):
        m = DiscretisedBFN(s, FixedNet(out), sigma1=1e-3, n_y_samples=4, quirks=q)
        # noise so that mu_x = mu / gamma = -0.5 (eps-hat = 0): mu = -0.5 gamma
        t = (i.double() - 1) / n
        g = m.schedule.gamma(t).clamp(min=1e-300)
        noise = ((-0.5 * g - g * x[:, 0].double()) / (g * m.schedule.one_minus_gamma(t)).sqrt()).float()[:, None]
        noise[0] = 0.0  # t = 0: p_O is the prior either way
        y_noise = torch.randn(4, n, 1, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            losses[q] = m.loss_nstep(x, i, n, noise, y_noise)
    per_dim = (losses[()] - losses[("categorical_floor",)]).mean().item()  # averaged over the n steps: E_i
    assert per_dim > 5.0  # measured 330 nats: per step exact 243-691, official 128-159 from step 4 on
    assert torch.allclose(losses[()][:1], losses[("categorical_floor",)][:1], rtol=1e-4)  # t = 0: prior, same


# --- 2. recon_fallback and 5. bin_floor -------------------------------------------------------------------------
@pytest.mark.parametrize("K", [16, 256])
def test_recon_fallback_is_the_official_log_prob(K):
    g = torch.Generator().manual_seed(1)
    N = 2000
    x = ((2 * torch.randint(0, K, (N,), generator=g) + 1) / K - 1).float()
    mu = (x + torch.randn(N, generator=g) * 10 ** (torch.rand(N, generator=g) * 3 - 2.5)).float()
    sigma = (10 ** (torch.rand(N, generator=g) * 2 - 3)).float()
    ours, off = official_log_bin_prob(x, mu, sigma, K), off_log_prob(x, mu, sigma, K)
    assert torch.allclose(ours, off, rtol=1e-6, atol=1e-5)
    exact = exact_log_bin_prob(x, mu, sigma, K)
    assert torch.allclose(log_bin_prob(x, mu, sigma, K).double(), exact, rtol=1e-5, atol=1e-5)  # off: exact
    hit = exact.exp() < 1e-5
    assert hit.sum() > 100 and (~hit).sum() > 100
    # where it triggers the fallback is worse (higher loss) than the exact -ln P; elsewhere the same up to the
    # float32 CDF difference's absolute error (~1e-7, so |d ln P| <= ~1e-7 / P)
    assert ((exact - ours.double())[hit] > 0).all() and (exact - ours.double())[hit].median() > 10.0
    err = (ours.double() - exact).abs()[~hit]
    assert (err <= 2.4e-7 / exact.exp()[~hit] + 1e-6).all()


def test_bin_floor_picks_the_official_bin_of_an_edge_value():
    K = 16
    x = torch.tensor([-1 + 2 * 3 / K, -1 + 2 * 5 / K, 0.5 + 1 / K])  # two edges (k = 2 | 3, 4 | 5), one centre
    mu, sigma = torch.full((3,), -0.6), torch.full((3,), 0.05)
    net = FixedNet(torch.zeros(1, 3, 2))
    s = DataSpec("c", "discretised", (3,), num_classes=K)
    exact = DiscretisedBFN(s, net).recon_log_prob(x, mu, sigma)
    floor = DiscretisedBFN(s, net, quirks=["bin_floor"]).recon_log_prob(x, mu, sigma)
    official = DiscretisedBFN(s, net, quirks="official").recon_log_prob(x, mu, sigma)
    assert torch.allclose(official, off_log_prob(x, mu, sigma, K), rtol=1e-6)
    # round half to even at an edge: bins 2 and 4; floor: bins 3 and 5; the centre's bin is the same
    assert torch.allclose(exact[:2], log_bin_prob(torch.tensor([-1 + 5 / K, -1 + 9 / K]), mu[:2], sigma[:2], K))
    assert torch.allclose(floor[:2], log_bin_prob(torch.tensor([-1 + 7 / K, -1 + 11 / K]), mu[:2], sigma[:2], K))
    assert (floor[:2] - exact[:2]).abs().min() > 0.5 and floor[2] == exact[2]


# --- 3. log_sigma_clamp -----------------------------------------------------------------------------------------
def test_log_sigma_clamp_is_the_official_std():
    """The quirk table's example: 16 bins (sigma1^2 = 1e-3), t = 1e-4, ln sigma_eps = -12: 1.73e-3 vs 1e-3."""
    s = DataSpec("c", "discretised", (5,), num_classes=16)
    log_dev = torch.tensor([[-12.0, -10.5, 0.3, 11.0, -25.0]])
    out = torch.stack([torch.full_like(log_dev, 0.2), log_dev], -1)
    mu = torch.full((1, 5), 0.01)
    for t_val in (1e-4, 0.02, 0.5, 1.0, 0.0):
        t = torch.tensor([t_val], dtype=torch.float64)
        ours = DiscretisedBFN(s, FixedNet(out), sigma1=1e-3**0.5, quirks=["log_sigma_clamp", "gamma_float32"]).out_params(mu, t)
        off = off_out_params(mu, out[..., 0], log_dev, torch.full((1, 5), t_val), 1e-3)
        assert torch.allclose(ours[0], off[0], rtol=1e-6) and torch.allclose(ours[1], off[1], rtol=1e-6)
    t = torch.tensor([1e-4], dtype=torch.float64)
    _, sig_q = DiscretisedBFN(s, FixedNet(out), sigma1=1e-3**0.5, quirks=["log_sigma_clamp"]).out_params(mu, t)
    _, sig = DiscretisedBFN(s, FixedNet(out), sigma1=1e-3**0.5).out_params(mu, t)
    ratio = ContinuousSchedule(1e-3**0.5).noise_ratio(t).item()  # exact: clamp(ratio sigma_eps) in log space
    want = torch.tensor([min(max(ratio * math.exp(v), 1e-3), 10.0) for v in log_dev[0].tolist()])
    assert torch.allclose(sig[0], want, rtol=1e-5)
    assert sig_q[0, 0].item() == pytest.approx(1.73e-3, rel=5e-3) and sig[0, 0].item() == pytest.approx(1e-3, rel=1e-5)


def test_log_sigma_clamp_takes_the_torch_path_for_l_inf():
    """L^inf with the quirk = the torch path's (mu_x, sigma_x) and bin_mean; without it, the compiled kernel's."""
    from suite.bfn.discretised import bin_mean

    s = DataSpec("c", "discretised", (6,), num_classes=256)
    # at t = 1e-4, sqrt((1-gamma)/gamma) = 26.9: mu_x = x + 0.4 bin, sigma_x 1e-3 (exact) vs 1.2e-3 (official)
    out = torch.stack([torch.full((2, 6), -0.4 * (2 / 256) / 26.9), torch.tensor([[-12.0, -11, -3, 0, 2, 12]] * 2)], -1)
    x = torch.full((2, 6), 1 / 256)
    t = torch.tensor([1e-4, 0.3], dtype=torch.float64)
    noise = torch.zeros(2, 6)
    for q in ((), ("log_sigma_clamp",)):
        m = DiscretisedBFN(s, FixedNet(out), quirks=q)
        mu_x, sigma_x = m.out_params(m.flow(x, t, noise), t)
        want = (-m.schedule.log_sigma1 * m.schedule.rho(t)).float() * ((x - bin_mean(mu_x, sigma_x, 256)) ** 2).sum(1)
        assert torch.allclose(m.loss_cts(x, t, noise), want, rtol=1e-5)
    assert not torch.allclose(DiscretisedBFN(s, FixedNet(out)).loss_cts(x, t, noise)[:1],
                              DiscretisedBFN(s, FixedNet(out), quirks=["log_sigma_clamp"]).loss_cts(x, t, noise)[:1])  # fmt: skip


# --- 4. gamma_float32 -------------------------------------------------------------------------------------------
def test_gamma_float32_is_the_official_gamma():
    sched = ContinuousSchedule(1e-3)
    t = torch.tensor([1e-6, 1e-5, 1e-4, 1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    g32, omg32 = sched.gamma_float32(t)
    pv = torch.pow(1e-6, t.float())  # the official CtsBayesianFlow / noise_pred_params_to_data_pred_params
    assert g32.dtype == torch.float32 and torch.equal(g32, 1 - pv) and torch.equal(omg32, pv)
    rel = ((g32.double() - sched.gamma(t)) / sched.gamma(t)).abs()
    assert rel[2].item() > 1e-6 and rel.max().item() < 1e-3  # measured 2.6e-6 .. 2.3e-5 at t <= 1e-4
    # the flow and x-hat of the continuous model with the quirk are the official ones
    s = DataSpec("c", "discretised", (8,), num_classes=256)
    eps = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))
    x = torch.linspace(-0.9, 0.9, 8)[None]
    noise = torch.randn(1, 8, generator=torch.Generator().manual_seed(4))
    for tv in (1e-4, 3e-4, 0.7):
        t1 = torch.tensor([tv], dtype=torch.float64)
        mq = ContinuousBFN(s, FixedNet(eps[..., None]), quirks=["gamma_float32"])
        m = ContinuousBFN(s, FixedNet(eps[..., None]))
        tt = torch.full((1, 8), tv)
        post = torch.pow(1e-6, tt)
        mu_off = (1 - post) * x + ((1 - post) * post).sqrt() * noise  # CtsBayesianFlow.forward
        assert torch.allclose(mq.flow(x, t1, noise), mu_off, rtol=1e-6, atol=1e-7)
        g = 1 - torch.pow(1e-6, tt.clamp(min=1e-6))
        xhat_off = (mu_off / g - (torch.pow(1e-6, tt) / g).sqrt() * eps).clamp(-1, 1)  # + DeltaDistribution clip
        assert torch.allclose(mq.x_hat(mu_off, t1), xhat_off, rtol=1e-5, atol=1e-5)
        exact = (mu_off.double() / m.schedule.gamma(t1) - m.schedule.noise_ratio(t1) * eps.double()).clamp(-1, 1)
        assert torch.allclose(m.x_hat(mu_off, t1).double(), exact, rtol=1e-6, atol=1e-6)  # off: float64 gamma
    t1 = torch.tensor([1e-4], dtype=torch.float64)
    mu = torch.full((1, 8), 1e-3)
    d = (ContinuousBFN(s, FixedNet(eps[..., None]), x_range=None, quirks=["gamma_float32"]).x_hat(mu, t1)
         - ContinuousBFN(s, FixedNet(eps[..., None]), x_range=None).x_hat(mu, t1)).abs().max().item()  # fmt: skip
    assert d > 1e-6  # measured ~2e-5 here (mu / gamma ~ 0.7); the quirk table's 2.3e-3 on larger mu


# --- the recorded inputs of the small official checkpoints -----------------------------------------------------
def _record(name):
    d = np.load(REF / "small" / f"{name}.npz")
    return {k: torch.from_numpy(d[k]) for k in d.files}


def _noise_for(m, x, mu, t):
    """Flow noise that makes the method's flow return the recorded mu at t (under its own gamma)."""
    if m.quirks:
        g, omg = m.schedule.gamma_float32(t)
        g, std = g.double(), (g.double() * omg.double()).sqrt()
    else:
        g = m.schedule.gamma(t)
        std = (g * m.schedule.one_minus_gamma(t)).sqrt()
    return ((mu.double() - m.bcast(g) * x.double()) / m.bcast(std)).float()


@need_ref
@pytest.mark.parametrize("name,K,min_var", [("cifar10_discretized_256bins", 256, 1e-6), ("cifar10_discretized_16bins", 16, 1e-3)])
def test_recorded_official_inputs_give_the_official_losses(name, K, min_var):
    """The recorded (data, t, net_input, net_output) of the official code: with quirks="official" the method's
    L^10 and L^r are the official formulas' to float32 rounding (measured <= 1e-6 nats/dim); without, L^r
    differs by ~0.1-300 nats/dim (the fallback triggers on this random network's far-off predictions)."""
    rec = _record(name)
    B = rec["data"].shape[0]
    x, t, mu = (rec[k].reshape(B, -1) for k in ("data", "t", "net_input"))
    out = rec["net_output"].reshape(B, -1, 2)
    xs = rec["data"].permute(0, 3, 1, 2).contiguous()
    mus = rec["net_input"].permute(0, 3, 1, 2)
    out_s = rec["net_output"].reshape(B, 32, 32, 3, 2).permute(0, 3, 1, 2, 4).contiguous()
    s = DataSpec(f"cifar10_{K}", "discretised", (3, 32, 32), num_classes=K)
    n = 10
    i = (rec["t"][:, 0, 0, 0].double() * n + 1).round().long()  # t = 0.3, 0.8: steps 4 and 9
    y_noise = torch.randn(10, *xs.shape, generator=torch.Generator().manual_seed(5))
    res = {}
    for q in ("official", ()):
        m = DiscretisedBFN(s, FixedNet(out_s), sigma1=min_var**0.5, n_y_samples=10, quirks=q)
        t_i = (i.double() - 1) / n
        one = torch.ones(B, dtype=torch.float64)
        t0 = rec["t"][:, 0, 0, 0].double()
        with torch.no_grad():
            ln = m.loss_nstep(xs, i, n, _noise_for(m, xs, mus, t_i), y_noise)
            lr = m.recon(xs, _noise_for(m, xs, mus, one))
            lc = m.loss_cts(xs, t0, _noise_for(m, xs, mus, t0))
        res[q] = ln, lr, lc
    y = (xs + y_noise / m.bcast(m.schedule.alpha_i(i, n)).float().sqrt()).permute(0, 1, 3, 4, 2).reshape(10, B, -1)
    mean, dev = off_out_params(mu, out[..., 0], out[..., 1], t, min_var)
    off_n = off_nstep(x, mean, dev, t, n, min_var, y, K)
    mean1, dev1 = off_out_params(mu, out[..., 0], out[..., 1], torch.ones_like(t), min_var)
    off_r = -off_log_prob(x, mean1, dev1, K).sum(-1)
    # CtsBayesianFlowLoss.cts_time_loss: C (x - k-hat)^2 / sigma1^(2t), k-hat from the float32 CDF differences
    bw = 2.0 / K
    k_hat = (off_probs(mean, dev, K) * torch.arange(bw / 2 - 1, 1, bw)).sum(-1)
    off_c = (-0.5 * math.log(min_var) * (k_hat - x) ** 2 / torch.pow(min_var, t)).sum(-1)
    D_ = x.shape[1]
    ln, lr, lc = res["official"]
    assert ((ln - off_n).abs() / D_).max().item() < 1e-5
    assert ((lr - off_r).abs() / off_r.abs()).max().item() < 1e-6
    assert ((lc - off_c).abs() / D_).max().item() < 1e-5  # L^inf: no quirk beyond these (O(1) k-hat is exact)
    ln0, lr0, lc0 = res[()]
    assert ((lr0 - off_r) / D_).abs().min().item() > 0.05  # the exact L^r is not the official one here


# --- reproduce records them ---------------------------------------------------------------------------------------
@need_ref
def test_reproduce_records_the_quirks_of_each_cell(tmp_path):
    from data_writers import write_cifar

    from suite.reproduce import reproduce, write

    write_cifar(tmp_path / "data/cifar10", n_per_batch=3)
    kw = dict(tables=[3], repeats=1, max_examples=2, steps=[10], progress=False, log=lambda s: None,
              data_options=dict(strict_sizes=False), device="cpu")  # fmt: skip
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "cifar10_discretized_16bins.pt").symlink_to(REF / "small/cifar10_discretized_16bins.pt")
    (tmp_path / "layouts.json").symlink_to(REF / "layouts.json")
    rows = reproduce(ck, tmp_path / "data", **kw)
    assert [r["quirks"] for r in rows] == ["bin_floor+categorical_floor+gamma_float32+log_sigma_clamp+recon_fallback"]
    exact = reproduce(ck, tmp_path / "data", quirks=(), **kw)
    assert [r["quirks"] for r in exact] == ["none"]
    assert rows[0]["value"] != exact[0]["value"]
    suite = reproduce(ck, tmp_path / "data", **{**kw, "repeats": 2}, protocol="suite")
    assert [r["quirks"] for r in suite] == ["none"]  # the suite's protocol: the exact computation
    csv, md = write(rows + suite, tmp_path / "out")
    assert "quirks" in csv.read_text().splitlines()[0]
    text = md.read_text()
    header = next(line for line in text.splitlines() if line.startswith("|"))
    assert "quirks" in [c.strip() for c in header.strip().strip("|").split("|")]  # a quirks column
    assert "categorical_floor" in text and "recon_fallback:" in text
