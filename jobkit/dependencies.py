"""Job dependencies (``after=``): checking them at enqueue, failing the dependants of a
failed job (cascading), and reviving them when it is retried.

A dependant needs no bookkeeping while it waits: the claim skips a job while one it
depends on is unfinished (see ``DEPS_DONE`` in :mod:`jobkit.backends`). Only failures
change dependants, in the transaction of the failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .backends import backend_of
from .errors import InvalidTransition
from .models import ELIGIBLE_VALUES, Job, JobStatus, dependencies_table, jobs_table


def dependency_ids(after: Iterable[Any] | None, *, field: str = "after") -> list[uuid.UUID]:
    """Job ids from ``after`` (jobs, UUIDs or id strings), without repeats."""
    if after is None:
        return []
    if isinstance(after, (str, bytes, Job, uuid.UUID)):
        after = [after]
    ids: list[uuid.UUID] = []
    for item in after:
        value = item.id if isinstance(item, Job) else item
        if isinstance(value, uuid.UUID):
            ids.append(value)
            continue
        try:
            ids.append(uuid.UUID(str(value)))
        except (ValueError, TypeError):
            raise InvalidTransition(
                f"{field}: {item!r} is not a job or a job id") from None
    return list(dict.fromkeys(ids))


async def check_dependencies(db: AsyncSession, ids: Sequence[uuid.UUID],
                              field: str = "after") -> list[uuid.UUID]:
    """Check that the dependencies exist; returns those that already failed."""
    if not ids:
        return []
    rows = (await db.execute(select(jobs_table.c.id, jobs_table.c.status)
                             .where(jobs_table.c.id.in_(ids)))).all()
    found = {r[0]: str(r[1]) for r in rows}
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise InvalidTransition(f"{field}: no job {', '.join(missing)}; a job can only wait "
                                "for jobs that exist")
    return [i for i in ids if found[i] == JobStatus.FAILED.value]




# ---------------------------------------------------------------------------
# Failures cascade, retries revive (the caller commits)
# ---------------------------------------------------------------------------
def dependency_error(job_id: uuid.UUID) -> str:
    """The error of a job that will not run because a job it waits for failed."""
    return f"dependency {job_id} failed"


_DEPENDENCY_ERROR_LIKE = "dependency % failed"


async def fail_dependants(db: AsyncSession, failed: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Fail the waiting jobs that depend on ``failed`` jobs, and theirs in turn.

    Each gets the error ``dependency <id> failed`` naming the job it waited for. Returns
    the ids failed. One indexed read per level when nothing depends on them.
    """
    frontier = list(failed)
    done: list[uuid.UUID] = []
    d = dependencies_table.c
    while frontier:
        rows = (await db.execute(
            select(d.job_id, d.depends_on)
            .join(jobs_table, jobs_table.c.id == d.job_id)
            .where(d.depends_on.in_(frontier), jobs_table.c.status.in_(ELIGIBLE_VALUES))
            .order_by(d.job_id, d.depends_on))).all()
        by_dep: dict[uuid.UUID, list[uuid.UUID]] = {}
        seen: set[uuid.UUID] = set()
        for job_id, dep in rows:
            if job_id not in seen:
                seen.add(job_id)
                by_dep.setdefault(dep, []).append(job_id)
        frontier = []
        now = backend_of(db).now()
        for dep, ids in by_dep.items():
            res = await db.execute(
                update(jobs_table)
                .where(jobs_table.c.id.in_(ids), jobs_table.c.status.in_(ELIGIBLE_VALUES))
                .values(status=JobStatus.FAILED, error=dependency_error(dep), finished_at=now,
                        updated_at=now)
                .returning(jobs_table.c.id))
            frontier += list(res.scalars().all())
        done += frontier
    return done


async def revive_dependants(db: AsyncSession, job_id: uuid.UUID) -> list[uuid.UUID]:
    """Send back to ``pending`` the jobs failed only because ``job_id`` (or, in turn, one
    of them) failed; any that still wait for another failed job fail again, naming it."""
    frontier = [job_id]
    revived: list[uuid.UUID] = []
    d = dependencies_table.c
    while frontier:
        now = backend_of(db).now()
        res = await db.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_(select(d.job_id).where(d.depends_on.in_(frontier))),
                   jobs_table.c.status == JobStatus.FAILED.value,
                   jobs_table.c.error.like(_DEPENDENCY_ERROR_LIKE))
            .values(status=JobStatus.PENDING, attempts=0, error=None, run_at=now,
                    updated_at=now, finished_at=None, cancel_requested=False)
            .returning(jobs_table.c.id))
        frontier = list(res.scalars().all())
        revived += frontier
    if revived:
        await fail_blocked_by_failure(db, revived)
    return revived


async def fail_blocked_by_failure(db: AsyncSession,
                                  job_ids: Sequence[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """Fail waiting jobs (of ``job_ids``, or all) that wait for a failed job: the backstop
    for a dependency that failed while its dependant was being enqueued."""
    d = dependencies_table.c
    parent = jobs_table.alias("p")
    stmt = (select(d.depends_on).distinct()
            .join(jobs_table, jobs_table.c.id == d.job_id)
            .join(parent, parent.c.id == d.depends_on)
            .where(jobs_table.c.status.in_(ELIGIBLE_VALUES),
                   parent.c.status == JobStatus.FAILED.value))
    if job_ids is not None:
        stmt = stmt.where(d.job_id.in_(list(job_ids)))
    failed = list((await db.execute(stmt)).scalars().all())
    return await fail_dependants(db, failed) if failed else []
