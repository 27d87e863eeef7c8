"""kbk's Hydra sweeper: Optuna ask/tell (see `engine.py`) launching trials through the configured Hydra launcher.

Per batch: claim up to `n_jobs` trials → overrides (trial params + fixed sweep overrides + the trial's environment
through `hydra.job.env_set`) → check each composes → `launcher.launch(batch, initial_job_idx=<first trial
number>)` → tell COMPLETE / PRUNED (the job raised `optuna.TrialPruned`) / FAIL (any other exception, or a
non-finite objective; `fail_reason`). Job folders are named by trial number, so they stay unique across resumes.

Before any trial: the study is created or loaded, its settings checked against this command's, this process
registered (heartbeat), stale trials of dead processes failed and re-queued, and the MLflow parent run created
(or reopened) with the store's schema and experiment. After: `optimization_results.yaml`, `results.csv` and
`results.json` in the sweep folder, and the summary on the parent run.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from kbk.errors import ConfigError, KbkError
from kbk.sweep import ENV_PARENT_RUN, ENV_PRUNER, ENV_STORAGE, ENV_STUDY, ENV_SWEEP, ENV_TRIAL

log = logging.getLogger(__name__)

SETTINGS_ATTR = "kbk.settings"
#: Seconds a process that found the study already created waits for its creator to finish setting it up.
SETUP_WAIT_S = 120.0
#: Seconds between looks at the study while other processes run the last trials.
POLL_S = 1.0
#: Config keys that say where things go rather than what is computed: they may differ between resumes.
LOCATION_KEYS = ("paths", "tracking", "hydra")
VOLATILE_KEYS = ("trainer.resume", "trainer.log_checkpoint")


def metric_names(cfg: DictConfig) -> list[str]:
    metric = OmegaConf.select(cfg, "optimized_metric", default="val/ppl")
    if OmegaConf.is_config(metric):
        metric = OmegaConf.to_container(metric)
    return [metric] if isinstance(metric, str) else [str(m) for m in metric]


def sweep_settings(cfg: DictConfig, space: dict[str, str], directions: list[str]) -> dict[str, str]:
    """What makes two sweeper commands the same study: the task config (without locations), the search space and
    the directions. Stored on the study; a later command with other settings is refused (`check_settings`)."""
    from kbk.tracking.run_info import flatten

    task = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)  # `ridge`, as the trials log it
    for key in LOCATION_KEYS:
        task.pop(key, None)
    flat = {k: v for k, v in flatten(task).items() if k not in VOLATILE_KEYS}
    flat.update({f"sweep.params.{k}": v for k, v in space.items()})
    flat["sweep.directions"] = json.dumps(directions)
    return dict(sorted(flat.items()))


def check_settings(study: Any, settings: dict[str, str], storage: str) -> None:
    from kbk.sweep.storage import _redact

    stored = study.user_attrs.get(SETTINGS_ATTR)
    if not stored or stored == settings:
        return
    keys = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    shown = "; ".join(f"{k} (study: {stored.get(k, '<unset>')}, now: {settings.get(k, '<unset>')})" for k in keys[:8])
    more = f"; and {len(keys) - 8} more" if len(keys) > 8 else ""
    raise ConfigError(
        f"Study {study.study_name!r} in {_redact(storage)} belongs to a sweep with other settings: {shown}{more}. "
        f"Fix: run the same command to resume it, or pass hydra.sweeper.study_name=<a new name> to start "
        f"another study."
    )


def _quote(value: str) -> str:
    from kbk.sweep.space import format_value

    return format_value(str(value))


class KbkOptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "minimize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int | None = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 0.25,
        pruner: Any = None,
        params: dict[str, Any] | None = None,
        custom_search_space: str | None = None,
        dedup: bool = True,
        heartbeat_interval: float = 30.0,
        grace_period: float = 300.0,
        plots: bool = True,
    ) -> None:
        self.sampler_cfg = sampler if sampler is not None else {"name": "tpe"}
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.pruner_cfg = pruner
        self.params = OmegaConf.to_container(params) if OmegaConf.is_config(params) else (params or {})
        self.custom_search_space = custom_search_space
        self.dedup = dedup
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.plots = plots
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ---------------------------------------------------------------------------------------------- sweep

    def sweep(self, arguments: list[str]) -> Any:
        from kbk.paths import outputs_dir
        from kbk.sweep.factories import as_mapping, directions_of, is_grid, pruner_spec, pruner_to_env, sampler_name
        from kbk.sweep.space import parse_space
        from kbk.sweep.storage import _redact, open_storage, resolve_storage
        from kbk.tracking.run_info import config_hash

        cfg = self.config
        assert cfg is not None and self.launcher is not None
        metrics = metric_names(cfg)
        space = parse_space(self.params, arguments)
        if not space.distributions:
            raise ConfigError("The sweep has nothing to vary: set hydra.sweeper.params (or use an "
                              "hparams_search preset) or give a sweep on the command line, e.g. koopman.dim=128,256.")
        sampler_spec = as_mapping(self.sampler_cfg, "sampler")
        grid = is_grid(sampler_spec)
        if grid and self.custom_search_space:
            raise ConfigError("hydra.sweeper.custom_search_space cannot be used with the grid sampler.")
        pruner = pruner_spec(self.pruner_cfg)
        directions = directions_of(self.direction, metrics)
        if len(directions) > 1 and (pruner.get("_target_") or pruner.get("name") != "none"):
            log.warning("kbk sweep: Optuna does not prune multi-objective studies; the pruner is not used")
        settings = sweep_settings(cfg, space.signature(), directions)
        study_name = self.study_name or f"kbk-{config_hash(settings)[:10]}"
        storage_spec = resolve_storage(self.storage, outputs_dir(cfg.paths.outputs), study_name)
        storage = open_storage(storage_spec)
        sweep_dir = Path(str(cfg.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, sweep_dir / "multirun.yaml")
        log.info("kbk sweep: study %r in %s, %s sampler, %s, params %s", study_name, _redact(storage_spec),
                 sampler_name(sampler_spec), "/".join(directions), space.describe())

        from kbk.sweep.workers import Worker, registered_workers

        worker = Worker(self.heartbeat_interval, self.grace_period)
        study, created = self._open_study(storage, study_name, directions, metrics, sampler_spec, pruner, settings,
                                          storage_spec)
        # The creator sets the study up (parent run, then settings); if it died before finishing, this process does.
        owns_setup = created or SETTINGS_ATTR not in study.user_attrs
        seed_offset = 0 if created else len(registered_workers(study))
        if seed_offset:  # parallel processes with one seed would propose the same trials in lockstep
            study.sampler = self._sampler(sampler_spec, seed_offset)
        worker.start(study)
        env = {ENV_SWEEP: study_name, ENV_STUDY: study_name, ENV_STORAGE: storage_spec,
               ENV_PRUNER: pruner_to_env(pruner)}
        run = _SweepRun(self, study, space, grid, worker, metrics, env, storage_spec, sweep_dir)
        try:
            return run.execute(settings, owns_setup)
        finally:
            worker.stop()

    def _sampler(self, spec: dict[str, Any], seed_offset: int = 0) -> Any:
        from kbk.sweep.factories import make_sampler

        return make_sampler(spec, seed_offset)

    def _open_study(self, storage: Any, name: str, directions: list[str], metrics: list[str],
                    sampler_spec: dict[str, Any], pruner: dict[str, Any], settings: dict[str, str],
                    storage_spec: str) -> tuple[Any, bool]:
        """Create the study (this process is its creator) or load it and wait until its creator has set it up;
        then check that its settings are this command's."""
        import optuna

        from kbk.sweep.factories import make_pruner

        sampler, pruner_obj = self._sampler(sampler_spec), make_pruner(pruner)
        try:
            study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                        pruner=pruner_obj)
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(metrics)
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            pass
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner_obj)
        deadline = time.monotonic() + SETUP_WAIT_S
        while SETTINGS_ATTR not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(0.2)  # the creator is creating the parent run; it writes the settings last
        if SETTINGS_ATTR not in study.user_attrs:
            log.warning("study %r was created but never set up (its process died?); setting it up here", name)
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise ConfigError(
                f"Study {name!r} optimizes {stored}, this sweep {directions}. Fix: use the study's directions to "
                "resume it, or pass hydra.sweeper.study_name=<a new name>."
            )
        check_settings(study, settings, storage_spec)
        return study, False

    # ------------------------------------------------------------------------------------------------ jobs

    def job_overrides(self, trial: Any, space: Any, env: dict[str, str], subdir: bool) -> list[str]:
        overrides = space.overrides(trial.params)
        env = {**env, ENV_TRIAL: str(trial.number)}
        overrides += [f"++hydra.job.env_set.{k}={_quote(v)}" for k, v in env.items()]
        if subdir:
            overrides.append(f"hydra.sweep.subdir={trial.number}")
        return overrides

    def compose_error(self, overrides: Sequence[str]) -> str | None:
        """Why a trial's config does not compose (a bad choice value, an unknown key), None if it does."""
        try:
            self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                               sweep_overrides=list(overrides))
            return None
        except Exception as e:  # noqa: BLE001 (Hydra raises several kinds; each is the trial's failure)
            text = str(e).strip()
            return f"config does not compose: {text.splitlines()[0] if text else type(e).__name__}"


class _SweepRun:
    """One invocation of the sweeper: the loop over batches and what happens around it."""

    def __init__(self, sweeper: KbkOptunaSweeperImpl, study: Any, space: Any, grid: bool, worker: Any,
                 metrics: list[str], env: dict[str, str], storage_spec: str, sweep_dir: Path) -> None:
        from kbk.sweep.engine import SweepEngine

        self.sweeper = sweeper
        self.study = study
        self.space = space
        self.metrics = metrics
        self.env = env
        self.storage_spec = storage_spec
        self.sweep_dir = sweep_dir
        custom = None
        if sweeper.custom_search_space:
            from hydra.utils import get_method

            fn = get_method(sweeper.custom_search_space)
            custom = lambda trial: fn(sweeper.config, trial)  # noqa: E731
        self.engine = SweepEngine(study, space, n_trials=sweeper.n_trials, grid=grid, dedup=sweeper.dedup,
                                  max_failure_rate=sweeper.max_failure_rate, worker=worker, custom_space=custom)
        self.parent = None
        self.returns: list[Any] = []

    def _open_parent(self, settings: dict[str, str]) -> None:
        from kbk.paths import outputs_dir
        from kbk.sweep.factories import as_mapping, pruner_spec
        from kbk.sweep.parent import SweepParent
        from kbk.tracking.store import resolve_tracking_uri

        cfg = self.sweeper.config
        tracking = cfg.get("tracking")
        if tracking is None or tracking.get("backend", "mlflow") == "none":
            return
        uri = resolve_tracking_uri(tracking.get("uri"), outputs_dir(cfg.paths.outputs))
        sampler = {k: v for k, v in as_mapping(self.sweeper.sampler_cfg, "sampler").items() if v is not None}
        pruner = {k: v for k, v in pruner_spec(self.sweeper.pruner_cfg).items() if v is not None}
        tags = {"kbk.sweep": self.study.study_name, "kbk.sweep_dir": str(self.sweep_dir),
                "kbk.n_trials": str(self.engine.budget), "kbk.sampler": json.dumps(sampler, default=str),
                "kbk.pruner": json.dumps(pruner, default=str)}
        self.parent = SweepParent.open(uri, tracking.get("experiment", "kbk"), self.study, params=settings,
                                       tags=tags)
        self.env[ENV_PARENT_RUN] = self.parent.run_id

    def execute(self, settings: dict[str, str], owns_setup: bool) -> list[Any]:
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None):  # SIGTERM (scancel, timeouts) unwinds through the cleanup below
            signal.signal(signal.SIGTERM, _raise_system_exit)
        try:
            self._open_parent(settings)
            if owns_setup:
                # The grid is queued before the settings appear, so processes started alongside, which wait for
                # the settings, find the points queued rather than queue them a second time.
                self.engine.recover_stale()
                self.engine.enqueue_missing_grid_points()
                self.study.set_user_attr(SETTINGS_ATTR, settings)  # last: processes waiting on it find the parent
            status = self._loop()
        except BaseException as e:
            self._abort(e)
            raise
        finally:
            if signal.getsignal(signal.SIGTERM) is _raise_system_exit:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        self._finish(status)
        return self.returns

    def _loop(self) -> Any:
        return self.engine.run(self._launch, self.sweeper.n_jobs, poll_s=POLL_S, on_tell=self._on_tell,
                               on_stale=self._settle_stale, on_batch=self._write_results)

    def _launch(self, batch: list[Any]) -> list[Any]:
        """Run a batch through the Hydra launcher; one outcome per trial."""
        from kbk.sweep.engine import Outcome, outcome_from_exception, outcome_from_return

        sweeper = self.sweeper
        numbers = [t.number for t in batch]
        consecutive = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        outcomes: dict[int, Outcome] = {}
        jobs = []
        for trial in batch:
            overrides = sweeper.job_overrides(trial, self.space, self.env, subdir=not consecutive)
            error = sweeper.compose_error(overrides)
            if error is not None:
                outcomes[trial.number] = Outcome("FAIL", reason=error)
            else:
                jobs.append((trial, overrides))
        if jobs and len(jobs) < len(batch) and consecutive:  # some failed to compose: keep folders = numbers
            jobs = [(t, sweeper.job_overrides(t, self.space, self.env, subdir=True)) for t, _ in jobs]
        if jobs:
            try:
                results = sweeper.launcher.launch([o for _, o in jobs], initial_job_idx=jobs[0][0].number)
            except Exception as e:  # noqa: BLE001 (a launcher failure fails its batch, not the sweep)
                log.error("kbk sweep: the launcher failed for trials %s: %s", [t.number for t, _ in jobs], e)
                results = [e] * len(jobs)
            for (trial, _), result in zip(jobs, results, strict=True):
                if isinstance(result, BaseException):
                    outcomes[trial.number] = Outcome("FAIL", reason=f"launcher: {type(result).__name__}: {result}")
                    continue
                self.returns.append(result)
                value = getattr(result, "_return_value", None)
                if getattr(result.status, "name", "") == "COMPLETED":
                    outcomes[trial.number] = outcome_from_return(value, self.metrics)
                    continue
                error = value if isinstance(value, BaseException) else RuntimeError(str(value))
                outcomes[trial.number] = outcome_from_exception(error)
                if outcomes[trial.number].state == "FAIL" and not isinstance(error, KbkError):
                    log.error("trial %d raised", trial.number, exc_info=error)
        return [outcomes[t.number] for t in batch]

    def _on_tell(self, trial: Any, outcome: Any) -> None:
        from kbk.sweep.space import format_value

        params = " ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
        if outcome.state == "COMPLETE":
            shown = ", ".join(f"{n}={v:.6g}" for n, v in zip(self.metrics, outcome.values, strict=True))
        else:
            shown = outcome.reason or ""
        log.info("trial %d %s %s | %s", trial.number, outcome.state, shown, params)
        if outcome.state == "FAIL" and outcome.values is not None and self.parent is not None:
            # The job finished (its MLflow run FINISHED) but the objective is not finite: the run says so too.
            self.parent.settle_children({trial.number: ("FAILED", outcome.reason or "failed")})

    def _settle_stale(self, numbers: list[int]) -> None:
        if numbers and self.parent is not None:
            self.parent.settle_children({n: ("KILLED", "the sweeper process running this trial died; "
                                             "the trial was re-queued") for n in numbers})

    def _write_results(self) -> dict[str, Path]:
        from kbk.sweep.results import write_results

        try:
            return write_results(self.sweep_dir, self.study, self.storage_spec, self.metrics)
        except Exception as e:  # noqa: BLE001 (a results file must not stop the sweep)
            log.warning("kbk sweep: could not write the results files: %s", e)
            return {}

    def _finish(self, st: Any) -> None:
        engine = self.engine
        self._write_results()
        failed = engine.failure_limit_exceeded(st)
        if self.parent is not None:
            try:
                self.parent.summarize(self.study, self.metrics, self.sweep_dir, plots=self.sweeper.plots)
            except Exception as e:  # noqa: BLE001 (the trials are recorded; the summary is a convenience)
                log.warning("kbk sweep: could not log the summary to the parent run: %s", e)
            others = engine.status().running > 0
            if failed:
                self.parent.end("FAILED", reason=self._failure_text(st))
            elif others:
                self.parent.detach()  # the last sweeper process on the study ends it
            else:
                self.parent.end("FINISHED")
        log.info("kbk sweep: results in %s", self.sweep_dir / "optimization_results.yaml")
        if failed:
            raise KbkError(self._failure_text(st))

    def _failure_text(self, st: Any) -> str:
        shown = "; ".join(f"trial {n}: {r}" for n, r in st.failures[:5])
        return (f"{len(st.failures)} trials failed, more than max_failure_rate={self.sweeper.max_failure_rate} × "
                f"{self.engine.budget} allows: {shown}. Fix the cause and re-run the same command (finished trials "
                f"are kept), or raise hydra.sweeper.max_failure_rate.")

    def _abort(self, error: BaseException) -> None:
        """Interrupted or crashed: give this process's running trials back to the queue, end the parent run."""
        reason = f"the sweep was interrupted ({type(error).__name__})"
        try:
            released = self.engine.release_in_flight(reason)
            if released:
                log.warning("kbk sweep: trials %s re-queued", released)
                self._settle_stale(released)
            self._write_results()
        except Exception as e:  # noqa: BLE001 (already failing; keep the original error)
            log.warning("kbk sweep: could not release the running trials: %s", e)
        if self.parent is not None:
            try:
                interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                self.parent.end("KILLED" if interrupted else "FAILED", reason=reason)
            except Exception:  # noqa: BLE001
                pass


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
