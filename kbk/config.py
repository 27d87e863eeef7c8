"""Structured-config schemas for every config group, registered in Hydra's ConfigStore.

The YAML files in `conf/` fill these; OmegaConf rejects unknown keys and wrong types while composing, and
`validate` (run before any work starts) rejects out-of-range values with a message naming the key, the value and
what is allowed. Model, training and data code never see these classes: `kbk/run.py` turns them into plain
arguments.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from kbk.errors import ConfigError


class ScheduleType(str, Enum):
    linear = "linear"
    exponential = "exponential"
    step = "step"
    constant = "constant"


class OperatorUpdate(str, Enum):
    gradient = "gradient"
    dmd = "dmd"
    both = "both"


class DMDEstimator(str, Enum):
    ridge = "ridge"
    lstsq = "lstsq"
    forgetting = "forgetting"


@dataclass
class ModelConfig:
    arch: str = "resnet_bk"  # "resnet_bk" | "transformer" (the GPT-style baseline)
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
    n_heads: int = 4  # transformer baseline only


@dataclass
class KoopmanConfig:
    enabled: bool = True
    dim: int = 256
    operator_update: OperatorUpdate = OperatorUpdate.both
    init: str = "identity_noise"  # "identity_noise" | "orthogonal"
    init_scale: float = 0.01
    detach_backbone: bool = True
    detach_targets: bool = False
    linear_weight: float = 1.0
    linear_loss: str = "mse"  # "mse" | "huber" (the seed's smooth-L1 auxiliary loss)
    recon_weight: float = 1.0
    pred_weight: float = 1.0
    sample_tokens: int | None = 256
    terms_interval: int = 1  # the Koopman terms on every n-th step only (DMD still gets pairs every step)


@dataclass
class ScheduleConfig:
    type: ScheduleType = ScheduleType.linear
    min_weight: float = 0.0
    max_weight: float = 0.1
    warmup: float = 0.3
    total: float | None = None  # null: the end of training
    # "fraction": warmup/total as fractions of the run's optimiser steps (any run length); "epoch": whole 0-based
    # epochs, the weight fixed within an epoch (the seed); "step": optimiser steps.
    unit: str = "fraction"


@dataclass
class DMDConfig:
    buffer_size: int = 100
    alpha: float = 0.1
    estimator: DMDEstimator = DMDEstimator.ridge
    ridge: float = 1e-3
    svd_rtol: float = 1e-6
    forgetting: float = 0.99
    max_condition: float = 1e8
    update_interval: int = 1


@dataclass
class DataConfig:
    """One schema for every source; null means "that source's default". Setting an option the chosen source does
    not have (data.path with data=synthetic, say) is an error that lists the source's options."""

    source: str = "synthetic"  # "synthetic" | "text" | "wikitext2"
    cache_dir: str | None = None  # tokenised-data cache; null: <outputs>/cache/data
    # synthetic: a hidden Markov model with a known Bayes-optimal loss
    vocab_size: int | None = None
    n_states: int | None = None
    n_successors: int | None = None
    zipf_exponent: float | None = None
    n_train_tokens: int | None = None
    n_val_tokens: int | None = None
    seed: int | None = None
    # text / wikitext2
    path: str | None = None
    tokenizer: str | None = None  # "word" | "char" | "bpe"
    val_fraction: float | None = None
    max_vocab: int | None = None
    bpe_vocab_size: int | None = None
    lowercase: bool | None = None
    eos: bool | None = None
    hf_cache_dir: str | None = None
    prepare_command: str | None = None  # text: the command that writes a prepared corpus (named when it is missing)
    hub_timeout_s: float | None = None


@dataclass
class TrainerConfig:
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    eval_every: int | None = None
    eval_batches: int | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    fallback_threshold: float = 10.0
    max_nan_steps: int = 5
    diagnostics_tokens: int = 512
    layerwise_eval: bool = True
    layerwise_tokens: int | None = 8192  # the first validation tokens of the final layer-wise passes; null: all
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", …
    resume: Any = False  # false | true (this run's checkpoint) | a path to a checkpoint
    log_checkpoint: bool = False  # also store the final checkpoint as an MLflow artifact
    lr_schedule: str = "constant"  # "constant" | "cosine" (to min_lr at the last optimiser step), after the warm-up
    warmup_steps: int = 0  # optimiser steps of linear warm-up from 0 to lr
    min_lr: float = 0.0  # where "cosine" ends
    grad_accum_steps: int = 1  # micro-batches of batch_size per optimiser step


@dataclass
class TrackingConfig:
    backend: str = "mlflow"  # "mlflow" | "none"
    uri: str | None = None  # null: SQLite under the outputs folder
    experiment: str = "kbk"
    run_name: str | None = None


@dataclass
class PathsConfig:
    outputs: str = "outputs"  # relative paths resolve against the project root (see kbk/paths.py)


@dataclass
class KbkConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    koopman: KoopmanConfig = field(default_factory=KoopmanConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    optimized_metric: Any = "val/ppl"  # a metric name, or a list of names for several objectives
    name: str = "kbk"
    # The user's labels for the MLflow run: not settings, so not part of the config hash nor of a sweep's settings.
    tags: list[str] = field(default_factory=list)  # words, or key=value strings
    notes: str | None = None  # the run's description in the MLflow UI


#: Root keys that label a run without changing what it computes.
LABEL_KEYS = ("tags", "notes")


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="kbk_schema", node=KbkConfig)


# ------------------------------------------------------------------------------------------------ range checks
# (key, test, what is allowed). Types and unknown keys are OmegaConf's job; these are the values it cannot judge.
RULES: list[tuple[str, Any, str]] = [
    ("model.d_model", lambda v: v > 0, "an integer > 0"),
    ("model.n_layers", lambda v: v > 0, "an integer > 0"),
    ("model.n_seq", lambda v: v > 0, "an integer > 0"),
    ("model.num_experts", lambda v: v > 0, "an integer > 0"),
    ("model.top_k", lambda v: v > 0, "an integer between 1 and model.num_experts"),
    ("model.dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("model.v_max", lambda v: v > 0, "a number > 0"),
    ("model.z_imag", lambda v: v > 0, "a number > 0 (the resolvent needs z off the real axis)"),
    ("model.bk_grad", lambda v: v in ("exact", "seed_blend"), "one of exact, seed_blend"),
    ("model.arch", lambda v: v in ("resnet_bk", "transformer"), "one of resnet_bk, transformer"),
    ("model.n_heads", lambda v: v > 0, "an integer > 0 dividing model.d_model"),
    ("koopman.dim", lambda v: v > 0, "an integer > 0"),
    ("koopman.init", lambda v: v in ("identity_noise", "orthogonal"), "one of identity_noise, orthogonal"),
    ("koopman.init_scale", lambda v: v >= 0, "a number >= 0"),
    ("koopman.sample_tokens", lambda v: v is None or v > 0, "an integer > 0, or null for all tokens"),
    ("koopman.terms_interval", lambda v: v > 0, "an integer > 0 (1: the Koopman terms on every step)"),
    ("koopman.linear_weight", lambda v: v >= 0, "a number >= 0"),
    ("koopman.linear_loss", lambda v: v in ("mse", "huber"), "one of mse, huber"),
    ("koopman.recon_weight", lambda v: v >= 0, "a number >= 0"),
    ("koopman.pred_weight", lambda v: v >= 0, "a number >= 0"),
    ("schedule.min_weight", lambda v: v >= 0, "a number >= 0"),
    ("schedule.max_weight", lambda v: v >= 0, "a number >= 0"),
    ("schedule.warmup", lambda v: v >= 0, "a number >= 0"),
    ("schedule.total", lambda v: v is None or v > 0, "a number > 0, or null for the end of training"),
    ("schedule.unit", lambda v: v in ("epoch", "step", "fraction"), "one of epoch, step, fraction"),
    ("dmd.buffer_size", lambda v: v > 0, "an integer > 0"),
    ("dmd.alpha", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    ("dmd.ridge", lambda v: v >= 0, "a number >= 0"),
    ("dmd.svd_rtol", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("dmd.forgetting", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("dmd.max_condition", lambda v: v > 1, "a number > 1"),
    ("dmd.update_interval", lambda v: v > 0, "an integer > 0"),
    ("data.source", lambda v: v in ("synthetic", "text", "wikitext2"), "one of synthetic, text, wikitext2"),
    ("trainer.epochs", lambda v: v > 0, "an integer > 0"),
    ("trainer.max_steps", lambda v: v is None or v > 0, "an integer > 0, or null"),
    ("trainer.batch_size", lambda v: v > 0, "an integer > 0"),
    ("trainer.lr", lambda v: v > 0, "a number > 0"),
    ("trainer.lr_schedule", lambda v: v in ("constant", "cosine"), "one of constant, cosine"),
    ("trainer.warmup_steps", lambda v: v >= 0, "an integer >= 0 (0: no warm-up)"),
    ("trainer.min_lr", lambda v: v >= 0, "a number >= 0"),
    ("trainer.grad_accum_steps", lambda v: v > 0, "an integer > 0 (1: one batch per optimiser step)"),
    ("trainer.weight_decay", lambda v: v >= 0, "a number >= 0"),
    ("trainer.grad_clip", lambda v: v > 0, "a number > 0"),
    ("trainer.eval_every", lambda v: v is None or v > 0, "an integer > 0, or null for once per epoch"),
    ("trainer.eval_batches", lambda v: v is None or v > 0, "an integer > 0, or null for all"),
    ("trainer.log_every", lambda v: v > 0, "an integer > 0"),
    ("trainer.checkpoint_every", lambda v: v is None or v > 0, "an integer > 0, or null for each evaluation"),
    ("trainer.max_nan_steps", lambda v: v > 0, "an integer > 0"),
    ("trainer.layerwise_tokens", lambda v: v is None or v > 0, "an integer > 0, or null for the whole validation set"),
    ("trainer.device", lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
     "one of auto, cpu, cuda, cuda:<index>, mps"),
    ("trainer.resume", lambda v: isinstance(v, bool) or (isinstance(v, str) and v != ""),
     "true, false, or a checkpoint path"),
    ("tracking.backend", lambda v: v in ("mlflow", "none"), "one of mlflow, none"),
    ("tags", lambda v: all(re.fullmatch(r"[\w.\- /]+(=.*)?", t) and not t.startswith(("kbk.", "mlflow.")) for t in v),
     "a list of words or key=value strings, keys of letters, digits, '_', '-', '.', ' ', '/', not starting with "
     "kbk. or mlflow. (e.g. 'tags=[baseline,\"owner=ana\"]': a key=value in quotes)"),
]


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node.value if isinstance(node, Enum) else node


def check_known_keys(node: Any, schema: type = None, prefix: str = "") -> None:
    """Reject keys the schema does not have, including ones forced in with Hydra's `+key=value`."""
    import typing

    schema = schema or KbkConfig
    hints = typing.get_type_hints(schema)
    for key in node:
        if key not in hints:
            allowed = ", ".join(f.name for f in fields(schema))
            raise ConfigError(f"{prefix}{key} is not a kbk setting; the keys of {prefix.rstrip('.') or 'the config'} "
                              f"are: {allowed}")
        if is_dataclass(hints[key]):
            check_known_keys(node[key], hints[key], f"{prefix}{key}.")


def check_finite(node: Any, prefix: str = "") -> None:
    """NaN and ±inf are refused for every number: no setting means "unbounded" by them, and they would pass
    every range check (inf > 0) to fail later, mid-run."""
    for key, value in (as_plain(node).items() if prefix == "" else node.items()):
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            check_finite(value, f"{name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}={value} is not allowed: it must be a finite number")


def validate(cfg: Any) -> None:
    """Raise `ConfigError` for the first out-of-range value: the key, the value, and what is allowed."""
    check_finite(cfg)
    for key, ok, allowed in RULES:
        value = _get(cfg, key)
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}")
    if _get(cfg, "model.top_k") > _get(cfg, "model.num_experts"):
        raise ConfigError(
            f"model.top_k={_get(cfg, 'model.top_k')} is not allowed: it must be <= model.num_experts="
            f"{_get(cfg, 'model.num_experts')}"
        )
    if not _get(cfg, "model.moe_scale_by_router") and _get(cfg, "model.top_k") != 1:
        raise ConfigError(
            f"model.top_k={_get(cfg, 'model.top_k')} is not allowed with model.moe_scale_by_router=false (the seed's "
            f"unscaled MoE is top-1 only): set model.top_k=1 or model.moe_scale_by_router=true"
        )
    if _get(cfg, "model.d_model") % _get(cfg, "model.n_heads") and _get(cfg, "model.arch") == "transformer":
        raise ConfigError(f"model.n_heads={_get(cfg, 'model.n_heads')} must divide model.d_model")
    total = _get(cfg, "schedule.total")
    if total is not None and _get(cfg, "schedule.warmup") > total:
        raise ConfigError(
            f"schedule.warmup={_get(cfg, 'schedule.warmup')} is not allowed: it must be <= schedule.total={total}"
        )
    if _get(cfg, "trainer.min_lr") > _get(cfg, "trainer.lr"):
        raise ConfigError(
            f"trainer.min_lr={_get(cfg, 'trainer.min_lr')} is not allowed: it must be <= trainer.lr="
            f"{_get(cfg, 'trainer.lr')} (where the cosine schedule ends)"
        )
    metric = _get(cfg, "optimized_metric")
    names = [metric] if isinstance(metric, str) else list(metric) if metric is not None else []
    if not names or not all(isinstance(n, str) and "/" in n for n in names):
        raise ConfigError(
            f"optimized_metric={metric!r} is not allowed: it must be a metric name such as 'val/ppl', or a list "
            f"of them"
        )
    unknown = [n for n in names if not produces_metric(cfg, n)]
    if unknown:
        raise ConfigError(
            f"optimized_metric={metric!r} is not allowed: this run does not produce {', '.join(unknown)}; it "
            f"produces {', '.join(produced_metrics(cfg))}"
        )
    check_size(cfg)


# ------------------------------------------------------------------------------------- what a run produces
# The summary's metrics (what `optimized_metric` may name), by what they need (see HybridTrainer.fit).
RUN_METRICS = ("val/loss", "val/ppl", "perf/step_ms", "perf/tokens_per_s")
FLOOR_METRICS = ("val/loss_floor", "val/ppl_floor")  # synthetic data: its Bayes-optimal loss is known
KOOPMAN_METRICS = ("val/loss_koopman", "val/ppl_koopman")
# Families whose names vary with the layer and the diagnostics (koopman/<layer>/<diagnostic>, events/<event>).
EVENT_PATTERN = r"events/[a-z_]+"
KOOPMAN_LAYER_PATTERN = r"koopman/(\d+)/[a-z_0-9]+"


def _has_koopman(cfg: Any) -> bool:
    return bool(_get(cfg, "koopman.enabled")) and _get(cfg, "model.arch") == "resnet_bk"


def produced_metrics(cfg: Any) -> list[str]:
    """The summary metrics a run with these settings produces, for messages (families as patterns)."""
    names = list(RUN_METRICS)
    if _get(cfg, "data.source") == "synthetic":
        names += FLOOR_METRICS
    if _has_koopman(cfg):
        names += [*KOOPMAN_METRICS, f"koopman/<0..{_get(cfg, 'model.n_layers') - 1}>/<diagnostic>"]
    return [*names, "events/<event>"]


def produces_metric(cfg: Any, name: str) -> bool:
    if name in RUN_METRICS or re.fullmatch(EVENT_PATTERN, name):
        return True
    if name in FLOOR_METRICS:
        return _get(cfg, "data.source") == "synthetic"
    layer = re.fullmatch(KOOPMAN_LAYER_PATTERN, name)
    if name in KOOPMAN_METRICS or layer:
        return _has_koopman(cfg) and (layer is None or int(layer.group(1)) < _get(cfg, "model.n_layers"))
    return False


# ------------------------------------------------------------------------------------------- size sanity
BYTES_PER_FLOAT = 4
#: Weights, gradients and Adam's two moments: four floats per parameter while training.
TRAINING_COPIES = 4


def memory_estimate(cfg: Any) -> dict[str, float]:
    """A lower bound on a run's memory in bytes: parameters (as trained: with gradients and Adam's state) and
    the activations of one step, counting only the terms that dominate (the Koopman operators grow as dim²)."""
    d, layers, n_seq = _get(cfg, "model.d_model"), _get(cfg, "model.n_layers"), _get(cfg, "model.n_seq")
    batch = _get(cfg, "trainer.batch_size")
    vocab = next((v for v in (_get(cfg, "data.vocab_size"), _get(cfg, "data.max_vocab"),
                              _get(cfg, "data.bpe_vocab_size")) if v), 0)
    tokens = batch * n_seq
    per_layer = _get(cfg, "model.num_experts") * 4 * d * d
    activations = layers * tokens * d * 8
    if _has_koopman(cfg):
        k = _get(cfg, "koopman.dim")
        per_layer += 3 * k * k + 2 * d * k  # lift, unlift, operator
        sampled = min(_get(cfg, "koopman.sample_tokens") or tokens, tokens)
        activations += layers * (sampled * k * 4 + _get(cfg, "dmd.buffer_size") * k * 2)
    parameters = layers * per_layer + (2 * vocab + n_seq) * d
    return {"parameters": float(parameters) * TRAINING_COPIES * BYTES_PER_FLOAT,
            "activations": float(activations) * BYTES_PER_FLOAT}


def machine_memory(device: str) -> tuple[float, str]:
    """Bytes of memory on the device a run would use, and its name."""
    if device != "cpu":
        import torch

        if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
            index = int(device.split(":")[1]) if ":" in device else 0
            if torch.cuda.is_available():
                if index >= torch.cuda.device_count():
                    raise ConfigError(f"trainer.device={device!r} is not allowed: this machine has "
                                      f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                                      f"cuda:{torch.cuda.device_count() - 1}")
                return float(torch.cuda.get_device_properties(index).total_memory), f"GPU cuda:{index}"
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "RAM"


def check_size(cfg: Any) -> None:
    """Refuse a model that cannot fit, before any memory is allocated, with the numbers."""
    estimate = memory_estimate(cfg)
    need = sum(estimate.values())
    have, where = machine_memory(_get(cfg, "trainer.device"))
    if need > have:
        gib = 2.0**30
        raise ConfigError(
            f"the model needs at least {need / gib:,.1f} GiB (parameters with gradients and Adam state "
            f"{estimate['parameters'] / gib:,.1f} GiB, activations {estimate['activations'] / gib:,.1f} GiB) but "
            f"this machine has {have / gib:,.1f} GiB of {where}: lower koopman.dim (now {_get(cfg, 'koopman.dim')}),"
            f" model.d_model ({_get(cfg, 'model.d_model')}), model.n_layers, model.n_seq or trainer.batch_size"
        )


def as_plain(node: Any) -> Any:
    """A dataclass/Enum tree as plain dicts and values (for logging and hashing)."""
    if is_dataclass(node):
        return {f.name: as_plain(getattr(node, f.name)) for f in fields(node)}
    if isinstance(node, Enum):
        return node.value
    if isinstance(node, dict):
        return {k: as_plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [as_plain(v) for v in node]
    return node
