"""Shared fixtures for the Hydra application tests (test_configs, test_run, test_bad_input, test_resume).

Everything here is real: Hydra's own compose, MLflow's SQLite store, `python -m kbk.run` in a subprocess. The one
shortcut is `mlflow_store`: MLflow needs ~3-5 s to create a fresh SQLite schema (alembic migrations), so a schema
made once per session is copied into an outputs folder before a subprocess runs there. kbk still creates its
experiment, runs and artifact folder in that copy itself; the in-process test in test_run.py starts from no
database at all, so the path that creates one is covered too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kbk.paths import CONF_DIR, PROJECT_ROOT

#: A run of ~1-3 s on a 2-core CPU: a 1-layer model on a tiny synthetic corpus, 12 steps, evaluated every 4.
TINY_MODEL = [
    "model.n_seq=16", "model.d_model=16", "model.n_layers=1", "koopman.dim=8", "koopman.sample_tokens=32",
    "trainer.batch_size=4", "trainer.max_steps=12", "trainer.eval_every=4",
]
TINY_DATA = ["data.n_train_tokens=4000", "data.n_val_tokens=1000", "data.vocab_size=32"]
TINY = [*TINY_MODEL, *TINY_DATA]

#: Variables that would leak a caller's store, outputs folder or sweep into a test's run.
LEAKY_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "KBK_OUTPUTS", "KBK_PARENT_RUN_ID",
             "KBK_SWEEP", "KBK_TRIAL_NUMBER", "HYDRA_FULL_ERROR")


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """Overrides for a tiny run (synthetic data) that writes everything under `tmp_path / "outputs"`."""
    return [*TINY, f"paths.outputs={tmp_path / 'outputs'}"]


def compose_kbk(overrides: Sequence[str] = (), hydra: bool = False):
    """The config `python -m kbk.run <overrides>` would run (with the `hydra` node when `hydra=True`)."""
    from hydra import compose, initialize_config_dir

    import kbk.run  # noqa: F401  (registers the schema and the ${kbk_outputs:} resolver, as the entrypoint does)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@contextlib.contextmanager
def one_torch_thread():
    """Run in-process training on one thread: a tiny model gains nothing from more, and on shared, busy cores each
    parallel region waits for every thread to be scheduled (a 0.1 s run can take 30 s).

    The count is NOT raised again afterwards: with torch 2.13's CPU build (MKL), raising it in a process after
    lowering it breaks every later LAPACK call (`linalg.inv`/`solve` hang or print "Intel oneMKL ERROR: Parameter
    6 was incorrect on entry to SLASWP"), so the rest of the test process stays on one thread."""
    import torch

    torch.set_num_threads(1)
    yield


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    env.setdefault("HF_HUB_OFFLINE", "1")  # never the hub from a test
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models gain nothing from threads; shared cores lose a lot
    env.update(extra or {})
    return env


def kbk_command(args: Sequence[str], script: bool = False) -> list[str]:
    """`python -m kbk.run ARGS`, or `python <repo>/kbk/run.py ARGS` with `script=True`."""
    entry = [str(PROJECT_ROOT / "kbk" / "run.py")] if script else ["-m", "kbk.run"]
    return [sys.executable, *entry, *args]


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess, seconds: float) -> None:
        self.returncode, self.stdout, self.stderr, self.seconds = proc.returncode, proc.stdout, proc.stderr, seconds

    def __repr__(self) -> str:  # what pytest shows when an assertion on it fails
        return (f"exit {self.returncode} after {self.seconds:.1f} s\n--- stdout (end)\n{self.stdout[-3000:]}\n"
                f"--- stderr (end)\n{self.stderr[-3000:]}")


@pytest.fixture
def kbk_cli() -> Callable[..., CliResult]:
    """Run kbk's entrypoint in a subprocess and wait: `kbk_cli(args, env=..., cwd=..., script=False)`."""

    def call(args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None, script: bool = False,
             timeout: float = 300) -> CliResult:
        start = time.perf_counter()
        proc = subprocess.run(kbk_command(args, script), capture_output=True, text=True, env=clean_env(env),
                              cwd=cwd or PROJECT_ROOT, timeout=timeout)
        return CliResult(proc, time.perf_counter() - start)

    return call


@pytest.fixture(scope="session")
def mlflow_schema(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema created (no kbk experiment, no runs), made once per session."""
    from kbk.tracking.store import prepared_store

    path = tmp_path_factory.mktemp("mlflow_schema") / "mlflow.db"
    with prepared_store(f"sqlite:///{path}"):
        pass
    return path


@pytest.fixture
def mlflow_store(mlflow_schema) -> Callable[[Path], Path]:
    """`mlflow_store(outputs)`: put a fresh copy of the session's empty schema at `outputs/mlflow.db`."""

    def make(outputs: Path) -> Path:
        outputs.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(mlflow_schema, outputs / "mlflow.db"))

    return make


def mlflow_runs(db: Path) -> list:
    """Every run in the SQLite store `db` (all experiments), oldest first; [] when the file does not exist."""
    if not Path(db).exists():
        return []
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time ASC"]) if experiments else []


def latest_checkpoint(outputs: Path) -> Path:
    """The latest last.pt of the one config trained under `outputs` (it may not exist yet), found as a resume finds
    it: through the config's index folder `outputs/checkpoints/<config hash>/`."""
    from kbk.tracking.resume import checkpoint_folder

    (index,) = (Path(outputs) / "checkpoints").iterdir()
    return checkpoint_folder(index) / "last.pt"


def metric_history(db: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of `key`, in step order (then logging order)."""
    from mlflow import MlflowClient

    history = MlflowClient(f"sqlite:///{db}").get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]


def artifact_paths(db: Path, run_id: str) -> set[str]:
    """Every artifact file of a run, as paths relative to its artifact root (walks folders)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    found, folders = set(), [None]
    while folders:
        for info in client.list_artifacts(run_id, folders.pop()):
            (folders.append(info.path) if info.is_dir else found.add(info.path))
    return found


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """A PostgreSQL server and an MLflow tracking server on loopback, shared by a module's tests (skips the
    module's tests that use them where they cannot start)."""
    from services import ServiceUnavailable, mlflow_server, postgres_server

    try:
        with postgres_server() as pg, mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
            yield pg, server
    except ServiceUnavailable as e:
        pytest.skip(str(e))
