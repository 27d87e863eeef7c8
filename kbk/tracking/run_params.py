"""A config as it is printed, logged and stored: flattened into MLflow params, hashed, and with every secret the job
knows (the passwords in tracking.uri and in the sweep's storage URL: `kbk.run.known_secrets`) replaced by `***`
before anything is written.

Plain Python (no MLflow; OmegaConf only when handed a DictConfig), so the sweeper and `kbk.identity` use it without
paying for MLflow's import.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig


def _to_plain(obj: Any) -> Any:
    """An OmegaConf container as plain dicts and lists (interpolations resolved); anything else unchanged."""
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True, throw_on_missing=False)
    return obj


def _json(value: Any) -> str:
    return json.dumps(_to_plain(value), sort_keys=True, default=str, ensure_ascii=False)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"koopman": {"dim": 256}}` → `{"koopman.dim": "256"}`, with every value a string.

    Nested mappings become dotted keys; lists and tuples become JSON strings (`"[64, 128]"`); an empty mapping
    is kept as `"{}"` so that it stays visible; other values go through `str` (so `True`, `None`, `0.001`),
    which is also what MLflow itself does to a param value. A DictConfig is resolved first.
    """
    cfg = _to_plain(cfg)
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        value = _to_plain(value)
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, name))
            else:
                out[name] = "{}"
        elif isinstance(value, list | tuple):
            out[name] = _json(list(value))
        else:
            out[name] = str(value)
    return out


def config_hash(cfg: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of `cfg` (`kbk.identity.run_hash` hashes a run's config with it).

    Canonical JSON (sorted keys, no whitespace, tuples as lists, unknown types through `str`) hashed with
    SHA-256: the same settings give the same hash in every process and on every machine, whatever the key
    order. Note that `1` and `1.0` are different settings here.
    """
    canonical = json.dumps(
        _to_plain(cfg), sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def redacted(cfg: DictConfig, secrets: list[str]) -> DictConfig:
    """`cfg` resolved, with every secret replaced by `***` (for printing and logging)."""
    if not secrets:
        return cfg
    from omegaconf import OmegaConf

    from kbk.urls import redact_text

    return OmegaConf.create(redact_text(OmegaConf.to_yaml(cfg, resolve=True), secrets))


def redact_files(folder: Path, secrets: list[str]) -> None:
    """Hydra's record of the job (`.hydra/*.yaml`, with the overrides as typed) with the secrets replaced."""
    from kbk.urls import redact_text

    for path in sorted(folder.glob("*.yaml")) if secrets else []:
        text = path.read_text()
        if redact_text(text, secrets) != text:
            path.write_text(redact_text(text, secrets))


def logged_params(cfg: DictConfig, secrets: list[str], dropped: Iterable[str]) -> dict[str, str]:
    """The MLflow params of a job: its config flattened (`koopman.dim`), secrets redacted, without the `dropped`
    keys and what is under them (the user's labels, logged as tags; how this process resumes)."""
    from omegaconf import OmegaConf

    dropped = tuple(dropped)
    params = flatten(OmegaConf.to_container(redacted(cfg, secrets), resolve=True, enum_to_str=True))
    return {k: v for k, v in params.items() if not any(k == d or k.startswith(f"{d}.") for d in dropped)}
