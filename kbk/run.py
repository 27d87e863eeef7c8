"""kbk's single entrypoint: compose a config -> build data, model, trainer, tracker -> train -> evaluate (standard
and Koopman mode) -> log -> return the objective.

    python -m kbk.run                                   # the defaults: a tiny model on synthetic data
    python -m kbk.run model=small koopman.dim=512 schedule=step dmd.buffer_size=500
    python -m kbk.run -m koopman.dim=128,256,512        # a Hydra multirun
    python -m kbk.run --cfg job                         # print the composed config and exit

Heavy libraries (torch, MLflow) are imported inside `run`, so `--cfg job` and `--help` answer quickly.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kbk.config import LABEL_KEYS, register_configs
from kbk.errors import KbkError
from kbk.paths import CONF_DIR, register_resolvers

register_configs()
register_resolvers()

# Set by kbk's sweeper for each trial it launches (so the job can report to its Optuna trial and nest its run).
ENV_PARENT_RUN = "KBK_PARENT_RUN_ID"
ENV_SWEEP = "KBK_SWEEP"
ENV_TRIAL = "KBK_TRIAL_NUMBER"


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


class CheckOutputFolders(Callback):
    """Hydra creates the job's folder before any kbk code runs, and a folder it cannot create is a Hydra traceback.
    So the outputs folder and the run's (or sweep's) folder are checked first, without creating anything: the
    nearest existing ancestor must be a writable folder. Registered in conf/config.yaml (`hydra.callbacks`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, folder_key: str) -> None:
        from kbk.paths import outputs_dir

        outputs = outputs_dir(config.paths.outputs)
        for key, path, problem in (("paths.outputs", outputs, outputs_problem(outputs)),
                                   (folder_key, Path(str(OmegaConf.select(config, folder_key))), None)):
            problem = problem or folder_problem(path)
            if problem:
                print(f"kbk: error: {key}={path}: {problem}. Fix: choose a folder you can write to (paths.outputs=<dir>"
                      f" or KBK_OUTPUTS=<dir>)", file=sys.stderr, flush=True)
                sys.exit(2)


def outputs_problem(outputs: Path) -> str | None:
    """Why the outputs folder cannot be used (None if it can): it is created, and a file written and removed."""
    import tempfile

    try:
        outputs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outputs):
            pass
    except OSError as e:
        return f"cannot create or write to it ({e.strerror or e})"
    return None


def folder_problem(path: Path) -> str | None:
    """Why folder `path` could not be created (None if it could), found without creating anything."""
    existing = path.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def settings_of(cfg: DictConfig):
    """The validated config as typed dataclasses; out-of-range or missing values are a `ConfigError`."""
    from omegaconf.errors import MissingMandatoryValue

    from kbk.config import check_known_keys, validate
    from kbk.errors import ConfigError

    check_known_keys(cfg)
    try:
        settings = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as exc:
        key = exc.full_key
        hint = " (a .txt file or a folder of them)" if key == "data.path" else ""
        raise ConfigError(f"{key} is required but not set: pass {key}=<value>{hint}") from None
    validate(settings)
    return settings


def known_secrets(cfg: DictConfig) -> list[str]:
    """Passwords this job knows (in tracking.uri, in the sweep's storage URL): never written by kbk. Better kept out
    of the config altogether: MLFLOW_TRACKING_USERNAME/PASSWORD for a server, ~/.pgpass for PostgreSQL."""
    from kbk.sweep import ENV_STORAGE
    from kbk.urls import url_password

    uri = OmegaConf.select(cfg, "tracking.uri", default=None)
    return [p for p in (url_password(uri), url_password(os.environ.get(ENV_STORAGE))) if p]


def redacted(cfg: DictConfig, secrets: list[str]) -> DictConfig:
    """`cfg` resolved, with every secret replaced by `***` (for printing and logging)."""
    if not secrets:
        return cfg
    from kbk.urls import redact_text

    return OmegaConf.create(redact_text(OmegaConf.to_yaml(cfg, resolve=True), secrets))


def redact_files(folder: Path, secrets: list[str]) -> None:
    from kbk.urls import redact_text

    for path in sorted(folder.glob("*.yaml")) if secrets else []:
        text = path.read_text()
        if redact_text(text, secrets) != text:
            path.write_text(redact_text(text, secrets))


def identity(cfg: DictConfig) -> dict[str, Any]:
    """What makes two runs the same experiment: the config minus where things are written and how to resume."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in ("paths", "tracking", *LABEL_KEYS):
        plain.pop(key, None)
    plain["trainer"].pop("resume", None)
    plain["trainer"].pop("log_checkpoint", None)
    return plain


def run(cfg: DictConfig, output_dir: Path, sweep: bool = False) -> Any:
    import contextlib

    with contextlib.ExitStack() as cleanup:  # releases the checkpoint folder's lock however the run ends
        return run_locked(cfg, output_dir, sweep, cleanup)


def run_locked(cfg: DictConfig, output_dir: Path, sweep: bool, cleanup) -> Any:
    import contextlib

    from kbk import build, console
    from kbk.errors import TrainingError
    from kbk.tracking.run_info import config_hash
    from kbk.training.checkpoint import CheckpointFolderLock, remove_partial_checkpoints, seed_everything
    from kbk.training.trainer import HybridTrainer, TrainingDiverged, optimizer_steps

    # Everything that can be wrong with the input fails here, before a run exists anywhere.
    try:
        secrets = known_secrets(cfg)
        redact_files(output_dir / ".hydra", secrets)  # Hydra wrote the overrides as typed
        settings = settings_of(cfg)
        seed_everything(settings.seed)
        run_hash = config_hash(identity(cfg))
        console.print_config(redacted(cfg, secrets))
        data = build.corpus(settings)
        train_batches, val_batches = build.batches(settings, data)
        model = build.model(settings, data.vocab_size)
        options = build.trainer_options(settings)
        total_steps = optimizer_steps(len(train_batches), options)  # what the Koopman schedule spans
        run_dir = build.outputs_dir(settings.paths.outputs) / "checkpoints" / run_hash
        cleanup.enter_context(CheckpointFolderLock(run_dir))  # one process per config at a time
        remove_partial_checkpoints(run_dir)  # left by a process killed while writing one
        left_running = read_json(run_dir / "run.json").get("run_id")
        trainer = HybridTrainer(
            model, train_batches, val_batches, options, build.schedule(settings, total_steps),
            checkpoint_path=run_dir / "last.pt", loss_floor=data.loss_floor(settings.model.n_seq),
            on_eval=console.progress_printer(),
        )
        previous = resume_point(settings.trainer.resume, run_dir)
        if previous is not None:
            trainer.resume(previous["checkpoint"])
            console.say(f"resuming {previous['checkpoint']} at step {trainer.step}")
        tracker = start_tracking(settings, cfg, output_dir, run_hash, build.parameter_counts(model), previous,
                                 run_dir, left_running)
        console.phase(f"ready to train, MLflow run {tracker.run_id}" if tracker is not None else "ready to train")
    except KbkError:
        if not sweep:
            shutil.rmtree(output_dir, ignore_errors=True)  # nothing half-written: the run never started
        raise

    if tracker is None:
        from kbk.sweep.trial import report_hook_from_env
        from kbk.tracking.base import NullTracker

        trainer.tracker = NullTracker(report_hook=report_hook_from_env())
        write_run_info(run_dir, None, output_dir)  # (start_tracking writes it for an MLflow run)
    else:
        trainer.tracker = tracker
    with tracker if tracker is not None else contextlib.nullcontext():
        if tracker is not None:
            tracker.install_signal_handlers()
            if previous is not None:  # (inside the `with`: a store failure here ends the run FAILED)
                from kbk.tracking.resume import catch_up

                catch_up(tracker, trainer.history)
                trainer.tracker = SkipStored(tracker)
        try:
            summary = trainer.fit()
        except TrainingDiverged as exc:
            trainer._log_window()  # the losses since the last log point: the store shows the divergence
            raise TrainingError(str(exc)) from None  # a user's setting (trainer.lr, ...): one line, run FAILED
        if tracker is not None:
            tracker.defer_signals()  # training is done: a stop now waits for the artifacts and the FINISHED run
        summary["config_hash"] = run_hash
        write_json(output_dir / "summary.json", summary)
        write_plots(trainer, output_dir / "plots")  # in the run folder with or without a tracker
        if tracker is not None:
            log_artifacts(tracker, cfg, settings, trainer, output_dir, summary)
    console.print_summary(summary)
    value = objective(settings.optimized_metric, summary)
    if sweep:
        from kbk.sweep.trial import record_result_from_env

        record_result_from_env(value)  # a sweeper killed before its `tell` finds it: the point is not retrained
    stopped = getattr(tracker, "deferred_signal", None)
    if stopped is not None:
        import signal

        print(f"kbk: stopped by {signal.Signals(stopped).name} after training finished: the MLflow run ended FINISHED "
              f"with its artifacts", file=sys.stderr, flush=True)
        sys.exit(128 + stopped)
    return value


class SkipStored:
    """A resumed run's tracker, minus the metric values its MLflow run already holds.

    A run stopped by SIGTERM or Ctrl-C ends KILLED after flushing every metric it logged, including those after its
    last checkpoint; resumed from that checkpoint, it computes those steps again (identically) and must not log them
    twice. So a value is dropped when its key already has a value at that step or a later one in the store.
    """

    def __init__(self, tracker) -> None:
        self.tracker = tracker
        keys = tracker.client.get_run(tracker.run_id).data.metrics
        self.last_stored = {key: tracker.last_logged_step(key) for key in keys}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if self.last_stored.get(k) is None or step > self.last_stored[k]}
        if fresh:
            self.tracker.log_metrics(fresh, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


def resume_point(resume: Any, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint to continue from (with its run.json: the MLflow run to continue), or None to start fresh."""
    from kbk.errors import CheckpointError

    if resume is False or resume is None:
        return None
    if resume is True:
        checkpoint = run_dir / "last.pt"
        if not checkpoint.is_file():  # a sweep re-running a killed trial lands here too
            from kbk import console

            console.say(f"trainer.resume=true: no checkpoint of this config in {run_dir}; training from the start")
            return None
    else:
        checkpoint = Path(str(resume)).expanduser()
        if not checkpoint.is_file():
            raise CheckpointError(f"trainer.resume={resume}: no such checkpoint file; pass the path of a last.pt "
                                  f"that kbk wrote, or trainer.resume=true to find this config's own")
    return {"checkpoint": checkpoint, **read_json(checkpoint.parent / "run.json")}


def start_tracking(settings, cfg: DictConfig, output_dir: Path, run_hash: str, counts: dict[str, Any],
                   previous: dict[str, Any] | None, run_dir: Path, left_running: str | None = None):
    """The MLflow run of this job (new, or the one being resumed), params logged; None with tracking=none.
    The run's id goes to `run_dir/run.json` as soon as the run exists.
    `left_running`: the last run of this config (from its run.json); if it is still RUNNING, its process died
    (the checkpoint folder's lock was free) and, unless it is the run being resumed, it is ended KILLED."""
    if settings.tracking.backend == "none":
        return None
    from kbk.paths import outputs_dir
    from kbk.sweep.trial import report_hook_from_env
    from kbk.tracking.mlflow_tracker import MlflowTracker
    from kbk.tracking.run_info import flatten, run_tags
    from kbk.tracking.store import ensure_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(settings.tracking.uri, outputs_dir(settings.paths.outputs))
    ensure_experiment(uri, settings.tracking.experiment)
    resumed_run = (previous or {}).get("run_id")
    if left_running and left_running != resumed_run:
        end_orphan_run(uri, left_running)
    params = flatten(OmegaConf.to_container(redacted(cfg, known_secrets(cfg)), resolve=True, enum_to_str=True))
    params.pop("trainer.resume", None)  # the one value that differs between a run and its resumption
    for key in [k for k in params if k.split(".")[0] in LABEL_KEYS]:
        params.pop(key)  # logged as tags, and free to change on a resumption
    if resumed_run:
        # Where things are written and stored (paths, tracking, log_checkpoint) may change between a run and its
        # resumption, as they are not part of the config hash: the continued run keeps the values it started with.
        same_experiment = flatten(identity(cfg))
        params = {k: v for k, v in params.items() if k in same_experiment}
        refuse_foreign_run(uri, resumed_run, params)
    params.update({k: str(v) for k, v in counts.items()})
    tags = {**run_tags(identity(cfg), repo_dir=Path(__file__).resolve().parent, output_dir=output_dir),
            "kbk.config_hash": run_hash, "kbk.role": "trial" if os.environ.get(ENV_SWEEP) else "run"}
    trial = os.environ.get(ENV_TRIAL)
    if os.environ.get(ENV_SWEEP):
        tags["kbk.sweep"] = os.environ[ENV_SWEEP]
    if trial:
        tags["optuna.trial_number"] = trial
    tags.update(user_tags(settings.tags, settings.notes))
    name = settings.tracking.run_name or (f"trial-{trial}" if trial else run_name(typed_overrides(), run_hash))
    tracker = MlflowTracker.start(
        uri, settings.tracking.experiment, run_name=name, tags=tags,
        parent_run_id=os.environ.get(ENV_PARENT_RUN) or None,
        run_id=(previous or {}).get("run_id"),
        flush_interval_s=None,  # flush after each checkpoint only, so the store matches what a resume replays
        report_hook=report_hook_from_env(),  # a trial of kbk's sweeper reports val/ppl to Optuna (pruning)
    )
    # At once: if this process is killed from here on, the next start of this config finds the run to end.
    write_run_info(run_dir, tracker.run_id, output_dir)
    try:
        tracker.log_params(params)
    except KbkError as exc:
        tracker.end("FAILED", reason=str(exc))  # never leave the run RUNNING (nothing else would end it)
        raise
    return tracker


def user_tags(labels: list[str], notes: str | None) -> dict[str, str]:
    """The MLflow tags of `tags=[...]` and `notes=...`: the words together as `kbk.tags=a,b` (one tag to filter on:
    `tags.kbk.tags LIKE '%baseline%'`), each `key=value` as its own tag, notes as the run's description."""
    words = [t for t in labels if "=" not in t]
    tags = dict(t.split("=", 1) for t in labels if "=" in t)
    if words:
        tags["kbk.tags"] = ",".join(words)
    if notes:
        tags["mlflow.note.content"] = notes
    return tags


#: Overrides that do not say what a run computes (where it is written, how it is tracked or resumed, its labels).
UNNAMED_KEYS = ("paths", "tracking", "hydra", "trainer.resume", "trainer.log_checkpoint", *LABEL_KEYS)
RUN_NAME_CHARS = 60


def typed_overrides() -> list[str]:
    """The overrides the user typed (Hydra's `hydra.overrides.task`); [] outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(overrides: list[str], run_hash: str) -> str:
    """`model=small,koopman.dim=512 #<hash8>`: what the user changed, cut at RUN_NAME_CHARS, then the config hash
    (two runs with the same name differ in a setting that is not in it; `#` so it never reads as part of the last
    value); `default #<hash8>` with no overrides.
    Keys that may hold a secret (tracking.uri) are among the ones left out."""
    def named(override: str) -> bool:
        key = override.lstrip("+~").split("=", 1)[0]
        return not any(key == k or key.startswith(f"{k}.") for k in UNNAMED_KEYS)

    shown = [o.lstrip("+") for o in overrides if named(o)]
    return f"{','.join(shown)[:RUN_NAME_CHARS] or 'default'} #{run_hash[:8]}"


def end_orphan_run(uri: str, run_id: str) -> None:
    """End run `run_id` KILLED if it is still RUNNING: its process was killed (before its first checkpoint, or the
    new run does not resume it), and nothing else would ever end it."""
    from mlflow import MlflowClient

    from kbk import console
    from kbk.tracking.mlflow_tracker import END_REASON_TAG

    client = MlflowClient(uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
    except Exception:  # noqa: BLE001 (not in this store: tracking.uri changed since)
        return
    client.set_tag(run_id, END_REASON_TAG, "its process was killed; a later run of the same config did not resume it")
    client.set_terminated(run_id, "KILLED")
    console.say(f"MLflow run {run_id} of this config was left RUNNING by a killed process: ended KILLED")


def refuse_foreign_run(uri: str, run_id: str, params: dict[str, str]) -> None:
    """Before reopening MLflow run `run_id` to continue it: a `TrackingError` if it was made with other settings
    (a checkpoint of another config passed as trainer.resume), so that nothing of that run is changed."""
    try:
        from mlflow import MlflowClient

        stored = MlflowClient(uri).get_run(run_id).data.params
    except Exception:  # noqa: BLE001 (a run that is not there: MlflowTracker.start says so clearly)
        return
    changed = [f"{k} (run: {stored[k]!r}, now: {v!r})" for k, v in params.items()
               if k in stored and stored[k] != v and len(v) <= 6000]
    if changed:
        from kbk.errors import TrackingError

        raise TrackingError(
            f"trainer.resume: the checkpoint belongs to MLflow run {run_id}, made with other settings: "
            f"{'; '.join(changed)}. Fix: resume with the settings that run was made with (its .hydra/config.yaml), "
            f"or train these settings from scratch with trainer.resume=false"
        )


def write_plots(trainer, plots: Path) -> None:
    """Training curves and, with Koopman operators, their eigenvalues, as PNG files in `plots`."""
    from kbk.koopman.diagnostics import plot_eigenvalues
    from kbk.tracking.plots import plot_training_curves

    plots.mkdir(parents=True, exist_ok=True)
    plot_training_curves(trainer.history, plots / "training_curves.png")
    if trainer.has_koopman:
        operators = {f"layer {i}": d.operator.detach().cpu() for i, d in enumerate(trainer.model.koopman_dynamics())}
        plot_eigenvalues(operators, plots / "eigenvalues.png")


def log_artifacts(tracker, cfg: DictConfig, settings, trainer, output_dir: Path, summary: dict[str, Any]) -> None:
    tracker.log_text(OmegaConf.to_yaml(redacted(cfg, known_secrets(cfg)), resolve=True), "config.yaml")
    hydra_dir = output_dir / ".hydra"
    if hydra_dir.is_dir():
        tracker.log_artifact(hydra_dir, ".hydra")
    tracker.log_artifact(output_dir / "plots", "plots")
    tracker.log_dict(summary, "summary.json")
    if trainer.epoch_table:
        tracker.log_dict({"epochs": trainer.epoch_table}, "epoch_table.json")
    if settings.trainer.log_checkpoint and trainer.checkpoint_path is not None:
        tracker.log_artifact(trainer.checkpoint_path, "checkpoints")


def objective(metric: Any, summary: dict[str, Any]) -> float | list[float]:
    names = [metric] if isinstance(metric, str) else list(metric)
    missing = [n for n in names if n not in summary]
    if missing:
        from kbk.errors import ConfigError

        raise ConfigError(f"optimized_metric names {missing}, which this run does not produce; it produces: "
                          f"{', '.join(sorted(k for k in summary if '/' in k)[:40])}")
    values = [float(summary[n]) for n in names]
    return values[0] if isinstance(metric, str) else values


def write_run_info(run_dir: Path, run_id: str | None, output_dir: Path) -> None:
    """`run.json` next to the checkpoints: the MLflow run that a resume continues (or that a later start ends)."""
    write_json(run_dir / "run.json", {"run_id": run_id, "output_dir": str(output_dir)})


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file kbk wrote, {} if it is missing or unreadable (its writer was killed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
