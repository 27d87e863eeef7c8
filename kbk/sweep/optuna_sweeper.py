"""kbk's Hydra sweeper: Optuna ask/tell (see `engine.py`) launching trials through the configured Hydra launcher.

Per batch: claim up to `n_jobs` trials → overrides (trial params + fixed sweep overrides + the trial's environment
through `hydra.job.env_set`) → check each composes → `launcher.launch(batch, initial_job_idx=<first trial
number>)` → tell COMPLETE / PRUNED (the job raised `optuna.TrialPruned`) / FAIL (any other exception, or a
non-finite objective; `fail_reason`). Job folders are named by trial number, so they stay unique across resumes.

First, before anything is created: every sweeper setting is checked, and the trial config of every distinct choice
(and both ends of every interval) is composed and validated with the job's own checks; a mistake is one
`kbk: error:` line and exit 2. Passwords in the storage URL or tracking.uri are kept out of what Hydra records.
Then, before any trial: the study is created or loaded, its settings checked against this command's, this process
registered (heartbeat), stale trials of dead processes failed and re-queued, and the MLflow parent run created
(or reopened) with the store's schema and experiment. After: `optimization_results.yaml`, `results.csv` and
`results.json` in the sweep folder, and the summary on the parent run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from kbk.errors import ConfigError, KbkError
from kbk.identity import changed_settings, experiment_settings
from kbk.paths import outputs_dir
from kbk.sweep import ENV_PARENT_RUN, ENV_PRUNER, ENV_STORAGE, ENV_STUDY, ENV_SWEEP, ENV_TRIAL
from kbk.sweep.closing_lines import say_sweep_closing
from kbk.sweep.engine import Outcome, SweepEngine, outcome_from_exception, outcome_from_return
from kbk.sweep.factories import (
    class_name,
    config_of,
    directions_of,
    is_grid,
    make_pruner,
    make_sampler,
    pruner_to_env,
)
from kbk.sweep.heartbeat import Worker, creator_gone, registered_workers
from kbk.sweep.parent import COMMAND_TAG, SweepParent, sweep_command, tracking_store
from kbk.sweep.results import write_results
from kbk.sweep.space import format_value, parse_space
from kbk.sweep.storage import open_storage, resolve_storage
from kbk.urls import redact_text, redact_url, url_password

log = logging.getLogger(__name__)

SETTINGS_ATTR = "kbk.settings"
#: The process that created the study ({host, pid, start_ticks, beat}): a process waiting for the study's setup
#: takes it over at once when that process is gone.
CREATOR_ATTR = "kbk.creator"
#: Seconds a process that found the study already created waits for its creator (alive, or on another host) to
#: finish setting it up.
SETUP_WAIT_S = 120.0
#: Study names become file and folder names (the journal, a preset's sweep folder): no separators, no dot first.
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
#: Seconds between looks at the study while other processes run the last trials.
POLL_S = 1.0
#: A metric the parent's summary logs at step = finished trials: present at that step means summarized.
SUMMARY_PROBE = "trials/complete"
SUMMARY_CLAIM_PREFIX = "kbk.summary_by."
#: Seconds for every sweeper process ending at the same time to write its claim (they notice the end within
#: POLL_S of each other).
SUMMARY_SETTLE_S = 3.0
#: What a trial keeps of its checkpoints once it has finished, unless the sweep sets trainer.keep_checkpoint: a
#: finished trial is never resumed (the study holds its result), and a sweep's checkpoints add up.
TRIAL_KEEP_CHECKPOINT = "none_after_finish"


def metric_names(cfg: DictConfig) -> list[str]:
    metric = OmegaConf.select(cfg, "optimized_metric", default="val/ppl")
    if OmegaConf.is_config(metric):
        metric = OmegaConf.to_container(metric)
    return [metric] if isinstance(metric, str) else [str(m) for m in metric]


def sweep_settings(cfg: DictConfig, space: dict[str, str], directions: list[str]) -> dict[str, str]:
    """What makes two sweeper commands the same study: the experiment (`kbk.identity`), the search space and the
    directions. Stored on the study; a later command with other settings is refused (`check_settings`)."""
    flat = experiment_settings(cfg)
    flat.update({f"sweep.params.{k}": v for k, v in space.items()})
    flat["sweep.directions"] = json.dumps(directions)
    return dict(sorted(flat.items()))


def check_settings(study: Any, settings: dict[str, str], storage: str,
                   defaults: Callable[[], dict[str, str]] | None = None) -> None:
    """Refuse a study made with other settings. `defaults()`: the settings without the user's overrides, asked
    for only when the study lacks a key (one kbk gained since): a key at its default is the same experiment."""
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if not stored or stored == settings:
        return
    new_keys = defaults is not None and any(k not in stored for k in settings)
    keys = changed_settings(stored, settings, defaults() if new_keys else None)
    if not keys:
        return
    shown = "; ".join(f"{k} (study: {stored.get(k, '<unset>')}, now: {settings.get(k, '<unset>')})" for k in keys[:8])
    more = f"; and {len(keys) - 8} more" if len(keys) > 8 else ""
    raise ConfigError(
        f"Study {study.study_name!r} in {redact_url(storage)} belongs to a sweep with other settings: {shown}{more}. "
        f"Fix: run the same command to resume it, or pass hydra.sweeper.study_name=<a new name> to start "
        f"another study."
    )


def study_name_of(name: str | None, settings: dict[str, str], preset: str | None) -> str:
    """`hydra.sweeper.study_name` resolved: null is `kbk-<hash of the sweep's settings>`, `auto` the same hash after
    the hparams_search preset's name, so a changed setting starts a new study and the same command resumes it."""
    from kbk.tracking.run_params import config_hash

    if name and name != "auto":
        return name
    prefix = (preset or "kbk") if name == "auto" else "kbk"
    return f"{prefix}-{config_hash(settings)[:10]}"


def trial_retention(cfg: DictConfig) -> list[str]:
    """The override that gives a trial `TRIAL_KEEP_CHECKPOINT`, put before the trial's own overrides so that a
    `trainer.keep_checkpoint=...` on the command line (a fixed override of the sweep, applied later) wins; none when
    the sweep's config already holds another value than the default (a preset set it)."""
    from kbk.training.trainer_config import TrainerConfig

    if OmegaConf.select(cfg, "trainer.keep_checkpoint", default=None) != TrainerConfig.keep_checkpoint:
        return []
    return [f"trainer.keep_checkpoint={TRIAL_KEEP_CHECKPOINT}"]


def check_study_name(name: str) -> None:
    if not STUDY_NAME.fullmatch(str(name)):
        raise ConfigError(f"hydra.sweeper.study_name={name!r} is not allowed: use up to 128 letters, digits, '-', "
                          "'_' and '.', not starting with '.' (it names files and folders under the outputs folder).")


@dataclass
class SweepPlan:
    """The sweep's settings, checked."""

    metrics: list[str]
    space: Any
    sampler_spec: dict[str, Any]
    grid: bool
    pruner: dict[str, Any]
    directions: list[str]
    settings: dict[str, str]
    study_name: str
    storage_spec: str


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
        self.sampler_cfg = sampler
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs_given = int(n_jobs)
        self.n_jobs = max(1, self.n_jobs_given)
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
        """Run the sweep. A user's mistake is one `kbk: error:` line and exit 2, Ctrl-C one line and exit 130
        (Hydra would print either with a traceback)."""
        try:
            return self._sweep(arguments)
        except KbkError as e:
            print(f"kbk: error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("kbk: interrupted (Ctrl-C): the running trials were re-queued and the sweep's MLflow run ended "
                  "KILLED; re-run the same command to finish the sweep", file=sys.stderr, flush=True)
            sys.exit(130)

    def _sweep(self, arguments: list[str]) -> Any:
        cfg = self.config
        assert cfg is not None and self.launcher is not None
        plan = self._checked_plan(arguments)  # every check first: nothing exists yet when one fails
        self._check_trial_configs(plan.space)
        storage_spec = plan.storage_spec
        secrets = self._hide_secrets(storage_spec, plan.space)
        storage = open_storage(storage_spec)
        sweep_dir = Path(str(cfg.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "multirun.yaml").write_text(redact_text(OmegaConf.to_yaml(cfg), secrets))
        log.info("kbk sweep: study %r in %s, %s sampler, %s, params %s", plan.study_name, redact_url(storage_spec),
                 class_name(plan.sampler_spec), "/".join(plan.directions), plan.space.describe())

        worker = Worker(self.heartbeat_interval, self.grace_period)
        study, created = self._open_study(storage, plan, worker)
        # The creator sets the study up (parent run, then settings); if it died before finishing, this process does.
        owns_setup = created or SETTINGS_ATTR not in study.user_attrs
        seed_offset = 0 if created else len(registered_workers(study))
        if seed_offset:  # parallel processes with one seed would propose the same trials in lockstep
            study.sampler = make_sampler(plan.sampler_spec, seed_offset)
        worker.start(study)
        env = {ENV_SWEEP: plan.study_name, ENV_STUDY: plan.study_name, ENV_PRUNER: pruner_to_env(plan.pruner)}
        if not url_password(storage_spec):  # with a password, the jobs inherit it (see `_hide_secrets`)
            env[ENV_STORAGE] = storage_spec
        run = _SweepRun(self, study, plan, worker, env, sweep_dir)
        try:
            return run.execute(plan.settings, owns_setup)
        finally:
            worker.stop()

    def _checked_plan(self, arguments: list[str]) -> SweepPlan:
        """Every sweeper setting checked, in the order a user reads them; a `ConfigError` names the key."""

        cfg = self.config
        metrics = metric_names(cfg)
        space = parse_space(self.params, arguments)
        if not space.distributions:
            raise ConfigError("The sweep has nothing to vary: set hydra.sweeper.params (or use an "
                              "hparams_search preset) or give a sweep on the command line, e.g. koopman.dim=128,256.")
        sampler_spec = config_of(self.sampler_cfg, "sampler")
        grid = is_grid(sampler_spec)
        if grid and self.custom_search_space:
            raise ConfigError("hydra.sweeper.custom_search_space cannot be used with the grid sampler.")
        make_sampler(sampler_spec)  # an unknown class or a bad argument fails here
        pruner = config_of(self.pruner_cfg, "pruner")
        make_pruner(pruner)
        directions = directions_of(self.direction, metrics)
        if len(directions) > 1 and class_name(pruner) != "NopPruner":
            log.warning("kbk sweep: Optuna does not prune multi-objective studies; the pruner is not used")
        self._check_numbers(grid)
        if grid:
            space.grid()  # a continuous parameter in a grid fails here
        settings = sweep_settings(cfg, space.signature(), directions)
        preset = OmegaConf.select(cfg, "hydra.runtime.choices.hparams_search", default=None)
        study_name = study_name_of(self.study_name, settings, preset)
        check_study_name(study_name)
        storage = self.storage or os.environ.get(ENV_STORAGE) or None  # the environment keeps a password out of files
        storage_spec = resolve_storage(storage, outputs_dir(cfg.paths.outputs), study_name)
        return SweepPlan(metrics, space, sampler_spec, grid, pruner, directions,
                         settings, study_name, storage_spec)

    def _check_numbers(self, grid: bool) -> None:
        n_trials = self.n_trials
        if n_trials is None and not grid:
            raise ConfigError("hydra.sweeper.n_trials=null means 'the whole grid'; with a non-grid sampler give "
                              "a number of trials, e.g. hydra.sweeper.n_trials=20.")
        if n_trials is not None and int(n_trials) <= 0:
            raise ConfigError(f"hydra.sweeper.n_trials={n_trials} is not allowed: it must be an integer > 0 (the "
                              "total of finished trials), or null for the whole grid.")
        if self.n_jobs_given <= 0:
            raise ConfigError(f"hydra.sweeper.n_jobs={self.n_jobs_given} is not allowed: it must be an integer > 0.")
        rate = self.max_failure_rate
        if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
            raise ConfigError(f"hydra.sweeper.max_failure_rate={rate} is not allowed: it must be a number in [0, 1] "
                              "(0: stop at the first failure; 1: never stop).")
        for key in ("heartbeat_interval", "grace_period"):
            value = float(getattr(self, key))
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"hydra.sweeper.{key}={value} is not allowed: it must be a number of seconds > 0.")

    def _check_trial_configs(self, space: Any) -> None:
        """Compose and validate, with the job's own checks, the trial config of every distinct choice and of both
        ends of every interval: a value no trial can run is refused before the first trial, not once per trial."""
        from omegaconf import open_dict

        from kbk.config import settings_of

        for point in space.corners():
            shown = " ".join(f"{k}={format_value(v)}" for k, v in point.items())
            trial_cfg, error = self.compose_trial(space.overrides(point))
            if trial_cfg is None:
                raise ConfigError(f"hydra.sweeper.params: the trial with {shown}: {error}. Fix: use keys and values "
                                  "that a single run accepts.")
            with open_dict(trial_cfg):
                del trial_cfg["hydra"]
            try:
                settings_of(trial_cfg)
            except KbkError as e:
                raise ConfigError(f"hydra.sweeper.params: the trial with {shown} is invalid: {e}") from None

    def _hide_secrets(self, storage_spec: str, space: Any) -> list[str]:
        """Keep passwords (in the storage URL, in tracking.uri) out of the launcher's log and of the overrides
        Hydra records for each job; returns them, for redacting what this process writes.

        Jobs compose their config from the sweep's own overrides (`hydra.overrides.hydra`, never logged) plus
        their trial's (logged). The storage URL goes into the former redacted, and the jobs inherit the real one
        from this process's environment; a fixed override holding a password moves from the trial's overrides to
        the sweep's (the job's `.hydra` files are redacted by the job itself, see `kbk.run`)."""
        from omegaconf import read_write

        tracking_uri = OmegaConf.select(self.config, "tracking.uri", default=None)
        secrets = [p for p in (url_password(storage_spec), url_password(tracking_uri)) if p]
        if not secrets:
            return []
        if url_password(storage_spec):
            os.environ[ENV_STORAGE] = storage_spec
        hidden = [o for o in space.fixed if redact_text(o, secrets) != o]
        space.fixed = [o for o in space.fixed if o not in hidden]
        with read_write(self.config.hydra):
            overrides = self.config.hydra.overrides
            overrides.hydra = [redact_text(o, secrets) if "sweeper.storage" in o else o
                               for o in overrides.hydra] + hidden
            if self.config.hydra.sweeper.get("storage"):
                self.config.hydra.sweeper.storage = redact_text(str(self.config.hydra.sweeper.storage), secrets)
        return secrets

    def _default_settings(self, plan: SweepPlan) -> dict[str, str]:
        """The sweep's settings with this command's config-group choices (model, schedule, the preset, ...) and
        none of its other overrides: each key's default."""
        from hydra.types import RunMode

        cfg = self.config
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
        overrides = [f"{group}={choice}" for group, choice in choices.items()
                     if choice is not None and not group.startswith("hydra/")]
        default = self.hydra_context.config_loader.load_configuration(
            config_name=cfg.hydra.job.config_name, overrides=overrides, run_mode=RunMode.MULTIRUN)
        return sweep_settings(default, plan.space.signature(), plan.directions)

    def _open_study(self, storage: Any, plan: SweepPlan, worker: Any) -> tuple[Any, bool]:
        """Create the study (this process is its creator) or load it and wait until its creator has set it up
        (not at all when the creator is gone); then check that its settings are this command's."""
        import optuna


        name, directions = plan.study_name, plan.directions
        sampler, pruner_obj = make_sampler(plan.sampler_spec), make_pruner(plan.pruner)
        try:
            study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                        pruner=pruner_obj)
            study.set_user_attr(CREATOR_ATTR, worker.info().as_attr())
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(plan.metrics)
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            pass
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner_obj)
        deadline = time.monotonic() + SETUP_WAIT_S
        while SETTINGS_ATTR not in study.user_attrs and time.monotonic() < deadline:
            if creator_gone(study.user_attrs.get(CREATOR_ATTR), worker.host):
                break
            time.sleep(0.2)  # the creator is creating the parent run; it writes the settings last
        if SETTINGS_ATTR not in study.user_attrs:
            log.warning("study %r was created but never set up (its process died); setting it up here", name)
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise ConfigError(
                f"Study {name!r} optimizes {stored}, this sweep {directions}. Fix: use the study's directions to "
                "resume it, or pass hydra.sweeper.study_name=<a new name>."
            )
        check_settings(study, plan.settings, plan.storage_spec, defaults=lambda: self._default_settings(plan))
        return study, False

    # ------------------------------------------------------------------------------------------------ jobs

    def job_overrides(self, trial: Any, space: Any, env: dict[str, str], subdir: bool) -> list[str]:
        """A trial's overrides. Its environment (`env`, the trial number) reaches the job through
        `hydra.job.env_set`, added by the sweep's own overrides, which launchers do not print; the trial's
        overrides, which they print less `hydra.` keys, only set its number on the key those add."""
        self._carry_env({**env, ENV_TRIAL: ""})
        overrides = [*trial_retention(self.config), *space.overrides(trial.params)]
        overrides.append(f"hydra.job.env_set.{ENV_TRIAL}={format_value(str(trial.number))}")
        if subdir:
            overrides.append(f"hydra.sweep.subdir={trial.number}")
        return overrides

    def _carry_env(self, env: dict[str, str]) -> None:
        """`env` as the sweep's overrides `++hydra.job.env_set.<name>=<value>` (replacing earlier values): every
        job composes its config from them and its trial's overrides (`load_sweep_config`)."""
        from omegaconf import read_write

        prefixes = tuple(f"++hydra.job.env_set.{k}=" for k in env)
        with read_write(self.config.hydra):
            kept = [o for o in self.config.hydra.overrides.hydra if not str(o).startswith(prefixes)]
            self.config.hydra.overrides.hydra = kept + [f"{p}{format_value(str(v))}"
                                                        for p, v in zip(prefixes, env.values(), strict=True)]

    def compose_trial(self, overrides: Sequence[str]) -> tuple[DictConfig | None, str | None]:
        """A trial's config, or None and why it does not compose (a bad choice value, an unknown key)."""
        try:
            return self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                                      sweep_overrides=list(overrides)), None
        except Exception as e:  # noqa: BLE001 (Hydra raises several kinds; each is the trial's failure)
            text = str(e).strip()
            return None, f"config does not compose: {text.splitlines()[0].rstrip('.') if text else type(e).__name__}"


class _SweepRun:
    """One invocation of the sweeper: the loop over batches and what happens around it."""

    def __init__(self, sweeper: KbkOptunaSweeperImpl, study: Any, plan: SweepPlan, worker: Any, env: dict[str, str],
                 sweep_dir: Path) -> None:

        self.sweeper = sweeper
        self.study = study
        self.plan = plan
        self.space = plan.space
        self.metrics = plan.metrics
        self.env = env
        self.storage_spec = plan.storage_spec
        self.sweep_dir = sweep_dir
        custom = None
        if sweeper.custom_search_space:
            from hydra.utils import get_method

            fn = get_method(sweeper.custom_search_space)
            custom = lambda trial: fn(sweeper.config, trial)  # noqa: E731
        self.engine = SweepEngine(study, plan.space, n_trials=sweeper.n_trials, grid=plan.grid, dedup=sweeper.dedup,
                                  max_failure_rate=sweeper.max_failure_rate, worker=worker, custom_space=custom)
        self.parent = None
        self.returns: list[Any] = []

    def _open_parent(self, settings: dict[str, str]) -> None:
        cfg = self.sweeper.config
        store = tracking_store(cfg)
        if store is None:
            return
        tags = {"kbk.sweep": self.study.study_name, "kbk.sweep_dir": str(self.sweep_dir),
                "kbk.n_trials": str(self.engine.budget), "kbk.sampler": json.dumps(self.plan.sampler_spec, default=str),
                "kbk.pruner": json.dumps(self.plan.pruner, default=str), COMMAND_TAG: sweep_command(cfg.hydra)}
        self.parent = SweepParent.open(*store, self.study, params=settings, tags=tags)
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

        sweeper = self.sweeper
        numbers = [t.number for t in batch]
        consecutive = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        outcomes: dict[int, Outcome] = {}
        jobs = []
        for trial in batch:
            overrides = sweeper.job_overrides(trial, self.space, self.env, subdir=not consecutive)
            _, error = sweeper.compose_trial(overrides)
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
            others = engine.status().running > 0
            # The process that ends the parent summarizes it, once per state of the study: not a process that
            # leaves trials to others, nor one that ends together with another that has just summarized.
            if (failed or not others) and not self._summarized(st) and self._claim_summary(st):
                try:
                    self.parent.summarize(self.study, self.metrics, self.sweep_dir, plots=self.sweeper.plots)
                except Exception as e:  # noqa: BLE001 (the trials are recorded; the summary is a convenience)
                    log.warning("kbk sweep: could not log the summary to the parent run: %s", e)
            if failed:
                self.parent.end("FAILED", reason=self._failure_text(st))
            elif others:
                self.parent.detach()  # the last sweeper process on the study ends it
            else:
                self.parent.end("FINISHED")
        log.info("kbk sweep: results in %s", self.sweep_dir / "optimization_results.yaml")
        if failed:
            raise KbkError(self._failure_text(st))
        cfg = self.sweeper.config
        say_sweep_closing(self.study, self.metrics, outputs_dir(cfg.paths.outputs), tracking_store(cfg),
                          self.parent.run_id if self.parent is not None else None)

    def _claim_summary(self, st: Any) -> bool:
        """Whether this process writes the summary of this state of the study. Processes ending together (the
        last trial finishes while the others wait for it) each write their id under one key, wait until all have,
        and the id that stands (the storage keeps the last write) is the one that summarizes."""

        worker = self.engine.worker
        key = f"{SUMMARY_CLAIM_PREFIX}{st.finished}"
        self.study.set_user_attr(key, worker.id)
        now = time.time()
        others = [w for wid, w in registered_workers(self.study).items()
                  if wid != worker.id and worker.stale_reason_of(wid, w, now) is None]
        if others:
            time.sleep(SUMMARY_SETTLE_S)
        return self.study.user_attrs.get(key) == worker.id

    def _summarized(self, st: Any) -> bool:
        """The parent already holds the summary of this many finished trials (the count `summarize` logs)."""
        try:
            return self.parent.tracker.last_logged_step(SUMMARY_PROBE) == st.finished
        except KbkError:
            return False

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
