"""The trainer's settings (`TrainerConfig`), handed whole to `HybridTrainer`. Torch-free, so the config schema
(`kbk/config.py`) can use it without importing torch; it checks its own ranges when built and raises
`kbk.errors.SettingError` (a `ValueError`) naming the field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kbk.errors import SettingError, require, require_choice

#: After the linear warm-up: a constant lr, or a half cosine to min_lr at the last optimiser step.
LR_SCHEDULES = ("constant", "cosine")
#: fp32: everything in float32; bf16: forward and loss under bfloat16 autocast (the BK-Core stays complex64).
PRECISIONS = ("fp32", "bf16")
#: What a run's checkpoints leave once it has finished (a killed run always keeps last.pt, to resume from).
KEEP_CHECKPOINT = ("last", "best", "none_after_finish")
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


@dataclass
class TrainerConfig:
    epochs: int = 5
    max_steps: int | None = None  # stop after this many optimiser steps even mid-epoch
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    eval_every: int | None = 100  # steps between evaluations; None = at each epoch's end
    eval_batches: int | None = None  # validation batches per evaluation; None = all
    log_every: int = 10
    checkpoint_every: int | None = None  # steps between checkpoints; None = at each evaluation
    fallback_threshold: float = 10.0  # a Koopman loss above this has its weight cut 10x for the step
    max_nan_steps: int = 5
    diagnostics_tokens: int = 512  # validation tokens used for the per-layer Koopman diagnostics
    layerwise_eval: bool = True  # at the end: Koopman mode and layer-skip one layer at a time
    layerwise_tokens: int | None = 8192  # the first validation tokens those use; None = all
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", …
    resume: Any = False  # false | true (this run's checkpoint) | a path to a checkpoint
    log_checkpoint: bool = False  # also store the final checkpoint as an MLflow artifact
    lr_schedule: str = "constant"  # "constant" | "cosine" (to min_lr at the last optimiser step), after the warm-up
    warmup_steps: int = 0  # optimiser steps of linear warm-up from 0 to lr
    min_lr: float = 0.0  # where "cosine" ends
    grad_accum_steps: int = 1  # micro-batches of batch_size per optimiser step
    overfit_batches: int = 0  # n > 0: train on the first n batches of the first epoch only, every epoch (debug)
    profile_steps: int = 0  # n > 0: torch.profiler over n training steps, written to <run folder>/profile/
    detect_anomaly: bool = False  # torch.autograd's anomaly detection for the whole run (slow; debug)
    # Stop after this many evaluations in a row without a better optimized_metric; null: never.
    early_stopping_patience: int | None = None
    save_best: bool = False  # write best.pt beside last.pt at each evaluation that improves optimized_metric
    precision: str = "fp32"  # "fp32" | "bf16" (autocast of forward and loss on CPU and CUDA)
    # Once the run has finished: keep last.pt (and best.pt), best.pt only, or no checkpoint (kbk's sweeps' default).
    keep_checkpoint: str = "last"
    compile: bool = False  # torch.compile the model (nn.Module.compile); docs/gpu.md says when it pays

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_every", "max_nan_steps"):
            require(self, name, lambda v: v > 0, "an integer > 0")
        for name, meaning in (("max_steps", "null"), ("eval_every", "null for once per epoch"),
                              ("eval_batches", "null for all"), ("checkpoint_every", "null for each evaluation"),
                              ("layerwise_tokens", "null for the whole validation set")):
            require(self, name, lambda v: v is None or v > 0, f"an integer > 0, or {meaning}")
        for name in ("lr", "grad_clip"):
            require(self, name, lambda v: v > 0, "a number > 0")
        require(self, "weight_decay", lambda v: v >= 0, "a number >= 0")
        require_choice(self, "lr_schedule", LR_SCHEDULES)
        require(self, "warmup_steps", lambda v: v >= 0, "an integer >= 0 (0: no warm-up)")
        require(self, "min_lr", lambda v: v >= 0, "a number >= 0")
        if self.min_lr > self.lr:
            raise SettingError(type(self), "min_lr", self.min_lr,
                               f"<= lr={self.lr} (where the cosine schedule ends)")
        require(self, "grad_accum_steps", lambda v: v > 0, "an integer > 0 (1: one batch per optimiser step)")
        for name, meaning in (("overfit_batches", "0 for every batch"), ("profile_steps", "0 for no profiling")):
            require(self, name, lambda v: v >= 0, f"an integer >= 0 ({meaning})")
        require(self, "early_stopping_patience", lambda v: v is None or v > 0,
                "an integer > 0 (evaluations without improvement), or null for no early stopping")
        require_choice(self, "precision", PRECISIONS)
        require_choice(self, "keep_checkpoint", KEEP_CHECKPOINT)
        if self.keep_checkpoint == "best" and not self.save_best:
            raise SettingError(type(self), "keep_checkpoint", self.keep_checkpoint,
                               "last or none_after_finish, or best with trainer.save_best=true (only save_best "
                               "writes the best.pt that best keeps)")
        require(self, "device", lambda v: re.fullmatch(DEVICE_PATTERN, v) is not None,
                "one of auto, cpu, cuda, cuda:<index>, mps")
        require(self, "resume", lambda v: isinstance(v, bool) or (isinstance(v, str) and v != ""),
                "true, false, or a checkpoint path")
