"""The JSON shapes both faces emit: ``jobkit … --json`` and the HTTP API build their dicts here.

One function per object, so a job, an upload or a schedule reads the same to a script
whichever face it asked. The HTTP routes validate these dicts into their response models
(which pick the documented fields and serialise the times); the command line prints them.
Where the two faces document different fields for the same facts (``jobkit status`` and
``GET /health``), they share the pieces below rather than one dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .durations import attempt_ms
from .models import Job, VideoAsset


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def processing_ms(job: Job) -> int | None:
    """Milliseconds of the job's last attempt, when it has finished (:func:`attempt_ms`)."""
    return attempt_ms(job.started_at, job.finished_at)


def job_dict(job: Job) -> dict[str, Any]:
    """A job as JSON data (ids and times as strings)."""
    return {
        "id": str(job.id), "job_type": job.job_type, "queue": job.queue,
        "status": str(job.status),
        "params": job.params, "result": job.result, "error": job.error,
        "attempts": job.attempts, "max_attempts": job.max_attempts, "priority": job.priority,
        "timeout": job.timeout, "dedupe_key": job.dedupe_key,
        "cancel_requested": bool(job.cancel_requested), "run_at": iso(job.run_at),
        "created_at": iso(job.created_at), "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "locked_by": job.locked_by, "locked_until": iso(job.locked_until),
        "processing_time_ms": processing_ms(job),
        "progress": job.progress, "progress_message": job.progress_message,
        "progress_at": iso(job.progress_at),
    }


def enqueued_dict(job: Job) -> dict[str, Any]:
    """An enqueued job, saying whether it was an unfinished one already under its dedupe key."""
    return {**job_dict(job), "deduplicated": job.deduplicated}


def upload_dict(asset: VideoAsset, job: Job) -> dict[str, Any]:
    """An uploaded video and its analysis job. ``POST /upload`` documents a subset of it (no
    ``stored_path``, ``width``, ``height``, ``fps``: a server's paths are its own) and adds
    ``stored``."""
    return {"video_asset_id": str(asset.id), "job_id": str(job.id), "job_type": job.job_type,
            "status": str(job.status), "filename": asset.filename,
            "duration_ms": asset.duration_ms, "stored_path": asset.stored_path,
            "size_bytes": asset.size_bytes, "width": asset.width, "height": asset.height,
            "fps": asset.fps}


def schedule_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored schedule (a row of :func:`jobkit.schedules.list_schedules`)."""
    return {"name": row["name"], "job_type": row["job_type"], "queue": row["queue"],
            "cron": row["cron"], "every_seconds": row["every_seconds"],
            "paused": bool(row["paused"]), "params": row["params"],
            "last_tick_at": row["last_tick_at"].isoformat(),
            "next_tick_at": row["next_tick_at"].isoformat(),
            "last_job_id": None if row["last_job_id"] is None else str(row["last_job_id"])}


# ---------------------------------------------------------------------------
# Health: `jobkit status` and `GET /health` report the same facts under their own fields
# ---------------------------------------------------------------------------
def depth_fields(depth: Mapping[str, int] | None) -> dict[str, int | None]:
    """``queue_depth`` (ready to run now) and ``scheduled`` (due later) of a queue depth;
    both None when it could not be read."""
    if depth is None:
        return {"queue_depth": None, "scheduled": None}
    return {"queue_depth": depth["eligible"], "scheduled": depth["scheduled"]}


def status_dict(*, database_url: str, counts: Mapping[str, int],
                per_queue: Mapping[str, Mapping[str, int]], depth: Mapping[str, int],
                avg_processing_s: float | None, alive: int, workers_by_state: Mapping[str, int],
                workers: list[dict[str, Any]], health: str, problems: list[str],
                note: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    """``jobkit status --json``: everything about the database's jobs and workers."""
    return {"database_url": database_url, "jobs": dict(counts), "queues": dict(per_queue),
            "total": sum(counts.values()), **depth_fields(depth),
            "avg_processing_s": None if avg_processing_s is None else round(avg_processing_s, 4),
            "workers_alive": alive, "workers_by_state": dict(workers_by_state),
            "workers": workers, "health": health, "problems": problems, "note": note,
            "schema": schema}


def health_dict(*, database: str, alive: int, needed: int, window: float,
                depth: Mapping[str, int] | None, in_process_worker: str | None,
                problems: list[str]) -> dict[str, Any]:
    """``GET /health``: the probe's verdict (``ok`` or ``unhealthy``) and its facts."""
    return {"status": "unhealthy" if problems else "ok", "database": database,
            "workers_alive": alive, "workers_required": needed,
            "heartbeat_window_seconds": window, **depth_fields(depth),
            "in_process_worker": in_process_worker, "problems": problems}
