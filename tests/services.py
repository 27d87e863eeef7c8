"""Real services for tests, as context managers: an MLflow tracking server and a PostgreSQL server, each on a
free loopback port with its files under a temporary folder, a bounded start-up time and a clean shutdown.

    with mlflow_server(tmp_path) as server:        # server.uri == "http://127.0.0.1:<port>"
        ...
    with postgres_server() as pg:                   # pg.url == "postgresql://kbk@127.0.0.1:<port>/kbk"
        ...                                         # pg.sqlalchemy_url: for Optuna and MLflow

`ServiceUnavailable` means the service cannot be started on this machine at all (binaries missing, no
unprivileged user to run PostgreSQL as root): tests skip on it, with its message as the reason. Any other
failure (the service started but crashed, or did not answer in time) raises `RuntimeError` with the end of its
log, and the test fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Attempts with a fresh port when a service loses the race for its port to another process.
PORT_ATTEMPTS = 3


class ServiceUnavailable(RuntimeError):
    """The service cannot run on this machine (not a failure of the code under test)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_taken(log: str) -> bool:
    return "address already in use" in log.lower() or "could not bind" in log.lower()


def _stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group we started (the server and its workers), then SIGKILL what is left of it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # workers may outlive the leader
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


# ----------------------------------------------------------------------------------------------------- MLflow


@dataclass
class MlflowServer:
    uri: str
    port: int
    backend_store_uri: str
    artifacts_dir: Path
    log_path: Path
    process: subprocess.Popen


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlflow_server(
    base_dir: str | Path,
    start_timeout_s: float = 90.0,
    job_execution: bool = False,
    backend_store_uri: str | None = None,
) -> Iterator[MlflowServer]:
    """`mlflow server` on 127.0.0.1:<free port> with SQLite backend `base_dir/server/mlflow.db`, proxied
    artifacts in `base_dir/server/artifacts` and one worker. Ready when `/health` answers 200; stopped (its
    whole process group) on exit.

    `backend_store_uri` replaces the SQLite file (e.g. a `postgres_server().url`). MLflow's background job
    runner (about seven huey processes, for GenAI jobs) is off unless `job_execution`."""
    base = Path(base_dir).resolve() / "server"
    artifacts = base / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    backend = backend_store_uri or f"sqlite:///{base / 'mlflow.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if job_execution else "false"
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        log_path = base / f"server-{port}.log"
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", backend,
            "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=base, env=env,
                start_new_session=True,  # its own process group, so that stopping it reaches its workers
            )  # fmt: skip
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout_s
        try:
            while not _healthy(uri):
                if process.poll() is not None:
                    log_text = _tail(log_path)
                    if _port_taken(log_text) and attempt < PORT_ATTEMPTS:
                        break
                    raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log_text}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mlflow server did not answer {uri}/health within {start_timeout_s:g} s:\n"
                        + _tail(log_path)
                    )
                time.sleep(0.2)
            else:
                yield MlflowServer(uri, port, backend, artifacts, log_path, process)
                return
        finally:
            _stop_group(process)
    raise RuntimeError(f"mlflow server could not get a free port in {PORT_ATTEMPTS} attempts")


# ------------------------------------------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresServer:
    url: str  # libpq form, for psycopg2.connect(url)
    host: str
    port: int
    user: str
    dbname: str
    data_dir: Path
    log_path: Path

    @property
    def sqlalchemy_url(self) -> str:
        """The URL for SQLAlchemy users (Optuna's RDB storage, MLflow), naming the driver: SQLAlchemy 2.1 maps
        a bare `postgresql://` to psycopg 3, which is not installed; psycopg2 is."""
        return self.url.replace("postgresql://", "postgresql+psycopg2://", 1)


def postgres_bin_dir() -> Path:
    """The folder with `initdb`, `pg_ctl` and `createdb`: the newest /usr/lib/postgresql/*/bin, else the
    one on PATH."""

    def version(folder: str) -> tuple[int, ...]:
        return tuple(int(p) for p in Path(folder).parent.name.split(".") if p.isdigit())

    needed = ("initdb", "pg_ctl", "createdb")
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all((Path(folder) / name).exists() for name in needed):
            return Path(folder)
    found = [shutil.which(name) for name in needed]
    if all(found):
        return Path(found[0]).resolve().parent
    raise ServiceUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, createdb) not found in /usr/lib/postgresql/*/bin or on "
        "PATH; install the PostgreSQL server package to run these tests"
    )


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root (it refuses to run as root); None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise ServiceUnavailable(
        "running as root, and there is no 'postgres' or 'nobody' user to run PostgreSQL as"
    )


@contextlib.contextmanager
def postgres_server(
    user: str = "kbk", dbname: str = "kbk", start_timeout_s: float = 60.0
) -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster (`initdb`, trust authentication, fsync off) on 127.0.0.1:<free port>
    with database `dbname` owned by superuser `user`; stopped (`pg_ctl stop -m fast`) and deleted on exit.

    The cluster lives in a fresh folder under the system temp dir rather than pytest's tmp_path: as root, the
    server runs as the `postgres` user, which cannot enter pytest's private (0700) temp folders.
    """
    bin_dir = postgres_bin_dir()
    run_as = _run_as()
    base = Path(tempfile.mkdtemp(prefix="kbk-pg-"))
    data_dir, log_path = base / "data", base / "postgres.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    options: dict = {
        "stdin": subprocess.DEVNULL,
        "capture_output": True,
        "text": True,
        "cwd": base,
        "env": env,
    }
    if run_as is not None:
        os.chown(base, *run_as)
        options.update(user=run_as[0], group=run_as[1], extra_groups=[])

    def run(program: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / program), *args], timeout=timeout, **options)

    def stop() -> None:
        pid_file = data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        result = run("pg_ctl", "stop", "-D", str(data_dir), "-m", "fast", "-w", "-t", "20", timeout=30)
        if result.returncode != 0 and pid_file.exists():
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)  # the postmaster we started

    try:
        result = run(
            "initdb", "-D", str(data_dir), "-U", user, "--auth=trust", "--encoding=UTF8", "--locale=C",
            "--no-sync",
            timeout=start_timeout_s,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            server_options = (
                f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{base}' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            result = run(
                "pg_ctl", "start", "-D", str(data_dir), "-l", str(log_path), "-o", server_options,
                "-w", "-t", str(int(start_timeout_s)),
                timeout=start_timeout_s + 10,
            )  # fmt: skip
            if result.returncode == 0:
                break
            stop()
            log_text = _tail(log_path)
            if not (_port_taken(log_text) and attempt < PORT_ATTEMPTS):
                raise RuntimeError(f"pg_ctl start failed ({result.returncode}):\n{result.stderr}\n{log_text}")
        result = run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, dbname, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"createdb failed ({result.returncode}):\n{result.stderr}\n{_tail(log_path)}")
        yield PostgresServer(
            url=f"postgresql://{user}@127.0.0.1:{port}/{dbname}",
            host="127.0.0.1",
            port=port,
            user=user,
            dbname=dbname,
            data_dir=data_dir,
            log_path=log_path,
        )
    finally:
        try:
            stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
