"""Notebook display: compact HTML tables with coloured statuses, and progress bars."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

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


def _table(title: str, rows: list[tuple[str, Any]], raw: set[str] | None = None) -> str:
    raw = raw or set()
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{v if k in raw else html.escape(str(v))}</td></tr>"
        for k, v in rows)
    return f"<table><caption style='text-align:left'><b>{html.escape(title)}</b></caption>{body}</table>"


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
    if job.result is not None:
        from .explain import summarise_result

        rows.append(("result", summarise_result(job.result)))
    if job.error:
        rows.append(("error", _last(job.error)))
    return _table("Job", rows, raw={"status"})


def asset_html(asset: VideoAsset) -> str:
    return _table("VideoAsset", [("id", asset.id), ("filename", asset.filename),
                                 ("duration", f"{asset.duration_ms / 1000:g} s "
                                              f"({asset.duration_ms} ms)"),
                                 ("created_at", _when(asset.created_at))])


def summary_html(summary: dict[str, Any]) -> str:
    if not summary.get("processed"):
        return f"<i>{html.escape(str(summary.get('message')))}</i>"
    from .explain import summarise_result

    rows: list[tuple[str, Any]] = [
        ("job_id", summary["job_id"]), ("job_type", summary["job_type"]),
        ("status", status_badge(summary["status"])),
        ("processing_time_ms", summary["processing_time_ms"]),
    ]
    if summary.get("result") is not None:
        rows.append(("result", summarise_result(summary["result"])))
    if summary.get("error"):
        rows.append(("error", summary["error"]))
    return _table("Step", rows, raw={"status"})


def stats_html(stats: WorkerStats) -> str:
    d = stats.as_dict()
    rate = stats.processed / stats.elapsed if stats.elapsed > 0 else 0.0
    colour = {"completed": "completed", "failed": "failed", "retried": "retry", "lost": "lost"}
    rows: list[tuple[str, Any]] = [
        (k, f"<b style='color:{STATUS_COLOURS[colour[k]]}'>{v}</b>" if k in colour and v else v)
        for k, v in d.items() if k != "elapsed_s"]
    rows.append(("elapsed", f"{d['elapsed_s']:.2f} s ({rate:.1f} jobs/s)"))
    return _table("Drain", rows, raw=set(colour))


def runner_html(runner: Runner) -> str:
    from .database import redact_url

    return _table("jobkit Runner", [
        ("database", redact_url(runner.engine.url)), ("backend", runner.backend),
        ("handlers", ", ".join(sorted(runner.handlers))),
        ("settings", repr(runner.settings)),
        ("views", "await runner.jobs() · clips() · status_counts() · explain(id) · "
                  "dashboard()"),
    ])


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


def _last(error: str | None) -> str | None:
    from .execute import last_line

    return last_line(error)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


class ProgressBar:
    """A tqdm bar whose total grows when retries bring back jobs already counted."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, n: int = 1) -> None:
        bar = self.bar
        if bar.total is not None and bar.n + n > bar.total:
            bar.total = bar.n + n
            container = getattr(bar, "container", None)  # the notebook widget's own max
            if container is not None:
                container.children[1].max = bar.total
        bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __repr__(self) -> str:
        return f"<ProgressBar {self.bar.n}/{self.bar.total}>"


def progress_bar(total: int, enabled: bool | None) -> ProgressBar | None:
    """A tqdm bar (a widget in Jupyter, text in a terminal), or None when off/unavailable.

    ``enabled=None`` means "only in a notebook"; ``False`` is silent.
    """
    if enabled is None:
        enabled = _in_notebook()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return ProgressBar(tqdm(total=total, unit="job", desc="drain", leave=True))
