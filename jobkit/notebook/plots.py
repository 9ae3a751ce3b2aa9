"""Plots of jobkit's monitoring frames, with matplotlib and no global pyplot state (also
importable as ``jobkit.plotting``).

Every helper draws on the ``ax=`` you pass, or on a new figure it builds itself,
and **returns the Figure** it drew on (``ax.figure`` when you passed ``ax``; the
Axes is then the one you gave, else ``fig.axes[0]``).

In a notebook, a figure built here shows exactly once as the cell's value: it is
not registered with pyplot, so the inline backend does not show it a second time
at the end of the cell, and it renders itself as a PNG (``_repr_png_``) even when
pyplot was never imported. If you pass an ``ax`` from ``pyplot.subplots()``,
pyplot owns that figure and shows it itself: end the line with ``;`` (or assign
the result) so it is not shown twice.
"""

from __future__ import annotations

from ..extras import require

require("jobkit.notebook.plots", 'pandas', 'matplotlib')

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.dates import AutoDateLocator, date2num, num2date
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

from ..display import STATUS_COLOURS
from ..models import ALL_STATUSES

__all__ = ["JobkitFigure", "plot_dependencies", "plot_latency", "plot_status_counts",
           "plot_throughput", "plot_visual_scores"]


class JobkitFigure(Figure):
    """A matplotlib Figure that renders itself as a PNG in Jupyter (once)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def _axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax
    fig = JobkitFigure(figsize=size, layout="constrained")
    return fig.add_subplot()


def _figure(ax: Axes) -> Figure:
    """The root Figure of ``ax`` (an Axes may live in a SubFigure)."""
    fig: Any = ax.figure
    while not isinstance(fig, Figure):
        fig = fig.figure
    return fig


def _require(frame: Any, columns: list[str], what: str, hint: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} needs a DataFrame ({hint}), got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: the frame lacks column(s) {', '.join(missing)} ({hint})")
    return frame


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            color="#6c757d")


# ---------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------
def plot_visual_scores(clips: pd.DataFrame, ax: Axes | None = None, *,
                       cmap: str = "viridis", x: str = "auto") -> Figure:
    """Each video's clips along its timeline, coloured by ``visual_score``; ★ marks the best.

    Args:
        clips: a frame like :func:`jobkit.notebook.frames.clips_frame`'s (needs ``filename``,
            ``start_ms``, ``end_ms``, ``visual_score``; ``video_asset_id`` when two videos
            share a filename; ``video_duration_ms`` for each video's true length).
        ax: draw here instead of on a new figure.
        cmap: a matplotlib colormap name for the scores (0 → 1).
        x: ``"seconds"`` (time in video), ``"percent"`` (each video's timeline scaled to
            its own length, so a 1-hour video does not squeeze short ones into a sliver)
            or ``"auto"``: percent when the longest video is over 4× the shortest.

    Returns:
        The Figure (one row per video, labelled with its length; a colorbar for the
        score). A clip too short to see at the plot's scale is drawn at a minimum visible
        width, and each video's ★ sits on the top edge of its best clip, so the clip's
        colour stays visible.
    """
    hint = "use `await runner.clips()` or jobkit.monitoring.clips_frame(db)"
    clips = _require(clips, ["filename", "start_ms", "end_ms", "visual_score"],
                     "plot_visual_scores", hint)
    if x not in ("auto", "seconds", "percent"):
        raise ValueError(f"x must be 'auto', 'seconds' or 'percent', got {x!r}")
    clips = clips.reset_index(drop=True)
    key = "video_asset_id" if "video_asset_id" in clips.columns else "filename"
    videos = list(dict.fromkeys(clips[key]))
    ax = _axes(ax, (9.0, max(2.6, 0.5 * len(videos) + 1.6)))
    fig = _figure(ax)
    norm = Normalize(0.0, 1.0)
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    row = {v: i for i, v in enumerate(videos)}
    y = clips[key].map(row).to_numpy(dtype=float)
    start_s = clips["start_ms"].to_numpy(dtype=float) / 1000.0
    end_s = clips["end_ms"].to_numpy(dtype=float) / 1000.0
    scores = clips["visual_score"].to_numpy(dtype=float)
    if len(clips):
        by_video = clips.groupby(key, sort=False)
        video_s = by_video["end_ms"].max().reindex(videos).to_numpy(dtype=float) / 1000.0
        if "video_duration_ms" in clips.columns:
            video_s = np.maximum(video_s, by_video["video_duration_ms"].max().reindex(videos)
                                 .to_numpy(dtype=float) / 1000.0)
        if x == "auto":
            x = "percent" if video_s.max() > 4 * max(video_s.min(), 1e-9) else "seconds"
        if x == "percent":
            scale = 100.0 / video_s[y.astype(int)]
            start_s, end_s, ends = start_s * scale, end_s * scale, np.full(len(videos), 100.0)
        else:
            ends = video_s
        span = float(ends.max())
        left, width = _visible(start_s, end_s, ends[y.astype(int)], span * 0.02)
        ax.barh(y, width, left=left, height=0.6, color=mappable.to_rgba(scores),
                edgecolor="white", linewidth=0.5)
        best = clips.groupby(key, sort=False)["visual_score"].idxmax()
        pos = [int(i) for i in best.to_numpy()]  # positions: the index was reset above
        bx = [left[k] + width[k] / 2 for k in pos]
        by = [row[v] - 0.3 for v in best.index]  # the top edge of the bar (y grows down)
        ax.scatter(bx, by, marker="*", s=110, color="white", edgecolor="black",
                   linewidth=0.8, zorder=3, label="best clip")
        for xx, yy, k in zip(bx, by, pos, strict=True):
            ax.annotate(f"{scores[k]:.2f}", (xx, yy), xytext=(7, 0),
                        textcoords="offset points", ha="left", va="center", fontsize=8,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                              "alpha": 0.8})
        names = (clips.drop_duplicates(key).set_index(key)["filename"]
                 .reindex(videos).astype(str).tolist())
        ax.set_yticks(range(len(videos)),
                      [f"{n} · {_duration(s)}" for n, s in zip(names, video_s, strict=True)])
        ax.set_ylim(len(videos) - 0.4, -0.75)
        ax.set_xlim(0, span * 1.02)
    else:
        _empty_note(ax, "no clips yet: run some cut_analysis jobs")
        ax.set_yticks([])
    fig.colorbar(mappable, ax=ax, label="visual_score (0–1)", fraction=0.04, pad=0.02)
    ax.set_xlabel("position in video (% of its length)" if x == "percent"
                  else "time in video (s)")
    ax.set_ylabel("video")
    ax.set_title("Candidate clips by visual_score (★ = best clip of each video)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _visible(start: np.ndarray, end: np.ndarray, video_end: np.ndarray,
             least: float) -> tuple[np.ndarray, np.ndarray]:
    """Bars at least ``least`` wide, kept inside their video (a short last clip grows left)."""
    width = np.maximum(end - start, least)
    left = np.clip(np.minimum(start, video_end - width), 0.0, None)
    return left, width


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


# ---------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------
def _as_throughput(data: pd.DataFrame | pd.Series) -> pd.DataFrame:
    if isinstance(data, pd.Series):
        data = data.to_frame(name=str(data.name or "completed"))
    if not isinstance(data, pd.DataFrame):
        raise TypeError("plot_throughput needs the frame of `await runner.throughput()` "
                        f"(or a Series of counts by time), got {type(data).__name__}")
    if not isinstance(data.index, pd.DatetimeIndex):
        raise ValueError("plot_throughput needs a DatetimeIndex of interval starts; use "
                         "`await runner.throughput()` or jobkit.monitoring.throughput(db)")
    return data


def plot_throughput(series: pd.DataFrame | pd.Series, ax: Axes | None = None) -> Figure:
    """Jobs finished per interval as stacked bars (``completed`` below, ``failed`` above).

    Args:
        series: :func:`jobkit.notebook.frames.throughput`'s frame (or a Series of counts
            indexed by interval start).
        ax: draw here instead of on a new figure.

    Returns:
        The Figure; x is time (UTC), y is jobs per interval.
    """
    data = _as_throughput(series)
    ax = _axes(ax, (9.0, 3.6))
    fig = _figure(ax)
    index = pd.DatetimeIndex(data.index)
    times = (index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index)
    step = _interval(index)
    width_days = step.total_seconds() / 86400.0 * 0.85
    bottom = np.zeros(len(data))
    colours = {"completed": STATUS_COLOURS["completed"], "failed": STATUS_COLOURS["failed"]}
    for column in data.columns:
        values = data[column].to_numpy(dtype=float)
        ax.bar(times.to_numpy(), values, width=width_days, bottom=bottom, align="edge",
               color=colours.get(str(column)), label=str(column))
        bottom = bottom + values
    if len(data) == 0:
        _empty_note(ax, "no finished jobs yet")
    else:
        locator = AutoDateLocator(minticks=3, maxticks=8)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        # Whole clock times on every tick, no offset text in the corner ("54.1 54.2 …"
        # plus "+2026-11-29 05:58" was the ConciseDateFormatter's way for short spans).
        ax.xaxis.set_major_formatter(FuncFormatter(_clock(step, times)))
        top = float(bottom.max()) if len(bottom) else 0.0
        ax.set_ylim(0, max(1.0, top * 1.15))  # headroom: the tallest bar stays off the frame
        pad = width_days / 0.85
        first, last = (float(date2num(t))  # type: ignore[no-untyped-call]
                       for t in (times[0].to_pydatetime(), times[-1].to_pydatetime()))
        ax.set_xlim(first - pad / 2, last + pad * 1.5)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("time (UTC)" if len(data) == 0 or times[0].date() != times[-1].date()
                  else f"time (UTC, {times[0]:%Y-%m-%d})")
    ax.set_ylabel(f"jobs finished per {_describe(step)}")
    ax.set_title("Throughput")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _clock(step: pd.Timedelta, times: pd.DatetimeIndex) -> Any:
    """A tick formatter: ``HH:MM`` (minute bins or more), ``HH:MM:SS``, or with tenths of
    a second for sub-second bins; the date too when the data spans several days."""
    many_days = len(times) > 0 and times[0].date() != times[-1].date()
    seconds = step.total_seconds()

    def fmt(value: float, _pos: Any = None) -> str:
        when = num2date(value)  # type: ignore[no-untyped-call]
        text = f"{when:%H:%M}" if seconds >= 60 else f"{when:%H:%M:%S}"
        if seconds < 1:
            text += f".{when.microsecond // 100_000}"
        return f"{when:%m-%d} {text}" if many_days else text

    return fmt


def _interval(index: pd.DatetimeIndex) -> pd.Timedelta:
    if index.freq is not None:
        try:
            return pd.Timedelta(index.freq.nanos, unit="ns")
        except ValueError:  # a calendar offset (month…) has no fixed length
            pass
    if len(index) > 1:
        return pd.Timedelta(np.diff(index.asi8).min(), unit=index.unit)
    return pd.Timedelta(minutes=1)


def _describe(step: pd.Timedelta) -> str:
    seconds = step.total_seconds()
    for unit, size in (("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}"
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


# ---------------------------------------------------------------------------
# Status counts
# ---------------------------------------------------------------------------
def plot_status_counts(counts: pd.Series | Mapping[str, int], ax: Axes | None = None) -> Figure:
    """Jobs per status as coloured bars, in lifecycle order, each labelled with its count.

    Args:
        counts: :func:`jobkit.notebook.frames.status_counts`'s Series, or a ``{status: n}`` dict.
        ax: draw here instead of on a new figure.

    Returns:
        The Figure.
    """
    if isinstance(counts, Mapping):
        counts = pd.Series(dict(counts), dtype="int64")
    if not isinstance(counts, pd.Series):
        raise TypeError("plot_status_counts needs `await runner.status_counts()` or a "
                        f"{{status: count}} dict, got {type(counts).__name__}")
    order = [s.value for s in ALL_STATUSES]
    found = {str(k): v for k, v in counts.items()}
    unknown = sorted(set(found) - set(order))
    if unknown:
        raise ValueError(f"unknown status(es) {', '.join(unknown)}; expected {', '.join(order)}")
    values = [int(found.get(s, 0)) for s in order]
    ax = _axes(ax, (6.5, 3.4))
    fig = _figure(ax)
    bars = ax.bar(order, values, color=[STATUS_COLOURS[s] for s in order])
    ax.bar_label(bars, labels=[str(v) for v in values], padding=2)
    ax.set_ylim(0, max(values + [1]) * 1.18)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("status")
    ax.set_ylabel("jobs")
    ax.set_title(f"Jobs per status ({sum(values)} in all)")
    ax.grid(axis="y", alpha=0.3)
    return fig


# ---------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------
def plot_latency(jobs: pd.DataFrame, ax: Axes | None = None, *, bins: int = 30) -> Figure:
    """Distributions of wait time (created → started) and run time (started → finished).

    Both are drawn as step histograms on one log-scaled millisecond axis (waits and runs
    often differ by orders of magnitude), with a dashed line at each median.

    Args:
        jobs: :func:`jobkit.notebook.frames.jobs_frame`'s frame (needs ``wait_ms``, ``run_ms``).
        ax: draw here instead of on a new figure.
        bins: number of log-spaced bins.

    Returns:
        The Figure.
    """
    jobs = _require(jobs, ["wait_ms", "run_ms"], "plot_latency",
                    "use `await runner.jobs()` or jobkit.monitoring.jobs_frame(db)")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins!r}")
    ax = _axes(ax, (8.0, 3.6))
    fig = _figure(ax)
    series = {
        "wait (created → started)": jobs["wait_ms"].dropna().to_numpy(dtype=float),
        "run (started → finished)": jobs["run_ms"].dropna().to_numpy(dtype=float),
    }
    colours = ["#6c757d", "#0d6efd"]
    every = np.concatenate(list(series.values()))
    if every.size == 0:
        _empty_note(ax, "no started jobs yet")
    else:
        low = max(0.1, float(every[every > 0].min()) if (every > 0).any() else 0.1)
        high = max(low * 10, float(every.max()))
        edges = np.geomspace(low * 0.9, high * 1.1, bins + 1)
        for (label, values), colour in zip(series.items(), colours, strict=True):
            if values.size == 0:
                continue
            median = float(np.median(values))
            ax.hist(np.clip(values, edges[0], edges[-1]), bins=edges.tolist(), histtype="step",
                    linewidth=2, color=colour, label=f"{label}: p50 {median:,.0f} ms")
            ax.axvline(median, color=colour, linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=2, frameon=False)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("time (ms, log scale)")
    ax.set_ylabel("jobs")
    ax.set_title("Wait and run times")
    ax.grid(alpha=0.3)
    return fig


def plot_dependencies(jobs: pd.DataFrame, edges: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """A pipeline's dependency graph: one box per job (its ``job_type``, coloured by
    status), an arrow from each job to the jobs waiting for it, left to right by depth.

    Args:
        jobs: ``runner.jobs()`` (columns ``id``, ``job_type``, ``status``).
        edges: ``runner.dependencies()`` (columns ``job_id``, ``depends_on``).
    """
    hint = "use runner.jobs() and runner.dependencies()"
    jobs = _require(jobs, ["id", "job_type", "status"], "plot_dependencies", hint)
    edges = _require(edges, ["job_id", "depends_on"], "plot_dependencies", hint)
    ax = _axes(ax, (7.0, 3.6))
    ids = [str(i) for i in jobs["id"]]
    known = set(ids)
    pairs = [(str(a), str(b)) for a, b in zip(edges["depends_on"], edges["job_id"], strict=True)
             if str(a) in known and str(b) in known]
    if not ids:
        _empty_note(ax, "no jobs")
        ax.set_axis_off()
        return _figure(ax)
    parents: dict[str, list[str]] = {i: [] for i in ids}
    for before, after in pairs:
        parents[after].append(before)
    depth: dict[str, int] = {}

    def level(node: str, seen: frozenset[str] = frozenset()) -> int:
        if node not in depth:
            ups = [p for p in parents[node] if p not in seen]
            depth[node] = 1 + max((level(p, seen | {node}) for p in ups), default=-1)
        return depth[node]

    for i in ids:
        level(i)
    columns: dict[int, list[str]] = {}
    for i in ids:
        columns.setdefault(depth[i], []).append(i)
    pos: dict[str, tuple[float, float]] = {}
    for d, members in columns.items():
        for k, node in enumerate(members):
            pos[node] = (float(d), (len(members) - 1) / 2 - k)
    for before, after in pairs:
        ax.annotate("", xy=pos[after], xytext=pos[before],
                    arrowprops={"arrowstyle": "-|>", "color": "#495057", "lw": 1.2,
                                "shrinkA": 30, "shrinkB": 34})
    info = jobs.assign(id=ids).set_index("id")
    for node, (x, y) in pos.items():
        status = str(info.at[node, "status"])
        ax.text(x, y, f"{str(info.at[node, 'job_type'])}\n{status}", ha="center", va="center",
                fontsize=9, color="white",
                bbox={"boxstyle": "round,pad=0.5", "fc": STATUS_COLOURS.get(status, "#6c757d"),
                      "ec": "none"})
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_axis_off()
    ax.set_title("dependencies (arrows: runs before)")
    return _figure(ax)
