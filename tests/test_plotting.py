"""Plot helpers: labels with units, artist counts, no pyplot state, one PNG each."""

from __future__ import annotations

import math
from collections.abc import Iterator

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle

from jobkit.plotting import (
    JobkitFigure,
    plot_latency,
    plot_status_counts,
    plot_throughput,
    plot_visual_scores,
)


@pytest.fixture(autouse=True)
def no_pyplot_figures() -> Iterator[None]:
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a plot helper left a pyplot figure open"


def clips() -> pd.DataFrame:
    return pd.DataFrame({
        "video_asset_id": ["a", "a", "a", "b", "b"],
        "filename": ["match.mp4"] * 3 + ["intro.mp4"] * 2,
        "start_ms": [0, 20_000, 40_000, 0, 20_000],
        "end_ms": [20_000, 40_000, 60_000, 20_000, 30_000],
        "visual_score": [0.2, 0.9, 0.5, 0.7, 0.1],
    })


def bars(ax: object) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]  # type: ignore[attr-defined]


def test_visual_scores_one_bar_per_clip_and_a_star_per_video() -> None:
    fig = plot_visual_scores(clips())
    assert isinstance(fig, JobkitFigure)
    ax, cbar = fig.axes  # the plot and its colorbar
    assert len(bars(ax)) == 5
    stars = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(stars) == 1 and len(stars[0].get_offsets()) == 2
    # Stars at the centre of each video's best clip: match 20–40 s (0.9), intro 0–20 s (0.7).
    assert stars[0].get_offsets().tolist() == [[30.0, 0.0], [10.0, 1.0]]
    assert [t.get_text() for t in ax.texts] == ["0.90", "0.70"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["match.mp4", "intro.mp4"]
    assert ax.get_xlabel() == "time in video (s)" and ax.get_ylabel() == "video"
    assert "visual_score" in cbar.get_ylabel()
    # Bars span the clip in seconds.
    first = bars(ax)[0]
    assert (first.get_x(), first.get_width()) == (0.0, 20.0)


def test_plot_on_a_given_ax_returns_its_figure_and_adds_no_figure() -> None:
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_status_counts({"completed": 2}, ax=ax) is fig
    assert len(bars(ax)) == 5
    with pytest.raises(TypeError, match="Axes"):
        plot_status_counts({"completed": 2}, ax="not an axes")  # type: ignore[arg-type]


def test_status_counts_bars_in_lifecycle_order_with_labels() -> None:
    counts = pd.Series({"failed": 1, "completed": 5, "pending": 2})
    fig = plot_status_counts(counts)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "pending", "processing", "retry", "completed", "failed"]
    assert [b.get_height() for b in bars(ax)] == [2, 0, 0, 5, 1]
    assert [t.get_text() for t in ax.texts] == ["2", "0", "0", "5", "1"]
    assert ax.get_ylabel() == "jobs" and ax.get_xlabel() == "status"
    assert "8 in all" in ax.get_title()
    with pytest.raises(ValueError, match="unknown status"):
        plot_status_counts({"done": 1})


def test_throughput_stacks_completed_under_failed() -> None:
    index = pd.date_range("2024-05-01 12:00", periods=3, freq="1min", tz="UTC",
                          name="finished_at")
    frame = pd.DataFrame({"completed": [2, 0, 1], "failed": [0, 1, 0]}, index=index)
    fig = plot_throughput(frame)
    ax = fig.axes[0]
    rects = bars(ax)
    assert len(rects) == 6
    assert [r.get_height() for r in rects] == [2, 0, 1, 0, 1, 0]
    assert [r.get_y() for r in rects[3:]] == [2, 0, 1], "failed sits on top of completed"
    assert ax.get_ylabel() == "jobs finished per 1 min" and ax.get_xlabel() == "time (UTC)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["completed", "failed"]
    with pytest.raises(ValueError, match="DatetimeIndex"):
        plot_throughput(pd.DataFrame({"completed": [1]}))


def test_latency_two_step_histograms_and_their_medians() -> None:
    jobs = pd.DataFrame({"wait_ms": [100.0, 200.0, 300.0, math.nan],
                         "run_ms": [10.0, 20.0, 40.0, math.nan]})
    fig = plot_latency(jobs, bins=8)
    ax = fig.axes[0]
    assert len([p for p in ax.patches if isinstance(p, Polygon)]) == 2
    medians = sorted(line.get_xdata()[0] for line in ax.lines)
    assert medians == [20.0, 200.0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "time (ms, log scale)" and ax.get_ylabel() == "jobs"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["wait (created → started): p50 200 ms", "run (started → finished): p50 20 ms"]
    with pytest.raises(ValueError, match="run_ms"):
        plot_latency(pd.DataFrame({"wait_ms": [1.0]}))
    with pytest.raises(ValueError, match="bins"):
        plot_latency(jobs, bins=0)


def test_empty_frames_draw_an_explanation_not_an_error() -> None:
    empty_clips = clips().iloc[:0]
    ax = plot_visual_scores(empty_clips).axes[0]
    assert "no clips yet" in ax.texts[0].get_text() and bars(ax) == []
    tp = pd.DataFrame({"completed": pd.Series(dtype="int64"), "failed": pd.Series(dtype="int64")},
                      index=pd.DatetimeIndex([], tz="UTC"))
    assert "no finished jobs" in plot_throughput(tp).axes[0].texts[0].get_text()
    lat = plot_latency(pd.DataFrame({"wait_ms": [math.nan], "run_ms": [math.nan]})).axes[0]
    assert "no started jobs" in lat.texts[0].get_text()


def test_missing_columns_and_wrong_types_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="lacks column.*visual_score"):
        plot_visual_scores(clips().drop(columns="visual_score"))
    with pytest.raises(TypeError, match="DataFrame"):
        plot_visual_scores([1, 2])  # type: ignore[arg-type]


def test_a_figure_renders_one_png_in_ipython() -> None:
    from IPython.core.formatters import DisplayFormatter

    fig = plot_status_counts({"completed": 1})
    data, _ = DisplayFormatter().format(fig)
    assert data["image/png"].startswith(b"\x89PNG")
    assert "text/html" not in data
    # Not registered with pyplot: the inline backend will not show it a second time.
    assert plt.get_fignums() == []
