"""A tiny flat MLP with the shared backbone signature net(h, t), for tests and quick CPU toys.

h (B, *data_shape, in_features), t (B,) -> (B, *data_shape, out_features). The whole example is flattened, so
every output sees every input (what the Sohl-Dickstein readout needs on 1-D toys). Use suite.nets for real runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(
        self, data_shape: tuple[int, ...], in_features: int, out_features: int, hidden: int = 64, depth: int = 2
    ):
        super().__init__()
        self.data_shape, self.out_features = tuple(data_shape), out_features
        d = math.prod(self.data_shape)
        layers: list[nn.Module] = [nn.Linear(d * in_features + 1, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, d * out_features))
        self.mlp = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = torch.cat([h.flatten(1), t.reshape(-1, 1).to(h.dtype)], dim=1)
        return self.mlp(z).view(h.shape[0], *self.data_shape, self.out_features)
