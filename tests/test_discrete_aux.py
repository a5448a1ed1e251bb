"""Training-only auxiliary terms of the discrete baselines (shared/notes/baselines-at-null.md):

- masked diffusion, `unmasked_weight` w:  loss = bound estimate + w sum_{i unmasked in z_t} -ln mu_theta(z_t, t)_i[x_i]
- multinomial diffusion, `aux_weight` lambda: D3PM's hybrid loss (Austin et al. 2021, eq. 5)
      L_lambda = L_vb + lambda E_t E_q(x_t|x_0)[-ln x0_hat(x_t, t)[x_0]],
  estimated as prior + n term_j + lambda sum_i -ln x0_hat(x_{tau_j})_i[x0_i], j ~ U{1..n} (aux not scaled by n).

Checked: the evaluated bound (nll, bound_terms, full_bound, full_bound_terms) does not depend on the weight; the
auxiliary term equals a written-out cross-entropy (softmax by exp / sum, not log_softmax) at the (t, z) the
network was called with; weight 0 gives the old loss (= nll) bit for bit.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from baselines.discrete import MaskedDiffusion, MultinomialDiffusion
from tests.helpers.nets import TinyNet, spec_of

K, SHAPE = 4, (6,)


class Recorder(nn.Module):
    """Wraps a net and keeps the inputs (h, t) and outputs of every call."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, h, t):
        out = self.net(h, t)
        self.calls.append((h.detach().clone(), t.detach().clone(), out.detach().clone()))
        return out


def written_out_ce(logits: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """sum_{i: keep_i} -ln(exp(l_i[x_i]) / sum_k exp(l_i[k])) per example, float64, by hand."""
    l = logits.double()
    p = torch.exp(l) / torch.exp(l).sum(-1, keepdim=True)
    nll = -torch.log(p.gather(-1, x.unsqueeze(-1)).squeeze(-1))
    return (nll * keep.double()).flatten(1).sum(1)


def data(B=16, seed=0):
    return torch.randint(K, (B, *SHAPE), generator=torch.Generator().manual_seed(seed))


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def pair(cls, kw_name, weight, **kw):
    """Two models with identical network weights, auxiliary weight 0 and `weight`."""
    torch.manual_seed(0)
    fin = K + cls.extra_input_classes
    net = TinyNet(SHAPE, fin, K)
    a = cls(spec_of(K, SHAPE), net, **kw)
    b = cls(spec_of(K, SHAPE), copy.deepcopy(net), **{kw_name: weight}, **kw)
    return a, b


CASES = [
    (MaskedDiffusion, "unmasked_weight", {}, None),
    (MaskedDiffusion, "unmasked_weight", {}, 7),
    (MaskedDiffusion, "unmasked_weight", {"alpha0": 0.9, "alpha1": 0.2, "schedule": "cosine"}, None),
    (MaskedDiffusion, "unmasked_weight", {"alpha0": 0.9, "alpha1": 0.2, "t_sampling": "stratified"}, 5),
    (MultinomialDiffusion, "aux_weight", {"T": 20}, None),
    (MultinomialDiffusion, "aux_weight", {"T": 20, "t_sampling": "stratified"}, 4),
]


@pytest.mark.parametrize("cls, kw_name, kw, n", CASES)
def test_bound_does_not_depend_on_aux_weight(cls, kw_name, kw, n):
    """nll, bound_terms, full_bound and full_bound_terms are the same numbers (same weights, same seed) with the
    auxiliary weight 0 and 0.7: the auxiliary term is training-only."""
    a, b = pair(cls, kw_name, 0.7, **kw)
    x = data()
    torch.testing.assert_close(a.nll(x, n, gen()), b.nll(x, n, gen()), rtol=0, atol=0)
    ta, tb = a.bound_terms(x, n, gen()), b.bound_terms(x, n, gen())
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0)
    torch.testing.assert_close(a.full_bound(x, n, gen()), b.full_bound(x, n, gen()), rtol=0, atol=0)
    fa, fb = a.full_bound_terms(x, n, gen()), b.full_bound_terms(x, n, gen())
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], rtol=0, atol=0)


@pytest.mark.parametrize("cls, kw_name, kw, n", CASES)
def test_weight_zero_is_the_old_loss(cls, kw_name, kw, n):
    """Default (weight 0): loss == nll bit for bit under the same seed (the training objective before the option);
    with weight > 0 the loss differs (so the comparison above could fail)."""
    a, b = pair(cls, kw_name, 0.7, **kw)
    x = data()
    assert getattr(a, kw_name) == 0.0
    torch.testing.assert_close(a.loss(x, n, gen()), a.nll(x, n, gen()), rtol=0, atol=0)
    assert not torch.allclose(b.loss(x, n, gen()), b.nll(x, n, gen()))


@pytest.mark.parametrize("kw, n", [({}, None), ({}, 7), ({"alpha0": 0.9, "alpha1": 0.2, "schedule": "cosine"}, None),
                                   ({"alpha0": 0.9, "alpha1": 0.2}, 5)])
def test_masked_aux_is_cross_entropy_on_unmasked_tokens(kw, n):
    """loss_w - nll = w sum_{i unmasked in z_t} -ln softmax(net(z_t, t))_i[x_i], written out by hand from the
    network's recorded input z_t (the first call: the diffusion estimate; a recon call follows when alpha0 < 1)."""
    w = 0.7
    torch.manual_seed(0)
    rec = Recorder(TinyNet(SHAPE, K + 1, K))
    m = MaskedDiffusion(spec_of(K, SHAPE), rec, unmasked_weight=w, **kw)
    x = data()
    loss = m.loss(x, n, gen())
    h, t, logits = rec.calls[0]
    z = h.argmax(-1)
    assert ((z == K) | (z == x)).all()  # z_t is x with some tokens masked
    unmasked = z != K
    assert unmasked.any() and (~unmasked).any()
    aux = written_out_ce(logits, x, unmasked)
    torch.testing.assert_close((loss - m.nll(x, n, gen())).double(), w * aux, rtol=1e-5, atol=1e-4)


def test_masked_aux_constant_net_tiny_case():
    """A net with constant logits ln p, p = (0.1, 0.2, 0.3, 0.4), D = 6: aux = sum over the tokens left unmasked in
    z_t of -ln p[x_i], summed by a Python loop over the recorded z_t."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])

    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.z = None

        def forward(self, h, t):
            self.z = h.argmax(-1)
            return (p.log() + 0 * self.w).expand(*h.shape[:-1], K).clone()

    net = Const()
    m = MaskedDiffusion(spec_of(K, SHAPE), net, unmasked_weight=2.0)
    x = data(B=8)
    _, aux = m.aux_terms(x, None, gen())
    z = net.z
    want = torch.tensor([sum(-math.log(float(p[x[b, i]])) for i in range(SHAPE[0]) if z[b, i] != K)
                         for b in range(x.shape[0])], dtype=torch.float64)
    assert (want > 0).any()
    torch.testing.assert_close(aux.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw, n", [({"T": 20}, None), ({"T": 20}, 4), ({"T": 20, "schedule": "linear"}, 20)])
def test_multinomial_aux_is_d3pm_cross_entropy(kw, n):
    """D3PM eq. 5, one-pass: loss_lambda - nll = lambda sum_i -ln softmax(net(x_t, t))_i[x0_i], written out from
    the recorded network input; the network was called at t = tau_j / T on the n-step grid (n = T by default)."""
    lam = 0.3
    torch.manual_seed(0)
    rec = Recorder(TinyNet(SHAPE, K, K))
    m = MultinomialDiffusion(spec_of(K, SHAPE), rec, aux_weight=lam, **kw)
    x = data()
    loss = m.loss(x, n, gen())
    assert len(rec.calls) == 1
    h, t, logits = rec.calls[0]
    tau = t.double() * kw["T"]
    assert torch.allclose(tau, tau.round()) and (tau >= 1).all()
    aux = written_out_ce(logits, x, torch.ones_like(x, dtype=torch.bool))
    torch.testing.assert_close((loss - m.nll(x, n, gen())).double(), lam * aux, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("cls, kw_name", [(MaskedDiffusion, "unmasked_weight"), (MultinomialDiffusion, "aux_weight")])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_aux_weight(cls, kw_name, bad):
    with pytest.raises(ValueError, match=kw_name):
        cls(spec_of(K, SHAPE), TinyNet(SHAPE, K + cls.extra_input_classes, K), **{kw_name: bad})


@pytest.mark.parametrize("cls, kw_name", [(MaskedDiffusion, "unmasked_weight"), (MultinomialDiffusion, "aux_weight")])
def test_aux_gradient_reaches_the_net(cls, kw_name):
    """The auxiliary term is differentiable: the gradient of loss_w - nll (same seed) is nonzero."""
    _, b = pair(cls, kw_name, 1.0, **({"T": 20} if cls is MultinomialDiffusion else {}))
    x = data()
    (b.loss(x, None, gen()) - b.nll(x, None, gen())).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in b.net.parameters())
