"""The job state machine, as SQL.

Every transition is one statement. The claim is an ``UPDATE … WHERE id IN
(SELECT … FOR UPDATE SKIP LOCKED) RETURNING``: atomic on PostgreSQL thanks to
the row locks, and on SQLite because one statement holds the write lock (one
writer at a time); its text, like every other backend difference, is in
:mod:`jobkit.backends`. Finishing is *fenced*: it only touches a row
that is still ``processing``, leased by this worker, on this attempt.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    and_,
    case,
    delete,
    event,
    func,
    not_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, configure_mappers

from .backends import Backend, ClaimShape, Prepared, backend_of
from .backends.common import JOB_COLUMNS, lane_open, transaction_connection
from .checks import (
    INT32_MAX,
    check_name,
    check_queue,
    check_seconds,
)
from .errors import InvalidParams, InvalidResult, InvalidTransition, JobNotFound
from .jsonutil import check_json, check_params, short_repr
from .models import (
    ACTIVE_VALUES,
    CANCELLED,
    DEFAULT_QUEUE,
    ELIGIBLE_VALUES,
    TERMINAL,
    Job,
    JobStatus,
    attempt_fence,
    claim_row_key,
    claim_sort_key,
    dependencies_table,
    jobs_table,
    limits_table,
    new_id,
    new_ids,
    utcnow,
    worker_alive,
    workers_table,
)

_INSERT = jobs_table.insert()
_COLS = JOB_COLUMNS

# ---------------------------------------------------------------------------
# In-process wake-ups: enqueue wakes the workers of this process at commit.
# ---------------------------------------------------------------------------
_wakers: dict[str, set[Callable[[], None]]] = {}


def wake_key(db: AsyncSession | Any) -> str:
    """The key of the in-process wake-ups for a session's or engine's database: its URL
    without the password (rendered once per engine; an engine's URL does not change)."""
    bind: Any = db.get_bind() if isinstance(db, (AsyncSession, Session)) else db
    engine = getattr(bind, "sync_engine", None) or getattr(bind, "engine", bind)
    cache = getattr(engine, "__dict__", None)
    key = None if cache is None else cache.get("_jk_wake_key")
    if key is None:
        key = str(bind.url.render_as_string(hide_password=True))
        if cache is not None:
            cache["_jk_wake_key"] = key
    return key


def add_waker(key: str, fn: Callable[[], None]) -> None:
    _wakers.setdefault(key, set()).add(fn)


def remove_waker(key: str, fn: Callable[[], None]) -> None:
    _wakers.get(key, set()).discard(fn)


def wake_local(key: str) -> None:
    for fn in list(_wakers.get(key, ())):
        fn()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    key = session.info.pop("jk_wake", None)
    if key is not None:
        wake_local(key)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("jk_wake", None)


def _mark_enqueued(db: AsyncSession) -> None:
    if "jk_wake" not in db.info:
        db.info["jk_wake"] = wake_key(db)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
async def one_statement_transaction(db: AsyncSession) -> None:
    """Let a fresh session's single statement run without an explicit transaction.

    One statement is atomic on its own; BEGIN/COMMIT only added round trips (PostgreSQL:
    autocommit; SQLite: no ``BEGIN IMMEDIATE``, see :func:`jobkit.backends.sqlite.skip_begin`).
    Call it only when the session's next statement is the whole transaction.
    """
    await backend_of(db).one_statement_transaction(db)


_job_mapper = Job.__mapper__


def job_from_row(row: Mapping[Any, Any]) -> Job:
    """A detached :class:`Job` built from a ``RETURNING``/``SELECT`` row.

    Built the way the ORM's own loader builds instances (state, then the values straight
    into ``__dict__``), without one instrumented ``setattr`` per column.
    """
    if not _job_mapper.configured:  # attribute access needs configured mappers
        configure_mappers()
    job: Job = _job_mapper.class_manager.new_instance()
    job.__dict__.update(row)
    return job


def default_worker_id() -> str:
    """``host:pid``: the id used by one-off steps of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff_delay(attempt: int, base: float, cap: float,
                  rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, capped, with equal jitter.

    Attempt k waits between d/2 and d where d = min(cap, base * 2**(k-1)); base 0 means
    "retry at once".
    """
    if base <= 0:
        return 0.0
    d = min(cap, base * 2.0 ** max(0, attempt - 1))
    return float(d / 2 + rng() * d / 2)


def _to_uuid(job_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        raise JobNotFound(job_id) from None


# ---------------------------------------------------------------------------
# Enqueue
# ---------------------------------------------------------------------------
def build_job_row(job_type: str, params: Any = None, *, priority: int = 0,
                  run_at: datetime | None = None, delay: float | None = None,
                  max_retries: int | None = None, timeout: float | None = None,
                  dedupe_key: str | None = None, default_max_retries: int = 3,
                  now: datetime | None = None, queue: str | None = None) -> dict[str, Any]:
    """Validate one job's fields and return the row to insert (nothing is written)."""
    check_name("job_type", job_type)
    queue = check_queue(DEFAULT_QUEUE if queue is None else queue)
    checked = check_params(params)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidTransition(f"priority must be an int, got {short_repr(priority)}")
    if not -INT32_MAX <= priority <= INT32_MAX:  # the column is 32-bit on PostgreSQL
        raise InvalidTransition(f"priority must be between {-INT32_MAX} and {INT32_MAX}, "
                                f"got {short_repr(priority)}")
    retries = default_max_retries if max_retries is None else max_retries
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries < 1000:
        raise InvalidTransition(
            f"max_retries must be an int from 0 to 999, got {short_repr(max_retries)}")
    if timeout is not None:
        check_seconds("timeout", timeout, positive=True)
    now = now or utcnow()
    if run_at is not None and delay is not None:
        raise InvalidTransition("give run_at or delay, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidTransition(f"run_at must be a timezone-aware datetime, got "
                                    f"{short_repr(run_at)}")
        if run_at.tzinfo is None:
            raise InvalidTransition(f"run_at {run_at!r} is naive; pass a timezone-aware datetime")
        eligible = run_at
    elif delay is not None:
        check_seconds("delay", delay, positive=False)
        eligible = now + timedelta(seconds=delay)
    else:
        eligible = now
    if dedupe_key is not None:
        check_name("dedupe_key", dedupe_key)
    return {
        "id": new_id(), "job_type": job_type, "queue": queue, "status": JobStatus.PENDING,
        "params": checked,
        "result": None, "error": None, "attempts": 0, "max_attempts": retries + 1,
        "priority": priority, "timeout": timeout, "dedupe_key": dedupe_key,
        "cancel_requested": False, "run_at": eligible, "created_at": now, "updated_at": now,
        "started_at": None, "finished_at": None, "locked_by": None, "locked_until": None,
        "progress": None, "progress_message": None, "progress_at": None,
    }


async def enqueue(db: AsyncSession, job_type: str, params: Any = None, *, priority: int = 0,
                  run_at: datetime | None = None, delay: float | None = None,
                  max_retries: int | None = None, timeout: float | None = None,
                  dedupe_key: str | None = None, commit: bool = True,
                  default_max_retries: int = 3, queue: str | None = None,
                  after: Iterable[Any] | None = None) -> Job:
    """Add one pending job and return it.

    Args:
        params: a JSON object; a value JSON cannot carry is refused, naming its key.
        priority: higher runs first.
        run_at / delay: not claimed before this time / this many seconds from now.
        max_retries: retries after the first attempt (default: the settings').
        timeout: seconds before a running attempt is cancelled.
        dedupe_key: at most one unfinished job per key; the existing one is returned.
        commit: commit now (default). Pass False to enqueue inside your own transaction,
            e.g. from a handler, so the job exists only if that transaction commits.
        queue: the queue it waits in (default ``"default"``); workers serve some queues or all.
        after: jobs (or ids) that must all complete first; if one fails, this job fails
            with "dependency <id> failed" (and is revived when that one is retried).
    """
    row = build_job_row(job_type, params, priority=priority, run_at=run_at, delay=delay,
                        max_retries=max_retries, timeout=timeout, dedupe_key=dedupe_key,
                        default_max_retries=default_max_retries, queue=queue)
    from .dependencies import check_dependencies, dependency_ids, fail_dependants

    deps = dependency_ids(after)
    if deps and dedupe_key is not None:
        raise InvalidTransition("give after or dedupe_key, not both")
    if dedupe_key is None:
        if commit and not deps:
            await one_statement_transaction(db)
        failed = await check_dependencies(db, deps)
        await db.execute(_INSERT, row)
        job = job_from_row(row)
        if deps:
            await db.execute(dependencies_table.insert(),
                             [{"job_id": job.id, "depends_on": d} for d in deps])
            if failed:
                await fail_dependants(db, failed)
    else:
        job = await _enqueue_deduped(db, row)
    _mark_enqueued(db)
    if commit:
        await db.commit()
    return job


async def insert_job(engine: AsyncEngine, row: dict[str, Any]) -> Job:
    """Insert one job row (from :func:`build_job_row`) as ONE autocommitted statement on a
    pooled connection, wake this process's workers, and return the job.

    What :func:`enqueue` does with ``commit=True`` and no ``dedupe_key``, without an ORM
    session around it (its creation, bookkeeping and close cost more than the INSERT):
    the fast path of ``Runner.enqueue``, on the driver's connection (the backends'
    ``insert_alone``). One statement is atomic on its own; on SQLite it runs without
    ``BEGIN IMMEDIATE`` (see :func:`jobkit.backends.sqlite.skip_begin`), on PostgreSQL in
    autocommit, on a connection held for it (retried without a duplicate if that
    connection dies in flight).
    """
    backend = backend_of(engine)
    if lane_open(engine):
        await backend.insert_alone(engine, row)
    else:
        async with engine.connect() as conn:
            await backend.execute_alone(conn, _INSERT, row)
    wake_local(wake_key(engine))
    return job_from_row(row)


async def _enqueue_deduped(db: AsyncSession, row: dict[str, Any]) -> Job:
    where = and_(jobs_table.c.dedupe_key.is_not(None),
                 jobs_table.c.status.in_(ACTIVE_VALUES))
    stmt = backend_of(db).insert(jobs_table).values(row).on_conflict_do_nothing(
        index_elements=[jobs_table.c.dedupe_key], index_where=where).returning(jobs_table.c.id)
    existing_q = select(*_COLS).where(jobs_table.c.dedupe_key == row["dedupe_key"], where)
    # Insert, or find the unfinished holder of the key; if that one finished in between,
    # the key is free again: try once more.
    for _ in range(3):
        if (await db.execute(stmt)).scalar_one_or_none() is not None:
            return job_from_row(row)
        existing = (await db.execute(existing_q)).mappings().first()
        if existing is not None:
            job = job_from_row(existing)
            job.deduplicated = True
            return job
    raise InvalidTransition(f"dedupe_key {row['dedupe_key']!r} is contended; try again")


#: The fields of an :func:`enqueue_many` item that leave the rest of its row the same as
#: another item's of the same job_type and queue.
_PLAIN_KEYS = frozenset(("job_type", "params", "queue"))


async def enqueue_many(db: AsyncSession, jobs: Iterable[Mapping[str, Any] | tuple[Any, ...]],
                       *, commit: bool = True, default_max_retries: int = 3) -> list[Job]:
    """Add many jobs in one multi-row INSERT; all or nothing.

    Each item is a dict of :func:`enqueue`'s arguments (``job_type``, ``params``,
    ``priority``, ``queue``, …) or a ``(job_type, params)`` tuple. Every item is validated
    before anything is written. ``dedupe_key`` is not supported here.

    A pipeline in one call: an item's ``after`` may name earlier items of the same call by
    their index (``{"job_type": "merge", "after": [1, 2]}``), as well as existing jobs.
    """
    from .dependencies import check_dependencies, dependency_ids, fail_dependants

    now = utcnow()
    jobs = list(jobs)
    ids = new_ids(len(jobs))
    rows = []
    edges: list[dict[str, uuid.UUID]] = []
    outside: list[uuid.UUID] = []
    # The checked row of the first item of each (job_type, queue) given nothing else: the
    # next ones differ from it only in id and params.
    plain: dict[tuple[str, str | None], dict[str, Any]] = {}
    for i, item in enumerate(jobs):
        spec = dict(item) if isinstance(item, Mapping) else dict(zip(("job_type", "params"), item, strict=False))
        if spec.get("dedupe_key") is not None:
            raise InvalidTransition(f"jobs[{i}]: dedupe_key is not supported by enqueue_many; "
                                    "use enqueue() for deduplicated jobs")
        after = spec.pop("after", None)
        job_type, queue_name = spec.get("job_type"), spec.get("queue")
        key: tuple[str, str | None] | None = None
        if type(job_type) is str and (queue_name is None or type(queue_name) is str) \
                and spec.keys() <= _PLAIN_KEYS:
            key = (job_type, queue_name)
        template = None if key is None else plain.get(key)
        try:
            if template is None:
                row = build_job_row(now=now, default_max_retries=default_max_retries, **spec)
                if key is not None:
                    plain[key] = row
            else:
                row = {**template, "params": check_params(spec.get("params"))}
        except TypeError as exc:
            raise InvalidTransition(f"jobs[{i}]: {exc}") from None
        except InvalidTransition as exc:
            raise InvalidTransition(f"jobs[{i}]: {exc}") from None
        row["id"] = ids[i]
        rows.append(row)
        refs = [after] if isinstance(after, (int, str, Job, uuid.UUID)) else list(after or [])
        deps: list[uuid.UUID] = []
        for ref in refs:
            if isinstance(ref, int) and not isinstance(ref, bool):
                if not 0 <= ref < i:
                    raise InvalidTransition(
                        f"jobs[{i}]: after={ref} must be the index of an earlier item "
                        f"(0 to {i - 1})" if i else
                        f"jobs[{i}]: the first item cannot wait for an item of this call")
                deps.append(rows[ref]["id"])
            else:
                found = dependency_ids([ref], field=f"jobs[{i}].after")
                deps += found
                outside += found
        edges += [{"job_id": rows[-1]["id"], "depends_on": d} for d in dict.fromkeys(deps)]
    failed = await check_dependencies(db, list(dict.fromkeys(outside)), "after")
    if rows:
        # A ``.values(rows)`` statement is compiled anew every call (ten times the cost of the
        # insert itself). Instead, one statement compiled once and one round trip: PostgreSQL
        # INSERT … SELECT FROM unnest(arrays) (a plain executemany on asyncpg inserts row by
        # row and fires the NOTIFY trigger per job); SQLite INSERT … SELECT FROM json_each.
        backend = backend_of(db)
        await db.execute(backend.INSERT_MANY, backend.insert_many_params(rows, now))
        if edges:
            await db.execute(dependencies_table.insert(), edges)
            if failed:
                await fail_dependants(db, failed)
        _mark_enqueued(db)
    if commit:
        await db.commit()
        if rows:
            await backend_of(db).after_bulk_insert(db, len(rows))
    return [job_from_row(r) for r in rows]


# ---------------------------------------------------------------------------
# Claim
# ---------------------------------------------------------------------------
async def limited_types(db: AsyncSession) -> dict[str, int]:
    """Job types with a ``max_running`` limit, and their limits."""
    rows = (await db.execute(select(limits_table.c.job_type, limits_table.c.max_running))).all()
    return {r[0]: int(r[1]) for r in rows}


async def set_limit(db: AsyncSession, job_type: str, max_running: int | None) -> None:
    """Let at most ``max_running`` jobs of ``job_type`` run at once (None: no limit). Commits."""
    from .checks import check_max_running

    if not isinstance(job_type, str) or not job_type.strip():
        raise InvalidTransition(f"job_type must be a non-empty string, got {job_type!r}")
    try:
        check_max_running(max_running)
    except ValueError as exc:
        raise InvalidTransition(str(exc)) from None
    if max_running is None:
        await db.execute(limits_table.delete().where(limits_table.c.job_type == job_type))
    else:
        ins = backend_of(db).insert(limits_table)
        await db.execute(ins.values(job_type=job_type, max_running=max_running,
                                    updated_at=utcnow())
                         .on_conflict_do_update(index_elements=[limits_table.c.job_type],
                                                set_={"max_running": max_running,
                                                      "updated_at": utcnow()}))
    await db.commit()


async def claim_jobs(db: AsyncSession, n: int = 1, *, worker_id: str,
                     lease_seconds: float = 60.0, job_types: Sequence[str] | None = None,
                     commit: bool = True, queues: Sequence[str] | None = None,
                     limited: Iterable[str] | None = None) -> list[Job]:
    """Claim up to ``n`` eligible jobs; they are ``processing`` when it returns.

    Order: highest priority, then oldest ``created_at``, then id. A job is eligible
    when it is ``pending`` or ``retry``, its ``run_at`` has passed, and every job it
    waits for (``after=``) has completed. ``queues``: only jobs of these queues.

    Jobs of a type with a ``max_running`` limit are claimed first, each type by its own
    statement that takes no more than the room left under the limit (on PostgreSQL
    after locking the type's limit row, so that two claims cannot both see the same
    room); every other job is claimed by ONE statement. ``limited``: the limited types
    (default: read from the database).
    """
    if n <= 0:
        return []
    backend = backend_of(db)
    params: dict[str, Any] = {"worker_id": worker_id, **backend.lease_params(lease_seconds)}
    if job_types is not None:
        params["types"] = list(job_types)
    queued = 0 if queues is None else min(2, len(queues))
    if queued == 1:
        params["queue"] = queues[0]  # type: ignore[index]
    elif queued:
        params["queues"] = list(queues)  # type: ignore[arg-type]
    if limited is None:
        limited = list(await limited_types(db))
        if commit:
            await db.commit()
    jobs: list[Job] = []
    for job_type in limited:
        if len(jobs) >= n:
            break
        if job_types is not None and job_type not in job_types:
            continue
        if not await backend.begin_limited_claim(db, job_type, commit):
            if commit:
                await db.commit()
            continue
        rows = (await db.execute(backend.CLAIM[ClaimShape(job_types is not None, queued, True)],
                                 {**params, "n": n - len(jobs), "limited": job_type}
                                 )).mappings().all()
        if commit:
            await db.commit()
        jobs += [job_from_row(r) for r in rows]
    if len(jobs) < n:
        stmt = backend.CLAIM[ClaimShape(job_types is not None, queued, False)]
        if commit:
            await backend.one_statement_transaction(db)
        rows = (await db.execute(stmt, {**params, "n": n - len(jobs)})).mappings().all()
        if commit:
            await db.commit()
        jobs += [job_from_row(r) for r in rows]
    jobs.sort(key=claim_sort_key)
    return jobs


def claims_alone(engine: AsyncEngine, job_types: Iterable[str] | None,
                 queues: Sequence[str] | None, limited: Sequence[str]) -> bool:
    """Whether :func:`claim_alone` can make this claim: no type filter, no limited type,
    every queue or one, on an engine whose fast lane is open (see
    :func:`jobkit.backends.common.lane_open`)."""
    return (job_types is None and not limited and (queues is None or len(queues) <= 1)
            and lane_open(engine))


async def claim_alone(engine: AsyncEngine, n: int, *, worker_id: str, lease_seconds: float,
                      queues: Sequence[str] | None = None) -> list[Job]:
    """:func:`claim_jobs` without a type filter or limited types (see :func:`claims_alone`),
    as ONE autocommitted statement on the driver's connection (the backends'
    ``fetch_alone``): the worker's claim. The same statement, order and lease (on the
    database clock on PostgreSQL) as through a session, without the session's BEGIN,
    COMMIT and per-statement machinery. A claim cancelled or cut off in flight may have
    claimed jobs nobody runs: their lease recovers them, as on the session path.
    """
    if n <= 0:
        return []
    backend = backend_of(engine)
    queued = 0 if queues is None else len(queues)
    if queued > 1:
        raise ValueError("claim_alone serves every queue or one")
    params: dict[str, Any] = {"worker_id": worker_id, "n": n,
                              **backend.lease_params(lease_seconds)}
    if queued:
        params["queue"] = queues[0]  # type: ignore[index]
    rows = await backend.fetch_alone(
        engine, backend.claim_alone_statement(ClaimShape(False, queued, False), n), params)
    if len(rows) > 1:
        rows = sorted(rows, key=claim_row_key)
    return [job_from_row(r) for r in rows]


async def dequeue_job(db: AsyncSession, *, worker_id: str | None = None,
                      lease_seconds: float = 60.0) -> Job | None:
    """Claim the oldest eligible job (the original contract): marks it ``processing`` and commits."""

    jobs = await claim_jobs(db, 1, worker_id=worker_id or default_worker_id(),
                            lease_seconds=lease_seconds)
    return jobs[0] if jobs else None


# ---------------------------------------------------------------------------
# Finish (fenced; the caller commits)
# ---------------------------------------------------------------------------
async def complete_job(db: AsyncSession, job: Job, result: Any, *, worker_id: str,
                       commit: bool = False) -> bool:
    """Mark ``job`` completed with ``result`` if this worker still holds it.

    In ``db``'s open transaction, on its own driver connection when the fast lane is open
    (see :func:`_in_transaction`), else through the session: atomic with what ``db`` wrote
    either way. On success ``job.finished_at`` is set to the stored time (see
    :func:`jobkit.durations.attempt_ms`). Does not commit, unless ``commit``: then, on
    success, the transaction is committed too (on SQLite the COMMIT travels with the
    statement); on failure it is left open for the caller to roll back.
    """
    backend = backend_of(db)
    params = {"job_id": job.id, "attempt": job.attempts, "worker_id": worker_id,
              "result": result, **backend.clock_params()}
    rows = await _in_transaction(db, backend, backend.COMPLETE_ALONE, params, commit)
    if rows is None:
        finished = (await db.execute(backend.COMPLETE, params)).scalar_one_or_none()
    else:
        finished = rows[0]["finished_at"] if rows else None
    if finished is None:
        return False
    job.finished_at = finished
    if commit:
        await db.commit()  # after a COMMIT in the statement's trip: bookkeeping, no trip
    return True


async def _in_transaction(db: AsyncSession, backend: Backend, statement: Prepared,
                          params: Mapping[str, Any],
                          commit: bool = False) -> list[dict[str, Any]] | None:
    """Run a fast-lane ``statement`` inside ``db``'s open transaction, on its driver
    connection (the backends' ``fetch_in_transaction``); None when it cannot (no transaction
    open, or the fast lane closed: cursor listeners must see every statement), and then the
    caller runs it through the session.

    The handler of a job that wrote through its session completes it in that transaction:
    the same fenced statement, atomic with the writes, without SQLAlchemy's per-statement
    execution machinery (a large part of a small job's cost on the event loop).
    """
    if not db.in_transaction():
        return None
    sync = db.sync_session
    if (sync.autoflush or commit) and (sync.new or sync.deleted or sync.dirty):
        await db.flush()  # what the session's own execute (or commit) would flush first
    conn = transaction_connection(db) or await db.connection()
    if not lane_open(conn.engine):
        return None
    # Committing with the statement stands for the session's commit only while that
    # commit would add nothing: nothing left to flush (flushed above), no listener that may
    # write first, no savepoint still open.
    commit = (commit and not sync.dispatch.before_commit
              and sync.get_nested_transaction() is None)  # (a savepoint open: not ours)
    return await backend.fetch_in_transaction(conn, statement, params, commit=commit)


async def complete_many(db: AsyncSession, items: Sequence[tuple[Job, Any]], *,
                        worker_id: str) -> set[uuid.UUID]:
    """Complete several jobs in one statement, each still fenced. Returns the ids completed
    (and sets each completed job's ``finished_at`` to the stored time)."""
    if not items:
        return set()
    if len(items) == 1:
        job, result = items[0]
        return {job.id} if await complete_job(db, job, result, worker_id=worker_id) else set()
    backend = backend_of(db)
    res = await db.execute(backend.COMPLETE_MANY, backend.complete_many_params(items, worker_id))
    finished = {row[0]: row[1] for row in res.all()}
    for job, _ in items:
        if job.id in finished:
            job.finished_at = finished[job.id]
    return set(finished)


async def complete_many_alone(engine: AsyncEngine, items: Sequence[tuple[Job, Any]], *,
                              worker_id: str) -> set[uuid.UUID]:
    """:func:`complete_many` as ONE autocommitted statement on the driver's connection (the
    backends' ``fetch_alone``), for jobs whose handlers wrote nothing: the same fenced
    statements, without a session. Returns the ids completed (and sets each completed
    job's ``finished_at`` to the stored time). A completion cut off in flight is fenced,
    so doing it again cannot complete anything twice.
    """
    if not items:
        return set()
    backend = backend_of(engine)
    if len(items) == 1:
        job, result = items[0]
        rows = await backend.fetch_alone(engine, backend.COMPLETE_ALONE, {
            "job_id": job.id, "attempt": job.attempts, "worker_id": worker_id,
            "result": result, **backend.clock_params()})
        finished = {job.id: rows[0]["finished_at"]} if rows else {}
    else:
        rows = await backend.fetch_alone(engine, backend.COMPLETE_MANY_ALONE,
                                         backend.complete_many_params(items, worker_id))
        finished = {row["id"]: row["finished_at"] for row in rows}
    for job, _ in items:
        if job.id in finished:
            # (as job_from_row sets its columns: the fast lane's jobs are detached, no
            # session tracks their changes, and the instrumented setattr cost more than
            # the rest of this loop)
            job.__dict__["finished_at"] = finished[job.id]
    return set(finished)


async def fail_job(db: AsyncSession, job: Job, error: str, *, worker_id: str,
                   permanent: bool = False, retry_delay: float | None = None,
                   backoff_base: float = 1.0, backoff_max: float = 300.0) -> JobStatus | None:
    """Record a failed attempt: ``retry`` after a backoff, or ``failed`` when permanent or spent.

    Returns the new status, or None when this worker no longer holds the job. Does not commit.
    """
    from .dependencies import fail_dependants

    spent = job.attempts >= job.max_attempts
    if permanent or spent:
        status = JobStatus.FAILED
    else:
        status = JobStatus.RETRY
    now = backend_of(db).now()
    values: dict[str, Any] = {"status": status, "error": error, "updated_at": now,
                              "locked_by": None, "locked_until": None}
    if status is JobStatus.FAILED:
        values["finished_at"] = now
    else:
        delay = retry_delay if retry_delay is not None else backoff_delay(
            job.attempts, backoff_base, backoff_max)
        values["run_at"] = now + timedelta(seconds=delay)
        values["finished_at"] = None
    ended = (await db.execute(update(jobs_table).where(
        attempt_fence(job.id, job.attempts, worker_id)).values(**values)
        .returning(jobs_table.c.updated_at))).scalar_one_or_none()
    if ended is None:
        return None
    job.updated_at = ended  # the attempt's end (see durations.attempt_ms)
    if status is JobStatus.FAILED:
        job.finished_at = ended
        await fail_dependants(db, [job.id])
    return status


async def release_jobs(db: AsyncSession, worker_id: str, job_ids: Iterable[uuid.UUID]) -> int:
    """Give unfinished jobs back without burning an attempt (graceful shutdown). Commits."""
    ids = list(job_ids)
    if not ids:
        return 0
    now = backend_of(db).now()
    res = await db.execute(
        update(jobs_table)
        .where(jobs_table.c.id.in_(ids), jobs_table.c.locked_by == worker_id,
               jobs_table.c.status == "processing")
        .values(status=case((jobs_table.c.attempts > 1, "retry"), else_="pending"),
                attempts=jobs_table.c.attempts - 1, locked_by=None, locked_until=None,
                run_at=now, updated_at=now, started_at=None))
    await db.commit()
    return int(res.rowcount)  # type: ignore[attr-defined]


async def release_unrun(db: AsyncSession, worker_id: str, running: Iterable[uuid.UUID]) -> int:
    """Give back, without burning an attempt, the jobs this worker holds but does not run:
    those a claim cut off in flight claimed (its reply lost with the connection), which
    nobody would run before their lease expired. Commits."""
    now = backend_of(db).now()
    where = [jobs_table.c.locked_by == worker_id, jobs_table.c.status == "processing"]
    ids = list(running)
    if ids:
        where.append(jobs_table.c.id.not_in(ids))
    res = await db.execute(
        update(jobs_table).where(*where)
        .values(status=case((jobs_table.c.attempts > 1, "retry"), else_="pending"),
                attempts=jobs_table.c.attempts - 1, locked_by=None, locked_until=None,
                run_at=now, updated_at=now, started_at=None))
    await db.commit()
    return int(res.rowcount)  # type: ignore[attr-defined]


async def extend_leases(db: AsyncSession, worker_id: str, job_ids: Iterable[uuid.UUID],
                        lease_seconds: float) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """Extend this worker's leases. Returns (ids still held, ids asked to cancel). Commits."""
    ids = list(job_ids)
    if not ids:
        return set(), set()
    now = backend_of(db).now()
    rows = (await db.execute(
        update(jobs_table)
        .where(jobs_table.c.id.in_(ids), jobs_table.c.locked_by == worker_id,
               jobs_table.c.status == "processing")
        .values(locked_until=now + timedelta(seconds=lease_seconds))
        .returning(jobs_table.c.id, jobs_table.c.cancel_requested))).all()
    await db.commit()
    return {r[0] for r in rows}, {r[0] for r in rows if r[1]}


class Reaped(NamedTuple):
    """A job recovered from a lost worker."""

    id: uuid.UUID
    status: JobStatus
    job_type: str
    attempts: int
    max_attempts: int
    error: str


async def reap_expired(db: AsyncSession) -> list[Reaped]:
    """Recover ``processing`` jobs whose lease passed (their worker died or hung). Commits.

    They go to ``retry`` (eligible at once), or ``failed`` when their attempts are spent.
    """
    from .dependencies import fail_dependants

    now = backend_of(db).now()
    spent = jobs_table.c.attempts >= jobs_table.c.max_attempts
    rows = (await db.execute(
        update(jobs_table)
        .where(jobs_table.c.status == "processing", jobs_table.c.locked_until < now)
        .values(status=case((spent, "failed"), else_="retry"),
                error=case((spent, "worker lost: lease expired on the last attempt; retries spent"),
                     else_="worker lost: lease expired, the job will be retried"),
                finished_at=case((spent, now), else_=None),
                run_at=now, updated_at=now, locked_by=None, locked_until=None)
        .returning(jobs_table.c.id, jobs_table.c.status, jobs_table.c.job_type,
                   jobs_table.c.attempts, jobs_table.c.max_attempts, jobs_table.c.error)
    )).all()
    await fail_dependants(db, [r[0] for r in rows if str(r[1]) == JobStatus.FAILED.value])
    await db.commit()
    return [Reaped(r[0], JobStatus(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


# ---------------------------------------------------------------------------
# Control
# ---------------------------------------------------------------------------
async def get_job(db: AsyncSession, job_id: uuid.UUID | str) -> Job:
    """The job with this id, or :class:`JobNotFound`."""
    row = (await db.execute(select(*_COLS).where(jobs_table.c.id == _to_uuid(job_id))
                            )).mappings().first()
    await db.commit()
    if row is None:
        raise JobNotFound(job_id)
    return job_from_row(row)


async def cancel_job(db: AsyncSession, job_id: uuid.UUID | str) -> Job:
    """Cancel a job: a waiting one ends ``failed`` with error "cancelled" at once; a running
    one is asked to stop (its worker cancels it at its next heartbeat). Commits."""
    from .dependencies import fail_dependants

    jid = _to_uuid(job_id)
    now = backend_of(db).now()
    row = (await db.execute(
        update(jobs_table)
        .where(jobs_table.c.id == jid, jobs_table.c.status.in_(ELIGIBLE_VALUES))
        .values(status=JobStatus.FAILED, error=CANCELLED, finished_at=now, updated_at=now)
        .returning(*_COLS))).mappings().first()
    if row is not None:
        await fail_dependants(db, [jid])
    if row is None:
        row = (await db.execute(
            update(jobs_table)
            .where(jobs_table.c.id == jid, jobs_table.c.status == "processing")
            .values(cancel_requested=True, updated_at=now)
            .returning(*_COLS))).mappings().first()
    await db.commit()
    if row is None:
        job = await get_job(db, jid)
        raise InvalidTransition(
            f"job {jid} is {job.status}; only pending, retry or processing jobs can be cancelled")
    return job_from_row(row)


async def retry_job(db: AsyncSession, job_id: uuid.UUID | str) -> Job:
    """Send a ``failed`` (or waiting ``retry``) job back to ``pending`` with fresh attempts."""
    from .dependencies import revive_dependants

    jid = _to_uuid(job_id)
    now = backend_of(db).now()
    row = (await db.execute(
        update(jobs_table)
        .where(jobs_table.c.id == jid, jobs_table.c.status.in_(("failed", "retry")))
        .values(status=JobStatus.PENDING, attempts=0, run_at=now, updated_at=now,
                finished_at=None, cancel_requested=False, locked_by=None, locked_until=None)
        .returning(*_COLS))).mappings().first()
    if row is not None:
        await revive_dependants(db, jid)
        _mark_enqueued(db)
    await db.commit()
    if row is None:
        job = await get_job(db, jid)
        raise InvalidTransition(
            f"job {jid} is {job.status}; only failed or retry jobs can be retried")
    return job_from_row(row)


def check_result(result: Any) -> Any:
    """A handler's result as JSON data, or :class:`InvalidParams` naming the bad key."""
    try:
        return check_json(result, "result")
    except InvalidResult:
        raise
    except InvalidParams as exc:
        raise InvalidResult(exc.path, exc.problem) from None


# ---------------------------------------------------------------------------
# Prune: delete finished jobs
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
    cutoff = backend_of(db).now() - older_than
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


# ---------------------------------------------------------------------------
# The workers table: a worker's row, its heartbeat, and the reaper's verdict
# ---------------------------------------------------------------------------
async def register_worker(db: AsyncSession, worker_id: str, *, concurrency: int,
                          queues: Sequence[str] | None) -> None:
    """Insert this process's worker row (``running``, heartbeat now on the database clock)."""
    now = backend_of(db).now()
    await db.execute(workers_table.insert().values(
        id=worker_id, hostname=socket.gethostname(), pid=os.getpid(), concurrency=concurrency,
        queues=None if queues is None else list(queues), state="running", jobs_done=0,
        started_at=now, last_heartbeat_at=now))
    await db.commit()


async def worker_heartbeat(db: AsyncSession, worker_id: str, jobs_done: int) -> None:
    """The worker is alive: heartbeat now (database clock) and its count of jobs done."""
    await db.execute(update(workers_table).where(workers_table.c.id == worker_id).values(
        last_heartbeat_at=backend_of(db).now(), jobs_done=jobs_done, state="running"))
    await db.commit()


async def report_jobs_done(db: AsyncSession, worker_id: str, jobs_done: int) -> None:
    await db.execute(update(workers_table).where(workers_table.c.id == worker_id)
                     .values(jobs_done=jobs_done))
    await db.commit()


async def mark_worker_stopped(db: AsyncSession, worker_id: str, jobs_done: int) -> None:
    """A clean stop: the row says ``stopped`` (a stopped worker is not a problem)."""
    await db.execute(update(workers_table).where(workers_table.c.id == worker_id).values(
        state="stopped", jobs_done=jobs_done, last_heartbeat_at=backend_of(db).now()))
    await db.commit()


async def mark_silent_workers_dead(db: AsyncSession, dead_after: float) -> int:
    """Mark ``dead`` every running worker that is no longer alive
    (:func:`jobkit.models.worker_alive`); returns how many."""
    res = await db.execute(update(workers_table).where(
        workers_table.c.state == "running",
        not_(worker_alive(backend_of(db).now(), dead_after))).values(state="dead"))
    await db.commit()
    return int(res.rowcount or 0)  # type: ignore[attr-defined]
