"""`conv`: a small residual conv net for images, same spatial size throughout (no down-sampling).

(B, C, H, W, F) -> (B, C*F, H, W) -> conv_in -> n_blocks x ResBlock(GroupNorm, SiLU, conv, FiLM(t), ...)
-> GroupNorm, SiLU, conv_out -> (B, C*F_out, H, W) -> (B, C, H, W, F_out). Cheap enough to train on CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from suite.nets.embed import TimeEmbedding, check_input, check_size


def to_channels(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W, F) -> (B, C*F, H, W), channel index c*F + f (features of one data channel adjacent)."""
    B, C, H, W, Fe = h.shape
    return h.permute(0, 1, 4, 2, 3).reshape(B, C * Fe, H, W)


def from_channels(x: torch.Tensor, C: int) -> torch.Tensor:
    """Inverse of `to_channels`: (B, C*F, H, W) -> (B, C, H, W, F)."""
    B, CF, H, W = x.shape
    return x.reshape(B, C, CF // C, H, W).permute(0, 1, 3, 4, 2)


def image_shape(name: str, data_shape) -> tuple[int, int, int]:
    """(C, H, W); a 2-D (H, W) shape is one channel."""
    shape = tuple(int(s) for s in data_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"{name}: images need data_shape (C, H, W) or (H, W), got {tuple(data_shape)}")
    return shape


class ResBlock(nn.Module):
    """x + conv(drop(SiLU(FiLM_t(GN(conv(SiLU(GN(x)))))))): improved-diffusion's ResBlock with scale-shift norm."""

    def __init__(self, ch: int, temb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(temb_dim, 2 * ch)
        self.norm2, self.conv2 = nn.GroupNorm(groups, ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(self.drop(F.silu(h)))


class ConvNet(nn.Module):
    def __init__(
        self,
        data_shape: tuple[int, ...],
        in_features: int,
        out_features: int,
        channels: int = 32,
        n_blocks: int = 2,
        norm_groups: int = 8,
        time_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_size("ConvNet", data_shape, in_features, out_features, ndim=(2, 3), what="(C, H, W) or (H, W)")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.in_features, self.out_features = int(in_features), int(out_features)
        C = image_shape("ConvNet", data_shape)[0]
        if channels < 1 or n_blocks < 1 or norm_groups < 1 or channels % norm_groups:
            raise ValueError(
                f"ConvNet: channels ({channels}) must be a positive multiple of norm_groups ({norm_groups}) "
                f"and n_blocks ({n_blocks}) >= 1"
            )
        temb = time_dim or 4 * channels  # improved-diffusion's 4x width
        self.C = C
        self.time_embed = TimeEmbedding(temb, freq_dim=channels)
        self.conv_in = nn.Conv2d(C * self.in_features, channels, 3, padding=1)
        self.blocks = nn.ModuleList([ResBlock(channels, temb, norm_groups, dropout) for _ in range(n_blocks)])
        self.norm_out = nn.GroupNorm(norm_groups, channels)
        self.conv_out = nn.Conv2d(channels, C * self.out_features, 3, padding=1)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input(self, h, t)
        B = h.shape[0]
        x = to_channels(h.reshape(B, self.C, *h.shape[-3:]))
        emb = F.silu(self.time_embed(t))
        x = self.conv_in(x)
        for block in self.blocks:
            x = block(x, emb)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return from_channels(x, self.C).reshape(B, *self.data_shape, self.out_features)
