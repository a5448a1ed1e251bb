"""Small networks for BFN's tests and benchmarks (they follow suite/nets' net(h, t) signature).

TinyNet          a flat time-conditioned MLP, deterministic from its seed: a "fixed network".
OraclePosterior  the exact posterior of a factorised categorical p_data for discrete BFN: it is given
                 ln theta (see `oracle_input`) and returns logits ln p_data(k) + ln theta_k, so that
                 p_O(k | theta) = p(k | theta) prop. to p_data(k) theta_k (MATH.md s.2).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, data_shape, in_features: int, out_features: int, width: int = 64, seed: int = 0):
        super().__init__()
        self.data_shape, self.in_features, self.out_features = tuple(data_shape), in_features, out_features
        d = math.prod(self.data_shape)
        g = torch.Generator().manual_seed(seed)
        self.l1, self.l2 = nn.Linear(d * in_features + 2, width), nn.Linear(width, width)
        self.out = nn.Linear(width, d * out_features)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = h.shape[0]
        tt = t.to(h.dtype)[:, None]
        a = torch.cat([h.reshape(B, -1), torch.sin(3 * tt), torch.cos(3 * tt)], 1)
        a = torch.nn.functional.silu(self.l2(torch.nn.functional.silu(self.l1(a))))
        return self.out(a).reshape(B, *self.data_shape, self.out_features)


class OraclePosterior(nn.Module):
    """logits = ln p_data + ln theta; p_data shaped (*data_shape, K). For K = 2, one logit (class 1 vs 0)."""

    def __init__(self, p_data: torch.Tensor):
        super().__init__()
        self.register_buffer("log_p", p_data.to(torch.float32).log())
        self.K = p_data.shape[-1]
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device; unused

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = self.log_p + h  # h = ln theta (oracle_input)
        return logits[..., 1:] - logits[..., :1] if self.K == 2 else logits


def oracle_input(z: torch.Tensor) -> torch.Tensor:
    """Hand the oracle ln theta = log_softmax(z) itself (replaces DiscreteBFN.net_input), so float32
    rounding of 2 theta - 1 does not blur tiny theta_k."""
    return torch.log_softmax(z, -1)
