"""Report figures: every series is told apart, however many groups a sweep has; panels wrap into rows."""

from __future__ import annotations

from kbk.compare.plots import PALETTE, PANELS_PER_ROW, metric_panels, series_style


def test_a_twelve_group_grid_draws_twelve_distinct_series():
    # The DMD study's 4 buffers × 3 owners: with colours alone, groups 1 and 10 looked the same.
    styles = [tuple(series_style(i).values()) for i in range(12)]
    assert len(set(styles)) == 12
    assert series_style(len(PALETTE))["color"] == series_style(0)["color"]  # the colour repeats, the dash does not
    assert series_style(len(PALETTE))["linestyle"] != series_style(0)["linestyle"]


def test_metric_panels_wrap_into_rows_of_three_without_empty_cells():
    fig, axes = metric_panels(8)
    assert len(axes) == 8 and len(fig.axes) == 8  # the ninth cell of the 3 × 3 grid is removed
    rows = {round(ax.get_position().y0, 3) for ax in axes}
    assert len(rows) == -(-8 // PANELS_PER_ROW)
    fig, axes = metric_panels(2)
    assert len(axes) == 2 and len({round(ax.get_position().y0, 3) for ax in axes}) == 1


def _curves(tmp_path, values_a, values_b):
    import pandas as pd

    from kbk.compare.plots import plot_curves

    def frames(values):
        return [pd.DataFrame({"step": [100, 200, 300, 400], "value": v}) for v in values]

    histories = {("linear",): {"m": frames(values_a)}, ("step",): {"m": frames(values_b)}}
    return plot_curves(histories, ["schedule.type"], ["m"], tmp_path / "curves.png", "t")


def test_a_curve_that_spans_decades_is_drawn_on_a_log_axis(tmp_path, monkeypatch):
    """The Koopman-mode perplexity falls from ~10,000 to ~115: on a linear axis the groups' end points, where they
    differ, sat on the floor of the panel."""
    import kbk.compare.plots as plots

    scales = []
    real = plots.plain_log_yaxis
    monkeypatch.setattr(plots, "plain_log_yaxis", lambda ax: (scales.append(ax), real(ax)))
    wide = [[9800.0, 170.0, 131.0, 115.0], [10100.0, 168.0, 130.0, 114.0]]
    _curves(tmp_path, wide, [[v * 1.01 for v in r] for r in wide])
    assert len(scales) == 1 and scales[0].get_yscale() == "log"
    low, high = scales[0].get_ylim()
    assert low < 114 and high > 10100  # every point drawn
    labels = [t.get_text() for t in scales[0].get_yticklabels() if t.get_text()]
    assert labels and not any("10^" in t or "{" in t for t in labels)  # plain numbers, not powers of ten

    scales.clear()
    narrow = [[220.0, 150.0, 120.0, 107.0], [218.0, 149.0, 119.0, 106.0]]
    _curves(tmp_path, narrow, narrow)
    assert scales == []  # a curve within 20x stays on a linear axis


def test_a_metric_panel_that_spans_decades_is_drawn_on_a_log_axis(tmp_path, monkeypatch):
    """The seed-claims study's final Koopman-mode PPL: 12,557 for the seed's run, 85 for kbk's; on a linear axis
    kbk's groups sat on the panel's floor, indistinguishable."""
    import pandas as pd

    import kbk.compare.plots as plots

    scales = []
    real = plots.plain_log_yaxis
    monkeypatch.setattr(plots, "plain_log_yaxis", lambda ax: (scales.append(ax), real(ax)))
    runs = pd.DataFrame({"params.model.causal": ["false"] * 3 + ["true"] * 3, "params.seed": ["0", "1", "2"] * 2,
                         "metrics.wide": [12000.0, 12500.0, 13100.0, 84.0, 85.0, 86.0],
                         "metrics.narrow": [105.0, 106.0, 107.0, 73.0, 73.2, 73.4]})
    plots.plot_metrics(runs, ["model.causal"], ["wide", "narrow"], tmp_path / "metrics.png", "t")
    assert len(scales) == 1 and scales[0].get_ylabel() == "wide" and scales[0].get_yscale() == "log"
    low, high = scales[0].get_ylim()
    assert low < 84 and high > 13100
