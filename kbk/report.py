"""python -m kbk.report: one sweep → a self-contained study report (README.md and its plots), written to a folder
and logged on the sweep's parent run. Every number in it comes from the MLflow store.

    python -m kbk.report --sweep koopman_dim_grid --out experiments/koopman_dim
    python -m kbk.report --sweep koopman_dim_grid --baseline koopman.dim=256 --metric val/ppl val/ppl_koopman \\
        --question "Does koopman_dim change the perplexity?" --out experiments/koopman_dim

The report holds the question, the command that reproduces the sweep, the code commit, the tables (n, mean, sd,
95% interval; paired differences against the baseline, findings only where the interval excludes zero), the
plots, a per-layer summary of the Koopman diagnostics, the trials that did not finish and why, and the settings.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from kbk.compare import Comparison, compare_runs, labelled, stats, tables
from kbk.compare.select import Selection, is_factor, select
from kbk.errors import KbkError, command_line

#: Per-layer diagnostics shown in the report (logged as `koopman/<layer>/<name>` at the final evaluation).
DIAGNOSTICS = ("val_ppl_koopman_only", "val_ppl_skip_only", "one_step_rel_err", "one_step_rel_err_identity",
               "spectral_radius", "drift_rel", "dmd_accept_rate")
END_REASON = "tags.kbk.end_reason"
LAYERWISE_STANDARD = "koopman/layerwise_val_ppl"  # the standard model on the layer-wise passes' tokens


def sweep_selection(uri: str | None, experiment: str, sweeps: str | Sequence[str]) -> Selection:
    """The runs and parents of one sweep, or of several reported as one study (e.g. a grid run in two parts)."""
    sweeps = [sweeps] if isinstance(sweeps, str) else list(sweeps)
    parts = []
    for sweep in sweeps:
        selection = select(uri, experiment, sweep=sweep, status=None)
        if selection.runs.empty and selection.parents.empty:
            raise KbkError(f"no sweep {sweep!r} in experiment {experiment!r} at {selection.uri}: run it first "
                           f"(python -m kbk.run -m hparams_search=...), or check --uri/--experiment")
        parts.append(selection)
    runs = pd.concat([s.runs for s in parts], ignore_index=True)
    parents = pd.concat([s.parents for s in parts if not s.parents.empty], ignore_index=True) \
        if any(not s.parents.empty for s in parts) else parts[0].parents
    if runs.empty or (runs["status"] == "FINISHED").sum() == 0:
        raise KbkError(f"sweep {' + '.join(map(repr, sweeps))} has no finished trials yet: nothing to report "
                       f"(rerun its command to finish it)")
    return Selection(runs, parents, parts[0].uri, experiment)


def planned_note(parents: pd.DataFrame | pd.Series | None, counts: dict[str, int]) -> str:
    """'**Partial: 9 of 24 trials ended.** ' when the sweeps' budget (their parents' `kbk.n_trials`, summed) is not
    spent: a report of a sweep still running (or stopped) must say that groups may be missing."""
    if parents is None:
        return ""
    frame = parents.to_frame().T if isinstance(parents, pd.Series) else parents
    budgets = pd.to_numeric(frame.get("tags.kbk.n_trials", pd.Series(dtype=object)), errors="coerce")
    ended = sum(counts.get(s, 0) for s in ("FINISHED", "KILLED", "FAILED"))
    if budgets.empty or budgets.isna().any() or ended >= budgets.sum():
        return ""
    planned = int(budgets.sum())
    return (f"**Partial: {ended} of {planned} trials ended** ({planned - ended} still to run: rerun the "
            f"sweep's command to finish it). ")


def _parents(selection: Selection) -> pd.DataFrame:
    """The latest parent run of each sweep in `selection` (one row per sweep)."""
    if selection.parents.empty:
        return selection.parents
    ordered = selection.parents.sort_values("start_time")
    if "tags.kbk.sweep" in ordered:
        ordered = ordered.drop_duplicates("tags.kbk.sweep", keep="last")
    else:
        ordered = ordered.iloc[[-1]]
    return ordered.reset_index(drop=True)


def _cell(value: object) -> str:
    return "—" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def diagnostics_table(comparison: Comparison) -> pd.DataFrame | None:
    """Mean over seeds of each diagnostic, one row per group and layer."""
    runs = comparison.runs
    # Per-layer metrics are koopman/<layer>/<name>; run-level ones (koopman/layerwise_val_ppl) name no layer.
    parts = [c.split("/") for c in runs.columns if c.startswith("metrics.koopman/")]
    layers = sorted({p[1] for p in parts if len(p) == 3}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else s))
    if not layers:
        return None
    names = [n for n in DIAGNOSTICS if any(f"metrics.koopman/{layer}/{n}" in runs for layer in layers)]
    metrics = [f"koopman/{layer}/{n}" for layer in layers for n in names if f"metrics.koopman/{layer}/{n}" in runs]
    summary = stats.summary(runs, comparison.group_by, metrics, comparison.confidence)
    summary["layer"] = summary["metric"].str.split("/").str[1]
    summary["name"] = summary["metric"].str.split("/").str[2]
    wide = summary.pivot_table(index=[*comparison.group_by, "layer"], columns="name", values="mean", sort=False)
    wide = wide[[n for n in names if n in wide.columns]].reset_index()
    if "val_ppl_koopman_only" in wide and f"metrics.{LAYERWISE_STANDARD}" in runs:
        # The one-layer passes run on a subset of the validation tokens: the standard model on that same subset
        # is what they compare with (the final val/ppl, on every token, is not).
        standard = stats.summary(runs, comparison.group_by, [LAYERWISE_STANDARD], comparison.confidence)
        standard = standard[[*comparison.group_by, "mean"]].rename(columns={"mean": "layerwise_val_ppl"})
        wide = wide.merge(standard, on=list(comparison.group_by), how="left", sort=False)
        names = ["layerwise_val_ppl", *names]
        wide = wide[[*comparison.group_by, "layer", *[n for n in names if n in wide]]]
    places = {n: tables.decimals(list(wide[n])) for n in names if n in wide}
    for n, p in places.items():
        wide[n] = [tables.number(v, p) for v in wide[n]]
    return wide.astype(str)


def unfinished_table(selection: Selection, group_by: Sequence[str]) -> pd.DataFrame:
    runs = selection.runs[selection.runs["status"] != "FINISHED"]
    rows = []
    for rec in runs.sort_values("start_time").to_dict("records"):
        rows.append({"run": _cell(rec.get("tags.mlflow.runName")), "status": rec["status"],
                     **{k: _cell(rec.get(f"params.{k}")) for k in (*group_by, stats.SEED)},
                     "reason": _cell(rec.get(END_REASON)).replace("\n", " ")[:200]})
    return pd.DataFrame(rows)


def findings(comparison: Comparison) -> list[str]:
    """One line per (group, metric) difference: a finding where the interval excludes zero, else none."""
    constant = [f"{m} is {tables.number(v, tables.decimals([v]))} in every run: it does not depend on the settings "
                f"compared." for m, v in comparison.constants.items()]
    if comparison.differences is None:
        return constant
    base = ", ".join(f"{k}={v}" for k, v in comparison.baseline.items())
    places = {m: tables.decimals(list(comparison.summary.loc[comparison.summary["metric"] == m, "mean"]))
              for m in comparison.metrics}
    lines = []
    for rec in comparison.differences.to_dict("records"):
        group = ", ".join(f"{k}={rec[k]}" for k in comparison.group_by)
        p = tables.difference_places(rec["ci_low"], rec["ci_high"], places[rec["metric"]])
        ci = tables.interval(rec["ci_low"], rec["ci_high"], p)
        how = f"paired over {rec['n']} seeds" if rec["paired"] else f"unpaired, n={rec['n']}"
        if rec["excludes_zero"]:
            lines.append(f"**{group}** vs {base}: {rec['metric']} {tables.signed(rec['diff'], p)} {ci} "
                         f"({how}) — the interval excludes zero.")
        else:
            lines.append(f"{group} vs {base}: {rec['metric']} — no measurable difference "
                         f"({tables.signed(rec['diff'], p)} {ci}, {how}).")
    return lines + constant


def settings_block(selection: Selection, group_by: Sequence[str]) -> list[str]:
    """The settings every finished trial shares (the sweep's fixed config), as `key: value` lines; unset options
    and where things were written are left out."""
    finished = selection.runs[selection.runs["status"] == "FINISHED"]
    lines = []
    for col in sorted(c for c in finished.columns if c.startswith("params.")):
        key = col[len("params."):]
        values = finished[col].dropna().unique()
        if key in group_by or not is_factor(key) or len(values) != 1 or values[0] == "None":
            continue
        lines.append(f"{key}: {values[0]}")
    return lines


def write_report(selection: Selection, comparison: Comparison, out: Path, *, sweep: str, question: str | None,
                 command: str, reproduce: str | None = None) -> Path:
    from kbk.compare.__main__ import curves
    from kbk.compare.plots import plot_differences, plot_metrics

    out.mkdir(parents=True, exist_ok=True)
    parents = _parents(selection)
    runs = selection.runs
    counts = runs["status"].value_counts().to_dict()
    finished = comparison.runs
    commits = sorted(set(finished.get("tags.kbk.git_commit", pd.Series(dtype=str)).dropna()))
    dirty = "true" in set(finished.get("tags.kbk.git_dirty", pd.Series(dtype=str)).dropna())
    plot_metrics(finished, comparison.group_by, comparison.metrics, out / "metrics.png", f"sweep {sweep}",
                 comparison.confidence)
    curves(comparison, comparison.metrics, out / "curves.png")
    has_differences = comparison.differences is not None and not comparison.differences.empty
    if has_differences:
        plot_differences(comparison.differences, comparison.group_by, comparison.metrics, out / "differences.png",
                         f"sweep {sweep}", ", ".join(f"{k}={v}" for k, v in comparison.baseline.items()),
                         comparison.confidence)
    if reproduce is None:
        reproduce = "; ".join(_cell(c) for c in parents.get("tags.kbk.command", pd.Series(dtype=object))) or "—"
    ns = sorted({int(n) for n in comparison.summary["n"]})
    lines = [f"# Study: {sweep}", ""]
    swept = ", ".join(f"`{k}`" for k in comparison.group_by) or "nothing"
    lines += [question or f"How do {', '.join(f'`{m}`' for m in comparison.metrics)} change with {swept}?", ""]
    lines += ["| | |", "|---|---|",
              f"| Trials | {planned_note(parents, counts)}{counts.get('FINISHED', 0)} finished, "
              f"{counts.get('KILLED', 0)} pruned or killed, "
              f"{counts.get('FAILED', 0)} failed; n = {'–'.join(map(str, (ns[0], ns[-1]))) if len(ns) > 1 else ns[0]}"
              f" per group (seeds) |",
              f"| Reproduce the sweep | `{reproduce}` |",
              f"| Code | {', '.join(f'`{c[:12]}`' for c in commits) or '—'}"
              f"{' (uncommitted changes)' if dirty else ''} |",
              f"| Store | `{selection.uri}`, experiment `{selection.experiment}`, parent run"
              f"{'s' if len(parents) > 1 else ''} {', '.join(f'`{r}`' for r in parents.get('run_id', [])) or '—'} |",
              f"| This report | `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC) |", ""]
    lines += ["## Results", "",
              f"Final value of each metric per group: mean ± sample sd over seeds and the "
              f"{comparison.confidence:.0%} Student-t interval of the mean.", "",
              tables.markdown(tables.wide(comparison.summary, comparison.group_by, comparison.differences,
                                          comparison.confidence)).rstrip(), ""]
    if comparison.differences is not None:
        base = ", ".join(f"{k}={v}" for k, v in comparison.baseline.items())
        lines += [f"Δ = group − baseline ({base}), paired by seed where both hold the same seeds (Welch's interval "
                  f"otherwise); `*` marks an interval that excludes zero — only those differences are findings.", ""]
        lines += [f"- {line}" for line in findings(comparison)] + [""]
        if has_differences:
            lines += ["![paired differences against the baseline](differences.png)", ""]
    lines += ["![metrics against the swept param](metrics.png)", "", "Learning curves (mean over seeds, "
              f"{comparison.confidence:.0%} band):", "", "![learning curves](curves.png)", ""]
    diag = diagnostics_table(comparison)
    if diag is not None:
        lines += ["## Koopman diagnostics per layer", "",
                  "Final evaluation, mean over seeds. `val_ppl_koopman_only`: the model with only this layer "
                  "replaced by its Koopman operator; `val_ppl_skip_only`: the model with only this layer skipped; "
                  "`layerwise_val_ppl`: the standard model on the same validation tokens as those two (the first "
                  "`trainer.layerwise_tokens` of them), the number to read them against; "
                  "`one_step_rel_err` vs `one_step_rel_err_identity`: the operator's relative one-step error in "
                  "lifted space against K = I.", "", tables.markdown(diag).rstrip(), ""]
    unfinished = unfinished_table(selection, comparison.group_by)
    lines += ["## Trials that did not finish", ""]
    lines += [tables.markdown(unfinished).rstrip() if not unfinished.empty else "None: every trial finished.", ""]
    settings = settings_block(selection, comparison.group_by)
    lines += ["## Settings", "", f"<details><summary>The {len(settings)} settings every finished trial shares"
              "</summary>", "", "```yaml", *settings, "```", "", "</details>", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def log_on_parent(selection: Selection, out: Path) -> str | None:
    """The report as artifacts (`report/`) of each sweep's parent run; the runs' status is left as it is."""
    from mlflow import MlflowClient

    parents = _parents(selection)
    for run_id in parents.get("run_id", []):
        MlflowClient(selection.uri).log_artifacts(run_id, str(out), "report")
    return ", ".join(parents.get("run_id", [])) or None


@command_line("kbk.report")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kbk.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, nargs="+",
                   help="the sweep's study name (tag kbk.sweep); several: one study run as several sweeps")
    p.add_argument("--out", type=Path, help="folder for README.md and the plots (default: outputs/reports/<sweep>)")
    p.add_argument("--baseline", help="group the others are compared to, e.g. koopman.dim=256")
    p.add_argument("--metric", nargs="+", help="metrics (default: val/ppl val/ppl_koopman)")
    p.add_argument("--group-by", nargs="*", help="params to group by (default: the sweep's search space)")
    p.add_argument("--question", help="the question the study answers (first line of the report)")
    p.add_argument("--reproduce", help="the command that reproduces the study, e.g. its run.sh (default: the "
                                       "sweep command recorded on the parent run)")
    p.add_argument("--uri", help="tracking URI (default: the SQLite store under outputs/)")
    p.add_argument("--experiment", default="kbk")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--no-log", action="store_true", help="do not log the report on the sweep's parent run")
    args = p.parse_args(argv)
    from kbk.paths import outputs_dir

    selection = sweep_selection(args.uri, args.experiment, args.sweep)
    name = " + ".join(args.sweep)
    finished = labelled(selection.runs[selection.runs["status"] == "FINISHED"].reset_index(drop=True), selection,
                        name)
    comparison = compare_runs(finished, args.group_by, args.metric, args.baseline, args.confidence)
    out = args.out or outputs_dir() / "reports" / "+".join(args.sweep)
    command = " ".join(["python -m kbk.report", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    path = write_report(selection, comparison, out, sweep=name, question=args.question, command=command,
                        reproduce=args.reproduce)
    print(f"wrote {path}")
    if not args.no_log:
        run_id = log_on_parent(selection, out)
        print(f"logged on the sweep's parent run {run_id} (artifacts report/)" if run_id else
              "no parent run found: the report is only in the folder")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
