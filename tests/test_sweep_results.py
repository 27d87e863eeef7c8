"""Optuna's plots on a sweep's parent run are PNG files (readable offline), and drawing them leaves the
process's matplotlib style as it was."""

import matplotlib
import optuna

from kbk.sweep.results import write_plots


def test_sweep_plots_are_png_and_leave_the_style_alone(tmp_path):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_metric_names(["val/ppl"])

    def objective(trial):
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_categorical("k", [16, 64, 256])
        for step in range(3):
            trial.report(x + step, step)
        return (x - 0.3) ** 2 + y / 1000

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=8)
    def style():
        return {k: v for k, v in matplotlib.rcParams.items() if not k.startswith("backend")}

    before = style()
    written, errors = write_plots(tmp_path, study, ["val/ppl"])
    assert errors == []
    names = sorted(p.name for p in written)
    assert names == ["contour.png", "intermediate_values.png", "optimization_history.png",
                     "parallel_coordinate.png", "param_importances.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.html"))
    assert style() == before  # Optuna's ggplot style did not leak into later plots
