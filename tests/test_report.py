"""kbk.report on a real MLflow store: the README it writes carries the reproducing command, the tables with the
numbers of the store, the findings only where the interval excludes zero, the diagnostics, the unfinished trials
and their reasons; its plots are PNG files; it is logged on the sweep's parent run; bad input is one line."""

import pytest
from mlflow import MlflowClient
from sweep_store import COMMAND, build_store

from kbk.report import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store"))


def test_report_reads_well_and_is_logged_on_the_parent(store, tmp_path, capsys):
    uri, pid = store
    out = tmp_path / "report"
    assert main(["--uri", uri, "--sweep", "grid", "--baseline", "koopman.dim=256", "--metric", "val/ppl",
                 "--question", "Does koopman_dim matter?", "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert text.startswith("# Study: grid\n\nDoes koopman_dim matter?")
    assert f"`{COMMAND}`" in text  # the command that reproduces the sweep, from the parent's tag
    assert "| 128 | 2 | 198.0 ± 2.8 |" in text and "| 512 | 3 | 180.0 ± 1.0 |" in text
    # 128 − 256 paired over seeds 0, 1: +9.5 with t(1) interval [3.1, 15.9]: a finding; 512 is Welch (unpaired)
    assert "**koopman.dim=128** vs koopman.dim=256: val/ppl +9.5 [3.1, 15.9] (paired over 2 seeds)" in text
    assert "koopman.dim=512 vs koopman.dim=256: val/ppl" in text
    # layer 0 of dim 128, means of seeds 0 and 1: the standard model on the layer-wise tokens (the number the
    # one-layer passes are read against), its Koopman-only pass, the spectral radius
    assert "| 128 | 0 | 178.0 | 188.0 | 1.050 |" in text
    assert "| trial-7 | FAILED | 1024 | 0 | ConfigError: out of memory |" in text
    assert "| trial-8 | KILLED | 512 | 3 | pruned |" in text
    assert "model.d_model: 64" in text and "paths.outputs" not in text and "tracking.uri" not in text
    for name in ("metrics.png", "curves.png", "differences.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![paired differences against the baseline](differences.png)" in text
    logged = {a.path for a in MlflowClient(uri).list_artifacts(pid, "report")}
    assert logged == {"report/README.md", "report/metrics.png", "report/curves.png", "report/differences.png"}
    assert MlflowClient(uri).get_run(pid).info.status == "FINISHED"  # logging did not reopen the parent
    assert f"logged on the sweep's parent run {pid}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--sweep", "nope"], "no sweep 'nope'"),
    (["--sweep", "dead"], "sweep 'dead' has no finished trials"),
    (["--sweep", "grid", "--metric", "val/nope"], "no selected run has the metric 'val/nope'"),
])
def test_bad_input_is_one_line(store, tmp_path, capsys, args, message):
    uri, _ = store
    out = tmp_path / "r"
    assert main(["--uri", uri, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_a_report_of_an_unfinished_sweep_says_it_is_partial():
    import pandas as pd

    from kbk.report import planned_note

    parent = pd.Series({"tags.kbk.n_trials": "24"})
    note = planned_note(parent, {"FINISHED": 9, "RUNNING": 1})
    assert note.startswith("**Partial: 9 of 24 trials ended** (15 still to run")
    assert planned_note(parent, {"FINISHED": 22, "KILLED": 1, "FAILED": 1}) == ""  # the budget is spent
    assert planned_note(pd.Series({}, dtype=object), {"FINISHED": 3}) == ""  # a plain multirun: no budget known
    assert planned_note(None, {"FINISHED": 3}) == ""


def _red_pixels(path) -> int:
    """Pixels of the palette's red (#d62728), the colour of a finding in the differences plot."""
    import numpy as np
    from matplotlib.image import imread

    rgb = (imread(path)[..., :3] * 255).round().astype(int)
    return int((np.abs(rgb - np.array([214, 39, 40])).sum(axis=-1) < 30).sum())


def test_differences_plot_marks_findings_only(tmp_path):
    import pandas as pd

    from kbk.compare.plots import plot_differences

    def frame(low: float, high: float) -> pd.DataFrame:
        return pd.DataFrame([
            {"koopman.dim": 16, "metric": "val/ppl", "n": 3, "paired": True, "diff": (low + high) / 2,
             "ci_low": low, "ci_high": high, "rel_diff": 0.0, "excludes_zero": low > 0 or high < 0},
            {"koopman.dim": 64, "metric": "val/ppl", "n": 3, "paired": True, "diff": 0.1, "ci_low": -1.0,
             "ci_high": 1.2, "rel_diff": 0.0, "excludes_zero": False}])

    finding = plot_differences(frame(2.0, 4.0), ["koopman.dim"], ["val/ppl"], tmp_path / "f.png", "s", "dim=256")
    none = plot_differences(frame(-2.0, 4.0), ["koopman.dim"], ["val/ppl"], tmp_path / "n.png", "s", "dim=256")
    assert _red_pixels(finding) > 50 and _red_pixels(none) == 0


def test_one_study_run_as_two_sweeps_is_one_report_logged_on_both_parents(tmp_path):
    from sweep_store import _run

    uri, first = build_store(tmp_path / "store")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kbk").experiment_id
    second = client.create_run(exp, run_name="sweep-more", tags={"kbk.role": "sweep", "kbk.sweep": "more",
                                                                  "kbk.command": "second command",
                                                                  "kbk.n_trials": "3"}).info.run_id
    client.log_param(second, "sweep.params.koopman.dim", "CategoricalDistribution(choices=(2048,))")
    for seed, ppl in ((0, 170.0), (1, 168.0)):
        _run(client, exp, f"more-{seed}", {"koopman.dim": "2048", "seed": seed, "model.d_model": "64"},
             {"val/ppl": ppl}, {"kbk.role": "trial", "kbk.sweep": "more", "mlflow.parentRunId": second})
    out = tmp_path / "report"
    assert main(["--uri", uri, "--sweep", "grid", "more", "--baseline", "koopman.dim=256", "--metric", "val/ppl",
                 "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert text.startswith("# Study: grid + more\n")
    assert "| 2048 | 2 | 169.0 ± 1.4 |" in text and "| 128 | 2 | 198.0 ± 2.8 |" in text
    # 2048 − 256 paired over seeds 0, 1: (170 − 190, 168 − 187) = (−20, −19)
    assert "**koopman.dim=2048** vs koopman.dim=256: val/ppl -19.5" in text
    assert "**Partial:" not in text  # the first sweep's budget is unknown: no total to be partial of
    assert f"`{COMMAND}; second command`" in text
    for pid in (first, second):
        assert {a.path for a in client.list_artifacts(pid, "report")} >= {"report/README.md"}
