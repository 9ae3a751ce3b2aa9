"""``await runner.explain(job_id)``: why a job is not running, or what happened to it, in words."""

from __future__ import annotations

import html
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .backends import backend_of
from .config import Settings
from .database import settings_of
from .display import status_badge, summarise_result
from .errors import JobNotFound, last_line
from .models import (
    CANCELLED,
    DEFAULT_QUEUE,
    ELIGIBLE_VALUES,
    JobStatus,
    ahead_in_claim_order,
    dependencies_table,
    is_worker_alive,
    jobs_table,
    limits_table,
    worker_alive,
    workers_table,
)

__all__ = ["CASES", "Explanation", "explain_job"]

#: Every value :attr:`Explanation.case` can take.
CASES = (
    "scheduled",        # pending, not eligible before run_at
    "retry_backoff",    # a failed attempt; the next one waits out its backoff
    "waiting",          # eligible now, behind `ahead` other eligible jobs
    "dependency",       # waits for jobs it depends on (after=) to complete
    "limited",          # its type is at its max_running limit
    "dependency_failed",  # failed because a job it depended on failed
    "running",          # processing, leased by a live worker (or a one-off step)
    "worker_dead",      # processing, but its worker stopped heart-beating or its lease ran out
    "cancelled",        # failed because it was cancelled
    "failed",           # failed: retries spent, or a permanent error
    "completed",        # done, with a result
)



@dataclass(frozen=True)
class Explanation:
    """The answer of :func:`explain_job`: one ``summary`` sentence, ``details``, and the facts.

    ``str(explanation)`` is the summary followed by the details, one per line.
    """

    job_id: str
    job_type: str
    status: str
    case: str
    summary: str
    details: tuple[str, ...] = ()
    attempts: int = 0
    max_attempts: int = 0
    queue: str | None = None
    waiting_for: tuple[str, ...] = ()
    run_at: datetime | None = None
    eligible_in_s: float | None = None
    ahead: int | None = None
    worker_id: str | None = None
    worker_alive: bool | None = None
    worker_state: str | None = None
    heartbeat_age_s: float | None = None
    locked_until: datetime | None = None
    last_error: str | None = None
    result_summary: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    facts: dict[str, Any] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        return "\n".join([self.summary, *(f"  - {d}" for d in self.details)])

    def __repr__(self) -> str:
        return f"<Explanation {self.job_id} {self.case}: {self.summary}>"

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(d)}</li>" for d in self.details)
        return (f"<div><div>{status_badge(self.status)} <b>{html.escape(self.job_type)}</b> "
                f"<code>{html.escape(self.job_id)}</code></div>"
                f"<div style='margin-top:4px'>{html.escape(self.summary)}</div>"
                f"{f'<ul style=margin-top:2px>{items}</ul>' if items else ''}</div>")


#: How each face (Python, the command line, HTTP) tells a user to act on a job.
HINTS: dict[str, dict[str, str]] = {
    "python": {
        "retry": "`await runner.retry_job('{id}')`",
        "run": "run `await runner.step()` or `await runner.drain()`, or start `jobkit work`",
        "step": "a one-off step such as runner.step()",
        "unknown": ("No handler named {type!r} is registered in this runner: workers without "
                    "one (drain/work) leave the job waiting for a worker that has one, and "
                    "`await runner.step()` would fail it with UnknownJobType (register one "
                    "with @runner.handler)."),
    },
    "cli": {
        "retry": "`jobkit retry {id}`",
        "run": "run `jobkit step` or `jobkit drain`, or start `jobkit work`",
        "step": "a one-off `jobkit step`",
        "unknown": ("No module imported by this command registers a handler named {type!r} "
                    "(pass --import MODULE to check yours): `jobkit work` and `drain` leave "
                    "the job waiting for a worker that has one."),
    },
    "http": {
        "retry": "`POST /jobs/{id}/retry`",
        "run": "start `jobkit work`, or serve with JOBKIT_WORKER_ENABLED=true",
        "step": "a one-off step such as `POST /jobs/process`",
        "unknown": ("This server has no handler named {type!r}: its worker leaves the job "
                    "waiting for a worker that has one."),
    },
}


def _duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 5 s``, ``2 h 10 min``."""
    s = abs(seconds)
    if s < 9.95:
        return f"{s:.1f} s"
    whole = int(round(s))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        m, sec = divmod(whole, 60)
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, rest = divmod(whole, 3600)
    m = rest // 60
    return f"{h} h {m} min" if m else f"{h} h"


def _when(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()




async def explain_job(db: AsyncSession, job_id: uuid.UUID | str, *,
                      settings: Settings | None = None,
                      handlers: Mapping[str, Any] | None = None,
                      face: str = "python") -> Explanation:
    """Explain the state of one job in words (see :data:`CASES`).

    Args:
        db: a session; it is only read.
        job_id: the job's id (a UUID or its text); :class:`JobNotFound` when no such job.
        settings: for the dead-worker threshold (default: ``db.info`` or the environment).
        handlers: the dispatch table that will run it, to warn about an unknown job_type.
        face: ``"python"``, ``"cli"`` or ``"http"``: whose commands the hints name.
    """
    hint = HINTS[face]
    try:
        jid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFound(job_id) from None
    row = (await db.execute(select(jobs_table).where(jobs_table.c.id == jid))).mappings().first()
    if row is None:
        raise JobNotFound(job_id)
    if settings is None:
        settings = settings_of(db)
    now = await backend_of(db).clock(db)
    status = JobStatus(row["status"])
    base: dict[str, Any] = {
        "job_id": str(jid), "job_type": row["job_type"], "status": status.value,
        "queue": row["queue"],
        "attempts": int(row["attempts"]), "max_attempts": int(row["max_attempts"]),
        "run_at": row["run_at"], "last_error": last_line(row["error"]),
        "progress": row["progress"], "progress_message": row["progress_message"],
        "facts": {"now": now, "created_at": row["created_at"], "started_at": row["started_at"],
                  "finished_at": row["finished_at"], "priority": row["priority"]},
    }
    name = f"Job {jid} ({row['job_type']})"
    attempts, max_attempts = base["attempts"], base["max_attempts"]
    details: list[str] = []
    if handlers is not None and row["job_type"] not in handlers and status.value in (
            *ELIGIBLE_VALUES, JobStatus.PROCESSING.value):
        details.append(hint["unknown"].format(type=row["job_type"]))

    if status.value in ELIGIBLE_VALUES:
        return await _explain_waiting(db, row, base, name, now, settings, details, face)
    if status is JobStatus.PROCESSING:
        return await _explain_processing(db, row, base, name, now, settings, details, face)
    if status is JobStatus.COMPLETED:
        from .durations import attempt_ms

        took = attempt_ms(row["started_at"], row["finished_at"])
        summary_result = summarise_result(row["result"])
        tries = f"on attempt {attempts} of {max_attempts}" if attempts > 1 else "on its first attempt"
        summary = f"{name} completed {tries}: {summary_result}."
        if took is not None:
            details.append(f"Its last attempt ran {took:,} ms and finished at "
                           f"{_when(row['finished_at'])}.")
        return Explanation(case="completed", summary=summary, details=tuple(details),
                           result_summary=summary_result, **base)
    # failed
    error = base["last_error"] or "(no error recorded)"
    if row["error"] == CANCELLED:
        when = f" at {_when(row['finished_at'])}" if row["finished_at"] else ""
        summary = f"{name} was cancelled{when}; it will not run."
        details.append(f"It had used {attempts} of {max_attempts} attempts. Run it again with "
                       f"{hint['retry'].format(id=jid)}.")
        return Explanation(case="cancelled", summary=summary, details=tuple(details), **base)
    if (row["error"] or "").startswith("dependency ") and (row["error"] or "").endswith(" failed"):
        dep = row["error"].split()[1]
        summary = (f"{name} did not run: job {dep}, which it waited for, failed "
                   f"(and so fails every job waiting for it).")
        details.append(f"Retrying that job ({hint['retry'].format(id=dep)}) sends this one "
                       "back to pending, to run once it completes.")
        return Explanation(case="dependency_failed", summary=summary, details=tuple(details),
                           waiting_for=(dep,), **base)
    if attempts >= max_attempts:
        spent = "its only attempt is spent" if max_attempts == 1 else \
            f"all {max_attempts} attempts are spent"
        summary = (f"{name} failed: {spent}. "
                   f"Last error: {error}")
    else:
        summary = (f"{name} failed at once on attempt {attempts} of {max_attempts}, "
                   f"because retrying cannot help (a permanent error): {error}")
    if row["progress"] is not None:
        details.append(f"It had reported {_progress(row, now)} before it failed.")
    details.append(f"Run it again with {hint['retry'].format(id=jid)} once the cause is fixed.")
    return Explanation(case="failed", summary=summary, details=tuple(details), **base)


async def _explain_waiting(db: AsyncSession, row: Mapping[Any, Any], base: dict[str, Any],
                           name: str, now: datetime, settings: Settings,
                           details: list[str], face: str = "python") -> Explanation:
    attempts, max_attempts = base["attempts"], base["max_attempts"]
    status = base["status"]
    run_at: datetime = row["run_at"]
    wait = (run_at - now).total_seconds()
    if status == JobStatus.RETRY.value:
        failed_line = (f"Attempt {attempts} of {max_attempts} failed: "
                       f"{base['last_error'] or '(no error recorded)'}")
    if wait > 0:
        if status == JobStatus.RETRY.value:
            summary = (f"{name} is waiting out its retry backoff: attempt {attempts + 1} of "
                       f"{max_attempts} becomes eligible in {_duration(wait)} "
                       f"(at {_when(run_at)}).")
            details.insert(0, failed_line + ".")
            case = "retry_backoff"
        else:
            summary = (f"{name} is scheduled for later: it becomes eligible in "
                       f"{_duration(wait)} (at {_when(run_at)}).")
            case = "scheduled"
        return Explanation(case=case, summary=summary, details=tuple(details),
                           eligible_in_s=wait, **base)
    queue_note = await _queue_note(db, row["queue"], now, settings, face)
    deps = await _unfinished_dependencies(db, row["id"])
    if deps:
        parts = [_dependency_phrase(d) for d in deps]
        summary = f"{name} is waiting for {_join(parts)}: it runs once every job it depends on " \
                  "has completed."
        if status == JobStatus.RETRY.value:
            details.insert(0, failed_line + ".")
        details.append(queue_note)
        return Explanation(case="dependency", summary=summary, details=tuple(details),
                           waiting_for=tuple(str(d["id"]) for d in deps), eligible_in_s=0.0,
                           **base)
    limit = (await db.execute(select(limits_table.c.max_running).where(
        limits_table.c.job_type == row["job_type"]))).scalar()
    if limit is not None:
        running = int((await db.execute(select(func.count()).select_from(jobs_table).where(
            jobs_table.c.status == JobStatus.PROCESSING.value,
            jobs_table.c.job_type == row["job_type"]))).scalar() or 0)
        if running >= limit:
            summary = (f"{name} is waiting for room under its type's limit: {running} "
                       f"{row['job_type']} job{'s are' if running != 1 else ' is'} running and "
                       f"at most {limit} may run at once (max_running={limit}).")
            if status == JobStatus.RETRY.value:
                details.insert(0, failed_line + ".")
            details.append(queue_note)
            return Explanation(case="limited", summary=summary, details=tuple(details),
                               eligible_in_s=0.0, **base)
    c = jobs_table.c
    ahead_q = select(func.count()).select_from(jobs_table).where(
        c.status.in_(ELIGIBLE_VALUES), c.run_at <= backend_of(db).now(), c.id != row["id"],
        c.queue == row["queue"], ahead_in_claim_order(c, row))
    ahead = int((await db.execute(ahead_q)).scalar() or 0)
    if ahead == 0:
        summary = f"{name} is next in line: the next claim will take it."
    else:
        summary = (f"{name} is waiting behind {ahead} eligible job{'s' if ahead != 1 else ''} "
                   f"(claims go by priority, then age; its priority is {row['priority']}).")
    if status == JobStatus.RETRY.value:
        details.insert(0, failed_line + f"; attempt {attempts + 1} of {max_attempts} is due.")
    details.append(queue_note)
    return Explanation(case="waiting", summary=summary, details=tuple(details), ahead=ahead,
                       eligible_in_s=0.0, **base)


def _progress(row: Mapping[Any, Any], now: datetime) -> str:
    """``40% (decoding 12.0/30.0 s), reported 2 s ago``."""
    text = f"{row['progress'] * 100:.0f}%"
    if row["progress_message"]:
        text += f" ({row['progress_message']})"
    if row["progress_at"] is not None:
        text += f", reported {_duration(max(0.0, (now - row['progress_at']).total_seconds()))} ago"
    return text


async def _queue_note(db: AsyncSession, queue_name: str, now: datetime,
                      settings: Settings, face: str = "python") -> str:
    """Which live workers serve the job's queue, in words."""
    rows = (await db.execute(select(workers_table.c.queues).where(
        worker_alive(backend_of(db).now(), settings.dead_after)))).all()
    live = len(rows)
    serving = sum(1 for (qs,) in rows if qs is None or queue_name in qs)
    where = "" if queue_name == DEFAULT_QUEUE else f" of queue {queue_name!r}"
    if live == 0:
        return f"No live worker is registered: {HINTS[face]['run']}."
    if serving == 0:
        return (f"None of the {live} live worker{'s' if live != 1 else ''} serves queue "
                f"{queue_name!r}: start one with `jobkit work --queue {queue_name}` (or "
                "without --queue, to serve every queue).")
    return (f"{serving} live worker{'s' if serving != 1 else ''} "
            f"{'are' if serving != 1 else 'is'} polling the queue{where}.")


async def _unfinished_dependencies(db: AsyncSession, job_id: uuid.UUID) -> list[dict[str, Any]]:
    d = dependencies_table.c
    cols = [jobs_table.c.id, jobs_table.c.job_type, jobs_table.c.status]
    if "progress" in jobs_table.c:  # job progress, where this jobkit records it
        cols.append(jobs_table.c.progress)
    rows = (await db.execute(select(*cols).join(dependencies_table, d.depends_on == jobs_table.c.id)
                             .where(d.job_id == job_id,
                                    jobs_table.c.status != JobStatus.COMPLETED.value)
                             .order_by(jobs_table.c.created_at, jobs_table.c.id))).mappings()
    return [dict(r) for r in rows]


def _dependency_phrase(dep: Mapping[str, Any]) -> str:
    state = str(dep["status"])
    progress = dep.get("progress")
    if isinstance(progress, Mapping):  # {"fraction": 0.4, ...} or {"percent": 40, ...}
        progress = progress.get("fraction", progress.get("percent"))
    if isinstance(progress, int | float) and not isinstance(progress, bool):
        pct = progress * 100 if progress <= 1 else progress
        state += f", {pct:.0f}%"
    return f"job {dep['id']} ({state})"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


async def _explain_processing(db: AsyncSession, row: Mapping[Any, Any], base: dict[str, Any],
                              name: str, now: datetime, settings: Settings,
                              details: list[str], face: str = "python") -> Explanation:
    attempts, max_attempts = base["attempts"], base["max_attempts"]
    wid: str | None = row["locked_by"]
    until: datetime | None = row["locked_until"]
    worker = None
    if wid is not None:
        worker = (await db.execute(select(workers_table).where(workers_table.c.id == wid)
                                   )).mappings().first()
    started = row["started_at"]
    running_for = f" for {_duration((now - started).total_seconds())}" if started else ""
    attempt = f"attempt {attempts} of {max_attempts}"
    lease_left = (until - now).total_seconds() if until is not None else None
    fields: dict[str, Any] = {"worker_id": wid, "locked_until": until}
    if row["cancel_requested"]:
        details.append("A cancel was requested: its worker stops it at its next heartbeat.")
    if worker is not None:
        age = (now - worker["last_heartbeat_at"]).total_seconds()
        fields.update(worker_state=worker["state"], heartbeat_age_s=age)
        who = f"worker {wid} (host {worker['hostname']}, pid {worker['pid']})"
        alive = is_worker_alive(worker["state"], age, settings.dead_after)
    else:
        age = None
        who = f"{wid}, which is not a registered worker ({HINTS[face]['step']})"
        alive = None
    expired = lease_left is not None and lease_left <= 0
    if expired:
        alive = False
    fields["worker_alive"] = alive
    next_status = "failed" if attempts >= max_attempts else "retry"
    if alive is False:
        if expired:
            why = f"its lease ran out {_duration(-lease_left)} ago" if lease_left is not None else ""
        elif worker is not None and worker["state"] != "running":
            why = f"the worker is marked {worker['state']}"
        else:
            why = f"its last heartbeat was {_duration(age or 0)} ago"
        since = f", started {_duration((now - started).total_seconds())} ago," if started else ""
        summary = (f"{name} is leased by {who}, which looks dead ({why}); its {attempt}{since} "
                   "is presumed lost.")
        if expired:
            details.append(f"The next reaper (any worker's heartbeat) sends it to {next_status}.")
        elif until is not None:
            details.append(f"When its lease ends in {_duration(lease_left or 0)} (at "
                           f"{_when(until)}), a worker's reaper sends it to {next_status}.")
        return Explanation(case="worker_dead", summary=summary, details=tuple(details),
                           **fields, **base)
    beat = f", last heartbeat {_duration(age)} ago" if age is not None else ""
    if row["progress"] is not None:
        details.insert(0, f"Progress: {_progress(row, now)}.")
    live_word = "live " if alive else ""
    summary = f"{name} is running{running_for} on {live_word}{who}{beat} ({attempt})."
    if until is not None and lease_left is not None:
        details.append(f"Its lease runs {_duration(lease_left)} more (until {_when(until)}); the "
                       "worker extends it while the job runs.")
    return Explanation(case="running", summary=summary, details=tuple(details), **fields, **base)
