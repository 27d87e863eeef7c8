"""The hybrid Koopman–gradient trainer (plain PyTorch; talks to a tracker through `kbk.tracking.base.Tracker`).

Phases follow the seed: gradient warm-up (language-model loss only), hybrid (LM loss + the scheduled Koopman loss,
with DMD writing the operators), Koopman-dominant (the schedule at its maximum). Fallbacks, each counted and logged:
a non-finite Koopman loss switches Koopman learning off for the rest of the run; a Koopman loss above
`fallback_threshold` cuts its weight 10x for that step; a rejected DMD update keeps the operator; gradients are
clipped at `grad_clip`; a non-finite LM loss skips the update, and `max_nan_steps` of them in a row stop training
with `TrainingDiverged`.

Learning rate: `lr_schedule` "constant" or "cosine" after a linear warm-up of `warmup_steps` from 0 (`lr_factor`),
stepped once per optimiser step and checkpointed. Gradient accumulation: with `grad_accum_steps` n, one optimiser
step takes n micro-batches, each loss divided by n, so the summed gradient is that of one batch n times as big;
`step` and every "step" metric count optimiser steps. The Koopman terms are computed and their fallbacks judged per
micro-batch, with the weight of the optimiser step; DMD runs once per optimiser step, after it, fed the lifted
pairs of all its micro-batches.

Determinism: every random draw of training comes from the global RNG, whose state is checkpointed with the data
position; evaluation draws nothing from it. So a resumed run reproduces an uninterrupted one exactly on CPU, and
changing the evaluation cadence does not change the training trajectory.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from kbk.data.batching import TokenBatches
from kbk.errors import CheckpointError
from kbk.tracking.base import NullTracker, Tracker
from kbk.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from kbk.training.schedules import KoopmanWeightSchedule, ScheduleConfig
from kbk.training.trainer_config import TrainerConfig

PHASE_CODES = {"gradient_warmup": 0, "hybrid": 1, "koopman_dominant": 2}


class TrainingDiverged(RuntimeError):
    """Training cannot go on (non-finite losses); the message has the step and the reason."""


class Callback(Protocol):
    """What happens at each evaluation besides logging: printing progress, reporting to a pruner (which may raise,
    e.g. `optuna.TrialPruned`, to stop the run), early stopping (`trainer.request_stop`). `metrics` are the
    evaluation's; `trainer.step`, `.epoch`, `.total_steps`, `.history` and `.train_seconds` say where training
    stands. A callback may also have `on_train_start(trainer)`, `on_step_end(trainer, metrics)` (after each
    optimiser step) and `on_train_end(trainer)` (however `fit` ends): the trainer calls those it finds."""

    def on_evaluation(self, trainer: HybridTrainer, metrics: dict[str, float]) -> None: ...


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when this machine has it, else the CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainerOptions(TrainerConfig):
    """`TrainerConfig` on the CPU unless told otherwise: the form scripts and tests/test_pinned_results.py build a
    trainer with (its numbers are CPU numbers). New code passes a `TrainerConfig`."""

    device: str = "cpu"


def lr_factor(step: int, options: TrainerConfig, total_steps: int) -> float:
    """The multiple of `options.lr` at optimiser step `step` (0-based): `step / warmup_steps` during the warm-up,
    then 1 ("constant") or a half cosine from 1 to `min_lr / lr` at the last step, `total_steps - 1` ("cosine")."""
    warmup = options.warmup_steps
    if step < warmup:
        return step / warmup
    if options.lr_schedule == "constant":
        return 1.0
    floor = options.min_lr / options.lr
    progress = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_steps(batches_per_epoch: int, options: TrainerConfig) -> int:
    """The optimiser steps of a whole run: `grad_accum_steps` batches each (fewer at an epoch's end), at most
    `max_steps`."""
    total = -(-batches_per_epoch // options.grad_accum_steps) * options.epochs
    return min(total, options.max_steps) if options.max_steps is not None else total


def micro_batch_groups(batches, size: int):
    """The micro-batches of one optimiser step at a time (the last group of an epoch may be smaller)."""
    batches = iter(batches)
    while group := list(itertools.islice(batches, size)):
        yield group


# Both losses take the logits in float32 (a no-op for float32 logits): bfloat16 logits would round the
# log-softmax of a large vocabulary.
def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def summed_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Total (not mean) cross-entropy of a batch, so batches of any size add up to an exact mean."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="sum").item()


def safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


class HybridTrainer:
    """Trains any kbk language model (its `forward` returns an `LMOutput`; its `param_groups`, `has_koopman` and
    `koopman_dynamics` say what it has) on token batches, with the Koopman loss weighted by `schedule`."""

    def __init__(
        self,
        model: torch.nn.Module,
        train_batches: TokenBatches,
        val_batches: TokenBatches,
        options: TrainerConfig | None = None,
        schedule: KoopmanWeightSchedule | None = None,
        tracker: Tracker | None = None,
        checkpoint_path: str | Path | None = None,
        loss_floor: float | None = None,
        callbacks: list[Callback] = (),
    ) -> None:
        self.options = options or TrainerConfig()
        self.device = resolve_device(self.options.device)
        self.model = model.to(self.device)
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.schedule = schedule or ScheduleConfig().resolve(self.total_steps, self.options.epochs)
        self.tracker = tracker or NullTracker()
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.loss_floor = loss_floor
        self.callbacks = list(callbacks)
        # foreach: one kernel per group, not ~10 small ops per parameter (a Koopman companion adds 9 parameters a
        # layer); the same arithmetic as the per-parameter loop, bit for bit (tests/test_pinned_results.py).
        self.optimizer = torch.optim.AdamW(model.param_groups(self.options.weight_decay), lr=self.options.lr,
                                           foreach=True)
        total = self.total_steps
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.options, total))
        # Where training stands; all of it is checkpointed.
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.koopman_enabled = self.has_koopman
        self.nan_streak = 0
        self.events = {"nan_lm_skipped": 0, "koopman_disabled": 0, "koopman_weight_cut": 0, "dmd_accepted": 0,
                       "dmd_rejected": 0}
        self.epoch_sums: dict[str, float] = {}
        self.window: dict[str, float] = {}
        self.history: list[tuple[int, dict[str, float]]] = []
        self.epoch_table: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.eval_seconds = 0.0  # periodic, final and layer-wise evaluations, so a run's evaluation share is known
        self.summary: dict[str, Any] | None = None  # set when training has finished
        self.last_eval: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the latest evaluation
        self.stop_reason: str | None = None  # set by `request_stop`: training ends after the current step

    # ---------------------------------------------------------------- setup
    def _autocast(self):
        """bfloat16 autocast with `precision=bf16` (forward and loss); nothing at all with fp32."""
        if self.options.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, inputs: torch.Tensor, modes: str | list[str] = "standard", koopman_terms: bool = False,
                 pairs_only: bool = False):
        """Logits and Koopman terms; the Koopman arguments go only to a model that has Koopman parts."""
        if not self.has_koopman:
            return self.model(inputs)
        return self.model(inputs, modes=modes, koopman_terms=koopman_terms, pairs_only=pairs_only)

    @property
    def has_koopman(self) -> bool:
        return self.model.has_koopman

    @property
    def total_steps(self) -> int:
        return optimizer_steps(len(self.train_batches), self.options)

    def progress(self) -> float:
        """Where the weight schedule stands: the 0-based epoch, or the step, as the schedule counts."""
        return float(self.epoch) if self.schedule.unit == "epoch" else float(self.step)

    # ---------------------------------------------------------------- one step
    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor,
                   *more: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        """One optimiser step on the micro-batch `inputs, targets` and the `(inputs, targets)` pairs in `more`
        (gradient accumulation); the metrics are the means over the micro-batches."""
        model, opts = self.model, self.options
        model.train()
        t0 = time.perf_counter()
        progress = self.progress()
        collect = self.koopman_enabled and self.schedule.active(progress)
        # koopman.terms_interval: the Koopman loss on every n-th step; the steps between only feed DMD its pairs.
        full = collect and self.step % self.model.koopman_config.terms_interval == 0
        weight = self.schedule.weight(progress) if full else 0.0
        micro_batches = [(inputs, targets), *more]
        n = len(micro_batches)
        sums: dict[str, float] = {}
        pairs: list[list[dict[str, torch.Tensor]]] = []  # each micro-batch's terms, for DMD
        self.optimizer.zero_grad(set_to_none=True)
        for x, y in micro_batches:
            with self._autocast():
                logits, terms = self._forward(x, koopman_terms=collect, pairs_only=collect and not full)
            loss_lm = lm_loss(logits, y)
            if not torch.isfinite(loss_lm):
                return self._skip_non_finite(loss_lm.item())
            metrics = {"train/loss_lm": loss_lm.item(), "train/loss_koopman": 0.0}
            loss_total, used_weight = loss_lm, weight
            if collect and full and terms:
                loss_k = torch.stack([t["total"] for t in terms]).mean()
                if not torch.isfinite(loss_k):
                    self.koopman_enabled = False
                    self.events["koopman_disabled"] = 1
                    weight = used_weight = 0.0
                    collect = False
                else:
                    if loss_k.item() > opts.fallback_threshold:
                        used_weight = weight / 10.0
                        self.events["koopman_weight_cut"] += 1
                    loss_total = loss_lm + used_weight * loss_k
                    for name in ("linear", "recon", "pred"):
                        metrics[f"train/koopman_{name}"] = torch.stack([t[name] for t in terms]).mean().item()
                metrics["train/loss_koopman"] = loss_k.item()
            (loss_total / n).backward()
            if collect:
                pairs.append(terms)
            metrics.update({"train/loss_total": loss_total.item(), "train/koopman_weight": used_weight})
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        self.nan_streak = 0
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip, foreach=True)
        self.optimizer.step()
        metrics = {key: value / n for key, value in sums.items()}
        if pairs:
            metrics["perf/dmd_ms"] = self._update_operators(pairs)
        step_s = time.perf_counter() - t0
        self.train_seconds += step_s
        metrics.update({
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/phase": float(PHASE_CODES[self.schedule.phase(progress)]),
            "perf/step_ms": 1000.0 * step_s,
            "perf/tokens_per_s": sum(x.numel() for x, _ in micro_batches) / step_s,
        })
        return metrics

    def _skip_non_finite(self, loss_lm: float) -> dict[str, float]:
        """A non-finite language-model loss: no update this step; too many in a row is `TrainingDiverged`."""
        self.events["nan_lm_skipped"] += 1
        self.nan_streak += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.nan_streak >= self.options.max_nan_steps:
            raise TrainingDiverged(
                f"the language-model loss was non-finite for {self.nan_streak} steps in a row (last at step "
                f"{self.step}): lower trainer.lr or raise trainer.max_nan_steps"
            )
        return {"train/loss_lm": loss_lm}

    @torch.no_grad()
    def _update_operators(self, pairs: list[list[dict[str, torch.Tensor]]]) -> float:
        """Feed the DMD buffers every micro-batch's terms (one list per micro-batch, one entry per layer) and let
        DMD write the operators it owns; returns the time it took (ms)."""
        t0 = time.perf_counter()
        owner = self.model.koopman_config.operator_update
        for layer, dyn in enumerate(self.model.koopman_dynamics()):
            for terms in pairs:
                dyn.dmd.push(terms[layer]["z"], terms[layer]["z_next"])
            if owner == "gradient":
                continue
            accepted = dyn.dmd.step(dyn.operator)
            if accepted is None:
                continue
            self.events["dmd_accepted" if accepted else "dmd_rejected"] += 1
            if accepted and owner == "both":
                # Adam's moments describe the operator before DMD moved it: start them afresh.
                self.optimizer.state.pop(dyn.operator, None)
        return 1000.0 * (time.perf_counter() - t0)

    # ---------------------------------------------------------------- evaluation
    # Evaluation runs under inference_mode (no autograd bookkeeping) and draws nothing from the RNG.
    def _val_batches(self, max_tokens: int | None = None):
        """Validation `(inputs, targets)` on the device: every batch (at most `eval_batches`), or with `max_tokens`
        only the first windows that hold that many targets: a fixed subset, the same at every call."""
        left = max_tokens
        for j, (inputs, targets) in enumerate(self.val_batches.epoch(0)):
            if (self.options.eval_batches is not None and j >= self.options.eval_batches) or (
                left is not None and left <= 0
            ):
                break
            if left is not None:
                rows = -(-left // targets.shape[1])  # whole windows
                inputs, targets = inputs[:rows], targets[:rows]
                left -= targets.numel()
            yield inputs.to(self.device), targets.to(self.device)

    @torch.inference_mode()
    def evaluate(self, modes: str | list[str] = "standard") -> float:
        """Mean validation cross-entropy (nats/token) with the blocks in `modes`."""
        self.model.eval()
        total, count = 0.0, 0
        for inputs, targets in self._val_batches():
            with self._autocast():
                logits, _ = self._forward(inputs, modes=modes)
            total += summed_lm_loss(logits, targets)
            count += targets.numel()
        return total / count

    @torch.inference_mode()
    def koopman_diagnostics(self) -> dict[str, float]:
        """Per-layer operator and prediction diagnostics on the first validation tokens (no RNG drawn)."""
        self.model.eval()
        inputs, _ = next(iter(self.val_batches.epoch(0)))
        return self.model.koopman_diagnostics(inputs.to(self.device), min(self.options.diagnostics_tokens,
                                                                           inputs.numel()))

    def evaluation_metrics(self) -> dict[str, float]:
        val_loss = self.evaluate("standard")
        metrics = {"val/loss": val_loss, "val/ppl": safe_exp(val_loss)}
        if self.loss_floor is not None:
            metrics["val/loss_floor"] = self.loss_floor
            metrics["val/ppl_floor"] = safe_exp(self.loss_floor)
        if self.has_koopman:
            k_loss = self.evaluate("koopman")
            metrics.update({"val/loss_koopman": k_loss, "val/ppl_koopman": safe_exp(k_loss)})
            metrics.update(self.koopman_diagnostics())
        return metrics

    @torch.inference_mode()
    def layerwise_metrics(self) -> dict[str, float]:
        """Validation PPL with one layer at a time in Koopman mode, next to skipping that layer, on the first
        `layerwise_tokens` validation tokens (all of them with None); on the same tokens `koopman/layerwise_val_ppl`
        is the standard model's, `koopman/layerwise_val_ppl_koopman_all` / `..._skip_all` every layer in Koopman
        mode / skipped, and `koopman/layerwise_tokens` their number (`model.layerwise_logits`)."""
        if not (self.has_koopman and self.options.layerwise_eval):
            return {}
        self.model.eval()
        totals: dict[Any, float] = {}
        count = 0
        for inputs, targets in self._val_batches(self.options.layerwise_tokens):
            with self._autocast():  # the generator runs its forward passes inside this block
                for variant, logits in self.model.layerwise_logits(inputs):
                    totals[variant] = totals.get(variant, 0.0) + summed_lm_loss(logits, targets)
            count += targets.numel()
        standard = totals.pop(None)
        metrics = {f"koopman/layerwise_val_ppl_{mode}_all" if layer == "all" else
                   f"koopman/{layer}/val_ppl_{mode}_only": safe_exp(total / count)
                   for (layer, mode), total in totals.items()}
        metrics["koopman/layerwise_val_ppl"] = safe_exp(standard / count)
        metrics["koopman/layerwise_tokens"] = float(count)
        return metrics

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train to the end (or to `max_steps`), evaluating and checkpointing on the way; returns the summary."""
        if self.summary is not None:  # resumed from the checkpoint of a finished run: nothing left to do
            return self.summary
        # Anomaly detection only when asked: with it off, autograd's global mode stays whatever it was.
        anomaly = torch.autograd.detect_anomaly(check_nan=True) if self.options.detect_anomaly else (
            contextlib.nullcontext())
        self._notify("on_train_start")
        try:
            with anomaly:
                return self._fit()
        finally:
            self._notify("on_train_end")

    def request_stop(self, reason: str) -> None:
        """End training after the current step (then evaluate, summarise and checkpoint as at a normal end)."""
        self.stop_reason = reason

    def _notify(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

    def _fit(self) -> dict[str, Any]:
        opts = self.options
        eval_metrics: dict[str, float] = {}
        while self.epoch < opts.epochs and not self._out_of_steps() and self.stop_reason is None:
            batches = self.train_batches.epoch(self.epoch, start_batch=self.batch_in_epoch)
            for group in micro_batch_groups(batches, opts.grad_accum_steps):
                on_device = [(x.to(self.device), y.to(self.device)) for x, y in group]
                metrics = self.train_step(*on_device[0], *on_device[1:])
                with warnings.catch_warnings():  # after a skipped (non-finite) step: the lr follows the step count
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                    self.lr_scheduler.step()
                self.step += 1
                self.batch_in_epoch += len(group)
                self._accumulate(metrics)
                self._notify("on_step_end", metrics)
                if self.step % opts.log_every == 0:
                    self._log_window()
                evaluated = False
                if opts.eval_every is not None and self.step % opts.eval_every == 0:
                    eval_metrics = self._evaluate_and_report()
                    evaluated = True
                if (opts.checkpoint_every is not None and self.step % opts.checkpoint_every == 0) or (
                    opts.checkpoint_every is None and evaluated
                ):
                    self.save()
                if self._out_of_steps() or self.stop_reason is not None:
                    break
            if self.batch_in_epoch >= len(self.train_batches):  # the epoch ran to its end
                self._log_window()
                if opts.eval_every is None:
                    eval_metrics = self._evaluate_and_report()
                self._close_epoch(eval_metrics)
                self.save()
        self._log_window()
        if self.last_eval is not None and self.last_eval[0] == self.step:  # evaluated at this very step already
            extra = self._timed(self.layerwise_metrics)
            final = {**self.last_eval[1], **extra}
        else:
            extra = final = self._timed(lambda: {**self.evaluation_metrics(), **self.layerwise_metrics()})
        if extra:
            self._log(extra)
        summary = {**final, **{f"events/{k}": float(v) for k, v in self.events.items()}, "steps": self.step,
                   "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                   "tokens": self.step * self._tokens_per_step(),
                   # whole-run means, so a sweep can trade quality against speed (e.g. `ppl_vs_speed`)
                   "perf/step_ms": 1000.0 * self.train_seconds / max(self.step, 1),
                   "perf/tokens_per_s": self.step * self._tokens_per_step() / max(self.train_seconds, 1e-9)}
        self.summary = summary
        self.save()
        return summary

    def _out_of_steps(self) -> bool:
        return self.options.max_steps is not None and self.step >= self.options.max_steps

    def _tokens_per_step(self) -> int:
        return self.train_batches.batch_size * self.train_batches.n_seq * self.options.grad_accum_steps

    def _accumulate(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.window[key] = self.window.get(key, 0.0) + value
            self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + value
        self.window["_n"] = self.window.get("_n", 0.0) + 1
        self.epoch_sums["_n"] = self.epoch_sums.get("_n", 0.0) + 1

    def _log_window(self) -> None:
        n = self.window.pop("_n", 0.0)
        if n:
            self._log({k: v / n for k, v in self.window.items()})
        self.window = {}

    def _log(self, metrics: dict[str, float]) -> None:
        self.history.append((self.step, dict(metrics)))
        self.tracker.log_metrics(metrics, step=self.step)

    def _timed(self, evaluation: Callable[[], dict[str, float]]) -> dict[str, float]:
        """`evaluation()`, its wall time added to `eval_seconds`."""
        t0 = time.perf_counter()
        try:
            return evaluation()
        finally:
            self.eval_seconds += time.perf_counter() - t0

    def _evaluate_and_report(self) -> dict[str, float]:
        metrics = self._timed(self.evaluation_metrics)
        # Counters once nonzero only: all-zero `events/*` charts would open MLflow's charts tab (its sections sort by
        # name, before train/ and val/); summary.json still holds every counter.
        metrics.update({f"events/{k}": float(v) for k, v in self.events.items() if v})
        self._log(metrics)
        self.last_eval = (self.step, metrics)
        for callback in self.callbacks:
            callback.on_evaluation(self, metrics)
        return metrics

    def _close_epoch(self, eval_metrics: dict[str, float]) -> None:
        """The seed's per-epoch table: train loss, LM loss, Koopman loss, val loss/PPL, Koopman weight, time."""
        n = max(self.epoch_sums.get("_n", 0.0), 1.0)
        row = {
            "epoch": float(self.epoch + 1),
            "train_loss": self.epoch_sums.get("train/loss_total", 0.0) / n,
            "loss_lm": self.epoch_sums.get("train/loss_lm", 0.0) / n,
            "loss_koopman": self.epoch_sums.get("train/loss_koopman", 0.0) / n,
            "koopman_weight": self.epoch_sums.get("train/koopman_weight", 0.0) / n,
            "time_s": self.epoch_sums.get("perf/step_ms", 0.0) / 1000.0,
        }
        for key in ("val/loss", "val/ppl", "val/loss_koopman", "val/ppl_koopman"):
            if key in eval_metrics:
                row[key.replace("/", "_")] = eval_metrics[key]
        self.epoch_table.append(row)
        self._log({f"epoch/{k}": v for k, v in row.items()})
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums = {}

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "options": asdict(self.options),
            "position": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "koopman_enabled": self.koopman_enabled,
            "nan_streak": self.nan_streak,
            "events": dict(self.events),
            "epoch_sums": dict(self.epoch_sums),
            "window": dict(self.window),
            "history": list(self.history),
            "epoch_table": list(self.epoch_table),
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "summary": self.summary,
            "last_eval": self.last_eval,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        pos = state["position"]
        if "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        else:  # a checkpoint from before lr schedules: the schedule is a function of the step alone
            self.lr_scheduler.last_epoch = pos["step"]
            factor = lr_factor(pos["step"], self.options, self.total_steps)
            for group, base in zip(self.optimizer.param_groups, self.lr_scheduler.base_lrs, strict=True):
                group["lr"] = base * factor
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.epoch, self.batch_in_epoch = pos["step"], pos["epoch"], pos["batch_in_epoch"]
        self.koopman_enabled = state["koopman_enabled"]
        self.nan_streak = state["nan_streak"]
        self.events = dict(state["events"])
        self.epoch_sums = dict(state["epoch_sums"])
        self.window = dict(state["window"])
        self.history = list(state["history"])
        self.epoch_table = list(state["epoch_table"])
        self.train_seconds = state["train_seconds"]
        self.eval_seconds = state.get("eval_seconds", 0.0)  # absent from checkpoints written before it was kept
        self.summary = state["summary"]
        self.last_eval = state["last_eval"]
        set_rng_state(state["rng"])

    def save(self) -> Path | None:
        """Checkpoint (atomically) and then let the tracker flush what it buffered up to this point."""
        if self.checkpoint_path is None:
            return None
        path = save_checkpoint(self.state_dict(), self.checkpoint_path)
        self.tracker.flush()
        return path

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from a checkpoint; one that does not fit this model and trainer is a `CheckpointError`."""
        path = path or self.checkpoint_path
        state = load_checkpoint(path, map_location=self.device)
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path} does not fit this configuration ({type(exc).__name__}: {str(exc)[:300]}); "
                f"resume with the config it was written with, or set trainer.resume=false to start fresh"
            ) from exc
