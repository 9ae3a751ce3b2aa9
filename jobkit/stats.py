"""Every read the faces share: counts, queue depth, workers and their liveness, failures,
the processing-time histogram. One definition each; no pandas.

The notebook frames (:mod:`jobkit.notebook.frames`) build pandas on top of these answers or
of the same tables; the CLI (``jobkit status``) and HTTP (``/health``, ``/metrics``) call
them directly, so they stay fast and work with only the ``api`` extra installed (importing
pandas alone costs about half a second per CLI call).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import queue
from .backends import backend_of
from .models import (
    ALL_STATUSES,
    CANCELLED,
    ELIGIBLE_VALUES,
    Job,
    JobStatus,
    jobs_table,
    worker_alive,
    workers_table,
)
from .shapes import iso

#: Upper bounds (seconds) of the processing-time histogram of ``/metrics``.
HISTOGRAM_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                                        60.0, 300.0)


# ---------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------
async def jobs_per_status(db: AsyncSession, *, queue_name: str | None = None) -> dict[str, int]:
    """Jobs per status, every status present (0 when none), in lifecycle order
    (of one queue when ``queue_name`` is given)."""
    stmt = select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status)
    if queue_name is not None:
        stmt = stmt.where(jobs_table.c.queue == queue_name)
    rows = (await db.execute(stmt)).all()
    found = {str(s): int(n) for s, n in rows}
    return {s.value: found.get(s.value, 0) for s in ALL_STATUSES}


async def jobs_per_queue(db: AsyncSession) -> dict[str, dict[str, int]]:
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
    now = backend_of(db).now()
    waiting = jobs_table.c.status.in_(ELIGIBLE_VALUES)
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
    return worker_alive(backend_of(db).now(), dead_after)


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


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------
def _duration_seconds(db: AsyncSession) -> Any:
    """``finished_at - started_at`` in seconds, as SQL for this backend."""
    return backend_of(db).seconds_between(jobs_table.c.finished_at, jobs_table.c.started_at)


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
        if error == CANCELLED and not include_cancelled:
            skipped += 1
        else:
            ids.append(jid)
    return ids, skipped


# ---------------------------------------------------------------------------
# Health: THE verdict, for ``jobkit status`` and ``GET /health``
# ---------------------------------------------------------------------------
#: Why a database whose workers all stopped cleanly is idle, not unhealthy.
IDLE_NOTE = ("no long-running worker; every worker stopped cleanly (e.g. after "
             "`jobkit drain`), so jobs wait until `jobkit work` or `jobkit drain` runs")


@dataclass(frozen=True)
class Health:
    """``verdict`` is ``ok``, ``idle`` or ``unhealthy``; ``problems`` say why it is unhealthy."""

    verdict: str
    problems: tuple[str, ...] = ()
    note: str | None = None


def health(*, alive: int, needed: int, window: float, workers_expected: bool,
           probe: bool = False, problems: Sequence[str] = ()) -> Health:
    """The health rule: healthy while at least ``needed`` workers (``JOBKIT_HEALTH_MIN_WORKERS``)
    heartbeated within ``window`` seconds (:func:`jobkit.models.worker_alive`).

    Too few is a problem when workers are expected (one is marked running, or one died);
    when every worker stopped cleanly the queue is ``idle`` instead. A ``probe`` (a load
    balancer's ``GET /health``) has no idle: it needs its workers. ``problems`` found before
    (an unreachable database) come first.
    """
    found = list(problems)
    note = None
    if alive < needed:
        if probe or workers_expected:
            line = f"{alive} worker(s) heartbeated in the last {window:g} s; {needed} needed"
            found.append(f"{line} (JOBKIT_HEALTH_MIN_WORKERS)" if probe else line)
        else:
            note = IDLE_NOTE
    verdict = "unhealthy" if found else ("idle" if note else "ok")
    return Health(verdict, tuple(found), note)
