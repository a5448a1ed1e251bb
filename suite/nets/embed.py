"""Time embeddings and the input check every backbone shares.

t is the method's time in [0, 1] (BFN's t; a diffusion model's step index / T). Embeddings are
computed in float32 whatever the autocast dtype: sin/cos of large arguments lose all precision
in bfloat16.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer / DDPM sinusoidal features of `scale * t`: [cos(s t w_i), sin(s t w_i)], w_i = max_period^(-i/half).

    DDPM feeds integer steps 0..1000 with max period 10^4; scaling t in [0, 1] by 1000 keeps the same
    spread of frequencies. Unscaled, every frequency below ~1 rad would be nearly constant in t.
    Returns float32 (B, dim).
    """
    if dim < 2:
        raise ValueError(f"sinusoidal_embedding: dim must be >= 2, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd width: pad one zero column
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """sinusoidal(t) -> Linear -> SiLU -> Linear, as in improved-diffusion's `time_embed`."""

    def __init__(self, out_dim: int, freq_dim: int = 64, scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim, self.scale))


class LinearTimeEmbedding(nn.Module):
    """Linear(2t - 1): the BFN reference's text8 time input, added to every position."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(1, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.proj((2 * t.float() - 1)[:, None])


def check_input(net: nn.Module, h: torch.Tensor, t: torch.Tensor) -> None:
    """Raise a ValueError naming expected vs got shapes when (h, t) do not fit `net`'s signature.

    `net` carries `data_shape` and `in_features`; h must be (B, *data_shape, in_features) float,
    t must be (B,) float.
    """
    name = type(net).__name__
    shape, feat = tuple(net.data_shape), net.in_features
    want = f"(B, {', '.join(map(str, shape + (feat,)))})"
    if not isinstance(h, torch.Tensor) or not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: h and t must be tensors, got {type(h).__name__} and {type(t).__name__}")
    if h.dim() != len(shape) + 2 or tuple(h.shape[1:-1]) != shape or h.shape[-1] != feat:
        got_feat = h.shape[-1] if h.dim() else None
        hint = (
            f"; the last axis holds the per-dimension features: expected {feat}, got {got_feat}"
            if h.dim() == len(shape) + 2 and tuple(h.shape[1:-1]) == shape
            else f"; data_shape is {shape}, so h needs {len(shape) + 2} axes (batch, data axes, features)"
        )
        raise ValueError(f"{name}: expected h shaped {want}, got {tuple(h.shape)}{hint}")
    if not h.is_floating_point():
        raise ValueError(
            f"{name}: h must be a float tensor of features, got dtype {h.dtype}; "
            "turn class indices into features (e.g. one-hot or BFN's theta) before the backbone"
        )
    if t.shape != (h.shape[0],):
        raise ValueError(
            f"{name}: expected t shaped ({h.shape[0]},) (one time per example), got {tuple(t.shape)}; "
            "use t.expand(B) or torch.full((B,), t) for a shared time"
        )
    if not t.is_floating_point():
        raise ValueError(f"{name}: t must be float in [0, 1], got dtype {t.dtype}")


def check_size(
    name: str, data_shape, in_features: int, out_features: int, ndim: tuple[int, ...] | None = None, what: str = ""
) -> tuple[int, ...]:
    """Validate constructor arguments shared by every backbone; return data_shape as a tuple of ints.
    `ndim`: the allowed numbers of data axes; `what`: the shapes it accepts, in words, for the error."""
    shape = tuple(int(s) for s in data_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{name}: data_shape must be a non-empty tuple of positive ints, got {tuple(data_shape)}")
    if ndim is not None and len(shape) not in ndim:
        raise ValueError(f"{name}: needs data_shape {what or f'with {ndim} axes'}, got {shape}")
    if int(in_features) < 1 or int(out_features) < 1:
        raise ValueError(f"{name}: in_features and out_features must be >= 1, got {in_features} and {out_features}")
    return shape
