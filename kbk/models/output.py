"""What every kbk language model's `forward` returns, so the trainer, the evaluator and the generator treat
every architecture alike (no dispatch on the model's class)."""

from __future__ import annotations

from typing import Any, NamedTuple


class LMOutput(NamedTuple):
    """`logits` (B, N, vocab) and, when asked for and the model has Koopman companions, each block's Koopman
    training terms (one dict per block; empty otherwise). Unpacks as `logits, terms = model(idx)`."""

    logits: Any  # torch.Tensor (this module stays torch-free)
    koopman_terms: list[dict[str, Any]]
