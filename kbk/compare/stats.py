"""Statistics of grouped runs: mean, sample std and a Student-t confidence interval per group and metric, and
differences against a baseline group, paired by seed where the seeds match (Welch's interval otherwise).

Plain pandas and scipy on a runs table (one row per run, `params.<key>` and `metrics.<name>` columns, as
`kbk.compare.runs` returns it); no MLflow here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: The param that says which replicate a run is: never a group, and the key that pairs runs of two groups.
SEED = "seed"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) of `values`; std and the interval are NaN for one value (undefined)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) − mean(b), low, high) with Welch's unequal-variance interval; NaN bounds if a side has one value."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return diff, diff - half, diff + half


def grouped_runs(runs: pd.DataFrame, group_by: Sequence[str]):
    """(key tuple, rows) per group, in a natural order (numbers by value, then strings)."""
    if not group_by:
        return [((), runs)]
    cols = [f"params.{p}" for p in group_by]
    frame = runs.copy()
    for col in cols:
        if col not in frame:
            frame[col] = None
        frame[col] = frame[col].fillna("—")
    keyed = list(frame.groupby(cols, sort=False, dropna=False))
    keyed = [((k,) if not isinstance(k, tuple) else k, rows) for k, rows in keyed]
    return sorted(keyed, key=lambda item: tuple(_natural(v) for v in item[0]))


def _natural(value: object) -> tuple[int, float, str]:
    try:
        return (0, float(str(value)), "")
    except ValueError:
        return (1, 0.0, str(value))


def metric_values(rows: pd.DataFrame, metric: str) -> list[float]:
    col = f"metrics.{metric}"
    if col not in rows:
        return []
    return [float(v) for v in rows[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]


def summary(runs: pd.DataFrame, group_by: Sequence[str], metrics: Sequence[str],
            confidence: float = 0.95) -> pd.DataFrame:
    """One row per (group, metric): the group's params, `metric`, `n`, `mean`, `std`, `ci_low`, `ci_high`.

    `n` counts the runs of the group that logged the metric; with n = 1 the std and interval are NaN.
    """
    records = []
    for key, rows in grouped_runs(runs, group_by):
        for metric in metrics:
            values = metric_values(rows, metric)
            mean, std, low, high = t_interval(values, confidence)
            records.append({**dict(zip(group_by, key, strict=True)), "metric": metric, "n": len(values),
                            "mean": mean, "std": std, "ci_low": low, "ci_high": high})
    return pd.DataFrame.from_records(records, columns=[*group_by, "metric", "n", "mean", "std", "ci_low", "ci_high"])


def parse_group_spec(spec: str | Mapping[str, str]) -> dict[str, str]:
    """`"koopman.dim=256,schedule.type=step"` (or a mapping) → `{"koopman.dim": "256", "schedule.type": "step"}`."""
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    out = {}
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{spec!r} is not a group: write key=value[,key=value...], e.g. koopman.dim=256")
        out[key.strip()] = value.strip()
    return out


def _matches(value: str, wanted: str) -> bool:
    """`256` matches `256.0`, `False` matches `false`: params are strings, specs are typed by hand."""
    if value == wanted or value.lower() == wanted.lower():
        return True
    try:
        return float(value) == float(wanted)
    except ValueError:
        return False


def differences(runs: pd.DataFrame, group_by: Sequence[str], metrics: Sequence[str], baseline: Mapping[str, str],
                confidence: float = 0.95) -> pd.DataFrame:
    """Each group's difference to the baseline group (group − baseline), per metric.

    Paired by seed when both groups hold the same seeds, each once (then `n` is the number of pairs and the
    interval is the t interval of the per-seed differences); otherwise Welch's interval (`paired` False, `n` the
    group's runs). A difference is a finding only when its interval excludes zero (`excludes_zero`).
    """
    missing = [k for k in baseline if k not in group_by]
    if missing:
        raise ValueError(f"the baseline names {missing}, which are not grouped by ({', '.join(group_by) or 'none'})")
    groups = grouped_runs(runs, group_by)

    def is_baseline(key: tuple) -> bool:
        return all(_matches(str(key[group_by.index(k)]), v) for k, v in baseline.items())

    base = [rows for key, rows in groups if is_baseline(key)]
    if not base:
        shown = ", ".join("/".join(map(str, k)) for k, _ in groups)
        raise ValueError(f"no group matches the baseline {dict(baseline)}; the groups are: {shown}")
    base_rows = pd.concat(base)
    records = []
    for key, rows in groups:
        if is_baseline(key):
            continue
        for metric in metrics:
            paired = _paired_values(rows, base_rows, metric)
            if paired is not None:
                diff, _, low, high = t_interval([a - b for a, b in paired], confidence)
                n = len(paired)
            else:
                a, b = metric_values(rows, metric), metric_values(base_rows, metric)
                if not a or not b:
                    continue
                diff, low, high = welch_interval(a, b, confidence)
                n = len(a)
            base_mean = float(np.mean(metric_values(base_rows, metric)))
            records.append({**dict(zip(group_by, key, strict=True)), "metric": metric, "n": n,
                            "paired": paired is not None, "diff": diff, "ci_low": low, "ci_high": high,
                            "rel_diff": diff / base_mean if base_mean else math.nan,
                            "excludes_zero": bool(low > 0 or high < 0)})
    return pd.DataFrame.from_records(records, columns=[*group_by, "metric", "n", "paired", "diff", "ci_low",
                                                       "ci_high", "rel_diff", "excludes_zero"])


def _paired_values(rows: pd.DataFrame, base_rows: pd.DataFrame, metric: str) -> list[tuple[float, float]] | None:
    """[(group value, baseline value)] per seed when both sides hold the same ≥ 2 seeds once each, else None."""
    col, seed = f"metrics.{metric}", f"params.{SEED}"
    if col not in rows or col not in base_rows or seed not in rows or seed not in base_rows:
        return None
    a = rows[[seed, col]].dropna()
    b = base_rows[[seed, col]].dropna()
    if a[seed].duplicated().any() or b[seed].duplicated().any() or set(a[seed]) != set(b[seed]) or len(a) < 2:
        return None
    b = b.set_index(seed)[col]
    return [(float(v), float(b[s])) for s, v in zip(a[seed], a[col], strict=True)]
