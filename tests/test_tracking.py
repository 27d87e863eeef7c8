"""kbk.tracking against a real MLflow SQLite store under tmp (no mocks; one spy that delegates to the real
`MlflowClient.log_batch`). The server tests are in test_tracking_server.py (`-m integration`)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kbk.errors import TrackingError
from kbk.tracking.base import Tracker
from kbk.tracking.mlflow_tracker import MlflowTracker
from kbk.tracking.mlflow_writer import LONG_PARAMS_ARTIFACT
from kbk.tracking.plots import plot_training_curves
from kbk.tracking.resume import reopen_run
from kbk.tracking.run_params import config_hash, flatten
from kbk.tracking.run_tags import git_info
from kbk.tracking.store import ensure_experiment, resolve_tracking_uri


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating MLflow's schema takes a second or two); each test has its own
    experiment."""
    uri = resolve_tracking_uri(None, tmp_path_factory.mktemp("outputs"))
    ensure_experiment(uri, "Default-kbk")
    return uri


@pytest.fixture
def experiment(store_uri: str, request: pytest.FixtureRequest) -> str:
    name = request.node.name
    ensure_experiment(store_uri, name)
    return name


@pytest.fixture
def client(store_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store_uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# -------------------------------------------------------------------------------------------- light imports


def test_importing_tracking_modules_does_not_import_mlflow_or_matplotlib():
    code = (
        "import sys, kbk.tracking, kbk.tracking.store, kbk.tracking.run_params, "
        "kbk.tracking.run_tags, kbk.tracking.mlflow_writer, kbk.tracking.mlflow_tracker, kbk.tracking.resume, "
        "kbk.tracking.plots; print(sorted(m for m in ('mlflow', 'matplotlib', 'torch', 'omegaconf') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------- store


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    outputs = tmp_path / "outputs"
    assert resolve_tracking_uri(None, outputs) == f"sqlite:///{outputs}/mlflow.db"
    assert (
        resolve_tracking_uri("", "outputs") == f"sqlite:///{outputs}/mlflow.db"
    )  # relative outputs made absolute
    assert resolve_tracking_uri(None, outputs).startswith("sqlite:////")
    assert resolve_tracking_uri("sqlite:///runs/m.db", outputs) == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db?timeout=20", outputs) == "sqlite:////abs/m.db?timeout=20"
    assert resolve_tracking_uri("runs/m.db", outputs) == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000/", outputs) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("https://mlflow.example.org", outputs) == "https://mlflow.example.org"
    assert resolve_tracking_uri("postgresql+psycopg2://u@h/db", outputs) == "postgresql+psycopg2://u@h/db"
    if (
        importlib.util.find_spec("psycopg") is None
    ):  # kbk installs psycopg2; SQLAlchemy 2.1 defaults to psycopg 3
        assert resolve_tracking_uri("postgresql://u@h/db", outputs) == "postgresql+psycopg2://u@h/db"
    for memory in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(TrackingError, match="in-memory"):
            resolve_tracking_uri(memory, outputs)
    for file_store in ("file:./mlruns", "mlruns"):
        with pytest.raises(TrackingError, match="MLFLOW_ALLOW_FILE_STORE=true"):
            resolve_tracking_uri(file_store, outputs)
    with pytest.raises(TrackingError, match="scheme"):
        resolve_tracking_uri("ftp://host/x", outputs)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert resolve_tracking_uri("file:./mlruns", outputs) == (tmp_path / "mlruns").as_uri()
    assert resolve_tracking_uri("file:///abs/mlruns", outputs) == "file:///abs/mlruns"


def test_unusable_sqlite_paths_name_the_path_and_the_fix(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingError, match="Cannot create the folder") as e:
        ensure_experiment(f"sqlite:///{blocker}/mlflow.db", "x")
    assert "Fix:" in str(e.value)
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(TrackingError, match="is a folder"):
        ensure_experiment(f"sqlite:///{tmp_path}/folder.db", "x")
    (tmp_path / "garbage.db").write_bytes(b"this is not sqlite at all")
    with pytest.raises(TrackingError, match="not a SQLite database"):
        ensure_experiment(f"sqlite:///{tmp_path}/garbage.db", "x")
    with pytest.raises(TrackingError, match="relative"):
        ensure_experiment("sqlite:///relative.db", "x")
    assert not (tmp_path / "garbage.db.lock").exists()  # refused before touching anything


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


def test_unreachable_server_fails_fast_and_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError) as e:
        ensure_experiment(uri, "x")
    with pytest.raises(TrackingError):
        MlflowTracker.start(uri, "x", "never-created")
    assert time.monotonic() - started < 5
    message = str(e.value)
    assert uri in message and "mlflow server" in message and "tracking=none" in message
    assert list(tmp_path.iterdir()) == []  # no fallback store (mlflow.db, mlruns/) in the current folder


# ---------------------------------------------------------------------------------------------- run_params


def test_flatten_makes_dotted_string_params():
    from omegaconf import OmegaConf

    cfg = {
        "koopman": {"dim": 256, "enabled": True},
        "dmd": {"buffer_size": 64, "ranks": [8, 16]},
        "schedule": {"type": "linear", "extra": {}},
        "lr": 1e-3,
        "seed": None,
    }
    expected = {
        "koopman.dim": "256",
        "koopman.enabled": "True",
        "dmd.buffer_size": "64",
        "dmd.ranks": "[8, 16]",
        "schedule.type": "linear",
        "schedule.extra": "{}",
        "lr": "0.001",
        "seed": "None",
    }
    assert flatten(cfg) == expected
    dict_config = OmegaConf.create({**cfg, "alias": "${koopman.dim}"})
    assert flatten(dict_config) == {**expected, "alias": "256"}  # interpolations resolved
    assert flatten({"dim": 4}, prefix="koopman") == {"koopman.dim": "4"}


def test_config_hash_is_stable_whatever_the_key_order():
    """What a run's hash leaves out (paths, tracking, labels) is kbk.identity's, tested in test_identity.py."""
    a = {"koopman": {"dim": 256}, "data": {"name": "synthetic", "sizes": (1, 2)}, "bidir": True}
    b = {"bidir": True, "data": {"sizes": [1, 2], "name": "synthetic"}, "koopman": {"dim": 256}}
    assert config_hash(a) == config_hash(b) == config_hash(json.loads(json.dumps(a)))
    assert len(config_hash(a)) == 16
    assert config_hash({**a, "koopman": {"dim": 128}}) != config_hash(a)
    assert config_hash({"lr": 1}) != config_hash({"lr": 1.0})  # different settings


def test_git_info_reads_the_repository_and_degrades_gracefully(tmp_path: Path):
    assert git_info(tmp_path) == {"commit": None, "branch": None, "dirty": None}  # not a repository
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / "sub").mkdir()
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    info = git_info(repo / "sub", check_dirty=False)  # found from a subfolder, branch from packed-refs
    assert info == {"commit": sha, "branch": "main", "dirty": None}
    (repo / ".git" / "HEAD").write_text(sha[::-1] + "\n")  # detached HEAD
    assert git_info(repo, check_dirty=False)["commit"] == sha[::-1]


# ------------------------------------------------------------------------------------------------- tracker


def test_run_round_trip_params_metrics_status(store_uri: str, experiment: str, client):
    tracker = MlflowTracker.start(store_uri, experiment, "round-trip", tags={"kbk.sweep": "demo"})
    assert isinstance(tracker, Tracker)
    tracker.log_params({"koopman": {"dim": 256}, "dmd": {"buffer_size": 64}, "schedule": {"type": "cosine"}})
    expected: dict[str, list[tuple[int, float]]] = {}
    for step in range(250):
        values = {f"koopman/layer{i}/spectral_radius": 1.0 / (step + i + 1) for i in range(9)}
        values["train/loss_lm"] = 5.0 - step * 0.01
        tracker.log_metrics(values, step=step)
        for key, value in values.items():
            expected.setdefault(key, []).append((step, value))
    assert sum(len(v) for v in expected.values()) == 2500
    tracker.end()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "round-trip"
    assert run.data.params == {"koopman.dim": "256", "dmd.buffer_size": "64", "schedule.type": "cosine"}
    assert run.data.tags["kbk.sweep"] == "demo"
    for key, values in expected.items():
        assert _history(client, tracker.run_id, key) == values
    tracker.end("FAILED")  # a second end changes nothing
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    with pytest.raises(RuntimeError, match="already ended"):
        tracker.log_metrics({"x": 1.0}, step=0)


def test_metrics_are_buffered_and_written_in_few_batches(
    store_uri: str, experiment: str, client, monkeypatch: pytest.MonkeyPatch
):
    from mlflow import MlflowClient

    metric_batches: list[int] = []
    real_log_batch = MlflowClient.log_batch

    def counting_log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        if metrics:
            metric_batches.append(len(metrics))
        return real_log_batch(
            self, run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous
        )

    monkeypatch.setattr(MlflowClient, "log_batch", counting_log_batch)
    tracker = MlflowTracker.start(store_uri, experiment, "batched", flush_interval_s=None)
    for step in range(500):
        tracker.log_metrics({f"m{i}": float(step * 5 + i) for i in range(5)}, step=step)
    assert metric_batches == []  # nothing written per number
    tracker.flush()
    assert metric_batches == [1000, 1000, 500]
    tracker.end()
    assert len(metric_batches) == 3  # nothing left to write
    assert len(client.get_metric_history(tracker.run_id, "m4")) == 500

    small = MlflowTracker.start(store_uri, experiment, "auto-flush", flush_interval_s=None, max_buffered=100)
    for step in range(250):
        small.log_metrics({"a": step, "b": -step}, step=step)  # a full buffer flushes itself
    assert metric_batches[3:] == [100, 100, 100, 100, 100]
    small.end()
    assert _history(client, small.run_id, "b") == [(s, float(-s)) for s in range(250)]


def test_explicit_run_names_survive_seeding(store_uri: str, experiment: str, client):
    import torch

    names = []
    for name in ("lr=0.001,koopman_dim=64", "lr=0.01,koopman_dim=64"):
        torch.manual_seed(0)
        random.seed(0)
        tracker = MlflowTracker.start(store_uri, experiment, name)
        tracker.end()
        names.append(client.get_run(tracker.run_id).info.run_name)
    assert names == ["lr=0.001,koopman_dim=64", "lr=0.01,koopman_dim=64"]
    with pytest.raises(ValueError, match="explicit run_name"):
        MlflowTracker.start(store_uri, experiment, None)


def test_params_are_immutable_but_relogging_the_same_value_is_fine(store_uri: str, experiment: str, client):
    tracker = MlflowTracker.start(store_uri, experiment, "params")
    tracker.log_params({"koopman": {"dim": 256}, "lr": 0.001})
    tracker.log_params({"koopman": {"dim": 256}})  # same value: no-op
    with pytest.raises(TrackingError, match=r"koopman\.dim.*'256'.*'128'") as e:
        tracker.log_params({"koopman": {"dim": 128}, "new_key": 1})
    assert "Fix:" in str(e.value)
    tracker.end()
    assert client.get_run(tracker.run_id).data.params == {
        "koopman.dim": "256",
        "lr": "0.001",
    }  # new_key not written

    resumed = reopen_run(store_uri, experiment, tracker.run_id)  # params come from the store
    resumed.log_params({"koopman.dim": 256, "lr": 0.001})
    with pytest.raises(TrackingError, match="lr"):
        resumed.log_params({"lr": 0.01})
    with pytest.raises(TrackingError, match="Invalid param name"):
        resumed.log_params({"bad|key": 1})
    resumed.end()


def test_long_param_is_logged_as_json_artifact(store_uri: str, experiment: str, client, tmp_path: Path):
    schedule = list(range(2000))  # about 9,000 characters as JSON, past MLflow's 6,000
    tracker = MlflowTracker.start(store_uri, experiment, "long-param")
    tracker.log_params({"schedule": {"milestones": schedule}, "short": "x"})
    tracker.log_params({"schedule": {"milestones": schedule}})  # the same long value again: no-op
    with pytest.raises(TrackingError, match="schedule.milestones"):
        tracker.log_params({"schedule": {"milestones": schedule[:-1]}})
    tracker.end()
    params = client.get_run(tracker.run_id).data.params
    assert params["short"] == "x"
    assert len(params["schedule.milestones"]) < 200 and LONG_PARAMS_ARTIFACT in params["schedule.milestones"]
    local = client.download_artifacts(tracker.run_id, LONG_PARAMS_ARTIFACT, str(tmp_path))
    assert json.loads(json.loads(Path(local).read_text())["schedule.milestones"]) == schedule

    resumed = reopen_run(store_uri, experiment, tracker.run_id)
    resumed.log_params({"other": "y" * 7000})  # a resumed run adds to the artifact instead of replacing it
    resumed.end()
    local = client.download_artifacts(tracker.run_id, LONG_PARAMS_ARTIFACT, str(tmp_path / "again"))
    assert set(json.loads(Path(local).read_text())) == {"schedule.milestones", "other"}


def test_parent_and_child_runs_coexist_in_one_process(store_uri: str, experiment: str, client):
    import mlflow

    parent = MlflowTracker.start(store_uri, experiment, "sweep-parent", tags={"kbk.sweep": "s1"})
    children = [
        MlflowTracker.start(
            store_uri, experiment, f"trial-{i}", parent_run_id=parent.run_id, tags={"trial": i}
        )
        for i in range(2)
    ]
    for i, child in enumerate(children):
        child.log_metrics({"val/loss": 1.0 + i}, step=0)
        child.end()
    unrelated = MlflowTracker.start(store_uri, experiment, "not-a-child")
    unrelated.end()
    parent.end()
    assert mlflow.active_run() is None  # the fluent API's global state is untouched
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    found = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert sorted(r.info.run_name for r in found) == ["trial-0", "trial-1"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.run_id for r in found)
    with pytest.raises(TrackingError, match="Parent run"):
        MlflowTracker.start(store_uri, experiment, "orphan", parent_run_id="0" * 32)


def test_resume_appends_to_the_same_run(store_uri: str, experiment: str, client):
    first = MlflowTracker.start(store_uri, experiment, "resumable")
    for step in range(10):
        first.log_metrics({"train/loss_lm": float(step)}, step=step)
    assert first.last_logged_step("train/loss_lm") == 9  # flushes, then reads the store
    assert first.last_logged_step("val/loss") is None
    first.end("KILLED", reason="stopped by SIGTERM")

    resumed = reopen_run(store_uri, experiment, first.run_id, tags={"resumed_from": "ckpt-9"})
    assert resumed.run_id == first.run_id and resumed.run_name == "resumable"
    run = client.get_run(first.run_id)
    assert run.info.status == "RUNNING" and "kbk.end_reason" not in run.data.tags
    assert run.data.tags["kbk.resumes"] == "1" and run.data.tags["resumed_from"] == "ckpt-9"
    last = resumed.last_logged_step("train/loss_lm")
    for step in range(5, 15):  # a resumed trainer replays from its checkpoint; only new steps go out
        if last is None or step > last:
            resumed.log_metrics({"train/loss_lm": float(step)}, step=step)
    resumed.end()
    assert _history(client, first.run_id, "train/loss_lm") == [(s, float(s)) for s in range(15)]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    with pytest.raises(TrackingError, match="not in"):
        reopen_run(store_uri, experiment, "f" * 32)
    ensure_experiment(store_uri, "some-other-experiment")
    with pytest.raises(TrackingError, match="belongs to experiment"):
        reopen_run(store_uri, "some-other-experiment", first.run_id)


def test_failed_writes_keep_metrics_buffered_and_detach_leaves_the_run_open(
    store_uri: str, experiment: str, client
):
    tracker = MlflowTracker.start(store_uri, experiment, "flaky", flush_interval_s=None)
    tracker.log_metrics({"train/loss_lm": 2.0}, step=0)
    client.delete_run(tracker.run_id)  # the store now refuses writes to this run
    with pytest.raises(TrackingError, match="could not log metrics") as e:
        tracker.flush()
    assert "Fix:" in str(e.value)
    client.restore_run(tracker.run_id)
    tracker.log_metrics({"train/loss_lm": 1.0}, step=1)
    tracker.detach()  # flushes both, leaves the run RUNNING for another process to end
    assert _history(client, tracker.run_id, "train/loss_lm") == [(0, 2.0), (1, 1.0)]
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    with pytest.raises(RuntimeError, match="already ended"):
        tracker.log_metrics({"train/loss_lm": 0.5}, step=2)
    reopen_run(store_uri, experiment, tracker.run_id).end()
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_non_finite_metrics_are_logged_not_dropped(store_uri: str, experiment: str, client):
    with MlflowTracker.start(store_uri, experiment, "nan") as tracker:
        tracker.log_metrics({"train/loss_total": float("nan")}, step=3)
        tracker.log_metrics({"train/loss_total": float("inf")}, step=4)
        with pytest.raises(TrackingError, match="not a number"):
            tracker.log_metrics({"train/loss_total": "high"}, step=5)
    (nan_step, nan_value), (inf_step, inf_value) = _history(client, tracker.run_id, "train/loss_total")
    assert (nan_step, inf_step) == (3, 4) and math.isnan(nan_value)
    assert inf_value == pytest.approx(1.7976931348623157e308)  # MLflow's SQL stores clamp inf


def test_a_pruned_run_ends_killed_and_labelled_pruned(store_uri: str, experiment: str):
    class TrialPruned(Exception):  # what the sweeper's hook raises (optuna.TrialPruned), recognised by name
        pass

    tracker = MlflowTracker.start(store_uri, experiment, "reported")
    with pytest.raises(TrialPruned), tracker:
        tracker.log_metrics({"val/ppl": 3.0}, step=2)
        raise TrialPruned("at step 2")  # what the trainer's pruning callback raises at an evaluation
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "KILLED" and run.data.tags["kbk.end_reason"] == "pruned: at step 2"
    assert run.data.tags["kbk.outcome"] == "pruned" and run.info.run_name == "reported (pruned)"  # not a crash
    assert _history(tracker.client, tracker.run_id, "val/ppl") == [(2, 3.0)]  # flushed before it ended


def test_exceptions_end_runs_failed_or_killed(store_uri: str, experiment: str, client):
    with pytest.raises(ZeroDivisionError), MlflowTracker.start(store_uri, experiment, "crash") as crashed:
        crashed.log_metrics({"train/loss_lm": 2.0}, step=1)
        _ = 1 / 0
    run = client.get_run(crashed.run_id)
    assert run.info.status == "FAILED" and run.data.tags["kbk.end_reason"].startswith("ZeroDivisionError")
    assert _history(client, crashed.run_id, "train/loss_lm") == [(1, 2.0)]  # flushed before ending
    with (
        pytest.raises(KeyboardInterrupt),
        MlflowTracker.start(store_uri, experiment, "ctrl-c") as interrupted,
    ):
        raise KeyboardInterrupt
    assert client.get_run(interrupted.run_id).info.status == "KILLED"
    with MlflowTracker.start(store_uri, experiment, "bad-status") as tracker:
        with pytest.raises(ValueError, match="status"):
            tracker.end("DONE")


def test_sigint_ends_run_killed_and_restores_the_handler(store_uri: str, experiment: str, client):
    before = signal.getsignal(signal.SIGINT)
    tracker = MlflowTracker.start(store_uri, experiment, "sigint")
    tracker.install_signal_handlers()
    tracker.log_metrics({"train/loss_lm": 3.0}, step=11)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler runs here and raises
    assert signal.getsignal(signal.SIGINT) is before
    run = client.get_run(tracker.run_id)
    assert run.info.status == "KILLED" and run.data.tags["kbk.end_reason"] == "stopped by SIGINT"
    assert _history(client, tracker.run_id, "train/loss_lm") == [(11, 3.0)]

    with MlflowTracker.start(store_uri, experiment, "guarded") as guarded, guarded.install_signal_handlers():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
    with MlflowTracker.start(store_uri, experiment, "threaded") as threaded:
        errors = []
        thread = threading.Thread(target=lambda: errors.append(_raises(threaded.install_signal_handlers)))
        thread.start()
        thread.join()
        assert errors == [TrackingError]  # handlers can only be installed from the main thread


def _raises(fn) -> type[BaseException] | None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return type(e)
    return None


CHILD = textwrap.dedent(
    """
    import sys, time
    from kbk.tracking.mlflow_tracker import MlflowTracker

    uri, experiment, mode = sys.argv[1:4]
    tracker = MlflowTracker.start(uri, experiment, "child-" + mode)
    tracker.log_metrics({"train/loss_lm": 1.5}, step=7)  # still buffered when the signal comes
    if mode == "sigterm":
        tracker.install_signal_handlers()
        print(tracker.run_id, flush=True)
        time.sleep(120)
    print(tracker.run_id, flush=True)
    raise RuntimeError("crashed without ending the run")  # mode "crash": no `with`, no end()
    """
)


def _first_line(process: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    if not ready:
        process.kill()
        pytest.fail(f"child printed nothing in {timeout_s} s")
    line = process.stdout.readline().strip()
    if not line:
        process.wait(10)
        pytest.fail(f"child exited with {process.returncode}: {process.stderr.read()}")
    return line


def test_sigterm_and_crash_in_another_process_leave_no_run_running(
    store_uri: str, experiment: str, client, tmp_path: Path
):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    processes = {
        mode: subprocess.Popen(
            [sys.executable, str(script), store_uri, experiment, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("sigterm", "crash")
    }
    try:
        run_ids = {mode: _first_line(p, 60) for mode, p in processes.items()}
        processes["sigterm"].send_signal(signal.SIGTERM)
        codes = {mode: p.wait(timeout=60) for mode, p in processes.items()}
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes["sigterm"] == 143, processes["sigterm"].stderr.read()
    assert codes["crash"] == 1
    killed, crashed = client.get_run(run_ids["sigterm"]), client.get_run(run_ids["crash"])
    assert killed.info.status == "KILLED" and killed.data.tags["kbk.end_reason"] == "stopped by SIGTERM"
    assert crashed.info.status == "FAILED" and "without ending" in crashed.data.tags["kbk.end_reason"]
    for run_id in run_ids.values():  # the buffered metric was flushed before the run ended
        assert _history(client, run_id, "train/loss_lm") == [(7, 1.5)]


def test_artifacts_folder_dict_figure_and_file(store_uri: str, experiment: str, client, tmp_path: Path):
    hydra_dir = tmp_path / "job" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "config.yaml").write_text("koopman:\n  dim: 256\n")
    (hydra_dir / "overrides.yaml").write_text("- koopman.dim=256\n")
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"\x00" * 10)
    history = [(s, {"train/loss_lm": 4.0 - s * 0.1, "val/ppl": 50.0 - s}) for s in range(10)]
    with MlflowTracker.start(store_uri, experiment, "artifacts") as tracker:
        tracker.log_dir(hydra_dir)
        tracker.log_dict({"best_val_loss": 1.25, "steps": 10})
        tracker.log_artifact(checkpoint, "checkpoints")
        tracker.log_text("koopman:\n  dim: 256\n", "config_resolved.yaml")
        tracker.log_artifact(plot_training_curves(history, tmp_path / "plots" / "training_curves.png"), "plots")
        with pytest.raises(TrackingError, match="no such file"):
            tracker.log_artifact(tmp_path / "missing.pt")
    listed = {f.path for f in client.list_artifacts(tracker.run_id)}
    assert listed == {".hydra", "summary.json", "checkpoints", "config_resolved.yaml", "plots"}
    assert {f.path for f in client.list_artifacts(tracker.run_id, ".hydra")} == {
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
    }
    summary = client.download_artifacts(tracker.run_id, "summary.json", str(tmp_path))
    assert json.loads(Path(summary).read_text()) == {"best_val_loss": 1.25, "steps": 10}
    png = client.download_artifacts(tracker.run_id, "plots/training_curves.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # artifacts live next to the database, not in ./mlruns of the current folder
    artifact_root = client.get_experiment_by_name(experiment).artifact_location
    assert artifact_root.startswith(Path(store_uri.removeprefix("sqlite:///")).parent.as_uri())


def test_plot_training_curves_tolerates_missing_keys(tmp_path: Path):
    history = [
        (0, {"train/loss_lm": 5.0, "train/loss_total": 5.5}),
        (10, {"train/loss_lm": 4.0, "val/loss": 4.2, "val/loss_floor": 3.1, "val/ppl": 66.7}),
        (20, {"train/loss_lm": float("nan"), "val/ppl_koopman": 70.0, "unrelated": 1.0}),
    ]
    for name, data in (("full.png", history), ("losses-only.png", history[:1]), ("empty.png", [])):
        path = plot_training_curves(data, tmp_path / "plots" / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training_curves(history, tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")


PARALLEL_CHILD = textwrap.dedent(
    """
    import sys
    from kbk.tracking.store import ensure_experiment
    from kbk.tracking.mlflow_tracker import MlflowTracker

    uri, index = sys.argv[1], sys.argv[2]
    ensure_experiment(uri, "shared")
    MlflowTracker.start(uri, "shared", "worker-" + index).end()
    """
)


@pytest.mark.slow  # four processes importing MLflow: 5-20 s on a shared 2-core machine
def test_parallel_first_use_of_a_fresh_sqlite_store(tmp_path: Path):
    """The SQLite first-use race (docs/sweeps.md): workers starting together on a new database all succeed (without
    the init lock in `store.prepared_store`, most of them fail with alembic / duplicate-column errors)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(None, tmp_path / "fresh")
    script = tmp_path / "worker.py"
    script.write_text(PARALLEL_CHILD)
    workers = [
        subprocess.Popen([sys.executable, str(script), uri, str(i)], stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    errors = [w.communicate(timeout=180)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0], errors
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("shared").experiment_id]
    )
    assert sorted(r.info.run_name for r in runs) == [f"worker-{i}" for i in range(4)]
