"""The Koopman ResNet-BK language model, top to bottom.

Block l maps x_l -> x_{l+1} = x_l + f_l(u_l) with u_l = LN_l(x_l) (pre-LayerNorm residual; f_l a ResNet-BK layer).
Its Koopman companion learns that step in a lifted space, with one convention everywhere (column vectors):

    z = φ(u),   z⁺ = φ(u + Δ),   z⁺ ≈ K z            (rows as samples: Z⁺ ≈ Z Kᵀ)

where Δ = f_l(u) is the block's increment and u + Δ is the next state in the block's own (normalised) frame. The
unlift ψ maps lifted states back, so ψ(K φ(u)) predicts u + Δ, and **Koopman mode** replaces f_l(u) by
ψ(K φ(u)) − u. With K = I and ψ∘φ ≈ id that increment is ≈ 0: the identity operator is "skip the layer", the
natural baseline and the natural prior for DMD (ridge toward I). The training terms, all on sampled tokens:

    linear  ‖z⁺ − K z‖²                      (the seed's auxiliary loss, in its right convention)
    recon   ‖ψ(z⁺) − (u + Δ)‖²               (trains ψ; without it φ = const, K = I is a zero-loss collapse)
    pred    ‖ψ(K z) − (u + Δ)‖²              (exactly what Koopman mode outputs)

`detach_backbone` (default) stops these terms from moving the language model itself; turn it off to study the
seed's setting, where the auxiliary loss also pulls the backbone (toward small increments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kbk.koopman.dmd import StreamingDMD
from kbk.models.resnet_bk import ResNetBKLayer

OPERATOR_UPDATES = ("gradient", "dmd", "both")
OPERATOR_INITS = ("identity_noise", "orthogonal")
LAYER_MODES = ("standard", "koopman", "skip")
# The linear term's penalty: squared error, or the seed's Huber (smooth L1 with beta 1, mean over entries).
LINEAR_LOSSES = {"mse": F.mse_loss, "huber": F.smooth_l1_loss}


@dataclass
class KoopmanOptions:
    """Everything about the Koopman companions. `dim` is koopman_dim; `dmd` holds StreamingDMD keyword arguments."""

    dim: int = 256
    operator_update: str = "both"  # who writes K: "gradient" (DMD only diagnoses), "dmd" (K is a buffer), "both"
    init: str = "identity_noise"  # K0 = I + init_scale·randn/√k (spectral radius ≈ 1 + init_scale), or "orthogonal"
    init_scale: float = 0.01
    detach_backbone: bool = True
    detach_targets: bool = False  # stop-gradient through z⁺ in the linear term
    linear_weight: float = 1.0
    linear_loss: str = "mse"  # "mse" | "huber" (the seed's auxiliary loss, with recon/pred weights 0)
    recon_weight: float = 1.0
    pred_weight: float = 1.0
    sample_tokens: int | None = 256  # tokens per step for the Koopman terms; None = all
    # The Koopman terms (and their backward) on every n-th training step only; the steps between still lift the
    # sampled pairs for DMD (forward only). 1 = every step. Trades the Koopman-mode gap for speed: measured in
    # experiments/benchmarks/trial_cost_results.md.
    terms_interval: int = 1
    dmd: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"koopman dim must be > 0, got {self.dim}")
        if self.operator_update not in OPERATOR_UPDATES:
            raise ValueError(f"operator_update must be one of {OPERATOR_UPDATES}, got {self.operator_update!r}")
        if self.init not in OPERATOR_INITS:
            raise ValueError(f"init must be one of {OPERATOR_INITS}, got {self.init!r}")
        if self.linear_loss not in LINEAR_LOSSES:
            raise ValueError(f"linear_loss must be one of {tuple(LINEAR_LOSSES)}, got {self.linear_loss!r}")
        if self.sample_tokens is not None and self.sample_tokens <= 0:
            raise ValueError(f"sample_tokens must be > 0 or None (all tokens), got {self.sample_tokens}")
        if self.terms_interval < 1:
            raise ValueError(f"terms_interval must be >= 1, got {self.terms_interval}")


def initial_operator(k: int, init: str, scale: float) -> torch.Tensor:
    if init == "orthogonal":
        q, r = torch.linalg.qr(torch.randn(k, k))
        return q * torch.sign(torch.diagonal(r))  # sign fix makes the draw uniform (Haar)
    return torch.eye(k) + scale * torch.randn(k, k) / math.sqrt(k)


class KoopmanDynamics(nn.Module):
    """Lift φ, operator K, unlift ψ and a streaming DMD estimator for one block."""

    def __init__(self, d_model: int, options: KoopmanOptions) -> None:
        super().__init__()
        k = options.dim
        self.options = options
        self.lift = nn.Sequential(nn.Linear(d_model, k), nn.Tanh(), nn.Linear(k, k))
        self.unlift = nn.Sequential(nn.Linear(k, k), nn.Tanh(), nn.Linear(k, d_model))
        k0 = initial_operator(k, options.init, options.init_scale)
        if options.operator_update == "dmd":
            self.register_buffer("operator", k0.clone())
        else:
            self.operator = nn.Parameter(k0.clone())
        self.register_buffer("initial_operator", k0)
        self.dmd = StreamingDMD(k, **options.dmd)

    def advance(self, z: torch.Tensor) -> torch.Tensor:
        """One step of the linear dynamics on row vectors: z Kᵀ (= (K zᵀ)ᵀ)."""
        return z @ self.operator.T

    def increment(self, u: torch.Tensor) -> torch.Tensor:
        """Koopman mode's replacement for the block's increment f(u)."""
        return self.unlift(self.advance(self.lift(u))) - u

    @torch.no_grad()
    def pairs(self, u: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Only the lifted pairs `z = φ(u)`, `z⁺ = φ(u + Δ)` of sampled rows: DMD's data on a step without terms."""
        return {"z": self.lift(u), "z_next": self.lift(u + delta)}

    def terms(self, u: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training terms on (already sampled) rows u (M, d) and increments delta (M, d)."""
        opts = self.options
        if opts.detach_backbone:
            u, delta = u.detach(), delta.detach()
        nxt = u + delta
        z, z_next = self.lift(u), self.lift(nxt)
        target = z_next.detach() if opts.detach_targets else z_next
        z_pred = self.advance(z)
        linear = LINEAR_LOSSES[opts.linear_loss](z_pred, target)
        recon = F.mse_loss(self.unlift(z_next), nxt)
        pred = F.mse_loss(self.unlift(z_pred), nxt)
        total = opts.linear_weight * linear + opts.recon_weight * recon + opts.pred_weight * pred
        return {
            "total": total, "linear": linear, "recon": recon, "pred": pred,
            # detached copies for DMD and diagnostics
            "z": z.detach(), "z_next": z_next.detach(), "u": u.detach(), "delta": delta.detach(),
        }


class ResNetBKBlock(nn.Module):
    """Pre-LayerNorm residual block x + f(LN x), with an optional Koopman companion."""

    def __init__(self, d_model: int, layer_kwargs: dict[str, Any], koopman: KoopmanOptions | None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.layer = ResNetBKLayer(d_model, **layer_kwargs)
        self.koopman = KoopmanDynamics(d_model, koopman) if koopman is not None else None

    def forward(
        self, x: torch.Tensor, mode: str = "standard", sample: torch.Tensor | None = None, pairs_only: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if mode == "skip":
            return x, None
        u = self.norm(x)
        if mode == "koopman":
            if self.koopman is None:
                raise ValueError("Koopman mode needs a model built with Koopman components (koopman_dim > 0)")
            return x + self.koopman.increment(u), None
        delta = self.layer(u)
        terms = None
        if sample is not None and self.koopman is not None:
            flat_u, flat_delta = u.reshape(-1, u.shape[-1]), delta.reshape(-1, delta.shape[-1])
            rows = flat_u[sample], flat_delta[sample]
            terms = self.koopman.pairs(*rows) if pairs_only else self.koopman.terms(*rows)
        return x + delta, terms


class KoopmanResNetBKLM(nn.Module):
    """Token + position embeddings, ResNet-BK blocks (each with a Koopman companion unless `koopman=None`),
    final LayerNorm, LM head. `koopman=None` is the plain ResNet-BK LM, the baseline with Koopman off."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 4,
        n_seq: int = 128,
        num_experts: int = 4,
        top_k: int = 1,
        dropout: float = 0.1,
        v_max: float = 3.0,
        z: complex = 1j,
        bk_grad: str = "exact",
        causal: bool = True,
        koopman: KoopmanOptions | None = None,
        moe_scale_by_router: bool = True,
    ) -> None:
        super().__init__()
        self.n_seq = n_seq
        self.koopman_options = koopman
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(n_seq, d_model)
        layer_kwargs = dict(
            num_experts=num_experts, top_k=top_k, dropout=dropout, v_max=v_max, z=z, bk_grad=bk_grad, causal=causal,
            moe_scale_by_router=moe_scale_by_router,
        )
        self.blocks = nn.ModuleList(ResNetBKBlock(d_model, layer_kwargs, koopman) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size)

    @property
    def has_koopman(self) -> bool:
        return self.koopman_options is not None

    def koopman_dynamics(self) -> list[KoopmanDynamics]:
        return [b.koopman for b in self.blocks if b.koopman is not None]

    def forward(
        self,
        idx: torch.Tensor,
        modes: str | list[str] = "standard",
        koopman_terms: bool = False,
        pairs_only: bool = False,
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Logits (B, N, vocab) and, with `koopman_terms`, each block's Koopman training terms (with `pairs_only`,
        only its lifted pairs `z`, `z_next`, without gradient).

        `modes` is one of "standard" | "koopman" | "skip" for every block, or a list with one per block.
        """
        b, n = idx.shape
        if isinstance(modes, str):
            modes = [modes] * len(self.blocks)
        x = self.embed(idx)
        sample = None
        if koopman_terms and self.has_koopman:
            m = self.koopman_options.sample_tokens
            sample = torch.randperm(b * n, device=idx.device)[:m] if m is not None and m < b * n else torch.arange(
                b * n, device=idx.device
            )
        terms = []
        for block, mode in zip(self.blocks, modes, strict=True):
            x, t = block(x, mode=mode, sample=sample, pairs_only=pairs_only)
            if t is not None:
                terms.append(t)
        return self.head(x), terms

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings of (B, N) token ids: the first block's input."""
        n = idx.shape[1]
        if n > self.n_seq:
            raise ValueError(f"sequence length {n} exceeds the model's n_seq={self.n_seq}")
        return self.token_embedding(idx) + self.position_embedding(torch.arange(n, device=idx.device))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last block's output."""
        return self.lm_head(self.final_norm(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
