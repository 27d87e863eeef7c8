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
