"""The root config schema: each component's settings dataclass (defined beside its code) composed into the tree
that the YAML files in `conf/` fill, registered in Hydra's ConfigStore as `kbk_schema`.

OmegaConf rejects unknown keys and wrong types while composing. Each component's dataclass checks its own ranges
when built (`__post_init__`, a `kbk.errors.SettingError`); `settings_of` builds them all and turns such an error
into a `ConfigError` naming the full key (`dmd.buffer_size=0 ...`); `validate` adds the checks that span
components (the optimised metric, the model's size). The `data` node is one schema for every source (so the
composed config, and its hash, keep every source's keys); each loader builds its own dataclass from it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from kbk.errors import ConfigError, SettingError, require, require_choice
from kbk.koopman.config import DMDConfig, KoopmanConfig
from kbk.models.config import ARCHITECTURES, ResNetBKConfig, TransformerConfig
from kbk.training.schedules import ScheduleConfig
from kbk.training.trainer_config import TrainerConfig


@dataclass
class _Architecture:
    arch: str = "resnet_bk"  # "resnet_bk" | "transformer" (the GPT-style baseline)


@dataclass
class ModelConfig(TransformerConfig, ResNetBKConfig, _Architecture):
    """The `model` node: `arch` and the union of every architecture's settings (in this order: arch, the
    ResNet-BK settings, then the Transformer's own `n_heads`); only the chosen architecture's are checked and used
    (`component()`)."""

    def __post_init__(self) -> None:
        require_choice(self, "arch", tuple(ARCHITECTURES))
        self.component()

    def component(self) -> ResNetBKConfig | TransformerConfig:
        """The chosen architecture's own settings dataclass (checked as it is built)."""
        kind = ARCHITECTURES[self.arch]
        return kind(**{f.name: getattr(self, f.name) for f in fields(kind)})


@dataclass
class DataConfig:
    """One schema for every source; null means "that source's default". `kbk.data.load_corpus` builds the chosen
    source's own settings dataclass (`SyntheticConfig`, `TextConfig`, `WikiText2Config`: their defaults and range
    checks) from the keys set here; an option the source does not have (data.path with data=synthetic, say) is an
    error that lists the source's options."""

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
class TrackingConfig:
    backend: str = "mlflow"  # "mlflow" | "none"
    uri: str | None = None  # null: SQLite under the outputs folder
    experiment: str = "kbk"
    run_name: str | None = None
    # MLflow's system-metrics monitor (CPU, memory, disk, network; GPU with nvidia-ml-py) as `system/*` metrics
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0  # seconds between samples (each sample is one logged step)

    def __post_init__(self) -> None:
        require_choice(self, "backend", ("mlflow", "none"))
        require(self, "system_metrics_interval_s", lambda v: v > 0, "a number of seconds > 0")


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


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="kbk_schema", node=KbkConfig)


# ------------------------------------------------------------------------------------------------ range checks
TAG_PATTERN = r"[\w.\- /]+(=.*)?"


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


def settings_of(cfg: Any) -> KbkConfig:
    """The composed config (an OmegaConf node) as checked dataclasses; an unknown key, a missing value or one out
    of range is a `ConfigError` naming the full key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    check_known_keys(cfg)
    try:
        check_finite(OmegaConf.to_container(cfg, resolve=True))
        settings = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as exc:
        key = exc.full_key
        hint = " (a .txt file or a folder of them)" if key == "data.path" else ""
        raise ConfigError(f"{key} is required but not set: pass {key}=<value>{hint}") from None
    except SettingError as exc:
        raise config_error(exc) from None
    validate(settings)
    return settings


def config_error(exc: SettingError) -> ConfigError:
    """A component's `SettingError` as a `ConfigError` naming full keys: `top_k=2 ... num_experts=1`, raised by
    the model's settings, reads `model.top_k=2 ... model.num_experts=1`."""
    import typing

    hints = typing.get_type_hints(KbkConfig)
    # (ModelConfig inherits from each architecture's dataclass, so their errors land under `model`.)
    section = next(key for key, hint in hints.items() if is_dataclass(hint) and issubclass(hint, exc.owner))
    names = "|".join(f.name for f in fields(exc.owner))
    return ConfigError(re.sub(rf"(?<![\w.])({names})=", rf"{section}.\1=", str(exc)))


def validate(cfg: KbkConfig) -> None:
    """Raise `ConfigError` for what no single component can judge: the run's labels, the metric it optimises, and
    whether the model fits this machine. (Each component checked its own ranges when it was built.)"""
    bad_tags = [t for t in cfg.tags if not (isinstance(t, str) and re.fullmatch(TAG_PATTERN, t))
                or t.startswith(("kbk.", "mlflow."))]
    if bad_tags:
        raise ConfigError(
            f"tags={cfg.tags!r} is not allowed: it must be a list of words or key=value strings, keys of letters, "
            f"digits, '_', '-', '.', ' ', '/', not starting with kbk. or mlflow. (e.g. 'tags=[baseline,"
            f"\"owner=ana\"]': a key=value in quotes)")
    metric = cfg.optimized_metric
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
    watched = names[0]  # early stopping and the best checkpoint watch the first (what Optuna would prune on)
    if (cfg.trainer.early_stopping_patience is not None or cfg.trainer.save_best) and not watched.startswith("val/"):
        raise ConfigError(
            f"trainer.early_stopping_patience and trainer.save_best watch optimized_metric={watched!r} at each "
            f"evaluation, which produces val/* metrics only: set optimized_metric=val/loss (or val/ppl), or leave "
            f"trainer.early_stopping_patience=null and trainer.save_best=false"
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
