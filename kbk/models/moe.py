"""Sparse mixture of experts: the feed-forward half of a ResNet-BK layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SparseMoE(nn.Module):
    """Top-k of `num_experts` two-layer ReLU experts (width 2·d), gated by a linear router.

    Each token goes to its `top_k` experts; an expert's output is weighted by its router probability (Switch
    Transformer style, not renormalised over the chosen experts), so the router receives gradient even at top-1.
    Tokens are dispatched, not computed densely: each expert runs only on the tokens routed to it.

    `scale_by_router=False` is the seed's top-1 layer: the chosen expert's output as it is (argmax routing), so
    the router gets no gradient and stays at its initialisation. The seed allowed only top-1 in that mode.
    """

    def __init__(
        self, d_model: int, num_experts: int = 4, top_k: int = 1, dropout: float = 0.1, scale_by_router: bool = True
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if not scale_by_router and top_k != 1:
            raise ValueError(f"unscaled expert outputs (the seed's MoE) need top_k=1, got top_k={top_k}")
        self.top_k = top_k
        self.scale_by_router = scale_by_router
        self.router = nn.Linear(d_model, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * d_model, d_model)
            )
            for _ in range(num_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs = F.softmax(self.router(tokens), dim=-1)
        gate, expert_idx = probs.topk(self.top_k, dim=-1)  # (T, k)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_idx, slot = (expert_idx == e).nonzero(as_tuple=True)
            if token_idx.numel() == 0:
                continue
            y = expert(tokens[token_idx])
            if self.scale_by_router:
                y = y * gate[token_idx, slot, None]
            out.index_add_(0, token_idx, y.to(out.dtype))  # under bf16 autocast y is bfloat16; a no-op otherwise
        return out.reshape(shape)
