"""What a run prints: the resolved config once, the start-up phases as they finish, where the run goes, a line per
evaluation (and a live line between evaluations on a terminal), the final summary and where everything went.

Every line goes through the `kbk` logger, so Hydra's job logging (`conf/hydra/job_logging/kbk.yaml`) shows it on
the console as `[kbk] message` and writes it, with a timestamp, to the run folder's `run.log`.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("kbk")


class StdoutHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stdout` is when a line is written, so `contextlib.redirect_stdout` (a
    tool that keeps its stdout for results, a test's capture) moves kbk's lines too."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: D102
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def say(message: str) -> None:
    """One line (or a block) from kbk through the `kbk` logger."""
    if not log.hasHandlers():  # outside a Hydra job (kbk.evaluate, a notebook): print as a job would
        handler = StdoutHandler()
        handler.setFormatter(logging.Formatter("[kbk] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    log.info(message)


def process_start() -> float:
    """The `time.perf_counter()` reading at which this process started (from /proc on Linux; elsewhere, when this
    module was first imported), so start-up phases count the interpreter's and the imports' time too."""
    try:
        # Field 22 of /proc/self/stat (the 20th after the parenthesised command name): start time in clock ticks.
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.perf_counter() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter()


STARTED = process_start()


def restart_clock() -> None:
    """A sweep runs its trials one after another in one process: each trial's start-up counts from its own start,
    not from the sweep's."""
    global STARTED
    STARTED = time.perf_counter()


def phase(message: str) -> None:
    """A start-up phase as it finishes, with the seconds since the command started."""
    say(f"start-up {time.perf_counter() - STARTED:5.1f} s: {message}")


# ------------------------------------------------------------------------------------------------ the config

#: The sweep folder and flattened config of the sweep trial this process printed in full (its first); later trials
#: of that sweep print what differs.
_printed: tuple[Path, dict[str, str]] | None = None


def shown_config(cfg: DictConfig) -> dict[str, Any]:
    """`cfg` resolved as plain values (enums as their values), without the data options that are null and belong
    to other sources than the selected one (`data.path: null` says nothing with data=synthetic). Options of no
    source in particular (`data.cache_dir`) and the selected source's own nulls ("that source's default") stay."""
    from dataclasses import fields

    from kbk.config import as_plain
    from kbk.data.corpus import sources

    shown = as_plain(OmegaConf.to_container(cfg, resolve=True))
    data = shown.get("data")
    known = sources()
    if isinstance(data, dict) and data.get("source") in known:
        own = {f.name for f in fields(known[data["source"]][0])}
        others = {f.name for settings, _ in known.values() for f in fields(settings)} - own
        shown["data"] = {k: v for k, v in data.items() if v is not None or k not in others}
    return shown


def print_config(cfg: DictConfig, sweep_dir: Path | None = None) -> None:
    """The resolved config as YAML, once per command: in the sweep writing to `sweep_dir`, the first trial's in
    full and later trials' as what differs from it. Printing only: the config, its hash and what is stored are
    untouched."""
    global _printed
    from kbk.tracking.run_params import flatten

    shown = shown_config(cfg)
    flat = flatten(shown)
    if sweep_dir is not None and _printed is not None and _printed[0] == sweep_dir:
        first = _printed[1]
        changed = [f"{k}={v}" for k, v in flat.items() if first.get(k) != v]
        changed += [f"~{k}" for k in first if k not in flat]
        say("config: as printed above" + (f", except {' '.join(changed)}" if changed else ""))
        return
    _printed = (sweep_dir, flat) if sweep_dir is not None else None
    say("config:\n" + OmegaConf.to_yaml(shown).rstrip())


# ------------------------------------------------------------------------------------------------ where things go


def mlflow_ui_hint(uri: str) -> str:
    """What to run (or open) to see `uri`'s runs: a server's own URL, else `mlflow ui` on the store."""
    from kbk.urls import redact_url

    shown = redact_url(uri)
    if shown.startswith(("http://", "https://")):
        return f"open {shown}"
    return f"mlflow ui --backend-store-uri {shlex.quote(shown)}  # then open http://127.0.0.1:5000"


def store_options(uri: str, experiment: str) -> str:
    """`--uri <uri> --experiment <name>` for kbk.compare / kbk.report, without what they assume anyway."""
    from kbk.paths import PROJECT_ROOT
    from kbk.urls import redact_url

    default_uri = f"sqlite:///{(PROJECT_ROOT / 'outputs').resolve() / 'mlflow.db'}"
    options = [] if uri == default_uri else ["--uri", shlex.quote(redact_url(uri))]
    if experiment != "kbk":
        options += ["--experiment", shlex.quote(experiment)]
    return "".join(f" {o}" for o in options)


def compare_command(uri: str, experiment: str, sweep: str | None = None, parent: str | None = None) -> str:
    which = f"--sweep {shlex.quote(sweep)}" if sweep else f"--parent {parent}"
    return f"python -m kbk.compare {which}{store_options(uri, experiment)}"


def say_started(run_dir: Path, tracker: Any) -> None:
    """The one start line: the run's name, MLflow run id and store, and its folder (or that it is not tracked). A
    run still being created (`PendingTracker`) is not waited for: its id comes on a line of its own once it exists."""
    from kbk.urls import redact_url

    if getattr(tracker, "run_id", None):
        where = f"run '{tracker.run_name}', MLflow run {tracker.run_id} in {redact_url(tracker.uri)}"
    elif getattr(tracker, "starting", False):
        where = f"run '{tracker.run_name}', MLflow run being created in {redact_url(tracker.uri)}"
    else:
        where = "not tracked"
    phase(f"ready to train: {where}, folder {run_dir}")


def say_finished(summary: Mapping[str, Any], run_dir: Path, checkpoints: list[Path], tracker: Any) -> None:
    """The final summary, then where everything went and how to look at it."""
    keys = ("val/loss", "val/ppl", "val/loss_floor", "val/ppl_floor", "val/ppl_koopman", "steps", "train_seconds")
    say("done: " + ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                             for k in keys if k in summary))
    if checkpoints:
        say(f"checkpoint {' and '.join(map(str, checkpoints))}")
    say(f"run folder {run_dir}")
    if getattr(tracker, "run_id", None):
        say(f"MLflow run {tracker.run_id}: {mlflow_ui_hint(tracker.uri)}")


# ------------------------------------------------------------------------------------------------ progress


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _position(info: Mapping[str, Any]) -> str:
    step, total = info["step"], info["total_steps"]
    return f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)"


def progress_printer() -> Callable[[dict[str, Any]], None]:
    """A callback for `ProgressPrinter`: one line per evaluation with loss, perplexity, tokens/s and the ETA the
    printer estimated (the evaluations still to come, the final one included)."""

    def show(info: dict[str, Any]) -> None:
        parts = [_position(info), f"epoch {info['epoch'] + 1}"]
        if "train/loss_lm" in info:
            parts.append(f"train {info['train/loss_lm']:.3f}")
        parts.append(f"val {info['val/loss']:.3f} ppl {info['val/ppl']:.1f}")
        if "val/loss_floor" in info:
            parts.append(f"floor {info['val/loss_floor']:.3f} ppl {info['val/ppl_floor']:.1f}")
        if "val/ppl_koopman" in info:
            parts.append(f"koopman ppl {info['val/ppl_koopman']:.1f}")
        if "perf/tokens_per_s" in info:
            parts.append(f"{info['perf/tokens_per_s']:,.0f} tok/s")
        parts.append(f"ETA {_duration(info['eta_seconds'])}")
        say(" | ".join(parts))

    return show


class LiveLine:
    """One line on the terminal, rewritten in place (carriage return) between evaluations; `clear` before a
    logged line is printed over it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.shown = False

    def __call__(self, info: Mapping[str, Any]) -> None:
        text = f"[kbk] {_position(info)} | {info['tokens_per_s']:,.0f} tok/s | ETA {_duration(info['eta_seconds'])}"
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def live_line() -> LiveLine | None:
    """A `LiveLine` on stderr when it is a terminal; None in a log file or a pipe (they get the evaluation
    lines only)."""
    return LiveLine(sys.stderr) if sys.stderr.isatty() else None
