"""Config -> objects. The only place that knows both the config schema and the plain-PyTorch constructors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from kbk import console
from kbk.config import KbkConfig, as_plain
from kbk.data.batching import TokenBatches
from kbk.data.corpus import Corpus, load_corpus
from kbk.errors import ConfigError, DataError
from kbk.models.koopman_lm import KoopmanResNetBKLM
from kbk.models.transformer import TransformerLM
from kbk.paths import outputs_dir
from kbk.training.schedules import KoopmanWeightSchedule
from kbk.training.trainer_config import TrainerConfig

CACHED_SOURCES = ("text", "wikitext2")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but no CUDA device is available: use trainer.device=cpu or auto")
    return name


def corpus(cfg: KbkConfig) -> Corpus:
    data = as_plain(cfg.data)
    source = data.pop("source")
    cache_dir = data.pop("cache_dir")
    options = {k: v for k, v in data.items() if v is not None}
    if source in CACHED_SOURCES:
        options["cache_dir"] = str(outputs_dir(cache_dir or f"{cfg.paths.outputs}/cache/data"))
    data = load_corpus(source, **options)
    console.phase(f"data {data.name}: {data.train.numel():,} training + {data.val.numel():,} validation tokens, "
                  f"vocabulary {data.vocab_size:,}" + (" (from the cache)" if data.from_cache else ""))
    return data


def batches(cfg: KbkConfig, data: Corpus) -> tuple[TokenBatches, TokenBatches]:
    n_seq, batch_size = cfg.model.n_seq, cfg.trainer.batch_size
    for split, tokens in (("training", data.train), ("validation", data.val)):
        if (tokens.numel() - 1) // n_seq < 1:
            raise DataError(
                f"model.n_seq={n_seq} is larger than the {split} data ({tokens.numel()} tokens): lower model.n_seq "
                f"or use more data"
            )
    train = TokenBatches(data.train, n_seq, batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    if len(train) == 0:
        raise DataError(
            f"trainer.batch_size={batch_size} windows of model.n_seq={n_seq} tokens do not fit in the training "
            f"data ({data.train.numel()} tokens): lower the batch size or n_seq, or use more data"
        )
    val = TokenBatches(data.val, n_seq, batch_size, shuffle=False)
    if cfg.trainer.overfit_batches:
        from kbk.training.repeated_batches import RepeatedBatches

        train = RepeatedBatches(train, cfg.trainer.overfit_batches)
        console.phase(f"overfitting {len(train)} training batch(es), the same every epoch "
                      f"(trainer.overfit_batches={cfg.trainer.overfit_batches})")
    return train, val


def model(cfg: KbkConfig, vocab_size: int) -> torch.nn.Module:
    net = _model(cfg, vocab_size)
    console.phase(f"model {cfg.model.arch}: {sum(p.numel() for p in net.parameters()):,} parameters")
    if cfg.trainer.compile:
        # In place (nn.Module.compile): the state dict keeps its keys, so checkpoints load either way. Compiling
        # happens at the first forward of each mode (minutes on a CPU); the BK-Core's complex ops stay eager.
        net.compile()
        console.phase("model compiled with torch.compile (trainer.compile=true): the first steps compile it")
    return net


def _model(cfg: KbkConfig, vocab_size: int) -> torch.nn.Module:
    if cfg.model.arch == "transformer":
        if cfg.koopman.enabled:
            raise ConfigError("model=transformer has no Koopman components: add koopman=off")
        return TransformerLM(vocab_size, cfg.model.component())
    return KoopmanResNetBKLM(vocab_size, cfg.model.component(), koopman=cfg.koopman, dmd=cfg.dmd)


def trainer_options(cfg: KbkConfig) -> TrainerConfig:
    """The trainer's settings, with `device` resolved (`auto`: CUDA when present; CUDA asked for but absent is a
    `ConfigError`)."""
    return dataclasses.replace(cfg.trainer, device=resolve_device(cfg.trainer.device))


def schedule(cfg: KbkConfig, total_steps: int) -> KoopmanWeightSchedule:
    """The Koopman weight schedule of a run of `total_steps` optimiser steps (see `ScheduleConfig.resolve`)."""
    return cfg.schedule.resolve(total_steps, cfg.trainer.epochs)


def parameter_counts(net: torch.nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in net.parameters())
    koopman = sum(p.numel() for d in net.koopman_dynamics() for p in d.parameters())
    return {"model.n_params": total, "model.n_params_koopman": koopman, "model.n_params_lm": total - koopman}


def callbacks(cfg: KbkConfig, output_dir: Path | None = None) -> list:
    """What the trainer does besides logging: print a progress line at each evaluation; in a trial of kbk's
    sweeper, report the optimised metric to the trial's pruner (which may stop the run); early stopping and the
    best checkpoint on the optimised metric (the first of several); with `trainer.profile_steps`, profile
    training into `<output_dir>/profile/` (the run's folder)."""
    from kbk.sweep.trial import report_hook_from_env
    from kbk.training.callbacks import Profile, ProgressPrinter, ReportMetric, WatchMetric

    metric = cfg.optimized_metric if isinstance(cfg.optimized_metric, str) else cfg.optimized_metric[0]
    found = [ProgressPrinter(console.progress_printer(), live=console.live_line())]
    report = report_hook_from_env()  # None outside a sweep, and for several objectives (Optuna prunes one)
    if report is not None:
        found.append(ReportMetric(report, metric))
    if cfg.trainer.early_stopping_patience is not None or cfg.trainer.save_best:
        found.append(WatchMetric(metric, cfg.trainer.early_stopping_patience, cfg.trainer.save_best,
                                 say=console.say))
    if cfg.trainer.profile_steps:
        if output_dir is None:
            raise ConfigError("trainer.profile_steps needs a run folder to write the profile into")
        found.append(Profile(Path(output_dir) / "profile", cfg.trainer.profile_steps, say=console.say))
    return found
