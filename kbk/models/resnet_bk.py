"""The ResNet-BK layer: a sparse-MoE feed-forward plus BK-Core features of a learned potential.

Per position the MoE output defines a potential `v = clamp(Linear(ffn), ±v_max)`; the sequence of potentials is the
diagonal of the tridiagonal Hamiltonian `H = L + diag(v)` (L: the discrete Laplacian along the sequence); the BK-Core
returns `G_ii = [(H - zI)^{-1}]_ii`, whose real and imaginary parts are projected back to `d_model`.

`causal=False` is the seed's layer: `G_ii` depends on the potentials of *every* position, later ones included, so
position i's features see tokens after i (the dependence decays with distance but is not zero). A language model
built on it can read the token it is asked to predict. `causal=True` uses the resolvent of the leading block
`H[:i+1, :i+1]` at position i instead (`θ_{i-1}/θ_i`, the same continued fraction run left to right only), which
sees positions ≤ i alone. See `resolvent_diagonal` and `causal_resolvent_diagonal`.
"""

from __future__ import annotations

import torch
from torch import nn

from kbk.models.bk_core import causal_resolvent_diagonal, resolvent_diagonal
from kbk.models.config import ResNetBKConfig
from kbk.models.moe import SparseMoE


class ResNetBKLayer(nn.Module):
    def __init__(self, config: ResNetBKConfig) -> None:
        super().__init__()
        self.v_max = config.v_max
        self.z = config.z
        self.bk_grad = config.bk_grad
        self.causal = config.causal
        self.moe = SparseMoE(config.d_model, config.num_experts, config.top_k, config.dropout,
                             scale_by_router=config.moe_scale_by_router)
        self.v_proj = nn.Linear(config.d_model, 1)
        self.output_proj = nn.Linear(2, config.d_model)
        self.bk_scale = nn.Parameter(torch.tensor(1.0))

    def potential(self, ffn: torch.Tensor) -> torch.Tensor:
        return self.v_proj(ffn).squeeze(-1).clamp(-self.v_max, self.v_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ffn = self.moe(x)
        # The potential and the BK-Core's recursion stay in float32/complex64 under a bfloat16 autocast
        # (trainer.precision=bf16): the continued fraction near the real axis needs the digits. Without autocast
        # both the context and the promotion are no-ops.
        with torch.autocast(x.device.type, enabled=False):
            diag = -2.0 + self.potential(ffn.to(torch.promote_types(ffn.dtype, torch.float32)))
            if self.causal:
                g = causal_resolvent_diagonal(diag, z=self.z, grad=self.bk_grad)
            else:
                g = resolvent_diagonal(diag, z=self.z, grad=self.bk_grad)
        features = torch.stack([g.real, g.imag], dim=-1).to(ffn.dtype)
        return ffn + self.bk_scale * self.output_proj(features)
