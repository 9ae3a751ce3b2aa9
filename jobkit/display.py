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
    return _table("Job", [
        ("id", job.id), ("job_type", job.job_type), ("status", status_badge(job.status)),
        ("attempts", f"{job.attempts}/{job.max_attempts}"), ("priority", job.priority),
        ("params", job.params), ("run_at", job.run_at), ("created_at", job.created_at),
        ("finished_at", job.finished_at), ("error", _last(job.error)),
    ], raw={"status"})


def asset_html(asset: VideoAsset) -> str:
    return _table("VideoAsset", [("id", asset.id), ("filename", asset.filename),
                                 ("duration_ms", asset.duration_ms),
                                 ("created_at", asset.created_at)])


def summary_html(summary: dict[str, Any]) -> str:
    if not summary.get("processed"):
        return f"<i>{html.escape(str(summary.get('message')))}</i>"
    result = summary.get("result")
    if isinstance(result, dict) and "clips_created" in result:
        result = f"{result['clips_created']} clips from {result.get('duration')} ms"
    return _table("Step", [
        ("job_id", summary["job_id"]), ("job_type", summary["job_type"]),
        ("status", status_badge(summary["status"])),
        ("processing_time_ms", summary["processing_time_ms"]),
        ("result", result), ("error", summary.get("error")),
    ], raw={"status"})


def stats_html(stats: WorkerStats) -> str:
    d = stats.as_dict()
    return _table("Drain", [(k, v) for k, v in d.items()])


def runner_html(runner: Runner) -> str:
    from .database import redact_url

    return _table("jobkit Runner", [("database", redact_url(runner.engine.url)),
                                    ("handlers", ", ".join(sorted(runner.handlers)))])


def _last(error: str | None) -> str | None:
    from .worker import last_line

    return last_line(error)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def progress_bar(total: int, enabled: bool | None) -> Any:
    """A tqdm bar (a widget in Jupyter, text in a terminal), or None when off/unavailable."""
    if enabled is None:
        enabled = _in_notebook()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="job", desc="drain", leave=True)
