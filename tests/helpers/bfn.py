"""Checks shared by the BFN tests of the three data types (tests/test_bfn_{continuous,discretised,discrete}.py)."""

from __future__ import annotations

import torch


def assert_edge_losses_finite(model, x, t_cts, label) -> None:
    """L^inf at the given t (0, near t_min, 1), L^n at i = 1 and i = n for n = 10 and n = 1, and L^r: every
    value and every parameter gradient finite."""
    model.zero_grad()
    losses = [
        model.loss_cts(x, t_cts),
        model.loss_nstep(x, torch.tensor([1, 1, 10, 10]), 10),
        model.loss_nstep(x, torch.tensor([1, 1, 1, 1]), 1),
        model.recon(x),
    ]
    sum(v.sum() for v in losses).backward()
    assert all(torch.isfinite(v).all() for v in losses), label
    assert all(torch.isfinite(p.grad).all() for p in model.parameters()), label


class CastOutside(torch.nn.Module):
    """`net` run under bfloat16 autocast with its outputs cast to float32, and nothing else under autocast."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, h, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(h, t).float()


def assert_loss_float32_under_autocast(make_model, net, x, loss, atol) -> None:
    """The network under autocast (bfloat16), the loss in float32: `loss(model, x, n)` with the whole call under
    autocast equals the loss computed from the same bfloat16 outputs cast up outside it, for L^inf and L^10."""
    for n in (None, 10):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = loss(make_model(net), x, n)
        torch.manual_seed(3)
        ref = loss(make_model(CastOutside(net)), x, n)
        assert auto.dtype == torch.float32
        torch.testing.assert_close(auto, ref, rtol=1e-6, atol=atol)


def assert_nstep_tends_to_cts(model, x, u, flow_noise, y_noise=None) -> None:
    """L^n -> L^inf as n grows (MATH.md s.2), on common random numbers: t = u for L^inf, i = floor(u n) + 1
    and the same flow noise for L^n (with antithetic sender noise +-y_noise where the loss takes one). The
    mean gap must shrink at least like 1/n from n = 10 (within 5 s.e.) and be below 0.1 % of L^inf (+5 s.e.)
    at n = 10000."""
    N = x.shape[0]
    with torch.no_grad():
        cts = model.loss_cts(x, u, flow_noise).double()
        gaps = {}
        for n in (10, 100, 1000, 10000):
            i = torch.floor(u * n).long() + 1
            if y_noise is None:
                ln = model.loss_nstep(x, i, n, flow_noise).double()
            else:
                ln = 0.5 * (model.loss_nstep(x, i, n, flow_noise, y_noise) + model.loss_nstep(x, i, n, flow_noise, -y_noise))
            d = ln.double() - cts
            gaps[n] = (float(d.mean()), float(d.std() / N**0.5))
    m10, s10 = gaps[10]
    for n, (m, s) in gaps.items():
        assert abs(m) <= 5 * s + 2 * (abs(m10) + 5 * s10) * 10 / n, (n, gaps)
    assert abs(gaps[10000][0]) <= 5 * gaps[10000][1] + 1e-3 * float(cts.mean()), gaps
