"""kbk's single entrypoint: compose a config -> build data, model, trainer, tracker -> train -> evaluate (standard
and Koopman mode) -> log -> return the objective.

    python -m kbk.run                                   # the defaults: a tiny model on synthetic data
    python -m kbk.run model=small koopman.dim=512 schedule=step dmd.buffer_size=500
    python -m kbk.run -m koopman.dim=128,256,512        # a Hydra multirun
    python -m kbk.run --cfg job                         # print the composed config and exit

Heavy libraries (torch, MLflow) are imported inside `run`, so `--cfg job` and `--help` answer quickly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from kbk.config import register_configs
from kbk.errors import KbkError
from kbk.paths import CONF_DIR, register_resolvers

register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    try:
        return run(cfg, Path(hydra_cfg.runtime.output_dir), sweep=hydra_cfg.mode == RunMode.MULTIRUN)
    except KbkError as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial FAILED with this message
        print(f"kbk: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: the tracker has ended the MLflow run KILLED; no traceback for a user's stop
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        print("kbk: interrupted (Ctrl-C); the MLflow run, if one was started, ended KILLED. Continue from the last "
              "checkpoint with the same command plus trainer.resume=true", file=sys.stderr)
        sys.exit(130)


def run(cfg: DictConfig, output_dir: Path, sweep: bool = False) -> Any:
    """One job: train the composed config `cfg`, write its outputs to `output_dir`, return its objective."""
    import contextlib
    import json
    import shutil

    from kbk import build, console, identity
    from kbk.config import settings_of
    from kbk.errors import TrainingError
    from kbk.files import write_atomic
    from kbk.tracking.resume import checkpoint_folder, continue_logging, read_run_record, resume_point, writes_to
    from kbk.tracking.run_context import log_run_context
    from kbk.tracking.run_params import redact_files, redacted
    from kbk.training.checkpoint import (
        CheckpointFolderLock,
        CheckpointRetention,
        remove_partial_checkpoints,
        seed_everything,
    )
    from kbk.training.trainer import HybridTrainer, TrainingDiverged, optimizer_steps

    def discard_run_folder() -> None:  # nothing half-written: the run never started
        shutil.rmtree(output_dir, ignore_errors=True)

    if sweep:
        console.restart_clock()
    with contextlib.ExitStack() as cleanup:  # releases the checkpoint folder's lock however the run ends
        try:  # compose and build: all that can be wrong with the input fails here, before a run exists anywhere
            secrets = known_secrets(cfg)
            redact_files(output_dir / ".hydra", secrets)  # Hydra wrote the overrides as typed
            settings = settings_of(cfg)
            seed_everything(settings.seed)
            run_hash = identity.run_hash(cfg)
            console.print_config(redacted(cfg, secrets), sweep_dir=output_dir.parent if sweep else None)
            data = build.corpus(settings)
            train_batches, val_batches = build.batches(settings, data)
            model = build.model(settings, data.vocab_size)
            options = build.trainer_options(settings)
            total_steps = optimizer_steps(len(train_batches), options)  # what the Koopman schedule spans
            if options.max_steps is not None and total_steps < options.max_steps:
                console.say(f"note: trainer.max_steps={options.max_steps} but trainer.epochs={options.epochs} "
                            f"hold {total_steps} optimiser steps: training stops at step {total_steps} (raise "
                            f"trainer.epochs to reach max_steps)")
            # The config's index folder: its lock and run.json, naming the run folder that holds its checkpoints.
            index = build.outputs_dir(settings.paths.outputs) / "checkpoints" / run_hash
            cleanup.enter_context(CheckpointFolderLock(index))  # one process per config at a time
            remove_partial_checkpoints(checkpoint_folder(index))  # left by a process killed while writing one
            left_running = read_run_record(index).get("run_id")
            previous = resume_point(settings.trainer.resume, index)
            checkpoint_dir = writes_to(previous, index, output_dir)  # the resumed checkpoint's folder, else our own
            retention = cleanup.enter_context(CheckpointRetention(checkpoint_dir, settings.trainer.keep_checkpoint))
            trainer = HybridTrainer(
                model, train_batches, val_batches, options, build.schedule(settings, total_steps),
                checkpoint_path=checkpoint_dir / "last.pt", loss_floor=data.loss_floor(settings.model.n_seq),
                callbacks=build.callbacks(settings, output_dir),
            )
            if previous is not None:
                trainer.resume(previous.checkpoint)
                console.say(f"resuming {previous.checkpoint} at step {trainer.step}")
            tracker = start_tracking(settings, cfg, secrets, output_dir, run_hash, build.parameter_counts(model),
                                     previous, index, checkpoint_dir, left_running, data,
                                     on_failed_start=None if sweep else discard_run_folder)
            console.say_started(output_dir, tracker)
        except KbkError:
            if not sweep:
                discard_run_folder()
            raise

        with tracker:  # train, then log; an exception ends the MLflow run FAILED (KILLED for a stop)
            tracker.install_signal_handlers()
            if previous is not None:  # a fresh run's start logs them itself, on its thread (start_tracking)
                log_run_context(tracker, settings, data, resumed=True)  # dataset inputs, system metrics
            # A resumed run's store catches up with the checkpoint, then skips the steps it holds: no gap, no duplicate.
            trainer.tracker = tracker if previous is None else continue_logging(tracker, trainer.history)
            try:
                summary = trainer.fit()
            except TrainingDiverged as exc:
                trainer._log_window()  # the losses since the last log point: the store shows the divergence
                raise TrainingError(str(exc)) from None  # a user's setting (trainer.lr, ...): one line, run FAILED
            tracker.defer_signals()  # training is done: a stop now waits for the artifacts and the FINISHED run
            summary["config_hash"] = run_hash
            write_atomic(output_dir / "summary.json", json.dumps(summary, indent=2, default=str))
            write_plots(trainer, output_dir / "plots")  # in the run folder with or without a tracker
            log_artifacts(tracker, redacted(cfg, secrets), settings, trainer, output_dir, summary)
        retention.finished()  # FINISHED with everything logged: trainer.keep_checkpoint says what stays
        console.say_finished(summary, output_dir, finished_checkpoints(trainer), tracker)
        value = objective(settings.optimized_metric, summary)
        if sweep:
            from kbk.sweep.trial import record_result_from_env

            record_result_from_env(value)  # a sweeper killed before its `tell` finds it: the point is not retrained
        if tracker.deferred_signal is not None:
            import signal

            print(f"kbk: stopped by {signal.Signals(tracker.deferred_signal).name} after training finished: the "
                  f"MLflow run ended FINISHED with its artifacts", file=sys.stderr, flush=True)
            sys.exit(128 + tracker.deferred_signal)
        return value


def known_secrets(cfg: DictConfig) -> list[str]:
    """Passwords this job knows (in tracking.uri, in the sweep's storage URL): never written by kbk. Better kept out
    of the config altogether: MLFLOW_TRACKING_USERNAME/PASSWORD for a server, ~/.pgpass for PostgreSQL."""
    from kbk.sweep import ENV_STORAGE
    from kbk.urls import url_password

    uri = OmegaConf.select(cfg, "tracking.uri", default=None)
    return [p for p in (url_password(uri), url_password(os.environ.get(ENV_STORAGE))) if p]


def start_tracking(settings, cfg: DictConfig, secrets: list[str], output_dir: Path, run_hash: str,
                   counts: dict[str, Any], previous, index: Path, checkpoint_dir: Path, left_running: str | None,
                   data, on_failed_start=None):
    """The tracker of this job: a new MLflow run, or the one `previous` (a `ResumePoint`) continues, its params
    logged and its id in the `run.json` of the config's `index` folder and of `checkpoint_dir` as soon as it exists;
    a `NullTracker` with tracking=none.
    A new run starts on a thread of its own (a `PendingTracker`, which also logs `data` as its inputs and starts the
    system metrics; `on_failed_start` runs if that start fails), after the checks a user's mistake can fail (the
    store, the parent run); a resumed run is reopened here and now.
    `left_running`: the last run of this config (from its run.json); if it is still RUNNING, its process died
    (the checkpoint folder's lock was free) and, unless it is the run being resumed, it is ended KILLED."""
    from kbk.sweep import ENV_PARENT_RUN, ENV_SWEEP, ENV_TRIAL
    from kbk.tracking.resume import write_run_record

    if settings.tracking.backend == "none":
        from kbk.tracking.base import NullTracker

        write_run_record(index, checkpoint_dir, None, output_dir)
        return NullTracker()
    from kbk.identity import IGNORED_KEYS, LABEL_KEYS, experiment_config
    from kbk.paths import outputs_dir
    from kbk.tracking.run_params import flatten, logged_params
    from kbk.tracking.run_tags import job_tags, run_name, typed_overrides
    from kbk.tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(settings.tracking.uri, outputs_dir(settings.paths.outputs))
    resumed_run = previous.run_id if previous is not None else None
    params = logged_params(cfg, secrets, dropped=("trainer.resume", *LABEL_KEYS))  # labels are logged as tags
    sweep, trial = os.environ.get(ENV_SWEEP), os.environ.get(ENV_TRIAL)
    tags = job_tags(run_hash=run_hash, output_dir=output_dir, sweep=sweep, trial=trial, labels=settings.tags,
                    notes=settings.notes)
    options = {"parent_run_id": os.environ.get(ENV_PARENT_RUN) or None,
               "flush_interval_s": None}  # flush after each checkpoint only, so the store matches what a resume replays
    if resumed_run:
        # Where things are written and stored (paths, tracking, log_checkpoint) may change between a run and its
        # resumption, as they are not part of the config hash: the continued run keeps the values it started with.
        same_experiment = flatten(experiment_config(cfg))
        params = {k: v for k, v in params.items() if k in same_experiment}
    else:
        name = settings.tracking.run_name or (f"trial-{trial}" if trial else
                                              run_name(typed_overrides(), run_hash, IGNORED_KEYS))

    def open_run():
        from kbk.tracking.mlflow_tracker import MlflowTracker, end_orphan_run
        from kbk.tracking.resume import refuse_foreign_run, reopen_run
        from kbk.tracking.run_context import log_run_context
        from kbk.tracking.store import ensure_experiment

        ensure_experiment(uri, settings.tracking.experiment)
        if left_running and left_running != resumed_run:
            end_orphan_run(uri, left_running)
        if resumed_run:
            refuse_foreign_run(uri, resumed_run, params)
            tracker = reopen_run(uri, settings.tracking.experiment, resumed_run, tags, **options)
        else:
            tracker = MlflowTracker.start(uri, settings.tracking.experiment, name, tags, **options)
        # At once: if this process is killed from here on, the next start of this config finds the run to end.
        write_run_record(index, checkpoint_dir, tracker.run_id, output_dir)
        try:
            tracker.log_params({**params, **{k: str(v) for k, v in counts.items()}})
            if previous is None:
                log_run_context(tracker, settings, data, resumed=False)  # dataset inputs, system metrics
        except KbkError as exc:
            tracker.end("FAILED", reason=str(exc))  # never leave the run RUNNING (nothing else would end it)
            raise
        return tracker

    if previous is not None:
        return open_run()
    from kbk.tracking.background_start import PendingTracker
    from kbk.tracking.store import check_store

    check_store(uri)  # what a user's mistake fails (a server down, an unusable SQLite path): before training
    if options["parent_run_id"] is not None:
        check_parent_run(uri, options["parent_run_id"])
    return PendingTracker(open_run, uri=uri, run_name=name, on_failed_start=on_failed_start)


def check_parent_run(uri: str, parent_run_id: str) -> None:
    """A `TrackingError` unless the parent run (of a sweep, from the environment) is in the store. It needs MLflow,
    which a sweep's own process has imported already (it made the parent run)."""
    from kbk.tracking.mlflow_tracker import check_parent
    from kbk.tracking.store import prepared_store

    with prepared_store(uri) as client:
        check_parent(client, uri, parent_run_id)


def finished_checkpoints(trainer) -> list[Path]:
    """The checkpoints a finished run keeps (last, and best with trainer.save_best), for its closing lines."""
    from kbk.training.callbacks import best_checkpoint_path

    last = trainer.checkpoint_path
    return [] if last is None else [p for p in (last, best_checkpoint_path(last)) if p.is_file()]


def write_plots(trainer, plots: Path) -> None:
    """Training curves and, with Koopman operators, their eigenvalues, as PNG files in `plots`."""
    from kbk.koopman.diagnostics import plot_eigenvalues
    from kbk.tracking.plots import plot_training_curves

    plots.mkdir(parents=True, exist_ok=True)
    plot_training_curves(trainer.history, plots / "training_curves.png")
    if trainer.has_koopman:
        operators = {f"layer {i}": d.operator.detach().cpu() for i, d in enumerate(trainer.model.koopman_dynamics())}
        plot_eigenvalues(operators, plots / "eigenvalues.png")


def log_artifacts(tracker, shown_cfg: DictConfig, settings, trainer, output_dir: Path, summary: dict[str, Any]) -> None:
    """The run's config (secrets redacted), Hydra's record, plots, summary and, if asked, its checkpoint."""
    tracker.log_text(OmegaConf.to_yaml(shown_cfg, resolve=True), "config.yaml")
    hydra_dir = output_dir / ".hydra"
    if hydra_dir.is_dir():
        tracker.log_artifact(hydra_dir, ".hydra")
    tracker.log_artifact(output_dir / "plots", "plots")
    if (output_dir / "profile").is_dir():  # debug=profile's trace and table
        tracker.log_artifact(output_dir / "profile", "profile")
    tracker.log_dict(summary, "summary.json")
    if trainer.epoch_table:
        tracker.log_dict({"epochs": trainer.epoch_table}, "epoch_table.json")
    if settings.trainer.log_checkpoint and trainer.checkpoint_path is not None:
        tracker.log_artifact(trainer.checkpoint_path, "checkpoints")


def objective(metric: Any, summary: dict[str, Any]) -> float | list[float]:
    """The value of `optimized_metric` in the run's summary (a list for several: a multi-objective sweep)."""
    names = [metric] if isinstance(metric, str) else list(metric)
    missing = [n for n in names if n not in summary]
    if missing:
        from kbk.errors import ConfigError

        raise ConfigError(f"optimized_metric names {missing}, which this run does not produce; it produces: "
                          f"{', '.join(sorted(k for k in summary if '/' in k)[:40])}")
    values = [float(summary[n]) for n in names]
    return values[0] if isinstance(metric, str) else values


if __name__ == "__main__":
    from kbk.defaults_check import check

    try:  # before Hydra reads a preset whose `override /koopman: off` YAML turned into a boolean
        check(sys.argv[1:], CONF_DIR)
    except KbkError as exc:
        print(f"kbk: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
