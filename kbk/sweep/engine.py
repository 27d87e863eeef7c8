"""The sweep engine: Optuna's ask/tell with the storage as the only source of truth (no Hydra here).

Several sweeper processes may work on one study at once, and any of them may have been killed before; so every
decision re-reads the trials from the storage and follows rules that give all processes the same answer:

- **Budget**: `budget` counts finished trials (COMPLETE + PRUNED) already in the storage, whoever ran them. A
  process launches at most `budget - finished - running` new trials, and after `ask` it re-checks: if the
  trials numbered below its new trial (finished or running) already fill the budget, the new one is dropped.
- **Dedup**: two trials are the same configuration when their `params_key` (hash of the sorted parameters)
  matches. After `ask`, a proposal equal to a COMPLETE/PRUNED trial takes over that result (same state and
  values, `kbk.duplicate_of`, nothing trained); equal to an active trial with a lower number, it is dropped.
  Trial numbers order the claims, so two processes never both keep the same point.
- **Grid**: every point of the grid is enqueued (`enqueue_trial`) and claimed by `ask`, which pops a WAITING
  trial atomically in the storage. Points without a finished trial that are neither queued nor running are
  enqueued again (resume); a point whose trial failed during this invocation is not retried until the next.
  The grid is done when every point has a finished trial.
- **Stale trials**: RUNNING trials of a dead sweeper process (see `heartbeat.py`) are told FAIL
  (`kbk.stale`) and their parameters re-queued, by whichever process wins the `tell` (storages refuse to
  finish a trial twice); one whose job finished and recorded its objective (`kbk.result`) is told COMPLETE
  from that record instead (`kbk.recovered`), and not trained again.
- **Failures**: a crashed or non-finite trial is FAIL with `fail_reason`; the sweep stops when more than
  `max_failure_rate × budget` trials failed during this invocation.

Dropped proposals are told FAIL with `kbk.skip_reason` (Optuna cannot delete a trial) and count nowhere.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbk.sweep.heartbeat import OWNER_ATTR, Worker, registered_workers
from kbk.sweep.space import SearchSpace, params_key

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial, Trial, TrialState

log = logging.getLogger(__name__)

FAIL_REASON_ATTR = "fail_reason"
PRUNE_REASON_ATTR = "prune_reason"
SKIP_ATTR = "kbk.skip_reason"
STALE_ATTR = "kbk.stale"
DUPLICATE_ATTR = "kbk.duplicate_of"
REQUEUED_ATTR = "kbk.requeued_from"
#: The objective a trial's job recorded when it finished (`kbk.sweep.trial.record_result_from_env`).
RESULT_ATTR = "kbk.result"
RECOVERED_ATTR = "kbk.recovered"

#: Seconds to wait for a lower-numbered trial that is still writing its parameters (it is inside `ask`).
PARAMS_WAIT_S = 5.0
#: Proposals in a row that are dropped (duplicates) before a process concludes the space is exhausted.
MAX_DROPPED_PROPOSALS = 50


@dataclass
class Outcome:
    """How a trial ended: COMPLETE with values, PRUNED, or FAIL; `reason` for the last two."""

    state: str  # "COMPLETE" | "PRUNED" | "FAIL"
    values: list[float] | None = None
    reason: str | None = None


def outcome_from_return(value: Any, metrics: Sequence[str]) -> Outcome:
    """A job's return value as an outcome: one float per objective, all finite, or FAIL with the reason."""
    names = list(metrics)
    raw = list(value) if isinstance(value, list | tuple) else [value]
    if len(raw) != len(names):
        return Outcome("FAIL", reason=f"the job returned {value!r}, expected {len(names)} value(s) for {names}")
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        return Outcome("FAIL", reason=f"the job returned {value!r}, not number(s) for {names}")
    bad = [f"{n}={v}" for n, v in zip(names, values, strict=True) if not math.isfinite(v)]
    if bad:
        return Outcome("FAIL", values=values, reason=f"non-finite objective: {', '.join(bad)}")
    return Outcome("COMPLETE", values=values)


def outcome_from_exception(error: BaseException) -> Outcome:
    text = str(error).strip()
    if type(error).__name__ == "TrialPruned":  # also when unpickled from a launcher's worker
        return Outcome("PRUNED", reason=text or "pruned")
    from kbk.errors import KbkError

    if isinstance(error, KbkError):
        return Outcome("FAIL", reason=text or type(error).__name__)
    return Outcome("FAIL", reason=f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": "))


@dataclass
class Status:
    budget: int
    complete: int = 0
    pruned: int = 0
    running: int = 0  # RUNNING and not stale, any process
    waiting: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)  # during this invocation
    grid_left: int | None = None  # grid points without a finished trial

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def _number(trial: Trial | int) -> int:
    return trial if isinstance(trial, int) else trial.number


def _state(name: str) -> TrialState:
    from optuna.trial import TrialState

    return TrialState[name]


class SweepEngine:
    def __init__(
        self,
        study: Study,
        space: SearchSpace,
        *,
        n_trials: int | None,
        grid: bool = False,
        dedup: bool = True,
        max_failure_rate: float = 0.0,
        worker: Worker | None = None,
        custom_space: Callable[[Trial], None] | None = None,
        params_wait_s: float = PARAMS_WAIT_S,
    ) -> None:
        self.study = study
        self.space = space
        self.grid = grid
        self.dedup = dedup
        self.worker = worker or Worker()
        self.custom_space = custom_space
        self.params_wait_s = params_wait_s
        self.session_start = time.time()  # Optuna's datetimes are naive local times: compare timestamps
        self.in_flight: dict[int, Trial] = {}
        self.grid_points = space.grid() if grid else []
        self.grid_keys = {params_key(p): p for p in self.grid_points}
        # n_trials is checked by the sweeper (`_check_numbers`): > 0, and null only for a grid (every point).
        self.budget = len(self.grid_points) if n_trials is None else int(n_trials)
        if grid:
            self.budget = min(self.budget, len(self.grid_points))
        self.max_failures = math.floor(float(max_failure_rate) * self.budget + 1e-9)

    # -------------------------------------------------------------------------------------------- reading

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def key_of(self, trial: FrozenTrial) -> str | None:
        """The trial's configuration key, None while its parameters are not all written yet."""
        params = trial.params
        names = self.space.names
        if not all(n in params for n in names):
            # A queued trial's parameters-to-be: `enqueue_trial` keeps them under this system attribute, Optuna's
            # own name (no public API reads a WAITING trial's parameters).
            fixed = trial.system_attrs.get("fixed_params") or {}
            if all(n in fixed for n in names):
                params = fixed
            else:
                return None
        return params_key({n: params[n] for n in names} if self.custom_space is None else params)

    def _stale_reasons(self, trials: list[FrozenTrial]) -> dict[int, str]:
        running = [t for t in trials if t.state.name == "RUNNING"]
        if not running:
            return {}
        workers = registered_workers(self.study)  # read after the trials: owners register before they ask
        now = time.time()
        out = {}
        for t in running:
            reason = self.worker.stale_reason(t, workers, now)
            if reason is not None:
                out[t.number] = reason
        return out

    @staticmethod
    def _ignored(t: FrozenTrial) -> bool:
        return SKIP_ATTR in t.user_attrs or STALE_ATTR in t.user_attrs

    def _failed_this_session(self, t: FrozenTrial) -> bool:
        return (
            t.state.name == "FAIL"
            and not self._ignored(t)
            and t.datetime_complete is not None
            and t.datetime_complete.timestamp() >= self.session_start - 1e-3
        )

    def status(self, trials: list[FrozenTrial] | None = None) -> Status:
        trials = self.trials() if trials is None else trials
        stale = self._stale_reasons(trials)
        st = Status(budget=self.budget)
        finished_keys: set[str] = set()
        for t in trials:
            name = t.state.name
            if name in ("COMPLETE", "PRUNED"):
                if name == "COMPLETE":
                    st.complete += 1
                else:
                    st.pruned += 1
                if self.grid and (key := self.key_of(t)) is not None:
                    finished_keys.add(key)
            elif name == "RUNNING" and t.number not in stale:
                st.running += 1
            elif name == "WAITING":
                st.waiting += 1
            elif self._failed_this_session(t):
                st.failures.append((t.number, str(t.user_attrs.get(FAIL_REASON_ATTR, "failed"))))
        if self.grid:
            st.grid_left = len(set(self.grid_keys) - finished_keys)
        return st

    def done(self, st: Status) -> str | None:
        """Why the sweep is over (for every process), or None."""
        if self.grid and st.grid_left == 0:
            return "every grid point has a finished trial"
        if st.finished >= self.budget:
            return f"the budget of {self.budget} finished trials is met"
        return None

    def failure_limit_exceeded(self, st: Status) -> bool:
        return len(st.failures) > self.max_failures

    # -------------------------------------------------------------------------------------------- stale

    def recover_stale(self) -> list[int]:
        """Fail the RUNNING trials of dead sweeper processes and queue their parameters again; returns their
        numbers (only those this process closed: another process may have won the race for some)."""
        trials = self.trials()
        by_number = {t.number: t for t in trials}
        closed = []
        for number, reason in sorted(self._stale_reasons(trials).items()):
            trial = by_number[number]
            if self._recover_result(number, trial.user_attrs, reason):
                continue
            if self._close(number, "FAIL", {STALE_ATTR: reason, FAIL_REASON_ATTR: f"stale: {reason}"}):
                closed.append(number)
                log.warning("trial %d was left RUNNING (%s): marked FAIL and re-queued", number, reason)
                if not self.grid and SKIP_ATTR not in trial.user_attrs and self.key_of(trial) is not None:
                    self.study.enqueue_trial(dict(trial.params), user_attrs={REQUEUED_ATTR: number})
        return closed

    def _recover_result(self, trial: Trial | int, user_attrs: dict[str, Any], reason: str) -> bool:
        """Tell COMPLETE a trial whose job finished and recorded its objective, though its sweeper process did not
        live to tell it: the point is not trained again. False when there is no such record."""
        values = user_attrs.get(RESULT_ATTR)
        if not values or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return False
        if self._close(trial, "COMPLETE", {RECOVERED_ATTR: reason}, values=values):
            log.warning("trial %d had finished (%s) but was not recorded (%s): its result is kept", _number(trial),
                        ", ".join(f"{v:.6g}" for v in values), reason)
        return True

    def _close(self, trial: Trial | int, state: str, attrs: dict[str, Any],
               values: Sequence[float] | None = None) -> bool:
        """Set `attrs` and finish the trial (one this process asked for, or another's by its number); False when
        it was already finished (by another process)."""
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            for key, value in attrs.items():
                self._set_user_attr(trial, key, value)
            self.study.tell(trial, list(values) if values is not None else None, state=_state(state))
            return True
        except (UpdateFinishedTrialError, ValueError, RuntimeError) as e:
            if "finished" in str(e).lower() or "cannot tell" in str(e).lower() or isinstance(
                e, UpdateFinishedTrialError
            ):
                return False
            raise

    def _set_user_attr(self, trial: Trial | int, key: str, value: Any) -> None:
        if not isinstance(trial, int):
            trial.set_user_attr(key, value)
            return
        # Another process's trial (stale): Optuna has no public way to write a user attribute of a trial this
        # process did not ask for, so through the study's own storage (for an RDB, the cache Optuna wraps it in,
        # which must see the write), by the trial's id from the storage's public lookup.
        storage = self.study._storage
        study_id = storage.get_study_id_from_name(self.study.study_name)
        storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, trial), key, value)

    # -------------------------------------------------------------------------------------------- claim

    def enqueue_missing_grid_points(self, trials: list[FrozenTrial] | None = None) -> int:
        """Queue the grid points that have no finished, queued or running trial and did not fail during this
        invocation. Returns how many were queued."""
        if not self.grid:
            return 0
        trials = self.trials() if trials is None else trials
        stale = self._stale_reasons(trials)
        taken: set[str] = set()
        planned = 0  # finished, running or queued: what already counts toward the budget
        for t in trials:
            name = t.state.name
            live = name in ("COMPLETE", "PRUNED", "WAITING") or (name == "RUNNING" and t.number not in stale)
            planned += live and SKIP_ATTR not in t.user_attrs
            if live or self._failed_this_session(t):
                key = self.key_of(t)
                if key is not None:
                    taken.add(key)
        room = self.budget - planned  # with n_trials below the grid's size, queue no more than it allows
        queued = 0
        for key, point in self.grid_keys.items():
            if queued >= room:
                break
            if key not in taken:
                self.study.enqueue_trial(point)
                queued += 1
        return queued

    def claim(self, n: int) -> list[Trial]:
        """Ask for up to `n` trials to launch now (fewer near the end of the budget or the grid); duplicates of
        finished trials are told at once from the earlier result and not returned."""
        claimed: list[Trial] = []
        dropped_in_a_row = 0
        while len(claimed) < n:
            trials = self.trials()
            st = self.status(trials)
            if self.done(st) is not None:
                break
            if st.finished + st.running >= self.budget:
                break  # what runs now fills the budget (unless some of it fails: asked again later)
            if self.grid:
                if st.waiting == 0 and self.enqueue_missing_grid_points(trials) == 0:
                    break
            if dropped_in_a_row >= MAX_DROPPED_PROPOSALS:
                log.warning("%d proposals in a row repeated earlier trials: the search space looks exhausted",
                            dropped_in_a_row)
                break
            trial = self.study.ask(fixed_distributions=self.space.distributions)
            trial.set_user_attr(OWNER_ATTR, self.worker.id)
            if self.custom_space is not None:
                self.custom_space(trial)
            verdict = self._check_claim(trial)
            if verdict is None:
                claimed.append(trial)
                self.in_flight[trial.number] = trial
                dropped_in_a_row = 0
            else:
                dropped_in_a_row += 1
                if verdict == "over budget":
                    break
        return claimed

    def _check_claim(self, trial: Trial) -> str | None:
        """None when `trial` may run; otherwise the reason it was dropped or answered from a duplicate."""
        number = trial.number
        deadline = time.monotonic() + self.params_wait_s
        while True:
            trials = self.trials()
            mine = next(t for t in trials if t.number == number)
            lower = [t for t in trials if t.number < number]
            writing = [t for t in lower if t.state.name == "RUNNING" and self.key_of(t) is None
                       and SKIP_ATTR not in t.user_attrs]
            if not writing or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        stale = self._stale_reasons(trials)
        live_lower = sum(
            1 for t in lower
            if t.state.name in ("COMPLETE", "PRUNED") or (t.state.name == "RUNNING" and t.number not in stale
                                                          and SKIP_ATTR not in t.user_attrs)
        )
        if live_lower >= self.budget:
            self._drop(trial, "over budget: earlier trials fill n_trials")
            return "over budget"
        key = self.key_of(mine)
        if self.grid and key not in self.grid_keys:
            self._drop(trial, "not a point of the grid")
            return "not in grid"
        if not (self.dedup or self.grid):
            return None
        for t in trials:
            if t.number == number or self.key_of(t) != key or self._ignored(t):
                continue
            name = t.state.name
            if name in ("COMPLETE", "PRUNED"):
                if self.grid:
                    self._drop(trial, f"duplicate of finished trial {t.number}")
                    return "duplicate"
                self._close(trial, name, {DUPLICATE_ATTR: t.number}, values=t.values if name == "COMPLETE" else None)
                log.info("trial %d repeats trial %d (%s): its result is reused", number, t.number, name)
                return "reused"
            if t.number < number and (name == "WAITING" or (name == "RUNNING" and t.number not in stale)):
                self._drop(trial, f"duplicate of {name.lower()} trial {t.number}")
                return "duplicate"
        return None

    def _drop(self, trial: Trial, reason: str) -> None:
        log.debug("trial %d dropped: %s", trial.number, reason)
        # A grid point dropped here is queued again by `enqueue_missing_grid_points` if it still needs a trial.
        self._close(trial, "FAIL", {SKIP_ATTR: reason})

    # -------------------------------------------------------------------------------------------- tell

    def tell(self, trial: Trial, outcome: Outcome) -> bool:
        """Record a launched trial's outcome; False when another process had already closed it (stale)."""
        self.in_flight.pop(trial.number, None)
        attrs: dict[str, Any] = {}
        if outcome.state == "FAIL":
            attrs[FAIL_REASON_ATTR] = outcome.reason or "failed"
        elif outcome.state == "PRUNED":
            attrs[PRUNE_REASON_ATTR] = outcome.reason or "pruned"
        values = outcome.values if outcome.state == "COMPLETE" else None
        ok = self._close(trial, outcome.state, attrs, values=values)
        if not ok:
            log.warning("trial %d had already been closed by another sweeper process; its result (%s) is "
                        "dropped", trial.number, outcome.state)
        return ok

    def run(
        self,
        launch: Callable[[list[Trial]], Sequence[Outcome]],
        n_jobs: int = 1,
        *,
        poll_s: float = 1.0,
        on_tell: Callable[[Trial, Outcome], None] | None = None,
        on_stale: Callable[[list[int]], None] | None = None,
        on_batch: Callable[[], None] | None = None,
    ) -> Status:
        """Claim, launch and tell batches of up to `n_jobs` trials until the sweep is done, the failure limit is
        passed, or nothing is left for this process. `launch(trials)` returns one `Outcome` per trial."""
        while True:
            stale = self.recover_stale()
            if stale and on_stale is not None:
                on_stale(stale)
            st = self.status()
            reason = self.done(st)
            if reason is not None:
                log.info("kbk sweep: done, %s (%d complete, %d pruned)", reason, st.complete, st.pruned)
                return st
            if self.failure_limit_exceeded(st):
                return st
            batch = self.claim(n_jobs)
            if not batch:
                st = self.status()
                if self.done(st) is None and st.running > 0:
                    time.sleep(poll_s)  # other processes run the last trials; one of them may still fail
                    continue
                if self.done(st) is None:
                    log.warning("kbk sweep: nothing left to run (%d finished of %d%s); re-run to retry what "
                                "failed", st.finished, self.budget,
                                f", {st.grid_left} grid points unfinished" if st.grid_left else "")
                return st
            outcomes = list(launch(batch))
            for trial, outcome in zip(batch, outcomes, strict=True):
                self.tell(trial, outcome)
                if on_tell is not None:
                    on_tell(trial, outcome)
            if on_batch is not None:
                on_batch()

    def release_in_flight(self, reason: str) -> list[int]:
        """On interruption: fail this process's running trials as stale and queue their parameters again."""
        released = []
        frozen = {t.number: t for t in self.trials()} if self.in_flight else {}
        for number, trial in list(self.in_flight.items()):
            if self._recover_result(trial, frozen[number].user_attrs, reason):
                self.in_flight.pop(number, None)
                continue
            if self._close(trial, "FAIL", {STALE_ATTR: reason, FAIL_REASON_ATTR: reason}):
                released.append(number)
                if not self.grid:
                    self.study.enqueue_trial(dict(frozen[number].params), user_attrs={REQUEUED_ATTR: number})
            self.in_flight.pop(number, None)
        return released
