"""The settings of each language model, one dataclass per architecture, handed whole to its constructor
(`KoopmanResNetBKLM(vocab_size, ResNetBKConfig(...))`, `TransformerLM(vocab_size, TransformerConfig(...))`).

Torch-free, so the config schema (`kbk/config.py`) can use them without importing torch. Each checks its own
ranges when built and raises `kbk.errors.SettingError` (a `ValueError`) naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from kbk.errors import SettingError, require, require_choice

#: The BK-Core's backward: the exact gradient, or the seed's heuristic (kept for comparison; see bk_core.py).
BK_GRADS = ("exact", "seed_blend")


@dataclass
class ResNetBKConfig:
    d_model: int = 64
    n_layers: int = 4
    n_seq: int = 128
    num_experts: int = 4
    top_k: int = 1
    dropout: float = 0.1
    v_max: float = 3.0
    z_real: float = 0.0  # the BK-Core's spectral shift z = z_real + i·z_imag (z_imag > 0)
    z_imag: float = 1.0
    bk_grad: str = "exact"  # "exact" | "seed_blend" (the seed's heuristic backward, for comparison)
    causal: bool = True  # False: the seed's bidirectional BK-Core, which lets position i see tokens after i
    moe_scale_by_router: bool = True  # False: the seed's top-1 MoE (expert output unscaled; router gets no gradient)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_seq", "num_experts"):
            require(self, name, lambda v: v > 0, "an integer > 0")
        require(self, "top_k", lambda v: 0 < v <= self.num_experts,
                f"an integer between 1 and num_experts={self.num_experts}")
        require(self, "dropout", lambda v: 0 <= v < 1, "a number in [0, 1)")
        require(self, "v_max", lambda v: v > 0, "a number > 0")
        require(self, "z_imag", lambda v: v > 0, "a number > 0 (the resolvent needs z off the real axis)")
        require_choice(self, "bk_grad", BK_GRADS)
        if not self.moe_scale_by_router and self.top_k != 1:
            raise SettingError(type(self), "top_k", self.top_k,
                               "1 with moe_scale_by_router=false (the seed's unscaled MoE is top-1 only): set "
                               "top_k=1 or moe_scale_by_router=true")

    @property
    def z(self) -> complex:
        return complex(self.z_real, self.z_imag)


@dataclass
class TransformerConfig:
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    n_seq: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_seq"):
            require(self, name, lambda v: v > 0, "an integer > 0")
        require(self, "n_heads", lambda v: v > 0 and self.d_model % v == 0,
                f"an integer > 0 dividing d_model={self.d_model}")
        require(self, "dropout", lambda v: 0 <= v < 1, "a number in [0, 1)")


#: `model.arch` -> the settings of that architecture.
ARCHITECTURES: dict[str, type] = {"resnet_bk": ResNetBKConfig, "transformer": TransformerConfig}
