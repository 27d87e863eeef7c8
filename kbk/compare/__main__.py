"""python -m kbk.compare: MLflow runs → a table per group of the swept params (n, mean, sd, 95% CI), paired
differences against a baseline, plots.

    python -m kbk.compare --sweep koopman_dim_grid                         # one row per koopman_dim
    python -m kbk.compare --sweep koopman_dim_grid --baseline koopman.dim=256 --metric val/ppl val/ppl_koopman
    python -m kbk.compare --sweep koopman_dim_grid --plot outputs/koopman_dim.png --curves val/ppl
    python -m kbk.compare --filter "params.\\`koopman.enabled\\` = 'false'" --format markdown
    python -m kbk.compare --parent <run id> --format csv --out results.csv

Groups are the sweep's search space (or a plain multirun's swept overrides, or else the params that differ),
never the seed. A difference is marked * when its interval excludes zero: only then is it a finding.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kbk.errors import command_line

FORMATS = ("table", "markdown", "latex", "csv", "json")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kbk.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_argument_group("which runs")
    where.add_argument("--uri", help="tracking URI (default: the SQLite store under outputs/)")
    where.add_argument("--experiment", default="kbk", help="MLflow experiment (default: kbk)")
    where.add_argument("--sweep", help="the trials of one sweep: its study name (tag kbk.sweep)")
    where.add_argument("--parent", help="the children of this parent run id")
    where.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"params.`schedule.type` = 'step'\"")
    where.add_argument("--status", default="FINISHED",
                       help="FINISHED (default), FAILED, KILLED, RUNNING, a comma list, or all")
    how = p.add_argument_group("how to compare")
    how.add_argument("--group-by", nargs="*", help="params to group by (default: the swept params)")
    how.add_argument("--metric", nargs="+", help="metrics (default: val/ppl val/ppl_koopman)")
    how.add_argument("--baseline", help="the group the others are compared to, e.g. koopman.dim=256 or "
                                        "koopman.enabled=false")
    how.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=FORMATS, default="table")
    out.add_argument("--out", type=Path, help="write the table there instead of printing it")
    out.add_argument("--plot", type=Path, help="PNG: each metric against the swept param")
    out.add_argument("--curves", nargs="+", metavar="METRIC",
                     help="learning curves of these metrics (PNG next to --plot, or outputs/compare/curves.png)")
    return p


def render(comparison, fmt: str) -> str:
    from kbk.compare import tables

    if fmt == "json":
        return tables.as_json(comparison.summary, comparison.differences)
    if fmt == "csv":
        return tables.as_csv(comparison.summary, comparison.differences, comparison.group_by)
    wide = tables.wide(comparison.summary, comparison.group_by, comparison.differences, comparison.confidence)
    if fmt == "markdown":
        return tables.markdown(wide)
    if fmt == "latex":
        return tables.latex(wide)
    raise ValueError(fmt)


def caption(comparison) -> str:
    runs = comparison.runs
    text = f"{len(runs)} runs in {runs.attrs.get('uri', '')}"
    if comparison.baseline:
        base = ", ".join(f"{k}={v}" for k, v in comparison.baseline.items())
        text += (f"\nΔ = group − baseline ({base}), paired by seed; * = the {comparison.confidence:.0%} interval "
                 "excludes zero")
    return text


def curves_path(args) -> Path:
    from kbk.paths import outputs_dir

    if args.plot:
        return args.plot.with_name(f"{args.plot.stem}-curves{args.plot.suffix or '.png'}")
    return outputs_dir() / "compare" / "curves.png"


def curves(comparison, metrics: Sequence[str], path: Path) -> Path:
    from kbk.compare.plots import plot_curves
    from kbk.compare.select import metric_histories
    from kbk.compare.stats import grouped_runs

    histories = metric_histories(comparison.runs.attrs["uri"], list(comparison.runs["run_id"]), metrics)
    grouped = {key: {m: [histories[r][m] for r in rows["run_id"] if not histories[r][m].empty] for m in metrics}
               for key, rows in grouped_runs(comparison.runs, comparison.group_by)}
    return plot_curves(grouped, comparison.group_by, metrics, path, comparison.title, comparison.confidence)


@command_line("kbk.compare")
def main(argv: Sequence[str] | None = None) -> int:
    from kbk import compare
    from kbk.compare import plots, tables

    args = parser().parse_args(argv)
    status = None if args.status.lower() == "all" else [s.strip().upper() for s in args.status.split(",")]
    frame = compare.runs(args.uri, args.experiment, sweep=args.sweep, parent=args.parent, filter=args.filter,
                         status=status)
    comparison = compare.compare_runs(frame, args.group_by, args.metric, args.baseline, args.confidence)
    if args.curves:
        compare._metrics(frame, args.curves)  # an unknown metric fails before anything is written
    if args.format == "table" and args.out is None:
        import shutil

        from rich.console import Console

        wide = tables.wide(comparison.summary, comparison.group_by, comparison.differences, args.confidence)
        width = max(100, shutil.get_terminal_size((160, 40)).columns)
        # A table is never squeezed below its text (rich would cut cells to stubs): too wide for the terminal,
        # it becomes one table per metric, each as wide as it needs.
        if tables.text_width(wide) <= width or len(comparison.metrics) == 1:
            Console(width=max(width, tables.text_width(wide))).print(
                tables.rich_table(wide, comparison.title, caption(comparison)))
        else:
            for metric, table in tables.per_metric(wide, comparison.group_by, comparison.metrics):
                Console(width=max(width, tables.text_width(table))).print(
                    tables.rich_table(table, f"{comparison.title}: {metric}"))
            print(caption(comparison))
    else:
        text = render(comparison, "markdown" if args.format == "table" else args.format)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
    if args.plot:
        plots.plot_metrics(frame, comparison.group_by, comparison.metrics, args.plot, comparison.title,
                           args.confidence)
        print(f"wrote {args.plot}")
    if args.curves:
        print(f"wrote {curves(comparison, args.curves, curves_path(args))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
