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

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
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
    match = _SCHEME.match(spec)
    if match is None:
        return str(Path(spec).expanduser().resolve())
    scheme = match.group(1).lower().split("+", 1)[0]
    if scheme == "sqlite":
        rest = spec[len(match.group(0)) :]  # "/relative.db" or "//abs.db" (SQLAlchemy's sqlite:///x form)
        path = rest[1:] if rest.startswith("/") else ""
        if path.split("?", 1)[0] in ("", ":memory:"):
            raise ConfigError(
                f"hydra.sweeper.storage={_redact(spec)!r} is an in-memory SQLite database that trials in other "
                "processes cannot see. Fix: leave it null (a journal file under outputs/) or give a file."
            )
        if not path.startswith("/"):
            return f"{match.group(0)}/{Path(path).resolve()}"
        return spec
    if scheme in RDB_SCHEMES:
        return _with_driver(spec)
    if scheme == "file":
        return str(Path(spec[len("file://") :]).resolve())
    raise ConfigError(
        f"hydra.sweeper.storage={_redact(spec)!r}: unknown scheme {scheme}://. Fix: leave it null (a journal file "
        "under outputs/), give a journal file path, or an RDB URL such as postgresql://user@host/db."
    )


def _with_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3; with only psycopg2 installed (kbk's dependency),
    name that driver rather than fail with an ImportError."""
    import importlib.util

    if url.lower().startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def is_rdb(spec: str) -> bool:
    match = _SCHEME.match(spec)
    return match is not None and match.group(1).lower().split("+", 1)[0] in RDB_SCHEMES


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
                    f"Cannot open the Optuna storage {_redact(spec)} ({type(e).__name__}: {first}). Fix: check "
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


def _redact(spec: str) -> str:
    """A URL without its password, for messages and logs."""
    from kbk.tracking.store import redact_url

    return redact_url(spec)
