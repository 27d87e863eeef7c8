"""Where a study lives. One string names it for the sweeper and for every trial's process (`KBK_OPTUNA_STORAGE`):

- an absolute path to a journal file (default `<outputs>/optuna/<study_name>.journal`): Optuna's
  `JournalFileBackend`, safe for several processes on one machine or on NFS, no server needed;
- an Optuna RDB URL: `postgresql://user@host/db` for a cluster, `sqlite:////abs/path.db` (Optuna advises
  against SQLite for parallel workers; a relative `sqlite:///x.db` is made absolute here).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kbk.errors import ConfigError
from kbk.urls import redact_url, url_scheme, with_installed_driver

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

SCHEMA_RACE_RETRIES = 5
_SCHEMA_RACE_MARKERS = ("duplicate key", "UniqueViolation", "already exists", "IntegrityError")
RDB_SCHEMES = ("postgresql", "mysql", "sqlite", "oracle", "mssql")


def default_storage(outputs: str | os.PathLike, study_name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("._") or "study"
    return str(Path(outputs) / "optuna" / f"{safe}.journal")


def resolve_storage(spec: str | None, outputs: str | os.PathLike, study_name: str) -> str:
    """The storage string every process should use: absolute, so that a job started elsewhere finds it."""
    if spec is None or not str(spec).strip():
        return default_storage(outputs, study_name)
    spec = str(spec).strip()
    scheme = storage_scheme(spec)
    if not scheme:
        return str(Path(spec).expanduser().resolve())
    prefix, _, rest = spec.partition("://")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else ""  # "/relative.db" or "//abs.db" (SQLAlchemy's form)
        if path.split("?", 1)[0] in ("", ":memory:"):
            raise ConfigError(
                f"hydra.sweeper.storage={redact_url(spec)!r} is an in-memory SQLite database that trials in other "
                "processes cannot see. Fix: leave it null (a journal file under outputs/) or give a file."
            )
        return spec if path.startswith("/") else f"{prefix}:///{Path(path).resolve()}"
    if scheme in RDB_SCHEMES:
        return with_installed_driver(spec)
    if scheme == "file":
        return str(Path(rest).resolve())
    raise ConfigError(
        f"hydra.sweeper.storage={redact_url(spec)!r}: unknown scheme {scheme}://. Fix: leave it null (a journal "
        "file under outputs/), give a journal file path, or an RDB URL such as postgresql://user@host/db."
    )


def storage_scheme(spec: str) -> str:
    """The URL scheme of a storage string; "" for a journal file's path (which may hold a colon)."""
    return url_scheme(spec) if "://" in spec else ""


def is_rdb(spec: str) -> bool:
    return storage_scheme(spec) in RDB_SCHEMES


def open_storage(spec: str) -> BaseStorage:
    """The Optuna storage for a string from `resolve_storage`; a clear `ConfigError` when it cannot be used."""
    import optuna

    if is_rdb(spec):
        for attempt in range(SCHEMA_RACE_RETRIES + 1):
            try:
                return optuna.storages.RDBStorage(spec, engine_kwargs=_engine_kwargs(spec))
            except Exception as e:  # noqa: BLE001 (SQLAlchemy/driver errors of every kind)
                # Sweeper processes starting together on a fresh database race to create Optuna's tables; the
                # loser sees a duplicate row or table, and on a second look finds the schema made.
                if attempt < SCHEMA_RACE_RETRIES and any(m in str(e) for m in _SCHEMA_RACE_MARKERS):
                    time.sleep(0.5 * (attempt + 1))
                    continue
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(
                    f"Cannot open the Optuna storage {redact_url(spec)} ({type(e).__name__}: {first}). Fix: check "
                    "that the database server is running and reachable and the URL is right, or leave "
                    "hydra.sweeper.storage null for a journal file under outputs/."
                ) from e
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = Path(spec)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as e:
        raise ConfigError(
            f"Cannot use the journal file {path} as Optuna storage ({e.strerror or e}). Fix: make its folder "
            "writable, or set hydra.sweeper.storage to another path or an RDB URL."
        ) from e


def _engine_kwargs(spec: str) -> dict:
    # Connections checked before use: a sweep outlives idle timeouts of database servers and proxies.
    return {} if spec.startswith("sqlite") else {"pool_pre_ping": True}
