"""`mlp`: a flat MLP for toys (swiss roll, heartbeat) and small MNIST.

(B, *shape, F_in) -> (B, D*F_in) -> width x depth with a time embedding -> (B, D*F_out) -> (B, *shape, F_out).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from suite.nets.embed import TimeEmbedding, check_input, check_size


class MLP(nn.Module):
    """Time-conditioned MLP.

    time_mode "add": the time embedding is projected and added before every hidden activation
    (conditioning at every depth); "concat": appended to the flat input once (Sohl-Dickstein-style).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        in_features: int,
        out_features: int,
        width: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        time_mode: str = "add",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.data_shape = check_size("MLP", data_shape, in_features, out_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        if width < 1 or depth < 1:
            raise ValueError(f"MLP: width and depth must be >= 1, got width={width}, depth={depth}")
        if time_mode not in ("add", "concat"):
            raise ValueError(f"MLP: time_mode must be 'add' or 'concat', got {time_mode!r}")
        self.time_mode = time_mode
        d = math.prod(self.data_shape)
        self.time_embed = TimeEmbedding(time_dim if time_mode == "concat" else width, freq_dim=time_dim)
        n_in = d * self.in_features + (time_dim if time_mode == "concat" else 0)
        self.layers = nn.ModuleList([nn.Linear(n_in if i == 0 else width, width) for i in range(depth)])
        # one projection of the embedding per layer: each depth gets its own view of t
        self.time_proj = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)]) if time_mode == "add" else None
        self.act, self.drop = nn.SiLU(), nn.Dropout(dropout)
        self.out = nn.Linear(width, d * self.out_features)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input(self, h, t)
        B = h.shape[0]
        x, emb = h.reshape(B, -1), self.time_embed(t)
        if self.time_mode == "concat":
            x = torch.cat([x, emb.to(x.dtype)], dim=-1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.time_proj is not None:
                x = x + self.time_proj[i](self.act(emb))
            x = self.drop(self.act(x))
        return self.out(x).reshape(B, *self.data_shape, self.out_features)
