"""Small stand-in networks for baseline tests (the backbone signature net(h, t), no suite.nets needed)."""

import math

import torch
from torch import nn

from suite.data.base import DataSpec


def spec_of(K: int, shape=(6,)) -> DataSpec:
    return DataSpec("toy", "discrete", tuple(shape), K)


class TinyNet(nn.Module):
    """A small MLP on the flattened one-hot sequence and t (test stand-in for suite.nets)."""

    def __init__(self, shape, fin: int, fout: int, hidden: int = 64):
        super().__init__()
        self.shape, self.fout, D = tuple(shape), fout, math.prod(shape)
        self.m = nn.Sequential(nn.Linear(D * fin + 1, hidden), nn.SiLU(), nn.Linear(hidden, D * fout))

    def forward(self, h, t):
        B = h.shape[0]
        return self.m(torch.cat([h.reshape(B, -1), t[:, None].to(h.dtype)], 1)).reshape(B, *self.shape, self.fout)
