"""Training-curve plot for a run's artifacts. matplotlib is imported inside the function, with the Agg canvas
directly (no pyplot, so no global backend switch and no window), which is safe in workers and threads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

#: (metric, label, line style) on the loss panel; missing metrics are left out.
LOSS_CURVES = (
    ("train/loss_lm", "train LM loss", "-"),
    ("train/loss_total", "train total loss", "-"),
    ("val/loss", "validation loss", "-o"),
    ("val/loss_floor", "Bayes-optimal floor", "--"),
)
#: Perplexities, on a log axis.
PPL_CURVES = (
    ("val/ppl", "validation ppl", "-o"),
    ("val/ppl_koopman", "validation ppl (Koopman)", "-s"),
)


def _series(history: Sequence[tuple[int, Mapping[str, float]]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for step, metrics in history:
        value = metrics.get(key)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):  # NaN/inf would break the axis limits; they are in the run's metrics anyway
            steps.append(int(step))
            values.append(value)
    return steps, values


def plain_log_yaxis(axes) -> None:
    """A log y axis labelled with plain numbers (130, 200, 500, 1000), not powers of ten."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

    axes.set_yscale("log")
    low, high = axes.get_ylim()
    if high / low < 10:
        # A perplexity curve often spans less than a decade, where the default log axis shows one or two labels in
        # scientific notation: evenly spaced plain numbers instead.
        axes.yaxis.set_major_locator(MaxNLocator(nbins=6))
    else:
        axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    plain = ScalarFormatter()
    plain.set_scientific(False)
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(NullFormatter())


def plot_training_curves(
    history: Sequence[tuple[int, Mapping[str, float]]], path: str | Path, title: str | None = None
) -> Path:
    """Write a PNG (or any format matplotlib knows from the suffix) of the losses against step and, when
    logged, the validation perplexities on a log axis next to them. Missing keys and non-finite values are
    left out; an empty history still gives a figure that says so. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    losses = [(label, style, *_series(history, key)) for key, label, style in LOSS_CURVES]
    ppls = [(label, style, *_series(history, key)) for key, label, style in PPL_CURVES]
    losses = [curve for curve in losses if curve[2]]
    ppls = [curve for curve in ppls if curve[2]]

    panels = [("loss", losses, False)] + ([("perplexity", ppls, True)] if ppls else [])
    figure = Figure(figsize=(6.0 * len(panels), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (ylabel, curves, log_axis) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        for label, style, steps, values in curves:
            axes.plot(steps, values, style, label=label, markersize=3, linewidth=1.2)
        if log_axis:
            plain_log_yaxis(axes)
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        if curves:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=axes.transAxes)
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=110)
    return path
