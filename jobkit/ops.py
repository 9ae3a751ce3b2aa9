"""The dict shapes of jobs that the CLI (``--json``) and HTTP share."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .durations import attempt_ms
from .models import Job


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


