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
