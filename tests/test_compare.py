"""kbk.compare on a real MLflow store (SQLite in a temp dir): a sweep parent with its search space, trials of
two seeds per point, a failed and a pruned trial, a single run outside the sweep; rows, grouping, n, the
interval arithmetic against scipy, and paired differences against a hand computation."""

import json
import math
import statistics

import pandas as pd
import pytest
from scipy import stats as sps
from sweep_store import PPL, build_store

from kbk import compare
from kbk.compare import stats
from kbk.compare.__main__ import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store"))


def test_sweep_rows_are_trials_grouped_by_the_search_space(store):
    uri, pid = store
    runs = compare.runs(uri, sweep="grid")
    assert len(runs) == 7 and pid not in set(runs["run_id"])  # parent, failed and pruned trials are not rows
    assert runs.attrs["swept"] == ["koopman.dim"]  # the space minus the seed; no noise columns
    table = compare.summary(runs, metrics=["val/ppl"])
    assert list(table["koopman.dim"]) == ["128", "256", "512"] and list(table["n"]) == [2, 2, 3]
    for rec in table.to_dict("records"):
        values = [v for (d, _), v in PPL.items() if d == rec["koopman.dim"]]
        half = sps.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        assert rec["mean"] == pytest.approx(statistics.fmean(values))
        assert rec["std"] == pytest.approx(statistics.stdev(values))
        assert (rec["ci_low"], rec["ci_high"]) == pytest.approx((rec["mean"] - half, rec["mean"] + half))
    # by parent id: the same rows
    assert sorted(compare.runs(uri, parent=pid)["run_id"]) == sorted(runs["run_id"])
    # statuses: the failed and pruned trials come back when asked for
    assert len(compare.runs(uri, sweep="grid", status=None)) == 9


def test_one_run_has_an_undefined_spread_not_zero():
    mean, std, low, high = stats.t_interval([193.0])
    assert mean == 193.0 and math.isnan(std) and math.isnan(low) and math.isnan(high)


def test_paired_difference_matches_a_hand_computation(store):
    uri, _ = store
    runs = compare.runs(uri, sweep="grid")
    diff = compare.differences(runs, "koopman.dim=256", metrics=["val/ppl", "val/ppl_koopman"])
    row = diff[(diff["koopman.dim"] == "128") & (diff["metric"] == "val/ppl")].iloc[0]
    pairs = [PPL[("128", s)] - PPL[("256", s)] for s in (0, 1)]  # 10, 9
    half = sps.t.ppf(0.975, 1) * statistics.stdev(pairs) / math.sqrt(2)
    assert bool(row["paired"]) and row["n"] == 2
    assert row["diff"] == pytest.approx(9.5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((9.5 - half, 9.5 + half))
    assert bool(row["excludes_zero"]) == (9.5 - half > 0)
    # 512 has seeds {0, 1, 2}, the baseline {0, 1}: not the same seeds, so Welch's interval (unpaired)
    row = diff[(diff["koopman.dim"] == "512") & (diff["metric"] == "val/ppl")].iloc[0]
    a, b = [180.0, 181.0, 179.0], [190.0, 187.0]
    welch = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert not bool(row["paired"]) and row["diff"] == pytest.approx(180.0 - 188.5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((welch.low, welch.high))
    assert "256" not in set(diff["koopman.dim"])  # the baseline is not compared with itself


def test_without_a_sweep_groups_are_the_params_that_differ_never_the_seed_or_locations(store):
    uri, _ = store
    runs = compare.runs(uri)  # every finished run: the sweep's trials and the single run, not the parent
    assert len(runs) == 8
    assert runs.attrs["swept"] == ["koopman.dim"]  # seed, tracking.uri differ too but are not factors


def test_cli_table_markdown_csv_json_and_plots(store, tmp_path, capsys):
    uri, _ = store
    assert main(["--uri", uri, "--sweep", "grid", "--metric", "val/ppl", "--baseline", "koopman.dim=256"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "+9.5" in out and "sweep grid" in out
    assert main(["--uri", uri, "--sweep", "grid", "--metric", "val/ppl", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| koopman.dim | n | val/ppl (mean ± sd) | val/ppl 95% CI |" and len(lines) == 5
    assert lines[2].startswith("| 128 | 2 | 198.0 ± 2.8 |")
    csv_path = tmp_path / "t.csv"
    assert main(["--uri", uri, "--sweep", "grid", "--metric", "val/ppl", "--format", "csv", "--out",
                 str(csv_path), "--baseline", "koopman.dim=256"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {csv_path}"
    frame = pd.read_csv(csv_path)
    assert list(frame["n"]) == [2, 2, 3] and frame.loc[0, "diff"] == pytest.approx(9.5)
    assert main(["--uri", uri, "--sweep", "grid", "--metric", "val/ppl", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["n"] for r in data["summary"]] == [2, 2, 3]
    png, curves = tmp_path / "p.png", tmp_path / "p-curves.png"
    assert main(["--uri", uri, "--sweep", "grid", "--metric", "val/ppl", "val/ppl_koopman", "--plot", str(png),
                 "--curves", "val/ppl"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--sweep", "nope"], "no runs match"),
    (["--experiment", "nope"], "no experiment 'nope'"),
    (["--sweep", "grid", "--metric", "val/nope"], "no selected run has the metric 'val/nope'"),
    (["--sweep", "grid", "--baseline", "koopman.dim=7"], "no group matches the baseline"),
    (["--sweep", "grid", "--baseline", "koopman.dim"], "is not a group"),
    (["--sweep", "grid", "--group-by", "nope"], "no selected run has the param 'nope'"),
    (["--filter", "params.x ~ 1"], "MLflow refused the search"),
])
def test_bad_input_is_one_line_and_exit_2(store, capsys, args, message):
    uri, _ = store
    assert main(["--uri", uri, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_runs_that_differ_in_too_many_params_ask_for_a_choice(store):
    uri, _ = store
    runs = compare.runs(uri, sweep="grid")
    runs.attrs["swept"] = [f"p{i}" for i in range(7)]
    with pytest.raises(compare.KbkError, match="differ in 7 params"):
        compare.compare_runs(runs)
    assert compare.compare_runs(runs, group_by=["koopman.dim"]).group_by == ["koopman.dim"]


def test_a_missing_store_is_an_error_and_is_not_created(tmp_path, capsys):
    db = tmp_path / "none" / "mlflow.db"
    assert main(["--uri", f"sqlite:///{db}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not db.exists() and not db.parent.exists()


def test_geometric_values_get_a_log_axis():
    from kbk.compare.plots import is_geometric

    assert is_geometric([128, 256, 512]) and is_geometric([16, 64, 256, 1024])
    assert not is_geometric([100, 200, 300]) and not is_geometric([0, 1, 2, 4])


def test_a_difference_near_zero_keeps_two_significant_digits():
    from kbk.compare.tables import difference_places, interval

    p = difference_places(0.034, 0.93, 1)
    assert p == 3 and interval(0.034, 0.93, p) == "[0.034, 0.930]"  # not "[0.0, 0.9]", which reads as touching 0
    assert difference_places(2.5, 3.6, 1) == 1 and difference_places(float("nan"), 1.0, 1) == 1


def test_a_metric_equal_in_every_run_is_stated_once_not_compared(store):
    from kbk.compare import tables
    from kbk.report import findings

    uri, _ = store
    runs = compare.runs(uri, sweep="grid")
    runs["metrics.val/ppl_floor"] = 89.58  # a property of the data (synthetic's Bayes floor), the same everywhere
    comparison = compare.compare_runs(runs, metrics=["val/ppl", "val/ppl_floor"], baseline="koopman.dim=256")
    assert comparison.constants == {"val/ppl_floor": 89.58}
    assert set(comparison.differences["metric"]) == {"val/ppl"}
    wide = tables.wide(comparison.summary, comparison.group_by, comparison.differences)
    assert "Δ val/ppl" in wide.columns and "Δ val/ppl_floor" not in wide.columns
    assert "val/ppl_floor (mean ± sd)" in wide.columns  # still shown, once per group
    lines = findings(comparison)
    assert lines[-1] == "val/ppl_floor is 89.58 in every run: it does not depend on the settings compared."
    assert not any("val/ppl_floor —" in line or "val/ppl_floor +" in line for line in lines)


def test_an_interval_of_a_positive_quantity_is_not_drawn_below_zero():
    from kbk.compare.plots import drawn_low

    low = stats.t_interval([300.0, 900.0, 2000.0])[2]  # three noisy step times: the t-interval reaches below 0
    assert low < 0
    assert drawn_low([low], [300.0, 900.0, 2000.0])[0] == 0.0
    assert drawn_low([low], [-1.0, 2.0, 5.0])[0] == low  # a quantity that can be negative keeps its interval


def test_distance_to_the_floor_is_derived_per_run_and_per_step(tmp_path):
    from mlflow import MlflowClient

    from kbk.compare.select import metric_histories

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("kbk", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp, tags={"kbk.role": "run"})
    rid = run.info.run_id
    for step, loss in ((100, 5.0), (200, 4.75)):
        client.log_metric(rid, "val/loss", loss, step=step)
        client.log_metric(rid, "val/loss_floor", 4.5, step=step)
    client.log_param(rid, "seed", "0")
    client.set_terminated(rid, "FINISHED")
    frame = compare.runs(uri)
    assert frame["metrics.val/loss_above_floor"].tolist() == [0.25]  # the final values: 4.75 − 4.5
    assert "metrics.val/loss_koopman_above_floor" not in frame  # its part val/loss_koopman was never logged
    history = metric_histories(uri, [rid], ["val/loss_above_floor"])[rid]["val/loss_above_floor"]
    assert history["step"].tolist() == [100, 200] and history["value"].tolist() == [0.5, 0.25]


def test_a_table_too_wide_for_the_terminal_is_one_table_per_metric(store, capsys, monkeypatch):
    uri, _ = store
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["--uri", uri, "--sweep", "grid", "--baseline", "koopman.dim=256",
                 "--metric", "val/ppl", "val/ppl_koopman", "koopman/0/spectral_radius"]) == 0
    out = capsys.readouterr().out
    titles = [line.strip() for line in out.splitlines() if line.startswith("sweep grid")]
    assert titles == [f"sweep grid: {m}" for m in ("val/ppl", "val/ppl_koopman", "koopman/0/spectral_radius")]
    assert "…" not in out  # nothing squeezed to a stub
    assert sum(line.split("│")[1].strip() == "512" for line in out.splitlines() if line.startswith("│")) == 3
