"""A GPT-style causal Transformer language model: the baseline the Koopman ResNet-BK models are compared
against.

Token + learned position embeddings, `n_layers` pre-LayerNorm blocks (causal multi-head self-attention, then a
4·d GELU MLP, each a residual branch `x + f(LN(x))`), a final LayerNorm and a linear LM head with a bias. The
embeddings, block form, final norm and head are laid out as in `KoopmanResNetBKLM`, so at matched parameter
count the two models differ in the mixing layers only. With `tie_weights` the head shares the token embedding
matrix and keeps its own bias.

For a fair comparison pick the width with `match_transformer_width`: the parameter count is a closed form in
d_model (`transformer_param_count`), so the width whose count is closest to the Koopman model's is found
exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kbk.errors import settings_or_fields
from kbk.models.config import TransformerConfig
from kbk.models.output import LMOutput

MLP_RATIO = 4


def transformer_param_count(
    vocab_size: int, d_model: int, n_layers: int, n_seq: int, tie_weights: bool = False
) -> int:
    """Parameters of `TransformerLM` with these shapes (n_heads does not change the count).

    embeddings   V·d (tokens) + N·d (positions)
    per block    LN 2d + qkv (3d² + 3d) + out proj (d² + d) + LN 2d + MLP (4d² + 4d) + (4d² + d)
                 = 12d² + 13d
    final LN     2d
    LM head      V·d + V; only the bias V when the weight is tied to the token embedding
    """
    d = d_model
    per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (MLP_RATIO * d * d + MLP_RATIO * d)
    per_block += MLP_RATIO * d * d + d
    head = vocab_size + (0 if tie_weights else vocab_size * d)
    return vocab_size * d + n_seq * d + n_layers * per_block + 2 * d + head


def match_transformer_width(
    target_params: int, vocab_size: int, n_layers: int, n_seq: int, n_heads: int, tie_weights: bool = False
) -> int:
    """The d_model, a positive multiple of n_heads, whose `transformer_param_count` is closest to
    target_params.

    The count is a·d² + b·d + c with a, b, c >= 0, increasing in d, so the real root of
    a·d² + b·d + c = target brackets the answer: the best multiple of n_heads is next to it.
    Ties go to the smaller width.
    """
    if target_params <= 0 or n_heads <= 0:
        raise ValueError(f"target_params and n_heads must be positive, got {target_params}, {n_heads}")
    # Read a, b, c off the count itself so this cannot drift from the formula.
    c0, c1, c2 = (transformer_param_count(vocab_size, d, n_layers, n_seq, tie_weights) for d in (0, 1, 2))
    a = (c2 - 2 * c1 + c0) / 2
    b = c1 - c0 - a
    rest = max(0.0, target_params - c0)
    root = rest / b if a == 0 else (-b + math.sqrt(b * b + 4 * a * rest)) / (2 * a)
    k = math.floor(root / n_heads)
    # One extra multiple on each side absorbs rounding in the square root for very large targets.
    candidates = [n_heads * j for j in range(max(1, k - 1), k + 3)]

    def miss(d: int) -> int:
        return abs(transformer_param_count(vocab_size, d, n_layers, n_seq, tie_weights) - target_params)

    return min(candidates, key=lambda d: (miss(d), d))


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)  # one matmul for q, k and v of all heads
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        # (B, N, D) -> (B, heads, N, head_dim): SDPA attends over the second-to-last axis per (batch, head).
        q, k, v = (t.view(B, N, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).reshape(B, N, D)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, MLP_RATIO * d_model)
        self.proj = nn.Linear(MLP_RATIO * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(LN x), then x + mlp(LN x)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Causal Transformer LM: `forward(idx)` maps token ids (B, N), N <= n_seq, to next-token logits
    (B, N, V)."""

    def __init__(
        self, vocab_size: int, config: TransformerConfig | None = None, tie_weights: bool = False, **settings: Any
    ) -> None:
        """`config` or, in its place, `TransformerConfig`'s fields as keywords (`TransformerLM(256, d_model=32)`)."""
        super().__init__()
        config = settings_or_fields(TransformerConfig, config, settings)
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.config = config
        self.n_seq = config.n_seq  # what a caller may feed at most (kbk.generate's window)
        d_model, n_heads, dropout = config.d_model, config.n_heads, config.dropout
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(config.n_seq, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        if tie_weights:
            self.head.weight = self.tok_emb.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2's initialisation: N(0, 0.02) for weights and embeddings, zero biases. The projections that
        # write into the residual stream get std 0.02/sqrt(2·n_layers), so the stream's variance at the top
        # does not grow with depth (each block adds two such branches).
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layers))

    #: No Koopman companions: the trainer's Koopman terms, modes and diagnostics never apply.
    has_koopman = False

    def koopman_dynamics(self) -> list[nn.Module]:
        return []

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: one, every parameter decaying."""
        return [{"params": list(self.parameters()), "weight_decay": weight_decay}]

    def forward(self, idx: torch.Tensor) -> LMOutput:
        """Logits (B, N, V) and no Koopman terms (the same result shape as every kbk language model)."""
        B, N = idx.shape
        if N > self.n_seq:
            raise ValueError(f"sequence length {N} exceeds the model's n_seq={self.n_seq}")
        pos = torch.arange(N, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return LMOutput(self.head(self.ln_f(x)), [])
