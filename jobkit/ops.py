"""Operations over the tables for the command line and the HTTP API: small SQL, no pandas.

The notebook views (:mod:`jobkit.monitoring`) build pandas frames; this module answers
the same questions with a handful of aggregate queries so that ``jobkit status`` and
``GET /metrics`` stay fast and work with only the ``api`` extra installed (it does not
include pandas, and importing pandas alone costs about half a second per CLI call).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, and_, case, cast, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import queue
from .errors import InvalidTransition
from .models import (
    ALL_STATUSES,
    TERMINAL,
    Job,
    JobStatus,
    VideoAsset,
    jobs_table,
    workers_table,
)

#: Upper bounds (seconds) of the processing-time histogram of ``/metrics``.
HISTOGRAM_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                                        60.0, 300.0)

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


DURATION_UNITS = "w (weeks), d (days), h (hours), m (minutes), s (seconds)"


def parse_duration(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"1d12h"``, ``"90s"`` → timedelta. A number needs a unit: a
    bare ``30`` is refused (30 seconds? days?) with a message listing the units."""
    raw = text.strip()
    try:
        float(raw)
    except ValueError:
        pass
    else:
        raise ValueError(f"{text!r} has no unit; write e.g. {raw}d or {raw}s "
                         f"(units: {DURATION_UNITS})")
    pos, seconds = 0, 0.0
    for m in _DURATION_RE.finditer(raw):
        if m.start() != pos or raw[pos:m.start()].strip():
            break
        seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or raw[pos:].strip():
        raise ValueError(f"{text[:60]!r} is not a duration; use e.g. 30d, 12h, 1d12h, 90m or "
                         f"45s (units: {DURATION_UNITS})") from None
    if not seconds >= 0 or seconds > 100 * 365 * 86400:
        raise ValueError(f"{text[:60]!r} is not a duration from 0 to 100 years")
    return timedelta(seconds=seconds)


def human_duration(value: timedelta | float) -> str:
    """``30 days``, ``1 day 12 hours``, ``90 minutes`` → as a person would say it."""
    total = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if total < 60 and total != int(total):
        return f"{total:g} seconds"
    rest = int(round(total))
    parts = []
    units = (("week", 604800),) if rest % 604800 == 0 else ()
    for name, size in (*units, ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return " ".join(parts) or "0 seconds"


#: Not a status: a ``failed`` job whose error is "cancelled" (``jobs --status cancelled``).
CANCELLED = "cancelled"


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def attempt_ms(started_at: datetime | None, ended_at: datetime | None) -> int | None:
    """THE duration of an attempt, in whole milliseconds: from its claim (``started_at``) to
    the recording of its outcome (``finished_at``), both as stored in the database, rounded
    to the nearest millisecond. ``step``, ``show``, ``explain`` and the monitoring frames all
    use this definition."""
    if started_at is None or ended_at is None:
        return None
    delta = ended_at - started_at
    return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds
            + 500) // 1000


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


def asset_dict(asset: VideoAsset) -> dict[str, Any]:
    return {"id": str(asset.id), "filename": asset.filename, "duration_ms": asset.duration_ms,
            "stored_path": asset.stored_path, "size_bytes": asset.size_bytes,
            "width": asset.width, "height": asset.height, "fps": asset.fps,
            "created_at": iso(asset.created_at)}


# ---------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------
async def status_counts(db: AsyncSession, *, queue_name: str | None = None) -> dict[str, int]:
    """Jobs per status, every status present (0 when none), in lifecycle order
    (of one queue when ``queue_name`` is given)."""
    stmt = select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status)
    if queue_name is not None:
        stmt = stmt.where(jobs_table.c.queue == queue_name)
    rows = (await db.execute(stmt)).all()
    found = {str(s): int(n) for s, n in rows}
    return {s.value: found.get(s.value, 0) for s in ALL_STATUSES}


async def queue_status_counts(db: AsyncSession) -> dict[str, dict[str, int]]:
    """Jobs per status (all five, in lifecycle order) of each queue, queues by name."""
    rows = (await db.execute(select(jobs_table.c.queue, jobs_table.c.status, func.count())
                             .group_by(jobs_table.c.queue, jobs_table.c.status))).all()
    out: dict[str, dict[str, int]] = {}
    for q, status, n in sorted(rows, key=lambda r: str(r[0])):
        out.setdefault(str(q), {s.value: 0 for s in ALL_STATUSES})[str(status)] = int(n)
    return out


async def queue_depth(db: AsyncSession, *, queues: Sequence[str] | None = None) -> dict[str, int]:
    """``eligible``: waiting jobs whose ``run_at`` has passed (the queue depth);
    ``scheduled``: waiting jobs due later (delayed, or retries in their backoff)."""
    now = queue._now(db)
    waiting = jobs_table.c.status.in_(queue.ELIGIBLE_VALUES)
    stmt = select(
        func.count().filter(jobs_table.c.run_at <= now),
        func.count().filter(jobs_table.c.run_at > now),
    ).where(waiting)
    if queues is not None:
        stmt = stmt.where(jobs_table.c.queue.in_(list(queues)))
    row = (await db.execute(stmt)).one()
    return {"eligible": int(row[0] or 0), "scheduled": int(row[1] or 0)}


@dataclass
class WorkerInfo:
    """One row of the ``workers`` table, with its health."""

    id: str
    hostname: str
    pid: int
    state: str
    concurrency: int
    jobs_done: int
    started_at: datetime
    last_heartbeat_at: datetime
    alive: bool

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "hostname": self.hostname, "pid": self.pid, "state": self.state,
                "concurrency": self.concurrency, "jobs_done": self.jobs_done,
                "started_at": iso(self.started_at),
                "last_heartbeat_at": iso(self.last_heartbeat_at), "alive": self.alive}


def _alive_expr(db: AsyncSession, dead_after: float) -> Any:
    cutoff = queue._now(db) - timedelta(seconds=dead_after)
    return and_(workers_table.c.state == "running", workers_table.c.last_heartbeat_at >= cutoff)


async def workers(db: AsyncSession, dead_after: float, *, limit: int = 20) -> list[WorkerInfo]:
    """Workers marked running (alive or silent), then the most recent others."""
    alive = _alive_expr(db, dead_after)
    running_first = case((workers_table.c.state == "running", 0), else_=1)
    rows = (await db.execute(
        select(workers_table, alive.label("alive"))
        .order_by(running_first, workers_table.c.last_heartbeat_at.desc())
        .limit(limit))).mappings().all()
    return [WorkerInfo(id=r["id"], hostname=r["hostname"], pid=r["pid"], state=r["state"],
                       concurrency=r["concurrency"], jobs_done=r["jobs_done"],
                       started_at=r["started_at"], last_heartbeat_at=r["last_heartbeat_at"],
                       alive=bool(r["alive"])) for r in rows]


async def workers_alive(db: AsyncSession, dead_after: float) -> int:
    """How many workers heartbeated within ``dead_after`` seconds."""
    n = (await db.execute(select(func.count()).select_from(workers_table)
                          .where(_alive_expr(db, dead_after)))).scalar()
    return int(n or 0)


async def worker_states(db: AsyncSession) -> dict[str, int]:
    rows = (await db.execute(select(workers_table.c.state, func.count())
                             .group_by(workers_table.c.state))).all()
    return {str(s): int(n) for s, n in rows}


async def list_jobs(db: AsyncSession, *, status: str | None = None, job_type: str | None = None,
                    limit: int = 20, queue_name: str | None = None) -> list[Job]:
    """The newest jobs first, optionally of one status, type and/or queue.

    ``status`` is a job status or ``"cancelled"`` (the ``failed`` jobs that were cancelled).
    """
    stmt = select(*jobs_table.c).order_by(jobs_table.c.created_at.desc(),
                                          jobs_table.c.id.desc()).limit(limit)
    if queue_name is not None:
        stmt = stmt.where(jobs_table.c.queue == queue_name)
    if status == CANCELLED:
        stmt = stmt.where(jobs_table.c.status == JobStatus.FAILED.value,
                          jobs_table.c.error == CANCELLED)
    elif status is not None:
        stmt = stmt.where(jobs_table.c.status == JobStatus(status).value)
    if job_type is not None:
        stmt = stmt.where(jobs_table.c.job_type == job_type)
    rows = (await db.execute(stmt)).mappings().all()
    return [queue.job_from_row(r) for r in rows]


async def recent_failures(db: AsyncSession, limit: int = 10) -> list[Job]:
    """Jobs that ended ``failed``, the most recent first."""
    rows = (await db.execute(
        select(*jobs_table.c).where(jobs_table.c.status == JobStatus.FAILED.value)
        .order_by(jobs_table.c.finished_at.desc().nulls_last(), jobs_table.c.id.desc())
        .limit(limit))).mappings().all()
    return [queue.job_from_row(r) for r in rows]


async def get_asset(db: AsyncSession, asset_id: uuid.UUID) -> VideoAsset | None:
    return await db.get(VideoAsset, asset_id)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
def _duration_seconds(db: AsyncSession) -> Any:
    """``finished_at - started_at`` in seconds, as SQL for this backend."""
    if queue.is_postgres(db):
        return func.extract("epoch", jobs_table.c.finished_at - jobs_table.c.started_at)
    return (func.julianday(jobs_table.c.finished_at)
            - func.julianday(jobs_table.c.started_at)) * 86400.0


@dataclass
class Histogram:
    """Cumulative bucket counts (Prometheus style), with the sum and count."""

    buckets: list[tuple[float, int]] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0


async def processing_histogram(db: AsyncSession,
                               buckets: Sequence[float] = HISTOGRAM_BUCKETS) -> Histogram:
    """The processing time (last attempt, start to finish) of completed jobs."""
    dur = cast(_duration_seconds(db), Float)
    done = and_(jobs_table.c.status == JobStatus.COMPLETED.value,
                jobs_table.c.started_at.is_not(None), jobs_table.c.finished_at.is_not(None))
    cols: list[Any] = [func.count(), func.coalesce(func.sum(dur), 0.0)]
    cols += [func.count().filter(dur <= b) for b in buckets]
    row = (await db.execute(select(*cols).select_from(jobs_table).where(done))).one()
    count = int(row[0] or 0)
    return Histogram(buckets=[(b, int(n or 0)) for b, n in zip(buckets, row[2:], strict=True)],
                     sum=float(row[1] or 0.0), count=count)


# ---------------------------------------------------------------------------
# Bulk operations
# ---------------------------------------------------------------------------
def check_prunable(statuses: Sequence[str]) -> tuple[str, ...]:
    """The statuses ``prune`` may delete: finished ones only."""
    out = []
    for s in statuses:
        try:
            status = JobStatus(s)
        except ValueError:
            raise InvalidTransition(
                f"unknown status {s!r}; choose from {', '.join(x.value for x in TERMINAL)}"
            ) from None
        if status not in TERMINAL:
            raise InvalidTransition(
                f"prune deletes finished jobs only (completed, failed); {s!r} jobs are "
                "unfinished and are never deleted")
        out.append(status.value)
    if not out:
        raise InvalidTransition("give at least one status to prune (completed, failed)")
    return tuple(dict.fromkeys(out))


async def prune(db: AsyncSession, older_than: timedelta,
                statuses: Sequence[str] = ("completed", "failed"), *, batch_size: int = 1000,
                dry_run: bool = False) -> int:
    """Delete jobs that finished more than ``older_than`` ago, ``batch_size`` rows per
    transaction. Never touches unfinished jobs. Returns how many were (or would be) deleted.

    Clips stay: they belong to their video asset, not to the job that made them.
    """
    wanted = check_prunable(statuses)
    if batch_size < 1:
        raise InvalidTransition(f"batch_size must be >= 1, got {batch_size}")
    cutoff = queue._now(db) - older_than
    # The status test is repeated outside the subquery: a job retried between the two
    # is re-checked on its new row version and left alone.
    finished = and_(jobs_table.c.status.in_(wanted), jobs_table.c.finished_at.is_not(None),
                    jobs_table.c.finished_at < cutoff)
    if dry_run:
        n = (await db.execute(select(func.count()).select_from(jobs_table).where(finished))
             ).scalar()
        await db.commit()
        return int(n or 0)
    total = 0
    while True:
        batch = select(jobs_table.c.id).where(finished).limit(batch_size).scalar_subquery()
        res = await db.execute(delete(jobs_table).where(jobs_table.c.id.in_(batch), finished))
        await db.commit()
        deleted = int(res.rowcount or 0)  # type: ignore[attr-defined]
        total += deleted
        if deleted < batch_size:
            return total


async def failed_job_ids(db: AsyncSession, *, include_cancelled: bool = False,
                         job_type: str | None = None) -> tuple[list[uuid.UUID], int]:
    """Ids of failed jobs (oldest first) and how many cancelled ones were left out."""
    stmt = select(jobs_table.c.id, jobs_table.c.error).where(
        jobs_table.c.status == JobStatus.FAILED.value).order_by(jobs_table.c.created_at)
    if job_type is not None:
        stmt = stmt.where(jobs_table.c.job_type == job_type)
    rows = (await db.execute(stmt)).all()
    await db.commit()
    ids, skipped = [], 0
    for jid, error in rows:
        if error == "cancelled" and not include_cancelled:
            skipped += 1
        else:
            ids.append(jid)
    return ids, skipped
