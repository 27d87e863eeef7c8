"""The sweep engine on real Optuna storages (journal files, SQLite), driven by a small real objective: budget
counting, dedup, grids, stale-trial recovery, failures, and several processes on one study."""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from kbk.errors import KbkError
from kbk.sweep.engine import (
    FAIL_REASON_ATTR,
    SKIP_ATTR,
    STALE_ATTR,
    Outcome,
    SweepEngine,
    outcome_from_exception,
    outcome_from_return,
)
from kbk.sweep.heartbeat import OWNER_ATTR, WORKER_PREFIX, Worker, WorkerInfo, process_alive
from kbk.sweep.space import params_key, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(params: dict) -> float:
    """A real function of the parameters (a bowl around x=3 with a penalty per y)."""
    return (params["x"] - 3) ** 2 + 0.1 * params.get("y", 0)


def launcher(calls: list | None = None, fail_on: set | None = None, nan_on: set | None = None):
    """Evaluate each trial in-process, the way the Hydra launcher hands back returns or exceptions."""

    def launch(batch):
        outcomes = []
        for trial in batch:
            params = dict(trial.params)
            if calls is not None:
                calls.append(params)
            try:
                if fail_on and params["x"] in fail_on:
                    raise KbkError(f"data for x={params['x']} is missing")
                value = math.nan if nan_on and params["x"] in nan_on else objective(params)
                outcomes.append(outcome_from_return(value, ["y"]))
            except Exception as e:  # noqa: BLE001 (what the launcher does with a job's exception)
                outcomes.append(outcome_from_exception(e))
        return outcomes

    return launch


def journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def engine_for(storage, space_params: dict, n_trials, grid=False, sampler=None, name="s", **kw) -> SweepEngine:
    # Unseeded by default: a resumed process with the seed of the first would re-propose its exact points (the
    # sweeper offsets the seed of every process but a study's creator for this reason).
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                sampler=sampler or optuna.samplers.RandomSampler())
    worker = Worker(heartbeat_interval=0.2, grace_period=2.0)
    worker.start(study)
    return SweepEngine(study, parse_space(space_params), n_trials=n_trials, grid=grid, worker=worker,
                       params_wait_s=0.5, **kw)


def finished_by_key(study, names=("x", "y"), reused: bool = True) -> Counter:
    """Finished trials per configuration; `reused=False` leaves out those answered from an earlier trial."""
    return Counter(params_key({n: t.params[n] for n in names if n in t.params})
                   for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   and (reused or "kbk.duplicate_of" not in t.user_attrs))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------------------------- outcomes


def test_outcomes_from_job_returns_and_exceptions():
    assert outcome_from_return(1.5, ["val/ppl"]) == Outcome("COMPLETE", [1.5])
    assert outcome_from_return([1, 2.0], ["a/b", "c/d"]).values == [1.0, 2.0]
    nan = outcome_from_return(math.nan, ["val/ppl"])
    assert nan.state == "FAIL" and "val/ppl=nan" in nan.reason
    assert outcome_from_return(math.inf, ["val/ppl"]).state == "FAIL"
    assert outcome_from_return([1.0], ["a/b", "c/d"]).state == "FAIL"
    assert outcome_from_return("x", ["a/b"]).state == "FAIL"
    pruned = outcome_from_exception(optuna.TrialPruned("pruned at step 3"))
    assert pruned == Outcome("PRUNED", reason="pruned at step 3")
    assert outcome_from_exception(KbkError("data.path=/x: no such file")).reason == "data.path=/x: no such file"
    assert outcome_from_exception(ValueError("boom")).reason == "ValueError: boom"


# ------------------------------------------------------------------------------------------------ budget


def test_budget_counts_finished_trials_already_in_the_storage(tmp_path):
    storage = journal(tmp_path / "s.journal")
    calls: list = []
    first = engine_for(storage, {"x": "interval(0, 6)"}, n_trials=4)
    st = first.run(launcher(calls), n_jobs=3, poll_s=0.01)
    first.worker.stop()
    assert st.finished == 4 and len(calls) == 4
    # Re-running with the same budget does nothing; a larger budget runs only the difference.
    again = engine_for(journal(tmp_path / "s.journal"), {"x": "interval(0, 6)"}, n_trials=4)
    again.run(launcher(calls), poll_s=0.01)
    assert len(calls) == 4
    more = engine_for(journal(tmp_path / "s.journal"), {"x": "interval(0, 6)"}, n_trials=7)
    st = more.run(launcher(calls), n_jobs=2, poll_s=0.01)
    assert st.finished == 7 and len(calls) == 7
    assert len(more.study.trials) == 7  # nothing asked beyond the budget


def test_pruned_trials_count_toward_the_budget(tmp_path):
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "interval(0, 6)"}, n_trials=5)

    def launch(batch):
        return [Outcome("PRUNED", reason="test") if t.number % 2 else outcome_from_return(1.0, ["y"]) for t in batch]

    st = engine.run(launch, poll_s=0.01)
    assert (st.complete, st.pruned) == (3, 2)
    assert len(engine.study.trials) == 5


# ------------------------------------------------------------------------------------------------- dedup


def test_duplicate_proposals_reuse_the_finished_result(tmp_path):
    calls: list = []
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1, 2)"}, n_trials=6,
                        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    st = engine.run(launcher(calls), poll_s=0.01)
    assert st.complete == 6
    assert sorted(c["x"] for c in calls) == [1, 2]  # each configuration trained once
    reused = [t for t in engine.study.trials if "kbk.duplicate_of" in t.user_attrs]
    assert len(reused) == 4
    for t in reused:
        original = engine.study.trials[t.user_attrs["kbk.duplicate_of"]]
        assert t.params == original.params and t.value == original.value


def test_without_dedup_duplicates_are_trained(tmp_path):
    calls: list = []
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1, 2)"}, n_trials=5, dedup=False)
    engine.run(launcher(calls), poll_s=0.01)
    assert len(calls) == 5


def test_a_proposal_equal_to_a_running_trial_is_dropped(tmp_path):
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1)"}, n_trials=3)
    batch = engine.claim(2)  # the second proposal repeats the first, which is still running
    assert len(batch) == 1
    dropped = [t for t in engine.study.trials if SKIP_ATTR in t.user_attrs]
    assert dropped and "duplicate of running trial 0" in dropped[0].user_attrs[SKIP_ATTR]
    engine.tell(batch[0], outcome_from_return(1.0, ["y"]))
    st = engine.run(launcher(), poll_s=0.01)  # the rest are reused from trial 0
    assert st.complete == 3


def test_an_exhausted_space_ends_the_sweep(tmp_path):
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1)"}, n_trials=3)
    calls: list = []
    engine.run(launcher(calls), poll_s=0.01)
    assert len(calls) == 1


# -------------------------------------------------------------------------------------------------- grid


def test_grid_runs_every_point_once(tmp_path):
    calls: list = []
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1, 2, 3)", "y": "range(0, 4, 2)"},
                        n_trials=None, grid=True)
    st = engine.run(launcher(calls), n_jobs=4, poll_s=0.01)
    assert st.grid_left == 0 and st.complete == 6
    assert sorted((c["x"], c["y"]) for c in calls) == [(x, y) for x in (1, 2, 3) for y in (0, 2)]
    assert engine.done(st) == "every grid point has a finished trial"


def test_grid_budget_caps_the_points(tmp_path):
    calls: list = []
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1, 2, 3, 4)"}, n_trials=2, grid=True)
    engine.run(launcher(calls), poll_s=0.01)
    assert len(calls) == 2
    assert len(engine.study.trials) == 2  # no points queued beyond the budget
    bigger = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1, 2, 3, 4)"}, n_trials=None, grid=True)
    bigger.run(launcher(calls), poll_s=0.01)
    assert sorted(c["x"] for c in calls) == [1, 2, 3, 4]
    assert finished_by_key(bigger.study, ("x",)) == Counter({params_key({"x": x}): 1 for x in (1, 2, 3, 4)})


def test_grid_with_an_interval_is_refused():
    with pytest.raises(KbkError, match="discrete"):
        parse_space({"x": "interval(0, 1)"}).grid()


def test_failed_grid_point_is_kept_failed_this_run_and_retried_on_the_next(tmp_path):
    calls: list = []
    space = {"x": "choice(1, 2, 3)"}
    engine = engine_for(journal(tmp_path / "s.journal"), space, n_trials=None, grid=True, max_failure_rate=1.0)
    st = engine.run(launcher(calls, fail_on={2}), poll_s=0.01)
    assert st.complete == 2 and st.grid_left == 1 and len(calls) == 3
    failed = [t for t in engine.study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs[FAIL_REASON_ATTR] == "data for x=2 is missing"
    # The cause is fixed: the next invocation runs only the missing point.
    again = engine_for(journal(tmp_path / "s.journal"), space, n_trials=None, grid=True)
    st = again.run(launcher(calls), poll_s=0.01)
    assert st.grid_left == 0 and [c["x"] for c in calls[3:]] == [2]


# ---------------------------------------------------------------------------------------------- failures


def test_non_finite_and_crashing_trials_fail_with_reasons_and_the_sweep_goes_on(tmp_path):
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1, 2, 3, 4)"}, n_trials=None, grid=True,
                        max_failure_rate=0.5)
    st = engine.run(launcher(nan_on={1}, fail_on={4}), poll_s=0.01)
    assert st.complete == 2 and len(st.failures) == 2
    reasons = {t.params["x"]: t.user_attrs.get(FAIL_REASON_ATTR) for t in engine.study.trials
               if t.state == TrialState.FAIL}
    assert reasons == {1: "non-finite objective: y=nan", 4: "data for x=4 is missing"}


def test_the_failure_limit_stops_the_sweep(tmp_path):
    calls: list = []
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1, 2, 3, 4, 5, 6, 7, 8)"}, n_trials=None,
                        grid=True, max_failure_rate=0.25)  # 2 failures allowed of 8
    st = engine.run(launcher(calls, fail_on={1, 2, 3, 4, 5, 6, 7, 8}), poll_s=0.01)
    assert engine.failure_limit_exceeded(st) and len(calls) == 3


# ------------------------------------------------------------------------------------------------- stale


def _leave_running(storage, name: str, params: dict, space: dict, pid: int, beat_age: float = 0.0) -> int:
    """A trial RUNNING for a sweeper process `pid` on this host (as a killed sweep leaves it)."""
    import socket
    import time

    study = optuna.load_study(study_name=name, storage=storage)
    info = WorkerInfo(socket.gethostname(), pid, None, time.time() - beat_age)
    study.set_user_attr(WORKER_PREFIX + f"ghost-{pid}", info.as_attr())
    study.enqueue_trial(params)
    trial = study.ask(parse_space(space).distributions)
    trial.set_user_attr(OWNER_ATTR, f"ghost-{pid}")
    return trial.number


def test_running_trials_of_a_dead_process_are_failed_and_requeued(tmp_path):
    path = tmp_path / "s.journal"
    optuna.create_study(storage=journal(path), study_name="s")
    space = {"x": "choice(1, 2, 3, 4)"}
    stale_number = _leave_running(journal(path), "s", {"x": 2}, space, pid=dead_pid())
    live_number = _leave_running(journal(path), "s", {"x": 4}, space, pid=os.getppid())  # alive, beating
    engine = engine_for(journal(path), space, n_trials=3)
    assert engine.recover_stale() == [stale_number]
    stale = engine.study.trials[stale_number]
    assert stale.state == TrialState.FAIL and "is gone" in stale.user_attrs[STALE_ATTR]
    assert engine.study.trials[live_number].state == TrialState.RUNNING
    requeued = [t for t in engine.study.trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in requeued] == [{"x": 2}]
    # The re-queued parameters run first; the stale trial counts neither as finished nor as a failure.
    batch = engine.claim(1)
    assert batch[0].params == {"x": 2}
    assert engine.status().failures == []


def test_a_silent_process_on_another_host_goes_stale_after_the_grace_period(tmp_path):
    path = tmp_path / "s.journal"
    optuna.create_study(storage=journal(path), study_name="s")
    number = _leave_running(journal(path), "s", {"x": 1}, {"x": "choice(1, 2)"}, pid=os.getpid(), beat_age=10.0)
    engine = engine_for(journal(path), {"x": "choice(1, 2)"}, n_trials=2)  # grace 2 s
    assert engine.recover_stale() == [number]
    assert "has not reported" in engine.study.trials[number].user_attrs[STALE_ATTR]


def test_killed_grid_sweep_resumes_with_one_finished_trial_per_point(tmp_path):
    path = tmp_path / "s.journal"
    space = {"x": "choice(1, 2, 3)", "y": "choice(0, 1)"}
    first = engine_for(journal(path), space, n_trials=None, grid=True)
    claimed = first.claim(2)  # claimed, then the process "dies" before telling
    first.tell(claimed[0], outcome_from_return(1.0, ["y"]))
    first.study.set_user_attr(WORKER_PREFIX + first.worker.id,
                              {"host": first.worker.host, "pid": dead_pid(), "start_ticks": None, "beat": 0})
    first.worker.stop()
    calls: list = []
    second = engine_for(journal(path), space, n_trials=None, grid=True)
    st = second.run(launcher(calls), n_jobs=2, poll_s=0.01)
    assert st.grid_left == 0
    assert finished_by_key(second.study) == Counter({params_key({"x": x, "y": y}): 1 for x in (1, 2, 3)
                                                      for y in (0, 1)})
    assert len(calls) == 5


# ---------------------------------------------------------------------------------------------- parallel


def _worker_process(path: str, space: dict, n_trials, grid: bool, out: str) -> None:
    import json

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    calls: list = []
    engine = engine_for(journal(Path(path)), space, n_trials=n_trials, grid=grid,
                        sampler=optuna.samplers.RandomSampler(seed=os.getpid()))
    engine.run(launcher(calls), n_jobs=2, poll_s=0.02)
    engine.worker.stop()
    Path(out).write_text(json.dumps(calls))


@pytest.mark.parametrize("grid", [True, False], ids=["grid", "random"])
def test_parallel_processes_share_one_study_without_duplicates(tmp_path, grid):
    import json

    path = tmp_path / "s.journal"
    optuna.create_study(storage=journal(path), study_name="s")
    # Random proposals over a small space collide often, also with trials still running in another process.
    space = {"x": "choice(1, 2, 3, 4, 5)", "y": "choice(0, 1, 2)"}
    if not grid:
        space = {"x": "choice(1, 2, 3)", "y": "choice(0, 1)"}
    n_trials = None if grid else 9
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker_process, args=(str(path), space, n_trials, grid, str(tmp_path / f"{i}.json")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    calls = [tuple(sorted(c.items())) for i in range(3) for c in json.loads((tmp_path / f"{i}.json").read_text())]
    study = optuna.load_study(study_name="s", storage=journal(path))
    trained = finished_by_key(study, reused=False)
    assert all(n == 1 for n in trained.values())  # no configuration run twice
    assert len(calls) == len(set(calls)) == sum(trained.values())  # nor trained twice
    assert sum(finished_by_key(study).values()) == (15 if grid else 9)  # the budget, reused answers included
    if not grid:
        assert sum(trained.values()) <= 6
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_sqlite_rdb_storage_works_the_same(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    calls: list = []
    engine = engine_for(storage, {"x": "choice(1, 2, 3)"}, n_trials=None, grid=True)
    st = engine.run(launcher(calls), poll_s=0.01)
    assert st.grid_left == 0 and len(calls) == 3


def test_process_alive_tells_dead_and_reused_pids():
    assert process_alive(os.getpid())
    assert not process_alive(dead_pid())
    from kbk.sweep.heartbeat import process_start_ticks

    ticks = process_start_ticks(os.getpid())
    if ticks is not None:
        assert not process_alive(os.getpid(), ticks + 1)


_OPEN_WHEN_TOLD = """
import sys, time
from pathlib import Path
from kbk.sweep.storage import open_storage
here = Path(sys.argv[2])
(here / f"ready-{sys.argv[3]}").touch()
while not (here / "go").exists():
    time.sleep(0.01)
start = float((here / "go").read_text())
while time.time() < start:  # spin, so that all reach the schema check within microseconds
    pass
open_storage(sys.argv[1])
print("ok")
"""


def test_processes_creating_a_fresh_rdb_schema_together_all_succeed(tmp_path):
    # Without kbk's retry, some of these fail with "table ... already exists" (PostgreSQL: duplicate key).
    # Fresh interpreters, not forks: a fork of the test process inherits whatever lock another test's thread held
    # at that moment and can hang on it. Each imports first, then all open the storage at one moment.
    url = f"sqlite:///{tmp_path / 'o.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_WHEN_TOLD, url, str(tmp_path), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.time() < deadline:
            time.sleep(0.01)
        (tmp_path / "go.tmp").write_text(str(time.time() + 0.3))
        (tmp_path / "go.tmp").rename(tmp_path / "go")
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outcomes = [(p.returncode, out.strip()) for p, (out, _) in zip(procs, results, strict=True)]
    assert outcomes == [(0, "ok")] * len(procs), [err[-500:] for _, err in results]


def test_custom_search_space_adds_define_by_run_parameters(tmp_path):
    def more(trial):
        if trial.params["x"] > 1:
            trial.suggest_int("z", 0, 3)

    calls: list = []
    # Seeded: unseeded, all four proposals are x=1 one time in sixteen and the test would fail by chance.
    engine = engine_for(journal(tmp_path / "s.journal"), {"x": "choice(1, 2)"}, n_trials=4, custom_space=more,
                        sampler=optuna.samplers.RandomSampler(seed=0))
    engine.run(launcher(calls), poll_s=0.01)
    assert any("z" in c for c in calls) and all(("z" in c) == (c["x"] > 1) for c in calls)
    trial = next(t for t in engine.study.trials if "z" in t.params)
    assert engine.space.overrides(trial.params) == ["x=2", f"z={trial.params['z']}"]
