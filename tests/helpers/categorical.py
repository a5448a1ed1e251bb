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
