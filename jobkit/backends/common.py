"""What the two backends share: statement shapes that differ only in their clock, and small
helpers of their connection hooks. Nothing here branches on the backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

from sqlalchemy import Integer, TextualSelect, Uuid, bindparam, text, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, PendingRollbackError, ResourceClosedError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from ..models import JobStatus, JSONType, attempt_fence, jobs_table
from .rows import fast_converter

#: Statements that only read: they run outside any SQLite transaction (see
#: :mod:`jobkit.backends.sqlite`) and do not make a transaction count as "wrote".
READ_PREFIXES = ("SELECT", "PRAGMA", "EXPLAIN", "SAVEPOINT", "RELEASE")


class TrustedCheckout:
    """Set (in :data:`TRUSTED_CHECKOUT`) by a caller that can run its statement again on a
    new connection if the one it was given turns out dead: the backend may then hand it a
    pooled connection without checking it first, and says so in :attr:`unchecked`
    (see :meth:`jobkit.database.LazySession.execute`)."""

    __slots__ = ("unchecked",)

    def __init__(self) -> None:
        self.unchecked: Any = None  # the DBAPI connection handed out unchecked


#: The :class:`TrustedCheckout` of the statement now checking out a connection, if any.
TRUSTED_CHECKOUT: ContextVar[TrustedCheckout | None] = ContextVar(
    "jobkit_trusted_checkout", default=None)

JOB_COLUMNS = tuple(jobs_table.c)
_RETURNING = ", ".join(c.name for c in JOB_COLUMNS)


class ClaimShape(NamedTuple):
    """Which claim statement: the filters a call needs.

    ``typed``: only some job types. ``queued``: 0 = every queue, 1 = one queue (walks
    ``ix_jobs_eligible_queue`` in claim order), 2 = several queues (walks
    ``ix_jobs_eligible`` and skips other queues' jobs). ``limited``: claim one type that
    has a ``max_running`` limit, no more than its room.
    """

    typed: bool
    queued: int
    limited: bool


# Room left under a type's limit: its max_running minus its running jobs, at most :n.
ROOM = ("COALESCE((SELECT max_running FROM job_type_limits WHERE job_type = :limited)"
        " - (SELECT count(*) FROM jobs WHERE status = 'processing' AND job_type = :limited),"
        " :n)")


def claim_statements(template: str, *, deps_done: str, unlimited: str, room_limit: str,
                     binds: tuple[Any, ...], index: tuple[str, str] = ("", "")
                     ) -> dict[ClaimShape, TextualSelect]:
    """Every shape of a backend's claim ``template``, built once at import (building a
    statement and its cache key costs more than the database's work for a small claim).

    ``template`` has ``{filters}``, ``{limit}``, ``{index}`` and ``{columns}`` slots;
    ``room_limit`` is the limited claim's LIMIT with a ``{room}`` slot; ``index``: the
    index for every queue / for one queue (SQLite's ``INDEXED BY``).
    """
    return {shape: claim_statement(template, shape, deps_done=deps_done, unlimited=unlimited,
                                   room_limit=room_limit, binds=binds, index=index)
            for shape in (ClaimShape(typed, queued, limited) for typed in (False, True)
                          for queued in (0, 1, 2) for limited in (False, True))}


def claim_statement(template: str, shape: ClaimShape, *, deps_done: str, unlimited: str,
                    room_limit: str, binds: tuple[Any, ...], index: tuple[str, str] = ("", ""),
                    limit: int | None = None) -> TextualSelect:
    """One shape of the claim (see :func:`claim_statements`); ``limit``: the LIMIT written
    into the SQL instead of the ``:n`` parameter (an unlimited shape only)."""
    typed, queued, limited = shape
    filters = []
    shape_binds = [*binds]
    if limit is None:
        shape_binds.append(bindparam("n", type_=Integer))
    elif limited:
        raise ValueError("a limited claim's LIMIT is its room: it takes :n")
    if typed:
        filters.append("job_type IN :types")
        shape_binds.append(bindparam("types", expanding=True))
    if queued == 1:
        filters.append("queue = :queue")
    elif queued > 1:
        filters.append("queue IN :queues")
        shape_binds.append(bindparam("queues", expanding=True))
    filters.append("job_type = :limited" if limited else unlimited)
    filters.append(deps_done)
    sql = template.format(
        filters="".join(f"\n          AND {f}" for f in filters),
        limit=(room_limit.format(room=ROOM) if limited
               else ":n" if limit is None else str(int(limit))),
        index=index[1] if queued == 1 else index[0], columns=_RETURNING)
    return text(sql).bindparams(*shape_binds).columns(*JOB_COLUMNS)


_COMPLETED_VALUES = {"status": JobStatus.COMPLETED.value, "error": None, "locked_by": None,
                     "locked_until": None, "progress": 1.0}


def complete_statement(now: Any) -> Any:
    """One job's fenced completion, stamped with ``now`` (an SQL clock or a bound value)."""
    return (update(jobs_table)
            .where(attempt_fence(bindparam("job_id", type_=Uuid),
                                 bindparam("attempt", type_=Integer), bindparam("worker_id")))
            .values(result=bindparam("result", type_=JSONType), finished_at=now,
                    updated_at=now, **_COMPLETED_VALUES)
            .returning(jobs_table.c.finished_at))


def connection_info(conn: Connection) -> dict[Any, Any] | None:
    """``conn.info``, or None when the connection was invalidated or closed.

    A transaction-end listener runs while SQLAlchemy rolls back a connection that a
    cancellation (or a dropped server) invalidated. Reading ``conn.info`` there raises
    ``PendingRollbackError``, which would replace the ``CancelledError`` in flight: the
    caller's cancellation would turn into an ordinary database error and be retried.
    """
    if conn.invalidated or conn.closed:
        return None
    try:
        return conn.info
    except (PendingRollbackError, ResourceClosedError):
        return None


# ---------------------------------------------------------------------------
# The fast lane: a hot statement run on the driver's own connection
# ---------------------------------------------------------------------------
class Compiled(NamedTuple):
    """A :class:`Prepared` statement for one dialect: its positional SQL, and how values
    go in and rows come out (SQLAlchemy's own processors of each bound value's and each
    returned column's type, so they travel exactly as through a session)."""

    sql: str
    #: (name, default value, bind processor) per positional parameter, in order.
    binds: tuple[tuple[str, Any, Any], ...]
    #: (column name, SQLAlchemy's result processor) per returned column, in order.
    columns: tuple[tuple[str, Any], ...]
    #: The returned columns' names, in order.
    names: tuple[str, ...] = ()
    #: (column name, converter, skip None) per returned column that has a processor: the
    #: backend's faster equivalent of SQLAlchemy's where it has one, else SQLAlchemy's.
    converters: tuple[tuple[str, Callable[[Any], Any], bool], ...] = ()

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional values of ``params`` (defaults for the statement's own values)."""
        out = []
        for name, default, proc in self.binds:
            value = params.get(name, default)
            out.append(value if proc is None else proc(value))  # None too: JSON's 'null'
        return out

    def rows(self, records: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
        """The driver's rows as ``{column: value}``, each value as a session returns it
        (columns without a processor as they come; a None stays None without a call where
        the converter maps None to None)."""
        names, converters = self.names, self.converters
        out = []
        for record in records:
            row = dict(zip(names, record, strict=True))
            for name, convert, skip_none in converters:
                value = row[name]
                if value is not None or not skip_none:
                    row[name] = convert(value)
            out.append(row)
        return out


async def driver_connection(conn: AsyncConnection) -> Any:
    """The DBAPI adapter's connection under ``conn`` (SQLAlchemy's ``dbapi_connection``).

    ``AsyncConnection.get_raw_connection`` reads an attribute in a greenlet, a context
    switch each way; while the connection is open and valid that attribute is already
    there, so it is read directly. An invalidated connection (it reconnects, which is I/O)
    goes through SQLAlchemy's own path.
    """
    sync = conn.sync_connection
    if sync is not None and not sync.invalidated and not sync.closed:
        return sync.connection.dbapi_connection
    return (await conn.get_raw_connection()).dbapi_connection


def transaction_connection(db: AsyncSession) -> AsyncConnection | None:
    """The connection of ``db``'s open transaction, found without a greenlet (what
    ``await db.connection()`` returns then, a context switch each way); None when there is
    no transaction, a savepoint, a transaction that must be rolled back first, not exactly
    one connection in it, or one not of the session's own bind (then ask the session,
    which says what is wrong)."""
    sync_session = db.sync_session
    tx = sync_session.get_transaction()
    if tx is None or not tx.is_active or sync_session.get_nested_transaction() is not None:
        return None
    # (keyed by the engine and by the connection itself: one connection, two keys)
    held = {entry[0] for entry in tx._connections.values()}  # noqa: SLF001 - no public view
    if len(held) != 1:
        return None
    sync = held.pop()
    bind = sync_session.bind  # the session's own engine (not a binds= mapping's)
    if sync.invalidated or sync.closed or bind is None or sync.engine is not bind.engine:
        return None
    return AsyncConnection._retrieve_proxy_for_target(sync)  # noqa: SLF001 - as the session does


def _keeps_none(proc: Callable[[Any], Any]) -> bool:
    """Whether SQLAlchemy's result processor ``proc`` maps None to None (then rows skip it
    for a None)."""
    try:
        return proc(None) is None
    except Exception:  # noqa: BLE001 - it does not: let it see every None
        return False


class Prepared:
    """A statement of the worker's hot path, compiled once per dialect for the driver's own
    API (``$n`` on asyncpg, ``?`` on sqlite3): see each backend's ``fetch_alone``.

    Through a session, every statement pays for SQLAlchemy's execution machinery (the
    compiled-cache lookup, the execution context, the result object, events) and, on
    PostgreSQL, for ``BEGIN`` and ``COMMIT`` round trips; a single statement is atomic on
    its own. ``returns``: the columns the statement returns, in order.
    """

    def __init__(self, statement: Any, returns: Sequence[Any] = (),
                 column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.returns = tuple(returns)
        self.column_keys = None if column_keys is None else list(column_keys)

    def compiled(self, dialect: Dialect, coltype: Callable[[Any], Any]) -> Compiled:
        """This statement for ``dialect`` (``coltype``: the driver's type code of a column
        type, which some result processors need). Rows convert each column with
        :func:`~jobkit.backends.rows.fast_converter`'s equivalent of SQLAlchemy's processor
        where it has one."""
        # Kept on the dialect (one per engine), so it goes when the engine goes.
        cache: dict[int, Compiled] = dialect.__dict__.setdefault("_jk_prepared", {})
        found = cache.get(id(self))
        if found is not None:
            return found
        compiled = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
        binds = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"{name}: expanding parameters are not prepared")
            binds.append((name, bind.value, bind.type.dialect_impl(dialect).bind_processor(dialect)))
        columns = []
        converters: list[tuple[str, Callable[[Any], Any], bool]] = []
        for col in self.returns:
            impl = col.type.dialect_impl(dialect)
            proc = impl.result_processor(dialect, coltype(impl))
            columns.append((col.name, proc))
            if proc is None:
                continue
            quick = fast_converter(col.type, dialect)
            converters.append((col.name, proc, _keeps_none(proc)) if quick is None
                              else (col.name, quick, True))
        names = tuple(name for name, _ in columns)
        if len(set(names)) != len(names):
            raise ValueError(f"a Prepared statement returns two columns of one name: {names}")
        out = Compiled(compiled.string, tuple(binds), tuple(columns), names, tuple(converters))
        cache[id(self)] = out
        return out


def open_lane(engine: AsyncEngine) -> None:
    """Let ``engine`` (made by ``jobkit.create_engine``, its hooks installed) use the fast
    lane while it has no cursor listeners but jobkit's (see :func:`lane_open`)."""
    sync = engine.sync_engine
    sync.__dict__["_jk_lane"] = _listeners(sync)


def lane_open(engine: AsyncEngine) -> bool:
    """Whether the hot statements may take the fast lane on ``engine``.

    Statements on the driver's connection bypass SQLAlchemy's execution, so its cursor
    events never see them: an engine with ``before/after_cursor_execute`` listeners of its
    own (tracing, statement logs, a test counting statements) keeps every statement on the
    session path, where they do. So does an engine jobkit did not make (no SQLite hooks).
    """
    sync = engine.sync_engine
    return sync.__dict__.get("_jk_lane") == _listeners(sync)


def _listeners(sync: Any) -> tuple[int, int]:
    return len(sync.dispatch.before_cursor_execute), len(sync.dispatch.after_cursor_execute)


def prepared_claims(claims: Mapping[ClaimShape, Any]) -> dict[ClaimShape, Prepared]:
    """The claim shapes the fast lane runs: no type filter, no limited type, every queue or
    one (the others need expanding lists or a transaction: they stay on the session path)."""
    return {shape: Prepared(stmt, JOB_COLUMNS) for shape, stmt in claims.items()
            if not shape.typed and shape.queued < 2 and not shape.limited}


#: One job row inserted (every column given: ``queue.build_job_row``).
INSERT_ONE = Prepared(jobs_table.insert(), column_keys=[c.name for c in JOB_COLUMNS])


def wrapped(dialect: Dialect, compiled: Compiled, args: Sequence[Any],
            error: Exception) -> Exception:
    """A driver's error as SQLAlchemy raises it (``sqlalchemy.exc.OperationalError`` …), so
    callers of the fast lane catch the same errors as through a session."""
    return DBAPIError.instance(compiled.sql, list(args), error,
                               dialect.loaded_dbapi.Error, dialect=dialect)
