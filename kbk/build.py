"""Config -> objects. The only place that knows both the config schema and the plain-PyTorch constructors."""

from __future__ import annotations

import math
from typing import Any

import torch

from kbk import console
from kbk.config import KbkConfig, as_plain
from kbk.data.batching import TokenBatches
from kbk.data.corpus import Corpus, load_corpus
from kbk.errors import ConfigError, DataError
from kbk.models.koopman_lm import KoopmanOptions, KoopmanResNetBKLM
from kbk.models.transformer import TransformerLM
from kbk.paths import outputs_dir
from kbk.training.schedules import KoopmanWeightSchedule
from kbk.training.trainer import TrainerOptions

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
    return train, val


def koopman_options(cfg: KbkConfig) -> KoopmanOptions | None:
    k = cfg.koopman
    if not k.enabled:
        return None
    dmd = as_plain(cfg.dmd)
    return KoopmanOptions(
        dim=k.dim, operator_update=as_plain(k.operator_update), init=k.init, init_scale=k.init_scale,
        detach_backbone=k.detach_backbone, detach_targets=k.detach_targets, linear_weight=k.linear_weight,
        linear_loss=k.linear_loss, recon_weight=k.recon_weight, pred_weight=k.pred_weight,
        sample_tokens=k.sample_tokens, terms_interval=k.terms_interval, dmd=dmd,
    )


def model(cfg: KbkConfig, vocab_size: int) -> torch.nn.Module:
    net = _model(cfg, vocab_size)
    console.phase(f"model {cfg.model.arch}: {sum(p.numel() for p in net.parameters()):,} parameters")
    return net


def _model(cfg: KbkConfig, vocab_size: int) -> torch.nn.Module:
    m = cfg.model
    if m.arch == "transformer":
        if cfg.koopman.enabled:
            raise ConfigError("model=transformer has no Koopman components: add koopman=off")
        return TransformerLM(vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_seq, dropout=m.dropout)
    return KoopmanResNetBKLM(
        vocab_size, d_model=m.d_model, n_layers=m.n_layers, n_seq=m.n_seq, num_experts=m.num_experts,
        top_k=m.top_k, dropout=m.dropout, v_max=m.v_max, z=complex(m.z_real, m.z_imag), bk_grad=m.bk_grad,
        causal=m.causal, koopman=koopman_options(cfg), moe_scale_by_router=m.moe_scale_by_router,
    )


def trainer_options(cfg: KbkConfig) -> TrainerOptions:
    t = cfg.trainer
    return TrainerOptions(
        epochs=t.epochs, max_steps=t.max_steps, lr=t.lr, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
        eval_every=t.eval_every, eval_batches=t.eval_batches, log_every=t.log_every,
        checkpoint_every=t.checkpoint_every, fallback_threshold=t.fallback_threshold, max_nan_steps=t.max_nan_steps,
        diagnostics_tokens=t.diagnostics_tokens, layerwise_eval=t.layerwise_eval,
        layerwise_tokens=t.layerwise_tokens, device=resolve_device(t.device), lr_schedule=t.lr_schedule,
        warmup_steps=t.warmup_steps, min_lr=t.min_lr, grad_accum_steps=t.grad_accum_steps,
    )


def schedule(cfg: KbkConfig, total_steps: int) -> KoopmanWeightSchedule:
    """The weight schedule; `unit: fraction` becomes optimiser steps of this run, `total: null` its end."""
    s = cfg.schedule
    kind = as_plain(s.type)
    if s.unit == "fraction":
        total = s.total if s.total is not None else 1.0
        return KoopmanWeightSchedule(kind, s.min_weight, s.max_weight, warmup=math.floor(s.warmup * total_steps),
                                     total=max(1, math.floor(total * total_steps)), unit="step")
    end = cfg.trainer.epochs if s.unit == "epoch" else total_steps
    return KoopmanWeightSchedule(kind, s.min_weight, s.max_weight, warmup=s.warmup,
                                 total=s.total if s.total is not None else end, unit=s.unit)


def parameter_counts(net: torch.nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in net.parameters())
    koopman = 0
    if isinstance(net, KoopmanResNetBKLM):
        koopman = sum(p.numel() for d in net.koopman_dynamics() for p in d.parameters())
    return {"model.n_params": total, "model.n_params_koopman": koopman, "model.n_params_lm": total - koopman}
