"""`transformer`: a non-causal (bidirectional) transformer for sequences, nanoGPT style.

(B, L, F_in) -> Linear(F_in -> d) + fixed sinusoidal positions + time embedding -> n_layers x pre-LN
(self-attention with no mask, MLP) -> LayerNorm [-> concat the input embedding: "skip"] -> Linear(-> F_out).

Memory is linear in the feature count K: the only K-sized objects are the two (K x d) linear maps and
the (B, L, K) input/output; attention is (B, heads, L, L) and never sees K.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from suite.nets.embed import LinearTimeEmbedding, TimeEmbedding, check_input, check_size


def transformer_text8_paper() -> dict:
    """BFN paper, text8: non-causal GPT, 24 layers x 768, 12 heads, dropout 0, skip, bias; the reference's
    input adapter adds fixed sinusoidal positions (base 1000) and Linear(2t - 1). 170.2M parameters in the
    paper; 170.18M here with K = 27 (tests/test_nets.py)."""
    return dict(d_model=768, n_layers=24, n_heads=12, dropout=0.0, skip=True, time_embed="linear", pos_base=1000.0)


def transformer_tiny() -> dict:
    """Two layers x 32, two heads of 16 (CPU attention is slow with tiny heads): for CPU tests."""
    return dict(d_model=32, n_layers=2, n_heads=2)


def sinusoidal_positions(L: int, d: int, base: float) -> torch.Tensor:
    """Attention-is-all-you-need positions: pe[p, 2i] = sin(p / base^(2i/d)), pe[p, 2i+1] = cos(p / base^(2i/d))."""
    pos = torch.arange(L, dtype=torch.float64)[:, None]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(L, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv[: d // 2])
    return pe.float()


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float, bias: bool):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = (z.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2) for z in self.c_attn(x).split(d, 2))
        # is_causal=False: every position attends to every other (BFN sees the whole sequence at once)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=False)
        return self.resid_drop(self.c_proj(y.transpose(1, 2).reshape(B, L, d)))


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float, bias: bool, mlp_ratio: int):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d, bias=bias), SelfAttention(d, n_heads, dropout, bias)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.mlp = nn.Sequential(
            nn.Linear(d, mlp_ratio * d, bias=bias), nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * d, d, bias=bias), nn.Dropout(dropout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(
        self,
        data_shape: tuple[int, ...],
        in_features: int,
        out_features: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.0,
        bias: bool = True,
        mlp_ratio: int = 4,
        time_embed: str = "linear",
        positions: bool = True,
        pos_base: float = 10000.0,
        skip: bool = False,
    ):
        super().__init__()
        self.data_shape = check_size("Transformer", data_shape, in_features, out_features, (1,), "(L,) (a sequence)")
        self.in_features, self.out_features = int(in_features), int(out_features)
        if d_model < 1 or n_heads < 1 or d_model % n_heads or n_layers < 0:
            raise ValueError(
                f"Transformer: d_model ({d_model}) must be a positive multiple of n_heads ({n_heads}), "
                f"and n_layers ({n_layers}) >= 0"
            )
        if time_embed not in ("linear", "fourier"):
            raise ValueError(
                f"Transformer: time_embed must be 'linear' (BFN reference) or 'fourier', not {time_embed!r}"
            )
        self.skip = skip
        self.inp = nn.Linear(self.in_features, d_model)  # K x d for K classes: linear in K
        self.t_embed = LinearTimeEmbedding(d_model) if time_embed == "linear" else TimeEmbedding(d_model)
        pe = sinusoidal_positions(self.data_shape[0], d_model, pos_base) if positions else torch.zeros(1, d_model)
        self.register_buffer("pos", pe, persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, dropout, bias, mlp_ratio) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.head = nn.Linear(2 * d_model if skip else d_model, self.out_features, bias=bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("c_proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * max(n_layers, 1)))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input(self, h, t)
        x_in = self.inp(h) + self.pos + self.t_embed(t)[:, None, :]
        x = self.drop(x_in)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if self.skip:  # BFN reference: the head also sees the input embedding
            x = torch.cat([x, x_in.to(x.dtype)], dim=-1)
        return self.head(x)
