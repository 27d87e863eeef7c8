"""`tracking.system_metrics`: MLflow's system-metrics monitor samples the machine into a run's `system/*` metrics from
its start to its end (however it ends), never with tracking=none, and the setting is not part of the config hash."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import TINY, compose_kbk, metric_history, mlflow_runs
from test_run import run_in_process

from kbk import build
from kbk.config import settings_of
from kbk.errors import ConfigError
from kbk.identity import run_hash
from kbk.tracking.base import NullTracker
from kbk.tracking.mlflow_tracker import MlflowTracker
from kbk.tracking.run_context import log_run_context

CPU_KEY = "system/cpu_utilization_percentage"
MEMORY_KEY = "system/system_memory_usage_megabytes"


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("SystemMetricsMonitor", "kbk-system-metrics-start")]


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_real_run_logs_cpu_and_memory_samples_and_stops_sampling_when_it_ends(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    run_in_process([*TINY, f"paths.outputs={outputs}", "tracking.system_metrics_interval_s=0.05"], tmp_path / "job")
    (run,) = mlflow_runs(db)
    assert run.info.status == "FINISHED"
    cpu = metric_history(db, run.info.run_id, CPU_KEY)
    assert cpu and all(0.0 <= value <= 100.0 * 64 for _, value in cpu), cpu
    assert [step for step, _ in cpu] == list(range(len(cpu)))  # one step per sample, from 0
    assert metric_history(db, run.info.run_id, MEMORY_KEY)[-1][1] > 0
    assert not monitor_threads(), "the monitor outlived its run"


def test_system_metrics_false_logs_none(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    run_in_process([*TINY, f"paths.outputs={outputs}", "tracking.system_metrics=false"], tmp_path / "job")
    (run,) = mlflow_runs(db)
    assert run.data.metrics and not [k for k in run.data.metrics if k.startswith("system/")]


def cpu_samples(tracker) -> list[int]:
    return sorted(m.step for m in tracker.client.get_metric_history(tracker.run_id, CPU_KEY))


def test_a_killed_run_stops_its_monitor_and_a_resumed_one_continues_its_steps(tmp_path):
    from kbk.tracking.resume import reopen_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker.start(uri, "kbk", run_name="killed")
    tracker.monitor_system(0.05)
    assert wait_for(lambda: cpu_samples(tracker))
    tracker.end("KILLED", reason="stopped by SIGTERM")
    assert not monitor_threads()
    steps = cpu_samples(tracker)
    time.sleep(0.3)  # a monitor still running would log more samples meanwhile
    assert cpu_samples(tracker) == steps

    resumed = reopen_run(uri, "kbk", tracker.run_id)
    resumed.monitor_system(0.05, resumed=True)
    assert wait_for(lambda: len(cpu_samples(resumed)) > len(steps))
    resumed.end("FINISHED")
    later = cpu_samples(resumed)
    assert later[: len(steps)] == steps and later[len(steps)] == steps[-1] + 1  # continued, no step written twice


def test_the_monitor_is_built_off_the_callers_thread(tmp_path, monkeypatch):
    """Building MLflow's monitor probes the GPU library and reads the store: never on the run's start-up path."""
    from mlflow.system_metrics import system_metrics_monitor

    built_on: list[str] = []
    real_init = system_metrics_monitor.SystemMetricsMonitor.__init__

    def recording_init(self, *args, **kwargs):
        built_on.append(threading.current_thread().name)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(system_metrics_monitor.SystemMetricsMonitor, "__init__", recording_init)
    tracker = MlflowTracker.start(f"sqlite:///{tmp_path / 'mlflow.db'}", "kbk", run_name="start-up")
    tracker.monitor_system(0.05)
    assert wait_for(lambda: cpu_samples(tracker))
    tracker.end("FINISHED")
    assert built_on and threading.current_thread().name not in built_on, built_on


def test_tracking_none_starts_no_monitor_and_logs_nothing():
    cfg = settings_of(compose_kbk([*TINY, "tracking=none"]))
    data = build.corpus(cfg)
    log_run_context(NullTracker(), cfg, data, resumed=False)  # a NullTracker has no run: nothing to monitor
    assert not monitor_threads()


def test_tracking_settings_do_not_change_the_config_hash():
    plain = run_hash(compose_kbk(list(TINY)))
    assert run_hash(compose_kbk([*TINY, "tracking.system_metrics=false",
                                 "tracking.system_metrics_interval_s=2.5"])) == plain
    assert run_hash(compose_kbk([*TINY, "tracking=none"])) == plain


def test_a_non_positive_interval_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"tracking\.system_metrics_interval_s"):
        settings_of(compose_kbk(["tracking.system_metrics_interval_s=0"]))
