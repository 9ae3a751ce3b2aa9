"""PostgreSQL (asyncpg): its clock, its statements, its connection hooks, its wake-ups.

The same names as :mod:`jobkit.backends.sqlite`, so the two read side by side; see
:class:`jobkit.backends.Backend` for the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, Interval, Table, bindparam, event, func, select, text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import in_greenlet

from ..jsonutil import dumps
from ..models import (
    CLAIM_ORDER_SQL,
    ELIGIBLE_SQL,
    Job,
    UTCDateTime,
    jobs_table,
    limits_table,
    utcnow,
)
from .common import (
    INSERT_ONE,
    JOB_COLUMNS,
    TRUSTED_CHECKOUT,
    ClaimShape,
    Prepared,
    TrustedCheckout,
    claim_statement,
    claim_statements,
    complete_statement,
    driver_connection,
    prepared_claims,
    wrapped,
)

log = logging.getLogger("jobkit")

NAME = "postgresql"
#: Several connections write at once (row locks, not one database lock).
SINGLE_WRITER = False
#: An older schema is upgraded only with ``JOBKIT_AUTO_MIGRATE=true`` (a shared server:
#: ``jobkit migrate`` is an operator's decision).
MIGRATES_ON_OPEN = False


# ---------------------------------------------------------------------------
# The clock: the server's, so leases do not depend on any machine's clock
# ---------------------------------------------------------------------------
def now() -> Any:
    """"Now" on the database clock, for a statement: ``now()`` (the transaction's start)."""
    return func.now()


def clock_params() -> dict[str, Any]:
    """The bound values a statement's clock needs: none, it reads ``now()`` itself."""
    return {}


async def clock(db: AsyncSession) -> datetime:
    """The database clock's current time (read from the server)."""
    value = (await db.execute(select(func.clock_timestamp()))).scalar_one()
    return value if isinstance(value, datetime) else utcnow()


def seconds_between(later: Any, earlier: Any) -> Any:
    """``later - earlier`` in seconds, as SQL."""
    return func.extract("epoch", later - earlier)


def insert(table: Table) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
    return pg_dialect.insert(table)


# ---------------------------------------------------------------------------
# The claim
# ---------------------------------------------------------------------------
# Claim predicates as literal SQL. A job waits for its dependencies (``after=``) by this NOT
# EXISTS, evaluated in the claim itself: it needs no bookkeeping when a dependency completes
# (nothing can miss an update), and it costs one primary-key probe per candidate the index
# walk meets. Types with a ``max_running`` limit are left to the limited claim.
#
# ``OFFSET 0`` keeps each NOT EXISTS a per-row probe (a SubPlan) instead of letting the
# planner turn it into a hash anti-join, whose output it treats as unordered: it then sorted
# every waiting job on every claim instead of walking the index.
DEPS_DONE = ("NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.depends_on"
             " WHERE d.job_id = jobs.id AND p.status <> 'completed' OFFSET 0)")
UNLIMITED = ("NOT EXISTS (SELECT 1 FROM job_type_limits l WHERE l.job_type = jobs.job_type"
             " OFFSET 0)")

# Atomic thanks to the row locks: a claim skips the rows another claim has locked. The
# filter is literal text, not bound parameters: only then can the generic plans use the
# partial index ix_jobs_eligible, whose predicate is this same expression.
# ``id = ANY(ARRAY(…))``, not ``id IN (…)``: the ids are collected once (an InitPlan) and
# the rows updated through the primary key. With ``IN``, the generic plan a prepared
# statement switches to after five runs (it cannot see the LIMIT's value) joined the
# whole table by a hash join: 39 ms instead of 0.3 ms per claim at 20,000 jobs, and a
# 20,000-job drain at concurrency 10 ran at 756 instead of ~2,000 jobs/s.
_CLAIM = f"""
    UPDATE jobs SET status = 'processing', attempts = attempts + 1, locked_by = :worker_id,
           locked_until = now() + :lease, started_at = now(), updated_at = now(),
           finished_at = NULL, progress = NULL, progress_message = NULL, progress_at = NULL
    WHERE id = ANY(ARRAY(
        SELECT id FROM jobs
        WHERE {ELIGIBLE_SQL} AND run_at <= now(){{filters}}
        ORDER BY {CLAIM_ORDER_SQL}
        LIMIT {{limit}}
        FOR UPDATE SKIP LOCKED))
    RETURNING {{columns}}"""
#: Every shape of the claim (see :class:`~jobkit.backends.common.ClaimShape`).
_CLAIM_PARTS: dict[str, Any] = {
    "deps_done": DEPS_DONE, "unlimited": UNLIMITED,
    "room_limit": "GREATEST(0, LEAST(:n, {room}))",
    "binds": (bindparam("lease", type_=Interval()),)}
CLAIM = claim_statements(_CLAIM, **_CLAIM_PARTS)

#: The fast lane's claims (see :func:`fetch_alone`), with the LIMIT as a parameter.
CLAIM_ALONE = prepared_claims(CLAIM)

#: The largest LIMIT the fast lane writes into its claim's SQL (see
#: :func:`claim_alone_statement`); a larger claim takes it as a parameter.
LITERAL_LIMIT_MAX = 100
_CLAIM_WITH_LIMIT: dict[tuple[ClaimShape, int], Prepared] = {}


def claim_alone_statement(shape: ClaimShape, n: int) -> Prepared:
    """The fast lane's claim of ``n`` jobs: its LIMIT written into the SQL (one prepared
    statement per ``n`` up to :data:`LITERAL_LIMIT_MAX`).

    With ``LIMIT $n``, the generic plan of the prepared claim cannot know how many rows
    the LIMIT keeps; with a few thousand jobs waiting it looked costlier than the custom
    plans, and the server planned the claim anew on every run (pg_prepared_statements:
    0 generic plans for ~2,000 claims of a 20,000-job drain). Planning was about a fifth of
    a claim's round trip (in isolation 0.72-0.77 ms a claim, 0.55-0.62 with the LIMIT
    written in). With the LIMIT in the SQL, the generic plan costs what the custom ones
    do, and after its five custom runs the server keeps it: the same index walk without
    the planning. The choice stays the server's (``plan_cache_mode`` is left alone), so it
    keeps custom plans wherever the parameters make them cheaper. The Prepared objects are
    kept for good: their compiled SQL is cached by their identity.
    """
    if n > LITERAL_LIMIT_MAX or n < 1:
        return CLAIM_ALONE[shape]
    found = _CLAIM_WITH_LIMIT.get((shape, n))
    if found is None:
        found = _CLAIM_WITH_LIMIT[shape, n] = Prepared(claim_statement(
            _CLAIM, shape, limit=n, **_CLAIM_PARTS), JOB_COLUMNS)
    return found


def lease_params(lease_seconds: float) -> dict[str, Any]:
    """The claim's bound values for a lease of ``lease_seconds``."""
    return {"lease": timedelta(seconds=lease_seconds)}


_LOCK_LIMIT = (select(limits_table.c.max_running)
               .where(limits_table.c.job_type == bindparam("job_type"))
               .with_for_update(skip_locked=True))


async def begin_limited_claim(db: AsyncSession, job_type: str, commit: bool) -> bool:
    """Prepare the claim of one limited type; False: skip the type this time.

    Two statements, one transaction: the lock of the type's limit row first, so that the
    claim's own snapshot (taken after it) sees every running job of this type, and two
    claims cannot both see the same room. False when another claim holds the lock.
    """
    return (await db.execute(_LOCK_LIMIT, {"job_type": job_type})).first() is not None


# ---------------------------------------------------------------------------
# Finishing: one job, and many in one statement (fenced)
# ---------------------------------------------------------------------------
#: One job's fenced completion (``:job_id``, ``:attempt``, ``:worker_id``, ``:result``).
COMPLETE = complete_statement(func.now())

# Many fenced completions in one statement whose text does not depend on the batch size (so it
# is compiled once): the batch travels as arrays, and each result is already JSON text.
COMPLETE_MANY = text("""
    WITH v (id, att, res) AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS integer[]),
                             CAST(:results AS jsonb[])))
    UPDATE jobs SET status = 'completed', result = v.res, error = NULL, finished_at = now(),
           updated_at = now(), locked_by = NULL, locked_until = NULL, progress = 1
    FROM v
    WHERE jobs.id = v.id AND jobs.attempts = v.att AND jobs.locked_by = :worker_id
      AND jobs.status = 'processing'
    RETURNING jobs.id, jobs.finished_at""").columns(jobs_table.c.id, jobs_table.c.finished_at)

#: The fast lane's completions of one job / of many (see :func:`fetch_alone`).
COMPLETE_ALONE = Prepared(COMPLETE, (jobs_table.c.finished_at,))
COMPLETE_MANY_ALONE = Prepared(COMPLETE_MANY, (jobs_table.c.id, jobs_table.c.finished_at))
#: The fast lane's insert of one job (every column given).
INSERT_ALONE = INSERT_ONE


def complete_many_params(items: Sequence[tuple[Job, Any]], worker_id: str) -> dict[str, Any]:
    """:data:`COMPLETE_MANY`'s bound values for these (job, result) pairs."""
    return {"ids": [j.id for j, _ in items], "attempts": [j.attempts for j, _ in items],
            "results": [dumps(r) for _, r in items], "worker_id": worker_id}


# ---------------------------------------------------------------------------
# Enqueue: many jobs in one statement
# ---------------------------------------------------------------------------
# INSERT … SELECT FROM unnest(arrays), compiled once: a plain executemany on asyncpg inserts
# row by row and fires the NOTIFY trigger per job.
INSERT_MANY = text("""
    INSERT INTO jobs (id, job_type, queue, status, params, result, attempts, max_attempts,
                      priority, timeout, cancel_requested, run_at, created_at, updated_at)
    SELECT id, job_type, queue, 'pending', params, 'null'::jsonb, 0, max_attempts, priority,
           timeout, false, run_at, :now, :now
    FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:queues AS text[]),
                ARRAY(SELECT jsonb_array_elements(CAST(:params AS jsonb))),
                CAST(:max_attempts AS integer[]),
                CAST(:priorities AS integer[]), CAST(:timeouts AS float8[]),
                CAST(:run_ats AS timestamptz[]))
         AS v(id, job_type, queue, params, max_attempts, priority, timeout, run_at)
    """).bindparams(bindparam("now", type_=UTCDateTime))


def insert_many_params(rows: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """:data:`INSERT_MANY`'s bound values for these job rows (``queue.build_job_row``)."""
    return {"ids": [r["id"] for r in rows], "types": [r["job_type"] for r in rows],
            "queues": [r["queue"] for r in rows],
            "params": dumps([r["params"] for r in rows]),  # one encoding, not one per row
            "max_attempts": [r["max_attempts"] for r in rows],
            "priorities": [r["priority"] for r in rows],
            "timeouts": [r["timeout"] for r in rows], "run_ats": [r["run_at"] for r in rows],
            "now": now}


# ---------------------------------------------------------------------------
# Transactions of one statement
# ---------------------------------------------------------------------------
async def one_statement_transaction(db: AsyncSession) -> None:
    """Let a fresh session's single statement run without an explicit transaction:
    autocommit (one statement is atomic on its own; BEGIN/COMMIT only added round trips)."""
    if db.in_transaction():
        return
    await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


async def execute_alone(conn: AsyncConnection, statement: Any, params: Any) -> None:
    """Run ``statement`` as its own transaction on a fresh pooled connection (autocommit)."""
    await conn.execution_options(isolation_level="AUTOCOMMIT")
    await conn.execute(statement, params)


# ---------------------------------------------------------------------------
# The fast lane: one statement, autocommitted, on a connection held for it
# ---------------------------------------------------------------------------
#: The type code asyncpg reports for a ``Float`` column (``double precision``): SQLAlchemy's
#: numeric result processors need it (floats come back as they are).
FLOAT8_OID = 701


def _coltype(impl: Any) -> Any:
    return FLOAT8_OID if isinstance(impl, Float) else None


async def fetch_alone(engine: AsyncEngine, statement: Prepared,
                      params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run ``statement`` as its own transaction (autocommit: no BEGIN, no COMMIT) on the
    driver's connection, and return its rows as a session would: the worker's claim and
    completion batch, the single enqueue, cut_analysis's asset read.

    It runs on one of the few connections this engine holds for the fast lane on this event
    loop (:data:`HELD_PER_LOOP`, detached from the pool): one round trip. A pooled
    connection costs a checkout ping (a second round trip, there so that a connection the
    server dropped is never used) and the pool's bookkeeping, about as much as the
    statement itself. A held connection is pinged when it is taken from the pool and
    trusted afterwards while asyncpg does not know it closed; a connection that dies in
    flight is closed and the statement's outcome is unknown, so what happens next depends
    on the statement (:func:`_again`):

    - an INSERT of a job (its id made by the client) runs again on a pinged pooled
      connection as ``INSERT … ON CONFLICT (id) DO NOTHING``: never a duplicate, never a
      lost job;
    - a fenced completion runs again as :data:`COMPLETE_MANY_AGAIN`, which also reports
      the jobs the lost attempt already completed (completed at this attempt), so they are
      not reported lost;
    - a read runs again as it is;
    - anything else (the claim) raises SQLAlchemy's error flagged
      ``connection_invalidated``: a claim cut off in flight may have claimed jobs nobody
      runs, and their lease recovers them, as after any lost claim.

    When every held connection is busy (statements of several tasks in flight) the
    statement takes a pooled connection instead of waiting. A statement's own error (a
    constraint, bad data) is raised as SQLAlchemy's. After any error or a cancellation the
    held connection is closed (asyncpg cancels the statement in flight first), never
    reused. The pool's ``recycle`` and its invalidation (a disconnect seen on another
    connection) apply to held connections too; :func:`release` closes them
    (``Runner.close``), and so does ``engine.dispose()``.
    """
    dialect = engine.sync_engine.dialect
    compiled = statement.compiled(dialect, _coltype)
    args = compiled.args(params)
    held = None if isinstance(engine.sync_engine.pool, NullPool) else _free_held(engine)
    if held is None:  # NullPool (hold nothing), or all busy
        return await _fetch_pooled(engine, statement, params)
    again = None
    held.busy = True
    try:
        raw = held.raw
        if raw is None or raw.is_closed() or _outdated(engine, held.since):
            await _hold(engine, held)
            raw = held.raw
        try:
            records = await raw.fetch(compiled.sql, *args)
        except BaseException as exc:
            held.raw = None
            lost = not isinstance(exc, Exception) or _connection_lost(raw, exc)
            await _discard(raw)
            if not isinstance(exc, Exception):
                raise
            again = _again(statement, compiled) if lost else None
            if again is None:
                raise _sqlalchemy_error(held.adapter, dialect, compiled, args, exc,
                                        lost) from exc
            log.debug("jobkit: held connection lost (%s); running the statement again",
                      type(exc).__name__)
    finally:
        held.busy = False
        if held.retired and held.raw is not None:  # disposed while this call held it
            raw, held.raw = held.raw, None
            await _discard(raw)
    if again is None:
        return compiled.rows(records)
    return await _fetch_pooled(engine, again[0], again[1](params))


#: Tries of a statement on pooled connections that each died in flight (a server killing
#: every connection can kill the next one between its checkout ping and the statement).
POOLED_TRIES = 3


async def _fetch_pooled(engine: AsyncEngine, statement: Prepared,
                        params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The statement on a pooled connection; while the connection dies in flight, again as
    :func:`_again` says on a new one, up to :data:`POOLED_TRIES`.

    A statement that can run again (:func:`_again`: a read, a job's INSERT, a fenced
    completion) takes a connection returned less than :data:`TRUSTED_FOR_S` ago without
    the checkout ping, as a handler's first statement does (see
    :func:`_install_light_ping`): if the server had closed it unseen, the statement fails
    before running and runs again. The claim, and a last try, take a pinged one.
    """
    dialect = engine.sync_engine.dialect
    for tries_left in range(POOLED_TRIES - 1, -1, -1):
        compiled = statement.compiled(dialect, _coltype)
        args = compiled.args(params)
        again = _again(statement, compiled)
        rerunnable = tries_left > 0 and again is not None
        token = TRUSTED_CHECKOUT.set(TrustedCheckout() if rerunnable else None)
        try:
            async with engine.connect() as conn:
                adapted: Any = await driver_connection(conn)
                records = await _fetch_on(conn, adapted, compiled, args)
            return compiled.rows(records)
        except DBAPIError as exc:
            if not (rerunnable and exc.connection_invalidated):
                raise
            assert again is not None  # (rerunnable)
            statement, params = again[0], again[1](params)
        finally:
            TRUSTED_CHECKOUT.reset(token)
    raise AssertionError("unreachable")  # pragma: no cover


async def _fetch_on(conn: AsyncConnection, adapted: Any, compiled: Any,
                    args: Sequence[Any]) -> list[Any]:
    """Run one statement on ``conn``'s asyncpg connection (``adapted``: SQLAlchemy's adapter
    around it). A cancellation or a lost connection in flight invalidates ``conn`` (the
    error then says ``connection_invalidated``); errors are raised as SQLAlchemy's."""
    raw = adapted.driver_connection
    try:
        return list(await raw.fetch(compiled.sql, *args))
    except BaseException as exc:
        lost = not isinstance(exc, Exception) or _connection_lost(raw, exc)
        if lost:
            with contextlib.suppress(Exception):  # never replace the error in flight
                await conn.invalidate()
        if not isinstance(exc, Exception):
            raise
        raise _sqlalchemy_error(type(adapted), conn.dialect, compiled, args, exc,
                                lost) from exc


async def fetch_in_transaction(conn: AsyncConnection, statement: Prepared,
                               params: Mapping[str, Any], *,
                               commit: bool = False) -> list[dict[str, Any]] | None:
    """Run ``statement`` on ``conn``'s asyncpg connection, INSIDE the transaction ``conn``
    has open (it commits or rolls back with it), and return its rows as a session would;
    None, without running it, when no transaction is open (the caller goes through
    SQLAlchemy then). ``commit`` changes nothing here: the caller's COMMIT is its own
    round trip either way.

    For a hot statement that must be atomic with what a session already wrote (a handler's
    writes and its job's completion): it skips SQLAlchemy's per-statement execution
    machinery, not the transaction. A cancellation in flight invalidates ``conn`` (as
    :func:`fetch_alone` does): its transaction is lost, the connection never reused.
    """
    dialect = conn.dialect
    compiled = statement.compiled(dialect, _coltype)
    args = compiled.args(params)
    adapted: Any = await driver_connection(conn)
    if not adapted.driver_connection.is_in_transaction():
        return None
    return compiled.rows(await _fetch_on(conn, adapted, compiled, args))


def _connection_lost(raw: Any, exc: BaseException) -> bool:
    """Whether ``exc`` (raised by a statement on ``raw``) came from the connection rather
    than from the statement: the statement may or may not have run."""
    if raw.is_closed() or isinstance(exc, (OSError, TimeoutError)):
        return True
    # asyncpg's client-side errors about the connection's state ("another operation is in
    # progress" after a kill cut a protocol exchange short): the connection is unusable
    # and what it last sent unknown. Its DataError (bad arguments) is the statement's.
    from asyncpg.exceptions import DataError, InterfaceError

    if isinstance(exc, InterfaceError) and not isinstance(exc, DataError):
        return True
    # 08: connection exceptions; 57P: the server shut down or terminated this backend.
    return str(getattr(exc, "sqlstate", None) or "").startswith(("08", "57P"))


def _sqlalchemy_error(adapter: Any, dialect: Any, compiled: Any, args: Sequence[Any],
                      exc: Exception, lost: bool) -> Exception:
    """asyncpg's error as the DBAPI adapter names it, then as SQLAlchemy's."""
    try:
        adapter._handle_exception_no_connection(dialect.loaded_dbapi, exc)
    except Exception as adapted_error:  # noqa: BLE001 - it always raises
        error = wrapped(dialect, compiled, args, adapted_error)
        if lost and hasattr(error, "connection_invalidated"):
            error.connection_invalidated = True
        return error
    return exc  # pragma: no cover - the adapter always raises


# ---------------------------------------------------------------------------
# Statements run again after their connection died in flight (see fetch_alone)
# ---------------------------------------------------------------------------
#: The INSERT again, for a retry after the connection died in flight (its outcome
#: unknown): the row's id was made by the client, so a row already there is this one.
INSERT_AGAIN = Prepared(pg_dialect.insert(jobs_table).on_conflict_do_nothing(
    index_elements=[jobs_table.c.id]), column_keys=[c.name for c in jobs_table.c])

# The fenced completions again: completes the jobs still ours, and also returns those
# completed at this attempt (by the lost statement, which committed before its reply was
# lost: nobody else completes an attempt of ours). Both parts read one snapshot, so a job
# this statement completes is not seen completed by its SELECT, and is returned once.
COMPLETE_MANY_AGAIN = Prepared(text("""
    WITH v (id, att, res) AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS integer[]),
                             CAST(:results AS jsonb[]))),
    done AS (
        UPDATE jobs SET status = 'completed', result = v.res, error = NULL,
               finished_at = now(), updated_at = now(), locked_by = NULL,
               locked_until = NULL, progress = 1
        FROM v
        WHERE jobs.id = v.id AND jobs.attempts = v.att AND jobs.locked_by = :worker_id
          AND jobs.status = 'processing'
        RETURNING jobs.id, jobs.finished_at)
    SELECT id, finished_at FROM done
    UNION ALL
    SELECT jobs.id, jobs.finished_at FROM jobs JOIN v ON jobs.id = v.id
    WHERE jobs.attempts = v.att AND jobs.status = 'completed'""").columns(
    jobs_table.c.id, jobs_table.c.finished_at), (jobs_table.c.id, jobs_table.c.finished_at))


def _one_as_many(params: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`COMPLETE`'s bound values as :data:`COMPLETE_MANY_AGAIN`'s."""
    return {"ids": [params["job_id"]], "attempts": [params["attempt"]],
            "results": [dumps(params.get("result"))], "worker_id": params["worker_id"]}


def _same(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return params


#: What runs again after a connection died in flight under a statement: (statement, its
#: bound values from the first one's).
_AGAIN: dict[int, tuple[Prepared, Callable[[Mapping[str, Any]], Mapping[str, Any]]]] = {
    id(INSERT_ALONE): (INSERT_AGAIN, _same),
    id(INSERT_AGAIN): (INSERT_AGAIN, _same),
    id(COMPLETE_ALONE): (COMPLETE_MANY_AGAIN, _one_as_many),
    id(COMPLETE_MANY_ALONE): (COMPLETE_MANY_AGAIN, _same),
    id(COMPLETE_MANY_AGAIN): (COMPLETE_MANY_AGAIN, _same),
}


def _again(statement: Prepared, compiled: Any
           ) -> tuple[Prepared, Callable[[Mapping[str, Any]], Mapping[str, Any]]] | None:
    """What to run after ``statement``'s connection died in flight (its outcome unknown);
    None: nothing (raise). A read runs again as it is."""
    found = _AGAIN.get(id(statement))
    if found is None and compiled.sql.lstrip()[:6].upper() == "SELECT":
        return statement, _same
    return found


# ---------------------------------------------------------------------------
# The held connections
# ---------------------------------------------------------------------------
#: Connections an engine holds for the fast lane on each event loop, besides its pool: the
#: worker's claim and its completion batch, and an enqueue, can each have one at once.
HELD_PER_LOOP = 2


class _Held:
    """One connection an engine holds for the fast lane on one event loop."""

    __slots__ = ("adapter", "busy", "pid", "raw", "retired", "since")

    def __init__(self) -> None:
        self.raw: Any = None  # the asyncpg connection, detached from the pool
        self.adapter: Any = None  # SQLAlchemy's adapter class (to name its errors)
        self.busy = False
        self.since = 0.0  # when it was checked out (time.time(), as the pool counts)
        self.pid = os.getpid()
        self.retired = False  # the engine was disposed: close whatever is held afterwards


def _free_held(engine: AsyncEngine) -> _Held | None:
    """A held-connection slot of the engine for the running loop that no call is using (one
    already connected first), or None when all are busy. (asyncpg connections belong to the
    loop that opened them; the sync façade runs its own.)"""
    slots: dict[Any, list[_Held]] = engine.sync_engine.__dict__.setdefault("_jk_held", {})
    loop = asyncio.get_running_loop()
    helds = slots.get(loop)
    if helds is None:
        for gone in [lp for lp in slots if lp.is_closed()]:  # their sockets went with them
            del slots[gone]
        helds = slots[loop] = [_Held() for _ in range(HELD_PER_LOOP)]
    free = None
    for held in helds:
        if not held.busy:
            if held.raw is not None:
                return held
            free = free or held
    return free


async def insert_alone(engine: AsyncEngine, row: Mapping[str, Any]) -> None:
    """Insert one job row (``queue.build_job_row``) as ONE autocommitted statement in the
    fast lane (:func:`fetch_alone`): one round trip on a held connection, run again as
    ``INSERT … ON CONFLICT (id) DO NOTHING`` if that connection dies in flight."""
    await fetch_alone(engine, INSERT_ALONE, row)


def _outdated(engine: AsyncEngine, since: float) -> bool:
    """Whether the pool would no longer hand out a connection checked out at ``since``:
    older than its ``recycle``, or than a disconnect it saw (which invalidates them all)."""
    pool: Any = engine.sync_engine.pool
    recycle = getattr(pool, "_recycle", -1)
    return (getattr(pool, "_invalidate_time", 0) > since
            or (recycle > -1 and time.time() - since > recycle))


async def _hold(engine: AsyncEngine, held: _Held) -> None:
    """Replace ``held``'s connection by one from the pool (pinged at checkout), detached
    from it: the pool neither counts it nor hands it out."""
    if held.raw is not None:
        raw, held.raw = held.raw, None
        await _discard(raw)
    since = time.time()
    fairy = await engine.raw_connection()
    adapted: Any = fairy.dbapi_connection
    fairy.detach()
    held.raw, held.adapter, held.since = adapted.driver_connection, type(adapted), since


async def _discard(raw: Any) -> None:
    """Close an asyncpg connection for good: asyncpg first cancels a statement still in
    flight (so a cancelled INSERT does not commit later), at most 2 s, else it aborts."""
    with contextlib.suppress(Exception):
        await raw.close(timeout=2)


def _retire_held(sync_engine: Any) -> list[Any]:
    """Forget the engine's held connections and return the running loop's, to be closed by
    the caller. Another loop's are aborted from that loop; a closed loop's went with it; a
    busy one is closed by the call using it, when it returns."""
    slots: dict[Any, list[_Held]] = sync_engine.__dict__.pop("_jk_held", {})
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    mine = []
    for loop, helds in slots.items():
        for held in helds:
            held.retired = True
            if held.busy:
                continue
            raw, held.raw = held.raw, None
            if raw is None or held.pid != os.getpid():  # a forked child: the parent's socket
                continue
            if loop is current:
                mine.append(raw)
            elif not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(raw.terminate)
    return mine


def _on_dispose(sync_engine: Any) -> None:
    """``engine_disposed``: an engine disposed without :func:`release` first (``dispose()``
    closes only the pool's connections) closes its held one too."""
    for raw in _retire_held(sync_engine):
        with contextlib.suppress(Exception):
            if in_greenlet():  # AsyncEngine.dispose(): close it properly
                await_only(_discard(raw))
            else:
                raw.terminate()


# ---------------------------------------------------------------------------
# Engine: URL checks, options, hooks
# ---------------------------------------------------------------------------
def url_problem(url: URL) -> str | None:
    """What a URL for this backend should be instead, or None when it is fine."""
    if "sslmode" in url.query:
        return (f"asyncpg's spelling of the TLS option: ?ssl={url.query['sslmode']} "
                "instead of ?sslmode=…")
    return None


def engine_options(url: URL, kwargs: dict[str, Any]) -> None:
    """Fill in this backend's defaults for ``create_async_engine``."""
    kwargs.setdefault("pool_pre_ping", False)


#: A bulk insert of at least this many jobs may refresh the table's statistics.
BULK_ANALYZE_MIN = 1000


async def after_bulk_insert(db: AsyncSession, inserted: int) -> None:
    """Refresh ``jobs``' statistics after a bulk insert that outgrew them (after commit).

    The claim walks ``ix_jobs_eligible`` in claim order only while the planner knows how
    many jobs wait; with statistics from a much smaller table it sorts every waiting job
    on every claim instead (measured: 20 ms per claim at 13,000 waiting jobs, a 20,000-job
    drain at concurrency 10 at 756 instead of 3,206 jobs/s). Autovacuum fixes the
    statistics too, but only at its next round (a minute by default), which is the whole
    drain of a burst. ANALYZE samples at most 30,000 rows; a role that does not own the
    table gets a warning from the server, not an error.
    """
    if inserted < BULK_ANALYZE_MIN:
        return
    known = (await db.execute(text(
        "SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass"))).scalar()
    if known is None or inserted > 0.2 * max(float(known), 0.0):
        await db.execute(text("ANALYZE jobs"))
    await db.commit()


def connect_timeout(seconds: float) -> dict[str, Any]:
    """``connect_args`` that give up connecting after ``seconds`` (a server may not answer)."""
    return {"timeout": seconds}


def missing_file(url: str) -> str | None:
    """A server database has no file to be missing."""
    return None


def install(engine: AsyncEngine, kwargs: Mapping[str, Any]) -> None:
    """Install this backend's hooks on a new engine (made with ``kwargs``)."""
    if not kwargs["pool_pre_ping"]:
        _install_light_ping(engine)
    event.listen(engine.sync_engine, "engine_disposed", _on_dispose)


async def release(engine: AsyncEngine) -> None:
    """Close the connections the engine holds for the fast lane (:func:`fetch_alone`) on
    this loop (``Runner.close``; the next statement would hold a new one)."""
    for raw in _retire_held(engine.sync_engine):
        await _discard(raw)


#: A pooled connection returned less than this many seconds ago (and not closed since) is
#: handed to a statement that can be run again without the checkout ping (see
#: :func:`_install_light_ping`). One idle longer is pinged: the network may have dropped it
#: without a word, and a statement on it would wait for TCP to notice instead of failing.
TRUSTED_FOR_S = 1.0


def _install_light_ping(engine: AsyncEngine) -> None:
    """Check every pooled connection before use, in one round trip at most.

    Same guarantee as SQLAlchemy's ``pool_pre_ping`` (a connection dropped by a restart or
    ``pg_terminate_backend`` is replaced, not handed to the caller), but its asyncpg ping
    costs three round trips (BEGIN, ping, ROLLBACK) on every checkout, more than the
    one-statement transactions of the hot path.

    The first statement of a handler's session (:meth:`LazySession.execute
    <jobkit.database.LazySession.execute>`) skips even that one for a connection returned
    less than :data:`TRUSTED_FOR_S` ago that asyncpg does not know closed: that ping was
    one of the six round trips of a job whose handler writes (claim, ping, BEGIN, the
    write, the fenced completion, COMMIT). The server's close can still be on its way
    (``pg_terminate_backend`` returns before asyncpg reads it); the statement then fails
    on the connection before anything ran, and the session runs it again on a checked one.
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _checkin(dbapi_conn: Any, record: Any) -> None:
        if dbapi_conn is not None:  # (None: invalidated)
            record.info["jk_returned"] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        raw = getattr(dbapi_conn, "_connection", None)
        try:
            if raw is None:
                dbapi_conn.ping()
            elif raw.is_closed():  # the server's close already reached us: no round trip
                raise ConnectionError("closed by the server")
            else:
                trusted = TRUSTED_CHECKOUT.get()
                if trusted is not None and time.monotonic() - record.info.get(
                        "jk_returned", -TRUSTED_FOR_S) < TRUSTED_FOR_S:
                    trusted.unchecked = dbapi_conn
                    return
                await_only(raw.fetchrow(";"))
        except Exception as exc:  # the pool replaces the connection and tries again
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


# ---------------------------------------------------------------------------
# Schema: one snapshot for reads, one lock for upgrades
# ---------------------------------------------------------------------------
#: The advisory lock that serialises schema upgrades (``jobkit migrate``, opening); jobkit
#: 0.1.0's ``init_schema`` used it too.
SCHEMA_LOCK_KEY = 727274001
#: Taking the schema lock, as SQL (also at the top of ``jobkit migrate --sql``'s script).
SCHEMA_LOCK: Any = text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")


async def begin_snapshot(conn: AsyncConnection) -> None:
    """Make ``conn``'s next reads all see one snapshot."""
    await conn.execution_options(isolation_level="REPEATABLE READ")


async def lock_schema(conn: AsyncConnection) -> None:
    """Take the schema lock for the rest of ``conn``'s transaction."""
    await conn.execute(SCHEMA_LOCK)


# ---------------------------------------------------------------------------
# Wake-ups from other processes: LISTEN/NOTIFY
# ---------------------------------------------------------------------------
#: The channel of the ``jobkit_notify_jobs`` trigger (migration 0001): a statement trigger
#: on ``jobs`` sends the new job ids (at most 20) at commit.
CHANNEL = "jobkit_jobs"


async def watch(engine: AsyncEngine, wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``wake()`` at every NOTIFY, on a dedicated asyncpg connection that ``LISTEN``\\ s
    and reconnects when it drops."""
    import asyncpg

    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    delay = 0.1
    while not stop.is_set():
        conn = None
        try:
            conn = await asyncpg.connect(dsn)
            await conn.add_listener(CHANNEL, lambda *_: wake())
            wake()  # we may have missed notifications while (re)connecting
            delay = 0.1
            while not stop.is_set() and not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stop.wait()
                if not stop.is_set():
                    # A cheap liveness check: a dropped connection raises here.
                    await conn.execute("SELECT 1")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep listening through outages
            log.warning("jobkit LISTEN connection lost (%s); reconnecting in %.1fs",
                        type(exc).__name__, delay)
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, 5.0)
