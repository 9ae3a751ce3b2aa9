"""Plot helpers: labels with units, artist counts, no pyplot state, one PNG each."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle

from jobkit.notebook.plots import (
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
    # Stars sit on the top edge of the bar (rows grow downwards), not over its middle.
    assert stars[0].get_offsets().tolist() == [[30.0, -0.3], [10.0, 0.7]]
    assert [t.get_text() for t in ax.texts] == ["0.90", "0.70"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["match.mp4 · 60 s",
                                                            "intro.mp4 · 30 s"]
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
    assert ax.get_ylabel() == "jobs finished per 1 min"
    assert ax.get_xlabel() == "time (UTC, 2024-05-01)"
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


def drawn(fig: Figure) -> None:
    fig.savefig(io.BytesIO(), format="png")  # lays out ticks and labels


def test_throughput_of_a_short_burst_reads_as_clock_times_with_headroom() -> None:
    index = pd.date_range("2026-11-29 05:58:54.100", periods=5, freq="100ms", tz="UTC",
                          name="finished_at")
    frame = pd.DataFrame({"completed": [3, 9, 4, 7, 2], "failed": [0, 2, 0, 1, 0]}, index=index)
    fig = plot_throughput(frame)
    ax = fig.axes[0]
    drawn(fig)
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) >= 3 and all(re.fullmatch(r"05:58:5\d\.\d", t) for t in labels), labels
    assert ax.xaxis.get_offset_text().get_text() == "", "no offset in the corner"
    assert ax.get_ylabel() == "jobs finished per 100 ms"
    tallest = max(r.get_y() + r.get_height() for r in bars(ax))
    assert tallest == 11 and ax.get_ylim()[1] >= 1.1 * tallest, "the tallest bar has headroom"


def test_throughput_minutes_show_hours_and_minutes_and_days_when_spanning_them() -> None:
    index = pd.date_range("2024-05-01 23:58", periods=4, freq="1min", tz="UTC")
    fig = plot_throughput(pd.DataFrame({"completed": [1, 2, 3, 4]}, index=index))
    drawn(fig)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert all(re.fullmatch(r"05-0[12] \d\d:\d\d", t) for t in labels), labels
    assert fig.axes[0].get_xlabel() == "time (UTC)"


def test_one_long_video_does_not_squeeze_the_short_ones() -> None:
    rows = [{"video_asset_id": "long", "filename": "full_match.mp4", "video_duration_ms": 3_600_000,
             "start_ms": s, "end_ms": s + 20_000, "visual_score": 0.5}
            for s in range(0, 3_600_000, 20_000)]
    for v in range(30):
        rows += [{"video_asset_id": f"s{v}", "filename": f"short_{v}.mp4",
                  "video_duration_ms": 40_000, "start_ms": s, "end_ms": s + 20_000,
                  "visual_score": 0.1 + 0.02 * v} for s in (0, 20_000)]
    fig = plot_visual_scores(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "position in video (% of its length)"
    span = ax.get_xlim()[1]
    rects = bars(ax)
    assert len(rects) == 180 + 60
    short = rects[180:]
    # Each short video fills its row as the long one does, instead of 1% of it.
    for first, second in zip(short[::2], short[1::2], strict=True):
        assert first.get_x() == 0 and second.get_x() + second.get_width() == pytest.approx(100)
        assert first.get_width() + second.get_width() >= 0.95 * span
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "full_match.mp4 · 1.0 h" and labels[1] == "short_0.mp4 · 40 s"
    with pytest.raises(ValueError, match="x must be"):
        plot_visual_scores(pd.DataFrame(rows), x="minutes")
    secs = plot_visual_scores(pd.DataFrame(rows), x="seconds").axes[0]
    assert secs.get_xlabel() == "time in video (s)"


def test_a_short_last_clip_is_visible_and_its_star_does_not_cover_it() -> None:
    frame = pd.DataFrame({"video_asset_id": ["t"] * 3, "filename": ["trailer.mp4"] * 3,
                          "video_duration_ms": [41_000] * 3,
                          "start_ms": [0, 20_000, 40_000], "end_ms": [20_000, 40_000, 41_000],
                          "visual_score": [0.2, 0.4, 0.63]})
    fig = plot_visual_scores(frame)
    ax = fig.axes[0]
    last = bars(ax)[2]
    span = ax.get_xlim()[1] - ax.get_xlim()[0]
    assert last.get_width() >= 0.019 * span, "not a hairline"
    assert last.get_x() + last.get_width() == pytest.approx(41.0), "kept inside the video"
    assert last.get_linewidth() <= 0.5, "a white edge does not eat a thin bar"
    star = next(c for c in ax.collections if isinstance(c, PathCollection))
    (sx, sy), = star.get_offsets().tolist()
    bar_top = last.get_y()
    assert sy == pytest.approx(bar_top) and sx == pytest.approx(last.get_x() + last.get_width() / 2)
    # The bar's colour shows below the star: its centre pixel is the clip's colour.
    fig.set_dpi(100)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    cx, cy = ax.transData.transform((last.get_x() + last.get_width() / 2,
                                     last.get_y() + last.get_height() * 0.75))
    pixel = np.asarray(canvas.buffer_rgba())[int(fig.bbox.height - cy), int(cx)][:3] / 255
    assert np.allclose(pixel, last.get_facecolor()[:3], atol=0.05), (pixel, last.get_facecolor())
