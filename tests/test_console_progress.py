"""Progress between evaluations (issue 12): the ETA counts the steps, the evaluations still to come and the final
one; a terminal gets a live line rewritten in place, a pipe or log file only the evaluation lines."""

from __future__ import annotations

import io
import os
import pty
import subprocess

from kbk import console
from kbk.interactive import trainer_for
from kbk.paths import PROJECT_ROOT
from kbk.training.callbacks import ProgressPrinter
from tests.conftest import TINY, clean_env, kbk_command, one_torch_thread

STEP_S, EVALUATION_S = 1.0, 3.0


class Clock:
    """Time as the test says: each optimiser step takes STEP_S, each evaluation EVALUATION_S. A trainer callback
    placed before the printer, so the printer reads the clock after the step or evaluation has 'taken' its time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_step_end(self, trainer, metrics) -> None:
        self.now += STEP_S

    def on_evaluation(self, trainer, metrics) -> None:
        self.now += EVALUATION_S


def test_the_eta_counts_the_evaluations_left_and_the_final_one_and_the_live_line_is_cleared_for_each():
    with one_torch_thread():
        trainer = trainer_for(TINY)  # 12 steps, an evaluation every 4
        clock, shown, terminal = Clock(), [], io.StringIO()
        trainer.callbacks = [clock, ProgressPrinter(shown.append, live=console.LiveLine(terminal),
                                                    live_interval_s=0.0, clock=clock)]
        trainer.fit()
    assert [info["step"] for info in shown] == [4, 8, 12]
    # At step 4: 8 steps, the evaluations at 8 and 12, and the final one (its layer-wise pass) are left.
    assert shown[0]["eta_seconds"] == 8 * STEP_S + 3 * EVALUATION_S
    assert shown[1]["eta_seconds"] == 4 * STEP_S + 2 * EVALUATION_S
    assert shown[2]["eta_seconds"] == EVALUATION_S  # the last step is done; the final evaluation is not
    text = terminal.getvalue()
    assert text.startswith("\r[kbk] step 1/12 (8%) | ") and " tok/s | ETA 0m11s\x1b[K" in text.split("\r")[1]
    assert "\r[kbk] step 5/12 (42%) | " in text and " tok/s | ETA 0m16s\x1b[K" in text  # 7 steps + 3 evaluations
    # Cleared before each evaluation's line (the last at step 12): the terminal is left clean.
    assert text.count("\r\x1b[K") == 3 and text.endswith("\r\x1b[K")


def test_a_terminal_gets_a_live_line_and_a_pipe_only_the_evaluation_lines(tmp_path):
    parent, child = pty.openpty()  # stderr on a terminal, stdout a pipe
    proc = subprocess.Popen(kbk_command([*TINY, f"paths.outputs={tmp_path / 'outputs'}", "tracking=none"]),
                            stdout=subprocess.PIPE, stderr=child, env=clean_env(), cwd=PROJECT_ROOT)
    os.close(child)
    terminal = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # the run exited: the terminal is closed
            break
        if not chunk:
            break
        terminal += chunk
    os.close(parent)
    stdout = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, stdout[-3000:]
    live = terminal.decode()
    assert "\r[kbk] step " in live and " tok/s | ETA " in live, live
    assert "\r" not in stdout and stdout.count("[kbk] step ") == 3  # the pipe: one line per evaluation
    assert console.live_line() is None  # (pytest's captured stderr is no terminal either)
