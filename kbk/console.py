"""What a run prints: the resolved config once, the start-up phases as they finish, a line per evaluation, and the
final summary."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


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


def say(message: str) -> None:
    print(f"[kbk] {message}", flush=True)


def restart_clock() -> None:
    """A sweep runs its trials one after another in one process: each trial's start-up counts from its own start,
    not from the sweep's."""
    global STARTED
    STARTED = time.perf_counter()


def phase(message: str) -> None:
    """A start-up phase as it finishes, with the seconds since the command started."""
    say(f"start-up {time.perf_counter() - STARTED:5.1f} s: {message}")


def print_config(cfg: DictConfig) -> None:
    """The resolved config as a tree (rich), one branch per group."""
    from rich.console import Console
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for group, node in OmegaConf.to_container(cfg, resolve=True).items():
        branch = tree.add(f"[bold]{group}[/bold]" + ("" if isinstance(node, dict) else f": {node}"))
        if isinstance(node, dict):
            for key, value in node.items():
                branch.add(f"{key}: {value}")
    Console(file=sys.stdout, soft_wrap=True).print(tree)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress_printer() -> Callable[[dict[str, Any]], None]:
    """A callback for the trainer: one line per evaluation with loss, perplexity, tokens/s and ETA (from the wall
    clock since the first line, so evaluation time counts too)."""
    started: list[tuple[float, int]] = []

    def show(info: dict[str, Any]) -> None:
        step, total = info["step"], info["total_steps"]
        if not started:
            started.append((time.perf_counter() - info["train_seconds"], 0))  # the first line: training time only
        t0, step0 = started[0]
        per_step = (time.perf_counter() - t0) / max(step - step0, 1)
        parts = [f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)", f"epoch {info['epoch'] + 1}"]
        if "train/loss_lm" in info:
            parts.append(f"train {info['train/loss_lm']:.3f}")
        parts.append(f"val {info['val/loss']:.3f} ppl {info['val/ppl']:.1f}")
        if "val/loss_floor" in info:
            parts.append(f"floor {info['val/loss_floor']:.3f} ppl {info['val/ppl_floor']:.1f}")
        if "val/ppl_koopman" in info:
            parts.append(f"koopman ppl {info['val/ppl_koopman']:.1f}")
        if "perf/tokens_per_s" in info:
            parts.append(f"{info['perf/tokens_per_s']:,.0f} tok/s")
        parts.append(f"ETA {_duration(per_step * (total - step))}")
        say(" | ".join(parts))

    return show


def print_summary(summary: dict[str, Any]) -> None:
    keys = ("val/loss", "val/ppl", "val/loss_floor", "val/ppl_floor", "val/ppl_koopman", "steps", "train_seconds")
    say("done: " + ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                             for k in keys if k in summary))
