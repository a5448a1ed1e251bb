"""Shared helpers for the discrete-diffusion tests: factorised categorical data and Monte-Carlo equality."""

from __future__ import annotations

import math

import torch


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


def assert_mc_equal(est: torch.Tensor, target, n_se: float = 5.0, floor: float = 1e-5):
    """mean(est - target) = 0 within n_se standard errors (plus a float32 round-off floor)."""
    m, se = mean_se(est - target)
    assert abs(m) <= n_se * se + floor, f"mean difference {m:.5g} exceeds {n_se} s.e. = {n_se * se:.3g}"


def draw(log_p: torch.Tensor, shape: tuple[int, ...], seed: int = 1000) -> torch.Tensor:
    """Data from Cat(p) with its own generator (a seed no noise generator in these tests uses)."""
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(log_p.exp(), math.prod(shape), replacement=True, generator=g).reshape(shape)


def factorised(K: int, slope: float = 0.8) -> torch.Tensor:
    """ln p_data for a fixed, clearly non-uniform factorised categorical: p_k ∝ exp(-slope k) (float64)."""
    return torch.log_softmax(-slope * torch.arange(K, dtype=torch.float64), 0)


def train_on_cyclic_corpus(model, K: int, D: int, steps: int = 300) -> tuple[float, float, float, float]:
    """A few hundred Adam steps on a tiny corpus (the cycle 0..K-1 at a random phase, so -ln p(x) = ln K);
    returns (bound before, s.e., bound after, s.e.) in nats, each on 2048 fresh sequences."""
    g = torch.Generator().manual_seed(100)  # data order; the model's noise uses the global RNG

    def batch(B):
        return (torch.arange(D) + torch.randint(K, (B, 1), generator=g)) % K

    def bound():
        with torch.no_grad():
            return mean_se(model.nll(batch(2048), generator=torch.Generator().manual_seed(9)))

    before, se_b = bound()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        model.loss(batch(64)).mean().backward()
        opt.step()
    after, se_a = bound()
    return before, se_b, after, se_a
