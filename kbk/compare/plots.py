"""Plots of a comparison: each metric against the swept param (mean and 95% interval per group, every run as a
faint point), and the groups' learning curves. PNG through matplotlib's object API (no GUI backend, offline)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kbk.compare.stats import metric_values, summary, t_interval
from kbk.tracking.plots import plain_log_yaxis

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f")
#: With more series than colours, the later ones are told apart by the line's dash (a 12-group grid otherwise
#: draws groups 1 and 10 in the same colour and style).
LINESTYLES = ("-", "--", ":", "-.")


def series_style(i: int) -> dict[str, str]:
    """Colour and line style of the `i`-th series: unique for up to len(PALETTE) × len(LINESTYLES) series."""
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[i // len(PALETTE) % len(LINESTYLES)]}


def _as_numbers(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def is_geometric(values: Sequence[float]) -> bool:
    """Positive values with roughly constant ratios over at least a factor of 4 (128, 256, 512), or spread over 30×."""
    v = sorted(set(values))
    if len(v) < 3 or v[0] <= 0 or v[-1] / v[0] < 4:
        return False
    steps = np.diff(np.log(v))
    return bool(steps.std() <= 0.35 * steps.mean()) or v[-1] / v[0] >= 30


def x_param(runs: pd.DataFrame, group_by: Sequence[str]) -> str | None:
    """The first numeric group key with several values: the x-axis (others make one series each)."""
    for key in group_by:
        values = runs[f"params.{key}"].dropna().unique()
        if len(values) > 1 and _as_numbers(values) is not None:
            return key
    return None


#: Panels per row: a report's figure stays readable at page width however many metrics it shows.
PANELS_PER_ROW = 3


def metric_panels(n: int):
    """A figure with `n` panels of the same size, `PANELS_PER_ROW` to a row, and those axes in reading order (the
    unused cells of the last row removed)."""
    from matplotlib.figure import Figure

    cols = min(n, PANELS_PER_ROW)
    rows = -(-n // cols)
    fig = Figure(figsize=(max(6.0, 4.6 * cols), 0.4 + 3.8 * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[n:]:
        ax.remove()
    return fig, list(grid[:n])


def plot_metrics(runs: pd.DataFrame, group_by: Sequence[str], metrics: Sequence[str], path: Path,
                 title: str, confidence: float = 0.95) -> Path:
    """One panel per metric: mean with its interval against the swept numeric param (log axis for geometric
    values), one series per combination of the other params; without a numeric param, one point per group."""

    x_key = x_param(runs, group_by)
    series_keys = [k for k in group_by if k != x_key]
    stats = summary(runs, group_by, metrics, confidence)
    fig, axes = metric_panels(len(metrics))
    ns = sorted({int(n) for n in stats["n"] if n})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}" if ns else "n = 0"
    fig.suptitle(f"{title}  (mean and {confidence:.0%} CI over seeds, {n_text} per point)", fontsize="medium")
    handles = {}
    for ax, metric in zip(axes, metrics, strict=True):
        frame = stats[stats["metric"] == metric]
        if x_key is None:
            _categorical_panel(ax, runs, frame, group_by, metric)
        else:
            handles.update(_numeric_panel(ax, runs, frame, x_key, series_keys, metric))
        ax.set_ylabel(metric)
        log_axis_if_spanning_decades(ax)  # e.g. the seed's Koopman-mode PPL (12,557) beside kbk's (85)
        ax.grid(True, alpha=0.3)
    if series_keys and len(handles) > 1:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize="small",
                   ncols=min(4, len(handles)), title=", ".join(series_keys), title_fontsize="small", frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def drawn_low(low, values) -> np.ndarray:
    """An interval's lower end as drawn: a quantity that is never negative (a perplexity, a step time) is not
    drawn below zero, where a t-interval of few noisy runs can reach; the tables keep the interval as computed."""
    low = np.asarray(low, dtype=float)
    observed = np.asarray(values, dtype=float)
    observed = observed[~np.isnan(observed)]
    return np.maximum(low, 0.0) if observed.size and (observed >= 0).all() else low


def _numeric_panel(ax, runs, frame, x_key, series_keys, metric) -> dict[str, object]:
    xs_all = [float(v) for v in runs[f"params.{x_key}"].dropna().unique()]
    log = is_geometric(xs_all)
    rng = np.random.default_rng(0)  # jitter of the per-run points: fixed, so a plot regenerates identically
    handles = {}
    series = frame.groupby(series_keys, sort=True) if series_keys else [((), frame)]
    for i, (key, rows) in enumerate(series):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(map(str, key)) or metric
        style = series_style(i)
        color = style["color"]
        rows = rows.assign(x=rows[x_key].astype(float)).sort_values("x")
        rows = rows.assign(ci_low=drawn_low(rows["ci_low"], metric_values(runs, metric)))
        low = (rows["mean"] - rows["ci_low"]).fillna(0).clip(lower=0)
        high = (rows["ci_high"] - rows["mean"]).fillna(0).clip(lower=0)
        handles[label] = ax.errorbar(rows["x"], rows["mean"], yerr=[low, high], marker="o", capsize=4,
                                     lw=1.5, label=label, **style)
        mask = pd.Series(True, index=runs.index)
        for k, v in zip(series_keys, key, strict=True):
            mask &= runs[f"params.{k}"].astype(str) == str(v)
        points = runs[mask]
        col = f"metrics.{metric}"
        if col in points:
            px = points[f"params.{x_key}"].astype(float).to_numpy()
            px = px * np.exp(rng.uniform(-0.04, 0.04, len(px))) if log else px + rng.uniform(-0.01, 0.01, len(px)) \
                * (max(xs_all) - min(xs_all) or 1)
            ax.scatter(px, points[col], s=18, color=color, alpha=0.45, linewidths=0, zorder=1)
    if log:
        ax.set_xscale("log", base=2 if all(math.log2(x).is_integer() for x in xs_all) else 10)
    ticks = sorted(set(xs_all))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(x_key)
    return handles


def _categorical_panel(ax, runs, frame, group_by, metric) -> None:
    labels = [", ".join(str(r[k]) for k in group_by) or "all runs" for r in frame.to_dict("records")]
    pos = np.arange(len(labels))
    low = (frame["mean"] - drawn_low(frame["ci_low"], metric_values(runs, metric))).fillna(0).clip(lower=0)
    high = (frame["ci_high"] - frame["mean"]).fillna(0).clip(lower=0)
    ax.errorbar(pos, frame["mean"], yerr=[low, high], fmt="o", capsize=5, color=PALETTE[0])
    rng = np.random.default_rng(0)
    for i, rec in enumerate(frame.to_dict("records")):
        mask = pd.Series(True, index=runs.index)
        for k in group_by:
            mask &= runs[f"params.{k}"].astype(str) == str(rec[k])
        values = metric_values(runs[mask], metric)
        ax.scatter(i + rng.uniform(-0.08, 0.08, len(values)), values, s=18, color=PALETTE[0], alpha=0.45,
                   linewidths=0)
    ax.set_xticks(pos, labels, rotation=20 if max(map(len, labels), default=0) > 8 else 0, ha="right"
                  if max(map(len, labels), default=0) > 8 else "center")
    ax.set_xlabel(", ".join(group_by) or "")
    ax.set_xlim(-0.5, len(labels) - 0.5)


def spans_decades(ax, ratio: float = 20.0) -> bool:
    """True when every y value drawn on `ax` is positive and the largest is at least `ratio` times the smallest."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [[]])
    values = values[np.isfinite(values)]
    return bool(values.size) and values.min() > 0 and values.max() / values.min() >= ratio


def log_axis_if_spanning_decades(ax) -> None:
    """A log y axis (plain tick labels) where the values drawn span 20x or more: on a linear axis every smaller
    value, and every difference between groups there, is squeezed onto the panel's floor."""
    if spans_decades(ax):
        plain_log_yaxis(ax)


def plot_curves(histories: Mapping[tuple, Mapping[str, list[pd.DataFrame]]], group_by: Sequence[str],
                metrics: Sequence[str], path: Path, title: str, confidence: float = 0.95) -> Path:
    """Learning curves: per group and metric, the mean over runs at each logged step with its interval band.

    `histories[group key][metric]` is one frame (`step`, `value`) per run; steps that not every run of the group
    logged are left out (runs of a group share their evaluation steps)."""

    fig, axes = metric_panels(len(metrics))
    fig.suptitle(f"{title}  (mean and {confidence:.0%} CI over seeds)", fontsize="medium")
    handles = {}
    for ax, metric in zip(axes, metrics, strict=True):
        for i, (key, per_metric) in enumerate(histories.items()):
            frames = per_metric.get(metric) or []
            if not frames:
                continue
            joined = pd.concat([f.set_index("step")["value"].rename(j) for j, f in enumerate(frames)], axis=1)
            joined = joined.dropna()
            if joined.empty:
                continue
            bands = [t_interval(list(row), confidence) for row in joined.to_numpy()]
            mean = np.array([b[0] for b in bands])
            style = series_style(i)
            color = style["color"]
            label = ", ".join(f"{k}={v}" for k, v in zip(group_by, key, strict=True)) or "all runs"
            marker = "o" if len(joined) <= 30 else None
            handles[label] = ax.plot(joined.index, mean, lw=1.5, marker=marker, ms=4, label=label, **style)[0]
            low, high = drawn_low([b[2] for b in bands], joined.to_numpy().ravel()), np.array([b[3] for b in bands])
            if not np.isnan(low).all():
                ax.fill_between(joined.index, low, high, color=color, alpha=0.15, linewidth=0)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(metric)
        log_axis_if_spanning_decades(ax)  # e.g. Koopman-mode PPL 10,000 before the operators learn, 115 after
        ax.grid(True, alpha=0.3)
    if handles:
        # As many columns as the longest label lets fit across the figure (~12 small characters per inch):
        # long group labels (several swept keys) otherwise run off both edges.
        fits = int(fig.get_figwidth() * 12 // (max(map(len, handles)) + 6))
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize="small",
                   ncols=max(1, min(4, len(handles), fits)), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def _wrapped(lines: Sequence[str], inches: float) -> str:
    """Title lines wrapped to the figure's width (~13 medium-size characters per inch), so none is cut off."""
    import textwrap

    return "\n".join(part for line in lines for part in textwrap.wrap(line, max(20, int(inches * 13)))
                      or [""])


def plot_differences(differences: pd.DataFrame, group_by: Sequence[str], metrics: Sequence[str], path: Path,
                     title: str, baseline: str, confidence: float = 0.95) -> Path:
    """The differences to the baseline as the findings read them: per metric, each group's Δ (group − baseline)
    with its interval (paired by seed where the seeds match), against a line at zero. A filled marker is a finding
    (the interval excludes zero); a hollow one is no measurable difference. This is the plot to look at: the
    per-group intervals of `plot_metrics` are unpaired, so they can overlap where the paired Δ is clear."""
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if (differences["metric"] == m).any()]
    keys = list(dict.fromkeys(tuple(rec[k] for k in group_by) for rec in differences.to_dict("records")))
    labels = [", ".join(map(str, key)) for key in keys]  # the keys are named once, on the axis
    label_inches = 0.5 + 0.085 * max(map(len, labels), default=4)  # ~12 small characters per inch
    fig = Figure(figsize=(label_inches + 3.4 * max(1, len(metrics)), 2.3 + 0.42 * len(keys)), layout="constrained")
    axes = fig.subplots(1, max(1, len(metrics)), squeeze=False, sharey=True)[0]
    heading = [f"{title}: Δ = group − baseline, {confidence:.0%} CI, paired by seed",
               f"baseline: {baseline}", f"rows: {', '.join(group_by)}",
               "filled = the interval excludes zero (a finding); hollow = no measurable difference"]
    fig.suptitle(_wrapped(heading, fig.get_figwidth()), fontsize="medium")
    pos = np.arange(len(keys))[::-1]  # the first group on top
    for ax, metric in zip(axes, metrics, strict=False):
        rows = differences[differences["metric"] == metric]
        for y, key in zip(pos, keys, strict=True):
            match = rows
            for k, v in zip(group_by, key, strict=True):
                match = match[match[k].astype(str) == str(v)]
            if match.empty:
                continue
            rec = match.iloc[0]
            finding = bool(rec["excludes_zero"])
            color = PALETTE[1] if finding else PALETTE[0]
            err = [[max(0.0, rec["diff"] - rec["ci_low"])], [max(0.0, rec["ci_high"] - rec["diff"])]] \
                if not (math.isnan(rec["ci_low"]) or math.isnan(rec["ci_high"])) else None
            ax.errorbar([rec["diff"]], [y], xerr=err, fmt="o", capsize=4, color=color, ms=7,
                        mfc=color if finding else "white", mew=1.5)
        ax.axvline(0.0, color="0.3", lw=1, ls="--")
        ax.locator_params(axis="x", nbins=5)  # long tick labels (-0.0075) of narrow panels otherwise run together
        ax.set_xlabel(f"Δ {metric}")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(pos, labels)
    axes[0].set_ylim(-0.6, len(keys) - 0.4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight", pad_inches=0.15)  # long row labels keep their first letter
    return path
