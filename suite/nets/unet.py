"""`unet`: diffusers' `UNet2DModel`, built from a config (never `from_pretrained`), behind the shared signature.

(B, C, H, W, F) -> [Fourier features] -> (B, C*F', H, W) -> [1x1 input projection] -> zero-pad H, W to a
multiple of 2^(levels - 1) -> UNet2DModel(x, t * time_scale) -> crop -> [skip: concat the UNet's input]
-> [1x1 head] -> (B, C, H, W, F_out).

Time: diffusers' sinusoidal `Timesteps` has max period 10^4 and was built for integer steps 0..T; feeding
t in [0, 1] unscaled would leave all but the first few frequencies constant in t, so t is scaled by
`time_scale` (1000 as in DDPM; 4000 in the BFN reference's improved-DDPM UNet, `t * 4000`).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from suite.nets.conv import from_channels, image_shape, to_channels
from suite.nets.embed import check_input, check_size

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # config-only construction: never reach for the hub
from diffusers import UNet2DModel  # noqa: E402


def unet_mnist_paper() -> dict:
    """BFN paper, binarised MNIST: improved-DDPM UNet, 128 ch, mult (1, 2, 2), 2 res blocks, 4 heads,
    dropout 0.5, attention only in the middle block (the config lists (8, 16) but the net never reaches
    those resolutions). Reference: input projected to 128 ch, skip concat before the head, t * 4000,
    no scale-shift norm. 24.8M parameters in the paper; this config gives 24.81M (tests/test_nets.py).
    """
    return dict(
        block_out_channels=(128, 256, 256), layers_per_block=2, attn_levels=(False, False, False),
        mid_attention=True, attention_head_dim=64,  # 256 ch / 64 = 4 heads
        dropout=0.5, norm_num_groups=32, time_scale=4000.0, project_input=True, skip=True,
    )  # fmt: skip


def unet_cifar_vdm() -> dict:
    """VDM-style CIFAR-10 UNet (BFN paper: 32 blocks x 128 ch, no down-sampling, Fourier features,
    dropout 0.1; 30.7M). Approximated with one UNet2DModel level of 32 res blocks (33 on the way up,
    with skips), a mid block with attention, and Fourier features sin/cos(2^n pi x), n in (6, 7) (VDM's
    exact exponents unverified here). 30.59M parameters for 3 one-feature input channels: 0.4 % under the paper.
    """
    return dict(
        block_out_channels=(128,), layers_per_block=32, attn_levels=(False,), mid_attention=True,
        attention_head_dim=128, dropout=0.1, norm_num_groups=32, fourier_exponents=(6, 7),
    )  # fmt: skip


def unet_tiny() -> dict:
    """A ~160K-parameter UNet for CPU tests: two levels, one res block each, attention (2 heads) only in
    the middle block (CPU attention with tiny heads costs more than all the convolutions)."""
    return dict(
        block_out_channels=(16, 32), layers_per_block=1, attn_levels=(False, False), mid_attention=True,
        attention_head_dim=16, norm_num_groups=8,
    )  # fmt: skip


class UNet(nn.Module):
    def __init__(
        self,
        data_shape: tuple[int, ...],
        in_features: int,
        out_features: int,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 2,
        attn_levels: tuple[bool, ...] | None = None,
        mid_attention: bool = True,
        attention_head_dim: int = 32,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        time_scale: float = 1000.0,
        resnet_time_scale_shift: str = "default",
        project_input: bool = False,
        skip: bool = False,
        fourier_exponents: tuple[int, ...] = (),
    ):
        super().__init__()
        check_size("UNet", data_shape, in_features, out_features, ndim=(2, 3), what="(C, H, W) or (H, W)")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.C, H, W = image_shape("UNet", data_shape)
        chans = tuple(int(c) for c in block_out_channels)
        attn = tuple(attn_levels) if attn_levels is not None else (False,) * len(chans)
        if not chans or len(attn) != len(chans):
            raise ValueError(f"UNet: attn_levels {attn} needs one flag per level of block_out_channels {chans}")
        if any(c % norm_num_groups for c in chans):
            raise ValueError(f"UNet: block_out_channels {chans} must be divisible by norm_num_groups {norm_num_groups}")
        attn_chans = [c for c, a in zip(chans, attn, strict=True) if a] + ([chans[-1]] if mid_attention else [])
        if any(c % attention_head_dim for c in attn_chans):
            raise ValueError(
                f"UNet: attention channels {attn_chans} must be divisible by attention_head_dim {attention_head_dim}"
            )
        self.time_scale, self.skip = float(time_scale), bool(skip)
        self.multiple = 2 ** (len(chans) - 1)  # each level but the last halves H and W
        scales = torch.tensor([2.0**n * torch.pi for n in fourier_exponents])
        self.register_buffer("fourier_scales", scales, persistent=False)
        c_in = self.C * self.in_features * (1 + 2 * len(fourier_exponents))
        self.proj_in = nn.Conv2d(c_in, chans[0], 1) if project_input else None
        c_unet = chans[0] if project_input else c_in
        c_out = self.C * self.out_features
        self.unet = UNet2DModel(
            sample_size=(H + -H % self.multiple, W + -W % self.multiple),
            in_channels=c_unet,
            out_channels=chans[0] if skip else c_out,
            block_out_channels=chans,
            layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            mid_block_type="UNetMidBlock2D",
            add_attention=mid_attention,
            attention_head_dim=attention_head_dim,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            resnet_time_scale_shift=resnet_time_scale_shift,
            time_embedding_type="positional",
            flip_sin_to_cos=True,
            freq_shift=0,
        )
        # reference "skip": the head sees the UNet's input beside its output (per-pixel linear read-out)
        self.head = nn.Conv2d(c_unet + chans[0], c_out, 1) if skip else None

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input(self, h, t)
        B = h.shape[0]
        x = to_channels(h.reshape(B, self.C, *h.shape[-3:]))
        if len(self.fourier_scales):  # VDM: high-frequency features make fine bin structure visible
            z = x.float()[:, None] * self.fourier_scales[None, :, None, None, None]
            x = torch.cat([x, z.sin().flatten(1, 2), z.cos().flatten(1, 2)], dim=1)
        if self.proj_in is not None:
            x = self.proj_in(x)
        H, W = x.shape[-2:]
        ph, pw = -H % self.multiple, -W % self.multiple
        y = self.unet(F.pad(x, (0, pw, 0, ph)) if ph or pw else x, t.float() * self.time_scale).sample
        y = y[..., :H, :W]
        if self.head is not None:
            y = self.head(torch.cat([x.to(y.dtype), y], dim=1))
        return from_channels(y, self.C).reshape(B, *self.data_shape, self.out_features)
