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

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kbk.errors import settings_or_fields
from kbk.koopman import diagnostics as operator_diagnostics
from kbk.koopman.config import DMDConfig, KoopmanConfig, OperatorUpdate
from kbk.koopman.dmd import StreamingDMD
from kbk.models.config import ResNetBKConfig
from kbk.models.output import LMOutput
from kbk.models.resnet_bk import ResNetBKLayer

# The linear term's penalty by `KoopmanConfig.linear_loss`: squared error, or the seed's Huber (smooth L1 with
# beta 1, mean over entries).
LINEAR_LOSS_FUNCTIONS = {"mse": F.mse_loss, "huber": F.smooth_l1_loss}


@dataclass
class KoopmanOptions(KoopmanConfig):
    """`KoopmanConfig` with its DMD settings attached (a `DMDConfig` or its fields as a dict): the one-argument form
    of `KoopmanResNetBKLM(..., koopman=KoopmanOptions(dim=32, dmd={"buffer_size": 48}))` that scripts and
    tests/test_pinned_results.py use. New code passes `koopman=KoopmanConfig(...), dmd=DMDConfig(...)`."""

    dmd: DMDConfig | dict[str, Any] = field(default_factory=DMDConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.dmd, dict):
            self.dmd = DMDConfig(**self.dmd)


def initial_operator(k: int, init: str, scale: float) -> torch.Tensor:
    if init == "orthogonal":
        q, r = torch.linalg.qr(torch.randn(k, k))
        return q * torch.sign(torch.diagonal(r))  # sign fix makes the draw uniform (Haar)
    return torch.eye(k) + scale * torch.randn(k, k) / math.sqrt(k)


class KoopmanDynamics(nn.Module):
    """Lift φ, operator K, unlift ψ and a streaming DMD estimator for one block."""

    def __init__(self, d_model: int, config: KoopmanConfig, dmd: DMDConfig | None = None) -> None:
        super().__init__()
        k = config.dim
        self.config = config
        self.lift = nn.Sequential(nn.Linear(d_model, k), nn.Tanh(), nn.Linear(k, k))
        self.unlift = nn.Sequential(nn.Linear(k, k), nn.Tanh(), nn.Linear(k, d_model))
        k0 = initial_operator(k, config.init, config.init_scale)
        if config.operator_update == OperatorUpdate.dmd:
            self.register_buffer("operator", k0.clone())
        else:
            self.operator = nn.Parameter(k0.clone())
        self.register_buffer("initial_operator", k0)
        self.dmd = StreamingDMD(k, dmd if dmd is not None else DMDConfig())

    def advance(self, z: torch.Tensor) -> torch.Tensor:
        """One step of the linear dynamics on row vectors: z Kᵀ (= (K zᵀ)ᵀ)."""
        return z @ self.operator.T

    def increment(self, u: torch.Tensor) -> torch.Tensor:
        """Koopman mode's replacement for the block's increment f(u): ψ(K φ(u)) − u.

        Without autograd (evaluation, generation) and with more rows than `koopman_dim`, the three affine maps in
        the middle (φ's second Linear, K, ψ's first Linear) run as the one affine map they compose to
        (`folded_middle`): the same mathematics, rounded differently in the last float bits. With autograd on,
        the three maps run one by one, so gradients reach each of them exactly as they always have."""
        rows = u.numel() // u.shape[-1]
        if torch.is_grad_enabled() or rows <= self.config.dim:
            return self.unlift(self.advance(self.lift(u))) - u
        matrix, offset = self.folded_middle()
        hidden = self.lift[1](self.lift[0](u))  # φ's tanh layer
        return self.unlift[2](self.unlift[1](F.linear(hidden, matrix.T, offset))) - u

    def folded_middle(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`M`, `c` with `h M + c = ψ₁(K φ₂(h))` for rows h, where φ₂ is the lift's second Linear (W₂, b₂) and ψ₁
        the unlift's first (W₃, b₃): `M = W₂ᵀ Kᵀ W₃ᵀ`, `c = b₂ Kᵀ W₃ᵀ + b₃`.

        Forming M costs 2k³ multiply-adds and applying it k² per row, against 3k² per row for the three maps, so
        it pays from more than k rows on (an evaluation batch has thousands; a generation step has a handful)."""
        second_lift, first_unlift = self.lift[2], self.unlift[0]
        through = self.operator.T @ first_unlift.weight.T  # Kᵀ W₃ᵀ
        return second_lift.weight.T @ through, second_lift.bias @ through + first_unlift.bias

    @torch.no_grad()
    def pairs(self, u: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Only the lifted pairs `z = φ(u)`, `z⁺ = φ(u + Δ)` of sampled rows: DMD's data on a step without terms."""
        return {"z": self.lift(u), "z_next": self.lift(u + delta)}

    def terms(self, u: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training terms on (already sampled) rows u (M, d) and increments delta (M, d)."""
        opts = self.config
        if opts.detach_backbone:
            u, delta = u.detach(), delta.detach()
        nxt = u + delta
        z, z_next = self.lift(u), self.lift(nxt)
        target = z_next.detach() if opts.detach_targets else z_next
        z_pred = self.advance(z)
        linear = LINEAR_LOSS_FUNCTIONS[opts.linear_loss](z_pred, target)
        recon = F.mse_loss(self.unlift(z_next), nxt)
        pred = F.mse_loss(self.unlift(z_pred), nxt)
        total = opts.linear_weight * linear + opts.recon_weight * recon + opts.pred_weight * pred
        return {
            "total": total, "linear": linear, "recon": recon, "pred": pred,
            # detached copies for DMD and diagnostics
            "z": z.detach(), "z_next": z_next.detach(), "u": u.detach(), "delta": delta.detach(),
        }

    @torch.no_grad()
    def diagnostics(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Operator and prediction diagnostics from this block's `terms` on held-out rows: the operator's spectrum
        and drift (`koopman_operator_stats`), how well ψ(Kφ(u)) and ψ(φ(u)) predict the block's next state
        relative to its increment, ψ's reconstruction error, the lift's tanh saturation, and DMD's state."""
        if not all(torch.isfinite(terms[k]).all() for k in ("z", "z_next", "u", "delta")):
            return {"non_finite": 1.0}  # nothing meaningful to measure (Koopman was disabled)
        z, z_next, u = terms["z"], terms["z_next"], terms["u"]
        stats = operator_diagnostics.koopman_operator_stats(self.operator, self.initial_operator, z, z_next)
        nxt = u + terms["delta"]
        delta_norm = terms["delta"].norm().clamp_min(1e-12)
        stats["state_rel_err"] = (self.unlift(self.advance(z)) - nxt).norm().item() / delta_norm.item()
        stats["state_rel_err_identity"] = (self.unlift(z) - nxt).norm().item() / delta_norm.item()
        stats["recon_rel_err"] = ((self.unlift(z_next) - nxt).norm() / nxt.norm().clamp_min(1e-12)).item()
        stats["lift_saturation"] = operator_diagnostics.saturation_fraction(self.lift[:2](u))  # φ's tanh layer
        estimate = self.dmd.estimate()
        if estimate is not None:
            k = self.operator.to(estimate.dtype)
            stats["dmd_disagreement"] = ((k - estimate).norm() / k.norm()).item()
        stats.update({f"dmd_{k}": float(v) for k, v in self.dmd.stats().items()})
        return stats


class KoopmanRandom(nn.Module):
    """The Koopman companions' own random stream (`koopman.own_rng`): a CPU generator whose state is saved with the
    model (as extra state), so a resumed run draws what the uninterrupted one would have."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def initial_seed(self, block: int) -> int:
        """The seed the companion of `block` draws its initial weights from."""
        return self.seed + 1 + block

    def get_extra_state(self) -> dict[str, Any]:
        return {"state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["state"])


@contextlib.contextmanager
def drawn_from(seed: int | None) -> Iterator[None]:
    """With a seed, what runs inside draws from torch's CPU generator seeded so, and the global stream is restored
    after: what is built later initialises as it would have without it. Without one, the global stream as it is."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class ResNetBKBlock(nn.Module):
    """Pre-LayerNorm residual block x + f(LN x), with an optional Koopman companion."""

    def __init__(self, config: ResNetBKConfig, koopman: KoopmanConfig | None, dmd: DMDConfig | None,
                 companion_seed: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.layer = ResNetBKLayer(config)
        self.koopman = None
        if koopman is not None:
            with drawn_from(companion_seed):
                self.koopman = KoopmanDynamics(config.d_model, koopman, dmd)

    def forward(
        self, x: torch.Tensor, mode: str = "standard", sample: torch.Tensor | None = None, pairs_only: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if mode == "skip":
            return x, None
        u = self.norm(x)
        if mode == "koopman":
            if self.koopman is None:
                raise ValueError("Koopman mode needs a model built with Koopman components (koopman=KoopmanConfig())")
            return x + self.koopman.increment(u), None
        delta = self.layer(u)
        terms = None
        if sample is not None and self.koopman is not None:
            flat_u, flat_delta = u.reshape(-1, u.shape[-1]), delta.reshape(-1, delta.shape[-1])
            rows = flat_u[sample], flat_delta[sample]
            terms = self.koopman.pairs(*rows) if pairs_only else self.koopman.terms(*rows)
        return x + delta, terms


class KoopmanResNetBKLM(nn.Module):
    """Token + position embeddings, ResNet-BK blocks (each with a Koopman companion unless `koopman` is None or
    not enabled), final LayerNorm, LM head. Without Koopman it is the plain ResNet-BK LM, the baseline.

    `KoopmanResNetBKLM(vocab_size, ResNetBKConfig(...), koopman=KoopmanConfig(...), dmd=DMDConfig(...))`; in place
    of `config`, `ResNetBKConfig`'s fields may be given as keywords (`KoopmanResNetBKLM(256, d_model=32)`).
    """

    def __init__(
        self,
        vocab_size: int,
        config: ResNetBKConfig | None = None,
        koopman: KoopmanConfig | None = None,
        dmd: DMDConfig | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        config = settings_or_fields(ResNetBKConfig, config, settings)
        if isinstance(koopman, KoopmanOptions) and dmd is None:
            dmd = koopman.dmd
        koopman = koopman if koopman is not None and koopman.enabled else None
        self.config = config
        self.koopman_config = koopman
        self.n_seq = config.n_seq
        self.token_embedding = nn.Embedding(vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.n_seq, config.d_model)
        # koopman.own_rng: a stream seeded from the global one's seed (the run's), which it never draws from.
        self.koopman_rng = KoopmanRandom(torch.initial_seed()) if koopman is not None and koopman.own_rng else None
        self.blocks = nn.ModuleList(
            ResNetBKBlock(config, koopman, dmd, None if self.koopman_rng is None else self.koopman_rng.initial_seed(i))
            for i in range(config.n_layers)
        )
        if self.koopman_rng is not None:
            for dyn in self.koopman_dynamics():
                dyn.dmd.generator = self.koopman_rng.generator
        self.final_norm = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, vocab_size)

    @property
    def has_koopman(self) -> bool:
        return self.koopman_config is not None

    def koopman_dynamics(self) -> list[KoopmanDynamics]:
        return [b.koopman for b in self.blocks if b.koopman is not None]

    def forward(
        self,
        idx: torch.Tensor,
        modes: str | list[str] = "standard",
        koopman_terms: bool = False,
        pairs_only: bool = False,
    ) -> LMOutput:
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
            m = self.koopman_config.sample_tokens
            if m is None or m >= b * n:
                sample = torch.arange(b * n, device=idx.device)
            elif self.koopman_rng is not None:
                sample = torch.randperm(b * n, generator=self.koopman_rng.generator)[:m].to(idx.device)
            else:
                sample = torch.randperm(b * n, device=idx.device)[:m]
        terms = []
        for block, mode in zip(self.blocks, modes, strict=True):
            x, t = block(x, mode=mode, sample=sample, pairs_only=pairs_only)
            if t is not None:
                terms.append(t)
        return LMOutput(self.head(x), terms)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings of (B, N) token ids: the first block's input."""
        n = idx.shape[1]
        if n > self.n_seq:
            raise ValueError(f"sequence length {n} exceeds the model's n_seq={self.n_seq}")
        return self.token_embedding(idx) + self.position_embedding(torch.arange(n, device=idx.device))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last block's output."""
        return self.lm_head(self.final_norm(x))

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: every parameter decays but the Koopman operators (the seed's AdamW
        pulled K toward 0 while DMD pushed it to I)."""
        operators = {id(d.operator) for d in self.koopman_dynamics()}
        decay, no_decay = [], []
        for p in self.parameters():
            (no_decay if id(p) in operators else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    @torch.no_grad()
    def layerwise_logits(self, idx: torch.Tensor) -> Iterator[tuple[tuple[int, str] | None, torch.Tensor]]:
        """The standard model's logits (key None), then for each layer and mode ("koopman", "skip") the logits
        with that one layer in that mode and every other standard (key `(layer, mode)`), then every layer in that
        mode at once (key `("all", mode)`: the whole-stack Koopman mode, and the embedding read out directly).

        The blocks before the layer under test compute what they compute in the standard model, so one standard
        pass (its block outputs kept) serves every layer and mode instead of being recomputed."""
        states = [self.embed(idx)]  # states[l]: the input of block l in the standard model
        for block in self.blocks:
            states.append(block(states[-1])[0])
        yield None, self.head(states[-1])
        for layer in range(len(self.blocks)):
            for mode in ("koopman", "skip"):
                x = self.blocks[layer](states[layer], mode=mode)[0]
                for later in self.blocks[layer + 1:]:
                    x = later(x)[0]
                yield (layer, mode), self.head(x)
        for mode in ("koopman", "skip"):
            x = states[0]
            for block in self.blocks:
                x = block(x, mode=mode)[0]
            yield ("all", mode), self.head(x)

    @torch.no_grad()
    def koopman_diagnostics(self, idx: torch.Tensor, n_tokens: int) -> dict[str, float]:
        """Every block's Koopman diagnostics (`KoopmanDynamics.diagnostics`) on the first `n_tokens` positions of
        `idx` (B, N), as `koopman/<layer>/<name>`; draws nothing from the RNG."""
        sample = torch.arange(n_tokens, device=idx.device)
        x = self.embed(idx)
        out: dict[str, float] = {}
        for layer, block in enumerate(self.blocks):
            x_next, terms = block(x, sample=sample)
            out.update({f"koopman/{layer}/{name}": float(v) for name, v in block.koopman.diagnostics(terms).items()})
            x = x_next
        return out
