"""SQLite (aiosqlite, the embedded default): its clock, its statements, its connection hooks,
its wake-ups.

The same names as :mod:`jobkit.backends.postgres`, so the two read side by side; see
:class:`jobkit.backends.Backend` for the list.

SQLite is made safe for several worker processes: WAL, a busy timeout, and a
transaction that takes the write lock (``BEGIN IMMEDIATE``) *before its first
write*. Reads before that run outside any transaction, so a handler that reads,
thinks for a while and then writes never holds the database's single write
lock while it thinks, and a write never has to "upgrade" a read transaction
(the source of "database is locked" errors that a busy timeout cannot cure).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, event, func, text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util import await_only

from ..jsonutil import dumps
from ..models import CLAIM_ORDER_SQL, ELIGIBLE_SQL, Job, UTCDateTime, jobs_table, utcnow
from .common import (
    INSERT_ONE,
    READ_PREFIXES,
    ClaimShape,
    Prepared,
    claim_statements,
    complete_statement,
    connection_info,
    driver_connection,
    prepared_claims,
    wrapped,
)

log = logging.getLogger("jobkit")

NAME = "sqlite"
#: One connection writes at a time: a write may wait for another session's transaction.
SINGLE_WRITER = True
#: An older schema is upgraded when the database is opened (an embedded file has one owner).
MIGRATES_ON_OPEN = True
BUSY_TIMEOUT_MS = 30_000
#: How often a worker looks for other processes' commits (``PRAGMA data_version``).
WATCH_INTERVAL = 0.002


# ---------------------------------------------------------------------------
# The clock: this process's (SQLite has none worth sharing between processes)
# ---------------------------------------------------------------------------
def now() -> Any:
    """"Now" on the database clock, for a statement: this process's UTC clock."""
    return utcnow()


def clock_params() -> dict[str, Any]:
    """The bound values a statement's clock needs: ``:now``."""
    return {"now": utcnow()}


async def clock(db: AsyncSession) -> datetime:
    """The database clock's current time."""
    return utcnow()


def seconds_between(later: Any, earlier: Any) -> Any:
    """``later - earlier`` in seconds, as SQL."""
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def insert(table: Table) -> Any:
    """An INSERT with ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
    return sqlite_dialect.insert(table)


# ---------------------------------------------------------------------------
# The claim
# ---------------------------------------------------------------------------
# Claim predicates as literal SQL: see jobkit.backends.postgres (without its OFFSET 0).
DEPS_DONE = ("NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.depends_on"
             " WHERE d.job_id = jobs.id AND p.status <> 'completed')")
UNLIMITED = "NOT EXISTS (SELECT 1 FROM job_type_limits l WHERE l.job_type = jobs.job_type)"

# Atomic because it runs as one statement holding SQLite's write lock (one writer at a
# time). The filter is literal text, not bound parameters: only then can SQLite use the
# partial index ix_jobs_eligible, whose predicate is this same expression (with
# ``IN (?, ?)`` it sorted every waiting job on every claim). INDEXED BY: SQLite's planner
# otherwise prefers ix_jobs_status_finished and sorts every waiting job on every claim.
_CLAIM = f"""
    UPDATE jobs SET status = 'processing', attempts = attempts + 1, locked_by = :worker_id,
           locked_until = :until, started_at = :now, updated_at = :now,
           finished_at = NULL, progress = NULL, progress_message = NULL, progress_at = NULL
    WHERE id IN (
        SELECT id FROM jobs INDEXED BY {{index}}
        WHERE {ELIGIBLE_SQL} AND run_at <= :now{{filters}}
        ORDER BY {CLAIM_ORDER_SQL}
        LIMIT {{limit}})
    RETURNING {{columns}}"""
#: Every shape of the claim (see :class:`~jobkit.backends.common.ClaimShape`).
CLAIM = claim_statements(_CLAIM, deps_done=DEPS_DONE, unlimited=UNLIMITED,
                         room_limit="max(0, min(:n, {room}))",
                         binds=(bindparam("now", type_=UTCDateTime),
                                bindparam("until", type_=UTCDateTime)),
                         index=("ix_jobs_eligible", "ix_jobs_eligible_queue"))

#: The fast lane's claims (see :func:`fetch_alone`).
CLAIM_ALONE = prepared_claims(CLAIM)


def claim_alone_statement(shape: ClaimShape, n: int) -> Prepared:
    """The fast lane's claim of ``n`` jobs: :data:`CLAIM_ALONE`'s (SQLite plans every
    statement as it prepares it, and ``sqlite3`` keeps the prepared statement: a LIMIT in
    the SQL would only add statements to its cache)."""
    return CLAIM_ALONE[shape]


def lease_params(lease_seconds: float) -> dict[str, Any]:
    """The claim's bound values for a lease of ``lease_seconds``."""
    now = utcnow()
    return {"now": now, "until": now + timedelta(seconds=lease_seconds)}


async def begin_limited_claim(db: AsyncSession, job_type: str, commit: bool) -> bool:
    """Prepare the claim of one limited type; False: skip the type this time.

    The claim is one statement, so SQLite's write lock, taken when it starts, covers both
    counting the type's running jobs and claiming.
    """
    if commit:
        await one_statement_transaction(db)
    return True


# ---------------------------------------------------------------------------
# Finishing: one job, and many in one statement (fenced)
# ---------------------------------------------------------------------------
#: One job's fenced completion (``:job_id``, ``:attempt``, ``:worker_id``, ``:result``,
#: ``:now``).
COMPLETE = complete_statement(bindparam("now", type_=UTCDateTime))

# Many fenced completions in one statement whose text does not depend on the batch size (so it
# is compiled once): the batch travels as one JSON array, and each result is already JSON
# text. ``+status`` keeps the planner on the primary key (walking the batch) instead of the
# status index (rescanning the batch for every running job).
COMPLETE_MANY = text("""
    WITH v (id, att, res) AS (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
               json_extract(value, '$[2]') FROM json_each(:batch))
    UPDATE jobs SET status = 'completed', result = v.res, error = NULL,
           finished_at = :now, updated_at = :now, locked_by = NULL, locked_until = NULL,
           progress = 1
    FROM v
    WHERE jobs.id = v.id AND jobs.attempts = v.att
      AND jobs.locked_by = :worker_id AND +jobs.status = 'processing'
    RETURNING jobs.id, jobs.finished_at""").bindparams(bindparam("now", type_=UTCDateTime)).columns(
        jobs_table.c.id, jobs_table.c.finished_at)

#: The fast lane's completions of one job / of many (see :func:`fetch_alone`).
COMPLETE_ALONE = Prepared(COMPLETE, (jobs_table.c.finished_at,))
COMPLETE_MANY_ALONE = Prepared(COMPLETE_MANY, (jobs_table.c.id, jobs_table.c.finished_at))
#: The fast lane's insert of one job (every column given).
INSERT_ALONE = INSERT_ONE


def complete_many_params(items: Sequence[tuple[Job, Any]], worker_id: str) -> dict[str, Any]:
    """:data:`COMPLETE_MANY`'s bound values for these (job, result) pairs."""
    return {"batch": dumps([[j.id.hex, j.attempts, dumps(r)] for j, r in items]),
            "now": utcnow(), "worker_id": worker_id}


# ---------------------------------------------------------------------------
# Enqueue: many jobs in one statement
# ---------------------------------------------------------------------------
# INSERT … SELECT FROM json_each, compiled once (a ``.values(rows)`` statement is compiled
# anew every call).
INSERT_MANY = text("""
    INSERT INTO jobs (id, job_type, queue, status, params, result, attempts, max_attempts,
                      priority, timeout, cancel_requested, run_at, created_at, updated_at)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[7]'),
           'pending', json_extract(value, '$[2]'), 'null', 0, json_extract(value, '$[3]'),
           json_extract(value, '$[4]'), json_extract(value, '$[5]'), 0,
           json_extract(value, '$[6]'), :now, :now
    FROM json_each(:batch)
    """).bindparams(bindparam("now", type_=UTCDateTime))


def _time(value: datetime) -> str:
    """A datetime as SQLAlchemy stores it in SQLite (naive UTC text), for raw batches."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def insert_many_params(rows: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """:data:`INSERT_MANY`'s bound values for these job rows (``queue.build_job_row``)."""
    times: dict[datetime, str] = {}  # most rows share one run_at (now)

    def time_of(value: datetime) -> str:
        found = times.get(value)
        if found is None:
            found = times[value] = _time(value)
        return found

    return {"now": now, "batch": dumps([
        [r["id"].hex, r["job_type"], dumps(r["params"]), r["max_attempts"],
         r["priority"], None if r["timeout"] is None else float(r["timeout"]),
         time_of(r["run_at"]), r["queue"]] for r in rows])}


# ---------------------------------------------------------------------------
# Transactions of one statement, and how transactions begin
# ---------------------------------------------------------------------------
async def one_statement_transaction(db: AsyncSession) -> None:
    """Let a fresh session's single statement run without an explicit transaction: no
    ``BEGIN IMMEDIATE`` (see :func:`skip_begin`)."""
    if db.in_transaction():
        return
    skip_begin((await db.connection()).sync_connection)  # type: ignore[arg-type]


async def execute_alone(conn: AsyncConnection, statement: Any, params: Any) -> None:
    """Run ``statement`` as its own transaction on a fresh pooled connection (no
    ``BEGIN IMMEDIATE``, see :func:`skip_begin`)."""
    await conn.begin()
    skip_begin(conn.sync_connection)  # type: ignore[arg-type]
    await conn.execute(statement, params)
    await conn.commit()  # no COMMIT is sent: nothing is open


def skip_begin(conn: Connection) -> None:
    """Run this transaction's statements without ``BEGIN IMMEDIATE``.

    For a transaction of ONE write statement: SQLite runs it atomically on its own and
    takes the write lock when it starts (so it never has to upgrade a read), which is all
    ``BEGIN IMMEDIATE`` gives; skipping it saves a round trip to aiosqlite's thread.
    """
    conn.info["jk_sqlite_begun"] = True


def begin_immediate(conn: Connection) -> None:
    """Open ``conn``'s transaction with ``BEGIN IMMEDIATE`` now (take the write lock first)."""
    _begin(conn, "BEGIN IMMEDIATE")


def _begin(conn: Connection, begin: str) -> None:
    conn.exec_driver_sql("SELECT 1")  # SQLAlchemy's autobegin (a read: no BEGIN emitted)
    conn.info["jk_sqlite_begun"] = True
    conn.exec_driver_sql(begin)


# ---------------------------------------------------------------------------
# The fast lane: one statement, on aiosqlite's own connection
# ---------------------------------------------------------------------------
def _coltype(impl: Any) -> Any:
    return None


async def fetch_alone(engine: AsyncEngine, statement: Prepared,
                      params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run ``statement`` as its own transaction (no ``BEGIN IMMEDIATE``, see
    :func:`skip_begin`) and return its rows as a session would.

    It runs *inline* (:class:`_InlineLane`: on the event loop's thread, no hand-off) when
    SQLite's write lock is free: in one process's turn-taking, nobody holds it
    (:class:`_WriteGate`; a write waits for its turn there first when another connection
    of this process is writing), and SQLite itself answers at once rather than waiting (a
    busy timeout of 0: another process holds the lock). Otherwise, on a pooled
    connection's aiosqlite connection, in one trip to its thread: a write takes this
    process's turn at SQLite's write lock first, exactly as the hooks do for a lone write
    statement, and gives it back when the statement ends. A cancellation in flight
    invalidates the pooled connection, as SQLAlchemy does (the statement may still finish
    in aiosqlite's thread); an inline statement cannot be interrupted half-way.
    """
    dialect = engine.sync_engine.dialect
    compiled = statement.compiled(dialect, _coltype)
    args = compiled.args(params)
    gate = _GATES.get(engine.sync_engine)
    write = not compiled.sql.lstrip()[:9].upper().startswith(READ_PREFIXES)
    lane = _INLINE.get(engine.sync_engine)
    if lane is not None:
        # Another connection of this process is writing: wait for our turn, then run
        # inline all the same (in aiosqlite's thread it would wait for the same turn, and
        # then cost a hand-off to that thread and back).
        turn = gate if write and gate is not None and gate.busy() else None
        if turn is not None:
            await turn.wait_turn(lane)
        try:
            records = lane.run(engine, compiled.sql, args, write)
        except sqlite3.Error as exc:
            raise wrapped(dialect, compiled, args, exc) from exc
        finally:
            if turn is not None:
                turn.release(lane)
        if records is not None:
            return compiled.rows(records)
    async with engine.connect() as conn:
        adapted = await driver_connection(conn)
        try:
            records = await _execute_on(conn, adapted, compiled, args, gate, write)
        finally:
            if gate is not None:
                gate.release(adapted)
    return compiled.rows(records)


async def _execute_on(conn: AsyncConnection, adapted: Any, compiled: Any, args: Sequence[Any],
                      gate: _WriteGate | None, write: bool, commit: bool = False) -> list[Any]:
    """Run one statement on ``conn``'s aiosqlite connection (``adapted``) in one trip to its
    thread, a write after this process's turn at the write lock (kept: the caller gives it
    back), and with ``commit`` a ``COMMIT`` after it if it returned rows. A cancellation in
    flight invalidates ``conn`` (the statement may still finish in aiosqlite's thread) and
    goes through; an error is raised as SQLAlchemy's."""
    try:
        if gate is not None and write:
            await gate.wait_turn(adapted)
        aio = adapted._connection
        if commit:
            rows: list[Any] = await aio._execute(_fetch_then_commit, aio._conn, compiled.sql,
                                                 args)
        else:
            rows = list(await aio.execute_fetchall(compiled.sql, args))
        if write and (commit and rows or not commit and not aio.in_transaction):
            _count_write(conn.engine)  # committed: a lone write, or with its COMMIT
        return rows
    except BaseException as exc:
        if not isinstance(exc, Exception):
            with contextlib.suppress(Exception):  # never replace the error in flight
                await conn.invalidate()
            raise
        raise wrapped(conn.dialect, compiled, args, exc) from exc


def _count_write(engine: AsyncEngine) -> None:
    """A write was committed on one of ``engine``'s connections: it counts toward the next
    checkpoint (their automatic one is off, see the hooks' ``_on_connect``)."""
    lane = _INLINE.get(engine.sync_engine)
    if lane is not None:
        lane.wrote(engine)


def _fetch_then_commit(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    """In aiosqlite's thread: the statement's rows, then ``COMMIT`` if there are any."""
    cur = conn.execute(sql, args)
    try:
        rows = cur.fetchall()
    finally:
        cur.close()
    if rows:
        conn.execute("COMMIT")
    return rows


#: SQLite's primary result codes that mean "another connection holds a lock": the inline
#: lane steps aside for the waiting path (see :class:`_InlineLane`).
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
#: Inline writes between two checkpoints run in aiosqlite's thread (see _InlineLane).
CHECKPOINT_EVERY = 200
#: A checkpoint also starts when the WAL file is larger than this (big transactions)...
CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024
#: ... and each connection truncates the WAL file to this when it starts it over.
WAL_SIZE_LIMIT = 2 * 1024 * 1024
#: The WAL file's size is looked at every this many writes (a claim and a completion
#: count too: not a system call for each).
WAL_SIZE_EVERY = 8


def _busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds a lock (nothing was done)."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES


class _InlineLane:
    """A plain ``sqlite3`` connection for the fast lane's statements, run on the event
    loop's own thread when they need not wait.

    Each aiosqlite call is a hand-off to its thread and back: on a 2-core machine it costs
    more than the statement itself (a claim of ten jobs, a completion, one insert run in
    tens of microseconds in SQLite's C code). Here such a statement runs right away,
    *only if SQLite's write lock is free*: the connection's busy timeout is 0, so a lock
    held by another connection or process answers ``SQLITE_BUSY`` at once and the caller
    takes the waiting path instead (aiosqlite's thread, the 30 s busy timeout). Nothing is
    relaxed: the same file, WAL, ``synchronous=NORMAL`` and ``foreign_keys`` as every
    pooled connection; one statement, autocommitted, atomic. Statements run whole (the
    loop does not switch in the middle), so a cancellation never leaves one half-done.

    WAL checkpoints, the one step that writes the database file and syncs it, stay off the
    loop: the lane and the engine's pooled connections have SQLite's automatic checkpoint
    off, and every :data:`CHECKPOINT_EVERY` writes committed on any of them (inline, in
    aiosqlite's thread, through a session), or when the WAL file has grown past
    :data:`CHECKPOINT_WAL_BYTES` (every connection truncates it to :data:`WAL_SIZE_LIMIT`
    when it starts it over), the lane runs a passive one on a pooled connection in
    aiosqlite's thread (:meth:`wrote`). So a COMMIT may run on the loop's thread
    (:func:`fetch_in_transaction`) without writing the database file there.

    The lane follows the engine's pool: after ``engine.dispose()`` it opens a new
    connection, and while the pool has ``connect`` listeners jobkit did not install (a
    user's per-connection setup, a test making connections read-only) it stays unused, as
    the whole fast lane does for cursor listeners.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        sync = engine.sync_engine
        self.args, self.kwargs = sync.dialect.create_connect_args(engine.url)
        self.connect_listeners = len(sync.pool.dispatch.connect)
        self.pool: Any = None
        self.conn: sqlite3.Connection | None = None
        self.writes = 0
        database = str(self.args[0]) if self.args else ""
        if database.startswith("file:"):  # a SQLite URI
            database = database[5:].split("?", 1)[0]
        self.wal_path = database + "-wal"
        self.checkpoints: set[asyncio.Task[None]] = set()

    def _connection(self, engine: AsyncEngine) -> sqlite3.Connection | None:
        pool = engine.sync_engine.pool
        if len(pool.dispatch.connect) != self.connect_listeners:
            self.close()
            return None
        if self.conn is None or self.pool is not pool:
            self.close()
            conn = _plain_connection(self.args, self.kwargs)
            try:
                for pragma in ("busy_timeout=0", "synchronous=NORMAL", "foreign_keys=ON",
                               "wal_autocheckpoint=0", f"journal_size_limit={WAL_SIZE_LIMIT}"):
                    conn.execute(f"PRAGMA {pragma}")
                mode = conn.execute("PRAGMA journal_mode").fetchone()
            except sqlite3.Error:
                conn.close()
                return None  # e.g. locked while it opened: next time
            if not mode or str(mode[0]).lower() != "wal":
                conn.close()  # not set up by the pooled connections yet: not ours to change
                return None
            self.conn, self.pool = conn, pool
        return self.conn

    def run(self, engine: AsyncEngine, sql: str, args: Sequence[Any],
            write: bool) -> list[Any] | None:
        """The statement's rows, or None when it must wait for a lock (nothing was done)."""
        conn = self._connection(engine)
        if conn is None:
            return None
        try:
            cur = conn.execute(sql, args)
            try:
                rows = cur.fetchall()
            finally:
                cur.close()
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return None  # SQLite rolled the statement back: take the waiting path
            raise
        if write:
            self.wrote(engine)
        return rows

    def wrote(self, engine: AsyncEngine) -> None:
        """Count a committed write (on any of the engine's connections); every
        :data:`CHECKPOINT_EVERY`, or when the WAL file (looked at every
        :data:`WAL_SIZE_EVERY` writes) has passed :data:`CHECKPOINT_WAL_BYTES`, start a
        checkpoint in aiosqlite's thread (unless one is running)."""
        self.writes += 1
        if self.checkpoints:
            return
        if self.writes % CHECKPOINT_EVERY == 0 or (
                self.writes % WAL_SIZE_EVERY == 0 and self._wal_bytes() > CHECKPOINT_WAL_BYTES):
            self._checkpoint(engine)

    def _wal_bytes(self) -> int:
        """The size of the database's WAL file (0 when it cannot be told). Every connection
        truncates it to :data:`WAL_SIZE_LIMIT` when it starts it over after a checkpoint,
        so a larger file means that many bytes of transactions since."""
        try:
            return os.stat(self.wal_path).st_size
        except OSError:
            return 0

    def _checkpoint(self, engine: AsyncEngine) -> None:
        try:
            task = asyncio.get_running_loop().create_task(_checkpoint(engine))
        except RuntimeError:  # no loop: the pooled connections' own checkpoints do it
            return
        self.checkpoints.add(task)
        task.add_done_callback(self.checkpoints.discard)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
        self.conn = self.pool = None


def _plain_connection(args: Sequence[Any], kwargs: Mapping[str, Any]) -> sqlite3.Connection:
    """A ``sqlite3`` connection to the engine's file (``args``/``kwargs``: the dialect's
    connect arguments), in autocommit, that never waits for a lock (a busy timeout of 0)."""
    connect: Any = sqlite3.connect
    conn: sqlite3.Connection = connect(*args, **{**kwargs, "check_same_thread": False,
                                                 "isolation_level": None, "timeout": 0})
    return conn


async def _checkpoint(engine: AsyncEngine) -> None:
    """A passive WAL checkpoint in aiosqlite's thread (it never waits for SQLite's locks),
    taken in this process's turn at the write gate.

    The turn matters: a checkpoint copies the WAL's frames as of its start, and the WAL
    starts over (from its beginning, truncated to :data:`WAL_SIZE_LIMIT`) only when a
    checkpoint copied all of them. With this process's writers appending meanwhile it
    never would, and under a steady load the WAL would grow without end. SQLite's own
    automatic checkpoint ran inside the writer's COMMIT, where nobody else could write.
    """
    gate = _GATES.get(engine.sync_engine)
    try:
        async with engine.connect() as conn:
            adapted = await driver_connection(conn)
            if gate is not None:
                await gate.wait_turn(adapted)
            try:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                if gate is not None:
                    gate.release(adapted)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the next one, or a pooled connection's, will do
        log.debug("jobkit: WAL checkpoint skipped (%s)", exc)


_INLINE: weakref.WeakKeyDictionary[Any, _InlineLane] = weakref.WeakKeyDictionary()


async def release(engine: AsyncEngine) -> None:
    """Close the engine's inline connection (``Runner.close``; it reopens if used again)."""
    lane = _INLINE.get(engine.sync_engine)
    if lane is not None:
        lane.close()


async def fetch_in_transaction(conn: AsyncConnection, statement: Prepared,
                               params: Mapping[str, Any], *,
                               commit: bool = False) -> list[dict[str, Any]] | None:
    """Run ``statement`` on ``conn``'s aiosqlite connection, INSIDE the transaction ``conn``
    has open in SQLite (it commits or rolls back with it), in one trip to its thread, and
    return its rows as a session would; None, without running it, when SQLite has no
    transaction open on it (the caller goes through SQLAlchemy then, whose hooks begin one).

    ``commit``: when the statement returns rows, ``COMMIT`` in the same trip (the caller
    commits at once then; SQLAlchemy's commit finds nothing open and sends nothing, see
    the hooks' ``_commit``). With no rows the transaction stays open for the caller.
    When the transaction already holds SQLite's write lock and nothing else is in flight
    on the connection, that statement and its ``COMMIT`` run inline instead, on the event
    loop's thread: no hand-off at all (with :func:`first_write_inline`, a job whose handler
    wrote one row makes none). The first COMMIT after a checkpoint that copied the whole
    WAL back starts the WAL over and syncs its header once, there as anywhere.

    For a hot statement that must be atomic with what a session already wrote (a handler's
    writes and its job's completion): it skips SQLAlchemy's per-statement execution
    machinery, not the transaction. A write waits for this connection's turn at the write
    lock (at once: a transaction that wrote holds it) and keeps it: the transaction's end
    gives it back (see :class:`_WriteGate`). A cancellation in flight invalidates ``conn``
    (the statement may still finish in aiosqlite's thread): its transaction is lost, the
    connection never reused.
    """
    dialect = conn.dialect
    compiled = statement.compiled(dialect, _coltype)
    args = compiled.args(params)
    adapted: Any = await driver_connection(conn)
    aio = adapted._connection
    try:
        open_ = bool(aio.in_transaction)
    except Exception:  # noqa: BLE001 - closed: let SQLAlchemy's path raise its own error
        open_ = False
    if not open_:
        return None
    sync_engine = conn.engine.sync_engine
    gate = _GATES.get(sync_engine)
    write = not compiled.sql.lstrip()[:9].upper().startswith(READ_PREFIXES)
    if commit and write and gate is not None and gate.holds(adapted):
        lane = _INLINE.get(sync_engine)
        if (lane is not None and not adapted._execute_mutex.locked()
                and aio._tx.empty() and lane._connection(conn.engine) is not None):
            # On the loop's thread: the transaction holds the write lock, so in WAL mode
            # (the lane checked it) nothing can make the statement or the COMMIT wait,
            # and no COMMIT here runs a checkpoint (automatic ones are off: see wrote).
            # Only this task uses the connection (nothing in flight), and the statements
            # run whole: no cancellation can land between them.
            try:
                records = _fetch_then_commit(aio._conn, compiled.sql, args)
            except sqlite3.Error as exc:
                raise wrapped(dialect, compiled, args, exc) from exc
            lane.wrote(conn.engine)  # counts toward the next checkpoint
            return compiled.rows(records)
    records = await _execute_on(conn, adapted, compiled, args, gate, write, commit)
    return compiled.rows(records)


# ---------------------------------------------------------------------------
# Schema: one snapshot for reads, one lock for upgrades
# ---------------------------------------------------------------------------
#: Taking the schema lock, as SQL for an offline script: none (the script's own
#: transaction takes SQLite's write lock).
SCHEMA_LOCK: Any = None


async def begin_snapshot(conn: AsyncConnection) -> None:
    """Open a deferred transaction, so ``conn``'s next reads all see one snapshot."""
    await conn.run_sync(lambda sync: _begin(sync, "BEGIN"))


async def lock_schema(conn: AsyncConnection) -> None:
    """Take the schema lock (SQLite's write lock) for the rest of ``conn``'s transaction."""
    await conn.run_sync(begin_immediate)


# ---------------------------------------------------------------------------
# Engine: URL checks, options, hooks
# ---------------------------------------------------------------------------
def url_problem(url: URL) -> str | None:
    """What a URL for this backend should be instead, or None when it is fine."""
    database = url.database or ""
    if database in ("", ":memory:") or "mode=memory" in str(url):
        return ("a SQLite *file* (an in-memory database cannot be shared by workers); "
                "e.g. sqlite+aiosqlite:///./jobkit.db")
    if database.startswith("file:"):  # a SQLite URI (e.g. ?mode=ro&uri=true)
        database = database[5:].split("?", 1)[0]
    folder = os.path.dirname(os.path.abspath(database))
    if not os.path.isdir(folder):
        return f"a file in an existing folder ({folder} does not exist)"
    return None


def engine_options(url: URL, kwargs: dict[str, Any]) -> None:
    """Fill in this backend's defaults for ``create_async_engine``."""
    if url.get_driver_name() == "aiosqlite":
        kwargs.setdefault("module", _one_trip_aiosqlite())


async def after_bulk_insert(db: AsyncSession, inserted: int) -> None:
    """Nothing: the claim names its index (``INDEXED BY``), so no statistics can change
    its plan."""


def connect_timeout(seconds: float) -> dict[str, Any]:
    """Opening a local file does not wait on a network: nothing to bound."""
    return {}


def missing_file(url: str) -> str | None:
    """The path of the URL's database file when it does not exist (yet)."""
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path.startswith("file:"):
        path = path[5:]
    return None if os.path.exists(path) else path


def install(engine: AsyncEngine, kwargs: Mapping[str, Any]) -> None:
    """Install this backend's hooks on a new engine (made with ``kwargs``)."""
    _install_hooks(engine)
    if engine.url.get_driver_name() == "aiosqlite":
        lane = _INLINE[engine.sync_engine] = _InlineLane(engine)
        # engine.dispose() closes the inline connection too (it reopens if used again).
        event.listen(engine.sync_engine, "engine_disposed", lambda _sync: lane.close())


def _install_hooks(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # Let us issue BEGIN ourselves; the driver's own implicit BEGIN is deferred.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        if _INLINE.get(sync_engine) is not None:
            # The inline lane checkpoints in aiosqlite's thread, counting every commit and
            # watching the WAL's size (_count_write): no COMMIT, on the loop's thread or not,
            # runs one itself.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.info["jk_sqlite_begun"] = False

    gate = _GATES[sync_engine] = _WriteGate()

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(conn: Connection, cursor: Any, statement: str, params: Any,
                context: Any, executemany: bool) -> None:
        if statement.lstrip()[:9].upper().startswith(READ_PREFIXES):
            return  # reads before the first write run outside a transaction
        # A write: take this process's turn at SQLite's write lock first (see _WriteGate).
        gate.acquire(conn.connection.dbapi_connection)
        if conn.info.get("jk_sqlite_begun", True) or not conn.in_transaction():
            return
        conn.info["jk_sqlite_begun"] = True
        begin_first = getattr(cursor, "begin_first", None)  # a one-trip cursor's
        if begin_first is not None:
            # BEGIN IMMEDIATE travels with this statement: one trip, not two; or none, on
            # the loop's thread, while the inline lane is usable (WAL, no connect listener
            # of someone else's: see first_write_inline).
            lane = _INLINE.get(sync_engine)
            begin_first(inline=lane is not None and lane._connection(engine) is not None)
        else:
            cursor.execute("BEGIN IMMEDIATE")

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after(conn: Connection, cursor: Any, statement: str, params: Any,
               context: Any, executemany: bool) -> None:
        # A lone write statement (no transaction open around it) has released SQLite's lock.
        dbapi_conn = conn.connection.dbapi_connection
        if gate.holds(dbapi_conn) and _idle(dbapi_conn):
            gate.release(dbapi_conn)
            if not statement.lstrip()[:6].upper().startswith("PRAGMA"):  # (a checkpoint)
                _count_write(engine)

    @event.listens_for(sync_engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        try:
            raw = ctx.connection.connection.dbapi_connection if ctx.connection else None
        except Exception:  # noqa: BLE001 - closed or invalidated: the pool events release it
            return
        if raw is not None and gate.holds(raw) and _idle(raw):
            gate.release(raw)

    # Every other way a connection's transaction ends releases its turn too: an invalidated
    # (cancelled mid-statement) or closed connection, and, as a safety net, the check-in.
    def _release_conn(dbapi_conn: Any, *_: Any) -> None:
        if dbapi_conn is not None:
            gate.release(dbapi_conn)

    for name in ("invalidate", "soft_invalidate", "close", "close_detached", "detach",
                 "checkin"):
        event.listen(sync_engine.pool, name, _release_conn)

    def _end(conn: Connection) -> None:
        info = connection_info(conn)
        if info is not None:
            info["jk_sqlite_begun"] = True

    event.listen(sync_engine, "commit", _end)
    event.listen(sync_engine, "rollback", _end)

    # COMMIT/ROLLBACK when SQLite has no transaction open (a lone autocommit statement, a
    # read-only session, the pool's reset on check-in) are no-ops, but each still costs a
    # round trip to aiosqlite's thread; sqlite3 knows the state without one.
    dialect: Any = sync_engine.dialect
    do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

    def _commit(dbapi_conn: Any) -> None:
        try:
            if not _idle(dbapi_conn):
                do_commit(dbapi_conn)
                _count_write(engine)
        finally:
            if _idle(dbapi_conn):  # a failed COMMIT may leave the transaction open
                gate.release(dbapi_conn)

    def _rollback(dbapi_conn: Any) -> None:
        try:
            if not _idle(dbapi_conn):
                do_rollback(dbapi_conn)
        finally:
            gate.release(dbapi_conn)

    dialect.do_commit, dialect.do_rollback = _commit, _rollback


class _WriteGate:
    """This process's queue for SQLite's single write lock, one per engine.

    SQLite lets one connection write at a time; the others wait in its busy handler,
    which *sleeps* between tries (1, 2, 5, 10 … 100 ms). With many jobs of one worker
    finishing at once, those sleeps, not the writes, made up most of the time. So the
    engine's connections take turns on an ``asyncio.Lock`` (FIFO, handed over the moment
    the holder's transaction ends) before ``BEGIN IMMEDIATE`` or a lone write statement;
    SQLite's own lock and busy timeout still arbitrate between processes.

    The turn is released when the connection's transaction ends: commit, rollback, a lone
    statement's end, an error that left no transaction, and, for a connection invalidated
    by a cancellation, closed or checked in, by the pool events. A waiter cancelled while
    queued never holds it. A holder that keeps its transaction open for longer than the
    busy timeout does not block the others forever: they go on to SQLite's busy handler.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
            weakref.WeakKeyDictionary()
        self._held: dict[int, asyncio.Lock] = {}  # id(DBAPI connection) → the lock it holds

    @staticmethod
    def _key(conn: Any) -> int:
        # The DBAPI connection itself, whether given as is or through the pool's proxy
        # (SQLAlchemy passes the proxy to do_commit / do_rollback).
        return id(getattr(conn, "dbapi_connection", None) or conn)

    def holds(self, dbapi_conn: Any) -> bool:
        return self._key(dbapi_conn) in self._held

    @property
    def holders(self) -> int:
        """Connections holding their turn now (0 or 1 while the gate works)."""
        return len(self._held)

    def acquire(self, dbapi_conn: Any) -> None:
        """Wait (inside SQLAlchemy's greenlet) for this connection's turn to write."""
        if self._key(dbapi_conn) in self._held:
            return  # already its turn (a transaction's second write)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (not reached through the asyncio API): SQLite decides
        await_only(self.wait_turn(dbapi_conn))

    async def wait_turn(self, dbapi_conn: Any) -> None:
        """Wait for this connection's turn to write (the fast lane's, outside a greenlet)."""
        key = self._key(dbapi_conn)
        if key in self._held:
            return
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        if lock.locked():
            try:
                await _acquire_within(lock, BUSY_TIMEOUT_MS / 1000)
            except TimeoutError:
                return  # held too long by another connection: leave it to SQLite
        else:
            await lock.acquire()  # free: returns at once
        self._held[key] = lock

    def busy(self) -> bool:
        """Whether a connection of this process holds (or is being handed) its turn."""
        try:
            lock = self._locks.get(asyncio.get_running_loop())
        except RuntimeError:
            return bool(self._held)
        return bool(self._held) or (lock is not None and lock.locked())

    def release(self, dbapi_conn: Any) -> None:
        lock = self._held.pop(self._key(dbapi_conn), None)
        if lock is not None and lock.locked():
            lock.release()


async def _acquire_within(lock: asyncio.Lock, seconds: float) -> None:
    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
    # arrives as the lock is handed over (and return holding it).
    async with asyncio.timeout(seconds):
        await lock.acquire()


_GATES: weakref.WeakKeyDictionary[Any, _WriteGate] = weakref.WeakKeyDictionary()


def write_gate(engine: AsyncEngine) -> _WriteGate | None:
    """The SQLite engine's :class:`_WriteGate` (None on PostgreSQL)."""
    return _GATES.get(engine.sync_engine)


def _one_trip_aiosqlite() -> Any:
    """SQLAlchemy's aiosqlite DBAPI adapter, with cursors that cost ONE trip to aiosqlite's
    thread per statement.

    The stock adapter makes up to four (create a cursor, execute, fetch the rows, close
    the cursor), each a hand-off between the event loop and aiosqlite's thread that costs
    more than a small statement itself on a busy machine. Here the four run as one call in
    that thread (aiosqlite's own ``execute_fetchall`` does the same); results are buffered,
    as the stock cursor buffers them too. Passed to the engine as its DBAPI ``module``.
    """
    import sqlite3

    import aiosqlite
    from sqlalchemy.dialects.sqlite.aiosqlite import (
        AsyncAdapt_aiosqlite_connection,
        AsyncAdapt_aiosqlite_cursor,
        AsyncAdapt_aiosqlite_dbapi,
    )
    from sqlalchemy.util import EMPTY_DICT

    def run(conn: sqlite3.Connection, operation: Any, parameters: Any,
            many: bool, begin: bool) -> tuple[Any, int, Any, list[Any] | None]:
        if begin:
            conn.execute("BEGIN IMMEDIATE")  # raises (nothing begun) or the statement follows
        cur = conn.cursor()
        try:
            if many:
                cur.executemany(operation, parameters)
            elif parameters is None:
                cur.execute(operation)
            else:
                cur.execute(operation, parameters)
            desc = cur.description
            rows = cur.fetchall() if desc else None
            return desc, cur.rowcount, cur.lastrowid, rows
        finally:
            cur.close()

    class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
        __slots__ = ("_begin", "_desc", "_rowcount", "_lastrowid", "_size")

        def __init__(self, adapt_connection: Any) -> None:  # no aiosqlite cursor: no trip
            self._adapt_connection = adapt_connection
            self._connection = adapt_connection._connection
            self._cursor = None  # type: ignore[assignment]
            self._soft_closed_memoized = EMPTY_DICT
            self._rows = collections.deque()
            self._desc: Any = None
            self._rowcount = -1
            self._lastrowid: Any = None
            self._size = 1
            self._begin: bool | str = False  # True, or "inline" (see begin_first)

        def begin_first(self, inline: bool = False) -> None:
            """Open the transaction (``BEGIN IMMEDIATE``) in the same trip as the next
            statement, just before it: the hooks' BEGIN without a trip of its own; with
            ``inline``, try both on the loop's thread first (:func:`first_write_inline`)."""
            self._begin = "inline" if inline else True

        @property
        def description(self) -> Any:
            return self._desc

        @property
        def rowcount(self) -> int:
            return self._rowcount

        @property
        def lastrowid(self) -> Any:
            return self._lastrowid

        @property
        def arraysize(self) -> int:
            return self._size

        @arraysize.setter
        def arraysize(self, value: int) -> None:
            self._size = value

        async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
            begin, self._begin = self._begin, False
            async with self._adapt_connection._execute_mutex:
                aio = self._connection
                done = None
                if begin == "inline" and aio._tx.empty():
                    done = first_write_inline(run, aio._conn, operation, parameters, many)
                if done is None:
                    done = await aio._execute(run, aio._conn, operation, parameters, many,
                                              bool(begin))
                self._desc, self._rowcount, self._lastrowid, rows = done
            self._rows = collections.deque(rows or ())

        async def _execute_async(self, operation: Any, parameters: Any) -> Any:
            await self._run(operation, parameters, False)

        async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
            await self._run(operation, seq_of_parameters, True)

        async def _async_soft_close(self) -> None:
            return  # nothing open: the rows are already here

        def close(self) -> None:
            self._rows.clear()

        def nextset(self) -> None:
            return None

        def setinputsizes(self, *inputsizes: Any) -> None:
            return None

    class OneTripConnection(AsyncAdapt_aiosqlite_connection):
        __slots__ = ()
        _cursor_cls = OneTripCursor

    class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
        def connect(self, *arg: Any, **kw: Any) -> Any:
            stock = super().connect(*arg, **kw)
            return OneTripConnection(self, stock._connection)

    return OneTripDBAPI(aiosqlite, sqlite3)


#: How long a transaction's first write may run on the event loop's thread before it is
#: interrupted (and run again in aiosqlite's thread); see first_write_inline.
INLINE_BUDGET_S = 0.002
#: Statements that overran the budget once: they go to aiosqlite's thread from then on.
_SLOW: collections.OrderedDict[str, None] = collections.OrderedDict()
_SLOW_KEPT = 256


def first_write_inline(run: Callable[..., Any], conn: sqlite3.Connection, operation: str,
                       parameters: Any, many: bool) -> Any:
    """Run a session's ``BEGIN IMMEDIATE`` and the write that opens its transaction on the
    event loop's thread, when that takes no longer than a hand-off to aiosqlite's thread
    would; ``run``'s result, or None (nothing kept) when it must go to that thread instead.

    A hand-off there and back costs more than a small write (about 100 µs against tens).
    Nothing may make the loop wait, so:

    - **a lock held by another process**: the busy timeout is 0 for the attempt, so
      SQLite answers ``SQLITE_BUSY`` at once instead of sleeping (this process's writers
      already took turns at the write gate);
    - **a long statement**: a progress handler interrupts it after
      :data:`INLINE_BUDGET_S`, and its text is remembered so it goes straight to the
      thread next time.

    Either way the transaction held nothing else yet (this is its first write), so rolling
    it back loses nothing, and the caller runs it again, whole, in aiosqlite's thread. The
    connection's busy timeout and progress handler are put back in every case.
    """
    if (conn.in_transaction or operation in _SLOW
            or (many and not isinstance(parameters, (list, tuple)))):
        # A transaction SQLite already has open (a SAVEPOINT before any write opens one)
        # is not this attempt's to roll back; an iterator of parameters could not be run
        # a second time.
        return None
    deadline = time.perf_counter() + INLINE_BUDGET_S

    def overran() -> bool:
        return time.perf_counter() > deadline

    conn.execute("PRAGMA busy_timeout=0")
    conn.set_progress_handler(overran, 1000)
    try:
        return run(conn, operation, parameters, many, True)
    except sqlite3.OperationalError as exc:
        conn.set_progress_handler(None, 0)
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code not in (*_BUSY_CODES, sqlite3.SQLITE_INTERRUPT):
            raise
        if code == sqlite3.SQLITE_INTERRUPT:
            _SLOW[operation] = None
            while len(_SLOW) > _SLOW_KEPT:
                _SLOW.popitem(last=False)
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # the BEGIN alone, or what the interrupt left
        return None
    finally:
        conn.set_progress_handler(None, 0)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _idle(dbapi_conn: Any) -> bool:
    """True when this aiosqlite connection is surely outside any SQLite transaction."""
    try:
        return not dbapi_conn._connection.in_transaction
    except Exception:  # noqa: BLE001 - closed or unexpected: let the real call decide
        return False


# ---------------------------------------------------------------------------
# Wake-ups from other processes: PRAGMA data_version
# ---------------------------------------------------------------------------
async def watch(engine: AsyncEngine, wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``wake()`` when another connection commits: ``PRAGMA data_version`` changes
    then. A dedicated plain ``sqlite3`` connection reads it every :data:`WATCH_INTERVAL`
    on the event loop's thread: a few microseconds on a page already in memory, cheaper
    than the hand-off to aiosqlite's thread it replaced, so it can look more often."""
    args, kwargs = engine.sync_engine.dialect.create_connect_args(engine.url)
    delay = 0.1
    while not stop.is_set():
        conn = None
        try:
            conn = _plain_connection(args, kwargs)
            last = None
            while not stop.is_set():
                try:
                    row = conn.execute("PRAGMA data_version").fetchone()
                except sqlite3.OperationalError as exc:
                    if not _busy(exc):
                        raise
                    row = None  # a writer is recovering the WAL index: look again soon
                value = row[0] if row else last
                if last is not None and value != last:
                    wake()
                last = value
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WATCH_INTERVAL):
                        await stop.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("jobkit SQLite watcher failed (%s); retrying in %.1fs",
                        type(exc).__name__, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, 5.0)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()


async def insert_alone(engine: AsyncEngine, row: Mapping[str, Any]) -> None:
    """Insert one job row (``queue.build_job_row``) through :func:`fetch_alone` (the
    PostgreSQL backend holds a connection for it; here the file is the pool's)."""
    await fetch_alone(engine, INSERT_ALONE, row)
