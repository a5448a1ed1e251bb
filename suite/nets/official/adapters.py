"""The official BFN code's data adapters (nnaisense/bayesian-flow-networks, networks/adapters.py), rewritten.

Module and buffer names are the official ones, so an official state_dict loads key for key:

  FourierImageInputAdapter  image (B, H, W, C) and t (B, H, W, C) -> tokens (B, H*W, F): the pixel values,
                            optionally the "mask" feature 2t - 1 and Fourier position features, then a
                            Linear to `output_height` only if the feature count differs from it.
                            `pos_feats` is a persistent buffer even when unused (it is in the checkpoints).
  TextInputAdapter          probabilities (B, L, K) and t (B, L) -> Linear(2 theta - 1) + positions + Linear(2t - 1)
  OutputAdapter             (B, N, F) -> Linear -> (B, N, channels, height)
"""

from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


def tokens(x: Tensor) -> Tensor:
    """(B, ..., F) -> (B, N, F): the official `sandwich`."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def fourier_position_features(shape: tuple[int, int], n_bands: int = 64) -> Tensor:
    """(H*W, 4 n_bands + 2): sin and cos of pi f p for n_bands frequencies f in [1, size/2] per axis, then (x, y).

    p is the pixel's coordinate on a [-1, 1] grid (row-major, axis 0 first), as the official adapter builds it.
    """
    axes = [torch.linspace(-1.0, 1.0, steps=n) for n in shape]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    bands = torch.stack([torch.linspace(1.0, n / 2, steps=n_bands) for n in shape], 0)  # (2, n_bands)
    angles = math.pi * (pos[:, :, None] * bands[None]).reshape(pos.shape[0], -1)
    return torch.cat([angles.sin(), angles.cos(), pos], -1)


def sinusoid_positions(length: int, dim: int, base: float = 1000.0) -> Tensor:
    """(length, dim) fixed positions: even columns sin(p / base^(j/dim)), odd cos(p / base^(j/dim)), j the column.

    The official `pe_encode` (base 1000, not the Transformer paper's 10^4; the odd columns use their own index)."""
    pe = torch.zeros(length, dim)
    pos = torch.arange(length).unsqueeze(1)
    pe[:, 0::2] = torch.sin(pos / torch.pow(base, torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    pe[:, 1::2] = torch.cos(pos / torch.pow(base, torch.arange(1, dim, 2, dtype=torch.float32) / dim))
    return pe


class FourierImageInputAdapter(nn.Module):
    def __init__(self, input_channels: int = 3, input_shape: tuple[int, int] = (224, 224), n_freq_bands: int = 64,
                 output_height: int = 256, add_pos_feats: bool = True, add_mask: bool = True):
        super().__init__()
        self.add_pos_feats, self.add_mask = add_pos_feats, add_mask
        self.register_buffer("pos_feats", fourier_position_features(tuple(input_shape), n_freq_bands))
        n_feats = input_channels + (1 if add_mask else 0) + (self.pos_feats.shape[-1] if add_pos_feats else 0)
        self.output_projection = nn.Linear(n_feats, output_height) if n_feats != output_height else None

    def forward(self, img: Tensor, t: Tensor) -> Tensor:
        parts = [tokens(img)]
        if self.add_mask:
            parts.append(tokens(t).float()[..., :1] * 2 - 1)
        if self.add_pos_feats:
            parts.append(self.pos_feats.expand(img.shape[0], -1, -1))
        feats = torch.cat(parts, -1)
        return feats if self.output_projection is None else self.output_projection(feats)


class TextInputAdapter(nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, output_size: int = 256, learn_pos_embedding: bool = False):
        super().__init__()
        self.learn_pos_embedding = learn_pos_embedding
        if learn_pos_embedding:
            self.pos_embedding = nn.Embedding(seq_len, output_size)
        else:
            self.register_buffer("pos_embedding", sinusoid_positions(seq_len, output_size))
        self.inp_embedding = nn.Linear(vocab_size, output_size)
        self.t_embedding = nn.Linear(1, output_size)

    def forward(self, probs: Tensor, t: Tensor) -> Tensor:
        return self.embed(2 * probs - 1, t)

    def embed(self, h: Tensor, t: Tensor) -> Tensor:
        """The same from h = 2 theta - 1 (the suite's discrete-BFN input), t (B, L)."""
        pos = self.pos_embedding.weight[: h.shape[1]] if self.learn_pos_embedding else self.pos_embedding
        return self.inp_embedding(h) + pos.unsqueeze(0).expand(h.shape[0], -1, -1) + self.t_embedding((2 * t - 1)[..., None])


class OutputAdapter(nn.Module):
    def __init__(self, input_height: int, output_channels: int, output_height: int):
        super().__init__()
        self.output_channels, self.output_height = output_channels, output_height
        self.output_projection = nn.Linear(input_height, output_channels * output_height)

    def forward(self, x: Tensor) -> Tensor:
        out = self.output_projection(x)
        return out.reshape(out.shape[0], -1, self.output_channels, self.output_height)
