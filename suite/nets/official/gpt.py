"""The official BFN code's text8 network: nanoGPT made non-causal (networks/transformer.py there), rewritten
with the official module names so its checkpoints load.

Pre-LN blocks (LayerNorm eps 1e-5, tanh-approximated GELU), no attention mask; with `skip` the head sees
[final features, input embedding] (2 n_embd -> vocab_size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class SelfAttention(nn.Module):
    def __init__(self, n_head: int, n_embd: int, dropout: float, bias: bool, is_causal: bool):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout, self.is_causal = n_head, n_embd, dropout, is_causal

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for z in self.c_attn(x).split(self.n_embd, dim=2))  # fmt: skip
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.is_causal)  # fmt: skip
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, n_head: int, n_embd: int, dropout: float, bias: bool, is_causal: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.attn = SelfAttention(n_head, n_embd, dropout, bias, is_causal)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The official GPT; `input_adapter` is a submodule, as there (the released config has no output adapter)."""

    def __init__(self, input_adapter: nn.Module, vocab_size: int, n_layer: int = 12, n_head: int = 12,
                 n_embd: int = 768, dropout: float = 0.0, bias: bool = True, skip: bool = False,
                 is_causal: bool = False):
        super().__init__()
        self.input_adapter = input_adapter
        self.transformer = nn.ModuleDict(dict(
            drop=nn.Dropout(dropout),
            h=nn.ModuleList(Block(n_head, n_embd, dropout, bias, is_causal) for _ in range(n_layer)),
            ln_f=nn.LayerNorm(n_embd, eps=1e-5, bias=bias),
        ))  # fmt: skip
        self.skip = skip and not is_causal
        self.lm_head = nn.Linear((2 if skip else 1) * n_embd, vocab_size, bias=bias)

    def forward(self, probs: Tensor, t: Tensor) -> Tensor:
        """probs (B, L, K) (the flow's theta, the official input), t (B, L) -> logits (B, L, K)."""
        return self.forward_embedded(self.input_adapter(probs, t))

    def forward_embedded(self, x_in: Tensor) -> Tensor:
        x = self.transformer.drop(x_in)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        return self.lm_head(torch.cat([x, x_in], -1) if self.skip else x)
