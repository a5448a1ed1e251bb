"""The official BFN code's quirks for the DISCRETE BFN (binarised MNIST K = 2, text8 K = 27; BFN Tables 1, 2, 4,
5) as named options (`bfn_discrete(..., quirks=...)`, suite/bfn/continuous.py QUIRKS): categorical_floor,
sender_samples, flow_t_clamp. Each against the official formula written out here with torch.distributions as
the official code uses them (model.py DiscreteBayesianFlow / DiscreteBayesianFlowLoss, probability.py
Bernoulli / Categorical), with the option off against the exact computation, one case where the quirk changes
the number, and the recorded inputs of the small official checkpoints (shared/reference/official_nets/small).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F

from suite.bfn.continuous import QUIRKS
from suite.bfn.discrete import (
    OFFICIAL_SENDER_SAMPLES,
    DiscreteBFN,
    factorised_receiver_kl,
    official_receiver_log_weights,
    paper_receiver_kl,
)
from suite.data.base import DataSpec
from tests.helpers.official import REF, FixedNet

need_ref = pytest.mark.skipif(not (REF / "small/text8_discrete.npz").is_file(), reason=f"official reference files not at {REF}")
ALL3 = ("categorical_floor", "flow_t_clamp", "sender_samples")


def spec(K, shape=(6,)):
    return DataSpec(f"d{K}", "discrete", shape, num_classes=K)


# --- the official formulas (nnaisense/bayesian-flow-networks b62568e: model.py, probability.py) -------------------
def off_probs(out, K):
    """The distribution factory's probs: BernoulliFactory (K = 2, one logit: cat([1 - p, p])) or
    CategoricalFactory (softmax), float32."""
    if K == 2:
        p = D.Bernoulli(logits=out.squeeze(-1), validate_args=False).probs.unsqueeze(-1)
        return torch.cat([1 - p, p], -1)
    return D.Categorical(logits=out, validate_args=False).probs


def off_alpha(t, n, beta1):
    i = t * n + 1
    return (math.sqrt(beta1) / n) ** 2 * (2 * i - 1)


def off_sender(x, alpha, K):
    """get_sender_dist: N(alpha (K e_x - 1), sqrt(K alpha)) per coordinate."""
    a = alpha.unsqueeze(-1)
    return D.Normal(a * (K * F.one_hot(x, K) - 1), (K * a) ** 0.5)


def off_nstep(x, out, t, n, beta1, eps, K):
    """DiscreteBayesianFlowLoss.discrete_time_loss, summed over dims instead of averaged. x, t: (B, D); out: the
    network output (B, D, 1 or K); eps: (S, B, D, K), the sender draws y = loc + scale eps."""
    alpha = off_alpha(t, n, beta1)
    sender = off_sender(x, alpha, K)
    mix = D.Categorical(probs=off_probs(out, K).unsqueeze(-2))
    classes = torch.arange(K).long().unsqueeze(0).unsqueeze(0)
    comps = off_sender(classes, alpha.unsqueeze(-1), K)
    receiver = D.MixtureSameFamily(mix, comps)
    y = sender.loc + sender.scale * eps
    return n * (sender.log_prob(y) - receiver.log_prob(y)).mean(0).sum(-1).sum(-1)


def off_cts(x, out, t, beta1, K):
    """cts_time_loss: t beta1 K ||e_x - p||^2, summed over dims."""
    return (t * beta1 * K * (F.one_hot(x, K) - off_probs(out, K)).square().sum(-1)).sum(-1)


def off_recon(x, out, K):
    """reconstruction_loss: -Bernoulli(logits).log_prob(x) or -Categorical(logits).log_prob(x), summed over dims."""
    if K == 2:
        return -D.Bernoulli(logits=out.squeeze(-1), validate_args=False).log_prob(x.float()).sum(-1)
    return -D.Categorical(logits=out, validate_args=False).log_prob(x).sum(-1)


def off_flow_beta(t, beta1, eps=1e-6, min_sqrt_beta=1e-10):
    """DiscreteBayesianFlow.forward's beta: sqrt_beta = min(t, 1 - eps) sqrt(beta1), clamped at min_sqrt_beta (and
    theta uniform there)."""
    sb = t.clamp(max=1 - eps) * math.sqrt(beta1)
    lo = sb < min_sqrt_beta
    return sb.clamp(min=min_sqrt_beta).square(), lo


def _synthetic(K, B=4, Dd=6, scale=12.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(B, Dd, 1 if K == 2 else K, generator=g) * scale  # confident outputs: floors matter
    x = torch.randint(0, K, (B, Dd), generator=g)
    return out, x


# --- names ----------------------------------------------------------------------------------------------------
def test_discrete_quirk_names_official_and_errors():
    net = FixedNet(torch.zeros(1, 6, 27))
    assert set(ALL3) <= set(QUIRKS)
    assert DiscreteBFN(spec(27), net).quirks == ()  # off by default
    assert DiscreteBFN(spec(27), net, quirks="official").quirks == ALL3
    assert DiscreteBFN(spec(27), net, quirks=["sender_samples", "none"]).quirks == ("sender_samples",)
    with pytest.raises(ValueError, match="does not apply to bfn_discrete"):
        DiscreteBFN(spec(27), net, quirks="recon_fallback")
    with pytest.raises(ValueError, match="unknown official-code quirk 'floor'"):
        DiscreteBFN(spec(27), net, quirks="floor")


# --- 1. categorical_floor ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [2, 27])
def test_categorical_floor_weights_are_the_official_mixture_weights(K):
    out, _ = _synthetic(K, scale=20.0)
    m = DiscreteBFN(spec(K), FixedNet(out), quirks="categorical_floor")
    log_p = m.log_output(torch.zeros(*out.shape[:2], K), torch.zeros(out.shape[0]))
    w = official_receiver_log_weights(log_p).exp()
    cat = D.Categorical(probs=off_probs(out, K), validate_args=False)
    want = torch.softmax(cat.logits, -1)  # what MixtureSameFamily uses: log_softmax(mixture logits)
    assert torch.allclose(w, want, rtol=1e-5, atol=1e-12)
    eps = torch.finfo(torch.float32).eps
    assert w.min().item() >= eps / (1 + K * eps) * (1 - 1e-5)
    assert log_p.exp().min().item() < 1e-9  # the exact weights go far below the floor here


@pytest.mark.parametrize("K", [2, 27])
def test_official_quirks_give_the_official_nstep_loss(K):
    """quirks="official": the method's L^n is the official discrete_time_loss (10 sender draws, floored weights,
    factorised receiver) on the same draws; off, the same draws give the exact factorised KL of the exact p_O."""
    out, x = _synthetic(K)
    B, n, beta1 = x.shape[0], 10, (9.0 if K == 2 else 0.5625)
    i = torch.tensor([1, 4, 9, 10])
    t = ((i.double() - 1) / n).float()[:, None].expand(x.shape)
    eps = torch.randn(OFFICIAL_SENDER_SAMPLES, *x.shape, K, generator=torch.Generator().manual_seed(1))
    off = off_nstep(x, out, t, n, beta1, eps, K)
    m = DiscreteBFN(spec(K), FixedNet(out), beta1=beta1, receiver="factorised_1d", quirks="official")
    with torch.no_grad():
        got = m.loss_nstep(x, i, n, y_noise=eps)
    assert torch.allclose(got, off, rtol=1e-4, atol=1e-3), (got, off)
    # off: the exact computation, the factorised KL with the exact ln p_O, averaged over the same draws
    exact = DiscreteBFN(spec(K), FixedNet(out), beta1=beta1, receiver="factorised_1d")
    with torch.no_grad():
        log_p = exact.log_output(torch.zeros(B, x.shape[1], K), t[:, 0].double())
        alpha = exact.bcast(exact.schedule.alpha_i(i, n)).float().expand(x.shape)
        want = torch.stack([factorised_receiver_kl(log_p, x, e, alpha) for e in eps]).mean(0).sum(-1) * n
        assert torch.allclose(exact.loss_nstep(x, i, n, y_noise=eps), want, rtol=1e-6)
        assert torch.equal(exact.loss_nstep(x, i, n, y_noise=eps[0]), factorised_receiver_kl(log_p, x, eps[0], alpha).sum(-1) * n)
        paper = DiscreteBFN(spec(K), FixedNet(out), beta1=beta1)
        assert torch.equal(paper.loss_nstep(x, i, n, y_noise=eps[0]), paper_receiver_kl(log_p, x, eps[0], alpha).sum(-1) * n)


def _confidently_wrong(K, beta1, n=10, B=200, quirks=()):
    """L^n at the last of n steps for x = 1 but p_O(1) ~ e^-40 (K = 2: logit -40; K = 27: class 0 logit 40)."""
    out = torch.zeros(B, 1, 1 if K == 2 else K)
    if K == 2:
        out[...] = -40.0
    else:
        out[..., 0] = 40.0
    x = torch.ones(B, 1, dtype=torch.long)
    eps = torch.randn(B, 1, K, generator=torch.Generator().manual_seed(2))
    m = DiscreteBFN(spec(K, (1,)), FixedNet(out), beta1=beta1, receiver="factorised_1d", quirks=quirks)
    with torch.no_grad():
        return m.loss_nstep(x, torch.full((B,), n), n, y_noise=eps).mean().item()


@pytest.mark.parametrize("K,beta1,paper_beta1", [(2, 400.0, 9.0), (27, 25.0, 0.5625)])
def test_categorical_floor_changes_a_confidently_wrong_loss(K, beta1, paper_beta1):
    """The floor raises the true class's weight from ~e^-40 to float32 eps. It matters only where alpha K is large
    enough for e^(u_x) (u_x ~ N(alpha K / 2, alpha K)) to meet 1 / eps: at a large beta1 hundreds of nats; at the
    paper's beta1 and n = 10 (alpha_10 K = 3.4 for MNIST, 2.9 for text8) a few 1e-5 to 1e-4 nats per dim."""
    exact, floored = _confidently_wrong(K, beta1), _confidently_wrong(K, beta1, quirks="categorical_floor")
    assert exact - floored > 100.0  # measured: K = 2 800 vs 319 nats (beta1 400), K = 27 766 vs 286 (beta1 25)
    exact, floored = _confidently_wrong(K, paper_beta1), _confidently_wrong(K, paper_beta1, quirks="categorical_floor")
    assert 1e-6 < exact - floored < 1e-2  # measured: K = 2 7e-5 (33.6993 vs 33.6992), K = 27 4.6e-4 nats


# --- 2. sender_samples ------------------------------------------------------------------------------------------
def test_sender_samples_averages_ten_draws_and_off_draws_one():
    K, n = 27, 10
    out, x = _synthetic(K, scale=2.0)
    i = torch.tensor([2, 3, 7, 10])
    m = DiscreteBFN(spec(K), FixedNet(out), quirks="sender_samples")
    exact = DiscreteBFN(spec(K), FixedNet(out))
    with torch.no_grad():
        torch.manual_seed(5)
        got = m.loss_nstep(x, i, n, noise=torch.zeros(*x.shape, K))
        torch.manual_seed(5)
        eps = torch.randn(OFFICIAL_SENDER_SAMPLES, *x.shape, K)
        singles = torch.stack([exact.loss_nstep(x, i, n, torch.zeros(*x.shape, K), e) for e in eps])
        assert torch.allclose(got, singles.mean(0), rtol=1e-5)
        # off: one draw, the same random stream as before the option existed (torch.randn_like of ln p_O)
        torch.manual_seed(5)
        one = exact.loss_nstep(x, i, n, noise=torch.zeros(*x.shape, K))
        torch.manual_seed(5)
        assert torch.equal(one, exact.loss_nstep(x, i, n, torch.zeros(*x.shape, K), torch.randn(*x.shape, K)))
        assert not torch.allclose(got, one)  # the option changes the number
    # the mean of 10 draws has ~1/10 the variance of one (same expectation)
    with torch.no_grad():
        a = torch.stack([m.loss_nstep(x, i, n, noise=torch.zeros(*x.shape, K)) for _ in range(40)])
        b = torch.stack([exact.loss_nstep(x, i, n, noise=torch.zeros(*x.shape, K)) for _ in range(40)])
    assert (a.var(0) < b.var(0)).all()


# --- 3. flow_t_clamp --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [2, 27])
def test_flow_t_clamp_is_the_official_flow(K):
    beta1 = 9.0 if K == 2 else 0.5625
    x = torch.randint(0, K, (5, 6), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([1.0, 0.999999, 0.5, 1e-12, 0.0], dtype=torch.float64)
    noise = torch.randn(5, 6, K, generator=torch.Generator().manual_seed(4))
    net = FixedNet(torch.zeros(5, 6, 1 if K == 2 else K))
    m = DiscreteBFN(spec(K), net, beta1=beta1, quirks="flow_t_clamp")
    beta, lo = off_flow_beta(t.float(), beta1)
    b = beta[:, None, None]
    logits = b * (K * F.one_hot(x, K) - 1) + (b * K).sqrt() * noise  # count_sample, given the same noise
    probs = torch.where(lo[:, None, None], torch.full_like(logits, 1.0 / K), torch.softmax(logits, -1))
    got = m.flow(x, t, noise)
    assert torch.allclose(torch.softmax(got, -1), probs, rtol=1e-6, atol=1e-7)
    # off: beta1 t^2 exactly (t = 1: beta1)
    ex = DiscreteBFN(spec(K), net, beta1=beta1)
    be = (beta1 * t**2).float()[:, None, None]
    assert torch.allclose(ex.flow(x, t, noise), be * (K * F.one_hot(x, K) - 1) + (be * K).sqrt() * noise)
    assert not torch.equal(ex.flow(x, t, noise)[0], got[0])  # t = 1: beta1 (1 - 1e-6)^2 vs beta1


# --- 4. the recorded inputs of the small official checkpoints ----------------------------------------------------
def _record(name):
    d = np.load(REF / f"small/{name}.npz")
    return {k: torch.from_numpy(d[k]) for k in d.files}


@need_ref
@pytest.mark.parametrize("name,K,beta1", [("mnist_discrete", 2, 9.0), ("text8_discrete", 27, 0.5625)])
def test_recorded_official_outputs_give_the_official_losses(name, K, beta1):
    """The recorded net_output of the official network (t = 0.3, 0.8) through a stub: with quirks="official" the
    method's L^10, L^inf and L^r are the official formulas' (L^r: the official flow is only the network's input,
    so the stub makes it the same); L^10 without the quirks differs only by the floor."""
    rec = _record(name)
    B = rec["data"].shape[0]
    x = rec["data"].reshape(B, -1)
    t = rec["t"].reshape(B, -1)
    out = rec["net_output"].reshape(B, x.shape[1], -1)
    shape = (1, 28, 28) if K == 2 else (256,)
    xs = x.reshape(B, *shape)
    out_s = out.reshape(B, *shape, out.shape[-1])
    n = 10
    i = (t[:, 0].double() * n + 1).round().long()  # steps 4 and 9
    eps = torch.randn(OFFICIAL_SENDER_SAMPLES, B, x.shape[1], K, generator=torch.Generator().manual_seed(6))
    eps_s = eps.reshape(OFFICIAL_SENDER_SAMPLES, B, *shape, K)
    kw = dict(beta1=beta1, receiver="factorised_1d", input_convention="official" if K == 2 else "suite")
    m = DiscreteBFN(spec(K, shape), FixedNet(out_s), quirks="official", **kw)
    with torch.no_grad():
        ln = m.loss_nstep(xs, i, n, y_noise=eps_s)
        lc = m.loss_cts(xs, t[:, 0].double())
        lr = m.recon(xs)
        ln0 = DiscreteBFN(spec(K, shape), FixedNet(out_s), **kw).loss_nstep(xs, i, n, y_noise=eps_s)
    Dd = x.shape[1]
    off_n = off_nstep(x, out, t, n, beta1, eps, K)
    assert ((ln - off_n).abs() / Dd).max().item() < 1e-5, (ln, off_n)
    assert ((lc - off_cts(x, out, t, beta1, K)).abs() / Dd).max().item() < 1e-6
    assert ((lr - off_recon(x, out, K)).abs() / Dd).max().item() < 1e-6
    # the floor is the only difference on L^n here: a random small network is not confident, so it is tiny
    assert ((ln0 - off_n).abs() / Dd).max().item() < 1e-3
