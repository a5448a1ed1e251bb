"""The official BFN code's MNIST network: improved-diffusion's UNet (openai/improved-diffusion) with the BFN
changes (networks/unet_improved.py there), rewritten with the official module names so its checkpoints load.

  input adapter -> (B, H, W, in_channels) -> optional Linear input projection -> UNet (time embedding of
  t * 4000) -> (B, H*W, out_channels), concatenated with the (projected) input if `skip` -> output adapter.

Not carried over: fp16 conversion helpers, gradient checkpointing, class conditioning and scale-shift norm
(the released configs use none of them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from suite.nets.official.adapters import tokens

Tensor = torch.Tensor


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (the official `normalization`: 32 groups)."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(steps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[cos, sin](steps * max_period^(-j/half)), j = 0..half-1 (cos first, as in improved-diffusion)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(steps.device)
    args = steps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], -1) if dim % 2 else emb


class TimestepEmbedSequential(nn.Sequential):
    """Passes the time embedding to the children that take one (ResBlock)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None):
        super().__init__()
        out = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out))
        self.out_layers = nn.Sequential(GroupNorm32(out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Spatial self-attention; qkv is split per head as [q_h; k_h; v_h] (improved-diffusion's QKVAttention)."""

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        qkv = qkv.reshape(b * self.num_heads, -1, qkv.shape[2])
        ch = qkv.shape[1] // 3
        q, k, v = torch.split(qkv, ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))  # on q and k separately: steadier in low precision
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), -1).type(w.dtype)
        h = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, x.shape[-1])
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class UNetModel(nn.Module):
    """The official UNetModel (dims = 2); `input_adapter` / `output_adapter` are submodules, as there."""

    def __init__(self, input_adapter: nn.Module, output_adapter: nn.Module, image_size: int = 32,
                 in_channels: int = 3, model_channels: int = 128, out_channels: int = 128, num_res_blocks: int = 3,
                 attention_resolutions=(8, 16), dropout: float = 0.0, channel_mult=(1, 2, 2, 2),
                 conv_resample: bool = True, num_heads: int = 4, num_heads_upsample: int = -1, skip: bool = True,
                 project_input: bool = False):
        super().__init__()
        self.input_adapter, self.output_adapter = input_adapter, output_adapter
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
        self.skip, self.project_input = skip, project_input
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        if project_input:
            self.input_projection = nn.Linear(in_channels, model_channels)
            in_channels = model_channels
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb, dropout, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb, dropout), AttentionBlock(ch, num_heads), ResBlock(ch, emb, dropout))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, dropout, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, data: Tensor, t: Tensor) -> Tensor:
        """data, t: (B, H, W, C) (the official layout) -> the output adapter's (B, H*W, C, height)."""
        flat = self.input_adapter(data, t)
        x = flat.reshape(flat.shape[0], self.image_size, self.image_size, self.in_channels)
        if self.project_input:
            x = self.input_projection(x)
        emb = self.time_embed(timestep_embedding(t.flatten(start_dim=1)[:, 0] * 4000, self.model_channels))
        h, hs = x.permute(0, 3, 1, 2).contiguous(), []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], 1), emb)
        out = tokens(self.out(h.type(x.dtype)).permute(0, 2, 3, 1).contiguous())
        if self.skip:
            out = torch.cat([tokens(x), out], -1)
        return self.output_adapter(out)
