"""Notebook display: compact HTML tables with coloured statuses (plain HTML, no widget; the
progress bars are :mod:`jobkit.notebook.progress`)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import last_line

if TYPE_CHECKING:
    from .models import Job, VideoAsset
    from .runner import Runner
    from .worker import WorkerStats

STATUS_COLOURS = {
    "pending": "#6c757d", "processing": "#0d6efd", "retry": "#fd7e14",
    "completed": "#198754", "failed": "#dc3545", "lost": "#6f42c1", "unknown": "#6c757d",
}


def status_badge(status: Any) -> str:
    s = str(status)
    colour = STATUS_COLOURS.get(s, "#6c757d")
    return (f'<span style="background:{colour};color:white;padding:1px 6px;'
            f'border-radius:3px;font-size:90%">{html.escape(s)}</span>')


def summarise_result(result: Any) -> str:
    """A short phrase for a job's result (clips for ``cut_analysis``, keys otherwise)."""
    if isinstance(result, Mapping) and "clips_created" in result:
        n = result["clips_created"]
        text = f"{n} clip{'s' if n != 1 else ''} created"
        if isinstance(result.get("duration"), int | float):
            text += f" from a {result['duration'] / 1000:g} s video"
        scores = [float(v["visual_score"]) for v in result.get("variants") or []
                  if isinstance(v, Mapping) and isinstance(v.get("visual_score"), int | float)]
        if scores:
            text += f" (best visual_score {max(scores):.2f})"
        return text
    if result is None:
        return "no result (None)"
    text = repr(result)
    return text if len(text) <= 120 else text[:117] + "..."


def _table(title: str, rows: list[tuple[str, Any]], raw: set[str] | None = None, *,
           across: bool = False) -> str:
    """A titled key/value table: one row per key, or (``across``) keys side by side."""
    raw = raw or set()

    def cell(k: str, v: Any) -> str:
        return v if k in raw else html.escape(str(v))

    caption = f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>"
    if across:
        head = "".join(f"<th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                       for k, _ in rows)
        body = "".join(f"<td style='text-align:left;padding-right:1em'>{cell(k, v)}</td>"
                       for k, v in rows)
        return f"<table>{caption}<tr>{head}</tr><tr>{body}</tr></table>"
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{cell(k, v)}</td></tr>"
        for k, v in rows)
    return f"<table>{caption}{body}</table>"


def counts_html(counts: Any) -> str:
    """A Series of counts as a one-row table: status names as coloured badges, other
    labels (queue depth's ``eligible``/``scheduled``) as plain headers."""
    labels = [str(k) for k in counts.index]
    head = "".join(
        f"<th style='padding:0 8px;text-align:center'>"
        f"{status_badge(k) if k in STATUS_COLOURS else html.escape(k)}</th>" for k in labels)
    cells = "".join(f"<td title='{html.escape(k)}' style='text-align:center'>{int(v)}</td>"
                    for k, v in zip(labels, counts.to_numpy(), strict=True))
    caption = html.escape(f"{counts.name or 'count'} per {counts.index.name or 'key'}")
    return (f"<table><caption style='text-align:left'><b>{caption}</b></caption>"
            f"<tr>{head}</tr><tr>{cells}</tr></table>")


def job_html(job: Job) -> str:
    rows: list[tuple[str, Any]] = [
        ("id", job.id), ("job_type", job.job_type), ("status", status_badge(job.status)),
        ("attempts", f"{job.attempts}/{job.max_attempts}"), ("priority", job.priority),
        ("params", _short(job.params)), ("run_at", _when(job.run_at)),
        ("created_at", _when(job.created_at)),
    ]
    if job.started_at is not None:
        rows.append(("started_at", _when(job.started_at)))
    if job.finished_at is not None:
        rows.append(("finished_at", _when(job.finished_at)))
    if job.locked_by:
        rows.append(("locked_by", job.locked_by))
    if job.progress is not None:
        rows.append(("progress", progress_html(job.progress, job.progress_message,
                                               str(job.status))))
    if job.result is not None:
        rows.append(("result", summarise_result(job.result)))
    if job.error:
        rows.append(("error", last_line(job.error)))
    return _table("Job", rows, raw={"status", "progress"})


def progress_text(fraction: float | None, message: str | None = None) -> str:
    """``42% decoding 12.0/30.0 s`` (empty when the job never reported progress)."""
    if fraction is None:
        return ""
    return f"{fraction * 100:.0f}%" + (f" {message}" if message else "")


def progress_html(fraction: float | None, message: str | None = None,
                  status: str = "processing", width: int = 160) -> str:
    """A small bar (HTML, no widget) with the percentage and the message beside it."""
    if fraction is None:
        return ""
    pct = max(0.0, min(1.0, fraction)) * 100
    colour = STATUS_COLOURS.get(status, STATUS_COLOURS["processing"])
    text = html.escape(progress_text(fraction, message))
    return (f"<span style='display:inline-block;width:{width}px;height:10px;"
            f"background:#e9ecef;border-radius:3px;vertical-align:middle'>"
            f"<span style='display:block;width:{pct:.1f}%;height:100%;background:{colour};"
            f"border-radius:3px'></span></span> <span>{text}</span>")


def asset_html(asset: VideoAsset) -> str:
    rows: list[tuple[str, Any]] = [
        ("id", asset.id), ("filename", asset.filename),
        ("duration", f"{asset.duration_ms / 1000:g} s ({asset.duration_ms} ms)")]
    if asset.stored_path:
        rows.append(("file", f"{asset.stored_path} ({asset.size_bytes} bytes)"))
    if asset.width:
        rows.append(("video", f"{asset.width}x{asset.height} at {asset.fps or 0:g} fps"))
    rows.append(("created_at", _when(asset.created_at)))
    return _table("VideoAsset", rows)


def summary_html(summary: dict[str, Any], *, across: bool = False) -> str:
    if not summary.get("processed"):
        return f"<i>{html.escape(str(summary.get('message')))}</i>"
    rows: list[tuple[str, Any]] = [
        ("job_id", summary["job_id"]), ("job_type", summary["job_type"]),
        ("status", status_badge(summary["status"])),
        ("processing_time_ms", summary["processing_time_ms"]),
    ]
    if summary.get("result") is not None:
        rows.append(("result", summarise_result(summary["result"])))
    if summary.get("error"):
        rows.append(("error", summary["error"]))
    return _table("Step", rows, raw={"status"}, across=across)


def stats_html(stats: WorkerStats, *, across: bool = False) -> str:
    d = stats.as_dict()
    colour = {"completed": "completed", "failed": "failed", "retried": "retry", "lost": "lost"}
    rows: list[tuple[str, Any]] = [
        (k, f"<b style='color:{STATUS_COLOURS[colour[k]]}'>{v}</b>" if k in colour and v else v)
        for k, v in d.items() if k != "elapsed_s"]
    rows.append(("elapsed", f"{d['elapsed_s']:.2f} s "
                            f"({rate_text(stats.processed, stats.elapsed)})"))
    return _table("Drain", rows, raw=set(colour), across=across)


def rate_text(done: int, seconds: float) -> str:
    """``12.3 jobs/s``: the Drain table's rate, also shown by the drain's progress bar."""
    return f"{done / seconds if seconds > 0 else 0.0:.1f} jobs/s"


def runner_html(runner: Runner) -> str:
    from .urls import redact_url

    return _table("jobkit Runner", [
        ("database", redact_url(runner.engine.url)), ("backend", runner.backend),
        ("handlers", ", ".join(sorted(runner.handlers))),
        ("settings", repr(runner.settings)),
        ("views", "await runner.jobs() · clips() · status_counts() · explain(id) · "
                  "dashboard()"),
    ])


class HTML:
    """Ready-made HTML that a notebook shows as such (``str()`` gives the markup)."""

    def __init__(self, markup: str, text: str = "") -> None:
        self.markup = markup
        self.text = text

    def _repr_html_(self) -> str:
        return self.markup

    def __str__(self) -> str:
        return self.markup

    def __repr__(self) -> str:
        return f"<HTML {self.text or len(self.markup)}>"


def thumbnail_strip(frame: Any, title: str | None = None) -> HTML:
    """One video's clips as a row of thumbnails (data-URI JPEGs) with their times and
    scores; ``frame`` is :func:`jobkit.notebook.frames.clip_thumbnails`. The best clip is
    outlined."""
    import base64

    rows = list(frame.itertuples(index=False))
    best = max((r.visual_score for r in rows), default=None)
    cells = []
    for r in rows:
        if r.thumbnail is not None:
            data = base64.b64encode(bytes(r.thumbnail)).decode("ascii")
            img = (f"<img src='data:image/jpeg;base64,{data}' width='120' "
                   f"alt='clip at {r.start_ms / 1000:g} s'>")
        else:
            img = "<div style='width:120px;height:68px;background:#eee'></div>"
        edge = "3px solid #198754" if r.visual_score == best else "3px solid transparent"
        cells.append(f"<td style='text-align:center;padding:2px;border:{edge}'>{img}<br>"
                     f"<small>{r.start_ms / 1000:.1f}-{r.end_ms / 1000:.1f} s<br>"
                     f"<b>{r.visual_score:.2f}</b></small></td>")
    caption = (f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>"
               if title else "")
    return HTML(f"<table>{caption}<tr>{''.join(cells)}</tr></table>",
                f"{len(rows)} thumbnails")


def progress_table(frame: Any) -> HTML:
    """Running jobs with a bar each; ``frame`` is :func:`jobkit.notebook.frames.running_progress`."""
    rows = []
    for r in frame.itertuples(index=False):
        p = None if r.progress != r.progress else float(r.progress)  # NaN: none reported
        bar = progress_html(p, r.progress_message) if p is not None else "<i>no progress</i>"
        rows.append(f"<tr><td><code>{html.escape(str(r.job_id)[:8])}</code></td>"
                    f"<td>{html.escape(str(r.job_type))}</td><td>{bar}</td>"
                    f"<td>{r.running_s:.0f} s</td></tr>")
    if not rows:
        return HTML("<i>no job is running</i>", "no job running")
    head = "<tr><th>job</th><th>type</th><th>progress</th><th>running</th></tr>"
    return HTML(f"<table>{head}{''.join(rows)}</table>", f"{len(rows)} running")


def _when(value: Any) -> str:
    """A datetime as ``YYYY-MM-DD HH:MM:SS.mmm UTC`` (empty for None)."""
    if value is None:
        return ""
    try:
        return f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond // 1000:03d} UTC"
    except (TypeError, ValueError, AttributeError):
        return str(value)


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
