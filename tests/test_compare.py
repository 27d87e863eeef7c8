import math
import statistics

import pytest
from mlflow import MlflowClient

from kbk import compare

VALUES = {("128", "linear"): [10.0, 12.0, 14.0], ("256", "linear"): [8.0, 9.0], ("256", "step"): [7.0]}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("kbk", artifact_location=str(tmp_path / "artifacts"))
    seed = 0
    for (dim, schedule), ppls in VALUES.items():
        for ppl in ppls:
            run = client.create_run(exp, run_name=f"r{seed}", tags={"kbk.sweep": "study"})
            params = {"koopman.dim": dim, "schedule.type": schedule, "seed": seed, "model.d_model": 64}
            for key, value in params.items():
                client.log_param(run.info.run_id, key, value)
            client.log_metric(run.info.run_id, "val/ppl", ppl, step=5)
            client.set_terminated(run.info.run_id, "FINISHED")
            seed += 1
    failed = client.create_run(exp, run_name="failed", tags={"kbk.sweep": "study"})
    client.log_param(failed.info.run_id, "koopman.dim", "512")
    client.set_terminated(failed.info.run_id, "FAILED")
    return uri


def test_groups_are_the_varying_params_and_stats_are_mean_and_sample_std(store):
    runs = compare.load_runs(store, "kbk", sweep="study")
    assert len(runs) == 6  # the FAILED run is left out
    group_by = compare.varying_params(runs)
    assert group_by == ["koopman.dim", "schedule.type"]  # seed varies too, but never defines a group
    rows = compare.table_rows(compare.group_runs(runs, group_by), group_by, ["val/ppl"])
    got = {(r["koopman.dim"], r["schedule.type"]): (r["n"], r["val/ppl mean"], r["val/ppl std"]) for r in rows}
    for key, ppls in VALUES.items():
        n, mean, std = got[key]
        assert n == len(ppls) and mean == pytest.approx(statistics.fmean(ppls))
        assert std == pytest.approx(statistics.stdev(ppls) if len(ppls) > 1 else 0.0)
    assert [(r["koopman.dim"], r["schedule.type"]) for r in rows] == [("128", "linear"), ("256", "linear"),
                                                                      ("256", "step")]


def test_cli_writes_csv_and_plot(store, tmp_path, capsys, monkeypatch):
    out_csv, out_png = tmp_path / "t.csv", tmp_path / "p.png"
    code = compare.main(["--uri", store, "--sweep", "study", "--group-by", "koopman.dim", "--metric", "val/ppl",
                         "--csv", str(out_csv), "--plot", str(out_png)])
    assert code == 0
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "koopman.dim,n,val/ppl mean,val/ppl std"
    row_256 = next(line for line in lines if line.startswith("256,"))
    assert row_256.split(",")[1] == "3" and math.isclose(float(row_256.split(",")[2]), 8.0)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "12 ± 2" in capsys.readouterr().out  # 128: mean 12, std 2


def test_no_matching_runs_is_one_clear_error(store, capsys):
    assert compare.main(["--uri", store, "--sweep", "nope"]) == 2
    assert "no runs match" in capsys.readouterr().err
