"""The official BFN code's CIFAR-10 network: the VDM UNet (addtt/variational-diffusion-models) with the BFN
changes (networks/unet_vdm.py there), rewritten with the official module names so its checkpoints load.

No down-sampling: `n_blocks` residual blocks at full resolution, a middle attention block, `n_blocks + 1`
blocks back with U-Net skips. Input: the adapter's channels plus sin/cos(2^n 2 pi x), n = 5, 6 per channel;
time: 128 sinusoids of (t + 0.001) * 1000. Output: the last features concatenated with the adapter's input,
then the output adapter.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from suite.nets.official.adapters import tokens

Tensor = torch.Tensor


def vdm_time_embedding(t: Tensor, dim: int, max_timescale: float = 10_000, min_timescale: float = 1) -> Tensor:
    """[sin, cos](1000 t * s_j), s_j log-spaced from 1/min to 1/max timescale (sin first, as in VDM)."""
    steps = t * 1000.0
    inv = torch.logspace(-np.log10(min_timescale), -np.log10(max_timescale), dim // 2, device=t.device)
    emb = steps.to(torch.float32)[:, None] * inv[None, :]
    return torch.cat([emb.sin(), emb.cos()], 1)


def fourier_channels(x: Tensor, exponents=(5.0, 6.0)) -> Tensor:
    """(B, 2 F C, H, W): sin then cos of 2^n 2 pi x for each exponent n (outer) and channel (inner)."""
    freqs = (2.0 ** torch.tensor(exponents, dtype=x.dtype, device=x.device)) * 2 * math.pi
    f = (freqs.view(-1, *([1] * (x.dim() - 1))) * x.unsqueeze(1)).flatten(1, 2)
    return torch.cat([f.sin(), f.cos()], 1)


class ResnetBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int, condition_dim: int, dropout_prob: float, norm_groups: int):
        super().__init__()
        self.net1 = nn.Sequential(nn.GroupNorm(norm_groups, ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.cond_proj = nn.Linear(condition_dim, ch_out, bias=False)
        self.net2 = nn.Sequential(nn.GroupNorm(norm_groups, ch_out), nn.SiLU(), nn.Dropout(dropout_prob),
                                  nn.Conv2d(ch_out, ch_out, 3, padding=1))  # fmt: skip
        self.skip_conv = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else None

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.net2(self.net1(x) + self.cond_proj(cond)[:, :, None, None])
        return (x if self.skip_conv is None else self.skip_conv(x)) + h


class Attention(nn.Module):
    """Heads inside the channels: qkv chunked into q, k, v first, then each split into heads."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: Tensor) -> Tensor:
        spatial = qkv.shape[2:]
        qkv = qkv.reshape(*qkv.shape[:2], -1)
        b, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.chunk(3, dim=1)
        scale = ch ** (-1 / 4)
        shape = (b * self.n_heads, ch, length)
        q, k, v = (q * scale).view(*shape), (k * scale).view(*shape), v.reshape(*shape)
        w = torch.einsum("bct,bcs->bts", q, k)
        w = torch.softmax(w.float(), -1).to(w.dtype)
        out = torch.einsum("bts,bcs->bct", w, v).reshape(b, self.n_heads * ch, length)
        return out.view(b, -1, *spatial).contiguous()


class AttentionBlock(nn.Module):
    def __init__(self, n_heads: int, n_channels: int, norm_groups: int):
        super().__init__()
        self.layers = nn.Sequential(nn.GroupNorm(norm_groups, n_channels), nn.Conv2d(n_channels, 3 * n_channels, 1),
                                    Attention(n_heads), nn.Conv2d(n_channels, n_channels, 1))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x) + x


class UpDownBlock(nn.Module):
    def __init__(self, resnet_block: ResnetBlock, attention_block: AttentionBlock | None = None):
        super().__init__()
        self.resnet_block, self.attention_block = resnet_block, attention_block

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = self.resnet_block(x, cond)
        return x if self.attention_block is None else self.attention_block(x)


class UNetVDM(nn.Module):
    """The official UNetVDM; `input_adapter` / `output_adapter` are submodules, as there."""

    def __init__(self, input_adapter: nn.Module, output_adapter: nn.Module, embedding_dim: int = 128,
                 n_blocks: int = 32, n_attention_heads: int = 1, dropout_prob: float = 0.1, norm_groups: int = 32,
                 input_channels: int = 3, use_fourier_features: bool = True, attention_everywhere: bool = False,
                 image_size: int = 32):
        super().__init__()
        self.input_adapter, self.output_adapter = input_adapter, output_adapter
        self.embedding_dim, self.input_channels, self.image_size = embedding_dim, input_channels, image_size
        self.use_fourier_features = use_fourier_features
        d = embedding_dim
        attn = dict(n_heads=n_attention_heads, n_channels=d, norm_groups=norm_groups)
        res = dict(condition_dim=4 * d, dropout_prob=dropout_prob, norm_groups=norm_groups)
        self.embed_conditioning = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, 4 * d), nn.SiLU())
        self.conv_in = nn.Conv2d(input_channels * (5 if use_fourier_features else 1), d, 3, padding=1)

        def block(ch_in):
            return UpDownBlock(ResnetBlock(ch_in, d, **res), AttentionBlock(**attn) if attention_everywhere else None)

        self.down_blocks = nn.ModuleList(block(d) for _ in range(n_blocks))
        self.mid_resnet_block_1 = ResnetBlock(d, d, **res)
        self.mid_attn_block = AttentionBlock(**attn)
        self.mid_resnet_block_2 = ResnetBlock(d, d, **res)
        self.up_blocks = nn.ModuleList(block(2 * d) for _ in range(n_blocks + 1))
        self.conv_out = nn.Sequential(nn.GroupNorm(norm_groups, d), nn.SiLU(), nn.Conv2d(d, d, 3, padding=1))

    def forward(self, data: Tensor, t: Tensor) -> Tensor:
        """data, t: (B, H, W, C) (the official layout) -> the output adapter's (B, H*W, C, height)."""
        flat = self.input_adapter(data, t)
        x = flat.reshape(flat.shape[0], self.image_size, self.image_size, self.input_channels)
        cond = self.embed_conditioning(vdm_time_embedding(t.float().flatten(start_dim=1)[:, 0] + 0.001,
                                                          self.embedding_dim))  # fmt: skip
        h = x.permute(0, 3, 1, 2).contiguous()
        if self.use_fourier_features:
            h = torch.cat([h, fourier_channels(h)], 1)
        h = self.conv_in(h)
        hs = []
        for blk in self.down_blocks:
            hs.append(h)
            h = blk(h, cond)
        hs.append(h)
        h = self.mid_resnet_block_2(self.mid_attn_block(self.mid_resnet_block_1(h, cond)), cond)
        for blk in self.up_blocks:
            h = blk(torch.cat([h, hs.pop()], 1), cond)
        out = tokens(self.conv_out(h).permute(0, 2, 3, 1).contiguous())
        return self.output_adapter(torch.cat([tokens(x), out], -1))
