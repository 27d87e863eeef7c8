"""Tables of a comparison for people: one row per group, per metric the mean, the sample std and the 95%
interval (and the difference to a baseline), as a terminal table, Markdown, LaTeX, CSV or JSON.

CSV and JSON carry the numbers (the long `summary` / `differences` frames); the others carry formatted text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

DASH = "—"


def decimals(values: Sequence[float], digits: int = 4) -> int:
    """Decimal places that give the typical value of a metric `digits` significant digits (190.53 → 1)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return 2
    return max(0, min(6, digits - 1 - math.floor(math.log10(float(np.median(finite))))))


def difference_places(low: float, high: float, places: int) -> int:
    """Enough decimals that an interval bound near zero keeps two significant digits (so `[0.03, 0.9]` is not
    shown as `[0.0, 0.9]`, which reads as touching zero)."""
    bounds = [abs(b) for b in (low, high) if math.isfinite(b) and b != 0]
    if not bounds:
        return places
    return max(places, min(6, 1 - math.floor(math.log10(min(bounds)))))


def number(value: float, places: int) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:,.{places}f}"


def signed(value: float, places: int) -> str:
    text = number(value, places)
    return text if text == DASH or text.startswith("-") else f"+{text}"


def interval(low: float, high: float, places: int) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return DASH
    return f"[{number(low, places)}, {number(high, places)}]"


def wide(summary: pd.DataFrame, group_by: Sequence[str], differences: pd.DataFrame | None = None,
         confidence: float = 0.95) -> pd.DataFrame:
    """One row per group: the group's params, `n`, and per metric `<m>` (mean ± sd) and `<m> 95% CI`, and with a
    baseline `Δ <m>` (difference [interval], `*` when the interval excludes zero), all as text. Each metric keeps
    one number of decimals in every column (four significant digits of its typical value)."""
    pct = f"{confidence:.0%}"
    places = {m: decimals(list(summary.loc[summary["metric"] == m, "mean"])) for m in summary["metric"].unique()}
    n_max = summary.groupby(list(group_by), sort=False)["n"].transform("max") if group_by else summary["n"].max()
    rows: dict[tuple, dict[str, str]] = {}
    for rec, n_group in zip(summary.to_dict("records"), np.broadcast_to(n_max, len(summary)), strict=True):
        key = tuple(rec[k] for k in group_by)
        row = rows.setdefault(key, {**{k: str(rec[k]) for k in group_by}, "n": str(int(n_group))})
        m, p = rec["metric"], places[rec["metric"]]
        mean = number(rec["mean"], p) + ("" if rec["n"] == n_group else f" (n={rec['n']})")
        row[f"{m} (mean ± sd)"] = mean if not math.isfinite(rec["std"]) else f"{mean} ± {number(rec['std'], p)}"
        row[f"{m} {pct} CI"] = interval(rec["ci_low"], rec["ci_high"], p)
    if differences is not None:
        for row in rows.values():
            for m in differences["metric"].unique():
                row[f"Δ {m}"] = "baseline"
        for rec in differences.to_dict("records"):
            key = tuple(rec[k] for k in group_by)
            mark = " *" if rec["excludes_zero"] else ""
            how = "" if rec["paired"] else " (unpaired)"
            p = difference_places(rec["ci_low"], rec["ci_high"], places[rec["metric"]])
            rows[key][f"Δ {rec['metric']}"] = (f"{signed(rec['diff'], p)} {interval(rec['ci_low'], rec['ci_high'], p)}"
                                               f"{mark}{how}")
    return pd.DataFrame(list(rows.values())).fillna(DASH)


def text_width(table: pd.DataFrame) -> int:
    """Characters a rich table of `table` needs on one line (each column as wide as its longest cell, plus borders)."""
    return sum(max([len(str(c)), *(len(str(v)) for v in table[c])]) + 3 for c in table.columns) + 1


def per_metric(table: pd.DataFrame, group_by: Sequence[str], metrics: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """The wide table cut into one table per metric (the group's params and n repeated in each): what a terminal
    shows when every metric side by side would not fit."""
    keys = [*group_by, "n"]
    return [(m, table[keys + [c for c in table.columns if c in (f"{m} (mean ± sd)", f"Δ {m}")
                               or (c.startswith(f"{m} ") and c.endswith(" CI"))]]) for m in metrics]


def rich_table(table: pd.DataFrame, title: str, caption: str = ""):
    from rich.table import Table

    out = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for col in table.columns:
        out.add_column(col, justify="left" if col in ("n",) or not _numeric_column(table[col]) else "right",
                       no_wrap=True)
    for row in table.itertuples(index=False):
        out.add_row(*map(str, row))
    return out


def _numeric_column(col: pd.Series) -> bool:
    return any(str(v)[:1].isdigit() or str(v)[:1] in "+-[" for v in col)


def markdown(table: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    head = "| " + " | ".join(map(cell, table.columns)) + " |"
    rule = "|" + "|".join("---" if not _numeric_column(table[c]) else "---:" for c in table.columns) + "|"
    body = ["| " + " | ".join(map(cell, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "—": "---", "Δ": r"$\Delta$", "±": r"$\pm$"}


def latex(table: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        return "".join(_LATEX.get(ch, ch) for ch in str(value))

    align = "".join("r" if _numeric_column(table[c]) else "l" for c in table.columns)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(map(cell, table.columns)) + r" \\",
             r"\midrule"]
    lines += [" & ".join(map(cell, row)) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def as_json(summary: pd.DataFrame, differences: pd.DataFrame | None) -> str:
    def records(frame: pd.DataFrame) -> list[dict]:
        return json.loads(frame.to_json(orient="records"))  # NaN → null

    data = {"summary": records(summary)}
    if differences is not None:
        data["differences"] = records(differences)
    return json.dumps(data, indent=1) + "\n"


def as_csv(summary: pd.DataFrame, differences: pd.DataFrame | None, group_by: Sequence[str]) -> str:
    """The long summary; with a baseline, each row also carries its difference (`diff`, `diff_ci_low`, ...)."""
    frame = summary
    if differences is not None and not differences.empty:
        renamed = differences.rename(columns={c: f"diff_{c}" for c in ("n", "paired", "ci_low", "ci_high",
                                                                        "rel_diff", "excludes_zero")})
        frame = summary.merge(renamed, on=[*group_by, "metric"], how="left")
    return frame.to_csv(index=False)
