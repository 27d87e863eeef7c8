"""Where runs go: resolving `tracking.uri`, and preparing a store (schema, experiment) before any run starts.

`resolve_tracking_uri` is plain Python; MLflow is imported only inside the functions that talk to a store.

Traps this module exists for (docs/sweeps.md, "MLflow"): MLflow's own default (`sqlite:///mlflow.db`) is
relative to the current folder, so runs launched from different folders would land in different databases; the
first use of a fresh SQLite database creates its schema without a lock, so parallel workers starting on a new
file fail; and a client pointed at a dead server retries for minutes before it says anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kbk.errors import TrackingError
from kbk.urls import redact_text, redact_url, url_password, url_scheme, with_installed_driver

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: URI schemes passed to SQLAlchemy as they are (a `+driver` suffix is allowed, e.g. `postgresql+psycopg2`).
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")

#: Seconds to wait for a tracking server to answer the reachability check.
SERVER_CHECK_TIMEOUT_S = 3.0

#: Seconds to wait for another process that is creating the same SQLite database.
SQLITE_INIT_LOCK_TIMEOUT_S = 120.0

_TRACKING_FIX = (
    "start the server (e.g. `mlflow server --backend-store-uri sqlite:///$PWD/outputs/mlflow.db "
    "--host 127.0.0.1 --port 5000`) or point tracking.uri at a running one, or track locally with "
    "tracking=local (SQLite under outputs/), or turn tracking off with tracking=none"
)


def _file_store_allowed() -> bool:
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1")


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def resolve_tracking_uri(uri: str | None, outputs_dir: str | Path) -> str:
    """The absolute tracking URI every process of a run or sweep should use.

    - None or "" → `sqlite:////<abs outputs_dir>/mlflow.db` (one database for runs from every folder).
    - `sqlite:///relative.db` → made absolute against the current folder (what the relative path means where
      it was typed); `sqlite:////abs.db` is kept; an in-memory SQLite (`sqlite://`) is refused (each
      connection would see its own empty database). A plain `*.db` path is read as a SQLite file.
    - `file:` stores (`./mlruns`) are refused unless `MLFLOW_ALLOW_FILE_STORE=true` is set, which MLflow 3
      itself requires for them; then made absolute.
    - `http(s)://` and database URLs (`postgresql://`, `mysql://`, `mssql://`) are passed through, except
      that a bare `postgresql://` becomes `postgresql+psycopg2://` when only psycopg2 is installed
      (SQLAlchemy 2.1 would look for psycopg 3), and that credentials in an http(s) URL move to MLflow's
      MLFLOW_TRACKING_USERNAME/PASSWORD variables of this process.
    """
    if uri is None or not str(uri).strip():
        return f"sqlite:///{_absolute(outputs_dir) / 'mlflow.db'}"
    uri = str(uri).strip()
    scheme = url_scheme(uri)
    if scheme == "sqlite":
        prefix, _, rest = uri.partition("://")
        if not rest.startswith("/"):
            raise TrackingError(
                f"tracking.uri={uri!r} is an in-memory or malformed SQLite URI; every process would see its "
                "own empty database. Fix: give a file, e.g. sqlite:////abs/path/mlflow.db, or leave "
                "tracking.uri unset for outputs/mlflow.db."
            )
        path, sep, query = rest[1:].partition("?")
        if path in ("", ":memory:"):
            raise TrackingError(
                f"tracking.uri={uri!r} is an in-memory SQLite database: runs would vanish with the process. "
                "Fix: give a file, e.g. sqlite:////abs/path/mlflow.db, or leave tracking.uri unset."
            )
        return f"{prefix}:///{_absolute(path)}{sep}{query}"
    if scheme in ("http", "https"):
        return _credentials_to_environment(uri.rstrip("/"))
    if scheme in DATABASE_SCHEMES:
        return with_installed_driver(uri)
    if scheme == "file" or (scheme == "" and Path(uri).suffix not in (".db", ".sqlite", ".sqlite3")):
        if not _file_store_allowed():
            raise TrackingError(
                f"tracking.uri={uri!r} is an MLflow file store, which MLflow 3 refuses unless "
                "MLFLOW_ALLOW_FILE_STORE=true is set (it is in maintenance mode and slow with many runs). "
                "Fix: use a SQLite file (leave tracking.uri unset for outputs/mlflow.db, or "
                "sqlite:////abs/path/mlflow.db), a tracking server (http://host:port), or export "
                "MLFLOW_ALLOW_FILE_STORE=true to keep the file store."
            )
        if scheme == "file":
            path = re.sub(r"^file:(//)?", "", uri, flags=re.IGNORECASE)
            if path.startswith("localhost/"):
                path = path[len("localhost") :]
        else:
            path = uri
        return _absolute(path).as_uri()
    if scheme == "":
        return f"sqlite:///{_absolute(uri)}"
    raise TrackingError(
        f"tracking.uri={redact_url(uri)!r} has a scheme ({scheme}:) kbk does not support. Fix: use "
        "sqlite:////abs/path.db, http(s)://host:port (an MLflow server), or a postgresql:// / mysql:// "
        "database URL; or leave it unset for outputs/mlflow.db."
    )


def _credentials_to_environment(uri: str) -> str:
    """`http://user:PW@host` -> `http://host`, with the credentials in MLFLOW_TRACKING_USERNAME/PASSWORD (MLflow's
    own way to authenticate, inherited by job processes): MLflow prints its URI ("View run at ...") and kbk stores
    it, so the URI that goes on must hold no password."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri)
    if not parts.password:
        return uri
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
    os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, None for any other store."""
    if url_scheme(uri) != "sqlite":
        return None
    rest = uri.partition("://")[2]
    return Path(rest[1:].partition("?")[0]) if rest.startswith("/") else None


def check_server(uri: str, timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """Raise `TrackingError` unless something answers HTTP at `uri` within `timeout_s`.

    Asks `<uri>/health` (MLflow's liveness endpoint). Any HTTP answer, even an error status (an auth proxy, an
    older server), counts as reachable; refused connections, DNS failures and time-outs do not. MLflow's own
    client would retry such a server for minutes before failing, so this check runs first.
    """
    import base64
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri.rstrip("/"))
    headers = {}
    if parts.username:  # credentials in the URL go in a header: urllib would read them as part of the host
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    request = urllib.request.Request(parts.geturl() + "/health", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http(s) only, checked)
            response.read(64)
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"The MLflow tracking server at {redact_url(uri)} cannot be reached ({reason}; gave up after "
            f"{timeout_s:g} s). Fix: {_TRACKING_FIX}."
        ) from e


def _check_sqlite_file(uri: str, path: Path) -> None:
    fix = "Fix: point tracking.uri at a writable file (sqlite:////abs/path/mlflow.db) or leave it unset."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(
            f"Cannot create the folder {path.parent} for the MLflow database {uri}: {e.strerror or e}. {fix}"
        ) from e
    if path.is_dir():
        raise TrackingError(f"The MLflow database path {path} (from {uri}) is a folder, not a file. {fix}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise TrackingError(f"The folder {path.parent} of the MLflow database {uri} is not writable. {fix}")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise TrackingError(f"The MLflow database {path} is not readable and writable. {fix}")
        with open(path, "rb") as f:
            header = f.read(16)
        if header and header != b"SQLite format 3\x00":
            raise TrackingError(
                f"{path} (from tracking.uri={uri}) exists but is not a SQLite database. Fix: move it away, "
                "or point tracking.uri at another file."
            )


@contextlib.contextmanager
def _sqlite_init_lock(path: Path, timeout_s: float = SQLITE_INIT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive lock on `<db>.lock` while a process creates or opens the database (POSIX only).

    MLflow creates a fresh database's schema without a lock, and processes that race on it fail (duplicate
    column, alembic errors). With this lock the first process creates it; the others wait, then find it ready.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; call ensure_experiment once before starting workers there
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(
                        f"Waited {timeout_s:g} s for another process to finish creating the MLflow database "
                        f"{path} (lock file {lock_path}). Fix: check for a stuck kbk process, or remove the "
                        "lock file if none is running."
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _artifact_location(uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store go next to the database (`mlartifacts/<experiment>`), not to `./mlruns`
    of whatever folder the first run started in (MLflow's default). Other stores decide for themselves."""
    path = sqlite_path(uri)
    if path is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return (path.parent / "mlartifacts" / f"{safe[:80]}-{digest}").as_uri()


def _wrap(uri: str, action: str, error: Exception) -> TrackingError:
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return TrackingError(
        f"MLflow store {redact_url(uri)}: could not {action} ({type(error).__name__}: "
        f"{redact_text(cause, [url_password(uri) or ''])}). Fix: check that "
        "tracking.uri points at a usable store (a writable SQLite file, a running server, a reachable "
        "database), or use tracking=none to run without tracking."
    )


def check_store(uri: str) -> None:
    """The checks that fail fast with a clear message, without importing MLflow: a URI given, a tracking server
    that answers, a SQLite file that is absolute and usable. A `TrackingError` if one fails."""
    if not uri:
        raise TrackingError(
            "No tracking URI given. Fix: resolve one with resolve_tracking_uri(cfg.uri, outputs)."
        )
    scheme = url_scheme(uri)
    if scheme in ("http", "https"):
        check_server(uri)
    path = sqlite_path(uri)
    if path is not None:
        if not path.is_absolute():
            raise TrackingError(
                f"tracking URI {uri} is relative; it would mean a different database in every folder. "
                "Fix: pass it through resolve_tracking_uri first."
            )
        _check_sqlite_file(uri, path)


@contextlib.contextmanager
def prepared_store(uri: str) -> Iterator[MlflowClient]:
    """A client for `uri` after `check_store`, held under the SQLite init lock so that schema creation cannot race.
    Used by `ensure_experiment` and `MlflowTracker.start`."""
    check_store(uri)
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    lock = _sqlite_init_lock(path) if path is not None else contextlib.nullcontext()
    with lock:
        client = MlflowClient(tracking_uri=uri)
        try:
            client.search_experiments(max_results=1)  # opens the store: creates or checks the schema
        except Exception as e:
            raise _wrap(uri, "open the store", e) from e
        yield client


def experiment_id(client: MlflowClient, uri: str, name: str, create: bool = True) -> str:
    """The id of experiment `name`; with `create`, made when missing (artifacts next to a SQLite db)."""
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None and create:
            try:
                return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
            except MlflowException as e:
                if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)  # another process created it meanwhile
    except MlflowException as e:
        raise _wrap(uri, f"get or create experiment {name!r}", e) from e
    if experiment is None:
        raise TrackingError(f"No experiment {name!r} in {redact_url(uri)}. Fix: create it with ensure_experiment "
                            "first.")
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"Experiment {name!r} in {redact_url(uri)} is deleted (id {experiment.experiment_id}). Fix: restore it "
            f"(`MLFLOW_TRACKING_URI={redact_url(uri)} mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}`) or choose another experiment name."
        )
    return experiment.experiment_id


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store's schema and experiment `name` if missing; return the experiment id.

    Call once, in one process, before parallel workers start (the sweeper does). Fails fast with a
    `TrackingError` that names the URI and the fix when a server is unreachable (a few seconds, no run
    created) or a SQLite path is unusable. `uri` should come from `resolve_tracking_uri`.
    """
    with prepared_store(uri) as client:
        return experiment_id(client, uri, name, create=True)
